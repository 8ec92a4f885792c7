//! The robot, end to end, heard by a WebRTC stack nobody here wrote: the real `api` binary,
//! a real `robot-agent` process, and aiortc (PyPI) joining the channel as an app through the
//! documented `/rtc` protocol with the token from `POST /dapi/call/robot`.
//!
//! - the app records what the robot plays; the recording matches the uploaded fixture:
//!   duration within 100 ms, normalised cross-correlation >= 0.9 after alignment;
//! - `quit/robot` during playback: the app sees the robot's `peer_left` within 1 s.
//!
//! Needs scripts/install-test-deps.sh (aiortc in .venv); fails, never skips, without it.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod robot_support;

use std::time::Duration;

use robot_support::{RobotAgent, RobotApi, fixture, listener, positive, require_python, run_json};

#[tokio::test]
async fn an_aiortc_app_hears_the_fixture_the_robot_plays() {
    let python = require_python();
    let api = RobotApi::start().await;
    let fx = fixture();
    api.upload("speech", &fx).await;
    let agent = RobotAgent::start(&api, "agent-a", 2, &[]).await;
    api.wait_agents(1).await;

    let out_dir = robot_support::TempDir::new("robot-rec");
    let wav = out_dir.path().join("received.wav");
    let r = run_json(
        listener(
            &python,
            &[
                "--base",
                &api.base,
                "--audio",
                "speech",
                "--fixture",
                fx.to_str().unwrap(),
                "--out",
                wav.to_str().unwrap(),
                "--max-seconds",
                "20",
            ],
        ),
        "robot_listener.py",
        Duration::from_secs(90),
    )
    .await;
    eprintln!("robot_listener.py: {r}");
    positive(&r, "/packetsReceived");
    let duration = r["duration_ms"].as_f64().unwrap();
    let fixture_ms = r["fixture_ms"].as_f64().unwrap();
    assert!(
        (duration - fixture_ms).abs() <= 100.0,
        "received {duration} ms of audio, the fixture is {fixture_ms} ms: {r:#}"
    );
    let xcorr = r["xcorr"].as_f64().unwrap();
    assert!(xcorr >= 0.9, "normalised cross-correlation {xcorr}: {r:#}");
    assert_eq!(r["packetsLost"], 0, "{r:#}");
    // The audio ended: the robot left by itself after its tail.
    assert_eq!(r["robot_left_reason"], "left", "{r:#}");
    let channel = r["channel"].as_str().unwrap();
    let s = api
        .wait_session(channel, 5, "the session is left", |s| s["state"] == "left")
        .await;
    assert!(s["errors"].as_array().unwrap().is_empty(), "{s:#}");
    // The timeline shows the robot's run.
    let tl = api
        .http
        .get(format!("{}/dapi/call/timeline?channel={channel}", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        tl.contains("robot_playing") && tl.contains("robot_left"),
        "{tl}"
    );

    agent.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn quit_robot_during_playback_the_app_sees_the_robot_leave_within_a_second() {
    let python = require_python();
    let api = RobotApi::start().await;
    let agent = RobotAgent::start(&api, "agent-q", 2, &[]).await;
    api.wait_agents(1).await;
    // The shipped `default` asset, looping: only quit/robot ends it.
    let r = run_json(
        listener(
            &python,
            &[
                "--base",
                &api.base,
                "--loop",
                "--quit-after",
                "1.5",
                "--max-seconds",
                "10",
            ],
        ),
        "robot_listener.py --quit-after",
        Duration::from_secs(90),
    )
    .await;
    eprintln!("robot_listener.py: {r}");
    positive(&r, "/packetsReceived");
    let ms = r["quit_to_peer_left_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("the robot never left: {r:#}"));
    assert!(
        ms < 1000.0,
        "the robot left {ms} ms after quit/robot: {r:#}"
    );
    let channel = r["channel"].as_str().unwrap();
    let s = api
        .wait_session(channel, 5, "the session is left", |s| s["state"] == "left")
        .await;
    assert!(s["position_ms"].as_i64().unwrap() > 0, "{s:#}");
    agent.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn the_robot_joins_although_its_host_is_at_the_per_address_socket_cap() {
    // The app and the agent are both on 127.0.0.1, which may hold one /rtc socket: the app
    // takes it, and the robot's socket, which presents the agent key, is not counted
    // against the address (every session of an agent comes from the agent's host).
    let python = require_python();
    let api = RobotApi::start_with(&[("DAPI_RTC_SOCKETS_PER_IP", "1")]).await;
    let agent = RobotAgent::start(&api, "agent-cap", 2, &[]).await;
    api.wait_agents(1).await;
    let r = run_json(
        listener(&python, &["--base", &api.base, "--max-seconds", "10"]),
        "robot_listener.py",
        Duration::from_secs(90),
    )
    .await;
    eprintln!("robot_listener.py: {r}");
    positive(&r, "/packetsReceived");
    agent.stop().await;
    api.stop().await;
}
