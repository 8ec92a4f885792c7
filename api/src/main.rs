//! `api`: serve (default), `api migrate`, `api token mint|inspect`.

use clap::{Parser, Subcommand};

use api::config::Config;
use api::{Application, store::Store, telemetry, token};

#[derive(Debug, Parser)]
#[command(
    name = "api",
    version,
    about = "The /dapi call API, /rtc channel signaling and robot dispatcher"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply database migrations and exit.
    Migrate {
        /// Database URL (defaults to the server's `--database-url` / `DATABASE_URL`).
        #[arg(long = "database-url")]
        database_url: Option<String>,
    },
    /// Mint or inspect Agora-compatible tokens.
    #[command(subcommand)]
    Token(token::cli::TokenCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(cmd)) => token::cli::run(cmd),
        Some(Command::Migrate { database_url }) => {
            telemetry::init(&cli.config.log_format);
            let url = database_url.unwrap_or(cli.config.database_url);
            let store = Store::connect(&url).await?;
            store.migrate().await?;
            println!("migrations applied ({})", store.backend());
            Ok(())
        }
        None => {
            telemetry::init(&cli.config.log_format);
            let app = Application::build(cli.config).await?;
            app.run_until(shutdown_signal()).await
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
