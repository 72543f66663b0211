//! Real `quorum-sqlite node` processes on loopback: three voters under concurrent inserts,
//! the leader killed with SIGKILL during the load and restarted; then every acknowledged
//! insert must be in the database and every replica's file identical (row count and a
//! checksum of every table dumped in order). Statements that fail (syntax, a constraint) are
//! replies with SQLite's message, applied identically everywhere. A fourth node, a learner
//! started empty once the voters' logs were released behind snapshots, receives the database
//! as a snapshot (a `VACUUM INTO` image) and ends identical too.
//!
//! Membership is fixed at start in Quorum today (a fourth voter cannot join a running
//! cluster), so the fourth node is a learner: listed in every node's `--learners` from the
//! start, and started later.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorum::bench::embedded::free_port_range;
use quorum::client::node_status;
use quorum::core::RoleKind;
use quorum::{ClusterId, NodeId};
use quorum_sqlite::client::{SqlClient, SqlClientError};
use quorum_sqlite::machine::{current_file, file_digest};
use quorum_sqlite::{ErrorKind, Value};

const CLUSTER: u64 = 0x5351_4c54;
const BINARY: &str = env!("CARGO_BIN_EXE_quorum-sqlite");
const VOTERS: usize = 3;
/// Bytes of each inserted row's payload: enough that a few seconds of load write several
/// MiB of log, so that snapshots release the logs' prefixes.
const PAYLOAD_BYTES: usize = 1024;

struct Node {
    id: u16,
    address: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    nodes: Vec<Node>,
    peers: String,
    learners: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Three voters and one learner (id 4), none started.
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (1..=VOTERS as u16 + 1)
            .map(|id| Node {
                id,
                address: format!("127.0.0.1:{}", free_port_range(1).unwrap()),
                data_dir: dir.path().join(format!("node-{id}")),
                log: dir.path().join(format!("node-{id}.log")),
                child: None,
            })
            .collect();
        let list = |nodes: &[Node]| {
            nodes.iter().map(|n| format!("{}={}", n.id, n.address)).collect::<Vec<_>>().join(",")
        };
        let peers = list(&nodes[..VOTERS]);
        let learners = list(&nodes[VOTERS..]);
        Cluster { nodes, peers, learners, _dir: dir }
    }

    fn spawn(&mut self, index: usize) {
        let node = &self.nodes[index];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
        let mut command = Command::new(BINARY);
        command
            .arg("node")
            .args(["--id", &node.id.to_string(), "--cluster-id", &CLUSTER.to_string()])
            .args(["--listen", &node.address, "--peers", &self.peers])
            .args(["--learners", &self.learners])
            .args(["--wal-segment-mib", "1", "--snapshot-every-mib", "1", "--retain-slots", "64"])
            .args(["--election-timeout-ms", "300", "--heartbeat-interval-ms", "30"])
            // Four processes on a small machine: pinned, they would all share core 0.
            .args(["--pin-cores", "false"])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if index >= VOTERS {
            command.arg("--learner");
        }
        self.nodes[index].child = Some(command.spawn().unwrap());
    }

    fn kill9(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    fn terminate(&mut self, index: usize) {
        let mut child = self.nodes[index].child.take().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: `kill` only sends a signal, to our own child, which has not been reaped
        // (we hold it), so the pid cannot name another process.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to node {}", index + 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "node {} exited {status}:\n{}",
                    index + 1,
                    self.tail(index)
                );
                return;
            }
            assert!(Instant::now() < deadline, "node {} ignored SIGTERM", index + 1);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&mut self, when: &str) {
        for index in 0..self.nodes.len() {
            let exited = self.nodes[index].child.as_mut().and_then(|c| c.try_wait().unwrap());
            if let Some(status) = exited {
                panic!("{when}: node {} exited ({status}):\n{}", index + 1, self.tail(index));
            }
        }
    }

    fn tail(&self, index: usize) -> String {
        let log = std::fs::read_to_string(&self.nodes[index].log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn voter_addresses(&self) -> Vec<String> {
        self.nodes[..VOTERS].iter().map(|node| node.address.clone()).collect()
    }

    fn client(&self) -> SqlClient {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match SqlClient::connect(&self.voter_addresses(), CLUSTER, Duration::from_secs(15)) {
                Ok(client) => return client,
                Err(error) => {
                    assert!(Instant::now() < deadline, "cannot connect: {error}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// The voter a majority names as the leader, if it says so itself.
    fn leader(&self) -> Option<usize> {
        let statuses: Vec<_> = self.nodes[..VOTERS]
            .iter()
            .map(|node| node_status(&node.address, ClusterId(CLUSTER), false).ok())
            .collect();
        (0..VOTERS).find(|&index| {
            let says = statuses[index].as_ref().is_some_and(|s| s[0].role == RoleKind::Leader);
            let named = statuses
                .iter()
                .flatten()
                .filter(|s| s[0].leader == Some(NodeId(index as u16 + 1)))
                .count();
            says && named * 2 > VOTERS
        })
    }

    fn await_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader() {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader after {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the running nodes have committed and applied the same, with equal state
    /// summaries (the machine's digest of every table), twice in a row.
    fn await_converged(&self, indexes: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut previous = None;
        loop {
            let statuses: Vec<_> = indexes
                .iter()
                .map(|&i| {
                    node_status(&self.nodes[i].address, ClusterId(CLUSTER), true)
                        .ok()
                        .map(|s| (s[0].commit_index, s[0].applied_commands, s[0].summary))
                })
                .collect();
            let all = statuses.iter().all(Option::is_some);
            let equal = statuses.windows(2).all(|pair| pair[0] == pair[1]);
            if all && equal && previous.as_ref() == Some(&statuses) {
                return;
            }
            if Instant::now() > deadline {
                let tails: Vec<String> = indexes.iter().map(|&i| self.tail(i)).collect();
                panic!("not converged after {timeout:?}: {statuses:?}\n{}", tails.join("\n---\n"));
            }
            previous = Some(statuses);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn database_dir(&self, index: usize) -> PathBuf {
        self.nodes[index].data_dir.join("sqlite")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill9(index);
        }
    }
}

/// What the writers saw.
#[derive(Default)]
struct Seen {
    /// Every acknowledged insert: (writer, sequence).
    acknowledged: BTreeSet<(i64, i64)>,
    /// Inserts that failed (timed out, cut off): applied or not, not checked.
    uncertain: usize,
    first_error: Option<String>,
}

/// `count` threads inserting unique (writer, sequence) rows until told to stop.
fn start_writers(
    client: &Arc<SqlClient>,
    count: i64,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Mutex<Seen>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..count)
        .map(|writer| {
            let (client, stop, seen) = (client.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let payload = "p".repeat(PAYLOAD_BYTES);
                let mut sequence = 0;
                while !stop.load(Ordering::Relaxed) {
                    sequence += 1;
                    let params = vec![
                        Value::Integer(writer),
                        Value::Integer(sequence),
                        Value::Text(payload.clone()),
                    ];
                    let sql = "INSERT INTO t (writer, sequence, payload) VALUES (?1, ?2, ?3)";
                    let result = client.execute(0, sql, params);
                    let mut seen = seen.lock().unwrap();
                    match result {
                        Ok(outcome) => {
                            assert_eq!(outcome.changes, 1);
                            seen.acknowledged.insert((writer, sequence));
                        }
                        Err(error) => {
                            seen.uncertain += 1;
                            seen.first_error.get_or_insert(error.to_string());
                        }
                    }
                }
            })
        })
        .collect()
}

fn run_cli(args: &[&str]) -> Output {
    Command::new(BINARY).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Statements that fail are replies with SQLite's message; they change nothing, on every
/// replica alike (the digests compared at the end cover it). Through the library and the CLI.
fn failing_statements_are_replies(client: &SqlClient, address: &str) {
    let error =
        client.execute(0, "INSERT INTO t (writer, sequence, payload) VALUE (1, 2, 3)", vec![]);
    match error {
        Err(SqlClientError::Statement(error)) => {
            assert_eq!(error.kind, ErrorKind::Sql);
            assert!(error.message.contains("syntax error"), "{error}");
        }
        other => panic!("a syntax error: {other:?}"),
    }
    let duplicate = vec![Value::Integer(1), Value::Integer(1), Value::Text("again".into())];
    match client.execute(
        0,
        "INSERT INTO t (writer, sequence, payload) VALUES (?1, ?2, ?3)",
        duplicate,
    ) {
        Err(SqlClientError::Statement(error)) => {
            assert_eq!(error.kind, ErrorKind::Sql);
            assert!(error.message.contains("UNIQUE constraint failed"), "{error}");
        }
        other => panic!("a constraint violation: {other:?}"),
    }
    match client.execute(0, "INSERT INTO other VALUES (random())", vec![]) {
        Err(SqlClientError::Statement(error)) => {
            assert_eq!(error.kind, ErrorKind::NonDeterministic)
        }
        other => panic!("a non-deterministic statement: {other:?}"),
    }
    let cluster = ["--cluster", address, "--cluster-id"];
    let id = CLUSTER.to_string();
    let out = run_cli(&[&["exec"], &cluster[..], &[&id, "INSERT INTO t VALUES (1, 2"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("incomplete input"), "{}", text(&out.stderr));
    let insert = "INSERT INTO t (writer, sequence, payload) VALUES (?1, ?2, ?3) RETURNING writer";
    let out =
        run_cli(&[&["exec"], &cluster[..], &[&id, insert, "-1", "1", "from the cli"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("1 row changed"), "{}", text(&out.stdout));
    let out = run_cli(&[&["exec"], &cluster[..], &[&id, insert, "-1", "1", "twice"]].concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("UNIQUE constraint failed"), "{}", text(&out.stderr));
    let select = "SELECT writer, sequence, payload FROM t WHERE writer = ?1";
    let out = run_cli(&[&["query", "--json"], &cluster[..], &[&id, select, "-1"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"writer\":-1,\"sequence\":1,\"payload\":\"from the cli\"}\n");
    let out = run_cli(&[&["query"], &cluster[..], &[&id, "DELETE FROM t"]].concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not a read-only statement"), "{}", text(&out.stderr));
}

/// Row count and checksum of each node's current database file (the node stopped).
fn file_digests(cluster: &Cluster, indexes: &[usize]) -> Vec<(u64, u64)> {
    indexes
        .iter()
        .map(|&index| {
            let dir = cluster.database_dir(index);
            let path = current_file(&dir, 0).unwrap().expect("a database file");
            file_digest(&path).unwrap()
        })
        .collect()
}

fn generation(path: &Path) -> u64 {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    name.trim_start_matches("shard-0.g").trim_end_matches(".db").parse().unwrap()
}

#[test]
fn a_killed_leader_loses_no_acknowledged_insert_and_every_replica_ends_identical() {
    let mut cluster = Cluster::new();
    for index in 0..VOTERS {
        cluster.spawn(index);
    }
    cluster.await_leader(Duration::from_secs(20));
    let client = Arc::new(cluster.client());
    client
        .execute(
            0,
            "CREATE TABLE t (id INTEGER PRIMARY KEY, writer INTEGER NOT NULL, \
             sequence INTEGER NOT NULL, payload TEXT NOT NULL, UNIQUE (writer, sequence))",
            vec![],
        )
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let writers = start_writers(&client, 8, &stop, &seen);
    std::thread::sleep(Duration::from_secs(3));
    let leader = cluster.await_leader(Duration::from_secs(10));
    let before_kill = seen.lock().unwrap().acknowledged.len();
    cluster.kill9(leader);
    std::thread::sleep(Duration::from_secs(2));
    cluster.spawn(leader);
    std::thread::sleep(Duration::from_secs(3));
    // It reopened its database where the kill left it, instead of rebuilding it from the
    // snapshot and the log.
    // (The first start, of an empty database, says nothing of it.)
    let log = std::fs::read_to_string(&cluster.nodes[leader].log).unwrap();
    assert!(log.contains("the state machine persists itself"), "{}", cluster.tail(leader));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    cluster.assert_running("after the load");
    let (acknowledged, uncertain, first_error) = {
        let seen = seen.lock().unwrap();
        (seen.acknowledged.clone(), seen.uncertain, seen.first_error.clone())
    };
    let after_kill = acknowledged.len() - before_kill;
    eprintln!(
        "{} inserts acknowledged ({before_kill} before the kill of node {}), {uncertain} \
         uncertain (first: {first_error:?})",
        acknowledged.len(),
        leader + 1
    );
    assert!(before_kill > 100 && after_kill > 100, "{before_kill} then {after_kill} acknowledged");

    failing_statements_are_replies(&client, &cluster.nodes[(leader + 1) % VOTERS].address);

    // Every acknowledged insert is in the database (read through the cluster).
    let rows = client.query(0, "SELECT writer, sequence FROM t WHERE writer >= 0", vec![]).unwrap();
    let present: BTreeSet<(i64, i64)> = rows
        .rows
        .iter()
        .map(|row| match row[..] {
            [Value::Integer(writer), Value::Integer(sequence)] => (writer, sequence),
            _ => panic!("a row of two integers: {row:?}"),
        })
        .collect();
    let missing: Vec<_> = acknowledged.difference(&present).take(10).collect();
    assert!(missing.is_empty(), "acknowledged inserts missing: {missing:?}");
    assert!(present.len() <= acknowledged.len() + uncertain, "rows nobody inserted");

    // The learner starts empty; the voters' logs no longer hold the beginning, so it gets
    // the database as a snapshot and follows the log from there.
    let learner = VOTERS;
    cluster.spawn(learner);
    let everyone: Vec<usize> = (0..=VOTERS).collect();
    cluster.await_converged(&everyone, Duration::from_secs(60));
    cluster.assert_running("after the learner caught up");

    for index in everyone.iter().rev() {
        cluster.terminate(*index);
    }
    let digests = file_digests(&cluster, &everyone);
    eprintln!("files: {digests:?}");
    // The rows read and the CLI's; an uncertain insert may have been applied after the read
    // (the client library retries a request after its caller's timeout).
    let (rows_total, _) = digests[0];
    let (low, high) = (present.len() + 1, acknowledged.len() + uncertain + 1);
    assert!((low..=high).contains(&(rows_total as usize)), "{rows_total} rows, not {low}..={high}");
    for (index, digest) in digests.iter().enumerate() {
        assert_eq!(*digest, digests[0], "node {}'s database differs from node 1's", index + 1);
    }
    let learner_file = current_file(&cluster.database_dir(learner), 0).unwrap().unwrap();
    assert!(
        generation(&learner_file) > 1,
        "the learner's database came from a snapshot (a restored file), not from the log: {}",
        learner_file.display()
    );
}
