//! `quorum lease`, `quorum lock`, `quorum elect`, `quorum txn` and `quorum watch`: the
//! coordination API from a shell (docs/coordination.md).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quorum::client::{Client, ClientError, TxnOutcome};
use quorum::machine::kv::{
    Change, ChangeKind, Compare, CompareOp, CoordError, KeyRange, Target, Txn, TxnOp, TxnResult,
};
use serde_json::json;

use crate::kv::{ClusterArgs, connect};

/// Bytes as text for a person (lossy) or a script (JSON strings, lossy likewise).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn fail(command: &str, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("quorum {command}: {error}");
    ExitCode::FAILURE
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds (such as 10, or 2.5)"))?;
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 7.0 * 86400.0 {
        return Err(format!("{text} s is not between 0 and seven days"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(clap::Args)]
pub struct LeaseArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    action: LeaseAction,
}

#[derive(clap::Subcommand)]
enum LeaseAction {
    /// Grant a lease of TTL seconds (at least 1, at most seven days) and print its id.
    Grant {
        #[arg(value_parser = parse_seconds)]
        ttl: Duration,
        /// Print one JSON object: id, ttl (seconds), ttl_ms.
        #[arg(long)]
        json: bool,
    },
    /// Keep lease ID alive: every third of its TTL until interrupted (or once, with --once).
    /// Exits non-zero as soon as the lease is found gone.
    Keepalive {
        id: u64,
        /// One keep-alive, then exit.
        #[arg(long)]
        once: bool,
        /// One JSON object per keep-alive: id, ttl_ms.
        #[arg(long)]
        json: bool,
    },
    /// End lease ID now: the keys written with it are deleted, its locks released.
    Revoke {
        id: u64,
        /// Print one JSON object: id, keys_deleted.
        #[arg(long)]
        json: bool,
    },
    /// List the leases, with the keys and locks living by each.
    List {
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
}

pub fn run_lease(args: &LeaseArgs) -> ExitCode {
    let client = match connect(&args.cluster) {
        Ok(client) => client,
        Err(error) => return fail("lease", error),
    };
    match &args.action {
        LeaseAction::Grant { ttl, json } => match client.lease_grant(*ttl) {
            Ok(lease) if *json => {
                println!(
                    "{}",
                    json!({"id": lease.id, "ttl": lease.ttl_ms / 1000, "ttl_ms": lease.ttl_ms})
                );
                ExitCode::SUCCESS
            }
            Ok(lease) => {
                println!("lease {} granted, TTL {} ms", lease.id, lease.ttl_ms);
                ExitCode::SUCCESS
            }
            Err(error) => fail("lease grant", error),
        },
        LeaseAction::Keepalive { id, once, json } => loop {
            match client.lease_keep_alive(*id) {
                Ok(ttl_ms) => {
                    if *json {
                        println!("{}", json!({"id": id, "ttl_ms": ttl_ms}));
                    } else {
                        println!("lease {id} kept alive, TTL {ttl_ms} ms");
                    }
                    if *once {
                        return ExitCode::SUCCESS;
                    }
                    std::thread::sleep(Duration::from_millis(ttl_ms / 3));
                }
                Err(error) => return fail("lease keepalive", error),
            }
        },
        LeaseAction::Revoke { id, json } => match client.lease_revoke(*id) {
            Ok(keys) if *json => {
                println!("{}", json!({"id": id, "keys_deleted": keys}));
                ExitCode::SUCCESS
            }
            Ok(keys) => {
                println!("lease {id} revoked, {keys} keys deleted");
                ExitCode::SUCCESS
            }
            Err(error) => fail("lease revoke", error),
        },
        LeaseAction::List { json } => match client.leases() {
            Ok(leases) if *json => {
                let list: Vec<_> = leases
                    .iter()
                    .map(|lease| json!({"id": lease.id, "ttl_ms": lease.ttl_ms, "keys": lease.keys, "locks": lease.locks}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
                ExitCode::SUCCESS
            }
            Ok(leases) => {
                for lease in leases {
                    println!(
                        "lease {}: TTL {} ms, {} keys, {} locks",
                        lease.id, lease.ttl_ms, lease.keys, lease.locks
                    );
                }
                ExitCode::SUCCESS
            }
            Err(error) => fail("lease list", error),
        },
    }
}

/// Keeps `lease` alive every third of its TTL until `stop`; sets `lost` if it is found gone.
fn keep_alive(
    client: Arc<Client>,
    lease: u64,
    ttl: Duration,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let step = Duration::from_millis(20);
        let mut waited = Duration::ZERO;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(step);
            waited += step;
            if waited < ttl / 3 {
                continue;
            }
            waited = Duration::ZERO;
            if let Err(error) = client.lease_keep_alive(lease) {
                eprintln!("quorum: lease {lease} could not be kept alive: {error}");
                if matches!(error, ClientError::Coordination(CoordError::LeaseNotFound { .. })) {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    })
}

#[derive(clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The lock's name.
    name: String,
    /// The lease's TTL in seconds: if this process stops keeping it alive (it dies, or is
    /// paused), the lock is released this long after its last keep-alive.
    #[arg(long, value_parser = parse_seconds, default_value = "10")]
    ttl: Duration,
    /// Give up waiting for the lock after this many seconds (exit code 3).
    #[arg(long, value_parser = parse_seconds, default_value = "3600")]
    wait: Duration,
    /// Print the token line as JSON: name, lease, token.
    #[arg(long)]
    json: bool,
    /// The command to run while holding the lock; it gets the fencing token in
    /// QUORUM_LOCK_TOKEN (and the lease in QUORUM_LOCK_LEASE).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// `quorum lock NAME -- COMMAND…`: waits its turn, runs COMMAND holding the lock, releases it.
pub fn run_lock(args: &LockArgs) -> ExitCode {
    let client = match connect(&args.cluster) {
        Ok(client) => Arc::new(client),
        Err(error) => return fail("lock", error),
    };
    let lease = match client.lease_grant(args.ttl) {
        Ok(lease) => lease,
        Err(error) => return fail("lock", error),
    };
    let (stop, lost) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let keeper = keep_alive(client.clone(), lease.id, args.ttl, stop.clone(), lost.clone());
    // Revoking the lease releases whatever it still holds.
    let finish = |code: ExitCode| {
        stop.store(true, Ordering::SeqCst);
        let _ = client.lease_revoke(lease.id);
        code
    };
    let holder = match client.lock(args.name.as_bytes(), lease.id, b"", args.wait) {
        Ok(holder) => holder,
        Err(ClientError::Timeout(_)) => {
            eprintln!("quorum lock: {} not acquired within {:?}", args.name, args.wait);
            return finish(ExitCode::from(3));
        }
        Err(error) => return finish(fail("lock", error)),
    };
    if args.json {
        eprintln!("{}", json!({"name": args.name, "lease": lease.id, "token": holder.token}));
    } else {
        eprintln!("quorum lock: holding {} with token {}", args.name, holder.token);
    }
    let status = std::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("QUORUM_LOCK_TOKEN", holder.token.to_string())
        .env("QUORUM_LOCK_LEASE", lease.id.to_string())
        .status();
    stop.store(true, Ordering::SeqCst);
    let _ = keeper.join();
    if lost.load(Ordering::SeqCst) {
        eprintln!("quorum lock: the lease ended while the command ran: the lock was lost");
    }
    let code = match status {
        Ok(status) => ExitCode::from(status.code().map_or(1, |code| code as u8)),
        Err(error) => fail("lock", format!("cannot run {}: {error}", args.command[0])),
    };
    let _ = client.unlock(args.name.as_bytes(), lease.id);
    finish(code)
}

#[derive(clap::Args)]
pub struct ElectArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The election's name.
    name: String,
    /// Campaign with this value: wait to lead, print the leadership, proclaim nothing more,
    /// and lead until interrupted (SIGINT or SIGTERM), then resign. Without it: print the
    /// leader and every change of leader or value.
    value: Option<String>,
    /// The lease's TTL in seconds (a leader that stops keeping it alive loses the election).
    #[arg(long, value_parser = parse_seconds, default_value = "10")]
    ttl: Duration,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub fn run_elect(args: &ElectArgs) -> ExitCode {
    let client = match connect(&args.cluster) {
        Ok(client) => Arc::new(client),
        Err(error) => return fail("elect", error),
    };
    let name = args.name.as_bytes();
    let Some(value) = &args.value else {
        return observe(&client, &args.name, args.json);
    };
    let lease = match client.lease_grant(args.ttl) {
        Ok(lease) => lease,
        Err(error) => return fail("elect", error),
    };
    let (stop, lost) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let keeper = keep_alive(client.clone(), lease.id, args.ttl, stop.clone(), lost.clone());
    let holder = match client.lock(name, lease.id, value.as_bytes(), Duration::from_secs(7 * 86400))
    {
        Ok(holder) => holder,
        Err(error) => return fail("elect", error),
    };
    if args.json {
        println!(
            "{}",
            json!({"name": args.name, "leader": true, "lease": lease.id, "token": holder.token, "value": value})
        );
    } else {
        println!("leading {} with token {} (value {value})", args.name, holder.token);
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, interrupted.clone());
    }
    while !interrupted.load(Ordering::SeqCst) && !lost.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let _ = keeper.join();
    let _ = client.lease_revoke(lease.id);
    if lost.load(Ordering::SeqCst) {
        return fail("elect", "the lease ended: no longer leading");
    }
    ExitCode::SUCCESS
}

fn observe(client: &Client, name: &str, json: bool) -> ExitCode {
    let print = |holder: Option<(u64, u64, &[u8])>, revision: u64| match holder {
        Some((lease, token, value)) if json => {
            println!(
                "{}",
                json!({"name": name, "revision": revision, "lease": lease, "token": token, "value": text(value)})
            );
        }
        Some((_, token, value)) => {
            println!("{name}: led with token {token}, value {}", text(value))
        }
        None if json => println!("{}", json!({"name": name, "revision": revision, "leader": null})),
        None => println!("{name}: no leader"),
    };
    let mut watch = match client.watch(KeyRange::Key(name.as_bytes().to_vec()), 0, true) {
        Ok(watch) => watch,
        Err(error) => return fail("elect", error),
    };
    match client.lock_holder(name.as_bytes()) {
        Ok(holder) => {
            print(holder.as_ref().map(|h| (h.lease, h.token, h.value.as_slice())), 0);
        }
        Err(error) => return fail("elect", error),
    }
    let mut current: Option<(u64, u64)> = None;
    loop {
        let changes = match watch.wait(Duration::from_secs(1)) {
            Ok(changes) => changes,
            Err(error) => return fail("elect", error),
        };
        for change in changes {
            match change.kind {
                ChangeKind::Locked { lease, token } => {
                    current = Some((lease, token));
                    print(Some((lease, token, &change.value)), change.revision);
                }
                ChangeKind::Proclaimed => {
                    let (lease, token) = current.unwrap_or((0, 0));
                    print(Some((lease, token, &change.value)), change.revision);
                }
                ChangeKind::Unlocked => {
                    current = None;
                    print(None, change.revision);
                }
                ChangeKind::Put | ChangeKind::Delete => {}
            }
        }
    }
}

#[derive(clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The key (or with --prefix, the prefix) to watch.
    key: String,
    /// Watch every key that starts with KEY.
    #[arg(long)]
    prefix: bool,
    /// Start from this revision (every change at or after it); from now on if not given.
    #[arg(long, value_name = "R")]
    rev: Option<u64>,
    /// Watch locks and elections of this name (or prefix) instead of keys.
    #[arg(long)]
    locks: bool,
    /// One JSON object per event: revision, type, key, value (and lease, token for locks).
    #[arg(long)]
    json: bool,
}

/// `quorum watch KEY`: one line per change, in revision order, until interrupted.
pub fn run_watch(args: &WatchArgs) -> ExitCode {
    let client = match connect(&args.cluster) {
        Ok(client) => client,
        Err(error) => return fail("watch", error),
    };
    let range = if args.prefix {
        KeyRange::Prefix(args.key.as_bytes().to_vec())
    } else {
        KeyRange::Key(args.key.as_bytes().to_vec())
    };
    let mut watch = match client.watch(range, args.rev.unwrap_or(0), args.locks) {
        Ok(watch) => watch,
        Err(error) => return fail("watch", error),
    };
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    loop {
        match watch.wait(Duration::from_secs(1)) {
            Ok(changes) => {
                for change in &changes {
                    if writeln!(out, "{}", event_line(change, args.json)).is_err() {
                        return ExitCode::SUCCESS; // The reader went away.
                    }
                }
                let _ = out.flush();
            }
            Err(ClientError::Timeout(_)) => continue,
            Err(error) => return fail("watch", error),
        }
    }
}

fn event_line(change: &Change, json: bool) -> String {
    let kind = match change.kind {
        ChangeKind::Put => "PUT",
        ChangeKind::Delete => "DELETE",
        ChangeKind::Locked { .. } => "LOCKED",
        ChangeKind::Unlocked => "UNLOCKED",
        ChangeKind::Proclaimed => "PROCLAIMED",
    };
    if json {
        let mut line = json!({
            "revision": change.revision,
            "type": kind.to_lowercase(),
            "key": text(&change.key),
            "value": text(&change.value),
        });
        if let ChangeKind::Locked { lease, token } = change.kind {
            line["lease"] = json!(lease);
            line["token"] = json!(token);
        }
        return line.to_string();
    }
    match change.kind {
        ChangeKind::Delete | ChangeKind::Unlocked => {
            format!("{} {kind} {}", change.revision, text(&change.key))
        }
        ChangeKind::Locked { token, .. } => {
            format!("{} {kind} {} token {token}", change.revision, text(&change.key))
        }
        _ => format!("{} {kind} {} {}", change.revision, text(&change.key), text(&change.value)),
    }
}

#[derive(clap::Args)]
#[command(
    after_help = "Example: set `config` to v2 only if it is still at version 3, else read it:
  quorum txn --cluster 127.0.0.1:7000 --if 'config version = 3' --then 'put config v2' --else 'get config'
A fenced write, refused once the lock `job` has moved past token 1234:
  quorum txn --cluster 127.0.0.1:7000 --if 'lock job token = 1234' --then 'put out result'
Compares (--if): KEY value|version|create|mod|lease =|!=|<|> TARGET, `KEY absent`, `KEY exists`,
`lock NAME token = T`. Operations (--then, --else): `put KEY VALUE`, `del KEY`, `del-prefix P`,
`get KEY`, `get-prefix P`. Without flags, the same lines are read from standard input, one per
line, each starting with `if`, `then` or `else`. Exit status: 0 if the compares held, 3 if not, 1 on an error (nothing applied)."
)]
pub struct TxnArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// A compare; all must hold for --then to run.
    #[arg(long = "if", value_name = "COMPARE")]
    compares: Vec<String>,
    /// An operation run if every compare holds.
    #[arg(long = "then", value_name = "OP")]
    success: Vec<String>,
    /// An operation run otherwise.
    #[arg(long = "else", value_name = "OP")]
    failure: Vec<String>,
    /// Print one JSON object: succeeded, revision, results.
    #[arg(long)]
    json: bool,
}

fn parse_compare(line: &str) -> Result<Compare, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let bad = || format!("`{line}` is not a compare (see --help)");
    match words.as_slice() {
        ["lock", name, "token", "=", token] => Ok(Compare::LockHeld {
            name: name.as_bytes().to_vec(),
            token: token.parse().map_err(|_| bad())?,
        }),
        [key, "absent"] => Ok(Compare::Key {
            key: key.as_bytes().to_vec(),
            op: CompareOp::Equal,
            target: Target::Version(0),
        }),
        [key, "exists"] => Ok(Compare::Key {
            key: key.as_bytes().to_vec(),
            op: CompareOp::Greater,
            target: Target::Version(0),
        }),
        [key, field, op, target @ ..] if !target.is_empty() => {
            let op = match *op {
                "=" | "==" => CompareOp::Equal,
                "!=" => CompareOp::NotEqual,
                "<" => CompareOp::Less,
                ">" => CompareOp::Greater,
                _ => return Err(bad()),
            };
            let joined = target.join(" ");
            let number = || joined.parse::<u64>().map_err(|_| bad());
            let target = match *field {
                "value" => Target::Value(Some(joined.as_bytes().to_vec())),
                "version" => Target::Version(number()?),
                "create" => Target::CreateRevision(number()?),
                "mod" => Target::ModRevision(number()?),
                "lease" => Target::Lease(number()?),
                _ => return Err(bad()),
            };
            Ok(Compare::Key { key: key.as_bytes().to_vec(), op, target })
        }
        _ => Err(bad()),
    }
}

fn parse_op(line: &str) -> Result<TxnOp, String> {
    let mut words = line.splitn(3, char::is_whitespace);
    let bad = || format!("`{line}` is not an operation (see --help)");
    let verb = words.next().ok_or_else(bad)?;
    let key = words.next().ok_or_else(bad)?.as_bytes().to_vec();
    let rest = words.next();
    Ok(match (verb, rest) {
        ("put", Some(value)) => TxnOp::Put { key, value: value.as_bytes().to_vec(), lease: 0 },
        ("del", None) => TxnOp::Delete(KeyRange::Key(key)),
        ("del-prefix", None) => TxnOp::Delete(KeyRange::Prefix(key)),
        ("get", None) => TxnOp::Range { range: KeyRange::Key(key), limit: 0 },
        ("get-prefix", None) => TxnOp::Range { range: KeyRange::Prefix(key), limit: 0 },
        _ => return Err(bad()),
    })
}

pub fn run_txn(args: &TxnArgs) -> ExitCode {
    let (mut compares, mut success, mut failure) =
        (args.compares.clone(), args.success.clone(), args.failure.clone());
    if compares.is_empty() && success.is_empty() && failure.is_empty() {
        if let Err(line) = read_txn_lines(&mut compares, &mut success, &mut failure) {
            eprintln!("quorum txn: `{line}` does not start with if, then or else");
            return ExitCode::from(2);
        }
    }
    let parsed = (|| -> Result<Txn, String> {
        Ok(Txn {
            compares: compares.iter().map(|c| parse_compare(c)).collect::<Result<_, _>>()?,
            success: success.iter().map(|op| parse_op(op)).collect::<Result<_, _>>()?,
            failure: failure.iter().map(|op| parse_op(op)).collect::<Result<_, _>>()?,
        })
    })();
    let txn = match parsed {
        Ok(txn) => txn,
        Err(error) => {
            eprintln!("quorum txn: {error}");
            return ExitCode::from(2);
        }
    };
    let client = match connect(&args.cluster) {
        Ok(client) => client,
        Err(error) => return fail("txn", error),
    };
    let outcome = match client.txn(&txn) {
        Ok(outcome) => outcome,
        Err(error) => return fail("txn", error),
    };
    print_outcome(&outcome, args.json);
    if outcome.succeeded { ExitCode::SUCCESS } else { ExitCode::from(3) }
}

/// A transaction's outcome, as lines or one JSON object.
fn print_outcome(outcome: &TxnOutcome, as_json: bool) {
    let results: Vec<serde_json::Value> = outcome
        .results
        .iter()
        .map(|result| match result {
            TxnResult::Put(previous) => json!({"put": {"previous": previous.as_ref().map(|kv| text(&kv.value))}}),
            TxnResult::Deleted(count) => json!({"deleted": count}),
            TxnResult::Range(range) => json!({"get": range.entries.iter().map(|kv| json!({
                "key": text(&kv.key), "value": text(&kv.value), "version": kv.version,
                "create_revision": kv.create_revision, "mod_revision": kv.mod_revision, "lease": kv.lease,
            })).collect::<Vec<_>>()}),
        })
        .collect();
    if as_json {
        println!(
            "{}",
            json!({"succeeded": outcome.succeeded, "revision": outcome.revision, "results": results})
        );
    } else {
        println!(
            "{} at revision {}",
            if outcome.succeeded { "SUCCEEDED" } else { "FAILED" },
            outcome.revision
        );
        for result in &outcome.results {
            match result {
                TxnResult::Put(_) => println!("OK"),
                TxnResult::Deleted(count) => println!("deleted {count}"),
                TxnResult::Range(range) => {
                    for kv in &range.entries {
                        println!("{} {}", text(&kv.key), text(&kv.value));
                    }
                }
            }
        }
    }
}

/// The transaction's lines from standard input (`if …`, `then …`, `else …`; blank lines and
/// `#` comments skipped); `Err` with the first line that is none of them.
fn read_txn_lines(
    compares: &mut Vec<String>,
    success: &mut Vec<String>,
    failure: &mut Vec<String>,
) -> Result<(), String> {
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(char::is_whitespace) {
            Some(("if", rest)) => compares.push(rest.trim().to_string()),
            Some(("then", rest)) => success.push(rest.trim().to_string()),
            Some(("else", rest)) => failure.push(rest.trim().to_string()),
            _ => return Err(line.to_string()),
        }
    }
    Ok(())
}
