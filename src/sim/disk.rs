//! The simulated disk of one shard replica: the real WAL (`quorum-wal`) over its simulated
//! backend, which keeps an image "as written" and one "as synced". A crash keeps the synced
//! image and, at random, any subset of the writes made since, each possibly torn at 512-byte or
//! 4 KiB granularity; a restart recovers through the WAL's own recovery. Syncs are group
//! commits: one covers every record written before it started.

use rand_core::RngCore;
use rand_xoshiro::Xoshiro256PlusPlus;

use quorum_wal::{Backend as _, Options, PendingSync, SimBackend, Tear};

use crate::core::{Ballot, ClusterId, Message, NodeId, PersistSeq, Record, Slot};
use crate::shard::{ReplicaLog, ShardError};
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
    /// The log's durable position before and after the last completed sync: what that sync's
    /// watermark confirms is below the first (docs/wal-format.md, "Watermarks").
    durable_positions: (u64, u64),
}

/// What a completed sync made durable: the highest persist, its records, the replies they
/// held back.
pub type Synced = (PersistSeq, Vec<Record>, Vec<(NodeId, Message)>);

/// A simulated disk whose crashes undo directory changes no directory sync made durable.
fn lossy_backend() -> SimBackend {
    let backend = SimBackend::new();
    backend.lose_unsynced_entries_on_crash(true);
    backend
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
    pub fn new(segment_bytes: u64) -> SimDisk {
        SimDisk {
            backend: lossy_backend(),
            log: None,
            in_flight: None,
            segment_bytes,
            snapshot_taken_at: 0,
            released_bytes: 0,
            durable_positions: (0, 0),
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
    /// # Errors
    /// A failing sync (a fault the world injected).
    pub fn take_snapshot(
        &mut self,
        header: SnapshotHeader,
        body: &[u8],
        in_memory_from: Slot,
        promised: Ballot,
    ) -> Result<(), ShardError> {
        let snapshot = Snapshot::encode(header, body);
        self.backend.write_file_atomic(FILE_NAME, &snapshot.bytes)?;
        self.snapshot_taken_at = self.log().wal().end_position();
        let released = self.log().release_below(header.slot, in_memory_from, promised)?;
        self.released_bytes += released;
        Ok(())
    }

    /// A peer's snapshot was checked and is ahead: made durable here before anything builds
    /// on it (as `Shard` does).
    ///
    /// # Errors
    /// A failing sync (a fault the world injected).
    pub fn install(&mut self, snapshot: &Snapshot) -> Result<(), ShardError> {
        self.log().install_snapshot(snapshot)
    }

    fn log(&mut self) -> &mut ReplicaLog<SimBackend, Record> {
        self.log.as_mut().expect("a running replica has its log")
    }

    /// Writes a record (not yet durable).
    ///
    /// # Errors
    /// A full disk or a poisoned log (faults the world injected).
    pub fn write(
        &mut self,
        seq: PersistSeq,
        record: Record,
        then_send: Option<(NodeId, Message)>,
    ) -> Result<(), ShardError> {
        let kept = record.clone();
        self.log().append(seq, &record, then_send, kept)
    }

    /// Starts a sync of everything written so far, unless one is under way or nothing waits.
    /// Returns true if a sync started (the caller schedules its completion).
    ///
    /// # Errors
    /// The log is poisoned (a sync failed).
    pub fn maybe_start_sync(&mut self) -> Result<bool, ShardError> {
        if self.in_flight.is_some() {
            return Ok(false);
        }
        self.in_flight = self.log().start_sync()?;
        Ok(self.in_flight.is_some())
    }

    /// The sync under way completed. Returns the highest persist now durable, the records that
    /// became durable, and the replies they held back.
    ///
    /// # Errors
    /// The sync failed (a fault the world injected): the log is poisoned.
    ///
    /// # Panics
    /// If no sync is under way.
    pub fn complete_sync(&mut self) -> Result<Synced, ShardError> {
        let pending = self.in_flight.take().expect("a sync under way");
        let released = self.log().finish_sync(pending.run())?;
        let durable = self.log().wal().durable_position();
        self.durable_positions = (self.durable_positions.1, durable);
        let seq = released.seq.expect("a sync covers at least one record");
        Ok((seq, released.extras, released.then_send))
    }

    /// The next sync (or atomic file write) fails with EIO.
    pub fn fail_next_sync(&self) {
        self.backend.fail_syncs(1);
    }

    /// The next directory sync fails with EIO: the change it should have made durable is lost
    /// if the node crashes before another sync of the directory.
    pub fn fail_next_directory_sync(&self) {
        self.backend.fail_directory_syncs(1);
    }

    /// The disk is full: no new segment can be made until the node restarts (space freed).
    pub fn fill(&self) {
        self.backend.limit_space(0);
    }

    /// Damages the durable image of a crashed disk as storage faults do, and returns what it
    /// did: a flipped bit or a zeroed stretch in a segment's records (below the last byte
    /// written), or the whole directory gone (amnesia). `None` if there was nothing to damage.
    pub fn damage(&mut self, rng: &mut Xoshiro256PlusPlus) -> Option<&'static str> {
        assert!(self.log.is_none(), "damage a crashed disk only");
        if rng.next_u64() % 4 == 0 {
            self.backend = lossy_backend();
            self.snapshot_taken_at = 0;
            return Some("wiped");
        }
        // Only where a completed sync's watermark confirms the records were durable: there the
        // WAL can tell lost records from a torn write (below it, it reports them for repair).
        let confirmed = self.durable_positions.0;
        let numbers: Vec<u64> = self.backend.list().ok()?;
        let numbers: Vec<u64> =
            numbers.into_iter().filter(|number| number * self.segment_bytes < confirmed).collect();
        if numbers.is_empty() {
            return None;
        }
        let number = numbers[(rng.next_u64() % numbers.len() as u64) as usize];
        let mut image = self.backend.synced_image(number)?;
        let header = quorum_wal::format::SEGMENT_HEADER_BYTES;
        let confirmed_here = (confirmed - number * self.segment_bytes).min(image.len() as u64);
        let last = image.iter().rposition(|byte| *byte != 0)?.min(confirmed_here as usize);
        if last <= header {
            return None;
        }
        let at = header + (rng.next_u64() % (last - header) as u64) as usize;
        if rng.next_u64() % 2 == 0 {
            image[at] ^= 1 << (rng.next_u64() % 8);
            self.backend.set_synced_image(number, image);
            return Some("bit flipped");
        }
        let at = at / 8 * 8;
        let len = (8 + (rng.next_u64() % 4096) as usize / 8 * 8).min(last - at);
        image[at..at + len].fill(0);
        self.backend.set_synced_image(number, image);
        Some("zeroed")
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

    /// True while the disk holds a repair marker: its replica has not finished a repair (of
    /// damage, or of a new directory) and may not hold what it acknowledged.
    pub fn repair_marked(&self) -> bool {
        self.backend.read_file(quorum_wal::REPAIR_FILE).ok().flatten().is_some()
    }

    /// The replica's repair is over: later restarts need none.
    ///
    /// # Errors
    /// A failing directory sync (a fault the world injected): the marker may come back.
    pub fn finish_repair(&mut self) -> Result<(), ShardError> {
        self.log().finish_repair()
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
        // Damage the WAL reports (a torn sync that may have completed, a flipped bit, zeros) is
        // cut and the replica repairs it from its peers before it votes (protocol.md §3.9).
        let owner = (cluster_id, shard);
        // A restarted node finds the space it ran out of freed.
        self.backend.limit_space(u64::MAX);
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
        let durable = log.wal().durable_position();
        self.durable_positions = (durable, durable);
        self.log = Some(log);
        (snapshot, records)
    }
}
