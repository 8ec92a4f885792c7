//! Robot queue benchmark: sessions queued through `POST /dapi/call/robot` on a running API
//! and offered to agents that accept at once, beside the database's own fsync-bound
//! ceiling on the same database.
//!
//! ```text
//!  enqueuers (HTTP) ──► api: call + robot session, one transaction ──► dispatcher
//!                                                                        │ offer (WS /agent)
//!  agents (WS clients speaking docs/agent-protocol.md) ◄─────────────────┘ accept at once
//! ```
//!
//! Four rows per backend, printed as Markdown table rows:
//! 1. **ceiling**: a plain loop of single-row `INSERT` + `COMMIT` transactions on one
//!    connection, synchronous commit on (SQLite: WAL, `synchronous=FULL`, as the API);
//! 2. **latency**: one session at a time (the next is queued once the previous is offered):
//!    time from just before the `POST` to the `offer` reaching the agent, p50/p99;
//! 3. **paced**: `RATE` sessions a second for `SECONDS` (open loop): the same latency under a
//!    steady load;
//! 4. **saturation**: `CONCURRENCY` enqueuers as fast as they are answered for `SECONDS`,
//!    then until every queued session is offered: sessions offered (and accepted at once) per
//!    second; its latency is mostly time spent waiting in the queue.
//!
//! The API must run with `DAPI_AGENT_KEY=bench-agent-key`, a lease longer than the run
//! (`DAPI_LEASE_SECONDS=3600`: these agents never renew), a heartbeat timeout longer than
//! the run (the callers never heartbeat) and no rate limits; `scripts/bench-queue.sh`
//! starts it so.
//!
//! `queue_bench BASE_URL DATABASE_URL [SECONDS] [CONCURRENCY] [AGENTS] [LATENCY_SAMPLES] [RATE]`

#![allow(clippy::unwrap_used)] // benchmark harness: a panic is a failed run

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// When each channel's offer reached an agent.
type Offers = Arc<Mutex<HashMap<String, Instant>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(base), Some(db)) = (args.get(1), args.get(2)) else {
        anyhow::bail!(
            "usage: queue_bench BASE_URL DATABASE_URL [SECONDS] [CONCURRENCY] [AGENTS] [LATENCY_SAMPLES] [RATE]"
        );
    };
    let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let secs = arg(3, 10);
    let conc = arg(4, 16);
    let n_agents = arg(5, 4);
    let samples = arg(6, 200);
    let rate = arg(7, 200);
    let backend = if db.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };

    let ceiling = ceiling(db, Duration::from_secs(secs)).await?;
    println!(
        "| {backend} | ceiling: INSERT + COMMIT, 1 connection | {} | **{ceiling:.0}** /s | | | |",
        (ceiling * secs as f64) as u64
    );

    let offers: Offers = Arc::default();
    let leaves = Arc::new(AtomicU64::new(0));
    let mut agent_tasks = Vec::new();
    for i in 0..n_agents {
        let ws = register(base, &format!("bench-agent-{i}")).await?;
        agent_tasks.push(tokio::spawn(run_agent(ws, offers.clone(), leaves.clone())));
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conc.max(64) as usize)
        .build()?;

    // Warm-up (connections, caches), not measured.
    for _ in 0..5 {
        let ch = enqueue(&http, base).await?;
        wait_offered(&offers, &ch, Duration::from_secs(10)).await?;
    }

    // 1. One at a time, the queue otherwise empty.
    let mut lat = Vec::new();
    for _ in 0..samples {
        let t0 = Instant::now();
        let ch = enqueue(&http, base).await?;
        let at = wait_offered(&offers, &ch, Duration::from_secs(10)).await?;
        lat.push(at.saturating_duration_since(t0));
    }
    let (p50, p99, max) = percentiles(&mut lat);
    println!(
        "| {backend} | latency: 1 session at a time | {samples} | | {} | {} | {} |",
        ms(p50),
        ms(p99),
        ms(max)
    );

    // 2. Paced: RATE sessions a second for SECONDS, open loop (a slow answer does not
    //    delay the next session).
    let started: Started = Arc::default();
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut tasks = Vec::new();
    for _ in 0..rate * secs {
        every.tick().await;
        let (http, base, started, errors) =
            (http.clone(), base.clone(), started.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            match enqueue(&http, &base).await {
                Ok(ch) => started.lock().await.push((ch, t)),
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let paced_in = t0.elapsed();
    let (mut lat, _) = offered_after(&started, &offers, t0).await?;
    let (p50, p99, max) = percentiles(&mut lat);
    println!(
        "| {backend} | paced: {rate} sessions/s asked, {n_agents} agents | {} | {:.0} /s | {} | {} | {} |",
        lat.len(),
        lat.len() as f64 / paced_in.as_secs_f64(),
        ms(p50),
        ms(p99),
        ms(max)
    );

    // 3. Saturation: CONCURRENCY enqueuers as fast as they are answered for SECONDS; the
    //    rate is sessions over the time until the last of them was offered.
    let started: Started = Arc::default();
    let t0 = Instant::now();
    let stop = t0 + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (http, base, started, errors) =
            (http.clone(), base.clone(), started.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let t = Instant::now();
                match enqueue(&http, &base).await {
                    Ok(ch) => started.lock().await.push((ch, t)),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let enqueued_in = t0.elapsed();
    let (mut lat, last) = offered_after(&started, &offers, t0).await?;
    let total = last.duration_since(t0);
    let (p50, p99, max) = percentiles(&mut lat);
    println!(
        "| {backend} | saturation: {conc} enqueuers, {n_agents} agents | {} | **{:.0}** /s | {} | {} | {} |",
        lat.len(),
        lat.len() as f64 / total.as_secs_f64(),
        ms(p50),
        ms(p99),
        ms(max)
    );
    eprintln!(
        "{backend}: saturation: {} queued in {:.1} s ({:.0}/s over HTTP), the last offered {:.2} s after the start; \
         {} enqueue errors; {} accepts answered with leave",
        lat.len(),
        enqueued_in.as_secs_f64(),
        lat.len() as f64 / enqueued_in.as_secs_f64(),
        total.as_secs_f64(),
        errors.load(Ordering::Relaxed),
        leaves.load(Ordering::Relaxed),
    );
    for t in agent_tasks {
        t.abort();
    }
    Ok(())
}

/// Sessions queued in a phase: channel and when its `POST` was sent.
type Started = Arc<Mutex<Vec<(String, Instant)>>>;

/// Waits for every session of a phase to be offered: the enqueue-to-offer latencies and
/// when the last offer arrived.
async fn offered_after(
    started: &Started,
    offers: &Offers,
    t0: Instant,
) -> anyhow::Result<(Vec<Duration>, Instant)> {
    let started = std::mem::take(&mut *started.lock().await);
    let mut lat = Vec::with_capacity(started.len());
    let mut last = t0;
    for (ch, t) in &started {
        let at = wait_offered(offers, ch, Duration::from_secs(60)).await?;
        lat.push(at.saturating_duration_since(*t));
        last = last.max(at);
    }
    anyhow::ensure!(!lat.is_empty(), "nothing was queued");
    Ok((lat, last))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn percentiles(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.50), at(0.99), at(1.0))
}

/// `POST /dapi/call/robot`; the channel.
async fn enqueue(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let r = http
        .post(format!("{base}/dapi/call/robot"))
        .json(&json!({"src_uid": "bench-caller"}))
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    anyhow::ensure!(status.is_success(), "call/robot: {status} {v}");
    v["data"]["channel"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no channel in {v}"))
}

/// Waits until the offer for `channel` reached an agent; when it did.
async fn wait_offered(offers: &Offers, channel: &str, within: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(at) = offers.lock().await.get(channel) {
            return Ok(*at);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{channel} not offered within {within:?}"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `GET /agent` and registers with room for every session of the run.
async fn register(base: &str, id: &str) -> anyhow::Result<Ws> {
    let mut req = format!("{}/agent", base.replace("http://", "ws://")).into_client_request()?;
    req.headers_mut()
        .insert("authorization", "Bearer bench-agent-key".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let reg = json!({"type": "register", "agent_id": id, "capacity": 1_000_000, "version": "queue_bench"});
    ws.send(Message::Text(reg.to_string().into())).await?;
    while let Some(m) = ws.next().await {
        if let Message::Text(t) = m? {
            let v: Value = serde_json::from_str(&t)?;
            if v["type"] == "registered" {
                return Ok(ws);
            }
        }
    }
    anyhow::bail!("the API closed the agent link before registered")
}

/// Records each offer's arrival and accepts it at once.
async fn run_agent(mut ws: Ws, offers: Offers, leaves: Arc<AtomicU64>) {
    while let Some(Ok(m)) = ws.next().await {
        let Message::Text(t) = m else { continue };
        let now = Instant::now();
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        match v["type"].as_str() {
            Some("offer") => {
                let s = &v["session"];
                let accept = json!({"type": "accept", "session_id": s["id"]});
                if ws
                    .send(Message::Text(accept.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
                if let Some(ch) = s["channel"].as_str() {
                    offers.lock().await.insert(ch.to_owned(), now);
                }
            }
            Some("leave") => {
                leaves.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Single-row `INSERT` + `COMMIT` transactions on one connection for `dur`: commits/s.
async fn ceiling(url: &str, dur: Duration) -> anyhow::Result<f64> {
    // The same loop for either connection type.
    macro_rules! insert_loop {
        ($conn:expr, $insert:expr) => {{
            let t0 = Instant::now();
            let mut n = 0i64;
            while t0.elapsed() < dur {
                let mut tx = $conn.begin().await?;
                sqlx::query($insert).bind(n).execute(&mut *tx).await?;
                tx.commit().await?;
                n += 1;
            }
            Ok(n as f64 / t0.elapsed().as_secs_f64())
        }};
    }
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await?;
        sqlx::query("SET synchronous_commit = on")
            .execute(&mut c)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_ceiling (id BIGSERIAL PRIMARY KEY, v BIGINT NOT NULL)",
        )
        .execute(&mut c)
        .await?;
        insert_loop!(c, "INSERT INTO bench_ceiling (v) VALUES ($1)")
    } else {
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let mut c = sqlx::SqliteConnection::connect_with(&opts).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_ceiling (id INTEGER PRIMARY KEY, v BIGINT NOT NULL)",
        )
        .execute(&mut c)
        .await?;
        insert_loop!(c, "INSERT INTO bench_ceiling (v) VALUES (?1)")
    }
}
