//! The routes (docs/http.md): the key-value store under `/v1/kv/KEY`, compare-and-set under
//! `/v1/cas/KEY`, log appends, this node's status, and health; the coordination routes
//! (ranges, txn, leases, locks, watch) are in `coord.rs`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Map, Value, json};

use super::body::{
    ApiError, bytes_field, json_object, json_response, optional_bytes_field, read_body, take_bytes,
    value_from_body, wants_raw,
};
use super::coord;
use super::request::{KV_PREFIX, body_cap, encoding, key_of, query_pairs};
use crate::core::{Consistency, ReadOptions, StalenessBound};
use crate::front::Gateway;

/// Where keys start in a compare-and-set path.
const CAS_PREFIX: &str = "/v1/cas/";

type Shared = State<Arc<Gateway>>;

/// Every route, on `gateway`.
pub fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/status", get(status))
        .route("/v1/kv/{*key}", get(get_key).put(put_key).delete(delete_key))
        .route("/v1/cas/{*key}", post(compare_and_set))
        .route("/v1/append", post(append))
        // The coordination API (docs/http.md, "Coordination").
        .route("/v1/kv", get(coord::range))
        .route("/v1/kv/", get(coord::range))
        .route("/v1/txn", post(coord::txn))
        .route("/v1/leases", get(coord::lease_list).post(coord::lease_grant))
        .route("/v1/leases/{id}", delete(coord::lease_revoke))
        .route("/v1/leases/{id}/keepalive", post(coord::lease_keep_alive))
        .route("/v1/locks/{*name}", get(coord::lock_holder).post(coord::lock).delete(coord::unlock))
        .route("/v1/watch", get(coord::watch))
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(gateway)
}

async fn health() -> Response {
    json_response(StatusCode::OK, json!({ "status": "up" }))
}

async fn status(State(gateway): Shared) -> Result<Response, ApiError> {
    let statuses = gateway.status().await?;
    let shards: Vec<Value> = statuses
        .iter()
        .enumerate()
        .map(|(shard, status)| {
            json!({
                "shard": shard,
                "role": format!("{:?}", status.role).to_lowercase(),
                "leader": status.leader.map(|node| node.0),
                "commit_index": status.commit_index.0,
                "applied_commands": status.applied_commands,
                "voters": status.voters,
                "durable": !status.not_durable,
            })
        })
        .collect();
    Ok(json_response(StatusCode::OK, json!({ "node": gateway.node_address(), "shards": shards })))
}

/// `encoding=base64` (or `text`, the default) from the query.
fn base64_asked(uri: &Uri) -> Result<bool, ApiError> {
    let mut base64 = false;
    for (_, value) in query_pairs(uri, &["encoding"])? {
        base64 = encoding(&value)?;
    }
    Ok(base64)
}

/// A get's query: `encoding`, `consistency` (linearizable, the default; lease, follower,
/// stale) and, for a stale read, `max_staleness` (slots, or a time such as `250ms`).
fn get_parameters(uri: &Uri) -> Result<(bool, ReadOptions), ApiError> {
    let (mut base64, mut consistency, mut bound) = (false, Consistency::Linearizable, None);
    let bad = |message: String| ApiError::bad_request("bad_parameter", message);
    for (name, value) in query_pairs(uri, &["encoding", "consistency", "max_staleness"])? {
        match name.as_str() {
            "encoding" => base64 = encoding(&value)?,
            "consistency" => {
                consistency = Consistency::from_name(&value).ok_or_else(|| {
                    let names: Vec<&str> = Consistency::NAMES.iter().map(|(n, _)| *n).collect();
                    bad(format!("consistency `{value}`: use one of {}", names.join(", ")))
                })?;
            }
            _ => bound = Some(StalenessBound::parse(&value).map_err(bad)?),
        }
    }
    let read = ReadOptions::new(consistency, bound)
        .map_err(|_| bad("max_staleness bounds stale reads: add consistency=stale".into()))?;
    Ok((base64, read))
}

pub(super) fn ok() -> Response {
    json_response(StatusCode::OK, json!({ "ok": true }))
}

async fn get_key(
    State(gateway): Shared,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if coord::asks_meta(&uri) {
        return coord::get_with_meta(&gateway, &uri).await;
    }
    let key = key_of(&uri, KV_PREFIX)?;
    let (base64, read) = get_parameters(&uri)?;
    let Some(value) = gateway.get_with(&key, read).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "key_not_found", "the key is not set"));
    };
    if wants_raw(&headers) {
        return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/octet-stream")], value)
            .into_response());
    }
    let mut object = Map::new();
    bytes_field(&mut object, "key", &key, base64);
    bytes_field(&mut object, "value", &value, base64);
    Ok(json_response(StatusCode::OK, Value::Object(object)))
}

async fn put_key(
    State(gateway): Shared,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if coord::asks_coordinated_put(&uri) {
        return coord::put_coordinated(&gateway, &uri, &headers, body).await;
    }
    let key = key_of(&uri, KV_PREFIX)?;
    query_pairs(&uri, &[])?;
    let bytes = read_body(&headers, body, body_cap(&gateway, &headers)).await?;
    let value = value_from_body(&headers, bytes)?;
    gateway.put(&key, &value).await?;
    Ok(ok())
}

async fn delete_key(State(gateway): Shared, uri: Uri) -> Result<Response, ApiError> {
    let key = key_of(&uri, KV_PREFIX)?;
    query_pairs(&uri, &[])?;
    gateway.delete(&key).await?;
    Ok(ok())
}

async fn compare_and_set(
    State(gateway): Shared,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_of(&uri, CAS_PREFIX)?;
    let base64 = base64_asked(&uri)?;
    let cap = gateway.command_bytes_max().saturating_mul(3).saturating_add(1024);
    let bytes = read_body(&headers, body, cap).await?;
    let object = json_object(&bytes, &["expected", "expected_base64", "value", "value_base64"])?;
    let Some(expected) = take_bytes(&object, "expected", true)? else {
        return Err(ApiError::bad_request(
            "bad_json",
            "a compare-and-set needs `expected` (or `expected_base64`): the value the key must hold, null for absent",
        ));
    };
    let Some(Some(value)) = take_bytes(&object, "value", false)? else {
        return Err(ApiError::bad_request(
            "bad_json",
            "a compare-and-set needs `value` (or `value_base64`)",
        ));
    };
    let (succeeded, previous) = gateway.compare_and_set(&key, expected.as_deref(), &value).await?;
    if !succeeded {
        let mut current = Map::new();
        optional_bytes_field(&mut current, "current", previous.as_deref(), base64);
        let mut error = ApiError::new(
            StatusCode::CONFLICT,
            "cas_mismatch",
            "the key does not hold the expected value; nothing was written",
        );
        for (name, value) in current {
            error = error.with(&name, value);
        }
        return Err(error);
    }
    let mut object = Map::new();
    object.insert("succeeded".into(), Value::Bool(true));
    optional_bytes_field(&mut object, "previous", previous.as_deref(), base64);
    Ok(json_response(StatusCode::OK, Value::Object(object)))
}

async fn append(
    State(gateway): Shared,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    query_pairs(&uri, &[])?;
    let bytes = read_body(&headers, body, body_cap(&gateway, &headers)).await?;
    let entry = value_from_body(&headers, bytes)?;
    let position = gateway.append(&entry).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "position": { "global": position.global, "index": position.index } }),
    ))
}

async fn unknown_endpoint(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint {} (docs/http.md lists them)", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method} (docs/http.md lists what it takes)", uri.path()),
    )
}
