//! A shard's snapshot: its applied state at a slot (the state machine and the session table),
//! so that the WAL before that slot can go (docs/snapshots.md).
//!
//! ```text
//! 0 magic u64 "QRMSNAP\x01" │ 8 version u32 │ 12 shard u16 │ 14 zero u16 │ 16 cluster_id u64
//! 24 slot u64 │ 32 body_len u64 │ 40 crc32c u32 (bytes 0..40, then the body) │ 44 zero u32
//! 48 body: the applier's image (`Applier::snapshot`)
//! ```
//!
//! Every slot below `slot` is applied in the image, none at or above it. Little-endian.

use bytes::Bytes;

use crate::core::{ClusterId, Slot};

const MAGIC: u64 = u64::from_le_bytes(*b"QRMSNAP\x01");
const VERSION: u32 = 1;
/// Bytes before the body.
pub const HEADER_BYTES: usize = 48;
/// The least capacity an image is built in (see [`Snapshot::encode_with`]).
const IMAGE_CAPACITY_MIN: usize = 33 << 20;

/// The snapshot's file name, next to the WAL's segments.
pub const FILE_NAME: &str = "snapshot";

/// Why a snapshot was refused. Nothing is changed by a refused snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Shorter than its header or than the body its header announces.
    #[error("snapshot truncated: {0}")]
    Truncated(&'static str),
    /// Not a snapshot, or a format this build does not read.
    #[error("not a Quorum snapshot of a known version: {0}")]
    Format(&'static str),
    /// The checksum does not match: damaged on disk or on the wire.
    #[error("snapshot checksum mismatch (damaged)")]
    Checksum,
    /// A snapshot of another cluster or shard.
    #[error(
        "snapshot of cluster {cluster} shard {shard}, expected cluster {expected_cluster} shard {expected_shard}"
    )]
    Elsewhere {
        /// The snapshot's cluster.
        cluster: u64,
        /// The snapshot's shard.
        shard: u16,
        /// This replica's cluster.
        expected_cluster: u64,
        /// This replica's shard.
        expected_shard: u16,
    },
    /// The body does not decode as the state machine's image.
    #[error("snapshot image malformed: {0}")]
    Image(&'static str),
}

/// Who a snapshot belongs to and where it stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// The shard.
    pub shard: u16,
    /// Every slot below is applied in the image.
    pub slot: Slot,
}

/// A snapshot's bytes, checked, with its header.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Who and where.
    pub header: SnapshotHeader,
    /// The whole encoding (header and body), as written to disk and sent to peers.
    pub bytes: Bytes,
}

impl Snapshot {
    /// The encoding of `body` (an applier's image) under `header`.
    #[must_use]
    pub fn encode(header: SnapshotHeader, body: &[u8]) -> Snapshot {
        Snapshot::encode_with(header, |out| out.extend_from_slice(body))
    }

    /// The encoding of the image `write_body` appends, under `header`, built in place (an
    /// image can be large: it is not copied again).
    #[must_use]
    pub fn encode_with(header: SnapshotHeader, write_body: impl FnOnce(&mut Vec<u8>)) -> Snapshot {
        // Reserved above the allocator's mapping threshold (the `quorum` binary fixes it at
        // 32 MiB): the buffer is then a mapping of its own, resident only where written and
        // given back whole when dropped, instead of staying in the heap after every snapshot.
        let mut out = Vec::with_capacity(IMAGE_CAPACITY_MIN);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&header.shard.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&header.cluster_id.0.to_le_bytes());
        out.extend_from_slice(&header.slot.0.to_le_bytes());
        out.resize(HEADER_BYTES, 0);
        write_body(&mut out);
        let body_len = (out.len() - HEADER_BYTES) as u64;
        out[32..40].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..40]), &out[HEADER_BYTES..]);
        out[40..44].copy_from_slice(&crc.to_le_bytes());
        Snapshot { header, bytes: Bytes::from(out) }
    }

    /// Checks a snapshot's encoding: format, checksum, and that it is this shard's.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn decode(
        bytes: Bytes,
        cluster_id: ClusterId,
        shard: u16,
    ) -> Result<Snapshot, SnapshotError> {
        if bytes.len() < HEADER_BYTES {
            return Err(SnapshotError::Truncated("shorter than the header"));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        if u64_at(0) != MAGIC {
            return Err(SnapshotError::Format("bad magic"));
        }
        if u32::from_le_bytes(bytes[8..12].try_into().expect("4")) != VERSION {
            return Err(SnapshotError::Format("unsupported version"));
        }
        let body_len = u64_at(32);
        if body_len != (bytes.len() - HEADER_BYTES) as u64 {
            return Err(SnapshotError::Truncated("body length differs from the header's"));
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..40]), &bytes[HEADER_BYTES..]);
        if crc != u32::from_le_bytes(bytes[40..44].try_into().expect("4")) {
            return Err(SnapshotError::Checksum);
        }
        if bytes[44..HEADER_BYTES] != [0; 4] {
            return Err(SnapshotError::Format("reserved bytes set"));
        }
        let header = SnapshotHeader {
            cluster_id: ClusterId(u64_at(16)),
            shard: u16::from_le_bytes([bytes[12], bytes[13]]),
            slot: Slot(u64_at(24)),
        };
        if header.cluster_id != cluster_id || header.shard != shard {
            return Err(SnapshotError::Elsewhere {
                cluster: header.cluster_id.0,
                shard: header.shard,
                expected_cluster: cluster_id.0,
                expected_shard: shard,
            });
        }
        Ok(Snapshot { header, bytes })
    }

    /// The applier's image.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_BYTES..]
    }
}

/// Reads the fields of an image in order; every read checks the length first.
#[derive(Debug)]
pub struct ImageReader<'a> {
    rest: &'a [u8],
}

impl<'a> ImageReader<'a> {
    /// A reader over `bytes`.
    #[must_use]
    pub fn new(bytes: &'a [u8]) -> ImageReader<'a> {
        ImageReader { rest: bytes }
    }

    /// The next `len` bytes.
    ///
    /// # Errors
    /// Fewer are left.
    pub fn bytes(&mut self, len: usize) -> Result<&'a [u8], SnapshotError> {
        if self.rest.len() < len {
            return Err(SnapshotError::Image("a field runs past the end"));
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }

    /// The next little-endian u64.
    ///
    /// # Errors
    /// Fewer than 8 bytes are left.
    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8")))
    }

    /// The next length-prefixed (u32) field.
    ///
    /// # Errors
    /// It runs past the end.
    pub fn field(&mut self) -> Result<&'a [u8], SnapshotError> {
        let len = u32::from_le_bytes(self.bytes(4)?.try_into().expect("4"));
        self.bytes(len as usize)
    }

    /// What is left.
    #[must_use]
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

/// Appends a length-prefixed (u32) field.
///
/// # Panics
/// The field is 4 GiB or more.
pub fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).expect("field fits u32").to_le_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader { cluster_id: ClusterId(7), shard: 2, slot: Slot(1234) }
    }

    #[test]
    fn round_trips_and_every_damage_is_refused() {
        let snapshot = Snapshot::encode(header(), b"the image");
        let decoded = Snapshot::decode(snapshot.bytes.clone(), ClusterId(7), 2).unwrap();
        assert_eq!(decoded.header, header());
        assert_eq!(decoded.body(), b"the image");
        for at in 0..snapshot.bytes.len() {
            let mut damaged = snapshot.bytes.to_vec();
            damaged[at] ^= 0x10;
            assert!(
                Snapshot::decode(Bytes::from(damaged), ClusterId(7), 2).is_err(),
                "a flip at byte {at} went unnoticed"
            );
        }
        for len in 0..snapshot.bytes.len() {
            assert!(Snapshot::decode(snapshot.bytes.slice(..len), ClusterId(7), 2).is_err());
        }
    }

    #[test]
    fn another_shards_snapshot_is_refused() {
        let snapshot = Snapshot::encode(header(), b"x");
        let error = Snapshot::decode(snapshot.bytes, ClusterId(7), 3).unwrap_err();
        assert!(matches!(error, SnapshotError::Elsewhere { shard: 2, expected_shard: 3, .. }));
    }
}
