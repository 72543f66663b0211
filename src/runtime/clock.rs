//! The shard's clock: ticks counted from a monotonic clock that also runs while the machine
//! sleeps (`CLOCK_BOOTTIME`), so that a tick count never lags real time, whatever held the
//! shard's thread or the whole machine. Leases rely on it (protocol.md §5.4): a leader whose
//! tick count fell behind would think its lease still ran after it had ended.

use std::time::Duration;

/// Time since an arbitrary start, on `CLOCK_BOOTTIME`: monotonic, and counting a suspend
/// (`CLOCK_MONOTONIC`, behind `std::time::Instant`, stops while the machine sleeps).
fn boot_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut now) };
    // Linux has had CLOCK_BOOTTIME since 2.6.39; it cannot fail with a valid pointer.
    assert_eq!(result, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Ticks of a fixed length since the clock was made.
#[derive(Debug)]
pub struct TickClock {
    start: Duration,
    tick: Duration,
    /// Ticks handed out so far.
    given: u64,
}

impl TickClock {
    /// A clock of `tick`-long ticks, starting now.
    pub fn new(tick: Duration) -> TickClock {
        TickClock { start: boot_time(), tick: tick.max(Duration::from_micros(1)), given: 0 }
    }

    /// The ticks that elapsed since the last call (0 if none has).
    pub fn due(&mut self) -> u64 {
        let elapsed = boot_time().saturating_sub(self.start);
        let now = (elapsed.as_nanos() / self.tick.as_nanos()) as u64;
        let due = now.saturating_sub(self.given);
        self.given = self.given.max(now);
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_clock_and_are_handed_out_once() {
        let mut clock = TickClock::new(Duration::from_millis(2));
        std::thread::sleep(Duration::from_millis(9));
        let first = clock.due();
        assert!(first >= 4, "{first} ticks after 9 ms of 2 ms ticks");
        assert_eq!(clock.due(), 0, "nothing new at once");
    }
}
