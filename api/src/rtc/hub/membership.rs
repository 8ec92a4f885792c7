//! Who decides a join, and who else is in a channel: [`Membership::Local`] on the only
//! instance (SQLite), or [`Membership::Shared`] with the other instances of a PostgreSQL
//! deployment (docs/rtc-bus.md).
//!
//! ```text
//!   Local:  join ──> room full? ──> next number ──> enter
//!   Shared: join ──> Output::Claim ──> (presence table) ──> Input::Claimed{seq, members}
//!                      │ signals for it are held                 └──> resync, enter
//!                      └──> Input::ClaimRefused ──> channel_full / unavailable
//!           Input::Bus(Joined / Left) and Input::Snapshot ──> members of other instances
//! ```
//!
//! Everything about the other instances lives in [`Shared`]: their members, the sequence
//! numbers that order joins across instances and tell stale events from new ones, the
//! sockets whose join is being recorded and the signals held for them. [`Local`] holds
//! rooms and a counter, nothing else, so the single-instance path cannot read or change
//! remote state; bus inputs reaching a local hub are ignored.

use std::collections::HashMap;

use protocol::signaling::{LeaveReason, ServerMessage, SignalPayload, codes};

use super::room::{Elsewhere, Room};
use super::{
    BusMessage, Claim, ConnId, Hub, InstanceId, LAPSED_REASON, Output, Phase, PresenceRow,
    close_code,
};
use crate::domain::{ChannelName, Uid};

/// Signals held for a socket whose join is being recorded, before the others are
/// answered `Undeliverable`.
const MAX_HELD: usize = 64;

/// The rooms, and who decides a join.
#[derive(Debug)]
pub(super) enum Membership {
    /// The only instance: the hub numbers joins and sees every member.
    Local(Local),
    /// One of several instances: the presence table numbers joins; the rooms mirror the
    /// members of the others.
    Shared(Shared),
}

/// Membership on the only instance.
#[derive(Debug)]
pub(super) struct Local {
    rooms: HashMap<ChannelName, Room>,
    /// The next join's number.
    next_seq: i64,
}

/// Membership shared with other instances over the bus.
#[derive(Debug)]
pub(super) struct Shared {
    /// This instance on the bus.
    me: InstanceId,
    rooms: HashMap<ChannelName, SharedRoom>,
}

/// A channel as one of several instances sees it.
#[derive(Debug, Default)]
pub(super) struct SharedRoom {
    /// Members on this instance.
    here: Room,
    /// Members on other instances, in join order.
    remote: Vec<PresenceRow>,
    /// Sockets of this instance whose join is being recorded, in the order they asked.
    joining: Vec<Joining>,
    /// The newest bus event applied to this room: older ones are stale.
    seen: i64,
}

/// A socket whose join is being recorded in the presence table.
#[derive(Debug)]
struct Joining {
    uid: Uid,
    conn: ConnId,
    /// Signals that arrived from other instances meanwhile.
    held: Vec<Held>,
}

/// A signal from another instance waiting for its addressee's join.
#[derive(Debug)]
pub(super) struct Held {
    /// The sender.
    pub(super) from: Uid,
    /// What it carries.
    pub(super) payload: SignalPayload,
    /// The sender's instance, told when the addressee does not join after all.
    pub(super) reply_to: InstanceId,
}

/// Where a member's socket is.
#[derive(Debug)]
pub(super) enum Place {
    /// On this instance.
    Here(ConnId),
    /// On `instance` (shared membership only); `me` is this instance, for answers.
    Elsewhere {
        /// The instance holding the socket.
        instance: InstanceId,
        /// This instance.
        me: InstanceId,
    },
}

impl SharedRoom {
    fn remote_of(&self, uid: &Uid) -> Option<&PresenceRow> {
        self.remote.iter().find(|r| &r.uid == uid)
    }

    fn is_idle(&self) -> bool {
        self.here.is_empty() && self.remote.is_empty() && self.joining.is_empty()
    }

    /// Inserts a member of another instance, keeping join order.
    fn insert_remote(&mut self, row: PresenceRow) {
        let at = self.remote.partition_point(|r| r.seq < row.seq);
        self.remote.insert(at, row);
    }

    /// The members of other instances as the join `seq` sees them.
    fn elsewhere(&self, seq: i64) -> Elsewhere {
        Elsewhere {
            before: self
                .remote
                .iter()
                .filter(|r| r.seq < seq)
                .map(|r| (r.seq, r.uid.clone()))
                .collect(),
            after: self
                .remote
                .iter()
                .filter(|r| r.seq > seq)
                .map(|r| r.uid.clone())
                .collect(),
        }
    }
}

impl Shared {
    fn tidy(&mut self, channel: &ChannelName) {
        if self.rooms.get(channel).is_some_and(SharedRoom::is_idle) {
            self.rooms.remove(channel);
        }
    }

    /// Whether a bus event numbered `seq` is newer than what `channel`'s room applied.
    fn is_new(&self, channel: &ChannelName, seq: i64) -> bool {
        self.rooms.get(channel).is_none_or(|r| seq > r.seen)
    }

    /// `conn` no longer waits for its join in `channel`: its place goes (and the room,
    /// when nothing else is left); returns the signals held for it.
    fn leave_joining(&mut self, channel: &ChannelName, conn: ConnId) -> Vec<Held> {
        let Some(room) = self.rooms.get_mut(channel) else {
            return Vec::new();
        };
        let mut held = Vec::new();
        room.joining.retain_mut(|j| {
            if j.conn == conn {
                held.append(&mut j.held);
            }
            j.conn != conn
        });
        self.tidy(channel);
        held
    }

    /// Where signals for `uid`, whose join is being recorded in `channel`, wait; `None`
    /// when it is not joining or its queue is full.
    pub(super) fn holder(&mut self, channel: &ChannelName, uid: &Uid) -> Option<&mut Vec<Held>> {
        let room = self.rooms.get_mut(channel)?;
        let j = room.joining.iter_mut().find(|j| &j.uid == uid)?;
        (j.held.len() < MAX_HELD).then_some(&mut j.held)
    }
}

impl Membership {
    pub(super) fn local() -> Self {
        Membership::Local(Local {
            rooms: HashMap::new(),
            next_seq: 1,
        })
    }

    pub(super) fn shared(me: InstanceId) -> Self {
        Membership::Shared(Shared {
            me,
            rooms: HashMap::new(),
        })
    }

    /// This instance on the bus (`None`: the only instance).
    pub(super) fn me(&self) -> Option<&InstanceId> {
        match self {
            Membership::Local(_) => None,
            Membership::Shared(s) => Some(&s.me),
        }
    }

    /// The members of `channel` on this instance.
    pub(super) fn room(&self, channel: &ChannelName) -> Option<&Room> {
        match self {
            Membership::Local(l) => l.rooms.get(channel),
            Membership::Shared(s) => s.rooms.get(channel).map(|r| &r.here),
        }
    }

    pub(super) fn room_mut(&mut self, channel: &ChannelName) -> Option<&mut Room> {
        match self {
            Membership::Local(l) => l.rooms.get_mut(channel),
            Membership::Shared(s) => s.rooms.get_mut(channel).map(|r| &mut r.here),
        }
    }

    /// The members of `channel` on this instance; the room is made when there is none.
    pub(super) fn room_entry(&mut self, channel: &ChannelName) -> &mut Room {
        match self {
            Membership::Local(l) => l.rooms.entry(channel.clone()).or_default(),
            Membership::Shared(s) => &mut s.rooms.entry(channel.clone()).or_default().here,
        }
    }

    /// Every room's members on this instance.
    pub(super) fn rooms(&self) -> Box<dyn Iterator<Item = &Room> + '_> {
        match self {
            Membership::Local(l) => Box::new(l.rooms.values()),
            Membership::Shared(s) => Box::new(s.rooms.values().map(|r| &r.here)),
        }
    }

    /// Forgets `channel`'s room when nobody is in it (nor joining it).
    pub(super) fn tidy(&mut self, channel: &ChannelName) {
        match self {
            Membership::Local(l) => {
                if l.rooms.get(channel).is_some_and(Room::is_empty) {
                    l.rooms.remove(channel);
                }
            }
            Membership::Shared(s) => s.tidy(channel),
        }
    }

    /// Forgets every room (the server is stopping).
    pub(super) fn clear(&mut self) {
        match self {
            Membership::Local(l) => l.rooms.clear(),
            Membership::Shared(s) => s.rooms.clear(),
        }
    }

    /// No room is kept.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Membership::Local(l) => l.rooms.is_empty(),
            Membership::Shared(s) => s.rooms.is_empty(),
        }
    }

    /// Uids present in `channel`, here and (shared) elsewhere, in join order.
    pub(super) fn present(&self, channel: &ChannelName) -> Vec<Uid> {
        let (here, remote) = match self {
            Membership::Local(l) => (l.rooms.get(channel), &[][..]),
            Membership::Shared(s) => match s.rooms.get(channel) {
                Some(r) => (Some(&r.here), &r.remote[..]),
                None => (None, &[][..]),
            },
        };
        let mut all: Vec<(i64, &Uid)> = here
            .map(Room::members)
            .unwrap_or_default()
            .iter()
            .map(|m| (m.seq, &m.uid))
            .chain(remote.iter().map(|r| (r.seq, &r.uid)))
            .collect();
        all.sort();
        all.into_iter().map(|(_, u)| u.clone()).collect()
    }

    /// Where the member `uid` of `channel` is, as far as this instance knows.
    pub(super) fn locate(&self, channel: &ChannelName, uid: &Uid) -> Option<Place> {
        if let Some(conn) = self.room(channel).and_then(|r| r.conn_of(uid)) {
            return Some(Place::Here(conn));
        }
        match self {
            Membership::Local(_) => None,
            Membership::Shared(s) => {
                let row = s.rooms.get(channel)?.remote_of(uid)?;
                Some(Place::Elsewhere {
                    instance: row.instance.clone(),
                    me: s.me.clone(),
                })
            }
        }
    }
}

impl Hub {
    pub(super) fn shared(&mut self) -> Option<&mut Shared> {
        match &mut self.membership {
            Membership::Local(_) => None,
            Membership::Shared(s) => Some(s),
        }
    }

    /// A verified join goes on: entered here (local), or claimed in the presence table
    /// (shared), which decides the limit over every instance, the join order and a
    /// replacement wherever the uid was.
    pub(super) fn admit_join(&mut self, now: i64, conn: ConnId, channel: ChannelName, uid: Uid) {
        let max = self.cfg.max_peers;
        match &mut self.membership {
            Membership::Local(local) => {
                let room = local.rooms.entry(channel.clone()).or_default();
                if room.conn_of(&uid).is_none() && room.len() >= max {
                    self.membership.tidy(&channel);
                    self.fail(
                        conn,
                        codes::CHANNEL_FULL,
                        &format!("the channel already has {max} peers"),
                        close_code::POLICY,
                    );
                    return;
                }
                let seq = local.next_seq;
                local.next_seq += 1;
                self.enter(now, conn, channel, uid, seq, Elsewhere::default());
            }
            Membership::Shared(shared) => {
                let room = shared.rooms.entry(channel.clone()).or_default();
                room.joining.push(Joining {
                    uid: uid.clone(),
                    conn,
                    held: Vec::new(),
                });
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.phase = Phase::Claiming(channel.clone(), uid.clone());
                }
                self.out.push_back(Output::Claim { conn, channel, uid });
            }
        }
    }

    /// A member of this instance left: with shared membership its presence row is
    /// released (if it is still this join, `seq`) and the other instances are told.
    pub(super) fn release(
        &mut self,
        channel: &ChannelName,
        uid: &Uid,
        seq: i64,
        reason: LeaveReason,
    ) {
        if self.shared().is_some() {
            self.out.push_back(Output::Release {
                channel: channel.clone(),
                uid: uid.clone(),
                seq,
                reason,
            });
        }
    }

    /// A socket that was joining is gone: its place in the room goes, and the signals
    /// held for it are answered `Undeliverable`.
    pub(super) fn abandon_join(&mut self, conn: ConnId, channel: &ChannelName, uid: &Uid) {
        let held = self
            .shared()
            .map(|s| s.leave_joining(channel, conn))
            .unwrap_or_default();
        self.refuse_held(channel, uid, held);
    }

    fn refuse_held(&mut self, channel: &ChannelName, to: &Uid, held: Vec<Held>) {
        for h in held {
            self.out.push_back(Output::Publish {
                to: h.reply_to,
                message: BusMessage::Undeliverable {
                    channel: channel.clone(),
                    from: h.from,
                    to: to.clone(),
                },
            });
        }
    }

    /// Kicks `uid` on the instance holding it, when that is another one; whether it is.
    pub(super) fn kick_remote(&mut self, channel: &ChannelName, uid: &Uid, reason: &str) -> bool {
        let Some(Place::Elsewhere { instance, .. }) = self.membership.locate(channel, uid) else {
            return false;
        };
        self.out.push_back(Output::Publish {
            to: instance,
            message: BusMessage::Kick {
                channel: channel.clone(),
                uid: uid.clone(),
                reason: reason.to_owned(),
            },
        });
        true
    }

    pub(super) fn on_claimed(&mut self, now: i64, conn: ConnId, claim: &Claim) {
        let Some(me) = self.shared().map(|s| s.me.clone()) else {
            return;
        };
        let Some((channel, uid)) = self
            .conns
            .get_mut(&conn)
            .filter(|c| c.phase == Phase::Claiming(claim.channel.clone(), claim.uid.clone()))
            .and_then(|c| c.phase.take_pending(true))
        else {
            // The socket went while its join was being recorded: undo the join.
            self.out.push_back(Output::Release {
                channel: claim.channel.clone(),
                uid: claim.uid.clone(),
                seq: claim.seq,
                reason: LeaveReason::Left,
            });
            return;
        };
        // The socket keeps its place in `joining` until it has entered, so the room is not
        // dropped (with what it has seen) while the uid's earlier join is replaced.
        let Some(shared) = self.shared() else {
            return;
        };
        let room = shared.rooms.entry(channel.clone()).or_default();
        let held: Vec<Held> = room
            .joining
            .iter_mut()
            .find(|j| j.conn == conn)
            .map(|j| std::mem::take(&mut j.held))
            .unwrap_or_default();
        if room.seen < claim.seq {
            // The table's view is newer than what the bus delivered so far: take it (the
            // events before this join that are still on their way are stale now).
            let rows: Vec<PresenceRow> = claim
                .members
                .iter()
                .filter(|r| r.instance != me)
                .cloned()
                .collect();
            self.resync_room(&channel, rows);
            if let Some(s) = self.shared() {
                s.rooms.entry(channel.clone()).or_default().seen = claim.seq;
            }
        }
        let Some(shared) = self.shared() else {
            return;
        };
        let room = shared.rooms.entry(channel.clone()).or_default();
        if room.remote_of(&uid).is_some_and(|r| r.seq > claim.seq) {
            // The same uid joined again elsewhere, after this join was recorded.
            self.send(
                conn,
                ServerMessage::Kicked {
                    reason: LeaveReason::Replaced.as_str().to_owned(),
                },
            );
            self.conns.remove(&conn);
            self.out.push_back(Output::Close {
                conn,
                code: close_code::NORMAL,
            });
            self.leave_joining(&channel, conn);
            self.refuse_held(&channel, &uid, held);
            return;
        }
        if room.here.conn_of(&uid).is_none() {
            // Its earlier join on another instance, which kicks that socket itself.
            self.remove_remote(&channel, &uid, None, LeaveReason::Replaced);
        }
        let elsewhere = self
            .shared()
            .and_then(|s| s.rooms.get(&channel))
            .map(|r| r.elsewhere(claim.seq))
            .unwrap_or_default();
        self.enter(now, conn, channel.clone(), uid, claim.seq, elsewhere);
        self.leave_joining(&channel, conn);
        for h in held {
            self.send(
                conn,
                ServerMessage::Signal {
                    from: h.from.to_string(),
                    payload: h.payload,
                },
            );
        }
    }

    /// [`Shared::leave_joining`], when shared.
    fn leave_joining(&mut self, channel: &ChannelName, conn: ConnId) {
        if let Some(s) = self.shared() {
            s.leave_joining(channel, conn);
        }
    }

    pub(super) fn on_claim_refused(&mut self, conn: ConnId, full: bool) {
        let Some((channel, uid)) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.phase.take_pending(true))
        else {
            return;
        };
        self.abandon_join(conn, &channel, &uid);
        if full {
            let max = self.cfg.max_peers;
            self.fail(
                conn,
                codes::CHANNEL_FULL,
                &format!("the channel already has {max} peers"),
                close_code::POLICY,
            );
        } else {
            self.fail(
                conn,
                codes::UNAVAILABLE,
                "the join could not be recorded; try again",
                close_code::TRY_AGAIN,
            );
        }
    }

    pub(super) fn on_bus(&mut self, message: &BusMessage) {
        let Some(me) = self.shared().map(|s| s.me.clone()) else {
            return;
        };
        match message {
            BusMessage::Joined(row) => {
                // This instance's own joins were applied when their claim returned.
                let new = self
                    .shared()
                    .is_some_and(|s| s.is_new(&row.channel, row.seq));
                if row.instance == me || !new {
                    return;
                }
                self.apply_joined(row.clone());
                if let Some(room) = self.shared().and_then(|s| s.rooms.get_mut(&row.channel)) {
                    room.seen = room.seen.max(row.seq);
                }
            }
            BusMessage::Left {
                row,
                reason,
                event_seq,
            } => {
                let Some(shared) = self.shared() else {
                    return;
                };
                if !shared.is_new(&row.channel, *event_seq) {
                    return;
                }
                let Some(room) = shared.rooms.get_mut(&row.channel) else {
                    return;
                };
                room.seen = *event_seq;
                if row.instance == me {
                    // This instance's members leave here first; one still here was
                    // removed by another instance that declared this one dead.
                    let conn = room
                        .here
                        .members()
                        .iter()
                        .find(|m| m.uid == row.uid && m.seq == row.seq)
                        .map(|m| m.conn);
                    if let Some(conn) = conn {
                        self.evict(conn, false);
                    }
                    return;
                }
                self.remove_remote(&row.channel, &row.uid, Some(row.seq), *reason);
            }
            BusMessage::Signal {
                channel,
                from,
                to,
                payload,
                reply_to,
            } => self.on_relayed(channel, from, to, payload, reply_to),
            BusMessage::Undeliverable { channel, from, to } => {
                self.on_undeliverable(channel, from, to);
            }
            BusMessage::Kick {
                channel,
                uid,
                reason,
            } => {
                self.kick_local(channel, uid, reason);
            }
        }
    }

    /// Another instance declared this one dead: every member here is dropped.
    pub(super) fn on_lapsed(&mut self) {
        if self.shared().is_none() {
            return;
        }
        let mut ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase.member().is_some())
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        for conn in ids {
            self.evict(conn, true);
        }
    }

    /// Drops a member whose presence row another instance removed (this instance was
    /// declared dead): it gets `kicked`, its peers here `peer_left` with reason `timeout`.
    fn evict(&mut self, conn: ConnId, release: bool) {
        self.send(
            conn,
            ServerMessage::Kicked {
                reason: LAPSED_REASON.to_owned(),
            },
        );
        self.forget(
            conn,
            LeaveReason::Timeout,
            false,
            Some(close_code::NORMAL),
            release,
        );
    }

    /// A member of another instance joined: it replaces the uid's older join (here or
    /// elsewhere), and the members here are told.
    fn apply_joined(&mut self, row: PresenceRow) {
        let Some(shared) = self.shared() else {
            return;
        };
        let room = shared.rooms.entry(row.channel.clone()).or_default();
        let local = room.here.member(&row.uid).map(|m| (m.conn, m.seq));
        if let Some((old, seq)) = local {
            if seq >= row.seq {
                return;
            }
            // Replaced by a later join on another instance: the uid stays present.
            self.replace_here(&row.channel, &row.uid, old);
        } else if let Some(r) = room.remote_of(&row.uid) {
            if r.seq >= row.seq {
                return;
            }
            self.remove_remote(&row.channel, &row.uid, None, LeaveReason::Replaced);
        }
        let Some(shared) = self.shared() else {
            return;
        };
        let room = shared.rooms.entry(row.channel.clone()).or_default();
        let locals = room.here.locals();
        let uid = row.uid.clone();
        room.insert_remote(row);
        self.tell(&locals, |u| ServerMessage::PeerJoined { uid: u }, &uid);
    }

    /// Removes a member of another instance (its join `seq`, or any) and tells the
    /// members here.
    fn remove_remote(
        &mut self,
        channel: &ChannelName,
        uid: &Uid,
        seq: Option<i64>,
        why: LeaveReason,
    ) {
        let Some(shared) = self.shared() else {
            return;
        };
        let Some(room) = shared.rooms.get_mut(channel) else {
            return;
        };
        let Some(at) = room
            .remote
            .iter()
            .position(|r| &r.uid == uid && seq.is_none_or(|s| s == r.seq))
        else {
            return;
        };
        room.remote.remove(at);
        let locals = room.here.locals();
        shared.tidy(channel);
        self.tell(
            &locals,
            |u| ServerMessage::PeerLeft {
                uid: u,
                reason: why,
            },
            uid,
        );
    }

    /// Makes the room's members of other instances `rows` (in join order), telling the
    /// members here about each difference.
    fn resync_room(&mut self, channel: &ChannelName, rows: Vec<PresenceRow>) {
        let gone: Vec<(Uid, i64)> = self
            .shared()
            .and_then(|s| s.rooms.get(channel))
            .map(|room| {
                room.remote
                    .iter()
                    .filter(|r| !rows.iter().any(|n| n.uid == r.uid && n.seq == r.seq))
                    .map(|r| (r.uid.clone(), r.seq))
                    .collect()
            })
            .unwrap_or_default();
        for (uid, seq) in gone {
            self.remove_remote(channel, &uid, Some(seq), LeaveReason::Left);
        }
        for row in rows {
            self.apply_joined(row);
        }
    }

    pub(super) fn on_snapshot(&mut self, rows: &[PresenceRow]) {
        let Some(shared) = self.shared() else {
            return;
        };
        let mut by_channel: HashMap<ChannelName, Vec<PresenceRow>> = HashMap::new();
        for r in rows.iter().filter(|r| r.instance != shared.me) {
            by_channel
                .entry(r.channel.clone())
                .or_default()
                .push(r.clone());
        }
        let mut channels: Vec<ChannelName> = shared
            .rooms
            .iter()
            .filter(|(_, r)| !r.remote.is_empty())
            .map(|(c, _)| c.clone())
            .chain(by_channel.keys().cloned())
            .collect();
        channels.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        channels.dedup();
        for channel in channels {
            let mut rows = by_channel.remove(&channel).unwrap_or_default();
            rows.sort_by_key(|r| r.seq);
            let newest = rows.last().map(|r| r.seq);
            self.resync_room(&channel, rows);
            let room = self.shared().and_then(|s| s.rooms.get_mut(&channel));
            if let (Some(seq), Some(room)) = (newest, room) {
                room.seen = room.seen.max(seq);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use crate::rtc::hub::testkit::*;

    #[test]
    fn replacing_in_a_full_channel_is_allowed() {
        let mut h = hub_with(HubConfig {
            max_peers: 2,
            ..HubConfig::default()
        });
        join(&mut h, T0, "c1", "alice");
        join(&mut h, T0, "c1", "bob");
        let (c, out) = join(&mut h, T0, "c1", "carol");
        assert_eq!(error_code(&out, c).as_deref(), Some(codes::CHANNEL_FULL));
        assert_eq!(closed(&out, c), Some(close_code::POLICY));
        assert!(sent_to(&out, ConnId(1)).is_empty(), "members hear nothing");
        let (a2, out) = join(&mut h, T0, "c1", "alice");
        assert!(matches!(
            &sent_to(&out, a2)[0],
            ServerMessage::Joined { .. }
        ));
        assert_eq!(h.present(&ch("c1")).len(), 2);
    }

    #[test]
    fn channel_limit() {
        let mut h = hub_with(HubConfig {
            max_peers: 3,
            ..HubConfig::default()
        });
        for u in ["a", "b", "c"] {
            let (c, out) = join(&mut h, T0, "c1", u);
            assert!(matches!(&sent_to(&out, c)[0], ServerMessage::Joined { .. }));
        }
        let (d, out) = join(&mut h, T0, "c1", "d");
        assert_eq!(error_code(&out, d).as_deref(), Some(codes::CHANNEL_FULL));
        // Other channels are not affected.
        let (e, out) = join(&mut h, T0, "c2", "d");
        assert!(matches!(&sent_to(&out, e)[0], ServerMessage::Joined { .. }));
        assert_eq!(HubConfig::default().max_peers, 16);
        assert_eq!(HubConfig::default().max_frame, 65_536);
    }

    #[test]
    fn with_a_bus_joined_lists_every_instance_in_join_order() {
        let mut h = bus_hub();
        assert!(joined_on(&mut h, row("c1", "bob", B, 3)).is_empty());
        // The claim knows carol (her join is still on its way here) and bob.
        let c = ask(&mut h, "c1", "alice");
        assert!(
            h.present(&ch("c1")) == vec![uid("bob")],
            "not a member before the claim"
        );
        let out = claimed(
            &mut h,
            c,
            "c1",
            "alice",
            5,
            vec![row("c1", "carol", C, 1), row("c1", "bob", B, 3)],
        );
        assert_eq!(peers_of(&out, c), vec!["carol", "bob"]);
        assert_eq!(presence(&out), vec![("alice".into(), PresenceEvent::Here)]);
        assert_eq!(
            h.present(&ch("c1")),
            vec![uid("carol"), uid("bob"), uid("alice")]
        );
        // Carol's join arriving now is stale; so is any event numbered before the claim.
        assert!(joined_on(&mut h, row("c1", "carol", C, 1)).is_empty());
        assert!(left_on(&mut h, row("c1", "bob", B, 3), LeaveReason::Left, 4).is_empty());
        // New events reach alice.
        let out = joined_on(&mut h, row("c1", "dave", B, 7));
        assert_eq!(sent_to(&out, c), vec![joined_msg("dave")]);
        let out = left_on(&mut h, row("c1", "bob", B, 3), LeaveReason::Timeout, 8);
        assert_eq!(
            sent_to(&out, c),
            vec![left_msg("bob", LeaveReason::Timeout)]
        );
        // A leave of a join that is not the one present changes nothing.
        assert!(left_on(&mut h, row("c1", "dave", B, 6), LeaveReason::Left, 9).is_empty());
        // This instance's own joins come back on the bus too: ignored.
        assert!(joined_on(&mut h, row("c1", "alice", A, 5)).is_empty());
        assert_eq!(
            h.present(&ch("c1")),
            vec![uid("carol"), uid("alice"), uid("dave")]
        );
        assert_eq!(
            h.occupancy(),
            (1, 1),
            "metrics count this instance's members"
        );
    }

    #[test]
    fn members_that_joined_after_the_claim_are_announced_after_joined() {
        let mut h = bus_hub();
        let c = ask(&mut h, "c1", "alice");
        // Erin joined elsewhere after alice's join was recorded; her instance told her
        // about alice, so she offers at once, before alice's claim came back here.
        assert!(joined_on(&mut h, row("c1", "erin", B, 9)).is_empty());
        let signal = BusMessage::Signal {
            channel: ch("c1"),
            from: uid("erin"),
            to: uid("alice"),
            payload: offer_payload(),
            reply_to: inst(B),
        };
        assert!(bus(&mut h, signal).is_empty(), "held until joined");
        let out = claimed(&mut h, c, "c1", "alice", 5, vec![]);
        let to_alice = sent_to(&out, c);
        assert!(matches!(&to_alice[0], ServerMessage::Joined { peers, .. } if peers.is_empty()));
        assert_eq!(
            to_alice[1..],
            [
                joined_msg("erin"),
                ServerMessage::Signal {
                    from: "erin".into(),
                    payload: offer_payload()
                }
            ]
        );
    }

    #[test]
    fn a_join_elsewhere_replaces_a_member_here_and_the_reverse() {
        let mut h = bus_hub();
        let (a, _) = bus_join(&mut h, "c1", "alice", 2, vec![]);
        let (c, _) = bus_join(&mut h, "c1", "carol", 3, vec![]);
        // Alice joined again on B: her socket here is replaced, carol sees it.
        let out = joined_on(&mut h, row("c1", "alice", B, 6));
        assert_eq!(
            sent_to(&out, a),
            vec![ServerMessage::Kicked {
                reason: "replaced".into()
            }]
        );
        assert_eq!(closed(&out, a), Some(close_code::NORMAL));
        assert_eq!(
            sent_to(&out, c),
            vec![
                left_msg("alice", LeaveReason::Replaced),
                joined_msg("alice")
            ]
        );
        assert!(released(&out).is_empty(), "the row is B's now");
        assert!(presence(&out).is_empty(), "alice is still present");
        assert_eq!(h.present(&ch("c1")), vec![uid("carol"), uid("alice")]);
        // Now alice joins here again, replacing her join on B.
        let (a2, out) = bus_join(
            &mut h,
            "c1",
            "alice",
            8,
            vec![row("c1", "carol", A, 3), row("c1", "alice", B, 6)],
        );
        assert_eq!(peers_of(&out, a2), vec!["carol"]);
        assert_eq!(
            sent_to(&out, c),
            vec![
                left_msg("alice", LeaveReason::Replaced),
                joined_msg("alice")
            ]
        );
        assert_eq!(h.present(&ch("c1")), vec![uid("carol"), uid("alice")]);
        // A join recorded before a later one elsewhere: the socket is replaced at once.
        let d = ask(&mut h, "c1", "dave");
        joined_on(&mut h, row("c1", "dave", B, 20));
        let out = claimed(&mut h, d, "c1", "dave", 15, vec![]);
        assert_eq!(
            sent_to(&out, d),
            vec![ServerMessage::Kicked {
                reason: "replaced".into()
            }]
        );
        assert_eq!(closed(&out, d), Some(close_code::NORMAL));
        assert!(sent_to(&out, c).is_empty());
        assert_eq!(h.connections(), 2);
    }

    #[test]
    fn kicks_reach_other_instances_and_members_leaving_release_their_rows() {
        let mut h = bus_hub();
        joined_on(&mut h, row("c1", "robot", B, 1));
        let (a, _) = bus_join(&mut h, "c1", "alice", 2, vec![row("c1", "robot", B, 1)]);
        let members = vec![row("c1", "robot", B, 1), row("c1", "alice", A, 2)];
        let (b, _) = bus_join(&mut h, "c1", "bob", 3, members);
        assert!(h.kick(&ch("c1"), &uid("robot"), "robot_quit"));
        assert_eq!(
            published(&drain(&mut h)),
            vec![(
                inst(B),
                BusMessage::Kick {
                    channel: ch("c1"),
                    uid: uid("robot"),
                    reason: "robot_quit".into()
                }
            )]
        );
        assert!(!h.kick(&ch("c1"), &uid("nobody"), "x"));
        // A kick from another instance for a member here.
        let out = bus(
            &mut h,
            BusMessage::Kick {
                channel: ch("c1"),
                uid: uid("alice"),
                reason: "operator".into(),
            },
        );
        assert_eq!(
            sent_to(&out, a),
            vec![ServerMessage::Kicked {
                reason: "operator".into()
            }]
        );
        assert_eq!(
            sent_to(&out, b),
            vec![left_msg("alice", LeaveReason::Kicked)]
        );
        assert_eq!(
            released(&out),
            vec![("alice".into(), 2, LeaveReason::Kicked)]
        );
        // Leaving releases too, with its reason.
        let out = text(&mut h, T0, b, r#"{"type":"leave"}"#);
        assert_eq!(released(&out), vec![("bob".into(), 3, LeaveReason::Left)]);
        assert_eq!(h.present(&ch("c1")), vec![uid("robot")]);
    }

    #[test]
    fn a_socket_gone_while_its_join_is_recorded_is_released() {
        let mut h = bus_hub();
        let c = ask(&mut h, "c1", "alice");
        // Messages before joined: a second join is refused, a signal has nobody yet.
        let out = text(
            &mut h,
            T0,
            c,
            &join_text("c1", "alice", &token("c1", "alice")),
        );
        assert_eq!(error_code(&out, c).as_deref(), Some(codes::ALREADY_JOINED));
        let out = text(&mut h, T0, c, &offer_to("bob"));
        assert_eq!(error_code(&out, c).as_deref(), Some(codes::PEER_NOT_FOUND));
        assert_eq!(closed(&out, c), None);
        let held = BusMessage::Signal {
            channel: ch("c1"),
            from: uid("bob"),
            to: uid("alice"),
            payload: offer_payload(),
            reply_to: inst(B),
        };
        bus(&mut h, held);
        h.handle_input(T0, Input::Closed { conn: c });
        let out = drain(&mut h);
        assert_eq!(
            published(&out),
            vec![(
                inst(B),
                BusMessage::Undeliverable {
                    channel: ch("c1"),
                    from: uid("bob"),
                    to: uid("alice")
                }
            )]
        );
        assert!(h.membership.is_empty());
        let out = claimed(&mut h, c, "c1", "alice", 4, vec![]);
        assert_eq!(released(&out), vec![("alice".into(), 4, LeaveReason::Left)]);
        assert_eq!(out.len(), 1);
        assert!(h.present(&ch("c1")).is_empty());
        // `leave` before joined: the same.
        let c = ask(&mut h, "c1", "alice");
        let out = text(&mut h, T0, c, r#"{"type":"leave"}"#);
        assert_eq!(closed(&out, c), Some(close_code::NORMAL));
        let out = claimed(&mut h, c, "c1", "alice", 5, vec![]);
        assert_eq!(released(&out), vec![("alice".into(), 5, LeaveReason::Left)]);
    }

    #[test]
    fn refused_claims_are_fatal() {
        let mut h = bus_hub();
        let c = ask(&mut h, "c1", "alice");
        h.handle_input(
            T0,
            Input::ClaimRefused {
                conn: c,
                full: true,
            },
        );
        let out = drain(&mut h);
        assert_eq!(error_code(&out, c).as_deref(), Some(codes::CHANNEL_FULL));
        assert_eq!(closed(&out, c), Some(close_code::POLICY));
        assert!(presence(&out).is_empty() && released(&out).is_empty());
        let c = ask(&mut h, "c1", "alice");
        h.handle_input(
            T0,
            Input::ClaimRefused {
                conn: c,
                full: false,
            },
        );
        let out = drain(&mut h);
        assert_eq!(error_code(&out, c).as_deref(), Some(codes::UNAVAILABLE));
        assert_eq!(closed(&out, c), Some(close_code::TRY_AGAIN));
        assert!(h.membership.is_empty());
        assert_eq!(h.connections(), 0);
    }

    #[test]
    fn a_snapshot_replaces_what_the_bus_said() {
        let mut h = bus_hub();
        joined_on(&mut h, row("c1", "bob", B, 1));
        joined_on(&mut h, row("c1", "carol", C, 2));
        joined_on(&mut h, row("c2", "xavier", C, 4));
        let members = vec![row("c1", "bob", B, 1), row("c1", "carol", C, 2)];
        let (a, _) = bus_join(&mut h, "c1", "alice", 3, members);
        // Notifications were missed: bob left, dave joined, c2 emptied.
        let rows = [
            row("c1", "carol", C, 2),
            row("c1", "alice", A, 3),
            row("c1", "dave", B, 5),
        ];
        h.handle_input(T0, Input::Snapshot(&rows));
        let out = drain(&mut h);
        assert_eq!(
            sent_to(&out, a),
            vec![left_msg("bob", LeaveReason::Left), joined_msg("dave")]
        );
        assert_eq!(
            h.present(&ch("c1")),
            vec![uid("carol"), uid("alice"), uid("dave")]
        );
        assert!(h.present(&ch("c2")).is_empty());
        // Events the snapshot already holds are stale.
        assert!(joined_on(&mut h, row("c1", "dave", B, 5)).is_empty());
    }

    #[test]
    fn members_of_an_instance_declared_dead_are_dropped_here() {
        let mut h = bus_hub();
        let (a, _) = bus_join(&mut h, "c1", "alice", 2, vec![]);
        let (b, _) = bus_join(&mut h, "c1", "bob", 3, vec![]);
        // Another instance released alice's row (this one's heartbeat lapsed).
        let out = left_on(&mut h, row("c1", "alice", A, 2), LeaveReason::Timeout, 10);
        assert_eq!(
            sent_to(&out, a),
            vec![ServerMessage::Kicked {
                reason: LAPSED_REASON.into()
            }]
        );
        assert_eq!(
            sent_to(&out, b),
            vec![left_msg("alice", LeaveReason::Timeout)]
        );
        assert!(released(&out).is_empty(), "already released");
        assert_eq!(
            presence(&out),
            vec![(
                "alice".into(),
                PresenceEvent::Gone {
                    reason: LeaveReason::Timeout,
                    deliberate: false
                }
            )]
        );
        // Our own release of a member already gone changes nothing.
        assert!(left_on(&mut h, row("c1", "alice", A, 2), LeaveReason::Left, 11).is_empty());
        // Declared dead: everyone here goes (and is released, in case a row is left).
        h.handle_input(T0, Input::Lapsed);
        let out = drain(&mut h);
        assert_eq!(closed(&out, b), Some(close_code::NORMAL));
        assert_eq!(
            released(&out),
            vec![("bob".into(), 3, LeaveReason::Timeout)]
        );
        assert!(h.present(&ch("c1")).is_empty());
    }

    #[test]
    fn without_a_bus_nothing_goes_to_one_and_bus_inputs_are_ignored() {
        let mut h = hub();
        let (a, out) = join(&mut h, T0, "c1", "alice");
        let (_b, out2) = join(&mut h, T0, "c1", "bob");
        let out3 = text(&mut h, T0, a, r#"{"type":"leave"}"#);
        let is_bus = |o: &Output| {
            matches!(
                o,
                Output::Claim { .. } | Output::Release { .. } | Output::Publish { .. }
            )
        };
        assert!(!out.iter().chain(&out2).chain(&out3).any(is_bus));
        assert!(joined_on(&mut h, row("c1", "carol", B, 9)).is_empty());
        h.handle_input(T0, Input::Snapshot(&[row("c1", "carol", B, 9)]));
        h.handle_input(T0, Input::Lapsed);
        assert!(drain(&mut h).is_empty());
        assert_eq!(h.present(&ch("c1")), vec![uid("bob")]);
        assert!(h.bus().is_none());
    }
}
