//! Shared by the robot end-to-end tests: the real `api` binary with agent and admin keys,
//! real `robot-agent` processes (both from the test support library), admin calls, and the
//! aiortc listener script.

#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../rtc_support/mod.rs"]
pub mod rtc_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::{AgentProcess, ApiProcess};
use tokio::process::Command;

#[allow(unused_imports)]
pub use rtc_support::{
    INSTALL_HINT, Script, TempDir, node, positive, require_browser_deps, require_python, root,
    run_json,
};
#[allow(unused_imports)]
pub use test_support::{agent_bin, e2e_postgres};

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

/// The real `api` binary with agent and admin keys, SQLite in a temp dir (or PostgreSQL:
/// [`e2e_postgres`]), port 0.
pub struct RobotApi {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub http: reqwest::Client,
    process: ApiProcess,
}

impl RobotApi {
    /// Starts it (lease 10 s, dispatcher poll 200 ms) and waits for `listening on`.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// As [`start`](Self::start) with extra environment.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let mut builder = ApiProcess::builder()
            .temp_prefix("robot-e2e")
            .agent_key(AGENT_KEY)
            .admin_key(ADMIN_KEY)
            .env("DAPI_DISPATCH_POLL_MS", "200")
            .listen_timeout(Duration::from_secs(60));
        // Kept in the builder, so a restart finds the same database.
        if let Some(url) = e2e_postgres() {
            builder = builder.env("DATABASE_URL", &url);
        }
        let process = builder.envs(env).start().await;
        Self::from(process)
    }

    fn from(process: ApiProcess) -> Self {
        Self {
            base: process.base.clone(),
            http: reqwest::Client::new(),
            process,
        }
    }

    /// Stops the process and starts it again on the same port and database (a restart).
    pub async fn restart(self) -> Self {
        Self::from(self.process.restart().await)
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

    /// Kills the process and checks its log never carried SDP, candidates, tokens or the
    /// agent key.
    pub async fn stop(self) {
        self.process.stop().await;
    }
}

/// A real `robot-agent` process with [`AGENT_KEY`]; killed on drop. Everything but
/// [`start`](Self::start) is [`AgentProcess`]'s.
pub struct RobotAgent(AgentProcess);

impl RobotAgent {
    /// Starts an agent against `api` with `capacity`, binding 127.0.0.1, a fresh cache,
    /// and extra flags.
    pub async fn start(api: &RobotApi, id: &str, capacity: u32, extra: &[&str]) -> Self {
        Self(
            AgentProcess::builder(&api.base, AGENT_KEY)
                .id(id)
                .capacity(capacity)
                .args(extra)
                .start(),
        )
    }

    /// Kills it and checks its log never carried SDP, candidates, tokens or the key.
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

impl std::ops::Deref for RobotAgent {
    type Target = AgentProcess;
    fn deref(&self) -> &AgentProcess {
        &self.0
    }
}

impl std::ops::DerefMut for RobotAgent {
    fn deref_mut(&mut self) -> &mut AgentProcess {
        &mut self.0
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
