//! The call-control API: `/dapi` endpoints, Agora-compatible tokens, the `/rtc` channel
//! signaling and the robot dispatcher, over SQLite or PostgreSQL.
//!
//! ```text
//!  HTTP /dapi/*  --> routes::dapi --> Store (one transaction per request)
//!                         |              |-- call_state (sans-IO state machine)
//!                         |              |-- push_jobs (outbox, same transaction)
//!                         +--> token (mint)
//!  push worker   --> Store (claim due jobs) --> APNs (HTTP/2) / webhook
//!  WS /rtc       --> rtc (hub: rooms, presence, relay)  --> token (verify)
//!                         `-- PostgreSQL: bus to the other instances (LISTEN/NOTIFY)
//! ```
//!
//! [`Application::build`] binds the listener (port 0 allowed) and connects the store;
//! [`Application::run_until`] serves until a shutdown future resolves. The binary and the
//! tests start the same `Application`.

pub mod auth;
pub mod call_state;
pub mod calls;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod control_relay;
pub mod device;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod push;
pub mod rate_limit;
pub mod robot_options;
pub mod routes;
pub mod rtc;
pub mod rtc_wire;
pub mod store;
pub mod sweeper;
pub mod telemetry;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::config::Config;
use crate::store::Store;
use crate::token::TokenIssuer;

/// Shared state of the request handlers.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Store,
    tokens: TokenIssuer,
    clock: Clock,
    known_channels: routes::ChannelCache,
    dispatcher: dispatch::Dispatcher,
    rtc: rtc::Rtc,
    auth: auth::AuthMode,
    limits: rate_limit::Limits,
    push: push::Pusher,
    control: control_relay::ControlRelay,
    bridges: robot_options::Bridges,
}

impl AppState {
    /// Configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
    /// Token minting and verification.
    pub fn tokens(&self) -> &TokenIssuer {
        &self.inner.tokens
    }
    /// The time source.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }
    pub(crate) fn known_channels(&self) -> &routes::ChannelCache {
        &self.inner.known_channels
    }
    /// How requests are authenticated.
    pub fn auth(&self) -> &auth::AuthMode {
        &self.inner.auth
    }
    /// Rate limits of this instance.
    pub fn limits(&self) -> &rate_limit::Limits {
        &self.inner.limits
    }
    /// The robot dispatcher of this instance.
    pub fn dispatcher(&self) -> &dispatch::Dispatcher {
        &self.inner.dispatcher
    }
    /// A robot session was queued or asked to leave: wake this instance's dispatcher
    /// and, on PostgreSQL, every other instance's.
    pub async fn robot_changed(&self) {
        self.dispatcher().wake();
        if let Err(e) = self.store().notify_dispatch().await {
            tracing::warn!(error = %e, "could not notify other instances");
        }
    }
    /// The `/rtc` channel hub: kick a uid, ask who is present.
    pub fn rtc(&self) -> &rtc::Rtc {
        &self.inner.rtc
    }
    /// Whether `uid` is an active member of the call of `channel` now (`None`: no such
    /// channel): [`store::Store::is_member`] with the clock and, as the grace of the
    /// caller of a rejected call, `DAPI_HEARTBEAT_TIMEOUT`. What `call/token`,
    /// `invite/robot` and the `/rtc` join require in jwt mode.
    pub async fn is_active_member(
        &self,
        channel: &domain::ChannelName,
        uid: &domain::Uid,
    ) -> Result<Option<bool>, store::StoreError> {
        let grace_ms = config::millis_i64(self.config().calls.heartbeat_timeout);
        let since = self.clock().now_ms().saturating_sub(grace_ms);
        self.store().is_member(channel, uid, since).await
    }

    /// Push providers and the worker's wake-up.
    pub fn push(&self) -> &push::Pusher {
        &self.inner.push
    }
    /// Robot controls waiting for their agents' answers.
    pub fn control(&self) -> &control_relay::ControlRelay {
        &self.inner.control
    }
    /// The media bridge targets of `DAPI_BRIDGES`.
    pub fn bridges(&self) -> &robot_options::Bridges {
        &self.inner.bridges
    }
}

/// A built server: listener bound, store connected and migrated.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Checks the configuration ([`Config::validate`]), connects the store, resolves
    /// credentials and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Clock::system()).await
    }

    /// As [`Application::build`], with an injected clock (tests).
    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<Self> {
        config.validate()?;
        // Install the metrics recorder before anything counts.
        let _ = metrics::handle();
        let database_url = &config.server.database_url;
        let store = Store::connect(database_url)
            .await
            .with_context(|| format!("opening the {} database", backend_name(database_url)))?;
        let (app_id, certificate) = match (&config.tokens.app_id, &config.tokens.app_certificate) {
            (Some(id), Some(cert)) => (id.clone(), cert.expose().to_owned()),
            (None, None) => {
                let generated = (random_hex32(), random_hex32());
                let (id, cert) = store.dev_credentials(generated).await?;
                tracing::warn!(
                    app_id = %id,
                    "DAPI_APP_ID and DAPI_APP_CERTIFICATE are not set: using a development pair kept in the database; set both in production"
                );
                (id, cert)
            }
            // `validate`: both or neither
            _ => anyhow::bail!("set both DAPI_APP_ID and DAPI_APP_CERTIFICATE, or neither"),
        };
        let tokens = TokenIssuer::new(
            app_id,
            certificate,
            config.tokens.version,
            config.tokens.ttl_secs(),
        );
        // On PostgreSQL several instances may serve one channel: they meet on the bus.
        let bus = matches!(store, Store::Postgres(_)).then(rtc_wire::InstanceId::random);
        let rtc = rtc::Rtc::new(&config, tokens.clone(), clock.clone(), bus)?;
        let push = push::Pusher::from_config(&config.push)?;
        let bridges = robot_options::Bridges::from_config(config.dispatch.bridges.as_ref())?;
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let auth = auth::AuthMode::from_config(&config.auth)?;
        let limits = rate_limit::Limits::from_config(&config.limits);
        let dispatcher = dispatch::Dispatcher::new(
            config.dispatch.lease,
            config.dispatch.offer_timeout,
            config
                .dispatch
                .poll
                .max(std::time::Duration::from_millis(10)),
        );
        let state = AppState {
            inner: Arc::new(Inner {
                config,
                store,
                tokens,
                clock,
                known_channels: routes::ChannelCache::default(),
                dispatcher,
                auth,
                limits,
                rtc,
                push,
                control: control_relay::ControlRelay::new(),
                bridges,
            }),
        };
        routes::admin::seed_default_asset(&state).await?;
        Ok(Self { listener, state })
    }

    /// The bound address (with the real port when 0 was asked).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state (tests use it to reach the store).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        let router = routes::router(self.state.clone());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let dispatcher = tokio::spawn(dispatch::Dispatcher::run(
            self.state.clone(),
            stopped(stop_rx.clone()),
        ));
        let sweeper = tokio::spawn(sweeper::run(self.state.clone(), stopped(stop_rx.clone())));
        let pusher = tokio::spawn(push::run(self.state.clone(), stopped(stop_rx.clone())));
        let listener_task = tokio::spawn(dispatch::listen(
            self.state.clone(),
            stopped(stop_rx.clone()),
        ));
        let control_task = tokio::spawn(control_relay::listen(
            self.state.clone(),
            stopped(stop_rx.clone()),
        ));
        let rtc_tasks = rtc::RtcTasks::start(&self.state).await;
        // The line operators and tests wait for: printed once the socket accepts.
        println!("listening on http://{addr}");
        tracing::info!(%addr, backend = self.state.store().backend(), "listening");
        let header_read_timeout =
            (self.state.config().server.header_read_timeout).max(std::time::Duration::from_secs(1));
        serve(self.listener, router, header_read_timeout, shutdown).await;
        let _ = stop_tx.send(true);
        let _ = dispatcher.await;
        let _ = listener_task.await;
        let _ = sweeper.await;
        let _ = pusher.await;
        let _ = control_task.await;
        rtc_tasks.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish (upgraded WebSockets are on their own: the `/rtc` and `/agent` tasks close them).
///
/// What `axum::serve` does, with one thing more: hyper's header read timeout. A client
/// that sends half a request header (or keeps an idle keep-alive connection open) is
/// disconnected after `header_read_timeout` instead of holding a socket for ever.
/// HTTP/1.1 only: TLS and HTTP/2 end at the reverse proxy in front (docs/security.md).
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    header_read_timeout: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    // Shutdown: `stop` tells every connection to finish its request in flight and close;
    // each connection task holds a clone of `open`, so `closed.recv()` returns once the
    // last one is gone.
    let (stop, _) = tokio::sync::watch::channel(false);
    let (open, mut closed) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum::serve does,
                    // rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(req.map(axum::body::Body::new))
            });
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stopping = stop.subscribe();
        let open = open.clone();
        tokio::spawn(async move {
            let _open = open;
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stopping.wait_for(|s| *s) => None,
            };
            let result = match done {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection closed with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(open);
    let _ = closed.recv().await;
}

fn backend_name(url: &str) -> &'static str {
    if url.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    }
}

pub(crate) fn random_hex32() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}
