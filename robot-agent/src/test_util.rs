//! Test doubles for whole-session tests (feature `test-util`): a fake [`RtcTransport`]
//! whose listeners record the frames sent and let the test drive their connection, a fake
//! `/rtc` ([`FakeSignaling`]) where the test plays the API's side of each joined socket,
//! and in-memory audio ([`TestAudio`], [`TestFrames`]).
//!
//! ```text
//!   session driver ──join──► FakeSignaling ──(script: accept peers / refuse / unreachable)
//!        │  ▲                     └─► FakeChannel (the test): send(ServerMessage), next() -> ClientMessage
//!        │  └── ListenerEvent ◄── FakeListener::connect() / drop_connection()   (the test)
//!        └──► FakeTransport::listener ─► FakeListener: offer/answer SDP made up, frames recorded
//! ```
//!
//! Nothing here sleeps or reads a clock: tests run under tokio's paused time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use protocol::signaling::{ClientMessage, IceCandidate, IceServer, ServerMessage};
use tokio::sync::{Notify, mpsc};

use crate::error::AgentError;
use crate::rtc::{
    InboundAudio, Listener, ListenerEvent, ListenerSinks, ListenerState, RtcError, RtcTransport,
};
use crate::session::{AudioLibrary, FrameRead, FrameSource, RecordingSink};
use crate::signaling::{ChannelLink, JoinError, Joined, Signaling, SocketClosed};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A fake media transport: every listener it makes is kept for the test to inspect.
#[derive(Debug, Default)]
pub struct FakeTransport {
    made: Mutex<Vec<Arc<FakeListener>>>,
    refuse: Mutex<Vec<String>>,
    changed: Notify,
}

impl FakeTransport {
    /// A transport with no listeners yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Every listener made so far, oldest first.
    pub fn listeners(&self) -> Vec<Arc<FakeListener>> {
        lock(&self.made).clone()
    }

    /// The newest listener of `peer`, waiting until there is one of at least `generation`.
    pub async fn listener_for(&self, peer: &str, min_generation: u64) -> Arc<FakeListener> {
        loop {
            let notified = self.changed.notified();
            if let Some(l) = lock(&self.made)
                .iter()
                .rev()
                .find(|l| l.peer == peer && l.generation >= min_generation)
            {
                return Arc::clone(l);
            }
            notified.await;
        }
    }

    /// Creating a listener for `peer` fails from now on.
    pub fn refuse(&self, peer: &str) {
        lock(&self.refuse).push(peer.to_owned());
    }
}

#[async_trait]
impl RtcTransport for FakeTransport {
    async fn listener(
        &self,
        peer: &str,
        generation: u64,
        _ice_servers: &[IceServer],
        sinks: ListenerSinks,
    ) -> Result<Arc<dyn Listener>, RtcError> {
        if lock(&self.refuse).iter().any(|p| p == peer) {
            return Err(RtcError::Setup(format!("refused by the test for {peer}")));
        }
        let l = Arc::new(FakeListener {
            peer: peer.to_owned(),
            generation,
            events: sinks.events,
            audio: sinks.audio,
            state: Mutex::new(ListenerLog::default()),
            closed: AtomicBool::new(false),
            changed: Notify::new(),
        });
        lock(&self.made).push(Arc::clone(&l));
        self.changed.notify_waiters();
        Ok(l)
    }
}

/// What a fake listener was asked to do.
#[derive(Debug, Default, Clone)]
pub struct ListenerLog {
    /// Offers it made.
    pub offers: usize,
    /// Remote offers it answered.
    pub answered: Vec<String>,
    /// Remote answers it took.
    pub answers: Vec<String>,
    /// Candidates it took.
    pub candidates: usize,
    /// Frames sent, with the `skipped` count of each.
    pub frames: Vec<(Bytes, u16)>,
}

/// A fake connection to one listener.
#[derive(Debug)]
pub struct FakeListener {
    peer: String,
    generation: u64,
    events: mpsc::UnboundedSender<ListenerEvent>,
    audio: mpsc::UnboundedSender<InboundAudio>,
    state: Mutex<ListenerLog>,
    closed: AtomicBool,
    changed: Notify,
}

impl FakeListener {
    /// The listener's uid.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Which listener of that uid.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Its media is up: tells the session `Connected`.
    pub fn connect(&self) {
        self.event(ListenerState::Connected);
    }

    /// The peer speaks: one RTP packet of its audio reaches the session.
    pub fn send_audio(&self, sequence: u16, timestamp: u32, payload: Bytes) {
        let _ = self.audio.send(InboundAudio {
            peer: Arc::from(self.peer.as_str()),
            generation: self.generation,
            sequence,
            timestamp,
            payload,
        });
    }

    /// Its connection failed: tells the session `Closed`.
    pub fn drop_connection(&self) {
        self.event(ListenerState::Closed);
    }

    fn event(&self, state: ListenerState) {
        let _ = self.events.send(ListenerEvent {
            peer: self.peer.clone(),
            generation: self.generation,
            state,
        });
    }

    /// What it was asked to do so far.
    pub fn log(&self) -> ListenerLog {
        lock(&self.state).clone()
    }

    /// The frames sent so far.
    pub fn frames(&self) -> Vec<Bytes> {
        lock(&self.state)
            .frames
            .iter()
            .map(|(f, _)| f.clone())
            .collect()
    }

    /// The session closed it.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Waits until `n` frames were sent to it.
    pub async fn wait_frames(&self, n: usize) {
        loop {
            let notified = self.changed.notified();
            if lock(&self.state).frames.len() >= n {
                return;
            }
            notified.await;
        }
    }

    /// Waits until the session closed it.
    pub async fn wait_closed(&self) {
        loop {
            let notified = self.changed.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    fn touch(&self, f: impl FnOnce(&mut ListenerLog)) {
        f(&mut lock(&self.state));
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl Listener for FakeListener {
    async fn offer(&self) -> Result<String, RtcError> {
        self.touch(|l| l.offers += 1);
        Ok(format!("fake offer to {} #{}", self.peer, self.generation))
    }

    async fn answer(&self, offer_sdp: String) -> Result<String, RtcError> {
        if offer_sdp.contains("unacceptable") {
            return Err(RtcError::Negotiation(
                "the test's offer is unacceptable".into(),
            ));
        }
        self.touch(|l| l.answered.push(offer_sdp));
        Ok(format!("fake answer to {} #{}", self.peer, self.generation))
    }

    async fn set_answer(&self, answer_sdp: String) -> Result<Vec<IceCandidate>, RtcError> {
        self.touch(|l| l.answers.push(answer_sdp));
        Ok(Vec::new())
    }

    async fn add_candidate(&self, _candidate: IceCandidate) -> Result<(), RtcError> {
        self.touch(|l| l.candidates += 1);
        Ok(())
    }

    async fn send_frame(&self, frame: Bytes, skipped: u16) -> Result<(), RtcError> {
        if self.is_closed() {
            return Err(RtcError::Send("closed".into()));
        }
        self.touch(|l| l.frames.push((frame, skipped)));
        Ok(())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

/// How the fake `/rtc` answers the next join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinScript {
    /// `joined` with these peers already in the channel.
    Accept(Vec<String>),
    /// An `error` refusing the join (`channel_full`, `token_expired`...).
    Refuse {
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// The socket cannot be opened (the API is down).
    Unreachable,
}

/// A fake `/rtc`: each join takes the next [`JoinScript`] (none left: unreachable), and
/// each accepted join hands the test a [`FakeChannel`] to play the API's side.
#[derive(Debug)]
pub struct FakeSignaling {
    scripts: Mutex<VecDeque<JoinScript>>,
    attempts: Mutex<Vec<tokio::time::Instant>>,
    channels: mpsc::UnboundedSender<FakeChannel>,
}

impl FakeSignaling {
    /// A fake `/rtc`, and where the joined sockets arrive.
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<FakeChannel>) {
        let (channels, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                scripts: Mutex::new(VecDeque::new()),
                attempts: Mutex::new(Vec::new()),
                channels,
            }),
            rx,
        )
    }

    /// Answers a coming join so.
    pub fn script(&self, s: JoinScript) {
        lock(&self.scripts).push_back(s);
    }

    /// When each join was attempted (tokio's clock).
    pub fn attempts(&self) -> Vec<tokio::time::Instant> {
        lock(&self.attempts).clone()
    }
}

#[async_trait]
impl Signaling for FakeSignaling {
    async fn join(
        &self,
        _app_id: &str,
        channel: &str,
        uid: &str,
        _token: &str,
    ) -> Result<(Box<dyn ChannelLink>, Joined), JoinError> {
        lock(&self.attempts).push(tokio::time::Instant::now());
        let script = lock(&self.scripts).pop_front();
        match script.unwrap_or(JoinScript::Unreachable) {
            JoinScript::Accept(peers) => {
                let (to_robot, from_api) = mpsc::unbounded_channel();
                let (to_api, from_robot) = mpsc::unbounded_channel();
                let _ = self.channels.send(FakeChannel {
                    channel: channel.to_owned(),
                    uid: uid.to_owned(),
                    to_robot: Some(to_robot),
                    from_robot,
                });
                let socket = FakeSocket { from_api, to_api };
                Ok((
                    Box::new(socket),
                    Joined {
                        peers,
                        ice_servers: Vec::new(),
                    },
                ))
            }
            JoinScript::Refuse { code, message } => Err(JoinError::Refused { code, message }),
            JoinScript::Unreachable => Err(JoinError::Unreachable(
                "the fake /rtc is down (no join scripted)".into(),
            )),
        }
    }
}

/// The robot's end of a fake socket.
struct FakeSocket {
    from_api: mpsc::UnboundedReceiver<ServerMessage>,
    to_api: mpsc::UnboundedSender<ClientMessage>,
}

#[async_trait]
impl ChannelLink for FakeSocket {
    async fn send(&mut self, msg: &ClientMessage) -> Result<(), SocketClosed> {
        self.to_api.send(msg.clone()).map_err(|_| SocketClosed)
    }

    async fn next(&mut self) -> Option<ServerMessage> {
        self.from_api.recv().await
    }

    async fn leave(self: Box<Self>) {
        let _ = self.to_api.send(ClientMessage::Leave);
    }
}

/// The API's end of one joined fake socket, held by the test.
#[derive(Debug)]
pub struct FakeChannel {
    /// The channel joined.
    pub channel: String,
    /// The uid that joined.
    pub uid: String,
    to_robot: Option<mpsc::UnboundedSender<ServerMessage>>,
    from_robot: mpsc::UnboundedReceiver<ClientMessage>,
}

impl FakeChannel {
    /// Sends a server message to the robot.
    pub fn send(&self, m: ServerMessage) {
        if let Some(t) = &self.to_robot {
            let _ = t.send(m);
        }
    }

    /// The next message the robot sent; `None` once it closed its end.
    pub async fn next(&mut self) -> Option<ClientMessage> {
        self.from_robot.recv().await
    }

    /// Closes the socket from the API's side (an API restart): the robot sees it lost.
    pub fn close(&mut self) {
        self.to_robot = None;
    }
}

/// In-memory frames of one item: `Ready` for the frames it holds, then `End`; optionally
/// `Pending` from a given index until more are pushed, or `Failed` at one.
#[derive(Debug, Default)]
pub struct TestFrames {
    inner: Mutex<TestFramesInner>,
}

#[derive(Debug, Default)]
struct TestFramesInner {
    frames: Vec<Bytes>,
    /// More frames may come: reads past the end are `Pending`.
    open: bool,
    /// Reads at or past this index fail.
    fail_at: Option<(u64, String)>,
}

impl TestFrames {
    /// `n` frames, each holding its index (4 bytes, big endian) after `tag`.
    pub fn numbered(tag: u8, n: u32) -> Arc<Self> {
        let frames = (0..n).map(|i| Self::frame(tag, i)).collect();
        Arc::new(Self {
            inner: Mutex::new(TestFramesInner {
                frames,
                open: false,
                fail_at: None,
            }),
        })
    }

    /// The frame `numbered(tag, ..)` holds at `i`.
    pub fn frame(tag: u8, i: u32) -> Bytes {
        let mut b = vec![tag];
        b.extend_from_slice(&i.to_be_bytes());
        Bytes::from(b)
    }

    /// Reads past the frames held are `Pending` (a stream still encoding) until
    /// [`TestFrames::finish`].
    pub fn keep_open(&self) {
        lock(&self.inner).open = true;
    }

    /// Appends frames (continuing the numbering of `tag`).
    pub fn push(&self, tag: u8, n: u32) {
        let mut g = lock(&self.inner);
        let start = u32::try_from(g.frames.len()).unwrap_or(u32::MAX);
        for i in start..start.saturating_add(n) {
            g.frames.push(Self::frame(tag, i));
        }
    }

    /// No more frames will come: reads past the end are `End`.
    pub fn finish(&self) {
        lock(&self.inner).open = false;
    }

    /// Reads at or past `index` fail with `error`.
    pub fn fail_at(&self, index: u64, error: &str) {
        lock(&self.inner).fail_at = Some((index, error.to_owned()));
    }
}

impl FrameSource for TestFrames {
    fn read(&self, index: u64) -> FrameRead {
        let g = lock(&self.inner);
        if let Some((at, e)) = &g.fail_at
            && index >= *at
        {
            return FrameRead::Failed(e.clone());
        }
        match usize::try_from(index).ok().and_then(|i| g.frames.get(i)) {
            Some(f) => FrameRead::Ready(f.clone()),
            None if g.open => FrameRead::Pending,
            None => FrameRead::End,
        }
    }
}

/// In-memory audio by name; an unknown name is `NotFound`.
#[derive(Default)]
pub struct TestAudio {
    items: Mutex<HashMap<String, Arc<dyn FrameSource>>>,
}

impl std::fmt::Debug for TestAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestAudio").finish_non_exhaustive()
    }
}

impl TestAudio {
    /// An empty library.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds (or replaces) asset `name`.
    pub fn add(&self, name: &str, item: Arc<dyn FrameSource>) {
        lock(&self.items).insert(name.to_owned(), item);
    }
}

#[async_trait]
impl AudioLibrary for TestAudio {
    async fn item(&self, name: &str) -> Result<Arc<dyn FrameSource>, AgentError> {
        lock(&self.items).get(name).cloned().ok_or_else(|| {
            AgentError::AudioUnavailable(crate::assets::AssetError::NotFound(name.to_owned()))
        })
    }
}

/// One upload a session made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Session id.
    pub session_id: i64,
    /// Whose recording.
    pub uid: String,
    /// Which part.
    pub part: u32,
    /// The complete file (with its end-of-stream page).
    pub last: bool,
    /// The file.
    pub body: Vec<u8>,
}

/// Recording uploads kept in memory.
#[derive(Debug, Default)]
pub struct TestRecordings {
    uploads: Mutex<Vec<Upload>>,
    changed: Notify,
}

impl TestRecordings {
    /// No uploads yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Every upload so far, in order.
    pub fn uploads(&self) -> Vec<Upload> {
        lock(&self.uploads).clone()
    }

    /// Waits until `n` uploads were made.
    pub async fn wait_uploads(&self, n: usize) {
        loop {
            let notified = self.changed.notified();
            if lock(&self.uploads).len() >= n {
                return;
            }
            notified.await;
        }
    }
}

#[async_trait]
impl RecordingSink for TestRecordings {
    async fn upload(
        &self,
        session_id: i64,
        uid: &str,
        part: u32,
        last: bool,
        body: Vec<u8>,
    ) -> Result<(), AgentError> {
        lock(&self.uploads).push(Upload {
            session_id,
            uid: uid.to_owned(),
            part,
            last,
            body,
        });
        self.changed.notify_waiters();
        Ok(())
    }
}

/// `n` 20 ms Opus packets (48 kHz, mono) of a 440 Hz tone, frame `k` continuing frame
/// `k - 1`: real encoded speech-like audio for the bridge's decoders.
pub fn tone_packets(n: usize) -> Result<Vec<Bytes>, audio::AudioError> {
    let mut enc = audio::PcmEncoder::new(48_000, 32_000)?;
    (0..n)
        .map(|k| {
            let pcm: Vec<i16> = (0..960)
                .map(|i| {
                    let t = (k * 960 + i) as f32 / 48_000.0;
                    (8000.0 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()) as i16
                })
                .collect();
            enc.encode(&pcm)
        })
        .collect()
}
