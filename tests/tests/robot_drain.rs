//! Drain (issue 6): SIGTERM to a `robot-agent` during playback. It takes nothing new, lets
//! the session run until `--drain-timeout`, then hands it back (`status failed` with a
//! detail starting "handed back" and the playback position) and exits 0. The API offers the
//! session again; a second agent takes it, rejoins the channel and resumes near where the
//! first stopped, and the aiortc app that stayed in the channel hears the robot again.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod robot_support;

use std::time::Duration;

use robot_support::{RobotAgent, RobotApi, Script, listener, require_python};

#[tokio::test]
async fn sigterm_hands_the_session_back_and_another_agent_resumes_it() {
    let python = require_python();
    let api = RobotApi::start().await;
    let mut a = RobotAgent::start(&api, "drained", 1, &["--drain-timeout", "2"]).await;
    api.wait_agents(1).await;

    let mut app = Script::spawn(
        listener(&python, &["--base", &api.base, "--loop", "--stay", "14"]),
        "robot_listener.py --stay",
    );
    app.ready(Duration::from_secs(30)).await;
    // The robot is playing to the app; wait for a position report (every 2 s).
    let channel = {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let agents = api.admin("/admin/agents").await;
            let id = agents[0]["sessions"][0].as_i64();
            if let Some(id) = id {
                let s = api.admin(&format!("/admin/robot/sessions/{id}")).await;
                if s["position_ms"].as_i64().unwrap_or(0) > 0 {
                    break s["channel"].as_str().unwrap().to_owned();
                }
            }
            assert!(std::time::Instant::now() < deadline, "no position reported");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let b = RobotAgent::start(&api, "successor", 1, &[]).await;
    api.wait_agents(2).await;

    let t0 = std::time::Instant::now();
    a.terminate();
    let code = a.wait(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "the drained agent exits 0");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert!(
        a.logs().iter().any(|l| l.contains("handed back")),
        "the drained agent handed its session back"
    );

    let s = api
        .wait_session(&channel, 10, "the session runs on the successor", |s| {
            s["state"] == "running" && s["agent_id"] == "successor"
        })
        .await;
    let errors = s["errors"].to_string();
    assert!(errors.contains("handed back"), "{s:#}");
    assert!(s["position_ms"].as_i64().unwrap() > 0, "{s:#}");
    // The successor was offered the saved position.
    let resumed = b.logs().iter().any(|l| {
        l.contains("session accepted")
            && serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["fields"]["position_ms"].as_u64())
                .is_some_and(|p| p > 0)
    });
    assert!(resumed, "the successor did not resume from a position");

    let r = app.result(Duration::from_secs(40)).await;
    eprintln!("robot_listener.py: {r}");
    // Two robots in turn: the first (already there when the app joined, or joining after
    // it), then the successor.
    let first_was_there = u64::from(r["joined_peers"] == serde_json::json!(["robot"]));
    assert_eq!(
        r["robot_joins"].as_u64().unwrap() + first_was_there,
        2,
        "the successor joined the channel: {r:#}"
    );
    assert_eq!(r["robot_leaves"], 1, "{r:#}");
    // The handover is short: the largest silence between two frames.
    let gap = r["max_gap_ms"].as_f64().unwrap();
    assert!(
        gap < 5000.0,
        "silent for {gap} ms during the handover: {r:#}"
    );
    // The app heard the successor: frames kept arriving until the end of its stay.
    let age = r["last_frame_age_ms"].as_f64().unwrap();
    assert!(age < 1500.0, "no audio for {age} ms at the end: {r:#}");
    b.stop().await;
    api.stop().await;
}
