//! Frames between nodes, byte by byte:
//!
//! ```text
//! total_len u32 LE | header_len u32 LE | header (a FlatBuffer `Frame`) | payload
//! ```
//!
//! `total_len` counts everything after itself. The payload is the batches the header's runs
//! and accepts point into (offset and length). A sender writes the header and then each batch
//! as it is (vectored I/O); a receiver reads the frame into one buffer and hands out batches as
//! slices of it. Frames are input: the length is checked against the limit before anything is
//! allocated, the header is verified before it is read, and every offset is checked; a bad
//! frame is an error with a reason, never a panic. A protocol message is then checked whole
//! ([`Message::validate`]: every slot, round and run in range, every batch parses, a proposal
//! in its sender's own ballot), so that a frame no correct node sends closes its connection
//! here, with its reason logged, before any shard reads it (protocol.md §2.1).

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, VerifierOptions, WIPOffset};

use super::generated::quorum::wire as fb;
use crate::core::{
    Ballot, ClusterId, Consistency, InvalidMessage, Message, NodeId, ReadOptions, RoleKind,
    SLOT_MAX, Slot, SlotRun, Value,
};
use crate::machine::{SessionLimits, StateSummary};

/// Bytes of the length prefix.
pub const PREFIX_BYTES: usize = 4;

/// The version of the protocol this build speaks; a peer or client with another is refused.
/// 5: the reply status `SessionExpired`, and bounded sessions: a replica that keeps every
/// session would apply a request that one evicting idle sessions refuses, so the two must not
/// serve one shard together. 6: sessions are registered (the reply status `Registered`), and
/// a request under an unregistered client id is refused, where 5 opened a session for it.
/// 7: reads off the log in every consistency (`ReadIndexRequest`/`ReadIndexReply` between
/// replicas, a consistency on client requests, the reply status `TooStale`), which a 6 peer
/// would refuse as an unknown message. 8: leadership transfer (`TimeoutNow`).
pub const PROTOCOL_VERSION: u32 = 8;

/// One frame of one shard's connection, as it crosses the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The sender's cluster.
    pub cluster_id: ClusterId,
    /// The sending node, or `NodeId(0)` for a client.
    pub from: NodeId,
    /// The shard the connection belongs to.
    pub shard: u16,
    /// What the frame carries.
    pub body: Body,
}

/// What a frame carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A protocol message between replicas.
    Peer(Message),
    /// The first frame of a connection, from the side that dialled.
    Hello(Hello),
    /// The answer to a `Hello`.
    HelloReply(HelloReply),
    /// Client commands in the batch encoding (`core::BatchBuilder`); not yet validated.
    Requests(Requests),
    /// Replies to client commands.
    Replies(Vec<Reply>),
    /// A client asks how the shard is doing; with `digest`, also for the state's summary,
    /// which hashes the whole state.
    StatusRequest {
        /// Compute the state machine's summary.
        digest: bool,
    },
    /// The answer.
    Status(ShardStatus),
    /// An operator asks the shard's leader to hand leadership to voter `to` (protocol.md
    /// §3.10, `quorum move-leader`).
    MoveLeader {
        /// The successor.
        to: NodeId,
    },
    /// The answer to a [`Body::MoveLeader`]: `Ok` once the transfer began, else why not.
    MoveLeaderReply(Result<(), MoveRefused>),
}

/// Why a shard did not begin a leadership transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveRefused {
    /// The reason, for a person.
    pub reason: String,
    /// The shard's leader as far as the node knows (ask it instead), if not itself.
    pub leader: Option<NodeId>,
}

impl Body {
    /// A short name for errors and logs.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Peer(message) => message.kind(),
            Body::Hello(_) => "hello",
            Body::HelloReply(_) => "hello-reply",
            Body::Requests(_) => "requests",
            Body::Replies(_) => "replies",
            Body::StatusRequest { .. } => "status-request",
            Body::Status(_) => "status",
            Body::MoveLeader { .. } => "move-leader",
            Body::MoveLeaderReply(_) => "move-leader-reply",
        }
    }
}

/// A frame of client commands, and how the queries among them are read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    /// The commands, in the batch encoding; not yet validated.
    pub batch: Bytes,
    /// How the queries among them are read (protocol.md §5.3–§5.5).
    pub read: ReadOptions,
}

impl Requests {
    /// Commands whose queries are read linearizably.
    #[must_use]
    pub fn linearizable(batch: Bytes) -> Requests {
        Requests { batch, read: ReadOptions::default() }
    }
}

/// How one shard of one node is doing, for operators and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardStatus {
    /// This replica's role.
    pub role: RoleKind,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Slots below this are committed here.
    pub commit_index: Slot,
    /// Client commands applied here that this shard carried (with `--apply total`, applied by
    /// the node's one state machine).
    pub applied_commands: u64,
    /// The state machine's summary (zero unless asked for).
    pub summary: StateSummary,
    /// WAL syncs this replica ran since it started.
    pub syncs: u64,
    /// True if the node runs with durability off.
    pub not_durable: bool,
    /// Voters in the cluster.
    pub voters: u16,
    /// Bytes this replica queued for its peers since it started.
    pub egress_bytes: u64,
    /// Of which committed runs (`Chosen`: catch-up and learners' feeds).
    pub chosen_bytes: u64,
    /// Batches committed here since the replica started (no-ops not counted).
    pub batches: u64,
    /// The highest ballot this replica promised (the leader's, once it leads or follows).
    pub promised: Ballot,
    /// Slots below this are applied here (with `--apply total`, by the node's merge).
    pub applied_index: Slot,
    /// Client sessions the shard's table holds (with `--apply total`, the node's one table).
    pub sessions: u64,
    /// The slot of the shard's newest snapshot, if it has one.
    pub snapshot_slot: Option<Slot>,
    /// True if the node applies the merged order of all shards (`--apply total`): it takes
    /// no snapshots, and its shards' states are one.
    pub apply_total: bool,
    /// The session limits the node runs with (`None` from a node too old to say).
    pub session_limits: Option<SessionLimits>,
}

/// Who is dialling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Another node of the cluster (`Frame::from` says which).
    Peer,
    /// A client, with its id (request ids are `(client, sequence)`).
    Client(u64),
}

/// The first frame of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the dialling side.
    pub version: u32,
    /// Who is dialling.
    pub role: Role,
}

/// A cluster member, as a client learns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its listen address (shard `k` listens on this port + `k`).
    pub address: String,
    /// True if it only learns.
    pub learner: bool,
}

/// The answer to a `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloReply {
    /// `Ok` if the connection may go on; else why not (the connection is then closed).
    pub refusal: Option<String>,
    /// Shards per node.
    pub shards: u16,
    /// The shard's leader as this node knows it.
    pub leader: Option<NodeId>,
    /// Every member of the cluster.
    pub members: Vec<Member>,
}

/// What became of a client command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyStatus {
    /// Applied now; the body is the state machine's reply.
    Applied,
    /// Applied before under the same request id; the body is the reply it got then.
    Duplicate,
    /// Too old to tell whether it was applied (its session dropped the reply); not applied.
    Expired,
    /// This node does not lead the shard; `hint` names the leader it last heard.
    NotLeader {
        /// The leader it last heard.
        hint: Option<NodeId>,
    },
    /// The leader's pipeline is full: retry shortly (same request id).
    Busy,
    /// Refused for good; the body is a UTF-8 reason.
    Rejected,
    /// The shard holds no session of this client id (evicted while idle, or never
    /// registered): not applied, and no request under this id will be. Register again.
    SessionExpired,
    /// A register-session command's reply: the body is the session's client id (8 bytes,
    /// little-endian), for the requests that follow on this shard.
    Registered,
    /// Not proposed: the leader's disk is full (its WAL cannot get its next segment). The
    /// body is a UTF-8 reason naming the file. Nothing was written; the node resumes by
    /// itself once space is freed (docs/disk-faults.md).
    OutOfSpace,
    /// A stale read refused: the member is further behind than the read's bound allows
    /// (protocol.md §5.5). The body is how far: slots, then milliseconds, each a u64
    /// little-endian ([`ReplyStatus::too_stale_body`]).
    TooStale,
}

impl ReplyStatus {
    /// The body of a [`ReplyStatus::TooStale`] reply: how far behind the member may be.
    #[must_use]
    pub fn too_stale_body(behind_slots: u64, behind_ms: u64) -> Bytes {
        let mut body = Vec::with_capacity(16);
        body.extend_from_slice(&behind_slots.to_le_bytes());
        body.extend_from_slice(&behind_ms.to_le_bytes());
        Bytes::from(body)
    }

    /// `(slots, milliseconds)` from a [`ReplyStatus::TooStale`] reply's body, if it is one.
    #[must_use]
    pub fn too_stale_of(body: &[u8]) -> Option<(u64, u64)> {
        let slots: [u8; 8] = body.get(..8)?.try_into().ok()?;
        let ms: [u8; 8] = body.get(8..16)?.try_into().ok()?;
        Some((u64::from_le_bytes(slots), u64::from_le_bytes(ms)))
    }

    fn code(self) -> (u8, u16) {
        match self {
            ReplyStatus::Applied => (0, 0),
            ReplyStatus::Duplicate => (1, 0),
            ReplyStatus::Expired => (2, 0),
            ReplyStatus::NotLeader { hint } => (3, hint.map_or(0, |node| node.0)),
            ReplyStatus::Busy => (4, 0),
            ReplyStatus::Rejected => (5, 0),
            ReplyStatus::SessionExpired => (6, 0),
            ReplyStatus::Registered => (7, 0),
            ReplyStatus::OutOfSpace => (8, 0),
            ReplyStatus::TooStale => (9, 0),
        }
    }

    fn from_code(code: u8, hint: u16) -> Result<ReplyStatus, FrameError> {
        Ok(match code {
            0 => ReplyStatus::Applied,
            1 => ReplyStatus::Duplicate,
            2 => ReplyStatus::Expired,
            3 => ReplyStatus::NotLeader { hint: (hint != 0).then_some(NodeId(hint)) },
            4 => ReplyStatus::Busy,
            5 => ReplyStatus::Rejected,
            6 => ReplyStatus::SessionExpired,
            7 => ReplyStatus::Registered,
            8 => ReplyStatus::OutOfSpace,
            9 => ReplyStatus::TooStale,
            _ => return Err(FrameError::Invalid("unknown reply status")),
        })
    }
}

/// The reply to one client command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request's sequence number (the client is the connection's).
    pub sequence: u64,
    /// What became of it.
    pub status: ReplyStatus,
    /// The slot its batch was committed in (applied and duplicate replies).
    pub slot: Slot,
    /// Its place in that batch.
    pub index: u32,
    /// The state machine's reply, or a reason.
    pub body: Bytes,
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the limit (checked before any allocation).
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame ends before its header does.
    #[error("frame of {0} bytes is too short for its header")]
    Truncated(usize),
    /// The header is not a valid FlatBuffer `Frame`.
    #[error("frame header is not a valid FlatBuffer: {0}")]
    Malformed(#[from] flatbuffers::InvalidFlatbuffer),
    /// The header is a FlatBuffer but not a message any node sends.
    #[error("invalid frame: {0}")]
    Invalid(&'static str),
    /// A protocol message that decodes but carries a value out of range, or a batch that does
    /// not parse (protocol.md §2.1).
    #[error("invalid frame: {0}")]
    InvalidMessage(#[from] InvalidMessage),
}

/// The length a prefix announces, refused if above `max` (so a peer cannot make us allocate
/// what it likes).
///
/// # Errors
/// `TooLarge`, or `Truncated` if it cannot even hold the header length.
pub fn frame_length(prefix: [u8; PREFIX_BYTES], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len < 4 {
        return Err(FrameError::Truncated(len));
    }
    Ok(len)
}

/// Builds frames, reusing its buffers.
pub struct Encoder {
    builder: FlatBufferBuilder<'static>,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder { builder: FlatBufferBuilder::with_capacity(1024) }
    }
}

fn ballot(ballot: Ballot) -> fb::Ballot {
    fb::Ballot::new(ballot.round, ballot.node.0)
}

/// Where a value's batch sits in the payload: (noop, offset, len).
fn place(value: &Value, payloads: &mut Vec<Bytes>, payload_len: &mut u64) -> (bool, u64, u64) {
    match value {
        Value::Noop => (true, 0, 0),
        Value::Batch(bytes) => {
            let offset = *payload_len;
            *payload_len += bytes.len() as u64;
            payloads.push(bytes.clone());
            (false, offset, bytes.len() as u64)
        }
    }
}

impl Encoder {
    /// Encodes `frame`: appends the prefix and header to `head` and the batches, in order, to
    /// `payloads` (reference-counted, not copied). The frame on the wire is `head` followed by
    /// every payload.
    pub fn encode(&mut self, frame: &Frame, head: &mut Vec<u8>, payloads: &mut Vec<Bytes>) {
        let first_payload = payloads.len();
        let mut payload_len = 0u64;
        let builder = &mut self.builder;
        builder.reset();
        let (body_type, body) = match &frame.body {
            Body::Peer(message) => encode_message(builder, message, payloads, &mut payload_len),
            Body::Hello(hello) => {
                let (role, client_id) = match hello.role {
                    Role::Peer => (fb::Role::Peer, 0),
                    Role::Client(id) => (fb::Role::Client, id),
                };
                let args = fb::HelloArgs { version: hello.version, role, client_id };
                (fb::Body::Hello, fb::Hello::create(builder, &args).as_union_value())
            }
            Body::HelloReply(reply) => {
                let members: Vec<_> = reply
                    .members
                    .iter()
                    .map(|member| {
                        let address = builder.create_string(&member.address);
                        let args = fb::MemberArgs {
                            id: member.id.0,
                            address: Some(address),
                            learner: member.learner,
                        };
                        fb::Member::create(builder, &args)
                    })
                    .collect();
                let members = builder.create_vector(&members);
                let reason = reply.refusal.as_deref().map(|reason| builder.create_string(reason));
                let args = fb::HelloReplyArgs {
                    accepted: reply.refusal.is_none(),
                    reason,
                    shards: reply.shards,
                    leader: reply.leader.map_or(0, |node| node.0),
                    members: Some(members),
                };
                (fb::Body::HelloReply, fb::HelloReply::create(builder, &args).as_union_value())
            }
            Body::Requests(requests) => {
                payload_len += requests.batch.len() as u64;
                payloads.push(requests.batch.clone());
                encode_requests(builder, requests.read)
            }
            Body::Replies(replies) => encode_replies(builder, replies, payloads, &mut payload_len),
            Body::StatusRequest { digest } => {
                let args = fb::StatusRequestArgs { digest: *digest };
                (
                    fb::Body::StatusRequest,
                    fb::StatusRequest::create(builder, &args).as_union_value(),
                )
            }
            Body::Status(status) => encode_status(builder, status),
            Body::MoveLeader { to } => {
                let args = fb::MoveLeaderArgs { to: to.0 };
                (fb::Body::MoveLeader, fb::MoveLeader::create(builder, &args).as_union_value())
            }
            Body::MoveLeaderReply(outcome) => {
                let (refusal, leader) = match outcome {
                    Ok(()) => (None, 0),
                    Err(refused) => (
                        Some(builder.create_string(&refused.reason)),
                        refused.leader.map_or(0, |leader| leader.0),
                    ),
                };
                let args = fb::MoveLeaderReplyArgs { started: outcome.is_ok(), refusal, leader };
                let body = fb::MoveLeaderReply::create(builder, &args).as_union_value();
                (fb::Body::MoveLeaderReply, body)
            }
        };
        let args = fb::FrameArgs {
            cluster_id: frame.cluster_id.0,
            from: frame.from.0,
            shard: frame.shard,
            body_type,
            body: Some(body),
        };
        let root = fb::Frame::create(builder, &args);
        builder.finish(root, None);
        let header = builder.finished_data();
        let payload_total: u64 =
            payloads[first_payload..].iter().map(|bytes| bytes.len() as u64).sum();
        assert_eq!(payload_total, payload_len, "payload accounting");
        let total = 4 + header.len() as u64 + payload_total;
        let total = u32::try_from(total).expect("a frame fits u32; the batch limit keeps it so");
        head.extend_from_slice(&total.to_le_bytes());
        head.extend_from_slice(&(header.len() as u32).to_le_bytes());
        head.extend_from_slice(header);
    }

    /// Encodes `frame` into one contiguous buffer (tests, small messages).
    #[must_use]
    pub fn encode_to_vec(&mut self, frame: &Frame) -> Vec<u8> {
        let mut head = Vec::new();
        let mut payloads = Vec::new();
        self.encode(frame, &mut head, &mut payloads);
        for payload in payloads {
            head.extend_from_slice(&payload);
        }
        head
    }
}

fn encode_requests<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    read: ReadOptions,
) -> (fb::Body, WIPOffset<flatbuffers::UnionWIPOffset>) {
    let consistency = match read.consistency {
        Consistency::Linearizable => 0,
        Consistency::Lease => 1,
        Consistency::Follower => 2,
        Consistency::Stale => 3,
    };
    let args = fb::RequestsArgs {
        count: 0,
        consistency,
        from_slot: read.from_slot.0,
        has_behind_slots_max: read.behind_slots_max.is_some(),
        behind_slots_max: read.behind_slots_max.unwrap_or(0),
        has_behind_ms_max: read.behind_ms_max.is_some(),
        behind_ms_max: read.behind_ms_max.unwrap_or(0),
    };
    (fb::Body::Requests, fb::Requests::create(builder, &args).as_union_value())
}

fn encode_replies<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    replies: &[Reply],
    payloads: &mut Vec<Bytes>,
    payload_len: &mut u64,
) -> (fb::Body, WIPOffset<flatbuffers::UnionWIPOffset>) {
    let heads: Vec<fb::ReplyHead> = replies
        .iter()
        .map(|reply| {
            let (status, hint) = reply.status.code();
            let head = fb::ReplyHead::new(
                reply.sequence,
                reply.slot.0,
                *payload_len,
                reply.body.len() as u32,
                reply.index,
                status,
                hint,
            );
            if !reply.body.is_empty() {
                *payload_len += reply.body.len() as u64;
                payloads.push(reply.body.clone());
            }
            head
        })
        .collect();
    let heads = builder.create_vector(&heads);
    let args = fb::RepliesArgs { replies: Some(heads) };
    (fb::Body::Replies, fb::Replies::create(builder, &args).as_union_value())
}

/// A shard status as its FlatBuffers table.
fn encode_status<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    status: &ShardStatus,
) -> (fb::Body, WIPOffset<flatbuffers::UnionWIPOffset>) {
    let role = match status.role {
        RoleKind::Follower => 0,
        RoleKind::Candidate => 1,
        RoleKind::Leader => 2,
        RoleKind::Learner => 3,
    };
    let limits = status.session_limits;
    let limit = |field: fn(&SessionLimits) -> u64| limits.as_ref().map_or(0, field);
    let args = fb::StatusArgs {
        role,
        leader: status.leader.map_or(0, |node| node.0),
        commit_index: status.commit_index.0,
        applied_commands: status.applied_commands,
        entries: status.summary.entries,
        digest: status.summary.digest,
        syncs: status.syncs,
        not_durable: status.not_durable,
        voters: status.voters,
        egress_bytes: status.egress_bytes,
        chosen_bytes: status.chosen_bytes,
        batches: status.batches,
        promised_round: status.promised.round,
        promised_node: status.promised.node.0,
        applied_index: status.applied_index.0,
        sessions: status.sessions,
        snapshot_slot: status.snapshot_slot.map_or(0, |slot| slot.0),
        apply_total: status.apply_total,
        session_replies_max: limit(|limits| limits.replies_max as u64),
        session_reply_bytes_max: limit(|limits| limits.reply_bytes_max as u64),
        sessions_max: limit(|limits| limits.sessions_max as u64),
        session_idle_commands_min: limit(|limits| limits.idle_commands_min),
        sessions_evicted_max: limit(|limits| limits.evicted_max as u64),
    };
    (fb::Body::Status, fb::Status::create(builder, &args).as_union_value())
}

fn encode_heartbeat<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    b: Ballot,
    commit_index: Slot,
    read_round: u64,
) -> (fb::Body, WIPOffset<flatbuffers::UnionWIPOffset>) {
    let b = ballot(b);
    let args = fb::HeartbeatArgs { ballot: Some(&b), commit_index: commit_index.0, read_round };
    (fb::Body::Heartbeat, fb::Heartbeat::create(builder, &args).as_union_value())
}

fn encode_message<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    message: &Message,
    payloads: &mut Vec<Bytes>,
    payload_len: &mut u64,
) -> (fb::Body, WIPOffset<flatbuffers::UnionWIPOffset>) {
    match message {
        Message::Probe { round, commit_index } => {
            let args = fb::ProbeArgs { round: *round, commit_index: commit_index.0 };
            (fb::Body::Probe, fb::Probe::create(builder, &args).as_union_value())
        }
        Message::ProbeReply { round, granted, promised } => {
            let promised = ballot(*promised);
            let args =
                fb::ProbeReplyArgs { round: *round, granted: *granted, promised: Some(&promised) };
            (fb::Body::ProbeReply, fb::ProbeReply::create(builder, &args).as_union_value())
        }
        Message::Prepare { ballot: b, from_slot } => {
            let b = ballot(*b);
            let args = fb::PrepareArgs { ballot: Some(&b), from_slot: from_slot.0 };
            (fb::Body::Prepare, fb::Prepare::create(builder, &args).as_union_value())
        }
        Message::Promise { ballot: b, from_slot, runs, next_slot } => {
            let runs = encode_runs(builder, runs, payloads, payload_len);
            let b = ballot(*b);
            let args = fb::PromiseArgs {
                ballot: Some(&b),
                from_slot: from_slot.0,
                runs: Some(runs),
                has_next: next_slot.is_some(),
                next_slot: next_slot.map_or(0, |slot| slot.0),
            };
            (fb::Body::Promise, fb::Promise::create(builder, &args).as_union_value())
        }
        Message::Accept { ballot: b, first_slot, count, value, commit_index } => {
            let (noop, batch_offset, batch_len) = place(value, payloads, payload_len);
            let b = ballot(*b);
            let args = fb::AcceptArgs {
                ballot: Some(&b),
                first_slot: first_slot.0,
                count: *count,
                noop,
                batch_offset,
                batch_len,
                commit_index: commit_index.0,
            };
            (fb::Body::Accept, fb::Accept::create(builder, &args).as_union_value())
        }
        Message::Accepted { ballot: b, first_slot, count } => {
            let b = ballot(*b);
            let args =
                fb::AcceptedArgs { ballot: Some(&b), first_slot: first_slot.0, count: *count };
            (fb::Body::Accepted, fb::Accepted::create(builder, &args).as_union_value())
        }
        Message::Rejected { ballot: b, promised } => {
            let (b, promised) = (ballot(*b), ballot(*promised));
            let args = fb::RejectedArgs { ballot: Some(&b), promised: Some(&promised) };
            (fb::Body::Rejected, fb::Rejected::create(builder, &args).as_union_value())
        }
        Message::Heartbeat { ballot: b, commit_index, read_round } => {
            encode_heartbeat(builder, *b, *commit_index, *read_round)
        }
        Message::HeartbeatAck { ballot: b, read_round } => {
            let b = ballot(*b);
            let args = fb::HeartbeatAckArgs { ballot: Some(&b), read_round: *read_round };
            (fb::Body::HeartbeatAck, fb::HeartbeatAck::create(builder, &args).as_union_value())
        }
        Message::RepairQuery { nonce } => {
            let args = fb::RepairQueryArgs { nonce: *nonce };
            (fb::Body::RepairQuery, fb::RepairQuery::create(builder, &args).as_union_value())
        }
        Message::RepairReport { nonce, promised, slot_end, commit_index } => {
            encode_repair_report(builder, *nonce, *promised, *slot_end, *commit_index)
        }
        Message::CatchUpRequest { from_slot } => {
            let args = fb::CatchUpRequestArgs { from_slot: from_slot.0 };
            (fb::Body::CatchUpRequest, fb::CatchUpRequest::create(builder, &args).as_union_value())
        }
        Message::Subscribe { from_slot } => {
            let args = fb::SubscribeArgs { from_slot: from_slot.0 };
            (fb::Body::Subscribe, fb::Subscribe::create(builder, &args).as_union_value())
        }
        Message::Snapshot { slot, offset, total, bytes, commit_index } => {
            *payload_len += bytes.len() as u64;
            payloads.push(bytes.clone());
            encode_snapshot(builder, *slot, *offset, *total, bytes.len() as u64, *commit_index)
        }
        Message::SnapshotPull { slot, offset } => {
            let args = fb::SnapshotPullArgs { slot: slot.0, offset: *offset };
            (fb::Body::SnapshotPull, fb::SnapshotPull::create(builder, &args).as_union_value())
        }
        Message::Chosen { runs, commit_index } => {
            let runs = encode_runs(builder, runs, payloads, payload_len);
            let args = fb::ChosenArgs { runs: Some(runs), commit_index: commit_index.0 };
            (fb::Body::Chosen, fb::Chosen::create(builder, &args).as_union_value())
        }
        Message::ReadIndexRequest { nonce } => {
            let args = fb::ReadIndexRequestArgs { nonce: *nonce };
            let body = fb::ReadIndexRequest::create(builder, &args).as_union_value();
            (fb::Body::ReadIndexRequest, body)
        }
        Message::ReadIndexReply { nonce, read_index } => {
            let (granted, read_index) = (read_index.is_some(), read_index.map_or(0, |s| s.0));
            let args = fb::ReadIndexReplyArgs { nonce: *nonce, granted, read_index };
            (fb::Body::ReadIndexReply, fb::ReadIndexReply::create(builder, &args).as_union_value())
        }
        Message::TimeoutNow { ballot: b, to } => {
            let args = fb::TimeoutNowArgs { ballot: Some(&ballot(*b)), to: to.0 };
            (fb::Body::TimeoutNow, fb::TimeoutNow::create(builder, &args).as_union_value())
        }
    }
}

fn encode_repair_report<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    nonce: u64,
    promised: Ballot,
    slot_end: Slot,
    commit_index: Slot,
) -> (fb::Body, WIPOffset<flatbuffers::UnionWIPOffset>) {
    let promised = ballot(promised);
    let args = fb::RepairReportArgs {
        nonce,
        promised: Some(&promised),
        slot_end: slot_end.0,
        commit_index: commit_index.0,
    };
    (fb::Body::RepairReport, fb::RepairReport::create(builder, &args).as_union_value())
}

fn encode_snapshot<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    slot: Slot,
    offset: u64,
    total: u64,
    bytes_len: u64,
    commit_index: Slot,
) -> (fb::Body, WIPOffset<flatbuffers::UnionWIPOffset>) {
    let args =
        fb::SnapshotArgs { bytes_len, commit_index: commit_index.0, slot: slot.0, offset, total };
    (fb::Body::Snapshot, fb::Snapshot::create(builder, &args).as_union_value())
}

fn encode_runs<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    runs: &[SlotRun],
    payloads: &mut Vec<Bytes>,
    payload_len: &mut u64,
) -> WIPOffset<Vector<'a, ForwardsUOffset<fb::Run<'a>>>> {
    let mut offsets = Vec::with_capacity(runs.len());
    for run in runs {
        let (noop, batch_offset, batch_len) = place(&run.value, payloads, payload_len);
        let b = ballot(run.ballot);
        let args = fb::RunArgs {
            first_slot: run.first_slot.0,
            count: run.count,
            ballot: Some(&b),
            noop,
            batch_offset,
            batch_len,
            chosen: run.chosen,
        };
        offsets.push(fb::Run::create(builder, &args));
    }
    builder.create_vector(&offsets)
}

/// Limits on what a header may contain, beyond the frame size limit.
fn verifier_options() -> VerifierOptions {
    VerifierOptions { max_depth: 8, max_tables: 1 << 20, ..VerifierOptions::default() }
}

fn ballot_of(b: Option<&fb::Ballot>) -> Result<Ballot, FrameError> {
    let b = b.ok_or(FrameError::Invalid("ballot missing"))?;
    Ok(Ballot::new(b.round(), NodeId(b.node())))
}

fn heartbeat_of(m: fb::Heartbeat<'_>) -> Result<Message, FrameError> {
    let (commit_index, read_round) = (Slot(m.commit_index()), m.read_round());
    Ok(Message::Heartbeat { ballot: ballot_of(m.ballot())?, commit_index, read_round })
}

/// Decodes a frame's body: everything after the length prefix. Batches come out as slices of
/// `body`, not copies.
///
/// # Errors
/// A [`FrameError`] saying what is wrong; nothing is half-decoded.
pub fn decode(body: &Bytes) -> Result<Frame, FrameError> {
    let Some((header_len, rest)) = body.split_first_chunk::<4>() else {
        return Err(FrameError::Truncated(body.len()));
    };
    let header_len = u32::from_le_bytes(*header_len) as usize;
    if header_len > rest.len() {
        return Err(FrameError::Truncated(body.len()));
    }
    let header = &rest[..header_len];
    let payload = body.slice(4 + header_len..);
    let frame = fb::root_as_frame_with_opts(&verifier_options(), header)?;
    let value_of = |noop: bool, offset: u64, len: u64, count: u64| -> Result<Value, FrameError> {
        if count == 0 {
            return Err(FrameError::Invalid("a run of zero slots"));
        }
        if noop {
            return Ok(Value::Noop);
        }
        if count != 1 {
            return Err(FrameError::Invalid("a batch run over more than one slot"));
        }
        let end = offset.checked_add(len).ok_or(FrameError::Invalid("batch range overflows"))?;
        if end > payload.len() as u64 {
            return Err(FrameError::Invalid("batch range outside the payload"));
        }
        Ok(Value::Batch(payload.slice(offset as usize..end as usize)))
    };
    let runs_of = |runs: Option<Vector<'_, ForwardsUOffset<fb::Run<'_>>>>| -> Result<Vec<SlotRun>, FrameError> {
        let runs = runs.ok_or(FrameError::Invalid("runs missing"))?;
        runs.iter()
            .map(|run| {
                Ok(SlotRun {
                    first_slot: Slot(run.first_slot()),
                    count: run.count(),
                    ballot: ballot_of(run.ballot())?,
                    value: value_of(run.noop(), run.batch_offset(), run.batch_len(), run.count())?,
                    chosen: run.chosen(),
                })
            })
            .collect()
    };
    let missing = FrameError::Invalid("message body missing or of the wrong type");
    let body = match frame.body_type() {
        fb::Body::Probe => {
            let m = frame.body_as_probe().ok_or(missing)?;
            Message::Probe { round: m.round(), commit_index: Slot(m.commit_index()) }
        }
        fb::Body::ProbeReply => {
            let m = frame.body_as_probe_reply().ok_or(missing)?;
            Message::ProbeReply {
                round: m.round(),
                granted: m.granted(),
                promised: ballot_of(m.promised())?,
            }
        }
        fb::Body::Prepare => {
            let m = frame.body_as_prepare().ok_or(missing)?;
            Message::Prepare { ballot: ballot_of(m.ballot())?, from_slot: Slot(m.from_slot()) }
        }
        fb::Body::Promise => {
            let m = frame.body_as_promise().ok_or(missing)?;
            Message::Promise {
                ballot: ballot_of(m.ballot())?,
                from_slot: Slot(m.from_slot()),
                runs: runs_of(m.runs())?,
                next_slot: m.has_next().then_some(Slot(m.next_slot())),
            }
        }
        fb::Body::Accept => {
            let m = frame.body_as_accept().ok_or(missing)?;
            Message::Accept {
                ballot: ballot_of(m.ballot())?,
                first_slot: Slot(m.first_slot()),
                count: m.count(),
                value: value_of(m.noop(), m.batch_offset(), m.batch_len(), m.count())?,
                commit_index: Slot(m.commit_index()),
            }
        }
        fb::Body::Accepted => {
            let m = frame.body_as_accepted().ok_or(missing)?;
            Message::Accepted {
                ballot: ballot_of(m.ballot())?,
                first_slot: Slot(m.first_slot()),
                count: m.count(),
            }
        }
        fb::Body::Rejected => {
            let m = frame.body_as_rejected().ok_or(missing)?;
            Message::Rejected { ballot: ballot_of(m.ballot())?, promised: ballot_of(m.promised())? }
        }
        fb::Body::Heartbeat => heartbeat_of(frame.body_as_heartbeat().ok_or(missing)?)?,
        fb::Body::HeartbeatAck => {
            let m = frame.body_as_heartbeat_ack().ok_or(missing)?;
            Message::HeartbeatAck { ballot: ballot_of(m.ballot())?, read_round: m.read_round() }
        }
        fb::Body::CatchUpRequest => {
            let m = frame.body_as_catch_up_request().ok_or(missing)?;
            Message::CatchUpRequest { from_slot: Slot(m.from_slot()) }
        }
        fb::Body::RepairQuery => {
            let m = frame.body_as_repair_query().ok_or(missing)?;
            Message::RepairQuery { nonce: m.nonce() }
        }
        fb::Body::RepairReport => {
            let m = frame.body_as_repair_report().ok_or(missing)?;
            Message::RepairReport {
                nonce: m.nonce(),
                promised: ballot_of(m.promised())?,
                slot_end: Slot(m.slot_end()),
                commit_index: Slot(m.commit_index()),
            }
        }
        fb::Body::Subscribe => {
            let m = frame.body_as_subscribe().ok_or(missing)?;
            Message::Subscribe { from_slot: Slot(m.from_slot()) }
        }
        fb::Body::Snapshot => {
            let m = frame.body_as_snapshot().ok_or(missing)?;
            if m.bytes_len() != payload.len() as u64 {
                return Err(FrameError::Invalid("snapshot length differs from the payload's"));
            }
            let (offset, total) = (m.offset(), m.total());
            if offset.checked_add(m.bytes_len()).is_none_or(|end| end > total) {
                return Err(FrameError::Invalid("snapshot piece beyond the snapshot's length"));
            }
            Message::Snapshot {
                slot: Slot(m.slot()),
                offset,
                total,
                bytes: payload.clone(),
                commit_index: Slot(m.commit_index()),
            }
        }
        fb::Body::SnapshotPull => {
            let m = frame.body_as_snapshot_pull().ok_or(missing)?;
            Message::SnapshotPull { slot: Slot(m.slot()), offset: m.offset() }
        }
        fb::Body::Chosen => {
            let m = frame.body_as_chosen().ok_or(missing)?;
            Message::Chosen { runs: runs_of(m.runs())?, commit_index: Slot(m.commit_index()) }
        }
        fb::Body::Hello => {
            let m = frame.body_as_hello().ok_or(missing)?;
            let role = match m.role() {
                fb::Role::Peer => Role::Peer,
                fb::Role::Client => Role::Client(m.client_id()),
                _ => return Err(FrameError::Invalid("unknown role")),
            };
            return finish(&frame, Body::Hello(Hello { version: m.version(), role }));
        }
        fb::Body::HelloReply => {
            let m = frame.body_as_hello_reply().ok_or(missing)?;
            let members = m
                .members()
                .ok_or(FrameError::Invalid("members missing"))?
                .iter()
                .map(|member| {
                    Ok(Member {
                        id: NodeId(member.id()),
                        address: member
                            .address()
                            .ok_or(FrameError::Invalid("member address missing"))?
                            .to_string(),
                        learner: member.learner(),
                    })
                })
                .collect::<Result<Vec<_>, FrameError>>()?;
            let refusal = if m.accepted() {
                None
            } else {
                Some(m.reason().unwrap_or("no reason given").to_string())
            };
            let leader = (m.leader() != 0).then_some(NodeId(m.leader()));
            let reply = HelloReply { refusal, shards: m.shards(), leader, members };
            return finish(&frame, Body::HelloReply(reply));
        }
        fb::Body::Requests => {
            let read = read_options_of(frame.body_as_requests().ok_or(missing)?)?;
            return finish(&frame, Body::Requests(Requests { batch: payload, read }));
        }
        fb::Body::Replies => {
            let replies = replies_of(frame.body_as_replies().ok_or(missing)?, &payload)?;
            return finish(&frame, Body::Replies(replies));
        }
        fb::Body::StatusRequest => {
            let m = frame.body_as_status_request().ok_or(missing)?;
            return finish(&frame, Body::StatusRequest { digest: m.digest() });
        }
        fb::Body::MoveLeader => {
            let m = frame.body_as_move_leader().ok_or(missing)?;
            return finish(&frame, Body::MoveLeader { to: NodeId(m.to()) });
        }
        fb::Body::MoveLeaderReply => {
            let m = frame.body_as_move_leader_reply().ok_or(missing)?;
            let outcome = if m.started() {
                Ok(())
            } else {
                let reason = m.refusal().unwrap_or("refused").to_string();
                Err(MoveRefused { reason, leader: (m.leader() != 0).then_some(NodeId(m.leader())) })
            };
            return finish(&frame, Body::MoveLeaderReply(outcome));
        }
        fb::Body::Status => {
            let status = decode_status(frame.body_as_status().ok_or(missing)?)?;
            return finish(&frame, Body::Status(status));
        }
        fb::Body::ReadIndexRequest => {
            let m = frame.body_as_read_index_request().ok_or(missing)?;
            Message::ReadIndexRequest { nonce: m.nonce() }
        }
        fb::Body::ReadIndexReply => {
            let m = frame.body_as_read_index_reply().ok_or(missing)?;
            let read_index = m.granted().then_some(Slot(m.read_index()));
            Message::ReadIndexReply { nonce: m.nonce(), read_index }
        }
        fb::Body::TimeoutNow => {
            let m = frame.body_as_timeout_now().ok_or(missing)?;
            Message::TimeoutNow { ballot: ballot_of(m.ballot())?, to: NodeId(m.to()) }
        }
        _ => return Err(FrameError::Invalid("unknown message type")),
    };
    body.validate(NodeId(frame.from()))?;
    finish(&frame, Body::Peer(body))
}

fn read_options_of(m: fb::Requests<'_>) -> Result<ReadOptions, FrameError> {
    let consistency = match m.consistency() {
        0 => Consistency::Linearizable,
        1 => Consistency::Lease,
        2 => Consistency::Follower,
        3 => Consistency::Stale,
        _ => return Err(FrameError::Invalid("unknown read consistency")),
    };
    if m.from_slot() > SLOT_MAX.0 {
        return Err(FrameError::Invalid("a read's from_slot beyond the largest slot"));
    }
    Ok(ReadOptions {
        consistency,
        from_slot: Slot(m.from_slot()),
        behind_slots_max: m.has_behind_slots_max().then_some(m.behind_slots_max()),
        behind_ms_max: m.has_behind_ms_max().then_some(m.behind_ms_max()),
    })
}

fn replies_of(m: fb::Replies<'_>, payload: &Bytes) -> Result<Vec<Reply>, FrameError> {
    let heads = m.replies().ok_or(FrameError::Invalid("replies missing"))?;
    let mut replies = Vec::with_capacity(heads.len());
    for head in heads {
        let start = head.body_offset();
        let end = start
            .checked_add(u64::from(head.body_len()))
            .filter(|end| *end <= payload.len() as u64)
            .ok_or(FrameError::Invalid("reply body outside the payload"))?;
        replies.push(Reply {
            sequence: head.sequence(),
            status: ReplyStatus::from_code(head.status(), head.hint())?,
            slot: Slot(head.slot()),
            index: head.index(),
            body: payload.slice(start as usize..end as usize),
        });
    }
    Ok(replies)
}

/// A shard status from its table. The session limits are input: reported only if every one
/// is in the range a node accepts (a node too old to send them sends zeros).
fn decode_status(m: fb::Status<'_>) -> Result<ShardStatus, FrameError> {
    let role = match m.role() {
        0 => RoleKind::Follower,
        1 => RoleKind::Candidate,
        2 => RoleKind::Leader,
        3 => RoleKind::Learner,
        _ => return Err(FrameError::Invalid("unknown role in status")),
    };
    let size = |value: u64| usize::try_from(value).ok().filter(|value| *value > 0);
    let session_limits = match (
        size(m.session_replies_max()),
        size(m.session_reply_bytes_max()),
        size(m.sessions_max()),
        m.session_idle_commands_min(),
        size(m.sessions_evicted_max()),
    ) {
        (Some(replies_max), Some(reply_bytes_max), Some(sessions_max), 1.., Some(evicted_max)) => {
            Some(SessionLimits {
                replies_max,
                reply_bytes_max,
                sessions_max,
                idle_commands_min: m.session_idle_commands_min(),
                evicted_max,
            })
        }
        _ => None,
    };
    Ok(ShardStatus {
        role,
        leader: (m.leader() != 0).then_some(NodeId(m.leader())),
        commit_index: Slot(m.commit_index()),
        applied_commands: m.applied_commands(),
        summary: StateSummary { entries: m.entries(), digest: m.digest() },
        syncs: m.syncs(),
        not_durable: m.not_durable(),
        voters: m.voters(),
        egress_bytes: m.egress_bytes(),
        chosen_bytes: m.chosen_bytes(),
        batches: m.batches(),
        promised: Ballot { round: m.promised_round(), node: NodeId(m.promised_node()) },
        applied_index: Slot(m.applied_index()),
        sessions: m.sessions(),
        snapshot_slot: (m.snapshot_slot() != 0).then_some(Slot(m.snapshot_slot())),
        apply_total: m.apply_total(),
        session_limits,
    })
}

fn finish(frame: &fb::Frame<'_>, body: Body) -> Result<Frame, FrameError> {
    Ok(Frame {
        cluster_id: ClusterId(frame.cluster_id()),
        from: NodeId(frame.from()),
        shard: frame.shard(),
        body,
    })
}
