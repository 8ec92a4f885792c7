//! Placement across real agents: two `robot-agent` processes of capacity 1 and the real
//! `api`. Two robot calls go one to each agent; a third waits in the queue (depth 1 on
//! `GET /admin/queue`) and is served as soon as one of the first two finishes.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod robot_support;

use std::time::Duration;

use robot_support::{RobotAgent, RobotApi, robot_call};
use serde_json::json;

#[tokio::test]
async fn two_agents_of_capacity_one_take_one_call_each_and_a_third_waits() {
    let api = RobotApi::start().await;
    // A long grace: nobody joins these channels, and the calls must stay up until we end them.
    let a = RobotAgent::start(&api, "agent-1", 1, &["--leave-grace", "60"]).await;
    let b = RobotAgent::start(&api, "agent-2", 1, &["--leave-grace", "60"]).await;
    api.wait_agents(2).await;

    let c1 = api.dapi("call/robot", robot_call("u1", None, true)).await;
    let c2 = api.dapi("call/robot", robot_call("u2", None, true)).await;
    let ch1 = c1["channel"].as_str().unwrap().to_owned();
    let ch2 = c2["channel"].as_str().unwrap().to_owned();
    let running = |s: &serde_json::Value| s["state"] == "running";
    let s1 = api.wait_session(&ch1, 10, "call 1 running", running).await;
    let s2 = api.wait_session(&ch2, 10, "call 2 running", running).await;
    assert_ne!(s1["agent_id"], s2["agent_id"], "each agent takes one");
    let agents = api.admin("/admin/agents").await;
    for ag in agents.as_array().unwrap() {
        assert_eq!(ag["load"], 1, "{agents:#}");
    }

    // The third call has no room: it waits in the queue. Nothing signals "not offered", so
    // give the dispatcher (200 ms poll, immediate wake) a second to prove it leaves it alone.
    let c3 = api.dapi("call/robot", robot_call("u3", None, true)).await;
    let ch3 = c3["channel"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(api.admin("/admin/queue").await["depth"], 1);
    assert_eq!(api.sessions(&ch3).await[0]["state"], "queued");

    // Call 1 finishes (quit/robot): its agent leaves and takes the third.
    api.dapi("quit/robot", json!({"channel": ch1, "uid": "u1"}))
        .await;
    api.wait_session(&ch1, 5, "call 1 left", |s| s["state"] == "left")
        .await;
    let s3 = api.wait_session(&ch3, 10, "call 3 running", running).await;
    assert_eq!(s3["agent_id"], s1["agent_id"], "{s3:#}");
    assert_eq!(api.admin("/admin/queue").await["depth"], 0);

    // Both agents really joined the channels over /rtc.
    for ag in [&a, &b] {
        assert!(
            ag.logs()
                .iter()
                .any(|l| l.contains("robot joined the channel")),
            "agent {} never joined a channel",
            ag.id
        );
    }
    a.stop().await;
    b.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn the_robot_leaves_a_channel_nobody_joins_after_the_grace_period() {
    let api = RobotApi::start().await;
    let agent = RobotAgent::start(&api, "lonely", 1, &["--leave-grace", "1"]).await;
    api.wait_agents(1).await;
    let t0 = std::time::Instant::now();
    let call = api
        .dapi("call/robot", robot_call("nobody", None, true))
        .await;
    let channel = call["channel"].as_str().unwrap();
    api.wait_session(channel, 10, "the robot left", |s| s["state"] == "left")
        .await;
    // It joined, waited the 1 s grace for a person, and left; not before.
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    let tl = api
        .http
        .get(format!("{}/dapi/call/timeline?channel={channel}", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(tl.contains("nobody in the channel for 1 s"), "{tl}");
    agent.stop().await;
    api.stop().await;
}
