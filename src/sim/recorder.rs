//! The simulator's shard hooks: entropy drawn from the seed, and a record of what the shard
//! did, which the world hands to the checkers after each step (in the order it happened).

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::core::{Record, RequestId, Slot, Value};
use crate::machine::{AppliedCommand, Outcome};
use crate::shard::Hooks;

/// Something a shard did that a checker judges.
#[derive(Debug)]
pub enum Observed {
    /// A sync made these records durable.
    Durable(Vec<Record>),
    /// A record survived a crash (read back at start-up).
    Replayed(Record),
    /// A run of slots committed.
    Committed {
        /// Its first slot.
        first_slot: Slot,
        /// Its slots.
        count: u64,
        /// Its value.
        value: Value,
    },
    /// A command was applied (not a query, nor a duplicate).
    Applied(RequestId),
    /// A command named a session the shard does not hold.
    SessionExpired(RequestId),
    /// A peer's snapshot at this slot was installed.
    Installed(Slot),
    /// The replica finished its repair.
    Repaired,
    /// Compacted slots were read back from the log: this many messages.
    Archived(usize),
    /// Queries answered by the read index, without the log.
    ReadsAnswered(usize),
}

/// Seeded entropy and a list of what happened since the world last took it.
pub struct Recorder {
    rng: Xoshiro256PlusPlus,
    /// What happened, oldest first.
    pub events: Vec<Observed>,
}

impl Recorder {
    /// A recorder whose entropy comes from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Recorder {
        Recorder { rng: Xoshiro256PlusPlus::seed_from_u64(seed), events: Vec::new() }
    }
}

impl Hooks for Recorder {
    type Kept = Record;

    fn entropy(&mut self, out: &mut [u8]) -> bool {
        self.rng.fill_bytes(out);
        true
    }

    fn keep(&mut self, record: &Record) -> Record {
        record.clone()
    }

    fn durable(&mut self, kept: Vec<Record>) {
        self.events.push(Observed::Durable(kept));
    }

    fn replayed(&mut self, record: &Record) {
        self.events.push(Observed::Replayed(record.clone()));
    }

    fn committed(&mut self, first_slot: Slot, count: u64, value: &Value) {
        self.events.push(Observed::Committed { first_slot, count, value: value.clone() });
    }

    fn applied<R>(&mut self, command: &AppliedCommand<R>) {
        match command.outcome {
            // A query is answered, not applied: asked again, it is answered again.
            Outcome::Applied(_) if !command.id.is_query() => {
                self.events.push(Observed::Applied(command.id));
            }
            Outcome::SessionExpired => self.events.push(Observed::SessionExpired(command.id)),
            _ => {}
        }
    }

    fn installed(&mut self, slot: Slot) {
        self.events.push(Observed::Installed(slot));
    }

    fn repaired(&mut self) {
        self.events.push(Observed::Repaired);
    }

    fn archived(&mut self, messages: usize) {
        self.events.push(Observed::Archived(messages));
    }

    fn read_answered(&mut self, count: usize) {
        self.events.push(Observed::ReadsAnswered(count));
    }
}
