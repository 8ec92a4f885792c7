//! Robot options of `call/robot` and `invite/robot` (DESIGN.md "Robot options"): a
//! playlist with loop counts and gains, voicemail recording, and a media bridge named in
//! `DAPI_BRIDGES`. Parsed and checked at the edge (400 naming the field, nothing queued),
//! stored with the robot session as JSON, and carried to the agent in the `offer`.
//!
//! ```text
//!  request body ──> RobotOptionsReq ──check──> NewRobotSession { audio, options: JSON }
//!                                                      │ (robot_sessions.options)
//!  dispatcher: offer ──> complete_offer ──> SessionOffer { items, record, bridge{url,secret} }
//!                                 (the bridge's URL and secret come from DAPI_BRIDGES here)
//! ```

use std::collections::BTreeMap;

use protocol::agent::{
    BridgeFormat, BridgeTarget, OfferCall, PlaylistItem, RecordOptions, SessionOffer,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::config::Secret;
use crate::domain::{AssetName, ChannelName};
use crate::error::ApiError;
use crate::store::{NewRobotSession, SessionId};

/// Most items in one playlist.
pub const MAX_ITEMS: usize = 100;
/// Largest `loop` count of an item.
pub const MAX_LOOPS: i64 = 1000;
/// Gain range, dB.
pub const GAIN_DB: std::ops::RangeInclusive<f64> = -30.0..=12.0;
/// `record.max_seconds` range.
pub const MAX_SECONDS: std::ops::RangeInclusive<i64> = 1..=3600;
/// `record.silence_seconds` range.
pub const SILENCE_SECONDS: std::ops::RangeInclusive<i64> = 1..=60;
/// Defaults of `record`.
pub const DEFAULT_RECORD: RecordOptions = RecordOptions {
    max_seconds: 120,
    silence_seconds: 5,
    beep: true,
};

/// One playlist item as a request sends it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct PlaylistItemReq {
    /// Asset name (`[A-Za-z0-9_-]{1,64}`, uploaded with `PUT /admin/audio/{name}`).
    #[schema(example = "greeting")]
    pub audio: String,
    /// Times the item is played again after its first play (0 to 1000; default 0: once).
    #[serde(rename = "loop", default)]
    #[schema(minimum = 0, maximum = 1000)]
    pub loops: Option<i64>,
    /// Gain in dB, -30 to +12 (default 0).
    #[serde(default)]
    #[schema(minimum = -30, maximum = 12)]
    pub gain_db: Option<f64>,
}

/// Voicemail options as a request sends them.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct RecordReq {
    /// Longest recording per participant, seconds (1 to 3600; default 120).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600, example = 120)]
    pub max_seconds: Option<i64>,
    /// Silence after speech that ends a recording, seconds (1 to 60; default 5).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 60, example = 5)]
    pub silence_seconds: Option<i64>,
    /// Beep before recording (default true).
    #[serde(default)]
    pub beep: Option<bool>,
}

/// The optional fields `call/robot` and `invite/robot` take besides `audio` and `loop`.
#[derive(Debug, Clone, Default)]
pub struct RobotOptionsReq {
    /// `playlist`.
    pub playlist: Option<Vec<PlaylistItemReq>>,
    /// `record`.
    pub record: Option<RecordReq>,
    /// `bridge`.
    pub bridge: Option<String>,
}

impl RobotOptionsReq {
    fn is_empty(&self) -> bool {
        self.playlist.is_none() && self.record.is_none() && self.bridge.is_none()
    }
}

/// The options as stored with the session (`robot_sessions.options`). The bridge is kept
/// by name: its URL and secret are read from `DAPI_BRIDGES` when the session is offered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOptions {
    /// The playback queue.
    pub items: Vec<PlaylistItem>,
    /// Voicemail.
    #[serde(default)]
    pub record: Option<RecordOptions>,
    /// Bridge name.
    #[serde(default)]
    pub bridge: Option<String>,
}

fn bad(message: String) -> ApiError {
    ApiError::bad("invalid_field", message)
}

/// Checks the options of a request: every bad one is a 400 naming the field. Pure: asset
/// existence is checked by [`robot_session`].
pub fn check(
    audio: Option<&AssetName>,
    loop_audio: bool,
    opts: &RobotOptionsReq,
    bridges: &Bridges,
) -> Result<StoredOptions, ApiError> {
    let mut items = Vec::new();
    if let Some(a) = audio {
        items.push(PlaylistItem {
            audio: a.as_str().to_owned(),
            loops: 0,
            gain_db: 0.0,
        });
    }
    if let Some(list) = &opts.playlist {
        if list.len() > MAX_ITEMS {
            return Err(bad(format!(
                "playlist has {} items; at most {MAX_ITEMS} are allowed",
                list.len()
            )));
        }
        for (i, it) in list.iter().enumerate() {
            let name =
                AssetName::parse(&it.audio).map_err(|m| bad(format!("playlist[{i}].audio {m}")))?;
            let loops = it.loops.unwrap_or(0);
            if !(0..=MAX_LOOPS).contains(&loops) {
                return Err(bad(format!(
                    "playlist[{i}].loop is {loops}; it must be 0 to {MAX_LOOPS} (times played again after the first)"
                )));
            }
            let gain = it.gain_db.unwrap_or(0.0);
            if !gain.is_finite() || !GAIN_DB.contains(&gain) {
                return Err(bad(format!(
                    "playlist[{i}].gain_db is {gain}; it must be -30 to +12 dB"
                )));
            }
            items.push(PlaylistItem {
                audio: name.as_str().to_owned(),
                loops: u32::try_from(loops).unwrap_or(0),
                // in range: exact enough as f32
                gain_db: gain as f32,
            });
        }
    }
    let record = match &opts.record {
        None => None,
        Some(r) => {
            let max = r
                .max_seconds
                .unwrap_or(i64::from(DEFAULT_RECORD.max_seconds));
            if !MAX_SECONDS.contains(&max) {
                return Err(bad(format!(
                    "record.max_seconds is {max}; it must be 1 to 3600"
                )));
            }
            let silence = r
                .silence_seconds
                .unwrap_or(i64::from(DEFAULT_RECORD.silence_seconds));
            if !SILENCE_SECONDS.contains(&silence) {
                return Err(bad(format!(
                    "record.silence_seconds is {silence}; it must be 1 to 60"
                )));
            }
            if loop_audio {
                return Err(bad(
                    "loop must be false with record: the robot plays its audio once, then records"
                        .into(),
                ));
            }
            Some(RecordOptions {
                max_seconds: u32::try_from(max).unwrap_or(DEFAULT_RECORD.max_seconds),
                silence_seconds: u32::try_from(silence).unwrap_or(DEFAULT_RECORD.silence_seconds),
                beep: r.beep.unwrap_or(DEFAULT_RECORD.beep),
            })
        }
    };
    let bridge = match &opts.bridge {
        None => None,
        Some(name) => {
            if !bridges.0.contains_key(name) {
                let shown: String = name.chars().take(64).collect();
                return Err(bad(format!(
                    "bridge {shown:?} is not a configured bridge (DAPI_BRIDGES names the targets)"
                )));
            }
            Some(name.clone())
        }
    };
    // Without audio and playlist: the default asset, except for a bridged robot, whose
    // program says what to play.
    if items.is_empty() && bridge.is_none() {
        items.push(PlaylistItem {
            audio: AssetName::default_asset().as_str().to_owned(),
            loops: 0,
            gain_db: 0.0,
        });
    }
    Ok(StoredOptions {
        items,
        record,
        bridge,
    })
}

/// The robot session of a `call/robot` or `invite/robot` request: the options checked
/// (400 naming the field) and every asset checked to exist (400 `unknown_audio`), so a
/// typo fails here rather than as a dead session later, and nothing is queued. The session
/// counts against `requested_by`'s robots (`DAPI_ROBOTS_PER_UID`).
pub async fn robot_session(
    state: &AppState,
    requested_by: &crate::domain::Uid,
    audio: Option<AssetName>,
    loop_audio: bool,
    opts: RobotOptionsReq,
) -> Result<NewRobotSession, ApiError> {
    let no_options = opts.is_empty();
    let stored = check(audio.as_ref(), loop_audio, &opts, state.bridges())?;
    let mut seen = std::collections::HashSet::new();
    for (i, it) in stored.items.iter().enumerate() {
        if !seen.insert(it.audio.as_str()) {
            continue;
        }
        if !state.store().asset_exists(&it.audio).await? {
            // the request's `audio` is item 0 when given
            let field = match (&audio, opts.playlist.is_some()) {
                (Some(_), _) if i == 0 => "audio".to_owned(),
                (Some(_), true) => format!("playlist[{}].audio", i - 1),
                (None, true) => format!("playlist[{i}].audio"),
                _ => "audio".to_owned(),
            };
            return Err(ApiError::bad(
                "unknown_audio",
                format!(
                    "{field}: audio asset {0} does not exist; upload it with PUT /admin/audio/{0}",
                    it.audio
                ),
            ));
        }
    }
    Ok(NewRobotSession {
        uid: state.config().dispatch.robot_uid.clone(),
        audio: stored.items.iter().map(|i| i.audio.clone()).collect(),
        loop_audio,
        max_attempts: state.config().dispatch.max_attempts,
        requested_by: requested_by.as_str().to_owned(),
        max_per_requester: state.config().dispatch.robots_per_uid,
        // The seed's bodies store nothing new: their offer is built as before.
        options: if no_options {
            None
        } else {
            serde_json::to_string(&stored).ok()
        },
    })
}

/// Fills the (ext) fields of an offer from the session's stored options: `items` always
/// (from `playlist` with loop 0 and gain 0 for a session without options), `record`, and
/// `bridge` with the URL and secret of `DAPI_BRIDGES`. `channel` is the session's (the
/// offer carries it as text).
pub async fn complete_offer(state: &AppState, channel: &ChannelName, offer: &mut SessionOffer) {
    let stored = match state.store().robot_options(SessionId::new(offer.id)).await {
        Ok(Some(json)) => match serde_json::from_str::<StoredOptions>(&json) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::error!(session = offer.id, error = %e, "stored robot options do not parse");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(session = offer.id, error = %e, "reading robot options failed");
            None
        }
    };
    match stored {
        None => {
            offer.items = offer
                .playlist
                .iter()
                .map(|a| PlaylistItem {
                    audio: a.clone(),
                    loops: 0,
                    gain_db: 0.0,
                })
                .collect();
        }
        Some(o) => {
            offer.items = o.items;
            offer.record = o.record;
            offer.bridge = o.bridge.and_then(|name| {
                let t = state.bridges().target(&name);
                if t.is_none() {
                    tracing::error!(session = offer.id, bridge = %name, "the session's bridge is no longer in DAPI_BRIDGES: offered without it");
                }
                t
            });
        }
    }
    if offer.bridge.is_some() {
        // The program's `start` names the call's parties.
        match state.store().call_parties(channel).await {
            Ok(Some((src_uid, dst_uid))) => offer.call = Some(OfferCall { src_uid, dst_uid }),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(session = offer.id, error = %e, "reading the call's parties failed; the bridge's start names none");
            }
        }
    }
}

/// One configured bridge target.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// Bearer secret (never logged).
    pub secret: Secret,
    /// Audio format.
    pub format: BridgeFormat,
    /// Sample rate, Hz.
    pub rate: u32,
}

/// `DAPI_BRIDGES`: name -> target. `Debug` shows names only.
#[derive(Clone, Default)]
pub struct Bridges(pub BTreeMap<String, BridgeConfig>);

impl std::fmt::Debug for Bridges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// PCM rates a bridge may ask for.
pub const PCM_RATES: [u32; 4] = [8000, 16000, 24000, 48000];

impl Bridges {
    /// Parses `DAPI_BRIDGES`: `{"name": {"url": "wss://..", "secret": "..", "format":
    /// "pcm16"|"opus", "rate": 16000}}`. Errors name the bridge and the field, never the
    /// secret or the URL (a URL may carry credentials).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| format!("not valid JSON (line {}, column {})", e.line(), e.column()))?;
        let obj = v
            .as_object()
            .ok_or("must be a JSON object: name -> {url, secret, format, rate}")?;
        let mut out = BTreeMap::new();
        for (name, t) in obj {
            if AssetName::parse(name).is_err() {
                return Err(format!(
                    "bridge names must match [A-Za-z0-9_-]{{1,64}}; {:?} does not",
                    name.chars().take(64).collect::<String>()
                ));
            }
            let t = t.as_object().ok_or_else(|| {
                format!("bridge {name:?} must be an object {{url, secret, format, rate}}")
            })?;
            for k in t.keys() {
                if !["url", "secret", "format", "rate"].contains(&k.as_str()) {
                    return Err(format!("bridge {name:?}: unknown field {k:?}"));
                }
            }
            let url = t.get("url").and_then(|u| u.as_str()).ok_or_else(|| {
                format!("bridge {name:?}: url is required (a ws:// or wss:// URL)")
            })?;
            let uri: http::Uri = url
                .parse()
                .map_err(|_| format!("bridge {name:?}: url is not a valid URL"))?;
            if !matches!(uri.scheme_str(), Some("ws" | "wss")) || uri.host().is_none() {
                return Err(format!(
                    "bridge {name:?}: url must be a ws:// or wss:// URL with a host"
                ));
            }
            let secret = t
                .get("secret")
                .and_then(|s| s.as_str())
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| {
                    format!("bridge {name:?}: secret is required (a non-empty string)")
                })?;
            let format = match t.get("format").and_then(|f| f.as_str()) {
                Some("pcm16") => BridgeFormat::Pcm16,
                Some("opus") => BridgeFormat::Opus,
                _ => {
                    return Err(format!(
                        "bridge {name:?}: format must be \"pcm16\" or \"opus\""
                    ));
                }
            };
            let rate = match (format, t.get("rate")) {
                (BridgeFormat::Opus, None) => 48_000,
                (_, Some(r)) => r
                    .as_u64()
                    .and_then(|r| u32::try_from(r).ok())
                    .ok_or_else(|| format!("bridge {name:?}: rate must be a number of Hz"))?,
                (BridgeFormat::Pcm16, None) => {
                    return Err(format!(
                        "bridge {name:?}: rate is required for pcm16 (8000, 16000, 24000 or 48000)"
                    ));
                }
            };
            match format {
                BridgeFormat::Pcm16 if !PCM_RATES.contains(&rate) => {
                    return Err(format!(
                        "bridge {name:?}: rate {rate} is not one of 8000, 16000, 24000, 48000"
                    ));
                }
                BridgeFormat::Opus if rate != 48_000 => {
                    return Err(format!(
                        "bridge {name:?}: opus is 48000 Hz; rate {rate} is not possible"
                    ));
                }
                _ => {}
            }
            out.insert(
                name.clone(),
                BridgeConfig {
                    url: url.to_owned(),
                    secret: Secret::new(secret),
                    format,
                    rate,
                },
            );
        }
        Ok(Self(out))
    }

    /// From the configuration (`None`: no bridges), with an error naming the variable.
    pub fn from_config(raw: Option<&Secret>) -> anyhow::Result<Self> {
        match raw {
            None => Ok(Self::default()),
            Some(raw) => {
                Self::parse(raw.expose()).map_err(|e| anyhow::anyhow!("DAPI_BRIDGES: {e}"))
            }
        }
    }

    /// The target an agent dials for `name`.
    pub fn target(&self, name: &str) -> Option<BridgeTarget> {
        self.0.get(name).map(|b| BridgeTarget {
            name: name.to_owned(),
            url: b.url.clone(),
            secret: b.secret.expose().to_owned(),
            format: b.format,
            rate: b.rate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridges_parse_and_errors_name_the_field_not_the_secret() {
        let ok = Bridges::parse(
            r#"{"bot": {"url": "wss://bot.example/ws", "secret": "s3cr3t", "format": "pcm16", "rate": 16000},
                "raw": {"url": "ws://127.0.0.1:9/x", "secret": "k", "format": "opus"}}"#,
        )
        .unwrap();
        assert_eq!(ok.0.len(), 2);
        assert_eq!(ok.target("raw").unwrap().rate, 48_000);
        assert!(!format!("{ok:?}").contains("s3cr3t"));
        let cases = [
            (
                r#"{"b": {"url": "wss://h/x", "secret": "s3cr3t", "format": "pcm16", "rate": 44100}}"#,
                "rate 44100",
            ),
            (
                r#"{"b": {"url": "https://h/x", "secret": "s3cr3t", "format": "pcm16", "rate": 8000}}"#,
                "ws://",
            ),
            (
                r#"{"b": {"url": "wss://h/x", "secret": "", "format": "pcm16", "rate": 8000}}"#,
                "secret is required",
            ),
            (
                r#"{"b": {"url": "wss://h/x", "secret": "s3cr3t", "format": "mp3", "rate": 8000}}"#,
                "format",
            ),
            (
                r#"{"b": {"url": "wss://h/x", "secret": "s3cr3t", "format": "opus", "rate": 16000}}"#,
                "opus is 48000",
            ),
            (
                r#"{"b": {"url": "wss://h/x", "secret": "s3cr3t", "format": "pcm16"}}"#,
                "rate is required",
            ),
            (
                r#"{"b": {"url": "wss://h/x", "secret": "s3cr3t", "format": "pcm16", "rate": 8000, "x": 1}}"#,
                "unknown field",
            ),
            (r#"{"b c": {}}"#, "bridge names"),
            (r#"["s3cr3t"]"#, "JSON object"),
            (r#"{"s3cr3t"#, "not valid JSON"),
        ];
        for (raw, want) in cases {
            let e = Bridges::parse(raw).unwrap_err();
            assert!(e.contains(want), "{raw}: {e}");
            assert!(!e.contains("s3cr3t") && !e.contains("h/x"), "{e}");
        }
        let e = Bridges::from_config(Some(&Secret::new("{"))).unwrap_err();
        assert!(e.to_string().starts_with("DAPI_BRIDGES: "), "{e}");
    }

    fn item(audio: &str, loops: Option<i64>, gain: Option<f64>) -> PlaylistItemReq {
        PlaylistItemReq {
            audio: audio.into(),
            loops,
            gain_db: gain,
        }
    }

    #[test]
    fn options_are_checked_field_by_field() {
        let none = Bridges::default();
        let seed = check(None, false, &RobotOptionsReq::default(), &none).unwrap();
        assert_eq!(seed.items.len(), 1);
        assert_eq!(seed.items[0].audio, "default");
        let o = RobotOptionsReq {
            playlist: Some(vec![item("a", Some(2), Some(-6.5)), item("b", None, None)]),
            record: Some(RecordReq::default()),
            bridge: None,
        };
        let s = check(Some(&AssetName::parse("hi").unwrap()), false, &o, &none).unwrap();
        let names: Vec<&str> = s.items.iter().map(|i| i.audio.as_str()).collect();
        assert_eq!(names, ["hi", "a", "b"]);
        assert_eq!((s.items[1].loops, s.items[1].gain_db), (2, -6.5));
        assert_eq!(s.record, Some(DEFAULT_RECORD));
        let bad_cases: Vec<(RobotOptionsReq, bool, &str)> = vec![
            (
                RobotOptionsReq {
                    playlist: Some(vec![item("a", Some(-1), None)]),
                    ..Default::default()
                },
                false,
                "playlist[0].loop",
            ),
            (
                RobotOptionsReq {
                    playlist: Some(vec![item("a", None, None), item("b", None, Some(12.5))]),
                    ..Default::default()
                },
                false,
                "playlist[1].gain_db",
            ),
            (
                RobotOptionsReq {
                    playlist: Some(vec![item("a", None, Some(-30.1))]),
                    ..Default::default()
                },
                false,
                "playlist[0].gain_db",
            ),
            (
                RobotOptionsReq {
                    playlist: Some(vec![item("no way", None, None)]),
                    ..Default::default()
                },
                false,
                "playlist[0].audio",
            ),
            (
                RobotOptionsReq {
                    record: Some(RecordReq {
                        max_seconds: Some(0),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                false,
                "record.max_seconds",
            ),
            (
                RobotOptionsReq {
                    record: Some(RecordReq {
                        max_seconds: Some(3601),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                false,
                "record.max_seconds",
            ),
            (
                RobotOptionsReq {
                    record: Some(RecordReq {
                        silence_seconds: Some(0),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                false,
                "record.silence_seconds",
            ),
            (
                RobotOptionsReq {
                    record: Some(RecordReq::default()),
                    ..Default::default()
                },
                true,
                "loop must be false",
            ),
            (
                RobotOptionsReq {
                    bridge: Some("nope".into()),
                    ..Default::default()
                },
                false,
                "bridge",
            ),
        ];
        for (o, lp, want) in bad_cases {
            let e = check(None, lp, &o, &none).unwrap_err();
            let (status, code) = e.status_and_code();
            assert_eq!((status.as_u16(), code), (400, "invalid_field"));
            assert!(e.to_string().starts_with(want), "{want}: {e}");
        }
    }
}
