//! `txpipe-broker`: parses flags (each also a `BROKER_*` env var), starts tracing, binds the
//! listeners and calls [`txpipe_broker::run`] until SIGTERM or SIGINT.

use anyhow::Context;
use clap::Parser;
use txpipe_broker::{Config, LogFormat};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    #[cfg(feature = "failpoints")]
    let _failpoints = txpipe_broker::failpoints::setup();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,openraft::replication=off")
    });
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    match serve(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the cause chain on one line, so the last lines of a log (what a
            // supervisor shows) hold the reason, not a backtrace dump.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Validates the config, binds the three listeners and runs the broker until a signal.
async fn serve(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let grpc = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding --listen {}", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", config.admin_listen))?;
    let peer = tokio::net::TcpListener::bind(config.peer_listen)
        .await
        .with_context(|| format!("binding --peer-listen {}", config.peer_listen))?;
    txpipe_broker::run(
        config,
        txpipe_broker::Listeners { grpc, peer, admin },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
