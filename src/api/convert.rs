//! Domain → protobuf conversions for responses.

use prost_types::Timestamp;

use super::json::json_to_proto;
use crate::{
    pb,
    schedule::{Overlap, Schedule},
    task::{NewTask, RetryPolicy, Task, TaskStatus},
};

impl From<TaskStatus> for pb::TaskStatus {
    fn from(status: TaskStatus) -> Self {
        match status {
            TaskStatus::Pending => pb::TaskStatus::Pending,
            TaskStatus::Running => pb::TaskStatus::Running,
            TaskStatus::Completed => pb::TaskStatus::Completed,
            TaskStatus::Failed => pb::TaskStatus::Failed,
            TaskStatus::Cancelled => pb::TaskStatus::Cancelled,
            TaskStatus::Retrying => pb::TaskStatus::Retrying,
        }
    }
}

impl From<&Task> for pb::Task {
    fn from(task: &Task) -> Self {
        pb::Task {
            id: task.id.to_string(),
            name: task.name.clone(),
            description: task.description.clone(),
            kind: task.kind.clone(),
            status: pb::TaskStatus::from(task.status).into(),
            data: task.data.as_deref().map(json_to_proto),
            result: task.result.as_deref().map(json_to_proto),
            error: task.error.clone(),
            timeout_seconds: task.timeout_seconds,
            labels: task
                .labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            progress: task.progress.as_ref().map(|progress| pb::TaskProgress {
                percent: progress.percent,
                message: progress.message.clone(),
            }),
            attempt: task.attempt,
            node: task.node.clone(),
            revision: task.revision,
            created_at: Some(Timestamp::from(task.created_at)),
            started_at: task.started_at.map(Timestamp::from),
            completed_at: task.completed_at.map(Timestamp::from),
            retry_policy: Some(retry_policy(&task.scheduling.retry_policy)),
            run_after: task.run_after().map(Timestamp::from),
            priority: task.scheduling.priority,
            queue_timeout_seconds: task.scheduling.queue_timeout_seconds,
        }
    }
}

fn retry_policy(policy: &RetryPolicy) -> pb::RetryPolicy {
    let duration = |duration: std::time::Duration| {
        // Policies are at most a year long (validation), so this fits.
        prost_types::Duration::try_from(duration).unwrap_or_default()
    };
    pb::RetryPolicy {
        max_attempts: policy.max_attempts,
        initial_backoff: Some(duration(policy.initial_backoff)),
        max_backoff: Some(duration(policy.max_backoff)),
        backoff_multiplier: policy.backoff_multiplier,
    }
}

impl From<&Schedule> for pb::Schedule {
    fn from(schedule: &Schedule) -> Self {
        pb::Schedule {
            id: schedule.id.to_string(),
            cron: schedule.spec.to_string(),
            time_zone: schedule.time_zone.name().to_owned(),
            task: Some(template(&schedule.template)),
            paused: schedule.paused,
            overlap: match schedule.overlap {
                Overlap::Skip => pb::OverlapPolicy::Skip,
                Overlap::Allow => pb::OverlapPolicy::Allow,
            }
            .into(),
            next_fire_at: schedule.next_fire_at.map(Timestamp::from),
            last_fire_at: schedule.last_fire_at.map(Timestamp::from),
            last_task_id: schedule
                .last_task_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            created_at: Some(Timestamp::from(schedule.created_at)),
            revision: schedule.revision,
        }
    }
}

/// A schedule's template as the request it stands for, with the defaults
/// the server filled in (kind, timeout, retry policy).
fn template(task: &NewTask) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        name: task.name.clone(),
        description: task.description.clone(),
        kind: task.kind.clone(),
        data: task.data.as_deref().map(json_to_proto),
        timeout_seconds: task.timeout_seconds,
        labels: task
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        request_id: String::new(),
        retry_policy: Some(retry_policy(&task.scheduling.retry_policy)),
        run_after: None,
        priority: task.scheduling.priority,
        queue_timeout_seconds: task.scheduling.queue_timeout_seconds,
    }
}
