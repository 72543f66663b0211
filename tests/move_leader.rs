//! Leadership transfer on real node processes (protocol.md §3.10): `quorum move-leader` hands
//! every shard to each voter in turn under writes, and a rolling restart by SIGTERM hands
//! each stopping node's shards over first; no acknowledged write is lost. Bad requests are
//! refused with a reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Writers, assert_none_lost, quorum};

const CLUSTER_ID: &str = "43";

/// A writer that times each of its puts: the longest one so far, in µs.
fn timed_writer(
    cluster: &Cluster,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let longest = Arc::new(AtomicU64::new(0));
    let client = cluster.client(Duration::from_secs(10)).unwrap();
    let seen = longest.clone();
    let thread = std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let started = Instant::now();
            if client.put(format!("timed-{n}").as_bytes(), b"v").is_ok() {
                seen.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
        }
    });
    (longest, thread)
}

/// SIGTERMs node `index` and waits for it to exit; its log.
fn terminate(cluster: &mut Cluster, index: usize) -> String {
    let pid = cluster.nodes[index].child.as_ref().unwrap().id();
    // SAFETY: `kill` has no memory effects; the pid is our own live child's.
    assert_eq!(unsafe { libc::kill(libc::pid_t::try_from(pid).unwrap(), libc::SIGTERM) }, 0);
    let status = cluster.await_exit(index, Duration::from_secs(20));
    assert!(status.success(), "node {} exited {status:?}: {}", index + 1, cluster.tail(index));
    cluster.log_text(index)
}

#[test]
fn move_leader_hands_every_shard_to_each_voter_and_a_rolling_restart_hands_over_first() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = (1..=3).map(|n| dir.path().join(format!("node-{n}"))).collect();
    let mut cluster = Cluster::start(43, dirs, dir.path(), &["--shards", "2"]);
    cluster.await_serving(Duration::from_secs(20));
    let seed = cluster.nodes[0].address.clone();
    let writers = Writers::start(&cluster, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let (longest, timed) = timed_writer(&cluster, stop.clone());
    writers.await_acked(200, Duration::from_secs(20), "before the moves");

    for to in [2u16, 3, 1] {
        let target = to.to_string();
        let (code, stdout, stderr) = quorum(&[
            "move-leader",
            "--node",
            &seed,
            "--to",
            &target,
            "--cluster-id",
            CLUSTER_ID,
            "--json",
        ]);
        assert_eq!(code, 0, "move-leader --to {to}: {stdout}{stderr}");
        let moves: Vec<serde_json::Value> =
            stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(moves.len(), 2, "one line per shard: {stdout}");
        for (shard, moved) in moves.iter().enumerate() {
            assert_eq!(moved["shard"], shard, "{moved}");
            assert_eq!(moved["to"], to, "{moved}");
            eprintln!("shard {shard} -> node {to}: {} ms (from {})", moved["ms"], moved["from"]);
        }
        writers.await_acked(100, Duration::from_secs(20), "after a move");
    }
    eprintln!("longest write during the moves: {} µs", longest.swap(0, Ordering::Relaxed));

    // A rolling restart: each node stops by SIGTERM, handing over what it leads first.
    for index in 0..3 {
        let led_before = (0..2).filter(|shard| cluster.shard_leader(*shard) == Some(index)).count();
        let log = terminate(&mut cluster, index);
        let line = log.lines().find(|line| line.contains("leadership handed over")).unwrap_or("");
        assert!(line.contains("still_led=0"), "node {} (led {led_before}): {line}", index + 1);
        writers.await_acked(100, Duration::from_secs(20), "with a node stopped");
        cluster.spawn(index);
        cluster.await_caught_up(index, (index + 1) % 3, Duration::from_secs(30));
    }
    eprintln!("longest write during the rolling restart: {} µs", longest.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    timed.join().unwrap();
    let seen = writers.stop();
    eprintln!("{} writes acknowledged, {} failed otherwise", seen.acked.len(), seen.other_errors);
    assert_none_lost(&cluster, &seen.acked);
}

#[test]
fn move_leader_refuses_what_cannot_be_done_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = (1..=3).map(|n| dir.path().join(format!("node-{n}"))).collect();
    let cluster = Cluster::start(43, dirs, dir.path(), &[]);
    cluster.await_serving(Duration::from_secs(20));
    let seed = cluster.nodes[0].address.clone();
    for (extra, mentions) in [
        (&["--to", "9"][..], "node 9 is not a member"),
        (&["--to", "2", "--shard", "5"][..], "no shard 5: the cluster has 1"),
    ] {
        let mut args = vec!["move-leader", "--node", seed.as_str(), "--cluster-id", CLUSTER_ID];
        args.extend(extra);
        let (code, _, stderr) = quorum(&args);
        assert_eq!(code, 1, "{extra:?}: {stderr}");
        assert!(stderr.contains(mentions), "{extra:?} should say {mentions}: {stderr}");
    }
    let (code, _, stderr) = quorum(&["move-leader", "--node", "127.0.0.1:1", "--to", "2"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot reach the cluster"), "{stderr}");
}
