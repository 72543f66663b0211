//! The configuration of one node, from a TOML file and from flags (a flag overrides the file),
//! validated before anything starts: each bad value gets its own message naming the value and
//! what would work. It becomes one core [`Config`] per shard.
//!
//! ```toml
//! id = 1
//! cluster_id = 7
//! listen = "127.0.0.1:7001"
//! peers = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"   # the voters, this node too
//! learners = "4=127.0.0.1:7004"
//! data_dir = "/var/lib/quorum/1"
//! shards = 2
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::{ClusterId, Config, NodeId};
use crate::machine::SessionLimits;

/// Every setting, each optional: what a file or the flags say. [`NodeConfig::resolve`] merges
/// two of these and checks the result.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// This node's id.
    pub id: Option<u16>,
    /// The cluster's id; frames from another cluster are refused.
    pub cluster_id: Option<u64>,
    /// The address to listen on, `HOST:PORT`.
    pub listen: Option<String>,
    /// The voters, `ID=HOST:PORT,…`, this node among them unless it is a learner.
    pub peers: Option<String>,
    /// The learners, `ID=HOST:PORT,…`.
    pub learners: Option<String>,
    /// Where the write-ahead logs live (one directory per shard under it).
    pub data_dir: Option<PathBuf>,
    /// Shards per node (every node of a cluster must use the same number).
    pub shards: Option<u16>,
    /// This node only learns (it must then be listed among the learners).
    pub learner: Option<bool>,
    /// For a learner: the member it subscribes to first (another learner relaying, or a
    /// voter). Unset: a follower, so the leaders' egress does not grow with learners.
    pub upstream: Option<u16>,
    /// Pin each shard's thread to a core.
    pub pin_cores: Option<bool>,
    /// With `pin_cores`: the core shard 0 is pinned to; shard k goes to core
    /// (first_core + k) mod cores. Several nodes on one host can so spread over its cores.
    pub first_core: Option<usize>,
    /// Largest batch, in bytes.
    pub batch_bytes_max: Option<usize>,
    /// Most commands in a batch.
    pub batch_commands_max: Option<usize>,
    /// Accept runs a leader keeps in flight.
    pub pipeline_depth_max: Option<usize>,
    /// The protocol clock's period.
    pub tick_ms: Option<u32>,
    /// How often a leader heartbeats.
    pub heartbeat_interval_ms: Option<u32>,
    /// How long followers wait for a leader before standing for election.
    pub election_timeout_ms: Option<u32>,
    /// Size of each write-ahead log segment file, in MiB (preallocated).
    pub wal_segment_mib: Option<u32>,
    /// Committed slots each shard keeps in memory behind its commit position; older ones are
    /// served from the WAL.
    pub retain_slots: Option<u64>,
    /// MiB of committed batches each shard keeps in memory, whatever `retain_slots` allows.
    pub retain_mib: Option<u32>,
    /// Each shard snapshots its state every this many MiB of WAL, then deletes the WAL
    /// segments the snapshot covers; 0: never (the WAL grows without bound). Ignored with
    /// `apply = "total"`.
    pub snapshot_every_mib: Option<u32>,
    /// A snapshot goes to a peer in pieces of at most this many KiB, each pulled by the
    /// receiver once it holds the one before.
    pub snapshot_piece_kib: Option<u32>,
    /// `fsync` (default): acknowledge only what is on disk. `none`: never sync (benchmarks
    /// only; a machine crash loses acknowledged writes).
    pub durability: Option<Durability>,
    /// `shard` (default): each shard applies its own slots to its own state machine.
    /// `total`: one state machine applies every shard's commands in global position order.
    pub apply: Option<ApplyMode>,
    /// Client connections the node serves at once, over all its shards; more are refused
    /// with a reason the client prints. Peers' connections do not count.
    pub connections_max: Option<u32>,
    /// A client connection that sends no frame for this long is closed (0: never). Tails,
    /// which only read, are exempt.
    pub idle_timeout_ms: Option<u32>,
    /// A frame whose first byte arrived must be whole within this long, or its connection
    /// is closed.
    pub read_timeout_ms: Option<u32>,
    /// A connection whose other end takes none of what it is sent for this long is closed.
    pub write_timeout_ms: Option<u32>,
    /// MiB that may wait to be sent to one client before it is disconnected as one that does
    /// not read (default 16, and at least two snapshot pieces).
    pub client_queue_mib: Option<u32>,
    /// Leaders answer lease reads from a lease (protocol.md §5.4); set it alike on every
    /// voter, whose side of the lease it also turns on.
    pub read_lease: Option<bool>,
    /// The bound on clock drift leases rely on, a percentage of real time such as `"10%"`
    /// (the default) or `"0.5%"`.
    pub max_clock_drift: Option<String>,
    /// Where to serve the HTTP/JSON API, `HOST:PORT` (docs/http.md); unset: not served.
    pub http_listen: Option<String>,
    /// Where to serve the Redis protocol, `HOST:PORT` (docs/redis.md); unset: not served.
    pub redis_listen: Option<String>,
    /// MiB of recent changes the built-in store keeps per shard, for watches and reads at a
    /// past revision (docs/coordination.md; default 64).
    pub history_mib: Option<u64>,
    /// Where to serve `/metrics`, `/ready` and `/health` alone, `HOST:PORT`
    /// (docs/operations.md); unset: only on `http_listen`, if that is set.
    pub metrics_listen: Option<String>,
    /// `/ready` answers 503 while a shard's applied position trails the highest commit
    /// position it knows of by more than this many slots (default 10000).
    pub ready_lag_slots: Option<u64>,
    /// Client sessions each shard holds before idle ones are evicted, least recently used
    /// first (a soft bound: a session used within `session_idle_commands_min` commands is
    /// kept). Every node of a cluster must use the same session settings.
    pub sessions_max: Option<u64>,
    /// A session is idle, and may be evicted, once this many commands were applied on its
    /// shard since its last request (counted in the log, so every replica evicts the same
    /// session at the same command).
    pub session_idle_commands_min: Option<u64>,
    /// Replies each session keeps for retries, the newest.
    pub session_replies_max: Option<u32>,
    /// KiB of replies each session keeps (the newest reply is kept whatever its size).
    pub session_replies_kib: Option<u32>,
    /// Evicted session ids each shard remembers, so that no new session is given one.
    pub sessions_evicted_max: Option<u64>,
}

/// Where a node's front ends listen, checked ([`NodeSettings::front_listeners`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontListeners {
    /// The HTTP/JSON API (with `/metrics` and `/ready` beside it).
    pub http: Option<String>,
    /// The Redis protocol.
    pub redis: Option<String>,
    /// `/metrics`, `/ready` and `/health` alone.
    pub metrics: Option<String>,
    /// `/ready`'s bound on how far the applied position may trail the commit position.
    pub ready_lag_slots: u64,
}

/// Where a node applies committed commands.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ApplyMode {
    /// Each shard applies its own slots, in its slot order, to its own state machine (the KV
    /// store routes keys by hash); a shard never waits for another.
    #[default]
    Shard,
    /// One state machine applies the merged log of all shards, in global position order.
    Total,
}

impl std::fmt::Display for ApplyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApplyMode::Shard => "shard",
            ApplyMode::Total => "total",
        })
    }
}

/// Whether a node waits for its disk.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every acknowledgement waits for `fdatasync` of the records it depends on.
    #[default]
    Fsync,
    /// Records are written to the WAL but never synced.
    None,
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Fsync => "fsync",
            Durability::None => "none (NOT DURABLE)",
        })
    }
}

impl NodeSettings {
    /// Reads settings from a TOML file.
    ///
    /// # Errors
    /// The file cannot be read or is not valid TOML of these settings.
    pub fn from_file(path: &Path) -> Result<NodeSettings, NodeConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodeConfigError::File {
            path: path.to_path_buf(),
            reason: source.to_string(),
        })?;
        toml::from_str(&text).map_err(|error| NodeConfigError::File {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })
    }

    /// Where the front ends listen (`http_listen`, `redis_listen`, `metrics_listen`), each
    /// checked as `HOST:PORT`, and the readiness bound. The node itself does not serve them:
    /// the binary starts them beside it (`quorum::front`).
    ///
    /// # Errors
    /// An address that is not `HOST:PORT`.
    pub fn front_listeners(&self) -> Result<FrontListeners, NodeConfigError> {
        let check = |field, value: &Option<String>| {
            value.as_deref().map(|value| check_address(field, value)).transpose()
        };
        Ok(FrontListeners {
            http: check("http_listen", &self.http_listen)?,
            redis: check("redis_listen", &self.redis_listen)?,
            metrics: check("metrics_listen", &self.metrics_listen)?,
            ready_lag_slots: self
                .ready_lag_slots
                .unwrap_or(crate::runtime::metrics::READY_LAG_SLOTS_DEFAULT),
        })
    }

    /// `self`, with every value `overrides` sets replacing it.
    #[must_use]
    pub fn overridden_by(self, overrides: NodeSettings) -> NodeSettings {
        NodeSettings {
            id: overrides.id.or(self.id),
            cluster_id: overrides.cluster_id.or(self.cluster_id),
            listen: overrides.listen.or(self.listen),
            peers: overrides.peers.or(self.peers),
            learners: overrides.learners.or(self.learners),
            data_dir: overrides.data_dir.or(self.data_dir),
            shards: overrides.shards.or(self.shards),
            learner: overrides.learner.or(self.learner),
            upstream: overrides.upstream.or(self.upstream),
            pin_cores: overrides.pin_cores.or(self.pin_cores),
            first_core: overrides.first_core.or(self.first_core),
            batch_bytes_max: overrides.batch_bytes_max.or(self.batch_bytes_max),
            batch_commands_max: overrides.batch_commands_max.or(self.batch_commands_max),
            pipeline_depth_max: overrides.pipeline_depth_max.or(self.pipeline_depth_max),
            tick_ms: overrides.tick_ms.or(self.tick_ms),
            heartbeat_interval_ms: overrides.heartbeat_interval_ms.or(self.heartbeat_interval_ms),
            election_timeout_ms: overrides.election_timeout_ms.or(self.election_timeout_ms),
            wal_segment_mib: overrides.wal_segment_mib.or(self.wal_segment_mib),
            retain_slots: overrides.retain_slots.or(self.retain_slots),
            retain_mib: overrides.retain_mib.or(self.retain_mib),
            snapshot_every_mib: overrides.snapshot_every_mib.or(self.snapshot_every_mib),
            snapshot_piece_kib: overrides.snapshot_piece_kib.or(self.snapshot_piece_kib),
            durability: overrides.durability.or(self.durability),
            apply: overrides.apply.or(self.apply),
            connections_max: overrides.connections_max.or(self.connections_max),
            idle_timeout_ms: overrides.idle_timeout_ms.or(self.idle_timeout_ms),
            read_timeout_ms: overrides.read_timeout_ms.or(self.read_timeout_ms),
            write_timeout_ms: overrides.write_timeout_ms.or(self.write_timeout_ms),
            client_queue_mib: overrides.client_queue_mib.or(self.client_queue_mib),
            read_lease: overrides.read_lease.or(self.read_lease),
            max_clock_drift: overrides.max_clock_drift.or(self.max_clock_drift),
            http_listen: overrides.http_listen.or(self.http_listen),
            redis_listen: overrides.redis_listen.or(self.redis_listen),
            history_mib: overrides.history_mib.or(self.history_mib),
            metrics_listen: overrides.metrics_listen.or(self.metrics_listen),
            ready_lag_slots: overrides.ready_lag_slots.or(self.ready_lag_slots),
            sessions_max: overrides.sessions_max.or(self.sessions_max),
            session_idle_commands_min: overrides
                .session_idle_commands_min
                .or(self.session_idle_commands_min),
            session_replies_max: overrides.session_replies_max.or(self.session_replies_max),
            session_replies_kib: overrides.session_replies_kib.or(self.session_replies_kib),
            sessions_evicted_max: overrides.sessions_evicted_max.or(self.sessions_evicted_max),
        }
    }
}

/// A configuration that cannot work, with what would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeConfigError {
    /// A required setting is missing.
    #[error("missing setting `{0}`: give it as a flag (--{flag}) or in the config file", flag = .0.replace('_', "-"))]
    Missing(&'static str),
    /// The config file could not be used.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An address is not `HOST:PORT`.
    #[error("`{field}` = `{value}` is not HOST:PORT with a port from 1 to 65535")]
    BadAddress {
        /// The setting.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// Shard `k` listens on `PORT + k`; with this many shards a port passes 65535.
    #[error(
        "`{address}`: shard k listens on PORT + k, and with {shards} shards that passes port 65535"
    )]
    PortsOverflow {
        /// The address.
        address: String,
        /// Shards per node.
        shards: u16,
    },
    /// A member entry is not `ID=HOST:PORT`.
    #[error("`{field}` entry `{entry}` is not ID=HOST:PORT with an ID from 1 to 65535")]
    BadMember {
        /// The setting.
        field: &'static str,
        /// The entry.
        entry: String,
    },
    /// A node id appears twice among voters and learners.
    #[error("node {0} is listed more than once among peers and learners")]
    DuplicateNode(u16),
    /// This node is not where its role says it is.
    #[error("node {id} must be listed in `{list}` (it is {role})")]
    NotListed {
        /// This node.
        id: u16,
        /// The list it belongs in.
        list: &'static str,
        /// "a voter" or "a learner".
        role: &'static str,
    },
    /// A number outside what works.
    #[error("`{field}` = {value} is out of range: use {min} to {max}")]
    OutOfRange {
        /// The setting.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The smallest that works.
        min: u64,
        /// The largest that works.
        max: u64,
    },
    /// Timing settings that contradict each other.
    #[error("{0}")]
    Timing(String),
    /// Sizes that contradict each other.
    #[error("{0}")]
    Sizes(String),
    /// An upstream that cannot be subscribed to.
    #[error("upstream {upstream}: {reason}")]
    BadUpstream {
        /// The upstream given.
        upstream: u16,
        /// Why it cannot be.
        reason: &'static str,
    },
}

/// A checked node configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node.
    pub id: NodeId,
    /// The cluster.
    pub cluster_id: ClusterId,
    /// Where to listen.
    pub listen: String,
    /// The voters and their addresses.
    pub voters: BTreeMap<NodeId, String>,
    /// The learners and their addresses.
    pub learners: BTreeMap<NodeId, String>,
    /// Where the logs live.
    pub data_dir: PathBuf,
    /// Shards per node.
    pub shards: u16,
    /// True if this node only learns.
    pub learner: bool,
    /// For a learner: the member it subscribes to first.
    pub upstream: Option<NodeId>,
    /// Pin shard threads to cores.
    pub pin_cores: bool,
    /// The core shard 0 is pinned to.
    pub first_core: usize,
    /// Largest batch, in bytes.
    pub batch_bytes_max: usize,
    /// Most commands in a batch.
    pub batch_commands_max: usize,
    /// Accept runs in flight per leader.
    pub pipeline_depth_max: usize,
    /// The protocol clock's period.
    pub tick_ms: u32,
    /// Heartbeat period.
    pub heartbeat_interval_ms: u32,
    /// Election timeout.
    pub election_timeout_ms: u32,
    /// Bytes per WAL segment file.
    pub wal_segment_bytes: u64,
    /// Whether acknowledgements wait for the disk.
    pub durability: Durability,
    /// Where committed commands are applied.
    pub apply: ApplyMode,
    /// Committed slots each shard keeps in memory.
    pub retain_slots: u64,
    /// Bytes of committed batches each shard keeps in memory.
    pub retain_bytes: u64,
    /// WAL bytes between snapshots, 0 for none.
    pub snapshot_every_bytes: u64,
    /// Most bytes of a snapshot sent in one message.
    pub snapshot_piece_bytes: usize,
    /// Client connections served at once over all shards.
    pub connections_max: u32,
    /// A client connection silent this long is closed; 0 for never.
    pub idle_timeout_ms: u32,
    /// A frame started must be whole within this long.
    pub read_timeout_ms: u32,
    /// A connection whose reader takes nothing for this long is closed.
    pub write_timeout_ms: u32,
    /// Bytes that may wait for one client before it is disconnected.
    pub client_queue_bytes: usize,
    /// Lease reads, and the drift bound they rely on.
    pub reads: ReadSettings,
    /// What each shard's session table keeps (protocol.md §5); the same on every node.
    pub sessions: SessionLimits,
    /// Bytes of recent changes the built-in store keeps per shard (docs/coordination.md).
    pub history_bytes: usize,
}

/// How a node reads without the log beyond the read index (protocol.md §5.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadSettings {
    /// Leases on (`--read-lease`).
    pub lease: bool,
    /// The drift bound, in parts per million (`--max-clock-drift`).
    pub max_clock_drift_ppm: u32,
}

/// Reads a drift bound such as `10%`, `0.5%` or `10` (a percentage) as parts per million.
///
/// # Errors
/// Not a number, or not below 100 %.
pub fn parse_drift(text: &str) -> Result<u32, String> {
    let number = text.trim().trim_end_matches('%').trim();
    let percent: f64 =
        number.parse().map_err(|_| format!("`{text}` is not a percentage such as 10% or 0.5%"))?;
    if !(0.0..100.0).contains(&percent) {
        return Err(format!("`{text}`: a drift bound is at least 0 % and below 100 %"));
    }
    Ok((percent * 10_000.0).round() as u32)
}

fn read_settings(
    read_lease: Option<bool>,
    max_clock_drift: Option<&str>,
) -> Result<ReadSettings, NodeConfigError> {
    let max_clock_drift_ppm = match max_clock_drift {
        Some(text) => parse_drift(text).map_err(NodeConfigError::Timing)?,
        None => Config::MAX_CLOCK_DRIFT_PPM_DEFAULT,
    };
    Ok(ReadSettings { lease: read_lease.unwrap_or(false), max_clock_drift_ppm })
}

fn client_queue_bytes(
    client_queue_mib: Option<u32>,
    snapshot_piece_bytes: usize,
) -> Result<usize, NodeConfigError> {
    Ok(match client_queue_mib {
        // A client fetching the snapshot may hold one piece while it is sent the next.
        None => ((CLIENT_QUEUE_MIB_DEFAULT as usize) << 20).max(2 * snapshot_piece_bytes),
        Some(mib) => {
            let bytes = (in_range("client_queue_mib", mib, 1, 1 << 16)? as usize) << 20;
            if bytes < 2 * snapshot_piece_bytes {
                return Err(NodeConfigError::Sizes(format!(
                    "client_queue_mib ({mib}) must hold two snapshot pieces (2 × \
                     snapshot_piece_kib = {} KiB), or a client fetching the snapshot is cut off",
                    2 * (snapshot_piece_bytes >> 10)
                )));
            }
            bytes
        }
    })
}

/// Client connections a node serves at once by default.
pub const CONNECTIONS_MAX_DEFAULT: u32 = 4096;

/// A client connection is closed after this long without a frame, by default: long enough
/// for any client that means to come back, short enough that abandoned ones give back their
/// place under the connection limit.
pub const IDLE_TIMEOUT_MS_DEFAULT: u32 = 300_000;

/// A frame started must finish within this, by default: a full 64 MiB frame at 20 Mbit/s.
pub const READ_TIMEOUT_MS_DEFAULT: u32 = 30_000;

/// A connection taking none of its bytes for this long is closed, by default.
pub const WRITE_TIMEOUT_MS_DEFAULT: u32 = 30_000;

/// MiB that may wait for one client by default (raised to two snapshot pieces if those are
/// larger).
pub const CLIENT_QUEUE_MIB_DEFAULT: u32 = 16;

/// A snapshot's pieces by default, in KiB (the shard's default).
pub const SNAPSHOT_PIECE_KIB_DEFAULT: u32 = (crate::shard::SNAPSHOT_PIECE_BYTES >> 10) as u32;

/// WAL between snapshots by default: four segments of the default size, so a shard's log
/// stays within about five segments on disk.
pub const SNAPSHOT_EVERY_MIB_DEFAULT: u32 = 256;

impl NodeConfig {
    /// The largest frame a node accepts: room for a message of full batches.
    #[must_use]
    pub fn frame_bytes_max(&self) -> usize {
        (64 << 20).max(2 * self.batch_bytes_max + (1 << 20))
    }

    /// Every member's base address, voters and learners.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, &str, bool)> {
        let voters = self.voters.iter().map(|(id, address)| (*id, address.as_str(), false));
        voters.chain(self.learners.iter().map(|(id, address)| (*id, address.as_str(), true)))
    }
}

fn check_address(field: &'static str, value: &str) -> Result<String, NodeConfigError> {
    let bad = || NodeConfigError::BadAddress { field, value: value.to_string() };
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(value.to_string())
}

/// Parses `ID=HOST:PORT,…` (an empty string is an empty list).
///
/// # Errors
/// The first entry that is not `ID=HOST:PORT`, or an id given twice.
pub fn parse_members(
    field: &'static str,
    text: &str,
) -> Result<BTreeMap<NodeId, String>, NodeConfigError> {
    let mut members = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let bad = || NodeConfigError::BadMember { field, entry: entry.to_string() };
        let (id, address) = entry.split_once('=').ok_or_else(bad)?;
        let id: u16 = id.trim().parse().map_err(|_| bad())?;
        if id == 0 {
            return Err(bad());
        }
        let address = check_address(field, address.trim()).map_err(|_| bad())?;
        if members.insert(NodeId(id), address).is_some() {
            return Err(NodeConfigError::DuplicateNode(id));
        }
    }
    Ok(members)
}

fn in_range<T: Into<u64> + Copy>(
    field: &'static str,
    value: T,
    min: u64,
    max: u64,
) -> Result<T, NodeConfigError> {
    let wide = value.into();
    if wide < min || wide > max {
        return Err(NodeConfigError::OutOfRange { field, value: wide, min, max });
    }
    Ok(value)
}

/// The session table's limits from the settings, each checked (defaults:
/// [`SessionLimits::DEFAULT`]).
fn resolve_sessions(settings: &NodeSettings) -> Result<SessionLimits, NodeConfigError> {
    let defaults = SessionLimits::DEFAULT;
    let or = |value: Option<u64>, default: usize| value.unwrap_or(default as u64);
    let sessions_max =
        in_range("sessions_max", or(settings.sessions_max, defaults.sessions_max), 1, 1 << 30)?;
    let idle_commands_min = in_range(
        "session_idle_commands_min",
        settings.session_idle_commands_min.unwrap_or(defaults.idle_commands_min),
        1,
        1 << 40,
    )?;
    let replies_max = in_range(
        "session_replies_max",
        settings.session_replies_max.map_or(defaults.replies_max as u64, u64::from),
        1,
        1 << 20,
    )?;
    let reply_bytes_max = match settings.session_replies_kib {
        Some(kib) => in_range("session_replies_kib", kib, 1, 1 << 20)? as usize * 1024,
        None => defaults.reply_bytes_max,
    };
    let evicted_max = in_range(
        "sessions_evicted_max",
        or(settings.sessions_evicted_max, defaults.evicted_max),
        1,
        1 << 30,
    )?;
    Ok(SessionLimits {
        replies_max: replies_max as usize,
        reply_bytes_max,
        sessions_max: sessions_max as usize,
        idle_commands_min,
        evicted_max: evicted_max as usize,
    })
}

/// `idle_timeout_ms`: 0 (never) or a time in range.
fn resolve_idle_timeout(value: Option<u32>) -> Result<u32, NodeConfigError> {
    let idle_timeout_ms = value.unwrap_or(IDLE_TIMEOUT_MS_DEFAULT);
    if idle_timeout_ms != 0 {
        in_range("idle_timeout_ms", idle_timeout_ms, 100, 86_400_000)?;
    }
    Ok(idle_timeout_ms)
}

impl NodeConfig {
    /// Checks merged settings, filling in defaults, and returns the first problem found.
    ///
    /// # Errors
    /// A [`NodeConfigError`] naming the setting.
    pub fn resolve(settings: NodeSettings) -> Result<NodeConfig, NodeConfigError> {
        use NodeConfigError::*;
        let id = NodeId(in_range("id", settings.id.ok_or(Missing("id"))?, 1, u64::from(u16::MAX))?);
        let cluster_id = ClusterId(settings.cluster_id.ok_or(Missing("cluster_id"))?);
        let listen = check_address("listen", settings.listen.as_deref().ok_or(Missing("listen"))?)?;
        let voters = parse_members("peers", settings.peers.as_deref().ok_or(Missing("peers"))?)?;
        let learners = parse_members("learners", settings.learners.as_deref().unwrap_or(""))?;
        if let Some(node) = voters.keys().find(|node| learners.contains_key(node)) {
            return Err(DuplicateNode(node.0));
        }
        let learner = settings.learner.unwrap_or(false);
        let (list, role, listed) = if learner {
            ("learners", "a learner", learners.contains_key(&id))
        } else {
            ("peers", "a voter", voters.contains_key(&id))
        };
        if !listed {
            return Err(NotListed { id: id.0, list, role });
        }
        in_range("peers (voter count)", voters.len() as u64, 1, 64)?;
        let upstream = settings.upstream.map(NodeId);
        if let Some(upstream) = upstream {
            let bad = |reason| Err(BadUpstream { upstream: upstream.0, reason });
            if !learner {
                return bad("only a learner (--learner) subscribes to an upstream");
            }
            if upstream == id {
                return bad("a learner cannot subscribe to itself");
            }
            if !voters.contains_key(&upstream) && !learners.contains_key(&upstream) {
                return bad("not a member: give the id of a voter or another learner");
            }
        }
        let sessions = resolve_sessions(&settings)?;
        let history_bytes = in_range("history_mib", settings.history_mib.unwrap_or(64), 1, 1 << 20)?
            as usize
            * (1 << 20);
        let data_dir = settings.data_dir.ok_or(Missing("data_dir"))?;
        let default_shards =
            std::thread::available_parallelism().map_or(1, |cores| cores.get() as u16);
        let shards = in_range("shards", settings.shards.unwrap_or(default_shards), 1, 256)?;
        let batch_bytes_max = in_range(
            "batch_bytes_max",
            settings.batch_bytes_max.unwrap_or(1 << 20) as u64,
            4096,
            64 << 20,
        )? as usize;
        let batch_commands_max = in_range(
            "batch_commands_max",
            settings.batch_commands_max.unwrap_or(4096) as u64,
            1,
            1 << 20,
        )? as usize;
        let pipeline_depth_max = in_range(
            "pipeline_depth_max",
            settings.pipeline_depth_max.unwrap_or(32) as u64,
            1,
            4096,
        )? as usize;
        let tick_ms = in_range("tick_ms", settings.tick_ms.unwrap_or(5), 1, 1000)?;
        let heartbeat_interval_ms = in_range(
            "heartbeat_interval_ms",
            settings.heartbeat_interval_ms.unwrap_or(20),
            1,
            60_000,
        )?;
        let election_timeout_ms = in_range(
            "election_timeout_ms",
            settings.election_timeout_ms.unwrap_or(200),
            1,
            600_000,
        )?;
        if heartbeat_interval_ms < tick_ms {
            return Err(Timing(format!(
                "heartbeat_interval_ms ({heartbeat_interval_ms}) must be at least tick_ms ({tick_ms})"
            )));
        }
        if election_timeout_ms <= heartbeat_interval_ms.saturating_mul(2) {
            return Err(Timing(format!(
                "election_timeout_ms ({election_timeout_ms}) must exceed twice heartbeat_interval_ms \
                 ({heartbeat_interval_ms}), or a live leader looks dead"
            )));
        }
        // At most 32 MiB: a piece fits a frame with room to spare.
        let snapshot_piece_bytes = (in_range(
            "snapshot_piece_kib",
            settings.snapshot_piece_kib.unwrap_or(SNAPSHOT_PIECE_KIB_DEFAULT),
            1,
            32 << 10,
        )? as usize)
            << 10;
        let client_queue_bytes =
            client_queue_bytes(settings.client_queue_mib, snapshot_piece_bytes)?;
        let idle_timeout_ms = resolve_idle_timeout(settings.idle_timeout_ms)?;
        let config = NodeConfig {
            id,
            cluster_id,
            listen,
            voters,
            learners,
            data_dir,
            shards,
            learner,
            upstream,
            pin_cores: settings.pin_cores.unwrap_or(true),
            first_core: settings.first_core.unwrap_or(0),
            batch_bytes_max,
            batch_commands_max,
            pipeline_depth_max,
            tick_ms,
            heartbeat_interval_ms,
            election_timeout_ms,
            wal_segment_bytes: u64::from(in_range(
                "wal_segment_mib",
                settings.wal_segment_mib.unwrap_or(64),
                1,
                4096,
            )?) << 20,
            durability: settings.durability.unwrap_or_default(),
            apply: settings.apply.unwrap_or_default(),
            retain_slots: settings.retain_slots.unwrap_or(Config::RETAIN_SLOTS_DEFAULT),
            retain_bytes: match settings.retain_mib {
                Some(mib) => u64::from(in_range("retain_mib", mib, 1, 1 << 20)?) << 20,
                None => Config::RETAIN_BYTES_DEFAULT,
            },
            snapshot_every_bytes: u64::from(in_range(
                "snapshot_every_mib",
                settings.snapshot_every_mib.unwrap_or(SNAPSHOT_EVERY_MIB_DEFAULT),
                0,
                1 << 20,
            )?) << 20,
            snapshot_piece_bytes,
            connections_max: in_range(
                "connections_max",
                settings.connections_max.unwrap_or(CONNECTIONS_MAX_DEFAULT),
                1,
                1_000_000,
            )?,
            idle_timeout_ms,
            read_timeout_ms: in_range(
                "read_timeout_ms",
                settings.read_timeout_ms.unwrap_or(READ_TIMEOUT_MS_DEFAULT),
                100,
                3_600_000,
            )?,
            write_timeout_ms: in_range(
                "write_timeout_ms",
                settings.write_timeout_ms.unwrap_or(WRITE_TIMEOUT_MS_DEFAULT),
                100,
                3_600_000,
            )?,
            client_queue_bytes,
            reads: read_settings(settings.read_lease, settings.max_clock_drift.as_deref())?,
            sessions,
            history_bytes,
        };
        // Shard k listens on PORT + k: every node's ports must fit.
        let addresses =
            config.members().map(|(_, address, _)| address).chain([config.listen.as_str()]);
        for address in addresses {
            let port = address.rsplit_once(':').and_then(|(_, port)| port.parse::<u32>().ok());
            if port.is_some_and(|port| port + u32::from(shards) - 1 > 65535) {
                return Err(PortsOverflow { address: address.to_string(), shards });
            }
        }
        // The core checks its own rules too; any it refuses is a node configuration error.
        config.shard_config(0).validate().map_err(|error| Timing(error.to_string()))?;
        Ok(config)
    }

    /// The core configuration of `shard` on this node (times converted to ticks).
    #[must_use]
    pub fn shard_config(&self, shard: u16) -> Config {
        let mut config =
            Config::new(self.cluster_id, self.id, self.voters.keys().copied().collect());
        config.learners = self.learners.keys().copied().collect();
        config.upstream = self.upstream;
        config.heartbeat_interval_ticks = (self.heartbeat_interval_ms / self.tick_ms).max(1);
        config.election_timeout_ticks = (self.election_timeout_ms / self.tick_ms).max(1);
        config.batch_bytes_max = self.batch_bytes_max;
        config.batch_commands_max = self.batch_commands_max;
        config.pipeline_depth_max = self.pipeline_depth_max;
        config.retain_slots = self.retain_slots;
        config.retain_bytes = self.retain_bytes;
        // A promise or catch-up message of full batches must fit in one frame.
        config.message_runs_max =
            ((self.frame_bytes_max() - (1 << 20)) / self.batch_bytes_max).clamp(1, 256);
        config.random_seed =
            (u64::from(self.id.0) << 16) ^ u64::from(shard) ^ self.cluster_id.0.rotate_left(32);
        config.read_lease = self.reads.lease;
        config.max_clock_drift_ppm = self.reads.max_clock_drift_ppm;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> NodeSettings {
        NodeSettings {
            id: Some(1),
            cluster_id: Some(7),
            listen: Some("127.0.0.1:7001".into()),
            peers: Some("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=localhost:7003".into()),
            data_dir: Some("/tmp/q1".into()),
            shards: Some(2),
            ..NodeSettings::default()
        }
    }

    #[test]
    fn a_good_configuration_resolves_with_defaults_and_converts_to_ticks() {
        let config = NodeConfig::resolve(good()).unwrap();
        assert_eq!(config.voters.len(), 3);
        assert_eq!(config.shards, 2);
        let shard = config.shard_config(1);
        assert_eq!(shard.heartbeat_interval_ticks, 4);
        assert_eq!(shard.election_timeout_ticks, 40);
        assert!(shard.validate().is_ok());
        assert_ne!(config.shard_config(0).random_seed, shard.random_seed);
    }

    #[test]
    fn connection_limits_have_defaults_and_the_client_queue_holds_two_pieces() {
        let config = NodeConfig::resolve(good()).unwrap();
        assert_eq!(config.connections_max, CONNECTIONS_MAX_DEFAULT);
        assert_eq!(config.idle_timeout_ms, IDLE_TIMEOUT_MS_DEFAULT);
        assert_eq!(config.client_queue_bytes, 16 << 20);
        let large_pieces = NodeSettings { snapshot_piece_kib: Some(32 << 10), ..good() };
        assert_eq!(NodeConfig::resolve(large_pieces).unwrap().client_queue_bytes, 64 << 20);
        let never_idle = NodeSettings { idle_timeout_ms: Some(0), ..good() };
        assert_eq!(NodeConfig::resolve(never_idle).unwrap().idle_timeout_ms, 0);
    }

    #[test]
    fn session_limits_default_to_the_appliers_and_each_bad_one_is_named() {
        assert_eq!(NodeConfig::resolve(good()).unwrap().sessions, SessionLimits::DEFAULT);
        let file: NodeSettings = toml::from_str(
            "sessions_max = 10\nsession_idle_commands_min = 20\nsession_replies_max = 3\n\
             session_replies_kib = 2\nsessions_evicted_max = 40\n",
        )
        .unwrap();
        let sessions = NodeConfig::resolve(good().overridden_by(file)).unwrap().sessions;
        let expected = SessionLimits {
            sessions_max: 10,
            idle_commands_min: 20,
            replies_max: 3,
            reply_bytes_max: 2048,
            evicted_max: 40,
        };
        assert_eq!(sessions, expected);
        let cases: [(NodeSettings, &str); 5] = [
            (NodeSettings { sessions_max: Some(0), ..good() }, "`sessions_max` = 0"),
            (
                NodeSettings { session_idle_commands_min: Some(0), ..good() },
                "`session_idle_commands_min` = 0 is out of range: use 1 to",
            ),
            (NodeSettings { session_replies_max: Some(0), ..good() }, "`session_replies_max` = 0"),
            (NodeSettings { session_replies_kib: Some(0), ..good() }, "`session_replies_kib` = 0"),
            (
                NodeSettings { sessions_evicted_max: Some(0), ..good() },
                "`sessions_evicted_max` = 0",
            ),
        ];
        for (settings, expected) in cases {
            let message = NodeConfig::resolve(settings).unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} does not say {expected:?}");
        }
    }

    #[test]
    fn shard_ports_must_fit() {
        let settings = NodeSettings { listen: Some("127.0.0.1:65535".into()), ..good() };
        let error = NodeConfig::resolve(settings).unwrap_err();
        assert!(matches!(error, NodeConfigError::PortsOverflow { shards: 2, .. }), "{error}");
    }

    #[test]
    fn flags_override_the_file() {
        let file: NodeSettings = toml::from_str("id = 2\ncluster_id = 7\nshards = 4\n").unwrap();
        let flags = NodeSettings { shards: Some(1), ..NodeSettings::default() };
        let merged = file.overridden_by(flags);
        assert_eq!((merged.id, merged.shards), (Some(2), Some(1)));
    }

    #[test]
    fn front_listeners_come_from_the_file_and_flags_each_address_checked() {
        let file: NodeSettings =
            toml::from_str("metrics_listen = \"127.0.0.1:9100\"\nready_lag_slots = 50\n").unwrap();
        let listeners = file.clone().front_listeners().unwrap();
        assert_eq!(listeners.metrics.as_deref(), Some("127.0.0.1:9100"));
        assert_eq!((listeners.http, listeners.ready_lag_slots), (None, 50));
        let flags = NodeSettings { ready_lag_slots: Some(7), ..NodeSettings::default() };
        assert_eq!(file.clone().overridden_by(flags).front_listeners().unwrap().ready_lag_slots, 7);
        let unset = NodeSettings::default().front_listeners().unwrap();
        assert_eq!(unset.ready_lag_slots, crate::runtime::metrics::READY_LAG_SLOTS_DEFAULT);
        let bad = NodeSettings { metrics_listen: Some("nowhere".into()), ..file };
        let error = bad.front_listeners().unwrap_err().to_string();
        assert!(error.starts_with("`metrics_listen` = `nowhere` is not HOST:PORT"), "{error}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<NodeSettings>("shard = 4\n").is_err());
    }

    #[test]
    fn each_bad_value_gets_its_own_message() {
        let cases: Vec<(NodeSettings, &str)> = vec![
            (NodeSettings { id: None, ..good() }, "missing setting `id`: give it as a flag (--id)"),
            (
                NodeSettings { listen: Some("127.0.0.1".into()), ..good() },
                "`listen` = `127.0.0.1` is not HOST:PORT",
            ),
            (
                NodeSettings { peers: Some("1=127.0.0.1:7001,two=x:1".into()), ..good() },
                "`peers` entry `two=x:1`",
            ),
            (
                NodeSettings { peers: Some("1=a:1,1=b:2".into()), ..good() },
                "node 1 is listed more than once",
            ),
            (
                NodeSettings { peers: Some("2=a:1,3=b:2".into()), ..good() },
                "node 1 must be listed in `peers` (it is a voter)",
            ),
            (NodeSettings { learner: Some(true), ..good() }, "node 1 must be listed in `learners`"),
            (
                NodeSettings { learners: Some("2=127.0.0.1:9".into()), ..good() },
                "node 2 is listed more than once",
            ),
            (
                NodeSettings { shards: Some(0), ..good() },
                "`shards` = 0 is out of range: use 1 to 256",
            ),
            (
                NodeSettings { snapshot_piece_kib: Some(0), ..good() },
                "`snapshot_piece_kib` = 0 is out of range: use 1 to 32768",
            ),
            (
                NodeSettings { connections_max: Some(0), ..good() },
                "`connections_max` = 0 is out of range: use 1 to 1000000",
            ),
            (
                NodeSettings { idle_timeout_ms: Some(50), ..good() },
                "`idle_timeout_ms` = 50 is out of range: use 100 to 86400000",
            ),
            (
                NodeSettings { read_timeout_ms: Some(0), ..good() },
                "`read_timeout_ms` = 0 is out of range",
            ),
            (
                NodeSettings { client_queue_mib: Some(4), ..good() },
                "client_queue_mib (4) must hold two snapshot pieces (2 × snapshot_piece_kib = 8192 KiB)",
            ),
            (
                NodeSettings { election_timeout_ms: Some(30), ..good() },
                "election_timeout_ms (30) must exceed twice",
            ),
            (
                NodeSettings { tick_ms: Some(50), ..good() },
                "heartbeat_interval_ms (20) must be at least tick_ms (50)",
            ),
            (
                NodeSettings { upstream: Some(2), ..good() },
                "upstream 2: only a learner (--learner) subscribes to an upstream",
            ),
            (
                NodeSettings {
                    id: Some(4),
                    learner: Some(true),
                    learners: Some("4=127.0.0.1:7004".into()),
                    upstream: Some(9),
                    ..good()
                },
                "upstream 9: not a member",
            ),
        ];
        for (settings, expected) in cases {
            let message = NodeConfig::resolve(settings).unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} does not say {expected:?}");
        }
    }
}
