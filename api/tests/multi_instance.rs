//! Two API instances on one PostgreSQL database: a robot session queued through one
//! instance is offered to an agent connected to the other, and `quit/robot` sent to one
//! instance reaches an agent connected to the other as `leave`. The dispatcher's backstop
//! poll is 60 s here, so only `LISTEN/NOTIFY` between the instances can explain an offer or
//! a leave that arrives within the 5 s the test waits.
//!
//! Needs `TEST_DATABASE_URL` (PostgreSQL); without it each test prints why it is skipped.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use std::collections::HashSet;
use std::time::Duration;

use api::store::Store;
use common::agent_ws::{Ws, agent, agents, expect, expect_none, send, session_state};
use common::{TestApp, two_on_postgres};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Backstop poll of both dispatchers: far longer than any wait of these tests.
const POLL_MS: u64 = 60_000;

/// Two instances on one fresh PostgreSQL database, or `None` (with a message) without
/// `TEST_DATABASE_URL`.
async fn two_instances(test: &str) -> Option<(TestApp, TestApp)> {
    let tweak = |c: &mut api::config::Config| c.dispatch.poll = Duration::from_millis(POLL_MS);
    let (a, b) = two_on_postgres(test, tweak).await?;
    wait_for_listeners(&a, 2).await;
    Some((a, b))
}

/// Waits until `n` connections of this database are subscribed to `dapi_dispatch` (each
/// instance's listener starts in the background; a NOTIFY before it is subscribed is not
/// delivered to it).
async fn wait_for_listeners(app: &TestApp, n: i64) {
    let Store::Postgres(pg) = app.state.store() else {
        panic!("PostgreSQL only")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let subscribed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%dapi_dispatch%'",
        )
        .fetch_one(pg.pool())
        .await
        .unwrap();
        if subscribed >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {subscribed} of {n} instances listen for dapi_dispatch after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the session shows `state` through `app` (the state is written by the
/// instance holding the agent; another instance reads it from the shared database).
async fn wait_state(app: &TestApp, id: i64, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = session_state(app, id).await;
        if s["state"] == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session {id} is {} after 5 s, not {state}",
            s["state"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Offer, accept, play, `quit/robot` through `quitter`, leave, left, for an agent connected
/// to the other instance; the session's state is read through `reader`.
async fn offer_and_leave_cross(
    ws: &mut Ws,
    reader: &TestApp,
    channel: &str,
    quitter: &TestApp,
    uid: &str,
) {
    let offer = expect(ws, "offer", 5).await;
    assert_eq!(offer["session"]["channel"], channel);
    let id = offer["session"]["id"].as_i64().unwrap();
    send(ws, json!({"type": "accept", "session_id": id})).await;
    send(
        ws,
        json!({"type": "status", "session_id": id, "state": "playing", "position_ms": 0}),
    )
    .await;
    wait_state(reader, id, "running").await;
    quitter
        .ok("/dapi/quit/robot", json!({"channel": channel, "uid": uid}))
        .await;
    let leave = expect(ws, "leave", 5).await;
    assert_eq!(leave["session_id"], id);
    send(
        ws,
        json!({"type": "status", "session_id": id, "state": "left", "detail": "told to leave"}),
    )
    .await;
    wait_state(reader, id, "left").await;
}

#[tokio::test]
async fn offers_and_leaves_cross_instances_through_listen_notify() {
    let Some((a, b)) =
        two_instances("offers_and_leaves_cross_instances_through_listen_notify").await
    else {
        return;
    };

    // Agent on B; the robot is called through A and quit through A.
    let mut on_b = agent(&b, "agent-on-b", 2).await;
    let call = a.ok("/dapi/call/robot", json!({"src_uid": "1001"})).await;
    let ch = call["channel"].as_str().unwrap();
    offer_and_leave_cross(&mut on_b, &a, ch, &a, "1001").await;

    // The agent leaves B (so B has nobody to offer to); another connects to A.
    drop(on_b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while agents(&b).await.as_array().is_some_and(|v| !v.is_empty()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B still lists the agent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut on_a = agent(&a, "agent-on-a", 2).await;

    // A call placed through A, the robot invited through B and quit through B.
    let call = a
        .ok(
            "/dapi/call/user",
            json!({"src_uid": "2001", "dst_uid": ["2002"]}),
        )
        .await;
    let ch = call["channel"].as_str().unwrap();
    b.ok("/dapi/invite/robot", json!({"uid": "2001", "channel": ch}))
        .await;
    offer_and_leave_cross(&mut on_a, &b, ch, &b, "2001").await;
}

/// Reads the next offer from either agent, within 5 s.
async fn next_offer(x: &mut Ws, y: &mut Ws) -> (usize, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (which, m) = tokio::select! {
            m = x.next() => (0, m),
            m = y.next() => (1, m),
            () = tokio::time::sleep_until(deadline) => panic!("no offer within 5 s"),
        };
        if let Some(Ok(Message::Text(t))) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "offer" {
                return (which, v);
            }
        }
    }
}

#[tokio::test]
async fn sessions_queued_through_both_instances_are_offered_exactly_once() {
    let Some((a, b)) =
        two_instances("sessions_queued_through_both_instances_are_offered_exactly_once").await
    else {
        return;
    };
    let mut on_a = agent(&a, "agent-a", 100).await;
    let mut on_b = agent(&b, "agent-b", 100).await;
    const N: usize = 20;
    let mut channels = HashSet::new();
    for i in 0..N {
        let via = if i % 2 == 0 { &a } else { &b };
        let call = via
            .ok(
                "/dapi/call/robot",
                json!({"src_uid": format!("{}", 3000 + i)}),
            )
            .await;
        channels.insert(call["channel"].as_str().unwrap().to_owned());
    }
    // Both instances are woken for every session and race to offer it; the
    // compare-and-set lets one win. Every session is offered once, to one agent.
    let mut offered = HashSet::new();
    for _ in 0..N {
        let (which, o) = next_offer(&mut on_a, &mut on_b).await;
        let id = o["session"]["id"].as_i64().unwrap();
        assert!(offered.insert(id), "session {id} offered twice");
        assert!(channels.contains(o["session"]["channel"].as_str().unwrap()));
        let ws = if which == 0 { &mut on_a } else { &mut on_b };
        send(ws, json!({"type": "accept", "session_id": id})).await;
    }
    expect_none(&mut on_a, "offer", 500).await;
    expect_none(&mut on_b, "offer", 10).await;
    for id in offered {
        wait_state(&a, id, "running").await;
    }
}

#[tokio::test]
async fn an_rtc_leave_on_one_instance_makes_the_robot_on_the_other_leave_at_once() {
    let Some((a, b)) =
        two_instances("an_rtc_leave_on_one_instance_makes_the_robot_on_the_other_leave_at_once")
            .await
    else {
        return;
    };
    // The robot's agent is connected to A; the caller is in the channel on B and hangs up
    // there by leaving it. B's presence worker ends the call and NOTIFYs; A's dispatcher
    // sends the leave (its own poll is 60 s away).
    let mut on_a = agent(&a, "agent-on-a", 1).await;
    let call = a.ok("/dapi/call/robot", json!({"src_uid": "4001"})).await;
    let ch = call["channel"].as_str().unwrap();
    let offer = expect(&mut on_a, "offer", 5).await;
    let id = offer["session"]["id"].as_i64().unwrap();
    send(&mut on_a, json!({"type": "accept", "session_id": id})).await;
    send(
        &mut on_a,
        json!({"type": "status", "session_id": id, "state": "playing", "position_ms": 0}),
    )
    .await;
    wait_state(&b, id, "running").await;
    let (mut caller, _) =
        common::rtc_client::join_at(&b.rtc_url(), ch, "4001", call["token"].as_str().unwrap())
            .await;
    // Its presence on B (applied before its leave, in order) makes it a joined member.
    let t0 = std::time::Instant::now();
    common::rtc_client::send(&mut caller, r#"{"type":"leave"}"#).await;
    let leave = expect(&mut on_a, "leave", 5).await;
    println!(
        "/rtc leave on B -> the leave of the agent on A: {:?}",
        t0.elapsed()
    );
    assert_eq!(leave["session_id"], id);
    assert!(
        a.state
            .store()
            .timeline(&common::channel(ch))
            .await
            .unwrap()
            .iter()
            .any(|e| e.kind == "rtc_left" && e.effect == "call ended (2)")
    );
}
