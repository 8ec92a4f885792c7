//! The call lifecycle driven by the sweeper with injected time (a manual clock and
//! `sweep_once`, no sleeping): ring timeout, heartbeat expiry, scheduled calls that fire
//! once across restarts and across two instances, late tasks within the grace period,
//! missed tasks, and 409 on updating a fired task.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use api::clock::Clock;
use api::sweeper::sweep_once;
use common::{backends, fresh_db, spawn_app_on, spawn_app_with};
use serde_json::{Value, json};
use std::time::Duration;

const T0: i64 = 1_893_456_000_000; // 2030-01-01 00:00:00 UTC

async fn timeline(app: &common::TestApp, ch: &str) -> Vec<Value> {
    let r = app
        .http
        .get(format!("{}/dapi/call/timeline?channel={ch}", app.base))
        .send()
        .await
        .unwrap();
    r.json::<Value>().await.unwrap()["data"]["events"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn unanswered_call_rings_out_as_1001() {
    for backend in backends() {
        let clock = Clock::manual(T0);
        let app = spawn_app_with(backend, clock.clone(), |c| {
            c.calls.ring_timeout = Duration::from_secs(60);
            c.calls.recent_window = Duration::from_secs(120);
        })
        .await;
        let ch = app
            .ok(
                "/dapi/call/user",
                json!({"src_uid": "A", "dst_uid": ["B", "C"]}),
            )
            .await["channel"]
            .as_str()
            .unwrap()
            .to_owned();
        // the caller heartbeats every 30 s as apps do, so only the ring timeout applies
        clock.advance_ms(30_000);
        app.ok("/dapi/call/heartbeat", json!({"uid": "A", "channel": ch}))
            .await;
        clock.advance_ms(29_000);
        assert!(sweep_once(&app.state).await.unwrap().rang_out.is_empty());
        clock.advance_ms(2_000);
        let r = sweep_once(&app.state).await.unwrap();
        assert_eq!(r.rang_out, vec![ch.clone()], "[{backend}]");
        let cn = common::channel(&ch);
        let call = app.state.store().find_call(&cn).await.unwrap().unwrap();
        assert_eq!((call.state.as_str(), call.end_code), ("ended", Some(1001)));
        let rows = app.ok("/dapi/call/msg", json!({"uid": "B"})).await;
        assert_eq!(rows[0]["status"], 2);
        let tl = timeline(&app, &ch).await;
        let last = tl.last().unwrap();
        assert_eq!(
            (
                last["kind"].as_str(),
                last["code"].as_i64(),
                last["source"].as_str()
            ),
            (Some("ring_timeout"), Some(1001), Some("server"))
        );
        // sweeping again changes nothing
        assert_eq!(sweep_once(&app.state).await.unwrap(), Default::default());
    }
}

#[tokio::test]
async fn answered_call_does_not_ring_out_and_silent_participants_are_dropped() {
    for backend in backends() {
        let clock = Clock::manual(T0);
        let app = spawn_app_with(backend, clock.clone(), |c| {
            c.calls.heartbeat_timeout = Duration::from_secs(45)
        })
        .await;
        let ch = app
            .ok("/dapi/call/user", json!({"src_uid": "A", "dst_uid": ["B"]}))
            .await["channel"]
            .as_str()
            .unwrap()
            .to_owned();
        app.ok("/dapi/call/heartbeat", json!({"uid": "B", "channel": ch}))
            .await; // B answered: deadline T0+45
        clock.advance_ms(30_000);
        app.ok("/dapi/call/heartbeat", json!({"uid": "A", "channel": ch}))
            .await; // A: deadline T0+75
        clock.advance_ms(20_000); // T0+50: B is silent for 50 s
        let r = sweep_once(&app.state).await.unwrap();
        assert_eq!(r.dropped, vec![(ch.clone(), "B".to_owned())], "[{backend}]");
        assert!(r.rang_out.is_empty(), "connected calls do not ring out");
        assert_eq!(
            app.state
                .store()
                .find_call(&common::channel(&ch))
                .await
                .unwrap()
                .unwrap()
                .state
                .as_str(),
            "connected"
        );
        clock.advance_ms(30_000); // T0+80: A silent too; nobody is left
        let r = sweep_once(&app.state).await.unwrap();
        assert_eq!(r.dropped, vec![(ch.clone(), "A".to_owned())]);
        let cn = common::channel(&ch);
        let call = app.state.store().find_call(&cn).await.unwrap().unwrap();
        assert_eq!(call.state.as_str(), "ended");
        assert_eq!(
            sweep_once(&app.state).await.unwrap(),
            Default::default(),
            "nothing is picked twice"
        );
        let kinds: Vec<String> = timeline(&app, &ch)
            .await
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            kinds.iter().filter(|k| *k == "heartbeat_timeout").count(),
            2
        );
    }
}

fn task_body(src: &str, at: &str) -> Value {
    json!({"src_uid": src, "dst_uid": ["B", "C"], "call_time": at, "taskid": "job-7"})
}

#[tokio::test]
async fn scheduled_call_fires_once_on_time_and_cannot_be_changed_after() {
    for backend in backends() {
        let clock = Clock::manual(T0);
        let app = spawn_app_with(backend, clock.clone(), |_| {}).await;
        let task = app
            .ok(
                "/dapi/calltask/update",
                task_body("A", "2030-01-01 00:01:00"),
            )
            .await;
        let id = task["id"].as_i64().unwrap();
        clock.advance_ms(59_000);
        assert!(sweep_once(&app.state).await.unwrap().fired.is_empty());
        clock.advance_ms(1_000);
        let r = sweep_once(&app.state).await.unwrap();
        assert_eq!(r.fired.len(), 1, "[{backend}]");
        let ch = r.fired[0].1.clone();
        assert!(
            sweep_once(&app.state).await.unwrap().fired.is_empty(),
            "fires once"
        );
        // placed exactly as call/user: callees see it with the taskid as extra_msg
        let rows = app.ok("/dapi/call/msg", json!({"uid": "C"})).await;
        assert_eq!(
            (
                rows[0]["channel"].as_str(),
                rows[0]["extra_msg"].as_str(),
                rows[0]["src_uid"].as_str()
            ),
            (Some(ch.as_str()), Some("job-7"), Some("A"))
        );
        let list = app.ok("/dapi/calltask/list", json!({"uid": "A"})).await;
        assert_eq!(
            (
                list["rows"][0]["state"].as_str(),
                list["rows"][0]["channel"].as_str()
            ),
            (Some("fired"), Some(ch.as_str()))
        );
        let mut upd = task_body("A", "2030-01-02 00:00:00");
        upd["id"] = json!(id);
        app.err("/dapi/calltask/update", upd, 409, "conflict").await;
    }
}

#[tokio::test]
async fn late_tasks_fire_within_grace_else_are_missed_and_tone_list_brings_the_robot() {
    for backend in backends() {
        let clock = Clock::manual(T0);
        let app = spawn_app_with(backend, clock.clone(), |c| {
            c.calls.calltask_grace = Duration::from_secs(300)
        })
        .await;
        // scheduled while the server was "down": one 100 s late, one 400 s late
        let late = app.ok("/dapi/calltask/update", json!({"src_uid": "A", "dst_uid": ["B"], "call_time": "2029-12-31 23:58:20", "taskid": "late", "tone_list": ["default"]})).await;
        let missed = app
            .ok(
                "/dapi/calltask/update",
                task_body("A", "2029-12-31 23:53:20"),
            )
            .await;
        let r = sweep_once(&app.state).await.unwrap();
        assert_eq!(
            r.fired.iter().map(|f| f.0).collect::<Vec<_>>(),
            vec![late["id"].as_i64().unwrap()],
            "[{backend}]"
        );
        assert_eq!(r.missed, vec![missed["id"].as_i64().unwrap()]);
        let list = app.ok("/dapi/calltask/list", json!({"uid": "A"})).await;
        let states: Vec<&str> = list["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, vec!["missed", "fired"]);
        // the fired task's channel has a robot queued to play the tone list
        let sessions = app
            .state
            .store()
            .channel_sessions(&common::channel(&r.fired[0].1))
            .await
            .unwrap();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].audio, vec!["default".to_owned()]);
    }
}

#[tokio::test]
async fn a_task_fires_once_across_a_restart_and_across_two_instances() {
    for backend in backends() {
        // restart between scheduling and firing
        let (url, dir) = fresh_db(backend).await;
        let clock = Clock::manual(T0);
        let app = spawn_app_on(backend, &url, None, clock.clone(), |_| {}).await;
        app.ok(
            "/dapi/calltask/update",
            task_body("R", "2030-01-01 00:00:30"),
        )
        .await;
        drop(app);
        clock.advance_ms(60_000);
        let app = spawn_app_on(backend, &url, dir, clock.clone(), |_| {}).await;
        assert_eq!(
            sweep_once(&app.state).await.unwrap().fired.len(),
            1,
            "[{backend}] fires after the restart"
        );

        // two instances on one database sweep the same due tasks concurrently
        let a = spawn_app_on(backend, &url, None, clock.clone(), |_| {}).await;
        for i in 0..10 {
            app.ok(
                "/dapi/calltask/update",
                task_body("M", &format!("2030-01-01 00:00:{:02}", 40 + i)),
            )
            .await;
        }
        clock.advance_ms(60_000);
        let (ra, rb) = tokio::join!(sweep_once(&a.state), sweep_once(&app.state));
        let total = ra.unwrap().fired.len() + rb.unwrap().fired.len();
        assert_eq!(total, 10, "[{backend}] each fires exactly once");
        let list = app.ok("/dapi/calltask/list", json!({"uid": "M"})).await;
        assert!(
            list["rows"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["state"] == "fired")
        );
        let calls = app.ok("/dapi/call/msg", json!({"uid": "M"})).await;
        assert_eq!(
            calls.as_array().unwrap().len(),
            10,
            "ten calls, no duplicates"
        );
    }
}
