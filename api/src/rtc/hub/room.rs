//! A channel's members on this instance, and what everyone is told when one enters or
//! goes: `joined` (the members before), `peer_joined`, `peer_left`, a replacement
//! (`kicked {reason: "replaced"}`) and a kick by server code.
//!
//! How a join gets here (a counter, or a claim in the presence table) and the members of
//! other instances are `membership.rs`'s business; a room only holds sockets of this
//! instance. A join sees the others through [`Elsewhere`], which is empty on the only
//! instance.

use protocol::signaling::{LeaveReason, ServerMessage};

use super::{ConnId, Hub, Output, Phase, PresenceEvent, close_code};
use crate::domain::{ChannelName, Uid};

/// A member whose socket is on this instance.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) uid: Uid,
    pub(super) conn: ConnId,
    /// Join order (the presence table's sequence with a bus, a counter without).
    pub(super) seq: i64,
}

/// The members of one channel on this instance, in join order.
#[derive(Debug, Default)]
pub(super) struct Room {
    members: Vec<Member>,
}

impl Room {
    /// The socket of `uid`, when it is a member here.
    pub(super) fn conn_of(&self, uid: &Uid) -> Option<ConnId> {
        self.member(uid).map(|m| m.conn)
    }

    /// The member `uid`, when it is here.
    pub(super) fn member(&self, uid: &Uid) -> Option<&Member> {
        self.members.iter().find(|m| &m.uid == uid)
    }

    /// Every member, in join order.
    pub(super) fn members(&self) -> &[Member] {
        &self.members
    }

    /// The members' sockets, in join order.
    pub(super) fn locals(&self) -> Vec<ConnId> {
        self.members.iter().map(|m| m.conn).collect()
    }

    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Takes `uid` on `conn` out; its join number when it was there.
    fn remove(&mut self, uid: &Uid, conn: ConnId) -> Option<i64> {
        let at = self
            .members
            .iter()
            .position(|m| &m.uid == uid && m.conn == conn)?;
        Some(self.members.remove(at).seq)
    }
}

/// The members of other instances as a join numbered `seq` sees them: those numbered
/// before it (listed in `joined`) and after it (announced to it with `peer_joined`).
/// Empty on the only instance.
#[derive(Debug, Default)]
pub(super) struct Elsewhere {
    /// Join number and uid of each member before.
    pub(super) before: Vec<(i64, Uid)>,
    /// The members after, in join order.
    pub(super) after: Vec<Uid>,
}

impl Hub {
    /// Makes `conn` the member `uid` of `channel` with join number `seq`: replaces the
    /// uid's earlier join here, answers `joined` (the members that came before, here and
    /// `elsewhere`), tells the others here, and names the members of other instances that
    /// came after with `peer_joined`.
    pub(super) fn enter(
        &mut self,
        now: i64,
        conn: ConnId,
        channel: ChannelName,
        uid: Uid,
        seq: i64,
        elsewhere: Elsewhere,
    ) {
        if let Some(old) = self.membership.room_entry(&channel).conn_of(&uid) {
            self.replace_here(&channel, &uid, old);
        }
        let room = self.membership.room_entry(&channel);
        let peers: Vec<ConnId> = room.locals();
        let mut before: Vec<(i64, String)> = room
            .members
            .iter()
            .map(|m| (m.seq, m.uid.to_string()))
            .chain(
                elsewhere
                    .before
                    .into_iter()
                    .map(|(seq, u)| (seq, u.to_string())),
            )
            .collect();
        before.sort();
        room.members.push(Member {
            uid: uid.clone(),
            conn,
            seq,
        });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::Member(channel.clone(), uid.clone());
            c.next_presence_ms = now.saturating_add(self.cfg.presence_every_ms);
        }
        let now_secs = u64::try_from(now / 1000).unwrap_or(0);
        let ice_servers = self.ice.servers_for(uid.as_str(), now_secs);
        self.send(
            conn,
            ServerMessage::Joined {
                channel: channel.to_string(),
                uid: uid.to_string(),
                peers: before.into_iter().map(|(_, u)| u).collect(),
                ice_servers,
            },
        );
        self.tell(&peers, |u| ServerMessage::PeerJoined { uid: u }, &uid);
        // Members of other instances whose joins were recorded after this one: they
        // offer to this socket, as to any member present before them.
        for later in elsewhere.after {
            self.send(
                conn,
                ServerMessage::PeerJoined {
                    uid: later.to_string(),
                },
            );
        }
        self.out.push_back(Output::Presence {
            channel,
            uid,
            event: PresenceEvent::Here,
        });
    }

    /// `uid`'s socket `old` here was replaced by a later join (here or elsewhere): it gets
    /// `kicked {reason: "replaced"}` and is closed, the others see `peer_left replaced`.
    /// The uid stays present: no presence change, no release.
    pub(super) fn replace_here(&mut self, channel: &ChannelName, uid: &Uid, old: ConnId) {
        self.send(
            old,
            ServerMessage::Kicked {
                reason: LeaveReason::Replaced.as_str().to_owned(),
            },
        );
        self.conns.remove(&old);
        self.remove_member(channel, uid, old, LeaveReason::Replaced);
        self.out.push_back(Output::Close {
            conn: old,
            code: close_code::NORMAL,
        });
    }

    /// Takes `uid` (on `conn`) out of its room and tells the others; returns its join
    /// number when it was there.
    pub(super) fn remove_member(
        &mut self,
        channel: &ChannelName,
        uid: &Uid,
        conn: ConnId,
        why: LeaveReason,
    ) -> Option<i64> {
        let room = self.membership.room_mut(channel)?;
        let seq = room.remove(uid, conn)?;
        let others = room.locals();
        self.membership.tidy(channel);
        self.tell(
            &others,
            |u| ServerMessage::PeerLeft {
                uid: u,
                reason: why,
            },
            uid,
        );
        Some(seq)
    }

    /// Kicks `uid` when it is a member here; whether it was.
    pub(super) fn kick_local(&mut self, channel: &ChannelName, uid: &Uid, reason: &str) -> bool {
        let Some(conn) = self.membership.room(channel).and_then(|r| r.conn_of(uid)) else {
            return false;
        };
        self.send(
            conn,
            ServerMessage::Kicked {
                reason: reason.to_owned(),
            },
        );
        self.drop_conn(conn, LeaveReason::Kicked, true, Some(close_code::NORMAL));
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use crate::rtc::hub::testkit::*;

    #[test]
    fn join_answers_joined_and_tells_the_others() {
        let mut h = hub();
        let (a, out) = join(&mut h, T0, "c1", "alice");
        assert_eq!(
            sent_to(&out, a),
            vec![ServerMessage::Joined {
                channel: "c1".into(),
                uid: "alice".into(),
                peers: vec![],
                ice_servers: vec![],
            }]
        );
        assert_eq!(presence(&out), vec![("alice".into(), PresenceEvent::Here)]);
        let (b, out) = join(&mut h, T0, "c1", "bob");
        assert!(matches!(
            &sent_to(&out, b)[0],
            ServerMessage::Joined { peers, .. } if peers == &vec!["alice".to_string()]
        ));
        assert_eq!(
            sent_to(&out, a),
            vec![ServerMessage::PeerJoined { uid: "bob".into() }]
        );
        let (_c, out) = join(&mut h, T0, "c1", "carol");
        assert!(matches!(
            &sent_to(&out, _c)[0],
            ServerMessage::Joined { peers, .. } if peers == &vec!["alice".to_string(), "bob".to_string()]
        ));
        assert_eq!(
            h.present(&ch("c1")),
            vec![uid("alice"), uid("bob"), uid("carol")]
        );
        // Another channel is another room.
        let (_d, out) = join(&mut h, T0, "c2", "alice");
        assert_eq!(sent_to(&out, a), vec![]);
        assert_eq!(h.present(&ch("c2")), vec![uid("alice")]);
    }

    #[test]
    fn joined_carries_ice_servers_with_fresh_turn_credentials() {
        let servers = r#"[{"urls":"stun:s.example"},{"urls":"turn:t.example"}]"#
            .parse()
            .unwrap();
        let ice = IceConfig::new(
            servers,
            Some(crate::config::Secret::new("north-secret")),
            3600,
        )
        .unwrap();
        let mut h = Hub::new(HubConfig::default(), issuer(), ice);
        let (a, out) = join(&mut h, T0, "c1", "alice");
        let ServerMessage::Joined { ice_servers, .. } = &sent_to(&out, a)[0] else {
            panic!("no joined");
        };
        assert_eq!(ice_servers.len(), 2);
        assert_eq!(ice_servers[1].username.as_deref(), Some("1700003600:alice"));
        assert!(ice_servers[1].credential.is_some());
    }

    #[test]
    fn leave_and_close_tell_the_others() {
        let mut h = hub();
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (b, _) = join(&mut h, T0, "c1", "bob");
        let (c, _) = join(&mut h, T0, "c1", "carol");
        let out = text(&mut h, T0, b, r#"{"type":"leave"}"#);
        for other in [a, c] {
            assert_eq!(
                sent_to(&out, other),
                vec![ServerMessage::PeerLeft {
                    uid: "bob".into(),
                    reason: LeaveReason::Left
                }]
            );
        }
        assert_eq!(closed(&out, b), Some(close_code::NORMAL));
        assert_eq!(
            presence(&out),
            vec![(
                "bob".into(),
                PresenceEvent::Gone {
                    reason: LeaveReason::Left,
                    deliberate: true
                }
            )]
        );
        h.handle_input(T0, Input::Closed { conn: c });
        let out = drain(&mut h);
        assert_eq!(
            sent_to(&out, a),
            vec![ServerMessage::PeerLeft {
                uid: "carol".into(),
                reason: LeaveReason::Left
            }]
        );
        assert_eq!(closed(&out, c), None, "already closed");
        assert_eq!(
            presence(&out),
            vec![(
                "carol".into(),
                PresenceEvent::Gone {
                    reason: LeaveReason::Left,
                    deliberate: false
                }
            )]
        );
        assert_eq!(h.present(&ch("c1")), vec![uid("alice")]);
        h.handle_input(T0, Input::Closed { conn: a });
        drain(&mut h);
        assert!(h.present(&ch("c1")).is_empty());
        assert!(h.membership.is_empty(), "empty rooms are removed");
        // Inputs for forgotten sockets are ignored.
        h.handle_input(T0, Input::Closed { conn: a });
        h.handle_input(T0, Input::Text { conn: a, text: "x" });
        assert!(drain(&mut h).is_empty());
    }

    #[test]
    fn rejoin_replaces_the_older_socket() {
        let mut h = hub();
        let (a1, _) = join(&mut h, T0, "c1", "alice");
        let (b, _) = join(&mut h, T0, "c1", "bob");
        let (a2, out) = join(&mut h, T0 + 5, "c1", "alice");
        assert_eq!(
            sent_to(&out, a1),
            vec![ServerMessage::Kicked {
                reason: "replaced".into()
            }]
        );
        assert_eq!(closed(&out, a1), Some(close_code::NORMAL));
        assert_eq!(
            sent_to(&out, b),
            vec![
                ServerMessage::PeerLeft {
                    uid: "alice".into(),
                    reason: LeaveReason::Replaced
                },
                ServerMessage::PeerJoined {
                    uid: "alice".into()
                }
            ]
        );
        assert!(matches!(
            &sent_to(&out, a2)[0],
            ServerMessage::Joined { peers, .. } if peers == &vec!["bob".to_string()]
        ));
        // The uid stayed present: no Gone, a Here for the new socket.
        assert_eq!(presence(&out), vec![("alice".into(), PresenceEvent::Here)]);
        assert_eq!(h.present(&ch("c1")), vec![uid("bob"), uid("alice")]);
        // Signals reach the new socket; the old one is forgotten.
        let out = text(&mut h, T0, b, &offer_to("alice"));
        assert_eq!(sent_to(&out, a2).len(), 1);
        h.handle_input(T0, Input::Closed { conn: a1 });
        assert!(
            drain(&mut h).is_empty(),
            "closing the replaced socket changes nothing"
        );
        assert_eq!(h.present(&ch("c1")), vec![uid("bob"), uid("alice")]);
    }

    #[test]
    fn kick_removes_a_uid() {
        let mut h = hub();
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (r, _) = join(&mut h, T0, "c1", "robot");
        assert!(h.kick(&ch("c1"), &uid("robot"), "robot_quit"));
        let out = drain(&mut h);
        assert_eq!(
            sent_to(&out, r),
            vec![ServerMessage::Kicked {
                reason: "robot_quit".into()
            }]
        );
        assert_eq!(closed(&out, r), Some(close_code::NORMAL));
        assert_eq!(
            sent_to(&out, a),
            vec![ServerMessage::PeerLeft {
                uid: "robot".into(),
                reason: LeaveReason::Kicked
            }]
        );
        assert_eq!(
            presence(&out),
            vec![(
                "robot".into(),
                PresenceEvent::Gone {
                    reason: LeaveReason::Kicked,
                    deliberate: true
                }
            )]
        );
        assert_eq!(h.present(&ch("c1")), vec![uid("alice")]);
        assert!(!h.kick(&ch("c1"), &uid("robot"), "again"));
        assert!(!h.kick(&ch("nope"), &uid("alice"), "x"));
        assert!(drain(&mut h).is_empty());
    }
}
