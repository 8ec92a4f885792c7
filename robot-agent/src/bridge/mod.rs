//! The media bridge: an operator's program hears the call and speaks through the robot
//! (DESIGN.md, "Media bridge"; docs/bridge.md for program authors).
//!
//! ```text
//!   listeners' Opus ─► session core ─► ToProgram::Audio ─┐
//!                        ▲    │                          ▼
//!                        │    │ ToProgram::{Dial, Send, Stop}   socket task (one per session):
//!                        │    └──────────────────────────────►  dial (Bearer secret), start,
//!                        │                                       media (pcm16: libopus at R;
//!   FromProgram ─────────┘                                       opus: packets as received)
//!   {Connected, DialFailed, Closed, Command, Hangup, Bad}  ◄──── program's text frames parsed,
//!        │                                                       checked, pcm16 encoded to Opus
//!        ▼ the core: Output::Program(ProgramCommand)
//!   playback queue (media clock): Speak frames · Mark · Clear · Play asset
//!        └─► QueueEvent::BridgeMark (played: written to every listener) / BridgeCleared
//!            ─► AgentEvent::{Mark, Cleared} ─► the program
//! ```
//!
//! Three parts: [`message`] (the wire, sans-IO: events out, program messages parsed and
//! checked), [`link`] (when to dial, redial and give up, sans-IO on made-up instants) and
//! [`socket`] (the IO task: the WebSocket, the codec, the per-participant sequence and
//! timestamps). The rules that involve the rest of the session (what to forward when,
//! participants, marks, hangup, leaving on `bridge_lost`) live in the session core, which
//! takes [`FromProgram`] as an input and puts out [`ToProgram`] and [`ProgramCommand`].

pub mod link;
pub mod message;
pub mod socket;
pub mod tls;

use bytes::Bytes;

pub use link::{BridgeLink, LinkAction, RESUME_WINDOW};
pub use message::{AgentEvent, CallParties, Format, ProgramMessage, StopReason};
pub use tls::BridgeTls;

/// What went wrong on a bridge, named for what happens next.
///
/// | variant | meaning | what happens |
/// |---|---|---|
/// | [`Unreachable`](BridgeError::Unreachable) | the program could not be dialled (refused, timed out, the socket failed) | redial with backoff for up to 10 s, then the robot leaves (`bridge_lost`) |
/// | [`Refused`](BridgeError::Refused) | the program answered the upgrade with an HTTP error (401: wrong secret) | the robot leaves at once (`bridge_lost`); fix `DAPI_BRIDGES` |
/// | [`Config`](BridgeError::Config) | the target cannot be used (a bad URL or rate, a secret that is not a header) | the robot leaves at once |
/// | [`Untrusted`](BridgeError::Untrusted) | a `wss://` program's certificate is not trusted (or is not for its host) | the robot leaves at once (`bridge_lost`); trust its CA with `ROBOT_BRIDGE_CA_FILE` |
/// | the others | one program message was wrong | logged and counted; the message is dropped, the call goes on |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    /// Dialling failed or the connection broke.
    #[error("cannot reach the bridge program: {0}")]
    Unreachable(String),
    /// The program refused the upgrade.
    #[error(
        "the bridge program refused the connection: HTTP {status} (check the secret in DAPI_BRIDGES)"
    )]
    Refused {
        /// The HTTP status.
        status: u16,
    },
    /// The target cannot be used.
    #[error("the bridge target cannot be used: {0}")]
    Config(String),
    /// The program's TLS certificate was refused.
    #[error(
        "the bridge program's TLS certificate is not trusted: {0} (trust its CA with ROBOT_BRIDGE_CA_FILE)"
    )]
    Untrusted(String),
    /// A message over the size limit.
    #[error("a program message of {bytes} bytes is over the limit of {limit}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Not JSON.
    #[error("a program message is not JSON: {0}")]
    BadJson(String),
    /// A binary frame (the protocol is JSON text).
    #[error("a program message is a binary frame; the bridge takes JSON text frames")]
    Binary,
    /// An event the protocol does not have.
    #[error("unknown program event {0:?}")]
    UnknownEvent(String),
    /// A field missing or wrong.
    #[error("program message field {field:?}: {why}")]
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// `media.payload` is not base64.
    #[error("media payload is not valid base64: {0}")]
    BadBase64(String),
    /// pcm16 `media` that is not a whole number of 20 ms frames.
    #[error(
        "media payload of {bytes} bytes is not a whole number of 20 ms frames ({frame_bytes} bytes each)"
    )]
    NotWholeFrames {
        /// Its size.
        bytes: usize,
        /// One frame's.
        frame_bytes: usize,
    },
    /// opus `media` that is not one 20 ms Opus packet.
    #[error("media payload is not one 20 ms Opus packet: {0}")]
    BadOpus(String),
    /// The `play` asset could not be had.
    #[error("play: {0}")]
    Play(String),
}

impl BridgeError {
    /// One program message was wrong (the call goes on).
    pub fn is_message_error(&self) -> bool {
        !matches!(
            self,
            Self::Unreachable(_) | Self::Refused { .. } | Self::Config(_) | Self::Untrusted(_)
        )
    }
}

/// What the session does with a program's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramCommand {
    /// Append these 20 ms Opus frames to the playback queue.
    Speak(Vec<Bytes>),
    /// Queue a mark; report it played once the audio before it was written.
    Mark(String),
    /// Drop everything queued; answer `cleared`.
    Clear,
    /// Queue a prepared asset.
    Play(String),
}

/// What the socket task reports to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromProgram {
    /// The dial succeeded (the session answers with `start`).
    Connected,
    /// The dial failed.
    DialFailed(BridgeError),
    /// The connection closed or failed.
    Closed(String),
    /// A program message for the queue.
    Command(ProgramCommand),
    /// `hangup`.
    Hangup,
    /// A program message was wrong (already logged); nothing else happens.
    Bad(BridgeError),
}

/// What the session tells the socket task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToProgram {
    /// Dial the program; answer [`FromProgram::Connected`] or [`FromProgram::DialFailed`].
    Dial,
    /// Send `start` (first on a connection: media and events wait for it).
    Start {
        /// A redial after a drop.
        resume: bool,
    },
    /// Send an event.
    Send(AgentEvent),
    /// One RTP packet of a participant, to send as `media`.
    Audio {
        /// The participant.
        peer: std::sync::Arc<str>,
        /// Its RTP timestamp (48 kHz).
        timestamp: u32,
        /// The Opus packet.
        payload: Bytes,
    },
    /// Send `stop` and close.
    Stop(StopReason),
}
