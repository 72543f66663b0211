//! One shard replica with everything it needs to run, but no runtime: the protocol core, its
//! write-ahead log, and the state machine it applies to. A runtime (glommio, or a test loop)
//! feeds it messages, ticks and proposals, runs its syncs on a helper thread, and carries its
//! outgoing messages and client replies away. Keeping this free of any runtime lets the same
//! code run under the node, the tests and the benches.
//!
//! Durability: every record the core asks to persist is appended to the WAL at once; the
//! replies it holds back (`then_send`) leave only when a sync covering the record completed
//! (protocol.md, I3). A failed sync poisons the log and fails the shard.

use std::collections::VecDeque;

use bytes::Bytes;
use quorum_wal::{Backend, Options, PendingSync, SyncOutcome, Synced, Wal};

use crate::core::log::Log;
use crate::core::{
    Action, Config, Envelope, Message, NodeId, PersistSeq, ProposeError, Record, RefusedMessage,
    Replica, RequestId, Slot, SlotRun, Value,
};
use crate::core::{Ballot, ClusterId};
use crate::log_record;
use crate::snapshot::{Piece, Snapshot, SnapshotError, SnapshotHeader};
use crate::state_machine::{
    AppliedCommand, Applier, REGISTER_ENTROPY_BYTES, SessionLimits, StateMachine, seal_register,
};
use crate::total_order::Committed;

/// A shard that can no longer run: its log failed. Restart it from disk.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The WAL failed (a sync error poisons it for good).
    #[error(transparent)]
    Wal(#[from] quorum_wal::Error),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::core::ConfigError),
    /// The log holds a record no replica writes.
    #[error(transparent)]
    BadRecord(#[from] log_record::BadLogRecord),
    /// A committed batch did not decode.
    #[error(transparent)]
    BadBatch(#[from] crate::core::MalformedBatch),
    /// The snapshot on disk is damaged or not this shard's: the log before it may be gone, so
    /// the replica cannot start without it. Restore the file, or start this node empty.
    #[error("snapshot file refused: {0}")]
    Snapshot(#[from] SnapshotError),
    /// Total-order apply needs every slot from 0, and this shard's log starts from a snapshot.
    #[error(
        "this shard starts from a snapshot at slot {0} (its log before it may be released): \
         --apply total needs the whole log; run it with --apply shard, or from an empty data \
         directory"
    )]
    ForwardFromSnapshot(u64),
    /// The WAL's metadata (the durable promise) does not decode.
    #[error("WAL metadata damaged: {0}")]
    Metadata(&'static str),
    /// The log lost records that may have been acknowledged and this replica is its shard's
    /// only voter: no peer holds them (protocol.md §3.9).
    #[error(
        "the log lost records that may have been acknowledged ({0}) and this node is the \
         shard's only voter, so nothing can repair them. To go on with what remains (the writes \
         after the damage are lost), delete the file `repair` in the shard's directory"
    )]
    Unrepairable(String),
}

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
/// [`Shard`] and the simulator's disks, so both keep the same durability bookkeeping.
pub struct ReplicaLog<B: Backend, T> {
    wal: Wal<B>,
    unsynced: VecDeque<Unsynced<T>>,
    payload: Vec<u8>,
    /// Where to start reading for a slot (see [`ReplicaLog::archived_runs`]).
    index: Vec<Stretch>,
    stretch_bytes: u64,
    /// Slots below may no longer be in the log (a snapshot stands for them): readers of them
    /// are sent the snapshot.
    floor: Slot,
    /// The promise last written to the WAL's metadata file.
    metadata_promise: Ballot,
    /// The cluster and shard whose snapshots sit next to the log.
    owner: (ClusterId, u16),
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

/// Most bytes of records one read of compacted slots takes: a range is read in such parts,
/// so that one read never holds the shard up for long (a reader's window, in slots, bounds
/// what is queued for it, as it does from memory).
pub const ARCHIVE_READ_BYTES_MAX: usize = 16 << 20;

/// A snapshot goes to a peer in pieces of at most this many bytes by default (one frame each,
/// well under the frame limit), each pulled by the receiver once it has the one before.
pub const SNAPSHOT_PIECE_BYTES: usize = 4 << 20;

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
    let mut decoded = log_record::decode(record)?;
    if batch_of(&decoded).is_some() {
        if let Some(shared) = wal.shared_appended(position, payload_len) {
            if let Record::Accepted { value, .. } | Record::Chosen { value, .. } = &mut decoded {
                *value = Value::Batch(shared.slice(log_record::BATCH_OFFSET..));
            }
        }
    }
    Ok(decoded)
}

impl<B: Backend, T> ReplicaLog<B, T> {
    /// The snapshot in the log's directory, checked as `owner`'s (cluster, shard), if any.
    ///
    /// # Errors
    /// The file cannot be read, or is damaged or another shard's.
    pub fn read_snapshot(
        backend: &B,
        owner: (ClusterId, u16),
    ) -> Result<Option<Snapshot>, ShardError> {
        let Some(bytes) = backend.read_file(crate::snapshot::FILE_NAME)? else { return Ok(None) };
        Ok(Some(Snapshot::decode(Bytes::from(bytes), owner.0, owner.1)?))
    }

    /// Opens the log and hands `each` the records it recovered, one at a time, in order (so a
    /// long log is never held in memory whole), the promise of a released prefix first (as a
    /// `Promised` record). `owner`: the cluster and shard. `floor`: the slot of the snapshot
    /// the replica starts from (0 if none); the log may have released the records below it.
    ///
    /// # Errors
    /// The log cannot be opened, holds a record no replica writes, or `each` failed.
    pub fn open(
        backend: B,
        options: Options,
        owner: (ClusterId, u16),
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
            note_stretch(&mut index, stretch_bytes, position, log_record::slots_named(&record));
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
        let log = ReplicaLog {
            wal,
            unsynced: VecDeque::new(),
            payload: Vec::new(),
            index,
            stretch_bytes,
            floor,
            metadata_promise,
            owner,
            repair,
            lost_records,
        };
        Ok(log)
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

    /// The newest durable snapshot next to the log, if any (read from its file: a snapshot
    /// being written may have replaced it already by a newer one, durable too).
    ///
    /// # Errors
    /// See [`ReplicaLog::read_snapshot`].
    pub fn snapshot(&self) -> Result<Option<Snapshot>, ShardError> {
        Self::read_snapshot(self.wal.backend(), self.owner)
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

    /// A peer's snapshot, checked and ahead of the replica, is made durable next to the log
    /// before anything builds on it (a `Committed` record past its slot would otherwise,
    /// after a crash, claim slots this log never held); reads below its slot get it from then
    /// on, not the partial records this log may hold of them.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), ShardError> {
        self.wal.backend().write_file_atomic(crate::snapshot::FILE_NAME, &snapshot.bytes)?;
        self.installed(snapshot.header.slot);
        Ok(())
    }

    /// A peer's snapshot at `slot` was written durably next to the log (by a helper thread:
    /// see [`ReplicaLog::install_snapshot`]): reads below it get it from now on.
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
            if let Some((first, count)) = log_record::slots_named(&record) {
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
            } else if !log_record::is_committed(&record) {
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
    /// See [`ReplicaLog::archived_runs`].
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
        let (encoded, batch) = log_record::encode_split(record, &mut self.payload);
        let payload_len = encoded.payload.len() + batch.len();
        let named = log_record::slots_named(&encoded);
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
                        bytes: shared.slice(log_record::BATCH_OFFSET..),
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

/// Where a shard's committed runs go: its state machine, or onward ([`ApplyTo::Forward`]).
struct Committer<S: StateMachine> {
    applier: Applier<S>,
    replies: Vec<AppliedCommand<S::Reply>>,
    /// Batches committed (no-ops not counted).
    committed_batches: u64,
    /// Total-order apply: committed runs wait here for the node's one state machine instead
    /// of being applied to this shard's.
    forwarded: Option<Vec<Committed>>,
}

impl<S: StateMachine> Committer<S> {
    /// Applies a committed run here, or hands it on. `replies`: keep the outcomes of its
    /// commands for the clients waiting on them (none wait for runs replayed at start-up).
    fn commit(
        &mut self,
        first_slot: Slot,
        count: u64,
        value: Value,
        replies: bool,
    ) -> Result<(), ShardError> {
        self.committed_batches += u64::from(value.is_batch());
        if let Some(forwarded) = &mut self.forwarded {
            forwarded.push(Committed { first_slot, count, value });
            return Ok(());
        }
        let Value::Batch(bytes) = value else { return Ok(()) };
        let (out, applier) = (&mut self.replies, &mut self.applier);
        let mut index = 0;
        // A state machine that panics stops the shard (and the node) half-way through a
        // batch: say which one, so that the operator can find the command.
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            applier.apply_batch(&bytes, |id, outcome| {
                if replies {
                    out.push(AppliedCommand { id, slot: first_slot, index, outcome });
                }
                index += 1;
            })
        }));
        match applied {
            Ok(result) => Ok(result?),
            Err(payload) => {
                let message = panic_message(&*payload);
                panic!("applying command {index} of the batch at slot {}: {message}", first_slot.0);
            }
        }
    }
}

/// The message a panic carried.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(message), _) => (*message).to_string(),
        (_, Some(message)) => message.clone(),
        _ => "(a panic without a message)".to_string(),
    }
}

/// How a shard is opened.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    /// What the session table keeps (exactly-once, protocol.md §5); the same on every replica.
    pub sessions: SessionLimits,
    /// Where committed runs are applied.
    pub apply: ApplyTo,
    /// The shard's number (snapshots name it).
    pub shard: u16,
    /// Take a snapshot every this many bytes of WAL, then let the WAL drop what it covers;
    /// 0: never (the log keeps everything). Only with [`ApplyTo::Shard`]: with forwarding the
    /// state lives elsewhere.
    pub snapshot_every_bytes: u64,
    /// The largest snapshot that may stand for a released prefix, and that this shard
    /// assembles from a peer's pieces (in memory). A larger one is taken (restarts use it)
    /// but the log keeps its prefix.
    pub snapshot_bytes_max: usize,
    /// A snapshot is sent in pieces of at most this many bytes, each pulled by the receiver.
    pub snapshot_piece_bytes: usize,
    /// Different at every start (random by default): tells this start's repair reports from
    /// an earlier one's (protocol.md §3.9).
    pub repair_nonce: u64,
}

/// A number that differs between processes and calls (std's per-process random hash keys).
fn random_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

impl ShardSettings {
    /// Snapshots off, applied here, shard 0.
    #[must_use]
    pub fn new(sessions: SessionLimits) -> ShardSettings {
        ShardSettings {
            sessions,
            apply: ApplyTo::Shard,
            shard: 0,
            snapshot_every_bytes: 0,
            snapshot_bytes_max: crate::snapshot::ASSEMBLY_BYTES_MAX as usize,
            snapshot_piece_bytes: SNAPSHOT_PIECE_BYTES,
            repair_nonce: random_nonce(),
        }
    }
}

/// Images at least this large are a pause worth spreading (tens of milliseconds): members
/// take them out of phase.
const PHASED_IMAGE_BYTES: u64 = 16 << 20;

/// This member's rank (voters in order, then learners) and the number of members; rank 0 if
/// it is not listed.
fn member_rank(config: &Config) -> (u64, u64) {
    let members = config.voters.iter().chain(&config.learners);
    let rank = members.clone().position(|member| *member == config.node).unwrap_or(0);
    (rank as u64, members.count().max(1) as u64)
}

/// A snapshot being written, off the shard's thread; hand the outcome to
/// [`Shard::finish_snapshot`].
pub struct PendingSnapshot<B: Backend> {
    backend: B,
    snapshot: Snapshot,
    /// How long building the image took (on the shard's thread: a pause in its service).
    image_time: std::time::Duration,
}

/// The outcome of [`PendingSnapshot::run`].
pub struct SnapshotWritten {
    snapshot: Snapshot,
    result: quorum_wal::Result<()>,
}

impl<B: Backend> PendingSnapshot<B> {
    /// The snapshot's slot.
    #[must_use]
    pub fn slot(&self) -> Slot {
        self.snapshot.header.slot
    }

    /// How long building its image took, on the shard's thread.
    #[must_use]
    pub fn image_time(&self) -> std::time::Duration {
        self.image_time
    }

    /// Writes the snapshot file durably (write, fsync, rename, directory fsync). Blocks: run
    /// it on a helper thread.
    #[must_use]
    pub fn run(self) -> SnapshotWritten {
        let result =
            self.backend.write_file_atomic(crate::snapshot::FILE_NAME, &self.snapshot.bytes);
        SnapshotWritten { snapshot: self.snapshot, result }
    }
}

/// [`ReplicaLog::snapshot_piece`], from the snapshot file in `backend`'s directory.
fn read_snapshot_piece<B: Backend>(
    backend: &B,
    slot: Option<Slot>,
    offset: u64,
    piece_bytes: usize,
    commit_index: Slot,
) -> Result<Option<Message>, ShardError> {
    let name = crate::snapshot::FILE_NAME;
    let head = crate::snapshot::HEADER_BYTES;
    let Some(range) = backend.read_file_range(name, head, offset, piece_bytes)? else {
        return Ok(None);
    };
    let Some(held) = crate::snapshot::slot_in_header(&range.head) else {
        return Ok(None); // Damaged: a restart would refuse it too.
    };
    if slot.is_some_and(|slot| slot != held) || offset >= range.total {
        return Ok(None); // Replaced by a newer one: the reader asks again from 0.
    }
    let bytes = Bytes::from(range.bytes);
    Ok(Some(Message::Snapshot { slot: held, offset, total: range.total, bytes, commit_index }))
}

/// Reads pieces of a shard's snapshot file without the shard: a runtime can answer pulls on
/// a helper thread (a piece is up to 32 MiB read from disk). It reads the file, so a newer
/// snapshot replacing it meanwhile is never mixed in (one opening per piece).
pub struct SnapshotReader<B: Backend> {
    backend: B,
    piece_bytes: usize,
    commit_index: Slot,
}

impl<B: Backend> SnapshotReader<B> {
    /// The piece of the snapshot at `slot` (any, with `None`) from `offset` on, if there is
    /// such a snapshot (see [`ReplicaLog::snapshot_piece`]).
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn piece(&self, slot: Option<Slot>, offset: u64) -> Result<Option<Message>, ShardError> {
        read_snapshot_piece(&self.backend, slot, offset, self.piece_bytes, self.commit_index)
    }

    /// The piece a client fetching the snapshot pulled: of the snapshot at `slot` if it is
    /// still the one here, else the first piece of the one here, else an empty piece of
    /// total 0.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn piece_for_client(&self, slot: Slot, offset: u64) -> Result<Message, ShardError> {
        let asked = (slot != Slot(0)).then(|| self.piece(Some(slot), offset));
        Ok(match asked.transpose()?.flatten() {
            Some(piece) => piece,
            None => self.piece(None, 0)?.unwrap_or(Message::Snapshot {
                slot: Slot(0),
                offset: 0,
                total: 0,
                bytes: Bytes::new(),
                commit_index: self.commit_index,
            }),
        })
    }
}

/// A peer's snapshot being installed: checked and restored, its file being written durably
/// (by the same helper as the shard's own snapshots) before the shard goes on from it.
struct Installing<S: StateMachine> {
    applier: Applier<S>,
    header: SnapshotHeader,
    bytes: usize,
    /// The sender's commit position, for the core.
    commit_index: Slot,
    /// The snapshot, until its write is handed out by [`Shard::start_snapshot`].
    snapshot: Option<Snapshot>,
}

/// Snapshot bookkeeping of a shard.
#[derive(Debug, Default)]
struct Snapshots {
    /// The newest durable snapshot's header and size. Its bytes stay in its file (read back
    /// for a reader below the log's floor): an image may be large.
    current: Option<(SnapshotHeader, usize)>,
    writing: bool,
    /// The WAL's end when the last snapshot was started.
    taken_at_position: u64,
    /// This member's rank among the members and their number, until its phase is taken: once
    /// an image is large enough to be a pause worth spreading, one interval is lengthened by
    /// `rank/members` of itself, putting members out of phase (see [`Shard::start_snapshot`]).
    phase: Option<(u64, u64)>,
    taken: u64,
    installed: u64,
    released_bytes: u64,
    /// A peer's snapshot arriving in pieces.
    arriving: crate::snapshot::Assembly,
}

/// What a shard did with snapshots since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshots taken and made durable here.
    pub taken: u64,
    /// Snapshots received from peers and installed.
    pub installed: u64,
    /// WAL bytes released behind snapshots.
    pub released_bytes: u64,
    /// The newest snapshot's slot and size.
    pub current: Option<(Slot, usize)>,
}

/// One shard replica, its log and its state machine.
pub struct Shard<B: Backend, S: StateMachine> {
    replica: Replica,
    log: ReplicaLog<B, ()>,
    committer: Committer<S>,
    settings: ShardSettings,
    snapshots: Snapshots,
    /// A peer's snapshot, checked and restored, until its file is durable.
    installing: Option<Installing<S>>,
    actions: Vec<Action>,
    outbox: Vec<(NodeId, Message)>,
    /// Batches the replica now keeps in the WAL's mapping instead of the heap.
    pub shared_batches: u64,
    /// Batches offered from the mapping but not taken (the slot's value had changed).
    pub unshared_batches: u64,
}

/// Where a shard's committed runs are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyTo {
    /// To this shard's own state machine, in its slot order.
    Shard,
    /// Elsewhere: they are handed out by [`Shard::take_committed`].
    Forward,
}

impl<B: Backend, S: StateMachine> Shard<B, S> {
    /// Opens the shard's log, recovers the replica from it, and re-applies what was committed.
    ///
    /// # Errors
    /// The log cannot be opened or holds something no replica writes; the configuration is bad.
    pub fn open(
        config: Config,
        backend: B,
        options: Options,
        machine: S,
        sessions: SessionLimits,
    ) -> Result<Self, ShardError> {
        Shard::open_with(config, backend, options, machine, ShardSettings::new(sessions))
    }

    /// [`Shard::open`] with every setting. A snapshot in the log's directory is loaded first
    /// (`machine` is then replaced by its image) and the log replayed from there.
    ///
    /// # Errors
    /// See [`Shard::open`]; also a damaged snapshot file.
    pub fn open_with(
        config: Config,
        backend: B,
        options: Options,
        machine: S,
        settings: ShardSettings,
    ) -> Result<Self, ShardError> {
        let mut replica = Replica::recovering(config)?;
        let mut snapshots = Snapshots::default();
        let mut applier = Applier::new(machine, settings.sessions);
        let owner = (replica.config().cluster_id, settings.shard);
        if let Some(snapshot) = ReplicaLog::<B, ()>::read_snapshot(&backend, owner)? {
            if settings.apply == ApplyTo::Forward {
                return Err(ShardError::ForwardFromSnapshot(snapshot.header.slot.0));
            }
            applier = Applier::restore(snapshot.body(), settings.sessions)?;
            replica.install_snapshot(snapshot.header.slot, snapshot.header.slot);
            snapshots.current = Some((snapshot.header, snapshot.bytes.len()));
        }
        let floor = snapshots.current.map_or(Slot(0), |(header, _)| header.slot);
        let mut committer = Committer {
            applier,
            replies: Vec::new(),
            committed_batches: 0,
            forwarded: (settings.apply == ApplyTo::Forward).then(Vec::new),
        };
        // Replayed record by record, committed runs applied as the records commit them, so
        // neither the records nor the log's slots pile up in memory (the log compacts).
        let mut actions = Vec::new();
        let mut apply = |replica: &mut Replica| -> Result<(), ShardError> {
            replica.take_actions(&mut actions);
            for action in actions.drain(..) {
                let Action::Commit { first_slot, count, value } = action else {
                    unreachable!("replaying the log only commits: {action:?}");
                };
                committer.commit(first_slot, count, value, false)?;
            }
            Ok(())
        };
        let log = ReplicaLog::open(backend, options, owner, floor, |record| {
            replica.replay(&record);
            apply(&mut replica)
        })?;
        replica.finish_recovery();
        apply(&mut replica)?;
        if let Some(reason) = log.repair_reason() {
            let voters = replica.config().voters.len();
            if voters == 1 && log.lost_records() {
                return Err(ShardError::Unrepairable(reason.to_string()));
            }
            if voters > 1 && !replica.config().is_learner() {
                tracing::warn!(
                    shard = settings.shard,
                    "{reason}: this replica will not vote until every other voter has said \
                     what it holds and it has caught up to that (protocol.md §3.9)"
                );
            }
            replica.start_repair(settings.repair_nonce);
        }
        snapshots.taken_at_position = log.wal().end_position();
        snapshots.phase = Some(member_rank(replica.config()));
        Ok(Shard {
            replica,
            log,
            committer,
            settings,
            snapshots,
            installing: None,
            actions: Vec::with_capacity(64),
            outbox: Vec::new(),
            shared_batches: 0,
            unshared_batches: 0,
        })
    }

    /// The protocol core.
    #[must_use]
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The state machine.
    #[must_use]
    pub fn machine(&self) -> &S {
        self.committer.applier.machine()
    }

    /// The log.
    #[must_use]
    pub fn wal(&self) -> &Wal<B> {
        self.log.wal()
    }

    /// True if records wait for a sync.
    #[must_use]
    pub fn has_unsynced(&self) -> bool {
        self.log.has_unsynced()
    }

    /// Batches committed since the replica started (no-ops not counted).
    #[must_use]
    pub fn committed_batches(&self) -> u64 {
        self.committer.committed_batches
    }

    /// Client commands applied so far on this replica.
    #[must_use]
    pub fn applied_commands(&self) -> u64 {
        self.committer.applier.applied_commands()
    }

    /// A message arrived from a peer.
    ///
    /// # Errors
    /// `Ok(Err(..))` if the message was refused (wrong cluster, unknown node, a value out of
    /// range, a batch that does not parse: `Replica::check_envelope`): nothing changed; log
    /// it and go on. `Err(..)` if the shard failed.
    pub fn on_message(
        &mut self,
        envelope: Envelope,
    ) -> Result<Result<(), RefusedMessage>, ShardError> {
        if let Message::Snapshot { .. } | Message::SnapshotPull { .. } = envelope.message {
            // Handled here, not by the replica, but refused by the same rules: its cluster, a
            // known sender other than this node, values in range.
            if let Err(refused) = self.replica.check_envelope(&envelope) {
                return Ok(Err(refused));
            }
            self.on_snapshot_message(envelope.from, envelope.message)?;
            return Ok(Ok(()));
        }
        let refused = self.replica.on_message(envelope);
        self.process_actions()?;
        Ok(refused)
    }

    /// A tick of time passed.
    ///
    /// # Errors
    /// The shard failed.
    pub fn on_tick(&mut self) -> Result<(), ShardError> {
        self.replica.on_tick();
        self.process_actions()
    }

    /// Proposes a client command; its reply comes out of [`Shard::take_replies`] once applied.
    /// A register-session command gets the leader's entropy first ([`seal_register`]).
    ///
    /// # Errors
    /// `Ok(Err(..))`: refused (not the leader, busy, too large, a malformed register-session
    /// command). `Err(..)`: the shard failed.
    pub fn propose(
        &mut self,
        id: RequestId,
        payload: &[u8],
    ) -> Result<Result<(), ProposeError>, ShardError> {
        let result = if id.client == RequestId::REGISTER {
            let mut entropy = [0; REGISTER_ENTROPY_BYTES];
            match (getrandom::fill(&mut entropy), seal_register(payload, entropy)) {
                (Ok(()), Ok(sealed)) => self.replica.propose(id, &sealed),
                (Err(_), _) => {
                    Err(ProposeError::Refused("the leader has no entropy for a session id"))
                }
                (_, Err(reason)) => Err(ProposeError::Refused(reason)),
            }
        } else {
            self.replica.propose(id, payload)
        };
        self.process_actions()?;
        Ok(result)
    }

    /// An idle leader skips up to `target` (see [`Replica::skip_to`]).
    ///
    /// # Errors
    /// The shard failed.
    pub fn skip_to(&mut self, target: Slot) -> Result<(), ShardError> {
        if self.replica.skip_to(target).is_some() {
            self.process_actions()?;
        }
        Ok(())
    }

    /// Sends the open batch if the pipeline has room (after a burst of proposals).
    ///
    /// # Errors
    /// The shard failed.
    pub fn flush(&mut self) -> Result<(), ShardError> {
        self.replica.flush();
        self.process_actions()
    }

    /// Starts a sync of everything appended, if one is due and none is under way. Run the
    /// returned flush on a helper thread, then hand its outcome to [`Shard::finish_sync`].
    ///
    /// # Errors
    /// The log is poisoned.
    pub fn start_sync(&mut self) -> Result<Option<PendingSync>, ShardError> {
        self.log.start_sync()
    }

    /// A flush finished: tell the core what is durable and release the replies that waited.
    ///
    /// # Errors
    /// The flush failed (the log is now poisoned), or the shard failed.
    pub fn finish_sync(&mut self, outcome: SyncOutcome) -> Result<(), ShardError> {
        let released = self.log.finish_sync(outcome)?;
        if let Some(seq) = released.seq {
            self.replica.on_persisted(seq);
        }
        let me = self.replica.node();
        let cluster_id = self.replica.config().cluster_id;
        for (to, message) in released.then_send {
            if to == me {
                self.replica
                    .on_message(Envelope { cluster_id, from: me, message })
                    .expect("a replica accepts its own messages");
            } else {
                self.outbox.push((to, message));
            }
        }
        // After the acknowledgements above, which may have chosen these slots.
        for batch in released.shared_batches {
            if self.replica.share_batch(batch.slot, batch.bytes, &batch.original) {
                self.shared_batches += 1;
            } else {
                self.unshared_batches += 1;
            }
        }
        self.process_actions()
    }

    /// Whether the WAL can get its next segment ([`Wal::check_space`]): a full disk is
    /// reported here before an append fails, so the runtime can stop feeding the replica
    /// (issue #21, docs/disk-faults.md). Cheap; call it every tick.
    ///
    /// # Errors
    /// The log is poisoned, or preparing the segment failed other than for lack of space.
    pub fn check_space(&mut self) -> Result<quorum_wal::Space, ShardError> {
        Ok(self.log.wal.check_space()?)
    }

    /// Moves the messages to send onto `out`.
    pub fn take_outbox(&mut self, out: &mut Vec<(NodeId, Message)>) {
        out.append(&mut self.outbox);
    }

    /// Moves the committed runs waiting to be applied elsewhere ([`ApplyTo::Forward`]) onto
    /// `out`, in slot order.
    pub fn take_committed(&mut self, out: &mut Vec<Committed>) {
        if let Some(forwarded) = &mut self.committer.forwarded {
            out.append(forwarded);
        }
    }

    /// Moves the outcomes of applied client commands onto `out`.
    pub fn take_replies(&mut self, out: &mut Vec<AppliedCommand<S::Reply>>) {
        out.append(&mut self.committer.replies);
    }

    /// Slots below this may be gone from the WAL (see [`ReplicaLog::floor`]).
    #[must_use]
    pub fn log_floor(&self) -> Slot {
        self.log.floor()
    }

    /// The first piece of the newest durable snapshot, if there is one (a tail below the
    /// floor learns from it where the log resumes).
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn snapshot_first_piece(&self) -> Result<Option<Message>, ShardError> {
        if self.snapshots.current.is_none() {
            return Ok(None);
        }
        self.snapshot_piece(None, 0)
    }

    /// [`ReplicaLog::snapshot_piece`] in this shard's piece size, at its commit position.
    fn snapshot_piece(
        &self,
        slot: Option<Slot>,
        offset: u64,
    ) -> Result<Option<Message>, ShardError> {
        let (piece_bytes, commit) =
            (self.settings.snapshot_piece_bytes, self.replica.commit_index());
        self.log.snapshot_piece(slot, offset, piece_bytes, commit)
    }

    /// The piece a client fetching the snapshot pulled (see
    /// `runtime::Host::answer_snapshot_pull`): of the snapshot at `slot` if it is still the
    /// one here, else the first piece of the one here, else an empty piece of total 0.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn snapshot_piece_for_client(
        &self,
        slot: Slot,
        offset: u64,
    ) -> Result<Message, ShardError> {
        self.snapshot_reader().piece_for_client(slot, offset)
    }

    /// A reader of this shard's snapshot file in its piece size, at its commit position, for
    /// a helper thread.
    #[must_use]
    pub fn snapshot_reader(&self) -> SnapshotReader<B> {
        SnapshotReader {
            backend: self.log.wal().backend().clone(),
            piece_bytes: self.settings.snapshot_piece_bytes,
            commit_index: self.replica.commit_index(),
        }
    }

    /// What this shard did with snapshots.
    #[must_use]
    pub fn snapshot_stats(&self) -> SnapshotStats {
        SnapshotStats {
            taken: self.snapshots.taken,
            installed: self.snapshots.installed,
            released_bytes: self.snapshots.released_bytes,
            current: self.snapshots.current.map(|(header, bytes)| (header.slot, bytes)),
        }
    }

    /// Starts a snapshot if one is due (`snapshot_every_bytes` of WAL since the last, and at
    /// least four times the last snapshot's size; the first one later by the member's phase)
    /// and none is being written: the applied state's image is taken now, on this thread; run
    /// the returned write on a helper thread, then hand its outcome to
    /// [`Shard::finish_snapshot`].
    ///
    /// Every member writes the same log, so all snapshot at about the same time; with a large
    /// state, while two followers of three build their images (a pause of their service) no
    /// majority acknowledges. Once an image reaches `PHASED_IMAGE_BYTES`, member `k` of `n`
    /// waits `k/n` of an interval more for its next one; later ones come an interval apart
    /// on every member, so the phases stay. (Small images are left in step: spreading their
    /// short pauses cost 4 KiB writes 6–25 % of their throughput, BENCHMARKS.md.)
    ///
    /// A peer's snapshot being installed comes first: its write is returned the same way
    /// (with no image time), as soon as no write of ours is under way.
    pub fn start_snapshot(&mut self) -> Option<PendingSnapshot<B>> {
        if self.snapshots.writing {
            return None;
        }
        if let Some(installing) = &mut self.installing {
            let snapshot = installing.snapshot.take()?;
            self.snapshots.writing = true;
            let backend = self.log.wal().backend().clone();
            return Some(PendingSnapshot { backend, snapshot, image_time: Default::default() });
        }
        let every = self.settings.snapshot_every_bytes;
        let end = self.log.wal().end_position();
        // A snapshot costs about its own size (the image is built on this thread): at least
        // four times that much log goes by between two, however small `every` is.
        let last_bytes = self.snapshots.current.map_or(0, |(_, bytes)| bytes as u64);
        let due = every.max(4 * last_bytes);
        let phase = match self.snapshots.phase {
            Some((rank, members)) if last_bytes >= PHASED_IMAGE_BYTES => due / members * rank,
            _ => 0,
        };
        if every == 0
            || self.snapshots.writing
            || self.committer.forwarded.is_some()
            || end - self.snapshots.taken_at_position < due + phase
        {
            return None;
        }
        if last_bytes >= PHASED_IMAGE_BYTES {
            self.snapshots.phase = None;
        }
        Some(self.take_snapshot())
    }

    /// Takes a snapshot now, due or not (see [`Shard::start_snapshot`]).
    ///
    /// # Panics
    /// Committed runs are forwarded ([`ApplyTo::Forward`]): the state is not here.
    pub fn take_snapshot(&mut self) -> PendingSnapshot<B> {
        assert!(self.committer.forwarded.is_none(), "a forwarding shard holds no state");
        let header = SnapshotHeader {
            cluster_id: self.replica.config().cluster_id,
            shard: self.settings.shard,
            slot: self.replica.commit_index(),
        };
        let applier = &self.committer.applier;
        let started = std::time::Instant::now();
        let snapshot = Snapshot::encode_with(header, |out| applier.snapshot(out));
        let image_time = started.elapsed();
        self.snapshots.writing = true;
        self.snapshots.taken_at_position = self.log.wal().end_position();
        PendingSnapshot { backend: self.log.wal().backend().clone(), snapshot, image_time }
    }

    /// A snapshot's write finished: it becomes the one readers below the floor are sent, and
    /// the WAL drops the segments it covers (if it is no larger than `snapshot_bytes_max`, so
    /// that a reader can assemble it).
    ///
    /// # Errors
    /// The write failed, or the WAL failed to release. The shard is then failed: a
    /// snapshot that may be half-written is never built upon.
    pub fn finish_snapshot(&mut self, written: SnapshotWritten) -> Result<(), ShardError> {
        self.snapshots.writing = false;
        if self.installing.as_ref().is_some_and(|installing| installing.snapshot.is_none()) {
            return self.finish_install(written);
        }
        if let Err(quorum_wal::Error::NoSpace { path }) = &written.result {
            // A full disk refused the file before anything was synced or renamed: the last
            // snapshot stands and nothing is lost. The next one is due a whole interval on.
            tracing::warn!(shard = self.settings.shard, path = %path.display(), "snapshot not written: out of disk space");
            return Ok(());
        }
        written.result?;
        let snapshot = written.snapshot;
        let slot = snapshot.header.slot;
        if self.snapshots.current.is_some_and(|(current, _)| current.slot > slot) {
            return Ok(()); // One installed meanwhile is newer (and durable).
        }
        let fits = snapshot.bytes.len() <= self.settings.snapshot_bytes_max;
        self.snapshots.current = Some((snapshot.header, snapshot.bytes.len()));
        self.snapshots.taken += 1;
        if fits {
            let (promised, base) = (self.replica.promised(), self.replica.log().base());
            self.snapshots.released_bytes += self.log.release_below(slot, base, promised)?;
        }
        Ok(())
    }

    /// A piece of a peer's snapshot (put together, then installed, pulling each next piece),
    /// or a peer's pull of the next piece of this one.
    fn on_snapshot_message(&mut self, from: NodeId, message: Message) -> Result<(), ShardError> {
        match message {
            Message::Snapshot { slot, offset, total, bytes, commit_index } => {
                if self.committer.forwarded.is_some() {
                    return Ok(()); // Never released with forwarding (see `install`).
                }
                let (commit, max) =
                    (self.replica.commit_index(), self.settings.snapshot_bytes_max as u64);
                match self.snapshots.arriving.receive(commit, slot, offset, total, bytes, max) {
                    Piece::Whole(bytes) => self.install(bytes, commit_index)?,
                    Piece::Pull(slot, offset) => {
                        self.replica.on_snapshot_piece();
                        self.outbox.push((from, Message::SnapshotPull { slot, offset }));
                    }
                    Piece::Ignored => {}
                }
            }
            Message::SnapshotPull { slot, offset } => {
                if let Some(piece) = self.snapshot_piece(Some(slot), offset)? {
                    self.outbox.push((from, piece));
                }
            }
            _ => unreachable!("only snapshot messages come here"),
        }
        Ok(())
    }

    /// A peer's snapshot: checked and restored here, then written durably by the helper that
    /// writes the shard's own ([`Shard::start_snapshot`]), and only then do the state machine
    /// and the replica go on from it ([`Shard::finish_snapshot`]); the shard serves on from
    /// its old state meanwhile. Nothing changes if it is refused, not ahead of this replica,
    /// or another is being installed.
    fn install(&mut self, bytes: Bytes, commit_index: Slot) -> Result<(), ShardError> {
        if self.committer.forwarded.is_some() || self.installing.is_some() {
            // Never released with forwarding (a confused peer); or one is under way, and the
            // reader asks again from its next catch-up.
            return Ok(());
        }
        let cluster_id = self.replica.config().cluster_id;
        let Ok(snapshot) = Snapshot::decode(bytes, cluster_id, self.settings.shard) else {
            return Ok(()); // Damaged on the way: the reader asks again.
        };
        let slot = snapshot.header.slot;
        if slot <= self.replica.commit_index() {
            return Ok(());
        }
        let Ok(applier) = Applier::restore(snapshot.body(), self.settings.sessions) else {
            return Ok(());
        };
        let (header, bytes) = (snapshot.header, snapshot.bytes.len());
        let snapshot = Some(snapshot);
        self.installing = Some(Installing { applier, header, bytes, commit_index, snapshot });
        Ok(())
    }

    /// A peer's snapshot is durable next to the log: the state machine and the replica go on
    /// from it (unless the replica got past its slot meanwhile: the file is then simply the
    /// newest snapshot).
    ///
    /// # Errors
    /// The write failed (the shard is then failed, as for its own snapshots).
    fn finish_install(&mut self, written: SnapshotWritten) -> Result<(), ShardError> {
        let installing = self.installing.take().expect("an install was being written");
        written.result?;
        let slot = installing.header.slot;
        self.log.installed(slot);
        self.snapshots.current = Some((installing.header, installing.bytes));
        if slot <= self.replica.commit_index() {
            return Ok(());
        }
        self.committer.applier = installing.applier;
        self.snapshots.installed += 1;
        self.replica.install_snapshot(slot, installing.commit_index);
        self.process_actions()
    }

    /// The committed runs of `from_slot..end_slot` from the WAL, for slots the replica
    /// compacted away (see [`ReplicaLog::archived_runs`]).
    ///
    /// # Errors
    /// The log cannot be read.
    pub fn archived_runs(
        &self,
        from_slot: Slot,
        end_slot: Slot,
        bytes_max: usize,
    ) -> Result<Vec<SlotRun>, ShardError> {
        self.log.archived_runs(from_slot, end_slot, bytes_max)
    }

    fn process_actions(&mut self) -> Result<(), ShardError> {
        let mut actions = std::mem::take(&mut self.actions);
        self.replica.take_actions(&mut actions);
        let result = self.carry_out(&mut actions);
        actions.clear();
        self.actions = actions;
        result
    }

    fn carry_out(&mut self, actions: &mut Vec<Action>) -> Result<(), ShardError> {
        for action in actions.drain(..) {
            match action {
                Action::Send { to, message } => self.outbox.push((to, message)),
                Action::Persist { seq, record, then_send } => {
                    self.log.append(seq, &record, then_send, ())?
                }
                Action::Commit { first_slot, count, value } => {
                    self.committer.commit(first_slot, count, value, true)?
                }
                Action::SendArchived { to, from_slot, end_slot, commit_index } => {
                    let runs_max = self.replica.config().message_runs_max;
                    let messages = self.log.archived_messages(
                        from_slot,
                        end_slot,
                        commit_index,
                        runs_max,
                        (ARCHIVE_READ_BYTES_MAX, self.settings.snapshot_piece_bytes),
                    )?;
                    self.outbox.extend(messages.into_iter().map(|message| (to, message)));
                }
                Action::Repaired => {
                    tracing::info!(shard = self.settings.shard, "repair finished: voting again");
                    self.log.finish_repair()?;
                }
            }
        }
        Ok(())
    }
}

/// Wires replicas of one shard together in one thread, for tests and benches: runs every sync
/// and every snapshot due, and delivers every message until nothing moves. Replica `i` is node `i + 1`; `None` is a
/// replica that is down (messages to it are lost). `on_replies` gets each replica's outcomes
/// of applied commands, with the replica.
///
/// # Errors
/// A shard failed.
///
/// # Panics
/// A replica refused a message from another (they must share a cluster).
pub fn settle_wired<B: Backend, S: StateMachine>(
    shards: &mut [Option<Shard<B, S>>],
    mut on_replies: impl FnMut(&Shard<B, S>, Vec<AppliedCommand<S::Reply>>),
) -> Result<(), ShardError> {
    loop {
        let mut moved = false;
        let mut mail: Vec<(usize, NodeId, Message)> = Vec::new();
        for (index, shard) in shards.iter_mut().enumerate() {
            let Some(shard) = shard.as_mut() else { continue };
            if let Some(pending) = shard.start_sync()? {
                shard.finish_sync(pending.run())?;
                moved = true;
            }
            if let Some(pending) = shard.start_snapshot() {
                shard.finish_snapshot(pending.run())?;
                moved = true;
            }
            let mut out = Vec::new();
            shard.take_outbox(&mut out);
            let mut replies = Vec::new();
            shard.take_replies(&mut replies);
            on_replies(shard, replies);
            let from = NodeId(index as u16 + 1);
            mail.extend(
                out.into_iter().map(|(to, message)| (usize::from(to.0) - 1, from, message)),
            );
        }
        for (to, from, message) in mail {
            moved = true;
            if let Some(shard) = shards.get_mut(to).and_then(Option::as_mut) {
                let cluster_id = shard.replica().config().cluster_id;
                shard
                    .on_message(Envelope { cluster_id, from, message })?
                    .expect("replicas of one shard accept each other's messages");
            }
        }
        if !moved {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_ranked_voters_first() {
        let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
        let config = |node: u16| Config {
            learners: vec![NodeId(4)],
            ..Config::new(ClusterId(1), NodeId(node), voters.clone())
        };
        let ranks: Vec<(u64, u64)> = (1..=4).map(|node| member_rank(&config(node))).collect();
        assert_eq!(ranks, [(0, 4), (1, 4), (2, 4), (3, 4)]);
        assert_eq!(member_rank(&config(9)), (0, 4), "not a member: no phase");
    }
}
