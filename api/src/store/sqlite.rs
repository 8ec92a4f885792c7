//! SQLite backend: the embedded default. WAL with `synchronous=FULL`; one writer
//! connection (SQLite allows one writer at a time, so a single connection turns lock
//! contention into a queue) and a small pool of readers.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // No ping before each acquire: a connection to a local file does not break
        // silently, and the ping is a round trip to the connection's worker thread on
        // every query (PostgreSQL keeps it: its connections cross a network).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await?;
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts.read_only(true))
                .await?
        };
        Ok(Self { writer, reader })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    pub(super) fn read_pool(&self) -> &SqlitePool {
        &self.reader
    }

    pub(super) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
        // IMMEDIATE takes the write lock up front, so a transaction never fails half-way
        // on a lock upgrade when another process writes the same file.
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }
}

/// The number of SQLite migrations this build carries.
pub(super) fn migration_count() -> i64 {
    i64::try_from(MIGRATOR.iter().count()).unwrap_or(i64::MAX)
}
