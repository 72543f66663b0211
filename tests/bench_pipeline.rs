//! `quorum bench --pipeline N` and the CPU columns, run briefly: pipelined clients complete
//! requests without errors, and the JSON line carries the concurrency and CPU per write of the
//! embedded cluster and of a target of local `quorum node` processes. No timing thresholds:
//! the machine is shared.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

mod common;

use std::time::Duration;

use common::{Cluster, quorum};

fn json_rows(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// A CPU field that must have been measured: positive and finite.
fn measured(row: &serde_json::Value, field: &str) -> f64 {
    let value = row[field].as_f64().unwrap_or_else(|| panic!("{field} missing: {row}"));
    assert!(value > 0.0 && value.is_finite(), "{field} = {value}: {row}");
    value
}

#[test]
fn pipelined_clients_complete_requests_and_report_cpu_per_write() {
    let (code, stdout, stderr) = quorum(&[
        "bench",
        "--no-limits",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--clients",
        "3",
        "--pipeline",
        "8",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let rows = json_rows(&stdout);
    assert_eq!(rows.len(), 1, "{stdout}");
    let row = &rows[0];
    assert_eq!(row["clients"], 3, "{row}");
    assert_eq!(row["pipeline"], 8, "{row}");
    assert_eq!(row["concurrency"], 24, "{row}");
    assert!(row["ops_per_sec"].as_f64().unwrap() > 0.0, "{row}");
    assert_eq!(row["errors"], 0, "{row}");
    measured(row, "cpu_us_per_write");
    measured(row, "cpu_us_per_write_client");
    measured(row, "cpu_cores_nodes");
    assert!(row["cpu_measured"].as_str().unwrap().starts_with("embedded"), "{row}");
}

#[test]
fn the_table_shows_the_pipeline_and_cpu_columns_and_the_default_is_not_pipelined() {
    let (code, stdout, stderr) =
        quorum(&["bench", "--no-limits", "--duration", "1", "--warmup", "0.3", "--clients", "8"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("8 concurrent requests over one client"), "{stdout}");
    assert!(stdout.contains("pipe") && stdout.contains("cpu µs/write"), "{stdout}");
    let last = stdout.lines().last().unwrap();
    let cells: Vec<&str> = last.split_whitespace().collect();
    assert_eq!(cells[1..3], ["8", "-"], "clients 8, not pipelined: {last}");
    let cpu: f64 = cells[cells.len() - 3].parse().unwrap();
    assert!(cpu > 0.0 && cpu.is_finite(), "{last}");
}

#[test]
fn bench_refuses_a_pipeline_it_cannot_drive() {
    for args in [
        &["bench", "--pipeline", "0"][..],
        &["bench", "--pipeline", "4", "--workload", "lock"][..],
        &["bench", "--pipeline", "4", "--open-loop", "--rate", "100"][..],
    ] {
        let (code, _, stderr) = quorum(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("--pipeline"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_target_of_local_node_processes_is_measured_by_their_pids() {
    let dir = tempfile::tempdir().unwrap();
    let node = Cluster::start(71, vec![dir.path().join("node")], dir.path(), &[]);
    node.await_serving(Duration::from_secs(20));
    let (code, stdout, stderr) = quorum(&[
        "bench",
        "--no-limits",
        "--target",
        &node.nodes[0].address,
        "--cluster-id",
        "71",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--clients",
        "2",
        "--pipeline",
        "4",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let row = &json_rows(&stdout)[0];
    assert_eq!(row["errors"], 0, "{row}");
    let pid = node.nodes[0].child.as_ref().unwrap().id();
    assert_eq!(row["cpu_measured"], format!("local node processes {pid}"), "{row}");
    measured(row, "cpu_us_per_write");
    measured(row, "cpu_us_per_write_client");
}
