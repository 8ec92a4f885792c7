//! Shared by the RTC end-to-end tests: build and start the real `api` binary on port 0,
//! check the test dependencies, run node and the venv's python on the scripts.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What to run when a dependency is missing.
pub const INSTALL_HINT: &str =
    "run scripts/install-test-deps.sh (or just the RTC part: scripts/rtc-test-deps.sh)";

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Fails (never skips) when node, playwright-core or Chromium are missing.
pub fn require_browser_deps() {
    let nm = root().join("tests/browser/node_modules/playwright-core");
    assert!(nm.exists(), "{} is missing: {INSTALL_HINT}", nm.display());
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: {INSTALL_HINT}"
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.map(|o| o.status.success()).unwrap_or(false),
        "node is not on PATH: {INSTALL_HINT}"
    );
}

/// The venv's python, after checking that aiortc imports there; fails when missing.
pub fn require_python() -> PathBuf {
    let venv = std::env::var("RTC_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".venv"));
    let py = venv.join("bin/python");
    assert!(py.exists(), "{} is missing: {INSTALL_HINT}", py.display());
    let ok = std::process::Command::new(&py)
        .args(["-c", "import aiortc, numpy, websockets"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "aiortc, numpy or websockets is missing in {}: {INSTALL_HINT}",
        venv.display()
    );
    py
}

/// The `api` binary: `$API_BIN`, or built now with `cargo build -p api` (so it is never stale).
pub fn api_bin() -> PathBuf {
    if let Ok(p) = std::env::var("API_BIN") {
        return PathBuf::from(p);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "-p",
            "api",
            "--bin",
            "api",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo build -p api");
    assert!(out.status.success(), "cargo build -p api failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "api")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("cargo build printed no api executable")
}

/// A running `api` process (logging at debug level); killed on drop.
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    child: Child,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Api {
    /// Starts the binary on port 0 with a fresh SQLite database and waits for
    /// `listening on http://`.
    pub async fn start() -> Self {
        let bin = api_bin();
        let dir = TempDir::new("rtc-e2e");
        let mut child = Command::new(&bin)
            .env("DAPI_LISTEN", "127.0.0.1:0")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/api.db?mode=rwc", dir.0.display()),
            )
            .env("DAPI_APP_ID", "970CA35de60c44645bbae8a215061b33")
            .env("DAPI_APP_CERTIFICATE", "5CFd2fd1755d40ecb72977518be15d3b")
            .env("DAPI_LOG_FORMAT", "json")
            .env("RUST_LOG", "debug")
            .env_remove("DAPI_ICE_SERVERS")
            .env_remove("DAPI_TURN_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return addr.trim().to_owned();
                }
            }
            panic!("api exited before listening");
        })
        .await
        .expect("api did not print `listening on` within 30 s");
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            base,
            child,
            logs,
            _dir: dir,
        }
    }

    /// Stops the process and checks that its log never carried SDP, ICE candidates or
    /// tokens (it ran at debug level through whole calls).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let logs = self.logs.lock().map(|l| l.clone()).unwrap_or_default();
        assert!(!logs.is_empty(), "the api logged nothing");
        for line in &logs {
            for secret in [
                "v=0",
                "a=candidate",
                "candidate:",
                "typ host",
                "\"token\"",
                "006970CA35de60c",
            ] {
                assert!(!line.contains(secret), "the api logged {secret:?}: {line}");
            }
        }
    }
}

/// A script whose stdout is read line by line; its result is the last JSON line.
pub struct Script {
    what: String,
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
}

impl Script {
    /// Starts `cmd` (stderr goes to the test's output).
    pub fn spawn(mut cmd: Command, what: &str) -> Self {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        Self {
            what: what.to_owned(),
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// Waits for a JSON line with `"ready"` (the script reached a point the driver waits for).
    pub async fn ready(&mut self, limit: Duration) {
        let what = self.what.clone();
        tokio::time::timeout(limit, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                let ready = serde_json::from_str::<serde_json::Value>(&line)
                    .map(|v| v.get("ready").is_some())
                    .unwrap_or(false);
                self.seen.push(line);
                if ready {
                    return;
                }
            }
            panic!("{what} ended before it was ready: {:?}", self.seen);
        })
        .await
        .unwrap_or_else(|_| panic!("{what} was not ready within {limit:?}"));
    }

    /// Waits for the script to finish and returns its last JSON line; fails on a non-zero
    /// exit or an `error` field.
    pub async fn result(mut self, limit: Duration) -> serde_json::Value {
        let what = self.what.clone();
        let status = tokio::time::timeout(limit, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                self.seen.push(line);
            }
            self.child.wait().await
        })
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let v: serde_json::Value = self
            .seen
            .iter()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("{what} printed no JSON result; stdout: {:?}", self.seen));
        assert!(
            status.success() && v.get("error").is_none(),
            "{what} failed ({status}): {v:#}"
        );
        v
    }
}

/// Runs a script to completion (within `limit`) and returns its last JSON line.
pub async fn run_json(cmd: Command, what: &str, limit: Duration) -> serde_json::Value {
    Script::spawn(cmd, what).result(limit).await
}

/// `node tests/browser/<script> args...`.
pub fn node(script: &str, args: &[&str]) -> Command {
    let dir = root().join("tests/browser");
    let mut c = Command::new("node");
    c.arg(dir.join(script)).args(args).current_dir(dir);
    c
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new(prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A positive number at `path` in `v`, with a message naming it.
pub fn positive(v: &serde_json::Value, path: &str) -> f64 {
    let x = v
        .pointer(path)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {v:#}"));
    assert!(x > 0.0, "{path} is {x}, expected > 0: {v:#}");
    x
}
