//! Reads without the log beyond the read index (protocol.md §5.4, §5.5): one replica driven
//! by hand for the lease's rules and the read-index requests between replicas, then three
//! wired shards for follower and stale reads end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use std::collections::HashMap;

use quorum::core::{
    Action, Ballot, ClusterId, Config, Consistency, Envelope, Message, NodeId, ProposeError,
    ReadOptions, ReadPath, Replica, RequestId, RoleKind, Slot,
};
use quorum::machine::{KvCommand, KvReply, KvStore, Outcome, SessionLimits, register_request};
use quorum::shard::{Shard, ShardSettings, settle_wired};
use quorum_wal::{Options, SimBackend};

const CLUSTER: ClusterId = ClusterId(16);
const ME: NodeId = NodeId(1);
const PEER_A: NodeId = NodeId(2);
const PEER_B: NodeId = NodeId(3);

/// Election timeout 10 ticks, heartbeats every 2; leases with the default 10 % drift bound:
/// `(10 − 1) · 0.9 / 1.1` = 7 ticks.
fn config(node: NodeId, read_lease: bool) -> Config {
    let mut config = Config::new(CLUSTER, node, vec![ME, PEER_A, PEER_B]);
    config.read_lease = read_lease;
    config
}

fn actions(replica: &mut Replica) -> Vec<Action> {
    let mut out = Vec::new();
    replica.take_actions(&mut out);
    out
}

fn deliver(replica: &mut Replica, from: NodeId, message: Message) -> Vec<Action> {
    replica.on_message(Envelope { cluster_id: CLUSTER, from, message }).unwrap();
    actions(replica)
}

/// Completes every persist in `actions`, delivering replies the replica sends itself; returns
/// the rest.
fn persist_all(replica: &mut Replica, actions: Vec<Action>) -> Vec<Action> {
    let mut out = Vec::new();
    let mut own = Vec::new();
    for action in actions {
        match action {
            Action::Persist { seq, then_send, .. } => {
                replica.on_persisted(seq);
                match then_send {
                    Some((to, message)) if to == replica.node() => own.push(message),
                    Some((to, message)) => out.push(Action::Send { to, message }),
                    None => {}
                }
            }
            other => out.push(other),
        }
    }
    for message in own {
        let more = deliver(replica, replica.node(), message);
        out.extend(persist_all(replica, more));
    }
    out
}

/// Ticks `replica` to a pre-vote, grants it and completes phase 1 with PEER_A: returns the
/// ballot and what the new leader sent.
fn elect(replica: &mut Replica) -> (Ballot, Vec<Action>) {
    while replica.role() != RoleKind::Candidate {
        replica.on_tick();
    }
    let round = actions(replica)
        .iter()
        .find_map(|action| match action {
            Action::Send { message: Message::Probe { round, .. }, .. } => Some(*round),
            _ => None,
        })
        .expect("a probe");
    let granted = Message::ProbeReply { round, granted: true, promised: Ballot::ZERO };
    let after_grant = deliver(replica, PEER_A, granted);
    persist_all(replica, after_grant);
    let ballot = Ballot::new(round, ME);
    let promise = Message::Promise { ballot, from_slot: Slot(0), runs: vec![], next_slot: None };
    let became = deliver(replica, PEER_A, promise);
    assert_eq!(replica.role(), RoleKind::Leader);
    (ballot, persist_all(replica, became))
}

/// The read rounds the heartbeats in `actions` ask PEER_A to ack.
fn rounds_asked(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send { to, message: Message::Heartbeat { read_round, .. } }
                if *to == PEER_A && *read_round > 0 =>
            {
                Some(*read_round)
            }
            _ => None,
        })
        .collect()
}

/// PEER_A acks every round `actions` asks of it; returns what that caused.
fn ack_rounds(replica: &mut Replica, ballot: Ballot, actions: &[Action]) -> Vec<Action> {
    let mut out = Vec::new();
    for read_round in rounds_asked(actions) {
        out.extend(deliver(replica, PEER_A, Message::HeartbeatAck { ballot, read_round }));
    }
    out
}

fn id(sequence: u64) -> RequestId {
    RequestId { client: 5, sequence: RequestId::QUERY_BIT | sequence }
}

fn ready(actions: &[Action]) -> Vec<(RequestId, Slot)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::ReadReady { reads } => Some(reads.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn lease_length_is_the_election_timeout_shortened_by_the_drift_bound() {
    let mut config = config(ME, true);
    assert_eq!(config.lease_ticks(), 7, "(10 - 1) * 0.9 / 1.1, rounded down");
    config.max_clock_drift_ppm = 0;
    assert_eq!(config.lease_ticks(), 9, "one tick is lost to where in a tick an ack came");
    config.election_timeout_ticks = 40;
    config.max_clock_drift_ppm = 500_000;
    assert_eq!(config.lease_ticks(), 13, "39 / 3");
    config.election_timeout_ticks = 5;
    assert!(config.validate().is_err(), "a lease of 1 tick does not outlast a heartbeat");
    config.max_clock_drift_ppm = 1_000_000;
    config.read_lease = false;
    assert!(config.validate().is_err(), "a drift of 100 % is refused even without leases");
}

#[test]
fn a_lease_read_is_answered_at_once_only_within_a_lease_that_counts_from_the_round_start() {
    let mut leader = Replica::new(config(ME, true)).unwrap();
    let (ballot, sent) = elect(&mut leader);
    assert_eq!(rounds_asked(&sent), vec![1], "a new leader starts a lease round at once");
    // No lease yet: the read takes a round.
    assert_eq!(leader.read(id(1), Consistency::Lease, Slot(0)), Ok(ReadPath::Round));
    let confirmed = ack_rounds(&mut leader, ballot, &sent);
    let second = ack_rounds(&mut leader, ballot, &confirmed);
    assert_eq!(ready(&second).len(), 1, "confirmed by the next round, as a read index read");
    assert!(!leader.holds_lease(), "a new leader waits out any former lease first");
    // Renewed at every heartbeat while the voters ack, the lease is used once an election
    // timeout has passed since this leader was elected.
    let mut waited = 0;
    while !leader.holds_lease() {
        leader.on_tick();
        let sent = actions(&mut leader);
        ack_rounds(&mut leader, ballot, &sent);
        waited += 1;
        assert!(waited <= 11, "no lease after {waited} ticks");
    }
    assert_eq!(waited, 10, "exactly an election timeout after the election");
    assert_eq!(leader.read(id(2), Consistency::Lease, Slot(0)), Ok(ReadPath::Lease));
    assert_eq!(ready(&actions(&mut leader)), vec![(id(2), Slot(0))], "answered at once");
    assert_eq!(leader.read(id(3), Consistency::Linearizable, Slot(0)), Ok(ReadPath::Round));
    let round = actions(&mut leader);
    assert_eq!(ready(&ack_rounds(&mut leader, ballot, &round)), vec![(id(3), Slot(0))]);
    // The voters go quiet. The next renewal round starts at a heartbeat; its ack arrives
    // three ticks later: the lease runs 7 ticks from the round's start, not the ack's arrival.
    let mut round_sent = Vec::new();
    let mut started = 0;
    for tick in 1..=4 {
        leader.on_tick();
        round_sent = actions(&mut leader);
        if !rounds_asked(&round_sent).is_empty() {
            started = tick;
            break;
        }
    }
    assert!(started > 0, "a heartbeat within two ticks starts a renewal round");
    for _ in 0..3 {
        leader.on_tick();
        actions(&mut leader);
    }
    ack_rounds(&mut leader, ballot, &round_sent);
    for _ in 3..6 {
        leader.on_tick();
        actions(&mut leader);
        assert!(leader.holds_lease());
    }
    leader.on_tick();
    actions(&mut leader);
    assert!(!leader.holds_lease(), "7 ticks after the round started, the lease is over");
    assert_eq!(leader.read(id(4), Consistency::Lease, Slot(0)), Ok(ReadPath::Round));
}

/// A leader under leases, its rounds acked by a peer until it holds a lease; and its ballot.
fn leader_holding_a_lease() -> (Replica, Ballot) {
    let mut leader = Replica::new(config(ME, true)).unwrap();
    let (ballot, sent) = elect(&mut leader);
    ack_rounds(&mut leader, ballot, &sent);
    while !leader.holds_lease() {
        leader.on_tick();
        let sent = actions(&mut leader);
        ack_rounds(&mut leader, ballot, &sent);
    }
    (leader, ballot)
}

#[test]
fn ticks_that_elapsed_at_once_end_a_lease_as_if_each_had_come() {
    let (mut leader, _) = leader_holding_a_lease();
    // The thread was held for 7 ticks (a runtime catches up with its clock in one call).
    leader.on_ticks(7);
    assert!(!leader.holds_lease(), "a lease of 7 ticks is over 7 ticks later");
    assert_eq!(leader.read(id(1), Consistency::Lease, Slot(0)), Ok(ReadPath::Round));
}

#[test]
fn under_leases_a_voter_helps_no_candidate_within_an_election_timeout_of_a_leader() {
    for read_lease in [false, true] {
        let mut voter = Replica::new(config(ME, read_lease)).unwrap();
        for _ in 0..10 {
            voter.on_tick();
        }
        actions(&mut voter);
        let old = Ballot::new(1, PEER_A);
        let heartbeat = Message::Heartbeat { ballot: old, commit_index: Slot(0), read_round: 3 };
        let acked = deliver(&mut voter, PEER_A, heartbeat);
        assert!(acked.iter().any(|a| matches!(
            a,
            Action::Send { message: Message::HeartbeatAck { read_round: 3, .. }, .. }
        )));
        // A candidate that gathered its pre-votes before this ack (so the leader's lease may
        // count it) sends its prepare now.
        let prepare = Message::Prepare { ballot: Ballot::new(2, PEER_B), from_slot: Slot(0) };
        let answer = deliver(&mut voter, PEER_B, prepare.clone());
        let promised = answer.iter().any(|a| matches!(a, Action::Persist { .. }));
        assert_eq!(promised, !read_lease, "leases {read_lease}: {answer:?}");
        if read_lease {
            for _ in 0..10 {
                voter.on_tick();
            }
            actions(&mut voter);
            let answer = deliver(&mut voter, PEER_B, prepare);
            assert!(answer.iter().any(|a| matches!(a, Action::Persist { .. })), "{answer:?}");
        }
    }
}

#[test]
fn under_leases_a_restarted_voter_grants_no_pre_vote_for_an_election_timeout() {
    for read_lease in [false, true] {
        let mut voter = Replica::new(config(ME, read_lease)).unwrap();
        let probe = Message::Probe { round: 4, commit_index: Slot(0) };
        let granted = |out: &[Action]| {
            out.iter().any(|a| {
                matches!(a, Action::Send { message: Message::ProbeReply { granted: true, .. }, .. })
            })
        };
        let at_start = deliver(&mut voter, PEER_B, probe.clone());
        assert_eq!(granted(&at_start), !read_lease, "leases {read_lease}");
        for _ in 0..10 {
            voter.on_tick();
        }
        actions(&mut voter);
        assert!(granted(&deliver(&mut voter, PEER_B, probe)), "after an election timeout");
    }
}

#[test]
fn a_follower_asks_its_leader_for_the_read_index_and_takes_only_its_answer() {
    let mut follower = Replica::new(config(ME, false)).unwrap();
    follower.seed_nonces(1000);
    let leader = Ballot::new(1, PEER_A);
    let heartbeat = Message::Heartbeat { ballot: leader, commit_index: Slot(0), read_round: 0 };
    deliver(&mut follower, PEER_A, heartbeat);
    assert_eq!(
        follower.read(id(1), Consistency::Linearizable, Slot(0)),
        Err(ProposeError::NotLeader { hint: Some(PEER_A) }),
        "a linearizable read is the leader's"
    );
    assert_eq!(follower.read(id(2), Consistency::Follower, Slot(0)), Ok(ReadPath::ThroughLeader));
    let asked = actions(&mut follower);
    assert_eq!(
        asked,
        vec![Action::Send { to: PEER_A, message: Message::ReadIndexRequest { nonce: 1000 } }]
    );
    assert_eq!(follower.read(id(3), Consistency::Follower, Slot(0)), Ok(ReadPath::ThroughLeader));
    assert!(actions(&mut follower).is_empty(), "one request in flight; the next read waits");
    let other = Message::ReadIndexReply { nonce: 999, read_index: Some(Slot(9)) };
    assert!(ready(&deliver(&mut follower, PEER_A, other)).is_empty(), "another request's");
    let answer = Message::ReadIndexReply { nonce: 1000, read_index: Some(Slot(4)) };
    let out = deliver(&mut follower, PEER_A, answer);
    assert_eq!(ready(&out), vec![(id(2), Slot(4))], "ready at the leader's index");
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Send { to: PEER_A, message: Message::ReadIndexRequest { nonce: 1001 } }
    )));
    // Unanswered, the request goes again every heartbeat interval, and its read is aborted
    // after two election timeouts.
    let mut resent = 0;
    let mut aborted = Vec::new();
    for _ in 0..20 {
        follower.on_tick();
        for action in actions(&mut follower) {
            match action {
                Action::Send { message: Message::ReadIndexRequest { nonce: 1001 }, .. } => {
                    resent += 1;
                }
                Action::ReadsAborted { ids } => aborted.extend(ids),
                _ => {}
            }
        }
    }
    assert!(resent >= 5, "resent {resent} times");
    assert_eq!(aborted, vec![id(3)]);
}

#[test]
fn a_leader_answers_a_read_index_request_after_its_round_and_a_follower_refuses_one() {
    let mut leader = Replica::new(config(ME, false)).unwrap();
    let (ballot, _) = elect(&mut leader);
    let asked = deliver(&mut leader, PEER_B, Message::ReadIndexRequest { nonce: 7 });
    assert!(!asked.iter().any(|a| matches!(a, Action::Send { to: PEER_B, .. }
        if matches!(a, Action::Send { message: Message::ReadIndexReply { .. }, .. }))));
    let answered = ack_rounds(&mut leader, ballot, &asked);
    assert!(answered.contains(&Action::Send {
        to: PEER_B,
        message: Message::ReadIndexReply { nonce: 7, read_index: Some(Slot(0)) },
    }));
    let mut follower = Replica::new(config(ME, false)).unwrap();
    let refused = deliver(&mut follower, PEER_B, Message::ReadIndexRequest { nonce: 8 });
    assert_eq!(
        refused,
        vec![Action::Send {
            to: PEER_B,
            message: Message::ReadIndexReply { nonce: 8, read_index: None },
        }]
    );
}

#[test]
fn a_stale_read_is_ready_at_once_at_the_commit_position_or_the_clients_floor() {
    let mut learner_like = Replica::new(config(ME, false)).unwrap();
    assert_eq!(learner_like.read(id(1), Consistency::Stale, Slot(0)), Ok(ReadPath::Stale));
    assert_eq!(learner_like.read(id(2), Consistency::Stale, Slot(6)), Ok(ReadPath::Stale));
    assert_eq!(ready(&actions(&mut learner_like)), vec![(id(1), Slot(0)), (id(2), Slot(6))]);
    // How stale it may be, by its own view: nothing heard for 25 ticks.
    for _ in 0..25 {
        learner_like.on_tick();
    }
    assert_eq!(learner_like.staleness().ticks, 25);
}

// ----- Three wired shards ----------------------------------------------------------------

struct Cluster {
    shards: Vec<Option<Shard<SimBackend, KvStore>>>,
    /// Every replica's answers, by request.
    replies: HashMap<RequestId, (usize, Slot, Outcome<KvReply>)>,
}

impl Cluster {
    fn new() -> Cluster {
        let options = Options { segment_bytes: 64 * 1024, prepare_ahead: false };
        let shards = (1..=3)
            .map(|node| {
                let settings = ShardSettings {
                    tick_us: 1000,
                    ..ShardSettings::new(SessionLimits::with_replies_max(64))
                };
                let config = config(NodeId(node), true);
                let disk = SimBackend::new();
                let opened =
                    Shard::open_with(config, disk, options.clone(), KvStore::default(), settings);
                Some(opened.unwrap())
            })
            .collect();
        let mut cluster = Cluster { shards, replies: HashMap::new() };
        while cluster.leader().is_none() {
            cluster.tick();
        }
        cluster
    }

    fn settle(&mut self) {
        let replies = &mut self.replies;
        settle_wired(&mut self.shards, |shard, applied| {
            let node = usize::from(shard.replica().node().0) - 1;
            for applied in applied {
                replies.insert(applied.id, (node, applied.slot, applied.outcome));
            }
        })
        .unwrap();
    }

    fn tick(&mut self) {
        for shard in self.shards.iter_mut().flatten() {
            shard.on_tick().unwrap();
        }
        self.settle();
    }

    fn leader(&self) -> Option<usize> {
        (0..3).find(|index| {
            self.shards[*index]
                .as_ref()
                .is_some_and(|shard| shard.replica().role() == RoleKind::Leader)
        })
    }

    fn shard(&mut self, index: usize) -> &mut Shard<SimBackend, KvStore> {
        self.shards[index].as_mut().unwrap()
    }

    fn register(&mut self) -> u64 {
        let (id, payload) = register_request([3; 16]);
        let leader = self.leader().unwrap();
        self.shard(leader).propose(id, &payload).unwrap().unwrap();
        self.shard(leader).flush().unwrap();
        self.settle();
        match self.replies.get(&id) {
            Some((_, _, Outcome::Registered(session))) => *session,
            other => panic!("registration: {other:?}"),
        }
    }

    fn put(&mut self, session: u64, sequence: u64, key: &str, value: &str) {
        let id = RequestId { client: session, sequence };
        let command = KvCommand::Put { key: key.into(), value: value.into() }.encode();
        let leader = self.leader().unwrap();
        self.shard(leader).propose(id, &command).unwrap().unwrap();
        self.shard(leader).flush().unwrap();
        self.settle();
        assert!(self.replies.contains_key(&id), "put {sequence} acknowledged");
    }

    /// Reads `key` at replica `at`; returns its answer once the cluster settles.
    fn read(
        &mut self,
        at: usize,
        sequence: u64,
        key: &str,
        read: ReadOptions,
    ) -> Result<(Slot, KvReply), ProposeError> {
        let id = RequestId { client: 77, sequence: RequestId::QUERY_BIT | sequence };
        let get = KvCommand::Get { key: key.into() }.encode();
        self.shard(at).read(id, &get, read).unwrap()?;
        self.settle();
        match self.replies.remove(&id) {
            Some((node, slot, Outcome::Applied(reply))) => {
                assert_eq!(node, at, "answered where it was asked");
                Ok((slot, reply))
            }
            other => panic!("read {sequence}: {other:?}"),
        }
    }
}

fn with(consistency: Consistency) -> ReadOptions {
    ReadOptions { consistency, ..ReadOptions::default() }
}

#[test]
fn reads_in_every_consistency_see_acknowledged_writes_and_never_touch_the_log() {
    let mut cluster = Cluster::new();
    let session = cluster.register();
    cluster.put(session, 1, "k", "v1");
    let leader = cluster.leader().unwrap();
    let follower = (leader + 1) % 3;
    let ends = |cluster: &Cluster| -> Vec<u64> {
        cluster.shards.iter().map(|shard| shard.as_ref().unwrap().wal().end_position()).collect()
    };
    let before = ends(&cluster);
    let value = KvReply::Value(Some(b"v1".to_vec()));
    for (sequence, consistency) in [
        (1, Consistency::Linearizable),
        (2, Consistency::Lease),
        (3, Consistency::Follower),
        (4, Consistency::Stale),
    ] {
        let (_, reply) = cluster.read(leader, sequence, "k", with(consistency)).unwrap();
        assert_eq!(reply, value, "{consistency:?} at the leader");
    }
    // A follower: linearizable and lease reads are the leader's; a follower read asks the
    // leader for its index and sees the write acknowledged there; a stale one answers at once.
    for consistency in [Consistency::Linearizable, Consistency::Lease] {
        let refused = cluster.read(follower, 10, "k", with(consistency));
        assert!(matches!(refused, Err(ProposeError::NotLeader { .. })), "{refused:?}");
    }
    let (slot, reply) = cluster.read(follower, 11, "k", with(Consistency::Follower)).unwrap();
    assert_eq!(reply, value, "a follower read after a write acknowledged at the leader");
    let commit = cluster.shard(follower).replica().commit_index();
    assert_eq!(slot, commit, "its slot is the position its state reflects");
    let (_, reply) = cluster.read(follower, 12, "k", with(Consistency::Stale)).unwrap();
    assert_eq!(reply, value);
    assert_eq!(ends(&cluster), before, "a read was written to some replica's log");
}

#[test]
fn a_stale_read_says_where_it_stands_and_is_refused_beyond_its_bound() {
    let mut cluster = Cluster::new();
    let session = cluster.register();
    cluster.put(session, 1, "k", "old");
    // The followers learn the commit from the next heartbeat.
    cluster.tick();
    cluster.tick();
    let leader = cluster.leader().unwrap();
    let lagging = (leader + 1) % 3;
    let parked = cluster.shards[lagging].take();
    cluster.put(session, 2, "k", "new");
    cluster.shards[lagging] = parked;
    // The lagging replica has not heard of the second write: a stale read there gives the old
    // value, at the slot before it.
    let (slot, reply) = cluster.read(lagging, 1, "k", with(Consistency::Stale)).unwrap();
    assert_eq!(reply, KvReply::Value(Some(b"old".to_vec())));
    let at_leader = cluster.shard(leader).replica().commit_index();
    assert!(slot < at_leader, "{slot:?} reported, the leader is at {at_leader:?}");
    // Ticks without hearing the leader: a bound in time refuses it. (Nothing is delivered
    // to it meanwhile.)
    for _ in 0..30 {
        cluster.shard(lagging).on_tick().unwrap();
        let mut drop = Vec::new();
        cluster.shard(lagging).take_outbox(&mut drop);
    }
    let bounded = ReadOptions { behind_ms_max: Some(20), ..with(Consistency::Stale) };
    let refused = cluster.read(lagging, 2, "k", bounded);
    assert!(matches!(refused, Err(ProposeError::TooStale { behind_ms, .. }) if behind_ms >= 30));
    // Caught up again, it answers within the bound, and a client's floor is waited for.
    cluster.tick();
    cluster.tick();
    let (_, reply) = cluster.read(lagging, 3, "k", bounded).unwrap();
    assert_eq!(reply, KvReply::Value(Some(b"new".to_vec())));
    let positions = ReadOptions { behind_slots_max: Some(0), ..with(Consistency::Stale) };
    assert!(cluster.read(lagging, 4, "k", positions).is_ok(), "0 slots behind");
}

#[test]
fn under_leases_a_voter_the_leader_let_go_helps_its_successor_at_once_and_no_one_else_earlier() {
    let mut voter = Replica::new(config(ME, true)).unwrap();
    for _ in 0..10 {
        voter.on_tick();
    }
    actions(&mut voter);
    let leader = Ballot::new(1, PEER_A);
    let heartbeat = Message::Heartbeat { ballot: leader, commit_index: Slot(0), read_round: 3 };
    deliver(&mut voter, PEER_A, heartbeat.clone());
    // A TimeoutNow of a ballot this voter does not follow lets nothing go.
    let other = Message::TimeoutNow { ballot: Ballot::new(0, PEER_B), to: PEER_B };
    deliver(&mut voter, PEER_B, other);
    let prepare = Message::Prepare { ballot: Ballot::new(2, PEER_B), from_slot: Slot(0) };
    let refused = deliver(&mut voter, PEER_B, prepare.clone());
    assert!(!refused.iter().any(|a| matches!(a, Action::Persist { .. })), "{refused:?}");
    // The leader lets go (it answers no lease read any more, protocol.md §3.10); its later
    // heartbeats do not make the voter sticky again.
    deliver(&mut voter, PEER_A, Message::TimeoutNow { ballot: leader, to: PEER_B });
    deliver(&mut voter, PEER_A, heartbeat);
    let answer = deliver(&mut voter, PEER_B, prepare);
    assert!(answer.iter().any(|a| matches!(a, Action::Persist { .. })), "{answer:?}");
}

#[test]
fn a_leader_handing_over_answers_no_lease_read_for_the_rest_of_its_ballot() {
    let (mut leader, ballot) = leader_holding_a_lease();
    leader.transfer_leadership(PEER_A).unwrap();
    assert!(!leader.holds_lease(), "a voter let go may help elect the successor at once");
    assert_eq!(leader.read(id(1), Consistency::Lease, Slot(0)), Ok(ReadPath::Round));
    // The successor never takes over: the transfer is given up, the lease stays gone.
    for _ in 0..3 * config(ME, true).election_timeout_ticks {
        leader.on_tick();
        let sent = actions(&mut leader);
        ack_rounds(&mut leader, ballot, &sent);
    }
    assert_eq!(leader.role(), RoleKind::Leader);
    assert_eq!(leader.transferring_to(), None);
    assert!(!leader.holds_lease(), "no lease again in this ballot");
}
