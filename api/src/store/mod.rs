//! The only place that holds SQL: one [`Store`] with a SQLite and a PostgreSQL backend.
//!
//! ```text
//!   routes / sweeper / dispatcher
//!            |  (domain types in, records out; one method = one transaction)
//!          Store ──> SqliteStore (embedded default: WAL, synchronous=FULL, one writer)
//!                └─> PgStore     (scale: FOR UPDATE row locks, SKIP LOCKED claims)
//! ```
//!
//! Each backend has its own SQL (`sqlite.rs`, `postgres.rs`); the Rust around the SQL
//! (load a call, run the sans-IO state machine, write the transition) is written once
//! in the `store_impl!` macro and instantiated for each. Times are always bound as
//! parameters (unix milliseconds), never `now()` in SQL.

mod postgres;
pub mod push;
pub mod robot;
pub mod rtc_bus;
mod sqlite;
pub mod sweep;
/// Fresh PostgreSQL databases for tests: only in this crate's own tests and with the
/// `test-util` feature (which the integration tests turn on), never in the server.
#[cfg(any(test, feature = "test-util"))]
pub mod testdb;

use serde::Serialize;

use crate::call_state::{CallState, Input, Role, Transition};
use crate::domain::{ChannelName, MsgStatus, Uid};

pub use postgres::PgStore;
pub use push::{DeviceRecord, NewDevice, PushJob, PushJobState, PushKind, PushResult};
pub use robot::{LinkClosed, QueueStats, RescueOutcome, RobotSession, RobotState, StatusOutcome};
pub use sqlite::SqliteStore;
pub use sweep::FireOutcome;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The channel, task or session does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A per-uid limit is reached (active robots); nothing was written.
    #[error("{0}")]
    LimitReached(String),
    /// The database cannot be reached; retry later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else (a bug, a constraint we did not expect).
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(e),
            sqlx::Error::Database(d) => {
                // PostgreSQL: class 08 (connection), 57P01-03 (shutdown), 53 (resources).
                let code = d.code().unwrap_or_default();
                // SQLite: "database is locked" after the busy timeout.
                let transient = code.starts_with("08")
                    || code.starts_with("57P")
                    || code.starts_with("53")
                    || d.message().contains("database is locked");
                if transient {
                    Self::Unavailable(e)
                } else {
                    Self::Other(e)
                }
            }
            _ => Self::Other(e),
        }
    }
}

impl StoreError {
    /// A transaction PostgreSQL aborted so that others could go on: a deadlock victim
    /// (40P01) or a serialization failure (40001). Running it again is the remedy.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Other(sqlx::Error::Database(d)) => {
                matches!(d.code().as_deref(), Some("40P01" | "40001"))
            }
            _ => false,
        }
    }
}

/// Result of store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// What kind of call a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    /// `call/user`.
    User,
    /// `call/robot`.
    Robot,
    /// Fired from a scheduled `calltask`.
    Task,
}

impl CallKind {
    /// Stored form (and metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Robot => "robot",
            Self::Task => "task",
        }
    }
}

/// A robot session to queue with a call or an invite.
#[derive(Debug, Clone)]
pub struct NewRobotSession {
    /// The robot's uid in the channel.
    pub uid: String,
    /// Asset names to play, in order.
    pub audio: Vec<String>,
    /// Loop the playlist.
    pub loop_audio: bool,
    /// Attempts before the session is dead.
    pub max_attempts: i64,
    /// Who asked for it (counted by the per-uid robot limit).
    pub requested_by: String,
    /// Refuse ([`StoreError::LimitReached`]) when `requested_by` would have more active
    /// sessions than this (0: no limit).
    pub max_per_requester: i64,
    /// Robot options as JSON (`robot_options::StoredOptions`); none for the seed's bodies.
    pub options: Option<String>,
}

/// A call to create.
#[derive(Debug, Clone)]
pub struct NewCall {
    /// Channel name (the caller retries with a new one on [`StoreError::Conflict`]).
    pub channel: ChannelName,
    /// Who calls.
    pub caller: Uid,
    /// Who is called (may be empty).
    pub callees: Vec<Uid>,
    /// Kind.
    pub kind: CallKind,
    /// Handed to callees.
    pub extra_msg: Option<String>,
    /// Creation time, unix ms.
    pub now_ms: i64,
    /// When an unanswered call rings out, unix ms (none without callees).
    pub ring_deadline_ms: Option<i64>,
    /// Heartbeat deadline of the caller, unix ms.
    pub caller_heartbeat_deadline_ms: i64,
    /// A robot session to queue in the same transaction.
    pub robot: Option<NewRobotSession>,
}

/// A call as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// Row id.
    pub id: i64,
    /// Channel.
    pub channel: String,
    /// Caller.
    pub caller_uid: String,
    /// State.
    pub state: CallState,
    /// Why it ended.
    pub end_code: Option<i64>,
}

/// One row of `call/msg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    /// Row id (also `pk`).
    pub id: i64,
    /// Whose row.
    pub uid: String,
    /// Channel.
    pub channel: String,
    /// Status as it was when fetched.
    pub status: MsgStatus,
    /// Creation, unix ms.
    pub created_at_ms: i64,
    /// The caller's extra message.
    pub extra_msg: Option<String>,
    /// The caller.
    pub src_uid: String,
    /// `caller` or `callee`.
    pub role: Role,
}

/// An entry of a call's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    /// Order.
    pub id: i64,
    /// Who reported it (none for server events without a person).
    pub uid: Option<String>,
    /// `event`, `created`, `heartbeat`, `ring_timeout`, `robot_invited`, ...
    pub kind: String,
    /// The event code, when it has one.
    pub code: Option<i64>,
    /// Free text (`desp` of an app event).
    pub detail: Option<String>,
    /// `app` or `server`.
    pub source: String,
    /// What it did: `applied`, or why it was ignored.
    pub effect: String,
    /// When, unix ms.
    pub created_at_ms: i64,
}

/// A scheduled call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Row id.
    pub id: i64,
    /// Caller.
    pub src_uid: String,
    /// Callees.
    pub dst_uid: Vec<String>,
    /// When to call, unix seconds.
    pub call_time: i64,
    /// The app backend's task id.
    pub taskid: String,
    /// Audio the robot plays into the call.
    pub tone_list: Vec<String>,
    /// `pending`, `fired` or `missed`.
    pub state: String,
    /// The channel, once fired.
    pub channel: Option<String>,
}

/// Fields of a task to insert or update.
#[derive(Debug, Clone)]
pub struct TaskFields {
    /// Caller.
    pub src_uid: Uid,
    /// Callees (non-empty).
    pub dst_uid: Vec<Uid>,
    /// When to call, unix seconds.
    pub call_time: i64,
    /// The app backend's task id.
    pub taskid: String,
    /// Audio for the robot.
    pub tone_list: Vec<String>,
}

/// Who reported an input and how it shows on the timeline.
#[derive(Debug, Clone)]
pub struct InputMeta {
    /// `event`, `heartbeat`, `ring_timeout`, ...
    pub kind: &'static str,
    /// `app` or `server`.
    pub source: &'static str,
    /// Free text.
    pub detail: Option<String>,
    /// When, unix ms.
    pub now_ms: i64,
    /// New heartbeat deadline for the reporting uid, unix ms.
    pub heartbeat_deadline_ms: Option<i64>,
    /// Record on the timeline even when nothing changed (app events always are).
    pub always_record: bool,
}

/// A stored audio asset (without its content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AssetRecord {
    /// Name (`[A-Za-z0-9_-]{1,64}`).
    pub name: String,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: i64,
    /// Decoded duration, ms.
    pub duration_ms: i64,
    /// Upload time, unix ms.
    pub created_at_ms: i64,
}

/// Outcome of an invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteOutcome {
    /// A new robot session was queued.
    Queued(i64),
    /// A robot is already queued or present; nothing changed.
    AlreadyPresent,
}

/// The store: one of the two backends.
#[derive(Debug, Clone)]
pub enum Store {
    /// Embedded SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL.
    Postgres(PgStore),
}

macro_rules! dispatch {
    ($self:ident . $m:ident ( $($a:expr),* )) => {
        match $self {
            Store::Sqlite(s) => s.$m($($a),*).await,
            // Each store method is whole transactions, so one that PostgreSQL aborted as a
            // deadlock victim or a serialization failure left nothing behind and is run
            // again (twice at most). SQLite has one writer: it cannot deadlock.
            Store::Postgres(s) => {
                let mut retries = 0;
                loop {
                    match s.$m($($a),*).await {
                        Err(e) if retries < 2 && e.is_retryable() => {
                            retries += 1;
                            tracing::info!(op = stringify!($m), error = %e, retries, "transaction aborted by the database; running it again");
                        }
                        r => break r,
                    }
                }
            }
        }
    };
}

impl Store {
    /// Connects to `database_url` (`sqlite:` or `postgres:`) and applies migrations.
    pub async fn connect(database_url: &str) -> anyhow::Result<Self> {
        let store =
            if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
                Store::Postgres(PgStore::connect(database_url).await?)
            } else if database_url.starts_with("sqlite:") {
                Store::Sqlite(SqliteStore::connect(database_url).await?)
            } else {
                anyhow::bail!(
                    "DATABASE_URL must start with sqlite: or postgres:, got {database_url:?}"
                );
            };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(s) => s.migrate().await,
            Store::Postgres(s) => s.migrate().await,
        }
    }

    /// Whether the database answers and every migration is applied.
    pub async fn ready(&self) -> StoreResult<bool> {
        dispatch!(self.ready())
    }

    /// Name of the backend, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Returns the stored development credentials, storing `generated` first if none are.
    pub async fn dev_credentials(
        &self,
        generated: (String, String),
    ) -> StoreResult<(String, String)> {
        dispatch!(self.dev_credentials(generated.clone()))
    }

    /// Creates a call with its member rows (and robot session) in one transaction.
    pub async fn create_call(&self, call: &NewCall) -> StoreResult<i64> {
        let id = dispatch!(self.create_call(call))?;
        metrics::counter!("dapi_calls_created_total", "kind" => call.kind.as_str()).increment(1);
        Ok(id)
    }

    /// The call of a channel.
    pub async fn find_call(&self, channel: &str) -> StoreResult<Option<CallRecord>> {
        dispatch!(self.find_call(channel))
    }

    /// Rows of `call/msg` for `uid` created since `since_ms`, newest first; callee rows
    /// at status 0 move to 1 (the rows show the status before the move).
    pub async fn recent_messages(&self, uid: &Uid, since_ms: i64) -> StoreResult<Vec<MessageRow>> {
        dispatch!(self.recent_messages(uid, since_ms))
    }

    /// Applies one input to the call of `channel` through the state machine, records it
    /// on the timeline, and returns the transition.
    pub async fn apply_input(
        &self,
        channel: &str,
        input: &Input,
        meta: &InputMeta,
    ) -> StoreResult<Transition> {
        let t = dispatch!(self.apply_input(channel, input, meta))?;
        if let Some((CallState::Ended, code)) = t.new_state {
            let code = code.map(|c| c.to_string()).unwrap_or_default();
            metrics::counter!("dapi_calls_ended_total", "code" => code).increment(1);
        }
        Ok(t)
    }

    /// Queues a robot for an existing channel unless one is already queued or present.
    pub async fn invite_robot(
        &self,
        channel: &str,
        requester: &Uid,
        robot: &NewRobotSession,
        now_ms: i64,
    ) -> StoreResult<InviteOutcome> {
        dispatch!(self.invite_robot(channel, requester, robot, now_ms))
    }

    /// Makes the robot of `channel` leave: a queued session is cancelled, a running one
    /// is marked to leave. Returns the id of a session that an agent must be told about.
    pub async fn quit_robot(
        &self,
        channel: &str,
        uid: &Uid,
        now_ms: i64,
    ) -> StoreResult<Option<i64>> {
        dispatch!(self.quit_robot(channel, uid, now_ms))
    }

    /// As [`Store::quit_robot`], by the server: the channel's robot reached its maximum
    /// duration (recorded on the timeline as `robot_quit`, source `server`).
    pub async fn robot_overtime(&self, channel: &str, now_ms: i64) -> StoreResult<Option<i64>> {
        dispatch!(self.robot_overtime(channel, now_ms))
    }

    /// Channels whose active robot session was asked for at or before `created_before_ms`
    /// and has not been asked to leave.
    pub async fn overtime_robots(
        &self,
        created_before_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<String>> {
        dispatch!(self.overtime_robots(created_before_ms, limit))
    }

    /// Inserts a scheduled call.
    pub async fn insert_task(&self, f: &TaskFields, now_ms: i64) -> StoreResult<TaskRecord> {
        dispatch!(self.insert_task(f, now_ms))
    }

    /// Updates a pending scheduled call (404 unknown, 409 already fired or missed).
    pub async fn update_task(
        &self,
        id: i64,
        f: &TaskFields,
        now_ms: i64,
    ) -> StoreResult<TaskRecord> {
        dispatch!(self.update_task(id, f, now_ms))
    }

    /// Deletes a scheduled call (404 unknown).
    pub async fn delete_task(&self, id: i64, uid: &Uid) -> StoreResult<()> {
        dispatch!(self.delete_task(id, uid))
    }

    /// Tasks of `uid` as caller, soonest first, one page, and the total count.
    pub async fn list_tasks(
        &self,
        uid: &Uid,
        page: i64,
        perpage: i64,
    ) -> StoreResult<(Vec<TaskRecord>, i64)> {
        dispatch!(self.list_tasks(uid, page, perpage))
    }

    /// The timeline of a channel's call, in order.
    pub async fn timeline(&self, channel: &str) -> StoreResult<Vec<TimelineEntry>> {
        dispatch!(self.timeline(channel))
    }

    /// Queued sessions due at `now`, oldest first.
    pub async fn due_sessions(&self, now_ms: i64, limit: i64) -> StoreResult<Vec<RobotSession>> {
        dispatch!(self.due_sessions(now_ms, limit))
    }

    /// queued -> offered (compare-and-set).
    pub async fn offer_session(&self, id: i64, agent: &str, now_ms: i64) -> StoreResult<bool> {
        dispatch!(self.offer_session(id, agent, now_ms))
    }

    /// offered -> running under a lease.
    pub async fn accept_session(
        &self,
        id: i64,
        agent: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> StoreResult<Option<RobotSession>> {
        dispatch!(self.accept_session(id, agent, now_ms, lease_until_ms))
    }

    /// offered -> queued (declined).
    pub async fn reject_session(
        &self,
        id: i64,
        agent: &str,
        reason: &str,
        now_ms: i64,
    ) -> StoreResult<bool> {
        dispatch!(self.reject_session(id, agent, reason, now_ms))
    }

    /// Lease renewal; returns the ids `agent` does not hold.
    pub async fn renew_leases(
        &self,
        agent: &str,
        ids: &[i64],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> StoreResult<Vec<i64>> {
        dispatch!(self.renew_leases(agent, ids, now_ms, lease_until_ms))
    }

    /// An agent's status report.
    pub async fn report_status(
        &self,
        id: i64,
        agent: &str,
        state: protocol::agent::SessionState,
        detail: &str,
        position_ms: Option<u64>,
        now_ms: i64,
    ) -> StoreResult<StatusOutcome> {
        dispatch!(self.report_status(id, agent, state, detail, position_ms, now_ms))
    }

    /// Lapsed leases and unanswered offers back to the queue (or dead).
    pub async fn rescue_lapsed(
        &self,
        now_ms: i64,
        offer_deadline_ms: i64,
    ) -> StoreResult<RescueOutcome> {
        dispatch!(self.rescue_lapsed(now_ms, offer_deadline_ms))
    }

    /// An agent connected over `link`: its current link from now on; renews (or takes
    /// back) the sessions it holds; returns those it must leave.
    pub async fn open_link(
        &self,
        agent: &str,
        link: &str,
        held: &[i64],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> StoreResult<Vec<i64>> {
        dispatch!(self.open_link(agent, link, held, now_ms, lease_until_ms))
    }

    /// An agent's link closed: if it was the current one, its sessions are offered again
    /// (or end) at once, in one transaction.
    pub async fn close_link(
        &self,
        agent: &str,
        link: &str,
        now_ms: i64,
    ) -> StoreResult<robot::LinkClosed> {
        dispatch!(self.close_link(agent, link, now_ms))
    }

    /// Sessions held by `agent` that must leave.
    pub async fn pending_leaves(&self, agent: &str) -> StoreResult<Vec<i64>> {
        dispatch!(self.pending_leaves(agent))
    }

    /// One robot session.
    pub async fn robot_session(&self, id: i64) -> StoreResult<Option<RobotSession>> {
        dispatch!(self.robot_session(id))
    }

    /// Robot sessions of a channel.
    pub async fn channel_sessions(&self, channel: &str) -> StoreResult<Vec<RobotSession>> {
        dispatch!(self.channel_sessions(channel))
    }

    /// Queue figures.
    pub async fn queue_stats(&self, now_ms: i64) -> StoreResult<QueueStats> {
        dispatch!(self.queue_stats(now_ms))
    }

    /// Stores or replaces an audio asset.
    pub async fn put_asset(&self, a: &AssetRecord, content: &[u8]) -> StoreResult<()> {
        dispatch!(self.put_asset(a, content))
    }

    /// An asset with its content.
    pub async fn get_asset(&self, name: &str) -> StoreResult<Option<(AssetRecord, Vec<u8>)>> {
        dispatch!(self.get_asset(name))
    }

    /// Every asset.
    pub async fn list_assets(&self) -> StoreResult<Vec<AssetRecord>> {
        dispatch!(self.list_assets())
    }

    /// Channels whose ring deadline has passed.
    pub async fn due_ring_timeouts(&self, now_ms: i64, limit: i64) -> StoreResult<Vec<String>> {
        dispatch!(self.due_ring_timeouts(now_ms, limit))
    }

    /// (channel, uid) pairs whose heartbeat deadline has passed.
    pub async fn due_heartbeats(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<(String, String)>> {
        dispatch!(self.due_heartbeats(now_ms, limit))
    }

    /// Pending scheduled calls due at `now_secs`.
    pub async fn due_tasks(&self, now_secs: i64, limit: i64) -> StoreResult<Vec<TaskRecord>> {
        dispatch!(self.due_tasks(now_secs, limit))
    }

    /// Creates many calls in one transaction.
    pub async fn create_calls_bulk(&self, calls: &[NewCall]) -> StoreResult<()> {
        dispatch!(self.create_calls_bulk(calls))
    }

    /// Inserts many scheduled calls in one transaction.
    pub async fn insert_tasks_bulk(&self, tasks: &[TaskFields], now_ms: i64) -> StoreResult<()> {
        dispatch!(self.insert_tasks_bulk(tasks, now_ms))
    }

    /// Fires (with `call`) or misses (without) a scheduled call, once.
    pub async fn fire_task(
        &self,
        id: i64,
        call: Option<&NewCall>,
        now_ms: i64,
    ) -> StoreResult<FireOutcome> {
        dispatch!(self.fire_task(id, call, now_ms))
    }

    /// Whether `uid` is an **active** member of the call of `channel` (`None`: no such
    /// channel): what minting a token, joining `/rtc` and inviting the robot require.
    ///
    /// Active means the member's row is below 2 (caller, a callee still ringing or in the
    /// call, anyone invited, none of them gone) in a call that has not ended; and, for
    /// the spec's "invite the robot after the callee declined" flow, the caller of a call
    /// that ended because every callee rejected it (end code 1002) until
    /// `rejected_since_ms` (pass now minus a grace period) passes its end.
    pub async fn is_member(
        &self,
        channel: &str,
        uid: &Uid,
        rejected_since_ms: i64,
    ) -> StoreResult<Option<bool>> {
        dispatch!(self.is_member(channel, uid, rejected_since_ms))
    }

    /// Whether `uid` is or was a member of the call of `channel`, whatever its status
    /// (`None`: no such channel): what reading the timeline and reporting about the call
    /// (events, heartbeats, quitting the robot) require.
    pub async fn was_member(&self, channel: &str, uid: &Uid) -> StoreResult<Option<bool>> {
        dispatch!(self.was_member(channel, uid))
    }

    /// Calls per state.
    pub async fn calls_by_state(&self) -> StoreResult<Vec<(String, i64)>> {
        dispatch!(self.calls_by_state())
    }

    /// Whether an asset exists.
    pub async fn asset_exists(&self, name: &str) -> StoreResult<bool> {
        dispatch!(self.asset_exists(name))
    }

    /// Wakes the dispatchers of other API instances (PostgreSQL `NOTIFY`; nothing to do
    /// on SQLite, where one process owns the file).
    pub async fn notify_dispatch(&self) -> StoreResult<()> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.notify_dispatch().await,
        }
    }

    /// Deletes an asset.
    pub async fn delete_asset(&self, name: &str) -> StoreResult<bool> {
        dispatch!(self.delete_asset(name))
    }

    /// Registers a device (upsert on platform and token: a token that moves to another
    /// uid moves, and queued pushes for its old uid are dropped); keeps the newest
    /// `max_per_uid` devices of the uid.
    pub async fn register_device(
        &self,
        d: &NewDevice,
        max_per_uid: i64,
        now_ms: i64,
    ) -> StoreResult<DeviceRecord> {
        dispatch!(self.register_device(d, max_per_uid, now_ms))
    }

    /// Removes `uid`'s device with `push_token` and drops its queued pushes; false when
    /// there was none.
    pub async fn unregister_device(
        &self,
        uid: &Uid,
        push_token: &str,
        now_ms: i64,
    ) -> StoreResult<bool> {
        dispatch!(self.unregister_device(uid, push_token, now_ms))
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
        dispatch!(self.remove_push_token(platform, push_token, reason, now_ms))
    }

    /// The devices of `uid`, oldest first.
    pub async fn devices(&self, uid: &Uid) -> StoreResult<Vec<DeviceRecord>> {
        dispatch!(self.devices(uid))
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
        dispatch!(self.claim_push_jobs(now_ms, lease_until_ms, limit))
    }

    /// Ends the attempt `attempts` of a claimed job; false when the job is no longer
    /// that claim (its lease lapsed and another worker took it, or the call ended).
    pub async fn finish_push_job(
        &self,
        id: i64,
        attempts: i64,
        result: &PushResult,
        now_ms: i64,
    ) -> StoreResult<bool> {
        dispatch!(self.finish_push_job(id, attempts, result, now_ms))
    }

    /// The push jobs of a channel's call, in order.
    pub async fn push_jobs(&self, channel: &str) -> StoreResult<Vec<PushJob>> {
        dispatch!(self.push_jobs(channel))
    }

    /// Deletes finished (sent, dead, dropped) push jobs last changed before `before_ms`.
    pub async fn prune_push_jobs(&self, before_ms: i64) -> StoreResult<u64> {
        dispatch!(self.prune_push_jobs(before_ms))
    }
}

/// Wakes this instance's dispatcher whenever another instance sends `NOTIFY` (PostgreSQL
/// only; returns at once on SQLite). Reconnects after errors; the dispatcher's slow poll is
/// the backstop while the listener is down.
pub async fn listen_dispatch(
    state: crate::AppState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let Store::Postgres(pg) = state.store() else {
        return;
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            r = pg.listen_once(state.dispatcher()) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "dispatch listener lost; reconnecting");
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// The Rust around the SQL, written once and instantiated for each backend. A backend
/// module defines `mod sql` (statement texts), `BEGIN_WRITE`, and the pools, then
/// invokes this macro.
macro_rules! store_impl {
    ($store:ident, $db:ty) => {
        impl $store {
            /// Whether the database answers and every migration is applied.
            pub async fn ready(&self) -> $crate::store::StoreResult<bool> {
                let applied: i64 = sqlx::query_scalar(sql::COUNT_MIGRATIONS)
                    .fetch_one(self.read_pool())
                    .await?;
                Ok(applied >= MIGRATOR.iter().count() as i64)
            }

            /// See [`Store::dev_credentials`].
            pub async fn dev_credentials(
                &self,
                generated: (String, String),
            ) -> $crate::store::StoreResult<(String, String)> {
                let mut tx = self.begin_write().await?;
                sqlx::query(sql::INSERT_SETTING_IF_ABSENT)
                    .bind("dev_app_id")
                    .bind(&generated.0)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::INSERT_SETTING_IF_ABSENT)
                    .bind("dev_app_certificate")
                    .bind(&generated.1)
                    .execute(&mut *tx)
                    .await?;
                let app: String = sqlx::query_scalar(sql::GET_SETTING)
                    .bind("dev_app_id")
                    .fetch_one(&mut *tx)
                    .await?;
                let cert: String = sqlx::query_scalar(sql::GET_SETTING)
                    .bind("dev_app_certificate")
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok((app, cert))
            }

            /// See [`Store::create_call`].
            pub async fn create_call(
                &self,
                c: &$crate::store::NewCall,
            ) -> $crate::store::StoreResult<i64> {
                let mut tx = self.begin_write().await?;
                let id = Self::insert_call(&mut tx, c).await?;
                tx.commit().await?;
                Ok(id)
            }

            /// Inserts a call, its members and its robot session inside `tx`.
            async fn insert_call(
                tx: &mut sqlx::Transaction<'static, $db>,
                c: &$crate::store::NewCall,
            ) -> $crate::store::StoreResult<i64> {
                use $crate::call_state::Role;
                let call_id: i64 = match sqlx::query_scalar(sql::INSERT_CALL)
                    .bind(c.channel.as_str())
                    .bind(c.caller.as_str())
                    .bind(c.kind.as_str())
                    .bind(c.extra_msg.as_deref())
                    .bind(c.now_ms)
                    .bind(c.ring_deadline_ms)
                    .fetch_one(&mut **tx)
                    .await
                {
                    Ok(id) => id,
                    Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                        return Err($crate::store::StoreError::Conflict(format!(
                            "channel {} exists",
                            c.channel
                        )));
                    }
                    Err(e) => return Err(e.into()),
                };
                sqlx::query(sql::INSERT_MEMBER)
                    .bind(call_id)
                    .bind(c.channel.as_str())
                    .bind(c.caller.as_str())
                    .bind(Role::Caller.as_str())
                    .bind(1_i64)
                    .bind(c.now_ms)
                    .bind(Some(c.caller_heartbeat_deadline_ms))
                    .execute(&mut **tx)
                    .await?;
                // Each callee once, in order, and never the caller: a uid named twice in
                // `dst_uid` (or a task's list) would break the (call, uid) unique key.
                let mut seen = std::collections::HashSet::new();
                let callees = c
                    .callees
                    .iter()
                    .filter(|u| *u != &c.caller && seen.insert(u.as_str()));
                for callee in callees {
                    sqlx::query(sql::INSERT_MEMBER)
                        .bind(call_id)
                        .bind(c.channel.as_str())
                        .bind(callee.as_str())
                        .bind(Role::Callee.as_str())
                        .bind(0_i64)
                        .bind(c.now_ms)
                        .bind(None::<i64>)
                        .execute(&mut **tx)
                        .await?;
                }
                if !c.callees.is_empty() {
                    // The outbox: one `call` push per callee device, with the call.
                    Self::enqueue_call_pushes(tx, call_id, c.now_ms, c.ring_deadline_ms).await?;
                }
                Self::record(
                    tx,
                    call_id,
                    Some(c.caller.as_str()),
                    "created",
                    None,
                    None,
                    "app",
                    "applied",
                    c.now_ms,
                )
                .await?;
                if let Some(r) = &c.robot {
                    Self::insert_robot(tx, call_id, c.channel.as_str(), r, c.now_ms).await?;
                    Self::record(
                        tx,
                        call_id,
                        Some(c.caller.as_str()),
                        "robot_queued",
                        None,
                        None,
                        "app",
                        "applied",
                        c.now_ms,
                    )
                    .await?;
                }
                Ok(call_id)
            }

            #[allow(clippy::too_many_arguments)]
            async fn record(
                tx: &mut sqlx::Transaction<'static, $db>,
                call_id: i64,
                uid: Option<&str>,
                kind: &str,
                code: Option<i64>,
                detail: Option<&str>,
                source: &str,
                effect: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(sql::INSERT_EVENT)
                    .bind(call_id)
                    .bind(uid)
                    .bind(kind)
                    .bind(code)
                    .bind(detail)
                    .bind(source)
                    .bind(effect)
                    .bind(now_ms)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            async fn insert_robot(
                tx: &mut sqlx::Transaction<'static, $db>,
                call_id: i64,
                channel: &str,
                r: &$crate::store::NewRobotSession,
                now_ms: i64,
            ) -> $crate::store::StoreResult<Option<i64>> {
                if r.max_per_requester > 0 {
                    sqlx::query(sql::LOCK_REQUESTER)
                        .bind(&r.requested_by)
                        .execute(&mut **tx)
                        .await?;
                }
                let audio = serde_json::to_string(&r.audio).unwrap_or_else(|_| "[]".into());
                let id: Option<i64> = sqlx::query_scalar(sql::INSERT_ROBOT_SESSION)
                    .bind(call_id)
                    .bind(channel)
                    .bind(&r.uid)
                    .bind(audio)
                    .bind(i64::from(r.loop_audio))
                    .bind(r.max_attempts)
                    .bind(now_ms)
                    .bind(&r.requested_by)
                    .bind(r.options.as_deref())
                    .fetch_optional(&mut **tx)
                    .await?;
                if id.is_some() && r.max_per_requester > 0 {
                    // Counted after the insert (under the requester's lock), so an invite
                    // into a channel that already has its robot is never refused.
                    let active: i64 = sqlx::query_scalar(sql::ACTIVE_ROBOTS_OF)
                        .bind(&r.requested_by)
                        .fetch_one(&mut **tx)
                        .await?;
                    if active > r.max_per_requester {
                        // The caller drops `tx`: nothing of this request is written.
                        return Err($crate::store::StoreError::LimitReached(format!(
                            "uid {} already has {} active robots, the most allowed (DAPI_ROBOTS_PER_UID); end one with /dapi/quit/robot",
                            r.requested_by, r.max_per_requester
                        )));
                    }
                }
                Ok(id)
            }

            /// See [`Store::find_call`].
            pub async fn find_call(
                &self,
                channel: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::CallRecord>> {
                let row: Option<(i64, String, String, String, Option<i64>)> =
                    sqlx::query_as(sql::FIND_CALL)
                        .bind(channel)
                        .fetch_optional(self.read_pool())
                        .await?;
                Ok(row.map(|(id, channel, caller_uid, state, end_code)| {
                    $crate::store::CallRecord {
                        id,
                        channel,
                        caller_uid,
                        state: $crate::call_state::CallState::parse(&state),
                        end_code,
                    }
                }))
            }

            /// See [`Store::recent_messages`].
            pub async fn recent_messages(
                &self,
                uid: &$crate::domain::Uid,
                since_ms: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::MessageRow>> {
                use $crate::call_state::Role;
                use $crate::domain::MsgStatus;
                type Row = (
                    i64,
                    String,
                    String,
                    i64,
                    i64,
                    Option<String>,
                    String,
                    String,
                );
                let rows: Vec<Row> = sqlx::query_as(sql::RECENT_MESSAGES)
                    .bind(uid.as_str())
                    .bind(since_ms)
                    .fetch_all(self.read_pool())
                    .await?;
                let out: Vec<$crate::store::MessageRow> = rows
                    .into_iter()
                    .map(|(id, uid, channel, status, created, extra, src, role)| {
                        $crate::store::MessageRow {
                            id,
                            uid,
                            channel,
                            status: MsgStatus::from_i64(status),
                            created_at_ms: created,
                            extra_msg: extra,
                            src_uid: src,
                            role: Role::parse(&role),
                        }
                    })
                    .collect();
                let fetched: Vec<i64> = out
                    .iter()
                    .filter(|r| r.role == Role::Callee && r.status == MsgStatus::Created)
                    .map(|r| r.id)
                    .collect();
                if !fetched.is_empty() {
                    // One compare-and-set statement: only rows still at 0 move to 1.
                    let ids = serde_json::to_string(&fetched).unwrap_or_else(|_| "[]".into());
                    let mut tx = self.begin_write().await?;
                    sqlx::query(sql::MARK_FETCHED)
                        .bind(ids)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                }
                Ok(out)
            }

            /// See [`Store::apply_input`].
            pub async fn apply_input(
                &self,
                channel: &str,
                input: &$crate::call_state::Input,
                meta: &$crate::store::InputMeta,
            ) -> $crate::store::StoreResult<$crate::call_state::Transition> {
                use $crate::call_state::{CallSnapshot, CallState, Input, Member, Role};
                use $crate::domain::{MsgStatus, Uid};
                let mut tx = self.begin_write().await?;
                let call: Option<(i64, String)> = sqlx::query_as(sql::LOCK_CALL)
                    .bind(channel)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some((call_id, state)) = call else {
                    return Err($crate::store::StoreError::NotFound(format!(
                        "unknown channel {channel}"
                    )));
                };
                let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(sql::CALL_MEMBERS)
                    .bind(call_id)
                    .fetch_all(&mut *tx)
                    .await?;
                let members = rows
                    .into_iter()
                    .filter_map(|(uid, role, status, joined)| {
                        Some(Member {
                            uid: Uid::parse(&uid).ok()?,
                            role: Role::parse(&role),
                            status: MsgStatus::from_i64(status),
                            joined: joined != 0,
                        })
                    })
                    .collect();
                let snap = CallSnapshot {
                    state: CallState::parse(&state),
                    members,
                };
                let t = $crate::call_state::apply(&snap, input);
                for (uid, role) in &t.add_members {
                    sqlx::query(sql::INSERT_MEMBER)
                        .bind(call_id)
                        .bind(channel)
                        .bind(uid.as_str())
                        .bind(role.as_str())
                        .bind(0_i64)
                        .bind(meta.now_ms)
                        .bind(None::<i64>)
                        .execute(&mut *tx)
                        .await?;
                }
                for (uid, status) in &t.status_changes {
                    // Leaving clears the heartbeat deadline: nothing more to expire.
                    sqlx::query(sql::SET_MEMBER_STATUS)
                        .bind(call_id)
                        .bind(uid.as_str())
                        .bind(*status as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                for uid in &t.joined {
                    sqlx::query(sql::SET_MEMBER_JOINED)
                        .bind(call_id)
                        .bind(uid.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                let reporter = match input {
                    Input::Event { uid, .. }
                    | Input::Seen { uid }
                    | Input::Left { uid }
                    | Input::HeartbeatExpired { uid } => Some(uid),
                    Input::RingTimeout => None,
                };
                if let Input::HeartbeatExpired { uid } = input {
                    // handled: the sweeper must not pick this deadline again
                    sqlx::query(sql::CLEAR_HEARTBEAT_DEADLINE)
                        .bind(call_id)
                        .bind(uid.as_str())
                        .bind(meta.now_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                if let (Some(uid), Some(deadline)) = (reporter, meta.heartbeat_deadline_ms) {
                    // Only members still in the call (status < 2) get a new deadline.
                    sqlx::query(sql::SET_HEARTBEAT_DEADLINE)
                        .bind(call_id)
                        .bind(uid.as_str())
                        .bind(deadline)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some((new_state, end_code)) = t.new_state {
                    match new_state {
                        CallState::Connected => {
                            sqlx::query(sql::SET_CALL_CONNECTED)
                                .bind(call_id)
                                .bind(meta.now_ms)
                                .execute(&mut *tx)
                                .await?;
                        }
                        _ => {
                            sqlx::query(sql::SET_CALL_ENDED)
                                .bind(call_id)
                                .bind(end_code)
                                .bind(meta.now_ms)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                for uid in &t.cancel_push {
                    // The outbox: cancel pushes for callees who never answered.
                    Self::enqueue_cancel_pushes(&mut tx, call_id, uid, meta.now_ms).await?;
                }
                if t.robot_leave {
                    sqlx::query(sql::CANCEL_QUEUED_ROBOT)
                        .bind(call_id)
                        .bind(meta.now_ms)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(sql::REQUEST_ROBOT_LEAVE)
                        .bind(call_id)
                        .bind(meta.now_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                if meta.always_record || t.ignored.is_none() {
                    let code = match input {
                        Input::Event { code, .. } => Some(code.code()),
                        // a server-generated 1001 (spec: recorded as server-generated)
                        Input::RingTimeout => Some(1001),
                        _ => None,
                    };
                    let effect = match t.ignored {
                        None => match t.new_state {
                            Some((s, Some(c))) => format!("call {} ({c})", s.as_str()),
                            Some((s, None)) => format!("call {}", s.as_str()),
                            None => "applied".to_owned(),
                        },
                        Some(why) => format!("ignored: {why}"),
                    };
                    Self::record(
                        &mut tx,
                        call_id,
                        reporter.map(|u| u.as_str()),
                        meta.kind,
                        code,
                        meta.detail.as_deref(),
                        meta.source,
                        &effect,
                        meta.now_ms,
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(t)
            }

            /// See [`Store::invite_robot`].
            pub async fn invite_robot(
                &self,
                channel: &str,
                requester: &$crate::domain::Uid,
                robot: &$crate::store::NewRobotSession,
                now_ms: i64,
            ) -> $crate::store::StoreResult<$crate::store::InviteOutcome> {
                let mut tx = self.begin_write().await?;
                let call: Option<(i64, String)> = sqlx::query_as(sql::LOCK_CALL)
                    .bind(channel)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some((call_id, _)) = call else {
                    return Err($crate::store::StoreError::NotFound(format!(
                        "unknown channel {channel}"
                    )));
                };
                sqlx::query(sql::INSERT_MEMBER_IF_ABSENT)
                    .bind(call_id)
                    .bind(channel)
                    .bind(requester.as_str())
                    .bind("invited")
                    .bind(0_i64)
                    .bind(now_ms)
                    .bind(None::<i64>)
                    .execute(&mut *tx)
                    .await?;
                let id = Self::insert_robot(&mut tx, call_id, channel, robot, now_ms).await?;
                let (outcome, effect) = match id {
                    Some(id) => ($crate::store::InviteOutcome::Queued(id), "applied"),
                    None => (
                        $crate::store::InviteOutcome::AlreadyPresent,
                        "ignored: a robot is already queued or present",
                    ),
                };
                Self::record(
                    &mut tx,
                    call_id,
                    Some(requester.as_str()),
                    "robot_invited",
                    None,
                    None,
                    "app",
                    effect,
                    now_ms,
                )
                .await?;
                tx.commit().await?;
                Ok(outcome)
            }

            /// See [`Store::quit_robot`].
            pub async fn quit_robot(
                &self,
                channel: &str,
                uid: &$crate::domain::Uid,
                now_ms: i64,
            ) -> $crate::store::StoreResult<Option<i64>> {
                self.robot_quit(channel, Some(uid.as_str()), "app", None, now_ms)
                    .await
            }

            /// See [`Store::robot_overtime`].
            pub async fn robot_overtime(
                &self,
                channel: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<Option<i64>> {
                self.robot_quit(
                    channel,
                    None,
                    "server",
                    Some("the robot reached its maximum duration (DAPI_ROBOT_MAX_SECONDS)"),
                    now_ms,
                )
                .await
            }

            /// Cancels the channel's queued robot or asks its running one to leave, and
            /// records who did (`robot_quit` on the timeline).
            async fn robot_quit(
                &self,
                channel: &str,
                uid: Option<&str>,
                source: &str,
                detail: Option<&str>,
                now_ms: i64,
            ) -> $crate::store::StoreResult<Option<i64>> {
                let mut tx = self.begin_write().await?;
                let call: Option<(i64, String)> = sqlx::query_as(sql::LOCK_CALL)
                    .bind(channel)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some((call_id, _)) = call else {
                    return Err($crate::store::StoreError::NotFound(format!(
                        "unknown channel {channel}"
                    )));
                };
                let cancelled = sqlx::query(sql::CANCEL_QUEUED_ROBOT)
                    .bind(call_id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let running: Option<i64> = sqlx::query_scalar(sql::REQUEST_ROBOT_LEAVE)
                    .bind(call_id)
                    .bind(now_ms)
                    .fetch_optional(&mut *tx)
                    .await?;
                let effect = if cancelled > 0 {
                    "queued robot cancelled"
                } else if running.is_some() {
                    "robot told to leave"
                } else {
                    "ignored: no robot in the channel"
                };
                Self::record(
                    &mut tx,
                    call_id,
                    uid,
                    "robot_quit",
                    None,
                    detail,
                    source,
                    effect,
                    now_ms,
                )
                .await?;
                tx.commit().await?;
                Ok(running)
            }

            fn task_from_row(
                (id, src_uid, dst_uid, call_time, taskid, tone_list, state, channel): (
                    i64,
                    String,
                    String,
                    i64,
                    String,
                    String,
                    String,
                    Option<String>,
                ),
            ) -> $crate::store::TaskRecord {
                $crate::store::TaskRecord {
                    id,
                    src_uid,
                    dst_uid: serde_json::from_str(&dst_uid).unwrap_or_default(),
                    call_time,
                    taskid,
                    tone_list: serde_json::from_str(&tone_list).unwrap_or_default(),
                    state,
                    channel,
                }
            }

            fn task_json(f: &$crate::store::TaskFields) -> (String, String) {
                let dst: Vec<&str> = f.dst_uid.iter().map(|u| u.as_str()).collect();
                (
                    serde_json::to_string(&dst).unwrap_or_else(|_| "[]".into()),
                    serde_json::to_string(&f.tone_list).unwrap_or_else(|_| "[]".into()),
                )
            }

            /// See [`Store::insert_task`].
            pub async fn insert_task(
                &self,
                f: &$crate::store::TaskFields,
                now_ms: i64,
            ) -> $crate::store::StoreResult<$crate::store::TaskRecord> {
                let (dst, tones) = Self::task_json(f);
                let mut tx = self.begin_write().await?;
                let row = sqlx::query_as(sql::INSERT_TASK)
                    .bind(f.src_uid.as_str())
                    .bind(dst)
                    .bind(f.call_time)
                    .bind(&f.taskid)
                    .bind(tones)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Self::task_from_row(row))
            }

            /// See [`Store::update_task`].
            pub async fn update_task(
                &self,
                id: i64,
                f: &$crate::store::TaskFields,
                now_ms: i64,
            ) -> $crate::store::StoreResult<$crate::store::TaskRecord> {
                let (dst, tones) = Self::task_json(f);
                let mut tx = self.begin_write().await?;
                // Another uid's task is not found, in the same words as a missing one.
                let state: Option<String> = sqlx::query_scalar(sql::LOCK_TASK)
                    .bind(id)
                    .bind(f.src_uid.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                match state.as_deref() {
                    None => {
                        return Err($crate::store::StoreError::NotFound(format!(
                            "unknown task {id}"
                        )));
                    }
                    Some("pending") => {}
                    Some(other) => {
                        return Err($crate::store::StoreError::Conflict(format!(
                            "task {id} is {other} and can no longer be changed"
                        )));
                    }
                }
                let row = sqlx::query_as(sql::UPDATE_TASK)
                    .bind(id)
                    .bind(f.src_uid.as_str())
                    .bind(dst)
                    .bind(f.call_time)
                    .bind(&f.taskid)
                    .bind(tones)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Self::task_from_row(row))
            }

            /// See [`Store::delete_task`].
            pub async fn delete_task(
                &self,
                id: i64,
                uid: &$crate::domain::Uid,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(sql::DELETE_TASK)
                    .bind(id)
                    .bind(uid.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                if n == 0 {
                    return Err($crate::store::StoreError::NotFound(format!(
                        "unknown task {id} of {uid}"
                    )));
                }
                Ok(())
            }

            /// See [`Store::list_tasks`].
            pub async fn list_tasks(
                &self,
                uid: &$crate::domain::Uid,
                page: i64,
                perpage: i64,
            ) -> $crate::store::StoreResult<(Vec<$crate::store::TaskRecord>, i64)> {
                let mut conn = self.read_pool().acquire().await?;
                let total: i64 = sqlx::query_scalar(sql::COUNT_TASKS)
                    .bind(uid.as_str())
                    .fetch_one(&mut *conn)
                    .await?;
                let rows: Vec<_> = sqlx::query_as(sql::LIST_TASKS)
                    .bind(uid.as_str())
                    .bind(perpage)
                    .bind((page - 1).saturating_mul(perpage))
                    .fetch_all(&mut *conn)
                    .await?;
                Ok((rows.into_iter().map(Self::task_from_row).collect(), total))
            }

            /// See [`Store::timeline`].
            pub async fn timeline(
                &self,
                channel: &str,
            ) -> $crate::store::StoreResult<Vec<$crate::store::TimelineEntry>> {
                let call = self.find_call(channel).await?;
                let Some(call) = call else {
                    return Err($crate::store::StoreError::NotFound(format!(
                        "unknown channel {channel}"
                    )));
                };
                type Row = (
                    i64,
                    Option<String>,
                    String,
                    Option<i64>,
                    Option<String>,
                    String,
                    String,
                    i64,
                );
                let rows: Vec<Row> = sqlx::query_as(sql::TIMELINE)
                    .bind(call.id)
                    .fetch_all(self.read_pool())
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(id, uid, kind, code, detail, source, effect, created_at_ms)| {
                            $crate::store::TimelineEntry {
                                id,
                                uid,
                                kind,
                                code,
                                detail,
                                source,
                                effect,
                                created_at_ms,
                            }
                        },
                    )
                    .collect())
            }
        }
    };
}

pub(crate) use store_impl;

// After `dispatch!` and `store_impl!`: its `impl Store` uses the former.
pub mod recordings;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod push_conformance;
