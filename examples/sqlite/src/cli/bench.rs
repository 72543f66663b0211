//! `quorum-sqlite bench`: the replicated database against plain SQLite on the same disk.
//!
//! The replicated run starts a 3-node cluster in this process on loopback (each node its own
//! directory and database, fsync on), and K clients insert small rows through one client
//! library connection, each waiting for its acknowledgement before the next (a closed loop).
//! Afterwards the nodes are let catch up, stopped, and their database files compared: row
//! count and a checksum of every table dumped in order.
//!
//! The plain run is what a program would do without replication and with the same
//! durability: one SQLite file on the same disk in WAL mode with `synchronous = FULL`, K
//! threads each with its own connection, one transaction (one fsync) per insert.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quorum::bench::embedded::{EMBEDDED_CLUSTER_ID, free_port_range};
use quorum::client::node_status;
use quorum::core::RoleKind;
use quorum::{ClusterId, Durability, Node, NodeConfig, NodeSettings};
use quorum_sqlite::Value;
use quorum_sqlite::client::SqlClient;
use quorum_sqlite::machine::{current_file, file_digest};

use crate::cli::node::{database_dir, start};

/// The table both runs insert into.
const CREATE_TABLE: &str = "CREATE TABLE bench (id INTEGER PRIMARY KEY, client INTEGER NOT NULL, \
                            sequence INTEGER NOT NULL, payload TEXT NOT NULL)";
const INSERT: &str = "INSERT INTO bench (client, sequence, payload) VALUES (?1, ?2, ?3)";

/// Voters of the replicated run.
const VOTERS: u16 = 3;

/// What to measure.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients. Replicated: each inserts a row and waits for its
    /// acknowledgement before the next, all through one client library connection. Plain:
    /// as many threads, each with its own SQLite connection.
    #[arg(long, value_name = "K", default_value_t = 64)]
    clients: usize,
    /// Seconds each run measures (after its warm-up).
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    duration: f64,
    /// Seconds each run inserts before measuring (its rows are kept and compared too).
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    warmup: f64,
    /// Bytes of text in each row's payload column.
    #[arg(long, value_name = "BYTES", default_value_t = 16)]
    payload_bytes: usize,
    /// Where the runs' temporary directories go: the disk being measured (default: the
    /// system's temporary directory, `$TMPDIR` or /tmp). On tmpfs an fsync costs nothing and
    /// the comparison says little.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Skip the plain SQLite run (no `plain_*` or `ratio` in the output).
    #[arg(long)]
    no_plain: bool,
    /// Print one JSON object on one line instead of text.
    #[arg(long)]
    json: bool,
}

/// What one run measured.
struct Measured {
    /// Inserts acknowledged inside the measured window.
    inserts: u64,
    /// Inserts that failed (any time).
    errors: u64,
    /// Inserts acknowledged in all (warm-up included).
    acknowledged: u64,
    /// The window's length in seconds.
    seconds: f64,
    /// Latencies in the window, microseconds, sorted.
    latencies_us: Vec<u32>,
    /// The first error seen, to show.
    first_error: Option<String>,
}

impl Measured {
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.inserts as f64 / self.seconds } else { 0.0 }
    }

    fn percentile_us(&self, fraction: f64) -> u32 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let rank = ((self.latencies_us.len() as f64 * fraction).ceil() as usize).max(1);
        self.latencies_us[rank.min(self.latencies_us.len()) - 1]
    }
}

/// One database's content after the replicated run.
struct Replica {
    rows: u64,
    checksum: u64,
}

/// The measured window: inserts acknowledged between `start` and `end` count.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

/// Runs `insert(client, sequence)` on `clients` threads until the window ends.
fn drive(
    clients: usize,
    window: Window,
    insert: impl Fn(usize, i64) -> Result<(), String> + Sync,
) -> Measured {
    let errors = AtomicU64::new(0);
    let acknowledged = AtomicU64::new(0);
    let first_error = std::sync::Mutex::new(None);
    let per_client: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|client| {
                let (insert, errors, acknowledged, first_error) =
                    (&insert, &errors, &acknowledged, &first_error);
                scope.spawn(move || {
                    let mut latencies = Vec::new();
                    let mut sequence = 0;
                    loop {
                        let began = Instant::now();
                        if began >= window.end {
                            return latencies;
                        }
                        sequence += 1;
                        match insert(client, sequence) {
                            Ok(()) => {
                                acknowledged.fetch_add(1, Ordering::Relaxed);
                                let done = Instant::now();
                                if began >= window.start && done < window.end {
                                    let micros = done.duration_since(began).as_micros();
                                    latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                                }
                            }
                            Err(error) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                let mut first =
                                    first_error.lock().unwrap_or_else(|e| e.into_inner());
                                first.get_or_insert(error);
                            }
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().map(|thread| thread.join().unwrap_or_default()).collect()
    });
    let mut latencies_us: Vec<u32> = per_client.into_iter().flatten().collect();
    latencies_us.sort_unstable();
    Measured {
        inserts: latencies_us.len() as u64,
        errors: errors.into_inner(),
        acknowledged: acknowledged.into_inner(),
        seconds: window.end.duration_since(window.start).as_secs_f64(),
        latencies_us,
        first_error: first_error.into_inner().unwrap_or_else(|e| e.into_inner()),
    }
}

fn window(warmup: f64, duration: f64) -> Window {
    let start = Instant::now() + Duration::from_secs_f64(warmup);
    Window { start, end: start + Duration::from_secs_f64(duration) }
}

fn payload(bytes: usize) -> String {
    "x".repeat(bytes)
}

/// Three nodes of the SQLite machine on loopback, each in its own directory under `base`.
struct Cluster {
    nodes: Vec<Node>,
    addresses: Vec<String>,
    data_dirs: Vec<PathBuf>,
}

impl Cluster {
    fn start(base: &Path) -> Result<Cluster, String> {
        let mut addresses = Vec::new();
        for _ in 0..VOTERS {
            addresses.push(format!("127.0.0.1:{}", free_port_range(1)?));
        }
        let peers: Vec<String> = addresses
            .iter()
            .enumerate()
            .map(|(i, address)| format!("{}={address}", i + 1))
            .collect();
        let mut cluster = Cluster { nodes: Vec::new(), addresses, data_dirs: Vec::new() };
        for index in 0..usize::from(VOTERS) {
            let data_dir = base.join(format!("node-{}", index + 1));
            let settings = NodeSettings {
                id: Some(index as u16 + 1),
                cluster_id: Some(EMBEDDED_CLUSTER_ID),
                listen: Some(cluster.addresses[index].clone()),
                peers: Some(peers.join(",")),
                data_dir: Some(data_dir.clone()),
                shards: Some(1),
                // Unpinned: pinned, shard 0 of all three nodes shares core 0, and with SQLite
                // applying on each that one core is the limit (measured on 2 cores: 2,400 to
                // 2,560 inserts/s pinned, 3,400 to 3,530 unpinned, in alternating runs).
                pin_cores: Some(false),
                durability: Some(Durability::Fsync),
                // A bench opens a few connections; three nodes share this process's files.
                connections_max: Some(1024),
                ..NodeSettings::default()
            };
            let config = NodeConfig::resolve(settings).map_err(|error| error.to_string())?;
            cluster.nodes.push(start(config)?);
            cluster.data_dirs.push(data_dir);
        }
        cluster.await_leader(Duration::from_secs(10))?;
        Ok(cluster)
    }

    fn await_leader(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self.addresses.iter().any(|address| {
                node_status(address, ClusterId(EMBEDDED_CLUSTER_ID), false).is_ok_and(|statuses| {
                    statuses.first().is_some_and(|s| s.role == RoleKind::Leader)
                })
            });
            if leader {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no leader within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every node has applied the same commands, twice in a row 100 ms apart:
    /// a follower learns the last commits from the leader's next message.
    fn await_converged(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut previous = None;
        loop {
            let applied: Result<Vec<u64>, String> = self
                .addresses
                .iter()
                .map(|address| {
                    let statuses = node_status(address, ClusterId(EMBEDDED_CLUSTER_ID), false)
                        .map_err(|error| format!("{address}: {error}"))?;
                    Ok(statuses.first().map_or(0, |status| status.applied_commands))
                })
                .collect();
            let applied = applied?;
            let equal = applied.windows(2).all(|pair| pair[0] == pair[1]);
            if equal && previous.as_ref() == Some(&applied) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the nodes did not converge within {timeout:?}: applied {applied:?}"
                ));
            }
            previous = Some(applied);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the nodes, then reads each one's database file.
    fn stop_and_read(self) -> Result<Vec<Replica>, String> {
        for node in &self.nodes {
            node.stop();
        }
        for node in self.nodes {
            node.wait().map_err(|error| format!("a node failed: {error}"))?;
        }
        self.data_dirs
            .iter()
            .map(|data_dir| {
                let dir = database_dir(data_dir);
                let path = current_file(&dir, 0)
                    .map_err(|error| error.to_string())?
                    .ok_or_else(|| format!("{}: no database file", dir.display()))?;
                let (rows, checksum) =
                    file_digest(&path).map_err(|error| format!("{}: {error}", path.display()))?;
                Ok(Replica { rows, checksum })
            })
            .collect()
    }
}

fn replicated(args: &BenchArgs, base: &Path) -> Result<(Measured, Vec<Replica>), String> {
    let cluster = Cluster::start(base)?;
    let client =
        SqlClient::connect(&cluster.addresses, EMBEDDED_CLUSTER_ID, Duration::from_secs(10))
            .map_err(|error| format!("cannot connect: {error}"))?;
    client.execute(0, CREATE_TABLE, vec![]).map_err(|error| format!("{CREATE_TABLE}: {error}"))?;
    let text = payload(args.payload_bytes);
    let measured =
        drive(args.clients, window(args.warmup, args.duration), |client_index, sequence| {
            let params = vec![
                Value::Integer(client_index as i64),
                Value::Integer(sequence),
                Value::Text(text.clone()),
            ];
            client.execute(0, INSERT, params).map(|_| ()).map_err(|error| error.to_string())
        });
    drop(client);
    cluster.await_converged(Duration::from_secs(30))?;
    let replicas = cluster.stop_and_read()?;
    Ok((measured, replicas))
}

fn plain_connection(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let connection = rusqlite::Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(30))?;
    // `synchronous` is a setting of the connection, not of the file: every thread sets it.
    connection.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
    Ok(connection)
}

fn plain(args: &BenchArgs, base: &Path) -> Result<Measured, String> {
    let path = base.join("plain.db");
    let fail = |error: rusqlite::Error| format!("{}: {error}", path.display());
    plain_connection(&path).and_then(|c| c.execute_batch(CREATE_TABLE)).map_err(fail)?;
    let connections: Vec<std::sync::Mutex<rusqlite::Connection>> = (0..args.clients)
        .map(|_| plain_connection(&path).map(std::sync::Mutex::new))
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let text = payload(args.payload_bytes);
    let measured =
        drive(args.clients, window(args.warmup, args.duration), |client_index, sequence| {
            // Each thread locks only its own connection: the mutex is never contended.
            let connection = connections[client_index].lock().unwrap_or_else(|e| e.into_inner());
            let mut statement =
                connection.prepare_cached(INSERT).map_err(|error| error.to_string())?;
            statement
                .execute(rusqlite::params![client_index as i64, sequence, text])
                .map(|_| ())
                .map_err(|error| error.to_string())
        });
    Ok(measured)
}

/// Runs `quorum-sqlite bench`.
pub fn run(args: &BenchArgs) -> ExitCode {
    let duration_valid = args.duration.is_finite() && args.duration > 0.0;
    let warmup_valid = args.warmup.is_finite() && args.warmup >= 0.0;
    if args.clients == 0 || !duration_valid || !warmup_valid {
        eprintln!(
            "quorum-sqlite bench: --clients must be at least 1, --duration above 0 and \
             --warmup at least 0 (seconds)"
        );
        return ExitCode::from(2);
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let base = match tempfile::Builder::new().prefix("quorum-sqlite-bench-").tempdir_in(&parent) {
        Ok(base) => base,
        Err(error) => {
            eprintln!(
                "quorum-sqlite bench: cannot create a directory in {}: {error}",
                parent.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let replicated_dir = base.path().join("replicated");
    let plain_dir = base.path().join("plain");
    for dir in [&replicated_dir, &plain_dir] {
        if let Err(error) = std::fs::create_dir_all(dir) {
            eprintln!("quorum-sqlite bench: {}: {error}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    let (measured, replicas) = match replicated(args, &replicated_dir) {
        Ok(result) => result,
        Err(error) => {
            eprintln!("quorum-sqlite bench: replicated run: {error}");
            return ExitCode::FAILURE;
        }
    };
    let plain = if args.no_plain {
        None
    } else {
        match plain(args, &plain_dir) {
            Ok(plain) => Some(plain),
            Err(error) => {
                eprintln!("quorum-sqlite bench: plain run: {error}");
                return ExitCode::FAILURE;
            }
        }
    };
    let identical = replicas
        .windows(2)
        .all(|pair| pair[0].rows == pair[1].rows && pair[0].checksum == pair[1].checksum);
    report(args, &parent, &measured, &replicas, identical, plain.as_ref());
    if identical { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn report(
    args: &BenchArgs,
    dir: &Path,
    measured: &Measured,
    replicas: &[Replica],
    identical: bool,
    plain: Option<&Measured>,
) {
    let rows = replicas.first().map_or(0, |replica| replica.rows);
    let ratio =
        plain.map(|plain| if plain.rate() > 0.0 { measured.rate() / plain.rate() } else { 0.0 });
    if args.json {
        let mut object = serde_json::json!({
            "clients": args.clients,
            "seconds": measured.seconds,
            "warmup_seconds": args.warmup,
            "payload_bytes": args.payload_bytes,
            "voters": VOTERS,
            "durability": "fsync",
            "dir": dir.display().to_string(),
            "inserts_per_sec": measured.rate(),
            "p50_us": measured.percentile_us(0.50),
            "p99_us": measured.percentile_us(0.99),
            "acknowledged": measured.acknowledged,
            "errors": measured.errors,
            "rows": rows,
            "replica_rows": replicas.iter().map(|r| r.rows).collect::<Vec<_>>(),
            "replica_checksums": replicas.iter().map(|r| format!("{:016x}", r.checksum)).collect::<Vec<_>>(),
            "replicas_identical": identical,
        });
        if let Some(plain) = plain {
            object["plain_inserts_per_sec"] = plain.rate().into();
            object["plain_p50_us"] = plain.percentile_us(0.50).into();
            object["plain_p99_us"] = plain.percentile_us(0.99).into();
            object["plain_errors"] = plain.errors.into();
            object["ratio"] = ratio.unwrap_or(0.0).into();
        }
        println!("{object}");
    } else {
        println!(
            "replicated (3 nodes, fsync): {:.0} inserts/s, p50 {} us, p99 {} us, {} errors",
            measured.rate(),
            measured.percentile_us(0.50),
            measured.percentile_us(0.99),
            measured.errors
        );
        for (index, replica) in replicas.iter().enumerate() {
            println!(
                "  node {}: {} rows, checksum {:016x}",
                index + 1,
                replica.rows,
                replica.checksum
            );
        }
        println!(
            "  replicas {}; {} inserts acknowledged in all",
            if identical { "identical" } else { "DIFFER" },
            measured.acknowledged
        );
        if let Some(plain) = plain {
            println!(
                "plain SQLite (WAL, synchronous=FULL, a transaction per insert): {:.0} inserts/s, \
                 p50 {} us, p99 {} us, {} errors",
                plain.rate(),
                plain.percentile_us(0.50),
                plain.percentile_us(0.99),
                plain.errors
            );
            println!("ratio: {:.2}x", ratio.unwrap_or(0.0));
        }
    }
    for (name, run) in [("replicated", Some(measured)), ("plain", plain)] {
        if let Some(error) = run.and_then(|run| run.first_error.as_ref()) {
            eprintln!("quorum-sqlite bench: {name} run: first error: {error}");
        }
    }
}
