//! A robot agent as a plain WebSocket client speaking the documented protocol
//! (`docs/agent-protocol.md`): connect, register, wait for a message of a given type.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::TestApp;

/// The agent's socket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `GET /agent` with an optional bearer key; the HTTP status when refused.
pub async fn connect(app: &TestApp, key: Option<&str>) -> Result<Ws, u16> {
    let url = format!("{}/agent", app.base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// Sends one JSON message.
pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Next JSON message of a given type (skipping others), within `secs`.
pub async fn expect(ws: &mut Ws, ty: &str, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {ty} within {secs} s"))
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == ty {
                return v;
            }
        }
    }
}

/// Asserts no message of type `ty` arrives within `ms`.
pub async fn expect_none(ws: &mut Ws, ty: &str, ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_ne!(v["type"], ty, "unexpected {v}");
        }
    }
}

/// Connects with the test key and registers as `id` with `capacity` slots.
pub async fn agent(app: &TestApp, id: &str, capacity: u32) -> Ws {
    let mut ws = connect(app, Some("test-agent-key")).await.unwrap();
    send(
        &mut ws,
        json!({"type": "register", "agent_id": id, "capacity": capacity, "version": "test"}),
    )
    .await;
    let r = expect(&mut ws, "registered", 5).await;
    assert_eq!(r["agent_id"], id);
    ws
}

/// `GET {path}` under `/admin` with the admin key: its `data`, after a 200.
async fn admin_get(app: &TestApp, path: &str) -> Value {
    let r = app
        .http
        .get(format!("{}/admin/{path}", app.base))
        .bearer_auth("test-admin-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["data"].clone()
}

/// The session as `GET /admin/robot/sessions/{id}` shows it.
pub async fn session_state(app: &TestApp, id: i64) -> Value {
    admin_get(app, &format!("robot/sessions/{id}")).await
}

/// `GET /admin/agents`: the agents connected to this instance.
pub async fn agents(app: &TestApp) -> Value {
    admin_get(app, "agents").await
}
