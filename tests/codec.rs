//! The wire codec: every message round-trips, or is refused for the reason `Message::validate`
//! gives (a value out of range, a batch that does not parse); batches come out as slices of the
//! received frame (no copy); arbitrary, truncated or oversized input is refused, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use bytes::Bytes;
use proptest::prelude::*;
use quorum::core::RoleKind;
use quorum::core::{
    Ballot, BatchBuilder, ClusterId, Consistency, Message, NodeId, ROUND_MAX, ReadOptions,
    RequestId, SLOT_MAX, Slot, SlotRun, Value,
};
use quorum::machine::{SessionLimits, StateSummary};
use quorum::transport::codec::{
    Body, Encoder, Frame, FrameError, Hello, HelloReply, Member, PREFIX_BYTES, Reply, ReplyStatus,
    Requests, Role, ShardStatus, decode, frame_length,
};
use quorum::transport::framing::Outgoing;

/// Mostly at most `max` (the messages that decode), sometimes any number (those refused).
fn mostly_up_to(max: u64) -> impl Strategy<Value = u64> + Clone {
    prop_oneof![3 => 0..=max, 1 => any::<u64>()]
}

fn ballot() -> impl Strategy<Value = Ballot> {
    (mostly_up_to(ROUND_MAX), any::<u16>())
        .prop_map(|(round, node)| Ballot::new(round, NodeId(node)))
}

fn value() -> impl Strategy<Value = Value> {
    let command = (any::<u64>(), any::<u64>(), prop::collection::vec(any::<u8>(), 0..40));
    prop_oneof![
        Just(Value::Noop),
        prop::collection::vec(command, 0..5).prop_map(|commands| {
            let mut builder = BatchBuilder::new(1 << 20);
            for (client, sequence, payload) in &commands {
                builder.push(RequestId { client: *client, sequence: *sequence }, payload);
            }
            Value::Batch(builder.take())
        }),
        // Mostly not a batch that parses.
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| Value::Batch(Bytes::from(b)))
    ]
}

fn run() -> impl Strategy<Value = SlotRun> {
    (mostly_up_to(SLOT_MAX.0 - 1000), 1u64..1000, ballot(), value(), any::<bool>()).prop_map(
        |(first, count, ballot, value, chosen)| {
            let count = if value.is_noop() { count } else { 1 };
            SlotRun { first_slot: Slot(first), count, ballot, value, chosen }
        },
    )
}

/// Runs, mostly in slot order and apart (as every sender reads them from a log).
fn runs() -> impl Strategy<Value = Vec<SlotRun>> {
    (prop::collection::vec(run(), 0..6), any::<bool>(), any::<bool>()).prop_map(
        |(mut runs, sort, disjoint)| {
            if sort {
                runs.sort_by_key(|run| run.first_slot);
            }
            if sort && disjoint {
                runs.dedup_by(|later, earlier| later.first_slot < earlier.end_slot());
            }
            runs
        },
    )
}

fn message() -> impl Strategy<Value = Message> {
    let slot = mostly_up_to(SLOT_MAX.0).prop_map(Slot);
    prop_oneof![
        (mostly_up_to(ROUND_MAX), slot.clone())
            .prop_map(|(round, commit_index)| Message::Probe { round, commit_index }),
        (mostly_up_to(ROUND_MAX), any::<bool>(), ballot()).prop_map(
            |(round, granted, promised)| { Message::ProbeReply { round, granted, promised } }
        ),
        (ballot(), slot.clone())
            .prop_map(|(ballot, from_slot)| Message::Prepare { ballot, from_slot }),
        (ballot(), slot.clone(), runs(), prop::option::of(slot.clone())).prop_map(
            |(ballot, from_slot, runs, next_slot)| Message::Promise {
                ballot,
                from_slot,
                runs,
                next_slot
            }
        ),
        (ballot(), slot.clone(), 1u64..100, value(), slot.clone()).prop_map(
            |(ballot, first_slot, count, value, commit_index)| {
                let count = if value.is_noop() { count } else { 1 };
                Message::Accept { ballot, first_slot, count, value, commit_index }
            }
        ),
        (ballot(), slot.clone(), mostly_up_to(1000)).prop_map(|(ballot, first_slot, count)| {
            Message::Accepted { ballot, first_slot, count }
        }),
        (ballot(), ballot()).prop_map(|(ballot, promised)| Message::Rejected { ballot, promised }),
        (ballot(), slot.clone(), any::<u64>()).prop_map(|(ballot, commit_index, read_round)| {
            Message::Heartbeat { ballot, commit_index, read_round }
        }),
        (ballot(), any::<u64>())
            .prop_map(|(ballot, read_round)| Message::HeartbeatAck { ballot, read_round }),
        slot.clone().prop_map(|from_slot| Message::CatchUpRequest { from_slot }),
        slot.clone().prop_map(|from_slot| Message::Subscribe { from_slot }),
        (runs(), slot.clone())
            .prop_map(|(runs, commit_index)| Message::Chosen { runs, commit_index }),
        (
            slot.clone(),
            0u64..1 << 40,
            prop::collection::vec(any::<u8>(), 0..300),
            0u64..1 << 20,
            slot.clone()
        )
            .prop_map(|(slot, offset, bytes, after, commit_index)| {
                let total = offset + bytes.len() as u64 + after;
                Message::Snapshot { slot, offset, total, bytes: Bytes::from(bytes), commit_index }
            }),
        (slot.clone(), any::<u64>())
            .prop_map(|(slot, offset)| Message::SnapshotPull { slot, offset }),
        any::<u64>().prop_map(|nonce| Message::ReadIndexRequest { nonce }),
        (any::<u64>(), prop::option::of(slot))
            .prop_map(|(nonce, read_index)| Message::ReadIndexReply { nonce, read_index }),
        (ballot(), any::<u16>())
            .prop_map(|(ballot, to)| Message::TimeoutNow { ballot, to: NodeId(to) }),
    ]
}

fn requests() -> impl Strategy<Value = Requests> {
    let consistency = prop_oneof![
        Just(Consistency::Linearizable),
        Just(Consistency::Lease),
        Just(Consistency::Follower),
        Just(Consistency::Stale),
    ];
    (
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from),
        consistency,
        0..=SLOT_MAX.0,
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(batch, consistency, from_slot, behind_slots_max, behind_ms_max)| {
            Requests {
                batch,
                read: ReadOptions {
                    consistency,
                    from_slot: Slot(from_slot),
                    behind_slots_max,
                    behind_ms_max,
                },
            }
        })
}

/// Splits an encoded frame into its length and body, as a reader would.
fn after_prefix(encoded: &[u8]) -> Bytes {
    let prefix: [u8; PREFIX_BYTES] = encoded[..PREFIX_BYTES].try_into().unwrap();
    let len = frame_length(prefix, 1 << 30).unwrap();
    assert_eq!(len, encoded.len() - PREFIX_BYTES, "the prefix counts the rest of the frame");
    Bytes::copy_from_slice(&encoded[PREFIX_BYTES..])
}

fn reply_status() -> impl Strategy<Value = ReplyStatus> {
    prop_oneof![
        Just(ReplyStatus::Applied),
        Just(ReplyStatus::Duplicate),
        Just(ReplyStatus::Expired),
        Just(ReplyStatus::SessionExpired),
        Just(ReplyStatus::Busy),
        Just(ReplyStatus::Rejected),
        Just(ReplyStatus::OutOfSpace),
        Just(ReplyStatus::TooStale),
        (1..u16::MAX).prop_map(|hint| ReplyStatus::NotLeader { hint: Some(NodeId(hint)) }),
        Just(ReplyStatus::NotLeader { hint: None }),
    ]
}

fn frame_body() -> impl Strategy<Value = Body> {
    let bytes = || prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from);
    let reply = (any::<u64>(), reply_status(), any::<u64>(), any::<u32>(), bytes()).prop_map(
        |(sequence, status, slot, index, body)| Reply {
            sequence,
            status,
            slot: Slot(slot),
            index,
            body,
        },
    );
    let member = (1..u16::MAX, "[a-z0-9.:]{1,20}", any::<bool>())
        .prop_map(|(id, address, learner)| Member { id: NodeId(id), address, learner });
    prop_oneof![
        7 => message().prop_map(Body::Peer),
        1 => (any::<u32>(), prop::option::of(any::<u64>())).prop_map(|(version, client)| {
            Body::Hello(Hello { version, role: client.map_or(Role::Peer, Role::Client) })
        }),
        1 => (
            prop::option::of("[ -~]{0,30}"),
            any::<u16>(),
            prop::option::of(1..u16::MAX),
            prop::collection::vec(member, 0..5)
        )
            .prop_map(|(refusal, shards, leader, members)| {
                Body::HelloReply(HelloReply {
                    refusal,
                    shards,
                    leader: leader.map(NodeId),
                    members,
                })
            }),
        1 => requests().prop_map(Body::Requests),
        1 => prop::collection::vec(reply, 0..6).prop_map(Body::Replies),
        1 => any::<bool>().prop_map(|digest| Body::StatusRequest { digest }),
        1 => (0..4u8, any::<u16>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(role, leader, commit, applied, entries, digest)| {
                let role =
                    [RoleKind::Follower, RoleKind::Candidate, RoleKind::Leader, RoleKind::Learner]
                        [role as usize];
                Body::Status(ShardStatus {
                    role,
                    leader: (leader != 0).then_some(NodeId(leader)),
                    commit_index: Slot(commit),
                    applied_commands: applied,
                    summary: StateSummary { entries, digest },
                    syncs: entries ^ digest,
                    not_durable: commit % 2 == 0,
                    voters: leader.rotate_left(3),
                    egress_bytes: commit ^ applied,
                    chosen_bytes: applied.rotate_left(7),
                    batches: commit.rotate_left(11),
                    promised: Ballot { round: applied, node: NodeId(leader) },
                    applied_index: Slot(commit / 2),
                    sessions: entries,
                    snapshot_slot: (digest != 0).then_some(Slot(digest)),
                    apply_total: applied % 3 == 0,
                    session_limits: (entries % 2 == 0).then_some(SessionLimits {
                        replies_max: (leader as usize) + 1,
                        reply_bytes_max: 1 << 20,
                        sessions_max: 7,
                        idle_commands_min: commit | 1,
                        evicted_max: 9,
                    }),
                })
            }
        ),
    ]
}

/// A body and its sender: mostly the node whose ballot a proposal carries (the only sender
/// that may send it), sometimes any node.
fn body_and_sender() -> impl Strategy<Value = (Body, u16)> {
    frame_body().prop_flat_map(|body| {
        let owner = match &body {
            Body::Peer(
                Message::Prepare { ballot, .. }
                | Message::Accept { ballot, .. }
                | Message::Heartbeat { ballot, .. }
                | Message::TimeoutNow { ballot, .. },
            ) => ballot.node.0,
            _ => 2,
        };
        (Just(body), prop_oneof![3 => Just(owner), 1 => any::<u16>()])
    })
}

proptest! {
    #[test]
    fn every_frame_round_trips_or_is_refused_as_validate_says(
        (body, from) in body_and_sender(),
        cluster in any::<u64>(),
        shard in any::<u16>(),
    ) {
        let frame = Frame { cluster_id: ClusterId(cluster), from: NodeId(from), shard, body };
        let encoded = Encoder::default().encode_to_vec(&frame);
        let decoded = decode(&after_prefix(&encoded));
        match &frame.body {
            Body::Peer(message) if message.validate(frame.from).is_err() => {
                let invalid = message.validate(frame.from).unwrap_err();
                let refused = matches!(decoded, Err(FrameError::InvalidMessage(got)) if got == invalid);
                prop_assert!(refused, "{:?}: {:?}", invalid, decoded);
            }
            _ => prop_assert_eq!(decoded.unwrap(), frame),
        }
    }

    #[test]
    fn a_read_from_beyond_the_largest_slot_is_refused(beyond in SLOT_MAX.0 + 1..) {
        let read = ReadOptions { from_slot: Slot(beyond), ..ReadOptions::default() };
        let body = Body::Requests(Requests { batch: Bytes::new(), read });
        let frame = Frame { cluster_id: ClusterId(1), from: NodeId(0), shard: 0, body };
        let decoded = decode(&after_prefix(&Encoder::default().encode_to_vec(&frame)));
        prop_assert!(matches!(decoded, Err(FrameError::Invalid(_))), "{:?}", decoded);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&Bytes::from(bytes));
    }

    #[test]
    fn corrupted_frames_never_panic(body in frame_body(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let frame = Frame { cluster_id: ClusterId(1), from: NodeId(1), shard: 0, body };
        let mut encoded = Encoder::default().encode_to_vec(&frame);
        let index = at.index(encoded.len() - PREFIX_BYTES) + PREFIX_BYTES;
        encoded[index] = byte;
        let _ = decode(&Bytes::copy_from_slice(&encoded[PREFIX_BYTES..]));
    }
}

#[test]
fn batches_are_slices_of_the_received_frame() {
    let mut builder = BatchBuilder::new(1 << 20);
    builder.push(RequestId { client: 1, sequence: 1 }, &[9u8; 4096]);
    let batch = builder.take();
    let message = Message::Accept {
        ballot: Ballot::new(3, NodeId(1)),
        first_slot: Slot(10),
        count: 1,
        value: Value::Batch(batch.clone()),
        commit_index: Slot(9),
    };
    let frame =
        Frame { cluster_id: ClusterId(7), from: NodeId(1), shard: 2, body: Body::Peer(message) };
    let mut head = Vec::new();
    let mut payloads = Vec::new();
    Encoder::default().encode(&frame, &mut head, &mut payloads);
    assert_eq!(payloads.len(), 1);
    assert_eq!(
        payloads[0].as_ptr(),
        batch.as_ptr(),
        "the sender writes the batch itself, not a copy"
    );
    let mut wire = head.clone();
    wire.extend_from_slice(&payloads[0]);
    let received = after_prefix(&wire);
    let decoded = decode(&received).unwrap();
    let Body::Peer(Message::Accept { value: Value::Batch(bytes), .. }) = decoded.body else {
        panic!("an accept")
    };
    let range = received.as_ptr() as usize..received.as_ptr() as usize + received.len();
    assert!(range.contains(&(bytes.as_ptr() as usize)), "the batch is a slice of the frame buffer");
    assert_eq!(bytes, batch);
}

/// `message` in a frame from node 1 of cluster 7, shard 0.
fn peer_frame(message: Message) -> Frame {
    Frame { cluster_id: ClusterId(7), from: NodeId(1), shard: 0, body: Body::Peer(message) }
}

#[test]
fn queued_frames_write_the_same_bytes_and_share_large_batches() {
    let accept = |bytes: usize, slot: u64| {
        peer_frame(Message::Accept {
            ballot: Ballot::new(3, NodeId(1)),
            first_slot: Slot(slot),
            count: 1,
            value: Value::Batch(Bytes::from(vec![slot as u8; bytes])),
            commit_index: Slot(0),
        })
    };
    let frames = [accept(100, 1), accept(1 << 20, 2), accept(10, 3), accept(64 << 10, 4)];
    let mut out = Outgoing::default();
    let mut expected = Vec::new();
    for frame in &frames {
        out.push(&mut Encoder::default(), frame);
        expected.extend(Encoder::default().encode_to_vec(frame));
    }
    assert_eq!(out.len(), expected.len());
    assert_eq!(out.slices().collect::<Vec<_>>().concat(), expected);
    let Body::Peer(Message::Accept { value: Value::Batch(large), .. }) = &frames[1].body else {
        unreachable!()
    };
    assert!(
        out.slices().any(|slice| slice.as_ptr() == large.as_ptr()),
        "a large batch is written from where it is, not copied"
    );
    out.clear();
    assert!(out.is_empty());
    assert_eq!(out.slices().count(), 0);
}

#[test]
fn a_snapshot_piece_past_its_snapshots_length_is_refused() {
    let piece = |offset: u64, total: u64| {
        peer_frame(Message::Snapshot {
            slot: Slot(5),
            offset,
            total,
            bytes: Bytes::from(vec![1u8; 100]),
            commit_index: Slot(9),
        })
    };
    let decode_piece =
        |frame: &Frame| decode(&after_prefix(&Encoder::default().encode_to_vec(frame)));
    assert!(decode_piece(&piece(900, 1000)).is_ok());
    for (offset, total) in [(901, 1000), (0, 99), (u64::MAX - 50, u64::MAX)] {
        assert!(
            matches!(decode_piece(&piece(offset, total)), Err(FrameError::Invalid(_))),
            "{offset}+100 of {total}"
        );
    }
}

#[test]
fn oversized_length_prefix_is_refused_before_allocation() {
    let prefix = (64u32 << 20).to_le_bytes();
    match frame_length(prefix, 1 << 20) {
        Err(FrameError::TooLarge { len, max }) => assert_eq!((len, max), (64 << 20, 1 << 20)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn truncated_frames_are_refused() {
    let frame = Frame {
        cluster_id: ClusterId(1),
        from: NodeId(2),
        shard: 0,
        body: Body::Peer(Message::Heartbeat {
            ballot: Ballot::new(1, NodeId(2)),
            commit_index: Slot(5),
            read_round: 3,
        }),
    };
    let encoded = Encoder::default().encode_to_vec(&frame);
    let full = &encoded[PREFIX_BYTES..];
    for cut in 0..full.len() {
        assert!(decode(&Bytes::copy_from_slice(&full[..cut])).is_err(), "cut at {cut} decoded");
    }
}

#[test]
fn a_batch_pointing_outside_the_payload_is_refused() {
    let message = Message::Accept {
        ballot: Ballot::new(1, NodeId(1)),
        first_slot: Slot(0),
        count: 1,
        value: Value::Batch(Bytes::from_static(b"twelve bytes")),
        commit_index: Slot(0),
    };
    let encoded = Encoder::default().encode_to_vec(&Frame {
        cluster_id: ClusterId(1),
        from: NodeId(1),
        shard: 0,
        body: Body::Peer(message),
    });
    // Drop the payload: the header still points at twelve bytes that are not there.
    let without_payload = Bytes::copy_from_slice(&encoded[PREFIX_BYTES..encoded.len() - 12]);
    assert!(matches!(decode(&without_payload), Err(FrameError::Invalid(_))));
}

#[test]
fn a_reply_body_pointing_outside_the_payload_is_refused() {
    let reply = Reply {
        sequence: 1,
        status: ReplyStatus::Applied,
        slot: Slot(3),
        index: 0,
        body: Bytes::from_static(b"value"),
    };
    let encoded = Encoder::default().encode_to_vec(&Frame {
        cluster_id: ClusterId(1),
        from: NodeId(1),
        shard: 0,
        body: Body::Replies(vec![reply]),
    });
    let without_payload = Bytes::copy_from_slice(&encoded[PREFIX_BYTES..encoded.len() - 5]);
    assert!(matches!(decode(&without_payload), Err(FrameError::Invalid(_))));
}
