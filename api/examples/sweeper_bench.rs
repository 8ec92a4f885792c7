//! Sweeper cost with 100,000 open calls and 100,000 scheduled tasks (issue 7).
//!
//! Seeds the calls (ringing, deadlines spread over the next hour, each caller with a
//! heartbeat deadline) and the tasks (spread over the next hour), then measures with a
//! manual clock: (1) the idle sweep, nothing due, which is what every instance pays every
//! 500 ms; (2) a burst: the clock jumps so that 10% of the calls ring out and 10% of the
//! tasks fire, swept until nothing is due: rows handled per second.
//!
//! `cargo run --release -p api --example sweeper_bench -- DATABASE_URL [N]`

#![allow(clippy::unwrap_used)] // benchmark harness

use std::time::{Duration, Instant};

use api::clock::Clock;
use api::config::Config;
use api::domain::{ChannelName, Uid};
use api::store::{CallKind, NewCall, TaskFields};

const T0: i64 = 1_893_456_000_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "sqlite:///tmp/sweeper-bench.db?mode=rwc".into());
    let n: i64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let clock = Clock::manual(T0);
    let mut config = Config::for_tests(&url);
    config.calls.sweep_every = Duration::ZERO;
    config.calls.ring_timeout = Duration::from_secs(3600);
    config.calls.heartbeat_timeout = Duration::from_secs(7200);
    let app = api::Application::build_with_clock(config, clock.clone()).await?;
    let state = app.state().clone();
    let store = state.store();

    let seed = Instant::now();
    let batch = 5_000;
    for start in (0..n).step_by(batch) {
        let calls: Vec<NewCall> = (start..(start + batch as i64).min(n))
            .map(|i| NewCall {
                channel: ChannelName::generate(),
                caller: Uid::parse(&format!("caller{i}")).unwrap(),
                callees: vec![Uid::parse(&format!("callee{i}")).unwrap()],
                kind: CallKind::User,
                extra_msg: None,
                now_ms: T0,
                // spread over the next hour
                ring_deadline_ms: Some(T0 + 1 + i * 3_600_000 / n),
                caller_heartbeat_deadline_ms: T0 + 7_200_000,
                robot: None,
            })
            .collect();
        store.create_calls_bulk(&calls).await?;
        let tasks: Vec<TaskFields> = (start..(start + batch as i64).min(n))
            .map(|i| TaskFields {
                src_uid: Uid::parse(&format!("caller{i}")).unwrap(),
                dst_uid: vec![Uid::parse(&format!("callee{i}")).unwrap()],
                call_time: T0 / 1000 + 1 + i * 3600 / n,
                taskid: format!("t{i}"),
                tone_list: vec![],
            })
            .collect();
        store.insert_tasks_bulk(&tasks, T0).await?;
    }
    println!(
        "backend={} seeded {n} open calls and {n} pending tasks in {:.1} s",
        store.backend(),
        seed.elapsed().as_secs_f64()
    );

    // (1) idle sweeps: nothing due
    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        let r = api::sweeper::sweep_once(&state).await?;
        assert_eq!(r, Default::default());
    }
    let idle_ms = t.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
    println!("idle sweep (nothing due, {n} open calls + {n} tasks): {idle_ms:.2} ms per sweep");

    // (2) burst: 10% of calls ring out and 10% of tasks fire
    clock.advance_ms(360_000);
    let t = Instant::now();
    let (mut rang, mut fired, mut sweeps) = (0usize, 0usize, 0);
    loop {
        let r = api::sweeper::sweep_once(&state).await?;
        sweeps += 1;
        if r.rang_out.is_empty() && r.fired.is_empty() && r.missed.is_empty() {
            break;
        }
        rang += r.rang_out.len();
        fired += r.fired.len() + r.missed.len();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "burst: {rang} calls rang out + {fired} tasks fired or missed in {secs:.2} s over {sweeps} sweeps: {:.0} rows/s",
        (rang + fired) as f64 / secs
    );
    Ok(())
}
