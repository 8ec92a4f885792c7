//! Databases for the processes under test.

/// With `E2E_DATABASE_URL` set (a PostgreSQL server, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`): a fresh database on it for one API, made
/// with `psql`, as its `DATABASE_URL`. Unset: `None` (SQLite in the test's temp dir).
///
/// CI runs these slow end-to-end tests on SQLite only; the store logic under them runs on
/// both backends in the api crate's own tests. `E2E_DATABASE_URL` runs them on PostgreSQL.
pub fn e2e_postgres() -> Option<String> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let server = std::env::var("E2E_DATABASE_URL")
        .ok()
        .filter(|s| !s.is_empty())?;
    let name = format!(
        "dapi_e2e_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let out = std::process::Command::new("psql")
        .arg(&server)
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("DROP DATABASE IF EXISTS {name}"))
        .arg("-c")
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .unwrap_or_else(|e| panic!("E2E_DATABASE_URL is set but psql cannot run: {e}"));
    assert!(
        out.status.success(),
        "creating database {name} on {server}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (root, _) = server
        .split('?')
        .next()
        .and_then(|s| s.rsplit_once('/'))
        .expect("E2E_DATABASE_URL: postgres://user@host:port/db");
    Some(format!("{root}/{name}"))
}
