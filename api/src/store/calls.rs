//! Calls: the call row, its members (`call/msg` rows), its timeline, and the deadline
//! sweeps (ring timeouts, heartbeats). A call's input is applied inside one transaction:
//! lock the call, load the snapshot, run [`call_state::apply`], write the transition and
//! its timeline line ([`call_state::timeline_line`]).

use serde::Serialize;

use super::db::{self, Stmt, Tx};
use super::robot::NewRobotSession;
use super::{CallId, Store, StoreError, StoreResult};
use crate::call_state::{self, CallSnapshot, CallState, Input, Member, Role, Transition};
use crate::domain::{ChannelName, MsgStatus, Uid};

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
    pub id: CallId,
    /// Channel.
    pub channel: ChannelName,
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
    pub channel: ChannelName,
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

/// The columns of a call row, in the order [`CallRecord`] reads them.
type CallRow = (i64, String, String, String, Option<i64>);

fn call_state(state: String) -> StoreResult<CallState> {
    CallState::parse(&state).ok_or_else(|| db::corrupt("calls", "state", state))
}

fn role(role: String) -> StoreResult<Role> {
    Role::parse(&role).ok_or_else(|| db::corrupt("call_members", "role", role))
}

fn msg_status(status: i64) -> StoreResult<MsgStatus> {
    MsgStatus::from_i64(status).ok_or_else(|| db::corrupt("call_members", "status", status))
}

impl TryFrom<CallRow> for CallRecord {
    type Error = StoreError;
    fn try_from((id, channel, caller_uid, state, end_code): CallRow) -> StoreResult<Self> {
        Ok(Self {
            id: CallId::new(id),
            channel: db::channel("calls", channel)?,
            caller_uid,
            state: call_state(state)?,
            end_code,
        })
    }
}

/// A due heartbeat: the member's channel and uid.
fn heartbeat_row((channel, uid): (String, String)) -> StoreResult<(ChannelName, Uid)> {
    let uid = Uid::parse(&uid).map_err(|_| db::corrupt("call_members", "uid", &uid))?;
    Ok((db::channel("call_members", channel)?, uid))
}

/// The columns of a `call/msg` row, in the order [`MessageRow`] reads them.
type MessageColumns = (
    i64,
    String,
    String,
    i64,
    i64,
    Option<String>,
    String,
    String,
);

impl TryFrom<MessageColumns> for MessageRow {
    type Error = StoreError;
    fn try_from(
        (id, uid, channel, status, created_at_ms, extra_msg, src_uid, r): MessageColumns,
    ) -> StoreResult<Self> {
        Ok(Self {
            id,
            uid,
            channel: db::channel("call_members", channel)?,
            status: msg_status(status)?,
            created_at_ms,
            extra_msg,
            src_uid,
            role: role(r)?,
        })
    }
}

/// The columns of a member row as the state machine reads it.
type MemberRow = (String, String, i64, i64);

impl TryFrom<MemberRow> for Member {
    type Error = StoreError;
    fn try_from((uid, r, status, joined): MemberRow) -> StoreResult<Self> {
        Ok(Self {
            uid: Uid::parse(&uid).map_err(|_| db::corrupt("call_members", "uid", &uid))?,
            role: role(r)?,
            status: msg_status(status)?,
            joined: joined != 0,
        })
    }
}

/// The columns of a timeline row, in the order [`TimelineEntry`] reads them.
type EventRow = (
    i64,
    Option<String>,
    String,
    Option<i64>,
    Option<String>,
    String,
    String,
    i64,
);

impl From<EventRow> for TimelineEntry {
    fn from((id, uid, kind, code, detail, source, effect, created_at_ms): EventRow) -> Self {
        Self {
            id,
            uid,
            kind,
            code,
            detail,
            source,
            effect,
            created_at_ms,
        }
    }
}

/// One line of a call's timeline, as written (see [`Store::record`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Line<'a> {
    /// The call.
    pub call_id: CallId,
    /// Who reported it.
    pub uid: Option<&'a str>,
    /// `event`, `created`, `robot_accepted`, ...
    pub kind: &'a str,
    /// The event code, when it has one.
    pub code: Option<i64>,
    /// Free text.
    pub detail: Option<&'a str>,
    /// `app` or `server`.
    pub source: &'a str,
    /// What it did.
    pub effect: &'a str,
    /// When, unix ms.
    pub now_ms: i64,
}

impl<'a> Line<'a> {
    /// A line by the server about a robot of the call (`robot_accepted`, `robot_left`, ...).
    pub(crate) fn server(
        call_id: CallId,
        uid: &'a str,
        kind: &'a str,
        detail: Option<&'a str>,
        effect: &'a str,
        now_ms: i64,
    ) -> Self {
        Self {
            call_id,
            uid: Some(uid),
            kind,
            code: None,
            detail,
            source: "server",
            effect,
            now_ms,
        }
    }
}

mod sql {
    use super::Stmt;

    pub const INSERT_CALL: Stmt = Stmt::both(
        "INSERT INTO calls (channel, caller_uid, kind, state, extra_msg, created_at, ring_deadline) \
         VALUES ($1, $2, $3, 'ringing', $4, $5, $6) RETURNING id",
    );
    pub const INSERT_MEMBER: Stmt = Stmt::both(
        "INSERT INTO call_members (call_id, channel, uid, role, status, joined, created_at, heartbeat_deadline) \
         VALUES ($1, $2, $3, $4, 0, $5, $6, $7)",
    );
    pub const INSERT_MEMBER_IF_ABSENT: Stmt = Stmt::both(
        "INSERT INTO call_members (call_id, channel, uid, role, status, joined, created_at, heartbeat_deadline) \
         VALUES ($1, $2, $3, $4, 0, $5, $6, $7) ON CONFLICT (call_id, uid) DO NOTHING",
    );
    pub const INSERT_EVENT: Stmt = Stmt::both(
        "INSERT INTO call_events (call_id, uid, kind, code, detail, source, effect, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    );
    pub const CALLEES: Stmt = Stmt::both(
        "SELECT uid FROM call_members WHERE call_id = $1 AND role = 'callee' ORDER BY id",
    );
    pub const FIND_CALL: Stmt =
        Stmt::both("SELECT id, channel, caller_uid, state, end_code FROM calls WHERE channel = $1");
    pub const RECENT_MESSAGES: Stmt = Stmt::both(
        "SELECT m.id, m.uid, m.channel, m.status, m.created_at, c.extra_msg, c.caller_uid, m.role \
         FROM call_members m JOIN calls c ON c.id = m.call_id \
         WHERE m.uid = $1 AND m.created_at >= $2 AND m.role IN ('caller', 'callee') \
         ORDER BY m.created_at DESC, m.id DESC LIMIT 200",
    );
    pub const MARK_FETCHED: Stmt = Stmt::each(
        "UPDATE call_members SET status = 1 WHERE id IN (SELECT value FROM json_each($1)) AND status = 0",
        "UPDATE call_members SET status = 1 WHERE id = ANY(SELECT jsonb_array_elements_text($1::jsonb)::BIGINT) AND status = 0",
    );
    // SQLite: BEGIN IMMEDIATE already holds the write lock, no row lock needed.
    pub const LOCK_CALL: Stmt = Stmt::each(
        "SELECT id, state FROM calls WHERE channel = $1",
        "SELECT id, state FROM calls WHERE channel = $1 FOR UPDATE",
    );
    pub const CALL_MEMBERS: Stmt = Stmt::both(
        "SELECT uid, role, status, joined FROM call_members WHERE call_id = $1 ORDER BY id",
    );
    pub const SET_MEMBER_STATUS: Stmt = Stmt::each(
        "UPDATE call_members SET status = $3, \
         heartbeat_deadline = CASE WHEN $3 = 2 THEN NULL ELSE heartbeat_deadline END \
         WHERE call_id = $1 AND uid = $2 AND status < $3",
        "UPDATE call_members SET status = $3, \
         heartbeat_deadline = CASE WHEN $3::BIGINT = 2 THEN NULL ELSE heartbeat_deadline END \
         WHERE call_id = $1 AND uid = $2 AND status < $3",
    );
    pub const SET_MEMBER_JOINED: Stmt =
        Stmt::both("UPDATE call_members SET joined = 1 WHERE call_id = $1 AND uid = $2");
    pub const SET_HEARTBEAT_DEADLINE: Stmt = Stmt::both(
        "UPDATE call_members SET heartbeat_deadline = $3 \
         WHERE call_id = $1 AND uid = $2 AND status < 2",
    );
    pub const CLEAR_HEARTBEAT_DEADLINE: Stmt = Stmt::both(
        "UPDATE call_members SET heartbeat_deadline = NULL \
         WHERE call_id = $1 AND uid = $2 AND heartbeat_deadline <= $3",
    );
    pub const SET_CALL_CONNECTED: Stmt = Stmt::both(
        "UPDATE calls SET state = 'connected', connected_at = $2, ring_deadline = NULL \
         WHERE id = $1 AND state = 'ringing'",
    );
    pub const SET_CALL_ENDED: Stmt = Stmt::both(
        "UPDATE calls SET state = 'ended', end_code = $2, ended_at = $3, ring_deadline = NULL \
         WHERE id = $1 AND state <> 'ended'",
    );
    pub const TIMELINE: Stmt = Stmt::both(
        "SELECT id, uid, kind, code, detail, source, effect, created_at \
         FROM call_events WHERE call_id = $1 ORDER BY id",
    );
    pub const CALLS_BY_STATE: Stmt = Stmt::both("SELECT state, COUNT(*) FROM calls GROUP BY state");
    // An active member: a row below 2 in a call that has not ended, or the caller of a call
    // every callee rejected (1002) shortly after it ended (the spec's invite-the-robot flow).
    pub const IS_MEMBER: Stmt = Stmt::both(
        "SELECT (SELECT COUNT(*) FROM call_members m WHERE m.call_id = c.id AND m.uid = $2 \
         AND ((c.state <> 'ended' AND m.status < 2) \
         OR (m.role = 'caller' AND c.state = 'ended' AND c.end_code = 1002 AND c.ended_at >= $3))) \
         FROM calls c WHERE c.channel = $1",
    );
    pub const WAS_MEMBER: Stmt = Stmt::both(
        "SELECT (SELECT COUNT(*) FROM call_members m WHERE m.call_id = c.id AND m.uid = $2) FROM calls c WHERE c.channel = $1",
    );
    pub const DUE_RING_TIMEOUTS: Stmt = Stmt::both(
        "SELECT channel FROM calls WHERE ring_deadline <= $1 ORDER BY ring_deadline LIMIT $2",
    );
    pub const DUE_HEARTBEATS: Stmt = Stmt::both(
        "SELECT channel, uid FROM call_members \
         WHERE heartbeat_deadline <= $1 AND status < 2 ORDER BY heartbeat_deadline LIMIT $2",
    );
}

impl Store {
    /// Writes one line on a call's timeline inside `tx`.
    pub(crate) async fn record(tx: &mut Tx, l: Line<'_>) -> StoreResult<()> {
        sql::INSERT_EVENT
            .bind(l.call_id)
            .bind(l.uid)
            .bind(l.kind)
            .bind(l.code)
            .bind(l.detail)
            .bind(l.source)
            .bind(l.effect)
            .bind(l.now_ms)
            .execute(tx)
            .await?;
        Ok(())
    }

    /// Locks the call of `channel` for the rest of `tx`: its id and state.
    pub(crate) async fn lock_call(
        tx: &mut Tx,
        channel: &ChannelName,
    ) -> StoreResult<(CallId, String)> {
        let call: Option<(i64, String)> = sql::LOCK_CALL.bind(channel).fetch_optional(tx).await?;
        let (id, state) =
            call.ok_or_else(|| StoreError::NotFound(format!("unknown channel {channel}")))?;
        Ok((CallId::new(id), state))
    }

    /// Adds `uid` to the call as `role` unless it is a member already.
    pub(crate) async fn add_member_if_absent(
        tx: &mut Tx,
        call_id: CallId,
        channel: &ChannelName,
        uid: &str,
        role: Role,
        now_ms: i64,
    ) -> StoreResult<()> {
        sql::INSERT_MEMBER_IF_ABSENT
            .bind(call_id)
            .bind(channel)
            .bind(uid)
            .bind(role.as_str())
            .bind(0_i64)
            .bind(now_ms)
            .bind(None::<i64>)
            .execute(tx)
            .await?;
        Ok(())
    }

    /// Creates a call with its member rows (and robot session) in one transaction.
    pub async fn create_call(&self, call: &NewCall) -> StoreResult<CallId> {
        let id = self
            .retrying("create_call", move || async move {
                let mut tx = self.begin_write().await?;
                let id = Self::insert_call(&mut tx, call).await?;
                tx.commit().await?;
                Ok(id)
            })
            .await?;
        metrics::counter!("dapi_calls_created_total", "kind" => call.kind.as_str()).increment(1);
        Ok(id)
    }

    /// Creates many calls in one transaction (imports, benchmarks).
    pub async fn create_calls_bulk(&self, calls: &[NewCall]) -> StoreResult<()> {
        self.retrying("create_calls_bulk", move || async move {
            let mut tx = self.begin_write().await?;
            for c in calls {
                Self::insert_call(&mut tx, c).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Inserts a call, its members, its pushes and its robot session inside `tx`.
    pub(crate) async fn insert_call(tx: &mut Tx, c: &NewCall) -> StoreResult<CallId> {
        let inserted = sql::INSERT_CALL
            .bind(&c.channel)
            .bind(&c.caller)
            .bind(c.kind.as_str())
            .bind(c.extra_msg.as_deref())
            .bind(c.now_ms)
            .bind(c.ring_deadline_ms)
            .scalar_one(&mut *tx)
            .await;
        let call_id = match inserted {
            Ok(id) => CallId::new(id),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                return Err(StoreError::Conflict(format!(
                    "channel {} exists",
                    c.channel
                )));
            }
            Err(e) => return Err(e.into()),
        };
        sql::INSERT_MEMBER
            .bind(call_id)
            .bind(&c.channel)
            .bind(&c.caller)
            .bind(Role::Caller.as_str())
            .bind(1_i64)
            .bind(c.now_ms)
            .bind(Some(c.caller_heartbeat_deadline_ms))
            .execute(&mut *tx)
            .await?;
        // Each callee once, in order, and never the caller: a uid named twice in
        // `dst_uid` (or a task's list) would break the (call, uid) unique key.
        let mut seen = std::collections::HashSet::new();
        let callees = c
            .callees
            .iter()
            .filter(|u| *u != &c.caller && seen.insert(u.as_str()));
        for callee in callees {
            sql::INSERT_MEMBER
                .bind(call_id)
                .bind(&c.channel)
                .bind(callee)
                .bind(Role::Callee.as_str())
                .bind(0_i64)
                .bind(c.now_ms)
                .bind(None::<i64>)
                .execute(&mut *tx)
                .await?;
        }
        if !c.callees.is_empty() {
            // The outbox: one `call` push per callee device, with the call.
            Self::enqueue_call_pushes(tx, call_id, c.now_ms, c.ring_deadline_ms).await?;
        }
        let app_line = |kind| Line {
            call_id,
            uid: Some(c.caller.as_str()),
            kind,
            code: None,
            detail: None,
            source: "app",
            effect: "applied",
            now_ms: c.now_ms,
        };
        Self::record(tx, app_line("created")).await?;
        if let Some(r) = &c.robot {
            Self::insert_robot(tx, call_id, &c.channel, r, c.now_ms).await?;
            Self::record(tx, app_line("robot_queued")).await?;
        }
        Ok(call_id)
    }

    /// The call of a channel.
    pub async fn find_call(&self, channel: &ChannelName) -> StoreResult<Option<CallRecord>> {
        let row: Option<CallRow> = sql::FIND_CALL
            .bind(channel)
            .fetch_optional(self.reader())
            .await?;
        row.map(CallRecord::try_from).transpose()
    }

    /// Who the call of `channel` is between: its caller and its callees (in the order
    /// called; not those invited later). `None`: no such call.
    pub async fn call_parties(
        &self,
        channel: &ChannelName,
    ) -> StoreResult<Option<(String, Vec<String>)>> {
        let Some(call) = self.find_call(channel).await? else {
            return Ok(None);
        };
        let callees: Vec<String> = sql::CALLEES.bind(call.id).scalars(self.reader()).await?;
        Ok(Some((call.caller_uid, callees)))
    }

    /// Rows of `call/msg` for `uid` created since `since_ms`, newest first; callee rows
    /// at status 0 move to 1 (the rows show the status before the move).
    pub async fn recent_messages(&self, uid: &Uid, since_ms: i64) -> StoreResult<Vec<MessageRow>> {
        let rows: Vec<MessageColumns> = sql::RECENT_MESSAGES
            .bind(uid)
            .bind(since_ms)
            .fetch_all(self.reader())
            .await?;
        let out = rows
            .into_iter()
            .map(MessageRow::try_from)
            .collect::<StoreResult<Vec<_>>>()?;
        let fetched: Vec<i64> = out
            .iter()
            .filter(|r| r.role == Role::Callee && r.status == MsgStatus::Created)
            .map(|r| r.id)
            .collect();
        if !fetched.is_empty() {
            // One compare-and-set statement: only rows still at 0 move to 1.
            let ids = serde_json::to_string(&fetched).unwrap_or_else(|_| "[]".into());
            self.write_one("recent_messages", sql::MARK_FETCHED.bind(ids))
                .await?;
        }
        Ok(out)
    }

    /// Applies one input to the call of `channel` through the state machine, records it
    /// on the timeline, and returns the transition.
    pub async fn apply_input(
        &self,
        channel: &ChannelName,
        input: &Input,
        meta: &InputMeta,
    ) -> StoreResult<Transition> {
        let t = self
            .retrying("apply_input", move || async move {
                let mut tx = self.begin_write().await?;
                let t = Self::apply_in(&mut tx, channel, input, meta).await?;
                tx.commit().await?;
                Ok(t)
            })
            .await?;
        if let Some((CallState::Ended, code)) = t.new_state {
            let code = code.map(|c| c.to_string()).unwrap_or_default();
            metrics::counter!("dapi_calls_ended_total", "code" => code).increment(1);
        }
        Ok(t)
    }

    async fn apply_in(
        tx: &mut Tx,
        channel: &ChannelName,
        input: &Input,
        meta: &InputMeta,
    ) -> StoreResult<Transition> {
        let (call_id, state) = Self::lock_call(tx, channel).await?;
        let rows: Vec<MemberRow> = sql::CALL_MEMBERS.bind(call_id).fetch_all(&mut *tx).await?;
        let snap = CallSnapshot {
            state: call_state(state)?,
            members: rows
                .into_iter()
                .map(Member::try_from)
                .collect::<StoreResult<_>>()?,
        };
        let t = call_state::apply(&snap, input);
        for (uid, role) in &t.add_members {
            sql::INSERT_MEMBER
                .bind(call_id)
                .bind(channel)
                .bind(uid)
                .bind(role.as_str())
                .bind(0_i64)
                .bind(meta.now_ms)
                .bind(None::<i64>)
                .execute(&mut *tx)
                .await?;
        }
        for (uid, status) in &t.status_changes {
            // Leaving clears the heartbeat deadline: nothing more to expire.
            sql::SET_MEMBER_STATUS
                .bind(call_id)
                .bind(uid)
                .bind(*status as i64)
                .execute(&mut *tx)
                .await?;
        }
        for uid in &t.joined {
            sql::SET_MEMBER_JOINED
                .bind(call_id)
                .bind(uid)
                .execute(&mut *tx)
                .await?;
        }
        let reporter = input.reporter();
        if let Input::HeartbeatExpired { uid } = input {
            // handled: the sweeper must not pick this deadline again
            sql::CLEAR_HEARTBEAT_DEADLINE
                .bind(call_id)
                .bind(uid)
                .bind(meta.now_ms)
                .execute(&mut *tx)
                .await?;
        }
        if let (Some(uid), Some(deadline)) = (reporter, meta.heartbeat_deadline_ms) {
            // Only members still in the call (status < 2) get a new deadline.
            sql::SET_HEARTBEAT_DEADLINE
                .bind(call_id)
                .bind(uid)
                .bind(deadline)
                .execute(&mut *tx)
                .await?;
        }
        match t.new_state {
            Some((CallState::Connected, _)) => {
                sql::SET_CALL_CONNECTED
                    .bind(call_id)
                    .bind(meta.now_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            Some((_, end_code)) => {
                sql::SET_CALL_ENDED
                    .bind(call_id)
                    .bind(end_code)
                    .bind(meta.now_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {}
        }
        for uid in &t.cancel_push {
            // The outbox: cancel pushes for callees who never answered.
            Self::enqueue_cancel_pushes(tx, call_id, uid, meta.now_ms).await?;
        }
        if t.robot_leave {
            Self::robots_leave(tx, call_id, meta.now_ms).await?;
        }
        if let Some(line) = call_state::timeline_line(input, &t, meta.always_record) {
            let l = Line {
                call_id,
                uid: reporter.map(Uid::as_str),
                kind: meta.kind,
                code: line.code,
                detail: meta.detail.as_deref(),
                source: meta.source,
                effect: &line.effect,
                now_ms: meta.now_ms,
            };
            Self::record(tx, l).await?;
        }
        Ok(t)
    }

    /// The timeline of a channel's call, in order.
    pub async fn timeline(&self, channel: &ChannelName) -> StoreResult<Vec<TimelineEntry>> {
        let Some(call) = self.find_call(channel).await? else {
            return Err(StoreError::NotFound(format!("unknown channel {channel}")));
        };
        let rows: Vec<EventRow> = sql::TIMELINE.bind(call.id).fetch_all(self.reader()).await?;
        Ok(rows.into_iter().map(TimelineEntry::from).collect())
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
        channel: &ChannelName,
        uid: &Uid,
        rejected_since_ms: i64,
    ) -> StoreResult<Option<bool>> {
        let n: Option<i64> = sql::IS_MEMBER
            .bind(channel)
            .bind(uid)
            .bind(rejected_since_ms)
            .scalar_optional(self.reader())
            .await?;
        Ok(n.map(|n| n > 0))
    }

    /// Whether `uid` is or was a member of the call of `channel`, whatever its status
    /// (`None`: no such channel): what reading the timeline and reporting about the call
    /// (events, heartbeats, quitting the robot) require.
    pub async fn was_member(&self, channel: &ChannelName, uid: &Uid) -> StoreResult<Option<bool>> {
        let n: Option<i64> = sql::WAS_MEMBER
            .bind(channel)
            .bind(uid)
            .scalar_optional(self.reader())
            .await?;
        Ok(n.map(|n| n > 0))
    }

    /// Calls per state.
    pub async fn calls_by_state(&self) -> StoreResult<Vec<(String, i64)>> {
        Ok(sql::CALLS_BY_STATE.query().fetch_all(self.reader()).await?)
    }

    /// Channels whose ring deadline has passed.
    pub async fn due_ring_timeouts(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<ChannelName>> {
        let rows: Vec<String> = sql::DUE_RING_TIMEOUTS
            .bind(now_ms)
            .bind(limit)
            .scalars(self.reader())
            .await?;
        rows.into_iter().map(|c| db::channel("calls", c)).collect()
    }

    /// (channel, uid) pairs whose heartbeat deadline has passed.
    pub async fn due_heartbeats(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<(ChannelName, Uid)>> {
        let rows: Vec<(String, String)> = sql::DUE_HEARTBEATS
            .bind(now_ms)
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
        rows.into_iter().map(heartbeat_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_with_values_the_store_never_writes_are_corrupt_not_defaults() {
        let corrupt = |r: StoreResult<()>| match r {
            Err(StoreError::Corrupt {
                table,
                column,
                value,
            }) => (table, column, value),
            other => panic!("{other:?}"),
        };
        let call = |state: &str| -> CallRow { (1, "ch".into(), "a".into(), state.into(), None) };
        assert_eq!(
            CallRecord::try_from(call("ringing")).unwrap().state,
            CallState::Ringing
        );
        assert_eq!(
            corrupt(CallRecord::try_from(call("paused")).map(drop)),
            ("calls", "state", "paused".to_owned())
        );
        let member =
            |uid: &str, role: &str, status| -> MemberRow { (uid.into(), role.into(), status, 1) };
        assert!(Member::try_from(member("a", "callee", 1)).is_ok());
        assert_eq!(
            corrupt(Member::try_from(member("", "callee", 1)).map(drop)),
            ("call_members", "uid", String::new())
        );
        assert_eq!(
            corrupt(Member::try_from(member("a", "host", 1)).map(drop)),
            ("call_members", "role", "host".to_owned())
        );
        assert_eq!(
            corrupt(Member::try_from(member("a", "callee", 7)).map(drop)),
            ("call_members", "status", "7".to_owned())
        );
    }

    #[test]
    fn a_stored_channel_or_uid_that_does_not_parse_is_corrupt() {
        let corrupt = |e: StoreError| match e {
            StoreError::Corrupt {
                table,
                column,
                value,
            } => (table, column, value),
            other => panic!("{other:?}"),
        };
        let row: CallRow = (7, "ch_ok".into(), "a".into(), "ringing".into(), None);
        let call = CallRecord::try_from(row).unwrap();
        assert_eq!((call.id, call.channel.as_str()), (CallId::new(7), "ch_ok"));
        let row: CallRow = (7, "a/b".into(), "a".into(), "ringing".into(), None);
        assert_eq!(
            corrupt(CallRecord::try_from(row).unwrap_err()),
            ("calls", "channel", "a/b".to_owned())
        );
        // The sweeper's heartbeat rows: channel and uid are parsed, not passed on as text.
        let (channel, uid) = heartbeat_row(("ch_ok".into(), "b".into())).unwrap();
        assert_eq!((channel.as_str(), uid.as_str()), ("ch_ok", "b"));
        assert_eq!(
            corrupt(heartbeat_row(("é".into(), "b".into())).unwrap_err()),
            ("call_members", "channel", "é".to_owned())
        );
        assert_eq!(
            corrupt(heartbeat_row(("ch_ok".into(), String::new())).unwrap_err()),
            ("call_members", "uid", String::new())
        );
    }
}
