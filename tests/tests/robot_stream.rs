//! Streaming start across a real agent: two robot sessions of one never-played asset share
//! one encode (issue 11, point 2). The real `api` and `robot-agent` processes; the agent's
//! `/metrics` counts the encode and the join.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod robot_support;

use std::time::{Duration, Instant};

use robot_support::{RobotAgent, RobotApi, TempDir, robot_call};
use serde_json::json;

/// A port free right now on 127.0.0.1 (the agent binds it for its health endpoint; it prints
/// the address on stdout, which the shared helper does not keep).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn two_sessions_of_a_cold_asset_share_one_encode() {
    // A 10-minute MP3 made from the speech fixture: its encode takes seconds, so the second
    // session asks for it while the first session's encode is still running.
    let dir = TempDir::new("robot-stream");
    let mp3 = dir.path().join("long.mp3");
    let ok = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-stream_loop", "-1", "-i"])
        .arg(robot_support::fixture())
        .args(["-t", "600", "-c:a", "libmp3lame", "-b:a", "64k"])
        .arg(&mp3)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ffmpeg failed: run scripts/install-test-deps.sh");

    let api = RobotApi::start().await;
    let port = free_port();
    let health = format!("127.0.0.1:{port}");
    // No app joins: a long grace keeps both sessions up while the metrics are read.
    let agent = RobotAgent::start(
        &api,
        "stream",
        2,
        &["--leave-grace", "60", "--health-listen", &health],
    )
    .await;
    api.wait_agents(1).await;
    api.upload("long", &mp3).await;

    let c1 = api
        .dapi("call/robot", robot_call("u1", Some("long"), true))
        .await;
    let c2 = api
        .dapi("call/robot", robot_call("u2", Some("long"), true))
        .await;

    // Both sessions have their audio once each has either started an encode or joined one
    // (the robot joins its channel while the audio loads, so the join says nothing about
    // the audio): poll the agent's metrics until both have asked.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = reqwest::get(format!("http://{health}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let asked = metric(&text, "robot_audio_encodes_total").unwrap_or(0.0)
            + metric(&text, "robot_audio_encode_joins_total").unwrap_or(0.0);
        if asked >= 2.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "both sessions did not get their audio:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        metric(&text, "robot_audio_encodes_total"),
        Some(1.0),
        "one encode for two sessions:\n{text}"
    );
    assert_eq!(
        metric(&text, "robot_audio_encode_joins_total"),
        Some(1.0),
        "the second session joined the first one's encode:\n{text}"
    );
    assert_eq!(metric(&text, "robot_audio_cache_misses_total"), Some(1.0));

    for (c, uid) in [(&c1, "u1"), (&c2, "u2")] {
        let ch = c["channel"].as_str().unwrap().to_owned();
        api.dapi("quit/robot", json!({"channel": ch, "uid": uid}))
            .await;
        api.wait_session(&ch, 10, "the robot left", |s| s["state"] == "left")
            .await;
    }
    agent.stop().await;
    api.stop().await;
}
