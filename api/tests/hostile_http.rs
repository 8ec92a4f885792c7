//! Hostile clients over HTTP (issue 13, the HTTP and auth half): each test performs an
//! attack against the real server and checks that it fails **and** that a legitimate
//! client beside it is unaffected. Slow headers, rate limits behind a proxy and spoofed
//! `X-Forwarded-For`, other users' tasks, devices and robots in jwt mode, membership of
//! ended calls, robots per uid and their maximum duration, device routes in open mode,
//! and the small settings (webhook URL, JWT secret length, `nbf`, TURN credential
//! lifetime). Storage tests run on SQLite, and on PostgreSQL when `TEST_DATABASE_URL` is set.
//! The `/rtc` limits are in their own tests.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use std::net::IpAddr;
use std::time::Duration;

use api::clock::Clock;
use common::agent_ws::{agent, expect, expect_none, send, session_state};
use common::{JWT_SECRET, TestApp, backends, jwt_for, jwt_mode, spawn_app_with};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough that only a server that never closes would reach it.
const NEVER: Duration = Duration::from_secs(20);

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// POST with explicit headers; status and body.
async fn post_with(
    app: &TestApp,
    client: &reqwest::Client,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, Value) {
    let mut r = client.post(format!("{}{path}", app.base)).json(&body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// POST as `sub` (jwt mode) whatever the body says.
async fn post_as(app: &TestApp, sub: &str, path: &str, body: Value) -> (u16, Value) {
    let bearer = format!("Bearer {}", jwt_for(JWT_SECRET, sub));
    post_with(app, &app.http, path, &[("authorization", &bearer)], body).await
}

async fn get_as(app: &TestApp, sub: &str, path: &str) -> (u16, Value) {
    let r = app
        .http
        .get(format!("{}{path}", app.base))
        .bearer_auth(jwt_for(JWT_SECRET, sub))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn healthz(app: &TestApp) -> u16 {
    app.http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Reads until the server closes the connection; what it sent, or `None` if it is still
/// open after [`NEVER`].
async fn read_until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + NEVER;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(all),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

fn channel_of(data: &Value) -> String {
    data["channel"].as_str().unwrap().to_owned()
}

// ------------------------------------------------------------------ 1. slow headers

#[tokio::test]
async fn half_a_header_is_cut_off_while_normal_clients_are_answered() {
    let app = spawn_app_with("sqlite", Clock::system(), |c| {
        c.server.header_read_timeout = Duration::from_secs(1)
    })
    .await;
    // The attack: several connections that each send half a request header and stop.
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: dapi\r\nX-Slow: aaaa")
            .await
            .unwrap();
        slow.push(s);
    }
    // A normal client beside them is answered, on a kept-alive connection and anew.
    for _ in 0..3 {
        assert_eq!(healthz(&app).await, 200);
    }
    for s in &mut slow {
        let got = read_until_closed(s)
            .await
            .expect("a half-sent header must not keep its connection open");
        // Nothing was answered to it (hyper may send a 408 before it closes).
        let text = String::from_utf8_lossy(&got);
        assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    // An idle keep-alive connection is closed as well once its request is answered.
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: dapi\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut idle)
        .await
        .expect("an idle keep-alive connection must be closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert_eq!(healthz(&app).await, 200);
}

// ------------------------------------------------------------------ 2. rate limits

#[tokio::test]
async fn one_uid_past_its_limit_does_not_block_others_behind_the_same_proxy() {
    for backend in backends() {
        let app = spawn_app_with(backend, Clock::system(), |c| {
            c.limits.rate_writes_per_uid = 3;
            c.limits.rate_writes_per_ip = 1000;
            c.limits.rate_calls_per_uid = 2;
            c.limits.rate_calls_per_ip = 1000;
            c.limits.trusted_proxies = "127.0.0.1/32".parse().unwrap();
        })
        .await;
        // Both users come through the proxy (the test client is 127.0.0.1, trusted) from
        // the same client address.
        let via = [("x-forwarded-for", "203.0.113.10")];
        for i in 0..10 {
            let (s, v) = post_with(
                &app,
                &app.http,
                "/dapi/call/msg",
                &via,
                json!({"uid": "loud"}),
            )
            .await;
            if i < 3 {
                assert_eq!(s, 200, "[{backend}] {v}");
            } else {
                assert_eq!(s, 429, "[{backend}] {v}");
                assert!(
                    v["error"]["message"].as_str().unwrap().contains("uid loud"),
                    "{v}"
                );
            }
        }
        for _ in 0..3 {
            let (s, v) = post_with(
                &app,
                &app.http,
                "/dapi/call/msg",
                &via,
                json!({"uid": "quiet"}),
            )
            .await;
            assert_eq!(s, 200, "[{backend}] quiet is answered: {v}");
        }
        // calls: the same, per uid first
        for _ in 0..2 {
            post_with(
                &app,
                &app.http,
                "/dapi/call/user",
                &via,
                json!({"src_uid": "loud"}),
            )
            .await;
        }
        let (s, _) = post_with(
            &app,
            &app.http,
            "/dapi/call/user",
            &via,
            json!({"src_uid": "loud"}),
        )
        .await;
        assert_eq!(s, 429);
        let (s, v) = post_with(
            &app,
            &app.http,
            "/dapi/call/user",
            &via,
            json!({"src_uid": "quiet", "dst_uid": ["loud"]}),
        )
        .await;
        assert_eq!(s, 200, "[{backend}] {v}");
    }
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // Only 127.0.0.2 is a trusted proxy; the attacker connects from 127.0.0.1.
    let app = spawn_app_with("sqlite", Clock::system(), |c| {
        c.limits.rate_calls_per_uid = 0;
        c.limits.rate_calls_per_ip = 3;
        c.limits.trusted_proxies = "127.0.0.2/32".parse().unwrap();
    })
    .await;
    let attacker = reqwest::Client::builder()
        .local_address(Some("127.0.0.1".parse::<IpAddr>().unwrap()))
        .build()
        .unwrap();
    let proxy = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse::<IpAddr>().unwrap()))
        .build()
        .unwrap();
    // A fresh uid and a fresh forged client address on every request: only the socket
    // address counts, so the fourth call is refused.
    for i in 0..6 {
        let forged = format!("198.18.0.{i}");
        let (s, v) = post_with(
            &app,
            &attacker,
            "/dapi/call/user",
            &[("x-forwarded-for", &forged)],
            json!({"src_uid": format!("rotating{i}")}),
        )
        .await;
        if i < 3 {
            assert_eq!(s, 200, "{v}");
        } else {
            assert_eq!(s, 429, "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("from this address"),
                "{v}"
            );
        }
    }
    // A client behind the trusted proxy is its own address, not the proxy's or the
    // attacker's: answered.
    for _ in 0..3 {
        let (s, v) = post_with(
            &app,
            &proxy,
            "/dapi/call/user",
            &[("x-forwarded-for", "127.0.0.1, 198.51.100.7")],
            json!({"src_uid": "legit"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
}

#[tokio::test]
async fn every_write_route_is_limited_and_scheduled_calls_pay_as_calls() {
    for backend in backends() {
        let app = spawn_app_with(backend, Clock::system(), |c| {
            jwt_mode(c);
            c.limits.rate_writes_per_uid = 4;
            c.limits.rate_calls_per_uid = 3;
        })
        .await;
        let ch = channel_of(
            &app.ok(
                "/dapi/call/user",
                json!({"src_uid": "alice", "dst_uid": ["bob"]}),
            )
            .await,
        );
        for _ in 0..4 {
            app.ok("/dapi/call/msg", json!({"uid": "alice"})).await;
        }
        let writes = [
            ("/dapi/call/msg", json!({"uid": "alice"})),
            (
                "/dapi/call/event",
                json!({"uid": "alice", "channel": ch, "code": 1}),
            ),
            (
                "/dapi/call/heartbeat",
                json!({"uid": "alice", "channel": ch}),
            ),
            ("/dapi/quit/robot", json!({"uid": "alice", "channel": ch})),
            ("/dapi/calltask/delete", json!({"uid": "alice", "id": 1})),
            (
                "/dapi/calltask/update",
                json!({"id": 1, "src_uid": "alice", "dst_uid": ["bob"],
                       "call_time": "2030-01-01 00:00:00", "taskid": "t"}),
            ),
            (
                "/dapi/device/register",
                json!({"uid": "alice", "platform": "web", "push_token": "a-1"}),
            ),
            (
                "/dapi/device/unregister",
                json!({"uid": "alice", "push_token": "a-1"}),
            ),
        ];
        for (path, body) in &writes {
            app.err(path, body.clone(), 429, "rate_limited").await;
        }
        // bob, beside her, is answered on every one of them
        app.ok("/dapi/call/heartbeat", json!({"uid": "bob", "channel": ch}))
            .await;
        app.ok(
            "/dapi/call/event",
            json!({"uid": "bob", "channel": ch, "code": 1}),
        )
        .await;
        app.ok(
            "/dapi/device/register",
            json!({"uid": "bob", "platform": "web", "push_token": "b-1"}),
        )
        .await;
        // A new scheduled call costs a call: 1 (call/user above) + 2 tasks, then 429 for
        // tasks and calls alike.
        let task = |n: u32| {
            json!({"src_uid": "alice", "dst_uid": ["bob"],
                   "call_time": "2030-01-01 00:00:00", "taskid": format!("t{n}")})
        };
        app.ok("/dapi/calltask/update", task(1)).await;
        app.ok("/dapi/calltask/update", task(2)).await;
        app.err("/dapi/calltask/update", task(3), 429, "rate_limited")
            .await;
        app.err(
            "/dapi/call/user",
            json!({"src_uid": "alice"}),
            429,
            "rate_limited",
        )
        .await;
        app.ok("/dapi/call/user", json!({"src_uid": "bob"})).await;
    }
}

// ------------------------------------------------------------------ 3. ownership

#[tokio::test]
async fn jwt_mode_another_users_task_device_or_robot_answers_as_missing_or_forbidden() {
    for backend in backends() {
        let app = spawn_app_with(backend, Clock::system(), jwt_mode).await;
        let task = |uid: &str, id: Option<i64>, when: &str, taskid: &str| {
            let mut t = json!({"src_uid": uid, "dst_uid": ["bob"], "call_time": when,
                               "taskid": taskid});
            if let Some(id) = id {
                t["id"] = json!(id);
            }
            t
        };
        let mine = app
            .ok(
                "/dapi/calltask/update",
                task("alice", None, "2030-01-01 00:00:00", "alice-1"),
            )
            .await;
        let id = mine["id"].as_i64().unwrap();

        // mallory updates alice's task: answered as a missing task, in the same words
        let (s, theirs) = post_as(
            &app,
            "mallory",
            "/dapi/calltask/update",
            task("mallory", Some(id), "2031-01-01 00:00:00", "stolen"),
        )
        .await;
        let missing_id = id + 1000;
        let (s2, missing) = post_as(
            &app,
            "mallory",
            "/dapi/calltask/update",
            task("mallory", Some(missing_id), "2031-01-01 00:00:00", "x"),
        )
        .await;
        assert_eq!((s, s2), (404, 404), "[{backend}] {theirs} {missing}");
        assert_eq!(
            theirs["error"]["message"]
                .as_str()
                .unwrap()
                .replace(&id.to_string(), "N"),
            missing["error"]["message"]
                .as_str()
                .unwrap()
                .replace(&missing_id.to_string(), "N"),
        );
        // alice's task is untouched and still hers
        let list = app.ok("/dapi/calltask/list", json!({"uid": "alice"})).await;
        assert_eq!(list["rows"][0]["taskid"], "alice-1", "[{backend}]");
        assert_eq!(list["rows"][0]["src_uid"], "alice");
        assert_eq!(
            app.ok("/dapi/calltask/list", json!({"uid": "mallory"}))
                .await["row_pages"]["total"],
            0
        );

        // a fired task: its state is not told to mallory, only to alice
        let past = chrono::Utc::now() - chrono::Duration::seconds(5);
        let fired = app
            .ok(
                "/dapi/calltask/update",
                task(
                    "alice",
                    None,
                    &past.format("%Y-%m-%d %H:%M:%S").to_string(),
                    "alice-2",
                ),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        let r = api::sweeper::sweep_once(&app.state).await.unwrap();
        assert_eq!(r.fired.len(), 1, "[{backend}] {r:?}");
        let (s, v) = post_as(
            &app,
            "mallory",
            "/dapi/calltask/update",
            task("mallory", Some(fired), "2031-01-01 00:00:00", "x"),
        )
        .await;
        assert_eq!(s, 404, "{v}");
        assert!(!v.to_string().contains("fired"), "{v}");
        app.err(
            "/dapi/calltask/update",
            task("alice", Some(fired), "2031-01-01 00:00:00", "x"),
            409,
            "conflict",
        )
        .await;
        // delete: the same answer for another's task and for none
        let (s, theirs) = post_as(
            &app,
            "mallory",
            "/dapi/calltask/delete",
            json!({"uid": "mallory", "id": id}),
        )
        .await;
        let (s2, missing) = post_as(
            &app,
            "mallory",
            "/dapi/calltask/delete",
            json!({"uid": "mallory", "id": missing_id}),
        )
        .await;
        assert_eq!((s, s2), (404, 404));
        assert_eq!(
            theirs["error"]["message"]
                .as_str()
                .unwrap()
                .replace(&id.to_string(), "N"),
            missing["error"]["message"]
                .as_str()
                .unwrap()
                .replace(&missing_id.to_string(), "N"),
        );
        assert_eq!(
            app.ok("/dapi/calltask/list", json!({"uid": "alice"})).await["row_pages"]["total"],
            2
        );

        // devices: mallory cannot drop alice's device (answered as an unknown one)
        app.ok(
            "/dapi/device/register",
            json!({"uid": "alice", "platform": "web", "push_token": "alice-web"}),
        )
        .await;
        let (s, v) = post_as(
            &app,
            "mallory",
            "/dapi/device/unregister",
            json!({"uid": "mallory", "push_token": "alice-web"}),
        )
        .await;
        assert_eq!((s, &v["data"]), (200, &json!({"removed": false})), "{v}");
        let (s, v) = post_as(
            &app,
            "mallory",
            "/dapi/device/unregister",
            json!({"uid": "alice", "push_token": "alice-web"}),
        )
        .await;
        assert_eq!(s, 403, "{v}");
        let alice = api::domain::Uid::parse("alice").unwrap();
        assert_eq!(app.state.store().devices(&alice).await.unwrap().len(), 1);

        // robots: only members of the call invite or kick them
        let ch = channel_of(
            &app.ok("/dapi/call/robot", json!({"src_uid": "alice"}))
                .await,
        );
        for path in ["/dapi/quit/robot", "/dapi/invite/robot"] {
            let (s, v) = post_as(
                &app,
                "mallory",
                path,
                json!({"uid": "mallory", "channel": ch}),
            )
            .await;
            assert_eq!(s, 403, "[{backend}] {path}: {v}");
        }
        let channel = common::channel(&ch);
        let sessions = app.state.store().channel_sessions(&channel).await.unwrap();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].state.as_str(), "queued", "still alice's robot");
        app.ok("/dapi/quit/robot", json!({"uid": "alice", "channel": ch}))
            .await;
    }
}

// ------------------------------------------------------------------ 4. membership

#[tokio::test]
async fn only_active_members_of_a_live_call_get_tokens() {
    for backend in backends() {
        let app = spawn_app_with(backend, Clock::system(), jwt_mode).await;
        let ch = channel_of(
            &app.ok(
                "/dapi/call/user",
                json!({"src_uid": "A", "dst_uid": ["B", "C"]}),
            )
            .await,
        );
        // B rejects: the call goes on for A and C, B is done
        app.ok(
            "/dapi/call/event",
            json!({"uid": "B", "channel": ch, "code": 1003}),
        )
        .await;
        for path in ["/dapi/call/token", "/dapi/invite/robot"] {
            let m = app
                .err(path, json!({"uid": "B", "channel": ch}), 403, "forbidden")
                .await;
            assert!(m.contains("not a member"), "[{backend}] {path}: {m}");
        }
        for uid in ["A", "C"] {
            app.ok("/dapi/call/token", json!({"uid": uid, "channel": ch}))
                .await;
        }
        // B may still read the timeline and report late (recorded, ignored)
        assert_eq!(
            get_as(&app, "B", &format!("/dapi/call/timeline?channel={ch}"))
                .await
                .0,
            200
        );
        app.ok(
            "/dapi/call/event",
            json!({"uid": "B", "channel": ch, "code": 2}),
        )
        .await;
        // C answers; both hang up: the call is over, nobody gets a token any more
        app.ok(
            "/dapi/call/event",
            json!({"uid": "C", "channel": ch, "code": 1}),
        )
        .await;
        app.ok("/dapi/call/token", json!({"uid": "C", "channel": ch}))
            .await;
        for uid in ["A", "C"] {
            app.ok(
                "/dapi/call/event",
                json!({"uid": uid, "channel": ch, "code": 2}),
            )
            .await;
        }
        for uid in ["A", "B", "C"] {
            app.err(
                "/dapi/call/token",
                json!({"uid": uid, "channel": ch}),
                403,
                "forbidden",
            )
            .await;
            assert_eq!(
                app.state
                    .is_active_member(
                        &common::channel(&ch),
                        &api::domain::Uid::parse(uid).unwrap()
                    )
                    .await
                    .unwrap(),
                Some(false),
                "[{backend}] {uid}"
            );
        }

        // The spec's flow: the callee declines (the call ends as 1002) and the caller
        // invites the robot. The caller may, for DAPI_HEARTBEAT_TIMEOUT; the callee not.
        let ch2 = channel_of(
            &app.ok("/dapi/call/user", json!({"src_uid": "A", "dst_uid": ["D"]}))
                .await,
        );
        app.ok(
            "/dapi/call/event",
            json!({"uid": "D", "channel": ch2, "code": 1003}),
        )
        .await;
        app.err(
            "/dapi/call/token",
            json!({"uid": "D", "channel": ch2}),
            403,
            "forbidden",
        )
        .await;
        app.ok("/dapi/invite/robot", json!({"uid": "A", "channel": ch2}))
            .await;
        assert_eq!(
            app.state
                .store()
                .is_member(
                    &common::channel(&ch2),
                    &api::domain::Uid::parse("A").unwrap(),
                    i64::MAX
                )
                .await
                .unwrap(),
            Some(false),
            "[{backend}] past the grace, the caller of a rejected call is not a member"
        );
        // an unknown channel stays a 404
        app.err(
            "/dapi/call/token",
            json!({"uid": "A", "channel": "ch_nope"}),
            404,
            "not_found",
        )
        .await;
    }
}

// ------------------------------------------------------------------ 5. robots

#[tokio::test]
async fn pending_scheduled_calls_are_capped_per_uid_and_others_still_schedule() {
    // Tasks fire without being charged again: created over hours for the same minute, they
    // would all fire together. The cap bounds that; the rate limits are off here.
    for backend in backends() {
        let app = spawn_app_with(backend, Clock::system(), |c| c.calls.calltasks_per_uid = 3).await;
        let task = |uid: &str, n: u32| {
            json!({"src_uid": uid, "dst_uid": ["victim"],
                   "call_time": "2030-01-01 00:00:00", "taskid": format!("t{n}")})
        };
        for n in 0..3 {
            app.ok("/dapi/calltask/update", task("hog", n)).await;
        }
        let m = app
            .err("/dapi/calltask/update", task("hog", 3), 409, "conflict")
            .await;
        assert!(m.contains("DAPI_CALLTASKS_PER_UID"), "[{backend}] {m}");
        let list = app.ok("/dapi/calltask/list", json!({"uid": "hog"})).await;
        assert_eq!(list["row_pages"]["total"], 3, "[{backend}] nothing written");
        // Changing a pending task is not creating one.
        let id = list["rows"][0]["id"].clone();
        let mut change = task("hog", 9);
        change["id"] = id.clone();
        app.ok("/dapi/calltask/update", change).await;
        // Another uid schedules as usual, and places calls.
        app.ok("/dapi/calltask/update", task("calm", 0)).await;
        app.ok(
            "/dapi/call/user",
            json!({"src_uid": "calm", "dst_uid": ["x"]}),
        )
        .await;
        // Deleting one makes room.
        app.ok("/dapi/calltask/delete", json!({"uid": "hog", "id": id}))
            .await;
        app.ok("/dapi/calltask/update", task("hog", 4)).await;
    }
}

#[tokio::test]
async fn robots_per_uid_are_capped_and_others_still_get_theirs() {
    for backend in backends() {
        let app = spawn_app_with(backend, Clock::system(), |c| c.dispatch.robots_per_uid = 2).await;
        let first = channel_of(
            &app.ok("/dapi/call/robot", json!({"src_uid": "hog", "loop": true}))
                .await,
        );
        app.ok("/dapi/call/robot", json!({"src_uid": "hog", "loop": true}))
            .await;
        let m = app
            .err(
                "/dapi/call/robot",
                json!({"src_uid": "hog", "loop": true}),
                409,
                "conflict",
            )
            .await;
        assert!(m.contains("DAPI_ROBOTS_PER_UID"), "[{backend}] {m}");
        // inviting one into another channel counts as well
        let other = channel_of(&app.ok("/dapi/call/user", json!({"src_uid": "hog"})).await);
        app.err(
            "/dapi/invite/robot",
            json!({"uid": "hog", "channel": other}),
            409,
            "conflict",
        )
        .await;
        // nothing of the refused requests was written
        assert!(
            app.state
                .store()
                .channel_sessions(&common::channel(&other))
                .await
                .unwrap()
                .is_empty()
        );
        // another uid is not limited by hog's robots
        let theirs = channel_of(&app.ok("/dapi/call/robot", json!({"src_uid": "calm"})).await);
        assert_eq!(
            app.state
                .store()
                .channel_sessions(&common::channel(&theirs))
                .await
                .unwrap()[0]
                .state
                .as_str(),
            "queued"
        );
        // once hog ends one, hog may have another
        app.ok("/dapi/quit/robot", json!({"uid": "hog", "channel": first}))
            .await;
        app.ok(
            "/dapi/invite/robot",
            json!({"uid": "hog", "channel": other}),
        )
        .await;
    }
}

/// `call/robot` with `loop: true` for `uid`; its channel.
async fn robot_call(app: &TestApp, uid: &str) -> String {
    channel_of(
        &app.ok("/dapi/call/robot", json!({"src_uid": uid, "loop": true}))
            .await,
    )
}

/// Accepts the agent's next offer and waits until the session runs; its id.
async fn accept_next_offer(app: &TestApp, ws: &mut common::agent_ws::Ws) -> i64 {
    let offer = expect(ws, "offer", 5).await;
    let id = offer["session"]["id"].as_i64().unwrap();
    send(ws, json!({"type": "accept", "session_id": id})).await;
    // The agent link applies the accept on its own task: poll until it has (the manual
    // clock must not move before, or the offer would look expired).
    for _ in 0..100 {
        if session_state(app, id).await["state"] == "running" {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("session {id} did not start running");
}

#[tokio::test]
async fn a_robot_past_its_maximum_duration_is_told_to_leave() {
    for backend in backends() {
        let t0 = chrono::Utc::now().timestamp_millis();
        let clock = Clock::manual(t0);
        let app = spawn_app_with(backend, clock.clone(), |c| {
            c.dispatch.robot_max = Duration::from_secs(60);
            // the manual clock jumps: keep leases and heartbeats out of the way
            c.dispatch.lease = Duration::from_secs(3600);
            c.calls.heartbeat_timeout = Duration::from_secs(3600);
        })
        .await;
        let mut ws = agent(&app, "ag1", 4).await;
        let old_ch = robot_call(&app, "looper").await;
        let old_id = accept_next_offer(&app, &mut ws).await;
        clock.advance_ms(30_000);
        let new_ch = robot_call(&app, "fresh").await;
        let new_id = accept_next_offer(&app, &mut ws).await;
        // 61 s after the first robot was asked for: it is told to leave, the other not
        clock.advance_ms(31_000);
        let r = api::sweeper::sweep_once(&app.state).await.unwrap();
        assert_eq!(r.robots_overtime, vec![old_ch.clone()], "[{backend}]");
        let leave = expect(&mut ws, "leave", 5).await;
        assert_eq!(leave["session_id"], old_id);
        expect_none(&mut ws, "leave", 300).await;
        assert_eq!(session_state(&app, new_id).await["state"], "running");
        // recorded on the call's timeline, by the server, with the reason
        let old_channel = common::channel(&old_ch);
        let tl = app.state.store().timeline(&old_channel).await.unwrap();
        let quit = tl.iter().find(|e| e.kind == "robot_quit").unwrap();
        assert_eq!(
            (quit.source.as_str(), quit.effect.as_str()),
            ("server", "robot told to leave")
        );
        assert!(
            quit.detail
                .as_deref()
                .unwrap()
                .contains("DAPI_ROBOT_MAX_SECONDS"),
            "{quit:?}"
        );
        // a second sweep does not ask again
        let r = api::sweeper::sweep_once(&app.state).await.unwrap();
        assert!(r.robots_overtime.is_empty());
        // the legitimate call goes on
        app.ok(
            "/dapi/call/heartbeat",
            json!({"uid": "fresh", "channel": new_ch}),
        )
        .await;
    }
}

// ------------------------------------------------------------------ 6. open-mode devices

#[tokio::test]
async fn open_mode_refuses_device_routes_naming_jwt_mode() {
    let app = spawn_app_with("sqlite", Clock::system(), |_| {}).await;
    for (path, body) in [
        (
            "/dapi/device/register",
            json!({"uid": "victim", "platform": "ios", "push_token": "00ff", "voip": true}),
        ),
        (
            "/dapi/device/unregister",
            json!({"uid": "victim", "push_token": "00ff"}),
        ),
    ] {
        let m = app.err(path, body, 403, "forbidden").await;
        assert!(m.contains("DAPI_AUTH=jwt"), "{path}: {m}");
    }
    let victim = api::domain::Uid::parse("victim").unwrap();
    assert!(app.state.store().devices(&victim).await.unwrap().is_empty());
    // the rest of the open contract is unchanged
    app.ok(
        "/dapi/call/user",
        json!({"src_uid": "caller", "dst_uid": ["victim"]}),
    )
    .await;
}

// ------------------------------------------------------------------ 7. small ones

#[tokio::test]
async fn a_plain_http_webhook_and_a_short_jwt_secret_are_refused_at_start() {
    let (url, _dir) = common::fresh_db("sqlite").await;
    let mut c = api::config::Config::for_tests(&url);
    c.push.webhook_url = Some("http://hooks.example.com/push".into());
    c.push.webhook_secret = Some(api::config::Secret::new("hook-secret"));
    let e = api::Application::build(c.clone()).await.err().unwrap();
    assert!(e.to_string().contains("DAPI_PUSH_WEBHOOK_URL"), "{e}");
    assert!(e.to_string().contains("https://"), "{e}");
    // loopback http (a sidecar, tests) and https are accepted
    for ok in ["http://127.0.0.1:9/hook", "https://hooks.example.com/push"] {
        c.push.webhook_url = Some(ok.into());
        assert!(api::Application::build(c.clone()).await.is_ok(), "{ok}");
    }

    let mut c = api::config::Config::for_tests(&url);
    c.auth =
        api::config::AuthConfig::jwt(api::config::Secret::new("only-31-bytes-of-shared-secret!"));
    let e = api::Application::build(c).await.err().unwrap();
    assert!(e.to_string().contains("DAPI_JWT_SECRET"), "{e}");
    assert!(e.to_string().contains("32"), "{e}");
}

#[tokio::test]
async fn a_jwt_not_valid_yet_is_refused() {
    let app = spawn_app_with("sqlite", Clock::system(), jwt_mode).await;
    let now = chrono::Utc::now().timestamp();
    let early = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": now + 7200, "nbf": now + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let bearer = format!("Bearer {early}");
    let (s, v) = post_with(
        &app,
        &app.http,
        "/dapi/call/user",
        &[("authorization", &bearer)],
        json!({"src_uid": "alice"}),
    )
    .await;
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid yet"),
        "{v}"
    );
    // a current token is answered
    app.ok("/dapi/call/user", json!({"src_uid": "alice"})).await;
}

#[tokio::test]
async fn turn_credentials_last_as_long_as_the_join_token() {
    let app = spawn_app_with("sqlite", Clock::system(), |c| {
        c.tokens.ttl = Duration::from_secs(600);
        c.rtc.ice_servers = r#"[{"urls": ["turn:turn.example.org:3478"]}]"#.parse().unwrap();
        c.rtc.turn_secret = Some(api::config::Secret::new("turn-shared-secret"));
    })
    .await;
    let ch = channel_of(&app.ok("/dapi/call/user", json!({"src_uid": "alice"})).await);
    let token = app.rtc_token(&ch, "alice");
    let mut ws = common::rtc_client::connect(&app.rtc_url()).await;
    common::rtc_client::send(
        &mut ws,
        &common::rtc_client::join_text(&ch, "alice", &token),
    )
    .await;
    let now = chrono::Utc::now().timestamp();
    match common::rtc_client::next_msg(&mut ws).await {
        protocol::signaling::ServerMessage::Joined { ice_servers, .. } => {
            let username = ice_servers[0].username.clone().unwrap();
            let expires: i64 = username.split(':').next().unwrap().parse().unwrap();
            let left = expires - now;
            assert!(
                (590..=610).contains(&left),
                "TURN credential lasts {left} s, the token 600 s"
            );
        }
        other => panic!("expected joined, got {other:?}"),
    }
}
