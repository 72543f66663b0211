//! The command line without a cluster: every subcommand's `--help` explains its flags, and
//! unusable arguments or SQL are refused with a clear message and exit status (2 for
//! arguments, 1 for a statement or a cluster), never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_quorum-sqlite");

fn run(args: &[&str]) -> Output {
    Command::new(BINARY).args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The flags `--help` must explain for each subcommand: each followed by its own text.
#[test]
fn every_subcommand_explains_each_of_its_flags() {
    let flags: &[(&str, &[&str])] = &[
        (
            "node",
            &[
                "--config",
                "--id",
                "--cluster-id",
                "--listen",
                "--peers",
                "--learners",
                "--data-dir",
                "--shards",
                "--learner",
                "--upstream",
                "--pin-cores",
                "--first-core",
                "--batch-bytes-max",
                "--batch-commands-max",
                "--pipeline-depth-max",
                "--tick-ms",
                "--heartbeat-interval-ms",
                "--election-timeout-ms",
                "--wal-segment-mib",
                "--retain-slots",
                "--retain-mib",
                "--snapshot-every-mib",
                "--snapshot-piece-kib",
                "--durability",
                "--connections-max",
                "--idle-timeout-ms",
                "--read-timeout-ms",
                "--write-timeout-ms",
                "--client-queue-mib",
            ],
        ),
        ("exec", &["--cluster", "--cluster-id", "--shard", "--timeout-ms", "--json"]),
        ("query", &["--cluster", "--cluster-id", "--shard", "--timeout-ms", "--json"]),
        (
            "bench",
            &[
                "--clients",
                "--duration",
                "--warmup",
                "--payload-bytes",
                "--dir",
                "--no-plain",
                "--json",
            ],
        ),
    ];
    for (subcommand, flags) in flags {
        let output = run(&[subcommand, "--help"]);
        assert!(output.status.success(), "{subcommand} --help: {}", stderr(&output));
        let help = String::from_utf8(output.stdout).unwrap();
        for flag in *flags {
            let line = help
                .lines()
                .position(|line| {
                    let line = line.trim();
                    line == *flag || line.starts_with(&format!("{flag} <"))
                })
                .unwrap_or_else(|| panic!("{subcommand} --help does not list {flag}:\n{help}"));
            let explained = help.lines().nth(line + 1).is_some_and(|next| !next.trim().is_empty());
            assert!(explained, "{subcommand} --help lists {flag} without a word on it:\n{help}");
        }
    }
}

#[test]
fn unusable_arguments_are_refused_with_the_reason() {
    let cases: &[(&[&str], i32, &str)] = &[
        (&["exec", "SELECT 1"], 2, "--cluster"),
        (
            &["exec", "--cluster", "127.0.0.1:1", "INSERT INTO t VALUES (?1)", "x:abc"],
            2,
            "not hexadecimal",
        ),
        (
            &["exec", "--cluster", "127.0.0.1:1", "INSERT INTO t VALUES (?1)", "i:4x"],
            2,
            "not an integer",
        ),
        (&["node"], 2, "missing setting `id`"),
        (&["node", "--id", "1", "--cluster-id", "7", "--listen", "127.0.0.1:7000"], 2, "peers"),
        (&["node", "--shards", "1", "--tick-ms", "many"], 2, "invalid value"),
        (&["bench", "--clients", "0"], 2, "--clients must be at least 1"),
        (&["bench", "--duration", "0"], 2, "--duration above 0"),
    ];
    for (args, code, needle) in cases {
        let output = run(args);
        assert_eq!(output.status.code(), Some(*code), "{args:?}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(needle),
            "{args:?} should say {needle:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn a_statement_that_cannot_be_replicated_is_refused_before_any_connection() {
    // Port 1 has no cluster: the refusal comes before anything is dialled.
    let cases: &[(&str, &str)] = &[
        ("INSERT INTO t VALUES (random())", "random()"),
        ("INSERT INTO t VALUES (datetime('now'))", "now"),
        ("PRAGMA journal_mode = DELETE", "PRAGMA"),
    ];
    for (sql, needle) in cases {
        let output = run(&["exec", "--cluster", "127.0.0.1:1", sql]);
        assert_eq!(output.status.code(), Some(1), "{sql}: {}", stderr(&output));
        let message = stderr(&output);
        assert!(message.contains("non-deterministic SQL refused"), "{sql}: {message}");
        assert!(message.to_lowercase().contains(&needle.to_lowercase()), "{sql}: {message}");
        assert!(!message.contains("cannot reach"), "{sql} was sent: {message}");
    }
    let output = run(&["exec", "--cluster", "127.0.0.1:1", "INSERT INTO t VALUES (1)"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("cannot reach the cluster"), "{}", stderr(&output));
}
