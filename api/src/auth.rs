//! Who is calling. `DAPI_AUTH=open` (the original contract, the default, with a loud
//! warning) trusts the uid in the body. `DAPI_AUTH=jwt` requires
//! `Authorization: Bearer <JWT>` issued by the app's own backend (HS256 with
//! `DAPI_JWT_SECRET`, or RS256/ES256 keys from the JWKS file `DAPI_JWT_JWKS`): the uid in
//! every body must equal the token's `sub` (403 otherwise), and channel operations need
//! the uid to be a member of the call (403 otherwise): an active one (row below 2, call
//! not ended) to mint a token or invite the robot, any one to read or report. `exp` and
//! `nbf` are checked (30 s leeway); an HS256 secret shorter than 32 bytes is refused at
//! start. Objects of other uids (tasks, devices) answer as missing ones.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::AppState;
use crate::config::{AuthConfig, AuthKind};
use crate::domain::{ChannelName, Uid};
use crate::error::ApiError;

pub use crate::config::MIN_JWT_SECRET_BYTES;

/// How requests are authenticated.
#[derive(Clone)]
pub enum AuthMode {
    /// No authentication: the original behaviour.
    Open,
    /// JWTs from the app's backend.
    Jwt(JwtVerifier),
}

impl std::fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Open => f.write_str("Open"),
            Self::Jwt(v) => write!(f, "Jwt({} keys)", v.keys.len()),
        }
    }
}

/// Verifies app JWTs against configured keys.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Vec<(Option<String>, DecodingKey, Algorithm)>,
    audience: Option<String>,
    issuer: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
}

impl AuthMode {
    /// Builds the mode from configuration (`DAPI_AUTH`, `DAPI_JWT_SECRET`,
    /// `DAPI_JWT_JWKS`), checked by [`Config::validate`](crate::config::Config::validate);
    /// what is left to fail is reading the JWKS file.
    pub fn from_config(c: &AuthConfig) -> anyhow::Result<Self> {
        match c.kind {
            AuthKind::Open => {
                tracing::warn!(
                    "DAPI_AUTH=open: anyone who can reach this API can get a token for any channel as any uid; set DAPI_AUTH=jwt in production"
                );
                Ok(Self::Open)
            }
            AuthKind::Jwt => {
                let mut keys = Vec::new();
                if let Some(secret) = &c.jwt_secret {
                    let key = DecodingKey::from_secret(secret.expose().as_bytes())
                        .map_err(|_| anyhow::anyhow!("DAPI_JWT_SECRET must not be empty"))?;
                    keys.push((None, key, Algorithm::HS256));
                }
                if let Some(file) = &c.jwt_jwks {
                    let path = file.display();
                    let text = std::fs::read_to_string(file)
                        .map_err(|e| anyhow::anyhow!("reading DAPI_JWT_JWKS {path}: {e}"))?;
                    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
                        .map_err(|e| anyhow::anyhow!("DAPI_JWT_JWKS {path} is not a JWKS: {e}"))?;
                    for jwk in &set.keys {
                        let alg = match &jwk.algorithm {
                            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
                                Algorithm::ES256
                            }
                            _ => anyhow::bail!(
                                "DAPI_JWT_JWKS: only RSA (RS256) and EC P-256 (ES256) keys are supported"
                            ),
                        };
                        let key = DecodingKey::from_jwk(jwk)
                            .map_err(|e| anyhow::anyhow!("DAPI_JWT_JWKS key: {e}"))?;
                        keys.push((jwk.common.key_id.clone(), key, alg));
                    }
                }
                if keys.is_empty() {
                    // `validate` asks for a secret or a JWKS file; this one held no key.
                    anyhow::bail!("DAPI_JWT_JWKS holds no key");
                }
                Ok(Self::Jwt(JwtVerifier {
                    keys,
                    audience: c.jwt_audience.clone(),
                    issuer: c.jwt_issuer.clone(),
                }))
            }
        }
    }
}

impl JwtVerifier {
    /// The token's subject, if the token verifies with one of the keys.
    pub fn verify(&self, token: &str) -> Result<Uid, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::Unauthorized("the bearer token is not a JWT".into()))?;
        let mut last = None;
        for (kid, key, alg) in &self.keys {
            if *alg != header.alg || (kid.is_some() && header.kid.is_some() && kid != &header.kid) {
                continue;
            }
            let mut v = Validation::new(*alg);
            v.leeway = 30;
            // A token that is not valid yet (`nbf` in the future) is refused.
            v.validate_nbf = true;
            match &self.audience {
                Some(a) => v.set_audience(&[a]),
                None => v.validate_aud = false,
            }
            if let Some(i) = &self.issuer {
                v.set_issuer(&[i]);
            }
            match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(data) => {
                    return Uid::parse(&data.claims.sub)
                        .map_err(|m| ApiError::Unauthorized(format!("the token's sub {m}")));
                }
                Err(e) => last = Some(e),
            }
        }
        let why = match last.as_ref().map(|e| e.kind()) {
            Some(jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                "the bearer token has expired"
            }
            Some(jsonwebtoken::errors::ErrorKind::ImmatureSignature) => {
                "the bearer token is not valid yet (nbf)"
            }
            Some(jsonwebtoken::errors::ErrorKind::InvalidAudience) => {
                "the bearer token is for another audience"
            }
            Some(jsonwebtoken::errors::ErrorKind::InvalidIssuer) => {
                "the bearer token has another issuer"
            }
            Some(jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_)) => {
                "the bearer token lacks a required claim (exp, sub)"
            }
            None => "no configured key matches the token's algorithm or key id",
            _ => "the bearer token does not verify",
        };
        Err(ApiError::Unauthorized(why.into()))
    }
}

/// The authenticated caller of a request: `None` in open mode.
#[derive(Debug, Clone)]
pub struct Authn(pub Option<Uid>);

impl FromRequestParts<AppState> for Authn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match state.auth() {
            AuthMode::Open => Ok(Self(None)),
            AuthMode::Jwt(v) => {
                let token = parts
                    .headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        ApiError::Unauthorized(
                            "Authorization: Bearer <JWT> is required (DAPI_AUTH=jwt)".into(),
                        )
                    })?;
                v.verify(token.trim()).map(|sub| Self(Some(sub)))
            }
        }
    }
}

impl Authn {
    /// 403 unless the body's uid is the token's subject.
    pub fn check_uid(&self, uid: &Uid) -> Result<(), ApiError> {
        match &self.0 {
            Some(sub) if sub != uid => Err(ApiError::Forbidden(format!(
                "the token is for {sub}, not for uid {uid}"
            ))),
            _ => Ok(()),
        }
    }

    /// 403 unless `uid` is the subject and an **active** member of the channel's call
    /// ([`AppState::is_active_member`]; 404 for an unknown channel, as in open mode):
    /// minting a token and inviting the robot.
    pub async fn check_member(
        &self,
        state: &AppState,
        channel: &ChannelName,
        uid: &Uid,
    ) -> Result<(), ApiError> {
        self.check_uid(uid)?;
        if self.0.is_none() {
            return Ok(());
        }
        member_answer(state.is_active_member(channel, uid).await?, channel, uid)
    }

    /// 403 unless `uid` is the subject and is or was a member of the channel's call
    /// (whatever its status): reading the timeline, reporting events and heartbeats
    /// (late ones are recorded and ignored), asking the robot to leave.
    pub async fn check_was_member(
        &self,
        state: &AppState,
        channel: &ChannelName,
        uid: &Uid,
    ) -> Result<(), ApiError> {
        self.check_uid(uid)?;
        if self.0.is_none() {
            return Ok(());
        }
        member_answer(state.store().was_member(channel, uid).await?, channel, uid)
    }
}

fn member_answer(member: Option<bool>, channel: &ChannelName, uid: &Uid) -> Result<(), ApiError> {
    match member {
        Some(true) => Ok(()),
        Some(false) => Err(ApiError::Forbidden(format!(
            "uid {uid} is not a member of channel {channel}"
        ))),
        None => Err(ApiError::NotFound(format!("unknown channel {channel}"))),
    }
}
