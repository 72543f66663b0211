//! Messages between the replicas of one shard, and what the replica asks its runtime to do.
//! Plain Rust types: the wire encoding comes with the transport (protocol.md §2 lists each
//! message with the rules that govern it).
//!
//! A message is input: [`Message::validate`] checks every value it carries against the ranges
//! of protocol.md §2.1 (slots and run ends up to [`SLOT_MAX`], rounds up to [`ROUND_MAX`], runs
//! of at least one slot, batches that parse). The decoder runs it on every frame (a frame that
//! fails closes its connection) and the replica on every message handed to it, so that the
//! arithmetic behind it never sees a value it could overflow on.

use bytes::Bytes;

use super::batch::{Value, check_batch};
use super::types::{Ballot, ClusterId, NodeId, PersistSeq, ROUND_MAX, RequestId, SLOT_MAX, Slot};

/// A message that no correct sender sends: a value out of range, a run of no slots, a batch
/// that does not parse. Refused whole, before anything is read from it (protocol.md §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} refused: {reason}")]
pub struct InvalidMessage {
    /// The message's kind ([`Message::kind`]).
    pub kind: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn check_slot(slot: Slot) -> Result<(), &'static str> {
    if slot > SLOT_MAX {
        return Err("a slot beyond the last one a log may reach (2^62)");
    }
    Ok(())
}

fn check_round(round: u64) -> Result<(), &'static str> {
    if round > ROUND_MAX {
        return Err("a round beyond the last one a ballot may have (2^62)");
    }
    Ok(())
}

fn check_ballot(ballot: Ballot) -> Result<(), &'static str> {
    check_round(ballot.round)
}

/// A ballot only its owner proposes in: prepares, accepts and heartbeats come from the node
/// whose ballot they carry.
fn check_own_ballot(ballot: Ballot, from: NodeId) -> Result<(), &'static str> {
    check_ballot(ballot)?;
    if ballot.node != from {
        return Err("a ballot of another node than its sender");
    }
    Ok(())
}

/// `count` slots from `first_slot`: at least one, ending at [`SLOT_MAX`] at the latest.
fn check_range(first_slot: Slot, count: u64) -> Result<(), &'static str> {
    check_slot(first_slot)?;
    if count == 0 {
        return Err("a run of no slots");
    }
    if count > SLOT_MAX.0 - first_slot.0 {
        return Err("a run ending beyond the last slot a log may reach (2^62)");
    }
    Ok(())
}

/// A value over `count` slots: a batch covers one slot and parses (it is persisted as it is,
/// then applied on every replay: one that fails apply would fail it for ever).
fn check_value(value: &Value, count: u64) -> Result<(), &'static str> {
    match value {
        Value::Noop => Ok(()),
        Value::Batch(_) if count != 1 => Err("a batch over more than one slot"),
        Value::Batch(bytes) => check_batch(bytes).map_err(|_| "a batch that does not parse"),
    }
}

/// Runs in slot order, none overlapping another (as every sender reads them from a log): the
/// slots they cover add up to at most [`SLOT_MAX`], and a receiver walking them slot by slot
/// walks each once (a `Chosen` only within its accept window).
fn check_runs(runs: &[SlotRun]) -> Result<(), &'static str> {
    let mut end = Slot(0);
    for run in runs {
        check_ballot(run.ballot)?;
        check_range(run.first_slot, run.count)?;
        check_value(&run.value, run.count)?;
        if run.first_slot < end {
            return Err("runs out of slot order or overlapping");
        }
        end = run.end_slot();
    }
    Ok(())
}

/// A run of consecutive slots holding one value under one ballot. Only no-ops span more than
/// one slot (a skip, or a filled hole); a batch run has `count == 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRun {
    /// The first slot of the run.
    pub first_slot: Slot,
    /// How many slots the run covers, at least one.
    pub count: u64,
    /// The ballot the value was accepted in (`Ballot::ZERO` where only the value matters).
    pub ballot: Ballot,
    /// The value of every slot in the run.
    pub value: Value,
    /// True if the sender knows the value is chosen (protocol.md §3.2).
    pub chosen: bool,
}

impl SlotRun {
    /// The slot after the run.
    #[must_use]
    pub fn end_slot(&self) -> Slot {
        self.first_slot.plus(self.count)
    }
}

/// A message between two replicas of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Pre-vote: would you take part in an election for a ballot of `round`? Changes nothing at
    /// the receiver, so a node cut off from the leader cannot raise ballots (protocol.md §3.1).
    Probe {
        /// The round the candidate would use.
        round: u64,
        /// The candidate's commit position: voters that know more refuse it.
        commit_index: Slot,
    },
    /// The answer to a [`Message::Probe`].
    ProbeReply {
        /// The round probed.
        round: u64,
        /// False if the sender still hears a live leader (stickiness).
        granted: bool,
        /// The sender's promised ballot, so the candidate picks a round above it.
        promised: Ballot,
    },
    /// Phase 1a: promise `ballot` and report what you accepted from `from_slot` on.
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// The first slot to report.
        from_slot: Slot,
    },
    /// Phase 1b, sent only once the promise is durable. Reports at most a bounded number of
    /// runs; `next_slot` asks the candidate to prepare again from there for the rest.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The first slot this report covers.
        from_slot: Slot,
        /// Accepted (or known chosen) values from `from_slot` on, in slot order.
        runs: Vec<SlotRun>,
        /// `None` if this is the last part of the report.
        next_slot: Option<Slot>,
    },
    /// Phase 2a: accept `value` in `count` slots from `first_slot` under `ballot`.
    Accept {
        /// The leader's ballot.
        ballot: Ballot,
        /// The first slot.
        first_slot: Slot,
        /// How many slots, more than one only for a no-op.
        count: u64,
        /// The value.
        value: Value,
        /// Every slot below this is chosen (the leader's commit position, piggybacked).
        commit_index: Slot,
    },
    /// Phase 2b, sent only once the acceptance is durable.
    Accepted {
        /// The ballot accepted in.
        ballot: Ballot,
        /// The first slot.
        first_slot: Slot,
        /// How many slots.
        count: u64,
    },
    /// A prepare or accept under `ballot` was refused because `promised` is higher.
    Rejected {
        /// The refused ballot.
        ballot: Ballot,
        /// The higher ballot the sender has promised.
        promised: Ballot,
    },
    /// The leader is alive; every slot below `commit_index` is chosen.
    Heartbeat {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's commit position.
        commit_index: Slot,
        /// The leader's latest read-index round (0: none yet), echoed in the ack: a majority's
        /// acks of round `r` confirm the reads registered before it (protocol.md §5.3).
        read_round: u64,
    },
    /// A voter hears the leader of `ballot` (keeps the leader's quorum check alive).
    HeartbeatAck {
        /// The leader's ballot.
        ballot: Ballot,
        /// The heartbeat's read-index round.
        read_round: u64,
    },
    /// Send me chosen values from `from_slot` on.
    CatchUpRequest {
        /// The first slot the sender lacks.
        from_slot: Slot,
    },
    /// A learner subscribes to this replica's committed log: it has every slot below
    /// `from_slot` and wants the rest as it is committed (sent as `Chosen`). Repeated every
    /// heartbeat interval and as it progresses: it renews the subscription, opens the flow
    /// control window and reports loss (protocol.md §3.6).
    Subscribe {
        /// The first slot the sender lacks.
        from_slot: Slot,
    },
    /// A piece of the sender's snapshot (its encoding, `crate::storage::snapshot`): every slot below
    /// `slot` is applied in it. Sent instead of committed runs its WAL no longer holds, in
    /// pieces of bounded size, the first unasked, each next one when the receiver pulls it
    /// ([`Message::SnapshotPull`]). Handled by the shard around the replica, which assembles,
    /// checks and installs it (`Replica::install_snapshot`).
    Snapshot {
        /// The snapshot's slot.
        slot: Slot,
        /// Where in the encoding `bytes` starts.
        offset: u64,
        /// The whole encoding's length.
        total: u64,
        /// `offset..offset + bytes.len()` of the encoding.
        bytes: Bytes,
        /// The sender's commit position.
        commit_index: Slot,
    },
    /// The receiver of a snapshot asks for its piece from `offset` on.
    SnapshotPull {
        /// The snapshot's slot.
        slot: Slot,
        /// The first byte missing.
        offset: u64,
    },
    /// A voter whose log may have lost acknowledged records (damage, or a data directory that
    /// is new or was wiped) asks another voter what it holds, before it votes again
    /// (protocol.md §3.9). Answered by every voter, repairing or not.
    RepairQuery {
        /// Chosen afresh by the asker at each start, echoed in the report, so that a report
        /// meant for an earlier incarnation is never taken.
        nonce: u64,
    },
    /// The answer to a [`Message::RepairQuery`]: what the sender holds now.
    RepairReport {
        /// The query's nonce.
        nonce: u64,
        /// The sender's promised ballot.
        promised: Ballot,
        /// One past the highest slot the sender holds anything for (accepted or chosen).
        slot_end: Slot,
        /// The sender's commit position.
        commit_index: Slot,
    },
    /// Chosen values, in slot order without gaps, from the first run's slot.
    Chosen {
        /// The runs, each with `chosen == true`.
        runs: Vec<SlotRun>,
        /// The sender's commit position: more may follow up to here.
        commit_index: Slot,
    },
    /// A follower or learner asks the leader for a read index, for the reads of its own
    /// clients that arrived before it asked (protocol.md §5.5).
    ReadIndexRequest {
        /// Chosen by the asker (different at every start), echoed in the reply.
        nonce: u64,
    },
    /// The leader's answer to a [`Message::ReadIndexRequest`], once a round that started after
    /// the request arrived confirmed its leadership: every write acknowledged before the
    /// request was sent lies below `read_index`. `None`: the sender does not lead (any more).
    ReadIndexReply {
        /// The request's nonce.
        nonce: u64,
        /// The read index, or `None`.
        read_index: Option<Slot>,
    },
    /// Leadership transfer (protocol.md §3.10): the leader of `ballot`, which accepts no new
    /// proposals and answers no lease reads any more, has everything it proposed chosen and
    /// tells every voter so. Each stops counting that leader as live (it helps the next
    /// candidate at once); `to` starts an election at once, without a pre-vote.
    TimeoutNow {
        /// The releasing leader's ballot.
        ballot: Ballot,
        /// The voter that is to stand at once.
        to: NodeId,
    },
}

impl Message {
    /// Checks every value this message carries, as sent by `from` (protocol.md §2.1). Cheap:
    /// a few comparisons, one per run, and a scan of the lengths in each batch.
    ///
    /// # Errors
    /// The first value out of range, or a batch that does not parse.
    pub fn validate(&self, from: NodeId) -> Result<(), InvalidMessage> {
        let checked = match self {
            Message::Probe { round, commit_index } => {
                check_round(*round).and_then(|()| check_slot(*commit_index))
            }
            Message::ProbeReply { round, granted: _, promised } => {
                check_round(*round).and_then(|()| check_ballot(*promised))
            }
            Message::Prepare { ballot, from_slot } => {
                check_own_ballot(*ballot, from).and_then(|()| check_slot(*from_slot))
            }
            Message::Promise { ballot, from_slot, runs, next_slot } => check_ballot(*ballot)
                .and_then(|()| check_slot(*from_slot))
                .and_then(|()| next_slot.map_or(Ok(()), check_slot))
                .and_then(|()| check_runs(runs)),
            Message::Accept { ballot, first_slot, count, value, commit_index } => {
                check_own_ballot(*ballot, from)
                    .and_then(|()| check_range(*first_slot, *count))
                    .and_then(|()| check_slot(*commit_index))
                    .and_then(|()| check_value(value, *count))
            }
            Message::Accepted { ballot, first_slot, count } => {
                check_ballot(*ballot).and_then(|()| check_range(*first_slot, *count))
            }
            Message::Rejected { ballot, promised } => {
                check_ballot(*ballot).and_then(|()| check_ballot(*promised))
            }
            Message::Heartbeat { ballot, commit_index, read_round: _ } => {
                check_own_ballot(*ballot, from).and_then(|()| check_slot(*commit_index))
            }
            Message::HeartbeatAck { ballot, read_round: _ } => check_ballot(*ballot),
            Message::CatchUpRequest { from_slot } | Message::Subscribe { from_slot } => {
                check_slot(*from_slot)
            }
            Message::Snapshot { slot, offset, total, bytes, commit_index } => {
                check_slot(*slot).and_then(|()| check_slot(*commit_index)).and_then(|()| {
                    // The offset of a pull is checked against the snapshot file where it is
                    // read; a piece must lie within the length it announces.
                    let end = offset.checked_add(bytes.len() as u64);
                    match end {
                        Some(end) if end <= *total => Ok(()),
                        _ => Err("a piece beyond the snapshot's length"),
                    }
                })
            }
            Message::SnapshotPull { slot, offset: _ } => check_slot(*slot),
            Message::Chosen { runs, commit_index } => {
                check_slot(*commit_index).and_then(|()| check_runs(runs))
            }
            Message::RepairQuery { nonce: _ } | Message::ReadIndexRequest { nonce: _ } => Ok(()),
            Message::ReadIndexReply { nonce: _, read_index } => {
                read_index.map_or(Ok(()), check_slot)
            }
            Message::TimeoutNow { ballot, to: _ } => check_own_ballot(*ballot, from),
            Message::RepairReport { nonce: _, promised, slot_end, commit_index } => {
                check_ballot(*promised)
                    .and_then(|()| check_slot(*slot_end))
                    .and_then(|()| check_slot(*commit_index))
            }
        };
        checked.map_err(|reason| InvalidMessage { kind: self.kind(), reason })
    }

    /// A short name for traces and errors.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Probe { .. } => "probe",
            Message::ProbeReply { .. } => "probe-reply",
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Rejected { .. } => "rejected",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatAck { .. } => "heartbeat-ack",
            Message::CatchUpRequest { .. } => "catch-up-request",
            Message::Subscribe { .. } => "subscribe",
            Message::RepairQuery { .. } => "repair-query",
            Message::RepairReport { .. } => "repair-report",
            Message::Chosen { .. } => "chosen",
            Message::Snapshot { .. } => "snapshot",
            Message::SnapshotPull { .. } => "snapshot-pull",
            Message::ReadIndexRequest { .. } => "read-index-request",
            Message::ReadIndexReply { .. } => "read-index-reply",
            Message::TimeoutNow { .. } => "timeout-now",
        }
    }
}

/// A message with its sender and cluster, as the runtime hands it in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The cluster the sender belongs to; a mismatch is refused.
    pub cluster_id: ClusterId,
    /// The sender.
    pub from: NodeId,
    /// The message.
    pub message: Message,
}

/// What a replica writes to its log. Recovery replays these (protocol.md §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The replica learned that `value` is chosen in `count` slots from `first_slot`, from a
    /// peer, with a value its own log did not hold. Not a vote: it lets a restart keep what it
    /// knew without asking again.
    Chosen {
        /// The first slot.
        first_slot: Slot,
        /// How many slots.
        count: u64,
        /// The value.
        value: Value,
    },
    /// Every slot below `commit_index` is chosen, with the value the records before this one
    /// give it. Written lazily: a lost one only costs catch-up after a restart.
    Committed {
        /// The commit position.
        commit_index: Slot,
    },
    /// The replica promised `ballot`: it will accept nothing lower.
    Promised {
        /// The ballot.
        ballot: Ballot,
    },
    /// The replica accepted `value` in `count` slots from `first_slot` under `ballot`; this also
    /// promises `ballot`.
    Accepted {
        /// The ballot.
        ballot: Ballot,
        /// The first slot.
        first_slot: Slot,
        /// How many slots.
        count: u64,
        /// The value.
        value: Value,
    },
}

/// What the replica asks its runtime to do. Drained after every input, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `message` to `to`. Never addressed to this replica itself.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Append `record` to the log. Once it and every earlier persist are durable, the runtime
    /// calls `on_persisted(seq)` and then delivers `then_send` (to this replica itself too,
    /// through `on_message`): a reply that may only leave after a disk write carries it here.
    Persist {
        /// Persists are numbered from one, in the order they are issued.
        seq: PersistSeq,
        /// What to write.
        record: Record,
        /// The reply held until the record is durable.
        then_send: Option<(NodeId, Message)>,
    },
    /// `count` slots from `first_slot` are chosen with `value`: apply them. Commits come in slot
    /// order, each slot exactly once per replica lifetime.
    Commit {
        /// The first slot.
        first_slot: Slot,
        /// How many slots (more than one only for no-ops).
        count: u64,
        /// The value.
        value: Value,
    },
    /// Send `to` the committed runs of slots `from_slot..end_slot` in `Chosen` messages (with
    /// `commit_index`), read from the log on disk: this replica no longer holds them in memory
    /// (they are below its compacted base). The runtime stops early if its log cannot tell
    /// (the receiver then asks again).
    SendArchived {
        /// The receiver.
        to: NodeId,
        /// The first slot to send.
        from_slot: Slot,
        /// The slot after the last one to send.
        end_slot: Slot,
        /// The sender's commit position, for the messages.
        commit_index: Slot,
    },
    /// Reads registered by [`crate::core::Replica::read`] are confirmed: answer each from the
    /// state machine once every slot below its index is applied (protocol.md §5.3).
    ReadReady {
        /// The reads, each with its index.
        reads: Vec<(RequestId, Slot)>,
    },
    /// Leadership ended before these reads were confirmed, or (reads through the leader) no
    /// leader gave their index in time: tell their clients to go to the leader.
    ReadsAborted {
        /// The reads.
        ids: Vec<RequestId>,
    },
    /// The repair begun by [`crate::core::Replica::start_repair`] is over and durable: the
    /// runtime may forget that the log needed one (`Wal::finish_repair`). The replica votes
    /// again from now on.
    Repaired,
}
