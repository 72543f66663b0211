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
/// 2: the applier image carries the session eviction state (seen commands, each session's last
/// use and dropped mark, the evicted ids). 3: each session's register-session nonce.
const VERSION: u32 = 3;
/// Bytes before the body.
pub const HEADER_BYTES: usize = 48;
/// The least capacity an image is built in (see [`Snapshot::encode_with`]).
const IMAGE_CAPACITY_MIN: usize = 33 << 20;

/// The largest snapshot assembled from pieces (in memory): a replica releases its WAL only
/// behind a snapshot no larger, so every reader can take it.
pub const ASSEMBLY_BYTES_MAX: u64 = 1 << 30;

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
        check_format(&bytes)?;
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
        if header.slot > crate::core::SLOT_MAX {
            // A replica goes on from this slot: it must be one a message may name too.
            return Err(SnapshotError::Format("a slot beyond the last one a log may reach"));
        }
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

/// Checks the magic and version of a snapshot's header (`head` holds at least the header).
fn check_format(head: &[u8]) -> Result<(), SnapshotError> {
    if head[..8] != MAGIC.to_le_bytes() {
        return Err(SnapshotError::Format("bad magic"));
    }
    if head[8..12] != VERSION.to_le_bytes() {
        return Err(SnapshotError::Format("unsupported version"));
    }
    Ok(())
}

/// The slot a snapshot's first bytes name, if they start a snapshot of a known version (the
/// rest is checked when the whole arrives: [`Snapshot::decode`]).
#[must_use]
pub fn slot_in_header(head: &[u8]) -> Option<Slot> {
    let head = head.get(..HEADER_BYTES)?;
    check_format(head).ok()?;
    Some(Slot(u64::from_le_bytes(head[24..32].try_into().expect("8"))))
}

/// A snapshot arriving in pieces ([`crate::core::Message::Snapshot`]), in order: one at a time,
/// each next one pulled by the receiver, so a snapshot of any size crosses the network in
/// frames of bounded size and never floods a connection's queue.
#[derive(Debug, Default)]
pub struct Assembly {
    /// The snapshot being put together: its slot, length and the bytes so far.
    partial: Option<(Slot, u64, Vec<u8>)>,
    /// A piece was added since another snapshot's first piece was last turned down.
    progressed: bool,
}

/// What a piece of a snapshot leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// The snapshot is whole (not checked yet).
    Whole(Bytes),
    /// Ask the sender for the bytes from this offset of the snapshot at this slot.
    Pull(Slot, u64),
    /// Nothing: a piece already held, out of order, or of a snapshot too large to take.
    Ignored,
}

impl Assembly {
    /// Takes the piece `offset..offset + bytes.len()` of the `total`-byte snapshot at `slot`.
    /// A first piece of the one being assembled (its sender was asked again) resumes where it
    /// stands. A first piece of another replaces it if newer, or if no piece came since the
    /// last one turned down (its sender stopped: crashed, or its snapshot replaced); otherwise
    /// it is turned down, so two senders never take turns starting over. Snapshots over
    /// `total_max` bytes are ignored.
    pub fn take(
        &mut self,
        slot: Slot,
        offset: u64,
        total: u64,
        bytes: Bytes,
        total_max: u64,
    ) -> Piece {
        let end = offset.saturating_add(bytes.len() as u64);
        if total > total_max || end > total {
            return Piece::Ignored;
        }
        match &mut self.partial {
            Some((held_slot, held_total, held)) if *held_slot == slot && *held_total == total => {
                if offset != held.len() as u64 {
                    // A first piece again (the sender was asked again): go on from here.
                    return if offset == 0 {
                        Piece::Pull(slot, held.len() as u64)
                    } else {
                        Piece::Ignored
                    };
                }
                held.extend_from_slice(&bytes);
                self.progressed = true;
            }
            Some((held_slot, ..)) if offset == 0 && slot <= *held_slot && self.progressed => {
                self.progressed = false;
                return Piece::Ignored;
            }
            _ if offset == 0 => {
                if end == total {
                    self.partial = None;
                    return Piece::Whole(bytes);
                }
                // Room for the whole only up to a point: memory follows the pieces that came,
                // not what a first piece announces.
                let capacity = usize::try_from(total).unwrap_or(usize::MAX).min(64 << 20);
                let mut held = Vec::with_capacity(capacity);
                held.extend_from_slice(&bytes);
                self.partial = Some((slot, total, held));
                self.progressed = true;
            }
            _ => return Piece::Ignored,
        }
        let Some((_, total, held)) = &self.partial else { unreachable!("held above") };
        if held.len() as u64 == *total {
            let (_, _, held) = self.partial.take().expect("held");
            Piece::Whole(Bytes::from(held))
        } else {
            Piece::Pull(slot, held.len() as u64)
        }
    }

    /// [`Assembly::take`] for a replica at commit position `commit`: a piece of a snapshot
    /// not ahead of it is ignored (nothing to gain), and a partial one it has gone past is
    /// dropped, its memory given back.
    pub fn receive(
        &mut self,
        commit: Slot,
        slot: Slot,
        offset: u64,
        total: u64,
        bytes: Bytes,
        total_max: u64,
    ) -> Piece {
        if self.partial.as_ref().is_some_and(|(held, ..)| *held <= commit) {
            self.partial = None;
        }
        if slot <= commit {
            return Piece::Ignored;
        }
        self.take(slot, offset, total, bytes, total_max)
    }

    /// Bytes held for a snapshot not yet whole.
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.partial.as_ref().map_or(0, |(_, _, held)| held.len())
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

    fn pieces(bytes: &[u8], size: usize) -> Vec<(u64, Bytes)> {
        bytes
            .chunks(size)
            .enumerate()
            .map(|(i, piece)| ((i * size) as u64, Bytes::copy_from_slice(piece)))
            .collect()
    }

    #[test]
    fn pieces_in_order_make_the_whole_and_each_pulls_the_next() {
        let whole: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut assembly = Assembly::default();
        let parts = pieces(&whole, 300);
        for (offset, piece) in &parts[..3] {
            let next = offset + piece.len() as u64;
            assert_eq!(
                assembly.take(Slot(9), *offset, 1000, piece.clone(), 1 << 20),
                Piece::Pull(Slot(9), next)
            );
        }
        // A duplicate, a piece from the future and a first piece of the same snapshot (its
        // sender asked again) do not disturb it; the last resumes where it stands.
        assert_eq!(assembly.take(Slot(9), 300, 1000, parts[1].1.clone(), 1 << 20), Piece::Ignored);
        assert_eq!(
            assembly.take(Slot(9), 0, 1000, parts[0].1.clone(), 1 << 20),
            Piece::Pull(Slot(9), 900)
        );
        assert_eq!(assembly.held_bytes(), 900);
        assert_eq!(
            assembly.take(Slot(9), 900, 1000, parts[3].1.clone(), 1 << 20),
            Piece::Whole(Bytes::from(whole))
        );
        assert_eq!(assembly.held_bytes(), 0);
    }

    #[test]
    fn another_snapshot_replaces_one_only_if_newer_or_stalled() {
        let mut assembly = Assembly::default();
        let piece = |byte: u8| Bytes::from(vec![byte; 10]);
        assert_eq!(assembly.take(Slot(5), 0, 30, piece(1), 100), Piece::Pull(Slot(5), 10));
        // An older one's first piece is turned down while this one progresses...
        assert_eq!(assembly.take(Slot(4), 0, 30, piece(2), 100), Piece::Ignored);
        assert_eq!(assembly.take(Slot(5), 10, 30, piece(1), 100), Piece::Pull(Slot(5), 20));
        assert_eq!(assembly.take(Slot(4), 0, 30, piece(2), 100), Piece::Ignored);
        // ...and taken once nothing came in between (this one's sender stopped).
        assert_eq!(assembly.take(Slot(4), 0, 30, piece(2), 100), Piece::Pull(Slot(4), 10));
        // A newer one replaces it at once.
        assert_eq!(assembly.take(Slot(6), 0, 30, piece(3), 100), Piece::Pull(Slot(6), 10));
        assert_eq!(assembly.take(Slot(4), 10, 30, piece(2), 100), Piece::Ignored);
        // Too large, or a piece past its length: ignored. A one-piece snapshot is whole at once.
        assert_eq!(assembly.take(Slot(7), 0, 101, piece(4), 100), Piece::Ignored);
        assert_eq!(assembly.take(Slot(7), 25, 30, piece(4), 100), Piece::Ignored);
        assert_eq!(assembly.take(Slot(8), 0, 10, piece(5), 100), Piece::Whole(piece(5)));
        // A replica ignores snapshots not ahead of it, and gives back a partial one it went
        // past.
        assert_eq!(
            assembly.receive(Slot(8), Slot(9), 0, 30, piece(6), 100),
            Piece::Pull(Slot(9), 10)
        );
        assert_eq!(assembly.receive(Slot(8), Slot(8), 0, 30, piece(6), 100), Piece::Ignored);
        assert_eq!(assembly.held_bytes(), 10);
        assert_eq!(assembly.receive(Slot(9), Slot(9), 10, 30, piece(6), 100), Piece::Ignored);
        assert_eq!(assembly.held_bytes(), 0);
    }

    #[test]
    fn the_slot_is_read_from_a_header_of_a_known_version() {
        let snapshot = Snapshot::encode(
            SnapshotHeader { cluster_id: ClusterId(1), shard: 0, slot: Slot(77) },
            b"body",
        );
        assert_eq!(slot_in_header(&snapshot.bytes[..HEADER_BYTES]), Some(Slot(77)));
        assert_eq!(slot_in_header(&snapshot.bytes[..HEADER_BYTES - 1]), None);
        let mut other = snapshot.bytes.to_vec();
        other[8] = 9;
        assert_eq!(slot_in_header(&other), None);
    }

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
