//! The state machine's timers, run by the shard's leader (a lease's TTL, docs/coordination.md):
//! each timed on the replica's tick clock from the moment this leader last saw it restarted,
//! and its command proposed through the log once it runs out. Apply never reads a clock.

use std::collections::HashMap;

use crate::machine::Timer;

/// How often, in milliseconds, the leader looks at the machine's timers.
const SCAN_EVERY_MS: u64 = 50;
/// How long a proposed expiry may go unapplied before it is proposed again.
const RETRY_AFTER_MS: u64 = 1000;

#[derive(Debug)]
struct Tracked {
    generation: u64,
    deadline_ms: u64,
    proposed_ms: Option<u64>,
}

/// The leader's view of the machine's timers.
#[derive(Debug, Default)]
pub(super) struct LeaderTimers {
    tracked: HashMap<u64, Tracked>,
    leading: bool,
    next_scan_ms: u64,
    scratch: Vec<Timer>,
    /// Sequences of the leader's own commands (unique within this start; never deduplicated).
    pub(super) next_sequence: u64,
}

impl LeaderTimers {
    /// At `now_ms`, with `timers` the machine's: the timers that ran out and should be proposed
    /// now. A replica that does not lead forgets them all, so the next leadership starts each
    /// one afresh: no lease ends early because a leader changed (its holder had a whole TTL
    /// from its last keep-alive, and gets another from the new leader's start).
    pub(super) fn due(
        &mut self,
        now_ms: u64,
        leading: bool,
        timers: impl FnOnce(&mut Vec<Timer>),
    ) -> Vec<Timer> {
        if !leading {
            self.leading = false;
            self.tracked.clear();
            return Vec::new();
        }
        if self.leading && now_ms < self.next_scan_ms {
            return Vec::new();
        }
        self.leading = true;
        self.next_scan_ms = now_ms + SCAN_EVERY_MS;
        self.scratch.clear();
        timers(&mut self.scratch);
        let mut due = Vec::new();
        for timer in &self.scratch {
            let tracked = self.tracked.entry(timer.id).or_insert(Tracked {
                generation: timer.generation,
                deadline_ms: now_ms + timer.ttl_ms,
                proposed_ms: None,
            });
            if tracked.generation != timer.generation {
                *tracked = Tracked {
                    generation: timer.generation,
                    deadline_ms: now_ms + timer.ttl_ms,
                    proposed_ms: None,
                };
            }
            let retry = tracked.proposed_ms.is_none_or(|at| now_ms >= at + RETRY_AFTER_MS);
            if now_ms >= tracked.deadline_ms && retry {
                tracked.proposed_ms = Some(now_ms);
                due.push(*timer);
            }
        }
        if self.tracked.len() > self.scratch.len() {
            let live: std::collections::HashSet<u64> = self.scratch.iter().map(|t| t.id).collect();
            self.tracked.retain(|id, _| live.contains(id));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(generation: u64) -> Timer {
        Timer { id: 7, generation, ttl_ms: 1000 }
    }

    #[test]
    fn a_timer_runs_out_its_ttl_after_the_last_restart_and_a_new_leader_starts_it_afresh() {
        let mut timers = LeaderTimers::default();
        let at = |timers: &mut LeaderTimers, now, leading, generation| {
            timers.due(now, leading, |out| out.push(lease(generation))).len()
        };
        assert_eq!(at(&mut timers, 0, true, 0), 0);
        assert_eq!(at(&mut timers, 999, true, 0), 0);
        // A keep-alive, seen at the next scan, restarts it.
        assert_eq!(at(&mut timers, 1049, true, 1), 0);
        assert_eq!(at(&mut timers, 2048, true, 1), 0);
        assert_eq!(at(&mut timers, 2100, true, 1), 1);
        // Proposed once; again only if it is still there a second later.
        assert_eq!(at(&mut timers, 2200, true, 1), 0);
        assert_eq!(at(&mut timers, 3100, true, 1), 1);
        // Leadership lost and won again: a whole TTL from then.
        assert_eq!(at(&mut timers, 3200, false, 1), 0);
        assert_eq!(at(&mut timers, 3300, true, 1), 0);
        assert_eq!(at(&mut timers, 4299, true, 1), 0);
        assert_eq!(at(&mut timers, 4350, true, 1), 1);
        // A timer that is gone is forgotten.
        assert_eq!(timers.due(5000, true, |_| {}).len(), 0);
        assert!(timers.tracked.is_empty());
    }
}
