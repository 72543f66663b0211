//! What a shard asks of its surroundings, and tells them, beyond messages and replies. A node
//! runs its shards with [`OsHooks`]: the operating system's entropy, nothing watched. The
//! simulator runs the very same shard with seeded entropy and a recorder of what happened, so
//! that its checkers judge the code the node runs (docs/simulator.md).

use crate::core::{Record, Slot, Value};
use crate::machine::AppliedCommand;

/// A shard's entropy and its observers. Every observing method does nothing by default.
pub trait Hooks {
    /// What the log keeps of each record it appends until a sync makes it durable
    /// ([`Hooks::durable`] gets them back).
    type Kept;

    /// Fills `out` with entropy (a leader seals session ids with it, protocol.md §5.1).
    /// Returns false if there is none to be had.
    fn entropy(&mut self, out: &mut [u8]) -> bool;

    /// A record is appended to the log: what to keep of it until it is durable.
    fn keep(&mut self, record: &Record) -> Self::Kept;

    /// A sync made the records of these appends durable, in order.
    fn durable(&mut self, _kept: Vec<Self::Kept>) {}

    /// A record was read back from the log at start-up (it survived: the replica acts on it).
    fn replayed(&mut self, _record: &Record) {}

    /// A run of slots was committed, before it is applied or forwarded.
    fn committed(&mut self, _first_slot: Slot, _count: u64, _value: &Value) {}

    /// A committed command went through the applier (at start-up too, when no client waits).
    fn applied<R>(&mut self, _command: &AppliedCommand<R>) {}

    /// A peer's snapshot at `slot` is durable and the state machine goes on from it; the
    /// replica's commits resume after it.
    fn installed(&mut self, _slot: Slot) {}

    /// The replica finished its repair and votes again (protocol.md §3.9).
    fn repaired(&mut self) {}

    /// Compacted slots were read back from the log for a peer: `messages` went to it.
    fn archived(&mut self, _messages: usize) {}

    /// Queries were answered by the read index, without the log (protocol.md §5.3).
    fn read_answered(&mut self, _count: usize) {}
}

/// A node's hooks: entropy from the operating system, and nothing kept or watched.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsHooks;

impl Hooks for OsHooks {
    type Kept = ();

    fn entropy(&mut self, out: &mut [u8]) -> bool {
        getrandom::fill(out).is_ok()
    }

    fn keep(&mut self, _record: &Record) {}
}
