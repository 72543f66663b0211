//! `quorum-sqlite node`: a Quorum node whose shards' state machines are SQLite databases.
//! The flags are `quorum node`'s that apply here, with the same names and meanings.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorum::node_config::{ApplyMode, Durability, NodeConfig, NodeSettings};
use quorum::runtime::Node;
use quorum_sqlite::SqliteMachine;

/// Flags override the same keys of the `--config` file.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// A TOML file with any of `quorum node`'s settings (keys as the flags, `_` for `-`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's id, 1 to 65535, unique in the cluster.
    #[arg(long)]
    id: Option<u16>,
    /// The cluster's id: every node of one cluster uses the same.
    #[arg(long)]
    cluster_id: Option<u64>,
    /// Where to listen, HOST:PORT. Shard k listens on PORT + k.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// The voters, ID=HOST:PORT,… (this node among them unless it is a learner). Every node
    /// gets the same list.
    #[arg(long, value_name = "ID=HOST:PORT,…")]
    peers: Option<String>,
    /// The learners, ID=HOST:PORT,…: they receive every committed batch (and so hold the
    /// database) but never vote.
    #[arg(long, value_name = "ID=HOST:PORT,…")]
    learners: Option<String>,
    /// Run as a learner (this node's id must be among --learners).
    #[arg(long)]
    learner: bool,
    /// Where the write-ahead logs (DIR/shard-K) and the databases (DIR/sqlite) live.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Shards per node (default 1). SQL has no key to shard by: each shard is a database of
    /// its own, and `exec`/`query --shard K` choose one. Every node must use the same number.
    #[arg(long)]
    shards: Option<u16>,
    /// Pin shard k's thread to a core: true (default) or false.
    #[arg(long, value_name = "BOOL")]
    pin_cores: Option<bool>,
    /// How often a leader heartbeats, in ms (default 20).
    #[arg(long, value_name = "MS")]
    heartbeat_interval_ms: Option<u32>,
    /// How long followers wait for a silent leader before an election, in ms (default 200).
    #[arg(long, value_name = "MS")]
    election_timeout_ms: Option<u32>,
    /// Size of each preallocated WAL segment file, in MiB (default 64).
    #[arg(long, value_name = "MIB")]
    wal_segment_mib: Option<u32>,
    /// Committed slots each shard keeps in memory behind its commit position (default 16384).
    #[arg(long, value_name = "SLOTS")]
    retain_slots: Option<u64>,
    /// MiB of committed batches each shard keeps in memory (default 256).
    #[arg(long, value_name = "MIB")]
    retain_mib: Option<u32>,
    /// Snapshot each database every this many MiB of WAL (default 256; 0: never). A snapshot
    /// is the database file itself (`VACUUM INTO`), sent to a replica that is too far behind.
    #[arg(long, value_name = "MIB")]
    snapshot_every_mib: Option<u32>,
    /// fsync (default): acknowledge only what is on disk. none: for benchmarks only.
    #[arg(long, value_enum)]
    durability: Option<Durability>,
    /// Client connections this node serves at once (default 4096).
    #[arg(long, value_name = "N")]
    connections_max: Option<u32>,
}

impl NodeArgs {
    fn settings(&self) -> NodeSettings {
        NodeSettings {
            id: self.id,
            cluster_id: self.cluster_id,
            listen: self.listen.clone(),
            peers: self.peers.clone(),
            learners: self.learners.clone(),
            learner: self.learner.then_some(true),
            data_dir: self.data_dir.clone(),
            shards: self.shards,
            pin_cores: self.pin_cores,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            election_timeout_ms: self.election_timeout_ms,
            wal_segment_mib: self.wal_segment_mib,
            retain_slots: self.retain_slots,
            retain_mib: self.retain_mib,
            snapshot_every_mib: self.snapshot_every_mib,
            durability: self.durability,
            connections_max: self.connections_max,
            ..NodeSettings::default()
        }
    }
}

/// The node's settings from its file and flags, one shard unless told otherwise.
fn resolve(args: &NodeArgs) -> Result<NodeConfig, String> {
    let file = match &args.config {
        Some(path) => NodeSettings::from_file(path).map_err(|error| error.to_string())?,
        None => NodeSettings::default(),
    };
    let mut settings = file.overridden_by(args.settings());
    settings.shards = settings.shards.or(Some(1));
    let config = NodeConfig::resolve(settings).map_err(|error| error.to_string())?;
    if config.apply == ApplyMode::Total {
        // The total-order machine takes no snapshots, so its log would never be released.
        return Err("apply = total is not supported: each shard is a database of its own".into());
    }
    Ok(config)
}

/// Where a node keeps its databases.
pub fn database_dir(data_dir: &std::path::Path) -> PathBuf {
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
        SqliteMachine::create(&dir, shard)
            .unwrap_or_else(|error| panic!("shard {shard}: cannot create its database: {error}"))
    });
    node.start().map_err(|error| error.to_string())
}

pub fn run(args: &NodeArgs) -> ExitCode {
    let config = match resolve(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("quorum-sqlite node: {error}");
            return ExitCode::from(2);
        }
    };
    let (id, shards, listen) = (config.id.0, config.shards, config.listen.clone());
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
    node.stop();
    match node.wait() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quorum-sqlite node: {error}");
            ExitCode::FAILURE
        }
    }
}
