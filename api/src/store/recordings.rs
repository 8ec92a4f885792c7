//! Voicemail recordings, robot options and the robot-control bus: the SQL of issue 14's
//! API side (docs/recordings.md, docs/robot-control.md).
//!
//! ```text
//!  PUT /agent/recordings/{session}/{uid}?part=N ──> put_recording (one transaction):
//!      none stored ─────────────> insert                      ┐ first complete upload:
//!      stored, shorter, open ───> replace (longest so far)    ├─ timeline recording_ready
//!      stored, longer or same ──> kept (idempotent)           ┘  + push_jobs(recording_ready)
//!      stored and complete ─────> kept if identical, else Conflict
//!  sweeper ──> prune_recordings (retention)
//!  POST /dapi/robot/control ──> NOTIFY dapi_robot_control / dapi_robot_control_ack (PostgreSQL)
//! ```

use serde::Serialize;

use super::calls::Line;
use super::db::{self, Stmt};
use super::{CallId, PgStore, RecordingId, SessionId, Store, StoreError, StoreResult};
use crate::domain::ChannelName;

/// A stored recording (without its content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordingRecord {
    /// Id.
    pub id: RecordingId,
    /// The call.
    pub call_id: CallId,
    /// Its channel.
    pub channel: ChannelName,
    /// The robot session that recorded it.
    pub session_id: SessionId,
    /// Whose voice.
    pub uid: String,
    /// Part number (a re-dispatched session records into a new part).
    pub part: i64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: i64,
    /// Duration from the last granule position, ms.
    pub duration_ms: i64,
    /// The agent said it is finished (the file ends with an end-of-stream page).
    pub complete: bool,
    /// When the recording started, unix ms (first upload time minus its duration).
    pub started_at_ms: i64,
    /// First upload, unix ms.
    pub created_at_ms: i64,
    /// Last change, unix ms.
    pub updated_at_ms: i64,
}

/// The columns of a recording row, in the order [`RecordingRecord`] reads them.
type RecordingRow = (
    i64,
    i64,
    String,
    i64,
    String,
    i64,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
);

impl TryFrom<RecordingRow> for RecordingRecord {
    type Error = StoreError;
    fn try_from(r: RecordingRow) -> StoreResult<Self> {
        Ok(Self {
            id: RecordingId::new(r.0),
            call_id: CallId::new(r.1),
            channel: db::channel("recordings", r.2)?,
            session_id: SessionId::new(r.3),
            uid: r.4,
            part: r.5,
            sha256: r.6,
            bytes: r.7,
            duration_ms: r.8,
            complete: r.9 != 0,
            started_at_ms: r.10,
            created_at_ms: r.11,
            updated_at_ms: r.12,
        })
    }
}

/// An upload to store.
#[derive(Debug, Clone)]
pub struct NewRecording {
    /// The call of the session.
    pub call_id: CallId,
    /// Its channel.
    pub channel: ChannelName,
    /// The robot session.
    pub session_id: SessionId,
    /// Whose voice.
    pub uid: String,
    /// Part number.
    pub part: i64,
    /// The Ogg Opus file so far.
    pub content: Vec<u8>,
    /// SHA-256 of `content`, hex.
    pub sha256: String,
    /// Duration, ms.
    pub duration_ms: i64,
    /// The last upload of this part.
    pub complete: bool,
    /// Upload time, unix ms.
    pub now_ms: i64,
    /// A `recording_ready` push stays worth delivering until this, unix ms.
    pub push_expires_ms: i64,
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRecordingOutcome {
    /// The recording as stored now.
    pub record: RecordingRecord,
    /// The upload was stored (new, or longer than what was stored).
    pub stored: bool,
    /// This upload completed the recording: `recording_ready` was written on the timeline
    /// and pushes to the callees were queued.
    pub ready: bool,
}

mod sql {
    use super::Stmt;

    pub const LOCK_RECORDING: Stmt = Stmt::each(
        "SELECT id, call_id, channel, session_id, uid, part, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at \
         FROM recordings WHERE session_id = $1 AND uid = $2 AND part = $3",
        "SELECT id, call_id, channel, session_id, uid, part, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at \
         FROM recordings WHERE session_id = $1 AND uid = $2 AND part = $3 FOR UPDATE",
    );
    pub const INSERT_RECORDING: Stmt = Stmt::both(
        "INSERT INTO recordings (call_id, channel, session_id, uid, part, content, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
         RETURNING id, call_id, channel, session_id, uid, part, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at",
    );
    pub const REPLACE_RECORDING: Stmt = Stmt::both(
        "UPDATE recordings SET content = $2, sha256 = $3, bytes = $4, duration_ms = $5, complete = $6, updated_at = $7 \
         WHERE id = $1 \
         RETURNING id, call_id, channel, session_id, uid, part, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at",
    );
    pub const LIST_RECORDINGS: Stmt = Stmt::both(
        "SELECT id, call_id, channel, session_id, uid, part, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at \
         FROM recordings WHERE channel = $1 ORDER BY id",
    );
    pub const GET_RECORDING: Stmt = Stmt::both(
        "SELECT id, call_id, channel, session_id, uid, part, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at \
         FROM recordings WHERE id = $1",
    );
    pub const GET_RECORDING_CONTENT: Stmt =
        Stmt::both("SELECT content FROM recordings WHERE id = $1");
    pub const ANY_EXPIRED_RECORDING: Stmt =
        Stmt::both("SELECT id FROM recordings WHERE updated_at < $1 LIMIT 1");
    pub const PRUNE_RECORDINGS: Stmt = Stmt::both("DELETE FROM recordings WHERE updated_at < $1");
    /// One `recording_ready` push per callee device (not to the recorded uid); the
    /// outbox's unique key (call, kind, device) keeps it to one per call and device.
    pub const ENQUEUE_RECORDING_PUSHES: Stmt = Stmt::both(
        "INSERT INTO push_jobs (call_id, channel, kind, uid, caller_uid, extra_msg, platform, push_token, voip, state, attempts, run_at, expires_at, created_at, updated_at) \
         SELECT c.id, c.channel, 'recording_ready', d.uid, c.caller_uid, c.extra_msg, d.platform, d.push_token, d.voip, 'queued', 0, $2, $3, $2, $2 \
         FROM calls c JOIN call_members m ON m.call_id = c.id JOIN push_devices d ON d.uid = m.uid \
         WHERE c.id = $1 AND m.role = 'callee' AND m.uid <> $4 ORDER BY m.id, d.id ON CONFLICT DO NOTHING",
    );
}

impl Store {
    /// Stores an upload of a recording part (idempotent replace keeping the longest; a
    /// complete part no longer changes). The first complete upload writes
    /// `recording_ready` on the timeline and queues pushes to the callees, in the same
    /// transaction.
    pub async fn put_recording(&self, r: &NewRecording) -> StoreResult<PutRecordingOutcome> {
        self.retrying("put_recording", move || async move {
            let mut tx = self.begin_write().await?;
            let existing: Option<RecordingRow> = sql::LOCK_RECORDING
                .bind(r.session_id)
                .bind(&r.uid)
                .bind(r.part)
                .fetch_optional(&mut tx)
                .await?;
            let bytes = i64::try_from(r.content.len()).unwrap_or(i64::MAX);
            let existing = existing.map(RecordingRecord::try_from).transpose()?;
            let (row, stored, ready): (RecordingRow, bool, bool) = match existing {
                None => {
                    let inserted = sql::INSERT_RECORDING
                        .bind(r.call_id)
                        .bind(&r.channel)
                        .bind(r.session_id)
                        .bind(&r.uid)
                        .bind(r.part)
                        .bind(r.content.as_slice())
                        .bind(&r.sha256)
                        .bind(bytes)
                        .bind(r.duration_ms)
                        .bind(i64::from(r.complete))
                        .bind(r.now_ms - r.duration_ms)
                        .bind(r.now_ms)
                        .fetch_one(&mut tx)
                        .await;
                    let row = match inserted {
                        Ok(row) => row,
                        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                            return Err(StoreError::Conflict(format!(
                                "part {} of {} was uploaded concurrently; retry",
                                r.part, r.uid
                            )));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    (row, true, r.complete)
                }
                Some(old) if old.complete => {
                    if old.sha256 != r.sha256 {
                        return Err(StoreError::Conflict(format!(
                            "part {} of {} in session {} is complete and cannot change",
                            r.part, r.uid, r.session_id
                        )));
                    }
                    tx.commit().await?;
                    return Ok(PutRecordingOutcome {
                        record: old,
                        stored: false,
                        ready: false,
                    });
                }
                Some(old) if old.bytes > bytes || (old.bytes == bytes && !r.complete) => {
                    // An older (shorter) upload arriving late, or the same one again.
                    tx.commit().await?;
                    return Ok(PutRecordingOutcome {
                        record: old,
                        stored: false,
                        ready: false,
                    });
                }
                Some(old) => {
                    let row = sql::REPLACE_RECORDING
                        .bind(old.id)
                        .bind(r.content.as_slice())
                        .bind(&r.sha256)
                        .bind(bytes)
                        .bind(r.duration_ms)
                        .bind(i64::from(r.complete))
                        .bind(r.now_ms)
                        .fetch_one(&mut tx)
                        .await?;
                    (row, true, r.complete)
                }
            };
            let record = RecordingRecord::try_from(row)?;
            if ready {
                let detail = format!(
                    "recording {}: {} ms, {} bytes, part {}",
                    record.id, record.duration_ms, record.bytes, record.part
                );
                let line = Line::server(
                    record.call_id,
                    &record.uid,
                    "recording_ready",
                    Some(&detail),
                    "applied",
                    r.now_ms,
                );
                Self::record(&mut tx, line).await?;
                sql::ENQUEUE_RECORDING_PUSHES
                    .bind(record.call_id)
                    .bind(r.now_ms)
                    .bind(r.push_expires_ms)
                    .bind(&record.uid)
                    .execute(&mut tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(PutRecordingOutcome {
                record,
                stored,
                ready,
            })
        })
        .await
    }

    /// Recordings of a channel's call, oldest first.
    pub async fn list_recordings(
        &self,
        channel: &ChannelName,
    ) -> StoreResult<Vec<RecordingRecord>> {
        let rows: Vec<RecordingRow> = sql::LIST_RECORDINGS
            .bind(channel)
            .fetch_all(self.reader())
            .await?;
        rows.into_iter().map(RecordingRecord::try_from).collect()
    }

    /// One recording, with its content when `with_content`.
    pub async fn recording(
        &self,
        id: RecordingId,
        with_content: bool,
    ) -> StoreResult<Option<(RecordingRecord, Vec<u8>)>> {
        let row: Option<RecordingRow> = sql::GET_RECORDING
            .bind(id)
            .fetch_optional(self.reader())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let content: Vec<u8> = if with_content {
            sql::GET_RECORDING_CONTENT
                .bind(id)
                .scalar_optional(self.reader())
                .await?
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Some((RecordingRecord::try_from(row)?, content)))
    }

    /// Deletes recordings last changed before `before_ms` (retention).
    pub async fn prune_recordings(&self, before_ms: i64) -> StoreResult<u64> {
        // Every sweep asks (twice a second by default): look on a reader first, so that a
        // pass with nothing to delete takes no write lock.
        let due: Option<i64> = sql::ANY_EXPIRED_RECORDING
            .bind(before_ms)
            .scalar_optional(self.reader())
            .await?;
        if due.is_none() {
            return Ok(0);
        }
        self.write_one("prune_recordings", sql::PRUNE_RECORDINGS.bind(before_ms))
            .await
    }

    /// Writes one entry on a call's timeline (robot controls, marks).
    #[allow(clippy::too_many_arguments)]
    pub async fn robot_event(
        &self,
        call_id: CallId,
        uid: Option<&str>,
        kind: &str,
        detail: Option<&str>,
        source: &str,
        effect: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        self.retrying("robot_event", move || async move {
            let mut tx = self.begin_write().await?;
            let line = Line {
                call_id,
                uid,
                kind,
                code: None,
                detail,
                source,
                effect,
                now_ms,
            };
            Self::record(&mut tx, line).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Relays a control notification to the other instances (PostgreSQL); false on
    /// SQLite, where one process owns the database and so every agent link.
    pub async fn notify_control(&self, channel: &str, payload: &str) -> StoreResult<bool> {
        match self {
            Store::Sqlite(_) => Ok(false),
            Store::Postgres(s) => s.notify_control(channel, payload).await.map(|()| true),
        }
    }
}

/// PostgreSQL channel of relayed controls (payload: JSON, see `control_relay`).
pub const CONTROL_CHANNEL: &str = "dapi_robot_control";
/// PostgreSQL channel of relayed control answers.
pub const CONTROL_ACK_CHANNEL: &str = "dapi_robot_control_ack";

impl PgStore {
    /// `NOTIFY` on one of the control channels.
    pub async fn notify_control(&self, channel: &str, payload: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Listens on both control channels and hands each notification (channel, payload)
    /// to `on`; returns on error.
    pub async fn listen_control(&self, on: &(dyn Fn(&str, &str) + Send + Sync)) -> StoreResult<()> {
        let mut listener = sqlx::postgres::PgListener::connect_with(self.pool()).await?;
        listener
            .listen_all([CONTROL_CHANNEL, CONTROL_ACK_CHANNEL])
            .await?;
        loop {
            if let Some(n) = listener.try_recv().await? {
                on(n.channel(), n.payload());
            }
        }
    }
}
