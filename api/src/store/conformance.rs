//! One conformance suite for both backends. Each test runs on SQLite always, and on
//! PostgreSQL when `TEST_DATABASE_URL` is set (CI always sets it).

use super::*;
use crate::call_state::{CallState, Input};
use crate::domain::{ChannelName, EventCode, MsgStatus, Uid};
use test_support::TempDir;

fn uid(s: &str) -> Uid {
    Uid::parse(s).unwrap()
}

fn ch(s: &str) -> ChannelName {
    ChannelName::parse(s).unwrap()
}

/// Fresh stores to run a test against: SQLite in a temp dir, and a fresh PostgreSQL
/// database when `TEST_DATABASE_URL` is set.
async fn stores() -> Vec<(Store, Option<TempDir>)> {
    let mut out = Vec::new();
    let dir = TempDir::new("dapi-store");
    let url = dir.sqlite_url("store.db");
    out.push((Store::connect(&url).await.unwrap(), Some(dir)));
    if let Ok(base) = std::env::var("TEST_DATABASE_URL") {
        let url = crate::store::testdb::fresh_postgres(&base).await.unwrap();
        out.push((Store::connect(&url).await.unwrap(), None));
    }
    out
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
        let c = s.find_call(&ch("ch_a")).await.unwrap().unwrap();
        assert_eq!(c.caller_uid, "1");
        assert_eq!(c.state, CallState::Ringing);
        assert!(s.find_call(&ch("ch_nope")).await.unwrap().is_none());
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
        assert_eq!(rows[0].channel.as_str(), "ch_new");
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
        assert_eq!(rows[0].channel.as_str(), "ch_new", "newest first");
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
                &ch("ch_e"),
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
            &ch("ch_e"),
            &Input::Event {
                uid: uid("A"),
                code: EventCode::Ended,
            },
            &meta("event", 3000),
        )
        .await
        .unwrap();
        s.apply_input(
            &ch("ch_e"),
            &Input::Event {
                uid: uid("B"),
                code: EventCode::Ended,
            },
            &meta("event", 4000),
        )
        .await
        .unwrap();
        let c = s.find_call(&ch("ch_e")).await.unwrap().unwrap();
        assert_eq!(
            (c.state, c.end_code),
            (CallState::Ended, Some(2)),
            "{}",
            s.backend()
        );
        // a late event is recorded but changes nothing
        let t = s
            .apply_input(
                &ch("ch_e"),
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
            s.find_call(&ch("ch_e")).await.unwrap().unwrap().state,
            CallState::Ended
        );
        let tl = s.timeline(&ch("ch_e")).await.unwrap();
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
                &ch("ch_x"),
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
            requested_by: "A".into(),
            max_per_requester: 0,
            options: None,
        };
        let first = s
            .invite_robot(&ch("ch_r"), &uid("A"), &robot, 2000)
            .await
            .unwrap();
        assert!(matches!(first, InviteOutcome::Queued(_)), "{}", s.backend());
        let second = s
            .invite_robot(&ch("ch_r"), &uid("B"), &robot, 2001)
            .await
            .unwrap();
        assert_eq!(second, InviteOutcome::AlreadyPresent);
        assert_eq!(
            s.quit_robot(&ch("ch_r"), &uid("A"), 3000).await.unwrap(),
            None,
            "queued: cancelled, no agent to tell"
        );
        // after the cancel a new invite queues again
        let third = s
            .invite_robot(&ch("ch_r"), &uid("A"), &robot, 4000)
            .await
            .unwrap();
        assert!(matches!(third, InviteOutcome::Queued(_)));
        assert!(matches!(
            s.invite_robot(&ch("ch_none"), &uid("A"), &robot, 1).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.quit_robot(&ch("ch_none"), &uid("A"), 1).await,
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
            requested_by: "A".into(),
            max_per_requester: 0,
            options: None,
        };
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (s, robot) = (s.clone(), robot.clone());
            tasks.push(tokio::spawn(async move {
                s.invite_robot(&ch("ch_race"), &uid("A"), &robot, 2000 + i)
                    .await
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
async fn pending_tasks_are_capped_per_owner() {
    for (s, _d) in stores().await {
        for at in [100, 200] {
            s.insert_task(&task("1", at), 1, 2).await.unwrap();
        }
        assert!(matches!(
            s.insert_task(&task("1", 300), 1, 2).await,
            Err(StoreError::LimitReached(m)) if m.contains("DAPI_CALLTASKS_PER_UID")
        ));
        let (_, total) = s.list_tasks(&uid("1"), 1, 10).await.unwrap();
        assert_eq!(total, 2, "nothing written: {}", s.backend());
        // Another owner is not affected; 0 is no limit.
        s.insert_task(&task("2", 100), 1, 2).await.unwrap();
        s.insert_task(&task("1", 300), 1, 0).await.unwrap();
        // Only pending tasks count: one fired makes room.
        let (rows, _) = s.list_tasks(&uid("1"), 1, 10).await.unwrap();
        s.delete_task(rows[0].id, &uid("1")).await.unwrap();
        s.delete_task(rows[1].id, &uid("1")).await.unwrap();
        s.insert_task(&task("1", 400), 1, 2).await.unwrap();
    }
}

#[tokio::test]
async fn tasks_insert_update_list_delete() {
    for (s, _d) in stores().await {
        let a = s.insert_task(&task("1", 300), 1, 0).await.unwrap();
        let b = s.insert_task(&task("1", 100), 1, 0).await.unwrap();
        s.insert_task(&task("other", 50), 1, 0).await.unwrap();
        assert_eq!(a.state, TaskState::Pending);
        assert_eq!(a.dst_uid, vec!["2", "3"]);
        let mut f = task("1", 200);
        f.taskid = "t2".into();
        let a2 = s.update_task(a.id, &f, 2).await.unwrap();
        assert_eq!((a2.id, a2.call_time, a2.taskid.as_str()), (a.id, 200, "t2"));
        assert!(matches!(
            s.update_task(TaskId::new(999_999), &f, 2).await,
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

// ------------------------------------------------------------ robot session transitions

use protocol::agent::SessionState as AgentState;

fn robot() -> NewRobotSession {
    NewRobotSession {
        uid: "robot".into(),
        audio: vec!["default".into()],
        loop_audio: false,
        max_attempts: 3,
        requested_by: "A".into(),
        max_per_requester: 0,
        options: None,
    }
}

/// A call with a queued robot session; returns the session id.
async fn queued_session(s: &Store, channel: &str, now: i64) -> SessionId {
    let mut c = call(channel, "A", &[], now);
    c.robot = Some(robot());
    s.create_call(&c).await.unwrap();
    let sessions = s.channel_sessions(&ch(channel)).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].state, RobotState::Queued);
    sessions[0].id
}

#[tokio::test]
async fn offer_accept_renew_play_leave() {
    for (s, _d) in stores().await {
        let id = queued_session(&s, "ch_life", 1000).await;
        let due = s.due_sessions(1000, 10).await.unwrap();
        assert_eq!(due.iter().map(|x| x.id).collect::<Vec<_>>(), vec![id]);
        assert!(s.offer_session(id, "ag1", 1001).await.unwrap());
        assert!(
            !s.offer_session(id, "ag2", 1001).await.unwrap(),
            "only one offer wins"
        );
        assert!(s.due_sessions(2000, 10).await.unwrap().is_empty());
        assert!(
            s.accept_session(id, "ag2", 1002, 11_002)
                .await
                .unwrap()
                .is_none(),
            "not offered to ag2"
        );
        let r = s
            .accept_session(id, "ag1", 1002, 11_002)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.state, r.attempts, r.lease_expires_at),
            (RobotState::Running, 1, Some(11_002))
        );
        assert_eq!(
            s.renew_leases("ag1", &[id, SessionId::new(999)], 5000, 15_000)
                .await
                .unwrap(),
            vec![SessionId::new(999)]
        );
        assert_eq!(
            s.robot_session(id).await.unwrap().unwrap().lease_expires_at,
            Some(15_000)
        );
        assert_eq!(
            s.renew_leases("ag2", &[id], 5000, 15_000).await.unwrap(),
            vec![id],
            "ag2 holds nothing"
        );
        let o = s
            .report_status(id, "ag1", AgentState::Playing, "", Some(4200), 6000)
            .await
            .unwrap();
        assert_eq!(o, StatusOutcome::Now(RobotState::Running));
        assert_eq!(
            s.robot_session(id).await.unwrap().unwrap().position_ms,
            4200
        );
        assert_eq!(
            s.report_status(id, "ag2", AgentState::Left, "", None, 6000)
                .await
                .unwrap(),
            StatusOutcome::NotHeld
        );
        let o = s
            .report_status(id, "ag1", AgentState::Left, "audio ended", None, 7000)
            .await
            .unwrap();
        assert_eq!(o, StatusOutcome::Now(RobotState::Left), "{}", s.backend());
        // terminal: a late report is refused, and the channel can have a robot again
        assert_eq!(
            s.report_status(id, "ag1", AgentState::Playing, "", None, 8000)
                .await
                .unwrap(),
            StatusOutcome::NotHeld
        );
        assert!(matches!(
            s.invite_robot(&ch("ch_life"), &uid("A"), &robot(), 9000)
                .await
                .unwrap(),
            InviteOutcome::Queued(_)
        ));
        let kinds: Vec<String> = s
            .timeline(&ch("ch_life"))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(
            kinds.contains(&"robot_accepted".into()) && kinds.contains(&"robot_left".into()),
            "{kinds:?}"
        );
    }
}

#[tokio::test]
async fn reject_and_expired_offer_go_back_to_the_queue() {
    for (s, _d) in stores().await {
        let id = queued_session(&s, "ch_rej", 1000).await;
        s.offer_session(id, "ag1", 1000).await.unwrap();
        assert!(s.reject_session(id, "ag1", "full", 1100).await.unwrap());
        assert!(
            s.due_sessions(1500, 10).await.unwrap().is_empty(),
            "held back a second"
        );
        assert_eq!(s.due_sessions(2100, 10).await.unwrap()[0].id, id);
        s.offer_session(id, "ag2", 3000).await.unwrap();
        let out = s.rescue_lapsed(10_000, 2999).await.unwrap();
        assert_eq!(out.offers_expired, 0, "offer is younger than the deadline");
        let out = s.rescue_lapsed(10_000, 3001).await.unwrap();
        assert_eq!(out.offers_expired, 1, "{}", s.backend());
        let r = s.robot_session(id).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.agent_id, r.attempts),
            (RobotState::Queued, None, 0)
        );
    }
}

#[tokio::test]
async fn failures_retry_with_backoff_then_die_keeping_every_error() {
    for (s, _d) in stores().await {
        let id = queued_session(&s, "ch_fail", 0).await;
        let mut now = 1000;
        for attempt in 1..=3 {
            let due = s.due_sessions(now, 10).await.unwrap();
            assert_eq!(due.len(), 1, "attempt {attempt} due at {now}");
            s.offer_session(id, "ag1", now).await.unwrap();
            s.accept_session(id, "ag1", now, now + 10_000)
                .await
                .unwrap()
                .unwrap();
            let o = s
                .report_status(
                    id,
                    "ag1",
                    AgentState::Failed,
                    &format!("asset missing #{attempt}"),
                    None,
                    now,
                )
                .await
                .unwrap();
            if attempt < 3 {
                assert_eq!(o, StatusOutcome::Now(RobotState::Queued));
                let r = s.robot_session(id).await.unwrap().unwrap();
                assert_eq!(r.run_at, now + robot::backoff_ms(attempt), "backoff");
                assert!(
                    s.due_sessions(now + robot::backoff_ms(attempt) - 1, 10)
                        .await
                        .unwrap()
                        .is_empty()
                );
                now += robot::backoff_ms(attempt);
            } else {
                assert_eq!(o, StatusOutcome::Now(RobotState::Dead), "{}", s.backend());
            }
        }
        let r = s.robot_session(id).await.unwrap().unwrap();
        assert_eq!(r.errors.len(), 3);
        assert!(r.errors[2].contains("asset missing #3"), "{:?}", r.errors);
        let kinds: Vec<String> = s
            .timeline(&ch("ch_fail"))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds.iter().filter(|k| *k == "robot_failed").count(), 2);
        assert_eq!(kinds.iter().filter(|k| *k == "robot_dead").count(), 1);
    }
}

#[tokio::test]
async fn lapsed_lease_redispatches_with_position_then_dies() {
    for (s, _d) in stores().await {
        let id = queued_session(&s, "ch_lapse", 0).await;
        s.offer_session(id, "ag1", 1000).await.unwrap();
        s.accept_session(id, "ag1", 1000, 11_000)
            .await
            .unwrap()
            .unwrap();
        s.report_status(id, "ag1", AgentState::Playing, "", Some(7_500), 5000)
            .await
            .unwrap();
        assert_eq!(
            s.rescue_lapsed(10_999, 0).await.unwrap(),
            RescueOutcome::default(),
            "lease still valid"
        );
        let out = s.rescue_lapsed(11_001, 0).await.unwrap();
        assert_eq!(out.requeued, vec![id], "{}", s.backend());
        let r = s.robot_session(id).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.position_ms, r.redispatches),
            (RobotState::Queued, 7_500, 1)
        );
        assert!(r.errors[0].contains("lease lapsed on agent ag1"));
        // two more lapses use up the attempts
        let mut now = 20_000;
        for _ in 0..2 {
            now = now.max(s.robot_session(id).await.unwrap().unwrap().run_at);
            s.offer_session(id, "ag2", now).await.unwrap();
            s.accept_session(id, "ag2", now, now + 10_000)
                .await
                .unwrap()
                .unwrap();
            now += 10_001;
            s.rescue_lapsed(now, 0).await.unwrap();
        }
        let r = s.robot_session(id).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.attempts, r.errors.len()),
            (RobotState::Dead, 3, 3)
        );
        let stats = s.queue_stats(now).await.unwrap();
        assert_eq!(stats.redispatches, 2);
        assert!(stats.by_state.contains(&("dead".into(), 1)));
    }
}

#[tokio::test]
async fn quit_while_running_asks_the_agent_and_lapse_then_cancels() {
    for (s, _d) in stores().await {
        let id = queued_session(&s, "ch_quit", 0).await;
        s.offer_session(id, "ag1", 1000).await.unwrap();
        s.accept_session(id, "ag1", 1000, 11_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.quit_robot(&ch("ch_quit"), &uid("A"), 2000).await.unwrap(),
            Some(id)
        );
        assert_eq!(s.pending_leaves("ag1").await.unwrap(), vec![id]);
        assert!(s.pending_leaves("ag2").await.unwrap().is_empty());
        // the agent dies before it can leave: the session is not re-dispatched
        s.rescue_lapsed(12_000, 0).await.unwrap();
        assert_eq!(
            s.robot_session(id).await.unwrap().unwrap().state,
            RobotState::Cancelled,
            "{}",
            s.backend()
        );
        // a call that ends tells its robot to leave
        let id2 = queued_session(&s, "ch_end", 0).await;
        s.offer_session(id2, "ag1", 1000).await.unwrap();
        s.accept_session(id2, "ag1", 1000, 11_000)
            .await
            .unwrap()
            .unwrap();
        let t = s
            .apply_input(
                &ch("ch_end"),
                &Input::Event {
                    uid: uid("A"),
                    code: EventCode::Ended,
                },
                &meta("event", 3000),
            )
            .await
            .unwrap();
        assert!(t.robot_leave);
        assert_eq!(s.pending_leaves("ag1").await.unwrap(), vec![id2]);
        assert_eq!(s.queue_stats(3000).await.unwrap().depth, 0);
    }
}

/// Offer and accept `id` to `agent` at `now` (lease 10 s) and report it playing at `pos`.
async fn running_on(s: &Store, id: SessionId, agent: &str, now: i64, pos: Option<u64>) {
    assert!(s.offer_session(id, agent, now).await.unwrap(), "offer {id}");
    s.accept_session(id, agent, now, now + 10_000)
        .await
        .unwrap()
        .unwrap();
    if let Some(p) = pos {
        s.report_status(id, agent, AgentState::Playing, "", Some(p), now)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_closed_link_offers_its_sessions_again_at_once_unless_a_newer_link_holds_them() {
    for (s, _d) in stores().await {
        let id = queued_session(&s, "ch_link", 0).await;
        let offered = queued_session(&s, "ch_link_offer", 0).await;
        assert!(
            s.open_link("ag1", "L1", &[], 1000, 11_000)
                .await
                .unwrap()
                .is_empty()
        );
        running_on(&s, id, "ag1", 1000, Some(6_400)).await;
        assert!(s.offer_session(offered, "ag1", 3000).await.unwrap());

        // The agent registers again over L2 before the close of L1 is noticed (a half-open
        // socket): L1's close changes nothing, L2 holds the session.
        assert!(
            s.open_link("ag1", "L2", &[id], 3500, 13_500)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            s.close_link("ag1", "L1", 3600).await.unwrap(),
            LinkClosed::default(),
            "{}",
            s.backend()
        );
        let r = s.robot_session(id).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.agent_id.as_deref(), r.lease_expires_at),
            (RobotState::Running, Some("ag1"), Some(13_500))
        );
        assert_eq!(
            s.robot_session(offered).await.unwrap().unwrap().state,
            RobotState::Offered
        );

        // L2 closes: in one go, the running session is queued for now with its position,
        // counting a re-dispatch but not an attempt, and the unanswered offer goes back.
        let c = s.close_link("ag1", "L2", 4000).await.unwrap();
        assert_eq!(
            c,
            LinkClosed {
                current: true,
                requeued: vec![id],
                ended: vec![],
                offers_returned: 1
            },
            "{}",
            s.backend()
        );
        let r = s.robot_session(id).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.position_ms, r.redispatches, r.attempts, r.run_at),
            (RobotState::Queued, 6_400, 1, 0, 4000)
        );
        assert!(r.lease_expires_at.is_none());
        assert!(
            r.errors[0].contains("link to agent ag1 closed (while playing"),
            "{:?}",
            r.errors
        );
        let due: Vec<SessionId> = s
            .due_sessions(4000, 10)
            .await
            .unwrap()
            .iter()
            .map(|x| x.id)
            .collect();
        assert!(due.contains(&id) && due.contains(&offered), "{due:?}");
        // Once closed, closing again changes nothing; the lease rescue has nothing to do.
        assert!(!s.close_link("ag1", "L2", 4100).await.unwrap().current);
        assert_eq!(
            s.rescue_lapsed(30_000, 0).await.unwrap().requeued,
            Vec::<SessionId>::new()
        );
        // Another agent resumes it: the same attempt number, from the position.
        running_on(&s, id, "ag2", 4200, None).await;
        let r = s.robot_session(id).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.agent_id.as_deref(), r.attempts, r.position_ms),
            (RobotState::Running, Some("ag2"), 1, 6_400)
        );
        let kinds: Vec<String> = s
            .timeline(&ch("ch_link"))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(kinds.contains(&"robot_redispatched".into()), "{kinds:?}");
        assert_eq!(s.queue_stats(5000).await.unwrap().redispatches, 1);
    }
}

#[tokio::test]
async fn an_agent_reconnecting_gets_back_what_nobody_took_and_leaves_what_was_taken() {
    for (s, _d) in stores().await {
        let kept = queued_session(&s, "ch_back", 0).await;
        let taken = queued_session(&s, "ch_taken", 0).await;
        s.open_link("ag1", "L1", &[], 1000, 11_000).await.unwrap();
        running_on(&s, kept, "ag1", 1000, Some(2_000)).await;
        running_on(&s, taken, "ag1", 1000, Some(3_000)).await;
        // The link drops while the agent lives on and keeps playing.
        let c = s.close_link("ag1", "L1", 2000).await.unwrap();
        assert_eq!(c.requeued, vec![kept, taken], "{}", s.backend());
        // Another agent takes one of them before ag1 is back.
        running_on(&s, taken, "ag2", 2100, None).await;
        // ag1 registers again holding both: the one nobody took is its own again (no
        // re-dispatch, no extra attempt), the other must be left.
        let lost = s
            .open_link("ag1", "L2", &[kept, taken], 2300, 12_300)
            .await
            .unwrap();
        assert_eq!(lost, vec![taken], "{}", s.backend());
        let r = s.robot_session(kept).await.unwrap().unwrap();
        assert_eq!(
            (
                r.state,
                r.agent_id.as_deref(),
                r.lease_expires_at,
                r.attempts,
                r.redispatches,
                r.position_ms
            ),
            (RobotState::Running, Some("ag1"), Some(12_300), 1, 0, 2_000)
        );
        let r = s.robot_session(taken).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.agent_id.as_deref()),
            (RobotState::Running, Some("ag2"))
        );
        // It renews and reports as before.
        assert!(
            s.renew_leases("ag1", &[kept], 5000, 15_000)
                .await
                .unwrap()
                .is_empty()
        );
        let kinds: Vec<String> = s
            .timeline(&ch("ch_back"))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(kinds.contains(&"robot_reclaimed".into()), "{kinds:?}");
    }
}

#[tokio::test]
async fn links_lost_while_playing_never_kill_a_session_but_before_playing_they_count() {
    for (s, _d) in stores().await {
        let id = queued_session(&s, "ch_crashes", 0).await;
        let mut now = 1000;
        // Six agents die one after the other while playing it: it is always queued again
        // at once, its attempt given back.
        for i in 0..6_i64 {
            let (agent, link) = (format!("ag{i}"), format!("L{i}"));
            s.open_link(&agent, &link, &[], now, now + 10_000)
                .await
                .unwrap();
            running_on(
                &s,
                id,
                &agent,
                now,
                Some(u64::try_from(i * 1000 + 500).unwrap()),
            )
            .await;
            let c = s.close_link(&agent, &link, now + 50).await.unwrap();
            assert_eq!(c.requeued, vec![id], "crash {i} [{}]", s.backend());
            let r = s.robot_session(id).await.unwrap().unwrap();
            assert_eq!(
                (r.state, r.attempts, r.redispatches, r.run_at),
                (RobotState::Queued, 0, i + 1, now + 50)
            );
            now += 1000;
        }
        // Agents that die before it plays: failed attempts, with backoff, then dead.
        for k in 1..=3_i64 {
            now = now.max(s.robot_session(id).await.unwrap().unwrap().run_at);
            let (agent, link) = (format!("early{k}"), format!("E{k}"));
            s.open_link(&agent, &link, &[], now, now + 10_000)
                .await
                .unwrap();
            running_on(&s, id, &agent, now, None).await;
            let c = s.close_link(&agent, &link, now).await.unwrap();
            let r = s.robot_session(id).await.unwrap().unwrap();
            if k < 3 {
                assert_eq!(c.requeued, vec![id]);
                assert_eq!(
                    (r.state, r.attempts, r.run_at),
                    (RobotState::Queued, k, now + robot::backoff_ms(k))
                );
            } else {
                assert_eq!(c.ended, vec![id], "{}", s.backend());
                assert_eq!((r.state, r.attempts), (RobotState::Dead, 3));
            }
        }
        let r = s.robot_session(id).await.unwrap().unwrap();
        assert_eq!(r.errors.len(), 9, "{:?}", r.errors);
        assert_eq!(r.position_ms, 5_500, "the last reported position is kept");

        // A session asked to leave is not offered again when its link closes.
        let q = queued_session(&s, "ch_quit_link", now).await;
        s.open_link("ag9", "L9", &[], now, now + 10_000)
            .await
            .unwrap();
        running_on(&s, q, "ag9", now, Some(100)).await;
        s.quit_robot(&ch("ch_quit_link"), &uid("A"), now)
            .await
            .unwrap();
        let c = s.close_link("ag9", "L9", now + 10).await.unwrap();
        assert_eq!(c.ended, vec![q]);
        assert_eq!(
            s.robot_session(q).await.unwrap().unwrap().state,
            RobotState::Cancelled
        );
    }
}

#[tokio::test]
async fn queue_stats_and_assets() {
    for (s, _d) in stores().await {
        queued_session(&s, "ch_q1", 1000).await;
        queued_session(&s, "ch_q2", 3000).await;
        let q = s.queue_stats(5000).await.unwrap();
        assert_eq!(
            (q.depth, q.oldest_queued_age_ms),
            (2, 4000),
            "{}",
            s.backend()
        );
        let a = AssetRecord {
            name: "hello".into(),
            sha256: "ab".into(),
            bytes: 3,
            duration_ms: 1500,
            created_at_ms: 7,
        };
        s.put_asset(&a, b"abc").await.unwrap();
        let rec = s.asset_record("hello").await.unwrap().unwrap();
        let content = s.asset_slice("hello", "ab", 0, 3).await.unwrap().unwrap();
        assert_eq!((rec, content), (a.clone(), b"abc".to_vec()));
        // Slices count bytes from 0, end short at the end, and need the same content.
        let tail = s.asset_slice("hello", "ab", 1, 10).await.unwrap();
        assert_eq!(tail.as_deref(), Some(&b"bc"[..]), "{}", s.backend());
        let other = s.asset_slice("hello", "cd", 0, 3).await.unwrap();
        assert_eq!(other, None, "{}", s.backend());
        let b = AssetRecord {
            bytes: 4,
            ..a.clone()
        };
        s.put_asset(&b, b"abcd").await.unwrap();
        assert_eq!(s.list_assets().await.unwrap(), vec![b]);
        assert!(s.delete_asset("hello").await.unwrap());
        assert!(!s.delete_asset("hello").await.unwrap());
        assert!(s.asset_record("hello").await.unwrap().is_none());
        assert!(s.asset_slice("hello", "ab", 0, 3).await.unwrap().is_none());
    }
}
