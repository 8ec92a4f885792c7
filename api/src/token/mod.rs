//! Agora-compatible AccessTokens: "006" (default) and AccessToken2 "007".
//!
//! ```text
//!   mint:    (app id, certificate, channel, uid, times) --HMAC-SHA256--> "006..." / "007eJ..."
//!   verify:  token --parse--> fields --recompute signature--> check app id, channel, uid,
//!            expiry, join privilege
//! ```
//!
//! Byte layouts follow Agora's reference builders exactly (the official vectors in
//! `shared/conformance/agora-tokens.json` reproduce byte for byte; 007 uses stock zlib
//! through flate2's `zlib` backend). The certificate's ASCII bytes are the HMAC key.

pub mod cli;

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Privilege id of "join channel".
pub const PRIVILEGE_JOIN: u16 = 1;
/// Largest token we agree to parse (a join token is about 115-200 characters).
const MAX_TOKEN_LEN: usize = 4096;

/// Which token format to mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVersion {
    /// AccessToken "006": absolute expiries.
    V006,
    /// AccessToken2 "007": issue time plus relative expiries, zlib-compressed.
    V007,
}

impl std::str::FromStr for TokenVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "006" | "6" => Ok(Self::V006),
            "007" | "7" => Ok(Self::V007),
            other => Err(format!("token version must be 006 or 007, not {other:?}")),
        }
    }
}

/// Why a token does not verify or parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The string is not a token of a known version, or its bytes are cut short.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature does not match the certificate.
    #[error("bad signature")]
    BadSignature,
    /// The token is for another App ID.
    #[error("token is for another App ID")]
    WrongAppId,
    /// The token is for another channel.
    #[error("token is for another channel")]
    WrongChannel,
    /// The token is for another uid.
    #[error("token is for another uid")]
    WrongUid,
    /// The token, or its join privilege, has expired.
    #[error("token expired")]
    Expired,
    /// The token has no join privilege.
    #[error("token has no join privilege")]
    NoJoinPrivilege,
    /// A 007 App ID or certificate is not 32 hex characters.
    #[error("007 tokens need a 32-hex-character App ID and certificate")]
    InvalidCredentials,
}

impl TokenError {
    /// A stable snake_case reason, for error frames.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "token_malformed",
            Self::BadSignature => "token_bad_signature",
            Self::WrongAppId => "token_wrong_app_id",
            Self::WrongChannel => "token_wrong_channel",
            Self::WrongUid => "token_wrong_uid",
            Self::Expired => "token_expired",
            Self::NoJoinPrivilege => "token_no_join_privilege",
            Self::InvalidCredentials => "token_invalid_credentials",
        }
    }
}

// ---------------------------------------------------------------- byte packing

struct Packer(Vec<u8>);

impl Packer {
    fn new() -> Self {
        Self(Vec::with_capacity(128))
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes16(&mut self, b: &[u8]) -> Result<&mut Self, TokenError> {
        let len = u16::try_from(b.len()).map_err(|_| TokenError::Malformed("field too long"))?;
        self.u16(len);
        self.0.extend_from_slice(b);
        Ok(self)
    }
    fn privileges(&mut self, p: &BTreeMap<u16, u32>) -> Result<&mut Self, TokenError> {
        let n = u16::try_from(p.len()).map_err(|_| TokenError::Malformed("too many privileges"))?;
        self.u16(n);
        for (id, exp) in p {
            self.u16(*id).u32(*exp);
        }
        Ok(self)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, TokenError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn i16(&mut self) -> Result<i16, TokenError> {
        let b = self.take(2)?;
        Ok(i16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, TokenError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes16(&mut self) -> Result<&'a [u8], TokenError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn string16(&mut self) -> Result<String, TokenError> {
        let b = self.bytes16()?;
        String::from_utf8(b.to_vec()).map_err(|_| TokenError::Malformed("string is not UTF-8"))
    }
    fn privileges(&mut self) -> Result<BTreeMap<u16, u32>, TokenError> {
        let n = self.u16()?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let id = self.u16()?;
            let v = self.u32()?;
            m.insert(id, v);
        }
        Ok(m)
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail for Hmac<Sha256>.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

// ---------------------------------------------------------------- 006

/// The fields of a 006 token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token006 {
    /// App ID (32 characters, clear text in the token).
    pub app_id: String,
    /// HMAC-SHA256 signature.
    pub signature: Vec<u8>,
    /// CRC-32 of the channel name.
    pub crc_channel: u32,
    /// CRC-32 of the uid string.
    pub crc_uid: u32,
    /// Random salt.
    pub salt: u32,
    /// Outer expiry, absolute unix seconds.
    pub ts: u32,
    /// Privilege id to absolute unix-second expiry; 0 means never.
    pub privileges: BTreeMap<u16, u32>,
}

fn message006(salt: u32, ts: u32, privileges: &BTreeMap<u16, u32>) -> Result<Vec<u8>, TokenError> {
    let mut m = Packer::new();
    m.u32(salt).u32(ts).privileges(privileges)?;
    Ok(m.0)
}

/// Builds a 006 token. `privileges` are absolute unix-second expiries (0 = never).
pub fn mint_006(
    app_id: &str,
    certificate: &str,
    channel: &str,
    uid: &str,
    salt: u32,
    ts: u32,
    privileges: &BTreeMap<u16, u32>,
) -> Result<String, TokenError> {
    let m = message006(salt, ts, privileges)?;
    let sig = hmac(
        certificate.as_bytes(),
        &[app_id.as_bytes(), channel.as_bytes(), uid.as_bytes(), &m],
    );
    let mut content = Packer::new();
    content
        .bytes16(&sig)?
        .u32(crc32fast::hash(channel.as_bytes()))
        .u32(crc32fast::hash(uid.as_bytes()))
        .bytes16(&m)?;
    Ok(format!("006{app_id}{}", B64.encode(content.0)))
}

/// Parses a 006 token without checking its signature.
pub fn parse_006(token: &str) -> Result<Token006, TokenError> {
    let rest = token
        .strip_prefix("006")
        .ok_or(TokenError::Malformed("not a 006 token"))?;
    if token.len() > MAX_TOKEN_LEN || rest.len() < 32 || !rest.is_char_boundary(32) {
        return Err(TokenError::Malformed("bad length"));
    }
    let (app_id, b64) = rest.split_at(32);
    let content = B64
        .decode(b64)
        .map_err(|_| TokenError::Malformed("bad base64"))?;
    let mut r = Reader(&content);
    let signature = r.bytes16()?.to_vec();
    let crc_channel = r.u32()?;
    let crc_uid = r.u32()?;
    let m = r.bytes16()?;
    let mut mr = Reader(m);
    let salt = mr.u32()?;
    let ts = mr.u32()?;
    let privileges = mr.privileges()?;
    Ok(Token006 {
        app_id: app_id.to_owned(),
        signature,
        crc_channel,
        crc_uid,
        salt,
        ts,
        privileges,
    })
}

// ---------------------------------------------------------------- 007

/// One service of a 007 token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// Type 1: RTC channel join/publish.
    Rtc {
        /// Channel name.
        channel: String,
        /// Uid string ("" for uid 0).
        uid: String,
    },
    /// Type 2: RTM login.
    Rtm {
        /// User id.
        user_id: String,
    },
    /// Type 3: streaming.
    Streaming {
        /// Channel name.
        channel: String,
        /// Account.
        account: String,
    },
    /// Type 4: FPA.
    Fpa,
    /// Type 5: chat.
    Chat {
        /// User id.
        user_id: String,
    },
    /// Type 6: FCDN.
    Fcdn {
        /// Channel name.
        channel: String,
        /// Account.
        account: String,
    },
    /// Type 7: APaaS.
    Apaas {
        /// Room UUID.
        room_uuid: String,
        /// User UUID.
        user_uuid: String,
        /// Role.
        role: i16,
    },
}

impl Service {
    /// The service type number.
    pub fn service_type(&self) -> u16 {
        match self {
            Self::Rtc { .. } => 1,
            Self::Rtm { .. } => 2,
            Self::Streaming { .. } => 3,
            Self::Fpa => 4,
            Self::Chat { .. } => 5,
            Self::Fcdn { .. } => 6,
            Self::Apaas { .. } => 7,
        }
    }

    fn pack_fields(&self, p: &mut Packer) -> Result<(), TokenError> {
        match self {
            Self::Rtc { channel, uid } => {
                p.bytes16(channel.as_bytes())?.bytes16(uid.as_bytes())?;
            }
            Self::Rtm { user_id } | Self::Chat { user_id } => {
                p.bytes16(user_id.as_bytes())?;
            }
            Self::Streaming { channel, account } | Self::Fcdn { channel, account } => {
                p.bytes16(channel.as_bytes())?.bytes16(account.as_bytes())?;
            }
            Self::Fpa => {}
            Self::Apaas {
                room_uuid,
                user_uuid,
                role,
            } => {
                p.bytes16(room_uuid.as_bytes())?
                    .bytes16(user_uuid.as_bytes())?
                    .i16(*role);
            }
        }
        Ok(())
    }

    fn unpack(service_type: u16, r: &mut Reader<'_>) -> Result<Option<Self>, TokenError> {
        Ok(Some(match service_type {
            1 => Self::Rtc {
                channel: r.string16()?,
                uid: r.string16()?,
            },
            2 => Self::Rtm {
                user_id: r.string16()?,
            },
            3 => Self::Streaming {
                channel: r.string16()?,
                account: r.string16()?,
            },
            4 => Self::Fpa,
            5 => Self::Chat {
                user_id: r.string16()?,
            },
            6 => Self::Fcdn {
                channel: r.string16()?,
                account: r.string16()?,
            },
            7 => Self::Apaas {
                room_uuid: r.string16()?,
                user_uuid: r.string16()?,
                role: r.i16()?,
            },
            _ => return Ok(None),
        }))
    }
}

/// The fields of a 007 token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token007 {
    /// HMAC-SHA256 signature.
    pub signature: Vec<u8>,
    /// App ID.
    pub app_id: String,
    /// Issue time, absolute unix seconds.
    pub issue_ts: u32,
    /// Lifetime in seconds relative to `issue_ts`.
    pub expire: u32,
    /// Random salt.
    pub salt: u32,
    /// Services with privilege maps (values relative to `issue_ts`).
    pub services: Vec<(Service, BTreeMap<u16, u32>)>,
    /// The signed bytes, kept to check the signature.
    signed: Vec<u8>,
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn signing_info_007(
    app_id: &str,
    issue_ts: u32,
    expire: u32,
    salt: u32,
    services: &[(Service, BTreeMap<u16, u32>)],
) -> Result<Vec<u8>, TokenError> {
    let mut sorted: Vec<&(Service, BTreeMap<u16, u32>)> = services.iter().collect();
    sorted.sort_by_key(|(s, _)| s.service_type()); // stable: repeats keep their order
    let mut p = Packer::new();
    p.bytes16(app_id.as_bytes())?
        .u32(issue_ts)
        .u32(expire)
        .u32(salt);
    let n = u16::try_from(sorted.len()).map_err(|_| TokenError::Malformed("too many services"))?;
    p.u16(n);
    for (svc, privs) in sorted {
        p.u16(svc.service_type()).privileges(privs)?;
        svc.pack_fields(&mut p)?;
    }
    Ok(p.0)
}

fn signature_007(certificate: &str, issue_ts: u32, salt: u32, signed: &[u8]) -> [u8; 32] {
    let k1 = hmac(&issue_ts.to_le_bytes(), &[certificate.as_bytes()]);
    let k2 = hmac(&salt.to_le_bytes(), &[&k1]);
    hmac(&k2, &[signed])
}

/// Builds a 007 token. `expire` and privilege values are seconds relative to `issue_ts`.
pub fn mint_007(
    app_id: &str,
    certificate: &str,
    issue_ts: u32,
    expire: u32,
    salt: u32,
    services: &[(Service, BTreeMap<u16, u32>)],
) -> Result<String, TokenError> {
    if !is_hex32(app_id) || !is_hex32(certificate) {
        return Err(TokenError::InvalidCredentials);
    }
    if services.is_empty() {
        return Err(TokenError::Malformed(
            "a 007 token needs at least one service",
        ));
    }
    let signed = signing_info_007(app_id, issue_ts, expire, salt, services)?;
    let sig = signature_007(certificate, issue_ts, salt, &signed);
    let mut raw = Packer::new();
    raw.bytes16(&sig)?;
    raw.0.extend_from_slice(&signed);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&raw.0)
        .map_err(|_| TokenError::Malformed("zlib"))?;
    let compressed = z.finish().map_err(|_| TokenError::Malformed("zlib"))?;
    Ok(format!("007{}", B64.encode(compressed)))
}

/// Parses a 007 token without checking its signature. Stops at an unknown service type.
pub fn parse_007(token: &str) -> Result<Token007, TokenError> {
    let b64 = token
        .strip_prefix("007")
        .ok_or(TokenError::Malformed("not a 007 token"))?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("bad length"));
    }
    let compressed = B64
        .decode(b64)
        .map_err(|_| TokenError::Malformed("bad base64"))?;
    let mut raw = Vec::new();
    // Bound the inflated size: a real token is a few hundred bytes.
    flate2::read::ZlibDecoder::new(compressed.as_slice())
        .take(64 * 1024)
        .read_to_end(&mut raw)
        .map_err(|_| TokenError::Malformed("bad zlib stream"))?;
    let mut r = Reader(&raw);
    let signature = r.bytes16()?.to_vec();
    let signed_all = r.0;
    let app_id = r.string16()?;
    let issue_ts = r.u32()?;
    let expire = r.u32()?;
    let salt = r.u32()?;
    let n = r.u16()?;
    let mut services = Vec::new();
    for _ in 0..n {
        let t = r.u16()?;
        let privs = r.privileges()?;
        match Service::unpack(t, &mut r)? {
            Some(s) => services.push((s, privs)),
            None => break,
        }
    }
    let consumed = signed_all.len() - r.0.len();
    Ok(Token007 {
        signature,
        app_id,
        issue_ts,
        expire,
        salt,
        services,
        signed: signed_all[..consumed].to_vec(),
    })
}

// ---------------------------------------------------------------- minting for the API

/// What the API needs to mint and verify tokens.
#[derive(Clone)]
pub struct TokenIssuer {
    /// App ID handed out and embedded.
    pub app_id: String,
    certificate: String,
    /// Version minted.
    pub version: TokenVersion,
    /// Join privilege lifetime in seconds.
    pub ttl: u32,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("app_id", &self.app_id)
            .field("version", &self.version)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Seconds the outer `ts` (006) or token lifetime (007) lasts: 24 h, as the builders do.
pub const TOKEN_OUTER_LIFETIME: u32 = 86_400;

/// A verified token's useful facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// When the join privilege expires (absolute unix seconds; `None` = never).
    pub join_expires_at: Option<u64>,
}

impl TokenIssuer {
    /// An issuer for one App ID and certificate.
    pub fn new(app_id: String, certificate: String, version: TokenVersion, ttl: u32) -> Self {
        Self {
            app_id,
            certificate,
            version,
            ttl,
        }
    }

    /// Mints a join-only token for `uid` in `channel`, issued at `now` (unix seconds).
    pub fn mint(&self, channel: &str, uid: &str, now: u64) -> Result<String, TokenError> {
        self.mint_for(channel, uid, now, self.ttl)
    }

    /// [`TokenIssuer::mint`] with a join privilege lasting `ttl` seconds instead of the
    /// configured lifetime (a robot's token, which cannot be renewed, lasts as long as
    /// the robot may run). The token itself lasts at least as long.
    pub fn mint_for(
        &self,
        channel: &str,
        uid: &str,
        now: u64,
        ttl: u32,
    ) -> Result<String, TokenError> {
        use rand::Rng;
        let outer = TOKEN_OUTER_LIFETIME.max(ttl);
        metrics::counter!("dapi_tokens_minted_total").increment(1);
        let salt: u32 = rand::rng().random_range(1..=99_999_999);
        let now32 = u32::try_from(now).map_err(|_| TokenError::Malformed("time out of range"))?;
        match self.version {
            TokenVersion::V006 => {
                let privileges = BTreeMap::from([(PRIVILEGE_JOIN, now32.saturating_add(ttl))]);
                mint_006(
                    &self.app_id,
                    &self.certificate,
                    channel,
                    uid,
                    salt,
                    now32.saturating_add(outer),
                    &privileges,
                )
            }
            TokenVersion::V007 => {
                let privileges = BTreeMap::from([(PRIVILEGE_JOIN, ttl)]);
                let svc = Service::Rtc {
                    channel: channel.to_owned(),
                    uid: uid.to_owned(),
                };
                mint_007(
                    &self.app_id,
                    &self.certificate,
                    now32,
                    outer,
                    salt,
                    &[(svc, privileges)],
                )
            }
        }
    }

    /// Verifies a token of either version for joining `channel` as `uid` at `now`:
    /// signature, App ID, channel, uid, expiry and the join privilege.
    pub fn verify(
        &self,
        token: &str,
        channel: &str,
        uid: &str,
        now: u64,
    ) -> Result<VerifiedToken, TokenError> {
        verify(token, &self.app_id, &self.certificate, channel, uid, now)
    }
}

/// Verifies a token of either version. See [`TokenIssuer::verify`].
pub fn verify(
    token: &str,
    app_id: &str,
    certificate: &str,
    channel: &str,
    uid: &str,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    if token.starts_with("006") {
        let t = parse_006(token)?;
        if t.app_id != app_id {
            return Err(TokenError::WrongAppId);
        }
        if t.crc_channel != crc32fast::hash(channel.as_bytes()) {
            return Err(TokenError::WrongChannel);
        }
        if t.crc_uid != crc32fast::hash(uid.as_bytes()) {
            return Err(TokenError::WrongUid);
        }
        let m = message006(t.salt, t.ts, &t.privileges)?;
        let want = hmac(
            certificate.as_bytes(),
            &[app_id.as_bytes(), channel.as_bytes(), uid.as_bytes(), &m],
        );
        if !constant_eq(&want, &t.signature) {
            return Err(TokenError::BadSignature);
        }
        if u64::from(t.ts) < now {
            return Err(TokenError::Expired);
        }
        let join = *t
            .privileges
            .get(&PRIVILEGE_JOIN)
            .ok_or(TokenError::NoJoinPrivilege)?;
        if join != 0 && u64::from(join) < now {
            return Err(TokenError::Expired);
        }
        Ok(VerifiedToken {
            join_expires_at: (join != 0).then_some(u64::from(join)),
        })
    } else if token.starts_with("007") {
        let t = parse_007(token)?;
        let want = signature_007(certificate, t.issue_ts, t.salt, &t.signed);
        if !constant_eq(&want, &t.signature) {
            return Err(TokenError::BadSignature);
        }
        if t.app_id != app_id {
            return Err(TokenError::WrongAppId);
        }
        let issue = u64::from(t.issue_ts);
        if t.expire != 0 && issue + u64::from(t.expire) < now {
            return Err(TokenError::Expired);
        }
        let rtc = t.services.iter().find_map(|(s, p)| match s {
            Service::Rtc { channel, uid } => Some((channel, uid, p)),
            _ => None,
        });
        let (tc, tu, privs) = rtc.ok_or(TokenError::NoJoinPrivilege)?;
        if tc != channel {
            return Err(TokenError::WrongChannel);
        }
        if tu != uid {
            return Err(TokenError::WrongUid);
        }
        let join = *privs
            .get(&PRIVILEGE_JOIN)
            .ok_or(TokenError::NoJoinPrivilege)?;
        if join != 0 && issue + u64::from(join) < now {
            return Err(TokenError::Expired);
        }
        Ok(VerifiedToken {
            join_expires_at: (join != 0).then_some(issue + u64::from(join)),
        })
    } else {
        Err(TokenError::Malformed("unknown token version"))
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests;
