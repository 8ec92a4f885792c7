//! `/rtc` against the real server on port 0, with real WebSocket clients: every message
//! of the protocol and every error.
//!
//! The server runs on a manual clock (`Clock::manual`) so idle timeouts and the rate
//! limit are driven by moving time, not by sleeping. The hub's ticker runs every real
//! second and reads that clock.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use api::clock::Clock;
use api::config::{Config, Secret};
use api::domain::{ChannelName, Uid};
use api::token::{PRIVILEGE_JOIN, mint_006};
use api::{AppState, Application};
use common::TempDir;
use common::rtc_client::{
    APP, WAIT, Ws, expect_close, expect_error, expect_fatal, expect_kicked, expect_peer_left,
    join_at, join_text, next_msg, offer, send,
};
use futures_util::{SinkExt, StreamExt};
use protocol::signaling::{
    IceCandidate, LeaveReason, SdpType, ServerMessage, SessionDescription, SignalPayload, codes,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";

struct TestApp {
    addr: SocketAddr,
    db_url: String,
    state: AppState,
    clock: Clock,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: TempDir,
}

async fn spawn_app(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = TempDir::new("rtc-ws");
    let db_url = dir.sqlite_url("t.db");
    let mut config = Config::for_tests(&db_url);
    tweak(&mut config);
    let clock = Clock::manual(chrono_now_ms());
    let app = Application::build_with_clock(config, clock.clone())
        .await
        .unwrap();
    let addr = app.local_addr().unwrap();
    let state = app.state().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        db_url,
        state,
        clock,
        http: reqwest::Client::new(),
        _stop: tx,
        _dir: dir,
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

impl TestApp {
    async fn post(&self, path: &str, body: Value) -> Value {
        let v: Value = self
            .http
            .post(format!("http://{}/dapi/{path}", self.addr))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["success"], json!(true), "{path}: {v}");
        v["data"].clone()
    }

    /// A call from `caller` to `callee`; returns (channel, caller token, callee token).
    async fn call(&self, caller: &str, callee: &str) -> (String, String, String) {
        let d = self
            .post("call/user", json!({"src_uid": caller, "dst_uid": [callee]}))
            .await;
        let channel = d["channel"].as_str().unwrap().to_owned();
        let t = self
            .post("call/token", json!({"uid": callee, "channel": channel}))
            .await;
        (
            channel,
            d["token"].as_str().unwrap().to_owned(),
            t["token"].as_str().unwrap().to_owned(),
        )
    }

    /// The heartbeat deadline the presence worker left on `uid`'s member row. Read with
    /// SQL because no store method exposes it (the sweeper of the call-lifecycle issue
    /// is what consumes it).
    async fn heartbeat_deadline(&self, channel: &str, uid: &str) -> Option<i64> {
        let pool = sqlx::SqlitePool::connect(&self.db_url).await.unwrap();
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT heartbeat_deadline FROM call_members WHERE channel = ?1 AND uid = ?2",
        )
        .bind(channel)
        .bind(uid)
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        v
    }

    fn token(&self, channel: &str, uid: &str) -> String {
        self.state
            .tokens()
            .mint(channel, uid, self.clock.now_secs())
            .unwrap()
    }

    async fn connect(&self) -> Ws {
        common::rtc_client::connect(&format!("ws://{}/rtc", self.addr)).await
    }

    /// Connects and joins; returns the socket and its `joined` peers.
    async fn join(&self, channel: &str, uid: &str) -> (Ws, Vec<String>) {
        let token = self.token(channel, uid);
        self.join_with(channel, uid, &token).await
    }

    async fn join_with(&self, channel: &str, uid: &str, token: &str) -> (Ws, Vec<String>) {
        join_at(&format!("ws://{}/rtc", self.addr), channel, uid, token).await
    }

    /// (kind, uid, effect) of each timeline entry of the channel's call.
    async fn timeline_kinds(&self, channel: &str) -> Vec<(String, String, String)> {
        let v: Value = self
            .http
            .get(format!(
                "http://{}/dapi/call/timeline?channel={channel}",
                self.addr
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap_or_default().to_owned(),
                    e["uid"].as_str().unwrap_or_default().to_owned(),
                    e["effect"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

fn ch(s: &str) -> ChannelName {
    ChannelName::parse(s).unwrap()
}

fn uid(s: &str) -> Uid {
    Uid::parse(s).unwrap()
}

/// Waits until the presence worker has written what `check` looks for. The worker runs
/// after the socket messages, asynchronously; polling the timeline is the only way to
/// observe it from outside.
async fn eventually_timeline(
    app: &TestApp,
    channel: &str,
    check: impl Fn(&[(String, String, String)]) -> bool,
) {
    for _ in 0..100 {
        let t = app.timeline_kinds(channel).await;
        if check(&t) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "timeline never matched: {:?}",
        app.timeline_kinds(channel).await
    );
}

#[tokio::test]
async fn two_clients_join_exchange_signals_and_leave() {
    let app = spawn_app(|_| {}).await;
    let (channel, alice_token, bob_token) = app.call("alice", "bob").await;

    let (mut alice, peers) = app.join_with(&channel, "alice", &alice_token).await;
    assert!(peers.is_empty());
    let (mut bob, peers) = app.join_with(&channel, "bob", &bob_token).await;
    assert_eq!(peers, vec!["alice".to_string()]);
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined { uid: "bob".into() }
    );
    assert_eq!(
        app.state.rtc().present(&ch(&channel)),
        vec![uid("alice"), uid("bob")]
    );

    // The newcomer offers; the peer already present answers.
    send(&mut bob, &offer("alice", "v=0\r\no=bob\r\n")).await;
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::Signal {
            from: "bob".into(),
            payload: SignalPayload::Description(SessionDescription {
                kind: SdpType::Offer,
                sdp: "v=0\r\no=bob\r\n".into()
            })
        }
    );
    send(
        &mut alice,
        r#"{"type":"signal","to":"bob","description":{"type":"answer","sdp":"v=0\r\no=alice\r\n"}}"#,
    )
    .await;
    match next_msg(&mut bob).await {
        ServerMessage::Signal {
            from,
            payload: SignalPayload::Description(d),
        } => {
            assert_eq!(from, "alice");
            assert_eq!(d.kind, SdpType::Answer);
        }
        other => panic!("{other:?}"),
    }
    // Trickled candidates both ways, then end of candidates.
    let cand = json!({"type":"signal","to":"alice","candidate":{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"uf"}});
    send(&mut bob, &cand.to_string()).await;
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::Signal {
            from: "bob".into(),
            payload: SignalPayload::Candidate(Some(IceCandidate {
                candidate: "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
                username_fragment: Some("uf".into()),
            }))
        }
    );
    send(
        &mut alice,
        r#"{"type":"signal","to":"bob","candidate":null}"#,
    )
    .await;
    assert_eq!(
        next_msg(&mut bob).await,
        ServerMessage::Signal {
            from: "alice".into(),
            payload: SignalPayload::Candidate(None)
        }
    );
    // The exact relayed JSON: `from` in place of `to`.
    send(
        &mut alice,
        r#"{"type":"signal","to":"bob","candidate":null}"#,
    )
    .await;
    let raw = loop {
        match bob.next().await.unwrap().unwrap() {
            Message::Text(t) => break t.to_string(),
            _ => continue,
        }
    };
    assert_eq!(
        serde_json::from_str::<Value>(&raw).unwrap(),
        json!({"type":"signal","from":"alice","candidate":null})
    );

    // Leave: the other sees peer_left "left", the leaver's socket is closed normally.
    send(&mut bob, r#"{"type":"leave"}"#).await;
    assert_eq!(expect_close(&mut bob).await, Some(1000));
    expect_peer_left(&mut alice, "bob", LeaveReason::Left).await;
    assert_eq!(app.state.rtc().present(&ch(&channel)), vec![uid("alice")]);

    // Presence fed the call: the callee's presence answered it (ringing -> connected) and
    // bob's departure was recorded.
    eventually_timeline(&app, &channel, |t| {
        t.iter()
            .any(|(k, u, e)| k == "rtc_presence" && u == "bob" && e == "call connected")
            && t.iter().any(|(k, u, _)| k == "rtc_left" && u == "bob")
    })
    .await;
    // A socket in the channel is a heartbeat: alice's deadline is now + 45 s. Bob left on
    // purpose: that is hanging up (his row goes to 2, code 2 when nobody is left), so he
    // has no heartbeat deadline any more.
    let now = app.clock.now_ms();
    assert_eq!(
        app.heartbeat_deadline(&channel, "alice").await,
        Some(now + 45_000)
    );
    assert_eq!(app.heartbeat_deadline(&channel, "bob").await, None);

    // Closing the socket without `leave` is also a departure.
    let (mut carol, _) = app.join(&channel, "carol").await;
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined {
            uid: "carol".into()
        }
    );
    carol.close(None).await.unwrap();
    expect_peer_left(&mut alice, "carol", LeaveReason::Left).await;
    eventually_timeline(&app, &channel, |t| {
        t.iter()
            .any(|(k, u, _)| k == "rtc_disconnected" && u == "carol")
    })
    .await;
    // A dropped socket keeps its deadline: time to reconnect.
    assert_eq!(
        app.heartbeat_deadline(&channel, "carol").await,
        Some(now + 45_000)
    );

    // A socket dropped without a close frame is noticed too.
    let (dave, _) = app.join(&channel, "dave").await;
    next_msg(&mut alice).await;
    drop(dave);
    expect_peer_left(&mut alice, "dave", LeaveReason::Left).await;
}

#[tokio::test]
async fn bad_joins_get_an_error_naming_the_reason_then_close() {
    let app = spawn_app(|_| {}).await;
    let channel = "ch_errors";
    let now = app.clock.now_secs() as u32;
    let join_priv = BTreeMap::from([(PRIVILEGE_JOIN, now + 600)]);
    let publish_only = BTreeMap::from([(2u16, now + 600)]);
    let cases: Vec<(String, &str)> = vec![
        (
            join_text(
                channel,
                "alice",
                &mint_006(APP, "0123456789abcdef0123456789abcdef", channel, "alice", 7, now + 600, &join_priv).unwrap(),
            ),
            codes::TOKEN_BAD_SIGNATURE,
        ),
        (
            join_text(
                channel,
                "alice",
                &mint_006("0123456789abcdef0123456789abcdef", CERT, channel, "alice", 7, now + 600, &join_priv).unwrap(),
            ),
            codes::TOKEN_WRONG_APP_ID,
        ),
        (
            join_text(channel, "alice", &app.token("ch_other", "alice")),
            codes::TOKEN_WRONG_CHANNEL,
        ),
        (
            join_text(channel, "alice", &app.token(channel, "bob")),
            codes::TOKEN_WRONG_UID,
        ),
        (
            join_text(
                channel,
                "alice",
                &app
                    .state
                    .tokens()
                    .mint(channel, "alice", app.clock.now_secs() - 601)
                    .unwrap(),
            ),
            codes::TOKEN_EXPIRED,
        ),
        (
            join_text(
                channel,
                "alice",
                &mint_006(APP, CERT, channel, "alice", 7, now + 600, &publish_only).unwrap(),
            ),
            codes::TOKEN_NO_JOIN_PRIVILEGE,
        ),
        (join_text(channel, "alice", "not-a-token"), codes::TOKEN_MALFORMED),
        (
            json!({"type":"join","appID":"0123456789abcdef0123456789abcdef","channel":channel,"uid":"alice","token":app.token(channel,"alice")}).to_string(),
            codes::WRONG_APP_ID,
        ),
    ];
    for (text, code) in cases {
        let mut ws = app.connect().await;
        send(&mut ws, &text).await;
        expect_fatal(&mut ws, code, 1008).await;
    }
    assert!(app.state.rtc().present(&ch(channel)).is_empty());
}

#[tokio::test]
async fn protocol_violations_are_fatal_for_the_offender_only() {
    let app = spawn_app(|c| c.rtc.max_frame = 4096).await;
    let channel = "ch_abuse";
    let (mut alice, _) = app.join(channel, "alice").await;

    // First message not join.
    let mut ws = app.connect().await;
    send(&mut ws, &offer("alice", "v=0")).await;
    expect_fatal(&mut ws, codes::NOT_JOINED, 1008).await;
    // Malformed JSON before and after joining.
    let mut ws = app.connect().await;
    send(&mut ws, "{not json").await;
    expect_fatal(&mut ws, codes::INVALID_MESSAGE, 1008).await;
    let (mut bob, _) = app.join(channel, "bob").await;
    next_msg(&mut alice).await; // peer_joined bob
    send(
        &mut bob,
        r#"{"type":"signal","to":"alice","description":{"type":"offer"}}"#,
    )
    .await;
    expect_fatal(&mut bob, codes::INVALID_MESSAGE, 1008).await;
    expect_peer_left(&mut alice, "bob", LeaveReason::Kicked).await;
    // Binary frames are not part of the protocol.
    let (mut bob, _) = app.join(channel, "bob").await;
    next_msg(&mut alice).await;
    bob.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    expect_fatal(&mut bob, codes::INVALID_MESSAGE, 1008).await;
    expect_peer_left(&mut alice, "bob", LeaveReason::Kicked).await;
    // Oversized frame: over 4096 bytes.
    let (mut bob, _) = app.join(channel, "bob").await;
    next_msg(&mut alice).await;
    send(&mut bob, &offer("alice", &"a".repeat(5000))).await;
    expect_fatal(&mut bob, codes::FRAME_TOO_LARGE, 1009).await;
    expect_peer_left(&mut alice, "bob", LeaveReason::Kicked).await;
    // Far over the limit: refused by the transport, with the same result for the others.
    let (mut bob, _) = app.join(channel, "bob").await;
    next_msg(&mut alice).await;
    let _ = bob
        .send(Message::text(offer("alice", &"a".repeat(100_000))))
        .await;
    expect_peer_left(&mut alice, "bob", LeaveReason::Kicked).await;

    // Alice was never disturbed: she still relays to a newcomer.
    let (mut carol, _) = app.join(channel, "carol").await;
    next_msg(&mut alice).await;
    send(&mut alice, &offer("carol", "v=0")).await;
    assert!(matches!(
        next_msg(&mut carol).await,
        ServerMessage::Signal { from, .. } if from == "alice"
    ));
}

#[tokio::test]
async fn rate_limit_drops_the_flooder() {
    // 5 per second, burst 20; the manual clock does not move, so nothing refills.
    let app = spawn_app(|c| c.rtc.msgs_per_sec = 5).await;
    let channel = "ch_rate";
    let (mut alice, _) = app.join(channel, "alice").await;
    let (mut bob, _) = app.join(channel, "bob").await;
    next_msg(&mut alice).await;
    for _ in 0..25 {
        let _ = bob.send(Message::text(offer("alice", "v=0"))).await;
    }
    // The join took one token: 19 signals pass, the 20th is refused.
    for _ in 0..19 {
        assert!(matches!(
            next_msg(&mut alice).await,
            ServerMessage::Signal { .. }
        ));
    }
    expect_peer_left(&mut alice, "bob", LeaveReason::Kicked).await;
    expect_fatal(&mut bob, codes::RATE_LIMITED, 1008).await;
    assert_eq!(app.state.rtc().present(&ch(channel)), vec![uid("alice")]);
}

#[tokio::test]
async fn relay_to_an_absent_peer_is_an_error_and_the_socket_stays() {
    let app = spawn_app(|_| {}).await;
    let (mut alice, _) = app.join("ch_a", "alice").await;
    let (_x, _) = app.join("ch_b", "xavier").await;
    send(&mut alice, &offer("nobody", "v=0")).await;
    expect_error(&mut alice, codes::PEER_NOT_FOUND).await;
    // A member of another channel is not reachable either.
    send(&mut alice, &offer("xavier", "v=0")).await;
    expect_error(&mut alice, codes::PEER_NOT_FOUND).await;
    // Nor is oneself.
    send(&mut alice, &offer("alice", "v=0")).await;
    expect_error(&mut alice, codes::PEER_NOT_FOUND).await;
    // A second join on the same socket is refused; the socket stays too.
    send(
        &mut alice,
        &join_text("ch_b", "alice", &app.token("ch_b", "alice")),
    )
    .await;
    expect_error(&mut alice, codes::ALREADY_JOINED).await;
    // Still in the channel and working.
    let (mut bob, _) = app.join("ch_a", "bob").await;
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined { uid: "bob".into() }
    );
    send(&mut bob, &offer("alice", "v=0")).await;
    assert!(matches!(
        next_msg(&mut alice).await,
        ServerMessage::Signal { .. }
    ));
}

#[tokio::test]
async fn rejoining_replaces_the_older_socket() {
    let app = spawn_app(|_| {}).await;
    let channel = "ch_replace";
    let (mut alice1, _) = app.join(channel, "alice").await;
    let (mut bob, _) = app.join(channel, "bob").await;
    next_msg(&mut alice1).await;
    let (mut alice2, peers) = app.join(channel, "alice").await;
    assert_eq!(peers, vec!["bob".to_string()]);
    expect_kicked(&mut alice1, "replaced").await;
    expect_peer_left(&mut bob, "alice", LeaveReason::Replaced).await;
    assert_eq!(
        next_msg(&mut bob).await,
        ServerMessage::PeerJoined {
            uid: "alice".into()
        }
    );
    send(&mut alice2, &offer("bob", "v=0")).await;
    assert!(
        matches!(next_msg(&mut bob).await, ServerMessage::Signal { from, .. } if from == "alice")
    );
    assert_eq!(
        app.state.rtc().present(&ch(channel)),
        vec![uid("bob"), uid("alice")]
    );
}

#[tokio::test]
async fn server_code_kicks_a_uid() {
    let app = spawn_app(|_| {}).await;
    let channel = "ch_kick";
    let (mut alice, _) = app.join(channel, "alice").await;
    let (mut robot, _) = app.join(channel, "robot").await;
    next_msg(&mut alice).await;
    assert!(
        app.state
            .rtc()
            .kick(&ch(channel), &uid("robot"), "robot_quit")
    );
    expect_kicked(&mut robot, "robot_quit").await;
    expect_peer_left(&mut alice, "robot", LeaveReason::Kicked).await;
    assert!(!app.state.rtc().kick(&ch(channel), &uid("robot"), "again"));
    assert_eq!(app.state.rtc().present(&ch(channel)), vec![uid("alice")]);
}

#[tokio::test]
async fn channel_holds_at_most_max_peers() {
    let app = spawn_app(|c| c.rtc.max_peers = 2).await;
    let channel = "ch_full";
    let (_a, _) = app.join(channel, "a").await;
    let (_b, _) = app.join(channel, "b").await;
    let mut c = app.connect().await;
    send(&mut c, &join_text(channel, "c", &app.token(channel, "c"))).await;
    expect_fatal(&mut c, codes::CHANNEL_FULL, 1008).await;
    assert_eq!(app.state.rtc().present(&ch(channel)).len(), 2);
}

#[tokio::test]
async fn idle_sockets_are_pinged_then_dropped() {
    // Idle timeout 3 s: a ping after 1 s of silence, dropped after 3 s.
    let app = spawn_app(|c| c.rtc.idle_timeout = Duration::from_secs(3)).await;
    let channel = "ch_idle";
    let (mut alice, _) = app.join(channel, "alice").await;
    let (mut bob, _) = app.join(channel, "bob").await;
    next_msg(&mut alice).await;

    // Move 1.5 s: both get a ping. Bob reads (tungstenite answers with a pong as it
    // reads); alice does not read, so she never answers.
    app.clock.advance_ms(1500);
    let ping = tokio::time::timeout(WAIT, async {
        loop {
            if let Message::Ping(_) = bob.next().await.unwrap().unwrap() {
                break;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "bob got no ping");
    // Let bob's pong go out and reach the hub (it is flushed on bob's next read).
    let _ = tokio::time::timeout(Duration::from_millis(300), bob.next()).await;

    // At 3.5 s alice has been silent past the timeout; bob answered at 1.5 s.
    app.clock.advance_ms(2000);
    expect_peer_left(&mut bob, "alice", LeaveReason::Timeout).await;
    expect_fatal(&mut alice, codes::IDLE_TIMEOUT, 1008).await;
    assert_eq!(app.state.rtc().present(&ch(channel)), vec![uid("bob")]);
}

#[tokio::test]
async fn joined_hands_out_ice_servers_with_turn_rest_credentials() {
    let app = spawn_app(|c| {
        c.rtc.ice_servers = r#"[{"urls":"stun:stun.example.org:3478"},{"urls":["turn:turn.example.org:3478?transport=udp"]}]"#
            .parse()
            .unwrap();
        c.rtc.turn_secret = Some(Secret::new("north-secret"));
        c.rtc.turn_ttl = Some(Duration::from_secs(3600));
    })
    .await;
    let mut ws = app.connect().await;
    send(
        &mut ws,
        &join_text("ch_ice", "alice", &app.token("ch_ice", "alice")),
    )
    .await;
    let raw = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => break t.to_string(),
            _ => continue,
        }
    };
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["type"], "joined");
    assert_eq!(
        v["ice_servers"][0],
        json!({"urls": ["stun:stun.example.org:3478"]})
    );
    let expiry = app.clock.now_secs() + 3600;
    let username = format!("{expiry}:alice");
    assert_eq!(v["ice_servers"][1]["username"], json!(username));
    let (_, credential) = api::rtc::ice::turn_rest_credential("north-secret", "alice", expiry);
    assert_eq!(v["ice_servers"][1]["credential"], json!(credential));
}

#[tokio::test]
async fn demo_page_and_client_module_are_served() {
    let app = spawn_app(|_| {}).await;
    let page = app
        .http
        .get(format!("http://{}/demo", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let body = page.text().await.unwrap();
    assert!(body.contains("./demo/rtc.js"));
    assert!(body.contains("Call the robot"));
    let js = app
        .http
        .get(format!("http://{}/demo/rtc.js", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.text().await.unwrap().contains("export class RtcChannel"));
}
