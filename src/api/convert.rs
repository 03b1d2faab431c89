//! Domain → protobuf conversions for responses.

use prost_types::Timestamp;

use super::json::json_to_proto;
use crate::{
    pb,
    task::{Task, TaskStatus},
};

impl From<TaskStatus> for pb::TaskStatus {
    fn from(status: TaskStatus) -> Self {
        match status {
            TaskStatus::Pending => pb::TaskStatus::Pending,
            TaskStatus::Running => pb::TaskStatus::Running,
            TaskStatus::Completed => pb::TaskStatus::Completed,
            TaskStatus::Failed => pb::TaskStatus::Failed,
            TaskStatus::Cancelled => pb::TaskStatus::Cancelled,
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
        }
    }
}
