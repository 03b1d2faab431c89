//! What a handler sees of one assignment (`Job`), what it returns when it
//! fails (`JobError`), and the `Handler` trait every `async fn(Job)` meets.
//!
//! Nothing here touches the stream: a `Job` reaches the session only
//! through its bounded progress channel and its cancellation token.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
};

use serde_json::Value as JsonValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pb;

/// The future a [`Handler`] returns, boxed so handlers of different types
/// share one map.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<JsonValue, JobError>> + Send>>;

/// The code that runs one kind of task: any `async fn(Job) ->
/// Result<serde_json::Value, JobError>` (or closure returning such a future)
/// is one.
///
/// Like a server-side processor, a handler must be safe to run again for the
/// same task: a run cut short (lost connection, worker stopped) runs again
/// as a new attempt, here or on another worker.
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt; the value becomes the task's `result`.
    fn call(&self, job: Job) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<JsonValue, JobError>> + Send + 'static,
{
    fn call(&self, job: Job) -> HandlerFuture {
        Box::pin(self(job))
    }
}

/// Why a run failed; the message becomes the task's `error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    message: String,
    permanent: bool,
}

impl JobError {
    /// A failure the task's retry policy may retry: the input may be fine
    /// and the trouble passing (a service that is down, a timeout).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure no retry can fix (bad input): the task fails at once,
    /// whatever attempts its retry policy has left.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }

    /// Whether the task must fail without a retry.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The text that becomes the task's `error`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Why the server stopped a run (`WorkCancellation`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancellation {
    /// In words: "cancelled by a client", "timed out after 5s", "shutting
    /// down", ... Empty when the worker itself stopped the run (its
    /// connection was lost or its grace period ran out).
    pub reason: String,
    /// For code; `Unspecified` when the worker itself stopped the run.
    pub cause: pb::CancellationCause,
}

/// One assignment: the task to run and the ways to talk back about it.
///
/// Cheap to clone (the task is shared), so a handler may hand copies to
/// tasks of its own; progress from any copy goes to the same run.
#[derive(Clone)]
pub struct Job {
    assignment: Arc<Assignment>,
    cancellation: CancellationToken,
    cancel_reason: Arc<OnceLock<Cancellation>>,
    progress: mpsc::Sender<pb::WorkRequest>,
}

/// The parts of a `WorkAssignment` a handler reads.
struct Assignment {
    task: pb::Task,
    data: JsonValue,
    trace_context: HashMap<String, String>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No data: payloads stay out of logs.
        formatter
            .debug_struct("Job")
            .field("task_id", &self.task_id())
            .field("kind", &self.kind())
            .field("attempt", &self.attempt())
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Job {
    /// The task's id.
    pub fn task_id(&self) -> &str {
        &self.assignment.task.id
    }

    /// 1 on the first run; higher when the task runs again.
    pub fn attempt(&self) -> u32 {
        self.assignment.task.attempt
    }

    /// The task's kind, the one this handler was registered for.
    pub fn kind(&self) -> &str {
        &self.assignment.task.kind
    }

    /// The task's input as JSON; `null` when it was created without data.
    pub fn data(&self) -> &JsonValue {
        &self.assignment.data
    }

    /// The whole task as the server sent it (`RUNNING`, with its name,
    /// labels, `timeout_seconds`, `node`...).
    pub fn task(&self) -> &pb::Task {
        &self.assignment.task
    }

    /// The W3C trace context (`traceparent`, `tracestate`) of the trace the
    /// task was created in, for spans that join it; empty when none.
    pub fn trace_context(&self) -> &HashMap<String, String> {
        &self.assignment.trace_context
    }

    /// Reports progress to the task's watchers (`percent` is capped at 100).
    /// Waits only while the connection is far behind, which slows this
    /// handler, never the worker; once the run is over (or the connection
    /// gone) the report is dropped, which is what the server would do.
    pub async fn progress(&self, percent: u32, message: impl Into<String>) {
        let report = pb::WorkRequest {
            message: Some(pb::work_request::Message::Progress(pb::WorkProgress {
                task_id: self.task_id().to_owned(),
                attempt: self.attempt(),
                progress: Some(pb::TaskProgress {
                    percent: percent.min(100),
                    message: message.into(),
                }),
            })),
        };
        let _ = self.progress.send(report).await;
    }

    /// Resolves when the run must stop: the task was cancelled, timed out,
    /// or the server or this worker is stopping. The handler should return
    /// soon (anything: the outcome of a cancelled run is discarded); one
    /// that does not is dropped after the worker's cancel grace.
    pub async fn cancelled(&self) {
        self.cancellation.cancelled().await;
    }

    /// Whether the run has been told to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// The token behind [`Job::cancelled`], for code that takes one.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancellation.clone()
    }

    /// Why the run was stopped, once it has been.
    pub fn cancellation(&self) -> Option<&Cancellation> {
        self.cancel_reason.get()
    }
}

/// The session's side of one job: how to stop it.
#[derive(Clone, Debug)]
pub(super) struct JobControl {
    cancellation: CancellationToken,
    cancel_reason: Arc<OnceLock<Cancellation>>,
}

impl JobControl {
    /// Tells the handler to stop, saying why (the first reason wins).
    pub(super) fn cancel(&self, reason: Cancellation) {
        let _ = self.cancel_reason.set(reason);
        self.cancellation.cancel();
    }

    /// Resolves once the handler has been told to stop.
    pub(super) async fn cancelled(&self) {
        self.cancellation.cancelled().await;
    }
}

/// A job for `task` and the control the session keeps of it.
pub(super) fn new_job(
    task: pb::Task,
    data: JsonValue,
    trace_context: HashMap<String, String>,
    progress: mpsc::Sender<pb::WorkRequest>,
) -> (Job, JobControl) {
    let cancellation = CancellationToken::new();
    let cancel_reason = Arc::new(OnceLock::new());
    let job = Job {
        assignment: Arc::new(Assignment {
            task,
            data,
            trace_context,
        }),
        cancellation: cancellation.clone(),
        cancel_reason: cancel_reason.clone(),
        progress,
    };
    let control = JobControl {
        cancellation,
        cancel_reason,
    };
    (job, control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_is_capped_and_carries_the_attempt() {
        let (sender, mut receiver) = mpsc::channel(4);
        let task = pb::Task {
            id: "t1".into(),
            attempt: 3,
            ..Default::default()
        };
        let (job, _control) = new_job(task, JsonValue::Null, HashMap::new(), sender);
        job.progress(250, "nearly").await;
        let Some(pb::WorkRequest {
            message: Some(pb::work_request::Message::Progress(progress)),
        }) = receiver.recv().await
        else {
            panic!("a progress message");
        };
        assert_eq!(progress.task_id, "t1");
        assert_eq!(progress.attempt, 3);
        assert_eq!(progress.progress.map(|report| report.percent), Some(100));
    }

    #[test]
    fn the_first_cancellation_reason_wins() {
        let (sender, _receiver) = mpsc::channel(1);
        let (job, control) = new_job(pb::Task::default(), JsonValue::Null, HashMap::new(), sender);
        assert!(job.cancellation().is_none());
        control.cancel(Cancellation {
            reason: "cancelled by a client".into(),
            cause: pb::CancellationCause::Cancelled,
        });
        control.cancel(Cancellation {
            reason: String::new(),
            cause: pb::CancellationCause::Unspecified,
        });
        assert!(job.is_cancelled());
        assert_eq!(
            job.cancellation().map(|cancellation| cancellation.cause),
            Some(pb::CancellationCause::Cancelled)
        );
    }
}
