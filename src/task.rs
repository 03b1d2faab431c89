//! The task domain: ids, statuses, the task record and its state machine.
//!
//! Plain Rust types only. Nothing here knows about protobuf, tonic or the
//! manager actor; every state change of a task goes through [`Task::apply`].

use std::{collections::BTreeMap, fmt, str::FromStr, sync::Arc, time::SystemTime};

use serde_json::Value as JsonValue;
use uuid::Uuid;

/// A task's identity: a UUID v7, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(Uuid);

impl TaskId {
    /// Makes a new id. Ids made in one process sort in the order they were made.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(formatter)
    }
}

/// The text given as a task id was not a UUID.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a UUID")]
pub struct InvalidTaskId(String);

impl FromStr for TaskId {
    type Err = InvalidTaskId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(text)
            .map(Self)
            .map_err(|_| InvalidTaskId(text.to_owned()))
    }
}

/// Where a task is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

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
}

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
    /// Whether `data` and `result` are here or only in the store.
    pub payload: PayloadLocation,
}

/// Something that happens to a task. [`Task::apply`] is the one door through
/// which every change passes.
#[derive(Clone, Debug)]
pub enum TaskEvent {
    /// A worker on `node` starts a run.
    Start { node: String },
    /// A task that was running when its server died runs again on `node`
    /// (at-least-once): a new attempt, still `RUNNING`.
    Restart { node: String },
    /// The processor reported progress.
    Progress(Progress),
    /// The processor returned a result.
    Complete(Arc<JsonValue>),
    /// The processor failed, panicked or timed out; the text says which.
    Fail(String),
    /// A client (or the server going down) cancelled the task.
    Cancel(String),
}

impl TaskEvent {
    /// The status this event leads to.
    fn target_status(&self, current: TaskStatus) -> TaskStatus {
        match self {
            TaskEvent::Start { .. } | TaskEvent::Restart { .. } => TaskStatus::Running,
            TaskEvent::Progress(_) => current,
            TaskEvent::Complete(_) => TaskStatus::Completed,
            TaskEvent::Fail(_) => TaskStatus::Failed,
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
            payload: PayloadLocation::InTask,
        }
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
        }
    }

    /// Applies `event` at time `now`, enforcing the state machine
    /// `PENDING → RUNNING → COMPLETED | FAILED | CANCELLED` and
    /// `PENDING → CANCELLED`. Every change bumps `revision`.
    pub fn apply(
        &mut self,
        event: TaskEvent,
        now: SystemTime,
    ) -> Result<Applied, IllegalTransition> {
        let from = self.status;
        let to = event.target_status(from);
        let illegal = IllegalTransition { from, to };
        match (from, event) {
            (TaskStatus::Pending, TaskEvent::Start { node }) => {
                self.status = TaskStatus::Running;
                self.attempt += 1;
                self.node = node;
                self.started_at = Some(now);
            }
            (TaskStatus::Running, TaskEvent::Restart { node }) => {
                self.attempt += 1;
                self.node = node;
                self.started_at = Some(now);
                self.progress = None;
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
            (TaskStatus::Running, TaskEvent::Fail(error)) => {
                self.status = TaskStatus::Failed;
                self.error = without_nul(error);
                self.completed_at = Some(now);
            }
            (TaskStatus::Pending | TaskStatus::Running, TaskEvent::Cancel(reason)) => {
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

/// Processor texts (errors, progress messages) with NUL replaced by U+FFFD:
/// PostgreSQL text cannot hold NUL, and every store must keep the same task.
fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending_task() -> Task {
        let new_task = NewTask {
            name: "report".into(),
            description: String::new(),
            kind: "echo".into(),
            data: Some(Arc::new(serde_json::json!({"a": 1}))),
            timeout_seconds: 60,
            labels: BTreeMap::new(),
            request_id: None,
        };
        Task::new(TaskId::generate(), new_task, SystemTime::now())
    }

    fn task_in(status: TaskStatus) -> Task {
        let mut task = pending_task();
        let now = SystemTime::now();
        let event = match status {
            TaskStatus::Pending => return task,
            TaskStatus::Running => None,
            TaskStatus::Completed => Some(TaskEvent::Complete(Arc::new(JsonValue::Null))),
            TaskStatus::Failed => Some(TaskEvent::Fail("boom".into())),
            TaskStatus::Cancelled => Some(TaskEvent::Cancel("cancelled".into())),
        };
        let start = TaskEvent::Start { node: "n1".into() };
        task.apply(start, now).expect("pending task starts");
        if let Some(event) = event {
            task.apply(event, now).expect("running task finishes");
        }
        assert_eq!(task.status, status);
        task
    }

    fn every_event() -> Vec<TaskEvent> {
        vec![
            TaskEvent::Start { node: "n2".into() },
            TaskEvent::Restart { node: "n3".into() },
            TaskEvent::Progress(Progress {
                percent: 40,
                message: "working".into(),
            }),
            TaskEvent::Complete(Arc::new(JsonValue::from(7))),
            TaskEvent::Fail("failed".into()),
            TaskEvent::Cancel("cancelled".into()),
        ]
    }

    /// The full table of (status, event) pairs: which are legal and where
    /// they lead. Anything not listed must be refused and change nothing.
    #[test]
    fn every_transition_is_legal_or_refused_as_the_state_machine_says() {
        use TaskStatus::*;
        let legal: &[(TaskStatus, &str, TaskStatus)] = &[
            (Pending, "start", Running),
            (Running, "restart", Running),
            (Pending, "cancel", Cancelled),
            (Running, "progress", Running),
            (Running, "complete", Completed),
            (Running, "fail", Failed),
            (Running, "cancel", Cancelled),
        ];
        let event_name = |event: &TaskEvent| match event {
            TaskEvent::Start { .. } => "start",
            TaskEvent::Restart { .. } => "restart",
            TaskEvent::Progress(_) => "progress",
            TaskEvent::Complete(_) => "complete",
            TaskEvent::Fail(_) => "fail",
            TaskEvent::Cancel(_) => "cancel",
        };
        for from in TaskStatus::ALL {
            for event in every_event() {
                let name = event_name(&event);
                let mut task = task_in(from);
                let before = task.clone();
                let outcome = task.apply(event, SystemTime::now());
                let expected = legal
                    .iter()
                    .find(|(status, event, _)| *status == from && *event == name);
                match expected {
                    Some((_, _, to)) => {
                        assert_eq!(
                            outcome,
                            Ok(Applied::Changed {
                                status_changed: from != *to
                            }),
                            "{from} + {name}"
                        );
                        assert_eq!(task.status, *to, "{from} + {name}");
                        assert_eq!(task.revision, before.revision + 1, "{from} + {name}");
                    }
                    None if from == Cancelled && name == "cancel" => {
                        assert_eq!(outcome, Ok(Applied::Unchanged));
                        assert_eq!(task, before, "cancelling again changes nothing");
                    }
                    None => {
                        assert!(outcome.is_err(), "{from} + {name} must be refused");
                        assert_eq!(task, before, "a refused event changes nothing");
                    }
                }
            }
        }
    }

    #[test]
    fn start_counts_attempts_and_stamps_node_and_time() {
        let mut task = pending_task();
        assert_eq!((task.attempt, task.revision), (0, 1));
        task.apply(
            TaskEvent::Start {
                node: "pod-a".into(),
            },
            SystemTime::now(),
        )
        .expect("start");
        assert_eq!(task.attempt, 1);
        assert_eq!(task.node, "pod-a");
        assert!(task.started_at.is_some());
        assert!(task.completed_at.is_none());
    }

    #[test]
    fn restart_is_a_new_attempt_on_the_new_node_with_fresh_progress() {
        let mut task = task_in(TaskStatus::Running);
        task.apply(
            TaskEvent::Progress(Progress {
                percent: 50,
                message: "half".into(),
            }),
            SystemTime::now(),
        )
        .expect("progress");
        let outcome = task.apply(
            TaskEvent::Restart {
                node: "pod-b".into(),
            },
            SystemTime::now(),
        );
        assert_eq!(
            outcome,
            Ok(Applied::Changed {
                status_changed: false
            })
        );
        assert_eq!((task.attempt, task.node.as_str()), (2, "pod-b"));
        assert_eq!(task.progress, None);
    }

    #[test]
    fn nul_in_processor_texts_is_replaced_so_every_store_can_hold_it() {
        let mut task = task_in(TaskStatus::Running);
        task.apply(TaskEvent::Fail("bad\0byte".into()), SystemTime::now())
            .expect("fail");
        assert_eq!(task.error, "bad\u{FFFD}byte");
    }

    #[test]
    fn terminal_events_stamp_completion_and_keep_their_payload() {
        let completed = task_in(TaskStatus::Completed);
        assert!(completed.completed_at.is_some());
        assert_eq!(completed.result.as_deref(), Some(&JsonValue::Null));
        let failed = task_in(TaskStatus::Failed);
        assert_eq!(failed.error, "boom");
        assert!(failed.result.is_none());
        let cancelled = task_in(TaskStatus::Cancelled);
        assert_eq!(cancelled.error, "cancelled");
    }

    #[test]
    fn repeated_identical_progress_is_not_a_change_and_percent_is_clamped() {
        let mut task = task_in(TaskStatus::Running);
        let progress = Progress {
            percent: 250,
            message: "almost".into(),
        };
        let first = task.apply(TaskEvent::Progress(progress.clone()), SystemTime::now());
        assert_eq!(
            first,
            Ok(Applied::Changed {
                status_changed: false
            })
        );
        assert_eq!(task.progress.as_ref().map(|p| p.percent), Some(100));
        let revision = task.revision;
        let second = task.apply(TaskEvent::Progress(progress), SystemTime::now());
        assert_eq!(second, Ok(Applied::Unchanged));
        assert_eq!(task.revision, revision);
    }

    #[test]
    fn task_ids_round_trip_and_reject_non_uuids() {
        let id = TaskId::generate();
        assert_eq!(id.to_string().parse::<TaskId>().expect("parses"), id);
        assert!("not-a-uuid".parse::<TaskId>().is_err());
        assert!("".parse::<TaskId>().is_err());
    }

    #[test]
    fn ids_sort_in_creation_order() {
        let ids: Vec<TaskId> = (0..1000).map(|_| TaskId::generate()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn idempotency_compares_every_parameter() {
        let task = pending_task();
        let mut same = NewTask {
            name: task.name.clone(),
            description: task.description.clone(),
            kind: task.kind.clone(),
            data: task.data.clone(),
            timeout_seconds: task.timeout_seconds,
            labels: task.labels.clone(),
            request_id: task.request_id.clone(),
        };
        assert!(task.was_created_from(&same));
        same.data = Some(Arc::new(serde_json::json!({"a": 2})));
        assert!(!task.was_created_from(&same));
    }
}
