//! Typed configuration: every flag is also an environment variable.
//!
//! The binary parses [`Config`] with clap; tests build one with [`Config::for_tests`]
//! and change what they need.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::token::TokenVersion;

/// Everything the API server needs to run. Secrets are wrapped in [`Secret`] so they
/// never reach a log line through `Debug`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; the real one is printed).
    #[arg(long, env = "DAPI_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Database URL: `sqlite://path.db` (default, created on first start) or
    /// `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://dapi.db")]
    pub database_url: String,

    /// Agora-compatible App ID handed out in every token response. When unset, a
    /// development pair is generated once and kept in the database.
    #[arg(long, env = "DAPI_APP_ID")]
    pub app_id: Option<String>,

    /// App Certificate that signs tokens (32 hex characters).
    #[arg(long, env = "DAPI_APP_CERTIFICATE", hide_env_values = true)]
    pub app_certificate: Option<Secret>,

    /// Token version to mint: 006 (default) or 007.
    #[arg(long, env = "DAPI_TOKEN_VERSION", default_value = "006")]
    pub token_version: TokenVersion,

    /// Join privilege lifetime of minted tokens, in seconds.
    #[arg(long, env = "DAPI_TOKEN_TTL", default_value_t = 600)]
    pub token_ttl: u32,

    /// IANA time zone of `createtime` and `call_time` strings.
    #[arg(long, env = "DAPI_TIMEZONE", default_value = "UTC")]
    pub timezone: chrono_tz::Tz,

    /// How far back `call/msg` looks, in seconds.
    #[arg(long, env = "DAPI_RECENT_WINDOW", default_value_t = 60)]
    pub recent_window: u64,

    /// Seconds a callee may ring before the server ends the call as 1001.
    #[arg(long, env = "DAPI_RING_TIMEOUT", default_value_t = 60)]
    pub ring_timeout: u64,

    /// Seconds without heartbeat or channel presence before a participant is dropped.
    #[arg(long, env = "DAPI_HEARTBEAT_TIMEOUT", default_value_t = 45)]
    pub heartbeat_timeout: u64,

    /// Seconds a scheduled call may fire late (after downtime) before it is marked missed.
    #[arg(long, env = "DAPI_CALLTASK_GRACE", default_value_t = 300)]
    pub calltask_grace: u64,

    /// The uid the robot uses in channels.
    #[arg(long, env = "DAPI_ROBOT_UID", default_value = "robot")]
    pub robot_uid: String,

    /// Maximum request body in bytes (larger bodies get 413).
    #[arg(long, env = "DAPI_MAX_BODY", default_value_t = 64 * 1024)]
    pub max_body: usize,

    /// Maximum number of callees in one `dst_uid`.
    #[arg(long, env = "DAPI_MAX_DST_UIDS", default_value_t = 50)]
    pub max_dst_uids: usize,

    /// Maximum `extra_msg` length in bytes.
    #[arg(long, env = "DAPI_MAX_EXTRA_MSG", default_value_t = 1024)]
    pub max_extra_msg: usize,

    /// `open` (the original contract: no authentication, a warning at start) or `jwt`.
    #[arg(long, env = "DAPI_AUTH", default_value = "open")]
    pub auth: String,

    /// HS256 secret of app JWTs (`DAPI_AUTH=jwt`).
    #[arg(long, env = "DAPI_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// JWKS file with the RS256/ES256 public keys of app JWTs (`DAPI_AUTH=jwt`).
    #[arg(long, env = "DAPI_JWT_JWKS")]
    pub jwt_jwks: Option<String>,

    /// Required `aud` of app JWTs (not checked when unset).
    #[arg(long, env = "DAPI_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` of app JWTs (not checked when unset).
    #[arg(long, env = "DAPI_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

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
    pub trusted_proxies: crate::client_ip::TrustedProxies,

    /// Seconds a client has to send a whole request header (and an idle keep-alive
    /// connection waits for the next one) before the connection is closed.
    #[arg(long, env = "DAPI_HEADER_READ_TIMEOUT", default_value_t = 10)]
    pub header_read_timeout: u64,

    /// Scheduled calls (`calltask/update`) one uid may have pending at once; one more is
    /// refused with 409 (0: no limit). Tasks fire without being charged again, so this
    /// bounds how many calls one uid can make fire at the same minute.
    #[arg(long, env = "DAPI_CALLTASKS_PER_UID", default_value_t = 100)]
    pub calltasks_per_uid: i64,

    /// Robot sessions one uid may have active at once (queued, offered or running;
    /// 0: no limit).
    #[arg(long, env = "DAPI_ROBOTS_PER_UID", default_value_t = 2)]
    pub robots_per_uid: i64,

    /// Longest a robot session may last, in seconds from when it was asked for; the
    /// sweeper then tells it to leave (0: no limit).
    #[arg(long, env = "DAPI_ROBOT_MAX_SECONDS", default_value_t = 3600)]
    pub robot_max_seconds: u64,

    /// Key robot agents present on `/agent` (unset: the agent link is refused).
    #[arg(long, env = "DAPI_AGENT_KEY", hide_env_values = true)]
    pub agent_key: Option<Secret>,

    /// Key operators present on `/admin` (unset: the admin API is refused).
    #[arg(long, env = "DAPI_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<Secret>,

    /// Seconds a robot session's lease lasts without renewal.
    #[arg(long, env = "DAPI_LEASE_SECONDS", default_value_t = 10)]
    pub lease_seconds: u64,

    /// Seconds an offer waits for the agent's accept or reject.
    #[arg(long, env = "DAPI_OFFER_TIMEOUT", default_value_t = 5)]
    pub offer_timeout: u64,

    /// Backstop poll of the dispatcher, in milliseconds (wake-ups are immediate).
    #[arg(long, env = "DAPI_DISPATCH_POLL_MS", default_value_t = 1000)]
    pub dispatch_poll_ms: u64,

    /// How often the sweeper looks for due rows, in milliseconds (0: no sweeper in this
    /// process; tests drive `sweeper::sweep_once` themselves).
    #[arg(long, env = "DAPI_SWEEP_MS", default_value_t = 500)]
    pub sweep_ms: u64,

    /// Attempts a robot session gets before it is marked dead.
    #[arg(long, env = "DAPI_ROBOT_MAX_ATTEMPTS", default_value_t = 3)]
    pub robot_max_attempts: i64,

    /// Largest audio asset accepted on upload, in bytes.
    #[arg(long, env = "DAPI_MAX_ASSET_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub max_asset_bytes: usize,

    /// Log format: `pretty` for a terminal, `json` for production, `auto` picks
    /// pretty when stderr is a terminal.
    #[arg(long, env = "DAPI_LOG_FORMAT", default_value = "auto")]
    pub log_format: String,

    /// ICE servers handed out in `/rtc` `joined`: a JSON list of
    /// `{"urls": "stun:..."|["turn:..."], "username"?, "credential"?}`. A TURN entry
    /// without username/credential gets TURN REST credentials from `DAPI_TURN_SECRET`.
    #[arg(long, env = "DAPI_ICE_SERVERS", default_value = "[]")]
    pub ice_servers: crate::rtc::ice::IceServerList,

    /// Shared secret of the TURN server (coturn `static-auth-secret` with
    /// `use-auth-secret`): per-join credentials are derived from it.
    #[arg(long, env = "DAPI_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<Secret>,

    /// Lifetime of derived TURN credentials, in seconds (unset: `DAPI_TOKEN_TTL`, the
    /// lifetime of the join token they come with).
    #[arg(long, env = "DAPI_TURN_TTL")]
    pub turn_ttl: Option<u64>,

    /// Peers allowed in one `/rtc` channel.
    #[arg(long, env = "DAPI_RTC_MAX_PEERS", default_value_t = 16)]
    pub rtc_max_peers: usize,

    /// Largest `/rtc` frame in bytes; a larger one is refused and its socket dropped.
    #[arg(long, env = "DAPI_RTC_MAX_FRAME", default_value_t = 64 * 1024)]
    pub rtc_max_frame: usize,

    /// Messages per second one `/rtc` socket may send (bursts of 4x are allowed).
    #[arg(long, env = "DAPI_RTC_MSGS_PER_SEC", default_value_t = 50)]
    pub rtc_msgs_per_sec: u32,

    /// Seconds an `/rtc` socket may stay silent (pings are sent after a third of it)
    /// before it is dropped.
    #[arg(long, env = "DAPI_RTC_IDLE_TIMEOUT", default_value_t = 30)]
    pub rtc_idle_timeout: u64,

    /// PostgreSQL: how often each instance stamps its row on the `/rtc` bus, in
    /// milliseconds. An instance silent for 3 of these is dead: its channel members are
    /// reported gone (`peer_left`, reason `timeout`) by the others.
    #[arg(long, env = "DAPI_RTC_BUS_HEARTBEAT_MS", default_value_t = 5000)]
    pub rtc_bus_heartbeat_ms: u64,

    /// Seconds a new `/rtc` socket has to send its `join` before it is closed
    /// (`join_timeout`).
    #[arg(long, env = "DAPI_RTC_JOIN_TIMEOUT", default_value_t = 10)]
    pub rtc_join_timeout: u64,

    /// Open `/rtc` sockets allowed from one client address; the next upgrade is refused
    /// with 429.
    #[arg(long, env = "DAPI_RTC_SOCKETS_PER_IP", default_value_t = 100)]
    pub rtc_sockets_per_ip: usize,

    /// Open `/rtc` sockets allowed on this instance; the next upgrade is refused with 503.
    #[arg(long, env = "DAPI_RTC_SOCKETS_TOTAL", default_value_t = 10_000)]
    pub rtc_sockets_total: usize,

    /// `/rtc` joins one uid may make per minute (over every channel), on this instance;
    /// the next is refused (`too_many_joins`).
    #[arg(long, env = "DAPI_RTC_JOINS_PER_UID_PER_MIN", default_value_t = 30)]
    pub rtc_joins_per_uid_per_min: u32,

    /// `/rtc` joins one token may make per minute, on this instance; the next is refused
    /// (`too_many_joins`).
    #[arg(long, env = "DAPI_RTC_JOINS_PER_TOKEN_PER_MIN", default_value_t = 10)]
    pub rtc_joins_per_token_per_min: u32,

    /// `signal` messages one `/rtc` socket may send per second (bursts of 4x are
    /// allowed); over it the sender is cut off (`signal_flood`).
    #[arg(long, env = "DAPI_RTC_SIGNALS_PER_SEC", default_value_t = 40)]
    pub rtc_signals_per_sec: u32,

    /// `signal` bytes one `/rtc` socket may send per second (bursts of 4x are allowed);
    /// over it the sender is cut off (`signal_flood`).
    #[arg(long, env = "DAPI_RTC_SIGNAL_BYTES_PER_SEC", default_value_t = 256 * 1024)]
    pub rtc_signal_bytes_per_sec: u32,

    /// Lifetime, in seconds, of the join token handed to a robot agent with a session: a
    /// robot cannot renew on `/rtc`, so its token must last as long as the robot may run.
    #[arg(long, env = "DAPI_ROBOT_TOKEN_TTL", default_value_t = 86_400)]
    pub robot_token_ttl: u32,
    /// Media bridge targets: JSON `{"name": {"url": "wss://..", "secret": "..", "format":
    /// "pcm16"|"opus", "rate": 16000}}` (pcm16 at 8000, 16000, 24000 or 48000 Hz). Checked
    /// at start; `call/robot` and `invite/robot` name a target with `"bridge"`.
    #[arg(long, env = "DAPI_BRIDGES", hide_env_values = true)]
    pub bridges: Option<Secret>,

    /// Days a voicemail recording is kept after its last upload.
    #[arg(long, env = "DAPI_RECORDING_RETENTION", default_value_t = 30)]
    pub recording_retention: u64,

    /// Largest recording upload in bytes (larger bodies get 413).
    #[arg(long, env = "DAPI_MAX_RECORDING_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_recording_bytes: usize,

    /// Push: the worker, APNs and the webhook (`DAPI_PUSH_*`, `DAPI_APNS_*`).
    #[command(flatten)]
    pub push: crate::push::PushConfig,
}

impl Config {
    /// A configuration for tests: port 0 on loopback, the given database, a fixed
    /// App ID and certificate.
    pub fn for_tests(database_url: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.to_owned(),
            app_id: Some("970CA35de60c44645bbae8a215061b33".into()),
            app_certificate: Some(Secret::new("5CFd2fd1755d40ecb72977518be15d3b")),
            token_version: TokenVersion::V006,
            token_ttl: 600,
            timezone: chrono_tz::UTC,
            recent_window: 60,
            ring_timeout: 60,
            heartbeat_timeout: 45,
            calltask_grace: 300,
            robot_uid: "robot".into(),
            max_body: 64 * 1024,
            max_dst_uids: 50,
            max_extra_msg: 1024,
            log_format: "pretty".into(),
            agent_key: Some(Secret::new("test-agent-key")),
            admin_key: Some(Secret::new("test-admin-key")),
            lease_seconds: 10,
            offer_timeout: 5,
            dispatch_poll_ms: 1000,
            robot_max_attempts: 3,
            sweep_ms: 0,
            auth: "open".into(),
            jwt_secret: None,
            jwt_jwks: None,
            jwt_audience: None,
            jwt_issuer: None,
            rate_calls_per_uid: 0,
            rate_calls_per_ip: 0,
            rate_tokens_per_uid: 0,
            rate_tokens_per_ip: 0,
            rate_writes_per_uid: 0,
            rate_writes_per_ip: 0,
            trusted_proxies: crate::client_ip::TrustedProxies::default(),
            header_read_timeout: 10,
            robots_per_uid: 0,
            calltasks_per_uid: 0,
            robot_max_seconds: 0,
            max_asset_bytes: 50 * 1024 * 1024,
            ice_servers: crate::rtc::ice::IceServerList::default(),
            turn_secret: None,
            turn_ttl: None,
            rtc_max_peers: 16,
            rtc_max_frame: 64 * 1024,
            rtc_msgs_per_sec: 50,
            rtc_idle_timeout: 30,
            rtc_bus_heartbeat_ms: 5000,
            rtc_join_timeout: 10,
            rtc_sockets_per_ip: 100,
            rtc_sockets_total: 10_000,
            rtc_joins_per_uid_per_min: 30,
            rtc_joins_per_token_per_min: 10,
            rtc_signals_per_sec: 40,
            rtc_signal_bytes_per_sec: 256 * 1024,
            robot_token_ttl: 86_400,
            bridges: None,
            recording_retention: 30,
            max_recording_bytes: 32 * 1024 * 1024,
            // no worker: tests drive `push::deliver_once`
            push: crate::push::PushConfig {
                push_ms: 0,
                ..crate::push::PushConfig::default()
            },
        }
    }

    /// Lifetime of derived TURN credentials: `DAPI_TURN_TTL`, else the token lifetime.
    pub fn turn_ttl(&self) -> u64 {
        self.turn_ttl.unwrap_or(u64::from(self.token_ttl))
    }

    /// The recent window of `call/msg`.
    pub fn recent_window(&self) -> Duration {
        Duration::from_secs(self.recent_window)
    }
}

/// A secret string: compared in constant time, never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time comparison with a presented value.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An empty value is refused rather than taken as a key: `DAPI_ADMIN_KEY=` in an env file
/// would otherwise turn an endpoint on with the empty string as its key.
impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err("a secret must not be empty: unset the variable instead".into());
        }
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn an_empty_secret_is_refused_not_taken_as_a_key() {
        assert!("".parse::<Secret>().is_err());
        assert!("  ".parse::<Secret>().is_err());
        assert!("k".parse::<Secret>().unwrap().matches("k"));
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        let err = Cli::try_parse_from(["api", "--admin-key", ""]).unwrap_err();
        assert!(err.to_string().contains("must not be empty"), "{err}");
    }
}
