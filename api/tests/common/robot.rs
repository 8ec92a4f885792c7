//! Helpers for the robot tests: assets, a robot session running on a test agent (a plain
//! WebSocket client speaking the link protocol), Ogg Opus files, JWTs.

use serde_json::{Value, json};

use super::TestApp;
use super::agent_ws::{Ws, expect, send};

/// Uploads the shipped default asset under `name`.
pub async fn upload_asset(app: &TestApp, name: &str) {
    let r = app
        .http
        .put(format!("{}/admin/audio/{name}", app.base))
        .bearer_auth("test-admin-key")
        .body(api::routes::admin::DEFAULT_ASSET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// Takes the next offer on `ws`, accepts it and reports `playing`; returns the offer's
/// session.
pub async fn take_offer(ws: &mut Ws) -> Value {
    let offer = expect(ws, "offer", 5).await;
    let s = offer["session"].clone();
    let id = s["id"].as_i64().unwrap();
    send(ws, json!({"type": "accept", "session_id": id})).await;
    send(
        ws,
        json!({"type": "status", "session_id": id, "state": "playing", "detail": "", "position_ms": 0}),
    )
    .await;
    s
}

/// Waits until the session is `running` as the store sees it.
pub async fn wait_running(app: &TestApp, id: i64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let s = app
            .state
            .store()
            .robot_session(api::store::SessionId::new(id))
            .await
            .unwrap()
            .unwrap();
        if s.state == api::store::RobotState::Running {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session {id} is {:?}",
            s.state
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// An Ogg Opus file of `frames` 20 ms packets (tiny Opus packets: a TOC byte for a 20 ms
/// CELT frame and two payload bytes), pre-skip 312, with its end-of-stream page. Its
/// duration is `(frames x 960 - 312) / 48` ms.
pub fn ogg_opus(frames: u64) -> Vec<u8> {
    use audio::ogg_opus::{OggOpusWriter, OpusHead, OpusTags};
    let head = OpusHead::new(1, 312, 48000);
    let tags = OpusTags {
        vendor: "dapi-test".into(),
        comments: vec![],
    };
    let mut w = OggOpusWriter::new(Vec::new(), &head, &tags, 0x5eed).unwrap();
    for _ in 0..frames {
        w.write_packet(&[0xf8, 0xff, 0xfe]).unwrap();
    }
    w.finish(frames * 960).unwrap()
}

/// The file without its last page (what an agent uploads before the end: whole pages, no
/// end-of-stream page).
pub fn without_last_page(file: &[u8]) -> Vec<u8> {
    let last = file.windows(4).rposition(|w| w == b"OggS").unwrap();
    file[..last].to_vec()
}

/// The HS256 secret of the jwt-mode tests.
pub const JWT_SECRET: &str = "robot-tests-shared-secret-of-32-bytes-or-more";

/// An HS256 JWT for `sub`, valid 10 minutes.
pub fn jwt(sub: &str) -> String {
    let exp = u64::try_from(chrono::Utc::now().timestamp()).unwrap() + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Switches a test configuration to jwt mode with [`JWT_SECRET`].
pub fn jwt_mode(c: &mut api::config::Config) {
    c.auth = api::config::AuthConfig::jwt(api::config::Secret::new(JWT_SECRET));
}

/// POSTs JSON with an optional bearer JWT; status and body.
pub async fn post_as(app: &TestApp, path: &str, jwt: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = app.http.post(format!("{}{path}", app.base)).json(&body);
    if let Some(t) = jwt {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// GETs with an optional bearer JWT and extra headers; the response.
pub async fn get_as(
    app: &TestApp,
    path: &str,
    jwt: Option<&str>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = app.http.get(format!("{}{path}", app.base));
    if let Some(t) = jwt {
        r = r.bearer_auth(t);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

/// The timeline entries of `kind` in `channel`.
pub async fn timeline_of(
    app: &TestApp,
    channel: &str,
    kind: &str,
) -> Vec<api::store::TimelineEntry> {
    app.state
        .store()
        .timeline(&super::channel(channel))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}
