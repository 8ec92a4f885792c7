//! The pacer: which 20 ms frame is due, on absolute deadlines. Sans-IO.
//!
//! ```text
//!   start ─┬──────┬──────┬──────┬──────┬──►  deadline(n) = start + n × 20 ms
//!          0      1      2      3      4
//!   poll(now) ──► Due { index, lateness }     one frame per call, in order
//!   poll_timeout() ──► deadline of the next frame (sleep until then)
//! ```
//!
//! Time comes in as an argument; nothing here reads a clock, sleeps or spawns. The driving
//! loop (in `session`) is:
//!
//! ```text
//!   loop {
//!       sleep_until(pacer.poll_timeout());
//!       while let Some(due) = pacer.poll(Instant::now()) { send frame due.index }
//!   }
//! ```
//!
//! Deadlines never drift: a frame sent 3 ms late does not push the next one back, because
//! every deadline is computed from `start`, never from the previous send (DESIGN.md decision
//! 6). **Catch-up policy**: when the loop wakes up late, frames whose deadline has passed are
//! handed out back to back, as long as the oldest is at most `max_catch_up` late (a short
//! stall: the receiver's jitter buffer absorbs the burst, nothing is lost). Past that (the
//! process was suspended, the machine overloaded), the frames that are hopelessly late are
//! skipped: the next `Due` carries `skipped > 0`, and playback continues in step with the
//! wall clock rather than falling further and further behind.

use std::time::{Duration, Instant};

/// The length of one frame (Opus, 20 ms).
pub const FRAME: Duration = Duration::from_millis(20);

/// A frame whose deadline has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Frame number since the pacer started (0, 1, 2, ...), counting skipped frames.
    pub index: u64,
    /// How far past its deadline the frame is handed out.
    pub lateness: Duration,
    /// Frames skipped just before this one (too late to be worth sending).
    pub skipped: u64,
}

/// Absolute-deadline frame clock.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    frame: Duration,
    next: u64,
    max_catch_up: Duration,
    sent: u64,
    skipped: u64,
}

impl Pacer {
    /// A pacer whose frame 0 is due at `start`, with 20 ms frames and a 200 ms catch-up window.
    pub fn new(start: Instant) -> Self {
        Self::with(start, FRAME, Duration::from_millis(200))
    }

    /// A pacer with a given frame length and catch-up window.
    pub fn with(start: Instant, frame: Duration, max_catch_up: Duration) -> Self {
        Self {
            start,
            frame: frame.max(Duration::from_micros(1)),
            next: 0,
            max_catch_up,
            sent: 0,
            skipped: 0,
        }
    }

    /// The deadline of frame `index`.
    pub fn deadline(&self, index: u64) -> Instant {
        let nanos = self.frame.as_nanos().saturating_mul(u128::from(index));
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.start + Duration::from_nanos(nanos)
    }

    /// When the next frame is due: sleep until then.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline(self.next)
    }

    /// The next frame if its deadline is at or before `now`; `None` until then.
    pub fn poll(&mut self, now: Instant) -> Option<Due> {
        let deadline = self.deadline(self.next);
        if now < deadline {
            return None;
        }
        let mut lateness = now - deadline;
        let mut skipped = 0;
        if lateness > self.max_catch_up {
            // Too far behind: jump to the newest frame whose deadline has passed.
            let behind = (now - self.start).as_nanos() / self.frame.as_nanos();
            let newest = u64::try_from(behind).unwrap_or(u64::MAX);
            skipped = newest.saturating_sub(self.next);
            self.next = newest;
            lateness = now - self.deadline(self.next);
        }
        let due = Due {
            index: self.next,
            lateness,
            skipped,
        };
        self.next += 1;
        self.sent += 1;
        self.skipped += skipped;
        Some(due)
    }

    /// The index of the next frame to be handed out.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Frames handed out so far.
    pub fn frames_sent(&self) -> u64 {
        self.sent
    }

    /// Frames skipped so far.
    pub fn frames_skipped(&self) -> u64 {
        self.skipped
    }

    /// The instant frame 0 was due.
    pub fn start(&self) -> Instant {
        self.start
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn frames_come_due_on_absolute_deadlines() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        assert_eq!(p.poll_timeout(), t0);
        let d = p.poll(t0).unwrap();
        assert_eq!((d.index, d.lateness, d.skipped), (0, Duration::ZERO, 0));
        assert_eq!(p.poll(t0), None, "frame 1 is not due yet");
        assert_eq!(p.poll(t0 + ms(19)), None);
        assert_eq!(p.poll_timeout(), t0 + ms(20));
        // woken 3 ms late for frame 1: frame 2 is still due at t0 + 40, not at t0 + 43
        let d = p.poll(t0 + ms(23)).unwrap();
        assert_eq!((d.index, d.lateness), (1, ms(3)));
        assert_eq!(p.poll_timeout(), t0 + ms(40));
        let d = p.poll(t0 + ms(40)).unwrap();
        assert_eq!((d.index, d.lateness), (2, Duration::ZERO));
    }

    #[test]
    fn a_short_stall_is_caught_up_back_to_back() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        // nothing polled for 105 ms: frames 0..=5 are due, the oldest 105 ms late
        let now = t0 + ms(105);
        let got: Vec<Due> = std::iter::from_fn(|| p.poll(now)).collect();
        assert_eq!(
            got.iter().map(|d| d.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5]
        );
        assert!(got.iter().all(|d| d.skipped == 0));
        assert_eq!(got[0].lateness, ms(105));
        assert_eq!(got[5].lateness, ms(5));
        assert_eq!(p.poll_timeout(), t0 + ms(120));
    }

    #[test]
    fn a_long_stall_skips_to_the_present() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        p.poll(t0).unwrap();
        // suspended for a second: frames 1..=49 are hopelessly late
        let now = t0 + ms(1010);
        let d = p.poll(now).unwrap();
        assert_eq!(d.index, 50);
        assert_eq!(d.skipped, 49);
        assert_eq!(d.lateness, ms(10));
        assert_eq!(p.poll(now), None);
        assert_eq!(p.frames_skipped(), 49);
        assert_eq!(p.frames_sent(), 2);
        assert_eq!(p.poll_timeout(), t0 + ms(1020));
    }

    proptest! {
        /// Whatever the wake-up times, frames come out in order without gaps (but for
        /// counted skips), never before their deadline, and never more than the catch-up
        /// window late once the frames are handed out.
        #[test]
        fn invariants_hold_for_any_wakeups(wakes in proptest::collection::vec(0u64..400, 1..200)) {
            let t0 = Instant::now();
            let mut p = Pacer::new(t0);
            let mut now = t0;
            let mut expected = 0u64;
            let mut total_skipped = 0;
            for w in wakes {
                now += Duration::from_millis(w) / 4;
                while let Some(d) = p.poll(now) {
                    prop_assert_eq!(d.index, expected + d.skipped);
                    prop_assert!(p.deadline(d.index) <= now);
                    prop_assert!(d.lateness <= Duration::from_millis(200));
                    prop_assert_eq!(now - p.deadline(d.index), d.lateness);
                    expected = d.index + 1;
                    total_skipped += d.skipped;
                }
                prop_assert!(p.poll_timeout() > now);
            }
            prop_assert_eq!(p.frames_sent() + total_skipped, p.next_index());
        }

        /// Deadlines are exact multiples of the frame: no drift over a long stream.
        #[test]
        fn no_drift(n in 0u64..10_000_000) {
            let t0 = Instant::now();
            let p = Pacer::new(t0);
            prop_assert_eq!(p.deadline(n) - t0, Duration::from_millis(20 * n));
        }
    }
}
