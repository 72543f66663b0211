//! Queries answered without the log (protocol.md §5.3): a query goes to the replica's read
//! index instead of into a batch; once the replica has confirmed it still leads and every slot
//! below the read's index is applied, the state machine's `query` answers it. Reads aborted by a
//! lost leadership are handed back for their clients to be sent to the leader.
//!
//! A query whose answer says "nothing yet" may ask to wait ([`StateMachine::query_wait`], a
//! watch's long poll): the leader then parks it, already confirmed, and asks the machine again
//! only when a key it waits on changed (an index by key, so that a batch wakes only the reads
//! it concerns, whatever the count parked), or when its time is out. Its answer then reflects
//! the state as applied at that moment, at least its read index: still linearizable. A
//! leadership lost aborts what is parked, as it does reads not yet confirmed. At most
//! [`WAITING_QUERIES_MAX`] are parked; past it a read that would wait is answered with the
//! machine's refusal ([`StateMachine::wait_refused`]).
//!
//! Tested on three wired replicas in `tests/shard.rs`: a parked read woken by its key or a key
//! under its prefix and by no other, answered empty at its deadline, aborted by a lost
//! leadership, refused past the most, and never held by a follower.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::core::{NodeId, RequestId, Slot};
use crate::machine::{AppliedCommand, Outcome, StateMachine, WAITING_QUERIES_MAX, WaitOn};

/// A confirmed read waiting for a change ([`StateMachine::query_wait`]).
#[derive(Debug)]
struct Parked {
    payload: Vec<u8>,
    on: WaitOn,
    /// When it is answered whatever it finds, on the shard's clock (ticks, in milliseconds).
    deadline_ms: u64,
}

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
    /// Confirmed reads waiting for a change.
    parked: FxHashMap<RequestId, Parked>,
    /// The parked reads that wait on one key, by the key (entries of reads answered since are
    /// skipped and dropped when the key changes).
    by_key: FxHashMap<Vec<u8>, Vec<RequestId>>,
    /// The parked reads that wait on a prefix or on any key: looked at for every change.
    scanned: Vec<RequestId>,
    /// When the parked reads time out, in order.
    deadlines: BTreeMap<(u64, RequestId), ()>,
    /// The machine's [`StateMachine::change_mark`] the parked reads were last matched at.
    mark: u64,
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

    /// How many reads are parked.
    pub(super) fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Answers every confirmed read whose index is `applied` or below, onto `out`, each with
    /// `applied` as its slot: the answer reflects every slot below it. A read whose answer
    /// says to wait is parked instead, if `leading` (a follower's reads answer at once). Then
    /// answers the parked reads that a change since the last call may concern.
    pub(super) fn answer<S: StateMachine>(
        &mut self,
        applied: Slot,
        machine: &S,
        leading: bool,
        now_ms: u64,
        out: &mut Vec<AppliedCommand<S::Reply>>,
    ) {
        self.wake(applied, machine, out);
        while let Some(entry) = self.ready.first_entry() {
            if entry.key().0 > applied {
                break;
            }
            let id = entry.remove();
            let Some(payload) = self.payloads.remove(&id) else { continue };
            let reply = machine.query(&payload);
            let Some(wait) = machine.query_wait(&payload, &reply).filter(|_| leading) else {
                out.push(answered(id, applied, reply));
                continue;
            };
            if self.parked.contains_key(&id) {
                // A client's retry of a read that is parked (the same id, resent after the
                // client's timeout, or a duplicated message): the same read, which the parked
                // copy answers.
                continue;
            }
            if self.parked.len() >= WAITING_QUERIES_MAX {
                let refused = machine.wait_refused(&payload).unwrap_or(reply);
                out.push(answered(id, applied, refused));
                continue;
            }
            self.park(
                id,
                Parked { payload, on: wait.on, deadline_ms: now_ms.saturating_add(wait.wait_ms) },
            );
        }
    }

    fn park(&mut self, id: RequestId, parked: Parked) {
        match &parked.on {
            WaitOn::Key(key) => self.by_key.entry(key.clone()).or_default().push(id),
            WaitOn::Prefix(_) | WaitOn::Any => self.scanned.push(id),
        }
        self.deadlines.insert((parked.deadline_ms, id), ());
        let before = self.parked.insert(id, parked);
        assert!(before.is_none(), "read {id:?} parked twice");
    }

    /// Takes a parked read out of every index.
    fn unpark(&mut self, id: RequestId) -> Option<Parked> {
        let parked = self.parked.remove(&id)?;
        self.deadlines.remove(&(parked.deadline_ms, id));
        match &parked.on {
            WaitOn::Key(key) => {
                if let Some(ids) = self.by_key.get_mut(key) {
                    ids.retain(|other| *other != id);
                    if ids.is_empty() {
                        self.by_key.remove(key);
                    }
                }
            }
            WaitOn::Prefix(_) | WaitOn::Any => self.scanned.retain(|other| *other != id),
        }
        Some(parked)
    }

    /// Asks again the parked reads a key changed since the last call may concern: answers
    /// those that now find something, parks the others again.
    fn wake<S: StateMachine>(
        &mut self,
        applied: Slot,
        machine: &S,
        out: &mut Vec<AppliedCommand<S::Reply>>,
    ) {
        let mark = machine.change_mark();
        if mark == self.mark {
            return;
        }
        let since = std::mem::replace(&mut self.mark, mark);
        if self.parked.is_empty() {
            return;
        }
        let mut woken: Vec<RequestId> = Vec::new();
        let (by_key, scanned, parked) = (&self.by_key, &self.scanned, &self.parked);
        let told = machine.changed_since(since, &mut |key| {
            if let Some(ids) = by_key.get(key) {
                woken.extend_from_slice(ids);
            }
            for id in scanned {
                if parked.get(id).is_some_and(|read| read.on.matches(key)) {
                    woken.push(*id);
                }
            }
        });
        if !told {
            woken = self.parked.keys().copied().collect();
        }
        for id in woken {
            // A read woken twice (two changes of its key) was answered the first time.
            let Some(read) = self.unpark(id) else { continue };
            let reply = machine.query(&read.payload);
            if machine.query_wait(&read.payload, &reply).is_some() {
                self.park(id, read);
            } else {
                out.push(answered(id, applied, reply));
            }
        }
    }

    /// Answers the parked reads whose time ran out by `now_ms`, with what they find now.
    pub(super) fn expire<S: StateMachine>(
        &mut self,
        applied: Slot,
        machine: &S,
        now_ms: u64,
        out: &mut Vec<AppliedCommand<S::Reply>>,
    ) {
        while let Some((&(deadline_ms, id), ())) = self.deadlines.first_key_value() {
            if deadline_ms > now_ms {
                break;
            }
            let read = self.unpark(id).expect("every deadline is of a parked read");
            out.push(answered(id, applied, machine.query(&read.payload)));
        }
    }

    /// The leadership ended: every parked read is aborted, for its client to ask the leader.
    pub(super) fn abort_parked(&mut self, hint: Option<NodeId>) {
        let mut ids: Vec<RequestId> = self.parked.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.unpark(id);
            self.aborted.push((id, hint));
        }
        assert!(self.by_key.is_empty(), "keys still indexed: {}", self.by_key.len());
        assert!(self.deadlines.is_empty(), "deadlines left: {}", self.deadlines.len());
    }
}

/// Read `id`'s answer, reflecting every slot below `slot`.
fn answered<R>(id: RequestId, slot: Slot, reply: R) -> AppliedCommand<R> {
    AppliedCommand { id, slot, index: 0, outcome: Outcome::Applied(reply) }
}
