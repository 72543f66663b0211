//! The simulated world: nodes of shard replicas, their disks, a network, clients and a fault
//! schedule, driven by one seeded event queue. Everything that happens is a function of the
//! seed, so a failing seed replays exactly (docs/simulator.md).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::core::Slot;
use crate::core::{
    Action, Ballot, ClusterId, Config, Envelope, Message, NodeId, ProposeError, Replica, RequestId,
    RoleKind, Value, Voters,
};
use crate::merge::MergedBatch;
use crate::snapshot::{Assembly, Piece, Snapshot, SnapshotHeader};
use crate::state_machine::{
    Applier, KvStore, Outcome, REGISTER_ENTROPY_BYTES, SessionLimits, StateMachine as _,
    register_request, seal_register, shard_for_key,
};

/// The simulated replicas' session limits: a small reply window, so that it moves.
const SIM_SESSIONS: SessionLimits = SessionLimits::with_replies_max(16);
use crate::total_order::{Committed, TotalApplier};

use super::checkers::{Checker, Violation};
use super::client::{ClientReply, Pending, SimClient, encode, key_bytes, result_of};
use super::disk::SimDisk;
use super::knobs::{Knobs, between};
use super::linearizability::{KvOp, Operation, check_key};
use super::report::{COMMANDS_PER_SEED_MIN, FaultCounts, SeedReport, SnapshotCounts};

const CLUSTER: ClusterId = ClusterId(0x5157_4f52_554d);
/// How long the liveness phase may take before it counts as a violation.
const LIVENESS_BOUND_US: u64 = 10_000_000;
/// A run that needs more events than this is spinning: a liveness bug, reported as such.
const EVENTS_MAX: u64 = 3_000_000;

#[derive(Debug)]
enum Event {
    Tick {
        node: usize,
        incarnation: u64,
    },
    Deliver {
        to: usize,
        shard: usize,
        from: NodeId,
        message: Message,
    },
    SyncDone {
        node: usize,
        shard: usize,
        incarnation: u64,
    },
    ClientRequest {
        node: usize,
        client: usize,
        pending: Pending,
    },
    ClientReply {
        client: usize,
        id: RequestId,
        reply: ClientReply,
    },
    ClientWake {
        client: usize,
        token: u64,
        resend: bool,
    },
    Fault,
    ForceLeaderChange,
    Restart {
        node: usize,
    },
    /// A disk call failed on the node (a sync error, a full disk): its process stops.
    Fail {
        node: usize,
        incarnation: u64,
    },
    Unblock {
        links: Vec<(usize, usize)>,
        epoch: u64,
    },
    EndSafety,
    LivenessCheck,
}

struct Scheduled {
    at_us: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the heap pops the earliest event, ties in scheduling order.
        (other.at_us, other.seq).cmp(&(self.at_us, self.seq))
    }
}

struct ShardReplica {
    replica: Option<Replica>,
    disk: SimDisk,
    applier: Applier<KvStore>,
    waiting: BTreeMap<RequestId, usize>,
    /// A peer's snapshot arriving in pieces (in memory: a restart loses it).
    arriving: Assembly,
}

struct SimNode {
    id: NodeId,
    up: bool,
    /// When a crashed node comes back.
    restart_at_us: u64,
    incarnation: u64,
    paused_until_us: u64,
    shards: Vec<ShardReplica>,
    /// This node's shards' commits merged into one order and applied in it to one state
    /// machine (apply mode `total`); restarts with the replicas.
    total: TotalApplier<KvStore>,
    /// A replica of this node started from a snapshot: its commits no longer start at slot
    /// 0, so the merge (which needs every slot) is not fed or checked from then on.
    merge_off: bool,
    /// A disk call failed: the node does nothing more until it stops (`Event::Fail`).
    failing: bool,
    /// Its disks were damaged or wiped and a replica has not finished repairing since: its
    /// storage is not intact, so no other node's is damaged meanwhile (a majority keeps
    /// every acknowledged write, the promise the checkers hold the cluster to).
    damaged: bool,
}

/// A whole simulated cluster. Build with [`World::new`], run with [`World::run`].
pub struct World {
    seed: u64,
    knobs: Knobs,
    rng: Xoshiro256PlusPlus,
    now_us: u64,
    queue: BinaryHeap<Scheduled>,
    event_seq: u64,
    nodes: Vec<SimNode>,
    clients: Vec<SimClient>,
    blocked: Vec<Vec<u32>>,
    /// Per link, when its latest cut ends (meaningful while `blocked` is positive).
    blocked_until_us: Vec<Vec<u64>>,
    block_epoch: u64,
    faults_on: bool,
    stopping: bool,
    liveness_started_us: u64,
    finished: bool,
    checker: Checker,
    violation: Option<Violation>,
    history: Vec<Vec<Operation>>,
    acknowledged: Vec<(usize, RequestId)>,
    /// Queries answered (not in `acknowledged`: nothing of theirs must be applied).
    queries_answered: u64,
    leader_ballot: Vec<Option<Ballot>>,
    leader_changes: u64,
    events: u64,
    merged: u64,
    archived_reads: u64,
    snapshots: SnapshotCounts,
    faults: FaultCounts,
    actions: Vec<Action>,
    trace: Option<String>,
    /// Print trace lines as they happen (so a panic still leaves the trace up to it).
    trace_to_stdout: bool,
}

impl World {
    /// A world drawn from `seed`; with `trace`, every event is written to a readable trace.
    pub fn new(seed: u64, trace: bool) -> World {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let knobs = Knobs::draw(&mut rng);
        let voter_ids: Vec<NodeId> = (1..=knobs.voters as u16).map(NodeId).collect();
        let node_count = knobs.voters + knobs.learners;
        let mut world = World {
            seed,
            rng,
            now_us: 0,
            queue: BinaryHeap::new(),
            event_seq: 0,
            nodes: Vec::new(),
            clients: Vec::new(),
            blocked: vec![vec![0; node_count]; node_count],
            blocked_until_us: vec![vec![0; node_count]; node_count],
            block_epoch: 0,
            faults_on: true,
            stopping: false,
            liveness_started_us: 0,
            finished: false,
            checker: Checker::new(Voters::new(voter_ids), knobs.shards),
            violation: None,
            history: vec![Vec::new(); knobs.keys],
            acknowledged: Vec::new(),
            queries_answered: 0,
            leader_ballot: vec![None; knobs.shards],
            leader_changes: 0,
            events: 0,
            merged: 0,
            archived_reads: 0,
            snapshots: SnapshotCounts::default(),
            faults: FaultCounts::default(),
            actions: Vec::new(),
            trace: trace.then(String::new),
            trace_to_stdout: false,
            knobs,
        };
        for index in 0..node_count {
            let id = NodeId(index as u16 + 1);
            let shards = (0..world.knobs.shards).map(|_| world.fresh_shard()).collect();
            world.nodes.push(SimNode {
                id,
                up: true,
                restart_at_us: 0,
                incarnation: 0,
                paused_until_us: 0,
                shards,
                total: TotalApplier::new(
                    world.knobs.shards as u16,
                    KvStore::default(),
                    SIM_SESSIONS,
                ),
                merge_off: false,
                failing: false,
                damaged: false,
            });
            for shard in 0..world.knobs.shards {
                world.start_replica(index, shard);
            }
            let phase = world.rng.next_u64() % world.knobs.tick_us;
            world.schedule(phase, Event::Tick { node: index, incarnation: 0 });
        }
        for client in 0..world.knobs.clients {
            world.clients.push(SimClient::new(client as u64 + 1, &world.knobs));
            let think = between(&mut world.rng, 0, world.knobs.think_us);
            world.schedule(think, Event::ClientWake { client, token: 0, resend: false });
        }
        let first_fault = between(&mut world.rng, 0, world.knobs.fault_interval_us);
        world.schedule(first_fault, Event::Fault);
        let forced =
            between(&mut world.rng, world.knobs.safety_us / 4, world.knobs.safety_us * 3 / 4);
        world.schedule(forced, Event::ForceLeaderChange);
        world.schedule(world.knobs.safety_us, Event::EndSafety);
        world
    }

    fn fresh_shard(&self) -> ShardReplica {
        ShardReplica {
            replica: None,
            disk: SimDisk::new(self.knobs.wal_segment_bytes),
            applier: Applier::new(KvStore::default(), SIM_SESSIONS),
            waiting: BTreeMap::new(),
            arriving: Assembly::default(),
        }
    }

    fn config(&self, node: usize, shard: usize) -> Config {
        let voters: Vec<NodeId> = (1..=self.knobs.voters as u16).map(NodeId).collect();
        let learners: Vec<NodeId> = (self.knobs.voters as u16 + 1
            ..=(self.knobs.voters + self.knobs.learners) as u16)
            .map(NodeId)
            .collect();
        let mut config = Config::new(CLUSTER, self.nodes[node].id, voters);
        // The second learner relays through the first.
        if self.knobs.relay && learners.len() == 2 && self.nodes[node].id == learners[1] {
            config.upstream = Some(learners[0]);
        }
        config.learners = learners;
        config.heartbeat_interval_ticks = self.knobs.heartbeat_interval_ticks;
        config.election_timeout_ticks = self.knobs.election_timeout_ticks;
        config.pipeline_depth_max = self.knobs.pipeline_depth_max;
        config.batch_commands_max = self.knobs.batch_commands_max;
        config.message_runs_max = self.knobs.message_runs_max;
        config.batch_bytes_max = 16 * 1024;
        config.skip_slots_max = 64;
        config.accept_ahead_slots_max = 1 << 16;
        config.retain_slots = self.knobs.retain_slots;
        config.retain_bytes = self.knobs.retain_bytes;
        config.random_seed = self.seed
            ^ ((node as u64) << 48)
            ^ ((shard as u64) << 40)
            ^ self.nodes[node].incarnation;
        config
    }

    /// Builds the replica of `shard` on `node` from what its disk kept.
    fn start_replica(&mut self, node: usize, shard: usize) {
        let config = self.config(node, shard);
        let (snapshot, records) =
            self.nodes[node].shards[shard].disk.recover(CLUSTER, shard as u16);
        let mut replica = Replica::recovering(config).expect("simulator configurations are valid");
        let mut applier = Applier::new(KvStore::default(), SIM_SESSIONS);
        // Pieces of a peer's snapshot were held in memory only.
        self.nodes[node].shards[shard].arriving = Assembly::default();
        let mut from_slot = Slot(0);
        if let Some(snapshot) = snapshot {
            // As `Shard::open_with`: the state from the snapshot, then the log from there.
            from_slot = snapshot.header.slot;
            applier = Applier::restore(snapshot.body(), SIM_SESSIONS)
                .expect("simulated snapshots restore");
            replica.install_snapshot(from_slot, from_slot);
            self.nodes[node].merge_off = true;
            self.snapshots.restarts += 1;
        }
        for record in &records {
            replica.replay(record);
        }
        replica.finish_recovery();
        if let Some(reason) = self.nodes[node].shards[shard].disk.repair_reason() {
            self.trace(|| format!("n{} s{shard} repairs: {reason}", node + 1));
            let nonce = self.rng.next_u64();
            replica.start_repair(nonce);
            self.faults.repairs += u64::from(replica.is_repairing());
        }
        let promised = replica.promised();
        let slot = &mut self.nodes[node].shards[shard];
        slot.replica = Some(replica);
        slot.applier = applier;
        slot.waiting.clear();
        let id = self.nodes[node].id;
        let lost_state = self.nodes[node].damaged;
        let result = self.checker.on_replica_start(id, shard, promised, from_slot, lost_state);
        self.record(result);
        // Unsynced writes that survived the crash are acceptances too: the replica acts on them.
        let result = self.checker.on_durable(id, shard, &records);
        self.record(result);
    }

    fn schedule(&mut self, after_us: u64, event: Event) {
        self.event_seq += 1;
        self.queue.push(Scheduled { at_us: self.now_us + after_us, seq: self.event_seq, event });
    }

    fn record(&mut self, result: Result<(), Violation>) {
        if let Err(violation) = result {
            if self.violation.is_none() {
                self.violation = Some(violation);
            }
        }
    }

    /// Prints each trace line as it happens instead of collecting the trace.
    #[must_use]
    pub fn printing_trace(mut self) -> World {
        self.trace = Some(String::new());
        self.trace_to_stdout = true;
        self
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            if self.trace_to_stdout {
                println!("{:>10} {}", self.now_us, line());
                return;
            }
            let _ = writeln!(trace, "{:>10} {}", self.now_us, line());
        }
    }

    /// The trace so far (empty unless tracing).
    pub fn trace_text(&self) -> &str {
        self.trace.as_deref().unwrap_or("")
    }

    fn chance(&mut self, ppm: u64) -> bool {
        self.rng.next_u64() % 1_000_000 < ppm
    }

    // ----- The run -----------------------------------------------------------------------

    /// Runs the safety phase, then the liveness phase, then the final checks.
    pub fn run(mut self) -> (SeedReport, String) {
        while let Some(Scheduled { at_us, event, .. }) = self.queue.pop() {
            self.now_us = at_us;
            self.events += 1;
            self.handle(event);
            if self.violation.is_some() || self.finished {
                break;
            }
            if self.events >= EVENTS_MAX {
                let detail = format!("{EVENTS_MAX} events and not done: {}", self.liveness_state());
                self.record(Err(Violation { invariant: "liveness", detail }));
                break;
            }
        }
        if self.violation.is_none() && !self.finished {
            self.record(Err(Violation {
                invariant: "liveness",
                detail: "event queue ran dry".into(),
            }));
        }
        if self.violation.is_none() {
            let result = self.final_checks();
            self.record(result);
        }
        let report = SeedReport {
            seed: self.seed,
            violation: self.violation.clone(),
            commands: self.acknowledged.len() as u64 + self.queries_answered,
            leader_changes: self.leader_changes,
            simulated_us: self.now_us,
            events: self.events,
            merged: self.merged,
            archived_reads: self.archived_reads,
            faults: self.faults,
            snapshots: SnapshotCounts {
                released_bytes: self
                    .nodes
                    .iter()
                    .flat_map(|node| &node.shards)
                    .map(|shard| shard.disk.released_bytes)
                    .sum(),
                ..self.snapshots
            },
            knobs: self.knobs.clone(),
        };
        (report, self.trace.unwrap_or_default())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick { node, incarnation } => self.on_tick(node, incarnation),
            Event::Deliver { to, shard, from, message } => {
                self.on_deliver(to, shard, from, message)
            }
            Event::SyncDone { node, shard, incarnation } => {
                self.on_sync_done(node, shard, incarnation)
            }
            Event::ClientRequest { node, client, pending } => {
                self.on_client_request(node, client, pending)
            }
            Event::ClientReply { client, id, reply } => self.on_client_reply(client, id, reply),
            Event::ClientWake { client, token, resend } => {
                self.on_client_wake(client, token, resend)
            }
            Event::Fault => self.on_fault(),
            Event::ForceLeaderChange => self.on_force_leader_change(),
            Event::Restart { node } => self.restart(node),
            Event::Fail { node, incarnation } => {
                if self.nodes[node].up && self.nodes[node].incarnation == incarnation {
                    let downtime = between(&mut self.rng, 20_000, 300_000);
                    self.crash(node, downtime);
                }
            }
            Event::Unblock { links, epoch } => {
                if epoch == self.block_epoch {
                    for (from, to) in links {
                        self.blocked[from][to] -= 1;
                    }
                }
            }
            Event::EndSafety => self.end_safety(),
            Event::LivenessCheck => self.on_liveness_check(),
        }
    }

    /// If `node` is paused, puts the event back for when it resumes and returns true.
    fn deferred(&mut self, node: usize, event: impl FnOnce() -> Event) -> bool {
        let until = self.nodes[node].paused_until_us;
        if until > self.now_us {
            let event = event();
            self.event_seq += 1;
            self.queue.push(Scheduled { at_us: until, seq: self.event_seq, event });
            return true;
        }
        false
    }

    fn on_tick(&mut self, node: usize, incarnation: u64) {
        if !self.alive(node) || self.nodes[node].incarnation != incarnation {
            return;
        }
        if self.deferred(node, || Event::Tick { node, incarnation }) {
            return;
        }
        for shard in 0..self.knobs.shards {
            let skip = self.faults_on && self.chance(self.knobs.skip_ppm);
            let skip_slots = between(&mut self.rng, 1, 64);
            // Where this node's other shards have committed to: an idle shard's leader skips
            // up to there, so the merge moves on (Mencius).
            let others = self.nodes[node].shards.iter().enumerate().filter(|(k, _)| *k != shard);
            let target = others
                .filter_map(|(_, other)| other.replica.as_ref().map(Replica::commit_index))
                .max()
                .unwrap_or(Slot(0));
            let replica = self.replica(node, shard);
            replica.on_tick();
            if skip && replica.role() == RoleKind::Leader {
                let _ = replica.propose_skip(skip_slots);
            }
            replica.skip_to(target);
            self.drive(node, shard);
        }
        self.schedule(self.knobs.tick_us, Event::Tick { node, incarnation });
    }

    fn alive(&self, node: usize) -> bool {
        self.nodes[node].up && !self.nodes[node].failing
    }

    /// A disk call of `node` failed: like the node's process, it stops (at once, but as an
    /// event of its own, so that the step under way finishes first); nothing more leaves it.
    fn fail(&mut self, node: usize, error: &crate::shard::ShardError) {
        if self.nodes[node].failing {
            return;
        }
        self.trace(|| format!("n{} disk failed: {error}", node + 1));
        self.nodes[node].failing = true;
        let incarnation = self.nodes[node].incarnation;
        self.schedule(0, Event::Fail { node, incarnation });
    }

    fn replica(&mut self, node: usize, shard: usize) -> &mut Replica {
        self.nodes[node].shards[shard].replica.as_mut().expect("a live node has its replicas")
    }

    fn on_deliver(&mut self, to: usize, shard: usize, from: NodeId, message: Message) {
        if self.nodes[to].failing {
            return;
        }
        if !self.nodes[to].up {
            if self.faults_on && self.chance(self.knobs.held_for_restart_ppm) {
                // The sender's queue keeps it and resends once it reconnects to the restarted node.
                let resend_us = self.nodes[to].restart_at_us.saturating_sub(self.now_us)
                    + between(&mut self.rng, 0, 100_000);
                self.schedule(resend_us, Event::Deliver { to, shard, from, message });
            }
            return;
        }
        if self.deferred(to, || Event::Deliver { to, shard, from, message: message.clone() }) {
            return;
        }
        let id = self.nodes[to].id;
        self.trace(|| format!("n{} s{shard} <- n{} {}", id.0, from.0, describe(&message)));
        match message {
            Message::Snapshot { slot, offset, total, bytes, commit_index } => {
                // As `Shard::on_snapshot_message`.
                let commit = self.replica(to, shard).commit_index();
                let arriving = &mut self.nodes[to].shards[shard].arriving;
                match arriving.receive(commit, slot, offset, total, bytes, u64::MAX) {
                    Piece::Whole(bytes) => self.install_snapshot(to, shard, bytes, commit_index),
                    Piece::Pull(slot, offset) => {
                        self.snapshots.pulls += 1;
                        self.replica(to, shard).on_snapshot_piece();
                        self.net_send(to, from, shard, Message::SnapshotPull { slot, offset });
                    }
                    Piece::Ignored => {}
                }
                self.drive(to, shard);
                return;
            }
            Message::SnapshotPull { slot, offset } => {
                let (piece_bytes, commit) =
                    (self.knobs.snapshot_piece_bytes, self.replica(to, shard).commit_index());
                let disk = &mut self.nodes[to].shards[shard].disk;
                if let Some(piece) = disk.snapshot_piece(slot, offset, piece_bytes, commit) {
                    self.net_send(to, from, shard, piece);
                }
                return;
            }
            _ => {}
        }
        let envelope = Envelope { cluster_id: CLUSTER, from, message };
        // Correct replicas send only what a replica takes: a refusal (a value out of range, an
        // accept contradicting a chosen slot, I2) is a violation like an assertion.
        let taken = self.replica(to, shard).on_message(envelope);
        taken.expect("a replica takes what its correct peers send");
        self.drive(to, shard);
    }

    /// A peer's snapshot arrived: installed if ahead, as `Shard` does (checked, durable,
    /// then the state machine and the replica go on from it).
    fn install_snapshot(&mut self, node: usize, shard: usize, bytes: bytes::Bytes, commit: Slot) {
        // Commits a restart replayed may still wait to be applied: first those.
        self.drive(node, shard);
        if self.nodes[node].failing {
            return;
        }
        let snapshot = match Snapshot::decode(bytes, CLUSTER, shard as u16) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                // The network does not damage messages: pieces were put together wrongly.
                let detail = format!(
                    "n{} s{shard}: an assembled snapshot is refused: {error}",
                    self.nodes[node].id.0
                );
                return self.record(Err(Violation { invariant: "I9", detail }));
            }
        };
        let slot = snapshot.header.slot;
        if slot <= self.replica(node, shard).commit_index() {
            return;
        }
        let applier =
            Applier::restore(snapshot.body(), SIM_SESSIONS).expect("simulated snapshots restore");
        let id = self.nodes[node].id;
        self.trace(|| format!("n{} s{shard} installs snapshot at {}", id.0, slot.0));
        let replica = &mut self.nodes[node].shards[shard];
        if let Err(error) = replica.disk.install(&snapshot) {
            return self.fail(node, &error);
        }
        replica.applier = applier;
        self.nodes[node].merge_off = true;
        self.snapshots.installed += 1;
        let result = self.checker.on_install(id, shard, slot);
        self.record(result);
        self.replica(node, shard).install_snapshot(slot, commit);
    }

    /// Takes a snapshot if the replica wrote `snapshot_every_bytes` of log since the last,
    /// and lets its log release what it covers.
    fn maybe_snapshot(&mut self, node: usize, shard: usize) {
        let every = self.knobs.snapshot_every_bytes;
        if every == 0 || self.nodes[node].shards[shard].disk.bytes_since_snapshot() < every {
            return;
        }
        let id = self.nodes[node].id;
        let replica = self.nodes[node].shards[shard].replica.as_ref().expect("live");
        let (slot, promised, base) =
            (replica.commit_index(), replica.promised(), replica.log().base());
        let mut body = Vec::new();
        self.nodes[node].shards[shard].applier.snapshot(&mut body);
        let header = SnapshotHeader { cluster_id: CLUSTER, shard: shard as u16, slot };
        if let Err(error) =
            self.nodes[node].shards[shard].disk.take_snapshot(header, &body, base, promised)
        {
            return self.fail(node, &error);
        }
        self.snapshots.taken += 1;
        self.trace(|| format!("n{} s{shard} snapshot at {}", id.0, slot.0));
        let result = self.checker.on_snapshot(id, shard, slot);
        self.record(result);
    }

    fn on_sync_done(&mut self, node: usize, shard: usize, incarnation: u64) {
        if !self.alive(node) || self.nodes[node].incarnation != incarnation {
            return;
        }
        if self.deferred(node, || Event::SyncDone { node, shard, incarnation }) {
            return;
        }
        let (seq, records, replies) = match self.nodes[node].shards[shard].disk.complete_sync() {
            Ok(done) => done,
            Err(error) => return self.fail(node, &error),
        };
        let id = self.nodes[node].id;
        let result = self.checker.on_durable(id, shard, &records);
        self.record(result);
        self.replica(node, shard).on_persisted(seq);
        for (to, message) in replies {
            if to == id {
                let envelope = Envelope { cluster_id: CLUSTER, from: id, message };
                self.replica(node, shard).on_message(envelope).expect("own message");
            } else {
                self.net_send(node, to, shard, message);
            }
        }
        self.drive(node, shard);
    }

    /// Carries out the actions a replica produced, until it produces no more.
    fn drive(&mut self, node: usize, shard: usize) {
        let id = self.nodes[node].id;
        loop {
            let mut actions = std::mem::take(&mut self.actions);
            self.replica(node, shard).take_actions(&mut actions);
            if actions.is_empty() {
                self.actions = actions;
                break;
            }
            for action in actions.drain(..) {
                if self.nodes[node].failing {
                    continue; // The process is stopping: nothing it does takes effect.
                }
                match action {
                    Action::Send { to, message } => self.net_send(node, to, shard, message),
                    Action::Persist { seq, record, then_send } => {
                        let disk = &mut self.nodes[node].shards[shard].disk;
                        if let Err(error) = disk.write(seq, record, then_send) {
                            self.fail(node, &error);
                        }
                    }
                    Action::Commit { first_slot, count, value } => {
                        let result = self.checker.on_commit(id, shard, first_slot, count, &value);
                        self.record(result);
                        self.trace(|| {
                            format!(
                                "n{} s{shard} commit {}+{count} {}",
                                id.0,
                                first_slot.0,
                                value_text(&value)
                            )
                        });
                        self.apply(node, shard, &value);
                        self.merge(node, shard, first_slot, count, &value);
                    }
                    Action::Repaired => {
                        self.trace(|| format!("n{} s{shard} repaired", id.0));
                        let learner = self.replica(node, shard).config().is_learner();
                        self.faults.repaired += u64::from(!learner);
                        if !self.repairing(node) {
                            self.nodes[node].damaged = false;
                        }
                        if let Err(error) = self.nodes[node].shards[shard].disk.finish_repair() {
                            self.fail(node, &error);
                            continue;
                        }
                    }
                    Action::SendArchived { to, from_slot, end_slot, commit_index } => {
                        let runs_max = self.replica(node, shard).config().message_runs_max;
                        let limits =
                            (self.knobs.archive_read_bytes_max, self.knobs.snapshot_piece_bytes);
                        let disk = &mut self.nodes[node].shards[shard].disk;
                        let messages = disk.archived_messages(
                            from_slot,
                            end_slot,
                            commit_index,
                            runs_max,
                            limits,
                        );
                        self.archived_reads += 1;
                        self.trace(|| {
                            format!(
                                "n{} s{shard} archived {}..{} for n{}: {} messages",
                                id.0,
                                from_slot.0,
                                end_slot.0,
                                to.0,
                                messages.len()
                            )
                        });
                        for message in messages {
                            self.net_send(node, to, shard, message);
                        }
                    }
                }
            }
            self.actions = actions;
        }
        if self.nodes[node].failing {
            return;
        }
        self.maybe_snapshot(node, shard);
        let started = self.nodes[node].shards[shard].disk.maybe_start_sync();
        if started.as_ref().is_ok_and(|started| *started) {
            let latency = between(
                &mut self.rng,
                self.knobs.sync_min_us,
                self.knobs.sync_min_us + self.knobs.sync_jitter_us,
            );
            let incarnation = self.nodes[node].incarnation;
            self.schedule(latency, Event::SyncDone { node, shard, incarnation });
        }
        if let Err(error) = started {
            return self.fail(node, &error);
        }
        if self.nodes[node].failing {
            return;
        }
        let replica = self.nodes[node].shards[shard].replica.as_ref().expect("live");
        replica.check_invariants(false);
        if let Some(ballot) = replica.leader_ballot() {
            if self.leader_ballot[shard].is_none_or(|last| last < ballot) {
                if self.leader_ballot[shard].is_some() {
                    self.leader_changes += 1;
                }
                self.leader_ballot[shard] = Some(ballot);
                self.trace(|| format!("n{} s{shard} leads ballot {ballot}", id.0));
            }
        }
    }

    fn apply(&mut self, node: usize, shard: usize, value: &Value) {
        let Value::Batch(bytes) = value else { return };
        let id = self.nodes[node].id;
        let mut outcomes = Vec::new();
        self.nodes[node].shards[shard]
            .applier
            .apply_batch(bytes, |request, outcome| outcomes.push((request, outcome)))
            .expect("batches built by the simulator decode");
        for (request, outcome) in outcomes {
            let reply = match outcome {
                // A query is answered, not applied: asked again, it is answered again.
                Outcome::Applied(reply) if request.is_query() => reply,
                Outcome::Applied(reply) => {
                    let result = self.checker.on_applied(id, shard, request);
                    self.record(result);
                    reply
                }
                Outcome::Duplicate(reply) => reply,
                // A long-delayed copy of a request its client has long moved past (so it was
                // acknowledged, so applied): refusing it is exactly-once working.
                Outcome::Expired => continue,
                Outcome::Registered(session) => {
                    if let Some(client) = self.nodes[node].shards[shard].waiting.remove(&request) {
                        self.client_send(client, request, ClientReply::Registered(session));
                    }
                    continue;
                }
                // The simulator's clients are few and keep busy: below the eviction limits, and
                // they send only under sessions the shard registered.
                Outcome::SessionExpired => {
                    let detail = format!("n{} s{shard}: {request:?} has no session", id.0);
                    self.record(Err(Violation { invariant: "I9 sessions", detail }));
                    continue;
                }
            };
            if let Some(client) = self.nodes[node].shards[shard].waiting.remove(&request) {
                self.client_send(client, request, ClientReply::Applied(reply));
            }
        }
    }

    /// Feeds a commit to the node's merge and checks what comes out in global order.
    fn merge(&mut self, node: usize, shard: usize, first_slot: Slot, count: u64, value: &Value) {
        if self.nodes[node].merge_off {
            return;
        }
        let id = self.nodes[node].id;
        let committed = Committed { first_slot, count, value: value.clone() };
        let (checker, merged_count) = (&mut self.checker, &mut self.merged);
        let mut first_violation = None;
        let on_merged = |merged: &MergedBatch| {
            *merged_count += 1;
            if let Err(violation) = checker.on_merged(id, merged) {
                first_violation.get_or_insert(violation);
            }
        };
        let pushed =
            self.nodes[node].total.push_observed(shard as u16, &committed, on_merged, |_, _| {});
        if let Err(error) = pushed {
            let detail = format!("{id:?}: {error}");
            self.record(Err(Violation { invariant: "I11 one merged order", detail }));
        }
        if let Some(violation) = first_violation {
            self.record(Err(violation));
        }
    }

    fn delay(&mut self) -> u64 {
        if self.faults_on && self.chance(self.knobs.long_delay_ppm) {
            return between(&mut self.rng, self.knobs.delay_min_us, self.knobs.long_delay_max_us);
        }
        between(
            &mut self.rng,
            self.knobs.delay_min_us,
            self.knobs.delay_min_us + self.knobs.delay_jitter_us,
        )
    }

    fn net_send(&mut self, from: usize, to: NodeId, shard: usize, message: Message) {
        let to_index = to.0 as usize - 1;
        if self.blocked[from][to_index] > 0 {
            if self.chance(self.knobs.held_over_cut_ppm) {
                let held_us = self.blocked_until_us[from][to_index].saturating_sub(self.now_us)
                    + self.delay();
                let from_id = self.nodes[from].id;
                self.schedule(
                    held_us,
                    Event::Deliver { to: to_index, shard, from: from_id, message },
                );
            }
            return;
        }
        if self.faults_on && self.chance(self.knobs.loss_ppm) {
            return;
        }
        let from_id = self.nodes[from].id;
        if self.faults_on && self.chance(self.knobs.duplicate_ppm) {
            let delay = self.delay();
            self.schedule(
                delay,
                Event::Deliver { to: to_index, shard, from: from_id, message: message.clone() },
            );
        }
        let delay = self.delay();
        self.schedule(delay, Event::Deliver { to: to_index, shard, from: from_id, message });
    }

    // ----- Clients -----------------------------------------------------------------------

    fn client_send(&mut self, client: usize, id: RequestId, reply: ClientReply) {
        if self.faults_on && self.chance(self.knobs.loss_ppm) {
            return;
        }
        let delay = self.delay();
        self.schedule(delay, Event::ClientReply { client, id, reply });
    }

    fn on_client_wake(&mut self, client: usize, token: u64, resend: bool) {
        if self.clients[client].timer_token != token {
            return;
        }
        if self.clients[client].pending.is_none() {
            if !self.stopping {
                self.start_request(client);
            }
            return;
        }
        if !resend {
            // A timeout: the node may be down or cut off; try the next one.
            let pending = self.clients[client].pending.as_mut().expect("checked");
            let shard = pending.shard;
            pending.target = (pending.target + 1) % self.knobs.voters;
            self.clients[client].leader_hint[shard] = None;
        }
        self.send_request(client);
    }

    fn start_request(&mut self, client: usize) {
        let key = (self.rng.next_u64() % self.knobs.keys as u64) as usize;
        let state = &mut self.clients[client];
        state.sequence += 1;
        let fresh = (state.id << 32) | state.sequence;
        let op = match self.rng.next_u64() % 10 {
            0..=2 => KvOp::Get,
            3..=5 => KvOp::Put(fresh),
            6 => KvOp::Delete,
            _ => {
                let expected = if self.rng.next_u64() % 4 == 0 {
                    None
                } else {
                    self.clients[client].seen[key]
                };
                KvOp::CompareAndSet { expected, new: fresh }
            }
        };
        let shard = shard_for_key(&key_bytes(key), self.knobs.shards);
        let target = self.clients[client].leader_hint[shard]
            .unwrap_or_else(|| (self.rng.next_u64() % self.knobs.voters as u64) as usize);
        let sequence = self.clients[client].sequence | query_bit(&op);
        let (id, register, payload) = match self.clients[client].sessions[shard] {
            Some(session) => (RequestId { client: session, sequence }, false, encode(key, &op)),
            None => {
                let mut nonce = [0; 16];
                self.rng.fill_bytes(&mut nonce);
                let (register, payload) = register_request(nonce);
                (register, true, payload.to_vec())
            }
        };
        self.clients[client].pending =
            Some(Pending { id, register, key, shard, op, payload, invoke_us: self.now_us, target });
        self.send_request(client);
    }

    fn send_request(&mut self, client: usize) {
        let state = &mut self.clients[client];
        state.timer_token += 1;
        let token = state.timer_token;
        let mut pending = state.pending.clone().expect("a request to send");
        if let Some(hint) = state.leader_hint[pending.shard] {
            pending.target = hint;
        }
        state.pending.as_mut().expect("checked").target = pending.target;
        let timeout = self.knobs.client_timeout_us;
        self.schedule(timeout, Event::ClientWake { client, token, resend: false });
        if !(self.faults_on && self.chance(self.knobs.loss_ppm)) {
            let delay = self.delay();
            let node = pending.target;
            self.schedule(delay, Event::ClientRequest { node, client, pending });
        }
    }

    fn on_client_request(&mut self, node: usize, client: usize, pending: Pending) {
        if !self.alive(node) {
            return;
        }
        if self.deferred(node, || Event::ClientRequest { node, client, pending: pending.clone() }) {
            return;
        }
        let shard = pending.shard;
        let mut payload = pending.payload.clone();
        if pending.register {
            // The leader's entropy, as `Shard::propose` adds it.
            let mut entropy = [0; REGISTER_ENTROPY_BYTES];
            self.rng.fill_bytes(&mut entropy);
            let sealed = seal_register(&payload, entropy).expect("the simulator's nonces fit");
            payload = sealed.to_vec();
        }
        let replica = self.replica(node, shard);
        match replica.propose(pending.id, &payload) {
            Ok(()) => {
                replica.flush();
                self.nodes[node].shards[shard].waiting.insert(pending.id, client);
                self.drive(node, shard);
            }
            Err(ProposeError::NotLeader { hint }) => {
                let hint = hint.map(|id| id.0 as usize - 1);
                self.client_send(client, pending.id, ClientReply::Redirect(hint));
            }
            Err(ProposeError::Busy) => self.client_send(client, pending.id, ClientReply::Busy),
            Err(error) => panic!("simulated request refused: {error}"),
        }
    }

    /// A client's session on a shard is registered: the operation that waited for it goes
    /// now, under the new session, as if invoked now.
    fn on_registered(&mut self, client: usize, pending: Pending, session: u64) {
        let shard = pending.shard;
        let state = &mut self.clients[client];
        state.sessions[shard] = Some(session);
        state.leader_hint[shard] = Some(pending.target);
        let sequence = state.sequence | query_bit(&pending.op);
        let operation = Pending {
            id: RequestId { client: session, sequence },
            register: false,
            payload: encode(pending.key, &pending.op),
            invoke_us: self.now_us,
            ..pending
        };
        state.pending = Some(operation);
        self.trace(|| format!("client {client} s{shard}: session {session}"));
        self.send_request(client);
    }

    fn on_client_reply(&mut self, client: usize, id: RequestId, reply: ClientReply) {
        let Some(pending) = self.clients[client].pending.clone() else { return };
        if pending.id != id {
            return; // A late reply to an earlier attempt of a finished request.
        }
        match reply {
            ClientReply::Redirect(hint) => {
                let hint = hint.filter(|node| *node < self.knobs.voters && *node != pending.target);
                let state = &mut self.clients[client];
                state.leader_hint[pending.shard] = hint;
                if hint.is_none() {
                    state.pending.as_mut().expect("checked").target =
                        (pending.target + 1) % self.knobs.voters;
                }
                state.timer_token += 1;
                let token = state.timer_token;
                let backoff = if hint.is_some() { 0 } else { between(&mut self.rng, 1_000, 5_000) };
                self.schedule(backoff, Event::ClientWake { client, token, resend: true });
            }
            ClientReply::Busy => {
                let state = &mut self.clients[client];
                state.timer_token += 1;
                let token = state.timer_token;
                let backoff = between(&mut self.rng, 200, 2_000);
                self.schedule(backoff, Event::ClientWake { client, token, resend: true });
            }
            ClientReply::Registered(session) => self.on_registered(client, pending, session),
            ClientReply::Applied(reply) => {
                let result = result_of(&reply);
                let state = &mut self.clients[client];
                state.leader_hint[pending.shard] = Some(pending.target);
                state.seen[pending.key] = match &result {
                    super::linearizability::KvResult::Value(value) => *value,
                    super::linearizability::KvResult::CompareAndSet { succeeded: true, .. } => {
                        match pending.op {
                            KvOp::CompareAndSet { new, .. } => Some(new),
                            _ => None,
                        }
                    }
                    super::linearizability::KvResult::CompareAndSet { previous, .. } => *previous,
                    super::linearizability::KvResult::Done => match pending.op {
                        KvOp::Put(value) => Some(value),
                        _ => None,
                    },
                };
                state.pending = None;
                state.timer_token += 1;
                let token = state.timer_token;
                self.history[pending.key].push(Operation {
                    client,
                    op: pending.op.clone(),
                    invoke_us: pending.invoke_us,
                    complete: Some((self.now_us, result)),
                });
                if id.is_query() {
                    self.queries_answered += 1;
                } else {
                    self.acknowledged.push((pending.shard, id));
                }
                self.trace(|| format!("client {client} done {:?} -> {reply:?}", pending.op));
                let think = between(&mut self.rng, 0, self.knobs.think_us);
                self.schedule(think, Event::ClientWake { client, token, resend: false });
            }
        }
    }

    // ----- Faults ------------------------------------------------------------------------

    fn on_fault(&mut self) {
        if !self.faults_on {
            return;
        }
        let nodes = self.nodes.len();
        let node = (self.rng.next_u64() % nodes as u64) as usize;
        let duration = between(&mut self.rng, 20_000, 300_000);
        match self.rng.next_u64() % 8 {
            0 => self.crash(node, duration),
            5 => self.crash_damaging(node, duration),
            6 | 7 if !self.nodes[node].up => {}
            6 => {
                let shard = (self.rng.next_u64() % self.knobs.shards as u64) as usize;
                let disk = &self.nodes[node].shards[shard].disk;
                if self.rng.next_u64() % 2 == 0 {
                    disk.fail_next_sync();
                    self.trace(|| format!("n{} s{shard}: the next sync fails", node + 1));
                } else {
                    disk.fail_next_directory_sync();
                    self.trace(|| format!("n{} s{shard}: the next directory sync fails", node + 1));
                }
                self.faults.sync_errors += 1;
            }
            7 => {
                let shard = (self.rng.next_u64() % self.knobs.shards as u64) as usize;
                self.trace(|| format!("n{} s{shard}: the disk is full", node + 1));
                self.nodes[node].shards[shard].disk.fill();
                self.faults.full_disks += 1;
            }
            1 => {
                let links: Vec<(usize, usize)> = (0..nodes)
                    .filter(|other| *other != node)
                    .flat_map(|other| [(node, other), (other, node)])
                    .collect();
                self.trace(|| format!("isolate n{} for {duration}us", node + 1));
                self.block(links, duration);
            }
            2 => {
                let other =
                    (node + 1 + (self.rng.next_u64() % (nodes as u64 - 1)) as usize) % nodes;
                self.trace(|| format!("drop n{} -> n{} for {duration}us", node + 1, other + 1));
                self.block(vec![(node, other)], duration);
            }
            3 => {
                let side: Vec<bool> = (0..nodes).map(|_| self.rng.next_u64() % 2 == 0).collect();
                let links: Vec<(usize, usize)> = (0..nodes)
                    .flat_map(|a| (0..nodes).map(move |b| (a, b)))
                    .filter(|(a, b)| side[*a] != side[*b])
                    .collect();
                self.trace(|| format!("partition {side:?} for {duration}us"));
                self.block(links, duration);
            }
            4 => {
                self.trace(|| format!("pause n{} for {duration}us", node + 1));
                self.nodes[node].paused_until_us =
                    self.nodes[node].paused_until_us.max(self.now_us + duration);
            }
            _ => unreachable!("fault kinds are 0..8"),
        }
        let next = between(
            &mut self.rng,
            self.knobs.fault_interval_us / 2,
            self.knobs.fault_interval_us * 3 / 2,
        );
        self.schedule(next, Event::Fault);
    }

    /// Makes sure every seed sees at least one leader change: crash the leader of a shard.
    fn on_force_leader_change(&mut self) {
        if !self.faults_on {
            return;
        }
        let shard = (self.rng.next_u64() % self.knobs.shards as u64) as usize;
        let leader = (0..self.knobs.voters).find(|node| {
            self.nodes[*node].up
                && self.nodes[*node].shards[shard]
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.role() == RoleKind::Leader)
        });
        match leader {
            Some(node) => {
                let downtime = between(&mut self.rng, 50_000, 200_000);
                self.crash(node, downtime);
            }
            None => self.schedule(20_000, Event::ForceLeaderChange),
        }
    }

    fn block(&mut self, links: Vec<(usize, usize)>, duration: u64) {
        for (from, to) in &links {
            self.blocked[*from][*to] += 1;
            let until = &mut self.blocked_until_us[*from][*to];
            *until = (*until).max(self.now_us + duration);
        }
        let epoch = self.block_epoch;
        self.schedule(duration, Event::Unblock { links, epoch });
    }

    fn crash(&mut self, node: usize, downtime_us: u64) {
        if !self.nodes[node].up {
            return;
        }
        let downtime_us = if self.chance(self.knobs.quick_restart_ppm) {
            between(&mut self.rng, 1_000, 10_000)
        } else {
            downtime_us
        };
        self.nodes[node].restart_at_us = self.now_us + downtime_us;
        self.trace(|| format!("crash n{} for {downtime_us}us", node + 1));
        self.nodes[node].up = false;
        self.nodes[node].failing = false;
        self.nodes[node].incarnation += 1;
        for shard in 0..self.knobs.shards {
            let (survives, torn) = (self.knobs.unsynced_survives_ppm, self.knobs.torn_ppm);
            self.nodes[node].shards[shard].disk.crash(&mut self.rng, survives, torn);
            self.nodes[node].shards[shard].replica = None;
        }
        self.schedule(downtime_us, Event::Restart { node });
    }

    /// A crash that also damages the node's disks (bit rot, a zeroed page, the data directory
    /// gone), unless another node's storage is damaged and not yet repaired: the cluster keeps
    /// every acknowledged write only while a majority's storage is intact.
    fn crash_damaging(&mut self, node: usize, downtime_us: u64) {
        // A repair not finished (of damage, or of a new directory: a first start cut short)
        // means that node's storage may not hold what it acknowledged either.
        let other_damaged = self.nodes.iter().enumerate().any(|(other, state)| {
            other != node
                && (state.damaged || state.shards.iter().any(|shard| shard.disk.repair_marked()))
        });
        if !self.nodes[node].up || other_damaged {
            return;
        }
        self.crash(node, downtime_us);
        for shard in 0..self.knobs.shards {
            if self.rng.next_u64() % 2 == 0 {
                continue;
            }
            let Some(what) = self.nodes[node].shards[shard].disk.damage(&mut self.rng) else {
                continue;
            };
            self.trace(|| format!("n{} s{shard} disk damaged: {what}", node + 1));
            self.nodes[node].damaged = true;
            match what {
                "wiped" => self.faults.wiped += 1,
                "bit flipped" => self.faults.bit_flips += 1,
                _ => self.faults.zeroed += 1,
            }
        }
    }

    /// True while a replica of `node` repairs.
    fn repairing(&self, node: usize) -> bool {
        self.nodes[node]
            .shards
            .iter()
            .any(|shard| shard.replica.as_ref().is_some_and(crate::core::Replica::is_repairing))
    }

    fn restart(&mut self, node: usize) {
        if self.nodes[node].up {
            return;
        }
        self.trace(|| format!("restart n{}", node + 1));
        self.nodes[node].up = true;
        // The replicas commit again from slot 0, so the merge starts over too.
        self.nodes[node].total =
            TotalApplier::new(self.knobs.shards as u16, KvStore::default(), SIM_SESSIONS);
        let id = self.nodes[node].id;
        self.checker.on_merge_start(id);
        for shard in 0..self.knobs.shards {
            self.start_replica(node, shard);
        }
        if !self.repairing(node) {
            self.nodes[node].damaged = false;
        }
        let incarnation = self.nodes[node].incarnation;
        self.schedule(self.knobs.tick_us, Event::Tick { node, incarnation });
    }

    // ----- Liveness ----------------------------------------------------------------------

    fn end_safety(&mut self) {
        // A run too faulty to commit a meaningful history is given more time under faults,
        // so that every seed exercises the protocol, not just the election timer.
        let commands = self.acknowledged.len() as u64 + self.queries_answered;
        if commands < COMMANDS_PER_SEED_MIN && self.now_us < 8 * self.knobs.safety_us {
            self.schedule(500_000, Event::EndSafety);
            return;
        }
        self.trace(|| "safety phase over: faults stop".to_string());
        self.faults_on = false;
        self.stopping = true;
        self.liveness_started_us = self.now_us;
        self.block_epoch += 1;
        for row in &mut self.blocked {
            row.iter_mut().for_each(|count| *count = 0);
        }
        for node in 0..self.nodes.len() {
            self.nodes[node].paused_until_us = self.nodes[node].paused_until_us.min(self.now_us);
            self.restart(node);
        }
        self.schedule(10_000, Event::LivenessCheck);
    }

    fn on_liveness_check(&mut self) {
        if self.now_us - self.liveness_started_us > LIVENESS_BOUND_US {
            let detail = self.liveness_state();
            self.record(Err(Violation { invariant: "liveness", detail }));
            return;
        }
        let requests_done = self.clients.iter().all(|client| client.pending.is_none());
        let leaders = (0..self.knobs.shards).all(|shard| self.shard_leader(shard).is_some());
        let caught_up = (0..self.knobs.shards).all(|shard| {
            let commits: Vec<u64> = self
                .nodes
                .iter()
                .map(|node| node.shards[shard].replica.as_ref().map_or(0, |r| r.commit_index().0))
                .collect();
            commits.iter().all(|commit| *commit == commits[0])
        });
        let merged =
            self.nodes.iter().filter(|node| !node.merge_off).all(|node| {
                self.checker.merged_complete(node.id, node.total.next_position()).is_ok()
            });
        if requests_done && leaders && caught_up && merged {
            self.trace(|| {
                "liveness reached: leaders elected, requests done, replicas caught up".to_string()
            });
            self.finished = true;
            return;
        }
        self.schedule(10_000, Event::LivenessCheck);
    }

    fn shard_leader(&self, shard: usize) -> Option<usize> {
        (0..self.knobs.voters).find(|node| {
            self.nodes[*node].shards[shard]
                .replica
                .as_ref()
                .is_some_and(|r| r.role() == RoleKind::Leader)
        })
    }

    fn liveness_state(&self) -> String {
        let mut text = String::new();
        for shard in 0..self.knobs.shards {
            let _ = write!(
                text,
                "shard {shard}: leader {:?}; ",
                self.shard_leader(shard).map(|n| n + 1)
            );
            for node in &self.nodes {
                if let Some(replica) = &node.shards[shard].replica {
                    let _ = write!(
                        text,
                        "n{} {:?} commit {} promised {}; ",
                        node.id.0,
                        replica.role(),
                        replica.commit_index().0,
                        replica.promised()
                    );
                }
            }
        }
        let merges: Vec<u64> = self.nodes.iter().map(|node| node.total.next_position()).collect();
        let _ = write!(text, "merged up to positions {merges:?}; ");
        let pending = self.clients.iter().filter(|client| client.pending.is_some()).count();
        let _ = write!(text, "clients waiting: {pending}");
        text
    }

    fn final_checks(&mut self) -> Result<(), Violation> {
        for node in &self.nodes {
            for shard in &node.shards {
                shard.replica.as_ref().expect("all nodes are up at the end").check_invariants(true);
            }
        }
        let merging: Vec<&SimNode> = self.nodes.iter().filter(|node| !node.merge_off).collect();
        for node in &merging {
            self.checker.merged_complete(node.id, node.total.next_position())?;
        }
        // Every replica of a shard applied the same slots (they are caught up): the same state,
        // whether rebuilt from the log or from a snapshot.
        for shard in 0..self.knobs.shards {
            let first = &self.nodes[0].shards[shard].applier;
            for node in &self.nodes {
                if node.shards[shard].applier.machine().summary() != first.machine().summary() {
                    return Err(Violation {
                        invariant: "I9 applied exactly once",
                        detail: format!(
                            "{:?} shard {shard}'s state differs from node 1's at the same commit \
                             position",
                            node.id
                        ),
                    });
                }
            }
        }
        // Every node applied the same merged order to one state machine: the same state.
        let Some(first) = merging.first().map(|node| &node.total) else { return Ok(()) };
        for node in &merging {
            if node.total.machine().summary() != first.machine().summary() {
                return Err(Violation {
                    invariant: "I11 one merged order",
                    detail: format!(
                        "{:?}'s total-order state differs from node 1's (positions {} and {})",
                        node.id,
                        node.total.next_position(),
                        first.next_position()
                    ),
                });
            }
        }
        let all: Vec<NodeId> = self.nodes.iter().map(|node| node.id).collect();
        self.checker.check_acknowledged_applied_everywhere(&self.acknowledged, &all)?;
        for (key, operations) in self.history.iter().enumerate() {
            check_key(operations).map_err(|detail| Violation {
                invariant: "I10 linearizable",
                detail: format!("key {key}: {detail}"),
            })?;
        }
        Ok(())
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::Noop => "noop".to_string(),
        Value::Batch(bytes) => {
            let commands = crate::core::BatchReader::new(bytes).count();
            format!("batch of {commands} ({} bytes)", bytes.len())
        }
    }
}

/// A one-line description of a message for the trace.
fn describe(message: &Message) -> String {
    match message {
        Message::Snapshot { slot, offset, total, bytes, commit_index } => format!(
            "snapshot at {} bytes {offset}+{} of {total} commit {}",
            slot.0,
            bytes.len(),
            commit_index.0
        ),
        Message::SnapshotPull { slot, offset } => {
            format!("snapshot-pull at {} from {offset}", slot.0)
        }
        Message::Probe { round, commit_index } => {
            format!("probe round {round} commit {}", commit_index.0)
        }
        Message::ProbeReply { round, granted, promised } => {
            format!("probe-reply round {round} granted {granted} promised {promised}")
        }
        Message::Prepare { ballot, from_slot } => format!("prepare {ballot} from {}", from_slot.0),
        Message::Promise { ballot, from_slot, runs, next_slot } => {
            format!(
                "promise {ballot} from {} runs {} next {:?}",
                from_slot.0,
                runs.len(),
                next_slot.map(|s| s.0)
            )
        }
        Message::Accept { ballot, first_slot, count, value, commit_index } => format!(
            "accept {ballot} {}+{count} {} commit {}",
            first_slot.0,
            value_text(value),
            commit_index.0
        ),
        Message::Accepted { ballot, first_slot, count } => {
            format!("accepted {ballot} {}+{count}", first_slot.0)
        }
        Message::Rejected { ballot, promised } => format!("rejected {ballot} promised {promised}"),
        Message::Heartbeat { ballot, commit_index } => {
            format!("heartbeat {ballot} commit {}", commit_index.0)
        }
        Message::HeartbeatAck { ballot } => format!("heartbeat-ack {ballot}"),
        Message::CatchUpRequest { from_slot } => format!("catch-up-request from {}", from_slot.0),
        Message::Subscribe { from_slot } => format!("subscribe from {}", from_slot.0),
        Message::Chosen { runs, commit_index } => {
            format!("chosen runs {} commit {}", runs.len(), commit_index.0)
        }
        Message::RepairQuery { nonce } => format!("repair-query {nonce:x}"),
        Message::RepairReport { nonce, promised, slot_end, commit_index } => format!(
            "repair-report {nonce:x} promised {promised} end {} commit {}",
            slot_end.0, commit_index.0
        ),
    }
}

/// Gets go as queries (protocol.md §5.2): answered where they are ordered, never applied.
fn query_bit(op: &KvOp) -> u64 {
    if matches!(op, KvOp::Get) { RequestId::QUERY_BIT } else { 0 }
}
