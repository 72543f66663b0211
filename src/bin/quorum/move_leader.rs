//! `quorum move-leader`: hand one shard's leadership (or every shard's) to another voter,
//! as before maintenance of the node that leads it (protocol.md §3.10, docs/operations.md).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use quorum::client::{ClientOptions, ClusterStatus, cluster_status, move_leader};
use quorum::core::{ClusterId, NodeId};

#[derive(clap::Args)]
pub struct MoveLeaderArgs {
    /// Any member of the cluster, HOST:PORT (its client address, shard 0's port): each
    /// shard's leader is found from there.
    #[arg(long, value_name = "HOST:PORT")]
    node: String,
    /// The voter to hand leadership to, by id.
    #[arg(long, value_name = "ID")]
    to: u16,
    /// Move only this shard's leadership (default: every shard's).
    #[arg(long, value_name = "K")]
    shard: Option<u16>,
    /// The cluster's id (0: accept the one the member reports).
    #[arg(long, value_name = "ID")]
    cluster_id: Option<u64>,
    /// How long to wait for the new leader to take over, per shard, in ms.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
    /// Print one JSON object per shard ({"shard": …, "from": …, "to": …, "ms": …}).
    #[arg(long)]
    json: bool,
}

/// What happened to one shard's leadership.
struct Moved {
    shard: u16,
    from: Option<NodeId>,
    ms: u64,
}

pub fn run(args: &MoveLeaderArgs) -> ExitCode {
    let options = ClientOptions {
        cluster_id: ClusterId(args.cluster_id.unwrap_or(0)),
        connect_timeout: Duration::from_millis(args.timeout_ms.clamp(100, 2000)),
        ..ClientOptions::default()
    };
    let to = NodeId(args.to);
    let cluster = match cluster_status(std::slice::from_ref(&args.node), &options, false) {
        Ok(cluster) => cluster,
        Err(error) => return fail(&format!("cannot reach the cluster: {error}")),
    };
    if let Err(reason) = check_target(&cluster, to, args.shard) {
        return fail(&reason);
    }
    let shards: Vec<u16> = args.shard.map_or_else(|| (0..cluster.shards).collect(), |k| vec![k]);
    for shard in shards {
        match move_one(&args.node, &options, shard, to, args.timeout_ms) {
            Ok(moved) if args.json => println!(
                "{}",
                serde_json::json!({
                    "shard": moved.shard,
                    "from": moved.from.map(|node| node.0),
                    "to": to.0,
                    "ms": moved.ms,
                })
            ),
            Ok(Moved { shard, from: Some(from), ms }) if from == to => {
                println!("shard {shard}: node {} leads already ({ms} ms)", from.0);
            }
            Ok(Moved { shard, from, ms }) => println!(
                "shard {shard}: leadership moved from node {} to node {} in {ms} ms",
                from.map_or("?".to_string(), |node| node.0.to_string()),
                to.0
            ),
            Err(reason) => return fail(&format!("shard {shard}: {reason}")),
        }
    }
    ExitCode::SUCCESS
}

fn fail(reason: &str) -> ExitCode {
    eprintln!("quorum move-leader: {reason}");
    ExitCode::FAILURE
}

/// `to` must be a voter, and `shard` one of the cluster's.
fn check_target(cluster: &ClusterStatus, to: NodeId, shard: Option<u16>) -> Result<(), String> {
    if let Some(shard) = shard.filter(|shard| *shard >= cluster.shards) {
        return Err(format!("no shard {shard}: the cluster has {}", cluster.shards));
    }
    match cluster.members.iter().find(|member| member.id == to) {
        None => Err(format!("node {} is not a member of the cluster", to.0)),
        Some(member) if member.learner => {
            Err(format!("node {} is a learner: only a voter can lead", to.0))
        }
        Some(_) => Ok(()),
    }
}

/// Asks `shard`'s leader to hand over to `to`, and waits until `to` says it leads.
fn move_one(
    seed: &str,
    options: &ClientOptions,
    shard: u16,
    to: NodeId,
    timeout_ms: u64,
) -> Result<Moved, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(timeout_ms);
    let address_of = |cluster: &ClusterStatus, node: NodeId| {
        cluster.members.iter().find(|member| member.id == node).map(|m| m.address.clone())
    };
    let mut asked = None;
    loop {
        let cluster = cluster_status(&[seed.to_string()], options, false)
            .map_err(|error| format!("cannot reach the cluster: {error}"))?;
        let leader = cluster.leader(shard);
        if leader == Some(to) {
            let ms = started.elapsed().as_millis() as u64;
            return Ok(Moved { shard, from: asked.or(Some(to)), ms });
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {} did not take over within {timeout_ms} ms (leader now: {})",
                to.0,
                leader.map_or("none".to_string(), |node| node.0.to_string())
            ));
        }
        if let (Some(leader), None) = (leader, asked) {
            let address = address_of(&cluster, leader).ok_or("the leader has no address")?;
            match move_leader(&address, options, shard, to) {
                Ok(Ok(())) => asked = Some(leader),
                Ok(Err(refused)) => {
                    return Err(format!("node {} refused: {}", leader.0, refused.reason));
                }
                Err(error) => return Err(format!("cannot reach node {}: {error}", leader.0)),
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
