//! The `task-processor` binary: loads the configuration, sets up logging,
//! binds the listeners and runs the server until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use task_processor::{
    config::{Config, Flags},
    processor::Registry,
    server::{self, Listeners},
    telemetry,
};
use tokio::net::TcpListener;
use tracing::warn;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    // Validated before anything binds, so a bad setting never half-starts.
    let config = Config::load(&flags, |name| std::env::var(name).ok())?;
    if flags.print_config {
        print!("{}", config.to_yaml());
        return Ok(());
    }
    telemetry::init_logging(&config, flags.verbose);
    telemetry::log_panics();

    let registry = Registry::with_builtins(config.demo_duration);
    let grpc = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", config.listen))?;
    let admin = TcpListener::bind(&config.admin_listen)
        .await
        .with_context(|| format!("cannot listen for admin HTTP on {}", config.admin_listen))?;
    let listeners = Listeners {
        grpc,
        admin: Some(admin),
    };
    server::run(listeners, config, registry, shutdown_signal()).await?;
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM; only Ctrl+C stops the server");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
