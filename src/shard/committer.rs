//! Where a shard's committed runs go: its state machine (through the exactly-once applier), or
//! onward to the node's one applier in total-order mode.

use crate::core::{Slot, Value};
use crate::machine::total_order::Committed;
use crate::machine::{AppliedCommand, Applier, StateMachine};

use super::{Hooks, ShardError};

/// Where a shard's committed runs go: its state machine, or onward ([`ApplyTo::Forward`]).
pub(super) struct Committer<S: StateMachine> {
    pub(super) applier: Applier<S>,
    pub(super) replies: Vec<AppliedCommand<S::Reply>>,
    /// Batches committed (no-ops not counted).
    pub(super) committed_batches: u64,
    /// Total-order apply: committed runs wait here for the node's one state machine instead
    /// of being applied to this shard's.
    pub(super) forwarded: Option<Vec<Committed>>,
    /// The last slot the state machine held when the shard opened, if it persists itself
    /// ([`StateMachine::persisted_slot`]): batches up to it only go through the session
    /// table. `None` once the machine is replaced by a snapshot's.
    pub(super) persisted: Option<Slot>,
    /// Batches the machine already held, not applied again.
    pub(super) skipped_batches: u64,
    /// This shard's number and the node's count of shards: slot `s` is global position
    /// `s · shards + shard`.
    place: (u64, u64),
}

impl<S: StateMachine> Committer<S> {
    /// Applies to `applier`'s machine, or with `forward` hands the runs on; `persisted`: the
    /// slot the machine already holds ([`StateMachine::persisted_slot`]).
    pub(super) fn new(
        applier: Applier<S>,
        forward: bool,
        persisted: Option<Slot>,
        place: (u64, u64),
    ) -> Committer<S> {
        Committer {
            applier,
            replies: Vec::new(),
            committed_batches: 0,
            forwarded: forward.then(Vec::new),
            persisted,
            skipped_batches: 0,
            place,
        }
    }

    /// Applies a committed run here, or hands it on. `replies`: keep the outcomes of its
    /// commands for the clients waiting on them (none wait for runs replayed at start-up).
    pub(super) fn commit(
        &mut self,
        first_slot: Slot,
        count: u64,
        value: Value,
        replies: bool,
        hooks: &mut impl Hooks,
    ) -> Result<(), ShardError> {
        hooks.committed(first_slot, count, &value);
        self.committed_batches += u64::from(value.is_batch());
        if let Some(forwarded) = &mut self.forwarded {
            forwarded.push(Committed { first_slot, count, value });
            return Ok(());
        }
        let Value::Batch(bytes) = value else { return Ok(()) };
        if self.persisted.is_some_and(|persisted| first_slot <= persisted) {
            self.skipped_batches += 1;
            return Ok(self.applier.skip_batch(&bytes)?);
        }
        let (out, applier) = (&mut self.replies, &mut self.applier);
        let position = first_slot.0 * self.place.1 + self.place.0;
        let mut index = 0;
        // A state machine that panics stops the shard (and the node) half-way through a
        // batch: say which one, so that the operator can find the command.
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            applier.apply_batch(first_slot, position, &bytes, |id, outcome| {
                let command = AppliedCommand { id, slot: first_slot, index, outcome };
                hooks.applied(&command);
                if replies {
                    out.push(command);
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
