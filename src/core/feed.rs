//! A feed of committed runs to one subscriber (a learner, a relay's learner, or a client
//! tailing the log): where the subscriber stands and what to send it next. Pure bookkeeping,
//! shared by the replica (learner subscriptions) and the runtime (client subscriptions).
//!
//! Flow control is a window in slots: the feed runs at most `window` slots ahead of the last
//! position the subscriber reported, so a slow or dead subscriber never makes the sender hold
//! more than one window in flight. Loss is repaired by the reports themselves: a subscriber that
//! reports the same position twice, with more sent since, lost what was sent; the feed goes
//! back and sends it again.

use super::types::Slot;

/// One subscriber's feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feed {
    /// The next slot to send.
    next_slot: Slot,
    /// Everything below this the subscriber has (its last report).
    reported: Slot,
}

impl Feed {
    /// A feed starting at `from_slot`.
    #[must_use]
    pub fn new(from_slot: Slot) -> Feed {
        Feed { next_slot: from_slot, reported: from_slot }
    }

    /// The next slot this feed will send.
    #[must_use]
    pub fn next_slot(&self) -> Slot {
        self.next_slot
    }

    /// The subscriber reports that it has every slot below `from_slot`.
    pub fn on_report(&mut self, from_slot: Slot) {
        if from_slot < self.reported {
            // It went back (a restart that kept less than it had, a log repaired after
            // damage), or this is a stale report: start again from there. Sending on from the
            // old position would leave it a gap it can never fill.
            self.reported = from_slot;
            self.next_slot = from_slot;
            return;
        }
        if from_slot == self.reported && self.next_slot > from_slot {
            // No progress since the last report, yet more was sent: it was lost.
            self.next_slot = from_slot;
        }
        self.reported = self.reported.max(from_slot);
        self.next_slot = self.next_slot.max(from_slot);
    }

    /// The slots due next: from where the feed stands to `commit_index`, within `window`
    /// slots of the subscriber's last report. `None` when nothing is due. The report is the
    /// subscriber's word and the window may be as large as `u64::MAX`: their sum saturates.
    #[must_use]
    pub fn due(&self, commit_index: Slot, window: u64) -> Option<(Slot, Slot)> {
        let end = commit_index.min(self.reported.saturating_plus(window));
        (self.next_slot < end).then_some((self.next_slot, end))
    }

    /// Everything below `slot` was sent: the sender read the due slots (from memory or from
    /// the WAL) and sent them up to there.
    pub fn sent_to(&mut self, slot: Slot) {
        self.next_slot = self.next_slot.max(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::log::Log;
    use crate::core::{Ballot, Value};

    /// What a sender does: reads at most `runs_max` due runs from `log` and sends them.
    /// Returns their first slots, `None` when nothing is due.
    fn send(
        feed: &mut Feed,
        log: &Log,
        commit: Slot,
        runs_max: usize,
        window: u64,
    ) -> Option<Vec<u64>> {
        let (from, end) = feed.due(commit, window)?;
        let (runs, _) = log.runs_from(from, end, runs_max);
        feed.sent_to(runs.last()?.end_slot());
        Some(runs.iter().map(|run| run.first_slot.0).collect())
    }

    fn log_of(slots: u64) -> Log {
        let mut log = Log::default();
        for slot in 0..slots {
            let value = Value::Batch(bytes::Bytes::from(slot.to_le_bytes().to_vec()));
            log.choose(Slot(slot), 1, Ballot::ZERO, &value);
        }
        log
    }

    #[test]
    fn a_feed_sends_committed_slots_within_its_window_and_resends_what_was_lost() {
        let log = log_of(10);
        let mut feed = Feed::new(Slot(2));
        assert_eq!(send(&mut feed, &log, Slot(8), 2, 4), Some(vec![2, 3]));
        assert_eq!(send(&mut feed, &log, Slot(8), 2, 4), Some(vec![4, 5]));
        assert_eq!(send(&mut feed, &log, Slot(8), 2, 4), None, "window of 4 from slot 2 is full");
        feed.on_report(Slot(4));
        assert_eq!(send(&mut feed, &log, Slot(8), 8, 4), Some(vec![6, 7]));
        assert_eq!(send(&mut feed, &log, Slot(8), 8, 4), None, "nothing committed beyond 8");
        // The same report again: slots 4.. never arrived; they go again.
        feed.on_report(Slot(4));
        assert_eq!(feed.next_slot(), Slot(4));
        // A subscriber ahead of the feed (it learned elsewhere) moves the feed on.
        feed.on_report(Slot(9));
        assert_eq!(feed.next_slot(), Slot(9));
    }

    #[test]
    fn a_subscriber_that_went_back_is_fed_again_from_where_it_stands() {
        let log = log_of(10);
        let mut feed = Feed::new(Slot(6));
        assert_eq!(send(&mut feed, &log, Slot(10), 8, 8), Some(vec![6, 7, 8, 9]));
        // It restarted with less than it had (slots 2.. lost): it reports 2, again and again.
        feed.on_report(Slot(2));
        assert_eq!(send(&mut feed, &log, Slot(10), 2, 8), Some(vec![2, 3]));
        feed.on_report(Slot(2));
        assert_eq!(feed.next_slot(), Slot(2), "what was sent since is resent");
    }
}
