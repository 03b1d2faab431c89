//! Parsing of requests into domain values, enforcing the contract's
//! "Limits on input" (docs/api.md). Each broken rule names its field.

mod schedule;
mod scheduling;

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use prost::Message;

use super::{error::ApiError, json::json_from_proto, page_token, resume_token};
use crate::{
    manager::{ListQuery, TaskFilter, WatchStart},
    pb,
    processor::{DEFAULT_KIND, Registry},
    task::{NewTask, RetryPolicy, TaskId, TaskStatus, TraceContext},
};

pub use schedule::{new_schedule, schedule_id, schedule_page};
pub use scheduling::MAX_SCHEDULING_HORIZON;

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 4096;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_CHARS: usize = 63;
pub const MAX_LABEL_VALUE_CHARS: usize = 256;
pub const MAX_REQUEST_ID_CHARS: usize = 128;
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;

/// The configurable limits the API enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Applied when a request says 0.
    pub default_timeout_seconds: u32,
    /// Requests above it are refused.
    pub max_timeout_seconds: u32,
    /// Largest `data`, as the size of its protobuf encoding.
    pub max_data_bytes: usize,
    /// The configured default retry policy of each kind that has one.
    pub retry_policies: Arc<BTreeMap<String, RetryPolicy>>,
}

impl Limits {
    /// The retry policy of a task of `kind` whose request set none.
    pub fn default_retry_policy(&self, kind: &str) -> RetryPolicy {
        self.retry_policies.get(kind).cloned().unwrap_or_default()
    }
}

/// Validates a create request against the limits and the registered kinds.
pub fn new_task(
    mut request: pb::CreateTaskRequest,
    limits: &Limits,
    registry: &Registry,
) -> Result<NewTask, ApiError> {
    let name = request.name.trim();
    let name_chars = name.chars().count();
    if name_chars == 0 {
        return Err(ApiError::invalid(
            "name",
            "is required and must not be blank",
        ));
    }
    if name_chars > MAX_NAME_CHARS {
        return Err(ApiError::invalid(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters after trimming, got {name_chars}"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "must not contain control characters (NUL, line breaks, tabs, ...)",
        ));
    }

    let description_chars = request.description.chars().count();
    if description_chars > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters, got {description_chars}"),
        ));
    }
    if request.description.contains('\0') {
        return Err(ApiError::invalid("description", "must not contain NUL"));
    }

    let kind = if request.kind.is_empty() {
        DEFAULT_KIND.to_owned()
    } else {
        std::mem::take(&mut request.kind)
    };
    if !registry.contains(&kind) {
        return Err(ApiError::invalid(
            "kind",
            format!(
                "{kind:?} is not a registered kind; known kinds: {}",
                registry.kinds().join(", ")
            ),
        ));
    }

    let timeout_seconds = match request.timeout_seconds {
        0 => limits.default_timeout_seconds,
        requested if requested > limits.max_timeout_seconds => {
            return Err(ApiError::invalid(
                "timeout_seconds",
                format!(
                    "must be at most {} (the server's maximum), got {requested}",
                    limits.max_timeout_seconds
                ),
            ));
        }
        requested => requested,
    };

    let scheduling = scheduling::scheduling(
        &request,
        &limits.default_retry_policy(&kind),
        SystemTime::now(),
    )?;

    let labels = labels("labels", request.labels.into_iter().collect())?;

    let request_id = match request.request_id {
        id if id.is_empty() => None,
        id => {
            let chars = id.chars().count();
            if chars > MAX_REQUEST_ID_CHARS {
                return Err(ApiError::invalid(
                    "request_id",
                    format!("must be at most {MAX_REQUEST_ID_CHARS} characters, got {chars}"),
                ));
            }
            if id.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    "request_id",
                    "must not contain control characters",
                ));
            }
            Some(id)
        }
    };

    let data = match request.data {
        None => None,
        Some(value) => {
            let encoded_bytes = value.encoded_len();
            if encoded_bytes > limits.max_data_bytes {
                return Err(ApiError::invalid(
                    "data",
                    format!(
                        "is {encoded_bytes} bytes encoded, over the limit of {} bytes",
                        limits.max_data_bytes
                    ),
                ));
            }
            let json = json_from_proto(&value)
                .map_err(|invalid| ApiError::invalid("data", invalid.to_string()))?;
            Some(Arc::new(json))
        }
    };

    Ok(NewTask {
        name: name.to_owned(),
        description: request.description,
        kind,
        data,
        timeout_seconds,
        labels,
        request_id,
        scheduling,
        // The caller's trace is the edge's to add: validation sees only
        // the request.
        trace_context: TraceContext::default(),
        // The manager sets the caller's tenant; a client never names one.
        tenant: String::new(),
    })
}

/// The most requests one `BatchCreateTasks` may carry.
pub const MAX_BATCH_REQUESTS: usize = 1000;

/// Validates a `BatchCreateTasks` request: every request, in order, under
/// the rules of `CreateTask`; the first broken rule names its field as
/// `requests[i].<field>`.
pub fn new_tasks(
    request: pb::BatchCreateTasksRequest,
    limits: &Limits,
    registry: &Registry,
) -> Result<Vec<NewTask>, ApiError> {
    let count = request.requests.len();
    if count == 0 || count > MAX_BATCH_REQUESTS {
        return Err(ApiError::invalid(
            "requests",
            format!("must hold 1 to {MAX_BATCH_REQUESTS} requests, got {count}"),
        ));
    }
    request
        .requests
        .into_iter()
        .enumerate()
        .map(|(index, request)| {
            new_task(request, limits, registry)
                .map_err(|error| error.within(&format!("requests[{index}]")))
        })
        .collect()
}

/// Validates a label map (of a task or of a filter).
fn labels(
    field: &str,
    labels: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            field,
            format!("must have at most {MAX_LABELS} pairs, got {}", labels.len()),
        ));
    }
    for (key, value) in &labels {
        let key_chars = key.chars().count();
        if key_chars == 0 || key_chars > MAX_LABEL_KEY_CHARS {
            return Err(ApiError::invalid(
                field,
                format!("key {key:?} must be 1 to {MAX_LABEL_KEY_CHARS} characters"),
            ));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
        if !key.chars().all(allowed) {
            return Err(ApiError::invalid(
                field,
                format!("key {key:?} may only hold a-z A-Z 0-9 . _ - /"),
            ));
        }
        let value_chars = value.chars().count();
        if value_chars > MAX_LABEL_VALUE_CHARS {
            return Err(ApiError::invalid(
                field,
                format!(
                    "value of {key:?} must be at most {MAX_LABEL_VALUE_CHARS} characters, got {value_chars}"
                ),
            ));
        }
        if value.contains('\0') {
            return Err(ApiError::invalid(
                field,
                format!("value of {key:?} must not contain NUL"),
            ));
        }
    }
    Ok(labels)
}

/// Parses the `id` of Get, Cancel and Watch.
pub fn task_id(id: &str) -> Result<TaskId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::invalid("id", format!("{id:?} is not a UUID")))
}

/// Validates a list request into a manager query.
pub fn list_query(request: pb::ListTasksRequest) -> Result<ListQuery, ApiError> {
    let limit = page_size(request.page_size)?;
    let statuses = request
        .statuses
        .iter()
        .map(|number| status_filter(*number))
        .collect::<Result<Vec<_>, _>>()?;
    let labels = labels("labels", request.labels.into_iter().collect())?;
    let mut query = ListQuery {
        statuses,
        labels,
        after: None,
        limit,
        // The manager narrows it to the caller's tenant.
        tenant: None,
    };
    if !request.page_token.is_empty() {
        let after = page_token::decode(&request.page_token, &query)
            .map_err(|error| ApiError::invalid("page_token", error.to_string()))?;
        query.after = Some(after);
    }
    Ok(query)
}

/// The most kinds a `WatchTasks` filter may name.
pub const MAX_FILTER_KINDS: usize = 64;

/// Validates a `WatchTasks` request: its filter (statuses and labels as
/// in `ListTasks`), and where it starts (its `resume_token`, which must have
/// been issued for the same filter, or `send_initial`).
pub fn watch_tasks_request(
    request: pb::WatchTasksRequest,
) -> Result<(TaskFilter, WatchStart), ApiError> {
    let statuses = request
        .statuses
        .iter()
        .map(|number| status_filter(*number))
        .collect::<Result<Vec<_>, _>>()?;
    let labels = labels("labels", request.labels.into_iter().collect())?;
    if request.kinds.len() > MAX_FILTER_KINDS {
        return Err(ApiError::invalid(
            "kinds",
            format!(
                "may name at most {MAX_FILTER_KINDS} kinds, got {}",
                request.kinds.len()
            ),
        ));
    }
    if let Some(position) = request.kinds.iter().position(String::is_empty) {
        return Err(ApiError::invalid(
            format!("kinds[{position}]"),
            "must not be empty",
        ));
    }
    let filter = TaskFilter {
        statuses,
        labels,
        kinds: request.kinds,
        // The manager narrows it to the caller's tenant.
        tenant: None,
    };
    let start = if !request.resume_token.is_empty() {
        let position = resume_token::decode(&request.resume_token, &filter)
            .map_err(|error| ApiError::invalid("resume_token", error.to_string()))?;
        WatchStart::Resume(position)
    } else if request.send_initial {
        WatchStart::Initial
    } else {
        WatchStart::Now
    };
    Ok((filter, start))
}

/// A listing's `page_size`: 0 means the default, more than the maximum
/// means the maximum, negative is refused.
fn page_size(size: i32) -> Result<usize, ApiError> {
    match size {
        size if size < 0 => Err(ApiError::invalid(
            "page_size",
            format!("must not be negative, got {size}"),
        )),
        0 => Ok(DEFAULT_PAGE_SIZE),
        size => Ok(usize::try_from(size)
            .unwrap_or(MAX_PAGE_SIZE)
            .min(MAX_PAGE_SIZE)),
    }
}

fn status_filter(number: i32) -> Result<TaskStatus, ApiError> {
    let status = pb::TaskStatus::try_from(number).ok();
    match status {
        Some(pb::TaskStatus::Pending) => Ok(TaskStatus::Pending),
        Some(pb::TaskStatus::Running) => Ok(TaskStatus::Running),
        Some(pb::TaskStatus::Completed) => Ok(TaskStatus::Completed),
        Some(pb::TaskStatus::Failed) => Ok(TaskStatus::Failed),
        Some(pb::TaskStatus::Cancelled) => Ok(TaskStatus::Cancelled),
        Some(pb::TaskStatus::Retrying) => Ok(TaskStatus::Retrying),
        Some(pb::TaskStatus::Unspecified) | None => Err(ApiError::invalid(
            "statuses",
            format!("{number} is not a task status to filter by (use PENDING .. RETRYING)"),
        )),
    }
}
