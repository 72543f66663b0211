//! Configuration of one shard replica, validated before a replica is built: every bad value is
//! refused with its own message, so a typo never becomes a stuck cluster.

use super::types::{ClusterId, NodeId};

/// How one shard replica behaves. Times are in ticks: the runtime decides how long a tick is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The cluster this replica belongs to.
    pub cluster_id: ClusterId,
    /// This replica's node.
    pub node: NodeId,
    /// Nodes that store the log and vote.
    pub voters: Vec<NodeId>,
    /// Nodes that only learn chosen values; never in a quorum.
    pub learners: Vec<NodeId>,
    /// For a learner: the node it subscribes to first (a voter, or another learner relaying).
    /// `None`: a follower of the shard, so the leader's egress does not grow with learners.
    pub upstream: Option<NodeId>,
    /// A leader sends a heartbeat at least this often.
    pub heartbeat_interval_ticks: u32,
    /// A follower that hears no leader for this long (plus a random part of it) stands for
    /// election; a voter that heard a leader within this long refuses to help depose it.
    pub election_timeout_ticks: u32,
    /// Proposals (Accept runs) a leader keeps in flight before it waits.
    pub pipeline_depth_max: usize,
    /// Largest encoded batch.
    pub batch_bytes_max: usize,
    /// Most commands in one batch.
    pub batch_commands_max: usize,
    /// Most slots one skip may cover.
    pub skip_slots_max: u64,
    /// Most runs in one Promise or Chosen message.
    pub message_runs_max: usize,
    /// Most slots an acceptor accepts beyond its commit position; bounds its memory.
    pub accept_ahead_slots_max: u64,
    /// Committed slots kept in memory behind the commit position; older ones are forgotten
    /// (compacted) and served from the WAL when a peer or subscriber asks for them. Bounds the
    /// log's memory whatever the run length.
    pub retain_slots: u64,
    /// Bytes of committed batches kept in memory, whatever `retain_slots` allows: the oldest
    /// committed slots are forgotten beyond it. Their batches share the WAL's mapping, so this
    /// also bounds the WAL a snapshot must leave in place (protocol.md §3.8).
    pub retain_bytes: u64,
    /// Seeds the replica's random source (election jitter). Give each replica its own.
    pub random_seed: u64,
    /// Lease reads (protocol.md §5.4): a leader answers [`crate::core::Consistency::Lease`]
    /// reads at once while a majority's acknowledgements grant it a lease, and a voter keeps
    /// the promise that makes that safe (it helps no other candidate within an election
    /// timeout of hearing a leader, nor after a restart). Set it alike on every voter.
    pub read_lease: bool,
    /// The bound on clock drift leases rely on: every member's clock runs at a rate within
    /// this many parts per million of real time (100,000: 10 %). Below 1,000,000.
    pub max_clock_drift_ppm: u32,
}

impl Config {
    /// Committed slots kept in memory unless configured otherwise: at 200-command batches,
    /// about 3 million commands, and about 2 MiB of bookkeeping per replica.
    pub const RETAIN_SLOTS_DEFAULT: u64 = 1 << 14;

    /// Bytes of committed batches kept in memory unless configured otherwise: four WAL
    /// segments of the default size.
    pub const RETAIN_BYTES_DEFAULT: u64 = 256 << 20;

    /// Sane defaults for `node` among `voters`.
    #[must_use]
    pub fn new(cluster_id: ClusterId, node: NodeId, voters: Vec<NodeId>) -> Config {
        Config {
            cluster_id,
            node,
            voters,
            learners: Vec::new(),
            upstream: None,
            heartbeat_interval_ticks: 2,
            election_timeout_ticks: 10,
            pipeline_depth_max: 32,
            batch_bytes_max: 1 << 20,
            batch_commands_max: 4096,
            skip_slots_max: 4096,
            message_runs_max: 256,
            accept_ahead_slots_max: 1 << 20,
            retain_slots: Config::RETAIN_SLOTS_DEFAULT,
            retain_bytes: Config::RETAIN_BYTES_DEFAULT,
            random_seed: u64::from(node.0),
            read_lease: false,
            max_clock_drift_ppm: Config::MAX_CLOCK_DRIFT_PPM_DEFAULT,
        }
    }

    /// The drift bound unless configured otherwise: 10 %.
    pub const MAX_CLOCK_DRIFT_PPM_DEFAULT: u32 = 100_000;

    /// How long a lease lasts, in ticks, from the start of the round that granted it
    /// (protocol.md §5.4): `(election_timeout_ticks − 1) · (1 − ρ) / (1 + ρ)` for the drift
    /// bound ρ, rounded down. A voter that acked the round helps no other candidate for at least
    /// `election_timeout_ticks − 1` of its own ticks after the ack (one is lost to not knowing
    /// where in a tick a message arrived); at worst the leader's clock is slow by ρ and the
    /// voter's fast by ρ, so the leader's lease must be shorter by that ratio.
    #[must_use]
    pub fn lease_ticks(&self) -> u64 {
        let ppm = u128::from(self.max_clock_drift_ppm.min(999_999));
        let timeout = u128::from(self.election_timeout_ticks.saturating_sub(1));
        (timeout * (1_000_000 - ppm) / (1_000_000 + ppm)) as u64
    }

    /// True if this replica is a learner.
    #[must_use]
    pub fn is_learner(&self) -> bool {
        self.learners.contains(&self.node)
    }

    /// Checks every value and returns the first problem found.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad value and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use ConfigError::*;
        if self.voters.is_empty() {
            return Err(NoVoters);
        }
        if self.voters.len() > 64 {
            return Err(TooManyVoters(self.voters.len()));
        }
        let mut all: Vec<NodeId> = self.voters.iter().chain(&self.learners).copied().collect();
        all.sort();
        if let Some(pair) = all.windows(2).find(|w| w[0] == w[1]) {
            return Err(DuplicateNode(pair[0].0));
        }
        if !all.contains(&self.node) {
            return Err(UnknownSelf(self.node.0));
        }
        if let Some(upstream) = self.upstream {
            if !self.is_learner() {
                return Err(UpstreamOnVoter(upstream.0));
            }
            if upstream == self.node || !all.contains(&upstream) {
                return Err(BadUpstream(upstream.0));
            }
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err(Zero("heartbeat_interval_ticks"));
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks.saturating_mul(2) {
            return Err(ElectionTimeoutTooShort {
                election_timeout_ticks: self.election_timeout_ticks,
                heartbeat_interval_ticks: self.heartbeat_interval_ticks,
            });
        }
        for (name, value) in [
            ("pipeline_depth_max", self.pipeline_depth_max),
            ("batch_commands_max", self.batch_commands_max),
            ("message_runs_max", self.message_runs_max),
        ] {
            if value == 0 {
                return Err(Zero(name));
            }
        }
        if self.skip_slots_max == 0 {
            return Err(Zero("skip_slots_max"));
        }
        if self.batch_bytes_max < super::batch::COMMAND_HEADER_BYTES {
            return Err(BatchTooSmall(self.batch_bytes_max));
        }
        if self.accept_ahead_slots_max < self.skip_slots_max * self.pipeline_depth_max as u64 {
            return Err(AcceptAheadTooSmall(self.accept_ahead_slots_max));
        }
        if self.max_clock_drift_ppm >= 1_000_000 {
            return Err(DriftTooLarge(self.max_clock_drift_ppm));
        }
        if self.read_lease && self.lease_ticks() <= u64::from(self.heartbeat_interval_ticks) {
            return Err(LeaseTooShort {
                lease_ticks: self.lease_ticks(),
                heartbeat_interval_ticks: self.heartbeat_interval_ticks,
            });
        }
        Ok(())
    }
}

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No voters at all.
    #[error("the voter list is empty: a shard needs at least one voter")]
    NoVoters,
    /// More voters than the acknowledgement masks hold.
    #[error("{0} voters: at most 64 are supported")]
    TooManyVoters(usize),
    /// A node id listed twice.
    #[error("node {0} is listed more than once among voters and learners")]
    DuplicateNode(u16),
    /// This node is not in the cluster.
    #[error("this node ({0}) is neither a voter nor a learner of the cluster")]
    UnknownSelf(u16),
    /// A voter given an upstream.
    #[error("node {0} is given as upstream of a voter: only learners subscribe to an upstream")]
    UpstreamOnVoter(u16),
    /// An upstream that is not another member.
    #[error("upstream node {0} must be another member of the cluster (a voter or a learner)")]
    BadUpstream(u16),
    /// A value that must be positive is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// Elections would start between heartbeats.
    #[error(
        "election_timeout_ticks ({election_timeout_ticks}) must exceed twice \
         heartbeat_interval_ticks ({heartbeat_interval_ticks}), or a live leader looks dead"
    )]
    ElectionTimeoutTooShort {
        /// The configured election timeout.
        election_timeout_ticks: u32,
        /// The configured heartbeat interval.
        heartbeat_interval_ticks: u32,
    },
    /// A batch could not hold one command.
    #[error("batch_bytes_max ({0}) is smaller than one command header")]
    BatchTooSmall(usize),
    /// Acceptors would refuse a full pipeline of skips.
    #[error("accept_ahead_slots_max ({0}) must be at least skip_slots_max × pipeline_depth_max")]
    AcceptAheadTooSmall(u64),
    /// A drift bound of 100 % or more: no lease can be safe.
    #[error("max_clock_drift_ppm ({0}) must be below 1,000,000 (100 %)")]
    DriftTooLarge(u32),
    /// Leases would lapse between the heartbeats that renew them.
    #[error(
        "a lease of {lease_ticks} ticks (the election timeout shortened by the drift bound) \
         must outlast heartbeat_interval_ticks ({heartbeat_interval_ticks}): lengthen the \
         election timeout or lower the drift bound"
    )]
    LeaseTooShort {
        /// The lease the configuration gives.
        lease_ticks: u64,
        /// The configured heartbeat interval.
        heartbeat_interval_ticks: u32,
    },
}
