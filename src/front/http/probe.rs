//! The operator's endpoints (docs/operations.md, "Metrics" and "Health"): `GET /metrics` in
//! the Prometheus text format, `GET /ready` (200 while the node is ready, 503 with the reason
//! of every shard that is not), and `GET /health` (200 while the process is up). Served on the
//! metrics listener (`--metrics-listen`) and beside the API on the HTTP port. Each answer is
//! read from the node's shards when asked ([`Probe`]); nothing here reaches the cluster.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::body::{ApiError, json_response};
use crate::front::Probe;

/// The Prometheus text exposition format's content type (version 0.0.4).
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Shared = State<Arc<dyn Probe>>;

/// `/metrics` and `/ready`, to merge into another router.
pub fn routes(probe: Arc<dyn Probe>) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/ready", get(ready)).with_state(probe)
}

/// The metrics listener's routes: `/metrics`, `/ready` and `/health`, nothing else.
pub fn listener_routes(probe: Arc<dyn Probe>) -> Router {
    routes(probe)
        .route("/health", get(health))
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn health() -> Response {
    json_response(StatusCode::OK, json!({ "status": "up" }))
}

async fn metrics(State(probe): Shared) -> Response {
    // Atomics read and text written: microseconds for a few shards, so on the runtime's
    // thread rather than the blocking pool.
    let text = probe.metrics_text();
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response()
}

async fn ready(State(probe): Shared) -> Response {
    let not_ready = probe.not_ready();
    if not_ready.is_empty() {
        return json_response(StatusCode::OK, json!({ "ready": true }));
    }
    let shards: Vec<Value> = not_ready
        .into_iter()
        .map(|(shard, reason)| json!({ "shard": shard, "reason": reason }))
        .collect();
    json_response(StatusCode::SERVICE_UNAVAILABLE, json!({ "ready": false, "not_ready": shards }))
}

async fn unknown_endpoint(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint {} here: /metrics, /ready and /health", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} takes GET, not {method}", uri.path()),
    )
}
