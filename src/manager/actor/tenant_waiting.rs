//! How many tasks of each tenant wait (pending or retrying), for the
//! `auth.tenant_quotas.<tenant>.max_waiting` quotas, on the local shape
//! (memory, SQLite), which holds every task. (PostgreSQL counts in the
//! table.) Kept up to date where the shape counts `pending` and
//! `retrying`, so a quota check costs a map lookup, never a walk.

use std::collections::HashMap;

use crate::task::TaskStatus;

#[derive(Debug, Default)]
pub(super) struct WaitingByTenant {
    /// Only tenants with waiting tasks; tasks of no tenant are not counted
    /// (no quota applies to them).
    counts: HashMap<String, u64>,
}

impl WaitingByTenant {
    /// A task of `tenant` went from `before` to `after` (`None`: it is new,
    /// or gone).
    pub(super) fn changed(
        &mut self,
        tenant: &str,
        before: Option<TaskStatus>,
        after: Option<TaskStatus>,
    ) {
        if tenant.is_empty() {
            return;
        }
        let was = before.is_some_and(TaskStatus::is_waiting);
        let is = after.is_some_and(TaskStatus::is_waiting);
        match (was, is) {
            (false, true) => *self.counts.entry(tenant.to_owned()).or_default() += 1,
            (true, false) => {
                if let Some(count) = self.counts.get_mut(tenant) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        self.counts.remove(tenant);
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn of(&self, tenant: &str) -> u64 {
        self.counts.get(tenant).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus::{Completed, Pending, Retrying, Running};

    #[test]
    fn counts_pending_and_retrying_tasks_per_tenant() {
        let mut waiting = WaitingByTenant::default();
        waiting.changed("a", None, Some(Pending));
        waiting.changed("a", None, Some(Pending));
        waiting.changed("b", None, Some(Pending));
        waiting.changed("", None, Some(Pending));
        assert_eq!(
            (waiting.of("a"), waiting.of("b"), waiting.of("")),
            (2, 1, 0)
        );
        waiting.changed("a", Some(Pending), Some(Running));
        waiting.changed("a", Some(Running), Some(Retrying));
        waiting.changed("a", Some(Retrying), Some(Running));
        waiting.changed("a", Some(Running), Some(Completed));
        assert_eq!(waiting.of("a"), 1);
        waiting.changed("b", Some(Pending), None);
        assert_eq!(waiting.of("b"), 0);
        assert!(!waiting.counts.contains_key("b"));
    }
}
