//! Linearizability of a key-value history, checked one key at a time (a history is
//! linearizable if and only if each key's is). Invariant I10 of `docs/protocol.md`.
//!
//! The search is Wing and Gong's, with the state memoized: since each client has at most one
//! request outstanding, a search state is how many of each client's operations are linearized,
//! plus the register's value. An operation may be linearized next only if no other pending
//! operation completed before it was invoked. An operation that never completed may take effect
//! at any point after its invocation, or never.
//!
//! One reduction keeps the search small under heavy contention: an operation that leaves the
//! value unchanged (a read, a failed compare-and-set) and may go next with a matching result is
//! linearized at once, without branching. Moving such an operation earlier in any linearization
//! keeps it valid: it changes no value, and being eligible means nothing pending had to precede
//! it.

use rustc_hash::FxHashSet;

/// An operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    /// Read the value.
    Get,
    /// Set the value.
    Put(u64),
    /// Remove the value.
    Delete,
    /// Set to `new` if the value is `expected`.
    CompareAndSet {
        /// The value required.
        expected: Option<u64>,
        /// The value to set.
        new: u64,
    },
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvResult {
    /// A read's value.
    Value(Option<u64>),
    /// A put or delete took effect.
    Done,
    /// A compare-and-set's outcome and the value it saw.
    CompareAndSet {
        /// True if it took effect.
        succeeded: bool,
        /// The value before.
        previous: Option<u64>,
    },
}

/// One client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client (sequential: its operations do not overlap).
    pub client: usize,
    /// What it asked.
    pub op: KvOp,
    /// When it was first sent.
    pub invoke_us: u64,
    /// When the reply arrived and what it said; `None` if it never did.
    pub complete: Option<(u64, KvResult)>,
}

/// Applies `op` to a register holding `value`: the new value and the result.
fn step(value: Option<u64>, op: &KvOp) -> (Option<u64>, KvResult) {
    match op {
        KvOp::Get => (value, KvResult::Value(value)),
        KvOp::Put(new) => (Some(*new), KvResult::Done),
        KvOp::Delete => (None, KvResult::Done),
        KvOp::CompareAndSet { expected, new } => {
            if value == *expected {
                (Some(*new), KvResult::CompareAndSet { succeeded: true, previous: value })
            } else {
                (value, KvResult::CompareAndSet { succeeded: false, previous: value })
            }
        }
    }
}

/// True if the operation leaves the value unchanged wherever its observed result can hold: a
/// read, or a compare-and-set seen to fail. (A delete or put is a write even where it happens to
/// change nothing: moved elsewhere it would.)
fn never_writes(operation: &Operation) -> bool {
    matches!(
        (&operation.op, &operation.complete),
        (KvOp::Get, _)
            | (
                KvOp::CompareAndSet { .. },
                Some((_, KvResult::CompareAndSet { succeeded: false, .. }))
            )
    )
}

/// Checks one key's history, starting from an absent value.
///
/// # Errors
/// A description of the history if no linearization exists.
pub fn check_key(operations: &[Operation]) -> Result<(), String> {
    let clients = operations.iter().map(|operation| operation.client + 1).max().unwrap_or(0);
    let mut per_client: Vec<Vec<&Operation>> = vec![Vec::new(); clients];
    for operation in operations {
        per_client[operation.client].push(operation);
    }
    for ops in &mut per_client {
        ops.sort_by_key(|operation| operation.invoke_us);
        for pair in ops.windows(2) {
            let finished = pair[0].complete.as_ref().map(|(at, _)| *at);
            if finished.is_none_or(|at| at > pair[1].invoke_us) {
                return Err(format!("client {} has overlapping operations", pair[0].client));
            }
        }
    }
    let completed: Vec<usize> = per_client
        .iter()
        .map(|ops| ops.iter().filter(|op| op.complete.is_some()).count())
        .collect();
    let complete_us = |op: &Operation| op.complete.as_ref().map_or(u64::MAX, |(at, _)| *at);

    type State = (Vec<u32>, Option<u64>);
    let deadline_of = |positions: &[u32]| {
        positions
            .iter()
            .enumerate()
            .filter_map(|(client, position)| per_client[client].get(*position as usize))
            .map(|op| complete_us(op))
            .min()
            .unwrap_or(u64::MAX)
    };
    // Linearizes every eligible operation that changes nothing, until none is left.
    let close_reads = |positions: &mut Vec<u32>, value: Option<u64>| loop {
        let deadline = deadline_of(positions);
        let read = (0..clients).find(|client| {
            per_client[*client].get(positions[*client] as usize).is_some_and(|op| {
                let (_, result) = step(value, &op.op);
                op.invoke_us <= deadline
                    && never_writes(op)
                    && op.complete.as_ref().is_none_or(|(_, observed)| *observed == result)
            })
        });
        match read {
            Some(client) => positions[client] += 1,
            None => break,
        }
    };
    let mut start: State = (vec![0; clients], None);
    close_reads(&mut start.0, None);
    let mut seen: FxHashSet<State> = FxHashSet::default();
    seen.insert(start.clone());
    let mut stack: Vec<(State, usize)> = vec![(start, 0)];
    while let Some((state, next_client)) = stack.last_mut() {
        let (positions, value) = state.clone();
        if positions.iter().zip(&completed).all(|(done, need)| *done as usize >= *need) {
            return Ok(());
        }
        // The earliest completion among pending operations bounds what may go next.
        let deadline = deadline_of(&positions);
        let mut child = None;
        while *next_client < clients {
            let client = *next_client;
            *next_client += 1;
            let Some(op) = per_client[client].get(positions[client] as usize) else { continue };
            if op.invoke_us > deadline {
                continue;
            }
            let (new_value, result) = step(value, &op.op);
            if op.complete.as_ref().is_some_and(|(_, observed)| *observed != result) {
                continue;
            }
            let mut next_positions = positions.clone();
            next_positions[client] += 1;
            close_reads(&mut next_positions, new_value);
            let next: State = (next_positions, new_value);
            if seen.insert(next.clone()) {
                child = Some(next);
                break;
            }
        }
        match child {
            Some(next) => stack.push((next, 0)),
            None => {
                stack.pop();
            }
        }
    }
    Err(format!("no linearization of {} operations: {operations:?}", operations.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn op(
        client: usize,
        op: KvOp,
        invoke_us: u64,
        complete_us: u64,
        result: KvResult,
    ) -> Operation {
        Operation { client, op, invoke_us, complete: Some((complete_us, result)) }
    }

    #[test]
    fn stale_read_is_rejected() {
        let history = [
            op(0, KvOp::Put(1), 0, 10, KvResult::Done),
            op(1, KvOp::Put(2), 20, 30, KvResult::Done),
            op(2, KvOp::Get, 40, 50, KvResult::Value(Some(1))),
        ];
        assert!(check_key(&history).is_err());
    }

    #[test]
    fn lost_write_is_rejected() {
        let history = [
            op(0, KvOp::Put(7), 0, 10, KvResult::Done),
            op(1, KvOp::Get, 20, 30, KvResult::Value(None)),
        ];
        assert!(check_key(&history).is_err());
    }

    #[test]
    fn duplicate_apply_is_rejected() {
        // A compare-and-set from absent applied twice: the retry sees its own first effect.
        let history = [
            op(
                0,
                KvOp::CompareAndSet { expected: None, new: 1 },
                0,
                10,
                KvResult::CompareAndSet { succeeded: true, previous: None },
            ),
            op(1, KvOp::Put(2), 20, 30, KvResult::Done),
            op(1, KvOp::Get, 40, 50, KvResult::Value(Some(1))),
        ];
        assert!(check_key(&history).is_err());
    }

    #[test]
    fn reordered_compare_and_set_is_rejected() {
        // Two sequential compare-and-sets observed in the opposite order.
        let history = [
            op(
                0,
                KvOp::CompareAndSet { expected: None, new: 1 },
                0,
                10,
                KvResult::CompareAndSet { succeeded: false, previous: Some(2) },
            ),
            op(
                1,
                KvOp::CompareAndSet { expected: None, new: 2 },
                20,
                30,
                KvResult::CompareAndSet { succeeded: true, previous: None },
            ),
        ];
        assert!(check_key(&history).is_err());
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let history = [
            op(0, KvOp::Put(1), 0, 100, KvResult::Done),
            op(1, KvOp::Get, 10, 20, KvResult::Value(Some(1))),
            op(2, KvOp::Get, 30, 40, KvResult::Value(None)),
        ];
        assert!(check_key(&history).is_err(), "once read as 1, a later read cannot see it absent");
        let history = [
            op(0, KvOp::Put(1), 0, 100, KvResult::Done),
            op(1, KvOp::Get, 10, 20, KvResult::Value(None)),
            op(2, KvOp::Get, 30, 40, KvResult::Value(Some(1))),
        ];
        assert!(check_key(&history).is_ok());
    }

    #[test]
    fn an_incomplete_write_may_or_may_not_take_effect() {
        let pending = Operation { client: 0, op: KvOp::Put(5), invoke_us: 0, complete: None };
        let seen = [pending.clone(), op(1, KvOp::Get, 10, 20, KvResult::Value(Some(5)))];
        let unseen = [pending, op(1, KvOp::Get, 10, 20, KvResult::Value(None))];
        assert!(check_key(&seen).is_ok());
        assert!(check_key(&unseen).is_ok());
    }

    #[test]
    fn a_delete_of_an_absent_key_is_still_a_write() {
        // The delete overlaps the put and the read; it must go after the put for the read of
        // absent to make sense, which the search finds only if it does not fix the delete early.
        let history = [
            op(0, KvOp::Delete, 0, 100, KvResult::Done),
            op(1, KvOp::Put(3), 10, 20, KvResult::Done),
            op(2, KvOp::Get, 30, 40, KvResult::Value(Some(3))),
            op(2, KvOp::Get, 110, 120, KvResult::Value(None)),
        ];
        assert!(check_key(&history).is_ok());
    }

    /// Builds histories from a real sequential execution with overlapping intervals around each
    /// linearization point: every one must be accepted.
    #[test]
    fn generated_linearizable_histories_are_accepted() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        for _ in 0..200 {
            let clients = 1 + (rng.next_u64() % 6) as usize;
            let mut value = None;
            let mut busy_until = vec![0u64; clients];
            let mut history = Vec::new();
            let mut now = 0;
            for _ in 0..40 {
                now += 1 + rng.next_u64() % 10;
                let client = (rng.next_u64() % clients as u64) as usize;
                if busy_until[client] >= now {
                    continue;
                }
                let kind = rng.next_u64() % 4;
                let operation = match kind {
                    0 => KvOp::Get,
                    1 => KvOp::Put(rng.next_u64() % 5),
                    2 => KvOp::Delete,
                    _ => KvOp::CompareAndSet {
                        expected: (rng.next_u64() % 2 == 0).then(|| rng.next_u64() % 5),
                        new: rng.next_u64() % 5,
                    },
                };
                let (next, result) = step(value, &operation);
                value = next;
                // The operation took effect at `now`; its interval straddles that point.
                let previous_complete_us = busy_until[client];
                let invoke_us = now - rng.next_u64() % (now - previous_complete_us);
                let complete_us = now + rng.next_u64() % 20;
                busy_until[client] = complete_us;
                history.push(op(client, operation, invoke_us, complete_us, result));
            }
            assert_eq!(check_key(&history), Ok(()), "generated history rejected");
        }
    }
}
