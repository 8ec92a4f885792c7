//! The backend-neutral way the aggregates talk SQL (docs/decisions.md, "The store by
//! aggregate").
//!
//! ```text
//!   aggregate file:  sql::FIND_CALL.bind(channel).fetch_optional(store.reader())
//!                        |            |                |
//!                      Stmt        Query (values)     On: a pool or a transaction,
//!                   (one text,                        SQLite or PostgreSQL
//!                    or one each)
//! ```
//!
//! A [`Stmt`] is one SQL text when both backends read it the same (`$1` placeholders,
//! which SQLite also accepts), or one text each where they differ (row locks, JSON,
//! casts). The Rust around the statements (load, decide, write) is written once per
//! operation in its aggregate's file, against [`Query`], [`Tx`] and [`Reader`]; the only
//! `match` on the backend is here, where a query runs.

use std::borrow::Cow;
use std::future::Future;

use sqlx::error::BoxDynError;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{
    Arguments, Database, Encode, FromRow, PgConnection, PgPool, Postgres, Sqlite, SqliteConnection,
    SqlitePool, Type,
};

use super::{Store, StoreError, StoreResult};
use crate::domain::ChannelName;

/// One statement: the same text on both backends, or one text each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stmt {
    sqlite: &'static str,
    postgres: &'static str,
}

impl Stmt {
    /// A statement both backends read the same (`$n` placeholders).
    pub(crate) const fn both(sql: &'static str) -> Self {
        Self {
            sqlite: sql,
            postgres: sql,
        }
    }

    /// A statement written for each backend.
    pub(crate) const fn each(sqlite: &'static str, postgres: &'static str) -> Self {
        Self { sqlite, postgres }
    }

    /// Starts a query with its first value.
    pub(crate) fn bind<'a>(self, v: impl Into<Value<'a>>) -> Query<'a> {
        self.query().bind(v)
    }

    /// A query without values (yet).
    pub(crate) fn query<'a>(self) -> Query<'a> {
        Query {
            stmt: self,
            values: Vec::new(),
        }
    }
}

/// A value bound to a statement. Every column the store writes is an integer, a text or
/// bytes (booleans are stored as 0 or 1, times as unix milliseconds).
#[derive(Debug, Clone)]
pub(crate) enum Value<'a> {
    /// `BIGINT` / `INTEGER`, or NULL.
    Int(Option<i64>),
    /// `TEXT`, or NULL.
    Text(Option<Cow<'a, str>>),
    /// `BYTEA` / `BLOB`.
    Bytes(&'a [u8]),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}
impl From<Option<i64>> for Value<'_> {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}
impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(Some(Cow::Borrowed(v)))
    }
}
impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Self::Text(Some(Cow::Borrowed(v)))
    }
}
impl From<String> for Value<'_> {
    fn from(v: String) -> Self {
        Self::Text(Some(Cow::Owned(v)))
    }
}
impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Self::Text(v.map(Cow::Borrowed))
    }
}
impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Self::Bytes(v)
    }
}
impl<'a> From<&'a ChannelName> for Value<'a> {
    fn from(v: &'a ChannelName) -> Self {
        v.as_str().into()
    }
}
impl<'a> From<&'a crate::domain::Uid> for Value<'a> {
    fn from(v: &'a crate::domain::Uid) -> Self {
        v.as_str().into()
    }
}

/// What a row decodes into on both backends (a tuple of plain column types).
pub(crate) trait Columns:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T> Columns for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

/// Where a query runs: a reader pool or a write transaction, on one backend.
pub(crate) enum On<'c> {
    /// A SQLite pool.
    SqlitePool(&'c SqlitePool),
    /// A SQLite transaction.
    Sqlite(&'c mut SqliteConnection),
    /// The PostgreSQL pool.
    PgPool(&'c PgPool),
    /// A PostgreSQL transaction.
    Postgres(&'c mut PgConnection),
}

/// The pool reads go to (SQLite: the read-only readers; PostgreSQL: the pool).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reader<'c> {
    /// SQLite readers.
    Sqlite(&'c SqlitePool),
    /// The PostgreSQL pool.
    Postgres(&'c PgPool),
}

impl<'c> From<Reader<'c>> for On<'c> {
    fn from(r: Reader<'c>) -> Self {
        match r {
            Reader::Sqlite(p) => On::SqlitePool(p),
            Reader::Postgres(p) => On::PgPool(p),
        }
    }
}

/// A write transaction on either backend; dropped without [`Tx::commit`], it rolls back.
pub(crate) enum Tx {
    /// SQLite (`BEGIN IMMEDIATE` on the one writer).
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    /// PostgreSQL.
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Tx {
    /// Commits.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }
}

impl<'c> From<&'c mut Tx> for On<'c> {
    fn from(t: &'c mut Tx) -> Self {
        match t {
            Tx::Sqlite(t) => On::Sqlite(t),
            Tx::Postgres(t) => On::Postgres(t),
        }
    }
}

/// A statement with its values, ready to run [`On`] a pool or a transaction.
#[derive(Debug, Clone)]
pub(crate) struct Query<'a> {
    stmt: Stmt,
    values: Vec<Value<'a>>,
}

impl<'a> Query<'a> {
    /// Binds the next value (`$1`, `$2`, ... in order).
    pub(crate) fn bind(mut self, v: impl Into<Value<'a>>) -> Self {
        self.values.push(v.into());
        self
    }

    fn arguments<'s, DB>(&'s self) -> Result<DB::Arguments, sqlx::Error>
    where
        DB: Database,
        Option<i64>: Encode<'s, DB> + Type<DB>,
        Option<&'s str>: Encode<'s, DB> + Type<DB>,
        &'s [u8]: Encode<'s, DB> + Type<DB>,
    {
        let mut args = DB::Arguments::default();
        for v in &self.values {
            let added: Result<(), BoxDynError> = match v {
                Value::Int(i) => args.add(*i),
                Value::Text(t) => {
                    let t: Option<&'s str> = t.as_deref();
                    args.add(t)
                }
                Value::Bytes(b) => {
                    let b: &'s [u8] = b;
                    args.add(b)
                }
            };
            added.map_err(sqlx::Error::Encode)?;
        }
        Ok(args)
    }

    /// Runs it; the number of rows it changed.
    pub(crate) async fn execute<'c>(self, on: impl Into<On<'c>>) -> Result<u64, sqlx::Error> {
        let (lite, pg) = (self.stmt.sqlite, self.stmt.postgres);
        let done = match on.into() {
            On::SqlitePool(p) => {
                let args = self.arguments::<Sqlite>()?;
                sqlx::query_with(lite, args)
                    .execute(p)
                    .await?
                    .rows_affected()
            }
            On::Sqlite(c) => {
                let args = self.arguments::<Sqlite>()?;
                sqlx::query_with(lite, args)
                    .execute(c)
                    .await?
                    .rows_affected()
            }
            On::PgPool(p) => {
                let args = self.arguments::<Postgres>()?;
                sqlx::query_with(pg, args).execute(p).await?.rows_affected()
            }
            On::Postgres(c) => {
                let args = self.arguments::<Postgres>()?;
                sqlx::query_with(pg, args).execute(c).await?.rows_affected()
            }
        };
        Ok(done)
    }

    /// Every row it returns.
    pub(crate) async fn fetch_all<'c, T: Columns>(
        self,
        on: impl Into<On<'c>>,
    ) -> Result<Vec<T>, sqlx::Error> {
        let (lite, pg) = (self.stmt.sqlite, self.stmt.postgres);
        match on.into() {
            On::SqlitePool(p) => {
                let args = self.arguments::<Sqlite>()?;
                sqlx::query_as_with(lite, args).fetch_all(p).await
            }
            On::Sqlite(c) => {
                let args = self.arguments::<Sqlite>()?;
                sqlx::query_as_with(lite, args).fetch_all(c).await
            }
            On::PgPool(p) => {
                let args = self.arguments::<Postgres>()?;
                sqlx::query_as_with(pg, args).fetch_all(p).await
            }
            On::Postgres(c) => {
                let args = self.arguments::<Postgres>()?;
                sqlx::query_as_with(pg, args).fetch_all(c).await
            }
        }
    }

    /// The first row, if any.
    pub(crate) async fn fetch_optional<'c, T: Columns>(
        self,
        on: impl Into<On<'c>>,
    ) -> Result<Option<T>, sqlx::Error> {
        Ok(self.fetch_all(on).await?.into_iter().next())
    }

    /// The first row; [`sqlx::Error::RowNotFound`] without one.
    pub(crate) async fn fetch_one<'c, T: Columns>(
        self,
        on: impl Into<On<'c>>,
    ) -> Result<T, sqlx::Error> {
        self.fetch_optional(on)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// The first column of every row.
    pub(crate) async fn scalars<'c, T>(self, on: impl Into<On<'c>>) -> Result<Vec<T>, sqlx::Error>
    where
        (T,): Columns,
    {
        let rows: Vec<(T,)> = self.fetch_all(on).await?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    /// The first column of the first row, if any.
    pub(crate) async fn scalar_optional<'c, T>(
        self,
        on: impl Into<On<'c>>,
    ) -> Result<Option<T>, sqlx::Error>
    where
        (T,): Columns,
    {
        Ok(self.scalars(on).await?.into_iter().next())
    }

    /// The first column of the first row; [`sqlx::Error::RowNotFound`] without one.
    pub(crate) async fn scalar_one<'c, T>(self, on: impl Into<On<'c>>) -> Result<T, sqlx::Error>
    where
        (T,): Columns,
    {
        self.scalar_optional(on)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }
}

impl Store {
    /// Where reads go.
    pub(crate) fn reader(&self) -> Reader<'_> {
        match self {
            Store::Sqlite(s) => Reader::Sqlite(s.read_pool()),
            Store::Postgres(s) => Reader::Postgres(s.pool()),
        }
    }

    /// Opens a write transaction.
    pub(crate) async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Store::Sqlite(s) => Tx::Sqlite(s.begin_write().await?),
            Store::Postgres(s) => Tx::Postgres(s.pool().begin().await?),
        })
    }

    /// Runs one write statement in its own transaction (again if PostgreSQL aborts it,
    /// as [`Store::retrying`]); the number of rows it changed.
    pub(crate) async fn write_one(&self, name: &'static str, q: Query<'_>) -> StoreResult<u64> {
        let q = &q;
        self.retrying(name, move || async move {
            let mut tx = self.begin_write().await?;
            let n = q.clone().execute(&mut tx).await?;
            tx.commit().await?;
            Ok(n)
        })
        .await
    }

    /// Runs the write operation `op` (whole transactions), again when PostgreSQL aborted
    /// it as a deadlock victim or a serialization failure (twice at most): an aborted
    /// transaction left nothing behind. SQLite has one writer and cannot deadlock.
    pub(crate) async fn retrying<T, F, Fut>(&self, name: &'static str, mut op: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let mut retries = 0;
        loop {
            match op().await {
                Err(e) if retries < 2 && e.is_retryable() => {
                    retries += 1;
                    tracing::info!(op = name, error = %e, retries, "transaction aborted by the database; running it again");
                }
                r => break r,
            }
        }
    }
}

/// A column that holds something the store never writes.
pub(crate) fn corrupt(
    table: &'static str,
    column: &'static str,
    value: impl ToString,
) -> StoreError {
    StoreError::Corrupt {
        table,
        column,
        value: value.to_string(),
    }
}

/// A `channel` column of `table`: the store writes only names that parse, so one that
/// does not is [`StoreError::Corrupt`].
pub(crate) fn channel(table: &'static str, name: String) -> StoreResult<ChannelName> {
    ChannelName::parse(&name).map_err(|_| corrupt(table, "channel", name))
}

/// A JSON list of strings as the store writes them (`audio`, `errors`, `dst_uid`, ...).
pub(crate) fn json_list(
    table: &'static str,
    column: &'static str,
    text: &str,
) -> StoreResult<Vec<String>> {
    serde_json::from_str(text).map_err(|_| corrupt(table, column, text))
}

/// Writes a list as its JSON column.
pub(crate) fn to_json_list<T: AsRef<str>>(items: &[T]) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
}
