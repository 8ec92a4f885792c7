//! Push devices and the push outbox: explicit job states, one store method per
//! transition (`docs/push.md` describes them).
//!
//! ```text
//!   enqueue (in the call's          claim (CAS, SKIP LOCKED)          finish (CAS on attempts)
//!   transaction) ---------> queued ------------------------> sending ---> sent
//!                              ^                               |  |  +--> dead    (attempts used up,
//!                              +------ retry at run_at --------+  |                refused for good)
//!                              +------ lease (run_at) lapsed -----+  +--> dropped (token invalid,
//!                                                                         unregistered, call over,
//!                                                                         expired, no provider)
//! ```
//!
//! A `call` job is written with the call (one per callee device). When a call ends
//! before a callee answered, [`Transition::cancel_push`](crate::call_state::Transition)
//! writes `cancel` jobs in the same transaction, but only for devices whose `call` push
//! was sent or is in flight; `call` jobs not yet sent are dropped instead, so a phone
//! never rings for a call that is already over.

use serde::Serialize;

use crate::push::device::{Platform, PushToken};

/// A device to register.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Whose device.
    pub uid: crate::domain::Uid,
    /// Where its pushes go.
    pub platform: Platform,
    /// Its push token.
    pub push_token: PushToken,
    /// Whether the token is a PushKit (VoIP) token.
    pub voip: bool,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRecord {
    /// Row id.
    pub id: i64,
    /// Whose device.
    pub uid: String,
    /// `ios`, `android` or `web`.
    pub platform: String,
    /// The push token (never log it whole).
    #[serde(skip)]
    pub push_token: String,
    /// A PushKit (VoIP) token.
    pub voip: bool,
    /// First registration, unix ms.
    pub created_at_ms: i64,
    /// Last registration, unix ms.
    pub updated_at_ms: i64,
}

/// What a push tells the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PushKind {
    /// A call is ringing: show it.
    Call,
    /// The call ended before it was answered: stop ringing.
    Cancel,
    /// A voicemail recording of the call is ready (`GET /dapi/call/recordings`).
    #[serde(rename = "recording_ready")]
    RecordingReady,
}

impl PushKind {
    /// Stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Cancel => "cancel",
            Self::RecordingReady => "recording_ready",
        }
    }
    /// From the stored form.
    pub fn parse(s: &str) -> Self {
        match s {
            "call" => Self::Call,
            "recording_ready" => Self::RecordingReady,
            _ => Self::Cancel,
        }
    }
}

/// A push job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PushJobState {
    /// Waiting for `run_at`.
    Queued,
    /// Claimed by a worker until `run_at` (the lease); due again after it.
    Sending,
    /// The provider accepted it (terminal).
    Sent,
    /// Every attempt failed, or the provider refused it for good (terminal).
    Dead,
    /// Not worth sending any more (terminal): invalid token, device unregistered, call
    /// over, expired, or no provider configured.
    Dropped,
}

impl PushJobState {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Dead => "dead",
            Self::Dropped => "dropped",
        }
    }
    /// From the stored form.
    pub fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "sending" => Self::Sending,
            "sent" => Self::Sent,
            "dropped" => Self::Dropped,
            _ => Self::Dead,
        }
    }
}

/// One push to one device, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJob {
    /// Id.
    pub id: i64,
    /// The call.
    pub call_id: i64,
    /// Its channel.
    pub channel: String,
    /// Ring or cancel.
    pub kind: PushKind,
    /// The callee whose device this is.
    pub uid: String,
    /// The caller.
    pub caller_uid: String,
    /// The caller's extra message.
    pub extra_msg: Option<String>,
    /// `ios`, `android` or `web`.
    pub platform: String,
    /// Where to send it (never log it whole).
    pub push_token: String,
    /// A PushKit (VoIP) token.
    pub voip: bool,
    /// State.
    pub state: PushJobState,
    /// Attempts started (claims).
    pub attempts: i64,
    /// Queued: not before. Sending: the lease ends.
    pub run_at: i64,
    /// Not worth delivering after this, unix ms.
    pub expires_at: Option<i64>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Enqueued, unix ms.
    pub created_at: i64,
}

/// The columns of a job row, in the order [`PushJob::from_row`] reads them.
pub(crate) type PushJobRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    i64,
);

impl PushJob {
    pub(crate) fn from_row(r: PushJobRow) -> Self {
        Self {
            id: r.0,
            call_id: r.1,
            channel: r.2,
            kind: PushKind::parse(&r.3),
            uid: r.4,
            caller_uid: r.5,
            extra_msg: r.6,
            platform: r.7,
            push_token: r.8,
            voip: r.9 != 0,
            state: PushJobState::parse(&r.10),
            attempts: r.11,
            run_at: r.12,
            expires_at: r.13,
            last_error: r.14,
            created_at: r.15,
        }
    }
}

/// How a claimed job ends its attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// sending -> sent.
    Sent,
    /// sending -> queued, due again at `at_ms`.
    Retry {
        /// When to try again, unix ms.
        at_ms: i64,
        /// What went wrong.
        error: String,
    },
    /// sending -> dead, keeping the error.
    Dead {
        /// What went wrong.
        error: String,
    },
    /// sending -> dropped, with the reason.
    Dropped {
        /// Why it is not sent.
        reason: String,
    },
}

/// How long a `cancel` push stays worth delivering, ms.
pub const CANCEL_TTL_MS: i64 = 5 * 60 * 1000;

/// The push methods, written once over each backend's `sql` module.
macro_rules! push_store_impl {
    ($store:ident, $db:ty) => {
        impl $store {
            fn device_from_row(
                (id, uid, platform, push_token, voip, created_at_ms, updated_at_ms): (
                    i64,
                    String,
                    String,
                    String,
                    i64,
                    i64,
                    i64,
                ),
            ) -> $crate::store::push::DeviceRecord {
                $crate::store::push::DeviceRecord {
                    id,
                    uid,
                    platform,
                    push_token,
                    voip: voip != 0,
                    created_at_ms,
                    updated_at_ms,
                }
            }

            /// See [`Store::register_device`].
            pub async fn register_device(
                &self,
                d: &$crate::store::push::NewDevice,
                max_per_uid: i64,
                now_ms: i64,
            ) -> $crate::store::StoreResult<$crate::store::push::DeviceRecord> {
                let mut tx = self.begin_write().await?;
                // A token that moves to another uid must not ring for its old owner.
                sqlx::query(sql::DROP_QUEUED_PUSHES_OF_OTHER_UIDS)
                    .bind(d.platform.as_str())
                    .bind(d.push_token.as_str())
                    .bind(d.uid.as_str())
                    .bind("device moved to another uid")
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                let row = sqlx::query_as(sql::UPSERT_DEVICE)
                    .bind(d.uid.as_str())
                    .bind(d.platform.as_str())
                    .bind(d.push_token.as_str())
                    .bind(i64::from(d.voip))
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await?;
                // Keep the newest `max_per_uid` devices of the uid.
                sqlx::query(sql::TRIM_DEVICES)
                    .bind(d.uid.as_str())
                    .bind(max_per_uid)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Self::device_from_row(row))
            }

            /// See [`Store::unregister_device`].
            pub async fn unregister_device(
                &self,
                uid: &$crate::domain::Uid,
                push_token: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(sql::DELETE_DEVICE_OF_UID)
                    .bind(uid.as_str())
                    .bind(push_token)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n > 0 {
                    sqlx::query(sql::DROP_QUEUED_PUSHES_OF_UID_TOKEN)
                        .bind(uid.as_str())
                        .bind(push_token)
                        .bind("device unregistered")
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(n > 0)
            }

            /// See [`Store::remove_push_token`].
            pub async fn remove_push_token(
                &self,
                platform: &str,
                push_token: &str,
                reason: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(sql::DELETE_DEVICE_TOKEN)
                    .bind(platform)
                    .bind(push_token)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(sql::DROP_QUEUED_PUSHES_OF_TOKEN)
                    .bind(platform)
                    .bind(push_token)
                    .bind(reason)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(n > 0)
            }

            /// See [`Store::devices`].
            pub async fn devices(
                &self,
                uid: &$crate::domain::Uid,
            ) -> $crate::store::StoreResult<Vec<$crate::store::push::DeviceRecord>> {
                let rows: Vec<_> = sqlx::query_as(sql::DEVICES_OF_UID)
                    .bind(uid.as_str())
                    .fetch_all(self.read_pool())
                    .await?;
                Ok(rows.into_iter().map(Self::device_from_row).collect())
            }

            /// Queues a `call` push for every device of every callee of `call_id`.
            async fn enqueue_call_pushes(
                tx: &mut sqlx::Transaction<'static, $db>,
                call_id: i64,
                now_ms: i64,
                expires_at: Option<i64>,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(sql::ENQUEUE_CALL_PUSHES)
                    .bind(call_id)
                    .bind(now_ms)
                    .bind(expires_at)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// The call ended before `uid` answered: a `cancel` push to each device whose
            /// `call` push was sent or is in flight; `call` pushes not sent yet are dropped.
            async fn enqueue_cancel_pushes(
                tx: &mut sqlx::Transaction<'static, $db>,
                call_id: i64,
                uid: &$crate::domain::Uid,
                now_ms: i64,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(sql::ENQUEUE_CANCEL_PUSHES)
                    .bind(call_id)
                    .bind(uid.as_str())
                    .bind(now_ms)
                    .bind(now_ms + $crate::store::push::CANCEL_TTL_MS)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query(sql::DROP_UNSENT_CALL_PUSHES)
                    .bind(call_id)
                    .bind(uid.as_str())
                    .bind("the call ended before the push was sent")
                    .bind(now_ms)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// See [`Store::claim_push_jobs`].
            pub async fn claim_push_jobs(
                &self,
                now_ms: i64,
                lease_until_ms: i64,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::push::PushJob>> {
                let mut tx = self.begin_write().await?;
                let rows: Vec<$crate::store::push::PushJobRow> =
                    sqlx::query_as(sql::CLAIM_PUSH_JOBS)
                        .bind(now_ms)
                        .bind(lease_until_ms)
                        .bind(limit)
                        .fetch_all(&mut *tx)
                        .await?;
                tx.commit().await?;
                let mut jobs: Vec<_> = rows
                    .into_iter()
                    .map($crate::store::push::PushJob::from_row)
                    .collect();
                jobs.sort_by_key(|j| j.id);
                Ok(jobs)
            }

            /// See [`Store::finish_push_job`].
            pub async fn finish_push_job(
                &self,
                id: i64,
                attempts: i64,
                result: &$crate::store::push::PushResult,
                now_ms: i64,
            ) -> $crate::store::StoreResult<bool> {
                use $crate::store::push::{PushJobState, PushResult};
                let (state, run_at, error) = match result {
                    PushResult::Sent => (PushJobState::Sent, None, None),
                    PushResult::Retry { at_ms, error } => {
                        (PushJobState::Queued, Some(*at_ms), Some(error.as_str()))
                    }
                    PushResult::Dead { error } => (PushJobState::Dead, None, Some(error.as_str())),
                    PushResult::Dropped { reason } => {
                        (PushJobState::Dropped, None, Some(reason.as_str()))
                    }
                };
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(sql::FINISH_PUSH_JOB)
                    .bind(id)
                    .bind(attempts)
                    .bind(state.as_str())
                    .bind(run_at)
                    .bind(error)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(n == 1)
            }

            /// See [`Store::push_jobs`].
            pub async fn push_jobs(
                &self,
                channel: &str,
            ) -> $crate::store::StoreResult<Vec<$crate::store::push::PushJob>> {
                let rows: Vec<$crate::store::push::PushJobRow> =
                    sqlx::query_as(sql::PUSH_JOBS_OF_CHANNEL)
                        .bind(channel)
                        .fetch_all(self.read_pool())
                        .await?;
                Ok(rows
                    .into_iter()
                    .map($crate::store::push::PushJob::from_row)
                    .collect())
            }

            /// See [`Store::prune_push_jobs`].
            pub async fn prune_push_jobs(&self, before_ms: i64) -> $crate::store::StoreResult<u64> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(sql::PRUNE_PUSH_JOBS)
                    .bind(before_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(n)
            }
        }
    };
}

pub(crate) use push_store_impl;
