//! The database's own ceiling for the transactions behind `call/user`, `call/msg`,
//! `call/heartbeat` and `call/token`: the same `Store` calls issued by a plain loop
//! (no HTTP), with the same concurrency as the HTTP benchmark. The HTTP figures are
//! divided by these to give the API's overhead as a ratio.
//!
//! `call/msg-new` is `call/msg` when it writes: each operation reads a uid whose one recent
//! call was never fetched, so its row moves from 0 to 1 (the first fetch after a ring).
//!
//! `cargo run --release -p api --example store_ceiling -- DATABASE_URL [CONCURRENCY] [SECONDS] [OPS]`
//! `cargo run --release -p api --example store_ceiling -- seed DATABASE_URL PREFIX THREADS N`
//! (the HTTP benchmark's calls for `call/msg-new`: one call to each `PREFIX-t-i`, t in
//! 1..=THREADS, i in 1..=N, stored in bulk)

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use api::call_state::Input;
use api::domain::{ChannelName, Uid};
use api::store::{CallKind, InputMeta, NewCall, Store};
use api::token::{TokenIssuer, TokenVersion};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One call from `bench-caller` to each `{prefix}-{t}-{i}`, stored in bulk transactions.
async fn seed_fresh(store: &Store, prefix: &str, threads: u64, n: u64) -> anyhow::Result<()> {
    let caller = Uid::parse("bench-caller").map_err(anyhow::Error::msg)?;
    let mut batch = Vec::with_capacity(2000);
    for t in 1..=threads {
        for i in 1..=n {
            let callee = Uid::parse(&format!("{prefix}-{t}-{i}")).map_err(anyhow::Error::msg)?;
            batch.push(new_call(ChannelName::generate(), &caller, &callee));
            if batch.len() == 2000 {
                store.create_calls_bulk(&batch).await?;
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        store.create_calls_bulk(&batch).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("seed") {
        let url = args.get(2).context("seed DATABASE_URL PREFIX THREADS N")?;
        let prefix = args.get(3).context("PREFIX")?;
        let threads: u64 = args.get(4).context("THREADS")?.parse()?;
        let n: u64 = args.get(5).context("N")?.parse()?;
        let store = Store::connect(url).await?;
        seed_fresh(&store, prefix, threads, n).await?;
        println!("seeded {} calls to {prefix}-*", threads * n);
        return Ok(());
    }
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "sqlite:///tmp/ceiling.db?mode=rwc".into());
    let conc: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let store = Store::connect(&url).await?;
    let caller = Uid::parse("bench-caller").map_err(anyhow::Error::msg)?;
    let callee = Uid::parse("bench-callee").map_err(anyhow::Error::msg)?;
    // one channel for heartbeats and tokens
    let hb_channel = ChannelName::generate();
    store
        .create_call(&new_call(hb_channel.clone(), &caller, &callee))
        .await?;
    // call/msg reads a uid with 5 recent calls; call/user calls another callee.
    let msg_uid = Uid::parse("bench-msg").map_err(anyhow::Error::msg)?;
    for _ in 0..5 {
        store
            .create_call(&new_call(ChannelName::generate(), &caller, &msg_uid))
            .await?;
    }
    let user_callee = Uid::parse("bench-callee-u").map_err(anyhow::Error::msg)?;
    let issuer = TokenIssuer::new(
        "970CA35de60c44645bbae8a215061b33".into(),
        "5CFd2fd1755d40ecb72977518be15d3b".into(),
        TokenVersion::V006,
        600,
    );

    // Optional 4th argument: a comma-separated subset of the operations.
    let only: Option<Vec<String>> = args
        .get(4)
        .map(|s| s.split(',').map(str::to_owned).collect());
    for op in [
        "call/token",
        "call/user",
        "call/msg",
        "call/msg-new",
        "call/heartbeat",
    ] {
        if only.as_ref().is_some_and(|o| !o.iter().any(|x| x == op)) {
            continue;
        }
        // call/msg-new: enough never-fetched uids for the whole run (a few times what the
        // database commits in `secs`), seeded before the clock starts.
        let fresh = 4000 * secs;
        if op == "call/msg-new" {
            seed_fresh(&store, "fresh-c", 1, fresh).await?;
        }
        let next_fresh = Arc::new(AtomicU64::new(1));
        let count = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let (store, count, caller, callee, ch, issuer) = (
                store.clone(),
                count.clone(),
                caller.clone(),
                callee.clone(),
                hb_channel.clone(),
                issuer.clone(),
            );
            let (msg_uid, user_callee) = (msg_uid.clone(), user_callee.clone());
            let next_fresh = next_fresh.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let ok = match op {
                        "call/token" => match store.find_call(&ch).await {
                            Ok(Some(_)) => issuer
                                .mint(ch.as_str(), "bench-callee", (now_ms() / 1000) as u64)
                                .is_ok(),
                            _ => false,
                        },
                        "call/user" => store
                            .create_call(&new_call(ChannelName::generate(), &caller, &user_callee))
                            .await
                            .is_ok(),
                        "call/msg" => store
                            .recent_messages(&msg_uid, now_ms() - 60_000)
                            .await
                            .is_ok(),
                        "call/msg-new" => {
                            let i = next_fresh.fetch_add(1, Ordering::Relaxed);
                            if i > fresh {
                                break; // all fetched: the run is over
                            }
                            let uid = Uid::parse(&format!("fresh-c-1-{i}")).unwrap();
                            // Exactly one row, never fetched before: this read writes.
                            store
                                .recent_messages(&uid, now_ms() - 60_000)
                                .await
                                .is_ok_and(|rows| {
                                    rows.len() == 1
                                        && rows[0].status == api::domain::MsgStatus::Created
                                })
                        }
                        _ => {
                            let meta = InputMeta {
                                kind: "heartbeat",
                                source: "app",
                                detail: None,
                                now_ms: now_ms(),
                                heartbeat_deadline_ms: Some(now_ms() + 45_000),
                                always_record: false,
                            };
                            store
                                .apply_input(
                                    &ch,
                                    &Input::Seen {
                                        uid: callee.clone(),
                                    },
                                    &meta,
                                )
                                .await
                                .is_ok()
                        }
                    };
                    if ok {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let n = count.load(Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        println!("ceiling {op} {} ops/s", (n as f64 / elapsed) as u64);
    }
    Ok(())
}

fn new_call(channel: ChannelName, caller: &Uid, callee: &Uid) -> NewCall {
    let now = now_ms();
    NewCall {
        channel,
        caller: caller.clone(),
        callees: vec![callee.clone()],
        kind: CallKind::User,
        extra_msg: None,
        now_ms: now,
        ring_deadline_ms: Some(now + 60_000),
        caller_heartbeat_deadline_ms: now + 45_000,
        robot: None,
    }
}
