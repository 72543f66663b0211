//! The WAL's decoders on any bytes a disk could hold: a record (`decode_record`), a segment
//! header (`SegmentHeader::decode`), its sync watermark (`Watermark::decode`), and the
//! replica's record in a WAL record's fields (`record::decode`, fed the input's bytes as
//! the fields directly, so that the record checksum does not stand in the way). None panics;
//! what decodes re-encodes to the same bytes (a WAL record), or to what decodes again equal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quorum::storage::record;
use quorum_wal::Record;
use quorum_wal::format::{
    Decoded, SEGMENT_HEADER_BYTES, SegmentHeader, Watermark, decode_record, encode_record,
};

fuzz_target!(|input: &[u8]| {
    // The first byte picks the segment number the record is read under (its checksum's seed).
    let Some((&segment, data)) = input.split_first() else { return };
    let segment = u64::from(segment % 4);
    match decode_record(data, segment) {
        Decoded::Record(record, generation, total) => {
            assert!(total <= data.len() && total % 8 == 0, "a record occupies {total} bytes");
            let mut out = vec![0xAA; total];
            encode_record(&record, generation, segment, &mut out);
            assert_eq!(out, data[..total], "a record re-encodes to its own bytes");
            replica_record(&record);
        }
        Decoded::Unwritten | Decoded::Damaged(_) => {}
    }

    if let Some((kind, rest)) = data.split_first()
        && let Some((slot, rest)) = rest.split_first_chunk::<8>()
        && let Some((round, rest)) = rest.split_first_chunk::<8>()
        && let Some((node, payload)) = rest.split_first_chunk::<2>()
    {
        replica_record(&Record {
            kind: *kind,
            slot: u64::from_le_bytes(*slot),
            ballot_round: u64::from_le_bytes(*round),
            ballot_node: u16::from_le_bytes(*node),
            payload,
        });
    }

    // Headers are read from a whole header's bytes: the input, zero-padded if short.
    let mut head = data.to_vec();
    if head.len() < SEGMENT_HEADER_BYTES {
        head.resize(SEGMENT_HEADER_BYTES, 0);
    }
    if let Ok(header) = SegmentHeader::decode(data) {
        let mut out = vec![0; SEGMENT_HEADER_BYTES];
        header.encode(&mut out);
        assert_eq!(SegmentHeader::decode(&out), Ok(header), "a header decodes again equal");
    }
    if let Some(watermark) = Watermark::decode(data) {
        watermark.encode(&mut head);
        assert_eq!(Watermark::decode(&head), Some(watermark), "a watermark decodes again equal");
    }
});

/// A replica's record that decodes from `record` is encoded into one that decodes equal.
fn replica_record(record: &Record<'_>) {
    let Ok(decoded) = record::decode(record) else { return };
    let mut head = Vec::new();
    let (encoded, rest) = record::encode_split(&decoded, &mut head);
    let payload = [encoded.payload, rest].concat();
    let again = record::decode(&Record { payload: &payload, ..encoded })
        .expect("a re-encoded replica record decodes");
    assert_eq!(again, decoded, "a replica record round-trips");
}
