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

use protocol::agent::{SessionOffer, SessionState};
use protocol::signaling::{
    ClientMessage, IceCandidate, LeaveReason, SdpType, ServerMessage, SessionDescription,
    SignalPayload, codes,
};
use robot_agent::metrics::Metrics;
use robot_agent::session::{self, Control, SessionConfig, SessionContext, SessionUpdate};
use robot_agent::test_util::{
    FakeChannel, FakeListener, FakeSignaling, FakeTransport, JoinScript, TestAudio, TestFrames,
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
}

fn start(
    offer: SessionOffer,
    audio: Arc<TestAudio>,
    config: SessionConfig,
    scripts: Vec<JoinScript>,
) -> Session {
    let (signaling, channels) = FakeSignaling::new();
    for s in scripts {
        signaling.script(s);
    }
    let transport = FakeTransport::new();
    let metrics = Arc::new(Metrics::new(4));
    let ctx = Arc::new(SessionContext {
        config,
        signaling: signaling.clone(),
        audio,
        transport: transport.clone(),
        metrics: Arc::clone(&metrics),
        media_clock: tokio::runtime::Handle::current(),
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
        match self.updates.recv().await? {
            SessionUpdate::Status {
                session_id,
                state,
                detail,
                position_ms,
            } => {
                assert_eq!(session_id, 7);
                Some((state, detail, position_ms))
            }
            SessionUpdate::Ended { session_id } => {
                assert_eq!(session_id, 7);
                None
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
