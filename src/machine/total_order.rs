//! Total-order apply (issue #5, apply mode `total`): one state machine applies every shard's
//! committed batches in global position order, so a command sees the effect of every command
//! before it in the one log, whatever shard carried it. The default mode applies each shard's
//! slots to its own state machine and never waits for the others; this one waits for the
//! merge (which idle shards' skips keep moving).
//!
//! Pure: the runtime feeds commits in from each shard and carries the outcomes back to the
//! shard whose client waits.

use crate::core::{Slot, Value};
use crate::machine::merge::{Merge, MergeError, MergedBatch};
use crate::machine::{AppliedCommand, Applier, SessionLimits, StateMachine};

/// A shard's committed run, as it leaves the shard for the total-order applier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The first slot.
    pub first_slot: Slot,
    /// How many slots (a batch is one).
    pub count: u64,
    /// A batch or a no-op.
    pub value: Value,
}

/// Applies the merged order of every shard to one state machine.
pub struct TotalApplier<S: StateMachine> {
    merge: Merge,
    applier: Applier<S>,
    /// Per shard, the commands it carried that were applied (not as duplicates).
    applied_by_shard: Vec<u64>,
}

impl<S: StateMachine> TotalApplier<S> {
    /// An applier over `shards` shards, from global position 0.
    #[must_use]
    pub fn new(shards: u16, machine: S, sessions: SessionLimits) -> TotalApplier<S> {
        TotalApplier {
            merge: Merge::new(shards, 0),
            applier: Applier::new(machine, sessions),
            applied_by_shard: vec![0; usize::from(shards)],
        }
    }

    /// The state machine.
    #[must_use]
    pub fn machine(&self) -> &S {
        self.applier.machine()
    }

    /// Commands applied so far.
    #[must_use]
    pub fn applied_commands(&self) -> u64 {
        self.applier.applied_commands()
    }

    /// Sessions held by the one table.
    #[must_use]
    pub fn sessions(&self) -> usize {
        self.applier.sessions()
    }

    /// The one table's session limits.
    #[must_use]
    pub fn session_limits(&self) -> SessionLimits {
        self.applier.limits()
    }

    /// Commands carried by `shard` that were applied so far.
    #[must_use]
    pub fn applied_by_shard(&self, shard: u16) -> u64 {
        self.applied_by_shard.get(usize::from(shard)).copied().unwrap_or(0)
    }

    /// The next global position the merge will apply.
    #[must_use]
    pub fn next_position(&self) -> u64 {
        self.merge.next_position()
    }

    /// Takes shard `shard`'s committed run and applies whatever it lets through, in global
    /// order; each outcome goes to `on_applied` with the shard that carried the command.
    ///
    /// # Errors
    /// A run out of order (a bug upstream), or a batch that does not decode; nothing of the
    /// run was applied.
    pub fn push(
        &mut self,
        shard: u16,
        committed: &Committed,
        on_applied: impl FnMut(u16, AppliedCommand<S::Reply>),
    ) -> Result<(), TotalOrderError> {
        self.push_observed(shard, committed, |_| {}, on_applied)
    }

    /// [`TotalApplier::push`], showing `on_merged` each batch in global order before it is
    /// applied (the simulator checks the merged order this way).
    ///
    /// # Errors
    /// See [`TotalApplier::push`].
    pub fn push_observed(
        &mut self,
        shard: u16,
        committed: &Committed,
        mut on_merged: impl FnMut(&MergedBatch),
        mut on_applied: impl FnMut(u16, AppliedCommand<S::Reply>),
    ) -> Result<(), TotalOrderError> {
        self.merge.push(shard, committed.first_slot, committed.count, &committed.value)?;
        while let Some(merged) = self.merge.pop() {
            on_merged(&merged);
            let mut index = 0;
            let before = self.applier.applied_commands();
            let result = self.applier.apply_batch(
                merged.slot,
                merged.position,
                &merged.batch,
                |id, outcome| {
                    let applied = AppliedCommand { id, slot: merged.slot, index, outcome };
                    on_applied(merged.shard, applied);
                    index += 1;
                },
            );
            self.applied_by_shard[usize::from(merged.shard)] +=
                self.applier.applied_commands() - before;
            result?;
        }
        Ok(())
    }
}

/// Why the total-order applier stopped.
#[derive(Debug, thiserror::Error)]
pub enum TotalOrderError {
    /// A shard handed over a run out of its order.
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// A committed batch did not decode.
    #[error(transparent)]
    BadBatch(#[from] crate::core::MalformedBatch),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{BatchBuilder, RequestId};
    use crate::machine::{
        Applier, KvCommand, KvStore, Outcome, REGISTER_ENTROPY_BYTES, register_request,
        seal_register,
    };

    /// The session id an applier gives the register-session command of `nonce`.
    fn session(nonce: u8) -> u64 {
        let (register, payload) = register_request([nonce; 16]);
        let sealed = seal_register(&payload, [nonce; REGISTER_ENTROPY_BYTES]).unwrap();
        let mut builder = BatchBuilder::new(1 << 16);
        builder.push(register, &sealed);
        let mut scratch = Applier::new(KvStore::default(), SessionLimits::DEFAULT);
        let mut session = None;
        scratch
            .apply_batch(Slot(1), 1, &builder.take(), |_, outcome| {
                if let Outcome::Registered(id) = outcome {
                    session = Some(id);
                }
            })
            .unwrap();
        session.unwrap()
    }

    /// A batch that registers the session of `nonce`, then runs `commands` under it.
    fn batch(nonce: u8, commands: &[KvCommand]) -> Value {
        let (register, payload) = register_request([nonce; 16]);
        let sealed = seal_register(&payload, [nonce; REGISTER_ENTROPY_BYTES]).unwrap();
        let mut builder = BatchBuilder::new(1 << 16);
        builder.push(register, &sealed);
        let client = session(nonce);
        for (sequence, command) in commands.iter().enumerate() {
            builder.push(RequestId { client, sequence: sequence as u64 + 1 }, &command.encode());
        }
        Value::Batch(builder.take())
    }

    fn put(key: &str, value: &str) -> KvCommand {
        KvCommand::Put { key: key.into(), value: value.into() }
    }

    #[test]
    fn every_interleaving_of_the_shards_applies_the_same_order() {
        // Shard 0 slot 0 (position 0) puts x=a; shard 1 slot 0 (position 1) puts x=b; shard 0
        // slot 1 (position 2) puts x=c. Whatever order the shards deliver in, one order wins.
        let runs = [
            (0u16, Committed { first_slot: Slot(0), count: 1, value: batch(1, &[put("x", "a")]) }),
            (1, Committed { first_slot: Slot(0), count: 1, value: batch(2, &[put("x", "b")]) }),
            (0, Committed { first_slot: Slot(1), count: 1, value: batch(3, &[put("x", "c")]) }),
            (1, Committed { first_slot: Slot(1), count: 3, value: Value::Noop }),
        ];
        let mut summaries = Vec::new();
        for order in [[0, 1, 2, 3], [1, 3, 0, 2], [1, 0, 3, 2]] {
            let mut total =
                TotalApplier::new(2, KvStore::default(), SessionLimits::with_replies_max(16));
            let mut applied = Vec::new();
            for index in order {
                let (shard, run) = &runs[index];
                total
                    .push(*shard, run, |shard, command| applied.push((shard, command.id)))
                    .unwrap();
            }
            assert_eq!(total.next_position(), 4, "everything merged");
            let clients: Vec<(u16, u64)> = applied
                .iter()
                .filter(|(_, id)| id.client != RequestId::REGISTER)
                .map(|(s, id)| (*s, id.client))
                .collect();
            let expected = vec![(0, session(1)), (1, session(2)), (0, session(3))];
            assert_eq!(clients, expected, "global position order");
            assert_eq!(total.machine().get(b"x"), Some(&b"c"[..]), "the last put wins");
            summaries.push(total.machine().summary());
        }
        assert!(summaries.windows(2).all(|pair| pair[0] == pair[1]));
    }

    #[test]
    fn a_run_out_of_order_is_refused() {
        let mut total =
            TotalApplier::new(2, KvStore::default(), SessionLimits::with_replies_max(16));
        let late = Committed { first_slot: Slot(4), count: 1, value: batch(1, &[put("x", "a")]) };
        assert!(matches!(total.push(0, &late, |_, _| {}), Err(TotalOrderError::Merge(_))));
        assert_eq!(total.applied_commands(), 0);
    }
}
