//! Processors: the code that does a task's work, and the registry that maps
//! each kind to its processor.
//!
//! A processor knows its input, a cancellation token and a way to report
//! progress; it knows nothing of the manager, the store or gRPC.

mod builtin;
pub mod remote;

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value as JsonValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::task::{Progress, TaskId};

pub use builtin::{DemoProcessor, EchoProcessor, FailProcessor, FlakyProcessor, SleepProcessor};

/// The kind a request with an empty `kind` gets.
pub const DEFAULT_KIND: &str = "demo";

/// Does the work of one kind of task.
///
/// Implementations must be safe to run again for the same task: after a
/// crash, a task that was running runs again (at-least-once).
#[async_trait]
pub trait Processor: Send + Sync + 'static {
    /// Runs one attempt of a task and returns its result as JSON.
    ///
    /// When `context.cancellation` fires (cancel, timeout or shutdown) the
    /// processor should return soon; a second later it is aborted.
    async fn process(&self, context: TaskContext) -> Result<JsonValue, ProcessorError>;
}

/// Why a processor could not finish; the text becomes the task's `error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProcessorError {
    message: String,
    permanent: bool,
    cut_short: bool,
}

impl ProcessorError {
    /// A failure the task's retry policy may retry (the input may be fine
    /// and the trouble passing: a timeout, a service that is down).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
            cut_short: false,
        }
    }

    /// Not a failure of the task: the run could not go on for reasons of
    /// its own (the remote worker running it went away). The task runs
    /// again as after a crash of its server, and the run does not count
    /// against its retry policy.
    pub fn cut_short(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
            cut_short: true,
        }
    }

    /// A failure no retry can fix (bad input, a refused request): the task
    /// fails at once, whatever attempts its retry policy has left.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
            cut_short: false,
        }
    }

    /// Whether the task must fail without a retry.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// Whether the run was cut short rather than failed.
    pub fn is_cut_short(&self) -> bool {
        self.cut_short
    }
}

/// What a processor gets for one run of one task.
pub struct TaskContext {
    pub task_id: TaskId,
    /// 1 on the first run; higher when the task runs again.
    pub attempt: u32,
    data: Option<Arc<JsonValue>>,
    /// Fires when the run must stop: cancelled, timed out or shutting down.
    pub cancellation: CancellationToken,
    progress: ProgressReporter,
}

impl TaskContext {
    pub fn new(
        task_id: TaskId,
        attempt: u32,
        data: Option<Arc<JsonValue>>,
        cancellation: CancellationToken,
        progress: ProgressReporter,
    ) -> Self {
        Self {
            task_id,
            attempt,
            data,
            cancellation,
            progress,
        }
    }

    /// The task's input; JSON `null` when the request had none.
    pub fn data(&self) -> &JsonValue {
        self.data.as_deref().unwrap_or(&JsonValue::Null)
    }

    /// Reports progress to everyone watching the task. Waits only when the
    /// manager is far behind, which slows this processor, never the manager.
    pub async fn report_progress(&self, percent: u32, message: impl Into<String>) {
        let progress = Progress {
            percent: percent.min(100),
            message: message.into(),
        };
        self.progress
            .report(self.task_id, self.attempt, progress)
            .await;
    }
}

/// One progress report on its way to the manager.
#[derive(Debug)]
pub struct ProgressUpdate {
    pub task_id: TaskId,
    pub attempt: u32,
    pub progress: Progress,
}

/// The sending end of the channel that carries progress to the manager.
#[derive(Clone, Debug)]
pub struct ProgressReporter {
    updates: mpsc::Sender<ProgressUpdate>,
}

impl ProgressReporter {
    pub fn new(updates: mpsc::Sender<ProgressUpdate>) -> Self {
        Self { updates }
    }

    /// A reporter whose reports go nowhere, until a run's real one
    /// replaces it.
    fn detached() -> Self {
        let (updates, _) = mpsc::channel(1);
        Self { updates }
    }

    async fn report(&self, task_id: TaskId, attempt: u32, progress: Progress) {
        let update = ProgressUpdate {
            task_id,
            attempt,
            progress,
        };
        // The manager is gone only when the server stops; the run is about
        // to be aborted then, so a lost report is harmless.
        let _ = self.updates.send(update).await;
    }
}

/// Maps each task kind to the processor that runs it.
#[derive(Clone)]
pub struct Registry {
    processors: HashMap<String, Arc<dyn Processor>>,
    /// The kinds remote workers run, and their streams.
    workers: Option<remote::WorkerHub>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Registry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

impl Registry {
    /// A registry with no processors at all.
    pub fn empty() -> Self {
        Self {
            processors: HashMap::new(),
            workers: None,
        }
    }

    /// The built-in kinds: `demo` (taking `demo_duration`), `echo`, `sleep`
    /// and `fail`.
    pub fn with_builtins(demo_duration: Duration) -> Self {
        let mut registry = Self::empty();
        registry.register(DEFAULT_KIND, DemoProcessor::new(demo_duration));
        registry.register("echo", EchoProcessor);
        registry.register("sleep", SleepProcessor);
        registry.register("fail", FailProcessor);
        registry.register("flaky", FlakyProcessor);
        registry
    }

    /// Registers `processor` for `kind`, replacing any earlier one.
    pub fn register(&mut self, kind: impl Into<String>, processor: impl Processor) -> &mut Self {
        self.processors.insert(kind.into(), Arc::new(processor));
        self
    }

    /// Hands the kinds of `hub` to remote workers (`WorkerService`). A
    /// worker kind with a processor registered here too is run remotely.
    pub fn with_workers(mut self, hub: remote::WorkerHub) -> Self {
        self.workers = Some(hub);
        self
    }

    /// The processor of a kind run in this process.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Processor>> {
        self.processors.get(kind).cloned()
    }

    /// The worker streams, when `kind` is run by remote workers.
    pub fn workers_for(&self, kind: &str) -> Option<&remote::WorkerHub> {
        self.workers.as_ref().filter(|hub| hub.serves(kind))
    }

    /// The worker streams, if any kind is run by remote workers.
    pub fn workers(&self) -> Option<&remote::WorkerHub> {
        self.workers.as_ref()
    }

    /// Whether tasks of `kind` can run: in this process or on a worker.
    pub fn contains(&self, kind: &str) -> bool {
        self.processors.contains_key(kind) || self.workers_for(kind).is_some()
    }

    /// The kinds that can run, sorted, for error messages and logs.
    pub fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self.processors.keys().map(String::as_str).collect();
        if let Some(hub) = &self.workers {
            kinds.extend(hub.kinds().iter().map(String::as_str));
        }
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }
}
