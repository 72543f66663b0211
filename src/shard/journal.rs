//! The journal: a replica's records in its WAL, appended as persisted, released with the
//! replies they held back once a sync covers them (I3), read back for slots the replica
//! compacted away, and dropped behind snapshots. (The log is the slots a replica holds,
//! `core::log`; a record's bytes are `storage::record`; the WAL is the file format under all.)

use std::collections::VecDeque;

use bytes::Bytes;
use quorum_wal::{Backend, Options, PendingSync, SyncOutcome, Synced, Wal};

use crate::core::log::Log;
use crate::core::{Ballot, Message, NodeId, PersistSeq, Record, Slot, SlotRun, Value};
use crate::storage::record;

use super::ShardError;
use super::snapshots::read_snapshot_piece;

/// A persist appended to the log, waiting for a sync to cover it, with what its owner wants
/// back when it is durable.
#[derive(Debug)]
struct Unsynced<T> {
    end_position: u64,
    /// A batch this record holds, and where.
    batch: Option<AppendedBatch>,
    seq: PersistSeq,
    then_send: Option<(NodeId, Message)>,
    extra: T,
}

/// A batch a record held, where the record went, and the batch itself (kept so that the
/// replica can tell that a slot still holds this very buffer).
#[derive(Debug)]
struct AppendedBatch {
    slot: Slot,
    position: u64,
    payload_len: usize,
    original: Bytes,
}

/// A batch now durable in the WAL: its copy in the WAL's mapping and the buffer it copies.
#[derive(Debug)]
pub struct SharedBatch {
    /// The slot.
    pub slot: Slot,
    /// The batch's bytes in the WAL's mapping (no copy).
    pub bytes: Bytes,
    /// The buffer the record was written from.
    pub original: Bytes,
}

/// What a completed sync made durable.
#[derive(Debug)]
pub struct Released<T> {
    /// The highest persist now durable, if the sync covered any.
    pub seq: Option<PersistSeq>,
    /// The replies those persists held back, in order.
    pub then_send: Vec<(NodeId, Message)>,
    /// The owner's data for each of them, in order.
    pub extras: Vec<T>,
    /// The batches those records hold, as slices of the WAL's mapping: the replica can keep
    /// these instead of its heap copies.
    pub shared_batches: Vec<SharedBatch>,
}

/// The single-slot batch a record holds, if any.
fn batch_of(record: &Record) -> Option<(Slot, &Bytes)> {
    match record {
        Record::Accepted { first_slot, count: 1, value: Value::Batch(batch), .. }
        | Record::Chosen { first_slot, count: 1, value: Value::Batch(batch) } => {
            Some((*first_slot, batch))
        }
        _ => None,
    }
}

/// A replica's records in a WAL: appends them as they are persisted and, when a sync
/// completes, releases the ones it covered with the replies they held back (I3). Shared by
/// [`Shard`](super::Shard) and the simulator's disks, so both keep the same durability bookkeeping.
pub struct Journal<B: Backend, T> {
    wal: Wal<B>,
    unsynced: VecDeque<Unsynced<T>>,
    payload: Vec<u8>,
    /// Where to start reading for a slot (see [`Journal::archived_runs`]).
    index: Vec<Stretch>,
    stretch_bytes: u64,
    /// Slots below may no longer be in the log (a snapshot stands for them): readers of them
    /// are sent the snapshot.
    floor: Slot,
    /// The promise last written to the WAL's metadata file.
    metadata_promise: Ballot,
    /// Why the replica must repair before it votes (protocol.md §3.9), if it must.
    repair: Option<String>,
    /// The repair is for records a completed sync had made durable, not a new directory.
    lost_records: bool,
}

/// The WAL's metadata: the promise the records of a released prefix held (round u64, node
/// u16, little-endian).
fn encode_promise(ballot: Ballot) -> [u8; 10] {
    let mut out = [0u8; 10];
    out[..8].copy_from_slice(&ballot.round.to_le_bytes());
    out[8..].copy_from_slice(&ballot.node.0.to_le_bytes());
    out
}

fn decode_promise(bytes: &[u8]) -> Result<Ballot, ShardError> {
    let bytes: &[u8; 10] =
        bytes.try_into().map_err(|_| ShardError::Metadata("promise of the wrong length"))?;
    let round = u64::from_le_bytes(bytes[..8].try_into().expect("8"));
    Ok(Ballot::new(round, NodeId(u16::from_le_bytes([bytes[8], bytes[9]]))))
}

/// The longest stretch: a read of compacted slots scans at most this much before them (with
/// every record's checksum checked), and the index costs 16 bytes per stretch of log.
const STRETCH_BYTES_MAX: u64 = 64 << 10;

/// A stretch of the log (a fixed number of bytes): where its first record starts and the end
/// of the highest slot its records name. Reading from a slot starts at the first stretch
/// whose `slot_end` is above it: no earlier record names that slot or a later one.
#[derive(Clone, Copy, Debug)]
struct Stretch {
    position: u64,
    slot_end: u64,
}

/// Notes a record at `position` naming `named` slots (first, count) in the stretch index.
fn note_stretch(
    index: &mut Vec<Stretch>,
    stretch_bytes: u64,
    position: u64,
    named: Option<(u64, u64)>,
) {
    let stretch = position / stretch_bytes;
    if index.last().is_none_or(|last| last.position / stretch_bytes != stretch) {
        index.push(Stretch { position, slot_end: 0 });
    }
    if let (Some((first, count)), Some(last)) = (named, index.last_mut()) {
        last.slot_end = last.slot_end.max(first.saturating_add(count));
    }
}

/// A WAL record decoded, its batch (if any) sharing the log's mapping instead of a heap copy
/// where the backend allows.
fn decode_sharing<B: Backend>(
    wal: &Wal<B>,
    position: u64,
    record: &quorum_wal::Record<'_>,
) -> Result<Record, ShardError> {
    let payload_len = record.payload.len();
    let mut decoded = record::decode(record)?;
    if batch_of(&decoded).is_some() {
        if let Some(shared) = wal.shared_appended(position, payload_len) {
            if let Record::Accepted { value, .. } | Record::Chosen { value, .. } = &mut decoded {
                *value = Value::Batch(shared.slice(record::BATCH_OFFSET..));
            }
        }
    }
    Ok(decoded)
}

impl<B: Backend, T> Journal<B, T> {
    /// Opens the log and hands `each` the records it recovered, one at a time, in order (so a
    /// long log is never held in memory whole), the promise of a released prefix first (as a
    /// `Promised` record). `floor`: the slot of the snapshot
    /// the replica starts from (0 if none); the log may have released the records below it.
    ///
    /// # Errors
    /// The log cannot be opened, holds a record no replica writes, or `each` failed.
    pub fn open(
        backend: B,
        options: Options,
        floor: Slot,
        mut each: impl FnMut(Record) -> Result<(), ShardError>,
    ) -> Result<Self, ShardError> {
        // A log directory without segments (nor spares, metadata or a snapshot): a new node,
        // or one whose data was lost. Marked durably before the log makes its first segment,
        // so that a crash before the repair finishes still knows (protocol.md §3.9).
        let new_directory = backend.list()?.is_empty()
            && backend.spares()?.is_empty()
            && backend.read_file(quorum_wal::METADATA_FILE)?.is_none()
            && floor == Slot(0);
        const NEW_DIRECTORY: &[u8] =
            b"the log directory was new: a new node, or one whose data was lost\n";
        if new_directory {
            backend.write_file_atomic(quorum_wal::REPAIR_FILE, NEW_DIRECTORY)?;
        }
        let marker = backend.read_file(quorum_wal::REPAIR_FILE)?;
        // Damage in what a sync covered is cut, not refused: the replica repairs it from its
        // peers before it votes again (protocol.md §3.9).
        let (mut wal, recovery) = Wal::open_repairing(backend, options)?;
        let mut metadata_promise = Ballot::ZERO;
        if let Some(metadata) = &recovery.metadata {
            metadata_promise = decode_promise(metadata)?;
            each(Record::Promised { ballot: metadata_promise })?;
        }
        let stretch_bytes = (wal.segment_bytes() / 64).clamp(4096, STRETCH_BYTES_MAX);
        let mut index = Vec::new();
        for item in wal.iter_from(wal.first_position()) {
            let (position, record) = item?;
            note_stretch(&mut index, stretch_bytes, position, record::slots_named(&record));
            // Batches recovered from the log share its mapping rather than fill the heap (the
            // WAL's recovery has checked these records already).
            each(decode_sharing(&wal, position, &record)?)?;
        }
        wal.retire_sealed();
        let certain = recovery.damaged.iter().find(|damage| damage.synced == Synced::Certainly);
        // Records a completed sync had made durable are gone (not merely a new directory).
        let lost_records =
            certain.is_some() || marker.is_some_and(|marker| marker != NEW_DIRECTORY);
        let repair = if let Some(damage) = certain {
            Some(format!(
                "{} at {} offset {}",
                damage.reason,
                damage.segment.display(),
                damage.offset
            ))
        } else if new_directory {
            // A new node and one whose data directory was wiped look the same from here. A
            // log that exists but is empty never made a record durable, so it never voted.
            Some("the log directory is new: a new node, or one whose data was lost".to_string())
        } else if recovery.repair_pending {
            Some("a repair begun at an earlier start did not finish".to_string())
        } else {
            None
        };
        let journal = Journal {
            wal,
            unsynced: VecDeque::new(),
            payload: Vec::new(),
            index,
            stretch_bytes,
            floor,
            metadata_promise,
            repair,
            lost_records,
        };
        Ok(journal)
    }

    /// Why the replica must repair before it votes (protocol.md §3.9): the WAL lost records
    /// that may have been acknowledged, a repair did not finish, or the log directory is new
    /// (a new node and a wiped one look the same). `None` if the log holds everything it held.
    #[must_use]
    pub fn repair_reason(&self) -> Option<&str> {
        self.repair.as_deref()
    }

    /// True if the WAL itself reported lost records (not just an empty log).
    #[must_use]
    pub fn lost_records(&self) -> bool {
        self.repair.is_some() && self.lost_records
    }

    /// The replica's repair is over and durable ([`Action::Repaired`]): later starts need none.
    ///
    /// # Errors
    /// The marker file cannot be removed.
    pub fn finish_repair(&mut self) -> Result<(), ShardError> {
        self.repair = None;
        Ok(self.wal.finish_repair()?)
    }

    /// The piece `offset..offset + piece_bytes` of the durable snapshot, as a message, if there
    /// is one and it is the snapshot at `slot` (any, with `None`).
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn snapshot_piece(
        &self,
        slot: Option<Slot>,
        offset: u64,
        piece_bytes: usize,
        commit_index: Slot,
    ) -> Result<Option<Message>, ShardError> {
        read_snapshot_piece(self.wal.backend(), slot, offset, piece_bytes, commit_index)
    }

    /// A peer's snapshot at `slot` was written durably next to the log (by a helper thread,
    /// before anything builds on it: a `Committed` record past its slot would otherwise, after
    /// a crash, claim slots this log never held): reads below it get it from now on, not the
    /// partial records this log may hold of them.
    pub fn installed(&mut self, slot: Slot) {
        self.floor = self.floor.max(slot);
    }

    /// Slots below this may no longer be in the log: a reader of them gets the snapshot.
    #[must_use]
    pub fn floor(&self) -> Slot {
        self.floor
    }

    /// A snapshot at `slot` is durable: the log may drop every whole segment whose records
    /// all name slots below it, and below `in_memory_from` (the replica's base: the batches of
    /// the slots it keeps in memory share the log's mapping, so their segments must stay as
    /// they are). `promised`: the replica's promise, written durably to the WAL's metadata
    /// first if higher than the one there, since the dropped records may hold the highest
    /// promise. Returns the bytes released. Blocks on the metadata's fsync, when the promise
    /// rose since the last release.
    ///
    /// # Errors
    /// The metadata cannot be written or a segment cannot be released (the log is poisoned).
    pub fn release_below(
        &mut self,
        slot: Slot,
        in_memory_from: Slot,
        promised: Ballot,
    ) -> Result<u64, ShardError> {
        self.floor = self.floor.max(slot);
        let keep = slot.min(in_memory_from);
        // The first stretch naming a slot at or above `keep`; nothing before it does. (A
        // `Committed` record before it says less than the snapshot does.)
        let keep_from = self
            .index
            .iter()
            .find(|stretch| stretch.slot_end > keep.0)
            .map_or(self.wal.end_position(), |stretch| stretch.position)
            .min(self.wal.durable_position());
        let first = self.wal.first_position();
        if keep_from / self.wal.segment_bytes() <= first / self.wal.segment_bytes() {
            return Ok(0);
        }
        if promised > self.metadata_promise {
            self.wal.set_metadata(&encode_promise(promised))?;
            self.metadata_promise = promised;
        }
        self.wal.release_prefix(keep_from)?;
        let kept_from = self.wal.first_position();
        let released = self.index.iter().take_while(|stretch| stretch.position < kept_from).count();
        self.index.drain(..released);
        Ok(kept_from - first)
    }

    /// The committed runs of slots `from_slot..end_slot`, read back from the log: for a
    /// replica that compacted them away from memory. Replays the durable records that name
    /// those slots into a scratch image, as a restart would (so the values are the ones the
    /// replica held: protocol.md §4), from the first stretch that names any of them, until
    /// all of them are chosen. Returns the chosen prefix of the range: fewer slots, or none,
    /// if the log cannot tell yet (its `Committed` record is not durable yet); fewer slots too
    /// where their records pass `bytes_max` (at least one slot is read, whatever its size).
    /// The reader asks again from where it stops.
    ///
    /// # Errors
    /// The log is poisoned, or holds a record no replica writes.
    pub fn archived_runs(
        &self,
        from_slot: Slot,
        mut end_slot: Slot,
        bytes_max: usize,
    ) -> Result<Vec<SlotRun>, ShardError> {
        let Some(start) = self.index.iter().find(|stretch| stretch.slot_end > from_slot.0) else {
            return Ok(Vec::new());
        };
        let durable = self.wal.durable_position();
        let mut bytes = 0;
        let mut scratch = Log::starting_at(from_slot);
        for item in self.wal.iter_from(start.position) {
            let (position, record) = item?;
            if position >= durable {
                break;
            }
            if let Some((first, count)) = record::slots_named(&record) {
                let low = first.max(from_slot.0);
                if low >= first.saturating_add(count).min(end_slot.0) {
                    continue; // Names none of the slots wanted.
                }
                if bytes + record.payload.len() > bytes_max && low > from_slot.0 {
                    // Past the budget: this slot and those after it wait for the next read.
                    end_slot = Slot(low);
                    continue;
                }
                bytes += record.payload.len();
            } else if !record::is_committed(&record) {
                continue; // A promise says nothing of slots.
            }
            // Slots below the scratch log's base are ignored by it; those past `end_slot`
            // (a no-op run reaching beyond) are never read from it.
            let record = decode_sharing(&self.wal, position, &record)?;
            scratch.replay(&record);
            let may_complete = match record {
                Record::Chosen { .. } => true,
                Record::Committed { commit_index } => commit_index >= end_slot,
                _ => false,
            };
            if may_complete && scratch.first_unchosen(from_slot) >= end_slot {
                break;
            }
        }
        let chosen_end = scratch.first_unchosen(from_slot).min(end_slot);
        Ok(scratch.runs_from(from_slot, chosen_end, usize::MAX).0)
    }

    /// What `Action::SendArchived` sends: below the floor, the snapshot's first piece of at
    /// most `piece_bytes` (the reader pulls the others); then, if that was the whole snapshot,
    /// the committed runs of `from_slot..end_slot` (from the snapshot's slot, if it was sent)
    /// as `Chosen` messages of at most `runs_max` runs, read in parts of at most `bytes_max`
    /// bytes of records. Stops early where the log cannot tell yet (the reader asks again).
    ///
    /// # Errors
    /// See [`Journal::archived_runs`].
    pub fn archived_messages(
        &self,
        mut from_slot: Slot,
        end_slot: Slot,
        commit_index: Slot,
        runs_max: usize,
        (bytes_max, piece_bytes): (usize, usize),
    ) -> Result<Vec<Message>, ShardError> {
        let mut messages = Vec::new();
        if from_slot < self.floor {
            let Some(piece) = self.snapshot_piece(None, 0, piece_bytes, commit_index)? else {
                unreachable!("a floor is only raised by a durable snapshot");
            };
            let Message::Snapshot { slot, total, ref bytes, .. } = piece else {
                unreachable!("a snapshot piece")
            };
            let whole = bytes.len() as u64 == total;
            from_slot = slot;
            messages.push(piece);
            if !whole {
                return Ok(messages);
            }
        }
        while from_slot < end_slot {
            let runs = self.archived_runs(from_slot, end_slot, bytes_max)?;
            let Some(last) = runs.last() else { break };
            from_slot = last.end_slot();
            messages.extend(
                runs.chunks(runs_max)
                    .map(|runs| Message::Chosen { runs: runs.to_vec(), commit_index }),
            );
        }
        Ok(messages)
    }

    /// The WAL.
    #[must_use]
    pub fn wal(&self) -> &Wal<B> {
        &self.wal
    }

    /// Whether the WAL can get its next segment ([`Wal::check_space`]).
    ///
    /// # Errors
    /// The WAL is poisoned, or preparing the segment failed other than for lack of space.
    pub fn check_space(&mut self) -> Result<quorum_wal::Space, quorum_wal::Error> {
        self.wal.check_space()
    }

    /// Appends a persisted record; `then_send` and `extra` come back once it is durable.
    ///
    /// # Errors
    /// The WAL refused the append.
    pub fn append(
        &mut self,
        seq: PersistSeq,
        record: &Record,
        then_send: Option<(NodeId, Message)>,
        extra: T,
    ) -> Result<(), ShardError> {
        let (encoded, batch) = record::encode_split(record, &mut self.payload);
        let payload_len = encoded.payload.len() + batch.len();
        let named = record::slots_named(&encoded);
        let position = self.wal.append_split(&encoded, batch)?;
        note_stretch(&mut self.index, self.stretch_bytes, position, named);
        let batch = batch_of(record).map(|(slot, batch)| AppendedBatch {
            slot,
            position,
            payload_len,
            original: batch.clone(),
        });
        self.unsynced.push_back(Unsynced {
            end_position: self.wal.end_position(),
            batch,
            seq,
            then_send,
            extra,
        });
        Ok(())
    }

    /// True if appended records wait for a sync.
    #[must_use]
    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// Starts a sync if records wait and none is under way (see [`Wal::start_sync`]).
    ///
    /// # Errors
    /// The log is poisoned.
    pub fn start_sync(&mut self) -> Result<Option<PendingSync>, ShardError> {
        if self.unsynced.is_empty() {
            return Ok(None);
        }
        Ok(self.wal.start_sync()?)
    }

    /// Takes a sync's outcome and releases what it made durable.
    ///
    /// # Errors
    /// The sync failed (the log is now poisoned).
    pub fn finish_sync(&mut self, outcome: SyncOutcome) -> Result<Released<T>, ShardError> {
        let durable = self.wal.finish_sync(outcome)?;
        let mut released = Released {
            seq: None,
            then_send: Vec::new(),
            extras: Vec::new(),
            shared_batches: Vec::new(),
        };
        while self.unsynced.front().is_some_and(|unsynced| unsynced.end_position <= durable) {
            let done = self.unsynced.pop_front().expect("checked");
            if let Some(batch) = done.batch {
                // Just written and synced by this log: shared without being read back.
                if let Some(shared) = self.wal.shared_appended(batch.position, batch.payload_len) {
                    released.shared_batches.push(SharedBatch {
                        slot: batch.slot,
                        bytes: shared.slice(record::BATCH_OFFSET..),
                        original: batch.original,
                    });
                }
            }
            released.seq = Some(done.seq);
            released.then_send.extend(done.then_send);
            released.extras.push(done.extra);
        }
        Ok(released)
    }
}
