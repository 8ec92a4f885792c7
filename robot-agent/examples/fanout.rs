//! Fan-out benchmark: one robot agent holding N channels with one listener each.
//!
//! Run through `scripts/bench-robot.sh`, which starts the real `api` and one real
//! `robot-agent` (release builds) and passes their addresses:
//!
//! ```text
//! fanout --api http://127.0.0.1:PORT --agent-pid PID --metrics http://127.0.0.1:PORT/metrics \
//!        --steps 50,100,150,200,250,300 --measure-secs 10
//! ```
//!
//! For each step it raises the number of channels to N (each: `POST /dapi/call/robot` with
//! `loop: true`, a receive-only probe peer joined on `/rtc` as the app), waits until every
//! probe receives audio, then measures for `--measure-secs`: the agent's CPU (from
//! `/proc/PID/stat`), RSS per channel (`VmRSS` above the idle baseline), the pacers' send
//! lateness p99 (from the delta of the `robot_frame_lateness_seconds` histogram), frames
//! late (> 5 ms), packets received by the probes against the expected 50 per second, and
//! this process's own CPU (the probes), to tell a starved machine from a slow agent.
//! Probes live in this process (Rust, cheap): they share the machine's cores with the agent,
//! as a real receiver on the same host would. `--probes light` (default) makes each a
//! connection of the one-socket driver on a socket of its own (`ProbePeer::new_light`),
//! `--probes webrtc` a webrtc-rs PeerConnection (the earlier runs): the light ones let the
//! machine hold more listeners; either way their cost is this process's, not the agent's.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use protocol::signaling::{
    ClientMessage, SdpType, ServerMessage, SessionDescription, SignalPayload,
};
use robot_agent::rtc::probe::{ProbePeer, ProbeStats};
use robot_agent::signaling::{ChannelSocket, rtc_url};
use serde_json::{Value, json};

struct Args {
    api: String,
    agent_pid: u32,
    metrics: String,
    steps: Vec<usize>,
    measure: Duration,
    bind_ip: IpAddr,
    light_probes: bool,
    /// Stop once the p99 lateness passes this (ms).
    stop_p99_ms: f64,
}

fn args() -> Args {
    let mut a = Args {
        api: String::new(),
        agent_pid: 0,
        metrics: String::new(),
        steps: vec![50, 100, 150, 200, 250, 300],
        measure: Duration::from_secs(10),
        bind_ip: IpAddr::from([127, 0, 0, 1]),
        light_probes: true,
        stop_p99_ms: 5.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--api" => a.api = v,
            "--agent-pid" => a.agent_pid = v.parse().unwrap_or(0),
            "--metrics" => a.metrics = v,
            "--steps" => a.steps = v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
            "--measure-secs" => a.measure = Duration::from_secs(v.parse().unwrap_or(10)),
            "--bind-ip" => a.bind_ip = v.parse().unwrap_or(a.bind_ip),
            "--probes" => a.light_probes = v != "webrtc",
            "--stop-p99-ms" => a.stop_p99_ms = v.parse().unwrap_or(a.stop_p99_ms),
            _ => eprintln!("unknown argument {k}"),
        }
    }
    a
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the `(comm)`: state is field 3; utime 14, stime 15
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (upper bound, cumulative count) of the lateness histogram, and frames_late_total.
async fn scrape(http: &reqwest::Client, url: &str) -> (Vec<(f64, f64)>, f64, f64) {
    let text = match http.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let mut buckets = Vec::new();
    let mut late = 0.0;
    let mut frames = 0.0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("robot_frame_lateness_seconds_bucket{le=\"") {
            let mut p = rest.split("\"} ");
            let le = p.next().unwrap_or("");
            let v: f64 = p.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(0.0)
            };
            buckets.push((le, v));
        } else if let Some(v) = line.strip_prefix("robot_frames_late_total ") {
            late = v.parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("robot_frames_total ") {
            frames = v.parse().unwrap_or(0.0);
        }
    }
    (buckets, late, frames)
}

/// The q-quantile of a cumulative histogram delta, interpolated inside its bucket.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .zip(before.iter().chain(std::iter::repeat(&(0.0, 0.0))))
        .map(|(a, b)| (a.0, a.1 - b.1))
        .collect();
    let total = delta.last().map(|d| d.1).unwrap_or(0.0);
    if total <= 0.0 {
        return 0.0;
    }
    let target = q * total;
    let mut prev_le = 0.0;
    let mut prev_c = 0.0;
    for (le, c) in &delta {
        if *c >= target {
            if le.is_infinite() {
                return prev_le;
            }
            let frac = if c - prev_c > 0.0 {
                (target - prev_c) / (c - prev_c)
            } else {
                1.0
            };
            return prev_le + (le - prev_le) * frac;
        }
        prev_le = *le;
        prev_c = *c;
    }
    prev_le
}

/// One channel: a call to the robot and a probe listening to it.
async fn open_channel(
    http: reqwest::Client,
    api: String,
    i: usize,
    bind_ip: IpAddr,
    light: bool,
) -> Option<Arc<ProbeStats>> {
    let v: Value = http
        .post(format!("{api}/dapi/call/robot"))
        .json(&json!({"src_uid": format!("fan{i}"), "loop": true}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let d = &v["data"];
    let (mut sock, joined) = ChannelSocket::join(
        &rtc_url(&api),
        None,
        d["appID"].as_str()?,
        d["channel"].as_str()?,
        d["uid"].as_str()?,
        d["token"].as_str()?,
    )
    .await
    .ok()?;
    let probe = if light {
        ProbePeer::new_light(bind_ip).await.ok()?
    } else {
        ProbePeer::new(bind_ip).await.ok()?
    };
    let stats = probe.stats();
    tokio::spawn(async move {
        if joined.peers.iter().any(|p| p == "robot")
            && let Ok(sdp) = probe.offer().await
        {
            let _ = sock
                .send(&ClientMessage::Signal {
                    to: "robot".into(),
                    payload: SignalPayload::Description(SessionDescription {
                        kind: SdpType::Offer,
                        sdp,
                    }),
                })
                .await;
        }
        while let Some(m) = sock.next().await {
            if let ServerMessage::Signal { from, payload } = m {
                if from != "robot" {
                    continue;
                }
                match payload {
                    SignalPayload::Description(SessionDescription {
                        kind: SdpType::Offer,
                        sdp,
                    }) => {
                        if let Ok(a) = probe.answer(sdp).await {
                            let _ = sock
                                .send(&ClientMessage::Signal {
                                    to: "robot".into(),
                                    payload: SignalPayload::Description(SessionDescription {
                                        kind: SdpType::Answer,
                                        sdp: a,
                                    }),
                                })
                                .await;
                        }
                    }
                    SignalPayload::Description(SessionDescription {
                        kind: SdpType::Answer,
                        sdp,
                    }) => {
                        let _ = probe.set_answer(sdp).await;
                    }
                    SignalPayload::Candidate(Some(c)) => {
                        let _ = probe.add_candidate(c).await;
                    }
                    SignalPayload::Candidate(None) => {}
                }
            }
        }
        probe.close().await;
    });
    Some(stats)
}

#[tokio::main]
async fn main() {
    let a = args();
    assert!(
        !a.api.is_empty() && a.agent_pid > 0,
        "usage: fanout --api URL --agent-pid PID --metrics URL"
    );
    let http = reqwest::Client::new();
    let baseline_rss = rss_kib(a.agent_pid);
    println!(
        "| channels | agent CPU (% of one core) | agent RSS (MiB) | RSS per channel (KiB) | lateness p50 (ms) | lateness p99 (ms) | frames late > 5 ms | packets received / expected | probes' CPU (% of one core) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let me = std::process::id();
    let mut probes: Vec<Arc<ProbeStats>> = Vec::new();
    for &n in &a.steps {
        // Ramp up to n channels, 8 at a time.
        while probes.len() < n {
            let batch = (n - probes.len()).min(8);
            let mut tasks = Vec::new();
            for k in 0..batch {
                let i = probes.len() + k;
                tasks.push(tokio::spawn(open_channel(
                    http.clone(),
                    a.api.clone(),
                    i,
                    a.bind_ip,
                    a.light_probes,
                )));
            }
            for t in tasks {
                match t.await {
                    Ok(Some(s)) => probes.push(s),
                    _ => {
                        eprintln!("a channel failed to open");
                        return;
                    }
                }
            }
        }
        // Wait until every probe hears the robot.
        let deadline = Instant::now() + Duration::from_secs(60);
        while probes
            .iter()
            .any(|p| p.packets.load(Ordering::Relaxed) == 0)
        {
            if Instant::now() > deadline {
                let silent = probes
                    .iter()
                    .filter(|p| p.packets.load(Ordering::Relaxed) == 0)
                    .count();
                eprintln!("{silent} of {n} probes received nothing within 60 s");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // settle after the ramp
        let (b0, late0, frames0) = scrape(&http, &a.metrics).await;
        let cpu0 = cpu_seconds(a.agent_pid);
        let own0 = cpu_seconds(me);
        let pk0: u64 = probes
            .iter()
            .map(|p| p.packets.load(Ordering::Relaxed))
            .sum();
        let t0 = Instant::now();
        tokio::time::sleep(a.measure).await;
        let (b1, late1, frames1) = scrape(&http, &a.metrics).await;
        let cpu1 = cpu_seconds(a.agent_pid);
        let own1 = cpu_seconds(me);
        let pk1: u64 = probes
            .iter()
            .map(|p| p.packets.load(Ordering::Relaxed))
            .sum();
        let secs = t0.elapsed().as_secs_f64();
        let rss = rss_kib(a.agent_pid);
        let expected = n as f64 * 50.0 * secs;
        let p50 = quantile(&b0, &b1, 0.50) * 1000.0;
        let p99 = quantile(&b0, &b1, 0.99) * 1000.0;
        let frames = frames1 - frames0;
        println!(
            "| {n} | {:.0} | {:.1} | {:.0} | {:.2} | {:.2} | {:.0} of {:.0} ({:.2} %) | {} / {:.0} ({:.1} %) | {:.0} |",
            (cpu1 - cpu0) / secs * 100.0,
            rss as f64 / 1024.0,
            rss.saturating_sub(baseline_rss) as f64 / n as f64,
            p50,
            p99,
            late1 - late0,
            frames,
            if frames > 0.0 {
                (late1 - late0) / frames * 100.0
            } else {
                0.0
            },
            pk1 - pk0,
            expected,
            (pk1 - pk0) as f64 / expected * 100.0,
            (own1 - own0) / secs * 100.0
        );
        if p99 > a.stop_p99_ms {
            eprintln!(
                "p99 lateness above {} ms at {n} channels: stopping",
                a.stop_p99_ms
            );
            break;
        }
    }
}
