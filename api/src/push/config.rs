//! Push configuration: flags and environment variables, flattened into
//! [`Config`](crate::config::Config).

use std::path::PathBuf;

use clap::Args;

use crate::config::Secret;

/// Where and how pushes are delivered.
#[derive(Debug, Clone, Args)]
pub struct PushConfig {
    /// How often the push worker looks for due jobs, in milliseconds (new calls wake it
    /// at once). 0: no worker in this process; tests drive `push::deliver_once`.
    #[arg(long, env = "DAPI_PUSH_MS", default_value_t = 500)]
    pub push_ms: u64,

    /// Attempts a push gets before it is marked dead (its last error kept).
    #[arg(long, env = "DAPI_PUSH_MAX_ATTEMPTS", default_value_t = 5)]
    pub push_max_attempts: i64,

    /// Seconds one request to a push provider may take (connect included).
    #[arg(long, env = "DAPI_PUSH_TIMEOUT", default_value_t = 10)]
    pub push_timeout: u64,

    /// Devices kept per uid (registering one more forgets the least recently registered).
    #[arg(long, env = "DAPI_PUSH_MAX_DEVICES", default_value_t = 10)]
    pub push_max_devices: i64,

    /// Seconds finished push jobs (sent, dead, dropped) are kept for inspection.
    #[arg(long, env = "DAPI_PUSH_RETENTION", default_value_t = 7 * 86_400)]
    pub push_retention: u64,

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
    pub apns_endpoint: String,

    /// Extra CA certificates (PEM) trusted by the push clients besides the public roots
    /// (a test APNs stand-in, a webhook behind a private CA).
    #[arg(long, env = "DAPI_PUSH_CA_FILE")]
    pub push_ca_file: Option<PathBuf>,

    /// Webhook that receives pushes for Android, web and non-VoIP iOS tokens (JSON POST,
    /// signed). Unset: those pushes are skipped.
    #[arg(long, env = "DAPI_PUSH_WEBHOOK_URL")]
    pub push_webhook_url: Option<String>,

    /// Key of the webhook's `X-Dapi-Signature` (HMAC-SHA256 of the body); required with
    /// the URL.
    #[arg(long, env = "DAPI_PUSH_WEBHOOK_SECRET", hide_env_values = true)]
    pub push_webhook_secret: Option<Secret>,
}

impl Default for PushConfig {
    /// The defaults of the flags: a worker, no provider configured.
    fn default() -> Self {
        Self {
            push_ms: 500,
            push_max_attempts: 5,
            push_timeout: 10,
            push_max_devices: 10,
            push_retention: 7 * 86_400,
            apns_key_file: None,
            apns_key_id: None,
            apns_team_id: None,
            apns_bundle_id: None,
            apns_endpoint: "production".into(),
            push_ca_file: None,
            push_webhook_url: None,
            push_webhook_secret: None,
        }
    }
}

#[cfg(test)]
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
                parsed.push_ms,
                parsed.push_max_attempts,
                parsed.push_timeout,
                parsed.push_max_devices,
                parsed.push_retention,
                parsed.apns_endpoint.as_str(),
            ),
            (
                d.push_ms,
                d.push_max_attempts,
                d.push_timeout,
                d.push_max_devices,
                d.push_retention,
                d.apns_endpoint.as_str(),
            )
        );
    }
}
