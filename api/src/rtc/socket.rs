//! `GET /rtc`: upgrades to a WebSocket and moves frames between it and the hub. No
//! protocol decision is taken here; the hub takes them all.
//!
//! ```text
//!  client ──frames──> read loop ──Input──> Rtc (hub) ──Outbound──> outbox ──> write task ──> client
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::hub::{ConnId, Input};
use super::{OUTBOX, Outbound, Rtc, SocketPermit, SocketRefusal};
use crate::AppState;

/// How long a closing socket may take to flush its last frames and answer our close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The upgrade handler. The hub refuses text frames over the configured size with a
/// `frame_too_large` error. The transport reads messages up to twice that size whole, so
/// the error frame reaches the client reliably; beyond that the transport refuses the frame
/// itself (without reading it), which the hub turns into the same error, best effort.
/// The channel signaling WebSocket (docs/rtc-protocol.md): join with an Agora token,
/// then exchange offers, answers and ICE candidates with the channel's other members.
#[utoipa::path(get, path = "/rtc", tag = "rtc",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request", content_type = "text/plain", body = String),
        (status = 429, description = "`DAPI_RTC_SOCKETS_PER_IP` sockets are open from this address, or it opens new ones faster than `DAPI_RTC_UPGRADES_PER_IP_PER_SEC` (`Retry-After` says when to try again)", content_type = "text/plain", body = String),
        (status = 503, description = "`DAPI_RTC_SOCKETS_TOTAL` sockets are open on this instance", content_type = "text/plain", body = String)))]
pub(crate) async fn rtc_ws(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let rtc = state.rtc().clone();
    let ip = client_ip(&state, peer, &headers);
    let permit = match rtc.admit_socket(ip, is_agent(&state, &headers)) {
        Ok(p) => p,
        Err(refusal) => return refused(refusal),
    };
    let max = rtc.max_frame().saturating_mul(2);
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| serve(rtc, socket, permit))
}

/// The address a socket counts against for `DAPI_RTC_SOCKETS_PER_IP`: the same rule as
/// the HTTP routes' rate limits (`X-Forwarded-For` believed only from a peer in
/// `DAPI_TRUSTED_PROXIES`, else the TCP peer address).
fn client_ip(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    state
        .config()
        .limits
        .trusted_proxies
        .client_ip(peer.ip(), headers)
}

/// Whether the upgrade presents the robot agents' key (`Authorization: Bearer
/// DAPI_AGENT_KEY`): a robot agent's session socket, which `DAPI_RTC_SOCKETS_PER_IP` does
/// not count (one agent address holds all its sessions). A wrong or absent key is simply
/// not an agent: the socket is counted like anyone's, and its join is checked as always.
fn is_agent(state: &AppState, headers: &HeaderMap) -> bool {
    crate::dispatch::agent_link::check_bearer(
        headers,
        state.config().dispatch.agent_key.as_ref(),
        "agent link",
        "DAPI_AGENT_KEY",
    )
    .is_ok()
}

/// 429 (this address holds too many sockets, or opened too many lately) or 503 (this
/// instance holds too many), before the upgrade, with `Retry-After`.
fn refused(refusal: SocketRefusal) -> Response {
    let (status, why, text, retry_after) = match refusal {
        SocketRefusal::PerIp(n) => (
            StatusCode::TOO_MANY_REQUESTS,
            "per_ip",
            format!("too many /rtc sockets from this address (at most {n})"),
            5,
        ),
        SocketRefusal::Total(n) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "total",
            format!("too many /rtc sockets on this server (at most {n}); try again later"),
            5,
        ),
        SocketRefusal::UpgradeRate(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            "upgrade_rate",
            format!("too many new /rtc sockets from this address; try again in {secs} s"),
            secs,
        ),
    };
    // Counted, and logged at debug only: an attacker makes thousands a second, and a log
    // line each would be a flood of its own (disk, log shipping).
    metrics::counter!("dapi_rtc_sockets_refused_total", "why" => why).increment(1);
    tracing::debug!(why, "rtc socket refused");
    (
        status,
        [(header::RETRY_AFTER, retry_after.to_string())],
        text,
    )
        .into_response()
}

async fn serve(rtc: Rtc, socket: WebSocket, permit: SocketPermit) {
    // Held until the socket is done.
    let _permit = permit;
    let (tx, rx) = mpsc::channel(OUTBOX);
    let conn = rtc.open(tx);
    let span = tracing::info_span!("rtc_socket", conn = %conn);
    async move {
        let (sink, stream) = socket.split();
        let mut writer = tokio::spawn(write_loop(sink, rx));
        let reader = read_loop(&rtc, conn, stream);
        tokio::pin!(reader);
        let mut writer_done = false;
        tokio::select! {
            () = &mut reader => {}
            _ = &mut writer => {
                writer_done = true;
                // We closed it: give the client a moment to answer our close frame.
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader).await;
            }
        }
        rtc.closed(conn);
        // The outbox is gone, so the writer ends after flushing what was queued.
        if !writer_done
            && tokio::time::timeout(CLOSE_GRACE, &mut writer)
                .await
                .is_err()
        {
            writer.abort();
        }
        rtc.finished();
        tracing::debug!("rtc socket done");
    }
    .instrument(span)
    .await;
}

async fn read_loop(rtc: &Rtc, conn: ConnId, mut stream: SplitStream<WebSocket>) {
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(Message::Text(text)) => rtc.input(Input::Text {
                conn,
                text: text.as_str(),
            }),
            Ok(Message::Binary(_)) => rtc.input(Input::Binary { conn }),
            Ok(Message::Ping(_)) => rtc.input(Input::Ping { conn }),
            Ok(Message::Pong(_)) => rtc.input(Input::Pong { conn }),
            Ok(Message::Close(_)) => return,
            Err(e) => {
                if is_too_large(&e) {
                    rtc.input(Input::Oversized { conn });
                } else {
                    tracing::debug!(error = %e, "rtc socket read error");
                }
                return;
            }
        }
    }
}

/// Whether the transport refused a frame over the size limit (tungstenite's
/// `Error::Capacity`, which axum wraps; the wrapper has no public kind, so its text is
/// checked, and `tests/rtc_ws.rs` pins this behaviour).
fn is_too_large(e: &axum::Error) -> bool {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains("Space limit exceeded") {
            return true;
        }
        cur = err.source();
    }
    false
}

async fn write_loop(mut sink: SplitSink<WebSocket, Message>, mut rx: mpsc::Receiver<Outbound>) {
    while let Some(out) = rx.recv().await {
        let sent = match out {
            Outbound::Text(text) => sink.send(Message::Text(text.into())).await,
            Outbound::Ping => sink.send(Message::Ping(Default::default())).await,
            Outbound::Close(code) => {
                let frame = CloseFrame {
                    code,
                    reason: Default::default(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}
