//! The contract between Quorum and the database it replicates ([`StateMachine`]), and what sits
//! on Quorum's side of it: the [`applier`] that keeps client sessions, the built-in key-value
//! store ([`kv`]) and the node's wrapper of it ([`node`]), and one total order over all shards ([`merge`], [`total_order`]).

pub mod applier;
pub mod kv;
pub mod merge;
pub mod node;
pub mod total_order;

use crate::core::{RequestId, Slot};
use crate::storage::snapshot::SnapshotError;

pub use applier::{
    Applier, REGISTER_ENTROPY_BYTES, REGISTER_NONCE_BYTES, SessionLimits, register_request,
    seal_register,
};
pub use kv::{CoordCommand, CoordReply, KvCommand, KvCommandRef, KvReply, KvStore, shard_for_key};
pub use node::NodeMachine;

/// What a database implements to be replicated by Quorum.
///
/// # Correctness
/// `apply` must be deterministic: the same commands in the same order give the same state and
/// the same replies on every replica. It must not read clocks, randomness or local files.
pub trait StateMachine {
    /// The reply to one command.
    type Reply: Clone;

    /// Applies one committed command and returns its reply.
    fn apply(&mut self, command: &[u8]) -> Self::Reply;

    /// Applies one committed command at `revision`, its place in the merged order of every
    /// shard ([`kv::coord::revision_of`]: revisions grow along the order, and every replica
    /// applies a command at the same one). A machine that stamps its writes (the built-in
    /// store's revisions) takes it here; the default calls [`StateMachine::apply`].
    fn apply_at(&mut self, revision: u64, command: &[u8]) -> Self::Reply {
        let _ = revision;
        self.apply(command)
    }

    /// Called once the commands of the committed batch at `slot` were applied, before
    /// anything else looks at the state (a query, a snapshot, a summary). A machine that
    /// groups its writes (a database: one transaction per batch) makes them whole here, and
    /// a machine that persists itself records `slot` in the same write (see
    /// [`StateMachine::persisted_slot`]). Where batches end must not change what the commands
    /// do; the default does nothing.
    fn on_batch_applied(&mut self, slot: Slot) {
        let _ = slot;
    }

    /// True for a machine that keeps its state in storage of its own (an on-disk database)
    /// and reports how far with [`StateMachine::persisted_slot`]. Fixed for the type, so that
    /// every replica keeps its sessions alike: such a machine's sessions are bounded by the
    /// count of replies alone ([`SessionLimits::replies_max`]), not by their bytes, so its
    /// replies should be small (a row count, a status; a large answer belongs to a query).
    const PERSISTS: bool = false;

    /// For a machine that keeps its state in storage of its own (an on-disk database): the
    /// slot of the last batch that storage holds (the `slot` of the last
    /// [`StateMachine::on_batch_applied`] it recorded), as found when the machine was made,
    /// or `None` for a machine that starts empty (the default: a state held in memory).
    ///
    /// With `Some(slot)`, a start that finds a snapshot at or below `slot` restores only
    /// Quorum's session table from it and keeps this machine, and the batches up to `slot`
    /// are not applied again: a restart applies only the log after it (docs/embedding.md,
    /// "A machine that persists itself"). A snapshot above `slot` is restored as for any
    /// machine. Only for shards that apply their own log (`--apply shard`), and only read if
    /// [`StateMachine::PERSISTS`] is true.
    fn persisted_slot(&self) -> Option<Slot> {
        None
    }

    /// Makes every batch applied so far durable in the machine's own storage, so that
    /// after a crash or a power cut [`StateMachine::persisted_slot`] is at least the last
    /// one. Quorum calls it before a snapshot releases the log below it, so that the log a
    /// restart may need is kept until the machine holds it durably. The default does
    /// nothing: a machine held in memory is rebuilt from the snapshot and the log.
    ///
    /// # Errors
    /// The storage's (a failed fsync): the shard stops, as for a failed sync of its log,
    /// and the log is not released.
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    /// The timers the shard's leader keeps for the machine (a lease's TTL: docs/coordination.md),
    /// appended to `out`. Apply never reads a clock: the leader times each timer on its own
    /// clock, restarting it whenever its generation changes (a keep-alive was applied) and
    /// whenever it becomes leader, and once it runs out proposes
    /// [`StateMachine::timer_command`] through the log. The default has none.
    fn timers(&self, out: &mut Vec<Timer>) {
        let _ = out;
    }

    /// The command the leader proposes when `timer` runs out (a lease's expiry). It must be
    /// refused when applied if the timer moved on since (its generation changed): the leader's
    /// view may be late.
    fn timer_command(&self, timer: &Timer) -> Vec<u8> {
        let _ = timer;
        Vec::new()
    }

    /// Answers a read-only request from the state as it is, changing nothing. Every replica
    /// at the same applied position gives the same answer. The leader calls it for a query by
    /// the read index, once it has confirmed it still leads and applied up to the query's
    /// index (protocol.md §5.3), so the answer is linearizable without the log.
    fn query(&self, request: &[u8]) -> Self::Reply;

    /// For a query whose answer says "nothing yet" and that asked to wait (a watch's long
    /// poll, the built-in store's [`kv::CoordCommand::ChangesWait`]): where and how long it
    /// waits. The shard's leader then holds the read, confirmed already by its read index,
    /// and asks [`StateMachine::query`] again once a change [`StateMachine::changed_since`]
    /// reports matches [`QueryWait::on`], or once `wait_ms` passed (answering what it says
    /// then). The default: no query waits.
    ///
    /// # Correctness
    /// Waiting only delays an answer that reflects at least the read's index: a query must
    /// ask to wait only if an answer later is as right as one now.
    fn query_wait(&self, request: &[u8], reply: &Self::Reply) -> Option<QueryWait> {
        let _ = (request, reply);
        None
    }

    /// The answer to a query that would wait ([`StateMachine::query_wait`]) while the shard
    /// holds [`WAITING_QUERIES_MAX`] already: a refusal the client understands. `None` (the
    /// default) answers at once what the query found.
    fn wait_refused(&self, request: &[u8]) -> Option<Self::Reply> {
        let _ = request;
        None
    }

    /// A number that changes whenever keys change (the built-in store's revision): the shard
    /// asks [`StateMachine::changed_since`] only when it moved. The default never moves.
    fn change_mark(&self) -> u64 {
        0
    }

    /// Visits every key changed since [`StateMachine::change_mark`] was `mark` (a key may come
    /// more than once); false if the machine cannot tell (it no longer keeps them), and every
    /// waiting query is then asked again.
    fn changed_since(&self, mark: u64, visit: &mut dyn FnMut(&[u8])) -> bool {
        let _ = (mark, visit);
        false
    }

    /// True for the reply of a write whose place in the merged order must follow real time
    /// across shards (the built-in store's coordination writes, docs/coordination.md): the
    /// node answers it only once every shard has committed past it, so that a write made after
    /// the answer, on any shard, comes later in the merged order. It costs the answer the wait
    /// for the other shards (an idle one's skip). The default: none, each write answered once
    /// its own shard has it.
    fn orders_across_shards(reply: &Self::Reply) -> bool {
        let _ = reply;
        false
    }

    /// Appends a reply's encoding to `out`, to send it to the client.
    fn encode_reply(reply: &Self::Reply, out: &mut Vec<u8>);

    /// Reads a reply back from [`StateMachine::encode_reply`]'s bytes (the session table in a
    /// snapshot); `None` if they do not decode.
    fn decode_reply(bytes: &[u8]) -> Option<Self::Reply>;

    /// The length of [`StateMachine::encode_reply`]'s bytes for `reply`: what a session is
    /// charged for keeping it. Must be the same on every replica.
    fn reply_size_bytes(reply: &Self::Reply) -> usize {
        let mut encoded = Vec::new();
        Self::encode_reply(reply, &mut encoded);
        encoded.len()
    }

    /// A short summary of the state for operators and tests: equal states give equal
    /// summaries on every replica.
    fn summary(&self) -> StateSummary;

    /// Writes the whole state to `out`, for a snapshot (docs/snapshots.md). Two replicas in
    /// the same state must write the same bytes. The image is streamed: `out` takes it in
    /// pieces of any size (it is buffered, checksummed and written to the snapshot's file as
    /// it comes), so a state larger than memory is never held whole. [`crate::write_u64`] and
    /// [`crate::write_field`] write the usual fields.
    ///
    /// # Errors
    /// `out`'s error (a full disk, say), passed on: the snapshot is then not taken.
    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()>;

    /// The state [`StateMachine::snapshot`] wrote, read from a stream of exactly its bytes
    /// (buffered: small reads are cheap; it ends where the image ends). Read it in bounded
    /// steps ([`crate::ImageReader`] does): a damaged length must never
    /// make it allocate more than the stream holds. The snapshot's checksum is checked after
    /// this returns, over every byte, so a damaged stream is refused whatever it made of it.
    ///
    /// # Errors
    /// The bytes are not such an image, or the stream is cut short
    /// ([`SnapshotError::reading`]). Never panics on bad input.
    fn restore(image: &mut dyn std::io::Read) -> Result<Self, SnapshotError>
    where
        Self: Sized;
}

/// Most queries that wait ([`StateMachine::query_wait`]) one shard holds at once; past it a
/// query that would wait gets [`StateMachine::wait_refused`].
pub const WAITING_QUERIES_MAX: usize = 16_384;

/// Where and how long a query waits ([`StateMachine::query_wait`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryWait {
    /// The changes that wake it.
    pub on: WaitOn,
    /// The longest it waits, in milliseconds (counted in the shard's ticks).
    pub wait_ms: u64,
}

/// The keys whose change wakes a waiting query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitOn {
    /// This key.
    Key(Vec<u8>),
    /// Any key that starts with these bytes.
    Prefix(Vec<u8>),
    /// Any key at all (asked again after every batch that changed one).
    Any,
}

impl WaitOn {
    /// True if a change of `key` may answer the query.
    #[must_use]
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            WaitOn::Key(one) => key == one.as_slice(),
            WaitOn::Prefix(prefix) => key.starts_with(prefix),
            WaitOn::Any => true,
        }
    }
}

/// A timer of the state machine's, run by the shard's leader ([`StateMachine::timers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timer {
    /// Which timer (a lease's id).
    pub id: u64,
    /// Changes whenever the timer is restarted (a lease's keep-alives applied).
    pub generation: u64,
    /// How long it runs, in milliseconds.
    pub ttl_ms: u64,
}

/// What [`StateMachine::summary`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateSummary {
    /// Entries held (keys, rows…).
    pub entries: u64,
    /// A hash of the whole state, independent of how it is laid out in memory.
    pub digest: u64,
}

/// What became of one command of a committed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<R> {
    /// Applied now, with this reply.
    Applied(R),
    /// Applied before under the same request id; this is the reply it got then.
    Duplicate(R),
    /// Too old to tell whether it was applied (its session dropped its reply, by count or by
    /// bytes); not applied.
    Expired,
    /// The table holds no session of its client id (evicted while idle, or never
    /// registered): not applied, and no request under that id will be (a retry could
    /// otherwise be applied a second time). The client registers a new session.
    SessionExpired,
    /// A register-session command: the session's client id. A retry of the same command (its
    /// nonce) gets the same id while the session lives.
    Registered(u64),
}

/// What became of one applied client command, and where it was committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedCommand<R> {
    /// The request.
    pub id: RequestId,
    /// The slot of its batch.
    pub slot: Slot,
    /// Its place in the batch.
    pub index: u32,
    /// What became of it.
    pub outcome: Outcome<R>,
}
