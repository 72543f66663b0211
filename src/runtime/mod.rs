//! The node runtime, and the only part of Quorum that knows glommio: one executor per shard,
//! pinned to a core, each driving its shard's replica, WAL, timers and connections. Shards
//! share nothing but the stop flag.
//!
//! Blocking work stays off the reactors: syncs run on each executor's blocking pool, and WAL
//! segments are created and pre-faulted ahead of use by the WAL's own helper thread.

mod apply;
mod clock;
pub mod config;
mod host;
pub mod metrics;
mod net;
pub mod restore;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use quorum_wal::{MmapBackend, Options};

use crate::client::{Client, ClientError, ClientOptions};
use crate::core::ClusterId;
pub use crate::machine::NodeMachine;
use crate::machine::StateMachine;
use crate::runtime::config::{ApplyMode, NodeConfig};
use crate::shard::{ApplyTo, Shard, ShardError, ShardSettings, panic_message};

/// A state machine a node can host. Each shard's instance is made and used on that shard's
/// executor; with `--apply total` the node's one instance is made on the starting thread and
/// then used by the applier's executor (so it moves between threads, and its replies travel
/// back to the shards').
pub trait Hosted: StateMachine<Reply: Send> + Send + 'static {}

impl<T: StateMachine<Reply: Send> + Send + 'static> Hosted for T {}

/// Makes a state machine for shard `k` (with `--apply total`, `k` = the shard count for the
/// node's one machine). Called on the executor that will use it.
type Factory<S> = Arc<dyn Fn(u16) -> S + Send + Sync>;

/// What the shards of a node share: whether to stop, whether one failed, and each shard's
/// commit position (so an idle shard's leader knows how far to skip).
#[derive(Debug, Default)]
pub struct Control {
    /// Set to stop every shard (SIGTERM, or a shard failed).
    pub stop: AtomicBool,
    /// Set when a shard failed: the node exits with an error.
    pub failed: AtomicBool,
    /// Per shard, its commit position on this node; each on its own cache line, written only
    /// by its shard.
    pub commits: Vec<CachePadded<AtomicU64>>,
    /// Connections accepted and not known to be peers' (in their handshake, or clients'),
    /// over all shards: at most `connections_max` + `net::HANDSHAKES_EXTRA` (64).
    pub open_connections: AtomicUsize,
    /// Client connections served, over all shards: at most `connections_max`.
    pub client_connections: AtomicUsize,
    /// Set to have every shard this node leads hand its leadership to another voter before
    /// the node stops ([`Node::hand_over`], protocol.md §3.10).
    pub handover: AtomicBool,
    /// Per shard, whether this node led it at the shard's last tick.
    pub leading: Vec<AtomicBool>,
    /// Per shard, its metrics: written by that shard only, read by scrapes
    /// ([`metrics::NodeProbe`]).
    pub metrics: metrics::NodeMetrics,
}

impl Control {
    fn new(shards: u16) -> Control {
        Control {
            commits: (0..shards).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
            leading: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            metrics: (0..shards)
                .map(|_| CachePadded::new(metrics::ShardMetrics::default()))
                .collect(),
            ..Control::default()
        }
    }

    /// The highest commit position among the node's shards other than `shard`.
    /// The first global position some shard of this node has not committed: every shard's
    /// commit, as its board says (`commit · shards + shard`), the lowest of them.
    fn merged_commit(&self) -> u64 {
        let shards = self.commits.len() as u64;
        let commit = |(shard, commit): (usize, &CachePadded<AtomicU64>)| {
            commit.load(Ordering::Relaxed) * shards + shard as u64
        };
        self.commits.iter().enumerate().map(commit).min().unwrap_or(0)
    }

    fn others_commit_max(&self, shard: u16) -> u64 {
        let others = self.commits.iter().enumerate().filter(|(k, _)| *k != usize::from(shard));
        others.map(|(_, commit)| commit.load(Ordering::Relaxed)).max().unwrap_or(0)
    }
}

/// Why a node could not start or stopped in error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A shard's log could not be opened or recovered.
    #[error("shard {shard}: {source}")]
    Shard {
        /// Which shard.
        shard: u16,
        /// What failed.
        source: ShardError,
    },
    /// A shard's damaged directory could not be set aside.
    #[error("shard {shard}: cannot set its damaged directory aside as {path}: {source}")]
    SetAside {
        /// Which shard.
        shard: u16,
        /// The name it was to get.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A shard's port could not be bound.
    #[error("shard {shard}: cannot listen on {address}: {source}")]
    Listen {
        /// Which shard.
        shard: u16,
        /// The address.
        address: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The executor could not be started.
    #[error("shard {shard}: cannot start its executor: {reason}")]
    Executor {
        /// Which shard.
        shard: u16,
        /// What failed.
        reason: String,
    },
    /// A shard failed while running; its error was logged.
    #[error("a shard failed; see the log")]
    Failed,
    /// The process may not open as many files as the connection limit needs.
    #[error(
        "--connections-max {connections_max} needs about {needed} open files, but this \
         process may open at most {hard} (the hard limit, `ulimit -Hn`): lower \
         --connections-max or raise the limit"
    )]
    OpenFiles {
        /// The limit configured.
        connections_max: u32,
        /// Descriptors it needs.
        needed: u64,
        /// The process's hard limit.
        hard: u64,
    },
    /// A state machine that persists itself under `--apply total`, whose merged order is
    /// applied from the start at every start: it would apply its batches twice.
    #[error(
        "this state machine persists itself (StateMachine::persisted_slot), which needs each \
         shard to apply its own log: use --apply shard"
    )]
    PersistedTotal,
    /// An executor panicked (a broken invariant, or the state machine): the node stopped.
    #[error("{executor} panicked: {message}")]
    Panicked {
        /// Which executor: `shard K`, or the total-order applier.
        executor: String,
        /// The panic's message.
        message: String,
    },
}

/// Waits on a thread of its own for an executor to end. However it ends in error, a panic
/// above all, every other executor is told to stop and the node exits with that error: a node
/// with a dead shard must not live on half-alive (its clients wait forever, and with
/// `--apply total` the other shards' committed runs pile up for a merge that never moves).
fn watch_executor(
    handle: glommio::ExecutorJoinHandle<Result<(), NodeError>>,
    executor: String,
    control: Arc<Control>,
) -> JoinHandle<Result<(), NodeError>> {
    std::thread::spawn(move || {
        let error = match handle.join() {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error,
            Err(glommio::GlommioError::BuilderError(glommio::BuilderErrorKind::ThreadPanic(
                payload,
            ))) => {
                let message = panic_message(&*payload);
                tracing::error!(%executor, panic = %message, "panicked; stopping the node");
                NodeError::Panicked { executor, message }
            }
            Err(error) => {
                tracing::error!(%executor, %error, "ended abnormally; stopping the node");
                NodeError::Failed
            }
        };
        control.failed.store(true, Ordering::SeqCst);
        control.stop.store(true, Ordering::SeqCst);
        Err(error)
    })
}

/// A running node: one thread per shard.
///
/// ```no_run
/// # use quorum::runtime::{Node, NodeMachine};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let config: quorum::runtime::config::NodeConfig = todo!();
/// let node = Node::builder(config)
///     .state_machine(|_shard| NodeMachine::default())
///     .start()?;
/// let client = node.client()?;
/// client.put(b"greeting", b"hello")?;
/// node.stop();
/// node.wait()?;
/// # Ok(()) }
/// ```
pub struct Node {
    control: Arc<Control>,
    id: crate::core::NodeId,
    threads: Vec<JoinHandle<Result<(), NodeError>>>,
    listen: String,
    cluster_id: ClusterId,
    tick_ms: u32,
    election_timeout_ms: u32,
}

/// A node being configured: [`Node::builder`], then [`NodeBuilder::state_machine`].
pub struct NodeBuilder {
    config: NodeConfig,
}

/// A node with its state machine chosen: [`NodeStart::start`] runs it.
pub struct NodeStart<S: Hosted> {
    config: NodeConfig,
    machine: Factory<S>,
}

impl NodeBuilder {
    /// The state machine each shard runs: `make(shard)` is called once per shard, on that
    /// shard's executor, when the node starts (twice if the shard's stored snapshot is damaged
    /// and its directory is set aside to be repaired from peers; and once more, with the shard
    /// count, for the node's one machine under `--apply total`). A snapshot restores through
    /// [`StateMachine::restore`] instead.
    pub fn state_machine<S: Hosted>(
        self,
        make: impl Fn(u16) -> S + Send + Sync + 'static,
    ) -> NodeStart<S> {
        NodeStart { config: self.config, machine: Arc::new(make) }
    }
}

impl<S: Hosted> NodeStart<S> {
    /// Opens every shard's log, binds every shard's port and starts the shards. Returns once
    /// all of them are listening, or with the first error.
    ///
    /// # Errors
    /// A log that cannot be recovered, a port that cannot be bound, an executor that cannot
    /// start.
    pub fn start(self) -> Result<Node, NodeError> {
        start(self.config, self.machine)
    }
}

impl Node {
    /// Starts configuring a node from its settings (`quorum node`'s flags and file,
    /// [`NodeConfig`]).
    #[must_use]
    pub fn builder(config: NodeConfig) -> NodeBuilder {
        NodeBuilder { config }
    }

    /// Starts a node of the built-in key-value store: what `quorum node` runs.
    ///
    /// # Errors
    /// As [`NodeStart::start`].
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let history_bytes = config.history_bytes;
        Node::builder(config)
            .state_machine(move |_| NodeMachine::from_environment(history_bytes))
            .start()
    }

    /// A client of this node's cluster, connected through this node: it proposes commands
    /// (routed to each shard's leader, retried without applying twice), runs reads and tails
    /// the log.
    ///
    /// # Errors
    /// The node does not answer (it stopped).
    pub fn client(&self) -> Result<Client, ClientError> {
        let options = ClientOptions { cluster_id: self.cluster_id, ..ClientOptions::default() };
        Client::connect(std::slice::from_ref(&self.listen), options)
    }

    /// This node's metrics and readiness, read from its shards when asked (a scrape, `GET
    /// /ready`): ready while every shard knows its leader and has applied to within
    /// `ready_lag_slots` of the highest commit position it knows of.
    #[must_use]
    pub fn probe(&self, ready_lag_slots: u64) -> metrics::NodeProbe {
        metrics::NodeProbe::new(self.control.clone(), self.id.0, ready_lag_slots)
    }

    /// The address clients and peers reach this node's shard 0 at (shard `k` at its port + `k`).
    #[must_use]
    pub fn address(&self) -> &str {
        &self.listen
    }
}

fn start<S: Hosted>(config: NodeConfig, machine: Factory<S>) -> Result<Node, NodeError> {
    fit_open_files(&config)?;
    let config = Arc::new(config);
    let control = Arc::new(Control::new(config.shards));
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    let mut threads = Vec::new();
    let mut ready = Vec::new();
    let mut total = match config.apply {
        ApplyMode::Shard => None,
        ApplyMode::Total => {
            let one = machine(config.shards);
            if S::PERSISTS {
                return Err(NodeError::PersistedTotal);
            }
            Some(apply::start(&config, &control, &mut threads, one)?)
        }
    };
    for shard in 0..config.shards {
        let (started, ready_rx) = std::sync::mpsc::sync_channel(1);
        ready.push(ready_rx);
        let placement = if config.pin_cores {
            // Shard k on core first_core + k: with one node per host, each shard has a
            // core; several nodes on one host spread by giving each its own first core.
            Placement::Fixed((config.first_core + usize::from(shard)) % cores)
        } else {
            Placement::Unbound
        };
        let builder = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{shard}"))
            // Registered I/O memory counts against `ulimit -l`; we do no DMA file I/O.
            .io_memory(256 << 10)
            // One thread. With a second one a sync need not wait behind a snapshot's
            // write (a max of 2.3-3.6 s became 1.0-1.5 s under 4 KiB writes), but every
            // sync during it shares the disk with it: p99 23-35 ms became 50-70 ms.
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1));
        let (shard_config, shard_control) = (config.clone(), control.clone());
        let link = total.as_mut().map(|total| total.link(shard));
        let make = machine.clone();
        let handle = builder
            .spawn(move || run_shard(shard_config, shard, shard_control, started, link, make))
            .map_err(|error| NodeError::Executor { shard, reason: error.to_string() })?;
        threads.push(watch_executor(handle, format!("shard {shard}"), control.clone()));
    }
    let (listen, cluster_id) = (config.listen.clone(), config.cluster_id);
    let (tick_ms, election_timeout_ms) = (config.tick_ms, config.election_timeout_ms);
    let id = config.id;
    let node = Node { control, id, threads, listen, cluster_id, tick_ms, election_timeout_ms };
    for ready_rx in ready {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                node.stop();
                let _ = node.wait();
                return Err(error);
            }
            Err(_) => {
                node.stop();
                return Err(node.wait().err().unwrap_or(NodeError::Failed));
            }
        }
    }
    Ok(node)
}

impl Node {
    /// The flag that stops the node when set (for signal handlers). For the binary: a program
    /// that embeds a node calls [`Node::stop`].
    #[must_use]
    #[doc(hidden)]
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Hands the leadership of every shard this node leads to another voter (the one it heard
    /// from last), and waits until it leads none or `timeout` passed: a node about to stop
    /// does so, so that its clients see a quick hand-over instead of an election timeout
    /// (protocol.md §3.10). Returns how many shards it still led at the end (0: all handed
    /// over). The node keeps serving as a follower meanwhile; call [`Node::stop`] after.
    #[must_use]
    pub fn hand_over(&self, timeout: Duration) -> usize {
        self.control.handover.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        // Each shard's next tick starts its transfer and counts itself again.
        std::thread::sleep(Duration::from_millis(u64::from(self.tick_ms) * 2));
        loop {
            let leading =
                self.control.leading.iter().filter(|leads| leads.load(Ordering::SeqCst)).count();
            if leading == 0 || std::time::Instant::now() >= deadline {
                return leading;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the node as an operator's stop should: unless a shard failed, hands every
    /// shard it leads over first ([`Node::hand_over`], for at most two election timeouts,
    /// logged as `leadership handed over`), then stops every shard and waits for them.
    ///
    /// # Errors
    /// A shard failed.
    pub fn shut_down(self) -> Result<(), NodeError> {
        if !self.control.stop.load(Ordering::SeqCst) {
            let started = std::time::Instant::now();
            let timeout = Duration::from_millis(2 * u64::from(self.election_timeout_ms));
            let still_led = self.hand_over(timeout);
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(still_led, ms, "leadership handed over");
        }
        self.stop();
        self.wait()
    }

    /// Asks every shard to stop.
    pub fn stop(&self) {
        self.control.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for every shard to stop.
    ///
    /// # Errors
    /// A shard failed.
    pub fn wait(self) -> Result<(), NodeError> {
        let mut result = Ok(());
        for thread in self.threads {
            let outcome = thread.join().unwrap_or(Err(NodeError::Failed));
            if result.is_ok() {
                result = outcome;
            }
        }
        if result.is_ok() && self.control.failed.load(Ordering::SeqCst) {
            result = Err(NodeError::Failed);
        }
        result
    }
}

async fn run_shard<S: Hosted>(
    config: Arc<NodeConfig>,
    shard: u16,
    control: Arc<Control>,
    started: std::sync::mpsc::SyncSender<Result<(), NodeError>>,
    total: Option<apply::ShardLink<S>>,
    make: Factory<S>,
) -> Result<(), NodeError> {
    let hooks = || metrics::NodeHooks::new(control.clone(), shard, config.id);
    let opened = open_shard(&config, shard, total.is_some(), &make, hooks);
    let (opened, listener) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let _ = started.send(Err(error));
            return Ok(());
        }
    };
    let durable = config.durability == crate::runtime::config::Durability::Fsync;
    let tick = Duration::from_millis(u64::from(config.tick_ms));
    let host = host::Host::new(
        opened,
        shard,
        control.clone(),
        (durable, config.client_queue_bytes),
        clock::TickClock::new(tick),
    );
    if let Some(link) = total {
        host::connect_total(&host, link).await;
    }
    let shard_net = net::ShardNet::new(config.clone(), shard, host.clone(), control.clone());
    glommio::spawn_local(net::accept_loop(shard_net.clone(), listener)).detach();
    for (peer, address, _) in config.members() {
        if peer != config.id {
            let task = net::dial_loop(shard_net.clone(), peer, address.to_string());
            glommio::spawn_local(task).detach();
        }
    }
    let _ = started.send(Ok(()));
    tracing::info!(shard, listen = %config.listen, "shard running");
    let mut stalls = Stalls::new(&config);
    while !control.stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(tick).await;
        stalls.on_tick(&host.borrow(), tick, shard_net.on_tick());
        host::with_shard(&host, |host| {
            if host.check_space()? {
                return Ok(()); // Paused: the disk is full (docs/disk-faults.md).
            }
            // Every tick that elapsed, however late this wake: the replica's tick count
            // follows the clock (leases rely on it, protocol.md §5.4).
            host.catch_up_clock()?;
            host.hand_over_if_stopping()?;
            host.skip_idle()
        });
        host.borrow_mut().publish_metrics();
    }
    // A clean stop leaves everything appended durable, the commit index included, so a
    // restart finds the state it left (a failed shard skips this: its log is poisoned).
    if !control.failed.load(Ordering::SeqCst) {
        host::with_shard(&host, |host| host.shard.on_tick());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while host::has_unsynced(&host) && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(1)).await;
            host::pump(&host);
        }
    }
    log_stopped(&host, shard, &stalls);
    Ok(())
}

/// Logs what a shard did, as it stops.
fn log_stopped<S: Hosted>(host: &host::HostRef<S>, shard: u16, stalls: &Stalls) {
    let state = host.borrow();
    tracing::info!(
        shard,
        dropped_messages = host::dropped_messages(host),
        shared_batches = state.shard.shared_batches,
        unshared_batches = state.shard.unshared_batches,
        busy_replies = state.busy_replies,
        sync_mean_us = state.sync_micros / state.syncs().max(1),
        sync_wait_mean_us = state.sync_wait_micros / state.syncs().max(1),
        syncs = state.syncs(),
        held_max_ms = stalls.held_max.as_millis() as u64,
        "shard stopped"
    );
}

/// Times the shard's thread was held: a tick that comes late by more than a few heartbeats
/// means something ran on the reactor that long (a WAL rotation waiting for its segment, a
/// snapshot's image or release, a digest, or a starved CPU), and meanwhile heartbeats and
/// messages waited. Measured from the ticks alone, so the hot path pays nothing.
struct Stalls {
    last_tick: std::time::Instant,
    /// The WAL's tail segment, and the snapshots started and finished, at the last tick: what
    /// changed since names what may have held the thread.
    last_segment: u64,
    last_started: u64,
    last_taken: u64,
    held_max: Duration,
    /// Logged (debug) from here; as a warning from `warn_from`, where elections become likely.
    log_from: Duration,
    warn_from: Duration,
}

impl Stalls {
    fn new(config: &NodeConfig) -> Stalls {
        let heartbeat = Duration::from_millis(u64::from(config.heartbeat_interval_ms));
        let election = Duration::from_millis(u64::from(config.election_timeout_ms));
        Stalls {
            last_tick: std::time::Instant::now(),
            last_segment: 0,
            last_started: 0,
            last_taken: 0,
            held_max: Duration::ZERO,
            log_from: (2 * heartbeat).max(Duration::from_millis(20)),
            warn_from: election / 2,
        }
    }

    fn on_tick<S: Hosted>(
        &mut self,
        host: &host::Host<S>,
        tick: Duration,
        now: std::time::Instant,
    ) {
        let held = now.saturating_duration_since(self.last_tick).saturating_sub(tick);
        self.last_tick = now;
        self.held_max = self.held_max.max(held);
        let wal = host.shard.wal();
        let segment = wal.end_position() / wal.segment_bytes();
        let (started, taken) = (host.snapshots_started, host.shard.snapshot_stats().taken);
        // A new segment (its preparation may have been waited for), a snapshot started (its
        // image was built here), one finished (its release ran here).
        let rotated = segment != self.last_segment;
        if rotated {
            // Seen at the tick after: several rotations within one tick are one event.
            let segments = segment.saturating_sub(self.last_segment);
            tracing::info!(shard = host.index, segment, segments, "WAL segment rotated");
        }
        let (image, release) = (started != self.last_started, taken != self.last_taken);
        (self.last_segment, self.last_started, self.last_taken) = (segment, started, taken);
        let (shard, held_ms) = (host.index, held.as_millis() as u64);
        if held >= self.warn_from {
            tracing::warn!(
                shard,
                held_ms,
                rotated,
                image,
                release,
                "the shard's thread was held: heartbeats waited"
            );
        } else if held >= self.log_from {
            tracing::debug!(shard, held_ms, rotated, image, release, "the shard's thread was held");
        }
    }
}

/// Descriptors a node needs besides its connections: per shard a listener, its dialled peers,
/// WAL segments, the snapshot and metadata files, io_uring rings and event descriptors;
/// a margin for the rest.
fn open_files_needed(config: &NodeConfig) -> u64 {
    let members = config.members().count() as u64;
    let per_shard = 2 * members + 32;
    u64::from(config.connections_max)
        + net::HANDSHAKES_EXTRA as u64
        + u64::from(config.shards) * per_shard
        + 256
}

/// Raises the process's open-file limit to what the connection limit needs, if the hard
/// limit allows: a node that runs out of descriptors cannot create its next WAL segment.
fn fit_open_files(config: &NodeConfig) -> Result<(), NodeError> {
    let needed = open_files_needed(config);
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Ok(()); // Cannot tell: accept errors are logged and tried again.
    }
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    if limit.rlim_max < needed {
        let (connections_max, hard) = (config.connections_max, limit.rlim_max);
        return Err(NodeError::OpenFiles { connections_max, needed, hard });
    }
    let soft = limit.rlim_cur;
    limit.rlim_cur = needed;
    // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the hard one
    // needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } == 0 {
        tracing::info!(soft, raised_to = needed, "open-file limit raised for --connections-max");
    }
    Ok(())
}

/// True for a snapshot the open refused as damaged (a checksum mismatch, a cut, an unknown
/// format, a malformed image), not as another cluster's or shard's (a misplaced directory).
fn is_damage(error: &ShardError) -> bool {
    use crate::storage::snapshot::SnapshotError;
    matches!(
        error,
        ShardError::Snapshot(
            SnapshotError::Truncated(_)
                | SnapshotError::Format(_)
                | SnapshotError::Checksum
                | SnapshotError::Image(_)
                | SnapshotError::Unreadable(_)
        )
    )
}

/// A shard whose snapshot file is damaged cannot start from it: the log before it may be
/// released. With other voters to repair from, its directory is set aside (renamed
/// `shard-K.damaged-SECONDS`, kept for the operator) and the shard starts empty, as a wiped
/// voter does: it takes no part in elections until every other voter has said what it holds
/// and it has caught up (protocol.md §3.9). Alone, or for a snapshot of another cluster or
/// shard, the start fails with the open's error.
fn set_aside_damaged(
    shard: u16,
    dir: &std::path::Path,
    damage: &ShardError,
) -> Result<(), NodeError> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let aside = dir.with_file_name(format!("shard-{shard}.damaged-{seconds}"));
    std::fs::rename(dir, &aside).map_err(|source| NodeError::SetAside {
        shard,
        path: aside.clone(),
        source,
    })?;
    tracing::error!(
        shard,
        %damage,
        aside = %aside.display(),
        "snapshot file damaged: its directory is set aside and the shard starts empty; it \
         repairs from its peers before it votes (protocol.md §3.9)"
    );
    Ok(())
}

fn open_shard<S: Hosted>(
    config: &NodeConfig,
    shard: u16,
    forward: bool,
    make: &Factory<S>,
    hooks: impl Fn() -> metrics::NodeHooks,
) -> Result<(host::NodeShard<S>, glommio::net::TcpListener), NodeError> {
    let listener = net::bind(&config.listen, shard).map_err(|source| NodeError::Listen {
        shard,
        address: config.listen.clone(),
        source,
    })?;
    let dir = config.data_dir.join(format!("shard-{shard}"));
    let options = Options { segment_bytes: config.wal_segment_bytes, prepare_ahead: true };
    let settings = ShardSettings {
        sessions: config.sessions,
        apply: if forward { ApplyTo::Forward } else { ApplyTo::Shard },
        shard,
        shards: config.shards,
        snapshot_every_bytes: config.snapshot_every_bytes,
        // At most 32 MiB (`NodeConfig`): one frame each.
        snapshot_piece_bytes: config.snapshot_piece_bytes,
        tick_us: u64::from(config.tick_ms) * 1000,
        ..ShardSettings::new(config.sessions)
    };
    let open = || {
        let backend = MmapBackend::new(&dir).map_err(ShardError::Wal)?;
        let shard_config = config.shard_config(shard);
        let (machine, settings) = (make(shard), settings.clone());
        Shard::open_hooked(shard_config, backend, options.clone(), machine, settings, hooks())
    };
    let opened = match open() {
        // The first open has let go of the directory: it can be renamed.
        Err(damage) if is_damage(&damage) && config.shard_config(shard).voters.len() >= 2 => {
            set_aside_damaged(shard, &dir, &damage)?;
            open()
        }
        opened => opened,
    };
    let opened = opened.map_err(|source| NodeError::Shard { shard, source })?;
    Ok((opened, listener))
}
