//! `quorum`: the command line. `node` runs a node; `kv`, `status`, `health`, `snapshot` and
//! `tail` talk to a cluster; `bench` measures one; `sim` runs the deterministic simulator.

mod backup;
mod bench;
mod coord;
mod kv;
mod move_leader;
mod node;
mod status;
mod tail;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use quorum::sim;

#[derive(Parser)]
#[command(name = "quorum", version, about = "Quorum: a high-throughput batched replication engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the deterministic cluster simulator over a range of seeds, or replay one seed.
    ///
    /// Each seed draws a cluster (3-5 voters, 0-2 learners, 1-4 shards), its timing and its
    /// faults, runs a safety phase with faults and a liveness phase without, and checks every
    /// invariant of docs/protocol.md after every step.
    Sim(SimArgs),
    /// Run one node of a cluster until SIGTERM or SIGINT.
    ///
    /// Example, node 1 of three on one host, two shards (ports 7000-7001):
    ///   quorum node --id 1 --cluster-id 7 --listen 127.0.0.1:7000 \
    ///     --peers 1=127.0.0.1:7000,2=127.0.0.1:7010,3=127.0.0.1:7020 --data-dir /tmp/q1 --shards 2
    #[command(verbatim_doc_comment)]
    Node(Box<node::NodeArgs>),
    /// Use a cluster's key-value store: put, get, del, cas, append.
    ///
    /// Example: quorum kv --cluster 127.0.0.1:7000 put greeting hello
    Kv(kv::KvArgs),
    /// Grant, keep alive, revoke and list leases: keys written with a lease, and locks taken
    /// with one, end with it (docs/coordination.md).
    ///
    /// Example: quorum lease --cluster 127.0.0.1:7000 grant 10 --json
    Lease(coord::LeaseArgs),
    /// Run COMMAND holding a lock: waits its turn (first come, first served), hands COMMAND the
    /// fencing token in QUORUM_LOCK_TOKEN, releases the lock when COMMAND exits. The lock lives
    /// by a lease this process keeps alive: if it dies or stops, the lock goes to the next in
    /// line after --ttl seconds, and writes fenced by the old token are refused.
    ///
    /// Example: quorum lock --cluster 127.0.0.1:7000 nightly-job -- ./run-job.sh
    Lock(coord::LockArgs),
    /// Campaign in an election with a value and lead until interrupted, or (without a value)
    /// print the leader and every change.
    ///
    /// Example: quorum elect --cluster 127.0.0.1:7000 scheduler node-a
    Elect(coord::ElectArgs),
    /// Run a transaction: if every compare holds, the --then operations, else the --else ones;
    /// atomically, at one revision (all keys on one shard).
    ///
    /// Example: quorum txn --cluster 127.0.0.1:7000 --if 'config version = 3' --then 'put config v2'
    Txn(coord::TxnArgs),
    /// Print every change of a key or prefix, one line each, in revision order, from now or
    /// from a revision (--rev), until interrupted; resumes through leader changes.
    ///
    /// Example: quorum watch --cluster 127.0.0.1:7000 config/ --prefix --json
    Watch(coord::WatchArgs),
    /// Print how a node (--node) or a whole cluster (--cluster) is doing: every member and
    /// every shard in one table (role, ballot, leader, commit and applied positions, lag).
    ///
    /// Example: quorum status --cluster 127.0.0.1:7000 --json
    Status(status::StatusArgs),
    /// Check a cluster: exit 0 if healthy, 1 if not, naming each problem (a member
    /// unreachable, a shard without a leader, a member lagging past --lag-max-slots, members
    /// whose session limits differ).
    ///
    /// Example: quorum health --cluster 127.0.0.1:7000 || page-someone
    Health(status::HealthArgs),
    /// Hand one shard's leadership, or every shard's, to another voter (protocol.md §3.10):
    /// the leader stops taking writes for it, lets its voters go once everything it proposed
    /// is chosen, and the new leader is elected at once. Prints how long each took.
    ///
    /// Example: quorum move-leader --node 127.0.0.1:7000 --to 2
    #[command(name = "move-leader")]
    MoveLeader(move_leader::MoveLeaderArgs),
    /// Back up a whole cluster (`save`), build a node's data directory from a backup
    /// (`restore`), or fetch one shard's newest snapshot from a node (in pieces), check it,
    /// print its slot and state digest, and write it to a file (tail from its slot to follow
    /// on).
    ///
    /// Examples: quorum snapshot save --cluster 127.0.0.1:7000 --out cluster.backup
    ///           quorum snapshot restore cluster.backup --data-dir DIR --id 1 --peers … --cluster-id 8
    ///           quorum snapshot --node 127.0.0.1:7000 --shard 0 --out shard-0.snapshot
    #[command(verbatim_doc_comment)]
    Snapshot(kv::SnapshotArgs),
    /// Print a node's committed log as it grows: every shard merged into one global order
    /// (or one shard), from any position; from the node's log first, then live.
    ///
    /// If the node goes away (a restart), the tail takes up again where it was, for up to
    /// 10 s; then it exits with an error. The node sends only as fast as the tail reads.
    ///
    /// Example: quorum tail --cluster 127.0.0.1:7000 --from 0 --json
    Tail(tail::TailArgs),
    /// Benchmark: by default a 3-node cluster on loopback in this process, fsync on, 10 s of
    /// 16-byte writes from 256 concurrent requests; prints throughput and latency.
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct SimArgs {
    /// A range of seeds, `A..B` (B excluded); 0..100 if neither this nor --seed is given.
    #[arg(long, value_parser = parse_range, conflicts_with = "seed")]
    seeds: Option<std::ops::Range<u64>>,
    /// One seed to run (or replay, with --trace).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the seed's event trace (byte-identical on every run of the same seed).
    #[arg(long, requires = "seed")]
    trace: bool,
    /// Worker threads for a range (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one line per seed.
    #[arg(long)]
    verbose: bool,
    /// For a range: print the summary as one JSON object (seeds, violations and the failing
    /// seeds, commands, faults, snapshots, seconds) instead of the text lines, for scripts and
    /// the soak ledger (scripts/soak.sh --sim).
    #[arg(long, conflicts_with = "seed")]
    json: bool,
    /// Let the nodes' clocks drift beyond the bound their replicas are configured with (rates
    /// from half to one and a half of real time, leases on in every seed): lease reads may
    /// then be stale, and the checkers must find it (docs/simulator.md).
    #[arg(long)]
    break_clock_bound: bool,
    /// Plant a known bug, to see the checkers catch it (docs/simulator.md, "Planted bugs"):
    /// `leases-ignore-drift` (replicas configured for clocks that never drift: a fast clock
    /// ends leases early), `unfenced-writes` (lock holders write without their token's
    /// compare), `watch-furthest` (a watch round across shards ends at the furthest shard).
    #[arg(long, value_parser = ["leases-ignore-drift", "unfenced-writes", "watch-furthest"])]
    plant: Option<String>,
}

fn parse_range(text: &str) -> Result<std::ops::Range<u64>, String> {
    let (start, end) =
        text.split_once("..").ok_or_else(|| format!("`{text}` is not a range like 0..100"))?;
    let start: u64 =
        start.trim().parse().map_err(|_| format!("range start `{start}` is not a number"))?;
    let end: u64 = end.trim().parse().map_err(|_| format!("range end `{end}` is not a number"))?;
    if start >= end {
        return Err(format!("range {start}..{end} is empty"));
    }
    Ok(start..end)
}

/// glibc's malloc serves large buffers from fresh mappings until it sees one freed, then
/// raises its thresholds to that size for good and serves them from its heaps: the process's
/// memory steps up at the first large free (a snapshot piece, a large batch) in the middle of a
/// run.
/// Setting the thresholds where that adjustment would take them, from the start, makes the
/// choice once. (Thresholds of 1 MiB instead, every large buffer in a mapping of its own,
/// cost a quarter of the throughput of 4 KiB writes, BENCHMARKS.md.)
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // What the dynamic adjustment would have set with it: keep freed memory for reuse
        // instead of giving it back and faulting it in again on every burst.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => run_sim(args),
        Command::Node(args) => {
            if let Err(error) = init_logging(args.log_format, args.log_level.as_deref()) {
                eprintln!("quorum node: {error}");
                return ExitCode::from(2);
            }
            node::run(&args)
        }
        Command::Kv(args) => kv::run_kv(&args),
        Command::Lease(args) => coord::run_lease(&args),
        Command::Lock(args) => coord::run_lock(&args),
        Command::Elect(args) => coord::run_elect(&args),
        Command::Txn(args) => coord::run_txn(&args),
        Command::Watch(args) => coord::run_watch(&args),
        Command::Status(args) => status::run_status(&args),
        Command::Health(args) => status::run_health(&args),
        Command::MoveLeader(args) => move_leader::run(&args),
        Command::Snapshot(args) => kv::run_snapshot(&args),
        Command::Tail(args) => tail::run(&args),
        Command::Bench(args) => {
            init_logging_quiet();
            bench::run(&args)
        }
    }
}

/// Logs to stderr as text or JSON lines; `level` (else `RUST_LOG`, else `info`) filters.
fn init_logging(format: node::LogFormat, level: Option<&str>) -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = match level {
        Some(level) => tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|error| format!("--log-level `{level}`: {error}"))?,
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        node::LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        node::LogFormat::Json => builder.json().with_current_span(true).init(),
    }
    Ok(())
}

/// The bench's embedded nodes log only warnings, so the progress line stays readable.
fn init_logging_quiet() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn run_sim(args: SimArgs) -> ExitCode {
    let plant = args.plant.as_deref();
    let options = sim::SimOptions {
        break_clock_bound: args.break_clock_bound,
        leases_ignore_drift: plant == Some("leases-ignore-drift"),
        unfenced_writes: plant == Some("unfenced-writes"),
        watch_furthest: plant == Some("watch-furthest"),
    };
    if let Some(seed) = args.seed {
        let world = sim::World::with_options(seed, false, options);
        // Printed as it happens: if an assertion fires, the trace up to it is on screen.
        let report = if args.trace { world.printing_trace().run().0 } else { world.run().0 };
        println!("{}", seed_line(&report));
        return if report.violation.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }
    let seeds = args.seeds.unwrap_or(0..100);
    let range = seeds.clone();
    let threads =
        args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let verbose = args.verbose;
    let summary = sim::runner::run_range(seeds, threads, options, |report, seconds| {
        if report.violation.is_some() {
            eprintln!("{}", seed_line(report));
            let mut flag =
                String::from(if options.break_clock_bound { " --break-clock-bound" } else { "" });
            if let Some(plant) = plant {
                flag.push_str(&format!(" --plant {plant}"));
            }
            eprintln!("  replay: quorum sim --seed {}{flag} --trace", report.seed);
        } else if verbose {
            println!("{} ({seconds:.3}s)", seed_line(report));
        }
    });
    if args.json {
        println!("{}", summary_json(&range, threads, &summary));
    } else {
        println!("{}", summary.per_seed_line(threads));
        println!("{}", summary.coverage_line());
        println!("{}", summary.faults_line());
        println!("{}", summary.coord_line());
        println!("{}", summary.line());
    }
    if summary.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// A range's summary as one JSON object.
fn summary_json(
    range: &std::ops::Range<u64>,
    threads: usize,
    summary: &sim::runner::Summary,
) -> serde_json::Value {
    let (faults, snapshots) = (&summary.faults, &summary.snapshots);
    serde_json::json!({
        "seeds_from": range.start,
        "seeds_to": range.end,
        "seeds": summary.seeds,
        "violations": summary.failures.len(),
        "failing_seeds": summary.failures.iter().map(|report| report.seed).collect::<Vec<_>>(),
        "commands": summary.commands,
        "leader_changes": summary.leader_changes,
        "read_index_reads": summary.read_index_reads,
        "reads": {
            "linearizable": summary.reads.linearizable,
            "lease": summary.reads.lease,
            "by_lease": summary.reads.by_lease,
            "follower": summary.reads.follower,
            "stale": summary.reads.stale,
            "too_stale": summary.reads.too_stale,
        },
        "seconds": summary.seconds,
        "threads": threads,
        "faults": {
            "bits_flipped": faults.bit_flips,
            "stretches_zeroed": faults.zeroed,
            "headers_damaged": faults.header_flips,
            "voters_wiped": faults.wiped,
            "syncs_failed": faults.sync_errors,
            "disks_full": faults.full_disks,
            "repairs_started": faults.repairs,
            "repairs_finished": faults.repaired,
            "leader_moves": faults.leader_moves,
        },
        "snapshots": {
            "taken": snapshots.taken,
            "restarts": snapshots.restarts,
            "installed": snapshots.installed,
            "pieces_pulled": snapshots.pulls,
        },
        "coordination": {
            "leases": summary.coord.leases,
            "expired": summary.coord.expired,
            "locks": summary.coord.locks,
            "fenced": summary.coord.fenced,
            "fenced_refused": summary.coord.fenced_refused,
            "proclaimed": summary.coord.proclaimed,
            "proclaims_refused": summary.coord.proclaims_refused,
            "txns": summary.coord.txns,
            "watch_rounds": summary.coord.watch_rounds,
            "watched": summary.coord.watched,
        },
    })
}

fn seed_line(report: &sim::SeedReport) -> String {
    let verdict = match &report.violation {
        None => "ok".to_string(),
        Some(violation) => format!("VIOLATION {}: {}", violation.invariant, violation.detail),
    };
    format!(
        "seed {}: {verdict}; commands {}, leader changes {}, simulated {:.2}s, events {}",
        report.seed,
        report.commands,
        report.leader_changes,
        report.simulated_us as f64 / 1e6,
        report.events
    )
}
