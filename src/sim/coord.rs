//! The coordination API in the simulated workload (docs/simulator.md, "Coordination"):
//! clients that take locks under leases and write through their fencing tokens (fenced puts,
//! and values proclaimed as an election's leader would, `Proclaim`), watchers that
//! follow every key's changes across shards with the client's own merge
//! ([`WatchRound`]), and compare-and-sets and gets sent as transactions (checked with the
//! key-value history, I10). What their checkers hold:
//!
//! - **C1 leases**: no lease ends before its TTL, measured from the invocation of its last
//!   acknowledged grant or keep-alive, in real (simulated) time.
//! - **C2 fencing**: per lock, the acknowledged fenced writes and proclamations, in revision
//!   order, carry fencing tokens that never go down; no token is handed to two leases.
//! - **C3 watches**: a watcher receives exactly the changes of its range in
//!   `[start, next)`, in revision order, each once: the final store's change feed.

use std::collections::BTreeMap;

use rand_core::RngCore;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::checkers::Violation;
use super::knobs::{Knobs, between};
use super::linearizability::{KvOp, KvResult};
use crate::machine::kv::watch::WatchRound;
use crate::machine::kv::{
    Change, ChangesReply, Compare, CompareOp, CoordCommand, CoordError, CoordReply, KeyRange,
    Target, Txn, TxnOp, TxnResult,
};

/// What the workload's watchers watch: every shared key (the linearizability checker's).
pub const WATCHED_PREFIX: &[u8] = b"key-";

/// A coordination request of a simulated client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordStep {
    /// A compare-and-set of a shared key as a transaction (its `KvOp` is in the pending
    /// request, for the linearizability checker).
    TxnCas,
    /// A get of a shared key as a transaction through the log.
    TxnGet,
    /// Grants lease `lease`.
    Grant { lease: u64, ttl_ms: u64 },
    /// Keeps lease `lease` alive.
    KeepAlive { lease: u64 },
    /// Asks for lock `lock` under `lease`.
    Lock { lock: usize, lease: u64 },
    /// Asks who holds lock `lock` (a read).
    Holder { lock: usize },
    /// Writes lock `lock`'s fenced key if the lock is still held with `token`.
    Fenced { lock: usize, token: u64, value: u64 },
    /// Proclaims a value as lock `lock`'s holder with `token` (an election's leader,
    /// `CoordCommand::Proclaim`): refused once the lock moved on, as a fenced write is.
    Proclaim { lock: usize, token: u64, value: u64 },
    /// Releases lock `lock`.
    Unlock { lock: usize, lease: u64 },
    /// Revokes lease `lease`.
    Revoke { lease: u64 },
    /// Reads the watched prefix's changes on one shard (a read), for the watcher's round;
    /// with `wait_ms`, one held at the leader until a change comes or the time is up
    /// (`ChangesWait`).
    WatchPoll { from: u64, limit: u32, wait_ms: u32 },
}

/// Lock `lock`'s name: its own hash tag, so that its fenced key lives on its shard.
pub fn lock_name(lock: usize) -> Vec<u8> {
    format!("{{lock-{lock}}}").into_bytes()
}

/// The key that lock `lock`'s holders write through their fencing tokens.
pub fn fenced_key(lock: usize) -> Vec<u8> {
    format!("{{lock-{lock}}}fenced").into_bytes()
}

fn value_bytes(value: u64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

/// The command for `step` (`key` and `op`: the shared key's, for the transactions).
pub fn command(step: &CoordStep, key: &[u8], op: &KvOp, unfenced: bool) -> CoordCommand {
    match step {
        CoordStep::TxnCas => {
            let KvOp::CompareAndSet { expected, new } = op else { panic!("a txn cas of {op:?}") };
            let range = TxnOp::Range { range: KeyRange::Key(key.to_vec()), limit: 1 };
            CoordCommand::Txn(Txn {
                compares: vec![Compare::Key {
                    key: key.to_vec(),
                    op: CompareOp::Equal,
                    target: Target::Value(expected.map(value_bytes)),
                }],
                success: vec![TxnOp::Put { key: key.to_vec(), value: value_bytes(*new), lease: 0 }],
                failure: vec![range],
            })
        }
        CoordStep::TxnGet => CoordCommand::Txn(Txn {
            compares: Vec::new(),
            success: vec![TxnOp::Range { range: KeyRange::Key(key.to_vec()), limit: 1 }],
            failure: Vec::new(),
        }),
        CoordStep::Grant { lease, ttl_ms } => {
            CoordCommand::LeaseGrant { id: *lease, ttl_ms: *ttl_ms }
        }
        CoordStep::KeepAlive { lease } => CoordCommand::LeaseKeepAlive { id: *lease },
        CoordStep::Lock { lock, lease } => {
            CoordCommand::Lock { name: lock_name(*lock), lease: *lease, value: Vec::new() }
        }
        CoordStep::Holder { lock } => CoordCommand::LockHolder { name: lock_name(*lock) },
        CoordStep::Fenced { lock, token, value } => {
            let put = TxnOp::Put { key: fenced_key(*lock), value: value_bytes(*value), lease: 0 };
            // The planted bug (`SimOptions::unfenced_writes`): the write goes without its
            // compare, as a client that trusts it still holds the lock would send it.
            let compares = if unfenced {
                Vec::new()
            } else {
                vec![Compare::LockHeld { name: lock_name(*lock), token: *token }]
            };
            CoordCommand::Txn(Txn { compares, success: vec![put], failure: Vec::new() })
        }
        CoordStep::Proclaim { lock, token, value } => CoordCommand::Proclaim {
            name: lock_name(*lock),
            token: *token,
            value: value_bytes(*value),
        },
        CoordStep::Unlock { lock, lease } => {
            CoordCommand::Unlock { name: lock_name(*lock), lease: *lease }
        }
        CoordStep::Revoke { lease } => CoordCommand::LeaseRevoke { id: *lease },
        CoordStep::WatchPoll { from, limit, wait_ms } => {
            let range = KeyRange::Prefix(WATCHED_PREFIX.to_vec());
            let (from, limit, locks) = (*from, *limit, false);
            if *wait_ms == 0 {
                CoordCommand::Changes { range, from, limit, locks }
            } else {
                CoordCommand::ChangesWait { range, from, limit, locks, wait_ms: *wait_ms }
            }
        }
    }
}

fn decode_value(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("simulated values are 8 bytes"))
}

/// The linearizability checker's view of a transaction's reply (for [`CoordStep::TxnCas`]
/// and [`CoordStep::TxnGet`]).
pub fn txn_result(step: &CoordStep, op: &KvOp, reply: &CoordReply) -> KvResult {
    let CoordReply::Txn { succeeded, results, .. } = reply else {
        panic!("a transaction answered {reply:?}");
    };
    let ranged = || match results.first() {
        Some(TxnResult::Range(range)) => {
            range.entries.first().map(|entry| decode_value(&entry.value))
        }
        other => panic!("a transaction's range answered {other:?}"),
    };
    match (step, op) {
        (CoordStep::TxnCas, KvOp::CompareAndSet { expected, .. }) if *succeeded => {
            KvResult::CompareAndSet { succeeded: true, previous: *expected }
        }
        (CoordStep::TxnCas, _) => KvResult::CompareAndSet { succeeded: false, previous: ranged() },
        _ => KvResult::Value(ranged()),
    }
}

/// Where a locker is in its cycle: lease, lock, fenced writes, then let go one way or another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No lease: grant one.
    Unleased,
    /// A lease, no lock asked for.
    Leased,
    /// In line for the lock: ask who holds it.
    Waiting,
    /// Holding with `token`; `writes` fenced writes to go.
    Holding { token: u64, writes: u32 },
    /// A holder that stopped (a process paused, a long GC): no keep-alives until `until_us`,
    /// then one more fenced write with its old token, which must fail if the lock moved on.
    Paused { token: u64, until_us: u64 },
}

/// What a locker does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Sends this.
    Send(CoordStep),
    /// Sleeps this long first.
    Sleep(u64),
}

/// A client that takes a lock under a lease, writes through its token and lets go.
#[derive(Clone, Debug)]
pub struct Locker {
    /// The lock it contends for.
    pub lock: usize,
    lease: u64,
    ttl_ms: u64,
    leases_granted: u64,
    /// When the last keep-alive (or the grant) was sent.
    kept_us: u64,
    phase: Phase,
}

impl Locker {
    /// A locker that contends for lock `lock`.
    pub fn new(lock: usize) -> Locker {
        Locker { lock, lease: 0, ttl_ms: 0, leases_granted: 0, kept_us: 0, phase: Phase::Unleased }
    }

    /// The locker's next request, at `now_us`.
    pub fn next(
        &mut self,
        client: u64,
        now_us: u64,
        knobs: &Knobs,
        rng: &mut Xoshiro256PlusPlus,
    ) -> Next {
        let lock = self.lock;
        if let Phase::Paused { token, until_us } = self.phase {
            if now_us < until_us {
                return Next::Sleep(until_us - now_us);
            }
            self.phase = Phase::Unleased;
            return Next::Send(fenced_step(lock, token, client, 3, rng));
        }
        if self.phase == Phase::Unleased {
            self.leases_granted += 1;
            self.lease = (client << 24) | self.leases_granted;
            self.ttl_ms = between(rng, knobs.lease_ttl_ms_min, knobs.lease_ttl_ms_max);
            self.kept_us = now_us;
            return Next::Send(CoordStep::Grant { lease: self.lease, ttl_ms: self.ttl_ms });
        }
        if now_us >= self.kept_us + self.ttl_ms * 1000 / 3 {
            self.kept_us = now_us;
            return Next::Send(CoordStep::KeepAlive { lease: self.lease });
        }
        let lease = self.lease;
        match self.phase {
            Phase::Leased => Next::Send(CoordStep::Lock { lock, lease }),
            Phase::Waiting => Next::Send(CoordStep::Holder { lock }),
            Phase::Holding { token, writes } if writes > 0 => {
                self.phase = Phase::Holding { token, writes: writes - 1 };
                Next::Send(fenced_step(lock, token, client, 4, rng))
            }
            Phase::Holding { token, .. } => self.let_go(token, now_us, rng),
            Phase::Unleased | Phase::Paused { .. } => unreachable!("handled above"),
        }
    }

    /// Done writing: unlock, revoke, pause past the TTL, or walk away and let it expire.
    fn let_go(&mut self, token: u64, now_us: u64, rng: &mut Xoshiro256PlusPlus) -> Next {
        let (lock, lease) = (self.lock, self.lease);
        match rng.next_u64() % 6 {
            0 | 1 => {
                self.phase = Phase::Leased;
                Next::Send(CoordStep::Unlock { lock, lease })
            }
            2 => {
                self.phase = Phase::Unleased;
                Next::Send(CoordStep::Revoke { lease })
            }
            3 | 4 => {
                // Past the TTL, and long enough that a stretch of it goes without a leader
                // change (each gives the lease a whole TTL again).
                let pause_us = self.ttl_ms * 1000 + between(rng, 100_000, 2 * self.ttl_ms * 1000);
                self.phase = Phase::Paused { token, until_us: now_us + pause_us };
                Next::Sleep(pause_us)
            }
            _ => {
                // Gone without a word: the lease runs out, and the lock passes on.
                self.phase = Phase::Unleased;
                Next::Sleep(self.ttl_ms * 1000 + between(rng, 0, 2 * self.ttl_ms * 1000))
            }
        }
    }

    /// The reply to `step` came: the locker moves on.
    pub fn on_reply(&mut self, step: &CoordStep, reply: &CoordReply, rng: &mut Xoshiro256PlusPlus) {
        if let CoordReply::Refused(CoordError::LeaseNotFound { .. }) = reply {
            // The lease ended (its TTL ran out while cut off, or it was revoked).
            self.phase = Phase::Unleased;
            return;
        }
        match (step, reply) {
            (CoordStep::Grant { .. }, CoordReply::Lease { .. }) => self.phase = Phase::Leased,
            (CoordStep::Lock { .. }, CoordReply::Lock { holder, held: true, .. }) => {
                self.hold(holder.token, rng);
            }
            (CoordStep::Lock { .. }, CoordReply::Lock { .. }) => self.phase = Phase::Waiting,
            (CoordStep::Holder { .. }, CoordReply::Holder(Some(holder)))
                if holder.lease == self.lease =>
            {
                self.hold(holder.token, rng);
            }
            // Out of line (the lease ended and took its place with it): ask again.
            (CoordStep::Holder { .. }, CoordReply::Holder(None)) => self.phase = Phase::Leased,
            // The lock moved on: the lease must have ended.
            (CoordStep::Fenced { .. }, CoordReply::Txn { succeeded: false, .. })
            | (CoordStep::Proclaim { .. }, CoordReply::Refused(CoordError::NotHolder { .. })) => {
                self.phase = Phase::Unleased;
            }
            _ => {}
        }
    }

    fn hold(&mut self, token: u64, rng: &mut Xoshiro256PlusPlus) {
        self.phase = Phase::Holding { token, writes: between(rng, 1, 3) as u32 };
    }

    /// True while a locker waits in line (it polls, so it should not think long).
    pub fn waiting(&self) -> bool {
        self.phase == Phase::Waiting
    }
}

/// A write of a fresh value through lock `lock`'s token `token`: a fenced put, or one time in
/// `one_in` a value proclaimed as an election's leader would.
fn fenced_step(
    lock: usize,
    token: u64,
    client: u64,
    one_in: u64,
    rng: &mut Xoshiro256PlusPlus,
) -> CoordStep {
    let value = fresh(client, rng);
    if rng.next_u64() % one_in == 0 {
        CoordStep::Proclaim { lock, token, value }
    } else {
        CoordStep::Fenced { lock, token, value }
    }
}

fn fresh(client: u64, rng: &mut Xoshiro256PlusPlus) -> u64 {
    (client << 40) | (rng.next_u64() & ((1 << 40) - 1))
}

/// A client that follows the watched prefix's changes across every shard, one shard at a
/// time per round, merged as the client library merges them.
#[derive(Debug)]
pub struct Watcher {
    /// The first revision it asked for.
    pub start: u64,
    /// The next revision it will ask for.
    pub next: u64,
    /// Changes per reply at most (small: rounds that leave changes for later).
    pub limit: u32,
    /// How long a read may wait at the leader for a change (0: it does not wait).
    pub wait_ms: u32,
    /// The round under way and the next shard it asks.
    round: Option<(WatchRound, usize)>,
    /// With the planted bug: one round per shard, merged by taking the furthest.
    split: Vec<WatchRound>,
    /// What it received, in order.
    pub received: Vec<Change>,
    /// Rounds finished.
    pub rounds: u64,
}

impl Watcher {
    /// A watcher from the first revision.
    pub fn new(limit: u32, wait_ms: u32) -> Watcher {
        Watcher {
            start: 1,
            next: 1,
            limit,
            wait_ms,
            round: None,
            split: Vec::new(),
            received: Vec::new(),
            rounds: 0,
        }
    }

    /// The shard to ask next, and the request.
    pub fn ask(&mut self) -> (usize, CoordStep) {
        let next = self.next;
        let (_, shard) = self.round.get_or_insert_with(|| (WatchRound::new(next), 0));
        (*shard, CoordStep::WatchPoll { from: next, limit: self.limit, wait_ms: self.wait_ms })
    }

    /// Shard `shard`'s answer, reflecting `slot`; a finished round hands its changes over.
    /// With `furthest` (the planted bug), the round ends at the furthest shard's revision
    /// instead of the nearest.
    pub fn on_reply(&mut self, reply: ChangesReply, slot: u64, shards: usize, furthest: bool) {
        let Some((round, shard)) = self.round.as_mut() else { return };
        if furthest {
            let mut own = WatchRound::new(self.next);
            own.add(reply.clone(), slot, *shard as u16, shards as u16);
            self.split.push(own);
        }
        round.add(reply, slot, *shard as u16, shards as u16);
        *shard += 1;
        if *shard < shards {
            return;
        }
        let (round, _) = self.round.take().expect("checked");
        let (mut changes, mut next) = round.finish();
        if furthest {
            let mut all = Vec::new();
            for own in std::mem::take(&mut self.split) {
                let (found, own_next) = own.finish();
                next = next.max(own_next);
                all.extend(found);
            }
            all.sort_by_key(|change| change.revision);
            changes = all;
        }
        self.received.extend(changes);
        self.next = next;
        self.rounds += 1;
    }

    /// A round given up (its shard refused or the round must start over).
    pub fn restart_round(&mut self) {
        self.round = None;
        self.split.clear();
    }
}

/// What the coordination workload did, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordCounts {
    /// Leases granted.
    pub leases: u64,
    /// Leases ended by their TTL (an expiry applied).
    pub expired: u64,
    /// Locks acquired.
    pub locks: u64,
    /// Fenced writes acknowledged as applied.
    pub fenced: u64,
    /// Fenced writes refused: the lock had moved on.
    pub fenced_refused: u64,
    /// Values proclaimed by a lock's holder (elections), acknowledged.
    pub proclaimed: u64,
    /// Proclamations refused: the lock had moved on.
    pub proclaims_refused: u64,
    /// Transactions (compare-and-sets and gets) acknowledged.
    pub txns: u64,
    /// Watch rounds finished, all watchers.
    pub watch_rounds: u64,
    /// Changes the watchers received and had checked.
    pub watched: u64,
}

impl CoordCounts {
    /// Adds another seed's counts.
    pub fn add(&mut self, other: &CoordCounts) {
        self.leases += other.leases;
        self.expired += other.expired;
        self.locks += other.locks;
        self.fenced += other.fenced;
        self.fenced_refused += other.fenced_refused;
        self.proclaimed += other.proclaimed;
        self.proclaims_refused += other.proclaims_refused;
        self.txns += other.txns;
        self.watch_rounds += other.watch_rounds;
        self.watched += other.watched;
    }
}

/// What the checkers of C1 and C2 gather during a run.
#[derive(Debug, Default)]
pub struct CoordChecker {
    /// Per lease: its TTL and the invocation of its last acknowledged grant or keep-alive.
    kept: BTreeMap<u64, (u64, u64)>,
    /// Per lease: when an expiry of it was first applied anywhere.
    expired: BTreeMap<u64, u64>,
    /// Per lock: its acknowledged fenced writes, as (revision, token).
    fenced: BTreeMap<usize, Vec<(u64, u64)>>,
    /// Per lock and token: the lease it was handed to.
    tokens: BTreeMap<(usize, u64), u64>,
    /// The counts.
    pub counts: CoordCounts,
}

impl CoordChecker {
    /// A locker's request invoked at `invoke_us` was answered with `reply`.
    pub fn on_reply(
        &mut self,
        step: &CoordStep,
        reply: &CoordReply,
        invoke_us: u64,
    ) -> Result<(), Violation> {
        match (step, reply) {
            (CoordStep::Grant { lease, ttl_ms }, CoordReply::Lease { .. }) => {
                self.counts.leases += 1;
                self.kept.insert(*lease, (*ttl_ms, invoke_us));
            }
            (CoordStep::KeepAlive { lease }, CoordReply::Lease { .. }) => {
                if let Some((_, kept)) = self.kept.get_mut(lease) {
                    *kept = (*kept).max(invoke_us);
                }
            }
            (CoordStep::Lock { lock, lease }, CoordReply::Lock { holder, held: true, .. }) => {
                return self.handed(*lock, holder.token, *lease);
            }
            (CoordStep::Holder { lock }, CoordReply::Holder(Some(holder))) => {
                return self.handed(*lock, holder.token, holder.lease);
            }
            (
                CoordStep::Fenced { lock, token, .. },
                CoordReply::Txn { succeeded, revision, .. },
            ) => {
                if *succeeded {
                    self.counts.fenced += 1;
                    self.fenced.entry(*lock).or_default().push((*revision, *token));
                } else {
                    self.counts.fenced_refused += 1;
                }
            }
            // A proclaimed value is a write fenced by the token too: it joins C2's order.
            (CoordStep::Proclaim { lock, token, .. }, CoordReply::Proclaimed { revision }) => {
                self.counts.proclaimed += 1;
                self.fenced.entry(*lock).or_default().push((*revision, *token));
            }
            (CoordStep::Proclaim { .. }, CoordReply::Refused(CoordError::NotHolder { .. })) => {
                self.counts.proclaims_refused += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// Token `token` of lock `lock` is seen held by `lease`: no other lease may have it.
    fn handed(&mut self, lock: usize, token: u64, lease: u64) -> Result<(), Violation> {
        let first = *self.tokens.entry((lock, token)).or_insert_with(|| {
            self.counts.locks += 1;
            lease
        });
        if first == lease {
            return Ok(());
        }
        let detail =
            format!("lock {lock}'s token {token} was held by lease {first:x} and by {lease:x}");
        Err(Violation { invariant: "C2 fencing", detail })
    }

    /// An expiry of `lease` was applied at `now_us` (on some replica).
    pub fn on_expired(&mut self, lease: u64, now_us: u64) {
        if let std::collections::btree_map::Entry::Vacant(entry) = self.expired.entry(lease) {
            entry.insert(now_us);
            self.counts.expired += 1;
        }
    }

    /// C1 and C2 over the whole run.
    pub fn check(&self) -> Result<(), Violation> {
        for (lease, ended_us) in &self.expired {
            let Some((ttl_ms, kept_us)) = self.kept.get(lease) else { continue };
            if *ended_us < kept_us + ttl_ms * 1000 {
                let detail = format!(
                    "lease {lease:x} (TTL {ttl_ms} ms) expired at {ended_us} µs, {} µs after the \
                     invocation of its last acknowledged keep-alive at {kept_us} µs",
                    ended_us - kept_us
                );
                return Err(Violation { invariant: "C1 leases", detail });
            }
        }
        for (lock, writes) in &self.fenced {
            let mut writes = writes.clone();
            writes.sort_unstable();
            for pair in writes.windows(2) {
                if pair[1].1 < pair[0].1 {
                    let detail = format!(
                        "lock {lock}: a fenced write with token {} at revision {} came after one \
                         with token {} at revision {}",
                        pair[1].1, pair[1].0, pair[0].1, pair[0].0
                    );
                    return Err(Violation { invariant: "C2 fencing", detail });
                }
            }
        }
        Ok(())
    }
}

/// C3: what `watcher` received is exactly the changes in `expected` (every shard's, in
/// revision order) from its start up to its next revision.
pub fn check_watcher(
    watcher: usize,
    received: &[Change],
    expected: &[Change],
    start: u64,
    next: u64,
) -> Result<(), Violation> {
    let wanted: Vec<&Change> = expected
        .iter()
        .filter(|change| change.revision >= start && change.revision < next)
        .collect();
    let got: Vec<&Change> = received.iter().collect();
    if got == wanted {
        return Ok(());
    }
    let first_difference =
        got.iter().zip(&wanted).position(|(a, b)| a != b).unwrap_or(got.len().min(wanted.len()));
    let detail = format!(
        "watcher {watcher} received {} changes in [{start}, {next}), the store made {}; first \
         difference at #{first_difference}: received {:?}, expected {:?}",
        got.len(),
        wanted.len(),
        got.get(first_difference).map(|change| change.revision),
        wanted.get(first_difference).map(|change| change.revision),
    );
    Err(Violation { invariant: "C3 watches", detail })
}
