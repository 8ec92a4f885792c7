//! Robot dispatch: queued sessions in the database, pushed to connected agents.
//!
//! ```text
//!  call/robot, invite/robot ──► robot_sessions (queued) ──► wake ──┐
//!  quit/robot, call ended  ──► leave_requested          ──► wake ──┤  (+ NOTIFY on PostgreSQL)
//!                                                                   ▼
//!   Dispatcher loop (each API instance; every wake, every poll tick, and again at once
//!   after a full batch of due sessions):
//!     1. rescue: lapsed leases and unanswered offers back to the queue (compare-and-set)
//!     2. offer: due sessions -> placement::pick(agents connected HERE) -> offer_session CAS
//!     3. leave: sessions asked to leave whose agent is connected HERE -> `leave`
//! ```
//!
//! Every state change is a compare-and-set in the store, so several instances can run
//! the same loop without a leader: whichever wins the `queued -> offered` update sends
//! the offer. The registry of connected agents is in memory, per instance.

pub mod agent_link;
pub mod placement;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use protocol::agent::{ServerMessage, SessionOffer};
use tokio::sync::{Notify, mpsc};

use crate::AppState;

/// A connected agent.
#[derive(Debug)]
struct AgentConn {
    conn_id: u64,
    capacity: u32,
    /// Sessions it holds (accepted) or was offered (with when).
    held: HashSet<i64>,
    offered: HashMap<i64, Instant>,
    draining: bool,
    leaves_sent: HashSet<i64>,
    tx: mpsc::UnboundedSender<ServerMessage>,
}

/// What the admin endpoint shows of an agent.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AgentInfo {
    /// Agent id.
    pub agent_id: String,
    /// Capacity.
    pub capacity: u32,
    /// Sessions held or offered.
    pub load: u32,
    /// Draining.
    pub draining: bool,
    /// Session ids held.
    pub sessions: Vec<i64>,
}

/// The registry of agents connected to this instance, and the loop's wake-up.
#[derive(Debug)]
pub struct Dispatcher {
    agents: Mutex<HashMap<String, AgentConn>>,
    wake: Notify,
    next_conn: std::sync::atomic::AtomicU64,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// How long an offer waits for accept or reject.
    pub offer_timeout: Duration,
    /// Backstop poll interval of the loop.
    pub poll: Duration,
}

impl Dispatcher {
    /// A dispatcher with the given timings.
    pub fn new(lease: Duration, offer_timeout: Duration, poll: Duration) -> Self {
        Self {
            agents: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            next_conn: std::sync::atomic::AtomicU64::new(1),
            lease,
            offer_timeout,
            poll,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentConn>> {
        // A poisoned lock means a panic elsewhere; the map itself is still consistent.
        self.agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes the loop now (a session was queued, capacity freed, a leave requested).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Registers an agent connection; a previous connection with the same id is
    /// replaced (its sender is dropped, which closes it). Returns the connection id.
    pub fn register(
        &self,
        agent_id: &str,
        capacity: u32,
        held: Vec<i64>,
        tx: mpsc::UnboundedSender<ServerMessage>,
    ) -> u64 {
        let conn_id = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let conn = AgentConn {
            conn_id,
            capacity,
            held: held.into_iter().collect(),
            offered: HashMap::new(),
            draining: false,
            leaves_sent: HashSet::new(),
            tx,
        };
        self.lock().insert(agent_id.to_owned(), conn);
        self.wake();
        conn_id
    }

    /// Forgets an agent connection (if it is still the current one for that id).
    pub fn unregister(&self, agent_id: &str, conn_id: u64) {
        let mut agents = self.lock();
        if agents.get(agent_id).is_some_and(|c| c.conn_id == conn_id) {
            agents.remove(agent_id);
        }
    }

    /// The agent accepted `id`: it now holds it.
    pub fn accepted(&self, agent_id: &str, id: i64) {
        if let Some(c) = self.lock().get_mut(agent_id) {
            c.offered.remove(&id);
            c.held.insert(id);
        }
    }

    /// `id` no longer counts against the agent (rejected, left, failed, lost).
    pub fn released(&self, agent_id: &str, id: i64) {
        if let Some(c) = self.lock().get_mut(agent_id) {
            c.offered.remove(&id);
            c.held.remove(&id);
            c.leaves_sent.remove(&id);
        }
        self.wake();
    }

    /// Sends a message to an agent connected here; false if it is not.
    pub fn send(&self, agent_id: &str, msg: ServerMessage) -> bool {
        self.lock()
            .get(agent_id)
            .is_some_and(|c| c.tx.send(msg).is_ok())
    }

    /// Tells an agent to drain: it takes nothing new and finishes what it holds.
    pub fn drain(&self, agent_id: &str) -> bool {
        let mut agents = self.lock();
        match agents.get_mut(agent_id) {
            Some(c) => {
                c.draining = true;
                c.tx.send(ServerMessage::Drain).is_ok()
            }
            None => false,
        }
    }

    /// Connected agents, for the admin endpoint and metrics.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let mut v: Vec<AgentInfo> = self
            .lock()
            .iter()
            .map(|(id, c)| AgentInfo {
                agent_id: id.clone(),
                capacity: c.capacity,
                load: load_of(c),
                draining: c.draining,
                sessions: {
                    let mut s: Vec<i64> = c.held.iter().chain(c.offered.keys()).copied().collect();
                    s.sort_unstable();
                    s
                },
            })
            .collect();
        v.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        v
    }

    /// Picks an agent for one session and reserves a slot on it.
    fn reserve(&self, id: i64) -> Option<String> {
        let mut agents = self.lock();
        let now = Instant::now();
        let timeout = self.offer_timeout;
        for c in agents.values_mut() {
            // offers nobody answered stop counting against capacity
            c.offered.retain(|_, at| now.duration_since(*at) < timeout);
        }
        let ids: Vec<String> = agents.keys().cloned().collect();
        let chosen = {
            let cands: Vec<placement::Candidate<'_>> = ids
                .iter()
                .filter_map(|k| agents.get(k).map(|c| (k, c)))
                .map(|(k, c)| placement::Candidate {
                    id: k,
                    capacity: c.capacity,
                    load: load_of(c),
                    draining: c.draining,
                })
                .collect();
            placement::pick(&cands).map(|i| cands[i].id.to_owned())
        }?;
        if let Some(c) = agents.get_mut(&chosen) {
            c.offered.insert(id, now);
        }
        Some(chosen)
    }

    fn unreserve(&self, agent_id: &str, id: i64) {
        if let Some(c) = self.lock().get_mut(agent_id) {
            c.offered.remove(&id);
        }
    }

    /// Agent ids connected here, and the leaves already sent to each.
    fn connected(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn mark_leave_sent(&self, agent_id: &str, id: i64) -> bool {
        self.lock()
            .get_mut(agent_id)
            .is_some_and(|c| c.leaves_sent.insert(id))
    }

    /// Runs the loop until `shutdown` resolves.
    pub async fn run(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let d = state.dispatcher();
        loop {
            let more = tick(&state).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "dispatch tick failed");
                false
            });
            // After a full batch the queue may hold more due sessions: look again at once
            // rather than at the next wake-up or poll.
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = std::future::ready(()), if more => {}
                () = d.wake.notified(), if !more => {}
                () = tokio::time::sleep(d.poll), if !more => {}
            }
        }
    }
}

/// Wakes this instance's dispatcher whenever another instance asks (PostgreSQL `NOTIFY`,
/// through the store's [`DispatchListener`](crate::store::DispatchListener); returns at
/// once on SQLite). Resubscribes after errors; the dispatcher's slow poll is the backstop
/// while the subscription is down.
pub async fn listen(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let d = state.dispatcher();
    loop {
        let r = tokio::select! {
            () = &mut shutdown => return,
            r = state.store().dispatch_listener() => r,
        };
        let mut listener = match r {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "dispatch listener lost; reconnecting");
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        // Wake-ups sent before the subscription were lost: read the queue now.
        d.wake();
        let e = loop {
            tokio::select! {
                () = &mut shutdown => return,
                r = listener.next() => match r {
                    Ok(()) => d.wake(),
                    Err(e) => break e,
                },
            }
        };
        tracing::warn!(error = %e, "dispatch listener lost; reconnecting");
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn load_of(c: &AgentConn) -> u32 {
    u32::try_from(c.held.len() + c.offered.len()).unwrap_or(u32::MAX)
}

/// Due sessions read (and offered) per pass.
const BATCH: i64 = 64;

/// One pass: rescue, offer, leave. True when a full batch of due sessions was offered, so
/// more may be due now.
pub async fn tick(state: &AppState) -> Result<bool, crate::store::StoreError> {
    let d = state.dispatcher();
    let store = state.store();
    let now = state.clock().now_ms();
    let offer_ms = i64::try_from(d.offer_timeout.as_millis()).unwrap_or(5000);
    let rescued = store.rescue_lapsed(now, now - offer_ms).await?;
    if !rescued.requeued.is_empty() || !rescued.dead.is_empty() {
        tracing::warn!(requeued = ?rescued.requeued, dead = ?rescued.dead, "robot leases lapsed");
    }

    let mut full_batch = false;
    if !d.connected().is_empty() {
        let due = store.due_sessions(now, BATCH).await?;
        full_batch = due.len() == usize::try_from(BATCH).unwrap_or(usize::MAX);
        for s in due {
            // The dispatcher keeps the protocol's session ids.
            let sid = s.id.get();
            let Some(agent) = d.reserve(sid) else {
                // no free slot: capacity freed later wakes the loop
                full_batch = false;
                break;
            };
            if !store.offer_session(s.id, &agent, now).await? {
                d.unreserve(&agent, sid); // another instance won it
                continue;
            }
            let token = match state
                .tokens()
                // A robot cannot renew its token on /rtc: it lasts as long as it may run.
                .mint_for(
                    s.channel.as_str(),
                    &s.uid,
                    state.clock().now_secs(),
                    state.config().tokens.robot_ttl_secs(),
                ) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "minting a robot token failed");
                    d.unreserve(&agent, sid);
                    continue;
                }
            };
            let mut offer = SessionOffer {
                id: sid,
                channel: s.channel.to_string(),
                uid: s.uid.clone(),
                token,
                app_id: state.tokens().app_id.clone(),
                audio: s.audio.first().cloned().unwrap_or_else(|| "default".into()),
                loop_audio: s.loop_audio,
                playlist: s.audio.clone(),
                position_ms: u64::try_from(s.position_ms).unwrap_or(0),
                attempt: u32::try_from(s.attempts + 1).unwrap_or(u32::MAX),
                items: Vec::new(),
                record: None,
                bridge: None,
                call: None,
            };
            // items, record, bridge (ext): from the session's stored options
            crate::robot_options::complete_offer(state, &s.channel, &mut offer).await;
            tracing::info!(session = sid, channel = %s.channel, agent = %agent, "robot session offered");
            if !d.send(&agent, ServerMessage::Offer { session: offer }) {
                d.unreserve(&agent, sid); // the offer expires and is retried
            }
        }
    }

    for agent in d.connected() {
        for id in store.pending_leaves(&agent).await? {
            let id = id.get();
            if d.mark_leave_sent(&agent, id) {
                tracing::info!(session = id, agent = %agent, "robot told to leave");
                d.send(&agent, ServerMessage::Leave { session_id: id });
            }
        }
    }
    Ok(full_batch)
}
