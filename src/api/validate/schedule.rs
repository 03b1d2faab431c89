//! Parsing of the schedule requests: `cron` and `time_zone` (by the
//! schedule domain, whose errors name their field), the task template (by
//! the rules of `CreateTask`, its fields named `task.<field>`), and the
//! schedule-only rules of a template.

use super::{Limits, MAX_LABELS, new_task, page_size};
use crate::{
    api::{error::ApiError, page_token},
    pb,
    processor::Registry,
    schedule::{NewSchedule, Overlap, SCHEDULE_ID_LABEL, ScheduleId, ScheduleSpec, TimeZone},
};

/// Validates a `CreateSchedule` request.
pub fn new_schedule(
    request: pb::CreateScheduleRequest,
    limits: &Limits,
    registry: &Registry,
) -> Result<NewSchedule, ApiError> {
    let spec: ScheduleSpec =
        request
            .cron
            .parse()
            .map_err(|error: crate::schedule::ScheduleError| {
                ApiError::invalid(error.field(), error.to_string())
            })?;
    let time_zone: TimeZone =
        request
            .time_zone
            .parse()
            .map_err(|error: crate::schedule::ScheduleError| {
                ApiError::invalid(error.field(), error.to_string())
            })?;
    let overlap = match pb::OverlapPolicy::try_from(request.overlap) {
        Ok(pb::OverlapPolicy::Unspecified | pb::OverlapPolicy::Skip) => Overlap::Skip,
        Ok(pb::OverlapPolicy::Allow) => Overlap::Allow,
        Err(_) => {
            return Err(ApiError::invalid(
                "overlap",
                format!(
                    "{} is not an overlap policy (use OVERLAP_POLICY_SKIP or \
                     OVERLAP_POLICY_ALLOW)",
                    request.overlap
                ),
            ));
        }
    };
    let Some(task) = request.task else {
        return Err(ApiError::invalid(
            "task",
            "is required: the task each firing creates (at least its name)",
        ));
    };
    let template = template(task, limits, registry)?;
    Ok(NewSchedule {
        spec,
        time_zone,
        template,
        overlap,
        paused: request.paused,
    })
}

/// The template of a schedule: a valid `CreateTask` request, less what
/// makes no sense for a task created again and again.
fn template(
    task: pb::CreateTaskRequest,
    limits: &Limits,
    registry: &Registry,
) -> Result<crate::task::NewTask, ApiError> {
    if !task.request_id.is_empty() {
        return Err(ApiError::invalid(
            "task.request_id",
            "must be empty: each firing creates a new task",
        ));
    }
    if task.run_after.is_some() {
        return Err(ApiError::invalid(
            "task.run_after",
            "must be unset: a schedule's task is due when the schedule fires",
        ));
    }
    if task.labels.contains_key(SCHEDULE_ID_LABEL) {
        return Err(ApiError::invalid(
            "task.labels",
            format!(
                "must not hold {SCHEDULE_ID_LABEL:?}: each firing sets it to the schedule's id"
            ),
        ));
    }
    if task.labels.len() >= MAX_LABELS {
        return Err(ApiError::invalid(
            "task.labels",
            format!(
                "must have at most {} pairs, got {}: each firing adds {SCHEDULE_ID_LABEL:?}",
                MAX_LABELS - 1,
                task.labels.len()
            ),
        ));
    }
    new_task(task, limits, registry).map_err(|error| error.within("task"))
}

/// Parses the `id` of Get, Pause, Resume and Delete of a schedule.
pub fn schedule_id(id: &str) -> Result<ScheduleId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::invalid("id", format!("{id:?} is not a UUID")))
}

/// Validates a `ListSchedules` request: where the page starts, and its
/// size.
pub fn schedule_page(
    request: &pb::ListSchedulesRequest,
) -> Result<(Option<ScheduleId>, usize), ApiError> {
    let limit = page_size(request.page_size)?;
    let after = if request.page_token.is_empty() {
        None
    } else {
        Some(
            page_token::decode_schedules(&request.page_token).map_err(|_| {
                ApiError::invalid(
                    "page_token",
                    "is not a token of a ListSchedules response from this server",
                )
            })?,
        )
    };
    Ok((after, limit))
}
