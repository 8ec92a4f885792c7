//! Where the binaries under test are: `$API_BIN` / `$ROBOT_AGENT_BIN`, or built now.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A binary of the workspace: `$env` when set, else built now with cargo (so it is never
/// stale) and its path taken from cargo's JSON messages.
///
/// # Panics
/// When cargo fails or prints no such executable.
pub fn cargo_bin(package: &str, bin: &str, env: &str) -> PathBuf {
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
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == bin)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo build printed no {bin} executable"))
}

/// The `api` binary (`$API_BIN` or built now).
pub fn api_bin() -> PathBuf {
    cargo_bin("api", "api", "API_BIN")
}

/// The `robot-agent` binary (`$ROBOT_AGENT_BIN` or built now).
pub fn agent_bin() -> PathBuf {
    cargo_bin("robot-agent", "robot-agent", "ROBOT_AGENT_BIN")
}
