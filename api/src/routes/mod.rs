//! The HTTP surface: one router per module, composed here.

pub mod admin;
pub mod dapi;
pub mod device;
pub mod health;

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
        .merge(admin::router(state.config().max_asset_bytes))
        .merge(crate::rtc::router())
        .fallback(not_found)
        .with_state(state)
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
