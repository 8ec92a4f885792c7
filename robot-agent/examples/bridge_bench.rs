//! Media bridge costs in one process: N concurrent bridged sessions on the real session
//! driver, core, playback queue, media clock and bridge socket task, each with one
//! participant speaking 50 real Opus packets a second (a tone, encoded once), over a
//! transport that timestamps what it is given and what it writes, and an echo program
//! (a tokio-tungstenite server on 127.0.0.1) that sends every `media` straight back.
//!
//! ```text
//! cargo run --release --features test-util --example bridge_bench -- \
//!     --sessions 50,100,200 --secs 20 [--format pcm16 --rate 16000 | --format opus] [--clears 1000]
//! ```
//!
//! For each N it prints, after a second to settle: the participant's packet handed to the
//! agent -> the `media` event read by the program (p50/p99, every packet of every call),
//! the program's `media` sent -> the frame written to the listener's track with an empty
//! queue (p50/p99: one more session whose program sends one frame every 100 ms beside the
//! N calls), the pacer's send lateness p99 (from the agent's histogram: the bucket it falls
//! in), and the agent's CPU per call in % of one core (the process's CPU less the thread
//! running the program and the participants).
//! With `--clears K`, one more session measures `clear`: K rounds of 10 frames sent, a
//! `clear` 30-90 ms later, and the frames written to the listener after the program sent
//! the clear (an upper bound on what was written after it arrived), in ms.
//!
//! What it leaves out: SRTP, UDP and the webrtc crate on both sides (the same for every
//! robot; `bridge_load.rs` runs the real agent process and WebRTC listeners), and the program's
//! WebSocket is on loopback in the same process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use protocol::agent::{BridgeFormat, BridgeTarget, SessionOffer};
use protocol::signaling::{IceCandidate, IceServer};
use robot_agent::metrics::{LATENESS_BUCKETS, Metrics};
use robot_agent::rtc::{
    InboundAudio, Listener, ListenerEvent, ListenerSinks, ListenerState, RtcError, RtcTransport,
};
use robot_agent::session::{self, SessionConfig, SessionContext};
use robot_agent::test_util::{FakeSignaling, JoinScript, TestAudio, TestRecordings};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Left out of the figures: the first frames and connections.
const WARM_UP: Duration = Duration::from_secs(1);

/// What a bench listener saw: the instants its frames were written.
#[derive(Default)]
struct Writes {
    at: Mutex<Vec<Instant>>,
}

struct BenchListener {
    audio: mpsc::UnboundedSender<InboundAudio>,
    peer: String,
    generation: u64,
    writes: Arc<Writes>,
}

#[async_trait]
impl Listener for BenchListener {
    async fn offer(&self) -> Result<String, RtcError> {
        Ok("offer".into())
    }
    async fn answer(&self, _: String) -> Result<String, RtcError> {
        Ok("answer".into())
    }
    async fn set_answer(&self, _: String) -> Result<Vec<IceCandidate>, RtcError> {
        Ok(Vec::new())
    }
    async fn add_candidate(&self, _: IceCandidate) -> Result<(), RtcError> {
        Ok(())
    }
    async fn send_frame(&self, _frame: Bytes, _skipped: u16) -> Result<(), RtcError> {
        let now = Instant::now();
        if let Ok(mut w) = self.writes.at.lock() {
            w.push(now);
        }
        Ok(())
    }
    async fn close(&self) {}
}

/// Makes bench listeners, connected at once; hands each to the bench.
struct BenchTransport {
    made: mpsc::UnboundedSender<Arc<BenchListener>>,
}

#[async_trait]
impl RtcTransport for BenchTransport {
    async fn listener(
        &self,
        peer: &str,
        generation: u64,
        _: &[IceServer],
        sinks: ListenerSinks,
    ) -> Result<Arc<dyn Listener>, RtcError> {
        let l = Arc::new(BenchListener {
            audio: sinks.audio,
            peer: peer.to_owned(),
            generation,
            writes: Arc::new(Writes::default()),
        });
        let _ = sinks.events.send(ListenerEvent {
            peer: peer.to_owned(),
            generation,
            state: ListenerState::Connected,
        });
        let _ = self.made.send(Arc::clone(&l));
        Ok(l)
    }
}

/// Per session: when each participant packet was handed over (by seq), when the program
/// read each media (by seq); the clear and probe sessions' own records.
#[derive(Default)]
struct Times {
    sent: Mutex<Vec<Instant>>,
    heard: Mutex<Vec<(u64, Instant)>>,
    /// The clear session: this many rounds, and the frame to speak.
    clear_rounds: usize,
    frame: String,
    /// Its listener's writes, once it exists.
    writes: Mutex<Option<Arc<Writes>>>,
    /// Per round: ms of audio written after the program sent `clear`.
    leaks: Mutex<Vec<u64>>,
    /// The probe session: the program sends one frame every 100 ms (to an empty queue).
    probe: bool,
    probes: Mutex<Vec<Instant>>,
}

/// The probe session's program: one frame every 100 ms until the bench ends.
async fn probe_frames(tx: Sink, t: Arc<Times>) {
    let media = format!(r#"{{"event":"media","payload":"{}"}}"#, t.frame);
    tokio::time::sleep(Duration::from_millis(300)).await;
    loop {
        if let Ok(mut p) = t.probes.lock() {
            p.push(Instant::now());
        }
        if tx
            .lock()
            .await
            .send(Message::Text(media.clone().into()))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Sink = Arc<
    tokio::sync::Mutex<
        futures_util::stream::SplitSink<
            tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
            Message,
        >,
    >,
>;

/// The clear session's program: `rounds` times 10 frames, a `clear` 30-90 ms later, the
/// `cleared` answer, and the frames written after the clear was sent.
async fn clear_rounds(tx: Sink, t: Arc<Times>, mut cleared: mpsc::UnboundedReceiver<()>) {
    let writes = loop {
        if let Some(w) = t.writes.lock().ok().and_then(|w| w.clone()) {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let media = format!(r#"{{"event":"media","payload":"{}"}}"#, t.frame);
    for r in 0..t.clear_rounds {
        {
            let mut tx = tx.lock().await;
            for _ in 0..10 {
                if tx.send(Message::Text(media.clone().into())).await.is_err() {
                    return;
                }
            }
        }
        // 30-90 ms: a spread of positions within the 200 ms queued
        tokio::time::sleep(Duration::from_millis(30 + (r as u64 * 37) % 61)).await;
        let sent = Instant::now();
        if tx
            .lock()
            .await
            .send(Message::Text(r#"{"event":"clear"}"#.into()))
            .await
            .is_err()
        {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(2), cleared.recv()).await {
            Ok(Some(())) => {}
            Ok(None) => return,
            Err(_) => {
                eprintln!("bridge_bench: round {r}: no `cleared` within 2 s");
                continue;
            }
        }
        // a frame being written when the clear came lands within a frame
        tokio::time::sleep(Duration::from_millis(40)).await;
        let after = writes
            .at
            .lock()
            .map(|w| w.iter().filter(|at| **at > sent).count())
            .unwrap_or(0);
        if let Ok(mut l) = t.leaks.lock() {
            l.push(u64::try_from(after).unwrap_or(0) * 20);
        }
        if std::env::var_os("BRIDGE_BENCH_DEBUG").is_some() {
            eprintln!("round {r} done");
        }
    }
}

fn thread_cpu_seconds() -> f64 {
    cpu_of("/proc/thread-self/stat")
}

fn process_cpu_seconds() -> f64 {
    cpu_of("/proc/self/stat")
}

fn cpu_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p / 100.0).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The program: every `media` goes straight back (the clear session instead runs
/// [`clear_rounds`]); the session is found by `start`.
async fn program(listener: tokio::net::TcpListener, times: Arc<Mutex<HashMap<i64, Arc<Times>>>>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let times = Arc::clone(&times);
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            let (tx, mut rx) = ws.split();
            let tx: Sink = Arc::new(tokio::sync::Mutex::new(tx));
            let (cleared_tx, cleared_rx) = mpsc::unbounded_channel();
            let mut cleared_rx = Some(cleared_rx);
            let mut mine: Option<Arc<Times>> = None;
            while let Some(Ok(Message::Text(t))) = rx.next().await {
                let now = Instant::now();
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                    continue;
                };
                match v["event"].as_str() {
                    Some("start") => {
                        let id = v["session"].as_i64().unwrap_or(-1);
                        mine = times.lock().ok().and_then(|m| m.get(&id).cloned());
                        if let Some(m) = &mine
                            && m.clear_rounds > 0
                            && let Some(rx) = cleared_rx.take()
                        {
                            tokio::spawn(clear_rounds(Arc::clone(&tx), Arc::clone(m), rx));
                        }
                        if let Some(m) = &mine
                            && m.probe
                        {
                            tokio::spawn(probe_frames(Arc::clone(&tx), Arc::clone(m)));
                        }
                    }
                    Some("cleared") => {
                        let _ = cleared_tx.send(());
                    }
                    Some("media") => {
                        let Some(m) = &mine else { continue };
                        if let Ok(mut h) = m.heard.lock() {
                            h.push((v["seq"].as_u64().unwrap_or(0), now));
                        }
                        let echo = format!(
                            r#"{{"event":"media","payload":"{}"}}"#,
                            v["payload"].as_str().unwrap_or_default()
                        );
                        if tx
                            .lock()
                            .await
                            .send(Message::Text(echo.into()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    _ => {}
                }
            }
        });
    }
}

struct Config {
    sessions: Vec<usize>,
    secs: u64,
    format: BridgeFormat,
    rate: u32,
    clears: usize,
}

fn args() -> Config {
    let mut c = Config {
        sessions: vec![50, 100, 200],
        secs: 20,
        format: BridgeFormat::Pcm16,
        rate: 16_000,
        clears: 0,
    };
    let a: Vec<String> = std::env::args().skip(1).collect();
    for w in a.chunks(2) {
        let v = w.get(1).map(String::as_str).unwrap_or_default();
        match w[0].as_str() {
            "--sessions" => c.sessions = v.split(',').filter_map(|n| n.parse().ok()).collect(),
            "--secs" => c.secs = v.parse().unwrap_or(20),
            "--format" if v == "opus" => {
                c.format = BridgeFormat::Opus;
                c.rate = 48_000;
            }
            "--format" => c.format = BridgeFormat::Pcm16,
            "--rate" => c.rate = v.parse().unwrap_or(16_000),
            "--clears" => c.clears = v.parse().unwrap_or(0),
            other => eprintln!("bridge_bench: ignored {other}"),
        }
    }
    c
}

/// 50 packets of a 440 Hz tone, encoded once and sent in a loop (none if the encoder
/// cannot be made).
fn packets() -> Vec<Bytes> {
    robot_agent::test_util::tone_packets(50).unwrap_or_default()
}

/// The lateness histogram's cumulative buckets (upper bound in s, count), `+Inf` last.
fn lateness_buckets(m: &Metrics) -> Vec<(f64, f64)> {
    m.render()
        .lines()
        .filter_map(|line| line.strip_prefix("robot_frame_lateness_seconds_bucket{le=\""))
        .map(|rest| {
            let mut it = rest.split("\"} ");
            let le = it.next().unwrap_or_default();
            let n: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            (le.parse().unwrap_or(f64::INFINITY), n)
        })
        .collect()
}

/// The bucket holding the 99th percentile of the frames sent between two snapshots.
fn lateness_p99(before: &[(f64, f64)], after: &[(f64, f64)]) -> String {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .zip(before.iter())
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    let total = diff.last().map_or(0.0, |(_, n)| *n);
    for (le, n) in &diff {
        if total > 0.0 && n / total >= 0.99 {
            return if le.is_finite() {
                format!("<= {} ms", le * 1000.0)
            } else {
                format!(
                    "> {} ms",
                    LATENESS_BUCKETS[LATENESS_BUCKETS.len() - 1] * 1000.0
                )
            };
        }
    }
    "no frames".into()
}

#[allow(clippy::too_many_lines)]
async fn run(n: usize, cfg: &Config, clear_rounds: usize) {
    let all_times: Arc<Mutex<HashMap<i64, Arc<Times>>>> = Arc::default();
    // the program and the participants: a thread of their own, so their CPU is apart
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    tcp.set_nonblocking(true).expect("nonblocking");
    let url = format!("ws://{}/", tcp.local_addr().expect("addr"));
    let (peer_jobs, mut peer_rx) = mpsc::unbounded_channel::<(Arc<BenchListener>, Arc<Times>)>();
    let stop = Arc::new(AtomicU64::new(0));
    let peer_cpu = Arc::new(Mutex::new(0.0f64));
    let (pt, st, pc) = (
        Arc::clone(&all_times),
        Arc::clone(&stop),
        Arc::clone(&peer_cpu),
    );
    let pk = packets();
    let secs = cfg.secs;
    let peers = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(tcp).expect("listener");
            tokio::spawn(program(l, pt));
            let cpu0 = thread_cpu_seconds();
            let mut tasks = Vec::new();
            while let Some((l, t)) = peer_rx.recv().await {
                let pk = pk.clone();
                let st = Arc::clone(&st);
                tasks.push(tokio::spawn(async move {
                    // 50 packets a second on absolute deadlines, for `secs`
                    let start = tokio::time::Instant::now();
                    let mut k: u32 = 0;
                    while st.load(Ordering::Relaxed) == 0 && u64::from(k) < secs * 50 {
                        tokio::time::sleep_until(start + Duration::from_millis(20 * u64::from(k)))
                            .await;
                        if let Ok(mut s) = t.sent.lock() {
                            s.push(Instant::now());
                        }
                        let _ = l.audio.send(InboundAudio {
                            peer: Arc::from(l.peer.as_str()),
                            generation: l.generation,
                            sequence: u16::try_from(k % 65_536).unwrap_or(0),
                            timestamp: k.wrapping_mul(960),
                            payload: pk[k as usize % pk.len()].clone(),
                        });
                        k += 1;
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            if let Ok(mut c) = pc.lock() {
                *c = thread_cpu_seconds() - cpu0;
            }
        });
    });

    let (signaling, mut channels) = FakeSignaling::new();
    let (made, mut made_rx) = mpsc::unbounded_channel();
    let metrics = Arc::new(Metrics::new(u32::try_from(n + 1).unwrap_or(u32::MAX)));
    let ctx = Arc::new(SessionContext {
        config: SessionConfig {
            leave_grace: Duration::from_secs(600),
            tail: Duration::from_secs(1),
            position_every: Duration::from_secs(2),
            rejoin_for: Duration::from_secs(30),
        },
        signaling: signaling.clone(),
        audio: TestAudio::new(),
        transport: Arc::new(BenchTransport { made }),
        metrics: Arc::clone(&metrics),
        media_clock: session::media_clock().expect("media clock"),
        recordings: TestRecordings::new(),
        recording_dir: std::env::temp_dir(),
        bridge_tls: robot_agent::bridge::BridgeTls::system(),
    });
    // the echo calls, then the clear session or (with calls) the probe session
    let total = n + 1;
    let clear_frame = match cfg.format {
        BridgeFormat::Pcm16 => {
            B64.encode(vec![0u8; usize::try_from(cfg.rate / 50 * 2).unwrap_or(640)])
        }
        BridgeFormat::Opus => B64.encode(packets().first().cloned().unwrap_or_default()),
    };
    let mut controls = Vec::new();
    let mut chans = Vec::new();
    let mut lists = Vec::new();
    for i in 0..total {
        let id = i64::try_from(i).unwrap_or(0);
        let extra = i == n;
        let times = Arc::new(Times {
            clear_rounds: if extra { clear_rounds } else { 0 },
            probe: extra && clear_rounds == 0,
            frame: clear_frame.clone(),
            ..Times::default()
        });
        if let Ok(mut m) = all_times.lock() {
            m.insert(id, Arc::clone(&times));
        }
        signaling.script(JoinScript::Accept(vec!["app".into()]));
        let offer = SessionOffer {
            id,
            channel: format!("c{i}"),
            uid: "robot".into(),
            token: "t".into(),
            app_id: "a".into(),
            audio: String::new(),
            loop_audio: false,
            playlist: Vec::new(),
            position_ms: 0,
            attempt: 1,
            items: Vec::new(),
            record: None,
            bridge: Some(BridgeTarget {
                name: "echo".into(),
                url: url.clone(),
                secret: "s".into(),
                format: cfg.format,
                rate: cfg.rate,
            }),
            call: None,
        };
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (up, mut up_rx) = mpsc::unbounded_channel();
        tokio::spawn(session::run(Arc::clone(&ctx), offer, ctl_rx, up));
        tokio::spawn(async move { while up_rx.recv().await.is_some() {} });
        controls.push(ctl);
        chans.push(channels.recv().await.expect("joined"));
        let l: Arc<BenchListener> = made_rx.recv().await.expect("listener");
        if let Ok(mut w) = times.writes.lock() {
            *w = Some(Arc::clone(&l.writes));
        }
        lists.push((Arc::clone(&l), Arc::clone(&times)));
        if i < n {
            let _ = peer_jobs.send((l, times));
        }
    }
    // one second to settle (the first frames, connections); measured from then on
    tokio::time::sleep(WARM_UP).await;
    let warm = Instant::now();
    let buckets_before = lateness_buckets(&metrics);
    let cpu0 = process_cpu_seconds();
    if n > 0 {
        tokio::time::sleep(Duration::from_secs(cfg.secs)).await;
    }
    let cpu = process_cpu_seconds() - cpu0;
    let wall = warm.elapsed();
    let buckets_after = lateness_buckets(&metrics);
    if clear_rounds > 0 {
        // the program runs on the participants' thread: keep it until the rounds are done
        let t = &lists[n].1;
        while t.leaks.lock().map(|l| l.len()).unwrap_or(0) < clear_rounds {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.store(1, Ordering::Relaxed);
    drop(peer_jobs);
    let _ = peers.join();
    let leaks: Vec<u64> = if clear_rounds > 0 {
        lists[n]
            .1
            .leaks
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let peer = peer_cpu.lock().map(|c| *c).unwrap_or(0.0);

    let (mut up, mut down) = (Vec::new(), Vec::new());
    for (_, t) in lists.iter().take(n) {
        let sent = t.sent.lock().map(|s| s.clone()).unwrap_or_default();
        for (seq, at) in t.heard.lock().map(|h| h.clone()).unwrap_or_default() {
            if let Some(s) = usize::try_from(seq).ok().and_then(|i| sent.get(i))
                && *s >= warm
            {
                up.push(at.duration_since(*s).as_secs_f64() * 1000.0);
            }
        }
    }
    // the probe: each frame sent to an empty queue, and the first write after it
    let (pl, pt) = &lists[n];
    let writes = pl.writes.at.lock().map(|w| w.clone()).unwrap_or_default();
    for p in pt.probes.lock().map(|p| p.clone()).unwrap_or_default() {
        if p < warm {
            continue;
        }
        if let Some(w) = writes.iter().find(|w| **w >= p)
            && w.duration_since(p) < Duration::from_millis(100)
        {
            down.push(w.duration_since(p).as_secs_f64() * 1000.0);
        }
    }
    if n > 0 {
        println!(
            "| {n} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {} | {:.1} % |",
            up.len(),
            pct(&mut up, 50.0),
            pct(&mut up, 99.0),
            down.len(),
            pct(&mut down, 50.0),
            pct(&mut down, 99.0),
            lateness_p99(&buckets_before, &buckets_after),
            (cpu - peer) / wall.as_secs_f64() / n as f64 * 100.0,
        );
    }
    if !leaks.is_empty() {
        let mut l: Vec<f64> = leaks.iter().map(|v| *v as f64).collect();
        println!(
            "clear: {} rounds, audio written after the program sent `clear`: p50 {} ms, p99 {} ms, max {} ms",
            l.len(),
            pct(&mut l, 50.0),
            pct(&mut l, 99.0),
            l.iter().copied().fold(0.0, f64::max)
        );
    }
    for c in controls {
        let _ = c.send(session::Control::Leave);
    }
    drop(chans);
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cfg = args();
    println!(
        "| calls | media events | RTP in -> program p50 ms | p99 ms | probe frames | program -> written (empty queue) p50 ms | p99 ms | send lateness p99 | agent CPU per call |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    if cfg.clears > 0 {
        run(0, &cfg, cfg.clears).await;
    }
    for n in cfg.sessions.clone() {
        run(n, &cfg, 0).await;
    }
}
