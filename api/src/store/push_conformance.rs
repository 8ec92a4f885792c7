//! Conformance of the push outbox and devices: every test runs on SQLite always, and
//! on PostgreSQL when `TEST_DATABASE_URL` is set.

use std::collections::HashSet;

use super::*;
use crate::call_state::Input;
use crate::device::{Platform, PushToken};
use crate::domain::{ChannelName, EventCode, Uid};
use test_support::TempDir;

fn uid(s: &str) -> Uid {
    Uid::parse(s).unwrap()
}

fn ch(s: &str) -> ChannelName {
    ChannelName::parse(s).unwrap()
}

async fn stores() -> Vec<(Store, Option<TempDir>)> {
    let mut out = Vec::new();
    let dir = TempDir::new("dapi-push-store");
    let url = dir.sqlite_url("store.db");
    out.push((Store::connect(&url).await.unwrap(), Some(dir)));
    if let Ok(base) = std::env::var("TEST_DATABASE_URL") {
        let url = crate::store::testdb::fresh_postgres(&base).await.unwrap();
        out.push((Store::connect(&url).await.unwrap(), None));
    }
    out
}

fn device(u: &str, platform: Platform, token: &str, voip: bool) -> NewDevice {
    NewDevice {
        uid: uid(u),
        platform,
        push_token: PushToken::parse(platform, token).unwrap(),
        voip,
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

fn event(u: &str, code: EventCode) -> Input {
    Input::Event { uid: uid(u), code }
}

fn meta(now: i64) -> InputMeta {
    InputMeta {
        kind: "event",
        source: "app",
        detail: None,
        now_ms: now,
        heartbeat_deadline_ms: None,
        always_record: true,
    }
}

fn summary(jobs: &[PushJob]) -> Vec<(&str, &str, &str, PushJobState)> {
    jobs.iter()
        .map(|j| {
            (
                j.kind.as_str(),
                j.uid.as_str(),
                j.push_token.as_str(),
                j.state,
            )
        })
        .collect()
}

#[tokio::test]
async fn register_is_an_upsert_the_token_moves_and_old_devices_are_trimmed() {
    for (s, _d) in stores().await {
        let b = s.backend();
        let r1 = s
            .register_device(&device("A", Platform::Ios, "aa01", true), 10, 1000)
            .await
            .unwrap();
        let r2 = s
            .register_device(&device("A", Platform::Ios, "aa01", false), 10, 2000)
            .await
            .unwrap();
        assert_eq!(r1.id, r2.id, "[{b}] same row");
        assert_eq!(
            (r2.voip, r2.created_at_ms, r2.updated_at_ms),
            (false, 1000, 2000)
        );
        // the same token on another uid moves
        s.register_device(&device("B", Platform::Ios, "aa01", true), 10, 3000)
            .await
            .unwrap();
        assert!(s.devices(&uid("A")).await.unwrap().is_empty(), "[{b}]");
        let bs = s.devices(&uid("B")).await.unwrap();
        assert_eq!(bs.len(), 1);
        assert!(bs[0].voip);
        // the same token string on another platform is another device
        s.register_device(&device("B", Platform::Android, "aa01", false), 10, 3000)
            .await
            .unwrap();
        assert_eq!(s.devices(&uid("B")).await.unwrap().len(), 2, "[{b}]");
        // a uid keeps its newest `max` devices
        for (i, t) in ["t1", "t2", "t3"].iter().enumerate() {
            s.register_device(&device("C", Platform::Web, t, false), 2, 4000 + i as i64)
                .await
                .unwrap();
        }
        let cs: Vec<String> = s
            .devices(&uid("C"))
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.push_token)
            .collect();
        assert_eq!(cs, vec!["t2", "t3"], "[{b}]");
        // unregister is by uid and token, and idempotent
        assert!(!s.unregister_device(&uid("A"), "t2", 5000).await.unwrap());
        assert!(s.unregister_device(&uid("C"), "t2", 5000).await.unwrap());
        assert!(!s.unregister_device(&uid("C"), "t2", 5000).await.unwrap());
    }
}

#[tokio::test]
async fn a_call_enqueues_one_call_push_per_callee_device_in_its_transaction() {
    for (s, _d) in stores().await {
        let b = s.backend();
        s.register_device(&device("A", Platform::Ios, "ca11e4", true), 10, 0)
            .await
            .unwrap();
        s.register_device(&device("B", Platform::Ios, "b0", true), 10, 0)
            .await
            .unwrap();
        s.register_device(&device("B", Platform::Android, "b-fcm", false), 10, 0)
            .await
            .unwrap();
        s.register_device(&device("C", Platform::Web, "c-web", false), 10, 0)
            .await
            .unwrap();
        s.create_call(&call("ch_p1", "A", &["B", "C", "D"], 1000))
            .await
            .unwrap();
        let jobs = s.push_jobs(&ch("ch_p1")).await.unwrap();
        assert_eq!(
            summary(&jobs),
            vec![
                ("call", "B", "b0", PushJobState::Queued),
                ("call", "B", "b-fcm", PushJobState::Queued),
                ("call", "C", "c-web", PushJobState::Queued),
            ],
            "[{b}] no push to the caller, none to D without devices"
        );
        let j = &jobs[0];
        assert_eq!(
            (
                j.caller_uid.as_str(),
                j.extra_msg.as_deref(),
                j.platform.as_str(),
                j.voip,
                j.attempts,
                j.run_at,
                j.expires_at,
            ),
            ("A", Some("hello"), "ios", true, 0, 1000, Some(61_000)),
            "[{b}]"
        );
        // a failed call insert (duplicate channel) leaves no push behind
        s.create_call(&call("ch_p1", "X", &["B"], 2000))
            .await
            .unwrap_err();
        assert_eq!(s.push_jobs(&ch("ch_p1")).await.unwrap().len(), 3, "[{b}]");
        // a call without callees pushes nothing
        s.create_call(&call("ch_p2", "A", &[], 1000)).await.unwrap();
        assert!(s.push_jobs(&ch("ch_p2")).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn claims_are_compare_and_set_retries_wait_and_lapsed_leases_are_due_again() {
    for (s, _d) in stores().await {
        let b = s.backend();
        s.register_device(&device("B", Platform::Ios, "b0", true), 10, 0)
            .await
            .unwrap();
        s.create_call(&call("ch_c1", "A", &["B"], 1000))
            .await
            .unwrap();
        assert!(s.claim_push_jobs(999, 5000, 10).await.unwrap().is_empty());
        let jobs = s.claim_push_jobs(1000, 5000, 10).await.unwrap();
        assert_eq!(jobs.len(), 1, "[{b}]");
        let j = &jobs[0];
        assert_eq!(
            (j.state, j.attempts, j.run_at),
            (PushJobState::Sending, 1, 5000)
        );
        // held: nobody else gets it while the lease runs
        assert!(s.claim_push_jobs(4999, 9000, 10).await.unwrap().is_empty());
        // retry at 7000
        let retry = PushResult::Retry {
            at_ms: 7000,
            error: "APNs answered 503".into(),
        };
        assert!(!s.finish_push_job(j.id, 0, &retry, 2000).await.unwrap());
        assert!(s.finish_push_job(j.id, 1, &retry, 2000).await.unwrap());
        assert!(
            !s.finish_push_job(j.id, 1, &retry, 2000).await.unwrap(),
            "once"
        );
        let q = &s.push_jobs(&ch("ch_c1")).await.unwrap()[0];
        assert_eq!(
            (q.state, q.run_at, q.last_error.as_deref()),
            (PushJobState::Queued, 7000, Some("APNs answered 503"))
        );
        assert!(s.claim_push_jobs(6999, 9000, 10).await.unwrap().is_empty());
        let again = s.claim_push_jobs(7000, 9000, 10).await.unwrap();
        assert_eq!(again[0].attempts, 2, "[{b}]");
        // the worker holding attempt 2 dies: at 9000 the lease lapsed and it is due again
        let rescued = s.claim_push_jobs(9000, 20_000, 10).await.unwrap();
        assert_eq!(rescued[0].attempts, 3, "[{b}]");
        // the dead worker's late report is refused; the live one's lands
        assert!(
            !s.finish_push_job(j.id, 2, &PushResult::Sent, 9500)
                .await
                .unwrap()
        );
        assert!(
            s.finish_push_job(j.id, 3, &PushResult::Sent, 9500)
                .await
                .unwrap()
        );
        let done = &s.push_jobs(&ch("ch_c1")).await.unwrap()[0];
        assert_eq!(
            (done.state, done.last_error.as_deref()),
            (PushJobState::Sent, Some("APNs answered 503")),
            "[{b}] the history of failures is kept"
        );
        assert!(
            s.claim_push_jobs(100_000, 200_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn dead_and_dropped_keep_their_reason_and_finished_jobs_are_pruned() {
    for (s, _d) in stores().await {
        let b = s.backend();
        s.register_device(&device("B", Platform::Ios, "b0", true), 10, 0)
            .await
            .unwrap();
        s.register_device(&device("B", Platform::Ios, "b1", true), 10, 0)
            .await
            .unwrap();
        s.create_call(&call("ch_d1", "A", &["B"], 1000))
            .await
            .unwrap();
        let jobs = s.claim_push_jobs(1000, 5000, 10).await.unwrap();
        let dead = PushResult::Dead {
            error: "APNs answered 400 BadTopic".into(),
        };
        let dropped = PushResult::Dropped {
            reason: "invalid token".into(),
        };
        assert!(s.finish_push_job(jobs[0].id, 1, &dead, 2000).await.unwrap());
        assert!(
            s.finish_push_job(jobs[1].id, 1, &dropped, 3000)
                .await
                .unwrap()
        );
        let got = s.push_jobs(&ch("ch_d1")).await.unwrap();
        assert_eq!(
            got.iter()
                .map(|j| (j.state, j.last_error.as_deref()))
                .collect::<Vec<_>>(),
            vec![
                (PushJobState::Dead, Some("APNs answered 400 BadTopic")),
                (PushJobState::Dropped, Some("invalid token")),
            ],
            "[{b}]"
        );
        assert_eq!(s.prune_push_jobs(2500).await.unwrap(), 1, "[{b}]");
        assert_eq!(s.prune_push_jobs(3001).await.unwrap(), 1, "[{b}]");
        assert!(s.push_jobs(&ch("ch_d1")).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn an_invalid_or_unregistered_token_is_removed_with_its_queued_pushes() {
    for (s, _d) in stores().await {
        let b = s.backend();
        s.register_device(&device("B", Platform::Ios, "b0", true), 10, 0)
            .await
            .unwrap();
        s.register_device(&device("B", Platform::Android, "b-fcm", false), 10, 0)
            .await
            .unwrap();
        s.create_call(&call("ch_r1", "A", &["B"], 1000))
            .await
            .unwrap();
        s.create_call(&call("ch_r2", "A", &["B"], 1000))
            .await
            .unwrap();
        assert!(
            s.remove_push_token("ios", "b0", "token invalid", 2000)
                .await
                .unwrap()
        );
        assert!(
            !s.remove_push_token("ios", "b0", "token invalid", 2000)
                .await
                .unwrap()
        );
        assert!(s.unregister_device(&uid("B"), "b-fcm", 2000).await.unwrap());
        assert!(s.devices(&uid("B")).await.unwrap().is_empty());
        for ch in ["ch_r1", "ch_r2"] {
            let jobs = s.push_jobs(&ChannelName::parse(ch).unwrap()).await.unwrap();
            assert_eq!(
                jobs.iter()
                    .map(|j| (j.state, j.last_error.as_deref()))
                    .collect::<Vec<_>>(),
                vec![
                    (PushJobState::Dropped, Some("token invalid")),
                    (PushJobState::Dropped, Some("device unregistered")),
                ],
                "[{b}] {ch}"
            );
        }
        assert!(
            s.claim_push_jobs(10_000, 20_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn a_token_that_moves_to_another_uid_no_longer_rings_for_the_old_one() {
    for (s, _d) in stores().await {
        s.register_device(&device("B", Platform::Ios, "b0", true), 10, 0)
            .await
            .unwrap();
        s.create_call(&call("ch_m1", "A", &["B"], 1000))
            .await
            .unwrap();
        s.register_device(&device("E", Platform::Ios, "b0", true), 10, 1500)
            .await
            .unwrap();
        let j = &s.push_jobs(&ch("ch_m1")).await.unwrap()[0];
        assert_eq!(
            (j.state, j.last_error.as_deref()),
            (PushJobState::Dropped, Some("device moved to another uid")),
            "[{}]",
            s.backend()
        );
    }
}

#[tokio::test]
async fn ending_a_ringing_call_cancels_sent_pushes_and_drops_unsent_ones() {
    for (s, _d) in stores().await {
        let b = s.backend();
        for (u, t) in [("B", "b0"), ("B", "b1"), ("C", "c0")] {
            s.register_device(&device(u, Platform::Ios, t, true), 10, 0)
                .await
                .unwrap();
        }
        s.create_call(&call("ch_x1", "A", &["B", "C"], 1000))
            .await
            .unwrap();
        // b0's push goes out; b1's is in flight; c0's still waits
        let claimed = s.claim_push_jobs(1000, 5000, 2).await.unwrap();
        assert_eq!(
            claimed
                .iter()
                .map(|j| j.push_token.as_str())
                .collect::<Vec<_>>(),
            vec!["b0", "b1"]
        );
        s.finish_push_job(claimed[0].id, 1, &PushResult::Sent, 1100)
            .await
            .unwrap();
        // the caller cancels while ringing
        let t = s
            .apply_input(
                &ch("ch_x1"),
                &event("A", EventCode::CallerCancelled),
                &meta(2000),
            )
            .await
            .unwrap();
        let mut cancelled = t.cancel_push.clone();
        cancelled.sort();
        assert_eq!(cancelled, vec![uid("B"), uid("C")], "[{b}]");
        let jobs = s.push_jobs(&ch("ch_x1")).await.unwrap();
        assert_eq!(
            summary(&jobs),
            vec![
                ("call", "B", "b0", PushJobState::Sent),
                ("call", "B", "b1", PushJobState::Dropped),
                ("call", "C", "c0", PushJobState::Dropped),
                ("cancel", "B", "b0", PushJobState::Queued),
                ("cancel", "B", "b1", PushJobState::Queued),
            ],
            "[{b}] c0 never rang: no cancel for it"
        );
        let cancel = &jobs[3];
        assert_eq!(
            (
                cancel.run_at,
                cancel.expires_at,
                cancel.extra_msg.as_deref()
            ),
            (2000, Some(2000 + push::CANCEL_TTL_MS), Some("hello"))
        );
        // the in-flight worker's late report does not resurrect b1's call push
        assert!(
            !s.finish_push_job(claimed[1].id, 1, &PushResult::Sent, 2100)
                .await
                .unwrap()
        );
        // a duplicate event changes nothing, so no second cancel
        s.apply_input(
            &ch("ch_x1"),
            &event("A", EventCode::CallerCancelled),
            &meta(3000),
        )
        .await
        .unwrap();
        assert_eq!(s.push_jobs(&ch("ch_x1")).await.unwrap().len(), 5, "[{b}]");
        // ring timeout goes the same way
        s.create_call(&call("ch_x2", "A", &["C"], 4000))
            .await
            .unwrap();
        // (ch_x1's cancels are due too: everything claimed goes out)
        for j in s.claim_push_jobs(4000, 9000, 10).await.unwrap() {
            s.finish_push_job(j.id, j.attempts, &PushResult::Sent, 4000)
                .await
                .unwrap();
        }
        let meta_rt = InputMeta {
            kind: "ring_timeout",
            source: "server",
            ..meta(64_000)
        };
        s.apply_input(&ch("ch_x2"), &Input::RingTimeout, &meta_rt)
            .await
            .unwrap();
        assert_eq!(
            summary(&s.push_jobs(&ch("ch_x2")).await.unwrap()),
            vec![
                ("call", "C", "c0", PushJobState::Sent),
                ("cancel", "C", "c0", PushJobState::Queued),
            ],
            "[{b}]"
        );
        // an answered call sends no cancel
        s.create_call(&call("ch_x3", "A", &["C"], 5000))
            .await
            .unwrap();
        // (ch_x1's cancels are due too: everything claimed goes out)
        for j in s.claim_push_jobs(5000, 9000, 10).await.unwrap() {
            s.finish_push_job(j.id, j.attempts, &PushResult::Sent, 5000)
                .await
                .unwrap();
        }
        s.apply_input(&ch("ch_x3"), &event("C", EventCode::Connected), &meta(6000))
            .await
            .unwrap();
        s.apply_input(&ch("ch_x3"), &event("A", EventCode::Ended), &meta(7000))
            .await
            .unwrap();
        s.apply_input(&ch("ch_x3"), &event("C", EventCode::Ended), &meta(7000))
            .await
            .unwrap();
        assert_eq!(s.push_jobs(&ch("ch_x3")).await.unwrap().len(), 1, "[{b}]");
    }
}

#[tokio::test]
async fn concurrent_claims_never_hand_out_a_job_twice() {
    for (s, _d) in stores().await {
        for i in 0..20 {
            s.register_device(&device("B", Platform::Web, &format!("w{i}"), false), 50, 0)
                .await
                .unwrap();
        }
        for i in 0..5 {
            s.create_call(&call(&format!("ch_cc{i}"), "A", &["B"], 1000))
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let jobs = s.claim_push_jobs(1000, 60_000, 7).await.unwrap();
                    if jobs.is_empty() {
                        return got;
                    }
                    got.extend(jobs.into_iter().map(|j| j.id));
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let unique: HashSet<PushJobId> = all.iter().copied().collect();
        assert_eq!(
            (all.len(), unique.len()),
            (100, 100),
            "[{}] every job once",
            s.backend()
        );
    }
}
