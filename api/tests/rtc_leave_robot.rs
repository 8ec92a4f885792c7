//! A deliberate `/rtc` leave that ends a call with a robot in it reaches the robot's agent
//! at once (issue 12, point 3). The `/rtc` presence worker applies the leave through the
//! calls service (`api::calls`), which wakes the dispatcher (and, on PostgreSQL, NOTIFYs
//! the other instances; `multi_instance.rs` covers that). The dispatcher's backstop poll is
//! 60 s here and nothing else wakes it, so only that direct path can explain a `leave`
//! within the 5 s the test waits. The time is printed (the issue's target is 200 ms).

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use std::time::Duration;
use std::time::Instant;

use common::agent_ws::{agent, expect, send, session_state};
use common::{backends, spawn_app_with};
use serde_json::json;

#[tokio::test]
async fn an_rtc_leave_that_ends_the_call_makes_the_robot_leave_at_once() {
    for backend in backends() {
        let app = spawn_app_with(backend, api::clock::Clock::system(), |c| {
            c.dispatch.poll = Duration::from_millis(60_000)
        })
        .await;
        let mut ag = agent(&app, "ag", 1).await;
        let call = app.ok("/dapi/call/robot", json!({"src_uid": "1234"})).await;
        let ch = call["channel"].as_str().unwrap().to_owned();
        let offer = expect(&mut ag, "offer", 5).await;
        let id = offer["session"]["id"].as_i64().unwrap();
        send(&mut ag, json!({"type": "accept", "session_id": id})).await;
        send(
            &mut ag,
            json!({"type": "status", "session_id": id, "state": "playing", "position_ms": 0}),
        )
        .await;

        // The caller is in the channel (its presence, applied before its leave by the same
        // in-order worker, makes it a joined member), then hangs up by leaving the channel.
        let (mut caller, _) = common::rtc_client::join_at(
            &app.rtc_url(),
            &ch,
            "1234",
            call["token"].as_str().unwrap(),
        )
        .await;
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while session_state(&app, id).await["state"] != "running" {
            assert!(Instant::now() < deadline, "[{backend}] not running");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let t0 = Instant::now();
        common::rtc_client::send(&mut caller, r#"{"type":"leave"}"#).await;
        let leave = expect(&mut ag, "leave", 5).await;
        let took = t0.elapsed();
        println!("[{backend}] /rtc leave -> the agent's leave: {took:?}");
        assert_eq!(leave["session_id"], id, "[{backend}]");
        let events = timeline(&app, &ch).await;
        assert!(
            events
                .iter()
                .any(|(k, e)| k == "rtc_left" && e == "call ended (2)"),
            "[{backend}] {events:?}"
        );
        assert_eq!(
            session_state(&app, id).await["leave_requested"],
            true,
            "[{backend}]"
        );
    }
}

/// The call's timeline as (kind, effect) pairs.
async fn timeline(app: &common::TestApp, channel: &str) -> Vec<(String, String)> {
    app.state
        .store()
        .timeline(&common::channel(channel))
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.effect))
        .collect()
}
