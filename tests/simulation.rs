//! The simulator inside `cargo test`: a smoke range of seeds with every checker on, and
//! determinism (the same seed gives the same trace, byte for byte).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches may unwrap.

use quorum::sim::report::COMMANDS_PER_SEED_MIN;
use quorum::sim::runner::run_range;
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
