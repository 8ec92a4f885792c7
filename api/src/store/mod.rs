//! The only place that holds SQL: one [`Store`] with a SQLite and a PostgreSQL backend,
//! one file per aggregate.
//!
//! ```text
//!   routes / sweeper / dispatcher / rtc bus
//!            |  (domain types in, records out; one method = one transaction)
//!          Store ── calls.rs       calls, members, timeline, call/msg, sweeps of deadlines
//!            |   ── tasks.rs       scheduled calls
//!            |   ── robot.rs       robot sessions, agent links, the retry policy
//!            |   ── assets.rs      audio assets
//!            |   ── push.rs        devices and the push outbox
//!            |   ── recordings.rs  voicemail recordings, robot control relay
//!            |   ── rtc_bus.rs     the /rtc bus between instances (PostgreSQL only)
//!            |   ── ids.rs         the row ids it takes and returns (CallId, SessionId, ...)
//!            |
//!          db.rs: Stmt (one SQL text, or one per backend) · Query · Tx · Reader
//!            ├─> SqliteStore (embedded default: WAL, synchronous=FULL, one writer)
//!            └─> PgStore     (scale: FOR UPDATE row locks, SKIP LOCKED claims)
//! ```
//!
//! Each operation is one method in its aggregate's file, with its statements beside it:
//! the Rust (load a call, run the sans-IO state machine, write the transition) is written
//! once, and a statement is one SQL text for both backends unless they differ. Rows
//! decode through `TryFrom` and a value the store never writes is
//! [`StoreError::Corrupt`], never a default. A channel is taken as a
//! [`ChannelName`](crate::domain::ChannelName) and read back as one (a stored name that
//! does not parse is `Corrupt` too), a row id as its own type ([`ids`]). Times are always
//! bound as parameters (unix milliseconds), never `now()` in SQL. The store imports
//! nothing above it: other API instances' wake-ups come out as a [`DispatchListener`] that
//! the dispatcher drives.

pub mod assets;
pub mod calls;
mod db;
pub mod ids;
mod postgres;
pub mod push;
pub mod recordings;
pub mod robot;
pub mod rtc_bus;
mod sqlite;
pub mod tasks;
/// Fresh PostgreSQL databases for tests: only in this crate's own tests and with the
/// `test-util` feature (which the integration tests turn on), never in the server.
#[cfg(any(test, feature = "test-util"))]
pub mod testdb;

pub use assets::AssetRecord;
pub use calls::{CallKind, CallRecord, InputMeta, MessageRow, NewCall, TimelineEntry};
pub use ids::{CallId, PushJobId, RecordingId, SessionId, TaskId};
pub use postgres::{DispatchListener, PgStore};
pub use push::{DeviceRecord, NewDevice, PushJob, PushJobState, PushKind, PushResult};
pub use robot::{
    InviteOutcome, LinkClosed, NewRobotSession, QueueStats, RescueOutcome, RobotSession,
    RobotState, StatusOutcome,
};
pub use sqlite::SqliteStore;
pub use tasks::{FireOutcome, TaskFields, TaskRecord, TaskState};

use db::Stmt;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The channel, task or session does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A per-uid limit is reached (active robots); nothing was written.
    #[error("{0}")]
    LimitReached(String),
    /// A stored value is not one the store writes (a bug, or a hand-edited row): the
    /// operation stops instead of guessing.
    #[error("corrupt row: {table}.{column} holds {value:?}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// What it holds.
        value: String,
    },
    /// The database cannot be reached; retry later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else (a bug, a constraint we did not expect).
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(e),
            sqlx::Error::Database(d) => {
                // PostgreSQL: class 08 (connection), 57P01-03 (shutdown), 53 (resources).
                let code = d.code().unwrap_or_default();
                // SQLite: "database is locked" after the busy timeout.
                let transient = code.starts_with("08")
                    || code.starts_with("57P")
                    || code.starts_with("53")
                    || d.message().contains("database is locked");
                if transient {
                    Self::Unavailable(e)
                } else {
                    Self::Other(e)
                }
            }
            _ => Self::Other(e),
        }
    }
}

impl StoreError {
    /// A transaction PostgreSQL aborted so that others could go on: a deadlock victim
    /// (40P01) or a serialization failure (40001). Running it again is the remedy.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Other(sqlx::Error::Database(d)) => {
                matches!(d.code().as_deref(), Some("40P01" | "40001"))
            }
            _ => false,
        }
    }
}

/// Result of store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// The store: one of the two backends.
#[derive(Debug, Clone)]
pub enum Store {
    /// Embedded SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL.
    Postgres(PgStore),
}

mod sql {
    use super::Stmt;

    pub const COUNT_MIGRATIONS: Stmt = Stmt::each(
        "SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1",
        "SELECT COUNT(*) FROM _sqlx_migrations WHERE success",
    );
    pub const INSERT_SETTING_IF_ABSENT: Stmt = Stmt::both(
        "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
    );
    pub const GET_SETTING: Stmt = Stmt::both("SELECT value FROM settings WHERE key = $1");
}

impl Store {
    /// Connects to `database_url` (`sqlite:` or `postgres:`) and applies migrations.
    pub async fn connect(database_url: &str) -> anyhow::Result<Self> {
        let store =
            if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
                Store::Postgres(PgStore::connect(database_url).await?)
            } else if database_url.starts_with("sqlite:") {
                Store::Sqlite(SqliteStore::connect(database_url).await?)
            } else {
                anyhow::bail!(
                    "DATABASE_URL must start with sqlite: or postgres:, got {database_url:?}"
                );
            };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(s) => s.migrate().await,
            Store::Postgres(s) => s.migrate().await,
        }
    }

    /// Name of the backend, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Whether the database answers and every migration is applied.
    pub async fn ready(&self) -> StoreResult<bool> {
        let migrations = match self {
            Store::Sqlite(_) => sqlite::migration_count(),
            Store::Postgres(_) => postgres::migration_count(),
        };
        let applied: i64 = sql::COUNT_MIGRATIONS
            .query()
            .scalar_one(self.reader())
            .await?;
        Ok(applied >= migrations)
    }

    /// Returns the stored development credentials, storing `generated` first if none are.
    pub async fn dev_credentials(
        &self,
        generated: (String, String),
    ) -> StoreResult<(String, String)> {
        let (app, cert) = (&generated.0, &generated.1);
        self.retrying("dev_credentials", move || async move {
            let mut tx = self.begin_write().await?;
            sql::INSERT_SETTING_IF_ABSENT
                .bind("dev_app_id")
                .bind(app)
                .execute(&mut tx)
                .await?;
            sql::INSERT_SETTING_IF_ABSENT
                .bind("dev_app_certificate")
                .bind(cert)
                .execute(&mut tx)
                .await?;
            let app: String = sql::GET_SETTING
                .bind("dev_app_id")
                .scalar_one(&mut tx)
                .await?;
            let cert: String = sql::GET_SETTING
                .bind("dev_app_certificate")
                .scalar_one(&mut tx)
                .await?;
            tx.commit().await?;
            Ok((app, cert))
        })
        .await
    }

    /// Wakes the dispatchers of other API instances (PostgreSQL `NOTIFY`; nothing to do
    /// on SQLite, where one process owns the file).
    pub async fn notify_dispatch(&self) -> StoreResult<()> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.notify_dispatch().await,
        }
    }

    /// Subscribes to other instances' dispatcher wake-ups (PostgreSQL `LISTEN`); `None` on
    /// SQLite, where one process owns the file. The dispatcher owns the loop around it.
    pub async fn dispatch_listener(&self) -> StoreResult<Option<DispatchListener>> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(s) => Ok(Some(s.dispatch_listener().await?)),
        }
    }
}

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod push_conformance;
