//! Real clusters: `quorum node` processes on 127.0.0.1, talking TCP, writing real WALs with
//! fsync; driven through the client library and raw sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorum::bench::embedded::free_port_range;
use quorum::client::{Client, ClientOptions, Tail, fetch_snapshot, node_status};
use quorum::core::{Ballot, ClusterId, Message, NodeId, RoleKind, Slot};
use quorum::machine::{Applier, KvStore, SessionLimits};
use quorum::transport::codec::{Body, Encoder, Frame, Hello, PROTOCOL_VERSION, Role, ShardStatus};

const CLUSTER: u64 = 42;
const ELECTION_TIMEOUT_MS: u64 = 300;

/// Nodes of one cluster, as child processes.
struct TestCluster {
    dir: tempfile::TempDir,
    shards: u16,
    voters: BTreeMap<u16, String>,
    learners: BTreeMap<u16, String>,
    /// Learners' `--upstream`.
    upstreams: BTreeMap<u16, u16>,
    /// More flags for every node.
    extra: Vec<String>,
    children: BTreeMap<u16, Child>,
}

fn members(map: &BTreeMap<u16, String>) -> String {
    map.iter().map(|(id, address)| format!("{id}={address}")).collect::<Vec<_>>().join(",")
}

impl TestCluster {
    fn new(voters: u16, learners: u16, shards: u16) -> TestCluster {
        TestCluster::with_upstreams(voters, learners, shards, &[])
    }

    /// A cluster where each `(learner, upstream)` learner subscribes to its upstream.
    fn with_upstreams(
        voters: u16,
        learners: u16,
        shards: u16,
        upstreams: &[(u16, u16)],
    ) -> TestCluster {
        let mut cluster = TestCluster::unstarted(voters, learners, shards, upstreams);
        cluster.start_all();
        cluster
    }

    /// A cluster whose nodes all get `extra` flags.
    fn with_flags(voters: u16, learners: u16, shards: u16, extra: &[&str]) -> TestCluster {
        let mut cluster = TestCluster::unstarted(voters, learners, shards, &[]);
        cluster.extra = extra.iter().map(|flag| (*flag).to_string()).collect();
        cluster.start_all();
        cluster
    }

    fn unstarted(voters: u16, learners: u16, shards: u16, upstreams: &[(u16, u16)]) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = TestCluster {
            dir,
            shards,
            voters: BTreeMap::new(),
            learners: BTreeMap::new(),
            upstreams: upstreams.iter().copied().collect(),
            extra: Vec::new(),
            children: BTreeMap::new(),
        };
        for id in 1..=voters + learners {
            let address = format!("127.0.0.1:{}", free_port_range(shards).unwrap());
            if id <= voters {
                cluster.voters.insert(id, address);
            } else {
                cluster.learners.insert(id, address);
            }
        }
        cluster
    }

    fn start_all(&mut self) {
        let ids: Vec<u16> = self.voters.keys().chain(self.learners.keys()).copied().collect();
        for id in ids {
            self.start(id);
        }
    }

    fn address(&self, id: u16) -> &str {
        self.voters.get(&id).or_else(|| self.learners.get(&id)).unwrap()
    }

    fn log_path(&self, id: u16) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    fn start(&mut self, id: u16) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id)).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_quorum"));
        command
            .arg("node")
            .args(["--id", &id.to_string()])
            .args(["--cluster-id", &CLUSTER.to_string()])
            .args(["--listen", self.address(id)])
            .args(["--peers", &members(&self.voters)])
            .args(["--learners", &members(&self.learners)])
            .args(["--shards", &self.shards.to_string()])
            .args(["--wal-segment-mib", "4"])
            .args(["--election-timeout-ms", &ELECTION_TIMEOUT_MS.to_string()])
            .args(["--heartbeat-interval-ms", "30"])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("data-{id}")))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if self.learners.contains_key(&id) {
            command.arg("--learner");
        }
        if let Some(upstream) = self.upstreams.get(&id) {
            command.args(["--upstream", &upstream.to_string()]);
        }
        command.args(&self.extra);
        self.children.insert(id, command.spawn().unwrap());
    }

    fn kill9(&mut self, id: u16) {
        let mut child = self.children.remove(&id).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self, id: u16) -> std::process::ExitStatus {
        let mut child = self.children.remove(&id).unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: `kill` has no memory effects; the pid is our own live child's.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to node {id}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "node {id} ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn status(&self, id: u16) -> Option<Vec<ShardStatus>> {
        node_status(self.address(id), ClusterId(CLUSTER), true).ok()
    }

    fn client(&self) -> Client {
        let seeds: Vec<String> = self.voters.values().cloned().collect();
        let options = ClientOptions {
            cluster_id: ClusterId(CLUSTER),
            request_timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Client::connect(&seeds, options.clone()) {
                Ok(client) => return client,
                Err(error) if Instant::now() > deadline => panic!("cannot connect: {error}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The leader of `shard` that a majority of live voters agree on, if any.
    fn leader(&self, shard: u16, except: Option<u16>) -> Option<u16> {
        self.voters.keys().filter(|id| Some(**id) != except).find_map(|id| {
            let status = self.status(*id)?;
            (status[usize::from(shard)].role == RoleKind::Leader).then_some(*id)
        })
    }

    /// Waits until every listed node reports the same state on every shard, applied through
    /// at least `commit` slots; returns the statuses.
    fn await_converged(&self, ids: &[u16], timeout: Duration) -> Vec<Vec<ShardStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses: Vec<Option<Vec<ShardStatus>>> =
                ids.iter().map(|id| self.status(*id)).collect();
            if statuses.iter().all(Option::is_some) {
                let statuses: Vec<Vec<ShardStatus>> = statuses.into_iter().flatten().collect();
                let same = (0..usize::from(self.shards)).all(|shard| {
                    let first = &statuses[0][shard];
                    statuses.iter().all(|node| {
                        node[shard].summary == first.summary
                            && node[shard].applied_commands == first.applied_commands
                    })
                });
                if same {
                    return statuses;
                }
                if Instant::now() > deadline {
                    self.dump_logs();
                    panic!("nodes {ids:?} did not converge: {statuses:#?}");
                }
            } else if Instant::now() > deadline {
                self.dump_logs();
                panic!("nodes {ids:?} did not all answer");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until node `id` answers `quorum status` (it listens).
    fn await_up(&self, id: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.status(id).is_none() {
            assert!(Instant::now() < deadline, "node {id} did not come up:\n{}", self.log(id));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self, id: u16) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    fn dump_logs(&self) {
        if let Ok(output) = Command::new("ss").arg("-tanp").output() {
            eprintln!("----- sockets -----\n{}", String::from_utf8_lossy(&output.stdout));
        }
        for id in self.voters.keys().chain(self.learners.keys()) {
            eprintln!("----- node {id} -----\n{}", self.log(*id));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn writes_reach_every_voter_and_the_learner() {
    let mut cluster = TestCluster::new(3, 1, 2);
    let client = cluster.client();
    for i in 0..200u32 {
        client.put(format!("key-{i}").as_bytes(), format!("value-{i}").as_bytes()).unwrap();
    }
    let (swapped, previous) = client.compare_and_set(b"key-7", Some(b"value-7"), b"seven").unwrap();
    assert!(swapped);
    assert_eq!(previous.as_deref(), Some(&b"value-7"[..]));
    client.delete(b"key-8").unwrap();
    assert_eq!(client.get(b"key-8").unwrap(), None);
    assert_eq!(client.get(b"key-7").unwrap().as_deref(), Some(&b"seven"[..]));
    let first = client.append(b"entry one").unwrap();
    let second = client.append(b"entry two").unwrap();
    assert_ne!(first, second, "two appends get two positions");

    let statuses = cluster.await_converged(&[1, 2, 3, 4], Duration::from_secs(20));
    let entries: u64 = statuses[0].iter().map(|shard| shard.summary.entries).sum();
    assert_eq!(entries, 199, "200 keys put, one deleted");
    assert!(statuses[0].iter().all(|shard| shard.applied_commands > 0), "both shards used");
    for shard in &statuses[3] {
        assert_eq!(shard.role, RoleKind::Learner, "node 4 only learns");
    }
    drop(client);

    // SIGTERM stops a node cleanly.
    for id in [4, 3, 2, 1] {
        let status = cluster.terminate(id);
        assert!(status.success(), "node {id} exited with {status}:\n{}", cluster.log(id));
        assert!(cluster.log(id).contains("stopped cleanly"));
    }

    // Restarted alone, a voter and the learner rebuild the same state from their WALs.
    for id in [2, 4] {
        cluster.start(id);
        let deadline = Instant::now() + Duration::from_secs(20);
        let recovered = loop {
            if let Some(status) = cluster.status(id) {
                break status;
            }
            assert!(Instant::now() < deadline, "node {id} did not come back");
            std::thread::sleep(Duration::from_millis(20));
        };
        for (shard, (after, before)) in recovered.iter().zip(&statuses[0]).enumerate() {
            assert_eq!(
                after.summary, before.summary,
                "node {id} shard {shard} state after restart"
            );
        }
    }
}

/// `quorum tail` of node `id`'s merged log: `count` commands as JSON lines.
fn tail(cluster: &TestCluster, id: u16, from: u64, count: usize) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_quorum"))
        .arg("tail")
        .args(["--cluster", cluster.address(id)])
        .args(["--cluster-id", &CLUSTER.to_string()])
        .args(["--from", &from.to_string()])
        .args(["--count", &count.to_string()])
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The output of a tail, or a failure with its error output after `timeout`.
fn tail_output(cluster: &TestCluster, child: Child, timeout: Duration) -> String {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // Read while it runs: its output is larger than a pipe holds.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output().unwrap()));
    let output = match finished.recv_timeout(timeout) {
        Ok(output) => output,
        Err(_) => {
            // SAFETY: `kill` has no memory effects; the pid is our own child's.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let output = finished.recv().unwrap();
            cluster.dump_logs();
            let ids = cluster.voters.keys().chain(cluster.learners.keys());
            let statuses: Vec<_> = ids.map(|id| (id, cluster.status(*id))).collect();
            panic!(
                "tail did not finish; it printed {} lines, the last {:?}; stderr: {}; nodes: {statuses:#?}",
                output.stdout.split(|b| *b == b'\n').count(),
                String::from_utf8_lossy(&output.stdout).lines().last(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    };
    assert!(output.status.success(), "tail failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn learners_relay_and_every_node_merges_the_same_log() {
    // Node 5 learns through node 4; node 4 from a follower.
    let cluster = TestCluster::with_upstreams(3, 2, 2, &[(5, 4)]);
    let client = cluster.client();
    const WRITES: usize = 400;
    // One tail follows node 5 from before the writes: its log, then live.
    cluster.await_up(5, Duration::from_secs(20));
    let live = tail(&cluster, 5, 0, WRITES);
    for i in 0..WRITES {
        if i % 4 == 3 {
            client.append(format!("entry-{i}").as_bytes()).unwrap();
        } else {
            client.put(format!("key-{i}").as_bytes(), format!("value-{i}").as_bytes()).unwrap();
        }
    }
    let live = tail_output(&cluster, live, Duration::from_secs(30));
    assert_eq!(live.lines().count(), WRITES);
    // Every node's merged log, read afterwards from its log, is the same byte for byte.
    for id in 1..=5 {
        let merged = tail_output(&cluster, tail(&cluster, id, 0, WRITES), Duration::from_secs(30));
        assert_eq!(merged, live, "node {id}'s merged log differs from node 5's");
    }
    // Positions rise, both shards take part, and every write is there once.
    let lines: Vec<serde_json::Value> =
        live.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let positions: Vec<(u64, u64)> = lines
        .iter()
        .map(|line| (line["position"].as_u64().unwrap(), line["index"].as_u64().unwrap()))
        .collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "global order");
    for shard in 0..2 {
        assert!(lines.iter().any(|line| line["shard"] == shard), "shard {shard} in the log");
    }
    let ids: std::collections::BTreeSet<(u64, u64)> = lines
        .iter()
        .map(|line| (line["client"].as_u64().unwrap(), line["sequence"].as_u64().unwrap()))
        .collect();
    assert_eq!(ids.len(), WRITES, "each write once");
    // From a position in the middle, a tail starts exactly there.
    let (middle, _) = positions[WRITES / 2];
    let first = positions.iter().position(|(position, _)| *position == middle).unwrap();
    let rest =
        tail_output(&cluster, tail(&cluster, 3, middle, WRITES - first), Duration::from_secs(30));
    assert_eq!(rest.lines().collect::<Vec<_>>(), live.lines().skip(first).collect::<Vec<_>>());
    // Node 4 relayed to node 5: it sent committed runs; node 5 sent none.
    let relay: u64 = cluster.status(4).unwrap().iter().map(|shard| shard.chosen_bytes).sum();
    let leaf: u64 = cluster.status(5).unwrap().iter().map(|shard| shard.chosen_bytes).sum();
    assert!(relay > 0 && leaf == 0, "relay sent {relay} bytes of runs, leaf {leaf}");
}

#[test]
fn slots_no_node_keeps_in_memory_come_from_the_wal() {
    // Every replica keeps only 16 committed slots in memory (idle shards skip, so the logs
    // run far past the writes).
    let mut cluster = TestCluster::unstarted(3, 1, 2, &[]);
    cluster.extra = vec!["--retain-slots".into(), "16".into()];
    for id in 1..=3 {
        cluster.start(id);
    }
    let client = cluster.client();
    const WRITES: usize = 300;
    for i in 0..WRITES {
        client.put(format!("key-{i}").as_bytes(), format!("value-{i}").as_bytes()).unwrap();
    }
    // A learner that joins now gets the whole log, from the voters' WALs.
    cluster.start(4);
    let statuses = cluster.await_converged(&[1, 2, 3, 4], Duration::from_secs(30));
    assert_eq!(statuses[3].iter().map(|shard| shard.summary.entries).sum::<u64>(), WRITES as u64);
    assert_eq!(
        statuses[3].iter().map(|shard| &shard.summary).collect::<Vec<_>>(),
        statuses[0].iter().map(|shard| &shard.summary).collect::<Vec<_>>(),
        "the learner's state machines equal a voter's"
    );
    // Tails from the start read each node's WAL; all agree and hold every write once.
    let first = tail_output(&cluster, tail(&cluster, 1, 0, WRITES), Duration::from_secs(30));
    assert_eq!(first.lines().count(), WRITES);
    for id in 2..=4 {
        let merged = tail_output(&cluster, tail(&cluster, id, 0, WRITES), Duration::from_secs(30));
        assert_eq!(merged, first, "node {id}'s merged log differs from node 1's");
    }
    let keys: std::collections::BTreeSet<String> = first
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|line| line["sequence"].to_string())
        .collect();
    assert_eq!(keys.len(), WRITES, "each write once");
}

/// The WAL segment files of node `id`'s shard 0, by number.
fn wal_segments(cluster: &TestCluster, id: u16) -> Vec<u64> {
    let dir = cluster.dir.path().join(format!("data-{id}")).join("shard-0");
    let mut numbers: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

#[test]
fn snapshots_bound_the_wal_and_bring_a_returning_voter_back() {
    // 4 MiB segments; a snapshot every 4 MiB of log; 64 committed slots in memory (the
    // segments their batches lie in are kept too); snapshots sent in 256 KiB pieces (the
    // 3.3 MB snapshot below takes thirteen).
    let mut cluster = TestCluster::unstarted(3, 0, 1, &[]);
    cluster.extra =
        ["--snapshot-every-mib", "4", "--retain-slots", "64", "--snapshot-piece-kib", "256"]
            .map(String::from)
            .to_vec();
    for id in 1..=3 {
        cluster.start(id);
    }
    let client = cluster.client();
    client.put(b"before", b"node 3 stops").unwrap();
    cluster.kill9(3);
    // About 26 MB of values while node 3 is away: each log passes six segments.
    let value = vec![b'v'; 32 * 1024];
    for i in 0..800 {
        client.put(format!("key-{}", i % 100).as_bytes(), &value).unwrap();
    }
    client.put(b"after", b"done").unwrap();
    let segments = wal_segments(&cluster, 1);
    assert!(segments[0] >= 3, "node 1 released its log's prefix: {segments:?}");
    assert!(segments.len() <= 5, "node 1 keeps at most five segments: {segments:?}");
    // Node 3 comes back; the others no longer have what it lacks in their logs, so it
    // installs a snapshot and goes on from there.
    cluster.start(3);
    let statuses = cluster.await_converged(&[1, 2, 3], Duration::from_secs(30));
    assert_eq!(statuses[2][0].summary, statuses[0][0].summary, "node 3's state equals node 1's");
    assert_eq!(statuses[2][0].summary.entries, 102);
    // A reader fetches node 1's snapshot (in thirteen pieces), restores the state it holds,
    // and could tail from its slot.
    let options = ClientOptions { cluster_id: ClusterId(CLUSTER), ..Default::default() };
    let fetched_path = cluster.dir.path().join("fetched.snapshot");
    let snapshot = fetch_snapshot(cluster.address(1), &options, 0, &fetched_path).unwrap().unwrap();
    assert!(snapshot.bytes > 12 * 256 * 1024, "{} bytes", snapshot.bytes);
    assert_eq!(std::fs::metadata(&fetched_path).unwrap().len(), snapshot.bytes);
    assert!(snapshot.header.slot.0 > 0 && snapshot.header.slot.0 <= statuses[0][0].commit_index.0);
    let mut file = std::fs::File::open(&fetched_path).unwrap();
    let limits = SessionLimits::with_replies_max(64);
    let (_, _, restored) = quorum::read_snapshot(&mut file, (ClusterId(CLUSTER), 0), |body| {
        Applier::<KvStore>::restore(body, limits)
    })
    .unwrap();
    assert_eq!(restored.machine().get(b"before"), Some(&b"node 3 stops"[..]));
    assert_eq!(restored.machine().get(b"key-7").map(<[u8]>::len), Some(32 * 1024));
    // The same from the command line, to a file: the bytes the library fetched.
    let backup = cluster.dir.path().join("shard-0.snapshot");
    let output = Command::new(env!("CARGO_BIN_EXE_quorum"))
        .args(["snapshot", "--node", cluster.address(1), "--cluster-id", &CLUSTER.to_string()])
        .arg("--out")
        .arg(&backup)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("snapshot at slot {}", snapshot.header.slot.0)), "{stdout}");
    assert_eq!(std::fs::read(&backup).unwrap(), std::fs::read(&fetched_path).unwrap());
    // A tail from slot 0 is told where the log now starts, instead of waiting forever.
    let child = tail(&cluster, 1, 0, 10);
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("released behind a snapshot"), "{stderr}");
}

#[test]
fn total_order_apply_gives_every_node_one_state_machine_in_one_order() {
    let mut cluster = TestCluster::with_flags(3, 1, 2, &["--apply", "total"]);
    let client = Arc::new(cluster.client());
    // Four writers on shared keys of both shards, with compare-and-set counters.
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..100u32 {
                    let key = format!("key-{}", i % 10);
                    client.put(key.as_bytes(), format!("{writer}-{i}").as_bytes()).unwrap();
                    client.append(format!("entry {writer}-{i}").as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    assert_eq!(client.get(b"key-3").unwrap().map(|v| v.len() > 2), Some(true));
    let statuses = cluster.await_converged(&[1, 2, 3, 4], Duration::from_secs(20));
    for (id, node) in statuses.iter().enumerate() {
        // One state machine: every shard of a node reports it.
        assert!(node.iter().all(|shard| shard.summary == node[0].summary), "node {}", id + 1);
        assert_eq!(node[0].summary.entries, 10, "ten keys");
        let applied: u64 = node.iter().map(|shard| shard.applied_commands).sum();
        assert_eq!(
            applied, 800,
            "800 writes once each (the read is a query: answered, not applied)"
        );
    }
    drop(client);
    // With one state machine for the node, shards take no snapshots: there is none to fetch.
    let options = ClientOptions { cluster_id: ClusterId(CLUSTER), ..Default::default() };
    let none = cluster.dir.path().join("none.snapshot");
    assert!(fetch_snapshot(cluster.address(1), &options, 1, &none).unwrap().is_none());
    assert!(!none.exists());
    // A voter killed and restarted applies the same merged order again from its log.
    cluster.kill9(2);
    cluster.start(2);
    let after = cluster.await_converged(&[1, 2], Duration::from_secs(20));
    assert_eq!(after[1][0].summary, statuses[0][0].summary);
}

#[test]
fn killing_a_leader_elects_another_and_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::new(3, 0, 2);
    let client = Arc::new(cluster.client());
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (client, acknowledged, stop) = (client.clone(), acknowledged.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let (key, value) = (format!("w{writer}-{i}"), format!("v{writer}-{i}"));
                    client.put(key.as_bytes(), value.as_bytes()).unwrap();
                    acknowledged.lock().unwrap().push((key, value));
                    i += 1;
                }
            })
        })
        .collect();
    // A counter advanced by compare-and-set: a retry applied twice would answer `false`.
    let counter = {
        let (client, stop) = (client.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut value = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let expected = (value > 0).then(|| value.to_string());
                let next = (value + 1).to_string();
                let (swapped, previous) = client
                    .compare_and_set(
                        b"counter",
                        expected.as_deref().map(str::as_bytes),
                        next.as_bytes(),
                    )
                    .unwrap();
                assert!(swapped, "increment {value} applied twice or lost: key held {previous:?}");
                value += 1;
            }
            value
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    // The victim leads the counter's shard, so its increments live through the failover.
    let shard = quorum::machine::shard_for_key(b"counter", 2) as u16;
    // (Asked again for a while: under load a status answer may be slow, or an election run.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let victim = loop {
        match cluster.leader(shard, None) {
            Some(leader) => break leader,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("shard {shard} has no leader 10 s into the load"),
        }
    };
    // A tail of the victim's merged log: it must take up again where it stopped.
    let tailed = Arc::new(Mutex::new(Vec::new()));
    {
        let options = ClientOptions { cluster_id: ClusterId(CLUSTER), ..Default::default() };
        let mut tail = Tail::subscribe(cluster.address(victim), &options, 0, None).unwrap();
        let tailed = tailed.clone();
        std::thread::spawn(move || {
            while let Ok(batch) = tail.next_batch() {
                tailed.lock().unwrap().push((batch.position, batch.batch));
            }
        });
    }
    let before = acknowledged.lock().unwrap().len();
    cluster.kill9(victim);
    let tailed_at_kill = tailed.lock().unwrap().len();
    let killed_at = Instant::now();
    let new_leader = loop {
        if let Some(leader) = cluster.leader(shard, Some(victim)) {
            break leader;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(10), "no new leader");
        std::thread::sleep(Duration::from_millis(5));
    };
    let elected_in = killed_at.elapsed();
    let bound = Duration::from_millis(2 * ELECTION_TIMEOUT_MS) + Duration::from_secs(1);
    assert_ne!(new_leader, victim);
    assert!(elected_in <= bound, "new leader after {elected_in:?}, bound {bound:?}");
    eprintln!("killed leader {victim}; node {new_leader} leads shard {shard} after {elected_in:?}");

    // Writes go on through the new leader.
    let deadline = Instant::now() + Duration::from_secs(10);
    while acknowledged.lock().unwrap().len() < before + 200 {
        assert!(Instant::now() < deadline, "writes stalled after the failover");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The killed node comes back, recovers from its WAL and catches up.
    cluster.start(victim);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.join().unwrap();
    }
    let increments = counter.join().unwrap();
    assert_eq!(client.get(b"counter").unwrap(), Some(increments.to_string().into_bytes()));
    cluster.await_converged(&[1, 2, 3], Duration::from_secs(30));

    let acknowledged = acknowledged.lock().unwrap();
    assert!(acknowledged.len() > before + 200);
    for (key, value) in acknowledged.iter() {
        let read = client.get(key.as_bytes()).unwrap();
        assert_eq!(read.as_deref(), Some(value.as_bytes()), "acknowledged write {key} lost");
    }
    assert!(cluster.log(victim).contains("shard running"), "the killed node restarted");

    // The victim's tail went on after the restart: its batches are the merged log, without a
    // gap or a repeat, as a fresh tail of the new leader reads it.
    std::thread::sleep(Duration::from_millis(500));
    let tailed = tailed.lock().unwrap().clone();
    assert!(
        tailed.len() > tailed_at_kill + 10,
        "the tail saw {} batches, {tailed_at_kill} before the kill",
        tailed.len()
    );
    let options = ClientOptions { cluster_id: ClusterId(CLUSTER), ..Default::default() };
    let mut fresh = Tail::subscribe(cluster.address(new_leader), &options, 0, None).unwrap();
    for (index, (position, batch)) in tailed.iter().enumerate() {
        let other = fresh.next_batch().unwrap();
        assert_eq!((other.position, &other.batch), (*position, batch), "batch {index}");
    }
}

/// Sends `bytes` on a fresh connection to shard 0 of `address` and returns whether the node
/// closed it within a few seconds.
fn closed_after(address: &str, bytes: &[u8], then_close_write: bool) -> bool {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    stream.write_all(bytes).unwrap();
    if then_close_write {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue, // a hello reply with a refusal, then the close
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn bad_input_closes_that_connection_and_the_node_serves_on() {
    let cluster = TestCluster::new(3, 0, 1);
    let client = cluster.client();
    client.put(b"before", b"1").unwrap();
    let address = cluster.address(1).to_string();

    // Random bytes.
    let mut garbage = [0u8; 512];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in &mut garbage {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    garbage[..4].copy_from_slice(&200u32.to_le_bytes());
    assert!(closed_after(&address, &garbage, false), "random bytes");
    // A length prefix far above the frame limit: refused before allocating.
    assert!(closed_after(&address, &u32::MAX.to_le_bytes(), false), "oversized length");
    // A hello from another cluster.
    let hello = |cluster_id: u64| {
        Encoder::default().encode_to_vec(&Frame {
            cluster_id: ClusterId(cluster_id),
            from: NodeId(2),
            shard: 0,
            body: Body::Hello(Hello { version: PROTOCOL_VERSION, role: Role::Peer }),
        })
    };
    assert!(closed_after(&address, &hello(CLUSTER + 1), false), "wrong cluster id");
    // A frame cut short, then the sender goes away.
    let good = hello(CLUSTER);
    assert!(closed_after(&address, &good[..good.len() / 2], true), "truncated frame");
    // Well-formed frames with values no node sends (issue #22): a client subscribing from
    // near the last slot (this panicked the shard), a peer naming round u64::MAX.
    let frames = |from: NodeId, role: Role, message: Message| {
        let frame = |body| Frame { cluster_id: ClusterId(CLUSTER), from, shard: 0, body };
        let mut bytes = Encoder::default()
            .encode_to_vec(&frame(Body::Hello(Hello { version: PROTOCOL_VERSION, role })));
        bytes.extend(Encoder::default().encode_to_vec(&frame(Body::Peer(message))));
        bytes
    };
    let near_max = Message::Subscribe { from_slot: Slot(18_446_744_073_709_551_000) };
    assert!(closed_after(&address, &frames(NodeId(0), Role::Client(77), near_max), false));
    let promised = Ballot::new(u64::MAX, NodeId(2));
    let rejected = Message::Rejected { ballot: Ballot::ZERO, promised };
    assert!(closed_after(&address, &frames(NodeId(2), Role::Peer, rejected), false));
    // The user's reproduction: a clear error, and the node serves on.
    let tail = Command::new(env!("CARGO_BIN_EXE_quorum"))
        .args(["tail", "--cluster", &address, "--shard", "0"])
        .args(["--from", "18446744073709551000", "--count", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&tail.stderr);
    assert_eq!(tail.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("beyond the last slot a log may reach"), "{stderr}");

    // The node closes the connection, then logs why: give the log a moment.
    for reason in [
        "bad frame: frame of 200 bytes",
        "bad frame: frame of 4294967295 bytes exceeds the limit",
        &format!("cluster id {} refused", CLUSTER + 1),
        "closed in the middle of a frame",
        "bad frame: invalid frame: subscribe refused: a slot beyond the last one",
        "bad frame: invalid frame: rejected refused: a round beyond the last one",
    ] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cluster.log(1).contains(reason) {
            assert!(Instant::now() < deadline, "no logged reason `{reason}`:\n{}", cluster.log(1));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Everyone else is still served.
    client.put(b"after", b"2").unwrap();
    assert_eq!(client.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(client.get(b"after").unwrap().as_deref(), Some(&b"2"[..]));
    cluster.await_converged(&[1, 2, 3], Duration::from_secs(10));
}

/// Sends SIGSTOP or SIGCONT to node `id`.
fn signal(cluster: &TestCluster, id: u16, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(cluster.children[&id].id()).unwrap();
    // SAFETY: `kill` has no memory effects; the pid is our own live child's.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal {signal} to node {id}");
}

fn reading(consistency: quorum::client::Consistency) -> quorum::client::ReadOptions {
    quorum::client::ReadOptions { consistency, ..quorum::client::ReadOptions::default() }
}

#[test]
fn a_leader_cut_off_from_its_voters_stops_answering_reads_within_the_election_timeout() {
    use quorum::client::Consistency;
    let cluster = TestCluster::with_flags(3, 0, 1, &["--read-lease"]);
    let client = cluster.client();
    client.put(b"k", b"v").unwrap();
    let leader = loop {
        if let Some(leader) = cluster.leader(0, None) {
            break leader;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Lease reads are answered once the leader has held its lease an election timeout.
    std::thread::sleep(Duration::from_millis(2 * ELECTION_TIMEOUT_MS));
    for consistency in [Consistency::Linearizable, Consistency::Lease] {
        let read = client.get_with(b"k", reading(consistency)).unwrap();
        assert_eq!(read.value.as_deref(), Some(&b"v"[..]), "{consistency:?}");
    }
    // Readers that keep asking the leader, each read at most 400 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let last_success: Arc<Mutex<BTreeMap<&str, Instant>>> = Arc::default();
    let readers: Vec<_> =
        [("linearizable", Consistency::Linearizable), ("lease", Consistency::Lease)]
            .into_iter()
            .map(|(name, consistency)| {
                let options = ClientOptions {
                    cluster_id: ClusterId(CLUSTER),
                    request_timeout: Duration::from_millis(400),
                    ..ClientOptions::default()
                };
                let reader =
                    Client::connect(&[cluster.address(leader).to_string()], options).unwrap();
                let (stop, last_success) = (stop.clone(), last_success.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if reader.get_with(b"k", reading(consistency)).is_ok() {
                            last_success.lock().unwrap().insert(name, Instant::now());
                        }
                    }
                })
            })
            .collect();
    std::thread::sleep(Duration::from_millis(200));
    let others: Vec<u16> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let cut = Instant::now();
    for id in &others {
        signal(&cluster, *id, libc::SIGSTOP);
    }
    std::thread::sleep(Duration::from_millis(4 * ELECTION_TIMEOUT_MS));
    stop.store(true, Ordering::SeqCst);
    let last = last_success.lock().unwrap().clone();
    for id in &others {
        signal(&cluster, *id, libc::SIGCONT);
    }
    for reader in readers {
        reader.join().unwrap();
    }
    let after_cut = |name: &str| last.get(name).map(|at| at.saturating_duration_since(cut));
    // A linearizable read needs a round its voters ack: none is confirmed after the cut but
    // one already under way (an ack sent before the stop).
    let linearizable = after_cut("linearizable").unwrap();
    assert!(linearizable < Duration::from_millis(50), "linearizable {linearizable:?} after");
    // A lease read is answered until the lease ends: shorter than an election timeout.
    let lease = after_cut("lease").unwrap();
    eprintln!("last read answered after the cut: linearizable {linearizable:?}, lease {lease:?}");
    assert!(
        lease < Duration::from_millis(ELECTION_TIMEOUT_MS),
        "a lease read answered {lease:?} after the cut"
    );
}

#[test]
fn a_follower_read_sees_every_write_acknowledged_at_the_leader_and_gets_leave_the_wal_alone() {
    use quorum::client::Consistency;
    let cluster = TestCluster::new(3, 0, 2);
    let writer = cluster.client();
    writer.put(b"warm", b"up").unwrap();
    let leader = loop {
        if let Some(leader) = cluster.leader(0, None) {
            break leader;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let options = ClientOptions {
        cluster_id: ClusterId(CLUSTER),
        request_timeout: Duration::from_secs(20),
        read_member: Some(NodeId(follower)),
        ..ClientOptions::default()
    };
    let reader = Client::connect(&[cluster.address(follower).to_string()], options).unwrap();
    let mut stale_slots: BTreeMap<u16, Slot> = BTreeMap::new();
    for i in 0..300u32 {
        let key = format!("key-{}", i % 7);
        writer.put(key.as_bytes(), i.to_string().as_bytes()).unwrap();
        let read = reader.get_with(key.as_bytes(), reading(Consistency::Follower)).unwrap();
        assert_eq!(read.value, Some(i.to_string().into_bytes()), "follower read {i}");
        // A stale read of the same member: no older than what the follower read reflected.
        let stale = reader.get_with(key.as_bytes(), reading(Consistency::Stale)).unwrap();
        assert_eq!(stale.value, Some(i.to_string().into_bytes()), "stale read {i}");
        let previous = stale_slots.insert(stale.shard, stale.slot).unwrap_or(Slot(0));
        assert!(stale.slot >= previous && stale.slot >= read.slot, "stale reads go forward");
    }
    // 10,000 gets in every consistency write nothing: no sync anywhere, no commit.
    // Converged, and every lazily persisted commit position written (one tick after it is
    // learned from a heartbeat).
    cluster.await_converged(&[1, 2, 3], Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let before = cluster.await_converged(&[1, 2, 3], Duration::from_secs(20));
    for i in 0..10_000u32 {
        let consistency = [
            Consistency::Linearizable,
            Consistency::Lease,
            Consistency::Follower,
            Consistency::Stale,
        ][(i % 4) as usize];
        let client = if i % 2 == 0 { &writer } else { &reader };
        let key = format!("key-{}", i % 7);
        assert!(client.get_with(key.as_bytes(), reading(consistency)).unwrap().value.is_some());
    }
    let after = cluster.await_converged(&[1, 2, 3], Duration::from_secs(20));
    for (node, (before, after)) in before.iter().zip(&after).enumerate() {
        for (shard, (before, after)) in before.iter().zip(after).enumerate() {
            assert_eq!(before.syncs, after.syncs, "node {} shard {shard} synced", node + 1);
            assert_eq!(before.commit_index, after.commit_index, "node {} shard {shard}", node + 1);
        }
    }
    // The command line reads too, and says where a stale read stands.
    let output = Command::new(env!("CARGO_BIN_EXE_quorum"))
        .args(["kv", "--cluster", cluster.address(follower), "--cluster-id", &CLUSTER.to_string()])
        .args(["get", "key-3", "--consistency", "stale", "--member", &follower.to_string()])
        .args(["--max-staleness", "10s", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(line["value"], "297", "{line}");
    assert_eq!(line["consistency"], "stale");
    assert!(line["slot"].as_u64().unwrap() > 0, "{line}");
}
