//! `quorum kv` and `quorum snapshot`: talk to a running cluster.

use std::process::ExitCode;

use quorum::client::{Client, ClientOptions, fetch_snapshot};
use quorum::core::ClusterId;
use quorum::machine::{Applier, KvStore, SessionLimits, StateMachine as _};
use quorum::read_snapshot;

/// Where the cluster is.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Any members' addresses, HOST:PORT[,HOST:PORT…] (their --listen addresses).
    #[arg(long, value_name = "HOST:PORT,…", value_delimiter = ',', required = true)]
    cluster: Vec<String>,
    /// The cluster's id; when given, a node of another cluster refuses us.
    #[arg(long)]
    cluster_id: Option<u64>,
    /// How long a request may take, retries included, in ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    timeout_ms: u64,
}

#[derive(clap::Args)]
pub struct KvArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    operation: Operation,
}

#[derive(clap::Subcommand)]
enum Operation {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print KEY's value (linearizable: ordered in the log like a write).
    Get { key: String },
    /// Remove KEY.
    Del { key: String },
    /// Set KEY to NEW if it holds EXPECTED (`--absent` instead: if it is not set).
    Cas {
        key: String,
        #[arg(required_unless_present = "absent")]
        expected: Option<String>,
        new: String,
        /// Expect KEY to be absent.
        #[arg(long)]
        absent: bool,
    },
    /// Append ENTRY to the log as an opaque entry and print its committed position.
    Append { entry: String },
}

fn connect(args: &ClusterArgs) -> Result<Client, String> {
    let options = ClientOptions {
        cluster_id: ClusterId(args.cluster_id.unwrap_or(0)),
        request_timeout: std::time::Duration::from_millis(args.timeout_ms),
        ..ClientOptions::default()
    };
    Client::connect(&args.cluster, options).map_err(|error| error.to_string())
}

pub fn run_kv(args: &KvArgs) -> ExitCode {
    let result = connect(&args.cluster).and_then(|client| {
        let text = |bytes: Option<Vec<u8>>| {
            bytes.map_or("(absent)".to_string(), |v| String::from_utf8_lossy(&v).into_owned())
        };
        match &args.operation {
            Operation::Put { key, value } => {
                client.put(key.as_bytes(), value.as_bytes()).map(|()| "OK".into())
            }
            Operation::Get { key } => client.get(key.as_bytes()).map(text),
            Operation::Del { key } => client.delete(key.as_bytes()).map(|()| "OK".into()),
            Operation::Cas { key, expected, new, absent } => {
                let expected = if *absent { None } else { expected.as_deref().map(str::as_bytes) };
                client.compare_and_set(key.as_bytes(), expected, new.as_bytes()).map(
                    |(succeeded, previous)| {
                        let verdict = if succeeded { "OK" } else { "FAILED" };
                        format!("{verdict} (was {})", text(previous))
                    },
                )
            }
            Operation::Append { entry } => client
                .append(entry.as_bytes())
                .map(|position| format!("position {} index {}", position.global, position.index)),
        }
        .map_err(|error| error.to_string())
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("quorum kv: {error}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SnapshotArgs {
    /// Back up the whole cluster (`save`) or build a node's data directory from a backup
    /// (`restore`); without one, fetch one shard's snapshot from --node.
    #[command(subcommand)]
    action: Option<crate::backup::SnapshotAction>,
    /// The node's address, HOST:PORT (its --listen address).
    #[arg(long, value_name = "HOST:PORT")]
    node: Option<String>,
    /// The cluster's id; when given, a node of another cluster refuses us.
    #[arg(long)]
    cluster_id: Option<u64>,
    /// The shard whose snapshot to fetch.
    #[arg(long, default_value_t = 0)]
    shard: u16,
    /// Write the snapshot (its file format, checked) to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
}

pub fn run_snapshot(args: &SnapshotArgs) -> ExitCode {
    if let Some(action) = &args.action {
        return crate::backup::run(action);
    }
    let Some(node) = &args.node else {
        eprintln!(
            "quorum snapshot: give --node HOST:PORT (one shard's snapshot), or `save` (a backup \
             of the whole cluster) or `restore` (a data directory from a backup)"
        );
        return ExitCode::from(2);
    };
    let options =
        ClientOptions { cluster_id: ClusterId(args.cluster_id.unwrap_or(0)), ..Default::default() };
    // Streamed to a file (a snapshot may be larger than memory), then restored from it in one
    // pass to print what it holds; without --out, a temporary file deleted after.
    let path = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("quorum-snapshot-{}-{}", std::process::id(), args.shard))
    });
    let fetched = fetch_snapshot(node, &options, args.shard, &path);
    let summary = fetched.as_ref().ok().and_then(Option::as_ref).map(|fetched| {
        let owner = (fetched.header.cluster_id, args.shard);
        let limits = SessionLimits::with_replies_max(1);
        std::fs::File::open(&path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))
            .and_then(|mut file| {
                read_snapshot(&mut file, owner, |body| Applier::<KvStore>::restore(body, limits))
                    .map_err(|error| format!("the snapshot's image does not restore: {error}"))
            })
            .map(|(_, _, applier)| applier.machine().summary())
    });
    if args.out.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    let fetched = match fetched {
        Ok(Some(fetched)) => fetched,
        Ok(None) => {
            eprintln!(
                "quorum snapshot: shard {} of {} has no snapshot (none taken yet, or --apply total)",
                args.shard, node
            );
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("quorum snapshot: {error}");
            return ExitCode::FAILURE;
        }
    };
    let state = match summary.expect("fetched") {
        Ok(state) => state,
        Err(error) => {
            eprintln!("quorum snapshot: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "shard {}: snapshot at slot {} (every slot below applied), {} bytes, entries {}, digest {:016x}",
        args.shard, fetched.header.slot.0, fetched.bytes, state.entries, state.digest,
    );
    ExitCode::SUCCESS
}
