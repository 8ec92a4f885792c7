//! The HTTP surface: one router per module, composed here.

pub mod admin;
pub mod dapi;
pub mod device;
pub mod health;
pub mod recordings;
pub mod robot_control;

use std::collections::HashSet;
use std::sync::RwLock;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::AppState;
use crate::error::ApiError;

/// The whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(dapi::router())
        .merge(device::router())
        .merge(health::router())
        .merge(recordings::router())
        .merge(robot_control::router())
        .merge(admin::router(state.config().dispatch.max_asset_bytes))
        .merge(crate::rtc::router())
        .route(
            "/openapi.json",
            axum::routing::get(crate::openapi::openapi_json),
        )
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
        .fallback(not_found)
        // Every request gets an `x-request-id` (kept if the client sent one), returned in
        // the response and carried by the `request` span, so every log line has it.
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &axum::extract::Request| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
                })
                .on_request(())
                .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG)),
        )
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(RequestIds))
        .with_state(state)
}

/// Request ids: a per-process random prefix and a counter (cheap, unique, sortable).
#[derive(Clone, Copy)]
struct RequestIds;

impl tower_http::request_id::MakeRequestId for RequestIds {
    fn make_request_id<B>(
        &mut self,
        _: &http::Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static PREFIX: OnceLock<String> = OnceLock::new();
        static N: AtomicU64 = AtomicU64::new(1);
        let prefix = PREFIX.get_or_init(|| format!("{:08x}", rand::random::<u32>()));
        let id = format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed));
        http::HeaderValue::from_str(&id)
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

async fn not_found(uri: axum::http::Uri) -> impl IntoResponse {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

/// Method not allowed, in the `/dapi` error shape.
pub async fn method_not_allowed() -> impl IntoResponse {
    let body = serde_json::json!({"success": false, "data": null, "error": {"code": "method_not_allowed", "message": "use POST with a JSON body"}});
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
}

/// Channels known to exist, so `call/token` can answer without a database read. Only
/// positive answers are cached (a channel never stops existing); a miss asks the store.
#[derive(Debug, Default)]
pub struct ChannelCache {
    set: RwLock<HashSet<String>>,
}

const CHANNEL_CACHE_MAX: usize = 100_000;

impl ChannelCache {
    /// Whether `channel` is known to exist.
    pub fn contains(&self, channel: &str) -> bool {
        self.set
            .read()
            .map(|s| s.contains(channel))
            .unwrap_or(false)
    }

    /// Remembers that `channel` exists.
    pub fn insert(&self, channel: &str) {
        if let Ok(mut s) = self.set.write() {
            if s.len() >= CHANNEL_CACHE_MAX {
                s.clear();
            }
            s.insert(channel.to_owned());
        }
    }
}
