//! Rate limits on call creation, token minting and every other write, per uid and per IP
//! address: token buckets refilled continuously, per API instance. A refused request is a
//! 429 with `Retry-After`. Time is passed in (sans-IO core), so the bucket logic is tested
//! without sleeping.
//!
//! **The uid is charged first, the address second.** A uid past its own limit is refused
//! before its address is charged, so one user hammering the API cannot use up the budget
//! of everyone behind the same address (a reverse proxy, a NAT). The address budget is
//! ten times the uid budget by default: it only stops many uids from one place (in open
//! mode a client may claim any uid, so it is the only limit a uid-rotating client meets).
//! A request the address refuses gives its uid token back. The address is the client's
//! as [`crate::client_ip`] derives it (`DAPI_TRUSTED_PROXIES`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::error::ApiError;

/// A token bucket: `capacity` requests, refilled at `capacity` per minute.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: i64,
}

/// Buckets keyed by uid or IP for one kind of request.
#[derive(Debug)]
pub struct Limiter {
    per_minute: u32,
    /// Requests a full bucket holds (`per_minute` unless built [`with_burst`](Self::with_burst)).
    capacity: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

const MAX_KEYS: usize = 100_000;

impl Limiter {
    /// A limiter allowing `per_minute` requests per key (0: unlimited).
    pub fn new(per_minute: u32) -> Self {
        Self::with_burst(per_minute, per_minute)
    }

    /// A limiter refilled at `per_minute` requests per key whose full bucket holds only
    /// `capacity` (at least 1): a sustained rate with a short burst.
    pub fn with_burst(per_minute: u32, capacity: u32) -> Self {
        Self {
            per_minute,
            capacity: capacity.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request for `key` at `now_ms`; `Err(seconds to wait)` when refused.
    pub fn take(&self, key: &str, now_ms: i64) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let cap = f64::from(self.capacity);
        let rate_per_ms = f64::from(self.per_minute) / 60_000.0;
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_KEYS {
            // forget full buckets: they would be at capacity anyway
            map.retain(|_, b| b.tokens + (now_ms - b.last_ms) as f64 * rate_per_ms < cap);
        }
        let b = map.entry(key.to_owned()).or_insert(Bucket {
            tokens: cap,
            last_ms: now_ms,
        });
        let elapsed = (now_ms - b.last_ms).max(0) as f64;
        b.tokens = (b.tokens + elapsed * rate_per_ms).min(cap);
        b.last_ms = now_ms;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = (1.0 - b.tokens) / rate_per_ms;
            Err((wait_ms / 1000.0).ceil().max(1.0) as u64)
        }
    }
}

impl Limiter {
    /// Gives back one request taken for `key` (a later check refused the request).
    pub fn give_back(&self, key: &str) {
        if self.per_minute == 0 {
            return;
        }
        let cap = f64::from(self.capacity);
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = map.get_mut(key) {
            b.tokens = (b.tokens + 1.0).min(cap);
        }
    }
}

/// Every limit of the API.
#[derive(Debug)]
pub struct Limits {
    calls_uid: Limiter,
    calls_ip: Limiter,
    tokens_uid: Limiter,
    tokens_ip: Limiter,
    writes_uid: Limiter,
    writes_ip: Limiter,
}

/// What a request is about to do.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Create a call.
    Call,
    /// Mint a token for an existing channel.
    Token,
    /// Any other write (events, heartbeats, tasks, devices, quitting the robot).
    Write,
}

impl Limits {
    /// From configuration.
    pub fn from_config(c: &crate::config::LimitsConfig) -> Self {
        Self {
            calls_uid: Limiter::new(c.rate_calls_per_uid),
            calls_ip: Limiter::new(c.rate_calls_per_ip),
            tokens_uid: Limiter::new(c.rate_tokens_per_uid),
            tokens_ip: Limiter::new(c.rate_tokens_per_ip),
            writes_uid: Limiter::new(c.rate_writes_per_uid),
            writes_ip: Limiter::new(c.rate_writes_per_ip),
        }
    }

    /// Takes one `kind` request for `uid` from `ip`: the uid's bucket first, then the
    /// address's; a 429 with the wait when refused.
    pub fn check(
        &self,
        kind: Kind,
        uid: &str,
        ip: Option<IpAddr>,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let (by_uid, by_ip, what) = match kind {
            Kind::Call => (&self.calls_uid, &self.calls_ip, "calls"),
            Kind::Token => (&self.tokens_uid, &self.tokens_ip, "tokens"),
            Kind::Write => (&self.writes_uid, &self.writes_ip, "writes"),
        };
        by_uid
            .take(uid, now_ms)
            .map_err(|retry| ApiError::RateLimited {
                retry_after: retry,
                message: format!("too many {what} for uid {uid}; retry in {retry} s"),
            })?;
        if let Some(ip) = ip
            && let Err(retry) = by_ip.take(&ip.to_string(), now_ms)
        {
            by_uid.give_back(uid);
            return Err(ApiError::RateLimited {
                retry_after: retry,
                message: format!("too many {what} from this address; retry in {retry} s"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_rate_and_refills() {
        let l = Limiter::new(60); // one per second, burst 60
        for i in 0..60 {
            assert!(l.take("u", 0).is_ok(), "{i}");
        }
        assert_eq!(l.take("u", 0), Err(1));
        assert!(l.take("other", 0).is_ok(), "keys are independent");
        assert_eq!(l.take("u", 500), Err(1));
        assert!(l.take("u", 1000).is_ok(), "one more after a second");
        assert!(l.take("u", 1000).is_err());
        assert!(l.take("u", 61_000).is_ok());
    }

    #[test]
    fn a_short_burst_then_the_rate() {
        let l = Limiter::with_burst(600, 20); // ten a second, at most 20 at once
        for i in 0..20 {
            assert!(l.take("ip", 0).is_ok(), "{i}");
        }
        assert_eq!(l.take("ip", 0), Err(1));
        assert!(l.take("ip", 100).is_ok(), "one more after 100 ms");
        assert!(l.take("ip", 100).is_err());
        // an hour idle refills to the burst, not beyond
        for i in 0..20 {
            assert!(l.take("ip", 3_600_000).is_ok(), "{i}");
        }
        assert!(l.take("ip", 3_600_000).is_err());
    }

    #[test]
    fn zero_means_unlimited() {
        let l = Limiter::new(0);
        for _ in 0..10_000 {
            assert!(l.take("u", 0).is_ok());
        }
    }

    #[test]
    fn the_uid_is_charged_before_the_address() {
        let c = crate::config::LimitsConfig {
            rate_writes_per_uid: 2,
            rate_writes_per_ip: 3,
            ..crate::config::LimitsConfig::none()
        };
        let l = Limits::from_config(&c);
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.check(Kind::Write, "loud", Some(proxy), 0).is_ok());
        assert!(l.check(Kind::Write, "loud", Some(proxy), 0).is_ok());
        // loud is past its own limit: refused without charging the shared address
        for _ in 0..10 {
            let e = l.check(Kind::Write, "loud", Some(proxy), 0).unwrap_err();
            assert!(e.to_string().contains("uid loud"), "{e}");
        }
        assert!(l.check(Kind::Write, "quiet", Some(proxy), 0).is_ok());
        // the address is now spent (3): a refusal there gives the uid's token back
        let e = l.check(Kind::Write, "other", Some(proxy), 0).unwrap_err();
        assert!(e.to_string().contains("address"), "{e}");
        let e = l.check(Kind::Write, "other", None, 0);
        assert!(e.is_ok());
        assert!(
            l.check(Kind::Write, "other", None, 0).is_ok(),
            "token given back"
        );
    }

    #[test]
    fn retry_after_reflects_the_rate() {
        let l = Limiter::new(2); // one per 30 s
        assert!(l.take("u", 0).is_ok());
        assert!(l.take("u", 0).is_ok());
        assert_eq!(l.take("u", 0), Err(30));
        assert_eq!(l.take("u", 20_000), Err(10));
    }
}
