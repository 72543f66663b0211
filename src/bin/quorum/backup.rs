//! `quorum snapshot save` and `quorum snapshot restore`: a cluster's backup at one merged-order
//! position, and a node's data directory built from it (docs/operations.md, "Backup and
//! restore").

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use quorum::client::{ClientOptions, save_backup};
use quorum::core::ClusterId;
use quorum::machine::KvStore;
use quorum::runtime::config::parse_members;
use quorum::runtime::restore::restore_backup;
use quorum::storage::backup::BackupHeader;

#[derive(clap::Subcommand)]
pub enum SnapshotAction {
    /// Back up the whole cluster into one checksummed file: every shard's state at one
    /// position of the merged order (every command at a global position below it, none at
    /// or above), built from each shard's newest snapshot and its log after it. Writes may
    /// go on meanwhile.
    ///
    /// Example: quorum snapshot save --cluster 127.0.0.1:7000 --out cluster.backup
    #[command(verbatim_doc_comment)]
    Save(SaveArgs),
    /// Build a node's data directory (absent or empty) from a backup, for a new cluster that
    /// starts from it: run it for every node of the new cluster (each with its own --id and
    /// --data-dir, the same --peers and --cluster-id), then start each with those flags and
    /// --shards as the backup says. A damaged or cut backup is refused and nothing is left.
    ///
    /// Example: quorum snapshot restore cluster.backup --data-dir /var/lib/quorum/1 --id 1 \
    ///            --peers 1=10.0.0.1:7000,2=10.0.0.2:7000,3=10.0.0.3:7000 --cluster-id 8
    #[command(verbatim_doc_comment)]
    Restore(RestoreArgs),
}

#[derive(clap::Args)]
pub struct SaveArgs {
    /// Any members' addresses, HOST:PORT[,HOST:PORT…]; the first that answers is read from.
    #[arg(long, value_name = "HOST:PORT,…", value_delimiter = ',', required = true)]
    cluster: Vec<String>,
    /// The cluster's id; when given, a node of another cluster refuses us.
    #[arg(long)]
    cluster_id: Option<u64>,
    /// The backup file to write (first as FILE.partial, renamed once whole and synced).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// How long the node may take to answer one request (a snapshot piece, a run of its log),
    /// in ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    timeout_ms: u64,
    /// Print what was saved as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup file (`quorum snapshot save --out`).
    #[arg(value_name = "FILE")]
    backup: PathBuf,
    /// The data directory to build; it must be absent or empty.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The id of the node this directory is for (checked against --peers).
    #[arg(long)]
    id: u16,
    /// The new cluster's voters, ID=HOST:PORT,… (as `quorum node --peers` will get them).
    #[arg(long, value_name = "ID=HOST:PORT,…")]
    peers: String,
    /// The new cluster's id (its nodes refuse frames of another; the backup's snapshots are
    /// rewritten for it). May be the old cluster's.
    #[arg(long)]
    cluster_id: u64,
    /// Print what was restored as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(action: &SnapshotAction) -> ExitCode {
    match action {
        SnapshotAction::Save(args) => run_save(args),
        SnapshotAction::Restore(args) => run_restore(args),
    }
}

fn header_json(header: &BackupHeader) -> serde_json::Value {
    let shards: Vec<serde_json::Value> = (0..header.shards())
        .zip(&header.sections)
        .map(|(shard, section)| {
            serde_json::json!({
                "shard": shard,
                "slot": section.slot.0,
                "snapshot_bytes": section.snapshot_bytes,
                "entries": section.entries,
                "digest": format!("{:016x}", section.digest),
            })
        })
        .collect();
    serde_json::json!({
        "cluster_id": header.cluster_id.0,
        "position": header.position,
        "created_unix_ms": header.created_unix_ms,
        "shards": shards,
    })
}

fn print_sections(header: &BackupHeader) {
    for (shard, section) in (0..header.shards()).zip(&header.sections) {
        println!(
            "shard {shard}: slot {}, {} bytes, entries {}, digest {:016x}",
            section.slot.0, section.snapshot_bytes, section.entries, section.digest
        );
    }
}

fn run_save(args: &SaveArgs) -> ExitCode {
    let options = ClientOptions {
        cluster_id: ClusterId(args.cluster_id.unwrap_or(0)),
        request_timeout: Duration::from_millis(args.timeout_ms.max(1)),
        ..ClientOptions::default()
    };
    match save_backup(&args.cluster, &options, &args.out, |_| KvStore::default()) {
        Ok(saved) => {
            if args.json {
                let mut json = header_json(&saved.header);
                json["bytes"] = saved.bytes.into();
                json["source"] = saved.source.into();
                json["file"] = args.out.display().to_string().into();
                println!("{json}");
            } else {
                println!(
                    "saved {} ({} bytes) from {}: cluster {}, {} shards at merged position {}",
                    args.out.display(),
                    saved.bytes,
                    saved.source,
                    saved.header.cluster_id.0,
                    saved.header.shards(),
                    saved.header.position
                );
                print_sections(&saved.header);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("quorum snapshot save: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_restore(args: &RestoreArgs) -> ExitCode {
    let voters = match parse_members("peers", &args.peers) {
        Ok(voters) => voters,
        Err(error) => {
            eprintln!("quorum snapshot restore: {error}");
            return ExitCode::from(2);
        }
    };
    if !voters.contains_key(&quorum::NodeId(args.id)) {
        eprintln!("quorum snapshot restore: node {} is not among --peers {}", args.id, args.peers);
        return ExitCode::from(2);
    }
    match restore_backup(&args.backup, &args.data_dir, ClusterId(args.cluster_id)) {
        Ok(header) => {
            if args.json {
                let mut json = header_json(&header);
                json["data_dir"] = args.data_dir.display().to_string().into();
                json["new_cluster_id"] = args.cluster_id.into();
                println!("{json}");
            } else {
                println!(
                    "restored {} into {} for node {} of cluster {}: {} shards at merged position \
                     {} (start the node with --shards {})",
                    args.backup.display(),
                    args.data_dir.display(),
                    args.id,
                    args.cluster_id,
                    header.shards(),
                    header.position,
                    header.shards()
                );
                print_sections(&header);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("quorum snapshot restore: {error}");
            ExitCode::FAILURE
        }
    }
}
