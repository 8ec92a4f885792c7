//! When to dial the program, redial it, and give up. Sans-IO: time comes in as `now`.
//!
//! ```text
//!   new ─► Dial{resume: false}
//!   Dialing ──connected──► Up ──closed──► Dial{resume: true} at once (lost_since = now)
//!      │                                     │
//!      └──failed──► wait 100 ms, 200, 400, 800, 1 s, 1 s ... ─► Dial again
//!   a refusal (HTTP 401/403) ─► GiveUp at once
//!   a bad target (Config) or an untrusted TLS certificate ─► GiveUp at once
//!   `window` (10 s) after the drop (or the first failed attempt) without being up ─► GiveUp
//! ```
//!
//! The backoff is short and capped at 1 s: a program that restarts is back within about
//! a second, and the robot is back on it within a second more. Every attempt made after a
//! connection was once up is a resume (`start` with `"resume": true`).

use std::time::{Duration, Instant};

use protocol::backoff::Backoff;

use super::BridgeError;

/// The delays between two dial attempts: 100 ms doubling to 1 s.
pub const REDIAL_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(1));

/// How long the robot stays without its program (DESIGN.md: "for up to 10 s").
pub const RESUME_WINDOW: Duration = Duration::from_secs(10);

/// What the link wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAction {
    /// Dial the program now; answer with [`BridgeLink::connected`] or
    /// [`BridgeLink::dial_failed`].
    Dial {
        /// A connection was up before: `start` says `"resume": true`.
        resume: bool,
    },
    /// The program cannot be had: the robot leaves (`bridge_lost`).
    GiveUp(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// An attempt is under way.
    Dialing,
    /// Connected.
    Up,
    /// Waiting to try again at `at`.
    Waiting { at: Instant },
    /// Gave up.
    Gone,
}

/// The dial/redial rules of one session's bridge.
#[derive(Debug)]
pub struct BridgeLink {
    state: State,
    window: Duration,
    /// Since when the program is missing: the drop, or the first failed attempt of the
    /// first dial (a core has no clock of its own to start from; an attempt lasts at
    /// most 3 s).
    missing_since: Option<Instant>,
    failures: u64,
    was_up: bool,
    actions: std::collections::VecDeque<LinkAction>,
}

impl BridgeLink {
    /// A link that dials at once and stays without its program at most `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            state: State::Dialing,
            window,
            missing_since: None,
            failures: 0,
            was_up: false,
            actions: [LinkAction::Dial { resume: false }].into(),
        }
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<LinkAction> {
        self.actions.pop_front()
    }

    /// When to call [`BridgeLink::timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { at } => Some(at),
            _ => None,
        }
    }

    /// The program is connected (`start` is sent now).
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// No connection yet, and none ever was (audio heard meanwhile is kept for the
    /// program, so the start of speech is not clipped).
    pub fn before_first(&self) -> bool {
        !self.was_up && self.state != State::Gone
    }

    /// Gave up.
    pub fn is_gone(&self) -> bool {
        self.state == State::Gone
    }

    /// The attempt succeeded; `Some(resume)`: send `start` with it (`None`: stale).
    pub fn connected(&mut self) -> Option<bool> {
        if self.state != State::Dialing {
            return None;
        }
        let resume = self.was_up;
        self.state = State::Up;
        self.was_up = true;
        self.failures = 0;
        self.missing_since = None;
        Some(resume)
    }

    /// The attempt failed.
    pub fn dial_failed(&mut self, now: Instant, error: &BridgeError) {
        if self.state != State::Dialing {
            return;
        }
        if matches!(
            error,
            BridgeError::Refused { .. } | BridgeError::Config(_) | BridgeError::Untrusted(_)
        ) {
            return self.give_up(error.to_string());
        }
        let since = *self.missing_since.get_or_insert(now);
        let delay = REDIAL_BACKOFF.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        if now + delay >= since + self.window {
            return self.give_up(format!(
                "the bridge program could not be reached for {} s: {error}",
                self.window.as_secs()
            ));
        }
        self.state = State::Waiting { at: now + delay };
    }

    /// The connection closed or failed: redial at once.
    pub fn closed(&mut self, now: Instant) {
        if self.state != State::Up {
            return;
        }
        self.missing_since = Some(now);
        self.failures = 0;
        self.state = State::Dialing;
        self.actions.push_back(LinkAction::Dial { resume: true });
    }

    /// Time passed.
    pub fn timeout(&mut self, now: Instant) {
        if let State::Waiting { at } = self.state
            && now >= at
        {
            self.state = State::Dialing;
            self.actions.push_back(LinkAction::Dial {
                resume: self.was_up,
            });
        }
    }

    fn give_up(&mut self, why: String) {
        self.state = State::Gone;
        self.actions.push_back(LinkAction::GiveUp(why));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn down() -> BridgeError {
        BridgeError::Unreachable("connection refused".into())
    }

    /// Fails every attempt `took` after it starts; the instants of the attempts and
    /// the give-up reason.
    fn fail_all(link: &mut BridgeLink, t0: Instant, took: Duration) -> (Vec<Duration>, String) {
        let mut now = t0;
        let mut attempts = Vec::new();
        loop {
            match link.poll_action() {
                Some(LinkAction::Dial { .. }) => {
                    attempts.push(now - t0);
                    now += took;
                    link.dial_failed(now, &down());
                }
                Some(LinkAction::GiveUp(why)) => return (attempts, why),
                None => {
                    now = link.poll_timeout().unwrap();
                    link.timeout(now);
                }
            }
        }
    }

    #[test]
    fn the_first_dial_is_at_once_and_not_a_resume() {
        let mut l = BridgeLink::new(RESUME_WINDOW);
        assert_eq!(l.poll_action(), Some(LinkAction::Dial { resume: false }));
        assert!(l.before_first() && !l.is_up());
        assert_eq!(l.connected(), Some(false));
        assert!(l.is_up() && !l.before_first());
        assert_eq!(l.connected(), None);
        assert_eq!(l.poll_timeout(), None);
    }

    #[test]
    fn a_drop_redials_at_once_as_a_resume_then_backs_off_to_1_s() {
        let t0 = Instant::now();
        let mut l = BridgeLink::new(RESUME_WINDOW);
        l.poll_action();
        assert_eq!(l.connected(), Some(false));
        l.closed(t0 + ms(5000));
        let (attempts, why) = fail_all(&mut l, t0 + ms(5000), ms(10));
        let gaps: Vec<u64> = attempts
            .windows(2)
            .map(|w| u64::try_from((w[1] - w[0]).as_millis()).unwrap() - 10)
            .collect();
        assert_eq!(&gaps[..6], &[100, 200, 400, 800, 1000, 1000]);
        assert_eq!(attempts[0], Duration::ZERO);
        // the last attempt is within 10 s of the drop, the next would not be
        let last = *attempts.last().unwrap();
        assert!(last < ms(10_000), "{last:?}");
        assert!(last + ms(10) + ms(1000) >= ms(10_000), "{last:?}");
        assert_eq!(
            why,
            "the bridge program could not be reached for 10 s: cannot reach the bridge program: connection refused"
        );
        assert!(l.is_gone());
    }

    #[test]
    fn every_redial_after_a_drop_is_a_resume() {
        let t0 = Instant::now();
        let mut l = BridgeLink::new(RESUME_WINDOW);
        l.poll_action();
        assert_eq!(l.connected(), Some(false));
        l.closed(t0);
        assert_eq!(l.poll_action(), Some(LinkAction::Dial { resume: true }));
        l.dial_failed(t0 + ms(5), &down());
        l.timeout(t0 + ms(105));
        assert_eq!(l.poll_action(), Some(LinkAction::Dial { resume: true }));
        // back: the clock of the window restarts at the next drop
        assert_eq!(l.connected(), Some(true));
        l.closed(t0 + ms(9_000));
        assert_eq!(l.poll_action(), Some(LinkAction::Dial { resume: true }));
        l.dial_failed(t0 + ms(12_000), &down());
        assert_eq!(l.poll_timeout(), Some(t0 + ms(12_100)));
    }

    #[test]
    fn a_first_dial_that_never_connects_gives_up_after_the_window() {
        let t0 = Instant::now();
        let mut l = BridgeLink::new(RESUME_WINDOW);
        let (attempts, why) = fail_all(&mut l, t0, ms(1));
        assert!(attempts.len() > 5);
        assert!(why.contains("could not be reached for 10 s"), "{why}");
    }

    #[test]
    fn a_refusal_gives_up_at_once() {
        let t0 = Instant::now();
        let mut l = BridgeLink::new(RESUME_WINDOW);
        l.poll_action();
        l.dial_failed(t0, &BridgeError::Refused { status: 401 });
        assert_eq!(
            l.poll_action(),
            Some(LinkAction::GiveUp(
                "the bridge program refused the connection: HTTP 401 (check the secret in DAPI_BRIDGES)".into()
            ))
        );
        assert_eq!(l.poll_timeout(), None);
    }

    #[test]
    fn an_untrusted_certificate_gives_up_at_once() {
        let t0 = Instant::now();
        let mut l = BridgeLink::new(RESUME_WINDOW);
        l.poll_action();
        l.dial_failed(
            t0,
            &BridgeError::Untrusted("invalid peer certificate: UnknownIssuer".into()),
        );
        match l.poll_action() {
            Some(LinkAction::GiveUp(why)) => assert_eq!(
                why,
                "the bridge program's TLS certificate is not trusted: invalid peer certificate: \
                 UnknownIssuer (trust its CA with ROBOT_BRIDGE_CA_FILE)"
            ),
            other => panic!("{other:?}"),
        }
        assert!(l.is_gone());
    }

    #[test]
    fn stale_events_change_nothing() {
        let t0 = Instant::now();
        let mut l = BridgeLink::new(RESUME_WINDOW);
        l.poll_action();
        l.closed(t0); // not up yet
        assert_eq!(l.poll_action(), None);
        assert_eq!(l.connected(), Some(false));
        l.dial_failed(t0, &down()); // up: ignored
        assert!(l.is_up());
        l.timeout(t0 + ms(60_000));
        assert!(l.is_up());
    }
}
