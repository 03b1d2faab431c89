//! The task domain: ids, statuses, the task record and its state machine.
//!
//! Plain Rust types only. Nothing here knows about protobuf, tonic or the
//! manager actor; every state change of a task goes through [`Task::apply`]
//! (`machine.rs`), and the retry rules are in `retry.rs`.

mod machine;
mod retry;
#[cfg(test)]
mod tests;

use std::{
    cmp::Reverse,
    collections::BTreeMap,
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

pub use machine::{Applied, Failure, IllegalTransition, TaskEvent, replica_of};
pub use retry::{InvalidPolicy, MAX_ATTEMPTS_LIMIT, MAX_BACKOFF_LIMIT, RetryPolicy};

use serde_json::Value as JsonValue;

/// Declares an identity type: a UUID v7 (ids made in one process sort in
/// the order they were made), printed hyphenated, parsed from text with
/// `$invalid` as the error. Tasks and schedules use it.
macro_rules! uuid_v7_id {
    ($(#[$meta:meta])* $name:ident, $(#[$invalid_meta:meta])* $invalid:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// Makes a new id. Ids made in one process sort in the order
            /// they were made.
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            pub fn from_uuid(uuid: uuid::Uuid) -> Self {
                Self(uuid)
            }

            pub fn as_uuid(&self) -> &uuid::Uuid {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.as_hyphenated().fmt(formatter)
            }
        }

        $(#[$invalid_meta])*
        #[derive(Debug, thiserror::Error)]
        #[error("{0:?} is not a UUID")]
        pub struct $invalid(String);

        impl std::str::FromStr for $name {
            type Err = $invalid;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::try_parse(text)
                    .map(Self)
                    .map_err(|_| $invalid(text.to_owned()))
            }
        }
    };
}
pub(crate) use uuid_v7_id;

uuid_v7_id!(
    /// A task's identity: a UUID v7, so ids sort by creation time.
    TaskId,
    /// The text given as a task id was not a UUID.
    InvalidTaskId
);

/// Where a task is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// A run failed and the retry policy allows another: waiting for the
    /// back-off to pass, then for a slot.
    Retrying,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Retrying,
    ];

    /// Waiting to start: pending, or retrying after a failed run.
    pub fn is_waiting(self) -> bool {
        matches!(self, TaskStatus::Pending | TaskStatus::Retrying)
    }

    /// Terminal statuses never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Retrying => "retrying",
        };
        formatter.write_str(name)
    }
}

/// Progress a processor reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// 0 to 100; larger reports are clamped to 100.
    pub percent: u32,
    pub message: String,
}

/// A `request_id` as it is unique: `(tenant, request_id)`. Two tenants may
/// use the same `request_id` for tasks of their own.
pub type RequestKey = (String, String);

fn request_key(tenant: &str, request_id: Option<&str>) -> Option<RequestKey> {
    request_id.map(|request_id| (tenant.to_owned(), request_id.to_owned()))
}

impl NewTask {
    /// Its `request_id` as it is unique: within its tenant.
    pub fn request_key(&self) -> Option<RequestKey> {
        request_key(&self.tenant, self.request_id.as_deref())
    }
}

/// A validated request for a new task: every field already obeys the
/// contract's input limits, the kind is resolved and the timeout effective.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    pub name: String,
    pub description: String,
    pub kind: String,
    /// `None` when the request carried no data; kept apart from JSON `null`
    /// so the task returns exactly what was sent.
    pub data: Option<Arc<JsonValue>>,
    /// The effective timeout in seconds; 0 means none.
    pub timeout_seconds: u32,
    pub labels: BTreeMap<String, String>,
    pub request_id: Option<String>,
    /// When and in what order it starts, and how failed runs are retried.
    pub scheduling: Scheduling,
    /// The trace the create was part of; empty when it was not traced.
    pub trace_context: TraceContext,
    /// The tenant of the principal that created it (or of the schedule that
    /// fired it); empty for none. Set by the manager from the caller's
    /// scope, never by a client.
    pub tenant: String,
}

/// The W3C trace context a task was created in: the `traceparent` of the
/// create's span, and its `tracestate` if any, as text. The task keeps it
/// (in the store too) so that each of its runs joins the create's trace,
/// on whichever server and after however many restarts. Both are empty
/// when the create was not traced (tracing off, or a schedule's firing).
/// Not part of the task clients see, nor of what makes two creates the same.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: String,
}

impl TraceContext {
    /// Whether there is no trace to join.
    pub fn is_empty(&self) -> bool {
        self.traceparent.is_empty()
    }
}

/// A task's start rules and retry policy, as asked for at create (with the
/// policy's defaults filled in). They never change afterwards.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scheduling {
    pub retry_policy: RetryPolicy,
    /// Not before this time; `None` means at once.
    pub run_after: Option<SystemTime>,
    /// -100 to 100; higher starts first among tasks ready to start.
    pub priority: i32,
    /// How long the task may wait to start once ready, in seconds; 0 means
    /// no limit.
    pub queue_timeout_seconds: u32,
}

/// The priorities a task may have.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -100..=100;

impl NewTask {
    fn parameters(&self) -> CreateParameters<'_> {
        CreateParameters {
            name: &self.name,
            description: &self.description,
            kind: &self.kind,
            data: &self.data,
            timeout_seconds: self.timeout_seconds,
            labels: &self.labels,
            request_id: &self.request_id,
            scheduling: &self.scheduling,
        }
    }
}

/// What a create asked for: two creates with the same `request_id` must
/// agree on all of it.
#[derive(PartialEq)]
struct CreateParameters<'a> {
    name: &'a str,
    description: &'a str,
    kind: &'a str,
    data: &'a Option<Arc<JsonValue>>,
    timeout_seconds: u32,
    labels: &'a BTreeMap<String, String>,
    request_id: &'a Option<String>,
    scheduling: &'a Scheduling,
}

/// Where a task's `data` and `result` are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PayloadLocation {
    /// In the task's own `data` and `result` fields.
    #[default]
    InTask,
    /// Only in the store: the fields are empty, so a finished task costs
    /// memory for its metadata alone. Whoever answers a client reads the
    /// payload back from the store first.
    InStore,
}

/// Everything known about one task.
///
/// The manager keeps these behind `Arc` and hands out clones, so readers
/// never hold up the writer; large payloads are themselves shared.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub name: String,
    pub description: String,
    pub kind: String,
    pub status: TaskStatus,
    pub data: Option<Arc<JsonValue>>,
    pub result: Option<Arc<JsonValue>>,
    pub error: String,
    pub timeout_seconds: u32,
    pub labels: BTreeMap<String, String>,
    pub progress: Option<Progress>,
    pub attempt: u32,
    pub node: String,
    pub revision: u64,
    pub request_id: Option<String>,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub completed_at: Option<SystemTime>,
    /// Start rules and retry policy, as created.
    pub scheduling: Scheduling,
    /// When the back-off after the last failed run ends: the next run does
    /// not start before. Clients see it as `run_after`.
    pub retry_at: Option<SystemTime>,
    /// Runs that failed (not those cut short): what the retry policy's
    /// `max_attempts` counts.
    pub failed_runs: u32,
    /// Runs in a row cut short because their server died or handed the task
    /// over; too many fail the task (see [`cut_short_too_often`]).
    pub cut_short_runs: u32,
    /// Whether `data` and `result` are here or only in the store.
    pub payload: PayloadLocation,
    /// The trace of the create, which every run joins.
    pub trace_context: TraceContext,
    /// Who may see it: a principal bound to a tenant sees only its tenant's
    /// tasks; empty for a task created without one (which only principals
    /// without a tenant see). Never changes.
    pub tenant: String,
}

impl Task {
    /// A freshly accepted task: pending, revision 1, never run.
    pub fn new(id: TaskId, new_task: NewTask, created_at: SystemTime) -> Self {
        Self {
            id,
            name: new_task.name,
            description: new_task.description,
            kind: new_task.kind,
            status: TaskStatus::Pending,
            data: new_task.data,
            result: None,
            error: String::new(),
            timeout_seconds: new_task.timeout_seconds,
            labels: new_task.labels,
            progress: None,
            attempt: 0,
            node: String::new(),
            revision: 1,
            request_id: new_task.request_id,
            created_at,
            started_at: None,
            completed_at: None,
            scheduling: new_task.scheduling,
            retry_at: None,
            failed_runs: 0,
            cut_short_runs: 0,
            payload: PayloadLocation::InTask,
            trace_context: new_task.trace_context,
            tenant: new_task.tenant,
        }
    }

    /// When the next run may start: the end of the last back-off, or the
    /// `run_after` asked for at create (`None`: at once).
    pub fn run_after(&self) -> Option<SystemTime> {
        self.retry_at.or(self.scheduling.run_after)
    }

    /// When the task became (or becomes) ready to start: its creation, its
    /// `run_after`, or the end of a retry's back-off, whichever is latest.
    pub fn ready_at(&self) -> SystemTime {
        self.run_after()
            .map_or(self.created_at, |run_after| run_after.max(self.created_at))
    }

    /// Where the task stands among tasks ready to start, smallest first:
    /// highest priority, then oldest (ids are UUID v7, so FIFO). The one
    /// statement of the contract's start order, for every store.
    pub fn start_order(&self) -> (Reverse<i32>, TaskId) {
        (Reverse(self.scheduling.priority), self.id)
    }

    /// When a waiting task has waited too long to start, if it has a queue
    /// timeout.
    pub fn queue_deadline(&self) -> Option<SystemTime> {
        let seconds = self.scheduling.queue_timeout_seconds;
        (seconds > 0).then(|| self.ready_at() + Duration::from_secs(u64::from(seconds)))
    }

    /// Its `request_id` as it is unique: within its tenant.
    pub fn request_key(&self) -> Option<RequestKey> {
        request_key(&self.tenant, self.request_id.as_deref())
    }

    /// Whether a create request with `new_task` asks for this very task, so
    /// a repeated `request_id` may return it. When the payload is only in
    /// the store, `data` is not compared here: the caller compares it once
    /// it has read the payload back.
    pub fn was_created_from(&self, new_task: &NewTask) -> bool {
        let mut asked = new_task.parameters();
        if self.payload == PayloadLocation::InStore {
            asked.data = &None;
        }
        self.parameters() == asked
    }

    /// The task without its payload, which is in the store.
    pub fn without_payload(&self) -> Self {
        Self {
            data: None,
            result: None,
            payload: PayloadLocation::InStore,
            ..self.clone()
        }
    }

    /// Whether `other` was created with the same parameters (for a
    /// `request_id` that another replica stored first).
    pub fn has_parameters_of(&self, other: &Task) -> bool {
        self.parameters() == other.parameters()
    }

    fn parameters(&self) -> CreateParameters<'_> {
        CreateParameters {
            name: &self.name,
            description: &self.description,
            kind: &self.kind,
            data: &self.data,
            timeout_seconds: self.timeout_seconds,
            labels: &self.labels,
            request_id: &self.request_id,
            scheduling: &self.scheduling,
        }
    }
}

/// Whether a task whose runs were cut short `cut_short_runs` times in a row
/// must fail rather than run again, so that one task cannot crash-loop a
/// fleet; and the error it then fails with.
pub fn cut_short_too_often(cut_short_runs: u32, limit: u32) -> Option<String> {
    (cut_short_runs >= limit).then(|| {
        format!(
            "its runs were cut short {cut_short_runs} times in a row (the server running it \
             died or handed it over); giving up so it cannot crash-loop the servers"
        )
    })
}

/// Processor texts (errors, progress messages) with NUL replaced by U+FFFD:
/// PostgreSQL text cannot hold NUL, and every store must keep the same task.
fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}
