//! Disk faults on real `quorum node` processes (issue #21, points 2 and 3): three nodes, each
//! data directory on its own powerfs mount (powerfs/: the FUSE file system of the power-loss
//! test, which injects faults on demand), under concurrent writers.
//!
//! - **A failed sync is fatal** (`a_failed_sync_stops_the_node_and_loses_no_acknowledged_write`):
//!   the leader's next WAL `fdatasync` fails with EIO (and the writes it covered are lost to
//!   the disk, as a failed writeback leaves them). The leader must exit non-zero at once,
//!   naming the segment and the bytes; the other two must go on serving; restarted on the same
//!   directory, it must rejoin. Then a follower's snapshot `fsync` fails: it must exit too, and
//!   rejoin. Every acknowledged write is read back at the end.
//! - **A full disk is survivable** (`a_full_disk_refuses_writes_and_resumes_without_a_restart`):
//!   a follower's disk fills (its WAL cannot make its next segment): the cluster goes on, the
//!   follower pauses, and catches up by itself once the space is back; then the leader's disk
//!   fills: clients get the out-of-space error, no node exits, and once the space is back
//!   writes succeed again, no restart. Every acknowledged write is read back at the end.
//!
//! Needs `/dev/fuse`, `fusermount3` and the right to mount (root); otherwise each test prints
//! `skipped: <reason>` and returns. docs/disk-faults.md has the design.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorum::bench::embedded::free_port_range;
use quorum::client::{Client, ClientError, ClientOptions, node_status};
use quorum::core::{ClusterId, RoleKind};
use quorum_powerfs::{PowerFs, unavailable};

const CLUSTER: u64 = 78;
const NODES: usize = 3;
const WRITERS: usize = 6;
const VALUE_BYTES: usize = 300;
const SEGMENT_BYTES: u64 = 1 << 20;

/// The nodes on this machine's two cores: one scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Node {
    address: String,
    fs: PowerFs,
    child: Option<Child>,
    log: PathBuf,
}

struct Cluster {
    nodes: Vec<Node>,
    peers: String,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Three mounts and three nodes started with `args`, or why not (the test then skips).
    fn start(args: &[&str]) -> Result<Cluster, String> {
        if let Some(reason) = unavailable() {
            return Err(reason);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for index in 0..NODES {
            let mountpoint = dir.path().join(format!("mnt-{}", index + 1));
            std::fs::create_dir(&mountpoint).unwrap();
            let fs = PowerFs::mount(&mountpoint, Duration::from_millis(1)).map_err(|error| {
                format!("cannot mount FUSE at {}: {error}", mountpoint.display())
            })?;
            let address = format!("127.0.0.1:{}", free_port_range(1).unwrap());
            let log = dir.path().join(format!("node-{}.log", index + 1));
            nodes.push(Node { address, fs, child: None, log });
        }
        let peers = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| format!("{}={}", index + 1, node.address))
            .collect::<Vec<_>>()
            .join(",");
        let args = args.iter().map(|arg| (*arg).to_string()).collect();
        let mut cluster = Cluster { nodes, peers, args, _dir: dir };
        for index in 0..NODES {
            cluster.spawn(index);
        }
        Ok(cluster)
    }

    fn spawn(&mut self, index: usize) {
        let node = &self.nodes[index];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_quorum"))
            .arg("node")
            .args(["--id", &(index + 1).to_string()])
            .args(["--cluster-id", &CLUSTER.to_string()])
            .args(["--listen", &node.address])
            .args(["--peers", &self.peers])
            .args(["--shards", "1"])
            .args(["--wal-segment-mib", &(SEGMENT_BYTES >> 20).to_string()])
            .args(["--election-timeout-ms", "300", "--heartbeat-interval-ms", "30"])
            .args(&self.args)
            .arg("--data-dir")
            .arg(node.fs.path().join("data"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[index].child = Some(child);
    }

    fn client(&self, timeout: Duration) -> Result<Client, String> {
        let seeds: Vec<String> = self.nodes.iter().map(|node| node.address.clone()).collect();
        let options = ClientOptions {
            cluster_id: ClusterId(CLUSTER),
            request_timeout: timeout,
            connect_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        };
        Client::connect(&seeds, options).map_err(|error| error.to_string())
    }

    /// Waits until a put goes through; panics with the last error after `timeout`.
    fn await_serving(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.client(Duration::from_secs(3)) {
                Ok(client) => match client.put(b"serving", b"yes") {
                    Ok(()) => return,
                    Err(error) => last = error.to_string(),
                },
                Err(error) => last = error,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster does not serve after {timeout:?}: {last}");
    }

    /// The node a majority of the running nodes name as the leader, if it says so itself.
    fn leader(&self) -> Option<usize> {
        let statuses: Vec<_> = self
            .nodes
            .iter()
            .map(|node| node_status(&node.address, ClusterId(CLUSTER), false).ok())
            .collect();
        for (index, status) in statuses.iter().enumerate() {
            let Some(status) = status else { continue };
            let named = statuses
                .iter()
                .flatten()
                .filter(|other| other[0].leader.map(|id| usize::from(id.0)) == Some(index + 1))
                .count();
            if status[0].role == RoleKind::Leader && named * 2 > NODES {
                return Some(index);
            }
        }
        None
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

    fn commit_index(&self, index: usize) -> Option<u64> {
        let status = node_status(&self.nodes[index].address, ClusterId(CLUSTER), false).ok()?;
        Some(status[0].commit_index.0)
    }

    /// Waits until node `index` has committed as far as `leader` had when the wait began.
    fn await_caught_up(&self, index: usize, leader: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let target = loop {
            if let Some(commit) = self.commit_index(leader) {
                break commit;
            }
            assert!(Instant::now() < deadline, "the leader does not answer its status");
            std::thread::sleep(Duration::from_millis(50));
        };
        loop {
            let commit = self.commit_index(index);
            if commit.is_some_and(|commit| commit >= target) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} at commit {commit:?}, not caught up to {target} after {timeout:?}",
                index + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self, index: usize) -> String {
        std::fs::read_to_string(&self.nodes[index].log).unwrap_or_default()
    }

    /// The first line of node `index`'s log holding `needle`, waiting up to `timeout`.
    fn await_log(&self, index: usize, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log_text(index).lines().find(|line| line.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "node {} logged no `{needle}` in {timeout:?}:\n{}",
                index + 1,
                self.tail(index)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn tail(&self, index: usize) -> String {
        let log = self.log_text(index);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// How node `index` exited, if it did.
    fn exited(&mut self, index: usize) -> Option<ExitStatus> {
        self.nodes[index].child.as_mut().and_then(|child| child.try_wait().unwrap())
    }

    fn assert_none_exited(&mut self, when: &str) {
        for index in 0..NODES {
            if let Some(status) = self.exited(index) {
                panic!("{when}: node {} exited ({status}):\n{}", index + 1, self.tail(index));
            }
        }
    }

    /// Waits for node `index` to exit; its status.
    fn await_exit(&mut self, index: usize, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited(index) {
                self.nodes[index].child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {} still runs {timeout:?} after the fault:\n{}",
                index + 1,
                self.tail(index)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// What the writers saw, live.
#[derive(Debug, Default)]
struct Seen {
    acked: Vec<(String, String)>,
    out_of_space: usize,
    /// One out-of-space error as the caller reads it.
    out_of_space_message: Option<String>,
    other_errors: usize,
}

struct Writers {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    /// Writers putting unique keys until stopped.
    fn start(cluster: &Cluster) -> Writers {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..WRITERS)
            .map(|writer| {
                let client = cluster.client(Duration::from_secs(3)).unwrap();
                let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let key = format!("w{writer}-{n}");
                        let mut value = format!("{key}/");
                        value.extend(std::iter::repeat_n('v', VALUE_BYTES - value.len()));
                        let result = client.put(key.as_bytes(), value.as_bytes());
                        let failed = result.is_err();
                        {
                            let mut seen = seen.lock().unwrap();
                            match result {
                                Ok(()) => seen.acked.push((key, value)),
                                Err(error @ ClientError::OutOfSpace(_)) => {
                                    seen.out_of_space += 1;
                                    seen.out_of_space_message.get_or_insert(error.to_string());
                                }
                                Err(_) => seen.other_errors += 1,
                            }
                        }
                        if failed {
                            // As a real client would, towards a refusing cluster.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        Writers { seen, stop, threads }
    }

    fn acked(&self) -> usize {
        self.seen.lock().unwrap().acked.len()
    }

    /// Waits until `more` writes beyond those acknowledged now are acknowledged.
    fn await_acked(&self, more: usize, timeout: Duration, what: &str) {
        let target = self.acked() + more;
        let deadline = Instant::now() + timeout;
        while self.acked() < target {
            assert!(Instant::now() < deadline, "{what}: not {more} more writes in {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

/// Reads every acknowledged write back (linearizably); returns the ones missing or changed.
fn check(cluster: &Cluster, writes: &[(String, String)]) -> Vec<(String, Option<String>)> {
    let chunks: Vec<Vec<(String, String)>> =
        writes.chunks(writes.len().div_ceil(WRITERS).max(1)).map(<[_]>::to_vec).collect();
    let readers: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let client = cluster.client(Duration::from_secs(10)).unwrap();
            std::thread::spawn(move || {
                let mut lost = Vec::new();
                for (key, value) in chunk {
                    let read = client.get(key.as_bytes()).unwrap();
                    let read = read.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
                    if read.as_deref() != Some(value.as_str()) {
                        lost.push((key, read));
                    }
                }
                lost
            })
        })
        .collect();
    readers.into_iter().flat_map(|reader| reader.join().unwrap()).collect()
}

fn is_wal_segment(path: &str) -> bool {
    path.contains("shard-0/") && path.ends_with(".wal")
}

#[test]
fn a_failed_sync_stops_the_node_and_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = Instant::now();
    let args = ["--snapshot-every-mib", "1", "--retain-slots", "64"];
    let mut cluster = match Cluster::start(&args) {
        Ok(cluster) => cluster,
        Err(reason) => return println!("skipped: {reason}"),
    };
    cluster.await_serving(Duration::from_secs(30));
    let writers = Writers::start(&cluster);
    writers.await_acked(200, Duration::from_secs(20), "before the fault");

    // (a) A WAL sync fails: the leader's, a follower's, the leader's again.
    let mut acked_while_down = 0;
    for round in 0..3 {
        let leader = cluster.await_leader(Duration::from_secs(10));
        let victim = if round == 1 { (leader + 1) % NODES } else { leader };
        let before = cluster.nodes[victim].fs.counters();
        cluster.nodes[victim].fs.fail_syncs(1, is_wal_segment);
        let acked_at_fault = writers.acked();
        let status = cluster.await_exit(victim, Duration::from_secs(10));
        assert!(!status.success(), "a node whose sync failed exits in error: {status}");
        let counters = cluster.nodes[victim].fs.counters();
        assert_eq!(counters.syncs_failed, before.syncs_failed + 1, "{counters:?}");
        let line = cluster
            .log_text(victim)
            .lines()
            .rfind(|line| line.contains("fdatasync failed on"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no sync error logged:\n{}", cluster.tail(victim)));
        assert!(
            line.contains(".wal") && line.contains("bytes ") && line.contains("never retried"),
            "{line}"
        );
        let role = if victim == leader { "leader" } else { "follower" };
        println!("node {} ({role}) exited ({status}) after its failed sync: {line}", victim + 1);
        // The other two go on serving.
        writers.await_acked(200, Duration::from_secs(30), "with the failed node down");
        acked_while_down += writers.acked() - acked_at_fault;
        // Restarted on the same directory (what its disk holds: the failed sync's writes
        // were lost to it), it rejoins.
        cluster.spawn(victim);
        let new_leader = cluster.await_leader(Duration::from_secs(10));
        cluster.await_caught_up(victim, new_leader, Duration::from_secs(30));
        cluster.assert_none_exited("after the restart");
    }

    // (b) A follower's next snapshot sync fails.
    let leader = cluster.await_leader(Duration::from_secs(10));
    let follower = (leader + 2) % NODES;
    let failed_before = cluster.nodes[follower].fs.counters().syncs_failed;
    // A snapshot is streamed into `snapshot.{n}.new`, then synced and renamed into place.
    cluster.nodes[follower].fs.fail_syncs(1, |path| {
        let name = path.rsplit('/').next().unwrap_or(path);
        name.starts_with("snapshot.") && name.ends_with(".new")
    });
    let status = cluster.await_exit(follower, Duration::from_secs(60));
    assert!(!status.success(), "{status}");
    assert_eq!(cluster.nodes[follower].fs.counters().syncs_failed, failed_before + 1);
    let line = cluster.await_log(follower, "/snapshot.", Duration::ZERO);
    assert!(line.contains("shard failed") && line.contains("fsync failed"), "{line}");
    assert!(line.contains(".new"), "the temporary's sync failed, before any rename: {line}");
    println!("node {} exited ({status}) after its failed snapshot sync: {line}", follower + 1);
    writers.await_acked(100, Duration::from_secs(30), "with the follower down");
    cluster.spawn(follower);
    cluster.await_caught_up(
        follower,
        cluster.await_leader(Duration::from_secs(10)),
        Duration::from_secs(30),
    );

    let seen = writers.stop();
    cluster.await_serving(Duration::from_secs(30));
    let lost = check(&cluster, &seen.acked);
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    cluster.assert_none_exited("at the end");
    println!(
        "failed syncs: {} writes acknowledged ({acked_while_down} while a failed node was \
         down), all read back, 0 lost; {} puts failed (timed out or cut off); {:.1} s",
        seen.acked.len(),
        seen.other_errors,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_full_disk_refuses_writes_and_resumes_without_a_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = Instant::now();
    // No snapshots: no segment is released into a spare, so each new one needs new space.
    let mut cluster = match Cluster::start(&["--snapshot-every-mib", "0"]) {
        Ok(cluster) => cluster,
        Err(reason) => return println!("skipped: {reason}"),
    };
    cluster.await_serving(Duration::from_secs(30));
    let writers = Writers::start(&cluster);
    writers.await_acked(200, Duration::from_secs(20), "before the fault");
    // Room for less than a segment: the next one the WAL prepares is refused.
    let headroom = SEGMENT_BYTES / 2;

    // A follower's disk fills: it pauses, the cluster goes on, and it resumes by itself.
    let leader = cluster.await_leader(Duration::from_secs(10));
    let follower = (0..NODES).find(|index| *index != leader).unwrap();
    let fs = &cluster.nodes[follower].fs;
    fs.limit_space(Some(fs.used_bytes() + headroom));
    let line = cluster.await_log(follower, "out of disk space", Duration::from_secs(60));
    println!("node {} (follower): {line}", follower + 1);
    assert!(cluster.nodes[follower].fs.counters().no_space > 0);
    writers.await_acked(200, Duration::from_secs(30), "with a follower out of space");
    cluster.assert_none_exited("with a follower out of space");
    cluster.nodes[follower].fs.limit_space(None);
    cluster.await_log(follower, "disk space is back", Duration::from_secs(10));
    cluster.await_caught_up(
        follower,
        cluster.await_leader(Duration::from_secs(10)),
        Duration::from_secs(30),
    );
    cluster.assert_none_exited("after the follower's space came back");

    // The leader's disk fills: clients are told, plainly; nothing exits; it resumes.
    let leader = cluster.await_leader(Duration::from_secs(10));
    let fs = &cluster.nodes[leader].fs;
    fs.limit_space(Some(fs.used_bytes() + headroom));
    let line = cluster.await_log(leader, "out of disk space", Duration::from_secs(60));
    println!("node {} (leader): {line}", leader + 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while writers.seen.lock().unwrap().out_of_space == 0 {
        assert!(Instant::now() < deadline, "no client was told the disk is full");
        std::thread::sleep(Duration::from_millis(20));
    }
    let message = writers.seen.lock().unwrap().out_of_space_message.clone().unwrap();
    assert!(message.contains("out of disk space") && message.contains(".wal"), "{message}");
    println!("a client was told: {message}");
    std::thread::sleep(Duration::from_millis(500));
    cluster.assert_none_exited("with the leader out of space");
    cluster.nodes[leader].fs.limit_space(None);
    cluster.await_log(leader, "disk space is back", Duration::from_secs(10));
    writers.await_acked(200, Duration::from_secs(30), "after the leader's space came back");
    cluster.assert_none_exited("after the leader's space came back");

    let seen = writers.stop();
    cluster.await_serving(Duration::from_secs(30));
    let lost = check(&cluster, &seen.acked);
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    cluster.assert_none_exited("at the end");
    for (index, node) in cluster.nodes.iter().enumerate() {
        println!("node {}'s file system: {:?}", index + 1, node.fs.counters());
    }
    println!(
        "full disks: {} writes acknowledged, all read back, 0 lost; {} refused out of space, \
         {} failed otherwise (timed out or redirected); no restart; {:.1} s",
        seen.acked.len(),
        seen.out_of_space,
        seen.other_errors,
        started.elapsed().as_secs_f64()
    );
}
