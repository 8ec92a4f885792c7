//! Push: ring a callee's phone when a call comes in, and stop it when the call ends
//! before it was answered. Requests never talk to a push provider: they write a durable
//! outbox in the call's own transaction, and a worker delivers it.
//!
//! ```text
//!  call/user, calltask ---> Store: calls + push_jobs(call)      (one transaction)
//!  call/event 1000.., ring timeout ---> Store: push_jobs(cancel) (the same transaction)
//!        |  wake()
//!        v
//!  worker (run / deliver_once): claim due jobs (CAS, SKIP LOCKED) -> deliver
//!        |-- iOS + VoIP token ----------> apns  (HTTP/2, ES256 provider token)
//!        +-- android, web, iOS non-VoIP -> webhook (signed JSON POST)
//!        v
//!  decide() (pure): sent | retry at now + backoff | dead | dropped (410: device removed)
//! ```
//!
//! Only this module talks to providers (hyper, rustls, ring); the store holds the SQL.
//! Delivery is at least once: a job whose worker died is claimed again once its lease
//! lapses, and the webhook's `X-Dapi-Delivery` lets a receiver drop duplicates.

pub mod apns;
mod config;
/// The device newtypes, at the crate root since the store uses them too.
pub use crate::device;
pub mod http;
pub mod webhook;

use std::time::Duration;

use anyhow::Context;
use protocol::backoff::Backoff;
use serde_json::{Value, json};
use tracing::Instrument;

pub use config::PushConfig;

use crate::AppState;
use crate::domain::Uid;
use crate::store::{PushJob, PushJobId, PushResult, StoreError};

/// Jobs claimed (and delivered concurrently) per pass.
pub const BATCH: i64 = 32;

/// Longest delay between two attempts, ms.
pub const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;

/// What one delivery attempt came to, before the retry policy ([`decide`]) applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The provider accepted the push.
    Delivered,
    /// A failure that may pass (network, timeout, 429, 5xx, a refused provider token).
    Retry {
        /// What happened.
        error: String,
        /// The provider asked to wait this long (`Retry-After`), ms.
        after_ms: Option<i64>,
    },
    /// The provider refused this push for good (bad topic, payload too large, ...).
    Refused {
        /// What happened.
        error: String,
    },
    /// The provider says the device token is invalid: the device is removed.
    InvalidToken {
        /// What happened.
        error: String,
    },
    /// No provider is configured for this device.
    Skipped {
        /// Which one is missing.
        reason: String,
    },
    /// The push is no longer worth sending (past its `expires_at`).
    Expired,
}

/// Delay before the attempt after attempt `attempts` failed: 1 s, 2 s, 4 s, ... capped
/// at [`MAX_BACKOFF_MS`].
pub fn backoff_ms(attempts: i64) -> i64 {
    const BACKOFF: Backoff = Backoff::new(
        Duration::from_secs(1),
        Duration::from_millis(MAX_BACKOFF_MS.unsigned_abs()),
    );
    BACKOFF.delay_ms_after_attempt(attempts)
}

/// The retry policy, pure: what a claimed `job` becomes after `delivery` at `now_ms`
/// when a job gets `max_attempts` attempts.
pub fn decide(job: &PushJob, delivery: Delivery, now_ms: i64, max_attempts: i64) -> PushResult {
    match delivery {
        Delivery::Delivered => PushResult::Sent,
        Delivery::Retry { error, after_ms } => {
            if job.attempts >= max_attempts {
                return PushResult::Dead {
                    error: format!("{error} (gave up after {} attempts)", job.attempts),
                };
            }
            let wait = backoff_ms(job.attempts)
                .max(after_ms.unwrap_or(0))
                .min(MAX_BACKOFF_MS);
            let at_ms = now_ms.saturating_add(wait);
            match job.expires_at {
                Some(e) if at_ms >= e => PushResult::Dead {
                    error: format!("{error} (the push expires before the next attempt)"),
                },
                _ => PushResult::Retry { at_ms, error },
            }
        }
        Delivery::Refused { error } => PushResult::Dead { error },
        Delivery::InvalidToken { error } => PushResult::Dropped {
            reason: format!("invalid token ({error}); device removed"),
        },
        Delivery::Skipped { reason } => PushResult::Dropped { reason },
        Delivery::Expired => PushResult::Dropped {
            reason: "expired before it could be delivered".into(),
        },
    }
}

/// The provider a device's pushes go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// APNs, as a VoIP push.
    Apns,
    /// The webhook.
    Webhook,
}

/// iOS devices with a PushKit token go to APNs; everything else to the webhook.
pub fn route(platform: &str, voip: bool) -> Route {
    if platform == "ios" && voip {
        Route::Apns
    } else {
        Route::Webhook
    }
}

/// The provider of one job: [`route`], except that a `recording_ready` push always goes
/// to the webhook. APNs is configured for VoIP pushes only, and iOS requires every VoIP
/// push to report an incoming call to CallKit (an app that does not is stopped), so a
/// voicemail notice must reach the phone as an ordinary alert, which the operator's
/// service sends (docs/recordings.md).
pub fn route_job(job: &PushJob) -> Route {
    if job.kind == crate::store::PushKind::RecordingReady {
        Route::Webhook
    } else {
        route(&job.platform, job.voip)
    }
}

fn uid_json(uid: &str) -> Value {
    Uid::parse(uid)
        .map(|u| u.to_json())
        .unwrap_or_else(|_| Value::from(uid))
}

/// The payload both providers carry: `type` (`call`, `cancel` or `recording_ready`), `channel`, `src_uid`
/// (the caller), `uid` (the callee) and `extra_msg`; uids as in `call/msg` rows.
pub fn payload(job: &PushJob) -> Value {
    json!({
        "type": job.kind.as_str(),
        "channel": job.channel,
        "src_uid": uid_json(&job.caller_uid),
        "uid": uid_json(&job.uid),
        "extra_msg": job.extra_msg,
    })
}

/// The error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// The push worker's providers and wake-up: one per API instance, in [`AppState`].
pub struct Pusher {
    apns: Option<apns::ApnsClient>,
    webhook: Option<webhook::WebhookClient>,
    wake: tokio::sync::Notify,
    max_attempts: i64,
    max_devices: i64,
    lease_ms: i64,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("apns", &self.apns)
            .field("webhook", &self.webhook)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl Pusher {
    /// Builds the providers from `cfg` (checked by [`PushConfig::validate`]): reads the
    /// APNs key, and warns once for each provider that is not configured.
    pub fn from_config(cfg: &PushConfig) -> anyhow::Result<Self> {
        let timeout = cfg.request_timeout();
        let apns = match (
            &cfg.apns_key_file,
            &cfg.apns_key_id,
            &cfg.apns_team_id,
            &cfg.apns_bundle_id,
        ) {
            (Some(file), Some(key_id), Some(team_id), Some(bundle)) => {
                let pem = std::fs::read(file)
                    .with_context(|| format!("reading DAPI_APNS_KEY_FILE {}", file.display()))?;
                let key = apns::ProviderKey::from_pem(&pem, key_id, team_id)
                    .map_err(|e| anyhow::anyhow!("DAPI_APNS_KEY_FILE {}: {e}", file.display()))?;
                let base = cfg.apns_endpoint.url().to_owned();
                let http = http::HttpClient::new(
                    http::tls_config(cfg.ca_file.as_deref())?,
                    http::Protocols::Http2Only,
                    timeout,
                );
                let client = apns::ApnsClient::new(http, base.clone(), bundle, key);
                tracing::info!(endpoint = %base, topic = client.topic(), key_id = %key_id, "APNs VoIP pushes configured");
                Some(client)
            }
            // `validate`: the four settings or none
            _ => None,
        };
        let webhook = match (&cfg.webhook_url, &cfg.webhook_secret) {
            (Some(url), Some(secret)) => {
                let http = http::HttpClient::new(
                    http::tls_config(cfg.ca_file.as_deref())?,
                    http::Protocols::Any,
                    timeout,
                );
                Some(webhook::WebhookClient::new(
                    http,
                    url.clone(),
                    secret.clone(),
                ))
            }
            // `validate`: a URL comes with its secret
            _ => None,
        };
        match (&apns, &webhook) {
            (None, None) => tracing::warn!(
                "no push provider configured (DAPI_APNS_*, DAPI_PUSH_WEBHOOK_URL): pushes to registered devices are skipped"
            ),
            (None, Some(_)) => tracing::warn!(
                "APNs is not configured (DAPI_APNS_*): VoIP pushes to iOS devices are skipped"
            ),
            (Some(_), None) => tracing::warn!(
                "DAPI_PUSH_WEBHOOK_URL is not set: pushes to Android, web and non-VoIP iOS devices are skipped"
            ),
            (Some(_), Some(_)) => {}
        }
        let timeout_ms = crate::config::millis_i64(timeout);
        Ok(Self {
            apns,
            webhook,
            wake: tokio::sync::Notify::new(),
            max_attempts: cfg.max_attempts.max(1),
            max_devices: cfg.max_devices.max(1),
            // A batch is delivered concurrently: it ends within one request timeout.
            lease_ms: timeout_ms.saturating_mul(2).saturating_add(10_000),
        })
    }

    /// New jobs are in the outbox: deliver now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Devices kept per uid.
    pub fn max_devices(&self) -> i64 {
        self.max_devices
    }

    /// Attempts a job gets.
    pub fn max_attempts(&self) -> i64 {
        self.max_attempts
    }

    /// One attempt at one job.
    async fn deliver(&self, job: &PushJob, now_ms: i64) -> Delivery {
        if job.expires_at.is_some_and(|e| now_ms >= e) {
            return Delivery::Expired;
        }
        match route_job(job) {
            Route::Apns => match &self.apns {
                Some(c) => c.send(job, now_ms).await,
                None => Delivery::Skipped {
                    reason: "APNs is not configured".into(),
                },
            },
            Route::Webhook => match &self.webhook {
                Some(c) => c.send(job, now_ms).await,
                None => Delivery::Skipped {
                    reason: "the push webhook is not configured".into(),
                },
            },
        }
    }
}

/// What one pass did, by job id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Accepted by the provider.
    pub sent: Vec<PushJobId>,
    /// Failed; queued again.
    pub retried: Vec<PushJobId>,
    /// Failed for good.
    pub dead: Vec<PushJobId>,
    /// Not sent (invalid token, expired, no provider).
    pub dropped: Vec<PushJobId>,
    /// Devices removed because the provider called their token invalid.
    pub devices_removed: usize,
}

impl DeliveryReport {
    /// Jobs handled in the pass.
    pub fn handled(&self) -> usize {
        self.sent.len() + self.retried.len() + self.dead.len() + self.dropped.len()
    }
}

/// One pass: claims the due jobs, delivers them concurrently, and records each
/// outcome. Tests call it with a manual clock instead of running the worker.
pub async fn deliver_once(state: &AppState) -> Result<DeliveryReport, StoreError> {
    let pusher = state.push();
    let store = state.store();
    let now = state.clock().now_ms();
    let jobs = store
        .claim_push_jobs(now, now.saturating_add(pusher.lease_ms), BATCH)
        .await?;
    let mut report = DeliveryReport::default();
    if jobs.is_empty() {
        return Ok(report);
    }
    let deliveries =
        futures_util::future::join_all(jobs.iter().map(|j| pusher.deliver(j, now))).await;
    let done = state.clock().now_ms();
    for (job, delivery) in jobs.iter().zip(deliveries) {
        let span = tracing::info_span!(
            "push",
            job = job.id.get(),
            channel = %job.channel,
            kind = job.kind.as_str(),
            platform = %job.platform,
            token = %device::redact(&job.push_token),
            attempt = job.attempts,
        );
        record(state, job, delivery, done, &mut report)
            .instrument(span)
            .await;
    }
    Ok(report)
}

/// Applies the retry policy to one attempt and writes the outcome.
async fn record(
    state: &AppState,
    job: &PushJob,
    delivery: Delivery,
    now_ms: i64,
    report: &mut DeliveryReport,
) {
    let store = state.store();
    let invalid = matches!(delivery, Delivery::InvalidToken { .. });
    let result = decide(job, delivery, now_ms, state.push().max_attempts);
    if invalid {
        match store
            .remove_push_token(&job.platform, &job.push_token, "token invalid", now_ms)
            .await
        {
            Ok(removed) => {
                if removed {
                    report.devices_removed += 1;
                }
                tracing::warn!("push token invalid; device removed");
            }
            Err(e) => tracing::warn!(error = %e, "could not remove an invalid push token"),
        }
    }
    match &result {
        PushResult::Sent => {
            tracing::info!("push sent");
            report.sent.push(job.id);
        }
        PushResult::Retry { at_ms, error } => {
            tracing::warn!(%error, retry_in_ms = at_ms - now_ms, "push failed; will retry");
            report.retried.push(job.id);
        }
        PushResult::Dead { error } => {
            tracing::error!(%error, "push failed for good");
            report.dead.push(job.id);
        }
        PushResult::Dropped { reason } => {
            tracing::info!(%reason, "push dropped");
            report.dropped.push(job.id);
        }
    }
    match store
        .finish_push_job(job.id, job.attempts, &result, now_ms)
        .await
    {
        Ok(true) => {}
        // The call ended meanwhile (the job was dropped and a cancel queued), or the
        // lease lapsed and another worker holds it.
        Ok(false) => tracing::info!("push outcome not recorded: the job changed meanwhile"),
        // The lease lapses and the job is tried again: at least once.
        Err(e) => tracing::warn!(error = %e, "could not record a push outcome"),
    }
}

/// The worker: delivers whenever woken and every `DAPI_PUSH_MS`, prunes finished jobs
/// hourly, until `shutdown` resolves; does nothing when `DAPI_PUSH_MS` is 0.
pub async fn run(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    let every = state.config().push.every;
    if every.is_zero() {
        return;
    }
    let retention_ms = crate::config::millis_i64(state.config().push.retention);
    let mut last_prune: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let pass = tokio::select! {
            () = &mut shutdown => return,
            r = deliver_once(&state) => r,
        };
        let more = match pass {
            Ok(r) => r.handled() as i64 >= BATCH,
            Err(e) => {
                tracing::warn!(error = %e, "push pass failed");
                false
            }
        };
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            last_prune = Some(tokio::time::Instant::now());
            let before = state.clock().now_ms().saturating_sub(retention_ms);
            match state.store().prune_push_jobs(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "finished push jobs pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning push jobs failed"),
            }
        }
        if more {
            continue;
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => {}
            () = state.push().wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{PushJobState, PushKind};

    fn job(attempts: i64, expires_at: Option<i64>) -> PushJob {
        PushJob {
            id: PushJobId::new(1),
            call_id: crate::store::CallId::new(1),
            channel: crate::domain::ChannelName::parse("ch_x").unwrap(),
            kind: PushKind::Call,
            uid: "42".into(),
            caller_uid: "alice".into(),
            extra_msg: Some("hi".into()),
            platform: "ios".into(),
            push_token: "ab".into(),
            voip: true,
            state: PushJobState::Sending,
            attempts,
            run_at: 0,
            expires_at,
            last_error: None,
            created_at: 0,
        }
    }

    fn retry(after_ms: Option<i64>) -> Delivery {
        Delivery::Retry {
            error: "APNs answered 503".into(),
            after_ms,
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_and_caps() {
        let v: Vec<i64> = (1..=6).map(backoff_ms).collect();
        assert_eq!(v, vec![1000, 2000, 4000, 8000, 16000, 32000]);
        assert_eq!(backoff_ms(0), 1000);
        assert_eq!(backoff_ms(30), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(i64::MAX), MAX_BACKOFF_MS);
    }

    #[test]
    fn failures_retry_with_backoff_until_the_last_attempt_then_die_keeping_the_error() {
        assert_eq!(
            decide(&job(1, None), retry(None), 10_000, 5),
            PushResult::Retry {
                at_ms: 11_000,
                error: "APNs answered 503".into()
            }
        );
        assert_eq!(
            decide(&job(3, None), retry(None), 10_000, 5),
            PushResult::Retry {
                at_ms: 14_000,
                error: "APNs answered 503".into()
            }
        );
        match decide(&job(5, None), retry(None), 10_000, 5) {
            PushResult::Dead { error } => {
                assert!(error.contains("APNs answered 503"), "{error}");
                assert!(error.contains("5 attempts"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let at = |after| match decide(&job(1, None), retry(Some(after)), 0, 5) {
            PushResult::Retry { at_ms, .. } => at_ms,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(30_000), 30_000);
        assert_eq!(at(10), 1000);
        assert_eq!(at(i64::MAX), MAX_BACKOFF_MS);
    }

    #[test]
    fn a_retry_past_expiry_is_dead_at_once() {
        assert!(matches!(
            decide(&job(1, Some(10_500)), retry(None), 10_000, 5),
            PushResult::Dead { .. }
        ));
    }

    #[test]
    fn other_outcomes() {
        assert_eq!(
            decide(&job(1, None), Delivery::Delivered, 0, 5),
            PushResult::Sent
        );
        assert!(matches!(
            decide(&job(1, None), Delivery::Refused { error: "x".into() }, 0, 5),
            PushResult::Dead { .. }
        ));
        assert!(matches!(
            decide(
                &job(1, None),
                Delivery::InvalidToken { error: "x".into() },
                0,
                5
            ),
            PushResult::Dropped { .. }
        ));
        assert!(matches!(
            decide(&job(1, None), Delivery::Expired, 0, 5),
            PushResult::Dropped { .. }
        ));
    }

    #[test]
    fn routes_and_payload() {
        assert_eq!(route("ios", true), Route::Apns);
        assert_eq!(route("ios", false), Route::Webhook);
        assert_eq!(route("android", true), Route::Webhook);
        assert_eq!(route("web", false), Route::Webhook);
        assert_eq!(
            payload(&job(1, None)),
            json!({"type": "call", "channel": "ch_x", "src_uid": "alice", "uid": 42, "extra_msg": "hi"})
        );
    }
}
