//! The agent link client: one WebSocket to `GET /agent`, and the sessions it holds.
//!
//! ```text
//!   connect (Authorization: Bearer <agent key>) ─► register {agent_id, capacity, version,
//!                                                            sessions: held after a reconnect}
//!   offer ─► accept (room, not draining) ─► spawn session::run ─► status joining/playing/left/failed
//!         └► reject {reason: full|draining}
//!   every 3 s: renew {session_ids}            leave {id} ─► that session leaves (< 1 s)
//!   drain (server) / SIGTERM (drain_and_exit): take nothing new; let sessions finish until the
//!     drain timeout, then hand the rest back: status failed "handed back: ..." + position_ms
//!   link lost: statuses wait in an outbox; reconnect with backoff; register with the held
//!     sessions (the server tells us to leave those whose lease lapsed meanwhile); replay.
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::Secret;
use protocol::agent::{AgentMessage, PlaybackState, PlaybackStatus, ServerMessage, SessionOffer};
use protocol::backoff::Backoff;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::error::AgentError;
use crate::session::{self, Control, SessionContext, SessionUpdate};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How the link behaves.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// API base URL (`http://host:port`).
    pub api_url: String,
    /// The agent key (`DAPI_AGENT_KEY`). Never logged.
    pub agent_key: Secret,
    /// This agent's id.
    pub agent_id: String,
    /// Sessions held at once.
    pub capacity: u32,
    /// Lease renewal interval.
    pub renew_every: Duration,
    /// How long a drain lets sessions finish before handing them back.
    pub drain_timeout: Duration,
}

/// The reconnect delay after `failures` consecutive failures: 250 ms doubling to 5 s, with
/// ±20 % jitter from `jitter` in [0, 1). Pure, so it is tested without sleeping.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = RECONNECT_BACKOFF.delay(u64::from(failures));
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    Duration::from_millis((base.as_millis() as f64 * factor) as u64)
}

/// The reconnect schedule before jitter.
const RECONNECT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

/// Whether to take an offer: room left and not draining.
pub fn decide(held: usize, capacity: u32, draining: bool) -> Result<(), &'static str> {
    if draining {
        Err("draining")
    } else if held >= usize::try_from(capacity).unwrap_or(usize::MAX) {
        Err("full")
    } else {
        Ok(())
    }
}

struct Held {
    control: mpsc::UnboundedSender<Control>,
}

/// The link and the sessions of one agent process.
pub struct AgentLink {
    cfg: LinkConfig,
    ctx: Arc<SessionContext>,
    sessions: HashMap<i64, Held>,
    outbox: VecDeque<AgentMessage>,
    updates_tx: mpsc::UnboundedSender<SessionUpdate>,
    updates_rx: mpsc::UnboundedReceiver<SessionUpdate>,
    draining: bool,
    ws: Option<Ws>,
    registered: bool,
    failures: u32,
    ever_connected: bool,
}

/// Why [`AgentLink::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Drained: every session finished or was handed back, every status sent.
    Drained,
    /// Drained, but some statuses could not be delivered (the API was unreachable).
    DrainedUndelivered,
}

async fn recv(
    ws: &mut Option<Ws>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

fn frame(m: &AgentMessage) -> Message {
    Message::Text(serde_json::to_string(m).unwrap_or_default().into())
}

impl AgentLink {
    /// A link for `cfg`; sessions run with `ctx`.
    pub fn new(cfg: LinkConfig, ctx: Arc<SessionContext>) -> Self {
        let (updates_tx, updates_rx) = mpsc::unbounded_channel();
        Self {
            cfg,
            ctx,
            sessions: HashMap::new(),
            outbox: VecDeque::new(),
            updates_tx,
            updates_rx,
            draining: false,
            ws: None,
            registered: false,
            failures: 0,
            ever_connected: false,
        }
    }

    async fn connect(&mut self) -> Result<(), AgentError> {
        let url = crate::signaling::ws_url(&self.cfg.api_url, "/agent");
        let mut req = url
            .into_client_request()
            .map_err(|e| AgentError::LinkUnreachable(e.to_string()))?;
        let auth = format!("Bearer {}", self.cfg.agent_key.expose())
            .parse()
            .map_err(|_| AgentError::InvalidAgentKey)?;
        req.headers_mut().insert("authorization", auth);
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .map_err(|_| AgentError::LinkUnreachable("timed out".into()))?
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => AgentError::LinkRefused {
                status: r.status().as_u16(),
            },
            e => AgentError::LinkUnreachable(e.to_string()),
        })?;
        let mut held: Vec<i64> = self.sessions.keys().copied().collect();
        held.sort_unstable();
        let register = AgentMessage::Register {
            agent_id: self.cfg.agent_id.clone(),
            capacity: self.cfg.capacity,
            version: format!(
                "{} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                protocol::agent::PROTOCOL_VERSION
            ),
            sessions: held,
        };
        ws.send(frame(&register))
            .await
            .map_err(|e| AgentError::LinkUnreachable(e.to_string()))?;
        self.ws = Some(ws);
        Ok(())
    }

    async fn send(&mut self, m: AgentMessage) {
        self.outbox.push_back(m);
        self.flush().await;
    }

    async fn flush(&mut self) {
        while self.registered {
            let Some(ws) = self.ws.as_mut() else { return };
            let Some(m) = self.outbox.front() else { return };
            if ws.send(frame(m)).await.is_err() {
                self.lost("send failed");
                return;
            }
            self.outbox.pop_front();
        }
    }

    fn lost(&mut self, why: &str) {
        if self.ws.take().is_some() {
            tracing::warn!(reason = why, "agent link lost; reconnecting");
        }
        self.registered = false;
        self.ctx.metrics.link_up.store(false, Ordering::Relaxed);
    }

    fn load_changed(&self) {
        self.ctx.metrics.load.store(
            i64::try_from(self.sessions.len()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    fn take(&mut self, offer: SessionOffer) {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = offer.id;
        self.sessions.insert(id, Held { control: tx });
        self.load_changed();
        tokio::spawn(session::run(
            Arc::clone(&self.ctx),
            offer,
            rx,
            self.updates_tx.clone(),
        ));
    }

    async fn on_server(&mut self, m: ServerMessage) {
        match m {
            ServerMessage::Registered { lease_seconds, .. } => {
                tracing::info!(
                    lease_seconds,
                    held = self.sessions.len(),
                    "registered on the agent link"
                );
                if self.ever_connected {
                    self.ctx.metrics.link_reconnected();
                }
                self.ever_connected = true;
                self.registered = true;
                self.failures = 0;
                self.ctx.metrics.link_up.store(true, Ordering::Relaxed);
                self.flush().await;
            }
            ServerMessage::Offer { session } => {
                let id = session.id;
                if self.sessions.contains_key(&id) {
                    // Offered again what we hold (a replay): keep playing, accept again.
                    self.send(AgentMessage::Accept { session_id: id }).await;
                    return;
                }
                match decide(self.sessions.len(), self.cfg.capacity, self.draining) {
                    Ok(()) => {
                        tracing::info!(session = id, channel = %session.channel, attempt = session.attempt, position_ms = session.position_ms, "session accepted");
                        self.ctx.metrics.offer(true);
                        self.send(AgentMessage::Accept { session_id: id }).await;
                        self.take(session);
                    }
                    Err(reason) => {
                        tracing::info!(session = id, reason, "session rejected");
                        self.ctx.metrics.offer(false);
                        self.send(AgentMessage::Reject {
                            session_id: id,
                            reason: reason.to_owned(),
                        })
                        .await;
                    }
                }
            }
            ServerMessage::Leave { session_id } => {
                if let Some(h) = self.sessions.get(&session_id) {
                    tracing::info!(session = session_id, "told to leave");
                    let _ = h.control.send(Control::Leave);
                }
            }
            ServerMessage::Drain => {
                tracing::info!("told to drain: taking no new sessions");
                self.draining = true;
                self.ctx.metrics.draining.store(true, Ordering::Relaxed);
            }
            ServerMessage::Error { code, message } => {
                tracing::warn!(code = %code, message = %message, "the API reported an error");
            }
            // Playback control (docs/agent-protocol.md): the session applies it and answers
            // `control_ack`; a session this agent does not hold is answered at once.
            ServerMessage::Control {
                session_id,
                seq,
                action,
            } => {
                let sent = self
                    .sessions
                    .get(&session_id)
                    .is_some_and(|h| h.control.send(Control::Playback { seq, action }).is_ok());
                if !sent {
                    self.send(AgentMessage::ControlAck {
                        session_id,
                        seq,
                        status: PlaybackStatus {
                            state: PlaybackState::Idle,
                            item: None,
                            position_ms: 0,
                            queue: Vec::new(),
                        },
                        error: Some("this agent does not hold the session".into()),
                    })
                    .await;
                }
            }
        }
    }

    async fn on_update(&mut self, u: SessionUpdate) {
        match u {
            SessionUpdate::Status {
                session_id,
                state,
                detail,
                position_ms,
            } => {
                self.send(AgentMessage::Status {
                    session_id,
                    state,
                    detail,
                    position_ms,
                })
                .await;
            }
            SessionUpdate::Send(m) => self.send(m).await,
            SessionUpdate::Ended { session_id } => {
                self.sessions.remove(&session_id);
                self.load_changed();
            }
        }
    }

    /// Runs until `shutdown` resolves and the drain is over (or forever without one).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Exit {
        tokio::pin!(shutdown);
        let mut reconnect_at = Instant::now();
        let mut renew = tokio::time::interval(self.cfg.renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        // Drain for exit: when the drain began; sessions are handed back after the timeout.
        let mut exiting: Option<Instant> = None;
        let mut handed_back = false;
        let far = || Instant::now() + Duration::from_secs(86_400);
        loop {
            if let Some(_since) = exiting
                && self.sessions.is_empty()
                && self.outbox.is_empty()
            {
                tracing::info!("drained: every session finished or was handed back");
                return Exit::Drained;
            }
            let hand_back_at = match exiting {
                Some(t) if !handed_back => t + self.cfg.drain_timeout,
                _ => far(),
            };
            // After handing back: a few seconds to deliver the final statuses.
            let give_up_at = match exiting {
                Some(t) if handed_back => t + self.cfg.drain_timeout + Duration::from_secs(5),
                _ => far(),
            };
            let reconnect = if self.ws.is_none() {
                reconnect_at
            } else {
                far()
            };
            let silent_at = if self.ws.is_some() {
                last_heard + Duration::from_secs(45)
            } else {
                far()
            };
            tokio::select! {
                m = recv(&mut self.ws) => {
                    last_heard = Instant::now();
                    match m {
                        Some(Ok(Message::Text(t))) => match protocol::agent::parse_server_message(&t) {
                            Ok(msg) => self.on_server(msg).await,
                            Err(e) => tracing::warn!(error = %e, "unreadable agent link frame"),
                        },
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                            self.lost("closed by the API");
                            reconnect_at = Instant::now() + backoff(self.failures, rand::random());
                            self.failures += 1;
                        }
                        Some(Ok(_)) => {}
                    }
                }
                Some(u) = self.updates_rx.recv() => self.on_update(u).await,
                _ = renew.tick() => {
                    if self.registered {
                        let mut ids: Vec<i64> = self.sessions.keys().copied().collect();
                        ids.sort_unstable();
                        let ws_msg = if ids.is_empty() {
                            Message::Ping(Default::default())
                        } else {
                            frame(&AgentMessage::Renew { session_ids: ids })
                        };
                        if let Some(ws) = self.ws.as_mut()
                            && ws.send(ws_msg).await.is_err()
                        {
                            self.lost("send failed");
                            reconnect_at = Instant::now();
                        }
                    }
                }
                () = tokio::time::sleep_until(reconnect) => {
                    match self.connect().await {
                        Ok(()) => last_heard = Instant::now(),
                        Err(e) => {
                            let delay = backoff(self.failures, rand::random());
                            self.failures += 1;
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot connect the agent link");
                            reconnect_at = Instant::now() + delay;
                        }
                    }
                }
                () = tokio::time::sleep_until(silent_at) => {
                    self.lost("nothing heard for 45 s");
                    reconnect_at = Instant::now();
                }
                () = &mut shutdown, if exiting.is_none() => {
                    tracing::info!(sessions = self.sessions.len(), drain_timeout_s = self.cfg.drain_timeout.as_secs(), "shutting down: draining");
                    self.draining = true;
                    self.ctx.metrics.draining.store(true, Ordering::Relaxed);
                    exiting = Some(Instant::now());
                }
                () = tokio::time::sleep_until(hand_back_at) => {
                    tracing::warn!(sessions = self.sessions.len(), "drain timeout: handing the remaining sessions back");
                    for h in self.sessions.values() {
                        let _ = h.control.send(Control::HandBack);
                    }
                    handed_back = true;
                }
                () = tokio::time::sleep_until(give_up_at) => {
                    tracing::error!(undelivered = self.outbox.len(), sessions = self.sessions.len(), "exiting with statuses the API did not get (it re-dispatches when the leases lapse)");
                    return Exit::DrainedUndelivered;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_bounded_jitter() {
        assert_eq!(backoff(0, 0.5), Duration::from_millis(250));
        assert_eq!(backoff(1, 0.5), Duration::from_millis(500));
        assert_eq!(backoff(4, 0.5), Duration::from_millis(4000));
        assert_eq!(backoff(5, 0.5), Duration::from_millis(5000));
        assert_eq!(backoff(60, 0.5), Duration::from_millis(5000));
        assert_eq!(backoff(0, 0.0), Duration::from_millis(200));
        assert!(backoff(0, 0.999) < Duration::from_millis(301));
    }

    #[test]
    fn offers_are_taken_while_there_is_room_and_no_drain() {
        assert_eq!(decide(0, 1, false), Ok(()));
        assert_eq!(decide(1, 1, false), Err("full"));
        assert_eq!(decide(0, 0, false), Err("full"));
        assert_eq!(decide(0, 5, true), Err("draining"));
    }
}
