//! Bytes from a Redis client: RESP2/RESP3 requests, multibulk and inline, read by the
//! front end's parser as they arrive (`quorum::front::fuzzing::resp_requests`): whole and in
//! pieces of a size the input's first byte picks, the same requests and the same refusal
//! must come out; every request's command parse answers or refuses.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, rest)) = data.split_first() else { return };
    quorum::front::fuzzing::resp_requests(rest, usize::from(piece % 17) + 1);
});
