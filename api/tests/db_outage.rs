//! PostgreSQL stops for 5 s and comes back, without restarting the API.
//!
//! While it is down, `/dapi` answers 503 with the JSON error body (`unavailable`) and a
//! `Retry-After` header, `/readyz` says not ready, `/healthz` still answers and an agent's
//! link stays up (a message that cannot be applied gets `error unavailable`); once it is
//! back, requests succeed again by themselves and the dispatcher's `LISTEN` is
//! re-established, so a robot queued through one instance reaches an agent connected to the
//! other without waiting for the (here 60 s) backstop poll.
//!
//! The shared PostgreSQL of the other tests is left alone: this test runs a private server
//! (`initdb`, `pg_ctl` from `/usr/lib/postgresql/*/bin`, as the `postgres` OS user when run
//! as root) on a Unix socket in its own directory, and skips with a message when those binaries are missing.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use api::clock::Clock;
use common::agent_ws::{agent, expect, send, session_state};
use common::{TestApp, spawn_app_on};
use serde_json::{Value, json};

/// A PostgreSQL server of this test only, stopped and removed on drop.
struct PrivatePg {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePg {
    /// The newest `/usr/lib/postgresql/*/bin` with initdb and pg_ctl, if any.
    fn binaries() -> Option<PathBuf> {
        std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
            .max()
    }

    /// Starts a fresh cluster with the binaries in `bin`; `Err` says what failed.
    fn start(bin: PathBuf) -> Result<Self, String> {
        // initdb refuses to run as root.
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let dir = std::env::temp_dir().join(format!(
            "dapi-pg-outage-{}-{:x}",
            std::process::id(),
            rand_u32()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        // Unix socket only (no TCP port to race other processes for); the port number only
        // names the socket file in this private directory.
        let port = 5432;
        let pg = Self {
            bin,
            dir,
            port,
            as_postgres,
        };
        if as_postgres {
            run(Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pg.dir))?;
        }
        pg.tool("initdb", |c| {
            c.arg("-D")
                .arg(pg.data())
                .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        })?;
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost/postgres?host={}&port={}",
            self.dir.display(),
            self.port
        )
    }

    /// Runs one of the server's binaries (as `postgres` when we are root).
    fn tool(&self, name: &str, args: impl FnOnce(&mut Command)) -> Result<(), String> {
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(name));
            c
        } else {
            Command::new(self.bin.join(name))
        };
        args(&mut c);
        run(&mut c)
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses= -c fsync=off",
            self.port,
            self.dir.display()
        );
        self.tool("pg_ctl", |c| {
            c.args(["start", "-w", "-D"])
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-o", &opts]);
        })
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), String> {
        self.tool("pg_ctl", |c| {
            c.args(["stop", "-w", "-m", mode, "-D"]).arg(self.data());
        })
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(c: &mut Command) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{c:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

fn log_tail(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("log")).unwrap_or_default()
}

/// POSTs `body` to `path` and returns status, `Retry-After` and the JSON body.
async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Option<String>, Value) {
    let r = app
        .http
        .post(format!("{}{path}", app.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
    (status, retry, v)
}

async fn get_status(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app
        .http
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A 503 with the JSON error body and `Retry-After`.
fn assert_unavailable(what: &str, (status, retry, v): &(u16, Option<String>, Value)) {
    assert_eq!(*status, 503, "{what} while the database is down: {v}");
    assert_eq!(v["success"], false, "{what}: {v}");
    assert_eq!(v["data"], Value::Null, "{what}: {v}");
    assert_eq!(v["error"]["code"], "unavailable", "{what}: {v}");
    assert!(v["error"]["message"].is_string(), "{what}: {v}");
    let secs: u64 = retry
        .as_deref()
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .parse()
        .unwrap();
    assert!(secs >= 1, "{what}: Retry-After {secs}");
}

#[tokio::test]
async fn a_five_second_database_outage_gives_503_and_heals_by_itself() {
    // Skipped only when the server's binaries are not installed; any other failure to
    // start the private server fails the test.
    let Some(bin) = PrivatePg::binaries() else {
        println!(
            "SKIPPED a_five_second_database_outage_gives_503_and_heals_by_itself: \
             no /usr/lib/postgresql/*/bin with initdb and pg_ctl"
        );
        return;
    };
    let pg = PrivatePg::start(bin).unwrap_or_else(|e| panic!("starting a private PostgreSQL: {e}"));
    let url = pg.url();
    let tweak = |c: &mut api::config::Config| c.dispatch.poll = Duration::from_millis(60_000);
    let a = spawn_app_on("postgres", &url, None, Clock::system(), tweak).await;
    let b = spawn_app_on("postgres", &url, None, Clock::system(), tweak).await;
    let mut on_b = agent(&b, "agent-on-b", 4).await;

    // Before: a call, and a robot running on the agent (lease just renewed).
    let call = a
        .ok("/dapi/call/user", json!({"src_uid": "1", "dst_uid": ["2"]}))
        .await;
    let ch = call["channel"].as_str().unwrap().to_owned();
    assert_eq!(get_status(&a, "/readyz").await.0, 200);
    let playing = a.ok("/dapi/call/robot", json!({"src_uid": "7"})).await;
    let offer = expect(&mut on_b, "offer", 5).await;
    assert_eq!(offer["session"]["channel"], playing["channel"]);
    let running = offer["session"]["id"].as_i64().unwrap();
    send(&mut on_b, json!({"type": "accept", "session_id": running})).await;
    send(
        &mut on_b,
        json!({"type": "renew", "session_ids": [running]}),
    )
    .await;
    wait_running(&a, running).await;

    // Down for 5 s (a fast shutdown: sessions are terminated, new connections refused).
    pg.pg_ctl_stop("fast").unwrap();
    let down_at = Instant::now();
    send(
        &mut on_b,
        json!({"type": "renew", "session_ids": [424_242]}),
    )
    .await;
    let (robot, msg, heartbeat, ready_a, ready_b, health, agent_error) = tokio::join!(
        post(&a, "/dapi/call/robot", json!({"src_uid": "3"})),
        post(&a, "/dapi/call/msg", json!({"uid": "2"})),
        post(
            &b,
            "/dapi/call/heartbeat",
            json!({"uid": "2", "channel": ch})
        ),
        get_status(&a, "/readyz"),
        get_status(&b, "/readyz"),
        get_status(&a, "/healthz"),
        expect(&mut on_b, "error", 10),
    );
    assert_unavailable("call/robot", &robot);
    assert_unavailable("call/msg", &msg);
    assert_unavailable("call/heartbeat", &heartbeat);
    for (name, ready) in [("A", ready_a), ("B", ready_b)] {
        assert_eq!(ready.0, 503, "readyz of {name} while down: {}", ready.1);
        assert_eq!(ready.1["status"], "not_ready");
    }
    assert_eq!(health.0, 200, "healthz: the process is up");
    // The agent link stays up; what cannot be applied is answered `unavailable` (retry).
    assert_eq!(agent_error["code"], "unavailable", "{agent_error}");
    let answered_in = down_at.elapsed();
    println!("the 503s and readyz answered within {answered_in:?} of the stop");
    // Not a speed check (the pool gives up after its 3 s acquire timeout): a bound that
    // only a hanging request would cross.
    assert!(
        answered_in < Duration::from_secs(30),
        "the 503s took {answered_in:?}: requests must fail, not hang"
    );
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(down_at.elapsed())).await;
    pg.pg_ctl_start()
        .unwrap_or_else(|e| panic!("{e}\n{}", log_tail(&pg.dir)));
    let up_at = Instant::now();
    println!("database down for {:?}", up_at - down_at);

    // Back: the same API serves again without a restart.
    let deadline = up_at + Duration::from_secs(15);
    loop {
        let (status, _, v) = post(&a, "/dapi/call/msg", json!({"uid": "2"})).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "only 503 while recovering: {v}");
        assert!(
            Instant::now() < deadline,
            "no recovery 15 s after the database returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "API A answered again {:?} after the database returned",
        up_at.elapsed()
    );
    let call = a
        .ok("/dapi/call/user", json!({"src_uid": "4", "dst_uid": ["5"]}))
        .await;
    b.ok(
        "/dapi/call/heartbeat",
        json!({"uid": "5", "channel": call["channel"]}),
    )
    .await;
    assert_eq!(get_status(&a, "/readyz").await.0, 200);
    assert_eq!(get_status(&b, "/readyz").await.0, 200);

    // The session that was running through the outage (shorter than its lease) is still
    // held by the same agent once it renews: not re-dispatched.
    send(
        &mut on_b,
        json!({"type": "renew", "session_ids": [running]}),
    )
    .await;
    let s = session_state(&a, running).await;
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["agent_id"], "agent-on-b", "{s}");
    assert_eq!(s["redispatches"], 0, "{s}");

    // The robot queued through A reaches the agent on B: B's listener re-subscribed after
    // the outage and looked at the queue (its backstop poll is 60 s).
    let robot = a.ok("/dapi/call/robot", json!({"src_uid": "6"})).await;
    let offer = expect(&mut on_b, "offer", 5).await;
    assert_eq!(offer["session"]["channel"], robot["channel"]);
    let id = offer["session"]["id"].as_i64().unwrap();
    send(&mut on_b, json!({"type": "accept", "session_id": id})).await;
    a.ok(
        "/dapi/quit/robot",
        json!({"channel": robot["channel"], "uid": "6"}),
    )
    .await;
    // (a leave for the session that ran through the outage would come first and fail this)
    assert_eq!(expect(&mut on_b, "leave", 5).await["session_id"], id);
}

/// Waits until the session is `running` (the accept is applied asynchronously).
async fn wait_running(app: &TestApp, id: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while session_state(app, id).await["state"] != "running" {
        assert!(
            Instant::now() < deadline,
            "session {id} not running after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
