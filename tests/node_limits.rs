//! A node under failure and abuse, as real `quorum node` processes on 127.0.0.1: a shard that
//! panics stops the whole process with an error; connections past the limit, idle ones, slow
//! frames, clients that never read and floods of snapshot pulls and digests are bounded, while
//! another client's writes go on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use quorum::bench::embedded::free_port_range;
use quorum::client::{Client, ClientOptions, node_status};
use quorum::core::ClusterId;

const CLUSTER: u64 = 77;

/// The environment variable that makes a node's key-value store panic when it applies a put
/// of this key (test-only: `src/runtime/machine.rs`).
const PANIC_ON_KEY: &str = "QUORUM_TEST_PANIC_ON_KEY";

/// One `quorum node` process: a cluster of one voter.
struct OneNode {
    dir: tempfile::TempDir,
    address: String,
    child: Option<Child>,
}

impl OneNode {
    /// Starts a node with `shards` shards and `extra` flags and environment.
    fn start(shards: u16, extra: &[&str], env: &[(&str, &str)]) -> OneNode {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{}", free_port_range(shards).unwrap());
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_quorum"));
        command
            .arg("node")
            .args(["--id", "1", "--cluster-id", &CLUSTER.to_string()])
            .args(["--listen", &address, "--peers", &format!("1={address}")])
            .args(["--shards", &shards.to_string(), "--wal-segment-mib", "4"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().unwrap();
        let node = OneNode { dir, address, child: Some(child) };
        node.await_up();
        node
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn await_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while node_status(&self.address, ClusterId(CLUSTER), false).is_err() {
            assert!(Instant::now() < deadline, "the node did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self) -> Client {
        let options = ClientOptions {
            cluster_id: ClusterId(CLUSTER),
            request_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        };
        Client::connect(std::slice::from_ref(&self.address), options).unwrap()
    }

    /// The exit status, once the process ends by itself within `timeout`; `None` if it is
    /// still running then.
    fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OneNode {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A put of the poisoned key makes a state machine panic: the node must exit on its own,
/// with a failure status and the panic's message in its log.
fn a_panicking_state_machine_stops_the_node(apply: &str) {
    let mut node = OneNode::start(2, &["--apply", apply], &[(PANIC_ON_KEY, "poison")]);
    let client = node.client();
    client.put(b"healthy", b"1").unwrap();
    // The put is never answered: the state machine dies applying it.
    let _ = client.put(b"poison", b"1");
    let status = node.exit_within(Duration::from_secs(10));
    let log = node.log();
    let Some(status) = status else {
        panic!("--apply {apply}: the node lives on after a shard panicked:\n{log}");
    };
    assert!(!status.success(), "--apply {apply}: exited with {status}:\n{log}");
    assert!(log.contains("panicked; stopping the node"), "the runtime says why:\n{log}");
    // The last line, from `quorum node`: which executor, and the panic's message.
    let last = log.lines().last().unwrap_or_default();
    let executor = if apply == "total" { "the total-order applier" } else { "shard " };
    assert!(last.starts_with(&format!("quorum node: {executor}")), "{last}");
    assert!(last.ends_with("panicked: test-only panic: a put of key \"poison\""), "{last}");
}

#[test]
fn a_shard_that_panics_stops_the_node_with_an_error() {
    a_panicking_state_machine_stops_the_node("shard");
}

#[test]
fn a_panicking_total_order_applier_stops_the_node_with_an_error() {
    a_panicking_state_machine_stops_the_node("total");
}
