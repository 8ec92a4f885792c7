//! The agent link (`GET /agent`) and audio assets over real sockets: authentication,
//! register/offer/accept/status/renew/leave, placement across agents, lease lapse and
//! re-dispatch with the playback position, rejects, and asset upload validation.
//! The peers here are WebSocket clients speaking the documented protocol; the real
//! robot-agent process is exercised by the end-to-end tests in `tests/`.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use std::time::Duration;

use common::agent_ws::{agent, agents, connect, expect, expect_none, send, session_state};
use common::{backends, spawn_app_with};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn agent_link_needs_its_key() {
    let app = spawn_app_with("sqlite", api::clock::Clock::system(), |_| {}).await;
    assert_eq!(connect(&app, None).await.err(), Some(401));
    assert_eq!(connect(&app, Some("wrong")).await.err(), Some(401));
    let app = spawn_app_with("sqlite", api::clock::Clock::system(), |c| {
        c.dispatch.agent_key = None
    })
    .await;
    assert_eq!(
        connect(&app, Some("anything")).await.err(),
        Some(403),
        "refused without DAPI_AGENT_KEY"
    );
    // the first message must be register
    let app = spawn_app_with("sqlite", api::clock::Clock::system(), |_| {}).await;
    let mut ws = connect(&app, Some("test-agent-key")).await.unwrap();
    send(&mut ws, json!({"type": "renew", "session_ids": []})).await;
    let e = expect(&mut ws, "error", 5).await;
    assert_eq!(e["code"], "register_first");
}

#[tokio::test]
async fn offer_accept_play_and_quit_reaches_the_agent_fast() {
    for backend in backends() {
        let app = spawn_app_with(backend, api::clock::Clock::system(), |_| {}).await;
        let mut ws = agent(&app, "ag1", 2).await;
        let call = app.ok("/dapi/call/robot", json!({"src_uid": "1234"})).await;
        let ch = call["channel"].as_str().unwrap();
        let offer = expect(&mut ws, "offer", 3).await;
        let s = &offer["session"];
        assert_eq!(s["channel"], ch);
        assert_eq!(s["uid"], "robot");
        assert_eq!(s["audio"], "default");
        assert_eq!(s["loop"], false);
        let issuer = api::token::TokenIssuer::new(
            "970CA35de60c44645bbae8a215061b33".into(),
            "5CFd2fd1755d40ecb72977518be15d3b".into(),
            api::token::TokenVersion::V006,
            600,
        );
        issuer
            .verify(
                s["token"].as_str().unwrap(),
                ch,
                "robot",
                app.state.clock().now_secs(),
            )
            .unwrap();
        let id = s["id"].as_i64().unwrap();
        send(&mut ws, json!({"type": "accept", "session_id": id})).await;
        send(
            &mut ws,
            json!({"type": "status", "session_id": id, "state": "joining"}),
        )
        .await;
        send(
            &mut ws,
            json!({"type": "status", "session_id": id, "state": "playing", "position_ms": 0}),
        )
        .await;
        send(&mut ws, json!({"type": "renew", "session_ids": [id]})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            session_state(&app, id).await["state"],
            "running",
            "[{backend}]"
        );
        // quit/robot: the agent is told within a second
        let t0 = std::time::Instant::now();
        app.ok("/dapi/quit/robot", json!({"channel": ch, "uid": "1234"}))
            .await;
        let leave = expect(&mut ws, "leave", 1).await;
        assert_eq!(leave["session_id"], id);
        assert!(t0.elapsed() < Duration::from_secs(1));
        send(
            &mut ws,
            json!({"type": "status", "session_id": id, "state": "left", "detail": "kicked"}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(session_state(&app, id).await["state"], "left");
        // the agents endpoint shows the free slot again
        assert_eq!(agents(&app).await[0]["load"], 0);
        // a robot still queued (no agent) is cancelled by quit instead
        drop(ws);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let call = app.ok("/dapi/call/robot", json!({"src_uid": "1234"})).await;
        app.ok(
            "/dapi/quit/robot",
            json!({"channel": call["channel"], "uid": "1234"}),
        )
        .await;
        let r = app
            .http
            .get(format!(
                "{}/admin/robot/sessions?channel={}",
                app.base,
                call["channel"].as_str().unwrap()
            ))
            .bearer_auth("test-admin-key")
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["data"][0]["state"], "cancelled");
    }
}

#[tokio::test]
async fn two_agents_of_capacity_one_take_one_each_and_the_third_waits() {
    for backend in backends() {
        let app = spawn_app_with(backend, api::clock::Clock::system(), |_| {}).await;
        let mut a = agent(&app, "a", 1).await;
        let mut b = agent(&app, "b", 1).await;
        app.ok("/dapi/call/robot", json!({"src_uid": "1"})).await;
        app.ok("/dapi/call/robot", json!({"src_uid": "2"})).await;
        let oa = expect(&mut a, "offer", 3).await;
        let ob = expect(&mut b, "offer", 3).await;
        let (ia, ib) = (
            oa["session"]["id"].as_i64().unwrap(),
            ob["session"]["id"].as_i64().unwrap(),
        );
        assert_ne!(ia, ib);
        send(&mut a, json!({"type": "accept", "session_id": ia})).await;
        send(&mut b, json!({"type": "accept", "session_id": ib})).await;
        let third = app.ok("/dapi/call/robot", json!({"src_uid": "3"})).await;
        expect_none(&mut a, "offer", 600).await;
        expect_none(&mut b, "offer", 10).await;
        let r = app
            .http
            .get(format!("{}/admin/queue", app.base))
            .bearer_auth("test-admin-key")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.json::<Value>().await.unwrap()["data"]["depth"],
            1,
            "[{backend}] the third call waits"
        );
        // a finishes: it gets the third
        send(
            &mut a,
            json!({"type": "status", "session_id": ia, "state": "left", "detail": "audio ended"}),
        )
        .await;
        let o3 = expect(&mut a, "offer", 3).await;
        assert_eq!(o3["session"]["channel"], third["channel"]);
    }
}

#[tokio::test]
async fn lapsed_lease_is_offered_to_another_agent_with_its_position() {
    for backend in backends() {
        let app = spawn_app_with(backend, api::clock::Clock::system(), |c| {
            c.dispatch.lease = Duration::from_secs(1);
            c.dispatch.poll = Duration::from_millis(100);
        })
        .await;
        let mut a = agent(&app, "dies", 1).await;
        app.ok("/dapi/call/robot", json!({"src_uid": "1", "loop": true}))
            .await;
        let id = expect(&mut a, "offer", 3).await["session"]["id"]
            .as_i64()
            .unwrap();
        send(&mut a, json!({"type": "accept", "session_id": id})).await;
        send(
            &mut a,
            json!({"type": "status", "session_id": id, "state": "playing", "position_ms": 3200}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The agent goes silent without closing its socket (a partition, a hung process):
        // only the lease can tell. (A closed socket fails over at once:
        // `a_closed_link_offers_its_session_to_another_agent_at_once`.)
        let _silent = a;
        let mut b = agent(&app, "survivor", 1).await;
        let o = expect(&mut b, "offer", 5).await;
        assert_eq!(o["session"]["id"], id, "[{backend}]");
        assert_eq!(
            o["session"]["position_ms"], 3200,
            "resumes near where it stopped"
        );
        assert_eq!(o["session"]["attempt"], 2);
        let s = session_state(&app, id).await;
        assert_eq!(s["redispatches"], 1);
        assert!(s["errors"][0].as_str().unwrap().contains("lease lapsed"));
    }
}

#[tokio::test]
async fn a_closed_link_offers_its_session_to_another_agent_at_once() {
    for backend in backends() {
        // Lease and poll far away: only the closed link can explain what follows.
        let app = spawn_app_with(backend, api::clock::Clock::system(), |c| {
            c.dispatch.lease = Duration::from_secs(60);
            c.dispatch.poll = Duration::from_millis(60_000);
        })
        .await;
        let mut a = agent(&app, "killed", 1).await;
        app.ok("/dapi/call/robot", json!({"src_uid": "1", "loop": true}))
            .await;
        let id = expect(&mut a, "offer", 3).await["session"]["id"]
            .as_i64()
            .unwrap();
        send(&mut a, json!({"type": "accept", "session_id": id})).await;
        send(
            &mut a,
            json!({"type": "status", "session_id": id, "state": "playing", "position_ms": 5400}),
        )
        .await;
        let mut b = agent(&app, "heir", 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        expect_none(&mut b, "offer", 10).await;
        let t0 = std::time::Instant::now();
        drop(a); // the process dies: its socket closes
        let o = expect(&mut b, "offer", 5).await;
        println!(
            "[{backend}] link closed -> offer to another agent: {:?}",
            t0.elapsed()
        );
        assert_eq!(o["session"]["id"], id, "[{backend}]");
        assert_eq!(o["session"]["position_ms"], 5400, "resumes where it was");
        assert_eq!(
            o["session"]["attempt"], 1,
            "a crash while playing is not an attempt"
        );
        let s = session_state(&app, id).await;
        assert_eq!(s["redispatches"], 1, "{s:#}");
        assert!(
            s["errors"][0]
                .as_str()
                .unwrap()
                .contains("link to agent killed closed"),
            "{s:#}"
        );
        send(&mut b, json!({"type": "accept", "session_id": id})).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(session_state(&app, id).await["agent_id"], "heir");

        // The first agent comes back still claiming the session: it is told to leave it.
        let mut back = connect(&app, Some("test-agent-key")).await.unwrap();
        send(
            &mut back,
            json!({"type": "register", "agent_id": "killed", "capacity": 1, "version": "test", "sessions": [id]}),
        )
        .await;
        expect(&mut back, "registered", 5).await;
        assert_eq!(expect(&mut back, "leave", 2).await["session_id"], id);
        assert_eq!(session_state(&app, id).await["agent_id"], "heir");
    }
}

#[tokio::test]
async fn an_agent_that_reconnects_before_anyone_takes_its_session_keeps_it() {
    for backend in backends() {
        let app = spawn_app_with(backend, api::clock::Clock::system(), |c| {
            c.dispatch.lease = Duration::from_secs(60);
            c.dispatch.poll = Duration::from_millis(60_000);
        })
        .await;
        let mut a = agent(&app, "blip", 1).await;
        app.ok("/dapi/call/robot", json!({"src_uid": "1", "loop": true}))
            .await;
        let id = expect(&mut a, "offer", 3).await["session"]["id"]
            .as_i64()
            .unwrap();
        send(&mut a, json!({"type": "accept", "session_id": id})).await;
        send(
            &mut a,
            json!({"type": "status", "session_id": id, "state": "playing", "position_ms": 800}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The link drops but the agent lives on (and keeps playing): the session is queued
        // again at once, and no other agent is there to take it.
        drop(a);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while session_state(&app, id).await["state"] != "queued" {
            assert!(
                std::time::Instant::now() < deadline,
                "[{backend}] not queued again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // It reconnects holding the session: it gets it back instead of a leave (nothing
        // else plays it), and it is neither offered again nor counted as re-dispatched.
        let mut again = connect(&app, Some("test-agent-key")).await.unwrap();
        send(
            &mut again,
            json!({"type": "register", "agent_id": "blip", "capacity": 1, "version": "test", "sessions": [id]}),
        )
        .await;
        expect(&mut again, "registered", 5).await;
        expect_none(&mut again, "leave", 500).await;
        let s = session_state(&app, id).await;
        assert_eq!(
            (
                &s["state"],
                &s["agent_id"],
                &s["redispatches"],
                &s["attempts"]
            ),
            (&json!("running"), &json!("blip"), &json!(0), &json!(1)),
            "[{backend}] {s:#}"
        );
        assert_eq!(agents(&app).await[0]["sessions"], json!([id]));
    }
}

#[tokio::test]
async fn rejected_offers_are_offered_again_and_stale_accepts_are_told_to_leave() {
    let app = spawn_app_with("sqlite", api::clock::Clock::system(), |c| {
        c.dispatch.poll = Duration::from_millis(100)
    })
    .await;
    let mut a = agent(&app, "picky", 1).await;
    app.ok("/dapi/call/robot", json!({"src_uid": "1"})).await;
    let id = expect(&mut a, "offer", 3).await["session"]["id"]
        .as_i64()
        .unwrap();
    send(
        &mut a,
        json!({"type": "reject", "session_id": id, "reason": "busy"}),
    )
    .await;
    let again = expect(&mut a, "offer", 4).await;
    assert_eq!(again["session"]["id"], id);
    // accepting something never offered: told to leave
    send(&mut a, json!({"type": "accept", "session_id": 999_999})).await;
    assert_eq!(expect(&mut a, "leave", 2).await["session_id"], 999_999);
    // renewing something not held: told to leave
    send(&mut a, json!({"type": "renew", "session_ids": [888_888]})).await;
    assert_eq!(expect(&mut a, "leave", 2).await["session_id"], 888_888);
    // garbage
    a.send(Message::Text("{nope".into())).await.unwrap();
    assert_eq!(expect(&mut a, "error", 2).await["code"], "bad_message");
}

#[tokio::test]
async fn drain_stops_new_offers() {
    let app = spawn_app_with("sqlite", api::clock::Clock::system(), |_| {}).await;
    let mut a = agent(&app, "drainme", 5).await;
    let r = app
        .http
        .post(format!("{}/admin/agents/drainme/drain", app.base))
        .bearer_auth("test-admin-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    expect(&mut a, "drain", 2).await;
    app.ok("/dapi/call/robot", json!({"src_uid": "1"})).await;
    expect_none(&mut a, "offer", 1200).await;
    let r = app
        .http
        .post(format!("{}/admin/agents/nobody/drain", app.base))
        .bearer_auth("test-admin-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn assets_are_validated_by_decoding_and_served_to_agents() {
    for backend in backends() {
        let app = spawn_app_with(backend, api::clock::Clock::system(), |_| {}).await;
        let wav = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/audio/speech_16000_mono_4s.wav"
        ))
        .or_else(|_| std::fs::read("/work/shared/fixtures/audio/speech_16000_mono_4s.wav"))
        .expect("the shared audio fixtures");
        let put = |name: &str, body: Vec<u8>, key: &str| {
            app.http
                .put(format!("{}/admin/audio/{name}", app.base))
                .bearer_auth(key)
                .body(body)
                .send()
        };
        assert_eq!(
            put("speech", wav.clone(), "wrong").await.unwrap().status(),
            401
        );
        let r = put("speech", wav.clone(), "test-admin-key").await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["data"]["duration_ms"], 4000, "[{backend}]");
        // garbage, empty and bad names are refused with a reason
        let r = put("junk", b"definitely not audio".to_vec(), "test-admin-key")
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "invalid_audio"
        );
        assert_eq!(
            put("empty", vec![], "test-admin-key")
                .await
                .unwrap()
                .status(),
            400
        );
        assert_eq!(
            put("bad.name", wav.clone(), "test-admin-key")
                .await
                .unwrap()
                .status(),
            400
        );
        // list: the shipped default and ours
        let r = app
            .http
            .get(format!("{}/admin/audio", app.base))
            .bearer_auth("test-admin-key")
            .send()
            .await
            .unwrap();
        let names: Vec<String> = r.json::<Value>().await.unwrap()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, vec!["default", "speech"]);
        // agents fetch with their key, with an ETag
        let r = app
            .http
            .get(format!("{}/agent/audio/speech", app.base))
            .bearer_auth("test-agent-key")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(r.bytes().await.unwrap().to_vec(), wav);
        let r = app
            .http
            .get(format!("{}/agent/audio/speech", app.base))
            .bearer_auth("test-agent-key")
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        assert_eq!(
            app.http
                .get(format!("{}/agent/audio/speech", app.base))
                .bearer_auth("test-admin-key")
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            app.http
                .get(format!("{}/agent/audio/nothing", app.base))
                .bearer_auth("test-agent-key")
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        // call/robot names an asset: unknown ones are a 400, known ones are offered
        app.err(
            "/dapi/call/robot",
            json!({"src_uid": "1", "audio": "nothing"}),
            400,
            "unknown_audio",
        )
        .await;
        app.ok(
            "/dapi/call/robot",
            json!({"src_uid": "1", "audio": "speech"}),
        )
        .await;
        // delete
        let r = app
            .http
            .delete(format!("{}/admin/audio/speech", app.base))
            .bearer_auth("test-admin-key")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = app
            .http
            .delete(format!("{}/admin/audio/speech", app.base))
            .bearer_auth("test-admin-key")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
}

/// A WAV file of `secs` seconds of 48 kHz stereo 16-bit noise-like audio (`seed` varies it).
fn big_wav(secs: u32, seed: u32) -> Vec<u8> {
    let frames = 48_000 * secs;
    let data_len = frames * 4;
    let mut v = Vec::with_capacity(44 + data_len as usize);
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&48_000u32.to_le_bytes());
    v.extend_from_slice(&(48_000u32 * 4).to_le_bytes());
    v.extend_from_slice(&4u16.to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    for _ in 0..frames * 2 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.extend_from_slice(&((x >> 20) as i16 - 2048).to_le_bytes());
    }
    v
}

#[tokio::test]
async fn a_large_asset_is_served_in_slices_whole_and_a_replaced_one_breaks_off() {
    for backend in backends() {
        let app = spawn_app_with(backend, api::clock::Clock::system(), |_| {}).await;
        let put = |name: &str, body: Vec<u8>| {
            app.http
                .put(format!("{}/admin/audio/{name}", app.base))
                .bearer_auth("test-admin-key")
                .body(body)
                .send()
        };
        // 28.8 MB: many slices, more than the socket buffers between server and client hold
        let first = big_wav(150, 1);
        assert_eq!(put("big", first.clone()).await.unwrap().status(), 200);
        let get = || {
            app.http
                .get(format!("{}/agent/audio/big", app.base))
                .bearer_auth("test-agent-key")
                .send()
        };
        let r = get().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.content_length(), Some(first.len() as u64), "[{backend}]");
        let body = r.bytes().await.unwrap();
        assert!(
            body.as_ref() == first.as_slice(),
            "[{backend}] the body is the upload"
        );

        // Replaced while a download is under way: the download ends short, never with a
        // mix of the two files. (A raw client with a small receive buffer, so that the
        // kernel cannot take the whole body in before the replacement: loopback autotunes
        // receive buffers up to tens of MB.)
        let addr: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(64 * 1024).unwrap();
        let mut tcp = sock.connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(
            b"GET /agent/audio/big HTTP/1.1\r\nHost: api\r\n\
              Authorization: Bearer test-agent-key\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = vec![0u8; 64 * 1024];
        let n = tcp.read(&mut head).await.unwrap();
        let text = String::from_utf8_lossy(&head[..n]).into_owned();
        assert!(text.starts_with("HTTP/1.1 200"), "[{backend}] {text:.80}");
        let header_len = text.find("\r\n\r\n").unwrap() + 4;
        let second = big_wav(150, 2);
        assert_eq!(put("big", second).await.unwrap().status(), 200);
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await; // ends by close or reset
        let got = n - header_len + rest.len();
        assert!(
            got < first.len(),
            "[{backend}] the download of a replaced asset must break off ({got} bytes received)"
        );
    }
}

#[tokio::test]
async fn an_oversized_asset_is_a_json_413_and_an_unauthenticated_one_a_401() {
    let app = spawn_app_with("sqlite", api::clock::Clock::system(), |c| {
        c.dispatch.max_asset_bytes = 1000;
    })
    .await;
    let put = |key: &str| {
        app.http
            .put(format!("{}/admin/audio/big", app.base))
            .bearer_auth(key)
            .body(vec![0u8; 5000])
            .send()
    };
    let r = put("test-admin-key").await.unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["success"], false);
    // The key is checked before the body is read.
    assert_eq!(put("wrong").await.unwrap().status(), 401);
}

#[tokio::test]
async fn a_backlog_larger_than_one_batch_is_offered_without_waiting_for_the_poll() {
    for backend in backends() {
        // The backstop poll is far away: only the loop going on after a full batch (64)
        // can offer the rest of the backlog within the wait below.
        let app = spawn_app_with(backend, api::clock::Clock::system(), |c| {
            c.dispatch.poll = Duration::from_millis(60_000)
        })
        .await;
        const N: usize = 150;
        for i in 0..N {
            app.ok(
                "/dapi/call/robot",
                json!({"src_uid": format!("{}", 5000 + i)}),
            )
            .await;
        }
        let mut ws = agent(&app, "backlog", 1000).await;
        let mut offered = std::collections::HashSet::new();
        while offered.len() < N {
            let o = expect(&mut ws, "offer", 5).await;
            assert!(
                offered.insert(o["session"]["id"].as_i64().unwrap()),
                "[{backend}] offered twice: {o}"
            );
        }
    }
}
