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
//! every limit are unit tested beside the part they exercise, with made-up instants.
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
//!
//! **Where each part is.** This file holds the hub's inputs and outputs and the life of a
//! socket (join, renew, leave, timers). The rest is one concept per file:
//!
//! | file | what |
//! |---|---|
//! | `room.rs` | a channel's members on this instance: entering, replacing, leaving, kicks |
//! | `membership.rs` | who decides a join: [`Hub::new`]'s `Membership::Local` (a counter, every member here) or [`Hub::with_bus`]'s `Membership::Shared` (claims, sequence numbers, members of other instances, signals held for a join being recorded) |
//! | `relay.rs` | `signal` between members, here or through the bus; the signal budget and floods |
//! | `limits.rs` | token buckets: frames and signals per socket, joins per uid and token |
//!
//! Only `Membership::Shared` holds anything about other instances, so the single-instance
//! path has no remote state to read or to get wrong.

mod limits;
mod membership;
mod relay;
mod room;
#[cfg(test)]
mod testkit;

use std::collections::{HashMap, VecDeque};

use protocol::signaling::{ClientMessage, LeaveReason, ServerMessage, codes};

use self::limits::{JoinLimits, SocketBudget};
use self::membership::Membership;
use super::ice::IceConfig;
use crate::domain::{ChannelName, Uid};
use crate::rtc_wire::{BusMessage, Claim, InstanceId, PresenceRow};
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
    /// The robot's uid (`DAPI_ROBOT_UID`), the one uid the hub treats apart:
    /// - it is exempt from `joins_per_uid_per_min`: every robot session of every agent joins
    ///   as it, so a busy deployment makes more than 30 robot joins a minute; each session
    ///   has a token of its own, still limited per token;
    /// - its joins skip the membership check: it is not a call member, and its token comes
    ///   from a robot session the API dispatched.
    pub robot_uid: Option<Uid>,
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
            robot_uid: None,
            joins_per_token_per_min: 10,
            signals_per_sec: 40,
            signal_bytes_per_sec: 256 * 1024,
            token_warning_ms: 30_000,
            check_membership: false,
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

/// Where a socket is in its life. Each join goes `Opened` → (`Checking`) → (`Claiming`) →
/// `Member`; a socket leaves the hub from any phase.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Opened: the first message must be `join`, before the join deadline.
    Opened,
    /// A verified join waiting for the store's membership check ([`Output::CheckMember`]).
    Checking(ChannelName, Uid),
    /// A verified join being recorded in the presence table ([`Output::Claim`]; shared
    /// membership only).
    Claiming(ChannelName, Uid),
    /// A member of the channel, as the uid.
    Member(ChannelName, Uid),
}

impl Phase {
    /// Ends a `Checking` (or, with `claiming`, a `Claiming`) phase, back to `Opened`, and
    /// returns its join; `None`, and the phase unchanged, in any other phase.
    fn take_pending(&mut self, claiming: bool) -> Option<(ChannelName, Uid)> {
        match (std::mem::replace(self, Phase::Opened), claiming) {
            (Phase::Checking(channel, uid), false) | (Phase::Claiming(channel, uid), true) => {
                Some((channel, uid))
            }
            (other, _) => {
                *self = other;
                None
            }
        }
    }

    /// The channel and uid of a member.
    fn member(&self) -> Option<(&ChannelName, &Uid)> {
        match self {
            Phase::Member(channel, uid) => Some((channel, uid)),
            _ => None,
        }
    }
}

/// A socket, as the hub keeps it.
#[derive(Debug)]
struct Conn {
    phase: Phase,
    last_in_ms: i64,
    last_ping_ms: Option<i64>,
    next_presence_ms: i64,
    /// When the socket opened (the join deadline runs from it).
    opened_ms: i64,
    /// Its message and signal budgets.
    budget: SocketBudget,
    /// When the token the socket joined (or renewed) with expires, in ms; `None`: never.
    token_expires_ms: Option<i64>,
    /// `token_expiring` was sent for the current token.
    expiry_warned: bool,
}

/// The hub. See the module docs for the driving loop.
#[derive(Debug)]
pub struct Hub {
    cfg: HubConfig,
    tokens: TokenIssuer,
    ice: IceConfig,
    /// The rooms, and who decides a join: this hub alone, or the presence table shared
    /// with other instances.
    membership: Membership,
    next_id: u64,
    conns: HashMap<ConnId, Conn>,
    out: VecDeque<Output>,
    /// Join buckets per uid and per token.
    joins: JoinLimits,
}

impl Hub {
    /// A hub verifying tokens with `tokens` and handing out `ice` servers, for the only
    /// instance of the service.
    pub fn new(cfg: HubConfig, tokens: TokenIssuer, ice: IceConfig) -> Self {
        Self::with_membership(cfg, tokens, ice, Membership::local())
    }

    /// A hub of instance `me`, sharing its channels with other instances over a bus.
    pub fn with_bus(cfg: HubConfig, tokens: TokenIssuer, ice: IceConfig, me: InstanceId) -> Self {
        Self::with_membership(cfg, tokens, ice, Membership::shared(me))
    }

    fn with_membership(
        cfg: HubConfig,
        tokens: TokenIssuer,
        ice: IceConfig,
        membership: Membership,
    ) -> Self {
        Self {
            cfg,
            tokens,
            ice,
            membership,
            next_id: 1,
            conns: HashMap::new(),
            out: VecDeque::new(),
            joins: JoinLimits::default(),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// This instance on the bus (`None`: the only instance).
    pub fn bus(&self) -> Option<&InstanceId> {
        self.membership.me()
    }

    /// Registers a new socket; its first message must be `join`.
    pub fn open(&mut self, now: i64) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        self.conns.insert(
            id,
            Conn {
                phase: Phase::Opened,
                last_in_ms: now,
                last_ping_ms: None,
                next_presence_ms: i64::MAX,
                opened_ms: now,
                budget: SocketBudget::full(&self.cfg, now),
                token_expires_ms: None,
                expiry_warned: false,
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
        let (mut channels, mut members) = (0, 0);
        for r in self.membership.rooms().filter(|r| !r.is_empty()) {
            channels += 1;
            members += r.len();
        }
        (channels, members)
    }

    /// Uids present in `channel` (on every instance, as far as this one knows), in join
    /// order.
    pub fn present(&self, channel: &ChannelName) -> Vec<Uid> {
        self.membership.present(channel)
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
                let join = if c.phase == Phase::Opened {
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
                self.membership.clear();
            }
            Input::Claimed { conn, claim } => self.on_claimed(now, conn, claim),
            Input::ClaimRefused { conn, full } => self.on_claim_refused(conn, full),
            Input::Bus(message) => self.on_bus(message),
            Input::Snapshot(rows) => self.on_snapshot(rows),
            Input::Unpublished(message) => self.on_unpublished(message),
            Input::Lapsed => self.on_lapsed(),
            Input::Flooded { conn, from } => self.on_flooded(conn, from),
            Input::MemberChecked { conn, verdict } => self.on_member_checked(now, conn, verdict),
        }
    }

    /// Removes `uid` from `channel`: it gets `kicked {reason}` and is closed; the others
    /// see `peer_left {reason: "kicked"}`. A member of another instance is kicked there
    /// (through the bus). Returns whether the uid was present, as far as this instance
    /// knows.
    pub fn kick(&mut self, channel: &ChannelName, uid: &Uid, reason: &str) -> bool {
        self.kick_local(channel, uid, reason) || self.kick_remote(channel, uid, reason)
    }

    // ------------------------------------------------------------------ internals

    fn send(&mut self, conn: ConnId, message: ServerMessage) {
        self.out.push_back(Output::Send { conn, message });
    }

    /// Sends `make(uid)` to each of `conns`.
    fn tell(&mut self, conns: &[ConnId], make: impl Fn(String) -> ServerMessage, uid: &Uid) {
        for c in conns {
            self.send(*c, make(uid.to_string()));
        }
    }

    /// Counts a frame against the socket's rate; false (and the socket dropped) when it
    /// is over, or the socket is unknown.
    fn admit(&mut self, now: i64, conn: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        c.last_in_ms = now;
        c.last_ping_ms = None;
        if c.budget.frame(&self.cfg, now) {
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
        match c.phase {
            Phase::Claiming(channel, uid) => self.abandon_join(conn, &channel, &uid),
            Phase::Member(channel, uid) => {
                let seq = self.remove_member(&channel, &uid, conn, reason);
                if let (Some(seq), true) = (seq, release) {
                    self.release(&channel, &uid, seq, reason);
                }
                self.out.push_back(Output::Presence {
                    channel,
                    uid,
                    event: PresenceEvent::Gone { reason, deliberate },
                });
            }
            Phase::Opened | Phase::Checking(..) => {}
        }
        if let Some(code) = close {
            self.out.push_back(Output::Close { conn, code });
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
        match (msg, c.phase.clone()) {
            (
                ClientMessage::Renew { token },
                Phase::Checking(channel, uid)
                | Phase::Claiming(channel, uid)
                | Phase::Member(channel, uid),
            ) => self.on_renew(now, conn, &channel, &uid, &token),
            // `joined` has not been sent yet.
            (msg, Phase::Checking(..) | Phase::Claiming(..)) => self.while_joining(conn, msg),
            (
                ClientMessage::Join {
                    app_id,
                    channel,
                    uid,
                    token,
                },
                Phase::Opened,
            ) => self.on_join(now, conn, &app_id, &channel, &uid, &token),
            (ClientMessage::Join { .. }, Phase::Member(..)) => self.already_joined(conn),
            (_, Phase::Opened) => self.fail(
                conn,
                codes::NOT_JOINED,
                "the first message must be join",
                close_code::POLICY,
            ),
            (ClientMessage::Signal { to, payload }, Phase::Member(channel, uid)) => {
                if self.charge_signal(now, conn, text.len()) {
                    self.on_signal(conn, &channel, &uid, &to, payload);
                }
            }
            (ClientMessage::Leave, Phase::Member(..)) => {
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

    /// A message before `joined` arrived (membership check or claim under way): a second
    /// join is refused, a leave abandons the join, a signal has nobody to go to yet.
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
        if let Some(what) = self.joins.charge(&self.cfg, now, &uid, token) {
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
            if self.cfg.check_membership && self.cfg.robot_uid.as_ref() != Some(&uid) {
                // The store decides whether the uid is still an active member of a call
                // that has not ended; the join goes on at `Input::MemberChecked`.
                c.phase = Phase::Checking(channel.clone(), uid.clone());
                self.out
                    .push_back(Output::CheckMember { conn, channel, uid });
                return;
            }
        }
        self.admit_join(now, conn, channel, uid);
    }

    fn on_timeout(&mut self, now: i64) {
        self.joins.prune(&self.cfg, now);
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort();
        for conn in ids {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let waiting = c.phase == Phase::Opened;
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
                if let Some((channel, uid)) = c.phase.member() {
                    self.out.push_back(Output::Presence {
                        channel: channel.clone(),
                        uid: uid.clone(),
                        event: PresenceEvent::Here,
                    });
                }
            }
        }
    }

    /// The store answered the membership check of `conn`'s join.
    fn on_member_checked(&mut self, now: i64, conn: ConnId, verdict: Option<bool>) {
        let Some((channel, uid)) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.phase.take_pending(false))
        else {
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

    use crate::rtc::hub::testkit::*;
    use crate::token::{PRIVILEGE_JOIN, mint_006};

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
    fn with_membership_checks_the_robot_joins_without_asking_the_store() {
        // The robot is not a call member: its token comes from a robot session.
        let mut h = hub_with(HubConfig {
            check_membership: true,
            robot_uid: Some(uid("robot")),
            ..HubConfig::default()
        });
        let r = h.open(T0);
        let out = text(
            &mut h,
            T0,
            r,
            &join_text("c1", "robot", &token("c1", "robot")),
        );
        assert!(
            !out.iter().any(|o| matches!(o, Output::CheckMember { .. })),
            "{out:?}"
        );
        assert!(matches!(
            sent_to(&out, r).first(),
            Some(ServerMessage::Joined { .. })
        ));
        // Anyone else is still checked.
        let a = h.open(T0);
        let out = text(
            &mut h,
            T0,
            a,
            &join_text("c1", "alice", &token("c1", "alice")),
        );
        assert!(
            out.iter().any(|o| matches!(o, Output::CheckMember { .. })),
            "{out:?}"
        );
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
}
