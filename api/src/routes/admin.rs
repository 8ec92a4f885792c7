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
use serde_json::{Value, json};
use sha2::Digest;

use crate::AppState;
use crate::dispatch::agent_link::{agent_ws, check_bearer};
use crate::domain::AssetName;
use crate::error::ApiError;
use crate::store::AssetRecord;

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
        state.config().admin_key.as_ref(),
        "admin API",
        "DAPI_ADMIN_KEY",
    )
}

fn asset_name(raw: &str) -> Result<AssetName, ApiError> {
    AssetName::parse(raw).map_err(|m| ApiError::bad("invalid_field", format!("asset name {m}")))
}

fn ok(data: Value) -> Json<Value> {
    Json(json!({"success": true, "data": data}))
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
    if state.store().get_asset("default").await?.is_none() {
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

async fn put_audio(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    let name = asset_name(&name)?;
    let rec = validate_asset(&name, body.clone(), state.clock().now_ms()).await?;
    state.store().put_asset(&rec, &body).await?;
    tracing::info!(asset = %rec.name, bytes = rec.bytes, duration_ms = rec.duration_ms, "audio asset stored");
    Ok(ok(serde_json::to_value(&rec).unwrap_or(Value::Null)))
}

async fn list_audio(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    let list = state.store().list_assets().await?;
    Ok(ok(serde_json::to_value(list).unwrap_or(Value::Null)))
}

async fn get_audio(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    admin(&state, &headers)?;
    serve_asset(&state, &headers, &name).await
}

async fn delete_audio(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    let name = asset_name(&name)?;
    if !state.store().delete_asset(name.as_str()).await? {
        return Err(ApiError::NotFound(format!(
            "unknown audio asset {}",
            name.as_str()
        )));
    }
    Ok(ok(Value::Null))
}

async fn agent_audio(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_bearer(
        &headers,
        state.config().agent_key.as_ref(),
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
    let Some((rec, content)) = state.store().get_asset(name.as_str()).await? else {
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
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::ETAG, etag),
        ],
        content,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct SessionsQuery {
    channel: Option<String>,
}

async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    let channel = q
        .channel
        .ok_or_else(|| ApiError::bad("missing_field", "channel is required"))?;
    let sessions = state.store().channel_sessions(&channel).await?;
    Ok(ok(serde_json::to_value(sessions).unwrap_or(Value::Null)))
}

async fn get_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    let s = state
        .store()
        .robot_session(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown robot session {id}")))?;
    Ok(ok(serde_json::to_value(s).unwrap_or(Value::Null)))
}

async fn list_agents(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    Ok(ok(
        serde_json::to_value(state.dispatcher().agents()).unwrap_or(Value::Null)
    ))
}

async fn drain_agent(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    if !state.dispatcher().drain(&id) {
        return Err(ApiError::NotFound(format!(
            "agent {id} is not connected to this instance"
        )));
    }
    Ok(ok(Value::Null))
}

async fn queue(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    let stats = state.store().queue_stats(state.clock().now_ms()).await?;
    Ok(ok(serde_json::to_value(stats).unwrap_or(Value::Null)))
}
