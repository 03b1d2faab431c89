//! Logs: the subscriber setup (format and verbosity from the
//! configuration) and the panic hook. The per-RPC observation lives in the
//! server edge (`server::rpc_layer`).

use std::io::IsTerminal;

use tracing::{error, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Installs the global subscriber: `LOG_FORMAT` json or text, verbosity
/// from `LOG_LEVEL` raised by `-v`, and `RUST_LOG` for fine control.
pub fn init_logging(config: &Config, verbose: u8) {
    let level = raise_level(&config.log_level, verbose);
    // Transport crates are chatty at debug, and sqlx logs every statement
    // there (and PostgreSQL's notices at info); keep them quiet unless asked
    // with RUST_LOG.
    let default_filter = format!("{level},h2=warn,hyper=warn,hyper_util=warn,tower=warn,sqlx=warn");
    let mut rejected_rust_log = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) => EnvFilter::try_new(&directives).unwrap_or_else(|error| {
            rejected_rust_log = Some((directives, error));
            EnvFilter::new(&default_filter)
        }),
        Err(_) => EnvFilter::new(&default_filter),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
    }
    if let Some((directives, error)) = rejected_rust_log {
        warn!(rust_log = %directives, %error, "RUST_LOG is not a valid filter; using LOG_LEVEL");
    }
}

fn raise_level(level: &str, verbose: u8) -> &'static str {
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let index = LEVELS.iter().position(|known| *known == level).unwrap_or(2);
    LEVELS[(index + usize::from(verbose)).min(LEVELS.len() - 1)]
}

/// Logs every panic, wherever it happens, with a backtrace; the RPC layer
/// and the manager then turn it into `INTERNAL` or a failed task.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|panic| {
        let backtrace = std::backtrace::Backtrace::force_capture();
        error!(panic = %panic, backtrace = %backtrace, "panic");
    }));
}

#[cfg(test)]
mod tests {
    use super::raise_level;

    #[test]
    fn verbosity_raises_the_level_and_stops_at_trace() {
        assert_eq!(raise_level("info", 0), "info");
        assert_eq!(raise_level("info", 1), "debug");
        assert_eq!(raise_level("warn", 5), "trace");
    }
}
