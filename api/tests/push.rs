//! Push, end to end: the real API with its outbox and worker, a local HTTP/2 TLS server
//! standing in for APNs (it checks the ES256 provider token against the public half of
//! a P-256 key made here, the headers and the payload, and answers 200, 410, 503 or
//! hangs, per device token), and a webhook receiver that checks the HMAC signature.
//! Delivery is driven with `push::deliver_once` and a manual clock, except where the
//! worker itself is under test. Every test runs on SQLite, and on PostgreSQL when
//! `TEST_DATABASE_URL` is set. Device routes need `DAPI_AUTH=jwt`, so every app here runs
//! in jwt mode and [`TestApp`] signs each request as the body's uid.
#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::clock::Clock;
use api::push::deliver_once;
use api::store::{PushJob, PushJobState, PushKind};
use api::sweeper::sweep_once;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Version};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{TempDir, TestApp, backends, fresh_db, jwt_mode, spawn_app_on, spawn_app_with};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

const T0: i64 = 1_893_456_000_000; // 2030-01-01 00:00:00 UTC
const KEY_ID: &str = "ABC123DEFG";
const TEAM_ID: &str = "TEAM456XYZ";
const BUNDLE: &str = "com.example.dapi";

/// Device tokens and how the APNs stand-in answers them.
const OK: &str = "00aa00aa00aa00aa";
const GONE: &str = "00bb00bb00bb00bb";
const FLAKY: &str = "00cc00cc00cc00cc";
const HANG: &str = "00dd00dd00dd00dd";
const BAD: &str = "00ee00ee00ee00ee";

// ---------------------------------------------------------------- APNs stand-in

/// One request the stand-in accepted.
#[derive(Debug, Clone)]
struct Seen {
    token: String,
    payload: Value,
    expiration: i64,
    iat: i64,
}

#[derive(Default)]
struct ApnsState {
    public_key: Vec<u8>,
    seen: Mutex<Vec<Seen>>,
    /// Every check that failed (the test asserts there are none).
    violations: Mutex<Vec<String>>,
    /// Requests per token, answered or not.
    hits: Mutex<HashMap<String, usize>>,
    flaky_down: AtomicBool,
    /// Requests for HANG wait here.
    hang: tokio::sync::Notify,
    hanging: tokio::sync::Notify,
    hang_released: AtomicBool,
}

struct MockApns {
    state: Arc<ApnsState>,
    url: String,
    dir: TempDir,
    key_file: PathBuf,
    ca_file: PathBuf,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl MockApns {
    /// Starts the stand-in: a fresh P-256 provider key (written as a `.p8`), a
    /// self-signed certificate for 127.0.0.1 (written as the CA file), HTTP/2 only.
    async fn start() -> Self {
        let dir = TempDir::new("dapi-push");
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let key_file = dir.path().join("AuthKey_ABC123DEFG.p8");
        std::fs::write(&key_file, pem("PRIVATE KEY", pkcs8.as_ref())).unwrap();

        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let ca_file = dir.path().join("apns-ca.pem");
        std::fs::write(&ca_file, cert.cert.pem()).unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
            )
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let state = Arc::new(ApnsState {
            public_key: pair.public_key().as_ref().to_vec(),
            ..ApnsState::default()
        });
        let router = axum::Router::new()
            .fallback(apns_handler)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // HTTP/2 only, as APNs: an HTTP/1.1 client fails here.
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper_util::service::TowerToHyperService::new(router),
                    )
                    .await;
                });
            }
        });
        Self {
            state,
            url: format!("https://127.0.0.1:{}", addr.port()),
            dir,
            key_file,
            ca_file,
        }
    }

    /// Points `config` at this stand-in.
    fn configure(&self, c: &mut api::config::Config) {
        c.push.apns_key_file = Some(self.key_file.clone());
        c.push.apns_key_id = Some(KEY_ID.into());
        c.push.apns_team_id = Some(TEAM_ID.into());
        c.push.apns_bundle_id = Some(BUNDLE.into());
        c.push.apns_endpoint = self.url.parse().unwrap();
        c.push.ca_file = Some(self.ca_file.clone());
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn seen_for(&self, token: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.token == token)
            .collect()
    }

    fn hits(&self, token: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(token)
            .copied()
            .unwrap_or(0)
    }

    fn assert_no_violations(&self) {
        let v = self.state.violations.lock().unwrap();
        assert!(v.is_empty(), "the APNs stand-in saw bad requests: {v:?}");
        let _ = &self.dir;
    }
}

fn apns_reply(status: StatusCode, reason: &str) -> Response {
    (status, axum::Json(json!({"reason": reason}))).into_response()
}

/// Checks one request as APNs would, then answers per device token.
async fn apns_handler(State(s): State<Arc<ApnsState>>, req: Request) -> Response {
    let mut problems = Vec::new();
    if req.version() != Version::HTTP_2 {
        problems.push(format!("not HTTP/2: {:?}", req.version()));
    }
    if req.method() != axum::http::Method::POST {
        problems.push(format!("method {}", req.method()));
    }
    let token = req
        .uri()
        .path()
        .strip_prefix("/3/device/")
        .unwrap_or_default()
        .to_owned();
    if token.is_empty() {
        problems.push(format!("path {}", req.uri().path()));
    }
    *s.hits.lock().unwrap().entry(token.clone()).or_default() += 1;
    let h = req.headers().clone();
    let header = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    for (name, want) in [
        ("apns-topic", format!("{BUNDLE}.voip")),
        ("apns-push-type", "voip".into()),
        ("apns-priority", "10".into()),
        ("content-type", "application/json".into()),
    ] {
        if header(name) != want {
            problems.push(format!("{name}: {:?}, want {want:?}", header(name)));
        }
    }
    let expiration = header("apns-expiration").parse::<i64>().unwrap_or(-1);
    if expiration < 0 {
        problems.push("apns-expiration missing".into());
    }
    let iat = match check_jwt(&s.public_key, &header("authorization")) {
        Ok(iat) => iat,
        Err(e) => {
            problems.push(e);
            0
        }
    };
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    for field in ["type", "channel", "src_uid", "uid"] {
        if payload.get(field).is_none() {
            problems.push(format!("payload without {field}: {payload}"));
        }
    }
    if !problems.is_empty() {
        s.violations.lock().unwrap().extend(problems);
        return apns_reply(StatusCode::BAD_REQUEST, "TestCheckFailed");
    }
    match token.as_str() {
        GONE => return apns_reply(StatusCode::GONE, "Unregistered"),
        BAD => return apns_reply(StatusCode::BAD_REQUEST, "BadDeviceToken"),
        FLAKY if s.flaky_down.load(Ordering::SeqCst) => {
            return apns_reply(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
        }
        HANG => {
            // registered before the flag is read, so a release in between is not lost
            let released = s.hang.notified();
            if !s.hang_released.load(Ordering::SeqCst) {
                s.hanging.notify_one();
                released.await;
            }
        }
        _ => {}
    }
    s.seen.lock().unwrap().push(Seen {
        token,
        payload,
        expiration,
        iat,
    });
    (
        StatusCode::OK,
        [("apns-id", "00000000-0000-0000-0000-000000000000")],
    )
        .into_response()
}

/// Verifies `bearer <jwt>`: ES256 under `public_key`, `kid`, `iss`; returns `iat`.
fn check_jwt(public_key: &[u8], authorization: &str) -> Result<i64, String> {
    let jwt = authorization
        .strip_prefix("bearer ")
        .ok_or_else(|| format!("authorization {authorization:?}"))?;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts[..] else {
        return Err("the JWT has not three parts".into());
    };
    let decode = |p: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD.decode(p).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    let header = decode(h)?;
    let claims = decode(c)?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|e| e.to_string())?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| "the JWT signature does not verify".to_owned())?;
    if header != json!({"alg": "ES256", "kid": KEY_ID}) {
        return Err(format!("JWT header {header}"));
    }
    if claims["iss"] != TEAM_ID {
        return Err(format!("JWT claims {claims}"));
    }
    claims["iat"]
        .as_i64()
        .ok_or_else(|| format!("JWT without iat: {claims}"))
}

// ---------------------------------------------------------------- webhook receiver

const SECRET: &str = "webhook-test-secret";

#[derive(Default)]
struct HookState {
    seen: Mutex<Vec<Value>>,
    violations: Mutex<Vec<String>>,
    /// "web-503" is answered 503 with `Retry-After: 2` while this is set.
    down: AtomicBool,
}

struct MockHook {
    state: Arc<HookState>,
    url: String,
}

impl MockHook {
    async fn start() -> Self {
        let state = Arc::new(HookState::default());
        let router = axum::Router::new()
            .route("/push", axum::routing::post(hook_handler))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            state,
            url: format!("http://{addr}/push"),
        }
    }

    fn configure(&self, c: &mut api::config::Config) {
        c.push.webhook_url = Some(self.url.clone());
        c.push.webhook_secret = Some(api::config::Secret::new(SECRET));
    }

    fn seen(&self) -> Vec<Value> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn hook_handler(
    State(s): State<Arc<HookState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    use hmac::{Hmac, KeyInit, Mac};
    let got = headers
        .get("x-dapi-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|v| hex::decode(v).ok())
        .unwrap_or_default();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    if mac.verify_slice(&got).is_err() {
        s.violations
            .lock()
            .unwrap()
            .push("bad X-Dapi-Signature".into());
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let stamp = headers
        .get("x-dapi-timestamp")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if stamp.is_none() || stamp != v["sent_at"].as_i64() {
        s.violations
            .lock()
            .unwrap()
            .push(format!("timestamp {stamp:?} vs body {v}"));
    }
    let token = v["push_token"].as_str().unwrap_or_default().to_owned();
    if token == "web-503" && s.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "2")]).into_response();
    }
    s.seen.lock().unwrap().push(v);
    if token == "web-gone" {
        return StatusCode::GONE.into_response();
    }
    StatusCode::OK.into_response()
}

// ---------------------------------------------------------------- helpers

async fn register(app: &TestApp, uid: &str, platform: &str, token: &str, voip: bool) {
    app.ok(
        "/dapi/device/register",
        json!({"uid": uid, "platform": platform, "push_token": token, "voip": voip}),
    )
    .await;
}

async fn call(app: &TestApp, src: &str, dst: &[&str], extra: &str) -> String {
    app.ok(
        "/dapi/call/user",
        json!({"src_uid": src, "dst_uid": dst, "extra_msg": extra}),
    )
    .await["channel"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn jobs(app: &TestApp, channel: &str) -> Vec<PushJob> {
    app.state
        .store()
        .push_jobs(&common::channel(channel))
        .await
        .unwrap()
}

async fn spawn_with_apns(backend: &'static str, clock: &Clock, apns: &MockApns) -> TestApp {
    spawn_app_with(backend, clock.clone(), |c| {
        jwt_mode(c);
        apns.configure(c);
    })
    .await
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn devices_register_move_and_unregister_with_errors_naming_the_field() {
    for backend in backends() {
        let app = spawn_app_with(backend, Clock::system(), jwt_mode).await;
        let d = app
            .ok(
                "/dapi/device/register",
                json!({"uid": 42, "platform": "ios", "push_token": OK, "voip": true}),
            )
            .await;
        assert_eq!(
            (
                d["uid"].as_str(),
                d["platform"].as_str(),
                d["voip"].as_bool()
            ),
            (Some("42"), Some("ios"), Some(true)),
            "[{backend}] {d}"
        );
        // idempotent, and the same token registered by another uid moves to it
        register(&app, "42", "ios", OK, true).await;
        register(&app, "43", "ios", OK, true).await;
        let store = app.state.store();
        let uid = |s: &str| api::domain::Uid::parse(s).unwrap();
        assert!(store.devices(&uid("42")).await.unwrap().is_empty());
        assert_eq!(store.devices(&uid("43")).await.unwrap().len(), 1);

        let m = app
            .err(
                "/dapi/device/register",
                json!({"uid": "42", "platform": "windows", "push_token": "x"}),
                400,
                "invalid_field",
            )
            .await;
        assert!(m.contains("platform"), "{m}");
        let m = app
            .err(
                "/dapi/device/register",
                json!({"uid": "42", "platform": "ios", "push_token": "not hex", "voip": true}),
                400,
                "invalid_field",
            )
            .await;
        assert!(m.contains("push_token"), "{m}");
        let m = app
            .err(
                "/dapi/device/register",
                json!({"platform": "web", "push_token": "x"}),
                400,
                "missing_field",
            )
            .await;
        assert!(m.contains("uid"), "{m}");
        let m = app
            .err(
                "/dapi/device/register",
                json!({"uid": "42", "platform": "web", "push_token": "x", "voip": "yes"}),
                400,
                "invalid_field",
            )
            .await;
        assert!(m.contains("voip"), "{m}");

        let r = app
            .ok(
                "/dapi/device/unregister",
                json!({"uid": "43", "push_token": OK}),
            )
            .await;
        assert_eq!(r, json!({"removed": true}));
        let r = app
            .ok(
                "/dapi/device/unregister",
                json!({"uid": "43", "push_token": OK}),
            )
            .await;
        assert_eq!(r, json!({"removed": false}));
        app.err(
            "/dapi/device/unregister",
            json!({"uid": "43"}),
            400,
            "missing_field",
        )
        .await;
    }
}

#[tokio::test]
async fn a_call_sends_one_voip_push_with_provider_token_headers_and_payload() {
    for backend in backends() {
        let apns = MockApns::start().await;
        let clock = Clock::manual(T0);
        let app = spawn_with_apns(backend, &clock, &apns).await;
        register(&app, "B", "ios", OK, true).await;
        register(&app, "A", "ios", "00ff00ff", true).await; // the caller: no push
        let ch = call(&app, "A", &["B"], "hello").await;
        // call/user only wrote the outbox
        assert!(apns.seen().is_empty());
        let r = deliver_once(&app.state).await.unwrap();
        assert_eq!(r.sent.len(), 1, "[{backend}] {r:?}");
        let seen = apns.seen();
        assert_eq!(seen.len(), 1, "[{backend}]");
        assert_eq!(seen[0].token, OK);
        assert_eq!(
            seen[0].payload,
            json!({"type": "call", "channel": ch, "src_uid": "A", "uid": "B", "extra_msg": "hello"})
        );
        // expires when the call rings out (60 s); the token is issued now
        assert_eq!(seen[0].expiration, T0 / 1000 + 60);
        assert_eq!(seen[0].iat, T0 / 1000);
        // delivered once
        assert_eq!(deliver_once(&app.state).await.unwrap().handled(), 0);
        clock.advance_ms(10_000);
        assert_eq!(deliver_once(&app.state).await.unwrap().handled(), 0);
        assert_eq!(apns.hits(OK), 1);
        let j = jobs(&app, &ch).await;
        assert_eq!(
            (j.len(), j[0].kind, j[0].state, j[0].attempts),
            (1, PushKind::Call, PushJobState::Sent, 1)
        );
        // the provider token is cached, then replaced after 50 minutes
        call(&app, "A", &["B"], "again").await;
        deliver_once(&app.state).await.unwrap();
        clock.advance_ms(50 * 60 * 1000);
        call(&app, "A", &["B"], "later").await;
        deliver_once(&app.state).await.unwrap();
        let iats: Vec<i64> = apns.seen().iter().map(|s| s.iat).collect();
        assert_eq!(
            iats,
            vec![T0 / 1000, T0 / 1000, T0 / 1000 + 10 + 50 * 60],
            "[{backend}]"
        );
        apns.assert_no_violations();
    }
}

#[tokio::test]
async fn apns_410_and_bad_device_token_remove_the_device() {
    for backend in backends() {
        let apns = MockApns::start().await;
        let clock = Clock::manual(T0);
        let app = spawn_with_apns(backend, &clock, &apns).await;
        register(&app, "B", "ios", GONE, true).await;
        register(&app, "B", "ios", BAD, true).await;
        register(&app, "B", "ios", OK, true).await;
        let ch = call(&app, "A", &["B"], "x").await;
        let r = deliver_once(&app.state).await.unwrap();
        assert_eq!(
            (r.sent.len(), r.dropped.len(), r.devices_removed),
            (1, 2, 2),
            "[{backend}] {r:?}"
        );
        let uid = api::domain::Uid::parse("B").unwrap();
        let left: Vec<String> = app
            .state
            .store()
            .devices(&uid)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.push_token)
            .collect();
        assert_eq!(left, vec![OK.to_owned()], "[{backend}]");
        for j in jobs(&app, &ch).await {
            if j.push_token == OK {
                assert_eq!(j.state, PushJobState::Sent);
            } else {
                assert_eq!(j.state, PushJobState::Dropped, "{j:?}");
                let e = j.last_error.unwrap_or_default();
                assert!(e.contains("invalid token"), "{e}");
            }
        }
        // the next call pushes only to the device left; nothing is retried
        clock.advance_ms(60_000);
        let ch2 = call(&app, "A", &["B"], "y").await;
        assert_eq!(jobs(&app, &ch2).await.len(), 1);
        deliver_once(&app.state).await.unwrap();
        assert_eq!((apns.hits(GONE), apns.hits(BAD)), (1, 1), "[{backend}]");
        apns.assert_no_violations();
    }
}

#[tokio::test]
async fn apns_503_is_retried_with_backoff_until_delivered_or_dead() {
    for backend in backends() {
        let apns = MockApns::start().await;
        let clock = Clock::manual(T0);
        let app = spawn_with_apns(backend, &clock, &apns).await;
        register(&app, "B", "ios", FLAKY, true).await;
        apns.state.flaky_down.store(true, Ordering::SeqCst);

        // down for good: 5 attempts, 1 s, 2 s, 4 s, 8 s apart, then dead with the error
        let ch = call(&app, "A", &["B"], "x").await;
        let r = deliver_once(&app.state).await.unwrap();
        assert_eq!(r.retried.len(), 1, "[{backend}] {r:?}");
        for (attempt, wait) in [(2, 1000), (3, 2000), (4, 4000), (5, 8000)] {
            clock.advance_ms(wait - 1);
            assert_eq!(
                deliver_once(&app.state).await.unwrap().handled(),
                0,
                "[{backend}] not due before the backoff"
            );
            clock.advance_ms(1);
            assert_eq!(deliver_once(&app.state).await.unwrap().handled(), 1);
            let j = &jobs(&app, &ch).await[0];
            assert_eq!(j.attempts, attempt, "[{backend}]");
        }
        let j = &jobs(&app, &ch).await[0];
        assert_eq!(j.state, PushJobState::Dead, "[{backend}] {j:?}");
        let e = j.last_error.clone().unwrap_or_default();
        assert!(
            e.contains("503") && e.contains("5 attempts"),
            "[{backend}] {e}"
        );
        assert_eq!(apns.hits(FLAKY), 5);

        // down, then back: retried and delivered
        let ch = call(&app, "A", &["B"], "y").await;
        let r = deliver_once(&app.state).await.unwrap();
        assert_eq!(r.retried.len(), 1, "[{backend}] {r:?}");
        let j = &jobs(&app, &ch).await[0];
        assert_eq!(j.state, PushJobState::Queued);
        apns.state.flaky_down.store(false, Ordering::SeqCst);
        clock.advance_ms(1000);
        let r = deliver_once(&app.state).await.unwrap();
        assert_eq!(r.sent.len(), 1, "[{backend}] {r:?}");
        let j = &jobs(&app, &ch).await[0];
        assert_eq!((j.state, j.attempts), (PushJobState::Sent, 2));
        assert_eq!(apns.seen_for(FLAKY).len(), 1, "[{backend}] delivered once");
        apns.assert_no_violations();
    }
}

#[tokio::test]
async fn a_call_that_ends_unanswered_sends_a_cancel_push() {
    for backend in backends() {
        let apns = MockApns::start().await;
        let clock = Clock::manual(T0);
        let app = spawn_app_with(backend, clock.clone(), |c| {
            jwt_mode(c);
            apns.configure(c);
            c.calls.ring_timeout = Duration::from_secs(60);
            c.calls.heartbeat_timeout = Duration::from_secs(3600);
        })
        .await;
        register(&app, "B", "ios", OK, true).await;

        // the caller cancels (1000) after the phone rang
        let ch = call(&app, "A", &["B"], "first").await;
        deliver_once(&app.state).await.unwrap();
        app.ok(
            "/dapi/call/event",
            json!({"uid": "A", "channel": ch, "code": 1000}),
        )
        .await;
        let r = deliver_once(&app.state).await.unwrap();
        assert_eq!(r.sent.len(), 1, "[{backend}] {r:?}");
        let cancel = apns.seen().last().unwrap().payload.clone();
        assert_eq!(
            cancel,
            json!({"type": "cancel", "channel": ch, "src_uid": "A", "uid": "B", "extra_msg": "first"})
        );

        // nobody answers: the sweeper's ring timeout ends it as 1001, and cancels
        let ch2 = call(&app, "A", &["B"], "second").await;
        deliver_once(&app.state).await.unwrap();
        clock.advance_ms(61_000);
        let s = sweep_once(&app.state).await.unwrap();
        assert_eq!(s.rang_out, vec![ch2.clone()], "[{backend}]");
        deliver_once(&app.state).await.unwrap();
        let last = apns.seen().last().unwrap().payload.clone();
        assert_eq!(
            (last["type"].as_str(), last["channel"].as_str()),
            (Some("cancel"), Some(ch2.as_str()))
        );

        // ended before the push went out: neither rings nor cancels
        let before = apns.seen().len();
        let ch3 = call(&app, "A", &["B"], "third").await;
        app.ok(
            "/dapi/call/event",
            json!({"uid": "A", "channel": ch3, "code": 1000}),
        )
        .await;
        assert_eq!(deliver_once(&app.state).await.unwrap().handled(), 0);
        assert_eq!(apns.seen().len(), before, "[{backend}]");
        let j = jobs(&app, &ch3).await;
        assert_eq!(
            (j.len(), j[0].state),
            (1, PushJobState::Dropped),
            "[{backend}]"
        );

        // answered: no cancel
        let ch4 = call(&app, "A", &["B"], "fourth").await;
        deliver_once(&app.state).await.unwrap();
        app.ok(
            "/dapi/call/event",
            json!({"uid": "B", "channel": ch4, "code": 1}),
        )
        .await;
        for uid in ["A", "B"] {
            app.ok(
                "/dapi/call/event",
                json!({"uid": uid, "channel": ch4, "code": 2}),
            )
            .await;
        }
        assert_eq!(deliver_once(&app.state).await.unwrap().handled(), 0);
        assert_eq!(jobs(&app, &ch4).await.len(), 1, "[{backend}]");
        apns.assert_no_violations();
    }
}

#[tokio::test]
async fn the_webhook_gets_signed_pushes_for_other_platforms() {
    for backend in backends() {
        let apns = MockApns::start().await;
        let hook = MockHook::start().await;
        let clock = Clock::manual(T0);
        let app = spawn_app_with(backend, clock.clone(), |c| {
            jwt_mode(c);
            apns.configure(c);
            hook.configure(c);
        })
        .await;
        register(&app, "B", "android", "fcm:APA91-token", false).await;
        register(&app, "C", "web", "web-1", false).await;
        register(&app, "C", "web", "web-gone", false).await;
        register(&app, "D", "ios", "0123abcd", false).await; // not VoIP: webhook
        register(&app, "D", "ios", OK, true).await; // VoIP: APNs
        let ch = call(&app, "A", &["B", "C", "D"], "hi").await;
        let r = deliver_once(&app.state).await.unwrap();
        assert_eq!(
            (r.sent.len(), r.dropped.len(), r.devices_removed),
            (4, 1, 1),
            "[{backend}] {r:?}"
        );
        assert_eq!(apns.seen().len(), 1, "[{backend}] one VoIP push");
        let mut got: Vec<(String, String, String)> = hook
            .seen()
            .iter()
            .map(|v| {
                assert_eq!(v["channel"], ch.as_str());
                assert_eq!(v["type"], "call");
                assert_eq!(v["src_uid"], "A");
                assert_eq!(v["extra_msg"], "hi");
                (
                    v["uid"].as_str().unwrap_or_default().to_owned(),
                    v["platform"].as_str().unwrap_or_default().to_owned(),
                    v["push_token"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        got.sort();
        let want: Vec<(String, String, String)> = [
            ("B", "android", "fcm:APA91-token"),
            ("C", "web", "web-1"),
            ("C", "web", "web-gone"),
            ("D", "ios", "0123abcd"),
        ]
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
        assert_eq!(got, want, "[{backend}]");
        // 410 from the webhook removes that device
        let uid = api::domain::Uid::parse("C").unwrap();
        let left: Vec<String> = app
            .state
            .store()
            .devices(&uid)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.push_token)
            .collect();
        assert_eq!(left, vec!["web-1".to_owned()], "[{backend}]");

        // 503 with Retry-After: retried after 2 s (not the 1 s backoff), then delivered
        register(&app, "E", "web", "web-503", false).await;
        hook.state.down.store(true, Ordering::SeqCst);
        let ch2 = call(&app, "A", &["E"], "retry").await;
        let r = deliver_once(&app.state).await.unwrap();
        assert_eq!(r.retried.len(), 1, "[{backend}] {r:?}");
        let j = &jobs(&app, &ch2).await[0];
        assert_eq!((j.state, j.run_at), (PushJobState::Queued, T0 + 2000));
        hook.state.down.store(false, Ordering::SeqCst);
        clock.advance_ms(1000);
        assert_eq!(deliver_once(&app.state).await.unwrap().handled(), 0);
        clock.advance_ms(1000);
        assert_eq!(deliver_once(&app.state).await.unwrap().sent.len(), 1);
        let last = hook.seen().last().unwrap().clone();
        assert_eq!(
            (last["channel"].as_str(), last["attempt"].as_i64()),
            (Some(ch2.as_str()), Some(2)),
            "[{backend}]"
        );
        assert!(hook.state.violations.lock().unwrap().is_empty());
        apns.assert_no_violations();
    }
}

#[tokio::test]
async fn without_a_provider_pushes_are_dropped_not_retried() {
    for backend in backends() {
        let clock = Clock::manual(T0);
        let app = spawn_app_with(backend, clock.clone(), jwt_mode).await;
        register(&app, "B", "ios", OK, true).await;
        register(&app, "B", "android", "fcm-1", false).await;
        let ch = call(&app, "A", &["B"], "x").await;
        let r = deliver_once(&app.state).await.unwrap();
        assert_eq!(r.dropped.len(), 2, "[{backend}] {r:?}");
        for j in jobs(&app, &ch).await {
            assert_eq!(j.state, PushJobState::Dropped);
            assert!(
                j.last_error.unwrap_or_default().contains("not configured"),
                "[{backend}]"
            );
        }
    }
}

#[tokio::test]
async fn a_hanging_provider_does_not_slow_call_user() {
    for backend in backends() {
        let apns = MockApns::start().await;
        // the real worker, on the system clock
        let app = spawn_app_with(backend, Clock::system(), |c| {
            jwt_mode(c);
            apns.configure(c);
            c.push.every = Duration::from_millis(50);
            c.push.timeout = Duration::from_secs(60);
        })
        .await;
        register(&app, "B", "ios", HANG, true).await;
        let hanging = apns.state.hanging.notified();
        let ch1 = call(&app, "A", &["B"], "one").await;
        // the worker has the push in flight, and the provider is not answering
        tokio::time::timeout(Duration::from_secs(20), hanging)
            .await
            .expect("the worker sends the push");
        // call/user, call/event and call/msg complete while the provider still hangs
        let ch2 = call(&app, "A", &["B"], "two").await;
        app.ok(
            "/dapi/call/event",
            json!({"uid": "A", "channel": ch1, "code": 1000}),
        )
        .await;
        app.ok("/dapi/call/msg", json!({"uid": "B"})).await;
        assert!(
            apns.seen_for(HANG).is_empty(),
            "[{backend}] the provider had not answered yet"
        );
        assert_eq!(
            jobs(&app, &ch2).await[0].state,
            PushJobState::Queued,
            "[{backend}]"
        );
        // the provider answers; the worker goes on with the second call's push
        apns.state.hang_released.store(true, Ordering::SeqCst);
        apns.state.hang.notify_waiters();
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if jobs(&app, &ch2).await[0].state == PushJobState::Sent {
                    return;
                }
                // polling the worker's result: it runs on its own schedule
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the second push is delivered");
        apns.assert_no_violations();
    }
}

#[tokio::test]
async fn pushes_enqueued_before_a_restart_are_delivered_after_it() {
    for backend in backends() {
        let apns = MockApns::start().await;
        let clock = Clock::manual(T0);
        let (url, dir) = fresh_db(backend).await;
        let first = spawn_app_on(backend, &url, None, clock.clone(), |c| {
            jwt_mode(c);
            apns.configure(c);
        })
        .await;
        register(&first, "B", "ios", OK, true).await;
        register(&first, "C", "ios", FLAKY, true).await;
        let ch = call(&first, "A", &["B"], "before").await;
        // C's push is claimed by a worker that dies before it reports
        let ch2 = call(&first, "A", &["C"], "claimed").await;
        let c_job = jobs(&first, &ch2).await[0].id;
        let claimed = first
            .state
            .store()
            .claim_push_jobs(T0, T0 + 30_000, 100)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2, "[{backend}]");
        // the process stops with both claims held: they lapse, nothing is lost
        drop(first);
        assert!(apns.seen().is_empty());

        let second = spawn_app_on(backend, &url, dir, clock.clone(), |c| {
            jwt_mode(c);
            apns.configure(c);
        })
        .await;
        assert_eq!(deliver_once(&second.state).await.unwrap().handled(), 0);
        clock.advance_ms(30_000);
        let r = deliver_once(&second.state).await.unwrap();
        assert_eq!(r.sent.len(), 2, "[{backend}] {r:?}");
        assert!(r.sent.contains(&c_job));
        let tokens: Vec<String> = apns.seen().into_iter().map(|s| s.token).collect();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.contains(&OK.to_owned()) && tokens.contains(&FLAKY.to_owned()));
        assert_eq!(jobs(&second, &ch).await[0].state, PushJobState::Sent);
        apns.assert_no_violations();
    }
}

#[tokio::test]
async fn a_queued_push_survives_a_restart_unclaimed() {
    for backend in backends() {
        let apns = MockApns::start().await;
        let clock = Clock::manual(T0);
        let (url, dir) = fresh_db(backend).await;
        let first = spawn_app_on(backend, &url, None, clock.clone(), |c| {
            jwt_mode(c);
            apns.configure(c);
        })
        .await;
        register(&first, "B", "ios", OK, true).await;
        let ch = call(&first, "A", &["B"], "before").await;
        drop(first);
        let second = spawn_app_on(backend, &url, dir, clock.clone(), |c| {
            jwt_mode(c);
            apns.configure(c);
        })
        .await;
        let r = deliver_once(&second.state).await.unwrap();
        assert_eq!(r.sent.len(), 1, "[{backend}] {r:?}");
        assert_eq!(apns.seen()[0].payload["channel"], ch.as_str());
        apns.assert_no_violations();
    }
}
