//! The simulator inside `cargo test`: a smoke range of seeds with every checker on, and
//! determinism (the same seed gives the same trace, byte for byte).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches may unwrap.

use quorum::sim::report::COMMANDS_PER_SEED_MIN;
use quorum::sim::runner::{run_range, run_seed_catching_panics};
use quorum::sim::{SimOptions, trace_seed};

/// Seeds 0..1000 with every fault (about a minute on 2 cores); the acceptance run covers
/// 0..5000 (`quorum sim --seeds 0..5000`).
#[test]
fn smoke_range_has_no_violation() {
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let summary = run_range(0..1000, threads, SimOptions::default(), |_, _| {});
    for failure in &summary.failures {
        let violation = failure.violation.as_ref().expect("failures have a violation");
        eprintln!(
            "seed {}: {}: {}\n  replay: quorum sim --seed {} --trace",
            failure.seed, violation.invariant, violation.detail, failure.seed
        );
    }
    assert!(summary.failures.is_empty(), "{}", summary.line());
    assert_eq!(summary.seeds, 1000);
    assert_eq!(summary.seeds_without_leader_change, 0, "{}", summary.per_seed_line(threads));
    assert!(summary.commands_min >= COMMANDS_PER_SEED_MIN, "{}", summary.per_seed_line(threads));
}

#[test]
fn same_seed_gives_the_same_trace() {
    let (first_report, first) = trace_seed(42);
    let (second_report, second) = trace_seed(42);
    assert!(first.lines().count() > 1_000, "the trace records the run");
    assert!(first == second, "traces of seed 42 differ");
    assert_eq!(first_report.commands, second_report.commands);
    let (_, other) = trace_seed(43);
    assert!(first != other, "different seeds should explore different runs");
}

/// The first seed below `seeds` whose run with `options` breaks `invariant`, trying seeds
/// in turn (each planted bug below is caught within its first hundred seeds).
fn first_caught(options: SimOptions, invariant: &str, seeds: u64) -> Option<u64> {
    (0..seeds).find(|&seed| {
        let report = run_seed_catching_panics(seed, options);
        match &report.violation {
            Some(violation) if violation.invariant == invariant => true,
            Some(other) => {
                panic!("seed {seed} broke {} instead: {}", other.invariant, other.detail)
            }
            None => false,
        }
    })
}

#[test]
fn the_lease_checker_catches_leases_that_ignore_clock_drift() {
    let options = SimOptions { leases_ignore_drift: true, ..SimOptions::default() };
    let caught = first_caught(options, "C1 leases", 200);
    assert!(caught.is_some(), "no seed of 0..200 caught leases ending early on fast clocks");
}

#[test]
fn the_fencing_checker_catches_writes_without_their_token_compare() {
    let options = SimOptions { unfenced_writes: true, ..SimOptions::default() };
    let caught = first_caught(options, "C2 fencing", 200);
    assert!(caught.is_some(), "no seed of 0..200 caught a paused holder overwriting its successor");
}

#[test]
fn the_watch_checker_catches_a_round_that_ends_at_the_furthest_shard() {
    let options = SimOptions { watch_furthest: true, ..SimOptions::default() };
    let caught = first_caught(options, "C3 watches", 200);
    assert!(caught.is_some(), "no seed of 0..200 caught a watch skipping a slow shard's changes");
}
