//! The simulated world: nodes of shard replicas, their disks, a network, clients and a fault
//! schedule, driven by one seeded event queue. Everything that happens is a function of the
//! seed, so a failing seed replays exactly (docs/simulator.md).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use quorum_wal::{PendingSync, SimBackend};

use crate::core::Slot;
use crate::core::{
    Ballot, ClusterId, Config, Consistency, Envelope, Message, NodeId, ProposeError, ReadOptions,
    ReadPath, Replica, RequestId, RoleKind, Value, Voters,
};
use crate::machine::kv::{CoordCommand, CoordReply, KeyRange};
use crate::machine::merge::MergedBatch;
use crate::machine::{
    AppliedCommand, KvReply, NodeMachine, Outcome, SessionLimits, StateMachine as _,
    register_request, shard_for_key,
};
use crate::shard::{PendingSnapshot, Shard, ShardError, ShardSettings};

/// The simulated replicas' session limits: a small reply window, so that it moves.
const SIM_SESSIONS: SessionLimits = SessionLimits::with_replies_max(16);
use crate::machine::total_order::{Committed, TotalApplier};

use super::checkers::{Checker, Violation};
use super::client::{ClientReply, Pending, Role, SimClient, key_bytes, result_of};
use super::coord::{
    CoordChecker, CoordStep, Locker, Next, WATCHED_PREFIX, Watcher, check_watcher, lock_name,
    txn_result,
};
use super::disk::SimDisk;
use super::knobs::SimOptions;
use super::knobs::{Knobs, between};
use super::linearizability::{KvOp, Operation, check_key};
use super::reads::{StaleRead, anywhere, check_monotonic, check_stale_reads, draw_read};
use super::recorder::{Observed, Recorder};
use super::report::{COMMANDS_PER_SEED_MIN, FaultCounts, ReadCounts, SeedReport, SnapshotCounts};

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
    /// A snapshot file's write (the shard's own, or a peer's being installed) completes.
    SnapshotDone {
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
    /// With the clock bound broken: a leader's clock runs slow for a while.
    ClockFault,
    /// The clock fault on `node` ends.
    ClockHeal {
        node: usize,
    },
    ForceLeaderChange,
    /// A shard's leader is asked to hand its leadership to another voter (protocol.md §3.10).
    MoveLeader,
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

/// The shard the node runs, over the simulated disk, with the simulator's hooks.
type SimShard = Shard<SimBackend, NodeMachine, Recorder>;

struct ShardReplica {
    /// The running shard (none while its node is down).
    shard: Option<SimShard>,
    disk: SimDisk,
    /// Which client waits for each request proposed here.
    waiting: BTreeMap<RequestId, usize>,
    /// The sync under way, completed by `Event::SyncDone`.
    syncing: Option<PendingSync>,
    /// The snapshot file being written, completed by `Event::SnapshotDone`.
    snapshotting: Option<PendingSnapshot<SimBackend>>,
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
    total: TotalApplier<NodeMachine>,
    /// A replica of this node started from a snapshot: its commits no longer start at slot
    /// 0, so the merge (which needs every slot) is not fed or checked from then on.
    merge_off: bool,
    /// A disk call failed: the node does nothing more until it stops (`Event::Fail`).
    failing: bool,
    /// Its disks were damaged or wiped and a replica has not finished repairing since: its
    /// storage is not intact, so no other node's is damaged meanwhile (a majority keeps
    /// every acknowledged write, the promise the checkers hold the cluster to).
    damaged: bool,
    /// Its clock: a rate in millionths of real time, and the tick count it gave this
    /// incarnation's replicas since it started (`clock_start_us`). Ticks follow the clock: a
    /// node that was paused gets every tick it missed before it handles anything else, as
    /// the runtime's clock does (protocol.md §5.4).
    clock: NodeClock,
}

/// A node's clock (see [`SimNode::clock`]): `base` ticks at `start_us`, then one every
/// `tick_us` of its own time, which runs at `rate_ppm` millionths of real time.
#[derive(Clone, Copy, Debug)]
struct NodeClock {
    rate_ppm: u64,
    /// Its usual rate (within the drift bound); a clock fault changes `rate_ppm` for a while.
    usual_ppm: u64,
    start_us: u64,
    base: u64,
    given: u64,
}

impl NodeClock {
    fn new(rate_ppm: u64, start_us: u64) -> NodeClock {
        NodeClock { rate_ppm, usual_ppm: rate_ppm, start_us, base: 0, given: 0 }
    }

    /// Ticks of `tick_us` on this clock from its start to `now_us`.
    fn ticks_at(&self, now_us: u64, tick_us: u64) -> u64 {
        let elapsed = u128::from(now_us.saturating_sub(self.start_us));
        self.base + (elapsed * u128::from(self.rate_ppm) / (1_000_000 * u128::from(tick_us))) as u64
    }

    /// Real microseconds from `now_us` to this clock's next tick.
    fn until_next_tick(&self, now_us: u64, tick_us: u64) -> u64 {
        let next = u128::from(self.given + 1 - self.base) * u128::from(tick_us) * 1_000_000;
        let at = u128::from(self.start_us) + next.div_ceil(u128::from(self.rate_ppm));
        (at as u64).saturating_sub(now_us).max(1)
    }

    /// Runs at `rate_ppm` from `now_us` on, having counted what it had so far.
    fn set_rate(&mut self, now_us: u64, tick_us: u64, rate_ppm: u64) {
        self.base = self.ticks_at(now_us, tick_us).max(self.given);
        self.start_us = now_us;
        self.rate_ppm = rate_ppm;
    }

    /// A new process on this node: ticks from zero, from now, at the usual rate.
    fn restart(&mut self, now_us: u64) {
        *self = NodeClock::new(self.usual_ppm, now_us);
    }
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
    /// Queries answered by a read index, without the log.
    read_index_reads: u64,
    /// Reads answered, per consistency, and what became of them.
    reads: ReadCounts,
    /// The stale reads answered, checked against the chosen log at the end (I12).
    stale_reads: Vec<StaleRead>,
    snapshots: SnapshotCounts,
    faults: FaultCounts,
    trace: Option<String>,
    /// Print trace lines as they happen (so a panic still leaves the trace up to it).
    trace_to_stdout: bool,
    /// The coordination workload's checkers (C1, C2) and counts.
    coord: CoordChecker,
    /// What the run is run with (the planted bugs among them).
    options: SimOptions,
}

impl World {
    /// A world drawn from `seed`; with `trace`, every event is written to a readable trace.
    pub fn new(seed: u64, trace: bool) -> World {
        World::with_options(seed, trace, SimOptions::default())
    }

    /// A world drawn from `seed`, clocks as `options` say.
    pub fn with_options(seed: u64, trace: bool, options: SimOptions) -> World {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let knobs = Knobs::draw_with(&mut rng, options);
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
            read_index_reads: 0,
            reads: ReadCounts::default(),
            stale_reads: Vec::new(),
            snapshots: SnapshotCounts::default(),
            faults: FaultCounts::default(),
            trace: trace.then(String::new),
            trace_to_stdout: false,
            coord: CoordChecker::default(),
            options,
            knobs,
        };
        for index in 0..node_count {
            world.add_node(index);
        }
        for client in 0..world.knobs.clients {
            let mut state = SimClient::new(client as u64 + 1, &world.knobs);
            state.role = world.draw_role(client);
            world.clients.push(state);
            let think = between(&mut world.rng, 0, world.knobs.think_us);
            world.schedule(think, Event::ClientWake { client, token: 0, resend: false });
        }
        let first_fault = between(&mut world.rng, 0, world.knobs.fault_interval_us);
        world.schedule(first_fault, Event::Fault);
        let forced =
            between(&mut world.rng, world.knobs.safety_us / 4, world.knobs.safety_us * 3 / 4);
        world.schedule(forced, Event::ForceLeaderChange);
        let moved = between(&mut world.rng, 0, world.knobs.fault_interval_us * 2);
        world.schedule(moved, Event::MoveLeader);
        if world.knobs.clock_faults {
            world.schedule(forced / 2, Event::ClockFault);
        }
        world.schedule(world.knobs.safety_us, Event::EndSafety);
        world
    }

    /// What client `client` does: the first ones lock, the next ones watch, the rest read
    /// and write the shared keys.
    fn draw_role(&mut self, client: usize) -> Role {
        let (lockers, watchers) = (self.knobs.lockers, self.knobs.watchers);
        if client < lockers {
            return Role::Locker(Locker::new(client % self.knobs.locks));
        }
        if client >= lockers + watchers {
            return Role::Kv;
        }
        let limit = between(&mut self.rng, 1, 8) as u32;
        // Half the watchers wait at the leader for changes (held reads), briefly against the
        // clients' timeouts.
        let wait_ms = [0, 0, 2, 20][between(&mut self.rng, 0, 3) as usize];
        Role::Watcher(Watcher::new(limit, wait_ms))
    }

    /// Node `index`: its shards started, its clock at a random phase.
    fn add_node(&mut self, index: usize) {
        let id = NodeId(index as u16 + 1);
        let shards = (0..self.knobs.shards).map(|_| self.fresh_shard()).collect();
        let phase = self.rng.next_u64() % self.knobs.tick_us;
        let rate_ppm = self.knobs.clock_rate_ppm[index];
        self.nodes.push(SimNode {
            id,
            up: true,
            restart_at_us: 0,
            incarnation: 0,
            paused_until_us: 0,
            shards,
            total: TotalApplier::new(
                self.knobs.shards as u16,
                NodeMachine::default(),
                SIM_SESSIONS,
            ),
            merge_off: false,
            failing: false,
            damaged: false,
            clock: NodeClock::new(rate_ppm, phase),
        });
        for shard in 0..self.knobs.shards {
            self.start_replica(index, shard);
        }
        self.schedule(phase + 1, Event::Tick { node: index, incarnation: 0 });
    }

    fn fresh_shard(&self) -> ShardReplica {
        ShardReplica {
            shard: None,
            disk: SimDisk::new(self.knobs.wal_segment_bytes),
            waiting: BTreeMap::new(),
            syncing: None,
            snapshotting: None,
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
        config.read_lease = self.knobs.read_lease;
        config.max_clock_drift_ppm =
            if self.options.leases_ignore_drift { 0 } else { self.knobs.max_clock_drift_ppm };
        config
    }

    /// Opens the shard `shard` of `node` on what its disk kept, as a node's start does: the
    /// snapshot, then the log from there; a replica whose log lost what it held repairs.
    fn start_replica(&mut self, node: usize, shard: usize) {
        let config = self.config(node, shard);
        let settings = ShardSettings {
            shard: shard as u16,
            shards: self.knobs.shards as u16,
            snapshot_every_bytes: self.knobs.snapshot_every_bytes,
            snapshot_piece_bytes: self.knobs.snapshot_piece_bytes,
            archive_read_bytes_max: self.knobs.archive_read_bytes_max,
            repair_nonce: self.rng.next_u64(),
            tick_us: self.knobs.tick_us,
            ..ShardSettings::new(SIM_SESSIONS)
        };
        let hooks = Recorder::new(self.rng.next_u64());
        let state = &mut self.nodes[node].shards[shard];
        state.waiting.clear();
        let (backend, options) = (state.disk.to_start(), state.disk.options());
        // The simulated disk only loses or tears unsynced writes, or is damaged where the
        // WAL tells (then the replica repairs): recovery never fails.
        let opened =
            Shard::open_hooked(config, backend, options, NodeMachine::default(), settings, hooks)
                .unwrap_or_else(|error| panic!("n{} s{shard} cannot start: {error}", node + 1));
        let from_slot = opened.snapshot_stats().current.map_or(Slot(0), |(slot, _)| slot);
        let promised = opened.replica().promised();
        let repairing = opened.replica().is_repairing();
        state.disk.opened(opened.wal().durable_position());
        state.shard = Some(opened);
        if from_slot > Slot(0) {
            self.nodes[node].merge_off = true;
            self.snapshots.restarts += 1;
        }
        if repairing {
            self.trace(|| format!("n{} s{shard} repairs", node + 1));
            self.faults.repairs += 1;
        }
        let id = self.nodes[node].id;
        let lost_state = self.nodes[node].damaged;
        let result = self.checker.on_replica_start(id, shard, promised, from_slot, lost_state);
        self.record(result);
        // The records it read back (unsynced writes that survived the crash are acceptances
        // too: the replica acts on them), and what it committed and applied from them.
        self.observe(node, shard);
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
            read_index_reads: self.read_index_reads,
            reads: self.reads,
            faults: self.faults,
            coord: self.coord.counts,
            snapshots: SnapshotCounts {
                released_bytes: self
                    .nodes
                    .iter()
                    .flat_map(|node| &node.shards)
                    .map(|shard| {
                        let running = shard.shard.as_ref().map(|s| s.snapshot_stats());
                        shard.disk.released_bytes + running.map_or(0, |stats| stats.released_bytes)
                    })
                    .sum(),
                refused: self
                    .nodes
                    .iter()
                    .flat_map(|node| &node.shards)
                    .map(|shard| {
                        let running = shard.shard.as_ref().map(|s| s.snapshot_stats().refused);
                        shard.disk.refused_snapshots + running.unwrap_or(0)
                    })
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
            Event::SnapshotDone { node, shard, incarnation } => {
                self.on_snapshot_done(node, shard, incarnation)
            }
            Event::ClientRequest { node, client, pending } => {
                self.on_client_request(node, client, pending)
            }
            Event::ClientReply { client, id, reply } => self.on_client_reply(client, id, reply),
            Event::ClientWake { client, token, resend } => {
                self.on_client_wake(client, token, resend)
            }
            Event::Fault => self.on_fault(),
            Event::ClockFault => self.on_clock_fault(),
            Event::ClockHeal { node } => {
                // The ticks owed at the old rate stay owed: `set_rate` counts them in.
                let (now, tick, clock) =
                    (self.now_us, self.knobs.tick_us, &mut self.nodes[node].clock);
                clock.set_rate(now, tick, clock.usual_ppm);
                self.trace(|| format!("n{}'s clock runs at its usual rate again", node + 1));
            }
            Event::ForceLeaderChange => self.on_force_leader_change(),
            Event::MoveLeader => self.on_move_leader(),
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
        self.catch_up_clock(node);
        let next = self.nodes[node].clock.until_next_tick(self.now_us, self.knobs.tick_us);
        self.schedule(next, Event::Tick { node, incarnation });
    }

    /// Gives `node`'s replicas every tick its clock has passed since the last: at a tick of
    /// its own, and before it handles anything else (after a pause, many at once).
    fn catch_up_clock(&mut self, node: usize) {
        let clock = &mut self.nodes[node].clock;
        let due = clock.ticks_at(self.now_us, self.knobs.tick_us).saturating_sub(clock.given);
        if due == 0 {
            return;
        }
        clock.given += due;
        for shard in 0..self.knobs.shards {
            if self.nodes[node].failing {
                break; // The process is stopping.
            }
            let skip = self.faults_on && self.chance(self.knobs.skip_ppm);
            let skip_slots = between(&mut self.rng, 1, 64);
            // Where this node's other shards have committed to: an idle shard's leader skips
            // up to there, so the merge moves on (Mencius).
            let target = (0..self.knobs.shards)
                .filter(|other| *other != shard)
                .filter_map(|other| self.replica(node, other).map(Replica::commit_index))
                .max()
                .unwrap_or(Slot(0));
            let running = self.shard_mut(node, shard);
            let mut result = running.on_ticks(due);
            if result.is_ok() && skip && running.replica().role() == RoleKind::Leader {
                result = running.propose_skip(skip_slots);
            }
            if result.is_ok() {
                result = running.skip_to(target);
            }
            if let Err(error) = result {
                self.fail(node, &error);
            }
            self.settle(node, shard);
        }
    }

    fn alive(&self, node: usize) -> bool {
        self.nodes[node].up && !self.nodes[node].failing
    }

    /// A disk call of `node` failed: like the node's process, it stops (at once, but as an
    /// event of its own, so that the step under way finishes first); nothing more leaves it.
    fn fail(&mut self, node: usize, error: &ShardError) {
        if self.nodes[node].failing {
            return;
        }
        self.trace(|| format!("n{} disk failed: {error}", node + 1));
        self.nodes[node].failing = true;
        let incarnation = self.nodes[node].incarnation;
        self.schedule(0, Event::Fail { node, incarnation });
    }

    /// The replica of `shard` on `node`, if its node is up.
    fn replica(&self, node: usize, shard: usize) -> Option<&Replica> {
        self.nodes[node].shards[shard].shard.as_ref().map(Shard::replica)
    }

    /// The running shard `shard` of `node`.
    fn shard_mut(&mut self, node: usize, shard: usize) -> &mut SimShard {
        self.nodes[node].shards[shard].shard.as_mut().expect("a live node has its shards")
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
        self.catch_up_clock(to);
        if !self.alive(to) {
            return;
        }
        let id = self.nodes[to].id;
        self.trace(|| format!("n{} s{shard} <- n{} {}", id.0, from.0, describe(&message)));
        let envelope = Envelope { cluster_id: CLUSTER, from, message };
        match self.shard_mut(to, shard).on_message(envelope) {
            Ok(Ok(())) => {}
            // Correct replicas send only what a replica takes: a refusal (a value out of
            // range, an accept contradicting a chosen slot, I2) is a violation like an
            // assertion.
            Ok(Err(refused)) => panic!("a replica refused its correct peer's message: {refused}"),
            Err(error) => self.fail(to, &error),
        }
        self.settle(to, shard);
    }

    fn on_sync_done(&mut self, node: usize, shard: usize, incarnation: u64) {
        if !self.alive(node) || self.nodes[node].incarnation != incarnation {
            return;
        }
        if self.deferred(node, || Event::SyncDone { node, shard, incarnation }) {
            return;
        }
        self.catch_up_clock(node);
        if !self.alive(node) {
            return;
        }
        let state = &mut self.nodes[node].shards[shard];
        let pending = state.syncing.take().expect("a sync under way");
        let running = state.shard.as_mut().expect("a live node has its shards");
        match running.finish_sync(pending.run()) {
            Ok(()) => state.disk.synced(running.wal().durable_position()),
            Err(error) => self.fail(node, &error),
        }
        self.settle(node, shard);
    }

    /// A snapshot file is durable (or its write failed): the shard goes on from it.
    fn on_snapshot_done(&mut self, node: usize, shard: usize, incarnation: u64) {
        if !self.alive(node) || self.nodes[node].incarnation != incarnation {
            return;
        }
        if self.deferred(node, || Event::SnapshotDone { node, shard, incarnation }) {
            return;
        }
        self.catch_up_clock(node);
        if !self.alive(node) {
            return;
        }
        let state = &mut self.nodes[node].shards[shard];
        let pending = state.snapshotting.take().expect("a snapshot being written");
        let running = state.shard.as_mut().expect("a live node has its shards");
        let taken = running.snapshot_stats().taken;
        let result = running.finish_snapshot(pending.run());
        self.snapshots.taken += running.snapshot_stats().taken - taken;
        if let Err(error) = result {
            self.fail(node, &error);
        }
        self.settle(node, shard);
    }

    /// After a step of a shard: hands what it did to the checkers, sends what it sent,
    /// answers the clients it answered, and starts the disk work it wants (a sync, a
    /// snapshot's write), each completing as an event of its own.
    fn settle(&mut self, node: usize, shard: usize) {
        self.observe(node, shard);
        if self.nodes[node].failing {
            return; // The process is stopping: nothing it does takes effect.
        }
        let (mut outbox, mut replies) = (Vec::new(), Vec::new());
        let running = self.shard_mut(node, shard);
        running.take_outbox(&mut outbox);
        running.take_replies(&mut replies);
        for (to, message) in outbox {
            if let Message::SnapshotPull { .. } = message {
                self.snapshots.pulls += 1;
            }
            self.net_send(node, to, shard, message);
        }
        for command in replies {
            self.answer(node, shard, command);
        }
        let mut aborted = Vec::new();
        self.shard_mut(node, shard).take_aborted_reads(&mut aborted);
        for (id, hint) in aborted {
            if let Some(client) = self.nodes[node].shards[shard].waiting.remove(&id) {
                let hint = hint.map(|hint| usize::from(hint.0) - 1);
                self.client_send(client, id, ClientReply::Redirect(hint));
            }
        }
        self.start_disk_work(node, shard);
        if self.nodes[node].failing {
            return;
        }
        let id = self.nodes[node].id;
        let replica = self.replica(node, shard).expect("a live node has its shards");
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

    /// Starts the shard's next sync and snapshot write, if it wants them and none is under
    /// way; each completes after a simulated disk latency.
    fn start_disk_work(&mut self, node: usize, shard: usize) {
        let id = self.nodes[node].id;
        let incarnation = self.nodes[node].incarnation;
        let state = &mut self.nodes[node].shards[shard];
        let running = state.shard.as_mut().expect("a live node has its shards");
        if state.snapshotting.is_none() {
            if let Some(pending) = running.start_snapshot() {
                let slot = pending.slot();
                if !pending.is_install() {
                    // Its image is taken: what it holds is what the replica applied so far.
                    let result = self.checker.on_snapshot(id, shard, slot);
                    self.record(result);
                    self.trace(|| format!("n{} s{shard} snapshot at {}", id.0, slot.0));
                }
                self.nodes[node].shards[shard].snapshotting = Some(pending);
                let latency = self.disk_latency();
                self.schedule(latency, Event::SnapshotDone { node, shard, incarnation });
            }
        }
        let state = &mut self.nodes[node].shards[shard];
        if state.syncing.is_none() {
            let running = state.shard.as_mut().expect("a live node has its shards");
            match running.start_sync() {
                Ok(Some(pending)) => {
                    state.syncing = Some(pending);
                    let latency = self.disk_latency();
                    self.schedule(latency, Event::SyncDone { node, shard, incarnation });
                }
                Ok(None) => {}
                Err(error) => self.fail(node, &error),
            }
        }
    }

    fn disk_latency(&mut self) -> u64 {
        let (min, jitter) = (self.knobs.sync_min_us, self.knobs.sync_jitter_us);
        between(&mut self.rng, min, min + jitter)
    }

    /// Hands what the shard did since the last call to the checkers, in order.
    fn observe(&mut self, node: usize, shard: usize) {
        let Some(running) = self.nodes[node].shards[shard].shard.as_mut() else { return };
        let events = std::mem::take(&mut running.hooks_mut().events);
        let id = self.nodes[node].id;
        for event in events {
            match event {
                Observed::Durable(records) => {
                    let result = self.checker.on_durable(id, shard, &records);
                    self.record(result);
                }
                Observed::Replayed(record) => {
                    let result = self.checker.on_durable(id, shard, std::slice::from_ref(&record));
                    self.record(result);
                }
                Observed::Committed { first_slot, count, value } => {
                    let result = self.checker.on_commit(id, shard, first_slot, count, &value);
                    self.record(result);
                    self.trace(|| {
                        let text = value_text(&value);
                        format!("n{} s{shard} commit {}+{count} {text}", id.0, first_slot.0)
                    });
                    self.merge(node, shard, first_slot, count, &value);
                }
                Observed::Applied(request) => {
                    let result = self.checker.on_applied(id, shard, request);
                    self.record(result);
                }
                // The simulator's clients are few and keep busy: below the eviction limits,
                // and they send only under sessions the shard registered.
                Observed::SessionExpired(request) => {
                    let detail = format!("n{} s{shard}: {request:?} has no session", id.0);
                    self.record(Err(Violation { invariant: "I9 sessions", detail }));
                }
                Observed::Installed(slot) => {
                    self.trace(|| format!("n{} s{shard} installs snapshot at {}", id.0, slot.0));
                    self.nodes[node].merge_off = true;
                    self.snapshots.installed += 1;
                    let result = self.checker.on_install(id, shard, slot);
                    self.record(result);
                }
                Observed::Repaired => {
                    self.trace(|| format!("n{} s{shard} repaired", id.0));
                    let learner =
                        self.replica(node, shard).is_some_and(|r| r.config().is_learner());
                    self.faults.repaired += u64::from(!learner);
                    if !self.repairing(node) {
                        self.nodes[node].damaged = false;
                    }
                }
                Observed::ReadsAnswered(count) => self.read_index_reads += count as u64,
                Observed::Archived(messages) => {
                    self.archived_reads += 1;
                    self.trace(|| format!("n{} s{shard} archived: {messages} messages", id.0));
                }
            }
        }
    }

    /// The outcome of an applied command goes to the client waiting for it, if any.
    fn answer(&mut self, node: usize, shard: usize, command: AppliedCommand<KvReply>) {
        if let (
            RequestId::LEADER,
            Outcome::Applied(KvReply::Coord(CoordReply::Expired { id, .. })),
        ) = (command.id.client, &command.outcome)
        {
            self.coord.on_expired(*id, self.now_us);
            self.trace(|| format!("n{} s{shard} lease {id:x} expired", node + 1));
        }
        let reply = match command.outcome {
            Outcome::Applied(reply) | Outcome::Duplicate(reply) => {
                ClientReply::Applied(reply, command.slot)
            }
            Outcome::Registered(session) => ClientReply::Registered(session),
            // A long-delayed copy of a request its client has long moved past (so it was
            // acknowledged, so applied): refusing it is exactly-once working. (A missing
            // session is a violation: see `observe`.)
            Outcome::Expired | Outcome::SessionExpired => return,
        };
        if let Some(client) = self.nodes[node].shards[shard].waiting.remove(&command.id) {
            self.client_send(client, command.id, reply);
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
        let message = self.maybe_damage_piece(message);
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

    /// A snapshot piece damaged on its way, by chance (`Knobs::damaged_piece_ppm`): one byte
    /// flipped, as if the sender's file had rotted under the read.
    fn maybe_damage_piece(&mut self, message: Message) -> Message {
        let Message::Snapshot { slot, offset, total, bytes, commit_index } = message else {
            return message;
        };
        if !self.faults_on || bytes.is_empty() || !self.chance(self.knobs.damaged_piece_ppm) {
            return Message::Snapshot { slot, offset, total, bytes, commit_index };
        }
        let mut damaged = bytes.to_vec();
        let at = (self.rng.next_u64() % damaged.len() as u64) as usize;
        damaged[at] ^= 1 << (self.rng.next_u64() % 8);
        self.snapshots.damaged_pieces += 1;
        self.trace(|| format!("snapshot piece at {} offset {offset}: byte {at} damaged", slot.0));
        let bytes = bytes::Bytes::from(damaged);
        Message::Snapshot { slot, offset, total, bytes, commit_index }
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
            if !self.stopping || self.in_coord_tail(client) {
                self.start_request(client);
            }
            return;
        }
        if !resend {
            // A timeout: the node may be down or cut off; try the next one.
            let nodes = self.nodes.len();
            let pending = self.clients[client].pending.as_mut().expect("checked");
            let shard = pending.shard;
            pending.pinned = false;
            if !pending.register && anywhere(&pending.read) {
                pending.target = (pending.target + 1) % nodes;
            } else {
                pending.target = (pending.target + 1) % self.knobs.voters;
                self.clients[client].leader_hint[shard] = None;
            }
        }
        self.send_request(client);
    }

    fn start_request(&mut self, client: usize) {
        let Some((key, shard, op, coord)) = self.draw_request(client) else { return };
        let read = if op == KvOp::Get && coord.is_none() {
            draw_read(&mut self.rng, &self.knobs, self.clients[client].read_floor[shard])
        } else {
            ReadOptions::default()
        };
        let pinned =
            op == KvOp::Get && coord.is_none() && !anywhere(&read) && self.rng.next_u64() % 4 == 0;
        let target = if anywhere(&read) {
            (self.rng.next_u64() % self.nodes.len() as u64) as usize
        } else if pinned {
            // A client with a stale view of who leads (a new one, or one whose connection
            // outlived a leader change) asks any voter: a deposed leader that still believes
            // it leads must not answer (I10).
            (self.rng.next_u64() % self.knobs.voters as u64) as usize
        } else {
            self.clients[client].leader_hint[shard]
                .unwrap_or_else(|| (self.rng.next_u64() % self.knobs.voters as u64) as usize)
        };
        let invoke_us = self.now_us;
        let mut pending = Pending {
            id: RequestId { client: 0, sequence: 0 },
            register: false,
            key,
            shard,
            op,
            read,
            payload: Vec::new(),
            invoke_us,
            target,
            pinned,
            coord,
        };
        let sequence = self.clients[client].sequence | query_bit(&pending);
        match self.clients[client].sessions[shard] {
            Some(session) => {
                pending.id = RequestId { client: session, sequence };
                pending.payload = pending.encoded(self.options.unfenced_writes);
            }
            None => {
                let mut nonce = [0; 16];
                self.rng.fill_bytes(&mut nonce);
                let (register, payload) = register_request(nonce);
                (pending.id, pending.register, pending.payload) =
                    (register, true, payload.to_vec());
            }
        }
        self.clients[client].pending = Some(pending);
        self.send_request(client);
    }

    /// The client's next operation, its sequence number taken: the shared key (for the
    /// key-value operations and transactions), its shard, the operation and, for a
    /// coordination request, its step. None: the client sleeps first (its wake is set).
    fn draw_request(&mut self, client: usize) -> Option<(usize, usize, KvOp, Option<CoordStep>)> {
        let World { clients, rng, knobs, now_us, .. } = self;
        let state = &mut clients[client];
        let step = match &mut state.role {
            Role::Locker(locker) => match locker.next(state.id, *now_us, knobs, rng) {
                Next::Send(step) => {
                    let shard = shard_for_key(&lock_name(locker.lock), knobs.shards);
                    Some((shard, step))
                }
                Next::Sleep(sleep_us) => {
                    state.timer_token += 1;
                    let token = state.timer_token;
                    self.schedule(sleep_us, Event::ClientWake { client, token, resend: false });
                    return None;
                }
            },
            Role::Watcher(watcher) => Some(watcher.ask()),
            Role::Kv => None,
        };
        state.sequence += 1;
        if let Some((shard, step)) = step {
            return Some((0, shard, KvOp::Get, Some(step)));
        }
        let key = (rng.next_u64() % knobs.keys as u64) as usize;
        let fresh = (state.id << 32) | state.sequence;
        let (op, txn) = match rng.next_u64() % 20 {
            0..=5 => (KvOp::Get, None),
            6 => (KvOp::Get, Some(CoordStep::TxnGet)),
            7..=12 => (KvOp::Put(fresh), None),
            13 | 14 => (KvOp::Delete, None),
            draw => {
                let expected = if rng.next_u64() % 4 == 0 { None } else { state.seen[key] };
                let txn = (draw % 2 == 0).then_some(CoordStep::TxnCas);
                (KvOp::CompareAndSet { expected, new: fresh }, txn)
            }
        };
        Some((key, shard_for_key(&key_bytes(key), knobs.shards), op, txn))
    }

    fn send_request(&mut self, client: usize) {
        let state = &mut self.clients[client];
        state.timer_token += 1;
        let token = state.timer_token;
        let mut pending = state.pending.clone().expect("a request to send");
        let anywhere = !pending.register && (pending.pinned || anywhere(&pending.read));
        if let (false, Some(hint)) = (anywhere, state.leader_hint[pending.shard]) {
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
        self.catch_up_clock(node);
        if !self.alive(node) {
            return;
        }
        let shard = pending.shard;
        let running = self.shard_mut(node, shard);
        // A register-session command gets the leader's entropy in `Shard::propose`.
        let proposed = if pending.id.is_query() {
            let read = running.read(pending.id, &pending.payload, pending.read);
            if let Ok(Ok(ReadPath::Lease)) = read {
                self.reads.by_lease += 1;
            }
            let consistency = pending.read.consistency;
            self.trace(|| {
                format!("n{} s{shard} client {client} read {consistency:?}: {read:?}", node + 1)
            });
            read.map(|result| result.map(|_| ()))
        } else {
            running.propose(pending.id, &pending.payload)
        };
        let running = self.shard_mut(node, shard);
        let result = match proposed {
            Ok(Ok(())) => running.flush().map(Ok),
            other => other,
        };
        match result {
            Ok(Ok(())) => {
                self.nodes[node].shards[shard].waiting.insert(pending.id, client);
                self.settle(node, shard);
            }
            Ok(Err(ProposeError::TooStale { .. })) => {
                self.client_send(client, pending.id, ClientReply::TooStale);
            }
            Ok(Err(ProposeError::NotLeader { hint })) => {
                let hint = hint.map(|id| id.0 as usize - 1);
                self.client_send(client, pending.id, ClientReply::Redirect(hint));
            }
            Ok(Err(ProposeError::Busy)) => {
                self.client_send(client, pending.id, ClientReply::Busy);
            }
            Ok(Err(error)) => panic!("simulated request refused: {error}"),
            Err(error) => {
                self.fail(node, &error);
                self.settle(node, shard);
            }
        }
    }

    /// A client's session on a shard is registered: the operation that waited for it goes
    /// now, under the new session, as if invoked now.
    fn on_registered(&mut self, client: usize, pending: Pending, session: u64) {
        let shard = pending.shard;
        let state = &mut self.clients[client];
        state.sessions[shard] = Some(session);
        state.leader_hint[shard] = Some(pending.target);
        let sequence = state.sequence | query_bit(&pending);
        let mut operation = Pending {
            id: RequestId { client: session, sequence },
            register: false,
            invoke_us: self.now_us,
            ..pending
        };
        operation.payload = operation.encoded(self.options.unfenced_writes);
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
            ClientReply::Redirect(_) if !pending.register && anywhere(&pending.read) => {
                // A follower read no leader gave an index for in time: try another member.
                let state = &mut self.clients[client];
                let next = (pending.target + 1) % self.nodes.len();
                state.pending.as_mut().expect("checked").target = next;
                state.timer_token += 1;
                let token = state.timer_token;
                let backoff = between(&mut self.rng, 1_000, 5_000);
                self.schedule(backoff, Event::ClientWake { client, token, resend: true });
            }
            ClientReply::TooStale => {
                self.reads.too_stale += 1;
                self.client_moves_on(client);
            }
            ClientReply::Redirect(hint) => {
                let hint = hint.filter(|node| *node < self.knobs.voters && *node != pending.target);
                let state = &mut self.clients[client];
                state.pending.as_mut().expect("checked").pinned = false;
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
            ClientReply::Applied(reply, slot) => self.on_applied(client, &pending, &reply, slot),
        }
    }

    /// A client's request was applied (or its read answered, at `slot`): the history gets
    /// it, and the client thinks, then sends its next request.
    fn on_applied(&mut self, client: usize, pending: &Pending, reply: &KvReply, slot: Slot) {
        let result = match (&pending.coord, reply) {
            (None, _) => result_of(reply),
            (Some(step @ (CoordStep::TxnCas | CoordStep::TxnGet)), KvReply::Coord(coord)) => {
                self.coord.counts.txns += 1;
                txn_result(step, &pending.op, coord)
            }
            (Some(step), KvReply::Coord(coord)) => {
                let step = step.clone();
                return self.on_coord_applied(client, pending, &step, coord, slot);
            }
            (Some(step), other) => panic!("{step:?} answered {other:?}"),
        };
        let id = pending.id;
        if id.is_query() && !self.on_read_answered(client, pending, slot, &result) {
            return;
        }
        let state = &mut self.clients[client];
        if !anywhere(&pending.read) {
            state.leader_hint[pending.shard] = Some(pending.target);
        }
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
        self.client_moves_on(client);
    }

    /// A locker's or a watcher's request was answered: its checker and its client move on.
    fn on_coord_applied(
        &mut self,
        client: usize,
        pending: &Pending,
        step: &CoordStep,
        reply: &CoordReply,
        slot: Slot,
    ) {
        self.clients[client].leader_hint[pending.shard] = Some(pending.target);
        if pending.id.is_query() {
            self.queries_answered += 1;
        } else {
            self.acknowledged.push((pending.shard, pending.id));
        }
        self.trace(|| format!("client {client} done {step:?} -> {reply:?}"));
        let result = self.coord.on_reply(step, reply, pending.invoke_us);
        self.record(result);
        let (shards, furthest) = (self.knobs.shards, self.options.watch_furthest);
        let World { clients, rng, coord, .. } = self;
        let mut quick = false;
        match (&mut clients[client].role, reply) {
            (Role::Locker(locker), _) => {
                locker.on_reply(step, reply, rng);
                quick = locker.waiting();
            }
            (Role::Watcher(watcher), CoordReply::Changes(found)) => {
                let rounds = watcher.rounds;
                watcher.on_reply(found.clone(), slot.0, shards, furthest);
                coord.counts.watch_rounds += watcher.rounds - rounds;
                quick = true;
            }
            (Role::Watcher(watcher), _) => watcher.restart_round(),
            (Role::Kv, _) => panic!("a key-value client got {reply:?}"),
        }
        // Polling (a lock's line, a watch): a short pause, not a whole think time.
        let pause = if quick {
            between(&mut self.rng, 500, 5_000)
        } else {
            between(&mut self.rng, 0, self.knobs.think_us)
        };
        self.client_waits(client, pause);
    }

    /// The client's request is over: it thinks, then sends its next one.
    fn client_moves_on(&mut self, client: usize) {
        let think = between(&mut self.rng, 0, self.knobs.think_us);
        self.client_waits(client, think);
    }

    /// The client's request is over: it sends its next one after `pause_us`.
    fn client_waits(&mut self, client: usize, pause_us: u64) {
        let state = &mut self.clients[client];
        state.pending = None;
        state.timer_token += 1;
        let token = state.timer_token;
        self.schedule(pause_us, Event::ClientWake { client, token, resend: false });
    }

    /// A client's read was answered at `slot` with `result`: counts it, keeps a stale one
    /// for the check against the log (I12, which it must not go back from the client's
    /// earlier reads for) and raises the client's floor. Returns true if the read joins the
    /// linearizable history (all but stale ones).
    fn on_read_answered(
        &mut self,
        client: usize,
        pending: &Pending,
        slot: Slot,
        result: &super::linearizability::KvResult,
    ) -> bool {
        self.reads.count(pending.read.consistency);
        let floor = &mut self.clients[client].read_floor[pending.shard];
        let previous = *floor;
        *floor = (*floor).max(slot);
        if pending.read.consistency != Consistency::Stale {
            return true;
        }
        let super::linearizability::KvResult::Value(value) = result else {
            panic!("a get answered {result:?}");
        };
        let read =
            StaleRead { client, shard: pending.shard, key: pending.key, slot, value: *value };
        self.record(check_monotonic(&read, previous));
        self.stale_reads.push(read);
        self.queries_answered += 1;
        self.trace(|| format!("client {client} done stale get at {} -> {value:?}", slot.0));
        self.client_moves_on(client);
        false
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
    /// Breaks the clock bound the replicas rely on (`--break-clock-bound`): the leader of a
    /// random shard gets a clock running at a tenth to a half of real time for 20–300 ms, and
    /// half the time is cut off from the other nodes for as long (clients still reach it), so
    /// that its lease outlives, in real time, the election timeouts of the voters that
    /// granted it. Lease reads may then be stale: the checkers must say so.
    fn on_clock_fault(&mut self) {
        if !self.faults_on {
            return;
        }
        let next = between(&mut self.rng, 50_000, 300_000);
        self.schedule(next, Event::ClockFault);
        let shard = (self.rng.next_u64() % self.knobs.shards as u64) as usize;
        let leader = (0..self.knobs.voters).find(|node| {
            self.alive(*node)
                && self.replica(*node, shard).is_some_and(|r| r.role() == RoleKind::Leader)
        });
        let Some(node) = leader else { return };
        let duration = between(&mut self.rng, 20_000, 300_000);
        let rate = between(&mut self.rng, 100_000, 500_000);
        let (now, tick) = (self.now_us, self.knobs.tick_us);
        self.nodes[node].clock.set_rate(now, tick, rate);
        self.trace(|| format!("n{}'s clock runs at {rate} ppm for {duration}us", node + 1));
        self.schedule(duration, Event::ClockHeal { node });
        if self.rng.next_u64() % 2 == 0 {
            let links: Vec<(usize, usize)> = (0..self.nodes.len())
                .filter(|other| *other != node)
                .flat_map(|other| [(node, other), (other, node)])
                .collect();
            self.trace(|| format!("isolate n{} for {duration}us", node + 1));
            self.block(links, duration);
        }
    }

    fn on_force_leader_change(&mut self) {
        if !self.faults_on {
            return;
        }
        let shard = (self.rng.next_u64() % self.knobs.shards as u64) as usize;
        let leader = (0..self.knobs.voters).find(|node| {
            self.nodes[*node].up
                && self.replica(*node, shard).is_some_and(|r| r.role() == RoleKind::Leader)
        });
        match leader {
            Some(node) => {
                let downtime = between(&mut self.rng, 50_000, 200_000);
                self.crash(node, downtime);
            }
            None => self.schedule(20_000, Event::ForceLeaderChange),
        }
    }

    /// Asks one shard's leader to hand leadership to a random other voter, as an operator's
    /// `move-leader` would, while faults go on; again a while later.
    fn on_move_leader(&mut self) {
        if !self.faults_on {
            return;
        }
        let next = between(&mut self.rng, 0, self.knobs.fault_interval_us * 4);
        self.schedule(next, Event::MoveLeader);
        let shard = (self.rng.next_u64() % self.knobs.shards as u64) as usize;
        let leader = (0..self.knobs.voters).find(|node| {
            self.alive(*node)
                && self.replica(*node, shard).is_some_and(|r| r.role() == RoleKind::Leader)
        });
        let Some(node) = leader else { return };
        let others = self.knobs.voters as u64 - 1;
        let to = (node + 1 + (self.rng.next_u64() % others) as usize) % self.knobs.voters;
        let to_id = self.nodes[to].id;
        self.catch_up_clock(node);
        if !self.alive(node) {
            return;
        }
        self.trace(|| format!("n{} s{shard}: move leadership to n{}", node + 1, to_id.0));
        match self.shard_mut(node, shard).transfer_leadership(to_id) {
            Ok(Ok(())) => self.faults.leader_moves += 1,
            Ok(Err(_)) => {}
            Err(error) => self.fail(node, &error),
        }
        self.settle(node, shard);
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
            let state = &mut self.nodes[node].shards[shard];
            if let Some(stopped) = state.shard.take() {
                state.disk.released_bytes += stopped.snapshot_stats().released_bytes;
                state.disk.refused_snapshots += stopped.snapshot_stats().refused;
            }
            (state.syncing, state.snapshotting) = (None, None);
            state.disk.crash(&mut self.rng, survives, torn);
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
                "header flipped" => self.faults.header_flips += 1,
                _ => self.faults.zeroed += 1,
            }
        }
    }

    /// True while a replica of `node` repairs.
    fn repairing(&self, node: usize) -> bool {
        self.nodes[node].shards.iter().any(|shard| {
            shard.shard.as_ref().is_some_and(|running| running.replica().is_repairing())
        })
    }

    fn restart(&mut self, node: usize) {
        if self.nodes[node].up {
            return;
        }
        self.trace(|| format!("restart n{}", node + 1));
        self.nodes[node].up = true;
        // The replicas commit again from slot 0, so the merge starts over too.
        self.nodes[node].total =
            TotalApplier::new(self.knobs.shards as u16, NodeMachine::default(), SIM_SESSIONS);
        let id = self.nodes[node].id;
        self.checker.on_merge_start(id);
        for shard in 0..self.knobs.shards {
            self.start_replica(node, shard);
        }
        if !self.repairing(node) {
            self.nodes[node].damaged = false;
        }
        let incarnation = self.nodes[node].incarnation;
        // A new process: its clock counts ticks from now, at the node's rate.
        let clock = &mut self.nodes[node].clock;
        clock.restart(self.now_us);
        let next = clock.until_next_tick(self.now_us, self.knobs.tick_us);
        self.schedule(next, Event::Tick { node, incarnation });
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
        let requests_done = self.clients.iter().all(|client| client.pending.is_none())
            && self.now_us >= self.liveness_started_us + self.knobs.coord_tail_us;
        let leaders = (0..self.knobs.shards).all(|shard| self.shard_leader(shard).is_some());
        let caught_up = (0..self.knobs.shards).all(|shard| {
            let commits: Vec<u64> = self
                .nodes
                .iter()
                .map(|node| {
                    node.shards[shard].shard.as_ref().map_or(0, |s| s.replica().commit_index().0)
                })
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

    /// True while the lockers go on after the faults stop (`Knobs::coord_tail_us`).
    fn in_coord_tail(&self, client: usize) -> bool {
        matches!(self.clients[client].role, Role::Locker(_))
            && self.now_us < self.liveness_started_us + self.knobs.coord_tail_us
    }

    fn shard_leader(&self, shard: usize) -> Option<usize> {
        (0..self.knobs.voters)
            .find(|node| self.replica(*node, shard).is_some_and(|r| r.role() == RoleKind::Leader))
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
                if let Some(replica) = node.shards[shard].shard.as_ref().map(Shard::replica) {
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
        let checker = &self.checker;
        let chosen = |shard: usize, slot: u64| checker.chosen_value(shard, slot).cloned();
        check_stale_reads(&mut self.stale_reads, self.knobs.shards, SIM_SESSIONS, chosen)?;
        for node in &self.nodes {
            for shard in &node.shards {
                let running = shard.shard.as_ref().expect("all nodes are up at the end");
                running.replica().check_invariants(true);
            }
        }
        let merging: Vec<&SimNode> = self.nodes.iter().filter(|node| !node.merge_off).collect();
        for node in &merging {
            self.checker.merged_complete(node.id, node.total.next_position())?;
        }
        // Every replica of a shard applied the same slots (they are caught up): the same state,
        // whether rebuilt from the log or from a snapshot.
        for shard in 0..self.knobs.shards {
            let summary = |node: &SimNode| {
                node.shards[shard].shard.as_ref().expect("all nodes are up").machine().summary()
            };
            let first = summary(&self.nodes[0]);
            for node in &self.nodes {
                if summary(node) != first {
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
        self.coord.check()?;
        self.check_watchers()
    }

    /// C3: each watcher received exactly the store's changes of the shared keys from its
    /// start to its next revision, read at the end from the first node's shards (all caught
    /// up, and a snapshot keeps the change history these runs make).
    fn check_watchers(&mut self) -> Result<(), Violation> {
        if self.knobs.watchers == 0 {
            return Ok(());
        }
        let mut expected = Vec::new();
        for shard in &self.nodes[0].shards {
            let machine = shard.shard.as_ref().expect("all nodes are up").machine();
            let mut from = 1;
            loop {
                let range = KeyRange::Prefix(WATCHED_PREFIX.to_vec());
                let ask = CoordCommand::Changes { range, from, limit: 0, locks: false };
                match machine.query(&ask.encode()) {
                    KvReply::Coord(CoordReply::Changes(found)) => {
                        expected.extend(found.changes);
                        if !found.more {
                            break;
                        }
                        from = found.through + 1;
                    }
                    other => panic!("the final change feed answered {other:?}"),
                }
            }
        }
        expected.sort_by_key(|change| change.revision);
        for (index, client) in self.clients.iter().enumerate() {
            if let Role::Watcher(watcher) = &client.role {
                check_watcher(index, &watcher.received, &expected, watcher.start, watcher.next)?;
                self.coord.counts.watched += watcher.received.len() as u64;
            }
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
        Message::Heartbeat { ballot, commit_index, read_round } => {
            format!("heartbeat {ballot} commit {} read-round {read_round}", commit_index.0)
        }
        Message::HeartbeatAck { ballot, read_round } => {
            format!("heartbeat-ack {ballot} read-round {read_round}")
        }
        Message::CatchUpRequest { from_slot } => format!("catch-up-request from {}", from_slot.0),
        Message::ReadIndexRequest { nonce } => format!("read-index-request {nonce}"),
        Message::ReadIndexReply { nonce, read_index } => {
            format!("read-index-reply {nonce} {:?}", read_index.map(|slot| slot.0))
        }
        Message::TimeoutNow { ballot, to } => format!("timeout-now {ballot} to n{}", to.0),
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

/// Reads go as queries (protocol.md §5.2): answered where they are ordered, never applied.
fn query_bit(pending: &Pending) -> u64 {
    if pending.is_read() { RequestId::QUERY_BIT } else { 0 }
}
