//! The media bridge end to end, with peers nobody here wrote: the real `api` binary
//! (SQLite), a real `robot-agent` process, aiortc as the app
//! (`tests/aiortc/robot_bridge.py`) and a Python `websockets` program as the operator's
//! program (`tests/aiortc/bridge_program.py`).
//!
//! For pcm16 at 16 kHz, pcm16 at 48 kHz and opus:
//! - the app speaks the speech fixture; the program receives it as `media` and it matches
//!   (normalised cross-correlation >= 0.9 after alignment);
//! - the program speaks it back; the app hears it and it matches (>= 0.9);
//! - `mark echo` comes back once the echo was played; 5 s more audio, `mark cut`, a `clear`
//!   300 ms later: `cleared` names `cut` (never reported as `mark`), and every frame of
//!   the program's audio was either heard by the app or counted in `dropped_ms`: the RTP
//!   packets the app received are exactly the echo, the part of the 5 s played, and (after
//!   a restart) the beep, up to a few frames the pacer may skip on this busy machine, never
//!   more (a frame that leaked after the clear would be counted twice);
//! - pcm16 48 kHz runs over `wss://`: the program serves TLS with a certificate of a CA made
//!   for the test (Python `cryptography`), which the agent trusts through
//!   `--bridge-ca-file` (`ROBOT_BRIDGE_CA_FILE`);
//! - pcm16 16 kHz: the program is killed (SIGKILL) and started again on its port; the robot
//!   is back on it with `start` `"resume": true` within 2 s of it listening again, the
//!   app's connection never dropped, the beep the new program speaks is heard, and the
//!   program's `hangup` ends the robot (on the timeline);
//! - opus: the program is killed and not started again: the robot leaves with `bridge_lost`
//!   on the timeline about 10 s later.
//!
//! And a `wss://` program whose certificate the agent does not trust: the robot leaves at
//! once with `bridge_lost` naming the certificate, on the timeline and in the agent's log;
//! the agent goes on (it takes the next call).
//!
//! SQLite in CI; `E2E_DATABASE_URL` runs them on PostgreSQL. Needs
//! scripts/install-test-deps.sh (aiortc, numpy, websockets and cryptography in .venv);
//! fails, never skips, without them.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod robot_support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use robot_support::{RobotAgent, RobotApi, Script, TempDir, fixture, require_python, root};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const SECRET: &str = "bridge-e2e-secret";

/// A free TCP port on 127.0.0.1 (bound, then released for the program to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One run of bridge_program.py, its events read as they come.
struct Program {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<Value>,
}

impl Program {
    /// Starts it on `port`; with `tls`, over `wss://` with a CA made for the run, whose
    /// certificate it writes to `tls/ca.pem` before it listens.
    async fn start(python: &Path, port: u16, then: &str, tls: Option<&Path>) -> Self {
        let mut cmd = Command::new(python);
        cmd.arg(root().join("tests/aiortc/bridge_program.py"));
        if let Some(dir) = tls {
            cmd.arg("--tls").arg(dir);
        }
        let mut child = cmd
            .args([
                "--port",
                &port.to_string(),
                "--secret",
                SECRET,
                "--then",
                then,
            ])
            .arg("--fixture")
            .arg(fixture())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut p = Self {
            child,
            lines,
            seen: Vec::new(),
        };
        p.until("listening", Duration::from_secs(20)).await;
        p
    }

    /// The next event `got` (earlier ones are kept in `seen`).
    async fn until(&mut self, got: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {got} from the program within {limit:?}: {:#?}",
                        self.seen
                    )
                })
                .unwrap()
                .unwrap_or_else(|| panic!("the program ended before {got}: {:#?}", self.seen));
            let v: Value = serde_json::from_str(&line).unwrap();
            self.seen.push(v.clone());
            if v["got"] == got {
                return v;
            }
        }
    }

    fn all(&self, got: &str) -> Vec<&Value> {
        self.seen.iter().filter(|v| v["got"] == got).collect()
    }

    async fn kill(mut self) -> Vec<Value> {
        self.child.kill().await.unwrap();
        self.seen
    }
}

fn bridges(port: u16) -> String {
    let url = format!("ws://127.0.0.1:{port}/");
    let tls = format!("wss://127.0.0.1:{port}/");
    json!({
        "pcm16k": {"url": url, "secret": SECRET, "format": "pcm16", "rate": 16000},
        "pcm48k": {"url": tls, "secret": SECRET, "format": "pcm16", "rate": 48000},
        "opus": {"url": url, "secret": SECRET, "format": "opus", "rate": 48000},
    })
    .to_string()
}

fn app(python: &Path, base: &str, bridge: &str) -> Script {
    let mut c = Command::new(python);
    c.arg(root().join("tests/aiortc/robot_bridge.py"))
        .args(["--base", base, "--bridge", bridge, "--fixture"])
        .arg(fixture())
        .args(["--max-seconds", "60"]);
    Script::spawn(c, "robot_bridge.py")
}

enum Ending {
    /// The program hangs up after `cleared`.
    Hangup,
    /// The program is killed after `cleared` and started again.
    Restart,
    /// The program is killed after `cleared` and never comes back.
    Lost,
}

/// One bridged call; what the checks need. With `tls`, the program serves `wss://` and the
/// agent trusts its CA through `--bridge-ca-file`.
async fn bridged_call(bridge: &str, encoding: &str, rate: u64, ending: Ending, tls: bool) {
    let python = require_python();
    let port = free_port();
    let ports = bridges(port);
    let then = match ending {
        Ending::Hangup => "hangup",
        Ending::Restart | Ending::Lost => "wait",
    };
    // The program first: with TLS its CA file must exist when the agent starts.
    let certs = TempDir::new("bridge-tls");
    let mut program = Program::start(&python, port, then, tls.then(|| certs.path())).await;
    assert_eq!(program.seen[0]["tls"], tls, "{:?}", program.seen);
    let ca = certs.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let api = RobotApi::start_with(&[("DAPI_BRIDGES", ports.as_str())]).await;
    let extra: &[&str] = if tls { &["--bridge-ca-file", ca] } else { &[] };
    let agent = RobotAgent::start(&api, &format!("agent-{bridge}"), 2, extra).await;
    api.wait_agents(1).await;
    let caller = app(&python, &api.base, bridge);

    let start = program.until("start", Duration::from_secs(30)).await;
    assert_eq!(start["resume"], false, "{start}");
    // The call's parties, from the API (a `call/robot` has its caller and no callee).
    assert_eq!(start["call"]["src_uid"], "caller1", "{start}");
    assert_eq!(
        start["format"],
        json!({"encoding": encoding, "rate": rate, "channels": 1, "frame_ms": 20})
    );
    let heard = program.until("heard", Duration::from_secs(60)).await;
    eprintln!("the program heard: {heard}");
    assert!(
        heard["xcorr"].as_f64().unwrap() >= 0.9,
        "what the program heard does not match the fixture: {heard}"
    );
    assert_eq!(heard["seq_gaps"], 0, "{heard}");
    let echo_frames = heard["frames"].as_u64().unwrap();
    let echo = program.until("mark", Duration::from_secs(30)).await;
    assert_eq!(echo["name"], "echo", "{echo}");
    let cleared = program.until("cleared", Duration::from_secs(30)).await;
    assert_eq!(cleared["marks"], json!(["cut"]), "{cleared}");
    let dropped = cleared["dropped_ms"].as_u64().unwrap();
    assert!(
        dropped > 0 && dropped % 20 == 0 && dropped < 250 * 20,
        "{cleared}"
    );
    let long_played = 250 - dropped / 20;
    let mut beep_frames = 0;
    let mut resumed = None;

    let program_events = match ending {
        Ending::Hangup => {
            program.until("stop", Duration::from_secs(30)).await;
            program.seen.clone()
        }
        Ending::Restart => {
            let mut first = program.kill().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!tls, "a restarted TLS program would have a new CA");
            let mut again = Program::start(&python, port, "hangup", None).await;
            let listening_at = again.all("listening")[0]["t"].as_f64().unwrap();
            let start = again.until("start", Duration::from_secs(15)).await;
            assert_eq!(start["resume"], true, "{start}");
            let after = start["t"].as_f64().unwrap() - listening_at;
            resumed = Some(after);
            assert!(
                after < 2.0,
                "the robot resumed {after:.3} s after the program listened again"
            );
            let stop = again.until("stop", Duration::from_secs(15)).await;
            assert_eq!(stop["reason"], "ended", "{stop}");
            let p = again.all("participant");
            assert!(
                p.iter()
                    .any(|p| p["uid"] == "caller1" && p["state"] == "joined"),
                "the participants are announced again: {p:?}"
            );
            beep_frames = again.all("beep_sent")[0]["frames"].as_u64().unwrap();
            let back = again.all("mark");
            assert_eq!(back.len(), 1, "{back:?}");
            assert_eq!(back[0]["name"], "back");
            first.extend(again.seen.clone());
            first
        }
        Ending::Lost => program.kill().await,
    };
    let marks: Vec<&Value> = program_events
        .iter()
        .filter(|v| v["got"] == "mark")
        .collect();
    assert!(
        marks.iter().all(|m| m["name"] != "cut"),
        "a cleared mark was reported as played: {marks:?}"
    );

    let r = caller.result(Duration::from_secs(90)).await;
    let arrivals = r["arrivals"].as_array().unwrap().len();
    eprintln!(
        "robot_bridge.py: packets {} xcorr {} left {:?} states {} resumed {resumed:?}",
        r["packets"], r["xcorr"], r["robot_left_reason"], r["states"]
    );
    assert!(
        r.get("timed_out").is_none(),
        "the robot never left: {}",
        r["robot_left_reason"]
    );
    let xcorr = r["xcorr"].as_f64().unwrap();
    assert!(xcorr >= 0.9, "the app heard the echo at {xcorr}");
    assert_eq!(r["robot_leaves"], 1, "the robot left once, at the end");
    let states: Vec<&str> = r["states"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "connected").count(),
        1,
        "the app's connection never dropped: {states:?}"
    );
    // Every frame of the program either reached the app or was reported dropped; the
    // pacer may skip a few on a loaded machine, nothing may come twice.
    let expected = echo_frames + long_played + beep_frames;
    let got = u64::try_from(arrivals).unwrap();
    assert!(
        got <= expected && got + 10 >= expected,
        "the app received {got} packets; the program's audio was {echo_frames} echo + \
         {long_played} of the 250 before the clear + {beep_frames} beep = {expected}"
    );

    let channel = r["channel"].as_str().unwrap();
    let timeline = api.timeline(channel).await;
    match ending {
        Ending::Hangup | Ending::Restart => {
            assert!(
                timeline.contains("the bridge program hung up"),
                "{timeline}"
            );
        }
        Ending::Lost => {
            assert!(timeline.contains("bridge_lost"), "{timeline}");
            assert!(
                timeline.contains("could not be reached for 10 s"),
                "{timeline}"
            );
        }
    }
    let logs = agent.logs();
    assert!(
        logs.iter().any(|l| l.contains("bridge program connected")),
        "the agent logs its bridge"
    );
    assert!(
        logs.iter().all(|l| !l.contains(SECRET)),
        "the agent logged the bridge's secret"
    );
    agent.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn pcm16_16k_echoes_clears_truthfully_and_resumes_after_the_program_restarts() {
    bridged_call("pcm16k", "pcm16", 16_000, Ending::Restart, false).await;
}

#[tokio::test]
async fn pcm16_48k_over_wss_echoes_and_clears_truthfully_and_the_program_hangs_up() {
    bridged_call("pcm48k", "pcm16", 48_000, Ending::Hangup, true).await;
}

#[tokio::test]
async fn opus_echoes_and_a_program_gone_for_good_ends_the_robot_with_bridge_lost() {
    bridged_call("opus", "opus", 48_000, Ending::Lost, false).await;
}

/// A `wss://` program whose CA the agent was not given: the dial fails on the certificate,
/// the robot leaves at once with `bridge_lost` naming it (no 10 s of redials: trying again
/// cannot help), the agent logs it and takes the next call.
#[tokio::test]
async fn an_untrusted_wss_program_is_a_clear_error_on_the_session_and_the_agent_goes_on() {
    let python = require_python();
    let port = free_port();
    let certs = TempDir::new("bridge-tls");
    let program = Program::start(&python, port, "hangup", Some(certs.path())).await;
    let ports = bridges(port);
    let api = RobotApi::start_with(&[("DAPI_BRIDGES", ports.as_str())]).await;
    let agent = RobotAgent::start(&api, "agent-untrusted", 2, &[]).await;
    api.wait_agents(1).await;
    for round in 0..2 {
        let call = api
            .dapi(
                "call/robot",
                json!({"src_uid": format!("caller{round}"), "bridge": "pcm48k"}),
            )
            .await;
        let channel = call["channel"].as_str().unwrap();
        let s = api
            .wait_session(channel, 10, "the robot left", |s| s["state"] == "left")
            .await;
        let timeline = api.timeline(channel).await;
        assert!(timeline.contains("bridge_lost"), "{s:#} {timeline}");
        assert!(
            timeline.contains("TLS certificate is not trusted")
                && timeline.contains("ROBOT_BRIDGE_CA_FILE"),
            "{timeline}"
        );
    }
    let logs = agent.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("bridge program not reached") && l.contains("not trusted")),
        "the agent logs the refused certificate"
    );
    assert!(
        logs.iter().all(|l| !l.contains("panicked")),
        "the agent panicked"
    );
    let seen = program.kill().await;
    assert!(
        seen.iter().all(|v| v["got"] != "start"),
        "no session reached the program: {seen:?}"
    );
    agent.stop().await;
    api.stop().await;
}
