//! The `api` and `robot-agent` binaries as child processes: [`ApiProcess`] and
//! [`AgentProcess`], each started from a builder, killed on drop, their stderr collected
//! so that [`stop`](ApiProcess::stop) can check it for secrets.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::bins::{agent_bin, api_bin};
use crate::secrets::assert_no_secrets;
use crate::tempdir::TempDir;
use crate::{APP_CERTIFICATE, APP_ID};

/// The stderr lines of a child, collected as they come.
#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Reads `stderr` into these logs until it closes (the task ends then); echoes each
    /// line prefixed with `echo` when given.
    fn collect(
        &self,
        stderr: tokio::process::ChildStderr,
        echo: Option<String>,
    ) -> tokio::task::JoinHandle<()> {
        let sink = self.0.clone();
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
        })
    }
}

/// How to start an [`ApiProcess`]: the binary on port 0 (`DAPI_LISTEN`), SQLite in a
/// fresh [`TempDir`], the test App ID and certificate, JSON logs at debug level, no ICE
/// servers from the environment; then whatever [`env`](Self::env) adds or overrides.
#[derive(Debug, Clone)]
pub struct ApiBuilder {
    bin: Option<PathBuf>,
    args: Vec<String>,
    credentials: bool,
    env: Vec<(String, String)>,
    keys: Vec<String>,
    prefix: String,
    listen_timeout: Duration,
}

impl Default for ApiBuilder {
    fn default() -> Self {
        Self {
            bin: None,
            args: Vec::new(),
            credentials: true,
            env: Vec::new(),
            keys: Vec::new(),
            prefix: "api-e2e".into(),
            listen_timeout: Duration::from_secs(30),
        }
    }
}

impl ApiBuilder {
    /// Another binary than [`api_bin`].
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = Some(bin.into());
        self
    }

    /// Command-line flags (a flag wins over its environment variable).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// No `DAPI_APP_ID` / `DAPI_APP_CERTIFICATE`: the API generates a development pair.
    pub fn without_credentials(mut self) -> Self {
        self.credentials = false;
        self
    }

    /// Sets an environment variable (after the defaults, so it overrides them).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets several environment variables.
    pub fn envs(self, env: &[(&str, &str)]) -> Self {
        env.iter().fold(self, |b, (k, v)| b.env(k, v))
    }

    /// `DAPI_AGENT_KEY`, also checked absent from the logs.
    pub fn agent_key(mut self, key: &str) -> Self {
        self.keys.push(key.to_owned());
        self.env("DAPI_AGENT_KEY", key)
    }

    /// `DAPI_ADMIN_KEY`.
    pub fn admin_key(self, key: &str) -> Self {
        self.env("DAPI_ADMIN_KEY", key)
    }

    /// The prefix of the temp dir that holds the database (it names the test in /tmp).
    pub fn temp_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// How long to wait for `listening on` (30 s by default).
    pub fn listen_timeout(mut self, limit: Duration) -> Self {
        self.listen_timeout = limit;
        self
    }

    /// Starts the process and waits until it prints `listening on http://ADDR`.
    ///
    /// # Panics
    /// When it cannot be started or does not listen in time.
    pub async fn start(self) -> ApiProcess {
        let dir = TempDir::new(&self.prefix);
        ApiProcess::spawn(self, dir, "127.0.0.1:0").await
    }
}

/// A running `api` process; killed on drop.
#[derive(Debug)]
pub struct ApiProcess {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    child: Child,
    logs: Logs,
    /// The task reading stderr into `logs`.
    stderr: tokio::task::JoinHandle<()>,
    /// What it printed on stdout before `listening on`.
    stdout_before: Vec<String>,
    /// `None` only while [`restart`](Self::restart) hands it to the next process.
    dir: Option<TempDir>,
    builder: ApiBuilder,
}

impl ApiProcess {
    /// A builder with the defaults of [`ApiBuilder`].
    pub fn builder() -> ApiBuilder {
        ApiBuilder::default()
    }

    /// Starts one with the defaults.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    async fn spawn(builder: ApiBuilder, dir: TempDir, listen: &str) -> Self {
        let bin = builder.bin.clone().unwrap_or_else(api_bin);
        let mut cmd = Command::new(&bin);
        cmd.args(&builder.args)
            .env("DAPI_LISTEN", listen)
            .env("DATABASE_URL", dir.sqlite_url("api.db"));
        if builder.credentials {
            cmd.env("DAPI_APP_ID", APP_ID)
                .env("DAPI_APP_CERTIFICATE", APP_CERTIFICATE);
        } else {
            cmd.env_remove("DAPI_APP_ID")
                .env_remove("DAPI_APP_CERTIFICATE");
        }
        cmd.env("DAPI_LOG_FORMAT", "json")
            .env("RUST_LOG", "debug")
            .env_remove("DAPI_ICE_SERVERS")
            .env_remove("DAPI_TURN_SECRET");
        for (k, v) in &builder.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let logs = Logs::default();
        let stderr = logs.collect(child.stderr.take().expect("piped stderr"), None);
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let limit = builder.listen_timeout;
        let mut before = Vec::new();
        let base = tokio::time::timeout(limit, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return addr.trim().to_owned();
                }
                before.push(line);
            }
            panic!("api exited before listening; stdout: {before:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("api did not print `listening on` within {limit:?}"));
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            base,
            child,
            logs,
            stderr,
            stdout_before: before,
            dir: Some(dir),
            builder,
        }
    }

    /// The lines it printed on stdout before `listening on` (none: that line came first).
    pub fn stdout_before_listening(&self) -> &[String] {
        &self.stdout_before
    }

    /// Sends SIGTERM (the API finishes in-flight requests and exits).
    pub fn terminate(&self) {
        sigterm(self.pid());
    }

    /// Waits up to `limit` for the process to exit and for its stderr to be read to the
    /// end; its exit status.
    ///
    /// # Panics
    /// When it does not exit in time.
    pub async fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the api did not exit in time")
            .expect("waiting for the api");
        let _ = tokio::time::timeout(limit, &mut self.stderr).await;
        status
    }

    /// Its stderr lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lines()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("api running")
    }

    /// Kills it and starts it again on the same address and database (a restart); the
    /// log of the first run is checked for secrets.
    pub async fn restart(mut self) -> Self {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
        let addr = self.base.trim_start_matches("http://").to_owned();
        self.check_logs();
        let builder = self.builder.clone();
        let dir = self.dir.take().expect("the api's temp dir");
        Self::spawn(builder, dir, &addr).await
    }

    /// Kills it and checks that it logged something and never SDP, candidates, tokens
    /// or its agent key (it ran at debug level).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        assert!(!self.logs().is_empty(), "the api logged nothing");
        self.check_logs();
    }

    fn check_logs(&self) {
        let keys: Vec<&str> = self.builder.keys.iter().map(String::as_str).collect();
        assert_no_secrets("the api", &self.logs(), &keys);
    }
}

/// `kill -TERM pid`.
///
/// # Panics
/// When `kill` fails.
fn sigterm(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -TERM failed");
}

/// How to start an [`AgentProcess`] against an API: `--api-url`, `--capacity`,
/// `--agent-id`, `--bind-ip 127.0.0.1`, a fresh cache dir, JSON logs at debug level
/// (webrtc at info), then the extra [`args`](Self::args).
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    api_url: String,
    id: String,
    capacity: u32,
    key: String,
    args: Vec<String>,
    bin: Option<PathBuf>,
}

impl AgentBuilder {
    /// The agent's id (`agent` by default).
    pub fn id(mut self, id: &str) -> Self {
        id.clone_into(&mut self.id);
        self
    }

    /// Sessions it holds at once (1 by default).
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// `DAPI_AGENT_KEY`, also checked absent from its logs.
    pub fn agent_key(mut self, key: &str) -> Self {
        key.clone_into(&mut self.key);
        self
    }

    /// Extra flags.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Another binary than [`agent_bin`].
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = Some(bin.into());
        self
    }

    /// Starts it (it connects on its own; wait on the API's side). Its log is echoed with
    /// its id as prefix when `ROBOT_E2E_ECHO` is set.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn start(self) -> AgentProcess {
        let bin = self.bin.clone().unwrap_or_else(agent_bin);
        let cache = TempDir::new(&format!("robot-cache-{}", self.id));
        let mut child = Command::new(&bin)
            .args(["--api-url", &self.api_url])
            .args(["--capacity", &self.capacity.to_string()])
            .args(["--agent-id", &self.id])
            .args(["--bind-ip", "127.0.0.1"])
            .arg("--cache-dir")
            .arg(cache.path())
            .args(&self.args)
            .env("DAPI_AGENT_KEY", &self.key)
            .env("ROBOT_LOG_FORMAT", "json")
            .env("RUST_LOG", "debug,webrtc=info,rtc=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let logs = Logs::default();
        let echo = std::env::var("ROBOT_E2E_ECHO")
            .ok()
            .map(|_| self.id.clone());
        // The reader ends with the process; nothing waits for it.
        drop(logs.collect(child.stderr.take().expect("piped stderr"), echo));
        AgentProcess {
            id: self.id,
            key: self.key,
            child,
            logs,
            _cache: cache,
        }
    }
}

/// A running `robot-agent` process; killed on drop.
#[derive(Debug)]
pub struct AgentProcess {
    /// Its `--agent-id`.
    pub id: String,
    key: String,
    child: Child,
    logs: Logs,
    _cache: TempDir,
}

impl AgentProcess {
    /// A builder for an agent of `api_url` with `key`.
    pub fn builder(api_url: &str, key: &str) -> AgentBuilder {
        AgentBuilder {
            api_url: api_url.to_owned(),
            id: "agent".into(),
            capacity: 1,
            key: key.to_owned(),
            args: Vec::new(),
            bin: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("agent running")
    }

    /// Sends SIGTERM (the agent drains).
    pub fn terminate(&self) {
        sigterm(self.pid());
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    ///
    /// # Panics
    /// When it does not exit in time.
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the agent did not exit in time")
            .ok()
            .and_then(|s| s.code())
    }

    /// Its stderr lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lines()
    }

    /// Kills it and checks its log never carried SDP, candidates, tokens or its key.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        assert_no_secrets(&format!("agent {}", self.id), &self.logs(), &[&self.key]);
    }
}
