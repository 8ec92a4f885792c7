//! The `api` binary: `token mint|inspect` reproduce Agora's vectors, `migrate` works, and
//! serving prints `listening on http://ADDR:PORT` with the real port and stops on SIGTERM.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

use std::process::Command;

use serde_json::Value;
use test_support::{ApiProcess, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_api");
const VECTORS: &str = include_str!("data/agora-tokens.json");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn uid_args(uid: &Value) -> Vec<String> {
    match uid {
        Value::Number(n) => vec!["--uid".into(), n.to_string()],
        Value::String(s) => vec!["--account".into(), s.clone()],
        _ => vec![],
    }
}

#[test]
fn token_mint_reproduces_every_rtc_vector() {
    let v: Value = serde_json::from_str(VECTORS).unwrap();
    let mut checked = 0;
    for t in v["v006"].as_array().unwrap() {
        let mut args: Vec<String> = vec![
            "token",
            "mint",
            "--app-id",
            t["appId"].as_str().unwrap(),
            "--app-certificate",
            t["appCertificate"].as_str().unwrap(),
            "--channel",
            t["channel"].as_str().unwrap(),
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let uid = &t["uid"];
        if uid == "" {
            args.extend(["--uid".to_string(), "0".to_string()]); // RTM vectors: empty uid
        } else {
            args.extend(uid_args(uid));
        }
        args.extend([
            "--salt".into(),
            t["salt"].to_string(),
            "--ts".into(),
            t["ts"].to_string(),
        ]);
        for (id, exp) in t["privileges"].as_object().unwrap() {
            args.extend(["--privilege".into(), format!("{id}={exp}")]);
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = run(&a);
        assert!(ok, "{err}");
        assert_eq!(out, t["token"].as_str().unwrap(), "{}", t["name"]);
        checked += 1;
    }
    for t in v["v007"].as_array().unwrap() {
        if t["kind"] != "rtc" {
            continue; // the CLI mints RTC tokens; other services are covered by unit tests
        }
        let mut args: Vec<String> = vec![
            "token",
            "mint",
            "--version",
            "007",
            "--app-id",
            t["appId"].as_str().unwrap(),
            "--app-certificate",
            t["appCertificate"].as_str().unwrap(),
            "--channel",
            t["channel"].as_str().unwrap(),
        ]
        .into_iter()
        .map(String::from)
        .collect();
        args.extend(uid_args(&t["uid"]));
        args.extend([
            "--salt".into(),
            t["salt"].to_string(),
            "--ts".into(),
            t["ts"].to_string(),
            "--expire".into(),
            t["expire"].to_string(),
        ]);
        for (id, exp) in t["privileges"].as_object().unwrap() {
            args.extend(["--privilege".into(), format!("{id}={exp}")]);
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = run(&a);
        assert!(ok, "{err}");
        assert_eq!(out, t["token"].as_str().unwrap(), "{}", t["name"]);
        checked += 1;
    }
    assert_eq!(checked, 11);
}

#[test]
fn token_inspect_decodes_and_checks_signatures() {
    let v: Value = serde_json::from_str(VECTORS).unwrap();
    let t006 = &v["v006"][0];
    let tok = t006["token"].as_str().unwrap();
    let (ok, out, _) = run(&["token", "inspect", tok]);
    assert!(ok);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["version"], "006");
    assert_eq!(j["salt"], 1);
    assert_eq!(j["ts"], 1111111);
    assert_eq!(j["privileges"]["1"], 1446455471);
    assert!(j["signature"].as_str().unwrap().starts_with("unchecked"));
    let cert = t006["appCertificate"].as_str().unwrap();
    let ch = t006["channel"].as_str().unwrap();
    let (_, out, _) = run(&[
        "token",
        "inspect",
        tok,
        "--app-certificate",
        cert,
        "--channel",
        ch,
        "--uid",
        "2882341273",
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["signature"],
        "valid"
    );
    let (_, out, _) = run(&[
        "token",
        "inspect",
        tok,
        "--app-certificate",
        &"0".repeat(32),
        "--channel",
        ch,
        "--uid",
        "2882341273",
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["signature"],
        "invalid"
    );

    let t007 = &v["v007"][0];
    let tok = t007["token"].as_str().unwrap();
    let (_, out, _) = run(&[
        "token",
        "inspect",
        tok,
        "--app-certificate",
        t007["appCertificate"].as_str().unwrap(),
    ]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["version"], "007");
    assert_eq!(j["issue_ts"], 1111111);
    assert_eq!(j["expire"], 600);
    assert_eq!(j["services"][0]["channel"], t007["channel"]);
    assert_eq!(j["services"][0]["uid"], "2882341273");
    assert_eq!(j["signature"], "valid");

    let (ok, _, err) = run(&["token", "inspect", "garbage"]);
    assert!(!ok);
    assert!(err.contains("AccessToken"), "{err}");
}

#[tokio::test]
async fn migrate_then_serve_prints_the_real_port_and_stops_on_sigterm() {
    let dir = TempDir::new("dapi-cli");
    let db = format!("sqlite://{}/cli.db", dir.display());
    let (ok, out, err) = run(&["migrate", "--database-url", &db]);
    assert!(ok, "{err}");
    assert!(out.contains("migrations applied"), "{out}");

    // The flags win over the builder's DAPI_LISTEN and DATABASE_URL.
    let mut api = ApiProcess::builder()
        .bin(BIN)
        .without_credentials()
        .args(&["--listen", "127.0.0.1:0", "--database-url", &db])
        .start()
        .await;
    // `listening on http://ADDR:PORT` is the first line on stdout
    assert!(
        api.stdout_before_listening().is_empty(),
        "{:?}",
        api.stdout_before_listening()
    );
    let addr = api
        .base
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{}", api.base))
        .to_owned();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0);
    // the server answers on that port
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // graceful shutdown on SIGTERM
    api.terminate();
    let status = api.wait(std::time::Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    let stderr = api.logs().join("\n");
    assert!(
        stderr.contains("development pair"),
        "warns about generated credentials: {stderr}"
    );
}

/// Runs the server with `env` on a database that must not be created: it refuses to start.
fn refused(env: &[(&str, &str)]) -> String {
    let dir = TempDir::new("dapi-cli-refused");
    let file = dir.join("never.db");
    let db = format!("sqlite://{}", file.display());
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--database-url", &db])
        .envs(env.iter().copied())
        .env("DAPI_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {env:?}");
    assert!(
        !file.exists(),
        "the configuration is checked before the database is opened"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_value_in_the_environment_is_refused_naming_the_variable() {
    let err = refused(&[("DAPI_RING_TIMEOUT", "60s")]);
    assert!(err.contains("whole number of seconds"), "{err}");
    assert!(err.contains("DAPI_RING_TIMEOUT"), "{err}");
    let err = refused(&[("DAPI_AUTH", "basic")]);
    assert!(err.contains("DAPI_AUTH"), "{err}");
}

#[test]
fn settings_that_cannot_work_together_are_refused_at_start_naming_the_variable() {
    let err = refused(&[("DAPI_RTC_MAX_PEERS", "1")]);
    assert!(
        err.contains("DAPI_RTC_MAX_PEERS must be at least 2"),
        "{err}"
    );
    let err = refused(&[("DAPI_AUTH", "jwt")]);
    assert!(err.contains("DAPI_JWT_SECRET"), "{err}");
}
