//! Robot sessions: explicit states, one store method per transition
//! (`docs/robot-session-states.md` draws them).
//!
//! ```text
//!            offer              accept               status left
//!  queued ---------> offered ----------> running -----------------> left
//!    ^  ^  reject /     |                 |  |  status failed / lease lapsed
//!    |  +--offer expiry-+                 |  +--> queued (backoff, attempts left)
//!    |                                    |  +--> dead   (attempts used up)
//!    +-- quit/robot while queued: cancelled; while offered/running: leave_requested
//! ```

use std::time::Duration;

use protocol::backoff::Backoff;
use serde::Serialize;

use super::calls::Line;
use super::db::{self, Stmt, Tx};
use super::{CallId, SessionId, Store, StoreError, StoreResult};
use crate::call_state::Role;
use crate::domain::{ChannelName, Uid};

/// A robot session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RobotState {
    /// Waiting for an agent (from `run_at`).
    Queued,
    /// Offered to one agent, waiting for accept or reject.
    Offered,
    /// Held by an agent under a lease.
    Running,
    /// The robot left (terminal).
    Left,
    /// Kicked before it started (terminal).
    Cancelled,
    /// Every attempt failed (terminal).
    Dead,
}

impl RobotState {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Offered => "offered",
            Self::Running => "running",
            Self::Left => "left",
            Self::Cancelled => "cancelled",
            Self::Dead => "dead",
        }
    }
    /// From the stored form; `None` for anything the store never writes.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
    /// All states, for metrics.
    pub const ALL: [RobotState; 6] = [
        Self::Queued,
        Self::Offered,
        Self::Running,
        Self::Left,
        Self::Cancelled,
        Self::Dead,
    ];
}

/// A robot session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RobotSession {
    /// Id.
    #[schema(value_type = i64)]
    pub id: SessionId,
    /// The call it belongs to.
    #[schema(value_type = i64)]
    pub call_id: CallId,
    /// Channel.
    #[schema(value_type = String)]
    pub channel: ChannelName,
    /// The robot's uid.
    pub uid: String,
    /// Assets to play, in order.
    pub audio: Vec<String>,
    /// Loop the playlist.
    pub loop_audio: bool,
    /// State.
    pub state: RobotState,
    /// `quit/robot` (or the call's end) asked it to leave.
    pub leave_requested: bool,
    /// The agent holding or offered it.
    pub agent_id: Option<String>,
    /// When the lease lapses, unix ms.
    pub lease_expires_at: Option<i64>,
    /// Attempts started.
    pub attempts: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// Not offered before, unix ms.
    pub run_at: i64,
    /// Last reported playback position, ms.
    pub position_ms: i64,
    /// Every attempt's error.
    pub errors: Vec<String>,
    /// Times it was offered again after an agent vanished.
    pub redispatches: i64,
}

/// The columns of a session row, in the order [`RobotSession`] reads them.
type SessionRow = (
    i64,
    i64,
    String,
    String,
    String,
    i64,
    String,
    i64,
    Option<String>,
    Option<i64>,
    i64,
    i64,
    i64,
    i64,
    String,
    i64,
);

impl TryFrom<SessionRow> for RobotSession {
    type Error = StoreError;
    fn try_from(r: SessionRow) -> StoreResult<Self> {
        Ok(Self {
            id: SessionId::new(r.0),
            call_id: CallId::new(r.1),
            channel: db::channel("robot_sessions", r.2)?,
            uid: r.3,
            audio: db::json_list("robot_sessions", "audio", &r.4)?,
            loop_audio: r.5 != 0,
            state: RobotState::parse(&r.6)
                .ok_or_else(|| db::corrupt("robot_sessions", "state", &r.6))?,
            leave_requested: r.7 != 0,
            agent_id: r.8,
            lease_expires_at: r.9,
            attempts: r.10,
            max_attempts: r.11,
            run_at: r.12,
            position_ms: r.13,
            errors: db::json_list("robot_sessions", "errors", &r.14)?,
            redispatches: r.15,
        })
    }
}

fn decode(rows: Vec<SessionRow>) -> StoreResult<Vec<RobotSession>> {
    rows.into_iter().map(RobotSession::try_from).collect()
}

/// Delay before attempt `attempts + 1` after a failure: 1 s, 2 s, 4 s, ... capped at 30 s.
pub fn backoff_ms(attempts: i64) -> i64 {
    const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    BACKOFF.delay_ms_after_attempt(attempts)
}

/// The next step of a session after a failure: where it goes, from when, and whether the
/// attempt counts against `max_attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryStep {
    /// `Queued` (offered again from `run_at`), or `Cancelled` / `Dead`.
    pub next: RobotState,
    /// When it may be offered again (`Queued` only; else the session's own `run_at`).
    pub run_at: i64,
    /// Whether the attempt counts against `max_attempts`.
    pub charged: bool,
}

/// The retry policy: the next step of session `s` after a failed attempt at `now_ms`
/// (the agent reported `failed`, its lease lapsed, or its link closed before it played).
///
/// - It was asked to leave anyway: `cancelled`.
/// - Attempts remain: queued again after [`backoff_ms`] of its attempts.
/// - Else: `dead`.
pub fn after_failure(s: &RobotSession, now_ms: i64) -> RetryStep {
    let next = if s.leave_requested {
        RobotState::Cancelled
    } else if s.attempts < s.max_attempts {
        RobotState::Queued
    } else {
        RobotState::Dead
    };
    RetryStep {
        next,
        run_at: match next {
            RobotState::Queued => now_ms + backoff_ms(s.attempts),
            _ => s.run_at,
        },
        charged: true,
    }
}

/// What becomes of a running session whose agent's link closed (the agent was killed, its
/// host went away, or it dropped the link): the rule of DESIGN.md decision 11.
///
/// - It was asked to leave anyway: `cancelled`.
/// - It was playing (`played`: the agent reported `playing` since it accepted the
///   session): the agent failed, not the session. Queued again at once, from its last
///   reported position, and the attempt is given back, so a session survives any number of
///   agent crashes (each still counts as a re-dispatch and leaves a line in `errors`).
/// - It had not started playing: this may be the session killing its agents (a bad asset,
///   a crash on join), so it is a failed attempt ([`after_failure`]).
pub fn after_link_loss(s: &RobotSession, played: bool, now_ms: i64) -> RetryStep {
    if played && !s.leave_requested {
        RetryStep {
            next: RobotState::Queued,
            run_at: now_ms,
            charged: false,
        }
    } else {
        after_failure(s, now_ms)
    }
}

/// The timeline kind of a session that failed and took `step`: queued again (`retried`,
/// e.g. `robot_failed` or `robot_redispatched`) or ended (`robot_dead`).
pub fn failure_kind(step: RobotState, retried: &'static str) -> &'static str {
    if step == RobotState::Queued {
        retried
    } else {
        "robot_dead"
    }
}

/// What closing an agent's link did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkClosed {
    /// The link was still the agent's current one. When false nothing changed: the agent
    /// registered again over a newer link, which holds its sessions.
    pub current: bool,
    /// Running sessions queued again.
    pub requeued: Vec<SessionId>,
    /// Running sessions ended instead (`cancelled`, or `dead` with no attempt left).
    pub ended: Vec<SessionId>,
    /// Offers the agent had not answered, back in the queue.
    pub offers_returned: u64,
}

/// What a rescue sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RescueOutcome {
    /// Sessions whose lease lapsed and that were queued again.
    pub requeued: Vec<SessionId>,
    /// Sessions whose lease lapsed with no attempts left.
    pub dead: Vec<SessionId>,
    /// Offers that were never answered and went back to the queue.
    pub offers_expired: u64,
}

/// Queue figures for metrics and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// Sessions per state: `[state, count]` pairs.
    #[schema(schema_with = state_counts_schema)]
    pub by_state: Vec<(String, i64)>,
    /// Queued sessions.
    pub depth: i64,
    /// Age of the oldest queued session, ms.
    pub oldest_queued_age_ms: i64,
    /// Re-dispatches over all sessions.
    pub redispatches: i64,
}

fn state_counts_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    ArrayBuilder::new()
        .items(
            ArrayBuilder::new()
                .items(
                    OneOfBuilder::new()
                        .item(ObjectBuilder::new().schema_type(Type::String))
                        .item(ObjectBuilder::new().schema_type(Type::Integer)),
                )
                .min_items(Some(2))
                .max_items(Some(2)),
        )
        .into()
}

/// Outcome of an agent's status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOutcome {
    /// Recorded; the session is in this state now.
    Now(RobotState),
    /// The session is not held by this agent (stale report): the agent should drop it.
    NotHeld,
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

/// Outcome of an invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteOutcome {
    /// A new robot session was queued.
    Queued(SessionId),
    /// A robot is already queued or present; nothing changed.
    AlreadyPresent,
}

mod sql {
    use super::Stmt;

    pub const INSERT_ROBOT_SESSION: Stmt = Stmt::both(
        "INSERT INTO robot_sessions (call_id, channel, uid, audio, loop_audio, state, max_attempts, run_at, created_at, updated_at, requested_by, options) \
         VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $7, $7, $8, $9) \
         ON CONFLICT (channel) WHERE state IN ('queued', 'offered', 'running') DO NOTHING RETURNING id",
    );
    pub const ACTIVE_ROBOTS_OF: Stmt = Stmt::both(
        "SELECT COUNT(*) FROM robot_sessions \
         WHERE requested_by = $1 AND state IN ('queued', 'offered', 'running')",
    );
    // SQLite: BEGIN IMMEDIATE already holds the write lock, counting and inserting cannot
    // race. PostgreSQL: two robot requests of one uid on different calls lock different
    // call rows; this transaction-scoped lock on the uid makes counting and inserting one
    // step.
    pub const LOCK_REQUESTER: Stmt = Stmt::each(
        "SELECT $1",
        "SELECT pg_advisory_xact_lock(29282, hashtext($1))",
    );
    pub const CANCEL_QUEUED_ROBOT: Stmt = Stmt::both(
        "UPDATE robot_sessions SET state = 'cancelled', updated_at = $2 \
         WHERE call_id = $1 AND state = 'queued'",
    );
    pub const REQUEST_ROBOT_LEAVE: Stmt = Stmt::both(
        "UPDATE robot_sessions SET leave_requested = 1, updated_at = $2 \
         WHERE call_id = $1 AND state IN ('offered', 'running') RETURNING id",
    );
    pub const OVERTIME_ROBOTS: Stmt = Stmt::both(
        "SELECT channel FROM robot_sessions \
         WHERE state IN ('queued', 'offered', 'running') AND leave_requested = 0 AND created_at <= $1 \
         ORDER BY created_at LIMIT $2",
    );
    pub const DUE_SESSIONS: Stmt = Stmt::both(
        "SELECT id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches FROM robot_sessions \
         WHERE state = 'queued' AND run_at <= $1 ORDER BY run_at, id LIMIT $2",
    );
    pub const OFFER_SESSION: Stmt = Stmt::both(
        "UPDATE robot_sessions SET state = 'offered', agent_id = $2, offered_at = $3, updated_at = $3 \
         WHERE id = $1 AND state = 'queued'",
    );
    pub const ACCEPT_SESSION: Stmt = Stmt::both(
        "UPDATE robot_sessions SET state = 'running', attempts = attempts + 1, played = 0, lease_expires_at = $4, updated_at = $3 \
         WHERE id = $1 AND agent_id = $2 AND state = 'offered' RETURNING id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches",
    );
    pub const REJECT_SESSION: Stmt = Stmt::both(
        "UPDATE robot_sessions SET state = 'queued', agent_id = NULL, offered_at = NULL, run_at = $3, updated_at = $4 \
         WHERE id = $1 AND agent_id = $2 AND state = 'offered'",
    );
    pub const RENEW_LEASE: Stmt = Stmt::both(
        "UPDATE robot_sessions SET lease_expires_at = $3, updated_at = $4 \
         WHERE id = $1 AND agent_id = $2 AND state = 'running'",
    );
    pub const LOCK_SESSION: Stmt = Stmt::each(
        "SELECT id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches FROM robot_sessions WHERE id = $1",
        "SELECT id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches FROM robot_sessions WHERE id = $1 FOR UPDATE",
    );
    pub const SET_POSITION: Stmt =
        Stmt::both("UPDATE robot_sessions SET position_ms = $2, updated_at = $3 WHERE id = $1");
    pub const SET_PLAYING: Stmt = Stmt::both(
        "UPDATE robot_sessions SET position_ms = $2, updated_at = $3, played = 1 WHERE id = $1",
    );
    pub const FINISH_SESSION: Stmt = Stmt::both(
        "UPDATE robot_sessions SET state = $2, lease_expires_at = NULL, errors = $3, updated_at = $4, position_ms = $5 \
         WHERE id = $1",
    );
    pub const REQUEUE_SESSION: Stmt = Stmt::both(
        "UPDATE robot_sessions SET state = 'queued', agent_id = NULL, offered_at = NULL, lease_expires_at = NULL, \
         run_at = $2, errors = $3, redispatches = redispatches + $4, position_ms = $5, updated_at = $6 WHERE id = $1",
    );
    pub const EXPIRE_OFFERS: Stmt = Stmt::both(
        "UPDATE robot_sessions SET state = 'queued', agent_id = NULL, offered_at = NULL, updated_at = $2 \
         WHERE state = 'offered' AND offered_at < $1",
    );
    pub const LAPSED_LEASES: Stmt = Stmt::each(
        "SELECT id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches FROM robot_sessions \
         WHERE state = 'running' AND lease_expires_at < $1 ORDER BY id LIMIT 100",
        "SELECT id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches FROM robot_sessions \
         WHERE state = 'running' AND lease_expires_at < $1 ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED",
    );
    // ---- agent links (failover driven by the link)
    pub const OPEN_LINK: Stmt = Stmt::both(
        "INSERT INTO agent_links (agent_id, link_id, opened_at) VALUES ($1, $2, $3) \
         ON CONFLICT (agent_id) DO UPDATE SET link_id = excluded.link_id, opened_at = excluded.opened_at",
    );
    pub const CLOSE_LINK: Stmt =
        Stmt::both("DELETE FROM agent_links WHERE agent_id = $1 AND link_id = $2");
    pub const RECLAIM_SESSION: Stmt = Stmt::both(
        "UPDATE robot_sessions SET state = 'running', lease_expires_at = $3, \
         attempts = attempts + played, redispatches = redispatches - 1, updated_at = $4 \
         WHERE id = $1 AND agent_id = $2 AND state = 'queued' AND leave_requested = 0 RETURNING call_id, uid",
    );
    pub const RETURN_OFFERS: Stmt = Stmt::both(
        "UPDATE robot_sessions SET state = 'queued', agent_id = NULL, offered_at = NULL, updated_at = $2 \
         WHERE agent_id = $1 AND state = 'offered'",
    );
    pub const LINK_SESSIONS: Stmt = Stmt::each(
        "SELECT id, played FROM robot_sessions \
         WHERE agent_id = $1 AND state = 'running' ORDER BY id",
        "SELECT id, played FROM robot_sessions \
         WHERE agent_id = $1 AND state = 'running' ORDER BY id FOR UPDATE",
    );
    pub const REQUEUE_LINK_LOST: Stmt = Stmt::both(
        "UPDATE robot_sessions SET state = 'queued', offered_at = NULL, lease_expires_at = NULL, \
         run_at = $2, errors = $3, redispatches = redispatches + 1, attempts = attempts - $4, updated_at = $5 WHERE id = $1",
    );
    pub const PENDING_LEAVES: Stmt = Stmt::both(
        "SELECT id FROM robot_sessions \
         WHERE agent_id = $1 AND leave_requested = 1 AND state IN ('offered', 'running')",
    );
    pub const GET_SESSION: Stmt = Stmt::both(
        "SELECT id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches FROM robot_sessions WHERE id = $1",
    );
    pub const CHANNEL_SESSIONS: Stmt = Stmt::both(
        "SELECT id, call_id, channel, uid, audio, loop_audio, state, leave_requested, agent_id, lease_expires_at, attempts, max_attempts, run_at, position_ms, errors, redispatches FROM robot_sessions WHERE channel = $1 ORDER BY id",
    );
    pub const SESSIONS_BY_STATE: Stmt =
        Stmt::both("SELECT state, COUNT(*) FROM robot_sessions GROUP BY state ORDER BY state");
    pub const QUEUE_DEPTH: Stmt =
        Stmt::both("SELECT COUNT(*), MIN(created_at) FROM robot_sessions WHERE state = 'queued'");
    pub const REDISPATCHES: Stmt = Stmt::each(
        "SELECT COALESCE(SUM(redispatches), 0) FROM robot_sessions",
        "SELECT COALESCE(SUM(redispatches), 0)::BIGINT FROM robot_sessions",
    );
    pub const ROBOT_OPTIONS: Stmt = Stmt::both("SELECT options FROM robot_sessions WHERE id = $1");
}

impl Store {
    /// Queues robot session `r` for the call inside `tx`; `None` when the channel already
    /// has an active one. [`StoreError::LimitReached`] when its requester has too many.
    pub(crate) async fn insert_robot(
        tx: &mut Tx,
        call_id: CallId,
        channel: &ChannelName,
        r: &NewRobotSession,
        now_ms: i64,
    ) -> StoreResult<Option<SessionId>> {
        if r.max_per_requester > 0 {
            sql::LOCK_REQUESTER
                .bind(&r.requested_by)
                .execute(&mut *tx)
                .await?;
        }
        let id: Option<i64> = sql::INSERT_ROBOT_SESSION
            .bind(call_id)
            .bind(channel)
            .bind(&r.uid)
            .bind(db::to_json_list(&r.audio))
            .bind(i64::from(r.loop_audio))
            .bind(r.max_attempts)
            .bind(now_ms)
            .bind(&r.requested_by)
            .bind(r.options.as_deref())
            .scalar_optional(&mut *tx)
            .await?;
        let id = id.map(SessionId::new);
        if id.is_some() && r.max_per_requester > 0 {
            // Counted after the insert (under the requester's lock), so an invite
            // into a channel that already has its robot is never refused.
            let active: i64 = sql::ACTIVE_ROBOTS_OF
                .bind(&r.requested_by)
                .scalar_one(&mut *tx)
                .await?;
            if active > r.max_per_requester {
                // The caller drops `tx`: nothing of this request is written.
                return Err(StoreError::LimitReached(format!(
                    "uid {} already has {} active robots, the most allowed (DAPI_ROBOTS_PER_UID); end one with /dapi/quit/robot",
                    r.requested_by, r.max_per_requester
                )));
            }
        }
        Ok(id)
    }

    /// The call's robot must go: a queued session is cancelled, a running one told to
    /// leave. Returns (sessions cancelled, the running session told to leave).
    pub(crate) async fn robots_leave(
        tx: &mut Tx,
        call_id: CallId,
        now_ms: i64,
    ) -> StoreResult<(u64, Option<SessionId>)> {
        let cancelled = sql::CANCEL_QUEUED_ROBOT
            .bind(call_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let running: Option<i64> = sql::REQUEST_ROBOT_LEAVE
            .bind(call_id)
            .bind(now_ms)
            .scalar_optional(&mut *tx)
            .await?;
        Ok((cancelled, running.map(SessionId::new)))
    }

    /// Queues a robot for an existing channel unless one is already queued or present.
    pub async fn invite_robot(
        &self,
        channel: &ChannelName,
        requester: &Uid,
        robot: &NewRobotSession,
        now_ms: i64,
    ) -> StoreResult<InviteOutcome> {
        self.retrying("invite_robot", move || async move {
            let mut tx = self.begin_write().await?;
            let (call_id, _) = Self::lock_call(&mut tx, channel).await?;
            Self::add_member_if_absent(
                &mut tx,
                call_id,
                channel,
                requester.as_str(),
                Role::Invited,
                now_ms,
            )
            .await?;
            let id = Self::insert_robot(&mut tx, call_id, channel, robot, now_ms).await?;
            let (outcome, effect) = match id {
                Some(id) => (InviteOutcome::Queued(id), "applied"),
                None => (
                    InviteOutcome::AlreadyPresent,
                    "ignored: a robot is already queued or present",
                ),
            };
            let line = Line {
                source: "app",
                ..Line::server(
                    call_id,
                    requester.as_str(),
                    "robot_invited",
                    None,
                    effect,
                    now_ms,
                )
            };
            Self::record(&mut tx, line).await?;
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// Makes the robot of `channel` leave: a queued session is cancelled, a running one
    /// is marked to leave. Returns the id of a session that an agent must be told about.
    pub async fn quit_robot(
        &self,
        channel: &ChannelName,
        uid: &Uid,
        now_ms: i64,
    ) -> StoreResult<Option<SessionId>> {
        self.robot_quit(channel, Some(uid.as_str()), "app", None, now_ms)
            .await
    }

    /// As [`Store::quit_robot`], by the server: the channel's robot reached its maximum
    /// duration (recorded on the timeline as `robot_quit`, source `server`).
    pub async fn robot_overtime(
        &self,
        channel: &ChannelName,
        now_ms: i64,
    ) -> StoreResult<Option<SessionId>> {
        self.robot_quit(
            channel,
            None,
            "server",
            Some("the robot reached its maximum duration (DAPI_ROBOT_MAX_SECONDS)"),
            now_ms,
        )
        .await
    }

    /// Cancels the channel's queued robot or asks its running one to leave, and records
    /// who did (`robot_quit` on the timeline).
    async fn robot_quit(
        &self,
        channel: &ChannelName,
        uid: Option<&str>,
        source: &str,
        detail: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<SessionId>> {
        self.retrying("robot_quit", move || async move {
            let mut tx = self.begin_write().await?;
            let (call_id, _) = Self::lock_call(&mut tx, channel).await?;
            let (cancelled, running) = Self::robots_leave(&mut tx, call_id, now_ms).await?;
            let effect = if cancelled > 0 {
                "queued robot cancelled"
            } else if running.is_some() {
                "robot told to leave"
            } else {
                "ignored: no robot in the channel"
            };
            let line = Line {
                call_id,
                uid,
                kind: "robot_quit",
                code: None,
                detail,
                source,
                effect,
                now_ms,
            };
            Self::record(&mut tx, line).await?;
            tx.commit().await?;
            Ok(running)
        })
        .await
    }

    /// Channels whose active robot session was asked for at or before `created_before_ms`
    /// and has not been asked to leave.
    pub async fn overtime_robots(
        &self,
        created_before_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<ChannelName>> {
        let rows: Vec<String> = sql::OVERTIME_ROBOTS
            .bind(created_before_ms)
            .bind(limit)
            .scalars(self.reader())
            .await?;
        rows.into_iter()
            .map(|c| db::channel("robot_sessions", c))
            .collect()
    }

    /// Queued sessions due at `now`, oldest first.
    pub async fn due_sessions(&self, now_ms: i64, limit: i64) -> StoreResult<Vec<RobotSession>> {
        let rows = sql::DUE_SESSIONS
            .bind(now_ms)
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
        decode(rows)
    }

    /// queued -> offered to `agent` (compare-and-set: false if someone else won).
    pub async fn offer_session(
        &self,
        id: SessionId,
        agent: &str,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let q = sql::OFFER_SESSION.bind(id).bind(agent).bind(now_ms);
        Ok(self.write_one("offer_session", q).await? == 1)
    }

    /// offered -> running under a lease until `lease_until_ms`; counts an attempt.
    pub async fn accept_session(
        &self,
        id: SessionId,
        agent: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> StoreResult<Option<RobotSession>> {
        self.retrying("accept_session", move || async move {
            let mut tx = self.begin_write().await?;
            let row: Option<SessionRow> = sql::ACCEPT_SESSION
                .bind(id)
                .bind(agent)
                .bind(now_ms)
                .bind(lease_until_ms)
                .fetch_optional(&mut tx)
                .await?;
            let s = row.map(RobotSession::try_from).transpose()?;
            if let Some(s) = &s {
                let detail = format!("agent {agent}, attempt {}", s.attempts);
                let line = Line::server(
                    s.call_id,
                    &s.uid,
                    "robot_accepted",
                    Some(&detail),
                    "applied",
                    now_ms,
                );
                Self::record(&mut tx, line).await?;
            }
            tx.commit().await?;
            Ok(s)
        })
        .await
    }

    /// offered -> queued again (the agent declined); retried after a second.
    pub async fn reject_session(
        &self,
        id: SessionId,
        agent: &str,
        reason: &str,
        now_ms: i64,
    ) -> StoreResult<bool> {
        self.retrying("reject_session", move || async move {
            let mut tx = self.begin_write().await?;
            let n = sql::REJECT_SESSION
                .bind(id)
                .bind(agent)
                .bind(now_ms + 1000)
                .bind(now_ms)
                .execute(&mut tx)
                .await?;
            if n == 1 {
                tracing::info!(
                    session = id.get(),
                    agent,
                    reason,
                    "robot session rejected by agent"
                );
            }
            tx.commit().await?;
            Ok(n == 1)
        })
        .await
    }

    /// Extends the leases of `ids` held by `agent`; returns the ids it does not hold.
    pub async fn renew_leases(
        &self,
        agent: &str,
        ids: &[SessionId],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> StoreResult<Vec<SessionId>> {
        self.retrying("renew_leases", move || async move {
            let mut lost = Vec::new();
            let mut tx = self.begin_write().await?;
            for id in ids {
                if !Self::renew_lease(&mut tx, *id, agent, now_ms, lease_until_ms).await? {
                    lost.push(*id);
                }
            }
            tx.commit().await?;
            Ok(lost)
        })
        .await
    }

    /// Extends the lease of session `id` if `agent` holds it; false when it does not.
    async fn renew_lease(
        tx: &mut Tx,
        id: SessionId,
        agent: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> StoreResult<bool> {
        let n = sql::RENEW_LEASE
            .bind(id)
            .bind(agent)
            .bind(lease_until_ms)
            .bind(now_ms)
            .execute(tx)
            .await?;
        Ok(n == 1)
    }

    async fn lock_session(tx: &mut Tx, id: SessionId) -> StoreResult<Option<RobotSession>> {
        let row: Option<SessionRow> = sql::LOCK_SESSION.bind(id).fetch_optional(tx).await?;
        row.map(RobotSession::try_from).transpose()
    }

    /// An agent's status report: playing records the position; left is terminal;
    /// failed retries with backoff or marks the session dead ([`after_failure`]).
    pub async fn report_status(
        &self,
        id: SessionId,
        agent: &str,
        state: protocol::agent::SessionState,
        detail: &str,
        position_ms: Option<u64>,
        now_ms: i64,
    ) -> StoreResult<StatusOutcome> {
        use protocol::agent::SessionState as S;
        self.retrying("report_status", move || async move {
            let mut tx = self.begin_write().await?;
            let Some(s) = Self::lock_session(&mut tx, id).await? else {
                return Ok(StatusOutcome::NotHeld);
            };
            if s.agent_id.as_deref() != Some(agent)
                || !matches!(s.state, RobotState::Running | RobotState::Offered)
            {
                return Ok(StatusOutcome::NotHeld);
            }
            let pos = position_ms
                .map(|p| i64::try_from(p).unwrap_or(i64::MAX))
                .unwrap_or(s.position_ms);
            let outcome = match state {
                S::Joining | S::Playing => {
                    // `playing` also marks the attempt as started (see `after_link_loss`).
                    let stmt = if state == S::Playing {
                        sql::SET_PLAYING
                    } else {
                        sql::SET_POSITION
                    };
                    stmt.bind(id)
                        .bind(pos)
                        .bind(now_ms)
                        .execute(&mut tx)
                        .await?;
                    if state == S::Playing && s.position_ms == 0 && pos == 0 {
                        let line = Line::server(
                            s.call_id,
                            &s.uid,
                            "robot_playing",
                            None,
                            "applied",
                            now_ms,
                        );
                        Self::record(&mut tx, line).await?;
                    }
                    StatusOutcome::Now(s.state)
                }
                S::Left => {
                    sql::FINISH_SESSION
                        .bind(id)
                        .bind(RobotState::Left.as_str())
                        .bind(serde_json::to_string(&s.errors).unwrap_or_default())
                        .bind(now_ms)
                        .bind(pos)
                        .execute(&mut tx)
                        .await?;
                    let line = Line::server(
                        s.call_id,
                        &s.uid,
                        "robot_left",
                        Some(detail),
                        "applied",
                        now_ms,
                    );
                    Self::record(&mut tx, line).await?;
                    StatusOutcome::Now(RobotState::Left)
                }
                S::Failed => {
                    let mut errors = s.errors.clone();
                    errors.push(format!(
                        "attempt {} on {agent}: {detail}",
                        s.attempts.max(1)
                    ));
                    let next = Self::retry_or_end(&mut tx, &s, &errors, pos, 0, now_ms).await?;
                    let line = Line::server(
                        s.call_id,
                        &s.uid,
                        failure_kind(next, "robot_failed"),
                        Some(detail),
                        next.as_str(),
                        now_ms,
                    );
                    Self::record(&mut tx, line).await?;
                    StatusOutcome::Now(next)
                }
            };
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// Writes the step [`after_failure`] gives `s` (queued again after backoff, or
    /// ended), with its `errors`, counting `redispatch`. Returns the new state.
    async fn retry_or_end(
        tx: &mut Tx,
        s: &RobotSession,
        errors: &[String],
        position_ms: i64,
        redispatch: i64,
        now_ms: i64,
    ) -> StoreResult<RobotState> {
        let step = after_failure(s, now_ms);
        let errors_json = serde_json::to_string(errors).unwrap_or_else(|_| "[]".into());
        if step.next == RobotState::Queued {
            sql::REQUEUE_SESSION
                .bind(s.id)
                .bind(step.run_at)
                .bind(errors_json)
                .bind(redispatch)
                .bind(position_ms)
                .bind(now_ms)
                .execute(tx)
                .await?;
        } else {
            sql::FINISH_SESSION
                .bind(s.id)
                .bind(step.next.as_str())
                .bind(errors_json)
                .bind(now_ms)
                .bind(position_ms)
                .execute(tx)
                .await?;
        }
        Ok(step.next)
    }

    /// The rescuer: running sessions whose lease lapsed (their agent died) are queued
    /// again with their position, or dead when no attempt is left; offers unanswered
    /// since before `offer_deadline_ms` go back to the queue.
    pub async fn rescue_lapsed(
        &self,
        now_ms: i64,
        offer_deadline_ms: i64,
    ) -> StoreResult<RescueOutcome> {
        self.retrying("rescue_lapsed", move || async move {
            let mut out = RescueOutcome::default();
            let mut tx = self.begin_write().await?;
            out.offers_expired = sql::EXPIRE_OFFERS
                .bind(offer_deadline_ms)
                .bind(now_ms)
                .execute(&mut tx)
                .await?;
            let rows = sql::LAPSED_LEASES.bind(now_ms).fetch_all(&mut tx).await?;
            for s in decode(rows)? {
                let mut errors = s.errors.clone();
                let agent = s.agent_id.clone().unwrap_or_default();
                errors.push(format!(
                    "attempt {}: lease lapsed on agent {agent}",
                    s.attempts
                ));
                let next =
                    Self::retry_or_end(&mut tx, &s, &errors, s.position_ms, 1, now_ms).await?;
                let detail = format!("agent {agent} stopped renewing");
                let line = Line::server(
                    s.call_id,
                    &s.uid,
                    failure_kind(next, "robot_redispatched"),
                    Some(&detail),
                    next.as_str(),
                    now_ms,
                );
                Self::record(&mut tx, line).await?;
                match next {
                    RobotState::Queued => out.requeued.push(s.id),
                    _ => out.dead.push(s.id),
                }
            }
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    /// Agent `agent` connected over `link` (an id unique to this connection), saying it
    /// holds `held`: `link` becomes its current link (so the close of an earlier one
    /// changes nothing), the leases of the sessions it holds are renewed, and a session
    /// its previous link's close had queued again, which no other agent has taken yet, is
    /// given back to it (a reconnect, not a crash: nothing else plays it). Returns the ids
    /// of `held` it must leave.
    pub async fn open_link(
        &self,
        agent: &str,
        link: &str,
        held: &[SessionId],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> StoreResult<Vec<SessionId>> {
        self.retrying("open_link", move || async move {
            let mut lost = Vec::new();
            let mut tx = self.begin_write().await?;
            // First, so that a concurrent close of the previous link (on any instance)
            // is ordered before or after this whole registration.
            sql::OPEN_LINK
                .bind(agent)
                .bind(link)
                .bind(now_ms)
                .execute(&mut tx)
                .await?;
            for id in held {
                if Self::renew_lease(&mut tx, *id, agent, now_ms, lease_until_ms).await? {
                    continue;
                }
                let back: Option<(i64, String)> = sql::RECLAIM_SESSION
                    .bind(*id)
                    .bind(agent)
                    .bind(lease_until_ms)
                    .bind(now_ms)
                    .fetch_optional(&mut tx)
                    .await?;
                match back {
                    Some((call_id, uid)) => {
                        let detail = format!("agent {agent} reconnected before another took it");
                        let line = Line::server(
                            CallId::new(call_id),
                            &uid,
                            "robot_reclaimed",
                            Some(&detail),
                            RobotState::Running.as_str(),
                            now_ms,
                        );
                        Self::record(&mut tx, line).await?;
                    }
                    None => lost.push(*id),
                }
            }
            tx.commit().await?;
            Ok(lost)
        })
        .await
    }

    /// `agent`'s link `link` closed. If it is still the agent's current link, in one
    /// transaction: its unanswered offers go back to the queue, and each running session
    /// takes the step [`after_link_loss`] gives (queued again from its last reported
    /// position, counting a re-dispatch; or ended), with a line in `errors` and on the
    /// call's timeline.
    pub async fn close_link(
        &self,
        agent: &str,
        link: &str,
        now_ms: i64,
    ) -> StoreResult<LinkClosed> {
        self.retrying("close_link", move || async move {
            let mut out = LinkClosed::default();
            let mut tx = self.begin_write().await?;
            let current = sql::CLOSE_LINK
                .bind(agent)
                .bind(link)
                .execute(&mut tx)
                .await?;
            if current == 0 {
                tx.commit().await?;
                return Ok(out);
            }
            out.current = true;
            out.offers_returned = sql::RETURN_OFFERS
                .bind(agent)
                .bind(now_ms)
                .execute(&mut tx)
                .await?;
            let held: Vec<(i64, i64)> = sql::LINK_SESSIONS.bind(agent).fetch_all(&mut tx).await?;
            for (id, played) in held {
                let id = SessionId::new(id);
                let Some(s) = Self::lock_session(&mut tx, id).await? else {
                    continue;
                };
                let step = after_link_loss(&s, played != 0, now_ms);
                let mut errors = s.errors.clone();
                errors.push(format!(
                    "attempt {}: the link to agent {agent} closed ({})",
                    s.attempts.max(1),
                    if step.charged {
                        "before it played: counted as an attempt"
                    } else {
                        "while playing: not counted as an attempt"
                    }
                ));
                let errors_json = serde_json::to_string(&errors).unwrap_or_else(|_| "[]".into());
                if step.next == RobotState::Queued {
                    sql::REQUEUE_LINK_LOST
                        .bind(id)
                        .bind(step.run_at)
                        .bind(errors_json)
                        .bind(i64::from(!step.charged))
                        .bind(now_ms)
                        .execute(&mut tx)
                        .await?;
                    out.requeued.push(id);
                } else {
                    sql::FINISH_SESSION
                        .bind(id)
                        .bind(step.next.as_str())
                        .bind(errors_json)
                        .bind(now_ms)
                        .bind(s.position_ms)
                        .execute(&mut tx)
                        .await?;
                    out.ended.push(id);
                }
                let detail = format!(
                    "the link to agent {agent} closed; resumes at {} ms",
                    s.position_ms
                );
                let line = Line::server(
                    s.call_id,
                    &s.uid,
                    failure_kind(step.next, "robot_redispatched"),
                    Some(&detail),
                    step.next.as_str(),
                    now_ms,
                );
                Self::record(&mut tx, line).await?;
            }
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    /// Sessions held by `agent` that were asked to leave.
    pub async fn pending_leaves(&self, agent: &str) -> StoreResult<Vec<SessionId>> {
        let ids: Vec<i64> = sql::PENDING_LEAVES
            .bind(agent)
            .scalars(self.reader())
            .await?;
        Ok(ids.into_iter().map(SessionId::new).collect())
    }

    /// One robot session.
    pub async fn robot_session(&self, id: SessionId) -> StoreResult<Option<RobotSession>> {
        let row: Option<SessionRow> = sql::GET_SESSION
            .bind(id)
            .fetch_optional(self.reader())
            .await?;
        row.map(RobotSession::try_from).transpose()
    }

    /// Robot sessions of a channel, oldest first.
    pub async fn channel_sessions(&self, channel: &ChannelName) -> StoreResult<Vec<RobotSession>> {
        let rows = sql::CHANNEL_SESSIONS
            .bind(channel)
            .fetch_all(self.reader())
            .await?;
        decode(rows)
    }

    /// The stored options of a robot session (JSON), if it has any.
    pub async fn robot_options(&self, session_id: SessionId) -> StoreResult<Option<String>> {
        let v: Option<Option<String>> = sql::ROBOT_OPTIONS
            .bind(session_id)
            .scalar_optional(self.reader())
            .await?;
        Ok(v.flatten())
    }

    /// Queue figures.
    pub async fn queue_stats(&self, now_ms: i64) -> StoreResult<QueueStats> {
        let by_state: Vec<(String, i64)> = sql::SESSIONS_BY_STATE
            .query()
            .fetch_all(self.reader())
            .await?;
        let (depth, oldest): (i64, Option<i64>) =
            sql::QUEUE_DEPTH.query().fetch_one(self.reader()).await?;
        let redispatches: i64 = sql::REDISPATCHES.query().scalar_one(self.reader()).await?;
        Ok(QueueStats {
            by_state,
            depth,
            oldest_queued_age_ms: oldest.map(|t| (now_ms - t).max(0)).unwrap_or(0),
            redispatches,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(attempts: i64, leave_requested: bool) -> RobotSession {
        RobotSession {
            id: SessionId::new(1),
            call_id: CallId::new(1),
            channel: ChannelName::parse("ch").unwrap(),
            uid: "robot".into(),
            audio: vec!["default".into()],
            loop_audio: true,
            state: RobotState::Running,
            leave_requested,
            agent_id: Some("a".into()),
            lease_expires_at: Some(20_000),
            attempts,
            max_attempts: 3,
            run_at: 500,
            position_ms: 4200,
            errors: Vec::new(),
            redispatches: 0,
        }
    }

    #[test]
    fn a_link_lost_while_playing_is_queued_at_once_and_not_charged_however_often() {
        for attempts in [1, 3, 7] {
            let step = after_link_loss(&session(attempts, false), true, 10_000);
            assert_eq!(
                step,
                RetryStep {
                    next: RobotState::Queued,
                    run_at: 10_000,
                    charged: false
                },
                "attempts {attempts}"
            );
        }
    }

    #[test]
    fn a_link_lost_before_playing_is_a_failed_attempt_with_backoff_then_dead() {
        let step = after_link_loss(&session(1, false), false, 10_000);
        assert_eq!(
            step,
            RetryStep {
                next: RobotState::Queued,
                run_at: 11_000,
                charged: true
            }
        );
        assert_eq!(
            after_link_loss(&session(2, false), false, 10_000).run_at,
            12_000
        );
        assert_eq!(
            after_link_loss(&session(3, false), false, 10_000).next,
            RobotState::Dead
        );
    }

    #[test]
    fn a_link_lost_after_a_leave_request_cancels() {
        for played in [false, true] {
            assert_eq!(
                after_link_loss(&session(1, true), played, 10_000).next,
                RobotState::Cancelled
            );
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(3), 4000);
        assert_eq!(backoff_ms(10), 30_000);
        assert_eq!(backoff_ms(0), 1000);
        assert_eq!(backoff_ms(i64::MAX), 30_000);
    }

    #[test]
    fn a_failure_retries_after_backoff_until_the_attempts_are_used_up() {
        let step = after_failure(&session(1, false), 10_000);
        assert_eq!(
            step,
            RetryStep {
                next: RobotState::Queued,
                run_at: 11_000,
                charged: true
            }
        );
        assert_eq!(after_failure(&session(2, false), 10_000).run_at, 12_000);
        let dead = after_failure(&session(3, false), 10_000);
        assert_eq!((dead.next, dead.run_at), (RobotState::Dead, 500));
        assert_eq!(
            after_failure(&session(1, true), 10_000).next,
            RobotState::Cancelled
        );
        assert_eq!(
            failure_kind(RobotState::Queued, "robot_failed"),
            "robot_failed"
        );
        assert_eq!(failure_kind(RobotState::Dead, "robot_failed"), "robot_dead");
        assert_eq!(
            failure_kind(RobotState::Cancelled, "robot_failed"),
            "robot_dead"
        );
    }

    #[test]
    fn session_rows_with_unknown_states_or_bad_json_are_corrupt() {
        let row = |state: &str, audio: &str| -> SessionRow {
            (
                1,
                1,
                "ch".into(),
                "robot".into(),
                audio.into(),
                0,
                state.into(),
                0,
                None,
                None,
                0,
                3,
                0,
                0,
                "[]".into(),
                0,
            )
        };
        for st in RobotState::ALL {
            assert_eq!(
                RobotSession::try_from(row(st.as_str(), "[]"))
                    .unwrap()
                    .state,
                st
            );
        }
        for (state, audio, column) in [("zombie", "[]", "state"), ("queued", "{", "audio")] {
            match RobotSession::try_from(row(state, audio)) {
                Err(StoreError::Corrupt {
                    table: "robot_sessions",
                    column: c,
                    ..
                }) => assert_eq!(c, column),
                other => panic!("{other:?}"),
            }
        }
        // A channel the store would never have written (not Agora's alphabet) is corrupt
        // too: it is not handed on as a `ChannelName`.
        let mut bad_channel = row("queued", "[]");
        bad_channel.2 = "a/b".into();
        match RobotSession::try_from(bad_channel) {
            Err(StoreError::Corrupt {
                table,
                column,
                value,
            }) => assert_eq!(
                (table, column, value.as_str()),
                ("robot_sessions", "channel", "a/b")
            ),
            other => panic!("{other:?}"),
        }
    }
}
