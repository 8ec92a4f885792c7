//! Timed work on deadline columns: what is due, and firing scheduled calls. Every API
//! instance sweeps; each transition is a compare-and-set inside a transaction, so it
//! happens once however many instances run (DESIGN.md decision 4).

/// What became of a due scheduled call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// The call was placed in this channel.
    Fired(String),
    /// Too late (beyond the grace period): marked missed.
    Missed,
    /// Another instance (or an earlier sweep) already handled it.
    AlreadyDone,
}

macro_rules! sweep_store_impl {
    ($store:ident, $db:ty) => {
        impl $store {
            /// Channels whose ring deadline has passed.
            pub async fn due_ring_timeouts(
                &self,
                now_ms: i64,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<String>> {
                Ok(sqlx::query_scalar(sql::DUE_RING_TIMEOUTS)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(self.read_pool())
                    .await?)
            }

            /// (channel, uid) of participants whose heartbeat deadline has passed.
            pub async fn due_heartbeats(
                &self,
                now_ms: i64,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<(String, String)>> {
                Ok(sqlx::query_as(sql::DUE_HEARTBEATS)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(self.read_pool())
                    .await?)
            }

            /// Pending scheduled calls whose time has come (unix seconds).
            pub async fn due_tasks(
                &self,
                now_secs: i64,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::TaskRecord>> {
                let rows: Vec<_> = sqlx::query_as(sql::DUE_TASKS)
                    .bind(now_secs)
                    .bind(limit)
                    .fetch_all(self.read_pool())
                    .await?;
                Ok(rows.into_iter().map(Self::task_from_row).collect())
            }

            /// Creates many calls in one transaction (imports, benchmarks).
            pub async fn create_calls_bulk(
                &self,
                calls: &[$crate::store::NewCall],
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.begin_write().await?;
                for c in calls {
                    Self::insert_call(&mut tx, c).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            /// Inserts many scheduled calls in one transaction (imports, benchmarks).
            pub async fn insert_tasks_bulk(
                &self,
                tasks: &[$crate::store::TaskFields],
                now_ms: i64,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.begin_write().await?;
                for f in tasks {
                    let (dst, tones) = Self::task_json(f);
                    sqlx::query(sql::INSERT_TASK)
                        .bind(f.src_uid.as_str())
                        .bind(dst)
                        .bind(f.call_time)
                        .bind(&f.taskid)
                        .bind(tones)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            /// pending -> fired (placing `call` in the same transaction) or, with no call,
            /// pending -> missed. Compare-and-set: a task fires once.
            pub async fn fire_task(
                &self,
                id: i64,
                call: Option<&$crate::store::NewCall>,
                now_ms: i64,
            ) -> $crate::store::StoreResult<$crate::store::FireOutcome> {
                use $crate::store::FireOutcome;
                let mut tx = self.begin_write().await?;
                let (state, channel) = match call {
                    Some(c) => ("fired", Some(c.channel.as_str().to_owned())),
                    None => ("missed", None),
                };
                let n = sqlx::query(sql::FINISH_TASK)
                    .bind(id)
                    .bind(state)
                    .bind(channel.as_deref())
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    return Ok(FireOutcome::AlreadyDone);
                }
                let out = match call {
                    Some(c) => {
                        Self::insert_call(&mut tx, c).await?;
                        FireOutcome::Fired(c.channel.as_str().to_owned())
                    }
                    None => FireOutcome::Missed,
                };
                tx.commit().await?;
                Ok(out)
            }
        }
    };
}

pub(crate) use sweep_store_impl;
