//! Rate limits on call creation and token minting, per uid and per IP address: token
//! buckets refilled continuously, per API instance. A refused request is a 429 with
//! `Retry-After`. Time is passed in (sans-IO core), so the bucket logic is tested
//! without sleeping.

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
    buckets: Mutex<HashMap<String, Bucket>>,
}

const MAX_KEYS: usize = 100_000;

impl Limiter {
    /// A limiter allowing `per_minute` requests per key (0: unlimited).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request for `key` at `now_ms`; `Err(seconds to wait)` when refused.
    pub fn take(&self, key: &str, now_ms: i64) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let cap = f64::from(self.per_minute);
        let rate_per_ms = cap / 60_000.0;
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

/// Every limit of the API.
#[derive(Debug)]
pub struct Limits {
    calls_uid: Limiter,
    calls_ip: Limiter,
    tokens_uid: Limiter,
    tokens_ip: Limiter,
}

/// What a request is about to do.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Create a call.
    Call,
    /// Mint a token for an existing channel.
    Token,
}

impl Limits {
    /// From configuration.
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            calls_uid: Limiter::new(c.rate_calls_per_uid),
            calls_ip: Limiter::new(c.rate_calls_per_ip),
            tokens_uid: Limiter::new(c.rate_tokens_per_uid),
            tokens_ip: Limiter::new(c.rate_tokens_per_ip),
        }
    }

    /// Takes one `kind` request for `uid` from `ip`; a 429 with the wait when refused.
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
        };
        if let Some(ip) = ip {
            by_ip
                .take(&ip.to_string(), now_ms)
                .map_err(|retry| ApiError::RateLimited {
                    retry_after: retry,
                    message: format!("too many {what} from this address; retry in {retry} s"),
                })?;
        }
        by_uid
            .take(uid, now_ms)
            .map_err(|retry| ApiError::RateLimited {
                retry_after: retry,
                message: format!("too many {what} for uid {uid}; retry in {retry} s"),
            })
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
    fn zero_means_unlimited() {
        let l = Limiter::new(0);
        for _ in 0..10_000 {
            assert!(l.take("u", 0).is_ok());
        }
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
