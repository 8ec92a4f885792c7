//! Two API instances on one PostgreSQL database serve one `/rtc` channel: members connected
//! to different instances see each other (`joined`, `peer_joined`, `peer_left`), their
//! signals (small and over NOTIFY's 8000-byte limit) cross, a uid joining on the other
//! instance replaces its socket, server kicks and the peer limit span both, and the
//! members of an instance that dies without a word are reported gone within the
//! documented bound (docs/rtc-bus.md). Real servers on port 0, real WebSocket clients.
//!
//! Needs `TEST_DATABASE_URL` (PostgreSQL); without it each test prints why it is skipped.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use std::time::Duration;

use api::config::Config;
use api::domain::{ChannelName, Uid};
use api::store::Store;
use common::rtc_client::{
    Ws, description, expect_close, expect_error, expect_fatal, expect_kicked, expect_peer_left,
    join_at, join_text, next_msg, next_msg_within, offer, send,
};
use common::{TestApp, two_on_postgres};
use protocol::signaling::{LeaveReason, SdpType, ServerMessage, SignalPayload, codes};

/// Bus heartbeat of these tests: an instance is dead after 3 of them (1.5 s), noticed at
/// the next heartbeat of the other.
const HEARTBEAT_MS: u64 = 500;
/// Generous: never a tight timing.
const LONG: Duration = Duration::from_secs(10);

async fn instances(test: &str, tweak: impl Fn(&mut Config)) -> Option<(TestApp, TestApp)> {
    two_on_postgres(test, |c: &mut Config| {
        c.rtc.bus_heartbeat = Duration::from_millis(HEARTBEAT_MS);
        tweak(c);
    })
    .await
}

async fn join(app: &TestApp, channel: &str, uid: &str) -> (Ws, Vec<String>) {
    join_at(&app.rtc_url(), channel, uid, &app.rtc_token(channel, uid)).await
}

fn ch(s: &str) -> ChannelName {
    ChannelName::parse(s).unwrap()
}

fn uid(s: &str) -> Uid {
    Uid::parse(s).unwrap()
}

fn uids(v: &[&str]) -> Vec<Uid> {
    v.iter().map(|s| uid(s)).collect()
}

/// Waits until `app` lists `expected` in `channel` (the other instance's news arrive
/// asynchronously; polling the sans-IO hub's view is the only way to see it).
async fn eventually_present(app: &TestApp, channel: &str, expected: &[&str]) {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let now = app.state.rtc().present(&ch(channel));
        if now == uids(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel}: {now:?}, not {expected:?}, after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn expect_signal(ws: &mut Ws, from: &str) -> SignalPayload {
    match next_msg(ws).await {
        ServerMessage::Signal { from: f, payload } => {
            assert_eq!(f, from);
            payload
        }
        other => panic!("expected a signal from {from}, got {other:?}"),
    }
}

fn sdp_of(p: SignalPayload) -> (SdpType, String) {
    match p {
        SignalPayload::Description(d) => (d.kind, d.sdp),
        other => panic!("expected a description, got {other:?}"),
    }
}

/// An SDP offer of `n` bytes or more, as a browser with many candidates sends it.
fn big_sdp(n: usize) -> String {
    let mut s = String::from("v=0\r\no=- 4611 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            "a=candidate:{i} 1 udp 2122260223 192.0.2.{} {} typ host generation 0 \"quoted\"\r\n",
            i % 250,
            50_000 + i
        ));
        i += 1;
    }
    s
}

async fn pg_count(app: &TestApp, sql: &'static str) -> i64 {
    let Store::Postgres(pg) = app.state.store() else {
        panic!("PostgreSQL only")
    };
    sqlx::query_scalar(sql).fetch_one(pg.pool()).await.unwrap()
}

#[tokio::test]
async fn members_on_two_instances_see_each_other_and_signal() {
    let Some((one, two)) =
        instances("members_on_two_instances_see_each_other_and_signal", |_| {}).await
    else {
        return;
    };
    let channel = "ch_cross";
    let (mut alice, peers) = join(&one, channel, "alice").await;
    assert!(peers.is_empty());
    let (mut bob, peers) = join(&two, channel, "bob").await;
    assert_eq!(
        peers,
        vec!["alice"],
        "bob's instance lists alice, on the other"
    );
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined { uid: "bob".into() }
    );
    eventually_present(&one, channel, &["alice", "bob"]).await;
    eventually_present(&two, channel, &["alice", "bob"]).await;

    // The newcomer offers across instances; the answer comes back.
    send(&mut bob, &offer("alice", "v=0\r\no=bob\r\n")).await;
    let (kind, sdp) = sdp_of(expect_signal(&mut alice, "bob").await);
    assert_eq!((kind, sdp.as_str()), (SdpType::Offer, "v=0\r\no=bob\r\n"));
    send(
        &mut alice,
        &description("bob", SdpType::Answer, "v=0\r\no=alice\r\n"),
    )
    .await;
    let (kind, sdp) = sdp_of(expect_signal(&mut bob, "alice").await);
    assert_eq!(
        (kind, sdp.as_str()),
        (SdpType::Answer, "v=0\r\no=alice\r\n")
    );

    // An SDP over NOTIFY's 8000-byte payload limit arrives whole, both ways, and the
    // table that carried it is left empty.
    let big = big_sdp(20_000);
    send(&mut alice, &offer("bob", &big)).await;
    let (_, got) = sdp_of(expect_signal(&mut bob, "alice").await);
    assert_eq!(got, big);
    let big2 = big_sdp(9_000);
    send(&mut bob, &description("alice", SdpType::Answer, &big2)).await;
    let (kind, got) = sdp_of(expect_signal(&mut alice, "bob").await);
    assert_eq!((kind, got), (SdpType::Answer, big2));
    assert_eq!(
        pg_count(&one, "SELECT COUNT(*) FROM rtc_bus_messages").await,
        0
    );

    // Trickled candidates keep their order.
    for i in 0..20 {
        let cand = format!(
            r#"{{"type":"signal","to":"alice","candidate":{{"candidate":"candidate:{i} 1 udp 1 192.0.2.1 {i} typ host","sdpMid":"0","sdpMLineIndex":0}}}}"#
        );
        send(&mut bob, &cand).await;
    }
    send(
        &mut bob,
        r#"{"type":"signal","to":"alice","candidate":null}"#,
    )
    .await;
    for i in 0..20 {
        match expect_signal(&mut alice, "bob").await {
            SignalPayload::Candidate(Some(c)) => {
                assert!(c.candidate.starts_with(&format!("candidate:{i} ")), "{i}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        expect_signal(&mut alice, "bob").await,
        SignalPayload::Candidate(None)
    );

    // Present nowhere: peer_not_found, the socket stays.
    send(&mut bob, &offer("nobody", "v=0")).await;
    expect_error(&mut bob, codes::PEER_NOT_FOUND).await;

    // Bob leaves: alice, on the other instance, is told.
    send(&mut bob, r#"{"type":"leave"}"#).await;
    assert_eq!(expect_close(&mut bob).await, Some(1000));
    expect_peer_left(&mut alice, "bob", LeaveReason::Left).await;
    eventually_present(&one, channel, &["alice"]).await;
    eventually_present(&two, channel, &["alice"]).await;

    // A socket dropped without a word is a departure too.
    let (carol, _) = join(&two, channel, "carol").await;
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined {
            uid: "carol".into()
        }
    );
    drop(carol);
    expect_peer_left(&mut alice, "carol", LeaveReason::Left).await;
    assert_eq!(
        pg_count(&one, "SELECT COUNT(*) FROM rtc_presence").await,
        1,
        "only alice's row is left"
    );
}

#[tokio::test]
async fn joins_racing_on_two_instances_agree_on_who_offers() {
    let Some((one, two)) =
        instances("joins_racing_on_two_instances_agree_on_who_offers", |_| {}).await
    else {
        return;
    };
    // In every pair exactly one side lists the other in `joined` (and offers); the other
    // hears `peer_joined`, then the offer.
    for i in 0..10 {
        let channel = format!("ch_race_{i}");
        let ((mut x, x_peers), (mut y, y_peers)) =
            tokio::join!(join(&one, &channel, "x"), join(&two, &channel, "y"));
        let x_came_first = match (x_peers.as_slice(), y_peers.as_slice()) {
            ([], [p]) if p == "x" => true,
            ([p], []) if p == "y" => false,
            other => panic!("{channel}: peers {other:?}"),
        };
        let (newcomer, present, newcomer_ws, present_ws) = if x_came_first {
            ("y", "x", &mut y, &mut x)
        } else {
            ("x", "y", &mut x, &mut y)
        };
        assert_eq!(
            next_msg(present_ws).await,
            ServerMessage::PeerJoined {
                uid: newcomer.into()
            },
            "{channel}"
        );
        send(newcomer_ws, &offer(present, "v=0")).await;
        expect_signal(present_ws, newcomer).await;
    }
}

#[tokio::test]
async fn a_uid_joining_on_the_other_instance_replaces_its_socket() {
    let Some((one, two)) = instances(
        "a_uid_joining_on_the_other_instance_replaces_its_socket",
        |_| {},
    )
    .await
    else {
        return;
    };
    let channel = "ch_replace";
    let (mut alice, _) = join(&one, channel, "alice").await;
    let (mut bob1, peers) = join(&one, channel, "bob").await;
    assert_eq!(peers, vec!["alice"]);
    next_msg(&mut alice).await;
    // Bob's app reconnects through the other instance.
    let (mut bob2, peers) = join(&two, channel, "bob").await;
    assert_eq!(peers, vec!["alice"]);
    expect_kicked(&mut bob1, "replaced").await;
    expect_peer_left(&mut alice, "bob", LeaveReason::Replaced).await;
    assert_eq!(
        next_msg(&mut alice).await,
        ServerMessage::PeerJoined { uid: "bob".into() }
    );
    send(&mut bob2, &offer("alice", "v=0")).await;
    expect_signal(&mut alice, "bob").await;
    send(&mut alice, &description("bob", SdpType::Answer, "v=0")).await;
    expect_signal(&mut bob2, "alice").await;
    eventually_present(&one, channel, &["alice", "bob"]).await;
    eventually_present(&two, channel, &["alice", "bob"]).await;
    // And back: alice moves to the other instance too; bob stays.
    let (mut alice2, peers) = join(&two, channel, "alice").await;
    assert_eq!(peers, vec!["bob"]);
    expect_kicked(&mut alice, "replaced").await;
    expect_peer_left(&mut bob2, "alice", LeaveReason::Replaced).await;
    assert_eq!(
        next_msg(&mut bob2).await,
        ServerMessage::PeerJoined {
            uid: "alice".into()
        }
    );
    send(&mut alice2, &offer("bob", "v=0")).await;
    expect_signal(&mut bob2, "alice").await;
    assert_eq!(pg_count(&one, "SELECT COUNT(*) FROM rtc_presence").await, 2);
}

#[tokio::test]
async fn server_kicks_reach_the_instance_holding_the_uid() {
    let Some((one, two)) =
        instances("server_kicks_reach_the_instance_holding_the_uid", |_| {}).await
    else {
        return;
    };
    let channel = "ch_kick";
    let (mut alice, _) = join(&one, channel, "alice").await;
    let (mut robot, _) = join(&two, channel, "robot").await;
    next_msg(&mut alice).await;
    eventually_present(&one, channel, &["alice", "robot"]).await;
    // Server code on instance one (an operator, `quit/robot`) kicks the robot on two.
    assert!(
        one.state
            .rtc()
            .kick(&ch(channel), &uid("robot"), "robot_quit")
    );
    expect_kicked(&mut robot, "robot_quit").await;
    expect_peer_left(&mut alice, "robot", LeaveReason::Kicked).await;
    eventually_present(&one, channel, &["alice"]).await;
    assert!(!one.state.rtc().kick(&ch(channel), &uid("robot"), "again"));
    // And the other way.
    assert!(
        two.state
            .rtc()
            .kick(&ch(channel), &uid("alice"), "operator")
    );
    expect_kicked(&mut alice, "operator").await;
    eventually_present(&two, channel, &[]).await;
}

#[tokio::test]
async fn the_peer_limit_counts_both_instances() {
    let Some((one, two)) = instances("the_peer_limit_counts_both_instances", |c| {
        c.rtc.max_peers = 2
    })
    .await
    else {
        return;
    };
    let channel = "ch_full";
    let (_a, _) = join(&one, channel, "a").await;
    let (_b, _) = join(&two, channel, "b").await;
    for app in [&one, &two] {
        let mut c = common::rtc_client::connect(&app.rtc_url()).await;
        send(
            &mut c,
            &join_text(channel, "c", &app.rtc_token(channel, "c")),
        )
        .await;
        expect_fatal(&mut c, codes::CHANNEL_FULL, 1008).await;
    }
    // A replacement is not a new peer.
    let (_a2, peers) = join(&two, channel, "a").await;
    assert_eq!(peers, vec!["b"]);
}

#[tokio::test]
async fn members_of_a_crashed_instance_are_reported_gone() {
    let Some((one, two)) =
        instances("members_of_a_crashed_instance_are_reported_gone", |_| {}).await
    else {
        return;
    };
    let channel = "ch_crash";
    let (mut alice, _) = join(&one, channel, "alice").await;
    let (_bob, peers) = join(&two, channel, "bob").await;
    assert_eq!(peers, vec!["alice"]);
    next_msg(&mut alice).await;
    let (_bus_id, timers) = two.state.rtc().bus().unwrap();
    assert_eq!(
        timers.ghost_bound_ms(),
        2_000,
        "3 heartbeats of 500 ms, then one more"
    );

    // Instance two dies without a goodbye: its heartbeat stops, its listener goes.
    two.crash();
    let crashed_at = tokio::time::Instant::now();
    match next_msg_within(&mut alice, LONG).await {
        ServerMessage::PeerLeft { uid, reason } => {
            assert_eq!((uid.as_str(), reason), ("bob", LeaveReason::Timeout));
        }
        other => panic!("expected peer_left bob, got {other:?}"),
    }
    println!(
        "bob reported gone {:?} after the crash (bound: {} ms after two's last heartbeat)",
        crashed_at.elapsed(),
        timers.ghost_bound_ms()
    );
    eventually_present(&one, channel, &["alice"]).await;
    assert_eq!(
        pg_count(&one, "SELECT COUNT(*) FROM rtc_instances").await,
        1
    );
    assert_eq!(pg_count(&one, "SELECT COUNT(*) FROM rtc_presence").await, 1);
    // Newcomers no longer see the ghost.
    let (_carol, peers) = join(&one, channel, "carol").await;
    assert_eq!(peers, vec!["alice"]);
}

#[tokio::test]
async fn an_instance_that_stops_cleanly_says_goodbye() {
    let Some((one, two)) = instances("an_instance_that_stops_cleanly_says_goodbye", |_| {}).await
    else {
        return;
    };
    let channel = "ch_stop";
    let (mut alice, _) = join(&one, channel, "alice").await;
    let (mut bob, _) = join(&two, channel, "bob").await;
    next_msg(&mut alice).await;
    two.stop().await;
    expect_fatal(&mut bob, codes::SHUTTING_DOWN, 1001).await;
    // Told at once (not after the heartbeat lapses): bob's socket closed.
    expect_peer_left(&mut alice, "bob", LeaveReason::Left).await;
    assert_eq!(
        pg_count(&one, "SELECT COUNT(*) FROM rtc_instances").await,
        1
    );
}
