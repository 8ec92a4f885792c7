//! `api token mint|inspect`: the operators' command line for tokens.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{
    PRIVILEGE_JOIN, Service, TOKEN_OUTER_LIFETIME, TokenVersion, mint_006, mint_007, parse_006,
    parse_007,
};

/// Token subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a token.
    ///
    /// 006: `--ts` and privilege expiries are absolute unix seconds (0 = never); `--ts`
    /// defaults to now + `--expire`. 007: `--ts` is the issue time (default now),
    /// `--expire` the token lifetime and privilege values are relative seconds.
    /// Without `--privilege`, the token has the join privilege for 600 s.
    Mint(MintArgs),
    /// Print a token's decoded fields as JSON, and whether its signature checks.
    Inspect(InspectArgs),
}

/// The uid a token is for.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct UidArg {
    /// Numeric uid; 0 is the empty uid (any user), as in Agora's builders.
    #[arg(long)]
    pub uid: Option<u32>,
    /// String account, verbatim ("0" stays "0").
    #[arg(long)]
    pub account: Option<String>,
}

impl UidArg {
    fn uid_str(&self) -> String {
        match (&self.uid, &self.account) {
            (Some(0), _) => String::new(),
            (Some(n), _) => n.to_string(),
            (None, Some(a)) => a.clone(),
            (None, None) => String::new(),
        }
    }
}

/// Arguments of `api token mint`.
#[derive(Debug, Args)]
pub struct MintArgs {
    /// App ID.
    #[arg(long)]
    pub app_id: String,
    /// App Certificate (its ASCII bytes are the HMAC key).
    #[arg(long)]
    pub app_certificate: String,
    /// Channel name.
    #[arg(long)]
    pub channel: String,
    #[command(flatten)]
    pub who: UidArg,
    /// 006 or 007.
    #[arg(long, default_value = "006")]
    pub version: TokenVersion,
    /// Salt (default: random in 1..=99999999).
    #[arg(long)]
    pub salt: Option<u32>,
    /// 006: absolute expiry of the token; 007: issue time. Unix seconds.
    #[arg(long)]
    pub ts: Option<u32>,
    /// Token lifetime in seconds (006: sets the default `--ts`; 007: the expire field).
    #[arg(long, default_value_t = TOKEN_OUTER_LIFETIME)]
    pub expire: u32,
    /// Privilege `ID=EXPIRE` (repeatable). 1 join, 2 publish audio, 3 publish video,
    /// 4 publish data.
    #[arg(long = "privilege", value_parser = parse_privilege)]
    pub privileges: Vec<(u16, u32)>,
}

/// Arguments of `api token inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The token.
    pub token: String,
    /// Certificate to check the signature with.
    #[arg(long)]
    pub app_certificate: Option<String>,
    /// Channel (006 only carries its CRC, so checking a 006 signature needs it).
    #[arg(long)]
    pub channel: Option<String>,
    /// Numeric uid for checking a 006 signature.
    #[arg(long)]
    pub uid: Option<u32>,
    /// String account for checking a 006 signature.
    #[arg(long, conflicts_with = "uid")]
    pub account: Option<String>,
}

fn parse_privilege(s: &str) -> Result<(u16, u32), String> {
    let (id, exp) = s
        .split_once('=')
        .ok_or("expected ID=EXPIRE, for example 1=600")?;
    let id = id
        .trim()
        .parse::<u16>()
        .map_err(|e| format!("privilege id {id:?}: {e}"))?;
    let exp = exp
        .trim()
        .parse::<u32>()
        .map_err(|e| format!("privilege expiry {exp:?}: {e}"))?;
    Ok((id, exp))
}

fn now() -> u32 {
    u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(u32::MAX)
}

/// Runs a token subcommand, printing to stdout.
pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Mint(a) => {
            println!("{}", mint(&a, now())?);
            Ok(())
        }
        TokenCommand::Inspect(a) => {
            println!("{}", serde_json::to_string_pretty(&inspect(&a, now())?)?);
            Ok(())
        }
    }
}

/// Mints the token `a` describes, with `now` as the current time.
pub fn mint(a: &MintArgs, now: u32) -> anyhow::Result<String> {
    use rand::Rng;
    let salt = a
        .salt
        .unwrap_or_else(|| rand::rng().random_range(1..=99_999_999));
    let uid = a.who.uid_str();
    let mut privileges: BTreeMap<u16, u32> = a.privileges.iter().copied().collect();
    let token = match a.version {
        TokenVersion::V006 => {
            if privileges.is_empty() {
                privileges.insert(PRIVILEGE_JOIN, now.saturating_add(600));
            }
            let ts = a.ts.unwrap_or_else(|| now.saturating_add(a.expire));
            mint_006(
                &a.app_id,
                &a.app_certificate,
                &a.channel,
                &uid,
                salt,
                ts,
                &privileges,
            )?
        }
        TokenVersion::V007 => {
            if privileges.is_empty() {
                privileges.insert(PRIVILEGE_JOIN, 600);
            }
            let svc = Service::Rtc {
                channel: a.channel.clone(),
                uid,
            };
            mint_007(
                &a.app_id,
                &a.app_certificate,
                a.ts.unwrap_or(now),
                a.expire,
                salt,
                &[(svc, privileges)],
            )?
        }
    };
    Ok(token)
}

fn privileges_json(p: &BTreeMap<u16, u32>) -> serde_json::Value {
    p.iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Decodes a token into JSON; checks the signature when a certificate (and, for 006,
/// the channel and uid) are given.
pub fn inspect(a: &InspectArgs, now: u32) -> anyhow::Result<serde_json::Value> {
    let t = a.token.trim();
    if t.starts_with("006") {
        let p = parse_006(t)?;
        let uid = match (&a.uid, &a.account) {
            (Some(0), _) => Some(String::new()),
            (Some(n), _) => Some(n.to_string()),
            (None, Some(s)) => Some(s.clone()),
            (None, None) => None,
        };
        let signature = match (&a.app_certificate, &a.channel, &uid) {
            (Some(cert), Some(ch), Some(uid)) => {
                // verify() also checks expiry; report the signature on its own.
                match super::verify(t, &p.app_id, cert, ch, uid, 0) {
                    Ok(_) => json!("valid"),
                    Err(super::TokenError::BadSignature) => json!("invalid"),
                    Err(e) => json!(format!("invalid: {e}")),
                }
            }
            (Some(_), _, _) => json!(
                "unchecked: a 006 token carries only CRCs of the channel and uid; pass --channel and --uid or --account"
            ),
            _ => json!("unchecked: no --app-certificate"),
        };
        Ok(json!({
            "version": "006",
            "app_id": p.app_id,
            "salt": p.salt,
            "ts": p.ts,
            "expired": u64::from(p.ts) < u64::from(now),
            "crc_channel": p.crc_channel,
            "crc_uid": p.crc_uid,
            "channel_crc_matches": a.channel.as_ref().map(|c| crc32fast::hash(c.as_bytes()) == p.crc_channel),
            "privileges": privileges_json(&p.privileges),
            "signature": signature,
        }))
    } else if t.starts_with("007") {
        let p = parse_007(t)?;
        let services: Vec<_> = p
            .services
            .iter()
            .map(|(s, privs)| {
                let mut v = match s {
                    Service::Rtc { channel, uid } => json!({"type": 1, "name": "rtc", "channel": channel, "uid": uid}),
                    Service::Rtm { user_id } => json!({"type": 2, "name": "rtm", "user_id": user_id}),
                    Service::Streaming { channel, account } => json!({"type": 3, "name": "streaming", "channel": channel, "account": account}),
                    Service::Fpa => json!({"type": 4, "name": "fpa"}),
                    Service::Chat { user_id } => json!({"type": 5, "name": "chat", "user_id": user_id}),
                    Service::Fcdn { channel, account } => json!({"type": 6, "name": "fcdn", "channel": channel, "account": account}),
                    Service::Apaas { room_uuid, user_uuid, role } => json!({"type": 7, "name": "apaas", "room_uuid": room_uuid, "user_uuid": user_uuid, "role": role}),
                };
                v["privileges"] = privileges_json(privs);
                v
            })
            .collect();
        let signature = match &a.app_certificate {
            Some(cert) => {
                let want = super::signature_007(cert, p.issue_ts, p.salt, &p.signed);
                if super::constant_eq(&want, &p.signature) {
                    json!("valid")
                } else {
                    json!("invalid")
                }
            }
            None => json!("unchecked: no --app-certificate"),
        };
        Ok(json!({
            "version": "007",
            "app_id": p.app_id,
            "issue_ts": p.issue_ts,
            "expire": p.expire,
            "expired": p.expire != 0 && u64::from(p.issue_ts) + u64::from(p.expire) < u64::from(now),
            "salt": p.salt,
            "services": services,
            "signature": signature,
        }))
    } else {
        anyhow::bail!("not an AccessToken: it must start with 006 or 007")
    }
}
