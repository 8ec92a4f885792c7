//! The JSON body extractor of `/dapi`: size limit (413), parse errors naming the field
//! (400), all through [`ApiError`].

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;

/// A JSON request body of type `T`.
#[derive(Debug)]
pub struct DapiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for DapiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config().calls.max_body;
        let body = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(limit))?;
        parse_body(&body).map(DapiJson)
    }
}

/// Parses a body, turning serde's errors into 400s that name the field.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad(
            "invalid_json",
            "the body is empty: send a JSON object",
        ));
    }
    // Reject anything that is not a JSON object first, with a clear message.
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("invalid_json", format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad(
            "invalid_json",
            "the body must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if let Some(field) = inner
            .strip_prefix("missing field `")
            .and_then(|s| s.strip_suffix('`'))
        {
            let field = if path == "." {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            ApiError::bad("missing_field", format!("{field} is required"))
        } else if path == "." {
            ApiError::bad("invalid_field", inner)
        } else {
            ApiError::bad("invalid_field", format!("{path}: {inner}"))
        }
    })
}
