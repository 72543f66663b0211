//! The coordination API on real processes (issue #18, docs/coordination.md): a lock whose
//! first holder is paused past its lease, so the second takes it and the first's fenced write
//! is refused; a watcher across a `kill -9` of a leader that sees every acknowledged write
//! exactly once, in revision order; leases that end when nobody keeps them alive; a key's
//! watch held at its shard's leader until the key changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, quorum};
use quorum::client::RangeOptions;
use quorum::core::ReadOptions;
use quorum::machine::kv::{CoordCommand, CoordReply, KeyRange};
use quorum::machine::shard_for_key;

fn start(dir: &Path, cluster_id: u64) -> Cluster {
    let dirs = (1..=3).map(|n| dir.join(format!("node-{n}"))).collect();
    let cluster = Cluster::start(cluster_id, dirs, dir, &["--shards", "2"]);
    cluster.await_serving(Duration::from_secs(20));
    cluster
}

fn seeds(cluster: &Cluster) -> String {
    cluster.nodes.iter().map(|node| node.address.clone()).collect::<Vec<_>>().join(",")
}

fn await_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text.trim().to_string();
        }
        assert!(Instant::now() < deadline, "{} never written", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

#[test]
fn a_paused_lock_holder_loses_the_lock_and_its_fenced_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path(), 81);
    let seeds = seeds(&cluster);
    let binary = env!("CARGO_BIN_EXE_quorum");
    // The lock and the key it guards share a hash tag, so one transaction fences the write.
    let fenced_write = |value: &str| {
        format!(
            "{binary} txn --cluster {seeds} --if \"lock {{job}}lock token = $QUORUM_LOCK_TOKEN\" \
             --then 'put {{job}}out {value}'"
        )
    };
    let (first_pid, first_token, first_status) = (
        dir.path().join("first.pid"),
        dir.path().join("first.token"),
        dir.path().join("first.status"),
    );
    // The first holder writes its token, stops itself (a long GC pause, say), and once
    // continued makes its fenced write.
    let script = format!(
        "echo $$ > {pid}; echo $QUORUM_LOCK_TOKEN > {token}; kill -STOP $$; {write}; echo $? > {status}",
        pid = first_pid.display(),
        token = first_token.display(),
        write = fenced_write("first"),
        status = first_status.display(),
    );
    let mut first = Command::new(binary)
        .args(["lock", "--cluster", &seeds, "--ttl", "2", "{job}lock", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let token: u64 = await_file(&first_token, Duration::from_secs(20)).parse().unwrap();
    let child_pid: u32 = await_file(&first_pid, Duration::from_secs(5)).parse().unwrap();
    // The holder's own process stops too: nobody keeps its lease alive.
    signal(first.id(), "-STOP");
    let stopped_at = Instant::now();

    // The second holder waits its turn and gets the lock once the first lease has ended.
    let script = format!("echo $QUORUM_LOCK_TOKEN; {}", fenced_write("second"));
    let (code, stdout, stderr) = quorum(&[
        "lock",
        "--cluster",
        &seeds,
        "--ttl",
        "10",
        "--wait",
        "30",
        "{job}lock",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code, 0, "the second holder's fenced write: {stdout} {stderr}");
    let waited = stopped_at.elapsed();
    // Its last keep-alive came at most a third of the TTL before the pause.
    assert!(
        waited >= Duration::from_millis(1300),
        "the lock moved after {waited:?}, before the TTL"
    );
    let second: u64 = stdout.lines().next().unwrap().parse().unwrap();
    assert!(second > token, "fencing tokens only grow: {token} then {second}");

    // The first holder wakes: its write, fenced by the old token, is refused.
    signal(first.id(), "-CONT");
    signal(child_pid, "-CONT");
    let status = await_file(&first_status, Duration::from_secs(20));
    assert_eq!(status, "3", "the stale holder's transaction failed its compare");
    let _ = first.wait();
    let (code, value, _) = quorum(&["kv", "--cluster", &seeds, "get", "{job}out"]);
    assert_eq!((code, value.trim()), (0, "second"), "the second holder's work stands");
    // Every lease is gone: each holder's ended with it.
    let (_, leases, _) = quorum(&["lease", "--cluster", &seeds, "list", "--json"]);
    assert_eq!(leases.trim(), "[]");
}

#[test]
fn a_watcher_sees_every_acknowledged_write_once_in_order_across_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(dir.path(), 82);
    let seeds = seeds(&cluster);
    let client = cluster.client(Duration::from_secs(10)).unwrap();
    let from = client.put_leased(b"w/start", b"", 0).unwrap();
    let out = std::fs::File::create(dir.path().join("watch.out")).unwrap();
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_quorum"))
        .args(["watch", "--cluster", &seeds, "--timeout-ms", "30000"])
        .args(["w/", "--prefix", "--json", "--rev", &from.to_string()])
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut unknown = Vec::new();
    for n in 0..600 {
        if n == 200 {
            let leader = cluster.shard_leader(0).expect("shard 0 has a leader");
            cluster.kill(leader);
        }
        if n == 400 {
            let down = (0..3).find(|&i| cluster.nodes[i].child.is_none()).unwrap();
            cluster.spawn(down);
        }
        let key = format!("w/{n:04}");
        match client.put_leased(key.as_bytes(), n.to_string().as_bytes(), 0) {
            Ok(revision) => {
                acked.insert(key, revision);
            }
            Err(_) => unknown.push(key),
        }
    }
    let last = *acked.values().max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let text = std::fs::read_to_string(dir.path().join("watch.out")).unwrap();
        let events: Vec<serde_json::Value> =
            text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        if events.iter().any(|event| event["revision"].as_u64() >= Some(last)) {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "the watch never reached revision {last}: {} events",
            events.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = watcher.kill();
    let _ = watcher.wait();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut previous = 0;
    for event in &events {
        let revision = event["revision"].as_u64().unwrap();
        assert!(revision > previous, "in revision order, each once: {previous} then {revision}");
        previous = revision;
        let key = event["key"].as_str().unwrap().to_string();
        assert!(seen.insert(key.clone(), revision).is_none(), "{key} seen twice");
    }
    for (key, revision) in &acked {
        let around: Vec<String> = events
            .iter()
            .take(12)
            .map(|event| format!("{} {}", event["revision"], event["key"]))
            .collect();
        assert_eq!(seen.get(key), Some(revision), "{key}, acknowledged at {revision}: {around:?}");
    }
    for key in seen.keys() {
        assert!(
            acked.contains_key(key) || unknown.contains(key) || key == "w/start",
            "{key} was never written"
        );
    }
    // A range read is one cut: every acknowledged key, at the revision it names.
    let range = KeyRange::Prefix(b"w/".to_vec());
    let cut = client.range(&range, RangeOptions::default()).unwrap();
    assert!(cut.revision >= last);
    for key in acked.keys() {
        assert!(cut.entries.iter().any(|entry| entry.key == key.as_bytes()), "{key} in the cut");
    }
    println!(
        "{} acknowledged, {} of unknown fate, {} events",
        acked.len(),
        unknown.len(),
        events.len()
    );
}

#[test]
fn keys_with_a_lease_go_when_it_is_no_longer_kept_alive() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path(), 83);
    let seeds = seeds(&cluster);
    let (code, granted, stderr) = quorum(&["lease", "--cluster", &seeds, "grant", "2", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let granted: serde_json::Value = serde_json::from_str(&granted).unwrap();
    assert_eq!(granted["ttl"], 2);
    let id = granted["id"].as_u64().unwrap().to_string();
    for key in ["svc/a", "svc/b", "svc/c"] {
        let (code, _, stderr) =
            quorum(&["kv", "--cluster", &seeds, "put", key, "up", "--lease", &id]);
        assert_eq!(code, 0, "{stderr}");
    }
    // Kept alive past its TTL, it lives.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(700));
        let (code, _, stderr) = quorum(&["lease", "--cluster", &seeds, "keepalive", &id, "--once"]);
        assert_eq!(code, 0, "{stderr}");
    }
    let (_, listed, _) =
        quorum(&["kv", "--cluster", &seeds, "get", "svc/", "--prefix", "--keys-only"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    // Left alone, it ends, and its keys with it.
    let ended = Instant::now();
    loop {
        let (_, listed, _) = quorum(&["kv", "--cluster", &seeds, "get", "svc/", "--prefix"]);
        if listed.trim().is_empty() {
            break;
        }
        assert!(
            ended.elapsed() < Duration::from_secs(10),
            "the keys outlived their lease: {listed}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ended.elapsed() >= Duration::from_millis(1300), "ended early: {:?}", ended.elapsed());
    let (code, _, stderr) = quorum(&["lease", "--cluster", &seeds, "keepalive", &id, "--once"]);
    assert_ne!(code, 0);
    assert!(stderr.contains(&format!("no lease {id}")), "{stderr}");
    // Bad input is refused with a message, nothing applied.
    let (code, _, stderr) = quorum(&["lease", "--cluster", &seeds, "grant", "0"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) =
        quorum(&["kv", "--cluster", &seeds, "put", "k", "v", "--lease", "12345"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no lease 12345"), "{stderr}");
    let (code, _, stderr) = quorum(&["txn", "--cluster", &seeds, "--if", "k wat = 3"]);
    assert_eq!(code, 2, "{stderr}");
}

/// Reads lines from a child's standard output as they come.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let stdout = child.stdout.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

#[test]
fn an_election_passes_to_the_next_candidate_when_its_leader_resigns_and_observers_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path(), 84);
    let seeds = seeds(&cluster);
    let binary = env!("CARGO_BIN_EXE_quorum");
    let campaign = |value: &str| {
        Command::new(binary)
            .args(["elect", "--cluster", &seeds, "--ttl", "5", "--json", "scheduler", value])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = campaign("node-a");
    let first_lines = lines_of(&mut first);
    let led: serde_json::Value =
        serde_json::from_str(&first_lines.recv_timeout(Duration::from_secs(20)).unwrap()).unwrap();
    assert_eq!((led["leader"].as_bool(), led["value"].as_str()), (Some(true), Some("node-a")));
    let mut second = campaign("node-b");
    let second_lines = lines_of(&mut second);
    let mut observer = Command::new(binary)
        .args(["elect", "--cluster", &seeds, "--json", "scheduler"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let observed = lines_of(&mut observer);
    let now: serde_json::Value =
        serde_json::from_str(&observed.recv_timeout(Duration::from_secs(20)).unwrap()).unwrap();
    assert_eq!(now["value"], "node-a", "{now}");
    assert!(
        second_lines.recv_timeout(Duration::from_millis(500)).is_err(),
        "the second candidate waits while the first leads"
    );
    // The leader resigns (SIGTERM): the second candidate leads, with a higher token.
    signal(first.id(), "-TERM");
    assert!(first.wait().unwrap().success());
    let next: serde_json::Value =
        serde_json::from_str(&second_lines.recv_timeout(Duration::from_secs(20)).unwrap()).unwrap();
    assert_eq!(next["value"], "node-b");
    assert!(next["token"].as_u64() > led["token"].as_u64(), "{led} then {next}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line =
            observed.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["value"] == "node-b" {
            assert_eq!(event["token"], next["token"]);
            break;
        }
    }
    for mut child in [second, observer] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A key's watch waits at its shard's leader (`CoordCommand::ChangesWait`): held while nothing
/// changes, answered as soon as the key does. (A node that answered every wait at once, empty,
/// made each watcher spin on its shard: 1,000 watchers saw 40 ms delivery at 10 puts/s.)
#[test]
fn a_key_watch_is_held_at_the_leader_until_its_key_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path(), 83);
    let client = cluster.client(Duration::from_secs(10)).unwrap();
    let key = b"held/k".to_vec();
    let shard = shard_for_key(&key, usize::from(client.shards())) as u16;
    let written = client.put_leased(&key, b"0", 0).unwrap();
    let wait = |from: u64, wait_ms: u32| {
        let range = KeyRange::Key(key.clone());
        let command = CoordCommand::ChangesWait { range, from, limit: 0, locks: false, wait_ms };
        let began = Instant::now();
        let (reply, _) = client.coordinate(shard, &command, ReadOptions::default()).unwrap();
        let CoordReply::Changes(found) = reply else { panic!("a change feed: {reply:?}") };
        (found.changes, began.elapsed())
    };

    let (changes, took) = wait(written + 1, 1_500);
    assert!(changes.is_empty(), "nothing changed: {changes:?}");
    assert!(took >= Duration::from_millis(1_200), "held for its wait, not answered in {took:?}");

    let writer = cluster.client(Duration::from_secs(10)).unwrap();
    let key_again = key.clone();
    let put = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        writer.put_leased(&key_again, b"1", 0).unwrap()
    });
    let (changes, took) = wait(written + 1, 5_000);
    let revision = put.join().unwrap();
    assert_eq!(changes.iter().map(|change| change.revision).collect::<Vec<_>>(), vec![revision]);
    assert!(took >= Duration::from_millis(250), "it waited for the put: {took:?}");
    assert!(took < Duration::from_millis(4_000), "answered by the put, not its deadline: {took:?}");
}
