//! An `/rtc` client as a plain WebSocket speaking the documented protocol
//! (`docs/rtc-protocol.md`): join, send, read the next protocol message.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::signaling::{
    ClientMessage, LeaveReason, SdpType, ServerMessage, SessionDescription, SignalPayload,
};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A client socket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The App ID of `Config::for_tests`.
pub const APP: &str = "970CA35de60c44645bbae8a215061b33";
/// How long a test waits for a message that should come at once.
pub const WAIT: Duration = Duration::from_secs(5);

/// Opens `GET /rtc` at `ws_url` (`ws://host:port/rtc`).
pub async fn connect(ws_url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    ws
}

/// The `join` message.
pub fn join_text(channel: &str, uid: &str, token: &str) -> String {
    json!({"type":"join","appID":APP,"channel":channel,"uid":uid,"token":token}).to_string()
}

/// Connects, joins and expects `joined`; returns the socket and its `peers`.
pub async fn join_at(ws_url: &str, channel: &str, uid: &str, token: &str) -> (Ws, Vec<String>) {
    let mut ws = connect(ws_url).await;
    send(&mut ws, &join_text(channel, uid, token)).await;
    match next_msg(&mut ws).await {
        ServerMessage::Joined {
            channel: c,
            uid: u,
            peers,
            ..
        } => {
            assert_eq!((c.as_str(), u.as_str()), (channel, uid));
            (ws, peers)
        }
        other => panic!("expected joined, got {other:?}"),
    }
}

/// Sends one text frame.
pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// The next protocol message within [`WAIT`], skipping pings and pongs.
pub async fn next_msg(ws: &mut Ws) -> ServerMessage {
    next_msg_within(ws, WAIT).await
}

/// The next protocol message within `wait`, skipping pings and pongs.
pub async fn next_msg_within(ws: &mut Ws, wait: Duration) -> ServerMessage {
    loop {
        let m = tokio::time::timeout(wait, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no message within {wait:?}"))
            .expect("socket ended")
            .expect("socket error");
        match m {
            Message::Text(t) => return ServerMessage::parse(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the close frame; returns its code (None: the socket ended without one).
pub async fn expect_close(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close within 5 s")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("expected close, got {other:?}"),
            Some(Err(_)) | None => return None,
        }
    }
}

/// An `error` with `code`, then a close with `close`.
pub async fn expect_fatal(ws: &mut Ws, code: &str, close: u16) {
    match next_msg(ws).await {
        ServerMessage::Error { code: c, message } => {
            assert_eq!(c, code, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {code}, got {other:?}"),
    }
    assert_eq!(expect_close(ws).await, Some(close));
}

/// Expects an `error` with `code` next (the socket stays).
pub async fn expect_error(ws: &mut Ws, code: &str) {
    match next_msg(ws).await {
        ServerMessage::Error { code: c, .. } => assert_eq!(c, code),
        other => panic!("expected error {code}, got {other:?}"),
    }
}

/// Expects `kicked {reason}` next, then a normal close.
pub async fn expect_kicked(ws: &mut Ws, reason: &str) {
    assert_eq!(
        next_msg(ws).await,
        ServerMessage::Kicked {
            reason: reason.into()
        }
    );
    assert_eq!(expect_close(ws).await, Some(1000));
}

/// Expects `peer_left {uid, reason}` next.
pub async fn expect_peer_left(ws: &mut Ws, uid: &str, reason: LeaveReason) {
    assert_eq!(
        next_msg(ws).await,
        ServerMessage::PeerLeft {
            uid: uid.into(),
            reason
        }
    );
}

/// A `signal` with an SDP description of `kind` for `to`.
pub fn description(to: &str, kind: SdpType, sdp: &str) -> String {
    ClientMessage::Signal {
        to: to.into(),
        payload: SignalPayload::Description(SessionDescription {
            kind,
            sdp: sdp.into(),
        }),
    }
    .to_json()
}

/// A `signal` with an SDP offer for `to`.
pub fn offer(to: &str, sdp: &str) -> String {
    description(to, SdpType::Offer, sdp)
}
