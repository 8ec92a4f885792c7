//! Logging: readable lines in a terminal, JSON in production (`DAPI_LOG_FORMAT`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber in `format`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        // symphonia logs an ERROR line of its own for every file it cannot probe; an
        // upload that does not decode is the client's mistake, answered with a 400.
        .unwrap_or_else(|_| {
            EnvFilter::new("info,sqlx=warn,tower_http=info,symphonia_core::formats::probe=off")
        });
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
