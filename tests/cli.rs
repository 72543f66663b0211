//! The command line as people use it: bad values get one clear message and exit code 2;
//! `quorum bench` runs end to end and reports what it measured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn quorum(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_quorum")).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn node_refuses_bad_configuration_with_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let base = [
        "node",
        "--cluster-id",
        "1",
        "--listen",
        "127.0.0.1:7000",
        "--peers",
        "1=127.0.0.1:7000,2=127.0.0.1:7010,3=127.0.0.1:7020",
        "--data-dir",
        data,
    ];
    let cases: [(&[&str], &str); 8] = [
        (&["--id", "9"], "9"),
        (&["--id", "1", "--snapshot-piece-kib", "65536"], "snapshot_piece_kib"),
        (&["--id", "1", "--upstream", "2"], "upstream 2: only a learner"),
        (&["--id", "1", "--election-timeout-ms", "10"], "election_timeout_ms"),
        (&["--id", "1", "--shards", "0"], "shards"),
        (&["--id", "1", "--wal-segment-mib", "0"], "wal_segment_mib"),
        (&["--id", "1", "--sessions-max", "0"], "`sessions_max` = 0 is out of range"),
        (&["--id", "1", "--session-replies-max", "0"], "`session_replies_max` = 0"),
    ];
    for (extra, mentions) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (code, _, stderr) = quorum(&args);
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(stderr.contains(mentions), "{extra:?} should mention {mentions}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");
    }
    let args: Vec<&str> =
        base.iter().chain(&["--id", "1", "--apply", "sideways"]).copied().collect();
    let (code, _, stderr) = quorum(&args);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("[possible values: shard, total]"), "{stderr}");
}

#[test]
fn tail_says_what_is_wrong() {
    // Nothing listens on port 1.
    let (code, stdout, stderr) = quorum(&["tail", "--cluster", "127.0.0.1:1"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.starts_with("quorum tail: ") && stderr.contains("127.0.0.1:1"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");
    let (code, _, stderr) = quorum(&["tail", "--cluster", "127.0.0.1:1", "--hold-report"]);
    assert_eq!(code, 2, "--hold-report needs --count: {stderr}");
    let (code, _, stderr) = quorum(&["tail", "--cluster", "127.0.0.1:1", "--from", "-3"]);
    assert_eq!(code, 2, "a negative position: {stderr}");
}

#[test]
fn kv_get_refuses_bad_read_options_before_connecting() {
    // Nothing listens on port 1: each refusal comes before any connection is tried.
    let get = ["kv", "--cluster", "127.0.0.1:1", "get", "k"];
    for (extra, mentions) in [
        (&["--consistency", "eventual"][..], "possible values"),
        (&["--consistency", "stale", "--max-staleness", "soon"][..], "not a count of slots"),
        (&["--max-staleness", "5"][..], "--consistency stale"),
    ] {
        let args: Vec<&str> = get.iter().chain(extra).copied().collect();
        let (code, _, stderr) = quorum(&args);
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(stderr.contains(mentions), "{extra:?} should mention {mentions}: {stderr}");
    }
    let (code, _, stderr) = quorum(&["node", "--max-clock-drift", "150%"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("below 100 %"), "{stderr}");
}

#[test]
fn bench_refuses_bad_options() {
    for (args, mentions) in [
        (&["bench", "--read-ratio", "2"][..], "--read-ratio"),
        (&["bench", "--duration", "0"][..], "--duration"),
        (&["bench", "--clients", "0"][..], "--clients"),
    ] {
        let (code, _, stderr) = quorum(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(mentions), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_runs_an_embedded_cluster_and_reports_json_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("sweep.svg");
    let (code, stdout, stderr) = quorum(&[
        "bench",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--clients",
        "4,16",
        "--shards",
        "1",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<serde_json::Value> =
        stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(rows.len(), 2, "one line per swept value: {stdout}");
    for (row, clients) in rows.iter().zip([4, 16]) {
        assert_eq!(row["clients"], clients);
        assert_eq!(row["durability"], "fsync");
        assert_eq!(row["voters"], 3);
        assert!(row["ops_per_sec"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["errors"], 0, "{row}");
        let (p50, p99) = (row["p50_us"].as_f64().unwrap(), row["p99_us"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p99, "{row}");
        assert!(row["fsyncs_per_sec"].as_f64().unwrap() > 0.0, "fsync on means syncs: {row}");
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("p99"), "an SVG plot");
}

#[test]
fn sim_summarizes_a_range_as_json_for_the_soak_ledger() {
    let (code, out, err) = quorum(&["sim", "--seeds", "5..8", "--json"]);
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(summary["seeds"], 3);
    assert_eq!((summary["seeds_from"].as_u64(), summary["seeds_to"].as_u64()), (Some(5), Some(8)));
    assert_eq!(summary["violations"], 0);
    assert!(summary["commands"].as_u64().unwrap() > 1000, "{summary}");
    assert!(summary["faults"]["repairs_started"].as_u64().is_some(), "{summary}");
    let (code, _, err) = quorum(&["sim", "--seed", "5", "--json"]);
    assert_ne!(code, 0, "--json is for ranges");
    assert!(err.contains("--json"), "{err}");
}
