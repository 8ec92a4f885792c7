//! Shared by the robot end-to-end tests: the real `api` binary with agent and admin keys,
//! real `robot-agent` processes, admin calls, and the aiortc listener script.

#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../rtc_support/mod.rs"]
pub mod rtc_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[allow(unused_imports)]
pub use rtc_support::{
    INSTALL_HINT, Script, TempDir, node, positive, require_browser_deps, require_python, root,
    run_json,
};

pub const AGENT_KEY: &str = "e2e-agent-key";
pub const ADMIN_KEY: &str = "e2e-admin-key";

/// The speech fixture the tests upload and compare against.
pub fn fixture() -> PathBuf {
    let p = root().join("../shared/fixtures/audio/speech_16000_mono_4s.wav");
    if p.exists() {
        return p;
    }
    let alt = PathBuf::from("/work/shared/fixtures/audio/speech_16000_mono_4s.wav");
    assert!(
        alt.exists(),
        "the shared audio fixtures are missing ({})",
        p.display()
    );
    alt
}

/// Builds a binary of the workspace with cargo (so it is never stale) and returns its path;
/// `$env` overrides.
fn cargo_bin(package: &str, bin: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "-p",
            package,
            "--bin",
            bin,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running cargo build -p {package}: {e}"));
    assert!(out.status.success(), "cargo build -p {package} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == bin)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo build printed no {bin} executable"))
}

/// The `robot-agent` binary (`$ROBOT_AGENT_BIN` or built now).
pub fn agent_bin() -> PathBuf {
    cargo_bin("robot-agent", "robot-agent", "ROBOT_AGENT_BIN")
}

/// Lines a child wrote on stderr.
type Logs = Arc<Mutex<Vec<String>>>;

fn collect(stderr: tokio::process::ChildStderr, sink: Logs, echo: Option<String>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(prefix) = &echo {
                eprintln!("[{prefix}] {line}");
            }
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
}

/// Fails when a log line carries SDP, candidates or tokens.
pub fn assert_no_secrets(what: &str, logs: &[String]) {
    for line in logs {
        for secret in [
            "v=0",
            "a=candidate",
            "candidate:",
            "typ host",
            "\"token\"",
            "006970CA35de60c",
            AGENT_KEY,
        ] {
            assert!(!line.contains(secret), "{what} logged {secret:?}: {line}");
        }
    }
}

/// With `E2E_DATABASE_URL` set (a PostgreSQL server, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`): a fresh database on it for one API, made
/// with `psql`, as its `DATABASE_URL`. Unset: `None` (SQLite in the test's temp dir).
///
/// CI runs these slow end-to-end tests on SQLite only; the store logic under them runs on
/// both backends in the api crate's own tests. `E2E_DATABASE_URL` runs them on PostgreSQL.
pub fn e2e_postgres() -> Option<String> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let server = std::env::var("E2E_DATABASE_URL")
        .ok()
        .filter(|s| !s.is_empty())?;
    let name = format!(
        "dapi_e2e_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let out = std::process::Command::new("psql")
        .arg(&server)
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("DROP DATABASE IF EXISTS {name}"))
        .arg("-c")
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .unwrap_or_else(|e| panic!("E2E_DATABASE_URL is set but psql cannot run: {e}"));
    assert!(
        out.status.success(),
        "creating database {name} on {server}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (root, _) = server
        .split('?')
        .next()
        .and_then(|s| s.rsplit_once('/'))
        .expect("E2E_DATABASE_URL: postgres://user@host:port/db");
    Some(format!("{root}/{name}"))
}

/// The real `api` binary with agent and admin keys, SQLite in a temp dir (or PostgreSQL:
/// [`e2e_postgres`]), port 0.
pub struct RobotApi {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub http: reqwest::Client,
    child: Child,
    logs: Logs,
    dir: TempDir,
    env: Vec<(String, String)>,
}

impl RobotApi {
    /// Starts it (lease 10 s, dispatcher poll 200 ms) and waits for `listening on`.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// As [`start`](Self::start) with extra environment.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        // Kept in `env`, so a restart finds the same database.
        if let Some(url) = e2e_postgres() {
            env.insert(0, ("DATABASE_URL".into(), url));
        }
        Self::spawn(TempDir::new("robot-e2e"), env, "127.0.0.1:0").await
    }

    /// Stops the process and starts it again on the same port and database (a restart).
    pub async fn restart(mut self) -> Self {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
        let addr = self.base.trim_start_matches("http://").to_owned();
        let logs = self.logs.lock().map(|l| l.clone()).unwrap_or_default();
        assert_no_secrets("the api", &logs);
        let env = std::mem::take(&mut self.env);
        let dir = std::mem::replace(&mut self.dir, TempDir(PathBuf::new()));
        Self::spawn(dir, env, &addr).await
    }

    async fn spawn(dir: TempDir, env: Vec<(String, String)>, listen: &str) -> Self {
        let bin = rtc_support::api_bin();
        let mut cmd = Command::new(&bin);
        cmd.env("DAPI_LISTEN", listen)
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/api.db?mode=rwc", dir.0.display()),
            )
            .env("DAPI_APP_ID", "970CA35de60c44645bbae8a215061b33")
            .env("DAPI_APP_CERTIFICATE", "5CFd2fd1755d40ecb72977518be15d3b")
            .env("DAPI_AGENT_KEY", AGENT_KEY)
            .env("DAPI_ADMIN_KEY", ADMIN_KEY)
            .env("DAPI_DISPATCH_POLL_MS", "200")
            .env("DAPI_LOG_FORMAT", "json")
            .env("RUST_LOG", "debug")
            .env_remove("DAPI_ICE_SERVERS")
            .env_remove("DAPI_TURN_SECRET");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let logs: Logs = Arc::new(Mutex::new(Vec::new()));
        collect(
            child.stderr.take().expect("piped stderr"),
            logs.clone(),
            None,
        );
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return addr.trim().to_owned();
                }
            }
            panic!("api exited before listening");
        })
        .await
        .expect("api did not print `listening on` within 60 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            base,
            http: reqwest::Client::new(),
            child,
            logs,
            dir,
            env,
        }
    }

    /// POST /dapi/{path}; returns `data`, failing on `success: false`.
    pub async fn dapi(&self, path: &str, body: Value) -> Value {
        let v: Value = self
            .http
            .post(format!("{}/dapi/{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["success"], true, "{path}: {v}");
        v["data"].clone()
    }

    /// GET an admin endpoint; returns `data`.
    pub async fn admin(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json::<Value>().await.unwrap()["data"].clone()
    }

    /// Uploads `file` as asset `name`.
    pub async fn upload(&self, name: &str, file: &Path) {
        let body = std::fs::read(file).unwrap();
        let r = self
            .http
            .put(format!("{}/admin/audio/{name}", self.base))
            .bearer_auth(ADMIN_KEY)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "upload {name}: {}",
            r.text().await.unwrap()
        );
    }

    /// Waits until `n` agents are connected.
    pub async fn wait_agents(&self, n: usize) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let a = self.admin("/admin/agents").await;
            if a.as_array().map(Vec::len) == Some(n) {
                return a;
            }
            assert!(Instant::now() < deadline, "{n} agents did not connect: {a}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The robot sessions of `channel`.
    pub async fn sessions(&self, channel: &str) -> Value {
        self.admin(&format!("/admin/robot/sessions?channel={channel}"))
            .await
    }

    /// Waits until `check` holds for the first session of `channel`.
    pub async fn wait_session(
        &self,
        channel: &str,
        secs: u64,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.sessions(channel).await[0].clone();
            if check(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what} within {secs} s: {s:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The call timeline of `channel` (`GET /dapi/call/timeline`), as text.
    pub async fn timeline(&self, channel: &str) -> String {
        self.http
            .get(format!(
                "{}/dapi/call/timeline?channel={channel}",
                self.base
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Kills the process and checks its log never carried SDP, candidates or tokens.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let logs = self.logs.lock().map(|l| l.clone()).unwrap_or_default();
        assert!(!logs.is_empty(), "the api logged nothing");
        assert_no_secrets("the api", &logs);
    }
}

/// A real `robot-agent` process; killed on drop.
pub struct RobotAgent {
    pub id: String,
    child: Child,
    logs: Logs,
    _cache: TempDir,
}

impl RobotAgent {
    /// Starts an agent against `api` with `capacity`, binding 127.0.0.1, a fresh cache,
    /// and extra flags.
    pub async fn start(api: &RobotApi, id: &str, capacity: u32, extra: &[&str]) -> Self {
        let bin = agent_bin();
        let cache = TempDir::new(&format!("robot-cache-{id}"));
        let mut child = Command::new(&bin)
            .args(["--api-url", &api.base])
            .args(["--capacity", &capacity.to_string()])
            .args(["--agent-id", id])
            .args(["--bind-ip", "127.0.0.1"])
            .arg("--cache-dir")
            .arg(&cache.0)
            .args(extra)
            .env("DAPI_AGENT_KEY", AGENT_KEY)
            .env("ROBOT_LOG_FORMAT", "json")
            .env("RUST_LOG", "debug,webrtc=info,rtc=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let logs: Logs = Arc::new(Mutex::new(Vec::new()));
        let echo = std::env::var("ROBOT_E2E_ECHO").ok().map(|_| id.to_owned());
        collect(
            child.stderr.take().expect("piped stderr"),
            logs.clone(),
            echo,
        );
        Self {
            id: id.to_owned(),
            child,
            logs,
            _cache: cache,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("agent running")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the agent did not exit in time")
            .ok()
            .and_then(|s| s.code())
    }

    /// Log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Kills it and checks its log never carried SDP, candidates or tokens.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        assert_no_secrets(&format!("agent {}", self.id), &self.logs());
    }
}

/// `python tests/aiortc/robot_listener.py args...` from the venv.
pub fn listener(python: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(python);
    c.arg(root().join("tests/aiortc/robot_listener.py"))
        .args(args);
    c
}

/// A JSON body for `call/robot`.
pub fn robot_call(src: &str, audio: Option<&str>, looping: bool) -> Value {
    let mut v = json!({"src_uid": src, "loop": looping});
    if let Some(a) = audio {
        v["audio"] = json!(a);
    }
    v
}
