//! One robot session: get the audio, join the channel, play to every listener, leave.
//!
//! ```text
//!  offer ─► status joining ─┬─ assets: fetch (ETag) + prepare once ─┐
//!                           └─ /rtc join ────────────────────────────┤
//!                                                                    ▼
//!   offer to each peer in `joined`; answer each newcomer's offer (one Listener per peer)
//!                                                                    │ first listener connected
//!                                                                    ▼
//!   status playing ─► pacer: frame n at start + n × 20 ms ─► every connected listener
//!          │ position_ms every 2 s
//!          ▼
//!   leave: told to (quit/robot) · kicked · nobody there for the grace period ·
//!          audio over (unless loop) + a short tail · handed back (drain) ·
//!          the /rtc socket lost and not rejoined within `rejoin_for`
//! ```
//!
//! **The API restarts.** Media flows peer to peer, so losing the `/rtc` socket (an API
//! restart, a load balancer dropping it) does not stop the audio: the playback and every
//! connected listener stay, and the session joins again with the same token, retrying with
//! backoff (250 ms doubling to 2 s) for up to `rejoin_for` (30 s by default). Signals made
//! meanwhile are dropped (every negotiation starts over once back). Once back, the robot is the newcomer again: it offers to
//! every peer listed in `joined` (they dropped their old connection on its `peer_joined`),
//! and a peer that rejoins later offers to it. A listener whose connection is still up
//! counts as present even before it rejoins, so the robot does not leave a channel whose
//! listeners merely lost the signaling. The session is neither ended nor re-dispatched.
//!
//! A session is one task ([`run`]) around one `select!`: the `/rtc` socket, listener state
//! changes, outbound signals, control from the link, the end of the audio and the status
//! timer. Negotiation with each listener runs in a small task of its own (it waits for ICE
//! gathering). The frames themselves go out from a playback task on the media clock
//! ([`media_clock`], a thread of its own): it sleeps until the pacer's next deadline and
//! writes the frame to every connected listener (a `watch` of the connected set), so
//! nothing else the agent does can delay a frame.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use audio::{FrameRead, StreamingAudio};
use protocol::agent::{SessionOffer, SessionState};
use protocol::signaling::{
    ClientMessage, IceServer, SdpType, ServerMessage, SessionDescription, SignalPayload,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::assets::{AssetError, AssetLibrary};
use crate::metrics::{Metrics, Phase};
use crate::pacer::Pacer;
use crate::rtc::{Listener, ListenerEvent, ListenerState, RtcTransport};
use crate::signaling::{ChannelSocket, JoinError, Joined};

/// Timings of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `/rtc` URL.
    pub rtc_url: String,
    /// Leave after this long without a person in the channel.
    pub leave_grace: Duration,
    /// Stay this long after the last frame (the listener's jitter buffer plays it out).
    pub tail: Duration,
    /// Report the playback position this often.
    pub position_every: Duration,
    /// How long to keep trying to join again after the `/rtc` socket is lost.
    pub rejoin_for: Duration,
}

/// What a session shares with the rest of the process.
pub struct SessionContext {
    /// Settings.
    pub config: SessionConfig,
    /// Audio assets.
    pub assets: Arc<AssetLibrary>,
    /// Media transport.
    pub transport: Arc<dyn RtcTransport>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The runtime that paces frames (a thread of its own: see [`media_clock`]).
    pub media_clock: tokio::runtime::Handle,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `leave {session_id}`: leave the channel now.
    Leave,
    /// Drain deadline passed: leave and hand the session back to the API for re-dispatch.
    HandBack,
}

/// What a session tells the agent link.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The session task ended (after its final status).
    Ended {
        /// Session id.
        session_id: i64,
    },
}

/// The assets of a session, played as one stream of frames. Each item may still be
/// encoding (a cold asset plays while it is prepared): an item's length is known once its
/// encode is complete, and a frame not encoded yet reads as [`FrameRead::Pending`].
#[derive(Debug, Clone)]
pub struct Playlist {
    items: Vec<Arc<StreamingAudio>>,
}

impl Playlist {
    /// The items in order.
    pub fn new(items: Vec<Arc<StreamingAudio>>) -> Self {
        Self { items }
    }

    /// Frames in the whole playlist, once every item is completely encoded.
    pub fn total_frames(&self) -> Option<u64> {
        self.items.iter().try_fold(0u64, |t, a| {
            Some(t + u64::try_from(a.total_frames()?).unwrap_or(0))
        })
    }

    /// Frame `n` of the stream (wrapping when `looping`, once the length is known):
    /// `Pending` while the encoder has not reached it (or the length of an earlier item is
    /// not known yet), `End` past the end, `Failed` when an item's encode failed before it.
    pub fn read(&self, n: u64, looping: bool) -> FrameRead {
        let mut n = match self.total_frames() {
            Some(0) => return FrameRead::End,
            Some(t) if looping => n % t,
            _ => n,
        };
        for item in &self.items {
            match item.total_frames() {
                Some(t) if n >= t as u64 => n -= t as u64,
                _ => {
                    return match usize::try_from(n) {
                        Ok(i) => item.read(i),
                        Err(_) => FrameRead::End,
                    };
                }
            }
        }
        FrameRead::End
    }

    /// The position in ms of frame `n`, as reported to the API (wrapped when looping,
    /// capped at the end otherwise, once the length is known).
    pub fn position_ms(&self, n: u64, looping: bool) -> u64 {
        let n = match self.total_frames() {
            Some(t) if looping && t > 0 => n % t,
            Some(t) => n.min(t),
            None => n,
        };
        n * 20
    }
}

/// The first frame to play for a resume position.
pub fn start_frame(position_ms: u64) -> u64 {
    position_ms / 20
}

/// One connection to one listener, as the session sees it.
struct Entry {
    generation: u64,
    link: Arc<dyn Listener>,
    inbox: mpsc::UnboundedSender<SignalIn>,
    connected: bool,
}

/// Work for a listener's negotiation task, in arrival order.
#[derive(Debug)]
enum SignalIn {
    MakeOffer,
    Offer(String),
    Answer(String),
    Candidate(protocol::signaling::IceCandidate),
}

/// A signal to send on the socket.
struct Outbound {
    to: String,
    payload: SignalPayload,
}

/// How a session ended.
#[derive(Debug)]
struct Ending {
    state: SessionState,
    detail: String,
    outcome: &'static str,
}

impl Ending {
    fn left(detail: impl Into<String>) -> Self {
        Self {
            state: SessionState::Left,
            detail: detail.into(),
            outcome: "left",
        }
    }
    fn failed(detail: impl Into<String>) -> Self {
        Self {
            state: SessionState::Failed,
            detail: detail.into(),
            outcome: "failed",
        }
    }
}

/// Runs one session to its end. Sends its statuses and finally `Ended` on `updates`.
pub async fn run(
    ctx: Arc<SessionContext>,
    offer: SessionOffer,
    mut control: mpsc::UnboundedReceiver<Control>,
    updates: mpsc::UnboundedSender<SessionUpdate>,
) {
    let id = offer.id;
    let span = tracing::info_span!("robot_session", session = id, channel = %offer.channel, attempt = offer.attempt);
    let status = |state, detail: &str, position_ms| {
        let _ = updates.send(SessionUpdate::Status {
            session_id: id,
            state,
            detail: detail.to_owned(),
            position_ms,
        });
    };
    ctx.metrics.phase(None, Some(Phase::Joining));
    status(SessionState::Joining, "", None);
    let mut session = Session {
        ctx: Arc::clone(&ctx),
        offer,
        phase: Phase::Joining,
        position_ms: None,
    };
    let ending =
        tracing::Instrument::instrument(session.play(&mut control, &status), span.clone()).await;
    let position = session.position_ms;
    ctx.metrics.phase(Some(session.phase), None);
    let outcome = if ending.detail.starts_with("handed back") {
        "handed_back"
    } else {
        ending.outcome
    };
    ctx.metrics.session_ended(outcome);
    span.in_scope(|| tracing::info!(state = ?ending.state, detail = %ending.detail, position_ms = ?position, "robot session ended"));
    status(ending.state, &ending.detail, position);
    let _ = updates.send(SessionUpdate::Ended { session_id: id });
}

struct Session {
    ctx: Arc<SessionContext>,
    offer: SessionOffer,
    phase: Phase,
    position_ms: Option<u64>,
}

impl Session {
    fn set_phase(&mut self, p: Phase) {
        if self.phase != p {
            self.ctx.metrics.phase(Some(self.phase), Some(p));
            self.phase = p;
        }
    }

    async fn load_playlist(&self) -> Result<Playlist, AssetError> {
        let names: Vec<String> = if self.offer.playlist.is_empty() {
            vec![self.offer.audio.clone()]
        } else {
            self.offer.playlist.clone()
        };
        let mut items = Vec::with_capacity(names.len());
        for n in &names {
            items.push(self.ctx.assets.get(n).await?);
        }
        Ok(Playlist::new(items))
    }

    async fn play(
        &mut self,
        control: &mut mpsc::UnboundedReceiver<Control>,
        status: &(impl Fn(SessionState, &str, Option<u64>) + Sync),
    ) -> Ending {
        let cfg = self.ctx.config.clone();
        // Fetch the audio and join the channel at the same time.
        let join = ChannelSocket::join(
            &cfg.rtc_url,
            &self.offer.app_id,
            &self.offer.channel,
            &self.offer.uid,
            &self.offer.token,
        );
        let (playlist, joined) = tokio::select! {
            r = async { tokio::join!(self.load_playlist(), join) } => r,
            c = control.recv() => {
                return match c {
                    Some(Control::HandBack) => Ending::failed("handed back: agent draining (before joining)"),
                    _ => Ending::left("told to leave"),
                };
            }
        };
        let (socket, joined) = match joined {
            Ok(j) => j,
            Err(e) => return Ending::failed(format!("join: {e}")),
        };
        let playlist = match playlist {
            Ok(p) => p,
            Err(e) => {
                socket.leave().await;
                return Ending::failed(e.to_string());
            }
        };
        tracing::info!(
            peers = joined.peers.len(),
            frames = ?playlist.total_frames(),
            "robot joined the channel"
        );
        let first = start_frame(self.offer.position_ms);
        let looping = self.offer.loop_audio;
        // (an asset still encoding has no length yet: the playback then finds its end)
        if !looping && playlist.total_frames().is_some_and(|t| first >= t) {
            socket.leave().await;
            self.position_ms = Some(playlist.position_ms(first, false));
            return Ending::left("audio ended");
        }
        let mut ch = ChannelState::new(Arc::clone(&self.ctx), joined);
        ch.offer_to_all().await;
        let mut socket = Some(socket);
        let mut rejoin: Option<tokio::task::JoinHandle<Result<Rejoined, String>>> = None;

        let position = Arc::new(AtomicU64::new(playlist.position_ms(first, looping)));
        let mut playback: Option<tokio::task::JoinHandle<()>> = None;
        let mut ended_rx: Option<oneshot::Receiver<Option<String>>> = None;
        let mut ended_at: Option<Instant> = None;
        let mut next_status = Instant::now() + cfg.position_every;
        let ending = loop {
            let deadline = ch.check_deadline(ended_at);
            tokio::select! {
                biased;
                c = control.recv() => match c {
                    Some(Control::HandBack) => break Ending::failed("handed back: agent draining"),
                    Some(Control::Leave) | None => break Ending::left("told to leave"),
                },
                failed = wait_ended(&mut ended_rx) => {
                    self.position_ms = Some(position.load(Ordering::Relaxed));
                    if let Some(e) = failed {
                        // a corrupt tail found mid-stream: end cleanly, the reason on the session
                        break Ending::failed(format!("audio failed during playback: {e}"));
                    }
                    ended_at = Some(Instant::now());
                }
                m = next_message(&mut socket) => match m {
                    Some(m) => if let Some(end) = ch.on_server(m).await { break end },
                    None => {
                        tracing::warn!("the channel socket closed; joining again, the audio goes on");
                        socket = None;
                        rejoin = Some(tokio::spawn(self.rejoin(cfg.rejoin_for)));
                    }
                },
                r = wait_rejoin(&mut rejoin) => match r {
                    Ok((s, joined)) => {
                        tracing::info!(peers = joined.peers.len(), "robot rejoined the channel");
                        socket = Some(s);
                        ch.on_rejoined(joined).await;
                    }
                    Err(e) => break Ending::failed(e),
                },
                Some(ev) = ch.events_rx.recv() => {
                    if ch.on_listener_event(ev).await && playback.is_none() {
                        // The first listener is connected: start now, so nothing is clipped.
                        let (tx, rx) = oneshot::channel();
                        let frames = Playback {
                            playlist: playlist.clone(),
                            first,
                            looping,
                            listeners: ch.connected_rx(),
                            position: Arc::clone(&position),
                            metrics: Arc::clone(&self.ctx.metrics),
                        };
                        playback = Some(self.ctx.media_clock.spawn(frames.run(tx)));
                        ended_rx = Some(rx);
                        self.position_ms = Some(position.load(Ordering::Relaxed));
                        self.set_phase(Phase::Playing);
                        tracing::info!(position_ms = ?self.position_ms, "playback started");
                        status(SessionState::Playing, "", self.position_ms);
                        next_status = Instant::now() + cfg.position_every;
                    }
                }
                Some(out) = ch.outbound_rx.recv() => {
                    let msg = ClientMessage::Signal { to: out.to, payload: out.payload };
                    // While the socket is down a signal is dropped: every negotiation starts
                    // over once back (see `on_rejoined`), so it would be stale.
                    if let Some(s) = socket.as_mut()
                        && s.send(&msg).await.is_err()
                    {
                        tracing::warn!("the channel socket failed; joining again, the audio goes on");
                        socket = None;
                        rejoin = Some(tokio::spawn(self.rejoin(cfg.rejoin_for)));
                    }
                }
                () = tokio::time::sleep_until(next_status) => {
                    next_status = Instant::now() + cfg.position_every;
                    if playback.is_some() && ended_at.is_none() {
                        self.position_ms = Some(position.load(Ordering::Relaxed));
                        status(SessionState::Playing, "", self.position_ms);
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    if let Some(end) = ch.check(ended_at) { break end }
                }
            }
        };
        if let Some(p) = playback {
            p.abort();
            self.position_ms = Some(position.load(Ordering::Relaxed));
        }
        ch.close_all().await;
        if let Some(r) = rejoin {
            r.abort();
        }
        if let Some(s) = socket {
            s.leave().await;
        }
        ending
    }

    /// Joins the channel again with the session's token: retries with backoff until
    /// `give_up_after` has passed; a refusal (bad or expired token, kicked, full) is final.
    fn rejoin(
        &self,
        give_up_after: Duration,
    ) -> impl std::future::Future<Output = Result<Rejoined, String>> + Send + 'static {
        let url = self.ctx.config.rtc_url.clone();
        let o = self.offer.clone();
        async move {
            let give_up = Instant::now() + give_up_after;
            let mut delay = Duration::from_millis(250);
            loop {
                match ChannelSocket::join(&url, &o.app_id, &o.channel, &o.uid, &o.token).await {
                    Ok(j) => return Ok(j),
                    Err(JoinError::Refused { code, message }) => {
                        return Err(format!(
                            "the channel socket closed; rejoin refused: {code}: {message}"
                        ));
                    }
                    Err(e) => {
                        if Instant::now() + delay >= give_up {
                            return Err(format!(
                                "the channel socket closed and could not be joined again within {} s: {e}",
                                give_up_after.as_secs()
                            ));
                        }
                        tracing::debug!(error = %e, "rejoin failed; retrying");
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// A socket joined again, with what `joined` said.
type Rejoined = (ChannelSocket, Joined);

/// The next message of the socket; pending while there is none (rejoining).
async fn next_message(socket: &mut Option<ChannelSocket>) -> Option<ServerMessage> {
    match socket {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// The outcome of a rejoin in progress; pending while there is none.
async fn wait_rejoin(
    task: &mut Option<tokio::task::JoinHandle<Result<Rejoined, String>>>,
) -> Result<Rejoined, String> {
    let Some(t) = task.as_mut() else {
        return std::future::pending().await;
    };
    let r = t.await;
    *task = None;
    r.unwrap_or_else(|e| Err(format!("rejoin task failed: {e}")))
}

/// Resolves once the playback's end is signalled (with the reason when the audio failed);
/// pending while there is none.
async fn wait_ended(rx: &mut Option<oneshot::Receiver<Option<String>>>) -> Option<String> {
    match rx {
        Some(r) => {
            let failed = r.await.unwrap_or(None);
            *rx = None;
            failed
        }
        None => std::future::pending().await,
    }
}

/// The frames of one session, sent on the pacer's deadlines to every connected listener.
/// Runs on the media clock (a thread of its own), so a busy main runtime (negotiation, the
/// peer connections' drivers, sockets) never delays a frame.
struct Playback {
    playlist: Playlist,
    first: u64,
    looping: bool,
    listeners: watch::Receiver<Arc<Vec<Arc<dyn Listener>>>>,
    position: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Playback {
    /// Sends frames until the audio ends (`None` on `ended`) or fails (`Some(reason)`).
    /// A frame the encoder has not reached yet (a cold asset) is a tick of silence: nothing
    /// is sent, the position stays, and the next frame sent carries the gap in its RTP
    /// timestamp (as skipped frames do).
    async fn run(self, ended: oneshot::Sender<Option<String>>) {
        let mut pacer = Pacer::new(std::time::Instant::now());
        let mut n = self.first;
        let mut silent: u64 = 0;
        loop {
            tokio::time::sleep_until(Instant::from_std(pacer.poll_timeout())).await;
            let now = std::time::Instant::now();
            while let Some(due) = pacer.poll(now) {
                let at = n + due.skipped;
                let frame = match self.playlist.read(at, self.looping) {
                    FrameRead::Ready(f) => f,
                    FrameRead::Pending => {
                        silent += 1 + due.skipped;
                        self.metrics.frame_pending();
                        continue;
                    }
                    FrameRead::End => {
                        self.position.store(
                            self.playlist.position_ms(at, self.looping),
                            Ordering::Relaxed,
                        );
                        let _ = ended.send(None);
                        return;
                    }
                    FrameRead::Failed(e) => {
                        self.position.store(
                            self.playlist.position_ms(at, self.looping),
                            Ordering::Relaxed,
                        );
                        let _ = ended.send(Some(e));
                        return;
                    }
                };
                n = at + 1;
                let listeners = Arc::clone(&self.listeners.borrow());
                let skipped = u16::try_from(due.skipped + silent).unwrap_or(u16::MAX);
                silent = 0;
                let mut sent = 0;
                for l in listeners.iter() {
                    match l.send_frame(frame.clone(), skipped).await {
                        Ok(()) => sent += 1,
                        Err(e) => tracing::debug!(error = %e, "frame not sent"),
                    }
                }
                self.metrics.frame_sent(due.lateness, sent, due.skipped);
            }
            self.position.store(
                self.playlist.position_ms(n, self.looping),
                Ordering::Relaxed,
            );
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// The channel as the session sees it: who is there, one listener per peer.
struct ChannelState {
    ctx: Arc<SessionContext>,
    ice_servers: Vec<IceServer>,
    persons: std::collections::HashSet<String>,
    /// Peers the robot must offer to (it is the newcomer).
    to_offer: Vec<String>,
    listeners: HashMap<String, Entry>,
    next_generation: u64,
    /// Since when nobody is in the channel.
    alone_since: Option<Instant>,
    events_tx: mpsc::UnboundedSender<ListenerEvent>,
    events_rx: mpsc::UnboundedReceiver<ListenerEvent>,
    outbound_tx: mpsc::UnboundedSender<Outbound>,
    outbound_rx: mpsc::UnboundedReceiver<Outbound>,
    /// The connected listeners, for the playback task.
    connected: watch::Sender<Arc<Vec<Arc<dyn Listener>>>>,
}

impl ChannelState {
    fn new(ctx: Arc<SessionContext>, joined: Joined) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (outbound_tx, outbound_rx) = mpsc::unbounded_channel();
        let persons: std::collections::HashSet<String> = joined.peers.iter().cloned().collect();
        Self {
            ctx,
            ice_servers: joined.ice_servers,
            alone_since: persons.is_empty().then(Instant::now),
            persons,
            to_offer: joined.peers,
            listeners: HashMap::new(),
            next_generation: 1,
            events_tx,
            events_rx,
            outbound_tx,
            outbound_rx,
            connected: watch::Sender::new(Arc::new(Vec::new())),
        }
    }

    fn connected_rx(&self) -> watch::Receiver<Arc<Vec<Arc<dyn Listener>>>> {
        self.connected.subscribe()
    }

    /// Publishes the connected listeners to the playback task.
    fn publish(&self) {
        let list: Vec<Arc<dyn Listener>> = self
            .listeners
            .values()
            .filter(|e| e.connected)
            .map(|e| Arc::clone(&e.link))
            .collect();
        self.connected.send_replace(Arc::new(list));
    }

    /// Back in the channel after the socket was lost: the robot is the newcomer again and
    /// offers to every listed peer (each dropped its old connection on our `peer_joined`).
    /// Listeners still connected but not listed keep playing until they leave or rejoin.
    async fn on_rejoined(&mut self, joined: Joined) {
        self.ice_servers = joined.ice_servers;
        self.persons = joined.peers.iter().cloned().collect();
        self.to_offer = joined.peers;
        self.offer_to_all().await;
        self.update_alone();
    }

    /// Nobody is there when no peer is in the channel and no listener's media is up.
    fn update_alone(&mut self) {
        let alone = self.persons.is_empty() && !self.listeners.values().any(|e| e.connected);
        if !alone {
            self.alone_since = None;
        } else if self.alone_since.is_none() {
            self.alone_since = Some(Instant::now());
        }
    }

    /// The offer rule: the newcomer offers to every peer listed in `joined`.
    async fn offer_to_all(&mut self) {
        for peer in std::mem::take(&mut self.to_offer) {
            if let Some(e) = self.create(&peer).await {
                let _ = e.send(SignalIn::MakeOffer);
            }
        }
    }

    /// A new listener for `peer` (replacing an old one), with its negotiation task.
    async fn create(&mut self, peer: &str) -> Option<mpsc::UnboundedSender<SignalIn>> {
        self.drop_listener(peer).await;
        let generation = self.next_generation;
        self.next_generation += 1;
        let link = match self
            .ctx
            .transport
            .listener(peer, generation, &self.ice_servers, self.events_tx.clone())
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(peer, error = %e, "cannot create a connection for a listener");
                return None;
            }
        };
        let (inbox, rx) = mpsc::unbounded_channel();
        tokio::spawn(negotiate(
            peer.to_owned(),
            generation,
            Arc::clone(&link),
            rx,
            self.outbound_tx.clone(),
            self.events_tx.clone(),
        ));
        self.listeners.insert(
            peer.to_owned(),
            Entry {
                generation,
                link,
                inbox: inbox.clone(),
                connected: false,
            },
        );
        Some(inbox)
    }

    async fn drop_listener(&mut self, peer: &str) {
        if let Some(e) = self.listeners.remove(peer) {
            if e.connected {
                self.ctx
                    .metrics
                    .listeners
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            let link = e.link;
            if e.connected {
                self.publish();
            }
            tokio::spawn(async move { link.close().await });
        }
    }

    async fn close_all(&mut self) {
        let peers: Vec<String> = self.listeners.keys().cloned().collect();
        for p in peers {
            self.drop_listener(&p).await;
        }
    }

    /// Handles a server message; `Some` ends the session.
    async fn on_server(&mut self, m: ServerMessage) -> Option<Ending> {
        match m {
            ServerMessage::PeerJoined { uid } => {
                // It will offer; a previous connection of that uid is gone.
                self.drop_listener(&uid).await;
                self.persons.insert(uid);
                self.update_alone();
            }
            ServerMessage::PeerLeft { uid, reason } => {
                tracing::info!(peer = %uid, reason = reason.as_str(), "peer left");
                self.drop_listener(&uid).await;
                self.persons.remove(&uid);
                self.update_alone();
            }
            ServerMessage::Signal { from, payload } => {
                self.persons.insert(from.clone());
                self.update_alone();
                match payload {
                    SignalPayload::Description(SessionDescription {
                        kind: SdpType::Offer,
                        sdp,
                    }) => {
                        // A newcomer's offer, or a renegotiation on an existing connection.
                        let inbox = match self.listeners.get(&from) {
                            Some(e) => Some(e.inbox.clone()),
                            None => self.create(&from).await,
                        };
                        if let Some(i) = inbox {
                            let _ = i.send(SignalIn::Offer(sdp));
                        }
                    }
                    SignalPayload::Description(SessionDescription {
                        kind: SdpType::Answer,
                        sdp,
                    }) => {
                        if let Some(e) = self.listeners.get(&from) {
                            let _ = e.inbox.send(SignalIn::Answer(sdp));
                        }
                    }
                    SignalPayload::Candidate(Some(c)) => {
                        if let Some(e) = self.listeners.get(&from) {
                            let _ = e.inbox.send(SignalIn::Candidate(c));
                        }
                    }
                    SignalPayload::Candidate(None) => {}
                }
            }
            ServerMessage::Kicked { reason } => {
                return Some(Ending::left(format!("kicked: {reason}")));
            }
            ServerMessage::Error { code, message } => {
                tracing::warn!(code = %code, message = %message, "/rtc error");
            }
            // Robot tokens last DAPI_ROBOT_TOKEN_TTL (as long as a robot may run): no renewal.
            ServerMessage::Joined { .. } | ServerMessage::TokenExpiring => {}
        }
        None
    }

    /// A listener's state changed; true when it just connected.
    async fn on_listener_event(&mut self, ev: ListenerEvent) -> bool {
        let Some(e) = self.listeners.get_mut(&ev.peer) else {
            return false;
        };
        if e.generation != ev.generation {
            return false; // an old connection of that uid
        }
        match ev.state {
            ListenerState::Connected if !e.connected => {
                e.connected = true;
                self.ctx
                    .metrics
                    .listeners
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(peer = %ev.peer, "listener connected");
                self.publish();
                true
            }
            ListenerState::Connected => false,
            ListenerState::Closed => {
                tracing::info!(peer = %ev.peer, "listener connection closed");
                self.drop_listener(&ev.peer).await;
                self.update_alone();
                false
            }
        }
    }

    /// When [`check`](Self::check) must run next.
    fn check_deadline(&self, ended_at: Option<Instant>) -> Instant {
        let mut d = far_future();
        if let Some(t) = self.alone_since {
            d = d.min(t + self.ctx.config.leave_grace);
        }
        if let Some(t) = ended_at {
            d = d.min(t + self.ctx.config.tail);
        }
        d
    }

    /// The leave rules that depend on time.
    fn check(&self, ended_at: Option<Instant>) -> Option<Ending> {
        let now = Instant::now();
        if let Some(t) = ended_at
            && now >= t + self.ctx.config.tail
        {
            return Some(Ending::left("audio ended"));
        }
        if let Some(t) = self.alone_since
            && now >= t + self.ctx.config.leave_grace
        {
            return Some(Ending::left(format!(
                "nobody in the channel for {} s",
                self.ctx.config.leave_grace.as_secs()
            )));
        }
        None
    }
}

/// One listener's negotiation, one step at a time (an answer is set before its candidates).
async fn negotiate(
    peer: String,
    generation: u64,
    link: Arc<dyn Listener>,
    mut inbox: mpsc::UnboundedReceiver<SignalIn>,
    outbound: mpsc::UnboundedSender<Outbound>,
    events: mpsc::UnboundedSender<ListenerEvent>,
) {
    while let Some(step) = inbox.recv().await {
        let result = match step {
            SignalIn::MakeOffer => link.offer().await.map(|sdp| Some((SdpType::Offer, sdp))),
            SignalIn::Offer(sdp) => link
                .answer(sdp)
                .await
                .map(|sdp| Some((SdpType::Answer, sdp))),
            SignalIn::Answer(sdp) => link.set_answer(sdp).await.map(|()| None),
            SignalIn::Candidate(c) => link.add_candidate(c).await.map(|()| None),
        };
        match result {
            Ok(Some((kind, sdp))) => {
                let _ = outbound.send(Outbound {
                    to: peer.clone(),
                    payload: SignalPayload::Description(SessionDescription { kind, sdp }),
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "negotiation with a listener failed");
                let _ = events.send(ListenerEvent {
                    peer: peer.clone(),
                    generation,
                    state: ListenerState::Closed,
                });
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_positions_map_to_frames() {
        assert_eq!(start_frame(0), 0);
        assert_eq!(start_frame(3210), 160);
        assert_eq!(start_frame(19), 0);
    }

    #[test]
    fn an_empty_playlist_has_no_frames() {
        let p = Playlist::new(vec![]);
        assert_eq!(p.total_frames(), Some(0));
        assert_eq!(p.read(0, true), FrameRead::End);
        assert_eq!(p.position_ms(5, true), 0);
    }
}
