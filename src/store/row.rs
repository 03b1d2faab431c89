//! A task as a database row, the same for SQLite and PostgreSQL.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value as JsonValue;
use uuid::Uuid;

use super::StoreError;
use crate::task::{
    PayloadLocation, Progress, RetryPolicy, Scheduling, Task, TaskId, TaskStatus, TraceContext,
};

/// The columns every store shares, as a literal for `concat!` (sqlx takes
/// only static SQL text, so nothing dynamic can slip into a statement).
macro_rules! task_columns {
    () => {
        "id, name, description, kind, status, data, result, error, timeout_seconds, labels, \
         progress_percent, progress_message, attempt, node, revision, request_id, created_at, \
         started_at, completed_at, priority, run_after, queue_timeout_seconds, max_attempts, \
         initial_backoff_us, max_backoff_us, backoff_multiplier, retry_at, failed_runs, \
         cut_short_runs, traceparent, tracestate, tenant"
    };
}
pub(super) use task_columns;

/// [`task_columns`] with `data` read as NULL: for a statement that answers
/// many tasks whose data nobody will read (a delete by retention).
macro_rules! task_columns_without_data {
    () => {
        "id, name, description, kind, status, NULL::text AS data, result, error, \
         timeout_seconds, labels, progress_percent, progress_message, attempt, node, revision, \
         request_id, created_at, started_at, completed_at, priority, run_after, \
         queue_timeout_seconds, max_attempts, initial_backoff_us, max_backoff_us, \
         backoff_multiplier, retry_at, failed_runs, cut_short_runs, traceparent, tracestate, \
         tenant"
    };
}
pub(super) use task_columns_without_data;

#[derive(Debug, sqlx::FromRow)]
pub(super) struct TaskRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub kind: String,
    pub status: String,
    pub data: Option<String>,
    pub result: Option<String>,
    pub error: String,
    pub timeout_seconds: i64,
    pub labels: String,
    pub progress_percent: Option<i64>,
    pub progress_message: Option<String>,
    pub attempt: i64,
    pub node: String,
    pub revision: i64,
    pub request_id: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub priority: i64,
    pub run_after: Option<i64>,
    pub queue_timeout_seconds: i64,
    pub max_attempts: i64,
    pub initial_backoff_us: i64,
    pub max_backoff_us: i64,
    pub backoff_multiplier: f64,
    pub retry_at: Option<i64>,
    pub failed_runs: i64,
    pub cut_short_runs: i64,
    /// The create's trace context (empty: none); written once, at insert.
    pub traceparent: String,
    pub tracestate: String,
    /// Who may see the task ('' for none); written once, at insert.
    pub tenant: String,
}

impl TaskRow {
    pub fn from_task(task: &Task) -> Self {
        let policy = &task.scheduling.retry_policy;
        Self {
            id: *task.id.as_uuid(),
            name: task.name.clone(),
            description: task.description.clone(),
            kind: task.kind.clone(),
            status: status_name(task.status).to_owned(),
            data: task.data.as_deref().map(JsonValue::to_string),
            result: task.result.as_deref().map(JsonValue::to_string),
            error: task.error.clone(),
            timeout_seconds: i64::from(task.timeout_seconds),
            labels: labels_json(&task.labels),
            progress_percent: task
                .progress
                .as_ref()
                .map(|progress| i64::from(progress.percent)),
            progress_message: task
                .progress
                .as_ref()
                .map(|progress| progress.message.clone()),
            attempt: i64::from(task.attempt),
            node: task.node.clone(),
            revision: i64::try_from(task.revision).unwrap_or(i64::MAX),
            request_id: task.request_id.clone(),
            created_at: micros(task.created_at),
            started_at: task.started_at.map(micros),
            completed_at: task.completed_at.map(micros),
            priority: i64::from(task.scheduling.priority),
            run_after: task.scheduling.run_after.map(micros),
            queue_timeout_seconds: i64::from(task.scheduling.queue_timeout_seconds),
            max_attempts: i64::from(policy.max_attempts),
            initial_backoff_us: duration_micros(policy.initial_backoff),
            max_backoff_us: duration_micros(policy.max_backoff),
            backoff_multiplier: policy.backoff_multiplier,
            retry_at: task.retry_at.map(micros),
            failed_runs: i64::from(task.failed_runs),
            cut_short_runs: i64::from(task.cut_short_runs),
            traceparent: task.trace_context.traceparent.clone(),
            tracestate: task.trace_context.tracestate.clone(),
            tenant: task.tenant.clone(),
        }
    }

    pub fn into_task(self) -> Result<Task, StoreError> {
        let id = self.id;
        let corrupt = |reason: String| StoreError::Corrupt {
            id: id.to_string(),
            reason,
        };
        let json =
            |column: &str, text: Option<String>| -> Result<Option<Arc<JsonValue>>, StoreError> {
                text.map(|text| {
                    serde_json::from_str(&text)
                        .map(Arc::new)
                        .map_err(|error| corrupt(format!("{column} is not JSON: {error}")))
                })
                .transpose()
            };
        let number = |column: &str, value: i64| {
            u32::try_from(value).map_err(|_| corrupt(format!("{column} {value} is out of range")))
        };
        let duration = |column: &str, value: i64| {
            u64::try_from(value)
                .map(Duration::from_micros)
                .map_err(|_| corrupt(format!("{column} {value} is negative")))
        };
        let scheduling = Scheduling {
            retry_policy: RetryPolicy {
                max_attempts: number("max_attempts", self.max_attempts)?,
                initial_backoff: duration("initial_backoff_us", self.initial_backoff_us)?,
                max_backoff: duration("max_backoff_us", self.max_backoff_us)?,
                backoff_multiplier: self.backoff_multiplier,
            },
            run_after: self.run_after.map(from_micros),
            priority: i32::try_from(self.priority)
                .map_err(|_| corrupt(format!("priority {} is out of range", self.priority)))?,
            queue_timeout_seconds: number("queue_timeout_seconds", self.queue_timeout_seconds)?,
        };
        let progress = match (self.progress_percent, self.progress_message) {
            (None, None) => None,
            (percent, message) => Some(Progress {
                percent: number("progress_percent", percent.unwrap_or(0))?,
                message: message.unwrap_or_default(),
            }),
        };
        Ok(Task {
            id: TaskId::from_uuid(self.id),
            status: parse_status(&self.status)
                .ok_or_else(|| corrupt(format!("unknown status {:?}", self.status)))?,
            data: json("data", self.data)?,
            result: json("result", self.result)?,
            labels: serde_json::from_str(&self.labels)
                .map_err(|error| corrupt(format!("labels are not a JSON object: {error}")))?,
            timeout_seconds: number("timeout_seconds", self.timeout_seconds)?,
            attempt: number("attempt", self.attempt)?,
            revision: u64::try_from(self.revision)
                .map_err(|_| corrupt(format!("revision {} is negative", self.revision)))?,
            progress,
            name: self.name,
            description: self.description,
            kind: self.kind,
            error: self.error,
            node: self.node,
            request_id: self.request_id,
            created_at: from_micros(self.created_at),
            started_at: self.started_at.map(from_micros),
            completed_at: self.completed_at.map(from_micros),
            scheduling,
            retry_at: self.retry_at.map(from_micros),
            failed_runs: number("failed_runs", self.failed_runs)?,
            cut_short_runs: number("cut_short_runs", self.cut_short_runs)?,
            payload: PayloadLocation::InTask,
            trace_context: TraceContext {
                traceparent: self.traceparent,
                tracestate: self.tracestate,
            },
            tenant: self.tenant,
        })
    }
}

pub(super) fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_owned())
}

pub(super) fn status_name(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Pending => "pending",
        TaskStatus::Running => "running",
        TaskStatus::Completed => "completed",
        TaskStatus::Failed => "failed",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::Retrying => "retrying",
    }
}

pub(super) fn parse_status(name: &str) -> Option<TaskStatus> {
    TaskStatus::ALL
        .into_iter()
        .find(|status| status_name(*status) == name)
}

/// Microseconds since the Unix epoch (negative before it).
pub(super) fn micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// A duration as whole microseconds.
pub(super) fn duration_micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

pub(super) fn from_micros(value: i64) -> SystemTime {
    let magnitude = Duration::from_micros(value.unsigned_abs());
    if value >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::task::{NewTask, TaskEvent};

    /// A new task with every field set, the awkward text included.
    pub(in crate::store) fn full_task() -> Task {
        let new_task = NewTask {
            tenant: "tenant a".into(),
            name: "report".into(),
            description: "with \u{0} inside".into(),
            kind: "echo".into(),
            data: Some(Arc::new(
                serde_json::json!({"text": "a\u{0}b", "n": 1.5, "deep": [[1]]}),
            )),
            timeout_seconds: 60,
            labels: BTreeMap::from([("team".into(), "a".into())]),
            request_id: Some("abc".into()),
            scheduling: Scheduling {
                retry_policy: RetryPolicy {
                    max_attempts: 4,
                    initial_backoff: Duration::from_millis(1500),
                    max_backoff: Duration::from_secs(90),
                    backoff_multiplier: 1.5,
                },
                run_after: Some(UNIX_EPOCH + Duration::from_micros(1_800_000_000_123_456)),
                priority: -7,
                queue_timeout_seconds: 30,
            },
            trace_context: TraceContext {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                tracestate: "vendor=value".into(),
            },
        };
        Task::new(TaskId::generate(), new_task, SystemTime::now())
    }

    /// `task` after a run that failed and one cut short: every field that
    /// changes after create has changed.
    pub(in crate::store) fn lived(mut task: Task) -> Task {
        task.apply(TaskEvent::Start { node: "n".into() }, SystemTime::now())
            .expect("start");
        task.apply(
            TaskEvent::Progress(Progress {
                percent: 40,
                message: "half".into(),
            }),
            SystemTime::now(),
        )
        .expect("progress");
        task.apply(
            TaskEvent::Fail(crate::task::Failure::retryable("once")),
            SystemTime::now(),
        )
        .expect("fails once");
        task.apply(TaskEvent::Restart { node: "m".into() }, SystemTime::now())
            .expect_err("a retrying task is not running");
        task.apply(TaskEvent::Start { node: "m".into() }, SystemTime::now())
            .expect("runs again");
        task.apply(TaskEvent::Restart { node: "m".into() }, SystemTime::now())
            .expect("cut short");
        task.apply(
            TaskEvent::Progress(Progress {
                percent: 70,
                message: "again".into(),
            }),
            SystemTime::now(),
        )
        .expect("progress of the third run");
        task
    }

    #[test]
    fn a_task_survives_the_row_round_trip_exactly() {
        let task = lived(full_task());
        let back = TaskRow::from_task(&task).into_task().expect("decodes");
        assert_eq!(back, truncate_to_micros(task));
    }

    #[test]
    fn numbers_in_data_read_back_bit_for_bit() {
        // A plain xorshift: many doubles of every magnitude, no crate needed.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut numbers = Vec::new();
        while numbers.len() < 20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let number = f64::from_bits(state);
            if number.is_finite() {
                numbers.push(number);
            }
        }
        let data = serde_json::json!(numbers);
        let mut task = Task::new(
            TaskId::generate(),
            NewTask {
                tenant: Default::default(),
                name: "floats".into(),
                description: String::new(),
                kind: "echo".into(),
                data: Some(Arc::new(data)),
                timeout_seconds: 0,
                labels: BTreeMap::new(),
                request_id: None,
                scheduling: Scheduling::default(),
                trace_context: Default::default(),
            },
            SystemTime::UNIX_EPOCH,
        );
        task.result.clone_from(&task.data);
        let back = TaskRow::from_task(&task).into_task().expect("decodes");
        let bits = |value: &Option<Arc<JsonValue>>| -> Vec<u64> {
            value
                .as_deref()
                .and_then(JsonValue::as_array)
                .expect("an array")
                .iter()
                .map(|number| number.as_f64().expect("a number").to_bits())
                .collect()
        };
        for (column, read, written) in [
            ("data", &back.data, &task.data),
            ("result", &back.result, &task.result),
        ] {
            let changed: Vec<(u64, u64)> = bits(written)
                .into_iter()
                .zip(bits(read))
                .filter(|(written, read)| written != read)
                .collect();
            assert!(
                changed.is_empty(),
                "{} of {} numbers in {column} changed, e.g. {:?}",
                changed.len(),
                numbers.len(),
                changed
                    .first()
                    .map(|(written, read)| (f64::from_bits(*written), f64::from_bits(*read)))
            );
        }
    }

    /// `task` as a row keeps it: times to the microsecond.
    pub(in crate::store) fn truncate_to_micros(mut task: Task) -> Task {
        fn truncate(time: SystemTime) -> SystemTime {
            from_micros(micros(time))
        }
        task.created_at = truncate(task.created_at);
        task.started_at = task.started_at.map(truncate);
        task.completed_at = task.completed_at.map(truncate);
        task.retry_at = task.retry_at.map(truncate);
        task
    }
}
