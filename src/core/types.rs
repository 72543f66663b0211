//! Identities and positions: small newtypes so that a slot is never mistaken for a node or a
//! round (docs/style.md, Naming), and the ranges a message may name them in (protocol.md §2.1).

use std::fmt;

/// A node's identity within a cluster. Voters and learners share one id space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct NodeId(pub u16);

/// The identity of a cluster; every message carries it and a wrong one is refused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct ClusterId(pub u64);

/// A position in one shard's log. Each slot holds one value (a batch or a no-op).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Slot(pub u64);

/// The largest slot a message may name, and the largest end of a run it may carry: values
/// from the network above it are refused where they enter (protocol.md §2.1). Far beyond any
/// real log (146,000 years at a million slots a second), and low enough that adding a window
/// or a count to a slot below it cannot overflow.
pub const SLOT_MAX: Slot = Slot(1 << 62);

/// The largest round a message may name, for the same reasons as [`SLOT_MAX`]: a replica goes
/// one round above the highest it has seen, and that addition must not overflow.
pub const ROUND_MAX: u64 = 1 << 62;

impl Slot {
    /// The slot `count` positions after this one.
    ///
    /// # Panics
    /// The sum overflows: a bug in our own arithmetic, since values from the network are
    /// checked against [`SLOT_MAX`] first.
    #[must_use]
    pub fn plus(self, count: u64) -> Slot {
        Slot(self.0.checked_add(count).expect("slot overflow"))
    }

    /// The slot `count` positions after this one, or the last slot if that is beyond it: for
    /// windows and limits added to a position (a configured window may be `u64::MAX`).
    #[must_use]
    pub fn saturating_plus(self, count: u64) -> Slot {
        Slot(self.0.saturating_add(count))
    }
}

/// A Paxos ballot: `(round, node)`, ordered by round first and node second, so two proposers
/// never share a ballot (protocol.md, I1).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Ballot {
    /// Increases with every election a node starts.
    pub round: u64,
    /// The node that owns this ballot; only it may propose in it.
    pub node: NodeId,
}

impl Ballot {
    /// The ballot below every real one: nothing was promised or accepted.
    pub const ZERO: Ballot = Ballot { round: 0, node: NodeId(0) };

    /// A ballot of `node` in `round`.
    #[must_use]
    pub fn new(round: u64, node: NodeId) -> Ballot {
        Ballot { round, node }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.node.0)
    }
}

/// Identifies one client request: a retry carries the same id, so the request is applied at
/// most once however many times it is proposed (protocol.md, I9).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct RequestId {
    /// The client's identity, unique in the cluster.
    pub client: u64,
    /// Increases by one with each new request of this client.
    pub sequence: u64,
}

impl RequestId {
    /// The `client` of a register-session command (protocol.md §5.1): no session has this id.
    pub const REGISTER: u64 = 0;

    /// The `client` of a command the shard's leader proposes of its own (a state machine's
    /// timer running out: a lease's expiry): applied without a session, never deduplicated (such
    /// a command is refused when it no longer applies), and refused from clients at the door. No
    /// session has this id.
    pub const LEADER: u64 = u64::MAX;

    /// Set in the `sequence` of a query (protocol.md §5.2): answered by the state machine's
    /// read-only `query`, never applied, never kept in its session. Sequences of commands stay
    /// below it.
    pub const QUERY_BIT: u64 = 1 << 62;

    /// True if this is a query's id.
    #[must_use]
    pub fn is_query(self) -> bool {
        self.client != RequestId::REGISTER && self.sequence & RequestId::QUERY_BIT != 0
    }

    /// True unless a client's request has the sequence's top bit set: only register-session
    /// commands use it (and a snapshot marks replies with it), so a node refuses such a
    /// request and the applier never keeps one (protocol.md §5.1).
    #[must_use]
    pub fn has_valid_sequence(self) -> bool {
        self.client == RequestId::REGISTER || self.sequence < 1 << 63
    }
}

/// The sequence number of a persist action; `on_persisted(seq)` reports every persist up to and
/// including `seq` durable.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct PersistSeq(pub u64);
