//! Shared by the RTC end-to-end tests: check the test dependencies, run node and the venv's
//! python on the scripts. The `api` process itself comes from the test support library
//! (`test_support::ApiProcess`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What to run when a dependency is missing.
pub const INSTALL_HINT: &str =
    "run scripts/install-test-deps.sh (or just the RTC part: scripts/rtc-test-deps.sh)";

#[allow(unused_imports)]
pub use test_support::{TempDir, api_bin, root};

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

/// A running `api` process (logging at debug level, SQLite in a temp dir, port 0);
/// `Api::start()` starts one, `stop()` checks its log never carried SDP, ICE candidates or
/// tokens (it ran at debug level through whole calls).
pub type Api = test_support::ApiProcess;

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

/// A positive number at `path` in `v`, with a message naming it.
pub fn positive(v: &serde_json::Value, path: &str) -> f64 {
    let x = v
        .pointer(path)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {v:#}"));
    assert!(x > 0.0, "{path} is {x}, expected > 0: {v:#}");
    x
}
