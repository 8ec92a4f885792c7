//! Whole bridged sessions: the real session driver, core, playback queue and bridge socket
//! task, with the fake `/rtc` and fake listeners of `robot_agent::test_util`, and a real
//! WebSocket server on port 0 playing the operator's program. Real time (the sockets are
//! real), so nothing here asserts a duration; the end-to-end test with aiortc and a Python
//! program is `tests/tests/robot_bridge.rs`.

#![allow(clippy::unwrap_used)] // tests may unwrap
// The upgrade callback returns tungstenite's own (large) error response type.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use protocol::agent::{BridgeFormat, BridgeTarget, SessionOffer, SessionState};
use protocol::signaling::{SdpType, ServerMessage, SessionDescription, SignalPayload};
use robot_agent::metrics::Metrics;
use robot_agent::session::{self, Control, SessionConfig, SessionContext, SessionUpdate};
use robot_agent::test_util::{
    FakeChannel, FakeListener, FakeSignaling, FakeTransport, JoinScript, TestAudio, TestFrames,
    TestRecordings,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

const SECRET: &str = "program-secret";
const WAIT: Duration = Duration::from_secs(10);

/// One connection of the program: what it received, and a way to speak.
struct Conn {
    rx: mpsc::UnboundedReceiver<Value>,
    tx: mpsc::UnboundedSender<Message>,
}

impl Conn {
    /// The next event of `kind`, skipping others (media unless asked for).
    async fn next(&mut self, kind: &str) -> Value {
        loop {
            let v = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {kind} event within {WAIT:?}"))
                .unwrap_or_else(|| panic!("the connection closed before a {kind} event"));
            if v["event"] == kind {
                return v;
            }
        }
    }

    fn send(&self, v: Value) {
        self.tx.send(Message::Text(v.to_string().into())).unwrap();
    }

    fn send_raw(&self, m: Message) {
        self.tx.send(m).unwrap();
    }

    fn close(&self) {
        self.tx.send(Message::Close(None)).unwrap();
    }
}

/// A program on port 0: each accepted connection (with the right secret) is a [`Conn`].
struct Program {
    url: String,
    conns: mpsc::UnboundedReceiver<Conn>,
    auths: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Program {
    async fn start(status_on_upgrade: Option<u16>) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/bot", l.local_addr().unwrap());
        let (conns_tx, conns) = mpsc::unbounded_channel();
        let auths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&auths);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                let seen = Arc::clone(&seen);
                let conns_tx = conns_tx.clone();
                tokio::spawn(async move {
                    let check =
                        |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            seen.lock().unwrap().push(auth.clone());
                            let status = match status_on_upgrade {
                                Some(s) => Some(s),
                                None if auth != format!("Bearer {SECRET}") => Some(401),
                                None => None,
                            };
                            match status {
                                Some(s) => {
                                    let mut r = ErrorResponse::new(Some("no".into()));
                                    *r.status_mut() = http_status(s);
                                    Err(r)
                                }
                                None => Ok(resp),
                            }
                        };
                    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await else {
                        return;
                    };
                    let (mut sink, mut stream) = ws.split();
                    let (in_tx, rx) = mpsc::unbounded_channel();
                    let (tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
                    let _ = conns_tx.send(Conn { rx, tx });
                    tokio::spawn(async move {
                        while let Some(m) = out_rx.recv().await {
                            let close = matches!(m, Message::Close(_));
                            if sink.send(m).await.is_err() || close {
                                break;
                            }
                        }
                    });
                    while let Some(Ok(m)) = stream.next().await {
                        if let Message::Text(t) = m {
                            let _ = in_tx.send(serde_json::from_str::<Value>(&t).unwrap());
                        }
                    }
                });
            }
        });
        Self { url, conns, auths }
    }

    async fn conn(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("the robot did not dial the program")
            .unwrap()
    }
}

fn http_status(s: u16) -> tokio_tungstenite::tungstenite::http::StatusCode {
    tokio_tungstenite::tungstenite::http::StatusCode::from_u16(s).unwrap()
}

fn offer(url: &str, format: BridgeFormat, rate: u32) -> SessionOffer {
    SessionOffer {
        id: 7,
        channel: "room".into(),
        uid: "robot".into(),
        token: "t".into(),
        app_id: "app".into(),
        audio: String::new(),
        loop_audio: false,
        playlist: Vec::new(),
        position_ms: 0,
        attempt: 1,
        items: Vec::new(),
        record: None,
        bridge: Some(BridgeTarget {
            name: "bot".into(),
            url: url.into(),
            secret: SECRET.into(),
            format,
            rate,
        }),
        call: Some(protocol::agent::OfferCall {
            src_uid: "caller".into(),
            dst_uid: vec!["callee".into()],
        }),
    }
}

/// The test's assets, and `slow`, an asset whose fetch never ends.
struct SlowAudio(Arc<TestAudio>);

#[async_trait::async_trait]
impl session::AudioLibrary for SlowAudio {
    async fn item(
        &self,
        name: &str,
    ) -> Result<Arc<dyn session::FrameSource>, robot_agent::AgentError> {
        if name == "slow" {
            return std::future::pending().await;
        }
        self.0.item(name).await
    }
}

struct Session {
    transport: Arc<FakeTransport>,
    channels: mpsc::UnboundedReceiver<FakeChannel>,
    control: mpsc::UnboundedSender<Control>,
    updates: mpsc::UnboundedReceiver<SessionUpdate>,
    /// The session's recording directory, removed with the session.
    _dir: test_support::TempDir,
}

fn start(offer: SessionOffer) -> Session {
    let dir = test_support::TempDir::new("robot-agent-bridge");
    let (signaling, channels) = FakeSignaling::new();
    signaling.script(JoinScript::Accept(vec!["app".into()]));
    let transport = FakeTransport::new();
    let test_audio = TestAudio::new();
    test_audio.add("jingle", TestFrames::numbered(9, 3));
    let audio = Arc::new(SlowAudio(test_audio));
    let ctx = Arc::new(SessionContext {
        config: SessionConfig {
            leave_grace: Duration::from_secs(10),
            tail: Duration::from_secs(1),
            position_every: Duration::from_secs(2),
            rejoin_for: Duration::from_secs(30),
        },
        signaling,
        audio,
        transport: transport.clone(),
        metrics: Arc::new(Metrics::new(4)),
        media_clock: tokio::runtime::Handle::current(),
        recordings: TestRecordings::new(),
        recording_dir: dir.path().to_path_buf(),
        bridge_tls: robot_agent::bridge::BridgeTls::system(),
    });
    let (control, control_rx) = mpsc::unbounded_channel();
    let (updates_tx, updates) = mpsc::unbounded_channel();
    tokio::spawn(session::run(ctx, offer, control_rx, updates_tx));
    Session {
        transport,
        channels,
        control,
        updates,
        _dir: dir,
    }
}

impl Session {
    /// Joins (the app is in the channel), answers the robot's offer, connects the app.
    async fn connect_app(&mut self) -> (FakeChannel, Arc<FakeListener>) {
        let ch = self.channels.recv().await.unwrap();
        let l = self.transport.listener_for("app", 1).await;
        ch.send(ServerMessage::Signal {
            from: "app".into(),
            payload: SignalPayload::Description(SessionDescription {
                kind: SdpType::Answer,
                sdp: "answer".into(),
            }),
        });
        l.connect();
        (ch, l)
    }

    /// The final status.
    async fn end(&mut self) -> (SessionState, String) {
        let mut last = None;
        loop {
            match tokio::time::timeout(WAIT, self.updates.recv())
                .await
                .expect("the session did not end")
            {
                Some(SessionUpdate::Status { state, detail, .. }) => last = Some((state, detail)),
                Some(SessionUpdate::Ended { .. }) | None => return last.unwrap(),
                Some(_) => {}
            }
        }
    }
}

/// `n` packets of a 440 Hz tone ([`test_util::tone_packets`]).
fn tone_packets(n: usize) -> Vec<Bytes> {
    robot_agent::test_util::tone_packets(n).unwrap()
}

fn media(bytes: &[u8]) -> Value {
    json!({"event": "media", "payload": B64.encode(bytes)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_goes_both_ways_marks_are_truthful_a_drop_resumes_and_hangup_leaves() {
    let mut program = Program::start(None).await;
    let mut s = start(offer(&program.url, BridgeFormat::Opus, 48_000));
    let mut c = program.conn().await;
    assert_eq!(
        program.auths.lock().unwrap().as_slice(),
        [format!("Bearer {SECRET}")]
    );
    let start = c.next("start").await;
    assert_eq!(
        start["call"],
        json!({"src_uid": "caller", "dst_uid": ["callee"]})
    );
    assert_eq!(start["session"], 7);
    assert_eq!(start["channel"], "room");
    assert_eq!(start["resume"], false);
    assert_eq!(
        start["format"],
        json!({"encoding":"opus","rate":48000,"channels":1,"frame_ms":20})
    );
    let (_ch, l) = s.connect_app().await;
    assert_eq!(
        c.next("participant").await,
        json!({"event":"participant","uid":"app","state":"joined"})
    );

    // the app speaks: its packets reach the program as they were received
    let packets = tone_packets(3);
    for (k, p) in packets.iter().enumerate() {
        let k16 = u16::try_from(k).unwrap();
        l.send_audio(100 + k16, 5000 + 960 * u32::from(k16), p.clone());
    }
    for (k, p) in packets.iter().enumerate() {
        let m = c.next("media").await;
        assert_eq!(m["uid"], "app");
        assert_eq!(m["seq"], k);
        assert_eq!(m["timestamp_ms"], 20 * k);
        assert_eq!(
            B64.decode(m["payload"].as_str().unwrap()).unwrap(),
            p.to_vec()
        );
    }

    // the program speaks: its packets are played as sent; the mark comes back once they
    // were written to the listener
    let speech = tone_packets(5);
    for p in &speech {
        c.send(media(p));
    }
    c.send(json!({"event": "mark", "name": "said"}));
    let mark = c.next("mark").await;
    assert_eq!(mark["name"], "said");
    let frames = l.frames();
    assert!(
        frames.len() >= 5,
        "the mark came before its audio was written"
    );
    assert_eq!(&frames[frames.len() - 5..], speech.as_slice());
    assert_eq!(mark["position_ms"], 20 * frames.len());

    // a clear: the marks never played come back in `cleared`, not as `mark`
    let long = tone_packets(200);
    for p in &long {
        c.send(media(p));
    }
    c.send(json!({"event": "mark", "name": "never"}));
    c.send(json!({"event": "clear"}));
    let cleared = c.next("cleared").await;
    assert_eq!(cleared["marks"], json!(["never"]));
    let dropped = cleared["dropped_ms"].as_u64().unwrap();
    assert!(dropped > 0 && dropped % 20 == 0, "{cleared}");
    let played_long = l.frames().len() - frames.len();
    assert_eq!(
        u64::try_from(played_long).unwrap() * 20 + dropped,
        200 * 20,
        "every frame either played or was dropped"
    );
    // nothing more of it plays after the clear was answered
    tokio::time::sleep(Duration::from_millis(200)).await; // let frames that would leak go out
    assert_eq!(l.frames().len() - frames.len(), played_long);

    // the program drops the socket: the robot redials at once and resumes
    c.close();
    let mut c = program.conn().await;
    let start = c.next("start").await;
    assert_eq!(start["resume"], true);
    assert_eq!(
        c.next("participant").await,
        json!({"event":"participant","uid":"app","state":"joined"})
    );
    // and the listener was not touched
    assert!(!l.is_closed());
    c.send(json!({"event": "play", "audio": "jingle"}));
    c.send(json!({"event": "mark", "name": "after-jingle"}));
    assert_eq!(c.next("mark").await["name"], "after-jingle");
    let f = l.frames();
    assert_eq!(
        &f[f.len() - 3..],
        &[
            TestFrames::frame(9, 0),
            TestFrames::frame(9, 1),
            TestFrames::frame(9, 2)
        ]
    );

    c.send(json!({"event": "hangup"}));
    assert_eq!(c.next("stop").await["reason"], "ended");
    assert_eq!(
        s.end().await,
        (SessionState::Left, "the bridge program hung up".into())
    );
    assert!(l.is_closed());
    drop(s.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcm16_is_decoded_at_the_rate_and_the_programs_pcm_is_encoded() {
    let mut program = Program::start(None).await;
    let mut s = start(offer(&program.url, BridgeFormat::Pcm16, 16_000));
    let mut c = program.conn().await;
    assert_eq!(c.next("start").await["format"]["rate"], 16_000);
    let (_ch, l) = s.connect_app().await;
    for (k, p) in tone_packets(10).into_iter().enumerate() {
        let k = u16::try_from(k).unwrap();
        l.send_audio(k, 960 * u32::from(k), p);
    }
    let mut pcm = Vec::new();
    for k in 0..10 {
        let m = c.next("media").await;
        assert_eq!(m["seq"], k);
        assert_eq!(m["timestamp_ms"], 20 * k);
        let bytes = B64.decode(m["payload"].as_str().unwrap()).unwrap();
        assert_eq!(bytes.len(), 640, "20 ms at 16 kHz");
        pcm.extend(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
    }
    // a 440 Hz tone: 880 zero crossings a second (123 in these 140 ms), loud after the
    // codec's start-up
    let tail = &pcm[320 * 3..];
    let crossings = tail.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    assert!((110..=135).contains(&crossings), "{crossings}");
    assert!(tail.iter().map(|v| i32::from(*v).abs()).max().unwrap() > 4000);

    // the program's pcm16 (two frames in one message) becomes two Opus frames
    let frame: Vec<u8> = (0..320)
        .flat_map(|i| {
            let t = f32::from(u16::try_from(i).unwrap()) / 16_000.0;
            ((6000.0 * (2.0 * std::f32::consts::PI * 300.0 * t).sin()) as i16).to_le_bytes()
        })
        .collect();
    let two: Vec<u8> = frame.iter().chain(frame.iter()).copied().collect();
    c.send(media(&two));
    c.send(json!({"event": "mark", "name": "m"}));
    c.next("mark").await;
    let frames = l.frames();
    assert_eq!(frames.len(), 2);
    let mut dec = audio::PcmDecoder::new(48_000).unwrap();
    for f in &frames {
        assert_eq!(dec.decode(f).unwrap().len(), 960);
    }
    s.control.send(Control::Leave).unwrap();
    assert_eq!(c.next("stop").await["reason"], "ended");
    assert_eq!(s.end().await.1, "told to leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_refused_one_by_one_and_the_call_goes_on() {
    let mut program = Program::start(None).await;
    let mut s = start(offer(&program.url, BridgeFormat::Pcm16, 8_000));
    let mut c = program.conn().await;
    c.next("start").await;
    let (_ch, l) = s.connect_app().await;
    c.send_raw(Message::Text("{not json".into()));
    c.send_raw(Message::Binary(vec![1, 2, 3].into()));
    c.send(json!({"event": "media", "payload": "!!"}));
    c.send(media(&[0; 321])); // not a whole 20 ms frame at 8 kHz (320 bytes)
    c.send(json!({"event": "dance"}));
    c.send(json!({"event": "mark"}));
    let big = "x".repeat(300 * 1024);
    c.send(json!({"event": "media", "payload": big}));
    // the same connection still works
    c.send(media(&[0; 320]));
    c.send(json!({"event": "mark", "name": "still here"}));
    assert_eq!(c.next("mark").await["name"], "still here");
    assert_eq!(l.frames().len(), 1, "only the good audio played");
    assert_eq!(program.auths.lock().unwrap().len(), 1, "never redialled");
    s.control.send(Control::Leave).unwrap();
    assert_eq!(c.next("stop").await["reason"], "ended");
    // the session's end says what was refused
    let (state, detail) = s.end().await;
    assert_eq!(state, SessionState::Left);
    assert!(
        detail.starts_with("told to leave; 7 bridge program message(s) refused, the last: "),
        "{detail}"
    );
    assert!(detail.ends_with("over the limit of 262144"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_refuses_the_secret_ends_the_robot_with_bridge_lost() {
    let mut program = Program::start(Some(401)).await;
    let mut s = start(offer(&program.url, BridgeFormat::Opus, 48_000));
    let (state, detail) = s.end().await;
    assert_eq!(state, SessionState::Left);
    assert_eq!(
        detail,
        "bridge_lost: the bridge program refused the connection: HTTP 401 (check the secret in DAPI_BRIDGES)"
    );
    assert_eq!(program.auths.lock().unwrap().len(), 1, "a refusal is final");
    assert!(program.conns.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_offered_again_after_its_agent_died_resumes_its_program() {
    let mut program = Program::start(None).await;
    let mut o = offer(&program.url, BridgeFormat::Pcm16, 24_000);
    o.attempt = 2;
    let mut s = start(o);
    let mut c = program.conn().await;
    let start = c.next("start").await;
    assert_eq!(start["resume"], true, "{start}");
    assert_eq!(start["format"]["rate"], 24_000);
    s.control.send(Control::Leave).unwrap();
    assert_eq!(c.next("stop").await["reason"], "ended");
    s.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_does_not_wait_for_a_play_still_loading() {
    let mut program = Program::start(None).await;
    let mut s = start(offer(&program.url, BridgeFormat::Opus, 48_000));
    let mut c = program.conn().await;
    c.next("start").await;
    let (_ch, l) = s.connect_app().await;
    // 4 s of audio, a play whose asset never loads, audio and a mark behind it
    for p in tone_packets(200) {
        c.send(media(&p));
    }
    c.send(json!({"event": "mark", "name": "before"}));
    c.send(json!({"event": "play", "audio": "slow"}));
    for p in tone_packets(50) {
        c.send(media(&p));
    }
    c.send(json!({"event": "mark", "name": "behind"}));
    tokio::time::sleep(Duration::from_millis(300)).await; // some of the 4 s plays
    c.send(json!({"event": "clear"}));
    let cleared = c.next("cleared").await;
    assert_eq!(cleared["marks"], json!(["before", "behind"]), "{cleared}");
    let dropped = cleared["dropped_ms"].as_u64().unwrap();
    let played = u64::try_from(l.frames().len()).unwrap();
    assert_eq!(
        played * 20 + dropped,
        250 * 20,
        "every frame played or dropped"
    );
    assert!(
        played < 200,
        "the clear came before the 4 s were over: {played}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        u64::try_from(l.frames().len()).unwrap(),
        played,
        "nothing after the clear"
    );
    // the program goes on: what it says next plays
    c.send(media(&tone_packets(1)[0]));
    c.send(json!({"event": "mark", "name": "after"}));
    assert_eq!(c.next("mark").await["name"], "after");
    s.control.send(Control::Leave).unwrap();
    s.end().await;
}

/// Two participants: each one's audio reaches the program under its own uid with its own
/// `seq` and `timestamp_ms`; a newcomer and a leaver are announced; the program's mark
/// comes back only once its audio was written to both listeners' tracks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_participant_is_heard_under_its_uid_and_a_mark_waits_for_every_listener() {
    let mut program = Program::start(None).await;
    let mut s = start(offer(&program.url, BridgeFormat::Opus, 48_000));
    let mut c = program.conn().await;
    c.next("start").await;
    let (ch, app) = s.connect_app().await;
    assert_eq!(c.next("participant").await["uid"], "app");
    // bob joins and offers, as a newcomer does
    ch.send(ServerMessage::PeerJoined { uid: "bob".into() });
    ch.send(ServerMessage::Signal {
        from: "bob".into(),
        payload: SignalPayload::Description(SessionDescription {
            kind: SdpType::Offer,
            sdp: "bob offer".into(),
        }),
    });
    let bob = s.transport.listener_for("bob", 1).await;
    bob.connect();
    assert_eq!(
        c.next("participant").await,
        json!({"event":"participant","uid":"bob","state":"joined"})
    );

    // both speak, interleaved, from their own RTP clocks
    let packets = tone_packets(4);
    for (k, p) in packets.iter().enumerate() {
        let k16 = u16::try_from(k).unwrap();
        app.send_audio(10 + k16, 1000 + 960 * u32::from(k16), p.clone());
        bob.send_audio(500 + k16, 777_000 + 960 * u32::from(k16), p.clone());
    }
    let mut heard: std::collections::HashMap<String, Vec<(u64, u64)>> = Default::default();
    for _ in 0..2 * packets.len() {
        let m = c.next("media").await;
        heard
            .entry(m["uid"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                m["seq"].as_u64().unwrap(),
                m["timestamp_ms"].as_u64().unwrap(),
            ));
    }
    let expected: Vec<(u64, u64)> = (0..4).map(|k| (k, 20 * k)).collect();
    assert_eq!(heard["app"], expected);
    assert_eq!(heard["bob"], expected);

    // the program speaks: the mark comes back once both listeners have every frame
    let speech = tone_packets(5);
    for p in &speech {
        c.send(media(p));
    }
    c.send(json!({"event": "mark", "name": "both"}));
    assert_eq!(c.next("mark").await["name"], "both");
    for l in [&app, &bob] {
        let f = l.frames();
        assert!(f.len() >= 5, "{}: the mark came before its audio", l.peer());
        assert_eq!(&f[f.len() - 5..], speech.as_slice(), "{}", l.peer());
    }

    // bob leaves: announced; the app's audio still flows
    ch.send(ServerMessage::PeerLeft {
        uid: "bob".into(),
        reason: protocol::signaling::LeaveReason::Left,
    });
    assert_eq!(
        c.next("participant").await,
        json!({"event":"participant","uid":"bob","state":"left"})
    );
    app.send_audio(14, 1000 + 960 * 4, packets[0].clone());
    let m = c.next("media").await;
    assert_eq!(
        (m["uid"].clone(), m["seq"].clone()),
        (json!("app"), json!(4))
    );
    s.control.send(Control::Leave).unwrap();
    assert_eq!(c.next("stop").await["reason"], "ended");
}
