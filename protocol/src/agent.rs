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
//! ```
//!
//! The messages of `DESIGN.md` are kept exactly; fields marked (ext) are additions that
//! an agent written against the original protocol may ignore.

use serde::{Deserialize, Serialize};

/// Version string agents send in `register`.
pub const PROTOCOL_VERSION: &str = "1";

/// A robot session offered to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// Messages from the API to an agent.
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
        assert!(parse_agent_message("{").is_err());
        assert!(parse_agent_message(r#"{"type":"nope"}"#).is_err());
    }
}
