//! Identities and positions: small newtypes so that a slot is never mistaken for a node or a
//! round (STYLE.md, Naming).

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

impl Slot {
    /// The slot `count` positions after this one.
    #[must_use]
    pub fn plus(self, count: u64) -> Slot {
        Slot(self.0.checked_add(count).expect("slot overflow"))
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

/// The sequence number of a persist action; `on_persisted(seq)` reports every persist up to and
/// including `seq` durable.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct PersistSeq(pub u64);
