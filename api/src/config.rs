//! Typed configuration: every flag is also an environment variable.
//!
//! [`Config`] is a handful of sections, each a clap [`Args`] struct flattened into the
//! command line, so that a consumer takes the part it needs (`&config.rtc`,
//! `&config.push`) and a reader finds a setting next to its neighbours:
//!
//! ```text
//! Config ─┬─ server      listen, database, header read timeout, log format, admin key
//!         ├─ tokens      App ID and certificate, token version and lifetimes
//!         ├─ calls       time zone, ring/heartbeat/grace timeouts, sweeper, body limits
//!         ├─ auth        AuthKind::{Open, Jwt} and the JWT keys
//!         ├─ limits      per-uid and per-address request rates
//!         ├─ dispatch    robot sessions: agent key, leases, offers, attempts, bridges
//!         ├─ rtc         /rtc: ICE/TURN, peers, frames, socket caps, join and signal rates
//!         ├─ recordings  voicemail retention and size
//!         └─ push        the push worker, APNs and the webhook (push::PushConfig)
//! ```
//!
//! Values are typed where they are parsed: durations are [`Duration`]s (the environment
//! keeps its plain integers, in the unit each setting's documentation names:
//! `DAPI_RING_TIMEOUT=60` is 60 seconds, `DAPI_SWEEP_MS=500` half a second), modes are
//! enums, secrets are [`Secret`]s. Rules between settings are checked once, by
//! [`Config::validate`] (which [`Application::build`](crate::Application::build) calls
//! first); each error names the environment variable to change. Every flag, variable and
//! default is as it was when this was one flat struct (`flags_and_defaults_are_unchanged`).
//!
//! The binary parses [`Config`] with clap; tests build one with [`Config::for_tests`]
//! and change what they need (`c.rtc.join_timeout = Duration::from_secs(10)`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

pub use protocol::secret::Secret;

use crate::client_ip::TrustedProxies;
use crate::push::PushConfig;
use crate::rtc::ice::{IceConfig, IceServerList};
use crate::token::TokenVersion;

/// Everything the API server needs to run. Secrets are wrapped in [`Secret`] so they
/// never reach a log line through `Debug`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Listener, database, logging, the admin key.
    #[command(flatten)]
    pub server: ServerConfig,
    /// The App ID and certificate, and the tokens minted with them.
    #[command(flatten)]
    pub tokens: TokenConfig,
    /// Calls: time zone, timeouts, the sweeper, request limits.
    #[command(flatten)]
    pub calls: CallsConfig,
    /// How requests are authenticated.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Request rates per uid and per client address.
    #[command(flatten)]
    pub limits: LimitsConfig,
    /// Robot sessions and the agents that run them.
    #[command(flatten)]
    pub dispatch: DispatchConfig,
    /// `/rtc` channel signaling.
    #[command(flatten)]
    pub rtc: RtcConfig,
    /// Voicemail recordings.
    #[command(flatten)]
    pub recordings: RecordingsConfig,
    /// Push: the worker, APNs and the webhook (`DAPI_PUSH_*`, `DAPI_APNS_*`).
    #[command(flatten)]
    pub push: PushConfig,
}

/// The listener, the database, logging and the admin key.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free port; the real one is printed).
    #[arg(long, env = "DAPI_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Database URL: `sqlite://path.db` (default, created on first start) or
    /// `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://dapi.db")]
    pub database_url: String,

    /// Seconds a client has to send a whole request header (and an idle keep-alive
    /// connection waits for the next one) before the connection is closed.
    #[arg(long, env = "DAPI_HEADER_READ_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub header_read_timeout: Duration,

    /// Log format: `pretty` for a terminal, `json` for production, `auto` picks
    /// pretty when stderr is a terminal.
    #[arg(long, env = "DAPI_LOG_FORMAT", default_value = "auto", value_enum)]
    pub log_format: LogFormat,

    /// Key operators present on `/admin` (unset: the admin API is refused).
    #[arg(long, env = "DAPI_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<Secret>,
}

/// How log lines are written (`DAPI_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Pretty when stderr is a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The App ID and certificate, and the tokens minted with them.
#[derive(Debug, Clone, Args)]
pub struct TokenConfig {
    /// Agora-compatible App ID handed out in every token response. When unset, a
    /// development pair is generated once and kept in the database.
    #[arg(long, env = "DAPI_APP_ID")]
    pub app_id: Option<String>,

    /// App Certificate that signs tokens (32 hex characters).
    #[arg(long, env = "DAPI_APP_CERTIFICATE", hide_env_values = true)]
    pub app_certificate: Option<Secret>,

    /// Token version to mint: 006 (default) or 007.
    #[arg(
        id = "token_version",
        long = "token-version",
        env = "DAPI_TOKEN_VERSION",
        default_value = "006"
    )]
    pub version: TokenVersion,

    /// Join privilege lifetime of minted tokens, in seconds.
    #[arg(
        id = "token_ttl",
        long = "token-ttl",
        env = "DAPI_TOKEN_TTL",
        default_value = "600",
        value_parser = seconds
    )]
    pub ttl: Duration,

    /// Lifetime, in seconds, of the join token handed to a robot agent with a session: a
    /// robot cannot renew on `/rtc`, so its token must last as long as the robot may run.
    #[arg(
        id = "robot_token_ttl",
        long = "robot-token-ttl",
        env = "DAPI_ROBOT_TOKEN_TTL",
        default_value = "86400",
        value_parser = seconds
    )]
    pub robot_ttl: Duration,
}

impl TokenConfig {
    /// [`TokenConfig::ttl`] in whole seconds, as tokens carry it.
    pub fn ttl_secs(&self) -> u32 {
        u32::try_from(self.ttl.as_secs()).unwrap_or(u32::MAX)
    }

    /// [`TokenConfig::robot_ttl`] in whole seconds, as tokens carry it.
    pub fn robot_ttl_secs(&self) -> u32 {
        u32::try_from(self.robot_ttl.as_secs()).unwrap_or(u32::MAX)
    }
}

/// Calls: time zone, timeouts, the sweeper, request limits.
#[derive(Debug, Clone, Args)]
pub struct CallsConfig {
    /// IANA time zone of `createtime` and `call_time` strings.
    #[arg(long, env = "DAPI_TIMEZONE", default_value = "UTC")]
    pub timezone: chrono_tz::Tz,

    /// How far back `call/msg` looks, in seconds.
    #[arg(long, env = "DAPI_RECENT_WINDOW", default_value = "60", value_parser = seconds)]
    pub recent_window: Duration,

    /// Seconds a callee may ring before the server ends the call as 1001.
    #[arg(long, env = "DAPI_RING_TIMEOUT", default_value = "60", value_parser = seconds)]
    pub ring_timeout: Duration,

    /// Seconds without heartbeat or channel presence before a participant is dropped.
    #[arg(long, env = "DAPI_HEARTBEAT_TIMEOUT", default_value = "45", value_parser = seconds)]
    pub heartbeat_timeout: Duration,

    /// Seconds a scheduled call may fire late (after downtime) before it is marked missed.
    #[arg(long, env = "DAPI_CALLTASK_GRACE", default_value = "300", value_parser = seconds)]
    pub calltask_grace: Duration,

    /// How often the sweeper looks for due rows, in milliseconds (0: no sweeper in this
    /// process; tests drive `sweeper::sweep_once` themselves).
    #[arg(
        id = "sweep_ms",
        long = "sweep-ms",
        env = "DAPI_SWEEP_MS",
        default_value = "500",
        value_parser = millis
    )]
    pub sweep_every: Duration,

    /// Maximum request body in bytes (larger bodies get 413).
    #[arg(long, env = "DAPI_MAX_BODY", default_value_t = 64 * 1024)]
    pub max_body: usize,

    /// Maximum number of callees in one `dst_uid`.
    #[arg(long, env = "DAPI_MAX_DST_UIDS", default_value_t = 50)]
    pub max_dst_uids: usize,

    /// Maximum `extra_msg` length in bytes.
    #[arg(long, env = "DAPI_MAX_EXTRA_MSG", default_value_t = 1024)]
    pub max_extra_msg: usize,

    /// Scheduled calls (`calltask/update`) one uid may have pending at once; one more is
    /// refused with 409 (0: no limit). Tasks fire without being charged again, so this
    /// bounds how many calls one uid can make fire at the same minute.
    #[arg(long, env = "DAPI_CALLTASKS_PER_UID", default_value_t = 100)]
    pub calltasks_per_uid: i64,
}

/// How requests are authenticated (`DAPI_AUTH` and the JWT keys).
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// `open` (the original contract: no authentication, a warning at start) or `jwt`.
    #[arg(
        id = "auth",
        long = "auth",
        env = "DAPI_AUTH",
        default_value = "open",
        value_enum
    )]
    pub kind: AuthKind,

    /// HS256 secret of app JWTs (`DAPI_AUTH=jwt`).
    #[arg(long, env = "DAPI_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// JWKS file with the RS256/ES256 public keys of app JWTs (`DAPI_AUTH=jwt`).
    #[arg(long, env = "DAPI_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,

    /// Required `aud` of app JWTs (not checked when unset).
    #[arg(long, env = "DAPI_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` of app JWTs (not checked when unset).
    #[arg(long, env = "DAPI_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
}

/// Which authentication `DAPI_AUTH` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthKind {
    /// No authentication: the uid in the body is believed (the original contract).
    Open,
    /// `Authorization: Bearer <JWT>` from the app's backend (`crate::auth`).
    Jwt,
}

/// Shortest `DAPI_JWT_SECRET` accepted, in bytes (the HS256 output size).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

impl AuthConfig {
    /// `DAPI_AUTH=open` with no JWT settings.
    pub fn open() -> Self {
        Self {
            kind: AuthKind::Open,
            jwt_secret: None,
            jwt_jwks: None,
            jwt_audience: None,
            jwt_issuer: None,
        }
    }

    /// `DAPI_AUTH=jwt` with an HS256 secret.
    pub fn jwt(secret: Secret) -> Self {
        Self {
            kind: AuthKind::Jwt,
            jwt_secret: Some(secret),
            ..Self::open()
        }
    }

    /// Whether `DAPI_AUTH=jwt`.
    pub fn is_jwt(&self) -> bool {
        self.kind == AuthKind::Jwt
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.jwt_secret {
            // HS256 is only as strong as its key: a short one can be guessed offline
            // from any token the app hands out.
            let len = secret.expose().len();
            ensure(
                len >= MIN_JWT_SECRET_BYTES,
                "DAPI_JWT_SECRET",
                format!(
                    "DAPI_JWT_SECRET is {len} bytes; at least {MIN_JWT_SECRET_BYTES} are required (e.g. `openssl rand -hex 32`)"
                ),
            )?;
        }
        ensure(
            !self.is_jwt() || self.jwt_secret.is_some() || self.jwt_jwks.is_some(),
            "DAPI_AUTH",
            "DAPI_AUTH=jwt needs DAPI_JWT_SECRET (HS256) or DAPI_JWT_JWKS (RS256/ES256)",
        )
    }
}

/// Request rates per uid and per client address (per minute; 0: no limit).
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Calls a uid may create per minute (call/user, call/robot; 0: no limit).
    #[arg(long, env = "DAPI_RATE_CALLS_PER_UID", default_value_t = 60)]
    pub rate_calls_per_uid: u32,

    /// Calls one IP address may create per minute (0: no limit).
    #[arg(long, env = "DAPI_RATE_CALLS_PER_IP", default_value_t = 600)]
    pub rate_calls_per_ip: u32,

    /// Tokens a uid may get per minute (call/token, invite/robot; 0: no limit).
    #[arg(long, env = "DAPI_RATE_TOKENS_PER_UID", default_value_t = 600)]
    pub rate_tokens_per_uid: u32,

    /// Tokens one IP address may get per minute (0: no limit).
    #[arg(long, env = "DAPI_RATE_TOKENS_PER_IP", default_value_t = 6000)]
    pub rate_tokens_per_ip: u32,

    /// Writes a uid may make per minute (call/event, call/heartbeat, call/msg,
    /// calltask/update and /delete, quit/robot, device/register and /unregister; 0: no limit).
    #[arg(long, env = "DAPI_RATE_WRITES_PER_UID", default_value_t = 120)]
    pub rate_writes_per_uid: u32,

    /// Writes one IP address may make per minute (0: no limit).
    #[arg(long, env = "DAPI_RATE_WRITES_PER_IP", default_value_t = 6000)]
    pub rate_writes_per_ip: u32,

    /// Comma-separated CIDRs (or addresses) of the reverse proxies in front of the API:
    /// `X-Forwarded-For` is believed only from these peers (the right-most address not
    /// in them is the client); from any other peer the socket address is the client.
    #[arg(long, env = "DAPI_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,
}

impl LimitsConfig {
    /// No rate limits, no trusted proxies (tests).
    pub fn none() -> Self {
        Self {
            rate_calls_per_uid: 0,
            rate_calls_per_ip: 0,
            rate_tokens_per_uid: 0,
            rate_tokens_per_ip: 0,
            rate_writes_per_uid: 0,
            rate_writes_per_ip: 0,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// Robot sessions and the agents that run them.
#[derive(Debug, Clone, Args)]
pub struct DispatchConfig {
    /// The uid the robot uses in channels.
    #[arg(long, env = "DAPI_ROBOT_UID", default_value = "robot")]
    pub robot_uid: String,

    /// Key robot agents present on `/agent` (unset: the agent link is refused).
    #[arg(long, env = "DAPI_AGENT_KEY", hide_env_values = true)]
    pub agent_key: Option<Secret>,

    /// Seconds a robot session's lease lasts without renewal.
    #[arg(
        id = "lease_seconds",
        long = "lease-seconds",
        env = "DAPI_LEASE_SECONDS",
        default_value = "10",
        value_parser = seconds
    )]
    pub lease: Duration,

    /// Seconds an offer waits for the agent's accept or reject.
    #[arg(long, env = "DAPI_OFFER_TIMEOUT", default_value = "5", value_parser = seconds)]
    pub offer_timeout: Duration,

    /// Backstop poll of the dispatcher, in milliseconds (wake-ups are immediate).
    #[arg(
        id = "dispatch_poll_ms",
        long = "dispatch-poll-ms",
        env = "DAPI_DISPATCH_POLL_MS",
        default_value = "1000",
        value_parser = millis
    )]
    pub poll: Duration,

    /// Attempts a robot session gets before it is marked dead.
    #[arg(
        id = "robot_max_attempts",
        long = "robot-max-attempts",
        env = "DAPI_ROBOT_MAX_ATTEMPTS",
        default_value_t = 3
    )]
    pub max_attempts: i64,

    /// Robot sessions one uid may have active at once (queued, offered or running;
    /// 0: no limit).
    #[arg(long, env = "DAPI_ROBOTS_PER_UID", default_value_t = 2)]
    pub robots_per_uid: i64,

    /// Longest a robot session may last, in seconds from when it was asked for; the
    /// sweeper then tells it to leave (0: no limit).
    #[arg(
        id = "robot_max_seconds",
        long = "robot-max-seconds",
        env = "DAPI_ROBOT_MAX_SECONDS",
        default_value = "3600",
        value_parser = seconds
    )]
    pub robot_max: Duration,

    /// Largest audio asset accepted on upload, in bytes.
    #[arg(long, env = "DAPI_MAX_ASSET_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub max_asset_bytes: usize,

    /// Media bridge targets: JSON `{"name": {"url": "wss://..", "secret": "..", "format":
    /// "pcm16"|"opus", "rate": 16000}}` (pcm16 at 8000, 16000, 24000 or 48000 Hz). Checked
    /// at start; `call/robot` and `invite/robot` name a target with `"bridge"`.
    #[arg(long, env = "DAPI_BRIDGES", hide_env_values = true)]
    pub bridges: Option<Secret>,
}

/// `/rtc` channel signaling: ICE servers, limits, timeouts.
#[derive(Debug, Clone, Args)]
pub struct RtcConfig {
    /// ICE servers handed out in `/rtc` `joined`: a JSON list of
    /// `{"urls": "stun:..."|["turn:..."], "username"?, "credential"?}`. A TURN entry
    /// without username/credential gets TURN REST credentials from `DAPI_TURN_SECRET`.
    #[arg(long, env = "DAPI_ICE_SERVERS", default_value = "[]")]
    pub ice_servers: IceServerList,

    /// Shared secret of the TURN server (coturn `static-auth-secret` with
    /// `use-auth-secret`): per-join credentials are derived from it.
    #[arg(long, env = "DAPI_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<Secret>,

    /// Lifetime of derived TURN credentials, in seconds (unset: `DAPI_TOKEN_TTL`, the
    /// lifetime of the join token they come with).
    #[arg(long, env = "DAPI_TURN_TTL", value_parser = seconds)]
    pub turn_ttl: Option<Duration>,

    /// Peers allowed in one `/rtc` channel.
    #[arg(
        id = "rtc_max_peers",
        long = "rtc-max-peers",
        env = "DAPI_RTC_MAX_PEERS",
        default_value_t = 16
    )]
    pub max_peers: usize,

    /// Largest `/rtc` frame in bytes; a larger one is refused and its socket dropped.
    #[arg(
        id = "rtc_max_frame",
        long = "rtc-max-frame",
        env = "DAPI_RTC_MAX_FRAME",
        default_value_t = 64 * 1024
    )]
    pub max_frame: usize,

    /// Messages per second one `/rtc` socket may send (bursts of 4x are allowed).
    #[arg(
        id = "rtc_msgs_per_sec",
        long = "rtc-msgs-per-sec",
        env = "DAPI_RTC_MSGS_PER_SEC",
        default_value_t = 50
    )]
    pub msgs_per_sec: u32,

    /// Seconds an `/rtc` socket may stay silent (pings are sent after a third of it)
    /// before it is dropped.
    #[arg(
        id = "rtc_idle_timeout",
        long = "rtc-idle-timeout",
        env = "DAPI_RTC_IDLE_TIMEOUT",
        default_value = "30",
        value_parser = seconds
    )]
    pub idle_timeout: Duration,

    /// PostgreSQL: how often each instance stamps its row on the `/rtc` bus, in
    /// milliseconds. An instance silent for 3 of these is dead: its channel members are
    /// reported gone (`peer_left`, reason `timeout`) by the others.
    #[arg(
        id = "rtc_bus_heartbeat_ms",
        long = "rtc-bus-heartbeat-ms",
        env = "DAPI_RTC_BUS_HEARTBEAT_MS",
        default_value = "5000",
        value_parser = millis
    )]
    pub bus_heartbeat: Duration,

    /// Seconds a new `/rtc` socket has to send its `join` before it is closed
    /// (`join_timeout`).
    #[arg(
        id = "rtc_join_timeout",
        long = "rtc-join-timeout",
        env = "DAPI_RTC_JOIN_TIMEOUT",
        default_value = "10",
        value_parser = seconds
    )]
    pub join_timeout: Duration,

    /// Open `/rtc` sockets allowed from one client address; the next upgrade is refused
    /// with 429.
    #[arg(
        id = "rtc_sockets_per_ip",
        long = "rtc-sockets-per-ip",
        env = "DAPI_RTC_SOCKETS_PER_IP",
        default_value_t = 100
    )]
    pub sockets_per_ip: usize,

    /// New `/rtc` sockets one client address may open per second (bursts of 2x are
    /// allowed); the next upgrade is refused with 429 before the WebSocket handshake.
    /// Robot agents presenting their key are exempt. 0: no limit.
    #[arg(
        id = "rtc_upgrades_per_ip_per_sec",
        long = "rtc-upgrades-per-ip-per-sec",
        env = "DAPI_RTC_UPGRADES_PER_IP_PER_SEC",
        default_value_t = 10
    )]
    pub upgrades_per_ip_per_sec: u32,

    /// Open `/rtc` sockets allowed on this instance; the next upgrade is refused with 503.
    #[arg(
        id = "rtc_sockets_total",
        long = "rtc-sockets-total",
        env = "DAPI_RTC_SOCKETS_TOTAL",
        default_value_t = 10_000
    )]
    pub sockets_total: usize,

    /// `/rtc` joins one uid may make per minute (over every channel), on this instance;
    /// the next is refused (`too_many_joins`).
    #[arg(
        id = "rtc_joins_per_uid_per_min",
        long = "rtc-joins-per-uid-per-min",
        env = "DAPI_RTC_JOINS_PER_UID_PER_MIN",
        default_value_t = 30
    )]
    pub joins_per_uid_per_min: u32,

    /// `/rtc` joins one token may make per minute, on this instance; the next is refused
    /// (`too_many_joins`).
    #[arg(
        id = "rtc_joins_per_token_per_min",
        long = "rtc-joins-per-token-per-min",
        env = "DAPI_RTC_JOINS_PER_TOKEN_PER_MIN",
        default_value_t = 10
    )]
    pub joins_per_token_per_min: u32,

    /// `signal` messages one `/rtc` socket may send per second (bursts of 4x are
    /// allowed); over it the sender is cut off (`signal_flood`).
    #[arg(
        id = "rtc_signals_per_sec",
        long = "rtc-signals-per-sec",
        env = "DAPI_RTC_SIGNALS_PER_SEC",
        default_value_t = 40
    )]
    pub signals_per_sec: u32,

    /// `signal` bytes one `/rtc` socket may send per second (bursts of 4x are allowed);
    /// over it the sender is cut off (`signal_flood`).
    #[arg(
        id = "rtc_signal_bytes_per_sec",
        long = "rtc-signal-bytes-per-sec",
        env = "DAPI_RTC_SIGNAL_BYTES_PER_SEC",
        default_value_t = 256 * 1024
    )]
    pub signal_bytes_per_sec: u32,
}

impl RtcConfig {
    /// The ICE servers handed out on join; `token_ttl` is the lifetime of derived TURN
    /// credentials unless `DAPI_TURN_TTL` is set. Fails when that lifetime is under a
    /// second, or a TURN entry has neither its own credentials nor `DAPI_TURN_SECRET`.
    pub fn ice(&self, token_ttl: Duration) -> Result<IceConfig, ConfigError> {
        let ttl = self.turn_ttl.unwrap_or(token_ttl).as_secs();
        if ttl == 0 {
            return Err(match self.turn_ttl {
                Some(_) => {
                    ConfigError::new("DAPI_TURN_TTL", "DAPI_TURN_TTL must be at least 1 second")
                }
                None => ConfigError::new(
                    "DAPI_TOKEN_TTL",
                    "DAPI_TOKEN_TTL must be at least 1 second (TURN credentials last as long as the token unless DAPI_TURN_TTL is set)",
                ),
            });
        }
        IceConfig::new(self.ice_servers.clone(), self.turn_secret.clone(), ttl)
            .map_err(|e| ConfigError::new("DAPI_TURN_SECRET", e))
    }

    fn validate(&self, token_ttl: Duration) -> Result<(), ConfigError> {
        self.ice(token_ttl)?;
        ensure(
            self.max_peers >= 2,
            "DAPI_RTC_MAX_PEERS",
            "DAPI_RTC_MAX_PEERS must be at least 2",
        )?;
        ensure(
            self.max_frame >= 1024,
            "DAPI_RTC_MAX_FRAME",
            "DAPI_RTC_MAX_FRAME must be at least 1024 bytes",
        )?;
        ensure(
            self.msgs_per_sec >= 1,
            "DAPI_RTC_MSGS_PER_SEC",
            "DAPI_RTC_MSGS_PER_SEC must be at least 1",
        )?;
        ensure(
            self.idle_timeout >= Duration::from_secs(3),
            "DAPI_RTC_IDLE_TIMEOUT",
            "DAPI_RTC_IDLE_TIMEOUT must be at least 3 seconds",
        )?;
        ensure(
            self.join_timeout >= Duration::from_secs(1),
            "DAPI_RTC_JOIN_TIMEOUT",
            "DAPI_RTC_JOIN_TIMEOUT must be at least 1 second",
        )?;
        ensure(
            self.sockets_per_ip >= 1,
            "DAPI_RTC_SOCKETS_PER_IP",
            "DAPI_RTC_SOCKETS_PER_IP and DAPI_RTC_SOCKETS_TOTAL must be at least 1",
        )?;
        ensure(
            self.sockets_total >= 1,
            "DAPI_RTC_SOCKETS_TOTAL",
            "DAPI_RTC_SOCKETS_PER_IP and DAPI_RTC_SOCKETS_TOTAL must be at least 1",
        )?;
        ensure(
            self.signal_bytes_per_sec == 0
                || usize::try_from(self.signal_bytes_per_sec).unwrap_or(usize::MAX)
                    >= self.max_frame,
            "DAPI_RTC_SIGNAL_BYTES_PER_SEC",
            "DAPI_RTC_SIGNAL_BYTES_PER_SEC must be 0 (no limit) or at least DAPI_RTC_MAX_FRAME",
        )
    }
}

/// Voicemail recordings.
#[derive(Debug, Clone, Args)]
pub struct RecordingsConfig {
    /// Days a voicemail recording is kept after its last upload.
    #[arg(
        id = "recording_retention",
        long = "recording-retention",
        env = "DAPI_RECORDING_RETENTION",
        default_value = "30",
        value_parser = days
    )]
    pub retention: Duration,

    /// Largest recording upload in bytes (larger bodies get 413).
    #[arg(
        id = "max_recording_bytes",
        long = "max-recording-bytes",
        env = "DAPI_MAX_RECORDING_BYTES",
        default_value_t = 32 * 1024 * 1024
    )]
    pub max_bytes: usize,
}

/// A configuration that cannot work, with the environment variable to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    /// The environment variable (of the flag) at fault.
    pub var: &'static str,
    /// What is wrong; names `var`.
    pub message: String,
}

impl ConfigError {
    /// An error about `var`.
    pub fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

/// `Err` about `var` unless `ok`.
pub(crate) fn ensure(
    ok: bool,
    var: &'static str,
    message: impl Into<String>,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(var, message))
    }
}

impl Config {
    /// Checks the rules between settings that parsing alone cannot (a TURN server needs a
    /// secret, jwt mode needs a key, a frame limit below the signal byte rate, ...).
    /// Called once, by [`Application::build`](crate::Application::build), before anything
    /// starts; the error names the variable. What needs IO (reading the JWKS, the APNs
    /// key) or is a value's own syntax (JSON of `DAPI_BRIDGES`) is checked where it is
    /// read, also at start and also naming the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            self.tokens.app_id.is_some() == self.tokens.app_certificate.is_some(),
            if self.tokens.app_id.is_some() {
                "DAPI_APP_CERTIFICATE"
            } else {
                "DAPI_APP_ID"
            },
            "set both DAPI_APP_ID and DAPI_APP_CERTIFICATE, or neither",
        )?;
        for (var, d) in [
            ("DAPI_TOKEN_TTL", self.tokens.ttl),
            ("DAPI_ROBOT_TOKEN_TTL", self.tokens.robot_ttl),
        ] {
            ensure(
                u32::try_from(d.as_secs()).is_ok(),
                var,
                format!("{var} must be at most {} seconds", u32::MAX),
            )?;
        }
        self.auth.validate()?;
        self.rtc.validate(self.tokens.ttl)?;
        self.push.validate()?;
        Ok(())
    }

    /// A configuration for tests: port 0 on loopback, the given database, a fixed
    /// App ID and certificate, agent and admin keys, no rate limits, no sweeper and no
    /// push worker (tests drive `sweeper::sweep_once` and `push::deliver_once`).
    pub fn for_tests(database_url: &str) -> Self {
        Self {
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                database_url: database_url.to_owned(),
                header_read_timeout: Duration::from_secs(10),
                log_format: LogFormat::Pretty,
                admin_key: Some(Secret::new("test-admin-key")),
            },
            tokens: TokenConfig {
                app_id: Some("970CA35de60c44645bbae8a215061b33".into()),
                app_certificate: Some(Secret::new("5CFd2fd1755d40ecb72977518be15d3b")),
                version: TokenVersion::V006,
                ttl: Duration::from_secs(600),
                robot_ttl: Duration::from_secs(86_400),
            },
            calls: CallsConfig {
                timezone: chrono_tz::UTC,
                recent_window: Duration::from_secs(60),
                ring_timeout: Duration::from_secs(60),
                heartbeat_timeout: Duration::from_secs(45),
                calltask_grace: Duration::from_secs(300),
                sweep_every: Duration::ZERO,
                max_body: 64 * 1024,
                max_dst_uids: 50,
                max_extra_msg: 1024,
                calltasks_per_uid: 0,
            },
            auth: AuthConfig::open(),
            limits: LimitsConfig::none(),
            dispatch: DispatchConfig {
                robot_uid: "robot".into(),
                agent_key: Some(Secret::new("test-agent-key")),
                lease: Duration::from_secs(10),
                offer_timeout: Duration::from_secs(5),
                poll: Duration::from_millis(1000),
                max_attempts: 3,
                robots_per_uid: 0,
                robot_max: Duration::ZERO,
                max_asset_bytes: 50 * 1024 * 1024,
                bridges: None,
            },
            rtc: RtcConfig {
                ice_servers: IceServerList::default(),
                turn_secret: None,
                turn_ttl: None,
                max_peers: 16,
                max_frame: 64 * 1024,
                msgs_per_sec: 50,
                idle_timeout: Duration::from_secs(30),
                bus_heartbeat: Duration::from_millis(5000),
                join_timeout: Duration::from_secs(10),
                sockets_per_ip: 100,
                // off, as the HTTP rate limits are (`LimitsConfig::none`): tests open many
                // sockets from 127.0.0.1; the tests of the budget set it
                upgrades_per_ip_per_sec: 0,
                sockets_total: 10_000,
                joins_per_uid_per_min: 30,
                joins_per_token_per_min: 10,
                signals_per_sec: 40,
                signal_bytes_per_sec: 256 * 1024,
            },
            recordings: RecordingsConfig {
                retention: Duration::from_secs(30 * 86_400),
                max_bytes: 32 * 1024 * 1024,
            },
            // no worker: tests drive `push::deliver_once`
            push: PushConfig {
                every: Duration::ZERO,
                ..PushConfig::default()
            },
        }
    }
}

/// `d` in whole milliseconds, as the store and the sans-IO cores count time
/// (saturating: a duration past `i64::MAX` ms is for ever).
pub fn millis_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `d` in whole seconds, as task times count (saturating).
pub fn secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Value parser of a duration given in whole seconds (`60`).
pub fn seconds(s: &str) -> Result<Duration, String> {
    whole(s, "seconds", "60").map(Duration::from_secs)
}

/// Value parser of a duration given in whole milliseconds (`500`).
pub fn millis(s: &str) -> Result<Duration, String> {
    whole(s, "milliseconds", "500").map(Duration::from_millis)
}

/// Value parser of a duration given in whole days (`30`).
pub fn days(s: &str) -> Result<Duration, String> {
    let n = whole(s, "days", "30")?;
    n.checked_mul(86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{n} days is too long"))
}

fn whole(s: &str, unit: &str, example: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("expected a whole number of {unit} (like {example}), not {s:?}"))
}

/// The environment variable of the argument a clap parse error is about (an invalid
/// value), so that `main` can name it: clap's own message names only the flag.
pub fn env_of_parse_error(err: &clap::Error, cmd: &clap::Command) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    // `--ring-timeout <RING_TIMEOUT>`
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// As `main.rs` has it (`version` adds `--version`).
    #[derive(Debug, Parser)]
    #[command(name = "api", version)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    /// Every flag, its variable and its default as they were in the one flat struct
    /// (README and docs tables list them; deploy files and scripts set them).
    const FLAGS: &[(&str, &str, Option<&str>)] = &[
        ("listen", "DAPI_LISTEN", Some("127.0.0.1:8080")),
        ("database-url", "DATABASE_URL", Some("sqlite://dapi.db")),
        ("app-id", "DAPI_APP_ID", None),
        ("app-certificate", "DAPI_APP_CERTIFICATE", None),
        ("token-version", "DAPI_TOKEN_VERSION", Some("006")),
        ("token-ttl", "DAPI_TOKEN_TTL", Some("600")),
        ("timezone", "DAPI_TIMEZONE", Some("UTC")),
        ("recent-window", "DAPI_RECENT_WINDOW", Some("60")),
        ("ring-timeout", "DAPI_RING_TIMEOUT", Some("60")),
        ("heartbeat-timeout", "DAPI_HEARTBEAT_TIMEOUT", Some("45")),
        ("calltask-grace", "DAPI_CALLTASK_GRACE", Some("300")),
        ("robot-uid", "DAPI_ROBOT_UID", Some("robot")),
        ("max-body", "DAPI_MAX_BODY", Some("65536")),
        ("max-dst-uids", "DAPI_MAX_DST_UIDS", Some("50")),
        ("max-extra-msg", "DAPI_MAX_EXTRA_MSG", Some("1024")),
        ("calltasks-per-uid", "DAPI_CALLTASKS_PER_UID", Some("100")),
        ("auth", "DAPI_AUTH", Some("open")),
        ("jwt-secret", "DAPI_JWT_SECRET", None),
        ("jwt-jwks", "DAPI_JWT_JWKS", None),
        ("jwt-audience", "DAPI_JWT_AUDIENCE", None),
        ("jwt-issuer", "DAPI_JWT_ISSUER", None),
        ("rate-calls-per-uid", "DAPI_RATE_CALLS_PER_UID", Some("60")),
        ("rate-calls-per-ip", "DAPI_RATE_CALLS_PER_IP", Some("600")),
        (
            "rate-tokens-per-uid",
            "DAPI_RATE_TOKENS_PER_UID",
            Some("600"),
        ),
        (
            "rate-tokens-per-ip",
            "DAPI_RATE_TOKENS_PER_IP",
            Some("6000"),
        ),
        (
            "rate-writes-per-uid",
            "DAPI_RATE_WRITES_PER_UID",
            Some("120"),
        ),
        (
            "rate-writes-per-ip",
            "DAPI_RATE_WRITES_PER_IP",
            Some("6000"),
        ),
        ("trusted-proxies", "DAPI_TRUSTED_PROXIES", Some("")),
        (
            "header-read-timeout",
            "DAPI_HEADER_READ_TIMEOUT",
            Some("10"),
        ),
        ("robots-per-uid", "DAPI_ROBOTS_PER_UID", Some("2")),
        ("robot-max-seconds", "DAPI_ROBOT_MAX_SECONDS", Some("3600")),
        ("agent-key", "DAPI_AGENT_KEY", None),
        ("admin-key", "DAPI_ADMIN_KEY", None),
        ("lease-seconds", "DAPI_LEASE_SECONDS", Some("10")),
        ("offer-timeout", "DAPI_OFFER_TIMEOUT", Some("5")),
        ("dispatch-poll-ms", "DAPI_DISPATCH_POLL_MS", Some("1000")),
        ("sweep-ms", "DAPI_SWEEP_MS", Some("500")),
        ("robot-max-attempts", "DAPI_ROBOT_MAX_ATTEMPTS", Some("3")),
        ("max-asset-bytes", "DAPI_MAX_ASSET_BYTES", Some("52428800")),
        ("log-format", "DAPI_LOG_FORMAT", Some("auto")),
        ("ice-servers", "DAPI_ICE_SERVERS", Some("[]")),
        ("turn-secret", "DAPI_TURN_SECRET", None),
        ("turn-ttl", "DAPI_TURN_TTL", None),
        ("rtc-max-peers", "DAPI_RTC_MAX_PEERS", Some("16")),
        ("rtc-max-frame", "DAPI_RTC_MAX_FRAME", Some("65536")),
        ("rtc-msgs-per-sec", "DAPI_RTC_MSGS_PER_SEC", Some("50")),
        ("rtc-idle-timeout", "DAPI_RTC_IDLE_TIMEOUT", Some("30")),
        (
            "rtc-bus-heartbeat-ms",
            "DAPI_RTC_BUS_HEARTBEAT_MS",
            Some("5000"),
        ),
        ("rtc-join-timeout", "DAPI_RTC_JOIN_TIMEOUT", Some("10")),
        ("rtc-sockets-per-ip", "DAPI_RTC_SOCKETS_PER_IP", Some("100")),
        ("rtc-sockets-total", "DAPI_RTC_SOCKETS_TOTAL", Some("10000")),
        (
            "rtc-upgrades-per-ip-per-sec",
            "DAPI_RTC_UPGRADES_PER_IP_PER_SEC",
            Some("10"),
        ),
        (
            "rtc-joins-per-uid-per-min",
            "DAPI_RTC_JOINS_PER_UID_PER_MIN",
            Some("30"),
        ),
        (
            "rtc-joins-per-token-per-min",
            "DAPI_RTC_JOINS_PER_TOKEN_PER_MIN",
            Some("10"),
        ),
        (
            "rtc-signals-per-sec",
            "DAPI_RTC_SIGNALS_PER_SEC",
            Some("40"),
        ),
        (
            "rtc-signal-bytes-per-sec",
            "DAPI_RTC_SIGNAL_BYTES_PER_SEC",
            Some("262144"),
        ),
        ("robot-token-ttl", "DAPI_ROBOT_TOKEN_TTL", Some("86400")),
        ("bridges", "DAPI_BRIDGES", None),
        (
            "recording-retention",
            "DAPI_RECORDING_RETENTION",
            Some("30"),
        ),
        (
            "max-recording-bytes",
            "DAPI_MAX_RECORDING_BYTES",
            Some("33554432"),
        ),
        ("push-ms", "DAPI_PUSH_MS", Some("500")),
        ("push-max-attempts", "DAPI_PUSH_MAX_ATTEMPTS", Some("5")),
        ("push-timeout", "DAPI_PUSH_TIMEOUT", Some("10")),
        ("push-max-devices", "DAPI_PUSH_MAX_DEVICES", Some("10")),
        ("push-retention", "DAPI_PUSH_RETENTION", Some("604800")),
        ("apns-key-file", "DAPI_APNS_KEY_FILE", None),
        ("apns-key-id", "DAPI_APNS_KEY_ID", None),
        ("apns-team-id", "DAPI_APNS_TEAM_ID", None),
        ("apns-bundle-id", "DAPI_APNS_BUNDLE_ID", None),
        ("apns-endpoint", "DAPI_APNS_ENDPOINT", Some("production")),
        ("push-ca-file", "DAPI_PUSH_CA_FILE", None),
        ("push-webhook-url", "DAPI_PUSH_WEBHOOK_URL", None),
        ("push-webhook-secret", "DAPI_PUSH_WEBHOOK_SECRET", None),
    ];

    /// The variables whose values `--help` must not print.
    const HIDDEN: &[&str] = &[
        "DAPI_APP_CERTIFICATE",
        "DAPI_JWT_SECRET",
        "DAPI_AGENT_KEY",
        "DAPI_ADMIN_KEY",
        "DAPI_TURN_SECRET",
        "DAPI_BRIDGES",
        "DAPI_PUSH_WEBHOOK_SECRET",
    ];

    #[test]
    fn flags_and_defaults_are_unchanged() {
        let cmd = Cli::command();
        let mut seen: Vec<(String, String, Option<String>)> = cmd
            .get_arguments()
            .filter(|a| a.get_long().is_some())
            .map(|a| {
                let env = a.get_env().unwrap().to_string_lossy().into_owned();
                assert_eq!(
                    a.is_hide_env_values_set(),
                    HIDDEN.contains(&env.as_str()),
                    "{env}: hide_env_values"
                );
                let default = a
                    .get_default_values()
                    .first()
                    .map(|d| d.to_string_lossy().into_owned());
                let long = a.get_long().unwrap().to_owned();
                // The ids are the flat struct's field names (no clash with `--version`).
                assert_eq!(a.get_id().as_str(), long.replace('-', "_"), "{long}: id");
                (long, env, default)
            })
            .collect();
        let mut want: Vec<(String, String, Option<String>)> = FLAGS
            .iter()
            .map(|(l, e, d)| ((*l).to_owned(), (*e).to_owned(), d.map(str::to_owned)))
            .collect();
        seen.sort();
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn the_defaults_parse_and_validate() {
        let c = Cli::try_parse_from(["api"]).unwrap().config;
        c.validate().unwrap();
        assert_eq!(c.calls.ring_timeout, Duration::from_secs(60));
        assert_eq!(c.calls.sweep_every, Duration::from_millis(500));
        assert_eq!(c.recordings.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.auth.kind, AuthKind::Open);
        assert_eq!(c.server.log_format, LogFormat::Auto);
        Config::for_tests("sqlite::memory:").validate().unwrap();
    }

    #[test]
    fn durations_keep_their_units() {
        let c = Cli::try_parse_from([
            "api",
            "--ring-timeout",
            "61",
            "--dispatch-poll-ms",
            "250",
            "--recording-retention",
            "2",
            "--turn-ttl",
            "3600",
            "--push-ms",
            "0",
        ])
        .unwrap()
        .config;
        assert_eq!(c.calls.ring_timeout, Duration::from_secs(61));
        assert_eq!(c.dispatch.poll, Duration::from_millis(250));
        assert_eq!(c.recordings.retention, Duration::from_secs(2 * 86_400));
        assert_eq!(c.rtc.turn_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(c.push.every, Duration::ZERO);
        for bad in ["60s", "-1", "1.5", ""] {
            let arg = format!("--ring-timeout={bad}");
            let err = Cli::try_parse_from(["api", arg.as_str()]).unwrap_err();
            assert!(err.to_string().contains("whole number of seconds"), "{err}");
        }
        assert!(days("213503982334602").is_err(), "overflows u64 seconds");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let cmd = Cli::command();
        let err = Cli::try_parse_from(["api", "--ring-timeout", "soon"]).unwrap_err();
        assert_eq!(
            env_of_parse_error(&err, &cmd).as_deref(),
            Some("DAPI_RING_TIMEOUT")
        );
        let err = Cli::try_parse_from(["api", "--auth", "basic"]).unwrap_err();
        assert_eq!(env_of_parse_error(&err, &cmd).as_deref(), Some("DAPI_AUTH"));
        let err = Cli::try_parse_from(["api", "--log-format", "text"]).unwrap_err();
        assert_eq!(
            env_of_parse_error(&err, &cmd).as_deref(),
            Some("DAPI_LOG_FORMAT")
        );
    }

    #[test]
    fn modes_are_enums() {
        let c = Cli::try_parse_from(["api", "--auth", "jwt", "--log-format", "json"])
            .unwrap()
            .config;
        assert_eq!(c.auth.kind, AuthKind::Jwt);
        assert_eq!(c.server.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["api", "--auth", "JWT!"]).is_err());
    }

    #[test]
    fn an_empty_secret_is_refused_not_taken_as_a_key() {
        let err = Cli::try_parse_from(["api", "--admin-key", ""]).unwrap_err();
        assert!(err.to_string().contains("must not be empty"), "{err}");
    }

    /// `validate` on the test configuration changed by `tweak`: the error's variable.
    fn invalid(tweak: impl FnOnce(&mut Config)) -> ConfigError {
        let mut c = Config::for_tests("sqlite::memory:");
        tweak(&mut c);
        let e = c.validate().unwrap_err();
        assert!(e.message.contains(e.var), "{e} names {}", e.var);
        e
    }

    #[test]
    fn the_app_id_and_certificate_come_together() {
        let e = invalid(|c| c.tokens.app_certificate = None);
        assert_eq!(e.var, "DAPI_APP_CERTIFICATE");
        assert!(e.message.contains("or neither"), "{e}");
        assert_eq!(invalid(|c| c.tokens.app_id = None).var, "DAPI_APP_ID");
        let mut c = Config::for_tests("sqlite::memory:");
        (c.tokens.app_id, c.tokens.app_certificate) = (None, None);
        c.validate().unwrap();
    }

    #[test]
    fn token_lifetimes_fit_in_a_token() {
        let too_long = Duration::from_secs(u64::from(u32::MAX) + 1);
        assert_eq!(invalid(|c| c.tokens.ttl = too_long).var, "DAPI_TOKEN_TTL");
        assert_eq!(
            invalid(|c| c.tokens.robot_ttl = too_long).var,
            "DAPI_ROBOT_TOKEN_TTL"
        );
    }

    #[test]
    fn jwt_mode_needs_a_key() {
        let e = invalid(|c| c.auth.kind = AuthKind::Jwt);
        assert_eq!(e.var, "DAPI_AUTH");
        assert!(e.message.contains("DAPI_JWT_SECRET"), "{e}");
        assert!(e.message.contains("DAPI_JWT_JWKS"), "{e}");
        let mut c = Config::for_tests("sqlite::memory:");
        c.auth.kind = AuthKind::Jwt;
        c.auth.jwt_jwks = Some("keys.json".into());
        c.validate().unwrap();
    }

    #[test]
    fn a_short_jwt_secret_is_refused() {
        let e = invalid(|c| c.auth = AuthConfig::jwt(Secret::new("x".repeat(31))));
        assert_eq!(e.var, "DAPI_JWT_SECRET");
        assert!(e.message.contains("31 bytes"), "{e}");
        assert!(e.message.contains("32"), "{e}");
        let mut c = Config::for_tests("sqlite::memory:");
        c.auth = AuthConfig::jwt(Secret::new("x".repeat(32)));
        c.validate().unwrap();
    }

    #[test]
    fn a_turn_server_needs_a_secret_or_credentials() {
        let turn: IceServerList = r#"[{"urls": "turn:turn.example.org:3478"}]"#.parse().unwrap();
        let e = invalid(|c| c.rtc.ice_servers = turn.clone());
        assert_eq!(e.var, "DAPI_TURN_SECRET");
        let mut c = Config::for_tests("sqlite::memory:");
        c.rtc.ice_servers = turn;
        c.rtc.turn_secret = Some(Secret::new("s"));
        c.validate().unwrap();
        assert_eq!(
            invalid(|c| c.rtc.turn_ttl = Some(Duration::ZERO)).var,
            "DAPI_TURN_TTL"
        );
        assert_eq!(
            invalid(|c| c.tokens.ttl = Duration::ZERO).var,
            "DAPI_TOKEN_TTL"
        );
    }

    #[test]
    fn rtc_limits_have_floors() {
        assert_eq!(invalid(|c| c.rtc.max_peers = 1).var, "DAPI_RTC_MAX_PEERS");
        assert_eq!(
            invalid(|c| c.rtc.max_frame = 1023).var,
            "DAPI_RTC_MAX_FRAME"
        );
        assert_eq!(
            invalid(|c| c.rtc.msgs_per_sec = 0).var,
            "DAPI_RTC_MSGS_PER_SEC"
        );
        assert_eq!(
            invalid(|c| c.rtc.idle_timeout = Duration::from_secs(2)).var,
            "DAPI_RTC_IDLE_TIMEOUT"
        );
        assert_eq!(
            invalid(|c| c.rtc.join_timeout = Duration::ZERO).var,
            "DAPI_RTC_JOIN_TIMEOUT"
        );
        assert_eq!(
            invalid(|c| c.rtc.sockets_per_ip = 0).var,
            "DAPI_RTC_SOCKETS_PER_IP"
        );
        assert_eq!(
            invalid(|c| c.rtc.sockets_total = 0).var,
            "DAPI_RTC_SOCKETS_TOTAL"
        );
    }

    #[test]
    fn the_signal_byte_rate_is_off_or_at_least_a_frame() {
        let e = invalid(|c| c.rtc.signal_bytes_per_sec = 65_535);
        assert_eq!(e.var, "DAPI_RTC_SIGNAL_BYTES_PER_SEC");
        assert!(e.message.contains("DAPI_RTC_MAX_FRAME"), "{e}");
        let mut c = Config::for_tests("sqlite::memory:");
        c.rtc.signal_bytes_per_sec = 0;
        c.validate().unwrap();
        c.rtc.signal_bytes_per_sec = 65_536;
        c.validate().unwrap();
    }
}
