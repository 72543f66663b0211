//! `GET /metrics`, `/ready` and `/health` of real `quorum node` processes (`--metrics-listen`,
//! docs/operations.md): a real Prometheus text-format parser (the `prometheus_client` Python
//! package's, Debian's python3-prometheus-client) reads every node's metrics without error;
//! the commands counter of every node rises by at least the writes made, and the WAL's
//! counters, the fsync, commit latency and batch size histograms move with them; `/ready` is
//! 200 on a healthy cluster and 503, naming the shard and why, on a node whose peers were
//! killed. `/metrics` and `/ready` answer the same on the HTTP front end's port.
//!
//! Without that Python package the parser's part is reported SKIPPED (with the package to
//! install) and the rest still runs; .ci/run installs it, so in CI nothing is skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Cluster;

/// Writes made between the two scrapes.
const WRITES: u64 = 300;

/// An answer to a GET: status, headers (names lower-cased), body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// `GET path` over HTTP/1.1 on a connection of its own.
fn get(address: &str, path: &str) -> Answer {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a whole HTTP answer");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_string()))
        .collect();
    Answer { status, headers, body: body.to_string() }
}

/// A Python with the `prometheus_client` package (Debian's first, whatever else is on the path).
fn python() -> Option<String> {
    ["/usr/bin/python3", "python3"].into_iter().map(str::to_string).find(|python| {
        Command::new(python)
            .args(["-c", "import prometheus_client.parser"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

/// Reads `text` with `prometheus_client`'s text-format parser, which raises on anything it
/// cannot read: every family as `name → (type, help, [(sample, labels, value)])`, as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    if family.name in families:
        raise ValueError("family %s appears twice" % family.name)
    families[family.name] = {
        "type": family.type,
        "help": family.documentation,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
print(json.dumps(families))
"#;

/// `text` through the real parser: its families, or a panic with the parser's error.
fn parse_with_prometheus_client(python: &str, text: &str) -> serde_json::Value {
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the Prometheus parser refused /metrics: {stderr}\n{text}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The families of the node as a whole, without a shard label.
const NODE_WIDE: [&str; 4] =
    ["quorum_node", "quorum_ready", "quorum_client_connections", "quorum_open_connections"];

/// The histograms, each per shard.
const HISTOGRAMS: [&str; 4] = [
    "quorum_wal_sync_duration_seconds",
    "quorum_snapshot_write_duration_seconds",
    "quorum_commit_duration_seconds",
    "quorum_batch_size_bytes",
];

/// Checks what the parser read: every family typed and documented, counters' samples named
/// `_total`, every per-shard series labelled by shard, and histograms whole.
fn check_families(families: &serde_json::Value) {
    let families = families.as_object().unwrap();
    assert!(families.len() >= 30, "only {} families: {families:?}", families.len());
    for (name, family) in families {
        assert!(name.starts_with("quorum_"), "{name}");
        let kind = family["type"].as_str().unwrap();
        assert!(["counter", "gauge", "histogram"].contains(&kind), "{name}: {kind}");
        assert!(!family["help"].as_str().unwrap().is_empty(), "{name} has no help");
        let samples = family["samples"].as_array().unwrap();
        assert!(!samples.is_empty(), "{name} has no samples");
        for sample in samples {
            let sample_name = sample[0].as_str().unwrap();
            if !NODE_WIDE.contains(&name.as_str()) {
                assert!(sample[1]["shard"].is_string(), "{sample_name} has no shard label");
            }
            match kind {
                "counter" => assert!(sample_name.ends_with("_total"), "{sample_name}"),
                "histogram" => assert!(
                    ["_bucket", "_sum", "_count"].iter().any(|end| sample_name.ends_with(end)),
                    "{sample_name}"
                ),
                _ => {}
            }
        }
    }
    for histogram in HISTOGRAMS {
        assert_eq!(families[histogram]["type"], "histogram", "{histogram}");
    }
}

/// The samples of `text` as `(name with labels, value)`, by the format's line grammar.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// The sum over shards of metric `name` (with any labels) in `text`.
fn sum_of(text: &str, name: &str) -> f64 {
    samples(text)
        .into_iter()
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .map(|(_, value)| value)
        .sum()
}

/// Scrapes `address` until `done` holds of the text; the last text.
fn await_metrics(address: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = get(address, "/metrics").body;
        if done(&text) || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asks `/ready` until it answers `status`; that answer.
fn await_ready(address: &str, status: u16, timeout: Duration) -> Answer {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = get(address, "/ready");
        if answer.status == status {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "/ready on {address} never answered {status}: {} {}",
            answer.status,
            answer.body
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_parse_and_move_with_writes_and_ready_follows_the_leaders() {
    let python = python();
    if python.is_none() {
        println!(
            "SKIPPED: the Prometheus parser's check: no python3 with prometheus_client \
             (apt-get install python3-prometheus-client); the counters and /ready are still checked"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let dirs = (1..=3).map(|n| dir.path().join(format!("node-{n}"))).collect();
    let mut cluster = Cluster::start_with_metrics(44, dirs, dir.path(), &["--shards", "2"]);
    cluster.await_serving(Duration::from_secs(20));
    let listeners: Vec<String> =
        cluster.nodes.iter().map(|node| node.metrics.clone().unwrap()).collect();

    for address in &listeners {
        assert_eq!(get(address, "/health").status, 200, "{address}");
        let ready = await_ready(address, 200, Duration::from_secs(20));
        assert_eq!(ready.body.trim(), r#"{"ready":true}"#);
        assert_eq!(get(address, "/nothing-here").status, 404);
    }
    let command = "quorum_commands_applied_total";
    let before: Vec<f64> =
        listeners.iter().map(|address| sum_of(&get(address, "/metrics").body, command)).collect();
    let wal_before: Vec<f64> = listeners
        .iter()
        .map(|address| sum_of(&get(address, "/metrics").body, "quorum_wal_appended_bytes_total"))
        .collect();

    // Generous timeouts: on a loaded machine an election may come between the writes.
    let client = cluster.client(Duration::from_secs(30)).unwrap();
    for n in 0..WRITES {
        client.put(format!("metrics-{n}").as_bytes(), b"a value of some bytes").unwrap();
    }

    // Every node applies what commits (followers too): each one's counter rises by the
    // writes, within a few ticks of their commit.
    let mut commits_timed = 0.0;
    for (index, address) in listeners.iter().enumerate() {
        let wanted = before[index] + WRITES as f64;
        let text =
            await_metrics(address, Duration::from_secs(30), |text| sum_of(text, command) >= wanted);
        let applied = sum_of(&text, command);
        assert!(applied >= wanted, "node {}: {command} {applied}, wanted {wanted}", index + 1);
        let appended = sum_of(&text, "quorum_wal_appended_bytes_total");
        assert!(appended >= wal_before[index] + (WRITES * 20) as f64, "node {}", index + 1);
        assert!(sum_of(&text, "quorum_wal_syncs_total") >= 1.0);
        // fsync durability (the default): every sync is timed.
        assert!(sum_of(&text, "quorum_wal_sync_duration_seconds_count") >= 1.0);
        // Every replica sees the batches commit; only a shard's leader times them.
        assert!(sum_of(&text, "quorum_batch_size_bytes_count") >= 1.0, "node {}", index + 1);
        assert!(sum_of(&text, "quorum_batch_size_bytes_sum") >= (WRITES * 20) as f64);
        commits_timed += sum_of(&text, "quorum_commit_duration_seconds_count");
        assert_eq!(sum_of(&text, "quorum_role"), 2.0, "one role per shard: {text}");
        // 1 unless an election is under way (a loaded machine can start one): what /ready
        // says, checked below.
        assert!([0.0, 1.0].contains(&sum_of(&text, "quorum_ready")), "{text}");
        if let Some(python) = &python {
            let families = parse_with_prometheus_client(python, &text);
            check_families(&families);
            // The parser read the same numbers the line grammar did.
            let parsed: f64 = families["quorum_commands_applied"]["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|sample| sample[2].as_f64().unwrap())
                .sum();
            assert_eq!(parsed, applied, "node {}", index + 1);
        }
    }
    // Each write was one batch or shared one with others; the leaders timed them all.
    assert!(commits_timed >= 1.0, "no commit was timed");
    // The same endpoints beside the API on the HTTP port (--http-listen).
    let http = cluster.nodes[0].http.clone().unwrap();
    for address in [&listeners[0], &http] {
        let answer = get(address, "/metrics");
        assert_eq!(answer.status, 200, "{address}");
        assert_eq!(answer.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
        assert!(sum_of(&answer.body, command) >= before[0] + WRITES as f64, "{address}");
        if let Some(python) = &python {
            check_families(&parse_with_prometheus_client(python, &answer.body));
        }
    }
    await_ready(&http, 200, Duration::from_secs(20));

    // Node 1 alone: no shard can have a leader (check-quorum), and /ready says so.
    cluster.kill(1);
    cluster.kill(2);
    let not_ready = await_ready(&listeners[0], 503, Duration::from_secs(30));
    let body: serde_json::Value = serde_json::from_str(&not_ready.body).unwrap();
    assert_eq!(body["ready"], false, "{body}");
    let shards = body["not_ready"].as_array().unwrap();
    assert!(!shards.is_empty(), "{body}");
    for shard in shards {
        assert!(shard["shard"].as_u64().unwrap() < 2, "{body}");
        assert_eq!(shard["reason"], "no known leader", "{body}");
    }
    assert_eq!(get(&http, "/ready").status, 503, "the HTTP port's /ready says the same");
    // Still up, and its metrics still read.
    assert_eq!(get(&listeners[0], "/health").status, 200);
    let text = await_metrics(&listeners[0], Duration::from_secs(5), |text| {
        sum_of(text, "quorum_ready") == 0.0
    });
    assert_eq!(sum_of(&text, "quorum_ready"), 0.0, "{text}");
    if let Some(python) = &python {
        check_families(&parse_with_prometheus_client(python, &text));
    }
    cluster.kill(0);
}
