//! PostgreSQL backend: for several API instances. Calls are locked with
//! `SELECT ... FOR UPDATE` for the length of a transaction, so concurrent events on one
//! call serialise while different calls proceed in parallel.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database at `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            // Fail fast while the database is down: requests get a 503, not a hang.
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The pool (for LISTEN/NOTIFY and benchmarks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `NOTIFY dapi_dispatch`: a robot session was queued or asked to leave.
    pub async fn notify_dispatch(&self) -> super::StoreResult<()> {
        sqlx::query("SELECT pg_notify('dapi_dispatch', '')")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Subscribes to `dapi_dispatch` (see [`DispatchListener`]).
    pub async fn dispatch_listener(&self) -> super::StoreResult<DispatchListener> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen("dapi_dispatch").await?;
        Ok(DispatchListener { listener })
    }
}

/// The number of PostgreSQL migrations this build carries.
pub(super) fn migration_count() -> i64 {
    i64::try_from(MIGRATOR.iter().count()).unwrap_or(i64::MAX)
}

/// Other instances' dispatcher wake-ups (`NOTIFY dapi_dispatch`), as a stream the
/// dispatcher drives: [`DispatchListener::next`] returns once per notification.
///
/// Notifications sent while this instance was not subscribed (before the first
/// `LISTEN`, while the database was down, while the connection was being replaced) are
/// lost, so the dispatcher should also read the queue itself each time it subscribes
/// (again) instead of waiting for its backstop poll.
#[derive(Debug)]
pub struct DispatchListener {
    listener: sqlx::postgres::PgListener,
}

impl DispatchListener {
    /// Waits for the next notification; an error means the subscription is gone.
    pub async fn next(&mut self) -> super::StoreResult<()> {
        // `None`: the connection was lost and re-established (re-subscribed) in place.
        if self.listener.try_recv().await?.is_none() {
            tracing::warn!("dispatch listener reconnected");
        }
        Ok(())
    }
}
