//! A whole cluster's state in one look, and whether it is healthy: every member's status of
//! every shard (asked of all members at once, so that one that does not answer costs one
//! connect timeout, not one per member), and the problems an operator must hear of
//! (`quorum status --cluster`, `quorum health`; docs/operations.md, "Health").
//!
//! The member list is the one the first member that answers gives in its handshake: every
//! member of the cluster, voters and learners, whether they answer or not.

use std::fmt;

use super::{
    ClientError, ClientOptions, FRAME_BYTES_MAX, handshake, node_status_with, random_client_id,
};
use crate::core::{NodeId, RoleKind, Slot};
use crate::transport::codec::{Body, Encoder, Frame, MoveRefused, ShardStatus};
use crate::transport::framing::{read_frame, write_frame};

/// One member and what it said (or why it said nothing).
#[derive(Clone, Debug)]
pub struct MemberStatus {
    /// Its id.
    pub id: NodeId,
    /// Its listen address.
    pub address: String,
    /// True if it only learns.
    pub learner: bool,
    /// Its status of each shard, in shard order; the error if it could not be asked.
    pub shards: Result<Vec<ShardStatus>, ClientError>,
}

/// Every member's status of every shard.
#[derive(Clone, Debug)]
pub struct ClusterStatus {
    /// Shards per node.
    pub shards: u16,
    /// Every member, in id order.
    pub members: Vec<MemberStatus>,
}

/// Something wrong with a cluster, as `quorum health` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A member did not answer its status.
    Unreachable {
        /// The member.
        member: NodeId,
        /// Its address.
        address: String,
        /// Why it did not answer.
        reason: String,
    },
    /// No member that answered leads the shard: it takes no writes.
    NoLeader {
        /// The shard.
        shard: u16,
    },
    /// A member has applied the shard's log less far than the cluster committed it, by more
    /// than the bound.
    Lagging {
        /// The member.
        member: NodeId,
        /// The shard.
        shard: u16,
        /// Slots committed in the cluster that it has not applied.
        behind_slots: u64,
        /// The bound.
        lag_slots_max: u64,
    },
    /// A member's session limits differ from the first member's: they decide which requests
    /// are applied, so the replicas of a shard would disagree (docs/operations.md).
    SessionLimitsDiffer {
        /// The member.
        member: NodeId,
        /// The member they were compared with.
        reference: NodeId,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unreachable { member, address, reason } => {
                write!(f, "member {} ({address}) is unreachable: {reason}", member.0)
            }
            Problem::NoLeader { shard } => {
                write!(f, "shard {shard} has no leader among the members that answered")
            }
            Problem::Lagging { member, shard, behind_slots, lag_slots_max } => write!(
                f,
                "member {} is {behind_slots} slots behind on shard {shard} (more than \
                 --lag-max-slots {lag_slots_max})",
                member.0
            ),
            Problem::SessionLimitsDiffer { member, reference } => write!(
                f,
                "member {} runs with other session limits than member {}: every node must use \
                 the same --session* settings",
                member.0, reference.0
            ),
        }
    }
}

impl Problem {
    /// A short name of the kind, for scripts (`--json`).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::Unreachable { .. } => "unreachable",
            Problem::NoLeader { .. } => "no_leader",
            Problem::Lagging { .. } => "lagging",
            Problem::SessionLimitsDiffer { .. } => "session_limits_differ",
        }
    }
}

/// Asks every member of the cluster reached through any of `seeds` for its status of every
/// shard, all members at once; with `digest`, each state machine's summary too (costly on a
/// large state).
///
/// # Errors
/// No seed answered, or the cluster refused us. A member that does not answer is not an
/// error: its [`MemberStatus::shards`] holds why.
pub fn cluster_status(
    seeds: &[String],
    options: &ClientOptions,
    digest: bool,
) -> Result<ClusterStatus, ClientError> {
    let client_id = random_client_id();
    let mut last_error = ClientError::Disconnected("no address given".into());
    let mut first = None;
    for seed in seeds {
        match handshake(options, client_id, seed, 0) {
            Ok(answer) => {
                first = Some(answer.reply);
                break;
            }
            Err(error @ ClientError::Refused(_)) => return Err(error),
            Err(error) => last_error = error,
        }
    }
    let reply = first.ok_or(last_error)?;
    let mut members = reply.members;
    members.sort_by_key(|member| member.id);
    let statuses: Vec<Result<Vec<ShardStatus>, ClientError>> = std::thread::scope(|scope| {
        let asked: Vec<_> = members
            .iter()
            .map(|member| scope.spawn(|| node_status_with(&member.address, options, digest)))
            .collect();
        asked
            .into_iter()
            .map(|thread| {
                thread.join().unwrap_or_else(|_| {
                    Err(ClientError::BadReply("the status request panicked".into()))
                })
            })
            .collect()
    });
    let members = members
        .into_iter()
        .zip(statuses)
        .map(|(member, shards)| {
            let shards = shards.and_then(|shards| {
                if shards.len() == usize::from(reply.shards) {
                    Ok(shards)
                } else {
                    Err(ClientError::BadReply(format!(
                        "it reports {} shards, the cluster {}",
                        shards.len(),
                        reply.shards
                    )))
                }
            });
            MemberStatus { id: member.id, address: member.address, learner: member.learner, shards }
        })
        .collect();
    Ok(ClusterStatus { shards: reply.shards, members })
}

impl ClusterStatus {
    /// The highest commit position any member that answered reports for `shard`: the
    /// cluster has committed at least that far.
    #[must_use]
    pub fn committed(&self, shard: u16) -> Slot {
        self.answered()
            .filter_map(|(_, shards)| shards.get(usize::from(shard)))
            .map(|status| status.commit_index)
            .max()
            .unwrap_or(Slot(0))
    }

    /// The member that leads `shard`, as the members that answered say of themselves.
    #[must_use]
    pub fn leader(&self, shard: u16) -> Option<NodeId> {
        self.answered()
            .find(|(_, shards)| {
                shards.get(usize::from(shard)).is_some_and(|status| status.role == RoleKind::Leader)
            })
            .map(|(member, _)| member.id)
    }

    /// Slots of `shard` the cluster committed that `status` (a member's) has not applied.
    #[must_use]
    pub fn lag(&self, shard: u16, status: &ShardStatus) -> u64 {
        self.committed(shard).0.saturating_sub(status.applied_index.0)
    }

    fn answered(&self) -> impl Iterator<Item = (&MemberStatus, &Vec<ShardStatus>)> {
        self.members
            .iter()
            .filter_map(|member| member.shards.as_ref().ok().map(|shards| (member, shards)))
    }

    /// What is wrong, if anything: members that did not answer, shards without a leader,
    /// members more than `lag_slots_max` slots behind what the cluster committed, members
    /// whose session limits differ. Empty when healthy.
    #[must_use]
    pub fn problems(&self, lag_slots_max: u64) -> Vec<Problem> {
        let mut problems = Vec::new();
        for member in &self.members {
            if let Err(error) = &member.shards {
                problems.push(Problem::Unreachable {
                    member: member.id,
                    address: member.address.clone(),
                    reason: error.to_string(),
                });
            }
        }
        for shard in 0..self.shards {
            if self.leader(shard).is_none() {
                problems.push(Problem::NoLeader { shard });
            }
        }
        for (member, shards) in self.answered() {
            for (shard, status) in (0..self.shards).zip(shards) {
                let behind_slots = self.lag(shard, status);
                if behind_slots > lag_slots_max {
                    let member = member.id;
                    problems.push(Problem::Lagging { member, shard, behind_slots, lag_slots_max });
                }
            }
        }
        let limits = |shards: &Vec<ShardStatus>| shards.first().and_then(|s| s.session_limits);
        let mut answered = self.answered();
        if let Some((reference, first)) = answered.next() {
            for (member, shards) in answered {
                if limits(shards) != limits(first) {
                    let (member, reference) = (member.id, reference.id);
                    problems.push(Problem::SessionLimitsDiffer { member, reference });
                }
            }
        }
        problems
    }
}

/// Asks the node at `address` to hand its leadership of `shard` to voter `to` (protocol.md
/// §3.10). `Ok(Ok(()))`: it leads and began the transfer (which it gives up if `to` has not
/// taken over an election timeout later); `Ok(Err(..))`: it refused, saying why and whom it
/// knows to lead.
///
/// # Errors
/// The node could not be reached or answered something else.
pub fn move_leader(
    address: &str,
    options: &ClientOptions,
    shard: u16,
    to: NodeId,
) -> Result<Result<(), MoveRefused>, ClientError> {
    let mut answer = handshake(options, random_client_id(), address, shard)?;
    let ask = Frame {
        cluster_id: options.cluster_id,
        from: NodeId(0),
        shard,
        body: Body::MoveLeader { to },
    };
    let io = |error: &dyn fmt::Display| ClientError::Disconnected(error.to_string());
    let stream = &mut answer.stream;
    stream.set_read_timeout(Some(options.connect_timeout)).map_err(|error| io(&error))?;
    write_frame(stream, &mut Encoder::default(), &ask).map_err(|error| io(&error))?;
    match read_frame(stream, FRAME_BYTES_MAX).map_err(|error| io(&error))?.body {
        Body::MoveLeaderReply(outcome) => Ok(outcome),
        other => Err(ClientError::BadReply(format!("a move-leader answered {}", other.kind()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Ballot;
    use crate::machine::{SessionLimits, StateSummary};

    fn status(role: RoleKind, commit: u64, applied: u64) -> ShardStatus {
        ShardStatus {
            role,
            leader: None,
            commit_index: Slot(commit),
            applied_commands: 0,
            summary: StateSummary::default(),
            syncs: 0,
            not_durable: false,
            voters: 3,
            egress_bytes: 0,
            chosen_bytes: 0,
            batches: 0,
            promised: Ballot::ZERO,
            applied_index: Slot(applied),
            sessions: 0,
            snapshot_slot: None,
            apply_total: false,
            session_limits: Some(SessionLimits::DEFAULT),
        }
    }

    fn member(id: u16, shards: Result<Vec<ShardStatus>, ClientError>) -> MemberStatus {
        MemberStatus { id: NodeId(id), address: format!("127.0.0.1:{id}"), learner: false, shards }
    }

    #[test]
    fn a_healthy_cluster_has_no_problems() {
        let cluster = ClusterStatus {
            shards: 1,
            members: vec![
                member(1, Ok(vec![status(RoleKind::Leader, 100, 100)])),
                member(2, Ok(vec![status(RoleKind::Follower, 98, 98)])),
            ],
        };
        assert_eq!(cluster.problems(10), vec![]);
        assert_eq!(cluster.leader(0), Some(NodeId(1)));
        assert_eq!(cluster.lag(0, &status(RoleKind::Follower, 98, 98)), 2);
    }

    #[test]
    fn each_problem_is_named() {
        let mut other_limits = status(RoleKind::Follower, 100, 40);
        other_limits.session_limits = Some(SessionLimits::with_replies_max(1));
        let cluster = ClusterStatus {
            shards: 1,
            members: vec![
                member(1, Ok(vec![status(RoleKind::Follower, 100, 100)])),
                member(2, Ok(vec![other_limits])),
                member(3, Err(ClientError::Disconnected("connection refused".into()))),
            ],
        };
        let problems = cluster.problems(50);
        let kinds: Vec<&str> = problems.iter().map(Problem::kind).collect();
        assert_eq!(kinds, ["unreachable", "no_leader", "lagging", "session_limits_differ"]);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(text[0].contains("member 3 (127.0.0.1:3) is unreachable: "), "{}", text[0]);
        assert!(text[0].contains("connection refused"), "{}", text[0]);
        assert_eq!(text[1], "shard 0 has no leader among the members that answered");
        assert!(text[2].starts_with("member 2 is 60 slots behind on shard 0"), "{}", text[2]);
        assert!(text[3].starts_with("member 2 runs with other session limits than member 1"));
    }
}
