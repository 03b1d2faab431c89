//! The actor's side of `WatchTasks`: recording each change in the journal
//! (once, here, for every shape) and starting a stream, its subscription
//! and its initial list taken in one step so nothing falls between them.

use std::sync::Arc;

use super::{Manager, Shape};
use crate::{
    manager::{
        ManagerError, WatchTasksStart,
        journal::{Before, ResumeRefused},
        watch_tasks::{InitialList, TaskFilter, WatchStart},
    },
    store::postgres::{ChangeLogStart, Watching},
    task::Task,
};

impl<S: Shape> Manager<S> {
    /// PostgreSQL: the journal numbers changes by their position in the
    /// change log, which every replica shares, so a stream resumes on any.
    pub(in crate::manager) fn number_journal_by_log(&mut self, start: ChangeLogStart) {
        self.journal
            .numbered_by_log(start.instance, start.last_position);
    }

    /// PostgreSQL: the change log was turned on (or kept on) for a stream.
    /// New streams start at its floor at least; if it had been off, the
    /// streams that follow missed changes that were never recorded, so
    /// they end (their tokens are then refused: the client lists again).
    pub(in crate::manager) fn change_log_watched(&mut self, watching: Watching) {
        if watching.was_off && self.journal.streams() > 0 {
            tracing::warn!("the change log had been off while streams followed; ending them");
            self.journal.interrupt();
        }
        self.journal.raise_floor(watching.floor);
    }

    /// Numbers a change to `task` for the `WatchTasks` streams. Never waits
    /// on a stream.
    pub(super) fn announce(&mut self, task: &Arc<Task>, before: Before) {
        self.journal.record(Arc::clone(task), before);
    }

    /// A new `WatchTasks` stream: subscribed to the journal, with the rest
    /// of its initial list when it has one to send.
    pub(super) fn watch_tasks(
        &mut self,
        filter: &TaskFilter,
        start: WatchStart,
    ) -> Result<WatchTasksStart, ManagerError> {
        let (resume, listing) = match start {
            WatchStart::Now => (None, None),
            WatchStart::Initial => (None, Some(None)),
            WatchStart::Resume(position) => {
                (Some((position.instance, position.seq)), position.listing)
            }
        };
        let subscription = self.journal.subscribe(resume).map_err(|refused| {
            tracing::debug!(?refused, "a WatchTasks resume was refused");
            match refused {
                ResumeRefused::OtherInstance | ResumeRefused::NotKept => {
                    ManagerError::WatchPositionLost
                }
            }
        })?;
        // `None` inside: this shape holds no snapshot, the stream reads
        // the list from the store.
        let initial_list = listing.map(|after| InitialList {
            after,
            tasks: S::watch_tasks_snapshot(self, filter, after),
        });
        Ok(WatchTasksStart {
            subscription,
            initial_list,
        })
    }
}
