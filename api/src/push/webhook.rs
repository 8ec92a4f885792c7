//! The push webhook: pushes for Android, web and non-VoIP iOS devices go to one
//! configured URL as a signed JSON POST, and the operator's service forwards them (FCM,
//! Web Push, APNs alerts).
//!
//! Headers: `X-Dapi-Signature: sha256=<hex HMAC-SHA256(secret, body)>`,
//! `X-Dapi-Timestamp: <unix seconds>` (also `sent_at` in the signed body, so a receiver
//! can refuse replays), `X-Dapi-Delivery: <job id>` (the same on every retry of a push:
//! the receiver's idempotency key).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::Delivery;
use crate::config::Secret;
use crate::store::PushJob;

/// The signature header's value for `body`: `sha256=<hex>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for Hmac<Sha256>.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body of a webhook delivery.
pub fn body(job: &PushJob, now_ms: i64) -> Vec<u8> {
    let mut v = super::payload(job);
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), job.id.get().into());
        o.insert("attempt".into(), job.attempts.into());
        o.insert("platform".into(), job.platform.clone().into());
        o.insert("push_token".into(), job.push_token.clone().into());
        o.insert("voip".into(), job.voip.into());
        o.insert("sent_at".into(), now_ms.div_euclid(1000).into());
        o.insert(
            "expires_at".into(),
            job.expires_at.map(|e| e.div_euclid(1000)).into(),
        );
    }
    v.to_string().into_bytes()
}

/// What a webhook answer means: 2xx delivered; 410 the token is invalid (the device is
/// removed); 408, 425, 429 and 5xx retried (honouring `Retry-After` seconds); any other
/// status is refused for good.
pub fn classify(status: u16, retry_after_secs: Option<u64>) -> Delivery {
    let error = format!("webhook answered {status}");
    match status {
        200..=299 => Delivery::Delivered,
        410 => Delivery::InvalidToken { error },
        408 | 425 | 429 | 500..=599 => Delivery::Retry {
            error,
            after_ms: retry_after_secs
                .map(|s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)),
        },
        _ => Delivery::Refused { error },
    }
}

/// The webhook client.
pub struct WebhookClient {
    http: super::http::HttpClient,
    url: String,
    secret: Secret,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl WebhookClient {
    /// A client posting to `url`, signing with `secret`.
    pub fn new(http: super::http::HttpClient, url: String, secret: Secret) -> Self {
        Self { http, url, secret }
    }

    /// Posts one push.
    pub async fn send(&self, job: &PushJob, now_ms: i64) -> Delivery {
        let body = body(job, now_ms);
        let sig = signature(self.secret.expose().as_bytes(), &body);
        let stamp = now_ms.div_euclid(1000).to_string();
        let delivery = job.id.to_string();
        let headers = [
            ("content-type", "application/json"),
            ("x-dapi-signature", sig.as_str()),
            ("x-dapi-timestamp", stamp.as_str()),
            ("x-dapi-delivery", delivery.as_str()),
        ];
        match self.http.post(&self.url, &headers, body, 4096).await {
            Ok(answer) => {
                let retry_after = answer
                    .headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                classify(answer.status, retry_after)
            }
            Err(e) => Delivery::Retry {
                error: format!("webhook request failed: {e}"),
                after_ms: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(204, None), Delivery::Delivered);
        assert!(matches!(classify(410, None), Delivery::InvalidToken { .. }));
        assert_eq!(
            classify(503, Some(7)),
            Delivery::Retry {
                error: "webhook answered 503".into(),
                after_ms: Some(7000)
            }
        );
        assert!(matches!(classify(429, None), Delivery::Retry { .. }));
        assert!(matches!(classify(401, None), Delivery::Refused { .. }));
    }
}

/// `DAPI_PUSH_WEBHOOK_URL` must be `https://`: deliveries carry who calls whom and the
/// caller's `extra_msg`. Plain `http://` is accepted only for a loopback host
/// (`localhost`, 127.0.0.0/8, `[::1]`), where nothing crosses a network: a sidecar, tests.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    if url.starts_with("https://") && url.len() > "https://".len() {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        anyhow::bail!("DAPI_PUSH_WEBHOOK_URL must be an https:// URL, not {url:?}");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        loopback,
        "DAPI_PUSH_WEBHOOK_URL must be an https:// URL (http:// only to a loopback host such as 127.0.0.1), not {url:?}"
    );
    Ok(())
}

#[cfg(test)]
mod url_tests {
    use super::check_url;

    #[test]
    fn webhook_urls_are_https_or_loopback() {
        for ok in [
            "https://hooks.example.com/push",
            "http://127.0.0.1:9000/hook",
            "http://localhost/hook",
            "http://[::1]:8080/x",
            "http://127.9.9.9",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://hooks.example.com/push",
            "http://127.0.0.1.evil.example/x",
            "http://user@10.0.0.1/x",
            "ftp://127.0.0.1/x",
            "hooks.example.com",
            "https://",
        ] {
            let e = check_url(bad).unwrap_err().to_string();
            assert!(e.contains("DAPI_PUSH_WEBHOOK_URL"), "{bad}: {e}");
        }
    }
}
