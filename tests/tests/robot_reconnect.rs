//! The robot survives an API restart (issue 6): the real `api` is killed and started again
//! on the same port and database. The real `robot-agent` reconnects its link with backoff,
//! registers again and takes the next robot call; a session playing at the time keeps
//! playing (media is peer to peer), joins its channel again, and is neither ended nor
//! re-dispatched, while an aiortc app that also joins again keeps hearing it.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod robot_support;

use std::time::{Duration, Instant};

use robot_support::{RobotAgent, RobotApi, Script, listener, require_python, robot_call};

#[tokio::test]
async fn the_agent_reconnects_after_an_api_restart_and_takes_new_calls() {
    let api = RobotApi::start().await;
    let agent = RobotAgent::start(&api, "survivor", 2, &["--leave-grace", "30"]).await;
    api.wait_agents(1).await;

    let api = api.restart().await;
    let t0 = Instant::now();
    let agents = api.wait_agents(1).await;
    assert_eq!(agents[0]["agent_id"], "survivor", "{agents:#}");
    // Backoff starts at 250 ms and doubles to 5 s: it is back well within 10 s.
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    let call = api.dapi("call/robot", robot_call("u1", None, true)).await;
    let channel = call["channel"].as_str().unwrap();
    let s = api
        .wait_session(channel, 10, "the call runs on the agent", |s| {
            s["state"] == "running"
        })
        .await;
    assert_eq!(s["agent_id"], "survivor");
    assert!(
        agent
            .logs()
            .iter()
            .any(|l| l.contains("agent link lost; reconnecting")),
        "the agent noticed the restart"
    );
    agent.stop().await;
    api.stop().await;
}

/// The session's `position_ms` once it is past `after`.
async fn position_past(api: &RobotApi, id: i64, after: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = api.admin(&format!("/admin/robot/sessions/{id}")).await;
        let p = s["position_ms"].as_i64().unwrap_or(0);
        if p > after {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "no position past {after} ms: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_session_keeps_playing_across_an_api_restart() {
    let python = require_python();
    let api = RobotApi::start().await;
    let agent = RobotAgent::start(&api, "steady", 1, &[]).await;
    api.wait_agents(1).await;

    let mut app = Script::spawn(
        listener(
            &python,
            &["--base", &api.base, "--loop", "--stay", "20", "--rejoin"],
        ),
        "robot_listener.py --stay --rejoin",
    );
    app.ready(Duration::from_secs(30)).await;
    let id = {
        let agents = api.wait_agents(1).await;
        agents[0]["sessions"][0]
            .as_i64()
            .expect("the agent holds the session")
    };
    let before = position_past(&api, id, 0).await;

    let api = api.restart().await;
    // The same session, on the same agent, reports positions beyond the one before the
    // restart: it went on, it was not started again from a saved position.
    let after = position_past(&api, id, before + 2000).await;
    let s = api.admin(&format!("/admin/robot/sessions/{id}")).await;
    assert_eq!(s["state"], "running", "{s:#}");
    assert_eq!(s["agent_id"], "steady", "{s:#}");
    assert_eq!(s["redispatches"], 0, "{s:#}");
    assert_eq!(s["attempts"], 1, "{s:#}");
    assert_eq!(s["errors"], serde_json::json!([]), "{s:#}");

    // The agent's log up to here, well after the restart: the session must not have ended.
    // (It does end right after the app's final `leave`: the caller left, the call ends.)
    let during = agent.logs();

    let r = app.result(Duration::from_secs(60)).await;
    eprintln!("robot_listener.py: {r}; positions {before} -> {after} ms");
    assert!(
        r["rejoins"].as_i64().unwrap() >= 1,
        "the app did not join again: {r:#}"
    );
    let age = r["last_frame_age_ms"].as_f64().unwrap();
    assert!(age < 1500.0, "no audio at the end ({age} ms): {r:#}");
    let gap = r["max_gap_ms"].as_f64().unwrap();
    assert!(
        gap < 15_000.0,
        "silent for {gap} ms around the restart: {r:#}"
    );
    let logs = agent.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("robot rejoined the channel")),
        "the robot did not join the channel again"
    );
    let ended: Vec<&String> = during
        .iter()
        .filter(|l| l.contains("robot session ended"))
        .collect();
    assert!(
        ended.is_empty(),
        "the session ended around the restart: {ended:#?}"
    );
    agent.stop().await;
    api.stop().await;
}
