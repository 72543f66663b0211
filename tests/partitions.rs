//! Network partitions between real `quorum node` processes (issue #21, point 4).
//!
//! Three nodes, two shards each, every node in its own network namespace, joined by a bridge in
//! the root namespace, where the clients run: the test makes them, names them after its pid and
//! removes them on exit, panics included. Faults are nftables rules inside the nodes'
//! namespaces, so packets are dropped silently as by a broken switch (this kernel has no
//! `tc netem`: loss comes from nftables' `numgen`, and there is no delay). Each cycle picks a
//! shard's leader and, in turn: isolates it from everything (peers and clients); splits 2/1
//! with it alone (clients still reach all three); splits 2/1 with it in the majority; cuts one
//! way, its packets to the followers or a follower's packets to it; or drops a share of all
//! packets between nodes. The fault holds for 1.2 to 2 s (elections take 300 ms here), then
//! heals, and the cycle ends once both shards serve again.
//!
//! Throughout, clients put, get and compare-and-set a few hot keys (every value written is
//! unique) and record every operation with its invocation and completion times; a write whose
//! outcome is unknown (a timeout, a broken connection) is recorded as such: it may or may not
//! have taken effect, at any time after it was invoked. A failed get is left out: it changed
//! nothing. At the end each key's
//! history must be linearizable (`quorum::sim::linearizability`), with a last read of every key
//! after the clients stop; every acknowledged write of unique-key writers must read back; the
//! nodes must agree on each shard's state. The recorded history, with one read turned stale,
//! must be rejected by the same checker.
//!
//! With TCP a one-way cut stalls both directions of a connection soon: the side whose packets
//! get through sends a window's worth, then waits for acknowledgements that cannot come back.
//! The test still cuts one way, as the network would.
//!
//! Two ignored tests measure what the cycles showed about liveness (docs/partitions.md, "What
//! the test found"): how long a follower cut off for seconds takes to hear the leader after the
//! heal, and how many puts one client gets through while its leader is cut from its peers.
//!
//! `QUORUM_PARTITION_CYCLES` (default 20) and `QUORUM_PARTITION_SEED` (default 1) set the
//! cycles and the seed. Needs root, iproute2 and nft (Debian `nftables`, which `.ci/run`
//! installs); otherwise it prints `skipped: <reason>`. docs/partitions.md has the design.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorum::client::{Client, ClientError, ClientOptions, node_status};
use quorum::core::{ClusterId, RoleKind};
use quorum::shard_for_key;
use quorum::sim::linearizability::{KvOp, KvResult, Operation, check_key};

const CLUSTER: u64 = 79;
const NODES: usize = 3;
const SHARDS: u16 = 2;
/// Every node listens on its own address, so all can use the same ports.
const PORT: u16 = 7100;
/// Keys the linearizability clients share: few, so operations on each overlap.
const HOT_KEYS: usize = 6;
/// Clients putting and getting the hot keys.
const CLIENTS: usize = 4;
/// Writers putting unique keys, every acknowledged one read back at the end.
const WRITERS: usize = 2;
const VALUE_BYTES: usize = 300;
/// A client operation's limit: shorter than a fault, so a client stuck on a cut-off leader
/// records the operation as indeterminate and goes on.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
const ELECTION_TIMEOUT_MS: u64 = 300;
/// How long the cluster may take to elect, serve or converge again. Generous: the build
/// machine is shared, and the nodes log stalls of their threads of several seconds, all at
/// once, when other builds load it.
const RECOVERY: Duration = Duration::from_secs(60);
/// The nftables table the test owns in each node's namespace.
const TABLE: &str = "quorum_partition";
/// Every name the test gives a namespace or an interface starts with this, then its pid.
const PREFIX: &str = "qp";

/// The nodes on this machine's two cores: one scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|text| text.parse().ok()).unwrap_or(default)
}

/// Runs a command to completion; its stderr as the error if it fails.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("`{program}` cannot run: {error}"))?;
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args, None)
}

/// Why the test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces, veth links and nftables need root".into());
    }
    if let Err(error) = ip(&["-V"]) {
        return Some(format!("iproute2's `ip` is not usable: {error}"));
    }
    if let Err(error) = run("nft", &["--version"], None) {
        return Some(format!("nft is not usable (Debian `nftables`): {error}"));
    }
    None
}

/// One end of a link: a node or the clients (the root namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Node(usize),
    Clients,
}

/// The namespaces, bridge and links the test made; removed when dropped.
struct Net {
    tag: String,
    subnet: u8,
    bridge: Option<String>,
    links: Vec<String>,
    namespaces: Vec<String>,
}

impl Net {
    fn namespace(&self, node: usize) -> String {
        format!("{PREFIX}{}n{}", self.tag, node + 1)
    }

    fn address(&self, end: End) -> String {
        match end {
            End::Node(node) => format!("10.77.{}.{}", self.subnet, node + 1),
            End::Clients => format!("10.77.{}.254", self.subnet),
        }
    }

    /// Makes a bridge in the root namespace (the clients' side, at .254) and a namespace per
    /// node linked to it by a veth pair, each with an empty nftables table of its own.
    fn create() -> Result<Net, String> {
        remove_stale();
        let tag = std::process::id().to_string();
        let mut net = Net {
            tag,
            subnet: free_subnet()?,
            bridge: None,
            links: Vec::new(),
            namespaces: Vec::new(),
        };
        let bridge = format!("{PREFIX}{}b", net.tag);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        net.bridge = Some(bridge.clone());
        ip(&["addr", "add", &format!("{}/24", net.address(End::Clients)), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for node in 0..NODES {
            let namespace = net.namespace(node);
            ip(&["netns", "add", &namespace])?;
            net.namespaces.push(namespace.clone());
            let outside = format!("{PREFIX}{}v{}", net.tag, node + 1);
            let inside = format!("{PREFIX}{}e{}", net.tag, node + 1);
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
            net.links.push(outside.clone());
            ip(&["link", "set", &outside, "master", &bridge, "up"])?;
            ip(&["link", "set", &inside, "netns", &namespace])?;
            let address = format!("{}/24", net.address(End::Node(node)));
            ip(&["-n", &namespace, "addr", "add", &address, "dev", &inside])?;
            ip(&["-n", &namespace, "link", "set", &inside, "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            let chain = |hook: &str| {
                format!("add chain inet {TABLE} {hook} {{ type filter hook {hook} priority 0; }}\n")
            };
            net.nft(
                node,
                &format!("add table inet {TABLE}\n{}{}", chain("input"), chain("output")),
            )?;
        }
        Ok(net)
    }

    fn nft(&self, node: usize, script: &str) -> Result<(), String> {
        let namespace = self.namespace(node);
        run("ip", &["netns", "exec", &namespace, "nft", "-f", "-"], Some(script)).map(|_| ())
    }

    /// Replaces every node's rules: packets of each `(from, to)` cut dropped, and of the rest
    /// between nodes `loss_percent` dropped at random.
    fn set_faults(&self, cuts: &[(End, End)], loss_percent: u64) {
        for node in 0..NODES {
            let mut script = format!("flush table inet {TABLE}\n");
            for (from, to) in cuts {
                if *from == End::Node(node) {
                    let to = self.address(*to);
                    script += &format!("add rule inet {TABLE} output ip daddr {to} drop\n");
                } else if *to == End::Node(node) && *from == End::Clients {
                    let from = self.address(*from);
                    script += &format!("add rule inet {TABLE} input ip saddr {from} drop\n");
                }
            }
            if loss_percent > 0 {
                let peers: Vec<String> = (0..NODES)
                    .filter(|peer| *peer != node)
                    .map(|peer| self.address(End::Node(peer)))
                    .collect();
                script += &format!(
                    "add rule inet {TABLE} output ip daddr {{ {} }} numgen random mod 100 < \
                     {loss_percent} drop\n",
                    peers.join(", ")
                );
            }
            self.nft(node, &script).unwrap();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting the outer end of a veth pair deletes both; a namespace's deletion is
        // asynchronous, so the links go first, explicitly.
        for link in self.links.iter().chain(&self.bridge) {
            if let Err(error) = ip(&["link", "del", link]) {
                eprintln!("partitions: cannot remove link {link}: {error}");
            }
        }
        for namespace in &self.namespaces {
            if let Err(error) = ip(&["netns", "del", namespace]) {
                eprintln!("partitions: cannot remove namespace {namespace}: {error}");
            }
        }
    }
}

/// The pid in a name this test gives (`qp<pid>` then a letter and digits), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let tail = &rest[digits.len()..];
    let kind = tail.chars().next()?;
    let well_formed = "bnve".contains(kind) && tail[1..].chars().all(|c| c.is_ascii_digit());
    well_formed.then(|| digits.parse().ok()).flatten()
}

/// Removes namespaces and links an earlier run of this test left (it was killed before its
/// guard ran): only names of this test's form whose process is gone.
fn remove_stale() {
    let dead = |name: &str| {
        owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for line in ip(&["-o", "link", "show"]).unwrap_or_default().lines() {
        let name = line.split(':').nth(1).unwrap_or("").trim();
        let name = name.split('@').next().unwrap_or("");
        if dead(name) {
            let _ = ip(&["link", "del", name]);
        }
    }
    for line in ip(&["netns", "list"]).unwrap_or_default().lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if dead(name) {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A 10.77.x.0/24 no route of the root namespace uses yet.
fn free_subnet() -> Result<u8, String> {
    let routes = ip(&["-4", "route", "show"])?;
    let start = (std::process::id() % 200) as u8;
    (0..200u8)
        .map(|offset| 20 + (start + offset) % 200)
        .find(|subnet| !routes.contains(&format!("10.77.{subnet}.")))
        .ok_or_else(|| "no free 10.77.x.0/24".to_string())
}

/// What a cycle does to the network.
#[derive(Clone, Debug)]
enum Fault {
    /// The leader cut from its peers and from the clients, both ways.
    IsolateLeader(usize),
    /// A 2/1 split, the leader alone (the clients still reach all three).
    LeaderInMinority(usize),
    /// A 2/1 split, the leader with one follower; the other alone.
    LeaderInMajority { alone: usize },
    /// One way: the leader's packets to both followers dropped; theirs reach it.
    LeaderCannotSend(usize),
    /// One way: a follower's packets to the leader dropped; the leader's reach it.
    CannotReachLeader { follower: usize, leader: usize },
    /// This share of the packets between nodes dropped, in percent.
    Loss(u64),
}

const KINDS: [&str; 6] = [
    "isolate-leader",
    "leader-in-minority",
    "leader-in-majority",
    "one-way-from-leader",
    "one-way-to-leader",
    "loss",
];

impl Fault {
    fn pick(cycle: usize, leader: usize, rng: &mut Rng) -> Fault {
        let other = (leader + 1 + rng.below(2) as usize) % NODES;
        match cycle % KINDS.len() {
            0 => Fault::IsolateLeader(leader),
            1 => Fault::LeaderInMinority(leader),
            2 => Fault::LeaderInMajority { alone: other },
            3 => Fault::LeaderCannotSend(leader),
            4 => Fault::CannotReachLeader { follower: other, leader },
            _ => Fault::Loss(10 + rng.below(21)),
        }
    }

    fn kind(&self) -> usize {
        match self {
            Fault::IsolateLeader(_) => 0,
            Fault::LeaderInMinority(_) => 1,
            Fault::LeaderInMajority { .. } => 2,
            Fault::LeaderCannotSend(_) => 3,
            Fault::CannotReachLeader { .. } => 4,
            Fault::Loss(_) => 5,
        }
    }

    /// The directed cuts: packets from the first end to the second are dropped.
    fn cuts(&self) -> Vec<(End, End)> {
        let apart = |node: usize| {
            (0..NODES)
                .filter(move |other| *other != node)
                .flat_map(move |other| {
                    [(End::Node(node), End::Node(other)), (End::Node(other), End::Node(node))]
                })
                .collect::<Vec<_>>()
        };
        match *self {
            Fault::IsolateLeader(leader) => {
                let mut cuts = apart(leader);
                cuts.extend([(End::Node(leader), End::Clients), (End::Clients, End::Node(leader))]);
                cuts
            }
            Fault::LeaderInMinority(leader) => apart(leader),
            Fault::LeaderInMajority { alone } => apart(alone),
            Fault::LeaderCannotSend(leader) => (0..NODES)
                .filter(|other| *other != leader)
                .map(|other| (End::Node(leader), End::Node(other)))
                .collect(),
            Fault::CannotReachLeader { follower, leader } => {
                vec![(End::Node(follower), End::Node(leader))]
            }
            Fault::Loss(_) => Vec::new(),
        }
    }

    fn loss_percent(&self) -> u64 {
        if let Fault::Loss(percent) = self { *percent } else { 0 }
    }

    /// The leader this fault cuts off from the majority: a new one must be elected.
    fn deposes(&self) -> Option<usize> {
        match *self {
            Fault::IsolateLeader(leader)
            | Fault::LeaderInMinority(leader)
            | Fault::LeaderCannotSend(leader) => Some(leader),
            _ => None,
        }
    }
}

struct Cluster {
    children: Vec<Option<Child>>,
    addresses: Vec<String>,
    logs: Vec<PathBuf>,
    dir: tempfile::TempDir,
    // Dropped after the children are killed (in `Drop::drop`).
    net: Net,
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        if let Some(reason) = unavailable() {
            return Err(reason);
        }
        let net = Net::create()?;
        let dir = tempfile::tempdir().unwrap();
        let addresses =
            (0..NODES).map(|node| format!("{}:{PORT}", net.address(End::Node(node)))).collect();
        // QUORUM_PARTITION_LOGS keeps the nodes' logs in a directory of one's choice.
        let log_dir = std::env::var_os("QUORUM_PARTITION_LOGS")
            .map_or_else(|| dir.path().to_path_buf(), PathBuf::from);
        std::fs::create_dir_all(&log_dir).unwrap();
        let logs = (0..NODES).map(|node| log_dir.join(format!("node-{}.log", node + 1))).collect();
        let mut cluster = Cluster { children: Vec::new(), addresses, logs, dir, net };
        for node in 0..NODES {
            let child = cluster.spawn(node);
            cluster.children.push(Some(child));
        }
        Ok(cluster)
    }

    fn spawn(&self, node: usize) -> Child {
        let peers = self
            .addresses
            .iter()
            .enumerate()
            .map(|(index, address)| format!("{}={address}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        let log = std::fs::File::create(&self.logs[node]).unwrap();
        // `ip netns exec` enters the namespace and execs the node: the child is the node.
        Command::new("ip")
            .args(["netns", "exec", &self.net.namespace(node)])
            .arg(env!("CARGO_BIN_EXE_quorum"))
            .arg("node")
            .args(["--id", &(node + 1).to_string()])
            .args(["--cluster-id", &CLUSTER.to_string()])
            .args(["--listen", &self.addresses[node]])
            .args(["--peers", &peers])
            .args(["--shards", &SHARDS.to_string()])
            .args(["--election-timeout-ms", &ELECTION_TIMEOUT_MS.to_string()])
            .args(["--heartbeat-interval-ms", "30"])
            // Small segments and frequent snapshots: a node behind after a partition may
            // have to catch up from a snapshot.
            .args(["--wal-segment-mib", "1", "--snapshot-every-mib", "1", "--retain-slots", "64"])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("data-{}", node + 1)))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn client(&self, timeout: Duration) -> Result<Client, ClientError> {
        connect(&self.addresses, timeout)
    }

    fn tail(&self, node: usize) -> String {
        let log = std::fs::read_to_string(&self.logs[node]).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn assert_running(&mut self, when: &str) {
        for node in 0..NODES {
            let child = self.children[node].as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{when}: node {} exited ({status}):\n{}", node + 1, self.tail(node));
            }
        }
    }

    /// The longest stall of a shard's thread any node logged (`held_ms`), in ms: how loaded
    /// the machine was (the nodes log it when heartbeats had to wait).
    fn longest_stall_ms(&self) -> u64 {
        self.logs
            .iter()
            .flat_map(|log| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                text.lines()
                    .filter_map(|line| line.split("held_ms=").nth(1))
                    .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .max()
            .unwrap_or(0)
    }

    /// Each node's statuses, `None` for a node that did not answer.
    fn statuses(&self, digest: bool) -> Vec<Option<Vec<quorum::client::ShardStatus>>> {
        std::thread::scope(|scope| {
            let asks: Vec<_> = self
                .addresses
                .iter()
                .map(|address| {
                    scope.spawn(move || node_status(address, ClusterId(CLUSTER), digest).ok())
                })
                .collect();
            asks.into_iter().map(|ask| ask.join().unwrap()).collect()
        })
    }

    /// Each shard's role and known leader on each node the clients reach under `fault`, as
    /// `shard: node role→leader …`.
    fn view(&self, fault: &Fault) -> String {
        let unreachable = match fault {
            Fault::IsolateLeader(leader) => Some(*leader),
            _ => None,
        };
        let statuses: Vec<_> = (0..NODES)
            .map(|node| {
                (unreachable != Some(node))
                    .then(|| node_status(&self.addresses[node], ClusterId(CLUSTER), false).ok())
                    .flatten()
            })
            .collect();
        (0..usize::from(SHARDS))
            .map(|shard| {
                let nodes: Vec<String> = statuses
                    .iter()
                    .enumerate()
                    .map(|(node, status)| match status {
                        Some(status) => format!(
                            "{}:{:?}→{}",
                            node + 1,
                            status[shard].role,
                            status[shard].leader.map_or(0, |id| id.0)
                        ),
                        None => format!("{}:?", node + 1),
                    })
                    .collect();
                format!("shard {shard}: {}", nodes.join(" "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The node leading `shard` that a majority names, if there is one.
    fn leader(&self, shard: u16) -> Option<usize> {
        let statuses = self.statuses(false);
        let shard = usize::from(shard);
        (0..NODES).find(|node| {
            let leads = statuses[*node].as_ref().is_some_and(|s| s[shard].role == RoleKind::Leader);
            let named = statuses
                .iter()
                .flatten()
                .filter(|s| s[shard].leader.map(|id| usize::from(id.0)) == Some(node + 1))
                .count();
            leads && named * 2 > NODES
        })
    }

    fn await_leader(&self, shard: u16, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader(shard) {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                return Err(format!("shard {shard} has no leader after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a put goes through on every shard.
    fn await_serving(&self, keys: &[String], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for key in keys {
            loop {
                let put =
                    self.client(Duration::from_secs(2)).and_then(|c| c.put(key.as_bytes(), b"y"));
                let Err(error) = put else { break };
                if Instant::now() > deadline {
                    return Err(format!("no put on `{key}` within {timeout:?}: {error}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Waits until every node has committed as far as the others on each shard and holds the
    /// same state there.
    fn await_converged(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses(true);
            let views: Vec<Vec<(u64, u64, u64)>> = statuses
                .iter()
                .flatten()
                .map(|shards| {
                    shards
                        .iter()
                        .map(|s| (s.commit_index.0, s.summary.entries, s.summary.digest))
                        .collect()
                })
                .collect();
            if views.len() == NODES && views.iter().all(|view| *view == views[0]) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the nodes differ after {timeout:?}: {views:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The first keys (`prefix-0`, `prefix-1`, …) that land on each shard, one per shard.
fn keys_per_shard(prefix: &str) -> Vec<String> {
    let mut keys: Vec<Option<String>> = vec![None; usize::from(SHARDS)];
    let mut n = 0;
    while keys.iter().any(Option::is_none) {
        let key = format!("{prefix}-{n}");
        keys[shard_for_key(key.as_bytes(), usize::from(SHARDS))].get_or_insert(key);
        n += 1;
    }
    keys.into_iter().flatten().collect()
}

fn hot_key(index: usize) -> String {
    format!("hot-{index}")
}

/// What the clients share: the clock, the stop flag and the numbering of logical clients.
struct Shared {
    start: Instant,
    stop: AtomicBool,
    next_client: AtomicUsize,
    /// Operations acknowledged so far, by every client and writer.
    acked: AtomicUsize,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// A new logical client for the checker. A thread takes one after each indeterminate
    /// operation: that operation stays pending for ever, and a client's operations may not
    /// overlap.
    fn new_client(&self) -> usize {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }
}

/// One client thread's record.
#[derive(Default)]
struct Record {
    /// `(hot key, operation)`.
    history: Vec<(usize, Operation)>,
    /// Unique-key writes acknowledged: `(key, value)`.
    acked: Vec<(String, String)>,
    ok: usize,
    /// Gets that failed (left out of the history: a read changes nothing).
    failed: usize,
    /// Puts and compare-and-sets that failed: they may or may not have taken effect.
    indeterminate: usize,
}

fn connect(addresses: &[String], timeout: Duration) -> Result<Client, ClientError> {
    let options = ClientOptions {
        cluster_id: ClusterId(CLUSTER),
        request_timeout: timeout,
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    Client::connect(addresses, options)
}

/// A client, once one connects (`None` if the run stops first).
fn connect_until(addresses: &[String], shared: &Shared) -> Option<Client> {
    while !shared.stop.load(Ordering::Relaxed) {
        if let Ok(client) = connect(addresses, REQUEST_TIMEOUT) {
            return Some(client);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Parses a hot key's value.
fn parse_value(key: &str, bytes: Option<Vec<u8>>) -> Option<u64> {
    bytes.map(|bytes| {
        let text = String::from_utf8(bytes).unwrap();
        text.parse().unwrap_or_else(|_| panic!("`{key}` holds `{text}`"))
    })
}

/// One random operation on a hot key: a put of the unique `value`, a get, or a
/// compare-and-set from the value this client last saw there to `value` (a duplicate apply of
/// one shows in its history).
fn hot_operation(
    client: &Client,
    rng: &mut Rng,
    key: &str,
    value: u64,
    last_seen: &mut Option<u64>,
) -> (KvOp, Result<KvResult, ClientError>) {
    match rng.below(5) {
        0 | 1 => {
            let result = client.put(key.as_bytes(), value.to_string().as_bytes());
            (KvOp::Put(value), result.map(|()| KvResult::Done))
        }
        2 | 3 => {
            let result = client.get(key.as_bytes()).map(|read| parse_value(key, read));
            if let Ok(read) = result {
                *last_seen = read;
            }
            (KvOp::Get, result.map(KvResult::Value))
        }
        _ => {
            let expected = *last_seen;
            let text = expected.map(|expected| expected.to_string());
            let new = value.to_string();
            let result = client.compare_and_set(
                key.as_bytes(),
                text.as_ref().map(String::as_bytes),
                new.as_bytes(),
            );
            let result = result.map(|(succeeded, previous)| {
                let previous = parse_value(key, previous);
                *last_seen = if succeeded { Some(value) } else { previous };
                KvResult::CompareAndSet { succeeded, previous }
            });
            (KvOp::CompareAndSet { expected, new: value }, result)
        }
    }
}

/// A linearizability client: random puts, gets and compare-and-sets on the hot keys, every
/// value written unique.
fn hot_client(thread: usize, seed: u64, addresses: &[String], shared: &Shared) -> Record {
    let mut record = Record::default();
    let mut rng = Rng((seed ^ (thread as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)) | 1);
    let Some(mut client) = connect_until(addresses, shared) else { return record };
    let mut logical = shared.new_client();
    let mut last_seen: Vec<Option<u64>> = vec![None; HOT_KEYS];
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let key = rng.below(HOT_KEYS as u64) as usize;
        n += 1;
        let value = ((thread as u64 + 1) << 40) | n;
        let invoke_us = shared.now_us();
        let (op, outcome) =
            hot_operation(&client, &mut rng, &hot_key(key), value, &mut last_seen[key]);
        let complete_us = shared.now_us();
        match outcome {
            Ok(result) => {
                record.ok += 1;
                shared.acked.fetch_add(1, Ordering::Relaxed);
                let complete = Some((complete_us, result));
                record.history.push((key, Operation { client: logical, op, invoke_us, complete }));
            }
            Err(error) => {
                if op == KvOp::Get {
                    record.failed += 1;
                } else {
                    record.indeterminate += 1;
                    let complete = None;
                    record
                        .history
                        .push((key, Operation { client: logical, op, invoke_us, complete }));
                    logical = shared.new_client();
                }
                if error == ClientError::SessionExpired {
                    let Some(fresh) = connect_until(addresses, shared) else { break };
                    client = fresh;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    record
}

/// A writer of unique keys with 300-byte values.
fn writer(thread: usize, addresses: &[String], shared: &Shared) -> Record {
    let mut record = Record::default();
    let Some(mut client) = connect_until(addresses, shared) else { return record };
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("w{thread}-{n}");
        let mut value = format!("{key}/");
        value.extend(std::iter::repeat_n('v', VALUE_BYTES - value.len()));
        match client.put(key.as_bytes(), value.as_bytes()) {
            Ok(()) => {
                record.ok += 1;
                shared.acked.fetch_add(1, Ordering::Relaxed);
                record.acked.push((key, value));
            }
            Err(error) => {
                record.indeterminate += 1;
                if error == ClientError::SessionExpired {
                    let Some(fresh) = connect_until(addresses, shared) else { break };
                    client = fresh;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    record
}

/// What the cycles did.
#[derive(Debug, Default)]
struct Stats {
    cycles: usize,
    /// Faults by kind, as in [`KINDS`].
    faults: [usize; KINDS.len()],
    /// Faults that cut a leader off from the majority, and of those, how many saw a new
    /// leader on the majority's side before the heal.
    deposing: usize,
    replaced: usize,
    /// From a heal until both shards serve again.
    recovery_max: Duration,
    recovery_total: Duration,
    /// When each fault healed, on the clients' clock.
    heals_us: Vec<u64>,
    /// Operations acknowledged while a fault held, by kind.
    acked_during: [usize; KINDS.len()],
}

/// One cycle: pick a shard's leader, cut, hold, heal, wait until both shards serve.
fn run_cycle(
    cluster: &mut Cluster,
    cycle: usize,
    rng: &mut Rng,
    stats: &mut Stats,
    shared: &Shared,
    serving_keys: &[String],
) -> Result<(), String> {
    let shard = (cycle % usize::from(SHARDS)) as u16;
    let leader = cluster.await_leader(shard, RECOVERY)?;
    let fault = Fault::pick(cycle, leader, rng);
    let hold = Duration::from_millis(1200 + rng.below(800));
    let acked_before = shared.acked.load(Ordering::Relaxed);
    cluster.net.set_faults(&fault.cuts(), fault.loss_percent());
    std::thread::sleep(hold);
    let view = cluster.view(&fault);
    let mut replaced = None;
    if let Some(old) = fault.deposes() {
        // Asked before the heal, of the majority's side only (the old leader may be out of
        // the clients' reach).
        stats.deposing += 1;
        let new = (0..NODES).filter(|node| *node != old).find(|node| {
            node_status(&cluster.addresses[*node], ClusterId(CLUSTER), false)
                .is_ok_and(|status| status[usize::from(shard)].role == RoleKind::Leader)
        });
        stats.replaced += usize::from(new.is_some());
        replaced = Some(new.map(|node| node + 1));
    }
    cluster.net.set_faults(&[], 0);
    let healed = Instant::now();
    stats.heals_us.push(shared.now_us());
    let acked_during = shared.acked.load(Ordering::Relaxed) - acked_before;
    stats.acked_during[fault.kind()] += acked_during;
    cluster.await_serving(serving_keys, RECOVERY)?;
    let recovery = healed.elapsed();
    cluster.assert_running(&format!("cycle {cycle} ({fault:?})"));
    stats.cycles += 1;
    stats.faults[fault.kind()] += 1;
    stats.recovery_max = stats.recovery_max.max(recovery);
    stats.recovery_total += recovery;
    println!(
        "cycle {cycle}: {} {fault:?} (shard {shard}'s leader: node {}) for {} ms; new leader \
         before the heal: {replaced:?}; {acked_during} operations acknowledged during the fault; \
         serving {} ms after the heal; before the heal {view}",
        KINDS[fault.kind()],
        leader + 1,
        hold.as_millis(),
        recovery.as_millis()
    );
    // A quiet stretch: the clients run on a healed network.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// Each hot key's history, its clients numbered densely (the checker sizes its state by the
/// highest client number).
fn histories(operations: Vec<(usize, Operation)>) -> Vec<Vec<Operation>> {
    let mut per_key: Vec<Vec<Operation>> = vec![Vec::new(); HOT_KEYS];
    let mut numbers: Vec<BTreeMap<usize, usize>> = vec![BTreeMap::new(); HOT_KEYS];
    for (key, mut operation) in operations {
        let next = numbers[key].len();
        operation.client = *numbers[key].entry(operation.client).or_insert(next);
        per_key[key].push(operation);
    }
    per_key
}

fn completed_at(operation: &Operation) -> Option<u64> {
    operation.complete.as_ref().map(|(at, _)| *at)
}

/// The recorded history made wrong on purpose: a read invoked after `after_us` turned stale.
/// It reads the value of a put `U` although another put `Q` began after `U` was acknowledged
/// and was itself acknowledged before the read began. Only the history up to that read's
/// completion is kept (operations unfinished then become pending), so the checker's
/// exhaustive search stays short. Returns the prefix as recorded and the prefix made stale.
fn stale_read(history: &[Operation], after_us: u64) -> Option<(Vec<Operation>, Vec<Operation>)> {
    let puts: Vec<(&Operation, u64)> = history
        .iter()
        .filter(|operation| operation.complete.is_some())
        .filter_map(|operation| match operation.op {
            KvOp::Put(value) => Some((operation, value)),
            _ => None,
        })
        .collect();
    let mut reads: Vec<(usize, &Operation)> = history
        .iter()
        .enumerate()
        .filter(|(_, operation)| operation.op == KvOp::Get && operation.invoke_us >= after_us)
        .filter(|(_, operation)| operation.complete.is_some())
        .collect();
    reads.sort_by_key(|(_, read)| read.invoke_us);
    for (index, read) in reads {
        let done_before =
            |operation: &Operation| completed_at(operation).is_some_and(|at| at < read.invoke_us);
        let Some((overwriter, _)) =
            puts.iter().filter(|(put, _)| done_before(put)).max_by_key(|(put, _)| put.invoke_us)
        else {
            continue;
        };
        let Some((_, stale)) = puts
            .iter()
            .find(|(put, _)| completed_at(put).is_some_and(|at| at < overwriter.invoke_us))
        else {
            continue;
        };
        let end_us = completed_at(read).unwrap();
        let prefix: Vec<Operation> = history
            .iter()
            .filter(|operation| operation.invoke_us <= end_us)
            .map(|operation| {
                let mut operation = operation.clone();
                if completed_at(&operation).is_some_and(|at| at > end_us) {
                    operation.complete = None;
                }
                operation
            })
            .collect();
        let mut wrong = prefix.clone();
        let flipped = wrong.iter_mut().find(|operation| **operation == history[index]).unwrap();
        flipped.complete = Some((end_us, KvResult::Value(Some(*stale))));
        return Some((prefix, wrong));
    }
    None
}

/// Reads every hot key once more after the clients stopped, as one more client each.
fn final_reads(cluster: &Cluster, shared: &Shared) -> Vec<(usize, Operation)> {
    let client = cluster.client(Duration::from_secs(10)).unwrap();
    (0..HOT_KEYS)
        .map(|key| {
            let invoke_us = shared.now_us();
            let read = client.get(hot_key(key).as_bytes()).unwrap();
            let value = read.map(|bytes| String::from_utf8(bytes).unwrap().parse().unwrap());
            let complete = Some((shared.now_us(), KvResult::Value(value)));
            let client = shared.new_client();
            (key, Operation { client, op: KvOp::Get, invoke_us, complete })
        })
        .collect()
}

/// Reads every acknowledged unique-key write back; the ones missing or changed.
fn lost_writes(cluster: &Cluster, acked: &[(String, String)]) -> Vec<(String, Option<String>)> {
    let client = cluster.client(Duration::from_secs(10)).unwrap();
    acked
        .iter()
        .filter_map(|(key, value)| {
            let read = client.get(key.as_bytes()).unwrap();
            let read = read.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
            (read.as_deref() != Some(value.as_str())).then(|| (key.clone(), read))
        })
        .collect()
}

/// Writes a key's history where a failure can be studied; its path.
fn dump(seed: u64, key: usize, history: &[Operation]) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("quorum-partitions-seed{seed}-{}.txt", hot_key(key)));
    let text: String = history.iter().map(|operation| format!("{operation:?}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn partitions_keep_the_history_linearizable_and_lose_no_acknowledged_write() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = Instant::now();
    let mut cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(reason) => return println!("skipped: {reason}"),
    };
    let cycles = env_number("QUORUM_PARTITION_CYCLES", 20) as usize;
    let seed = env_number("QUORUM_PARTITION_SEED", 1);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let serving_keys = keys_per_shard("serving");
    if let Err(error) = cluster.await_serving(&serving_keys, RECOVERY) {
        panic!("the cluster does not serve at the start: {error}\n{}", cluster.tail(0));
    }
    let shared = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        next_client: AtomicUsize::new(0),
        acked: AtomicUsize::new(0),
    });
    let threads: Vec<_> = (0..CLIENTS + WRITERS)
        .map(|thread| {
            let (shared, addresses) = (Arc::clone(&shared), cluster.addresses.clone());
            std::thread::spawn(move || {
                if thread < CLIENTS {
                    hot_client(thread, seed, &addresses, &shared)
                } else {
                    writer(thread - CLIENTS, &addresses, &shared)
                }
            })
        })
        .collect();

    // Every thread connected and going before the first fault.
    let deadline = Instant::now() + RECOVERY;
    while shared.acked.load(Ordering::Relaxed) < 500 {
        assert!(Instant::now() < deadline, "the clients make no progress before the faults");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stats = Stats::default();
    for cycle in 0..cycles {
        if let Err(error) =
            run_cycle(&mut cluster, cycle, &mut rng, &mut stats, &shared, &serving_keys)
        {
            shared.stop.store(true, Ordering::Relaxed);
            let tails: String = (0..NODES)
                .map(|node| format!("node {}:\n{}\n", node + 1, cluster.tail(node)))
                .collect();
            panic!("seed {seed}, cycle {cycle}: {error}\n{tails}");
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let records: Vec<Record> = threads.into_iter().map(|thread| thread.join().unwrap()).collect();
    cluster.await_serving(&serving_keys, RECOVERY).unwrap();

    let mut operations: Vec<(usize, Operation)> =
        records.iter().flat_map(|record| record.history.iter().cloned()).collect();
    operations.extend(final_reads(&cluster, &shared));
    let acked: Vec<(String, String)> =
        records.iter().flat_map(|record| record.acked.iter().cloned()).collect();
    let lost = lost_writes(&cluster, &acked);
    assert!(
        lost.is_empty(),
        "seed {seed}: {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    if let Err(error) = cluster.await_converged(RECOVERY) {
        panic!("seed {seed}: {error}");
    }
    cluster.assert_running("at the end");

    // Indeterminate writes whose value some client saw: they took effect after all.
    let seen: std::collections::HashSet<u64> = operations
        .iter()
        .filter_map(|(_, operation)| match &operation.complete {
            Some((_, KvResult::Value(Some(value))))
            | Some((_, KvResult::CompareAndSet { previous: Some(value), .. })) => Some(*value),
            _ => None,
        })
        .collect();
    let seen_after_all = operations
        .iter()
        .filter(|(_, operation)| operation.complete.is_none())
        .filter(|(_, operation)| match operation.op {
            KvOp::Put(value) | KvOp::CompareAndSet { new: value, .. } => seen.contains(&value),
            _ => false,
        })
        .count();
    let checking = Instant::now();
    let per_key = histories(operations);
    for (key, history) in per_key.iter().enumerate() {
        if let Err(error) = check_key(history) {
            let path = dump(seed, key, history);
            panic!(
                "seed {seed}: `{}`'s history of {} operations is not linearizable (written to \
                 {}): {}",
                hot_key(key),
                history.len(),
                path.display(),
                &error[..error.len().min(2000)]
            );
        }
    }
    let check_seconds = checking.elapsed().as_secs_f64();

    // The checker must see a stale read planted in this very history, after half the cycles
    // (so the history before it holds faults, and pending puts).
    let after_us = stats.heals_us.get(stats.heals_us.len() / 2).copied().unwrap_or(0);
    let (key, (prefix, wrong)) = per_key
        .iter()
        .enumerate()
        .find_map(|(key, history)| stale_read(history, after_us).map(|found| (key, found)))
        .expect("no read to turn stale in the recorded history");
    assert_eq!(check_key(&prefix), Ok(()), "a prefix of a linearizable history is linearizable");
    assert!(check_key(&wrong).is_err(), "the checker accepts a stale read on `{}`", hot_key(key));
    println!(
        "the checker rejects `{}`'s recorded history ({} operations, {} pending) with one read \
         turned stale",
        hot_key(key),
        wrong.len(),
        wrong.iter().filter(|operation| operation.complete.is_none()).count()
    );

    let (hot, writers) = records.split_at(CLIENTS);
    let sum =
        |records: &[Record], field: fn(&Record) -> usize| records.iter().map(field).sum::<usize>();
    let faults: Vec<String> = (0..KINDS.len())
        .map(|kind| {
            let (count, acked) = (stats.faults[kind], stats.acked_during[kind]);
            format!("{} {count} ({} acks per fault)", KINDS[kind], acked / count.max(1))
        })
        .collect();
    println!(
        "partitions, seed {seed}: {} cycles ({}); new leader before the heal in {} of {} \
         faults that cut the leader off; hot-key operations {} ok / {} failed gets / {} \
         indeterminate writes ({seen_after_all} of them seen later); {} hot keys linearizable \
         ({:.1} s to check); {} acknowledged unique writes read back, 0 lost ({} puts \
         unacknowledged); nodes converged; serving again within {} ms of a heal (mean {} ms); \
         longest stall a node logged {} ms; {:.1} s",
        stats.cycles,
        faults.join(", "),
        stats.replaced,
        stats.deposing,
        sum(hot, |record| record.ok),
        sum(hot, |record| record.failed),
        sum(hot, |record| record.indeterminate),
        HOT_KEYS,
        check_seconds,
        acked.len(),
        sum(writers, |record| record.indeterminate),
        stats.recovery_max.as_millis(),
        (stats.recovery_total / stats.cycles.max(1) as u32).as_millis(),
        cluster.longest_stall_ms(),
        started.elapsed().as_secs_f64()
    );
}

/// The TCP connections in `namespace` that are retransmitting with back-off: addresses, the
/// retransmission timeout, the back-off count and the unacknowledged segments (`ss -tin`).
fn backed_off(namespace: &str) -> Vec<String> {
    let text = run("ip", &["netns", "exec", namespace, "ss", "-tin"], None).unwrap();
    let mut out = Vec::new();
    let mut connection = String::new();
    for line in text.lines() {
        if line.starts_with("ESTAB") {
            let fields: Vec<&str> = line.split_whitespace().collect();
            connection = format!("{} -> {}", fields[3], fields[4]);
        } else if line.contains("backoff:") {
            let pick = |name: &str| {
                line.split_whitespace().find(|field| field.starts_with(name)).unwrap_or("")
            };
            out.push(format!(
                "{connection} {} {} {}",
                pick("rto:"),
                pick("backoff:"),
                pick("unacked:")
            ));
        }
    }
    out
}

/// A measurement, not a check: how long a follower cut off for a while takes to hear the
/// leader again once the network heals.
#[test]
#[ignore = "a measurement: run with --ignored"]
fn measure_catch_up_after_a_long_cut() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(reason) => return println!("skipped: {reason}"),
    };
    let serving_keys = keys_per_shard("serving");
    cluster.await_serving(&serving_keys, RECOVERY).unwrap();
    let shared = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        next_client: AtomicUsize::new(0),
        acked: AtomicUsize::new(0),
    });
    let load = {
        let (shared, addresses) = (Arc::clone(&shared), cluster.addresses.clone());
        std::thread::spawn(move || writer(0, &addresses, &shared))
    };
    let leader = cluster.await_leader(0, Duration::from_secs(10)).unwrap();
    let follower = (leader + 1) % NODES;
    let cut = Duration::from_millis(env_number("QUORUM_PARTITION_CUT_MS", 8000));
    cluster.net.set_faults(&Fault::LeaderInMajority { alone: follower }.cuts(), 0);
    std::thread::sleep(cut);
    let target: Vec<u64> = node_status(&cluster.addresses[leader], ClusterId(CLUSTER), false)
        .unwrap()
        .iter()
        .map(|status| status.commit_index.0)
        .collect();
    cluster.net.set_faults(&[], 0);
    let healed = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    for node in [leader, follower] {
        println!("node {}'s backed-off sockets 100 ms after the heal:", node + 1);
        for line in backed_off(&cluster.net.namespace(node)) {
            println!("  {line}");
        }
    }
    loop {
        let status = node_status(&cluster.addresses[follower], ClusterId(CLUSTER), false).unwrap();
        if status.iter().zip(&target).all(|(status, target)| status.commit_index.0 >= *target) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "node {} (a follower) cut off for {cut:?}: at the leader's commit position of the heal \
         {} ms after it",
        follower + 1,
        healed.elapsed().as_millis()
    );
    shared.stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
}

/// A measurement, not a check: how many puts one client gets through while shard 0's leader,
/// which it was talking to, is cut from its peers (the client still reaches every node), by
/// which node that leader was.
#[test]
#[ignore = "a measurement: run with --ignored"]
fn measure_clients_when_the_leader_is_cut_off() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(reason) => return println!("skipped: {reason}"),
    };
    let serving_keys = keys_per_shard("serving");
    cluster.await_serving(&serving_keys, RECOVERY).unwrap();
    let key = &keys_per_shard("cut")[0];
    let rounds = env_number("QUORUM_PARTITION_CYCLES", 9);
    for round in 0..rounds {
        let leader = cluster.await_leader(0, RECOVERY).unwrap();
        let client = cluster.client(REQUEST_TIMEOUT).unwrap();
        client.put(key.as_bytes(), b"before").unwrap();
        cluster.net.set_faults(&Fault::LeaderInMinority(leader).cuts(), 0);
        let cut = Instant::now();
        let (mut acked, mut failed) = (0, 0);
        while cut.elapsed() < Duration::from_millis(1500) {
            match client.put(key.as_bytes(), b"during") {
                Ok(()) => acked += 1,
                Err(_) => failed += 1,
            }
        }
        let view = cluster.view(&Fault::LeaderInMinority(leader));
        cluster.net.set_faults(&[], 0);
        println!(
            "round {round}: shard 0's leader node {} cut from its peers for 1.5 s: {acked} puts \
             acknowledged, {failed} failed; before the heal {view}",
            leader + 1
        );
        cluster.await_serving(&serving_keys, RECOVERY).unwrap();
        std::thread::sleep(Duration::from_secs(2));
    }
}
