//! `live --metrics`: the OpenMetrics text served over HTTP from a thread of its own, so a scrape
//! never waits on the view's loop; the loop replaces the text each interval.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

/// Why the metrics could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--metrics: cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("starting the metrics thread")]
    Thread(#[source] std::io::Error),
}

/// Serves the latest metrics text on `addr` from a thread; the text is replaced each interval.
pub fn serve_metrics(addr: SocketAddr) -> Result<Arc<Mutex<String>>, ServeError> {
    let server =
        tiny_http::Server::http(addr).map_err(|source| ServeError::Listen { addr, source })?;
    let text = Arc::new(Mutex::new("# EOF\n".to_string()));
    let shared = Arc::clone(&text);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let content_type =
                tiny_http::Header::from_bytes("Content-Type", super::metrics::CONTENT_TYPE)
                    .expect("a valid header");
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    let body = shared.lock().map(|t| t.clone()).unwrap_or_default();
                    tiny_http::Response::from_string(body).with_header(content_type.clone())
                } else {
                    tiny_http::Response::from_string("bufscope serves /metrics\n")
                        .with_status_code(404)
                };
                let _ = request.respond(response);
            }
        })
        .map_err(ServeError::Thread)?;
    Ok(text)
}
