//! Scheduled calls (`calltask`): pending until their time, then fired (the call placed in
//! the same transaction) or missed (too late), once.
//!
//! ```text
//!            update / delete (owner only)
//!  pending ──────────────────────────────> pending / gone
//!     |  due, within the grace period: fire_task(call) ──> fired (channel set)
//!     +  due, beyond the grace period:  fire_task(none) ──> missed
//! ```

use super::calls::NewCall;
use super::db::{self, Stmt, Tx};
use super::{Store, StoreError, StoreResult, TaskId};
use crate::domain::{ChannelName, Uid};

/// A scheduled call's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for its time; may still be changed or deleted.
    Pending,
    /// The call was placed.
    Fired,
    /// Its time passed beyond the grace period before a sweep saw it.
    Missed,
}

impl TaskState {
    /// Stored (and JSON) form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Fired => "fired",
            Self::Missed => "missed",
        }
    }

    /// From the stored form; `None` for anything the store never writes.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "fired" => Some(Self::Fired),
            "missed" => Some(Self::Missed),
            _ => None,
        }
    }
}

/// The state a due pending task moves to at `now_secs`: fired while it is at most
/// `grace_secs` late, else missed. The rule of the sweeper, pure.
pub fn next_state(call_time_secs: i64, now_secs: i64, grace_secs: i64) -> TaskState {
    if now_secs - call_time_secs > grace_secs {
        TaskState::Missed
    } else {
        TaskState::Fired
    }
}

/// Whether a task in `state` may still be changed: only a pending one is.
fn changeable(id: TaskId, state: TaskState) -> StoreResult<()> {
    match state {
        TaskState::Pending => Ok(()),
        other => Err(StoreError::Conflict(format!(
            "task {id} is {} and can no longer be changed",
            other.as_str()
        ))),
    }
}

/// A scheduled call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Row id.
    pub id: TaskId,
    /// Caller.
    pub src_uid: String,
    /// Callees.
    pub dst_uid: Vec<String>,
    /// When to call, unix seconds.
    pub call_time: i64,
    /// The app backend's task id.
    pub taskid: String,
    /// Audio the robot plays into the call.
    pub tone_list: Vec<String>,
    /// Pending, fired or missed.
    pub state: TaskState,
    /// The channel, once fired.
    pub channel: Option<ChannelName>,
}

/// Fields of a task to insert or update.
#[derive(Debug, Clone)]
pub struct TaskFields {
    /// Caller.
    pub src_uid: Uid,
    /// Callees (non-empty).
    pub dst_uid: Vec<Uid>,
    /// When to call, unix seconds.
    pub call_time: i64,
    /// The app backend's task id.
    pub taskid: String,
    /// Audio for the robot.
    pub tone_list: Vec<String>,
}

/// What became of a due scheduled call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// The call was placed in this channel.
    Fired(ChannelName),
    /// Too late (beyond the grace period): marked missed.
    Missed,
    /// Another instance (or an earlier sweep) already handled it.
    AlreadyDone,
}

/// The columns of a task row, in the order [`TaskRecord`] reads them.
type TaskRow = (
    i64,
    String,
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
);

impl TryFrom<TaskRow> for TaskRecord {
    type Error = StoreError;
    fn try_from(
        (id, src_uid, dst_uid, call_time, taskid, tone_list, state, channel): TaskRow,
    ) -> StoreResult<Self> {
        Ok(Self {
            id: TaskId::new(id),
            src_uid,
            dst_uid: db::json_list("calltasks", "dst_uid", &dst_uid)?,
            call_time,
            taskid,
            tone_list: db::json_list("calltasks", "tone_list", &tone_list)?,
            state: TaskState::parse(&state)
                .ok_or_else(|| db::corrupt("calltasks", "state", state))?,
            channel: channel.map(|c| db::channel("calltasks", c)).transpose()?,
        })
    }
}

fn decode(rows: Vec<TaskRow>) -> StoreResult<Vec<TaskRecord>> {
    rows.into_iter().map(TaskRecord::try_from).collect()
}

mod sql {
    use super::Stmt;

    pub const INSERT_TASK: Stmt = Stmt::both(
        "INSERT INTO calltasks (src_uid, dst_uid, call_time, taskid, tone_list, state, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6) \
         RETURNING id, src_uid, dst_uid, call_time, taskid, tone_list, state, channel",
    );
    pub const LOCK_TASK: Stmt = Stmt::each(
        "SELECT state FROM calltasks WHERE id = $1 AND src_uid = $2",
        "SELECT state FROM calltasks WHERE id = $1 AND src_uid = $2 FOR UPDATE",
    );
    pub const UPDATE_TASK: Stmt = Stmt::both(
        "UPDATE calltasks SET src_uid = $2, dst_uid = $3, call_time = $4, taskid = $5, tone_list = $6, updated_at = $7 \
         WHERE id = $1 AND src_uid = $2 RETURNING id, src_uid, dst_uid, call_time, taskid, tone_list, state, channel",
    );
    pub const DELETE_TASK: Stmt =
        Stmt::both("DELETE FROM calltasks WHERE id = $1 AND src_uid = $2");
    pub const PENDING_TASKS_OF: Stmt =
        Stmt::both("SELECT COUNT(*) FROM calltasks WHERE src_uid = $1 AND state = 'pending'");
    // SQLite: BEGIN IMMEDIATE already holds the write lock. PostgreSQL: one owner's inserts
    // take turns, so two at once cannot both pass the count.
    pub const LOCK_OWNER: Stmt = Stmt::each(
        "SELECT $1",
        "SELECT pg_advisory_xact_lock(29283, hashtext($1))",
    );
    pub const COUNT_TASKS: Stmt = Stmt::both("SELECT COUNT(*) FROM calltasks WHERE src_uid = $1");
    pub const LIST_TASKS: Stmt = Stmt::both(
        "SELECT id, src_uid, dst_uid, call_time, taskid, tone_list, state, channel \
         FROM calltasks WHERE src_uid = $1 ORDER BY call_time, id LIMIT $2 OFFSET $3",
    );
    pub const DUE_TASKS: Stmt = Stmt::both(
        "SELECT id, src_uid, dst_uid, call_time, taskid, tone_list, state, channel \
         FROM calltasks WHERE state = 'pending' AND call_time <= $1 ORDER BY call_time, id LIMIT $2",
    );
    pub const FINISH_TASK: Stmt = Stmt::both(
        "UPDATE calltasks SET state = $2, channel = $3, fired_at = $4, updated_at = $4 \
         WHERE id = $1 AND state = 'pending'",
    );
}

/// `dst_uid` and `tone_list` as their JSON columns.
fn task_json(f: &TaskFields) -> (String, String) {
    let dst: Vec<&str> = f.dst_uid.iter().map(Uid::as_str).collect();
    (db::to_json_list(&dst), db::to_json_list(&f.tone_list))
}

async fn insert(tx: &mut Tx, f: &TaskFields, now_ms: i64) -> StoreResult<TaskRow> {
    let (dst, tones) = task_json(f);
    Ok(sql::INSERT_TASK
        .bind(&f.src_uid)
        .bind(dst)
        .bind(f.call_time)
        .bind(&f.taskid)
        .bind(tones)
        .bind(now_ms)
        .fetch_one(tx)
        .await?)
}

impl Store {
    /// Inserts a scheduled call. [`StoreError::LimitReached`] (nothing written) when its
    /// owner already has `max_pending` tasks pending (0: no limit).
    pub async fn insert_task(
        &self,
        f: &TaskFields,
        now_ms: i64,
        max_pending: i64,
    ) -> StoreResult<TaskRecord> {
        self.retrying("insert_task", move || async move {
            let mut tx = self.begin_write().await?;
            if max_pending > 0 {
                sql::LOCK_OWNER.bind(&f.src_uid).execute(&mut tx).await?;
                let pending: i64 = sql::PENDING_TASKS_OF
                    .bind(&f.src_uid)
                    .scalar_one(&mut tx)
                    .await?;
                if pending >= max_pending {
                    return Err(StoreError::LimitReached(format!(
                        "uid {} already has {pending} scheduled calls pending, the most allowed (DAPI_CALLTASKS_PER_UID); delete one or wait for it to fire",
                        f.src_uid
                    )));
                }
            }
            let row = insert(&mut tx, f, now_ms).await?;
            tx.commit().await?;
            TaskRecord::try_from(row)
        })
        .await
    }

    /// Updates a pending scheduled call (404 unknown, 409 already fired or missed).
    pub async fn update_task(
        &self,
        id: TaskId,
        f: &TaskFields,
        now_ms: i64,
    ) -> StoreResult<TaskRecord> {
        self.retrying("update_task", move || async move {
            let (dst, tones) = task_json(f);
            let mut tx = self.begin_write().await?;
            // Another uid's task is not found, in the same words as a missing one.
            let state: Option<String> = sql::LOCK_TASK
                .bind(id)
                .bind(&f.src_uid)
                .scalar_optional(&mut tx)
                .await?;
            let Some(state) = state else {
                return Err(StoreError::NotFound(format!("unknown task {id}")));
            };
            let state =
                TaskState::parse(&state).ok_or_else(|| db::corrupt("calltasks", "state", state))?;
            changeable(id, state)?;
            let row: TaskRow = sql::UPDATE_TASK
                .bind(id)
                .bind(&f.src_uid)
                .bind(dst)
                .bind(f.call_time)
                .bind(&f.taskid)
                .bind(tones)
                .bind(now_ms)
                .fetch_one(&mut tx)
                .await?;
            tx.commit().await?;
            TaskRecord::try_from(row)
        })
        .await
    }

    /// Deletes a scheduled call (404 unknown).
    pub async fn delete_task(&self, id: TaskId, uid: &Uid) -> StoreResult<()> {
        let n = self
            .write_one("delete_task", sql::DELETE_TASK.bind(id).bind(uid))
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("unknown task {id} of {uid}")));
        }
        Ok(())
    }

    /// Tasks of `uid` as caller, soonest first, one page, and the total count.
    pub async fn list_tasks(
        &self,
        uid: &Uid,
        page: i64,
        perpage: i64,
    ) -> StoreResult<(Vec<TaskRecord>, i64)> {
        let total: i64 = sql::COUNT_TASKS.bind(uid).scalar_one(self.reader()).await?;
        let rows: Vec<TaskRow> = sql::LIST_TASKS
            .bind(uid)
            .bind(perpage)
            .bind((page - 1).saturating_mul(perpage))
            .fetch_all(self.reader())
            .await?;
        Ok((decode(rows)?, total))
    }

    /// Pending scheduled calls due at `now_secs`.
    pub async fn due_tasks(&self, now_secs: i64, limit: i64) -> StoreResult<Vec<TaskRecord>> {
        let rows: Vec<TaskRow> = sql::DUE_TASKS
            .bind(now_secs)
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
        decode(rows)
    }

    /// Inserts many scheduled calls in one transaction (imports, benchmarks).
    pub async fn insert_tasks_bulk(&self, tasks: &[TaskFields], now_ms: i64) -> StoreResult<()> {
        self.retrying("insert_tasks_bulk", move || async move {
            let mut tx = self.begin_write().await?;
            for f in tasks {
                insert(&mut tx, f, now_ms).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// pending -> fired (placing `call` in the same transaction) or, with no call,
    /// pending -> missed. Compare-and-set: a task fires once.
    pub async fn fire_task(
        &self,
        id: TaskId,
        call: Option<&NewCall>,
        now_ms: i64,
    ) -> StoreResult<FireOutcome> {
        self.retrying("fire_task", move || async move {
            let mut tx = self.begin_write().await?;
            let (state, channel) = match call {
                Some(c) => (TaskState::Fired, Some(c.channel.as_str())),
                None => (TaskState::Missed, None),
            };
            let n = sql::FINISH_TASK
                .bind(id)
                .bind(state.as_str())
                .bind(channel)
                .bind(now_ms)
                .execute(&mut tx)
                .await?;
            if n == 0 {
                return Ok(FireOutcome::AlreadyDone);
            }
            let out = match call {
                Some(c) => {
                    Store::insert_call(&mut tx, c).await?;
                    FireOutcome::Fired(c.channel.clone())
                }
                None => FireOutcome::Missed,
            };
            tx.commit().await?;
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_task_fires_within_the_grace_period_and_is_missed_beyond_it() {
        assert_eq!(next_state(1000, 1000, 300), TaskState::Fired);
        assert_eq!(next_state(1000, 1300, 300), TaskState::Fired);
        assert_eq!(next_state(1000, 1301, 300), TaskState::Missed);
        assert_eq!(next_state(1000, 999, 0), TaskState::Fired);
    }

    #[test]
    fn only_a_pending_task_changes() {
        assert!(changeable(TaskId::new(1), TaskState::Pending).is_ok());
        for s in [TaskState::Fired, TaskState::Missed] {
            let e = changeable(TaskId::new(7), s).unwrap_err();
            assert!(matches!(e, StoreError::Conflict(_)));
            assert_eq!(
                e.to_string(),
                format!("task 7 is {} and can no longer be changed", s.as_str())
            );
        }
    }

    #[test]
    fn task_rows_decode_or_name_the_corrupt_column() {
        let row = |dst: &str, state: &str| -> TaskRow {
            (
                1,
                "a".into(),
                dst.into(),
                5,
                "t".into(),
                "[]".into(),
                state.into(),
                None,
            )
        };
        let t = TaskRecord::try_from(row("[\"b\"]", "pending")).unwrap();
        assert_eq!(
            (t.dst_uid, t.state),
            (vec!["b".to_owned()], TaskState::Pending)
        );
        for (dst, state, column, value) in [
            ("[\"b\"]", "done", "state", "done"),
            ("nope", "pending", "dst_uid", "nope"),
        ] {
            match TaskRecord::try_from(row(dst, state)) {
                Err(StoreError::Corrupt {
                    table: "calltasks",
                    column: c,
                    value: v,
                }) => assert_eq!((c, v.as_str()), (column, value)),
                other => panic!("{other:?}"),
            }
        }
    }
}
