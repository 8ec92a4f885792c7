//! The one retry backoff of the project: a first delay doubling up to a cap, pure, so
//! every caller tests its schedule without sleeping.
//!
//! | caller | first | cap |
//! |---|---|---|
//! | robot-agent: the agent link's reconnect (with ±20 % jitter on top) | 250 ms | 5 s |
//! | robot-agent: a session's `/rtc` rejoin | 250 ms | 2 s |
//! | api: a push job's next attempt | 1 s | 5 min |
//! | api: a robot session's next attempt after a failure | 1 s | 30 s |

use std::time::Duration;

/// A doubling backoff: `first`, `2 * first`, `4 * first`, ... never above `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub first: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `first` doubling up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The delay after `retries` earlier retries: `first * 2^retries`, capped at `max`
    /// (never overflows, whatever `retries`).
    pub fn delay(&self, retries: u64) -> Duration {
        let doublings = u32::try_from(retries.min(31)).unwrap_or(31);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }

    /// The delay after attempt number `attempts` (counted from 1) failed, in whole
    /// milliseconds: the store's form, where attempts are `i64` columns. Attempts below 1
    /// count as 1.
    pub fn delay_ms_after_attempt(&self, attempts: i64) -> i64 {
        let retries = u64::try_from(attempts.saturating_sub(1)).unwrap_or(0);
        i64::try_from(self.delay(retries).as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn doubles_from_first_to_the_cap() {
        let b = Backoff::new(MS(250), MS(2000));
        let v: Vec<Duration> = (0..6).map(|n| b.delay(n)).collect();
        assert_eq!(v, [250, 500, 1000, 2000, 2000, 2000].map(MS));
    }

    #[test]
    fn never_overflows() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(b.delay(u64::MAX), Duration::from_secs(300));
        assert_eq!(b.delay_ms_after_attempt(i64::MAX), 300_000);
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.delay(40), Duration::MAX);
    }

    #[test]
    fn attempts_count_from_one() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(b.delay_ms_after_attempt(i64::MIN), 1000);
        assert_eq!(b.delay_ms_after_attempt(0), 1000);
        assert_eq!(b.delay_ms_after_attempt(1), 1000);
        assert_eq!(b.delay_ms_after_attempt(2), 2000);
        assert_eq!(b.delay_ms_after_attempt(3), 4000);
        assert_eq!(b.delay_ms_after_attempt(6), 30_000);
    }
}
