//! A simulated disk for one shard replica: records as written and as synced. A crash keeps the
//! synced records and, at random, a prefix of the unsynced ones; the write after that prefix may
//! be torn, which the WAL's checksum detects, so recovery drops it (DESIGN.md §4).

use rand_core::RngCore;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::core::{Message, NodeId, PersistSeq, Record};

/// One written record and the reply it holds back.
#[derive(Clone, Debug)]
struct Written {
    seq: PersistSeq,
    record: Record,
    then_send: Option<(NodeId, Message)>,
}

/// The disk of one shard replica.
#[derive(Debug, Default)]
pub struct SimDisk {
    /// Records that survive any crash, in write order.
    durable: Vec<Record>,
    /// Written since the last sync began or completed, in order.
    unsynced: Vec<Written>,
    /// How many of `unsynced` the sync under way covers; zero if none is under way.
    syncing: usize,
}

impl SimDisk {
    /// Every record that would survive a crash now, in order.
    pub fn durable(&self) -> &[Record] {
        &self.durable
    }

    /// Writes a record (not yet durable).
    pub fn write(&mut self, seq: PersistSeq, record: Record, then_send: Option<(NodeId, Message)>) {
        self.unsynced.push(Written { seq, record, then_send });
    }

    /// Starts a sync of everything written so far, unless one is under way or nothing waits.
    /// Returns true if a sync started (the caller schedules its completion).
    pub fn maybe_start_sync(&mut self) -> bool {
        if self.syncing > 0 || self.unsynced.is_empty() {
            return false;
        }
        self.syncing = self.unsynced.len();
        true
    }

    /// The sync under way completed: its records are durable. Returns the highest persist
    /// sequence now durable, the records that became durable, and the replies they held back.
    pub fn complete_sync(&mut self) -> (PersistSeq, Vec<Record>, Vec<(NodeId, Message)>) {
        assert!(self.syncing > 0, "no sync under way");
        let done: Vec<Written> = self.unsynced.drain(..self.syncing).collect();
        self.syncing = 0;
        let seq =
            done.last().map(|written| written.seq).expect("a sync covers at least one record");
        let mut records = Vec::with_capacity(done.len());
        let mut replies = Vec::new();
        for written in done {
            records.push(written.record.clone());
            self.durable.push(written.record);
            replies.extend(written.then_send);
        }
        (seq, records, replies)
    }

    /// A crash: the synced records stay; a random prefix of the rest survives, each record with
    /// chance `survives_ppm` in a million, stopping at the first that does not (a torn or lost
    /// write ends what recovery can read). Returns the unsynced records that survived.
    pub fn crash(&mut self, rng: &mut Xoshiro256PlusPlus, survives_ppm: u64) -> Vec<Record> {
        let mut survivors = Vec::new();
        for written in self.unsynced.drain(..) {
            if rng.next_u64() % 1_000_000 >= survives_ppm {
                break;
            }
            survivors.push(written.record.clone());
            self.durable.push(written.record);
        }
        self.unsynced.clear();
        self.syncing = 0;
        survivors
    }
}
