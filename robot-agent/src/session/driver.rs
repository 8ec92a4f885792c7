//! The session's IO: feeds [`SessionCore`] and does what it says.
//!
//! ```text
//!   control (link) ─┐
//!   join task ──────┤                                  ┌─► status ─► link
//!   audio load task ┤                                  ├─► join task / audio load task
//!   /rtc socket ────┼─► Input ─► SessionCore ─► Output ┼─► listener + negotiation task
//!   listener events ┤      ▲                           ├─► connected set (watch) ─► playback
//!   playback done ──┤      │ Position (atomic)         ├─► playback task (media clock)
//!   timer ──────────┘      └───────────────────────────┴─► End: leave, final status
//!   negotiation tasks ─► outbound signals ─► /rtc socket (dropped while rejoining)
//! ```
//!
//! One task per session runs [`run`]: a `select!` over the sources on the left, each
//! turned into one [`Input`] (the time is tokio's clock, so tests may pause it). Negotiation
//! with each listener runs in a small task of its own (it waits for ICE gathering) and
//! takes the signals routed to it in arrival order. The frames go out from a playback task
//! on the media clock (a runtime on a thread of its own): it sleeps until the pacer's next
//! deadline, takes the frame from the [`Playlist`] and writes it to every connected
//! listener; it publishes its position in an atomic, which the driver feeds to the core
//! before each input.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::agent::{SessionOffer, SessionState};
use protocol::signaling::{
    ClientMessage, IceServer, SdpType, ServerMessage, SessionDescription, SignalPayload,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::core::{Ending, Input, Output, Plan, Role, SessionCore};
use super::playlist::{FrameSource, Playlist, Step};
use super::{Control, SessionContext, SessionUpdate, start_frame};
use crate::error::AgentError;
use crate::metrics::{Metrics, Phase};
use crate::pacer::{FRAME, Pacer};
use crate::rtc::{Listener, ListenerEvent, ListenerState};
use crate::signaling::{ChannelLink, JoinError, Joined};

/// Runs one session to its end. Sends its statuses and finally `Ended` on `updates`.
pub async fn run(
    ctx: Arc<SessionContext>,
    offer: SessionOffer,
    control: mpsc::UnboundedReceiver<Control>,
    updates: mpsc::UnboundedSender<SessionUpdate>,
) {
    let id = offer.id;
    let span = tracing::info_span!("robot_session", session = id, channel = %offer.channel, attempt = offer.attempt);
    ctx.metrics.phase(None, Some(Phase::Joining));
    let mut driver = Driver::new(Arc::clone(&ctx), offer, updates.clone());
    let ending = tracing::Instrument::instrument(driver.run(control), span.clone()).await;
    ctx.metrics.phase(Some(driver.phase), None);
    ctx.metrics.session_ended(ending.outcome.label());
    let detail = ending.outcome.to_string();
    span.in_scope(|| tracing::info!(state = ?ending.outcome.state(), detail = %detail, position_ms = ?ending.position_ms, "robot session ended"));
    driver.status(ending.outcome.state(), detail, ending.position_ms);
    let _ = updates.send(SessionUpdate::Ended { session_id: id });
}

/// Tokio's clock as a std instant (the core's time).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// One connection to one listener, as the driver holds it.
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

/// How the playback task stopped by itself.
enum PlaybackDone {
    Ended { position_ms: u64 },
    Failed { error: String, position_ms: u64 },
}

struct PlaybackTask {
    task: JoinHandle<()>,
    position: Arc<AtomicU64>,
}

type JoinResult = Result<(Box<dyn ChannelLink>, Joined), JoinError>;
type Items = Vec<Arc<dyn FrameSource>>;
type Connected = Arc<Vec<Arc<dyn Listener>>>;

struct Driver {
    ctx: Arc<SessionContext>,
    offer: SessionOffer,
    updates: mpsc::UnboundedSender<SessionUpdate>,
    core: SessionCore,
    phase: Phase,
    socket: Option<Box<dyn ChannelLink>>,
    joined_once: bool,
    joining: Option<JoinHandle<JoinResult>>,
    loading: Option<JoinHandle<Result<Items, AgentError>>>,
    items: Option<Items>,
    ice_servers: Vec<IceServer>,
    listeners: HashMap<String, Entry>,
    events_tx: mpsc::UnboundedSender<ListenerEvent>,
    events_rx: mpsc::UnboundedReceiver<ListenerEvent>,
    outbound_tx: mpsc::UnboundedSender<Outbound>,
    outbound_rx: mpsc::UnboundedReceiver<Outbound>,
    /// The connected listeners, for the playback task.
    connected: watch::Sender<Connected>,
    playback: Option<PlaybackTask>,
    done_tx: mpsc::UnboundedSender<PlaybackDone>,
    done_rx: mpsc::UnboundedReceiver<PlaybackDone>,
    /// A signal to hand to its listener once the core's outputs are done.
    route: Option<(String, SignalPayload)>,
}

impl Driver {
    fn new(
        ctx: Arc<SessionContext>,
        offer: SessionOffer,
        updates: mpsc::UnboundedSender<SessionUpdate>,
    ) -> Self {
        let plan = Plan {
            first_frame: start_frame(offer.position_ms),
            looping: offer.loop_audio,
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (outbound_tx, outbound_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            core: SessionCore::new(plan, ctx.config),
            ctx,
            offer,
            updates,
            phase: Phase::Joining,
            socket: None,
            joined_once: false,
            joining: None,
            loading: None,
            items: None,
            ice_servers: Vec::new(),
            listeners: HashMap::new(),
            events_tx,
            events_rx,
            outbound_tx,
            outbound_rx,
            connected: watch::Sender::new(Arc::new(Vec::new())),
            playback: None,
            done_tx,
            done_rx,
            route: None,
        }
    }

    fn status(&self, state: SessionState, detail: String, position_ms: Option<u64>) {
        let _ = self.updates.send(SessionUpdate::Status {
            session_id: self.offer.id,
            state,
            detail,
            position_ms,
        });
    }

    /// Feeds the core one input, with the playback's position first.
    fn feed(&mut self, input: Input) {
        let now = now();
        if let Some(p) = &self.playback {
            let position_ms = p.position.load(Ordering::Relaxed);
            self.core.handle_input(now, Input::Position { position_ms });
        }
        self.core.handle_input(now, input);
    }

    async fn run(&mut self, mut control: mpsc::UnboundedReceiver<Control>) -> Ending {
        let ending = loop {
            if let Some(end) = self.execute_outputs().await {
                break end;
            }
            if let Some((from, payload)) = self.route.take() {
                self.route_signal(&from, payload);
            }
            let deadline = self.core.poll_timeout().map(tokio::time::Instant::from_std);
            let input = tokio::select! {
                biased;
                c = control.recv() => Input::Control(c.unwrap_or(Control::Leave)),
                r = wait(&mut self.joining) => self.on_join(r.unwrap_or_else(|| {
                    Err(JoinError::Incomplete("the join task failed".into()))
                })),
                r = wait(&mut self.loading) => self.on_audio(r.unwrap_or_else(|| {
                    Err(AgentError::AudioFailed("the audio task failed".into()))
                })),
                m = next_message(&mut self.socket) => match m {
                    Some(m) => match self.on_server(m) {
                        Some(i) => i,
                        None => continue,
                    },
                    None => self.socket_lost(),
                },
                Some(ev) = self.events_rx.recv() => match ev.state {
                    ListenerState::Connected => Input::ListenerConnected { peer: ev.peer, generation: ev.generation },
                    ListenerState::Closed => {
                        if self.listeners.get(&ev.peer).is_some_and(|e| e.generation == ev.generation) {
                            tracing::info!(peer = %ev.peer, "listener connection closed");
                        }
                        Input::ListenerClosed { peer: ev.peer, generation: ev.generation }
                    }
                },
                Some(out) = self.outbound_rx.recv() => {
                    let msg = ClientMessage::Signal { to: out.to, payload: out.payload };
                    // While the socket is down a signal is dropped: every negotiation
                    // starts over once back, so it would be stale.
                    match self.socket.as_mut() {
                        Some(s) => match s.send(&msg).await {
                            Ok(()) => continue,
                            Err(_) => self.socket_lost(),
                        },
                        None => continue,
                    }
                }
                Some(done) = self.done_rx.recv() => match done {
                    PlaybackDone::Ended { position_ms } => Input::PlaybackEnded { position_ms },
                    PlaybackDone::Failed { error, position_ms } => Input::PlaybackFailed { error, position_ms },
                },
                () = sleep_until(deadline) => Input::Timeout,
            };
            self.feed(input);
        };
        self.shut_down().await;
        ending
    }

    fn socket_lost(&mut self) -> Input {
        self.socket = None;
        tracing::warn!("the channel socket closed; joining again, the audio goes on");
        Input::SocketLost
    }

    fn on_join(&mut self, r: JoinResult) -> Input {
        match r {
            Ok((socket, joined)) => {
                if self.joined_once {
                    tracing::info!(peers = joined.peers.len(), "robot rejoined the channel");
                } else {
                    tracing::info!(peers = joined.peers.len(), "robot joined the channel");
                }
                self.joined_once = true;
                self.socket = Some(socket);
                self.ice_servers = joined.ice_servers;
                Input::Joined {
                    peers: joined.peers,
                }
            }
            Err(e) => {
                if self.joined_once {
                    tracing::debug!(error = %e, "rejoin failed");
                }
                Input::JoinFailed(e)
            }
        }
    }

    fn on_audio(&mut self, r: Result<Items, AgentError>) -> Input {
        match r {
            Ok(items) => {
                let frames = Playlist::new(items.clone(), 0, false).total_frames();
                tracing::info!(items = items.len(), frames = ?frames, "audio ready");
                self.items = Some(items);
                Input::AudioReady { frames }
            }
            Err(e) => Input::AudioFailed(e),
        }
    }

    /// A server message as an input; a signal's payload is routed after the core has seen
    /// it (it may create the listener).
    fn on_server(&mut self, m: ServerMessage) -> Option<Input> {
        match m {
            ServerMessage::PeerJoined { uid } => Some(Input::PeerJoined { peer: uid }),
            ServerMessage::PeerLeft { uid, reason } => {
                tracing::info!(peer = %uid, reason = reason.as_str(), "peer left");
                Some(Input::PeerLeft { peer: uid })
            }
            ServerMessage::Signal { from, payload } => {
                let offer = matches!(
                    payload,
                    SignalPayload::Description(SessionDescription {
                        kind: SdpType::Offer,
                        ..
                    })
                );
                self.route = Some((from.clone(), payload));
                Some(Input::Signal { from, offer })
            }
            ServerMessage::Kicked { reason } => Some(Input::Kicked { reason }),
            ServerMessage::Error { code, message } => {
                tracing::warn!(code = %code, message = %message, "/rtc error");
                None
            }
            // Robot tokens last DAPI_ROBOT_TOKEN_TTL (as long as a robot may run): no renewal.
            ServerMessage::Joined { .. } | ServerMessage::TokenExpiring => None,
        }
    }

    fn route_signal(&self, from: &str, payload: SignalPayload) {
        let Some(e) = self.listeners.get(from) else {
            return;
        };
        let step = match payload {
            SignalPayload::Description(SessionDescription { kind, sdp }) => match kind {
                SdpType::Offer => SignalIn::Offer(sdp),
                SdpType::Answer => SignalIn::Answer(sdp),
            },
            SignalPayload::Candidate(Some(c)) => SignalIn::Candidate(c),
            SignalPayload::Candidate(None) => return,
        };
        let _ = e.inbox.send(step);
    }

    /// Does what the core asked; `Some` when the session is over.
    async fn execute_outputs(&mut self) -> Option<Ending> {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Status { state, position_ms } => {
                    self.status(state, String::new(), position_ms);
                }
                Output::Join => {
                    if let Some(j) = self.joining.take() {
                        j.abort();
                    }
                    let signaling = Arc::clone(&self.ctx.signaling);
                    let o = self.offer.clone();
                    self.joining = Some(tokio::spawn(async move {
                        signaling
                            .join(&o.app_id, &o.channel, &o.uid, &o.token)
                            .await
                    }));
                }
                Output::LoadAudio => {
                    let audio = Arc::clone(&self.ctx.audio);
                    let names: Vec<String> = if self.offer.playlist.is_empty() {
                        vec![self.offer.audio.clone()]
                    } else {
                        self.offer.playlist.clone()
                    };
                    self.loading = Some(tokio::spawn(async move {
                        let mut items = Vec::with_capacity(names.len());
                        for n in &names {
                            items.push(audio.item(n).await?);
                        }
                        Ok::<Items, AgentError>(items)
                    }));
                }
                Output::CreateListener {
                    peer,
                    generation,
                    role,
                } => self.create_listener(peer, generation, role).await,
                Output::ListenerLive { peer, generation } => {
                    if let Some(e) = self.listeners.get_mut(&peer)
                        && e.generation == generation
                        && !e.connected
                    {
                        e.connected = true;
                        self.ctx.metrics.listeners.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(peer = %peer, "listener connected");
                        self.publish();
                    }
                }
                Output::CloseListener { peer, generation } => {
                    if self
                        .listeners
                        .get(&peer)
                        .is_some_and(|e| e.generation == generation)
                    {
                        self.drop_listener(&peer);
                    }
                }
                Output::StartPlayback { first_frame } => self.start_playback(first_frame),
                Output::StopPlayback => {
                    if let Some(p) = &self.playback {
                        p.task.abort();
                    }
                }
                Output::End(ending) => return Some(ending),
            }
        }
        None
    }

    /// A new listener for `peer`, with its negotiation task.
    async fn create_listener(&mut self, peer: String, generation: u64, role: Role) {
        self.drop_listener(&peer);
        let link = match self
            .ctx
            .transport
            .listener(&peer, generation, &self.ice_servers, self.events_tx.clone())
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "cannot create a connection for a listener");
                self.core
                    .handle_input(now(), Input::ListenerClosed { peer, generation });
                return;
            }
        };
        let (inbox, rx) = mpsc::unbounded_channel();
        tokio::spawn(negotiate(
            peer.clone(),
            generation,
            Arc::clone(&link),
            rx,
            self.outbound_tx.clone(),
            self.events_tx.clone(),
        ));
        if role == Role::Offer {
            let _ = inbox.send(SignalIn::MakeOffer);
        }
        self.listeners.insert(
            peer,
            Entry {
                generation,
                link,
                inbox,
                connected: false,
            },
        );
    }

    fn drop_listener(&mut self, peer: &str) {
        if let Some(e) = self.listeners.remove(peer) {
            if e.connected {
                self.ctx.metrics.listeners.fetch_sub(1, Ordering::Relaxed);
                self.publish();
            }
            let link = e.link;
            tokio::spawn(async move { link.close().await });
        }
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

    fn start_playback(&mut self, first_frame: u64) {
        let Some(items) = self.items.clone() else {
            return; // the core starts the playback only once the audio is ready
        };
        let playlist = Playlist::new(items, first_frame, self.offer.loop_audio);
        let position = Arc::new(AtomicU64::new(playlist.position_ms()));
        let task = self.ctx.media_clock.spawn(play(
            playlist,
            self.connected.subscribe(),
            Arc::clone(&position),
            Arc::clone(&self.ctx.metrics),
            self.done_tx.clone(),
        ));
        self.playback = Some(PlaybackTask { task, position });
        self.ctx
            .metrics
            .phase(Some(self.phase), Some(Phase::Playing));
        self.phase = Phase::Playing;
        tracing::info!(
            position_ms = first_frame.saturating_mul(20),
            "playback started"
        );
    }

    async fn shut_down(&mut self) {
        if let Some(p) = &self.playback {
            p.task.abort();
        }
        if let Some(j) = self.joining.take() {
            j.abort();
        }
        if let Some(l) = self.loading.take() {
            l.abort();
        }
        let peers: Vec<String> = self.listeners.keys().cloned().collect();
        for p in peers {
            self.drop_listener(&p);
        }
        if let Some(s) = self.socket.take() {
            s.leave().await;
        }
    }
}

/// The outcome of a task (`None`: it panicked); pending while there is none.
async fn wait<T>(task: &mut Option<JoinHandle<T>>) -> Option<T> {
    let Some(t) = task.as_mut() else {
        return std::future::pending().await;
    };
    let r = t.await;
    *task = None;
    r.ok()
}

/// The next message of the socket; pending while there is none (rejoining).
async fn next_message(socket: &mut Option<Box<dyn ChannelLink>>) -> Option<ServerMessage> {
    match socket {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The frames of one session, sent on the pacer's deadlines to every connected listener.
/// Runs on the media clock (a thread of its own), so a busy main runtime (negotiation, the
/// peer connections' drivers, sockets) never delays a frame.
///
/// A frame not encoded yet at its deadline (`Pending`) is not sent and the position stays;
/// the pacer is anchored again one frame later, so the stream resumes without a burst.
/// Frames the pacer skips after a long stall are skipped in the playlist too.
async fn play(
    mut playlist: Playlist,
    listeners: watch::Receiver<Connected>,
    position: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    done: mpsc::UnboundedSender<PlaybackDone>,
) {
    let mut pacer = Pacer::new(now());
    loop {
        tokio::time::sleep_until(tokio::time::Instant::from_std(pacer.poll_timeout())).await;
        let t = now();
        while let Some(due) = pacer.poll(t) {
            let mut step = playlist.next_step();
            let mut skipped = 0u64;
            while skipped < due.skipped && matches!(step, Step::Frame(_)) {
                step = playlist.next_step();
                skipped += 1;
            }
            match step {
                Step::Frame(frame) => {
                    let to: Connected = Arc::clone(&listeners.borrow());
                    let skipped16 = u16::try_from(skipped).unwrap_or(u16::MAX);
                    let mut sent = 0;
                    for l in to.iter() {
                        match l.send_frame(frame.clone(), skipped16).await {
                            Ok(()) => sent += 1,
                            Err(e) => tracing::debug!(error = %e, "frame not sent"),
                        }
                    }
                    metrics.frame_sent(due.lateness, sent, skipped);
                }
                Step::Pending => {
                    metrics.frame_pending();
                    pacer = Pacer::new(t + FRAME);
                    break;
                }
                Step::End => {
                    let position_ms = playlist.position_ms();
                    position.store(position_ms, Ordering::Relaxed);
                    let _ = done.send(PlaybackDone::Ended { position_ms });
                    return;
                }
                Step::Failed(error) => {
                    let position_ms = playlist.position_ms();
                    position.store(position_ms, Ordering::Relaxed);
                    let _ = done.send(PlaybackDone::Failed { error, position_ms });
                    return;
                }
            }
        }
        position.store(playlist.position_ms(), Ordering::Relaxed);
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
            SignalIn::Answer(sdp) => match link.set_answer(sdp).await {
                Ok(held) => {
                    // The candidates held back from our offer, then end-of-candidates.
                    if !held.is_empty() {
                        for c in held.into_iter().map(Some).chain([None]) {
                            let _ = outbound.send(Outbound {
                                to: peer.clone(),
                                payload: SignalPayload::Candidate(c),
                            });
                        }
                    }
                    Ok(None)
                }
                Err(e) => Err(e),
            },
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
