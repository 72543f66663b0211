//! The node's metrics and readiness, read when asked (docs/operations.md, "Metrics").
//!
//! Each shard keeps its counters where it already keeps them, on its own thread, and copies
//! them into its [`ShardMetrics`] (relaxed atomic stores on a cache line of its own, written
//! by that shard only) at every tick; what is observed as it happens (a sync's and a snapshot
//! write's duration; per batch, its size and, on the leader, its commit latency through
//! [`NodeHooks`]) goes into single-writer [`AtomicHistogram`]s. A scrape reads those atomics
//! through a `prometheus-client` collector and encodes them in the Prometheus text format. So
//! nothing per command takes a lock, allocates or pays a store for metrics; what a scrape sees
//! of the counters is at most one tick (5 ms by default) old.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::Control;
use crate::core::{NodeId, Record, RoleKind, Slot, Value};
use crate::shard::Hooks;

/// The `Content-Type` of what [`NodeProbe::metrics_text`] returns (Prometheus text 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The default of `--ready-lag-slots`: how far this node's applied position may trail the
/// highest commit position it knows of while it counts as ready.
pub const READY_LAG_SLOTS_DEFAULT: u64 = 10_000;

/// Upper bounds of the sync duration buckets, in seconds: an SSD's `fdatasync` takes 0.1 to
/// 2 ms, a disk's or a cloud volume's 2 to 20 ms; past 100 ms something is wrong.
const SYNC_BUCKETS_SECONDS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Upper bounds of the commit latency buckets, in seconds: a round trip to a majority and its
/// fsyncs, 0.2 ms on one host with an SSD to tens of ms across zones.
const COMMIT_BUCKETS_SECONDS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Upper bounds of the batch size buckets, in bytes (a batch is at most --batch-bytes-max,
/// 1 MiB by default).
const BATCH_BUCKETS_BYTES: [f64; 9] =
    [64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262_144.0, 1_048_576.0, 4_194_304.0];

/// Upper bounds of the snapshot write buckets, in seconds (a write, its fsync and rename).
const SNAPSHOT_BUCKETS_SECONDS: [f64; 10] =
    [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Why a connection was refused before it was served: the `reason` label of
/// `quorum_connections_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// More connections in their handshake or served than `--connections-max` + 64: closed
    /// unread.
    OpenMax,
    /// More client connections than `--connections-max`: refused with a reason.
    ClientsMax,
    /// A `Hello` of another protocol version, cluster or shard, or from a peer that is not a
    /// member.
    Handshake,
    /// `accept` itself failed (out of file descriptors, say).
    Accept,
}

impl Refusal {
    const ALL: [Refusal; 4] =
        [Refusal::OpenMax, Refusal::ClientsMax, Refusal::Handshake, Refusal::Accept];

    fn label(self) -> &'static str {
        match self {
            Refusal::OpenMax => "connections_open_max",
            Refusal::ClientsMax => "client_connections_max",
            Refusal::Handshake => "handshake",
            Refusal::Accept => "accept_failed",
        }
    }
}

/// A histogram with fixed buckets and one writer (its shard's thread): recording is two
/// relaxed adds, no lock. A scrape that runs during a write may see the bucket before its sum;
/// the count it reports is the buckets' total, so the two it encodes always agree.
#[derive(Debug)]
pub struct AtomicHistogram {
    /// Upper bounds of the buckets, in the metric's unit (seconds, bytes).
    bounds: &'static [f64],
    /// Per bucket (one more than bounds: the last is +Inf), observations in it alone.
    buckets: Vec<AtomicU64>,
    /// The sum of the observations, in units of `sum_unit` (nanoseconds for seconds).
    sum: AtomicU64,
    sum_unit: f64,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64], sum_unit: f64) -> AtomicHistogram {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram { bounds, buckets, sum: AtomicU64::new(0), sum_unit }
    }

    /// A histogram of durations (observed in seconds, summed in nanoseconds).
    fn of_seconds(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram::new(bounds, 1e-9)
    }

    /// A histogram of sizes, in bytes.
    fn of_bytes(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram::new(bounds, 1.0)
    }

    fn observe(&self, value: f64, sum_units: u64) {
        let index = self.bounds.iter().position(|bound| value <= *bound);
        let bucket = &self.buckets[index.unwrap_or(self.bounds.len())];
        bucket.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(sum_units, Ordering::Relaxed);
    }

    /// Records a duration.
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.observe(elapsed.as_secs_f64(), nanos);
    }

    /// Records a size.
    pub fn record_bytes(&self, bytes: u64) {
        self.observe(bytes as f64, bytes);
    }

    /// Observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).sum()
    }

    fn encode(&self, encoder: &mut MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per bucket, not cumulative: the encoder sums them as it writes each `le`.
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (index, bucket) in self.buckets.iter().enumerate() {
            let observed = bucket.load(Ordering::Relaxed);
            count += observed;
            let bound = self.bounds.get(index).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, observed));
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 * self.sum_unit;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// One shard's metrics, written by its shard only ([`super::host::Host::publish_metrics`] at
/// every tick, the histograms as things happen), read by scrapes.
#[derive(Debug)]
pub struct ShardMetrics {
    /// The replica's role: [`role_code`].
    pub role: AtomicU64,
    /// The promised ballot.
    pub ballot_round: AtomicU64,
    /// The node of the promised ballot.
    pub ballot_node: AtomicU64,
    /// The leader this replica knows of (itself if it leads), 0 if none.
    pub leader: AtomicU64,
    /// Times the known leader changed to another node, seen at ticks.
    pub leader_changes: AtomicU64,
    /// Times the replica's role changed.
    pub role_changes: AtomicU64,
    /// Every slot below is committed here.
    pub commit_slot: AtomicU64,
    /// The highest commit position a leader or peer told this replica of.
    pub known_commit_slot: AtomicU64,
    /// Every slot below is applied (with `--apply total`: by the node's merge).
    pub applied_slot: AtomicU64,
    /// Client commands applied.
    pub commands_applied: AtomicU64,
    /// Batches committed (no-ops not counted).
    pub batches_committed: AtomicU64,
    /// WAL bytes appended since the node started.
    pub wal_appended_bytes: AtomicU64,
    /// Syncs started (with durability off: sync points passed).
    pub wal_syncs: AtomicU64,
    /// Time spent in `fdatasync`, per sync.
    pub wal_sync_seconds: AtomicHistogram,
    /// Syncs that failed (each one fails the shard and stops the node).
    pub wal_sync_errors: AtomicU64,
    /// The shard failed and is fenced; the node is stopping.
    pub failed: AtomicBool,
    /// The disk is full: the replica is paused.
    pub out_of_space: AtomicBool,
    /// Peer messages dropped and proposals refused while out of space.
    pub out_of_space_dropped: AtomicU64,
    /// The replica repairs before it votes again (protocol.md §3.9).
    pub repairing: AtomicBool,
    /// Snapshots taken here.
    pub snapshots_taken: AtomicU64,
    /// Snapshots from peers installed.
    pub snapshots_installed: AtomicU64,
    /// Snapshots from peers refused.
    pub snapshots_refused: AtomicU64,
    /// The newest snapshot's size, 0 if none.
    pub snapshot_bytes: AtomicU64,
    /// WAL bytes released behind snapshots.
    pub snapshot_released_bytes: AtomicU64,
    /// Time to write, sync and rename a snapshot file.
    pub snapshot_write_seconds: AtomicHistogram,
    /// On the leader, from appending its own acceptance of a batch to the batch's commit.
    pub commit_seconds: AtomicHistogram,
    /// Sizes of the batches committed.
    pub batch_bytes: AtomicHistogram,
    /// Client sessions held.
    pub sessions: AtomicU64,
    /// Proposals refused `Busy` (the pipeline and the open batch full).
    pub busy_replies: AtomicU64,
    /// Messages to peers dropped (unreachable, or too far behind to queue more).
    pub peer_messages_dropped: AtomicU64,
    /// Bytes queued for peers.
    pub peer_sent_bytes: AtomicU64,
    /// Of those, frames of committed runs (catch-up, learners).
    pub peer_chosen_sent_bytes: AtomicU64,
    /// Connections refused, by [`Refusal`].
    pub refused: [AtomicU64; 4],
}

impl Default for ShardMetrics {
    fn default() -> ShardMetrics {
        ShardMetrics {
            role: AtomicU64::new(0),
            ballot_round: AtomicU64::new(0),
            ballot_node: AtomicU64::new(0),
            leader: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
            role_changes: AtomicU64::new(0),
            commit_slot: AtomicU64::new(0),
            known_commit_slot: AtomicU64::new(0),
            applied_slot: AtomicU64::new(0),
            commands_applied: AtomicU64::new(0),
            batches_committed: AtomicU64::new(0),
            wal_appended_bytes: AtomicU64::new(0),
            wal_syncs: AtomicU64::new(0),
            wal_sync_seconds: AtomicHistogram::of_seconds(&SYNC_BUCKETS_SECONDS),
            wal_sync_errors: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            out_of_space: AtomicBool::new(false),
            out_of_space_dropped: AtomicU64::new(0),
            repairing: AtomicBool::new(false),
            snapshots_taken: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
            snapshots_refused: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(0),
            snapshot_released_bytes: AtomicU64::new(0),
            snapshot_write_seconds: AtomicHistogram::of_seconds(&SNAPSHOT_BUCKETS_SECONDS),
            commit_seconds: AtomicHistogram::of_seconds(&COMMIT_BUCKETS_SECONDS),
            batch_bytes: AtomicHistogram::of_bytes(&BATCH_BUCKETS_BYTES),
            sessions: AtomicU64::new(0),
            busy_replies: AtomicU64::new(0),
            peer_messages_dropped: AtomicU64::new(0),
            peer_sent_bytes: AtomicU64::new(0),
            peer_chosen_sent_bytes: AtomicU64::new(0),
            refused: [const { AtomicU64::new(0) }; 4],
        }
    }
}

impl ShardMetrics {
    /// Counts a refused connection.
    pub fn count_refusal(&self, refusal: Refusal) {
        let index = Refusal::ALL.iter().position(|each| *each == refusal).unwrap_or(0);
        self.refused[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// Proposals a leader remembers the time of, waiting for their commit: four times the default
/// pipeline; past it the oldest is forgotten (its latency not recorded).
const PROPOSED_MAX: usize = 128;

/// A node's shard hooks: the operating system's entropy (as [`crate::shard::OsHooks`]), and
/// two observations for the metrics, on the shard's thread, once per batch: the size of each
/// batch committed, and on the leader the time from appending its own acceptance of a batch
/// to the batch's commit (one clock read at each end; a bounded queue of the batches in
/// flight, allocated once).
pub struct NodeHooks {
    control: Arc<Control>,
    shard: usize,
    node: NodeId,
    /// This leader's batches in flight: their first slot and when it accepted them, in slot
    /// order.
    proposed: VecDeque<(Slot, Instant)>,
}

impl NodeHooks {
    /// Hooks for shard `shard` of node `node`.
    #[must_use]
    pub fn new(control: Arc<Control>, shard: u16, node: NodeId) -> NodeHooks {
        let proposed = VecDeque::with_capacity(PROPOSED_MAX);
        NodeHooks { control, shard: usize::from(shard), node, proposed }
    }

    fn metrics(&self) -> &ShardMetrics {
        &self.control.metrics[self.shard]
    }
}

impl Hooks for NodeHooks {
    type Kept = ();

    fn entropy(&mut self, out: &mut [u8]) -> bool {
        getrandom::fill(out).is_ok()
    }

    fn keep(&mut self, record: &Record) {
        let Record::Accepted { ballot, first_slot, value: Value::Batch(_), .. } = record else {
            return;
        };
        // Its own acceptance under its own ballot: this replica leads and just proposed it (a
        // re-proposal after phase 1 counts from then).
        if ballot.node != self.node {
            return;
        }
        if self.proposed.len() == PROPOSED_MAX {
            self.proposed.pop_front();
        }
        self.proposed.push_back((*first_slot, Instant::now()));
    }

    fn committed(&mut self, first_slot: Slot, _count: u64, value: &Value) {
        let Value::Batch(bytes) = value else { return };
        self.metrics().batch_bytes.record_bytes(bytes.len() as u64);
        // Slots before this one committed without their proposal being seen (another
        // leader's value took them): forgotten.
        while self.proposed.front().is_some_and(|(slot, _)| *slot < first_slot) {
            self.proposed.pop_front();
        }
        if let Some((_, at)) = self.proposed.front().filter(|(slot, _)| *slot == first_slot) {
            let elapsed = at.elapsed();
            self.proposed.pop_front();
            self.metrics().commit_seconds.record(elapsed);
        }
    }
}

/// Every shard's metrics, one cache line (or more) each.
pub type NodeMetrics = Vec<CachePadded<ShardMetrics>>;

/// A role as the `role` gauge stores it.
#[must_use]
pub fn role_code(role: RoleKind) -> u64 {
    match role {
        RoleKind::Follower => 0,
        RoleKind::Candidate => 1,
        RoleKind::Leader => 2,
        RoleKind::Learner => 3,
    }
}

const ROLES: [(u64, &str); 4] = [(0, "follower"), (1, "candidate"), (2, "leader"), (3, "learner")];

/// Why one shard keeps the node from being ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotReady {
    /// The shard.
    pub shard: u16,
    /// Why, in a sentence.
    pub reason: String,
}

/// What a node tells its metrics listener: its metrics and readiness, read from the shards'
/// atomics when asked. Cheap to clone; holds nothing the shards wait for.
#[derive(Clone, Debug)]
pub struct NodeProbe {
    registry: Arc<Registry>,
    control: Arc<Control>,
    ready_lag_slots: u64,
}

impl NodeProbe {
    pub(super) fn new(control: Arc<Control>, node: u16, ready_lag_slots: u64) -> NodeProbe {
        let mut registry = Registry::with_prefix("quorum");
        let collector = NodeCollector { control: control.clone(), node, ready_lag_slots };
        registry.register_collector(Box::new(collector));
        NodeProbe { registry: Arc::new(registry), control, ready_lag_slots }
    }

    /// Every metric, in the Prometheus text format ([`METRICS_CONTENT_TYPE`]).
    #[must_use]
    pub fn metrics_text(&self) -> String {
        let mut text = String::with_capacity(16 << 10);
        // Writing into a String cannot fail, and the collector's own encodes only fail with
        // the writer.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// Why the node is not ready, shard by shard; empty when it is: every shard knows its
    /// leader, and has applied to within `--ready-lag-slots` of the highest commit position
    /// it knows of.
    #[must_use]
    pub fn not_ready(&self) -> Vec<NotReady> {
        not_ready(&self.control, self.ready_lag_slots)
    }
}

#[cfg(feature = "front")]
impl crate::front::Probe for NodeProbe {
    fn metrics_text(&self) -> String {
        NodeProbe::metrics_text(self)
    }

    fn not_ready(&self) -> Vec<(u16, String)> {
        let reasons = NodeProbe::not_ready(self);
        reasons.into_iter().map(|NotReady { shard, reason }| (shard, reason)).collect()
    }
}

fn not_ready(control: &Control, lag_slots_max: u64) -> Vec<NotReady> {
    let mut reasons = Vec::new();
    for (shard, metrics) in control.metrics.iter().enumerate() {
        let shard = shard as u16;
        let reason = if metrics.failed.load(Ordering::Relaxed) {
            "the shard failed; the node is stopping".to_string()
        } else if metrics.out_of_space.load(Ordering::Relaxed) {
            "out of disk space: the replica is paused".to_string()
        } else if metrics.leader.load(Ordering::Relaxed) == 0 {
            "no known leader".to_string()
        } else {
            let known = metrics.known_commit_slot.load(Ordering::Relaxed);
            let commit = metrics.commit_slot.load(Ordering::Relaxed).max(known);
            let applied = metrics.applied_slot.load(Ordering::Relaxed);
            let lag = commit.saturating_sub(applied);
            if lag <= lag_slots_max {
                continue;
            }
            format!(
                "applied to slot {applied}, {lag} slots behind the commit position {commit} \
                 (--ready-lag-slots {lag_slots_max})"
            )
        };
        reasons.push(NotReady { shard, reason });
    }
    reasons
}

/// Encodes the node's metrics at each scrape.
#[derive(Debug)]
struct NodeCollector {
    control: Arc<Control>,
    node: u16,
    ready_lag_slots: u64,
}

/// A per-shard counter or gauge: its name (after `quorum_`, before the unit and `_total`),
/// help, unit and type, and where each shard keeps it.
struct Series<T: 'static> {
    name: &'static str,
    help: &'static str,
    /// Counted in bytes: `_bytes` after the name.
    bytes: bool,
    kind: MetricType,
    field: fn(&ShardMetrics) -> &T,
}

/// A counter of `field`.
const fn counter(
    name: &'static str,
    help: &'static str,
    field: fn(&ShardMetrics) -> &AtomicU64,
) -> Series<AtomicU64> {
    Series { name, help, bytes: false, kind: MetricType::Counter, field }
}

/// A gauge of `field`.
const fn gauge<T>(
    name: &'static str,
    help: &'static str,
    field: fn(&ShardMetrics) -> &T,
) -> Series<T> {
    Series { name, help, bytes: false, kind: MetricType::Gauge, field }
}

/// `series` counted in bytes (`_bytes` after its name).
const fn in_bytes(series: Series<AtomicU64>) -> Series<AtomicU64> {
    Series { bytes: true, ..series }
}

/// The replica and the log: ballots, leaders, positions, what was committed and applied.
const CONSENSUS: [Series<AtomicU64>; 10] = [
    gauge("ballot_round", "The round of the highest ballot promised", |m| &m.ballot_round),
    gauge("ballot_node", "The node of the highest ballot promised", |m| &m.ballot_node),
    gauge("leader_node", "The leader known (this node if it leads), 0 if none", |m| &m.leader),
    counter("leader_changes", "Times the known leader changed (the first one counts)", |m| {
        &m.leader_changes
    }),
    counter("role_changes", "Times the replica's role changed", |m| &m.role_changes),
    gauge("commit_slot", "Every slot below is committed here", |m| &m.commit_slot),
    gauge("known_commit_slot", "The highest commit position a leader or peer told of", |m| {
        &m.known_commit_slot
    }),
    gauge("applied_slot", "Every slot below is applied to the state machine", |m| &m.applied_slot),
    counter("commands_applied", "Client commands committed and applied", |m| &m.commands_applied),
    counter("batches_committed", "Batches committed (no-ops not counted)", |m| {
        &m.batches_committed
    }),
];

/// The WAL and the snapshots.
const STORAGE: [Series<AtomicU64>; 9] = [
    in_bytes(counter("wal_appended", "WAL bytes appended since the node started", |m| {
        &m.wal_appended_bytes
    })),
    counter("wal_syncs", "WAL syncs started", |m| &m.wal_syncs),
    counter("wal_sync_errors", "WAL syncs that failed (each fails the shard)", |m| {
        &m.wal_sync_errors
    }),
    counter("out_of_space_dropped", "Messages dropped, proposals refused: disk full", |m| {
        &m.out_of_space_dropped
    }),
    counter("snapshots_taken", "Snapshots taken and made durable here", |m| &m.snapshots_taken),
    counter("snapshots_installed", "Snapshots from peers installed", |m| &m.snapshots_installed),
    counter("snapshots_refused", "Snapshots from peers refused", |m| &m.snapshots_refused),
    in_bytes(gauge("snapshot_size", "The newest snapshot's size, 0 if none", |m| {
        &m.snapshot_bytes
    })),
    in_bytes(counter("snapshot_released", "WAL bytes released behind snapshots", |m| {
        &m.snapshot_released_bytes
    })),
];

/// States of the shard, each a gauge of 0 or 1.
const FLAGS: [Series<AtomicBool>; 3] = [
    gauge("shard_failed", "1 once the shard failed (the node then stops)", |m| &m.failed),
    gauge("out_of_space", "1 while the disk is full and the replica paused", |m| &m.out_of_space),
    gauge("repairing", "1 while the replica repairs before it votes again", |m| &m.repairing),
];

/// Clients and peers.
const TRAFFIC: [Series<AtomicU64>; 5] = [
    gauge("sessions", "Client sessions held", |m| &m.sessions),
    counter("busy_replies", "Proposals refused Busy: pipeline and open batch full", |m| {
        &m.busy_replies
    }),
    counter("peer_messages_dropped", "Messages to peers dropped: unreachable, or behind", |m| {
        &m.peer_messages_dropped
    }),
    in_bytes(counter("peer_sent", "Bytes queued for peers", |m| &m.peer_sent_bytes)),
    in_bytes(counter("peer_chosen_sent", "Of those, in frames of committed runs", |m| {
        &m.peer_chosen_sent_bytes
    })),
];

impl NodeCollector {
    /// One series per shard of `series`, its value read by `value`.
    fn per_shard<T>(
        &self,
        encoder: &mut DescriptorEncoder,
        series: &Series<T>,
        value: impl Fn(&T) -> u64,
    ) -> Result<(), std::fmt::Error> {
        let (name, help, kind) = (series.name, series.help, series.kind);
        let unit = series.bytes.then_some(Unit::Bytes);
        let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), kind)?;
        for (shard, metrics) in self.control.metrics.iter().enumerate() {
            let labels = [("shard", shard.to_string())];
            let family = metric.encode_family(&labels)?;
            let value = value((series.field)(metrics));
            match kind {
                MetricType::Counter => ConstCounter::new(value).encode(family)?,
                _ => ConstGauge::new(value as i64).encode(family)?,
            }
        }
        Ok(())
    }

    fn histogram(
        &self,
        encoder: &mut DescriptorEncoder,
        (name, help, unit): (&'static str, &'static str, Unit),
        histogram: impl Fn(&ShardMetrics) -> &AtomicHistogram,
    ) -> Result<(), std::fmt::Error> {
        let unit = Some(unit);
        let mut metric =
            encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Histogram)?;
        for (shard, metrics) in self.control.metrics.iter().enumerate() {
            let labels = [("shard", shard.to_string())];
            histogram(metrics).encode(&mut metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A gauge of the node as a whole.
    fn node_gauge(
        encoder: &mut DescriptorEncoder,
        (name, help): (&'static str, &'static str),
        value: i64,
    ) -> Result<(), std::fmt::Error> {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value).encode(metric)
    }

    /// The node's own series: who it is, whether it is ready, its connections.
    fn encode_node(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let control = &self.control;
        let help = "This node: its id, shard count and version, as labels (the value is 1)";
        let mut info = encoder.encode_descriptor("node", help, None, MetricType::Gauge)?;
        let labels = [
            ("node", self.node.to_string()),
            ("shards", control.metrics.len().to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ];
        ConstGauge::new(1).encode(info.encode_family(&labels)?)?;
        let ready = i64::from(not_ready(control, self.ready_lag_slots).is_empty());
        let help = "1 while GET /ready answers 200: every shard knows its leader and is applied \
                    to within --ready-lag-slots of its commit position";
        NodeCollector::node_gauge(encoder, ("ready", help), ready)?;
        let clients = control.client_connections.load(Ordering::Relaxed) as i64;
        let help = "Client connections served, over all shards (at most --connections-max)";
        NodeCollector::node_gauge(encoder, ("client_connections", help), clients)?;
        let open = control.open_connections.load(Ordering::Relaxed) as i64;
        let help = "Connections accepted that are not peers': clients and those in their handshake";
        NodeCollector::node_gauge(encoder, ("open_connections", help), open)
    }

    /// Roles as a state set: one series per shard and role, 1 for the role it has.
    fn encode_roles(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let help = "The replica's role: 1 on the series of the role it has";
        let mut metric = encoder.encode_descriptor("role", help, None, MetricType::Gauge)?;
        for (shard, metrics) in self.control.metrics.iter().enumerate() {
            let role = metrics.role.load(Ordering::Relaxed);
            for (code, name) in ROLES {
                let labels = [("shard", shard.to_string()), ("role", name.to_string())];
                ConstGauge::new(i64::from(role == code)).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn encode_refusals(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let help = "Connections refused before being served, by reason";
        let mut metric =
            encoder.encode_descriptor("connections_refused", help, None, MetricType::Counter)?;
        for (shard, metrics) in self.control.metrics.iter().enumerate() {
            for (index, refusal) in Refusal::ALL.iter().enumerate() {
                let labels = [("shard", shard.to_string()), ("reason", refusal.label().into())];
                let count = metrics.refused[index].load(Ordering::Relaxed);
                ConstCounter::new(count).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let encoder = &mut encoder;
        self.encode_node(encoder)?;
        self.encode_roles(encoder)?;
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        for series in CONSENSUS.iter().chain(&STORAGE).chain(&TRAFFIC) {
            self.per_shard(encoder, series, load)?;
        }
        for series in &FLAGS {
            self.per_shard(encoder, series, |flag| u64::from(flag.load(Ordering::Relaxed)))?;
        }
        self.encode_refusals(encoder)?;
        let help = "Time in fdatasync, per WAL sync";
        let sync = ("wal_sync_duration", help, Unit::Seconds);
        self.histogram(encoder, sync, |m| &m.wal_sync_seconds)?;
        let help = "Time to write, sync and rename a snapshot file";
        let snapshot = ("snapshot_write_duration", help, Unit::Seconds);
        self.histogram(encoder, snapshot, |m| &m.snapshot_write_seconds)?;
        let help = "On the leader: from appending its acceptance of a batch to its commit";
        let commit = ("commit_duration", help, Unit::Seconds);
        self.histogram(encoder, commit, |m| &m.commit_seconds)?;
        let help = "Sizes of the batches committed";
        self.histogram(encoder, ("batch_size", help, Unit::Bytes), |m| &m.batch_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(shards: u16) -> NodeProbe {
        NodeProbe::new(Arc::new(Control::new(shards)), 7, READY_LAG_SLOTS_DEFAULT)
    }

    #[test]
    fn metrics_are_prometheus_text_labelled_by_shard() {
        let probe = probe(2);
        let metrics = &probe.control.metrics[1];
        metrics.commands_applied.store(42, Ordering::Relaxed);
        metrics.role.store(role_code(RoleKind::Leader), Ordering::Relaxed);
        metrics.wal_sync_seconds.record(Duration::from_micros(300));
        metrics.wal_sync_seconds.record(Duration::from_secs(5));
        metrics.count_refusal(Refusal::ClientsMax);
        let text = probe.metrics_text();
        assert!(text.contains("# TYPE quorum_commands_applied_total counter\n"), "{text}");
        assert!(text.contains("quorum_commands_applied_total{shard=\"1\"} 42\n"), "{text}");
        assert!(text.contains("quorum_commands_applied_total{shard=\"0\"} 0\n"), "{text}");
        assert!(text.contains("quorum_role{shard=\"1\",role=\"leader\"} 1\n"), "{text}");
        assert!(text.contains("quorum_role{shard=\"1\",role=\"follower\"} 0\n"), "{text}");
        assert!(text.contains("quorum_wal_appended_bytes_total{shard=\"0\"} 0\n"), "{text}");
        let bucket = "quorum_wal_sync_duration_seconds_bucket{shard=\"1\",le=\"0.0005\"} 1\n";
        assert!(text.contains(bucket), "{text}");
        let infinite = "quorum_wal_sync_duration_seconds_bucket{shard=\"1\",le=\"+Inf\"} 2\n";
        assert!(text.contains(infinite), "{text}");
        assert!(text.contains("quorum_wal_sync_duration_seconds_count{shard=\"1\"} 2\n"), "{text}");
        let refused =
            "quorum_connections_refused_total{shard=\"1\",reason=\"client_connections_max\"} 1\n";
        assert!(text.contains(refused), "{text}");
        assert!(text.contains("quorum_node{node=\"7\",shards=\"2\",version="), "{text}");
    }

    #[test]
    fn hooks_time_the_leaders_own_batches_and_size_every_batch() {
        let control = Arc::new(Control::new(1));
        let mut hooks = NodeHooks::new(control.clone(), 0, NodeId(2));
        let batch = || Value::Batch(bytes::Bytes::from_static(&[0; 40]));
        let accepted = |node, slot| Record::Accepted {
            ballot: crate::core::Ballot { round: 3, node: NodeId(node) },
            first_slot: Slot(slot),
            count: 1,
            value: batch(),
        };
        hooks.keep(&accepted(2, 10));
        hooks.keep(&accepted(1, 11)); // another leader's: not this one's proposal
        hooks.keep(&accepted(2, 12));
        hooks.committed(Slot(10), 1, &batch());
        hooks.committed(Slot(11), 1, &batch());
        hooks.committed(Slot(12), 1, &Value::Noop);
        hooks.committed(Slot(13), 1, &batch()); // 12 became a no-op: forgotten, not timed
        let metrics = &control.metrics[0];
        assert_eq!(metrics.commit_seconds.count(), 1);
        assert_eq!(metrics.batch_bytes.count(), 3);
        assert_eq!(metrics.batch_bytes.sum.load(Ordering::Relaxed), 120);
        assert!(hooks.proposed.is_empty());
        for slot in 0..PROPOSED_MAX as u64 + 5 {
            hooks.keep(&accepted(2, 100 + slot));
        }
        assert_eq!(hooks.proposed.len(), PROPOSED_MAX, "bounded");
    }

    #[test]
    fn ready_needs_a_leader_and_a_small_lag_on_every_shard() {
        let probe = probe(2);
        let not_ready = probe.not_ready();
        assert_eq!(not_ready.len(), 2, "{not_ready:?}");
        assert_eq!(not_ready[0].reason, "no known leader");
        for metrics in &probe.control.metrics {
            metrics.leader.store(3, Ordering::Relaxed);
        }
        assert_eq!(probe.not_ready(), Vec::new());
        let behind = &probe.control.metrics[1];
        behind.known_commit_slot.store(READY_LAG_SLOTS_DEFAULT + 11, Ordering::Relaxed);
        behind.applied_slot.store(10, Ordering::Relaxed);
        let not_ready = probe.not_ready();
        assert_eq!(not_ready.len(), 1, "{not_ready:?}");
        assert_eq!(not_ready[0].shard, 1);
        assert!(not_ready[0].reason.contains("10001 slots behind"), "{not_ready:?}");
        behind.applied_slot.store(11, Ordering::Relaxed);
        assert_eq!(probe.not_ready(), Vec::new());
        assert!(probe.metrics_text().contains("quorum_ready 1\n"));
    }
}
