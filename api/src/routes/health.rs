//! `/healthz` (the process is up), `/readyz` (the database answers and every
//! migration is applied) and `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::AppState;

/// `/healthz` answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// `/readyz` answer when ready.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// `ready`.
    #[schema(example = "ready")]
    status: &'static str,
    /// `sqlite` or `postgres`.
    #[schema(example = "sqlite")]
    database: &'static str,
}

/// `/readyz` answer when not ready.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct NotReady {
    /// `not_ready`.
    #[schema(example = "not_ready")]
    status: &'static str,
    /// Why.
    reason: &'static str,
}

/// Health routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(&state).await,
    )
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "Up", body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The database answers and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready: the database is unreachable or migrations are not current", body = NotReady)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    match state.store().ready().await {
        Ok(true) => Json(Ready {
            status: "ready",
            database: state.store().backend(),
        })
        .into_response(),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(NotReady {
                status: "not_ready",
                reason: "migrations are not current",
            }),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(NotReady {
                    status: "not_ready",
                    reason: "database unreachable",
                }),
            )
                .into_response()
        }
    }
}
