//! The robot agent: takes robot sessions from the API over the agent link, joins each
//! session's channel over WebRTC like an app, and plays prepared audio into it.
//!
//! ```text
//!        API  ──/agent (WS)──►  link ── offer/leave/drain ──► session (one task each)
//!         ▲                       ▲  status, renew                │
//!         │ GET /agent/audio/{n}  │                               ├─► assets: fetch (ETag) ─► audio::PreparedCache
//!         └───────────────────────┼───────────────────────────────┤
//!                /rtc (WS) ◄──────┼──── join, signal ─────────────┤
//!                                 │                               ├─► pacer (sans-IO, 20 ms deadlines)
//!   listeners ◄══ Opus/SRTP ══════╪═══ rtc::Listener per peer ◄───┘
//!                                 │
//!   health port: /healthz /readyz /metrics ◄── metrics (atomics)
//! ```
//!
//! Modules, one concept each: [`link`] (the agent link client, leases, drain, reconnect),
//! [`session`] (one robot session: a sans-IO core with its leave rules, the playlist, and
//! a short driver), [`pacer`] (which frame is due;
//! no clock inside), [`rtc`] (the only module importing `webrtc`/`rtc`: the
//! [`rtc::RtcTransport`] trait and its webrtc-crate implementation), [`signaling`] (the
//! `/rtc` socket), [`assets`] (audio by name), [`bridge`] (the media bridge to an operator's
//! program: its wire messages, redial rules and socket task), [`error`] (the crate's one error enum),
//! [`metrics`] and [`health`]; with the `test-util` feature, `test_util` (a fake
//! transport and a fake `/rtc` for whole-session tests). The binary
//! (`main.rs`) parses [`Config`], starts tracing, and runs [`Agent`] until SIGTERM/SIGINT,
//! which drains. See `docs/robot-agent.md`.

#![warn(missing_docs)]

pub mod assets;
pub mod bridge;
pub mod error;
pub mod health;
pub mod link;
pub mod metrics;
pub mod pacer;
pub mod recordings;
pub mod rtc;
pub mod session;
pub mod signaling;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use error::AgentError;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use protocol::Secret;

/// Command line and environment of `robot-agent`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "robot-agent",
    version,
    about = "Takes robot sessions from the dapi API and plays prepared audio into channels over WebRTC."
)]
pub struct Config {
    /// Base URL of the API (`http://host:port`). Also read from DAPI_API_URL.
    #[arg(long, env = "ROBOT_API_URL")]
    pub api_url: Option<String>,
    /// The agent key the API was started with (DAPI_AGENT_KEY).
    #[arg(long, env = "DAPI_AGENT_KEY", hide_env_values = true)]
    pub agent_key: Secret,
    /// Sessions this agent holds at once.
    #[arg(long, env = "ROBOT_CAPACITY", default_value_t = 8)]
    pub capacity: u32,
    /// Stable id of this agent (default: hostname-pid).
    #[arg(long, env = "ROBOT_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Directory for fetched assets and prepared audio (default: $XDG_CACHE_HOME/dapi-robot,
    /// else ~/.cache/dapi-robot).
    #[arg(long, env = "ROBOT_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Address WebRTC UDP sockets bind: 0.0.0.0 (every non-loopback interface) or one
    /// address (127.0.0.1 for tests on one machine).
    #[arg(long, env = "ROBOT_BIND_IP", default_value = "0.0.0.0")]
    pub bind_ip: IpAddr,
    /// Where the robot's offer puts its ICE candidates: `trickle` (default: sent as `signal`
    /// candidates once the answer is set, which avoids a 500 ms stall with peers that check
    /// at once; docs/decisions.md) or `inline` (inside the offer's SDP, for a peer that
    /// cannot take trickled candidates although docs/rtc-protocol.md requires it).
    #[arg(long, env = "ROBOT_OFFER_CANDIDATES", default_value = "trickle", value_parser = ["trickle", "inline"])]
    pub offer_candidates: String,
    /// How listeners reach the network: `webrtc` (default: one webrtc-rs PeerConnection, its
    /// own driver task and UDP socket per listener, with STUN/TURN candidates) or `mux`
    /// (every listener on one UDP socket per address, driven by the agent over the sans-IO
    /// `rtc` core: about half the memory and CPU per listener; host candidates only, and an
    /// occasional 500 ms first-connection tail not yet fixed). docs/decisions.md, "Lighter
    /// listeners".
    #[arg(long, env = "ROBOT_RTC_DRIVER", default_value = "webrtc", value_parser = ["mux", "webrtc"])]
    pub rtc_driver: String,
    /// UDP port of the `mux` driver's socket (0: an ephemeral one).
    #[arg(long, env = "ROBOT_RTC_PORT", default_value_t = 0)]
    pub rtc_port: u16,
    /// Address of the health port (/healthz, /readyz, /metrics); off when unset. Port 0
    /// picks one; the agent prints `health listening on http://ADDR`.
    #[arg(long, env = "ROBOT_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Seconds a drain (SIGTERM) lets sessions finish before handing them back.
    #[arg(long, env = "ROBOT_DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout: u64,
    /// Seconds the robot stays in a channel with no person in it.
    #[arg(long, env = "ROBOT_LEAVE_GRACE", default_value_t = 10)]
    pub leave_grace: u64,
    /// Seconds a session keeps trying to join its channel again after losing the `/rtc`
    /// socket (an API restart); the audio goes on meanwhile. Past it the session fails and
    /// the API offers it again from its last position.
    #[arg(long, env = "ROBOT_REJOIN_SECONDS", default_value_t = 30)]
    pub rejoin_seconds: u64,
    /// Milliseconds the robot stays after the audio ended (the listener plays out its buffer).
    #[arg(long, env = "ROBOT_TAIL_MS", default_value_t = 1000)]
    pub tail_ms: u64,
    /// Seconds between lease renewals.
    #[arg(long, env = "ROBOT_RENEW_SECONDS", default_value_t = 3)]
    pub renew_seconds: u64,
    /// `pretty`, `json`, or `auto` (pretty on a terminal).
    #[arg(long, env = "ROBOT_LOG_FORMAT", default_value = "auto")]
    pub log_format: String,
    /// A PEM file of CA certificates trusted for `wss://` bridge programs, beside the
    /// system's roots (a program behind a private CA).
    #[arg(long, env = "ROBOT_BRIDGE_CA_FILE")]
    pub bridge_ca_file: Option<PathBuf>,
}

impl Config {
    /// The API URL from `--api-url`, ROBOT_API_URL or DAPI_API_URL.
    pub fn api_url(&self) -> anyhow::Result<String> {
        self.api_url
            .clone()
            .or_else(|| std::env::var("DAPI_API_URL").ok())
            .filter(|u| !u.trim().is_empty())
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .context("set --api-url (or ROBOT_API_URL / DAPI_API_URL), e.g. http://127.0.0.1:8080")
    }

    /// The agent id, defaulting to hostname-pid.
    pub fn agent_id(&self) -> String {
        self.agent_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "robot".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir)
                .join("dapi-robot")
        })
    }
}

/// A built agent: health port bound, caches opened; [`Agent::run`] connects and works.
pub struct Agent {
    link: link::AgentLink,
    health: Option<tokio::net::TcpListener>,
    metrics: Arc<metrics::Metrics>,
}

impl Agent {
    /// Builds the agent from its configuration.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        Self::build_with(config, None).await
    }

    /// As [`Agent::build`], with a given transport (tests, benchmarks).
    pub async fn build_with(
        config: &Config,
        transport: Option<Arc<dyn rtc::RtcTransport>>,
    ) -> anyhow::Result<Self> {
        let api_url = config.api_url()?;
        anyhow::ensure!(config.capacity > 0, "--capacity must be at least 1");
        // Parsing refuses a blank key; the surrounding blanks of an env file line are not
        // part of it.
        let agent_key = Secret::new(config.agent_key.expose().trim());
        let metrics = Arc::new(metrics::Metrics::new(config.capacity));
        let assets = Arc::new(
            assets::AssetLibrary::new(
                &api_url,
                &agent_key,
                config.cache_dir(),
                Arc::clone(&metrics),
            )
            .with_context(|| format!("opening the cache {}", config.cache_dir().display()))?,
        );
        let trickled = config.offer_candidates != "inline";
        let transport: Arc<dyn rtc::RtcTransport> = match transport {
            Some(t) => t,
            None if config.rtc_driver == "mux" => Arc::new(
                rtc::MuxTransport::bind(config.bind_ip, config.rtc_port)
                    .await
                    .context("binding the listeners' UDP socket")?
                    .with_trickled_offer(trickled),
            ),
            None => {
                Arc::new(rtc::WebrtcTransport::new(config.bind_ip).with_trickled_offer(trickled))
            }
        };
        let ctx = Arc::new(session::SessionContext {
            config: session::SessionConfig {
                leave_grace: Duration::from_secs(config.leave_grace),
                tail: Duration::from_millis(config.tail_ms),
                position_every: Duration::from_secs(2),
                rejoin_for: Duration::from_secs(config.rejoin_seconds),
            },
            signaling: Arc::new(
                signaling::RtcSignaling::new(signaling::rtc_url(&api_url))
                    .with_agent_key(agent_key.clone()),
            ),
            audio: assets,
            transport,
            metrics: Arc::clone(&metrics),
            media_clock: session::media_clock().context("starting the media clock thread")?,
            recordings: Arc::new(recordings::ApiRecordings::new(&api_url, &agent_key)?),
            recording_dir: config.cache_dir().join("recordings"),
            bridge_tls: bridge::BridgeTls::new(config.bridge_ca_file.as_deref())?,
        });
        let link = link::AgentLink::new(
            link::LinkConfig {
                api_url,
                agent_key,
                agent_id: config.agent_id(),
                capacity: config.capacity,
                renew_every: Duration::from_secs(config.renew_seconds.max(1)),
                drain_timeout: Duration::from_secs(config.drain_timeout),
            },
            ctx,
        );
        let health = match config.health_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the health port {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            link,
            health,
            metrics,
        })
    }

    /// The health port's address, when one is configured.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Works until `shutdown` resolves, then drains: no new sessions, the held ones finish
    /// or are handed back at the drain timeout.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> link::Exit {
        let health = self
            .health
            .map(|l| tokio::spawn(health::serve(l, Arc::clone(&self.metrics))));
        let exit = self.link.run(shutdown).await;
        if let Some(h) = health {
            h.abort();
        }
        exit
    }
}
