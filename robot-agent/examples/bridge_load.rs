//! The media bridge with the real agent: latency and density of bridged calls through a
//! real `robot-agent` process and a real `api`, with real WebRTC listeners that speak.
//!
//! Run through `scripts/bench-robot.sh bridge`, which starts the API (with `DAPI_BRIDGES`
//! naming this process's program) and one agent (release builds), then:
//!
//! ```text
//! bridge_load --api http://127.0.0.1:PORT --agent-pid PID --metrics http://127.0.0.1:PORT/metrics \
//!             --program-listen 127.0.0.1:PPORT --steps 50,100,150,200,250 --measure-secs 20
//! ```
//!
//! This process holds both ends of every path, the agent sits between them:
//!
//! ```text
//!   listener (WebRTC, this process) ══ Opus/SRTP/UDP ══► robot-agent ── ws ──► program (this process)
//!   listener ◄══ Opus/SRTP/UDP ══ robot-agent ◄── ws ── program
//! ```
//!
//! - **Listeners**: one per call, the agent's own `rtc::WebrtcTransport` used from the app's
//!   side (a `sendrecv` webrtc-rs peer that answers or makes the offer over `/rtc`, as
//!   `fanout` does with its probes). An *echo* listener speaks 50 Opus packets a second (a
//!   tone) from the moment its connection is up; a *probe* listener is silent.
//! - **The program**: a tokio-tungstenite server. `/echo` (pcm16 at 16 kHz: the agent
//!   decodes the listener's Opus and encodes the program's audio) sends every `media`
//!   straight back; `/probe` (opus, passed through) sends one 20 ms packet every 100 ms and
//!   nothing else, so the robot's queue is empty before each. Its 50 packets are distinct
//!   (a tone of another pitch each), so the listener knows which one it got.
//!
//! For each step N (echo calls, plus `--probes` probe calls beside them) it prints, over
//! `--measure-secs` after the ramp and 2 s to settle:
//! - **RTP in → `media` at the program** (p50/p99, every packet of every echo call): from
//!   the listener handing frame k to its track (before SRTP and the UDP send) to the program
//!   reading the `media` event of it. Frame k is `timestamp_ms / 20` (the agent counts
//!   `timestamp_ms` from the first packet it got, the listener's frame 0 on loopback; were
//!   the first packets lost, the figure would be high by 20 ms each, never low).
//! - **program `media` → first RTP at the listener, empty queue** (p50/p99, the probe calls):
//!   from the program writing packet k to the probe listener's track handing over the RTP
//!   packet carrying it (matched by its bytes).
//! - the agent's **send lateness** (from its `/metrics`: frames later than 5 ms after their
//!   deadline, and the histogram bucket holding the p99), its **CPU** (`/proc/PID/stat`,
//!   in % of one core, and per call), and the echo audio heard back against 50 packets a
//!   second per call.
//!
//! Clocks: both ends of each path are in this process, so each latency is the difference of
//! two `Instant`s (CLOCK_MONOTONIC) read here; no clock is compared across processes.
//! Both figures include this process's side too (the listener's webrtc send path, the
//! program's WebSocket read): they are upper bounds on the agent's part.
//! This process shares the machine's 2 cores with the agent and the API; its own CPU is
//! printed beside the agent's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use protocol::signaling::{
    ClientMessage, SdpType, ServerMessage, SessionDescription, SignalPayload,
};
use robot_agent::rtc::{
    InboundAudio, Listener, ListenerEvent, ListenerSinks, ListenerState, RtcTransport,
    WebrtcTransport,
};
use robot_agent::signaling::{ChannelSocket, rtc_url};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    api: String,
    agent_pid: u32,
    metrics: String,
    program: SocketAddr,
    steps: Vec<usize>,
    measure: Duration,
    bind_ip: IpAddr,
    probes: usize,
}

fn args() -> Args {
    let mut a = Args {
        api: String::new(),
        agent_pid: 0,
        metrics: String::new(),
        program: SocketAddr::from(([127, 0, 0, 1], 0)),
        steps: vec![50, 100, 150, 200, 250],
        measure: Duration::from_secs(20),
        bind_ip: IpAddr::from([127, 0, 0, 1]),
        probes: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--api" => a.api = v,
            "--agent-pid" => a.agent_pid = v.parse().unwrap_or(0),
            "--metrics" => a.metrics = v,
            "--program-listen" => a.program = v.parse().unwrap_or(a.program),
            "--steps" => a.steps = v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
            "--measure-secs" => a.measure = Duration::from_secs(v.parse().unwrap_or(20)),
            "--bind-ip" => a.bind_ip = v.parse().unwrap_or(a.bind_ip),
            "--probes" => a.probes = v.parse().unwrap_or(a.probes),
            _ => eprintln!("unknown argument {k}"),
        }
    }
    a
}

/// What both ends recorded.
#[derive(Default)]
struct Lab {
    /// Per echo listener uid: when it handed frame k to its track.
    sends: Mutex<HashMap<String, SendLog>>,
    /// RTP in → program: (when the `media` was read, latency in ms).
    up: Mutex<Vec<(Instant, f64)>>,
    /// `media` events that matched no frame sent.
    unmatched: AtomicU64,
    /// Per probe call (by channel): the program's frames and the listener's packets.
    probes: Mutex<HashMap<String, Arc<ProbeLog>>>,
    /// Echo audio heard back by the listeners (packets).
    heard: AtomicU64,
}

#[derive(Default)]
struct ProbeLog {
    /// When the program wrote packet k (its index in the probe's 50).
    sent: Mutex<Vec<(Instant, usize)>>,
    /// When the listener got a packet of the probe's (its index).
    arrived: Mutex<Vec<(Instant, usize)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Lab {
    fn sends_of(&self, uid: &str) -> SendLog {
        Arc::clone(lock(&self.sends).entry(uid.to_owned()).or_default())
    }

    fn probe(&self, channel: &str) -> Arc<ProbeLog> {
        Arc::clone(lock(&self.probes).entry(channel.to_owned()).or_default())
    }
}

/// The program: `/echo` sends each `media` back, `/probe` speaks one frame every 100 ms.
async fn program(listener: tokio::net::TcpListener, lab: Arc<Lab>, probe: Arc<Vec<Bytes>>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        tokio::spawn(program_connection(
            tcp,
            Arc::clone(&lab),
            Arc::clone(&probe),
        ));
    }
}

/// A frame's send log (index: the frame's number).
type SendLog = Arc<Mutex<Vec<Instant>>>;

/// Notes the path of the upgrade request (a type, not a closure: the closure form trips
/// clippy::result_large_err on tungstenite's error response).
struct PathOf<'a>(&'a mut String);

impl tokio_tungstenite::tungstenite::handshake::server::Callback for PathOf<'_> {
    fn on_request(
        self,
        req: &tokio_tungstenite::tungstenite::handshake::server::Request,
        resp: tokio_tungstenite::tungstenite::handshake::server::Response,
    ) -> Result<
        tokio_tungstenite::tungstenite::handshake::server::Response,
        tokio_tungstenite::tungstenite::handshake::server::ErrorResponse,
    > {
        *self.0 = req.uri().path().to_owned();
        Ok(resp)
    }
}

async fn program_connection(tcp: tokio::net::TcpStream, lab: Arc<Lab>, probe: Arc<Vec<Bytes>>) {
    let mut path = String::new();
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, PathOf(&mut path)).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    if path == "/probe" {
        // The channel comes with `start`; then one frame every 100 ms until the socket goes.
        let mut channel = None;
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Text(t) = m
                && let Ok(v) = serde_json::from_str::<Value>(&t)
                && v["event"] == "start"
            {
                channel = v["channel"].as_str().map(str::to_owned);
                break;
            }
        }
        let Some(channel) = channel else { return };
        let log = lab.probe(&channel);
        tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
        let media: Vec<String> = probe
            .iter()
            .map(|p| format!(r#"{{"event":"media","payload":"{}"}}"#, B64.encode(p)))
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for k in 0.. {
            tick.tick().await;
            let i = k % media.len();
            let at = Instant::now();
            if tx
                .send(Message::Text(media[i].clone().into()))
                .await
                .is_err()
            {
                return;
            }
            lock(&log.sent).push((at, i));
        }
        return;
    }
    // echo: per uid, its send log
    let mut uids: HashMap<String, SendLog> = HashMap::new();
    while let Some(Ok(m)) = rx.next().await {
        let Message::Text(t) = m else { continue };
        let now = Instant::now();
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        if v["event"] != "media" {
            continue;
        }
        let (Some(uid), Some(ts), Some(payload)) = (
            v["uid"].as_str(),
            v["timestamp_ms"].as_i64(),
            v["payload"].as_str(),
        ) else {
            continue;
        };
        let reply = format!(r#"{{"event":"media","payload":"{payload}"}}"#);
        if tx.send(Message::Text(reply.into())).await.is_err() {
            return;
        }
        let sends = uids
            .entry(uid.to_owned())
            .or_insert_with(|| lab.sends_of(uid));
        let sends = lock(sends);
        match usize::try_from(ts / 20).ok().and_then(|k| sends.get(k)) {
            Some(at) => {
                let ms = (now - *at).as_secs_f64() * 1000.0;
                lock(&lab.up).push((now, ms));
            }
            _ => {
                lab.unmatched.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What every call's tasks share.
struct Calls {
    http: reqwest::Client,
    api: String,
    transport: WebrtcTransport,
    lab: Arc<Lab>,
    /// The echo listeners' voice.
    frames: Arc<Vec<Bytes>>,
    /// The probe program's packets.
    probe_packets: Arc<Vec<Bytes>>,
}

/// One call: `call/robot` with the bridge, a listener joined on `/rtc` as the app.
async fn open_call(calls: Arc<Calls>, uid: String, probe: bool) -> Result<(), String> {
    let Calls {
        http,
        api,
        transport,
        lab,
        ..
    } = &*calls;
    let (lab, frames, probe_packets) = (
        Arc::clone(lab),
        Arc::clone(&calls.frames),
        Arc::clone(&calls.probe_packets),
    );
    let bridge = if probe { "probe" } else { "echo" };
    let v: Value = http
        .post(format!("{api}/dapi/call/robot"))
        .json(&json!({"src_uid": uid, "bridge": bridge}))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let d = &v["data"];
    let field = |k: &str| {
        d[k].as_str()
            .map(str::to_owned)
            .ok_or(format!("call/robot: {v}"))
    };
    let channel = field("channel")?;
    // the uid the agent names this listener by in `media`
    let uid = field("uid")?;
    let (mut sock, joined) = ChannelSocket::join(
        &rtc_url(api),
        None,
        &field("appID")?,
        &channel,
        &uid,
        &field("token")?,
    )
    .await
    .map_err(|e| e.to_string())?;
    let (events, mut events_rx) = mpsc::unbounded_channel::<ListenerEvent>();
    let (audio, mut audio_rx) = mpsc::unbounded_channel::<InboundAudio>();
    let peer: Arc<dyn Listener> = transport
        .listener(
            "robot",
            1,
            &joined.ice_servers,
            ListenerSinks { events, audio },
        )
        .await
        .map_err(|e| e.to_string())?;
    // What the robot sends: counted (echo) or timed (probe).
    let log = probe.then(|| lab.probe(&channel));
    let heard = Arc::clone(&lab);
    tokio::spawn(async move {
        while let Some(a) = audio_rx.recv().await {
            let at = Instant::now();
            match &log {
                Some(log) => {
                    if let Some(i) = probe_packets.iter().position(|p| *p == a.payload) {
                        lock(&log.arrived).push((at, i));
                    }
                }
                None => {
                    heard.heard.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    // Speaking: 50 packets a second from the moment the connection is up.
    let speaker = Arc::clone(&peer);
    let sends = (!probe).then(|| lab.sends_of(&uid));
    tokio::spawn(async move {
        match events_rx.recv().await.map(|e| e.state) {
            Some(ListenerState::Connected) => {}
            Some(ListenerState::Closed) | None => return,
        }
        let Some(sends) = sends else { return };
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for k in 0.. {
            tick.tick().await;
            // noted before the send: the program may read the `media` before it returns
            lock(&sends).push(Instant::now());
            if speaker
                .send_frame(frames[k % frames.len()].clone(), 0)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // Signaling, as the app.
    tokio::spawn(async move {
        let signal = |payload| ClientMessage::Signal {
            to: "robot".into(),
            payload,
        };
        if joined.peers.iter().any(|p| p == "robot")
            && let Ok(sdp) = peer.offer().await
        {
            let _ = sock
                .send(&signal(SignalPayload::Description(SessionDescription {
                    kind: SdpType::Offer,
                    sdp,
                })))
                .await;
        }
        while let Some(m) = sock.next().await {
            let ServerMessage::Signal { from, payload } = m else {
                continue;
            };
            if from != "robot" {
                continue;
            }
            match payload {
                SignalPayload::Description(SessionDescription {
                    kind: SdpType::Offer,
                    sdp,
                }) => {
                    if let Ok(a) = peer.answer(sdp).await {
                        let _ = sock
                            .send(&signal(SignalPayload::Description(SessionDescription {
                                kind: SdpType::Answer,
                                sdp: a,
                            })))
                            .await;
                    }
                }
                SignalPayload::Description(SessionDescription {
                    kind: SdpType::Answer,
                    sdp,
                }) => {
                    if let Ok(held) = peer.set_answer(sdp).await {
                        for c in held {
                            let _ = sock.send(&signal(SignalPayload::Candidate(Some(c)))).await;
                        }
                        let _ = sock.send(&signal(SignalPayload::Candidate(None))).await;
                    }
                }
                SignalPayload::Candidate(Some(c)) => {
                    let _ = peer.add_candidate(c).await;
                }
                SignalPayload::Candidate(None) => {}
            }
        }
        peer.close().await;
    });
    Ok(())
}

/// utime + stime of a process, in seconds (`/proc/PID/stat` fields 14 and 15).
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit(')').next().unwrap_or("");
    after_comm
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum::<f64>()
        / 100.0
}

/// From the agent's `/metrics`: frames sent, frames late (> 5 ms), and the lateness
/// histogram's cumulative counts in bucket order.
#[derive(Default)]
struct AgentFrames {
    frames: f64,
    late: f64,
    buckets: Vec<(String, f64)>,
}

async fn agent_frames(http: &reqwest::Client, url: &str) -> AgentFrames {
    let text = match http.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let mut f = AgentFrames::default();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        match name {
            "robot_frames_total" => f.frames = value,
            "robot_frames_late_total" => f.late = value,
            _ => {
                if let Some(le) = name
                    .strip_prefix("robot_frame_lateness_seconds_bucket{le=\"")
                    .and_then(|r| r.strip_suffix("\"}"))
                {
                    f.buckets.push((le.to_owned(), value));
                }
            }
        }
    }
    f
}

impl AgentFrames {
    /// The upper bound (ms) of the bucket holding the p99 of the frames since `before`.
    fn p99_bucket(&self, before: &Self) -> String {
        let count = |b: &[(String, f64)], i: usize| b.get(i).map(|x| x.1).unwrap_or(0.0);
        let total = count(&self.buckets, self.buckets.len().saturating_sub(1))
            - count(&before.buckets, before.buckets.len().saturating_sub(1));
        for (i, (le, c)) in self.buckets.iter().enumerate() {
            if total > 0.0 && c - count(&before.buckets, i) >= 0.99 * total {
                return match le.parse::<f64>() {
                    Ok(s) => format!("≤ {} ms", s * 1000.0),
                    Err(_) => "> 250 ms".into(),
                };
            }
        }
        "-".into()
    }
}

/// p50 and p99 of `x` (ms), and how many.
fn percentiles(mut x: Vec<f64>) -> String {
    if x.is_empty() {
        return "- (0)".into();
    }
    x.sort_by(f64::total_cmp);
    let at = |q: f64| x[((x.len() - 1) as f64 * q).round() as usize];
    format!("{:.2} / {:.2} ms ({})", at(0.5), at(0.99), x.len())
}

/// Program → listener latencies of the probe calls between `from` and `to`.
fn downlink(lab: &Lab, from: Instant, to: Instant) -> (Vec<f64>, u64) {
    let mut lat = Vec::new();
    let mut missed = 0;
    for log in lock(&lab.probes).values() {
        let sent = lock(&log.sent).clone();
        let arrived = lock(&log.arrived).clone();
        for (s, k) in sent.iter().filter(|(s, _)| *s >= from && *s < to) {
            // the first arrival of packet k after it was sent (the same packet comes
            // again 5 s later)
            let after = arrived.partition_point(|(a, _)| a < s);
            match arrived[after..].iter().find(|(_, i)| i == k) {
                Some((a, _)) if *a - *s < Duration::from_secs(2) => {
                    lat.push((*a - *s).as_secs_f64() * 1000.0);
                }
                _ => missed += 1,
            }
        }
    }
    (lat, missed)
}

/// 50 Opus packets (1 s) of a tone at `hz(k)` for packet k.
fn tone(hz: impl Fn(u32) -> f64) -> Vec<Bytes> {
    let Ok(mut enc) = audio::PcmEncoder::new(48_000, 32_000) else {
        return Vec::new();
    };
    (0..50)
        .filter_map(|k| {
            let pcm: Vec<i16> = (0..960)
                .map(|i| {
                    let t = f64::from(k * 960 + i) / 48_000.0;
                    (8000.0 * (2.0 * std::f64::consts::PI * hz(k) * t).sin()) as i16
                })
                .collect();
            enc.encode(&pcm).ok()
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let a = args();
    if a.api.is_empty() || a.agent_pid == 0 || a.program.port() == 0 {
        eprintln!(
            "usage: bridge_load --api URL --agent-pid PID --metrics URL --program-listen ADDR"
        );
        std::process::exit(2);
    }
    // the listeners' voice: 440 Hz; the probe's: 50 distinct packets, 300 Hz + 20 Hz * k
    let frames = Arc::new(tone(|_| 440.0));
    let probe_packets = Arc::new(tone(|k| 300.0 + 20.0 * f64::from(k)));
    let distinct: std::collections::HashSet<&Bytes> = probe_packets.iter().collect();
    if frames.len() != 50 || distinct.len() != 50 {
        eprintln!("bridge_load: the tones did not encode to 50 distinct packets");
        std::process::exit(1);
    }
    let lab = Arc::new(Lab::default());
    let server = match tokio::net::TcpListener::bind(a.program).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bridge_load: binding the program on {}: {e}", a.program);
            std::process::exit(1);
        }
    };
    tokio::spawn(program(
        server,
        Arc::clone(&lab),
        Arc::clone(&probe_packets),
    ));
    let http = reqwest::Client::new();
    let me = std::process::id();
    println!(
        "| echo calls | agent CPU, % of a core | per call | frames late > 5 ms | lateness p99 | RTP in → `media` at the program, p50 / p99 (n) | program `media` → RTP at the listener, empty queue, p50 / p99 (n) | echo heard / expected | this process's CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let calls = Arc::new(Calls {
        http: http.clone(),
        api: a.api.clone(),
        transport: WebrtcTransport::new(a.bind_ip).with_trickled_offer(false),
        lab: Arc::clone(&lab),
        frames: Arc::clone(&frames),
        probe_packets,
    });
    let open = |i: usize, probe: bool| {
        let uid = if probe {
            format!("probe{i}")
        } else {
            format!("echo{i}")
        };
        tokio::spawn(open_call(Arc::clone(&calls), uid, probe))
    };
    for i in 0..a.probes {
        if let Ok(Err(e)) = open(i, true).await {
            eprintln!("bridge_load: probe call {i}: {e}");
            std::process::exit(1);
        }
    }
    let mut calls = 0;
    for &n in &a.steps {
        while calls < n {
            let batch: Vec<_> = (calls..n.min(calls + 8)).map(|i| open(i, false)).collect();
            for t in batch {
                match t.await {
                    Ok(Ok(())) => calls += 1,
                    Ok(Err(e)) => {
                        eprintln!("bridge_load: a call failed to open: {e}");
                        std::process::exit(1);
                    }
                    Err(e) => {
                        eprintln!("bridge_load: {e}");
                        std::process::exit(1);
                    }
                }
            }
        }
        // Until every echo listener speaks and the echo comes back, then 2 s to settle.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let speaking = lock(&lab.sends)
                .values()
                .filter(|s| !lock(s).is_empty())
                .count();
            if speaking >= n || Instant::now() > deadline {
                if speaking < n {
                    eprintln!(
                        "{} of {n} echo listeners never connected within 60 s",
                        n - speaking
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let m0 = agent_frames(&http, &a.metrics).await;
        let (cpu0, own0) = (process_cpu(a.agent_pid), process_cpu(me));
        let heard0 = lab.heard.load(Ordering::Relaxed);
        let t0 = Instant::now();
        tokio::time::sleep(a.measure).await;
        let t1 = Instant::now();
        let m1 = agent_frames(&http, &a.metrics).await;
        let (cpu1, own1) = (process_cpu(a.agent_pid), process_cpu(me));
        let heard = lab.heard.load(Ordering::Relaxed) - heard0;
        let secs = (t1 - t0).as_secs_f64();
        let up: Vec<f64> = lock(&lab.up)
            .iter()
            .filter(|(at, _)| *at >= t0 && *at < t1)
            .map(|(_, ms)| *ms)
            .collect();
        let (down, missed) = downlink(&lab, t0, t1);
        let cpu = (cpu1 - cpu0) / secs * 100.0;
        let frames_sent = m1.frames - m0.frames;
        let late = m1.late - m0.late;
        let expected = n as f64 * 50.0 * secs;
        println!(
            "| {n} | {cpu:.0} % | {:.2} % | {late:.0} of {frames_sent:.0} ({:.2} %) | {} | {} | {}{} | {heard} / {expected:.0} ({:.1} %) | {:.0} % |",
            cpu / n as f64,
            if frames_sent > 0.0 {
                late / frames_sent * 100.0
            } else {
                0.0
            },
            m1.p99_bucket(&m0),
            percentiles(up),
            percentiles(down),
            if missed > 0 {
                format!(", {missed} not heard within 2 s")
            } else {
                String::new()
            },
            heard as f64 / expected * 100.0,
            (own1 - own0) / secs * 100.0,
        );
        let unmatched = lab.unmatched.swap(0, Ordering::Relaxed);
        if unmatched > 0 {
            eprintln!("{unmatched} media events matched no frame sent");
        }
    }
}
