//! Every `/dapi` endpoint over real HTTP against the real server on port 0, on SQLite
//! and (when TEST_DATABASE_URL is set) PostgreSQL: the seed's own example bodies, every
//! error path, `call/msg` 0 -> 1 and the recent window, calltask pagination, and 100
//! concurrent `call/user` requests.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use std::collections::HashSet;
use std::time::Duration;

use api::clock::Clock;
use api::token::TokenIssuer;
use common::{TestApp, backends, spawn_app, spawn_app_with};
use serde_json::{Value, json};

const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";

fn is_generated_channel(c: &str) -> bool {
    c.len() == 13 && c.starts_with("ch_") && c[3..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Checks a `{appID, channel, uid, token}` answer and that the token verifies.
fn check_token_data(app: &TestApp, d: &Value, channel: Option<&str>, uid: &str) -> String {
    assert_eq!(d["appID"], APP_ID, "{d}");
    assert_eq!(d["uid"], uid, "uid is returned as a string: {d}");
    let ch = d["channel"].as_str().unwrap().to_owned();
    if let Some(c) = channel {
        assert_eq!(ch, c);
    }
    let token = d["token"].as_str().unwrap();
    assert!(
        token.starts_with("006") && token.len() == 115,
        "join-only 006 token: {token}"
    );
    let issuer = TokenIssuer::new(
        APP_ID.into(),
        CERT.into(),
        api::token::TokenVersion::V006,
        600,
    );
    let now = app.state.clock().now_secs();
    let v = issuer.verify(token, &ch, uid, now).unwrap();
    let exp = v.join_expires_at.unwrap();
    assert!(
        (now + 590..=now + 610).contains(&exp),
        "join privilege lasts 600 s"
    );
    let parsed = api::token::parse_006(token).unwrap();
    assert!(
        (now + 86_390..=now + 86_410).contains(&u64::from(parsed.ts)),
        "ts = issue + 24 h"
    );
    ch
}

#[tokio::test]
async fn seed_examples_work_on_every_endpoint() {
    for backend in backends() {
        let app = spawn_app(backend).await;
        // call/user, the seed's body
        let d = app
            .ok("/dapi/call/user", json!({"src_uid": "12356", "dst_uid": ["12345", "34566"], "extra_msg": "your extra message"}))
            .await;
        let ch = check_token_data(&app, &d, None, "12356");
        assert!(is_generated_channel(&ch), "{ch}");

        // call/msg for a callee, the seed's shape
        let rows = app.ok("/dapi/call/msg", json!({"uid": "12345"})).await;
        let row = &rows[0];
        let keys: HashSet<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for k in [
            "id",
            "uid",
            "channel",
            "status",
            "_status_label",
            "createtime",
            "pk",
            "extra_msg",
            "src_uid",
            "role",
        ] {
            assert!(keys.contains(k), "{k} missing in {row}");
        }
        assert_eq!(row["uid"], json!(12345), "numeric uid is a JSON number");
        assert_eq!(row["channel"], ch);
        assert_eq!(row["status"], 0);
        assert_eq!(row["_status_label"], "初始化");
        assert_eq!(row["pk"], row["id"]);
        assert_eq!(row["extra_msg"], "your extra message");
        assert_eq!(row["role"], "callee");
        assert_eq!(row["src_uid"], json!(12356));
        let t = row["createtime"].as_str().unwrap();
        assert!(
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").is_ok(),
            "{t}"
        );

        // call/token for the callee
        let d = app
            .ok("/dapi/call/token", json!({"uid": "12345", "channel": ch}))
            .await;
        check_token_data(&app, &d, Some(&ch), "12345");

        // heartbeat and events
        assert_eq!(
            app.ok(
                "/dapi/call/heartbeat",
                json!({"uid": "12345", "channel": ch})
            )
            .await,
            Value::Null
        );
        assert_eq!(
            app.ok(
                "/dapi/call/event",
                json!({"uid": "12345", "channel": ch, "code": 1, "desp": "接通"})
            )
            .await,
            Value::Null
        );

        // invite/robot and quit/robot
        let d = app
            .ok("/dapi/invite/robot", json!({"uid": "1235", "channel": ch}))
            .await;
        check_token_data(&app, &d, Some(&ch), "1235");
        assert_eq!(
            app.ok("/dapi/quit/robot", json!({"channel": ch, "uid": "1235"}))
                .await,
            Value::Null
        );

        // call/robot
        let d = app
            .ok("/dapi/call/robot", json!({"src_uid": "12345"}))
            .await;
        assert!(is_generated_channel(&check_token_data(
            &app, &d, None, "12345"
        )));

        // calltask/update (insert, seed body with 'id': '') and list
        let task = app
            .ok("/dapi/calltask/update", json!({"id": "", "src_uid": "1234", "dst_uid": ["1235", "1236"], "call_time": "2020-02-02 20:20:00", "taskid": "123"}))
            .await;
        assert_eq!(task["src_uid"], "1234");
        assert_eq!(task["dst_uid"], json!(["1235", "1236"]));
        assert_eq!(task["call_time"], "2020-02-02 20:20:00");
        assert_eq!(task["tone_list"], json!([]));
        assert_eq!(task["pk"], task["id"]);
        let list = app.ok("/dapi/calltask/list", json!({"uid": "1234"})).await;
        assert_eq!(list["rows"][0]["id"], task["id"]);
        assert_eq!(
            list["row_pages"],
            json!({"crt_page": 1, "total": 1, "perpage": 20})
        );

        // the timeline (ext) shows every event in order
        let r = app
            .http
            .get(format!("{}/dapi/call/timeline?channel={ch}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let tl: Value = r.json().await.unwrap();
        let kinds: Vec<&str> = tl["data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            vec![
                "created",
                "heartbeat",
                "event",
                "robot_invited",
                "robot_quit"
            ],
            "[{backend}]"
        );
    }
}

#[tokio::test]
async fn uids_as_numbers_and_single_dst_uid() {
    for backend in backends() {
        let app = spawn_app(backend).await;
        let d = app
            .ok("/dapi/call/user", json!({"src_uid": 1234, "dst_uid": 4321}))
            .await;
        let ch = check_token_data(&app, &d, None, "1234");
        let rows = app.ok("/dapi/call/msg", json!({"uid": 4321})).await;
        assert_eq!(rows[0]["channel"], ch);
        assert_eq!(rows[0]["uid"], json!(4321));
        // a string uid stays a string in rows
        app.ok(
            "/dapi/call/user",
            json!({"src_uid": "alice", "dst_uid": ["bob"]}),
        )
        .await;
        let rows = app.ok("/dapi/call/msg", json!({"uid": "bob"})).await;
        assert_eq!(rows[0]["uid"], "bob");
        assert_eq!(rows[0]["src_uid"], "alice");
        // no callee at all is allowed
        let d = app.ok("/dapi/call/user", json!({"src_uid": "solo"})).await;
        check_token_data(&app, &d, None, "solo");
        // the caller sees its own calls
        let rows = app.ok("/dapi/call/msg", json!({"uid": "alice"})).await;
        assert_eq!(rows[0]["role"], "caller");
        // a uid named twice (not side by side, once as a number), or the caller itself,
        // rings once (schemathesis found the 500 this used to be)
        let d = app
            .ok(
                "/dapi/call/user",
                json!({"src_uid": "dup-a", "dst_uid": ["77", "dup-b", 77, "dup-a", "dup-b"]}),
            )
            .await;
        let ch = d["channel"].as_str().unwrap();
        for uid in ["77", "dup-b"] {
            let rows = app.ok("/dapi/call/msg", json!({"uid": uid})).await;
            let mine: Vec<_> = rows
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["channel"] == ch)
                .collect();
            assert_eq!(mine.len(), 1, "[{backend}] {uid}: {rows}");
            assert_eq!(mine[0]["role"], "callee");
        }
        let rows = app.ok("/dapi/call/msg", json!({"uid": "dup-a"})).await;
        assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
        assert_eq!(rows[0]["role"], "caller");
    }
}

#[tokio::test]
async fn call_msg_moves_0_to_1_and_honours_the_recent_window() {
    for backend in backends() {
        let clock = Clock::manual(1_700_000_000_000);
        let app = spawn_app_with(backend, clock.clone(), |c| {
            c.calls.recent_window = Duration::from_secs(60)
        })
        .await;
        let d = app
            .ok("/dapi/call/user", json!({"src_uid": "1", "dst_uid": ["2"]}))
            .await;
        let ch = d["channel"].as_str().unwrap().to_owned();
        let rows = app.ok("/dapi/call/msg", json!({"uid": "2"})).await;
        assert_eq!(
            (rows[0]["status"].clone(), rows[0]["_status_label"].clone()),
            (json!(0), json!("初始化"))
        );
        let rows = app.ok("/dapi/call/msg", json!({"uid": "2"})).await;
        assert_eq!(
            (rows[0]["status"].clone(), rows[0]["_status_label"].clone()),
            (json!(1), json!("信息已获取"))
        );
        clock.advance_ms(59_000);
        assert_eq!(
            app.ok("/dapi/call/msg", json!({"uid": "2"}))
                .await
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // the call ends: status 2
        app.ok(
            "/dapi/call/event",
            json!({"uid": "1", "channel": ch, "code": 1000}),
        )
        .await;
        let rows = app.ok("/dapi/call/msg", json!({"uid": "2"})).await;
        assert_eq!(
            (rows[0]["status"].clone(), rows[0]["_status_label"].clone()),
            (json!(2), json!("通话已经完结"))
        );
        clock.advance_ms(2_000);
        assert_eq!(
            app.ok("/dapi/call/msg", json!({"uid": "2"})).await,
            json!([]),
            "[{backend}] outside the window"
        );
        // a newer call shows first
        clock.advance_ms(1_000);
        app.ok("/dapi/call/user", json!({"src_uid": "1", "dst_uid": ["2"]}))
            .await;
        clock.advance_ms(1_000);
        let d2 = app
            .ok("/dapi/call/user", json!({"src_uid": "3", "dst_uid": ["2"]}))
            .await;
        let rows = app.ok("/dapi/call/msg", json!({"uid": "2"})).await;
        assert_eq!(rows.as_array().unwrap().len(), 2);
        assert_eq!(rows[0]["channel"], d2["channel"], "newest first");
    }
}

#[tokio::test]
async fn calltask_insert_update_list_paginate_delete() {
    for backend in backends() {
        let app = spawn_app(backend).await;
        let mut ids = Vec::new();
        for i in 0..25 {
            let t = app
                .ok("/dapi/calltask/update", json!({"src_uid": "1234", "dst_uid": ["1235"], "call_time": format!("2030-01-01 10:{:02}:00", 59 - i), "taskid": format!("job{i}"), "tone_list": ["default"]}))
                .await;
            assert_eq!(t["state"], "pending");
            ids.push(t["id"].as_i64().unwrap());
        }
        // update the first one (id as number and as string both work)
        let t = app
            .ok("/dapi/calltask/update", json!({"id": ids[0], "src_uid": "1234", "dst_uid": ["1236", "1237"], "call_time": "2030-01-01 09:00:00", "taskid": "moved"}))
            .await;
        assert_eq!(t["id"], ids[0]);
        assert_eq!(t["dst_uid"], json!(["1236", "1237"]));
        assert_eq!(t["taskid"], "moved");
        let t = app
            .ok("/dapi/calltask/update", json!({"id": ids[1].to_string(), "src_uid": "1234", "dst_uid": ["1236"], "call_time": "2030-01-01 09:30:00", "taskid": 77}))
            .await;
        assert_eq!(t["taskid"], "77");
        let p1 = app.ok("/dapi/calltask/list", json!({"uid": "1234"})).await;
        assert_eq!(
            p1["row_pages"],
            json!({"crt_page": 1, "total": 25, "perpage": 20})
        );
        assert_eq!(p1["rows"].as_array().unwrap().len(), 20);
        assert_eq!(p1["rows"][0]["id"], ids[0], "soonest first");
        assert_eq!(p1["rows"][0]["call_time"], "2030-01-01 09:00:00");
        let times: Vec<&str> = p1["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["call_time"].as_str().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        let p2 = app
            .ok("/dapi/calltask/list", json!({"uid": "1234", "page": 2}))
            .await;
        assert_eq!(p2["rows"].as_array().unwrap().len(), 5);
        assert_eq!(p2["row_pages"]["total"], 25);
        let p = app
            .ok(
                "/dapi/calltask/list",
                json!({"uid": "1234", "page": 3, "perpage": 10}),
            )
            .await;
        assert_eq!(
            (
                p["rows"].as_array().unwrap().len(),
                p["row_pages"]["perpage"].clone()
            ),
            (5, json!(10))
        );
        assert_eq!(
            app.ok("/dapi/calltask/list", json!({"uid": "nobody"}))
                .await["row_pages"]["total"],
            0
        );
        // delete (ext)
        app.ok(
            "/dapi/calltask/delete",
            json!({"id": ids[2], "uid": "1234"}),
        )
        .await;
        assert_eq!(
            app.ok("/dapi/calltask/list", json!({"uid": "1234"})).await["row_pages"]["total"],
            24
        );
        app.err(
            "/dapi/calltask/delete",
            json!({"id": ids[2], "uid": "1234"}),
            404,
            "not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn every_client_mistake_is_a_named_4xx() {
    for backend in backends() {
        let app = spawn_app(backend).await;
        let ch = app
            .ok("/dapi/call/user", json!({"src_uid": "1", "dst_uid": ["2"]}))
            .await["channel"]
            .as_str()
            .unwrap()
            .to_owned();

        // bad JSON, empty body, not an object
        for raw in ["{", "", "[1,2]", "\"x\"", "{\"src_uid\": }"] {
            let (s, v) = app.post_raw("/dapi/call/user", raw).await;
            assert_eq!(
                (s, v["error"]["code"].as_str().unwrap()),
                (400, "invalid_json"),
                "{raw:?} {v}"
            );
        }
        // missing fields name the field
        assert!(
            app.err(
                "/dapi/call/user",
                json!({"dst_uid": ["2"]}),
                400,
                "missing_field"
            )
            .await
            .contains("src_uid")
        );
        assert!(
            app.err("/dapi/call/msg", json!({}), 400, "missing_field")
                .await
                .contains("uid")
        );
        assert!(
            app.err(
                "/dapi/call/token",
                json!({"uid": "1"}),
                400,
                "missing_field"
            )
            .await
            .contains("channel")
        );
        assert!(
            app.err(
                "/dapi/call/event",
                json!({"uid": "1", "channel": ch}),
                400,
                "missing_field"
            )
            .await
            .contains("code")
        );
        assert!(
            app.err(
                "/dapi/calltask/update",
                json!({"src_uid": "1", "dst_uid": ["2"], "call_time": "2030-01-01 00:00:00"}),
                400,
                "missing_field"
            )
            .await
            .contains("taskid")
        );
        // wrong types name the field
        assert!(
            app.err(
                "/dapi/call/user",
                json!({"src_uid": {"a": 1}}),
                400,
                "invalid_field"
            )
            .await
            .contains("src_uid")
        );
        assert!(
            app.err(
                "/dapi/call/user",
                json!({"src_uid": "1", "dst_uid": [true]}),
                400,
                "invalid_field"
            )
            .await
            .contains("dst_uid")
        );
        assert!(
            app.err(
                "/dapi/call/user",
                json!({"src_uid": "1", "extra_msg": 5}),
                400,
                "invalid_field"
            )
            .await
            .contains("extra_msg")
        );
        assert!(
            app.err(
                "/dapi/call/user",
                json!({"src_uid": 1.5}),
                400,
                "invalid_field"
            )
            .await
            .contains("src_uid")
        );
        assert!(
            app.err(
                "/dapi/call/robot",
                json!({"src_uid": "1", "loop": "yes"}),
                400,
                "invalid_field"
            )
            .await
            .contains("loop")
        );
        assert!(
            app.err(
                "/dapi/call/robot",
                json!({"src_uid": "1", "audio": "../etc"}),
                400,
                "invalid_field"
            )
            .await
            .contains("audio")
        );
        // out of range values
        assert!(
            app.err(
                "/dapi/call/user",
                json!({"src_uid": ""}),
                400,
                "invalid_field"
            )
            .await
            .contains("src_uid")
        );
        assert!(
            app.err(
                "/dapi/call/user",
                json!({"src_uid": "x".repeat(256)}),
                400,
                "invalid_field"
            )
            .await
            .contains("src_uid")
        );
        let many: Vec<String> = (0..51).map(|i| i.to_string()).collect();
        assert!(
            app.err(
                "/dapi/call/user",
                json!({"src_uid": "1", "dst_uid": many}),
                400,
                "invalid_field"
            )
            .await
            .contains("dst_uid")
        );
        assert!(
            app.err(
                "/dapi/call/user",
                json!({"src_uid": "1", "extra_msg": "x".repeat(1025)}),
                400,
                "invalid_field"
            )
            .await
            .contains("extra_msg")
        );
        assert!(
            app.err(
                "/dapi/call/token",
                json!({"uid": "1", "channel": "bad/channel"}),
                400,
                "invalid_field"
            )
            .await
            .contains("channel")
        );
        assert!(
            app.err(
                "/dapi/calltask/list",
                json!({"uid": "1", "perpage": 101}),
                400,
                "invalid_field"
            )
            .await
            .contains("perpage")
        );
        assert!(
            app.err(
                "/dapi/calltask/list",
                json!({"uid": "1", "page": 0}),
                400,
                "invalid_field"
            )
            .await
            .contains("page")
        );
        // NUL characters (PostgreSQL cannot store them) are a 400, not a 500
        assert!(
            app.err(
                "/dapi/call/user",
                json!({"src_uid": "1", "extra_msg": "a\0b"}),
                400,
                "invalid_field"
            )
            .await
            .contains("extra_msg")
        );
        assert!(
            app.err(
                "/dapi/call/event",
                json!({"uid": "1", "channel": ch, "code": 2, "desp": "\0"}),
                400,
                "invalid_field"
            )
            .await
            .contains("desp")
        );
        assert!(app.err("/dapi/calltask/update", json!({"src_uid": "1", "dst_uid": ["2"], "call_time": "2030-01-01 00:00:00", "taskid": "x\0"}), 400, "invalid_field").await.contains("taskid"));
        // unknown codes
        assert!(
            app.err(
                "/dapi/call/event",
                json!({"uid": "1", "channel": ch, "code": 5}),
                400,
                "invalid_field"
            )
            .await
            .contains("code")
        );
        // bad call_time format
        for t in [
            "2020-02-02",
            "2020/02/02 20:20:00",
            "2020-02-30 20:20:00",
            "tomorrow",
        ] {
            assert!(
                app.err(
                    "/dapi/calltask/update",
                    json!({"src_uid": "1", "dst_uid": ["2"], "call_time": t, "taskid": "1"}),
                    400,
                    "invalid_field"
                )
                .await
                .contains("call_time")
            );
        }
        assert!(app.err("/dapi/calltask/update", json!({"src_uid": "1", "dst_uid": [], "call_time": "2030-01-01 00:00:00", "taskid": "1"}), 400, "invalid_field").await.contains("dst_uid"));
        // unknown channel or task: 404
        for path in [
            "/dapi/call/token",
            "/dapi/call/heartbeat",
            "/dapi/invite/robot",
            "/dapi/quit/robot",
        ] {
            app.err(
                path,
                json!({"uid": "1", "channel": "ch_doesnotexist"}),
                404,
                "not_found",
            )
            .await;
        }
        app.err(
            "/dapi/call/event",
            json!({"uid": "1", "channel": "ch_doesnotexist", "code": 2}),
            404,
            "not_found",
        )
        .await;
        app.err("/dapi/calltask/update", json!({"id": 999999, "src_uid": "1", "dst_uid": ["2"], "call_time": "2030-01-01 00:00:00", "taskid": "1"}), 404, "not_found").await;
        // body over 64 KiB: 413
        let big = json!({"src_uid": "1", "extra_msg": "x".repeat(70 * 1024)}).to_string();
        let (s, v) = app.post_raw("/dapi/call/user", big).await;
        assert_eq!(
            (s, v["error"]["code"].as_str().unwrap()),
            (413, "payload_too_large")
        );
        // wrong method, unknown route
        let r = app
            .http
            .get(format!("{}/dapi/call/user", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
        let r = app
            .http
            .post(format!("{}/dapi/nope", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["success"], false);
        // nothing half-written: the rejected requests created no calls for uid "1"
        let rows = app.ok("/dapi/call/msg", json!({"uid": "1"})).await;
        assert_eq!(
            rows.as_array().unwrap().len(),
            1,
            "[{backend}] only the first call exists: {rows}"
        );
    }
}

#[tokio::test]
async fn hundred_concurrent_call_user_requests_are_all_stored() {
    for backend in backends() {
        let app = spawn_app(backend).await;
        let mut tasks = Vec::new();
        for i in 0..100 {
            let (http, base) = (app.http.clone(), app.base.clone());
            tasks.push(tokio::spawn(async move {
                let r = http
                    .post(format!("{base}/dapi/call/user"))
                    .json(&json!({"src_uid": format!("c{i}"), "dst_uid": ["callee"]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.unwrap();
                v["data"]["channel"].as_str().unwrap().to_owned()
            }));
        }
        let mut channels = HashSet::new();
        for t in tasks {
            channels.insert(t.await.unwrap());
        }
        assert_eq!(channels.len(), 100, "distinct channels");
        let rows = app.ok("/dapi/call/msg", json!({"uid": "callee"})).await;
        let stored: HashSet<String> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["channel"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(stored, channels, "[{backend}] every call is stored");
    }
}

#[tokio::test]
async fn health_and_readiness() {
    for backend in backends() {
        let app = spawn_app(backend).await;
        let r = app
            .http
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = app
            .http
            .get(format!("{}/readyz", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["database"], backend);
        // every response carries a request id; a client's own id is kept
        let r = app
            .http
            .post(format!("{}/dapi/call/user", app.base))
            .json(&json!({"src_uid": "m1", "dst_uid": ["m2"]}))
            .send()
            .await
            .unwrap();
        assert!(r.headers().get("x-request-id").is_some());
        let r = app
            .http
            .post(format!("{}/dapi/call/msg", app.base))
            .header("x-request-id", "abc-123")
            .json(&json!({"uid": "m2"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-request-id"], "abc-123");
        // Prometheus text with the families operators alert on
        let r = app
            .http
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        for family in [
            "dapi_http_requests_total",
            "dapi_http_request_duration_seconds_bucket",
            "dapi_tokens_minted_total",
            "dapi_calls_created_total",
            "dapi_calls{state=\"ringing\"}",
            "dapi_robot_queue_depth",
            "dapi_robot_sessions{state=\"queued\"}",
            "dapi_agents_connected",
            "dapi_rtc_peers",
        ] {
            assert!(text.contains(family), "[{backend}] /metrics lacks {family}");
        }
        assert!(
            text.contains("route=\"/dapi/call/user\""),
            "requests are labelled by route template"
        );
    }
}
