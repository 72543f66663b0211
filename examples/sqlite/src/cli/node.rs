//! `quorum-sqlite node`: a Quorum node whose shards' state machines are SQLite databases.
//! The flags are `quorum node`'s, with the same names and meanings, but for `--apply`: each
//! shard is a database of its own, so commands are always applied per shard (the total order
//! merges shards into one machine, which SQL databases per shard do not have).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quorum::{Durability, Node, NodeConfig, NodeSettings};
use quorum_sqlite::SqliteMachine;

/// Flags override the same keys of the `--config` file.
#[derive(clap::Args)]
pub struct NodeArgs {
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
    /// Where the write-ahead logs (DIR/shard-K) and the databases (DIR/sqlite/shard-K.gN.db)
    /// live.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Shards per node, 1 to 256 (default 1, not one per core as for `quorum node`). SQL has
    /// no key to shard by: each shard is a database of its own, and `exec`/`query --shard K`
    /// choose one. Every node of a cluster must use the same number.
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
    /// Each shard snapshots its database every this many MiB of WAL written (default 256;
    /// the image is the database file itself, written by `VACUUM INTO`), then
    /// releases the WAL segments the snapshot covers (kept as spares and reused, so new
    /// segments need no zero-fill), so the disk used stays bounded. A peer,
    /// learner or tail that needs slots no longer in the WAL is sent the snapshot. 0: never
    /// (the WAL grows without bound).
    #[arg(long, value_name = "MIB")]
    snapshot_every_mib: Option<u32>,
    /// A snapshot goes to a peer that needs it in pieces of at most this many KiB (default
    /// 4096), the receiver pulling each next one once it holds the one before; it assembles
    /// a snapshot of up to 1 GiB in memory.
    #[arg(long, value_name = "KIB")]
    snapshot_piece_kib: Option<u32>,
    /// fsync (default): acknowledge only what is on disk. none: never sync; for benchmarks
    /// only, a machine crash then loses acknowledged writes.
    #[arg(long, value_enum)]
    durability: Option<Durability>,
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
            apply: None,
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
            // Lease reads are not offered by quorum-sqlite's command line: its queries read
            // by the read index (a config file may still turn leases on).
            read_lease: None,
            max_clock_drift: None,
            // The front ends serve the built-in KV store, not SQLite.
            http_listen: None,
            redis_listen: None,
            // Not served by quorum-sqlite yet: an embedding program serves `Node::probe`
            // itself (docs/operations.md, "Metrics").
            metrics_listen: None,
            ready_lag_slots: None,
            // The session limits come from the config file alone here.
            sessions_max: None,
            history_mib: None,
            session_idle_commands_min: None,
            session_replies_max: None,
            session_replies_kib: None,
            sessions_evicted_max: None,
        }
    }
}

/// The node's settings from its file and flags, one shard unless told otherwise.
fn resolve(args: &NodeArgs) -> Result<NodeConfig, String> {
    let file = match &args.config {
        Some(path) => NodeSettings::from_file(path).map_err(|error| error.to_string())?,
        None => NodeSettings::default(),
    };
    if file.apply.is_some() {
        return Err("`apply` is not a setting of quorum-sqlite: each shard is a database of \
                    its own and applies its own commands; remove it from the config file"
            .into());
    }
    let mut settings = file.overridden_by(args.settings());
    settings.shards = settings.shards.or(Some(1));
    NodeConfig::resolve(settings).map_err(|error| error.to_string())
}

/// Where a node with data directory `data_dir` keeps its databases.
#[must_use]
pub fn database_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("sqlite")
}

/// Starts a node whose shards run SQLite databases in `DATA_DIR/sqlite`.
///
/// # Errors
/// The database directory cannot be created, or the node cannot start.
pub fn start(config: NodeConfig) -> Result<Node, String> {
    let dir = database_dir(&config.data_dir);
    std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let node = Node::builder(config).state_machine(move |shard| {
        // Made on the shard's own thread; a directory that worked a moment ago and fails now
        // leaves nothing to go on with, and the node stops with this message.
        SqliteMachine::open_or_create(&dir, shard)
            .unwrap_or_else(|error| panic!("shard {shard}: cannot open its database: {error}"))
    });
    node.start().map_err(|error| error.to_string())
}

/// Runs `quorum-sqlite node` until SIGTERM or SIGINT, or until a shard fails.
pub fn run(args: &NodeArgs) -> ExitCode {
    let config = match resolve(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("quorum-sqlite node: {error}");
            return ExitCode::from(2);
        }
    };
    let (id, shards, listen) = (config.id.0, config.shards, config.listen.clone());
    if config.durability == Durability::None {
        tracing::warn!("durability is off: acknowledged writes can be lost in a crash");
    }
    let node = match start(config) {
        Ok(node) => node,
        Err(error) => {
            eprintln!("quorum-sqlite node: {error}");
            return ExitCode::FAILURE;
        }
    };
    let control = node.control();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(error) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("quorum-sqlite node: cannot handle signal {signal}: {error}");
            return ExitCode::FAILURE;
        }
    }
    tracing::info!(id, shards, %listen, "node running");
    while !stop.load(Ordering::SeqCst) && !control.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!(id, "stopping");
    match node.shut_down() {
        Ok(()) => {
            tracing::info!(id, "stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("quorum-sqlite node: {error}");
            ExitCode::FAILURE
        }
    }
}
