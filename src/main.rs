//! The `task-processor` binary: loads the configuration, sets up logging,
//! binds the listeners and runs the server until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use task_processor::{
    config::{Config, Flags},
    metrics::Metrics,
    processor::Registry,
    server::{self, Listeners},
    telemetry,
};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::warn;

/// mimalloc: the service allocates many small, short-lived buffers per call
/// (HTTP/2 frames, messages, strings); glibc's malloc spent about an eighth
/// of the CPU on them under load (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    // Validated before anything binds, so a bad setting never half-starts.
    let config = Config::load(&flags, |name| std::env::var(name).ok())?;
    if flags.print_config {
        print!("{}", config.to_yaml());
        return Ok(());
    }
    // Lives to the end of main, also when it returns an error: dropping it
    // writes out the lines still waiting, the last of a shutdown among them.
    let logging = telemetry::init_logging(&config, flags.verbose)?;
    telemetry::log_panics();
    let signals = ShutdownSignals::install()?;

    let registry = Registry::with_builtins(config.demo_duration);
    let metrics = Metrics::with_dropped_log_lines(logging.dropped_lines());
    let listeners = Listeners::bind(&config).await?;
    server::run(
        listeners,
        config,
        registry,
        metrics,
        signals.first_then_exit_on_second(),
    )
    .await?;
    // After the server stopped, so the spans of its last calls and runs
    // are exported too.
    logging.shutdown().await;
    Ok(())
}

/// SIGINT and SIGTERM, listened for from the moment this is made: a
/// signal that arrives while the server starts is not lost (nor does it
/// kill the process the default way).
struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    /// Completes on the first signal; a second one exits at once.
    async fn first_then_exit_on_second(mut self) {
        self.next().await;
        tokio::spawn(async move {
            self.next().await;
            warn!("second signal: exiting now");
            std::process::exit(130);
        });
    }
}
