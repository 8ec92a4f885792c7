//! `/rtc` channel signaling: JSON text frames over a WebSocket, each with a `type`.
//!
//! ```text
//!  client                                   server
//!    | join {appID, channel, uid, token} ---->|  token verified
//!    |<---- joined {channel, uid, peers, ice_servers}
//!    |<---- peer_joined / peer_left           |  presence of the others
//!    | signal {to, description|candidate} --->|  relayed to `to` only
//!    |<---- signal {from, description|candidate}
//!    | leave -------------------------------->|
//!    |<---- error {code, message} / kicked {reason}, then close
//! ```
//!
//! The newcomer sends an offer to every peer listed in `joined`; a peer already present
//! answers. Peers accept both complete SDP (candidates inside) and trickled candidates;
//! `"candidate": null` means "no more candidates". Uids are strings on this channel.
//!
//! [`ClientMessage::parse`] and [`ServerMessage::parse`] never panic on any input; the
//! `to_json` methods produce exactly the shapes of `DESIGN.md`.

use serde::{Deserialize, Deserializer, Serialize};

/// The `type` of an SDP description carried by `signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    /// An offer (sent by the newcomer to each peer, or on renegotiation).
    Offer,
    /// An answer to an offer.
    Answer,
}

/// An SDP offer or answer, as `RTCSessionDescription.toJSON()` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    /// Offer or answer.
    #[serde(rename = "type")]
    pub kind: SdpType,
    /// The SDP text. Never logged.
    pub sdp: String,
}

/// One ICE candidate, as `RTCIceCandidate.toJSON()` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    /// The `candidate:...` attribute line (may be empty: end of candidates of one section).
    pub candidate: String,
    /// Media stream id of the m-line.
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    /// Index of the m-line.
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_mline_index: Option<u16>,
    /// ICE ufrag the candidate belongs to (browsers send it; optional).
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// What a `signal` carries: a description, or a candidate (`None`: no more candidates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalPayload {
    /// `"description": {"type": "offer"|"answer", "sdp": ...}`.
    Description(SessionDescription),
    /// `"candidate": {...}`, or `"candidate": null` for end of candidates.
    Candidate(Option<IceCandidate>),
}

/// An ICE server handed out in `joined`, in `RTCIceServer` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (for TURN REST credentials: `<expiry unix>:<uid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Why a peer left the channel, as `peer_left` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaveReason {
    /// It sent `leave` or closed its socket.
    Left,
    /// The server removed it: a kick by server code, or a protocol violation.
    Kicked,
    /// Its socket went silent past the idle timeout.
    Timeout,
    /// The same uid joined again from another socket, which replaces this one.
    Replaced,
}

impl LeaveReason {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Kicked => "kicked",
            Self::Timeout => "timeout",
            Self::Replaced => "replaced",
        }
    }
}

/// A message from a client (an app, a browser, the robot) to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `{"type":"join","appID":A,"channel":C,"uid":U,"token":T}`: must be the first message.
    Join {
        /// App ID the token was minted for.
        app_id: String,
        /// Channel to join.
        channel: String,
        /// The joining uid (a string).
        uid: String,
        /// An Agora-compatible token (006 or 007) with the join privilege. Never logged.
        token: String,
    },
    /// `{"type":"signal","to":U, ...}`: relayed to member `to` of the same channel.
    Signal {
        /// Recipient uid.
        to: String,
        /// Description or candidate.
        payload: SignalPayload,
    },
    /// `{"type":"leave"}`: leave the channel; the server then closes the socket.
    Leave,
    /// `{"type":"renew","token":T}`: a fresh token for the same channel and uid, before
    /// the one the socket joined with expires (answer to `token_expiring`). Verified like
    /// a join; a refused token is an `error` and the socket stays.
    Renew {
        /// The new token. Never logged.
        token: String,
    },
}

/// A message from the server to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// Answer to a successful `join`.
    Joined {
        /// The channel.
        channel: String,
        /// The joined uid.
        uid: String,
        /// Uids already present, in join order: the newcomer offers to each.
        peers: Vec<String>,
        /// ICE servers to use (TURN credentials are fresh for this join).
        ice_servers: Vec<IceServer>,
    },
    /// Another uid joined the channel; it will send an offer.
    PeerJoined {
        /// Who.
        uid: String,
    },
    /// Another uid left the channel.
    PeerLeft {
        /// Who.
        uid: String,
        /// Why.
        reason: LeaveReason,
    },
    /// A relayed `signal`, with `from` in place of `to`.
    Signal {
        /// Sender uid.
        from: String,
        /// Description or candidate.
        payload: SignalPayload,
    },
    /// Something went wrong; see [`codes`]. Fatal codes are followed by a close.
    Error {
        /// Stable snake_case code.
        code: String,
        /// Human-readable explanation (never contains a token or SDP).
        message: String,
    },
    /// The server removed this socket from the channel; a close follows.
    Kicked {
        /// Why (`replaced` when the same uid joined from another socket).
        reason: String,
    },
    /// `{"type":"token_expiring"}`: the token this socket joined (or renewed) with
    /// expires in 30 s or less; send `renew` with a fresh one, or be kicked with reason
    /// `token_expired`.
    TokenExpiring,
}

/// Stable `error` codes of the server. Token codes come from the token verifier.
pub mod codes {
    /// The first message was not a `join`.
    pub const NOT_JOINED: &str = "not_joined";
    /// A second `join` on a socket that already joined (the socket stays).
    pub const ALREADY_JOINED: &str = "already_joined";
    /// Not JSON, not a text frame, an unknown `type`, or a field of the wrong shape.
    pub const INVALID_MESSAGE: &str = "invalid_message";
    /// A frame larger than the configured limit.
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    /// More messages per second than allowed.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The channel already holds the maximum number of peers.
    pub const CHANNEL_FULL: &str = "channel_full";
    /// A `signal` to a uid that is not in the channel (the socket stays).
    pub const PEER_NOT_FOUND: &str = "peer_not_found";
    /// The socket was silent past the idle timeout.
    pub const IDLE_TIMEOUT: &str = "idle_timeout";
    /// The `appID` of `join` is not this server's App ID.
    pub const WRONG_APP_ID: &str = "wrong_app_id";
    /// The token is not a token (bad prefix, base64, or length).
    pub const TOKEN_MALFORMED: &str = "token_malformed";
    /// The token's signature does not match.
    pub const TOKEN_BAD_SIGNATURE: &str = "token_bad_signature";
    /// The token was minted for another App ID.
    pub const TOKEN_WRONG_APP_ID: &str = "token_wrong_app_id";
    /// The token was minted for another channel.
    pub const TOKEN_WRONG_CHANNEL: &str = "token_wrong_channel";
    /// The token was minted for another uid.
    pub const TOKEN_WRONG_UID: &str = "token_wrong_uid";
    /// The token or its join privilege expired.
    pub const TOKEN_EXPIRED: &str = "token_expired";
    /// The token carries no join privilege.
    pub const TOKEN_NO_JOIN_PRIVILEGE: &str = "token_no_join_privilege";
    /// The server is shutting down.
    pub const SHUTTING_DOWN: &str = "shutting_down";
    /// The join could not be recorded (the database is unreachable); try again later.
    pub const UNAVAILABLE: &str = "unavailable";
    /// A `signal` for a peer on another server could not be handed over (the socket
    /// stays; send it again).
    pub const RELAY_FAILED: &str = "relay_failed";
    /// The joining uid is not an active member of a call in this channel that has not
    /// ended (`DAPI_AUTH=jwt`).
    pub const NOT_A_MEMBER: &str = "not_a_member";
    /// A socket sent no `join` within the join deadline.
    pub const JOIN_TIMEOUT: &str = "join_timeout";
    /// More joins for this uid or this token per minute than allowed.
    pub const TOO_MANY_JOINS: &str = "too_many_joins";
    /// More signaling (messages or bytes per second) than the per-socket budget, or
    /// signals arriving faster than their receiver reads them: the sender is cut off.
    pub const SIGNAL_FLOOD: &str = "signal_flood";
    /// The `kicked` reason of a socket whose token expired without a `renew`.
    pub const TOKEN_EXPIRED_REASON: &str = "token_expired";
}

/// Why a frame is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What is wrong, naming the field; safe to send back (contains no field values).
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

// ------------------------------------------------------------------ wire shapes

/// `candidate` present with null is `Some(None)`; absent is `None`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientWire {
    Join {
        #[serde(rename = "appID")]
        app_id: String,
        channel: String,
        uid: String,
        token: String,
    },
    Signal {
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<SessionDescription>,
        #[serde(
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        candidate: Option<Option<IceCandidate>>,
    },
    Leave,
    Renew {
        token: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerWire {
    Joined {
        channel: String,
        uid: String,
        peers: Vec<String>,
        ice_servers: Vec<IceServer>,
    },
    PeerJoined {
        uid: String,
    },
    PeerLeft {
        uid: String,
        reason: LeaveReason,
    },
    Signal {
        from: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<SessionDescription>,
        #[serde(
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        candidate: Option<Option<IceCandidate>>,
    },
    Error {
        code: String,
        message: String,
    },
    Kicked {
        reason: String,
    },
    TokenExpiring,
}

fn payload_from_wire(
    description: Option<SessionDescription>,
    candidate: Option<Option<IceCandidate>>,
) -> Result<SignalPayload, ParseError> {
    match (description, candidate) {
        (Some(d), None) => Ok(SignalPayload::Description(d)),
        (None, Some(c)) => Ok(SignalPayload::Candidate(c)),
        (Some(_), Some(_)) => Err(ParseError {
            message: "signal carries both description and candidate; send one per message".into(),
        }),
        (None, None) => Err(ParseError {
            message: "signal needs a description or a candidate".into(),
        }),
    }
}

fn payload_to_wire(
    payload: &SignalPayload,
) -> (Option<SessionDescription>, Option<Option<IceCandidate>>) {
    match payload {
        SignalPayload::Description(d) => (Some(d.clone()), None),
        SignalPayload::Candidate(c) => (None, Some(c.clone())),
    }
}

/// serde_json's message without the echoed input: it names the field and the problem.
fn json_error(e: &serde_json::Error) -> ParseError {
    use serde_json::error::Category;
    let message = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            format!("not valid JSON (line {} column {})", e.line(), e.column())
        }
        // Data errors name the field or variant; string values they quote are removed.
        Category::Data => {
            let text = redact_strings(&e.to_string());
            // Drop the " at line X column Y" tail; keep what names the field.
            match text.rfind(" at line ") {
                Some(i) => text[..i].to_owned(),
                None => text,
            }
        }
    };
    ParseError { message }
}

/// Replaces serde's `string "..."` quotations (Debug-escaped) by `a string`, so an
/// error never carries a candidate, SDP or token that was sent in the wrong place.
fn redact_strings(text: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        let mut chars = rest[i + MARK.len()..].char_indices();
        let mut end = None;
        while let Some((j, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = Some(i + MARK.len() + j + 1);
                    break;
                }
                _ => {}
            }
        }
        match end {
            Some(e) => rest = &rest[e..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

impl ClientMessage {
    /// Parses one text frame from a client. Never panics.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let wire: ClientWire = serde_json::from_str(text).map_err(|e| json_error(&e))?;
        Ok(match wire {
            ClientWire::Join {
                app_id,
                channel,
                uid,
                token,
            } => Self::Join {
                app_id,
                channel,
                uid,
                token,
            },
            ClientWire::Signal {
                to,
                description,
                candidate,
            } => Self::Signal {
                to,
                payload: payload_from_wire(description, candidate)?,
            },
            ClientWire::Leave => Self::Leave,
            ClientWire::Renew { token } => Self::Renew { token },
        })
    }

    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        let wire = match self {
            Self::Join {
                app_id,
                channel,
                uid,
                token,
            } => ClientWire::Join {
                app_id: app_id.clone(),
                channel: channel.clone(),
                uid: uid.clone(),
                token: token.clone(),
            },
            Self::Signal { to, payload } => {
                let (description, candidate) = payload_to_wire(payload);
                ClientWire::Signal {
                    to: to.clone(),
                    description,
                    candidate,
                }
            }
            Self::Leave => ClientWire::Leave,
            Self::Renew { token } => ClientWire::Renew {
                token: token.clone(),
            },
        };
        to_string(&wire)
    }
}

impl ServerMessage {
    /// Parses one text frame from the server. Never panics.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let wire: ServerWire = serde_json::from_str(text).map_err(|e| json_error(&e))?;
        Ok(match wire {
            ServerWire::Joined {
                channel,
                uid,
                peers,
                ice_servers,
            } => Self::Joined {
                channel,
                uid,
                peers,
                ice_servers,
            },
            ServerWire::PeerJoined { uid } => Self::PeerJoined { uid },
            ServerWire::PeerLeft { uid, reason } => Self::PeerLeft { uid, reason },
            ServerWire::Signal {
                from,
                description,
                candidate,
            } => Self::Signal {
                from,
                payload: payload_from_wire(description, candidate)?,
            },
            ServerWire::Error { code, message } => Self::Error { code, message },
            ServerWire::Kicked { reason } => Self::Kicked { reason },
            ServerWire::TokenExpiring => Self::TokenExpiring,
        })
    }

    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        let wire = match self {
            Self::Joined {
                channel,
                uid,
                peers,
                ice_servers,
            } => ServerWire::Joined {
                channel: channel.clone(),
                uid: uid.clone(),
                peers: peers.clone(),
                ice_servers: ice_servers.clone(),
            },
            Self::PeerJoined { uid } => ServerWire::PeerJoined { uid: uid.clone() },
            Self::PeerLeft { uid, reason } => ServerWire::PeerLeft {
                uid: uid.clone(),
                reason: *reason,
            },
            Self::Signal { from, payload } => {
                let (description, candidate) = payload_to_wire(payload);
                ServerWire::Signal {
                    from: from.clone(),
                    description,
                    candidate,
                }
            }
            Self::Error { code, message } => ServerWire::Error {
                code: code.clone(),
                message: message.clone(),
            },
            Self::Kicked { reason } => ServerWire::Kicked {
                reason: reason.clone(),
            },
            Self::TokenExpiring => ServerWire::TokenExpiring,
        };
        to_string(&wire)
    }

    /// An `error` message.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::Error {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

fn to_string<T: Serialize>(v: &T) -> String {
    // Serializing these plain structs (strings, vectors, no maps with non-string keys)
    // cannot fail; an empty object is a safe fallback that a client rejects loudly.
    serde_json::to_string(v).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn offer() -> SessionDescription {
        SessionDescription {
            kind: SdpType::Offer,
            sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n".into(),
        }
    }

    fn candidate() -> IceCandidate {
        IceCandidate {
            candidate: "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            username_fragment: Some("abcd".into()),
        }
    }

    fn all_client() -> Vec<ClientMessage> {
        vec![
            ClientMessage::Join {
                app_id: "970CA35de60c44645bbae8a215061b33".into(),
                channel: "ch_4aY875LP4o".into(),
                uid: "1234".into(),
                token: "006abc".into(),
            },
            ClientMessage::Signal {
                to: "b".into(),
                payload: SignalPayload::Description(offer()),
            },
            ClientMessage::Signal {
                to: "b".into(),
                payload: SignalPayload::Candidate(Some(candidate())),
            },
            ClientMessage::Signal {
                to: "b".into(),
                payload: SignalPayload::Candidate(None),
            },
            ClientMessage::Leave,
            ClientMessage::Renew {
                token: "006def".into(),
            },
        ]
    }

    fn all_server() -> Vec<ServerMessage> {
        vec![
            ServerMessage::Joined {
                channel: "c".into(),
                uid: "a".into(),
                peers: vec!["b".into(), "c".into()],
                ice_servers: vec![
                    IceServer {
                        urls: vec!["stun:stun.example.org:3478".into()],
                        username: None,
                        credential: None,
                    },
                    IceServer {
                        urls: vec!["turn:turn.example.org:3478?transport=udp".into()],
                        username: Some("1700000000:a".into()),
                        credential: Some("c2VjcmV0".into()),
                    },
                ],
            },
            ServerMessage::PeerJoined { uid: "b".into() },
            ServerMessage::PeerLeft {
                uid: "b".into(),
                reason: LeaveReason::Left,
            },
            ServerMessage::PeerLeft {
                uid: "b".into(),
                reason: LeaveReason::Replaced,
            },
            ServerMessage::Signal {
                from: "a".into(),
                payload: SignalPayload::Description(SessionDescription {
                    kind: SdpType::Answer,
                    sdp: "v=0\r\n".into(),
                }),
            },
            ServerMessage::Signal {
                from: "a".into(),
                payload: SignalPayload::Candidate(None),
            },
            ServerMessage::error(codes::PEER_NOT_FOUND, "no peer x"),
            ServerMessage::Kicked {
                reason: "replaced".into(),
            },
            ServerMessage::TokenExpiring,
        ]
    }

    #[test]
    fn every_client_message_round_trips() {
        for m in all_client() {
            let text = m.to_json();
            assert_eq!(ClientMessage::parse(&text).unwrap(), m, "{text}");
        }
    }

    #[test]
    fn every_server_message_round_trips() {
        for m in all_server() {
            let text = m.to_json();
            assert_eq!(ServerMessage::parse(&text).unwrap(), m, "{text}");
        }
    }

    #[test]
    fn shapes_are_exactly_the_design() {
        let join: Value = serde_json::from_str(&all_client()[0].to_json()).unwrap();
        assert_eq!(
            join,
            json!({"type":"join","appID":"970CA35de60c44645bbae8a215061b33","channel":"ch_4aY875LP4o","uid":"1234","token":"006abc"})
        );
        let end: Value = serde_json::from_str(&all_client()[3].to_json()).unwrap();
        assert_eq!(end, json!({"type":"signal","to":"b","candidate":null}));
        let cand: Value = serde_json::from_str(&all_client()[2].to_json()).unwrap();
        assert_eq!(
            cand,
            json!({"type":"signal","to":"b","candidate":{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}})
        );
        let relayed: Value = serde_json::from_str(&all_server()[4].to_json()).unwrap();
        assert_eq!(
            relayed,
            json!({"type":"signal","from":"a","description":{"type":"answer","sdp":"v=0\r\n"}})
        );
        let joined: Value = serde_json::from_str(&all_server()[0].to_json()).unwrap();
        assert_eq!(
            joined["ice_servers"][0],
            json!({"urls":["stun:stun.example.org:3478"]})
        );
        assert_eq!(joined["ice_servers"][1]["username"], json!("1700000000:a"));
        let left: Value = serde_json::from_str(&all_server()[2].to_json()).unwrap();
        assert_eq!(left, json!({"type":"peer_left","uid":"b","reason":"left"}));
        let renew: Value = serde_json::from_str(&all_client()[5].to_json()).unwrap();
        assert_eq!(renew, json!({"type":"renew","token":"006def"}));
        let expiring: Value = serde_json::from_str(&all_server()[8].to_json()).unwrap();
        assert_eq!(expiring, json!({"type":"token_expiring"}));
        let err: Value = serde_json::from_str(&all_server()[6].to_json()).unwrap();
        assert_eq!(
            err,
            json!({"type":"error","code":"peer_not_found","message":"no peer x"})
        );
    }

    #[test]
    fn browser_candidate_json_parses() {
        // What Chromium's RTCIceCandidate.toJSON() produces; sdpMid may be null.
        let m = ClientMessage::parse(
            r#"{"type":"signal","to":"b","candidate":{"candidate":"","sdpMid":null,"sdpMLineIndex":null}}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            ClientMessage::Signal {
                to: "b".into(),
                payload: SignalPayload::Candidate(Some(IceCandidate {
                    candidate: String::new(),
                    sdp_mid: None,
                    sdp_mline_index: None,
                    username_fragment: None,
                }))
            }
        );
    }

    #[test]
    fn bad_frames_are_errors_that_do_not_echo_values() {
        let cases = [
            "",
            "null",
            "[]",
            "{",
            r#"{"type":"dance"}"#,
            r#"{"no_type":1}"#,
            r#"{"type":"join","appID":"a","channel":"c","uid":5,"token":"t"}"#,
            r#"{"type":"join","appID":"a","channel":"c","uid":"u"}"#,
            r#"{"type":"signal","to":"b"}"#,
            r#"{"type":"signal","to":"b","description":{"type":"offer","sdp":"x"},"candidate":null}"#,
            r#"{"type":"signal","to":"b","description":{"type":"rollback","sdp":"secret-sdp"}}"#,
            r#"{"type":"signal","to":"b","candidate":{"candidate":"c","sdpMLineIndex":70000}}"#,
        ];
        for c in cases {
            let e = ClientMessage::parse(c).unwrap_err();
            assert!(!e.message.contains("secret-sdp"), "{}", e.message);
            assert!(!e.message.is_empty());
        }
        for c in [
            r#"{"type":"signal","to":"b","candidate":"secret-sdp"}"#,
            r#"{"type":"signal","to":"b","description":"secret-sdp \" more"}"#,
            r#"{"type":"join","appID":"a","channel":"c","uid":"u","token":{"t":"secret-sdp"}}"#,
            r#"{"type":"signal","to":"b","candidate":{"candidate":"c","sdpMLineIndex":"secret-sdp"}}"#,
        ] {
            let e = ClientMessage::parse(c).unwrap_err();
            assert!(!e.message.contains("secret-sdp"), "{}", e.message);
            assert!(!e.message.contains(" at line "), "{}", e.message);
        }
        let e = ClientMessage::parse(r#"{"type":"join","appID":"a","channel":"c","uid":"u"}"#)
            .unwrap_err();
        assert!(e.message.contains("token"), "{}", e.message);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let m = ClientMessage::parse(r#"{"type":"leave","extra":{"x":[1,2]}}"#).unwrap();
        assert_eq!(m, ClientMessage::Leave);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!(
            r#"{{"type":"leave","x":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(ClientMessage::parse(&deep).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,400}") {
            let _ = ClientMessage::parse(&s);
            let _ = ServerMessage::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_json_like_input(
            ty in proptest::sample::select(vec!["join", "signal", "leave", "joined", "x"]),
            body in "[\\[\\]{}\":,a-z0-9 ]{0,200}",
        ) {
            let s = format!(r#"{{"type":"{ty}",{body}"#);
            let _ = ClientMessage::parse(&s);
            let _ = ServerMessage::parse(&s);
        }

        #[test]
        fn signal_round_trips(to in "[ -~]{1,40}", sdp in "\\PC{0,200}", mid in proptest::option::of("[a-z0-9]{1,4}"), idx in proptest::option::of(0u16..8)) {
            let m = ClientMessage::Signal {
                to: to.clone(),
                payload: SignalPayload::Description(SessionDescription { kind: SdpType::Answer, sdp: sdp.clone() }),
            };
            proptest::prop_assert_eq!(ClientMessage::parse(&m.to_json()).unwrap(), m);
            let c = ServerMessage::Signal {
                from: to,
                payload: SignalPayload::Candidate(Some(IceCandidate { candidate: sdp, sdp_mid: mid, sdp_mline_index: idx, username_fragment: None })),
            };
            proptest::prop_assert_eq!(ServerMessage::parse(&c.to_json()).unwrap(), c);
        }
    }
}
