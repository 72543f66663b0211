//! `quorum bench`: the load generator. It starts an embedded cluster (or targets a running
//! one), applies a load through the client library, and reports throughput and latency with
//! every condition that produced them.

pub mod cpu;
pub mod embedded;
pub mod limits;
pub mod load;
mod locks;
pub mod pipeline;
pub mod report;
pub mod watch;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{Client, ClientOptions, Consistency, node_status};
use crate::core::{ClusterId, RoleKind};
use crate::runtime::config::{ApplyMode, Durability};
use cpu::{CpuFigures, CpuScope};
use embedded::{EmbeddedCluster, EmbeddedSpec};
use load::{LoadSpec, Progress};

/// Everything one bench run needs.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// The load.
    pub load: LoadSpec,
    /// Shards per node (embedded cluster only).
    pub shards: u16,
    /// Voters (embedded cluster only).
    pub voters: u16,
    /// Durability (embedded cluster only; a target runs as configured).
    pub durability: Durability,
    /// Apply mode (embedded cluster only).
    pub apply: ApplyMode,
    /// A running cluster to drive instead of an embedded one.
    pub target: Option<Vec<String>>,
    /// The target's cluster id (0: any).
    pub cluster_id: u64,
    /// Print a progress line to stderr each second.
    pub progress: bool,
}

/// One run's conditions and results; serialized as the `--json` line.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// "embedded" or the target's addresses.
    pub cluster: String,
    /// "kv", "lock" (ops are then lock+unlock cycles) or "watch" (ops are events delivered,
    /// latencies from a put's scheduled time to its event's delivery; see `watch`).
    pub workload: String,
    /// Voters.
    pub voters: u16,
    /// Shards per node.
    pub shards: u16,
    /// "fsync" or "none".
    pub durability: String,
    /// "shard" or "total" (embedded cluster; "as configured" for a target).
    pub apply: String,
    /// Closed loop without `pipeline`: concurrent requests, all over the bench's one client
    /// (one connection per shard). With it: clients, each with connections of its own.
    pub clients: usize,
    /// Requests each client keeps outstanding (`--pipeline`); `None`: not pipelined.
    pub pipeline: Option<usize>,
    /// Requests outstanding in all: `clients` × `pipeline` (closed loop).
    pub concurrency: usize,
    /// Open-loop rate, if any.
    pub rate: Option<f64>,
    /// Value bytes per write.
    pub payload_bytes: usize,
    /// Fraction of gets.
    pub read_ratio: f64,
    /// How the gets were read: linearizable, lease, follower or stale (protocol.md §5.3–§5.5),
    /// or log (as commands ordered in the log, for comparison).
    pub consistency: String,
    /// Lease reads on in the embedded cluster (`--read-lease`; `None` for a target).
    pub read_lease: Option<bool>,
    /// Distinct keys.
    pub keys: u64,
    /// Only this shard was loaded (the others idle), if set.
    pub only_shard: Option<u16>,
    /// Measured seconds.
    pub seconds: f64,
    /// Warm-up seconds before measuring.
    pub warmup_seconds: f64,
    /// Committed requests per second.
    pub ops_per_sec: f64,
    /// Committed client payload (value bytes of writes) per second, in MB (10^6 bytes).
    pub payload_mb_per_sec: f64,
    /// Latency percentiles, microseconds, submit to committed reply.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Failed requests in the window.
    pub errors: u64,
    /// Requests an open loop could not send.
    pub unsent: u64,
    /// Client commands per committed slot, over every shard.
    pub commands_per_batch: f64,
    /// WAL syncs per second, every replica of every shard together.
    pub fsyncs_per_sec: f64,
    /// Bytes the shards' leaders sent to their peers per committed write, in the window
    /// (what learners fed from followers keep flat).
    pub leader_egress_bytes_per_write: f64,
    /// Of which committed runs (`Chosen`: catch-up, and learners subscribed to a leader).
    pub leader_chosen_bytes_per_write: f64,
    /// Peak resident memory of this process (embedded: the whole cluster and the client), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Resident memory sampled each second of the whole run, MiB.
    pub rss_mib_by_second: Vec<f64>,
    /// The machine's limits, measured in the same invocation.
    pub limits: Option<limits::Limits>,
    /// CPU time over the window, per committed write (`cpu_…` fields; see `cpu`).
    #[serde(flatten)]
    pub cpu: CpuFigures,
    /// Reads and writes apart.
    #[serde(flatten)]
    pub split: ReadWriteSplit,
    /// The watch workload's own numbers (puts, missed and duplicated events).
    pub watch: Option<watch::WatchCounts>,
}

/// Reads and writes measured apart: completed per second and latency percentiles in
/// microseconds (in JSON as `read_…` and `write_…` fields).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReadWriteSplit {
    /// Reads completed per second.
    pub read_ops_per_sec: f64,
    /// Read latency, median.
    pub read_p50_us: f64,
    /// 99th percentile.
    pub read_p99_us: f64,
    /// 99.9th percentile.
    pub read_p999_us: f64,
    /// Writes committed per second.
    pub write_ops_per_sec: f64,
    /// Write latency, median.
    pub write_p50_us: f64,
    /// 99th percentile.
    pub write_p99_us: f64,
    /// 99.9th percentile.
    pub write_p999_us: f64,
}

impl ReadWriteSplit {
    fn of(result: &load::LoadResult) -> ReadWriteSplit {
        let micros = |histogram: &hdrhistogram::Histogram<u64>, quantile: f64| {
            histogram.value_at_quantile(quantile) as f64 / 1000.0
        };
        let (reads, writes) = (&result.read_latency, &result.write_latency);
        ReadWriteSplit {
            read_ops_per_sec: (result.ops - result.writes) as f64 / result.seconds,
            read_p50_us: micros(reads, 0.5),
            read_p99_us: micros(reads, 0.99),
            read_p999_us: micros(reads, 0.999),
            write_ops_per_sec: result.writes as f64 / result.seconds,
            write_p50_us: micros(writes, 0.5),
            write_p99_us: micros(writes, 0.99),
            write_p999_us: micros(writes, 0.999),
        }
    }
}

fn consistency_name(consistency: Option<Consistency>) -> String {
    consistency.map_or("log".into(), |consistency| format!("{consistency:?}").to_lowercase())
}

fn durability_name(not_durable: bool) -> String {
    if not_durable { "none".into() } else { "fsync".into() }
}

/// Sums of server counters over a cluster.
#[derive(Default, Clone, Copy)]
struct ServerCounters {
    applied_on_leaders: u64,
    batches_on_leaders: u64,
    syncs: u64,
    egress_on_leaders: u64,
    chosen_egress_on_leaders: u64,
}

fn server_counters(addresses: &[String], cluster_id: ClusterId) -> ServerCounters {
    let mut counters = ServerCounters::default();
    for address in addresses {
        // A node under load may answer late: try again before leaving it out.
        let answer = (0..3).find_map(|_| node_status(address, cluster_id, false).ok());
        let Some(statuses) = answer else { continue };
        for status in statuses {
            counters.syncs += status.syncs;
            if status.role == RoleKind::Leader {
                counters.applied_on_leaders += status.applied_commands;
                counters.batches_on_leaders += status.batches;
                counters.egress_on_leaders += status.egress_bytes;
                counters.chosen_egress_on_leaders += status.chosen_bytes;
            }
        }
    }
    counters
}

fn proc_status_kib(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok()
}

/// The embedded cluster, unless the bench drives a target.
fn start_embedded(spec: &BenchSpec, read_lease: bool) -> Result<Option<EmbeddedCluster>, String> {
    if spec.target.is_some() {
        return Ok(None);
    }
    Ok(Some(EmbeddedCluster::start(&EmbeddedSpec {
        voters: spec.voters,
        shards: spec.shards,
        durability: spec.durability,
        wal_segment_mib: 64,
        apply: spec.apply,
        read_lease,
    })?))
}

/// Runs one bench: starts the embedded cluster unless a target is given, applies the load,
/// and returns the row.
///
/// # Errors
/// The cluster did not start or could not be reached; the load could not run.
pub fn run(spec: &BenchSpec) -> Result<BenchRow, String> {
    // Peak memory is per run: reset the high-water mark a previous run of a sweep left.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let lease = spec.load.consistency == Some(Consistency::Lease);
    let embedded = start_embedded(spec, lease)?;
    let (seeds, cluster_id) = match (&embedded, &spec.target) {
        (Some(cluster), _) => (cluster.addresses().to_vec(), cluster.cluster_id()),
        (None, Some(target)) => (target.clone(), ClusterId(spec.cluster_id)),
        (None, None) => unreachable!("one of the two is set"),
    };
    let options = ClientOptions {
        cluster_id,
        request_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    let connect = || Client::connect(&seeds, options.clone()).map_err(|e| e.to_string());
    let client = Arc::new(connect()?);
    let target = if spec.target.is_some() { Some(target_facts(&seeds, cluster_id)?) } else { None };
    // Server counters come from every member, not only the addresses given.
    let addresses: Vec<String> = client.members().into_iter().map(|(_, address)| address).collect();
    let scope = if embedded.is_some() { CpuScope::Embedded } else { cpu::target_scope(&addresses) };
    // Pipelined (the kv closed loop only), every client has connections of its own.
    let pipelined_kv = spec.load.workload == load::Workload::Kv && spec.load.rate.is_none();
    let count = if spec.load.pipeline.is_some() && pipelined_kv { spec.load.clients } else { 0 };
    let pipelined: Vec<Arc<Client>> =
        (0..count).map(|_| connect().map(Arc::new)).collect::<Result<_, _>>()?;
    let progress = Arc::new(Progress::default());
    let begin = Instant::now();
    let runner = spawn_load(spec, &client, &pipelined, &progress)?;
    let edges = watch_window(
        spec,
        &runner,
        &progress,
        begin,
        &Sampler {
            counters: &|| server_counters(&addresses, cluster_id),
            cpu: &|| cpu::sample(&scope),
        },
    );
    let result = runner.join().map_err(|_| "the load panicked".to_string())??;
    let after = edges.after.unwrap_or_else(|| server_counters(&addresses, cluster_id));
    drop((client, pipelined));
    let peak_rss_mib =
        embedded.as_ref().and_then(|_| proc_status_kib("VmHWM:")).map(|k| k / 1024.0);
    if let Some(cluster) = embedded {
        cluster.stop()?;
    }
    let cpu = cpu_of(&scope, &edges, &result);
    let before = edges.before.unwrap_or_default();
    let mut row = bench_row(spec, target.as_ref(), &result, &before, &after);
    row.peak_rss_mib = peak_rss_mib;
    row.rss_mib_by_second = edges.rss;
    row.cpu = cpu;
    Ok(row)
}

/// Starts the load on a thread of its own: through `client`, or pipelined through each of
/// `pipelined` if there are any.
fn spawn_load(
    spec: &BenchSpec,
    client: &Arc<Client>,
    pipelined: &[Arc<Client>],
    progress: &Arc<Progress>,
) -> Result<std::thread::JoinHandle<Result<load::LoadResult, String>>, String> {
    let (client, pipelined, progress) = (client.clone(), pipelined.to_vec(), progress.clone());
    let load = spec.load.clone();
    // Named, so that its CPU time (the lock and watch workloads' driver) is the client's.
    std::thread::Builder::new()
        .name("quorum-load".into())
        .spawn(move || {
            if pipelined.is_empty() {
                load::run(&client, &load, &progress)
            } else {
                pipeline::run(&pipelined, &load, &progress)
            }
        })
        .map_err(|error| format!("spawning the load: {error}"))
}

/// The CPU figures of the window the edges bracket.
fn cpu_of(scope: &CpuScope, edges: &Edges, result: &load::LoadResult) -> CpuFigures {
    match (&edges.cpu_before, &edges.cpu_after) {
        (Some(before), Some(after)) => {
            cpu::figures(scope, before, after, result.writes, result.seconds)
        }
        _ => CpuFigures {
            cpu_measured: "the window was not sampled".into(),
            ..CpuFigures::default()
        },
    }
}

/// What is sampled at the window's edges.
struct Sampler<'a> {
    counters: &'a dyn Fn() -> ServerCounters,
    cpu: &'a dyn Fn() -> cpu::CpuSample,
}

/// What was sampled while the load ran.
struct Edges {
    /// The server counters at the window's start and end.
    before: Option<ServerCounters>,
    after: Option<ServerCounters>,
    /// CPU ticks at the window's start and just before its end, while the load's threads
    /// live (the ticks of a thread that has ended can no longer be told apart).
    cpu_before: Option<cpu::CpuSample>,
    cpu_after: Option<cpu::CpuSample>,
    /// Resident memory each second, MiB.
    rss: Vec<f64>,
}

/// Waits for the load, sampling at the window's edges (CPU first: the counters take a round
/// trip), memory each second, and printing progress if asked.
fn watch_window<T>(
    spec: &BenchSpec,
    runner: &std::thread::JoinHandle<T>,
    progress: &Progress,
    begin: Instant,
    sampler: &Sampler<'_>,
) -> Edges {
    let mut edges =
        Edges { before: None, after: None, cpu_before: None, cpu_after: None, rss: Vec::new() };
    let mut last_completed = 0;
    let mut second = 1;
    let window_start = spec.load.warmup;
    let window_end = spec.load.warmup + spec.load.duration;
    // The load's drivers stop at the window's end (theirs starts a little after this one).
    let cpu_end = window_end - (spec.load.duration / 10).min(Duration::from_millis(100));
    while !runner.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        let elapsed = begin.elapsed();
        if edges.before.is_none() && elapsed >= window_start {
            edges.cpu_before = Some((sampler.cpu)());
            edges.before = Some((sampler.counters)());
        }
        if edges.cpu_after.is_none() && elapsed >= cpu_end {
            edges.cpu_after = Some((sampler.cpu)());
        }
        if edges.after.is_none() && elapsed >= window_end {
            edges.after = Some((sampler.counters)());
        }
        if elapsed >= Duration::from_secs(second) {
            second += 1;
            if let Some(kib) = proc_status_kib("VmRSS:") {
                edges.rss.push(kib / 1024.0);
            }
            let completed = progress.completed.load(Ordering::Relaxed);
            if spec.progress {
                let phase = if elapsed < window_start { "warm-up" } else { "measuring" };
                eprint!(
                    "\r  {:>5.1}s  {:>10.0} ops/s  ({phase})   ",
                    elapsed.as_secs_f64(),
                    (completed - last_completed) as f64
                );
                let _ = std::io::stderr().flush();
            }
            last_completed = completed;
        }
    }
    if spec.progress {
        eprintln!();
    }
    edges
}

/// The row of a run, from its spec, the load's result and the counters at the window's edges.
fn bench_row(
    spec: &BenchSpec,
    target: Option<&TargetFacts>,
    result: &load::LoadResult,
    before: &ServerCounters,
    after: &ServerCounters,
) -> BenchRow {
    let batches = after.batches_on_leaders.saturating_sub(before.batches_on_leaders);
    let applied = after.applied_on_leaders.saturating_sub(before.applied_on_leaders);
    let micros = |quantile: f64| result.latency.value_at_quantile(quantile) as f64 / 1000.0;
    let per_write = |after: u64, before: u64| {
        if result.writes == 0 {
            0.0
        } else {
            after.saturating_sub(before) as f64 / result.writes as f64
        }
    };
    let seconds = result.seconds;
    BenchRow {
        cluster: spec.target.as_ref().map_or("embedded".to_string(), |t| t.join(",")),
        workload: spec.load.workload.name().to_string(),
        voters: target.map_or(spec.voters, |status| status.voters),
        shards: target.map_or(spec.shards, |status| status.shards),
        durability: durability_name(
            target.map_or(spec.durability == Durability::None, |s| s.not_durable),
        ),
        apply: if spec.target.is_some() { "as configured".into() } else { spec.apply.to_string() },
        clients: spec.load.clients,
        pipeline: spec.load.pipeline,
        concurrency: spec.load.clients * spec.load.pipeline.unwrap_or(1),
        rate: spec.load.rate,
        payload_bytes: spec.load.payload_bytes,
        read_ratio: spec.load.read_ratio,
        consistency: consistency_name(spec.load.consistency),
        read_lease: spec
            .target
            .is_none()
            .then_some(spec.load.consistency == Some(Consistency::Lease)),
        keys: spec.load.keys,
        only_shard: spec.load.only_shard,
        seconds,
        warmup_seconds: spec.load.warmup.as_secs_f64(),
        ops_per_sec: result.ops as f64 / seconds,
        payload_mb_per_sec: (result.writes as f64 * spec.load.payload_bytes as f64) / seconds / 1e6,
        p50_us: micros(0.5),
        p90_us: micros(0.9),
        p99_us: micros(0.99),
        p999_us: micros(0.999),
        max_us: result.latency.max() as f64 / 1000.0,
        errors: result.errors,
        unsent: result.unsent,
        commands_per_batch: if batches == 0 { 0.0 } else { applied as f64 / batches as f64 },
        fsyncs_per_sec: after.syncs.saturating_sub(before.syncs) as f64 / seconds,
        leader_egress_bytes_per_write: per_write(after.egress_on_leaders, before.egress_on_leaders),
        leader_chosen_bytes_per_write: per_write(
            after.chosen_egress_on_leaders,
            before.chosen_egress_on_leaders,
        ),
        peak_rss_mib: None,
        rss_mib_by_second: Vec::new(),
        limits: None,
        cpu: CpuFigures::default(),
        split: ReadWriteSplit::of(result),
        watch: result.watch.clone(),
    }
}

/// What a target cluster reports about itself.
#[derive(Clone, Copy)]
struct TargetFacts {
    voters: u16,
    shards: u16,
    not_durable: bool,
}

fn target_facts(addresses: &[String], cluster_id: ClusterId) -> Result<TargetFacts, String> {
    let mut last_error = "no address".to_string();
    for address in addresses {
        match node_status(address, cluster_id, false) {
            Ok(statuses) if !statuses.is_empty() => {
                return Ok(TargetFacts {
                    voters: statuses[0].voters,
                    shards: statuses.len() as u16,
                    not_durable: statuses.iter().any(|status| status.not_durable),
                });
            }
            Ok(_) => last_error = format!("{address} reports no shards"),
            Err(error) => last_error = format!("{address}: {error}"),
        }
    }
    Err(last_error)
}
