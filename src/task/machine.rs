//! The state machine: every change of a task is an event passed to
//! [`Task::apply`], which refuses what the lifecycle does not allow.
//!
//! `PENDING → RUNNING → COMPLETED | FAILED | CANCELLED`, `PENDING →
//! CANCELLED | FAILED` (queue timeout), `RUNNING → RETRYING → RUNNING` (a
//! failed run the retry policy allows again), and `RETRYING → CANCELLED |
//! FAILED` (queue timeout). Terminal statuses never change again.

use std::{sync::Arc, time::SystemTime};

use serde_json::Value as JsonValue;

use super::{Progress, Task, TaskStatus, without_nul};

/// Something that happens to a task.
#[derive(Clone, Debug)]
pub enum TaskEvent {
    /// A worker on `node` starts a run of a waiting task.
    Start { node: String },
    /// A task that was running when its server died (or handed it over)
    /// runs again on `node` (at-least-once): a new attempt, still `RUNNING`,
    /// and one more run in a row cut short.
    Restart { node: String },
    /// A running task's run went to a remote worker (`WorkerService`):
    /// `node` becomes `<server node>/<worker>`.
    Assigned { worker: String },
    /// The processor reported progress.
    Progress(Progress),
    /// The processor returned a result.
    Complete(Arc<JsonValue>),
    /// The run failed: the processor returned an error, panicked, or timed
    /// out. The retry policy decides whether the task runs again.
    Fail(Failure),
    /// The task waited longer than its queue timeout to start.
    QueueTimeout,
    /// A client (or the server going down) cancelled the task.
    Cancel(String),
}

/// How a run failed.
#[derive(Clone, Debug)]
pub struct Failure {
    pub error: String,
    /// No retry, whatever the policy allows: the processor said so, or the
    /// task's runs were cut short too often.
    pub permanent: bool,
    /// 0 to 1: where in the back-off's jitter range the wait falls.
    pub jitter: f64,
}

impl Failure {
    /// A failure the retry policy may retry.
    pub fn retryable(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            permanent: false,
            jitter: fastrand::f64(),
        }
    }

    /// A failure that ends the task at once.
    pub fn permanent(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            permanent: true,
            jitter: 0.0,
        }
    }
}

impl TaskEvent {
    /// The status this event leads to, for the error of a refused one.
    fn target_status(&self, current: TaskStatus) -> TaskStatus {
        match self {
            TaskEvent::Start { .. } | TaskEvent::Restart { .. } => TaskStatus::Running,
            TaskEvent::Progress(_) | TaskEvent::Assigned { .. } => current,
            TaskEvent::Complete(_) => TaskStatus::Completed,
            TaskEvent::Fail(_) | TaskEvent::QueueTimeout => TaskStatus::Failed,
            TaskEvent::Cancel(_) => TaskStatus::Cancelled,
        }
    }
}

/// What [`Task::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The task changed; `status_changed` says whether its status did.
    Changed { status_changed: bool },
    /// The event asked for what already holds (cancelling a cancelled task).
    Unchanged,
}

/// An event the state machine does not allow in the task's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a {from} task cannot become {to}")]
pub struct IllegalTransition {
    pub from: TaskStatus,
    pub to: TaskStatus,
}

/// The server node (replica) part of a task's `node`: a run on a remote
/// worker shows as `<server node>/<worker>`, and the replica that hands it
/// the task is the one that owns the run.
pub fn replica_of(node: &str) -> &str {
    node.split_once('/').map_or(node, |(replica, _)| replica)
}

impl Task {
    /// Whether this task's run belongs to the server node `replica` (run
    /// there, or by a worker connected there).
    pub fn runs_on(&self, replica: &str) -> bool {
        replica_of(&self.node) == replica
    }

    /// Applies `event` at time `now`, enforcing the state machine. Every
    /// change bumps `revision`.
    pub fn apply(
        &mut self,
        event: TaskEvent,
        now: SystemTime,
    ) -> Result<Applied, IllegalTransition> {
        let from = self.status;
        let to = event.target_status(from);
        let illegal = IllegalTransition { from, to };
        match (from, event) {
            (TaskStatus::Pending | TaskStatus::Retrying, TaskEvent::Start { node }) => {
                self.status = TaskStatus::Running;
                self.attempt += 1;
                self.node = node;
                self.started_at = Some(now);
                self.progress = None;
                self.error.clear();
            }
            (TaskStatus::Running, TaskEvent::Restart { node }) => {
                self.attempt += 1;
                self.cut_short_runs += 1;
                self.node = node;
                self.started_at = Some(now);
                self.progress = None;
            }
            (TaskStatus::Running, TaskEvent::Assigned { worker }) => {
                self.node = format!("{}/{}", replica_of(&self.node), without_nul(worker));
            }
            (TaskStatus::Running, TaskEvent::Progress(mut progress)) => {
                progress.percent = progress.percent.min(100);
                progress.message = without_nul(progress.message);
                if self.progress.as_ref() == Some(&progress) {
                    return Ok(Applied::Unchanged);
                }
                self.progress = Some(progress);
            }
            (TaskStatus::Running, TaskEvent::Complete(result)) => {
                self.status = TaskStatus::Completed;
                self.result = Some(result);
                self.completed_at = Some(now);
            }
            (TaskStatus::Running, TaskEvent::Fail(failure)) => {
                self.failed_runs += 1;
                self.error = without_nul(failure.error);
                let policy = &self.scheduling.retry_policy;
                if !failure.permanent && policy.allows_another_run(self.failed_runs) {
                    self.status = TaskStatus::Retrying;
                    self.retry_at = Some(now + policy.backoff(self.failed_runs, failure.jitter));
                    self.cut_short_runs = 0;
                } else {
                    self.status = TaskStatus::Failed;
                    self.completed_at = Some(now);
                }
            }
            (TaskStatus::Pending | TaskStatus::Retrying, TaskEvent::QueueTimeout) => {
                self.status = TaskStatus::Failed;
                self.error = format!(
                    "never started in time: waited {}s to start (queue_timeout_seconds)",
                    self.scheduling.queue_timeout_seconds
                );
                self.completed_at = Some(now);
            }
            (
                TaskStatus::Pending | TaskStatus::Running | TaskStatus::Retrying,
                TaskEvent::Cancel(reason),
            ) => {
                self.status = TaskStatus::Cancelled;
                self.error = without_nul(reason);
                self.completed_at = Some(now);
            }
            (TaskStatus::Cancelled, TaskEvent::Cancel(_)) => return Ok(Applied::Unchanged),
            _ => return Err(illegal),
        }
        self.revision += 1;
        Ok(Applied::Changed {
            status_changed: from != self.status,
        })
    }
}
