//! Robot options on `call/robot` and `invite/robot` over real HTTP and a real agent link
//! (a WebSocket client speaking docs/agent-protocol.md): a playlist with loop counts and
//! gains, voicemail recording and a media bridge are stored with the session and carried
//! in the `offer`; the seed's bodies get the offer they always got (plus `items`); every bad
//! option is a 400 naming the field, and nothing is queued. `DAPI_BRIDGES` is checked at
//! start. Both backends.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use common::agent_ws::{agent, expect, expect_none};
use common::robot::upload_asset;
use common::{TestApp, backends, spawn_app_with};
use serde_json::{Value, json};

const BRIDGES: &str = r#"{"bot": {"url": "wss://bot.example.net/media", "secret": "bridge-secret-1", "format": "pcm16", "rate": 16000},
                         "raw": {"url": "ws://127.0.0.1:9100/x", "secret": "bridge-secret-2", "format": "opus"}}"#;

async fn app(backend: &'static str) -> TestApp {
    spawn_app_with(backend, api::clock::Clock::system(), |c| {
        c.dispatch.bridges = Some(api::config::Secret::new(BRIDGES));
    })
    .await
}

#[tokio::test]
async fn options_are_stored_and_carried_in_the_offer() {
    for backend in backends() {
        let app = app(backend).await;
        upload_asset(&app, "greeting").await;
        upload_asset(&app, "beep").await;
        let mut ws = agent(&app, "ag-opts", 4).await;

        // The seed's body: the offer as before, with `items` mirroring `playlist`.
        let seed = app.ok("/dapi/call/robot", json!({"src_uid": "1001"})).await;
        let o = expect(&mut ws, "offer", 5).await["session"].clone();
        assert_eq!(o["channel"], seed["channel"]);
        assert_eq!(o["audio"], "default");
        assert_eq!(o["loop"], false);
        assert_eq!(o["playlist"], json!(["default"]));
        assert_eq!(
            o["items"],
            json!([{"audio": "default", "loop": 0, "gain_db": 0.0}])
        );
        assert!(
            o.get("record").is_none() && o.get("bridge").is_none(),
            "{o}"
        );

        // Every option at once on call/robot.
        let body = json!({"src_uid": "1001", "audio": "greeting",
            "playlist": [{"audio": "beep", "loop": 2, "gain_db": -6.5}, {"audio": "default"}],
            "record": {"max_seconds": 60, "beep": false},
            "bridge": "bot"});
        let call = app.ok("/dapi/call/robot", body).await;
        assert_eq!(
            call["uid"], "1001",
            "the answer is the caller's token as before"
        );
        let o = expect(&mut ws, "offer", 5).await["session"].clone();
        assert_eq!(o["channel"], call["channel"]);
        assert_eq!(o["audio"], "greeting");
        assert_eq!(o["playlist"], json!(["greeting", "beep", "default"]));
        assert_eq!(
            o["items"],
            json!([{"audio": "greeting", "loop": 0, "gain_db": 0.0},
                   {"audio": "beep", "loop": 2, "gain_db": -6.5},
                   {"audio": "default", "loop": 0, "gain_db": 0.0}])
        );
        assert_eq!(
            o["record"],
            json!({"max_seconds": 60, "silence_seconds": 5, "beep": false})
        );
        assert_eq!(
            o["bridge"],
            json!({"name": "bot", "url": "wss://bot.example.net/media", "secret": "bridge-secret-1",
                   "format": "pcm16", "rate": 16000})
        );

        // invite/robot into a user call: record with the defaults, an opus bridge; no audio
        // and no playlist with a bridge: an empty queue (the program says what to play).
        let ch = app
            .ok(
                "/dapi/call/user",
                json!({"src_uid": "1001", "dst_uid": ["1002"]}),
            )
            .await["channel"]
            .clone();
        app.ok(
            "/dapi/invite/robot",
            json!({"uid": "1001", "channel": ch, "record": {}, "bridge": "raw"}),
        )
        .await;
        let o = expect(&mut ws, "offer", 5).await["session"].clone();
        assert_eq!(o["channel"], ch);
        assert_eq!(
            o["record"],
            json!({"max_seconds": 120, "silence_seconds": 5, "beep": true})
        );
        assert_eq!(o["bridge"]["format"], "opus");
        assert_eq!(o["bridge"]["rate"], 48000);
        assert!(o.get("items").is_none(), "empty queue: {o}");
        assert_eq!(o["playlist"], json!([]));

        // invite/robot with a playlist only.
        let ch2 = app
            .ok("/dapi/call/user", json!({"src_uid": "7", "dst_uid": ["8"]}))
            .await["channel"]
            .clone();
        app.ok(
            "/dapi/invite/robot",
            json!({"uid": "8", "channel": ch2, "playlist": [{"audio": "beep", "gain_db": 12}]}),
        )
        .await;
        let o = expect(&mut ws, "offer", 5).await["session"].clone();
        assert_eq!(
            o["items"],
            json!([{"audio": "beep", "loop": 0, "gain_db": 12.0}])
        );
        assert!(o.get("record").is_none(), "{o}");
    }
}

/// Robot sessions in the store, all states.
async fn sessions(app: &TestApp) -> i64 {
    let s = app
        .state
        .store()
        .queue_stats(app.state.clock().now_ms())
        .await
        .unwrap();
    s.by_state.iter().map(|(_, n)| n).sum()
}

async fn calls(app: &TestApp) -> i64 {
    let c = app.state.store().calls_by_state().await.unwrap();
    c.iter().map(|(_, n)| n).sum()
}

#[tokio::test]
async fn every_bad_option_is_a_400_naming_the_field_and_nothing_is_queued() {
    for backend in backends() {
        let app = app(backend).await;
        upload_asset(&app, "beep").await;
        let mut ws = agent(&app, "ag-bad", 4).await;
        let ch = app
            .ok("/dapi/call/user", json!({"src_uid": "1", "dst_uid": ["2"]}))
            .await["channel"]
            .clone();
        let calls_before = calls(&app).await;
        // (options, code, the start of the message)
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                json!({"playlist": [{"audio": "nope"}]}),
                "unknown_audio",
                "playlist[0].audio",
            ),
            (
                json!({"playlist": [{"audio": "beep"}, {"audio": "nope"}]}),
                "unknown_audio",
                "playlist[1].audio",
            ),
            (
                json!({"audio": "beep", "playlist": [{"audio": "nope"}]}),
                "unknown_audio",
                "playlist[0].audio",
            ),
            (
                json!({"playlist": [{"audio": "bad name"}]}),
                "invalid_field",
                "playlist[0].audio",
            ),
            (
                json!({"playlist": [{"audio": "beep", "loop": -1}]}),
                "invalid_field",
                "playlist[0].loop",
            ),
            (
                json!({"playlist": [{"audio": "beep", "loop": 1.5}]}),
                "invalid_field",
                "playlist[0].loop",
            ),
            (
                json!({"playlist": [{"audio": "beep", "gain_db": 12.5}]}),
                "invalid_field",
                "playlist[0].gain_db",
            ),
            (
                json!({"playlist": [{"audio": "beep", "gain_db": -30.5}]}),
                "invalid_field",
                "playlist[0].gain_db",
            ),
            (
                json!({"playlist": [{"audio": "beep", "gain_db": "loud"}]}),
                "invalid_field",
                "playlist[0].gain_db",
            ),
            (json!({"playlist": "beep"}), "invalid_field", "playlist"),
            (
                json!({"record": {"max_seconds": 0}}),
                "invalid_field",
                "record.max_seconds",
            ),
            (
                json!({"record": {"max_seconds": 3601}}),
                "invalid_field",
                "record.max_seconds",
            ),
            (
                json!({"record": {"silence_seconds": 0}}),
                "invalid_field",
                "record.silence_seconds",
            ),
            (
                json!({"record": {"silence_seconds": 61}}),
                "invalid_field",
                "record.silence_seconds",
            ),
            (
                json!({"record": {"beep": "yes"}}),
                "invalid_field",
                "record.beep",
            ),
            (json!({"record": {}, "loop": true}), "invalid_field", "loop"),
            (json!({"bridge": "nope"}), "invalid_field", "bridge"),
            (
                json!({"bridge": "https://evil.example/"}),
                "invalid_field",
                "bridge",
            ),
            (json!({"bridge": 5}), "invalid_field", "bridge"),
        ];
        for (opts, code, field) in &cases {
            let mut body = json!({"src_uid": "1"});
            body.as_object_mut()
                .unwrap()
                .extend(opts.as_object().unwrap().clone());
            let m = app.err("/dapi/call/robot", body.clone(), 400, code).await;
            assert!(m.starts_with(field), "[{backend}] {body}: {m}");
            let mut body = json!({"uid": "1", "channel": ch});
            body.as_object_mut()
                .unwrap()
                .extend(opts.as_object().unwrap().clone());
            let m = app.err("/dapi/invite/robot", body.clone(), 400, code).await;
            assert!(m.starts_with(field), "[{backend}] {body}: {m}");
        }
        assert_eq!(
            sessions(&app).await,
            0,
            "[{backend}] no robot session was queued"
        );
        assert_eq!(
            calls(&app).await,
            calls_before,
            "[{backend}] no call was created"
        );
        assert!(
            app.state
                .store()
                .channel_sessions(&common::channel(ch.as_str().unwrap()))
                .await
                .unwrap()
                .is_empty()
        );
        expect_none(&mut ws, "offer", 300).await;
    }
}

#[tokio::test]
async fn dapi_bridges_is_checked_at_start_without_showing_the_secret() {
    let (url, _dir) = common::fresh_db("sqlite").await;
    for (raw, want) in [
        (
            r#"{"b": {"url": "wss://h/x", "secret": "top-secret", "format": "pcm16", "rate": 44100}}"#,
            "rate 44100",
        ),
        (
            r#"{"b": {"url": "wss://h/x", "secret": "top-secret", "format": "flac"}}"#,
            "format",
        ),
        (
            r#"{"b": {"url": "http://h/x", "secret": "top-secret", "format": "opus"}}"#,
            "ws://",
        ),
        ("top-secret", "not valid JSON"),
    ] {
        let mut c = api::config::Config::for_tests(&url);
        c.dispatch.bridges = Some(api::config::Secret::new(raw));
        let e = match api::Application::build(c).await {
            Ok(_) => panic!("{raw} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("DAPI_BRIDGES") && e.contains(want), "{e}");
        assert!(!e.contains("top-secret"), "{e}");
    }
    // and the configuration's Debug never shows it either
    let mut c = api::config::Config::for_tests(&url);
    c.dispatch.bridges = Some(api::config::Secret::new(BRIDGES));
    assert!(!format!("{c:?}").contains("bridge-secret-1"));
}
