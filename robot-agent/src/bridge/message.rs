//! The media bridge's messages (DESIGN.md, "Media bridge": fixed), sans-IO: the agent's
//! events serialized, the program's parsed and checked against the session's format.
//!
//! ```text
//!   AgentEvent::{Start, Media, Participant, Mark, Cleared, Stop} ──to_json()──► text frame
//!   text frame ──parse_program(text, format)──► ProgramMessage::{Media, Mark, Clear, Play, Hangup}
//!                                         └───► BridgeError (typed; never a panic)
//! ```
//!
//! A program is untrusted input: a message over [`MAX_MESSAGE_BYTES`], bad JSON, an unknown
//! event, a missing field, a `media` payload that is not base64 or not a whole number of
//! 20 ms frames (pcm16) or not one 20 ms Opus packet (opus) is an error naming what was
//! wrong. The caller logs it and goes on: one bad message never ends a call.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use protocol::agent::BridgeFormat;

use super::BridgeError;

/// The largest program message taken (a text frame): 1 s of 48 kHz pcm16 is 128 KiB in
/// base64, so a program may send up to 2 s of audio in one message.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The longest mark name, in bytes.
pub const MAX_MARK_NAME: usize = 256;

/// The session's audio format on the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// pcm16 or opus.
    pub encoding: BridgeFormat,
    /// Sample rate, Hz (48000 for opus).
    pub rate: u32,
}

impl Format {
    /// The format of a target; an error when the rate is not one a bridge may use
    /// (the API checks it too; the agent does not trust it blindly).
    pub fn new(encoding: BridgeFormat, rate: u32) -> Result<Self, BridgeError> {
        match encoding {
            BridgeFormat::Opus => Ok(Self {
                encoding,
                rate: 48_000,
            }),
            BridgeFormat::Pcm16 if audio::PCM_RATES.contains(&rate) => Ok(Self { encoding, rate }),
            BridgeFormat::Pcm16 => Err(BridgeError::Config(format!(
                "pcm16 at {rate} Hz: a bridge uses 8000, 16000, 24000 or 48000"
            ))),
        }
    }

    /// Bytes of one 20 ms pcm16 frame (mono, 16 bits).
    pub fn pcm_frame_bytes(&self) -> usize {
        audio::frame_samples(self.rate) * 2
    }

    fn name(&self) -> &'static str {
        match self.encoding {
            BridgeFormat::Pcm16 => "pcm16",
            BridgeFormat::Opus => "opus",
        }
    }
}

/// Who the call is between (`start.call`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallParties {
    /// The caller, when known.
    pub src_uid: Option<String>,
    /// The callees.
    pub dst_uid: Vec<String>,
}

/// Why the agent ends the bridge (`stop.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Everyone left the channel.
    Left,
    /// The robot was kicked.
    Kicked,
    /// The call or the robot's part in it is over (quit/robot, hangup, audio over).
    Ended,
    /// The session failed or was handed back.
    Error,
}

impl StopReason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Kicked => "kicked",
            Self::Ended => "ended",
            Self::Error => "error",
        }
    }
}

/// What the agent sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// First on every connection; `resume` after a drop.
    Start {
        /// Session id.
        session: i64,
        /// Channel.
        channel: String,
        /// The call's parties.
        call: CallParties,
        /// The audio format.
        format: Format,
        /// A redial after the socket dropped.
        resume: bool,
    },
    /// 20 ms of a participant (pcm16 at the rate, or one Opus packet as received).
    Media {
        /// The participant.
        uid: std::sync::Arc<str>,
        /// Per participant, from 0.
        seq: u64,
        /// Milliseconds since the participant's first packet (from RTP timestamps: a
        /// gap shows as a jump).
        timestamp_ms: u64,
        /// The audio (raw; base64 on the wire).
        payload: Bytes,
    },
    /// A participant joined or left.
    Participant {
        /// The uid.
        uid: String,
        /// Joined (else left).
        joined: bool,
    },
    /// A program mark was played: the audio before it was written to every listener.
    Mark {
        /// Its name.
        name: String,
        /// Session audio before it, ms.
        position_ms: u64,
    },
    /// A clear dropped these marks (never played) and this much of the program's audio.
    Cleared {
        /// The marks, in queue order.
        marks: Vec<String>,
        /// Audio dropped, ms.
        dropped_ms: u64,
    },
    /// Last.
    Stop {
        /// Why.
        reason: StopReason,
    },
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

impl AgentEvent {
    /// The text frame.
    pub fn to_json(&self) -> String {
        use serde_json::json;
        match self {
            // The hot path: formatted directly (no map built per packet).
            Self::Media {
                uid,
                seq,
                timestamp_ms,
                payload,
            } => format!(
                r#"{{"event":"media","uid":{},"seq":{seq},"timestamp_ms":{timestamp_ms},"payload":"{}"}}"#,
                json_str(uid),
                B64.encode(payload)
            ),
            Self::Start {
                session,
                channel,
                call,
                format,
                resume,
            } => json!({
                "event": "start",
                "session": session,
                "channel": channel,
                "call": {"src_uid": call.src_uid, "dst_uid": call.dst_uid},
                "format": {"encoding": format.name(), "rate": format.rate, "channels": 1, "frame_ms": 20},
                "resume": resume,
            })
            .to_string(),
            Self::Participant { uid, joined } => json!({
                "event": "participant",
                "uid": uid,
                "state": if *joined { "joined" } else { "left" },
            })
            .to_string(),
            Self::Mark { name, position_ms } => {
                json!({"event": "mark", "name": name, "position_ms": position_ms}).to_string()
            }
            Self::Cleared { marks, dropped_ms } => {
                json!({"event": "cleared", "marks": marks, "dropped_ms": dropped_ms}).to_string()
            }
            Self::Stop { reason } => json!({"event": "stop", "reason": reason.as_str()}).to_string(),
        }
    }
}

/// A program's message, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramMessage {
    /// Audio to speak: pcm16 (a whole number of 20 ms frames, little-endian) or one
    /// 20 ms Opus packet, as decoded from base64.
    Media {
        /// The raw audio.
        audio: Bytes,
    },
    /// Queue a mark after the audio sent so far.
    Mark {
        /// Its name.
        name: String,
    },
    /// Drop everything queued and playing.
    Clear,
    /// Queue a prepared asset.
    Play {
        /// Its name.
        audio: String,
    },
    /// The robot leaves.
    Hangup,
}

fn field<'a>(v: &'a serde_json::Value, name: &'static str) -> Result<&'a str, BridgeError> {
    v.get(name)
        .and_then(serde_json::Value::as_str)
        .ok_or(BridgeError::BadField {
            field: name,
            why: "a string is required",
        })
}

/// Parses and checks one text frame of the program.
pub fn parse_program(text: &str, format: &Format) -> Result<ProgramMessage, BridgeError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(BridgeError::TooLarge {
            bytes: text.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| BridgeError::BadJson(e.to_string()))?;
    let event =
        v.get("event")
            .and_then(serde_json::Value::as_str)
            .ok_or(BridgeError::BadField {
                field: "event",
                why: "every message has an \"event\" string",
            })?;
    match event {
        "media" => {
            let payload = field(&v, "payload")?;
            let audio = B64
                .decode(payload)
                .map_err(|e| BridgeError::BadBase64(e.to_string()))?;
            check_audio(&audio, format)?;
            Ok(ProgramMessage::Media {
                audio: Bytes::from(audio),
            })
        }
        "mark" => {
            let name = field(&v, "name")?;
            if name.is_empty() || name.len() > MAX_MARK_NAME {
                return Err(BridgeError::BadField {
                    field: "name",
                    why: "a mark name is 1 to 256 bytes",
                });
            }
            Ok(ProgramMessage::Mark {
                name: name.to_owned(),
            })
        }
        "clear" => Ok(ProgramMessage::Clear),
        "hangup" => Ok(ProgramMessage::Hangup),
        "play" => {
            let audio = field(&v, "audio")?;
            let ok = !audio.is_empty()
                && audio.len() <= 64
                && audio
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(BridgeError::BadField {
                    field: "audio",
                    why: "an asset name matches [A-Za-z0-9_-]{1,64}",
                });
            }
            Ok(ProgramMessage::Play {
                audio: audio.to_owned(),
            })
        }
        other => Err(BridgeError::UnknownEvent(other.chars().take(64).collect())),
    }
}

fn check_audio(audio: &[u8], format: &Format) -> Result<(), BridgeError> {
    match format.encoding {
        BridgeFormat::Pcm16 => {
            let frame = format.pcm_frame_bytes();
            if audio.is_empty() || !audio.len().is_multiple_of(frame) {
                return Err(BridgeError::NotWholeFrames {
                    bytes: audio.len(),
                    frame_bytes: frame,
                });
            }
        }
        BridgeFormat::Opus => {
            let samples = audio::opus_packet_samples(audio)
                .map_err(|e| BridgeError::BadOpus(e.to_string()))?;
            if samples != audio::FRAME_SAMPLES {
                return Err(BridgeError::BadOpus(format!(
                    "a packet of {} ms; the bridge takes 20 ms packets",
                    samples / 48
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pcm(rate: u32) -> Format {
        Format::new(BridgeFormat::Pcm16, rate).unwrap()
    }

    fn opus() -> Format {
        Format::new(BridgeFormat::Opus, 48_000).unwrap()
    }

    fn media(bytes: &[u8]) -> String {
        format!(r#"{{"event":"media","payload":"{}"}}"#, B64.encode(bytes))
    }

    #[test]
    fn agent_events_have_the_design_shapes() {
        let start = AgentEvent::Start {
            session: 7,
            channel: "c1".into(),
            call: CallParties {
                src_uid: Some("a".into()),
                dst_uid: vec!["b".into()],
            },
            format: pcm(16_000),
            resume: true,
        };
        let v: serde_json::Value = serde_json::from_str(&start.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event":"start","session":7,"channel":"c1",
                "call":{"src_uid":"a","dst_uid":["b"]},
                "format":{"encoding":"pcm16","rate":16000,"channels":1,"frame_ms":20},
                "resume":true})
        );
        let m = AgentEvent::Media {
            uid: "u\"1".into(),
            seq: 3,
            timestamp_ms: 60,
            payload: Bytes::from_static(&[1, 2, 3]),
        };
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event":"media","uid":"u\"1","seq":3,"timestamp_ms":60,"payload":"AQID"})
        );
        let cases = [
            (
                AgentEvent::Participant {
                    uid: "u".into(),
                    joined: false,
                },
                r#"{"event":"participant","state":"left","uid":"u"}"#,
            ),
            (
                AgentEvent::Mark {
                    name: "m".into(),
                    position_ms: 40,
                },
                r#"{"event":"mark","name":"m","position_ms":40}"#,
            ),
            (
                AgentEvent::Cleared {
                    marks: vec!["a".into(), "b".into()],
                    dropped_ms: 120,
                },
                r#"{"dropped_ms":120,"event":"cleared","marks":["a","b"]}"#,
            ),
            (
                AgentEvent::Stop {
                    reason: StopReason::Kicked,
                },
                r#"{"event":"stop","reason":"kicked"}"#,
            ),
        ];
        for (e, want) in cases {
            let got: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
            let want: serde_json::Value = serde_json::from_str(want).unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn program_messages_parse() {
        let f = pcm(8_000);
        assert_eq!(
            parse_program(&media(&[0; 320]), &f).unwrap(),
            ProgramMessage::Media {
                audio: Bytes::from(vec![0; 320])
            }
        );
        // several whole frames in one message
        assert!(parse_program(&media(&[0; 960]), &f).is_ok());
        assert_eq!(
            parse_program(r#"{"event":"mark","name":"m1"}"#, &f).unwrap(),
            ProgramMessage::Mark { name: "m1".into() }
        );
        assert_eq!(
            parse_program(r#"{"event":"clear","extra":1}"#, &f).unwrap(),
            ProgramMessage::Clear
        );
        assert_eq!(
            parse_program(r#"{"event":"hangup"}"#, &f).unwrap(),
            ProgramMessage::Hangup
        );
        assert_eq!(
            parse_program(r#"{"event":"play","audio":"beep-1"}"#, &f).unwrap(),
            ProgramMessage::Play {
                audio: "beep-1".into()
            }
        );
    }

    #[test]
    fn bad_program_messages_are_typed_errors() {
        let f = pcm(16_000);
        let e = |t: &str| parse_program(t, &f).unwrap_err();
        assert!(matches!(e("{"), BridgeError::BadJson(_)));
        assert!(matches!(
            e("[]"),
            BridgeError::BadField { field: "event", .. }
        ));
        assert!(matches!(
            e(r#"{"event":"dance"}"#),
            BridgeError::UnknownEvent(s) if s == "dance"
        ));
        assert!(matches!(
            e(r#"{"event":"media"}"#),
            BridgeError::BadField {
                field: "payload",
                ..
            }
        ));
        assert!(matches!(
            e(r#"{"event":"media","payload":"not base64!"}"#),
            BridgeError::BadBase64(_)
        ));
        // 16 kHz: a frame is 640 bytes
        assert!(matches!(
            e(&media(&[0; 641])),
            BridgeError::NotWholeFrames {
                bytes: 641,
                frame_bytes: 640
            }
        ));
        assert!(matches!(
            e(&media(&[])),
            BridgeError::NotWholeFrames { bytes: 0, .. }
        ));
        assert!(matches!(
            e(r#"{"event":"mark","name":""}"#),
            BridgeError::BadField { field: "name", .. }
        ));
        assert!(matches!(
            e(r#"{"event":"play","audio":"../etc"}"#),
            BridgeError::BadField { field: "audio", .. }
        ));
        let big = media(&vec![0; 640 * 400]);
        assert!(matches!(
            e(&big),
            BridgeError::TooLarge {
                limit: MAX_MESSAGE_BYTES,
                ..
            }
        ));
        // opus: one 20 ms packet only
        let o = opus();
        assert!(matches!(
            parse_program(&media(&[0xff, 0xff]), &o).unwrap_err(),
            BridgeError::BadOpus(_)
        ));
        // TOC 0x08: SILK NB 20 ms, code 0: one frame of 20 ms
        assert!(parse_program(&media(&[0x08, 0, 0]), &o).is_ok());
        // TOC 0x00: SILK NB 10 ms
        assert!(matches!(
            parse_program(&media(&[0x00, 0]), &o).unwrap_err(),
            BridgeError::BadOpus(_)
        ));
    }

    #[test]
    fn formats_are_checked() {
        assert!(Format::new(BridgeFormat::Pcm16, 44_100).is_err());
        assert_eq!(Format::new(BridgeFormat::Opus, 8_000).unwrap().rate, 48_000);
        assert_eq!(pcm(48_000).pcm_frame_bytes(), 1920);
        assert_eq!(pcm(8_000).pcm_frame_bytes(), 320);
    }

    proptest! {
        #[test]
        fn any_text_parses_or_fails_without_panicking(s in ".{0,300}") {
            let _ = parse_program(&s, &pcm(16_000));
            let _ = parse_program(&s, &opus());
        }

        #[test]
        fn any_media_payload_parses_or_fails_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let t = media(&b);
            let r = parse_program(&t, &pcm(24_000));
            prop_assert_eq!(r.is_ok(), !b.is_empty() && b.len() % 960 == 0);
            let _ = parse_program(&t, &opus());
        }
    }
}
