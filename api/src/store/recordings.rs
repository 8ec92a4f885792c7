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

use super::{PgStore, Store, StoreResult};

/// A stored recording (without its content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordingRecord {
    /// Id.
    pub id: i64,
    /// The call.
    pub call_id: i64,
    /// Its channel.
    pub channel: String,
    /// The robot session that recorded it.
    pub session_id: i64,
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

/// The columns of a recording row, in the order [`RecordingRecord::from_row`] reads them.
pub(crate) type RecordingRow = (
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

impl RecordingRecord {
    pub(crate) fn from_row(r: RecordingRow) -> Self {
        Self {
            id: r.0,
            call_id: r.1,
            channel: r.2,
            session_id: r.3,
            uid: r.4,
            part: r.5,
            sha256: r.6,
            bytes: r.7,
            duration_ms: r.8,
            complete: r.9 != 0,
            started_at_ms: r.10,
            created_at_ms: r.11,
            updated_at_ms: r.12,
        }
    }
}

/// An upload to store.
#[derive(Debug, Clone)]
pub struct NewRecording {
    /// The call of the session.
    pub call_id: i64,
    /// Its channel.
    pub channel: String,
    /// The robot session.
    pub session_id: i64,
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

/// The recording methods, written once over each backend's SQL module in this file.
macro_rules! recording_store_impl {
    ($store:ident, $db:ty, $sql:ident) => {
        impl $store {
            /// See [`Store::put_recording`].
            pub async fn put_recording(
                &self,
                r: &$crate::store::recordings::NewRecording,
            ) -> $crate::store::StoreResult<$crate::store::recordings::PutRecordingOutcome> {
                use $crate::store::recordings::$sql as q;
                use $crate::store::recordings::{
                    PutRecordingOutcome, RecordingRecord, RecordingRow,
                };
                let mut tx = self.begin_write().await?;
                let existing: Option<RecordingRow> = sqlx::query_as(q::LOCK_RECORDING)
                    .bind(r.session_id)
                    .bind(&r.uid)
                    .bind(r.part)
                    .fetch_optional(&mut *tx)
                    .await?;
                let bytes = i64::try_from(r.content.len()).unwrap_or(i64::MAX);
                let existing = existing.map(RecordingRecord::from_row);
                let (row, stored, ready): (RecordingRow, bool, bool) = match existing {
                    None => {
                        let row = match sqlx::query_as(q::INSERT_RECORDING)
                            .bind(r.call_id)
                            .bind(&r.channel)
                            .bind(r.session_id)
                            .bind(&r.uid)
                            .bind(r.part)
                            .bind(&r.content)
                            .bind(&r.sha256)
                            .bind(bytes)
                            .bind(r.duration_ms)
                            .bind(i64::from(r.complete))
                            .bind(r.now_ms - r.duration_ms)
                            .bind(r.now_ms)
                            .fetch_one(&mut *tx)
                            .await
                        {
                            Ok(row) => row,
                            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                                return Err($crate::store::StoreError::Conflict(format!(
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
                            return Err($crate::store::StoreError::Conflict(format!(
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
                        let row = sqlx::query_as(q::REPLACE_RECORDING)
                            .bind(old.id)
                            .bind(&r.content)
                            .bind(&r.sha256)
                            .bind(bytes)
                            .bind(r.duration_ms)
                            .bind(i64::from(r.complete))
                            .bind(r.now_ms)
                            .fetch_one(&mut *tx)
                            .await?;
                        (row, true, r.complete)
                    }
                };
                let record = RecordingRecord::from_row(row);
                if ready {
                    let detail = format!(
                        "recording {}: {} ms, {} bytes, part {}",
                        record.id, record.duration_ms, record.bytes, record.part
                    );
                    Self::record(
                        &mut tx,
                        record.call_id,
                        Some(&record.uid),
                        "recording_ready",
                        None,
                        Some(&detail),
                        "server",
                        "applied",
                        r.now_ms,
                    )
                    .await?;
                    sqlx::query(q::ENQUEUE_RECORDING_PUSHES)
                        .bind(record.call_id)
                        .bind(r.now_ms)
                        .bind(r.push_expires_ms)
                        .bind(&record.uid)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(PutRecordingOutcome {
                    record,
                    stored,
                    ready,
                })
            }

            /// See [`Store::list_recordings`].
            pub async fn list_recordings(
                &self,
                channel: &str,
            ) -> $crate::store::StoreResult<Vec<$crate::store::recordings::RecordingRecord>> {
                use $crate::store::recordings::$sql as q;
                let rows: Vec<$crate::store::recordings::RecordingRow> =
                    sqlx::query_as(q::LIST_RECORDINGS)
                        .bind(channel)
                        .fetch_all(self.read_pool())
                        .await?;
                Ok(rows
                    .into_iter()
                    .map($crate::store::recordings::RecordingRecord::from_row)
                    .collect())
            }

            /// See [`Store::recording`].
            pub async fn recording(
                &self,
                id: i64,
                with_content: bool,
            ) -> $crate::store::StoreResult<
                Option<($crate::store::recordings::RecordingRecord, Vec<u8>)>,
            > {
                use $crate::store::recordings::$sql as q;
                let row: Option<$crate::store::recordings::RecordingRow> =
                    sqlx::query_as(q::GET_RECORDING)
                        .bind(id)
                        .fetch_optional(self.read_pool())
                        .await?;
                let Some(row) = row else { return Ok(None) };
                let content: Vec<u8> = if with_content {
                    sqlx::query_scalar(q::GET_RECORDING_CONTENT)
                        .bind(id)
                        .fetch_optional(self.read_pool())
                        .await?
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                Ok(Some((
                    $crate::store::recordings::RecordingRecord::from_row(row),
                    content,
                )))
            }

            /// See [`Store::prune_recordings`].
            pub async fn prune_recordings(
                &self,
                before_ms: i64,
            ) -> $crate::store::StoreResult<u64> {
                use $crate::store::recordings::$sql as q;
                // Every sweep asks (twice a second by default): look on a reader first, so
                // that a pass with nothing to delete takes no write lock.
                let due: Option<i64> = sqlx::query_scalar(q::ANY_EXPIRED_RECORDING)
                    .bind(before_ms)
                    .fetch_optional(self.read_pool())
                    .await?;
                if due.is_none() {
                    return Ok(0);
                }
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(q::PRUNE_RECORDINGS)
                    .bind(before_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(n)
            }

            /// See [`Store::robot_options`].
            pub async fn robot_options(
                &self,
                session_id: i64,
            ) -> $crate::store::StoreResult<Option<String>> {
                use $crate::store::recordings::$sql as q;
                let v: Option<Option<String>> = sqlx::query_scalar(q::ROBOT_OPTIONS)
                    .bind(session_id)
                    .fetch_optional(self.read_pool())
                    .await?;
                Ok(v.flatten())
            }

            /// See [`Store::robot_event`].
            #[allow(clippy::too_many_arguments)]
            pub async fn robot_event(
                &self,
                call_id: i64,
                uid: Option<&str>,
                kind: &str,
                detail: Option<&str>,
                source: &str,
                effect: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.begin_write().await?;
                Self::record(
                    &mut tx, call_id, uid, kind, None, detail, source, effect, now_ms,
                )
                .await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

pub(crate) use recording_store_impl;

macro_rules! sql_texts {
    ($p:literal, $lock:literal) => {
        pub const LOCK_RECORDING: &str = concat!(
            "SELECT id, call_id, channel, session_id, uid, part, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at \
             FROM recordings WHERE session_id = ", $p, "1 AND uid = ", $p, "2 AND part = ", $p, "3", $lock
        );
        pub const INSERT_RECORDING: &str = concat!(
            "INSERT INTO recordings (call_id, channel, session_id, uid, part, content, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at) \
             VALUES (", $p, "1, ", $p, "2, ", $p, "3, ", $p, "4, ", $p, "5, ", $p, "6, ", $p, "7, ", $p, "8, ", $p, "9, ", $p, "10, ", $p, "11, ", $p, "12, ", $p, "12) \
             RETURNING id, call_id, channel, session_id, uid, part, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at"
        );
        pub const REPLACE_RECORDING: &str = concat!(
            "UPDATE recordings SET content = ", $p, "2, sha256 = ", $p, "3, bytes = ", $p, "4, duration_ms = ", $p, "5, complete = ", $p, "6, updated_at = ", $p, "7 \
             WHERE id = ", $p, "1 \
             RETURNING id, call_id, channel, session_id, uid, part, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at"
        );
        pub const LIST_RECORDINGS: &str = concat!(
            "SELECT id, call_id, channel, session_id, uid, part, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at \
             FROM recordings WHERE channel = ", $p, "1 ORDER BY id"
        );
        pub const GET_RECORDING: &str = concat!(
            "SELECT id, call_id, channel, session_id, uid, part, sha256, bytes, duration_ms, complete, started_at, created_at, updated_at \
             FROM recordings WHERE id = ", $p, "1"
        );
        pub const GET_RECORDING_CONTENT: &str =
            concat!("SELECT content FROM recordings WHERE id = ", $p, "1");
        pub const ANY_EXPIRED_RECORDING: &str =
            concat!("SELECT id FROM recordings WHERE updated_at < ", $p, "1 LIMIT 1");
        pub const PRUNE_RECORDINGS: &str =
            concat!("DELETE FROM recordings WHERE updated_at < ", $p, "1");
        pub const ROBOT_OPTIONS: &str =
            concat!("SELECT options FROM robot_sessions WHERE id = ", $p, "1");
        /// One `recording_ready` push per callee device (not to the recorded uid); the
        /// outbox's unique key (call, kind, device) keeps it to one per call and device.
        pub const ENQUEUE_RECORDING_PUSHES: &str = concat!(
            "INSERT INTO push_jobs (call_id, channel, kind, uid, caller_uid, extra_msg, platform, push_token, voip, state, attempts, run_at, expires_at, created_at, updated_at) \
             SELECT c.id, c.channel, 'recording_ready', d.uid, c.caller_uid, c.extra_msg, d.platform, d.push_token, d.voip, 'queued', 0, ", $p, "2, ", $p, "3, ", $p, "2, ", $p, "2 \
             FROM calls c JOIN call_members m ON m.call_id = c.id JOIN push_devices d ON d.uid = m.uid \
             WHERE c.id = ", $p, "1 AND m.role = 'callee' AND m.uid <> ", $p, "4 ORDER BY m.id, d.id ON CONFLICT DO NOTHING"
        );
    };
}

/// SQLite statements.
pub mod sqlite_sql {
    sql_texts!("?", "");
}

/// PostgreSQL statements.
pub mod pg_sql {
    sql_texts!("$", " FOR UPDATE");
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

impl Store {
    /// Stores an upload of a recording part (idempotent replace keeping the longest; a
    /// complete part no longer changes). The first complete upload writes
    /// `recording_ready` on the timeline and queues pushes to the callees, in the same
    /// transaction.
    pub async fn put_recording(&self, r: &NewRecording) -> StoreResult<PutRecordingOutcome> {
        dispatch!(self.put_recording(r))
    }

    /// Recordings of a channel's call, oldest first.
    pub async fn list_recordings(&self, channel: &str) -> StoreResult<Vec<RecordingRecord>> {
        dispatch!(self.list_recordings(channel))
    }

    /// One recording, with its content when `with_content`.
    pub async fn recording(
        &self,
        id: i64,
        with_content: bool,
    ) -> StoreResult<Option<(RecordingRecord, Vec<u8>)>> {
        dispatch!(self.recording(id, with_content))
    }

    /// Deletes recordings last changed before `before_ms` (retention).
    pub async fn prune_recordings(&self, before_ms: i64) -> StoreResult<u64> {
        dispatch!(self.prune_recordings(before_ms))
    }

    /// The stored options of a robot session (JSON), if it has any.
    pub async fn robot_options(&self, session_id: i64) -> StoreResult<Option<String>> {
        dispatch!(self.robot_options(session_id))
    }

    /// Writes one entry on a call's timeline (robot controls, marks).
    #[allow(clippy::too_many_arguments)]
    pub async fn robot_event(
        &self,
        call_id: i64,
        uid: Option<&str>,
        kind: &str,
        detail: Option<&str>,
        source: &str,
        effect: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        dispatch!(self.robot_event(call_id, uid, kind, detail, source, effect, now_ms))
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
