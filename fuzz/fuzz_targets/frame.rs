//! The frame decoder (`transport::codec::decode`) on any body a peer or client could send:
//! it returns a frame or an error, never panics. A frame that decodes re-encodes to one that
//! decodes equal, and a protocol message that decodes is taken or refused by a replica
//! (`Replica::on_message`, which runs `check_envelope`), whose invariants hold afterwards.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quorum::core::{Config, Envelope, NodeId, Replica, check_batch};
use quorum::transport::codec::{Body, Encoder, PREFIX_BYTES, decode};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = decode(&Bytes::copy_from_slice(data)) else { return };
    let encoded = Encoder::default().encode_to_vec(&frame);
    let total = u32::from_le_bytes(encoded[..PREFIX_BYTES].try_into().expect("a prefix"));
    assert_eq!(total as usize, encoded.len() - PREFIX_BYTES, "prefix counts the rest");
    let again = decode(&Bytes::copy_from_slice(&encoded[PREFIX_BYTES..]))
        .expect("a re-encoded frame decodes");
    assert_eq!(again, frame, "decode, encode, decode round-trips");
    match frame.body {
        Body::Peer(message) => {
            // Three voters and a learner, in the frame's own cluster so that the message is
            // looked at, not refused for its cluster alone.
            let config = Config {
                learners: vec![NodeId(4)],
                ..Config::new(frame.cluster_id, NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)])
            };
            let mut replica = Replica::new(config).expect("a valid configuration");
            let envelope = Envelope { cluster_id: frame.cluster_id, from: frame.from, message };
            let _ = replica.on_message(envelope);
            replica.check_invariants(true);
        }
        // Client commands are checked by the shard, not the decoder: the check must not
        // panic either.
        Body::Requests(requests) => {
            let _ = check_batch(&requests.batch);
        }
        _ => {}
    }
});
