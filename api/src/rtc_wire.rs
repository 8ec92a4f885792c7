//! What one API instance tells the others about its channels: the vocabulary of the
//! `/rtc` bus (PostgreSQL `LISTEN/NOTIFY`, docs/rtc-bus.md) and its JSON form.
//!
//! ```text
//!  hub (instance A) ── Output::Claim / Release ──> store: presence row + NOTIFY Joined / Left
//!                   ── Output::Publish{to: B} ───> store: NOTIFY dapi_rtc_<B> (Signal, Kick, ..)
//!  hub (instance B) <── Input::Bus(BusMessage) ──── listener of B
//! ```
//!
//! The types are plain data: the hub (sans-IO) consumes and produces them, the store
//! writes them into notifications, the listener decodes them. Nothing here does IO. They
//! sit beside `domain`, below both `rtc` and `store`, so the store imports nothing above it.

use protocol::signaling::{LeaveReason, ServerMessage, SignalPayload};
use serde::{Deserialize, Serialize};

use crate::domain::{ChannelName, Uid};

/// Names one running API process on the bus (random per start, 16 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl InstanceId {
    /// A fresh random id.
    pub fn random() -> Self {
        use rand::Rng;
        Self(format!("{:016x}", rand::rng().random::<u64>()))
    }

    /// An id as stored (rows of `rtc_instances` / `rtc_presence`).
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The notification channel that carries messages addressed to this instance.
    pub fn notify_channel(&self) -> String {
        format!("{BROADCAST}_{}", self.0)
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The notification channel every instance listens to: joins and leaves.
pub const BROADCAST: &str = "dapi_rtc";

/// A member of a channel as the presence table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRow {
    /// The channel.
    pub channel: ChannelName,
    /// The member.
    pub uid: Uid,
    /// The instance holding its socket.
    pub instance: InstanceId,
    /// Its join, from one sequence shared by all instances: orders the members of a
    /// channel and tells a join from the uid's earlier and later ones.
    pub seq: i64,
}

/// A join recorded in the presence table (the answer to `Output::Claim`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The channel.
    pub channel: ChannelName,
    /// The uid that joined.
    pub uid: Uid,
    /// This join's sequence number.
    pub seq: i64,
    /// The members of the channel just before this join, on every instance, in join
    /// order (with the uid's earlier join, if any, which this one replaces).
    pub members: Vec<PresenceRow>,
}

/// A message between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMessage {
    /// A member joined on `row.instance` (broadcast).
    Joined(PresenceRow),
    /// A member left (broadcast).
    Left {
        /// The membership that ended (its `seq` is the join's).
        row: PresenceRow,
        /// Why, as its peers are told.
        reason: LeaveReason,
        /// This event's own sequence number (orders it after the joins it follows).
        event_seq: i64,
    },
    /// A `signal` for `to`, held by the addressed instance.
    Signal {
        /// The channel.
        channel: ChannelName,
        /// The sender.
        from: Uid,
        /// The recipient.
        to: Uid,
        /// What it carries.
        payload: SignalPayload,
        /// The sender's instance, told when `to` is no longer there.
        reply_to: InstanceId,
    },
    /// A signal found no `to` on the addressed instance: `from` gets `peer_not_found`.
    Undeliverable {
        /// The channel.
        channel: ChannelName,
        /// The sender of the signal.
        from: Uid,
        /// Who was not there.
        to: Uid,
    },
    /// Server code asked to remove `uid` (held by the addressed instance).
    Kick {
        /// The channel.
        channel: ChannelName,
        /// Who.
        uid: Uid,
        /// Sent to it in `kicked {reason}`.
        reason: String,
    },
}

impl BusMessage {
    /// A short name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Joined(_) => "joined",
            Self::Left { .. } => "left",
            Self::Signal { .. } => "signal",
            Self::Undeliverable { .. } => "undeliverable",
            Self::Kick { .. } => "kick",
        }
    }

    /// The JSON text of a notification.
    pub fn encode(&self) -> String {
        let wire = match self {
            Self::Joined(row) => Wire::Joined {
                channel: row.channel.clone(),
                uid: row.uid.clone(),
                instance: row.instance.clone(),
                seq: row.seq,
            },
            Self::Left {
                row,
                reason,
                event_seq,
            } => Wire::Left {
                channel: row.channel.clone(),
                uid: row.uid.clone(),
                instance: row.instance.clone(),
                seq: row.seq,
                reason: *reason,
                event_seq: *event_seq,
            },
            Self::Signal {
                channel,
                from,
                to,
                payload,
                reply_to,
            } => Wire::Signal {
                channel: channel.clone(),
                to: to.clone(),
                reply_to: reply_to.clone(),
                // The frame `to` will get, whole: the protocol crate owns its shape.
                frame: ServerMessage::Signal {
                    from: from.to_string(),
                    payload: payload.clone(),
                }
                .to_json(),
            },
            Self::Undeliverable { channel, from, to } => Wire::Undeliverable {
                channel: channel.clone(),
                from: from.clone(),
                to: to.clone(),
            },
            Self::Kick {
                channel,
                uid,
                reason,
            } => Wire::Kick {
                channel: channel.clone(),
                uid: uid.clone(),
                reason: reason.clone(),
            },
        };
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Parses a notification (another instance wrote it; still checked).
    pub fn decode(text: &str) -> Result<Self, String> {
        let wire: Wire = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(match wire {
            Wire::Joined {
                channel,
                uid,
                instance,
                seq,
            } => Self::Joined(PresenceRow {
                channel,
                uid,
                instance,
                seq,
            }),
            Wire::Left {
                channel,
                uid,
                instance,
                seq,
                reason,
                event_seq,
            } => Self::Left {
                row: PresenceRow {
                    channel,
                    uid,
                    instance,
                    seq,
                },
                reason,
                event_seq,
            },
            Wire::Signal {
                channel,
                to,
                reply_to,
                frame,
            } => match ServerMessage::parse(&frame).map_err(|e| e.message)? {
                ServerMessage::Signal { from, payload } => Self::Signal {
                    channel,
                    from: Uid::parse(&from)?,
                    to,
                    payload,
                    reply_to,
                },
                _ => return Err("a bus signal carries a signal frame".into()),
            },
            Wire::Undeliverable { channel, from, to } => Self::Undeliverable { channel, from, to },
            Wire::Kick {
                channel,
                uid,
                reason,
            } => Self::Kick {
                channel,
                uid,
                reason,
            },
        })
    }
}

/// The JSON of a notification. Short tags: joins and leaves go to every instance.
#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Wire {
    Joined {
        channel: ChannelName,
        uid: Uid,
        instance: InstanceId,
        seq: i64,
    },
    Left {
        channel: ChannelName,
        uid: Uid,
        instance: InstanceId,
        seq: i64,
        reason: LeaveReason,
        event_seq: i64,
    },
    Signal {
        channel: ChannelName,
        to: Uid,
        reply_to: InstanceId,
        frame: String,
    },
    Undeliverable {
        channel: ChannelName,
        from: Uid,
        to: Uid,
    },
    Kick {
        channel: ChannelName,
        uid: Uid,
        reason: String,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use protocol::signaling::{IceCandidate, SdpType, SessionDescription};

    use super::*;

    fn row(uid: &str, seq: i64) -> PresenceRow {
        PresenceRow {
            channel: ChannelName::parse("ch_1").unwrap(),
            uid: Uid::parse(uid).unwrap(),
            instance: InstanceId::from_stored("00000000000000aa".into()),
            seq,
        }
    }

    #[test]
    fn every_message_survives_its_json() {
        let channel = ChannelName::parse("ch_1").unwrap();
        let messages = [
            BusMessage::Joined(row("alice", 7)),
            BusMessage::Left {
                row: row("bob", 8),
                reason: LeaveReason::Timeout,
                event_seq: 12,
            },
            BusMessage::Signal {
                channel: channel.clone(),
                from: Uid::parse("alice").unwrap(),
                to: Uid::parse("bob").unwrap(),
                payload: SignalPayload::Description(SessionDescription {
                    kind: SdpType::Offer,
                    sdp: "v=0\r\n\"quoted\"\r\n".repeat(1000),
                }),
                reply_to: InstanceId::random(),
            },
            BusMessage::Signal {
                channel: channel.clone(),
                from: Uid::parse("1234").unwrap(),
                to: Uid::parse("robot").unwrap(),
                payload: SignalPayload::Candidate(Some(IceCandidate {
                    candidate: "candidate:1 1 udp 1 192.0.2.1 9 typ host".into(),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                    username_fragment: None,
                })),
                reply_to: InstanceId::random(),
            },
            BusMessage::Signal {
                channel: channel.clone(),
                from: Uid::parse("a").unwrap(),
                to: Uid::parse("b").unwrap(),
                payload: SignalPayload::Candidate(None),
                reply_to: InstanceId::random(),
            },
            BusMessage::Undeliverable {
                channel: channel.clone(),
                from: Uid::parse("a").unwrap(),
                to: Uid::parse("b").unwrap(),
            },
            BusMessage::Kick {
                channel,
                uid: Uid::parse("robot").unwrap(),
                reason: "robot_quit".into(),
            },
        ];
        for m in messages {
            let text = m.encode();
            assert_eq!(BusMessage::decode(&text).unwrap(), m, "{text}");
        }
    }

    #[test]
    fn malformed_notifications_are_errors_not_panics() {
        for text in [
            "",
            "{}",
            "@12",
            r#"{"t":"joined"}"#,
            r#"{"t":"kick","channel":"bad/name","uid":"a","reason":"x"}"#,
            r#"{"t":"signal","channel":"c","to":"b","reply_to":"x","frame":"{}"}"#,
            r#"{"t":"signal","channel":"c","to":"b","reply_to":"x","frame":"{\"type\":\"kicked\",\"reason\":\"r\"}"}"#,
        ] {
            assert!(BusMessage::decode(text).is_err(), "{text}");
        }
    }

    #[test]
    fn instance_ids_name_their_notification_channel() {
        let a = InstanceId::random();
        assert_eq!(a.as_str().len(), 16);
        assert_ne!(a, InstanceId::random());
        assert_eq!(a.notify_channel(), format!("dapi_rtc_{a}"));
        // PostgreSQL identifiers: at most 63 bytes.
        assert!(a.notify_channel().len() <= 63);
    }
}
