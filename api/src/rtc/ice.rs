//! ICE servers handed out in `joined`: STUN and TURN from `DAPI_ICE_SERVERS`, with TURN REST
//! credentials derived per join from `DAPI_TURN_SECRET`.
//!
//! ```text
//!  DAPI_ICE_SERVERS = [{"urls": "stun:stun.example.org:3478"},
//!                      {"urls": ["turn:turn.example.org:3478?transport=udp"]}]   (no username)
//!  DAPI_TURN_SECRET = s, DAPI_TURN_TTL = 86400
//!                 |
//!  join of uid U at t  -->  username   = "<t + ttl>:U"
//!                           credential = base64(HMAC-SHA1(s, username))
//! ```
//!
//! That is coturn's `use-auth-secret` / `static-auth-secret` scheme (the "TURN REST API"
//! draft): coturn recomputes the credential from the username and accepts it until the
//! expiry in the username passes. Entries that carry their own `username` and `credential`
//! are handed out unchanged. Pure functions: time comes in as an argument.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use protocol::signaling::IceServer;
use serde::Deserialize;
use sha1::Sha1;

use crate::config::Secret;

/// One configured ICE server.
#[derive(Clone)]
pub struct IceServerEntry {
    /// `stun:`, `stuns:`, `turn:` or `turns:` URLs (at least one).
    pub urls: Vec<String>,
    /// Static TURN username; absent on a TURN entry means "derive per join".
    pub username: Option<String>,
    /// Static TURN credential.
    pub credential: Option<Secret>,
}

impl IceServerEntry {
    fn is_turn(&self) -> bool {
        self.urls
            .iter()
            .any(|u| u.starts_with("turn:") || u.starts_with("turns:"))
    }
}

impl std::fmt::Debug for IceServerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServerEntry")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &self.credential.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The value of `DAPI_ICE_SERVERS`: a JSON list of `{urls, username?, credential?}`,
/// `urls` a string or a list of strings.
#[derive(Debug, Clone, Default)]
pub struct IceServerList(pub Vec<IceServerEntry>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryJson {
    urls: OneOrMany,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    credential: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl std::str::FromStr for IceServerList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let raw: Vec<EntryJson> = serde_json::from_str(s).map_err(|e| {
            format!(
                "DAPI_ICE_SERVERS must be a JSON list of {{\"urls\", \"username\"?, \"credential\"?}}: {e}"
            )
        })?;
        let mut out = Vec::with_capacity(raw.len());
        for (i, e) in raw.into_iter().enumerate() {
            let urls = match e.urls {
                OneOrMany::One(u) => vec![u],
                OneOrMany::Many(v) => v,
            };
            if urls.is_empty() {
                return Err(format!("DAPI_ICE_SERVERS entry {i}: urls is empty"));
            }
            for u in &urls {
                let known = ["stun:", "stuns:", "turn:", "turns:"]
                    .iter()
                    .any(|p| u.starts_with(p));
                if !known {
                    return Err(format!(
                        "DAPI_ICE_SERVERS entry {i}: {u:?} is not a stun:, stuns:, turn: or turns: URL"
                    ));
                }
            }
            if e.username.is_some() != e.credential.is_some() {
                return Err(format!(
                    "DAPI_ICE_SERVERS entry {i}: give both username and credential, or neither"
                ));
            }
            out.push(IceServerEntry {
                urls,
                username: e.username,
                credential: e.credential.map(Secret::new),
            });
        }
        Ok(Self(out))
    }
}

/// What the hub needs to hand out ICE servers.
#[derive(Debug, Clone)]
pub struct IceConfig {
    servers: IceServerList,
    turn_secret: Option<Secret>,
    turn_ttl: u64,
}

impl IceConfig {
    /// Checks the configuration: a TURN entry without its own credentials needs a secret.
    pub fn new(
        servers: IceServerList,
        turn_secret: Option<Secret>,
        turn_ttl: u64,
    ) -> Result<Self, String> {
        let needs_secret = servers
            .0
            .iter()
            .find(|e| e.is_turn() && e.username.is_none());
        if let (Some(e), None) = (needs_secret, &turn_secret) {
            return Err(format!(
                "the TURN server {:?} has no username/credential: set DAPI_TURN_SECRET (coturn's static-auth-secret) or give them in DAPI_ICE_SERVERS",
                e.urls
            ));
        }
        if turn_ttl == 0 {
            return Err("DAPI_TURN_TTL must be at least 1 second".into());
        }
        Ok(Self {
            servers,
            turn_secret,
            turn_ttl,
        })
    }

    /// No ICE servers (host candidates only).
    pub fn none() -> Self {
        Self {
            servers: IceServerList::default(),
            turn_secret: None,
            turn_ttl: 86_400,
        }
    }

    /// The ICE servers for `uid` joining at `now_secs` (unix seconds).
    pub fn servers_for(&self, uid: &str, now_secs: u64) -> Vec<IceServer> {
        self.servers
            .0
            .iter()
            .map(|e| {
                let (username, credential) = match (&e.username, &e.credential, &self.turn_secret) {
                    (Some(u), Some(c), _) => (Some(u.clone()), Some(c.expose().to_owned())),
                    (None, _, Some(secret)) if e.is_turn() => {
                        let (u, c) = turn_rest_credential(
                            secret.expose(),
                            uid,
                            now_secs.saturating_add(self.turn_ttl),
                        );
                        (Some(u), Some(c))
                    }
                    _ => (None, None),
                };
                IceServer {
                    urls: e.urls.clone(),
                    username,
                    credential,
                }
            })
            .collect()
    }
}

/// coturn's `use-auth-secret` credential: username `"<expires_at>:<uid>"`, credential
/// `base64(HMAC-SHA1(secret, username))`.
pub fn turn_rest_credential(secret: &str, uid: &str, expires_at: u64) -> (String, String) {
    let username = format!("{expires_at}:{uid}");
    // HMAC takes keys of any length, so this cannot fail.
    let credential = match Hmac::<Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            B64.encode(mac.finalize().into_bytes())
        }
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    (username, credential)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn credential_matches_coturn_formula() {
        // python3: base64(hmac.new(b"north-secret", b"1700000000:alice", sha1).digest())
        let (u, c) = turn_rest_credential("north-secret", "alice", 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        assert_eq!(c, "g+jb180fcj+xlpA/2mP60OdIgU0=");
    }

    #[test]
    fn parses_strings_and_lists() {
        let l: IceServerList = r#"[{"urls":"stun:s.example:3478"},
            {"urls":["turn:t.example:3478?transport=udp","turns:t.example:5349"]},
            {"urls":"turn:u.example","username":"u","credential":"p"}]"#
            .parse()
            .unwrap();
        assert_eq!(l.0.len(), 3);
        assert_eq!(l.0[1].urls.len(), 2);
        assert!(!format!("{l:?}").contains("\"p\""), "credential in Debug");
        assert!("".parse::<IceServerList>().unwrap().0.is_empty());
        assert!("[]".parse::<IceServerList>().unwrap().0.is_empty());
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in [
            "{}",
            "[{}]",
            r#"[{"urls":[]}]"#,
            r#"[{"urls":"http://x"}]"#,
            r#"[{"urls":"turn:x","username":"u"}]"#,
            r#"[{"urls":"stun:x","extra":1}]"#,
            "not json",
        ] {
            assert!(bad.parse::<IceServerList>().is_err(), "{bad}");
        }
    }

    #[test]
    fn turn_without_credentials_needs_a_secret() {
        let l: IceServerList = r#"[{"urls":"turn:t.example"}]"#.parse().unwrap();
        assert!(IceConfig::new(l.clone(), None, 60).is_err());
        assert!(IceConfig::new(l, Some(Secret::new("s")), 60).is_ok());
        let stun: IceServerList = r#"[{"urls":"stun:s.example"}]"#.parse().unwrap();
        assert!(IceConfig::new(stun, None, 60).is_ok());
    }

    #[test]
    fn servers_for_a_join() {
        let l: IceServerList = r#"[{"urls":"stun:s.example"},
            {"urls":"turn:t.example"},
            {"urls":"turn:u.example","username":"fixed","credential":"pw"}]"#
            .parse()
            .unwrap();
        let ice = IceConfig::new(l, Some(Secret::new("north-secret")), 3600).unwrap();
        let s = ice.servers_for("alice", 1_699_996_400);
        assert_eq!(s[0].username, None);
        assert_eq!(s[0].credential, None);
        assert_eq!(s[1].username.as_deref(), Some("1700000000:alice"));
        assert_eq!(
            s[1].credential.as_deref(),
            Some("g+jb180fcj+xlpA/2mP60OdIgU0=")
        );
        assert_eq!(s[2].username.as_deref(), Some("fixed"));
        assert_eq!(s[2].credential.as_deref(), Some("pw"));
        assert!(IceConfig::none().servers_for("a", 0).is_empty());
    }
}
