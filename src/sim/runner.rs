//! Runs ranges of seeds on every core and sums them up, for `quorum sim` and the test suite.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::coord::CoordCounts;
use super::knobs::SimOptions;
use super::report::{COMMANDS_PER_SEED_MIN, FaultCounts, ReadCounts, SeedReport, SnapshotCounts};

/// Runs one seed; an assertion that fires inside it (a replica's own invariant check) is a
/// violation of that seed, not the end of the whole range.
#[must_use]
pub fn run_seed_catching_panics(seed: u64, options: SimOptions) -> SeedReport {
    let run = || super::World::with_options(seed, false, options).run().0;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(report) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_string()))
                .unwrap_or_else(|| "a panic without a message".to_string());
            SeedReport::panicked(seed, message, options)
        }
    }
}

/// The sum of a range of seeds.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// The failing seeds, in seed order, with their reports.
    pub failures: Vec<SeedReport>,
    /// Acknowledged client commands, all seeds.
    pub commands: u64,
    /// Leader changes, all seeds.
    pub leader_changes: u64,
    /// The fewest commands any seed acknowledged.
    pub commands_min: u64,
    /// The fewest leader changes any seed saw.
    pub leader_changes_min: u64,
    /// Seeds that acknowledged fewer than [`COMMANDS_PER_SEED_MIN`] commands.
    pub seeds_below_commands_min: u64,
    /// Seeds without a leader change.
    pub seeds_without_leader_change: u64,
    /// Wall-clock seconds for the whole range.
    pub seconds: f64,
    /// The slowest seed, in wall-clock seconds.
    pub seconds_per_seed_max: f64,
    /// Seeds whose cluster had learners.
    pub seeds_with_learners: u64,
    /// Seeds where a learner relayed to another.
    pub seeds_with_relay: u64,
    /// Seeds with more than one shard (their merges need skips).
    pub seeds_with_shards: u64,
    /// Batches handed out by the nodes' merges, all seeds.
    pub merged: u64,
    /// Seeds where a replica served compacted slots from its WAL.
    pub seeds_with_archived_reads: u64,
    /// Such reads, all seeds.
    pub archived_reads: u64,
    /// Queries answered by a read index, all seeds.
    pub read_index_reads: u64,
    /// The clients' reads, per consistency, all seeds.
    pub reads: ReadCounts,
    /// Seeds where a replica installed a peer's snapshot.
    pub seeds_with_installs: u64,
    /// Snapshots taken, restarts from a snapshot, snapshots installed, all seeds.
    pub snapshots: SnapshotCounts,
    /// Disk faults injected and repairs run, all seeds.
    pub faults: FaultCounts,
    /// The coordination workload, all seeds.
    pub coord: CoordCounts,
    /// Seeds where a lease ran out (an expiry applied).
    pub seeds_with_expiries: u64,
    /// Seeds where a fenced write was refused (its lock had moved on).
    pub seeds_with_fenced_refusals: u64,
}

/// Runs `seeds` with `threads` threads, calling `on_report` for each seed as it finishes.
pub fn run_range(
    seeds: std::ops::Range<u64>,
    threads: usize,
    options: SimOptions,
    on_report: impl Fn(&SeedReport, f64) + Sync,
) -> Summary {
    let started = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let summary = Mutex::new(Summary {
        commands_min: u64::MAX,
        leader_changes_min: u64::MAX,
        ..Summary::default()
    });
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    let seed_started = Instant::now();
                    let report = run_seed_catching_panics(seed, options);
                    let seconds = seed_started.elapsed().as_secs_f64();
                    on_report(&report, seconds);
                    let mut summary =
                        summary.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    summary.add(&report, seconds);
                    if report.violation.is_some() {
                        summary.failures.push(report);
                    }
                }
            });
        }
    });
    let mut summary = summary.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    summary.failures.sort_by_key(|report| report.seed);
    summary.seconds = started.elapsed().as_secs_f64();
    if summary.seeds == 0 {
        summary.commands_min = 0;
        summary.leader_changes_min = 0;
    }
    summary
}

impl Summary {
    /// Counts one seed's report in (its failure, if any, is kept by the caller).
    fn add(&mut self, report: &SeedReport, seconds: f64) {
        self.seeds += 1;
        self.commands += report.commands;
        self.leader_changes += report.leader_changes;
        self.commands_min = self.commands_min.min(report.commands);
        self.leader_changes_min = self.leader_changes_min.min(report.leader_changes);
        self.seeds_below_commands_min += u64::from(report.commands < COMMANDS_PER_SEED_MIN);
        self.seeds_without_leader_change += u64::from(report.leader_changes == 0);
        self.seconds_per_seed_max = self.seconds_per_seed_max.max(seconds);
        let knobs = &report.knobs;
        self.seeds_with_learners += u64::from(knobs.learners > 0);
        self.seeds_with_relay += u64::from(knobs.learners == 2 && knobs.relay);
        self.seeds_with_shards += u64::from(knobs.shards > 1);
        self.merged += report.merged;
        self.seeds_with_archived_reads += u64::from(report.archived_reads > 0);
        self.archived_reads += report.archived_reads;
        self.read_index_reads += report.read_index_reads;
        self.reads.add(&report.reads);
        self.seeds_with_installs += u64::from(report.snapshots.installed > 0);
        self.snapshots.add(&report.snapshots);
        self.faults.add(&report.faults);
        self.coord.add(&report.coord);
        self.seeds_with_expiries += u64::from(report.coord.expired > 0);
        self.seeds_with_fenced_refusals += u64::from(report.coord.fenced_refused > 0);
    }

    /// The one summary line `quorum sim` ends with.
    #[must_use]
    pub fn line(&self) -> String {
        format!(
            "seeds: {}, violations: {}, commands: {}, leader changes: {}, seconds: {:.1}",
            self.seeds,
            self.failures.len(),
            self.commands,
            self.leader_changes,
            self.seconds
        )
    }

    /// What the seeds exercised beyond the core: learners, relays, merges of shards.
    #[must_use]
    pub fn coverage_line(&self) -> String {
        format!(
            "coverage: learners in {} seeds (a relay in {}), 2-4 shards in {}; merged batches {}; \
             compacted slots read from a WAL in {} seeds ({} reads); queries answered by a read \
             index {}; reads linearizable {}, lease {} ({} from a lease), follower {}, stale {} \
             ({} refused as too stale); snapshots taken {}, \
             restarted from {}, installed from a peer {} (in {} seeds, {} pieces pulled; {} pieces \
             damaged, {} snapshots refused), {} MB of WAL released",
            self.seeds_with_learners,
            self.seeds_with_relay,
            self.seeds_with_shards,
            self.merged,
            self.seeds_with_archived_reads,
            self.archived_reads,
            self.read_index_reads,
            self.reads.linearizable,
            self.reads.lease,
            self.reads.by_lease,
            self.reads.follower,
            self.reads.stale,
            self.reads.too_stale,
            self.snapshots.taken,
            self.snapshots.restarts,
            self.snapshots.installed,
            self.seeds_with_installs,
            self.snapshots.pulls,
            self.snapshots.damaged_pieces,
            self.snapshots.refused,
            self.snapshots.released_bytes / 1_000_000
        )
    }

    /// The coordination workload: leases, locks, fenced writes, transactions and watches.
    #[must_use]
    pub fn coord_line(&self) -> String {
        let coord = &self.coord;
        format!(
            "coordination: leases granted {}, expired {} (in {} seeds); locks taken {}; fenced \
             writes applied {}, refused {} (in {} seeds); values proclaimed {}, refused {}; \
             transactions {}; watch rounds {}, changes watched and checked {}",
            coord.leases,
            coord.expired,
            self.seeds_with_expiries,
            coord.locks,
            coord.fenced,
            coord.fenced_refused,
            self.seeds_with_fenced_refusals,
            coord.proclaimed,
            coord.proclaims_refused,
            coord.txns,
            coord.watch_rounds,
            coord.watched
        )
    }

    /// The disk faults injected and the repairs they caused.
    #[must_use]
    pub fn faults_line(&self) -> String {
        let faults = &self.faults;
        format!(
            "disk faults: bits flipped {}, stretches zeroed {}, segment headers damaged {}, voters wiped {}, syncs (file or directory) failed {}, \
             disks full {}; repairs started {} (first starts included), finished {}; leadership moves asked {}",
            faults.bit_flips,
            faults.zeroed,
            faults.header_flips,
            faults.wiped,
            faults.sync_errors,
            faults.full_disks,
            faults.repairs,
            faults.repaired,
            faults.leader_moves
        )
    }

    /// Per-seed figures: the weakest seed and the time per seed.
    #[must_use]
    pub fn per_seed_line(&self, threads: usize) -> String {
        let mean =
            if self.seeds == 0 { 0.0 } else { self.seconds * threads as f64 / self.seeds as f64 };
        format!(
            "per seed: commands min {} ({} seeds below {}), leader changes min {} ({} seeds without), \
             seconds mean {:.3} max {:.3}",
            self.commands_min,
            self.seeds_below_commands_min,
            COMMANDS_PER_SEED_MIN,
            self.leader_changes_min,
            self.seeds_without_leader_change,
            mean,
            self.seconds_per_seed_max
        )
    }
}
