//! Snapshot images on any bytes a disk or a peer could hold: the snapshot file's header and
//! checksum (`Snapshot::decode`), the same bytes read in one pass as a shard reads its file
//! (`read_snapshot`, the applier restored from the stream) and put together from pieces as a
//! receiver does (`Assembly`), with the same verdict each way; and the key-value applier's
//! image behind it (`Applier::<KvStore>::restore`, which restores the session table and then
//! `KvStore`), read from the input directly so that the checksum does not stand in the way.
//! None panics nor allocates from a count it has not checked; an image that restores is
//! written again (`Applier::snapshot`) into one that restores to the same image, and a
//! snapshot that decodes re-encodes into one that decodes to the same header and body.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quorum::core::{ClusterId, Slot};
use quorum::storage::snapshot::{
    Assembly, HEADER_BYTES, Piece, Snapshot, SnapshotHeader, read_snapshot,
};
use quorum::machine::{Applier, KvStore, SessionLimits};

fuzz_target!(|input: &[u8]| {
    // The first byte picks the session limits: the defaults, or small ones that make the
    // restore drop replies and evict sessions.
    let Some((&mode, data)) = input.split_first() else { return };
    let limits = if mode & 1 == 0 {
        SessionLimits::DEFAULT
    } else {
        SessionLimits {
            replies_max: 1 + usize::from(mode >> 1 & 3),
            reply_bytes_max: 16 << (mode >> 3 & 3),
            sessions_max: usize::from(mode >> 5 & 3),
            idle_commands_min: 1 + u64::from(mode >> 7),
            evicted_max: usize::from(mode >> 5 & 3),
        }
    };

    // As a snapshot file: asked for the cluster and shard its header names, so that the
    // checks after that one are reached too.
    let (cluster, shard) = match data.get(..HEADER_BYTES) {
        Some(head) => (
            u64::from_le_bytes(head[16..24].try_into().expect("8 bytes")),
            u16::from_le_bytes([head[12], head[13]]),
        ),
        None => (0, 0),
    };
    let owner = (ClusterId(cluster), shard);
    let streamed =
        read_snapshot(&mut &data[..], owner, |body| Applier::<KvStore>::restore(body, limits));
    let decoded = Snapshot::decode(Bytes::copy_from_slice(data), ClusterId(cluster), shard);
    if let Ok(snapshot) = &decoded {
        // Re-encoded, it decodes to the same header and body (the two bytes after the shard
        // number are checked to be zero, so the bytes are the same too).
        let again = Snapshot::encode(snapshot.header, snapshot.body());
        assert_eq!(again.bytes, snapshot.bytes);
        let restored = Applier::<KvStore>::restore(&mut snapshot.body(), limits);
        assert_eq!(streamed.is_ok(), restored.is_ok(), "read in one pass as in memory");
    } else {
        assert!(streamed.is_err(), "a snapshot refused in memory is refused in one pass");
    }
    // In pieces of 1 to 1786 bytes, each appended to a sink: taken whole, byte for byte, if
    // and only if it decodes.
    let piece_bytes = 1 + usize::from(mode) * 7;
    let slot = Slot(data.get(24..32).map_or(0, |slot| u64::from_le_bytes(slot.try_into().expect("8"))));
    let mut assembly = Assembly::new(owner);
    let (mut offset, mut whole) = (0, false);
    loop {
        let end = (offset + piece_bytes).min(data.len());
        let total = data.len() as u64;
        match assembly.take(slot, offset as u64, total, &data[offset..end], || Ok(Vec::new())) {
            Ok(Piece::Whole(assembled)) => {
                assert_eq!(assembled.out, data, "every piece reached the sink in order");
                whole = true;
                break;
            }
            Ok(Piece::Pull(_, next)) => offset = usize::try_from(next).expect("within the input"),
            _ => break,
        }
    }
    assert_eq!(whole, decoded.is_ok(), "put together from pieces as decoded in memory");

    // As an image.
    let Ok(applier) = Applier::<KvStore>::restore(&mut &data[..], limits) else { return };
    let mut image = Vec::new();
    applier.snapshot(&mut image).expect("an image in memory");
    let restored =
        Applier::<KvStore>::restore(&mut &image[..], limits).expect("its own image restores");
    let mut again = Vec::new();
    restored.snapshot(&mut again).expect("an image in memory");
    assert_eq!(again, image, "an image restores to the same image");
    // The image wrapped in a snapshot file is taken back whole.
    let header = SnapshotHeader { cluster_id: ClusterId(7), shard: 3, slot: Slot(5) };
    let file = Snapshot::encode(header, &image);
    let decoded = Snapshot::decode(file.bytes, ClusterId(7), 3).expect("its own snapshot decodes");
    assert_eq!(decoded.body(), &image[..]);
});
