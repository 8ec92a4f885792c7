//! The agent link survives an API restart (issue 6): the real `api` is stopped and started
//! again on the same port and database; the real `robot-agent` reconnects with backoff,
//! registers again, and takes the next robot call.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod robot_support;

use std::time::{Duration, Instant};

use robot_support::{RobotAgent, RobotApi, robot_call};

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
