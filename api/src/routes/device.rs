//! Device registration for push (ext): `POST /dapi/device/register` and
//! `POST /dapi/device/unregister`, in the `/dapi` request and response shapes.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Authn;
use crate::client_ip::ClientIp;
use crate::domain::Uid;
use crate::error::ApiError;
use crate::extract::DapiJson;
use crate::push::device::{MAX_TOKEN_LEN, Platform, PushToken};
use crate::rate_limit::Kind;
use crate::store::NewDevice;

/// The device routes.
pub fn router() -> Router<AppState> {
    let m = super::method_not_allowed;
    Router::new()
        .route("/dapi/device/register", post(register).fallback(m))
        .route("/dapi/device/unregister", post(unregister).fallback(m))
}

/// Device routes need jwt mode, and then only the uid itself may register (or drop) its
/// devices: pushes carry the caller and `extra_msg`, and in open mode anyone could
/// register devices as a victim's uid and push the victim's own devices out (each uid
/// keeps its newest `DAPI_PUSH_MAX_DEVICES`).
fn authorize(state: &AppState, auth: &Authn, uid: &Uid, ip: ClientIp) -> Result<(), ApiError> {
    if auth.0.is_none() {
        return Err(ApiError::Forbidden(
            "device registration needs authenticated uids: set DAPI_AUTH=jwt (in open mode anyone could register devices as any uid)".into(),
        ));
    }
    auth.check_uid(uid)?;
    super::dapi::rate_limit(state, Kind::Write, uid, ip)
}

#[derive(Debug, Deserialize, ToSchema)]
struct RegisterReq {
    uid: Uid,
    /// `ios`, `android` or `web` (any case).
    #[schema(value_type = String, example = "ios")]
    platform: Platform,
    /// The device's push token: 1-4096 printable ASCII characters without spaces (hex for ios).
    #[schema(min_length = 1, max_length = 4096)]
    push_token: String,
    /// A PushKit (VoIP) token.
    #[serde(default)]
    voip: bool,
}

/// A registered device.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceOut {
    /// Row id.
    pub id: i64,
    /// Whose device.
    pub uid: String,
    /// `ios`, `android` or `web`.
    pub platform: String,
    /// A PushKit (VoIP) token.
    pub voip: bool,
}

crate::envelope!(
    /// The device as registered.
    DeviceResp,
    DeviceOut
);

/// Whether a device was removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Removed {
    /// `false` when no such device was registered.
    pub removed: bool,
}

crate::envelope!(
    /// Whether a device was removed.
    RemovedResp,
    Removed
);

/// Registers (or re-registers) a device: an upsert on (platform, push_token), so the
/// same token registered by another uid moves to it.
#[utoipa::path(post, path = "/dapi/device/register", tag = "devices",
    request_body = RegisterReq,
    responses((status = 200, description = "Done", body = DeviceResp)))]
async fn register(
    State(state): State<AppState>,
    auth: Authn,
    ip: ClientIp,
    DapiJson(req): DapiJson<RegisterReq>,
) -> Result<Json<DeviceResp>, ApiError> {
    authorize(&state, &auth, &req.uid, ip)?;
    let push_token = PushToken::parse(req.platform, &req.push_token)
        .map_err(|m| ApiError::bad("invalid_field", format!("push_token {m}")))?;
    let device = NewDevice {
        uid: req.uid,
        platform: req.platform,
        push_token,
        voip: req.voip,
    };
    let now = state.clock().now_ms();
    let rec = state
        .store()
        .register_device(&device, state.push().max_devices(), now)
        .await?;
    tracing::info!(
        uid = %rec.uid,
        platform = %rec.platform,
        voip = rec.voip,
        token = %device.push_token.redacted(),
        "device registered"
    );
    Ok(DeviceResp::new(DeviceOut {
        id: rec.id,
        uid: rec.uid,
        platform: rec.platform,
        voip: rec.voip,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
struct UnregisterReq {
    uid: Uid,
    /// The token registered.
    #[schema(min_length = 1, max_length = 4096)]
    push_token: String,
}

/// Removes `uid`'s device with this token and drops its queued pushes; unregistering
/// an unknown device succeeds with `removed: false`.
#[utoipa::path(post, path = "/dapi/device/unregister", tag = "devices",
    request_body = UnregisterReq,
    responses((status = 200, description = "Done", body = RemovedResp)))]
async fn unregister(
    State(state): State<AppState>,
    auth: Authn,
    ip: ClientIp,
    DapiJson(req): DapiJson<UnregisterReq>,
) -> Result<Json<RemovedResp>, ApiError> {
    authorize(&state, &auth, &req.uid, ip)?;
    if req.push_token.is_empty() || req.push_token.len() > MAX_TOKEN_LEN {
        return Err(ApiError::bad(
            "invalid_field",
            format!("push_token must be 1-{MAX_TOKEN_LEN} characters"),
        ));
    }
    let now = state.clock().now_ms();
    let removed = state
        .store()
        .unregister_device(&req.uid, &req.push_token, now)
        .await?;
    Ok(RemovedResp::new(Removed { removed }))
}
