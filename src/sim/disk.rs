//! The simulated disk of one shard replica: the real WAL (`quorum-wal`) over its simulated
//! backend, which keeps an image "as written" and one "as synced". A crash keeps the synced
//! image and, at random, any subset of the writes made since, each possibly torn at 512-byte or
//! 4 KiB granularity; a restart recovers through the WAL's own recovery. Syncs are group
//! commits: one covers every record written before it started.

use std::collections::VecDeque;

use rand_core::RngCore;
use rand_xoshiro::Xoshiro256PlusPlus;

use quorum_wal::{Options, PendingSync, SimBackend, Tear, Wal};

use crate::core::{Message, NodeId, PersistSeq, Record};
use crate::log_record;

/// A persist written to the log and not yet covered by a completed sync.
#[derive(Debug)]
struct Unsynced {
    end_position: u64,
    seq: PersistSeq,
    record: Record,
    then_send: Option<(NodeId, Message)>,
}

/// The disk of one shard replica.
pub struct SimDisk {
    backend: SimBackend,
    wal: Option<Wal<SimBackend>>,
    unsynced: VecDeque<Unsynced>,
    in_flight: Option<PendingSync>,
    payload: Vec<u8>,
}

/// Segment size of simulated logs: small, so runs cross many segments.
const SEGMENT_BYTES: u64 = 64 * 1024;

fn options() -> Options {
    Options { segment_bytes: SEGMENT_BYTES, prepare_ahead: false }
}

impl SimDisk {
    /// A new, empty disk with an empty log.
    ///
    /// # Panics
    /// If the simulated log cannot be created (a bug).
    #[must_use]
    pub fn new() -> SimDisk {
        let backend = SimBackend::new();
        let (wal, _) = Wal::open(backend.clone(), options()).expect("a new simulated log opens");
        SimDisk {
            backend,
            wal: Some(wal),
            unsynced: VecDeque::new(),
            in_flight: None,
            payload: Vec::new(),
        }
    }

    /// Writes a record (not yet durable).
    ///
    /// # Panics
    /// If the log refuses the append: simulated disks never fail appends.
    pub fn write(&mut self, seq: PersistSeq, record: Record, then_send: Option<(NodeId, Message)>) {
        let wal = self.wal.as_mut().expect("a running replica has its log");
        let encoded = log_record::encode(&record, &mut self.payload);
        wal.append(&encoded).expect("simulated appends succeed");
        let end_position = wal.end_position();
        self.unsynced.push_back(Unsynced { end_position, seq, record, then_send });
    }

    /// Starts a sync of everything written so far, unless one is under way or nothing waits.
    /// Returns true if a sync started (the caller schedules its completion).
    ///
    /// # Panics
    /// If the log is poisoned: simulated syncs never fail.
    pub fn maybe_start_sync(&mut self) -> bool {
        if self.in_flight.is_some() || self.unsynced.is_empty() {
            return false;
        }
        let wal = self.wal.as_mut().expect("a running replica has its log");
        self.in_flight = wal.start_sync().expect("simulated logs are never poisoned");
        self.in_flight.is_some()
    }

    /// The sync under way completed. Returns the highest persist now durable, the records that
    /// became durable, and the replies they held back.
    ///
    /// # Panics
    /// If no sync is under way.
    pub fn complete_sync(&mut self) -> (PersistSeq, Vec<Record>, Vec<(NodeId, Message)>) {
        let pending = self.in_flight.take().expect("a sync under way");
        let wal = self.wal.as_mut().expect("a running replica has its log");
        let durable = wal.finish_sync(pending.run()).expect("simulated syncs succeed");
        let mut seq = PersistSeq(0);
        let mut records = Vec::new();
        let mut replies = Vec::new();
        while self.unsynced.front().is_some_and(|unsynced| unsynced.end_position <= durable) {
            let done = self.unsynced.pop_front().expect("checked");
            seq = done.seq;
            records.push(done.record);
            replies.extend(done.then_send);
        }
        assert!(!records.is_empty(), "a sync covers at least one record");
        (seq, records, replies)
    }

    /// A crash: the synced image stays; each write made since survives with chance
    /// `survives_ppm` in a million, and a survivor is torn with chance `torn_ppm`.
    pub fn crash(&mut self, rng: &mut Xoshiro256PlusPlus, survives_ppm: u64, torn_ppm: u64) {
        self.wal = None;
        self.in_flight = None;
        self.unsynced.clear();
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

    /// Reopens the log after a crash and returns the records it recovered, in order.
    ///
    /// # Panics
    /// If recovery fails or returns a record no replica writes: both would be bugs, since the
    /// simulated disk only loses or tears unsynced writes.
    pub fn recover(&mut self) -> Vec<Record> {
        let (wal, _recovery) =
            Wal::open(self.backend.clone(), options()).expect("recovery after a crash succeeds");
        // Damage the WAL reports as possibly synced comes here only from a sync that had not
        // completed (the simulated disk flips no bits), so nothing in it was acknowledged.
        let records = wal
            .iter_from(wal.first_position())
            .map(|item| {
                let (_, record) = item.expect("recovered records read back");
                log_record::decode(&record).expect("the log holds only replica records")
            })
            .collect();
        self.wal = Some(wal);
        records
    }
}

impl Default for SimDisk {
    fn default() -> SimDisk {
        SimDisk::new()
    }
}
