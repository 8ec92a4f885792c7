//! Every `/dapi` endpoint of the spec, with exactly its field names, types and labels.
//! Each handler parses its body into domain types, makes one store call (one
//! transaction), and answers `{"success": true, "data": ...}`.

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{LocalResult, NaiveDateTime, TimeZone};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Authn;
use crate::call_state::{Input, Role};
use crate::client_ip::ClientIp;
use crate::config::millis_i64;
use crate::domain::{AssetName, ChannelName, EventCode, Uid, UidList};
use crate::error::ApiError;
use crate::extract::DapiJson;
use crate::openapi::{Null, OkNull, uid_out_schema};
use crate::rate_limit::Kind;
use crate::store::{
    self, CallKind, InputMeta, MessageRow, NewCall, NewRobotSession, StoreError, TaskFields,
    TaskRecord,
};

/// The `/dapi` routes.
pub fn router() -> Router<AppState> {
    let m = super::method_not_allowed;
    Router::new()
        .route("/dapi/call/user", post(call_user).fallback(m))
        .route("/dapi/call/robot", post(call_robot).fallback(m))
        .route("/dapi/call/msg", post(call_msg).fallback(m))
        .route("/dapi/call/token", post(call_token).fallback(m))
        .route("/dapi/call/event", post(call_event).fallback(m))
        .route("/dapi/call/heartbeat", post(call_heartbeat).fallback(m))
        .route("/dapi/call/timeline", get(call_timeline).fallback(m))
        .route("/dapi/invite/robot", post(invite_robot).fallback(m))
        .route("/dapi/quit/robot", post(quit_robot).fallback(m))
        .route("/dapi/calltask/update", post(calltask_update).fallback(m))
        .route("/dapi/calltask/list", post(calltask_list).fallback(m))
        .route("/dapi/calltask/delete", post(calltask_delete).fallback(m))
}

/// What a caller needs to join a channel.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenData {
    /// The Agora app ID the token is for.
    #[serde(rename = "appID")]
    #[schema(example = "970CA35de60c44645bbae8a215061b33")]
    pub app_id: String,
    /// The channel.
    #[schema(example = "ch_4aY875LP4o")]
    pub channel: String,
    /// The uid the token is for, as text.
    #[schema(example = "1001")]
    pub uid: String,
    /// An Agora AccessToken (006 by default, 007 when configured) with the join privilege.
    pub token: String,
}

crate::envelope!(
    /// A channel and a token to join it.
    TokenResp,
    TokenData
);

/// `{appID, channel, uid, token}` for `uid` in `channel`.
fn token_data(state: &AppState, channel: &str, uid: &Uid) -> Result<Json<TokenResp>, ApiError> {
    let token = state
        .tokens()
        .mint(channel, uid.as_str(), state.clock().now_secs())
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(TokenResp::new(TokenData {
        app_id: state.tokens().app_id.clone(),
        channel: channel.to_owned(),
        uid: uid.as_str().to_owned(),
        token,
    }))
}

/// The per-uid, then per-address rate limit of `kind` (429 with `Retry-After`).
pub(crate) fn rate_limit(
    state: &AppState,
    kind: Kind,
    uid: &Uid,
    ip: ClientIp,
) -> Result<(), ApiError> {
    state
        .limits()
        .check(kind, uid.as_str(), ip.0, state.clock().now_ms())
}

fn check_extra_msg(state: &AppState, extra: &Option<String>) -> Result<(), ApiError> {
    let max = state.config().calls.max_extra_msg;
    match extra {
        Some(m) if m.len() > max => Err(ApiError::bad(
            "invalid_field",
            format!("extra_msg is {} bytes; at most {max} are allowed", m.len()),
        )),
        Some(m) => no_nul("extra_msg", m),
        None => Ok(()),
    }
}

/// Text fields may not hold NUL characters (PostgreSQL cannot store them; they are never
/// meaningful in these fields).
fn no_nul(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::bad(
            "invalid_field",
            format!("{field} must not contain NUL characters"),
        ));
    }
    Ok(())
}

fn check_dst(state: &AppState, dst: &UidList) -> Result<(), ApiError> {
    let max = state.config().calls.max_dst_uids;
    if dst.0.len() > max {
        return Err(ApiError::bad(
            "invalid_field",
            format!(
                "dst_uid has {} uids; at most {max} are allowed",
                dst.0.len()
            ),
        ));
    }
    Ok(())
}

/// Creates a call under a fresh channel name, retrying on the (unlikely) collision.
async fn create_call(state: &AppState, mut call: NewCall) -> Result<ChannelName, ApiError> {
    for _ in 0..5 {
        match state.store().create_call(&call).await {
            Ok(_) => {
                state.known_channels().insert(call.channel.as_str());
                return Ok(call.channel);
            }
            Err(StoreError::Conflict(_)) => call.channel = ChannelName::generate(),
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Internal(anyhow::anyhow!(
        "could not find a free channel name"
    )))
}

/// A robot session for `audio` (the default asset when absent) and the robot options;
/// 400 if an asset is unknown or an option is bad, so a typo fails here rather than as a
/// dead session later, and nothing is queued (`robot_options::robot_session`).
async fn robot_session(
    state: &AppState,
    requested_by: &Uid,
    audio: Option<AssetName>,
    loop_audio: bool,
    options: crate::robot_options::RobotOptionsReq,
) -> Result<NewRobotSession, ApiError> {
    crate::robot_options::robot_session(state, requested_by, audio, loop_audio, options).await
}

fn new_call(
    state: &AppState,
    caller: Uid,
    callees: Vec<Uid>,
    kind: CallKind,
    extra_msg: Option<String>,
) -> NewCall {
    let now = state.clock().now_ms();
    let ring_ms = millis_i64(state.config().calls.ring_timeout);
    let ring_deadline_ms = (!callees.is_empty()).then(|| now.saturating_add(ring_ms));
    NewCall {
        channel: ChannelName::generate(),
        caller,
        callees,
        kind,
        extra_msg,
        now_ms: now,
        ring_deadline_ms,
        caller_heartbeat_deadline_ms: now.saturating_add(heartbeat_ms(state)),
        robot: None,
    }
}

fn heartbeat_ms(state: &AppState) -> i64 {
    millis_i64(state.config().calls.heartbeat_timeout)
}

#[derive(Debug, Deserialize, ToSchema)]
struct CallUserReq {
    src_uid: Uid,
    #[serde(default)]
    dst_uid: UidList,
    #[serde(default)]
    extra_msg: Option<String>,
}

/// Starts a call to one or more users: a fresh channel and the caller's token.
#[utoipa::path(post, path = "/dapi/call/user", tag = "calls",
    request_body = CallUserReq,
    responses((status = 200, description = "Done", body = TokenResp)))]
async fn call_user(
    State(state): State<AppState>,
    auth: Authn,
    ip: ClientIp,
    DapiJson(req): DapiJson<CallUserReq>,
) -> Result<Json<TokenResp>, ApiError> {
    auth.check_uid(&req.src_uid)?;
    rate_limit(&state, Kind::Call, &req.src_uid, ip)?;
    check_dst(&state, &req.dst_uid)?;
    check_extra_msg(&state, &req.extra_msg)?;
    // Repeated uids and the caller are dropped where the call is stored.
    let call = new_call(
        &state,
        req.src_uid.clone(),
        req.dst_uid.0,
        CallKind::User,
        req.extra_msg,
    );
    let has_callees = !call.callees.is_empty();
    let channel = create_call(&state, call).await?;
    if has_callees {
        // The call's pushes are in the outbox: the worker sends them, off this request.
        state.push().wake();
    }
    token_data(&state, channel.as_str(), &req.src_uid)
}

#[derive(Debug, Deserialize, ToSchema)]
struct CallRobotReq {
    src_uid: Uid,
    #[serde(default)]
    audio: Option<AssetName>,
    #[serde(default, rename = "loop")]
    loop_audio: bool,
    /// Playback queue after `audio` (ext: DESIGN.md "Robot options").
    #[serde(default)]
    playlist: Option<Vec<crate::robot_options::PlaylistItemReq>>,
    /// Voicemail: record the other participants after the audio (ext).
    #[serde(default)]
    record: Option<crate::robot_options::RecordReq>,
    /// A media bridge target named in `DAPI_BRIDGES` (ext).
    #[serde(default)]
    bridge: Option<String>,
}

/// Starts a call with the robot: a fresh channel, the caller's token, a robot session queued.
#[utoipa::path(post, path = "/dapi/call/robot", tag = "robot",
    request_body = CallRobotReq,
    responses((status = 200, description = "Done", body = TokenResp)))]
async fn call_robot(
    State(state): State<AppState>,
    auth: Authn,
    ip: ClientIp,
    DapiJson(req): DapiJson<CallRobotReq>,
) -> Result<Json<TokenResp>, ApiError> {
    auth.check_uid(&req.src_uid)?;
    rate_limit(&state, Kind::Call, &req.src_uid, ip)?;
    let mut call = new_call(
        &state,
        req.src_uid.clone(),
        Vec::new(),
        CallKind::Robot,
        None,
    );
    let options = crate::robot_options::RobotOptionsReq {
        playlist: req.playlist,
        record: req.record,
        bridge: req.bridge,
    };
    call.robot =
        Some(robot_session(&state, &req.src_uid, req.audio, req.loop_audio, options).await?);
    let channel = create_call(&state, call).await?;
    state.robot_changed().await;
    token_data(&state, channel.as_str(), &req.src_uid)
}

#[derive(Debug, Deserialize, ToSchema)]
struct UidReq {
    uid: Uid,
}

fn format_time(state: &AppState, unix_ms: i64) -> String {
    state
        .config()
        .calls
        .timezone
        .timestamp_millis_opt(unix_ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// One row of `call/msg`: a call that involves the asking uid.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageOut {
    /// Row id.
    pub id: i64,
    /// Whose row: a number when the uid is canonical digits, else a string.
    #[schema(schema_with = uid_out_schema)]
    pub uid: Value,
    /// The channel to join.
    pub channel: String,
    /// 0 created, 1 fetched (this read moved it from 0), 2 the call ended.
    #[schema(minimum = 0, maximum = 2)]
    pub status: i64,
    /// The status in words, as the original service shows it.
    #[serde(rename = "_status_label")]
    #[schema(example = "初始化")]
    pub status_label: &'static str,
    /// Creation time, `YYYY-MM-DD HH:MM:SS` in the server's zone.
    #[schema(example = "2026-11-29 10:00:00")]
    pub createtime: String,
    /// Same as `id`.
    pub pk: i64,
    /// The caller's extra message.
    pub extra_msg: Option<String>,
    /// The caller, as `uid` is shown.
    #[schema(schema_with = uid_out_schema)]
    pub src_uid: Value,
    /// `caller` or `callee`: the asking uid's role.
    #[schema(example = "callee")]
    pub role: &'static str,
}

crate::envelope!(
    /// The calls of the recent window.
    MsgResp,
    Vec<MessageOut>
);

fn message_json(state: &AppState, r: &MessageRow) -> MessageOut {
    let uid = Uid::parse(&r.uid)
        .map(|u| u.to_json())
        .unwrap_or_else(|_| Value::from(r.uid.clone()));
    let src = Uid::parse(&r.src_uid)
        .map(|u| u.to_json())
        .unwrap_or_else(|_| Value::from(r.src_uid.clone()));
    MessageOut {
        id: r.id,
        uid,
        channel: r.channel.to_string(),
        status: r.status as i64,
        status_label: r.status.label(),
        createtime: format_time(state, r.created_at_ms),
        pk: r.id,
        extra_msg: r.extra_msg.clone(),
        src_uid: src,
        role: match r.role {
            Role::Caller => "caller",
            _ => "callee",
        },
    }
}

/// The calls of the last minute that involve `uid` (callees find their calls here).
#[utoipa::path(post, path = "/dapi/call/msg", tag = "calls",
    request_body = UidReq,
    responses((status = 200, description = "Done", body = MsgResp)))]
async fn call_msg(
    State(state): State<AppState>,
    auth: Authn,
    ip: ClientIp,
    DapiJson(req): DapiJson<UidReq>,
) -> Result<Json<MsgResp>, ApiError> {
    auth.check_uid(&req.uid)?;
    // It writes: the callee's rows move from 0 to 1.
    rate_limit(&state, Kind::Write, &req.uid, ip)?;
    let window = millis_i64(state.config().calls.recent_window);
    let since = state.clock().now_ms() - window;
    let rows = state.store().recent_messages(&req.uid, since).await?;
    Ok(MsgResp::new(
        rows.iter().map(|r| message_json(&state, r)).collect(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
struct ChannelReq {
    uid: Uid,
    channel: ChannelName,
}

/// 404 unless the channel exists (cached positive answers).
async fn require_channel(state: &AppState, channel: &ChannelName) -> Result<(), ApiError> {
    if state.known_channels().contains(channel.as_str()) {
        return Ok(());
    }
    match state.store().find_call(channel).await? {
        Some(_) => {
            state.known_channels().insert(channel.as_str());
            Ok(())
        }
        None => Err(ApiError::NotFound(format!("unknown channel {channel}"))),
    }
}

/// A token for `uid` in an existing channel.
#[utoipa::path(post, path = "/dapi/call/token", tag = "calls",
    request_body = ChannelReq,
    responses((status = 200, description = "Done", body = TokenResp)))]
async fn call_token(
    State(state): State<AppState>,
    auth: Authn,
    ip: ClientIp,
    DapiJson(req): DapiJson<ChannelReq>,
) -> Result<Json<TokenResp>, ApiError> {
    require_channel(&state, &req.channel).await?;
    auth.check_member(&state, &req.channel, &req.uid).await?;
    rate_limit(&state, Kind::Token, &req.uid, ip)?;
    token_data(&state, req.channel.as_str(), &req.uid)
}

#[derive(Debug, Deserialize, ToSchema)]
struct EventReq {
    uid: Uid,
    channel: ChannelName,
    code: EventCode,
    /// Free text about the event.
    #[serde(default)]
    #[schema(max_length = 1024)]
    desp: Option<String>,
}

/// Reports a call event (connected, ended, rejected, ...).
#[utoipa::path(post, path = "/dapi/call/event", tag = "calls",
    request_body = EventReq,
    responses((status = 200, description = "Done", body = OkNull)))]
async fn call_event(
    State(state): State<AppState>,
    auth: Authn,
    ip: ClientIp,
    DapiJson(req): DapiJson<EventReq>,
) -> Result<Json<OkNull>, ApiError> {
    auth.check_uid(&req.uid)?;
    rate_limit(&state, Kind::Write, &req.uid, ip)?;
    auth.check_was_member(&state, &req.channel, &req.uid)
        .await?;
    if req.desp.as_ref().is_some_and(|d| d.len() > 1024) {
        return Err(ApiError::bad(
            "invalid_field",
            "desp is longer than 1024 bytes",
        ));
    }
    if let Some(d) = &req.desp {
        no_nul("desp", d)?;
    }
    let meta = InputMeta {
        kind: "event",
        source: "app",
        detail: req.desp,
        now_ms: state.clock().now_ms(),
        heartbeat_deadline_ms: None,
        always_record: true,
    };
    let input = Input::Event {
        uid: req.uid,
        code: req.code,
    };
    crate::calls::apply(&state, &req.channel, &input, &meta).await?;
    Ok(OkNull::new(Null))
}

/// Says `uid` is still in the channel.
#[utoipa::path(post, path = "/dapi/call/heartbeat", tag = "calls",
    request_body = ChannelReq,
    responses((status = 200, description = "Done", body = OkNull)))]
async fn call_heartbeat(
    State(state): State<AppState>,
    auth: Authn,
    ip: ClientIp,
    DapiJson(req): DapiJson<ChannelReq>,
) -> Result<Json<OkNull>, ApiError> {
    auth.check_uid(&req.uid)?;
    rate_limit(&state, Kind::Write, &req.uid, ip)?;
    auth.check_was_member(&state, &req.channel, &req.uid)
        .await?;
    let now = state.clock().now_ms();
    let meta = InputMeta {
        kind: "heartbeat",
        source: "app",
        detail: None,
        now_ms: now,
        heartbeat_deadline_ms: Some(now + heartbeat_ms(&state)),
        always_record: false,
    };
    let input = Input::Seen { uid: req.uid };
    crate::calls::apply(&state, &req.channel, &input, &meta).await?;
    Ok(OkNull::new(Null))
}

/// A call's timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeline {
    /// The channel.
    pub channel: String,
    /// Every event, oldest first.
    pub events: Vec<TimelineEvent>,
}

/// One event of a call's timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineEvent {
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
    /// When, `YYYY-MM-DD HH:MM:SS` in the server's zone.
    pub time: String,
    /// When, unix ms.
    pub time_ms: i64,
}

crate::envelope!(
    /// A call's timeline.
    TimelineResp,
    Timeline
);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct TimelineQuery {
    /// The channel.
    #[param(required = true, value_type = String, min_length = 1, max_length = 64,
        pattern = "^[A-Za-z0-9 !#$%&()+\\-:;<=>.?@\\[\\]^_{|}~,]{1,64}$")]
    channel: Option<String>,
}

/// Every event of a call, in order: what apps reported, what the server decided.
#[utoipa::path(get, path = "/dapi/call/timeline", tag = "calls",
    params(TimelineQuery),
    responses((status = 200, description = "Done", body = TimelineResp)))]
async fn call_timeline(
    State(state): State<AppState>,
    auth: Authn,
    Query(q): Query<TimelineQuery>,
) -> Result<Json<TimelineResp>, ApiError> {
    let raw = q
        .channel
        .ok_or_else(|| ApiError::bad("missing_field", "channel is required"))?;
    let channel = ChannelName::parse(&raw)
        .map_err(|m| ApiError::bad("invalid_field", format!("channel {m}")))?;
    if let Some(sub) = auth.0.clone() {
        auth.check_was_member(&state, &channel, &sub).await?;
    }
    let entries = state.store().timeline(&channel).await?;
    let events = entries
        .iter()
        .map(|e| TimelineEvent {
            id: e.id,
            uid: e.uid.clone(),
            kind: e.kind.clone(),
            code: e.code,
            detail: e.detail.clone(),
            source: e.source.clone(),
            effect: e.effect.clone(),
            time: format_time(&state, e.created_at_ms),
            time_ms: e.created_at_ms,
        })
        .collect();
    Ok(TimelineResp::new(Timeline {
        channel: channel.as_str().to_owned(),
        events,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
struct InviteRobotReq {
    uid: Uid,
    channel: ChannelName,
    #[serde(default)]
    audio: Option<AssetName>,
    #[serde(default, rename = "loop")]
    loop_audio: bool,
    /// Playback queue after `audio` (ext: DESIGN.md "Robot options").
    #[serde(default)]
    playlist: Option<Vec<crate::robot_options::PlaylistItemReq>>,
    /// Voicemail: record the other participants after the audio (ext).
    #[serde(default)]
    record: Option<crate::robot_options::RecordReq>,
    /// A media bridge target named in `DAPI_BRIDGES` (ext).
    #[serde(default)]
    bridge: Option<String>,
}

/// Invites the robot into an existing channel (at most one robot per channel).
#[utoipa::path(post, path = "/dapi/invite/robot", tag = "robot",
    request_body = InviteRobotReq,
    responses((status = 200, description = "Done", body = TokenResp)))]
async fn invite_robot(
    State(state): State<AppState>,
    auth: Authn,
    ip: ClientIp,
    DapiJson(req): DapiJson<InviteRobotReq>,
) -> Result<Json<TokenResp>, ApiError> {
    auth.check_member(&state, &req.channel, &req.uid).await?;
    rate_limit(&state, Kind::Token, &req.uid, ip)?;
    let options = crate::robot_options::RobotOptionsReq {
        playlist: req.playlist,
        record: req.record,
        bridge: req.bridge,
    };
    let robot = robot_session(&state, &req.uid, req.audio, req.loop_audio, options).await?;
    let now = state.clock().now_ms();
    state
        .store()
        .invite_robot(&req.channel, &req.uid, &robot, now)
        .await?;
    state.robot_changed().await;
    token_data(&state, req.channel.as_str(), &req.uid)
}

/// Asks the robot to leave the channel.
#[utoipa::path(post, path = "/dapi/quit/robot", tag = "robot",
    request_body = ChannelReq,
    responses((status = 200, description = "Done", body = OkNull)))]
async fn quit_robot(
    State(state): State<AppState>,
    auth: Authn,
    ip: ClientIp,
    DapiJson(req): DapiJson<ChannelReq>,
) -> Result<Json<OkNull>, ApiError> {
    auth.check_uid(&req.uid)?;
    rate_limit(&state, Kind::Write, &req.uid, ip)?;
    auth.check_was_member(&state, &req.channel, &req.uid)
        .await?;
    let now = state.clock().now_ms();
    let running = state
        .store()
        .quit_robot(&req.channel, &req.uid, now)
        .await?;
    if running.is_some() {
        state.robot_changed().await;
    }
    Ok(OkNull::new(Null))
}

/// A task id: absent, null or "" means insert; a number or numeric string updates.
#[derive(Debug)]
struct TaskId(Option<store::TaskId>);

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::Null => Ok(TaskId(None)),
            Value::String(s) if s.trim().is_empty() => Ok(TaskId(None)),
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .map(|n| TaskId(Some(store::TaskId::new(n))))
                .ok_or_else(|| D::Error::custom("id must be a positive integer or empty")),
            Value::Number(n) => n
                .as_i64()
                .filter(|n| *n > 0)
                .map(|n| TaskId(Some(store::TaskId::new(n))))
                .ok_or_else(|| D::Error::custom("id must be a positive integer or empty")),
            _ => Err(D::Error::custom("id must be a positive integer or empty")),
        }
    }
}

impl utoipa::PartialSchema for TaskId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .description(Some(
                "A task id: a positive integer or its decimal string; absent, null or \"\" \
                 in calltask/update creates a task",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^\\s*([1-9][0-9]{0,17})?\\s*$")),
            )
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .into()
    }
}
impl ToSchema for TaskId {}

impl utoipa::PartialSchema for ExternalTaskId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .description(Some(
                "The app backend's task id: a string of at most 255 bytes (a number is \
                 kept as its text)",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(255)),
            )
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .into()
    }
}
impl ToSchema for ExternalTaskId {}

/// The app backend's task id: a string (numbers are accepted and kept as text).
#[derive(Debug)]
struct ExternalTaskId(String);

impl<'de> Deserialize<'de> for ExternalTaskId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(s) if s.contains('\0') => {
                Err(D::Error::custom("taskid must not contain NUL characters"))
            }
            Value::String(s) if s.len() <= 255 => Ok(Self(s)),
            Value::String(_) => Err(D::Error::custom("taskid is longer than 255 bytes")),
            Value::Number(n) => Ok(Self(n.to_string())),
            _ => Err(D::Error::custom("taskid must be a string")),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
struct CalltaskUpdateReq {
    #[serde(default = "no_task_id")]
    id: TaskId,
    src_uid: Uid,
    dst_uid: UidList,
    /// When to call, in the server's zone (`DAPI_TIMEZONE`).
    #[schema(
        pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$",
        example = "2026-11-29 18:30:00"
    )]
    call_time: String,
    taskid: ExternalTaskId,
    #[serde(default)]
    tone_list: Option<Vec<AssetName>>,
}

fn no_task_id() -> TaskId {
    TaskId(None)
}

/// Parses `YYYY-MM-DD HH:MM:SS` in the server's zone into unix seconds.
fn parse_call_time(state: &AppState, s: &str) -> Result<i64, ApiError> {
    let naive = NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S").map_err(|_| {
        ApiError::bad(
            "invalid_field",
            format!("call_time {s:?} must be YYYY-MM-DD HH:MM:SS"),
        )
    })?;
    match state.config().calls.timezone.from_local_datetime(&naive) {
        LocalResult::Single(t) => Ok(t.timestamp()),
        // A repeated hour (DST ends): take the first.
        LocalResult::Ambiguous(a, _) => Ok(a.timestamp()),
        LocalResult::None => Err(ApiError::bad(
            "invalid_field",
            format!(
                "call_time {s:?} does not exist in {} (a DST gap)",
                state.config().calls.timezone
            ),
        )),
    }
}

/// A scheduled call.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskOut {
    /// Row id.
    pub id: i64,
    /// The caller.
    pub src_uid: String,
    /// The callees.
    pub dst_uid: Vec<String>,
    /// When to call, `YYYY-MM-DD HH:MM:SS` in the server's zone.
    #[schema(example = "2026-11-29 18:30:00")]
    pub call_time: String,
    /// Audio the robot plays into the call.
    pub tone_list: Vec<String>,
    /// Same as `id`.
    pub pk: i64,
    /// The app backend's task id.
    pub taskid: String,
    /// `pending`, `fired` or `missed`.
    #[schema(example = "pending")]
    pub state: String,
    /// The call's channel, once fired.
    pub channel: Option<String>,
}

crate::envelope!(
    /// The task as stored.
    TaskResp,
    TaskOut
);

/// A page of tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    /// This page's tasks.
    pub rows: Vec<TaskOut>,
    /// Where this page is.
    pub row_pages: RowPages,
}

/// Paging of `calltask/list`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RowPages {
    /// This page (from 1).
    pub crt_page: i64,
    /// Tasks in all pages.
    pub total: i64,
    /// Tasks per page.
    pub perpage: i64,
}

crate::envelope!(
    /// A page of tasks.
    TaskListResp,
    TaskList
);

fn task_json(state: &AppState, t: &TaskRecord) -> TaskOut {
    TaskOut {
        id: t.id.get(),
        src_uid: t.src_uid.clone(),
        dst_uid: t.dst_uid.clone(),
        call_time: format_time(state, t.call_time * 1000),
        tone_list: t.tone_list.clone(),
        pk: t.id.get(),
        taskid: t.taskid.clone(),
        state: t.state.as_str().to_owned(),
        channel: t.channel.as_ref().map(ToString::to_string),
    }
}

/// Creates (no `id`) or updates a scheduled call.
#[utoipa::path(post, path = "/dapi/calltask/update", tag = "tasks",
    request_body = CalltaskUpdateReq,
    responses((status = 200, description = "Done", body = TaskResp)))]
async fn calltask_update(
    State(state): State<AppState>,
    auth: Authn,
    ip: ClientIp,
    DapiJson(req): DapiJson<CalltaskUpdateReq>,
) -> Result<Json<TaskResp>, ApiError> {
    auth.check_uid(&req.src_uid)?;
    // A new task is a call to come: it costs a call now, so scheduling cannot get around
    // the call limit. Changing one is a write.
    let kind = match req.id.0 {
        None => Kind::Call,
        Some(_) => Kind::Write,
    };
    rate_limit(&state, kind, &req.src_uid, ip)?;
    if req.dst_uid.0.is_empty() {
        return Err(ApiError::bad(
            "invalid_field",
            "dst_uid must name at least one callee",
        ));
    }
    check_dst(&state, &req.dst_uid)?;
    let fields = TaskFields {
        src_uid: req.src_uid,
        dst_uid: req.dst_uid.0,
        call_time: parse_call_time(&state, &req.call_time)?,
        taskid: req.taskid.0,
        tone_list: req
            .tone_list
            .unwrap_or_default()
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
    };
    let now = state.clock().now_ms();
    let row = match req.id.0 {
        None => {
            let cap = state.config().calls.calltasks_per_uid;
            state.store().insert_task(&fields, now, cap).await?
        }
        // Only the owner's task: another uid's is "unknown", as a missing one.
        Some(id) => state.store().update_task(id, &fields, now).await?,
    };
    Ok(TaskResp::new(task_json(&state, &row)))
}

#[derive(Debug, Deserialize, ToSchema)]
struct CalltaskListReq {
    uid: Uid,
    /// The page, from 1 (default 1).
    #[serde(default)]
    #[schema(minimum = 1)]
    page: Option<i64>,
    /// Tasks per page, 1-100 (default 20).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    perpage: Option<i64>,
}

/// Lists `uid`'s scheduled calls, a page at a time.
#[utoipa::path(post, path = "/dapi/calltask/list", tag = "tasks",
    request_body = CalltaskListReq,
    responses((status = 200, description = "Done", body = TaskListResp)))]
async fn calltask_list(
    State(state): State<AppState>,
    auth: Authn,
    DapiJson(req): DapiJson<CalltaskListReq>,
) -> Result<Json<TaskListResp>, ApiError> {
    auth.check_uid(&req.uid)?;
    let page = req.page.unwrap_or(1);
    if page < 1 {
        return Err(ApiError::bad("invalid_field", "page must be 1 or more"));
    }
    let perpage = req.perpage.unwrap_or(20);
    if !(1..=100).contains(&perpage) {
        return Err(ApiError::bad(
            "invalid_field",
            "perpage must be between 1 and 100",
        ));
    }
    let (rows, total) = state.store().list_tasks(&req.uid, page, perpage).await?;
    Ok(TaskListResp::new(TaskList {
        rows: rows.iter().map(|t| task_json(&state, t)).collect(),
        row_pages: RowPages {
            crt_page: page,
            total,
            perpage,
        },
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
struct CalltaskDeleteReq {
    id: TaskId,
    uid: Uid,
}

/// Deletes one of `uid`'s scheduled calls.
#[utoipa::path(post, path = "/dapi/calltask/delete", tag = "tasks",
    request_body = CalltaskDeleteReq,
    responses((status = 200, description = "Done", body = OkNull)))]
async fn calltask_delete(
    State(state): State<AppState>,
    auth: Authn,
    ip: ClientIp,
    DapiJson(req): DapiJson<CalltaskDeleteReq>,
) -> Result<Json<OkNull>, ApiError> {
    auth.check_uid(&req.uid)?;
    rate_limit(&state, Kind::Write, &req.uid, ip)?;
    let id = req
        .id
        .0
        .ok_or_else(|| ApiError::bad("missing_field", "id is required"))?;
    state.store().delete_task(id, &req.uid).await?;
    Ok(OkNull::new(Null))
}
