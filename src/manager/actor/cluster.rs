//! The actor as one replica of a cluster on PostgreSQL.
//!
//! The database is the truth. This replica claims pending tasks while it has
//! free slots, renews the leases of what it runs, and learns from the change
//! feed what the others did: a cancel of a task it runs stops the run, and
//! watchers here see every committed state of a task wherever it runs. Each
//! store call runs in a spawned task whose result comes back as an event.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tracing::{debug, info, warn};

use super::Manager;
use crate::{
    errors::error_chain,
    manager::{
        ManagerError, Reply, STORE_CALL_TIMEOUT, STORE_HOUSEKEEPING_TIMEOUT, STORE_READ_TIMEOUT,
        persist::{Deferred, Pending},
        watch::{TaskWatch, WatchState},
    },
    store::{
        BatchOutcome, PostgresStore, StoreError,
        postgres::{Cancelled, Change, FeedEvent},
        within,
    },
    task::{NewTask, Task, TaskId, TaskStatus},
};

/// How many changes from the feed may wait for the actor.
const FEED_BUFFER: usize = 1024;

/// How often the database enforces retention (any replica may; all do).
const RETENTION_PERIOD: Duration = Duration::from_secs(10);

/// The longest wait before the change feed connects again.
const MAX_FEED_RETRY: Duration = Duration::from_secs(5);

/// A store call's result, back in the actor.
#[derive(Debug)]
pub(in crate::manager) enum ClusterEvent {
    Feed(FeedEvent),
    Claimed {
        /// How many were asked for: a full answer means more may wait.
        limit: usize,
        result: Result<Vec<Task>, StoreError>,
    },
    /// Running tasks were handed back for another replica to take.
    HandedOver {
        count: usize,
        result: Result<(), StoreError>,
        respond_to: Reply<usize>,
    },
    Cancelled {
        id: TaskId,
        result: Result<Cancelled, StoreError>,
        respond_to: Reply<Arc<Task>>,
    },
    /// A task read again: for a new watch, a change too large for the feed,
    /// or after a gap in the feed.
    Fetched {
        id: TaskId,
        result: Result<Option<Task>, StoreError>,
    },
    Renewed {
        asked: Vec<(TaskId, u32)>,
        result: Result<Vec<TaskId>, StoreError>,
    },
    Counted(Result<u64, StoreError>),
    Retained(Result<u64, StoreError>),
}

/// Watches waiting for their first read, and the changes that arrived
/// meanwhile (so nothing slips between the read and the subscription).
#[derive(Debug, Default)]
struct PendingWatch {
    waiting: Vec<Reply<TaskWatch>>,
    changes: Vec<Change>,
}

#[derive(Debug)]
pub(in crate::manager) struct ClusterState {
    store: PostgresStore,
    calls: JoinSet<ClusterEvent>,
    feed: mpsc::Receiver<FeedEvent>,
    /// Work may be waiting: claim when a slot is free.
    claim_wanted: bool,
    claiming: bool,
    renewing: bool,
    /// Runs that ended here whose end is not committed yet. The table
    /// still shows them `RUNNING`, so their slots are not free for a
    /// claim: clients never see more runs than `max_concurrent`.
    ending: HashSet<TaskId>,
    /// Pending tasks in the whole cluster, as last counted plus what this
    /// replica created since: what counts against `queue_capacity`.
    pending_estimate: usize,
    pending_watches: HashMap<TaskId, PendingWatch>,
    /// The kinds this replica can run: the only ones it claims.
    kinds: Arc<[String]>,
    last_renewal: Instant,
    last_retention: Option<Instant>,
}

impl ClusterState {
    pub(in crate::manager) fn new(store: PostgresStore, kinds: Vec<String>) -> Self {
        let (sender, feed) = mpsc::channel(FEED_BUFFER);
        tokio::spawn(follow_changes(store.clone(), sender));
        Self {
            store,
            calls: JoinSet::new(),
            feed,
            claim_wanted: true,
            claiming: false,
            renewing: false,
            ending: HashSet::new(),
            pending_estimate: 0,
            pending_watches: HashMap::new(),
            kinds: kinds.into(),
            last_renewal: Instant::now(),
            last_retention: None,
        }
    }
}

/// Keeps a change feed open for the actor, connecting again after a loss.
/// Ends when the actor is gone.
async fn follow_changes(store: PostgresStore, sender: mpsc::Sender<FeedEvent>) {
    let mut failures = 0u32;
    loop {
        match store.listen().await {
            Ok(mut feed) => {
                if failures > 0 && sender.send(FeedEvent::Gap).await.is_err() {
                    return;
                }
                failures = 0;
                loop {
                    match feed.next().await {
                        Ok(event) => {
                            if sender.send(event).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            warn!(error = %error_chain(&error), "the change feed failed");
                            break;
                        }
                    }
                }
            }
            Err(error) => warn!(error = %error_chain(&error), "cannot follow the change feed"),
        }
        failures = failures.saturating_add(1);
        if sender.is_closed() {
            return;
        }
        let delay = Duration::from_millis(100u64 << failures.min(6)).min(MAX_FEED_RETRY);
        tokio::time::sleep(delay).await;
    }
}

/// The next store result or change, for the actor's loop; never completes
/// outside cluster mode.
pub(in crate::manager) async fn next_event(
    cluster: &mut Option<ClusterState>,
) -> Option<ClusterEvent> {
    let Some(state) = cluster else {
        return std::future::pending().await;
    };
    tokio::select! {
        Some(event) = state.feed.recv() => Some(ClusterEvent::Feed(event)),
        Some(joined) = state.calls.join_next() => joined.ok(),
        else => std::future::pending().await,
    }
}

impl Manager {
    fn cluster(&mut self) -> Option<&mut ClusterState> {
        self.cluster.as_mut()
    }

    pub(super) fn create_in_cluster(&mut self, new_task: NewTask, respond_to: Reply<Arc<Task>>) {
        if !self.accepting {
            let _ = respond_to.send(Err(ManagerError::ShuttingDown));
            return;
        }
        if let Some(refused) = self.store_refusal() {
            let _ = respond_to.send(Err(refused));
            return;
        }
        let capacity = self.config.queue_capacity;
        let full = self
            .cluster
            .as_ref()
            .is_some_and(|cluster| cluster.pending_estimate >= capacity);
        if full {
            let _ = respond_to.send(Err(self.queue_full()));
            return;
        }
        let task = Arc::new(Task::new(TaskId::generate(), new_task, super::now()));
        if let Some(cluster) = self.cluster() {
            cluster.pending_estimate += 1;
        }
        self.metrics_of(&task.kind).task_created();
        info!(task_id = %task.id, kind = %task.kind, "task created");
        let id = task.id;
        self.persister.insert(task);
        self.persister.defer(Deferred::Created { id, respond_to });
    }

    pub(super) fn cancel_in_cluster(&mut self, id: TaskId, respond_to: Reply<Arc<Task>>) {
        let node = self.config.node_name.clone();
        if let Some(cluster) = self.cluster() {
            let store = cluster.store.clone();
            cluster.calls.spawn(async move {
                let result = within(
                    STORE_CALL_TIMEOUT,
                    store.cancel(id, "cancelled by client request", &node),
                )
                .await;
                ClusterEvent::Cancelled {
                    id,
                    result,
                    respond_to,
                }
            });
        }
    }

    pub(super) fn watch_in_cluster(&mut self, id: TaskId, respond_to: Reply<TaskWatch>) {
        if let Some(sender) = self.watchers.get(&id) {
            let _ = respond_to.send(Ok(TaskWatch::new(sender.subscribe())));
            return;
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let pending = cluster.pending_watches.entry(id).or_default();
        pending.waiting.push(respond_to);
        if pending.waiting.len() == 1 {
            // Subscribed (changes are kept from now on) before the read.
            spawn_fetch(cluster, id);
        }
    }

    /// Starts a claim when slots are free and work may be waiting.
    pub(super) fn claim_pending(&mut self) {
        let starting = self.starting;
        let node = self.config.node_name.clone();
        let lease = self.config.lease;
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let running = &self.running;
        let ending_elsewhere = cluster
            .ending
            .iter()
            .filter(|id| !running.contains_key(id))
            .count();
        let free = self
            .config
            .max_concurrent
            .saturating_sub(self.running.len() + ending_elsewhere);
        if !starting || free == 0 || cluster.claiming || !cluster.claim_wanted {
            return;
        }
        let kinds = Arc::clone(&cluster.kinds);
        cluster.claim_wanted = false;
        cluster.claiming = true;
        let store = cluster.store.clone();
        cluster.calls.spawn(async move {
            let result = within(
                STORE_CALL_TIMEOUT,
                store.claim(&node, free, lease, Some(&kinds)),
            )
            .await;
            ClusterEvent::Claimed {
                limit: free,
                result,
            }
        });
    }

    pub(super) fn cluster_housekeeping(&mut self) {
        let running: Vec<(TaskId, u32)> = self
            .running
            .iter()
            .map(|(id, slot)| (*id, slot.attempt))
            .collect();
        let node = self.config.node_name.clone();
        let lease = self.config.lease;
        let (retention, max_finished) = (self.config.retention, self.config.max_finished_tasks);
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        // Lease expiries of dead replicas and missed notifications are
        // found by trying now and then.
        cluster.claim_wanted = true;
        let store = cluster.store.clone();
        cluster.calls.spawn(async move {
            ClusterEvent::Counted(within(STORE_CALL_TIMEOUT, store.count_pending()).await)
        });
        if !cluster.renewing && !running.is_empty() && cluster.last_renewal.elapsed() >= lease / 3 {
            cluster.renewing = true;
            cluster.last_renewal = Instant::now();
            let store = cluster.store.clone();
            cluster.calls.spawn(async move {
                let result = within(STORE_CALL_TIMEOUT, store.renew(&node, &running, lease)).await;
                ClusterEvent::Renewed {
                    asked: running,
                    result,
                }
            });
        }
        if cluster
            .last_retention
            .is_none_or(|last| last.elapsed() >= RETENTION_PERIOD)
        {
            cluster.last_retention = Some(Instant::now());
            let store = cluster.store.clone();
            cluster.calls.spawn(async move {
                ClusterEvent::Retained(
                    within(
                        STORE_HOUSEKEEPING_TIMEOUT,
                        store.enforce_retention(retention, max_finished),
                    )
                    .await,
                )
            });
        }
    }

    /// A batch committed: runs whose row was taken from them stop.
    pub(super) fn cluster_committed(&mut self, batch: &Pending, outcome: &BatchOutcome) {
        if let Some(cluster) = self.cluster() {
            if !batch.inserts.is_empty() {
                cluster.claim_wanted = true;
            }
            // Written or refused (the row is no longer this run's), the
            // table no longer shows these runs as ours.
            for task in batch.updates.values() {
                if task.status.is_terminal() && cluster.ending.remove(&task.id) {
                    cluster.claim_wanted = true;
                }
            }
        }
        for (task, written) in batch.updates.values().zip(&outcome.updated) {
            if !written {
                debug!(task_id = %task.id, "this run lost its task (cancelled elsewhere or taken over)");
                self.lose_run(task.id);
            }
        }
    }

    /// Shutdown in cluster mode: stop the runs here and give their tasks
    /// back, so another replica runs them again at once. Answers once the
    /// database has them back.
    pub(super) fn hand_over_running(&mut self, respond_to: Reply<usize>) {
        self.starting = false;
        let running: Vec<(TaskId, u32)> = self
            .running
            .iter()
            .map(|(id, slot)| (*id, slot.attempt))
            .collect();
        for (id, _) in &running {
            self.lose_run(*id);
        }
        let count = running.len();
        if count == 0 {
            let _ = respond_to.send(Ok(0));
            return;
        }
        let node = self.config.node_name.clone();
        if let Some(cluster) = self.cluster() {
            let store = cluster.store.clone();
            cluster.calls.spawn(async move {
                let result = within(STORE_CALL_TIMEOUT, store.release(&node, &running)).await;
                ClusterEvent::HandedOver {
                    count,
                    result,
                    respond_to,
                }
            });
        }
    }

    /// Stops a run whose task is no longer this run's, and forgets it here.
    fn lose_run(&mut self, id: TaskId) {
        if let Some(cluster) = self.cluster() {
            cluster.ending.remove(&id);
        }
        self.tasks.remove(&id);
        self.stop_run(id);
    }

    pub(super) fn handle_cluster_event(&mut self, event: ClusterEvent) {
        match event {
            ClusterEvent::Feed(FeedEvent::Change(change)) => self.handle_change(change),
            ClusterEvent::Feed(FeedEvent::WorkWaiting) => {
                if let Some(cluster) = self.cluster() {
                    cluster.claim_wanted = true;
                }
            }
            ClusterEvent::Feed(FeedEvent::Gap) => {
                warn!("the change feed had a gap; reading watched tasks again");
                let watched: Vec<TaskId> = self.watchers.keys().copied().collect();
                if let Some(cluster) = self.cluster.as_mut() {
                    cluster.claim_wanted = true;
                    for id in watched {
                        spawn_fetch(cluster, id);
                    }
                }
            }
            ClusterEvent::Claimed { limit, result } => {
                if let Some(cluster) = self.cluster() {
                    cluster.claiming = false;
                }
                match result {
                    Ok(tasks) => {
                        if tasks.len() >= limit
                            && let Some(cluster) = self.cluster()
                        {
                            // The claim was full: more may be waiting.
                            cluster.claim_wanted = true;
                        }
                        for task in tasks {
                            let task = Arc::new(task);
                            info!(task_id = %task.id, kind = %task.kind, attempt = task.attempt, "task claimed");
                            self.tasks.insert(task.id, Arc::clone(&task));
                            self.spawn_run(task);
                        }
                    }
                    Err(error) => {
                        warn!(error = %error_chain(&error), "claiming tasks failed; trying again");
                    }
                }
            }
            ClusterEvent::Cancelled {
                id,
                result,
                respond_to,
            } => {
                let answer = match result {
                    Ok(Cancelled::NotFound) => Err(ManagerError::NotFound(id)),
                    Ok(Cancelled::Now(task)) => {
                        if self.running.contains_key(&id) {
                            self.lose_run(id);
                        }
                        self.metrics_of(&task.kind).task_finished(task.status, None);
                        info!(task_id = %id, kind = %task.kind, status = %task.status, "task finished");
                        Ok(Arc::new(task))
                    }
                    Ok(Cancelled::Already(task)) => Ok(Arc::new(task)),
                    Ok(Cancelled::Finished(task)) => Err(ManagerError::NotCancellable {
                        id,
                        status: task.status,
                    }),
                    Err(error) => {
                        warn!(task_id = %id, error = %error_chain(&error), "cancelling in the store failed");
                        Err(ManagerError::Storage(error.to_string()))
                    }
                };
                let _ = respond_to.send(answer);
            }
            ClusterEvent::Fetched { id, result } => self.handle_fetched(id, result),
            ClusterEvent::HandedOver {
                count,
                result,
                respond_to,
            } => {
                match result {
                    Ok(()) => info!(count, "running tasks handed over to other replicas"),
                    Err(error) => warn!(
                        count,
                        error = %error_chain(&error),
                        "could not hand running tasks over; others take them when their leases end"
                    ),
                }
                let _ = respond_to.send(Ok(count));
            }
            ClusterEvent::Renewed { asked, result } => {
                if let Some(cluster) = self.cluster() {
                    cluster.renewing = false;
                }
                match result {
                    Ok(held) => {
                        for (id, attempt) in asked {
                            let still_this_run = self
                                .running
                                .get(&id)
                                .is_some_and(|slot| slot.attempt == attempt);
                            if still_this_run && !held.contains(&id) {
                                warn!(task_id = %id, "lease lost; stopping the run");
                                self.lose_run(id);
                            }
                        }
                    }
                    Err(error) => {
                        warn!(error = %error_chain(&error), "renewing leases failed; trying again");
                    }
                }
            }
            ClusterEvent::Counted(result) => match result {
                Ok(pending) => {
                    if let Some(cluster) = self.cluster() {
                        cluster.pending_estimate = usize::try_from(pending).unwrap_or(usize::MAX);
                    }
                }
                Err(error) => warn!(error = %error_chain(&error), "counting pending tasks failed"),
            },
            ClusterEvent::Retained(result) => match result {
                Ok(0) => {}
                Ok(deleted) => debug!(deleted, "finished tasks deleted by retention"),
                Err(error) => warn!(error = %error_chain(&error), "enforcing retention failed"),
            },
        }
    }

    fn handle_change(&mut self, change: Change) {
        let id = change.task.id;
        debug!(task_id = %id, origin = %change.origin, status = %change.task.status, revision = change.task.revision, watched = self.watchers.contains_key(&id), "change from the feed");
        let from_elsewhere = change.origin != self.config.node_name;
        if let Some(cluster) = self.cluster() {
            if change.task.status == TaskStatus::Pending {
                cluster.claim_wanted = true;
                // This replica counted its own creates when it took them.
                if from_elsewhere {
                    cluster.pending_estimate += 1;
                }
            } else if left_pending(&change.task) {
                cluster.pending_estimate = cluster.pending_estimate.saturating_sub(1);
            }
        }
        // A task this replica runs was cancelled or taken over elsewhere.
        if from_elsewhere && let Some(slot) = self.running.get(&id) {
            let still_ours = change.task.status == TaskStatus::Running
                && change.task.attempt == slot.attempt
                && change.task.node == self.config.node_name;
            if !still_ours {
                info!(task_id = %id, status = %change.task.status, by = %change.origin, "task changed by another replica; stopping its run here");
                self.lose_run(id);
            }
        }
        if let Some(pending) = self
            .cluster
            .as_mut()
            .and_then(|cluster| cluster.pending_watches.get_mut(&id))
        {
            pending.changes.push(change);
            return;
        }
        if !self.watchers.contains_key(&id) {
            return;
        }
        if !change.complete {
            debug!(task_id = %id, "incomplete change; reading the task");
            if let Some(cluster) = self.cluster.as_mut() {
                spawn_fetch(cluster, id);
            }
            return;
        }
        self.publish_newer(change.task);
    }

    fn handle_fetched(&mut self, id: TaskId, result: Result<Option<Task>, StoreError>) {
        let pending = self
            .cluster
            .as_mut()
            .and_then(|cluster| cluster.pending_watches.remove(&id));
        let Some(pending) = pending else {
            // A read to fill in a change: publish it if it is news.
            match result {
                Ok(Some(task)) => self.publish_newer(task),
                Ok(None) => {}
                Err(error) => {
                    warn!(task_id = %id, error = %error_chain(&error), "reading a watched task failed")
                }
            }
            return;
        };
        let task = match result {
            Ok(Some(task)) => Arc::new(task),
            Ok(None) => {
                for waiting in pending.waiting {
                    let _ = waiting.send(Err(ManagerError::NotFound(id)));
                }
                return;
            }
            Err(error) => {
                warn!(task_id = %id, error = %error_chain(&error), "reading a watched task failed");
                let reason = error.to_string();
                for waiting in pending.waiting {
                    let _ = waiting.send(Err(ManagerError::Storage(reason.clone())));
                }
                return;
            }
        };
        let sender = self
            .watchers
            .entry(id)
            .or_insert_with(|| watch::Sender::new(WatchState::new(Arc::clone(&task))));
        let receivers: Vec<_> = pending
            .waiting
            .into_iter()
            .map(|waiting| (waiting, sender.subscribe()))
            .collect();
        for (waiting, receiver) in receivers {
            let _ = waiting.send(Ok(TaskWatch::new(receiver)));
        }
        for change in pending.changes {
            if change.complete {
                self.publish_newer(change.task);
            } else if let Some(cluster) = self.cluster.as_mut() {
                spawn_fetch(cluster, id);
            }
        }
        if task.status.is_terminal() {
            // Nothing follows; the watchers end after this state.
            self.watchers.remove(&id);
        }
    }

    /// Publishes a state from the store to this replica's watchers, unless
    /// they have seen it (or a later one) already.
    fn publish_newer(&mut self, mut task: Task) {
        let Some(sender) = self.watchers.get(&task.id) else {
            return;
        };
        let current = Arc::clone(sender.borrow().latest());
        if task.revision <= current.revision {
            return;
        }
        if task.data.is_none() {
            // The feed leaves data out: it never changes after create.
            task.data.clone_from(&current.data);
        }
        let status_changed = task.status != current.status;
        debug!(task_id = %task.id, revision = task.revision, receivers = sender.receiver_count(), "publishing a change from the store");
        self.publish(&Arc::new(task), status_changed);
    }
}

/// Whether this change is the one that took the task out of `PENDING`: its
/// first claim (the first change after create) or a cancel before it ran.
fn left_pending(task: &Task) -> bool {
    match task.status {
        TaskStatus::Running => task.attempt == 1 && task.revision == 2,
        TaskStatus::Cancelled => task.started_at.is_none(),
        _ => false,
    }
}

impl ClusterState {
    /// A run here ended; its slot is free once the end is committed.
    pub(in crate::manager) fn run_ending(&mut self, id: TaskId) {
        self.ending.insert(id);
    }

    /// Pending tasks in the whole cluster, as far as this replica knows.
    pub(in crate::manager) fn pending_estimate(&self) -> usize {
        self.pending_estimate
    }
}

fn spawn_fetch(cluster: &mut ClusterState, id: TaskId) {
    let store = cluster.store.clone();
    cluster.calls.spawn(async move {
        ClusterEvent::Fetched {
            id,
            result: within(STORE_READ_TIMEOUT, store.get(id)).await,
        }
    });
}
