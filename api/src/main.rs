//! `api`: serve (default), `api migrate`, `api token mint|inspect`.

use clap::{CommandFactory, Parser, Subcommand};

use api::config::{self, Config};
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
    let cli = parse();
    match cli.command {
        Some(Command::Token(cmd)) => token::cli::run(cmd),
        Some(Command::Migrate { database_url }) => {
            telemetry::init(cli.config.server.log_format);
            let url = database_url.unwrap_or(cli.config.server.database_url);
            let store = Store::connect(&url).await?;
            store.migrate().await?;
            println!("migrations applied ({})", store.backend());
            Ok(())
        }
        None => {
            telemetry::init(cli.config.server.log_format);
            let app = Application::build(cli.config).await?;
            app.run_until(shutdown_signal()).await
        }
    }
}

/// The command line, or exit with clap's message; for an invalid value, a note names
/// the flag's environment variable too (clap names only the flag).
fn parse() -> Cli {
    Cli::try_parse().unwrap_or_else(|e| {
        let var = config::env_of_parse_error(&e, &Cli::command());
        if let Some(var) = var {
            let _ = e.print();
            eprintln!("note: this flag's environment variable is {var}");
            std::process::exit(e.exit_code());
        }
        e.exit()
    })
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
