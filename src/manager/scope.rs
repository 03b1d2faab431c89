//! Tenants: what one caller may see and touch. Every request from the edge
//! goes through a [`Scoped`] handle, which is the one place that stamps a
//! new task or schedule with its tenant, narrows lists and watches to it,
//! and answers `NotFound` for another tenant's task or schedule.
//!
//! The rule lives here, above the shapes, so it holds on every store:
//! lists and `WatchTasks` filter in the query (`ListQuery::tenant`,
//! `TaskFilter::tenant`: the actor's list and the PostgreSQL statement
//! apply it), and a single task is checked by [`Scoped::ensure_visible`].
//! A task's tenant never changes and its id is never reused, so checking
//! the owner first and acting second cannot let a call through to a task
//! of another tenant.

use std::sync::Arc;

use super::{
    Command, ListPage, ListQuery, ManagerError, ManagerHandle, STORE_READ_TIMEOUT, SchedulePage,
    TaskFilter, TaskWatch, TasksWatch, WatchStart, storage_error,
};
use crate::{
    schedule::{NewSchedule, Schedule, ScheduleId},
    store::within,
    task::{NewTask, Task, TaskId},
};

/// Whose tasks a caller sees: all of them (no principal, or one bound to
/// no tenant), or one tenant's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every task, whatever its tenant; what it creates has no tenant.
    #[default]
    All,
    /// Only this tenant's tasks (never empty); what it creates is its own.
    Tenant(String),
}

impl Scope {
    /// The scope of a principal's tenant: empty means none, so all.
    pub fn of_tenant(tenant: &str) -> Self {
        if tenant.is_empty() {
            Self::All
        } else {
            Self::Tenant(tenant.to_owned())
        }
    }

    /// Whether a task of `tenant` is visible in this scope.
    pub fn sees(&self, tenant: &str) -> bool {
        match self {
            Self::All => true,
            Self::Tenant(own) => own == tenant,
        }
    }

    /// The tenant a list or a watch is narrowed to (`None`: not narrowed).
    pub fn tenant_filter(&self) -> Option<String> {
        match self {
            Self::All => None,
            Self::Tenant(own) => Some(own.clone()),
        }
    }

    /// The tenant of what this scope creates ('' for none).
    pub fn tenant(&self) -> &str {
        match self {
            Self::All => "",
            Self::Tenant(own) => own,
        }
    }
}

/// A [`ManagerHandle`] seen through a caller's [`Scope`]: the calls the
/// API makes for a client.
#[derive(Clone, Copy, Debug)]
pub struct Scoped<'a> {
    manager: &'a ManagerHandle,
    scope: &'a Scope,
}

impl ManagerHandle {
    /// This handle as a caller of `scope` uses it.
    pub fn scoped<'a>(&'a self, scope: &'a Scope) -> Scoped<'a> {
        Scoped {
            manager: self,
            scope,
        }
    }

    /// How many of `tenant`'s tasks wait (pending or retrying): the
    /// table's count on PostgreSQL, the actor's on the other stores.
    /// How many of `tenant`'s tasks wait, and how many of `request_ids`
    /// name one of its tasks already.
    async fn tenant_waiting(
        &self,
        tenant: &str,
        request_ids: Vec<String>,
    ) -> Result<(u64, usize), ManagerError> {
        if let Some(store) = &self.shared_store {
            let waiting = within(STORE_READ_TIMEOUT, store.count_waiting_of(tenant))
                .await
                .map_err(|error| storage_error(&error))?;
            let known = within(
                STORE_READ_TIMEOUT,
                store.count_request_ids_of(tenant, &request_ids),
            )
            .await
            .map_err(|error| storage_error(&error))?;
            return Ok((waiting, known));
        }
        let tenant = tenant.to_owned();
        self.call(|respond_to| Command::TenantWaiting {
            tenant,
            request_ids,
            respond_to,
        })
        .await
    }

    /// The tenant of task `id`, without its payload: a PostgreSQL read of
    /// one column, or the actor's copy.
    async fn tenant_of(&self, id: TaskId) -> Result<String, ManagerError> {
        if let Some(store) = &self.shared_store {
            return match within(STORE_READ_TIMEOUT, store.tenant_of(id)).await {
                Ok(Some(tenant)) => Ok(tenant),
                Ok(None) => Err(ManagerError::NotFound(id)),
                Err(error) => Err(storage_error(&error)),
            };
        }
        let task = self
            .call(|respond_to| Command::Get { id, respond_to })
            .await?;
        Ok(task.tenant.clone())
    }
}

impl Scoped<'_> {
    /// Creates a task of the caller's tenant (its `request_id` is unique
    /// within that tenant).
    pub async fn create_task(&self, mut new_task: NewTask) -> Result<Arc<Task>, ManagerError> {
        self.check_quota(std::slice::from_ref(&new_task)).await?;
        self.scope.tenant().clone_into(&mut new_task.tenant);
        self.manager.create_task(new_task).await
    }

    /// Creates tasks of the caller's tenant, all or nothing.
    pub async fn create_tasks(
        &self,
        mut new_tasks: Vec<NewTask>,
    ) -> Result<Vec<Arc<Task>>, ManagerError> {
        self.check_quota(&new_tasks).await?;
        for new_task in &mut new_tasks {
            self.scope.tenant().clone_into(&mut new_task.tenant);
        }
        self.manager.create_tasks(new_tasks).await
    }

    pub async fn get_task(&self, id: TaskId) -> Result<Arc<Task>, ManagerError> {
        let task = self.manager.get_task(id).await?;
        self.visible(task)
    }

    /// A page of the caller's tasks: the store filters by tenant.
    pub async fn list_tasks(&self, mut query: ListQuery) -> Result<ListPage, ManagerError> {
        query.tenant = self.scope.tenant_filter();
        self.manager.list_tasks(query).await
    }

    pub async fn cancel_task(&self, id: TaskId) -> Result<Arc<Task>, ManagerError> {
        self.ensure_visible(id).await?;
        self.manager.cancel_task(id).await
    }

    pub async fn delete_task(&self, id: TaskId) -> Result<(), ManagerError> {
        self.ensure_visible(id).await?;
        self.manager.delete_task(id).await
    }

    pub async fn watch_task(&self, id: TaskId) -> Result<TaskWatch, ManagerError> {
        let mut watch = self.manager.watch_task(id).await?;
        if *self.scope == Scope::All {
            return Ok(watch);
        }
        // The first state is the task as it is; its tenant never changes.
        match watch.first_state_mut() {
            Some(first) if self.scope.sees(&first.tenant) => Ok(watch),
            _ => Err(ManagerError::NotFound(id)),
        }
    }

    /// The changes of the caller's tasks that match `filter`.
    pub async fn watch_tasks(
        &self,
        mut filter: TaskFilter,
        start: WatchStart,
    ) -> Result<TasksWatch, ManagerError> {
        filter.tenant = self.scope.tenant_filter();
        self.manager.watch_tasks(filter, start).await
    }

    /// Creates a schedule of the caller's tenant; its firings create tasks
    /// of that tenant (the template carries it).
    pub async fn create_schedule(
        &self,
        mut new_schedule: NewSchedule,
    ) -> Result<Arc<Schedule>, ManagerError> {
        self.scope
            .tenant()
            .clone_into(&mut new_schedule.template.tenant);
        self.manager.create_schedule(new_schedule).await
    }

    pub async fn get_schedule(&self, id: ScheduleId) -> Result<Arc<Schedule>, ManagerError> {
        let schedule = self.manager.get_schedule(id).await?;
        if self.scope.sees(&schedule.template.tenant) {
            Ok(schedule)
        } else {
            Err(ManagerError::ScheduleNotFound(id))
        }
    }

    /// A page of the caller's schedules: the store filters by tenant.
    pub async fn list_schedules(
        &self,
        after: Option<ScheduleId>,
        limit: usize,
    ) -> Result<SchedulePage, ManagerError> {
        self.manager
            .list_schedules(after, limit, self.scope.tenant_filter())
            .await
    }

    /// Pauses (`paused`) or resumes one of the caller's schedules.
    pub async fn set_schedule_paused(
        &self,
        id: ScheduleId,
        paused: bool,
    ) -> Result<Arc<Schedule>, ManagerError> {
        self.ensure_schedule_visible(id).await?;
        self.manager.set_schedule_paused(id, paused).await
    }

    pub async fn delete_schedule(&self, id: ScheduleId) -> Result<(), ManagerError> {
        self.ensure_schedule_visible(id).await?;
        self.manager.delete_schedule(id).await
    }

    /// `ScheduleNotFound` unless schedule `id` is visible in this scope;
    /// as for tasks, a schedule's tenant never changes.
    async fn ensure_schedule_visible(&self, id: ScheduleId) -> Result<(), ManagerError> {
        if *self.scope == Scope::All {
            return Ok(());
        }
        self.get_schedule(id).await.map(drop)
    }

    /// `TenantQuotaFull` when `new_tasks` (those whose `request_id` names
    /// no task of the tenant yet) would take the caller's tenant past its
    /// `max_waiting`. The count is read, then the
    /// create sent: creates of one tenant racing each other (or on other
    /// replicas) may pass it by the few in flight; the quota bounds a
    /// tenant's backlog, not an exact number.
    async fn check_quota(&self, new_tasks: &[NewTask]) -> Result<(), ManagerError> {
        let Scope::Tenant(tenant) = self.scope else {
            return Ok(());
        };
        let Some(&max_waiting) = self.manager.tenant_max_waiting.get(tenant) else {
            return Ok(());
        };
        // A create repeated with its request_id returns the task it made:
        // it adds nothing to wait, so a client retrying at its quota gets
        // its answer rather than a refusal.
        let request_ids: Vec<String> = new_tasks
            .iter()
            .filter_map(|new_task| new_task.request_id.clone())
            .collect();
        let (waiting, known) = self.manager.tenant_waiting(tenant, request_ids).await?;
        let adding = new_tasks.len().saturating_sub(known);
        if adding > 0 && waiting.saturating_add(adding as u64) > max_waiting as u64 {
            return Err(ManagerError::TenantQuotaFull {
                tenant: tenant.clone(),
                waiting,
                max_waiting,
                retry_after: self.manager.quota_retry_after,
            });
        }
        Ok(())
    }

    /// `NotFound` unless task `id` is visible in this scope: another
    /// tenant's task is answered exactly as one that does not exist.
    async fn ensure_visible(&self, id: TaskId) -> Result<(), ManagerError> {
        if *self.scope == Scope::All {
            return Ok(());
        }
        let tenant = self.manager.tenant_of(id).await?;
        if self.scope.sees(&tenant) {
            Ok(())
        } else {
            Err(ManagerError::NotFound(id))
        }
    }

    fn visible(&self, task: Arc<Task>) -> Result<Arc<Task>, ManagerError> {
        if self.scope.sees(&task.tenant) {
            Ok(task)
        } else {
            Err(ManagerError::NotFound(task.id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Scope;

    #[test]
    fn a_tenant_sees_its_own_and_no_tenant_sees_all() {
        let team_a = Scope::of_tenant("team-a");
        assert!(team_a.sees("team-a"));
        assert!(!team_a.sees("team-b"));
        assert!(!team_a.sees(""));
        assert_eq!(team_a.tenant_filter().as_deref(), Some("team-a"));
        let all = Scope::of_tenant("");
        assert_eq!(all, Scope::All);
        assert!(all.sees("team-a") && all.sees(""));
        assert_eq!(all.tenant_filter(), None);
        assert_eq!(all.tenant(), "");
    }
}
