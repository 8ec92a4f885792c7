//! `spawn_app()`: the real API on port 0 with a fresh database, for each backend.
#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test
#![allow(dead_code)]

pub mod agent_ws;
pub mod robot;
pub mod rtc_client;

use std::time::Duration;

use api::clock::Clock;
use api::config::Config;
use api::{AppState, Application};
use serde_json::Value;
pub use test_support::TempDir;

/// A running API.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    pub backend: &'static str,
    /// In jwt mode with an HS256 secret: `post`/`ok`/`err` sign each request as the
    /// body's `uid` (or `src_uid`).
    pub jwt_secret: Option<String>,
    _dir: Option<TempDir>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A channel name the test knows is valid (one the API handed out), as the store takes it.
pub fn channel(name: &str) -> api::domain::ChannelName {
    api::domain::ChannelName::parse(name).unwrap()
}

/// The backends to run against: SQLite always, PostgreSQL when TEST_DATABASE_URL is set.
pub fn backends() -> Vec<&'static str> {
    let mut v = vec!["sqlite"];
    if std::env::var("TEST_DATABASE_URL").is_ok() {
        v.push("postgres");
    }
    v
}

pub async fn spawn_app(backend: &'static str) -> TestApp {
    spawn_app_with(backend, Clock::system(), |_| {}).await
}

/// A fresh database URL for `backend` (and the temp dir that holds it for SQLite).
pub async fn fresh_db(backend: &'static str) -> (String, Option<TempDir>) {
    match backend {
        "postgres" => {
            let base = std::env::var("TEST_DATABASE_URL").unwrap();
            (
                api::store::testdb::fresh_postgres(&base).await.unwrap(),
                None,
            )
        }
        _ => {
            let d = TempDir::new("dapi-http");
            (d.sqlite_url("dapi.db"), Some(d))
        }
    }
}

pub async fn spawn_app_with(
    backend: &'static str,
    clock: Clock,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let (url, dir) = fresh_db(backend).await;
    spawn_app_on(backend, &url, dir, clock, tweak).await
}

/// The API on an existing database (restarts, several instances on one database).
pub async fn spawn_app_on(
    backend: &'static str,
    url: &str,
    dir: Option<TempDir>,
    clock: Clock,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let mut config = Config::for_tests(url);
    tweak(&mut config);
    let jwt_secret = config
        .auth
        .is_jwt()
        .then(|| {
            config
                .auth
                .jwt_secret
                .as_ref()
                .map(|s| s.expose().to_owned())
        })
        .flatten();
    let app = Application::build_with_clock(config, clock).await.unwrap();
    let addr = app.local_addr().unwrap();
    let state = app.state().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        state,
        backend,
        jwt_secret,
        _dir: dir,
        _shutdown: tx,
        server,
    }
}

/// An HS256 secret for jwt-mode tests (32 bytes or more, as `DAPI_JWT_SECRET` requires).
pub const JWT_SECRET: &str = "test-app-backend-shared-secret-0123456789";

/// `DAPI_AUTH=jwt` with [`JWT_SECRET`]: the [`TestApp`] then signs its requests.
pub fn jwt_mode(c: &mut Config) {
    c.auth = api::config::AuthConfig::jwt(api::config::Secret::new(JWT_SECRET));
}

/// An HS256 app JWT for `sub`, valid for an hour (system time, as the API checks it).
pub fn jwt_for(secret: &str, sub: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": sub, "exp": now + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Two instances on one fresh PostgreSQL database, or `None` (with a message) without
/// `TEST_DATABASE_URL`.
pub async fn two_on_postgres(
    test: &str,
    tweak: impl Fn(&mut Config),
) -> Option<(TestApp, TestApp)> {
    if std::env::var("TEST_DATABASE_URL").is_err() {
        println!("SKIPPED {test}: needs PostgreSQL; set TEST_DATABASE_URL");
        return None;
    }
    let (url, _) = fresh_db("postgres").await;
    let a = spawn_app_on("postgres", &url, None, Clock::system(), &tweak).await;
    let b = spawn_app_on("postgres", &url, None, Clock::system(), &tweak).await;
    Some((a, b))
}

impl TestApp {
    /// Stops the server as a crash would: its tasks are dropped mid-flight, nothing is
    /// said to anyone (sockets it accepted stay open, unattended).
    pub fn crash(&self) {
        self.server.abort();
    }

    /// Stops the server cleanly (as on SIGTERM) and waits until it has.
    pub async fn stop(self) {
        let TestApp {
            _shutdown, server, ..
        } = self;
        drop(_shutdown);
        let _ = server.await;
    }

    /// The `/rtc` WebSocket URL.
    pub fn rtc_url(&self) -> String {
        format!("{}/rtc", self.base.replace("http://", "ws://"))
    }

    /// A token to join `channel` as `uid`.
    pub fn rtc_token(&self, channel: &str, uid: &str) -> String {
        let now = self.state.clock().now_secs();
        self.state.tokens().mint(channel, uid, now).unwrap()
    }

    /// POSTs a JSON value; returns status and body. In jwt mode it is signed as the body's
    /// `uid` or `src_uid` (`anonymous` when it has neither).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let bearer = self.jwt_secret.as_deref().map(|secret| {
            let sub = match body.get("uid").or_else(|| body.get("src_uid")) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => "anonymous".to_owned(),
            };
            jwt_for(secret, &sub)
        });
        self.send(path, body.to_string(), bearer).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.send(path, body, None).await
    }

    async fn send(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        bearer: Option<String>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
        (status, v)
    }

    /// POSTs and asserts success; returns `data`.
    pub async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.post(path, body.clone()).await;
        assert_eq!(status, 200, "[{}] {path} {body} -> {v}", self.backend);
        assert_eq!(v["success"], true, "{v}");
        v["data"].clone()
    }

    /// POSTs and asserts an error with `status` and `code`; returns the message.
    pub async fn err(&self, path: &str, body: Value, status: u16, code: &str) -> String {
        let (s, v) = self.post(path, body.clone()).await;
        assert_eq!(s, status, "[{}] {path} {body} -> {v}", self.backend);
        assert_eq!(v["success"], false, "{v}");
        assert_eq!(v["data"], Value::Null, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        v["error"]["message"].as_str().unwrap().to_owned()
    }
}
