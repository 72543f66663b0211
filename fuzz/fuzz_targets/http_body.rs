//! A JSON body sent to the HTTP API's key-value routes (`PUT /v1/kv/KEY` with a JSON content
//! type, `POST /v1/cas/KEY`): refused with a reason or read, and what is read survives the
//! answers' encoding unchanged (`quorum::front::fuzzing::http_json_body`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    quorum::front::fuzzing::http_json_body(data);
});
