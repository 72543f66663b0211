//! Structured logs from real node processes: with `--log-format json` every line of stderr is
//! one JSON object with a level, a target and fields, and the events an operator needs are
//! there with their fields: each role change, each snapshot, each WAL segment rotation, each
//! refused connection with its reason and the peer's address. (A failed sync's event is
//! checked by tests/disk_faults.rs, which can fail one.) A bad `--log-level` is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Cluster;
use quorum::core::{ClusterId, NodeId};
use quorum::transport::codec::{Body, Encoder, Frame, Hello, PROTOCOL_VERSION, Role};
use quorum::transport::framing::{read_frame, write_frame};

/// The node's log as JSON objects; panics on a line that is not one.
fn events(cluster: &Cluster, index: usize) -> Vec<serde_json::Value> {
    cluster
        .log_text(index)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"))
        })
        .collect()
}

/// Waits for an event whose message is `message`; returns it.
fn await_event(cluster: &Cluster, index: usize, message: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found =
            events(cluster, index).into_iter().find(|event| event["fields"]["message"] == message);
        if let Some(event) = found {
            return event;
        }
        assert!(Instant::now() < deadline, "no `{message}` event:\n{}", cluster.tail(index));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn json_logs_carry_role_changes_snapshots_rotations_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = (1..=3).map(|n| dir.path().join(format!("node-{n}"))).collect();
    let flags = ["--log-format", "json", "--snapshot-every-mib", "1"];
    let cluster = Cluster::start(71, dirs, dir.path(), &flags);
    let leader = cluster.await_leader(Duration::from_secs(20));

    let role = await_event(&cluster, leader, "role changed");
    assert_eq!(role["level"], "INFO", "{role}");
    assert!(role["target"].as_str().unwrap().starts_with("quorum::"), "{role}");
    let became_leader = events(&cluster, leader)
        .into_iter()
        .find(|event| {
            event["fields"]["message"] == "role changed" && event["fields"]["role"] == "Leader"
        })
        .expect("the leader logged becoming one");
    let fields = &became_leader["fields"];
    assert_eq!(fields["shard"], 0);
    assert_eq!(fields["leader"], leader as u64 + 1, "{fields}");
    assert!(fields["ballot"].as_str().unwrap().ends_with(&format!(".{}", leader + 1)), "{fields}");

    // Writes: 1 MiB segments rotate, and a snapshot every MiB.
    let client = cluster.client(Duration::from_secs(10)).unwrap();
    let value = vec![b'v'; 4000];
    for n in 0..800 {
        client.put(format!("k{n}").as_bytes(), &value).unwrap();
    }
    let rotated = await_event(&cluster, leader, "WAL segment rotated");
    assert!(rotated["fields"]["segment"].as_u64().unwrap() >= 1, "{rotated}");
    let snapshot = await_event(&cluster, leader, "snapshot taken");
    assert!(snapshot["fields"]["slot"].as_u64().unwrap() > 0, "{snapshot}");
    assert!(snapshot["fields"]["bytes"].as_u64().unwrap() > 1_000_000, "{snapshot}");

    // A client of another cluster is refused: reason and address.
    let mut stream = TcpStream::connect(&cluster.nodes[leader].address).unwrap();
    let local = stream.local_addr().unwrap().to_string();
    let hello = Frame {
        cluster_id: ClusterId(99),
        from: NodeId(0),
        shard: 0,
        body: Body::Hello(Hello { version: PROTOCOL_VERSION, role: Role::Client(5) }),
    };
    write_frame(&mut stream, &mut Encoder::default(), &hello).unwrap();
    stream.flush().unwrap();
    let answer = read_frame(&mut stream, 1 << 20).unwrap();
    assert!(matches!(answer.body, Body::HelloReply(reply) if reply.refusal.is_some()));
    let refused = await_event(&cluster, leader, "connection refused");
    assert_eq!(refused["level"], "WARN");
    assert_eq!(refused["fields"]["peer"], local.as_str(), "{refused}");
    assert!(refused["fields"]["reason"].as_str().unwrap().contains("cluster id 99"), "{refused}");
}

#[test]
fn a_bad_log_level_is_refused_with_one_message() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_quorum"))
        .args(["node", "--log-level", "info,quorum=loud", "--id", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("quorum node: --log-level `info,quorum=loud`: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
