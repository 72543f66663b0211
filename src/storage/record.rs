//! How the core's durable [`Record`]s are laid out as WAL records: the WAL header carries the
//! kind, the slot and the ballot; the payload carries the rest. A batch's bytes go into the WAL
//! as they are (encoded once, by the leader).
//!
//! | kind | slot | ballot | payload |
//! |---|---|---|---|
//! | 1 `Promised` | 0 | promised | empty |
//! | 2 `Accepted` | first slot | accepted | count u64, value |
//! | 3 `Chosen` | first slot | zero | count u64, value |
//! | 4 `Committed` | commit index | zero | empty |
//!
//! A value is a tag byte (0 no-op, 1 batch) followed, for a batch, by its bytes.

use bytes::Bytes;
use quorum_wal::Record as WalRecord;

use crate::core::{Ballot, NodeId, Record, Slot, Value};

/// Where a batch starts in an `Accepted` or `Chosen` record's payload: after the run's count
/// (u64) and the value's tag byte.
pub const BATCH_OFFSET: usize = 8 + 1;

const PROMISED: u8 = 1;
const ACCEPTED: u8 = 2;
const CHOSEN: u8 = 3;
const COMMITTED: u8 = 4;

/// A WAL record that is not a core record: disk input, refused with a reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("WAL record of kind {kind} at slot {slot} is not a replica record: {reason}")]
pub struct BadLogRecord {
    /// The record's kind byte.
    pub kind: u8,
    /// The record's slot field.
    pub slot: u64,
    /// What is wrong.
    pub reason: &'static str,
}

/// Encodes `record` as a WAL record whose payload is the head written into `head` (cleared
/// first) followed by the returned bytes: a batch's own buffer, so that it is copied once,
/// into the log, not first next to its head (`Wal::append_split`).
pub fn encode_split<'a, 'r>(
    record: &'r Record,
    head: &'a mut Vec<u8>,
) -> (WalRecord<'a>, &'r [u8]) {
    head.clear();
    let mut rest: &[u8] = &[];
    let mut push_run = |head: &mut Vec<u8>, count: u64, value: &'r Value| {
        head.extend_from_slice(&count.to_le_bytes());
        match value {
            Value::Noop => head.push(0),
            Value::Batch(bytes) => {
                head.push(1);
                rest = bytes;
            }
        }
    };
    let (kind, slot, ballot) = match record {
        Record::Promised { ballot } => (PROMISED, 0, *ballot),
        Record::Accepted { ballot, first_slot, count, value } => {
            push_run(head, *count, value);
            (ACCEPTED, first_slot.0, *ballot)
        }
        Record::Chosen { first_slot, count, value } => {
            push_run(head, *count, value);
            (CHOSEN, first_slot.0, Ballot::ZERO)
        }
        Record::Committed { commit_index } => (COMMITTED, commit_index.0, Ballot::ZERO),
    };
    let encoded = WalRecord {
        kind,
        slot,
        ballot_round: ballot.round,
        ballot_node: ballot.node.0,
        payload: head,
    };
    (encoded, rest)
}

/// The slots an `Accepted` or `Chosen` record names (its first slot and count), read from
/// the header and the count alone, without decoding the value. `None` for other records.
#[must_use]
pub fn slots_named(record: &WalRecord<'_>) -> Option<(u64, u64)> {
    if record.kind != ACCEPTED && record.kind != CHOSEN {
        return None;
    }
    let count = record.payload.first_chunk::<8>().map(|count| u64::from_le_bytes(*count))?;
    Some((record.slot, count))
}

/// True for a `Committed` record.
#[must_use]
pub fn is_committed(record: &WalRecord<'_>) -> bool {
    record.kind == COMMITTED
}

/// Decodes a WAL record read back from disk.
///
/// # Errors
/// A record that no replica writes.
pub fn decode(record: &WalRecord<'_>) -> Result<Record, BadLogRecord> {
    let bad = |reason| BadLogRecord { kind: record.kind, slot: record.slot, reason };
    let ballot = Ballot::new(record.ballot_round, NodeId(record.ballot_node));
    let run = || -> Result<(u64, Value), BadLogRecord> {
        let (count, rest) =
            record.payload.split_first_chunk::<8>().ok_or_else(|| bad("payload too short"))?;
        let count = u64::from_le_bytes(*count);
        let value = match rest.split_first() {
            Some((0, [])) => Value::Noop,
            Some((1, bytes)) => Value::Batch(Bytes::copy_from_slice(bytes)),
            _ => return Err(bad("unknown value tag")),
        };
        if count == 0 || (count > 1 && !value.is_noop()) {
            return Err(bad("a run covers one slot, or many no-ops"));
        }
        Ok((count, value))
    };
    match record.kind {
        PROMISED => Ok(Record::Promised { ballot }),
        ACCEPTED => {
            let (count, value) = run()?;
            Ok(Record::Accepted { ballot, first_slot: Slot(record.slot), count, value })
        }
        CHOSEN => {
            let (count, value) = run()?;
            Ok(Record::Chosen { first_slot: Slot(record.slot), count, value })
        }
        COMMITTED => Ok(Record::Committed { commit_index: Slot(record.slot) }),
        _ => Err(bad("unknown kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole record as the log stores it: the head and the rest in one payload.
    fn encode<'a>(record: &Record, payload: &'a mut Vec<u8>) -> WalRecord<'a> {
        let mut head = Vec::new();
        let (split, rest) = encode_split(record, &mut head);
        let (kind, slot, ballot_round, ballot_node) =
            (split.kind, split.slot, split.ballot_round, split.ballot_node);
        payload.clear();
        payload.extend_from_slice(&head);
        payload.extend_from_slice(rest);
        WalRecord { kind, slot, ballot_round, ballot_node, payload }
    }

    #[test]
    fn every_record_round_trips() {
        let ballot = Ballot::new(3, NodeId(2));
        let records = [
            Record::Promised { ballot },
            Record::Accepted {
                ballot,
                first_slot: Slot(7),
                count: 1,
                value: Value::Batch(Bytes::from_static(b"abc")),
            },
            Record::Accepted { ballot, first_slot: Slot(8), count: 40, value: Value::Noop },
            Record::Chosen { first_slot: Slot(9), count: 1, value: Value::Batch(Bytes::new()) },
            Record::Committed { commit_index: Slot(10) },
        ];
        let mut payload = Vec::new();
        for record in records {
            let encoded = encode(&record, &mut payload);
            assert_eq!(decode(&encoded), Ok(record));
        }
    }

    #[test]
    fn a_batch_sits_at_batch_offset_in_its_payload() {
        let value = Value::Batch(Bytes::from_static(b"the batch"));
        let record = Record::Chosen { first_slot: Slot(4), count: 1, value };
        let mut payload = Vec::new();
        let encoded = encode(&record, &mut payload);
        assert_eq!(&encoded.payload[BATCH_OFFSET..], b"the batch");
    }

    #[test]
    fn records_no_replica_writes_are_refused() {
        let record = WalRecord {
            kind: 2,
            slot: 0,
            ballot_round: 1,
            ballot_node: 1,
            payload: &[2, 0, 0, 0, 0, 0, 0, 0, 1],
        };
        assert!(decode(&record).is_err(), "a batch run over two slots");
        let record = WalRecord { kind: 9, slot: 0, ballot_round: 0, ballot_node: 0, payload: &[] };
        assert!(decode(&record).is_err());
    }
}
