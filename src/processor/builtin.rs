//! The built-in kinds of the contract: `demo`, `echo`, `sleep` and `fail`.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value as JsonValue, json};

use super::{Processor, ProcessorError, TaskContext};

/// How many progress reports `demo` makes over its run.
const DEMO_STEPS: u32 = 10;

/// Simulates work for a fixed duration, reporting progress as it goes; the
/// result is `Processed: ` followed by the data as compact JSON.
#[derive(Clone, Debug)]
pub struct DemoProcessor {
    duration: Duration,
}

impl DemoProcessor {
    pub fn new(duration: Duration) -> Self {
        Self { duration }
    }
}

#[async_trait]
impl Processor for DemoProcessor {
    async fn process(&self, context: TaskContext) -> Result<JsonValue, ProcessorError> {
        let step = self.duration / DEMO_STEPS;
        for done in 0..DEMO_STEPS {
            let percent = done * 100 / DEMO_STEPS;
            let message = format!("step {} of {DEMO_STEPS}", done + 1);
            context.report_progress(percent, message).await;
            tokio::select! {
                () = tokio::time::sleep(step) => {}
                () = context.cancellation.cancelled() => {
                    return Err(ProcessorError::new("cancelled"));
                }
            }
        }
        context.report_progress(100, "done").await;
        Ok(JsonValue::String(format!("Processed: {}", context.data())))
    }
}

/// Completes at once; the result is the data unchanged.
#[derive(Clone, Copy, Debug)]
pub struct EchoProcessor;

#[async_trait]
impl Processor for EchoProcessor {
    async fn process(&self, context: TaskContext) -> Result<JsonValue, ProcessorError> {
        Ok(context.data().clone())
    }
}

/// Sleeps `data.seconds` (fractions allowed), honouring cancellation; the
/// result is `{"slept": seconds}`.
#[derive(Clone, Copy, Debug)]
pub struct SleepProcessor;

#[async_trait]
impl Processor for SleepProcessor {
    async fn process(&self, context: TaskContext) -> Result<JsonValue, ProcessorError> {
        let seconds = context
            .data()
            .get("seconds")
            .and_then(JsonValue::as_f64)
            .ok_or_else(|| ProcessorError::new("data.seconds must be a number"))?;
        let duration = Duration::try_from_secs_f64(seconds).map_err(|_| {
            ProcessorError::new(format!(
                "data.seconds must be a non-negative number of seconds, got {seconds}"
            ))
        })?;
        tokio::select! {
            () = tokio::time::sleep(duration) => Ok(json!({ "slept": seconds })),
            () = context.cancellation.cancelled() => Err(ProcessorError::new("cancelled")),
        }
    }
}

/// Fails at once with `data.message`, or a fixed message when absent; the
/// failure is permanent (no retry) when `data.permanent` is `true`.
#[derive(Clone, Copy, Debug)]
pub struct FailProcessor;

/// The error of a `fail` task whose data has no `message`.
pub const FAIL_DEFAULT_MESSAGE: &str = "task failed as requested";

#[async_trait]
impl Processor for FailProcessor {
    async fn process(&self, context: TaskContext) -> Result<JsonValue, ProcessorError> {
        let message = context
            .data()
            .get("message")
            .and_then(JsonValue::as_str)
            .unwrap_or(FAIL_DEFAULT_MESSAGE);
        let permanent = context.data().get("permanent") == Some(&JsonValue::Bool(true));
        if permanent {
            Err(ProcessorError::permanent(message))
        } else {
            Err(ProcessorError::new(message))
        }
    }
}

/// Fails its first `data.failures` runs (a number, default 1) with `flaky
/// failure N`, then completes with `{"attempts": <attempt>}`: a stand-in
/// for work that fails for a while, to see retries.
#[derive(Clone, Copy, Debug)]
pub struct FlakyProcessor;

#[async_trait]
impl Processor for FlakyProcessor {
    async fn process(&self, context: TaskContext) -> Result<JsonValue, ProcessorError> {
        let failures = match context.data().get("failures") {
            None => 1.0,
            Some(value) => value.as_f64().ok_or_else(|| {
                ProcessorError::permanent(format!("data.failures must be a number, got {value}"))
            })?,
        };
        if f64::from(context.attempt) <= failures {
            return Err(ProcessorError::new(format!(
                "flaky failure {}",
                context.attempt
            )));
        }
        Ok(json!({ "attempts": context.attempt }))
    }
}
