//! Quorum arithmetic over a fixed voter set. Learners never appear here (protocol.md, I7).

use super::types::NodeId;

/// The voters of a shard and the majority they need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voters {
    ids: Vec<NodeId>,
}

impl Voters {
    /// Voters from a list of distinct ids; at most 64 (the acknowledgement sets are 64-bit masks).
    ///
    /// # Panics
    /// If the list is empty, has duplicates or more than 64 ids; the config validates this first.
    #[must_use]
    pub fn new(mut ids: Vec<NodeId>) -> Voters {
        ids.sort();
        assert!(!ids.is_empty(), "a shard needs at least one voter");
        assert!(ids.len() <= 64, "at most 64 voters, got {}", ids.len());
        assert!(ids.windows(2).all(|w| w[0] != w[1]), "duplicate voter in {ids:?}");
        Voters { ids }
    }

    /// The number of voters.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Always false: a voter set has at least one voter.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The smallest number of voters any two of whose sets intersect: `n / 2 + 1`.
    #[must_use]
    pub fn majority(&self) -> usize {
        self.ids.len() / 2 + 1
    }

    /// The voter ids, sorted.
    #[must_use]
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// The bit of `node` in a [`VoteSet`], or `None` if it is not a voter.
    #[must_use]
    pub fn index_of(&self, node: NodeId) -> Option<usize> {
        self.ids.binary_search(&node).ok()
    }

    /// True if `node` votes.
    #[must_use]
    pub fn contains(&self, node: NodeId) -> bool {
        self.index_of(node).is_some()
    }

    /// True if the set holds a majority of these voters.
    #[must_use]
    pub fn is_quorum(&self, set: VoteSet) -> bool {
        set.count() >= self.majority()
    }
}

/// A set of voters, as a bit mask over their sorted positions. Copy, no allocation.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct VoteSet(u64);

impl VoteSet {
    /// The empty set.
    pub const EMPTY: VoteSet = VoteSet(0);

    /// Adds the voter at `index`; returns true if it was not there yet.
    pub fn insert(&mut self, index: usize) -> bool {
        assert!(index < 64, "voter index {index} out of range");
        let bit = 1u64 << index;
        let fresh = self.0 & bit == 0;
        self.0 |= bit;
        fresh
    }

    /// True if the voter at `index` is in the set.
    #[must_use]
    pub fn contains(self, index: usize) -> bool {
        index < 64 && self.0 & (1u64 << index) != 0
    }

    /// How many voters are in the set.
    #[must_use]
    pub fn count(self) -> usize {
        self.0.count_ones() as usize
    }
}
