//! Recording cost: N concurrent voicemail sessions in one process, each recording one
//! participant who speaks 50 packets a second, on the real session driver, core, recorder
//! and uploads (to a sink that drops the bodies) over the fake transport (`test-util`).
//!
//! ```text
//! cargo run --release -p robot-agent --features test-util --example record_bench -- \
//!     --sessions 100 --secs 20 --bytes 120
//! ```
//!
//! It runs twice: once with `record` (the packets are recorded) and once without (the same
//! sessions and the same packets, which the core drops), and prints the process CPU per
//! participant in % of one core for both, their difference (the recording's own cost), and
//! the resident memory per participant that recording adds (VmRSS while recording less
//! VmRSS of the same sessions before they record). What it leaves out: SRTP decryption and
//! the UDP socket of the real transport, which every received stream pays whether it is
//! recorded or not (no whole-agent recording benchmark with aiortc senders exists yet).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use protocol::agent::{RecordOptions, SessionOffer};
use robot_agent::AgentError;
use robot_agent::metrics::Metrics;
use robot_agent::session::{self, RecordingSink, SessionConfig, SessionContext};
use robot_agent::test_util::{FakeSignaling, FakeTransport, JoinScript, TestAudio, TestFrames};

/// Counts uploads, keeps nothing.
#[derive(Default)]
struct Discard {
    uploads: AtomicU64,
    bytes: AtomicU64,
}

#[async_trait]
impl RecordingSink for Discard {
    async fn upload(
        &self,
        _session_id: i64,
        _uid: &str,
        _part: u32,
        _last: bool,
        body: Vec<u8>,
    ) -> Result<(), AgentError> {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

struct Run {
    cpu_pct_per_participant: f64,
    rss_kib_per_participant: f64,
    uploads: u64,
    upload_bytes: u64,
}

async fn run(sessions: usize, secs: u64, bytes: usize, record: bool) -> Run {
    let (signaling, mut channels) = FakeSignaling::new();
    let transport = FakeTransport::new();
    let audio = TestAudio::new();
    audio.add("greet", TestFrames::numbered(0, 5));
    let sink = Arc::new(Discard::default());
    let dir = std::env::temp_dir().join(format!("record-bench-{}", std::process::id()));
    let ctx = Arc::new(SessionContext {
        config: SessionConfig {
            leave_grace: Duration::from_secs(600),
            tail: Duration::from_secs(600),
            position_every: Duration::from_secs(2),
            rejoin_for: Duration::from_secs(30),
        },
        signaling: signaling.clone(),
        audio,
        transport: transport.clone(),
        metrics: Arc::new(Metrics::new(u32::try_from(sessions).unwrap_or(u32::MAX))),
        media_clock: session::media_clock().expect("media clock"),
        recordings: sink.clone(),
        recording_dir: dir.clone(),
        bridge_tls: robot_agent::bridge::BridgeTls::system(),
    });
    let mut controls = Vec::new();
    let mut held = Vec::new();
    for i in 0..sessions {
        signaling.script(JoinScript::Accept(vec!["app".into()]));
        let offer = SessionOffer {
            id: i64::try_from(i).unwrap_or(0),
            channel: format!("c{i}"),
            uid: "robot".into(),
            token: "t".into(),
            app_id: "a".into(),
            audio: "greet".into(),
            loop_audio: false,
            playlist: Vec::new(),
            position_ms: 0,
            attempt: 1,
            items: Vec::new(),
            record: record.then_some(RecordOptions {
                max_seconds: 3600,
                silence_seconds: 60,
                beep: false,
            }),
            bridge: None,
            call: None,
        };
        let (ctl, ctl_rx) = tokio::sync::mpsc::unbounded_channel();
        let (up, mut up_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(session::run(Arc::clone(&ctx), offer, ctl_rx, up));
        tokio::spawn(async move { while up_rx.recv().await.is_some() {} });
        controls.push(ctl);
        held.push(channels.recv().await.expect("joined"));
    }
    let mut listeners = Vec::new();
    for l in transport.listeners() {
        l.connect();
        listeners.push(l);
    }
    for l in &listeners {
        l.wait_frames(5).await;
    }
    // the greeting is over (and, with `record`, the recording phase began)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut payload = vec![0xF8u8];
    payload.resize(bytes, 0x5A);
    let payload = Bytes::from(payload);
    let feed = |k: u32| {
        for l in &listeners {
            l.send_audio(
                u16::try_from(k % 65_536).unwrap_or(0),
                k * 960,
                payload.clone(),
            );
        }
    };
    // two seconds to settle (files made, first pages written)
    let start = tokio::time::Instant::now();
    let mut k = 0u32;
    while start.elapsed() < Duration::from_secs(2) {
        feed(k);
        k += 1;
        tokio::time::sleep_until(start + Duration::from_millis(20) * k).await;
    }
    let rss0 = rss_kib();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let measure_from = k;
    while t0.elapsed() < Duration::from_secs(secs) {
        feed(k);
        k += 1;
        tokio::time::sleep_until(start + Duration::from_millis(20) * k).await;
    }
    let cpu = cpu_seconds() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let rss1 = rss_kib();
    let _ = measure_from;
    for c in &controls {
        let _ = c.send(session::Control::Leave);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
    let n = sessions as f64;
    Run {
        cpu_pct_per_participant: cpu / wall / n * 100.0,
        rss_kib_per_participant: (rss1 - rss0).max(0.0) / n,
        uploads: sink.uploads.load(Ordering::Relaxed),
        upload_bytes: sink.bytes.load(Ordering::Relaxed),
    }
}

#[tokio::main]
async fn main() {
    let mut sessions = 100usize;
    let mut secs = 20u64;
    let mut bytes = 120usize;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--sessions" => sessions = v.parse().unwrap_or(sessions),
            "--secs" => secs = v.parse().unwrap_or(secs),
            "--bytes" => bytes = v.parse().unwrap_or(bytes),
            _ => eprintln!("unknown argument {k}"),
        }
    }
    let base_rss = rss_kib();
    let plain = run(sessions, secs, bytes, false).await;
    let rec = run(sessions, secs, bytes, true).await;
    println!(
        "| sessions | packet bytes | seconds | CPU/participant, not recording | CPU/participant, recording | recording's own CPU/participant | RSS/participant while recording | uploads |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {sessions} | {bytes} | {secs} | {:.4} % | {:.4} % | {:.4} % | {:.1} KiB | {} ({:.1} MB) |",
        plain.cpu_pct_per_participant,
        rec.cpu_pct_per_participant,
        rec.cpu_pct_per_participant - plain.cpu_pct_per_participant,
        rec.rss_kib_per_participant,
        rec.uploads,
        rec.upload_bytes as f64 / 1e6,
    );
    eprintln!(
        "baseline RSS {base_rss:.0} KiB; RSS/participant growth without recording {:.1} KiB",
        plain.rss_kib_per_participant
    );
}
