//! SQLite backend: the embedded default. WAL with `synchronous=FULL`; one writer
//! connection (SQLite allows one writer at a time, so a single connection turns lock
//! contention into a queue) and a small pool of readers.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // No ping before each acquire: a connection to a local file does not break
        // silently, and the ping is a round trip to the connection's worker thread on
        // every query (PostgreSQL keeps it: its connections cross a network).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await?;
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts.read_only(true))
                .await?
        };
        Ok(Self { writer, reader })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    fn read_pool(&self) -> &SqlitePool {
        &self.reader
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
        // IMMEDIATE takes the write lock up front, so a transaction never fails half-way
        // on a lock upgrade when another process writes the same file.
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }
}

mod sql {
    pub const COUNT_MIGRATIONS: &str = "SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1";
    pub const INSERT_SETTING_IF_ABSENT: &str =
        "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING";
    pub const GET_SETTING: &str = "SELECT value FROM settings WHERE key = ?1";
    pub const INSERT_CALL: &str = "INSERT INTO calls (channel, caller_uid, kind, state, extra_msg, created_at, ring_deadline) \
         VALUES (?1, ?2, ?3, 'ringing', ?4, ?5, ?6) RETURNING id";
    pub const INSERT_MEMBER: &str = "INSERT INTO call_members (call_id, channel, uid, role, status, joined, created_at, heartbeat_deadline) \
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7)";
    pub const INSERT_MEMBER_IF_ABSENT: &str = "INSERT INTO call_members (call_id, channel, uid, role, status, joined, created_at, heartbeat_deadline) \
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7) ON CONFLICT (call_id, uid) DO NOTHING";
    pub const INSERT_EVENT: &str = "INSERT INTO call_events (call_id, uid, kind, code, detail, source, effect, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
    pub const INSERT_ROBOT_SESSION: &str = "INSERT INTO robot_sessions (call_id, channel, uid, audio, loop_audio, state, max_attempts, run_at, created_at, updated_at, requested_by, options) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?7, ?7, ?8, ?9) \
         ON CONFLICT (channel) WHERE state IN ('queued', 'offered', 'running') DO NOTHING RETURNING id";
    pub const ACTIVE_ROBOTS_OF: &str = "SELECT COUNT(*) FROM robot_sessions \
         WHERE requested_by = ?1 AND state IN ('queued', 'offered', 'running')";
    // BEGIN IMMEDIATE already holds the write lock: counting and inserting cannot race.
    pub const LOCK_REQUESTER: &str = "SELECT ?1";
    pub const FIND_CALL: &str =
        "SELECT id, channel, caller_uid, state, end_code FROM calls WHERE channel = ?1";
    pub const RECENT_MESSAGES: &str = "SELECT m.id, m.uid, m.channel, m.status, m.created_at, c.extra_msg, c.caller_uid, m.role \
         FROM call_members m JOIN calls c ON c.id = m.call_id \
         WHERE m.uid = ?1 AND m.created_at >= ?2 AND m.role IN ('caller', 'callee') \
         ORDER BY m.created_at DESC, m.id DESC LIMIT 200";
    pub const MARK_FETCHED: &str = "UPDATE call_members SET status = 1 WHERE id IN (SELECT value FROM json_each(?1)) AND status = 0";
    // BEGIN IMMEDIATE already holds the write lock: no row lock needed.
    pub const LOCK_CALL: &str = "SELECT id, state FROM calls WHERE channel = ?1";
    pub const CALL_MEMBERS: &str =
        "SELECT uid, role, status, joined FROM call_members WHERE call_id = ?1 ORDER BY id";
    pub const SET_MEMBER_STATUS: &str = "UPDATE call_members SET status = ?3, \
         heartbeat_deadline = CASE WHEN ?3 = 2 THEN NULL ELSE heartbeat_deadline END \
         WHERE call_id = ?1 AND uid = ?2 AND status < ?3";
    pub const SET_MEMBER_JOINED: &str =
        "UPDATE call_members SET joined = 1 WHERE call_id = ?1 AND uid = ?2";
    pub const SET_HEARTBEAT_DEADLINE: &str = "UPDATE call_members SET heartbeat_deadline = ?3 \
         WHERE call_id = ?1 AND uid = ?2 AND status < 2";
    pub const SET_CALL_CONNECTED: &str = "UPDATE calls SET state = 'connected', connected_at = ?2, ring_deadline = NULL \
         WHERE id = ?1 AND state = 'ringing'";
    pub const SET_CALL_ENDED: &str = "UPDATE calls SET state = 'ended', end_code = ?2, ended_at = ?3, ring_deadline = NULL \
         WHERE id = ?1 AND state <> 'ended'";
    pub const CANCEL_QUEUED_ROBOT: &str = "UPDATE robot_sessions SET state = 'cancelled', updated_at = ?2 \
         WHERE call_id = ?1 AND state = 'queued'";
    pub const REQUEST_ROBOT_LEAVE: &str = "UPDATE robot_sessions SET leave_requested = 1, updated_at = ?2 \
         WHERE call_id = ?1 AND state IN ('offered', 'running') RETURNING id";
    pub const INSERT_TASK: &str = "INSERT INTO calltasks (src_uid, dst_uid, call_time, taskid, tone_list, state, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6) \
         RETURNING id, src_uid, dst_uid, call_time, taskid, tone_list, state, channel";
    pub const LOCK_TASK: &str = "SELECT state FROM calltasks WHERE id = ?1 AND src_uid = ?2";
    pub const UPDATE_TASK: &str = "UPDATE calltasks SET src_uid = ?2, dst_uid = ?3, call_time = ?4, taskid = ?5, tone_list = ?6, updated_at = ?7 \
         WHERE id = ?1 AND src_uid = ?2 RETURNING id, src_uid, dst_uid, call_time, taskid, tone_list, state, channel";
    pub const DELETE_TASK: &str = "DELETE FROM calltasks WHERE id = ?1 AND src_uid = ?2";
    pub const COUNT_TASKS: &str = "SELECT COUNT(*) FROM calltasks WHERE src_uid = ?1";
    pub const LIST_TASKS: &str = "SELECT id, src_uid, dst_uid, call_time, taskid, tone_list, state, channel \
         FROM calltasks WHERE src_uid = ?1 ORDER BY call_time, id LIMIT ?2 OFFSET ?3";
    pub const TIMELINE: &str = "SELECT id, uid, kind, code, detail, source, effect, created_at \
         FROM call_events WHERE call_id = ?1 ORDER BY id";
    // ---- robot sessions
    pub const DUE_SESSIONS: &str = "SELECT id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches FROM robot_sessions \
         WHERE state = 'queued' AND run_at <= ?1 ORDER BY run_at, id LIMIT ?2";
    pub const OFFER_SESSION: &str = "UPDATE robot_sessions SET state = 'offered', agent_id = ?2, offered_at = ?3, updated_at = ?3 \
         WHERE id = ?1 AND state = 'queued'";
    pub const ACCEPT_SESSION: &str = "UPDATE robot_sessions SET state = 'running', attempts = attempts + 1, played = 0, lease_expires_at = ?4, updated_at = ?3 \
         WHERE id = ?1 AND agent_id = ?2 AND state = 'offered' RETURNING id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches";
    pub const REJECT_SESSION: &str = "UPDATE robot_sessions SET state = 'queued', agent_id = NULL, offered_at = NULL, run_at = ?3, updated_at = ?4 \
         WHERE id = ?1 AND agent_id = ?2 AND state = 'offered'";
    pub const RENEW_LEASE: &str = "UPDATE robot_sessions SET lease_expires_at = ?3, updated_at = ?4 \
         WHERE id = ?1 AND agent_id = ?2 AND state = 'running'";
    pub const LOCK_SESSION: &str = "SELECT id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches FROM robot_sessions WHERE id = ?1";
    pub const SET_POSITION: &str =
        "UPDATE robot_sessions SET position_ms = ?2, updated_at = ?3 WHERE id = ?1";
    pub const SET_PLAYING: &str =
        "UPDATE robot_sessions SET position_ms = ?2, updated_at = ?3, played = 1 WHERE id = ?1";
    pub const FINISH_SESSION: &str = "UPDATE robot_sessions SET state = ?2, lease_expires_at = NULL, errors = ?3, updated_at = ?4, position_ms = ?5 \
         WHERE id = ?1";
    pub const REQUEUE_SESSION: &str = "UPDATE robot_sessions SET state = 'queued', agent_id = NULL, offered_at = NULL, lease_expires_at = NULL, \
         run_at = ?2, errors = ?3, redispatches = redispatches + ?4, position_ms = ?5, updated_at = ?6 WHERE id = ?1";
    pub const EXPIRE_OFFERS: &str = "UPDATE robot_sessions SET state = 'queued', agent_id = NULL, offered_at = NULL, updated_at = ?2 \
         WHERE state = 'offered' AND offered_at < ?1";
    pub const LAPSED_LEASES: &str = "SELECT id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches FROM robot_sessions \
         WHERE state = 'running' AND lease_expires_at < ?1 ORDER BY id LIMIT 100";
    // ---- agent links (failover driven by the link)
    pub const OPEN_LINK: &str = "INSERT INTO agent_links (agent_id, link_id, opened_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (agent_id) DO UPDATE SET link_id = excluded.link_id, opened_at = excluded.opened_at";
    pub const CLOSE_LINK: &str = "DELETE FROM agent_links WHERE agent_id = ?1 AND link_id = ?2";
    pub const RECLAIM_SESSION: &str = "UPDATE robot_sessions SET state = 'running', lease_expires_at = ?3, \
         attempts = attempts + played, redispatches = redispatches - 1, updated_at = ?4 \
         WHERE id = ?1 AND agent_id = ?2 AND state = 'queued' AND leave_requested = 0 RETURNING call_id, uid";
    pub const RETURN_OFFERS: &str = "UPDATE robot_sessions SET state = 'queued', agent_id = NULL, offered_at = NULL, updated_at = ?2 \
         WHERE agent_id = ?1 AND state = 'offered'";
    pub const LINK_SESSIONS: &str = "SELECT id, played FROM robot_sessions \
         WHERE agent_id = ?1 AND state = 'running' ORDER BY id";
    pub const REQUEUE_LINK_LOST: &str = "UPDATE robot_sessions SET state = 'queued', offered_at = NULL, lease_expires_at = NULL, \
         run_at = ?2, errors = ?3, redispatches = redispatches + 1, attempts = attempts - ?4, updated_at = ?5 WHERE id = ?1";
    pub const PENDING_LEAVES: &str = "SELECT id FROM robot_sessions \
         WHERE agent_id = ?1 AND leave_requested = 1 AND state IN ('offered', 'running')";
    pub const GET_SESSION: &str = "SELECT id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches FROM robot_sessions WHERE id = ?1";
    pub const CHANNEL_SESSIONS: &str = "SELECT id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches FROM robot_sessions WHERE channel = ?1 ORDER BY id";
    pub const SESSIONS_BY_STATE: &str =
        "SELECT state, COUNT(*) FROM robot_sessions GROUP BY state ORDER BY state";
    pub const QUEUE_DEPTH: &str =
        "SELECT COUNT(*), MIN(created_at) FROM robot_sessions WHERE state = 'queued'";
    pub const REDISPATCHES: &str = "SELECT COALESCE(SUM(redispatches), 0) FROM robot_sessions";
    // ---- audio assets
    pub const PUT_ASSET: &str = "INSERT INTO audio_assets (name, content, sha256, bytes, duration_ms, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET content = excluded.content, \
         sha256 = excluded.sha256, bytes = excluded.bytes, duration_ms = excluded.duration_ms, created_at = excluded.created_at";
    pub const GET_ASSET: &str = "SELECT name, content, sha256, bytes, duration_ms, created_at FROM audio_assets WHERE name = ?1";
    pub const LIST_ASSETS: &str =
        "SELECT name, sha256, bytes, duration_ms, created_at FROM audio_assets ORDER BY name";
    pub const ASSET_EXISTS: &str = "SELECT COUNT(*) FROM audio_assets WHERE name = ?1";
    pub const CALLS_BY_STATE: &str = "SELECT state, COUNT(*) FROM calls GROUP BY state";
    // An active member: a row below 2 in a call that has not ended, or the caller of a call
    // every callee rejected (1002) shortly after it ended (the spec's invite-the-robot flow).
    pub const IS_MEMBER: &str = "SELECT (SELECT COUNT(*) FROM call_members m WHERE m.call_id = c.id AND m.uid = ?2 \
         AND ((c.state <> 'ended' AND m.status < 2) \
         OR (m.role = 'caller' AND c.state = 'ended' AND c.end_code = 1002 AND c.ended_at >= ?3))) \
         FROM calls c WHERE c.channel = ?1";
    pub const WAS_MEMBER: &str = "SELECT (SELECT COUNT(*) FROM call_members m WHERE m.call_id = c.id AND m.uid = ?2) FROM calls c WHERE c.channel = ?1";
    pub const OVERTIME_ROBOTS: &str = "SELECT channel FROM robot_sessions \
         WHERE state IN ('queued', 'offered', 'running') AND leave_requested = 0 AND created_at <= ?1 \
         ORDER BY created_at LIMIT ?2";
    pub const DELETE_ASSET: &str = "DELETE FROM audio_assets WHERE name = ?1";
    // ---- sweeper
    pub const DUE_RING_TIMEOUTS: &str =
        "SELECT channel FROM calls WHERE ring_deadline <= ?1 ORDER BY ring_deadline LIMIT ?2";
    pub const DUE_HEARTBEATS: &str = "SELECT channel, uid FROM call_members \
         WHERE heartbeat_deadline <= ?1 AND status < 2 ORDER BY heartbeat_deadline LIMIT ?2";
    pub const CLEAR_HEARTBEAT_DEADLINE: &str = "UPDATE call_members SET heartbeat_deadline = NULL \
         WHERE call_id = ?1 AND uid = ?2 AND heartbeat_deadline <= ?3";
    pub const DUE_TASKS: &str = "SELECT id, src_uid, dst_uid, call_time, taskid, tone_list, state, channel \
         FROM calltasks WHERE state = 'pending' AND call_time <= ?1 ORDER BY call_time, id LIMIT ?2";
    pub const FINISH_TASK: &str = "UPDATE calltasks SET state = ?2, channel = ?3, fired_at = ?4, updated_at = ?4 \
         WHERE id = ?1 AND state = 'pending'";
    // ---- push (store/push.rs)
    pub const UPSERT_DEVICE: &str = "INSERT INTO push_devices (uid, platform, push_token, voip, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (platform, push_token) DO UPDATE \
         SET uid = excluded.uid, voip = excluded.voip, updated_at = excluded.updated_at \
         RETURNING id, uid, platform, push_token, voip, created_at, updated_at";
    pub const TRIM_DEVICES: &str = "DELETE FROM push_devices WHERE uid = ?1 AND id NOT IN \
         (SELECT id FROM push_devices WHERE uid = ?1 ORDER BY updated_at DESC, id DESC LIMIT ?2)";
    pub const DEVICES_OF_UID: &str = "SELECT id, uid, platform, push_token, voip, created_at, updated_at \
         FROM push_devices WHERE uid = ?1 ORDER BY id";
    pub const DELETE_DEVICE_OF_UID: &str =
        "DELETE FROM push_devices WHERE uid = ?1 AND push_token = ?2";
    pub const DELETE_DEVICE_TOKEN: &str =
        "DELETE FROM push_devices WHERE platform = ?1 AND push_token = ?2";
    pub const DROP_QUEUED_PUSHES_OF_OTHER_UIDS: &str = "UPDATE push_jobs SET state = 'dropped', last_error = ?4, updated_at = ?5 \
         WHERE platform = ?1 AND push_token = ?2 AND uid <> ?3 AND state = 'queued'";
    pub const DROP_QUEUED_PUSHES_OF_UID_TOKEN: &str = "UPDATE push_jobs SET state = 'dropped', last_error = ?3, updated_at = ?4 \
         WHERE uid = ?1 AND push_token = ?2 AND state = 'queued'";
    pub const DROP_QUEUED_PUSHES_OF_TOKEN: &str = "UPDATE push_jobs SET state = 'dropped', last_error = ?3, updated_at = ?4 \
         WHERE platform = ?1 AND push_token = ?2 AND state = 'queued'";
    pub const ENQUEUE_CALL_PUSHES: &str = "INSERT INTO push_jobs (call_id, channel, kind, uid, caller_uid, extra_msg, platform, push_token, voip, state, attempts, run_at, expires_at, created_at, updated_at) \
         SELECT c.id, c.channel, 'call', d.uid, c.caller_uid, c.extra_msg, d.platform, d.push_token, d.voip, 'queued', 0, ?2, ?3, ?2, ?2 \
         FROM calls c JOIN call_members m ON m.call_id = c.id JOIN push_devices d ON d.uid = m.uid \
         WHERE c.id = ?1 AND m.role = 'callee' ORDER BY m.id, d.id ON CONFLICT DO NOTHING";
    pub const ENQUEUE_CANCEL_PUSHES: &str = "INSERT INTO push_jobs (call_id, channel, kind, uid, caller_uid, extra_msg, platform, push_token, voip, state, attempts, run_at, expires_at, created_at, updated_at) \
         SELECT j.call_id, j.channel, 'cancel', j.uid, j.caller_uid, j.extra_msg, j.platform, j.push_token, j.voip, 'queued', 0, ?3, ?4, ?3, ?3 \
         FROM push_jobs j WHERE j.call_id = ?1 AND j.uid = ?2 AND j.kind = 'call' AND j.state IN ('sending', 'sent') \
         AND EXISTS (SELECT 1 FROM push_devices d WHERE d.platform = j.platform AND d.push_token = j.push_token AND d.uid = j.uid) \
         ORDER BY j.id ON CONFLICT DO NOTHING";
    pub const DROP_UNSENT_CALL_PUSHES: &str = "UPDATE push_jobs SET state = 'dropped', last_error = ?3, updated_at = ?4 \
         WHERE call_id = ?1 AND uid = ?2 AND kind = 'call' AND state IN ('queued', 'sending')";
    pub const CLAIM_PUSH_JOBS: &str = "UPDATE push_jobs SET state = 'sending', attempts = attempts + 1, run_at = ?2, updated_at = ?1 \
         WHERE id IN (SELECT id FROM push_jobs WHERE state IN ('queued', 'sending') AND run_at <= ?1 \
         ORDER BY run_at, id LIMIT ?3) AND state IN ('queued', 'sending') AND run_at <= ?1 \
         RETURNING id, call_id, channel, kind, uid, caller_uid, extra_msg, platform, push_token, voip, state, attempts, run_at, expires_at, last_error, created_at";
    pub const FINISH_PUSH_JOB: &str = "UPDATE push_jobs SET state = ?3, run_at = COALESCE(?4, run_at), \
         last_error = COALESCE(?5, last_error), updated_at = ?6 \
         WHERE id = ?1 AND attempts = ?2 AND state = 'sending'";
    pub const PUSH_JOBS_OF_CHANNEL: &str = "SELECT id, call_id, channel, kind, uid, caller_uid, extra_msg, platform, push_token, voip, state, attempts, run_at, expires_at, last_error, created_at \
         FROM push_jobs WHERE call_id = (SELECT id FROM calls WHERE channel = ?1) ORDER BY id";
    pub const PRUNE_PUSH_JOBS: &str =
        "DELETE FROM push_jobs WHERE state IN ('sent', 'dead', 'dropped') AND updated_at < ?1";
}

super::store_impl!(SqliteStore, Sqlite);
super::robot::robot_store_impl!(SqliteStore, Sqlite);
super::sweep::sweep_store_impl!(SqliteStore, Sqlite);
super::push::push_store_impl!(SqliteStore, Sqlite);
super::recordings::recording_store_impl!(SqliteStore, Sqlite, sqlite_sql);
