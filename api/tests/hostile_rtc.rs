//! Issue 13, the `/rtc` half: each attack performed against the real server with real
//! WebSocket clients, asserting that it fails **and** that a legitimate client beside it
//! is unaffected (its socket stays, its presence stays, its call goes on).
//!
//! The server runs on a manual clock; the hub's ticker runs every real second and reads
//! it, so deadlines (join, token, heartbeat) are crossed by moving the clock, then waiting
//! for a tick. The idle timeout is raised where a test moves time without traffic.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use api::clock::Clock;
use api::sweeper::sweep_once;
use common::rtc_client::{
    Ws, expect_close, expect_error, expect_fatal, expect_kicked, expect_peer_left, join_text,
    next_msg, next_msg_within, offer, send,
};
use common::{TestApp, backends, spawn_app_with};
use futures_util::StreamExt;
use protocol::signaling::{LeaveReason, ServerMessage, SignalPayload, codes};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// 2023-11-14, in ms.
const T0: i64 = 1_700_000_000_000;
/// Long enough for the hub's 1 s ticker to run once after the clock moved.
const TICK: Duration = Duration::from_millis(1300);

/// Connects to `/rtc` from local address `from` (any 127.0.0.x is loopback on Linux), so
/// the per-address cap can be exercised from one process. `Err(status)` when the upgrade
/// is refused.
async fn connect_from(app: &TestApp, from: Ipv4Addr) -> Result<Ws, u16> {
    let server: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    let tcp = sock.connect(server).await.unwrap();
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    match tokio_tungstenite::client_async(app.rtc_url(), tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

/// As [`connect_from`], presenting `Authorization: Bearer <key>` on the upgrade (what a
/// robot agent does with its key).
async fn connect_with_key(app: &TestApp, from: Ipv4Addr, key: &str) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    let tcp = sock.connect(server).await.unwrap();
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let mut req = app.rtc_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

async fn connect(app: &TestApp) -> Ws {
    connect_from(app, Ipv4Addr::LOCALHOST).await.unwrap()
}

/// Connects, joins and expects `joined`.
async fn join(app: &TestApp, channel: &str, uid: &str, token: &str) -> Ws {
    let mut ws = connect(app).await;
    send(&mut ws, &join_text(channel, uid, token)).await;
    match next_msg(&mut ws).await {
        ServerMessage::Joined { .. } => ws,
        other => panic!("expected joined, got {other:?}"),
    }
}

/// A call from `caller` to `callee`: (channel, caller's token).
async fn call(app: &TestApp, caller: &str, callee: &str) -> (String, String) {
    let d = app
        .ok(
            "/dapi/call/user",
            json!({"src_uid": caller, "dst_uid": [callee]}),
        )
        .await;
    (
        d["channel"].as_str().unwrap().to_owned(),
        d["token"].as_str().unwrap().to_owned(),
    )
}

/// A fresh token for `uid` in `channel` from `call/token`.
async fn call_token(app: &TestApp, channel: &str, uid: &str) -> String {
    app.ok("/dapi/call/token", json!({"uid": uid, "channel": channel}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn timeline(app: &TestApp, channel: &str) -> Vec<Value> {
    let v: Value = app
        .http
        .get(format!("{}/dapi/call/timeline?channel={channel}", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"]["events"].as_array().cloned().unwrap_or_default()
}

/// Sends a `signal` and expects it relayed to `to_ws` with `from`.
async fn relayed(from_ws: &mut Ws, from: &str, to_ws: &mut Ws, to: &str, sdp: &str) {
    send(from_ws, &offer(to, sdp)).await;
    match next_msg(to_ws).await {
        ServerMessage::Signal {
            from: f,
            payload: SignalPayload::Description(d),
        } => {
            assert_eq!(f, from);
            assert_eq!(d.sdp, sdp);
        }
        other => panic!("expected a signal from {from}, got {other:?}"),
    }
}

/// Nothing but pings within `wait` (the socket is open and quiet).
async fn quiet(ws: &mut Ws, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected nothing, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- 1. idle sockets

#[tokio::test]
async fn sockets_that_never_join_are_closed_and_a_member_stays() {
    let clock = Clock::manual(T0);
    let app = spawn_app_with("sqlite", clock.clone(), |c| {
        c.rtc.join_timeout = Duration::from_secs(10);
        c.rtc.idle_timeout = Duration::from_secs(3600);
    })
    .await;
    let (channel, alice_token) = call(&app, "alice", "bob").await;
    let mut alice = join(&app, &channel, "alice", &alice_token).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(connect(&app).await);
    }
    clock.advance_ms(9_000);
    tokio::time::sleep(TICK).await;
    // Before the deadline nothing happens.
    quiet(&mut idle[0], Duration::from_millis(200)).await;
    clock.advance_ms(1_500);
    for ws in &mut idle {
        expect_fatal(ws, codes::JOIN_TIMEOUT, 1008).await;
    }
    // The member is untouched and still relays.
    let bob_token = call_token(&app, &channel, "bob").await;
    let mut bob = join(&app, &channel, "bob", &bob_token).await;
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined { uid: "bob".into() }
    );
    relayed(&mut bob, "bob", &mut alice, "alice", "v=0\r\no=bob\r\n").await;
    // The closed sockets' tasks end (after their close handshake): only the members stay.
    drop(idle);
    let mut open = 0;
    for _ in 0..100 {
        open = app.state.rtc().occupancy().2;
        if open == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 2, "only the two members remain");
}

#[tokio::test]
async fn sockets_are_capped_per_address_and_in_total() {
    let app = spawn_app_with("sqlite", Clock::system(), |c| {
        c.rtc.sockets_per_ip = 5;
        c.rtc.sockets_total = 12;
    })
    .await;
    // The legitimate client, on 127.0.0.1.
    let (channel, alice_token) = call(&app, "alice", "bob").await;
    let mut alice = join(&app, &channel, "alice", &alice_token).await;

    // An attacker on 127.0.0.2: 5 sockets, then 429.
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from(&app, attacker).await.unwrap());
    }
    assert_eq!(connect_from(&app, attacker).await.err(), Some(429));
    // Other addresses fill the instance: 1 + 5 + 5 + 1 = 12, then 503 for anyone.
    for _ in 0..5 {
        held.push(
            connect_from(&app, Ipv4Addr::new(127, 0, 0, 3))
                .await
                .unwrap(),
        );
    }
    held.push(
        connect_from(&app, Ipv4Addr::new(127, 0, 0, 4))
            .await
            .unwrap(),
    );
    assert_eq!(
        connect_from(&app, Ipv4Addr::new(127, 0, 0, 5)).await.err(),
        Some(503)
    );
    // The member was never disturbed; once the attacker's sockets close, places return.
    quiet(&mut alice, Duration::from_millis(300)).await;
    drop(held);
    let bob_token = call_token(&app, &channel, "bob").await;
    let mut bob = None;
    for _ in 0..50 {
        if let Ok(mut ws) = connect_from(&app, Ipv4Addr::LOCALHOST).await {
            send(&mut ws, &join_text(&channel, "bob", &bob_token)).await;
            assert!(matches!(
                next_msg(&mut ws).await,
                ServerMessage::Joined { .. }
            ));
            bob = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut bob = bob.expect("a place came back after the attacker left");
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined { uid: "bob".into() }
    );
    relayed(&mut bob, "bob", &mut alice, "alice", "v=0\r\n").await;
}

#[tokio::test]
async fn a_robot_agent_holds_more_sessions_than_the_per_address_cap_and_others_do_not() {
    // Every session of a robot agent opens its /rtc socket from the agent host's address:
    // with its key the agent counts against the total only. A wrong key is anyone.
    let app = spawn_app_with("sqlite", Clock::system(), |c| {
        c.rtc.sockets_per_ip = 2;
        c.rtc.sockets_total = 8;
    })
    .await;
    let key = app.state.config().dispatch.agent_key.clone().unwrap();
    let host = Ipv4Addr::new(127, 0, 0, 7);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_with_key(&app, host, key.expose()).await.unwrap());
    }
    // The same address without the key, or with a wrong one, still has its own 2.
    for _ in 0..2 {
        held.push(connect_from(&app, host).await.unwrap());
    }
    assert_eq!(connect_from(&app, host).await.err(), Some(429));
    assert_eq!(
        connect_with_key(&app, host, "not-the-key").await.err(),
        Some(429)
    );
    // The total still holds for the agent: 7 open, one more, then 503.
    held.push(connect_with_key(&app, host, key.expose()).await.unwrap());
    assert_eq!(
        connect_with_key(&app, host, key.expose()).await.err(),
        Some(503)
    );
}

#[tokio::test]
async fn new_sockets_are_budgeted_per_address_and_agents_and_others_are_not_held_back() {
    // A connect-close flood: each upgrade is a WebSocket handshake (and, with a join, a
    // hub round) even though no socket stays open. The address's budget refuses the
    // upgrade itself with 429, before the handshake; it refills at its rate.
    let clock = Clock::manual(T0);
    let app = spawn_app_with("sqlite", clock.clone(), |c| {
        c.rtc.upgrades_per_ip_per_sec = 3; // bursts of 6
        c.rtc.idle_timeout = Duration::from_secs(3600);
    })
    .await;
    let (channel, alice_token) = call(&app, "alice", "bob").await;
    let mut alice = join(&app, &channel, "alice", &alice_token).await;

    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    for _ in 0..6 {
        let ws = connect_from(&app, attacker).await.unwrap();
        drop(ws);
    }
    // Nothing of the attacker's is open, yet the seventh new socket at once is refused.
    let refused = connect_from(&app, attacker).await.err();
    assert_eq!(refused, Some(429));
    // Others are not held back: another address, and a robot agent on the same address.
    let other = connect_from(&app, Ipv4Addr::new(127, 0, 0, 3)).await;
    assert!(other.is_ok());
    let key = app.state.config().dispatch.agent_key.clone().unwrap();
    let mut agent_sockets = Vec::new();
    for _ in 0..8 {
        agent_sockets.push(
            connect_with_key(&app, attacker, key.expose())
                .await
                .unwrap(),
        );
    }
    // The budget refills at 3 a second: one more after 400 ms, not two.
    clock.advance_ms(400);
    assert!(connect_from(&app, attacker).await.is_ok());
    assert_eq!(connect_from(&app, attacker).await.err(), Some(429));
    // The member was never disturbed, and still talks to the channel.
    quiet(&mut alice, Duration::from_millis(300)).await;
    let bob_token = call_token(&app, &channel, "bob").await;
    let mut bob = join(&app, &channel, "bob", &bob_token).await;
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined { uid: "bob".into() }
    );
    relayed(&mut bob, "bob", &mut alice, "alice", "v=0\r\no=bob\r\n").await;
}

// ---------------------------------------------------------------- 2. join floods

#[tokio::test]
async fn a_join_flood_is_refused_and_costs_a_bounded_number_of_writes() {
    for backend in backends() {
        let clock = Clock::manual(T0);
        let app = spawn_app_with(backend, clock.clone(), |c| {
            c.calls.heartbeat_timeout = Duration::from_secs(6); // presence every 2 s
            c.rtc.idle_timeout = Duration::from_secs(3600);
            c.rtc.joins_per_token_per_min = 5;
            c.rtc.joins_per_uid_per_min = 8;
        })
        .await;
        // The legitimate call: alice and bob, both present.
        let (channel, alice_token) = call(&app, "alice", "bob").await;
        let bob_token = call_token(&app, &channel, "bob").await;
        let mut alice = join(&app, &channel, "alice", &alice_token).await;
        let mut bob = join(&app, &channel, "bob", &bob_token).await;
        assert_eq!(
            next_msg(&mut alice).await,
            ServerMessage::PeerJoined { uid: "bob".into() }
        );

        // The attacker: one call of its own, one token, join/leave in a loop.
        let (evil, mallory_token) = call(&app, "mallory", "eve").await;
        let (mut joined, mut refused) = (0, 0);
        for round in 0..4 {
            for _ in 0..15 {
                let mut ws = connect(&app).await;
                send(&mut ws, &join_text(&evil, "mallory", &mallory_token)).await;
                match next_msg(&mut ws).await {
                    ServerMessage::Joined { .. } => {
                        joined += 1;
                        send(&mut ws, r#"{"type":"leave"}"#).await;
                        assert_eq!(expect_close(&mut ws).await, Some(1000));
                    }
                    ServerMessage::Error { code, .. } => {
                        assert_eq!(code, codes::TOO_MANY_JOINS);
                        assert_eq!(expect_close(&mut ws).await, Some(1008));
                        refused += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
            // Time passes (less than the bucket refill needs for more than a join or
            // two): alice's and bob's presence is refreshed meanwhile.
            clock.advance_ms(3_000);
            tokio::time::sleep(TICK).await;
            let _ = round;
        }
        assert!(joined <= 6, "[{backend}] {joined} joins went through");
        assert!(refused >= 54, "[{backend}] only {refused} refused");
        // Fresh tokens do not help: the uid's own limit (8 a minute) holds.
        let mut more = 0;
        for _ in 0..10 {
            let t = app.rtc_token(&evil, "mallory");
            let mut ws = connect(&app).await;
            send(&mut ws, &join_text(&evil, "mallory", &t)).await;
            if let ServerMessage::Joined { .. } = next_msg(&mut ws).await {
                more += 1;
                send(&mut ws, r#"{"type":"leave"}"#).await;
            }
        }
        assert!(
            joined + more <= 9,
            "[{backend}] {} joins for one uid",
            joined + more
        );

        // 12 s passed, twice the heartbeat timeout: the legitimate members stay because
        // their presence kept being written.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = sweep_once(&app.state).await.unwrap();
        assert!(
            !r.dropped.iter().any(|(c, _)| c == &channel),
            "[{backend}] {:?}",
            r.dropped
        );
        let call_row = app
            .state
            .store()
            .find_call(&common::channel(&channel))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(call_row.state.as_str(), "ended", "[{backend}]");
        relayed(&mut bob, "bob", &mut alice, "alice", "v=0\r\n").await;
        // The attacker's channel saw a bounded number of presence rows.
        let rows = timeline(&app, &evil)
            .await
            .iter()
            .filter(|e| e["kind"].as_str().unwrap_or("").starts_with("rtc_"))
            .count();
        assert!(
            rows <= 2 * (joined + more),
            "[{backend}] {rows} presence rows"
        );
    }
}

// ---------------------------------------------------------------- 3. signal floods

/// alice (the victim), bob (legitimate) and mallory (the flooder) in one channel.
async fn three_in_a_channel(app: &TestApp) -> (String, Ws, Ws, Ws) {
    let (channel, alice_token) = call(app, "alice", "bob").await;
    let mut alice = join(app, &channel, "alice", &alice_token).await;
    let bob_token = call_token(app, &channel, "bob").await;
    let mut bob = join(app, &channel, "bob", &bob_token).await;
    let mallory_token = app.rtc_token(&channel, "mallory");
    let mallory = join(app, &channel, "mallory", &mallory_token).await;
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined { uid: "bob".into() }
    );
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined {
            uid: "mallory".into()
        }
    );
    assert_eq!(
        next_msg(&mut bob).await,
        ServerMessage::PeerJoined {
            uid: "mallory".into()
        }
    );
    (channel, alice, bob, mallory)
}

/// Reads `ws` until `peer_left mallory kicked`, counting the signals from mallory before
/// it; the last signal read must be mallory's.
async fn drain_flood(ws: &mut Ws) -> usize {
    let mut n = 0;
    loop {
        match next_msg_within(ws, Duration::from_secs(10)).await {
            ServerMessage::Signal { from, .. } => {
                assert_eq!(from, "mallory");
                n += 1;
            }
            ServerMessage::PeerLeft { uid, reason } => {
                assert_eq!((uid.as_str(), reason), ("mallory", LeaveReason::Kicked));
                return n;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_signal_flood_cuts_off_the_sender_not_the_victim() {
    let app = spawn_app_with("sqlite", Clock::manual(T0), |c| {
        c.rtc.idle_timeout = Duration::from_secs(3600);
    })
    .await;
    let (_, mut alice, mut bob, mut mallory) = three_in_a_channel(&app).await;
    // 200 signals of about 64 KiB at once (within the message rate's burst of 200, so
    // only the signal budget stands in the way).
    let big = "x".repeat(64 * 1024 - 200);
    let flood = offer("alice", &big);
    assert!(flood.len() <= 64 * 1024);
    for _ in 0..200 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::SinkExt::send(&mut mallory, Message::text(flood.clone())),
        )
        .await;
        if !matches!(r, Ok(Ok(()))) {
            break;
        }
    }
    let got = drain_flood(&mut alice).await;
    // The budget: 4 x 256 KiB of burst, so at most 16 such frames reached alice.
    assert!(got <= 16, "{got} flood signals reached the victim");
    // The flooder was told why and closed.
    loop {
        match next_msg(&mut mallory).await {
            ServerMessage::Error { code, .. } => {
                assert_eq!(code, codes::SIGNAL_FLOOD);
                break;
            }
            ServerMessage::Signal { .. } | ServerMessage::PeerLeft { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(expect_close(&mut mallory).await, Some(1008));
    // The victim stays and still hears the legitimate peer.
    expect_peer_left(&mut bob, "mallory", LeaveReason::Kicked).await;
    relayed(&mut bob, "bob", &mut alice, "alice", "v=0\r\no=bob\r\n").await;
    relayed(&mut alice, "alice", &mut bob, "bob", "v=0\r\no=alice\r\n").await;
}

#[tokio::test]
async fn a_victim_that_cannot_keep_up_is_not_dropped_its_flooder_is() {
    // No signal budget: only the relay's protection of the receiver's queue is left.
    let app = spawn_app_with("sqlite", Clock::manual(T0), |c| {
        c.rtc.idle_timeout = Duration::from_secs(3600);
        c.rtc.signals_per_sec = 0;
        c.rtc.signal_bytes_per_sec = 0;
        c.rtc.msgs_per_sec = 1000;
    })
    .await;
    let (_, mut alice, mut bob, mut mallory) = three_in_a_channel(&app).await;
    let big = "x".repeat(64 * 1024 - 200);
    let flood = offer("alice", &big);
    // alice reads nothing while mallory sends up to 1,000 frames (64 MB, far more than
    // the socket buffers hold, so alice's outgoing queue fills up: before the fix, alice
    // was the one dropped).
    let mut sent = 0;
    for _ in 0..1000 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::SinkExt::send(&mut mallory, Message::text(flood.clone())),
        )
        .await;
        if !matches!(r, Ok(Ok(()))) {
            break;
        }
        sent += 1;
    }
    assert!(sent > 128, "{sent}");
    let got = drain_flood(&mut alice).await;
    assert!(
        got < sent,
        "{got} of {sent} flood signals reached the victim"
    );
    expect_error(&mut mallory, codes::SIGNAL_FLOOD).await;
    expect_peer_left(&mut bob, "mallory", LeaveReason::Kicked).await;
    relayed(&mut bob, "bob", &mut alice, "alice", "v=0\r\no=bob\r\n").await;
}

// ---------------------------------------------------------------- 4. tokens on /rtc

#[tokio::test]
async fn an_expiring_token_is_announced_renewed_or_kicked() {
    let clock = Clock::manual(T0);
    let app = spawn_app_with("sqlite", clock.clone(), |c| {
        c.tokens.ttl = Duration::from_secs(120);
        c.rtc.idle_timeout = Duration::from_secs(3600);
        c.calls.heartbeat_timeout = Duration::from_secs(3600);
    })
    .await;
    let (channel, alice_token) = call(&app, "alice", "bob").await;
    let bob_token = call_token(&app, &channel, "bob").await;
    let mut alice = join(&app, &channel, "alice", &alice_token).await;
    let mut bob = join(&app, &channel, "bob", &bob_token).await;
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined { uid: "bob".into() }
    );

    // 89 s in: nothing yet. 91 s in: both are told, 30 s before the 120 s expire.
    clock.advance_ms(89_000);
    tokio::time::sleep(TICK).await;
    quiet(&mut alice, Duration::from_millis(100)).await;
    clock.advance_ms(2_000);
    assert_eq!(next_msg(&mut alice).await, ServerMessage::TokenExpiring);
    assert_eq!(next_msg(&mut bob).await, ServerMessage::TokenExpiring);

    // Another uid's token, another channel's, and an expired one are refused with an
    // error; the socket stays.
    let carols = app.rtc_token(&channel, "carol");
    send(
        &mut alice,
        &json!({"type":"renew","token":carols}).to_string(),
    )
    .await;
    expect_error(&mut alice, codes::TOKEN_WRONG_UID).await;
    let elsewhere = app.rtc_token("ch_other", "alice");
    send(
        &mut alice,
        &json!({"type":"renew","token":elsewhere}).to_string(),
    )
    .await;
    expect_error(&mut alice, codes::TOKEN_WRONG_CHANNEL).await;
    // alice renews with a fresh token from call/token; bob does not.
    let fresh = call_token(&app, &channel, "alice").await;
    send(
        &mut alice,
        &json!({"type":"renew","token":fresh}).to_string(),
    )
    .await;
    quiet(&mut alice, Duration::from_millis(200)).await;
    clock.advance_ms(30_000); // 121 s: the first tokens expired
    expect_kicked(&mut bob, codes::TOKEN_EXPIRED_REASON).await;
    expect_peer_left(&mut alice, "bob", LeaveReason::Kicked).await;
    // alice is still in, and bob comes back with a fresh token.
    let bob_fresh = call_token(&app, &channel, "bob").await;
    let mut bob = join(&app, &channel, "bob", &bob_fresh).await;
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined { uid: "bob".into() }
    );
    relayed(&mut bob, "bob", &mut alice, "alice", "v=0\r\n").await;
    // A renewed token expires like any: warned, then kicked.
    clock.advance_ms(60_000); // 181 s: alice's renewed token (from 91 s) ends at 211 s
    assert_eq!(next_msg(&mut alice).await, ServerMessage::TokenExpiring);
    clock.advance_ms(30_000);
    expect_kicked(&mut alice, codes::TOKEN_EXPIRED_REASON).await;
    // bob (token from 121 s) is warned at 211 s too, and sees alice go.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(next_msg(&mut bob).await);
    }
    assert!(seen.contains(&ServerMessage::TokenExpiring), "{seen:?}");
    assert!(
        seen.contains(&ServerMessage::PeerLeft {
            uid: "alice".into(),
            reason: LeaveReason::Kicked
        }),
        "{seen:?}"
    );
}

#[tokio::test]
async fn renew_with_an_expired_token_is_an_error_and_the_socket_stays() {
    let clock = Clock::manual(T0);
    let app = spawn_app_with("sqlite", clock.clone(), |c| {
        c.tokens.ttl = Duration::from_secs(120);
        c.rtc.idle_timeout = Duration::from_secs(3600);
    })
    .await;
    let (channel, alice_token) = call(&app, "alice", "bob").await;
    let mut alice = join(&app, &channel, "alice", &alice_token).await;
    // A token minted 100 s ago (expired 20 s after this join's start would not do: mint
    // one whose join privilege already ended).
    let old = app
        .state
        .tokens()
        .mint_for(&channel, "alice", clock.now_secs() - 100, 60)
        .unwrap();
    send(&mut alice, &json!({"type":"renew","token":old}).to_string()).await;
    expect_error(&mut alice, codes::TOKEN_EXPIRED).await;
    let bob_token = call_token(&app, &channel, "bob").await;
    let mut bob = join(&app, &channel, "bob", &bob_token).await;
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined { uid: "bob".into() }
    );
    relayed(&mut bob, "bob", &mut alice, "alice", "v=0\r\n").await;
    // Before joining, renew is not a first message.
    let mut ws = connect(&app).await;
    send(
        &mut ws,
        &json!({"type":"renew","token":alice_token}).to_string(),
    )
    .await;
    expect_fatal(&mut ws, codes::NOT_JOINED, 1008).await;
}

// ---------------------------------------------------------------- 5. membership

#[tokio::test]
async fn jwt_mode_a_valid_token_of_a_non_member_cannot_join() {
    for backend in backends() {
        let app = spawn_app_with(backend, Clock::system(), |c| {
            c.auth = api::config::AuthConfig::jwt(api::config::Secret::new(
                "app-backend-shared-secret-of-32-bytes-or-more",
            ));
        })
        .await;
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": "alice", "exp": app.state.clock().now_secs() + 600}),
            &jsonwebtoken::EncodingKey::from_secret(
                b"app-backend-shared-secret-of-32-bytes-or-more",
            )
            .unwrap(),
        )
        .unwrap();
        let r: Value = app
            .http
            .post(format!("{}/dapi/call/user", app.base))
            .bearer_auth(&jwt)
            .json(&json!({"src_uid": "alice", "dst_uid": ["bob"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let channel = r["data"]["channel"].as_str().unwrap().to_owned();
        let alice_token = r["data"]["token"].as_str().unwrap().to_owned();
        let mut alice = join(&app, &channel, "alice", &alice_token).await;
        // mallory holds a genuine token for the channel (leaked, or minted before she was
        // removed) but is no member of its call.
        let stolen = app.rtc_token(&channel, "mallory");
        let mut ws = connect(&app).await;
        send(&mut ws, &join_text(&channel, "mallory", &stolen)).await;
        expect_fatal(&mut ws, codes::NOT_A_MEMBER, 1008).await;
        // A channel without a call is refused too; the callee (a member) gets in.
        let mut ws = connect(&app).await;
        let t = app.rtc_token("ch_nocall", "mallory");
        send(&mut ws, &join_text("ch_nocall", "mallory", &t)).await;
        expect_fatal(&mut ws, codes::NOT_A_MEMBER, 1008).await;
        let bob_token = app.rtc_token(&channel, "bob");
        let _bob = join(&app, &channel, "bob", &bob_token).await;
        assert_eq!(
            next_msg(&mut alice).await,
            ServerMessage::PeerJoined { uid: "bob".into() },
            "[{backend}] alice saw only bob"
        );
    }
}
