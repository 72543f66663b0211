//! Entry points for the fuzz targets of `fuzz/` (docs/fuzzing.md): the front ends' own
//! decoders of client bytes, the RESP request parser with its command parser, and the HTTP
//! API's JSON bodies (HTTP itself is hyper's). Each checks properties beyond "no panic".

use bytes::BytesMut;

use super::http::body;
use super::resp::{command, parse};

/// Small limits, so that inputs reach every bound.
const LIMITS: parse::Limits = parse::Limits {
    arguments_max: 16,
    bulk_bytes_max: 64,
    request_bytes_max: 256,
    inline_bytes_max: 128,
};

/// Every request in `data`, or the error that ends the connection, and where it stopped.
fn requests(data: &[u8], piece: usize) -> (Vec<Vec<bytes::Bytes>>, Option<parse::ParseError>) {
    let mut parser = parse::RequestParser::new(LIMITS);
    let mut buffer = BytesMut::new();
    let mut requests = Vec::new();
    for chunk in data.chunks(piece.max(1)) {
        buffer.extend_from_slice(chunk);
        loop {
            match parser.next(&mut buffer) {
                Ok(Some(request)) => requests.push(request),
                Ok(None) => break,
                Err(error) => return (requests, Some(error)),
            }
        }
    }
    (requests, None)
}

/// RESP requests, fed whole and in pieces of `piece` bytes: the same requests come out, and
/// the same refusal ends both, however the bytes arrive; none breaks a bound; every request
/// parses to a command or a reply naming what is wrong.
///
/// # Panics
/// A property fails (the fuzzer's finding).
pub fn resp_requests(data: &[u8], piece: usize) {
    let whole = requests(data, data.len());
    let pieces = requests(data, piece);
    assert_eq!(whole, pieces, "the bytes' arrival changed what was read");
    for request in whole.0 {
        assert!(request.len() <= LIMITS.arguments_max, "too many arguments taken");
        let bytes: usize = request.iter().map(bytes::Bytes::len).sum();
        assert!(bytes <= LIMITS.request_bytes_max.max(LIMITS.inline_bytes_max), "too large");
        if !request.is_empty() {
            let _ = command::parse(request);
        }
    }
}

/// An HTTP JSON body as the key-value routes read it (`value`/`value_base64`,
/// `expected`/`expected_base64`): refused with a reason or read, and what is read comes back
/// unchanged through the encoding the answers use.
///
/// # Panics
/// A property fails (the fuzzer's finding).
pub fn http_json_body(data: &[u8]) {
    let allowed = ["expected", "expected_base64", "value", "value_base64"];
    let Ok(object) = body::json_object(data, &allowed) else { return };
    for (name, nullable) in [("value", false), ("expected", true)] {
        let Ok(Some(Some(bytes))) = body::take_bytes(&object, name, nullable) else { continue };
        for base64 in [false, true] {
            let mut encoded = serde_json::Map::new();
            body::bytes_field(&mut encoded, name, &bytes, base64);
            let again = body::take_bytes(&encoded, name, nullable);
            assert_eq!(again.ok(), Some(Some(Some(bytes.clone()))), "{name} round trip");
        }
    }
}
