//! One shard replica with everything it needs to run, but no runtime: the protocol core, its
//! write-ahead log, and the state machine it applies to. A runtime (glommio, or a test loop)
//! feeds it messages, ticks and proposals, runs its syncs on a helper thread, and carries its
//! outgoing messages and client replies away. Keeping this free of any runtime lets the same
//! code run under the node, the tests and the benches.
//!
//! Durability: every record the core asks to persist is appended to the WAL at once; the
//! replies it holds back (`then_send`) leave only when a sync covering the record completed
//! (protocol.md, I3). A failed sync poisons the log and fails the shard.
//!
//! The parts: `journal` (the replica's records in the WAL), `committer` (where committed runs
//! go), `snapshots` (taking, serving and installing them), `hooks` (entropy, and what the
//! simulator's checkers watch).

mod committer;
mod hooks;
mod journal;
mod reads;
mod snapshots;
mod timers;

use quorum_wal::{Backend, Options, PendingSync, SyncOutcome, Wal};

use crate::core::{
    Action, Config, Consistency, Envelope, Message, NodeId, ProposeError, ReadOptions, ReadPath,
    RefusedMessage, Replica, RequestId, Slot, SlotRun, TransferError,
};
use crate::machine::total_order::Committed;
use crate::machine::{
    AppliedCommand, REGISTER_ENTROPY_BYTES, SessionLimits, StateMachine, seal_register,
};
use crate::storage::record;
use crate::storage::snapshot::SnapshotError;

use committer::Committer;
pub(crate) use committer::panic_message;
pub use hooks::{Hooks, OsHooks};
pub use journal::{Journal, Released, SharedBatch};
use snapshots::{Installing, Snapshots, member_rank, open_applier, persisted_past, snapshot_slot};
pub use snapshots::{PendingSnapshot, SnapshotReader, SnapshotStats, SnapshotWritten};

/// Most bytes of records one read of compacted slots takes by default: a range is read in
/// such parts, so that one read never holds the shard up for long (a reader's window, in
/// slots, bounds what is queued for it, as it does from memory).
pub const ARCHIVE_READ_BYTES_MAX: usize = 16 << 20;

/// A snapshot goes to a peer in pieces of at most this many bytes by default (one frame each,
/// well under the frame limit), each pulled by the receiver once it has the one before.
pub const SNAPSHOT_PIECE_BYTES: usize = 4 << 20;

/// A shard that can no longer run: its log failed. Restart it from disk.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The WAL failed (a sync error poisons it for good).
    #[error(transparent)]
    Wal(#[from] quorum_wal::Error),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::core::ConfigError),
    /// The log holds a record no replica writes.
    #[error(transparent)]
    BadRecord(#[from] record::BadLogRecord),
    /// A committed batch did not decode.
    #[error(transparent)]
    BadBatch(#[from] crate::core::MalformedBatch),
    /// The snapshot on disk is damaged or not this shard's: the log before it may be gone, so
    /// the replica cannot start without it. Restore the file, or start this node empty.
    #[error("snapshot file refused: {0}")]
    Snapshot(#[from] SnapshotError),
    /// Total-order apply needs every slot from 0, and this shard's log starts from a snapshot.
    #[error(
        "this shard starts from a snapshot at slot {0} (its log before it may be released): \
         --apply total needs the whole log; run it with --apply shard, or from an empty data \
         directory"
    )]
    ForwardFromSnapshot(u64),
    /// The WAL's metadata (the durable promise) does not decode.
    #[error("WAL metadata damaged: {0}")]
    Metadata(&'static str),
    /// The log lost records that may have been acknowledged and this replica is its shard's
    /// only voter: no peer holds them (protocol.md §3.9).
    #[error(
        "the log lost records that may have been acknowledged ({0}) and this node is the \
         shard's only voter, so nothing can repair them. To go on with what remains (the writes \
         after the damage are lost), delete the file `repair` in the shard's directory"
    )]
    Unrepairable(String),
}

/// How a shard is opened.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    /// What the session table keeps (exactly-once, protocol.md §5); the same on every replica.
    pub sessions: SessionLimits,
    /// Where committed runs are applied.
    pub apply: ApplyTo,
    /// The shard's number (snapshots name it).
    pub shard: u16,
    /// How many shards the node has: with `shard`, where a slot lies in the merged order
    /// (`slot · shards + shard`), which the state machine's revisions follow.
    pub shards: u16,
    /// Take a snapshot every this many bytes of WAL, then let the WAL drop what it covers;
    /// 0: never (the log keeps everything). Only with [`ApplyTo::Shard`]: with forwarding the
    /// state lives elsewhere.
    pub snapshot_every_bytes: u64,
    /// A snapshot is sent in pieces of at most this many bytes, each pulled by the receiver.
    pub snapshot_piece_bytes: usize,
    /// Most bytes of records one read of compacted slots takes (see
    /// [`ARCHIVE_READ_BYTES_MAX`]).
    pub archive_read_bytes_max: usize,
    /// Different at every start (random by default): tells this start's repair reports from
    /// an earlier one's (protocol.md §3.9), and seeds the nonces of its requests for a read
    /// index (§5.5).
    pub repair_nonce: u64,
    /// Queries are answered by the read index, without the log (protocol.md §5.3); `false`
    /// orders them in the log. Only with [`ApplyTo::Shard`]: with forwarding the state lives
    /// elsewhere, and queries go through the log.
    pub read_index: bool,
    /// How long one of the replica's ticks is, in microseconds: stale reads' bound in
    /// milliseconds is counted in ticks.
    pub tick_us: u64,
}

/// A number that differs between processes and calls (std's per-process random hash keys).
fn random_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

impl ShardSettings {
    /// Snapshots off, applied here, shard 0.
    #[must_use]
    pub fn new(sessions: SessionLimits) -> ShardSettings {
        ShardSettings {
            sessions,
            apply: ApplyTo::Shard,
            shard: 0,
            shards: 1,
            snapshot_every_bytes: 0,
            snapshot_piece_bytes: SNAPSHOT_PIECE_BYTES,
            archive_read_bytes_max: ARCHIVE_READ_BYTES_MAX,
            repair_nonce: random_nonce(),
            read_index: true,
            tick_us: 1000,
        }
    }
}

/// A replica whose log may have lost what it acknowledged repairs from its peers before it
/// votes (protocol.md §3.9); alone in its shard, it cannot.
fn repair_if_lost<B: Backend, T>(
    replica: &mut Replica,
    journal: &Journal<B, T>,
    settings: &ShardSettings,
) -> Result<(), ShardError> {
    if let Some(reason) = journal.repair_reason() {
        let voters = replica.config().voters.len();
        if voters == 1 && journal.lost_records() {
            return Err(ShardError::Unrepairable(reason.to_string()));
        }
        if voters > 1 && !replica.config().is_learner() {
            tracing::warn!(
                shard = settings.shard,
                "{reason}: this replica will not vote until every other voter has said \
                 what it holds and it has caught up to that (protocol.md §3.9)"
            );
        }
        replica.start_repair(settings.repair_nonce);
    }
    Ok(())
}

/// One shard replica, its log and its state machine; `H` its entropy and observers (a node's
/// are [`OsHooks`]).
pub struct Shard<B: Backend, S: StateMachine, H: Hooks = OsHooks> {
    replica: Replica,
    journal: Journal<B, H::Kept>,
    committer: Committer<S>,
    hooks: H,
    settings: ShardSettings,
    snapshots: Snapshots<B::FileSink>,
    /// A peer's snapshot, checked and restored, until its file is durable.
    installing: Option<Installing<S, B::FileSink>>,
    /// Queries answered by the read index.
    reads: reads::Reads,
    /// The state machine's timers, while this replica leads.
    timers: timers::LeaderTimers,
    actions: Vec<Action>,
    outbox: Vec<(NodeId, Message)>,
    /// Batches the replica now keeps in the WAL's mapping instead of the heap.
    pub shared_batches: u64,
    /// Batches offered from the mapping but not taken (the slot's value had changed).
    pub unshared_batches: u64,
}

/// Where a shard's committed runs are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyTo {
    /// To this shard's own state machine, in its slot order.
    Shard,
    /// Elsewhere: they are handed out by [`Shard::take_committed`].
    Forward,
}

impl<B: Backend, S: StateMachine> Shard<B, S> {
    /// Opens the shard's log, recovers the replica from it, and re-applies what was committed.
    ///
    /// # Errors
    /// The log cannot be opened or holds something no replica writes; the configuration is bad.
    pub fn open(
        config: Config,
        backend: B,
        options: Options,
        machine: S,
        sessions: SessionLimits,
    ) -> Result<Self, ShardError> {
        Shard::open_with(config, backend, options, machine, ShardSettings::new(sessions))
    }

    /// [`Shard::open`] with every setting. A snapshot in the log's directory is loaded first
    /// (`machine` is then replaced by its image) and the log replayed from there.
    ///
    /// # Errors
    /// See [`Shard::open`]; also a damaged snapshot file.
    pub fn open_with(
        config: Config,
        backend: B,
        options: Options,
        machine: S,
        settings: ShardSettings,
    ) -> Result<Self, ShardError> {
        Shard::open_hooked(config, backend, options, machine, settings, OsHooks)
    }
}

impl<B: Backend, S: StateMachine, H: Hooks> Shard<B, S, H> {
    /// [`Shard::open_with`] with these hooks (the simulator's: seeded entropy, a recorder).
    ///
    /// # Errors
    /// See [`Shard::open_with`].
    pub fn open_hooked(
        config: Config,
        backend: B,
        options: Options,
        machine: S,
        settings: ShardSettings,
        mut hooks: H,
    ) -> Result<Self, ShardError> {
        let mut replica = Replica::recovering(config)?;
        let owner = (replica.config().cluster_id, settings.shard);
        let mut snapshots = Snapshots::new(owner);
        let snapshot_at = snapshot_slot(&backend)?;
        if let Some(slot) = snapshot_at.filter(|_| settings.apply == ApplyTo::Forward) {
            return Err(ShardError::ForwardFromSnapshot(slot.0));
        }
        let persisted = persisted_past(&machine, snapshot_at, settings.shard);
        let (applier, restored) =
            open_applier(&backend, owner, settings.sessions, machine, persisted.is_some())?;
        if let Some((header, bytes)) = restored {
            replica.install_snapshot(header.slot, header.slot);
            snapshots.current = Some((header, bytes));
        }
        let floor = snapshots.current.map_or(Slot(0), |(header, _)| header.slot);
        let forward = settings.apply == ApplyTo::Forward;
        let place = (u64::from(settings.shard), u64::from(settings.shards.max(1)));
        let mut committer = Committer::new(applier, forward, persisted, place);
        // Replayed record by record, committed runs applied as the records commit them, so
        // neither the records nor the log's slots pile up in memory (the log compacts).
        let mut actions = Vec::new();
        let mut apply = |replica: &mut Replica, hooks: &mut H| -> Result<(), ShardError> {
            replica.take_actions(&mut actions);
            for action in actions.drain(..) {
                let Action::Commit { first_slot, count, value } = action else {
                    unreachable!("replaying the log only commits: {action:?}");
                };
                committer.commit(first_slot, count, value, false, hooks)?;
            }
            Ok(())
        };
        let journal = Journal::open(backend, options, floor, |record| {
            replica.replay(&record);
            hooks.replayed(&record);
            apply(&mut replica, &mut hooks)
        })?;
        replica.finish_recovery();
        apply(&mut replica, &mut hooks)?;
        repair_if_lost(&mut replica, &journal, &settings)?;
        // Different at every start, like the repair's: a read index meant for an earlier
        // incarnation's request is never taken for this one's (protocol.md §5.5).
        replica.seed_nonces(settings.repair_nonce.rotate_left(32) ^ 0x5245_4144);
        snapshots.taken_at_position = journal.wal().end_position();
        snapshots.phase = Some(member_rank(replica.config()));
        Ok(Shard {
            replica,
            journal,
            committer,
            hooks,
            settings,
            snapshots,
            installing: None,
            reads: reads::Reads::default(),
            timers: timers::LeaderTimers::default(),
            actions: Vec::with_capacity(64),
            outbox: Vec::new(),
            shared_batches: 0,
            unshared_batches: 0,
        })
    }

    /// The protocol core.
    #[must_use]
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The state machine.
    #[must_use]
    pub fn machine(&self) -> &S {
        self.committer.applier.machine()
    }

    /// The hooks (the simulator takes what its recorder saw).
    pub fn hooks_mut(&mut self) -> &mut H {
        &mut self.hooks
    }

    /// The log.
    #[must_use]
    pub fn wal(&self) -> &Wal<B> {
        self.journal.wal()
    }

    /// True if records wait for a sync.
    #[must_use]
    pub fn has_unsynced(&self) -> bool {
        self.journal.has_unsynced()
    }

    /// Batches committed since the replica started (no-ops not counted).
    #[must_use]
    pub fn committed_batches(&self) -> u64 {
        self.committer.committed_batches
    }

    /// Client commands applied so far on this replica.
    #[must_use]
    pub fn applied_commands(&self) -> u64 {
        self.committer.applier.applied_commands()
    }

    /// Client sessions the applier's table holds.
    #[must_use]
    pub fn sessions(&self) -> usize {
        self.committer.applier.sessions()
    }

    /// The limits the applier's session table keeps.
    #[must_use]
    pub fn session_limits(&self) -> SessionLimits {
        self.committer.applier.limits()
    }

    /// Committed batches the state machine already held when the shard opened (it persists
    /// itself: [`StateMachine::persisted_slot`]), so not applied again.
    #[must_use]
    pub fn skipped_batches(&self) -> u64 {
        self.committer.skipped_batches
    }

    /// A message arrived from a peer.
    ///
    /// # Errors
    /// `Ok(Err(..))` if the message was refused (wrong cluster, unknown node, a value out of
    /// range, a batch that does not parse: `Replica::check_envelope`): nothing changed; log
    /// it and go on. `Err(..)` if the shard failed.
    pub fn on_message(
        &mut self,
        envelope: Envelope,
    ) -> Result<Result<(), RefusedMessage>, ShardError> {
        if let Message::Snapshot { .. } | Message::SnapshotPull { .. } = envelope.message {
            // Handled here, not by the replica, but refused by the same rules: its cluster, a
            // known sender other than this node, values in range.
            if let Err(refused) = self.replica.check_envelope(&envelope) {
                return Ok(Err(refused));
            }
            self.on_snapshot_message(envelope.from, envelope.message)?;
            return Ok(Ok(()));
        }
        let refused = self.replica.on_message(envelope);
        self.process_actions()?;
        Ok(refused)
    }

    /// A tick of time passed.
    ///
    /// # Errors
    /// The shard failed.
    pub fn on_tick(&mut self) -> Result<(), ShardError> {
        self.on_ticks(1)
    }

    /// `ticks` ticks of time passed at once ([`Replica::on_ticks`]).
    ///
    /// # Errors
    /// The shard failed.
    pub fn on_ticks(&mut self, ticks: u64) -> Result<(), ShardError> {
        self.replica.on_ticks(ticks);
        self.process_actions()?;
        self.expire_parked_reads();
        self.run_timers()
    }

    /// The shard's clock, in milliseconds of ticks.
    fn now_ms(&self) -> u64 {
        self.replica.now_tick().saturating_mul(self.settings.tick_us) / 1000
    }

    /// Answers the parked reads whose wait is over (empty, with where the state is now).
    fn expire_parked_reads(&mut self) {
        if self.reads.parked() == 0 {
            return;
        }
        let applied = self.replica.commit_index();
        let now_ms = self.now_ms();
        self.answering_reads(|reads, machine, out| reads.expire(applied, machine, now_ms, out));
    }

    /// Lets `answer` answer reads onto the replies, and tells the hooks how many it answered.
    fn answering_reads(
        &mut self,
        answer: impl FnOnce(&mut reads::Reads, &S, &mut Vec<AppliedCommand<S::Reply>>),
    ) {
        let machine = self.committer.applier.machine();
        let before = self.committer.replies.len();
        answer(&mut self.reads, machine, &mut self.committer.replies);
        let answered = self.committer.replies.len() - before;
        if answered > 0 {
            self.hooks.read_answered(answered);
        }
    }

    /// As the leader, proposes the commands of the state machine's timers that ran out (a
    /// lease's expiry: [`StateMachine::timers`]), timed on the replica's ticks. Only where the
    /// machine lives ([`ApplyTo::Shard`]). A proposal refused (the pipeline is full) is made
    /// again a second later.
    fn run_timers(&mut self) -> Result<(), ShardError> {
        if self.settings.apply != ApplyTo::Shard {
            return Ok(());
        }
        let now_ms = self.now_ms();
        let leading = self.replica.role() == crate::core::RoleKind::Leader;
        let machine = self.committer.applier.machine();
        let drift_ppm = self.replica.config().max_clock_drift_ppm;
        let due = self.timers.due(now_ms, leading, drift_ppm, |out| machine.timers(out));
        if due.is_empty() {
            return Ok(());
        }
        for timer in due {
            let command = machine.timer_command(&timer);
            let id = RequestId { client: RequestId::LEADER, sequence: self.timers.next_sequence };
            self.timers.next_sequence += 1;
            // Refused (busy, or leadership moving): proposed again after a while.
            let _ = self.replica.propose(id, &command);
        }
        // Sent now: left in the open batch, an expiry would wait for the next client request
        // to this shard, and the batch it waits in keeps the idle leader from skipping
        // (`Replica::skip_to`), which holds the other shards' coordination replies.
        self.replica.flush();
        self.process_actions()
    }

    /// Proposes a client command; its reply comes out of [`Shard::take_replies`] once applied.
    /// A register-session command gets the leader's entropy first ([`seal_register`]).
    ///
    /// # Errors
    /// `Ok(Err(..))`: refused (not the leader, busy, too large, a malformed register-session
    /// command). `Err(..)`: the shard failed.
    pub fn propose(
        &mut self,
        id: RequestId,
        payload: &[u8],
    ) -> Result<Result<(), ProposeError>, ShardError> {
        let result = if id.client == RequestId::REGISTER {
            let mut entropy = [0; REGISTER_ENTROPY_BYTES];
            match (self.hooks.entropy(&mut entropy), seal_register(payload, entropy)) {
                (true, Ok(sealed)) => self.replica.propose(id, &sealed),
                (false, _) => {
                    Err(ProposeError::Refused("the leader has no entropy for a session id"))
                }
                (_, Err(reason)) => Err(ProposeError::Refused(reason)),
            }
        } else if id.is_query() && self.reads_off_the_log() {
            self.register_read(id, payload, ReadOptions::default()).map(|_| ())
        } else {
            self.replica.propose(id, payload)
        };
        self.process_actions()?;
        Ok(result)
    }

    /// A query with its consistency (protocol.md §5.3–§5.5): answered without the log, by the
    /// read index, a lease, the leader's index for a follower, or at once if stale; its answer
    /// comes out of [`Shard::take_replies`], with the slot its state reflects (every slot
    /// below it applied). Returns how it was taken. Without reads off the log
    /// ([`ShardSettings::read_index`] off, or [`ApplyTo::Forward`]) every read is ordered in
    /// the log by the leader, whatever its consistency.
    ///
    /// # Errors
    /// `Ok(Err(..))`: refused (not the leader for a linearizable or lease read; a stale read
    /// beyond its bound, [`ProposeError::TooStale`]). `Err(..)`: the shard failed.
    pub fn read(
        &mut self,
        id: RequestId,
        payload: &[u8],
        options: ReadOptions,
    ) -> Result<Result<ReadPath, ProposeError>, ShardError> {
        let anywhere = matches!(options.consistency, Consistency::Follower | Consistency::Stale);
        let result = if self.reads_off_the_log() {
            self.register_read(id, payload, options)
        } else if anywhere {
            // The state lives with the node's one applier (or reads are ordered in the log):
            // only the leader can answer, in the log.
            Err(ProposeError::Refused(
                "follower and stale reads need reads off the log, by each shard's own state \
                 machine (--apply shard)",
            ))
        } else {
            self.replica.propose(id, payload).map(|()| ReadPath::Round)
        };
        self.process_actions()?;
        Ok(result)
    }

    fn reads_off_the_log(&self) -> bool {
        self.settings.read_index && self.settings.apply == ApplyTo::Shard
    }

    fn register_read(
        &mut self,
        id: RequestId,
        payload: &[u8],
        options: ReadOptions,
    ) -> Result<ReadPath, ProposeError> {
        if options.consistency == Consistency::Stale {
            let staleness = self.replica.staleness();
            let behind_ms = staleness.ticks.saturating_mul(self.settings.tick_us) / 1000;
            let too_many = options.behind_slots_max.is_some_and(|max| staleness.slots > max);
            let too_old = options.behind_ms_max.is_some_and(|max| behind_ms > max);
            if too_many || too_old {
                return Err(ProposeError::TooStale { behind_slots: staleness.slots, behind_ms });
            }
        }
        // Registered before the replica hears of it: a lone voter confirms at once.
        self.reads.register(id, payload);
        let read = self.replica.read(id, options.consistency, options.from_slot);
        if read.is_err() {
            self.reads.forget(id);
        }
        read
    }

    /// Moves the reads aborted by a lost leadership onto `out`, each with the leader to send
    /// its client to.
    pub fn take_aborted_reads(&mut self, out: &mut Vec<(RequestId, Option<NodeId>)>) {
        out.append(&mut self.reads.aborted);
    }

    /// An idle leader skips up to `target` (see [`Replica::skip_to`]).
    ///
    /// # Errors
    /// The shard failed.
    pub fn skip_to(&mut self, target: Slot) -> Result<(), ShardError> {
        if self.replica.skip_to(target).is_some() {
            self.process_actions()?;
        }
        Ok(())
    }

    /// A leader proposes a no-op over `slots` slots (the simulator's fault: a runtime skips
    /// only with [`Shard::skip_to`]).
    ///
    /// # Errors
    /// The shard failed.
    pub fn propose_skip(&mut self, slots: u64) -> Result<(), ShardError> {
        if self.replica.propose_skip(slots).is_ok() {
            self.process_actions()?;
        }
        Ok(())
    }

    /// Hands this shard's leadership to voter `to` ([`Replica::transfer_leadership`],
    /// protocol.md §3.10).
    ///
    /// # Errors
    /// `Ok(Err(..))`: refused (not the leader, `to` not another voter, a transfer under way).
    /// `Err(..)`: the shard failed.
    pub fn transfer_leadership(
        &mut self,
        to: NodeId,
    ) -> Result<Result<(), TransferError>, ShardError> {
        let result = self.replica.transfer_leadership(to);
        self.process_actions()?;
        Ok(result)
    }

    /// Sends the open batch if the pipeline has room (after a burst of proposals).
    ///
    /// # Errors
    /// The shard failed.
    pub fn flush(&mut self) -> Result<(), ShardError> {
        self.replica.flush();
        self.process_actions()
    }

    /// Starts a sync of everything appended, if one is due and none is under way. Run the
    /// returned flush on a helper thread, then hand its outcome to [`Shard::finish_sync`].
    ///
    /// # Errors
    /// The log is poisoned.
    pub fn start_sync(&mut self) -> Result<Option<PendingSync>, ShardError> {
        self.journal.start_sync()
    }

    /// A flush finished: tell the core what is durable and release the replies that waited.
    ///
    /// # Errors
    /// The flush failed (the log is now poisoned), or the shard failed.
    pub fn finish_sync(&mut self, outcome: SyncOutcome) -> Result<(), ShardError> {
        let mut released = match self.journal.finish_sync(outcome) {
            Ok(released) => released,
            Err(error) => {
                tracing::error!(
                    shard = self.settings.shard,
                    %error,
                    "WAL sync failed: the log is poisoned and the shard stops (a failed sync is \
                     never retried)"
                );
                return Err(error);
            }
        };
        self.hooks.durable(std::mem::take(&mut released.extras));
        if let Some(seq) = released.seq {
            self.replica.on_persisted(seq);
        }
        let me = self.replica.node();
        let cluster_id = self.replica.config().cluster_id;
        for (to, message) in released.then_send {
            if to == me {
                self.replica
                    .on_message(Envelope { cluster_id, from: me, message })
                    .expect("a replica accepts its own messages");
            } else {
                self.outbox.push((to, message));
            }
        }
        // After the acknowledgements above, which may have chosen these slots.
        for batch in released.shared_batches {
            if self.replica.share_batch(batch.slot, batch.bytes, &batch.original) {
                self.shared_batches += 1;
            } else {
                self.unshared_batches += 1;
            }
        }
        self.process_actions()
    }

    /// Whether the WAL can get its next segment ([`quorum_wal::Wal::check_space`]): a full disk
    /// is reported here before an append fails, so the runtime can stop feeding the replica
    /// (issue #21, docs/disk-faults.md). Cheap; call it every tick.
    ///
    /// # Errors
    /// The log is poisoned, or preparing the segment failed other than for lack of space.
    pub fn check_space(&mut self) -> Result<quorum_wal::Space, ShardError> {
        Ok(self.journal.check_space()?)
    }

    /// Moves the messages to send onto `out`.
    pub fn take_outbox(&mut self, out: &mut Vec<(NodeId, Message)>) {
        out.append(&mut self.outbox);
    }

    /// Moves the committed runs waiting to be applied elsewhere ([`ApplyTo::Forward`]) onto
    /// `out`, in slot order.
    pub fn take_committed(&mut self, out: &mut Vec<Committed>) {
        if let Some(forwarded) = &mut self.committer.forwarded {
            out.append(forwarded);
        }
    }

    /// Moves the outcomes of applied client commands onto `out`.
    pub fn take_replies(&mut self, out: &mut Vec<AppliedCommand<S::Reply>>) {
        out.append(&mut self.committer.replies);
    }

    /// Slots below this may be gone from the WAL (see [`Journal::floor`]).
    #[must_use]
    pub fn log_floor(&self) -> Slot {
        self.journal.floor()
    }

    /// The committed runs of `from_slot..end_slot` from the WAL, for slots the replica
    /// compacted away (see [`Journal::archived_runs`]).
    ///
    /// # Errors
    /// The log cannot be read.
    pub fn archived_runs(
        &self,
        from_slot: Slot,
        end_slot: Slot,
        bytes_max: usize,
    ) -> Result<Vec<SlotRun>, ShardError> {
        self.journal.archived_runs(from_slot, end_slot, bytes_max)
    }

    fn process_actions(&mut self) -> Result<(), ShardError> {
        let mut actions = std::mem::take(&mut self.actions);
        self.replica.take_actions(&mut actions);
        let result = self.carry_out(&mut actions);
        actions.clear();
        self.actions = actions;
        result
    }

    fn carry_out(&mut self, actions: &mut Vec<Action>) -> Result<(), ShardError> {
        for action in actions.drain(..) {
            match action {
                Action::Send { to, message } => self.outbox.push((to, message)),
                Action::Persist { seq, record, then_send } => {
                    let kept = self.hooks.keep(&record);
                    self.journal.append(seq, &record, then_send, kept)?
                }
                Action::Commit { first_slot, count, value } => {
                    self.committer.commit(first_slot, count, value, true, &mut self.hooks)?
                }
                Action::SendArchived { to, from_slot, end_slot, commit_index } => {
                    let runs_max = self.replica.config().message_runs_max;
                    let messages = self.journal.archived_messages(
                        from_slot,
                        end_slot,
                        commit_index,
                        runs_max,
                        (self.settings.archive_read_bytes_max, self.settings.snapshot_piece_bytes),
                    )?;
                    self.hooks.archived(messages.len());
                    self.outbox.extend(messages.into_iter().map(|message| (to, message)));
                }
                Action::Repaired => {
                    tracing::info!(shard = self.settings.shard, "repair finished: voting again");
                    self.journal.finish_repair()?;
                    self.hooks.repaired();
                }
                Action::ReadReady { reads } => self.reads.confirmed(reads),
                Action::ReadsAborted { ids } => {
                    self.reads.aborted(ids, self.replica.leader_hint());
                }
            }
        }
        // Every commit the replica announced is applied now: answer the reads it covers.
        let applied = self.replica.commit_index();
        let leading = self.replica.role() == crate::core::RoleKind::Leader;
        if !leading && self.reads.parked() > 0 {
            // Only a leader wakes parked reads; a new one answers them once asked again.
            self.reads.abort_parked(self.replica.leader_hint());
        }
        let now_ms = self.now_ms();
        self.answering_reads(|reads, machine, out| {
            reads.answer(applied, machine, leading, now_ms, out);
        });
        Ok(())
    }
}

/// Wires replicas of one shard together in one thread, for tests and benches: runs every sync
/// and every snapshot due, and delivers every message until nothing moves. Replica `i` is node `i + 1`; `None` is a
/// replica that is down (messages to it are lost). `on_replies` gets each replica's outcomes
/// of applied commands, with the replica.
///
/// # Errors
/// A shard failed.
///
/// # Panics
/// A replica refused a message from another (they must share a cluster).
pub fn settle_wired<B: Backend, S: StateMachine>(
    shards: &mut [Option<Shard<B, S>>],
    mut on_replies: impl FnMut(&Shard<B, S>, Vec<AppliedCommand<S::Reply>>),
) -> Result<(), ShardError> {
    loop {
        let mut moved = false;
        let mut mail: Vec<(usize, NodeId, Message)> = Vec::new();
        for (index, shard) in shards.iter_mut().enumerate() {
            let Some(shard) = shard.as_mut() else { continue };
            if let Some(pending) = shard.start_sync()? {
                shard.finish_sync(pending.run())?;
                moved = true;
            }
            if let Some(pending) = shard.start_snapshot() {
                shard.finish_snapshot(pending.run())?;
                moved = true;
            }
            let mut out = Vec::new();
            shard.take_outbox(&mut out);
            let mut replies = Vec::new();
            shard.take_replies(&mut replies);
            on_replies(shard, replies);
            let from = NodeId(index as u16 + 1);
            mail.extend(
                out.into_iter().map(|(to, message)| (usize::from(to.0) - 1, from, message)),
            );
        }
        for (to, from, message) in mail {
            moved = true;
            if let Some(shard) = shards.get_mut(to).and_then(Option::as_mut) {
                let cluster_id = shard.replica().config().cluster_id;
                shard
                    .on_message(Envelope { cluster_id, from, message })?
                    .expect("replicas of one shard accept each other's messages");
            }
        }
        if !moved {
            return Ok(());
        }
    }
}
