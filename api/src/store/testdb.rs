//! Fresh databases for tests and benchmarks: a new PostgreSQL database per run.

use sqlx::Connection;

/// Creates a database with a random name on the server of `base_url` and returns its URL.
pub async fn fresh_postgres(base_url: &str) -> anyhow::Result<String> {
    use rand::Rng;
    let name = format!("dapi_test_{:016x}", rand::rng().random::<u64>());
    let mut conn = sqlx::PgConnection::connect(base_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let (head, _db) = base_url
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("TEST_DATABASE_URL needs a /database part"))?;
    let query = base_url
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    let head = head.split_once('?').map(|(h, _)| h).unwrap_or(head);
    Ok(format!("{head}/{name}{query}"))
}
