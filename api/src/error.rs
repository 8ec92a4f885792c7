//! The one place where errors become HTTP responses.
//!
//! Client mistakes are 4xx with
//! `{"success": false, "data": null, "error": {"code", "message"}}`; internal errors are
//! a 500 with a generic message while the whole chain goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

/// Every way a `/dapi` request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; `code` is a stable snake_case code, the message names
    /// the field and what to fix.
    #[error("{message}")]
    BadRequest {
        /// Stable machine-readable code.
        code: &'static str,
        /// What to fix.
        message: String,
    },
    /// The channel, task or asset does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (for example a task that already fired).
    #[error("{0}")]
    Conflict(String),
    /// The request conflicts with the current state, with a specific code (`no_robot`,
    /// `control_failed`).
    #[error("{message}")]
    ConflictCode {
        /// Stable machine-readable code.
        code: &'static str,
        /// What is in the way.
        message: String,
    },
    /// Something the request waits for (a robot agent) did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// The body is larger than the configured limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Missing or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Too many requests; retry after `retry_after` seconds.
    #[error("{message}")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
        /// What was limited.
        message: String,
    },
    /// A dependency (the database) is unreachable; try again later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; details are logged, not returned.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A 400 naming a field.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The status and code this error maps to.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::ConflictCode { code, .. } => (StatusCode::CONFLICT, code),
            Self::GatewayTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "agent_timeout"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(what) | StoreError::LimitReached(what) => Self::Conflict(what),
            StoreError::Unavailable(e) => {
                tracing::error!(error = %e, "database unavailable");
                Self::Unavailable("the database is unavailable; retry shortly".into())
            }
            StoreError::Other(e) => Self::Internal(e.into()),
            // A row the store cannot read is the server's fault: a 500, the row in the log.
            e @ StoreError::Corrupt { .. } => Self::Internal(e.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Self::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let body =
            json!({"success": false, "data": null, "error": {"code": code, "message": message}});
        let retry_after = match &self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(v) =
            retry_after.and_then(|secs| axum::http::HeaderValue::from_str(&secs.to_string()).ok())
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}
