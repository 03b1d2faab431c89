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
    time::{Duration, Instant, SystemTime},
};

use tokio::{sync::mpsc, task::JoinSet};
use tracing::{debug, info, warn};

use super::{
    Manager, Shape,
    cluster_feed::spawn_fetch,
    cluster_schedules::{ClusterSchedules, ScheduleEvent},
    now,
};
use crate::{
    errors::error_chain,
    manager::{
        ManagerError, ManagerStats, Reply, STORE_CALL_TIMEOUT, STORE_HOUSEKEEPING_TIMEOUT,
        ScheduleCommand,
        journal::{KEPT_FOR, LOG_KEEP_ON_EVERY, LOG_KEPT_ON},
        persist::Pending,
        watch::TaskWatch,
        watch_tasks::TaskFilter,
    },
    processor::remote::StopReason,
    schedule::ScheduleId,
    store::{
        BatchOutcome, PostgresStore, StoreError,
        postgres::{Cancelled, Change, ChangeFeed, Claimed, Deleted, FeedEvent, Watching},
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
        result: Result<Claimed, StoreError>,
    },
    /// The earliest delayed task is due: time to claim.
    Due,
    /// Waiting tasks that waited past their queue timeout were failed.
    Expired(Result<Vec<Task>, StoreError>),
    Deleted {
        id: TaskId,
        result: Result<Deleted, StoreError>,
        respond_to: Reply<()>,
    },
    /// The row of a worker's run whose update was refused, read to tell
    /// the worker why its run stops.
    LostRowRead {
        id: TaskId,
        attempt: u32,
        result: Result<Option<Task>, StoreError>,
    },
    /// This replica's workers are in the `workers` table.
    WorkersPublished(Result<(), StoreError>),
    /// Tasks ready to start of the worker kinds no worker here runs.
    WorkerKindsCounted(Result<Vec<(String, u64)>, StoreError>),
    /// A run cut short is back in the table for any replica to take.
    GivenBack {
        id: TaskId,
        result: Result<(), StoreError>,
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
    /// The cluster's pending and retrying tasks.
    Counted(Result<(u64, u64), StoreError>),
    Retained(Result<u64, StoreError>),
    Schedules(ScheduleEvent),
    /// A `BatchCreateTasks` batch was answered: how many tasks it asked
    /// for, and the kinds of those it created.
    BatchInserted {
        asked: usize,
        created: Vec<String>,
    },
    /// The earliest schedule is due.
    SchedulesDue,
    /// The change log was kept on for this replica's streams.
    LogKeptOn(Result<Watching, StoreError>),
}

/// Watches waiting for their first read, and the changes that arrived
/// meanwhile (so nothing slips between the read and the subscription).
#[derive(Debug, Default)]
pub(super) struct PendingWatch {
    pub(super) waiting: Vec<Reply<TaskWatch>>,
    pub(super) changes: Vec<Change>,
}

#[derive(Debug)]
pub(in crate::manager) struct Cluster {
    pub(super) store: PostgresStore,
    pub(super) calls: JoinSet<ClusterEvent>,
    feed: mpsc::Receiver<FeedEvent>,
    /// Work may be waiting: claim when a slot is free.
    pub(super) claim_wanted: bool,
    /// The next claim also takes over runs whose lease ran out: set at
    /// start and on every housekeeping tick, since that walk costs more
    /// than a claim of ready tasks.
    pub(super) take_over_wanted: bool,
    pub(super) claiming: bool,
    renewing: bool,
    expiring: bool,
    /// When the earliest delayed task (`run_after`, back-off) becomes due,
    /// by this replica's clock: a claim then makes it ready and takes it.
    pub(super) next_due: Option<SystemTime>,
    /// Runs that ended here whose end is not committed yet. The table
    /// still shows them `RUNNING`, so their slots are not free for a
    /// claim: clients never see more runs than `max_concurrent`.
    pub(super) ending: HashMap<TaskId, String>,
    /// Tasks ready to start of each worker kind that no worker here runs,
    /// counted at housekeeping (for the gauge and the warning).
    pub(super) ready_without_worker: HashMap<String, usize>,
    /// Whether the `workers` table has rows of this replica (so an empty
    /// list must still be written once), and whether a write is under way.
    pub(super) workers_published: bool,
    /// Moves on at every claim: which kind of a stream of several is
    /// counted first (`WorkerHub::slots_by_kind`).
    pub(super) claim_rotation: usize,
    /// Worker runs whose refused update is being read (`LostRowRead`).
    pub(super) lost_rows_reading: HashSet<TaskId>,
    /// Claims left to try the other kinds of such streams, and whether the
    /// claim under way is one of them.
    pub(super) rotations_left: usize,
    pub(super) rotating: bool,
    pub(super) publishing_workers: bool,
    /// Pending tasks in the whole cluster, as last counted plus what this
    /// replica created since: what counts against `queue_capacity`.
    pub(super) pending_estimate: usize,
    /// Retrying tasks in the whole cluster, as last counted (metrics).
    retrying: usize,
    pub(super) pending_watches: HashMap<TaskId, PendingWatch>,
    /// The kinds this replica can run: the only ones it claims.
    pub(super) kinds: Arc<[String]>,
    last_renewal: Instant,
    last_retention: Option<Instant>,
    /// When this replica last kept the change log on for its streams.
    last_log_keep_on: Option<Instant>,
    /// The firing loop of the schedules.
    pub(super) schedules: ClusterSchedules,
}

impl Cluster {
    /// `listening` is the change feed, already listening: opened before the
    /// server serves, so no change a client could watch is announced before
    /// this replica hears announcements.
    pub(in crate::manager) fn new(
        store: PostgresStore,
        kinds: Vec<String>,
        listening: ChangeFeed,
    ) -> Self {
        let (sender, feed) = mpsc::channel(FEED_BUFFER);
        tokio::spawn(follow_changes(store.clone(), sender, Some(listening)));
        Self {
            store,
            calls: JoinSet::new(),
            feed,
            claim_wanted: true,
            take_over_wanted: true,
            claiming: false,
            renewing: false,
            expiring: false,
            next_due: None,
            ending: HashMap::new(),
            ready_without_worker: HashMap::new(),
            workers_published: false,
            claim_rotation: 0,
            lost_rows_reading: HashSet::new(),
            rotations_left: 0,
            rotating: false,
            publishing_workers: false,
            pending_estimate: 0,
            retrying: 0,
            pending_watches: HashMap::new(),
            kinds: kinds.into(),
            last_renewal: Instant::now(),
            last_retention: None,
            last_log_keep_on: None,
            schedules: ClusterSchedules::default(),
        }
    }
}

/// Keeps a change feed open for the actor (starting with `listening`),
/// connecting again after a loss. Ends when the actor is gone.
async fn follow_changes(
    store: PostgresStore,
    sender: mpsc::Sender<FeedEvent>,
    mut listening: Option<ChangeFeed>,
) {
    let mut failures = 0u32;
    loop {
        let opened = match listening.take() {
            Some(feed) => Ok(feed),
            None => store.listen().await,
        };
        match opened {
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

impl Manager<Cluster> {
    /// Cancels in the table, wherever the task runs; the replica that
    /// runs it hears of it from the feed.
    fn cancel_in_store(&mut self, id: TaskId, respond_to: Reply<Arc<Task>>) {
        let node = self.config.node_name.clone();
        let store = self.shape.store.clone();
        self.shape.calls.spawn(async move {
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

    fn renew_and_retain(&mut self) {
        let running: Vec<(TaskId, u32)> = self
            .running
            .iter()
            .map(|(id, slot)| (*id, slot.attempt))
            .collect();
        let node = self.config.node_name.clone();
        let lease = self.config.lease;
        let (retention, max_finished) = (self.config.retention, self.config.max_finished_tasks);
        let journal_capacity = self.config.watch_journal_capacity;
        let streams_follow = self.journal.streams() > 0;
        let cluster = &mut self.shape;
        // While streams follow, the change log stays on, for every replica.
        if streams_follow
            && cluster
                .last_log_keep_on
                .is_none_or(|last| last.elapsed() >= LOG_KEEP_ON_EVERY)
        {
            cluster.last_log_keep_on = Some(Instant::now());
            let store = cluster.store.clone();
            cluster.calls.spawn(async move {
                ClusterEvent::LogKeptOn(
                    within(STORE_CALL_TIMEOUT, store.watch_change_log(LOG_KEPT_ON)).await,
                )
            });
        }
        // Lease expiries of dead replicas and missed notifications are
        // found by trying now and then.
        cluster.claim_wanted = true;
        cluster.take_over_wanted = true;
        let store = cluster.store.clone();
        cluster.calls.spawn(async move {
            let counts =
                async { Ok((store.count_pending().await?, store.count_retrying().await?)) };
            ClusterEvent::Counted(within(STORE_CALL_TIMEOUT, counts).await)
        });
        if !cluster.expiring {
            cluster.expiring = true;
            let store = cluster.store.clone();
            let node = node.clone();
            cluster.calls.spawn(async move {
                ClusterEvent::Expired(
                    within(
                        STORE_CALL_TIMEOUT,
                        store.expire_waiting(&node, SystemTime::now()),
                    )
                    .await,
                )
            });
        }
        if !cluster.renewing && !running.is_empty() && cluster.last_renewal.elapsed() >= lease / 3 {
            cluster.renewing = true;
            cluster.last_renewal = Instant::now();
            let store = cluster.store.clone();
            let node = node.clone();
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
                // The change log is pruned as the journal of a local store
                // lets go: after KEPT_FOR, or past its capacity.
                let housekeeping = async {
                    let deleted = store
                        .enforce_retention(&node, retention, max_finished)
                        .await?;
                    store.prune_change_log(KEPT_FOR, journal_capacity).await?;
                    Ok(deleted)
                };
                ClusterEvent::Retained(within(STORE_HOUSEKEEPING_TIMEOUT, housekeeping).await)
            });
        }
    }

    /// A batch committed: runs whose row was taken from them stop, and
    /// what a claim made inside it took starts.
    fn stop_runs_that_lost_their_rows(&mut self, batch: &Pending, outcome: &BatchOutcome) {
        {
            // A claim inside the commit saw its inserts and its freed slots
            // already; without one, they call for a claim.
            let claimed_inside = batch.claim.is_some();
            let cluster = &mut self.shape;
            if !batch.inserts.is_empty() && !claimed_inside {
                cluster.claim_wanted = true;
            }
            // Written or refused (the row is no longer this run's), the
            // table no longer shows these runs as ours.
            for task in batch.updates.values() {
                if task.status != TaskStatus::Running
                    && cluster.ending.remove(&task.id).is_some()
                    && !claimed_inside
                {
                    cluster.claim_wanted = true;
                }
            }
        }
        for (task, written) in batch.updates.values().zip(&outcome.updated) {
            if !written {
                debug!(task_id = %task.id, "this run lost its task (cancelled elsewhere or taken over)");
                if self.registry.workers_for(&task.kind).is_some() {
                    // A worker is told why it stops: read which it was.
                    self.lose_remote_run_after_reading(task.id, task.attempt);
                } else {
                    self.lose_run(task.id, StopReason::TakenOver);
                }
            }
        }
    }

    /// Shutdown in cluster mode: stop the runs here and give their tasks
    /// back, so another replica runs them again at once. Answers once the
    /// database has them back.
    fn hand_over_running(&mut self, respond_to: Reply<usize>) {
        self.starting = false;
        let running: Vec<(TaskId, u32)> = self
            .running
            .iter()
            .map(|(id, slot)| (*id, slot.attempt))
            .collect();
        for (id, _) in &running {
            self.lose_run(*id, StopReason::ShuttingDown);
        }
        let count = running.len();
        if count == 0 {
            let _ = respond_to.send(Ok(0));
            return;
        }
        let node = self.config.node_name.clone();
        let store = self.shape.store.clone();
        self.shape.calls.spawn(async move {
            let result = within(STORE_CALL_TIMEOUT, store.release(&node, &running)).await;
            ClusterEvent::HandedOver {
                count,
                result,
                respond_to,
            }
        });
    }

    /// Stops a run whose task is no longer this run's, and forgets it here.
    pub(super) fn lose_run(&mut self, id: TaskId, reason: StopReason) {
        self.shape.ending.remove(&id);
        self.tasks.remove(&id);
        self.stop_run(id, reason);
    }

    fn handle_cluster_event(&mut self, event: ClusterEvent) {
        match event {
            ClusterEvent::Feed(FeedEvent::Change(change)) => self.handle_change(change),
            ClusterEvent::Feed(FeedEvent::WorkWaiting) => {
                self.shape.claim_wanted = true;
            }
            ClusterEvent::Feed(FeedEvent::Gap) => {
                warn!("the change feed had a gap; reading watched tasks again");
                // WatchTasks streams missed changes too: they end, and
                // resume from their tokens through the change log.
                self.journal.interrupt();
                let watched: Vec<TaskId> = self.watchers.keys().copied().collect();
                self.shape.claim_wanted = true;
                for id in watched {
                    spawn_fetch(&mut self.shape, id);
                }
            }
            ClusterEvent::Claimed { limit, result } => {
                self.shape.claiming = false;
                match result {
                    Ok(claimed) => self.start_claimed(limit, claimed),
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
                            self.lose_run(id, StopReason::Cancelled);
                        }
                        // The store made the change, so it passed no door
                        // here; it is counted and logged as every end is.
                        self.record_finished(&task);
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
            ClusterEvent::Due => {
                self.shape.next_due = None;
                self.shape.claim_wanted = true;
            }
            ClusterEvent::Expired(result) => {
                self.shape.expiring = false;
                match result {
                    Ok(expired) => {
                        for task in expired {
                            info!(task_id = %task.id, "task never started in time");
                            // Failed in the table by the sweep, not by a
                            // run here: counted and logged as every end is.
                            self.record_finished(&task);
                        }
                    }
                    Err(error) => {
                        warn!(error = %error_chain(&error), "failing tasks past their queue timeout failed; trying again");
                    }
                }
            }
            ClusterEvent::Deleted {
                id,
                result,
                respond_to,
            } => {
                let answer = match result {
                    Ok(Deleted::Now) => Ok(()),
                    Ok(Deleted::NotFound) => Err(ManagerError::NotFound(id)),
                    Ok(Deleted::NotFinished(status)) => {
                        Err(ManagerError::NotFinished { id, status })
                    }
                    Err(error) => {
                        warn!(task_id = %id, error = %error_chain(&error), "deleting in the store failed");
                        Err(ManagerError::Storage(error.to_string()))
                    }
                };
                let _ = respond_to.send(answer);
            }
            ClusterEvent::GivenBack { id, result } => self.handle_given_back(id, result),
            ClusterEvent::WorkerKindsCounted(result) => self.handle_worker_kinds_counted(result),
            ClusterEvent::WorkersPublished(result) => self.handle_workers_published(result),
            ClusterEvent::LostRowRead {
                id,
                attempt,
                result,
            } => self.handle_lost_row_read(id, attempt, result),
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
                self.shape.renewing = false;
                match result {
                    Ok(held) => {
                        for (id, attempt) in asked {
                            let still_this_run = self
                                .running
                                .get(&id)
                                .is_some_and(|slot| slot.attempt == attempt);
                            if still_this_run && !held.contains(&id) {
                                warn!(task_id = %id, "lease lost; stopping the run");
                                self.lose_run(id, StopReason::TakenOver);
                            }
                        }
                    }
                    Err(error) => {
                        warn!(error = %error_chain(&error), "renewing leases failed; trying again");
                    }
                }
            }
            ClusterEvent::Counted(result) => match result {
                Ok((pending, retrying)) => {
                    self.shape.pending_estimate = usize::try_from(pending).unwrap_or(usize::MAX);
                    self.shape.retrying = usize::try_from(retrying).unwrap_or(usize::MAX);
                }
                Err(error) => warn!(error = %error_chain(&error), "counting pending tasks failed"),
            },
            ClusterEvent::Schedules(event) => self.handle_schedule_event(event),
            ClusterEvent::BatchInserted { asked, created } => self.batch_inserted(asked, created),
            ClusterEvent::SchedulesDue => self.schedule_time_came(),
            ClusterEvent::LogKeptOn(result) => match result {
                Ok(watching) => self.change_log_watched(watching),
                Err(error) => {
                    warn!(error = %error_chain(&error), "keeping the change log on failed")
                }
            },
            ClusterEvent::Retained(result) => match result {
                Ok(0) => {}
                Ok(deleted) => debug!(deleted, "finished tasks deleted by retention"),
                Err(error) => warn!(error = %error_chain(&error), "enforcing retention failed"),
            },
        }
    }
}

impl Shape for Cluster {
    type Event = ClusterEvent;

    fn create(
        manager: &mut Manager<Self>,
        new_task: NewTask,
        _data_bytes: u64,
        respond_to: Reply<Arc<Task>>,
    ) {
        if let Some(refused) = manager.refusal() {
            let _ = respond_to.send(Err(refused));
            return;
        }
        if manager.queue_is_full() {
            let _ = respond_to.send(Err(manager.queue_full()));
            return;
        }
        // The table checks `request_id`s, for every replica at once (see
        // `Deferred::Created`); any replica may claim the task once it is in.
        let task = Arc::new(Task::new(TaskId::generate(), new_task, now()));
        manager.shape.pending_estimate += 1;
        manager.admit(task, Some(respond_to));
    }

    fn create_batch(
        manager: &mut Manager<Self>,
        new_tasks: Vec<(NewTask, u64)>,
        respond_to: Reply<Vec<Arc<Task>>>,
    ) {
        manager.create_cluster_batch(new_tasks, respond_to);
    }

    fn cancel(manager: &mut Manager<Self>, id: TaskId, respond_to: Reply<Arc<Task>>) {
        manager.cancel_in_store(id, respond_to);
    }

    fn delete(manager: &mut Manager<Self>, id: TaskId, respond_to: Reply<()>) {
        let store = manager.shape.store.clone();
        let node = manager.config.node_name.clone();
        manager.shape.calls.spawn(async move {
            ClusterEvent::Deleted {
                id,
                result: within(STORE_CALL_TIMEOUT, store.delete_task(id, &node)).await,
                respond_to,
            }
        });
    }

    fn watch(manager: &mut Manager<Self>, id: TaskId, respond_to: Reply<TaskWatch>) {
        manager.watch_through_feed(id, respond_to);
    }

    fn watch_tasks_snapshot(
        _manager: &Manager<Self>,
        _filter: &TaskFilter,
        _after: Option<TaskId>,
    ) -> Option<Vec<Arc<Task>>> {
        // The table is the truth: the stream lists it from the store.
        None
    }

    fn stop_running(manager: &mut Manager<Self>, _reason: String, respond_to: Reply<usize>) {
        manager.hand_over_running(respond_to);
    }

    fn changed(
        manager: &mut Manager<Self>,
        task: &Arc<Task>,
        _before: TaskStatus,
        _status_changed: bool,
    ) {
        // Watchers hear of it from the change feed once it is committed, as
        // they do on every other replica.
        if task.status != TaskStatus::Running {
            // The run ended (the task finished, or waits for a retry). The
            // table keeps the task, and still shows it running until the end
            // is committed: its slot stays taken until then.
            manager.shape.ending.insert(task.id, task.kind.clone());
            manager.tasks.remove(&task.id);
        }
    }

    fn result_arrives(_manager: &mut Manager<Self>, _id: TaskId, _bytes: u64) {
        // The table holds payloads; nothing is held here.
    }

    fn start_due(manager: &mut Manager<Self>) {
        manager.claim_due();
        manager.fire_schedules_if_wanted();
    }

    fn run_cut_short(manager: &mut Manager<Self>, id: TaskId, attempt: u32, kind: &str) {
        manager.give_back_run(id, attempt, kind);
    }

    fn worker_room_grew(manager: &mut Manager<Self>) {
        manager.shape.claim_wanted = true;
    }

    fn housekeeping(manager: &mut Manager<Self>) {
        manager.renew_and_retain();
        manager.count_kinds_without_workers();
        manager.publish_workers();
        manager.want_firing_round();
    }

    fn schedule_command(manager: &mut Manager<Self>, command: ScheduleCommand) {
        manager.serve_schedule_command(command);
    }

    fn schedule_create_not_stored(_manager: &mut Manager<Self>, _id: ScheduleId) {
        // Schedules are created in the table directly, never in a batch.
    }

    fn committed(manager: &mut Manager<Self>, batch: &Pending, outcome: &BatchOutcome) {
        manager.stop_runs_that_lost_their_rows(batch, outcome);
        manager.riding_claim_committed(batch, outcome);
    }

    fn commit_failed(manager: &mut Manager<Self>, batch: &Pending) {
        manager.riding_claim_failed(batch);
    }

    fn roll_back_create(manager: &mut Manager<Self>, _id: TaskId) {
        manager.shape.pending_estimate = manager.shape.pending_estimate.saturating_sub(1);
    }

    fn ready_of_kind(manager: &Manager<Self>, kind: &str) -> usize {
        manager
            .shape
            .ready_without_worker
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    fn pending_count(manager: &Manager<Self>) -> usize {
        manager.shape.pending_estimate
    }

    fn shape_stats(manager: &Manager<Self>, stats: &mut ManagerStats) {
        stats.retrying = manager.shape.retrying;
    }

    fn known_request_ids(
        _manager: &Manager<Self>,
        _tenant: &str,
        _request_ids: &[String],
    ) -> usize {
        0 // never asked: the handle looks in the table
    }

    fn tenant_waiting(_manager: &Manager<Self>, _tenant: &str) -> u64 {
        0 // never asked: `ManagerHandle::tenant_waiting` counts in the table
    }

    async fn next_event(&mut self) -> Option<ClusterEvent> {
        let due = self.next_due.map(instant_of);
        let schedules_due = self.schedules.wake_at().map(instant_of);
        tokio::select! {
            Some(event) = self.feed.recv() => Some(ClusterEvent::Feed(event)),
            Some(joined) = self.calls.join_next() => joined.ok(),
            () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                Some(ClusterEvent::Due)
            }
            () = tokio::time::sleep_until(schedules_due.unwrap_or_else(tokio::time::Instant::now)),
                if schedules_due.is_some() => Some(ClusterEvent::SchedulesDue),
            else => std::future::pending().await,
        }
    }

    fn handle_event(manager: &mut Manager<Self>, event: ClusterEvent) {
        manager.handle_cluster_event(event);
    }
}

/// The tokio instant of a wall-clock time (now, if it is past).
fn instant_of(at: SystemTime) -> tokio::time::Instant {
    let ahead = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + ahead
}
