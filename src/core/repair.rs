//! Repair: what a voter whose log may have lost acknowledged records does before it votes
//! again (protocol.md §3.9).
//!
//! A voter that forgets an acceptance it acknowledged can lose a chosen value cluster-wide: a
//! later phase 1 counting its empty report may fill the slot with something else
//! ("Protocol-Aware Recovery for Consensus-Based Storage", FAST 2018). So a voter that opens a
//! damaged log, or an empty data directory (new, or wiped: it cannot tell), neither promises
//! nor accepts until it has asked **every other voter** what it holds:
//!
//! - its promise rises to the highest any of them has promised, and
//! - it commits, durably, every slot up to the highest any of them holds anything for.
//!
//! Why every other voter, not a majority: a value chosen with this voter's acceptance is held
//! by the others of that quorum; a ballot this voter promised before its loss is held by the
//! candidate that asked for it (its own promise comes first), and a slot it accepted by the
//! leader that proposed it (which accepts its own proposal before sending it). Asking them all
//! finds both, whatever messages are still delayed. The price: a repairing voter waits while
//! any other voter is down, and a new cluster elects its first leader once every voter has
//! started.

use super::quorum::VoteSet;
use super::types::{Ballot, PersistSeq, Slot};

/// A repair under way.
#[derive(Debug)]
pub(super) struct Repair {
    /// Echoed by the reports that answer this incarnation's queries.
    pub nonce: u64,
    /// Voters (by index) whose report came in; this replica's own index is set from the start.
    pub reported: VoteSet,
    /// The highest promise reported.
    pub promised_max: Ballot,
    /// The highest slot end or commit position reported.
    pub slot_end_max: Slot,
    /// Set once every other voter reported: the replica votes again once it has committed up
    /// to here and that is durable.
    pub until: Option<Slot>,
    /// The persist whose completion makes the repair durable.
    pub durable_seq: Option<PersistSeq>,
    /// When to ask the voters that have not answered again.
    pub query_due_tick: u64,
}

impl Repair {
    /// A repair that has heard only from this replica (voter index `my_index`).
    pub fn new(nonce: u64, my_index: usize) -> Repair {
        let mut reported = VoteSet::EMPTY;
        reported.insert(my_index);
        Repair {
            nonce,
            reported,
            promised_max: Ballot::ZERO,
            slot_end_max: Slot(0),
            until: None,
            durable_seq: None,
            query_due_tick: 0,
        }
    }

    /// Takes voter `index`'s report; returns true if it was new.
    pub fn on_report(
        &mut self,
        index: usize,
        promised: Ballot,
        slot_end: Slot,
        commit_index: Slot,
    ) -> bool {
        if self.until.is_some() || !self.reported.insert(index) {
            return false;
        }
        self.promised_max = self.promised_max.max(promised);
        self.slot_end_max = self.slot_end_max.max(slot_end).max(commit_index);
        true
    }
}
