//! Headless Chromium (Debian's, through playwright-core) opens `/demo` of the real `api`
//! binary, clicks "Call the robot", and hears a real `robot-agent`: inbound audio packets
//! and audio energy above zero, at most 1 % packets lost (from `getStats()`).
//! Needs scripts/install-test-deps.sh; fails, never skips, when its dependencies are missing.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod robot_support;

use std::time::Duration;

use robot_support::{RobotAgent, RobotApi, node, positive, require_browser_deps, run_json};

#[tokio::test]
async fn the_demo_page_calls_the_robot_and_hears_it() {
    require_browser_deps();
    let api = RobotApi::start().await;
    let agent = RobotAgent::start(&api, "agent-web", 2, &[]).await;
    api.wait_agents(1).await;
    let out = run_json(
        node("robot-page.mjs", &[&api.base, "3"]),
        "robot-page.mjs",
        Duration::from_secs(120),
    )
    .await;
    eprintln!("robot-page.mjs: {}", out["inbound"]);
    assert_eq!(out["inbound"]["connectionState"], "connected", "{out:#}");
    let received = positive(&out, "/inbound/packetsReceived");
    positive(&out, "/inbound/totalAudioEnergy");
    let lost = out["inbound"]["packetsLost"]
        .as_f64()
        .unwrap_or(0.0)
        .max(0.0);
    assert!(
        lost <= 0.01 * (received + lost),
        "{lost} packets lost of {}: {out:#}",
        received + lost
    );
    // The page lists the robot as a connected peer.
    assert_eq!(
        out["shown"]["peers"],
        serde_json::json!([["robot", "connected"]]),
        "{out:#}"
    );
    agent.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn the_demo_page_leaves_a_voicemail_and_plays_it_back() {
    require_browser_deps();
    let api = RobotApi::start().await;
    let agent = RobotAgent::start(&api, "agent-vm", 2, &[]).await;
    api.wait_agents(1).await;
    let out = run_json(
        node("voicemail-page.mjs", &[&api.base, "4"]),
        "voicemail-page.mjs",
        Duration::from_secs(180),
    )
    .await;
    eprintln!("voicemail-page.mjs: {out}");
    let rows = out["recordings"].as_array().unwrap();
    if rows.len() != 1 {
        for l in agent.logs() {
            eprintln!("agent: {l}");
        }
        // The page's log names the channel: "calling X on CHANNEL; ..."
        let log = out["shown"]["log"].to_string();
        if let Some(ch) = log.split(" on ").nth(1).and_then(|r| r.split(';').next()) {
            eprintln!("timeline of {ch}: {}", api.timeline(ch).await);
        }
    }
    assert_eq!(rows.len(), 1, "{out:#}");
    let secs: f64 = rows[0]
        .as_str()
        .unwrap()
        .trim_end_matches(" s")
        .parse()
        .unwrap();
    assert!((3.0..8.0).contains(&secs), "a {secs} s recording: {out:#}");
    positive(&out, "/played_s");
    agent.stop().await;
    api.stop().await;
}
