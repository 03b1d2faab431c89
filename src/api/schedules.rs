//! The schedule RPCs of `TaskService`: validate, ask the manager, convert.

use super::{ApiError, TaskApi, validate};
use crate::{api::page_token, manager::Scope, pb};

impl TaskApi {
    pub(super) async fn create_schedule_call(
        &self,
        scope: &Scope,
        request: pb::CreateScheduleRequest,
    ) -> Result<pb::Schedule, ApiError> {
        let new_schedule = validate::new_schedule(request, &self.limits, &self.registry)?;
        let schedule = self
            .manager
            .scoped(scope)
            .create_schedule(new_schedule)
            .await?;
        record_schedule_id(&schedule.id);
        Ok(pb::Schedule::from(&*schedule))
    }

    pub(super) async fn get_schedule_call(
        &self,
        scope: &Scope,
        id: &str,
    ) -> Result<pb::Schedule, ApiError> {
        let id = validate::schedule_id(id)?;
        record_schedule_id(&id);
        let schedule = self.manager.scoped(scope).get_schedule(id).await?;
        Ok(pb::Schedule::from(&*schedule))
    }

    pub(super) async fn list_schedules_call(
        &self,
        scope: &Scope,
        request: &pb::ListSchedulesRequest,
    ) -> Result<pb::ListSchedulesResponse, ApiError> {
        let (after, limit) = validate::schedule_page(request)?;
        let page = self
            .manager
            .scoped(scope)
            .list_schedules(after, limit)
            .await?;
        Ok(pb::ListSchedulesResponse {
            schedules: page
                .schedules
                .iter()
                .map(|schedule| pb::Schedule::from(&**schedule))
                .collect(),
            next_page_token: page
                .next_after
                .map(page_token::encode_schedules)
                .unwrap_or_default(),
        })
    }

    /// Pause (`paused`) or resume.
    pub(super) async fn set_schedule_paused_call(
        &self,
        scope: &Scope,
        id: &str,
        paused: bool,
    ) -> Result<pb::Schedule, ApiError> {
        let id = validate::schedule_id(id)?;
        record_schedule_id(&id);
        let schedule = self
            .manager
            .scoped(scope)
            .set_schedule_paused(id, paused)
            .await?;
        Ok(pb::Schedule::from(&*schedule))
    }

    pub(super) async fn delete_schedule_call(
        &self,
        scope: &Scope,
        id: &str,
    ) -> Result<(), ApiError> {
        let id = validate::schedule_id(id)?;
        record_schedule_id(&id);
        self.manager.scoped(scope).delete_schedule(id).await?;
        Ok(())
    }
}

/// Names the schedule in the call's span, as `task_id` names a task.
fn record_schedule_id(id: &crate::schedule::ScheduleId) {
    tracing::Span::current().record("schedule_id", tracing::field::display(id));
}
