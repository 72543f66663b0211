//! The in-memory image of one replica's log: per slot, the value it accepted (and under which
//! ballot) and whether it knows the value is chosen. The durable image is the WAL; this one is
//! rebuilt from it on restart (protocol.md §4).
//!
//! Slots are stored densely from slot 0; skips are runs of no-ops, so one entry per slot stays
//! small (a ballot and a reference-counted batch).

use std::collections::VecDeque;

use super::batch::Value;
use super::message::SlotRun;
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

/// The slots of one replica, from slot 0 up to the highest slot it has heard of.
#[derive(Clone, Debug, Default)]
pub struct Log {
    entries: VecDeque<SlotEntry>,
}

impl Log {
    /// The slot after the highest one stored.
    #[must_use]
    pub fn end_slot(&self) -> Slot {
        Slot(self.entries.len() as u64)
    }

    /// Offers `bytes`, a copy of a slot's batch held elsewhere (the WAL's mapping): if the
    /// slot holds a batch with exactly these bytes, it keeps `bytes` instead and its own copy
    /// is freed. Nothing observable changes. Returns whether it swapped.
    pub fn share_batch(&mut self, slot: Slot, bytes: bytes::Bytes) -> bool {
        let Some(entry) = usize::try_from(slot.0).ok().and_then(|i| self.entries.get_mut(i)) else {
            return false;
        };
        match &mut entry.value {
            Some(Value::Batch(held)) if *held == bytes => {
                *held = bytes;
                true
            }
            _ => false,
        }
    }

    /// The entry of `slot`, if the log reaches it.
    #[must_use]
    pub fn get(&self, slot: Slot) -> Option<&SlotEntry> {
        usize::try_from(slot.0).ok().and_then(|index| self.entries.get(index))
    }

    fn entry_mut(&mut self, slot: Slot) -> &mut SlotEntry {
        let index = usize::try_from(slot.0).expect("slot fits usize");
        if index >= self.entries.len() {
            self.entries.resize(index + 1, EMPTY);
        }
        &mut self.entries[index]
    }

    /// Records the acceptance of `value` in `count` slots from `first_slot` under `ballot`.
    /// A slot already known chosen keeps its value: a later ballot proposes the same one
    /// (protocol.md, I2, which the caller asserts), and an older one arriving late does not
    /// change what was chosen.
    pub fn accept(&mut self, first_slot: Slot, count: u64, ballot: Ballot, value: &Value) {
        for offset in 0..count {
            let entry = self.entry_mut(first_slot.plus(offset));
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
            let entry = self.entry_mut(first_slot.plus(offset));
            if entry.chosen {
                continue;
            }
            entry.ballot = ballot;
            // Keep an equal value already held: it may be the copy shared with the WAL's
            // mapping, and replacing it would bring the heap copy back.
            if entry.value.as_ref() != Some(value) {
                entry.value = Some(value.clone());
            }
            entry.chosen = true;
        }
    }

    /// Marks every slot below `end_slot` chosen with the value it holds, as a durable
    /// `Record::Committed` says. Stops at the first slot without a value: that cannot follow from
    /// records written in order, so it is left for catch-up rather than trusted.
    pub fn choose_prefix(&mut self, end_slot: Slot) {
        let end = usize::try_from(end_slot.0).unwrap_or(usize::MAX).min(self.entries.len());
        for entry in self.entries.iter_mut().take(end) {
            if entry.value.is_none() {
                return;
            }
            entry.chosen = true;
        }
    }

    /// The runs of slots from `from_slot` on that hold a value, no-op neighbours under one ballot
    /// merged, at most `runs_max` of them. Returns the runs and the slot to continue from, if
    /// the limit cut the report short.
    #[must_use]
    pub fn runs_from(
        &self,
        from_slot: Slot,
        end_slot: Slot,
        runs_max: usize,
    ) -> (Vec<SlotRun>, Option<Slot>) {
        let mut runs: Vec<SlotRun> = Vec::new();
        let end_slot = end_slot.min(self.end_slot());
        let mut slot = from_slot;
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
        let from = usize::try_from(from_slot.0).unwrap_or(usize::MAX).min(self.entries.len());
        for (index, entry) in self.entries.iter().enumerate().skip(from) {
            if !entry.chosen {
                assert!(
                    entry.ballot <= promised,
                    "slot {index}: accepted {} above promised {promised}",
                    entry.ballot
                );
            }
            if (index as u64) < commit_index.0 {
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
