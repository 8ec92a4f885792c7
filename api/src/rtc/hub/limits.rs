//! The budgets that keep one client from starving the others, as token buckets fed `now`:
//! a socket's messages and `signal`s ([`SocketBudget`]), and joins per uid and per token
//! ([`JoinLimits`]). What happens to a socket over its budget is the hub's business
//! (`rate_limited`, `signal_flood`, `too_many_joins`); these types only count.

use std::collections::HashMap;

use super::HubConfig;
use crate::domain::Uid;

/// How many times the sustained rate a signal budget holds (its burst).
pub(super) const SIGNAL_BURST: u64 = 4;
/// Joins buckets refill over this long.
const MINUTE_MS: u64 = 60_000;

/// A token bucket, in thousandths of a unit, fed `now`: holds at most `cap` units and
/// refills `rate` units every `per_ms`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    at_ms: i64,
}

impl Bucket {
    fn full(cap: u64, now: i64) -> Self {
        Self {
            milli: cap.saturating_mul(1000),
            at_ms: now,
        }
    }

    fn refill(&mut self, now: i64, rate: u64, per_ms: u64, cap: u64) {
        let elapsed = u64::try_from(now.saturating_sub(self.at_ms)).unwrap_or(0);
        let add = elapsed.saturating_mul(rate).saturating_mul(1000) / per_ms.max(1);
        self.milli = cap.saturating_mul(1000).min(self.milli.saturating_add(add));
        self.at_ms = self.at_ms.max(now);
    }

    /// Refills for the time passed, then takes `cost` units if the bucket holds them.
    fn take(&mut self, now: i64, rate: u64, per_ms: u64, cap: u64, cost: u64) -> bool {
        self.refill(now, rate, per_ms, cap);
        let want = cost.saturating_mul(1000);
        if self.milli >= want {
            self.milli -= want;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again at `now` (it may be forgotten).
    fn is_full(&self, now: i64, rate: u64, per_ms: u64, cap: u64) -> bool {
        let mut b = *self;
        b.refill(now, rate, per_ms, cap);
        b.milli >= cap.saturating_mul(1000)
    }

    /// Refills for the time passed; whether one unit is there (nothing is taken).
    fn holds_one(&mut self, now: i64, per_min: u64) -> bool {
        self.refill(now, per_min, MINUTE_MS, per_min);
        self.milli >= 1000
    }
}

/// One socket's budgets: every frame (`msgs_per_sec`, bursts of `burst`), and `signal`
/// messages and bytes (`signals_per_sec`, `signal_bytes_per_sec`, bursts of
/// [`SIGNAL_BURST`] times those).
#[derive(Debug)]
pub(super) struct SocketBudget {
    msgs: Bucket,
    signal_msgs: Bucket,
    signal_bytes: Bucket,
}

impl SocketBudget {
    /// Full budgets for a socket opened at `now`.
    pub(super) fn full(cfg: &HubConfig, now: i64) -> Self {
        Self {
            msgs: Bucket::full(u64::from(cfg.burst), now),
            signal_msgs: Bucket::full(u64::from(cfg.signals_per_sec) * SIGNAL_BURST, now),
            signal_bytes: Bucket::full(u64::from(cfg.signal_bytes_per_sec) * SIGNAL_BURST, now),
        }
    }

    /// Counts a frame; false when the socket is over its message rate.
    pub(super) fn frame(&mut self, cfg: &HubConfig, now: i64) -> bool {
        let (cap, rate) = (u64::from(cfg.burst), u64::from(cfg.msgs_per_sec));
        self.msgs.take(now, rate, 1000, cap, 1)
    }

    /// Counts a `signal` of `bytes` against both signal budgets (a limit of 0 is none);
    /// false when either is over.
    pub(super) fn signal(&mut self, cfg: &HubConfig, now: i64, bytes: usize) -> bool {
        let msgs = u64::from(cfg.signals_per_sec);
        let rate = u64::from(cfg.signal_bytes_per_sec);
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let msgs_ok = msgs == 0
            || self
                .signal_msgs
                .take(now, msgs, 1000, msgs * SIGNAL_BURST, 1);
        let bytes_ok = rate == 0
            || self
                .signal_bytes
                .take(now, rate, 1000, rate * SIGNAL_BURST, bytes);
        msgs_ok && bytes_ok
    }
}

/// Joins per uid and per token over a minute (`joins_per_uid_per_min`,
/// `joins_per_token_per_min`; 0: no limit). Buckets that are full again are forgotten.
#[derive(Debug, Default)]
pub(super) struct JoinLimits {
    by_uid: HashMap<Uid, Bucket>,
    by_token: HashMap<String, Bucket>,
}

impl JoinLimits {
    /// Counts a verified join against its uid's and its token's buckets (both, or
    /// neither when one is empty); names the one that is empty.
    pub(super) fn charge(
        &mut self,
        cfg: &HubConfig,
        now: i64,
        uid: &Uid,
        token: &str,
    ) -> Option<&'static str> {
        let per_uid = if cfg.robot_uid.as_ref() == Some(uid) {
            0
        } else {
            u64::from(cfg.joins_per_uid_per_min)
        };
        let per_token = u64::from(cfg.joins_per_token_per_min);
        let by_uid = (per_uid > 0).then(|| {
            self.by_uid
                .entry(uid.clone())
                .or_insert_with(|| Bucket::full(per_uid, now))
                .holds_one(now, per_uid)
        });
        if by_uid == Some(false) {
            return Some("uid");
        }
        let by_token = (per_token > 0).then(|| {
            self.by_token
                .entry(token.to_owned())
                .or_insert_with(|| Bucket::full(per_token, now))
                .holds_one(now, per_token)
        });
        if by_token == Some(false) {
            return Some("token");
        }
        if let Some(b) = self.by_uid.get_mut(uid).filter(|_| per_uid > 0) {
            b.milli -= 1000;
        }
        if let Some(b) = self.by_token.get_mut(token).filter(|_| per_token > 0) {
            b.milli -= 1000;
        }
        None
    }

    /// Forgets buckets that are full again.
    pub(super) fn prune(&mut self, cfg: &HubConfig, now: i64) {
        let per_uid = u64::from(cfg.joins_per_uid_per_min);
        let per_token = u64::from(cfg.joins_per_token_per_min);
        self.by_uid
            .retain(|_, b| !b.is_full(now, per_uid, MINUTE_MS, per_uid));
        self.by_token
            .retain(|_, b| !b.is_full(now, per_token, MINUTE_MS, per_token));
    }

    /// No bucket is remembered.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.by_uid.is_empty() && self.by_token.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use crate::rtc::hub::testkit::*;

    #[test]
    fn rate_limit_drops_only_the_abuser() {
        let mut h = hub_with(HubConfig {
            msgs_per_sec: 10,
            burst: 5,
            ..HubConfig::default()
        });
        let (a, _) = join(&mut h, T0, "c1", "alice"); // 1 token used
        let (b, _) = join(&mut h, T0, "c1", "bob");
        for _ in 0..4 {
            let out = text(&mut h, T0, a, &offer_to("bob"));
            assert_eq!(sent_to(&out, b).len(), 1);
        }
        let out = text(&mut h, T0, a, &offer_to("bob"));
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::RATE_LIMITED));
        assert_eq!(closed(&out, a), Some(close_code::POLICY));
        assert_eq!(
            sent_to(&out, b),
            vec![ServerMessage::PeerLeft {
                uid: "alice".into(),
                reason: LeaveReason::Kicked
            }]
        );
        assert_eq!(h.present(&ch("c1")), vec![uid("bob")]);
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let mut h = hub_with(HubConfig {
            msgs_per_sec: 10,
            burst: 2,
            ..HubConfig::default()
        });
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (_b, _) = join(&mut h, T0, "c1", "bob");
        // 10 per second = one every 100 ms; sending every 100 ms forever is fine.
        for i in 1..=50 {
            let out = text(&mut h, T0 + i * 100, a, &offer_to("bob"));
            assert_eq!(error_code(&out, a), None, "message {i}");
        }
        // Two at once (the burst) are fine, a third is not.
        let t = T0 + 10_000;
        assert_eq!(error_code(&text(&mut h, t, a, &offer_to("bob")), a), None);
        assert_eq!(error_code(&text(&mut h, t, a, &offer_to("bob")), a), None);
        let out = text(&mut h, t, a, &offer_to("bob"));
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::RATE_LIMITED));
    }

    #[test]
    fn client_pings_count_against_the_rate_and_pongs_do_not() {
        let mut h = hub_with(HubConfig {
            msgs_per_sec: 1,
            burst: 3,
            ..HubConfig::default()
        });
        let (a, _) = join(&mut h, T0, "c1", "alice");
        for _ in 0..20 {
            h.handle_input(T0, Input::Pong { conn: a });
        }
        assert!(drain(&mut h).is_empty());
        h.handle_input(T0, Input::Ping { conn: a });
        h.handle_input(T0, Input::Ping { conn: a });
        assert!(drain(&mut h).is_empty());
        h.handle_input(T0, Input::Ping { conn: a });
        let out = drain(&mut h);
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::RATE_LIMITED));
    }

    #[test]
    fn the_robot_uid_is_limited_per_token_only() {
        // Every robot session of every agent joins as the robot's uid: a busy deployment
        // makes more joins a minute than one person would. Each session's token still is.
        let mut h = hub_with(HubConfig {
            joins_per_uid_per_min: 2,
            joins_per_token_per_min: 1,
            robot_uid: Some(uid("robot")),
            ..HubConfig::default()
        });
        for i in 0..10 {
            let ch = format!("c{i}");
            let t = token(&ch, "robot");
            let c = h.open(T0);
            let out = text(&mut h, T0, c, &join_text(&ch, "robot", &t));
            assert!(
                matches!(sent_to(&out, c).first(), Some(ServerMessage::Joined { .. })),
                "robot join {i}"
            );
            text(&mut h, T0, c, r#"{"type":"leave"}"#);
            let again = h.open(T0);
            let out = text(&mut h, T0, again, &join_text(&ch, "robot", &t));
            assert_eq!(
                error_code(&out, again).as_deref(),
                Some(codes::TOO_MANY_JOINS)
            );
        }
        // Anyone else keeps the per-uid limit.
        for i in 0..3 {
            let ch = format!("d{i}");
            let c = h.open(T0);
            let out = text(
                &mut h,
                T0,
                c,
                &join_text(&ch, "alice", &token(&ch, "alice")),
            );
            assert_eq!(
                matches!(sent_to(&out, c).first(), Some(ServerMessage::Joined { .. })),
                i < 2,
                "alice join {i}"
            );
        }
    }

    #[test]
    fn joins_are_limited_per_token_and_per_uid_and_refill_over_a_minute() {
        let mut h = hub_with(HubConfig {
            joins_per_uid_per_min: 4,
            joins_per_token_per_min: 2,
            ..HubConfig::default()
        });
        fn attempt(h: &mut Hub, now: i64, tok: &str) -> bool {
            let c = h.open(now);
            let out = text(h, now, c, &join_text("c1", "mallory", tok));
            let ok = matches!(sent_to(&out, c).first(), Some(ServerMessage::Joined { .. }));
            if ok {
                text(h, now, c, r#"{"type":"leave"}"#);
            } else {
                assert_eq!(error_code(&out, c).as_deref(), Some(codes::TOO_MANY_JOINS));
                assert_eq!(closed(&out, c), Some(close_code::POLICY));
            }
            ok
        }
        let t = token("c1", "mallory");
        assert!(attempt(&mut h, T0, &t));
        assert!(attempt(&mut h, T0, &t));
        assert!(!attempt(&mut h, T0, &t), "a third join with one token");
        // Another token of the same uid: two more, then the uid's own limit.
        let t2 = token("c1", "mallory");
        assert_ne!(t2, t);
        assert!(attempt(&mut h, T0, &t2));
        assert!(attempt(&mut h, T0, &t2));
        let t3 = token("c1", "mallory");
        assert!(
            !attempt(&mut h, T0, &t3),
            "the uid's fifth join in a minute"
        );
        // Refused attempts spend nothing: 15 s later (a quarter of a minute) the uid has
        // one join again, and the fresh token is not used up.
        assert!(attempt(&mut h, T0 + 15_000, &t3));
        assert!(!attempt(&mut h, T0 + 15_000, &t3));
        // Someone else is not concerned.
        let (b, out) = join(&mut h, T0 + 15_000, "c1", "bob");
        assert!(matches!(sent_to(&out, b)[0], ServerMessage::Joined { .. }));
        // Full buckets are forgotten.
        h.handle_input(T0 + 200_000, Input::Timeout);
        assert!(h.joins.is_empty());
    }
}
