//! `GET /agent`: the WebSocket robot agents connect to. This module only moves messages
//! between the socket, the store and the [`Dispatcher`](super::Dispatcher).

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use protocol::agent::{AgentMessage, ServerMessage, SessionState};
use tokio::sync::mpsc;

use crate::AppState;
use crate::error::ApiError;
use crate::store::{RobotState, SessionId, StatusOutcome};

/// Largest frame an agent may send.
const MAX_FRAME: usize = 64 * 1024;
/// An agent that says nothing (not even a pong) for this long is dropped.
const IDLE: Duration = Duration::from_secs(45);

/// Checks `Authorization: Bearer <key>` against a configured key.
pub fn check_bearer(
    headers: &HeaderMap,
    key: Option<&crate::config::Secret>,
    what: &str,
    var: &str,
) -> Result<(), ApiError> {
    let Some(key) = key else {
        return Err(ApiError::Forbidden(format!(
            "the {what} is disabled: set {var}"
        )));
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized(format!("the {what} needs Authorization: Bearer <{var}>"))
        })?;
    if key.matches(presented.trim()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(format!("wrong key for the {what}")))
    }
}

/// The robot agents' link (docs/agent-protocol.md): offers, accepts, leases and status
/// reports over one WebSocket per agent.
#[utoipa::path(get, path = "/agent", tag = "agents", security(("agent_key" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request", content_type = "text/plain", body = String)))]
pub async fn agent_ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(e) = check_bearer(
        &headers,
        state.config().dispatch.agent_key.as_ref(),
        "agent link",
        "DAPI_AGENT_KEY",
    ) {
        return e.into_response();
    }
    ws.max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| serve(state, socket))
}

fn frame(msg: &ServerMessage) -> Message {
    Message::Text(serde_json::to_string(msg).unwrap_or_default().into())
}

async fn serve(state: AppState, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    // The first message must be `register`.
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
    let (agent_id, capacity, held) = match first {
        Ok(Some(Ok(Message::Text(t)))) => match protocol::agent::parse_agent_message(&t) {
            Ok(AgentMessage::Register {
                agent_id,
                capacity,
                sessions,
                ..
            }) if !agent_id.is_empty() && agent_id.len() <= 128 => (agent_id, capacity, sessions),
            _ => {
                let e = ServerMessage::Error {
                    code: "register_first".into(),
                    message: "the first message must be register {agent_id, capacity, version}"
                        .into(),
                };
                let _ = sink.send(frame(&e)).await;
                return;
            }
        },
        _ => return,
    };
    let span = tracing::info_span!("agent_link", agent = %agent_id);
    let _enter = span.enter();
    let d = state.dispatcher();
    let lease_ms = i64::try_from(d.lease.as_millis()).unwrap_or(10_000);

    // This connection becomes the agent's current link (its close hands the agent's
    // sessions back, unless a newer link has replaced it by then). Sessions the agent
    // still holds from before a reconnect: keep those it really holds.
    let link = crate::random_hex32();
    let mut held = held;
    held.sort_unstable();
    held.dedup();
    let now = state.clock().now_ms();
    let held_ids: Vec<SessionId> = held.iter().copied().map(SessionId::new).collect();
    let lost: Vec<i64> = match state
        .store()
        .open_link(&agent_id, &link, &held_ids, now, now + lease_ms)
        .await
    {
        Ok(lost) => lost.into_iter().map(SessionId::get).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "recording the link on register failed");
            Vec::new()
        }
    };
    let kept: Vec<i64> = held
        .iter()
        .copied()
        .filter(|id| !lost.contains(id))
        .collect();

    let (tx, mut rx) = mpsc::unbounded_channel::<ServerMessage>();
    let _ = tx.send(ServerMessage::Registered {
        agent_id: agent_id.clone(),
        lease_seconds: d.lease.as_secs(),
    });
    for id in &lost {
        let _ = tx.send(ServerMessage::Leave { session_id: *id });
    }
    let conn_id = d.register(&agent_id, capacity, kept, tx.clone());
    tracing::info!(capacity, "agent registered");

    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(Duration::from_secs(15));
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => if sink.send(frame(&m)).await.is_err() { break },
                    None => break,
                },
                _ = ping.tick() => if sink.send(Message::Ping(Default::default())).await.is_err() { break },
            }
        }
        let _ = sink.close().await;
    });

    let why = loop {
        let next = match tokio::time::timeout(IDLE, stream.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(_))) => break "socket error",
            Ok(None) => break "socket closed",
            Err(_) => {
                tracing::warn!("agent idle: dropping the link");
                break "agent idle";
            }
        };
        let text = match next {
            Message::Text(t) => t,
            Message::Close(_) => break "closed by the agent",
            _ => continue, // ping/pong keep the link alive
        };
        match protocol::agent::parse_agent_message(&text) {
            Ok(msg) => handle(&state, &agent_id, &tx, msg).await,
            Err(e) => {
                let _ = tx.send(ServerMessage::Error {
                    code: "bad_message".into(),
                    message: e,
                });
            }
        }
    };
    // Forget the connection first, so nothing is offered to it any more.
    d.unregister(&agent_id, conn_id);
    writer.abort();
    link_closed(&state, &agent_id, &link, why).await;
}

/// Failover driven by the link (DESIGN.md decision 11): the agent is gone (killed, host
/// down, or it dropped the link), so the sessions it held are offered again at once from
/// their last reported positions, on this instance and (NOTIFY) every other. Nothing
/// changes if the agent has already registered again over a newer link. When the store
/// cannot be reached the leases stay the backstop.
async fn link_closed(state: &AppState, agent: &str, link: &str, why: &str) {
    let now = state.clock().now_ms();
    match state.store().close_link(agent, link, now).await {
        Ok(c) if !c.current => {
            tracing::info!(
                reason = why,
                "agent link closed; a newer link holds its sessions"
            );
        }
        Ok(c) => {
            let changed = !c.requeued.is_empty() || !c.ended.is_empty() || c.offers_returned > 0;
            if changed {
                tracing::warn!(reason = why, requeued = ?c.requeued, ended = ?c.ended, offers_returned = c.offers_returned, "agent link closed: its sessions are offered again");
                state.robot_changed().await;
            } else {
                tracing::info!(reason = why, "agent link closed (it held no session)");
            }
        }
        Err(e) => {
            tracing::warn!(reason = why, error = %e, "agent link closed; its sessions wait for their leases to lapse");
        }
    }
}

async fn handle(
    state: &AppState,
    agent: &str,
    tx: &mpsc::UnboundedSender<ServerMessage>,
    msg: AgentMessage,
) {
    let d = state.dispatcher();
    let store = state.store();
    let now = state.clock().now_ms();
    let lease_ms = i64::try_from(d.lease.as_millis()).unwrap_or(10_000);
    let result: Result<(), crate::store::StoreError> = async {
        match msg {
            AgentMessage::Register { .. } => {
                let _ = tx.send(ServerMessage::Error { code: "already_registered".into(), message: "register is sent once".into() });
            }
            AgentMessage::Accept { session_id } => match store.accept_session(SessionId::new(session_id), agent, now, now + lease_ms).await? {
                Some(s) => {
                    d.accepted(agent, session_id);
                    tracing::info!(session = session_id, channel = %s.channel, "robot session accepted");
                    if s.leave_requested {
                        let _ = tx.send(ServerMessage::Leave { session_id });
                    }
                }
                None => {
                    // the offer expired or was taken back: the agent must not play it
                    d.released(agent, session_id);
                    let _ = tx.send(ServerMessage::Leave { session_id });
                }
            },
            AgentMessage::Reject { session_id, reason } => {
                store.reject_session(SessionId::new(session_id), agent, &reason, now).await?;
                d.released(agent, session_id);
            }
            AgentMessage::Renew { session_ids } => {
                let ids: Vec<SessionId> = session_ids.into_iter().map(SessionId::new).collect();
                for id in store.renew_leases(agent, &ids, now, now + lease_ms).await? {
                    let id = id.get();
                    d.released(agent, id);
                    let _ = tx.send(ServerMessage::Leave { session_id: id });
                }
            }
            AgentMessage::Status { session_id, state: st, detail, position_ms } => {
                let detail: String = detail.chars().take(512).collect();
                match store.report_status(SessionId::new(session_id), agent, st, &detail, position_ms, now).await? {
                    StatusOutcome::NotHeld => {
                        d.released(agent, session_id);
                        if st != SessionState::Left {
                            let _ = tx.send(ServerMessage::Leave { session_id });
                        }
                    }
                    StatusOutcome::Now(RobotState::Running) => {}
                    StatusOutcome::Now(next) => {
                        tracing::info!(session = session_id, state = next.as_str(), detail = %detail, "robot session ended its run");
                        d.released(agent, session_id);
                    }
                }
            }
            // Robot control (ext): docs/robot-control.md.
            AgentMessage::ControlAck { session_id: _, seq, status, error } => {
                let outcome = crate::control_relay::AckOutcome { status, error };
                state.control().on_ack(state, agent, seq, outcome).await;
            }
            AgentMessage::Mark { session_id, name, state: mark, position_ms } => {
                crate::routes::robot_control::record_mark(state, agent, session_id, &name, mark, position_ms).await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "agent message could not be applied");
        let _ = tx.send(ServerMessage::Error {
            code: "unavailable".into(),
            message: "the server could not apply the message; retry".into(),
        });
    }
}
