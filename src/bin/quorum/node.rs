//! `quorum node`: runs one node until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use quorum::front::{FrontConfig, FrontEnds};
use quorum::runtime::Node;
use quorum::runtime::config::{FrontListeners, NodeConfig, NodeSettings};

/// How the node writes its log (to stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people: time, level, where, message, fields.
    #[default]
    Text,
    /// One JSON object per line for machines: timestamp, level, target, fields (message
    /// among them), and the span fields.
    Json,
}

/// Flags override the same keys of the `--config` file.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// How the log on stderr looks: text (default) or json (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Which events are logged: a level (error, warn, info, debug, trace) or directives as
    /// RUST_LOG takes them (`info,quorum::runtime::net=debug`). Default: RUST_LOG if set,
    /// else info.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// A TOML file with any of the settings below (keys as the flags, with `_` for `-`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's id, 1 to 65535, unique in the cluster.
    #[arg(long)]
    id: Option<u16>,
    /// The cluster's id: every node of one cluster uses the same; frames from another
    /// cluster are refused.
    #[arg(long)]
    cluster_id: Option<u64>,
    /// Where to listen, HOST:PORT. Shard k listens on PORT + k.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// The voters, ID=HOST:PORT,… (this node among them unless it is a learner). Every node
    /// gets the same list.
    #[arg(long, value_name = "ID=HOST:PORT,…")]
    peers: Option<String>,
    /// The learners, ID=HOST:PORT,…: they receive every committed batch but never vote.
    #[arg(long, value_name = "ID=HOST:PORT,…")]
    learners: Option<String>,
    /// Where the write-ahead logs live (one directory per shard).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Shards per node, 1 to 256 (default: one per core). Every node of a cluster must use
    /// the same number.
    #[arg(long)]
    shards: Option<u16>,
    /// Run as a learner (this node's id must be among --learners).
    #[arg(long)]
    learner: bool,
    /// For a learner: the node it subscribes to for committed batches, another learner
    /// (which relays: learners form a tree) or a voter. Default: a voter that is not the
    /// leader, so the leaders' egress does not grow with learners. If it stops bringing
    /// progress, the learner moves to a voter and tries it again later.
    #[arg(long, value_name = "ID")]
    upstream: Option<u16>,
    /// Where committed commands are applied. shard (default): each shard applies its own
    /// slots to its own state machine and never waits for another. total: one state machine
    /// applies every shard's commands in one global order (slot i of shard k is position
    /// i × shards + k); replies then wait for the merge of all shards.
    #[arg(long, value_enum)]
    apply: Option<quorum::runtime::config::ApplyMode>,
    /// Pin shard k's thread to core k mod cores: true (default) or false.
    #[arg(long, value_name = "BOOL")]
    pin_cores: Option<bool>,
    /// With pinning, the core shard 0 runs on (default 0); shard k runs on core
    /// (N + k) mod cores. Several nodes on one host share cores by default (faster for small
    /// writes); giving each its own N spreads them (faster for large ones; BENCHMARKS.md).
    #[arg(long, value_name = "N")]
    first_core: Option<usize>,
    /// Largest batch in bytes (default 1 MiB).
    #[arg(long, value_name = "BYTES")]
    batch_bytes_max: Option<usize>,
    /// Most commands in one batch (default 4096).
    #[arg(long)]
    batch_commands_max: Option<usize>,
    /// Accept batches a leader keeps in flight (default 32).
    #[arg(long)]
    pipeline_depth_max: Option<usize>,
    /// The protocol clock's period in ms (default 5).
    #[arg(long, value_name = "MS")]
    tick_ms: Option<u32>,
    /// How often a leader heartbeats, in ms (default 20).
    #[arg(long, value_name = "MS")]
    heartbeat_interval_ms: Option<u32>,
    /// How long followers wait for a silent leader before an election, in ms (default 200).
    #[arg(long, value_name = "MS")]
    election_timeout_ms: Option<u32>,
    /// Size of each preallocated WAL segment file, in MiB (default 64).
    #[arg(long, value_name = "MIB")]
    wal_segment_mib: Option<u32>,
    /// Committed slots each shard keeps in memory behind its commit position (default
    /// 16384). Older slots are read back from the WAL when a lagging peer, a learner or a
    /// `quorum tail` asks for them, so memory stays bounded however long the node runs.
    #[arg(long, value_name = "SLOTS")]
    retain_slots: Option<u64>,
    /// MiB of committed batches each shard keeps in memory, whatever --retain-slots allows
    /// (default 256). Their segments of the WAL stay until the slots leave memory, so this
    /// also bounds the WAL kept behind a snapshot.
    #[arg(long, value_name = "MIB")]
    retain_mib: Option<u32>,
    /// Each shard snapshots its state every this many MiB of WAL written (default 256), then
    /// releases the WAL segments the snapshot covers (kept as spares and reused, so new
    /// segments need no zero-fill), so the disk used stays bounded. A peer,
    /// learner or tail that needs slots no longer in the WAL is sent the snapshot. 0: never
    /// (the WAL grows without bound). Not with --apply total.
    #[arg(long, value_name = "MIB")]
    snapshot_every_mib: Option<u32>,
    /// A snapshot goes to a peer that needs it in pieces of at most this many KiB (default
    /// 4096), the receiver pulling each next one once it holds the one before and writing it
    /// to a file: a snapshot of any size costs a piece of memory.
    #[arg(long, value_name = "KIB")]
    snapshot_piece_kib: Option<u32>,
    /// fsync (default): acknowledge only what is on disk. none: never sync; for benchmarks
    /// only, a machine crash then loses acknowledged writes.
    #[arg(long, value_enum)]
    durability: Option<quorum::runtime::config::Durability>,
    /// Client connections this node serves at once, over all its shards (default 4096; a
    /// client has one per shard). Past it a client is refused with a reason it prints, and
    /// the node logs it. Peers never count. The node raises its open-file limit to fit, or
    /// refuses to start if the hard limit is too low.
    #[arg(long, value_name = "N")]
    connections_max: Option<u32>,
    /// A client connection that sends no frame for this long is closed, in ms (default
    /// 300000; 0: never). Tails only read and are exempt; the client library reconnects.
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u32>,
    /// Once a frame's first byte arrived, the whole frame must arrive within this long, in ms
    /// (default 30000), or the connection is closed: a sender trickling bytes cannot hold
    /// the node's memory. A frame's buffer grows as its bytes arrive, never to its announced
    /// length before.
    #[arg(long, value_name = "MS")]
    read_timeout_ms: Option<u32>,
    /// A connection whose other end takes none of what it is sent for this long is closed,
    /// in ms (default 30000): a client that stopped reading, a peer that died.
    #[arg(long, value_name = "MS")]
    write_timeout_ms: Option<u32>,
    /// MiB that may wait to be sent to one client (default 16, at least two snapshot
    /// pieces); a client with more waiting does not read and is disconnected.
    #[arg(long, value_name = "MIB")]
    client_queue_mib: Option<u32>,
    /// Serve the HTTP/JSON API here, HOST:PORT (docs/http.md): any node answers any request,
    /// forwarding to each key's shard leader. Not served unless given.
    #[arg(long, value_name = "HOST:PORT")]
    http_listen: Option<String>,
    /// Serve the Redis protocol here, HOST:PORT (docs/redis.md): redis-cli and Redis client
    /// libraries work unchanged for GET, SET, DEL and the commands listed there. Not served
    /// unless given.
    #[arg(long, value_name = "HOST:PORT")]
    redis_listen: Option<String>,
    /// Serve GET /metrics (Prometheus text format), /ready and /health here, HOST:PORT, on a
    /// listener of their own (docs/operations.md lists every metric). /metrics and /ready are
    /// also served on --http-listen if given. Not served unless given.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// GET /ready answers 200 only while every shard knows its leader and has applied to
    /// within this many slots of the highest commit position it knows of (default 10000);
    /// 503 otherwise, naming each shard that is not ready and why.
    #[arg(long, value_name = "SLOTS")]
    ready_lag_slots: Option<u64>,
    /// Lease reads: a leader answers `--consistency lease` reads at once while a majority's
    /// heartbeat acknowledgements grant it a lease (shorter than the election timeout by the
    /// drift margin), and this node, as a voter, helps no other candidate within an election
    /// timeout of hearing a leader or of starting. Safe only while every member's clock keeps
    /// --max-clock-drift (docs/protocol.md §5.4); set it alike on every voter. Without it,
    /// lease reads are answered by the read index.
    #[arg(long)]
    read_lease: bool,
    /// The bound on clock drift leases rely on: every member's monotonic clock runs within
    /// this percentage of real time (default 10%). If a clock drifts further (or stops while
    /// the process runs), a deposed leader may answer a lease read with stale data.
    #[arg(long, value_name = "PERCENT", value_parser = check_drift)]
    max_clock_drift: Option<String>,
    /// Client sessions each shard holds before idle ones are evicted, least recently used
    /// first (default 100000). A soft bound: a session used within the last
    /// --session-idle-commands-min commands is never evicted, so a shard holds at most this
    /// many plus those registered within that window. A request of an evicted session is
    /// refused ("session expired"), never applied. EVERY NODE OF A CLUSTER MUST USE THE SAME
    /// SESSION SETTINGS (all five --session*): they decide which requests are applied.
    /// docs/operations.md has the memory they cost.
    #[arg(long, value_name = "N")]
    sessions_max: Option<u64>,
    /// MiB of recent changes the key-value store keeps per shard (default 64): how far back
    /// a watch can resume and a read at a past revision (--rev) can go. The newest 1 MiB is
    /// also kept in snapshots.
    #[arg(long, value_name = "MIB")]
    history_mib: Option<u64>,
    /// A session is idle, and may be evicted, once this many commands were applied on its
    /// shard since its last request (default 1000000). Counted in the log, never in time:
    /// every replica evicts the same session at the same command. Same on every node.
    #[arg(long, value_name = "COMMANDS")]
    session_idle_commands_min: Option<u64>,
    /// Replies each session keeps, the newest, so that a retry gets its first reply
    /// (default 4096). A retry of an older request is refused as expired. Same on every node.
    #[arg(long, value_name = "N")]
    session_replies_max: Option<u32>,
    /// KiB of replies each session keeps (default 1024); the newest reply is kept whatever
    /// its size. Same on every node.
    #[arg(long, value_name = "KIB")]
    session_replies_kib: Option<u32>,
    /// Evicted session ids each shard remembers (default 1000000, about 40 bytes each), so
    /// that no new session is given one of them. Same on every node.
    #[arg(long, value_name = "N")]
    sessions_evicted_max: Option<u64>,
}

fn check_drift(text: &str) -> Result<String, String> {
    quorum::runtime::config::parse_drift(text).map(|_| text.to_string())
}

impl NodeArgs {
    fn settings(&self) -> NodeSettings {
        NodeSettings {
            id: self.id,
            cluster_id: self.cluster_id,
            listen: self.listen.clone(),
            peers: self.peers.clone(),
            learners: self.learners.clone(),
            data_dir: self.data_dir.clone(),
            shards: self.shards,
            learner: self.learner.then_some(true),
            upstream: self.upstream,
            apply: self.apply,
            pin_cores: self.pin_cores,
            first_core: self.first_core,
            batch_bytes_max: self.batch_bytes_max,
            batch_commands_max: self.batch_commands_max,
            pipeline_depth_max: self.pipeline_depth_max,
            tick_ms: self.tick_ms,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            election_timeout_ms: self.election_timeout_ms,
            wal_segment_mib: self.wal_segment_mib,
            retain_slots: self.retain_slots,
            retain_mib: self.retain_mib,
            snapshot_every_mib: self.snapshot_every_mib,
            snapshot_piece_kib: self.snapshot_piece_kib,
            durability: self.durability,
            connections_max: self.connections_max,
            idle_timeout_ms: self.idle_timeout_ms,
            read_timeout_ms: self.read_timeout_ms,
            write_timeout_ms: self.write_timeout_ms,
            client_queue_mib: self.client_queue_mib,
            read_lease: self.read_lease.then_some(true),
            max_clock_drift: self.max_clock_drift.clone(),
            http_listen: self.http_listen.clone(),
            redis_listen: self.redis_listen.clone(),
            metrics_listen: self.metrics_listen.clone(),
            ready_lag_slots: self.ready_lag_slots,
            sessions_max: self.sessions_max,
            history_mib: self.history_mib,
            session_idle_commands_min: self.session_idle_commands_min,
            session_replies_max: self.session_replies_max,
            session_replies_kib: self.session_replies_kib,
            sessions_evicted_max: self.sessions_evicted_max,
        }
    }
}

/// The node's configuration and its front ends' listeners, from the file and the flags;
/// the error already printed.
fn resolve(args: &NodeArgs) -> Result<(NodeConfig, FrontListeners), ExitCode> {
    let file = match &args.config {
        Some(path) => NodeSettings::from_file(path).map_err(|error| {
            eprintln!("quorum node: {error}");
            ExitCode::from(2)
        })?,
        None => NodeSettings::default(),
    };
    let settings = file.overridden_by(args.settings());
    let checked = settings
        .front_listeners()
        .and_then(|listeners| NodeConfig::resolve(settings).map(|config| (config, listeners)));
    checked.map_err(|error| {
        eprintln!("quorum node: {error}");
        ExitCode::from(2)
    })
}

pub fn run(args: &NodeArgs) -> ExitCode {
    let (config, listeners) = match resolve(args) {
        Ok(resolved) => resolved,
        Err(code) => return code,
    };
    let (id, shards, listen) = (config.id.0, config.shards, config.listen.clone());
    let ready_lag_slots = listeners.ready_lag_slots;
    let front_config = front_config(&config, listeners);
    if config.durability == quorum::runtime::config::Durability::None {
        tracing::warn!("durability is off: acknowledged writes can be lost in a crash");
    }
    let node = match Node::start(config) {
        Ok(node) => node,
        Err(error) => {
            eprintln!("quorum node: {error}");
            return ExitCode::FAILURE;
        }
    };
    let front_config = front_config.map(|mut front| {
        front.probe = Some(std::sync::Arc::new(node.probe(ready_lag_slots)));
        front
    });
    let fronts = match front_config.map(|config| FrontEnds::start(&config)).transpose() {
        Ok(fronts) => fronts,
        Err(error) => {
            eprintln!("quorum node: {error}");
            node.stop();
            let _ = node.wait();
            return ExitCode::FAILURE;
        }
    };
    let control = node.control();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(error) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("quorum node: cannot handle signal {signal}: {error}");
            return ExitCode::FAILURE;
        }
    }
    tracing::info!(id, shards, %listen, "node running");
    while !stop.load(Ordering::SeqCst) && !control.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!(id, "stopping");
    // The front ends go first: what they forward goes to the shards' new leaders anyway.
    if let Some(fronts) = fronts {
        fronts.stop();
    }
    match node.shut_down() {
        Ok(()) => {
            tracing::info!(id, "stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("quorum node: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The front ends' settings, if the node serves any: their client starts at this node's own
/// listener, then its fellow voters.
fn front_config(config: &NodeConfig, listeners: FrontListeners) -> Option<FrontConfig> {
    let FrontListeners { http: http_listen, redis: redis_listen, metrics, .. } = listeners;
    if http_listen.is_none() && redis_listen.is_none() && metrics.is_none() {
        return None;
    }
    let mut seeds = vec![config.listen.clone()];
    seeds.extend(config.voters.values().filter(|address| **address != config.listen).cloned());
    let mut front = FrontConfig::new(seeds, config.cluster_id, config.batch_bytes_max);
    front.http_listen = http_listen;
    front.redis_listen = redis_listen;
    front.metrics_listen = metrics;
    Some(front)
}
