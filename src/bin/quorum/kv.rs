//! `quorum kv` and `quorum snapshot`: talk to a running cluster.

use std::process::ExitCode;

use quorum::client::{
    Client, ClientOptions, Consistency, RangeOptions, ReadOptions, fetch_snapshot,
};
use quorum::core::{ClusterId, NodeId, StalenessBound};
use quorum::machine::kv::{CoordCommand, CoordReply, KeyRange, KeyValue};
use quorum::machine::{Applier, KvStore, SessionLimits, StateMachine as _, shard_for_key};
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
    /// Set KEY to VALUE (with --lease, deleted when that lease ends).
    Put {
        key: String,
        value: String,
        /// The lease KEY lives by (`quorum lease grant`).
        #[arg(long, value_name = "ID")]
        lease: Option<u64>,
        /// Print one JSON object: key, revision.
        #[arg(long)]
        json: bool,
    },
    /// Print KEY's value, read without the log (docs/protocol.md §5.3-§5.5).
    Get {
        key: String,
        #[command(flatten)]
        read: GetArgs,
    },
    /// Remove KEY (with --prefix, every key that starts with it; printed: how many).
    Del {
        key: String,
        /// Remove every key starting with KEY.
        #[arg(long)]
        prefix: bool,
    },
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

/// How `quorum kv get` reads.
#[derive(clap::Args)]
struct GetArgs {
    /// linearizable: by the leader's read index (one heartbeat round); lease: from the
    /// leader's lease if it holds one (`quorum node --read-lease`; safe only within the
    /// clock-drift bound), else as linearizable; follower: linearizable, answered by the
    /// member --member names (or any) after asking its leader for the read index; stale: at
    /// once from what the member has applied, with the position it reflects.
    #[arg(long, value_enum, default_value = "linearizable")]
    consistency: ConsistencyArg,
    /// With --consistency stale: refuse rather than answer if the member may be further
    /// behind than this: a count of log positions (slots of the key's shard), or a time such
    /// as 250ms or 2s since it last knew itself up to date with its leader.
    #[arg(long, value_name = "SLOTS|MSms", value_parser = parse_staleness)]
    max_staleness: Option<StalenessBound>,
    /// The member follower and stale reads go to (its node id); any member if not given.
    #[arg(long, value_name = "ID")]
    member: Option<u16>,
    /// Read every key that starts with KEY, sorted: one consistent cut of every shard at one
    /// revision (docs/coordination.md). Printed: `key value` per line.
    #[arg(long)]
    prefix: bool,
    /// Read as of revision R (kept for a while: older ones are refused as compacted).
    #[arg(long, value_name = "R")]
    rev: Option<u64>,
    /// With --prefix: at most N keys (the JSON says `more` if there are others).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// With --prefix: print keys only.
    #[arg(long)]
    keys_only: bool,
    /// Print one JSON object: key, value, create_revision, mod_revision, version, lease,
    /// shard, slot (the read reflects every slot of the shard's log below it) and
    /// consistency; with --prefix: revision, more, and the entries.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConsistencyArg {
    Linearizable,
    Lease,
    Follower,
    Stale,
}

fn parse_staleness(text: &str) -> Result<StalenessBound, String> {
    StalenessBound::parse(text)
}

impl GetArgs {
    fn consistency(&self) -> Consistency {
        match self.consistency {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Lease => Consistency::Lease,
            ConsistencyArg::Follower => Consistency::Follower,
            ConsistencyArg::Stale => Consistency::Stale,
        }
    }

    fn options(&self) -> Result<ReadOptions, String> {
        ReadOptions::new(self.consistency(), self.max_staleness)
            .map_err(|_| "--max-staleness bounds stale reads: add --consistency stale".into())
    }

    /// The name `--json` reports, as the HTTP API spells it.
    fn name(&self) -> &'static str {
        self.consistency().name()
    }
}

pub fn connect(args: &ClusterArgs) -> Result<Client, String> {
    connect_reading_from(args, None)
}

fn connect_reading_from(args: &ClusterArgs, member: Option<u16>) -> Result<Client, String> {
    let options = ClientOptions {
        cluster_id: ClusterId(args.cluster_id.unwrap_or(0)),
        request_timeout: std::time::Duration::from_millis(args.timeout_ms),
        read_member: member.map(NodeId),
        ..ClientOptions::default()
    };
    Client::connect(&args.cluster, options).map_err(|error| error.to_string())
}

/// `quorum kv get`: the value, or with `--json` one object with where the read stands.
fn get(args: &ClusterArgs, key: &str, read: &GetArgs) -> Result<String, String> {
    let options = read.options()?;
    let client = connect_reading_from(args, read.member)?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let range_options = RangeOptions {
        limit: read.limit.unwrap_or(0),
        revision: read.rev.unwrap_or(0),
        keys_only: read.keys_only,
        read: options,
    };
    if read.prefix {
        let range = KeyRange::Prefix(key.as_bytes().to_vec());
        let answer = client.range(&range, range_options).map_err(|error| error.to_string())?;
        if read.json {
            let entries: Vec<_> =
                answer.entries.iter().map(|kv| entry_json(kv, read.keys_only)).collect();
            let line = serde_json::json!({
                "prefix": key,
                "revision": answer.revision,
                "more": answer.more,
                "entries": entries,
                "consistency": read.name(),
            });
            return Ok(line.to_string());
        }
        let lines: Vec<String> = answer
            .entries
            .iter()
            .map(|kv| {
                if read.keys_only {
                    text(&kv.key)
                } else {
                    format!("{} {}", text(&kv.key), text(&kv.value))
                }
            })
            .collect();
        return Ok(lines.join("\n"));
    }
    let shard = shard_for_key(key.as_bytes(), usize::from(client.shards())) as u16;
    let command = CoordCommand::Range {
        range: KeyRange::Key(key.as_bytes().to_vec()),
        limit: 1,
        revision: range_options.revision,
        keys_only: false,
    };
    let (reply, response) =
        client.coordinate(shard, &command, options).map_err(|error| error.to_string())?;
    let CoordReply::Range(answer) = reply else {
        return Err(format!("a read answered {reply:?}"));
    };
    let entry = answer.entries.first();
    if !read.json {
        return Ok(entry.map_or("(absent)".to_string(), |kv| text(&kv.value)));
    }
    let mut line = match entry {
        Some(kv) => entry_json(kv, false),
        None => serde_json::json!({"key": key, "value": null}),
    };
    line["shard"] = serde_json::json!(response.shard);
    line["slot"] = serde_json::json!(response.slot.0);
    line["consistency"] = serde_json::json!(read.name());
    Ok(line.to_string())
}

fn entry_json(kv: &KeyValue, keys_only: bool) -> serde_json::Value {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut line = serde_json::json!({
        "key": text(&kv.key),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    });
    if !keys_only {
        line["value"] = serde_json::json!(text(&kv.value));
    }
    line
}

pub fn run_kv(args: &KvArgs) -> ExitCode {
    if let Operation::Get { key, read } = &args.operation {
        if let Err(error) = read.options() {
            eprintln!("quorum kv: {error}");
            return ExitCode::from(2);
        }
        return print_outcome(get(&args.cluster, key, read));
    }
    let result = connect(&args.cluster).and_then(|client| {
        let text = |bytes: Option<Vec<u8>>| {
            bytes.map_or("(absent)".to_string(), |v| String::from_utf8_lossy(&v).into_owned())
        };
        match &args.operation {
            Operation::Put { key, value, lease, json } => client
                .put_leased(key.as_bytes(), value.as_bytes(), lease.unwrap_or(0))
                .map(|revision| {
                    if *json {
                        serde_json::json!({"key": key, "revision": revision}).to_string()
                    } else {
                        "OK".into()
                    }
                }),
            Operation::Get { .. } => unreachable!("answered above"),
            Operation::Del { key, prefix: false } => {
                client.delete(key.as_bytes()).map(|()| "OK".into())
            }
            Operation::Del { key, prefix: true } => client
                .delete_range(&KeyRange::Prefix(key.as_bytes().to_vec()))
                .map(|count| format!("deleted {count}")),
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
    print_outcome(result)
}

fn print_outcome(result: Result<String, String>) -> ExitCode {
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
