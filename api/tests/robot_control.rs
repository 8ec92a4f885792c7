//! `POST /dapi/robot/control` over real HTTP, relayed over a real agent link to a test
//! agent (a WebSocket client speaking docs/agent-protocol.md): each action reaches the
//! agent as `control {session_id, seq, action...}` and the request is answered with the
//! agent's `control_ack`; controls and reported marks go on the timeline; 400s name the
//! field; 409 `no_robot`; 504 when the agent stays silent; jwt mode for members only; and
//! across two instances on PostgreSQL (the agent on one, the request on the other).

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use std::time::{Duration, Instant};

use api::store::Store;
use common::agent_ws::{Ws, agent, expect, send};
use common::robot::{jwt, jwt_mode, post_as, take_offer, timeline_of, upload_asset, wait_running};
use common::{TestApp, backends, spawn_app_with, two_on_postgres};
use serde_json::{Value, json};

/// A call with a running robot on `ws`: (channel, session id).
async fn robot_call(app: &TestApp, ws: &mut Ws) -> (String, i64) {
    let call = app.ok("/dapi/call/robot", json!({"src_uid": "1001"})).await;
    let s = take_offer(ws).await;
    let id = s["id"].as_i64().unwrap();
    wait_running(app, id).await;
    (call["channel"].as_str().unwrap().to_owned(), id)
}

/// Sends `body` to `/dapi/robot/control` on `app` while the test agent answers the
/// `control` it receives with `ack` (fields merged into the control_ack); returns the
/// control the agent saw and the HTTP answer.
async fn control_with_ack(
    app: &TestApp,
    ws: &mut Ws,
    body: Value,
    ack: Value,
) -> (Value, u16, Value) {
    let (base, http) = (app.base.clone(), app.http.clone());
    let req = tokio::spawn(async move {
        let r = http
            .post(format!("{base}/dapi/robot/control"))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    let c = expect(ws, "control", 3).await;
    let mut a = json!({"type": "control_ack", "session_id": c["session_id"], "seq": c["seq"]});
    a.as_object_mut()
        .unwrap()
        .extend(ack.as_object().unwrap().clone());
    send(ws, a).await;
    let (status, v) = req.await.unwrap();
    (c, status, v)
}

#[tokio::test]
async fn every_action_is_relayed_and_answered_with_the_agents_state() {
    for backend in backends() {
        let app = spawn_app_with(backend, api::clock::Clock::system(), |_| {}).await;
        upload_asset(&app, "jingle").await;
        let mut ws = agent(&app, "ag-ctl", 2).await;
        let (ch, id) = robot_call(&app, &mut ws).await;

        let playing = json!({"state": "playing", "item": "default", "position_ms": 1200, "queue": ["jingle"]});
        let (c, status, v) = control_with_ack(
            &app,
            &mut ws,
            json!({"channel": ch, "uid": "1001", "action": "play", "audio": "jingle", "mode": "append", "loop": 1, "gain_db": -3}),
            playing.clone(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"], playing, "answered with the ack's state");
        assert_eq!(c["session_id"], id);
        assert!(c["seq"].as_u64().is_some());
        assert_eq!(
            (
                c["action"].clone(),
                c["audio"].clone(),
                c["mode"].clone(),
                c["loop"].clone(),
                c["gain_db"].clone()
            ),
            (
                json!("play"),
                json!("jingle"),
                json!("append"),
                json!(1),
                json!(-3.0)
            )
        );

        // Every other action, with its fields, and a different state each time.
        let cases = [
            (
                json!({"action": "pause"}),
                json!({"state": "paused", "item": "default", "position_ms": 1300, "queue": ["jingle"]}),
                json!({}),
            ),
            (
                json!({"action": "resume"}),
                json!({"state": "playing", "item": "default", "position_ms": 1300, "queue": ["jingle"]}),
                json!({}),
            ),
            (
                json!({"action": "seek", "position_ms": 500}),
                json!({"state": "playing", "item": "default", "position_ms": 500, "queue": []}),
                json!({"position_ms": 500}),
            ),
            (
                json!({"action": "gain", "gain_db": 6}),
                json!({"state": "playing", "item": "default", "position_ms": 520, "queue": []}),
                json!({"gain_db": 6.0}),
            ),
            (
                json!({"action": "mark", "name": "after-greeting"}),
                json!({"state": "playing", "item": "default", "position_ms": 540, "queue": []}),
                json!({"name": "after-greeting"}),
            ),
            (
                json!({"action": "play", "audio": "jingle", "mode": "replace"}),
                json!({"state": "playing", "item": "jingle", "position_ms": 0, "queue": []}),
                json!({"mode": "replace", "loop": 0, "gain_db": 0.0}),
            ),
            (
                json!({"action": "clear"}),
                json!({"state": "idle"}),
                json!({}),
            ),
        ];
        let mut seqs = vec![c["seq"].as_u64().unwrap()];
        for (action, ack, fields) in cases {
            let mut body = json!({"channel": ch, "uid": "1001"});
            body.as_object_mut()
                .unwrap()
                .extend(action.as_object().unwrap().clone());
            let (c, status, v) = control_with_ack(&app, &mut ws, body, ack.clone()).await;
            assert_eq!(status, 200, "{action} -> {v}");
            assert_eq!(c["action"], action["action"]);
            for (k, want) in fields.as_object().unwrap() {
                assert_eq!(&c[k], want, "{action}: field {k} of {c}");
            }
            let mut want = ack.clone();
            if want.get("item").is_none() {
                want = json!({"state": "idle", "item": null, "position_ms": 0, "queue": []});
            }
            assert_eq!(v["data"], want, "{action}");
            seqs.push(c["seq"].as_u64().unwrap());
        }
        let mut sorted = seqs.clone();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            seqs.len(),
            "every control has its own seq: {seqs:?}"
        );

        // An agent that cannot apply a control says so: 409 control_failed.
        let (_, status, v) = control_with_ack(
            &app,
            &mut ws,
            json!({"channel": ch, "uid": "1001", "action": "seek", "position_ms": 99999999}),
            json!({"state": "idle", "error": "seek past the end"}),
        )
        .await;
        assert_eq!(
            (status, v["error"]["code"].clone()),
            (409, json!("control_failed")),
            "{v}"
        );

        // Marks reported by the agent go on the timeline; so does every control.
        send(&mut ws, json!({"type": "mark", "session_id": id, "name": "after-greeting", "state": "played", "position_ms": 4020})).await;
        send(
            &mut ws,
            json!({"type": "mark", "session_id": id, "name": "later", "state": "cleared"}),
        )
        .await;
        // a mark for a session this agent does not hold is dropped
        send(
            &mut ws,
            json!({"type": "mark", "session_id": id + 1000, "name": "ghost", "state": "played"}),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let marks = loop {
            let m = timeline_of(&app, &ch, "robot_mark").await;
            if m.len() >= 2 || Instant::now() > deadline {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let got: Vec<(Option<String>, Option<String>, String)> = marks
            .iter()
            .map(|e| (e.uid.clone(), e.detail.clone(), e.effect.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    Some("robot".into()),
                    Some("after-greeting".into()),
                    "played at 4020 ms".into()
                ),
                (Some("robot".into()), Some("later".into()), "cleared".into()),
            ]
        );
        let controls = timeline_of(&app, &ch, "robot_control").await;
        assert_eq!(controls.len(), 9, "{controls:?}");
        assert_eq!(controls[0].uid.as_deref(), Some("1001"));
        assert!(
            controls[0]
                .detail
                .as_deref()
                .unwrap()
                .contains("\"action\":\"play\""),
            "{controls:?}"
        );
        assert_eq!(controls[0].effect, "playing");
        assert_eq!(controls[1].effect, "paused");
        assert_eq!(controls[7].effect, "idle");
        assert!(controls[8].effect.starts_with("failed: seek past the end"));
    }
}

#[tokio::test]
async fn bad_controls_are_400_naming_the_field() {
    let app = spawn_app_with("sqlite", api::clock::Clock::system(), |_| {}).await;
    let mut ws = agent(&app, "ag-400", 1).await;
    let (ch, _) = robot_call(&app, &mut ws).await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"action": "dance"}), "invalid_field", "action"),
        (json!({}), "missing_field", "action"),
        (json!({"action": "play"}), "missing_field", "audio"),
        (
            json!({"action": "play", "audio": "no such"}),
            "invalid_field",
            "audio",
        ),
        (
            json!({"action": "play", "audio": "missing"}),
            "unknown_audio",
            "audio",
        ),
        (
            json!({"action": "play", "audio": "default", "mode": "insert"}),
            "invalid_field",
            "mode",
        ),
        (
            json!({"action": "play", "audio": "default", "loop": -1}),
            "invalid_field",
            "loop",
        ),
        (
            json!({"action": "play", "audio": "default", "gain_db": 13}),
            "invalid_field",
            "gain_db",
        ),
        (json!({"action": "gain"}), "missing_field", "gain_db"),
        (
            json!({"action": "gain", "gain_db": -31}),
            "invalid_field",
            "gain_db",
        ),
        (
            json!({"action": "gain", "gain_db": "max"}),
            "invalid_field",
            "gain_db",
        ),
        (json!({"action": "seek"}), "missing_field", "position_ms"),
        (
            json!({"action": "seek", "position_ms": -5}),
            "invalid_field",
            "position_ms",
        ),
        (json!({"action": "mark"}), "missing_field", "name"),
        (
            json!({"action": "mark", "name": ""}),
            "invalid_field",
            "name",
        ),
        (
            json!({"action": "mark", "name": "x".repeat(129)}),
            "invalid_field",
            "name",
        ),
    ];
    for (action, code, field) in cases {
        let mut body = json!({"channel": ch, "uid": "1001"});
        body.as_object_mut()
            .unwrap()
            .extend(action.as_object().unwrap().clone());
        let m = app
            .err("/dapi/robot/control", body.clone(), 400, code)
            .await;
        assert!(m.starts_with(field), "{body}: {m}");
    }
    common::agent_ws::expect_none(&mut ws, "control", 200).await;
    assert!(timeline_of(&app, &ch, "robot_control").await.is_empty());
}

#[tokio::test]
async fn no_robot_is_409_and_a_silent_agent_is_504() {
    for backend in backends() {
        let app = spawn_app_with(backend, api::clock::Clock::system(), |_| {}).await;
        // a call without a robot
        let ch = app
            .ok("/dapi/call/user", json!({"src_uid": "1", "dst_uid": ["2"]}))
            .await["channel"]
            .clone();
        let body = json!({"channel": ch, "uid": "1", "action": "pause"});
        app.err("/dapi/robot/control", body, 409, "no_robot").await;
        // a robot queued but not running (no agent)
        let queued = app.ok("/dapi/call/robot", json!({"src_uid": "3"})).await["channel"].clone();
        app.err(
            "/dapi/robot/control",
            json!({"channel": queued, "uid": "3", "action": "pause"}),
            409,
            "no_robot",
        )
        .await;
        // an unknown channel
        app.err(
            "/dapi/robot/control",
            json!({"channel": "ch_nope", "uid": "3", "action": "pause"}),
            404,
            "not_found",
        )
        .await;

        // a running robot whose agent never answers
        let mut ws = agent(&app, "ag-silent", 2).await;
        let _ = take_offer(&mut ws).await; // the queued one
        let (ch, _) = robot_call(&app, &mut ws).await;
        let t = Instant::now();
        let body = json!({"channel": ch, "uid": "1001", "action": "pause"});
        let (base, http) = (app.base.clone(), app.http.clone());
        let req = tokio::spawn(async move {
            let r = http
                .post(format!("{base}/dapi/robot/control"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        });
        let c = expect(&mut ws, "control", 3).await; // received, never answered
        assert_eq!(c["action"], "pause");
        let (status, v) = req.await.unwrap();
        let waited = t.elapsed();
        assert_eq!(
            (status, v["error"]["code"].clone()),
            (504, json!("agent_timeout")),
            "{v}"
        );
        assert!(
            waited >= Duration::from_millis(1900),
            "answered after {waited:?}"
        );
        // a late ack is ignored
        send(&mut ws, json!({"type": "control_ack", "session_id": c["session_id"], "seq": c["seq"], "state": "paused"})).await;
        let tl = timeline_of(&app, &ch, "robot_control").await;
        assert_eq!(tl.last().unwrap().effect, "no answer within 2 s");

        // after quit/robot (leave requested) there is no robot to steer
        app.ok("/dapi/quit/robot", json!({"uid": "1001", "channel": ch}))
            .await;
        app.err(
            "/dapi/robot/control",
            json!({"channel": ch, "uid": "1001", "action": "pause"}),
            409,
            "no_robot",
        )
        .await;
    }
}

#[tokio::test]
async fn jwt_mode_lets_only_members_control_the_robot() {
    for backend in backends() {
        let app = spawn_app_with(backend, api::clock::Clock::system(), jwt_mode).await;
        let mut ws = agent(&app, "ag-jwt", 1).await;
        let (s, call) = post_as(
            &app,
            "/dapi/call/robot",
            Some(&jwt("1001")),
            json!({"src_uid": "1001"}),
        )
        .await;
        assert_eq!(s, 200, "{call}");
        let ch = call["data"]["channel"].as_str().unwrap().to_owned();
        let id = take_offer(&mut ws).await["id"].as_i64().unwrap();
        wait_running(&app, id).await;
        let body = |uid: &str| json!({"channel": ch, "uid": uid, "action": "pause"});
        // no token, a token for someone else, a non-member with their own token
        assert_eq!(
            post_as(&app, "/dapi/robot/control", None, body("1001"))
                .await
                .0,
            401
        );
        assert_eq!(
            post_as(&app, "/dapi/robot/control", Some(&jwt("666")), body("1001"))
                .await
                .0,
            403
        );
        let (s, v) = post_as(&app, "/dapi/robot/control", Some(&jwt("666")), body("666")).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (403, json!("forbidden")),
            "{v}"
        );
        common::agent_ws::expect_none(&mut ws, "control", 200).await;
        // the member
        let (base, http, token) = (app.base.clone(), app.http.clone(), jwt("1001"));
        let b = body("1001");
        let req = tokio::spawn(async move {
            let r = http
                .post(format!("{base}/dapi/robot/control"))
                .bearer_auth(token)
                .json(&b)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        });
        let c = expect(&mut ws, "control", 3).await;
        send(&mut ws, json!({"type": "control_ack", "session_id": c["session_id"], "seq": c["seq"], "state": "paused", "item": "default"})).await;
        assert_eq!(req.await.unwrap(), 200);
    }
}

/// Waits until `n` connections listen on the control bus.
async fn wait_for_control_listeners(app: &TestApp, n: i64) {
    let Store::Postgres(pg) = app.state.store() else {
        panic!("PostgreSQL only")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let k: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%dapi_robot_control%'",
        )
        .fetch_one(pg.pool())
        .await
        .unwrap();
        if k >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{k} of {n} instances listen for controls"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_control_reaches_an_agent_connected_to_another_instance() {
    let Some((a, b)) = two_on_postgres(
        "a_control_reaches_an_agent_connected_to_another_instance",
        |_| {},
    )
    .await
    else {
        return;
    };
    wait_for_control_listeners(&a, 2).await;
    // The agent is on B; the call and the controls go through A.
    let mut ws = agent(&b, "ag-far", 2).await;
    let call = a.ok("/dapi/call/robot", json!({"src_uid": "42"})).await;
    let ch = call["channel"].as_str().unwrap().to_owned();
    let id = take_offer(&mut ws).await["id"].as_i64().unwrap();
    wait_running(&a, id).await;
    for (i, action) in ["pause", "resume", "clear"].into_iter().enumerate() {
        let state = ["paused", "playing", "idle"][i];
        let (c, status, v) = control_with_ack(
            &a,
            &mut ws,
            json!({"channel": ch, "uid": "42", "action": action}),
            json!({"state": state, "item": if state == "idle" { Value::Null } else { json!("default") }, "position_ms": 100 * i, "queue": []}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(c["action"], action);
        assert_eq!(c["session_id"], id);
        assert_eq!(v["data"]["state"], state, "{v}");
        assert_eq!(v["data"]["position_ms"], 100 * i);
    }
    // the other way round: the request on B (which holds the agent) works too
    let (_, status, v) = control_with_ack(
        &b,
        &mut ws,
        json!({"channel": ch, "uid": "42", "action": "pause"}),
        json!({"state": "paused", "item": "default"}),
    )
    .await;
    assert_eq!((status, v["data"]["state"].clone()), (200, json!("paused")));
    // and a silent agent on B is a 504 on A
    let t = Instant::now();
    let (base, http) = (a.base.clone(), a.http.clone());
    let body = json!({"channel": ch, "uid": "42", "action": "resume"});
    let req = tokio::spawn(async move {
        http.post(format!("{base}/dapi/robot/control"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    let _ = expect(&mut ws, "control", 3).await;
    assert_eq!(req.await.unwrap(), 504);
    assert!(t.elapsed() >= Duration::from_millis(1900));
}
