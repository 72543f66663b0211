//! Safety checkers, run as the simulation goes. Each function enforces one invariant of
//! `docs/protocol.md` and names it; the first violation ends the run with the seed printed.
//!
//! The checkers judge from facts, not from what replicas believe: a value is *chosen* when a
//! majority of voters have durably accepted it under one ballot, as the simulated disks report.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::core::{Ballot, NodeId, Record, RequestId, Slot, Value, VoteSet, Voters};
use crate::machine::merge::MergedBatch;

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant, as numbered in `docs/protocol.md`.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

type Result = std::result::Result<(), Violation>;

fn violation(invariant: &'static str, detail: String) -> Result {
    Err(Violation { invariant, detail })
}

/// What the checkers know of the whole cluster.
#[derive(Debug)]
pub struct Checker {
    voters: Voters,
    /// Per shard: per (slot, ballot), the value accepted and the voters that made it durable.
    acceptances: Vec<HashMap<(u64, Ballot), (Value, VoteSet)>>,
    /// Per shard: per slot, the value chosen (a majority's durable acceptance in one ballot).
    chosen: Vec<HashMap<u64, Value>>,
    /// Per (node, shard): the highest durable promise.
    durable_promise: BTreeMap<(NodeId, usize), Ballot>,
    /// Per (node, shard), this incarnation: the next slot a commit must start at, and the
    /// requests applied.
    replicas: BTreeMap<(NodeId, usize), ReplicaView>,
    /// Per node, this incarnation: the next global position its merge may hand out.
    merged_next: BTreeMap<NodeId, u64>,
    /// The highest global position where a batch is chosen.
    batch_position_max: Option<u64>,
    /// The requests applied in each snapshot taken, by (shard, slot): every replica applies
    /// the same ones below a slot, and one that starts from a snapshot starts from these.
    snapshot_applied: HashMap<(usize, Slot), HashSet<RequestId>>,
}

#[derive(Debug, Default)]
struct ReplicaView {
    commit_next: Slot,
    applied: HashSet<RequestId>,
}

impl Checker {
    /// A checker for `shards` shards over `voters`.
    pub fn new(voters: Voters, shards: usize) -> Checker {
        Checker {
            voters,
            acceptances: vec![HashMap::new(); shards],
            chosen: vec![HashMap::new(); shards],
            durable_promise: BTreeMap::new(),
            replicas: BTreeMap::new(),
            merged_next: BTreeMap::new(),
            batch_position_max: None,
            snapshot_applied: HashMap::new(),
        }
    }

    /// A replica (re)started, with an empty state machine (it commits again from slot 0) or
    /// from a snapshot at `from_slot`. `lost_state`: its disk was damaged or wiped, so its
    /// promise may have fallen: it repairs before it votes (protocol.md §3.9), and the
    /// agreement checks (I8, which keep every acceptance ever made durable) judge the rest.
    pub fn on_replica_start(
        &mut self,
        node: NodeId,
        shard: usize,
        promised: Ballot,
        from_slot: Slot,
        lost_state: bool,
    ) -> Result {
        self.replicas.insert((node, shard), ReplicaView::default());
        if from_slot > Slot(0) {
            self.on_install(node, shard, from_slot)?;
        }
        if lost_state {
            self.durable_promise.insert((node, shard), promised);
            return Ok(());
        }
        self.check_promise_survives_restart(node, shard, promised)
    }

    /// A replica took a snapshot of its state at `slot` (everything below applied): it must
    /// have committed exactly that far, and hold the requests any other snapshot there holds.
    pub fn on_snapshot(&mut self, node: NodeId, shard: usize, slot: Slot) -> Result {
        let view = self.replicas.entry((node, shard)).or_default();
        if view.commit_next != slot {
            return violation(
                "I5 commits in slot order, once",
                format!(
                    "{node:?} shard {shard} snapshot at {slot:?} with commits up to {:?}",
                    view.commit_next
                ),
            );
        }
        let applied = view.applied.clone();
        match self.snapshot_applied.get(&(shard, slot)) {
            Some(known) if *known != applied => violation(
                "I9 applied exactly once",
                format!(
                    "{node:?} shard {shard} snapshot at {slot:?} holds {} requests, another \
                     replica's there {}",
                    applied.len(),
                    known.len()
                ),
            ),
            Some(_) => Ok(()),
            None => {
                self.snapshot_applied.insert((shard, slot), applied);
                Ok(())
            }
        }
    }

    /// A replica goes on from a snapshot at `slot` (installed from a peer, or loaded at
    /// start-up): it has applied what that snapshot holds, and commits from `slot` on.
    pub fn on_install(&mut self, node: NodeId, shard: usize, slot: Slot) -> Result {
        let Some(applied) = self.snapshot_applied.get(&(shard, slot)) else {
            return violation(
                "I5 commits in slot order, once",
                format!("{node:?} shard {shard} installed a snapshot at {slot:?} no replica took"),
            );
        };
        let applied = applied.clone();
        let view = self.replicas.entry((node, shard)).or_default();
        if slot <= view.commit_next && view.commit_next > Slot(0) {
            return violation(
                "I5 commits in slot order, once",
                format!(
                    "{node:?} shard {shard} installed a snapshot at {slot:?}, committed to {:?}",
                    view.commit_next
                ),
            );
        }
        view.commit_next = slot;
        view.applied = applied;
        Ok(())
    }

    /// Records became durable on `node`'s disk of `shard`.
    pub fn on_durable(&mut self, node: NodeId, shard: usize, records: &[Record]) -> Result {
        for record in records {
            match record {
                Record::Promised { ballot } => {
                    self.check_durable_promise_monotonic(node, shard, *ballot)?
                }
                Record::Accepted { ballot, first_slot, count, value } => {
                    self.check_durable_promise_monotonic(node, shard, *ballot)?;
                    let Some(index) = self.voters.index_of(node) else {
                        return violation(
                            "I7 learners never vote",
                            format!("learner {node:?} accepted"),
                        );
                    };
                    for offset in 0..*count {
                        self.check_agreement(shard, first_slot.0 + offset, *ballot, value, index)?;
                    }
                }
                Record::Chosen { .. } | Record::Committed { .. } => {}
            }
        }
        Ok(())
    }

    /// I1: a replica's durable promise never decreases.
    fn check_durable_promise_monotonic(
        &mut self,
        node: NodeId,
        shard: usize,
        ballot: Ballot,
    ) -> Result {
        let durable = self.durable_promise.entry((node, shard)).or_insert(Ballot::ZERO);
        *durable = (*durable).max(ballot);
        Ok(())
    }

    /// I1: after a restart the promise is at least the durable one.
    fn check_promise_survives_restart(
        &self,
        node: NodeId,
        shard: usize,
        promised: Ballot,
    ) -> Result {
        let durable = self.durable_promise.get(&(node, shard)).copied().unwrap_or(Ballot::ZERO);
        if promised < durable {
            return violation(
                "I1 promises never decrease",
                format!(
                    "{node:?} shard {shard} restarted promising {promised} below durable {durable}"
                ),
            );
        }
        Ok(())
    }

    /// I2 and agreement (I8): one value per slot per ballot, and never two different values
    /// chosen for one slot.
    fn check_agreement(
        &mut self,
        shard: usize,
        slot: u64,
        ballot: Ballot,
        value: &Value,
        voter: usize,
    ) -> Result {
        let (accepted, voters) = self.acceptances[shard]
            .entry((slot, ballot))
            .or_insert_with(|| (value.clone(), VoteSet::EMPTY));
        if accepted != value {
            return violation(
                "I2 one value per slot per ballot",
                format!("shard {shard} slot {slot} ballot {ballot}: {accepted:?} and {value:?}"),
            );
        }
        voters.insert(voter);
        if self.voters.is_quorum(*voters) {
            let accepted = accepted.clone();
            match self.chosen[shard].get(&slot) {
                Some(chosen) if *chosen != accepted => {
                    return violation(
                        "I8 agreement",
                        format!(
                            "shard {shard} slot {slot}: chosen {chosen:?}, then {accepted:?} in ballot {ballot}"
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    if !accepted.is_noop() {
                        let position = slot * self.chosen.len() as u64 + shard as u64;
                        self.batch_position_max = self.batch_position_max.max(Some(position));
                    }
                    self.chosen[shard].insert(slot, accepted);
                }
            }
        }
        Ok(())
    }

    /// A replica committed `count` slots from `first_slot` with `value`.
    pub fn on_commit(
        &mut self,
        node: NodeId,
        shard: usize,
        first_slot: Slot,
        count: u64,
        value: &Value,
    ) -> Result {
        self.check_commit_order(node, shard, first_slot, count)?;
        for offset in 0..count {
            self.check_commit_is_chosen(node, shard, first_slot.0 + offset, value)?;
        }
        Ok(())
    }

    /// I5: commits come in slot order, each slot once.
    fn check_commit_order(
        &mut self,
        node: NodeId,
        shard: usize,
        first_slot: Slot,
        count: u64,
    ) -> Result {
        let view = self.replicas.entry((node, shard)).or_default();
        if first_slot != view.commit_next || count == 0 {
            return violation(
                "I5 commits in slot order, once",
                format!(
                    "{node:?} shard {shard} committed {count} from {first_slot:?}, expected {:?}",
                    view.commit_next
                ),
            );
        }
        view.commit_next = first_slot.plus(count);
        Ok(())
    }

    /// I4 and agreement (I8): a replica commits only a value a majority durably accepted in one
    /// ballot, so committed prefixes are identical everywhere.
    fn check_commit_is_chosen(
        &self,
        node: NodeId,
        shard: usize,
        slot: u64,
        value: &Value,
    ) -> Result {
        match self.chosen[shard].get(&slot) {
            Some(chosen) if chosen == value => Ok(()),
            Some(chosen) => violation(
                "I8 agreement",
                format!(
                    "{node:?} shard {shard} committed {value:?} at slot {slot}, chosen was {chosen:?}"
                ),
            ),
            None => violation(
                "I4 commit only what a majority durably accepted in one ballot",
                format!(
                    "{node:?} shard {shard} committed slot {slot} ({value:?}) before any majority accepted it"
                ),
            ),
        }
    }

    /// I9: a replica applied request `id` (not as a duplicate).
    pub fn on_applied(&mut self, node: NodeId, shard: usize, id: RequestId) -> Result {
        self.check_applied_once(node, shard, id)
    }

    /// I9: exactly once per replica incarnation.
    fn check_applied_once(&mut self, node: NodeId, shard: usize, id: RequestId) -> Result {
        if id.client == RequestId::LEADER {
            // A leader's own command (a lease's expiry) has no session: each leader numbers
            // its own from 0, and a repeat is the machine's to refuse (an expiry names the
            // keep-alives it saw), not the log's.
            return Ok(());
        }
        let view = self.replicas.entry((node, shard)).or_default();
        if !view.applied.insert(id) {
            return violation(
                "I9 applied exactly once",
                format!("{node:?} shard {shard} applied {id:?} twice"),
            );
        }
        Ok(())
    }

    /// I9 at the end: every acknowledged request is applied on every live replica of its shard.
    pub fn check_acknowledged_applied_everywhere(
        &self,
        acknowledged: &[(usize, RequestId)],
        nodes: &[NodeId],
    ) -> Result {
        for (shard, id) in acknowledged {
            for node in nodes {
                let applied = self
                    .replicas
                    .get(&(*node, *shard))
                    .is_some_and(|view| view.applied.contains(id));
                if !applied {
                    return violation(
                        "I9 acknowledged requests are never lost",
                        format!("{id:?} acknowledged but not applied on {node:?} shard {shard}"),
                    );
                }
            }
        }
        Ok(())
    }

    /// A node's merge started over (the node restarted).
    pub fn on_merge_start(&mut self, node: NodeId) {
        self.merged_next.insert(node, 0);
    }

    /// The value chosen at global position `position`, if any yet.
    fn chosen_at(&self, position: u64) -> Option<&Value> {
        let shards = self.chosen.len() as u64;
        self.chosen[(position % shards) as usize].get(&(position / shards))
    }

    /// I11: a node's merge hands out exactly the chosen batches, in global position order,
    /// each once: what it passes over is chosen no-ops, what it hands out is the chosen batch
    /// at that position. Since every node's merge equals the chosen log, all merged orders are
    /// identical.
    pub fn on_merged(&mut self, node: NodeId, merged: &MergedBatch) -> Result {
        let shards = self.chosen.len() as u64;
        let next = self.merged_next.get(&node).copied().unwrap_or(0);
        let invariant = "I11 one merged order, every chosen batch once";
        if merged.position < next
            || merged.position % shards != u64::from(merged.shard)
            || merged.position / shards != merged.slot.0
        {
            return violation(
                invariant,
                format!(
                    "{node:?} merged position {} (shard {} slot {}) after position {next}",
                    merged.position, merged.shard, merged.slot.0
                ),
            );
        }
        for position in next..merged.position {
            if !matches!(self.chosen_at(position), Some(Value::Noop)) {
                return violation(
                    invariant,
                    format!(
                        "{node:?} merge passed over position {position}, which holds {:?}",
                        self.chosen_at(position)
                    ),
                );
            }
        }
        match self.chosen_at(merged.position) {
            Some(Value::Batch(bytes)) if *bytes == merged.batch => {}
            other => {
                return violation(
                    invariant,
                    format!(
                        "{node:?} merged a batch at position {} where {other:?} is chosen",
                        merged.position
                    ),
                );
            }
        }
        self.merged_next.insert(node, merged.position + 1);
        Ok(())
    }

    /// I11 at the end: a node's merge (now at `merge_next`) handed out every chosen batch.
    pub fn merged_complete(&self, node: NodeId, merge_next: u64) -> Result {
        match self.batch_position_max {
            Some(position) if position >= merge_next => violation(
                "I11 one merged order, every chosen batch once",
                format!(
                    "{node:?}'s merge stops at position {merge_next}; a batch is chosen at \
                     position {position}"
                ),
            ),
            _ => Ok(()),
        }
    }

    /// The value chosen at `slot` of `shard`, if any yet.
    pub fn chosen_value(&self, shard: usize, slot: u64) -> Option<&Value> {
        self.chosen[shard].get(&slot)
    }

    /// Slots chosen so far in `shard`.
    pub fn chosen_slots(&self, shard: usize) -> usize {
        self.chosen[shard].len()
    }
}
