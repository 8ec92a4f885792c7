//! An agent dies during playback (issue 6): `kill -9` of a real `robot-agent` while an
//! aiortc app listens. Its lease lapses (10 s), the API offers the session again with its
//! last position, a second agent rejoins the channel and resumes near where the first
//! stopped, and the app hears the robot again within 15 s.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod robot_support;

use std::time::Duration;

use robot_support::{RobotAgent, RobotApi, Script, listener, require_python};

#[tokio::test]
async fn kill_9_during_playback_another_agent_resumes_within_15_s() {
    let python = require_python();
    let api = RobotApi::start().await;
    let victim = RobotAgent::start(&api, "victim", 1, &[]).await;
    api.wait_agents(1).await;

    let mut app = Script::spawn(
        listener(&python, &["--base", &api.base, "--loop", "--stay", "24"]),
        "robot_listener.py --stay",
    );
    app.ready(Duration::from_secs(30)).await;
    // Wait for a position report beyond the start (every 2 s while playing).
    let id = {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let agents = api.admin("/admin/agents").await;
            if let Some(id) = agents[0]["sessions"][0].as_i64() {
                let s = api.admin(&format!("/admin/robot/sessions/{id}")).await;
                if s["position_ms"].as_i64().unwrap_or(0) > 0 {
                    break id;
                }
            }
            assert!(std::time::Instant::now() < deadline, "no position reported");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let successor = RobotAgent::start(&api, "heir", 1, &[]).await;
    api.wait_agents(2).await;
    let ok = std::process::Command::new("kill")
        .args(["-9", &victim.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -9 failed");

    let r = app.result(Duration::from_secs(60)).await;
    eprintln!("robot_listener.py: {r}");
    let gap = r["max_gap_ms"].as_f64().unwrap();
    assert!(gap < 15_000.0, "silent for {gap} ms after the kill: {r:#}");
    let age = r["last_frame_age_ms"].as_f64().unwrap();
    assert!(age < 1500.0, "no audio at the end ({age} ms): {r:#}");
    let s = api.admin(&format!("/admin/robot/sessions/{id}")).await;
    assert_eq!(s["agent_id"], "heir", "{s:#}");
    assert_eq!(s["redispatches"], 1, "{s:#}");
    assert!(s["errors"].to_string().contains("lease lapsed"), "{s:#}");
    let resumed = successor.logs().iter().any(|l| {
        l.contains("session accepted")
            && serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["fields"]["position_ms"].as_u64())
                .is_some_and(|p| p > 0)
    });
    assert!(resumed, "the successor did not resume from a position");
    successor.stop().await;
    api.stop().await;
}
