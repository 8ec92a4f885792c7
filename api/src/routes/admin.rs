//! Operator endpoints (`Authorization: Bearer <DAPI_ADMIN_KEY>`) and the agents' asset
//! download (`Authorization: Bearer <DAPI_AGENT_KEY>`).
//!
//! - `PUT /admin/audio/{name}` (body: the file) validates by decoding, then stores it;
//!   `GET /admin/audio` lists; `DELETE /admin/audio/{name}` removes.
//! - `GET /agent/audio/{name}`: the file, for agents (ETag = sha256).
//! - `GET /admin/robot/sessions?channel=..`, `GET /admin/robot/sessions/{id}`: state,
//!   attempts and every attempt's error.
//! - `GET /admin/agents`, `POST /admin/agents/{id}/drain`, `GET /admin/queue`.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use sha2::Digest;

use crate::AppState;
use crate::dispatch::AgentInfo;
use crate::dispatch::agent_link::{agent_ws, check_bearer};
use crate::domain::{AssetName, ChannelName};
use crate::error::ApiError;
use crate::openapi::{Binary, Null, OkNull};
use crate::store::{AssetRecord, QueueStats, RobotSession, SessionId};

/// The shipped default asset (espeak-ng speech, Ogg Opus).
pub const DEFAULT_ASSET: &[u8] = include_bytes!("../../assets/default.opus");

/// Admin and agent routes.
pub fn router(max_asset_bytes: usize) -> Router<AppState> {
    Router::new()
        .route("/agent", get(agent_ws))
        .route("/agent/audio/{name}", get(agent_audio))
        .route("/admin/audio", get(list_audio))
        .route(
            "/admin/audio/{name}",
            put(put_audio)
                .delete(delete_audio)
                .get(get_audio)
                .layer(DefaultBodyLimit::max(max_asset_bytes)),
        )
        .route("/admin/robot/sessions", get(list_sessions))
        .route("/admin/robot/sessions/{id}", get(get_session))
        .route("/admin/agents", get(list_agents))
        .route("/admin/agents/{id}/drain", post(drain_agent))
        .route("/admin/queue", get(queue))
}

fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    check_bearer(
        headers,
        state.config().server.admin_key.as_ref(),
        "admin API",
        "DAPI_ADMIN_KEY",
    )
}

fn asset_name(raw: &str) -> Result<AssetName, ApiError> {
    AssetName::parse(raw).map_err(|m| ApiError::bad("invalid_field", format!("asset name {m}")))
}

crate::envelope!(
    /// One stored audio asset.
    AssetResp,
    AssetRecord
);
crate::envelope!(
    /// Every stored audio asset.
    AssetListResp,
    Vec<AssetRecord>
);
crate::envelope!(
    /// Robot sessions.
    SessionListResp,
    Vec<RobotSession>
);
crate::envelope!(
    /// One robot session.
    SessionResp,
    RobotSession
);
crate::envelope!(
    /// The agents connected to this instance.
    AgentListResp,
    Vec<AgentInfo>
);
crate::envelope!(
    /// Queue figures.
    QueueResp,
    QueueStats
);

/// The `{name}` path parameter of the asset routes.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents the `Path<String>` the handlers take
struct NameParam {
    /// An asset name.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    name: String,
}

/// Validates `content` by decoding all of it; returns the record to store.
pub async fn validate_asset(
    name: &AssetName,
    content: Bytes,
    now_ms: i64,
) -> Result<AssetRecord, ApiError> {
    if content.is_empty() {
        return Err(ApiError::bad(
            "invalid_audio",
            "the body is empty: send the audio file",
        ));
    }
    let bytes = i64::try_from(content.len()).unwrap_or(i64::MAX);
    let sha = hex::encode(sha2::Sha256::digest(&content));
    let info = tokio::task::spawn_blocking(move || audio::probe(content))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::bad("invalid_audio", format!("cannot be played: {e}")))?;
    let duration_ms = (info.duration_seconds * 1000.0).round() as i64;
    if duration_ms <= 0 {
        return Err(ApiError::bad("invalid_audio", "the file holds no audio"));
    }
    Ok(AssetRecord {
        name: name.as_str().to_owned(),
        sha256: sha,
        bytes,
        duration_ms,
        created_at_ms: now_ms,
    })
}

/// Stores the shipped `default` asset unless one is already there.
pub async fn seed_default_asset(state: &AppState) -> anyhow::Result<()> {
    if !state.store().asset_exists("default").await? {
        let rec = validate_asset(
            &AssetName::default_asset(),
            Bytes::from_static(DEFAULT_ASSET),
            state.clock().now_ms(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("the shipped default asset does not decode: {e}"))?;
        state.store().put_asset(&rec, DEFAULT_ASSET).await?;
        tracing::info!(
            duration_ms = rec.duration_ms,
            "stored the default audio asset"
        );
    }
    Ok(())
}

/// Uploads (or replaces) an audio asset: the body is the file (any format the robot
/// decodes: Ogg Opus, WAV, FLAC, MP3, AAC/M4A, Vorbis); it is decoded whole first.
#[utoipa::path(put, path = "/admin/audio/{name}", tag = "admin", params(NameParam),
    request_body(content = Binary, content_type = "application/octet-stream"),
    security(("admin_key" = [])),
    responses((status = 200, description = "Stored", body = AssetResp)))]
async fn put_audio(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Result<Json<AssetResp>, ApiError> {
    // The key and the name are checked before the body is read, and an oversized body is
    // a 413 in the API's error shape (the `Bytes` extractor's own rejection is plain text).
    admin(&state, &headers)?;
    let name = asset_name(&name)?;
    let limit = state.config().dispatch.max_asset_bytes;
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return ApiError::PayloadTooLarge(limit);
            }
            source = s.source();
        }
        ApiError::bad(
            "invalid_body",
            format!("the upload was not received whole: {e}"),
        )
    })?;
    let rec = validate_asset(&name, body.clone(), state.clock().now_ms()).await?;
    state.store().put_asset(&rec, &body).await?;
    tracing::info!(asset = %rec.name, bytes = rec.bytes, duration_ms = rec.duration_ms, "audio asset stored");
    Ok(AssetResp::new(rec))
}

/// Lists the stored audio assets.
#[utoipa::path(get, path = "/admin/audio", tag = "admin", security(("admin_key" = [])),
    responses((status = 200, description = "Done", body = AssetListResp)))]
async fn list_audio(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<AssetListResp>, ApiError> {
    admin(&state, &headers)?;
    let list = state.store().list_assets().await?;
    Ok(AssetListResp::new(list))
}

/// Downloads an audio asset (ETag = its SHA-256; `If-None-Match` answers 304).
#[utoipa::path(get, path = "/admin/audio/{name}", tag = "admin", params(NameParam),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = Binary),
        (status = 304, description = "Not modified")))]
async fn get_audio(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    admin(&state, &headers)?;
    serve_asset(&state, &headers, &name).await
}

/// Deletes an audio asset.
#[utoipa::path(delete, path = "/admin/audio/{name}", tag = "admin", params(NameParam),
    security(("admin_key" = [])),
    responses((status = 200, description = "Deleted", body = OkNull)))]
async fn delete_audio(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<OkNull>, ApiError> {
    admin(&state, &headers)?;
    let name = asset_name(&name)?;
    if !state.store().delete_asset(name.as_str()).await? {
        return Err(ApiError::NotFound(format!(
            "unknown audio asset {}",
            name.as_str()
        )));
    }
    Ok(OkNull::new(Null))
}

/// An audio asset, for robot agents (ETag = its SHA-256; `If-None-Match` answers 304).
#[utoipa::path(get, path = "/agent/audio/{name}", tag = "agents", params(NameParam),
    security(("agent_key" = [])),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = Binary),
        (status = 304, description = "Not modified")))]
async fn agent_audio(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_bearer(
        &headers,
        state.config().dispatch.agent_key.as_ref(),
        "agent link",
        "DAPI_AGENT_KEY",
    )?;
    serve_asset(&state, &headers, &name).await
}

async fn serve_asset(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
) -> Result<Response, ApiError> {
    let name = asset_name(name)?;
    let Some(rec) = state.store().asset_record(name.as_str()).await? else {
        return Err(ApiError::NotFound(format!(
            "unknown audio asset {}",
            name.as_str()
        )));
    };
    let etag = format!("\"{}\"", rec.sha256);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let len = u64::try_from(rec.bytes).unwrap_or(0);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::ETAG, etag),
        ],
        axum::body::Body::from_stream(asset_body(state.store().clone(), name, rec.sha256, len)),
    )
        .into_response())
}

/// The first slice of a download, kept small so the first bytes leave at once; the rest
/// go in larger slices (each read of a slice costs about one read of the whole blob on
/// SQLite, whose `substr` loads the value).
const FIRST_SLICE: u64 = 256 * 1024;
const SLICE: u64 = 4 * 1024 * 1024;

/// An asset's content as a stream of slices read one at a time, so that a 30 MB asset
/// starts arriving within milliseconds (a robot starts encoding it while it arrives) and
/// is never held whole in the API's memory. A slice that comes back missing or short (the
/// asset was deleted or replaced meanwhile) ends the body with an error: the client sees a
/// broken download, never a mix of two contents.
fn asset_body(
    store: crate::store::Store,
    name: AssetName,
    sha256: String,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::unfold(Some(0u64), move |offset| {
        let (store, name, sha256) = (store.clone(), name.clone(), sha256.clone());
        async move {
            let offset = offset.filter(|o| *o < len)?;
            let want = if offset == 0 { FIRST_SLICE } else { SLICE }.min(len - offset);
            let item = match store
                .asset_slice(name.as_str(), &sha256, offset, want)
                .await
            {
                Ok(Some(b)) if b.len() as u64 == want => Ok(Bytes::from(b)),
                Ok(_) => Err(std::io::Error::other(format!(
                    "audio asset {} changed while it was being sent",
                    name.as_str()
                ))),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let next = item.is_ok().then_some(offset + want);
            Some((item, next))
        }
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct SessionsQuery {
    /// The channel.
    #[param(required = true, value_type = String, min_length = 1, max_length = 64)]
    channel: Option<String>,
}

/// The robot sessions of a channel: state, attempts and every attempt's error.
#[utoipa::path(get, path = "/admin/robot/sessions", tag = "admin",
    params(SessionsQuery), security(("admin_key" = [])),
    responses((status = 200, description = "Done", body = SessionListResp)))]
async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<SessionListResp>, ApiError> {
    admin(&state, &headers)?;
    let channel = q
        .channel
        .ok_or_else(|| ApiError::bad("missing_field", "channel is required"))?;
    // Never validated here: a name the store could not hold has no sessions (an empty
    // list, as when this passed the text through).
    let sessions = match ChannelName::parse(&channel) {
        Ok(channel) => state.store().channel_sessions(&channel).await?,
        Err(_) => Vec::new(),
    };
    Ok(SessionListResp::new(sessions))
}

/// One robot session.
#[utoipa::path(get, path = "/admin/robot/sessions/{id}", tag = "admin",
    params(("id" = i64, Path, description = "Session id")), security(("admin_key" = [])),
    responses((status = 200, description = "Done", body = SessionResp)))]
async fn get_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SessionResp>, ApiError> {
    admin(&state, &headers)?;
    // Parsed here, not by `Path<i64>`, so a bad id is a 400 in the API's error shape.
    let id = id.parse().map(SessionId::new).map_err(|_| {
        ApiError::bad(
            "invalid_field",
            format!("session id {id:?} is not an integer"),
        )
    })?;
    let s = state
        .store()
        .robot_session(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown robot session {id}")))?;
    Ok(SessionResp::new(s))
}

/// The robot agents connected to this instance.
#[utoipa::path(get, path = "/admin/agents", tag = "admin", security(("admin_key" = [])),
    responses((status = 200, description = "Done", body = AgentListResp)))]
async fn list_agents(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<AgentListResp>, ApiError> {
    admin(&state, &headers)?;
    Ok(AgentListResp::new(state.dispatcher().agents()))
}

/// Drains an agent: it takes no new sessions and finishes or hands back its own.
#[utoipa::path(post, path = "/admin/agents/{id}/drain", tag = "admin",
    params(("id" = String, Path, description = "Agent id")), security(("admin_key" = [])),
    responses((status = 200, description = "Draining", body = OkNull)))]
async fn drain_agent(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<OkNull>, ApiError> {
    admin(&state, &headers)?;
    if !state.dispatcher().drain(&id) {
        return Err(ApiError::NotFound(format!(
            "agent {id} is not connected to this instance"
        )));
    }
    Ok(OkNull::new(Null))
}

/// Robot queue figures: depth, oldest queued age, sessions by state, re-dispatches.
#[utoipa::path(get, path = "/admin/queue", tag = "admin", security(("admin_key" = [])),
    responses((status = 200, description = "Done", body = QueueResp)))]
async fn queue(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<QueueResp>, ApiError> {
    admin(&state, &headers)?;
    let stats = state.store().queue_stats(state.clock().now_ms()).await?;
    Ok(QueueResp::new(stats))
}
