//! The `miclink` binary: logging, configuration, the file-descriptor limit, signals, exit status.

use anyhow::Context;
use clap::Parser;
use miclink::{Args, Config};
use tokio::net::TcpListener;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let mut args = Args::parse();
    if let Some(command) = args.command.take() {
        return miclink::tools::run(command, Config::load(args)?).await;
    }
    let mut config = Config::load(args)?;
    // Every member holds a socket: lift the soft descriptor limit to the hard one so the
    // distribution's default of 1024 does not cap a room.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            info!(limit = n, "open file limit");
            // A member holds a WebSocket and, with media, a connected UDP socket per connection:
            // keep the HTTP cap where accepting one more never starves the media plane.
            let fit = usize::try_from(n.saturating_sub(1024) / 3).unwrap_or(usize::MAX);
            if config.http.max_connections > fit {
                warn!(
                    max_connections = fit,
                    "max_connections lowered to fit the open file limit"
                );
                config.http.max_connections = fit.max(1);
            }
        }
        Err(e) => warn!(error = %e, "could not raise the open file limit"),
    }
    if config.signaling.jwt_secret.is_none() {
        warn!("no jwt_secret configured: anyone can join any room (demo mode)");
    }
    let listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    info!(
        "miclink listening: demo at http://{}",
        listener.local_addr()?
    );
    miclink::run(listener, config, shutdown_signal()).await?;
    info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
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
        _ = ctrl_c => {},
        _ = term => {},
    }
}
