//! Election timing and stickiness, kept apart from the protocol so its rules read in one place
//! (protocol.md §3.1).
//!
//! - A follower that hears no leader for `timeout + jitter` ticks, jitter drawn from
//!   `[0, timeout)`, starts a pre-vote.
//! - A voter that heard a live leader within `timeout` ticks refuses pre-votes (stickiness): a
//!   node cut off from the leader, or flaky, cannot depose a leader the others still hear.

use rand_core::RngCore;
use rand_xoshiro::Xoshiro256PlusPlus;

/// Election timer of one replica. Time is the replica's tick count.
#[derive(Clone, Debug)]
pub struct ElectionTimer {
    timeout_ticks: u64,
    deadline_tick: u64,
    leader_heard_tick: Option<u64>,
}

impl ElectionTimer {
    /// A timer that first expires one randomized timeout after `now`.
    pub fn new(timeout_ticks: u32, now: u64, rng: &mut Xoshiro256PlusPlus) -> ElectionTimer {
        let mut timer = ElectionTimer {
            timeout_ticks: u64::from(timeout_ticks),
            deadline_tick: 0,
            leader_heard_tick: None,
        };
        timer.restart(now, rng);
        timer
    }

    /// Moves the deadline to `now + timeout + jitter`.
    pub fn restart(&mut self, now: u64, rng: &mut Xoshiro256PlusPlus) {
        let jitter = rng.next_u64() % self.timeout_ticks;
        self.deadline_tick = now + self.timeout_ticks + jitter;
    }

    /// A live leader was heard at `now`: stay a follower for another randomized timeout.
    pub fn heard_leader(&mut self, now: u64, rng: &mut Xoshiro256PlusPlus) {
        self.leader_heard_tick = Some(now);
        self.restart(now, rng);
    }

    /// Count as having heard a live leader at `now`, without moving the deadline: a restarted
    /// voter under leases refuses to help depose whoever leads for one timeout.
    pub fn assume_leader_heard(&mut self, now: u64) {
        self.leader_heard_tick = Some(now);
    }

    /// Forget the leader (it stepped down, or this replica did).
    pub fn forget_leader(&mut self) {
        self.leader_heard_tick = None;
    }

    /// True once the deadline has passed.
    #[must_use]
    pub fn expired(&self, now: u64) -> bool {
        now >= self.deadline_tick
    }

    /// True if a leader was heard within one (unrandomized) timeout: refuse to help depose it.
    #[must_use]
    pub fn hears_live_leader(&self, now: u64) -> bool {
        self.leader_heard_tick.is_some_and(|heard| now < heard + self.timeout_ticks)
    }

    /// The base timeout.
    #[must_use]
    pub fn timeout_ticks(&self) -> u64 {
        self.timeout_ticks
    }
}
