//! Domain newtypes, parsed at the edge (request bodies, WebSocket messages, rows).
//!
//! Inside the crate only these types travel: a [`Uid`] is always 1-255 printable ASCII
//! bytes, a [`ChannelName`] always follows Agora's channel rule, an [`EventCode`] is
//! always one of the codes of the spec.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// A user id. Arrives as a JSON string (`"1234"`) or number (`1234`); both mean the
/// same user and are kept as the decimal string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Uid(String);

impl Uid {
    /// Parses a uid: 1-255 bytes of printable ASCII.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 255 {
            return Err("must be 1-255 characters".into());
        }
        if !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err("must be printable ASCII".into());
        }
        Ok(Self(s.to_owned()))
    }

    /// The uid as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The uid as the seed's `call/msg` rows show it: a JSON number when it is all
    /// digits in canonical form and fits in 64 bits, else a string.
    pub fn to_json(&self) -> serde_json::Value {
        let canonical = !self.0.starts_with('0') || self.0 == "0";
        match self.0.parse::<u64>() {
            Ok(n) if canonical && self.0.bytes().all(|b| b.is_ascii_digit()) => n.into(),
            _ => self.0.clone().into(),
        }
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid({})", self.0)
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

struct UidVisitor;

impl Visitor<'_> for UidVisitor {
    type Value = Uid;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a uid: a string of 1-255 printable ASCII characters or an integer")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Uid, E> {
        Uid::parse(v).map_err(|m| E::custom(format!("uid {m}")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Uid, E> {
        Ok(Uid(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Uid, E> {
        Ok(Uid(v.to_string()))
    }
}

impl<'de> Deserialize<'de> for Uid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UidVisitor)
    }
}

/// `dst_uid`: an array of uids or a single uid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidList(pub Vec<Uid>);

impl<'de> Deserialize<'de> for UidList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            Many(Vec<Uid>),
            One(Uid),
        }
        // `untagged` loses the inner message; parse through a Value to keep it.
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    Uid::deserialize(item).map_err(|e| de::Error::custom(format!("item {i}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(UidList),
            serde_json::Value::Null => Ok(UidList(Vec::new())),
            other => OneOrMany::deserialize(other)
                .map(|o| match o {
                    OneOrMany::Many(v) => UidList(v),
                    OneOrMany::One(u) => UidList(vec![u]),
                })
                .map_err(|_| de::Error::custom("expected a uid or an array of uids")),
        }
    }
}

/// A channel name: 1-64 bytes of Agora's allowed characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ChannelName(String);

impl ChannelName {
    /// Parses a client-supplied channel name.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 64 {
            return Err("must be 1-64 characters".into());
        }
        const EXTRA: &[u8] = b" !#$%&()+-:;<=>.?@[]^_{|}~,";
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || EXTRA.contains(&b))
        {
            return Err("has a character outside Agora's channel alphabet".into());
        }
        Ok(Self(s.to_owned()))
    }

    /// A fresh server-generated name: `ch_` and 10 random alphanumerics.
    pub fn generate() -> Self {
        use rand::Rng;
        use rand::distr::Alphanumeric;
        let tail: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(10)
            .map(char::from)
            .collect();
        Self(format!("ch_{tail}"))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelName({})", self.0)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChannelName::parse(&s).map_err(|m| de::Error::custom(format!("channel {m}")))
    }
}

/// The event codes of `call/event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventCode {
    /// 1: the call connected (two or more people in the channel).
    Connected,
    /// 2: the call ended after it connected.
    Ended,
    /// 1000: the caller cancelled while ringing.
    CallerCancelled,
    /// 1001: the caller gave up: nobody answered.
    NoAnswer,
    /// 1002: the caller saw the callee reject.
    CallerSawReject,
    /// 1003: the callee rejected.
    CalleeRejected,
    /// 1006: the callee saw the caller cancel.
    CalleeSawCancel,
    /// 1007: an error; the call failed.
    Failed,
}

impl EventCode {
    /// Every code, in the spec's order.
    pub const ALL: [EventCode; 8] = [
        Self::Connected,
        Self::Ended,
        Self::CallerCancelled,
        Self::NoAnswer,
        Self::CallerSawReject,
        Self::CalleeRejected,
        Self::CalleeSawCancel,
        Self::Failed,
    ];

    /// The numeric code.
    pub fn code(self) -> i64 {
        match self {
            Self::Connected => 1,
            Self::Ended => 2,
            Self::CallerCancelled => 1000,
            Self::NoAnswer => 1001,
            Self::CallerSawReject => 1002,
            Self::CalleeRejected => 1003,
            Self::CalleeSawCancel => 1006,
            Self::Failed => 1007,
        }
    }

    /// Parses a numeric code.
    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl<'de> Deserialize<'de> for EventCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let n = match &v {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        let n = n.ok_or_else(|| de::Error::custom("code must be an integer"))?;
        Self::from_code(n).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown event code {n}; known codes are 1, 2, 1000, 1001, 1002, 1003, 1006, 1007"
            ))
        })
    }
}

/// Status of a `call/msg` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MsgStatus {
    /// 0 初始化: created.
    Created = 0,
    /// 1 信息已获取: the callee has fetched it.
    Fetched = 1,
    /// 2 通话已经完结: ended.
    Ended = 2,
}

impl MsgStatus {
    /// From the stored integer; `None` for anything the store never writes.
    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            0 => Some(Self::Created),
            1 => Some(Self::Fetched),
            2 => Some(Self::Ended),
            _ => None,
        }
    }
    /// The seed's label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Created => "初始化",
            Self::Fetched => "信息已获取",
            Self::Ended => "通话已经完结",
        }
    }
}

/// Name of a prepared audio asset: `[A-Za-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct AssetName(String);

impl AssetName {
    /// Parses an asset name.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty()
            || s.len() > 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("must match [A-Za-z0-9_-]{1,64}".into());
        }
        Ok(Self(s.to_owned()))
    }
    /// The shipped default asset.
    pub fn default_asset() -> Self {
        Self("default".into())
    }
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AssetName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AssetName::parse(&s).map_err(|m| de::Error::custom(format!("audio asset name {m}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_from_string_and_number_are_equal() {
        let a: Uid = serde_json::from_str("\"1234\"").unwrap();
        let b: Uid = serde_json::from_str("1234").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn uid_rejects_bad_values() {
        assert!(serde_json::from_str::<Uid>("\"\"").is_err());
        assert!(serde_json::from_str::<Uid>("\"a\\u0001\"").is_err());
        assert!(serde_json::from_str::<Uid>(&format!("\"{}\"", "x".repeat(256))).is_err());
        assert!(serde_json::from_str::<Uid>("1.5").is_err());
        assert!(serde_json::from_str::<Uid>("null").is_err());
        assert!(serde_json::from_str::<Uid>("[1]").is_err());
    }

    #[test]
    fn uid_json_form_is_number_only_when_canonical_digits() {
        assert_eq!(
            Uid::parse("4321").unwrap().to_json(),
            serde_json::json!(4321)
        );
        assert_eq!(Uid::parse("0").unwrap().to_json(), serde_json::json!(0));
        assert_eq!(
            Uid::parse("0123").unwrap().to_json(),
            serde_json::json!("0123")
        );
        assert_eq!(
            Uid::parse("abc").unwrap().to_json(),
            serde_json::json!("abc")
        );
        assert_eq!(
            Uid::parse("99999999999999999999").unwrap().to_json(),
            serde_json::json!("99999999999999999999")
        );
    }

    #[test]
    fn dst_uid_single_or_array() {
        let a: UidList = serde_json::from_str("[\"1\", 2]").unwrap();
        assert_eq!(a.0.len(), 2);
        let b: UidList = serde_json::from_str("\"7\"").unwrap();
        assert_eq!(b.0, vec![Uid::parse("7").unwrap()]);
        let c: UidList = serde_json::from_str("8").unwrap();
        assert_eq!(c.0, vec![Uid::parse("8").unwrap()]);
        assert!(serde_json::from_str::<UidList>("[\"\"]").is_err());
        assert!(serde_json::from_str::<UidList>("{}").is_err());
    }

    #[test]
    fn channel_rule() {
        assert!(ChannelName::parse("ch_4aY875LP4o").is_ok());
        assert!(ChannelName::parse("a b!#$%&()+-:;<=>.?@[]^_{|}~,").is_ok());
        assert!(ChannelName::parse("").is_err());
        assert!(ChannelName::parse("é").is_err());
        assert!(ChannelName::parse("a/b").is_err());
        assert!(ChannelName::parse(&"x".repeat(65)).is_err());
        let g = ChannelName::generate();
        assert_eq!(g.as_str().len(), 13);
        assert!(ChannelName::parse(g.as_str()).is_ok());
    }

    #[test]
    fn event_codes() {
        for c in EventCode::ALL {
            assert_eq!(EventCode::from_code(c.code()), Some(c));
        }
        assert!(serde_json::from_str::<EventCode>("5").is_err());
        assert_eq!(
            serde_json::from_str::<EventCode>("\"1003\"").unwrap(),
            EventCode::CalleeRejected
        );
    }
}
