//! Scenario tests: one replica driven by hand, one protocol rule each, asserting the exact
//! actions it produces. The rule numbers are those of docs/protocol.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches may unwrap.

use quorum::core::{
    Action, Ballot, BatchBuilder, ClusterId, Config, Envelope, Message, NodeId, PersistSeq,
    ProposeError, Record, Replica, RequestId, RoleKind, Slot, SlotRun, Value,
};

const CLUSTER: ClusterId = ClusterId(9);
const ME: NodeId = NodeId(1);
const PEER_A: NodeId = NodeId(2);
const PEER_B: NodeId = NodeId(3);

fn config(node: NodeId) -> Config {
    let mut config = Config::new(CLUSTER, node, vec![ME, PEER_A, PEER_B]);
    config.pipeline_depth_max = 2;
    config.batch_commands_max = 2;
    config.message_runs_max = 2;
    config
}

fn replica() -> Replica {
    Replica::new(config(ME)).unwrap()
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

/// A batch of one command whose payload is `bytes`: the same bytes give the same batch. (A
/// batch is checked to parse where it enters: protocol.md §2.1.)
fn batch(bytes: &'static [u8]) -> Value {
    let mut builder = BatchBuilder::new(1 << 10);
    builder.push(RequestId { client: 1, sequence: 1 }, bytes);
    Value::Batch(builder.take())
}

fn id(sequence: u64) -> RequestId {
    RequestId { client: 5, sequence }
}

/// Completes every persist in `actions` and delivers replies addressed to the replica itself;
/// returns the replies to others and any further actions.
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

/// Delivers a message and completes the persists it causes.
fn deliver_durably(replica: &mut Replica, from: NodeId, message: Message) -> Vec<Action> {
    let out = deliver(replica, from, message);
    persist_all(replica, out)
}

/// Ticks until the replica pre-votes, grants it, completes phase 1 with an empty promise from
/// one peer, and returns the replica as leader.
fn elect(replica: &mut Replica) -> Ballot {
    while replica.role() != RoleKind::Candidate {
        replica.on_tick();
    }
    let probes = actions(replica);
    let round = match &probes[0] {
        Action::Send { message: Message::Probe { round, .. }, .. } => *round,
        other => panic!("expected a probe, got {other:?}"),
    };
    let after_grant = deliver(
        replica,
        PEER_A,
        Message::ProbeReply { round, granted: true, promised: Ballot::ZERO },
    );
    let ballot = Ballot::new(round, ME);
    let after_own_promise = persist_all(replica, after_grant);
    assert!(
        after_own_promise
            .iter()
            .all(|a| matches!(a, Action::Send { message: Message::Prepare { .. }, .. }))
    );
    let promise = Message::Promise { ballot, from_slot: Slot(0), runs: vec![], next_slot: None };
    let became = deliver(replica, PEER_A, promise);
    assert_eq!(replica.role(), RoleKind::Leader);
    persist_all(replica, became);
    ballot
}

#[test]
fn accept_below_promised_ballot_is_rejected() {
    let mut replica = replica();
    let high = Ballot::new(5, PEER_B);
    deliver(&mut replica, PEER_B, Message::Prepare { ballot: high, from_slot: Slot(0) });
    let low = Ballot::new(4, PEER_A);
    let accept = Message::Accept {
        ballot: low,
        first_slot: Slot(0),
        count: 1,
        value: batch(b"x"),
        commit_index: Slot(0),
    };
    let out = deliver(&mut replica, PEER_A, accept);
    assert_eq!(
        out,
        vec![Action::Send {
            to: PEER_A,
            message: Message::Rejected { ballot: low, promised: high }
        }]
    );
    assert!(replica.log().get(Slot(0)).is_none(), "a rejected accept leaves no trace");
}

#[test]
fn promise_is_sent_only_after_the_promise_is_durable() {
    let mut replica = replica();
    let ballot = Ballot::new(3, PEER_A);
    let out = deliver(&mut replica, PEER_A, Message::Prepare { ballot, from_slot: Slot(0) });
    let promise = Message::Promise { ballot, from_slot: Slot(0), runs: vec![], next_slot: None };
    assert_eq!(
        out,
        vec![Action::Persist {
            seq: PersistSeq(1),
            record: Record::Promised { ballot },
            then_send: Some((PEER_A, promise))
        }]
    );
}

#[test]
fn accepted_is_sent_only_after_the_acceptance_is_durable() {
    let mut replica = replica();
    let ballot = Ballot::new(2, PEER_A);
    let value = batch(b"cmd");
    let accept = Message::Accept {
        ballot,
        first_slot: Slot(0),
        count: 1,
        value: value.clone(),
        commit_index: Slot(0),
    };
    let out = deliver(&mut replica, PEER_A, accept);
    assert_eq!(
        out,
        vec![Action::Persist {
            seq: PersistSeq(1),
            record: Record::Accepted { ballot, first_slot: Slot(0), count: 1, value },
            then_send: Some((PEER_A, Message::Accepted { ballot, first_slot: Slot(0), count: 1 })),
        }]
    );
}

#[test]
fn prepare_reports_accepted_values_in_bounded_parts() {
    let mut replica = replica();
    let old = Ballot::new(2, PEER_A);
    for slot in 0..3 {
        let value = batch(b"v");
        let accept = Message::Accept {
            ballot: old,
            first_slot: Slot(slot),
            count: 1,
            value,
            commit_index: Slot(0),
        };
        deliver_durably(&mut replica, PEER_A, accept);
    }
    let ballot = Ballot::new(3, PEER_B);
    let out =
        deliver_durably(&mut replica, PEER_B, Message::Prepare { ballot, from_slot: Slot(0) });
    let run = |slot| SlotRun {
        first_slot: Slot(slot),
        count: 1,
        ballot: old,
        value: batch(b"v"),
        chosen: false,
    };
    let first_part = Message::Promise {
        ballot,
        from_slot: Slot(0),
        runs: vec![run(0), run(1)],
        next_slot: Some(Slot(2)),
    };
    assert_eq!(out, vec![Action::Send { to: PEER_B, message: first_part }]);
    // The rest is asked for and sent at once: the promise is already durable.
    let out = deliver(&mut replica, PEER_B, Message::Prepare { ballot, from_slot: Slot(2) });
    let last_part =
        Message::Promise { ballot, from_slot: Slot(2), runs: vec![run(2)], next_slot: None };
    assert_eq!(out, vec![Action::Send { to: PEER_B, message: last_part }]);
}

#[test]
fn leader_commits_only_after_its_own_persist_and_a_majority() {
    let mut replica = replica();
    let ballot = elect(&mut replica);
    replica.propose(id(1), b"a").unwrap();
    replica.flush();
    let out = actions(&mut replica);
    let value = match &out[0] {
        Action::Send { message: Message::Accept { value, .. }, .. } => value.clone(),
        other => panic!("expected an accept, got {other:?}"),
    };
    let accept = Message::Accept {
        ballot,
        first_slot: Slot(0),
        count: 1,
        value: value.clone(),
        commit_index: Slot(0),
    };
    assert_eq!(out[0], Action::Send { to: PEER_A, message: accept.clone() });
    assert_eq!(out[1], Action::Send { to: PEER_B, message: accept });
    let own_ack = Message::Accepted { ballot, first_slot: Slot(0), count: 1 };
    assert!(
        matches!(&out[2], Action::Persist { then_send: Some((ME, ack)), .. } if *ack == own_ack)
    );
    // A follower's durable ack alone is not a majority: the leader's own acceptance is not
    // durable yet, so it does not count (I4).
    let out =
        deliver(&mut replica, PEER_A, Message::Accepted { ballot, first_slot: Slot(0), count: 1 });
    assert!(out.is_empty(), "committed before the leader's own persist: {out:?}");
    // Once the leader's own persist completes, its acceptance counts, and the slot commits.
    let out = deliver(&mut replica, ME, own_ack);
    assert_eq!(out, vec![Action::Commit { first_slot: Slot(0), count: 1, value }]);
}

#[test]
fn acceptances_from_another_ballot_do_not_count() {
    let mut replica = replica();
    let ballot = elect(&mut replica);
    replica.propose(id(1), b"a").unwrap();
    replica.flush();
    let produced = actions(&mut replica);
    persist_all(&mut replica, produced);
    let stale = Ballot::new(ballot.round - 1, ME);
    let out = deliver(
        &mut replica,
        PEER_A,
        Message::Accepted { ballot: stale, first_slot: Slot(0), count: 1 },
    );
    assert!(out.is_empty(), "an acceptance under {stale} counted towards {ballot}");
    let out =
        deliver(&mut replica, PEER_A, Message::Accepted { ballot, first_slot: Slot(0), count: 1 });
    assert!(matches!(out.as_slice(), [Action::Commit { first_slot: Slot(0), .. }]));
}

#[test]
fn phase_one_recovers_the_highest_ballot_value_and_fills_holes_with_noops() {
    let mut replica = replica();
    // Our own acceptor holds "old" at slot 0 under ballot 1.2.
    let ours = Ballot::new(1, PEER_A);
    let accept = Message::Accept {
        ballot: ours,
        first_slot: Slot(0),
        count: 1,
        value: batch(b"old"),
        commit_index: Slot(0),
    };
    deliver_durably(&mut replica, PEER_A, accept);
    while replica.role() != RoleKind::Candidate {
        replica.on_tick();
    }
    let round = match &actions(&mut replica)[0] {
        Action::Send { message: Message::Probe { round, .. }, .. } => *round,
        other => panic!("expected a probe, got {other:?}"),
    };
    deliver_durably(
        &mut replica,
        PEER_A,
        Message::ProbeReply { round, granted: true, promised: ours },
    );
    let ballot = Ballot::new(round, ME);
    // A peer accepted "newer" at slot 0 under the higher ballot 1.3, and "two" at slot 2.
    let theirs = Ballot::new(1, PEER_B);
    let run = |slot, value| SlotRun {
        first_slot: Slot(slot),
        count: 1,
        ballot: theirs,
        value,
        chosen: false,
    };
    let promise = Message::Promise {
        ballot,
        from_slot: Slot(0),
        runs: vec![run(0, batch(b"newer")), run(2, batch(b"two"))],
        next_slot: None,
    };
    let out = deliver(&mut replica, PEER_B, promise);
    assert_eq!(replica.leader_ballot(), Some(ballot));
    let accepts: Vec<(Slot, u64, Value)> = out
        .iter()
        .filter_map(|action| match action {
            Action::Send { to, message: Message::Accept { first_slot, count, value, .. } }
                if *to == PEER_A =>
            {
                Some((*first_slot, *count, value.clone()))
            }
            _ => None,
        })
        .collect();
    // The pipeline holds two runs: slot 2 follows once one of these is chosen.
    assert_eq!(accepts, vec![(Slot(0), 1, batch(b"newer")), (Slot(1), 1, Value::Noop)]);
}

#[test]
fn probe_is_refused_while_a_live_leader_is_heard() {
    let mut replica = replica();
    let leader = Ballot::new(1, PEER_A);
    deliver(
        &mut replica,
        PEER_A,
        Message::Heartbeat { ballot: leader, commit_index: Slot(0), read_round: 0 },
    );
    let out = deliver(&mut replica, PEER_B, Message::Probe { round: 2, commit_index: Slot(0) });
    let refusal = Message::ProbeReply { round: 2, granted: false, promised: leader };
    assert_eq!(out, vec![Action::Send { to: PEER_B, message: refusal }]);
}

#[test]
fn probe_is_granted_once_the_leader_is_silent_for_an_election_timeout() {
    let mut replica = replica();
    let leader = Ballot::new(1, PEER_A);
    deliver(
        &mut replica,
        PEER_A,
        Message::Heartbeat { ballot: leader, commit_index: Slot(0), read_round: 0 },
    );
    for _ in 0..replica.config().election_timeout_ticks {
        replica.on_tick();
    }
    actions(&mut replica);
    let out = deliver(&mut replica, PEER_B, Message::Probe { round: 2, commit_index: Slot(0) });
    assert!(matches!(
        &out[..],
        [Action::Send { message: Message::ProbeReply { granted: true, .. }, .. }]
    ));
}

#[test]
fn learner_never_votes() {
    let mut config = config(NodeId(4));
    config.learners = vec![NodeId(4)];
    let mut learner = Replica::new(config).unwrap();
    let ballot = Ballot::new(1, PEER_A);
    assert!(
        deliver(&mut learner, PEER_A, Message::Prepare { ballot, from_slot: Slot(0) }).is_empty()
    );
    let accept = Message::Accept {
        ballot,
        first_slot: Slot(0),
        count: 1,
        value: batch(b"x"),
        commit_index: Slot(0),
    };
    assert!(deliver(&mut learner, PEER_A, accept).is_empty());
    assert!(
        deliver(&mut learner, PEER_A, Message::Probe { round: 1, commit_index: Slot(0) })
            .is_empty()
    );
    for _ in 0..1_000 {
        learner.on_tick();
    }
    assert_eq!(learner.role(), RoleKind::Learner);
    let out = actions(&mut learner);
    assert!(!out.is_empty(), "a learner keeps its subscription alive");
    assert!(
        out.iter().all(|a| matches!(a, Action::Send { message: Message::Subscribe { .. }, .. })),
        "a learner never stands for election: {out:?}"
    );
}

fn learner(node: NodeId, upstream: Option<NodeId>) -> Replica {
    let mut config = config(node);
    config.learners = vec![NodeId(4), NodeId(5)];
    config.upstream = upstream;
    Replica::new(config).unwrap()
}

fn chosen_run(slot: u64, value: Value) -> SlotRun {
    SlotRun { first_slot: Slot(slot), count: 1, ballot: Ballot::ZERO, value, chosen: true }
}

/// The nodes `actions` sends `Subscribe` to, with the positions.
fn subscribes(actions: &[Action]) -> Vec<(NodeId, u64)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send { to, message: Message::Subscribe { from_slot } } => {
                Some((*to, from_slot.0))
            }
            _ => None,
        })
        .collect()
}

/// The slots of the chosen runs `actions` sends to `to`.
fn chosen_slots_to(actions: &[Action], to: NodeId) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send { to: dest, message: Message::Chosen { runs, .. } } if *dest == to => {
                Some(runs.iter().map(|run| run.first_slot.0).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn learner_subscribes_to_a_follower_not_the_leader() {
    let mut learner = learner(NodeId(4), None);
    // Node 1 (the first voter) leads: the learner passes over it.
    let heartbeat =
        Message::Heartbeat { ballot: Ballot::new(1, ME), commit_index: Slot(0), read_round: 0 };
    deliver(&mut learner, ME, heartbeat);
    learner.on_tick();
    assert_eq!(subscribes(&actions(&mut learner)), vec![(PEER_A, 0)]);
}

#[test]
fn learner_moves_on_when_its_source_brings_no_progress() {
    let mut learner = learner(NodeId(4), None);
    // The leader (node 3) says slot 0 is committed; the learner subscribes to node 1, which
    // never sends it.
    let heartbeat =
        Message::Heartbeat { ballot: Ballot::new(1, PEER_B), commit_index: Slot(1), read_round: 0 };
    deliver(&mut learner, PEER_B, heartbeat);
    learner.on_tick();
    assert_eq!(subscribes(&actions(&mut learner)), vec![(ME, 0)]);
    let mut sent = Vec::new();
    for _ in 0..=config(NodeId(4)).election_timeout_ticks {
        learner.on_tick();
        sent.extend(subscribes(&actions(&mut learner)));
    }
    assert!(sent.iter().all(|(to, _)| *to == ME || *to == PEER_A), "{sent:?}");
    assert_eq!(sent.last(), Some(&(PEER_A, 0)), "moved to the next follower: {sent:?}");
}

#[test]
fn learner_that_hears_no_leader_subscribes_after_an_election_timeout() {
    let mut learner = learner(NodeId(4), None);
    let timeout = config(NodeId(4)).election_timeout_ticks;
    for _ in 0..timeout {
        learner.on_tick();
    }
    assert!(subscribes(&actions(&mut learner)).is_empty(), "waits to hear who leads");
    learner.on_tick();
    assert_eq!(subscribes(&actions(&mut learner)), vec![(ME, 0)]);
}

#[test]
fn a_relay_feeds_its_subscriber_within_a_window_and_resends_what_was_lost() {
    let relay_id = NodeId(4);
    let leaf_id = NodeId(5);
    let mut relay = learner(relay_id, None);
    let mut leaf = learner(leaf_id, Some(relay_id));
    leaf.on_tick();
    assert_eq!(subscribes(&actions(&mut leaf)), vec![(relay_id, 0)], "upstream first");

    let runs = vec![chosen_run(0, batch(b"a")), chosen_run(1, batch(b"b"))];
    deliver(&mut relay, PEER_A, Message::Chosen { runs, commit_index: Slot(2) });
    let out = deliver(&mut relay, leaf_id, Message::Subscribe { from_slot: Slot(0) });
    assert_eq!(chosen_slots_to(&out, leaf_id), vec![0, 1]);
    // Newly committed slots go to the subscriber as they commit, and only once.
    let out = deliver(
        &mut relay,
        PEER_A,
        Message::Chosen { runs: vec![chosen_run(2, batch(b"c"))], commit_index: Slot(3) },
    );
    assert_eq!(chosen_slots_to(&out, leaf_id), vec![2]);
    // The leaf reports 0 again: everything sent since was lost, and goes again.
    let out = deliver(&mut relay, leaf_id, Message::Subscribe { from_slot: Slot(0) });
    assert_eq!(chosen_slots_to(&out, leaf_id), vec![0, 1, 2]);

    // What the relay sends (in messages of at most two runs), the leaf commits in order.
    let mut commits = 0;
    for action in out {
        if let Action::Send { to, message } = action {
            if to == leaf_id {
                commits += deliver(&mut leaf, relay_id, message)
                    .iter()
                    .filter(|a| matches!(a, Action::Commit { .. }))
                    .count();
            }
        }
    }
    assert_eq!((commits, leaf.commit_index()), (3, Slot(3)));
}

#[test]
fn a_leader_does_not_push_to_learners_and_an_idle_leader_skips_to_its_target() {
    let mut config = config(ME);
    config.learners = vec![NodeId(4)];
    let mut leader = Replica::new(config).unwrap();
    let ballot = elect(&mut leader);
    assert_eq!(leader.skip_to(Slot(0)), None, "nothing to skip");
    assert_eq!(leader.skip_to(Slot(5)), Some(Slot(0)));
    let out = actions(&mut leader);
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Send {
            message: Message::Accept { first_slot: Slot(0), count: 5, value: Value::Noop, .. },
            ..
        }
    )));
    let out = persist_all(&mut leader, out);
    let accepted = Message::Accepted { ballot, first_slot: Slot(0), count: 5 };
    let out = [out, deliver_durably(&mut leader, PEER_A, accepted)].concat();
    assert_eq!(leader.commit_index(), Slot(5));
    assert!(chosen_slots_to(&out, NodeId(4)).is_empty(), "learners are fed by subscription");
    // With a command waiting, the leader proposes it rather than a skip.
    leader.propose(id(1), b"x").unwrap();
    assert_eq!(leader.skip_to(Slot(9)), None);
}

#[test]
fn learner_applies_chosen_values_in_order() {
    let mut config = config(NodeId(4));
    config.learners = vec![NodeId(4)];
    let mut learner = Replica::new(config).unwrap();
    let run = |slot, value| SlotRun {
        first_slot: Slot(slot),
        count: 1,
        ballot: Ballot::ZERO,
        value,
        chosen: true,
    };
    // Slot 1 arrives before slot 0: nothing commits until the gap is filled.
    let out = deliver(
        &mut learner,
        PEER_A,
        Message::Chosen { runs: vec![run(1, batch(b"b"))], commit_index: Slot(2) },
    );
    assert!(out.iter().all(|action| !matches!(action, Action::Commit { .. })));
    let out = deliver(
        &mut learner,
        PEER_A,
        Message::Chosen { runs: vec![run(0, batch(b"a"))], commit_index: Slot(2) },
    );
    let commits: Vec<&Action> =
        out.iter().filter(|action| matches!(action, Action::Commit { .. })).collect();
    assert_eq!(
        commits,
        vec![
            &Action::Commit { first_slot: Slot(0), count: 1, value: batch(b"a") },
            &Action::Commit { first_slot: Slot(1), count: 1, value: batch(b"b") },
        ]
    );
}

#[test]
fn full_pipeline_and_full_batch_answer_busy() {
    let mut replica = replica();
    elect(&mut replica);
    // Two runs in flight (pipeline_depth_max = 2), then a full open batch of two commands.
    for sequence in 1..=2 {
        replica.propose(id(sequence), b"x").unwrap();
        replica.flush();
    }
    replica.propose(id(3), b"x").unwrap();
    replica.propose(id(4), b"x").unwrap();
    assert_eq!(replica.propose(id(5), b"x"), Err(ProposeError::Busy));
}

#[test]
fn follower_redirects_proposals_to_the_leader_it_hears() {
    let mut replica = replica();
    deliver(
        &mut replica,
        PEER_B,
        Message::Heartbeat { ballot: Ballot::new(1, PEER_B), commit_index: Slot(0), read_round: 0 },
    );
    assert_eq!(replica.propose(id(1), b"x"), Err(ProposeError::NotLeader { hint: Some(PEER_B) }));
}

#[test]
fn oversized_command_is_refused() {
    let mut replica = replica();
    elect(&mut replica);
    let huge = vec![0u8; replica.config().batch_bytes_max];
    assert!(matches!(replica.propose(id(1), &huge), Err(ProposeError::TooLarge { .. })));
}

#[test]
fn commit_position_commits_only_slots_accepted_in_the_leaders_ballot() {
    let mut replica = replica();
    let old = Ballot::new(1, PEER_A);
    let new = Ballot::new(2, PEER_B);
    let accept = |ballot, slot| Message::Accept {
        ballot,
        first_slot: Slot(slot),
        count: 1,
        value: batch(b"v"),
        commit_index: Slot(0),
    };
    deliver_durably(&mut replica, PEER_A, accept(old, 0));
    deliver_durably(&mut replica, PEER_B, accept(new, 1));
    // The new leader says slots 0 and 1 are chosen. Slot 0 was accepted under another ballot,
    // so its chosen value may differ: it must be fetched, and nothing commits yet.
    let out = deliver(
        &mut replica,
        PEER_B,
        Message::Heartbeat { ballot: new, commit_index: Slot(2), read_round: 0 },
    );
    assert!(out.iter().all(|action| !matches!(action, Action::Commit { .. })));
    assert!(out.contains(&Action::Send {
        to: PEER_B,
        message: Message::CatchUpRequest { from_slot: Slot(0) }
    }));
}

#[test]
fn catch_up_is_answered_with_bounded_chosen_runs() {
    let mut replica = replica();
    elect(&mut replica);
    for sequence in 1..=3 {
        replica.propose(id(sequence), b"x").unwrap();
        replica.flush();
        let produced = actions(&mut replica);
        let out = persist_all(&mut replica, produced);
        let (ballot, first_slot) = out
            .iter()
            .find_map(|action| match action {
                Action::Send { message: Message::Accept { ballot, first_slot, .. }, .. } => {
                    Some((*ballot, *first_slot))
                }
                _ => None,
            })
            .unwrap();
        deliver(&mut replica, PEER_A, Message::Accepted { ballot, first_slot, count: 1 });
    }
    assert_eq!(replica.commit_index(), Slot(3));
    let out = deliver(&mut replica, PEER_B, Message::CatchUpRequest { from_slot: Slot(0) });
    match &out[..] {
        [Action::Send { to, message: Message::Chosen { runs, commit_index } }] => {
            assert_eq!(*to, PEER_B);
            assert_eq!(runs.len(), 2, "message_runs_max bounds the reply");
            assert!(runs.iter().all(|run| run.chosen));
            assert_eq!(*commit_index, Slot(3));
        }
        other => panic!("expected one Chosen reply, got {other:?}"),
    }
}

#[test]
fn message_from_another_cluster_is_refused_and_changes_nothing() {
    let mut replica = replica();
    let envelope = Envelope {
        cluster_id: ClusterId(77),
        from: PEER_A,
        message: Message::Prepare { ballot: Ballot::new(9, PEER_A), from_slot: Slot(0) },
    };
    assert!(replica.on_message(envelope).is_err());
    assert_eq!(replica.promised(), Ballot::ZERO);
    assert!(actions(&mut replica).is_empty());
}

#[test]
fn skip_commits_one_noop_run_over_its_slots() {
    let mut replica = replica();
    let ballot = elect(&mut replica);
    let first_slot = replica.propose_skip(10).unwrap();
    let produced = actions(&mut replica);
    let out = persist_all(&mut replica, produced);
    assert!(out.contains(&Action::Send {
        to: PEER_A,
        message: Message::Accept {
            ballot,
            first_slot,
            count: 10,
            value: Value::Noop,
            commit_index: Slot(0)
        }
    }));
    let out = deliver(&mut replica, PEER_B, Message::Accepted { ballot, first_slot, count: 10 });
    assert_eq!(out, vec![Action::Commit { first_slot, count: 10, value: Value::Noop }]);
    assert_eq!(replica.commit_index(), Slot(10));
}

#[test]
fn restart_restores_the_promise_and_the_accepted_values() {
    let ballot = Ballot::new(4, PEER_A);
    let records = [
        Record::Promised { ballot: Ballot::new(2, PEER_B) },
        Record::Accepted { ballot, first_slot: Slot(0), count: 1, value: batch(b"kept") },
    ];
    let mut replica = Replica::restore(config(ME), &records).unwrap();
    assert_eq!(replica.promised(), ballot);
    let lower = Ballot::new(3, PEER_B);
    let out = deliver(&mut replica, PEER_B, Message::Prepare { ballot: lower, from_slot: Slot(0) });
    assert_eq!(
        out,
        vec![Action::Send {
            to: PEER_B,
            message: Message::Rejected { ballot: lower, promised: ballot }
        }]
    );
}

#[test]
fn restart_commits_again_what_it_had_committed() {
    let ballot = Ballot::new(4, PEER_A);
    let records = [
        Record::Accepted { ballot, first_slot: Slot(0), count: 1, value: batch(b"a") },
        Record::Chosen { first_slot: Slot(1), count: 1, value: batch(b"b") },
        Record::Committed { commit_index: Slot(2) },
    ];
    let mut replica = Replica::restore(config(ME), &records).unwrap();
    assert_eq!(
        actions(&mut replica),
        vec![
            Action::Commit { first_slot: Slot(0), count: 1, value: batch(b"a") },
            Action::Commit { first_slot: Slot(1), count: 1, value: batch(b"b") },
        ]
    );
}

#[test]
fn invalid_configuration_is_refused_with_a_reason() {
    let mut bad = config(ME);
    bad.election_timeout_ticks = bad.heartbeat_interval_ticks;
    let error = Replica::new(bad).unwrap_err();
    assert!(error.to_string().contains("election_timeout_ticks"), "{error}");
    let mut bad = config(NodeId(9));
    bad.learners.clear();
    assert!(Replica::new(bad).unwrap_err().to_string().contains("neither a voter nor a learner"));
}

#[test]
fn a_late_accept_from_an_older_ballot_does_not_change_a_chosen_slot() {
    let mut replica = replica();
    // Learned by catch-up: slot 0 is chosen as a no-op, under ballot 8.2.
    let chosen = SlotRun {
        first_slot: Slot(0),
        count: 1,
        ballot: Ballot::new(8, PEER_A),
        value: Value::Noop,
        chosen: true,
    };
    deliver_durably(
        &mut replica,
        PEER_A,
        Message::Chosen { runs: vec![chosen], commit_index: Slot(1) },
    );
    assert_eq!(replica.commit_index(), Slot(1));
    // A batch proposed at slot 0 under the older ballot 7.3 arrives late: the old leader lost
    // the slot before anything was chosen there. The replica never promised above 7.3, so it
    // may accept; the chosen no-op stays.
    let old = Ballot::new(7, PEER_B);
    let accept = Message::Accept {
        ballot: old,
        first_slot: Slot(0),
        count: 1,
        value: batch(b"late"),
        commit_index: Slot(0),
    };
    deliver_durably(&mut replica, PEER_B, accept);
    let entry = replica.log().get(Slot(0)).unwrap();
    assert_eq!(entry.value, Some(Value::Noop));
    assert!(entry.chosen);
}

/// The `TimeoutNow` messages among `actions`, by recipient.
fn timeouts_now(actions: &[Action]) -> Vec<(NodeId, Ballot, NodeId)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send { to, message: Message::TimeoutNow { ballot, to: target } } => {
                Some((*to, *ballot, *target))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_transferring_leader_takes_no_proposal_and_lets_go_once_its_proposals_are_chosen() {
    let mut replica = replica();
    let ballot = elect(&mut replica);
    replica.propose(id(1), b"before").unwrap();
    replica.flush();
    let sent = actions(&mut replica);
    let out = persist_all(&mut replica, sent);
    let first_slot = out
        .iter()
        .find_map(|action| match action {
            Action::Send { message: Message::Accept { first_slot, .. }, .. } => Some(*first_slot),
            _ => None,
        })
        .expect("the proposal went out");
    assert_eq!(replica.transfer_leadership(ME), Err(quorum::core::TransferError::ToSelf));
    assert_eq!(
        replica.transfer_leadership(NodeId(9)),
        Err(quorum::core::TransferError::NotAVoter(NodeId(9)))
    );
    replica.transfer_leadership(PEER_A).unwrap();
    assert_eq!(replica.transferring_to(), Some(PEER_A));
    assert_eq!(
        replica.transfer_leadership(PEER_B),
        Err(quorum::core::TransferError::UnderWay(PEER_A))
    );
    assert_eq!(
        replica.propose(id(2), b"after"),
        Err(ProposeError::NotLeader { hint: Some(PEER_A) }),
        "new proposals are redirected to the successor"
    );
    assert!(timeouts_now(&actions(&mut replica)).is_empty(), "a proposal is still in flight");
    let out = deliver(&mut replica, PEER_B, Message::Accepted { ballot, first_slot, count: 1 });
    assert_eq!(
        timeouts_now(&out),
        vec![(PEER_A, ballot, PEER_A), (PEER_B, ballot, PEER_A)],
        "every voter is let go once everything proposed is chosen"
    );
    assert!(!replica.holds_lease());
}

#[test]
fn a_transfer_not_taken_up_within_an_election_timeout_is_given_up() {
    let mut replica = replica();
    elect(&mut replica);
    replica.transfer_leadership(PEER_A).unwrap();
    let out = actions(&mut replica);
    assert_eq!(timeouts_now(&out).len(), 2, "nothing was in flight: let go at once");
    // The peers keep answering heartbeats (so check-quorum holds) but nobody takes over.
    for _ in 0..config(ME).election_timeout_ticks {
        replica.on_tick();
        for action in actions(&mut replica) {
            if let Action::Send { to, message: Message::Heartbeat { ballot, read_round, .. } } =
                action
            {
                deliver(&mut replica, to, Message::HeartbeatAck { ballot, read_round });
            }
        }
    }
    assert_eq!(replica.role(), RoleKind::Leader);
    assert_eq!(replica.transferring_to(), None);
    replica.propose(id(1), b"again").unwrap();
}

#[test]
fn the_successor_stands_at_once_and_a_voter_lets_go_only_of_the_leader_it_follows() {
    let leader = Ballot::new(3, PEER_B);
    let heartbeat = Message::Heartbeat { ballot: leader, commit_index: Slot(0), read_round: 0 };
    // The successor: a prepare of a higher round at once, no pre-vote.
    let mut successor = replica();
    deliver_durably(&mut successor, PEER_B, heartbeat.clone());
    let out = deliver(&mut successor, PEER_B, Message::TimeoutNow { ballot: leader, to: ME });
    assert_eq!(successor.role(), RoleKind::Candidate);
    let prepares: Vec<Ballot> = out
        .iter()
        .filter_map(|action| match action {
            Action::Send { message: Message::Prepare { ballot, .. }, .. } => Some(*ballot),
            _ => None,
        })
        .collect();
    assert_eq!(prepares, vec![Ballot::new(4, ME); 2], "phase 1 at once, above the leader");
    // A late TimeoutNow of an older leader changes nothing.
    let mut voter = replica();
    deliver_durably(&mut voter, PEER_B, heartbeat);
    let old = Ballot::new(2, PEER_A);
    assert!(deliver(&mut voter, PEER_A, Message::TimeoutNow { ballot: old, to: ME }).is_empty());
    assert_eq!(voter.role(), RoleKind::Follower);
}
