//! One conformance suite for both backends. Each test runs on SQLite always, and on
//! PostgreSQL when `TEST_DATABASE_URL` is set (CI always sets it).

use super::*;
use crate::call_state::{CallState, Input};
use crate::domain::{ChannelName, EventCode, MsgStatus, Uid};

fn uid(s: &str) -> Uid {
    Uid::parse(s).unwrap()
}

/// Fresh stores to run a test against: SQLite in a temp dir, and a fresh PostgreSQL
/// database when `TEST_DATABASE_URL` is set.
async fn stores() -> Vec<(Store, Option<tempfile_dir::TempDir>)> {
    let mut out = Vec::new();
    let dir = tempfile_dir::TempDir::new();
    let url = format!("sqlite://{}/store.db?mode=rwc", dir.path());
    out.push((Store::connect(&url).await.unwrap(), Some(dir)));
    if let Ok(base) = std::env::var("TEST_DATABASE_URL") {
        let url = crate::store::testdb::fresh_postgres(&base).await.unwrap();
        out.push((Store::connect(&url).await.unwrap(), None));
    }
    out
}

/// A tiny temp-dir helper (no extra dependency).
mod tempfile_dir {
    pub struct TempDir(std::path::PathBuf);
    impl TempDir {
        pub fn new() -> Self {
            use rand::Rng;
            let n: u64 = rand::rng().random();
            let p = std::env::temp_dir().join(format!("dapi-store-{n:x}"));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub fn path(&self) -> String {
            self.0.display().to_string()
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn call(channel: &str, caller: &str, callees: &[&str], now: i64) -> NewCall {
    NewCall {
        channel: ChannelName::parse(channel).unwrap(),
        caller: uid(caller),
        callees: callees.iter().map(|c| uid(c)).collect(),
        kind: CallKind::User,
        extra_msg: Some("hello".into()),
        now_ms: now,
        ring_deadline_ms: Some(now + 60_000),
        caller_heartbeat_deadline_ms: now + 45_000,
        robot: None,
    }
}

fn meta(kind: &'static str, now: i64) -> InputMeta {
    InputMeta {
        kind,
        source: "app",
        detail: None,
        now_ms: now,
        heartbeat_deadline_ms: None,
        always_record: true,
    }
}

#[tokio::test]
async fn create_call_and_duplicate_channel_conflicts() {
    for (s, _d) in stores().await {
        s.create_call(&call("ch_a", "1", &["2", "3"], 1000))
            .await
            .unwrap();
        let e = s
            .create_call(&call("ch_a", "9", &[], 1000))
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict(_)),
            "{} {e:?}",
            s.backend()
        );
        let c = s.find_call("ch_a").await.unwrap().unwrap();
        assert_eq!(c.caller_uid, "1");
        assert_eq!(c.state, CallState::Ringing);
        assert!(s.find_call("ch_nope").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn recent_messages_move_callee_rows_from_0_to_1_and_respect_the_window() {
    for (s, _d) in stores().await {
        s.create_call(&call("ch_old", "1", &["2"], 1_000))
            .await
            .unwrap();
        s.create_call(&call("ch_new", "1", &["2"], 100_000))
            .await
            .unwrap();
        let rows = s.recent_messages(&uid("2"), 50_000).await.unwrap();
        assert_eq!(rows.len(), 1, "{}", s.backend());
        assert_eq!(rows[0].channel, "ch_new");
        assert_eq!(
            rows[0].status,
            MsgStatus::Created,
            "the first fetch shows 0"
        );
        assert_eq!(rows[0].extra_msg.as_deref(), Some("hello"));
        assert_eq!(rows[0].src_uid, "1");
        let rows = s.recent_messages(&uid("2"), 50_000).await.unwrap();
        assert_eq!(rows[0].status, MsgStatus::Fetched, "then 1");
        // the caller sees its own call, and fetching does not move the caller's row
        let rows = s.recent_messages(&uid("1"), 0).await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].channel, "ch_new", "newest first");
        assert!(rows.iter().all(|r| r.status == MsgStatus::Created));
    }
}

#[tokio::test]
async fn events_drive_the_call_and_are_on_the_timeline() {
    for (s, _d) in stores().await {
        s.create_call(&call("ch_e", "A", &["B"], 1000))
            .await
            .unwrap();
        let t = s
            .apply_input(
                "ch_e",
                &Input::Event {
                    uid: uid("B"),
                    code: EventCode::Connected,
                },
                &meta("event", 2000),
            )
            .await
            .unwrap();
        assert_eq!(t.new_state, Some((CallState::Connected, None)));
        s.apply_input(
            "ch_e",
            &Input::Event {
                uid: uid("A"),
                code: EventCode::Ended,
            },
            &meta("event", 3000),
        )
        .await
        .unwrap();
        s.apply_input(
            "ch_e",
            &Input::Event {
                uid: uid("B"),
                code: EventCode::Ended,
            },
            &meta("event", 4000),
        )
        .await
        .unwrap();
        let c = s.find_call("ch_e").await.unwrap().unwrap();
        assert_eq!(
            (c.state, c.end_code),
            (CallState::Ended, Some(2)),
            "{}",
            s.backend()
        );
        // a late event is recorded but changes nothing
        let t = s
            .apply_input(
                "ch_e",
                &Input::Event {
                    uid: uid("A"),
                    code: EventCode::Connected,
                },
                &meta("event", 5000),
            )
            .await
            .unwrap();
        assert!(t.ignored.is_some());
        assert_eq!(
            s.find_call("ch_e").await.unwrap().unwrap().state,
            CallState::Ended
        );
        let tl = s.timeline("ch_e").await.unwrap();
        let kinds: Vec<_> = tl.iter().map(|e| (e.kind.as_str(), e.code)).collect();
        assert_eq!(
            kinds,
            vec![
                ("created", None),
                ("event", Some(1)),
                ("event", Some(2)),
                ("event", Some(2)),
                ("event", Some(1))
            ]
        );
        assert!(tl[4].effect.starts_with("ignored"));
        assert!(tl.windows(2).all(|w| w[0].id < w[1].id));
        let rows = s.recent_messages(&uid("B"), 0).await.unwrap();
        assert_eq!(rows[0].status, MsgStatus::Ended);
        let e = s
            .apply_input(
                "ch_x",
                &Input::Seen { uid: uid("A") },
                &meta("heartbeat", 1),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::NotFound(_)));
    }
}

#[tokio::test]
async fn one_robot_per_channel_and_quit_cancels_a_queued_one() {
    for (s, _d) in stores().await {
        s.create_call(&call("ch_r", "A", &["B"], 1000))
            .await
            .unwrap();
        let robot = NewRobotSession {
            uid: "robot".into(),
            audio: vec!["default".into()],
            loop_audio: false,
            max_attempts: 3,
        };
        let first = s
            .invite_robot("ch_r", &uid("A"), &robot, 2000)
            .await
            .unwrap();
        assert!(matches!(first, InviteOutcome::Queued(_)), "{}", s.backend());
        let second = s
            .invite_robot("ch_r", &uid("B"), &robot, 2001)
            .await
            .unwrap();
        assert_eq!(second, InviteOutcome::AlreadyPresent);
        assert_eq!(
            s.quit_robot("ch_r", &uid("A"), 3000).await.unwrap(),
            None,
            "queued: cancelled, no agent to tell"
        );
        // after the cancel a new invite queues again
        let third = s
            .invite_robot("ch_r", &uid("A"), &robot, 4000)
            .await
            .unwrap();
        assert!(matches!(third, InviteOutcome::Queued(_)));
        assert!(matches!(
            s.invite_robot("ch_none", &uid("A"), &robot, 1).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.quit_robot("ch_none", &uid("A"), 1).await,
            Err(StoreError::NotFound(_))
        ));
    }
}

#[tokio::test]
async fn concurrent_invites_leave_exactly_one_session() {
    for (s, _d) in stores().await {
        s.create_call(&call("ch_race", "A", &[], 1000))
            .await
            .unwrap();
        let robot = NewRobotSession {
            uid: "robot".into(),
            audio: vec!["default".into()],
            loop_audio: false,
            max_attempts: 3,
        };
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (s, robot) = (s.clone(), robot.clone());
            tasks.push(tokio::spawn(async move {
                s.invite_robot("ch_race", &uid("A"), &robot, 2000 + i).await
            }));
        }
        let mut queued = 0;
        for t in tasks {
            if let InviteOutcome::Queued(_) = t.await.unwrap().unwrap() {
                queued += 1;
            }
        }
        assert_eq!(queued, 1, "{}", s.backend());
    }
}

fn task(src: &str, at: i64) -> TaskFields {
    TaskFields {
        src_uid: uid(src),
        dst_uid: vec![uid("2"), uid("3")],
        call_time: at,
        taskid: "t1".into(),
        tone_list: vec![],
    }
}

#[tokio::test]
async fn tasks_insert_update_list_delete() {
    for (s, _d) in stores().await {
        let a = s.insert_task(&task("1", 300), 1).await.unwrap();
        let b = s.insert_task(&task("1", 100), 1).await.unwrap();
        s.insert_task(&task("other", 50), 1).await.unwrap();
        assert_eq!(a.state, "pending");
        assert_eq!(a.dst_uid, vec!["2", "3"]);
        let mut f = task("1", 200);
        f.taskid = "t2".into();
        let a2 = s.update_task(a.id, &f, 2).await.unwrap();
        assert_eq!((a2.id, a2.call_time, a2.taskid.as_str()), (a.id, 200, "t2"));
        assert!(matches!(
            s.update_task(999_999, &f, 2).await,
            Err(StoreError::NotFound(_))
        ));
        let (rows, total) = s.list_tasks(&uid("1"), 1, 1).await.unwrap();
        assert_eq!((rows.len(), total), (1, 2), "{}", s.backend());
        assert_eq!(rows[0].id, b.id, "soonest first");
        let (rows, _) = s.list_tasks(&uid("1"), 2, 1).await.unwrap();
        assert_eq!(rows[0].id, a.id);
        let (rows, total) = s.list_tasks(&uid("1"), 3, 1).await.unwrap();
        assert_eq!((rows.len(), total), (0, 2));
        assert!(matches!(
            s.delete_task(a.id, &uid("other")).await,
            Err(StoreError::NotFound(_))
        ));
        s.delete_task(a.id, &uid("1")).await.unwrap();
        assert_eq!(s.list_tasks(&uid("1"), 1, 20).await.unwrap().1, 1);
    }
}

#[tokio::test]
async fn dev_credentials_are_generated_once() {
    for (s, _d) in stores().await {
        let a = s
            .dev_credentials(("a".repeat(32), "b".repeat(32)))
            .await
            .unwrap();
        let b = s
            .dev_credentials(("c".repeat(32), "d".repeat(32)))
            .await
            .unwrap();
        assert_eq!(a, b);
        assert!(s.ready().await.unwrap());
    }
}
