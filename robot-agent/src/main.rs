//! `robot-agent`: parses the configuration, starts logging, runs the agent until SIGTERM or
//! SIGINT, drains, and exits 0. Everything else is in the library.

use std::io::IsTerminal;

use clap::Parser;
use robot_agent::{Agent, Config, link::Exit};
use tracing_subscriber::EnvFilter;

fn init_logging(format: &str) {
    // webrtc's internals log through `log`, not tracing; keep ours at info by default.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        "json" => true,
        "pretty" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(&config.log_format);
    let agent = Agent::build(&config).await?;
    if let Some(addr) = agent.health_addr() {
        println!("health listening on http://{addr}");
    }
    tracing::info!(
        agent_id = %config.agent_id(),
        capacity = config.capacity,
        api_url = %config.api_url()?,
        bind_ip = %config.bind_ip,
        "robot agent starting"
    );
    match agent.run(shutdown_signal()).await {
        Exit::Drained => tracing::info!("robot agent stopped"),
        Exit::DrainedUndelivered => {
            tracing::warn!("robot agent stopped; the API was unreachable for the last statuses")
        }
    }
    Ok(())
}
