//! Network partitions between real `quorum node` processes (issue #21, point 4): each node in
//! a network namespace of its own, joined by a bridge this test makes; partitions are routes
//! that drop a node's packets to another (`ip route add blackhole`, inside the sender's
//! namespace), so a cut is silent, as a broken link is: no reset, no error, packets vanish.
//!
//! Cycles, under concurrent clients: the leader isolated (both directions), a follower
//! isolated, the leader's packets to the followers dropped while theirs still reach it (a
//! one-way cut; over TCP it stalls both directions of each connection, and the leader can still
//! hear the followers' heartbeats and elections), a follower's packets to the leader dropped;
//! each held a while, then healed, then the cluster must serve again. Clients in the root
//! namespace reach every node throughout (only node-to-node traffic is cut), so they meet
//! deposed and isolated leaders.
//!
//! Checked: the history of gets and puts on a few keys is linearizable (the simulator's
//! checker, `sim::linearizability`, per key; an operation whose reply never came may have
//! taken effect or not, and its client goes on under a new identity), and every put of unique
//! keys that was acknowledged is read back at the end. A test feeds the checker the real
//! history with one read changed, to show it would catch a stale read.
//!
//! Needs root (network namespaces and a bridge); otherwise it prints `skipped: <reason>`.
//! `QUORUM_PARTITION_CYCLES` (default 20) sets the cycles.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, NodeSpec, Writers, assert_none_lost};
use quorum::client::{Client, ClientError, ClientOptions};
use quorum::sim::linearizability::{KvOp, KvResult, Operation, check_key};

const NODES: usize = 3;
const PORT: u16 = 7000;
/// Clients whose gets and puts on [`KEYS`] make the checked history.
const CLIENTS: usize = 4;
const KEYS: usize = 3;
/// How long each partition is held.
const HOLD: Duration = Duration::from_millis(1200);

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The namespaces, their links and the bridge, named after this process; removed on drop.
struct Net {
    prefix: String,
    subnet: String,
    /// The blackhole routes in place: (from node, to node).
    cuts: Vec<(usize, usize)>,
}

impl Net {
    /// Node `i` in namespace `{prefix}n{i}` at `{subnet}.{i + 1}`, its veth's other end on
    /// the bridge, which holds `{subnet}.254` so this namespace reaches every node.
    fn new() -> Result<Net, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: network namespaces need CAP_NET_ADMIN".to_string());
        }
        let pid = std::process::id();
        let prefix = format!("qp{}", pid % 100_000);
        let subnet = format!("10.{}.{}", 100 + pid % 100, (pid / 100) % 250);
        let net = Net { prefix, subnet, cuts: Vec::new() };
        let bridge = net.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{}.254/24", net.subnet), "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for node in 0..NODES {
            let (ns, outer, inner) = net.names(node);
            run("ip", &["netns", "add", &ns])?;
            run("ip", &["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
            run("ip", &["link", "set", &inner, "netns", &ns])?;
            run("ip", &["link", "set", &outer, "master", &bridge])?;
            run("ip", &["link", "set", &outer, "up"])?;
            let address = format!("{}/24", net.ip(node));
            run("ip", &["netns", "exec", &ns, "ip", "addr", "add", &address, "dev", &inner])?;
            run("ip", &["netns", "exec", &ns, "ip", "link", "set", &inner, "up"])?;
            run("ip", &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// Namespace, outer and inner veth names of `node` (at most 15 bytes each).
    fn names(&self, node: usize) -> (String, String, String) {
        let p = &self.prefix;
        (format!("{p}n{node}"), format!("{p}a{node}"), format!("{p}b{node}"))
    }

    fn ip(&self, node: usize) -> String {
        format!("{}.{}", self.subnet, node + 1)
    }

    /// Drops every packet `from` sends to `to`.
    fn cut(&mut self, from: usize, to: usize) {
        let (ns, _, _) = self.names(from);
        let target = format!("{}/32", self.ip(to));
        run("ip", &["netns", "exec", &ns, "ip", "route", "add", "blackhole", &target]).unwrap();
        self.cuts.push((from, to));
    }

    /// Cuts `node` off from every other node, both ways.
    fn isolate(&mut self, node: usize) {
        for other in (0..NODES).filter(|other| *other != node) {
            self.cut(node, other);
            self.cut(other, node);
        }
    }

    /// Removes every cut.
    fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.cuts) {
            let (ns, _, _) = self.names(from);
            let target = format!("{}/32", self.ip(to));
            run("ip", &["netns", "exec", &ns, "ip", "route", "del", "blackhole", &target]).unwrap();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for node in 0..NODES {
            // Deleting a namespace deletes the veth pair in it.
            let _ = run("ip", &["netns", "del", &self.names(node).0]);
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}

/// The history the clients record, shared: (key, operation).
type History = Arc<Mutex<Vec<(usize, Operation)>>>;

/// A client doing random gets and puts on [`KEYS`] keys until stopped. Puts write values no
/// other put writes. An operation without a reply (timed out, cut off) stays pending for good,
/// and the client goes on under a new identity: the checker's clients are sequential, and the
/// pending one may still take effect later.
fn history_client(
    client: Client,
    index: usize,
    epoch: Instant,
    history: &History,
    stop: &AtomicBool,
) -> (u64, u64) {
    let (mut identity, mut completed, mut pending) = (index, 0u64, 0u64);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (index as u64 + 1);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = (next() % KEYS as u64) as usize;
        let name = format!("reg-{key}");
        let invoke_us = epoch.elapsed().as_micros() as u64;
        let (op, result) = if next() % 2 == 0 {
            let read = client.get(name.as_bytes()).map(|value| {
                KvResult::Value(value.map(|bytes| {
                    String::from_utf8(bytes).unwrap().parse::<u64>().expect("a value we wrote")
                }))
            });
            (KvOp::Get, read)
        } else {
            written += 1;
            let value = (index as u64 + 1) * 1_000_000_000 + written;
            let done = client.put(name.as_bytes(), value.to_string().as_bytes());
            (KvOp::Put(value), done.map(|()| KvResult::Done))
        };
        let complete_us = epoch.elapsed().as_micros() as u64;
        let complete = match result {
            Ok(result) => {
                completed += 1;
                Some((complete_us, result))
            }
            Err(ClientError::Rejected(reason)) => panic!("a request was rejected: {reason}"),
            Err(_) => None,
        };
        let indeterminate = complete.is_none();
        history
            .lock()
            .unwrap()
            .push((key, Operation { client: identity, op, invoke_us, complete }));
        if indeterminate {
            pending += 1;
            identity += CLIENTS;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (completed, pending)
}

/// Checks each key's history; the first key's error, if any.
fn check_history(history: &[(usize, Operation)]) -> Result<(), String> {
    for key in 0..KEYS {
        let operations: Vec<Operation> =
            history.iter().filter(|(k, _)| *k == key).map(|(_, op)| op.clone()).collect();
        check_key(&operations).map_err(|error| format!("key reg-{key}: {error}"))?;
    }
    Ok(())
}

/// One partition, by cycle: what it does, to whom.
fn partition(net: &mut Net, cycle: usize, leader: usize) -> String {
    let follower = (leader + 1 + cycle / 4 % 2) % NODES;
    match cycle % 4 {
        0 => {
            net.isolate(leader);
            format!("leader {} isolated", leader + 1)
        }
        1 => {
            net.isolate(follower);
            format!("follower {} isolated", follower + 1)
        }
        2 => {
            for other in (0..NODES).filter(|other| *other != leader) {
                net.cut(leader, other);
            }
            format!("leader {}'s packets to the followers dropped", leader + 1)
        }
        _ => {
            net.cut(follower, leader);
            format!("follower {}'s packets to leader {} dropped", follower + 1, leader + 1)
        }
    }
}

#[test]
fn partitions_keep_the_history_linearizable_and_lose_no_acknowledged_write() {
    let started = Instant::now();
    let mut net = match Net::new() {
        Ok(net) => net,
        Err(reason) => return println!("skipped: {reason}"),
    };
    let cycles: usize =
        std::env::var("QUORUM_PARTITION_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let specs = (0..NODES)
        .map(|node| NodeSpec {
            address: format!("{}:{PORT}", net.ip(node)),
            data_dir: dir.path().join(format!("data-{}", node + 1)),
            wrapper: ["ip", "netns", "exec", &net.names(node).0].map(str::to_string).to_vec(),
        })
        .collect();
    let mut cluster = Cluster::start_on(82, specs, dir.path(), &[]);
    cluster.await_serving(Duration::from_secs(30));

    let epoch = Instant::now();
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let options = ClientOptions {
        cluster_id: cluster.cluster_id,
        request_timeout: Duration::from_secs(4),
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    let seeds: Vec<String> = cluster.nodes.iter().map(|node| node.address.clone()).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let client = Client::connect(&seeds, options.clone()).unwrap();
            let (history, stop) = (Arc::clone(&history), Arc::clone(&stop));
            std::thread::spawn(move || history_client(client, index, epoch, &history, &stop))
        })
        .collect();
    let writers = Writers::start(&cluster, 2);

    let (mut faults, mut leader_changes) = (Vec::new(), 0);
    for cycle in 0..cycles {
        let leader = cluster.await_leader(Duration::from_secs(20));
        faults.push(partition(&mut net, cycle, leader));
        std::thread::sleep(HOLD);
        net.heal();
        cluster.await_serving(Duration::from_secs(30));
        cluster.assert_none_exited(&faults[cycle]);
        let after = cluster.await_leader(Duration::from_secs(20));
        leader_changes += usize::from(after != leader);
        // Cut off for four election timeouts, an isolated leader is replaced: else the cut
        // did not take.
        assert!(cycle % 4 != 0 || after != leader, "{}: still the leader after", faults[cycle]);
    }
    stop.store(true, Ordering::Relaxed);
    let (mut completed, mut pending) = (0, 0);
    for client in clients {
        let (done, unknown) = client.join().unwrap();
        completed += done;
        pending += unknown;
    }
    let seen = writers.stop();
    assert_none_lost(&cluster, &seen.acked);
    let history = history.lock().unwrap().clone();
    let checking = Instant::now();
    check_history(&history).unwrap_or_else(|error| panic!("not linearizable: {error}"));
    let checked_in = checking.elapsed();
    assert!(completed > 1000, "only {completed} operations completed");

    // The checker on this very history, with one read made stale: a get invoked after another
    // get of its key had returned a value now claims the key absent. Nothing deletes, so no
    // linearization allows it.
    let mut stale = history.clone();
    let mut first_read_done: [Option<u64>; KEYS] = [None; KEYS];
    let planted = stale.iter_mut().position(|(key, operation)| {
        let Some((done_us, KvResult::Value(Some(_)))) = operation.complete else { return false };
        if first_read_done[*key].is_some_and(|first| operation.invoke_us > first) {
            operation.complete = Some((done_us, KvResult::Value(None)));
            return true;
        }
        first_read_done[*key] = Some(first_read_done[*key].map_or(done_us, |t| t.min(done_us)));
        false
    });
    assert!(planted.is_some(), "no second read of a written value to make stale");
    assert!(check_history(&stale).is_err(), "the checker accepted a stale read");

    let mut kinds: Vec<(String, usize)> = Vec::new();
    for fault in &faults {
        let kind = fault.replace(|c: char| c.is_ascii_digit(), "N").replace(
            "leader N's packets to the followers",
            "the leader's packets to the followers",
        );
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => *count += 1,
            None => kinds.push((kind, 1)),
        }
    }
    println!(
        "partitions: {cycles} cycles ({}), {leader_changes} of them ending under a new leader; history: {} operations on {KEYS} keys, {completed} \
         completed, {pending} without a reply, linearizable (checked in {:.1} s; the checker \
         refuses it with one read made stale); {} unique-key writes acknowledged, all read \
         back, 0 lost; {:.1} s",
        kinds.iter().map(|(kind, n)| format!("{n}× {kind}")).collect::<Vec<_>>().join(", "),
        history.len(),
        checked_in.as_secs_f64(),
        seen.acked.len(),
        started.elapsed().as_secs_f64()
    );
}
