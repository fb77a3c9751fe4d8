//! `live --metrics`: the metrics text served over HTTP from a thread of its own, so a scrape
//! never waits on the view's loop; the loop publishes new figures each interval.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use super::{
    metrics::{Exposition, Format},
    model::Model,
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

/// The figures the server thread serves; the view's loop replaces them each interval.
#[derive(Clone, Debug)]
pub struct PublishedMetrics(Arc<Mutex<Exposition>>);

impl PublishedMetrics {
    /// Renders the model's figures for the next scrapes.
    pub fn publish(&self, model: &Model) {
        let exposition = Exposition::new(model);
        if let Ok(mut published) = self.0.lock() {
            *published = exposition;
        }
    }
}

/// Serves the latest published metrics on `addr` from a thread, in the format each request's
/// `Accept` header prefers (see [`Format::negotiate`]).
pub fn serve_metrics(addr: SocketAddr) -> Result<PublishedMetrics, ServeError> {
    let server =
        tiny_http::Server::http(addr).map_err(|source| ServeError::Listen { addr, source })?;
    let published = PublishedMetrics(Arc::new(Mutex::new(Exposition::default())));
    let shared = published.clone();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    let accept = request
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Accept"))
                        .map(|h| h.value.as_str());
                    let format = Format::negotiate(accept);
                    let body = shared
                        .0
                        .lock()
                        .map(|e| e.text(format).to_string())
                        .unwrap_or_default();
                    let content_type =
                        tiny_http::Header::from_bytes("Content-Type", format.content_type())
                            .expect("a valid header");
                    tiny_http::Response::from_string(body).with_header(content_type)
                } else {
                    tiny_http::Response::from_string("bufscope serves /metrics\n")
                        .with_status_code(404)
                };
                let _ = request.respond(response);
            }
        })
        .map_err(ServeError::Thread)?;
    Ok(published)
}
