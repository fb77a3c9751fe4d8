//! One module per subcommand: each turns the library's results into output and an exit code.

pub mod compare;
pub mod doctor;
pub mod export;
pub mod info;
pub mod live;
pub mod plot;
pub mod record;
pub mod replay;
pub mod report;
pub mod stress;
pub mod synth;
pub mod tui;

/// Sleeps until `deadline`, or forever without one: the duration arm of a command's select loop.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub use bufscope::units::{duration_ns, thousands};
