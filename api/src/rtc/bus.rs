//! The `/rtc` bus between API instances on one PostgreSQL database: the IO around the
//! hub's bus inputs and outputs (docs/rtc-bus.md).
//!
//! ```text
//!  hub ── Claim / Release / Publish ──> queue ──> worker ──> store (presence rows, NOTIFY)
//!   ^                                               │  every heartbeat: heartbeat row,
//!   │── Claimed / ClaimRefused / Unpublished ───────┘  purge lapsed instances, prune
//!   └── Snapshot / Bus / Lapsed <── listener <── LISTEN dapi_rtc, dapi_rtc_<me>
//! ```
//!
//! One worker per instance runs every bus write in the order the hub asked for them, so
//! a join is recorded before the signals its socket sends next, and those leave in the
//! order they were sent. The listener hands notifications to the hub in the order
//! PostgreSQL delivers them (commit order).
//!
//! **Timers.** Every `heartbeat` (`DAPI_RTC_BUS_HEARTBEAT_MS`, 5 s) the worker stamps
//! its instance row, releases the members of instances whose row is older than
//! `lapse` = 3 heartbeats (their peers get `peer_left` with reason `timeout`), and prunes
//! stored notifications older than a minute. An instance purges others only after its
//! own heartbeats have succeeded for a whole lapse ([`Health`]): after a database outage
//! every instance gets the time to stamp its row before anyone is declared dead.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use protocol::signaling::LeaveReason;
use tokio::sync::{mpsc, oneshot, watch};

use super::Rtc;
use super::hub::{ConnId, Input};
use crate::domain::{ChannelName, Uid};
use crate::rtc_wire::{BusMessage, InstanceId, PresenceRow};
use crate::store::PgStore;
use crate::store::rtc_bus::{BusDelivery, Sent};

/// Jobs queued for the worker before new claims and publications are refused (the
/// database is slow or down). Releases are always queued: they are bounded by the
/// number of members.
const BUS_QUEUE: usize = 10_000;
/// Heartbeats that may be missed before an instance is declared dead.
const LAPSE_HEARTBEATS: i64 = 3;
/// Stored notifications older than this are pruned (their addressee died).
const PRUNE_AFTER_MS: i64 = 60_000;
/// Pause before the listener reconnects, and between registration attempts.
const RETRY: Duration = Duration::from_secs(1);

/// A bus write the hub asked for.
#[derive(Debug)]
pub(crate) enum BusJob {
    /// `Output::Claim`.
    Claim {
        conn: ConnId,
        channel: ChannelName,
        uid: Uid,
    },
    /// `Output::Release`.
    Release {
        row: PresenceRow,
        reason: LeaveReason,
    },
    /// `Output::Publish`.
    Publish { to: InstanceId, message: BusMessage },
}

/// The hub's side of the worker's queue.
#[derive(Debug, Clone)]
pub(crate) struct BusOutbox {
    tx: mpsc::UnboundedSender<BusJob>,
    queued: Arc<AtomicUsize>,
}

/// The worker's side of the queue.
#[derive(Debug)]
pub(crate) struct BusInbox {
    rx: mpsc::UnboundedReceiver<BusJob>,
    queued: Arc<AtomicUsize>,
}

/// A queue between the hub and the worker.
pub(crate) fn queue() -> (BusOutbox, BusInbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        BusOutbox {
            tx,
            queued: queued.clone(),
        },
        BusInbox { rx, queued },
    )
}

impl BusOutbox {
    /// Queues `job`; gives it back when it was not taken: the queue is full (releases
    /// always go) or the worker is gone.
    pub(crate) fn push(&self, job: BusJob) -> Option<BusJob> {
        let release = matches!(job, BusJob::Release { .. });
        if !release && self.queued.load(Ordering::Relaxed) >= BUS_QUEUE {
            return Some(job);
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.send(job) {
            Ok(()) => None,
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                Some(e.0)
            }
        }
    }
}

/// The bus timers, from `DAPI_RTC_BUS_HEARTBEAT_MS`.
#[derive(Debug, Clone, Copy)]
pub struct BusTimers {
    /// How often an instance stamps its row and looks for lapsed ones.
    pub heartbeat_ms: i64,
    /// An instance whose row is older than this is dead.
    pub lapse_ms: i64,
}

impl BusTimers {
    /// Timers for a heartbeat every `heartbeat` (at least 100 ms).
    pub fn every(heartbeat: std::time::Duration) -> Self {
        let heartbeat_ms = crate::config::millis_i64(heartbeat).clamp(100, i64::MAX / 8);
        Self {
            heartbeat_ms,
            lapse_ms: heartbeat_ms * LAPSE_HEARTBEATS,
        }
    }

    /// The longest a dead instance's members stay listed: its last heartbeat lapses, and
    /// the next heartbeat of a live instance notices.
    pub fn ghost_bound_ms(&self) -> i64 {
        self.lapse_ms + self.heartbeat_ms
    }
}

/// Whether this instance may declare others dead: only once its own heartbeats have
/// succeeded without a break for a whole lapse, so a database outage that stopped every
/// instance's heartbeat does not make the first one back purge the others.
#[derive(Debug, Default)]
pub struct Health {
    healthy_since: Option<i64>,
}

impl Health {
    /// Records a heartbeat at `now`: stamped (`ok`) or failed.
    pub fn beat(&mut self, now: i64, ok: bool) {
        if ok {
            self.healthy_since.get_or_insert(now);
        } else {
            self.healthy_since = None;
        }
    }

    /// Whether this instance may purge lapsed ones at `now`.
    pub fn may_purge(&self, now: i64, lapse_ms: i64) -> bool {
        self.healthy_since
            .is_some_and(|since| now.saturating_sub(since) >= lapse_ms)
    }
}

fn count_sent(kind: &'static str, via: &'static str) {
    metrics::counter!("dapi_rtc_bus_messages_total", "direction" => "sent", "kind" => kind, "via" => via)
        .increment(1);
}

fn count_failure(what: &'static str) {
    metrics::counter!("dapi_rtc_bus_failures_total", "what" => what).increment(1);
}

/// Runs the bus writes of instance `me` until `stop` fires, then finishes the queued
/// releases and says goodbye (releases every member left and removes its row).
pub(crate) async fn run_worker(
    pg: PgStore,
    rtc: Rtc,
    me: InstanceId,
    mut inbox: BusInbox,
    max_peers: usize,
    timers: BusTimers,
    mut stop: oneshot::Receiver<()>,
) {
    let clock = rtc.clock().clone();
    loop {
        match pg.rtc_register(&me, clock.now_ms()).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "rtc bus: could not register this instance; retrying")
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
    tracing::info!(instance = %me, "rtc bus: registered");
    let mut worker = Worker {
        pg,
        rtc,
        me,
        max_peers,
        timers,
        health: Health::default(),
        retry: Vec::new(),
    };
    let period = Duration::from_millis(u64::try_from(timers.heartbeat_ms).unwrap_or(5000));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            job = inbox.rx.recv() => {
                let Some(job) = job else { break };
                inbox.queued.fetch_sub(1, Ordering::Relaxed);
                worker.run(job).await;
            }
            _ = tick.tick() => worker.heartbeat().await,
        }
    }
    // Stopping: the hub has closed every socket. Record the releases still queued, then
    // remove whatever this instance still holds.
    while let Ok(job) = inbox.rx.try_recv() {
        if matches!(job, BusJob::Release { .. }) {
            worker.run(job).await;
        }
    }
    match worker.pg.rtc_goodbye(&worker.me).await {
        Ok(n) => tracing::info!(released = n, "rtc bus: left"),
        Err(e) => {
            tracing::warn!(error = %e, "rtc bus: could not say goodbye; other instances will time this one out")
        }
    }
}

struct Worker {
    pg: PgStore,
    rtc: Rtc,
    me: InstanceId,
    max_peers: usize,
    timers: BusTimers,
    health: Health,
    /// Releases that failed (database unreachable), tried again every heartbeat.
    retry: Vec<(PresenceRow, LeaveReason)>,
}

impl Worker {
    async fn run(&mut self, job: BusJob) {
        let now = self.rtc.clock().now_ms();
        match job {
            BusJob::Claim { conn, channel, uid } => {
                let claimed = self
                    .pg
                    .rtc_claim(&self.me, &channel, &uid, self.max_peers, now)
                    .await;
                match claimed {
                    Ok(Some(claim)) => {
                        count_sent("joined", "notify");
                        self.rtc.input(Input::Claimed {
                            conn,
                            claim: &claim,
                        });
                    }
                    Ok(None) => self.rtc.input(Input::ClaimRefused { conn, full: true }),
                    Err(e) => {
                        tracing::warn!(channel = %channel, error = %e, "rtc bus: join not recorded");
                        count_failure("claim");
                        self.rtc.input(Input::ClaimRefused { conn, full: false });
                    }
                }
            }
            BusJob::Release { row, reason } => self.release(row, reason).await,
            BusJob::Publish { to, message } => {
                let kind = message.kind();
                match self.pg.rtc_publish(&to, &message.encode(), now).await {
                    Ok(Sent::Inline) => count_sent(kind, "notify"),
                    Ok(Sent::Stored) => count_sent(kind, "table"),
                    Err(e) => {
                        tracing::warn!(to = %to, kind, error = %e, "rtc bus: message not sent");
                        count_failure("publish");
                        self.rtc.input(Input::Unpublished(&message));
                    }
                }
            }
        }
    }

    async fn release(&mut self, row: PresenceRow, reason: LeaveReason) {
        match self.pg.rtc_release(&row, reason).await {
            Ok(true) => count_sent("left", "notify"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(channel = %row.channel, error = %e, "rtc bus: leave not recorded; will retry");
                count_failure("release");
                self.retry.push((row, reason));
            }
        }
    }

    async fn heartbeat(&mut self) {
        let now = self.rtc.clock().now_ms();
        match self.pg.rtc_heartbeat(&self.me, now).await {
            Ok(true) => self.health.beat(now, true),
            Ok(false) => {
                // Declared dead (this instance could not stamp its row in time): its
                // members were released and their peers told. Drop them here too, and
                // come back as a live instance.
                tracing::warn!(instance = %self.me, "rtc bus: this instance was declared dead; dropping its members");
                self.rtc.input(Input::Lapsed);
                let back = self.pg.rtc_register(&self.me, now).await.is_ok();
                // Healthy again from now on at best: the others get a whole lapse to
                // stamp their rows before this instance judges them.
                self.health = Health::default();
                self.health.beat(now, back);
            }
            Err(e) => {
                tracing::warn!(error = %e, "rtc bus: heartbeat failed");
                self.health.beat(now, false);
                return;
            }
        }
        if self.health.may_purge(now, self.timers.lapse_ms) {
            match self.pg.rtc_purge(now - self.timers.lapse_ms).await {
                Ok((dead, released)) => {
                    for id in &dead {
                        tracing::warn!(instance = %id, "rtc bus: instance lapsed; releasing its members");
                    }
                    let released = u64::try_from(released).unwrap_or(0);
                    metrics::counter!("dapi_rtc_bus_purged_total").increment(released);
                    metrics::counter!("dapi_rtc_bus_messages_total", "direction" => "sent", "kind" => "left", "via" => "notify")
                        .increment(released);
                }
                Err(e) => tracing::warn!(error = %e, "rtc bus: purge failed"),
            }
        }
        if let Err(e) = self.pg.rtc_prune_messages(now - PRUNE_AFTER_MS).await {
            tracing::warn!(error = %e, "rtc bus: prune failed");
        }
        for (row, reason) in std::mem::take(&mut self.retry) {
            self.release(row, reason).await;
        }
    }
}

/// Listens for the bus messages of `me` and feeds them to the hub, reconnecting after
/// errors. `ready` turns true on the first subscription.
pub(crate) async fn run_listener(
    pg: PgStore,
    rtc: Rtc,
    me: InstanceId,
    ready: watch::Sender<bool>,
) {
    let mut after_loss = false;
    loop {
        let mut on = |d: BusDelivery| match d {
            BusDelivery::Subscribed { rows, after_loss } => {
                if after_loss {
                    tracing::warn!("rtc bus listener reconnected; presence resynchronised");
                    metrics::counter!("dapi_rtc_bus_reconnects_total").increment(1);
                }
                rtc.input(Input::Snapshot(&rows));
                let _ = ready.send(true);
            }
            BusDelivery::Message(text) => match BusMessage::decode(&text) {
                Ok(m) => {
                    metrics::counter!("dapi_rtc_bus_messages_total", "direction" => "received", "kind" => m.kind())
                        .increment(1);
                    rtc.input(Input::Bus(&m));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rtc bus: malformed message ignored");
                    count_failure("malformed");
                }
            },
            BusDelivery::Lost => {
                tracing::warn!("rtc bus: a stored message was pruned before it was read");
                count_failure("lost");
            }
        };
        if let Err(e) = pg.rtc_listen(&me, after_loss, &mut on).await {
            // Notifications sent until it is back are lost; the snapshot taken on
            // reconnecting repairs presence.
            tracing::warn!(error = %e, "rtc bus listener lost; reconnecting");
        }
        after_loss = true;
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::super::hub::{Hub, HubConfig};
    use super::super::ice::IceConfig;
    use super::*;
    use crate::token::{TokenIssuer, TokenVersion};

    #[test]
    fn an_instance_purges_only_after_a_whole_lapse_of_good_heartbeats() {
        let t = BusTimers::every(std::time::Duration::from_millis(5_000));
        assert_eq!(
            (t.heartbeat_ms, t.lapse_ms, t.ghost_bound_ms()),
            (5_000, 15_000, 20_000)
        );
        let mut h = Health::default();
        assert!(!h.may_purge(0, t.lapse_ms), "never stamped");
        h.beat(0, true);
        h.beat(5_000, true);
        assert!(!h.may_purge(10_000, t.lapse_ms));
        h.beat(15_000, true);
        assert!(h.may_purge(15_000, t.lapse_ms));
        // An outage: the clock of health restarts when heartbeats come back.
        h.beat(20_000, false);
        assert!(!h.may_purge(20_000, t.lapse_ms));
        h.beat(60_000, true);
        assert!(
            !h.may_purge(70_000, t.lapse_ms),
            "the others may not have stamped yet"
        );
        assert!(h.may_purge(75_000, t.lapse_ms));
        assert_eq!(
            BusTimers::every(std::time::Duration::ZERO).heartbeat_ms,
            100
        );
    }

    #[test]
    fn the_queue_refuses_claims_and_publications_when_full_but_never_releases() {
        let (out, inbox) = queue();
        inbox.queued.store(BUS_QUEUE, Ordering::Relaxed);
        let ch = ChannelName::parse("c").unwrap();
        let uid = Uid::parse("u").unwrap();
        let claim = BusJob::Claim {
            conn: Hub::new(
                HubConfig::default(),
                TokenIssuer::new("a".into(), "c".into(), TokenVersion::V006, 600),
                IceConfig::none(),
            )
            .open(0),
            channel: ch.clone(),
            uid: uid.clone(),
        };
        assert!(out.push(claim).is_some());
        let release = BusJob::Release {
            row: PresenceRow {
                channel: ch,
                uid,
                instance: InstanceId::random(),
                seq: 1,
            },
            reason: LeaveReason::Left,
        };
        assert!(out.push(release).is_none());
        drop(inbox);
        let again = BusJob::Publish {
            to: InstanceId::random(),
            message: BusMessage::Kick {
                channel: ChannelName::parse("c").unwrap(),
                uid: Uid::parse("u").unwrap(),
                reason: "r".into(),
            },
        };
        assert!(out.push(again).is_some(), "the worker is gone");
    }
}
