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
