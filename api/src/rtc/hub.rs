//! The channel hub, sans-IO: rooms, presence, relay, kicks and limits.
//!
//! ```text
//!   socket task ── open / Input::Text / Pong / Closed ──> Hub ──> poll_output():
//!   ticker      ── Input::Timeout ─────────────────────────^       Send{conn, msg}
//!   server code ── kick / present ─────────────────────────^       Ping{conn}
//!                                                                  Close{conn, code}
//!                                                                  Presence{channel, uid, ..}
//! ```
//!
//! Every method takes `now` (unix milliseconds) from the caller; nothing in here reads a
//! clock, touches a socket or spawns a task, so joins, leaves, replacements, kicks and
//! every limit are unit tested below with made-up instants.
//!
//! Driving loop (see `socket.rs`): for each event call [`Hub::handle_input`], then drain
//! [`Hub::poll_output`] until `None`, delivering each output in order. Call
//! `handle_input(now, Input::Timeout)` at least every [`Hub::poll_timeout`] (a fixed tick of
//! a second is fine).
//!
//! Rules (fixed by DESIGN.md, "Wire protocols"):
//! - the first message of a socket must be `join`; its token is verified here;
//! - a uid joining a channel where it is present replaces the older socket, which gets
//!   `kicked {reason: "replaced"}`; the others see `peer_left {reason: "replaced"}` then
//!   `peer_joined`;
//! - `signal` is relayed only to a member of the same channel; an absent `to` gets an
//!   `error` (`peer_not_found`) and the socket stays;
//! - fatal errors (`error`, then close): malformed frames, oversized frames, rate limit,
//!   a full channel, bad tokens, idle timeout.

use std::collections::{HashMap, VecDeque};

use protocol::signaling::{ClientMessage, LeaveReason, ServerMessage, SignalPayload, codes};

use super::ice::IceConfig;
use crate::domain::{ChannelName, Uid};
use crate::token::TokenIssuer;

/// WebSocket close codes the hub asks for.
pub mod close_code {
    /// Normal: after `leave` or a kick.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol or policy violation (bad token, malformed message, rate limit, idle).
    pub const POLICY: u16 = 1008;
    /// A frame larger than the limit.
    pub const TOO_BIG: u16 = 1009;
}

/// Limits and timers of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Peers per channel (default 16).
    pub max_peers: usize,
    /// Largest text frame in bytes (default 64 KiB).
    pub max_frame: usize,
    /// Sustained messages per second per socket (token bucket refill rate).
    pub msgs_per_sec: u32,
    /// Bucket size: messages a socket may send in a burst.
    pub burst: u32,
    /// A socket silent this long (no frame, no pong) is dropped, in ms.
    pub idle_timeout_ms: i64,
    /// A socket silent this long gets a ping (and again every as long), in ms.
    pub ping_after_ms: i64,
    /// How often a member's presence is reported again (heartbeat), in ms.
    pub presence_every_ms: i64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_peers: 16,
            max_frame: 64 * 1024,
            msgs_per_sec: 50,
            burst: 200,
            idle_timeout_ms: 30_000,
            ping_after_ms: 10_000,
            presence_every_ms: 15_000,
        }
    }
}

/// A socket, as the hub names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Something that happened on a socket, or the passing of time.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A text frame.
    Text {
        /// From which socket.
        conn: ConnId,
        /// Its text.
        text: &'a str,
    },
    /// A binary frame (not part of the protocol).
    Binary {
        /// From which socket.
        conn: ConnId,
    },
    /// The transport refused a frame over the size limit.
    Oversized {
        /// From which socket.
        conn: ConnId,
    },
    /// A ping from the client (answered by the transport; counts against the rate).
    Ping {
        /// From which socket.
        conn: ConnId,
    },
    /// A pong answering our ping: the socket is alive.
    Pong {
        /// From which socket.
        conn: ConnId,
    },
    /// The socket is gone (closed by the client, or a network error).
    Closed {
        /// Which socket.
        conn: ConnId,
    },
    /// Time passed: pings, idle timeouts, presence refreshes.
    Timeout,
    /// The server is stopping: every socket is closed.
    Shutdown,
}

/// How a member's presence changed, for the call state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The uid is in the channel (on join, and again every `presence_every_ms`).
    Here,
    /// The uid is no longer in the channel.
    Gone {
        /// As told to the other peers.
        reason: LeaveReason,
        /// It left on purpose (`leave`, or a kick by server code), rather than a
        /// dropped or misbehaving socket that may come back.
        deliberate: bool,
    },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a message on a socket.
    Send {
        /// To which socket.
        conn: ConnId,
        /// What.
        message: ServerMessage,
    },
    /// Send a WebSocket ping.
    Ping {
        /// To which socket.
        conn: ConnId,
    },
    /// Close the socket (after the messages queued before). The hub has forgotten it.
    Close {
        /// Which socket.
        conn: ConnId,
        /// WebSocket close code ([`close_code`]).
        code: u16,
    },
    /// A member's presence changed (feeds the call state as a heartbeat).
    Presence {
        /// Channel.
        channel: ChannelName,
        /// Who.
        uid: Uid,
        /// What happened.
        event: PresenceEvent,
    },
}

#[derive(Debug)]
struct Conn {
    member: Option<(ChannelName, Uid)>,
    last_in_ms: i64,
    last_ping_ms: Option<i64>,
    next_presence_ms: i64,
    /// Token bucket, in thousandths of a message.
    bucket_milli: u64,
    bucket_at_ms: i64,
}

#[derive(Debug, Default)]
struct Room {
    /// Members in join order.
    members: Vec<(Uid, ConnId)>,
}

impl Room {
    fn conn_of(&self, uid: &Uid) -> Option<ConnId> {
        self.members.iter().find(|(u, _)| u == uid).map(|(_, c)| *c)
    }
}

/// The hub. See the module docs for the driving loop.
#[derive(Debug)]
pub struct Hub {
    cfg: HubConfig,
    tokens: TokenIssuer,
    ice: IceConfig,
    next_id: u64,
    conns: HashMap<ConnId, Conn>,
    rooms: HashMap<ChannelName, Room>,
    out: VecDeque<Output>,
}

impl Hub {
    /// A hub verifying tokens with `tokens` and handing out `ice` servers.
    pub fn new(cfg: HubConfig, tokens: TokenIssuer, ice: IceConfig) -> Self {
        Self {
            cfg,
            tokens,
            ice,
            next_id: 1,
            conns: HashMap::new(),
            rooms: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// Registers a new socket; its first message must be `join`.
    pub fn open(&mut self, now: i64) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        self.conns.insert(
            id,
            Conn {
                member: None,
                last_in_ms: now,
                last_ping_ms: None,
                next_presence_ms: i64::MAX,
                bucket_milli: u64::from(self.cfg.burst) * 1000,
                bucket_at_ms: now,
            },
        );
        id
    }

    /// Number of open sockets.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Channels with at least one member, and members over all channels (metrics).
    pub fn occupancy(&self) -> (usize, usize) {
        (
            self.rooms.len(),
            self.rooms.values().map(|r| r.members.len()).sum(),
        )
    }

    /// Uids present in `channel`, in join order.
    pub fn present(&self, channel: &ChannelName) -> Vec<Uid> {
        self.rooms
            .get(channel)
            .map(|r| r.members.iter().map(|(u, _)| u.clone()).collect())
            .unwrap_or_default()
    }

    /// The next output to deliver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_input(now, Input::Timeout)` next has something to do.
    pub fn poll_timeout(&self) -> Option<i64> {
        self.conns
            .values()
            .map(|c| {
                let ping = c.last_ping_ms.unwrap_or(c.last_in_ms) + self.cfg.ping_after_ms;
                (c.last_in_ms + self.cfg.idle_timeout_ms)
                    .min(ping)
                    .min(c.next_presence_ms)
            })
            .min()
    }

    /// Feeds one input.
    pub fn handle_input(&mut self, now: i64, input: Input<'_>) {
        match input {
            Input::Text { conn, text } => {
                if self.admit(now, conn) {
                    self.on_text(now, conn, text);
                }
            }
            Input::Binary { conn } => {
                if self.admit(now, conn) {
                    self.fail(
                        conn,
                        codes::INVALID_MESSAGE,
                        "send JSON text frames, not binary",
                        close_code::POLICY,
                    );
                }
            }
            Input::Oversized { conn } => {
                let max = self.cfg.max_frame;
                self.fail(
                    conn,
                    codes::FRAME_TOO_LARGE,
                    &format!("frames are limited to {max} bytes"),
                    close_code::TOO_BIG,
                );
            }
            Input::Ping { conn } => {
                self.admit(now, conn);
            }
            Input::Pong { conn } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.last_in_ms = now;
                    c.last_ping_ms = None;
                }
            }
            Input::Closed { conn } => self.drop_conn(conn, LeaveReason::Left, false, None),
            Input::Timeout => self.on_timeout(now),
            Input::Shutdown => {
                let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
                ids.sort();
                for conn in ids {
                    self.send(
                        conn,
                        ServerMessage::error(codes::SHUTTING_DOWN, "the server is stopping"),
                    );
                    self.out.push_back(Output::Close {
                        conn,
                        code: close_code::GOING_AWAY,
                    });
                }
                self.conns.clear();
                self.rooms.clear();
            }
        }
    }

    /// Removes `uid` from `channel`: it gets `kicked {reason}` and is closed; the others
    /// see `peer_left {reason: "kicked"}`. Returns whether the uid was present.
    pub fn kick(&mut self, channel: &ChannelName, uid: &Uid, reason: &str) -> bool {
        let Some(conn) = self.rooms.get(channel).and_then(|r| r.conn_of(uid)) else {
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

    // ------------------------------------------------------------------ internals

    fn send(&mut self, conn: ConnId, message: ServerMessage) {
        self.out.push_back(Output::Send { conn, message });
    }

    /// Counts a frame against the socket's rate; false (and the socket dropped) when it
    /// is over, or the socket is unknown.
    fn admit(&mut self, now: i64, conn: ConnId) -> bool {
        let cap = u64::from(self.cfg.burst) * 1000;
        let rate = u64::from(self.cfg.msgs_per_sec);
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        c.last_in_ms = now;
        c.last_ping_ms = None;
        let elapsed = u64::try_from(now.saturating_sub(c.bucket_at_ms)).unwrap_or(0);
        // `rate` messages per 1000 ms is `rate` thousandths of a message per ms.
        c.bucket_milli = cap.min(c.bucket_milli.saturating_add(elapsed.saturating_mul(rate)));
        c.bucket_at_ms = c.bucket_at_ms.max(now);
        if c.bucket_milli >= 1000 {
            c.bucket_milli -= 1000;
            true
        } else {
            let (rate, burst) = (self.cfg.msgs_per_sec, self.cfg.burst);
            self.fail(
                conn,
                codes::RATE_LIMITED,
                &format!("more than {rate} messages per second (burst {burst})"),
                close_code::POLICY,
            );
            false
        }
    }

    /// Sends `error` and drops the socket.
    fn fail(&mut self, conn: ConnId, code: &str, message: &str, close: u16) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        self.send(conn, ServerMessage::error(code, message));
        self.drop_conn(conn, LeaveReason::Kicked, false, Some(close));
    }

    /// Forgets a socket; if it was a member, tells the others and reports presence.
    fn drop_conn(
        &mut self,
        conn: ConnId,
        reason: LeaveReason,
        deliberate: bool,
        close: Option<u16>,
    ) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some((channel, uid)) = c.member {
            self.remove_member(&channel, &uid, conn, reason);
            self.out.push_back(Output::Presence {
                channel,
                uid,
                event: PresenceEvent::Gone { reason, deliberate },
            });
        }
        if let Some(code) = close {
            self.out.push_back(Output::Close { conn, code });
        }
    }

    /// Takes `uid` (on `conn`) out of its room and tells the others.
    fn remove_member(&mut self, channel: &ChannelName, uid: &Uid, conn: ConnId, why: LeaveReason) {
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        room.members.retain(|(u, c)| !(u == uid && *c == conn));
        let others: Vec<ConnId> = room.members.iter().map(|(_, c)| *c).collect();
        if room.members.is_empty() {
            self.rooms.remove(channel);
        }
        for other in others {
            self.send(
                other,
                ServerMessage::PeerLeft {
                    uid: uid.to_string(),
                    reason: why,
                },
            );
        }
    }

    fn on_text(&mut self, now: i64, conn: ConnId, text: &str) {
        if text.len() > self.cfg.max_frame {
            self.handle_input(now, Input::Oversized { conn });
            return;
        }
        let msg = match ClientMessage::parse(text) {
            Ok(m) => m,
            Err(e) => {
                self.fail(conn, codes::INVALID_MESSAGE, &e.message, close_code::POLICY);
                return;
            }
        };
        let member = self.conns.get(&conn).and_then(|c| c.member.clone());
        match (msg, member) {
            (
                ClientMessage::Join {
                    app_id,
                    channel,
                    uid,
                    token,
                },
                None,
            ) => self.on_join(now, conn, &app_id, &channel, &uid, &token),
            (ClientMessage::Join { .. }, Some(_)) => self.send(
                conn,
                ServerMessage::error(
                    codes::ALREADY_JOINED,
                    "this socket already joined; open another socket for another channel",
                ),
            ),
            (_, None) => self.fail(
                conn,
                codes::NOT_JOINED,
                "the first message must be join",
                close_code::POLICY,
            ),
            (ClientMessage::Signal { to, payload }, Some((channel, uid))) => {
                self.on_signal(conn, &channel, &uid, &to, payload);
            }
            (ClientMessage::Leave, Some(_)) => {
                self.drop_conn(conn, LeaveReason::Left, true, Some(close_code::NORMAL));
            }
        }
    }

    fn on_join(
        &mut self,
        now: i64,
        conn: ConnId,
        app_id: &str,
        channel: &str,
        uid: &str,
        token: &str,
    ) {
        if app_id != self.tokens.app_id {
            self.fail(
                conn,
                codes::WRONG_APP_ID,
                "appID is not this server's App ID",
                close_code::POLICY,
            );
            return;
        }
        let channel = match ChannelName::parse(channel) {
            Ok(c) => c,
            Err(m) => {
                let msg = format!("channel {m}");
                self.fail(conn, codes::INVALID_MESSAGE, &msg, close_code::POLICY);
                return;
            }
        };
        let uid = match Uid::parse(uid) {
            Ok(u) => u,
            Err(m) => {
                let msg = format!("uid {m}");
                self.fail(conn, codes::INVALID_MESSAGE, &msg, close_code::POLICY);
                return;
            }
        };
        let now_secs = u64::try_from(now / 1000).unwrap_or(0);
        if let Err(e) = self
            .tokens
            .verify(token, channel.as_str(), uid.as_str(), now_secs)
        {
            self.fail(conn, e.code(), &e.to_string(), close_code::POLICY);
            return;
        }
        let room = self.rooms.entry(channel.clone()).or_default();
        let previous = room.conn_of(&uid);
        if previous.is_none() && room.members.len() >= self.cfg.max_peers {
            let max = self.cfg.max_peers;
            if room.members.is_empty() {
                self.rooms.remove(&channel);
            }
            self.fail(
                conn,
                codes::CHANNEL_FULL,
                &format!("the channel already has {max} peers"),
                close_code::POLICY,
            );
            return;
        }
        if let Some(old) = previous {
            self.send(
                old,
                ServerMessage::Kicked {
                    reason: LeaveReason::Replaced.as_str().to_owned(),
                },
            );
            // The uid stays present: no presence change, only the others are told.
            self.conns.remove(&old);
            self.remove_member(&channel, &uid, old, LeaveReason::Replaced);
            self.out.push_back(Output::Close {
                conn: old,
                code: close_code::NORMAL,
            });
        }
        let room = self.rooms.entry(channel.clone()).or_default();
        let peers: Vec<ConnId> = room.members.iter().map(|(_, c)| *c).collect();
        let peer_uids: Vec<String> = room.members.iter().map(|(u, _)| u.to_string()).collect();
        room.members.push((uid.clone(), conn));
        if let Some(c) = self.conns.get_mut(&conn) {
            c.member = Some((channel.clone(), uid.clone()));
            c.next_presence_ms = now.saturating_add(self.cfg.presence_every_ms);
        }
        let ice_servers = self.ice.servers_for(uid.as_str(), now_secs);
        self.send(
            conn,
            ServerMessage::Joined {
                channel: channel.to_string(),
                uid: uid.to_string(),
                peers: peer_uids,
                ice_servers,
            },
        );
        for p in peers {
            self.send(
                p,
                ServerMessage::PeerJoined {
                    uid: uid.to_string(),
                },
            );
        }
        self.out.push_back(Output::Presence {
            channel,
            uid,
            event: PresenceEvent::Here,
        });
    }

    fn on_signal(
        &mut self,
        conn: ConnId,
        channel: &ChannelName,
        from: &Uid,
        to: &str,
        payload: SignalPayload,
    ) {
        let target = Uid::parse(to).ok().and_then(|to| {
            (&to != from)
                .then(|| self.rooms.get(channel).and_then(|r| r.conn_of(&to)))
                .flatten()
        });
        match target {
            Some(target) => self.send(
                target,
                ServerMessage::Signal {
                    from: from.to_string(),
                    payload,
                },
            ),
            None => {
                let shown: String = to.chars().take(64).collect();
                self.send(
                    conn,
                    ServerMessage::error(
                        codes::PEER_NOT_FOUND,
                        format!("no peer {shown:?} in this channel"),
                    ),
                );
            }
        }
    }

    fn on_timeout(&mut self, now: i64) {
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort();
        for conn in ids {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            if now.saturating_sub(c.last_in_ms) >= self.cfg.idle_timeout_ms {
                let secs = self.cfg.idle_timeout_ms / 1000;
                self.send(
                    conn,
                    ServerMessage::error(
                        codes::IDLE_TIMEOUT,
                        format!("nothing received for {secs} s (answer pings with pongs)"),
                    ),
                );
                self.drop_conn(conn, LeaveReason::Timeout, false, Some(close_code::POLICY));
                continue;
            }
            let ping_from = c.last_ping_ms.unwrap_or(c.last_in_ms);
            if now.saturating_sub(ping_from) >= self.cfg.ping_after_ms {
                c.last_ping_ms = Some(now);
                self.out.push_back(Output::Ping { conn });
            }
            if now >= c.next_presence_ms {
                c.next_presence_ms = now.saturating_add(self.cfg.presence_every_ms);
                if let Some((channel, uid)) = c.member.clone() {
                    self.out.push_back(Output::Presence {
                        channel,
                        uid,
                        event: PresenceEvent::Here,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::collections::BTreeMap;

    use protocol::signaling::{IceCandidate, SdpType, SessionDescription};
    use serde_json::json;

    use super::*;
    use crate::token::{PRIVILEGE_JOIN, TokenVersion, mint_006};

    const APP: &str = "970CA35de60c44645bbae8a215061b33";
    const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";
    /// 2023-11-14, in ms.
    const T0: i64 = 1_700_000_000_000;

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(APP.into(), CERT.into(), TokenVersion::V006, 600)
    }

    fn hub_with(cfg: HubConfig) -> Hub {
        Hub::new(cfg, issuer(), IceConfig::none())
    }

    fn hub() -> Hub {
        hub_with(HubConfig::default())
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    fn uid(s: &str) -> Uid {
        Uid::parse(s).unwrap()
    }

    fn token(channel: &str, u: &str) -> String {
        issuer().mint(channel, u, (T0 / 1000) as u64).unwrap()
    }

    fn join_text(channel: &str, u: &str, token: &str) -> String {
        json!({"type":"join","appID":APP,"channel":channel,"uid":u,"token":token}).to_string()
    }

    fn drain(h: &mut Hub) -> Vec<Output> {
        std::iter::from_fn(|| h.poll_output()).collect()
    }

    fn text(h: &mut Hub, now: i64, conn: ConnId, t: &str) -> Vec<Output> {
        h.handle_input(now, Input::Text { conn, text: t });
        drain(h)
    }

    /// Opens a socket and joins it; returns the socket and the outputs of the join.
    fn join(h: &mut Hub, now: i64, channel: &str, u: &str) -> (ConnId, Vec<Output>) {
        let c = h.open(now);
        let out = text(h, now, c, &join_text(channel, u, &token(channel, u)));
        (c, out)
    }

    fn sent_to(out: &[Output], conn: ConnId) -> Vec<ServerMessage> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { conn: c, message } if *c == conn => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn closed(out: &[Output], conn: ConnId) -> Option<u16> {
        out.iter().find_map(|o| match o {
            Output::Close { conn: c, code } if *c == conn => Some(*code),
            _ => None,
        })
    }

    fn error_code(out: &[Output], conn: ConnId) -> Option<String> {
        sent_to(out, conn).into_iter().find_map(|m| match m {
            ServerMessage::Error { code, .. } => Some(code),
            _ => None,
        })
    }

    fn presence(out: &[Output]) -> Vec<(String, PresenceEvent)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Presence { uid, event, .. } => Some((uid.to_string(), *event)),
                _ => None,
            })
            .collect()
    }

    fn offer_to(to: &str) -> String {
        ClientMessage::Signal {
            to: to.into(),
            payload: SignalPayload::Description(SessionDescription {
                kind: SdpType::Offer,
                sdp: "v=0\r\n".into(),
            }),
        }
        .to_json()
    }

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
    fn first_message_must_be_join() {
        let mut h = hub();
        let c = h.open(T0);
        let out = text(&mut h, T0, c, &offer_to("x"));
        assert_eq!(error_code(&out, c).as_deref(), Some(codes::NOT_JOINED));
        assert_eq!(closed(&out, c), Some(close_code::POLICY));
        assert_eq!(h.connections(), 0);
        let c = h.open(T0);
        let out = text(&mut h, T0, c, r#"{"type":"leave"}"#);
        assert_eq!(error_code(&out, c).as_deref(), Some(codes::NOT_JOINED));
    }

    #[test]
    fn malformed_and_binary_frames_are_fatal() {
        let mut h = hub();
        for bad in ["not json", "{}", r#"{"type":"join"}"#, r#"{"type":"fly"}"#] {
            let c = h.open(T0);
            let out = text(&mut h, T0, c, bad);
            assert_eq!(
                error_code(&out, c).as_deref(),
                Some(codes::INVALID_MESSAGE),
                "{bad}"
            );
            assert_eq!(closed(&out, c), Some(close_code::POLICY));
        }
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (b, _) = join(&mut h, T0, "c1", "bob");
        h.handle_input(T0, Input::Binary { conn: b });
        let out = drain(&mut h);
        assert_eq!(error_code(&out, b).as_deref(), Some(codes::INVALID_MESSAGE));
        assert_eq!(
            sent_to(&out, a),
            vec![ServerMessage::PeerLeft {
                uid: "bob".into(),
                reason: LeaveReason::Kicked
            }]
        );
        // A signal that is neither description nor candidate.
        let out = text(&mut h, T0, a, r#"{"type":"signal","to":"bob"}"#);
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::INVALID_MESSAGE));
        assert_eq!(h.connections(), 0);
    }

    #[test]
    fn bad_joins_name_the_reason() {
        let mut h = hub();
        let now_s = (T0 / 1000) as u32;
        let join_p = BTreeMap::from([(PRIVILEGE_JOIN, now_s + 600)]);
        let publish_only = BTreeMap::from([(2u16, now_s + 600)]);
        let cases: Vec<(String, &str)> = vec![
            (
                join_text("c1", "alice", &mint_006(APP, "0123456789abcdef0123456789abcdef", "c1", "alice", 1, now_s + 600, &join_p).unwrap()),
                codes::TOKEN_BAD_SIGNATURE,
            ),
            (
                join_text("c1", "alice", &mint_006("00000000000000000000000000000000", CERT, "c1", "alice", 1, now_s + 600, &join_p).unwrap()),
                codes::TOKEN_WRONG_APP_ID,
            ),
            (join_text("c1", "alice", &token("c2", "alice")), codes::TOKEN_WRONG_CHANNEL),
            (join_text("c1", "alice", &token("c1", "bob")), codes::TOKEN_WRONG_UID),
            (
                join_text("c1", "alice", &issuer().mint("c1", "alice", (T0 / 1000 - 601) as u64).unwrap()),
                codes::TOKEN_EXPIRED,
            ),
            (
                join_text("c1", "alice", &mint_006(APP, CERT, "c1", "alice", 1, now_s + 600, &publish_only).unwrap()),
                codes::TOKEN_NO_JOIN_PRIVILEGE,
            ),
            (join_text("c1", "alice", "garbage"), codes::TOKEN_MALFORMED),
            (
                json!({"type":"join","appID":"ffffffffffffffffffffffffffffffff","channel":"c1","uid":"alice","token":token("c1","alice")}).to_string(),
                codes::WRONG_APP_ID,
            ),
            (join_text("bad/channel", "alice", "x"), codes::INVALID_MESSAGE),
            (join_text("c1", "", "x"), codes::INVALID_MESSAGE),
        ];
        for (t, want) in cases {
            let c = h.open(T0);
            let out = text(&mut h, T0, c, &t);
            assert_eq!(error_code(&out, c).as_deref(), Some(want), "{t}");
            assert_eq!(closed(&out, c), Some(close_code::POLICY));
            assert!(presence(&out).is_empty());
        }
        assert!(h.present(&ch("c1")).is_empty());
        assert_eq!(h.connections(), 0);
    }

    #[test]
    fn a_second_join_on_one_socket_is_refused_but_keeps_it() {
        let mut h = hub();
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let out = text(
            &mut h,
            T0,
            a,
            &join_text("c2", "alice", &token("c2", "alice")),
        );
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::ALREADY_JOINED));
        assert_eq!(closed(&out, a), None);
        assert_eq!(h.present(&ch("c1")), vec![uid("alice")]);
        assert!(h.present(&ch("c2")).is_empty());
    }

    #[test]
    fn signal_is_relayed_with_from_only_to_the_target() {
        let mut h = hub();
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (b, _) = join(&mut h, T0, "c1", "bob");
        let (c, _) = join(&mut h, T0, "c1", "carol");
        let out = text(&mut h, T0, b, &offer_to("alice"));
        assert_eq!(
            out,
            vec![Output::Send {
                conn: a,
                message: ServerMessage::Signal {
                    from: "bob".into(),
                    payload: SignalPayload::Description(SessionDescription {
                        kind: SdpType::Offer,
                        sdp: "v=0\r\n".into()
                    })
                }
            }]
        );
        let cand = ClientMessage::Signal {
            to: "bob".into(),
            payload: SignalPayload::Candidate(Some(IceCandidate {
                candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
                username_fragment: None,
            })),
        };
        let out = text(&mut h, T0, a, &cand.to_json());
        assert_eq!(sent_to(&out, b).len(), 1);
        assert!(sent_to(&out, c).is_empty());
        let end = r#"{"type":"signal","to":"bob","candidate":null}"#;
        let out = text(&mut h, T0, c, end);
        assert_eq!(
            sent_to(&out, b),
            vec![ServerMessage::Signal {
                from: "carol".into(),
                payload: SignalPayload::Candidate(None)
            }]
        );
    }

    #[test]
    fn relay_to_an_absent_peer_is_an_error_and_the_socket_stays() {
        let mut h = hub();
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (_x, _) = join(&mut h, T0, "c2", "xavier");
        for to in ["nobody", "xavier", "alice", "", "\u{1}"] {
            let out = text(&mut h, T0, a, &offer_to(to));
            assert_eq!(
                error_code(&out, a).as_deref(),
                Some(codes::PEER_NOT_FOUND),
                "{to:?}"
            );
            assert_eq!(closed(&out, a), None);
            assert_eq!(out.len(), 1, "nothing relayed for {to:?}");
        }
        assert_eq!(h.present(&ch("c1")), vec![uid("alice")]);
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
        assert!(h.rooms.is_empty(), "empty rooms are removed");
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

    #[test]
    fn rate_limit_drops_only_the_abuser() {
        let mut h = hub_with(HubConfig {
            msgs_per_sec: 10,
            burst: 5,
            ..HubConfig::default()
        });
        let (a, _) = join(&mut h, T0, "c1", "alice"); // 1 token used
        let (b, _) = join(&mut h, T0, "c1", "bob");
        for _ in 0..4 {
            let out = text(&mut h, T0, a, &offer_to("bob"));
            assert_eq!(sent_to(&out, b).len(), 1);
        }
        let out = text(&mut h, T0, a, &offer_to("bob"));
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::RATE_LIMITED));
        assert_eq!(closed(&out, a), Some(close_code::POLICY));
        assert_eq!(
            sent_to(&out, b),
            vec![ServerMessage::PeerLeft {
                uid: "alice".into(),
                reason: LeaveReason::Kicked
            }]
        );
        assert_eq!(h.present(&ch("c1")), vec![uid("bob")]);
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let mut h = hub_with(HubConfig {
            msgs_per_sec: 10,
            burst: 2,
            ..HubConfig::default()
        });
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (_b, _) = join(&mut h, T0, "c1", "bob");
        // 10 per second = one every 100 ms; sending every 100 ms forever is fine.
        for i in 1..=50 {
            let out = text(&mut h, T0 + i * 100, a, &offer_to("bob"));
            assert_eq!(error_code(&out, a), None, "message {i}");
        }
        // Two at once (the burst) are fine, a third is not.
        let t = T0 + 10_000;
        assert_eq!(error_code(&text(&mut h, t, a, &offer_to("bob")), a), None);
        assert_eq!(error_code(&text(&mut h, t, a, &offer_to("bob")), a), None);
        let out = text(&mut h, t, a, &offer_to("bob"));
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::RATE_LIMITED));
    }

    #[test]
    fn client_pings_count_against_the_rate_and_pongs_do_not() {
        let mut h = hub_with(HubConfig {
            msgs_per_sec: 1,
            burst: 3,
            ..HubConfig::default()
        });
        let (a, _) = join(&mut h, T0, "c1", "alice");
        for _ in 0..20 {
            h.handle_input(T0, Input::Pong { conn: a });
        }
        assert!(drain(&mut h).is_empty());
        h.handle_input(T0, Input::Ping { conn: a });
        h.handle_input(T0, Input::Ping { conn: a });
        assert!(drain(&mut h).is_empty());
        h.handle_input(T0, Input::Ping { conn: a });
        let out = drain(&mut h);
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::RATE_LIMITED));
    }

    #[test]
    fn oversized_frames_are_fatal() {
        let mut h = hub_with(HubConfig {
            max_frame: 400, // a join with its token is about 250 bytes
            ..HubConfig::default()
        });
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (b, _) = join(&mut h, T0, "c1", "bob");
        let big = offer_to(&"b".repeat(420));
        let out = text(&mut h, T0, a, &big);
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::FRAME_TOO_LARGE));
        assert_eq!(closed(&out, a), Some(close_code::TOO_BIG));
        assert_eq!(sent_to(&out, b).len(), 1, "bob sees alice leave");
        // The transport's own refusal gives the same result.
        h.handle_input(T0, Input::Oversized { conn: b });
        let out = drain(&mut h);
        assert_eq!(error_code(&out, b).as_deref(), Some(codes::FRAME_TOO_LARGE));
        assert_eq!(closed(&out, b), Some(close_code::TOO_BIG));
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
    fn idle_sockets_get_pings_then_time_out() {
        let mut h = hub(); // ping after 10 s, drop after 30 s
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (b, _) = join(&mut h, T0, "c1", "bob");
        let pre = h.open(T0); // never joins
        assert_eq!(h.poll_timeout(), Some(T0 + 10_000));
        h.handle_input(T0 + 9_999, Input::Timeout);
        assert!(drain(&mut h).is_empty());
        h.handle_input(T0 + 10_000, Input::Timeout);
        let out = drain(&mut h);
        let pings: Vec<_> = out
            .iter()
            .filter(|o| matches!(o, Output::Ping { .. }))
            .collect();
        assert_eq!(pings.len(), 3);
        // Bob answers; alice and the unjoined socket stay silent.
        h.handle_input(T0 + 10_050, Input::Pong { conn: b });
        h.handle_input(T0 + 15_000, Input::Timeout);
        let out = drain(&mut h);
        assert!(
            out.iter().all(|o| !matches!(o, Output::Ping { .. })),
            "no ping before 10 s more"
        );
        assert_eq!(presence(&out).len(), 2, "presence refreshed at 15 s");
        h.handle_input(T0 + 20_000, Input::Timeout);
        let out = drain(&mut h);
        assert!(out.contains(&Output::Ping { conn: a }));
        assert!(out.contains(&Output::Ping { conn: pre }));
        assert!(!out.contains(&Output::Ping { conn: b }));
        h.handle_input(T0 + 25_000, Input::Pong { conn: b });
        h.handle_input(T0 + 30_000, Input::Timeout);
        let out = drain(&mut h);
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::IDLE_TIMEOUT));
        assert_eq!(error_code(&out, pre).as_deref(), Some(codes::IDLE_TIMEOUT));
        assert_eq!(closed(&out, a), Some(close_code::POLICY));
        assert_eq!(
            sent_to(&out, b),
            vec![ServerMessage::PeerLeft {
                uid: "alice".into(),
                reason: LeaveReason::Timeout
            }]
        );
        assert!(presence(&out).contains(&(
            "alice".into(),
            PresenceEvent::Gone {
                reason: LeaveReason::Timeout,
                deliberate: false
            }
        )));
        assert_eq!(h.present(&ch("c1")), vec![uid("bob")]);
        assert_eq!(h.connections(), 1);
    }

    #[test]
    fn presence_is_reported_on_join_and_every_interval() {
        let mut h = hub_with(HubConfig {
            idle_timeout_ms: 1_000_000,
            ping_after_ms: 1_000_000,
            ..HubConfig::default()
        });
        let (a, out) = join(&mut h, T0, "c1", "alice");
        assert_eq!(presence(&out), vec![("alice".into(), PresenceEvent::Here)]);
        assert_eq!(h.poll_timeout(), Some(T0 + 15_000));
        let mut reports = 0;
        for s in 1..=60 {
            h.handle_input(T0 + s * 1000, Input::Timeout);
            reports += presence(&drain(&mut h)).len();
            h.handle_input(T0 + s * 1000, Input::Pong { conn: a });
        }
        assert_eq!(reports, 4, "at 15, 30, 45 and 60 s");
    }

    #[test]
    fn shutdown_closes_everything() {
        let mut h = hub();
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let p = h.open(T0);
        h.handle_input(T0, Input::Shutdown);
        let out = drain(&mut h);
        for c in [a, p] {
            assert_eq!(error_code(&out, c).as_deref(), Some(codes::SHUTTING_DOWN));
            assert_eq!(closed(&out, c), Some(close_code::GOING_AWAY));
        }
        assert_eq!(h.connections(), 0);
        assert!(h.present(&ch("c1")).is_empty());
    }

    #[test]
    fn output_never_carries_tokens() {
        let mut h = hub();
        let t = token("c1", "alice");
        let c = h.open(T0);
        let out = text(&mut h, T0, c, &join_text("c1", "alice", &t));
        let c2 = h.open(T0);
        let out2 = text(&mut h, T0, c2, &join_text("c1", "bob", &t));
        for o in out.iter().chain(&out2) {
            assert!(!format!("{o:?}").contains(&t[3..40]));
        }
    }
}
