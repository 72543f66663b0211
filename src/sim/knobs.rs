//! Knobs: every parameter of a simulated run, drawn from the seed (FoundationDB's lesson: a
//! range of seeds explores a range of configurations, not one).

use rand_core::RngCore;
use rand_xoshiro::Xoshiro256PlusPlus;

/// The parameters of one simulated run.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// Voting nodes, 3 to 5.
    pub voters: usize,
    /// Learner nodes, 0 to 2.
    pub learners: usize,
    /// Shards per node, 1 to 4.
    pub shards: usize,
    /// Clients, each with one request outstanding at a time.
    pub clients: usize,
    /// Keys the clients share (few, so that they contend).
    pub keys: usize,
    /// Microseconds per tick.
    pub tick_us: u64,
    /// Replica timing, in ticks.
    pub heartbeat_interval_ticks: u32,
    /// Replica timing, in ticks.
    pub election_timeout_ticks: u32,
    /// Accept runs in flight per leader.
    pub pipeline_depth_max: usize,
    /// Commands per batch at most.
    pub batch_commands_max: usize,
    /// Runs per Promise or Chosen message at most (small, to exercise chunking).
    pub message_runs_max: usize,
    /// One-way network delay: a fixed part and a random part, in microseconds.
    pub delay_min_us: u64,
    /// See `delay_min_us`.
    pub delay_jitter_us: u64,
    /// Chance in a million that a message is held up for a long time, as a congested link or
    /// a retransmission would (safety phase only): stale messages then reach a later ballot.
    pub long_delay_ppm: u64,
    /// The longest such hold-up, in microseconds.
    pub long_delay_max_us: u64,
    /// Chance in a million that a message sent over a cut link is held and delivered when the
    /// link heals (as TCP would, retransmitting), rather than lost.
    pub held_over_cut_ppm: u64,
    /// Chance in a million that a message is lost (safety phase only).
    pub loss_ppm: u64,
    /// Chance in a million that a message for a crashed node waits in its sender's queue and
    /// reaches the node's next incarnation, as a transport that resends after reconnecting
    /// would do, instead of being lost.
    pub held_for_restart_ppm: u64,
    /// Chance in a million that a crash is a quick restart (1–10 ms, a supervisor restarting
    /// the process) rather than an outage.
    pub quick_restart_ppm: u64,
    /// Chance in a million that a message is delivered twice (safety phase only).
    pub duplicate_ppm: u64,
    /// Disk sync latency range, in microseconds.
    pub sync_min_us: u64,
    /// See `sync_min_us`.
    pub sync_jitter_us: u64,
    /// Chance in a million, per unsynced write, that it reaches the disk before a crash.
    pub unsynced_survives_ppm: u64,
    /// Chance in a million that such a write is torn (only its first sectors written).
    pub torn_ppm: u64,
    /// Length of the safety phase (faults on), in microseconds.
    pub safety_us: u64,
    /// Mean time between faults, in microseconds.
    pub fault_interval_us: u64,
    /// Chance in a million that a leader proposes a skip on a tick.
    pub skip_ppm: u64,
    /// Client think time between requests, in microseconds (upper bound).
    pub think_us: u64,
    /// A client retries elsewhere after this long without a reply.
    pub client_timeout_us: u64,
    /// With two learners: the second subscribes through the first (a relay), not a voter.
    pub relay: bool,
    /// Committed slots a replica keeps in memory (`Config::retain_slots`): small, so that
    /// catch-up, elections and feeds often reach below it and are served from the WAL.
    pub retain_slots: u64,
    /// Bytes one such read may take (`Journal::archived_runs`): small, so that readers
    /// far behind must ask again many times.
    pub archive_read_bytes_max: usize,
    /// A replica snapshots its state every this many bytes of WAL and releases the segments
    /// the snapshot covers (0: never). Small against the 64 KiB segments, so that released
    /// prefixes, restarts from snapshots and snapshots sent to readers are common. A node
    /// that restarts from a snapshot or installs one no longer feeds its total-order merge
    /// (it would need every slot from 0), so I11 is checked on the others.
    pub snapshot_every_bytes: u64,
    /// Bytes per WAL segment: 24 KiB (a 16 KiB batch's record fits) or 64 KiB, small so that logs cross many segments and
    /// snapshots release many.
    pub wal_segment_bytes: u64,
    /// Bytes of committed batches a replica keeps in memory (`Config::retain_bytes`):
    /// unbounded, 2 KiB or 16 KiB, so that the byte bound compacts too.
    pub retain_bytes: u64,
    /// A snapshot goes in pieces of at most this many bytes (`ShardSettings::
    /// snapshot_piece_bytes`): whole, or 256 B to 4 KiB, so that most transfers take several
    /// pieces, each pulled, through loss, duplication, reordering and restarts.
    pub snapshot_piece_bytes: usize,
    /// Chance in a million that a snapshot piece reaches its receiver damaged (a byte flipped:
    /// the sender's file rotted under it), while faults are on: off in half the seeds. The
    /// receiver must refuse the whole snapshot by its checksum and keep its old state.
    pub damaged_piece_ppm: u64,
    /// Lease reads on (`Config::read_lease`, protocol.md §5.4): half the seeds; every seed
    /// when the clock bound is broken.
    pub read_lease: bool,
    /// The drift bound the replicas are configured with (`Config::max_clock_drift_ppm`).
    pub max_clock_drift_ppm: u32,
    /// Each node's clock rate, in millionths of real time, within the bound.
    pub clock_rate_ppm: Vec<u64>,
    /// Clock faults beyond the bound ([`SimOptions::break_clock_bound`]): now and then a
    /// leader's clock runs at a tenth to a half of real time for a while.
    pub clock_faults: bool,
    /// Clients that take locks under leases (the first ones), 2 to 4.
    pub lockers: usize,
    /// Locks they contend for, 1 or 2 (at least two lockers each).
    pub locks: usize,
    /// Clients that watch every shared key's changes (after the lockers), 0 to 2.
    pub watchers: usize,
    /// The lockers' lease TTLs, in milliseconds (the store's least is 1,000).
    pub lease_ttl_ms_min: u64,
    /// See `lease_ttl_ms_min`.
    pub lease_ttl_ms_max: u64,
    /// How long the lockers go on once the faults stop, in microseconds (0 in a third of the
    /// seeds). Under faults a lease seldom runs out: every leader change gives it a whole TTL
    /// again. In the calm after, leases of paused holders do, and their fenced writes meet
    /// their successors'.
    pub coord_tail_us: u64,
}

/// What a whole simulated range is run with, beyond its seeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimOptions {
    /// Clocks drift beyond the bound the replicas are configured with (`quorum sim
    /// --break-clock-bound`): lease reads may then be stale, and the checkers must say so.
    pub break_clock_bound: bool,
    /// A planted bug: the replicas are configured for clocks that never drift while the
    /// clocks drift as usual, so a leader whose clock runs fast ends leases early. The lease
    /// checker (C1) must find it.
    pub leases_ignore_drift: bool,
    /// A planted bug: the lockers' fenced writes go without their compare. The fencing
    /// checker (C2) must find it.
    pub unfenced_writes: bool,
    /// A planted bug: a watch round across shards ends at the furthest shard instead of the
    /// nearest. The watch checker (C3) must find it.
    pub watch_furthest: bool,
}

/// Draws uniformly from `low..=high`.
pub fn between(rng: &mut Xoshiro256PlusPlus, low: u64, high: u64) -> u64 {
    assert!(low <= high, "empty range {low}..={high}");
    low + rng.next_u64() % (high - low + 1)
}

impl Knobs {
    /// Draws a configuration.
    pub fn draw(rng: &mut Xoshiro256PlusPlus) -> Knobs {
        Knobs::draw_with(rng, SimOptions::default())
    }

    /// Draws a configuration, clocks as `options` say.
    pub fn draw_with(rng: &mut Xoshiro256PlusPlus, options: SimOptions) -> Knobs {
        let mut knobs = Knobs::draw_cluster(rng);
        knobs.read_lease = options.break_clock_bound || between(rng, 0, 1) == 1;
        knobs.max_clock_drift_ppm = [10_000, 50_000, 100_000, 200_000][between(rng, 0, 3) as usize];
        let drift = u64::from(knobs.max_clock_drift_ppm);
        let nodes = knobs.voters + knobs.learners;
        knobs.clock_rate_ppm =
            (0..nodes).map(|_| between(rng, 1_000_000 - drift, 1_000_000 + drift)).collect();
        knobs.clock_faults = options.break_clock_bound;
        // At least two lockers per lock, so that a lock passes from one to another.
        knobs.lockers = between(rng, 2, 4) as usize;
        knobs.locks = between(rng, 1, knobs.lockers as u64 / 2) as usize;
        knobs.watchers = between(rng, 0, 2) as usize;
        knobs.lease_ttl_ms_min = 1_000;
        knobs.lease_ttl_ms_max = 1_500;
        knobs.coord_tail_us = [0, 2_000_000, 3_000_000][between(rng, 0, 2) as usize];
        if options.leases_ignore_drift {
            // Lease reads would trip over the same lie first (I10): off, to see C1 catch it.
            knobs.read_lease = false;
        }
        knobs
    }

    fn draw_cluster(rng: &mut Xoshiro256PlusPlus) -> Knobs {
        let heartbeat_interval_ticks = between(rng, 2, 5) as u32;
        Knobs {
            voters: between(rng, 3, 5) as usize,
            learners: between(rng, 0, 2) as usize,
            shards: between(rng, 1, 4) as usize,
            clients: between(rng, 10, 24) as usize,
            keys: between(rng, 2, 8) as usize,
            tick_us: 1_000,
            heartbeat_interval_ticks,
            election_timeout_ticks: heartbeat_interval_ticks * between(rng, 4, 8) as u32,
            pipeline_depth_max: between(rng, 1, 8) as usize,
            batch_commands_max: between(rng, 1, 16) as usize,
            message_runs_max: [2, 4, 16, 64, 256][between(rng, 0, 4) as usize],
            delay_min_us: between(rng, 20, 300),
            delay_jitter_us: between(rng, 0, 1_500),
            long_delay_ppm: between(rng, 0, 50_000),
            long_delay_max_us: between(rng, 5_000, 500_000),
            held_over_cut_ppm: between(rng, 0, 1_000_000),
            loss_ppm: between(rng, 0, 80_000),
            held_for_restart_ppm: between(rng, 0, 1_000_000),
            quick_restart_ppm: between(rng, 0, 500_000),
            duplicate_ppm: between(rng, 0, 50_000),
            sync_min_us: between(rng, 50, 500),
            sync_jitter_us: between(rng, 0, 2_000),
            unsynced_survives_ppm: between(rng, 0, 1_000_000),
            torn_ppm: between(rng, 0, 500_000),
            safety_us: between(rng, 3_000_000, 4_500_000),
            fault_interval_us: between(rng, 80_000, 300_000),
            skip_ppm: between(rng, 0, 20_000),
            think_us: between(rng, 0, 2_000),
            client_timeout_us: between(rng, 30_000, 80_000),
            relay: between(rng, 0, 1) == 1,
            retain_slots: [0, 4, 32, 256, u64::MAX][between(rng, 0, 4) as usize],
            archive_read_bytes_max: [1, 4096, 65536, 16 << 20][between(rng, 0, 3) as usize],
            snapshot_every_bytes: [0, 0, 8 << 10, 32 << 10, 128 << 10][between(rng, 0, 4) as usize],
            wal_segment_bytes: [24 << 10, 64 << 10][between(rng, 0, 1) as usize],
            retain_bytes: [u64::MAX, 2 << 10, 16 << 10][between(rng, 0, 2) as usize],
            snapshot_piece_bytes: [1 << 30, 256, 1024, 4096][between(rng, 0, 3) as usize],
            damaged_piece_ppm: [0, 0, 2_000, 20_000][between(rng, 0, 3) as usize],
            read_lease: false,
            max_clock_drift_ppm: 0,
            clock_rate_ppm: Vec::new(),
            clock_faults: false,
            lockers: 0,
            locks: 0,
            watchers: 0,
            lease_ttl_ms_min: 0,
            lease_ttl_ms_max: 0,
            coord_tail_us: 0,
        }
    }
}
