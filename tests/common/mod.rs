//! A cluster of real `quorum node` processes for the integration tests that fault them (disk
//! faults, corruption; each test file takes what it needs): starting and restarting nodes on
//! data directories the test chooses, asking who leads and how far each has committed, reading
//! their logs, and writers that record every acknowledged put for reading back at the end.

#![allow(dead_code)] // Each test file uses a part.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorum::client::{Client, ClientError, ClientOptions, node_status};
use quorum::{ClusterId, NodeId};

/// Runs the `quorum` binary with `args`: its exit code, standard output and standard error.
pub fn quorum(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_quorum")).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Bytes of each value the writers put.
pub const VALUE_BYTES: usize = 300;

/// One node: where it listens, where it keeps its data, what runs it (a command before the
/// binary, `ip netns exec NS` say, or nothing), its process and its log file.
pub struct Node {
    pub address: String,
    pub data_dir: PathBuf,
    pub wrapper: Vec<String>,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Where its HTTP front end listens, if it has one ([`Cluster::start_with_front_ends`]).
    pub http: Option<String>,
    /// Where its Redis front end listens, if it has one.
    pub redis: Option<String>,
    /// Where it serves `/metrics`, `/ready` and `/health`, if it does
    /// ([`Cluster::start_with_metrics`]).
    pub metrics: Option<String>,
}

/// Where a node listens, keeps its data, and what runs it ([`Cluster::start_on`]).
pub struct NodeSpec {
    pub address: String,
    pub data_dir: PathBuf,
    pub wrapper: Vec<String>,
}

/// The shard count `args` give (`--shards N`), 1 if they do not.
fn shards_in(args: &[&str]) -> u16 {
    let at = args.iter().position(|arg| *arg == "--shards");
    at.and_then(|at| args.get(at + 1)).and_then(|count| count.parse().ok()).unwrap_or(1)
}

/// Nodes `1..=n` of one cluster, each started with the same flags.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub cluster_id: ClusterId,
    peers: String,
    args: Vec<String>,
    shards: u16,
}

impl Cluster {
    /// Starts one node per data directory, on free loopback ports, with `args` added to the
    /// flags every node gets (one shard unless `args` say `--shards`, 1 MiB segments, fast
    /// elections). Logs go to
    /// `logs/node-K.log`.
    pub fn start(
        cluster_id: u64,
        data_dirs: Vec<PathBuf>,
        logs: &std::path::Path,
        args: &[&str],
    ) -> Cluster {
        let specs = data_dirs
            .into_iter()
            .map(|data_dir| NodeSpec {
                address: format!(
                    "127.0.0.1:{}",
                    quorum::bench::embedded::free_port_range(shards_in(args)).unwrap()
                ),
                data_dir,
                wrapper: Vec::new(),
            })
            .collect();
        Cluster::start_on(cluster_id, specs, logs, args)
    }

    /// As [`Cluster::start`], on the addresses and with the wrappers given.
    pub fn start_on(
        cluster_id: u64,
        specs: Vec<NodeSpec>,
        logs: &std::path::Path,
        args: &[&str],
    ) -> Cluster {
        let nodes: Vec<Node> = specs
            .into_iter()
            .enumerate()
            .map(|(index, spec)| Node {
                address: spec.address,
                data_dir: spec.data_dir,
                wrapper: spec.wrapper,
                child: None,
                log: logs.join(format!("node-{}.log", index + 1)),
                http: None,
                redis: None,
                metrics: None,
            })
            .collect();
        Cluster::spawn_all(cluster_id, nodes, args, shards_in(args))
    }

    /// As [`Cluster::start`], each node also serving `/metrics`, `/ready` and `/health` on a
    /// free loopback port of its own (`Node::metrics`, `--metrics-listen`), and HTTP on
    /// another (`Node::http`), where `/metrics` and `/ready` are served too.
    pub fn start_with_metrics(
        cluster_id: u64,
        data_dirs: Vec<PathBuf>,
        logs: &std::path::Path,
        args: &[&str],
    ) -> Cluster {
        let free = |count| quorum::bench::embedded::free_port_range(count).unwrap();
        let nodes = data_dirs
            .into_iter()
            .enumerate()
            .map(|(index, data_dir)| Node {
                address: format!("127.0.0.1:{}", free(shards_in(args))),
                data_dir,
                wrapper: Vec::new(),
                child: None,
                log: logs.join(format!("node-{}.log", index + 1)),
                http: Some(format!("127.0.0.1:{}", free(1))),
                redis: None,
                metrics: Some(format!("127.0.0.1:{}", free(1))),
            })
            .collect();
        Cluster::spawn_all(cluster_id, nodes, args, shards_in(args))
    }

    /// A cluster of `nodes`, every one started.
    fn spawn_all(cluster_id: u64, nodes: Vec<Node>, args: &[&str], shards: u16) -> Cluster {
        let peers = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| format!("{}={}", index + 1, node.address))
            .collect::<Vec<_>>()
            .join(",");
        let args = args.iter().map(|arg| (*arg).to_string()).collect();
        let mut cluster = Cluster { nodes, cluster_id: ClusterId(cluster_id), peers, args, shards };
        for index in 0..cluster.nodes.len() {
            cluster.spawn(index);
        }
        cluster
    }

    /// As [`Cluster::start`] with `shards` shards per node, each node also serving HTTP and
    /// the Redis protocol on free loopback ports (`Node::http`, `Node::redis`).
    pub fn start_with_front_ends(
        cluster_id: u64,
        data_dirs: Vec<PathBuf>,
        logs: &std::path::Path,
        args: &[&str],
        shards: u16,
    ) -> Cluster {
        let free = |count| quorum::bench::embedded::free_port_range(count).unwrap();
        let nodes: Vec<Node> = data_dirs
            .into_iter()
            .enumerate()
            .map(|(index, data_dir)| Node {
                address: format!("127.0.0.1:{}", free(shards)),
                data_dir,
                wrapper: Vec::new(),
                child: None,
                log: logs.join(format!("node-{}.log", index + 1)),
                http: Some(format!("127.0.0.1:{}", free(1))),
                redis: Some(format!("127.0.0.1:{}", free(1))),
                metrics: None,
            })
            .collect();
        Cluster::spawn_all(cluster_id, nodes, args, shards)
    }

    /// Starts node `index` (again), its log appended to.
    pub fn spawn(&mut self, index: usize) {
        let node = &self.nodes[index];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
        let binary = env!("CARGO_BIN_EXE_quorum");
        let mut command = match node.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("node")
            .args(["--id", &(index + 1).to_string()])
            .args(["--cluster-id", &self.cluster_id.0.to_string()])
            .args(["--listen", &node.address])
            .args(["--peers", &self.peers])
            // `--shards` from `args` if they give it (`Cluster::start`), else the count the
            // cluster was started with.
            .args(if self.args.iter().any(|arg| arg == "--shards") {
                Vec::new()
            } else {
                vec!["--shards".to_string(), self.shards.to_string()]
            })
            .args(["--wal-segment-mib", "1"])
            .args(["--election-timeout-ms", "300", "--heartbeat-interval-ms", "30"])
            .args(&self.args)
            .args(node.http.iter().flat_map(|address| ["--http-listen", address.as_str()]))
            .args(node.redis.iter().flat_map(|address| ["--redis-listen", address.as_str()]))
            .args(node.metrics.iter().flat_map(|address| ["--metrics-listen", address.as_str()]))
            .arg("--data-dir")
            .arg(&node.data_dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[index].child = Some(child);
    }

    /// SIGKILLs node `index` and waits for it to be gone.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client of every node.
    pub fn client(&self, timeout: Duration) -> Result<Client, String> {
        let seeds: Vec<String> = self.nodes.iter().map(|node| node.address.clone()).collect();
        let options = ClientOptions {
            cluster_id: self.cluster_id,
            request_timeout: timeout,
            connect_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        };
        Client::connect(&seeds, options).map_err(|error| error.to_string())
    }

    /// Waits until a put goes through; panics with the last error after `timeout`.
    pub fn await_serving(&self, timeout: Duration) {
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

    /// The node a majority of the nodes name as shard 0's leader, if it says so itself.
    pub fn leader(&self) -> Option<usize> {
        self.shard_leader(0)
    }

    /// The node a majority of the nodes name as `shard`'s leader, if it says so itself.
    pub fn shard_leader(&self, shard: usize) -> Option<usize> {
        let statuses: Vec<_> = self
            .nodes
            .iter()
            .map(|node| node_status(&node.address, self.cluster_id, false).ok())
            .collect();
        for (index, status) in statuses.iter().enumerate() {
            let Some(status) = status else { continue };
            let named = statuses
                .iter()
                .flatten()
                .filter(|other| other[shard].leader == Some(NodeId(index as u16 + 1)))
                .count();
            if status[shard].role == quorum::core::RoleKind::Leader && named * 2 > self.nodes.len()
            {
                return Some(index);
            }
        }
        None
    }

    /// Waits for [`Cluster::leader`]; panics after `timeout`.
    pub fn await_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader() {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader after {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node `index`'s commit index on shard 0, if it answers.
    pub fn commit_index(&self, index: usize) -> Option<u64> {
        let status = node_status(&self.nodes[index].address, self.cluster_id, false).ok()?;
        Some(status[0].commit_index.0)
    }

    /// Waits until node `index` has committed as far as `leader` had when the wait began.
    pub fn await_caught_up(&self, index: usize, leader: usize, timeout: Duration) {
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
                "node {} at commit {commit:?}, not caught up to {target} after {timeout:?}:\n{}",
                index + 1,
                self.tail(index)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node `index`'s log so far.
    pub fn log_text(&self, index: usize) -> String {
        std::fs::read_to_string(&self.nodes[index].log).unwrap_or_default()
    }

    /// The first line of node `index`'s log holding `needle`, waiting up to `timeout`.
    pub fn await_log(&self, index: usize, needle: &str, timeout: Duration) -> String {
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

    /// The last 30 lines of node `index`'s log.
    pub fn tail(&self, index: usize) -> String {
        let log = self.log_text(index);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// How node `index` exited, if it did.
    pub fn exited(&mut self, index: usize) -> Option<ExitStatus> {
        self.nodes[index].child.as_mut().and_then(|child| child.try_wait().unwrap())
    }

    /// Panics, with its log, if any node exited.
    pub fn assert_none_exited(&mut self, when: &str) {
        for index in 0..self.nodes.len() {
            if let Some(status) = self.exited(index) {
                panic!("{when}: node {} exited ({status}):\n{}", index + 1, self.tail(index));
            }
        }
    }

    /// Waits for node `index` to exit; its status.
    pub fn await_exit(&mut self, index: usize, timeout: Duration) -> ExitStatus {
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
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}

/// What the writers saw, live.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every acknowledged put: key and value.
    pub acked: Vec<(String, String)>,
    pub out_of_space: usize,
    /// One out-of-space error as the caller reads it.
    pub out_of_space_message: Option<String>,
    /// Puts that failed otherwise (timed out, redirected, cut off): they may or may not have
    /// been applied, and are not checked.
    pub other_errors: usize,
}

/// Threads putting unique keys (`w{writer}-{n}`) until stopped.
pub struct Writers {
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    /// `count` writers, each with its own client.
    pub fn start(cluster: &Cluster, count: usize) -> Writers {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|writer| {
                let client = cluster.client(Duration::from_secs(3)).unwrap();
                let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
                std::thread::spawn(move || write_until(&client, writer, &seen, &stop))
            })
            .collect();
        Writers { seen, stop, threads }
    }

    /// Puts acknowledged so far.
    pub fn acked(&self) -> usize {
        self.seen.lock().unwrap().acked.len()
    }

    /// Waits until `more` writes beyond those acknowledged now are acknowledged.
    pub fn await_acked(&self, more: usize, timeout: Duration, what: &str) {
        let target = self.acked() + more;
        let deadline = Instant::now() + timeout;
        while self.acked() < target {
            assert!(Instant::now() < deadline, "{what}: not {more} more writes in {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the writers; what they saw.
    pub fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

fn write_until(client: &Client, writer: usize, seen: &Mutex<Seen>, stop: &AtomicBool) {
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
}

/// Reads every acknowledged write back (linearizably, through the leader, with `readers`
/// threads); returns the ones missing or changed.
pub fn lost_writes(
    cluster: &Cluster,
    writes: &[(String, String)],
    readers: usize,
) -> Vec<(String, Option<String>)> {
    let chunks: Vec<Vec<(String, String)>> =
        writes.chunks(writes.len().div_ceil(readers).max(1)).map(<[_]>::to_vec).collect();
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

/// Panics if any acknowledged write is missing, naming a few.
pub fn assert_none_lost(cluster: &Cluster, writes: &[(String, String)]) {
    let lost = lost_writes(cluster, writes, 6);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        writes.len(),
        &lost[..lost.len().min(5)]
    );
}
