//! Voicemail recordings over real HTTP, uploaded as a test agent would (the agent key,
//! Ogg Opus bodies made with the audio crate's writer): partial uploads replaced by longer
//! ones, the final upload, the list, downloads with Range (206 bodies, 416), the timeline's
//! `recording_ready` and the `recording_ready` push in the outbox, retention by the sweeper,
//! and jwt mode for members only. Both backends.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use api::clock::Clock;
use api::store::PushKind;
use common::agent_ws::agent;
use common::robot::{
    get_as, jwt, jwt_mode, ogg_opus, post_as, take_offer, timeline_of, wait_running,
    without_last_page,
};
use common::{TestApp, backends, spawn_app_with};
use serde_json::{Value, json};
use std::time::Duration;

/// `PUT /agent/recordings/{session}/{uid}?{query}` with `key`; status and body.
async fn put(
    app: &TestApp,
    session: i64,
    uid: &str,
    query: &str,
    key: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let r = app
        .http
        .put(format!(
            "{}/agent/recordings/{session}/{uid}?{query}",
            app.base
        ))
        .bearer_auth(key)
        .body(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap())
}

/// A user call 1001 -> 1002 (1002 with a registered web device), a voicemail robot invited
/// by 1001 and running on a test agent: (channel, session id).
async fn voicemail(app: &TestApp, jwt_for: Option<&str>) -> (String, i64) {
    let token = jwt_for.map(jwt);
    if jwt_for.is_some() {
        let (s, v) = post_as(app, "/dapi/device/register", Some(jwt("1002")).as_deref(),
            json!({"uid": "1002", "platform": "web", "push_token": "https://push.example/endpoint-1002"})).await;
        assert_eq!(s, 200, "{v}");
    } else {
        // Open mode refuses device routes (DAPI_AUTH=jwt only): register through the store.
        use api::push::device::{Platform, PushToken};
        let device = api::store::push::NewDevice {
            uid: api::domain::Uid::parse("1002").unwrap(),
            platform: Platform::Web,
            push_token: PushToken::parse(Platform::Web, "https://push.example/endpoint-1002")
                .unwrap(),
            voip: false,
        };
        app.state
            .store()
            .register_device(&device, 10, app.state.clock().now_ms())
            .await
            .unwrap();
    }
    let (s, v) = post_as(
        app,
        "/dapi/call/user",
        token.as_deref(),
        json!({"src_uid": "1001", "dst_uid": ["1002"]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let ch = v["data"]["channel"].as_str().unwrap().to_owned();
    let mut ws = agent(app, "ag-rec", 4).await;
    let (s, v) = post_as(
        app,
        "/dapi/invite/robot",
        token.as_deref(),
        json!({"uid": "1001", "channel": ch, "record": {"max_seconds": 30}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let offer = take_offer(&mut ws).await;
    assert_eq!(offer["record"]["max_seconds"], 30);
    let id = offer["id"].as_i64().unwrap();
    wait_running(app, id).await;
    // Uploads need the session to exist, not its agent: the link may close now.
    drop(ws);
    (ch, id)
}

const KEY: &str = "test-agent-key";

#[tokio::test]
async fn upload_list_and_download_with_ranges() {
    for backend in backends() {
        let app = spawn_app_with(backend, Clock::system(), |_| {}).await;
        let (ch, sid) = voicemail(&app, None).await;
        // 250 packets of 20 ms; the last granule is 250 x 960 = 240000 and the pre-skip 312, so
        // the duration is (240000 - 312) / 48 = 4993 ms (RFC 7845: granule less pre-skip).
        let file = ogg_opus(250);
        let partial = without_last_page(&file);

        // The agent's key, a member uid, a session that exists, an Ogg Opus body.
        assert_eq!(
            put(&app, sid, "1001", "", "wrong", file.clone()).await.0,
            401
        );
        assert_eq!(
            put(&app, sid + 99, "1001", "", KEY, file.clone()).await.0,
            404
        );
        assert_eq!(
            put(&app, sid, "5555", "", KEY, file.clone()).await.0,
            404,
            "not a member of the call"
        );
        let (s, v) = put(&app, sid, "1001", "", KEY, b"RIFF\0\0\0\0WAVEfmt ".to_vec()).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (400, json!("invalid_body")),
            "{v}"
        );
        let (s, v) = put(&app, sid, "1001", "", KEY, partial.clone()).await;
        assert_eq!(
            s, 400,
            "final (the default) needs the end-of-stream page: {v}"
        );
        let (s, _) = put(
            &app,
            sid,
            "1001",
            "final=false",
            KEY,
            file[..file.len() - 7].to_vec(),
        )
        .await;
        assert_eq!(s, 400, "a file cut inside a page is refused");
        assert_eq!(
            put(&app, sid, "1001", "part=-1", KEY, file.clone()).await.0,
            400
        );
        assert_eq!(
            put(&app, sid, "1001", "final=maybe", KEY, file.clone())
                .await
                .0,
            400
        );

        // Partial uploads: stored, replaced by longer ones, never by shorter ones.
        let early = without_last_page(&partial);
        let (s, v) = put(&app, sid, "1001", "final=false", KEY, early.clone()).await;
        assert_eq!(s, 200, "{v}");
        let rid = v["data"]["id"].as_i64().unwrap();
        assert_eq!(v["data"]["stored"], true);
        assert_eq!(v["data"]["complete"], false);
        let (_, v) = put(&app, sid, "1001", "final=false", KEY, partial.clone()).await;
        assert_eq!(
            (v["data"]["id"].as_i64(), v["data"]["stored"].clone()),
            (Some(rid), json!(true))
        );
        assert_eq!(v["data"]["bytes"], partial.len());
        let (_, v) = put(&app, sid, "1001", "final=false", KEY, early.clone()).await;
        assert_eq!(
            v["data"]["stored"], false,
            "a late shorter upload does not replace a longer one"
        );
        assert_eq!(v["data"]["bytes"], partial.len());
        assert!(timeline_of(&app, &ch, "recording_ready").await.is_empty());
        let list = app
            .http
            .get(format!("{}/dapi/call/recordings?channel={ch}", app.base))
            .send()
            .await
            .unwrap();
        let list: Value = list.json().await.unwrap();
        assert_eq!(list["data"][0]["complete"], false);

        // The final upload: complete, recording_ready on the timeline, a push to the callee.
        let (s, v) = put(&app, sid, "1001", "final=true", KEY, file.clone()).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["data"]["id"].as_i64(), v["data"]["complete"].clone()),
            (Some(rid), json!(true))
        );
        assert_eq!(v["data"]["duration_ms"], 4993);
        assert_eq!(v["data"]["url"], format!("/dapi/call/recording/{rid}"));
        // the same again is a no-op; anything else is refused
        let (s, v) = put(&app, sid, "1001", "", KEY, file.clone()).await;
        assert_eq!((s, v["data"]["stored"].clone()), (200, json!(false)));
        let (s, v) = put(&app, sid, "1001", "", KEY, ogg_opus(300)).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (409, json!("conflict")),
            "{v}"
        );
        let ready = timeline_of(&app, &ch, "recording_ready").await;
        assert_eq!(ready.len(), 1, "{ready:?}");
        assert_eq!(ready[0].uid.as_deref(), Some("1001"));
        assert!(
            ready[0]
                .detail
                .as_deref()
                .unwrap()
                .contains(&format!("recording {rid}: 4993 ms"))
        );
        let pushes: Vec<_> = app
            .state
            .store()
            .push_jobs(&common::channel(&ch))
            .await
            .unwrap()
            .into_iter()
            .filter(|j| j.kind == PushKind::RecordingReady)
            .collect();
        assert_eq!(pushes.len(), 1, "{pushes:?}");
        assert_eq!(pushes[0].uid, "1002");
        let payload = api::push::payload(&pushes[0]);
        assert_eq!(payload["type"], "recording_ready");
        assert_eq!(payload["channel"], ch);
        assert_eq!(api::push::route_job(&pushes[0]), api::push::Route::Webhook);

        // A second part (the session re-dispatched) is its own recording.
        let (s, v) = put(&app, sid, "1001", "part=1", KEY, ogg_opus(50)).await;
        assert_eq!(s, 200, "{v}");
        let rid2 = v["data"]["id"].as_i64().unwrap();
        assert_ne!(rid2, rid);

        // The list.
        let r = get_as(
            &app,
            &format!("/dapi/call/recordings?channel={ch}"),
            None,
            &[],
        )
        .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let items = v["data"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{v}");
        let first = &items[0];
        assert_eq!(first["id"], rid);
        assert_eq!(first["channel"], ch);
        assert_eq!(first["uid"], 1001);
        assert_eq!(first["duration_ms"], 4993);
        assert_eq!(first["bytes"], file.len());
        assert_eq!(first["url"], format!("/dapi/call/recording/{rid}"));
        assert_eq!(first["complete"], true);
        assert_eq!(first["part"], 0);
        assert_eq!(first["session_id"], sid);
        assert_eq!(first["started_at"].as_str().unwrap().len(), 19, "{first}");
        assert_eq!(items[1]["part"], 1);
        assert_eq!(items[1]["duration_ms"], 993, "(50 x 960 - 312) / 48");
        assert_eq!(
            get_as(&app, "/dapi/call/recordings?channel=ch_none", None, &[])
                .await
                .status(),
            404
        );
        assert_eq!(
            get_as(&app, "/dapi/call/recordings", None, &[])
                .await
                .status(),
            400
        );

        // Downloads: whole, ranges, 416.
        let url = format!("/dapi/call/recording/{rid}");
        let r = get_as(&app, &url, None, &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "audio/ogg");
        assert_eq!(r.headers()["accept-ranges"], "bytes");
        assert_eq!(r.bytes().await.unwrap().as_ref(), file.as_slice());
        let len = file.len();
        for (range, start, end) in [
            ("bytes=0-99".to_owned(), 0, 99),
            (format!("bytes={}-", len - 10), len - 10, len - 1),
            ("bytes=-27".to_owned(), len - 27, len - 1),
            (format!("bytes=100-{}", len + 500), 100, len - 1),
        ] {
            let r = get_as(&app, &url, None, &[("range", &range)]).await;
            assert_eq!(r.status(), 206, "{range}");
            assert_eq!(
                r.headers()["content-range"],
                format!("bytes {start}-{end}/{len}").as_str()
            );
            assert_eq!(r.headers()["content-type"], "audio/ogg");
            assert_eq!(
                r.bytes().await.unwrap().as_ref(),
                &file[start..=end],
                "{range}"
            );
        }
        let r = get_as(&app, &url, None, &[("range", &format!("bytes={len}-"))]).await;
        assert_eq!(r.status(), 416);
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes */{len}").as_str()
        );
        let r = get_as(&app, &url, None, &[("range", "bytes=0-1,5-9")]).await;
        assert_eq!(r.status(), 200, "several ranges: the whole file");
        assert_eq!(
            get_as(&app, "/dapi/call/recording/999999", None, &[])
                .await
                .status(),
            404
        );
        assert_eq!(
            get_as(&app, "/dapi/call/recording/abc", None, &[])
                .await
                .status(),
            400
        );
    }
}

#[tokio::test]
async fn uploads_over_the_size_limit_are_413() {
    let app = spawn_app_with("sqlite", Clock::system(), |c| c.recordings.max_bytes = 1000).await;
    let (_, sid) = voicemail(&app, None).await;
    let (s, v) = put(&app, sid, "1001", "", KEY, ogg_opus(500)).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (413, json!("payload_too_large")),
        "{v}"
    );
}

#[tokio::test]
async fn the_sweeper_deletes_recordings_past_their_retention() {
    for backend in backends() {
        let clock = Clock::manual(1_780_000_000_000);
        let app = spawn_app_with(backend, clock.clone(), |c| {
            c.recordings.retention = Duration::from_secs(30 * 86_400)
        })
        .await;
        let (ch, sid) = voicemail(&app, None).await;
        let (s, _) = put(&app, sid, "1001", "", KEY, ogg_opus(50)).await;
        assert_eq!(s, 200);
        clock.advance_ms(29 * 86_400_000);
        let (s, _) = put(&app, sid, "1001", "part=1", KEY, ogg_opus(50)).await;
        assert_eq!(s, 200);
        let r = api::sweeper::sweep_once(&app.state).await.unwrap();
        assert_eq!(r.recordings_pruned, 0);
        clock.advance_ms(2 * 86_400_000); // the first is 31 days old, the second 2
        let r = api::sweeper::sweep_once(&app.state).await.unwrap();
        assert_eq!(r.recordings_pruned, 1, "[{backend}]");
        let channel = common::channel(&ch);
        let left = app.state.store().list_recordings(&channel).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].part, 1);
        clock.advance_ms(29 * 86_400_000);
        assert_eq!(
            api::sweeper::sweep_once(&app.state)
                .await
                .unwrap()
                .recordings_pruned,
            1
        );
        assert!(
            app.state
                .store()
                .list_recordings(&common::channel(&ch))
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn jwt_mode_serves_recordings_to_members_only() {
    for backend in backends() {
        let app = spawn_app_with(backend, Clock::system(), jwt_mode).await;
        let (ch, sid) = voicemail(&app, Some("1001")).await;
        let (s, v) = put(&app, sid, "1001", "", KEY, ogg_opus(50)).await;
        assert_eq!(s, 200, "{v}");
        let rid = v["data"]["id"].as_i64().unwrap();
        let list = format!("/dapi/call/recordings?channel={ch}");
        let file = format!("/dapi/call/recording/{rid}");
        for member in ["1001", "1002"] {
            let t = jwt(member);
            assert_eq!(
                get_as(&app, &list, Some(&t), &[]).await.status(),
                200,
                "{member}"
            );
            assert_eq!(
                get_as(&app, &file, Some(&t), &[]).await.status(),
                200,
                "{member}"
            );
        }
        let outsider = jwt("666");
        assert_eq!(
            get_as(&app, &list, Some(&outsider), &[]).await.status(),
            403
        );
        assert_eq!(
            get_as(&app, &file, Some(&outsider), &[]).await.status(),
            403
        );
        assert_eq!(
            get_as(&app, &file, Some(&outsider), &[("range", "bytes=0-9")])
                .await
                .status(),
            403
        );
        assert_eq!(get_as(&app, &list, None, &[]).await.status(), 401);
        assert_eq!(get_as(&app, &file, None, &[]).await.status(), 401);
    }
}
