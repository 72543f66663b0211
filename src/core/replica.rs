//! One replica of one shard: acceptor, proposer and learner of Multi-Paxos in one pure state
//! machine. Inputs are method calls; outputs are [`Action`]s the runtime drains. No I/O, no
//! clock, no threads: time is the tick count, randomness a seeded generator (protocol.md §1).
//!
//! The rules, numbered in `docs/protocol.md`:
//! - I1 ballots are unique per node and a replica's promise never decreases;
//! - I2 a leader proposes at most one value per slot per ballot, and in a slot that may hold a
//!   chosen value it proposes that value (phase 1 recovery);
//! - I3 a replica acknowledges an acceptance or promise only after it is durable;
//! - I4 a slot commits on a majority of durable acceptances under the leader's own ballot;
//! - I5 commits are emitted in slot order, once each;
//! - I6 queues are bounded: a full pipeline with a full batch answers `Busy`;
//! - I7 learners never vote and never count in a quorum.
//!
//! Messages are input, not state: [`Replica::check_envelope`] refuses, before anything is read,
//! one from another cluster, from a node the shard does not know, with a value out of range
//! (protocol.md §2.1), or that no correct sender sends. The arithmetic behind it then never
//! overflows; the assertions left are about this replica's own state.

use std::collections::{BTreeMap, VecDeque};

use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::batch::{BatchBuilder, Value};
use super::config::{Config, ConfigError};
use super::election::ElectionTimer;
use super::feed::Feed;
use super::log::Log;
use super::message::{Action, Envelope, InvalidMessage, Message, Record, SlotRun};
use super::quorum::{VoteSet, Voters};
use super::read_index::{
    Consistency, Freshness, ReadPath, ReadRounds, Reader, Staleness, ThroughLeader,
};
use super::repair::Repair;
use super::types::{Ballot, NodeId, PersistSeq, ROUND_MAX, RequestId, Slot};

/// The role of a replica in its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind {
    /// Accepts what the leader proposes.
    Follower,
    /// Pre-voting or running phase 1.
    Candidate,
    /// Owns a ballot and proposes.
    Leader,
    /// Only learns chosen values.
    Learner,
}

/// Why a leadership transfer was refused ([`Replica::transfer_leadership`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// This replica does not lead; `hint` is the leader it last heard, if any.
    #[error("not the leader (leader hint: {hint:?})")]
    NotLeader {
        /// The leader this replica last heard.
        hint: Option<NodeId>,
    },
    /// The leader itself was named.
    #[error("this replica already leads")]
    ToSelf,
    /// The node named is not a voter of this shard (a learner, or unknown).
    #[error("node {} is not another voter of this shard", .0.0)]
    NotAVoter(NodeId),
    /// A transfer is already under way, to the node named.
    #[error("a transfer to node {} is under way", .0.0)]
    UnderWay(NodeId),
}

/// Why a proposal was not taken. Expected outcomes, not failures (docs/style.md, Errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This replica does not lead; `hint` is the leader it last heard, if any.
    #[error("not the leader (leader hint: {hint:?})")]
    NotLeader {
        /// The leader this replica last heard.
        hint: Option<NodeId>,
    },
    /// The pipeline and the open batch are full: try again shortly.
    #[error("busy: the pipeline and the open batch are full")]
    Busy,
    /// Refused for good before it was proposed; the reason says why.
    #[error("refused: {0}")]
    Refused(&'static str),
    /// The command can never fit in a batch.
    #[error("command of {payload_bytes} bytes exceeds the batch limit of {batch_bytes_max} bytes")]
    TooLarge {
        /// The payload's size.
        payload_bytes: usize,
        /// The configured batch limit.
        batch_bytes_max: usize,
    },
    /// A stale read whose member is further behind than the read's bound allows: refused
    /// rather than answered older (protocol.md §5.5).
    #[error(
        "this member may be {behind_slots} slots and {behind_ms} ms behind its leader, beyond \
         the read's bound"
    )]
    TooStale {
        /// Committed slots the member has heard of and not applied.
        behind_slots: u64,
        /// Milliseconds since it last knew itself up to date, on its own clock.
        behind_ms: u64,
    },
    /// A skip longer than configured.
    #[error("skip of {slots} slots exceeds skip_slots_max ({skip_slots_max})")]
    SkipTooLong {
        /// Slots asked for.
        slots: u64,
        /// The configured limit.
        skip_slots_max: u64,
    },
}

/// A message the replica refused: it changed nothing. Log it; a runtime that reads the message
/// from a connection closes that connection (the codec runs the same range checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefusedMessage {
    /// It came from another cluster.
    #[error("message from cluster {got} refused: this is cluster {expected}")]
    WrongCluster {
        /// The sender's cluster id.
        got: u64,
        /// This replica's cluster id.
        expected: u64,
    },
    /// It came from a node this shard does not know.
    #[error("message from unknown node {0} refused")]
    UnknownNode(u16),
    /// It carries a value out of range, or is not one its sender sends (protocol.md §2.1).
    #[error("message from node {from}: {invalid}")]
    Invalid {
        /// The sender.
        from: u16,
        /// What is wrong with it.
        invalid: InvalidMessage,
    },
    /// An accept of another value, in a ballot at or above the one it was chosen in, for a
    /// slot this replica knows chosen: a correct leader proposes the chosen value there (I2).
    #[error("accept under {ballot} refused: slot {slot} is chosen with another value")]
    Contradicts {
        /// The slot.
        slot: u64,
        /// The accept's ballot.
        ballot: Ballot,
    },
}

/// An Accept run the leader has sent and not yet seen chosen.
#[derive(Clone, Debug)]
struct Proposal {
    first_slot: Slot,
    count: u64,
    value: Value,
    acks: VoteSet,
    sent_tick: u64,
    chosen: bool,
}

#[derive(Debug)]
struct LeaderState {
    ballot: Ballot,
    next_slot: Slot,
    in_flight: VecDeque<Proposal>,
    /// Runs recovered in phase 1, proposed before any new batch.
    recovery: VecDeque<SlotRun>,
    /// The tick each voter was last heard from (check-quorum).
    heard_tick: Vec<u64>,
    heartbeat_due_tick: u64,
    /// The first slot past what phase 1 recovered: no read index is below it.
    first_own_slot: Slot,
    /// Reads being confirmed (protocol.md §5.3).
    reads: ReadRounds,
    /// Lease reads are answered at once while `now` is below this (protocol.md §5.4).
    lease_until_tick: u64,
    /// ... and at or past this: an election timeout after this leadership began, or never
    /// once it began handing leadership away.
    lease_reads_from_tick: u64,
    /// A transfer of leadership under way (protocol.md §3.10).
    transfer: Option<Transfer>,
}

/// A leader handing its leadership to another voter (protocol.md §3.10).
#[derive(Debug)]
struct Transfer {
    to: NodeId,
    /// The transfer is given up at this tick if the leader still leads (an election timeout
    /// after it began): it takes proposals again, still without lease reads.
    until_tick: u64,
    /// `TimeoutNow` went out (once everything proposed was chosen).
    sent: bool,
}

/// How far a voter's phase 1 report has come. Parts are asked for one at a time, and only the
/// part asked for is taken, so duplicated or late parts cannot multiply requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PromiseProgress {
    /// Waiting for the report part that starts at this slot.
    Expecting(Slot),
    Complete,
}

#[derive(Debug)]
struct PrepareState {
    ballot: Ballot,
    from_slot: Slot,
    progress: Vec<PromiseProgress>,
    /// Per slot: the highest-ballot value reported, and whether a reporter knew it chosen.
    recovered: BTreeMap<Slot, (Ballot, Value, bool)>,
    resend_tick: u64,
}

#[derive(Debug)]
enum Role {
    Follower,
    Learner,
    Probing { round: u64, granted: VoteSet },
    Preparing(Box<PrepareState>),
    Leader(Box<LeaderState>),
}

/// One shard replica. See the module docs.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    voters: Voters,
    /// The other voters, in id order (no allocation to iterate them).
    peers: Vec<NodeId>,
    rng: Xoshiro256PlusPlus,
    now_tick: u64,
    role: Role,
    /// The leader last heard, for redirects.
    leader_hint: Option<NodeId>,
    /// Highest round seen anywhere; a new ballot goes above it.
    round_seen_max: u64,
    election: ElectionTimer,
    promised: Ballot,
    promised_durable: Ballot,
    /// Persists whose ballot becomes durable with them.
    pending_promises: VecDeque<(PersistSeq, Ballot)>,
    log: Log,
    /// Every slot below is chosen here and its commit was emitted.
    commit_index: Slot,
    /// Bytes of the batches of the committed slots still in memory (from the base up).
    committed_bytes: u64,
    /// The commit position last written to the log.
    commit_index_persisted: Slot,
    /// The highest commit position a leader or peer has told us of.
    known_commit_index: Slot,
    catch_up_due_tick: u64,
    persist_seq_next: u64,
    persisted: PersistSeq,
    batch: BatchBuilder,
    actions: Vec<Action>,
    /// Learners fed from this replica's committed log (protocol.md §3.6).
    subscribers: Vec<Subscriber>,
    /// A learner's own subscription.
    subscription: Subscription,
    /// Set while the log may lack acknowledged records: no votes until it is over (§3.9).
    repair: Option<Repair>,
    /// Reads of this replica's clients waiting for a read index from the leader (§5.5).
    through_leader: ThroughLeader,
    /// When this replica last knew it was up to date (stale reads' bound, §5.5).
    freshness: Freshness,
    /// The ballot of a leader that handed its leadership away (`TimeoutNow`): its messages no
    /// longer count as hearing a live leader, so this voter helps its successor at once.
    released: Option<Ballot>,
}

/// A learner this replica feeds, until its lease runs out.
#[derive(Debug)]
struct Subscriber {
    node: NodeId,
    feed: Feed,
    lease_until_tick: u64,
}

/// Where a learner gets committed runs from: its configured upstream first, then the voters,
/// a follower before the leader. It moves on when the source stops bringing progress.
#[derive(Debug, Default)]
struct Subscription {
    source: Option<NodeId>,
    /// Position in the candidate list of the current source.
    index: usize,
    /// When the current source was chosen.
    chosen_tick: u64,
    /// When the learner last made progress or was up to date.
    progress_tick: u64,
    report_due_tick: u64,
    /// The position last reported to the source.
    reported: Slot,
}

impl Replica {
    /// A replica with an empty log.
    ///
    /// # Errors
    /// The configuration's first bad value.
    pub fn new(config: Config) -> Result<Replica, ConfigError> {
        Replica::restore(config, std::iter::empty())
    }

    /// A replica rebuilt from the records its log kept, in the order they were written.
    ///
    /// # Errors
    /// The configuration's first bad value.
    pub fn restore<'a>(
        config: Config,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<Replica, ConfigError> {
        let mut replica = Replica::recovering(config)?;
        for record in records {
            replica.replay(record);
        }
        replica.finish_recovery();
        Ok(replica)
    }

    /// A replica to rebuild from its log: [`Replica::replay`] each record in the order they
    /// were written, then [`Replica::finish_recovery`] before anything else.
    ///
    /// # Errors
    /// The configuration's first bad value.
    pub fn recovering(config: Config) -> Result<Replica, ConfigError> {
        config.validate()?;
        let voters = Voters::new(config.voters.clone());
        let peers: Vec<NodeId> =
            voters.ids().iter().copied().filter(|node| *node != config.node).collect();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(config.random_seed);
        let mut election = ElectionTimer::new(config.election_timeout_ticks, 0, &mut rng);
        if config.read_lease {
            // A leader may hold a lease that counted this replica's ack from before it
            // restarted: help no candidate for an election timeout, as if it had just heard
            // that leader (protocol.md §5.4).
            election.assume_leader_heard(0);
        }
        let role = if config.is_learner() { Role::Learner } else { Role::Follower };
        let replica = Replica {
            batch: BatchBuilder::new(config.batch_bytes_max),
            voters,
            peers,
            rng,
            now_tick: 0,
            role,
            leader_hint: None,
            round_seen_max: 0,
            election,
            promised: Ballot::ZERO,
            promised_durable: Ballot::ZERO,
            pending_promises: VecDeque::with_capacity(config.pipeline_depth_max * 2),
            log: Log::default(),
            commit_index: Slot(0),
            committed_bytes: 0,
            commit_index_persisted: Slot(0),
            known_commit_index: Slot(0),
            catch_up_due_tick: 0,
            persist_seq_next: 1,
            persisted: PersistSeq(0),
            actions: Vec::with_capacity(config.pipeline_depth_max * 4),
            subscribers: Vec::new(),
            subscription: Subscription::default(),
            repair: None,
            through_leader: ThroughLeader::default(),
            freshness: Freshness::default(),
            released: None,
            config,
        };
        Ok(replica)
    }

    /// Replays one record of the log. What was committed before the restart is committed
    /// again, in order (`Action::Commit`), as soon as the records say so, so that the state
    /// machine (rebuilt from nothing until snapshots exist) sees the whole log while the
    /// replica keeps only `retain_slots` of it; a runtime may take the actions as it goes.
    pub fn replay(&mut self, record: &Record) {
        if let Record::Promised { ballot } | Record::Accepted { ballot, .. } = record {
            // The first `Promised` may come from the WAL's metadata (the promise of a released
            // prefix), above the records kept after it.
            if *ballot > self.promised {
                self.raise_promise(*ballot);
            }
        }
        self.log.replay(record);
        if let Record::Committed { .. } = record {
            // A chosen slot keeps its value whatever later records say (`Log::accept`), so
            // committing now gives what committing after the last record would.
            self.maybe_advance_commit();
        }
    }

    /// Every slot below `slot` is applied in a snapshot that is now durable (taken here and
    /// loaded at start-up, before [`Replica::replay`], or received from a peer and installed):
    /// the replica goes on from `slot` as if it had committed them. Slots it held below are
    /// forgotten whatever they held; a voter then never promises below `slot` (§3.2.6, the
    /// base). `commit_index` is what the sender said of its own commit position. Returns false,
    /// changing nothing, if the replica had committed as far already.
    ///
    /// # Panics
    /// `Commit` actions wait to be taken: the state machine must have applied them first.
    pub fn install_snapshot(&mut self, slot: Slot, commit_index: Slot) -> bool {
        if slot <= self.commit_index {
            return false;
        }
        assert!(
            !self.actions.iter().any(|action| matches!(action, Action::Commit { .. })),
            "install a snapshot only after taking the commits before it"
        );
        if !matches!(self.role, Role::Follower | Role::Learner) {
            // A leader or candidate this far behind is stale; what it proposed below `slot`
            // is decided already.
            self.step_down();
        }
        self.log.skip_below(slot);
        self.commit_index = slot;
        // What was committed here is all below the new base now.
        self.committed_bytes = 0;
        // The snapshot is the durable statement that everything below is committed.
        self.commit_index_persisted = self.commit_index_persisted.max(slot);
        self.known_commit_index = self.known_commit_index.max(commit_index).max(slot);
        self.subscription.progress_tick = self.now_tick;
        self.catch_up_due_tick = self.now_tick;
        self.maybe_advance_commit();
        self.maybe_request_catch_up();
        true
    }

    /// A piece of a snapshot ahead of this replica arrived and was taken (the runtime
    /// assembles them, §3.8): for a learner that is progress from its source, so it does not
    /// move to another, whose snapshot (another one) would start the transfer over.
    pub fn on_snapshot_piece(&mut self) {
        self.subscription.progress_tick = self.now_tick;
    }

    /// Ends [`Replica::replay`]: commits what the whole log makes committed, and takes the
    /// promise the records carry as durable.
    pub fn finish_recovery(&mut self) {
        self.promised_durable = self.promised;
        self.round_seen_max = self.promised.round;
        self.maybe_advance_commit();
        self.commit_index_persisted = self.commit_index;
    }

    /// Begins a repair (protocol.md §3.9): the log this replica was rebuilt from may lack
    /// records it acknowledged (the WAL reported damage, or the data directory was empty,
    /// which a new node and a wiped one share). Until every other voter has said what it holds
    /// and this replica has committed, durably, up to the highest slot any of them holds, it
    /// neither promises, accepts nor stands for election; [`Action::Repaired`] says when it is
    /// over. `nonce` must differ between starts (the runtime's randomness): it tells this
    /// incarnation's reports from older ones. Call it after [`Replica::finish_recovery`].
    /// A learner never votes: its repair is over at once (it catches up as it always does).
    pub fn start_repair(&mut self, nonce: u64) {
        if self.config.is_learner() {
            self.actions.push(Action::Repaired);
            return;
        }
        assert!(matches!(self.role, Role::Follower), "a repair starts before any election");
        self.repair = Some(Repair::new(nonce, self.my_voter_index()));
        self.maybe_finish_survey();
    }

    /// True while a repair is under way ([`Replica::start_repair`]).
    #[must_use]
    pub fn is_repairing(&self) -> bool {
        self.repair.is_some()
    }

    // ----- Observers ---------------------------------------------------------------------

    /// This replica's node.
    #[must_use]
    pub fn node(&self) -> NodeId {
        self.config.node
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current role.
    #[must_use]
    pub fn role(&self) -> RoleKind {
        match self.role {
            Role::Follower => RoleKind::Follower,
            Role::Learner => RoleKind::Learner,
            Role::Probing { .. } | Role::Preparing(_) => RoleKind::Candidate,
            Role::Leader(_) => RoleKind::Leader,
        }
    }

    /// The leader's ballot if this replica leads.
    #[must_use]
    pub fn leader_ballot(&self) -> Option<Ballot> {
        match &self.role {
            Role::Leader(leader) => Some(leader.ballot),
            _ => None,
        }
    }

    /// The leader this replica last heard (itself if it leads).
    #[must_use]
    pub fn leader_hint(&self) -> Option<NodeId> {
        self.leader_hint
    }

    /// The highest ballot promised (in memory; durable once its persist completes).
    #[must_use]
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// Every slot below this is committed here.
    #[must_use]
    pub fn commit_index(&self) -> Slot {
        self.commit_index
    }

    /// The log's in-memory image.
    #[must_use]
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Offers a copy of `slot`'s batch `original` that lives elsewhere (the WAL's mapping):
    /// kept instead of the replica's own if the slot still holds `original`, so committed
    /// batches stop costing heap memory. Changes nothing observable.
    pub fn share_batch(
        &mut self,
        slot: Slot,
        bytes: bytes::Bytes,
        original: &bytes::Bytes,
    ) -> bool {
        self.log.share_batch(slot, bytes, original)
    }

    /// Moves the actions produced so far onto the end of `out` (no allocation once `out` has
    /// grown to its working size).
    pub fn take_actions(&mut self, out: &mut Vec<Action>) {
        out.append(&mut self.actions);
    }

    // ----- Inputs ------------------------------------------------------------------------

    /// Ticks since the replica was made: its clock, which the shard's leader also times its
    /// state machine's timers by (a lease's TTL).
    #[must_use]
    pub fn now_tick(&self) -> u64 {
        self.now_tick
    }

    /// `ticks` ticks of time have passed at once (a runtime whose thread was held catches up
    /// with its clock, so that the tick count never lags real time: leases rely on it,
    /// protocol.md §5.4). Everything a tick does runs once, at the new time; every rule is a
    /// deadline, so nothing is lost by not running the ticks between.
    pub fn on_ticks(&mut self, ticks: u64) {
        if ticks == 0 {
            return;
        }
        self.now_tick += ticks - 1;
        self.on_tick();
    }

    /// One tick of time has passed.
    pub fn on_tick(&mut self) {
        self.now_tick += 1;
        let now = self.now_tick;
        match &mut self.role {
            Role::Follower if self.repair.is_some() => self.repair_tick(),
            Role::Follower | Role::Probing { .. } => {
                if self.election.expired(now) {
                    self.start_probe();
                }
            }
            Role::Learner => self.learner_tick(),
            Role::Preparing(prepare) => {
                if self.election.expired(now) {
                    self.start_probe();
                } else if now >= prepare.resend_tick {
                    // Prepares and promises may be lost: ask again for each part still missing.
                    prepare.resend_tick = now + u64::from(self.config.heartbeat_interval_ticks);
                    let ballot = prepare.ballot;
                    let waiting: Vec<(NodeId, Slot)> = prepare
                        .progress
                        .iter()
                        .enumerate()
                        .filter_map(|(index, progress)| match progress {
                            PromiseProgress::Expecting(slot) => {
                                Some((self.voters.ids()[index], *slot))
                            }
                            PromiseProgress::Complete => None,
                        })
                        .filter(|(node, _)| *node != self.config.node)
                        .collect();
                    for (node, from_slot) in waiting {
                        self.send(node, Message::Prepare { ballot, from_slot });
                    }
                }
            }
            Role::Leader(_) => self.leader_tick(),
        }
        self.read_index_tick();
        self.maybe_request_catch_up();
        self.subscribers.retain(|subscriber| subscriber.lease_until_tick >= now);
        if self.commit_index > self.commit_index_persisted {
            self.commit_index_persisted = self.commit_index;
            self.persist(Record::Committed { commit_index: self.commit_index }, None);
        }
    }

    /// A message arrived.
    ///
    /// # Errors
    /// See [`Replica::check_envelope`]; also an accept that contradicts a slot known chosen.
    /// The replica is unchanged then.
    pub fn on_message(&mut self, envelope: Envelope) -> Result<(), RefusedMessage> {
        self.check_envelope(&envelope)?;
        self.dispatch(envelope.from, envelope.message)
    }

    /// Whether this replica takes `envelope` (`on_message` checks it first; the shard checks
    /// the snapshot messages it handles itself with it too). Reads nothing but the envelope
    /// and the configuration.
    ///
    /// # Errors
    /// It comes from another cluster or from a node the shard does not know; it carries a value
    /// out of range ([`Message::validate`]); it is a proposal (prepare, accept, heartbeat) from
    /// a learner; or it names this replica as its sender and is not one of the replies it
    /// sends itself (its promises and acknowledgements, delivered once durable).
    pub fn check_envelope(&self, envelope: &Envelope) -> Result<(), RefusedMessage> {
        if envelope.cluster_id != self.config.cluster_id {
            return Err(RefusedMessage::WrongCluster {
                got: envelope.cluster_id.0,
                expected: self.config.cluster_id.0,
            });
        }
        let from = envelope.from;
        if !self.voters.contains(from) && !self.config.learners.contains(&from) {
            return Err(RefusedMessage::UnknownNode(from.0));
        }
        let message = &envelope.message;
        let invalid = |reason| RefusedMessage::Invalid {
            from: from.0,
            invalid: InvalidMessage { kind: message.kind(), reason },
        };
        message
            .validate(from)
            .map_err(|invalid| RefusedMessage::Invalid { from: from.0, invalid })?;
        let own_reply = matches!(message, Message::Promise { .. } | Message::Accepted { .. });
        if from == self.config.node && !own_reply {
            // A replica answers a peer; answering itself breaks `send`'s rule. Its own
            // candidacy and proposals are handled by direct calls, never through here.
            return Err(invalid("names this replica as its sender"));
        }
        let proposal = matches!(
            message,
            Message::Prepare { .. } | Message::Accept { .. } | Message::Heartbeat { .. }
        );
        if proposal && !self.voters.contains(from) {
            return Err(invalid("a proposal from a node that does not vote"));
        }
        Ok(())
    }

    /// Every persist up to and including `seq` is durable.
    pub fn on_persisted(&mut self, seq: PersistSeq) {
        assert!(seq.0 < self.persist_seq_next, "persisted {seq:?} never issued");
        if seq <= self.persisted {
            return;
        }
        self.persisted = seq;
        while let Some(&(pending, ballot)) = self.pending_promises.front() {
            if pending > seq {
                break;
            }
            self.pending_promises.pop_front();
            self.promised_durable = self.promised_durable.max(ballot);
        }
        if self.repair.as_ref().and_then(|repair| repair.durable_seq).is_some_and(|due| seq >= due)
        {
            // Everything up to the survey's bound is chosen here and durable, and so is the
            // promise it raised: this log holds what the lost one held (§3.9).
            self.repair = None;
            self.actions.push(Action::Repaired);
            self.election.restart(self.now_tick, &mut self.rng);
        }
    }

    /// Proposes one command. It goes into the open batch, which leaves when the pipeline has
    /// room (at once, or at the next [`flush`](Self::flush)).
    ///
    /// # Errors
    /// `NotLeader`, `Busy` or `TooLarge`; nothing is changed then.
    pub fn propose(&mut self, id: RequestId, payload: &[u8]) -> Result<(), ProposeError> {
        self.check_takes_proposals()?;
        if payload.len().saturating_add(super::batch::COMMAND_HEADER_BYTES)
            > self.config.batch_bytes_max
        {
            return Err(ProposeError::TooLarge {
                payload_bytes: payload.len(),
                batch_bytes_max: self.config.batch_bytes_max,
            });
        }
        let full = !self.batch.fits(payload.len())
            || self.batch.commands() >= self.config.batch_commands_max;
        if full {
            self.maybe_send_proposals();
            if !self.batch.is_empty() {
                return Err(ProposeError::Busy);
            }
        }
        self.batch.push(id, payload);
        if self.batch.commands() >= self.config.batch_commands_max {
            self.maybe_send_proposals();
        }
        Ok(())
    }

    /// Registers a read that the log need not carry (protocol.md §5.3–§5.5). Once it may be
    /// answered, [`Action::ReadReady`] gives its index: answer it from the state machine once
    /// every slot below that index is applied. If it cannot be confirmed (leadership ends
    /// first, or no leader gives a follower its index in time), [`Action::ReadsAborted`] names
    /// it. A stale read is ready at once, at the commit position or `from_slot` if higher.
    ///
    /// # Errors
    /// `NotLeader` for a linearizable or lease read on a replica that does not lead; nothing
    /// is changed then.
    pub fn read(
        &mut self,
        id: RequestId,
        consistency: Consistency,
        from_slot: Slot,
    ) -> Result<ReadPath, ProposeError> {
        let now = self.now_tick;
        let commit_index = self.commit_index;
        let leader = match &mut self.role {
            Role::Leader(leader) => Some(leader),
            _ => None,
        };
        match (consistency, leader) {
            (Consistency::Stale, _) => {
                let reads = vec![(id, commit_index.max(from_slot))];
                self.actions.push(Action::ReadReady { reads });
                Ok(ReadPath::Stale)
            }
            (Consistency::Follower, None) => {
                if let Some(nonce) = self.through_leader.add(id, now) {
                    self.ask_read_index(nonce);
                }
                Ok(ReadPath::ThroughLeader)
            }
            (Consistency::Linearizable | Consistency::Lease, None) => {
                Err(ProposeError::NotLeader { hint: self.leader_hint })
            }
            (_, Some(leader)) => {
                let index = commit_index.max(leader.first_own_slot);
                let leased = self.config.read_lease
                    && now >= leader.lease_reads_from_tick
                    && now < leader.lease_until_tick;
                if consistency == Consistency::Lease && leased {
                    self.actions.push(Action::ReadReady { reads: vec![(id, index)] });
                    return Ok(ReadPath::Lease);
                }
                if let Some(round) = leader.reads.add(Reader::Local(id), index, now) {
                    self.start_read_round(round);
                }
                Ok(ReadPath::Round)
            }
        }
    }

    /// How far behind this replica may be, by what it knows (stale reads' bounds, §5.5).
    #[must_use]
    pub fn staleness(&self) -> Staleness {
        let now = self.now_tick;
        if let Role::Leader(leader) = &self.role {
            // A leader had all that was committed as long as it led: as of when a majority
            // (itself included) last acknowledged it.
            let mut heard = leader.heard_tick.clone();
            heard.sort_unstable_by(|a, b| b.cmp(a));
            let as_of = heard.get(self.voters.majority() - 1).copied().unwrap_or(now);
            return Staleness { slots: 0, ticks: now.saturating_sub(as_of) };
        }
        Staleness {
            slots: self.known_commit_index.0.saturating_sub(self.commit_index.0),
            ticks: now.saturating_sub(self.freshness.as_of_tick()),
        }
    }

    /// True if this replica leads and holds a lease it may answer lease reads from now.
    #[must_use]
    pub fn holds_lease(&self) -> bool {
        let now = self.now_tick;
        match &self.role {
            Role::Leader(leader) => {
                self.config.read_lease
                    && now >= leader.lease_reads_from_tick
                    && now < leader.lease_until_tick
            }
            _ => false,
        }
    }

    /// Seeds the nonces this replica's requests for a read index carry (§5.5) with a number
    /// that differs at every start, so that a reply meant for an earlier incarnation is never
    /// taken for this one's.
    pub fn seed_nonces(&mut self, nonce: u64) {
        self.through_leader.seed(nonce);
    }

    /// Counts the leader's own ack of read round `round` and asks every other voter for theirs.
    fn start_read_round(&mut self, round: u64) {
        let my_index = self.my_voter_index();
        let commit_index = self.commit_index;
        let Role::Leader(leader) = &self.role else { return };
        let ballot = leader.ballot;
        for index in 0..self.peers.len() {
            let message = Message::Heartbeat { ballot, commit_index, read_round: round };
            self.send(self.peers[index], message);
        }
        self.on_read_ack(my_index, ballot, round);
    }

    /// Voter `index` acked read round `round` of `ballot`: emits the reads it confirms (and
    /// answers the peers that asked for a read index), extends the lease from the round's
    /// start, and starts the next round if reads wait for one.
    fn on_read_ack(&mut self, index: usize, ballot: Ballot, round: u64) {
        let now = self.now_tick;
        let lease_ticks =
            if self.config.read_lease { Some(self.config.lease_ticks()) } else { None };
        let Role::Leader(leader) = &mut self.role else { return };
        if leader.ballot != ballot {
            return;
        }
        let voters = &self.voters;
        let Some(confirmed) = leader.reads.on_ack(index, round, now, |acks| voters.is_quorum(acks))
        else {
            return;
        };
        if let Some(lease_ticks) = lease_ticks {
            // From when the round's heartbeats left, not from when the acks came back: each
            // voter's election timeout runs from its ack, which is later (protocol.md §5.4).
            let until = confirmed.started_tick + lease_ticks;
            leader.lease_until_tick = leader.lease_until_tick.max(until);
        }
        let mut local = Vec::new();
        for (reader, read_index) in confirmed.reads {
            match reader {
                Reader::Local(id) => local.push((id, read_index)),
                Reader::Remote { node, nonce } => {
                    let reply = Message::ReadIndexReply { nonce, read_index: Some(read_index) };
                    self.send(node, reply);
                }
            }
        }
        if !local.is_empty() {
            self.actions.push(Action::ReadReady { reads: local });
        }
        if let Some(next) = confirmed.next {
            self.start_read_round(next);
        }
    }

    /// Asks the leader this replica last heard for a read index (§5.5); with none known, the
    /// request waits for the next resend.
    fn ask_read_index(&mut self, nonce: u64) {
        if let Some(leader) = self.leader_hint.filter(|leader| *leader != self.config.node) {
            self.send(leader, Message::ReadIndexRequest { nonce });
        }
    }

    /// A peer asks for a read index: registered like a read of our own if this replica leads,
    /// refused at once otherwise.
    fn on_read_index_request(&mut self, from: NodeId, nonce: u64) {
        let (now, commit_index) = (self.now_tick, self.commit_index);
        let Role::Leader(leader) = &mut self.role else {
            self.send(from, Message::ReadIndexReply { nonce, read_index: None });
            return;
        };
        let index = commit_index.max(leader.first_own_slot);
        if let Some(round) = leader.reads.add(Reader::Remote { node: from, nonce }, index, now) {
            self.start_read_round(round);
        }
    }

    fn on_read_index_reply(&mut self, nonce: u64, read_index: Option<Slot>) {
        let now = self.now_tick;
        let Some((ids, next)) = self.through_leader.on_reply(nonce, read_index, now) else {
            return;
        };
        let index = read_index.unwrap_or(Slot(0));
        self.actions
            .push(Action::ReadReady { reads: ids.into_iter().map(|id| (id, index)).collect() });
        if let Some(next) = next {
            self.ask_read_index(next);
        }
    }

    /// Resends a request for a read index that went unanswered for a heartbeat interval, to
    /// whoever leads now; aborts its reads after two election timeouts.
    fn read_index_tick(&mut self) {
        let now = self.now_tick;
        let resend = u64::from(self.config.heartbeat_interval_ticks);
        let abort = 2 * u64::from(self.config.election_timeout_ticks);
        let (again, aborted) = self.through_leader.on_tick(now, resend, abort);
        if let Some(nonce) = again {
            self.ask_read_index(nonce);
        }
        if !aborted.is_empty() {
            self.actions.push(Action::ReadsAborted { ids: aborted });
        }
    }

    /// Proposes a no-op over the next `slots` slots (a skip), after the open batch.
    ///
    /// # Errors
    /// `NotLeader`, `Busy` (pipeline full) or `SkipTooLong`.
    pub fn propose_skip(&mut self, slots: u64) -> Result<Slot, ProposeError> {
        self.check_takes_proposals()?;
        if slots == 0 || slots > self.config.skip_slots_max {
            return Err(ProposeError::SkipTooLong {
                slots,
                skip_slots_max: self.config.skip_slots_max,
            });
        }
        self.maybe_send_proposals();
        if !self.batch.is_empty() || !self.pipeline_has_room() {
            return Err(ProposeError::Busy);
        }
        let Role::Leader(leader) = &self.role else { unreachable!("checked above") };
        let first_slot = leader.next_slot;
        self.send_proposal(first_slot, slots, Value::Noop);
        Ok(first_slot)
    }

    /// Mencius's rule for an idle shard: a leader whose next slot is below `target` (where the
    /// node's other shards have committed to) and that has nothing of its own to propose
    /// skips up to it, at most `skip_slots_max` slots at a time, so that the merge of the
    /// shards' logs is not held up here. Returns the first slot skipped, if it skipped.
    /// A skip goes through Paxos like any proposal, on fresh slots only, so it never hides a
    /// chosen batch.
    pub fn skip_to(&mut self, target: Slot) -> Option<Slot> {
        let Role::Leader(leader) = &self.role else { return None };
        if leader.next_slot >= target || !self.batch.is_empty() || !leader.recovery.is_empty() {
            return None;
        }
        let slots = (target.0 - leader.next_slot.0).min(self.config.skip_slots_max);
        self.propose_skip(slots).ok()
    }

    /// Sends the open batch if the pipeline has room. The runtime calls this once it has fed in
    /// every input that arrived together, so that they share a batch (natural batching).
    pub fn flush(&mut self) {
        self.maybe_send_proposals();
        // Reads that arrived while a round was out go in a round of their own now, not after it
        // comes back (protocol.md §5.3).
        let now = self.now_tick;
        if let Role::Leader(leader) = &mut self.role {
            if let Some(round) = leader.reads.maybe_pipeline(now) {
                self.start_read_round(round);
            }
        }
    }

    // ----- Dispatch ----------------------------------------------------------------------

    fn dispatch(&mut self, from: NodeId, message: Message) -> Result<(), RefusedMessage> {
        let learner = self.config.is_learner();
        let message = if self.repair.is_some() {
            let Some(message) = self.dispatch_repairing(from, message) else { return Ok(()) };
            message
        } else {
            message
        };
        match message {
            Message::Probe { round, commit_index } if !learner => {
                self.on_probe(from, round, commit_index)
            }
            Message::ProbeReply { round, granted, promised } => {
                self.on_probe_reply(from, round, granted, promised)
            }
            Message::Prepare { ballot, from_slot } if !learner => {
                self.on_prepare(from, ballot, from_slot)
            }
            Message::Promise { ballot, from_slot, runs, next_slot } => {
                self.on_promise(from, ballot, from_slot, runs, next_slot)
            }
            Message::Accept { ballot, first_slot, count, value, commit_index } if !learner => {
                return self.on_accept(from, ballot, first_slot, count, value, commit_index);
            }
            Message::Accepted { ballot, first_slot, count } => {
                self.on_accepted(from, ballot, first_slot, count)
            }
            Message::Rejected { ballot, promised } => self.on_rejected(ballot, promised),
            Message::Heartbeat { ballot, commit_index, read_round } => {
                self.on_heartbeat(from, ballot, commit_index, read_round)
            }
            Message::HeartbeatAck { ballot, read_round } => {
                self.on_heartbeat_ack(from, ballot, read_round)
            }
            Message::CatchUpRequest { from_slot } => self.on_catch_up_request(from, from_slot),
            Message::Subscribe { from_slot } => self.on_subscribe(from, from_slot),
            Message::Chosen { runs, commit_index } => self.on_chosen(runs, commit_index),
            Message::ReadIndexRequest { nonce } => self.on_read_index_request(from, nonce),
            Message::ReadIndexReply { nonce, read_index } => {
                self.on_read_index_reply(nonce, read_index)
            }
            Message::TimeoutNow { ballot, to } if !learner => self.on_timeout_now(ballot, to),
            Message::RepairQuery { nonce } if !learner => {
                let report = Message::RepairReport {
                    nonce,
                    promised: self.promised,
                    slot_end: self.log.end_slot(),
                    commit_index: self.commit_index,
                };
                self.send(from, report);
            }
            Message::RepairReport { nonce, promised, slot_end, commit_index } => {
                self.on_repair_report(from, nonce, promised, slot_end, commit_index)
            }
            // The shard around the replica checks and installs snapshots (it holds the state
            // machine); it calls `install_snapshot` and never hands one in here.
            Message::Snapshot { .. } | Message::SnapshotPull { .. } => {}
            // Learners never vote (I7): probes, prepares and accepts to them are dropped, and
            // they have no log a voter could repair from.
            Message::Probe { .. }
            | Message::Prepare { .. }
            | Message::Accept { .. }
            | Message::TimeoutNow { .. }
            | Message::RepairQuery { .. } => {}
        }
        Ok(())
    }

    // ----- Repair (protocol.md §3.9) -----------------------------------------------------

    /// A repairing replica takes no part in votes: it refuses probes, ignores prepares, and
    /// hears accepts and heartbeats only for who leads and how far it committed (to catch up
    /// from). Returns what the usual dispatch handles, unchanged.
    fn dispatch_repairing(&mut self, from: NodeId, message: Message) -> Option<Message> {
        match message {
            Message::Probe { round, .. } => {
                let reply = Message::ProbeReply { round, granted: false, promised: self.promised };
                self.send(from, reply);
            }
            Message::Prepare { .. } => {}
            Message::Accept { ballot, commit_index, .. }
            | Message::Heartbeat { ballot, commit_index, .. } => {
                if ballot >= self.promised && ballot.node != self.config.node {
                    self.leader_hint = Some(ballot.node);
                }
                // Ballot zero: mark nothing chosen from what this log holds (it may lack the
                // leader's values); the slots come by catch-up.
                self.learn_commit_index(Ballot::ZERO, commit_index);
            }
            other => return Some(other),
        }
        None
    }

    fn repair_tick(&mut self) {
        let now = self.now_tick;
        let Some(repair) = &mut self.repair else { return };
        if repair.until.is_some() || now < repair.query_due_tick {
            return;
        }
        repair.query_due_tick = now + u64::from(self.config.heartbeat_interval_ticks);
        let (nonce, reported) = (repair.nonce, repair.reported);
        for index in 0..self.voters.len() {
            if !reported.contains(index) {
                self.send(self.voters.ids()[index], Message::RepairQuery { nonce });
            }
        }
    }

    fn on_repair_report(
        &mut self,
        from: NodeId,
        nonce: u64,
        promised: Ballot,
        slot_end: Slot,
        commit_index: Slot,
    ) {
        let Some(index) = self.voters.index_of(from) else { return };
        let Some(repair) = &mut self.repair else { return };
        if repair.nonce != nonce || !repair.on_report(index, promised, slot_end, commit_index) {
            return;
        }
        self.known_commit_index = self.known_commit_index.max(commit_index);
        self.maybe_finish_survey();
    }

    /// Once every other voter reported: raise the promise to the highest reported, and aim
    /// to commit up to the highest slot any of them holds.
    fn maybe_finish_survey(&mut self) {
        let Some(repair) = &mut self.repair else { return };
        if repair.until.is_some() || repair.reported.count() < self.voters.len() {
            return;
        }
        let until = repair.slot_end_max;
        let promised_max = repair.promised_max;
        repair.until = Some(until);
        if promised_max > self.promised {
            self.raise_promise(promised_max);
            self.persist(Record::Promised { ballot: promised_max }, None);
        }
        self.catch_up_due_tick = self.now_tick;
        self.maybe_request_catch_up();
        self.maybe_finish_repair();
    }

    /// Once committed up to the survey's bound: make that durable; the repair ends when it is.
    fn maybe_finish_repair(&mut self) {
        let Some(repair) = &self.repair else { return };
        let Some(until) = repair.until else { return };
        if repair.durable_seq.is_some() || self.commit_index < until {
            return;
        }
        // A `Committed` record written after the `Chosen` ones (and the raised promise): one
        // sync covering it covers them all.
        let seq = PersistSeq(self.persist_seq_next);
        self.commit_index_persisted = self.commit_index;
        self.persist(Record::Committed { commit_index: self.commit_index }, None);
        if let Some(repair) = &mut self.repair {
            repair.durable_seq = Some(seq);
        }
    }

    // ----- Election: pre-vote (protocol.md §3.1) -----------------------------------------

    fn start_probe(&mut self) {
        assert!(!self.config.is_learner(), "a learner never stands for election");
        self.step_down_quietly();
        self.leader_hint = None;
        self.election.forget_leader();
        self.election.restart(self.now_tick, &mut self.rng);
        let Some(round) = self.next_round() else { return };
        let mut granted = VoteSet::EMPTY;
        granted.insert(self.my_voter_index());
        self.role = Role::Probing { round, granted };
        let commit_index = self.commit_index;
        for index in 0..self.peers.len() {
            self.send(self.peers[index], Message::Probe { round, commit_index });
        }
        self.maybe_finish_probe();
    }

    fn on_probe(&mut self, from: NodeId, round: u64, commit_index: Slot) {
        let leading = matches!(self.role, Role::Leader(_) | Role::Preparing(_));
        // Stickiness: a live leader is not deposed by a node that merely lost touch with it.
        // A candidate that knows fewer commits than we do would spend its phase 1 recovering
        // what we already know is chosen: let a better-informed voter lead instead. (Safety
        // does not depend on this; among any live majority the best-informed one is granted.)
        let granted = !leading
            && !self.election.hears_live_leader(self.now_tick)
            && commit_index >= self.commit_index;
        self.send(from, Message::ProbeReply { round, granted, promised: self.promised });
    }

    fn on_probe_reply(&mut self, from: NodeId, round: u64, granted: bool, promised: Ballot) {
        self.round_seen_max = self.round_seen_max.max(promised.round);
        let Some(index) = self.voters.index_of(from) else { return };
        if let Role::Probing { round: probing, granted: set } = &mut self.role {
            if *probing == round && granted {
                set.insert(index);
                self.maybe_finish_probe();
            }
        }
    }

    fn maybe_finish_probe(&mut self) {
        let Role::Probing { granted, .. } = &self.role else { return };
        if self.voters.is_quorum(*granted) {
            self.start_prepare();
        }
    }

    // ----- Phase 1 (protocol.md §3.2) ----------------------------------------------------

    /// The round one above every round seen, or `None` once that would pass [`ROUND_MAX`]:
    /// no message may name such a round (protocol.md §2.1), so the replica stands for no
    /// more elections. Honest replicas take 2^62 elections to get there; only a peer sending
    /// a round at the bound can, and it cannot make this replica send one beyond it.
    fn next_round(&self) -> Option<u64> {
        let round = self.round_seen_max.max(self.promised.round) + 1;
        (round <= ROUND_MAX).then_some(round)
    }

    fn start_prepare(&mut self) {
        let Some(round) = self.next_round() else {
            self.step_down_quietly();
            return;
        };
        self.round_seen_max = round;
        let ballot = Ballot::new(round, self.config.node);
        let from_slot = self.commit_index;
        self.role = Role::Preparing(Box::new(PrepareState {
            ballot,
            from_slot,
            progress: vec![PromiseProgress::Expecting(from_slot); self.voters.len()],
            recovered: BTreeMap::new(),
            resend_tick: self.now_tick + u64::from(self.config.heartbeat_interval_ticks),
        }));
        for index in 0..self.peers.len() {
            self.send(self.peers[index], Message::Prepare { ballot, from_slot });
        }
        // The candidate's own acceptor promises through the same durable path (I3).
        self.on_prepare(self.config.node, ballot, from_slot);
    }

    fn on_prepare(&mut self, from: NodeId, ballot: Ballot, from_slot: Slot) {
        if ballot < self.promised {
            self.send(from, Message::Rejected { ballot, promised: self.promised });
            return;
        }
        if from_slot < self.log.base() {
            // A promise must report every value accepted from `from_slot` on, and those below
            // the base are no longer in memory: no promise. The candidate is behind our
            // commit position; it gets the committed slots instead, and runs again from
            // further on (the most advanced voter of any majority is never refused).
            self.send_archived(from, from_slot, self.config.message_runs_max as u64);
            return;
        }
        if self.config.read_lease
            && ballot > self.promised
            && from != self.config.node
            && self.election.hears_live_leader(self.now_tick)
        {
            // Under leases a voter helps no candidate within an election timeout of hearing a
            // leader, prepares included: it may have granted this candidate's probe before it
            // acked the heartbeat a lease counts (protocol.md §5.4). The candidate asks again.
            return;
        }
        if ballot > self.promised {
            self.raise_promise(ballot);
            if from != self.config.node {
                // A higher ballot won a majority of pre-votes: whatever we led or ran is over.
                self.step_down();
            }
        }
        if from != self.config.node {
            // A candidate running phase 1 is as good as a live leader: do not start a rival
            // election while its prepares keep coming (they stop if it dies).
            self.election.heard_leader(self.now_tick, &mut self.rng);
        }
        // The candidate reads its own log whole: the limit is for messages on the wire.
        let runs_max =
            if from == self.config.node { usize::MAX } else { self.config.message_runs_max };
        let (runs, next_slot) = self.log.runs_from(from_slot, self.log.end_slot(), runs_max);
        let promise = Message::Promise { ballot, from_slot, runs, next_slot };
        if self.promised_durable >= ballot {
            self.send_or_deliver(from, promise);
        } else {
            self.persist(Record::Promised { ballot }, Some((from, promise)));
        }
    }

    fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        from_slot: Slot,
        runs: Vec<SlotRun>,
        next_slot: Option<Slot>,
    ) {
        let Some(index) = self.voters.index_of(from) else { return };
        let Role::Preparing(prepare) = &mut self.role else { return };
        if prepare.ballot != ballot
            || prepare.progress[index] != PromiseProgress::Expecting(from_slot)
        {
            return; // Not the part we asked for: a duplicate, or late.
        }
        for run in runs {
            if run.end_slot() <= prepare.from_slot || run.first_slot < from_slot || run.count == 0 {
                continue;
            }
            for offset in 0..run.count {
                let slot = run.first_slot.plus(offset);
                if slot < prepare.from_slot {
                    continue;
                }
                let replace = match prepare.recovered.get(&slot) {
                    None => true,
                    Some((_, _, true)) => false,
                    Some((known, _, false)) => run.chosen || run.ballot > *known,
                };
                if replace {
                    prepare.recovered.insert(slot, (run.ballot, run.value.clone(), run.chosen));
                }
            }
        }
        // Phase 1 is making progress: do not abandon it for a new election.
        self.election.restart(self.now_tick, &mut self.rng);
        let Role::Preparing(prepare) = &mut self.role else { unreachable!() };
        match next_slot {
            Some(next) => {
                if next <= from_slot {
                    return; // A report that does not advance is malformed; the resend retries.
                }
                prepare.progress[index] = PromiseProgress::Expecting(next);
                if from == self.config.node {
                    self.on_prepare(from, ballot, next);
                } else {
                    self.send(from, Message::Prepare { ballot, from_slot: next });
                }
            }
            None => {
                prepare.progress[index] = PromiseProgress::Complete;
                let complete = prepare
                    .progress
                    .iter()
                    .filter(|progress| **progress == PromiseProgress::Complete)
                    .count();
                if complete >= self.voters.majority() {
                    self.become_leader();
                }
            }
        }
    }

    fn become_leader(&mut self) {
        let Role::Preparing(prepare) = std::mem::replace(&mut self.role, Role::Follower) else {
            unreachable!("become_leader outside phase 1")
        };
        let PrepareState { ballot, from_slot, recovered, .. } = *prepare;
        assert_eq!(self.promised, ballot, "leading a ballot not promised");
        // Recovery (I2): every slot a majority reported on gets the highest-ballot value seen,
        // chosen values as they are, and holes a no-op.
        let next_slot = recovered
            .keys()
            .next_back()
            .map_or(from_slot, |last| last.plus(1))
            .max(self.commit_index);
        let mut recovery: VecDeque<SlotRun> = VecDeque::new();
        let mut slot = self.commit_index;
        while slot < next_slot {
            match recovered.get(&slot) {
                Some((known, value, true)) => self.learn_chosen(slot, 1, *known, value),
                Some((_, value, false)) => {
                    push_run(&mut recovery, slot, value, self.config.skip_slots_max)
                }
                None => push_run(&mut recovery, slot, &Value::Noop, self.config.skip_slots_max),
            }
            slot = slot.plus(1);
        }
        let now = self.now_tick;
        self.role = Role::Leader(Box::new(LeaderState {
            ballot,
            next_slot,
            in_flight: VecDeque::with_capacity(self.config.pipeline_depth_max),
            recovery,
            heard_tick: vec![now; self.voters.len()],
            heartbeat_due_tick: now,
            first_own_slot: next_slot,
            reads: ReadRounds::default(),
            lease_until_tick: 0,
            // A former leader's lease ended before this one could be elected (its voters
            // refused to help for an election timeout); waiting one more here costs lease
            // reads (they take rounds meanwhile) and guards that argument (protocol.md §5.4).
            lease_reads_from_tick: now + u64::from(self.config.election_timeout_ticks),
            transfer: None,
        }));
        self.leader_hint = Some(self.config.node);
        self.maybe_advance_commit();
        self.leader_tick();
        self.maybe_send_proposals();
    }

    // ----- Leadership transfer (protocol.md §3.10) ---------------------------------------

    /// Hands this shard's leadership to voter `to`: from now on no new proposal is taken
    /// (each is refused with `to` as the hint) and no lease read is answered for the rest of
    /// this ballot; once everything proposed is chosen, every voter is told (`TimeoutNow`)
    /// and `to` stands for election at once. If `to` has not taken over an election timeout
    /// later, this replica leads on. Reads by the read index go on meanwhile.
    ///
    /// # Errors
    /// This replica does not lead, `to` is not another voter, or a transfer is under way;
    /// nothing is changed then.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        let now = self.now_tick;
        let timeout = u64::from(self.config.election_timeout_ticks);
        let hint = self.leader_hint;
        let Role::Leader(leader) = &mut self.role else {
            return Err(TransferError::NotLeader { hint });
        };
        if to == self.config.node {
            return Err(TransferError::ToSelf);
        }
        if !self.peers.contains(&to) {
            return Err(TransferError::NotAVoter(to));
        }
        if let Some(transfer) = &leader.transfer {
            return Err(TransferError::UnderWay(transfer.to));
        }
        leader.transfer = Some(Transfer { to, until_tick: now + timeout, sent: false });
        // Once any voter may help `to` at once, no lease of this ballot is safe to answer from
        // (the voters' stickiness is what a lease rests on, §5.4); nor after an aborted
        // transfer, since a voter told may still help whoever asks.
        leader.lease_reads_from_tick = u64::MAX;
        self.maybe_send_proposals();
        self.maybe_release_leadership();
        Ok(())
    }

    /// The voter this leader is handing its leadership to, if it is.
    #[must_use]
    pub fn transferring_to(&self) -> Option<NodeId> {
        match &self.role {
            Role::Leader(leader) => leader.transfer.as_ref().map(|transfer| transfer.to),
            _ => None,
        }
    }

    /// The voter a leader would best hand its leadership to: the one heard from last (an
    /// `Accepted` or a heartbeat's ack), within an election timeout; `None` if this replica
    /// does not lead or hears no other voter.
    #[must_use]
    pub fn transfer_candidate(&self) -> Option<NodeId> {
        let Role::Leader(leader) = &self.role else { return None };
        let timeout = u64::from(self.config.election_timeout_ticks);
        let me = self.config.node;
        self.voters
            .ids()
            .iter()
            .zip(&leader.heard_tick)
            .filter(|(node, heard)| **node != me && self.now_tick < **heard + timeout)
            .max_by_key(|(node, heard)| (**heard, std::cmp::Reverse(node.0)))
            .map(|(node, _)| *node)
    }

    /// `Ok` if this replica leads and is not handing its leadership away.
    fn check_takes_proposals(&self) -> Result<(), ProposeError> {
        match &self.role {
            Role::Leader(leader) => match &leader.transfer {
                Some(transfer) => Err(ProposeError::NotLeader { hint: Some(transfer.to) }),
                None => Ok(()),
            },
            _ => Err(ProposeError::NotLeader { hint: self.leader_hint }),
        }
    }

    /// A transferring leader whose proposals are all chosen tells every voter it lets go.
    fn maybe_release_leadership(&mut self) {
        let batch_empty = self.batch.is_empty();
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(transfer) = &mut leader.transfer else { return };
        if transfer.sent || !batch_empty || !leader.in_flight.is_empty() {
            return;
        }
        if !leader.recovery.is_empty() {
            return;
        }
        transfer.sent = true;
        let (ballot, to) = (leader.ballot, transfer.to);
        for index in 0..self.peers.len() {
            self.send(self.peers[index], Message::TimeoutNow { ballot, to });
        }
    }

    fn on_timeout_now(&mut self, ballot: Ballot, to: NodeId) {
        // Only the leader this voter follows can let it go: a late message of an older
        // leader must not unstick it from a newer one, whose lease may count on it.
        if ballot != self.promised || !matches!(self.role, Role::Follower) {
            return;
        }
        self.released = Some(ballot);
        self.election.forget_leader();
        if to == self.config.node && self.repair.is_none() {
            // Stand at once: no pre-vote (the leader asked), a fresh timer for phase 1.
            self.election.restart(self.now_tick, &mut self.rng);
            self.start_prepare();
        }
    }

    // ----- Phase 2 (protocol.md §3.3) ----------------------------------------------------

    fn pipeline_has_room(&self) -> bool {
        match &self.role {
            Role::Leader(leader) => leader.in_flight.len() < self.config.pipeline_depth_max,
            _ => false,
        }
    }

    fn maybe_send_proposals(&mut self) {
        while self.pipeline_has_room() {
            let Role::Leader(leader) = &mut self.role else { return };
            if let Some(run) = leader.recovery.pop_front() {
                self.send_proposal(run.first_slot, run.count, run.value);
            } else if !self.batch.is_empty() {
                let next_slot = leader.next_slot;
                let bytes = self.batch.take();
                self.send_proposal(next_slot, 1, Value::Batch(bytes));
            } else {
                return;
            }
        }
    }

    fn send_proposal(&mut self, first_slot: Slot, count: u64, value: Value) {
        let Role::Leader(leader) = &mut self.role else {
            unreachable!("proposal outside leadership")
        };
        assert!(
            leader
                .in_flight
                .back()
                .is_none_or(|last| last.first_slot.plus(last.count) <= first_slot),
            "proposals out of slot order"
        );
        let ballot = leader.ballot;
        leader.next_slot = leader.next_slot.max(first_slot.plus(count));
        leader.in_flight.push_back(Proposal {
            first_slot,
            count,
            value: value.clone(),
            acks: VoteSet::EMPTY,
            sent_tick: self.now_tick,
            chosen: false,
        });
        let commit_index = self.commit_index;
        for index in 0..self.peers.len() {
            let accept =
                Message::Accept { ballot, first_slot, count, value: value.clone(), commit_index };
            self.send(self.peers[index], accept);
        }
        // The leader's own acceptance goes through the durable path like any other (I3, I4).
        // It never contradicts its own log: a leader learns chosen slots only from its phase 1
        // (which it proposes as they are) and its own quorums (`on_chosen` takes nothing while
        // it runs phase 1 or leads), so a refusal here is a bug of ours.
        let own = self.on_accept(self.config.node, ballot, first_slot, count, value, commit_index);
        own.expect("a leader's proposal agrees with what its log knows chosen (I2)");
    }

    fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        count: u64,
        value: Value,
        commit_index: Slot,
    ) -> Result<(), RefusedMessage> {
        if ballot < self.promised {
            self.send(from, Message::Rejected { ballot, promised: self.promised });
            return Ok(());
        }
        // `check_envelope` refused runs of no slots, batches over several and run ends past
        // SLOT_MAX: the sum below cannot overflow; the window may be as large as u64::MAX.
        let window_end = self.commit_index.saturating_plus(self.config.accept_ahead_slots_max);
        if first_slot.plus(count) > window_end {
            return Ok(()); // Too far ahead: catch up first; the leader retransmits.
        }
        for offset in 0..count {
            if let Some(entry) = self.log.get(first_slot.plus(offset)) {
                // I2: a ballot at or above the one a value was chosen in proposes that value.
                // A different value can only come from an older ballot, late (its leader lost
                // the slot before it was chosen); accepting it is harmless, since the replicas
                // that chose the value promised above it. `entry.ballot` is at least the
                // choosing ballot, or zero if this replica learned the value without one. A
                // message that breaks the rule is a peer's word against what this log knows:
                // refused, and the simulator fails on any refusal between correct replicas.
                let contradicts = entry.chosen
                    && entry.value.as_ref() != Some(&value)
                    && !(entry.ballot == Ballot::ZERO || ballot < entry.ballot);
                if contradicts {
                    let slot = first_slot.0 + offset;
                    return Err(RefusedMessage::Contradicts { slot, ballot });
                }
            }
        }
        self.follow(ballot, false);
        self.log.accept(first_slot, count, ballot, &value);
        let record = Record::Accepted { ballot, first_slot, count, value };
        self.persist(record, Some((from, Message::Accepted { ballot, first_slot, count })));
        self.learn_commit_index(ballot, commit_index);
        Ok(())
    }

    fn on_accepted(&mut self, from: NodeId, ballot: Ballot, first_slot: Slot, count: u64) {
        let Some(index) = self.voters.index_of(from) else { return };
        let now = self.now_tick;
        let Role::Leader(leader) = &mut self.role else { return };
        // I4: only acceptances under this leader's own ballot count towards a quorum.
        if ballot != leader.ballot {
            return;
        }
        leader.heard_tick[index] = now;
        let Ok(position) =
            leader.in_flight.binary_search_by_key(&first_slot, |proposal| proposal.first_slot)
        else {
            return;
        };
        let proposal = &mut leader.in_flight[position];
        if proposal.count != count || proposal.chosen {
            return;
        }
        proposal.acks.insert(index);
        if !self.voters.is_quorum(proposal.acks) {
            return;
        }
        proposal.chosen = true;
        let (first_slot, count, value) =
            (proposal.first_slot, proposal.count, proposal.value.clone());
        self.log.choose(first_slot, count, ballot, &value);
        let Role::Leader(leader) = &mut self.role else { unreachable!() };
        while leader.in_flight.front().is_some_and(|proposal| proposal.chosen) {
            leader.in_flight.pop_front();
        }
        self.maybe_advance_commit();
        self.maybe_send_proposals();
        self.maybe_release_leadership();
    }

    fn on_rejected(&mut self, ballot: Ballot, promised: Ballot) {
        self.round_seen_max = self.round_seen_max.max(promised.round);
        if promised <= ballot {
            return;
        }
        let ours = match &self.role {
            Role::Leader(leader) => leader.ballot == ballot,
            Role::Preparing(prepare) => prepare.ballot == ballot,
            _ => false,
        };
        if ours {
            self.step_down();
        }
    }

    // ----- Leadership upkeep -------------------------------------------------------------

    fn leader_tick(&mut self) {
        let now = self.now_tick;
        let my_index = self.my_voter_index();
        let timeout = self.election.timeout_ticks();
        let Role::Leader(leader) = &mut self.role else { return };
        // Check-quorum: a leader that has not heard a majority within an election timeout
        // steps down, so its clients are redirected rather than left waiting.
        leader.heard_tick[my_index] = now;
        let heard = leader.heard_tick.iter().filter(|tick| now < **tick + timeout).count();
        if heard < self.voters.majority() {
            self.step_down();
            return;
        }
        if leader.transfer.as_ref().is_some_and(|transfer| now >= transfer.until_tick) {
            // The successor did not take over in time (it was down, cut off, or behind):
            // lead on, still without lease reads for this ballot (§3.10).
            leader.transfer = None;
        }
        if now < leader.heartbeat_due_tick {
            return;
        }
        let interval = u64::from(self.config.heartbeat_interval_ticks);
        leader.heartbeat_due_tick = now + interval;
        let ballot = leader.ballot;
        let commit_index = self.commit_index;
        // Under leases every heartbeat that finds no round in flight starts one, so a healthy
        // majority's acks keep the lease renewed (protocol.md §5.4).
        let renewal = if self.config.read_lease { leader.reads.renew(now) } else { None };
        let read_round = leader.reads.current();
        // Retransmit Accepts that a voter has not acknowledged for half an election timeout:
        // the network may lose them, and a restarted voter may have lost them unsynced. Not
        // sooner: under load an ack can take longer than a heartbeat interval (a sync of a
        // large batch), and each retransmission costs the voter another write of the batch.
        let retransmit = interval.max(timeout / 2);
        let mut resend: Vec<(NodeId, Message)> = Vec::new();
        for proposal in
            leader.in_flight.iter_mut().filter(|p| !p.chosen && p.sent_tick + retransmit <= now)
        {
            proposal.sent_tick = now;
            for (index, node) in self.voters.ids().iter().enumerate() {
                if index != my_index && !proposal.acks.contains(index) {
                    let message = Message::Accept {
                        ballot,
                        first_slot: proposal.first_slot,
                        count: proposal.count,
                        value: proposal.value.clone(),
                        commit_index,
                    };
                    resend.push((*node, message));
                }
            }
        }
        for (node, message) in resend {
            self.send(node, message);
        }
        for index in 0..self.peers.len() + self.config.learners.len() {
            let node = self
                .peers
                .get(index)
                .copied()
                .unwrap_or_else(|| self.config.learners[index - self.peers.len()]);
            self.send(node, Message::Heartbeat { ballot, commit_index, read_round });
        }
        if let Some(round) = renewal {
            self.on_read_ack(my_index, ballot, round);
        }
    }

    fn on_heartbeat(&mut self, from: NodeId, ballot: Ballot, commit_index: Slot, read_round: u64) {
        if self.config.is_learner() {
            self.leader_hint = Some(ballot.node);
            self.learn_commit_index(Ballot::ZERO, commit_index);
            return;
        }
        if ballot < self.promised {
            self.send(from, Message::Rejected { ballot, promised: self.promised });
            return;
        }
        self.follow(ballot, true);
        self.send(from, Message::HeartbeatAck { ballot, read_round });
        self.learn_commit_index(ballot, commit_index);
    }

    fn on_heartbeat_ack(&mut self, from: NodeId, ballot: Ballot, read_round: u64) {
        let now = self.now_tick;
        let Some(index) = self.voters.index_of(from) else { return };
        if let Role::Leader(leader) = &mut self.role {
            if leader.ballot == ballot {
                leader.heard_tick[index] = now;
            }
        }
        self.on_read_ack(index, ballot, read_round);
    }

    // ----- Commit and catch-up (protocol.md §3.4, §3.5) ----------------------------------

    /// A leader of `ballot` says every slot below `commit_index` is chosen. A slot we accepted
    /// under that same ballot holds the leader's one value for it (I2), so it is chosen here too;
    /// anything else must come by catch-up.
    fn learn_commit_index(&mut self, ballot: Ballot, commit_index: Slot) {
        self.known_commit_index = self.known_commit_index.max(commit_index);
        self.freshness.told(commit_index, self.commit_index, self.now_tick);
        if ballot != Ballot::ZERO {
            let mut slot = self.commit_index;
            while slot < commit_index {
                let Some(entry) = self.log.get(slot) else { break };
                if !entry.chosen {
                    if entry.ballot != ballot || entry.value.is_none() {
                        break;
                    }
                    // The value it holds is the one chosen: no copy, no compare.
                    self.log.mark_chosen(slot, ballot);
                }
                slot = slot.plus(1);
            }
        }
        self.maybe_advance_commit();
        self.maybe_request_catch_up();
    }

    fn maybe_advance_commit(&mut self) {
        while let Some(entry) = self.log.get(self.commit_index) {
            if !entry.chosen {
                break;
            }
            let value = entry.value.clone().expect("a chosen slot holds a value");
            let first_slot = self.commit_index;
            let mut count = 1;
            if value.is_noop() {
                while let Some(next) = self.log.get(first_slot.plus(count)) {
                    if !(next.chosen && next.value.as_ref().is_some_and(Value::is_noop)) {
                        break;
                    }
                    count += 1;
                }
            }
            self.commit_index = first_slot.plus(count);
            self.committed_bytes += value.len_bytes() as u64;
            self.known_commit_index = self.known_commit_index.max(self.commit_index);
            self.actions.push(Action::Commit { first_slot, count, value });
        }
        self.freshness.on_commit(self.commit_index);
        self.compact();
        self.feed_subscribers();
        if self.repair.is_some() {
            self.maybe_finish_repair();
        }
    }

    /// Forgets committed slots more than `retain_slots` behind the commit position, a quarter
    /// of that at a time (so the work is spread over many slots), and the oldest ones while
    /// their batches hold more than `retain_bytes`, down to three quarters of it. They stay in
    /// the WAL: a peer or subscriber that needs them is served from there
    /// (`Action::SendArchived`).
    fn compact(&mut self) {
        let (retain, base) = (self.config.retain_slots, self.log.base().0);
        let mut floor = self.commit_index.0.saturating_sub(retain);
        if floor <= base + retain / 4 {
            floor = base;
        }
        let retain_bytes = self.config.retain_bytes;
        if self.committed_bytes > retain_bytes {
            let excess = self.committed_bytes - retain_bytes / 4 * 3;
            floor = floor.max(self.log.slot_after_bytes(excess, self.commit_index).0);
        }
        if floor > base {
            self.committed_bytes -= self.log.compact_below(Slot(floor));
        }
    }

    /// Sends `to` the committed slots from `from_slot` on that this replica no longer holds in
    /// memory, at most `slots` of them. Returns where that stops.
    fn send_archived(&mut self, to: NodeId, from_slot: Slot, slots: u64) -> Slot {
        let end_slot = self.log.base().min(from_slot.plus(slots));
        let commit_index = self.commit_index;
        self.actions.push(Action::SendArchived { to, from_slot, end_slot, commit_index });
        end_slot
    }

    fn maybe_request_catch_up(&mut self) {
        if self.config.is_learner() {
            return; // Learners follow their subscription instead.
        }
        if self.commit_index >= self.known_commit_index || self.now_tick < self.catch_up_due_tick {
            return;
        }
        let Some(target) = self.leader_hint.filter(|leader| *leader != self.config.node) else {
            return;
        };
        self.catch_up_due_tick = self.now_tick + u64::from(self.config.heartbeat_interval_ticks);
        self.send(target, Message::CatchUpRequest { from_slot: self.commit_index });
    }

    fn on_catch_up_request(&mut self, from: NodeId, from_slot: Slot) {
        if from_slot >= self.commit_index {
            return;
        }
        if from_slot < self.log.base() {
            // As much as one message would carry from memory; asked again on progress.
            self.send_archived(from, from_slot, self.config.message_runs_max as u64);
            return;
        }
        let (runs, _) =
            self.log.runs_from(from_slot, self.commit_index, self.config.message_runs_max);
        self.send(from, Message::Chosen { runs, commit_index: self.commit_index });
    }

    fn on_chosen(&mut self, runs: Vec<SlotRun>, commit_index: Slot) {
        if matches!(self.role, Role::Preparing(_) | Role::Leader(_)) {
            // A late answer to a catch-up asked as a follower. A replica running phase 1 or
            // leading learns what is chosen from its commit position on from its promises and
            // its own quorums, and proposes by that: a peer's claim must not move its commit
            // position past the slots it proposes, nor contradict what it recovered.
            return;
        }
        let before = self.commit_index;
        // Runs are whole, in slot order and end at SLOT_MAX at the latest (`check_envelope`).
        let window_end = self.commit_index.saturating_plus(self.config.accept_ahead_slots_max);
        for run in runs {
            if !run.chosen {
                continue; // Malformed: only chosen runs are ever sent here.
            }
            if run.end_slot() <= self.commit_index {
                continue;
            }
            if run.end_slot() > window_end {
                break;
            }
            self.learn_chosen(run.first_slot, run.count, run.ballot, &run.value);
        }
        self.known_commit_index = self.known_commit_index.max(commit_index);
        self.freshness.told(commit_index, self.commit_index, self.now_tick);
        self.maybe_advance_commit();
        if self.commit_index > before {
            // Progress: ask for the next part at once rather than at the next tick.
            self.catch_up_due_tick = self.now_tick;
            self.subscription.progress_tick = self.now_tick;
            if self.commit_index.0.saturating_sub(self.subscription.reported.0)
                >= self.feed_window() / 4
            {
                self.report_to_source();
            }
        }
        self.maybe_request_catch_up();
    }

    // ----- Subscriptions: feeding learners (protocol.md §3.6) ----------------------------

    /// Slots a feed may run ahead of its subscriber's last report.
    fn feed_window(&self) -> u64 {
        let slots = 4 * (self.config.message_runs_max as u64).max(self.config.skip_slots_max);
        slots.min(self.config.accept_ahead_slots_max)
    }

    fn on_subscribe(&mut self, from: NodeId, from_slot: Slot) {
        let lease_until_tick = self.now_tick + 2 * u64::from(self.config.election_timeout_ticks);
        match self.subscribers.iter_mut().find(|subscriber| subscriber.node == from) {
            Some(subscriber) => {
                subscriber.feed.on_report(from_slot);
                subscriber.lease_until_tick = lease_until_tick;
            }
            None => self.subscribers.push(Subscriber {
                node: from,
                feed: Feed::new(from_slot),
                lease_until_tick,
            }),
        }
        if !self.feed_subscribers() {
            // Nothing new: the reply still tells the learner its source is alive and where
            // this replica's commit position stands.
            self.send(from, Message::Chosen { runs: Vec::new(), commit_index: self.commit_index });
        }
    }

    /// Sends every subscriber what its window lets through; true if anything was sent.
    fn feed_subscribers(&mut self) -> bool {
        if self.subscribers.is_empty() {
            return false;
        }
        let window = self.feed_window();
        let mut subscribers = std::mem::take(&mut self.subscribers);
        let mut sent = false;
        for subscriber in &mut subscribers {
            while let Some((from_slot, due_end)) = subscriber.feed.due(self.commit_index, window) {
                if from_slot < self.log.base() {
                    let slots = due_end.0 - from_slot.0;
                    let end = self.send_archived(subscriber.node, from_slot, slots);
                    subscriber.feed.sent_to(end);
                    sent = true;
                    continue;
                }
                let runs_max = self.config.message_runs_max;
                let (runs, _) = self.log.runs_from(from_slot, due_end, runs_max);
                let Some(last) = runs.last() else { break };
                debug_assert!(runs.iter().all(|run| run.chosen), "a feed sends only chosen slots");
                subscriber.feed.sent_to(last.end_slot());
                sent = true;
                let message = Message::Chosen { runs, commit_index: self.commit_index };
                self.send(subscriber.node, message);
            }
        }
        self.subscribers = subscribers;
        sent
    }

    /// The nodes a learner may subscribe to, in order of preference.
    fn source_candidates(&self) -> Vec<NodeId> {
        let mut candidates: Vec<NodeId> = self.config.upstream.into_iter().collect();
        candidates
            .extend(self.voters.ids().iter().filter(|node| Some(**node) != self.config.upstream));
        candidates
    }

    fn learner_tick(&mut self) {
        let now = self.now_tick;
        let timeout = u64::from(self.config.election_timeout_ticks);
        if self.known_commit_index <= self.commit_index {
            // Up to date: nothing to wait for, so the source is not failing us.
            self.subscription.progress_tick = now;
        }
        let sub = &self.subscription;
        let stalled = now - sub.progress_tick > timeout;
        let held_long = now - sub.chosen_tick > timeout;
        let on_leader = sub.source.is_some() && sub.source == self.leader_hint;
        let off_upstream = self.config.upstream.is_some()
            && sub.source != self.config.upstream
            && now - sub.chosen_tick > 10 * timeout;
        // At start, wait (up to an election timeout) to hear who leads, so as not to
        // subscribe to the leader.
        let unsure = sub.source.is_none()
            && self.leader_hint.is_none()
            && self.config.upstream.is_none()
            && now <= timeout;
        if unsure {
            return;
        }
        if sub.source.is_none() || stalled || (on_leader && held_long) || off_upstream {
            self.choose_source(off_upstream || sub.source.is_none());
        } else if now >= sub.report_due_tick {
            self.report_to_source();
        }
    }

    /// Moves to the next candidate source (or back to the first), passing over the leader
    /// while another candidate remains.
    fn choose_source(&mut self, from_first: bool) {
        let candidates = self.source_candidates();
        let start = if from_first { 0 } else { self.subscription.index + 1 };
        let pick = (0..candidates.len())
            .map(|offset| (start + offset) % candidates.len())
            .find(|index| Some(candidates[*index]) != self.leader_hint)
            .unwrap_or(start % candidates.len());
        self.subscription.index = pick;
        self.subscription.source = Some(candidates[pick]);
        self.subscription.chosen_tick = self.now_tick;
        self.subscription.progress_tick = self.now_tick;
        self.report_to_source();
    }

    fn report_to_source(&mut self) {
        let Some(source) = self.subscription.source else { return };
        self.subscription.reported = self.commit_index;
        self.subscription.report_due_tick =
            self.now_tick + u64::from(self.config.heartbeat_interval_ticks);
        self.send(source, Message::Subscribe { from_slot: self.commit_index });
    }

    // ----- Helpers -----------------------------------------------------------------------

    /// Marks slots chosen with a value a peer reported. Where the log held another value (or
    /// none), the value is written down so that a restart remembers it (`Record::Chosen`).
    fn learn_chosen(&mut self, first_slot: Slot, count: u64, ballot: Ballot, value: &Value) {
        let end_slot = first_slot.plus(count);
        let first_slot = first_slot.max(self.commit_index);
        if first_slot >= end_slot {
            return;
        }
        let known = (first_slot.0..end_slot.0).all(|slot| {
            self.log
                .get(Slot(slot))
                .is_some_and(|entry| entry.chosen || entry.value.as_ref() == Some(value))
        });
        self.log.choose(first_slot, end_slot.0 - first_slot.0, ballot, value);
        if !known {
            let record = Record::Chosen {
                first_slot,
                count: end_slot.0 - first_slot.0,
                value: value.clone(),
            };
            self.persist(record, None);
        }
    }

    fn raise_promise(&mut self, ballot: Ballot) {
        // I1: a promise never decreases.
        assert!(ballot >= self.promised, "promise would fall from {} to {ballot}", self.promised);
        self.promised = ballot;
        self.round_seen_max = self.round_seen_max.max(ballot.round);
    }

    /// A leader of `ballot`, at least our promise, spoke: promise it, leave any candidacy or
    /// older leadership, and restart the election timer. A leader we never promised won phase 1
    /// elsewhere; following it is safe, since a promise only narrows what we accept.
    fn follow(&mut self, ballot: Ballot, persist_promise: bool) {
        assert!(ballot >= self.promised, "following {ballot} below promise {}", self.promised);
        if ballot.node == self.config.node {
            return;
        }
        if ballot > self.promised {
            self.raise_promise(ballot);
            if persist_promise {
                self.persist(Record::Promised { ballot }, None);
            }
        }
        if !matches!(self.role, Role::Follower | Role::Learner) {
            self.step_down();
        }
        self.leader_hint = Some(ballot.node);
        if self.released == Some(ballot) {
            // It handed its leadership away: wait for its successor as for any leader, but
            // do not refuse to help elect one (§3.10).
            self.election.restart(self.now_tick, &mut self.rng);
        } else {
            self.election.heard_leader(self.now_tick, &mut self.rng);
        }
    }

    /// Leaves any candidacy or leadership for the follower role.
    fn step_down(&mut self) {
        self.step_down_quietly();
        if !self.config.is_learner() {
            self.election.restart(self.now_tick, &mut self.rng);
        }
    }

    fn step_down_quietly(&mut self) {
        if let Role::Leader(leader) = &mut self.role {
            // Commands never proposed are dropped; their clients time out and retry (I9 keeps
            // the retry from applying twice). Reads not yet confirmed are aborted.
            let aborted = leader.reads.abort();
            let _ = self.batch.take();
            self.leader_hint = None;
            let mut ids = Vec::new();
            for reader in aborted {
                match reader {
                    Reader::Local(id) => ids.push(id),
                    Reader::Remote { node, nonce } => {
                        self.send(node, Message::ReadIndexReply { nonce, read_index: None });
                    }
                }
            }
            if !ids.is_empty() {
                self.actions.push(Action::ReadsAborted { ids });
            }
        }
        self.role = if self.config.is_learner() { Role::Learner } else { Role::Follower };
    }

    fn persist(&mut self, record: Record, then_send: Option<(NodeId, Message)>) {
        // §3.9: a log that may lack acknowledged records never backs a vote.
        assert!(
            self.repair.is_none()
                || !matches!(
                    (&record, &then_send),
                    (Record::Accepted { .. }, _) | (_, Some((_, Message::Promise { .. })))
                ),
            "a repairing replica voted: {record:?}"
        );
        let seq = PersistSeq(self.persist_seq_next);
        self.persist_seq_next += 1;
        match &record {
            Record::Promised { ballot } | Record::Accepted { ballot, .. } => {
                self.pending_promises.push_back((seq, *ballot));
            }
            Record::Chosen { .. } | Record::Committed { .. } => {}
        }
        self.actions.push(Action::Persist { seq, record, then_send });
    }

    fn send(&mut self, to: NodeId, message: Message) {
        assert_ne!(to, self.config.node, "a replica does not send to itself");
        self.actions.push(Action::Send { to, message });
    }

    fn send_or_deliver(&mut self, to: NodeId, message: Message) {
        if to == self.config.node {
            // Only the candidate's own promise comes this way, which it always takes.
            let own = self.dispatch(to, message);
            own.expect("a replica takes its own promise");
        } else {
            self.send(to, message);
        }
    }

    fn my_voter_index(&self) -> usize {
        self.voters.index_of(self.config.node).expect("only voters take part in elections")
    }

    /// Checks the invariants of this replica's own state. With `whole_log` false it looks at
    /// the uncommitted tail only (cheap enough for the simulator to call after every step).
    pub fn check_invariants(&self, whole_log: bool) {
        assert!(self.promised_durable <= self.promised, "durable promise above promise");
        assert!(self.commit_index <= self.known_commit_index, "commit index above known");
        assert!(self.commit_index <= self.log.end_slot(), "commit index beyond the log");
        let from_slot =
            if whole_log { Slot(0) } else { Slot(self.commit_index.0.saturating_sub(1)) };
        self.log.check_invariants(from_slot, self.commit_index, self.promised);
        if whole_log {
            let base = self.log.base();
            let held = self.log.slot_after_bytes(u64::MAX, self.commit_index);
            assert_eq!(held, self.commit_index.max(base), "committed slots beyond the log");
            let bytes: u64 = (base.0..self.commit_index.0)
                .filter_map(|slot| self.log.get(Slot(slot)))
                .filter_map(|entry| entry.value.as_ref())
                .map(|value| value.len_bytes() as u64)
                .sum();
            assert_eq!(bytes, self.committed_bytes, "committed bytes miscounted");
        }
        match &self.role {
            Role::Leader(leader) => {
                assert_eq!(leader.ballot, self.promised, "leader's ballot is not its promise");
                assert!(
                    leader.in_flight.len() <= self.config.pipeline_depth_max,
                    "pipeline overfull"
                );
                assert!(leader.next_slot >= self.commit_index, "next slot below commit index");
                for pair in leader.in_flight.iter().collect::<Vec<_>>().windows(2) {
                    assert!(
                        pair[0].first_slot.plus(pair[0].count) <= pair[1].first_slot,
                        "in-flight overlap"
                    );
                }
            }
            Role::Preparing(prepare) => {
                assert!(prepare.ballot <= self.promised, "preparing above promise");
            }
            Role::Learner => assert!(self.config.is_learner(), "learner role on a voter"),
            Role::Follower | Role::Probing { .. } => {
                assert!(!self.config.is_learner(), "voter role on a learner")
            }
        }
    }
}

/// Appends a slot's recovered value to the recovery queue, merging neighbouring no-ops.
fn push_run(recovery: &mut VecDeque<SlotRun>, slot: Slot, value: &Value, skip_slots_max: u64) {
    if value.is_noop() {
        if let Some(last) = recovery.back_mut() {
            if last.value.is_noop() && last.end_slot() == slot && last.count < skip_slots_max {
                last.count += 1;
                return;
            }
        }
    }
    recovery.push_back(SlotRun {
        first_slot: slot,
        count: 1,
        ballot: Ballot::ZERO,
        value: value.clone(),
        chosen: false,
    });
}
