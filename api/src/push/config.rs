//! Push configuration: flags and environment variables, flattened into
//! [`Config`](crate::config::Config).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::{ConfigError, Secret, ensure, millis, seconds};

/// Where and how pushes are delivered.
#[derive(Debug, Clone, Args)]
pub struct PushConfig {
    /// How often the push worker looks for due jobs, in milliseconds (new calls wake it
    /// at once). 0: no worker in this process; tests drive `push::deliver_once`.
    #[arg(
        id = "push_ms",
        long = "push-ms",
        env = "DAPI_PUSH_MS",
        default_value = "500",
        value_parser = millis
    )]
    pub every: Duration,

    /// Attempts a push gets before it is marked dead (its last error kept).
    #[arg(
        id = "push_max_attempts",
        long = "push-max-attempts",
        env = "DAPI_PUSH_MAX_ATTEMPTS",
        default_value_t = 5
    )]
    pub max_attempts: i64,

    /// Seconds one request to a push provider may take (connect included).
    #[arg(
        id = "push_timeout",
        long = "push-timeout",
        env = "DAPI_PUSH_TIMEOUT",
        default_value = "10",
        value_parser = seconds
    )]
    pub timeout: Duration,

    /// Devices kept per uid (registering one more forgets the least recently registered).
    #[arg(
        id = "push_max_devices",
        long = "push-max-devices",
        env = "DAPI_PUSH_MAX_DEVICES",
        default_value_t = 10
    )]
    pub max_devices: i64,

    /// Seconds finished push jobs (sent, dead, dropped) are kept for inspection.
    #[arg(
        id = "push_retention",
        long = "push-retention",
        env = "DAPI_PUSH_RETENTION",
        default_value = "604800",
        value_parser = seconds
    )]
    pub retention: Duration,

    /// APNs auth key (`AuthKey_XXXXXXXXXX.p8`, PKCS#8 PEM) that signs provider tokens.
    /// Without the four APNs settings, iOS VoIP pushes are skipped.
    #[arg(long, env = "DAPI_APNS_KEY_FILE")]
    pub apns_key_file: Option<PathBuf>,

    /// The key's id (10 characters, the `kid` of provider tokens).
    #[arg(long, env = "DAPI_APNS_KEY_ID")]
    pub apns_key_id: Option<String>,

    /// The Apple developer team id (the `iss` of provider tokens).
    #[arg(long, env = "DAPI_APNS_TEAM_ID")]
    pub apns_team_id: Option<String>,

    /// The app's bundle id; VoIP pushes go to topic `<bundle id>.voip`.
    #[arg(long, env = "DAPI_APNS_BUNDLE_ID")]
    pub apns_bundle_id: Option<String>,

    /// `production` (https://api.push.apple.com), `sandbox`
    /// (https://api.sandbox.push.apple.com), or a base URL (tests).
    #[arg(long, env = "DAPI_APNS_ENDPOINT", default_value = "production")]
    pub apns_endpoint: ApnsEndpoint,

    /// Extra CA certificates (PEM) trusted by the push clients besides the public roots
    /// (a test APNs stand-in, a webhook behind a private CA).
    #[arg(id = "push_ca_file", long = "push-ca-file", env = "DAPI_PUSH_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Webhook that receives pushes for Android, web and non-VoIP iOS tokens (JSON POST,
    /// signed). Unset: those pushes are skipped.
    #[arg(
        id = "push_webhook_url",
        long = "push-webhook-url",
        env = "DAPI_PUSH_WEBHOOK_URL"
    )]
    pub webhook_url: Option<String>,

    /// Key of the webhook's `X-Dapi-Signature` (HMAC-SHA256 of the body); required with
    /// the URL.
    #[arg(
        id = "push_webhook_secret",
        long = "push-webhook-secret",
        env = "DAPI_PUSH_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<Secret>,
}

/// `DAPI_APNS_ENDPOINT`: the APNs base URL (`production`, `sandbox` or an `https://`
/// URL when parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsEndpoint(String);

impl ApnsEndpoint {
    /// The base URL requests go to.
    pub fn url(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ApnsEndpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        super::apns::endpoint_url(s).map(Self)
    }
}

impl PushConfig {
    /// One request's time limit (at least a second).
    pub fn request_timeout(&self) -> Duration {
        self.timeout.max(Duration::from_secs(1))
    }

    /// The settings come together: the four APNs ones or none; a webhook URL (https, or
    /// http to a loopback address) with its secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let apns = [
            ("DAPI_APNS_KEY_FILE", self.apns_key_file.is_some()),
            ("DAPI_APNS_KEY_ID", self.apns_key_id.is_some()),
            ("DAPI_APNS_TEAM_ID", self.apns_team_id.is_some()),
            ("DAPI_APNS_BUNDLE_ID", self.apns_bundle_id.is_some()),
        ];
        let missing: Vec<&'static str> = apns.iter().filter(|(_, s)| !s).map(|(n, _)| *n).collect();
        if let Some(first) = missing.first().filter(|_| missing.len() < apns.len()) {
            return Err(ConfigError::new(
                first,
                format!(
                    "APNs is half configured: set {} too, or none of the DAPI_APNS_* settings",
                    missing.join(", ")
                ),
            ));
        }
        if let Some(url) = &self.webhook_url {
            ensure(
                self.webhook_secret.is_some(),
                "DAPI_PUSH_WEBHOOK_SECRET",
                "DAPI_PUSH_WEBHOOK_URL needs DAPI_PUSH_WEBHOOK_SECRET (deliveries are signed)",
            )?;
            super::webhook::check_url(url)
                .map_err(|e| ConfigError::new("DAPI_PUSH_WEBHOOK_URL", e.to_string()))?;
        }
        Ok(())
    }
}

impl Default for PushConfig {
    /// The defaults of the flags: a worker, no provider configured.
    fn default() -> Self {
        Self {
            every: Duration::from_millis(500),
            max_attempts: 5,
            timeout: Duration::from_secs(10),
            max_devices: 10,
            retention: Duration::from_secs(7 * 86_400),
            apns_key_file: None,
            apns_key_id: None,
            apns_team_id: None,
            apns_bundle_id: None,
            apns_endpoint: ApnsEndpoint(super::apns::PRODUCTION.to_owned()),
            ca_file: None,
            webhook_url: None,
            webhook_secret: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        push: PushConfig,
    }

    #[test]
    fn default_matches_the_flag_defaults() {
        let parsed = Cli::try_parse_from(["api"]).unwrap().push;
        let d = PushConfig::default();
        assert_eq!(
            (
                parsed.every,
                parsed.max_attempts,
                parsed.timeout,
                parsed.max_devices,
                parsed.retention,
                parsed.apns_endpoint.url(),
            ),
            (
                d.every,
                d.max_attempts,
                d.timeout,
                d.max_devices,
                d.retention,
                d.apns_endpoint.url(),
            )
        );
    }

    #[test]
    fn a_bad_apns_endpoint_is_refused_when_parsed() {
        let err = Cli::try_parse_from(["api", "--apns-endpoint", "http://plain"]).unwrap_err();
        assert!(err.to_string().contains("DAPI_APNS_ENDPOINT"), "{err}");
        let ok = Cli::try_parse_from(["api", "--apns-endpoint", "sandbox"]).unwrap();
        assert_eq!(ok.push.apns_endpoint.url(), super::super::apns::SANDBOX);
    }

    #[test]
    fn apns_is_all_four_settings_or_none() {
        let mut c = PushConfig {
            apns_key_file: Some("AuthKey.p8".into()),
            apns_key_id: Some("ABC123DEFG".into()),
            ..PushConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.var, "DAPI_APNS_TEAM_ID");
        assert!(e.message.contains("DAPI_APNS_BUNDLE_ID"), "{e}");
        c.apns_team_id = Some("TEAM".into());
        c.apns_bundle_id = Some("org.example.app".into());
        c.validate().unwrap();
        PushConfig::default().validate().unwrap();
    }

    #[test]
    fn a_webhook_needs_its_secret_and_a_safe_url() {
        let mut c = PushConfig {
            webhook_url: Some("https://hooks.example.com/push".into()),
            ..PushConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.var, "DAPI_PUSH_WEBHOOK_SECRET");
        assert!(e.message.contains("DAPI_PUSH_WEBHOOK_URL"), "{e}");
        c.webhook_secret = Some(Secret::new("k"));
        c.validate().unwrap();
        c.webhook_url = Some("http://hooks.example.com/push".into());
        let e = c.validate().unwrap_err();
        assert_eq!(e.var, "DAPI_PUSH_WEBHOOK_URL");
        assert!(e.message.contains("https://"), "{e}");
    }
}
