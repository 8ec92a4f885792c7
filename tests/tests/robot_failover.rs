//! An agent dies during playback (issue 6; issue 11 point 3) while an aiortc app listens,
//! with real `robot-agent` processes:
//!
//! - `kill -9`: its `/agent` socket closes, so the API offers the session again at once
//!   from its last reported position (DESIGN.md decision 11, the link drives failover); a
//!   second agent rejoins the channel, resumes near where the first stopped, and the app
//!   hears the robot again. The lease is 60 s there, so only the closed link explains it.
//! - `kill -STOP`: the agent hangs with its socket open and silent; the lease (10 s) is the
//!   backstop: it lapses, the session is offered again with its last position, and the app
//!   hears the robot again within 15 s.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod robot_support;

use std::time::{Duration, Instant};

use robot_support::{RobotAgent, RobotApi, Script, listener, require_python};
use serde_json::Value;

/// Waits until the agent holding the only session has reported a position past 0;
/// returns the session id.
async fn playing_session(api: &RobotApi) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let agents = api.admin("/admin/agents").await;
        let held = agents
            .as_array()
            .unwrap()
            .iter()
            .find_map(|a| a["sessions"][0].as_i64());
        if let Some(id) = held {
            let s = api.admin(&format!("/admin/robot/sessions/{id}")).await;
            if s["position_ms"].as_i64().unwrap_or(0) > 0 {
                return id;
            }
        }
        assert!(Instant::now() < deadline, "no position reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn signal(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// The `position_ms` of the successor's `session accepted` log line.
fn accepted_position(agent: &RobotAgent) -> Option<u64> {
    agent.logs().iter().find_map(|l| {
        if !l.contains("session accepted") {
            return None;
        }
        serde_json::from_str::<Value>(l).ok()?["fields"]["position_ms"].as_u64()
    })
}

#[tokio::test]
async fn kill_9_during_playback_the_link_fails_over_and_another_agent_resumes_near_the_position() {
    let python = require_python();
    let api = RobotApi::start_with(&[("DAPI_LEASE_SECONDS", "60")]).await;
    let victim = RobotAgent::start(&api, "victim", 1, &[]).await;
    api.wait_agents(1).await;

    let mut app = Script::spawn(
        listener(&python, &["--base", &api.base, "--loop", "--stay", "20"]),
        "robot_listener.py --stay",
    );
    app.ready(Duration::from_secs(30)).await;
    let id = playing_session(&api).await;
    let successor = RobotAgent::start(&api, "heir", 1, &[]).await;
    api.wait_agents(2).await;
    let before = api.admin(&format!("/admin/robot/sessions/{id}")).await["position_ms"]
        .as_i64()
        .unwrap();
    signal("-9", victim.pid());
    let killed = Instant::now();

    // The session is running on the heir well before the 60 s lease could lapse.
    let s = loop {
        let s = api.admin(&format!("/admin/robot/sessions/{id}")).await;
        if s["agent_id"] == "heir" && s["state"] == "running" {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "not running on the heir: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("kill -9 -> running on the heir: {:?}", killed.elapsed());
    assert_eq!(s["redispatches"], 1, "{s:#}");
    assert_eq!(
        s["attempts"], 1,
        "a crash while playing is not an attempt: {s:#}"
    );
    assert!(
        s["errors"]
            .to_string()
            .contains("link to agent victim closed"),
        "{s:#}"
    );

    let r = app.result(Duration::from_secs(60)).await;
    eprintln!("robot_listener.py: {r}");
    let gap = r["max_gap_ms"].as_f64().unwrap();
    eprintln!("longest silence at the app: {gap:.0} ms");
    // Far below the lease: the link, not the lease, brought it back.
    assert!(gap < 10_000.0, "silent for {gap} ms after the kill: {r:#}");
    let age = r["last_frame_age_ms"].as_f64().unwrap();
    assert!(age < 1500.0, "no audio at the end ({age} ms): {r:#}");
    assert!(r["robot_joins"].as_i64().unwrap() >= 1, "{r:#}");
    // Resumed from the last position the victim reported (every ~2 s while playing).
    let resumed = accepted_position(&successor).expect("the heir logged its accept");
    let resumed = i64::try_from(resumed).unwrap();
    eprintln!("position before the kill {before} ms, resumed at {resumed} ms");
    assert!(
        resumed >= before && resumed <= before + 2_500,
        "resumed at {resumed} ms, the position was {before} ms before the kill"
    );
    successor.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn kill_stop_during_playback_the_lease_lapses_and_another_agent_resumes_within_15_s() {
    let python = require_python();
    let api = RobotApi::start().await;
    let victim = RobotAgent::start(&api, "victim", 1, &[]).await;
    api.wait_agents(1).await;

    let mut app = Script::spawn(
        listener(&python, &["--base", &api.base, "--loop", "--stay", "24"]),
        "robot_listener.py --stay",
    );
    app.ready(Duration::from_secs(30)).await;
    let id = playing_session(&api).await;
    let successor = RobotAgent::start(&api, "heir", 1, &[]).await;
    api.wait_agents(2).await;
    // Frozen: its sockets stay open, it says nothing more.
    signal("-STOP", victim.pid());

    let r = app.result(Duration::from_secs(60)).await;
    eprintln!("robot_listener.py: {r}");
    let gap = r["max_gap_ms"].as_f64().unwrap();
    assert!(gap < 15_000.0, "silent for {gap} ms after the stop: {r:#}");
    let age = r["last_frame_age_ms"].as_f64().unwrap();
    assert!(age < 1500.0, "no audio at the end ({age} ms): {r:#}");
    let s = api.admin(&format!("/admin/robot/sessions/{id}")).await;
    assert_eq!(s["agent_id"], "heir", "{s:#}");
    assert_eq!(s["redispatches"], 1, "{s:#}");
    assert!(s["errors"].to_string().contains("lease lapsed"), "{s:#}");
    let resumed = accepted_position(&successor).is_some_and(|p| p > 0);
    assert!(resumed, "the successor did not resume from a position");
    successor.stop().await;
    victim.stop().await;
    api.stop().await;
}
