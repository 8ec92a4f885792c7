//! The robot session, sans-IO: who is in the channel, which listeners to make, when to
//! play, report and leave.
//!
//! ```text
//!            new ─► Status(joining), Join, LoadAudio
//!                         │
//!       ┌─────────────────┴──────────────────┐
//!   Joined {peers}                      AudioReady {frames}         JoinFailed / AudioFailed
//!   CreateListener(offer) per peer      (either order)              ─► End(failed)
//!       └─────────────────┬──────────────────┘
//!                         ▼ both: live (the leave rules run from here)
//!   ListenerConnected ─► ListenerLive; the first one (audio ready) ─► StartPlayback{first},
//!                         Status(playing, position) and again every `position_every`
//!   PeerJoined / PeerLeft / Signal{offer} ─► CloseListener / CreateListener(answer)
//!   SocketLost ─► Join now; JoinFailed ─► Join again after 250 ms, 500 ms, 1 s, 2 s, 2 s...
//!                 until `rejoin_for` has passed (a refusal is final) ─► End(failed)
//!               Joined ─► CreateListener(offer) to every listed peer
//!   PlaybackEnded ─► (not looping) End(left "audio ended") `tail` later
//!   PlaybackFailed ─► End(failed)
//!   Leave ─► End(left "told to leave")       Kicked ─► End(left "kicked: R")
//!   HandBack ─► End(handed back)             nobody there for `leave_grace` ─► End(left)
//!   every End is preceded by StopPlayback (when playing) and CloseListener of each listener
//! ```
//!
//! Time comes in as an argument (`now`, a [`std::time::Instant`] the driver reads from
//! tokio's clock, so paused-time tests drive it too); nothing here reads a clock, touches a
//! socket or spawns a task, so every leave rule, the rejoin backoff and the status timer
//! are unit tested below on made-up instants.
//!
//! **Driving loop** (see `driver.rs`):
//!
//! ```text
//!   let mut core = SessionCore::new(plan, config);
//!   loop {
//!       while let Some(out) = core.poll_output() { execute(out) }   // End(..) stops the loop
//!       wait for the next event, or until core.poll_timeout()
//!       if playing { core.handle_input(now, Input::Position { position_ms }) }
//!       core.handle_input(now, event as Input)          // Input::Timeout when the timer fired
//!   }
//! ```
//!
//! The playback runs elsewhere (on the media clock), so the core learns its position from
//! [`Input::Position`], fed by the driver before each other input while it plays; the
//! position of a status or of the end is the last one fed.
//!
//! Who counts as present (for `leave_grace`): a peer in the channel (listed in `joined`,
//! `peer_joined`, or the sender of a signal) or a listener whose media is up, even while
//! its peer is not in the channel (the socket is rejoining). The clock of that rule starts
//! once the session is live (joined and audio ready), as the rule is about listeners.
//!
//! **A media bridge** (`Plan::bridge`, DESIGN.md decision 9): the core holds the bridge's
//! [`BridgeLink`] (when to dial, redial, give up) and decides what the program is told.
//!
//! ```text
//!   new ─► Bridge(Dial)         Bridge(Connected) ─► Bridge(Start{resume}), participants
//!   Audio ─► Bridge(Audio) while up, or before the first connection (kept for the program);
//!            dropped (counted) in a redial's gap
//!   persons change ─► Bridge(Send(participant joined/left)) while up
//!   Bridge(Command) ─► Program(..) (the driver queues it in order)    Bridge(Hangup) ─► End(left)
//!   Bridge(Closed) ─► Dial at once; DialFailed ─► Dial again after 100 ms doubling to 1 s;
//!   10 s without the program, or a refusal ─► End(left "bridge_lost: ...")
//!   every End of a bridged session is preceded by Bridge(Stop{reason})
//! ```
//!
//! A bridged session does not end when its queue runs out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::agent::SessionState;
use protocol::backoff::Backoff;

use super::Control;
use super::voicemail::{RecordAction, RecordPlan, Voicemail};
use crate::bridge::{
    AgentEvent, BridgeLink, FromProgram, LinkAction, ProgramCommand, RESUME_WINDOW, StopReason,
    ToProgram,
};
use crate::error::AgentError;
use crate::signaling::JoinError;

/// The delays between two rejoin attempts: 250 ms doubling to 2 s.
pub const REJOIN_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(250), Duration::from_secs(2));

/// The timings of a session: its leave rules and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Leave after this long without a person in the channel.
    pub leave_grace: Duration,
    /// Stay this long after the last frame (the listener's jitter buffer plays it out).
    pub tail: Duration,
    /// Report the playback position this often.
    pub position_every: Duration,
    /// How long to keep trying to join again after the `/rtc` socket is lost.
    pub rejoin_for: Duration,
}

/// What to play, from the offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The first frame of the playlist to play (a resume: `position_ms / 20`).
    pub first_frame: u64,
    /// Play the playlist again and again (the audio never ends the session).
    pub looping: bool,
    /// Voicemail: once the audio is over, record every other participant, then leave.
    pub record: Option<RecordPlan>,
    /// A media bridge: the robot dials a program, streams what it hears to it and plays
    /// what it says; the audio running out does not end the session.
    pub bridge: bool,
}

/// Which side of the negotiation a new listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The robot offers (the peer was there before it: listed in `joined`).
    Offer,
    /// The peer offered (a newcomer); the robot answers.
    Answer,
}

/// Something that happened to the session.
#[derive(Debug)]
pub enum Input {
    /// A join (the first, or one after [`Input::SocketLost`]) completed with these peers.
    Joined {
        /// Uids already in the channel.
        peers: Vec<String>,
    },
    /// A join failed.
    JoinFailed(JoinError),
    /// Every item of the playlist can be read.
    AudioReady {
        /// Frames in the whole playlist, when known now (not for a stream still encoding).
        frames: Option<u64>,
    },
    /// The playlist could not be had.
    AudioFailed(AgentError),
    /// `peer_joined`: a peer came (it will offer; an older connection of it is gone).
    PeerJoined {
        /// Its uid.
        peer: String,
    },
    /// `peer_left`.
    PeerLeft {
        /// Its uid.
        peer: String,
    },
    /// A `signal` from a peer (the driver routes its payload to the listener afterwards).
    Signal {
        /// The sender.
        from: String,
        /// It is an SDP offer (a newcomer's, or a renegotiation).
        offer: bool,
    },
    /// A listener's media is up.
    ListenerConnected {
        /// Its uid.
        peer: String,
        /// Which listener of that uid.
        generation: u64,
    },
    /// A listener's connection is gone (closed, failed, negotiation failed, not created).
    ListenerClosed {
        /// Its uid.
        peer: String,
        /// Which listener of that uid.
        generation: u64,
    },
    /// The `/rtc` socket closed or failed.
    SocketLost,
    /// `kicked` on `/rtc`.
    Kicked {
        /// The reason given.
        reason: String,
    },
    /// A command from the agent link.
    Control(Control),
    /// Where the playback is now.
    Position {
        /// In ms of the playlist.
        position_ms: u64,
    },
    /// The playback queue ran out by playing its last item (not looping).
    PlaybackEnded {
        /// Its final position.
        position_ms: u64,
    },
    /// Something was queued (a `play` control) after [`Input::PlaybackEnded`].
    PlaybackRefilled,
    /// The playback stopped on an error of its frames.
    PlaybackFailed {
        /// What the frame source said.
        error: String,
        /// Where it stopped.
        position_ms: u64,
    },
    /// One RTP packet of a participant's audio (the Opus payload as received).
    Audio {
        /// The sender.
        peer: Arc<str>,
        /// Its RTP timestamp.
        timestamp: u32,
        /// The Opus packet.
        payload: Bytes,
    },
    /// The bridge's socket task reports (bridged sessions).
    Bridge(FromProgram),
    /// Time passed (call at [`SessionCore::poll_timeout`]).
    Timeout,
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Output {
    /// Send a `status` (`joining` or `playing`) to the link.
    Status {
        /// The state.
        state: SessionState,
        /// The playback position.
        position_ms: Option<u64>,
    },
    /// Join the channel now (a first join, or a rejoin attempt); answer with
    /// [`Input::Joined`] or [`Input::JoinFailed`].
    Join,
    /// Fetch and open the playlist; answer with [`Input::AudioReady`] or
    /// [`Input::AudioFailed`].
    LoadAudio,
    /// Make a connection to `peer` (after closing any older one); on failure feed
    /// [`Input::ListenerClosed`]. Its state changes come back as `ListenerConnected` /
    /// `ListenerClosed`.
    CreateListener {
        /// The listener's uid.
        peer: String,
        /// Which listener of that uid.
        generation: u64,
        /// Whether the robot offers or answers.
        role: Role,
    },
    /// The listener's media is up: send it the frames.
    ListenerLive {
        /// Its uid.
        peer: String,
        /// Which listener of that uid.
        generation: u64,
    },
    /// Stop sending to the listener and close its connection.
    CloseListener {
        /// Its uid.
        peer: String,
        /// Which listener of that uid.
        generation: u64,
    },
    /// Start the playback at this frame of the playlist.
    StartPlayback {
        /// The first frame.
        first_frame: u64,
    },
    /// Stop the playback.
    StopPlayback,
    /// Write to, upload or finish a participant's recording (voicemail).
    Record(RecordAction),
    /// Tell the bridge's socket task (dial, start, an event, a participant's packet, stop).
    Bridge(ToProgram),
    /// Apply a bridge program's message to the playback queue, in order.
    Program(ProgramCommand),
    /// The session is over: leave the channel, report the final status. Nothing follows.
    End(Ending),
}

/// Why the session left of its own accord or was told to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeftReason {
    /// `leave {session_id}` from the API.
    #[error("told to leave")]
    ToldTo,
    /// `kicked` on `/rtc`.
    #[error("kicked: {0}")]
    Kicked(String),
    /// Nobody in the channel for the grace period.
    #[error("nobody in the channel for {} s", .0.as_secs())]
    Alone(Duration),
    /// The audio ended (not looping) and the tail passed.
    #[error("audio ended")]
    AudioEnded,
    /// Voicemail: every recording is over (`.0` of them had audio).
    #[error("voicemail recorded: {0} recording(s)")]
    Recorded(usize),
    /// The bridge program sent `hangup`.
    #[error("the bridge program hung up")]
    Hangup,
    /// The bridge program was lost and not had again in time, or refused the robot.
    #[error("bridge_lost: {0}")]
    BridgeLost(String),
}

/// How a session ended.
#[derive(Debug)]
pub enum Outcome {
    /// Left the channel (`left`).
    Left(LeftReason),
    /// Failed (`failed`): the API offers it again.
    Failed(AgentError),
    /// Handed back on a drain (`failed` with a detail starting `handed back`): the API
    /// offers it again from its position.
    HandedBack {
        /// The hand-back came before the session was in its channel.
        before_joining: bool,
    },
}

impl Outcome {
    /// The final state reported.
    pub fn state(&self) -> SessionState {
        match self {
            Self::Left(_) => SessionState::Left,
            Self::Failed(_) | Self::HandedBack { .. } => SessionState::Failed,
        }
    }

    /// The label of `robot_sessions_ended_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Left(_) => "left",
            Self::Failed(_) => "failed",
            Self::HandedBack { .. } => "handed_back",
        }
    }
}

impl std::fmt::Display for Outcome {
    /// The status detail.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Left(r) => std::fmt::Display::fmt(r, f),
            Self::Failed(e) => std::fmt::Display::fmt(e, f),
            Self::HandedBack {
                before_joining: false,
            } => f.write_str("handed back: agent draining"),
            Self::HandedBack {
                before_joining: true,
            } => f.write_str("handed back: agent draining (before joining)"),
        }
    }
}

/// The end of a session: how, and where the playback was.
#[derive(Debug)]
pub struct Ending {
    /// How.
    pub outcome: Outcome,
    /// The playback position (none when nothing played).
    pub position_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Socket {
    /// The first join is under way.
    Joining,
    /// In the channel.
    Up,
    /// Lost; joining again.
    Rejoining {
        /// Give up after this.
        give_up_at: Instant,
        /// Failed attempts so far (the delay after the next failure follows from it).
        failures: u64,
        /// The next attempt (none while one is under way).
        next_attempt: Option<Instant>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Playback {
    NotStarted,
    Playing {
        next_status: Instant,
    },
    /// The last frame went out at this instant.
    Ended {
        at: Instant,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listener {
    generation: u64,
    connected: bool,
}

/// A bridged session's view of its program.
#[derive(Debug)]
struct Bridge {
    link: BridgeLink,
    /// The participants the program was told of (since its last `start`).
    announced: BTreeSet<String>,
    /// Packets heard while the program was away (the gap of a redial).
    dropped: u64,
}

/// One robot session's state. See the module docs for the driving loop.
#[derive(Debug)]
pub struct SessionCore {
    config: SessionConfig,
    plan: Plan,
    out: VecDeque<Output>,
    socket: Socket,
    /// `Some` once the audio is ready: its length when known.
    audio: Option<Option<u64>>,
    /// The leave rules run (joined once and audio ready).
    live: bool,
    persons: BTreeSet<String>,
    listeners: BTreeMap<String, Listener>,
    next_generation: u64,
    /// Since when nobody is present (live only).
    alone_since: Option<Instant>,
    playback: Playback,
    position_ms: Option<u64>,
    ended: bool,
    /// Recording (voicemail, once the audio is over).
    voicemail: Option<Voicemail>,
    /// The media bridge.
    bridge: Option<Bridge>,
}

impl SessionCore {
    /// A session starting at `now`: it reports `joining`, joins and loads its audio.
    pub fn new(plan: Plan, config: SessionConfig) -> Self {
        let mut out = VecDeque::new();
        out.push_back(Output::Status {
            state: SessionState::Joining,
            position_ms: None,
        });
        out.push_back(Output::Join);
        out.push_back(Output::LoadAudio);
        let bridge = plan.bridge.then(|| Bridge {
            link: BridgeLink::new(RESUME_WINDOW),
            announced: BTreeSet::new(),
            dropped: 0,
        });
        let mut core = Self {
            config,
            plan,
            out,
            socket: Socket::Joining,
            audio: None,
            live: false,
            persons: BTreeSet::new(),
            listeners: BTreeMap::new(),
            next_generation: 1,
            alone_since: None,
            playback: Playback::NotStarted,
            position_ms: None,
            ended: false,
            voicemail: None,
            bridge,
        };
        core.bridge_step();
        core
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to feed [`Input::Timeout`] next; `None`: only other inputs matter.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let mut at: Option<Instant> = None;
        let mut min = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if let Some(t) = self.alone_since {
            min(t + self.config.leave_grace);
        }
        match self.playback {
            Playback::Playing { next_status } => min(next_status),
            Playback::Ended { at: t } => min(t + self.config.tail),
            _ => {}
        }
        if let Socket::Rejoining {
            next_attempt: Some(t),
            ..
        } = self.socket
        {
            min(t);
        }
        if let Some(t) = self.voicemail.as_ref().and_then(Voicemail::poll_timeout) {
            min(t);
        }
        if let Some(t) = self.bridge.as_ref().and_then(|b| b.link.poll_timeout()) {
            min(t);
        }
        at
    }

    /// Packets heard while the bridge program was away (a redial's gap), dropped.
    pub fn bridge_dropped(&self) -> u64 {
        self.bridge.as_ref().map_or(0, |b| b.dropped)
    }

    /// The session is over (an [`Output::End`] was queued).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Peers present in the channel, as the core counts them.
    pub fn persons(&self) -> impl Iterator<Item = &str> {
        self.persons.iter().map(String::as_str)
    }

    /// Handles one input at `now`.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        if self.ended {
            return;
        }
        self.on_input(now, input);
        if !self.ended {
            self.sync_participants();
        }
    }

    fn on_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Joined { peers } => self.on_joined(now, peers),
            Input::JoinFailed(e) => self.on_join_failed(now, e),
            Input::AudioReady { frames } => {
                self.audio = Some(frames);
                self.maybe_live(now);
            }
            Input::AudioFailed(e) => self.end(Outcome::Failed(e)),
            Input::PeerJoined { peer } => {
                self.close_listener(&peer);
                if let Some(v) = &mut self.voicemail {
                    v.add(now, &peer);
                }
                self.persons.insert(peer);
                self.update_alone(now);
            }
            Input::PeerLeft { peer } => {
                self.close_listener(&peer);
                if let Some(v) = &mut self.voicemail {
                    v.left(&peer);
                }
                self.persons.remove(&peer);
                self.update_alone(now);
                self.voicemail_step();
            }
            Input::Signal { from, offer } => {
                if let Some(v) = &mut self.voicemail {
                    v.add(now, &from);
                }
                self.persons.insert(from.clone());
                self.update_alone(now);
                if offer && !self.listeners.contains_key(&from) {
                    self.create_listener(from, Role::Answer);
                }
            }
            Input::ListenerConnected { peer, generation } => {
                let Some(l) = self.listeners.get_mut(&peer) else {
                    return;
                };
                if l.generation != generation || l.connected {
                    return; // an old connection of that uid, or a repeat
                }
                l.connected = true;
                self.out
                    .push_back(Output::ListenerLive { peer, generation });
                self.update_alone(now);
                self.maybe_play(now);
            }
            Input::ListenerClosed { peer, generation } => {
                if self
                    .listeners
                    .get(&peer)
                    .is_some_and(|l| l.generation == generation)
                {
                    self.close_listener(&peer);
                    self.update_alone(now);
                }
            }
            Input::SocketLost => {
                if self.socket == Socket::Up {
                    self.socket = Socket::Rejoining {
                        give_up_at: now + self.config.rejoin_for,
                        failures: 0,
                        next_attempt: None,
                    };
                    self.out.push_back(Output::Join);
                }
            }
            Input::Kicked { reason } => self.end(Outcome::Left(LeftReason::Kicked(reason))),
            Input::Control(Control::Leave) => self.end(Outcome::Left(LeftReason::ToldTo)),
            Input::Control(Control::HandBack) => self.end(Outcome::HandedBack {
                before_joining: !self.live,
            }),
            // Playback controls go to the playback queue (the driver routes them).
            Input::Control(Control::Playback { .. }) => {}
            Input::Position { position_ms } => {
                if self.playback != Playback::NotStarted {
                    self.position_ms = Some(position_ms);
                }
            }
            Input::PlaybackEnded { position_ms } => {
                if matches!(self.playback, Playback::Playing { .. }) {
                    self.position_ms = Some(position_ms);
                    match self.plan.record {
                        // Voicemail: the greeting (and beep) is over; record everyone.
                        Some(plan) if self.voicemail.is_none() => {
                            self.voicemail =
                                Some(Voicemail::start(plan, now, self.persons.iter().cloned()));
                            self.voicemail_step();
                        }
                        Some(_) => {}
                        // A bridged robot waits for its program to say more.
                        None if self.plan.bridge => {}
                        None => self.playback = Playback::Ended { at: now },
                    }
                }
            }
            Input::Audio {
                peer,
                timestamp,
                payload,
            } => {
                if let Some(b) = &mut self.bridge {
                    // Heard before the first connection: kept for the program (the start
                    // of speech is not clipped). Heard during a redial's gap: dropped.
                    if b.link.is_up() || b.link.before_first() {
                        self.out.push_back(Output::Bridge(ToProgram::Audio {
                            peer: Arc::clone(&peer),
                            timestamp,
                            payload: payload.clone(),
                        }));
                    } else {
                        b.dropped += 1;
                    }
                }
                if let Some(v) = &mut self.voicemail {
                    v.packet(now, &peer, timestamp, payload);
                    self.voicemail_step();
                }
            }
            Input::Bridge(f) => self.on_bridge(now, f),
            Input::PlaybackRefilled => {
                if matches!(self.playback, Playback::Ended { .. }) {
                    self.playback = Playback::Playing {
                        next_status: now + self.config.position_every,
                    };
                }
            }
            Input::PlaybackFailed { error, position_ms } => {
                self.position_ms = Some(position_ms);
                self.end(Outcome::Failed(AgentError::AudioFailed(error)));
            }
            Input::Timeout => self.on_timeout(now),
        }
    }

    fn on_bridge(&mut self, now: Instant, f: FromProgram) {
        let Some(b) = &mut self.bridge else { return };
        match f {
            FromProgram::Connected => {
                if let Some(resume) = b.link.connected() {
                    self.out
                        .push_back(Output::Bridge(ToProgram::Start { resume }));
                    // the participants follow the start (sync_participants)
                    b.announced.clear();
                }
            }
            FromProgram::DialFailed(e) => b.link.dial_failed(now, &e),
            FromProgram::Closed(_) => b.link.closed(now),
            FromProgram::Command(c) => {
                if b.link.is_up() {
                    self.out.push_back(Output::Program(c));
                }
            }
            FromProgram::Hangup => return self.end(Outcome::Left(LeftReason::Hangup)),
            // logged and counted by the socket task; the call goes on
            FromProgram::Bad(_) => {}
        }
        self.bridge_step();
    }

    /// Does what the bridge's link asks: dial, or give up (the robot leaves).
    fn bridge_step(&mut self) {
        let Some(b) = &mut self.bridge else { return };
        let mut gone = None;
        while let Some(a) = b.link.poll_action() {
            match a {
                LinkAction::Dial { .. } => self.out.push_back(Output::Bridge(ToProgram::Dial)),
                LinkAction::GiveUp(why) => gone = Some(why),
            }
        }
        if let Some(why) = gone {
            self.end(Outcome::Left(LeftReason::BridgeLost(why)));
        }
    }

    /// Tells a connected program who joined and left since it last heard.
    fn sync_participants(&mut self) {
        let Some(b) = &mut self.bridge else { return };
        if !b.link.is_up() || b.announced == self.persons {
            return;
        }
        for uid in b.announced.difference(&self.persons) {
            self.out
                .push_back(Output::Bridge(ToProgram::Send(AgentEvent::Participant {
                    uid: uid.clone(),
                    joined: false,
                })));
        }
        for uid in self.persons.difference(&b.announced) {
            self.out
                .push_back(Output::Bridge(ToProgram::Send(AgentEvent::Participant {
                    uid: uid.clone(),
                    joined: true,
                })));
        }
        b.announced.clone_from(&self.persons);
    }

    fn on_joined(&mut self, now: Instant, peers: Vec<String>) {
        let first = self.socket == Socket::Joining;
        self.socket = Socket::Up;
        // The robot is the newcomer: it offers to every listed peer (each dropped any old
        // connection to it on its `peer_joined`). Listeners still connected but not listed
        // keep playing until they leave or rejoin.
        self.persons = peers.iter().cloned().collect();
        for p in peers {
            self.create_listener(p, Role::Offer);
        }
        if first {
            self.maybe_live(now);
        } else {
            self.update_alone(now);
        }
    }

    fn on_join_failed(&mut self, now: Instant, e: JoinError) {
        match self.socket {
            Socket::Joining => self.end(Outcome::Failed(AgentError::JoinFailed(e))),
            Socket::Up => {}
            Socket::Rejoining {
                give_up_at,
                failures,
                ..
            } => {
                let delay = REJOIN_BACKOFF.delay(failures);
                if matches!(e, JoinError::Refused { .. }) || now + delay >= give_up_at {
                    self.end(Outcome::Failed(AgentError::rejoin(
                        e,
                        self.config.rejoin_for,
                    )));
                } else {
                    self.socket = Socket::Rejoining {
                        give_up_at,
                        failures: failures.saturating_add(1),
                        next_attempt: Some(now + delay),
                    };
                }
            }
        }
    }

    /// Passes the recordings' actions on; leaves once every recording is over.
    fn voicemail_step(&mut self) {
        let Some(v) = &mut self.voicemail else { return };
        self.out.extend(v.drain().map(Output::Record));
        if v.is_done() {
            let n = v.recorded();
            self.end(Outcome::Left(LeftReason::Recorded(n)));
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        if let Some(b) = &mut self.bridge {
            b.link.timeout(now);
            self.bridge_step();
            if self.ended {
                return;
            }
        }
        if let Some(v) = &mut self.voicemail {
            v.timeout(now);
            self.voicemail_step();
            if self.ended {
                return;
            }
        }
        if let Playback::Ended { at } = self.playback
            && now >= at + self.config.tail
        {
            self.end(Outcome::Left(LeftReason::AudioEnded));
            return;
        }
        if let Some(t) = self.alone_since
            && now >= t + self.config.leave_grace
        {
            self.end(Outcome::Left(LeftReason::Alone(self.config.leave_grace)));
            return;
        }
        if let Socket::Rejoining {
            give_up_at,
            failures,
            next_attempt: Some(t),
        } = self.socket
            && now >= t
        {
            self.socket = Socket::Rejoining {
                give_up_at,
                failures,
                next_attempt: None,
            };
            self.out.push_back(Output::Join);
        }
        if let Playback::Playing { next_status } = self.playback
            && now >= next_status
        {
            self.playback = Playback::Playing {
                next_status: now + self.config.position_every,
            };
            self.out.push_back(Output::Status {
                state: SessionState::Playing,
                position_ms: self.position_ms,
            });
        }
    }

    /// Joined and audio ready: the leave rules start, and so may the playback.
    fn maybe_live(&mut self, now: Instant) {
        if self.live || self.socket == Socket::Joining {
            return;
        }
        let Some(frames) = self.audio else { return };
        self.live = true;
        if let Some(total) = frames
            && !self.plan.looping
            && !self.plan.bridge
            && self.plan.record.is_none()
            && self.plan.first_frame >= total
        {
            // A resume at (or past) the end: nothing left to play.
            self.position_ms = Some(total.saturating_mul(20));
            self.end(Outcome::Left(LeftReason::AudioEnded));
            return;
        }
        self.update_alone(now);
        self.maybe_play(now);
    }

    /// Starts the playback on the first connected listener, once live.
    fn maybe_play(&mut self, now: Instant) {
        if !self.live
            || self.playback != Playback::NotStarted
            || !self.listeners.values().any(|l| l.connected)
        {
            return;
        }
        let first = self.plan.first_frame;
        let start = match self.audio {
            Some(Some(total)) if self.plan.looping && total > 0 => first % total,
            _ => first,
        };
        self.position_ms = Some(start.saturating_mul(20));
        self.playback = Playback::Playing {
            next_status: now + self.config.position_every,
        };
        self.out
            .push_back(Output::StartPlayback { first_frame: first });
        self.out.push_back(Output::Status {
            state: SessionState::Playing,
            position_ms: self.position_ms,
        });
    }

    /// Nobody is there when no peer is in the channel and no listener's media is up.
    fn update_alone(&mut self, now: Instant) {
        if !self.live {
            return;
        }
        let alone = self.persons.is_empty() && !self.listeners.values().any(|l| l.connected);
        if !alone {
            self.alone_since = None;
        } else if self.alone_since.is_none() {
            self.alone_since = Some(now);
        }
    }

    fn create_listener(&mut self, peer: String, role: Role) {
        self.close_listener(&peer);
        let generation = self.next_generation;
        self.next_generation += 1;
        self.listeners.insert(
            peer.clone(),
            Listener {
                generation,
                connected: false,
            },
        );
        self.out.push_back(Output::CreateListener {
            peer,
            generation,
            role,
        });
    }

    fn close_listener(&mut self, peer: &str) {
        if let Some(l) = self.listeners.remove(peer) {
            self.out.push_back(Output::CloseListener {
                peer: peer.to_owned(),
                generation: l.generation,
            });
        }
    }

    fn end(&mut self, outcome: Outcome) {
        if self.ended {
            return;
        }
        if matches!(
            self.playback,
            Playback::Playing { .. } | Playback::Ended { .. }
        ) {
            self.out.push_back(Output::StopPlayback);
        }
        if let Some(v) = &mut self.voicemail {
            // Handed back or failed: the session is offered again and records on into the
            // next part, so what there is goes up as it is. Otherwise the call is over.
            match outcome {
                Outcome::HandedBack { .. } | Outcome::Failed(_) => v.flush_all(),
                Outcome::Left(_) => v.finish_all(),
            }
            self.out.extend(v.drain().map(Output::Record));
        }
        if self.bridge.is_some() {
            self.out
                .push_back(Output::Bridge(ToProgram::Stop(stop_reason(&outcome))));
        }
        let peers: Vec<String> = self.listeners.keys().cloned().collect();
        for p in peers {
            self.close_listener(&p);
        }
        self.ended = true;
        self.out.push_back(Output::End(Ending {
            outcome,
            position_ms: self.position_ms,
        }));
    }
}

/// The bridge's `stop.reason` for an outcome.
fn stop_reason(o: &Outcome) -> StopReason {
    match o {
        Outcome::Left(LeftReason::Kicked(_)) => StopReason::Kicked,
        Outcome::Left(LeftReason::Alone(_)) => StopReason::Left,
        Outcome::Left(
            LeftReason::ToldTo
            | LeftReason::AudioEnded
            | LeftReason::Recorded(_)
            | LeftReason::Hangup,
        ) => StopReason::Ended,
        Outcome::Left(LeftReason::BridgeLost(_))
        | Outcome::Failed(_)
        | Outcome::HandedBack { .. } => StopReason::Error,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::signaling::codes;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config() -> SessionConfig {
        SessionConfig {
            leave_grace: Duration::from_secs(10),
            tail: Duration::from_secs(1),
            position_every: Duration::from_secs(2),
            rejoin_for: Duration::from_secs(30),
        }
    }

    fn plan() -> Plan {
        Plan {
            first_frame: 0,
            looping: false,
            record: None,
            bridge: false,
        }
    }

    /// A core on a manual clock, collecting what it says.
    struct Clock {
        core: SessionCore,
        t0: Instant,
        now: Instant,
    }

    impl Clock {
        fn new(plan: Plan, config: SessionConfig) -> Self {
            let t0 = Instant::now();
            Self {
                core: SessionCore::new(plan, config),
                t0,
                now: t0,
            }
        }

        fn at(&mut self, offset: Duration) -> &mut Self {
            self.now = self.t0 + offset;
            self
        }

        fn input(&mut self, i: Input) -> Vec<Output> {
            self.core.handle_input(self.now, i);
            self.drain()
        }

        fn drain(&mut self) -> Vec<Output> {
            std::iter::from_fn(|| self.core.poll_output()).collect()
        }

        /// Feeds `Timeout` at every deadline up to `until`; the outputs of all of them.
        fn run_until(&mut self, until: Duration) -> Vec<Output> {
            let end = self.t0 + until;
            let mut out = Vec::new();
            while let Some(t) = self.core.poll_timeout() {
                if t > end {
                    break;
                }
                self.now = t;
                out.extend(self.input(Input::Timeout));
            }
            self.now = end;
            out
        }

        /// Feeds `Timeout` at each deadline until the core asks for a join; when.
        fn until_join(&mut self) -> Duration {
            loop {
                let t = self.core.poll_timeout().unwrap();
                self.now = t;
                let out = self.input(Input::Timeout);
                assert!(ending(&out).is_none(), "{out:?}");
                if count(&out, |o| matches!(o, Output::Join)) == 1 {
                    return t - self.t0;
                }
            }
        }

        /// Joined with `peers`, the audio ready with `frames`.
        fn live(&mut self, peers: &[&str], frames: Option<u64>) -> Vec<Output> {
            let mut out = self.drain();
            out.extend(self.input(Input::Joined {
                peers: peers.iter().map(|p| (*p).to_owned()).collect(),
            }));
            out.extend(self.input(Input::AudioReady { frames }));
            out
        }

        fn connect(&mut self, peer: &str, generation: u64) -> Vec<Output> {
            self.input(Input::ListenerConnected {
                peer: peer.into(),
                generation,
            })
        }
    }

    fn ending(out: &[Output]) -> Option<&Ending> {
        out.iter().find_map(|o| match o {
            Output::End(e) => Some(e),
            _ => None,
        })
    }

    fn detail(out: &[Output]) -> String {
        ending(out)
            .map(|e| e.outcome.to_string())
            .unwrap_or_default()
    }

    fn statuses(out: &[Output]) -> Vec<(SessionState, Option<u64>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Status { state, position_ms } => Some((*state, *position_ms)),
                _ => None,
            })
            .collect()
    }

    fn created(out: &[Output]) -> Vec<(String, u64, Role)> {
        out.iter()
            .filter_map(|o| match o {
                Output::CreateListener {
                    peer,
                    generation,
                    role,
                } => Some((peer.clone(), *generation, *role)),
                _ => None,
            })
            .collect()
    }

    fn count(out: &[Output], f: impl Fn(&Output) -> bool) -> usize {
        out.iter().filter(|o| f(o)).count()
    }

    #[test]
    fn a_new_session_reports_joining_joins_and_loads_its_audio() {
        let mut c = Clock::new(plan(), config());
        let out = c.drain();
        assert!(matches!(
            out.as_slice(),
            [
                Output::Status {
                    state: SessionState::Joining,
                    position_ms: None
                },
                Output::Join,
                Output::LoadAudio
            ]
        ));
        assert_eq!(c.core.poll_timeout(), None);
    }

    #[test]
    fn the_robot_offers_to_every_peer_in_joined_and_plays_on_the_first_listener() {
        let mut c = Clock::new(plan(), config());
        let out = c.live(&["a", "b"], Some(500));
        assert_eq!(
            created(&out),
            vec![("a".into(), 1, Role::Offer), ("b".into(), 2, Role::Offer)]
        );
        assert_eq!(
            count(&out, |o| matches!(o, Output::StartPlayback { .. })),
            0
        );
        // b's media comes up first: playback starts at once, from the beginning
        c.at(ms(700));
        let out = c.connect("b", 2);
        assert!(matches!(
            out.as_slice(),
            [
                Output::ListenerLive { generation: 2, .. },
                Output::StartPlayback { first_frame: 0 },
                Output::Status {
                    state: SessionState::Playing,
                    position_ms: Some(0)
                }
            ]
        ));
        // a second listener joins the playback, which is not started again
        let out = c.connect("a", 1);
        assert!(matches!(
            out.as_slice(),
            [Output::ListenerLive { generation: 1, .. }]
        ));
        // a repeated event changes nothing
        assert!(c.connect("a", 1).is_empty());
    }

    #[test]
    fn playback_waits_for_the_audio_when_a_listener_connects_first() {
        let mut c = Clock::new(plan(), config());
        c.drain();
        let out = c.input(Input::Joined {
            peers: vec!["a".into()],
        });
        assert_eq!(created(&out), vec![("a".into(), 1, Role::Offer)]);
        let out = c.connect("a", 1);
        assert_eq!(
            count(&out, |o| matches!(o, Output::StartPlayback { .. })),
            0
        );
        c.at(ms(300));
        let out = c.input(Input::AudioReady { frames: None });
        assert!(matches!(
            out.as_slice(),
            [
                Output::StartPlayback { first_frame: 0 },
                Output::Status { .. }
            ]
        ));
    }

    #[test]
    fn a_newcomer_offers_and_the_robot_answers() {
        let mut c = Clock::new(plan(), config());
        c.live(&[], Some(500));
        let out = c.input(Input::PeerJoined { peer: "n".into() });
        assert!(created(&out).is_empty(), "the newcomer offers");
        let out = c.input(Input::Signal {
            from: "n".into(),
            offer: true,
        });
        assert_eq!(created(&out), vec![("n".into(), 1, Role::Answer)]);
        // a renegotiation offer on the same connection makes no new listener
        let out = c.input(Input::Signal {
            from: "n".into(),
            offer: true,
        });
        assert!(out.is_empty());
        // peer_joined again (it reconnected): its old connection is closed
        let out = c.input(Input::PeerJoined { peer: "n".into() });
        assert!(matches!(
            out.as_slice(),
            [Output::CloseListener { generation: 1, .. }]
        ));
    }

    #[test]
    fn events_of_an_old_connection_are_ignored() {
        let mut c = Clock::new(plan(), config());
        c.live(&["a"], Some(500));
        c.input(Input::PeerJoined { peer: "a".into() });
        c.input(Input::Signal {
            from: "a".into(),
            offer: true,
        });
        // generation 1 was replaced by 2
        assert!(c.connect("a", 1).is_empty());
        assert!(
            c.input(Input::ListenerClosed {
                peer: "a".into(),
                generation: 1
            })
            .is_empty()
        );
        assert_eq!(
            count(&c.connect("a", 2), |o| matches!(
                o,
                Output::StartPlayback { .. }
            )),
            1
        );
    }

    #[test]
    fn the_position_is_reported_every_position_every_while_playing() {
        let mut c = Clock::new(plan(), config());
        c.live(&["a"], Some(5000));
        c.at(ms(100));
        c.connect("a", 1);
        assert_eq!(c.core.poll_timeout(), Some(c.t0 + ms(2100)));
        c.at(ms(1900));
        c.input(Input::Position { position_ms: 1800 });
        let out = c.run_until(ms(2100));
        assert_eq!(statuses(&out), vec![(SessionState::Playing, Some(1800))]);
        c.input(Input::Position { position_ms: 3980 });
        let out = c.run_until(ms(6100));
        assert_eq!(
            statuses(&out),
            vec![
                (SessionState::Playing, Some(3980)),
                (SessionState::Playing, Some(3980))
            ]
        );
        // once the audio ended no more reports come, and the tail runs
        c.input(Input::PlaybackEnded { position_ms: 5000 });
        assert_eq!(c.core.poll_timeout(), Some(c.t0 + ms(7100)));
    }

    #[test]
    fn the_robot_leaves_a_tail_after_the_audio_ended() {
        let mut c = Clock::new(plan(), config());
        c.live(&["a"], Some(100));
        c.connect("a", 1);
        c.at(ms(2000));
        c.input(Input::Position { position_ms: 1960 });
        let out = c.input(Input::PlaybackEnded { position_ms: 2000 });
        assert!(out.is_empty());
        assert!(c.run_until(ms(2999)).is_empty(), "the tail is 1 s");
        let out = c.run_until(ms(3000));
        assert_eq!(detail(&out), "audio ended");
        let e = ending(&out).unwrap();
        assert_eq!(e.position_ms, Some(2000));
        assert_eq!(e.outcome.state(), SessionState::Left);
        assert_eq!(e.outcome.label(), "left");
        // the playback stopped and the listener closed before the end
        assert!(matches!(
            out.as_slice(),
            [
                Output::StopPlayback,
                Output::CloseListener { .. },
                Output::End(_)
            ]
        ));
        assert!(c.core.is_ended());
        assert_eq!(c.core.poll_timeout(), None);
        assert!(c.input(Input::Timeout).is_empty(), "nothing after the end");
    }

    #[test]
    fn the_robot_leaves_after_the_grace_when_nobody_comes() {
        let mut c = Clock::new(plan(), config());
        c.at(ms(50));
        c.live(&[], Some(100));
        assert_eq!(c.core.poll_timeout(), Some(c.t0 + ms(10_050)));
        assert!(c.run_until(ms(10_049)).is_empty());
        let out = c.run_until(ms(10_050));
        assert_eq!(detail(&out), "nobody in the channel for 10 s");
        assert_eq!(ending(&out).unwrap().position_ms, None);
    }

    #[test]
    fn the_grace_counts_from_the_last_person_leaving() {
        let mut c = Clock::new(plan(), config());
        c.live(&["a"], Some(5000));
        c.connect("a", 1);
        c.at(ms(3000));
        let out = c.input(Input::PeerLeft { peer: "a".into() });
        assert!(matches!(
            out.as_slice(),
            [Output::CloseListener { generation: 1, .. }]
        ));
        // someone comes and goes meanwhile: the clock restarts
        c.at(ms(8000));
        c.input(Input::PeerJoined { peer: "b".into() });
        c.at(ms(9000));
        c.input(Input::PeerLeft { peer: "b".into() });
        let out = c.run_until(ms(18_999));
        assert!(ending(&out).is_none(), "{out:?}");
        let out = c.run_until(ms(19_000));
        assert_eq!(detail(&out), "nobody in the channel for 10 s");
    }

    #[test]
    fn the_grace_does_not_count_while_the_audio_loads() {
        let mut c = Clock::new(plan(), config());
        c.drain();
        c.input(Input::Joined { peers: vec![] });
        assert_eq!(c.core.poll_timeout(), None);
        c.at(ms(15_000));
        c.input(Input::AudioReady { frames: Some(10) });
        assert_eq!(c.core.poll_timeout(), Some(c.t0 + ms(25_000)));
    }

    #[test]
    fn a_connected_listener_counts_as_present_while_the_socket_rejoins() {
        let mut c = Clock::new(plan(), config());
        c.live(&["a"], Some(50_000));
        c.connect("a", 1);
        c.at(ms(1000));
        let out = c.input(Input::SocketLost);
        assert!(matches!(out.as_slice(), [Output::Join]));
        // back, but the listener has not rejoined yet: nobody listed, yet not alone
        c.at(ms(1100));
        let out = c.input(Input::Joined { peers: vec![] });
        assert!(created(&out).is_empty());
        assert!(ending(&c.run_until(ms(30_000))).is_none());
        // its connection fails: now nobody is there
        c.input(Input::ListenerClosed {
            peer: "a".into(),
            generation: 1,
        });
        let out = c.run_until(ms(40_000));
        assert_eq!(detail(&out), "nobody in the channel for 10 s");
    }

    #[test]
    fn the_robot_offers_again_to_every_listed_peer_once_rejoined() {
        let mut c = Clock::new(plan(), config());
        c.live(&["a"], Some(50_000));
        c.connect("a", 1);
        c.input(Input::SocketLost);
        let out = c.input(Input::Joined {
            peers: vec!["a".into(), "b".into()],
        });
        assert!(matches!(
            out.as_slice(),
            [
                Output::CloseListener { generation: 1, .. },
                Output::CreateListener {
                    generation: 2,
                    role: Role::Offer,
                    ..
                },
                Output::CreateListener {
                    generation: 3,
                    role: Role::Offer,
                    ..
                }
            ]
        ));
        // the playback goes on: a new connection does not start it again
        assert_eq!(
            count(&c.connect("a", 2), |o| matches!(
                o,
                Output::StartPlayback { .. }
            )),
            0
        );
    }

    #[test]
    fn rejoin_backs_off_from_250_ms_doubling_to_2_s() {
        let mut c = Clock::new(plan(), config());
        c.live(&["a"], Some(50_000));
        c.connect("a", 1);
        c.at(ms(10_000));
        assert!(matches!(
            c.input(Input::SocketLost).as_slice(),
            [Output::Join]
        ));
        let mut attempts = vec![10_000u64];
        let mut t = 10_000;
        for _ in 0..7 {
            // each attempt fails 100 ms after it started
            t += 100;
            c.at(ms(t));
            assert!(
                c.input(Input::JoinFailed(JoinError::Unreachable("down".into())))
                    .is_empty()
            );
            t = u64::try_from(c.until_join().as_millis()).unwrap();
            attempts.push(t);
        }
        let gaps: Vec<u64> = attempts.windows(2).map(|w| w[1] - w[0] - 100).collect();
        assert_eq!(gaps, vec![250, 500, 1000, 2000, 2000, 2000, 2000]);
        // and it is back
        let out = c.input(Input::Joined {
            peers: vec!["a".into()],
        });
        assert_eq!(created(&out).len(), 1);
        assert!(ending(&out).is_none());
    }

    #[test]
    fn rejoin_gives_up_after_rejoin_for() {
        let mut c = Clock::new(
            plan(),
            SessionConfig {
                rejoin_for: Duration::from_secs(3),
                ..config()
            },
        );
        c.live(&["a"], Some(50_000));
        c.connect("a", 1);
        c.input(Input::Position { position_ms: 700 });
        c.at(ms(1000));
        c.input(Input::SocketLost);
        let mut ended = None;
        for _ in 0..20 {
            let out = c.input(Input::JoinFailed(JoinError::Unreachable("down".into())));
            if let Some(e) = ending(&out) {
                ended = Some((e.outcome.to_string(), e.position_ms, c.now - c.t0));
                break;
            }
            c.until_join();
        }
        let (detail, position, at) = ended.unwrap();
        assert_eq!(
            detail,
            "the channel socket closed and could not be joined again within 3 s: cannot reach /rtc: down"
        );
        assert_eq!(position, Some(700));
        // attempts at 1.0, 1.25, 1.75, 2.75 s; the next would be at 4.75 > 1 + 3
        assert_eq!(at, ms(2750));
    }

    #[test]
    fn a_refused_rejoin_is_final() {
        let mut c = Clock::new(plan(), config());
        c.live(&["a"], Some(50_000));
        c.input(Input::SocketLost);
        let out = c.input(Input::JoinFailed(JoinError::Refused {
            code: codes::TOKEN_EXPIRED.into(),
            message: "expired".into(),
        }));
        assert_eq!(
            detail(&out),
            "the channel socket closed; rejoin refused: token_expired: expired"
        );
        assert!(matches!(
            ending(&out).unwrap().outcome,
            Outcome::Failed(AgentError::RejoinRefused { .. })
        ));
    }

    #[test]
    fn a_full_channel_fails_the_join() {
        let mut c = Clock::new(plan(), config());
        c.drain();
        let out = c.input(Input::JoinFailed(JoinError::Refused {
            code: codes::CHANNEL_FULL.into(),
            message: "the channel is full".into(),
        }));
        assert_eq!(
            detail(&out),
            "join: join refused: channel_full: the channel is full"
        );
        let e = ending(&out).unwrap();
        assert_eq!(e.outcome.state(), SessionState::Failed);
        assert_eq!(e.outcome.label(), "failed");
        assert_eq!(e.position_ms, None);
    }

    #[test]
    fn missing_audio_fails_the_session_and_closes_its_listeners() {
        let mut c = Clock::new(plan(), config());
        c.drain();
        c.input(Input::Joined {
            peers: vec!["a".into()],
        });
        let out = c.input(Input::AudioFailed(AgentError::AudioUnavailable(
            crate::assets::AssetError::NotFound("nope".into()),
        )));
        assert!(matches!(
            out.as_slice(),
            [Output::CloseListener { .. }, Output::End(_)]
        ));
        assert_eq!(detail(&out), "audio asset nope does not exist on the API");
    }

    #[test]
    fn kicked_leaves_at_once() {
        let mut c = Clock::new(plan(), config());
        c.live(&["a"], Some(500));
        c.connect("a", 1);
        let out = c.input(Input::Kicked {
            reason: "replaced".into(),
        });
        assert_eq!(detail(&out), "kicked: replaced");
        assert_eq!(ending(&out).unwrap().outcome.state(), SessionState::Left);
    }

    #[test]
    fn told_to_leave_leaves_at_once_in_any_state() {
        let mut c = Clock::new(plan(), config());
        c.drain();
        let out = c.input(Input::Control(Control::Leave));
        assert_eq!(detail(&out), "told to leave");
        let mut c = Clock::new(plan(), config());
        c.live(&["a"], Some(500));
        c.connect("a", 1);
        c.input(Input::Position { position_ms: 240 });
        let out = c.input(Input::Control(Control::Leave));
        assert_eq!(detail(&out), "told to leave");
        assert_eq!(ending(&out).unwrap().position_ms, Some(240));
    }

    #[test]
    fn a_drain_hands_the_session_back_with_its_position() {
        let mut c = Clock::new(plan(), config());
        c.live(&["a"], Some(5000));
        c.connect("a", 1);
        c.at(ms(4000));
        c.input(Input::Position { position_ms: 3900 });
        let out = c.input(Input::Control(Control::HandBack));
        let e = ending(&out).unwrap();
        assert!(matches!(
            e.outcome,
            Outcome::HandedBack {
                before_joining: false
            }
        ));
        assert_eq!(e.outcome.to_string(), "handed back: agent draining");
        assert_eq!(e.outcome.label(), "handed_back");
        assert_eq!(e.outcome.state(), SessionState::Failed);
        assert_eq!(e.position_ms, Some(3900));
        // before the session is in its channel
        let mut c = Clock::new(plan(), config());
        c.drain();
        let out = c.input(Input::Control(Control::HandBack));
        assert_eq!(detail(&out), "handed back: agent draining (before joining)");
    }

    #[test]
    fn a_resume_starts_at_its_position() {
        let mut c = Clock::new(
            Plan {
                first_frame: 150,
                looping: false,
                record: None,
                bridge: false,
            },
            config(),
        );
        c.live(&["a"], Some(500));
        let out = c.connect("a", 1);
        assert!(matches!(
            out.as_slice(),
            [
                Output::ListenerLive { .. },
                Output::StartPlayback { first_frame: 150 },
                Output::Status {
                    position_ms: Some(3000),
                    ..
                }
            ]
        ));
    }

    #[test]
    fn a_resume_at_the_end_leaves_at_once() {
        let mut c = Clock::new(
            Plan {
                first_frame: 600,
                looping: false,
                record: None,
                bridge: false,
            },
            config(),
        );
        let out = c.live(&["a"], Some(500));
        assert_eq!(detail(&out), "audio ended");
        assert_eq!(ending(&out).unwrap().position_ms, Some(10_000));
        // a looping session wraps instead
        let mut c = Clock::new(
            Plan {
                first_frame: 600,
                looping: true,
                record: None,
                bridge: false,
            },
            config(),
        );
        c.live(&["a"], Some(500));
        let out = c.connect("a", 1);
        assert!(matches!(
            out.as_slice(),
            [
                Output::ListenerLive { .. },
                Output::StartPlayback { first_frame: 600 },
                Output::Status {
                    position_ms: Some(2000),
                    ..
                }
            ]
        ));
    }

    #[test]
    fn an_audio_failure_during_playback_fails_the_session_with_the_error() {
        let mut c = Clock::new(plan(), config());
        c.live(&["a"], None);
        c.connect("a", 1);
        let out = c.input(Input::PlaybackFailed {
            error: "corrupt audio: bad frame".into(),
            position_ms: 1240,
        });
        assert_eq!(
            detail(&out),
            "audio failed during playback: corrupt audio: bad frame"
        );
        assert_eq!(ending(&out).unwrap().position_ms, Some(1240));
    }

    fn bridged() -> Plan {
        Plan {
            bridge: true,
            ..plan()
        }
    }

    fn to_program(out: &[Output]) -> Vec<&ToProgram> {
        out.iter()
            .filter_map(|o| match o {
                Output::Bridge(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    fn packet(peer: &str) -> Input {
        Input::Audio {
            peer: peer.into(),
            timestamp: 960,
            payload: Bytes::from_static(&[1, 2, 3]),
        }
    }

    fn joined(uid: &str) -> ToProgram {
        ToProgram::Send(AgentEvent::Participant {
            uid: uid.into(),
            joined: true,
        })
    }

    #[test]
    fn a_bridged_session_dials_at_once_and_starts_with_the_participants() {
        let mut c = Clock::new(bridged(), config());
        let out = c.drain();
        assert_eq!(to_program(&out), vec![&ToProgram::Dial]);
        // heard before the program answers: kept for it (no clipped start of speech)
        c.live(&["a", "b"], Some(0));
        assert_eq!(
            to_program(&c.input(packet("a"))).len(),
            1,
            "forwarded before the first connection"
        );
        let out = c.input(Input::Bridge(FromProgram::Connected));
        assert_eq!(
            to_program(&out),
            vec![
                &ToProgram::Start { resume: false },
                &joined("a"),
                &joined("b")
            ]
        );
        // joins and leaves follow
        let out = c.input(Input::PeerLeft { peer: "b".into() });
        assert!(
            to_program(&out).contains(&&ToProgram::Send(AgentEvent::Participant {
                uid: "b".into(),
                joined: false
            }))
        );
        let out = c.input(Input::PeerJoined { peer: "n".into() });
        assert_eq!(to_program(&out), vec![&joined("n")]);
        // an empty playlist does not end a bridged session, nor does the audio running out
        c.connect("a", 1);
        c.input(Input::PlaybackEnded { position_ms: 0 });
        assert!(ending(&c.run_until(ms(60_000))).is_none());
    }

    #[test]
    fn a_drop_redials_at_once_resumes_and_drops_the_audio_of_the_gap() {
        let mut c = Clock::new(bridged(), config());
        c.drain();
        c.live(&["a"], Some(0));
        c.input(Input::Bridge(FromProgram::Connected));
        c.at(ms(1000));
        let out = c.input(Input::Bridge(FromProgram::Closed("gone".into())));
        assert_eq!(to_program(&out), vec![&ToProgram::Dial]);
        assert!(to_program(&c.input(packet("a"))).is_empty());
        assert_eq!(c.core.bridge_dropped(), 1);
        // the program's messages of a dead connection are not applied
        let out = c.input(Input::Bridge(FromProgram::Command(ProgramCommand::Clear)));
        assert!(out.is_empty());
        c.at(ms(1010));
        let out = c.input(Input::Bridge(FromProgram::DialFailed(
            crate::bridge::BridgeError::Unreachable("refused".into()),
        )));
        assert!(out.is_empty());
        assert_eq!(c.core.poll_timeout(), Some(c.t0 + ms(1110)));
        let out = c.run_until(ms(1110));
        assert_eq!(to_program(&out), vec![&ToProgram::Dial]);
        let out = c.input(Input::Bridge(FromProgram::Connected));
        assert_eq!(
            to_program(&out),
            vec![&ToProgram::Start { resume: true }, &joined("a")],
            "a resume, and the participants again"
        );
        assert_eq!(to_program(&c.input(packet("a"))).len(), 1);
        let out = c.input(Input::Bridge(FromProgram::Command(ProgramCommand::Mark(
            "m".into(),
        ))));
        assert!(matches!(
            out.as_slice(),
            [Output::Program(ProgramCommand::Mark(m))] if m == "m"
        ));
    }

    #[test]
    fn the_robot_leaves_with_bridge_lost_10_s_after_the_drop() {
        let mut c = Clock::new(bridged(), config());
        c.drain();
        c.live(&["a"], Some(0));
        c.connect("a", 1);
        c.input(Input::Bridge(FromProgram::Connected));
        c.at(ms(2000));
        c.input(Input::Bridge(FromProgram::Closed("gone".into())));
        let mut ended = None;
        for _ in 0..50 {
            c.now += ms(20);
            let out = c.input(Input::Bridge(FromProgram::DialFailed(
                crate::bridge::BridgeError::Unreachable("connection refused".into()),
            )));
            if let Some(e) = ending(&out) {
                assert!(
                    matches!(
                        out.as_slice(),
                        [
                            Output::StopPlayback,
                            Output::Bridge(ToProgram::Stop(StopReason::Error)),
                            Output::CloseListener { .. },
                            Output::End(_)
                        ]
                    ),
                    "{out:?}"
                );
                ended = Some((e.outcome.to_string(), e.outcome.state(), c.now - c.t0));
                break;
            }
            // the next dial (position reports may come first)
            loop {
                let t = c.core.poll_timeout().unwrap();
                c.now = t;
                let out = c.input(Input::Timeout);
                if to_program(&out) == vec![&ToProgram::Dial] {
                    break;
                }
                assert!(to_program(&out).is_empty(), "{out:?}");
            }
        }
        let (detail, state, at) = ended.unwrap();
        assert!(detail.starts_with("bridge_lost: "), "{detail}");
        assert!(detail.contains("could not be reached for 10 s"), "{detail}");
        assert_eq!(state, SessionState::Left);
        assert!(at > ms(2000 + 9000) && at <= ms(2000 + 10_000), "{at:?}");
    }

    #[test]
    fn a_refused_bridge_leaves_at_once() {
        let mut c = Clock::new(bridged(), config());
        c.drain();
        let out = c.input(Input::Bridge(FromProgram::DialFailed(
            crate::bridge::BridgeError::Refused { status: 401 },
        )));
        assert_eq!(
            detail(&out),
            "bridge_lost: the bridge program refused the connection: HTTP 401 (check the secret in DAPI_BRIDGES)"
        );
    }

    #[test]
    fn hangup_stops_the_bridge_and_leaves() {
        let mut c = Clock::new(bridged(), config());
        c.drain();
        c.live(&["a"], Some(0));
        c.input(Input::Bridge(FromProgram::Connected));
        let out = c.input(Input::Bridge(FromProgram::Hangup));
        assert!(to_program(&out).contains(&&ToProgram::Stop(StopReason::Ended)));
        assert_eq!(detail(&out), "the bridge program hung up");
        // told to leave, kicked, alone: each stop says why
        for (input, reason) in [
            (Input::Control(Control::Leave), StopReason::Ended),
            (Input::Kicked { reason: "x".into() }, StopReason::Kicked),
        ] {
            let mut c = Clock::new(bridged(), config());
            c.drain();
            let out = c.input(input);
            assert_eq!(to_program(&out), vec![&ToProgram::Stop(reason)]);
        }
        let mut c = Clock::new(bridged(), config());
        c.drain();
        c.live(&[], Some(0));
        let out = c.run_until(ms(10_000));
        assert_eq!(to_program(&out), vec![&ToProgram::Stop(StopReason::Left)]);
    }

    #[test]
    fn a_session_without_a_bridge_says_nothing_to_a_program() {
        let mut c = Clock::new(plan(), config());
        let mut out = c.live(&["a"], Some(10));
        out.extend(c.input(packet("a")));
        out.extend(c.input(Input::Bridge(FromProgram::Connected)));
        out.extend(c.input(Input::Control(Control::Leave)));
        assert!(to_program(&out).is_empty(), "{out:?}");
    }
}
