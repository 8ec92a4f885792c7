//! PostgreSQL aborts one of two transactions that lock rows in opposite orders (40P01); the
//! store classes that error as retryable, which is what makes `Store` run the aborted
//! transaction again instead of answering 500 (a deadlock between `quit/robot` and an
//! agent's `accept` was seen in `db_outage`).
//!
//! Needs `TEST_DATABASE_URL` (PostgreSQL); without it the test prints why it is skipped.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

use api::store::StoreError;
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPoolOptions;

#[tokio::test]
async fn a_deadlock_victim_is_classed_retryable() {
    let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
        println!(
            "SKIPPED a_deadlock_victim_is_classed_retryable: needs PostgreSQL; set TEST_DATABASE_URL"
        );
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect(&url)
        .await
        .unwrap();
    let table = format!("deadlock_probe_{}", std::process::id());
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (id) VALUES (1), (2)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let mut a = pool.begin().await.unwrap();
    let mut b = pool.begin().await.unwrap();
    let update = |id: i32| format!("UPDATE {table} SET v = v + 1 WHERE id = {id}");
    sqlx::query(AssertSqlSafe(update(1)))
        .execute(&mut *a)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(update(2)))
        .execute(&mut *b)
        .await
        .unwrap();
    // Each now waits for the row the other holds: PostgreSQL picks a victim.
    let (ra, rb) = tokio::join!(
        sqlx::query(AssertSqlSafe(update(2))).execute(&mut *a),
        sqlx::query(AssertSqlSafe(update(1))).execute(&mut *b)
    );
    let errors: Vec<StoreError> = [ra.err(), rb.err()]
        .into_iter()
        .flatten()
        .map(StoreError::from)
        .collect();
    drop((a, b));
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(errors.len(), 1, "exactly one victim: {errors:?}");
    assert!(errors[0].is_retryable(), "{:?}", errors[0]);
    assert!(
        !StoreError::Other(sqlx::Error::RowNotFound).is_retryable(),
        "other errors are not retried"
    );
}
