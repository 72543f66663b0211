//! `quorum status --cluster` and `quorum health` against real node processes: a healthy
//! cluster is one table and exit code 0; a stopped member makes health fail and name it; a
//! majority gone leaves the shard without a leader, and health says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, quorum};

/// Runs `quorum health` until its exit code is `code`; its last output.
fn await_health(seed: &str, code: i32, timeout: Duration) -> (String, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, stdout, stderr) =
            quorum(&["health", "--cluster", seed, "--cluster-id", "41", "--timeout-ms", "500"]);
        if got == code {
            return (stdout, stderr);
        }
        assert!(Instant::now() < deadline, "health never exited {code}: {stdout}{stderr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn health_names_a_stopped_member_and_a_shard_without_a_leader() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = (1..=3).map(|n| dir.path().join(format!("node-{n}"))).collect();
    let mut cluster = Cluster::start(41, dirs, dir.path(), &[]);
    cluster.await_serving(Duration::from_secs(20));
    let seed = cluster.nodes[0].address.clone();

    let (stdout, _) = await_health(&seed, 0, Duration::from_secs(20));
    assert_eq!(stdout.trim(), "healthy");
    let (code, stdout, stderr) =
        quorum(&["status", "--cluster", &seed, "--cluster-id", "41", "--json", "--digest"]);
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(status["shards"], 1);
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    for member in members {
        assert_eq!(member["reachable"], true, "{member}");
        let shards = member["shards"].as_array().unwrap();
        assert_eq!(shards.len(), 1, "{member}");
        for shard in shards {
            assert!(shard["ballot"]["round"].as_u64().unwrap() >= 1, "{shard}");
            assert!(shard["commit_index"].as_u64().unwrap() >= 1, "{shard}");
            assert!(shard["leader"].as_u64().is_some(), "{shard}");
            assert!(shard["session_limits"]["sessions_max"].as_u64().is_some(), "{shard}");
        }
    }
    for shard in status["leaders"].as_array().unwrap() {
        assert!(shard.as_u64().is_some(), "every shard leads: {status}");
    }
    let (code, table, _) = quorum(&["status", "--cluster", &seed, "--cluster-id", "41"]);
    assert_eq!(code, 0);
    assert!(table.starts_with("member address"), "{table}");
    assert_eq!(table.lines().filter(|line| line.contains("127.0.0.1:")).count(), 3, "{table}");

    // Member 3 stopped: unhealthy, and the reason names it.
    let stopped = cluster.nodes[2].address.clone();
    cluster.kill(2);
    let (_, stderr) = await_health(&seed, 1, Duration::from_secs(10));
    assert!(
        stderr.contains(&format!("member 3 ({stopped}) is unreachable")),
        "health names the stopped member: {stderr}"
    );
    let (code, stdout, _) = quorum(&[
        "health",
        "--cluster",
        &seed,
        "--cluster-id",
        "41",
        "--json",
        "--timeout-ms",
        "500",
    ]);
    assert_eq!(code, 1);
    let health: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(health["healthy"], false);
    let unreachable: Vec<&serde_json::Value> = health["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|problem| problem["kind"] == "unreachable")
        .collect();
    assert_eq!(unreachable.len(), 1, "{health}");
    assert_eq!(unreachable[0]["member"], 3);
    assert_eq!(unreachable[0]["address"], stopped.as_str());

    // Two of three gone: the last one cannot lead (check-quorum), and health says so.
    cluster.kill(1);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, _, stderr) =
            quorum(&["health", "--cluster", &seed, "--cluster-id", "41", "--timeout-ms", "500"]);
        assert_eq!(code, 1, "{stderr}");
        if stderr.contains("shard 0 has no leader among the members that answered") {
            assert!(stderr.contains("member 2 ("), "{stderr}");
            break;
        }
        assert!(Instant::now() < deadline, "the lone member still leads: {stderr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing reachable at all: still a clear answer and exit code 1.
    cluster.kill(0);
    let (code, _, stderr) = quorum(&["health", "--cluster", &seed, "--timeout-ms", "500"]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with("quorum health: unhealthy: cannot reach the cluster"), "{stderr}");
}
