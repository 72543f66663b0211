//! Snapshot images on any bytes a disk or a peer could hold: the snapshot file's header and
//! checksum (`Snapshot::decode`), and the key-value applier's image behind it
//! (`Applier::<KvStore>::restore`, which restores the session table and then `KvStore`),
//! read from the input directly so that the checksum does not stand in the way. Neither
//! panics nor allocates from a count it has not checked; an image that restores is written
//! again (`Applier::snapshot`) into one that restores to the same image, and a snapshot that
//! decodes re-encodes into one that decodes to the same header and body.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quorum::core::{ClusterId, Slot};
use quorum::storage::snapshot::{HEADER_BYTES, Snapshot, SnapshotHeader};
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
    if let Ok(snapshot) = Snapshot::decode(Bytes::copy_from_slice(data), ClusterId(cluster), shard)
    {
        // Re-encoded, it decodes to the same header and body (not always the same bytes:
        // the two bytes after the shard number are not checked).
        let again = Snapshot::encode(snapshot.header, snapshot.body());
        let again = Snapshot::decode(again.bytes, ClusterId(cluster), shard)
            .expect("a re-encoded snapshot decodes");
        assert_eq!((again.header, again.body()), (snapshot.header, snapshot.body()));
        let _ = Applier::<KvStore>::restore(snapshot.body(), limits);
    }

    // As an image.
    let Ok(applier) = Applier::<KvStore>::restore(data, limits) else { return };
    let mut image = Vec::new();
    applier.snapshot(&mut image);
    let restored = Applier::<KvStore>::restore(&image, limits).expect("its own image restores");
    let mut again = Vec::new();
    restored.snapshot(&mut again);
    assert_eq!(again, image, "an image restores to the same image");
    // The image wrapped in a snapshot file is taken back whole.
    let header = SnapshotHeader { cluster_id: ClusterId(7), shard: 3, slot: Slot(5) };
    let file = Snapshot::encode(header, &image);
    let decoded = Snapshot::decode(file.bytes, ClusterId(7), 3).expect("its own snapshot decodes");
    assert_eq!(decoded.body(), &image[..]);
});
