//! The on-disk format, byte by byte (docs/wal-format.md). Every field is little-endian; every
//! record and every header carries a crc32c (Castagnoli).
//!
//! ```text
//! segment file, `segment_bytes` long, named {segment_number:016x}.wal
//! ┌──────────────────────────── segment header (4096 bytes) ────────────────────────────┐
//! │ 0  magic u64 "QRMWAL\0\1" │ 8 version u32 │ 12 header_bytes u32 │ 16 segment_number u64 │
//! │ 24 segment_bytes u64 │ 32 crc32c u32 (bytes 0..32) │ 36..64 zero                          │
//! │ 64 watermark: confirmed u64 │ 72 target u64 │ 80 generation u32 │ 84 crc32c u32 (64..84)  │
//! │ 88..4096 zero                                                                         │
//! ├──────────────────────────── records, from byte 4096, 8-aligned ─────────────────────┤
//! │ 0 crc32c u32 (segment_number u64, bytes 4..32 of the header, the payload) │ 4 payload_len u32 │
//! │ 8 kind u8 (1-254; 255 ends a segment) │ 9 zero u8 │ 10 ballot_node u16 │ 12 generation u32                │
//! │ 16 slot u64 │ 24 ballot_round u64 │ 32 payload … │ zero padding to a multiple of 8        │
//! └───────────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Positions are global: `segment_number * segment_bytes + offset`.

/// "QRMWAL" then format 0, 1.
pub const MAGIC: u64 = u64::from_le_bytes(*b"QRMWAL\0\x01");
/// Format version. 2: record checksums are seeded with the segment's number, so the records
/// a recycled segment held under its old number read as not records.
pub const VERSION: u32 = 2;
/// Bytes of the segment header; records start here, page-aligned.
pub const SEGMENT_HEADER_BYTES: usize = 4096;
/// Where the watermark block sits in the segment header.
pub const WATERMARK_OFFSET: usize = 64;
/// Bytes of the watermark block.
pub const WATERMARK_BYTES: usize = 24;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 32;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// The kind of the record the log writes where a segment's records end because the next one
/// did not fit. Reserved: callers use kinds 1 to 254.
pub const KIND_SEGMENT_END: u8 = 255;

const _: () = assert!(RECORD_HEADER_BYTES % RECORD_ALIGN == 0);
const _: () = assert!(SEGMENT_HEADER_BYTES % RECORD_ALIGN == 0);
const _: () = assert!(WATERMARK_OFFSET + WATERMARK_BYTES <= SEGMENT_HEADER_BYTES);
const _: () = assert!(SEGMENT_HEADER_BYTES % 4096 == 0, "records start on a page");

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(array)
}

/// The fixed part of a segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's number; its first byte is at global position `number * segment_bytes`.
    pub segment_number: u64,
    /// The size of every segment of this log.
    pub segment_bytes: u64,
}

impl SegmentHeader {
    /// Writes the header into the first 64 bytes of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[..64].fill(0);
        out[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.segment_number.to_le_bytes());
        out[24..32].copy_from_slice(&self.segment_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads a header, or says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, &'static str> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err("file shorter than a segment header");
        }
        if u32_at(bytes, 32) != crc32c::crc32c(&bytes[0..32]) {
            return Err("segment header checksum mismatch");
        }
        if u64_at(bytes, 0) != MAGIC {
            return Err("not a Quorum WAL segment (bad magic)");
        }
        if u32_at(bytes, 8) != VERSION {
            return Err("unsupported WAL format version");
        }
        if u32_at(bytes, 12) as usize != SEGMENT_HEADER_BYTES {
            return Err("unexpected segment header size");
        }
        Ok(SegmentHeader { segment_number: u64_at(bytes, 16), segment_bytes: u64_at(bytes, 24) })
    }
}

/// What a segment's header says about its last syncs, as global positions. Written into the
/// mapping just before each sync, so the sync makes it durable with the data (docs/wal-format.md,
/// "Telling a torn tail from lost data").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermark {
    /// Every byte below this was covered by a sync that completed.
    pub confirmed: u64,
    /// No sync that completed covered any byte at or above this.
    pub target: u64,
    /// Records written from now on carry this generation; raised by every suffix truncation.
    pub generation: u32,
}

impl Watermark {
    /// Writes the block into `out[WATERMARK_OFFSET..]`.
    pub fn encode(&self, segment: &mut [u8]) {
        let out = &mut segment[WATERMARK_OFFSET..WATERMARK_OFFSET + WATERMARK_BYTES];
        out[0..8].copy_from_slice(&self.confirmed.to_le_bytes());
        out[8..16].copy_from_slice(&self.target.to_le_bytes());
        out[16..20].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..20]);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads the block; `None` if its checksum fails (a torn header write) or `segment` is too
    /// short to hold it.
    pub fn decode(segment: &[u8]) -> Option<Watermark> {
        let block = segment.get(WATERMARK_OFFSET..WATERMARK_OFFSET + WATERMARK_BYTES)?;
        if u32_at(block, 20) != crc32c::crc32c(&block[0..20]) {
            return None;
        }
        Some(Watermark {
            confirmed: u64_at(block, 0),
            target: u64_at(block, 8),
            generation: u32_at(block, 16),
        })
    }
}

/// The fields of a record, borrowed from where it lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// What the record is, to its writer; never 0 (0 marks never-written space).
    pub kind: u8,
    /// The slot (or any position) the writer files it under.
    pub slot: u64,
    /// The ballot round.
    pub ballot_round: u64,
    /// The ballot's node.
    pub ballot_node: u16,
    /// The payload, opaque to the log.
    pub payload: &'a [u8],
}

/// Bytes a record with `payload_bytes` of payload occupies, padding included.
#[must_use]
pub fn record_bytes(payload_bytes: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_bytes).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Encodes `record`, for segment `segment`, at the start of `out`, which must hold
/// [`record_bytes`] bytes.
pub fn encode_record(record: &Record<'_>, generation: u32, segment: u64, out: &mut [u8]) {
    encode_record_split(record, &[], generation, segment, out);
}

/// The checksum's seed in segment `segment`: a record read under another segment number (one
/// a recycled segment held before) fails its checksum.
fn seed(segment: u64) -> u32 {
    crc32c::crc32c(&segment.to_le_bytes())
}

/// [`encode_record`] of a record whose payload is `record.payload` followed by `rest`, copied
/// straight from where each lies (a batch goes into the log without first being copied next
/// to its small prefix).
pub fn encode_record_split(
    record: &Record<'_>,
    rest: &[u8],
    generation: u32,
    segment: u64,
    out: &mut [u8],
) {
    let head_len = RECORD_HEADER_BYTES + record.payload.len();
    let total = record_bytes(record.payload.len() + rest.len());
    assert!(out.len() >= total, "record buffer too small");
    let (head, tail) = out.split_at_mut(head_len);
    encode_head(record, rest, generation, segment, head);
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()..total - head_len].fill(0);
}

/// The first part of [`encode_record_split`]'s record, into `head`
/// (`RECORD_HEADER_BYTES + record.payload.len()` bytes): the header, whose checksum covers
/// `rest` too, and `record.payload`. `rest` and then zeros up to [`record_bytes`] follow it
/// (a large record is written from its parts without gathering them first).
pub fn encode_head(
    record: &Record<'_>,
    rest: &[u8],
    generation: u32,
    segment: u64,
    head: &mut [u8],
) {
    assert_eq!(head.len(), RECORD_HEADER_BYTES + record.payload.len(), "record head size");
    assert!(record.kind != 0, "kind 0 is reserved for unwritten space");
    let payload_len = u32::try_from(record.payload.len() + rest.len()).expect("payload fits u32");
    head[4..8].copy_from_slice(&payload_len.to_le_bytes());
    head[8] = record.kind;
    head[9] = 0;
    head[10..12].copy_from_slice(&record.ballot_node.to_le_bytes());
    head[12..16].copy_from_slice(&generation.to_le_bytes());
    head[16..24].copy_from_slice(&record.slot.to_le_bytes());
    head[24..32].copy_from_slice(&record.ballot_round.to_le_bytes());
    head[RECORD_HEADER_BYTES..].copy_from_slice(record.payload);
    let crc = crc32c::crc32c_append(seed(segment), &head[4..]);
    let crc = crc32c::crc32c_append(crc, rest);
    head[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// What lies at one offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record, its generation, and the bytes it occupies.
    Record(Record<'a>, u32, usize),
    /// Never-written (zero) space: the end of the segment's records.
    Unwritten,
    /// Damage: a torn or corrupt record.
    Damaged(&'static str),
}

/// Decodes the record at the start of `bytes` (the rest of segment `segment`). Never panics.
#[must_use]
pub fn decode_record(bytes: &[u8], segment: u64) -> Decoded<'_> {
    if bytes.len() < RECORD_HEADER_BYTES {
        // No record is ever written where its header does not fit: whatever these last bytes
        // hold (a recycled segment's old bytes), the segment's records ended before them.
        return Decoded::Unwritten;
    }
    let header = &bytes[..RECORD_HEADER_BYTES];
    if header.iter().all(|byte| *byte == 0) {
        return Decoded::Unwritten;
    }
    let payload_len = u32_at(header, 4) as usize;
    let total = record_bytes(payload_len);
    if total > bytes.len() {
        return Decoded::Damaged("record length runs past the segment end");
    }
    let payload = &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len];
    let crc = crc32c::crc32c_append(crc32c::crc32c_append(seed(segment), &header[4..]), payload);
    if crc != u32_at(header, 0) {
        return Decoded::Damaged("record checksum mismatch");
    }
    if header[8] == 0 || header[9] != 0 {
        return Decoded::Damaged("record kind 0 or reserved byte set");
    }
    // Padding is outside the checksum, so it is checked to be zero: no byte goes unverified.
    if bytes[RECORD_HEADER_BYTES + payload_len..total].iter().any(|byte| *byte != 0) {
        return Decoded::Damaged("record padding not zero");
    }
    let record = Record {
        kind: header[8],
        slot: u64_at(header, 16),
        ballot_round: u64_at(header, 24),
        ballot_node: u16::from_le_bytes([header[10], header[11]]),
        payload,
    };
    Decoded::Record(record, u32_at(header, 12), total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `wal_record` fuzz target (input `0a`): a slice too short for the watermark
    /// block made `Watermark::decode` index out of bounds instead of returning `None`.
    #[test]
    fn a_watermark_is_not_read_from_a_slice_too_short_for_it() {
        let mut segment = vec![0u8; WATERMARK_OFFSET + WATERMARK_BYTES];
        let mark = Watermark { confirmed: 1, target: 2, generation: 3 };
        mark.encode(&mut segment);
        assert_eq!(Watermark::decode(&segment), Some(mark));
        for len in 0..segment.len() {
            assert_eq!(Watermark::decode(&segment[..len]), None, "{len} bytes");
        }
    }
}
