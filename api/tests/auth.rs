//! Security modes and limits over real HTTP: `DAPI_AUTH=jwt` with HS256 and with an ES256
//! JWKS (a test-only key pair in tests/data), uid = sub (403), channel membership (403),
//! missing/forged/expired tokens (401), and 429 with Retry-After from the rate limits.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use api::clock::Clock;
use common::{TestApp, backends, spawn_app_with};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

// At least 32 bytes: DAPI_JWT_SECRET refuses shorter ones.
const SECRET: &str = "app-backend-shared-secret-of-32-bytes-or-more";

fn now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap()
}

fn hs256(sub: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn es256(sub: &str) -> String {
    let pem = include_bytes!("data/es256-test-private.pem");
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("test-es256".into());
    jsonwebtoken::encode(
        &h,
        &json!({"sub": sub, "exp": now() + 600}),
        &EncodingKey::from_ec_pem(pem).unwrap(),
    )
    .unwrap()
}

async fn post(app: &TestApp, path: &str, jwt: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = app.http.post(format!("{}{path}", app.base)).json(&body);
    if let Some(t) = jwt {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn jwt_mode_checks_subject_and_membership() {
    for backend in backends() {
        let app = spawn_app_with(backend, Clock::system(), |c| {
            c.auth = api::config::AuthConfig::jwt(api::config::Secret::new(SECRET));
        })
        .await;
        let alice = hs256("alice", now() + 600);
        let bob = hs256("bob", now() + 600);
        let mallory = hs256("mallory", now() + 600);

        // no token, a forged token, an expired token: 401
        let (s, v) = post(
            &app,
            "/dapi/call/user",
            None,
            json!({"src_uid": "alice", "dst_uid": ["bob"]}),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "[{backend}] {v}"
        );
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "alice", "exp": now() + 600}),
            &EncodingKey::from_secret(b"wrong").unwrap(),
        )
        .unwrap();
        assert_eq!(
            post(
                &app,
                "/dapi/call/user",
                Some(&forged),
                json!({"src_uid": "alice"})
            )
            .await
            .0,
            401
        );
        let (s, v) = post(
            &app,
            "/dapi/call/user",
            Some(&hs256("alice", now() - 3600)),
            json!({"src_uid": "alice"}),
        )
        .await;
        assert_eq!(s, 401);
        assert!(
            v["error"]["message"].as_str().unwrap().contains("expired"),
            "{v}"
        );
        assert_eq!(
            post(
                &app,
                "/dapi/call/user",
                Some("not.a.jwt"),
                json!({"src_uid": "alice"})
            )
            .await
            .0,
            401
        );

        // the body's uid must be the token's sub
        let (s, v) = post(
            &app,
            "/dapi/call/user",
            Some(&bob),
            json!({"src_uid": "alice", "dst_uid": ["bob"]}),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{v}"
        );
        let (s, v) = post(
            &app,
            "/dapi/call/user",
            Some(&alice),
            json!({"src_uid": "alice", "dst_uid": ["bob"]}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let ch = v["data"]["channel"].as_str().unwrap().to_owned();

        // channel operations need membership: bob (callee) yes, mallory no
        for (path, body) in [
            ("/dapi/call/token", json!({"uid": "bob", "channel": ch})),
            ("/dapi/call/heartbeat", json!({"uid": "bob", "channel": ch})),
            (
                "/dapi/call/event",
                json!({"uid": "bob", "channel": ch, "code": 1}),
            ),
            ("/dapi/invite/robot", json!({"uid": "bob", "channel": ch})),
            ("/dapi/quit/robot", json!({"uid": "bob", "channel": ch})),
        ] {
            let (s, v) = post(&app, path, Some(&bob), body.clone()).await;
            assert_eq!(s, 200, "[{backend}] {path}: {v}");
            let mut m = body.clone();
            m["uid"] = json!("mallory");
            let (s, v) = post(&app, path, Some(&mallory), m).await;
            assert_eq!(s, 403, "{path}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("not a member"),
                "{v}"
            );
        }
        // an unknown channel is still a 404
        assert_eq!(
            post(
                &app,
                "/dapi/call/token",
                Some(&bob),
                json!({"uid": "bob", "channel": "ch_nope"})
            )
            .await
            .0,
            404
        );
        // the timeline is for members
        let r = app
            .http
            .get(format!("{}/dapi/call/timeline?channel={ch}", app.base))
            .bearer_auth(&mallory)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let r = app
            .http
            .get(format!("{}/dapi/call/timeline?channel={ch}", app.base))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // own rows only
        assert_eq!(
            post(
                &app,
                "/dapi/call/msg",
                Some(&mallory),
                json!({"uid": "bob"})
            )
            .await
            .0,
            403
        );
        assert_eq!(
            post(&app, "/dapi/call/msg", Some(&bob), json!({"uid": "bob"}))
                .await
                .0,
            200
        );
        assert_eq!(
            post(
                &app,
                "/dapi/calltask/list",
                Some(&bob),
                json!({"uid": "alice"})
            )
            .await
            .0,
            403
        );
    }
}

#[tokio::test]
async fn jwt_mode_with_an_es256_jwks() {
    let jwks = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/es256-test-jwks.json"
    );
    let app = spawn_app_with("sqlite", Clock::system(), |c| {
        c.auth.kind = api::config::AuthKind::Jwt;
        c.auth.jwt_jwks = Some(jwks.into());
    })
    .await;
    let (s, v) = post(
        &app,
        "/dapi/call/user",
        Some(&es256("carol")),
        json!({"src_uid": "carol"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // an HS256 token is refused when only the JWKS is configured
    assert_eq!(
        post(
            &app,
            "/dapi/call/user",
            Some(&hs256("carol", now() + 600)),
            json!({"src_uid": "carol"})
        )
        .await
        .0,
        401
    );
}

#[tokio::test]
async fn jwt_mode_refuses_to_start_without_keys() {
    let (url, _dir) = common::fresh_db("sqlite").await;
    let mut c = api::config::Config::for_tests(&url);
    c.auth.kind = api::config::AuthKind::Jwt;
    let e = api::Application::build(c).await.err().unwrap();
    assert!(e.to_string().contains("DAPI_JWT_SECRET"), "{e}");
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let app = spawn_app_with("sqlite", Clock::system(), |c| {
        c.limits.rate_calls_per_uid = 3;
        c.limits.rate_tokens_per_ip = 5;
    })
    .await;
    for _ in 0..3 {
        app.ok("/dapi/call/user", json!({"src_uid": "busy"})).await;
    }
    let r = app
        .http
        .post(format!("{}/dapi/call/user", app.base))
        .json(&json!({"src_uid": "busy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "one call per 20 s: {retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    // another uid is not limited by busy's bucket
    app.ok("/dapi/call/user", json!({"src_uid": "calm"})).await;
    // tokens per IP: 5, then 429 whatever the uid
    let ch = app.ok("/dapi/call/user", json!({"src_uid": "x"})).await["channel"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..5 {
        app.ok(
            "/dapi/call/token",
            json!({"uid": format!("u{i}"), "channel": ch}),
        )
        .await;
    }
    app.err(
        "/dapi/call/token",
        json!({"uid": "u9", "channel": ch}),
        429,
        "rate_limited",
    )
    .await;
}
