//! The coordination routes (docs/http.md, "Coordination"): ranges by prefix at one revision,
//! a key's revisions and version, puts with a lease or fenced by a lock's token, transactions,
//! leases, locks and watches as a stream of newline-delimited JSON. Each goes through the
//! gateway's async coordination calls (`front/coord.rs`), which share the native client's
//! cut and merge logic.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::body::{
    ApiError, bytes_field, json_object, json_response, read_body, take_bytes, value_from_body,
};
use super::request::{KV_PREFIX, body_cap, encoding, key_of, query_pairs};
use crate::client::RangeOptions;
use crate::front::{FrontWatch, Gateway};
use crate::machine::kv::coord::{KeyValue, TxnResult};
use crate::machine::kv::{
    Change, ChangeKind, Compare, CompareOp, Holder, KeyRange, RangeReply, Target, Txn, TxnOp,
};

/// Where lock names start in a lock path.
const LOCK_PREFIX: &str = "/v1/locks/";

/// The longest a watch stream waits in one call before it looks again whether its client is
/// still there.
const WATCH_ROUND: Duration = Duration::from_secs(30);

type Shared = State<Arc<Gateway>>;

fn bad_parameter(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("bad_parameter", message)
}

fn bad_json(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("bad_json", message)
}

/// A query parameter as a number.
fn number(name: &str, value: &str) -> Result<u64, ApiError> {
    value.parse().map_err(|_| bad_parameter(format!("`{name}` must be a number, not `{value}`")))
}

/// A query parameter as a boolean (`true`, `false`, `1`, `0`).
fn flag(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(bad_parameter(format!("`{name}` must be true or false, not `{other}`"))),
    }
}

/// A key as a range or a change shows it, with its revisions, version and lease.
fn key_value_json(entry: &KeyValue, base64: bool, keys_only: bool) -> Value {
    let mut object = Map::new();
    bytes_field(&mut object, "key", &entry.key, base64);
    if !keys_only {
        bytes_field(&mut object, "value", &entry.value, base64);
    }
    object.insert("create_revision".into(), entry.create_revision.into());
    object.insert("mod_revision".into(), entry.mod_revision.into());
    object.insert("version".into(), entry.version.into());
    object.insert("lease".into(), entry.lease.into());
    Value::Object(object)
}

fn range_json(reply: &RangeReply, base64: bool, keys_only: bool) -> Map<String, Value> {
    let entries: Vec<Value> =
        reply.entries.iter().map(|entry| key_value_json(entry, base64, keys_only)).collect();
    let mut object = Map::new();
    object.insert("entries".into(), Value::Array(entries));
    object.insert("more".into(), Value::Bool(reply.more));
    object.insert("revision".into(), reply.revision.into());
    if let (true, Some(last)) = (reply.more, reply.entries.last()) {
        // The key just after the last: a continuation starts there.
        let mut next = last.key.clone();
        next.push(0);
        bytes_field(&mut object, "next", &next, base64);
    }
    object
}

/// `GET /v1/kv?prefix=P[&from=K][&limit=N][&revision=R][&keys_only=true][&encoding=base64]`:
/// the keys with a prefix at one revision (a consistent cut across shards).
pub async fn range(State(gateway): Shared, uri: Uri) -> Result<Response, ApiError> {
    let allowed = ["prefix", "from", "limit", "revision", "keys_only", "encoding"];
    let (mut prefix, mut from, mut options, mut base64) =
        (None, None, RangeOptions::default(), false);
    for (name, value) in query_pairs(&uri, &allowed)? {
        match name.as_str() {
            "prefix" => prefix = Some(value.into_bytes()),
            "from" => from = Some(value.into_bytes()),
            "limit" => {
                let limit = number(&name, &value)?;
                options.limit = u32::try_from(limit)
                    .map_err(|_| bad_parameter(format!("`limit` {limit} is too large")))?;
            }
            "revision" => options.revision = number(&name, &value)?,
            "keys_only" => options.keys_only = flag(&name, &value)?,
            _ => base64 = encoding(&value)?,
        }
    }
    let Some(prefix) = prefix else {
        return Err(bad_parameter(
            "a range needs `prefix` (empty for every key); one key is GET /v1/kv/KEY",
        ));
    };
    let mut range = KeyRange::Prefix(prefix);
    if let Some(from) = from {
        range = range.from_key(&from);
    }
    let reply = gateway.range(&range, options).await?;
    Ok(json_response(StatusCode::OK, Value::Object(range_json(&reply, base64, options.keys_only))))
}

/// `GET /v1/kv/KEY?meta=true` or `?revision=R`: the key with its revisions and version (at
/// revision R, or now), and the revision the read reflects.
pub async fn get_with_meta(gateway: &Gateway, uri: &Uri) -> Result<Response, ApiError> {
    let key = key_of(uri, KV_PREFIX)?;
    let (mut options, mut base64) = (RangeOptions::default(), false);
    for (name, value) in query_pairs(uri, &["meta", "revision", "encoding"])? {
        match name.as_str() {
            "meta" => {
                flag(&name, &value)?;
            }
            "revision" => options.revision = number(&name, &value)?,
            _ => base64 = encoding(&value)?,
        }
    }
    let reply = gateway.range(&KeyRange::Key(key), options).await?;
    let Some(entry) = reply.entries.first() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "key_not_found", "the key is not set")
            .with("revision", reply.revision.into()));
    };
    let mut object = match key_value_json(entry, base64, false) {
        Value::Object(object) => object,
        _ => Map::new(),
    };
    object.insert("revision".into(), reply.revision.into());
    Ok(json_response(StatusCode::OK, Value::Object(object)))
}

/// True if a GET of a key asks for its revisions (`meta`, `revision`).
pub fn asks_meta(uri: &Uri) -> bool {
    query_pairs(uri, &["meta", "revision", "encoding", "consistency", "max_staleness"])
        .is_ok_and(|pairs| pairs.iter().any(|(name, _)| name == "meta" || name == "revision"))
}

/// True if a PUT of a key names a lease or a lock (a coordination put).
pub fn asks_coordinated_put(uri: &Uri) -> bool {
    uri.query().unwrap_or_default().split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        matches!(name, "lease" | "lock" | "lock_base64" | "token")
    })
}

/// `PUT /v1/kv/KEY?lease=ID` (the key lives by the lease) and `?lock=NAME&token=T` (written
/// only while lock NAME is held with fencing token T: a fenced write).
pub async fn put_coordinated(
    gateway: &Gateway,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_of(uri, KV_PREFIX)?;
    let (mut lease, mut lock, mut token) = (0, None, None);
    for (name, value) in query_pairs(uri, &["lease", "lock", "token"])? {
        match name.as_str() {
            "lease" => lease = number(&name, &value)?,
            "lock" => lock = Some(value.into_bytes()),
            _ => token = Some(number(&name, &value)?),
        }
    }
    let bytes = read_body(headers, body, body_cap(gateway, headers)).await?;
    let value = value_from_body(headers, bytes)?;
    let (name, token) = match (lock, token) {
        (None, None) => {
            let (revision, _) = gateway.put_leased(&key, &value, lease).await?;
            return Ok(json_response(StatusCode::OK, json!({ "ok": true, "revision": revision })));
        }
        (Some(name), Some(token)) => (name, token),
        _ => return Err(bad_parameter("a fenced write needs both `lock` and `token`")),
    };
    let txn = Txn {
        compares: vec![Compare::LockHeld { name: name.clone(), token }],
        success: vec![TxnOp::Put { key, value, lease }],
        failure: Vec::new(),
    };
    let outcome = gateway.txn(&txn).await?;
    if !outcome.succeeded {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "fence_failed",
            format!(
                "lock `{}` is not held with fencing token {token} (it moved on, or was released): nothing was written",
                String::from_utf8_lossy(&name)
            ),
        ));
    }
    Ok(json_response(StatusCode::OK, json!({ "ok": true, "revision": outcome.revision })))
}

/// A JSON value that must be an object with fields among `allowed`.
fn object_of<'a>(
    value: &'a Value,
    what: &str,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, ApiError> {
    let Value::Object(object) = value else {
        return Err(bad_json(format!("{what} must be a JSON object")));
    };
    if let Some(unknown) = object.keys().find(|key| !allowed.contains(&key.as_str())) {
        return Err(bad_json(format!(
            "unknown field `{unknown}` in {what}: it takes {}",
            allowed.join(", ")
        )));
    }
    Ok(object)
}

/// A number field (`None` if absent).
fn number_field(object: &Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    match object.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad_json(format!("`{name}` must be a non-negative integer"))),
    }
}

/// Bytes given as `name` or `name_base64` that must be there.
fn required_bytes(
    object: &Map<String, Value>,
    name: &str,
    what: &str,
) -> Result<Vec<u8>, ApiError> {
    match take_bytes(object, name, false)? {
        Some(Some(bytes)) => Ok(bytes),
        _ => Err(bad_json(format!("{what} needs `{name}` (or `{name}_base64`)"))),
    }
}

/// A range in a transaction's operation: `key` or `prefix` (or their `_base64`).
fn range_field(object: &Map<String, Value>, what: &str) -> Result<KeyRange, ApiError> {
    match (take_bytes(object, "key", false)?, take_bytes(object, "prefix", false)?) {
        (Some(Some(key)), None) => Ok(KeyRange::Key(key)),
        (None, Some(Some(prefix))) => Ok(KeyRange::Prefix(prefix)),
        _ => Err(bad_json(format!("{what} needs one of `key` or `prefix`"))),
    }
}

/// One compare: `{"key", "op", and one of value, version, create_revision, mod_revision,
/// lease}` or `{"lock", "token"}`.
fn compare_of(value: &Value) -> Result<Compare, ApiError> {
    let allowed = [
        "key",
        "key_base64",
        "op",
        "value",
        "value_base64",
        "version",
        "create_revision",
        "mod_revision",
        "lease",
        "lock",
        "lock_base64",
        "token",
    ];
    let object = object_of(value, "a compare", &allowed)?;
    if take_bytes(object, "lock", false)?.is_some() {
        let name = required_bytes(object, "lock", "a lock compare")?;
        let Some(token) = number_field(object, "token")? else {
            return Err(bad_json("a lock compare needs `token`"));
        };
        return Ok(Compare::LockHeld { name, token });
    }
    let key = required_bytes(object, "key", "a compare")?;
    let op = match object.get("op").map(|op| op.as_str()) {
        None | Some(Some("=" | "==")) => CompareOp::Equal,
        Some(Some("!=")) => CompareOp::NotEqual,
        Some(Some("<")) => CompareOp::Less,
        Some(Some(">")) => CompareOp::Greater,
        _ => return Err(bad_json("`op` must be one of \"=\", \"!=\", \"<\", \">\"")),
    };
    let mut targets = Vec::new();
    if let Some(value) = take_bytes(object, "value", true)? {
        targets.push(Target::Value(value));
    }
    for (name, make) in [
        ("version", Target::Version as fn(u64) -> Target),
        ("create_revision", Target::CreateRevision),
        ("mod_revision", Target::ModRevision),
        ("lease", Target::Lease),
    ] {
        if let Some(number) = number_field(object, name)? {
            targets.push(make(number));
        }
    }
    let [target] = <[Target; 1]>::try_from(targets).map_err(|_| {
        bad_json(
            "a compare needs exactly one of value, version, create_revision, mod_revision, lease",
        )
    })?;
    Ok(Compare::Key { key, op, target })
}

/// One operation: `{"put": {key, value, lease}}`, `{"delete": {key | prefix}}` or
/// `{"get": {key | prefix, limit}}`.
fn op_of(value: &Value) -> Result<TxnOp, ApiError> {
    let object = object_of(value, "an operation", &["put", "delete", "get"])?;
    let (Some((kind, body)), 1) = (object.iter().next(), object.len()) else {
        return Err(bad_json("an operation is one of {\"put\": …}, {\"delete\": …}, {\"get\": …}"));
    };
    let range_fields = ["key", "key_base64", "prefix", "prefix_base64", "limit"];
    Ok(match kind.as_str() {
        "put" => {
            let fields = ["key", "key_base64", "value", "value_base64", "lease"];
            let put = object_of(body, "a put", &fields)?;
            TxnOp::Put {
                key: required_bytes(put, "key", "a put")?,
                value: required_bytes(put, "value", "a put")?,
                lease: number_field(put, "lease")?.unwrap_or(0),
            }
        }
        "delete" => TxnOp::Delete(range_field(
            object_of(body, "a delete", &range_fields[..4])?,
            "a delete",
        )?),
        _ => {
            let get = object_of(body, "a get", &range_fields)?;
            let limit = number_field(get, "limit")?.unwrap_or(0);
            let limit = u32::try_from(limit).map_err(|_| bad_json("`limit` is too large"))?;
            TxnOp::Range { range: range_field(get, "a get")?, limit }
        }
    })
}

fn list_of<T>(
    object: &Map<String, Value>,
    name: &str,
    item: impl Fn(&Value) -> Result<T, ApiError>,
) -> Result<Vec<T>, ApiError> {
    match object.get(name) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(item).collect(),
        Some(_) => Err(bad_json(format!("`{name}` must be an array"))),
    }
}

fn txn_result_json(result: &TxnResult, base64: bool) -> Value {
    match result {
        TxnResult::Put(previous) => {
            let previous =
                previous.as_ref().map_or(Value::Null, |kv| key_value_json(kv, base64, false));
            json!({ "put": { "previous": previous } })
        }
        TxnResult::Deleted(count) => json!({ "deleted": count }),
        TxnResult::Range(reply) => {
            let mut range = range_json(reply, base64, false);
            range.remove("revision");
            json!({ "get": Value::Object(range) })
        }
    }
}

/// `POST /v1/txn[?encoding=base64]`: `{"compare": […], "success": […], "failure": […]}`.
pub async fn txn(
    State(gateway): Shared,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut base64 = false;
    for (_, value) in query_pairs(&uri, &["encoding"])? {
        base64 = encoding(&value)?;
    }
    let cap = gateway.command_bytes_max().saturating_mul(3).saturating_add(1024);
    let bytes = read_body(&headers, body, cap).await?;
    let object = json_object(&bytes, &["compare", "success", "failure"])?;
    let txn = Txn {
        compares: list_of(&object, "compare", compare_of)?,
        success: list_of(&object, "success", op_of)?,
        failure: list_of(&object, "failure", op_of)?,
    };
    let outcome = gateway.txn(&txn).await?;
    let results: Vec<Value> =
        outcome.results.iter().map(|result| txn_result_json(result, base64)).collect();
    Ok(json_response(
        StatusCode::OK,
        json!({ "succeeded": outcome.succeeded, "revision": outcome.revision, "results": results }),
    ))
}

/// `POST /v1/leases` with `{"ttl_ms": N}`: a lease on every shard.
pub async fn lease_grant(
    State(gateway): Shared,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    query_pairs(&uri, &[])?;
    let bytes = read_body(&headers, body, 4096).await?;
    let object = json_object(&bytes, &["ttl_ms"])?;
    let Some(ttl_ms) = number_field(&object, "ttl_ms")? else {
        return Err(bad_json("a lease grant needs `ttl_ms`: its time to live in milliseconds"));
    };
    let lease = gateway.lease_grant(ttl_ms).await?;
    Ok(json_response(StatusCode::OK, json!({ "id": lease.id, "ttl_ms": lease.ttl_ms })))
}

/// `GET /v1/leases`: every lease with its keys and locks.
pub async fn lease_list(State(gateway): Shared, uri: Uri) -> Result<Response, ApiError> {
    query_pairs(&uri, &[])?;
    let leases: Vec<Value> = gateway
        .leases()
        .await?
        .iter()
        .map(|lease| {
            json!({ "id": lease.id, "ttl_ms": lease.ttl_ms, "keys": lease.keys, "locks": lease.locks })
        })
        .collect();
    Ok(json_response(StatusCode::OK, json!({ "leases": leases })))
}

fn lease_id(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request("bad_lease", format!("a lease id is a number, not `{text}`"))
    })
}

/// `POST /v1/leases/ID/keepalive`.
pub async fn lease_keep_alive(
    State(gateway): Shared,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = lease_id(&id)?;
    let ttl_ms = gateway.lease_keep_alive(id).await?;
    Ok(json_response(StatusCode::OK, json!({ "id": id, "ttl_ms": ttl_ms })))
}

/// `DELETE /v1/leases/ID`: its keys deleted, its locks released.
pub async fn lease_revoke(
    State(gateway): Shared,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let keys = gateway.lease_revoke(lease_id(&id)?).await?;
    Ok(json_response(StatusCode::OK, json!({ "revoked": true, "keys": keys })))
}

fn holder_json(holder: Option<&Holder>) -> Value {
    holder.map_or(Value::Null, |holder| {
        let mut object = Map::new();
        object.insert("lease".into(), holder.lease.into());
        object.insert("token".into(), holder.token.into());
        bytes_field(&mut object, "value", &holder.value, false);
        Value::Object(object)
    })
}

/// `POST /v1/locks/NAME` with `{"lease": ID, "timeout_ms": N, "value": …}`: the lock, its
/// fencing token; `409 lock_timeout` if another held it for all of `timeout_ms`.
pub async fn lock(
    State(gateway): Shared,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = key_of(&uri, LOCK_PREFIX)?;
    query_pairs(&uri, &[])?;
    let bytes = read_body(&headers, body, body_cap(&gateway, &headers)).await?;
    let object = json_object(&bytes, &["lease", "timeout_ms", "value", "value_base64"])?;
    let Some(lease) = number_field(&object, "lease")? else {
        return Err(bad_json(
            "a lock needs `lease`: the lease it is held by (POST /v1/leases grants one)",
        ));
    };
    let timeout_ms = number_field(&object, "timeout_ms")?.unwrap_or(0);
    let value = take_bytes(&object, "value", false)?.flatten().unwrap_or_default();
    let wait = Duration::from_millis(timeout_ms).min(gateway.request_timeout() * 6);
    let Some(holder) = gateway.lock(&name, lease, &value, wait).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "lock_timeout",
            format!(
                "another lease held the lock for all of {timeout_ms} ms; this one left its line"
            ),
        ));
    };
    Ok(json_response(StatusCode::OK, json!({ "lease": holder.lease, "token": holder.token })))
}

/// `DELETE /v1/locks/NAME?lease=ID`.
pub async fn unlock(State(gateway): Shared, uri: Uri) -> Result<Response, ApiError> {
    let name = key_of(&uri, LOCK_PREFIX)?;
    let mut lease = None;
    for (name, value) in query_pairs(&uri, &["lease"])? {
        lease = Some(number(&name, &value)?);
    }
    let Some(lease) = lease else {
        return Err(bad_parameter("an unlock needs `lease`: the lease that holds the lock"));
    };
    let released = gateway.unlock(&name, lease).await?;
    Ok(json_response(StatusCode::OK, json!({ "released": released })))
}

/// `GET /v1/locks/NAME`: its holder (null: free).
pub async fn lock_holder(State(gateway): Shared, uri: Uri) -> Result<Response, ApiError> {
    let name = key_of(&uri, LOCK_PREFIX)?;
    query_pairs(&uri, &[])?;
    let holder = gateway.lock_holder(&name).await?;
    Ok(json_response(StatusCode::OK, json!({ "holder": holder_json(holder.as_ref()) })))
}

/// One change as a line of a watch stream.
fn change_line(change: &Change, base64: bool) -> Bytes {
    let mut object = Map::new();
    object.insert("revision".into(), change.revision.into());
    let kind = match change.kind {
        ChangeKind::Put => "put",
        ChangeKind::Delete => "delete",
        ChangeKind::Locked { .. } => "locked",
        ChangeKind::Unlocked => "unlocked",
        ChangeKind::Proclaimed => "proclaimed",
    };
    object.insert("type".into(), kind.into());
    bytes_field(&mut object, "key", &change.key, base64);
    if let ChangeKind::Locked { lease, token } = change.kind {
        object.insert("lease".into(), lease.into());
        object.insert("token".into(), token.into());
    }
    if !matches!(change.kind, ChangeKind::Delete | ChangeKind::Unlocked) {
        bytes_field(&mut object, "value", &change.value, base64);
    }
    let mut line = Value::Object(object).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// What a watch request asks.
struct WatchAsk {
    range: KeyRange,
    from: u64,
    limit: u64,
    timeout: Option<Duration>,
    locks: bool,
    base64: bool,
}

fn watch_ask(uri: &Uri) -> Result<WatchAsk, ApiError> {
    let allowed = ["key", "prefix", "revision", "limit", "timeout_ms", "locks", "encoding"];
    let mut ask = WatchAsk {
        range: KeyRange::Prefix(Vec::new()),
        from: 0,
        limit: u64::MAX,
        timeout: None,
        locks: false,
        base64: false,
    };
    let mut ranges = 0;
    for (name, value) in query_pairs(uri, &allowed)? {
        match name.as_str() {
            "key" if value.is_empty() => {
                return Err(ApiError::bad_request("bad_key", "the key is empty"));
            }
            "key" => (ask.range, ranges) = (KeyRange::Key(value.into_bytes()), ranges + 1),
            "prefix" => (ask.range, ranges) = (KeyRange::Prefix(value.into_bytes()), ranges + 1),
            "revision" => ask.from = number(&name, &value)?,
            "limit" => ask.limit = number(&name, &value)?.max(1),
            "timeout_ms" => ask.timeout = Some(Duration::from_millis(number(&name, &value)?)),
            "locks" => ask.locks = flag(&name, &value)?,
            _ => ask.base64 = encoding(&value)?,
        }
    }
    if ranges != 1 {
        return Err(bad_parameter("a watch needs one of `key` or `prefix` (empty for every key)"));
    }
    Ok(ask)
}

/// `GET /v1/watch?key=K|prefix=P[&revision=R][&limit=N][&timeout_ms=T][&locks=true]`: every
/// change from revision R (now, without it), one JSON line each, in revision order; the
/// stream ends after `limit` changes (at the end of a revision) or `timeout_ms`, else when the
/// client leaves. `quorum-watch-revision` names the first revision watched.
pub async fn watch(State(gateway): Shared, uri: Uri) -> Result<Response, ApiError> {
    let ask = watch_ask(&uri)?;
    let mut watch = FrontWatch::start(gateway, ask.range.clone(), ask.from, ask.locks).await?;
    let first = watch.next_revision();
    // The first round before the answer: a compacted revision gets its status, not a line.
    let changes = watch.wait(Duration::ZERO).await?;
    let (mut sender, channel) = http_body_util::channel::Channel::<Bytes, axum::Error>::new(16);
    tokio::spawn(async move {
        let deadline = ask.timeout.map(|timeout| tokio::time::Instant::now() + timeout);
        let (mut sent, mut changes) = (0_u64, changes);
        loop {
            for change in &changes {
                if sender.send_data(change_line(change, ask.base64)).await.is_err() {
                    return;
                }
                sent += 1;
            }
            if sent >= ask.limit {
                return;
            }
            let left = deadline.map_or(WATCH_ROUND, |deadline| {
                deadline.saturating_duration_since(tokio::time::Instant::now()).min(WATCH_ROUND)
            });
            if left.is_zero() {
                return;
            }
            changes = match watch.wait(left).await {
                Ok(changes) => changes,
                Err(error) => {
                    let line = super::body::error_json(error.code(), &error.to_string()) + "\n";
                    let _ = sender.send_data(Bytes::from(line)).await;
                    return;
                }
            };
        }
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (header::HeaderName::from_static("quorum-watch-revision"), first.to_string()),
        ],
        Body::new(channel),
    )
        .into_response())
}
