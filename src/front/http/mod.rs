//! The HTTP/JSON front end (docs/http.md): axum routes on hyper's HTTP/1.1 server, one task
//! per connection, at most `connections_max` connections (past it a connection gets a 503
//! and is closed). Keys travel percent-encoded in the path, values as the raw body or inside
//! a JSON envelope (text or base64), so any bytes work; every error is a JSON object with a
//! stable code.

mod api;
pub(super) mod body;
mod coord;
mod probe;
mod request;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{Gateway, Probe};

/// A request's headers must arrive within this long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP/JSON API's routes, with `/metrics` and `/ready` beside them if the node gave its
/// probe.
pub fn api_routes(gateway: Arc<Gateway>, probe: Option<Arc<dyn Probe>>) -> axum::Router {
    let api = api::routes(gateway);
    match probe {
        Some(probe) => api.merge(probe::routes(probe)),
        None => api,
    }
}

/// The metrics listener's routes: `/metrics`, `/ready`, `/health`.
pub fn probe_routes(probe: Arc<dyn Probe>) -> axum::Router {
    probe::listener_routes(probe)
}

/// Serves `router` over HTTP on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, router: axum::Router, connections_max: usize) {
    let permits = Arc::new(Semaphore::new(connections_max));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, say: pause rather than spin.
                tracing::warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, connections_max, "HTTP connection refused: too many connections");
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "HTTP connection ended");
            }
            drop(permit);
        });
    }
}

/// Tells a connection over the limit why it is closed, without reading it.
async fn refuse(mut stream: TcpStream) {
    let body = body::error_json(
        "too_many_connections",
        "the node serves its most HTTP connections at once; retry later",
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ =
        tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await;
}
