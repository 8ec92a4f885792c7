//! The RTC channel: `GET /rtc` WebSocket signaling, the demo page, and the hub that
//! joins sockets into channels (DESIGN.md decision 2 and "Wire protocols").
//!
//! ```text
//!  WebSocket ──socket.rs──> Rtc (Mutex<Hub + outboxes>) ──> outbox per socket ──> WebSocket
//!                              │        ▲
//!                              │        └── ticker (1 s): pings, idle timeouts, presence
//!                              └── presence map ──> worker ──> calls::apply(Seen/Left)
//!  server code ──> Rtc::kick / Rtc::present
//!  PostgreSQL: hub <──> bus worker / listener <──> other instances (docs/rtc-bus.md)
//! ```
//!
//! - [`hub`]: the sans-IO core (rooms, presence, relay, kicks, limits).
//! - [`ice`]: STUN/TURN servers and TURN REST credentials for `joined`.
//! - [`crate::rtc_wire`]: what instances tell each other over the bus (beside `domain`, so
//!   the store can write it without importing `rtc`).
//! - [`bus`]: the bus worker and listener (PostgreSQL only; SQLite has one instance).
//! - `socket`: the axum handler; it only moves frames between a socket and the hub.
//!
//! **Why a `Mutex` around the hub rather than a task that owns it.** Every hub call is
//! short, synchronous and never awaits; delivering its outputs is a non-blocking
//! `try_send` into a bounded per-socket queue. A mutex therefore never waits on IO, and
//! it lets [`Rtc::kick`] and [`Rtc::present`] answer synchronously without a
//! request/response channel. A socket whose queue is full (a client that does not read)
//! is dropped, so one slow client never holds the lock or delays the others.
//!
//! **Presence feeds the call.** A member's socket counts as a heartbeat: on join and every
//! 15 s the worker applies `Input::Seen` with a new heartbeat deadline (kind
//! `rtc_presence`). A deliberate departure (`leave`, or a kick by server code) sets the
//! deadline to now (kind `rtc_left`), so the sweeper drops that person at once and ends the
//! call when nobody is left; a dropped socket (network loss, idle timeout, protocol error)
//! is recorded (kind `rtc_disconnected`) and keeps its deadline, leaving time to reconnect.
//! The robot's uid (`DAPI_ROBOT_UID`) is not a person and does not feed the call.

pub mod bus;
pub mod hub;
pub mod ice;
pub(crate) mod socket;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use protocol::signaling::ServerMessage;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use self::bus::{BusInbox, BusJob, BusOutbox, BusTimers};
use self::hub::{ConnId, Hub, HubConfig, Input, Output, PresenceEvent};
use crate::AppState;
use crate::call_state::Input as CallInput;
use crate::clock::Clock;
use crate::config::{Config, millis_i64};
use crate::domain::{ChannelName, Uid};
use crate::rtc_wire::{BusMessage, InstanceId, PresenceRow};
use crate::store::{InputMeta, Store, StoreError};
use crate::token::TokenIssuer;

/// The demo page: call another uid from a browser tab.
const DEMO_HTML: &str = include_str!("../../static/demo.html");
/// The `/rtc` client module the demo page uses (and app developers copy).
const RTC_JS: &str = include_str!("../../static/rtc.js");

/// Messages queued per socket before a non-reading client is dropped.
const OUTBOX: usize = 256;
/// A `signal` is not queued for a socket with fewer free places than this: its sender
/// is cut off instead (`Input::Flooded`), so a flood never drops the receiver.
const OUTBOX_SIGNAL_RESERVE: usize = OUTBOX / 2;
/// `token_expiring` is sent this long before a socket's token expires.
const TOKEN_WARNING_MS: i64 = 30_000;
/// How often a present member is reported to the call state.
const PRESENCE_EVERY_MS: i64 = 15_000;
/// How long the server waits for its bus listener before it serves anyway (PostgreSQL).
const BUS_READY_WAIT: Duration = Duration::from_secs(5);
/// How long a stopping server waits for the bus worker to release its members.
const BUS_GOODBYE_WAIT: Duration = Duration::from_secs(5);

/// `GET /rtc`, `GET /demo`, `GET /demo/rtc.js`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rtc", get(socket::rtc_ws))
        .route("/demo", get(demo_page))
        .route("/demo/rtc.js", get(demo_js))
}

/// A page that joins a channel from a browser (for trying the service out).
#[utoipa::path(get, path = "/demo", tag = "rtc",
    responses((status = 200, description = "HTML", content_type = "text/html", body = String)))]
pub(crate) async fn demo_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DEMO_HTML,
    )
}

/// The `/rtc` client module the demo page uses (and app developers copy).
#[utoipa::path(get, path = "/demo/rtc.js", tag = "rtc",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String)))]
pub(crate) async fn demo_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        RTC_JS,
    )
}

/// What the socket task is told to do with its WebSocket.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Send a text frame.
    Text(String),
    /// Send a ping.
    Ping,
    /// Send a close frame with this code, then stop.
    Close(u16),
}

/// Presence changes on their way to the store, coalesced per (channel, uid): only the
/// latest change of a member waits, so a join/leave flood costs one write per pass of
/// the worker, and nothing is ever dropped (the map holds at most one entry per member
/// that changed since the last pass).
/// A presence change on its way to the store.
#[derive(Debug)]
struct PresenceReport {
    channel: ChannelName,
    uid: Uid,
    event: PresenceEvent,
}

#[derive(Default)]
struct PresenceMap {
    pending: Mutex<HashMap<(ChannelName, Uid), PresenceEvent>>,
    wake: Notify,
}

impl PresenceMap {
    fn put(&self, channel: ChannelName, uid: Uid, event: PresenceEvent) {
        let replaced = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((channel, uid), event)
            .is_some();
        if replaced {
            metrics::counter!("dapi_rtc_presence_coalesced_total").increment(1);
        }
        self.wake.notify_one();
    }

    fn take(&self) -> HashMap<(ChannelName, Uid), PresenceEvent> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A join waiting for the store's membership check (`DAPI_AUTH=jwt`).
#[derive(Debug)]
struct MemberCheck {
    conn: ConnId,
    channel: ChannelName,
    uid: Uid,
}

/// Membership checks waiting for the checker before new joins are answered `unavailable`.
const CHECK_QUEUE: usize = 1024;
/// Membership checks running at once.
const CHECKS_AT_ONCE: usize = 16;

struct Driven {
    hub: Hub,
    outboxes: HashMap<ConnId, mpsc::Sender<Outbound>>,
    presence: Arc<PresenceMap>,
    checks: mpsc::Sender<MemberCheck>,
    /// The bus worker's queue (PostgreSQL only).
    bus: Option<BusOutbox>,
}

/// Open sockets per client address and in total, for `DAPI_RTC_SOCKETS_PER_IP` and
/// `DAPI_RTC_SOCKETS_TOTAL`, and new sockets per address and minute
/// (`DAPI_RTC_UPGRADES_PER_IP_PER_SEC`).
struct SocketCaps {
    per_ip: usize,
    total: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// Upgrades per address: refused before the WebSocket handshake, so a flood of
    /// connect-join-close costs a 429 instead of a handshake and a hub round.
    upgrades: crate::rate_limit::Limiter,
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketRefusal {
    /// `DAPI_RTC_SOCKETS_PER_IP` sockets are open from this address.
    PerIp(usize),
    /// `DAPI_RTC_SOCKETS_TOTAL` sockets are open on this instance.
    Total(usize),
    /// This address opened sockets faster than `DAPI_RTC_UPGRADES_PER_IP_PER_SEC`;
    /// the seconds until the next one may be opened.
    UpgradeRate(u64),
}

/// A place among the open sockets; given back when dropped.
pub(crate) struct SocketPermit {
    rtc: Rtc,
    /// The address it counts against (none for a robot agent's socket).
    ip: Option<IpAddr>,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        let mut open = self
            .rtc
            .shared
            .caps
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(n) = open.1.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.1.remove(&ip);
            }
        }
    }
}

/// This instance on the bus (PostgreSQL only).
struct BusSide {
    me: InstanceId,
    timers: BusTimers,
    inbox: Mutex<Option<BusInbox>>,
}

struct Shared {
    driven: Mutex<Driven>,
    clock: Clock,
    presence: Arc<PresenceMap>,
    checks_rx: Mutex<Option<mpsc::Receiver<MemberCheck>>>,
    caps: SocketCaps,
    bus: Option<BusSide>,
    max_frame: usize,
    /// Socket tasks still running (shutdown waits for them to flush their close).
    sockets: AtomicUsize,
    /// `DAPI_HEARTBEAT_TIMEOUT` in ms: presence pushes the deadline this far.
    heartbeat_ms: i64,
}

/// The channel service: the hub behind a mutex, plus the socket outboxes. Cheap to clone.
#[derive(Clone)]
pub struct Rtc {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Rtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtc").finish_non_exhaustive()
    }
}

impl Rtc {
    /// Builds the hub from the configuration (fails on a bad ICE or limit setting).
    /// `bus`: this instance's id when channels are shared with other instances over the
    /// database (PostgreSQL); `None` for the only instance (SQLite).
    pub fn new(
        config: &Config,
        tokens: TokenIssuer,
        clock: Clock,
        bus: Option<InstanceId>,
    ) -> anyhow::Result<Self> {
        // Checked by `Config::validate` (the floors of the limits, TURN needs a secret).
        let rtc = &config.rtc;
        let ice = rtc.ice(config.tokens.ttl)?;
        let idle_ms = millis_i64(rtc.idle_timeout).min(i64::MAX / 2);
        let heartbeat_ms = millis_i64(config.calls.heartbeat_timeout);
        let cfg = HubConfig {
            max_peers: rtc.max_peers,
            max_frame: rtc.max_frame,
            msgs_per_sec: rtc.msgs_per_sec,
            burst: rtc.msgs_per_sec.saturating_mul(4),
            idle_timeout_ms: idle_ms,
            ping_after_ms: (idle_ms / 3).max(1000),
            // Several reports per heartbeat timeout, so one lost report does not expire anyone.
            presence_every_ms: PRESENCE_EVERY_MS.min(heartbeat_ms / 3).max(1000),
            join_timeout_ms: millis_i64(rtc.join_timeout).min(i64::MAX / 2),
            joins_per_uid_per_min: rtc.joins_per_uid_per_min,
            robot_uid: Uid::parse(&config.dispatch.robot_uid).ok(),
            joins_per_token_per_min: rtc.joins_per_token_per_min,
            signals_per_sec: rtc.signals_per_sec,
            signal_bytes_per_sec: rtc.signal_bytes_per_sec,
            token_warning_ms: TOKEN_WARNING_MS,
            check_membership: config.auth.is_jwt(),
        };
        let (checks, checks_rx) = mpsc::channel(CHECK_QUEUE);
        let presence = Arc::new(PresenceMap::default());
        let (hub, outbox, side) = match bus {
            Some(me) => {
                let (outbox, inbox) = bus::queue();
                let side = BusSide {
                    me: me.clone(),
                    timers: BusTimers::every(rtc.bus_heartbeat),
                    inbox: Mutex::new(Some(inbox)),
                };
                (
                    Hub::with_bus(cfg, tokens, ice, me),
                    Some(outbox),
                    Some(side),
                )
            }
            None => (Hub::new(cfg, tokens, ice), None, None),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                driven: Mutex::new(Driven {
                    hub,
                    outboxes: HashMap::new(),
                    presence: presence.clone(),
                    checks,
                    bus: outbox,
                }),
                clock,
                presence,
                checks_rx: Mutex::new(Some(checks_rx)),
                caps: SocketCaps {
                    per_ip: rtc.sockets_per_ip,
                    total: rtc.sockets_total,
                    open: Mutex::new((0, HashMap::new())),
                    upgrades: crate::rate_limit::Limiter::with_burst(
                        rtc.upgrades_per_ip_per_sec.saturating_mul(60),
                        rtc.upgrades_per_ip_per_sec.saturating_mul(2),
                    ),
                },
                bus: side,
                max_frame: rtc.max_frame,
                sockets: AtomicUsize::new(0),
                heartbeat_ms,
            }),
        })
    }

    /// Removes `uid` from `channel` (it gets `kicked {reason}`, the others `peer_left`
    /// with reason `kicked`), on whichever instance holds its socket (over the bus when
    /// that is another one). Returns whether the uid was present, as far as this
    /// instance knows.
    pub fn kick(&self, channel: &ChannelName, uid: &Uid, reason: &str) -> bool {
        self.with_hub(|hub, _| hub.kick(channel, uid, reason))
    }

    /// Uids present in `channel` on every instance (as far as this one knows), in join
    /// order.
    pub fn present(&self, channel: &ChannelName) -> Vec<Uid> {
        self.lock().hub.present(channel)
    }

    /// This instance's id on the bus (PostgreSQL), and its timers.
    pub fn bus(&self) -> Option<(&InstanceId, BusTimers)> {
        self.shared.bus.as_ref().map(|b| (&b.me, b.timers))
    }

    /// The time source.
    pub(crate) fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// (channels, peers, sockets) on this instance, for metrics.
    pub fn occupancy(&self) -> (usize, usize, usize) {
        let (channels, peers) = self.lock().hub.occupancy();
        (channels, peers, self.shared.sockets.load(Ordering::SeqCst))
    }

    /// Largest frame a socket may send.
    pub(crate) fn max_frame(&self) -> usize {
        self.shared.max_frame
    }

    /// Takes a place for a new socket from `ip`, or says which cap is reached. A robot
    /// agent's socket (`agent`: it presented the agent key) counts against the total only,
    /// and not against its address's upgrade rate: every session of an agent comes from
    /// the agent host's one address. Only an admitted upgrade is charged to the rate.
    pub(crate) fn admit_socket(
        &self,
        ip: IpAddr,
        agent: bool,
    ) -> Result<SocketPermit, SocketRefusal> {
        let caps = &self.shared.caps;
        let mut open = caps.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= caps.total {
            return Err(SocketRefusal::Total(caps.total));
        }
        if !agent {
            if open.1.get(&ip).is_some_and(|n| *n >= caps.per_ip) {
                return Err(SocketRefusal::PerIp(caps.per_ip));
            }
            caps.upgrades
                .take(&ip.to_string(), self.shared.clock.now_ms())
                .map_err(SocketRefusal::UpgradeRate)?;
            *open.1.entry(ip).or_insert(0) += 1;
        }
        open.0 += 1;
        Ok(SocketPermit {
            rtc: self.clone(),
            ip: (!agent).then_some(ip),
        })
    }

    /// Registers a socket and its outbox.
    pub(crate) fn open(&self, outbox: mpsc::Sender<Outbound>) -> ConnId {
        let now = self.shared.clock.now_ms();
        let mut d = self.lock();
        let id = d.hub.open(now);
        d.outboxes.insert(id, outbox);
        self.shared.sockets.fetch_add(1, Ordering::SeqCst);
        id
    }

    /// Feeds one input and delivers what the hub produces.
    pub(crate) fn input(&self, input: Input<'_>) {
        self.with_hub(|hub, now| hub.handle_input(now, input));
    }

    /// The socket task is over: forget the socket (the others are told if it was a member).
    pub(crate) fn closed(&self, conn: ConnId) {
        self.with_hub(|hub, now| hub.handle_input(now, Input::Closed { conn }));
        self.lock().outboxes.remove(&conn);
    }

    /// The socket task of `conn` has finished (after [`Rtc::closed`] and its last write).
    pub(crate) fn finished(&self) {
        self.shared.sockets.fetch_sub(1, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, Driven> {
        // A panic while holding the lock is a bug; the hub's state is still usable.
        self.shared
            .driven
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the hub, then delivers every output in order.
    fn with_hub<R>(&self, f: impl FnOnce(&mut Hub, i64) -> R) -> R {
        let now = self.shared.clock.now_ms();
        let mut d = self.lock();
        let r = f(&mut d.hub, now);
        let d = &mut *d;
        loop {
            let mut undelivered = Vec::new();
            while let Some(out) = d.hub.poll_output() {
                deliver(d, out, &mut undelivered);
            }
            if undelivered.is_empty() {
                break;
            }
            for u in undelivered {
                match u {
                    Undelivered::Stalled(conn) => {
                        // Its outbox is full or gone: drop the socket like a closed one.
                        tracing::info!(conn = %conn, "rtc socket not reading: dropped");
                        d.hub.handle_input(now, Input::Closed { conn });
                    }
                    Undelivered::Claim(conn) => {
                        d.hub
                            .handle_input(now, Input::ClaimRefused { conn, full: false });
                    }
                    Undelivered::Publish(message) => {
                        tracing::warn!(
                            kind = message.kind(),
                            "rtc bus queue full: message not sent"
                        );
                        d.hub.handle_input(now, Input::Unpublished(&message));
                    }
                    Undelivered::Check(conn) => {
                        tracing::warn!("rtc membership checks queue full: join refused");
                        d.hub.handle_input(
                            now,
                            Input::MemberChecked {
                                conn,
                                verdict: None,
                            },
                        );
                    }
                    Undelivered::Flooded { conn, from } => {
                        tracing::info!(conn = %conn, "rtc signals to a socket outpace its reading: sender cut off");
                        d.hub
                            .handle_input(now, Input::Flooded { conn, from: &from });
                    }
                }
            }
        }
        r
    }
}

/// An output that could not be handed over, to be fed back to the hub.
enum Undelivered {
    /// A socket's outbox is full or gone.
    Stalled(ConnId),
    /// The bus queue refused a claim.
    Claim(ConnId),
    /// The bus queue refused a publication.
    Publish(BusMessage),
    /// The membership checker's queue is full.
    Check(ConnId),
    /// A signal from `from` was not queued for `conn`, whose queue is filling up.
    Flooded {
        /// The receiver.
        conn: ConnId,
        /// The sender's uid.
        from: String,
    },
}

/// Delivers one hub output; what could not be handed over is collected in `undelivered`.
fn deliver(d: &mut Driven, out: Output, undelivered: &mut Vec<Undelivered>) {
    match out {
        Output::Send { conn, message } => {
            match &message {
                ServerMessage::Joined { channel, uid, .. } => {
                    tracing::info!(conn = %conn, channel = %channel, uid = %uid, "rtc joined");
                }
                ServerMessage::Error { code, .. } => {
                    tracing::info!(conn = %conn, code = %code, "rtc error");
                }
                ServerMessage::Kicked { reason } => {
                    tracing::info!(conn = %conn, reason = %reason, "rtc kicked");
                }
                ServerMessage::Signal { from, .. } => {
                    let filling = d
                        .outboxes
                        .get(&conn)
                        .is_some_and(|tx| tx.capacity() < OUTBOX_SIGNAL_RESERVE);
                    if filling {
                        // Someone else's flood must not drop this socket: its sender goes.
                        metrics::counter!("dapi_rtc_signals_refused_total").increment(1);
                        undelivered.push(Undelivered::Flooded {
                            conn,
                            from: from.clone(),
                        });
                        return;
                    }
                }
                _ => {}
            }
            push(d, conn, Outbound::Text(message.to_json()), undelivered);
        }
        Output::Ping { conn } => push(d, conn, Outbound::Ping, undelivered),
        Output::Close { conn, code } => {
            if let Some(tx) = d.outboxes.remove(&conn) {
                // If the outbox is full, dropping the sender ends the socket task anyway.
                let _ = tx.try_send(Outbound::Close(code));
            }
        }
        Output::Presence {
            channel,
            uid,
            event,
        } => {
            if let PresenceEvent::Gone { reason, .. } = event {
                tracing::info!(channel = %channel, uid = %uid, reason = reason.as_str(), "rtc left");
            }
            d.presence.put(channel, uid, event);
        }
        Output::CheckMember { conn, channel, uid } => {
            if d.checks
                .try_send(MemberCheck { conn, channel, uid })
                .is_err()
            {
                undelivered.push(Undelivered::Check(conn));
            }
        }
        Output::Claim { conn, channel, uid } => {
            let job = BusJob::Claim { conn, channel, uid };
            if to_bus(d, job).is_some() {
                undelivered.push(Undelivered::Claim(conn));
            }
        }
        Output::Release {
            channel,
            uid,
            seq,
            reason,
        } => {
            let Some(me) = d.hub.bus() else {
                return;
            };
            let row = PresenceRow {
                channel,
                uid,
                instance: me.clone(),
                seq,
            };
            if to_bus(d, BusJob::Release { row, reason }).is_some() {
                // Only when the worker is gone (the server is stopping): its goodbye
                // releases every member of this instance.
                tracing::debug!("rtc bus worker gone: release left to the goodbye");
            }
        }
        Output::Publish { to, message } => {
            if let Some(BusJob::Publish { message, .. }) =
                to_bus(d, BusJob::Publish { to, message })
            {
                undelivered.push(Undelivered::Publish(message));
            }
        }
    }
}

/// Queues a job for the bus worker; gives it back when it was not taken.
fn to_bus(d: &Driven, job: BusJob) -> Option<BusJob> {
    match &d.bus {
        Some(bus) => bus.push(job),
        None => Some(job),
    }
}

fn push(d: &mut Driven, conn: ConnId, msg: Outbound, undelivered: &mut Vec<Undelivered>) {
    let Some(tx) = d.outboxes.get(&conn) else {
        return;
    };
    if tx.try_send(msg).is_err() {
        d.outboxes.remove(&conn);
        undelivered.push(Undelivered::Stalled(conn));
    }
}

/// The background work of the channel: the 1 s ticker, the presence worker and, on
/// PostgreSQL, the bus worker and listener. Dropping it stops them all (as a crash would:
/// no goodbye on the bus).
pub struct RtcTasks {
    rtc: Rtc,
    handles: Vec<JoinHandle<()>>,
    /// The bus worker and the signal that makes it say goodbye.
    bus_worker: Option<(JoinHandle<()>, oneshot::Sender<()>)>,
}

impl RtcTasks {
    /// Starts the ticker and the presence worker for the application's hub and, on
    /// PostgreSQL, the bus; waits (up to 5 s) until the bus listener has subscribed, so
    /// that nothing sent to this instance is missed once it serves.
    pub async fn start(state: &AppState) -> Self {
        let rtc = state.rtc().clone();
        let mut handles = Vec::new();
        let ticker = rtc.clone();
        handles.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                ticker.input(Input::Timeout);
            }
        }));
        let checks = rtc
            .shared
            .checks_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rx) = checks {
            handles.push(tokio::spawn(check_members(state.clone(), rtc.clone(), rx)));
        }
        handles.push(tokio::spawn(feed_presence(
            state.clone(),
            state.clock().clone(),
            rtc.shared.heartbeat_ms,
            state.config().dispatch.robot_uid.clone(),
            rtc.shared.presence.clone(),
        )));
        let mut bus_worker = None;
        let inbox = rtc.shared.bus.as_ref().and_then(|b| {
            b.inbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .map(|inbox| (b.me.clone(), b.timers, inbox))
        });
        if let (Store::Postgres(pg), Some((me, timers, inbox))) = (state.store(), inbox) {
            let (stop_tx, stop_rx) = oneshot::channel();
            let worker = tokio::spawn(bus::run_worker(
                pg.clone(),
                rtc.clone(),
                me.clone(),
                inbox,
                state.config().rtc.max_peers,
                timers,
                stop_rx,
            ));
            bus_worker = Some((worker, stop_tx));
            let (ready_tx, mut ready_rx) = watch::channel(false);
            handles.push(tokio::spawn(bus::run_listener(
                pg.clone(),
                rtc.clone(),
                me,
                ready_tx,
            )));
            let subscribed = ready_rx.wait_for(|r| *r);
            if tokio::time::timeout(BUS_READY_WAIT, subscribed)
                .await
                .is_err()
            {
                tracing::warn!("rtc bus listener not subscribed yet; serving anyway");
            }
        }
        Self {
            rtc,
            handles,
            bus_worker,
        }
    }

    /// Closes every socket (`error shutting_down`, close 1001), waits up to 2 s for the
    /// socket tasks to flush those frames, lets the bus worker release this instance's
    /// members (up to 5 s), and stops the tasks.
    pub async fn shutdown(mut self) {
        self.rtc.input(Input::Shutdown);
        // The socket tasks are not ours to join (axum spawned them); poll their count.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.rtc.shared.sockets.load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some((mut worker, stop)) = self.bus_worker.take() {
            let _ = stop.send(());
            if tokio::time::timeout(BUS_GOODBYE_WAIT, &mut worker)
                .await
                .is_err()
            {
                tracing::warn!(
                    "rtc bus worker did not finish; other instances will time this one out"
                );
                worker.abort();
            }
        }
    }
}

impl Drop for RtcTasks {
    fn drop(&mut self) {
        for h in &self.handles {
            h.abort();
        }
        if let Some((worker, _)) = &self.bus_worker {
            worker.abort();
        }
    }
}

/// Answers the hub's membership checks (`DAPI_AUTH=jwt`): a join is admitted when the
/// store's `is_member` says the uid is a member of the channel's call (the store decides
/// what membership means: an active member of a call that has not ended). The robot's uid
/// is never asked about: the hub admits it without a check ([`HubConfig::robot_uid`]).
async fn check_members(state: AppState, rtc: Rtc, mut rx: mpsc::Receiver<MemberCheck>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CHECKS_AT_ONCE));
    while let Some(check) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (state, rtc) = (state.clone(), rtc.clone());
        tokio::spawn(async move {
            let verdict = match state.is_active_member(&check.channel, &check.uid).await {
                Ok(Some(member)) => Some(member),
                Ok(None) => Some(false), // no call in this channel
                Err(e) => {
                    tracing::warn!(error = %e, "rtc membership check failed");
                    None
                }
            };
            rtc.input(Input::MemberChecked {
                conn: check.conn,
                verdict,
            });
            drop(slot);
        });
    }
}

/// Turns presence changes into call-state inputs: takes every pending change (the latest
/// per member), applies them one at a time through the calls service (so a leave that ends
/// a call tells its robot at once, on every instance), and waits for more.
async fn feed_presence(
    state: AppState,
    clock: Clock,
    heartbeat_ms: i64,
    robot_uid: String,
    map: Arc<PresenceMap>,
) {
    loop {
        let batch = map.take();
        if batch.is_empty() {
            map.wake.notified().await;
            continue;
        }
        for ((channel, uid), event) in batch {
            let p = PresenceReport {
                channel,
                uid,
                event,
            };
            write_presence(&state, &clock, heartbeat_ms, &robot_uid, p).await;
        }
    }
}

/// One presence change as a call-state input (`rtc_presence`, `rtc_left`,
/// `rtc_disconnected`).
async fn write_presence(
    state: &AppState,
    clock: &Clock,
    heartbeat_ms: i64,
    robot_uid: &str,
    p: PresenceReport,
) {
    if p.uid.as_str() == robot_uid {
        return;
    }
    {
        metrics::counter!("dapi_rtc_presence_writes_total").increment(1);
        let now = clock.now_ms();
        let left = matches!(
            p.event,
            PresenceEvent::Gone {
                deliberate: true,
                ..
            }
        );
        let (kind, deadline, detail, always_record) = match p.event {
            PresenceEvent::Here => ("rtc_presence", Some(now + heartbeat_ms), None, false),
            // A deliberate leave is hanging up (Input::Left, code 2), not a lost heartbeat.
            PresenceEvent::Gone {
                reason,
                deliberate: true,
            } => ("rtc_left", None, Some(reason.as_str()), true),
            PresenceEvent::Gone {
                reason,
                deliberate: false,
            } => ("rtc_disconnected", None, Some(reason.as_str()), true),
        };
        let meta = InputMeta {
            kind,
            source: "app",
            detail: detail.map(str::to_owned),
            now_ms: now,
            heartbeat_deadline_ms: deadline,
            always_record,
        };
        let input = if left {
            CallInput::Left { uid: p.uid }
        } else {
            CallInput::Seen { uid: p.uid }
        };
        match crate::calls::apply(state, &p.channel, &input, &meta).await {
            // A channel without a call (a token minted by other means) has nothing to feed.
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(channel = %p.channel, error = %e, "rtc presence not recorded");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use protocol::signaling::LeaveReason;

    use super::*;

    #[test]
    fn presence_changes_coalesce_per_member_and_none_is_dropped() {
        let map = PresenceMap::default();
        let (c, flood, other) = (
            ChannelName::parse("c1").unwrap(),
            Uid::parse("mallory").unwrap(),
            Uid::parse("alice").unwrap(),
        );
        map.put(c.clone(), other.clone(), PresenceEvent::Here);
        // A join/leave flood: 10,000 changes of one member (more than the old queue held).
        for _ in 0..5_000 {
            map.put(c.clone(), flood.clone(), PresenceEvent::Here);
            let gone = PresenceEvent::Gone {
                reason: LeaveReason::Left,
                deliberate: true,
            };
            map.put(c.clone(), flood.clone(), gone);
        }
        let batch = map.take();
        assert_eq!(batch.len(), 2, "one write per member");
        assert_eq!(batch[&(c.clone(), other)], PresenceEvent::Here, "kept");
        assert!(matches!(
            batch[&(c, flood)],
            PresenceEvent::Gone {
                deliberate: true,
                ..
            }
        ));
        assert!(map.take().is_empty());
    }
}
