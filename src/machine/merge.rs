//! One total order out of the shards' logs (issue #5, ARCHITECTURE.md, "Two apply modes"): slot `i`
//! of shard `k` is global position `i · S + k`, and the merge hands out committed batches in global
//! position order. Each shard's committed runs arrive in its slot order; no-ops (holes filled and
//! skips) take their positions without producing anything. A shard that has not reached a position
//! holds the merge there, which is why an idle shard's leader commits skips.
//!
//! Pure: no I/O, no clock. The runtime feeds it from each shard's commits; the simulator can
//! feed it too.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::core::{Slot, Value};

/// A batch in the total order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedBatch {
    /// Its global position: `slot · shards + shard`.
    pub position: u64,
    /// The shard.
    pub shard: u16,
    /// The slot in that shard's log.
    pub slot: Slot,
    /// The batch.
    pub batch: Bytes,
}

/// A run a shard handed over out of its own order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// No such shard.
    #[error("shard {shard} does not exist (there are {shards})")]
    UnknownShard {
        /// The shard given.
        shard: u16,
        /// Shards in the merge.
        shards: u16,
    },
    /// The run does not start where the shard's previous one ended.
    #[error("shard {shard}: run starts at slot {got}, expected slot {expected}")]
    OutOfOrder {
        /// The shard.
        shard: u16,
        /// Where the run starts.
        got: u64,
        /// Where it should start.
        expected: u64,
    },
    /// A run of zero slots, or a batch over more than one slot.
    #[error("shard {shard}: a run of {count} slots holding {what}")]
    BadRun {
        /// The shard.
        shard: u16,
        /// Its length.
        count: u64,
        /// What it holds.
        what: &'static str,
    },
}

/// Committed runs of one shard not yet merged.
#[derive(Debug, Default)]
struct ShardQueue {
    /// `(first slot, count, batch)`; `None` for no-ops.
    runs: VecDeque<(u64, u64, Option<Bytes>)>,
    /// The slot after the last one handed over.
    end: u64,
}

/// Merges the committed logs of every shard into global position order.
#[derive(Debug)]
pub struct Merge {
    shards: u16,
    queues: Vec<ShardQueue>,
    /// The next global position to hand out.
    next: u64,
}

impl Merge {
    /// A merge of `shards` shards starting at global position `from` (a subscriber resuming
    /// from a position feeds each shard from the slot holding or following it).
    ///
    /// # Panics
    /// `shards` is zero.
    #[must_use]
    pub fn new(shards: u16, from: u64) -> Merge {
        assert!(shards > 0, "a merge needs a shard");
        let shards_wide = u64::from(shards);
        let queues = (0..shards_wide)
            .map(|shard| {
                // The first slot of this shard at or after `from`.
                let end = from / shards_wide + u64::from(from % shards_wide > shard);
                ShardQueue { runs: VecDeque::new(), end }
            })
            .collect();
        Merge { shards, queues, next: from }
    }

    /// The next global position the merge will hand out (or skip).
    #[must_use]
    pub fn next_position(&self) -> u64 {
        self.next
    }

    /// The slot shard `shard` must hand over next.
    #[must_use]
    pub fn expected_slot(&self, shard: u16) -> Option<Slot> {
        self.queues.get(usize::from(shard)).map(|queue| Slot(queue.end))
    }

    /// Hands over shard `shard`'s committed run: `count` slots from `first_slot`, a batch (one
    /// slot) or no-ops (any number). Runs must come in slot order, without gaps.
    ///
    /// # Errors
    /// A run out of order, malformed, or for a shard that does not exist; nothing changes.
    pub fn push(
        &mut self,
        shard: u16,
        first_slot: Slot,
        count: u64,
        value: &Value,
    ) -> Result<(), MergeError> {
        let shards = self.shards;
        let queue = self
            .queues
            .get_mut(usize::from(shard))
            .ok_or(MergeError::UnknownShard { shard, shards })?;
        let batch = match value {
            Value::Batch(_) if count != 1 => {
                return Err(MergeError::BadRun { shard, count, what: "a batch" });
            }
            Value::Noop if count == 0 => {
                return Err(MergeError::BadRun { shard, count, what: "no-ops" });
            }
            Value::Batch(bytes) => Some(bytes.clone()),
            Value::Noop => None,
        };
        // A run may begin before where this merge started (a resumed subscriber): the part
        // before is dropped; one that begins after the expected slot leaves a gap.
        let run_end = first_slot.0.saturating_add(count);
        if first_slot.0 > queue.end {
            return Err(MergeError::OutOfOrder { shard, got: first_slot.0, expected: queue.end });
        }
        if run_end <= queue.end {
            return Ok(());
        }
        let start = queue.end.max(first_slot.0);
        queue.runs.push_back((start, run_end - start, batch));
        queue.end = run_end;
        Ok(())
    }

    /// The next batch in global order, if every position before it is known; no-ops are
    /// passed over.
    pub fn pop(&mut self) -> Option<MergedBatch> {
        let shards = u64::from(self.shards);
        loop {
            let shard = (self.next % shards) as usize;
            let slot = self.next / shards;
            let queue = &mut self.queues[shard];
            let (first, count, batch) = queue.runs.front_mut()?;
            debug_assert!(*first == slot, "shard {shard}'s next run starts at {first}, not {slot}");
            let position = self.next;
            self.next += 1;
            let batch = if *count == 1 {
                let (_, _, batch) = queue.runs.pop_front().expect("a front run");
                batch
            } else {
                // A run of no-ops: the shard's next position is the run's next slot.
                *first += 1;
                *count -= 1;
                batch.clone()
            };
            if let Some(batch) = batch {
                return Some(MergedBatch {
                    position,
                    shard: shard as u16,
                    slot: Slot(slot),
                    batch,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn batch(tag: u64) -> Value {
        Value::Batch(Bytes::from(tag.to_le_bytes().to_vec()))
    }

    #[test]
    fn an_idle_shard_holds_the_merge_until_it_skips() {
        let mut merge = Merge::new(2, 0);
        merge.push(0, Slot(0), 1, &batch(1)).unwrap();
        merge.push(0, Slot(1), 1, &batch(2)).unwrap();
        // Position 0 (shard 0, slot 0) is out; position 1 waits for shard 1.
        assert_eq!(merge.pop().map(|b| b.position), Some(0));
        assert_eq!(merge.pop(), None);
        merge.push(1, Slot(0), 10, &Value::Noop).unwrap();
        let next = merge.pop().unwrap();
        assert_eq!((next.position, next.shard, next.slot), (2, 0, Slot(1)));
        assert_eq!(merge.pop(), None, "shard 0 has nothing at slot 2");
        assert_eq!(merge.next_position(), 4);
    }

    #[test]
    fn runs_out_of_order_or_malformed_are_refused() {
        let mut merge = Merge::new(2, 0);
        assert!(matches!(merge.push(0, Slot(3), 1, &batch(1)), Err(MergeError::OutOfOrder { .. })));
        assert!(matches!(merge.push(0, Slot(0), 2, &batch(1)), Err(MergeError::BadRun { .. })));
        assert!(matches!(merge.push(0, Slot(0), 0, &Value::Noop), Err(MergeError::BadRun { .. })));
        assert!(matches!(
            merge.push(2, Slot(0), 1, &batch(1)),
            Err(MergeError::UnknownShard { .. })
        ));
        assert_eq!(merge.expected_slot(0), Some(Slot(0)), "nothing changed");
    }

    #[test]
    fn a_resumed_merge_starts_at_its_position() {
        let mut merge = Merge::new(3, 7); // slot 2 of shard 1
        assert_eq!(merge.expected_slot(0), Some(Slot(3)));
        assert_eq!(merge.expected_slot(1), Some(Slot(2)));
        assert_eq!(merge.expected_slot(2), Some(Slot(2)));
        merge.push(1, Slot(0), 5, &Value::Noop).unwrap(); // slots 0..5, the part before 2 dropped
        merge.push(2, Slot(2), 1, &batch(9)).unwrap();
        assert_eq!(merge.pop().map(|b| (b.position, b.shard)), Some((8, 2)));
    }

    /// One shard's log: each slot a batch (tagged with its shard and slot) or part of a
    /// no-op run.
    fn shard_log(shard: u16) -> impl Strategy<Value = Vec<(u64, u64, Value)>> {
        prop::collection::vec((any::<bool>(), 1u64..6), 0..30).prop_map(move |runs| {
            let mut slot = 0;
            let mut log = Vec::new();
            for (is_batch, length) in runs {
                if is_batch {
                    log.push((slot, 1, batch((u64::from(shard) << 32) | slot)));
                    slot += 1;
                } else {
                    log.push((slot, length, Value::Noop));
                    slot += length;
                }
            }
            log
        })
    }

    proptest! {
        /// Whatever the interleaving of the shards' runs, the merge hands out exactly the
        /// batches whose every earlier position is known, once each, in global order.
        #[test]
        fn merged_order_is_global_position_order(
            shard_a in shard_log(0),
            shard_b in shard_log(1),
            shard_c in shard_log(2),
            interleaving in prop::collection::vec(0usize..3, 0..120),
        ) {
            let logs = [shard_a, shard_b, shard_c];
            let mut merge = Merge::new(3, 0);
            let mut fed = [0usize; 3];
            let mut out = Vec::new();
            let feed = |merge: &mut Merge, shard: usize, fed: &mut [usize; 3]| {
                if let Some((slot, count, value)) = logs[shard].get(fed[shard]) {
                    merge.push(shard as u16, Slot(*slot), *count, value).unwrap();
                    fed[shard] += 1;
                }
            };
            for shard in interleaving {
                feed(&mut merge, shard, &mut fed);
                while let Some(batch) = merge.pop() {
                    out.push(batch);
                }
            }
            for shard in 0..3 {
                while fed[shard] < logs[shard].len() {
                    feed(&mut merge, shard, &mut fed);
                }
            }
            while let Some(batch) = merge.pop() {
                out.push(batch);
            }
            // Expected: every batch whose position lies below the first position some shard
            // has not reached, sorted by position.
            let reached: Vec<u64> = logs
                .iter()
                .map(|log| log.last().map_or(0, |(slot, count, _)| slot + count))
                .collect();
            let horizon = (0..3u64).map(|shard| reached[shard as usize] * 3 + shard).min().unwrap();
            let mut expected: Vec<(u64, Bytes)> = Vec::new();
            for (shard, log) in logs.iter().enumerate() {
                for (slot, _, value) in log {
                    if let Value::Batch(bytes) = value {
                        let position = slot * 3 + shard as u64;
                        if position < horizon {
                            expected.push((position, bytes.clone()));
                        }
                    }
                }
            }
            expected.sort_by_key(|(position, _)| *position);
            let got: Vec<(u64, Bytes)> = out.into_iter().map(|b| (b.position, b.batch)).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
