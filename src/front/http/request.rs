//! What a request's path and query say: the key a path names, the query's parameters (each
//! among those the endpoint takes), the encoding asked for, and the body cap of a value.

use axum::http::{HeaderMap, Uri};

use super::body::ApiError;
use crate::front::Gateway;

/// Where keys start in a KV path.
pub const KV_PREFIX: &str = "/v1/kv/";

/// The key a path names after `prefix`, percent-decoded: any bytes.
pub fn key_of(uri: &Uri, prefix: &str) -> Result<Vec<u8>, ApiError> {
    let path = uri.path();
    let encoded = path.strip_prefix(prefix).unwrap_or_default();
    if encoded.is_empty() {
        return Err(ApiError::bad_request("bad_key", "the key is empty"));
    }
    Ok(percent_encoding::percent_decode_str(encoded).collect())
}

/// The query's parameters as pairs, every name among `allowed`.
pub fn query_pairs(uri: &Uri, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for pair in uri.query().unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
        };
        let name = decode(name);
        if !allowed.contains(&name.as_str()) {
            let allowed = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
            return Err(ApiError::bad_request(
                "bad_parameter",
                format!("unknown query parameter `{name}` (this endpoint takes: {allowed})"),
            ));
        }
        pairs.push((name, decode(value)));
    }
    Ok(pairs)
}

/// `base64` or `text` (the default), as `encoding=` names them.
pub fn encoding(value: &str) -> Result<bool, ApiError> {
    match value {
        "base64" => Ok(true),
        "text" => Ok(false),
        other => Err(ApiError::bad_request(
            "bad_parameter",
            format!("encoding `{other}`: use text (the default) or base64"),
        )),
    }
}

/// Caps: a raw value cannot be larger than a command; a JSON envelope holds base64 (4/3 of
/// the value) or escaped text, so it gets twice that.
pub fn body_cap(gateway: &Gateway, headers: &HeaderMap) -> usize {
    let max = gateway.command_bytes_max();
    if super::body::is_json(headers) { max.saturating_mul(2).saturating_add(1024) } else { max }
}
