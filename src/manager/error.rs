//! Why the manager refused a command: the one error enum of the manager's
//! boundary, which the API maps to a status code in one place
//! (`api::error`).

use std::time::Duration;

use crate::{
    schedule::ScheduleId,
    task::{TaskId, TaskStatus},
};

/// Why the manager refused a command.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("task {0} not found")]
    NotFound(TaskId),
    #[error("schedule {0} not found")]
    ScheduleNotFound(ScheduleId),
    #[error("task {id} is already {status} and cannot be cancelled")]
    NotCancellable { id: TaskId, status: TaskStatus },
    #[error(
        "task {id} is {status}, not finished; only finished tasks can be deleted (cancel it first)"
    )]
    NotFinished { id: TaskId, status: TaskStatus },
    #[error("request_id {request_id:?} was already used with different parameters")]
    RequestIdConflict { request_id: String },
    #[error("the queue is full: {capacity} tasks are waiting")]
    QueueFull {
        capacity: usize,
        retry_after: Duration,
    },
    /// Tasks' data and results in memory would go past `max_held_bytes`.
    #[error(
        "the memory budget for tasks' data is full: {held} of {budget} bytes are held by \
         tasks not yet finished"
    )]
    MemoryFull {
        held: u64,
        budget: u64,
        retry_after: Duration,
    },
    /// A `WatchTasks` position this process cannot resume from: issued by
    /// another process (or before a restart), or older than what the
    /// journal keeps.
    #[error(
        "the resume_token has expired or was issued by another server process; list the tasks \
         again, then watch without a resume_token"
    )]
    WatchPositionLost,
    /// A create would take its tenant's waiting tasks past its quota.
    #[error(
        "tenant {tenant} has {waiting} tasks waiting, and its quota is max_waiting {max_waiting}; \
         try again once some have started"
    )]
    TenantQuotaFull {
        tenant: String,
        waiting: u64,
        max_waiting: usize,
        retry_after: Duration,
    },
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The store failed; nothing was changed (a create was not accepted).
    #[error("the task store is unavailable, try again: {0}")]
    Storage(String),
}
