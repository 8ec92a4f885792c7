//! The media transport: how the robot's Opus frames reach each listener.
//!
//! ```text
//!   RobotSession ──► RtcTransport::listener(peer uid) ──► Listener (one per peer)
//!        │                                                 ├─ offer() / answer(sdp) / set_answer(sdp)
//!        │                                                 ├─ add_candidate(c)
//!        └──── same encoded frame every 20 ms ───────────► └─ send_frame(bytes)
//!                                              events: Connected / Closed ──► session
//!        ◄──── InboundAudio {peer, rtp seq, timestamp, Opus payload} ◄── the peer's track
//! ```
//!
//! The connections are `sendrecv` (DESIGN.md decision 12): each listener's audio comes back
//! as [`InboundAudio`], one RTP packet each, its Opus payload passed as received (no
//! decode), tagged with the sender's uid.
//!
//! This is the only module that imports the `webrtc` and `rtc` crates (DESIGN.md decision
//! 7; STYLE.md 3). The rest of the agent sees [`RtcTransport`], [`Listener`] and the small
//! owned types here. Two implementations, chosen by `ROBOT_RTC_DRIVER`: [`MuxTransport`]
//! (opt-in, `mux`) carries every listener on one UDP socket with a driver of our own over
//! the sans-IO `rtc` core (see `mux.rs`; host candidates only). [`WebrtcTransport`]
//! (the default) implements them with webrtc =0.21.1: one
//! PeerConnection and one local track per listener (a local track binds to one
//! connection in that line), mDNS disabled, an explicit bind address, the payload type read
//! after negotiation, complete SDP out (candidates inside, no trickle needed) and both
//! complete SDP and trickled candidates in.

mod demux;
mod mux;
pub mod probe;
mod webrtc_impl;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use protocol::signaling::{IceCandidate, IceServer};
use tokio::sync::mpsc;

pub use mux::MuxTransport;
pub use webrtc_impl::WebrtcTransport;

/// What happened to a listener's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerState {
    /// ICE and DTLS are up: frames sent now are heard.
    Connected,
    /// Disconnected, failed or closed: the listener is gone (close it).
    Closed,
}

/// A state change of the connection to `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerEvent {
    /// The listener's uid.
    pub peer: String,
    /// Which listener of that uid (a uid that rejoins gets a new one).
    pub generation: u64,
    /// Its new state.
    pub state: ListenerState,
}

/// One RTP packet of a listener's audio, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundAudio {
    /// The sender's uid.
    pub peer: Arc<str>,
    /// Which listener of that uid.
    pub generation: u64,
    /// RTP sequence number.
    pub sequence: u16,
    /// RTP timestamp (48 kHz for Opus).
    pub timestamp: u32,
    /// The Opus packet.
    pub payload: Bytes,
}

/// Where a listener reports: its state changes and the audio it sends.
#[derive(Debug, Clone)]
pub struct ListenerSinks {
    /// Connected / Closed.
    pub events: mpsc::UnboundedSender<ListenerEvent>,
    /// Its audio.
    pub audio: mpsc::UnboundedSender<InboundAudio>,
}

/// Transport errors: what failed, in words that never carry SDP or candidates.
#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    /// Building the connection failed (bind, configuration).
    #[error("cannot create the connection: {0}")]
    Setup(String),
    /// The remote description or candidate was refused.
    #[error("negotiation failed: {0}")]
    Negotiation(String),
    /// Sending failed (the connection is closing).
    #[error("send failed: {0}")]
    Send(String),
}

/// Creates listeners. One per process, shared by every session.
#[async_trait]
pub trait RtcTransport: Send + Sync + 'static {
    /// A new connection to `peer` (not negotiated yet), sending and receiving audio; its
    /// state changes and its audio go to `sinks`.
    async fn listener(
        &self,
        peer: &str,
        generation: u64,
        ice_servers: &[IceServer],
        sinks: ListenerSinks,
    ) -> Result<Arc<dyn Listener>, RtcError>;
}

/// One listener's connection: negotiation in, Opus frames out.
#[async_trait]
pub trait Listener: Send + Sync + 'static {
    /// Creates an offer and returns its SDP once candidates are gathered. The candidates
    /// may be held back from it: [`Listener::set_answer`] then returns them, to be
    /// trickled once the answer is set (see `WebrtcListener::offer` for why).
    async fn offer(&self) -> Result<String, RtcError>;
    /// Takes a remote offer (first or renegotiation) and returns the complete answer SDP.
    async fn answer(&self, offer_sdp: String) -> Result<String, RtcError>;
    /// Takes the remote answer to our offer; returns the candidates held back from the
    /// offer, to be sent as trickled candidates (then end-of-candidates) now.
    async fn set_answer(&self, answer_sdp: String) -> Result<Vec<IceCandidate>, RtcError>;
    /// Adds a trickled remote candidate (kept until the remote description is set).
    async fn add_candidate(&self, candidate: IceCandidate) -> Result<(), RtcError>;
    /// Sends one 20 ms Opus frame; `skipped` frames before it were not sent (the RTP
    /// timestamp and sequence advance past them). A no-op until negotiation finished.
    async fn send_frame(&self, frame: Bytes, skipped: u16) -> Result<(), RtcError>;
    /// Closes the connection.
    async fn close(&self);
}
