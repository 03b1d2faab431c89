//! Logs and traces: the subscriber setup (format and verbosity from the
//! configuration, and OpenTelemetry tracing when an OTLP endpoint is set,
//! in `otel`; the trace a task keeps for its runs, in `task_trace`), the writer that keeps lines off the request path, and the
//! panic hook. The per-RPC observation lives in the server edge
//! (`server::rpc_layer`), which decides what is worth a line by default.

mod otel;
mod task_trace;

use std::io::{BufWriter, IsTerminal};

use tracing::{Subscriber, error, info, warn};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt, filter_fn},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

use self::otel::Tracing;
pub use self::otel::{DEFAULT_SERVICE_NAME, ENDPOINT_VARIABLE, TracingError, join_caller_trace};
pub use self::task_trace::{current_trace_context, join_stored_trace};
use crate::config::{Config, LogFormat};

/// Lines that may wait for the writer thread; past this, new lines are
/// dropped and counted rather than making the caller wait. At `info` lines
/// are rare, so this only has to absorb a burst (an incident that fails
/// many calls at once); at `debug` under full load it holds a few
/// milliseconds of lines. Each waiting line holds its text (a few hundred
/// bytes), so at most about 1 MiB waits. The channel's slots (32 bytes
/// each) are allocated up front: 8192 of them (256 KiB, one large
/// allocation) cost 3 MiB of idle resident memory with mimalloc, which
/// gave the block a huge page of its own; 2048 (64 KiB) cost nothing.
pub const LOG_BUFFER_LINES: usize = 2048;

/// The writer thread batches what waits into one `write` to stdout, up to
/// this many bytes, and flushes as soon as nothing more waits.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The log writer `init_logging` started, and the tracer provider when
/// tracing is on. Keep it until the process ends and call
/// [`Logging::shutdown`]: it exports the spans still batched, then writes
/// out the lines still waiting (waiting at most a second); lines logged
/// after that are lost. Dropped without it (main returning an error), the
/// lines are still written.
#[must_use = "dropping it stops the log writer; keep it until the end of main"]
pub struct Logging {
    tracing: Option<Tracing>,
    _writer: WorkerGuard,
    dropped: ErrorCounter,
}

impl Logging {
    /// Reads how many lines were dropped so far because the writer had
    /// [`LOG_BUFFER_LINES`] waiting: for the metrics, which read it at each
    /// scrape.
    pub fn dropped_lines(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let dropped = self.dropped.clone();
        move || dropped.dropped_lines() as u64
    }

    /// Exports the last spans, then stops the log writer (see [`Logging`]).
    pub async fn shutdown(mut self) {
        if let Some(tracing) = self.tracing.take() {
            tracing.shutdown().await;
        }
    }
}

/// Installs the global subscriber: `LOG_FORMAT` json or text, verbosity
/// from `LOG_LEVEL` raised by `-v`, and `RUST_LOG` for fine control. Lines
/// are formatted where they are logged, then handed to a thread that
/// writes them to stdout, so a slow reader of stdout (a full pipe, a
/// stalled log collector) never holds a call or the manager: lines beyond
/// [`LOG_BUFFER_LINES`] are dropped and counted instead.
///
/// When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported over
/// OTLP/gRPC (see `otel`), and the `rpc` span of each call, with its
/// `trace_id`, shows in the lines logged within it whatever the level.
/// Without it no OpenTelemetry layer is installed at all. Call it on the
/// tokio runtime.
pub fn init_logging(config: &Config, verbose: u8) -> Result<Logging, TracingError> {
    let tracing = Tracing::from_env(|name| std::env::var(name).ok())?;
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
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            std::io::stdout(),
        ));
    let dropped = writer.error_counter();
    match &tracing {
        // The filter decides for every layer, as it always has: a span or
        // line it turns down is never made.
        None => tracing_subscriber::registry()
            .with(filter)
            .with(log_layer(config.log_format, writer))
            .init(),
        // Each layer filters for itself: the exporter wants our spans even
        // where the level leaves them out of the log, and the log shows the
        // `rpc` span (so its `trace_id`) in the lines of the call.
        Some(tracing) => tracing_subscriber::registry()
            .with(
                log_layer(config.log_format, writer).with_filter(filter.or(filter_fn(
                    |metadata| metadata.is_span() && metadata.name() == "rpc",
                ))),
            )
            .with(tracing.layer())
            .init(),
    }
    if let Some((directives, error)) = rejected_rust_log {
        warn!(rust_log = %directives, %error, "RUST_LOG is not a valid filter; using LOG_LEVEL");
    }
    if let Some(tracing) = &tracing {
        info!(
            endpoint = tracing.endpoint(),
            "exporting traces over OTLP/gRPC"
        );
    }
    Ok(Logging {
        tracing,
        _writer: guard,
        dropped,
    })
}

/// The layer that formats lines (JSON or text) for the writer.
fn log_layer<S>(format: LogFormat, writer: NonBlocking) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => layer.with_ansi(std::io::stdout().is_terminal()).boxed(),
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
