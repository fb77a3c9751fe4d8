//! What ends the long-running loops (`record`, `live`): a deadline that may not be set.

/// Sleeps until `deadline`, or forever without one: the duration arm of a loop's select.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
