//! The channel hub, sans-IO: rooms, presence, relay, kicks and limits.
//!
//! ```text
//!   socket task ── open / Input::Text / Pong / Closed ──> Hub ──> poll_output():
//!   ticker      ── Input::Timeout ─────────────────────────^       Send{conn, msg}
//!   server code ── kick / present ─────────────────────────^       Ping{conn}
//!   bus (PostgreSQL only)                                          Close{conn, code}
//!     worker    ── Input::Claimed / ClaimRefused ──────────^       Presence{channel, uid, ..}
//!     listener  ── Input::Bus / Snapshot / Lapsed ─────────^       Claim / Release / Publish
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
//!
//! **Several instances** ([`Hub::with_bus`], PostgreSQL; docs/rtc-bus.md). The members of
//! a channel may sit on different API instances. The presence table is the authority:
//! a join becomes [`Output::Claim`], which the driver records (the table checks the peer
//! limit, numbers the join from one sequence and replaces the uid's earlier join
//! wherever it is) and answers with [`Input::Claimed`]; a member that goes becomes
//! [`Output::Release`]. Each room mirrors the members of the other instances, learnt from
//! [`Input::Bus`] (`Joined`/`Left`, numbered from the same sequence: an event not newer
//! than what the room has applied is stale and ignored) and from [`Input::Snapshot`]
//! after the bus (re)subscribes. Join order is the sequence number, so every pair of
//! members agrees on who came first (the newcomer offers). Signals and kicks for a member
//! of another instance become [`Output::Publish`] addressed to that instance, which
//! answers `Undeliverable` when the member is gone: a signal is delivered or its sender
//! gets `peer_not_found` (or `relay_failed` when the bus could not take it).

use std::collections::{HashMap, VecDeque};

use protocol::signaling::{ClientMessage, LeaveReason, ServerMessage, SignalPayload, codes};

use super::ice::IceConfig;
use super::remote::{BusMessage, Claim, InstanceId, PresenceRow};
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
    /// The join could not be recorded (the database is unreachable): try again later.
    pub const TRY_AGAIN: u16 = 1013;
}

/// Signals held for a socket whose join is being recorded (bus only), before the others
/// are answered `Undeliverable`.
const MAX_HELD: usize = 64;

/// The `kicked` reason of members dropped because another instance declared this one
/// dead (its bus heartbeat lapsed); their peers saw `peer_left` with reason `timeout`.
pub const LAPSED_REASON: &str = "timeout";

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
    /// A socket that has not sent `join` this long after opening is closed, in ms.
    pub join_timeout_ms: i64,
    /// Joins per uid per minute (bucket of that size, refilled over a minute); 0: no limit.
    pub joins_per_uid_per_min: u32,
    /// Joins per token per minute (bucket of that size, refilled over a minute); 0: no limit.
    pub joins_per_token_per_min: u32,
    /// Sustained `signal` messages per second per socket (bursts of 4x); 0: no limit.
    pub signals_per_sec: u32,
    /// Sustained `signal` bytes per second per socket (bursts of 4x); 0: no limit.
    pub signal_bytes_per_sec: u32,
    /// `token_expiring` is sent this long before the socket's token expires, in ms.
    pub token_warning_ms: i64,
    /// A verified join is admitted only once the store says the uid is an active member
    /// of the channel's call ([`Output::CheckMember`]; `DAPI_AUTH=jwt`).
    pub check_membership: bool,
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
            join_timeout_ms: 10_000,
            joins_per_uid_per_min: 30,
            joins_per_token_per_min: 10,
            signals_per_sec: 40,
            signal_bytes_per_sec: 256 * 1024,
            token_warning_ms: 30_000,
            check_membership: false,
        }
    }
}

/// How many times the sustained rate a signal budget holds (its burst).
const SIGNAL_BURST: u64 = 4;
/// Joins buckets refill over this long.
const MINUTE_MS: u64 = 60_000;

/// A token bucket, in thousandths of a unit, fed `now`: holds at most `cap` units and
/// refills `rate` units every `per_ms`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    at_ms: i64,
}

impl Bucket {
    fn full(cap: u64, now: i64) -> Self {
        Self {
            milli: cap.saturating_mul(1000),
            at_ms: now,
        }
    }

    fn refill(&mut self, now: i64, rate: u64, per_ms: u64, cap: u64) {
        let elapsed = u64::try_from(now.saturating_sub(self.at_ms)).unwrap_or(0);
        let add = elapsed.saturating_mul(rate).saturating_mul(1000) / per_ms.max(1);
        self.milli = cap.saturating_mul(1000).min(self.milli.saturating_add(add));
        self.at_ms = self.at_ms.max(now);
    }

    /// Refills for the time passed, then takes `cost` units if the bucket holds them.
    fn take(&mut self, now: i64, rate: u64, per_ms: u64, cap: u64, cost: u64) -> bool {
        self.refill(now, rate, per_ms, cap);
        let want = cost.saturating_mul(1000);
        if self.milli >= want {
            self.milli -= want;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again at `now` (it may be forgotten).
    fn is_full(&self, now: i64, rate: u64, per_ms: u64, cap: u64) -> bool {
        let mut b = *self;
        b.refill(now, rate, per_ms, cap);
        b.milli >= cap.saturating_mul(1000)
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

/// Something that happened on a socket, on the bus, or the passing of time.
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
    /// Bus: the presence table recorded the join asked for by [`Output::Claim`].
    Claimed {
        /// The joining socket.
        conn: ConnId,
        /// What the table answered.
        claim: &'a Claim,
    },
    /// Bus: the presence table refused the join asked for by [`Output::Claim`].
    ClaimRefused {
        /// The joining socket.
        conn: ConnId,
        /// The channel is full (else the database could not be reached).
        full: bool,
    },
    /// Bus: a message from another instance (or a leave the bus reports for this one).
    Bus(&'a BusMessage),
    /// Bus: every member of every instance, read when the listener (re)subscribed.
    /// Notifications may have been missed before, so this replaces what the rooms
    /// knew about the other instances.
    Snapshot(&'a [PresenceRow]),
    /// Bus: a message of [`Output::Publish`] could not be sent.
    Unpublished(&'a BusMessage),
    /// Bus: another instance declared this one dead (its heartbeat lapsed) and removed
    /// its members from the presence table: every member here is dropped.
    Lapsed,
    /// The answer to [`Output::CheckMember`]: `Some(true)` the join goes on,
    /// `Some(false)` it is refused (`not_a_member`), `None` the store could not tell
    /// (`unavailable`).
    MemberChecked {
        /// The joining socket.
        conn: ConnId,
        /// The store's verdict.
        verdict: Option<bool>,
    },
    /// The driver could not queue a `signal` from `from` to `conn` because `conn`'s
    /// outgoing queue is filling up with signals: the sender is cut off (`signal_flood`),
    /// not the receiver.
    Flooded {
        /// The receiving socket.
        conn: ConnId,
        /// The sender's uid, as in the relayed `signal`.
        from: &'a str,
    },
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
    /// Bus: record a join in the presence table (the table checks the peer limit and
    /// tells the other instances); answer with [`Input::Claimed`] or
    /// [`Input::ClaimRefused`].
    Claim {
        /// The joining socket.
        conn: ConnId,
        /// Channel.
        channel: ChannelName,
        /// Who.
        uid: Uid,
    },
    /// Bus: record that a member of this instance left: delete its presence row if it
    /// is still this join (`seq`), and tell the other instances.
    Release {
        /// Channel.
        channel: ChannelName,
        /// Who.
        uid: Uid,
        /// Which join of that uid.
        seq: i64,
        /// As told to the peers.
        reason: LeaveReason,
    },
    /// Ask the store whether `uid` is an active member of the call of `channel` (when
    /// [`HubConfig::check_membership`]); answer with [`Input::MemberChecked`].
    CheckMember {
        /// The joining socket.
        conn: ConnId,
        /// Channel.
        channel: ChannelName,
        /// Who.
        uid: Uid,
    },
    /// Bus: send a message to another instance; on failure feed [`Input::Unpublished`].
    Publish {
        /// The instance holding the addressee.
        to: InstanceId,
        /// What.
        message: BusMessage,
    },
}

/// A socket whose join is being recorded in the presence table (bus only).
#[derive(Debug)]
struct Joining {
    channel: ChannelName,
    uid: Uid,
    /// Signals that arrived from other instances meanwhile: (from, payload, reply_to).
    held: Vec<(Uid, SignalPayload, InstanceId)>,
}

#[derive(Debug)]
struct Conn {
    member: Option<(ChannelName, Uid)>,
    joining: Option<Joining>,
    last_in_ms: i64,
    last_ping_ms: Option<i64>,
    next_presence_ms: i64,
    /// Message budget: `msgs_per_sec`, bursts of `burst`.
    msgs: Bucket,
    /// When the socket opened (the join deadline runs from it).
    opened_ms: i64,
    /// Signal budget: messages, and bytes.
    signal_msgs: Bucket,
    signal_bytes: Bucket,
    /// When the token the socket joined (or renewed) with expires, in ms; `None`: never.
    token_expires_ms: Option<i64>,
    /// `token_expiring` was sent for the current token.
    expiry_warned: bool,
    /// The join waiting for the store's membership check.
    checking: Option<(ChannelName, Uid)>,
}

/// A member whose socket is on this instance.
#[derive(Debug)]
struct Member {
    uid: Uid,
    conn: ConnId,
    /// Join order (the presence table's sequence with a bus, a counter without).
    seq: i64,
}

#[derive(Debug, Default)]
struct Room {
    /// Members on this instance, in join order.
    members: Vec<Member>,
    /// Members on other instances (bus only), in join order.
    remote: Vec<PresenceRow>,
    /// Sockets of this instance whose join is being recorded (bus only).
    joining: Vec<(Uid, ConnId)>,
    /// The newest bus event applied to this room: older ones are stale (bus only).
    seen: i64,
}

impl Room {
    fn conn_of(&self, uid: &Uid) -> Option<ConnId> {
        self.members.iter().find(|m| &m.uid == uid).map(|m| m.conn)
    }

    fn remote_of(&self, uid: &Uid) -> Option<&PresenceRow> {
        self.remote.iter().find(|r| &r.uid == uid)
    }

    fn locals(&self) -> Vec<ConnId> {
        self.members.iter().map(|m| m.conn).collect()
    }

    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.remote.is_empty() && self.joining.is_empty()
    }

    /// Inserts a member of another instance, keeping join order.
    fn insert_remote(&mut self, row: PresenceRow) {
        let at = self.remote.partition_point(|r| r.seq < row.seq);
        self.remote.insert(at, row);
    }
}

/// The hub. See the module docs for the driving loop.
#[derive(Debug)]
pub struct Hub {
    cfg: HubConfig,
    tokens: TokenIssuer,
    ice: IceConfig,
    /// This instance on the bus; `None`: the only instance (SQLite).
    bus: Option<InstanceId>,
    next_id: u64,
    /// Join order without a bus.
    next_seq: i64,
    conns: HashMap<ConnId, Conn>,
    rooms: HashMap<ChannelName, Room>,
    out: VecDeque<Output>,
    /// Join buckets per uid and per token (forgotten once full again).
    joins_by_uid: HashMap<Uid, Bucket>,
    joins_by_token: HashMap<String, Bucket>,
}

impl Hub {
    /// A hub verifying tokens with `tokens` and handing out `ice` servers, for the only
    /// instance of the service.
    pub fn new(cfg: HubConfig, tokens: TokenIssuer, ice: IceConfig) -> Self {
        Self {
            cfg,
            tokens,
            ice,
            bus: None,
            next_id: 1,
            next_seq: 1,
            conns: HashMap::new(),
            rooms: HashMap::new(),
            out: VecDeque::new(),
            joins_by_uid: HashMap::new(),
            joins_by_token: HashMap::new(),
        }
    }

    /// A hub of instance `me`, sharing its channels with other instances over a bus.
    pub fn with_bus(cfg: HubConfig, tokens: TokenIssuer, ice: IceConfig, me: InstanceId) -> Self {
        Self {
            bus: Some(me),
            ..Self::new(cfg, tokens, ice)
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// This instance on the bus (`None`: the only instance).
    pub fn bus(&self) -> Option<&InstanceId> {
        self.bus.as_ref()
    }

    /// Registers a new socket; its first message must be `join`.
    pub fn open(&mut self, now: i64) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        self.conns.insert(
            id,
            Conn {
                member: None,
                joining: None,
                last_in_ms: now,
                last_ping_ms: None,
                next_presence_ms: i64::MAX,
                msgs: Bucket::full(u64::from(self.cfg.burst), now),
                opened_ms: now,
                signal_msgs: Bucket::full(u64::from(self.cfg.signals_per_sec) * SIGNAL_BURST, now),
                signal_bytes: Bucket::full(
                    u64::from(self.cfg.signal_bytes_per_sec) * SIGNAL_BURST,
                    now,
                ),
                token_expires_ms: None,
                expiry_warned: false,
                checking: None,
            },
        );
        id
    }

    /// Number of open sockets.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Channels with at least one member on this instance, and this instance's members
    /// over all channels (metrics).
    pub fn occupancy(&self) -> (usize, usize) {
        let local = self.rooms.values().filter(|r| !r.members.is_empty());
        let (mut channels, mut members) = (0, 0);
        for r in local {
            channels += 1;
            members += r.members.len();
        }
        (channels, members)
    }

    /// Uids present in `channel` (on every instance, as far as this one knows), in join
    /// order.
    pub fn present(&self, channel: &ChannelName) -> Vec<Uid> {
        let Some(room) = self.rooms.get(channel) else {
            return Vec::new();
        };
        let mut all: Vec<(i64, &Uid)> = room
            .members
            .iter()
            .map(|m| (m.seq, &m.uid))
            .chain(room.remote.iter().map(|r| (r.seq, &r.uid)))
            .collect();
        all.sort();
        all.into_iter().map(|(_, u)| u.clone()).collect()
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
                let join = if c.member.is_none() && c.joining.is_none() && c.checking.is_none() {
                    c.opened_ms.saturating_add(self.cfg.join_timeout_ms)
                } else {
                    i64::MAX
                };
                let token = match c.token_expires_ms {
                    Some(exp) if c.expiry_warned => exp,
                    Some(exp) => exp.saturating_sub(self.cfg.token_warning_ms),
                    None => i64::MAX,
                };
                (c.last_in_ms + self.cfg.idle_timeout_ms)
                    .min(ping)
                    .min(c.next_presence_ms)
                    .min(join)
                    .min(token)
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
                // With a bus, the driver removes this instance's presence rows itself.
                self.conns.clear();
                self.rooms.clear();
            }
            Input::Claimed { conn, claim } => self.on_claimed(now, conn, claim),
            Input::ClaimRefused { conn, full } => self.on_claim_refused(conn, full),
            Input::Bus(message) => self.on_bus(message),
            Input::Snapshot(rows) => self.on_snapshot(rows),
            Input::Unpublished(message) => self.on_unpublished(message),
            Input::Lapsed if self.bus.is_some() => {
                let mut ids: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.member.is_some())
                    .map(|(id, _)| *id)
                    .collect();
                ids.sort();
                for conn in ids {
                    self.evict(conn, true);
                }
            }
            Input::Lapsed => {}
            Input::Flooded { conn, from } => self.on_flooded(conn, from),
            Input::MemberChecked { conn, verdict } => self.on_member_checked(now, conn, verdict),
        }
    }

    /// Removes `uid` from `channel`: it gets `kicked {reason}` and is closed; the others
    /// see `peer_left {reason: "kicked"}`. A member of another instance is kicked there
    /// (through the bus). Returns whether the uid was present, as far as this instance
    /// knows.
    pub fn kick(&mut self, channel: &ChannelName, uid: &Uid, reason: &str) -> bool {
        if self.kick_local(channel, uid, reason) {
            return true;
        }
        let Some(row) = self.rooms.get(channel).and_then(|r| r.remote_of(uid)) else {
            return false;
        };
        let to = row.instance.clone();
        self.out.push_back(Output::Publish {
            to,
            message: BusMessage::Kick {
                channel: channel.clone(),
                uid: uid.clone(),
                reason: reason.to_owned(),
            },
        });
        true
    }

    // ------------------------------------------------------------------ internals

    fn send(&mut self, conn: ConnId, message: ServerMessage) {
        self.out.push_back(Output::Send { conn, message });
    }

    fn kick_local(&mut self, channel: &ChannelName, uid: &Uid, reason: &str) -> bool {
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

    /// Counts a frame against the socket's rate; false (and the socket dropped) when it
    /// is over, or the socket is unknown.
    fn admit(&mut self, now: i64, conn: ConnId) -> bool {
        let (cap, rate) = (u64::from(self.cfg.burst), u64::from(self.cfg.msgs_per_sec));
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        c.last_in_ms = now;
        c.last_ping_ms = None;
        if c.msgs.take(now, rate, 1000, cap, 1) {
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

    /// Forgets a socket; if it was a member, tells the others, reports presence and (with
    /// a bus) releases its presence row.
    fn drop_conn(
        &mut self,
        conn: ConnId,
        reason: LeaveReason,
        deliberate: bool,
        close: Option<u16>,
    ) {
        self.forget(conn, reason, deliberate, close, true);
    }

    /// [`Hub::drop_conn`], choosing whether the presence row is released (not when
    /// another instance already removed it).
    fn forget(
        &mut self,
        conn: ConnId,
        reason: LeaveReason,
        deliberate: bool,
        close: Option<u16>,
        release: bool,
    ) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(j) = c.joining {
            self.abandon_join(conn, j);
        }
        if let Some((channel, uid)) = c.member {
            let seq = self.remove_member(&channel, &uid, conn, reason);
            if let (Some(seq), true, Some(_)) = (seq, release, &self.bus) {
                self.out.push_back(Output::Release {
                    channel: channel.clone(),
                    uid: uid.clone(),
                    seq,
                    reason,
                });
            }
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

    /// A socket that was joining is gone: its place in the room goes, and the signals
    /// held for it are answered `Undeliverable`.
    fn abandon_join(&mut self, conn: ConnId, j: Joining) {
        self.left_joining(&j.channel, conn);
        self.refuse_held(&j.channel, &j.uid, j.held);
    }

    /// Takes `uid` (on `conn`) out of its room and tells the others; returns its join
    /// number when it was there.
    fn remove_member(
        &mut self,
        channel: &ChannelName,
        uid: &Uid,
        conn: ConnId,
        why: LeaveReason,
    ) -> Option<i64> {
        let room = self.rooms.get_mut(channel)?;
        let at = room
            .members
            .iter()
            .position(|m| &m.uid == uid && m.conn == conn)?;
        let seq = room.members.remove(at).seq;
        let others = room.locals();
        if room.is_idle() {
            self.rooms.remove(channel);
        }
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

    /// Sends `make(uid)` to each of `conns`.
    fn tell(&mut self, conns: &[ConnId], make: impl Fn(String) -> ServerMessage, uid: &Uid) {
        for c in conns {
            self.send(*c, make(uid.to_string()));
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
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if let Some((channel, uid)) = &c.checking {
            // `joined` has not been sent yet: the membership check is under way.
            if let ClientMessage::Renew { token } = &msg {
                let (channel, uid) = (channel.clone(), uid.clone());
                return self.on_renew(now, conn, &channel, &uid, token);
            }
            return self.while_joining(conn, msg);
        }
        if let Some(j) = &c.joining {
            // `joined` has not been sent yet.
            if let ClientMessage::Renew { token } = &msg {
                let (channel, uid) = (j.channel.clone(), j.uid.clone());
                return self.on_renew(now, conn, &channel, &uid, token);
            }
            return self.while_joining(conn, msg);
        }
        let member = c.member.clone();
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
            (ClientMessage::Join { .. }, Some(_)) => self.already_joined(conn),
            (_, None) => self.fail(
                conn,
                codes::NOT_JOINED,
                "the first message must be join",
                close_code::POLICY,
            ),
            (ClientMessage::Signal { to, payload }, Some((channel, uid))) => {
                if self.charge_signal(now, conn, text.len()) {
                    self.on_signal(conn, &channel, &uid, &to, payload);
                }
            }
            (ClientMessage::Renew { token }, Some((channel, uid))) => {
                self.on_renew(now, conn, &channel, &uid, &token);
            }
            (ClientMessage::Leave, Some(_)) => {
                self.drop_conn(conn, LeaveReason::Left, true, Some(close_code::NORMAL));
            }
        }
    }

    fn already_joined(&mut self, conn: ConnId) {
        self.send(
            conn,
            ServerMessage::error(
                codes::ALREADY_JOINED,
                "this socket already joined; open another socket for another channel",
            ),
        );
    }

    /// A message before `joined` arrived (bus only): a second join is refused, a leave
    /// abandons the join, a signal has nobody to go to yet.
    fn while_joining(&mut self, conn: ConnId, msg: ClientMessage) {
        match msg {
            ClientMessage::Join { .. } => self.already_joined(conn),
            ClientMessage::Leave => {
                self.drop_conn(conn, LeaveReason::Left, true, Some(close_code::NORMAL));
            }
            // Answered by `on_text` before it gets here.
            ClientMessage::Renew { .. } => {}
            ClientMessage::Signal { to, .. } => {
                let shown: String = to.chars().take(64).collect();
                self.send(
                    conn,
                    ServerMessage::error(
                        codes::PEER_NOT_FOUND,
                        format!("no peer {shown:?} yet: wait for joined"),
                    ),
                );
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
        let verified = match self
            .tokens
            .verify(token, channel.as_str(), uid.as_str(), now_secs)
        {
            Ok(v) => v,
            Err(e) => {
                self.fail(conn, e.code(), &e.to_string(), close_code::POLICY);
                return;
            }
        };
        // Counted after the token verified, so nobody can spend another uid's joins.
        if let Some(what) = self.charge_join(now, &uid, token) {
            self.fail(
                conn,
                codes::TOO_MANY_JOINS,
                &format!("too many joins for this {what} in a minute; wait and join again"),
                close_code::POLICY,
            );
            return;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.token_expires_ms = expiry_ms(verified.join_expires_at);
            c.expiry_warned = false;
            if self.cfg.check_membership {
                // The store decides whether the uid is still an active member of a call
                // that has not ended; the join goes on at `Input::MemberChecked`.
                c.checking = Some((channel.clone(), uid.clone()));
                self.out
                    .push_back(Output::CheckMember { conn, channel, uid });
                return;
            }
        }
        self.admit_join(now, conn, channel, uid);
    }

    /// A verified join goes on: claimed in the presence table (bus), or entered here.
    fn admit_join(&mut self, now: i64, conn: ConnId, channel: ChannelName, uid: Uid) {
        if self.bus.is_some() {
            // The presence table decides: the limit over every instance, the join order,
            // a replacement wherever the uid was.
            let room = self.rooms.entry(channel.clone()).or_default();
            room.joining.push((uid.clone(), conn));
            if let Some(c) = self.conns.get_mut(&conn) {
                c.joining = Some(Joining {
                    channel: channel.clone(),
                    uid: uid.clone(),
                    held: Vec::new(),
                });
            }
            self.out.push_back(Output::Claim { conn, channel, uid });
            return;
        }
        let room = self.rooms.entry(channel.clone()).or_default();
        let previous = room.conn_of(&uid);
        if previous.is_none() && room.members.len() >= self.cfg.max_peers {
            let max = self.cfg.max_peers;
            if room.is_idle() {
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
        let seq = self.next_seq;
        self.next_seq += 1;
        self.enter(now, conn, channel, uid, seq);
    }

    /// Makes `conn` the member `uid` of `channel` with join number `seq`: replaces the
    /// uid's earlier join, answers `joined` (the members that came before), tells the
    /// others here, and names the members that came after (bus only) with `peer_joined`.
    fn enter(&mut self, now: i64, conn: ConnId, channel: ChannelName, uid: Uid, seq: i64) {
        let room = self.rooms.entry(channel.clone()).or_default();
        if let Some(old) = room.conn_of(&uid) {
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
        } else if let Some(at) = room.remote.iter().position(|r| r.uid == uid) {
            // Its earlier join on another instance, which kicks that socket itself.
            room.remote.remove(at);
            let locals = room.locals();
            self.tell(
                &locals,
                |u| ServerMessage::PeerLeft {
                    uid: u,
                    reason: LeaveReason::Replaced,
                },
                &uid,
            );
        }
        let room = self.rooms.entry(channel.clone()).or_default();
        let peers: Vec<ConnId> = room.locals();
        let mut before: Vec<(i64, String)> = room
            .members
            .iter()
            .map(|m| (m.seq, m.uid.to_string()))
            .chain(
                room.remote
                    .iter()
                    .filter(|r| r.seq < seq)
                    .map(|r| (r.seq, r.uid.to_string())),
            )
            .collect();
        before.sort();
        let after: Vec<String> = room
            .remote
            .iter()
            .filter(|r| r.seq > seq)
            .map(|r| r.uid.to_string())
            .collect();
        room.members.push(Member {
            uid: uid.clone(),
            conn,
            seq,
        });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.member = Some((channel.clone(), uid.clone()));
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
        for later in after {
            self.send(conn, ServerMessage::PeerJoined { uid: later });
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
        let to = Uid::parse(to).map_err(|_| to);
        let room = self.rooms.get(channel);
        let target = match (&to, room) {
            (Ok(to), Some(room)) if to != from => match room.conn_of(to) {
                Some(c) => Some(Ok(c)),
                None => room.remote_of(to).map(|r| Err(r.instance.clone())),
            },
            _ => None,
        };
        match (target, to) {
            (Some(Ok(target)), _) => self.send(
                target,
                ServerMessage::Signal {
                    from: from.to_string(),
                    payload,
                },
            ),
            (Some(Err(instance)), Ok(to)) => match self.bus.clone() {
                Some(me) => self.out.push_back(Output::Publish {
                    to: instance,
                    message: BusMessage::Signal {
                        channel: channel.clone(),
                        from: from.clone(),
                        to,
                        payload,
                        reply_to: me,
                    },
                }),
                None => self.peer_not_found(conn, to.as_str()),
            },
            (_, to) => {
                let to = match &to {
                    Ok(u) => u.as_str(),
                    Err(s) => s,
                };
                self.peer_not_found(conn, to);
            }
        }
    }

    fn peer_not_found(&mut self, conn: ConnId, to: &str) {
        let shown: String = to.chars().take(64).collect();
        self.send(
            conn,
            ServerMessage::error(
                codes::PEER_NOT_FOUND,
                format!("no peer {shown:?} in this channel"),
            ),
        );
    }

    fn on_timeout(&mut self, now: i64) {
        self.prune_join_buckets(now);
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort();
        for conn in ids {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let waiting = c.member.is_none() && c.joining.is_none() && c.checking.is_none();
            if waiting && now.saturating_sub(c.opened_ms) >= self.cfg.join_timeout_ms {
                let secs = self.cfg.join_timeout_ms / 1000;
                self.fail(
                    conn,
                    codes::JOIN_TIMEOUT,
                    &format!("no join within {secs} s of connecting"),
                    close_code::POLICY,
                );
                continue;
            }
            if let Some(exp) = c.token_expires_ms.filter(|_| !waiting) {
                if now >= exp {
                    self.send(
                        conn,
                        ServerMessage::Kicked {
                            reason: codes::TOKEN_EXPIRED_REASON.to_owned(),
                        },
                    );
                    // Not a hang-up: the app may join again with a fresh token.
                    self.drop_conn(conn, LeaveReason::Kicked, false, Some(close_code::NORMAL));
                    continue;
                }
                if !c.expiry_warned && now >= exp.saturating_sub(self.cfg.token_warning_ms) {
                    c.expiry_warned = true;
                    self.send(conn, ServerMessage::TokenExpiring);
                }
            }
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

    /// The store answered the membership check of `conn`'s join.
    fn on_member_checked(&mut self, now: i64, conn: ConnId, verdict: Option<bool>) {
        let Some((channel, uid)) = self.conns.get_mut(&conn).and_then(|c| c.checking.take()) else {
            return; // the socket went meanwhile
        };
        match verdict {
            Some(true) => self.admit_join(now, conn, channel, uid),
            Some(false) => self.fail(
                conn,
                codes::NOT_A_MEMBER,
                &format!("uid {uid} is not an active member of a call in this channel"),
                close_code::POLICY,
            ),
            None => self.fail(
                conn,
                codes::UNAVAILABLE,
                "the membership could not be checked; try again",
                close_code::TRY_AGAIN,
            ),
        }
    }

    /// Forgets join buckets that are full again.
    fn prune_join_buckets(&mut self, now: i64) {
        let per_uid = u64::from(self.cfg.joins_per_uid_per_min);
        let per_token = u64::from(self.cfg.joins_per_token_per_min);
        self.joins_by_uid
            .retain(|_, b| !b.is_full(now, per_uid, MINUTE_MS, per_uid));
        self.joins_by_token
            .retain(|_, b| !b.is_full(now, per_token, MINUTE_MS, per_token));
    }

    /// Counts a verified join against its uid's and its token's buckets (both, or
    /// neither when one is empty); names the one that is empty.
    fn charge_join(&mut self, now: i64, uid: &Uid, token: &str) -> Option<&'static str> {
        let per_uid = u64::from(self.cfg.joins_per_uid_per_min);
        let per_token = u64::from(self.cfg.joins_per_token_per_min);
        let by_uid = (per_uid > 0).then(|| {
            let b = self
                .joins_by_uid
                .entry(uid.clone())
                .or_insert_with(|| Bucket::full(per_uid, now));
            b.refill(now, per_uid, MINUTE_MS, per_uid);
            b.milli >= 1000
        });
        if by_uid == Some(false) {
            return Some("uid");
        }
        let by_token = (per_token > 0).then(|| {
            let b = self
                .joins_by_token
                .entry(token.to_owned())
                .or_insert_with(|| Bucket::full(per_token, now));
            b.refill(now, per_token, MINUTE_MS, per_token);
            b.milli >= 1000
        });
        if by_token == Some(false) {
            return Some("token");
        }
        if let Some(b) = self.joins_by_uid.get_mut(uid).filter(|_| per_uid > 0) {
            b.milli -= 1000;
        }
        if let Some(b) = self.joins_by_token.get_mut(token).filter(|_| per_token > 0) {
            b.milli -= 1000;
        }
        None
    }

    /// Counts a `signal` of `bytes` against the socket's signal budget; false (and the
    /// sender cut off with `signal_flood`) when it is over.
    fn charge_signal(&mut self, now: i64, conn: ConnId, bytes: usize) -> bool {
        let msgs = u64::from(self.cfg.signals_per_sec);
        let rate = u64::from(self.cfg.signal_bytes_per_sec);
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let msgs_ok = msgs == 0 || c.signal_msgs.take(now, msgs, 1000, msgs * SIGNAL_BURST, 1);
        let bytes_ok = rate == 0
            || c.signal_bytes
                .take(now, rate, 1000, rate * SIGNAL_BURST, bytes);
        if msgs_ok && bytes_ok {
            return true;
        }
        self.fail(
            conn,
            codes::SIGNAL_FLOOD,
            &format!(
                "signals over the budget of {msgs} messages and {rate} bytes per second \
                 (bursts of {SIGNAL_BURST}x)"
            ),
            close_code::POLICY,
        );
        false
    }

    /// A signal from `from` could not be queued for `conn`, whose queue is filling up
    /// with signals: the sender is cut off, the receiver stays.
    fn on_flooded(&mut self, conn: ConnId, from: &str) {
        let Some((channel, _)) = self.conns.get(&conn).and_then(|c| c.member.clone()) else {
            return;
        };
        let Ok(from) = Uid::parse(from) else {
            return;
        };
        let Some(room) = self.rooms.get(&channel) else {
            return;
        };
        if let Some(sender) = room.conn_of(&from) {
            self.fail(
                sender,
                codes::SIGNAL_FLOOD,
                "signals sent faster than their receiver reads them",
                close_code::POLICY,
            );
        } else if room.remote_of(&from).is_some() {
            self.kick(&channel, &from, codes::SIGNAL_FLOOD);
        }
    }

    /// `renew`: a fresh token for the socket's channel and uid replaces its expiry; a
    /// refused one is an `error` and the socket stays (its old token still runs).
    fn on_renew(&mut self, now: i64, conn: ConnId, channel: &ChannelName, uid: &Uid, token: &str) {
        let now_secs = u64::try_from(now / 1000).unwrap_or(0);
        match self
            .tokens
            .verify(token, channel.as_str(), uid.as_str(), now_secs)
        {
            Ok(v) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.token_expires_ms = expiry_ms(v.join_expires_at);
                    c.expiry_warned = false;
                }
            }
            Err(e) => self.send(
                conn,
                ServerMessage::error(e.code(), format!("renew refused: {e}")),
            ),
        }
    }

    // ------------------------------------------------------------------ bus

    fn on_claimed(&mut self, now: i64, conn: ConnId, claim: &Claim) {
        let Some(me) = self.bus.clone() else {
            return;
        };
        let waiting = self
            .conns
            .get(&conn)
            .and_then(|c| c.joining.as_ref())
            .is_some_and(|j| j.channel == claim.channel && j.uid == claim.uid);
        if !waiting {
            // The socket went while its join was being recorded: undo the join.
            self.out.push_back(Output::Release {
                channel: claim.channel.clone(),
                uid: claim.uid.clone(),
                seq: claim.seq,
                reason: LeaveReason::Left,
            });
            return;
        }
        let held = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.joining.take())
            .map(|j| j.held)
            .unwrap_or_default();
        // The socket keeps its place in `joining` until it has entered, so the room is not
        // dropped (with what it has seen) while the uid's earlier join is replaced.
        let room = self.rooms.entry(claim.channel.clone()).or_default();
        if room.seen < claim.seq {
            // The table's view is newer than what the bus delivered so far: take it (the
            // events before this join that are still on their way are stale now).
            let rows: Vec<PresenceRow> = claim
                .members
                .iter()
                .filter(|r| r.instance != me)
                .cloned()
                .collect();
            self.resync_room(&claim.channel, rows);
            self.rooms.entry(claim.channel.clone()).or_default().seen = claim.seq;
        }
        let superseded = self
            .rooms
            .get(&claim.channel)
            .and_then(|r| r.remote_of(&claim.uid))
            .is_some_and(|r| r.seq > claim.seq);
        if superseded {
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
            self.left_joining(&claim.channel, conn);
            self.refuse_held(&claim.channel, &claim.uid, held);
            return;
        }
        self.enter(
            now,
            conn,
            claim.channel.clone(),
            claim.uid.clone(),
            claim.seq,
        );
        self.left_joining(&claim.channel, conn);
        for (from, payload, _) in held {
            self.send(
                conn,
                ServerMessage::Signal {
                    from: from.to_string(),
                    payload,
                },
            );
        }
    }

    /// `conn` no longer waits for its join in `channel`.
    fn left_joining(&mut self, channel: &ChannelName, conn: ConnId) {
        if let Some(room) = self.rooms.get_mut(channel) {
            room.joining.retain(|(_, c)| *c != conn);
            if room.is_idle() {
                self.rooms.remove(channel);
            }
        }
    }

    fn on_claim_refused(&mut self, conn: ConnId, full: bool) {
        let Some(j) = self.conns.get_mut(&conn).and_then(|c| c.joining.take()) else {
            return;
        };
        self.abandon_join(conn, j);
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

    fn refuse_held(
        &mut self,
        channel: &ChannelName,
        to: &Uid,
        held: Vec<(Uid, SignalPayload, InstanceId)>,
    ) {
        for (from, _, reply_to) in held {
            self.out.push_back(Output::Publish {
                to: reply_to,
                message: BusMessage::Undeliverable {
                    channel: channel.clone(),
                    from,
                    to: to.clone(),
                },
            });
        }
    }

    fn on_bus(&mut self, message: &BusMessage) {
        let Some(me) = self.bus.clone() else {
            return;
        };
        match message {
            BusMessage::Joined(row) => {
                // This instance's own joins were applied when their claim returned.
                if row.instance == me || !self.is_new(&row.channel, row.seq) {
                    return;
                }
                self.apply_joined(row.clone());
                if let Some(room) = self.rooms.get_mut(&row.channel) {
                    room.seen = room.seen.max(row.seq);
                }
            }
            BusMessage::Left {
                row,
                reason,
                event_seq,
            } => {
                if !self.is_new(&row.channel, *event_seq) {
                    return;
                }
                let Some(room) = self.rooms.get_mut(&row.channel) else {
                    return;
                };
                room.seen = *event_seq;
                if row.instance == me {
                    // This instance's members leave here first; one still here was
                    // removed by another instance that declared this one dead.
                    let conn = room
                        .members
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
            } => {
                let room = self.rooms.get(channel);
                if let Some(conn) = room.and_then(|r| r.conn_of(to)) {
                    self.send(
                        conn,
                        ServerMessage::Signal {
                            from: from.to_string(),
                            payload: payload.clone(),
                        },
                    );
                    return;
                }
                let joining = room.and_then(|r| r.joining.iter().find(|(u, _)| u == to));
                if let Some(&(_, conn)) = joining {
                    let j = self.conns.get_mut(&conn).and_then(|c| c.joining.as_mut());
                    if let Some(j) = j.filter(|j| j.held.len() < MAX_HELD) {
                        j.held
                            .push((from.clone(), payload.clone(), reply_to.clone()));
                        return;
                    }
                }
                self.out.push_back(Output::Publish {
                    to: reply_to.clone(),
                    message: BusMessage::Undeliverable {
                        channel: channel.clone(),
                        from: from.clone(),
                        to: to.clone(),
                    },
                });
            }
            BusMessage::Undeliverable { channel, from, to } => {
                if let Some(conn) = self.rooms.get(channel).and_then(|r| r.conn_of(from)) {
                    self.peer_not_found(conn, to.as_str());
                }
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

    /// Whether a bus event numbered `seq` is newer than what `channel`'s room applied.
    fn is_new(&self, channel: &ChannelName, seq: i64) -> bool {
        self.rooms.get(channel).is_none_or(|r| seq > r.seen)
    }

    /// A member of another instance joined: it replaces the uid's older join (here or
    /// elsewhere), and the members here are told.
    fn apply_joined(&mut self, row: PresenceRow) {
        let room = self.rooms.entry(row.channel.clone()).or_default();
        let local = room
            .members
            .iter()
            .find(|m| m.uid == row.uid)
            .map(|m| (m.conn, m.seq));
        if let Some((old, seq)) = local {
            if seq >= row.seq {
                return;
            }
            // Replaced by a later join on another instance: the uid stays present.
            self.send(
                old,
                ServerMessage::Kicked {
                    reason: LeaveReason::Replaced.as_str().to_owned(),
                },
            );
            self.conns.remove(&old);
            self.remove_member(&row.channel, &row.uid, old, LeaveReason::Replaced);
            self.out.push_back(Output::Close {
                conn: old,
                code: close_code::NORMAL,
            });
        } else if let Some(r) = room.remote_of(&row.uid) {
            if r.seq >= row.seq {
                return;
            }
            self.remove_remote(&row.channel, &row.uid, None, LeaveReason::Replaced);
        }
        let room = self.rooms.entry(row.channel.clone()).or_default();
        let locals = room.locals();
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
        let Some(room) = self.rooms.get_mut(channel) else {
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
        let locals = room.locals();
        if room.is_idle() {
            self.rooms.remove(channel);
        }
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
            .rooms
            .get(channel)
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

    fn on_snapshot(&mut self, rows: &[PresenceRow]) {
        let Some(me) = self.bus.clone() else {
            return;
        };
        let mut by_channel: HashMap<ChannelName, Vec<PresenceRow>> = HashMap::new();
        for r in rows.iter().filter(|r| r.instance != me) {
            by_channel
                .entry(r.channel.clone())
                .or_default()
                .push(r.clone());
        }
        let mut channels: Vec<ChannelName> = self
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
            if let (Some(seq), Some(room)) = (newest, self.rooms.get_mut(&channel)) {
                room.seen = room.seen.max(seq);
            }
        }
    }

    fn on_unpublished(&mut self, message: &BusMessage) {
        // Only a signal has a sender to tell; a lost kick or answer is logged by the driver.
        if let BusMessage::Signal {
            channel, from, to, ..
        } = message
            && let Some(conn) = self.rooms.get(channel).and_then(|r| r.conn_of(from))
        {
            let to = to.as_str();
            self.send(
                conn,
                ServerMessage::error(
                    codes::RELAY_FAILED,
                    format!("the signal to {to:?} could not be relayed; send it again"),
                ),
            );
        }
    }
}

/// A token's join expiry (unix seconds) in ms.
fn expiry_ms(join_expires_at: Option<u64>) -> Option<i64> {
    join_expires_at.map(|s| {
        i64::try_from(s)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000)
    })
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

    fn offer_to_sized(to: &str, sdp_len: usize) -> String {
        json!({"type":"signal","to":to,"description":{"type":"offer","sdp":"x".repeat(sdp_len)}})
            .to_string()
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
        // ping after 10 s, drop after 30 s (the join deadline is moved out of the way: it
        // has its own test)
        let mut h = hub_with(HubConfig {
            join_timeout_ms: 60_000,
            ..HubConfig::default()
        });
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
    fn sockets_that_never_join_are_closed_at_the_join_deadline() {
        let mut h = hub(); // join within 10 s
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let idle = h.open(T0);
        let late = h.open(T0 + 5_000);
        assert_eq!(h.poll_timeout(), Some(T0 + 10_000));
        h.handle_input(T0 + 10_000, Input::Timeout);
        let out = drain(&mut h);
        assert_eq!(error_code(&out, idle).as_deref(), Some(codes::JOIN_TIMEOUT));
        assert_eq!(closed(&out, idle), Some(close_code::POLICY));
        assert_eq!(closed(&out, late), None, "its own deadline is 5 s later");
        assert_eq!(closed(&out, a), None, "a member is not concerned");
        // Joining in time is enough.
        let t = token("c1", "bob");
        assert!(matches!(
            sent_to(
                &text(&mut h, T0 + 14_000, late, &join_text("c1", "bob", &t)),
                late
            )[0],
            ServerMessage::Joined { .. }
        ));
        h.handle_input(T0 + 16_000, Input::Timeout);
        assert_eq!(closed(&drain(&mut h), late), None);
        assert_eq!(h.connections(), 2);
    }

    #[test]
    fn joins_are_limited_per_token_and_per_uid_and_refill_over_a_minute() {
        let mut h = hub_with(HubConfig {
            joins_per_uid_per_min: 4,
            joins_per_token_per_min: 2,
            ..HubConfig::default()
        });
        fn attempt(h: &mut Hub, now: i64, tok: &str) -> bool {
            let c = h.open(now);
            let out = text(h, now, c, &join_text("c1", "mallory", tok));
            let ok = matches!(sent_to(&out, c).first(), Some(ServerMessage::Joined { .. }));
            if ok {
                text(h, now, c, r#"{"type":"leave"}"#);
            } else {
                assert_eq!(error_code(&out, c).as_deref(), Some(codes::TOO_MANY_JOINS));
                assert_eq!(closed(&out, c), Some(close_code::POLICY));
            }
            ok
        }
        let t = token("c1", "mallory");
        assert!(attempt(&mut h, T0, &t));
        assert!(attempt(&mut h, T0, &t));
        assert!(!attempt(&mut h, T0, &t), "a third join with one token");
        // Another token of the same uid: two more, then the uid's own limit.
        let t2 = token("c1", "mallory");
        assert_ne!(t2, t);
        assert!(attempt(&mut h, T0, &t2));
        assert!(attempt(&mut h, T0, &t2));
        let t3 = token("c1", "mallory");
        assert!(
            !attempt(&mut h, T0, &t3),
            "the uid's fifth join in a minute"
        );
        // Refused attempts spend nothing: 15 s later (a quarter of a minute) the uid has
        // one join again, and the fresh token is not used up.
        assert!(attempt(&mut h, T0 + 15_000, &t3));
        assert!(!attempt(&mut h, T0 + 15_000, &t3));
        // Someone else is not concerned.
        let (b, out) = join(&mut h, T0 + 15_000, "c1", "bob");
        assert!(matches!(sent_to(&out, b)[0], ServerMessage::Joined { .. }));
        // Full buckets are forgotten.
        h.handle_input(T0 + 200_000, Input::Timeout);
        assert!(h.joins_by_uid.is_empty() && h.joins_by_token.is_empty());
    }

    #[test]
    fn a_signal_flood_cuts_off_its_sender() {
        let mut h = hub_with(HubConfig {
            signals_per_sec: 10,          // burst 40
            signal_bytes_per_sec: 10_000, // burst 40,000
            ..HubConfig::default()
        });
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (m, _) = join(&mut h, T0, "c1", "mallory");
        drain(&mut h);
        let big = offer_to_sized("alice", 9_000);
        // Four fit in the byte burst; the fifth cuts the sender off.
        for _ in 0..4 {
            let out = text(&mut h, T0, m, &big);
            assert_eq!(sent_to(&out, a).len(), 1);
        }
        let out = text(&mut h, T0, m, &big);
        assert!(sent_to(&out, a).contains(&ServerMessage::PeerLeft {
            uid: "mallory".into(),
            reason: LeaveReason::Kicked
        }));
        assert_eq!(error_code(&out, m).as_deref(), Some(codes::SIGNAL_FLOOD));
        assert_eq!(closed(&out, m), Some(close_code::POLICY));
        assert_eq!(closed(&out, a), None);
        // The message budget: 40 small signals at once, then cut off; refilled over time.
        let (m2, _) = join(&mut h, T0, "c1", "mal2");
        drain(&mut h);
        for i in 0..40 {
            let out = text(&mut h, T0 + i, m2, &offer_to("alice"));
            assert_eq!(sent_to(&out, a).len(), 1, "signal {i}");
        }
        let out = text(&mut h, T0 + 1_000, m2, &offer_to("alice"));
        assert_eq!(sent_to(&out, a).len(), 1, "10 more after a second");
        let out = text(&mut h, T0 + 10_000, m2, &offer_to("alice"));
        assert_eq!(sent_to(&out, a).len(), 1);
        for _ in 0..40 {
            text(&mut h, T0 + 10_000, m2, &offer_to("alice"));
        }
        assert_eq!(h.present(&ch("c1")), vec![uid("alice")]);
    }

    #[test]
    fn a_flooded_receiver_stays_and_the_sender_goes() {
        let mut h = hub();
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (m, _) = join(&mut h, T0, "c1", "mallory");
        let (b, _) = join(&mut h, T0, "c1", "bob");
        drain(&mut h);
        h.handle_input(
            T0,
            Input::Flooded {
                conn: a,
                from: "mallory",
            },
        );
        let out = drain(&mut h);
        assert_eq!(error_code(&out, m).as_deref(), Some(codes::SIGNAL_FLOOD));
        assert_eq!(closed(&out, m), Some(close_code::POLICY));
        assert_eq!(closed(&out, a), None);
        assert_eq!(h.present(&ch("c1")), vec![uid("alice"), uid("bob")]);
        // An unknown sender, or a receiver that is not a member: nothing happens.
        h.handle_input(
            T0,
            Input::Flooded {
                conn: a,
                from: "nobody",
            },
        );
        let stranger = h.open(T0);
        h.handle_input(
            T0,
            Input::Flooded {
                conn: stranger,
                from: "bob",
            },
        );
        assert!(drain(&mut h).is_empty());
        assert_eq!(h.present(&ch("c1")), vec![uid("alice"), uid("bob")]);
        let _ = b;
    }

    #[test]
    fn an_expiring_token_is_announced_then_kicked_unless_renewed() {
        // tokens of 600 s, warned 30 s before; no idle timeout in the way
        let mut h = hub_with(HubConfig {
            idle_timeout_ms: 100_000_000,
            ping_after_ms: 100_000_000,
            presence_every_ms: 100_000_000,
            ..HubConfig::default()
        });
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (b, _) = join(&mut h, T0, "c1", "bob");
        drain(&mut h);
        assert_eq!(h.poll_timeout(), Some(T0 + 570_000));
        h.handle_input(T0 + 569_000, Input::Timeout);
        let out = drain(&mut h);
        assert!(!sent_to(&out, a).contains(&ServerMessage::TokenExpiring));
        h.handle_input(T0 + 570_000, Input::Timeout);
        let out = drain(&mut h);
        assert_eq!(sent_to(&out, a), vec![ServerMessage::TokenExpiring]);
        assert_eq!(sent_to(&out, b), vec![ServerMessage::TokenExpiring]);
        h.handle_input(T0 + 571_000, Input::Timeout);
        assert!(sent_to(&drain(&mut h), a).is_empty(), "told once");
        // Wrong uid, wrong channel: an error, the socket stays.
        let renew = |t: &str| json!({"type":"renew","token":t}).to_string();
        let out = text(&mut h, T0 + 575_000, a, &renew(&token("c1", "bob")));
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::TOKEN_WRONG_UID));
        assert_eq!(closed(&out, a), None);
        let out = text(&mut h, T0 + 575_000, a, &renew(&token("c2", "alice")));
        assert_eq!(
            error_code(&out, a).as_deref(),
            Some(codes::TOKEN_WRONG_CHANNEL)
        );
        // A fresh token (minted at 580 s): alice now lasts until 1180 s.
        let fresh = issuer()
            .mint("c1", "alice", (T0 / 1000 + 580) as u64)
            .unwrap();
        let out = text(&mut h, T0 + 580_000, a, &renew(&fresh));
        assert!(out.is_empty(), "{out:?}");
        h.handle_input(T0 + 600_000, Input::Timeout);
        let out = drain(&mut h);
        assert_eq!(
            sent_to(&out, b),
            vec![ServerMessage::Kicked {
                reason: codes::TOKEN_EXPIRED_REASON.into()
            }]
        );
        assert_eq!(closed(&out, b), Some(close_code::NORMAL));
        assert_eq!(
            sent_to(&out, a),
            vec![ServerMessage::PeerLeft {
                uid: "bob".into(),
                reason: LeaveReason::Kicked
            }]
        );
        // Not a hang-up: bob may come back with a fresh token.
        assert!(presence(&out).contains(&(
            "bob".into(),
            PresenceEvent::Gone {
                reason: LeaveReason::Kicked,
                deliberate: false
            }
        )));
        h.handle_input(T0 + 1_150_000, Input::Timeout);
        assert!(sent_to(&drain(&mut h), a).contains(&ServerMessage::TokenExpiring));
        h.handle_input(T0 + 1_180_000, Input::Timeout);
        let out = drain(&mut h);
        assert_eq!(closed(&out, a), Some(close_code::NORMAL));
        // An expired token cannot renew, and renew is not a first message.
        let c = h.open(T0 + 1_180_000);
        let out = text(&mut h, T0 + 1_180_000, c, &renew(&fresh));
        assert_eq!(error_code(&out, c).as_deref(), Some(codes::NOT_JOINED));
    }

    #[test]
    fn with_membership_checks_a_join_waits_for_the_store() {
        let mut h = hub_with(HubConfig {
            check_membership: true,
            ..HubConfig::default()
        });
        let c = h.open(T0);
        let out = text(
            &mut h,
            T0,
            c,
            &join_text("c1", "alice", &token("c1", "alice")),
        );
        assert_eq!(
            out,
            vec![Output::CheckMember {
                conn: c,
                channel: ch("c1"),
                uid: uid("alice")
            }]
        );
        // Meanwhile: no join deadline, a signal has nobody to go to.
        h.handle_input(T0 + 11_000, Input::Timeout);
        assert_eq!(closed(&drain(&mut h), c), None);
        let out = text(&mut h, T0 + 11_000, c, &offer_to("bob"));
        assert_eq!(error_code(&out, c).as_deref(), Some(codes::PEER_NOT_FOUND));
        h.handle_input(
            T0 + 11_000,
            Input::MemberChecked {
                conn: c,
                verdict: Some(true),
            },
        );
        let out = drain(&mut h);
        assert!(matches!(sent_to(&out, c)[0], ServerMessage::Joined { .. }));
        // Not a member: refused; the store unreachable: try again.
        let m = h.open(T0);
        text(
            &mut h,
            T0,
            m,
            &join_text("c1", "mallory", &token("c1", "mallory")),
        );
        h.handle_input(
            T0,
            Input::MemberChecked {
                conn: m,
                verdict: Some(false),
            },
        );
        let out = drain(&mut h);
        assert_eq!(error_code(&out, m).as_deref(), Some(codes::NOT_A_MEMBER));
        assert_eq!(closed(&out, m), Some(close_code::POLICY));
        assert!(sent_to(&out, c).is_empty(), "alice never heard of mallory");
        let u = h.open(T0);
        text(&mut h, T0, u, &join_text("c1", "bob", &token("c1", "bob")));
        h.handle_input(
            T0,
            Input::MemberChecked {
                conn: u,
                verdict: None,
            },
        );
        let out = drain(&mut h);
        assert_eq!(error_code(&out, u).as_deref(), Some(codes::UNAVAILABLE));
        assert_eq!(closed(&out, u), Some(close_code::TRY_AGAIN));
        // An answer for a socket that went is ignored.
        h.handle_input(
            T0,
            Input::MemberChecked {
                conn: u,
                verdict: Some(true),
            },
        );
        assert!(drain(&mut h).is_empty());
        assert_eq!(h.present(&ch("c1")), vec![uid("alice")]);
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

    // ------------------------------------------------------------------ with a bus

    const A: &str = "00000000000000aa";
    const B: &str = "00000000000000bb";
    const C: &str = "00000000000000cc";

    fn inst(s: &str) -> InstanceId {
        InstanceId::from_stored(s.into())
    }

    fn bus_hub() -> Hub {
        Hub::with_bus(HubConfig::default(), issuer(), IceConfig::none(), inst(A))
    }

    fn row(channel: &str, u: &str, i: &str, seq: i64) -> PresenceRow {
        PresenceRow {
            channel: ch(channel),
            uid: uid(u),
            instance: inst(i),
            seq,
        }
    }

    fn bus(h: &mut Hub, m: BusMessage) -> Vec<Output> {
        h.handle_input(T0, Input::Bus(&m));
        drain(h)
    }

    fn joined_on(h: &mut Hub, r: PresenceRow) -> Vec<Output> {
        bus(h, BusMessage::Joined(r))
    }

    fn left_on(h: &mut Hub, r: PresenceRow, reason: LeaveReason, event_seq: i64) -> Vec<Output> {
        bus(
            h,
            BusMessage::Left {
                row: r,
                reason,
                event_seq,
            },
        )
    }

    /// Opens a socket and sends its join: the hub only asks for a claim.
    fn ask(h: &mut Hub, channel: &str, u: &str) -> ConnId {
        let c = h.open(T0);
        let out = text(h, T0, c, &join_text(channel, u, &token(channel, u)));
        assert_eq!(
            out,
            vec![Output::Claim {
                conn: c,
                channel: ch(channel),
                uid: uid(u),
            }]
        );
        c
    }

    fn claimed(
        h: &mut Hub,
        conn: ConnId,
        channel: &str,
        u: &str,
        seq: i64,
        members: Vec<PresenceRow>,
    ) -> Vec<Output> {
        let claim = Claim {
            channel: ch(channel),
            uid: uid(u),
            seq,
            members,
        };
        h.handle_input(
            T0,
            Input::Claimed {
                conn,
                claim: &claim,
            },
        );
        drain(h)
    }

    /// Asks and claims; returns the socket and the outputs of the claim.
    fn bus_join(
        h: &mut Hub,
        channel: &str,
        u: &str,
        seq: i64,
        members: Vec<PresenceRow>,
    ) -> (ConnId, Vec<Output>) {
        let c = ask(h, channel, u);
        let out = claimed(h, c, channel, u, seq, members);
        (c, out)
    }

    fn peers_of(out: &[Output], conn: ConnId) -> Vec<String> {
        sent_to(out, conn)
            .into_iter()
            .find_map(|m| match m {
                ServerMessage::Joined { peers, .. } => Some(peers),
                _ => None,
            })
            .expect("joined")
    }

    fn published(out: &[Output]) -> Vec<(InstanceId, BusMessage)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Publish { to, message } => Some((to.clone(), message.clone())),
                _ => None,
            })
            .collect()
    }

    fn released(out: &[Output]) -> Vec<(String, i64, LeaveReason)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Release {
                    uid, seq, reason, ..
                } => Some((uid.to_string(), *seq, *reason)),
                _ => None,
            })
            .collect()
    }

    fn offer_payload() -> SignalPayload {
        SignalPayload::Description(SessionDescription {
            kind: SdpType::Offer,
            sdp: "v=0\r\n".into(),
        })
    }

    fn joined_msg(u: &str) -> ServerMessage {
        ServerMessage::PeerJoined { uid: u.into() }
    }

    fn left_msg(u: &str, reason: LeaveReason) -> ServerMessage {
        ServerMessage::PeerLeft {
            uid: u.into(),
            reason,
        }
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
    fn signals_cross_instances_and_come_back_when_undeliverable() {
        let mut h = bus_hub();
        joined_on(&mut h, row("c1", "bob", B, 1));
        let (a, _) = bus_join(&mut h, "c1", "alice", 2, vec![row("c1", "bob", B, 1)]);
        // To a member of another instance: published to that instance.
        let out = text(&mut h, T0, a, &offer_to("bob"));
        assert!(sent_to(&out, a).is_empty());
        assert_eq!(
            published(&out),
            vec![(
                inst(B),
                BusMessage::Signal {
                    channel: ch("c1"),
                    from: uid("alice"),
                    to: uid("bob"),
                    payload: offer_payload(),
                    reply_to: inst(A),
                }
            )]
        );
        // From another instance: delivered with `from`.
        let back = BusMessage::Signal {
            channel: ch("c1"),
            from: uid("bob"),
            to: uid("alice"),
            payload: SignalPayload::Candidate(None),
            reply_to: inst(B),
        };
        let out = bus(&mut h, back);
        assert_eq!(
            sent_to(&out, a),
            vec![ServerMessage::Signal {
                from: "bob".into(),
                payload: SignalPayload::Candidate(None)
            }]
        );
        // For someone not here: answered to the sender's instance.
        let lost = BusMessage::Signal {
            channel: ch("c1"),
            from: uid("bob"),
            to: uid("zed"),
            payload: offer_payload(),
            reply_to: inst(B),
        };
        assert_eq!(
            published(&bus(&mut h, lost)),
            vec![(
                inst(B),
                BusMessage::Undeliverable {
                    channel: ch("c1"),
                    from: uid("bob"),
                    to: uid("zed"),
                }
            )]
        );
        // The answer to alice's signal when bob had gone: peer_not_found, socket stays.
        let out = bus(
            &mut h,
            BusMessage::Undeliverable {
                channel: ch("c1"),
                from: uid("alice"),
                to: uid("bob"),
            },
        );
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::PEER_NOT_FOUND));
        assert_eq!(closed(&out, a), None);
        // A publication that could not be sent: relay_failed, socket stays.
        let (_, m) = published(&text(&mut h, T0, a, &offer_to("bob"))).remove(0);
        h.handle_input(T0, Input::Unpublished(&m));
        let out = drain(&mut h);
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::RELAY_FAILED));
        assert_eq!(closed(&out, a), None);
        // Present nowhere: peer_not_found at once, nothing published.
        let out = text(&mut h, T0, a, &offer_to("nobody"));
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::PEER_NOT_FOUND));
        assert!(published(&out).is_empty());
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
        assert!(h.rooms.is_empty());
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
        assert!(h.rooms.is_empty());
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
