//! One shard's state on its executor: the shard, its links to peers and clients, and the
//! requests waiting for their replies. Every task of the executor reaches it through
//! `Rc<RefCell<..>>`; a borrow never lives across an `.await`.
//!
//! After anything changes the shard, [`pump`] moves what it produced: messages onto the peer
//! links, replies onto the client links, and a sync onto the blocking pool when records wait.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalSender};
use quorum_wal::{MmapBackend, PendingSync, SyncOutcome};

use super::apply::{ShardLink, TotalRef};
use super::clock::TickClock;
use super::{Control, Hosted};
use crate::core::{
    Envelope, Feed, Message, NodeId, ProposeError, RequestId, RoleKind, Slot, TransferError,
};
use crate::machine::total_order::Committed;
use crate::machine::{AppliedCommand, Outcome};
use crate::shard::{PendingSnapshot, Shard, ShardError};
use crate::transport::codec::{
    Body, Encoder, Frame, MoveRefused, Reply, ReplyStatus, Requests, ShardStatus,
};
use crate::transport::framing::Outgoing;

/// The shard type a node runs: its state machine over the WAL on real files, observed for the
/// metrics.
pub type NodeShard<S> = Shard<MmapBackend, S, super::metrics::NodeHooks>;

/// Bytes that may wait for one peer before messages to it are dropped (a client's bound is
/// `--client-queue-mib`).
pub const LINK_BUFFER_MAX: usize = 64 << 20;

/// Bytes of committed runs that may wait for one tailing client; more is sent as it reads.
pub const FEED_BUFFER_MAX: usize = 4 << 20;

/// A tailing client's feed is paced by its connection's buffer (it never reports back), so its
/// window of slots is one it never reaches.
const FEED_WINDOW: u64 = 1 << 40;

/// Bytes waiting to be written to one connection, and the bell that wakes its writer.
pub struct Link {
    /// Encoded frames, in order.
    pub out: Outgoing,
    bell: LocalSender<()>,
}

impl Link {
    /// A link whose writer waits on the receiver of `bell`.
    pub fn new(bell: LocalSender<()>) -> Link {
        Link { out: Outgoing::default(), bell }
    }

    fn ring(&self) {
        // Full means the writer is already due to run.
        let _ = self.bell.try_send(());
    }
}

/// A client connection's link and the replies gathered for it in this pump.
struct ClientLink {
    link: Link,
    client: u64,
    replies: Vec<Reply>,
    overflowed: bool,
    /// Its socket, to cut it off at once when it overflows (its writer may be stuck in a
    /// write the client never takes).
    connection: Rc<dyn Cut>,
}

/// A connection the host can cut off (the network layer's, which lies above the host).
pub trait Cut {
    /// Shuts the connection down both ways, so that its reader and writer end at once.
    fn cut(&self);
}

impl ClientLink {
    /// Cuts off a client that has more than `bytes_max` waiting: it does not read, and what
    /// waits for it is dropped rather than let the node's memory grow.
    fn maybe_overflow(&mut self, bytes_max: usize, shard: u16) {
        if self.overflowed || self.link.out.len() <= bytes_max {
            return;
        }
        self.overflowed = true;
        let (client, waiting_bytes) = (self.client, self.link.out.len());
        tracing::warn!(shard, client, waiting_bytes, "client does not read; disconnecting");
        self.link.out.clear();
        self.connection.cut();
        self.link.ring();
    }
}

/// One shard's state on its executor.
pub struct Host<S: Hosted> {
    /// The shard.
    pub shard: NodeShard<S>,
    /// Which shard this is.
    pub index: u16,
    control: std::sync::Arc<Control>,
    peers: HashMap<NodeId, Link>,
    clients: HashMap<u64, ClientLink>,
    next_connection: u64,
    waiting: HashMap<RequestId, u64>,
    syncing: bool,
    was_leader: bool,
    /// The replica's role at the last pump, to log each change.
    was_role: RoleKind,
    encoder: Encoder,
    outbox: Vec<(NodeId, Message)>,
    applied: Vec<AppliedCommand<S::Reply>>,
    aborted_reads: Vec<(RequestId, Option<crate::core::NodeId>)>,
    /// Replies held until every shard of the node has committed past their place in the
    /// merged order ([`crate::machine::StateMachine::orders_across_shards`]): the position,
    /// the connection, the reply. In position order.
    held: std::collections::VecDeque<(u64, u64, Reply)>,
    dropped_messages: u64,
    /// Syncs started (with durability off: sync points skipped).
    syncs: u64,
    /// False when durability is off.
    durable: bool,
    /// Bytes that may wait for one client before it is disconnected.
    client_queue_bytes: usize,
    /// Proposals turned away because the pipeline and the open batch were full.
    pub busy_replies: u64,
    /// Snapshot writes started (each built its image on this thread first, unless it is a
    /// peer's being installed).
    pub snapshots_started: u64,
    /// Time spent in syncs on the blocking pool, and from starting a sync to its completion
    /// being handled on the executor (the difference is the hand-off).
    pub sync_micros: u64,
    /// See `sync_micros`.
    pub sync_wait_micros: u64,
    /// Clients tailing the committed log, by connection.
    feeds: HashMap<u64, Feed>,
    /// Bytes sent to peers, by kind: everything, and committed runs (`Chosen`).
    pub egress: Egress,
    /// Total-order apply: where committed runs go, and the node's one state machine.
    forward: Option<(LocalSender<Vec<Committed>>, TotalRef<S>)>,
    committed: Vec<Committed>,
    /// The shard failed (a sync failed, say): fenced until the node exits, nothing more
    /// runs on it and nothing leaves it (no acknowledgement, vote or lead).
    failed: bool,
    /// The WAL's next segment could not be made for lack of space (the file named): the
    /// replica is paused until it can (docs/disk-faults.md).
    out_of_space: Option<std::path::PathBuf>,
    /// Peer messages dropped and proposals refused while out of disk space.
    pub out_of_space_dropped: u64,
    /// The replica's ticks, from the machine's clock.
    clock: TickClock,
    /// The WAL's end when the node started: bytes appended since are what it wrote.
    wal_start_position: u64,
    /// Changes of the replica's role, and of the leader it knows (seen at ticks), for the
    /// metrics.
    role_changes: u64,
    leader_changes: u64,
    last_leader: Option<NodeId>,
}

/// Bytes a shard queued for its peers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Egress {
    /// Every frame.
    pub bytes: u64,
    /// Frames carrying committed runs (catch-up and learners' feeds).
    pub chosen_bytes: u64,
}

/// A shared handle to a shard's state.
pub type HostRef<S> = Rc<RefCell<Host<S>>>;

impl<S: Hosted> Host<S> {
    /// Wraps an opened shard.
    pub fn new(
        shard: NodeShard<S>,
        index: u16,
        control: std::sync::Arc<Control>,
        (durable, client_queue_bytes): (bool, usize),
        clock: TickClock,
    ) -> HostRef<S> {
        let wal_start_position = shard.wal().end_position();
        Rc::new(RefCell::new(Host {
            shard,
            index,
            control,
            peers: HashMap::new(),
            clients: HashMap::new(),
            next_connection: 0,
            waiting: HashMap::new(),
            syncing: false,
            was_leader: false,
            was_role: RoleKind::Follower,
            encoder: Encoder::default(),
            outbox: Vec::new(),
            applied: Vec::new(),
            aborted_reads: Vec::new(),
            held: std::collections::VecDeque::new(),
            dropped_messages: 0,
            syncs: 0,
            durable,
            client_queue_bytes,
            busy_replies: 0,
            snapshots_started: 0,
            sync_micros: 0,
            sync_wait_micros: 0,
            feeds: HashMap::new(),
            egress: Egress::default(),
            forward: None,
            committed: Vec::new(),
            failed: false,
            out_of_space: None,
            out_of_space_dropped: 0,
            clock,
            wal_start_position,
            role_changes: 0,
            leader_changes: 0,
            last_leader: None,
        }))
    }

    /// Gives the replica every tick that elapsed on the clock since the last call.
    ///
    /// # Errors
    /// The shard failed.
    pub fn catch_up_clock(&mut self) -> Result<(), ShardError> {
        let due = self.clock.due();
        if due > 0 {
            self.shard.on_ticks(due)?;
        }
        Ok(())
    }

    /// This shard's frame header fields.
    fn frame(&self, body: Body) -> Frame {
        let config = self.shard.replica().config();
        Frame { cluster_id: config.cluster_id, from: config.node, shard: self.index, body }
    }

    /// A peer link came up (or went down, with `None`): messages to it queue there.
    pub fn set_peer_link(&mut self, peer: NodeId, link: Option<Link>) {
        match link {
            Some(link) => {
                self.peers.insert(peer, link);
            }
            None => {
                self.peers.remove(&peer);
            }
        }
    }

    /// Takes the bytes waiting for `peer`.
    pub fn take_peer_bytes(&mut self, peer: NodeId, spare: Outgoing) -> Outgoing {
        match self.peers.get_mut(&peer) {
            Some(link) => std::mem::replace(&mut link.out, spare),
            None => Outgoing::default(),
        }
    }

    /// A client connected: its connection id.
    pub fn add_client(&mut self, client: u64, link: Link, connection: Rc<dyn Cut>) -> u64 {
        let id = self.next_connection;
        self.next_connection += 1;
        let replies = Vec::new();
        self.clients
            .insert(id, ClientLink { link, client, replies, overflowed: false, connection });
        id
    }

    /// A client went away.
    pub fn remove_client(&mut self, connection: u64) {
        self.clients.remove(&connection);
        self.feeds.remove(&connection);
        self.waiting.retain(|_, waiting| *waiting != connection);
    }

    /// Takes the bytes waiting for a client; `None` once the client must be disconnected.
    pub fn take_client_bytes(&mut self, connection: u64, spare: Outgoing) -> Option<Outgoing> {
        let link = self.clients.get_mut(&connection)?;
        if link.overflowed {
            return None;
        }
        Some(std::mem::replace(&mut link.link.out, spare))
    }

    /// A message from a peer.
    ///
    /// # Errors
    /// The shard failed.
    pub fn on_peer_message(&mut self, from: NodeId, message: Message) -> Result<(), ShardError> {
        if self.out_of_space.is_some() {
            // Paused: as if the message were lost. An Accept the replica could not persist
            // is simply never acknowledged; the leader goes on with the other members.
            self.out_of_space_dropped += 1;
            return Ok(());
        }
        let cluster_id = self.shard.replica().config().cluster_id;
        if let Err(refused) = self.shard.on_message(Envelope { cluster_id, from, message })? {
            tracing::warn!(shard = self.index, %refused, "message refused");
        }
        Ok(())
    }

    /// Client commands in the batch encoding, from connection `connection`; the queries
    /// among them read as `requests.read` says.
    ///
    /// # Errors
    /// `Ok(Err(reason))`: the batch is malformed; close the connection. `Err`: the shard failed.
    pub fn on_requests(
        &mut self,
        connection: u64,
        requests: &Requests,
    ) -> Result<Result<(), String>, ShardError> {
        let batch = &requests.batch;
        let Some(link) = self.clients.get(&connection) else {
            return Ok(Ok(()));
        };
        if link.overflowed {
            return Ok(Err("the client does not read its replies".to_string()));
        }
        let mut clock_read = false;
        // Requests name the session they belong to (registered on this shard, protocol.md
        // §5.1), not the connection's client label: a client keeps its sessions across
        // reconnections, and a session id nobody registered is refused when it applies.
        for command in crate::core::BatchReader::new(batch) {
            let Ok((id, payload)) = command else {
                return Ok(Err("malformed request batch".to_string()));
            };
            if !id.has_valid_sequence() {
                return Ok(Err(format!(
                    "a request's sequence {:#x} has its top bit set (reserved)",
                    id.sequence
                )));
            }
            if id.client == RequestId::LEADER {
                return Ok(Err("a request under the leader's own client id (reserved)".into()));
            }
            if self.out_of_space.is_some() {
                self.refuse_out_of_space(connection, id);
                continue;
            }
            let proposed = if id.is_query() {
                if !clock_read {
                    // A lease is judged against the clock as it is now, not as of the last
                    // tick the thread got to run (protocol.md §5.4).
                    self.catch_up_clock()?;
                    clock_read = true;
                }
                self.shard.read(id, payload, requests.read)?.map(|_| ())
            } else {
                self.shard.propose(id, payload)?
            };
            match proposed {
                Ok(()) => {
                    self.waiting.insert(id, connection);
                }
                Err(refused) => self.refuse(connection, id, refused),
            }
        }
        self.shard.flush()?;
        Ok(Ok(()))
    }

    /// Tells the client why its request `id` was not taken.
    fn refuse(&mut self, connection: u64, id: RequestId, refused: ProposeError) {
        let (status, body) = match refused {
            ProposeError::NotLeader { hint } => (ReplyStatus::NotLeader { hint }, Bytes::new()),
            ProposeError::Busy => {
                self.busy_replies += 1;
                (ReplyStatus::Busy, Bytes::new())
            }
            ProposeError::TooStale { behind_slots, behind_ms } => {
                (ReplyStatus::TooStale, ReplyStatus::too_stale_body(behind_slots, behind_ms))
            }
            error => (ReplyStatus::Rejected, Bytes::from(error.to_string())),
        };
        self.queue_refusal(connection, id, status, body);
    }

    /// A request that arrived while the disk is full: never proposed, so nothing of it is
    /// written. A paused follower sends the client on to the leader it last heard.
    fn refuse_out_of_space(&mut self, connection: u64, id: RequestId) {
        let Some(path) = &self.out_of_space else { return };
        let replica = self.shard.replica();
        let (status, reason) = if replica.role() == RoleKind::Leader {
            let reason = format!(
                "shard {}'s WAL cannot create {}; free space on this node (it resumes by \
                 itself)",
                self.index,
                path.display()
            );
            (ReplyStatus::OutOfSpace, Bytes::from(reason))
        } else {
            (ReplyStatus::NotLeader { hint: replica.leader_hint() }, Bytes::new())
        };
        self.out_of_space_dropped += 1;
        self.queue_refusal(connection, id, status, reason);
    }

    /// Asks the WAL whether it can get its next segment, and logs each change. While it
    /// cannot (the disk is full), the shard is paused: proposals are refused with
    /// [`ReplyStatus::OutOfSpace`], peer messages dropped and ticks skipped, so the replica
    /// appends nothing it might not be able to persist (a record that did not fit would fail
    /// the shard); syncs of what was appended go on. The WAL tries again by itself, and the
    /// shard resumes once a segment is made. Returns true while paused.
    ///
    /// # Errors
    /// The log is poisoned, or preparing a segment failed other than for lack of space.
    pub fn check_space(&mut self) -> Result<bool, ShardError> {
        let full = match self.shard.check_space()? {
            quorum_wal::Space::Full { path } => Some(path),
            quorum_wal::Space::Available => None,
        };
        match (&self.out_of_space, &full) {
            (None, Some(path)) => tracing::error!(
                shard = self.index,
                path = %path.display(),
                "out of disk space: the WAL cannot create its next segment; refusing \
                 proposals and pausing this replica (no votes, no acknowledgements) until \
                 space is freed"
            ),
            (Some(_), None) => tracing::warn!(
                shard = self.index,
                dropped = self.out_of_space_dropped,
                "disk space is back: the WAL has its next segment; resuming"
            ),
            _ => {}
        }
        self.out_of_space = full;
        Ok(self.out_of_space.is_some())
    }

    /// A client subscribes to the committed log from `from_slot`: it is sent committed runs
    /// as `Chosen` frames, from the log (batches there are slices of the WAL's mapping) and
    /// then as they commit, with no gap or repeat between the two.
    pub fn subscribe_client(&mut self, connection: u64, from_slot: Slot) {
        if self.clients.contains_key(&connection) {
            self.feeds.insert(connection, Feed::new(from_slot));
        }
    }

    /// Publishes this shard's commit position to the node's other shards and, if this shard
    /// leads with nothing to propose while they have committed further, skips up to them.
    ///
    /// # Errors
    /// The shard failed.
    pub fn skip_idle(&mut self) -> Result<(), ShardError> {
        let commit = self.shard.replica().commit_index().0;
        self.control.commits[usize::from(self.index)].store(commit, Ordering::Relaxed);
        let target = self.control.others_commit_max(self.index);
        self.shard.skip_to(Slot(target))
    }

    /// Total-order apply: committed runs leave through `forward` to the node's one state
    /// machine, `total`, instead of being applied here.
    pub fn forward_commits(&mut self, forward: LocalSender<Vec<Committed>>, total: TotalRef<S>) {
        self.forward = Some((forward, total));
    }

    /// Outcomes of commands this shard carried, applied by the node's one state machine.
    pub fn on_applied(&mut self, outcomes: Vec<AppliedCommand<S::Reply>>) {
        self.applied.extend(outcomes);
    }

    fn forward_committed(&mut self) {
        let Some((forward, _)) = &self.forward else { return };
        self.shard.take_committed(&mut self.committed);
        if !self.committed.is_empty() {
            // Unbounded: what waits here is bounded by the pipeline and the merge's progress.
            let _ = forward.try_send(std::mem::take(&mut self.committed));
        }
    }

    /// One event for every change of the replica's role (docs/operations.md, "Logs").
    fn maybe_log_role_change(&mut self) {
        let replica = self.shard.replica();
        let role = replica.role();
        if role == self.was_role {
            return;
        }
        let (promised, hint) = (replica.promised(), replica.leader_hint().map(|node| node.0));
        let ballot = format!("{}.{}", promised.round, promised.node.0);
        let (shard, previous) = (self.index, self.was_role);
        // A replica cut off from its leader probes again every election timeout: its
        // follower ↔ candidate steps are debug, so that a partition does not fill the log;
        // leadership won or lost, and learning, are info.
        let probing = [RoleKind::Follower, RoleKind::Candidate];
        if probing.contains(&role) && probing.contains(&previous) {
            tracing::debug!(shard, ?role, ?previous, ballot, leader = hint, "role changed");
        } else {
            tracing::info!(shard, ?role, ?previous, ballot, leader = hint, "role changed");
        }
        self.was_role = role;
        self.role_changes += 1;
    }

    /// Syncs started so far.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// This shard's metrics, where scrapes read them.
    fn metrics(&self) -> &super::metrics::ShardMetrics {
        &self.control.metrics[usize::from(self.index)]
    }

    /// Copies this shard's counters where scrapes read them (docs/operations.md, "Metrics"):
    /// at every tick, so the paths that count them pay nothing more. With `--apply total` the
    /// applied position, commands and sessions are the applier's to publish.
    pub fn publish_metrics(&mut self) {
        let replica = self.shard.replica();
        let leader = match replica.role() {
            RoleKind::Leader => Some(replica.node()),
            _ => replica.leader_hint(),
        };
        if leader.is_some() && leader != self.last_leader {
            self.leader_changes += 1;
            self.last_leader = leader;
        }
        let store = |field: &std::sync::atomic::AtomicU64, value: u64| {
            field.store(value, Ordering::Relaxed);
        };
        let metrics = self.metrics();
        let promised = replica.promised();
        store(&metrics.role, super::metrics::role_code(replica.role()));
        store(&metrics.ballot_round, promised.round);
        store(&metrics.ballot_node, u64::from(promised.node.0));
        store(&metrics.leader, leader.map_or(0, |node| u64::from(node.0)));
        store(&metrics.leader_changes, self.leader_changes);
        store(&metrics.role_changes, self.role_changes);
        let commit = replica.commit_index().0;
        store(&metrics.commit_slot, commit);
        store(&metrics.known_commit_slot, commit + replica.staleness().slots);
        if self.forward.is_none() {
            // A shard applies each committed run as it commits it.
            store(&metrics.applied_slot, commit);
            store(&metrics.commands_applied, self.shard.applied_commands());
            store(&metrics.sessions, self.shard.sessions() as u64);
        }
        store(&metrics.batches_committed, self.shard.committed_batches());
        let appended = self.shard.wal().end_position().saturating_sub(self.wal_start_position);
        store(&metrics.wal_appended_bytes, appended);
        store(&metrics.wal_syncs, self.syncs);
        metrics.out_of_space.store(self.out_of_space.is_some(), Ordering::Relaxed);
        store(&metrics.out_of_space_dropped, self.out_of_space_dropped);
        metrics.repairing.store(replica.is_repairing(), Ordering::Relaxed);
        let snapshots = self.shard.snapshot_stats();
        store(&metrics.snapshots_taken, snapshots.taken);
        store(&metrics.snapshots_installed, snapshots.installed);
        store(&metrics.snapshots_refused, snapshots.refused);
        store(&metrics.snapshot_bytes, snapshots.current.map_or(0, |(_, bytes)| bytes));
        store(&metrics.snapshot_released_bytes, snapshots.released_bytes);
        store(&metrics.busy_replies, self.busy_replies);
        store(&metrics.peer_messages_dropped, self.dropped_messages);
        store(&metrics.peer_sent_bytes, self.egress.bytes);
        store(&metrics.peer_chosen_sent_bytes, self.egress.chosen_bytes);
    }

    /// The status a client asked for; the state's summary only with `digest` (it hashes the
    /// whole state).
    /// Begins handing this shard's leadership to voter `to` (protocol.md §3.10), for an
    /// operator's `move-leader` or a node stopping: the outcome, as the operator is told it.
    ///
    /// # Errors
    /// The shard failed.
    pub fn move_leader(&mut self, to: NodeId) -> Result<Result<(), MoveRefused>, ShardError> {
        let outcome = self.shard.transfer_leadership(to)?;
        if outcome.is_ok() {
            tracing::info!(shard = self.index, to = to.0, "handing leadership over");
        }
        Ok(outcome.map_err(|error| {
            let leader = match error {
                TransferError::NotLeader { hint } => hint,
                _ => None,
            };
            MoveRefused { reason: error.to_string(), leader }
        }))
    }

    /// At each tick: records whether this node leads the shard, and while the node is about
    /// to stop ([`super::Node::hand_over`]) begins handing a leadership it holds over.
    ///
    /// # Errors
    /// The shard failed.
    pub fn hand_over_if_stopping(&mut self) -> Result<(), ShardError> {
        let replica = self.shard.replica();
        let leads = replica.role() == RoleKind::Leader;
        let leading = &self.control.leading[usize::from(self.index)];
        if !leads || !self.control.handover.load(Ordering::Relaxed) {
            leading.store(leads, Ordering::Relaxed);
            return Ok(());
        }
        if replica.transferring_to().is_some() {
            leading.store(true, Ordering::Relaxed);
            return Ok(());
        }
        match replica.transfer_candidate() {
            Some(to) => {
                leading.store(true, Ordering::Relaxed);
                // A refusal (a transfer just given up) is tried again at the next tick.
                let _ = self.move_leader(to)?;
            }
            // No voter to hand to (a lone voter, or none heard lately): nothing to wait for.
            None => leading.store(false, Ordering::Relaxed),
        }
        Ok(())
    }

    pub fn status(&self, digest: bool) -> ShardStatus {
        let replica = self.shard.replica();
        let leader = match replica.role() {
            RoleKind::Leader => Some(replica.node()),
            _ => replica.leader_hint(),
        };
        let shards = (self.control.commits.len() as u64).max(1);
        let (applied_commands, summary, applied_index, sessions, limits) = match &self.forward {
            // Total-order apply: every shard reports the node's one state machine, and the
            // commands it carried itself.
            Some((_, total)) => {
                let total = total.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let summary = if digest { total.machine().summary() } else { Default::default() };
                // The merge applied every position below its next: this shard's slots below
                // ⌈(next − k) / S⌉.
                let next = total.next_position();
                let index = u64::from(self.index);
                let applied = next.saturating_sub(index).div_ceil(shards);
                let sessions = total.sessions() as u64;
                let limits = total.session_limits();
                (total.applied_by_shard(self.index), summary, Slot(applied), sessions, limits)
            }
            None => {
                let machine = self.shard.machine();
                let summary = if digest { machine.summary() } else { Default::default() };
                // A shard applies each committed run as it commits it.
                let (applied, sessions) = (replica.commit_index(), self.shard.sessions() as u64);
                let limits = self.shard.session_limits();
                (self.shard.applied_commands(), summary, applied, sessions, limits)
            }
        };
        ShardStatus {
            role: replica.role(),
            leader,
            commit_index: replica.commit_index(),
            applied_commands,
            summary,
            syncs: self.syncs,
            not_durable: !self.durable,
            voters: replica.config().voters.len() as u16,
            egress_bytes: self.egress.bytes,
            chosen_bytes: self.egress.chosen_bytes,
            batches: self.shard.committed_batches(),
            promised: replica.promised(),
            applied_index,
            sessions,
            snapshot_slot: self.shard.snapshot_stats().current.map(|(slot, _)| slot),
            apply_total: self.forward.is_some(),
            session_limits: Some(limits),
        }
    }

    /// Queues a frame for a client outside the reply path (status answers, snapshot
    /// pieces); a client that lets them pile up past its bound is cut off.
    pub fn send_to_client(&mut self, connection: u64, body: Body) {
        let frame = self.frame(body);
        if let Some(link) = self.clients.get_mut(&connection).filter(|link| !link.overflowed) {
            link.link.out.push(&mut self.encoder, &frame);
            link.link.ring();
            link.maybe_overflow(self.client_queue_bytes, self.index);
        }
    }

    /// Queues a message for a peer outside the shard (a snapshot piece read on the blocking
    /// pool); it leaves with the next pump.
    pub fn queue_peer_message(&mut self, to: NodeId, message: Message) {
        self.outbox.push((to, message));
    }

    /// Queues the reply to a request that was not applied (it has no committed position).
    fn queue_refusal(&mut self, connection: u64, id: RequestId, status: ReplyStatus, body: Bytes) {
        if let Some(link) = self.clients.get_mut(&connection) {
            let reply = Reply { sequence: id.sequence, status, slot: Slot(0), index: 0, body };
            link.replies.push(reply);
        }
    }

    fn route_messages(&mut self) {
        self.shard.take_outbox(&mut self.outbox);
        let config = self.shard.replica().config();
        let (cluster_id, me) = (config.cluster_id, config.node);
        for (to, message) in self.outbox.drain(..) {
            let Some(link) = self.peers.get_mut(&to) else {
                // Not connected: the protocol copes with lost messages (retries, catch-up).
                self.dropped_messages += 1;
                continue;
            };
            if link.out.len() > LINK_BUFFER_MAX {
                self.dropped_messages += 1;
                continue;
            }
            let chosen = matches!(message, Message::Chosen { .. });
            let frame =
                Frame { cluster_id, from: me, shard: self.index, body: Body::Peer(message) };
            let before = link.out.len();
            link.out.push(&mut self.encoder, &frame);
            let bytes = (link.out.len() - before) as u64;
            self.egress.bytes += bytes;
            if chosen {
                self.egress.chosen_bytes += bytes;
            }
            link.ring();
        }
    }

    /// Sends each tailing client what has committed since, while its connection keeps up: a
    /// client that reads slowly is fed slowly, and never costs more than
    /// `FEED_BUFFER_MAX` bytes here. Slots the replica compacted away come from the WAL.
    fn feed_clients(&mut self) -> Result<(), ShardError> {
        if self.feeds.is_empty() {
            return Ok(());
        }
        let replica = self.shard.replica();
        let config = replica.config();
        let (commit, runs_max, base) =
            (replica.commit_index(), config.message_runs_max, replica.log().base());
        let (cluster_id, me) = (config.cluster_id, config.node);
        let floor = self.shard.log_floor();
        let mut compacted = Vec::new();
        for (connection, feed) in &mut self.feeds {
            let Some(link) = self.clients.get_mut(connection) else { continue };
            let before = link.link.out.len();
            while link.link.out.len() < FEED_BUFFER_MAX {
                let Some((from_slot, end_slot)) = feed.due(commit, FEED_WINDOW) else { break };
                if from_slot < floor {
                    // Released from the WAL: the reader is told where the log resumes (the
                    // snapshot, which a client may install), and the feed ends.
                    if let Some(piece) = self.shard.snapshot_first_piece()? {
                        let body = Body::Peer(piece);
                        let frame = Frame { cluster_id, from: me, shard: self.index, body };
                        link.link.out.push(&mut self.encoder, &frame);
                    }
                    compacted.push(*connection);
                    break;
                }
                let runs = if from_slot < base {
                    // A few messages' worth per read: each read replays part of the WAL.
                    let end_slot = end_slot.min(base).min(from_slot.plus(4 * runs_max as u64));
                    self.shard.archived_runs(from_slot, end_slot, FEED_BUFFER_MAX)?
                } else {
                    let (runs, _) = replica.log().runs_from(from_slot, end_slot, runs_max);
                    runs
                };
                let Some(last) = runs.last() else { break };
                feed.sent_to(last.end_slot());
                for chunk in runs.chunks(runs_max) {
                    let body =
                        Body::Peer(Message::Chosen { runs: chunk.to_vec(), commit_index: commit });
                    let frame = Frame { cluster_id, from: me, shard: self.index, body };
                    link.link.out.push(&mut self.encoder, &frame);
                }
            }
            if link.link.out.len() > before {
                link.link.ring();
            }
        }
        for connection in compacted {
            self.feeds.remove(&connection);
        }
        Ok(())
    }

    /// Sends the held replies every shard has now committed past.
    fn release_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let commit = self.shard.replica().commit_index().0;
        self.control.commits[usize::from(self.index)].store(commit, Ordering::Relaxed);
        let frontier = self.control.merged_commit();
        while let Some((position, ..)) = self.held.front()
            && *position < frontier
        {
            let Some((_, connection, reply)) = self.held.pop_front() else { break };
            if let Some(link) = self.clients.get_mut(&connection) {
                link.replies.push(reply);
            }
        }
    }

    /// Queues `applied`'s reply for its client, or holds it until every shard has committed
    /// past it (a write that must follow real time across shards).
    fn answer(
        &mut self,
        connection: u64,
        applied: AppliedCommand<S::Reply>,
        shards: u64,
        forwarding: bool,
    ) {
        // A write that must follow real time across shards (a coordination write) is
        // answered once every shard has committed past it: whatever its client writes
        // next, on any shard, gets a later place in the merged order (docs/coordination.md).
        // With total-order apply the merge has already passed it.
        let in_order = !forwarding
            && !applied.id.is_query()
            && match &applied.outcome {
                Outcome::Applied(reply) | Outcome::Duplicate(reply) => {
                    S::orders_across_shards(reply)
                }
                _ => false,
            };
        let encoded = |reply: &S::Reply| {
            let mut encoded = Vec::new();
            S::encode_reply(reply, &mut encoded);
            Bytes::from(encoded)
        };
        let (status, body) = match applied.outcome {
            Outcome::Applied(reply) => (ReplyStatus::Applied, encoded(&reply)),
            Outcome::Duplicate(reply) => (ReplyStatus::Duplicate, encoded(&reply)),
            Outcome::Expired => (ReplyStatus::Expired, Bytes::new()),
            Outcome::SessionExpired => (ReplyStatus::SessionExpired, Bytes::new()),
            Outcome::Registered(client) => {
                (ReplyStatus::Registered, Bytes::copy_from_slice(&client.to_le_bytes()))
            }
        };
        let reply = Reply {
            sequence: applied.id.sequence,
            status,
            slot: applied.slot,
            index: applied.index,
            body,
        };
        if in_order {
            let position = applied.slot.0 * shards + u64::from(self.index);
            self.held.push_back((position, connection, reply));
        } else if let Some(link) = self.clients.get_mut(&connection) {
            link.replies.push(reply);
        }
    }

    fn route_replies(&mut self) {
        self.release_held();
        self.shard.take_replies(&mut self.applied);
        let shards = self.control.commits.len() as u64;
        let forwarding = self.forward.is_some();
        // Taken and put back, to keep its allocation from pump to pump.
        let mut replies = std::mem::take(&mut self.applied);
        for applied in replies.drain(..) {
            let Some(connection) = self.waiting.remove(&applied.id) else { continue };
            self.answer(connection, applied, shards, forwarding);
        }
        self.applied = replies;
        self.release_held();
        // Reads aborted by a lost leadership go to the leader it names.
        self.shard.take_aborted_reads(&mut self.aborted_reads);
        for (id, hint) in std::mem::take(&mut self.aborted_reads) {
            if let Some(connection) = self.waiting.remove(&id) {
                self.queue_refusal(connection, id, ReplyStatus::NotLeader { hint }, Bytes::new());
            }
        }
        // A leader that lost its ballot may never answer what waits: send those clients to
        // the new leader. A retry there is safe: request ids make it apply at most once.
        let leader = self.shard.replica().role() == RoleKind::Leader;
        if self.was_leader && !leader {
            let hint = self.shard.replica().leader_hint();
            for (id, connection) in std::mem::take(&mut self.waiting) {
                self.queue_refusal(connection, id, ReplyStatus::NotLeader { hint }, Bytes::new());
            }
        }
        self.maybe_log_role_change();
        self.was_leader = leader;
        let cluster_id = self.shard.replica().config().cluster_id;
        let me = self.shard.replica().node();
        for link in self.clients.values_mut() {
            if link.overflowed {
                // Being disconnected: what it would be sent is dropped, not kept.
                link.replies.clear();
                continue;
            }
            if link.replies.is_empty() {
                continue;
            }
            let replies = std::mem::take(&mut link.replies);
            let frame =
                Frame { cluster_id, from: me, shard: self.index, body: Body::Replies(replies) };
            link.link.out.push(&mut self.encoder, &frame);
            link.link.ring();
            link.maybe_overflow(self.client_queue_bytes, self.index);
        }
    }
}

/// Test-only: a node whose environment sets this variable (to anything) reports each sync
/// complete as it starts, and flushes on a timer, [`ACK_BEFORE_SYNC_DELAY`] after the first
/// sync it has not flushed yet: it acknowledges writes before they are on disk. A bug on purpose, which `tests/power_loss.rs` must catch (a power cut loses
/// acknowledged writes) while a plain `kill -9` does not (the kernel keeps the page cache).
/// An environment variable, as `QUORUM_TEST_PANIC_ON_KEY` (src/machine/node.rs): not in
/// `--help`, not settable from a config file, and named for what it is.
pub const ACK_BEFORE_SYNC_VARIABLE: &str = "QUORUM_TEST_ACK_BEFORE_SYNC";

/// How long the test-only bug waits before it flushes. Flushing at once, once per sync, would
/// hide the bug on the power-loss test's FUSE mounts: the kernel holds a file's inode lock
/// through a FUSE fsync, so the shard's next write to the segment (on its reactor) would wait
/// for the flush, and its acknowledgements with it.
const ACK_BEFORE_SYNC_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether [`ACK_BEFORE_SYNC_VARIABLE`] is set: read once, logged loudly once.
fn ack_before_sync() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        let set = std::env::var_os(ACK_BEFORE_SYNC_VARIABLE).is_some();
        if set {
            tracing::warn!(
                "{ACK_BEFORE_SYNC_VARIABLE} is set: writes are acknowledged before they are \
                 durable (test only; a power loss loses them)"
            );
        }
        set
    })
}

/// Moves everything the shard produced to where it goes, and starts a sync if records wait.
pub fn pump<S: Hosted>(host: &HostRef<S>) {
    let mut guard = host.borrow_mut();
    let state = &mut *guard;
    if state.failed {
        return;
    }
    state.route_messages();
    state.forward_committed();
    state.route_replies();
    if let Err(error) = state.feed_clients() {
        return fail(state, &error);
    }
    if let Some(pending) = state.shard.start_snapshot() {
        state.snapshots_started += 1;
        write_snapshot(host, pending);
    }
    if state.syncing {
        return;
    }
    let pending = match state.shard.start_sync() {
        Ok(pending) => pending,
        Err(error) => return fail(state, &error),
    };
    let Some(pending) = pending else { return };
    state.syncing = true;
    state.syncs += 1;
    let durable = state.durable;
    drop(guard);
    let host = host.clone();
    glommio::spawn_local(async move {
        let started = std::time::Instant::now();
        let (outcome, in_sync) = run_sync(pending, durable).await;
        {
            let mut state = host.borrow_mut();
            state.sync_micros += in_sync.as_micros() as u64;
            state.sync_wait_micros += started.elapsed().as_micros() as u64;
            state.syncing = false;
            if state.failed {
                return;
            }
            if durable {
                state.metrics().wal_sync_seconds.record(in_sync);
            }
            if let Err(error) = state.shard.finish_sync(outcome) {
                state.metrics().wal_sync_errors.fetch_add(1, Ordering::Relaxed);
                return fail(&mut state, &error);
            }
        }
        pump(&host);
    })
    .detach();
}

/// Runs a sync: `fdatasync` blocks, so it runs on the executor's blocking pool, never on the
/// reactor. Returns its outcome and the time spent in the sync itself.
async fn run_sync(pending: PendingSync, durable: bool) -> (SyncOutcome, std::time::Duration) {
    if durable && ack_before_sync() {
        // The bug on purpose (ACK_BEFORE_SYNC_VARIABLE): durable now, flushed later.
        let early = pending.outcome_before_flush();
        thread_local!(static FLUSH_DUE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
        // One flush per delay: the one already due syncs this segment's writes too.
        if !FLUSH_DUE.replace(true) {
            glommio::spawn_local(async move {
                glommio::timer::sleep(ACK_BEFORE_SYNC_DELAY).await;
                FLUSH_DUE.set(false);
                glommio::executor().spawn_blocking(move || drop(pending.run())).await;
            })
            .detach();
        }
        (early, std::time::Duration::ZERO)
    } else if durable {
        glommio::executor()
            .spawn_blocking(move || {
                let ran = std::time::Instant::now();
                let outcome = pending.run();
                (outcome, ran.elapsed())
            })
            .await
    } else {
        glommio::executor().yield_now().await;
        (pending.skip(), std::time::Duration::ZERO)
    }
}

/// Writes a snapshot on the blocking pool (it may be large: write, fsync, rename), then lets
/// the shard release the WAL it covers.
fn write_snapshot<S: Hosted>(host: &HostRef<S>, pending: PendingSnapshot<MmapBackend>) {
    let host = host.clone();
    glommio::spawn_local(async move {
        let (slot, built_in) = (pending.slot(), pending.image_time());
        let started = std::time::Instant::now();
        let written = glommio::executor().spawn_blocking(move || pending.run()).await;
        let mut state = host.borrow_mut();
        if state.failed {
            return;
        }
        let finishing = std::time::Instant::now();
        if let Err(error) = state.shard.finish_snapshot(written) {
            return fail(&mut state, &error);
        }
        let release_micros = finishing.elapsed().as_micros() as u64;
        state.metrics().snapshot_write_seconds.record(finishing.duration_since(started));
        let stats = state.shard.snapshot_stats();
        tracing::debug!(
            shard = state.index,
            slot = slot.0,
            bytes = stats.current.map_or(0, |(_, bytes)| bytes),
            image_micros = built_in.as_micros() as u64,
            write_micros = started.elapsed().as_micros() as u64,
            release_micros,
            released_bytes = stats.released_bytes,
            "snapshot written"
        );
    })
    .detach();
}

/// Runs `f` on the shard and pumps; a shard failure stops the node.
pub fn with_shard<S: Hosted>(
    host: &HostRef<S>,
    f: impl FnOnce(&mut Host<S>) -> Result<(), ShardError>,
) {
    if host.borrow().failed {
        return;
    }
    let result = f(&mut host.borrow_mut());
    match result {
        Ok(()) => pump(host),
        Err(error) => fail(&mut host.borrow_mut(), &error),
    }
}

/// A shard failed (its log is poisoned or unreadable): stop the whole node, which then
/// recovers from its logs and its peers on restart.
pub fn fail<S: Hosted>(host: &mut Host<S>, error: &ShardError) {
    if host.failed {
        return;
    }
    // Fenced from now on: a failed sync is never retried, and nothing it covered may be
    // acknowledged (docs/disk-faults.md). The node exits; a restart recovers from the disk.
    host.failed = true;
    host.metrics().failed.store(true, Ordering::Relaxed);
    tracing::error!(shard = host.index, %error, "shard failed; stopping the node");
    host.control.failed.store(true, Ordering::SeqCst);
    host.control.stop.store(true, Ordering::SeqCst);
}

/// True while a sync runs or records wait for one.
pub fn has_unsynced<S: Hosted>(host: &HostRef<S>) -> bool {
    let host = host.borrow();
    host.syncing || host.shard.has_unsynced()
}

/// Messages dropped because their peer was unreachable or too far behind.
pub fn dropped_messages<S: Hosted>(host: &HostRef<S>) -> u64 {
    host.borrow().dropped_messages
}

/// Connects a shard to the total-order applier: its committed runs go there, the outcomes of
/// its clients' commands come back into its reply path.
pub async fn connect_total<S: Hosted>(host: &HostRef<S>, link: ShardLink<S>) {
    let runs = link.runs.connect().await;
    let outcomes = link.outcomes.connect().await;
    let (forward, forwarded) = local_channel::new_unbounded();
    host.borrow_mut().forward_commits(forward, link.total);
    glommio::spawn_local(async move {
        while let Some(batch) = forwarded.recv().await {
            if runs.send(batch).await.is_err() {
                return; // The applier stopped.
            }
        }
    })
    .detach();
    let host = host.clone();
    glommio::spawn_local(async move {
        while let Some(outcomes) = outcomes.recv().await {
            host.borrow_mut().on_applied(outcomes);
            pump(&host);
        }
    })
    .detach();
}
