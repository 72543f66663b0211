//! What a simulated run reports: its verdict, how much it did, and the faults it injected.

use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::checkers::Violation;
use super::coord::CoordCounts;
use super::knobs::Knobs;

/// Commands every seed should commit; fewer means the run explored too little.
pub const COMMANDS_PER_SEED_MIN: u64 = 1_000;

/// The outcome of one simulated run.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// The first invariant broken, if any.
    pub violation: Option<Violation>,
    /// Client requests acknowledged.
    pub commands: u64,
    /// Leader elections after the first one of each shard.
    pub leader_changes: u64,
    /// Simulated time, in microseconds.
    pub simulated_us: u64,
    /// Events processed.
    pub events: u64,
    /// Batches the nodes' merges handed out in global order (all nodes, all incarnations).
    pub merged: u64,
    /// Reads of compacted slots from a WAL (`Action::SendArchived`).
    pub archived_reads: u64,
    /// Queries answered by a read index, without the log (protocol.md §5.3).
    pub read_index_reads: u64,
    /// Reads answered, per consistency.
    pub reads: ReadCounts,
    /// Snapshots taken and used.
    pub snapshots: SnapshotCounts,
    /// Disk faults injected, repairs run.
    pub faults: FaultCounts,
    /// What the coordination workload did (leases, locks, fenced writes, watches, txns).
    pub coord: CoordCounts,
    /// The knobs drawn from the seed.
    pub knobs: Knobs,
}

impl SeedReport {
    /// The report of a seed whose run panicked: an assertion in the code under test fired.
    #[must_use]
    pub fn panicked(seed: u64, message: String, options: super::knobs::SimOptions) -> SeedReport {
        let knobs = Knobs::draw_with(&mut Xoshiro256PlusPlus::seed_from_u64(seed), options);
        SeedReport {
            seed,
            violation: Some(Violation {
                invariant: "assertion (a replica's own invariant check)",
                detail: message,
            }),
            commands: 0,
            leader_changes: 0,
            simulated_us: 0,
            events: 0,
            merged: 0,
            archived_reads: 0,
            read_index_reads: 0,
            reads: ReadCounts::default(),
            snapshots: SnapshotCounts::default(),
            faults: FaultCounts::default(),
            coord: CoordCounts::default(),
            knobs,
        }
    }
}

/// The clients' reads answered, per consistency (protocol.md §5.3–§5.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCounts {
    /// By the leader's read index.
    pub linearizable: u64,
    /// Asked for a lease (answered from one, or by the read index without).
    pub lease: u64,
    /// Of which answered from a lease, at once.
    pub by_lease: u64,
    /// Asked of any member, linearizable.
    pub follower: u64,
    /// Stale, checked against the chosen log.
    pub stale: u64,
    /// Stale reads refused: the member was behind their bound.
    pub too_stale: u64,
}

impl ReadCounts {
    /// Counts one read answered.
    pub fn count(&mut self, consistency: crate::core::Consistency) {
        use crate::core::Consistency::*;
        match consistency {
            Linearizable => self.linearizable += 1,
            Lease => self.lease += 1,
            Follower => self.follower += 1,
            Stale => self.stale += 1,
        }
    }

    /// Adds `other` in.
    pub fn add(&mut self, other: &ReadCounts) {
        self.linearizable += other.linearizable;
        self.lease += other.lease;
        self.by_lease += other.by_lease;
        self.follower += other.follower;
        self.stale += other.stale;
        self.too_stale += other.too_stale;
    }
}

/// Disk faults the simulator injected, and the repairs they led to (protocol.md §3.9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Replicas that started a repair (every first start is one: an empty log).
    pub repairs: u64,
    /// Repairs that finished.
    pub repaired: u64,
    /// Bits flipped in a durable log image before a restart.
    pub bit_flips: u64,
    /// Zeroed stretches of a durable log image before a restart.
    pub zeroed: u64,
    /// Bits flipped in a segment's header (its checksummed fields) before a restart.
    pub header_flips: u64,
    /// Data directories of a voter wiped before a restart (amnesia).
    pub wiped: u64,
    /// Syncs of a file or a directory made to fail (each stops its node; a directory change
    /// whose sync failed is lost in the next crash).
    pub sync_errors: u64,
    /// Disks that filled up (each stops its node until space is freed).
    pub full_disks: u64,
    /// Leadership transfers a leader took on (`move-leader`, protocol.md §3.10).
    pub leader_moves: u64,
}

impl FaultCounts {
    /// Adds another seed's counts.
    pub fn add(&mut self, other: &FaultCounts) {
        self.repairs += other.repairs;
        self.repaired += other.repaired;
        self.bit_flips += other.bit_flips;
        self.zeroed += other.zeroed;
        self.header_flips += other.header_flips;
        self.wiped += other.wiped;
        self.sync_errors += other.sync_errors;
        self.full_disks += other.full_disks;
        self.leader_moves += other.leader_moves;
    }
}

/// How often snapshots were taken and used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotCounts {
    /// Taken by replicas.
    pub taken: u64,
    /// Replicas started from one after a crash.
    pub restarts: u64,
    /// Received from a peer and installed.
    pub installed: u64,
    /// Pieces of a peer's snapshot pulled (a transfer of n pieces pulls n - 1).
    pub pulls: u64,
    /// Pieces damaged on their way (`Knobs::damaged_piece_ppm`).
    pub damaged_pieces: u64,
    /// Peers' snapshots refused by their receivers (damaged, cut short or foreign).
    pub refused: u64,
    /// WAL bytes released behind them.
    pub released_bytes: u64,
}

impl SnapshotCounts {
    /// Adds another seed's counts.
    pub fn add(&mut self, other: &SnapshotCounts) {
        self.taken += other.taken;
        self.restarts += other.restarts;
        self.installed += other.installed;
        self.pulls += other.pulls;
        self.damaged_pieces += other.damaged_pieces;
        self.refused += other.refused;
        self.released_bytes += other.released_bytes;
    }
}
