//! `quorum status` and `quorum health`: how a node or a whole cluster is doing, as a table
//! for people or JSON for scripts, and an exit code that says whether it is healthy.

use std::process::ExitCode;
use std::time::Duration;

use quorum::client::{
    ClientOptions, ClusterStatus, MemberStatus, Problem, ShardStatus, cluster_status, node_status,
};
use quorum::core::{ClusterId, RoleKind};

/// A member is lagging once it has applied this many fewer slots than the cluster
/// committed, by default.
const LAG_SLOTS_MAX_DEFAULT: u64 = 10_000;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["node", "cluster"])))]
pub struct StatusArgs {
    /// One node's address, HOST:PORT (its --listen address): one line per shard of it.
    #[arg(long, value_name = "HOST:PORT")]
    node: Option<String>,
    /// Any members' addresses, HOST:PORT[,HOST:PORT…]: every member and every shard in one
    /// table (role, ballot, leader, commit and applied positions, lag), then the problems
    /// `quorum health` would report.
    #[arg(long, value_name = "HOST:PORT,…", value_delimiter = ',')]
    cluster: Vec<String>,
    /// The cluster's id; when given, a node of another cluster refuses us.
    #[arg(long)]
    cluster_id: Option<u64>,
    /// With --cluster: ask each member for its state digest too (hashes the whole state on
    /// each shard's thread: costly on a large state). --node always does.
    #[arg(long)]
    digest: bool,
    /// Print JSON instead of text: with --cluster one object (members, their shards,
    /// problems), with --node one object per line per shard.
    #[arg(long)]
    json: bool,
    /// A member that has applied more than this many slots fewer than the cluster committed
    /// is reported as lagging.
    #[arg(long, value_name = "SLOTS", default_value_t = LAG_SLOTS_MAX_DEFAULT)]
    lag_max_slots: u64,
    /// How long to wait for a member to answer, in ms (a digest may take longer: it waits
    /// up to ten times this).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    timeout_ms: u64,
}

/// Checks a whole cluster; exits 0 if it is healthy, 1 if not (saying why), 2 on bad usage.
#[derive(clap::Args)]
pub struct HealthArgs {
    /// Any members' addresses, HOST:PORT[,HOST:PORT…] (their --listen addresses); every
    /// member the cluster names is asked.
    #[arg(long, value_name = "HOST:PORT,…", value_delimiter = ',', required = true)]
    cluster: Vec<String>,
    /// The cluster's id; when given, a node of another cluster refuses us.
    #[arg(long)]
    cluster_id: Option<u64>,
    /// A member that has applied more than this many slots fewer than the cluster committed
    /// makes the cluster unhealthy.
    #[arg(long, value_name = "SLOTS", default_value_t = LAG_SLOTS_MAX_DEFAULT)]
    lag_max_slots: u64,
    /// How long to wait for a member to answer, in ms; one that does not is unreachable.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    timeout_ms: u64,
    /// Print one JSON object ({"healthy": …, "problems": [{"kind": …, "message": …, …}]}).
    #[arg(long)]
    json: bool,
}

fn options(cluster_id: Option<u64>, timeout_ms: u64) -> ClientOptions {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    ClientOptions {
        cluster_id: ClusterId(cluster_id.unwrap_or(0)),
        connect_timeout: timeout,
        request_timeout: timeout * 10,
        ..ClientOptions::default()
    }
}

pub fn run_status(args: &StatusArgs) -> ExitCode {
    let Some(node) = &args.node else { return run_cluster_status(args) };
    match node_status(node, ClusterId(args.cluster_id.unwrap_or(0)), true) {
        Ok(statuses) => {
            for (shard, status) in statuses.iter().enumerate() {
                if args.json {
                    println!("{}", shard_json(shard as u16, status, None));
                    continue;
                }
                println!(
                    "shard {shard}: {:?}, leader {}, commit index {}, applied {}, entries {}, digest {:016x}, syncs {}, egress {} bytes ({} of committed runs)",
                    status.role,
                    status.leader.map_or("unknown".to_string(), |node| node.0.to_string()),
                    status.commit_index.0,
                    status.applied_commands,
                    status.summary.entries,
                    status.summary.digest,
                    status.syncs,
                    status.egress_bytes,
                    status.chosen_bytes,
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("quorum status: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_cluster_status(args: &StatusArgs) -> ExitCode {
    let options = options(args.cluster_id, args.timeout_ms);
    let cluster = match cluster_status(&args.cluster, &options, args.digest) {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("quorum status: {error}");
            return ExitCode::FAILURE;
        }
    };
    let problems = cluster.problems(args.lag_max_slots);
    if args.json {
        let mut json = cluster_json(&cluster, args.digest);
        json["healthy"] = problems.is_empty().into();
        json["problems"] = problems.iter().map(problem_json).collect();
        println!("{json}");
    } else {
        print!("{}", cluster_table(&cluster, args.digest));
        for problem in &problems {
            println!("problem: {problem}");
        }
    }
    ExitCode::SUCCESS
}

pub fn run_health(args: &HealthArgs) -> ExitCode {
    let options = options(args.cluster_id, args.timeout_ms);
    let problems = match cluster_status(&args.cluster, &options, false) {
        Ok(cluster) => cluster.problems(args.lag_max_slots),
        Err(error) => {
            if args.json {
                let problem =
                    serde_json::json!({"kind": "unreachable", "message": error.to_string()});
                println!("{}", serde_json::json!({"healthy": false, "problems": [problem]}));
            } else {
                eprintln!("quorum health: unhealthy: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        let problems: Vec<serde_json::Value> = problems.iter().map(problem_json).collect();
        println!("{}", serde_json::json!({"healthy": problems.is_empty(), "problems": problems}));
    } else if problems.is_empty() {
        println!("healthy");
    } else {
        for problem in &problems {
            eprintln!("quorum health: unhealthy: {problem}");
        }
    }
    if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn role_name(role: RoleKind) -> &'static str {
    match role {
        RoleKind::Follower => "follower",
        RoleKind::Candidate => "candidate",
        RoleKind::Leader => "leader",
        RoleKind::Learner => "learner",
    }
}

/// The table: one row per member and shard.
fn cluster_table(cluster: &ClusterStatus, digest: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let header = format!(
        "{:<6} {:<21} {:>5} {:<9} {:>12} {:>6} {:>12} {:>12} {:>8} {:>8} {:>12}",
        "member",
        "address",
        "shard",
        "role",
        "ballot",
        "leader",
        "commit",
        "applied",
        "lag",
        "sessions",
        "snapshot"
    );
    let _ = writeln!(out, "{header}{}", if digest { "  entries digest" } else { "" });
    for member in &cluster.members {
        let shards = match &member.shards {
            Ok(shards) => shards,
            Err(error) => {
                let _ = writeln!(
                    out,
                    "{:<6} {:<21} {:>5} unreachable: {error}",
                    member.id.0, member.address, "-"
                );
                continue;
            }
        };
        for (shard, status) in (0..cluster.shards).zip(shards) {
            let ballot = format!("{}.{}", status.promised.round, status.promised.node.0);
            let leader = status.leader.map_or("-".to_string(), |node| node.0.to_string());
            let snapshot = status.snapshot_slot.map_or("-".to_string(), |slot| slot.0.to_string());
            let _ = write!(
                out,
                "{:<6} {:<21} {:>5} {:<9} {:>12} {:>6} {:>12} {:>12} {:>8} {:>8} {:>12}",
                member.id.0,
                member.address,
                shard,
                role_name(status.role),
                ballot,
                leader,
                status.commit_index.0,
                status.applied_index.0,
                cluster.lag(shard, status),
                status.sessions,
                snapshot,
            );
            if digest {
                let _ = write!(out, "  {} {:016x}", status.summary.entries, status.summary.digest);
            }
            out.push('\n');
        }
    }
    out
}

fn shard_json(shard: u16, status: &ShardStatus, lag: Option<u64>) -> serde_json::Value {
    let limits = status.session_limits.map(|limits| {
        serde_json::json!({
            "sessions_max": limits.sessions_max,
            "session_idle_commands_min": limits.idle_commands_min,
            "session_replies_max": limits.replies_max,
            "session_reply_bytes_max": limits.reply_bytes_max,
            "sessions_evicted_max": limits.evicted_max,
        })
    });
    let mut json = serde_json::json!({
        "shard": shard,
        "role": role_name(status.role),
        "ballot": {"round": status.promised.round, "node": status.promised.node.0},
        "leader": status.leader.map(|node| node.0),
        "commit_index": status.commit_index.0,
        "applied_index": status.applied_index.0,
        "applied_commands": status.applied_commands,
        "batches": status.batches,
        "sessions": status.sessions,
        "snapshot_slot": status.snapshot_slot.map(|slot| slot.0),
        "apply_total": status.apply_total,
        "durable": !status.not_durable,
        "voters": status.voters,
        "syncs": status.syncs,
        "entries": status.summary.entries,
        "digest": format!("{:016x}", status.summary.digest),
        "session_limits": limits,
    });
    if let Some(lag) = lag {
        json["lag_slots"] = lag.into();
    }
    json
}

fn member_json(cluster: &ClusterStatus, member: &MemberStatus, digest: bool) -> serde_json::Value {
    let mut json = serde_json::json!({
        "id": member.id.0,
        "address": member.address,
        "learner": member.learner,
    });
    match &member.shards {
        Ok(shards) => {
            json["reachable"] = true.into();
            let shards: Vec<serde_json::Value> = (0..cluster.shards)
                .zip(shards)
                .map(|(shard, status)| {
                    let mut json = shard_json(shard, status, Some(cluster.lag(shard, status)));
                    if !digest {
                        json["entries"] = serde_json::Value::Null;
                        json["digest"] = serde_json::Value::Null;
                    }
                    json
                })
                .collect();
            json["shards"] = shards.into();
        }
        Err(error) => {
            json["reachable"] = false.into();
            json["error"] = error.to_string().into();
        }
    }
    json
}

fn cluster_json(cluster: &ClusterStatus, digest: bool) -> serde_json::Value {
    let members: Vec<serde_json::Value> =
        cluster.members.iter().map(|member| member_json(cluster, member, digest)).collect();
    let leaders: Vec<Option<u16>> =
        (0..cluster.shards).map(|shard| cluster.leader(shard).map(|node| node.0)).collect();
    serde_json::json!({ "shards": cluster.shards, "leaders": leaders, "members": members })
}

fn problem_json(problem: &Problem) -> serde_json::Value {
    let mut json = serde_json::json!({"kind": problem.kind(), "message": problem.to_string()});
    match problem {
        Problem::Unreachable { member, address, .. } => {
            json["member"] = member.0.into();
            json["address"] = address.clone().into();
        }
        Problem::NoLeader { shard } => json["shard"] = (*shard).into(),
        Problem::Lagging { member, shard, behind_slots, .. } => {
            json["member"] = member.0.into();
            json["shard"] = (*shard).into();
            json["behind_slots"] = (*behind_slots).into();
        }
        Problem::SessionLimitsDiffer { member, reference } => {
            json["member"] = member.0.into();
            json["reference"] = reference.0.into();
        }
    }
    json
}
