//! Voicemail recordings (docs/recordings.md):
//!
//! - `PUT /agent/recordings/{session_id}/{uid}?part=N&final=BOOL` (agent key): the Ogg Opus
//!   file recorded so far for one participant. Checked by reading it with the audio crate's
//!   Ogg Opus reader (headers, page CRCs, packets; the duration from the last granule
//!   position); stored as an idempotent replace keeping the longest upload of the part.
//! - `GET /dapi/call/recordings?channel=C`: the call's recordings.
//! - `GET /dapi/call/recording/{id}`: the file, `audio/ogg`, with single-range requests.
//!
//! In jwt mode both `GET`s are for members of the call only (`Authn::check_was_member`: any member of the call, also after it ended, since a voicemail is listened to after the call).

use std::io::Cursor;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Authn;
use crate::dispatch::agent_link::check_bearer;
use crate::domain::{ChannelName, Uid};
use crate::error::ApiError;
use crate::openapi::{Binary, uid_out_schema};
use crate::store::recordings::{NewRecording, RecordingRecord};
use crate::store::{RecordingId, SessionId};

/// Highest part number.
pub const MAX_PART: i64 = 1000;
/// A `recording_ready` push stays worth delivering this long, ms.
pub const PUSH_TTL_MS: i64 = 24 * 3600 * 1000;

/// The routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/agent/recordings/{session_id}/{uid}", put(upload))
        .route("/dapi/call/recordings", get(list))
        .route("/dapi/call/recording/{id}", get(download))
}

/// What reading an upload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OggInfo {
    /// From the last granule position, less the pre-skip, at 48 kHz.
    pub duration_ms: i64,
    /// The stream ends with its end-of-stream page.
    pub complete: bool,
}

/// Reads an Ogg Opus file (or the beginning of one, made of whole pages): headers, every
/// page's CRC and every packet. A file without its end-of-stream page is accepted as a
/// partial upload (`complete: false`); one that stops inside a page is not.
pub fn inspect_ogg(bytes: &[u8]) -> Result<OggInfo, String> {
    whole_pages(bytes)?;
    let mut r = audio::ogg_opus::OggOpusReader::new(Cursor::new(bytes))
        .map_err(|e| format!("not an Ogg Opus file: {e}"))?;
    let pre_skip = u64::from(r.head().pre_skip);
    let mut last_granule: Option<u64> = None;
    let mut complete = false;
    loop {
        match r.next_packet() {
            Ok(Some(p)) => {
                // u64::MAX (-1): no packet ends on that page
                if p.page_granule != u64::MAX {
                    last_granule =
                        Some(last_granule.map_or(p.page_granule, |g| g.max(p.page_granule)));
                }
                if p.last {
                    complete = true;
                    break;
                }
            }
            Ok(None) => break,
            Err(audio::AudioError::Corrupt(m)) if m.contains("no end-of-stream page") => break,
            Err(e) => return Err(format!("not a valid Ogg Opus file: {e}")),
        }
    }
    let samples = last_granule.unwrap_or(0).saturating_sub(pre_skip);
    Ok(OggInfo {
        duration_ms: i64::try_from(samples / 48).unwrap_or(i64::MAX),
        complete,
    })
}

/// Checks that `bytes` is a run of whole Ogg pages (a partial upload must end on a page
/// boundary): each page is `OggS`, a 27-byte header whose last byte counts the segments, the
/// segment table, and a body as long as the table's sum. The reader tolerates a cut last page
/// as the end of the data; a stored recording must not.
fn whole_pages(bytes: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    while at < bytes.len() {
        let header = bytes
            .get(at..at + 27)
            .ok_or_else(|| format!("not a valid Ogg Opus file: cut inside a page at byte {at}"))?;
        if &header[..4] != b"OggS" {
            return Err(format!(
                "not a valid Ogg Opus file: no page starts at byte {at}"
            ));
        }
        let segments = usize::from(header[26]);
        let table = bytes
            .get(at + 27..at + 27 + segments)
            .ok_or_else(|| format!("not a valid Ogg Opus file: cut inside a page at byte {at}"))?;
        let body: usize = table.iter().map(|b| usize::from(*b)).sum();
        at += 27 + segments + body;
        if at > bytes.len() {
            return Err(format!(
                "not a valid Ogg Opus file: the last page is cut ({} of {at} bytes)",
                bytes.len()
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// Part number, 0 (default) to 1000: a re-dispatched session records into a new part
    /// (the agent uses `attempt - 1`).
    #[serde(default)]
    part: Option<String>,
    /// `true` (default): this is the whole recording of the part; `false`: the file so
    /// far (whole pages, without the end-of-stream page), to be replaced by longer ones.
    #[serde(default, rename = "final")]
    final_: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents the path parameters
struct UploadPath {
    /// The robot session that recorded.
    session_id: i64,
    /// The participant recorded (a member of the session's call).
    uid: String,
}

/// What an upload did.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadOut {
    /// The recording's id.
    pub id: i64,
    /// Bytes stored now (the longest upload of the part).
    pub bytes: i64,
    /// Its duration, ms.
    pub duration_ms: i64,
    /// The part is complete.
    pub complete: bool,
    /// This upload was stored (false: a longer or identical one already was).
    pub stored: bool,
    /// The path the apps download it from.
    #[schema(example = "/dapi/call/recording/7")]
    pub url: String,
}

crate::envelope!(
    /// An upload's outcome.
    UploadResp,
    UploadOut
);

fn bool_param(v: Option<&str>, field: &str, default: bool) -> Result<bool, ApiError> {
    match v {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(_) => Err(ApiError::bad(
            "invalid_field",
            format!("{field} must be true or false"),
        )),
    }
}

/// A robot agent uploads what it recorded of one participant: the whole Ogg Opus file so
/// far, again every few seconds, then with `final=true`.
#[utoipa::path(put, path = "/agent/recordings/{session_id}/{uid}", tag = "agents",
    params(UploadPath, UploadQuery), security(("agent_key" = [])),
    request_body(content = Binary, content_type = "application/octet-stream", description = "The Ogg Opus file so far (sent as bytes; any Content-Type is taken)"),
    responses(
        (status = 200, description = "Stored, or a longer upload is kept", body = UploadResp),
        (status = 409, description = "The part is complete and this upload differs", body = crate::openapi::ErrorBody)))]
async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((session_id, uid)): Path<(String, String)>,
    Query(q): Query<UploadQuery>,
    body: axum::body::Body,
) -> Result<Json<UploadResp>, ApiError> {
    check_bearer(
        &headers,
        state.config().dispatch.agent_key.as_ref(),
        "agent link",
        "DAPI_AGENT_KEY",
    )?;
    let session_id = session_id.parse().map(SessionId::new).map_err(|_| {
        ApiError::bad(
            "invalid_field",
            "session_id must be a robot session id (a number)",
        )
    })?;
    let uid = Uid::parse(&uid).map_err(|m| ApiError::bad("invalid_field", format!("uid {m}")))?;
    let part = match q.part.as_deref() {
        None => 0,
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|p| (0..=MAX_PART).contains(p))
            .ok_or_else(|| {
                ApiError::bad("invalid_field", format!("part must be 0 to {MAX_PART}"))
            })?,
    };
    let complete_wanted = bool_param(q.final_.as_deref(), "final", true)?;
    let Some(session) = state.store().robot_session(session_id).await? else {
        return Err(ApiError::NotFound(format!(
            "unknown robot session {session_id}"
        )));
    };
    if state.store().was_member(&session.channel, &uid).await? != Some(true) {
        return Err(ApiError::NotFound(format!(
            "uid {uid} is not a member of the call of session {session_id}"
        )));
    }
    let limit = state.config().recordings.max_bytes;
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
    let checked = body.clone();
    let info = tokio::task::spawn_blocking(move || inspect_ogg(&checked))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|m| ApiError::bad("invalid_body", m))?;
    if complete_wanted && !info.complete {
        return Err(ApiError::bad(
            "invalid_body",
            "final=true needs the whole file: it must end with the end-of-stream page",
        ));
    }
    let now = state.clock().now_ms();
    let out = state
        .store()
        .put_recording(&NewRecording {
            call_id: session.call_id,
            channel: session.channel.clone(),
            session_id,
            uid: uid.as_str().to_owned(),
            part,
            sha256: hex::encode(sha2::Sha256::digest(&body)),
            content: body.to_vec(),
            duration_ms: info.duration_ms,
            complete: info.complete,
            now_ms: now,
            push_expires_ms: now + PUSH_TTL_MS,
        })
        .await?;
    if out.ready {
        tracing::info!(recording = out.record.id.get(), session = session_id.get(), uid = %uid, duration_ms = out.record.duration_ms, "recording ready");
        state.push().wake();
    }
    Ok(UploadResp::new(UploadOut {
        id: out.record.id.get(),
        bytes: out.record.bytes,
        duration_ms: out.record.duration_ms,
        complete: out.record.complete,
        stored: out.stored,
        url: format!("/dapi/call/recording/{}", out.record.id),
    }))
}

/// One recording of a call.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingOut {
    /// Id.
    pub id: i64,
    /// The channel.
    pub channel: String,
    /// Whose voice: a number when the uid is canonical digits, else a string.
    #[schema(schema_with = uid_out_schema)]
    pub uid: Value,
    /// When it started, `YYYY-MM-DD HH:MM:SS` in the server's zone.
    #[schema(example = "2026-12-04 10:00:00")]
    pub started_at: String,
    /// Its length, ms (from the last granule position).
    pub duration_ms: i64,
    /// Its size.
    pub bytes: i64,
    /// Where to download it (`GET`, `audio/ogg`, Range requests).
    #[schema(example = "/dapi/call/recording/7")]
    pub url: String,
    /// When it started, unix ms (ext).
    pub started_at_ms: i64,
    /// The robot session that recorded it (ext).
    pub session_id: i64,
    /// Part number: more than one when the session was re-dispatched mid-recording (ext).
    pub part: i64,
    /// The agent finished it; false while it is being recorded or when its agent died
    /// (the file then holds what was uploaded, at most a few seconds short) (ext).
    pub complete: bool,
}

crate::envelope!(
    /// A call's recordings.
    RecordingListResp,
    Vec<RecordingOut>
);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct ListQuery {
    /// The channel.
    #[param(required = true, value_type = String)]
    channel: Option<String>,
}

fn format_time(state: &AppState, unix_ms: i64) -> String {
    state
        .config()
        .calls
        .timezone
        .timestamp_millis_opt(unix_ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn recording_json(state: &AppState, r: &RecordingRecord) -> RecordingOut {
    RecordingOut {
        id: r.id.get(),
        channel: r.channel.to_string(),
        uid: Uid::parse(&r.uid)
            .map(|u| u.to_json())
            .unwrap_or_else(|_| Value::from(r.uid.clone())),
        started_at: format_time(state, r.started_at_ms),
        duration_ms: r.duration_ms,
        bytes: r.bytes,
        url: format!("/dapi/call/recording/{}", r.id),
        started_at_ms: r.started_at_ms,
        session_id: r.session_id.get(),
        part: r.part,
        complete: r.complete,
    }
}

/// jwt mode: the token's subject must be a member of the channel's call (403, 404 for an
/// unknown channel); open mode: the channel must exist (404).
async fn check_access(
    state: &AppState,
    auth: &Authn,
    channel: &ChannelName,
) -> Result<(), ApiError> {
    match auth.0.clone() {
        Some(sub) => auth.check_was_member(state, channel, &sub).await,
        None => match state.store().find_call(channel).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::NotFound(format!("unknown channel {channel}"))),
        },
    }
}

/// The recordings of a call, oldest first.
#[utoipa::path(get, path = "/dapi/call/recordings", tag = "calls",
    params(ListQuery),
    responses((status = 200, description = "Done", body = RecordingListResp)))]
async fn list(
    State(state): State<AppState>,
    auth: Authn,
    Query(q): Query<ListQuery>,
) -> Result<Json<RecordingListResp>, ApiError> {
    let raw = q
        .channel
        .ok_or_else(|| ApiError::bad("missing_field", "channel is required"))?;
    let channel = ChannelName::parse(&raw)
        .map_err(|m| ApiError::bad("invalid_field", format!("channel {m}")))?;
    check_access(&state, &auth, &channel).await?;
    let rows = state.store().list_recordings(&channel).await?;
    Ok(RecordingListResp::new(
        rows.iter().map(|r| recording_json(&state, r)).collect(),
    ))
}

/// A single byte range of a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// No range (absent, not `bytes=`, several ranges, or malformed): the whole file.
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// Outside the file: 416.
    Unsatisfiable,
}

/// Parses `Range: bytes=a-b | a- | -n` against a file of `len` bytes (RFC 9110 14.1.2).
/// Several ranges are answered with the whole file, as the RFC allows.
pub fn parse_range(header: Option<&str>, len: u64) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return ByteRange::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, true) => ByteRange::Whole,
        // suffix: the last n bytes
        (true, false) => match num(b) {
            None => ByteRange::Whole,
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if len == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Part(len.saturating_sub(n), len - 1),
        },
        (false, _) => {
            let Some(start) = num(a) else {
                return ByteRange::Whole;
            };
            let end = if b.is_empty() {
                Some(len.saturating_sub(1))
            } else {
                num(b)
            };
            match end {
                None => ByteRange::Whole,
                Some(_) if start >= len => ByteRange::Unsatisfiable,
                Some(end) if end < start => ByteRange::Whole,
                Some(end) => ByteRange::Part(start, end.min(len - 1)),
            }
        }
    }
}

/// One recording: `audio/ogg`, `Accept-Ranges: bytes`; a single `Range` gets 206 with
/// `Content-Range`, a range outside the file 416.
#[utoipa::path(get, path = "/dapi/call/recording/{id}", tag = "calls",
    params(("id" = i64, Path, description = "The recording's id"),
        ("Range" = Option<String>, Header, description = "`bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX` (one range)")),
    responses(
        (status = 200, description = "The Ogg Opus file", content_type = "audio/ogg", body = Binary),
        (status = 206, description = "The requested range", content_type = "audio/ogg", body = Binary),
        (status = 416, description = "The range is outside the file (`Content-Range: bytes */LEN`)")))]
async fn download(
    State(state): State<AppState>,
    auth: Authn,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id
        .parse()
        .map(RecordingId::new)
        .map_err(|_| ApiError::bad("invalid_field", "id must be a recording id (a number)"))?;
    // The row first (without the content): access is checked before the file is read.
    let Some((rec, _)) = state.store().recording(id, false).await? else {
        return Err(ApiError::NotFound(format!("unknown recording {id}")));
    };
    check_access(&state, &auth, &rec.channel).await?;
    let Some((_, content)) = state.store().recording(id, true).await? else {
        return Err(ApiError::NotFound(format!("unknown recording {id}")));
    };
    let len = u64::try_from(content.len()).unwrap_or(u64::MAX);
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    );
    let etag = format!("\"{}\"", rec.sha256);
    let mut resp = match range {
        ByteRange::Whole => (StatusCode::OK, content).into_response(),
        ByteRange::Part(start, end) => {
            let (s, e) = (
                usize::try_from(start).unwrap_or(usize::MAX),
                usize::try_from(end).unwrap_or(usize::MAX),
            );
            let body = content.get(s..=e).map(<[u8]>::to_vec).unwrap_or_default();
            let mut r = (StatusCode::PARTIAL_CONTENT, body).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
        ByteRange::Unsatisfiable => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
    };
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if range != ByteRange::Unsatisfiable {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/ogg"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        let r = |h: &str| parse_range(Some(h), 100);
        assert_eq!(parse_range(None, 100), Whole);
        assert_eq!(r("bytes=0-9"), Part(0, 9));
        assert_eq!(r("bytes=90-"), Part(90, 99));
        assert_eq!(r("bytes=90-500"), Part(90, 99));
        assert_eq!(r("bytes=-10"), Part(90, 99));
        assert_eq!(r("bytes=-500"), Part(0, 99));
        assert_eq!(r("bytes=100-"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), Whole);
        assert_eq!(r("bytes=5-1"), Whole);
        assert_eq!(r("items=0-1"), Whole);
        assert_eq!(r("bytes=x-1"), Whole);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
    }

    #[test]
    fn ogg_inspection() {
        use audio::ogg_opus::{OggOpusWriter, OpusHead, OpusTags};
        let head = OpusHead::new(1, 312, 48000);
        let tags = OpusTags {
            vendor: "t".into(),
            comments: vec![],
        };
        let mut w = OggOpusWriter::new(Vec::new(), &head, &tags, 7).unwrap();
        // 150 packets of 20 ms; a page break every 50 packets; the last granule is
        // 150 x 960 = 144000 (the pre-skip is inside it): (144000 - 312) / 48 = 2993 ms
        for _ in 0..150 {
            w.write_packet(&[0xf8, 0xff, 0xfe]).unwrap();
        }
        let whole = w.finish(150 * 960).unwrap();
        let info = inspect_ogg(&whole).unwrap();
        assert_eq!(
            info,
            OggInfo {
                duration_ms: 2993,
                complete: true
            }
        );
        // the same without its last page: partial, shorter
        let last_page = whole.windows(4).rposition(|w| w == b"OggS").unwrap();
        let partial = inspect_ogg(&whole[..last_page]).unwrap();
        assert!(
            !partial.complete && partial.duration_ms < 2993 && partial.duration_ms > 0,
            "{partial:?}"
        );
        // cut inside a page, a flipped byte, not Ogg: refused
        assert!(inspect_ogg(&whole[..last_page + 10]).is_err());
        let mut bad = whole.clone();
        let n = bad.len() - 2;
        bad[n] ^= 0x55;
        assert!(inspect_ogg(&bad).is_err());
        assert!(inspect_ogg(b"RIFF....WAVEfmt ").is_err());
        assert!(inspect_ogg(b"").is_err());
    }
}
