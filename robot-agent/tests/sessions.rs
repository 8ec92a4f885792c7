//! Whole sessions on the fake transport: the real session driver and core, with
//! `robot_agent::test_util`'s fake `/rtc` (the test plays the API's side of the socket),
//! fake listeners (the test drives their connection and reads the frames they were sent)
//! and in-memory audio. Tokio's time is paused, so the media clock, the leave rules and the
//! rejoin backoff run on virtual time: a 5-second session takes milliseconds, and every
//! instant asserted is exact. The same sessions against the real API, webrtc and aiortc
//! are the end-to-end tests in `tests/tests/robot_*.rs`; docs/decisions.md says why both.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::sync::Arc;
use std::time::Duration;

use protocol::agent::{
    AgentMessage, ControlAction, MarkState, PlayMode, PlaybackState, PlaybackStatus, RecordOptions,
    SessionOffer, SessionState,
};
use protocol::signaling::{
    ClientMessage, IceCandidate, LeaveReason, SdpType, ServerMessage, SessionDescription,
    SignalPayload, codes,
};
use robot_agent::metrics::Metrics;
use robot_agent::session::{self, Control, SessionConfig, SessionContext, SessionUpdate};
use robot_agent::test_util::{
    FakeChannel, FakeListener, FakeSignaling, FakeTransport, JoinScript, TestAudio, TestFrames,
    TestRecordings,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

fn config() -> SessionConfig {
    SessionConfig {
        leave_grace: Duration::from_secs(10),
        tail: Duration::from_secs(1),
        position_every: Duration::from_secs(2),
        rejoin_for: Duration::from_secs(30),
    }
}

fn offer() -> SessionOffer {
    SessionOffer {
        id: 7,
        channel: "room".into(),
        uid: "robot".into(),
        token: "t".into(),
        app_id: "app".into(),
        audio: "speech".into(),
        loop_audio: false,
        playlist: Vec::new(),
        position_ms: 0,
        attempt: 1,
        items: Vec::new(),
        record: None,
        bridge: None,
        call: None,
    }
}

type Status = (SessionState, String, Option<u64>);

struct Session {
    transport: Arc<FakeTransport>,
    signaling: Arc<FakeSignaling>,
    channels: mpsc::UnboundedReceiver<FakeChannel>,
    metrics: Arc<Metrics>,
    control: mpsc::UnboundedSender<Control>,
    updates: mpsc::UnboundedReceiver<SessionUpdate>,
    started: Instant,
    recordings: Arc<TestRecordings>,
    /// `control_ack`s and marks seen while waiting for statuses.
    acks: Vec<(u64, PlaybackStatus, Option<String>)>,
    marks: Vec<(String, MarkState, Option<u64>)>,
    /// The session's recording directory, removed with the session.
    _dir: test_support::TempDir,
}

fn start(
    offer: SessionOffer,
    audio: Arc<TestAudio>,
    config: SessionConfig,
    scripts: Vec<JoinScript>,
) -> Session {
    let dir = test_support::TempDir::new("robot-agent-sessions");
    let (signaling, channels) = FakeSignaling::new();
    for s in scripts {
        signaling.script(s);
    }
    let transport = FakeTransport::new();
    let metrics = Arc::new(Metrics::new(4));
    let recordings = TestRecordings::new();
    let ctx = Arc::new(SessionContext {
        config,
        signaling: signaling.clone(),
        audio,
        transport: transport.clone(),
        metrics: Arc::clone(&metrics),
        media_clock: tokio::runtime::Handle::current(),
        recordings: recordings.clone(),
        recording_dir: dir.path().to_path_buf(),
        bridge_tls: robot_agent::bridge::BridgeTls::system(),
    });
    let (control, control_rx) = mpsc::unbounded_channel();
    let (updates_tx, updates) = mpsc::unbounded_channel();
    tokio::spawn(session::run(ctx, offer, control_rx, updates_tx));
    Session {
        transport,
        signaling,
        channels,
        metrics,
        control,
        updates,
        started: Instant::now(),
        recordings,
        acks: Vec::new(),
        marks: Vec::new(),
        _dir: dir,
    }
}

fn audio(frames: u32) -> Arc<TestAudio> {
    let a = TestAudio::new();
    a.add("speech", TestFrames::numbered(0, frames));
    a
}

impl Session {
    /// The next status; `None` once the session ended.
    async fn status(&mut self) -> Option<Status> {
        loop {
            match self.updates.recv().await? {
                SessionUpdate::Status {
                    session_id,
                    state,
                    detail,
                    position_ms,
                } => {
                    assert_eq!(session_id, 7);
                    return Some((state, detail, position_ms));
                }
                SessionUpdate::Ended { session_id } => {
                    assert_eq!(session_id, 7);
                    return None;
                }
                other => self.keep(other),
            }
        }
    }

    fn keep(&mut self, u: SessionUpdate) {
        match u {
            SessionUpdate::Send(AgentMessage::ControlAck {
                session_id: 7,
                seq,
                status,
                error,
            }) => self.acks.push((seq, status, error)),
            SessionUpdate::Send(AgentMessage::Mark {
                session_id: 7,
                name,
                state,
                position_ms,
            }) => self.marks.push((name, state, position_ms)),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Sends a playback control and waits for its answer (statuses meanwhile are dropped).
    async fn steer(&mut self, seq: u64, action: ControlAction) -> (PlaybackStatus, Option<String>) {
        self.control
            .send(Control::Playback { seq, action })
            .unwrap();
        loop {
            if let Some(i) = self.acks.iter().position(|(s, _, _)| *s == seq) {
                let (_, status, error) = self.acks.remove(i);
                return (status, error);
            }
            match self.updates.recv().await.unwrap() {
                SessionUpdate::Status { .. } => {}
                other => self.keep(other),
            }
        }
    }

    /// Every status until the session ended.
    async fn rest(&mut self) -> Vec<Status> {
        let mut all = Vec::new();
        while let Some(s) = self.status().await {
            all.push(s);
        }
        all
    }

    async fn channel(&mut self) -> FakeChannel {
        self.channels.recv().await.unwrap()
    }

    fn ended_total(&self, outcome: &str) -> bool {
        self.metrics.render().contains(&format!(
            "robot_sessions_ended_total{{outcome=\"{outcome}\"}} 1"
        ))
    }

    fn since_start(&self) -> Duration {
        Instant::now() - self.started
    }
}

/// The next signal the robot sent: (to, kind, sdp).
async fn signal(ch: &mut FakeChannel) -> (String, SdpType, String) {
    match ch.next().await.unwrap() {
        ClientMessage::Signal {
            to,
            payload: SignalPayload::Description(SessionDescription { kind, sdp }),
        } => (to, kind, sdp),
        other => panic!("expected a signal, got {other:?}"),
    }
}

fn from_app(payload: SignalPayload) -> ServerMessage {
    ServerMessage::Signal {
        from: "app".into(),
        payload,
    }
}

fn description(kind: SdpType, sdp: &str) -> SignalPayload {
    SignalPayload::Description(SessionDescription {
        kind,
        sdp: sdp.into(),
    })
}

/// Whether the robot said `leave` on the socket (after anything else it sent).
async fn left(ch: &mut FakeChannel) -> bool {
    while let Some(m) = ch.next().await {
        if m == ClientMessage::Leave {
            return true;
        }
    }
    false
}

fn in_order(l: &FakeListener, from: u32, n: u32) {
    let got = l.frames();
    let want: Vec<_> = (from..from + n).map(|i| TestFrames::frame(0, i)).collect();
    assert_eq!(got, want);
    assert!(l.log().frames.iter().all(|(_, skipped)| *skipped == 0));
}

#[tokio::test(start_paused = true)]
async fn the_robot_offers_plays_every_frame_reports_and_leaves_after_the_tail() {
    let mut s = start(
        offer(),
        audio(250),
        config(),
        vec![JoinScript::Accept(vec!["app".into()])],
    );
    assert_eq!(s.status().await.unwrap().0, SessionState::Joining);
    let mut ch = s.channel().await;
    assert_eq!((ch.channel.as_str(), ch.uid.as_str()), ("room", "robot"));
    // the robot is the newcomer: it offers to the app listed in `joined`
    let (to, kind, sdp) = signal(&mut ch).await;
    assert_eq!((to.as_str(), kind), ("app", SdpType::Offer));
    assert_eq!(sdp, "fake offer to app #1");
    ch.send(from_app(description(SdpType::Answer, "app answer")));
    let l = s.transport.listener_for("app", 1).await;
    while l.log().answers.is_empty() {
        tokio::task::yield_now().await;
    }
    assert_eq!(l.log().answers, vec!["app answer".to_owned()]);
    assert!(
        l.frames().is_empty(),
        "nothing plays before the media is up"
    );
    let connected_at = Instant::now();
    l.connect();
    assert_eq!(
        s.status().await.unwrap(),
        (SessionState::Playing, String::new(), Some(0))
    );
    // the position every 2 s while it plays
    for k in 1..=2u64 {
        let (state, _, p) = s.status().await.unwrap();
        assert_eq!(Instant::now() - connected_at, Duration::from_secs(2 * k));
        assert_eq!(state, SessionState::Playing);
        let p = p.unwrap();
        assert!((2000 * k - 20..=2000 * k + 20).contains(&p), "{p}");
    }
    // 250 frames (5 s), then a 1 s tail
    let end = s.rest().await;
    assert_eq!(
        end,
        vec![(SessionState::Left, "audio ended".into(), Some(5000))]
    );
    assert_eq!(Instant::now() - connected_at, Duration::from_secs(6));
    in_order(&l, 0, 250);
    assert!(l.is_closed());
    assert!(left(&mut ch).await);
    assert!(s.ended_total("left"));
    assert_eq!(
        s.metrics
            .listeners
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn the_robot_answers_a_newcomer_and_leaves_when_nobody_is_left() {
    let mut s = start(
        offer(),
        audio(50_000),
        config(),
        vec![JoinScript::Accept(Vec::new())],
    );
    let mut ch = s.channel().await;
    ch.send(ServerMessage::PeerJoined { uid: "app".into() });
    ch.send(from_app(description(SdpType::Offer, "app offer")));
    ch.send(from_app(SignalPayload::Candidate(Some(IceCandidate {
        candidate: "c".into(),
        sdp_mid: None,
        sdp_mline_index: Some(0),
        username_fragment: None,
    }))));
    let (to, kind, sdp) = signal(&mut ch).await;
    assert_eq!(
        (to.as_str(), kind, sdp.as_str()),
        ("app", SdpType::Answer, "fake answer to app #1")
    );
    let l = s.transport.listener_for("app", 1).await;
    assert_eq!(l.log().answered, vec!["app offer".to_owned()]);
    assert_eq!(l.log().offers, 0);
    while l.log().candidates == 0 {
        tokio::task::yield_now().await;
    }
    l.connect();
    l.wait_frames(100).await;
    let gone_at = Instant::now();
    ch.send(ServerMessage::PeerLeft {
        uid: "app".into(),
        reason: LeaveReason::Left,
    });
    l.wait_closed().await;
    let end = s.rest().await;
    let (state, detail, _) = end.last().unwrap().clone();
    assert_eq!(
        (state, detail.as_str()),
        (SessionState::Left, "nobody in the channel for 10 s")
    );
    assert_eq!(Instant::now() - gone_at, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn the_audio_plays_on_across_a_lost_socket_and_the_robot_rejoins_with_backoff() {
    let mut s = start(
        offer(),
        audio(50_000),
        config(),
        vec![
            JoinScript::Accept(vec!["app".into()]),
            JoinScript::Unreachable,
            JoinScript::Unreachable,
            JoinScript::Accept(vec!["app".into()]),
        ],
    );
    let mut ch = s.channel().await;
    signal(&mut ch).await;
    let first = s.transport.listener_for("app", 1).await;
    first.connect();
    first.wait_frames(50).await;
    // the API restarts: the socket is gone, the audio is not
    let lost_at = Instant::now();
    ch.close();
    let mut back = s.channel().await;
    let attempts: Vec<Duration> = s.signaling.attempts()[1..]
        .iter()
        .map(|t| *t - lost_at)
        .collect();
    assert_eq!(
        attempts,
        vec![
            Duration::ZERO,
            Duration::from_millis(250),
            Duration::from_millis(750)
        ]
    );
    let sent_while_away = first.frames().len();
    assert!(sent_while_away >= 50 + 37, "{sent_while_away}");
    // back in the channel: the newcomer offers again to the listed app
    let (to, kind, _) = signal(&mut back).await;
    assert_eq!((to.as_str(), kind), ("app", SdpType::Offer));
    let second = s.transport.listener_for("app", 2).await;
    first.wait_closed().await;
    second.connect();
    second.wait_frames(10).await;
    // the stream goes on where it was: the new connection does not start it over
    let resumed = second.frames()[0].clone();
    assert_ne!(resumed, TestFrames::frame(0, 0));
    s.control.send(Control::Leave).unwrap();
    let end = s.rest().await;
    assert!(
        end.iter()
            .all(|(state, _, _)| *state != SessionState::Failed),
        "{end:?}"
    );
    assert_eq!(end.last().unwrap().1, "told to leave");
    assert!(left(&mut back).await);
}

#[tokio::test(start_paused = true)]
async fn the_session_fails_when_the_socket_does_not_come_back_within_rejoin_for() {
    let mut s = start(
        offer(),
        audio(50_000),
        SessionConfig {
            rejoin_for: Duration::from_secs(3),
            ..config()
        },
        vec![JoinScript::Accept(vec!["app".into()])],
    );
    let mut ch = s.channel().await;
    signal(&mut ch).await;
    let l = s.transport.listener_for("app", 1).await;
    l.connect();
    l.wait_frames(100).await;
    let lost_at = Instant::now();
    ch.close();
    let end = s.rest().await;
    let (state, detail, position) = end.last().unwrap().clone();
    assert_eq!(state, SessionState::Failed);
    assert_eq!(
        detail,
        "the channel socket closed and could not be joined again within 3 s: \
         cannot reach /rtc: the fake /rtc is down (no join scripted)"
    );
    // attempts at 0, 0.25, 0.75, 1.75 s; the next would be past 3 s
    assert_eq!(Instant::now() - lost_at, Duration::from_millis(1750));
    assert_eq!(s.signaling.attempts().len(), 5);
    let p = position.unwrap();
    // 100 frames before the loss, 1.75 s of frames after it
    assert!((3700..=3780).contains(&p), "{p}");
    assert!(l.is_closed());
    assert!(s.ended_total("failed"));
}

#[tokio::test(start_paused = true)]
async fn a_drain_hands_the_session_back_with_its_position() {
    let mut s = start(
        offer(),
        audio(50_000),
        config(),
        vec![JoinScript::Accept(vec!["app".into()])],
    );
    let mut ch = s.channel().await;
    signal(&mut ch).await;
    let l = s.transport.listener_for("app", 1).await;
    l.connect();
    l.wait_frames(151).await;
    s.control.send(Control::HandBack).unwrap();
    let end = s.rest().await;
    let (state, detail, position) = end.last().unwrap().clone();
    assert_eq!(
        (state, detail.as_str()),
        (SessionState::Failed, "handed back: agent draining")
    );
    let p = position.unwrap();
    assert!((3000..=3040).contains(&p), "{p}");
    assert!(s.ended_total("handed_back"));
    assert!(left(&mut ch).await);
    assert!(l.is_closed());
}

#[tokio::test(start_paused = true)]
async fn kicked_told_to_leave_and_a_full_channel_end_the_session() {
    // kicked
    let mut s = start(
        offer(),
        audio(50_000),
        config(),
        vec![JoinScript::Accept(vec!["app".into()])],
    );
    let ch = s.channel().await;
    ch.send(ServerMessage::Kicked {
        reason: "replaced".into(),
    });
    let end = s.rest().await;
    assert_eq!(
        end.last().unwrap(),
        &(SessionState::Left, "kicked: replaced".into(), None)
    );
    // told to leave while joining
    let mut s = start(offer(), audio(10), config(), vec![]);
    s.control.send(Control::Leave).unwrap();
    let end = s.rest().await;
    assert_eq!(end.last().unwrap().1, "told to leave");
    assert!(s.since_start() < Duration::from_millis(100));
    // the channel is full
    let mut s = start(
        offer(),
        audio(10),
        config(),
        vec![JoinScript::Refuse {
            code: codes::CHANNEL_FULL.into(),
            message: "the channel is full".into(),
        }],
    );
    let end = s.rest().await;
    assert_eq!(
        end,
        vec![
            (SessionState::Joining, String::new(), None),
            (
                SessionState::Failed,
                "join: join refused: channel_full: the channel is full".into(),
                None
            )
        ]
    );
    // the asset does not exist
    let mut o = offer();
    o.audio = "missing".into();
    let mut s = start(o, audio(10), config(), vec![JoinScript::Accept(Vec::new())]);
    let mut ch = s.channel().await;
    let end = s.rest().await;
    assert_eq!(
        end.last().unwrap().1,
        "audio asset missing does not exist on the API"
    );
    assert!(left(&mut ch).await);
}

#[tokio::test(start_paused = true)]
async fn a_resume_plays_from_its_position_across_the_playlist() {
    let a = TestAudio::new();
    a.add("one", TestFrames::numbered(1, 100));
    a.add("two", TestFrames::numbered(2, 100));
    let mut o = offer();
    o.playlist = vec!["one".into(), "two".into()];
    o.position_ms = 3000; // frame 150: frame 50 of "two"
    let mut s = start(o, a, config(), vec![JoinScript::Accept(vec!["app".into()])]);
    let mut ch = s.channel().await;
    signal(&mut ch).await;
    let l = s.transport.listener_for("app", 1).await;
    l.connect();
    let end = s.rest().await;
    assert_eq!(end[1], (SessionState::Playing, String::new(), Some(3000)));
    assert_eq!(
        end.last().unwrap(),
        &(SessionState::Left, "audio ended".into(), Some(4000))
    );
    let want: Vec<_> = (50..100).map(|i| TestFrames::frame(2, i)).collect();
    assert_eq!(l.frames(), want);
}

#[tokio::test(start_paused = true)]
async fn a_stream_not_encoded_yet_pauses_the_playback_and_a_corrupt_tail_fails_it() {
    let stream = TestFrames::numbered(0, 20);
    stream.keep_open();
    let a = TestAudio::new();
    a.add("speech", stream.clone());
    let mut s = start(
        offer(),
        a,
        config(),
        vec![JoinScript::Accept(vec!["app".into()])],
    );
    let mut ch = s.channel().await;
    signal(&mut ch).await;
    let l = s.transport.listener_for("app", 1).await;
    l.connect();
    l.wait_frames(20).await;
    // three seconds pass with nothing to send: nothing is sent, the position stays
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(l.frames().len(), 20);
    stream.push(0, 30);
    l.wait_frames(50).await;
    in_order(&l, 0, 50);
    // the encoder finds the file corrupt at frame 50
    stream.fail_at(50, "corrupt audio: truncated packet");
    let end = s.rest().await;
    assert_eq!(
        end.last().unwrap(),
        &(
            SessionState::Failed,
            "audio failed during playback: corrupt audio: truncated packet".into(),
            Some(1000)
        )
    );
    assert!(
        end.iter()
            .any(|(state, _, p)| *state == SessionState::Playing && *p == Some(400)),
        "a report during the stall keeps the position: {end:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_looping_session_plays_on_until_told_to_leave() {
    let mut o = offer();
    o.loop_audio = true;
    let mut s = start(
        o,
        audio(30),
        config(),
        vec![JoinScript::Accept(vec!["app".into()])],
    );
    let mut ch = s.channel().await;
    signal(&mut ch).await;
    let l = s.transport.listener_for("app", 1).await;
    l.connect();
    l.wait_frames(100).await;
    let got = l.frames();
    for (i, f) in got.iter().take(100).enumerate() {
        assert_eq!(*f, TestFrames::frame(0, u32::try_from(i % 30).unwrap()));
    }
    s.control.send(Control::Leave).unwrap();
    let end = s.rest().await;
    let (state, detail, p) = end.last().unwrap().clone();
    assert_eq!(
        (state, detail.as_str()),
        (SessionState::Left, "told to leave")
    );
    assert!(p.unwrap() < 600, "the position wraps: {p:?}");
}

/// Frames of `l` as (tag, index).
fn tagged(l: &FakeListener) -> Vec<(u8, u32)> {
    l.frames()
        .iter()
        .map(|f| (f[0], u32::from_be_bytes(f[1..5].try_into().unwrap())))
        .collect()
}

fn play(audio: &str, mode: PlayMode) -> ControlAction {
    ControlAction::Play {
        audio: audio.into(),
        mode,
        loops: 0,
        gain_db: 0.0,
    }
}

fn mark(name: &str) -> ControlAction {
    ControlAction::Mark { name: name.into() }
}

/// A session for the app listed in `joined`, its media up: the socket (keep it) and the
/// listener.
async fn connected(
    a: Arc<TestAudio>,
    o: SessionOffer,
) -> (Session, FakeChannel, Arc<FakeListener>) {
    let mut s = start(o, a, config(), vec![JoinScript::Accept(vec!["app".into()])]);
    let mut ch = s.channel().await;
    signal(&mut ch).await;
    let l = s.transport.listener_for("app", 1).await;
    l.connect();
    (s, ch, l)
}

#[tokio::test(start_paused = true)]
async fn controls_change_the_queue_on_the_next_frame_and_marks_tell_the_truth() {
    let a = audio(500);
    a.add("jingle", TestFrames::numbered(1, 5));
    a.add("short", TestFrames::numbered(2, 3));
    let (mut s, _ch, l) = connected(a, offer()).await;
    l.wait_frames(10).await;

    // append, marks around it: the state names what plays and what is queued
    s.steer(1, mark("a")).await;
    let (st, err) = s.steer(2, play("jingle", PlayMode::Append)).await;
    assert_eq!(err, None);
    assert_eq!(
        (st.state, st.item.as_deref(), st.queue.clone()),
        (
            PlaybackState::Playing,
            Some("speech"),
            vec!["jingle".to_owned()]
        )
    );
    s.steer(3, mark("b")).await;
    let (_, err) = s.steer(4, play("nope", PlayMode::Append)).await;
    assert_eq!(
        err.as_deref(),
        Some("audio asset nope does not exist on the API")
    );

    // pause: nothing is sent; resume goes on where it was
    let (st, _) = s.steer(5, ControlAction::Pause).await;
    assert_eq!(st.state, PlaybackState::Paused);
    let paused_at = l.frames().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(l.frames().len(), paused_at, "silent while paused");
    s.steer(6, ControlAction::Resume).await;
    l.wait_frames(paused_at + 5).await;
    let f = tagged(&l);
    assert_eq!(f[paused_at], (0, u32::try_from(paused_at).unwrap()));

    // seek within the item, and past its end
    let (st, err) = s.steer(7, ControlAction::Seek { position_ms: 6000 }).await;
    assert_eq!((st.position_ms, err), (6000, None));
    let (_, err) = s
        .steer(
            8,
            ControlAction::Seek {
                position_ms: 60_000,
            },
        )
        .await;
    assert_eq!(err.as_deref(), Some("seek past the end of speech"));
    let n = l.frames().len();
    l.wait_frames(n + 2).await;
    assert_eq!(tagged(&l)[n], (0, 300));

    // replace: the marks queued are cleared, the next frame is the new item's first
    let before = l.frames().len();
    let (st, _) = s.steer(9, play("short", PlayMode::Replace)).await;
    assert_eq!((st.item.as_deref(), st.queue.len()), (Some("short"), 0));
    s.steer(10, mark("c")).await;
    let end = s.rest().await;
    let f = tagged(&l);
    let first_new = f.iter().position(|(t, _)| *t == 2).unwrap();
    assert!(first_new <= before, "the change is heard on the next frame");
    assert!(f[..first_new].iter().all(|(t, _)| *t == 0));
    assert_eq!(&f[first_new..], &[(2, 0), (2, 1), (2, 2)]);
    assert_eq!(
        s.marks,
        vec![
            ("a".to_owned(), MarkState::Cleared, None),
            ("b".to_owned(), MarkState::Cleared, None),
            (
                "c".to_owned(),
                MarkState::Played,
                Some(u64::try_from(f.len()).unwrap() * 20)
            ),
        ]
    );
    assert_eq!(end.last().unwrap().1, "audio ended");
}

#[tokio::test(start_paused = true)]
async fn clear_stops_within_a_frame_and_a_mark_behind_it_is_never_played() {
    let (mut s, _ch, l) = connected(audio(50_000), offer()).await;
    l.wait_frames(20).await;
    s.steer(1, mark("behind")).await;
    let (st, _) = s.steer(2, ControlAction::Clear).await;
    assert_eq!(st.state, PlaybackState::Idle);
    let at_clear = l.frames().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        l.frames().len() <= at_clear + 1,
        "at most the frame under way"
    );
    // the robot stays (a clear is not the end of the audio) and a mark now is played at once
    s.steer(3, mark("after")).await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    s.control.send(Control::Leave).unwrap();
    let end = s.rest().await;
    assert_eq!(end.last().unwrap().1, "told to leave");
    let written = u64::try_from(l.frames().len()).unwrap() * 20;
    assert_eq!(
        s.marks,
        vec![
            ("behind".to_owned(), MarkState::Cleared, None),
            ("after".to_owned(), MarkState::Played, Some(written)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn marks_still_queued_when_the_session_ends_are_reported_cleared_before_its_end() {
    let a = audio(20);
    a.add("jingle", TestFrames::numbered(1, 500));
    let (mut s, _ch, l) = connected(a, offer()).await;
    l.wait_frames(5).await;
    // A mark goes behind what is queued: "heard" after the offer's 20 frames.
    s.steer(1, mark("heard")).await;
    s.steer(2, play("jingle", PlayMode::Append)).await;
    s.steer(3, mark("never-1")).await;
    s.steer(4, mark("never-2")).await;
    l.wait_frames(30).await;
    s.control.send(Control::Leave).unwrap();
    // `rest` reads up to `Ended`: every mark is in before it.
    let end = s.rest().await;
    assert_eq!(end.last().unwrap().1, "told to leave");
    let names: Vec<(&str, MarkState)> =
        s.marks.iter().map(|(n, st, _)| (n.as_str(), *st)).collect();
    assert_eq!(
        names,
        vec![
            ("heard", MarkState::Played),
            ("never-1", MarkState::Cleared),
            ("never-2", MarkState::Cleared),
        ]
    );
    let f = tagged(&l);
    assert!(f.len() < 520, "the jingle was cut short by the leave");
    assert_eq!(f[20], (1, 0), "the jingle follows the offer");
}

fn voicemail_offer() -> SessionOffer {
    let mut o = offer();
    o.record = Some(RecordOptions {
        max_seconds: 60,
        silence_seconds: 2,
        beep: true,
    });
    o
}

/// A 20 ms Opus packet of `len` bytes (CELT, mono: only its TOC byte matters here).
fn opus(len: usize) -> bytes::Bytes {
    let mut b = vec![0xF8u8];
    b.resize(len, 0x5A);
    bytes::Bytes::from(b)
}

/// A voicemail session with a greeting of `frames`, played until it and the beep went out.
async fn greeted(frames: u32) -> (Session, FakeChannel, Arc<FakeListener>) {
    let (s, ch, l) = connected(audio(frames), voicemail_offer()).await;
    let frames = usize::try_from(frames).unwrap();
    let beep = usize::try_from(
        robot_agent::session::FrameSource::frame_count(&*robot_agent::session::beep::beep())
            .unwrap(),
    )
    .unwrap();
    // spoken during the greeting: not recorded
    l.send_audio(1, 0, opus(150));
    l.wait_frames(frames + beep).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    (s, ch, l)
}

#[tokio::test(start_paused = true)]
async fn a_voicemail_greets_beeps_records_until_silence_uploads_and_leaves() {
    let (mut s, _ch, l) = greeted(50).await;
    // 6 s of speech with 5 packets lost in the middle, then the caller stops sending
    let t0 = 1_000_000u32;
    for i in 0..300u32 {
        if !(100..105).contains(&i) {
            l.send_audio(u16::try_from(i).unwrap(), t0 + i * 960, opus(120));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = Instant::now();
    let end = s.rest().await;
    assert_eq!(end.last().unwrap().1, "voicemail recorded: 1 recording(s)");
    let after = Instant::now() - stopped;
    assert!(
        after >= Duration::from_millis(1980) && after < Duration::from_millis(2100),
        "{after:?}"
    );
    let ups = s.recordings.uploads();
    assert!(
        ups.iter()
            .all(|u| u.uid == "app" && u.part == 0 && u.session_id == 7)
    );
    assert!(
        ups.iter().any(|u| !u.last),
        "the file so far went up while recording"
    );
    let last = ups.last().unwrap();
    assert!(last.last);
    let mut r =
        audio::ogg_opus::OggOpusReader::new(std::io::Cursor::new(last.body.clone())).unwrap();
    let mut packets = Vec::new();
    while let Some(p) = r.next_packet().unwrap() {
        packets.push(p.data);
    }
    assert_eq!(packets.len(), 300, "295 received, 5 of silence");
    assert_eq!(
        packets[100],
        robot_agent::session::recorder::SILENCE.to_vec()
    );
    assert_eq!(packets[0], opus(120).to_vec());
}

/// Packets in an uploaded Ogg Opus body. A partial upload (still recording) has no
/// end-of-stream page yet: its packets are counted up to where it stops.
fn ogg_packets(body: &[u8]) -> usize {
    let mut r = audio::ogg_opus::OggOpusReader::new(std::io::Cursor::new(body)).unwrap();
    let mut n = 0;
    while let Ok(Some(_)) = r.next_packet() {
        n += 1;
    }
    n
}

#[tokio::test(start_paused = true)]
async fn a_crash_at_any_moment_of_a_recording_loses_at_most_its_last_5_seconds() {
    // What survives a crash (SIGKILL, host gone) is what was uploaded: at every moment of
    // a 20 s message, the newest upload holds all but at most the last 5 s of it.
    let (mut s, _ch, l) = greeted(10).await;
    let mut worst = 0usize;
    for i in 0..1000u32 {
        l.send_audio(u16::try_from(i % 65_536).unwrap(), i * 960, opus(120));
        tokio::time::sleep(Duration::from_millis(20)).await;
        if i % 10 == 9 {
            let sent = usize::try_from(i + 1).unwrap();
            let saved = s
                .recordings
                .uploads()
                .last()
                .map_or(0, |u| ogg_packets(&u.body));
            worst = worst.max(sent - saved.min(sent));
        }
    }
    assert!(
        worst <= 250,
        "a crash would have lost {worst} packets ({} ms)",
        worst * 20
    );
    assert!(
        worst >= 150,
        "uploads every 4 s leave about 4 s unsaved at worst ({worst})"
    );
    s.control.send(Control::Leave).unwrap();
    s.rest().await;
    let ups = s.recordings.uploads();
    assert!(ups.iter().all(|u| u.part == 0));
    assert_eq!(ogg_packets(&ups.last().unwrap().body), 1000);
}

#[tokio::test(start_paused = true)]
async fn a_re_dispatched_voicemail_goes_on_recording_into_the_next_part() {
    // The API offers a handed-back or failed session again with attempt 2 from its last
    // position (the greeting over): the new session records on, as part 1.
    let mut o = voicemail_offer();
    o.attempt = 2;
    o.position_ms = 200;
    let (mut s, _ch, l) = connected(audio(10), o).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..100u32 {
        l.send_audio(u16::try_from(i).unwrap(), i * 960, opus(120));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.control.send(Control::Leave).unwrap();
    s.rest().await;
    let ups = s.recordings.uploads();
    assert!(!ups.is_empty());
    assert!(
        ups.iter().all(|u| u.part == 1),
        "{:?}",
        ups.iter().map(|u| u.part).collect::<Vec<_>>()
    );
    assert!(ups.last().unwrap().last);
    assert_eq!(ogg_packets(&ups.last().unwrap().body), 100);
}

#[tokio::test(start_paused = true)]
async fn a_hand_back_while_recording_uploads_what_there_is() {
    let (mut s, _ch, l) = greeted(10).await;
    for i in 0..50u32 {
        l.send_audio(u16::try_from(i).unwrap(), i * 960, opus(120));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.control.send(Control::HandBack).unwrap();
    let end = s.rest().await;
    assert_eq!(end.last().unwrap().1, "handed back: agent draining");
    let ups = s.recordings.uploads();
    assert_eq!(ups.len(), 1);
    assert!(!ups[0].last, "a partial upload: the next agent records on");
    assert!(ups[0].body.len() > 1000);
}
