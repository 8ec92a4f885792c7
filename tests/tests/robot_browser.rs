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

#[tokio::test]
async fn the_demo_pages_robot_controls_pause_resume_change_the_volume_and_skip() {
    require_browser_deps();
    let api = RobotApi::start().await;
    let agent = RobotAgent::start(&api, "agent-steer", 2, &[]).await;
    api.wait_agents(1).await;
    let out = run_json(
        node("controls-page.mjs", &[&api.base]),
        "controls-page.mjs",
        Duration::from_secs(120),
    )
    .await;
    eprintln!("controls-page.mjs: {out}");
    let n = |phase: &str, k: &str| out[phase][k].as_f64().unwrap();
    let state = |phase: &str| out[phase]["state"].as_str().unwrap_or_default().to_owned();
    // Pause: the page shows it, and no audio comes (a packet or two in flight at most).
    assert!(state("paused").starts_with("paused"), "{out:#}");
    assert!(
        n("paused", "packets_after") - n("paused", "packets_before") <= 2.0,
        "{out:#}"
    );
    // Resume: the audio flows again (50 packets a second).
    assert!(state("resumed").starts_with("playing"), "{out:#}");
    assert!(
        n("resumed", "packets_after") - n("resumed", "packets_before") >= 50.0,
        "{out:#}"
    );
    // The volume slider is a `gain` control, answered with the state.
    assert!(
        out["gain"]
            .as_str()
            .unwrap_or_default()
            .starts_with("playing"),
        "{out:#}"
    );
    // Skip clears what plays: idle, no audio, the robot still in the call.
    assert!(state("skipped").starts_with("idle"), "{out:#}");
    assert!(
        n("skipped", "packets_after") - n("skipped", "packets_before") <= 2.0,
        "{out:#}"
    );
    agent.stop().await;
    api.stop().await;
}
