//! Queries answered without the log (protocol.md §5.3): a query goes to the replica's read
//! index instead of into a batch; once the replica has confirmed it still leads and every slot
//! below the read's index is applied, the state machine's `query` answers it. Reads aborted by a
//! lost leadership are handed back for their clients to be sent to the leader.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::core::{NodeId, RequestId, Slot};
use crate::machine::{AppliedCommand, Outcome, StateMachine};

/// A shard's reads in flight.
#[derive(Debug, Default)]
pub(super) struct Reads {
    /// Each read's request, from registration to its answer.
    payloads: FxHashMap<RequestId, Vec<u8>>,
    /// Confirmed reads waiting until their index is applied, by index (and arrival).
    ready: BTreeMap<(Slot, u64), RequestId>,
    /// Numbers the reads that became ready, to keep their order within one index.
    readied: u64,
    /// Reads whose leadership ended first, with the leader to try.
    pub(super) aborted: Vec<(RequestId, Option<NodeId>)>,
}

impl Reads {
    /// Keeps a read's request until it is answered or aborted.
    pub(super) fn register(&mut self, id: RequestId, payload: &[u8]) {
        self.payloads.insert(id, payload.to_vec());
    }

    /// The read was refused before it was registered with the replica.
    pub(super) fn forget(&mut self, id: RequestId) {
        self.payloads.remove(&id);
    }

    /// The replica confirmed these reads.
    pub(super) fn confirmed(&mut self, reads: Vec<(RequestId, Slot)>) {
        for (id, index) in reads {
            self.readied += 1;
            self.ready.insert((index, self.readied), id);
        }
    }

    /// The replica lost its leadership before confirming these.
    pub(super) fn aborted(&mut self, ids: Vec<RequestId>, hint: Option<NodeId>) {
        for id in ids {
            self.payloads.remove(&id);
            self.aborted.push((id, hint));
        }
    }

    /// Answers every confirmed read whose index is `applied` or below, onto `out`, each with
    /// `applied` as its slot: the answer reflects every slot below it.
    pub(super) fn answer<S: StateMachine>(
        &mut self,
        applied: Slot,
        machine: &S,
        out: &mut Vec<AppliedCommand<S::Reply>>,
    ) {
        while let Some(entry) = self.ready.first_entry() {
            if entry.key().0 > applied {
                break;
            }
            let id = entry.remove();
            let Some(payload) = self.payloads.remove(&id) else { continue };
            let outcome = Outcome::Applied(machine.query(&payload));
            out.push(AppliedCommand { id, slot: applied, index: 0, outcome });
        }
    }
}
