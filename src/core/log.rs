//! The in-memory image of one replica's log: per slot, the value it accepted (and under which
//! ballot) and whether it knows the value is chosen. The durable image is the WAL; this one is
//! rebuilt from it on restart (protocol.md §4).
//!
//! Slots are stored densely from slot 0; skips are runs of no-ops, so one entry per slot stays
//! small (a ballot and a reference-counted batch).

use std::collections::VecDeque;

use super::batch::Value;
use super::message::{Record, SlotRun};
use super::types::{Ballot, Slot};

/// What one slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotEntry {
    /// The ballot of the last acceptance, or the ballot the value was learned with.
    pub ballot: Ballot,
    /// The value; `None` if nothing was accepted or learned here.
    pub value: Option<Value>,
    /// True once this replica knows the value is chosen.
    pub chosen: bool,
}

const EMPTY: SlotEntry = SlotEntry { ballot: Ballot::ZERO, value: None, chosen: false };

/// The bytes of the batch a slot holds (0 for a no-op or nothing).
fn value_bytes(entry: &SlotEntry) -> u64 {
    entry.value.as_ref().map_or(0, |value| value.len_bytes() as u64)
}

/// The slots of one replica, from its base (slot 0 until it is compacted) up to the highest
/// slot it has heard of. Slots below the base were chosen and committed here and are
/// forgotten: what is said of them changes nothing (the WAL still has them).
#[derive(Clone, Debug, Default)]
pub struct Log {
    entries: VecDeque<SlotEntry>,
    /// The first slot held.
    base: u64,
}

impl Log {
    /// An empty log whose slots below `base` count as compacted: a scratch image of part of a
    /// log, rebuilt from its records (see `shard::Journal::archived_runs`).
    #[must_use]
    pub fn starting_at(base: Slot) -> Log {
        Log { entries: VecDeque::new(), base: base.0 }
    }

    /// The first slot at or above `from_slot` (and the base) not known chosen.
    #[must_use]
    pub fn first_unchosen(&self, from_slot: Slot) -> Slot {
        let start = from_slot.max(self.base());
        let index = self.index(start).unwrap_or(0);
        let unchosen = self.entries.iter().skip(index).position(|entry| !entry.chosen);
        match unchosen {
            Some(offset) => start.plus(offset as u64),
            None => start.max(self.end_slot()),
        }
    }

    /// The slot after the highest one stored.
    #[must_use]
    pub fn end_slot(&self) -> Slot {
        Slot(self.base + self.entries.len() as u64)
    }

    /// The first slot held: everything below it was committed and compacted away.
    #[must_use]
    pub fn base(&self) -> Slot {
        Slot(self.base)
    }

    /// Forgets the slots below `slot` (at most up to the end of the log). They must all be
    /// known chosen: only the committed prefix can be compacted.
    ///
    /// # Panics
    /// A slot below `slot` is not known chosen.
    pub fn compact_below(&mut self, slot: Slot) -> u64 {
        let drop = slot.0.saturating_sub(self.base).min(self.entries.len() as u64) as usize;
        assert!(
            self.entries.iter().take(drop).all(|entry| entry.chosen),
            "compacting below {} would forget a slot not known chosen",
            slot.0
        );
        let bytes = self.entries.drain(..drop).map(|entry| value_bytes(&entry)).sum();
        self.base += drop as u64;
        // Give memory back once most of the buffer is empty.
        if self.entries.capacity() > 4 * self.entries.len().max(1024) {
            self.entries.shrink_to(2 * self.entries.len());
        }
        bytes
    }

    /// The slot after the shortest prefix of the log (from the base, below `end_slot`) whose
    /// batches hold at least `bytes` bytes, or `end_slot`.
    #[must_use]
    pub fn slot_after_bytes(&self, bytes: u64, end_slot: Slot) -> Slot {
        let mut sum = 0;
        let limit = end_slot.0.saturating_sub(self.base).min(self.entries.len() as u64) as usize;
        for (index, entry) in self.entries.iter().take(limit).enumerate() {
            sum += value_bytes(entry);
            if sum >= bytes {
                return Slot(self.base + index as u64 + 1);
            }
        }
        end_slot.max(self.base())
    }

    /// Forgets every slot below `slot`, chosen here or not: a snapshot taken elsewhere at
    /// `slot` stands for them (it applied the values chosen there). Later slots stay.
    pub fn skip_below(&mut self, slot: Slot) {
        let drop = slot.0.saturating_sub(self.base);
        let held = self.entries.len() as u64;
        self.entries.drain(..drop.min(held) as usize);
        self.base = self.base.max(slot.0);
    }

    /// Where `slot` is in `entries`, if at or above the base.
    fn index(&self, slot: Slot) -> Option<usize> {
        slot.0.checked_sub(self.base).and_then(|offset| usize::try_from(offset).ok())
    }

    /// Offers `bytes`, a copy of `original` held elsewhere (the WAL's mapping): if the slot
    /// still holds `original` itself (the same buffer, not merely equal bytes, so no compare
    /// is needed), it keeps `bytes` instead and its own copy is freed. Nothing observable
    /// changes. Returns whether it swapped.
    pub fn share_batch(
        &mut self,
        slot: Slot,
        bytes: bytes::Bytes,
        original: &bytes::Bytes,
    ) -> bool {
        let Some(entry) = self.index(slot).and_then(|i| self.entries.get_mut(i)) else {
            return false;
        };
        match &mut entry.value {
            Some(Value::Batch(held))
                if held.as_ptr() == original.as_ptr() && held.len() == original.len() =>
            {
                debug_assert_eq!(*held, bytes, "a shared copy differs from its original");
                *held = bytes;
                true
            }
            _ => false,
        }
    }

    /// The entry of `slot`, if the log reaches it.
    #[must_use]
    pub fn get(&self, slot: Slot) -> Option<&SlotEntry> {
        self.index(slot).and_then(|index| self.entries.get(index))
    }

    /// The entry of `slot`, grown to; `None` below the base.
    fn entry_mut(&mut self, slot: Slot) -> Option<&mut SlotEntry> {
        let index = self.index(slot)?;
        if index >= self.entries.len() {
            self.entries.resize(index + 1, EMPTY);
        }
        Some(&mut self.entries[index])
    }

    /// Records the acceptance of `value` in `count` slots from `first_slot` under `ballot`.
    /// A slot already known chosen keeps its value: a later ballot proposes the same one
    /// (protocol.md, I2, which the caller asserts), and an older one arriving late does not
    /// change what was chosen.
    pub fn accept(&mut self, first_slot: Slot, count: u64, ballot: Ballot, value: &Value) {
        for offset in 0..count {
            let Some(entry) = self.entry_mut(first_slot.plus(offset)) else { continue };
            assert!(
                entry.ballot <= ballot || entry.chosen,
                "accept under {ballot} after {}",
                entry.ballot
            );
            if entry.chosen {
                // The chosen value stays; a late accept from an older ballot must not lower the
                // ballot it is known under.
                entry.ballot = entry.ballot.max(ballot);
            } else {
                entry.ballot = ballot;
                entry.value = Some(value.clone());
            }
        }
    }

    /// Marks `count` slots from `first_slot` chosen with `value`.
    pub fn choose(&mut self, first_slot: Slot, count: u64, ballot: Ballot, value: &Value) {
        for offset in 0..count {
            let Some(entry) = self.entry_mut(first_slot.plus(offset)) else { continue };
            if entry.chosen {
                continue;
            }
            entry.ballot = ballot;
            // Keep an equal value already held: it may be the copy shared with the WAL's
            // mapping, and replacing it would bring the heap copy back. (The same buffer is
            // equal without comparing the bytes: a batch can be a megabyte.)
            let held = entry.value.as_ref();
            if !held.is_some_and(|held| held.same_buffer(value) || held == value) {
                entry.value = Some(value.clone());
            }
            entry.chosen = true;
        }
    }

    /// Marks `slot` chosen with the value it holds, known under `ballot`; false (nothing
    /// changed) if it holds none.
    pub fn mark_chosen(&mut self, slot: Slot, ballot: Ballot) -> bool {
        match self.entry_mut(slot) {
            Some(entry) if entry.value.is_some() => {
                if !entry.chosen {
                    entry.ballot = ballot;
                    entry.chosen = true;
                }
                true
            }
            _ => false,
        }
    }

    /// Applies what a durable record says of the slots, as a restart does (protocol.md §4);
    /// a promise says nothing of them. The one place these rules live: a replica rebuilding
    /// itself and a read of compacted slots from the WAL both replay through it.
    pub fn replay(&mut self, record: &Record) {
        match record {
            Record::Promised { .. } => {}
            Record::Accepted { ballot, first_slot, count, value } => {
                self.accept(*first_slot, *count, *ballot, value);
            }
            Record::Chosen { first_slot, count, value } => {
                self.choose(*first_slot, *count, Ballot::ZERO, value);
            }
            Record::Committed { commit_index } => self.choose_prefix(*commit_index),
        }
    }

    /// Marks every slot below `end_slot` chosen with the value it holds, as a durable
    /// `Record::Committed` says. Stops at the first slot without a value: that cannot follow from
    /// records written in order, so it is left for catch-up rather than trusted.
    pub fn choose_prefix(&mut self, end_slot: Slot) {
        let end = self.index(end_slot).unwrap_or(0).min(self.entries.len());
        for entry in self.entries.iter_mut().take(end) {
            if entry.value.is_none() {
                return;
            }
            entry.chosen = true;
        }
    }

    /// The runs of slots from `from_slot` (or the base, if above it) on that hold a value,
    /// no-op neighbours under one ballot merged, at most `runs_max` of them. Returns the runs
    /// and the slot to continue from, if the limit cut the report short.
    #[must_use]
    pub fn runs_from(
        &self,
        from_slot: Slot,
        end_slot: Slot,
        runs_max: usize,
    ) -> (Vec<SlotRun>, Option<Slot>) {
        let mut runs: Vec<SlotRun> = Vec::new();
        let end_slot = end_slot.min(self.end_slot());
        let mut slot = from_slot.max(self.base());
        while slot < end_slot {
            let entry = self.get(slot).expect("slot below end_slot");
            if let Some(value) = &entry.value {
                let merged = runs.last_mut().is_some_and(|last| {
                    let joins = last.end_slot() == slot
                        && last.value.is_noop()
                        && value.is_noop()
                        && last.ballot == entry.ballot
                        && last.chosen == entry.chosen;
                    if joins {
                        last.count += 1;
                    }
                    joins
                });
                if !merged {
                    if runs.len() == runs_max {
                        return (runs, Some(slot));
                    }
                    runs.push(SlotRun {
                        first_slot: slot,
                        count: 1,
                        ballot: entry.ballot,
                        value: value.clone(),
                        chosen: entry.chosen,
                    });
                }
            }
            slot = slot.plus(1);
        }
        (runs, None)
    }

    /// Checks the log's invariants over slots from `from_slot` on (the simulator checks the
    /// uncommitted tail after every step and the whole log at the end of a run).
    pub fn check_invariants(&self, from_slot: Slot, commit_index: Slot, promised: Ballot) {
        let from = self.index(from_slot).unwrap_or(0).min(self.entries.len());
        for (offset, entry) in self.entries.iter().enumerate().skip(from) {
            let index = self.base + offset as u64;
            if !entry.chosen {
                assert!(
                    entry.ballot <= promised,
                    "slot {index}: accepted {} above promised {promised}",
                    entry.ballot
                );
            }
            if index < commit_index.0 {
                assert!(
                    entry.chosen,
                    "slot {index} below commit index {} not chosen",
                    commit_index.0
                );
                assert!(entry.value.is_some(), "slot {index} chosen without a value");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::NodeId;

    #[derive(Clone, Debug)]
    enum Op {
        Accept { slot: u64, count: u64, round: u64, noop: bool },
        Choose { slot: u64, count: u64, noop: bool },
        Compact,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..40u64, 1..4u64, 1..5u64, any::<bool>())
                .prop_map(|(slot, count, round, noop)| Op::Accept { slot, count, round, noop }),
            (0..40u64, 1..4u64, any::<bool>()).prop_map(|(slot, count, noop)| Op::Choose {
                slot,
                count,
                noop
            }),
            Just(Op::Compact),
        ]
    }

    fn value(slot: u64, noop: bool) -> Value {
        if noop {
            Value::Noop
        } else {
            Value::Batch(bytes::Bytes::from(slot.to_le_bytes().to_vec()))
        }
    }

    /// The end of the prefix of chosen slots.
    fn chosen_prefix(log: &Log) -> Slot {
        let mut slot = log.base();
        while log.get(slot).is_some_and(|entry| entry.chosen) {
            slot = slot.plus(1);
        }
        slot
    }

    proptest! {
        /// A compacted log answers exactly as the whole log does at and above its base, and
        /// whatever is said of slots below the base changes nothing.
        #[test]
        fn a_compacted_log_answers_like_the_whole_log_above_its_base(
            ops in prop::collection::vec(op(), 0..80),
        ) {
            let mut whole = Log::default();
            let mut compacted = Log::default();
            let mut round_max = 0;
            for op in ops {
                match op {
                    Op::Accept { slot, count, round, noop } => {
                        // Ballots only rise, as a replica's promise does.
                        round_max = round_max.max(round);
                        let count = if noop { count } else { 1 };
                        let ballot = Ballot::new(round_max, NodeId(1));
                        let value = value(slot, noop);
                        whole.accept(Slot(slot), count, ballot, &value);
                        compacted.accept(Slot(slot), count, ballot, &value);
                    }
                    Op::Choose { slot, count, noop } => {
                        let count = if noop { count } else { 1 };
                        let ballot = Ballot::new(round_max, NodeId(1));
                        whole.choose(Slot(slot), count, ballot, &value(slot, noop));
                        compacted.choose(Slot(slot), count, ballot, &value(slot, noop));
                    }
                    Op::Compact => {
                        compacted.compact_below(chosen_prefix(&compacted));
                    }
                }
            }
            prop_assert_eq!(compacted.end_slot(), whole.end_slot().max(compacted.base()));
            let base = compacted.base();
            for slot in base.0..whole.end_slot().0 + 2 {
                prop_assert_eq!(compacted.get(Slot(slot)), whole.get(Slot(slot)));
            }
            for slot in 0..base.0 {
                prop_assert!(compacted.get(Slot(slot)).is_none());
                prop_assert!(whole.get(Slot(slot)).is_some_and(|entry| entry.chosen));
            }
            let end = whole.end_slot().plus(1);
            prop_assert_eq!(compacted.runs_from(base, end, 3), whole.runs_from(base, end, 3));
            prop_assert_eq!(compacted.runs_from(Slot(0), end, 64).0, whole.runs_from(base, end, 64).0);
        }
    }

    #[test]
    #[should_panic(expected = "not known chosen")]
    fn compacting_an_unchosen_slot_is_refused() {
        let mut log = Log::default();
        log.accept(Slot(0), 1, Ballot::new(1, NodeId(1)), &Value::Noop);
        let _ = log.compact_below(Slot(1));
    }
}
