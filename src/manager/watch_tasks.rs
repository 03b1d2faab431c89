//! What one `WatchTasks` stream sees: the changes of every task that
//! matches its filter, read from the actor's change journal
//! (`journal.rs`), with the initial list first if asked for.
//!
//! Everything here runs on the stream's side: the actor only numbers
//! changes and broadcasts them, and never waits for a stream. A stream
//! keeps its [`WatchPosition`] after each message, so a client can resume
//! right after any message it received.
//!
//! The initial list is a snapshot the actor takes in the same step as the
//! subscription (memory and SQLite hold every task), so no change can fall
//! between the two: the list shows every task as of journal position `P`,
//! and live changes follow from `P + 1`. While the list is being sent, a
//! position also says how far it got (`listed_through`), so a resume
//! continues the list after that task, preceded by the changes after `P` to
//! the tasks already listed.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::{broadcast, watch},
    time::Instant,
};

use super::{
    ListQuery, ManagerHandle,
    journal::{Before, Change, Subscription},
};
use crate::{
    store::{status_and_labels_match, tenant_matches},
    task::{PayloadLocation, Task, TaskId, TaskStatus},
};

/// After this long without a message, the stream sends a bookmark: a fresh
/// position, so a client of a quiet filter does not resume from a position
/// the journal has let go.
pub const BOOKMARK_AFTER: Duration = Duration::from_secs(10);

/// How many listed tasks have their payloads read from the store at once.
const PAYLOAD_CHUNK: usize = 64;

/// How many changes a resumed stream reads from PostgreSQL's change log at
/// once.
const LOG_PAGE: usize = 500;

/// Which tasks a stream is about; every part must hold. The statuses and
/// labels match as in `ListTasks`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Any of these statuses; empty means any.
    pub statuses: Vec<TaskStatus>,
    /// Every one of these pairs.
    pub labels: BTreeMap<String, String>,
    /// Any of these kinds; empty means any.
    pub kinds: Vec<String>,
    /// Only this tenant's tasks; `None`: every tenant's. Set by the
    /// manager from the caller's scope, never from the request.
    pub tenant: Option<String>,
}

impl TaskFilter {
    /// Whether the task, as it is, matches.
    pub fn matches(&self, task: &Task) -> bool {
        self.matches_in(task, task.status)
    }

    /// Whether the task would match in `status` (labels, kind and tenant
    /// never change).
    fn matches_in(&self, task: &Task, status: TaskStatus) -> bool {
        status_and_labels_match(&self.statuses, &self.labels, status, &task.labels)
            && (self.kinds.is_empty() || self.kinds.contains(&task.kind))
            && tenant_matches(self.tenant.as_deref(), &task.tenant)
    }

    /// Whether a stream with this filter sends `change`: the task matches
    /// after it or matched before it, so a client learns that a task left
    /// its filter.
    fn concerns(&self, change: &Change) -> bool {
        let task = &change.task;
        if self.matches(task) {
            return true;
        }
        match change.before {
            Before::Created | Before::Deleted => false,
            Before::Status(before) => self.matches_in(task, before),
            Before::Unknown => self
                .statuses
                .iter()
                .any(|status| self.matches_in(task, *status)),
        }
    }
}

/// Where a stream is: what a resume token carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchPosition {
    /// The journal (one per process start) the position is in.
    pub instance: u64,
    /// The last change the client has had (or that its list reflects).
    pub seq: u64,
    /// While the initial list is being sent: `Some(after)`, the list went up
    /// to task `after` (`None`: nothing listed yet). `None` once it is done.
    pub listing: Option<Option<TaskId>>,
}

/// The initial list (or its rest) a new stream is to send, as the actor
/// hands it over.
#[derive(Debug)]
pub(super) struct InitialList {
    /// The list goes on after this task (`None`: from the first).
    pub(super) after: Option<TaskId>,
    /// The matching tasks after it, as of the subscription; `None` when the
    /// shape holds no snapshot (PostgreSQL): the stream reads the table.
    pub(super) tasks: Option<Vec<Arc<Task>>>,
}

/// Where a new stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchStart {
    /// Changes from now on.
    Now,
    /// Every matching task first, then changes.
    Initial,
    /// Right after a message of an earlier stream.
    Resume(WatchPosition),
}

/// One message of a stream.
#[derive(Clone, Debug, PartialEq)]
pub enum TasksEvent {
    /// A task of the initial list, or a changed (or deleted) one.
    Task {
        task: Arc<Task>,
        position: WatchPosition,
    },
    /// The initial list is complete.
    InitialDone { position: WatchPosition },
    /// Nothing matched for a while: a fresh position.
    Bookmark { position: WatchPosition },
}

/// Why a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TasksWatchEnd {
    /// The client fell more than the buffer behind the live changes.
    #[error("the client fell too far behind; resume from the last resume_token")]
    Lagged,
    /// The manager stopped.
    #[error("the server is shutting down")]
    Closed,
    /// The initial list could not be read from the store.
    #[error("the task store could not be read")]
    StoreFailed,
}

/// A stream of the changes to the tasks that match a filter.
#[derive(Debug)]
pub struct TasksWatch {
    filter: TaskFilter,
    instance: u64,
    /// The last change handled (sent or not).
    seq: u64,
    /// Changes after the resumed position up to the subscription, to go
    /// first.
    backlog: VecDeque<Arc<Change>>,
    /// PostgreSQL, resumed: the backlog is read from the change log, a page
    /// at a time, after this position, until the log has no more.
    read_log_after: Option<u64>,
    /// Changes when the live changes had a gap: the stream ends.
    interrupted: watch::Receiver<()>,
    /// The initial list still to send, as the actor took it; `None` when
    /// there is none (or no more).
    listing: Option<Listing>,
    live: broadcast::Receiver<Arc<Change>>,
    /// PostgreSQL: the revision each task was listed at. The table may be
    /// ahead of the change feed, so a change the list already showed can
    /// still arrive; it is not sent again.
    listed_revisions: HashMap<TaskId, u64>,
    /// When the last message went out, for bookmarks.
    last_sent: Instant,
    /// To read back payloads the actor let go (SQLite).
    manager: ManagerHandle,
}

/// The initial list in flight.
#[derive(Debug)]
struct Listing {
    /// The last task listed; changes to tasks up to it (in id order) are
    /// sent before the rest of the list.
    listed_through: Option<TaskId>,
    /// Listed tasks still to send, in id order.
    tasks: VecDeque<Arc<Task>>,
    /// PostgreSQL: the list is read from the table a page at a time; the
    /// next page starts after this task. `None` once the table is read (or
    /// on the local shape, whose actor took the whole list).
    store_cursor: Option<Option<TaskId>>,
}

/// How many tasks one page of a list read from the store holds.
const STORE_PAGE: usize = 500;

impl TasksWatch {
    pub(super) fn new(
        filter: TaskFilter,
        subscription: Subscription,
        initial_list: Option<InitialList>,
        manager: ManagerHandle,
    ) -> Self {
        let Subscription {
            instance,
            position,
            backlog,
            read_log_after,
            live,
            interrupted,
        } = subscription;
        let first_backlog_seq = backlog.first().map(|change| change.seq);
        Self {
            filter,
            instance,
            // Resumed: the position asked for, just before the backlog.
            seq: read_log_after
                .unwrap_or_else(|| first_backlog_seq.map_or(position, |seq| seq - 1)),
            backlog: backlog.into(),
            read_log_after,
            interrupted,
            listing: initial_list.map(|InitialList { after, tasks }| Listing {
                listed_through: after,
                store_cursor: tasks.is_none().then_some(after),
                tasks: tasks.unwrap_or_default().into(),
            }),
            listed_revisions: HashMap::new(),
            live,
            last_sent: Instant::now(),
            manager,
        }
    }

    /// The next message, or why the stream ends. Not cancel-safe while it
    /// reads payloads back from the store: drop it only to end the stream.
    pub async fn next(&mut self) -> Result<TasksEvent, TasksWatchEnd> {
        loop {
            while let Some(change) = self.backlog.pop_front() {
                self.seq = change.seq;
                let listed = self.listing.as_ref().map(|listing| listing.listed_through);
                let already_listed = match listed {
                    None => true,
                    Some(listed_through) => {
                        listed_through.is_some_and(|last| change.task.id <= last)
                    }
                };
                if already_listed && self.filter.concerns(&change) && !self.shown_by_list(&change) {
                    let task = self.with_payload(&change.task).await;
                    return Ok(self.sent(task));
                }
            }
            if self.read_log_after.is_none() {
                break;
            }
            self.read_log_page().await.map_err(|error| match error {
                // The log let go of what follows while the client read
                // slowly: as a client too slow for the live changes.
                super::ManagerError::WatchPositionLost => TasksWatchEnd::Lagged,
                _ => TasksWatchEnd::StoreFailed,
            })?;
        }
        while let Some(listing) = &mut self.listing {
            if listing.tasks.is_empty()
                && let Some(after) = listing.store_cursor
            {
                let page = self
                    .manager
                    .list_tasks(ListQuery {
                        statuses: self.filter.statuses.clone(),
                        labels: self.filter.labels.clone(),
                        after,
                        limit: STORE_PAGE,
                        tenant: self.filter.tenant.clone(),
                    })
                    .await
                    .map_err(|_| TasksWatchEnd::StoreFailed)?;
                listing.store_cursor = page.next_after.map(Some);
                for task in page.tasks {
                    if self.filter.matches(&task) {
                        self.listed_revisions.insert(task.id, task.revision);
                        listing.tasks.push_back(task);
                    }
                }
                continue;
            }
            let Some(first) = listing.tasks.front() else {
                self.listing = None;
                self.last_sent = Instant::now();
                return Ok(TasksEvent::InitialDone {
                    position: self.position(),
                });
            };
            if first.payload == PayloadLocation::InStore {
                let chunk: Vec<Arc<Task>> =
                    listing.tasks.iter().take(PAYLOAD_CHUNK).cloned().collect();
                let taken = chunk.len();
                let filled = self
                    .manager
                    .with_payloads(chunk)
                    .await
                    .map_err(|_| TasksWatchEnd::Closed)?;
                // Tasks forgotten meanwhile are left out: their delete (if
                // they were deleted) follows in the live changes.
                listing.tasks.drain(..taken);
                for task in filled.into_iter().rev() {
                    listing.tasks.push_front(task);
                }
                continue;
            }
            if let Some(task) = listing.tasks.pop_front() {
                listing.listed_through = Some(task.id);
                return Ok(self.sent(task));
            }
        }
        loop {
            let bookmark_at = self.last_sent + BOOKMARK_AFTER;
            let received = tokio::select! {
                received = self.live.recv() => received,
                // Changes were missed: the client resumes from its last
                // token, through the change log.
                _ = self.interrupted.changed() => return Err(TasksWatchEnd::Lagged),
                () = tokio::time::sleep_until(bookmark_at) => {
                    self.last_sent = Instant::now();
                    return Ok(TasksEvent::Bookmark { position: self.position() });
                }
            };
            let change = match received {
                Ok(change) => change,
                Err(broadcast::error::RecvError::Lagged(_)) => return Err(TasksWatchEnd::Lagged),
                Err(broadcast::error::RecvError::Closed) => return Err(TasksWatchEnd::Closed),
            };
            if change.seq <= self.seq {
                continue;
            }
            self.seq = change.seq;
            if self.filter.concerns(&change) && !self.shown_by_list(&change) {
                // PostgreSQL's feed leaves `data` out: read it back.
                let task = if change.task.payload == PayloadLocation::InStore {
                    self.with_payload(&change.task).await
                } else {
                    Arc::clone(&change.task)
                };
                return Ok(self.sent(task));
            }
        }
    }

    /// PostgreSQL, resumed: the next page of the backlog from the change
    /// log (none left: the stream goes on with the live changes, which it
    /// subscribed to before the first page was read, so nothing falls
    /// between). `WatchPositionLost` when the log let some of it go.
    pub(super) async fn read_log_page(&mut self) -> Result<(), super::ManagerError> {
        let Some(after) = self.read_log_after else {
            return Ok(());
        };
        let page = self
            .manager
            .logged_changes_after(after, LOG_PAGE)
            .await?
            .ok_or(super::ManagerError::WatchPositionLost)?;
        self.read_log_after = match page.last() {
            Some(last) if page.len() == LOG_PAGE => Some(last.seq),
            _ => None,
        };
        self.backlog.extend(page);
        Ok(())
    }

    /// A kept change's task with its payload, which the journal does not
    /// keep: `data` never changes after create, and `result` is set once,
    /// at completion, so the task as it is now has both. A task forgotten
    /// (or deleted) since goes without them.
    async fn with_payload(&self, task: &Arc<Task>) -> Arc<Task> {
        if task.payload == PayloadLocation::InTask {
            return Arc::clone(task);
        }
        let Ok(now) = self.manager.get_task(task.id).await else {
            return Arc::clone(task);
        };
        Arc::new(Task {
            data: now.data.clone(),
            result: if task.status == TaskStatus::Completed {
                now.result.clone()
            } else {
                None
            },
            payload: now.payload,
            ..(**task).clone()
        })
    }

    /// Whether the list read from the store already showed this change
    /// (or a later one) of its task. A delete is always news.
    fn shown_by_list(&self, change: &Change) -> bool {
        change.before != Before::Deleted
            && self
                .listed_revisions
                .get(&change.task.id)
                .is_some_and(|listed| change.task.revision <= *listed)
    }

    /// A message about `task`, at the current position.
    fn sent(&mut self, task: Arc<Task>) -> TasksEvent {
        self.last_sent = Instant::now();
        TasksEvent::Task {
            task,
            position: self.position(),
        }
    }

    fn position(&self) -> WatchPosition {
        WatchPosition {
            instance: self.instance,
            seq: self.seq,
            listing: self.listing.as_ref().map(|listing| listing.listed_through),
        }
    }
}
