//! `quorum bench`: the load generator.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use quorum::bench::load::{LoadSpec, Workload};
use quorum::bench::{self, BenchRow, BenchSpec, report, watch};
use quorum::client::Consistency;
use quorum::runtime::config::{ApplyMode, Durability};

/// With no options: a 3-voter cluster on loopback in this process (temporary data, fsync on),
/// 10 s of 16-byte writes from 256 concurrent requests after 2 s of warm-up, then a table.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Without --pipeline: concurrent requests (closed loop), all over the bench's one client
    /// (one connection to each shard's leader, its requests sent many to a frame). With
    /// --pipeline: clients, each a client of its own with its own connections. A comma list
    /// sweeps them, one row each.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    clients: Vec<usize>,
    /// Make each of --clients a client with connections of its own (its own session and
    /// connection threads) that keeps N requests outstanding on its connection to one shard's
    /// leader (client k to the k-th shard, round robin), sending a new one as each completes,
    /// like `redis-benchmark -P`. Concurrency is then clients × N. Without it (the default):
    /// --clients concurrent requests over one shared client. Closed-loop kv only.
    #[arg(long, value_name = "N")]
    pipeline: Option<usize>,
    /// Bytes of each written value.
    #[arg(long, default_value_t = 16)]
    payload_bytes: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Fraction of requests that are gets, 0 to 1: reads off the log of keys written once
    /// before the load starts, counted apart from the writes (the `read_` and `write_`
    /// columns and JSON fields). A comma list runs each (0 once, whatever --consistency).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    read_ratio: Vec<f64>,
    /// How the gets are read: linearizable (the leader's read index), lease (the embedded
    /// cluster then runs with --read-lease), follower (any member, through the leader's read
    /// index), stale (any member, at once), or log (as commands ordered in the log, as gets
    /// went before reads left it: for comparison). A comma list runs each, one row each.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "linearizable")]
    consistency: Vec<ConsistencyArg>,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Shards per node (embedded cluster); a comma list sweeps them, one row each. Default:
    /// cores / voters, at least 1: the embedded cluster runs every node on this host, and
    /// more shard threads than cores only add context switches (BENCHMARKS.md, the sweep).
    #[arg(long, value_delimiter = ',')]
    shards: Vec<u16>,
    /// Voters in the embedded cluster.
    #[arg(long, default_value_t = 3)]
    voters: u16,
    /// Send at a fixed rate instead of a closed loop (needs --rate); latency then counts from
    /// each request's scheduled time.
    #[arg(long, requires = "rate")]
    open_loop: bool,
    /// Requests per second for --open-loop; with --workload watch, puts per second (default
    /// 10,000), always an open loop.
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<f64>,
    /// Watchers for --workload watch: each watches a key of its own (`watch-I`, spread over
    /// the shards), blocking in the client's `Watch::wait` on a thread of its own.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    watchers: usize,
    /// Send every request to shard K and leave the others idle (their leaders then skip so
    /// the merged order keeps moving; see `quorum tail --hold-report`).
    #[arg(long, value_name = "K")]
    only_shard: Option<u16>,
    /// fsync: acknowledge only what is on disk. none: never sync (labelled in every output).
    #[arg(long, value_enum, default_value_t = Durability::Fsync)]
    durability: Durability,
    /// The embedded cluster's apply mode: shard (each shard its own state machine) or total
    /// (one state machine over the merged order of all shards).
    #[arg(long, value_enum, default_value_t = ApplyMode::Shard)]
    apply: ApplyMode,
    /// Drive a running cluster (any members' HOST:PORT) instead of the embedded one.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,…")]
    target: Option<Vec<String>>,
    /// The target's cluster id (default: any).
    #[arg(long, default_value_t = 0)]
    cluster_id: u64,
    /// Print one JSON line per run (every condition and result) instead of the table.
    #[arg(long)]
    json: bool,
    /// Write an SVG of throughput and p99 against the swept parameter (shards or clients).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// kv: puts (and gets, --read-ratio) of random keys. lock: each of --clients workers takes
    /// and releases a lock of its own name with a lease of its own, over and over; ops are
    /// lock+unlock cycles (docs/coordination.md). watch: --watchers watchers of a key each and
    /// puts to those keys in turn at --rate; ops are events delivered, latency runs from when
    /// a put was due to when its watcher got the event, and missed, duplicated and
    /// out-of-order events are counted (each must be 0).
    #[arg(long, value_enum, default_value = "kv")]
    workload: WorkloadArg,
    /// Skip measuring the machine's limits (memcpy, fdatasync, loopback TCP; about 2 s)
    /// before the runs.
    #[arg(long)]
    no_limits: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WorkloadArg {
    Kv,
    Lock,
    Watch,
}

impl WorkloadArg {
    fn workload(self) -> Workload {
        match self {
            WorkloadArg::Kv => Workload::Kv,
            WorkloadArg::Lock => Workload::Lock,
            WorkloadArg::Watch => Workload::Watch,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConsistencyArg {
    Linearizable,
    Lease,
    Follower,
    Stale,
    Log,
}

impl ConsistencyArg {
    /// `None`: through the log.
    fn consistency(self) -> Option<Consistency> {
        match self {
            ConsistencyArg::Linearizable => Some(Consistency::Linearizable),
            ConsistencyArg::Lease => Some(Consistency::Lease),
            ConsistencyArg::Follower => Some(Consistency::Follower),
            ConsistencyArg::Stale => Some(Consistency::Stale),
            ConsistencyArg::Log => None,
        }
    }
}

/// One run: shards, concurrent requests, the fraction of gets and how they are read.
type Run = (u16, usize, f64, Option<Consistency>);

/// Every run the arguments ask for (a write-only one once, whatever the consistencies).
fn runs(args: &BenchArgs, shard_values: &[u16]) -> Vec<Run> {
    let mut runs = Vec::new();
    for shards in shard_values {
        for read_ratio in &args.read_ratio {
            for clients in &args.clients {
                for consistency in &args.consistency {
                    runs.push((*shards, *clients, *read_ratio, consistency.consistency()));
                    if *read_ratio == 0.0 {
                        break;
                    }
                }
            }
        }
    }
    runs
}

fn spec(args: &BenchArgs, (shards, clients, read_ratio, consistency): Run) -> BenchSpec {
    BenchSpec {
        load: LoadSpec {
            clients,
            payload_bytes: args.payload_bytes,
            duration: Duration::from_secs_f64(args.duration),
            warmup: Duration::from_secs_f64(args.warmup),
            read_ratio,
            consistency,
            keys: args.keys,
            rate: match args.workload {
                WorkloadArg::Watch => Some(args.rate.unwrap_or(watch::PUTS_PER_SEC_DEFAULT)),
                _ => args.rate,
            },
            only_shard: args.only_shard,
            workload: args.workload.workload(),
            watchers: args.watchers,
            pipeline: args.pipeline,
        },
        shards,
        voters: args.voters,
        durability: args.durability,
        apply: args.apply,
        target: args.target.clone(),
        cluster_id: args.cluster_id,
        progress: !args.json,
    }
}

fn check(args: &BenchArgs) -> Result<(), String> {
    if let Some(bad) = args.read_ratio.iter().find(|ratio| !(0.0..=1.0).contains(*ratio)) {
        return Err(format!("--read-ratio {bad} is not between 0 and 1"));
    }
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        return Err(format!("--duration {} must be a positive number of seconds", args.duration));
    }
    if !(args.warmup >= 0.0 && args.warmup.is_finite()) {
        return Err(format!("--warmup {} must be zero or more seconds", args.warmup));
    }
    if args.clients.contains(&0) {
        return Err("--clients must be at least 1".into());
    }
    if args.pipeline == Some(0) {
        return Err("--pipeline must be at least 1".into());
    }
    if args.pipeline.is_some() && (args.open_loop || !matches!(args.workload, WorkloadArg::Kv)) {
        return Err("--pipeline drives the closed-loop kv workload only".into());
    }
    if args.shards.iter().any(|shards| !(1..=256).contains(shards)) {
        return Err("--shards must be from 1 to 256".into());
    }
    if args.voters == 0 || args.voters > 64 {
        return Err("--voters must be from 1 to 64".into());
    }
    if args.keys == 0 {
        return Err("--keys must be at least 1".into());
    }
    if args.rate.is_some_and(|rate| !(rate > 0.0 && rate.is_finite())) {
        return Err("--rate must be a positive number of requests per second".into());
    }
    let watching = matches!(args.workload, WorkloadArg::Watch);
    if args.rate.is_some() && !args.open_loop && !watching {
        return Err("--rate needs --open-loop (or --workload watch)".into());
    }
    if watching && args.watchers == 0 {
        return Err("--watchers must be at least 1".into());
    }
    if args.target.is_some() && args.shards.len() > 1 {
        return Err("--shards sweeps the embedded cluster; a --target runs as configured".into());
    }
    if args.shards.len() > 1 && args.clients.len() > 1 {
        return Err("sweep either --shards or --clients, not both".into());
    }
    Ok(())
}

pub fn run(args: &BenchArgs) -> ExitCode {
    if let Err(error) = check(args) {
        eprintln!("quorum bench: {error}");
        return ExitCode::from(2);
    }
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get() as u16);
    let default_shards = (cores / args.voters.max(1)).max(1);
    let shard_values =
        if args.shards.is_empty() { vec![default_shards] } else { args.shards.clone() };
    let runs = runs(args, &shard_values);
    let limits = if args.no_limits {
        None
    } else {
        if !args.json {
            eprintln!("measuring the machine's limits (memcpy, fdatasync, loopback TCP)…");
        }
        match bench::limits::measure(&std::env::temp_dir()) {
            Ok(limits) => Some(limits),
            Err(error) => {
                eprintln!("quorum bench: measuring the limits failed: {error}");
                None
            }
        }
    };
    let mut rows: Vec<BenchRow> = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        let spec = spec(args, *run);
        let (shards, clients, read_ratio, consistency) = run;
        if !args.json {
            eprintln!(
                "run {}/{}: {} shards, {}, read ratio {} ({}){}",
                index + 1,
                runs.len(),
                shards,
                report::concurrency(*clients, args.pipeline),
                read_ratio,
                consistency.map_or("log".into(), |c| format!("{c:?}").to_lowercase()),
                if args.durability == Durability::None { ", DURABILITY OFF" } else { "" }
            );
        }
        match bench::run(&spec) {
            Ok(mut row) => {
                row.limits = limits.clone();
                if args.json {
                    println!("{}", serde_json::to_string(&row).unwrap_or_default());
                }
                rows.push(row);
            }
            Err(error) => {
                eprintln!("quorum bench: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    if !args.json {
        print_table(args, &rows, limits.as_ref());
    }
    if let Some(path) = &args.plot {
        let (parameter, points): (&str, Vec<(f64, &BenchRow)>) = if shard_values.len() > 1 {
            ("shards", rows.iter().map(|row| (f64::from(row.shards), row)).collect())
        } else {
            ("concurrent requests", rows.iter().map(|row| (row.clients as f64, row)).collect())
        };
        if let Err(error) = report::plot(path, parameter, &points) {
            eprintln!("quorum bench: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The table for people: the conditions, the limits, a line per run.
fn print_table(args: &BenchArgs, rows: &[BenchRow], limits: Option<&bench::limits::Limits>) {
    println!("{}", report::conditions(&rows[0]));
    if let Some(limits) = limits {
        println!("{}", report::limits_line(limits));
    }
    println!("cpu: {}", rows[0].cpu.cpu_measured);
    println!("{}", report::header());
    for row in rows {
        println!("{}", report::line(row));
    }
    if args.read_ratio.iter().any(|ratio| *ratio > 0.0) {
        println!("{}", report::split_header());
        for row in rows {
            println!("{}", report::split_line(row));
        }
    }
    if rows.iter().any(|row| row.watch.is_some()) {
        println!("{}", report::watch_header());
        for row in rows {
            println!("{}", report::watch_line(row));
        }
    }
    if rows.iter().any(|row| row.errors > 0 || row.unsent > 0) {
        println!("errors: requests that failed (timeouts, rejections); see --json for unsent");
    }
}
