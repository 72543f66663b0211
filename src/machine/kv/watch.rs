//! Merging change feeds across shards (docs/coordination.md, "Watches"): a watch asks each
//! shard of its range for the changes from one revision on, and gives only those up to the
//! lowest revision every shard is known complete through, so a change of a shard that answered
//! late is never skipped and none is given twice. Shared by the client and the simulator, which
//! checks it.

use super::coord::{Change, ChangesReply, first_revision_at};

/// The highest revision a shard whose answer reflects every slot below `slot` has every
/// write of: its next slot lies at global position `slot · shards + shard`.
#[must_use]
pub fn reflected(slot: u64, shard: u16, shards: u16) -> u64 {
    first_revision_at(slot * u64::from(shards) + u64::from(shard)) - 1
}

/// One round of a watch: every shard of its range asked once for its changes from `next`.
#[derive(Debug)]
pub struct WatchRound {
    next: u64,
    complete: u64,
    changes: Vec<Change>,
}

impl WatchRound {
    /// A round asking for the changes from revision `next` on.
    #[must_use]
    pub fn new(next: u64) -> WatchRound {
        WatchRound { next, complete: u64::MAX, changes: Vec::new() }
    }

    /// A shard's answer, reflecting every slot of that shard below `slot` (the read's).
    pub fn add(&mut self, reply: ChangesReply, slot: u64, shard: u16, shards: u16) {
        let ChangesReply { changes, through, more } = reply;
        // Complete through `through`; with nothing more, through everything the read reflects.
        let shard_complete =
            if more { through } else { through.max(reflected(slot, shard, shards)) };
        self.complete = self.complete.min(shard_complete);
        self.changes.extend(changes);
    }

    /// The changes every shard is complete through, in revision order, and the revision the
    /// next round asks from.
    #[must_use]
    pub fn finish(self) -> (Vec<Change>, u64) {
        let WatchRound { next, complete, mut changes } = self;
        changes.retain(|change| change.revision <= complete && change.revision >= next);
        // Stable: the changes of one command share its revision and keep their order.
        changes.sort_by_key(|change| change.revision);
        let next = if complete != u64::MAX && complete >= next { complete + 1 } else { next };
        (changes, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::kv::coord::{ChangeKind, revision_of};

    fn change(revision: u64) -> Change {
        Change { revision, kind: ChangeKind::Put, key: b"k".to_vec(), value: Vec::new() }
    }

    #[test]
    fn a_round_gives_only_what_every_shard_is_complete_through() {
        // Two shards: shard 0 has answered through position 4 (slot 2), shard 1 only through
        // position 1 (slot 0 of shard 1 not yet applied there).
        let mut round = WatchRound::new(1);
        let early = revision_of(0, 0);
        let late = revision_of(4, 0);
        let reply =
            ChangesReply { changes: vec![change(early), change(late)], through: 0, more: false };
        round.add(reply, 3, 0, 2);
        round.add(ChangesReply { changes: Vec::new(), through: 0, more: false }, 0, 1, 2);
        let (changes, next) = round.finish();
        assert_eq!(changes, vec![change(early)]);
        assert_eq!(next, reflected(0, 1, 2) + 1);
        assert!(next <= late, "the late shard's slot 0 may still hold changes below {late}");
    }

    #[test]
    fn a_shard_that_left_changes_for_later_bounds_the_round() {
        let mut round = WatchRound::new(1);
        let (a, b) = (revision_of(0, 0), revision_of(2, 0));
        round.add(ChangesReply { changes: vec![change(a)], through: a, more: true }, 5, 0, 1);
        let (changes, next) = round.finish();
        assert_eq!(changes, vec![change(a)]);
        assert_eq!(next, a + 1);
        assert!(next <= b);
    }
}
