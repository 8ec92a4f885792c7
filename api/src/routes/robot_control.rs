//! `POST /dapi/robot/control` (docs/robot-control.md): steer the robot already in a call.
//! The body is checked here (400 naming the field), relayed to the holding agent by
//! [`control_relay`](crate::control_relay), and answered with the agent's `control_ack`:
//! 409 `no_robot` without a running robot, 504 `agent_timeout` after 2 s of silence.
//! Controls and the marks agents report go on the call's timeline.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use protocol::agent::{ControlAction, MarkState, PlayMode, PlaybackState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Authn;
use crate::control_relay::RelayError;
use crate::domain::{AssetName, ChannelName, Uid};
use crate::error::ApiError;
use crate::extract::DapiJson;
use crate::robot_options::{GAIN_DB, MAX_LOOPS};
use crate::store::{RobotState, SessionId, StoreError};

/// Longest mark name, characters.
pub const MAX_MARK_NAME: usize = 128;

/// The route.
pub fn router() -> Router<AppState> {
    Router::new().route(
        "/dapi/robot/control",
        post(robot_control).fallback(super::method_not_allowed),
    )
}

/// A control request: the action and its fields at the top level.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ControlReq {
    /// The channel whose robot to steer.
    #[schema(value_type = String, example = "ch_4aY875LP4o")]
    channel: ChannelName,
    /// Who asks (a member of the call in jwt mode).
    #[schema(value_type = String, example = "1001")]
    uid: Uid,
    /// `play`, `pause`, `resume`, `seek`, `gain`, `clear` or `mark`.
    #[schema(example = "play")]
    action: String,
    /// `play`: the asset to queue.
    #[serde(default)]
    audio: Option<String>,
    /// `play`: `append` (default) or `replace`.
    #[serde(default)]
    mode: Option<String>,
    /// `play`: times played again after the first play (0 to 1000; default 0).
    #[serde(default, rename = "loop")]
    loops: Option<i64>,
    /// `play`, `gain`: gain in dB, -30 to +12.
    #[serde(default)]
    gain_db: Option<f64>,
    /// `seek`: position in the current item, ms.
    #[serde(default)]
    position_ms: Option<i64>,
    /// `mark`: the mark's name (1 to 128 characters).
    #[serde(default)]
    name: Option<String>,
}

/// The robot's playback state after the control.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlaybackOut {
    /// `playing`, `paused` or `idle`.
    #[schema(example = "playing")]
    pub state: &'static str,
    /// The item playing or paused; null when idle.
    #[schema(example = "greeting")]
    pub item: Option<String>,
    /// Position in that item, ms.
    pub position_ms: u64,
    /// Items queued after it, in order.
    pub queue: Vec<String>,
}

crate::envelope!(
    /// The robot's playback state.
    PlaybackResp,
    PlaybackOut
);

fn required<T>(v: Option<T>, field: &str, action: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::bad("missing_field", format!("{field} is required for {action}")))
}

fn gain(v: f64) -> Result<f32, ApiError> {
    if !v.is_finite() || !GAIN_DB.contains(&v) {
        return Err(ApiError::bad(
            "invalid_field",
            format!("gain_db is {v}; it must be -30 to +12 dB"),
        ));
    }
    // in range: exact enough as f32
    Ok(v as f32)
}

/// The action of a request, checked field by field.
fn parse_action(r: &ControlReq) -> Result<ControlAction, ApiError> {
    let a = r.action.as_str();
    Ok(match a {
        "play" => {
            let audio = required(r.audio.as_deref(), "audio", a)?;
            let audio = AssetName::parse(audio)
                .map_err(|m| ApiError::bad("invalid_field", format!("audio {m}")))?;
            let mode = match r.mode.as_deref() {
                None | Some("append") => PlayMode::Append,
                Some("replace") => PlayMode::Replace,
                Some(_) => {
                    return Err(ApiError::bad(
                        "invalid_field",
                        "mode must be \"append\" or \"replace\"",
                    ));
                }
            };
            let loops = r.loops.unwrap_or(0);
            if !(0..=MAX_LOOPS).contains(&loops) {
                return Err(ApiError::bad(
                    "invalid_field",
                    format!("loop is {loops}; it must be 0 to {MAX_LOOPS}"),
                ));
            }
            ControlAction::Play {
                audio: audio.as_str().to_owned(),
                mode,
                loops: u32::try_from(loops).unwrap_or(0),
                gain_db: gain(r.gain_db.unwrap_or(0.0))?,
            }
        }
        "pause" => ControlAction::Pause,
        "resume" => ControlAction::Resume,
        "clear" => ControlAction::Clear,
        "seek" => {
            let p = required(r.position_ms, "position_ms", a)?;
            let p = u64::try_from(p).map_err(|_| {
                ApiError::bad(
                    "invalid_field",
                    format!("position_ms is {p}; it must be 0 or more"),
                )
            })?;
            ControlAction::Seek { position_ms: p }
        }
        "gain" => ControlAction::Gain {
            gain_db: gain(required(r.gain_db, "gain_db", a)?)?,
        },
        "mark" => {
            let name = required(r.name.as_deref(), "name", a)?;
            let n = name.chars().count();
            if n == 0 || n > MAX_MARK_NAME || name.chars().any(char::is_control) {
                return Err(ApiError::bad(
                    "invalid_field",
                    format!(
                        "name must be 1 to {MAX_MARK_NAME} characters without control characters"
                    ),
                ));
            }
            ControlAction::Mark {
                name: name.to_owned(),
            }
        }
        _ => {
            return Err(ApiError::bad(
                "invalid_field",
                "action must be one of play, pause, resume, seek, gain, clear, mark",
            ));
        }
    })
}

fn state_str(s: PlaybackState) -> &'static str {
    match s {
        PlaybackState::Playing => "playing",
        PlaybackState::Paused => "paused",
        PlaybackState::Idle => "idle",
    }
}

/// Steers the robot in a call: queue (append or replace), pause, resume, seek, gain,
/// clear, mark. Relayed to the robot's agent; answered with its playback state.
#[utoipa::path(post, path = "/dapi/robot/control", tag = "robot",
    request_body = ControlReq,
    responses(
        (status = 200, description = "The agent applied the control", body = PlaybackResp),
        (status = 409, description = "`no_robot`: no robot runs in the channel; `control_failed`: the agent could not apply it", body = crate::openapi::ErrorBody),
        (status = 504, description = "`agent_timeout`: the robot's agent did not answer within 2 s", body = crate::openapi::ErrorBody)))]
pub async fn robot_control(
    State(state): State<AppState>,
    auth: Authn,
    DapiJson(req): DapiJson<ControlReq>,
) -> Result<Json<PlaybackResp>, ApiError> {
    let action = parse_action(&req)?;
    let channel = &req.channel;
    auth.check_member(&state, channel, &req.uid).await?;
    if let ControlAction::Play { audio, .. } = &action
        && !state.store().asset_exists(audio).await?
    {
        return Err(ApiError::bad(
            "unknown_audio",
            format!(
                "audio: audio asset {audio} does not exist; upload it with PUT /admin/audio/{audio}"
            ),
        ));
    }
    let sessions = match state.store().channel_sessions(channel).await {
        Err(StoreError::NotFound(_)) => Vec::new(),
        r => r?,
    };
    if sessions.is_empty() && state.store().find_call(channel).await?.is_none() {
        return Err(ApiError::NotFound(format!("unknown channel {channel}")));
    }
    let running = sessions
        .iter()
        .find(|s| s.state == RobotState::Running && !s.leave_requested);
    let Some((session, agent)) = running.and_then(|s| s.agent_id.clone().map(|a| (s, a))) else {
        return Err(ApiError::ConflictCode {
            code: "no_robot",
            message: format!("no robot is running in channel {channel}"),
        });
    };
    let detail = serde_json::to_string(&action).unwrap_or_default();
    let result = state
        .control()
        .relay(&state, &agent, session.id.get(), action)
        .await;
    let now = state.clock().now_ms();
    let (effect, answer) = match result {
        Ok(o) => match o.error {
            None => (
                state_str(o.status.state).to_owned(),
                Ok(PlaybackOut {
                    state: state_str(o.status.state),
                    item: o.status.item,
                    position_ms: o.status.position_ms,
                    queue: o.status.queue,
                }),
            ),
            Some(e) => {
                let e: String = e.chars().take(512).collect();
                (
                    format!("failed: {e}"),
                    Err(ApiError::ConflictCode {
                        code: "control_failed",
                        message: format!("the robot could not apply it: {e}"),
                    }),
                )
            }
        },
        Err(RelayError::Timeout) => (
            "no answer within 2 s".to_owned(),
            Err(ApiError::GatewayTimeout(format!(
                "the robot's agent did not answer within {} s",
                crate::control_relay::CONTROL_TIMEOUT.as_secs()
            ))),
        ),
        Err(RelayError::Unavailable(e)) => {
            tracing::error!(error = %e, "relaying a control failed");
            (
                "not relayed: database unavailable".to_owned(),
                Err(ApiError::Unavailable(
                    "the database is unavailable; retry shortly".into(),
                )),
            )
        }
    };
    if let Err(e) = state
        .store()
        .robot_event(
            session.call_id,
            Some(req.uid.as_str()),
            "robot_control",
            Some(&detail),
            "app",
            &effect,
            now,
        )
        .await
    {
        tracing::warn!(error = %e, "could not write the control on the timeline");
    }
    answer.map(PlaybackResp::new)
}

/// An agent reported a mark `played` or `cleared`: on the call's timeline as
/// `robot_mark` (detail: the name; effect: `played at P ms` or `cleared`). Reports for a
/// session the agent does not hold are dropped.
pub async fn record_mark(
    state: &AppState,
    agent: &str,
    session_id: i64,
    name: &str,
    mark: MarkState,
    position_ms: Option<u64>,
) -> Result<(), StoreError> {
    let Some(s) = state
        .store()
        .robot_session(SessionId::new(session_id))
        .await?
    else {
        return Ok(());
    };
    if s.agent_id.as_deref() != Some(agent) || s.state != RobotState::Running {
        tracing::info!(
            session = session_id,
            "mark from an agent that does not hold the session: dropped"
        );
        return Ok(());
    }
    let name: String = name.chars().take(MAX_MARK_NAME).collect();
    let effect = match (mark, position_ms) {
        (MarkState::Played, Some(p)) => format!("played at {p} ms"),
        (MarkState::Played, None) => "played".to_owned(),
        (MarkState::Cleared, _) => "cleared".to_owned(),
    };
    state
        .store()
        .robot_event(
            s.call_id,
            Some(&s.uid),
            "robot_mark",
            Some(&name),
            "server",
            &effect,
            state.clock().now_ms(),
        )
        .await
}
