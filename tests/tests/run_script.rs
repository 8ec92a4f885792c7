//! `scripts/run.sh`, the README's first command, as a person and as a service manager run it:
//! at a terminal (a real pseudo-terminal from `script(1)`) both processes log readable lines;
//! with stderr going to a pipe they log JSON. Runs the debug binaries (`RUN_BIN_DIR`) so the
//! test does not build a release.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod robot_support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use robot_support::{ADMIN_KEY, AGENT_KEY, TempDir, agent_bin, root, rtc_support::api_bin};

/// A directory holding `api` and `robot-agent` side by side, as run.sh expects.
fn bin_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(api_bin(), dir.join("api")).unwrap();
    std::os::unix::fs::symlink(agent_bin(), dir.join("robot-agent")).unwrap();
    dir
}

fn run_sh(tmp: &Path, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args)
        .current_dir(root())
        .env("RUN_BIN_DIR", bin_dir(tmp))
        .env("RUN_VAR_DIR", tmp.join("var"))
        .env("DAPI_LISTEN", "127.0.0.1:0")
        .env("DAPI_AGENT_KEY", AGENT_KEY)
        .env("DAPI_ADMIN_KEY", ADMIN_KEY)
        .env_remove("DAPI_LOG_FORMAT")
        .env_remove("ROBOT_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null());
    c
}

/// Lines of `r`, sent on a channel from a thread of their own.
fn lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines until `done` holds for the collected lines, or panics after `within`.
fn collect_until(
    rx: &mpsc::Receiver<String>,
    within: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let end = Instant::now() + within;
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("run.sh did not print what was expected; it printed:\n{seen:#?}"),
        }
    }
    seen
}

fn is_json_log(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line.trim())
        .map(|v| v.get("level").is_some())
        .unwrap_or(false)
}

/// Both processes have logged: the API's first request-free line and the agent's link.
fn both_logged(lines: &[String]) -> bool {
    let demo = lines.iter().any(|l| l.contains("run: demo at"));
    let agent = lines
        .iter()
        .any(|l| l.contains("robot_agent") && (l.contains("INFO") || is_json_log(l)));
    demo && agent
}

fn stop(child: &mut Child, pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("run.sh did not stop within 20 s of SIGTERM");
}

/// Runs run.sh on a pseudo-terminal (script(1)) until both processes have logged, stops it,
/// and returns what it printed. `None` when script(1) is missing.
fn run_at_a_terminal(log_format: Option<&str>) -> Option<Vec<String>> {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: script(1) (util-linux) is not installed");
        return None;
    }
    let tmp = TempDir::new("run-sh-tty");
    let script = root().join("scripts/run.sh");
    // script(1) runs run.sh on a new pseudo-terminal and copies what it prints to stdout.
    let mut cmd = run_sh(
        tmp.path(),
        "script",
        &["-qfec", &script.display().to_string(), "/dev/null"],
    );
    if let Some(f) = log_format {
        cmd.env("DAPI_LOG_FORMAT", f);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines(child.stdout.take().unwrap());
    let seen = collect_until(&rx, Duration::from_secs(60), both_logged);
    // run.sh is script's child; SIGTERM to it stops the api and the agent.
    let script_pid = child.id();
    let children =
        std::fs::read_to_string(format!("/proc/{script_pid}/task/{script_pid}/children"))
            .unwrap_or_default();
    let run_pid: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("script(1) has a child");
    stop(&mut child, run_pid);
    Some(seen)
}

#[test]
fn at_a_terminal_both_processes_log_readable_lines() {
    let Some(seen) = run_at_a_terminal(None) else {
        return;
    };
    assert!(
        seen.iter().any(|l| l.contains("run: logs as pretty")),
        "{seen:#?}"
    );
    let json: Vec<_> = seen.iter().filter(|l| is_json_log(l)).collect();
    assert!(json.is_empty(), "JSON log lines at a terminal: {json:#?}");
    assert!(
        seen.iter().any(|l| l.contains("INFO") && l.contains("api")),
        "no readable API log line: {seen:#?}"
    );
}

#[test]
fn dapi_log_format_json_makes_both_processes_log_json_even_at_a_terminal() {
    let Some(seen) = run_at_a_terminal(Some("json")) else {
        return;
    };
    assert!(
        seen.iter().any(|l| l.contains("run: logs as json")),
        "{seen:#?}"
    );
    // The agent follows DAPI_LOG_FORMAT (it used to pick pretty on its own at a terminal).
    assert!(
        seen.iter()
            .any(|l| is_json_log(l) && l.contains("robot_agent")),
        "the agent did not log JSON: {seen:#?}"
    );
    assert!(
        seen.iter().any(|l| is_json_log(l) && l.contains("\"api")),
        "the api did not log JSON: {seen:#?}"
    );
}

#[test]
fn into_a_pipe_both_processes_log_json() {
    let tmp = TempDir::new("run-sh-pipe");
    let script = root().join("scripts/run.sh");
    let mut child = run_sh(tmp.path(), &script.display().to_string(), &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(child.stderr.take().unwrap());
    let seen = collect_until(&rx, Duration::from_secs(60), |ls| {
        ls.iter().any(|l| l.contains("run: demo at"))
            && ls
                .iter()
                .any(|l| is_json_log(l) && l.contains("robot_agent"))
    });
    let pid = child.id();
    stop(&mut child, pid);

    assert!(
        seen.iter().any(|l| l.contains("run: logs as json")),
        "{seen:#?}"
    );
    // Every line a binary wrote is JSON; the script's own `run:` lines are for people.
    let plain: Vec<_> = seen
        .iter()
        .filter(|l| !l.starts_with("run: ") && !is_json_log(l))
        .collect();
    assert!(
        plain.is_empty(),
        "non-JSON log lines into a pipe: {plain:#?}"
    );
}
