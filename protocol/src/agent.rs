//! The agent link: `GET /agent` upgraded to a WebSocket, `Authorization: Bearer <agent
//! key>`, JSON text frames tagged by `type`.
//!
//! ```text
//!  agent                                   api
//!    |-- register {agent_id, capacity} ---->|
//!    |<-------------- registered -----------|
//!    |<---- offer {session: {...}} ---------|   least-loaded agent first
//!    |-- accept {session_id} -------------->|   (or reject {session_id, reason})
//!    |-- status {session_id, "joining"} --->|
//!    |-- status {session_id, "playing"} --->|
//!    |-- renew {session_ids} (every few s) >|   the lease
//!    |<---------------- leave {session_id} -|   quit/robot, call over
//!    |-- status {session_id, "left"} ------>|
//!    |<---------------- drain --------------|   take nothing new
//!    |<-- control {session_id, seq, action} |   POST /dapi/robot/control (ext)
//!    |-- control_ack {session_id, seq, state, item, position_ms, queue} ->|
//!    |-- mark {session_id, name, state} --->|   a mark played or cleared (ext)
//! ```
//!
//! The messages of `DESIGN.md` are kept exactly; fields marked (ext) are additions that
//! an agent written against the original protocol may ignore.

use serde::{Deserialize, Serialize};

/// Version string agents send in `register`.
pub const PROTOCOL_VERSION: &str = "1";

/// A robot session offered to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionOffer {
    /// Session id.
    pub id: i64,
    /// Channel to join.
    pub channel: String,
    /// The robot's uid in the channel.
    pub uid: String,
    /// Token for joining `channel` as `uid`.
    pub token: String,
    /// App ID the token is for (ext).
    #[serde(default)]
    pub app_id: String,
    /// Name of the audio asset to play (the first of `playlist`).
    pub audio: String,
    /// Loop the audio until told to leave.
    #[serde(rename = "loop")]
    pub loop_audio: bool,
    /// Every asset to play, in order (ext; `tone_list` of scheduled calls).
    #[serde(default)]
    pub playlist: Vec<String>,
    /// Resume playback from this position, in ms (ext; after a re-dispatch).
    #[serde(default)]
    pub position_ms: u64,
    /// Attempt number, from 1 (ext).
    #[serde(default)]
    pub attempt: u32,
    /// The playback queue with each item's loop count and gain (ext). The API always
    /// fills it (from `playlist` with `loop` 0 and `gain_db` 0 when the request had no
    /// options); an agent that finds it empty plays `playlist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<PlaylistItem>,
    /// Voicemail: record every other participant after the playlist (ext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordOptions>,
    /// Media bridge: the program to dial, from the API's `DAPI_BRIDGES` (ext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeTarget>,
    /// Who the call is between, for a bridge's `start.call` (ext; set with `bridge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<OfferCall>,
}

/// The parties of the robot's call (ext): the caller and the callees, as `call/user` had
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferCall {
    /// The caller.
    pub src_uid: String,
    /// The callees, in the order called.
    #[serde(default)]
    pub dst_uid: Vec<String>,
}

/// One item of a robot's playback queue (ext).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaylistItem {
    /// Asset name.
    pub audio: String,
    /// Times the item is played again after its first play (0: once).
    #[serde(rename = "loop", default)]
    pub loops: u32,
    /// Gain applied to the item, in dB (-30 to +12).
    #[serde(default)]
    pub gain_db: f32,
}

/// Voicemail options (ext): the robot plays its queue once, beeps if asked, then records
/// every other participant until `silence_seconds` of silence after speech,
/// `max_seconds`, or they leave; it uploads each recording with
/// `PUT /agent/recordings/{session_id}/{uid}` and leaves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecordOptions {
    /// Longest recording, seconds (1 to 3600).
    pub max_seconds: u32,
    /// Silence after speech that ends a recording, seconds (1 to 60).
    pub silence_seconds: u32,
    /// Beep before recording.
    pub beep: bool,
}

/// Audio format of a media bridge (ext).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BridgeFormat {
    /// 16-bit little-endian PCM, mono, at the target's `rate`.
    Pcm16,
    /// The Opus packets as received (48 kHz).
    Opus,
}

/// A media bridge target (ext): where the agent dials the operator's program. Always from
/// the API's configuration, never from a request. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeTarget {
    /// The target's name in `DAPI_BRIDGES`.
    pub name: String,
    /// `ws://` or `wss://` URL of the program.
    pub url: String,
    /// Sent as `Authorization: Bearer <secret>`.
    pub secret: String,
    /// `pcm16` or `opus`.
    pub format: BridgeFormat,
    /// Sample rate in Hz (8000, 16000, 24000 or 48000 for pcm16; 48000 for opus).
    pub rate: u32,
}

impl std::fmt::Debug for BridgeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeTarget")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

/// How `play` adds to the queue (ext).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlayMode {
    /// After what is queued.
    #[default]
    Append,
    /// Instead of what is playing and queued (the dropped marks are reported `cleared`).
    Replace,
}

/// A playback control relayed from `POST /dapi/robot/control` (ext).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ControlAction {
    /// Queue an asset.
    Play {
        /// Asset name.
        audio: String,
        /// Append (default) or replace.
        #[serde(default)]
        mode: PlayMode,
        /// Times played again after the first play.
        #[serde(rename = "loop", default)]
        loops: u32,
        /// Gain in dB.
        #[serde(default)]
        gain_db: f32,
    },
    /// Pause playback (listeners hear silence; the position stays).
    Pause,
    /// Resume after a pause.
    Resume,
    /// Move within the current item.
    Seek {
        /// Position in the current item, ms.
        position_ms: u64,
    },
    /// Change the gain of what plays now and after.
    Gain {
        /// Gain in dB.
        gain_db: f32,
    },
    /// Drop what plays and everything queued (marks queued are reported `cleared`).
    Clear,
    /// Queue a mark: reported `played` once the audio before it was written to every
    /// listener, or `cleared` when a clear or replace drops it.
    Mark {
        /// The mark's name.
        name: String,
    },
}

/// The robot's playback state (ext).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlaybackState {
    /// Playing an item.
    Playing,
    /// Paused.
    Paused,
    /// Nothing to play.
    Idle,
}

/// What the robot is playing (ext): the answer of `POST /dapi/robot/control`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaybackStatus {
    /// Playing, paused or idle.
    pub state: PlaybackState,
    /// The item playing (or paused), none when idle.
    #[serde(default)]
    pub item: Option<String>,
    /// Position in that item, ms.
    #[serde(default)]
    pub position_ms: u64,
    /// The items queued after it, in order.
    #[serde(default)]
    pub queue: Vec<String>,
}

/// What became of a mark (ext).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkState {
    /// The audio before it was written to every connected listener's track.
    Played,
    /// A clear or a replace dropped it; it will never be played.
    Cleared,
}

/// State an agent reports for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Joining the channel.
    Joining,
    /// Playing to at least one listener.
    Playing,
    /// Left the channel (kicked, nobody left, audio over, drain).
    Left,
    /// Could not run (the detail says why).
    Failed,
}

/// Messages from an agent to the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AgentMessage {
    /// First message: who the agent is and how many sessions it can hold.
    Register {
        /// Stable id of the agent process.
        agent_id: String,
        /// Sessions it can hold at once.
        capacity: u32,
        /// Agent version.
        #[serde(default)]
        version: String,
        /// Sessions the agent still holds from before a reconnect (ext).
        #[serde(default)]
        sessions: Vec<i64>,
    },
    /// The agent takes an offered session.
    Accept {
        /// Session id.
        session_id: i64,
    },
    /// The agent declines an offered session.
    Reject {
        /// Session id.
        session_id: i64,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Lease renewal for the sessions the agent holds.
    Renew {
        /// Held sessions.
        session_ids: Vec<i64>,
    },
    /// A session's state changed.
    Status {
        /// Session id.
        session_id: i64,
        /// New state.
        state: SessionState,
        /// Free text (failure reason, leave reason).
        #[serde(default)]
        detail: String,
        /// Playback position in ms (ext; used to resume after a re-dispatch).
        #[serde(default)]
        position_ms: Option<u64>,
    },
    /// The answer to a `control` (ext): the playback state after applying it.
    #[serde(rename = "control_ack")]
    ControlAck {
        /// Session id.
        session_id: i64,
        /// The `seq` of the control.
        seq: u64,
        /// The playback state after the control.
        #[serde(flatten)]
        status: PlaybackStatus,
        /// Set when the control could not be applied (unknown asset, seek past the
        /// end); the state is then the unchanged one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A mark was played or cleared (ext).
    Mark {
        /// Session id.
        session_id: i64,
        /// The mark's name.
        name: String,
        /// Played or cleared.
        state: MarkState,
        /// Playback position when it was played, ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position_ms: Option<u64>,
    },
}

/// Messages from the API to an agent.
// An offer (with its robot options) is much larger than the other messages; they are built
// one at a time and serialized at once, never stored in bulk, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// Registration accepted (ext).
    Registered {
        /// The agent id as the server knows it.
        agent_id: String,
        /// Seconds a lease lasts without renewal.
        lease_seconds: u64,
    },
    /// A session to take.
    Offer {
        /// The session.
        session: SessionOffer,
    },
    /// Leave a session's channel now.
    Leave {
        /// Session id.
        session_id: i64,
    },
    /// Take no new sessions; finish the ones held.
    Drain,
    /// Apply a playback control and answer `control_ack` with the same `seq` (ext).
    Control {
        /// Session id.
        session_id: i64,
        /// Sequence number chosen by the API; echoed in `control_ack`.
        seq: u64,
        /// The action and its fields, at the top level of the message.
        #[serde(flatten)]
        action: ControlAction,
    },
    /// Something was wrong with the agent's last message (ext).
    Error {
        /// Stable code.
        code: String,
        /// What was wrong.
        message: String,
    },
}

/// Parses an agent's frame.
pub fn parse_agent_message(text: &str) -> Result<AgentMessage, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Parses a server frame.
pub fn parse_server_message(text: &str) -> Result<ServerMessage, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_md_shapes() {
        let m = parse_agent_message(
            r#"{"type":"register","agent_id":"a1","capacity":4,"version":"0.1"}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            AgentMessage::Register {
                agent_id: "a1".into(),
                capacity: 4,
                version: "0.1".into(),
                sessions: vec![]
            }
        );
        let m = parse_agent_message(r#"{"type":"reject","session_id":3,"reason":"full"}"#).unwrap();
        assert_eq!(
            m,
            AgentMessage::Reject {
                session_id: 3,
                reason: "full".into()
            }
        );
        let m = parse_agent_message(
            r#"{"type":"status","session_id":3,"state":"playing","detail":""}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            AgentMessage::Status {
                state: SessionState::Playing,
                ..
            }
        ));
        let offer = ServerMessage::Offer {
            session: SessionOffer {
                id: 7,
                channel: "ch_a".into(),
                uid: "robot".into(),
                token: "006x".into(),
                app_id: "app".into(),
                audio: "default".into(),
                loop_audio: true,
                playlist: vec!["default".into()],
                position_ms: 0,
                attempt: 1,
                items: vec![],
                record: None,
                bridge: None,
                call: None,
            },
        };
        let text = serde_json::to_string(&offer).unwrap();
        assert!(
            text.contains(r#""type":"offer""#) && text.contains(r#""loop":true"#),
            "{text}"
        );
        assert_eq!(parse_server_message(&text).unwrap(), offer);
        assert_eq!(
            serde_json::to_string(&ServerMessage::Drain).unwrap(),
            r#"{"type":"drain"}"#
        );
        assert_eq!(
            serde_json::to_string(&ServerMessage::Leave { session_id: 7 }).unwrap(),
            r#"{"type":"leave","session_id":7}"#
        );
        // An offer without the (ext) fields, as an old API sends it, still parses.
        let old = r#"{"type":"offer","session":{"id":1,"channel":"c","uid":"robot","token":"t","audio":"default","loop":false}}"#;
        assert!(
            matches!(parse_server_message(old), Ok(ServerMessage::Offer { session }) if session.items.is_empty() && session.record.is_none())
        );
        assert!(parse_agent_message("{").is_err());
        assert!(parse_agent_message(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn control_messages_are_flat() {
        let c = ServerMessage::Control {
            session_id: 4,
            seq: 9,
            action: ControlAction::Play {
                audio: "beep".into(),
                mode: PlayMode::Replace,
                loops: 2,
                gain_db: -6.0,
            },
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"type":"control","session_id":4,"seq":9,"action":"play","audio":"beep","mode":"replace","loop":2,"gain_db":-6.0}"#
        );
        assert_eq!(parse_server_message(&text).unwrap(), c);
        let p =
            parse_server_message(r#"{"type":"control","session_id":4,"seq":1,"action":"pause"}"#)
                .unwrap();
        assert_eq!(
            p,
            ServerMessage::Control {
                session_id: 4,
                seq: 1,
                action: ControlAction::Pause
            }
        );
        let s = parse_server_message(
            r#"{"type":"control","session_id":4,"seq":2,"action":"seek","position_ms":1500}"#,
        )
        .unwrap();
        assert!(matches!(
            s,
            ServerMessage::Control {
                action: ControlAction::Seek { position_ms: 1500 },
                ..
            }
        ));

        let ack = parse_agent_message(
            r#"{"type":"control_ack","session_id":4,"seq":9,"state":"playing","item":"beep","position_ms":20,"queue":["default"]}"#,
        )
        .unwrap();
        assert_eq!(
            ack,
            AgentMessage::ControlAck {
                session_id: 4,
                seq: 9,
                status: PlaybackStatus {
                    state: PlaybackState::Playing,
                    item: Some("beep".into()),
                    position_ms: 20,
                    queue: vec!["default".into()],
                },
                error: None,
            }
        );
        let idle =
            parse_agent_message(r#"{"type":"control_ack","session_id":4,"seq":3,"state":"idle"}"#)
                .unwrap();
        assert!(matches!(
            idle,
            AgentMessage::ControlAck {
                status: PlaybackStatus {
                    state: PlaybackState::Idle,
                    item: None,
                    ..
                },
                ..
            }
        ));
        let mark =
            parse_agent_message(r#"{"type":"mark","session_id":4,"name":"m1","state":"cleared"}"#)
                .unwrap();
        assert_eq!(
            mark,
            AgentMessage::Mark {
                session_id: 4,
                name: "m1".into(),
                state: MarkState::Cleared,
                position_ms: None
            }
        );
    }

    #[test]
    fn bridge_debug_hides_the_secret() {
        let b = BridgeTarget {
            name: "bot".into(),
            url: "wss://bot.example/ws".into(),
            secret: "s3cr3t".into(),
            format: BridgeFormat::Pcm16,
            rate: 16000,
        };
        let d = format!("{b:?}");
        assert!(!d.contains("s3cr3t") && d.contains("bot"), "{d}");
    }
}
