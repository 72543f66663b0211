//! A cluster backup: every shard's snapshot at one merged-order position, in one file
//! (`quorum snapshot save`, `quorum snapshot restore`; docs/operations.md, "Backup and
//! restore").
//!
//! ```text
//! 0  magic u64 "QRMBACK\x01" │ 8 version u32 │ 12 shards u16 │ 14 zero u16
//! 16 cluster_id u64 │ 24 position u64 │ 32 created_unix_ms u64
//! 40 per shard, 32 bytes: slot u64 │ snapshot_bytes u64 │ entries u64 │ digest u64
//! 40 + 32·shards: crc32c u32 (of every byte before it) │ zero u32
//! then each shard's snapshot in shard order, in the snapshot file format (storage::snapshot),
//! each checksummed by its own header; nothing after the last
//! ```
//!
//! Shard `k`'s snapshot is at slot `⌈(position − k) / shards⌉`: it holds every command at a
//! global position below `position` and none at or above it. The header's checksum covers
//! where each snapshot stands and how long it is, and each snapshot's own checksum its bytes,
//! so a damaged byte anywhere or a cut file is refused. Little-endian.

use std::io::Read;

use crate::core::{ClusterId, Slot};

const MAGIC: u64 = u64::from_le_bytes(*b"QRMBACK\x01");
const VERSION: u32 = 1;
/// Bytes before the per-shard table.
const FIXED_BYTES: usize = 40;
/// Bytes of each shard's entry.
const SECTION_BYTES: usize = 32;
/// Most shards a node runs (`NodeConfig`).
const SHARDS_MAX: u16 = 256;

/// Where one shard's snapshot stands in a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupSection {
    /// Its slot: every slot of the shard below it is applied in it.
    pub slot: Slot,
    /// The snapshot's length, its header included.
    pub snapshot_bytes: u64,
    /// Entries of its state (the state machine's summary).
    pub entries: u64,
    /// The digest of its state (the state machine's summary): a cluster restored from the
    /// backup reports this digest for the shard until it applies more.
    pub digest: u64,
}

/// A backup's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupHeader {
    /// The cluster it was taken from.
    pub cluster_id: ClusterId,
    /// Every command at a global position below this is in the backup, none at or above.
    pub position: u64,
    /// When it was taken (wall clock, for people).
    pub created_unix_ms: u64,
    /// One per shard, in shard order.
    pub sections: Vec<BackupSection>,
}

/// Why a backup file was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    /// Not a backup, or a format this build does not read.
    #[error("not a Quorum backup of a known version: {0}")]
    Format(&'static str),
    /// Shorter than its header says.
    #[error("the backup is truncated: {0}")]
    Truncated(&'static str),
    /// The header's checksum does not match: damaged.
    #[error("the backup's header checksum does not match (the file is damaged)")]
    Checksum,
    /// Its fields contradict each other.
    #[error("the backup's header is inconsistent: {0}")]
    Inconsistent(String),
    /// The file could not be read.
    #[error("the backup cannot be read: {0}")]
    Unreadable(String),
}

/// Shard `shard`'s first slot not in a backup at merged `position` of a cluster of `shards`:
/// its slots below it are at positions below `position` (slot `i` is at `i · shards + k`).
#[must_use]
pub fn slot_for_position(position: u64, shards: u16, shard: u16) -> Slot {
    Slot(position.saturating_sub(u64::from(shard)).div_ceil(u64::from(shards.max(1))))
}

impl BackupHeader {
    /// Shards in the backup.
    #[must_use]
    pub fn shards(&self) -> u16 {
        self.sections.len() as u16
    }

    /// The header's length for `shards` shards.
    #[must_use]
    pub fn encoded_bytes(shards: u16) -> usize {
        FIXED_BYTES + SECTION_BYTES * usize::from(shards) + 8
    }

    /// The header's bytes, checksum included.
    ///
    /// # Panics
    /// It has no section or more than 256 (a bug: a node has 1 to 256 shards).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let shards = self.shards();
        assert!((1..=SHARDS_MAX).contains(&shards), "a backup of {shards} shards");
        let mut out = Vec::with_capacity(BackupHeader::encoded_bytes(shards));
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&shards.to_le_bytes());
        out.extend_from_slice(&[0; 2]);
        for value in [self.cluster_id.0, self.position, self.created_unix_ms] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        for section in &self.sections {
            let fields = [section.slot.0, section.snapshot_bytes, section.entries, section.digest];
            for value in fields {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out
    }

    /// Reads and checks a header from the start of `input`, leaving `input` at the first
    /// snapshot.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn read(input: &mut dyn Read) -> Result<BackupHeader, BackupError> {
        let mut fixed = [0u8; FIXED_BYTES];
        read_exact(input, &mut fixed)?;
        if fixed[..8] != MAGIC.to_le_bytes() {
            return Err(BackupError::Format("bad magic"));
        }
        if fixed[8..12] != VERSION.to_le_bytes() {
            return Err(BackupError::Format("unsupported version"));
        }
        let shards = u16::from_le_bytes([fixed[12], fixed[13]]);
        if !(1..=SHARDS_MAX).contains(&shards) || fixed[14..16] != [0; 2] {
            return Err(BackupError::Format("a shard count out of range"));
        }
        let mut rest = vec![0u8; BackupHeader::encoded_bytes(shards) - FIXED_BYTES];
        read_exact(input, &mut rest)?;
        let table_end = rest.len() - 8;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&fixed), &rest[..table_end]);
        let u64_at = |bytes: &[u8], at: usize| {
            u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
        };
        if rest[table_end..table_end + 4] != crc.to_le_bytes() {
            return Err(BackupError::Checksum);
        }
        if rest[table_end + 4..] != [0; 4] {
            return Err(BackupError::Format("reserved bytes set"));
        }
        let header = BackupHeader {
            cluster_id: ClusterId(u64_at(&fixed, 16)),
            position: u64_at(&fixed, 24),
            created_unix_ms: u64_at(&fixed, 32),
            sections: rest[..table_end]
                .chunks_exact(SECTION_BYTES)
                .map(|entry| BackupSection {
                    slot: Slot(u64_at(entry, 0)),
                    snapshot_bytes: u64_at(entry, 8),
                    entries: u64_at(entry, 16),
                    digest: u64_at(entry, 24),
                })
                .collect(),
        };
        header.check()?;
        Ok(header)
    }

    /// Each shard's slot is the one its position gives, and each snapshot at least a header.
    fn check(&self) -> Result<(), BackupError> {
        for (shard, section) in (0..self.shards()).zip(&self.sections) {
            let expected = slot_for_position(self.position, self.shards(), shard);
            if section.slot != expected {
                return Err(BackupError::Inconsistent(format!(
                    "shard {shard}'s snapshot is at slot {}, but position {} is its slot {}",
                    section.slot.0, self.position, expected.0
                )));
            }
            if section.snapshot_bytes < super::snapshot::HEADER_BYTES as u64 {
                return Err(BackupError::Inconsistent(format!(
                    "shard {shard}'s snapshot of {} bytes is shorter than a snapshot header",
                    section.snapshot_bytes
                )));
            }
        }
        Ok(())
    }
}

fn read_exact(input: &mut dyn Read, out: &mut [u8]) -> Result<(), BackupError> {
    input.read_exact(out).map_err(|error| match error.kind() {
        std::io::ErrorKind::UnexpectedEof => BackupError::Truncated("shorter than its header"),
        _ => BackupError::Unreadable(error.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BackupHeader {
        let position = 1001;
        BackupHeader {
            cluster_id: ClusterId(7),
            position,
            created_unix_ms: 5,
            sections: (0..3)
                .map(|shard| BackupSection {
                    slot: slot_for_position(position, 3, shard),
                    snapshot_bytes: 100 + u64::from(shard),
                    entries: 3,
                    digest: 0xfeed,
                })
                .collect(),
        }
    }

    #[test]
    fn a_position_gives_each_shard_the_slot_holding_everything_below_it() {
        // Position 7 of 3 shards: slots 0-2 of shard 0 (positions 0, 3, 6), 0-1 of shards 1
        // and 2 (1, 4; 2, 5).
        let slots: Vec<u64> = (0..3).map(|shard| slot_for_position(7, 3, shard).0).collect();
        assert_eq!(slots, [3, 2, 2]);
        assert_eq!(slot_for_position(0, 3, 2), Slot(0));
        assert_eq!(slot_for_position(9, 1, 0), Slot(9));
    }

    #[test]
    fn a_header_round_trips_and_every_flip_and_cut_is_refused() {
        let bytes = header().encode();
        assert_eq!(bytes.len(), BackupHeader::encoded_bytes(3));
        assert_eq!(BackupHeader::read(&mut &bytes[..]).unwrap(), header());
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(BackupHeader::read(&mut &flipped[..]).is_err(), "flip at {at} accepted");
        }
        for len in 0..bytes.len() {
            let error = BackupHeader::read(&mut &bytes[..len]).unwrap_err();
            assert!(
                matches!(error, BackupError::Truncated(_) | BackupError::Format(_)),
                "cut at {len}: {error}"
            );
        }
        let mut wrong_slot = header();
        wrong_slot.sections[1].slot = Slot(1);
        let error = BackupHeader::read(&mut &wrong_slot.encode()[..]).unwrap_err();
        assert!(error.to_string().contains("shard 1's snapshot is at slot 1"), "{error}");
    }
}
