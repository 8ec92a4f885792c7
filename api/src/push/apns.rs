//! APNs VoIP pushes: HTTP/2 with token-based authentication.
//!
//! A provider token is a JWT signed ES256 with the team's `.p8` key (header `kid` = key
//! id, claims `iss` = team id and `iat`). Apple accepts a token for an hour and refuses
//! a new one more often than every 20 minutes, so one token is cached and replaced
//! after [`TOKEN_REFRESH_SECS`]. Each push is `POST /3/device/<token>` with
//! `apns-topic: <bundle>.voip`, `apns-push-type: voip` and `apns-priority: 10`.
//!
//! ES256 is signed with `ring` (ECDSA P-256, SHA-256, the fixed 64-byte `r || s` form
//! JWS asks for): the same crate is rustls' crypto provider here, so no second crypto
//! stack is built. The response is classified by [`classify`], a pure function.

use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;

use super::{Delivery, device::redact};
use crate::store::PushJob;

/// Apple's production endpoint.
pub const PRODUCTION: &str = "https://api.push.apple.com";
/// Apple's development (sandbox) endpoint.
pub const SANDBOX: &str = "https://api.sandbox.push.apple.com";

/// A provider token older than this is replaced (Apple: valid for an hour, replace
/// no more often than every 20 minutes).
pub const TOKEN_REFRESH_SECS: i64 = 50 * 60;

/// Largest VoIP payload APNs accepts, bytes.
pub const MAX_PAYLOAD: usize = 5120;

/// `production`, `sandbox` or an `https://` base URL (tests) to the base URL.
pub fn endpoint_url(s: &str) -> Result<String, String> {
    match s.trim() {
        "production" => Ok(PRODUCTION.to_owned()),
        "sandbox" | "development" => Ok(SANDBOX.to_owned()),
        u if u.starts_with("https://") => Ok(u.trim_end_matches('/').to_owned()),
        other => Err(format!(
            "DAPI_APNS_ENDPOINT must be production, sandbox or an https:// URL, not {other:?}"
        )),
    }
}

/// The team's signing key with the ids that go into every provider token.
pub struct ProviderKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    key_id: String,
    team_id: String,
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKey")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

impl ProviderKey {
    /// Reads a PKCS#8 PEM P-256 key (an APNs `.p8` file).
    pub fn from_pem(pem: &[u8], key_id: &str, team_id: &str) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PKCS#8 PEM private key: {e}"))?;
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| format!("not a P-256 (ES256) key: {e}"))?;
        Ok(Self {
            pair,
            rng,
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
        })
    }

    /// A provider token issued at `iat` (unix seconds).
    pub fn sign(&self, iat: i64) -> Result<String, String> {
        let header = serde_json::json!({"alg": "ES256", "kid": self.key_id});
        let claims = serde_json::json!({"iss": self.team_id, "iat": iat});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| "signing the provider token failed".to_owned())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }
}

/// The cached provider token: sans-IO, time passed in.
#[derive(Debug, Default)]
pub struct TokenCache {
    current: Option<(String, i64)>,
}

impl TokenCache {
    /// The token to use at `now` (unix seconds), signing a new one when there is none,
    /// when it is [`TOKEN_REFRESH_SECS`] old, or when the clock went back.
    pub fn get(&mut self, key: &ProviderKey, now: i64) -> Result<String, String> {
        match &self.current {
            Some((jwt, iat)) if now >= *iat && now - iat < TOKEN_REFRESH_SECS => Ok(jwt.clone()),
            _ => {
                let jwt = key.sign(now)?;
                self.current = Some((jwt.clone(), now));
                Ok(jwt)
            }
        }
    }

    /// APNs called the token expired or invalid: forget it, unless it is younger than
    /// 20 minutes (a newer one would be refused as `TooManyProviderTokenUpdates`).
    pub fn rejected(&mut self, now: i64) {
        if self
            .current
            .as_ref()
            .is_some_and(|(_, iat)| now - iat >= 20 * 60)
        {
            self.current = None;
        }
    }

    /// When the current token was issued.
    pub fn issued_at(&self) -> Option<i64> {
        self.current.as_ref().map(|(_, iat)| *iat)
    }
}

/// What an APNs answer means for the push. `reason` is the `reason` of the JSON body
/// (empty when there is none).
pub fn classify(status: u16, reason: &str) -> Delivery {
    let error = if reason.is_empty() {
        format!("APNs answered {status}")
    } else {
        format!("APNs answered {status} {reason}")
    };
    match status {
        200 => Delivery::Delivered,
        // The device token is no longer valid for the topic.
        410 => Delivery::InvalidToken { error },
        400 if reason == "BadDeviceToken" => Delivery::InvalidToken { error },
        // 403: the provider token; a fresh one may do (see TokenCache::rejected).
        403 | 429 | 500..=599 => Delivery::Retry {
            error,
            after_ms: None,
        },
        // BadTopic, PayloadTooLarge, BadExpirationDate, ...: retrying sends the same.
        _ => Delivery::Refused { error },
    }
}

/// Builds the JSON payload of a VoIP push.
pub fn payload(job: &PushJob) -> Vec<u8> {
    super::payload(job).to_string().into_bytes()
}

/// The APNs client: one HTTP/2 connection pool, the key and the cached token.
pub struct ApnsClient {
    http: super::http::HttpClient,
    base: String,
    topic: String,
    key: ProviderKey,
    token: Mutex<TokenCache>,
}

impl std::fmt::Debug for ApnsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsClient")
            .field("base", &self.base)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ApnsClient {
    /// A client for `base` (see [`endpoint_url`]) pushing to `<bundle_id>.voip`.
    pub fn new(
        http: super::http::HttpClient,
        base: String,
        bundle_id: &str,
        key: ProviderKey,
    ) -> Self {
        Self {
            http,
            base,
            topic: format!("{bundle_id}.voip"),
            key,
            token: Mutex::new(TokenCache::default()),
        }
    }

    /// The topic pushes go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn bearer(&self, now_secs: i64) -> Result<String, String> {
        let mut cache = self
            .token
            .lock()
            .map_err(|_| "provider token cache poisoned".to_owned())?;
        cache.get(&self.key, now_secs)
    }

    fn token_rejected(&self, now_secs: i64) {
        if let Ok(mut cache) = self.token.lock() {
            cache.rejected(now_secs);
        }
    }

    /// Sends one VoIP push (`now_ms` signs the token and is the clock of the job).
    pub async fn send(&self, job: &PushJob, now_ms: i64) -> Delivery {
        if job.push_token.is_empty() || !job.push_token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Delivery::InvalidToken {
                error: "not a hex APNs device token".into(),
            };
        }
        let body = payload(job);
        if body.len() > MAX_PAYLOAD {
            return Delivery::Refused {
                error: format!(
                    "payload is {} bytes; APNs takes at most {MAX_PAYLOAD}",
                    body.len()
                ),
            };
        }
        let now_secs = now_ms.div_euclid(1000);
        let jwt = match self.bearer(now_secs) {
            Ok(t) => t,
            Err(error) => return Delivery::Refused { error },
        };
        let expiration = job.expires_at.map_or(0, |e| e.div_euclid(1000)).to_string();
        let url = format!("{}/3/device/{}", self.base, job.push_token);
        let bearer = format!("bearer {jwt}");
        let headers = [
            ("authorization", bearer.as_str()),
            ("apns-topic", self.topic.as_str()),
            ("apns-push-type", "voip"),
            ("apns-priority", "10"),
            ("apns-expiration", expiration.as_str()),
            // A cancel replaces a call push APNs still holds for an offline device.
            ("apns-collapse-id", job.channel.as_str()),
            ("content-type", "application/json"),
        ];
        let answer = match self.http.post(&url, &headers, body, 4096).await {
            Ok(a) => a,
            Err(e) => {
                return Delivery::Retry {
                    error: format!("APNs request failed: {e}"),
                    after_ms: None,
                };
            }
        };
        let status = answer.status;
        let reason = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let d = classify(status, &reason);
        if status == 403 {
            tracing::warn!(status, reason = %reason, "APNs refused the provider token");
            self.token_rejected(now_secs);
        }
        if matches!(d, Delivery::InvalidToken { .. }) {
            tracing::info!(token = %redact(&job.push_token), reason = %reason, "APNs: device token invalid");
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, KeyPair, UnparsedPublicKey};

    fn test_key() -> (ProviderKey, Vec<u8>) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let public = pair.public_key().as_ref().to_vec();
        (
            ProviderKey::from_pem(pem.as_bytes(), "KEY1234567", "TEAM123456").unwrap(),
            public,
        )
    }

    #[test]
    fn provider_token_is_an_es256_jwt_with_kid_iss_and_iat() {
        let (key, public) = test_key();
        let jwt = key.sign(1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "ES256", "kid": "KEY1234567"})
        );
        assert_eq!(
            claims,
            serde_json::json!({"iss": "TEAM123456", "iat": 1_700_000_000})
        );
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 64, "JWS ES256 is r || s");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn token_is_cached_then_refreshed_after_50_minutes_or_a_clock_jump_back() {
        let (key, _) = test_key();
        let mut cache = TokenCache::default();
        let a = cache.get(&key, 1000).unwrap();
        assert_eq!(cache.get(&key, 1000 + TOKEN_REFRESH_SECS - 1).unwrap(), a);
        let b = cache.get(&key, 1000 + TOKEN_REFRESH_SECS).unwrap();
        assert_ne!(a, b);
        assert_eq!(cache.issued_at(), Some(1000 + TOKEN_REFRESH_SECS));
        cache.get(&key, 10).unwrap();
        assert_eq!(cache.issued_at(), Some(10));
    }

    #[test]
    fn a_rejected_token_is_replaced_only_when_20_minutes_old() {
        let (key, _) = test_key();
        let mut cache = TokenCache::default();
        cache.get(&key, 0).unwrap();
        cache.rejected(60);
        assert_eq!(cache.issued_at(), Some(0));
        cache.rejected(20 * 60);
        assert_eq!(cache.issued_at(), None);
    }

    #[test]
    fn keys_that_are_not_p256_pkcs8_are_refused() {
        assert!(ProviderKey::from_pem(b"garbage", "k", "t").is_err());
        let pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(ProviderKey::from_pem(pem.as_bytes(), "k", "t").is_err());
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(200, ""), Delivery::Delivered);
        assert!(matches!(
            classify(410, "Unregistered"),
            Delivery::InvalidToken { .. }
        ));
        assert!(matches!(
            classify(400, "BadDeviceToken"),
            Delivery::InvalidToken { .. }
        ));
        assert!(matches!(
            classify(400, "BadTopic"),
            Delivery::Refused { .. }
        ));
        for s in [403, 429, 500, 503] {
            assert!(matches!(classify(s, ""), Delivery::Retry { .. }), "{s}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(endpoint_url("production").unwrap(), PRODUCTION);
        assert_eq!(endpoint_url("sandbox").unwrap(), SANDBOX);
        assert_eq!(
            endpoint_url("https://127.0.0.1:8443/").unwrap(),
            "https://127.0.0.1:8443"
        );
        assert!(endpoint_url("http://plain").is_err());
    }
}
