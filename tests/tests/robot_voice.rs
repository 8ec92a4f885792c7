//! The robot that hears and is steered, end to end with a WebRTC stack nobody here wrote:
//! the real `api` binary (SQLite), a real `robot-agent` process, and aiortc
//! (`tests/aiortc/robot_voice.py`) as the app.
//!
//! - voicemail: the app calls the robot with `record`, hears the greeting and the beep,
//!   speaks the speech fixture, and stops; the robot stops on silence, uploads and leaves;
//!   the recording listed for the app's uid decodes with ffmpeg and matches what was sent
//!   (normalised cross-correlation >= 0.9 after alignment, length within 100 ms);
//! - control: pause/resume change what the app hears within 60 ms of the control's answer;
//!   marks queued behind a short item, with random clears, are reported in order, and none
//!   is reported `played` unless its item was heard whole (the app's received RTP).
//!
//! Needs scripts/install-test-deps.sh (aiortc in .venv) and ffmpeg; fails, never skips,
//! without them.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod robot_support;

use std::path::Path;
use std::time::Duration;

use robot_support::{RobotAgent, RobotApi, fixture, require_python, root, run_json};
use tokio::process::Command;

fn voice(python: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(python);
    c.arg(root().join("tests/aiortc/robot_voice.py")).args(args);
    c
}

/// A mono 16-bit WAV of `ms` of a 660 Hz tone at 16 kHz.
fn tone_wav(path: &Path, ms: u32) {
    let rate = 16_000u32;
    let n = rate * ms / 1000;
    let mut data = Vec::with_capacity(n as usize * 2);
    for i in 0..n {
        let t = f64::from(i) / f64::from(rate);
        let s = (0.3 * (2.0 * std::f64::consts::PI * 660.0 * t).sin() * 32767.0) as i16;
        data.extend_from_slice(&s.to_le_bytes());
    }
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2).to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(data.len() as u32).to_le_bytes());
    w.extend_from_slice(&data);
    std::fs::write(path, w).unwrap();
}

#[tokio::test]
async fn an_aiortc_caller_leaves_a_voicemail_that_decodes_to_what_it_said() {
    let python = require_python();
    let api = RobotApi::start().await;
    let dir = robot_support::TempDir::new("robot-voice");
    let greeting = dir.path().join("greeting.wav");
    tone_wav(&greeting, 1000);
    api.upload("greeting", &greeting).await;
    let agent = RobotAgent::start(&api, "agent-v", 2, &[]).await;
    api.wait_agents(1).await;

    let fx = fixture();
    let r = run_json(
        voice(
            &python,
            &[
                "--base",
                &api.base,
                "voicemail",
                "--greeting",
                "greeting",
                "--fixture",
                fx.to_str().unwrap(),
            ],
        ),
        "robot_voice.py voicemail",
        Duration::from_secs(120),
    )
    .await;
    eprintln!("robot_voice.py voicemail: {r}");
    assert!(
        r["greeting_packets"].as_u64().unwrap() >= 50 + 20,
        "the greeting and the beep were heard: {r:#}"
    );
    assert_eq!(r["robot_left_reason"], "left", "{r:#}");
    let recs = r["recordings"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "one participant, one recording: {r:#}");
    assert_eq!(recs[0]["complete"], true, "{r:#}");
    let decoded = r["decoded_ms"].as_f64().unwrap();
    let spoken = r["spoken_ms"].as_f64().unwrap();
    assert!(
        (decoded - spoken).abs() <= 100.0,
        "the recording is {decoded} ms, the app spoke {spoken} ms: {r:#}"
    );
    let xcorr = r["xcorr"].as_f64().unwrap();
    assert!(xcorr >= 0.9, "normalised cross-correlation {xcorr}: {r:#}");
    // The robot left on the silence after the speech (2 s), not at max_seconds.
    let after = r["left_after_speech_ms"].as_f64().unwrap();
    assert!((1900.0..4000.0).contains(&after), "{after} ms: {r:#}");
    let channel = r["channel"].as_str().unwrap();
    let tl = api.timeline(channel).await;
    assert!(tl.contains("recording_ready"), "{tl}");
    agent.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn an_aiortc_listener_hears_controls_at_once_and_marks_never_lie() {
    let python = require_python();
    let api = RobotApi::start().await;
    let dir = robot_support::TempDir::new("robot-steer");
    let short = dir.path().join("short.wav");
    tone_wav(&short, 200);
    api.upload("short", &short).await;
    api.upload("speech", &fixture()).await;
    let agent = RobotAgent::start(&api, "agent-c", 2, &[]).await;
    api.wait_agents(1).await;

    let r = run_json(
        voice(
            &python,
            &[
                "--base",
                &api.base,
                "control",
                "--audio",
                "speech",
                "--short",
                "short",
                "--short-ms",
                "260",
                "--rounds",
                "15",
                "--marks",
                "30",
            ],
        ),
        "robot_voice.py control",
        Duration::from_secs(180),
    )
    .await;
    eprintln!("robot_voice.py control: {r}");
    let p99 = r["resume_from_answer_ms"]["p99"].as_f64().unwrap();
    assert!(
        p99 <= 60.0,
        "resume heard {p99} ms after the answer (p99): {r:#}"
    );
    assert_eq!(r["packets_after_pause_answer"], 0, "{r:#}");
    assert_eq!(r["lies"], 0, "{r:#}");
    assert_eq!(r["never_reported"], 0, "{r:#}");
    assert_eq!(r["played_in_order"], true, "{r:#}");
    assert!(r["played"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["cleared"].as_u64().unwrap() > 0, "{r:#}");
    agent.stop().await;
    api.stop().await;
}
