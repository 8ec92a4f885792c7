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

use super::db::{self, Stmt, Tx};
use super::{CallId, PushJobId, Store, StoreError, StoreResult};
use crate::device::{Platform, PushToken};
use crate::domain::{ChannelName, Uid};

/// A device to register.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Whose device.
    pub uid: Uid,
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
    /// From the stored form; `None` for anything the store never writes.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Call, Self::Cancel, Self::RecordingReady]
            .into_iter()
            .find(|k| k.as_str() == s)
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
    /// From the stored form; `None` for anything the store never writes.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Sending,
            Self::Sent,
            Self::Dead,
            Self::Dropped,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// One push to one device, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJob {
    /// Id.
    pub id: PushJobId,
    /// The call.
    pub call_id: CallId,
    /// Its channel.
    pub channel: ChannelName,
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

/// The columns of a job row, in the order [`PushJob`] reads them.
type PushJobRow = (
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

impl TryFrom<PushJobRow> for PushJob {
    type Error = StoreError;
    fn try_from(r: PushJobRow) -> StoreResult<Self> {
        Ok(Self {
            id: PushJobId::new(r.0),
            call_id: CallId::new(r.1),
            channel: db::channel("push_jobs", r.2)?,
            kind: PushKind::parse(&r.3).ok_or_else(|| db::corrupt("push_jobs", "kind", &r.3))?,
            uid: r.4,
            caller_uid: r.5,
            extra_msg: r.6,
            platform: r.7,
            push_token: r.8,
            voip: r.9 != 0,
            state: PushJobState::parse(&r.10)
                .ok_or_else(|| db::corrupt("push_jobs", "state", &r.10))?,
            attempts: r.11,
            run_at: r.12,
            expires_at: r.13,
            last_error: r.14,
            created_at: r.15,
        })
    }
}

fn decode(rows: Vec<PushJobRow>) -> StoreResult<Vec<PushJob>> {
    rows.into_iter().map(PushJob::try_from).collect()
}

/// The columns of a device row, in the order [`DeviceRecord`] reads them.
type DeviceRow = (i64, String, String, String, i64, i64, i64);

impl From<DeviceRow> for DeviceRecord {
    fn from(
        (id, uid, platform, push_token, voip, created_at_ms, updated_at_ms): DeviceRow,
    ) -> Self {
        Self {
            id,
            uid,
            platform,
            push_token,
            voip: voip != 0,
            created_at_ms,
            updated_at_ms,
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

mod sql {
    use super::Stmt;

    pub const UPSERT_DEVICE: Stmt = Stmt::both(
        "INSERT INTO push_devices (uid, platform, push_token, voip, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (platform, push_token) DO UPDATE \
         SET uid = excluded.uid, voip = excluded.voip, updated_at = excluded.updated_at \
         RETURNING id, uid, platform, push_token, voip, created_at, updated_at",
    );
    pub const TRIM_DEVICES: Stmt = Stmt::both(
        "DELETE FROM push_devices WHERE uid = $1 AND id NOT IN \
         (SELECT id FROM push_devices WHERE uid = $1 ORDER BY updated_at DESC, id DESC LIMIT $2)",
    );
    pub const DEVICES_OF_UID: Stmt = Stmt::both(
        "SELECT id, uid, platform, push_token, voip, created_at, updated_at \
         FROM push_devices WHERE uid = $1 ORDER BY id",
    );
    pub const DELETE_DEVICE_OF_UID: Stmt =
        Stmt::both("DELETE FROM push_devices WHERE uid = $1 AND push_token = $2");
    pub const DELETE_DEVICE_TOKEN: Stmt =
        Stmt::both("DELETE FROM push_devices WHERE platform = $1 AND push_token = $2");
    pub const DROP_QUEUED_PUSHES_OF_OTHER_UIDS: Stmt = Stmt::both(
        "UPDATE push_jobs SET state = 'dropped', last_error = $4, updated_at = $5 \
         WHERE platform = $1 AND push_token = $2 AND uid <> $3 AND state = 'queued'",
    );
    pub const DROP_QUEUED_PUSHES_OF_UID_TOKEN: Stmt = Stmt::both(
        "UPDATE push_jobs SET state = 'dropped', last_error = $3, updated_at = $4 \
         WHERE uid = $1 AND push_token = $2 AND state = 'queued'",
    );
    pub const DROP_QUEUED_PUSHES_OF_TOKEN: Stmt = Stmt::both(
        "UPDATE push_jobs SET state = 'dropped', last_error = $3, updated_at = $4 \
         WHERE platform = $1 AND push_token = $2 AND state = 'queued'",
    );
    pub const ENQUEUE_CALL_PUSHES: Stmt = Stmt::both(
        "INSERT INTO push_jobs (call_id, channel, kind, uid, caller_uid, extra_msg, platform, push_token, voip, state, attempts, run_at, expires_at, created_at, updated_at) \
         SELECT c.id, c.channel, 'call', d.uid, c.caller_uid, c.extra_msg, d.platform, d.push_token, d.voip, 'queued', 0, $2, $3, $2, $2 \
         FROM calls c JOIN call_members m ON m.call_id = c.id JOIN push_devices d ON d.uid = m.uid \
         WHERE c.id = $1 AND m.role = 'callee' ORDER BY m.id, d.id ON CONFLICT DO NOTHING",
    );
    pub const ENQUEUE_CANCEL_PUSHES: Stmt = Stmt::both(
        "INSERT INTO push_jobs (call_id, channel, kind, uid, caller_uid, extra_msg, platform, push_token, voip, state, attempts, run_at, expires_at, created_at, updated_at) \
         SELECT j.call_id, j.channel, 'cancel', j.uid, j.caller_uid, j.extra_msg, j.platform, j.push_token, j.voip, 'queued', 0, $3, $4, $3, $3 \
         FROM push_jobs j WHERE j.call_id = $1 AND j.uid = $2 AND j.kind = 'call' AND j.state IN ('sending', 'sent') \
         AND EXISTS (SELECT 1 FROM push_devices d WHERE d.platform = j.platform AND d.push_token = j.push_token AND d.uid = j.uid) \
         ORDER BY j.id ON CONFLICT DO NOTHING",
    );
    pub const DROP_UNSENT_CALL_PUSHES: Stmt = Stmt::both(
        "UPDATE push_jobs SET state = 'dropped', last_error = $3, updated_at = $4 \
         WHERE call_id = $1 AND uid = $2 AND kind = 'call' AND state IN ('queued', 'sending')",
    );
    // PostgreSQL: a CTE, because `id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)` may
    // re-run the subquery per row and claim more than n.
    pub const CLAIM_PUSH_JOBS: Stmt = Stmt::each(
        "UPDATE push_jobs SET state = 'sending', attempts = attempts + 1, run_at = $2, updated_at = $1 \
         WHERE id IN (SELECT id FROM push_jobs WHERE state IN ('queued', 'sending') AND run_at <= $1 \
         ORDER BY run_at, id LIMIT $3) AND state IN ('queued', 'sending') AND run_at <= $1 \
         RETURNING id, call_id, channel, kind, uid, caller_uid, extra_msg, platform, push_token, voip, state, attempts, run_at, expires_at, last_error, created_at",
        "WITH due AS (SELECT id FROM push_jobs \
         WHERE state IN ('queued', 'sending') AND run_at <= $1 ORDER BY run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE push_jobs j SET state = 'sending', attempts = j.attempts + 1, run_at = $2, updated_at = $1 \
         FROM due WHERE j.id = due.id \
         RETURNING j.id, j.call_id, j.channel, j.kind, j.uid, j.caller_uid, j.extra_msg, j.platform, j.push_token, j.voip, j.state, j.attempts, j.run_at, j.expires_at, j.last_error, j.created_at",
    );
    pub const FINISH_PUSH_JOB: Stmt = Stmt::each(
        "UPDATE push_jobs SET state = $3, run_at = COALESCE($4, run_at), \
         last_error = COALESCE($5, last_error), updated_at = $6 \
         WHERE id = $1 AND attempts = $2 AND state = 'sending'",
        "UPDATE push_jobs SET state = $3, run_at = COALESCE($4::BIGINT, run_at), \
         last_error = COALESCE($5::TEXT, last_error), updated_at = $6 \
         WHERE id = $1 AND attempts = $2 AND state = 'sending'",
    );
    pub const PUSH_JOBS_OF_CHANNEL: Stmt = Stmt::both(
        "SELECT id, call_id, channel, kind, uid, caller_uid, extra_msg, platform, push_token, voip, state, attempts, run_at, expires_at, last_error, created_at \
         FROM push_jobs WHERE call_id = (SELECT id FROM calls WHERE channel = $1) ORDER BY id",
    );
    pub const PRUNE_PUSH_JOBS: Stmt = Stmt::both(
        "DELETE FROM push_jobs WHERE state IN ('sent', 'dead', 'dropped') AND updated_at < $1",
    );
}

impl Store {
    /// Registers a device (upsert on platform and token: a token that moves to another
    /// uid moves, and queued pushes for its old uid are dropped); keeps the newest
    /// `max_per_uid` devices of the uid.
    pub async fn register_device(
        &self,
        d: &NewDevice,
        max_per_uid: i64,
        now_ms: i64,
    ) -> StoreResult<DeviceRecord> {
        self.retrying("register_device", move || async move {
            let mut tx = self.begin_write().await?;
            // A token that moves to another uid must not ring for its old owner.
            sql::DROP_QUEUED_PUSHES_OF_OTHER_UIDS
                .bind(d.platform.as_str())
                .bind(d.push_token.as_str())
                .bind(&d.uid)
                .bind("device moved to another uid")
                .bind(now_ms)
                .execute(&mut tx)
                .await?;
            let row: DeviceRow = sql::UPSERT_DEVICE
                .bind(&d.uid)
                .bind(d.platform.as_str())
                .bind(d.push_token.as_str())
                .bind(i64::from(d.voip))
                .bind(now_ms)
                .fetch_one(&mut tx)
                .await?;
            // Keep the newest `max_per_uid` devices of the uid.
            sql::TRIM_DEVICES
                .bind(&d.uid)
                .bind(max_per_uid)
                .execute(&mut tx)
                .await?;
            tx.commit().await?;
            Ok(DeviceRecord::from(row))
        })
        .await
    }

    /// Removes `uid`'s device with `push_token` and drops its queued pushes; false when
    /// there was none.
    pub async fn unregister_device(
        &self,
        uid: &Uid,
        push_token: &str,
        now_ms: i64,
    ) -> StoreResult<bool> {
        self.retrying("unregister_device", move || async move {
            let mut tx = self.begin_write().await?;
            let n = sql::DELETE_DEVICE_OF_UID
                .bind(uid)
                .bind(push_token)
                .execute(&mut tx)
                .await?;
            if n > 0 {
                sql::DROP_QUEUED_PUSHES_OF_UID_TOKEN
                    .bind(uid)
                    .bind(push_token)
                    .bind("device unregistered")
                    .bind(now_ms)
                    .execute(&mut tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(n > 0)
        })
        .await
    }

    /// Removes a token the provider called invalid (whatever its uid) and drops its
    /// queued pushes with `reason`.
    pub async fn remove_push_token(
        &self,
        platform: &str,
        push_token: &str,
        reason: &str,
        now_ms: i64,
    ) -> StoreResult<bool> {
        self.retrying("remove_push_token", move || async move {
            let mut tx = self.begin_write().await?;
            let n = sql::DELETE_DEVICE_TOKEN
                .bind(platform)
                .bind(push_token)
                .execute(&mut tx)
                .await?;
            sql::DROP_QUEUED_PUSHES_OF_TOKEN
                .bind(platform)
                .bind(push_token)
                .bind(reason)
                .bind(now_ms)
                .execute(&mut tx)
                .await?;
            tx.commit().await?;
            Ok(n > 0)
        })
        .await
    }

    /// The devices of `uid`, oldest first.
    pub async fn devices(&self, uid: &Uid) -> StoreResult<Vec<DeviceRecord>> {
        let rows: Vec<DeviceRow> = sql::DEVICES_OF_UID
            .bind(uid)
            .fetch_all(self.reader())
            .await?;
        Ok(rows.into_iter().map(DeviceRecord::from).collect())
    }

    /// Queues a `call` push for every device of every callee of `call_id` inside `tx`.
    pub(crate) async fn enqueue_call_pushes(
        tx: &mut Tx,
        call_id: CallId,
        now_ms: i64,
        expires_at: Option<i64>,
    ) -> StoreResult<()> {
        sql::ENQUEUE_CALL_PUSHES
            .bind(call_id)
            .bind(now_ms)
            .bind(expires_at)
            .execute(tx)
            .await?;
        Ok(())
    }

    /// The call ended before `uid` answered: a `cancel` push to each device whose `call`
    /// push was sent or is in flight; `call` pushes not sent yet are dropped.
    pub(crate) async fn enqueue_cancel_pushes(
        tx: &mut Tx,
        call_id: CallId,
        uid: &Uid,
        now_ms: i64,
    ) -> StoreResult<()> {
        sql::ENQUEUE_CANCEL_PUSHES
            .bind(call_id)
            .bind(uid)
            .bind(now_ms)
            .bind(now_ms + CANCEL_TTL_MS)
            .execute(&mut *tx)
            .await?;
        sql::DROP_UNSENT_CALL_PUSHES
            .bind(call_id)
            .bind(uid)
            .bind("the call ended before the push was sent")
            .bind(now_ms)
            .execute(tx)
            .await?;
        Ok(())
    }

    /// Claims up to `limit` due push jobs (queued, or sending with a lapsed lease):
    /// -> sending until `lease_until_ms`, one more attempt. Compare-and-set (SKIP LOCKED
    /// on PostgreSQL): two workers never hold the same job.
    pub async fn claim_push_jobs(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<PushJob>> {
        self.retrying("claim_push_jobs", move || async move {
            let mut tx = self.begin_write().await?;
            let rows: Vec<PushJobRow> = sql::CLAIM_PUSH_JOBS
                .bind(now_ms)
                .bind(lease_until_ms)
                .bind(limit)
                .fetch_all(&mut tx)
                .await?;
            tx.commit().await?;
            let mut jobs = decode(rows)?;
            jobs.sort_by_key(|j| j.id);
            Ok(jobs)
        })
        .await
    }

    /// Ends the attempt `attempts` of a claimed job; false when the job is no longer
    /// that claim (its lease lapsed and another worker took it, or the call ended).
    pub async fn finish_push_job(
        &self,
        id: PushJobId,
        attempts: i64,
        result: &PushResult,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let (state, run_at, error) = match result {
            PushResult::Sent => (PushJobState::Sent, None, None),
            PushResult::Retry { at_ms, error } => {
                (PushJobState::Queued, Some(*at_ms), Some(error.as_str()))
            }
            PushResult::Dead { error } => (PushJobState::Dead, None, Some(error.as_str())),
            PushResult::Dropped { reason } => (PushJobState::Dropped, None, Some(reason.as_str())),
        };
        let q = sql::FINISH_PUSH_JOB
            .bind(id)
            .bind(attempts)
            .bind(state.as_str())
            .bind(run_at)
            .bind(error)
            .bind(now_ms);
        Ok(self.write_one("finish_push_job", q).await? == 1)
    }

    /// The push jobs of a channel's call, in order.
    pub async fn push_jobs(&self, channel: &ChannelName) -> StoreResult<Vec<PushJob>> {
        let rows: Vec<PushJobRow> = sql::PUSH_JOBS_OF_CHANNEL
            .bind(channel)
            .fetch_all(self.reader())
            .await?;
        decode(rows)
    }

    /// Deletes finished (sent, dead, dropped) push jobs last changed before `before_ms`.
    pub async fn prune_push_jobs(&self, before_ms: i64) -> StoreResult<u64> {
        self.write_one("prune_push_jobs", sql::PRUNE_PUSH_JOBS.bind(before_ms))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_rows_with_unknown_kinds_or_states_are_corrupt() {
        let row = |kind: &str, state: &str| -> PushJobRow {
            (
                1,
                1,
                "ch".into(),
                kind.into(),
                "b".into(),
                "a".into(),
                None,
                "ios".into(),
                "ab".into(),
                1,
                state.into(),
                0,
                0,
                None,
                None,
                0,
            )
        };
        let job = PushJob::try_from(row("recording_ready", "sending")).unwrap();
        assert_eq!(
            (job.kind, job.state),
            (PushKind::RecordingReady, PushJobState::Sending)
        );
        for (kind, state, column) in [("ring", "queued", "kind"), ("call", "lost", "state")] {
            match PushJob::try_from(row(kind, state)) {
                Err(StoreError::Corrupt {
                    table: "push_jobs",
                    column: c,
                    ..
                }) => assert_eq!(c, column),
                other => panic!("{other:?}"),
            }
        }
    }
}
