//! The deterministic simulator: whole clusters of shard replicas over a simulated network and
//! simulated disks, driven from one seed through crashes, partitions, pauses, loss, duplication
//! and reordering, then healed to check liveness. Checkers run after every step
//! (`checkers.rs`); the fault model and knobs are in `docs/simulator.md`.

pub mod checkers;
pub mod client;
pub mod coord;
pub mod direct;
pub mod disk;
pub mod knobs;
pub mod linearizability;
pub mod reads;
pub mod recorder;
pub mod report;
pub mod runner;
pub mod world;

pub use checkers::Violation;
pub use knobs::{Knobs, SimOptions};
pub use report::SeedReport;
pub use world::World;

/// Runs one seed without a trace.
#[must_use]
pub fn run_seed(seed: u64) -> SeedReport {
    World::new(seed, false).run().0
}

/// Runs one seed and returns its report and its trace.
#[must_use]
pub fn trace_seed(seed: u64) -> (SeedReport, String) {
    World::new(seed, true).run()
}
