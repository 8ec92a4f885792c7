//! One robot session: get the audio, join the channel, play to every listener, leave.
//!
//! ```text
//!  offer ─► status joining ─┬─ audio: fetch (ETag) + prepare once ───┐
//!                           └─ /rtc join ─ offer to each peer in `joined`;
//!                              answer each newcomer's offer (one Listener per peer)
//!                                                                    │ joined, audio ready and
//!                                                                    ▼ a listener connected
//!   status playing ─► pacer: frame n at start + n × 20 ms ─► every connected listener
//!          │ position_ms every 2 s
//!          ▼
//!   leave: told to (quit/robot) · kicked · nobody there for the grace period ·
//!          audio over (unless loop) + a short tail · handed back (drain) ·
//!          the /rtc socket lost and not rejoined within `rejoin_for`
//! ```
//!
//! Three parts:
//!
//! - [`core`]: the rules, sans-IO ([`SessionCore`]): inputs (peer joined/left, signal,
//!   listener connected/closed, socket lost, joined, audio ready, playback ended, control,
//!   timer) each with `now`, outputs polled out (create/close listener, start/stop
//!   playback, status, join, end with a typed [`Outcome`]), and `poll_timeout()`. Every
//!   leave rule, the rejoin backoff and the status timer are unit tested on made-up
//!   instants.
//! - [`playlist`]: the audio as one stream of frames ([`Playlist`] over [`FrameSource`]
//!   items), also sans-IO: a frame not encoded yet is `Pending` (nothing is sent, the
//!   position stays, the pacer re-anchors), an item's `End` moves to the next one, a
//!   failure ends the session.
//! - [`driver`]: the IO ([`run`]): the `/rtc` socket ([`Signaling`]), the listeners'
//!   negotiation tasks ([`RtcTransport`]), the playback task on the media clock and the
//!   timer. It feeds the core and executes what comes out; it holds no rule of its own.
//!
//! **The API restarts.** Media flows peer to peer, so losing the `/rtc` socket (an API
//! restart, a load balancer dropping it) does not stop the audio: the playback and every
//! connected listener stay, and the session joins again with the same token, retrying with
//! backoff (250 ms doubling to 2 s) for up to `rejoin_for` (30 s by default). Signals made
//! meanwhile are dropped (every negotiation starts over once back). Once back, the robot is
//! the newcomer again: it offers to every peer listed in `joined` (they dropped their old
//! connection on its `peer_joined`), and a peer that rejoins later offers to it. A listener
//! whose connection is still up counts as present even before it rejoins, so the robot does
//! not leave a channel whose listeners merely lost the signaling. The session is neither
//! ended nor re-dispatched.
//!
//! **A media bridge** (`bridge` in the offer): the session dials the operator's program
//! (`crate::bridge`), streams what it hears to it and plays what it says through the
//! queue; the core holds the dial/redial rules, the driver the socket task. See
//! docs/bridge.md.
//!
//! The frames go out from a playback task on the media clock ([`media_clock`], a thread of
//! its own): it sleeps until the pacer's next deadline and writes the frame to every
//! connected listener (a `watch` of the connected set), so nothing else the agent does can
//! delay a frame.
//!
//! [`RtcTransport`]: crate::rtc::RtcTransport
//! [`Signaling`]: crate::signaling::Signaling

pub mod beep;
pub mod core;
pub mod driver;
pub mod playlist;
pub mod queue;
pub mod recorder;
pub mod voicemail;

use std::sync::Arc;

use async_trait::async_trait;
use protocol::agent::{AgentMessage, ControlAction, SessionState};

pub use self::core::{
    Ending, Input, LeftReason, Outcome, Output, Plan, Role, SessionConfig, SessionCore,
};
pub use self::driver::run;
pub use self::playlist::{FrameRead, FrameSource, Playlist, Step};
pub use self::queue::{Command, Next, PlaybackQueue, QueueEvent, QueueItem};
pub use self::recorder::{Recorder, RecordingSink};
pub use self::voicemail::{RecordAction, RecordPlan, Voicemail};
use crate::assets::AssetLibrary;
use crate::error::AgentError;
use crate::metrics::Metrics;
use crate::rtc::RtcTransport;
use crate::signaling::Signaling;

/// Where a session's audio comes from: a playlist item by asset name.
#[async_trait]
pub trait AudioLibrary: Send + Sync + 'static {
    /// The frames of asset `name`, once it can be read.
    async fn item(&self, name: &str) -> Result<Arc<dyn FrameSource>, AgentError>;
}

#[async_trait]
impl AudioLibrary for AssetLibrary {
    async fn item(&self, name: &str) -> Result<Arc<dyn FrameSource>, AgentError> {
        let item: Arc<dyn FrameSource> = self.get(name).await?;
        Ok(item)
    }
}

/// What a session shares with the rest of the process.
pub struct SessionContext {
    /// Timings.
    pub config: SessionConfig,
    /// The `/rtc` joins.
    pub signaling: Arc<dyn Signaling>,
    /// Audio assets.
    pub audio: Arc<dyn AudioLibrary>,
    /// Media transport.
    pub transport: Arc<dyn RtcTransport>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The runtime that paces frames (a thread of its own: see [`media_clock`]).
    pub media_clock: tokio::runtime::Handle,
    /// Where recordings are uploaded.
    pub recordings: Arc<dyn RecordingSink>,
    /// Where recordings are written while they grow.
    pub recording_dir: std::path::PathBuf,
    /// Trust for `wss://` bridge programs.
    pub bridge_tls: crate::bridge::BridgeTls,
}

/// Starts the media clock: a single-threaded runtime on a thread of its own, where every
/// session's frames are paced and handed to the listeners' tracks.
pub fn media_clock() -> std::io::Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("robot-media-clock".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// Commands from the agent link.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// `leave {session_id}`: leave the channel now.
    Leave,
    /// Drain deadline passed: leave and hand the session back to the API for re-dispatch.
    HandBack,
    /// `control {session_id, seq, action}`: change the playback queue and answer
    /// `control_ack` with the same `seq` ([`SessionUpdate::ControlAck`]).
    Playback {
        /// The API's sequence number.
        seq: u64,
        /// What to do.
        action: ControlAction,
    },
}

/// What a session tells the agent link.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionUpdate {
    /// A `status` to send.
    Status {
        /// Session id.
        session_id: i64,
        /// New state.
        state: SessionState,
        /// Reason or detail.
        detail: String,
        /// Playback position, ms.
        position_ms: Option<u64>,
    },
    /// A message for the API as it is: the `control_ack` of a [`Control::Playback`], or a
    /// `mark` played or cleared.
    Send(AgentMessage),
    /// The session task ended (after its final status).
    Ended {
        /// Session id.
        session_id: i64,
    },
}

/// The first frame to play for a resume position.
pub fn start_frame(position_ms: u64) -> u64 {
    position_ms / 20
}
