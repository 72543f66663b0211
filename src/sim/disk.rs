//! The simulated disk of one shard replica: the real WAL (`quorum-wal`) over its simulated
//! backend, which keeps an image "as written" and one "as synced". A crash keeps the synced
//! image and, at random, any subset of the writes made since, each possibly torn at 512-byte or
//! 4 KiB granularity; a restart recovers through the WAL's own recovery. Syncs are group
//! commits: one covers every record written before it started.

use rand_core::RngCore;
use rand_xoshiro::Xoshiro256PlusPlus;

use quorum_wal::{Backend as _, Options, PendingSync, SimBackend, Tear};

use crate::core::{Ballot, ClusterId, Message, NodeId, PersistSeq, Record, Slot};
use crate::shard::ReplicaLog;
use crate::snapshot::{FILE_NAME, Snapshot, SnapshotHeader};

/// The disk of one shard replica.
pub struct SimDisk {
    backend: SimBackend,
    /// The log, keeping each record until it is durable (the checkers want to see it then).
    log: Option<ReplicaLog<SimBackend, Record>>,
    in_flight: Option<PendingSync>,
    segment_bytes: u64,
    /// The log's end when the last snapshot was taken.
    snapshot_taken_at: u64,
    /// WAL bytes released behind snapshots, over every incarnation.
    pub released_bytes: u64,
}

fn options(segment_bytes: u64) -> Options {
    Options { segment_bytes, prepare_ahead: false }
}

impl SimDisk {
    /// A new, empty disk with an empty log of `segment_bytes` segments (small, so that runs
    /// cross many segments and snapshots release many), for `owner` (cluster, shard).
    ///
    /// # Panics
    /// If the simulated log cannot be created (a bug).
    #[must_use]
    pub fn new(segment_bytes: u64, owner: (ClusterId, u16)) -> SimDisk {
        let backend = SimBackend::new();
        let log =
            ReplicaLog::open(backend.clone(), options(segment_bytes), owner, Slot(0), |_| Ok(()))
                .expect("a new simulated log opens");
        SimDisk {
            backend,
            log: Some(log),
            in_flight: None,
            segment_bytes,
            snapshot_taken_at: 0,
            released_bytes: 0,
        }
    }

    /// Log bytes written since the last snapshot.
    pub fn bytes_since_snapshot(&mut self) -> u64 {
        let end = self.log().wal().end_position();
        end - self.snapshot_taken_at
    }

    /// Writes a snapshot (durably, at once) and lets the log release what it covers;
    /// `promised` goes to the log's metadata first (as `Shard::finish_snapshot` does).
    ///
    /// # Panics
    /// If the simulated log fails: it never does.
    pub fn take_snapshot(
        &mut self,
        header: SnapshotHeader,
        body: &[u8],
        in_memory_from: Slot,
        promised: Ballot,
    ) {
        let snapshot = Snapshot::encode(header, body);
        self.backend.write_file_atomic(FILE_NAME, &snapshot.bytes).expect("simulated files write");
        self.snapshot_taken_at = self.log().wal().end_position();
        let released = self
            .log()
            .release_below(header.slot, in_memory_from, promised)
            .expect("simulated release");
        self.released_bytes += released;
    }

    /// A peer's snapshot was checked and is ahead: made durable here before anything builds
    /// on it (as `Shard` does).
    ///
    /// # Panics
    /// If the simulated file cannot be written: it always can.
    pub fn install(&mut self, snapshot: &Snapshot) {
        self.log().install_snapshot(snapshot).expect("simulated files write");
    }

    fn log(&mut self) -> &mut ReplicaLog<SimBackend, Record> {
        self.log.as_mut().expect("a running replica has its log")
    }

    /// Writes a record (not yet durable).
    ///
    /// # Panics
    /// If the log refuses the append: simulated disks never fail appends.
    pub fn write(&mut self, seq: PersistSeq, record: Record, then_send: Option<(NodeId, Message)>) {
        let kept = record.clone();
        self.log().append(seq, &record, then_send, kept).expect("simulated appends succeed");
    }

    /// Starts a sync of everything written so far, unless one is under way or nothing waits.
    /// Returns true if a sync started (the caller schedules its completion).
    ///
    /// # Panics
    /// If the log is poisoned: simulated syncs never fail.
    pub fn maybe_start_sync(&mut self) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        self.in_flight = self.log().start_sync().expect("simulated logs are never poisoned");
        self.in_flight.is_some()
    }

    /// The sync under way completed. Returns the highest persist now durable, the records that
    /// became durable, and the replies they held back.
    ///
    /// # Panics
    /// If no sync is under way.
    pub fn complete_sync(&mut self) -> (PersistSeq, Vec<Record>, Vec<(NodeId, Message)>) {
        let pending = self.in_flight.take().expect("a sync under way");
        let released = self.log().finish_sync(pending.run()).expect("simulated syncs succeed");
        let seq = released.seq.expect("a sync covers at least one record");
        (seq, released.extras, released.then_send)
    }

    /// The `Chosen` messages that send `from_slot..end_slot` from the log (see
    /// [`ReplicaLog::archived_messages`]).
    ///
    /// # Panics
    /// If the log cannot be read: simulated logs hold only records replicas wrote.
    pub fn archived_messages(
        &mut self,
        from_slot: Slot,
        end_slot: Slot,
        commit_index: Slot,
        runs_max: usize,
        limits: (usize, usize),
    ) -> Vec<Message> {
        self.log()
            .archived_messages(from_slot, end_slot, commit_index, runs_max, limits)
            .expect("simulated logs read back")
    }

    /// A piece of the snapshot at `slot` (see [`ReplicaLog::snapshot_piece`]).
    ///
    /// # Panics
    /// If the snapshot cannot be read: simulated files always can.
    pub fn snapshot_piece(
        &mut self,
        slot: Slot,
        offset: u64,
        piece_bytes: usize,
        commit_index: Slot,
    ) -> Option<Message> {
        self.log()
            .snapshot_piece(Some(slot), offset, piece_bytes, commit_index)
            .expect("simulated files read back")
    }

    /// A crash: the synced image stays; each write made since survives with chance
    /// `survives_ppm` in a million, and a survivor is torn with chance `torn_ppm`.
    pub fn crash(&mut self, rng: &mut Xoshiro256PlusPlus, survives_ppm: u64, torn_ppm: u64) {
        self.log = None;
        self.in_flight = None;
        self.backend = self.backend.crash(|_, _| {
            if rng.next_u64() % 1_000_000 >= survives_ppm {
                return None;
            }
            if rng.next_u64() % 1_000_000 >= torn_ppm {
                return Some(Tear::Whole);
            }
            let sector_bytes = if rng.next_u64() % 2 == 0 { 512 } else { 4096 };
            Some(Tear::Sectors { n: (rng.next_u64() % 4) as usize, sector_bytes })
        });
    }

    /// Why the replica on this disk must repair before it votes, if it must (see
    /// [`ReplicaLog::repair_reason`]).
    pub fn repair_reason(&mut self) -> Option<String> {
        self.log().repair_reason().map(str::to_string)
    }

    /// The replica's repair is over: later restarts need none.
    ///
    /// # Panics
    /// If the simulated marker cannot be removed: it always can.
    pub fn finish_repair(&mut self) {
        self.log().finish_repair().expect("simulated files delete");
    }

    /// Reopens the log after a crash and returns the records it recovered, in order.
    ///
    /// # Panics
    /// If recovery fails or returns a record no replica writes: both would be bugs, since the
    /// simulated disk only loses or tears unsynced writes.
    pub fn recover(
        &mut self,
        cluster_id: ClusterId,
        shard: u16,
    ) -> (Option<Snapshot>, Vec<Record>) {
        // Damage the WAL reports as possibly synced comes here only from a sync that had not
        // completed (the simulated disk flips no bits), so nothing in it was acknowledged.
        let owner = (cluster_id, shard);
        let snapshot = ReplicaLog::<SimBackend, Record>::read_snapshot(&self.backend, owner)
            .expect("simulated snapshot files are written atomically");
        let floor = snapshot.as_ref().map_or(Slot(0), |snapshot| snapshot.header.slot);
        let mut records = Vec::new();
        let log = ReplicaLog::open(
            self.backend.clone(),
            options(self.segment_bytes),
            owner,
            floor,
            |record| {
                records.push(record);
                Ok(())
            },
        )
        .expect("recovery after a crash succeeds");
        self.snapshot_taken_at = log.wal().end_position();
        self.log = Some(log);
        (snapshot, records)
    }
}
