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
    /// from its last keep-alive, and gets another from the new leader's start). Each TTL is
    /// lengthened by `drift_ppm` millionths, the most this clock may run fast
    /// (`Config::max_clock_drift_ppm`), so that a lease lasts its TTL in real time.
    pub(super) fn due(
        &mut self,
        now_ms: u64,
        leading: bool,
        drift_ppm: u32,
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
            let deadline_ms = now_ms.saturating_add(lengthened(timer.ttl_ms, drift_ppm));
            let tracked = self.tracked.entry(timer.id).or_insert(Tracked {
                generation: timer.generation,
                deadline_ms,
                proposed_ms: None,
            });
            if tracked.generation != timer.generation {
                *tracked = Tracked { generation: timer.generation, deadline_ms, proposed_ms: None };
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

/// `ttl_ms` as a clock running `drift_ppm` millionths fast counts it, rounded up.
fn lengthened(ttl_ms: u64, drift_ppm: u32) -> u64 {
    let extra = (u128::from(ttl_ms) * u128::from(drift_ppm)).div_ceil(1_000_000);
    ttl_ms.saturating_add(u64::try_from(extra).unwrap_or(u64::MAX))
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
            timers.due(now, leading, 0, |out| out.push(lease(generation))).len()
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
        assert_eq!(timers.due(5000, true, 0, |_| {}).len(), 0);
        assert!(timers.tracked.is_empty());
    }

    #[test]
    fn a_clock_that_may_run_fast_waits_longer() {
        let mut timers = LeaderTimers::default();
        let at = |timers: &mut LeaderTimers, now| {
            timers.due(now, true, 100_000, |out| out.push(lease(0))).len()
        };
        assert_eq!(at(&mut timers, 0), 0);
        // 1000 ms on a clock up to 10 % fast is 1100 ms of its own.
        assert_eq!(at(&mut timers, 1050), 0);
        assert_eq!(at(&mut timers, 1099), 0);
        assert_eq!(at(&mut timers, 1150), 1);
        assert_eq!(lengthened(1000, 1), 1001);
        assert_eq!(lengthened(u64::MAX, 1_000_000), u64::MAX);
    }
}
