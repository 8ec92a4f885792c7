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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::agent::{
    AgentMessage, ControlAction, PlaybackState, PlaybackStatus, SessionOffer, SessionState,
};
use protocol::signaling::{
    ClientMessage, IceServer, SdpType, ServerMessage, SessionDescription, SignalPayload,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::core::{Ending, Input, Output, Plan, Role, SessionCore};
use super::playlist::{FrameSource, Playlist};
use super::queue::{Command, Next, PlaybackQueue, QueueEvent, QueueItem};
use super::recorder::{self, Recorder};
use super::voicemail::{RecordAction, RecordPlan};
use super::{Control, SessionContext, SessionUpdate, start_frame};
use crate::bridge::{
    self, AgentEvent, BridgeError, CallParties, FromProgram, ProgramCommand, ToProgram,
};
use crate::error::AgentError;
use crate::metrics::{Metrics, Phase};
use crate::pacer::{FRAME, Pacer};
use crate::rtc::{InboundAudio, Listener, ListenerEvent, ListenerSinks, ListenerState};
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
    let mut driver = span.in_scope(|| Driver::new(Arc::clone(&ctx), offer, updates.clone()));
    let ending = tracing::Instrument::instrument(driver.run(control), span.clone()).await;
    ctx.metrics.phase(Some(driver.phase), None);
    ctx.metrics.session_ended(ending.outcome.label());
    let detail = driver.with_bridge_notes(ending.outcome.to_string());
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

/// What the playback task reports.
enum PlaybackDone {
    Queue(QueueEvent),
    Failed { error: String, position_ms: u64 },
}

struct PlaybackTask {
    task: JoinHandle<()>,
    position: Arc<AtomicU64>,
}

/// A command for the queue on the media clock, and where its answer goes.
/// (`None`: only the state is asked for.)
type QueueCall = (
    Option<Command>,
    oneshot::Sender<(PlaybackStatus, Option<String>)>,
);

/// Where the playback queue is: built once the audio is ready, held here until the
/// playback starts, then owned by the playback task (commands go to it).
enum QueueHome {
    NotYet,
    Here(PlaybackQueue),
    Playing(mpsc::UnboundedSender<QueueCall>),
}

/// The idle state (no queue, or a playback task that is gone).
fn idle() -> PlaybackStatus {
    PlaybackStatus {
        state: PlaybackState::Idle,
        item: None,
        position_ms: 0,
        queue: Vec::new(),
    }
}

type JoinResult = Result<(Box<dyn ChannelLink>, Joined), JoinError>;
type Items = Vec<QueueItem>;
/// A resolved `play`: the control's `seq` (none for a bridge program's `play`, which is
/// not acknowledged) and the command.
type Resolved = (Option<u64>, Result<Command, String>);

/// Something to apply to the playback queue, in arrival order.
#[derive(Debug)]
enum Pending {
    /// A control from the API (acknowledged).
    Control(u64, ControlAction),
    /// A bridge program's message.
    Program(ProgramCommand),
}

/// The bridge's socket task, as the driver holds it.
struct BridgeTask {
    /// Commands to it; `None` when the target cannot be used (every dial fails at once).
    to: Option<mpsc::UnboundedSender<ToProgram>>,
    from_tx: mpsc::UnboundedSender<FromProgram>,
    from: mpsc::UnboundedReceiver<FromProgram>,
    task: Option<JoinHandle<()>>,
    /// Why the target cannot be used.
    unusable: Option<BridgeError>,
}
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
    queue: QueueHome,
    /// Playback controls and bridge messages not applied yet, in arrival order (one `play`
    /// at a time resolves its asset; the ones behind it wait, so they apply in order).
    controls: VecDeque<Pending>,
    /// Bridge commands that came before the queue was built (the audio still loading).
    early: Vec<Command>,
    /// The media bridge (bridged sessions).
    bridge: Option<BridgeTask>,
    /// Program messages refused, and the last one's error (for the final status).
    refused: (u64, Option<BridgeError>),
    resolving: Option<JoinHandle<Resolved>>,
    /// What is resolving is a bridge program's `play`.
    resolving_program: bool,
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
    audio_tx: mpsc::UnboundedSender<InboundAudio>,
    audio_rx: mpsc::UnboundedReceiver<InboundAudio>,
    /// Recordings being written, by uid.
    recorders: HashMap<Arc<str>, Recorder>,
    /// Uploads under way (the session waits for them before it reports its end).
    uploads: Vec<JoinHandle<()>>,
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
            record: offer.record.map(|r| RecordPlan {
                max: std::time::Duration::from_secs(u64::from(r.max_seconds.max(1))),
                silence: std::time::Duration::from_secs(u64::from(r.silence_seconds.max(1))),
                beep: r.beep,
            }),
            bridge: offer.bridge.is_some(),
        };
        let bridge = offer.bridge.as_ref().map(|target| {
            let (from_tx, from) = mpsc::unbounded_channel();
            match bridge::Format::new(target.format, target.rate) {
                Ok(format) => {
                    let (to, rx) = mpsc::unbounded_channel();
                    let plan = bridge::socket::SocketPlan {
                        target: target.clone(),
                        format,
                        session: offer.id,
                        channel: offer.channel.clone(),
                        call: offer
                            .call
                            .as_ref()
                            .map(|c| CallParties {
                                src_uid: Some(c.src_uid.clone()),
                                dst_uid: c.dst_uid.clone(),
                            })
                            .unwrap_or_default(),
                        continued: offer.attempt > 1,
                        tls: ctx.bridge_tls.clone(),
                    };
                    let task = tokio::spawn(tracing::Instrument::instrument(
                        bridge::socket::run(plan, rx, from_tx.clone()),
                        tracing::Span::current(),
                    ));
                    BridgeTask {
                        to: Some(to),
                        from_tx,
                        from,
                        task: Some(task),
                        unusable: None,
                    }
                }
                Err(e) => BridgeTask {
                    to: None,
                    from_tx,
                    from,
                    task: None,
                    unusable: Some(e),
                },
            }
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (audio_tx, audio_rx) = mpsc::unbounded_channel();
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
            queue: QueueHome::NotYet,
            controls: VecDeque::new(),
            early: Vec::new(),
            bridge,
            refused: (0, None),
            resolving: None,
            resolving_program: false,
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
            audio_tx,
            audio_rx,
            recorders: HashMap::new(),
            uploads: Vec::new(),
        }
    }

    /// The final status detail, with the bridge program's refused messages when there were
    /// any (they are logged one by one; the session's end says how many).
    fn with_bridge_notes(&self, detail: String) -> String {
        match &self.refused {
            (0, _) | (_, None) => detail,
            (n, Some(last)) => {
                format!("{detail}; {n} bridge program message(s) refused, the last: {last}")
            }
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
                c = control.recv() => match c {
                    Some(Control::Playback { seq, action }) => {
                        self.controls.push_back(Pending::Control(seq, action));
                        self.next_control().await;
                        continue;
                    }
                    c => Input::Control(c.unwrap_or(Control::Leave)),
                },
                r = wait(&mut self.resolving) => {
                    self.resolving_program = false;
                    match r {
                        Some((Some(seq), cmd)) => self.apply_control(seq, cmd).await,
                        Some((None, Ok(cmd))) => self.queue_program(cmd),
                        Some((None, Err(e))) => {
                            tracing::warn!(error = %e, "bridge: the program's play was refused");
                        }
                        None => {}
                    }
                    self.next_control().await;
                    continue;
                }
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
                    PlaybackDone::Queue(e) => match self.on_queue_event(e) {
                        Some(i) => i,
                        None => continue,
                    },
                    PlaybackDone::Failed { error, position_ms } => Input::PlaybackFailed { error, position_ms },
                },
                // before the participants' audio: a program's `clear` must not wait
                // behind a burst of packets
                f = from_program(&mut self.bridge) => {
                    if let FromProgram::Bad(e) = &f {
                        self.refused.0 += 1;
                        self.refused.1 = Some(e.clone());
                    }
                    Input::Bridge(f)
                }
                Some(a) = self.audio_rx.recv() => Input::Audio {
                    peer: a.peer,
                    timestamp: a.timestamp,
                    payload: a.payload,
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
                let sources: Vec<Arc<dyn FrameSource>> = items
                    .iter()
                    .flat_map(|i| (0..=i.loops).map(|_| Arc::clone(&i.source)))
                    .collect();
                let frames = Playlist::new(sources, 0, false).total_frames();
                tracing::info!(items = items.len(), frames = ?frames, "audio ready");
                let first = start_frame(self.offer.position_ms);
                self.queue =
                    QueueHome::Here(PlaybackQueue::new(items, first, self.offer.loop_audio));
                for cmd in std::mem::take(&mut self.early) {
                    self.queue_program(cmd);
                }
                Input::AudioReady { frames }
            }
            Err(e) => Input::AudioFailed(e),
        }
    }

    /// A queue event: a mark goes to the link, the end or refill of the audio to the core.
    fn on_queue_event(&mut self, e: QueueEvent) -> Option<Input> {
        match e {
            QueueEvent::Mark {
                name,
                state,
                position_ms,
            } => {
                let _ = self.updates.send(SessionUpdate::Send(AgentMessage::Mark {
                    session_id: self.offer.id,
                    name,
                    state,
                    position_ms,
                }));
                None
            }
            QueueEvent::Drained { position_ms } => Some(Input::PlaybackEnded { position_ms }),
            QueueEvent::Refilled => Some(Input::PlaybackRefilled),
            QueueEvent::BridgeMark { name, position_ms } => {
                self.tell_program(ToProgram::Send(AgentEvent::Mark { name, position_ms }));
                None
            }
            QueueEvent::BridgeCleared { marks, dropped_ms } => {
                self.tell_program(ToProgram::Send(AgentEvent::Cleared { marks, dropped_ms }));
                None
            }
        }
    }

    /// Starts on the next control when none is resolving: a `play` looks its asset up in
    /// a task (the answer waits for it), the others apply at once.
    async fn next_control(&mut self) {
        while self.resolving.is_none() {
            let Some(pending) = self.controls.pop_front() else {
                return;
            };
            let (seq, action) = match pending {
                Pending::Control(seq, action) => (seq, action),
                Pending::Program(ProgramCommand::Play(audio)) => {
                    self.resolving_program = true;
                    self.resolve_play(None, audio, 0, 0.0, protocol::agent::PlayMode::Append);
                    continue;
                }
                Pending::Program(ProgramCommand::Speak(frames)) => {
                    self.queue_program(Command::Speak { frames });
                    continue;
                }
                Pending::Program(ProgramCommand::Mark(name)) => {
                    self.queue_program(Command::BridgeMark { name });
                    continue;
                }
                Pending::Program(ProgramCommand::Clear) => {
                    // not queued: a program's clear is applied at once (program_clear)
                    self.queue_program(Command::BridgeClear);
                    continue;
                }
            };
            let cmd = match action {
                ControlAction::Play {
                    audio,
                    mode,
                    loops,
                    gain_db,
                } => {
                    self.resolve_play(Some(seq), audio, loops, gain_db, mode);
                    continue;
                }
                ControlAction::Pause => Command::Pause,
                ControlAction::Resume => Command::Resume,
                ControlAction::Seek { position_ms } => Command::Seek { position_ms },
                ControlAction::Gain { gain_db } => Command::Gain { gain_db },
                ControlAction::Clear => Command::Clear,
                ControlAction::Mark { name } => Command::Mark { name },
            };
            self.apply_control(seq, Ok(cmd)).await;
        }
    }

    /// Looks `audio` up in a task (`self.resolving`); its outcome is the `play` command
    /// for the queue, answered as control `seq` (none: the bridge program's `play`).
    fn resolve_play(
        &mut self,
        seq: Option<u64>,
        audio: String,
        loops: u32,
        gain_db: f32,
        mode: protocol::agent::PlayMode,
    ) {
        let lib = Arc::clone(&self.ctx.audio);
        self.resolving = Some(tokio::spawn(async move {
            let r = lib.item(&audio).await;
            let cmd = r.map_err(|e| e.to_string()).map(|source| Command::Play {
                item: QueueItem {
                    name: audio,
                    source,
                    loops,
                    gain_db,
                },
                mode,
            });
            (seq, cmd)
        }));
    }

    /// Applies a control to the queue wherever it is, and answers `control_ack`.
    async fn apply_control(&mut self, seq: u64, cmd: Result<Command, String>) {
        let (status, error) = match cmd {
            Err(e) => (self.playback_status().await, Some(e)),
            Ok(cmd) => self.apply_to_queue(cmd).await,
        };
        if let Some(e) = &error {
            tracing::info!(seq, error = %e, "control not applied");
        }
        let _ = self
            .updates
            .send(SessionUpdate::Send(AgentMessage::ControlAck {
                session_id: self.offer.id,
                seq,
                status,
                error,
            }));
    }

    async fn apply_to_queue(&mut self, cmd: Command) -> (PlaybackStatus, Option<String>) {
        let over = || (idle(), Some("the playback is over".to_owned()));
        let tx = match &mut self.queue {
            QueueHome::NotYet => {
                return (
                    idle(),
                    Some("the robot is not ready yet: its audio is loading".into()),
                );
            }
            QueueHome::Here(q) => {
                let r = q.apply(cmd);
                let status = q.status();
                let events: Vec<QueueEvent> = std::iter::from_fn(|| q.poll_event()).collect();
                for e in events {
                    if let Some(i) = self.on_queue_event(e) {
                        self.feed(i);
                    }
                }
                return (status, r.err());
            }
            QueueHome::Playing(tx) => tx.clone(),
        };
        let (reply, answer) = oneshot::channel();
        if tx.send((Some(cmd), reply)).is_err() {
            return over();
        }
        answer.await.unwrap_or_else(|_| over())
    }

    /// A program's `clear` goes ahead of everything still waiting: a `play` of the program
    /// whose asset is being fetched is dropped (it would only be cleared), the program's
    /// audio and marks waiting behind it are queued (so the marks are listed in `cleared`
    /// and the audio counted in `dropped_ms`), then the clear; the API's controls keep
    /// their order. Waiting for a slow asset would let the audio playing now run on for as
    /// long: the leak users of other bridges complain about.
    async fn program_clear(&mut self) {
        if self.resolving_program
            && let Some(r) = self.resolving.take()
        {
            r.abort();
            self.resolving_program = false;
            tracing::debug!("bridge: a play still loading was dropped by a clear");
        }
        let mut keep = VecDeque::new();
        for p in std::mem::take(&mut self.controls) {
            match p {
                Pending::Program(ProgramCommand::Speak(frames)) => {
                    self.queue_program(Command::Speak { frames });
                }
                Pending::Program(ProgramCommand::Mark(name)) => {
                    self.queue_program(Command::BridgeMark { name });
                }
                Pending::Program(ProgramCommand::Play(_) | ProgramCommand::Clear) => {}
                other => keep.push_back(other),
            }
        }
        self.controls = keep;
        self.queue_program(Command::BridgeClear);
        self.next_control().await;
    }

    /// Applies a bridge program's command to the queue wherever it is, without waiting
    /// for an answer (the program hears of marks and clears through queue events).
    fn queue_program(&mut self, cmd: Command) {
        match &mut self.queue {
            QueueHome::NotYet => self.early.push(cmd),
            QueueHome::Here(q) => {
                if let Err(e) = q.apply(cmd) {
                    tracing::debug!(error = %e, "bridge command not applied");
                }
                let events: Vec<QueueEvent> = std::iter::from_fn(|| q.poll_event()).collect();
                for e in events {
                    if let Some(i) = self.on_queue_event(e) {
                        self.feed(i);
                    }
                }
            }
            QueueHome::Playing(tx) => {
                // the answer (a oneshot nobody waits on) is dropped
                let (reply, _) = oneshot::channel();
                let _ = tx.send((Some(cmd), reply));
            }
        }
    }

    /// Tells the bridge's socket task (a bridged session only).
    fn tell_program(&mut self, t: ToProgram) {
        let Some(b) = &mut self.bridge else { return };
        match (&b.to, &b.unusable) {
            (Some(to), _) => {
                let _ = to.send(t);
            }
            (None, Some(e)) => {
                if t == ToProgram::Dial {
                    tracing::error!(error = %e, "bridge target unusable");
                    let _ = b.from_tx.send(FromProgram::DialFailed(e.clone()));
                }
            }
            (None, None) => {}
        }
    }

    /// The playback state, for an answer that changed nothing.
    async fn playback_status(&mut self) -> PlaybackStatus {
        match &self.queue {
            QueueHome::NotYet => idle(),
            QueueHome::Here(q) => q.status(),
            QueueHome::Playing(tx) => {
                let (reply, answer) = oneshot::channel();
                if tx.send((None, reply)).is_err() {
                    return idle();
                }
                answer.await.map_or_else(|_| idle(), |(s, _)| s)
            }
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
                    let wanted = offer_items(&self.offer);
                    let beep = self.offer.record.is_some_and(|r| r.beep);
                    self.loading = Some(tokio::spawn(async move {
                        let mut items = Vec::with_capacity(wanted.len() + 1);
                        for w in wanted {
                            items.push(QueueItem {
                                source: audio.item(&w.audio).await?,
                                name: w.audio,
                                loops: w.loops,
                                gain_db: w.gain_db,
                            });
                        }
                        if beep {
                            items.push(QueueItem {
                                name: super::beep::BEEP.to_owned(),
                                source: super::beep::beep(),
                                loops: 0,
                                gain_db: 0.0,
                            });
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
                // The position stays readable (`self.playback` is kept) for the status.
                Output::StopPlayback => self.end_queue().await,
                Output::Record(action) => self.record(action),
                Output::Bridge(t) => self.tell_program(t),
                Output::Program(ProgramCommand::Clear) => self.program_clear().await,
                Output::Program(c) => {
                    self.controls.push_back(Pending::Program(c));
                    self.next_control().await;
                }
                Output::End(ending) => return Some(ending),
            }
        }
        None
    }

    /// Writes, uploads or finishes a recording.
    fn record(&mut self, action: RecordAction) {
        let part = self.offer.attempt.saturating_sub(1);
        match action {
            RecordAction::Write {
                peer,
                silence_before,
                packet,
                samples,
            } => {
                let r = match self.recorders.get_mut(&peer) {
                    Some(r) => r,
                    None => match Recorder::create(&self.ctx.recording_dir, self.offer.id, part) {
                        Ok(r) => {
                            tracing::info!(peer = %peer, part, "recording");
                            self.recorders.entry(Arc::clone(&peer)).or_insert(r)
                        }
                        Err(e) => {
                            tracing::warn!(peer = %peer, error = %e, "cannot create a recording file");
                            return;
                        }
                    },
                };
                if let Err(e) = r.write(silence_before, &packet, samples) {
                    tracing::warn!(peer = %peer, error = %e, "cannot write a recording");
                }
            }
            RecordAction::Upload { peer } => {
                if let Some(r) = self.recorders.get(&peer) {
                    let (path, len) = r.so_far();
                    self.upload(path, len, peer, part, false, false);
                }
            }
            RecordAction::Finish { peer, last } => {
                let Some(r) = self.recorders.remove(&peer) else {
                    return; // nothing was received from them
                };
                let duration_ms = r.duration_ms();
                match r.finish() {
                    Ok((path, len)) => {
                        tracing::info!(peer = %peer, duration_ms, bytes = len, "recording finished");
                        self.upload(path, len, peer, part, last, true);
                    }
                    Err(e) => tracing::warn!(peer = %peer, error = %e, "cannot finish a recording"),
                }
            }
        }
    }

    fn upload(
        &mut self,
        path: std::path::PathBuf,
        len: u64,
        uid: Arc<str>,
        part: u32,
        last: bool,
        remove: bool,
    ) {
        self.uploads.retain(|u| !u.is_finished());
        let job = recorder::UploadJob {
            path,
            len,
            session_id: self.offer.id,
            uid,
            part,
            last,
            remove,
        };
        self.uploads.push(tokio::spawn(recorder::upload(
            Arc::clone(&self.ctx.recordings),
            job,
        )));
    }

    /// A new listener for `peer`, with its negotiation task.
    async fn create_listener(&mut self, peer: String, generation: u64, role: Role) {
        self.drop_listener(&peer);
        let link = match self
            .ctx
            .transport
            .listener(
                &peer,
                generation,
                &self.ice_servers,
                ListenerSinks {
                    events: self.events_tx.clone(),
                    audio: self.audio_tx.clone(),
                },
            )
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
        let QueueHome::Here(queue) = std::mem::replace(&mut self.queue, QueueHome::NotYet) else {
            return; // the core starts the playback only once the audio is ready
        };
        let (commands, commands_rx) = mpsc::unbounded_channel();
        self.queue = QueueHome::Playing(commands);
        let position = Arc::new(AtomicU64::new(queue.position_ms()));
        let task = self.ctx.media_clock.spawn(play(
            queue,
            commands_rx,
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

    /// Ends the playback queue, so that every mark not reported yet is reported `cleared`
    /// before the session reports its end (a mark is reported exactly once, even when the
    /// session ends or is handed to another agent, which resumes only the offer's items).
    async fn end_queue(&mut self) {
        match std::mem::replace(&mut self.queue, QueueHome::NotYet) {
            QueueHome::NotYet => {}
            QueueHome::Here(mut q) => {
                q.end();
                while let Some(e) = q.poll_event() {
                    self.on_queue_event(e);
                }
            }
            QueueHome::Playing(commands) => {
                // Closing the commands ends the playback task, which ends its queue first.
                // (The task is awaited here only: the queue is `Playing` once.)
                drop(commands);
                if let Some(p) = self.playback.as_mut()
                    && tokio::time::timeout(std::time::Duration::from_secs(1), &mut p.task)
                        .await
                        .is_err()
                {
                    p.task.abort();
                }
                while let Ok(done) = self.done_rx.try_recv() {
                    if let PlaybackDone::Queue(e @ QueueEvent::Mark { .. }) = done {
                        self.on_queue_event(e);
                    }
                }
            }
        }
    }

    async fn shut_down(&mut self) {
        // The recordings go up before the robot leaves the channel and reports its end
        // (an app that sees the robot leave finds the complete recording).
        for u in self.uploads.drain(..) {
            if tokio::time::timeout(std::time::Duration::from_secs(30), u)
                .await
                .is_err()
            {
                tracing::warn!("a recording upload took over 30 s; not waiting for it");
            }
        }
        if let Some(r) = self.resolving.take() {
            r.abort();
        }
        self.end_queue().await;
        // `stop` was queued to the program by the core before the end: let it go out.
        if let Some(mut b) = self.bridge.take() {
            b.to = None;
            if let Some(mut t) = b.task.take()
                && tokio::time::timeout(std::time::Duration::from_millis(1500), &mut t)
                    .await
                    .is_err()
            {
                t.abort();
            }
            let dropped = self.core.bridge_dropped();
            if dropped > 0 {
                tracing::info!(
                    packets = dropped,
                    "bridge: audio heard while the program was away was dropped"
                );
            }
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

/// The next report of the bridge's socket task; pending without a bridge.
async fn from_program(bridge: &mut Option<BridgeTask>) -> FromProgram {
    match bridge {
        Some(b) => match b.from.recv().await {
            Some(f) => f,
            // cannot happen while `from_tx` is held here; wait rather than spin
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
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
/// It owns the [`PlaybackQueue`]: a command from the driver is applied between two frames
/// (so it shows on the next frame) and answered at once. After writing frame `seq` to every
/// connected listener it tells the queue, which is what makes a mark `played`.
///
/// A frame not encoded yet at its deadline (`Pending`) is not sent and the position stays;
/// the pacer is anchored again one frame later, so the stream resumes without a burst.
/// Frames the pacer skips after a long stall are skipped in the queue too. While the queue
/// is idle or paused nothing is sent and no timer runs: the task waits for a command and
/// anchors the pacer again when one comes, so a `resume` or `play` goes out at once.
async fn play(
    mut queue: PlaybackQueue,
    mut commands: mpsc::UnboundedReceiver<QueueCall>,
    listeners: watch::Receiver<Connected>,
    position: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    done: mpsc::UnboundedSender<PlaybackDone>,
) {
    let mut pacer = Pacer::new(now());
    let mut gain: Option<audio::GainStage> = None;
    let mut idle = false;
    loop {
        let wake = tokio::time::Instant::from_std(pacer.poll_timeout());
        let call = tokio::select! {
            biased;
            c = commands.recv() => match c {
                Some(c) => Some(c),
                None => {
                    // The session is over: the marks never played are reported cleared.
                    queue.end();
                    report(&mut queue, &done);
                    return;
                }
            },
            () = tokio::time::sleep_until(wake), if !idle => None,
        };
        if let Some((cmd, reply)) = call {
            let error = cmd.and_then(|c| queue.apply(c).err());
            let _ = reply.send((queue.status(), error));
            report(&mut queue, &done);
            if idle {
                idle = false;
                pacer = Pacer::new(now());
            }
            continue;
        }
        let t = now();
        while let Some(due) = pacer.poll(t) {
            let skipped = if due.skipped > 0 {
                queue.skip(due.skipped)
            } else {
                0
            };
            match queue.next_frame() {
                Next::Frame {
                    seq,
                    frame,
                    gain_db,
                } => {
                    let frame = if gain_db == 0.0 {
                        frame
                    } else {
                        match with_gain(&mut gain, &frame, gain_db) {
                            Ok(f) => f,
                            Err(e) => {
                                tracing::debug!(error = %e, "gain not applied to a frame");
                                frame
                            }
                        }
                    };
                    let to: Connected = Arc::clone(&listeners.borrow());
                    let skipped16 = u16::try_from(skipped).unwrap_or(u16::MAX);
                    let mut sent = 0;
                    for l in to.iter() {
                        match l.send_frame(frame.clone(), skipped16).await {
                            Ok(()) => sent += 1,
                            Err(e) => tracing::debug!(error = %e, "frame not sent"),
                        }
                    }
                    queue.written(seq);
                    metrics.frame_sent(due.lateness, sent, skipped);
                }
                Next::Pending => {
                    metrics.frame_pending();
                    pacer = Pacer::new(t + FRAME);
                    break;
                }
                Next::Idle => {
                    idle = true;
                    break;
                }
                Next::Failed(error) => {
                    let position_ms = queue.position_ms();
                    position.store(position_ms, Ordering::Relaxed);
                    report(&mut queue, &done);
                    let _ = done.send(PlaybackDone::Failed { error, position_ms });
                    return;
                }
            }
        }
        position.store(queue.position_ms(), Ordering::Relaxed);
        report(&mut queue, &done);
    }
}

/// The frame at `gain_db`, through a gain stage made on first use.
fn with_gain(
    stage: &mut Option<audio::GainStage>,
    frame: &[u8],
    gain_db: f32,
) -> Result<bytes::Bytes, audio::AudioError> {
    let s = match stage {
        Some(s) => s,
        None => stage.insert(audio::GainStage::new(GAIN_BITRATE)?),
    };
    s.apply(frame, gain_db)
}

/// The bitrate frames played at a gain are encoded again at.
const GAIN_BITRATE: u32 = 48_000;

/// Sends the queue's events to the driver.
fn report(queue: &mut PlaybackQueue, done: &mpsc::UnboundedSender<PlaybackDone>) {
    while let Some(e) = queue.poll_event() {
        let _ = done.send(PlaybackDone::Queue(e));
    }
}

/// The offer's queue: `items` when the API filled it, else (without a bridge) `playlist`
/// (or `audio`) once each at 0 dB.
fn offer_items(offer: &SessionOffer) -> Vec<protocol::agent::PlaylistItem> {
    if !offer.items.is_empty() {
        return offer.items.clone();
    }
    if offer.bridge.is_some() {
        // A bridged robot without audio: its program says what to play (the API fills
        // `items` whenever there is audio, and sends `audio: "default"` regardless).
        return Vec::new();
    }
    let names = if offer.playlist.is_empty() {
        vec![offer.audio.clone()]
    } else {
        offer.playlist.clone()
    };
    names
        .into_iter()
        .map(|audio| protocol::agent::PlaylistItem {
            audio,
            loops: 0,
            gain_db: 0.0,
        })
        .collect()
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
