//! A library user's own task kind, served by the same server as the
//! built-ins.
//!
//! `WordCountProcessor` implements [`Processor`]: it counts the lines, words
//! and most frequent words of `data.text`, reports progress line by line and
//! stops when `context.cancellation` fires (cancel, timeout or shutdown). It
//! is registered as `wordcount` next to `demo`, `echo`, `sleep` and `fail`,
//! and [`server::run`] serves everything until Ctrl+C or SIGTERM. The example takes
//! the binary's flags (`--help` lists them), so it listens on
//! 0.0.0.0:50051 unless told otherwise.
//!
//! Run it:
//!
//! ```text
//! cargo run --example custom_processor
//! cargo run --example custom_processor -- --listen 127.0.0.1:50052  # another port
//! ```
//!
//! and try it from another terminal (reflection is on, so no `.proto` is
//! needed):
//!
//! ```text
//! grpcurl -plaintext -d '{"name": "count", "kind": "wordcount",
//!     "data": {"text": "the cat\nthe dog\nthe end", "pause_ms": 500}}' \
//!   127.0.0.1:50051 taskprocessor.v1.TaskService/CreateTask
//! grpcurl -plaintext -d '{"id": "<id from above>"}' \
//!   127.0.0.1:50051 taskprocessor.v1.TaskService/WatchTask
//! ```
//!
//! The watch shows `RUNNING` with progress "line 1 of 3" … and then
//! `COMPLETED` with a result such as
//! `{"lines": 3, "words": 6, "topWords": [{"word": "the", "count": 3}, …]}`.

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use clap::Parser;
use serde_json::{Value as JsonValue, json};
use task_processor::{
    config::{Config, Flags},
    metrics::Metrics,
    processor::{Processor, ProcessorError, Registry, TaskContext},
    server::{self, Listeners},
    telemetry,
};
use tracing::warn;

/// The kind clients ask for in `CreateTask.kind`.
const WORDCOUNT_KIND: &str = "wordcount";

/// How many of the most frequent words the result lists.
const TOP_WORDS: usize = 5;

/// The longest pause per line a task may ask for, so a typo cannot park a
/// worker slot for hours (the task's timeout would end it anyway).
const MAX_PAUSE_PER_LINE: Duration = Duration::from_secs(10);

/// Counts the lines and words of `data.text` and lists the most frequent
/// words. `data.pause_ms` (optional) pauses after each line, so progress
/// and cancellation can be watched by eye.
#[derive(Clone, Copy, Debug)]
struct WordCountProcessor;

#[async_trait]
impl Processor for WordCountProcessor {
    async fn process(&self, context: TaskContext) -> Result<JsonValue, ProcessorError> {
        let data = context.data();
        // Bad input fails the same way every time: a permanent error, so the
        // task fails at once instead of being retried by its retry policy.
        // A passing trouble (a service that is down) would be
        // `ProcessorError::new`, which the policy may retry.
        let text = data
            .get("text")
            .and_then(JsonValue::as_str)
            .ok_or_else(|| ProcessorError::permanent("data.text must be a string"))?;
        let pause = match data.get("pause_ms") {
            None => Duration::ZERO,
            Some(pause_ms) => pause_ms
                .as_u64()
                .map(Duration::from_millis)
                .filter(|pause| *pause <= MAX_PAUSE_PER_LINE)
                .ok_or_else(|| {
                    ProcessorError::permanent(format!(
                        "data.pause_ms must be a whole number from 0 to {}",
                        MAX_PAUSE_PER_LINE.as_millis()
                    ))
                })?,
        };

        let lines: Vec<&str> = text.lines().collect();
        let line_count = lines.len();
        let mut words = 0_u64;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for (index, line) in lines.iter().enumerate() {
            // Cooperative cancellation: look before each unit of work. A
            // processor that ignores the token is aborted a second later.
            if context.cancellation.is_cancelled() {
                return Err(ProcessorError::new("cancelled"));
            }
            for word in line.split_whitespace() {
                words += 1;
                let word = word
                    .trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase();
                if !word.is_empty() {
                    *counts.entry(word).or_default() += 1;
                }
            }

            let done = index + 1;
            let percent = u32::try_from(done * 100 / line_count).unwrap_or(100);
            context
                .report_progress(percent, format!("line {done} of {line_count}"))
                .await;

            if pause.is_zero() {
                // Long texts must not hog a runtime thread between awaits;
                // truly CPU-heavy work belongs in `spawn_blocking`.
                tokio::task::yield_now().await;
            } else {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = context.cancellation.cancelled() => {
                        return Err(ProcessorError::new("cancelled"));
                    }
                }
            }
        }

        let mut top_words: Vec<(String, u64)> = counts.into_iter().collect();
        // Most frequent first; ties alphabetically, so results are stable.
        top_words.sort_by(|(word_a, count_a), (word_b, count_b)| {
            count_b.cmp(count_a).then_with(|| word_a.cmp(word_b))
        });
        top_words.truncate(TOP_WORDS);
        let top_words: Vec<JsonValue> = top_words
            .into_iter()
            .map(|(word, count)| json!({ "word": word, "count": count }))
            .collect();
        Ok(json!({
            "lines": line_count,
            "words": words,
            "topWords": top_words,
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The same layered configuration (defaults, --config file, environment,
    // flags) and logging as the `task-processor` binary. A program with its
    // own configuration can fill `Config { listen, ..Config::default() }`.
    let flags = Flags::parse();
    let config = Config::load(&flags, |name| std::env::var(name).ok())?;
    if flags.print_config {
        print!("{}", config.to_yaml());
        return Ok(());
    }
    // Kept until main ends: dropping it writes out the lines still waiting.
    let logging = telemetry::init_logging(&config, flags.verbose)?;
    telemetry::log_panics();

    let mut registry = Registry::with_builtins(config.demo_duration);
    registry.register(WORDCOUNT_KIND, WordCountProcessor);

    let metrics = Metrics::with_dropped_log_lines(logging.dropped_lines());
    let listeners = Listeners::bind(&config).await?;
    server::run(listeners, config, registry, metrics, shutdown_signal()).await?;
    logging.shutdown().await;
    Ok(())
}

/// Completes on Ctrl+C or SIGTERM (how Kubernetes stops a pod), so the
/// server drains as the `task-processor` binary does. If neither can be
/// watched, never completes (rather than stopping the server at once).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        warn!("cannot listen for SIGINT/SIGTERM; stop the process another way");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    //! The processor can be tested without a server: build a context by
    //! hand and look at what it reports.

    use std::sync::Arc;

    use task_processor::{
        processor::{ProgressReporter, ProgressUpdate},
        task::TaskId,
    };
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn context(
        data: JsonValue,
        cancellation: CancellationToken,
    ) -> (TaskContext, mpsc::Receiver<ProgressUpdate>) {
        let (updates, received) = mpsc::channel(64);
        let context = TaskContext::new(
            TaskId::generate(),
            1,
            Some(Arc::new(data)),
            cancellation,
            ProgressReporter::new(updates),
        );
        (context, received)
    }

    #[tokio::test]
    async fn counts_words_and_reports_progress_per_line() -> Result<(), ProcessorError> {
        let data = json!({ "text": "The cat\nthe dog.\nTHE end" });
        let (context, mut updates) = context(data, CancellationToken::new());
        let result = WordCountProcessor.process(context).await?;
        assert_eq!(result["lines"], 3);
        assert_eq!(result["words"], 6);
        assert_eq!(result["topWords"][0], json!({ "word": "the", "count": 3 }));

        let mut percents = Vec::new();
        while let Ok(update) = updates.try_recv() {
            percents.push(update.progress.percent);
        }
        assert_eq!(percents, [33, 66, 100]);
        Ok(())
    }

    #[tokio::test]
    async fn stops_when_cancelled() {
        let cancellation = CancellationToken::new();
        cancellation.cancel();
        let data = json!({ "text": "one\ntwo", "pause_ms": 10_000 });
        let (context, _updates) = context(data, cancellation);
        let outcome = WordCountProcessor.process(context).await;
        assert_eq!(outcome, Err(ProcessorError::new("cancelled")));
    }

    #[tokio::test]
    async fn refuses_data_without_text() {
        let (context, _updates) = context(json!({ "words": 3 }), CancellationToken::new());
        let outcome = WordCountProcessor.process(context).await;
        assert_eq!(
            outcome,
            Err(ProcessorError::permanent("data.text must be a string"))
        );
        assert!(outcome.is_err_and(|error| error.is_permanent()));
    }
}
