//! What HTTP requests carry and answers hold: errors as `{"error": {"code", "message"}}` with
//! their status, values as raw bytes or in a JSON envelope (`value` for UTF-8 text,
//! `value_base64` for any bytes), bodies read up to a cap.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::{Map, Value, json};

use crate::front::RequestError;
use crate::machine::kv::CoordError;

/// An answer that is an error: its status, stable code and message, and fields to add beside
/// `error` (a compare-and-set's current value).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Map<String, Value>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), extra: Map::new() }
    }

    /// 400 with this code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Adds a field beside `error`.
    pub fn with(mut self, name: &str, value: Value) -> ApiError {
        self.extra.insert(name.to_string(), value);
        self
    }
}

/// `{"error": {"code": …, "message": …}}` as text.
pub fn error_json(code: &str, message: &str) -> String {
    json!({ "error": { "code": code, "message": message } }).to_string()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut object = Map::new();
        object.insert("error".into(), json!({ "code": self.code, "message": self.message }));
        object.extend(self.extra);
        json_response(self.status, Value::Object(object))
    }
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> ApiError {
        let status = match &error {
            RequestError::Timeout(_) | RequestError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RequestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::OutOfSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            RequestError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RequestError::BadReply(_) => StatusCode::BAD_GATEWAY,
            // The member is behind: another, or a laxer bound, may answer.
            RequestError::TooStale(_) => StatusCode::SERVICE_UNAVAILABLE,
            RequestError::Coordination(error) => coordination_status(error),
            RequestError::CrossShard(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

/// The HTTP status of a coordination refusal: the request's fault (4xx) except a shard too
/// busy to hold another watch.
fn coordination_status(error: &CoordError) -> StatusCode {
    match error {
        CoordError::KeyTooLarge { .. } | CoordError::ValueTooLarge { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        CoordError::LeaseNotFound { .. } => StatusCode::NOT_FOUND,
        CoordError::LeaseExists { .. } | CoordError::LeaseRefreshed { .. } => StatusCode::CONFLICT,
        CoordError::Compacted { .. } => StatusCode::GONE,
        CoordError::NotHolder { .. } => StatusCode::PRECONDITION_FAILED,
        CoordError::TooManyWatches { .. } => StatusCode::SERVICE_UNAVAILABLE,
        CoordError::TooManyOps { .. }
        | CoordError::ZeroLease
        | CoordError::BadTtl { .. }
        | CoordError::Malformed
        | CoordError::NotARead => StatusCode::BAD_REQUEST,
    }
}

/// A JSON answer with this status.
pub fn json_response(status: StatusCode, value: Value) -> Response {
    let mut text = value.to_string();
    text.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// Bytes as a JSON field: `name` with the text if `bytes` are UTF-8 and `base64` is not asked
/// for, else `name_base64` with their base64.
pub fn bytes_field(object: &mut Map<String, Value>, name: &str, bytes: &[u8], base64: bool) {
    match std::str::from_utf8(bytes) {
        Ok(text) if !base64 => {
            object.insert(name.to_string(), Value::String(text.to_string()));
        }
        _ => {
            object.insert(format!("{name}_base64"), Value::String(BASE64.encode(bytes)));
        }
    }
}

/// [`bytes_field`] for an optional value: `null` under `name` when absent.
pub fn optional_bytes_field(
    object: &mut Map<String, Value>,
    name: &str,
    bytes: Option<&[u8]>,
    base64: bool,
) {
    match bytes {
        Some(bytes) => bytes_field(object, name, bytes, base64),
        None => {
            object.insert(name.to_string(), Value::Null);
        }
    }
}

/// True if the request says its body is JSON.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// True if the request asks for the raw value (`Accept: application/octet-stream`).
pub fn wants_raw(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|value| value.to_str().ok()).any(|value| {
        value
            .split(',')
            .filter_map(|media| media.split(';').next())
            .any(|media| media.trim().eq_ignore_ascii_case("application/octet-stream"))
    })
}

/// The body, refused with 413 past `cap` bytes (by its `Content-Length` before reading it).
pub async fn read_body(headers: &HeaderMap, body: Body, cap: usize) -> Result<Bytes, ApiError> {
    let too_large = |bytes: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body ({bytes} bytes) is over this request's limit of {cap} bytes"),
        )
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if let Some(length) = announced.filter(|length| *length > cap as u64) {
        return Err(too_large(length.to_string()));
    }
    match http_body_util::Limited::new(body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(too_large("more".into()))
        }
        Err(error) => {
            Err(ApiError::bad_request("bad_body", format!("reading the body failed: {error}")))
        }
    }
}

/// Parses a JSON object body, its fields limited to `allowed`.
pub fn json_object(bytes: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|error| {
        ApiError::bad_request("bad_json", format!("the body is not JSON: {error}"))
    })?;
    let Value::Object(object) = value else {
        return Err(ApiError::bad_request("bad_json", "the body must be a JSON object"));
    };
    if let Some(unknown) = object.keys().find(|key| !allowed.contains(&key.as_str())) {
        return Err(ApiError::bad_request(
            "bad_json",
            format!("unknown field `{unknown}`: this request takes {}", allowed.join(", ")),
        ));
    }
    Ok(object)
}

/// Bytes given as `name` (UTF-8 text) or `name_base64`, exactly one of them; `Ok(None)` if
/// neither is there, `Some(None)` if the one given is `null` (only where `nullable`).
pub fn take_bytes(
    object: &Map<String, Value>,
    name: &str,
    nullable: bool,
) -> Result<Option<Option<Vec<u8>>>, ApiError> {
    let encoded = format!("{name}_base64");
    let (text, base64) = (object.get(name), object.get(&encoded));
    let value = match (text, base64) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "bad_json",
                format!("give `{name}` or `{encoded}`, not both"),
            ));
        }
        (Some(value), None) => (value, false),
        (None, Some(value)) => (value, true),
    };
    match value {
        (Value::Null, _) if nullable => Ok(Some(None)),
        (Value::String(text), false) => Ok(Some(Some(text.as_bytes().to_vec()))),
        (Value::String(text), true) => {
            BASE64.decode(text.as_bytes()).map(|bytes| Some(Some(bytes))).map_err(|error| {
                ApiError::bad_request("bad_base64", format!("`{encoded}` is not base64: {error}"))
            })
        }
        _ => {
            let what = if nullable { "a string or null" } else { "a string" };
            Err(ApiError::bad_request("bad_json", format!("`{name}` must be {what}")))
        }
    }
}

/// A value from a body: the raw bytes, or with a JSON content type the envelope
/// `{"value": TEXT}` or `{"value_base64": BASE64}`.
pub fn value_from_body(headers: &HeaderMap, bytes: Bytes) -> Result<Vec<u8>, ApiError> {
    if !is_json(headers) {
        return Ok(bytes.to_vec());
    }
    let object = json_object(&bytes, &["value", "value_base64"])?;
    match take_bytes(&object, "value", false)? {
        Some(Some(value)) => Ok(value),
        _ => Err(ApiError::bad_request("bad_json", "a JSON body needs `value` or `value_base64`")),
    }
}
