//! The sweeper: ring timeouts, heartbeat expiry, scheduled calls and robots past their
//! maximum duration (`DAPI_ROBOT_MAX_SECONDS`), applied from the
//! deadline columns. Every API instance runs it; each transition is a compare-and-set,
//! so it happens once whatever the number of instances. Time comes from the
//! [`Clock`](crate::clock::Clock), so tests drive it with a manual clock and
//! [`sweep_once`].

use crate::AppState;
use crate::call_state::Input;
use crate::calls::{self, Effects};
use crate::config::{millis_i64, secs_i64};
use crate::domain::{ChannelName, Uid};
use crate::store::tasks::{self, TaskState};
use crate::store::{CallKind, FireOutcome, InputMeta, NewCall, NewRobotSession, StoreError};

const BATCH: i64 = 500;

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Calls that rang out (ended as 1001).
    pub rang_out: Vec<String>,
    /// (channel, uid) dropped for missing heartbeats.
    pub dropped: Vec<(String, String)>,
    /// Scheduled calls placed: (task id, channel).
    pub fired: Vec<(i64, String)>,
    /// Scheduled calls too late to place.
    pub missed: Vec<i64>,
    /// Channels whose robot reached `DAPI_ROBOT_MAX_SECONDS` and was told to leave (or
    /// its queued session cancelled).
    pub robots_overtime: Vec<String>,
    /// Recordings deleted after `DAPI_RECORDING_RETENTION` days.
    pub recordings_pruned: u64,
}

fn server_meta(kind: &'static str, now_ms: i64) -> InputMeta {
    InputMeta {
        kind,
        source: "server",
        detail: None,
        now_ms,
        heartbeat_deadline_ms: None,
        always_record: false,
    }
}

/// One pass over every kind of due row.
pub async fn sweep_once(state: &AppState) -> Result<SweepReport, StoreError> {
    let store = state.store();
    let now = state.clock().now_ms();
    let mut report = SweepReport::default();
    // What follows the sweep's changes (dispatcher wake and NOTIFY, push wake), fired once.
    let mut effects = Effects::default();

    for channel in store.due_ring_timeouts(now, BATCH).await? {
        let (t, fx) = calls::apply_deferred(
            state,
            &channel,
            &Input::RingTimeout,
            &server_meta("ring_timeout", now),
        )
        .await?;
        effects.add(fx);
        if t.ignored.is_none() {
            report.rang_out.push(channel.to_string());
        }
    }

    for (channel, uid) in store.due_heartbeats(now, BATCH).await? {
        let input = Input::HeartbeatExpired { uid: uid.clone() };
        let (t, fx) = calls::apply_deferred(
            state,
            &channel,
            &input,
            &server_meta("heartbeat_timeout", now),
        )
        .await?;
        effects.add(fx);
        if t.ignored.is_none() {
            report
                .dropped
                .push((channel.to_string(), uid.as_str().to_owned()));
        }
    }

    let now_secs = now / 1000;
    let grace = secs_i64(state.config().calls.calltask_grace);
    for task in store.due_tasks(now_secs, BATCH).await? {
        if tasks::next_state(task.call_time, now_secs, grace) == TaskState::Missed {
            if store.fire_task(task.id, None, now).await? == FireOutcome::Missed {
                tracing::warn!(
                    task = task.id.get(),
                    late_s = now_secs - task.call_time,
                    "scheduled call missed (beyond the grace period)"
                );
                report.missed.push(task.id.get());
            }
            continue;
        }
        let Ok(caller) = Uid::parse(&task.src_uid) else {
            continue;
        };
        let callees: Vec<Uid> = task
            .dst_uid
            .iter()
            .filter_map(|u| Uid::parse(u).ok())
            .collect();
        let heartbeat_ms = millis_i64(state.config().calls.heartbeat_timeout);
        let ring_ms = millis_i64(state.config().calls.ring_timeout);
        let call = NewCall {
            channel: ChannelName::generate(),
            caller,
            callees,
            kind: CallKind::Task,
            extra_msg: Some(task.taskid.clone()),
            now_ms: now,
            ring_deadline_ms: Some(now.saturating_add(ring_ms)),
            caller_heartbeat_deadline_ms: now.saturating_add(heartbeat_ms),
            robot: (!task.tone_list.is_empty()).then(|| NewRobotSession {
                uid: state.config().dispatch.robot_uid.clone(),
                audio: task.tone_list.clone(),
                loop_audio: false,
                max_attempts: state.config().dispatch.max_attempts,
                // Counted against the owner's robots, never refused: the task was accepted
                // (and paid for as a call) when it was created.
                requested_by: task.src_uid.clone(),
                max_per_requester: 0,
                options: None,
            }),
        };
        if let FireOutcome::Fired(channel) = store.fire_task(task.id, Some(&call), now).await? {
            tracing::info!(task = task.id.get(), channel = %channel, "scheduled call placed");
            effects.add(Effects {
                robot: call.robot.is_some(),
                push: true,
            });
            report.fired.push((task.id.get(), channel.to_string()));
        }
    }

    // Robots past their maximum duration leave through the quit path (the agent is told
    // at once through the dispatcher), recorded on the call's timeline.
    let max_ms = millis_i64(state.config().dispatch.robot_max);
    if max_ms > 0 {
        for channel in store
            .overtime_robots(now.saturating_sub(max_ms), BATCH)
            .await?
        {
            store.robot_overtime(&channel, now).await?;
            tracing::info!(channel = %channel, "robot reached its maximum duration: told to leave");
            effects.add(Effects {
                robot: true,
                push: false,
            });
            report.robots_overtime.push(channel.to_string());
        }
    }

    // Retention: recordings whose last upload is older than DAPI_RECORDING_RETENTION days.
    let retention_ms = millis_i64(state.config().recordings.retention);
    report.recordings_pruned = store
        .prune_recordings(now.saturating_sub(retention_ms))
        .await?;
    if report.recordings_pruned > 0 {
        tracing::info!(
            count = report.recordings_pruned,
            "recordings past their retention deleted"
        );
    }

    effects.fire(state).await;
    Ok(report)
}

/// Sweeps every `DAPI_SWEEP_MS` (a due row is noticed within that) until `shutdown`
/// resolves; does nothing when it is 0.
pub async fn run(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    let every = state.config().calls.sweep_every;
    if every.is_zero() {
        return;
    }
    tokio::pin!(shutdown);
    loop {
        match sweep_once(&state).await {
            Ok(r) if r != SweepReport::default() => tracing::info!(
                rang_out = r.rang_out.len(),
                dropped = r.dropped.len(),
                fired = r.fired.len(),
                missed = r.missed.len(),
                robots_overtime = r.robots_overtime.len(),
                "sweep"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
