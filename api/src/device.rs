//! The device newtypes of push, parsed at the edge (`/dapi/device/*` bodies, rows):
//! a [`Platform`] is one of three names, a [`PushToken`] is always safe to put in a URL
//! path and is never printed in full.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// Where a device's pushes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// An iPhone or iPad: APNs (VoIP tokens directly, others through the webhook).
    Ios,
    /// An Android device: the webhook.
    Android,
    /// A browser: the webhook.
    Web,
}

impl Platform {
    /// Stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ios => "ios",
            Self::Android => "android",
            Self::Web => "web",
        }
    }

    /// Parses the wire form (`ios`, `android`, `web`; case-insensitive).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ios" => Ok(Self::Ios),
            "android" => Ok(Self::Android),
            "web" => Ok(Self::Web),
            _ => Err(format!("platform must be ios, android or web, not {s:?}")),
        }
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(de::Error::custom)
    }
}

/// Longest push token accepted (FCM tokens are ~160 bytes; web push subscriptions more).
pub const MAX_TOKEN_LEN: usize = 4096;

/// A device's push token: 1-4096 bytes of printable ASCII without spaces. APNs tokens
/// (platform `ios`) must be hex, since they go into the request path.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PushToken(String);

impl PushToken {
    /// Parses a token for `platform`.
    pub fn parse(platform: Platform, s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_TOKEN_LEN {
            return Err(format!("must be 1-{MAX_TOKEN_LEN} characters"));
        }
        if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err("must be printable ASCII without spaces".into());
        }
        if platform == Platform::Ios && !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("of an ios device must be the hex APNs device token".into());
        }
        Ok(Self(s.to_owned()))
    }

    /// The token itself; use only where it is sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A form safe for logs: the first 6 characters and the length.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

/// A log-safe form of any token: its first 6 characters and its length.
pub fn redact(token: &str) -> String {
    let head: String = token.chars().take(6).collect();
    format!("{head}…({} chars)", token.len())
}

impl fmt::Debug for PushToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PushToken({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_case_insensitively_and_refuse_others() {
        assert_eq!(Platform::parse("iOS"), Ok(Platform::Ios));
        assert_eq!(Platform::parse("android"), Ok(Platform::Android));
        assert_eq!(Platform::parse("web"), Ok(Platform::Web));
        assert!(Platform::parse("windows").is_err());
        assert!(Platform::parse("").is_err());
    }

    #[test]
    fn tokens_are_bounded_printable_and_hex_on_ios() {
        assert!(PushToken::parse(Platform::Ios, "a1B2c3").is_ok());
        assert!(PushToken::parse(Platform::Ios, "not-hex").is_err());
        assert!(PushToken::parse(Platform::Ios, "../../3/device").is_err());
        assert!(PushToken::parse(Platform::Android, "fcm:APA91b-_x").is_ok());
        assert!(PushToken::parse(Platform::Android, "with space").is_err());
        assert!(PushToken::parse(Platform::Web, "").is_err());
        assert!(PushToken::parse(Platform::Web, &"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
    }

    #[test]
    fn debug_and_redacted_never_show_the_whole_token() {
        let t = PushToken::parse(Platform::Ios, "0123456789abcdef0123456789abcdef").unwrap();
        let shown = format!("{t:?} {}", t.redacted());
        assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
        assert!(shown.contains("012345"), "{shown}");
    }
}
