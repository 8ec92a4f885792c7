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

use serde::Serialize;

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
    /// From the stored form.
    pub fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "offered" => Self::Offered,
            "running" => Self::Running,
            "left" => Self::Left,
            "cancelled" => Self::Cancelled,
            _ => Self::Dead,
        }
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
    pub id: i64,
    /// The call it belongs to.
    pub call_id: i64,
    /// Channel.
    pub channel: String,
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

/// The columns of a session row, in the order [`RobotSession::from_row`] reads them.
pub(crate) type SessionRow = (
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

impl RobotSession {
    pub(crate) fn from_row(r: SessionRow) -> Self {
        Self {
            id: r.0,
            call_id: r.1,
            channel: r.2,
            uid: r.3,
            audio: serde_json::from_str(&r.4).unwrap_or_default(),
            loop_audio: r.5 != 0,
            state: RobotState::parse(&r.6),
            leave_requested: r.7 != 0,
            agent_id: r.8,
            lease_expires_at: r.9,
            attempts: r.10,
            max_attempts: r.11,
            run_at: r.12,
            position_ms: r.13,
            errors: serde_json::from_str(&r.14).unwrap_or_default(),
            redispatches: r.15,
        }
    }
}

/// Delay before attempt `attempts + 1` after a failure: 1 s, 2 s, 4 s, ... capped at 30 s.
pub fn backoff_ms(attempts: i64) -> i64 {
    let exp = u32::try_from(attempts.clamp(1, 16) - 1).unwrap_or(0);
    (1000_i64 << exp).min(30_000)
}

/// What becomes of a running session whose agent's link closed (the agent was killed, its
/// host went away, or it dropped the link): the rule of DESIGN.md decision 11.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkLossStep {
    /// `Queued` (offered again from `run_at`), or `Cancelled` / `Dead`.
    pub next: RobotState,
    /// When it may be offered again (`Queued` only).
    pub run_at: i64,
    /// Whether the attempt counts against `max_attempts`.
    pub charged: bool,
}

/// The next step of session `s` after its agent's link closed at `now_ms`; `played`: the
/// agent reported `playing` since it accepted the session.
///
/// - It was asked to leave anyway: `cancelled`.
/// - It was playing: the agent failed, not the session. Queued again at once, from its last
///   reported position, and the attempt is given back, so a session survives any number of
///   agent crashes (each still counts as a re-dispatch and leaves a line in `errors`).
/// - It had not started playing: this may be the session killing its agents (a bad asset,
///   a crash on join), so the attempt counts as a failed one, with the usual backoff, and
///   the session is `dead` once its attempts are used up.
pub fn after_link_loss(s: &RobotSession, played: bool, now_ms: i64) -> LinkLossStep {
    if s.leave_requested {
        LinkLossStep {
            next: RobotState::Cancelled,
            run_at: s.run_at,
            charged: true,
        }
    } else if played {
        LinkLossStep {
            next: RobotState::Queued,
            run_at: now_ms,
            charged: false,
        }
    } else if s.attempts < s.max_attempts {
        LinkLossStep {
            next: RobotState::Queued,
            run_at: now_ms + backoff_ms(s.attempts),
            charged: true,
        }
    } else {
        LinkLossStep {
            next: RobotState::Dead,
            run_at: s.run_at,
            charged: true,
        }
    }
}

/// What closing an agent's link did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkClosed {
    /// The link was still the agent's current one. When false nothing changed: the agent
    /// registered again over a newer link, which holds its sessions.
    pub current: bool,
    /// Running sessions queued again.
    pub requeued: Vec<i64>,
    /// Running sessions ended instead (`cancelled`, or `dead` with no attempt left).
    pub ended: Vec<i64>,
    /// Offers the agent had not answered, back in the queue.
    pub offers_returned: u64,
}

/// What a rescue sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RescueOutcome {
    /// Sessions whose lease lapsed and that were queued again.
    pub requeued: Vec<i64>,
    /// Sessions whose lease lapsed with no attempts left.
    pub dead: Vec<i64>,
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

/// The robot-session methods, written once over each backend's `sql` module.
macro_rules! robot_store_impl {
    ($store:ident, $db:ty) => {
        impl $store {
            /// Queued sessions due at `now`, oldest first.
            pub async fn due_sessions(
                &self,
                now_ms: i64,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::RobotSession>> {
                let rows: Vec<$crate::store::robot::SessionRow> = sqlx::query_as(sql::DUE_SESSIONS)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(self.read_pool())
                    .await?;
                Ok(rows
                    .into_iter()
                    .map($crate::store::RobotSession::from_row)
                    .collect())
            }

            /// queued -> offered to `agent` (compare-and-set: false if someone else won).
            pub async fn offer_session(
                &self,
                id: i64,
                agent: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(sql::OFFER_SESSION)
                    .bind(id)
                    .bind(agent)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(n == 1)
            }

            /// offered -> running under a lease until `lease_until_ms`; counts an attempt.
            pub async fn accept_session(
                &self,
                id: i64,
                agent: &str,
                now_ms: i64,
                lease_until_ms: i64,
            ) -> $crate::store::StoreResult<Option<$crate::store::RobotSession>> {
                let mut tx = self.begin_write().await?;
                let row: Option<$crate::store::robot::SessionRow> =
                    sqlx::query_as(sql::ACCEPT_SESSION)
                        .bind(id)
                        .bind(agent)
                        .bind(now_ms)
                        .bind(lease_until_ms)
                        .fetch_optional(&mut *tx)
                        .await?;
                let s = row.map($crate::store::RobotSession::from_row);
                if let Some(s) = &s {
                    let detail = format!("agent {agent}, attempt {}", s.attempts);
                    Self::record(
                        &mut tx,
                        s.call_id,
                        Some(&s.uid),
                        "robot_accepted",
                        None,
                        Some(&detail),
                        "server",
                        "applied",
                        now_ms,
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(s)
            }

            /// offered -> queued again (the agent declined); retried after a second.
            pub async fn reject_session(
                &self,
                id: i64,
                agent: &str,
                reason: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(sql::REJECT_SESSION)
                    .bind(id)
                    .bind(agent)
                    .bind(now_ms + 1000)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 1 {
                    tracing::info!(
                        session = id,
                        agent,
                        reason,
                        "robot session rejected by agent"
                    );
                }
                tx.commit().await?;
                Ok(n == 1)
            }

            /// Extends the leases of `ids` held by `agent`; returns the ids it does not hold.
            pub async fn renew_leases(
                &self,
                agent: &str,
                ids: &[i64],
                now_ms: i64,
                lease_until_ms: i64,
            ) -> $crate::store::StoreResult<Vec<i64>> {
                let mut lost = Vec::new();
                let mut tx = self.begin_write().await?;
                for id in ids {
                    if !Self::renew_lease(&mut tx, *id, agent, now_ms, lease_until_ms).await? {
                        lost.push(*id);
                    }
                }
                tx.commit().await?;
                Ok(lost)
            }

            /// Extends the lease of session `id` if `agent` holds it; false when it does not.
            async fn renew_lease(
                tx: &mut sqlx::Transaction<'static, $db>,
                id: i64,
                agent: &str,
                now_ms: i64,
                lease_until_ms: i64,
            ) -> $crate::store::StoreResult<bool> {
                let n = sqlx::query(sql::RENEW_LEASE)
                    .bind(id)
                    .bind(agent)
                    .bind(lease_until_ms)
                    .bind(now_ms)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                Ok(n == 1)
            }

            /// An agent's status report: playing records the position; left is terminal;
            /// failed retries with backoff or marks the session dead.
            pub async fn report_status(
                &self,
                id: i64,
                agent: &str,
                state: protocol::agent::SessionState,
                detail: &str,
                position_ms: Option<u64>,
                now_ms: i64,
            ) -> $crate::store::StoreResult<$crate::store::StatusOutcome> {
                use protocol::agent::SessionState as S;
                use $crate::store::{RobotSession, RobotState, StatusOutcome};
                let mut tx = self.begin_write().await?;
                let row: Option<$crate::store::robot::SessionRow> =
                    sqlx::query_as(sql::LOCK_SESSION)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(s) = row.map(RobotSession::from_row) else {
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
                        sqlx::query(stmt)
                            .bind(id)
                            .bind(pos)
                            .bind(now_ms)
                            .execute(&mut *tx)
                            .await?;
                        if state == S::Playing && s.position_ms == 0 && pos == 0 {
                            Self::record(
                                &mut tx,
                                s.call_id,
                                Some(&s.uid),
                                "robot_playing",
                                None,
                                None,
                                "server",
                                "applied",
                                now_ms,
                            )
                            .await?;
                        }
                        StatusOutcome::Now(s.state)
                    }
                    S::Left => {
                        sqlx::query(sql::FINISH_SESSION)
                            .bind(id)
                            .bind("left")
                            .bind(serde_json::to_string(&s.errors).unwrap_or_default())
                            .bind(now_ms)
                            .bind(pos)
                            .execute(&mut *tx)
                            .await?;
                        Self::record(
                            &mut tx,
                            s.call_id,
                            Some(&s.uid),
                            "robot_left",
                            None,
                            Some(detail),
                            "server",
                            "applied",
                            now_ms,
                        )
                        .await?;
                        StatusOutcome::Now(RobotState::Left)
                    }
                    S::Failed => {
                        let mut errors = s.errors.clone();
                        errors.push(format!(
                            "attempt {} on {agent}: {detail}",
                            s.attempts.max(1)
                        ));
                        let next = Self::retry_or_end(&mut tx, &s, errors, pos, 0, now_ms).await?;
                        let kind = if next == RobotState::Queued {
                            "robot_failed"
                        } else {
                            "robot_dead"
                        };
                        Self::record(
                            &mut tx,
                            s.call_id,
                            Some(&s.uid),
                            kind,
                            None,
                            Some(detail),
                            "server",
                            next.as_str(),
                            now_ms,
                        )
                        .await?;
                        StatusOutcome::Now(next)
                    }
                };
                tx.commit().await?;
                Ok(outcome)
            }

            /// Queues `s` again after backoff when attempts remain, else ends it (dead; or
            /// cancelled when it was asked to leave anyway). Returns the new state.
            async fn retry_or_end(
                tx: &mut sqlx::Transaction<'static, $db>,
                s: &$crate::store::RobotSession,
                errors: Vec<String>,
                position_ms: i64,
                redispatch: i64,
                now_ms: i64,
            ) -> $crate::store::StoreResult<$crate::store::RobotState> {
                use $crate::store::RobotState;
                let errors_json = serde_json::to_string(&errors).unwrap_or_else(|_| "[]".into());
                let next = if s.leave_requested {
                    RobotState::Cancelled
                } else if s.attempts < s.max_attempts {
                    RobotState::Queued
                } else {
                    RobotState::Dead
                };
                if next == RobotState::Queued {
                    let run_at = now_ms + $crate::store::robot::backoff_ms(s.attempts);
                    sqlx::query(sql::REQUEUE_SESSION)
                        .bind(s.id)
                        .bind(run_at)
                        .bind(errors_json)
                        .bind(redispatch)
                        .bind(position_ms)
                        .bind(now_ms)
                        .execute(&mut **tx)
                        .await?;
                } else {
                    sqlx::query(sql::FINISH_SESSION)
                        .bind(s.id)
                        .bind(next.as_str())
                        .bind(errors_json)
                        .bind(now_ms)
                        .bind(position_ms)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(next)
            }

            /// The rescuer: running sessions whose lease lapsed (their agent died) are
            /// queued again with their position, or dead when no attempt is left; offers
            /// unanswered since before `offer_deadline_ms` go back to the queue.
            pub async fn rescue_lapsed(
                &self,
                now_ms: i64,
                offer_deadline_ms: i64,
            ) -> $crate::store::StoreResult<$crate::store::RescueOutcome> {
                use $crate::store::{RescueOutcome, RobotSession, RobotState};
                let mut out = RescueOutcome::default();
                let mut tx = self.begin_write().await?;
                out.offers_expired = sqlx::query(sql::EXPIRE_OFFERS)
                    .bind(offer_deadline_ms)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let rows: Vec<$crate::store::robot::SessionRow> =
                    sqlx::query_as(sql::LAPSED_LEASES)
                        .bind(now_ms)
                        .fetch_all(&mut *tx)
                        .await?;
                for s in rows.into_iter().map(RobotSession::from_row) {
                    let mut errors = s.errors.clone();
                    let agent = s.agent_id.clone().unwrap_or_default();
                    errors.push(format!(
                        "attempt {}: lease lapsed on agent {agent}",
                        s.attempts
                    ));
                    let next =
                        Self::retry_or_end(&mut tx, &s, errors, s.position_ms, 1, now_ms).await?;
                    let detail = format!("agent {agent} stopped renewing");
                    let kind = if next == RobotState::Queued {
                        "robot_redispatched"
                    } else {
                        "robot_dead"
                    };
                    Self::record(
                        &mut tx,
                        s.call_id,
                        Some(&s.uid),
                        kind,
                        None,
                        Some(&detail),
                        "server",
                        next.as_str(),
                        now_ms,
                    )
                    .await?;
                    match next {
                        RobotState::Queued => out.requeued.push(s.id),
                        _ => out.dead.push(s.id),
                    }
                }
                tx.commit().await?;
                Ok(out)
            }

            /// Agent `agent` connected over `link` (an id unique to this connection),
            /// saying it holds `held`: `link` becomes its current link (so the close of an
            /// earlier one changes nothing), the leases of the sessions it holds are
            /// renewed, and a session its previous link's close had queued again, which
            /// no other agent has taken yet, is given back to it (a reconnect, not a
            /// crash: nothing else plays it). Returns the ids of `held` it must leave.
            pub async fn open_link(
                &self,
                agent: &str,
                link: &str,
                held: &[i64],
                now_ms: i64,
                lease_until_ms: i64,
            ) -> $crate::store::StoreResult<Vec<i64>> {
                let mut lost = Vec::new();
                let mut tx = self.begin_write().await?;
                // First, so that a concurrent close of the previous link (on any instance)
                // is ordered before or after this whole registration.
                sqlx::query(sql::OPEN_LINK)
                    .bind(agent)
                    .bind(link)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                for id in held {
                    if Self::renew_lease(&mut tx, *id, agent, now_ms, lease_until_ms).await? {
                        continue;
                    }
                    let back: Option<(i64, String)> = sqlx::query_as(sql::RECLAIM_SESSION)
                        .bind(*id)
                        .bind(agent)
                        .bind(lease_until_ms)
                        .bind(now_ms)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match back {
                        Some((call_id, uid)) => {
                            let detail =
                                format!("agent {agent} reconnected before another took it");
                            Self::record(
                                &mut tx,
                                call_id,
                                Some(&uid),
                                "robot_reclaimed",
                                None,
                                Some(&detail),
                                "server",
                                "running",
                                now_ms,
                            )
                            .await?;
                        }
                        None => lost.push(*id),
                    }
                }
                tx.commit().await?;
                Ok(lost)
            }

            /// `agent`'s link `link` closed. If it is still the agent's current link, in
            /// one transaction: its unanswered offers go back to the queue, and each
            /// running session takes the step [`after_link_loss`](crate::store::robot::after_link_loss)
            /// gives (queued again from its last reported position, counting a re-dispatch;
            /// or ended), with a line in `errors` and on the call's timeline.
            pub async fn close_link(
                &self,
                agent: &str,
                link: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<$crate::store::robot::LinkClosed> {
                use $crate::store::robot::LinkClosed;
                use $crate::store::{RobotSession, RobotState};
                let mut out = LinkClosed::default();
                let mut tx = self.begin_write().await?;
                let current = sqlx::query(sql::CLOSE_LINK)
                    .bind(agent)
                    .bind(link)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if current == 0 {
                    tx.commit().await?;
                    return Ok(out);
                }
                out.current = true;
                out.offers_returned = sqlx::query(sql::RETURN_OFFERS)
                    .bind(agent)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let held: Vec<(i64, i64)> = sqlx::query_as(sql::LINK_SESSIONS)
                    .bind(agent)
                    .fetch_all(&mut *tx)
                    .await?;
                for (id, played) in held {
                    let row: Option<$crate::store::robot::SessionRow> =
                        sqlx::query_as(sql::LOCK_SESSION)
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let Some(s) = row.map(RobotSession::from_row) else {
                        continue;
                    };
                    let step = $crate::store::robot::after_link_loss(&s, played != 0, now_ms);
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
                    let errors_json =
                        serde_json::to_string(&errors).unwrap_or_else(|_| "[]".into());
                    if step.next == RobotState::Queued {
                        sqlx::query(sql::REQUEUE_LINK_LOST)
                            .bind(id)
                            .bind(step.run_at)
                            .bind(errors_json)
                            .bind(i64::from(!step.charged))
                            .bind(now_ms)
                            .execute(&mut *tx)
                            .await?;
                        out.requeued.push(id);
                    } else {
                        sqlx::query(sql::FINISH_SESSION)
                            .bind(id)
                            .bind(step.next.as_str())
                            .bind(errors_json)
                            .bind(now_ms)
                            .bind(s.position_ms)
                            .execute(&mut *tx)
                            .await?;
                        out.ended.push(id);
                    }
                    let detail = format!(
                        "the link to agent {agent} closed; resumes at {} ms",
                        s.position_ms
                    );
                    let kind = match step.next {
                        RobotState::Queued => "robot_redispatched",
                        _ => "robot_dead",
                    };
                    Self::record(
                        &mut tx,
                        s.call_id,
                        Some(&s.uid),
                        kind,
                        None,
                        Some(&detail),
                        "server",
                        step.next.as_str(),
                        now_ms,
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(out)
            }

            /// Sessions held by `agent` that were asked to leave.
            pub async fn pending_leaves(
                &self,
                agent: &str,
            ) -> $crate::store::StoreResult<Vec<i64>> {
                Ok(sqlx::query_scalar(sql::PENDING_LEAVES)
                    .bind(agent)
                    .fetch_all(self.read_pool())
                    .await?)
            }

            /// One session.
            pub async fn robot_session(
                &self,
                id: i64,
            ) -> $crate::store::StoreResult<Option<$crate::store::RobotSession>> {
                let row: Option<$crate::store::robot::SessionRow> =
                    sqlx::query_as(sql::GET_SESSION)
                        .bind(id)
                        .fetch_optional(self.read_pool())
                        .await?;
                Ok(row.map($crate::store::RobotSession::from_row))
            }

            /// Sessions of a channel, oldest first.
            pub async fn channel_sessions(
                &self,
                channel: &str,
            ) -> $crate::store::StoreResult<Vec<$crate::store::RobotSession>> {
                let rows: Vec<$crate::store::robot::SessionRow> =
                    sqlx::query_as(sql::CHANNEL_SESSIONS)
                        .bind(channel)
                        .fetch_all(self.read_pool())
                        .await?;
                Ok(rows
                    .into_iter()
                    .map($crate::store::RobotSession::from_row)
                    .collect())
            }

            /// Queue figures.
            pub async fn queue_stats(
                &self,
                now_ms: i64,
            ) -> $crate::store::StoreResult<$crate::store::QueueStats> {
                let by_state: Vec<(String, i64)> = sqlx::query_as(sql::SESSIONS_BY_STATE)
                    .fetch_all(self.read_pool())
                    .await?;
                let (depth, oldest): (i64, Option<i64>) = sqlx::query_as(sql::QUEUE_DEPTH)
                    .fetch_one(self.read_pool())
                    .await?;
                let redispatches: i64 = sqlx::query_scalar(sql::REDISPATCHES)
                    .fetch_one(self.read_pool())
                    .await?;
                Ok($crate::store::QueueStats {
                    by_state,
                    depth,
                    oldest_queued_age_ms: oldest.map(|t| (now_ms - t).max(0)).unwrap_or(0),
                    redispatches,
                })
            }

            /// Stores (or replaces) an audio asset.
            pub async fn put_asset(
                &self,
                a: &$crate::store::AssetRecord,
                content: &[u8],
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query(sql::PUT_ASSET)
                    .bind(&a.name)
                    .bind(content)
                    .bind(&a.sha256)
                    .bind(a.bytes)
                    .bind(a.duration_ms)
                    .bind(a.created_at_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            /// An asset's content and record.
            pub async fn get_asset(
                &self,
                name: &str,
            ) -> $crate::store::StoreResult<Option<($crate::store::AssetRecord, Vec<u8>)>> {
                let row: Option<(String, Vec<u8>, String, i64, i64, i64)> =
                    sqlx::query_as(sql::GET_ASSET)
                        .bind(name)
                        .fetch_optional(self.read_pool())
                        .await?;
                Ok(row.map(
                    |(name, content, sha256, bytes, duration_ms, created_at_ms)| {
                        (
                            $crate::store::AssetRecord {
                                name,
                                sha256,
                                bytes,
                                duration_ms,
                                created_at_ms,
                            },
                            content,
                        )
                    },
                ))
            }

            /// Every asset's record.
            pub async fn list_assets(
                &self,
            ) -> $crate::store::StoreResult<Vec<$crate::store::AssetRecord>> {
                let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(sql::LIST_ASSETS)
                    .fetch_all(self.read_pool())
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(name, sha256, bytes, duration_ms, created_at_ms)| {
                        $crate::store::AssetRecord {
                            name,
                            sha256,
                            bytes,
                            duration_ms,
                            created_at_ms,
                        }
                    })
                    .collect())
            }

            /// See [`Store::is_member`](crate::store::Store::is_member).
            pub async fn is_member(
                &self,
                channel: &str,
                uid: &$crate::domain::Uid,
                rejected_since_ms: i64,
            ) -> $crate::store::StoreResult<Option<bool>> {
                let n: Option<i64> = sqlx::query_scalar(sql::IS_MEMBER)
                    .bind(channel)
                    .bind(uid.as_str())
                    .bind(rejected_since_ms)
                    .fetch_optional(self.read_pool())
                    .await?;
                Ok(n.map(|n| n > 0))
            }

            /// See [`Store::was_member`](crate::store::Store::was_member).
            pub async fn was_member(
                &self,
                channel: &str,
                uid: &$crate::domain::Uid,
            ) -> $crate::store::StoreResult<Option<bool>> {
                let n: Option<i64> = sqlx::query_scalar(sql::WAS_MEMBER)
                    .bind(channel)
                    .bind(uid.as_str())
                    .fetch_optional(self.read_pool())
                    .await?;
                Ok(n.map(|n| n > 0))
            }

            /// See [`Store::overtime_robots`](crate::store::Store::overtime_robots).
            pub async fn overtime_robots(
                &self,
                created_before_ms: i64,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<String>> {
                Ok(sqlx::query_scalar(sql::OVERTIME_ROBOTS)
                    .bind(created_before_ms)
                    .bind(limit)
                    .fetch_all(self.read_pool())
                    .await?)
            }

            /// Calls per state (metrics).
            pub async fn calls_by_state(&self) -> $crate::store::StoreResult<Vec<(String, i64)>> {
                Ok(sqlx::query_as(sql::CALLS_BY_STATE)
                    .fetch_all(self.read_pool())
                    .await?)
            }

            /// Whether an asset exists.
            pub async fn asset_exists(&self, name: &str) -> $crate::store::StoreResult<bool> {
                let n: i64 = sqlx::query_scalar(sql::ASSET_EXISTS)
                    .bind(name)
                    .fetch_one(self.read_pool())
                    .await?;
                Ok(n > 0)
            }

            /// Deletes an asset; false if there was none.
            pub async fn delete_asset(&self, name: &str) -> $crate::store::StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(sql::DELETE_ASSET)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(n == 1)
            }
        }
    };
}

pub(crate) use robot_store_impl;

#[cfg(test)]
mod tests {
    use super::*;

    fn session(attempts: i64, leave_requested: bool) -> RobotSession {
        RobotSession {
            id: 1,
            call_id: 1,
            channel: "ch".into(),
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
                LinkLossStep {
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
            LinkLossStep {
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
}
