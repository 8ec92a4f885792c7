//! Robot control across API instances: `POST /dapi/robot/control` on any instance reaches
//! the agent holding the session, through the instance that holds that agent's socket,
//! and the agent's `control_ack` comes back to the request (docs/robot-control.md).
//!
//! ```text
//!  request on A ──relay()──> agent connected to A?  yes: `control {seq}` on its link (Local)
//!        │                                          no, PostgreSQL: NOTIFY dapi_robot_control
//!        │                                               {instance A, req, agent, action}
//!        │                                   instance B holding the agent: `control {seq}` (Remote)
//!        │   agent: control_ack {seq} ──> on_ack(): Local ──> the waiting request
//!        │                                          Remote ─> NOTIFY dapi_robot_control_ack
//!        │                                                    {instance A, req, status} ──> A
//!        └── waits at most CONTROL_TIMEOUT (2 s): 504 after that
//! ```
//!
//! Like the `leave` of `quit/robot` (DESIGN.md decision 3): in-process when one instance
//! runs (SQLite), `LISTEN/NOTIFY` between instances on PostgreSQL. A control is not
//! durable: an agent that is not connected anywhere misses it, and the request gets 504.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protocol::agent::{ControlAction, PlaybackStatus, ServerMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::AppState;
use crate::store::recordings::{CONTROL_ACK_CHANNEL, CONTROL_CHANNEL};

/// How long a control request waits for the agent's `control_ack`.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// Routes kept for acks that never come are forgotten after this.
const ROUTE_TTL: Duration = Duration::from_secs(30);

/// What the agent answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckOutcome {
    /// The playback state after the control.
    pub status: PlaybackStatus,
    /// The agent could not apply the control.
    pub error: Option<String>,
}

/// Why a control got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// No answer within [`CONTROL_TIMEOUT`] (or the agent is connected nowhere).
    Timeout,
    /// The relay could not be sent (database down).
    Unavailable(String),
}

/// Where an agent's `control_ack` goes.
#[derive(Debug, Clone)]
enum Route {
    /// A request waiting on this instance.
    Local(u64),
    /// A request waiting on another instance.
    Remote { instance: String, req: u64 },
}

/// A control sent over the bus.
#[derive(Debug, Serialize, Deserialize)]
struct BusControl {
    instance: String,
    req: u64,
    agent: String,
    session_id: i64,
    action: ControlAction,
}

/// An answer sent over the bus.
#[derive(Debug, Serialize, Deserialize)]
struct BusAck {
    instance: String,
    req: u64,
    outcome: AckOutcome,
}

/// This instance's requests waiting for an ack, and the routes of controls it sent.
#[derive(Debug)]
pub struct ControlRelay {
    instance: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<AckOutcome>>>,
    routes: Mutex<HashMap<(String, u64), (Route, Instant)>>,
}

impl Default for ControlRelay {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere; the maps stay consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ControlRelay {
    /// A relay with a random instance id.
    pub fn new() -> Self {
        Self {
            instance: format!("{:016x}", rand::random::<u64>()),
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `control` to `agent` if it is connected here, remembering where its ack goes.
    fn deliver_here(
        &self,
        state: &AppState,
        agent: &str,
        session_id: i64,
        action: ControlAction,
        route: Route,
    ) -> bool {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        {
            let mut routes = lock(&self.routes);
            let now = Instant::now();
            routes.retain(|_, (_, at)| now.duration_since(*at) < ROUTE_TTL);
            routes.insert((agent.to_owned(), seq), (route, now));
        }
        let sent = state.dispatcher().send(
            agent,
            ServerMessage::Control {
                session_id,
                seq,
                action,
            },
        );
        if !sent {
            lock(&self.routes).remove(&(agent.to_owned(), seq));
        }
        sent
    }

    /// Relays `action` to the agent holding `session_id` and waits for its answer.
    pub async fn relay(
        &self,
        state: &AppState,
        agent: &str,
        session_id: i64,
        action: ControlAction,
    ) -> Result<AckOutcome, RelayError> {
        let req = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(req, tx);
        let result = async {
            if !self.deliver_here(state, agent, session_id, action.clone(), Route::Local(req)) {
                let msg = BusControl {
                    instance: self.instance.clone(),
                    req,
                    agent: agent.to_owned(),
                    session_id,
                    action,
                };
                let payload = serde_json::to_string(&msg).unwrap_or_default();
                match state
                    .store()
                    .notify_control(CONTROL_CHANNEL, &payload)
                    .await
                {
                    // SQLite: one instance, and the agent is not connected to it.
                    Ok(false) => return Err(RelayError::Timeout),
                    Ok(true) => {}
                    Err(e) => return Err(RelayError::Unavailable(e.to_string())),
                }
            }
            tokio::time::timeout(CONTROL_TIMEOUT, rx)
                .await
                .map_err(|_| RelayError::Timeout)?
                .map_err(|_| RelayError::Timeout)
        }
        .await;
        lock(&self.waiting).remove(&req);
        result
    }

    /// An agent connected here answered `control` number `seq`.
    pub async fn on_ack(&self, state: &AppState, agent: &str, seq: u64, outcome: AckOutcome) {
        let route = lock(&self.routes).remove(&(agent.to_owned(), seq));
        match route {
            None => tracing::debug!(agent, seq, "control_ack for no pending control"),
            Some((Route::Local(req), _)) => self.complete(req, outcome),
            Some((Route::Remote { instance, req }, _)) => {
                let payload = serde_json::to_string(&BusAck {
                    instance,
                    req,
                    outcome,
                })
                .unwrap_or_default();
                if let Err(e) = state
                    .store()
                    .notify_control(CONTROL_ACK_CHANNEL, &payload)
                    .await
                {
                    tracing::warn!(error = %e, "could not relay a control_ack");
                }
            }
        }
    }

    fn complete(&self, req: u64, outcome: AckOutcome) {
        if let Some(tx) = lock(&self.waiting).remove(&req) {
            let _ = tx.send(outcome);
        }
    }

    /// A notification of the control bus (PostgreSQL).
    fn on_bus(&self, state: &AppState, channel: &str, payload: &str) {
        if channel == CONTROL_CHANNEL {
            let Ok(m) = serde_json::from_str::<BusControl>(payload) else {
                tracing::warn!("unreadable control notification");
                return;
            };
            if m.instance == self.instance {
                return; // our own: the agent was not here
            }
            // Only the instance holding the agent's socket sends it; the others ignore it.
            if self.deliver_here(
                state,
                &m.agent,
                m.session_id,
                m.action,
                Route::Remote {
                    instance: m.instance,
                    req: m.req,
                },
            ) {
                tracing::debug!(agent = %m.agent, session = m.session_id, "control relayed from another instance");
            }
        } else if channel == CONTROL_ACK_CHANNEL {
            let Ok(m) = serde_json::from_str::<BusAck>(payload) else {
                tracing::warn!("unreadable control_ack notification");
                return;
            };
            if m.instance == self.instance {
                self.complete(m.req, m.outcome);
            }
        }
    }
}

/// Listens on the control bus until `shutdown` (PostgreSQL only; returns at once on
/// SQLite). Reconnects after errors; a control sent while the listener is down gets 504.
pub async fn listen(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    let crate::store::Store::Postgres(pg) = state.store().clone() else {
        return;
    };
    tokio::pin!(shutdown);
    loop {
        let st = state.clone();
        let on = move |channel: &str, payload: &str| st.control().on_bus(&st, channel, payload);
        tokio::select! {
            () = &mut shutdown => return,
            r = pg.listen_control(&on) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "control listener lost; reconnecting");
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
