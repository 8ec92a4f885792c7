//! Test support shared by every crate's integration tests: temporary directories, the
//! real `api` and `robot-agent` binaries as processes (started with builders, their
//! logs collected), and the check that a log never carried a secret.
//!
//! ```text
//!  test ── ApiProcess::builder().env(..).start() ──► api binary (port 0, SQLite in a TempDir)
//!     │        └── stdout: `listening on http://ADDR` ──► ApiProcess::base
//!     ├── AgentProcess::builder(&api.base).start() ──► robot-agent binary (cache in a TempDir)
//!     └── stop(): kill, then secrets::assert_no_secrets over each one's stderr
//! ```
//!
//! This crate depends on neither `api` nor `robot-agent`: it starts their binaries, so
//! `api` can take it as a dev-dependency without a second copy of itself. What needs
//! `api`'s own types (the in-process `spawn_app` on port 0 with `Config::for_tests`)
//! stays in `api/tests/common`.

#![warn(missing_docs)]

pub mod bins;
pub mod database;
pub mod process;
pub mod secrets;
pub mod tempdir;

pub use bins::{agent_bin, api_bin, cargo_bin, root};
pub use database::e2e_postgres;
pub use process::{AgentBuilder, AgentProcess, ApiBuilder, ApiProcess, Logs};
pub use secrets::{SECRETS, assert_no_secrets};
pub use tempdir::TempDir;

/// The App ID the test processes run with (the one of the API's `Config::for_tests`).
pub const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
/// The App Certificate the test processes run with.
pub const APP_CERTIFICATE: &str = "5CFd2fd1755d40ecb72977518be15d3b";
