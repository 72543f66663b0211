//! One shard replica with everything it needs to run, but no runtime: the protocol core, its
//! write-ahead log, and the state machine it applies to. A runtime (glommio, or a test loop)
//! feeds it messages, ticks and proposals, runs its syncs on a helper thread, and carries its
//! outgoing messages and client replies away. Keeping this free of any runtime lets the same
//! code run under the node, the tests and the benches.
//!
//! Durability: every record the core asks to persist is appended to the WAL at once; the
//! replies it holds back (`then_send`) leave only when a sync covering the record completed
//! (protocol.md, I3). A failed sync poisons the log and fails the shard.

use std::collections::VecDeque;

use quorum_wal::{Backend, Options, PendingSync, SyncOutcome, Wal};

use crate::core::{
    Action, Config, Envelope, Message, NodeId, PersistSeq, ProposeError, RefusedMessage, Replica,
    RequestId, Value,
};
use crate::log_record;
use crate::state_machine::{Applier, Outcome, StateMachine};

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
    BadRecord(#[from] log_record::BadLogRecord),
    /// A committed batch did not decode.
    #[error(transparent)]
    BadBatch(#[from] crate::core::MalformedBatch),
}

/// A persist appended to the log, waiting for a sync to cover it.
#[derive(Debug)]
struct Unsynced {
    end_position: u64,
    seq: PersistSeq,
    then_send: Option<(NodeId, Message)>,
}

/// One shard replica, its log and its state machine.
pub struct Shard<B: Backend, S: StateMachine> {
    replica: Replica,
    wal: Wal<B>,
    applier: Applier<S>,
    actions: Vec<Action>,
    payload: Vec<u8>,
    unsynced: VecDeque<Unsynced>,
    outbox: Vec<(NodeId, Message)>,
    replies: Vec<(RequestId, Outcome<S::Reply>)>,
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
        session_window: usize,
    ) -> Result<Self, ShardError> {
        let (wal, _recovery) = Wal::open(backend, options)?;
        let mut records = Vec::new();
        for item in wal.iter_from(wal.first_position()) {
            let (_, record) = item?;
            records.push(log_record::decode(&record)?);
        }
        let replica = Replica::restore(config, &records)?;
        let mut shard = Shard {
            replica,
            wal,
            applier: Applier::new(machine, session_window),
            actions: Vec::with_capacity(64),
            payload: Vec::new(),
            unsynced: VecDeque::new(),
            outbox: Vec::new(),
            replies: Vec::new(),
        };
        shard.process_actions()?;
        Ok(shard)
    }

    /// The protocol core.
    #[must_use]
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The state machine.
    #[must_use]
    pub fn machine(&self) -> &S {
        self.applier.machine()
    }

    /// The log.
    #[must_use]
    pub fn wal(&self) -> &Wal<B> {
        &self.wal
    }

    /// A message arrived from a peer.
    ///
    /// # Errors
    /// `Ok(Err(..))` if the message was refused (wrong cluster, unknown node): log it and go on.
    /// `Err(..)` if the shard failed.
    pub fn on_message(
        &mut self,
        envelope: Envelope,
    ) -> Result<Result<(), RefusedMessage>, ShardError> {
        let refused = self.replica.on_message(envelope);
        self.process_actions()?;
        Ok(refused)
    }

    /// A tick of time passed.
    ///
    /// # Errors
    /// The shard failed.
    pub fn on_tick(&mut self) -> Result<(), ShardError> {
        self.replica.on_tick();
        self.process_actions()
    }

    /// Proposes a client command; its reply comes out of [`Shard::take_replies`] once applied.
    ///
    /// # Errors
    /// `Ok(Err(..))`: refused (not the leader, busy, too large). `Err(..)`: the shard failed.
    pub fn propose(
        &mut self,
        id: RequestId,
        payload: &[u8],
    ) -> Result<Result<(), ProposeError>, ShardError> {
        let result = self.replica.propose(id, payload);
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
        if self.unsynced.is_empty() {
            return Ok(None);
        }
        Ok(self.wal.start_sync()?)
    }

    /// A flush finished: tell the core what is durable and release the replies that waited.
    ///
    /// # Errors
    /// The flush failed (the log is now poisoned), or the shard failed.
    pub fn finish_sync(&mut self, outcome: SyncOutcome) -> Result<(), ShardError> {
        let durable = self.wal.finish_sync(outcome)?;
        let mut last = None;
        let mut own = Vec::new();
        while self.unsynced.front().is_some_and(|unsynced| unsynced.end_position <= durable) {
            let done = self.unsynced.pop_front().expect("checked");
            last = Some(done.seq);
            if let Some((to, message)) = done.then_send {
                if to == self.replica.node() {
                    own.push(message);
                } else {
                    self.outbox.push((to, message));
                }
            }
        }
        if let Some(seq) = last {
            self.replica.on_persisted(seq);
        }
        let me = self.replica.node();
        let cluster_id = self.replica.config().cluster_id;
        for message in own {
            self.replica
                .on_message(Envelope { cluster_id, from: me, message })
                .expect("a replica accepts its own messages");
        }
        self.process_actions()
    }

    /// Moves the messages to send onto `out`.
    pub fn take_outbox(&mut self, out: &mut Vec<(NodeId, Message)>) {
        out.append(&mut self.outbox);
    }

    /// Moves the outcomes of applied client commands onto `out`.
    pub fn take_replies(&mut self, out: &mut Vec<(RequestId, Outcome<S::Reply>)>) {
        out.append(&mut self.replies);
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
                    let encoded = log_record::encode(&record, &mut self.payload);
                    self.wal.append(&encoded)?;
                    self.unsynced.push_back(Unsynced {
                        end_position: self.wal.end_position(),
                        seq,
                        then_send,
                    });
                }
                Action::Commit { value: Value::Batch(bytes), .. } => {
                    let replies = &mut self.replies;
                    self.applier.apply_batch(&bytes, |id, outcome| replies.push((id, outcome)))?;
                }
                Action::Commit { value: Value::Noop, .. } => {}
            }
        }
        Ok(())
    }
}
