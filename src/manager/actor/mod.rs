//! The manager actor: the one owner of its process's task state.
//!
//! One core, two shapes. [`Manager`] holds what every store shares: the
//! run machinery (slots, the running set, timers, forced stops, progress;
//! `runs.rs`), the watchers, the persister, and the one door through which
//! every change of a task passes (`door.rs`). A [`Shape`] adds what differs
//! between stores and nothing else:
//!
//! - [`local::Local`] (memory, SQLite): memory is the truth and the file a
//!   durable copy; the shape holds every retained task, the queue of what
//!   waits (priority, `run_after`, back-offs, queue timeouts), retention and
//!   the memory budget.
//! - [`cluster::Cluster`] (PostgreSQL): the table is the truth; the shape
//!   claims due work, renews leases and follows the other replicas' changes.
//!
//! Which shape a process has is decided once, when the handle spawns the
//! actor; no code below asks which store it is on. The loop waits only on
//! its own channels, its timers and the runs it spawned; it never awaits a
//! client, a watcher or a processor.

mod cluster;
mod cluster_batch;
mod cluster_claims;
mod cluster_feed;
mod cluster_schedules;
mod cluster_workers;
mod commits;
mod door;
mod held;
mod local;
mod local_batch;
mod local_schedules;
mod recover;
mod runs;
mod tenant_waiting;
mod wait_queue;
mod watch_tasks;
mod workers;

pub(super) use cluster::Cluster;
pub(super) use held::json_bytes;
pub(super) use local::Local;

use std::{
    collections::{BTreeMap, HashMap},
    future::{Future, poll_fn},
    ops::Bound,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::{AbortHandle, JoinSet},
};
use tokio_util::{
    sync::CancellationToken,
    time::{DelayQueue, delay_queue},
};
use tracing::{debug, error};

use super::{
    Command, ListPage, ListQuery, ManagerConfig, ManagerError, ManagerStats, PROGRESS_BUFFER,
    Reply, ScheduleCommand, StoreHealth,
    journal::Journal,
    persist::{Deferred, Pending, Persister},
    watch::{TaskWatch, WatchState},
    watch_tasks::TaskFilter,
};
use crate::{
    metrics::{KindMetrics, Metrics},
    processor::{ProcessorError, ProgressUpdate, Registry},
    schedule::ScheduleId,
    store::{BatchOutcome, TaskStore, status_and_labels_match, tenant_matches},
    task::{NewTask, Task, TaskId, TaskStatus},
};

/// How many queued commands the loop takes in one go.
const COMMAND_BATCH: usize = 256;

/// How many tasks one `List` may look at before it returns a short page
/// (with a token to go on), so a filter that matches nothing cannot hold
/// the loop for long.
const LIST_SCAN_BUDGET: usize = 20_000;

/// How often housekeeping runs: retention, lease renewals, watch channels
/// whose watchers all left.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(1);

/// A run's result with its size (measured in the run's own task), or why
/// it failed.
type RunOutput = Result<(serde_json::Value, u64), ProcessorError>;

/// A timer the actor set for itself.
#[derive(Debug)]
enum Timer {
    /// The task's run exceeds its timeout.
    Timeout(TaskId),
    /// A run told to stop has not: abort it.
    ForcedStop(TaskId),
}

/// A worker slot in use: one processor run.
#[derive(Debug)]
struct RunSlot {
    attempt: u32,
    /// The task's kind, for the per-kind limits.
    kind: String,
    cancellation: CancellationToken,
    abort: AbortHandle,
    timeout_timer: Option<delay_queue::Key>,
    forced_stop_timer: Option<delay_queue::Key>,
    /// Stopped by a shutdown on a durable store: the task stays `RUNNING`
    /// and runs again at the next start, so whatever this run returns is
    /// dropped.
    interrupted: bool,
    /// The run's `task.run` span, also held by the run's task: the outcome
    /// is recorded on it here, and it ends when both let go.
    span: tracing::Span,
}

/// What differs between the store shapes: the rules of admission, start
/// order and forgetting that depend on where the truth is. Each hook gets
/// the whole manager, so a shape uses the shared parts rather than copying
/// them. A new scheduling rule that holds on every store goes into the
/// shared parts; a shape only decides *which* task is due (the local queue,
/// or the claim query).
pub(super) trait Shape: Sized + Send + 'static {
    /// What the shape's own background work reports to the loop.
    type Event: Send;

    fn create(
        manager: &mut Manager<Self>,
        new_task: NewTask,
        data_bytes: u64,
        respond_to: Reply<Arc<Task>>,
    );
    /// `BatchCreateTasks`: every task or none, answered in order once
    /// durable.
    fn create_batch(
        manager: &mut Manager<Self>,
        new_tasks: Vec<(NewTask, u64)>,
        respond_to: Reply<Vec<Arc<Task>>>,
    );
    fn cancel(manager: &mut Manager<Self>, id: TaskId, respond_to: Reply<Arc<Task>>);
    /// Forgets a finished task; answers once that is durable.
    fn delete(manager: &mut Manager<Self>, id: TaskId, respond_to: Reply<()>);
    fn watch(manager: &mut Manager<Self>, id: TaskId, respond_to: Reply<TaskWatch>);
    /// `WatchTasks`' initial list: the tasks after `after` (in id order)
    /// that match `filter`, as they are now. `None` when this shape does
    /// not hold every task.
    fn watch_tasks_snapshot(
        manager: &Manager<Self>,
        filter: &TaskFilter,
        after: Option<TaskId>,
    ) -> Option<Vec<Arc<Task>>>;
    /// Shutdown: stops every run (to run again later, or elsewhere).
    fn stop_running(manager: &mut Manager<Self>, reason: String, respond_to: Reply<usize>);

    /// A change went through the door (after the shared work).
    fn changed(
        manager: &mut Manager<Self>,
        task: &Arc<Task>,
        before: TaskStatus,
        status_changed: bool,
    );
    /// A run's result of `bytes` is about to become its task's.
    fn result_arrives(manager: &mut Manager<Self>, id: TaskId, bytes: u64);
    /// Starts what is due while slots are free.
    fn start_due(manager: &mut Manager<Self>);
    /// A run ended without deciding its task (its remote worker went
    /// away, or none had room after all): the task, still `RUNNING` at
    /// `attempt`, must run again, as after a crash of its server.
    fn run_cut_short(manager: &mut Manager<Self>, id: TaskId, attempt: u32, kind: &str);
    /// Remote workers may have room for more runs.
    fn worker_room_grew(manager: &mut Manager<Self>);
    fn housekeeping(manager: &mut Manager<Self>);
    /// A request about schedules.
    fn schedule_command(manager: &mut Manager<Self>, command: ScheduleCommand);
    /// A schedule created here could not be stored: as if it never was.
    fn schedule_create_not_stored(manager: &mut Manager<Self>, id: ScheduleId);
    /// A batch is durable (before its replies go out).
    fn committed(manager: &mut Manager<Self>, batch: &Pending, outcome: &BatchOutcome);
    /// A batch could not be stored (before its writes are tried again).
    fn commit_failed(manager: &mut Manager<Self>, batch: &Pending);
    /// A create whose insert failed: as if it never happened.
    fn roll_back_create(manager: &mut Manager<Self>, id: TaskId);
    /// Tasks waiting to start, as far as this process knows.
    fn pending_count(manager: &Manager<Self>) -> usize;
    /// Tasks of `kind` ready to start, as far as this process knows.
    fn ready_of_kind(manager: &Manager<Self>, kind: &str) -> usize;
    /// Fills in the figures only the shape knows.
    fn shape_stats(manager: &Manager<Self>, stats: &mut ManagerStats);

    /// How many of `tenant`'s tasks wait, for its quota. (The cluster
    /// shape holds no count: the handle asks the table instead.)
    fn tenant_waiting(manager: &Manager<Self>, tenant: &str) -> u64;
    /// How many of `request_ids` name a task of `tenant` already (whose
    /// create would return that task, so adds nothing to wait).
    fn known_request_ids(manager: &Manager<Self>, tenant: &str, request_ids: &[String]) -> usize;

    /// The shape's next background event; never completes if it has none.
    fn next_event(&mut self) -> impl Future<Output = Option<Self::Event>> + Send;
    fn handle_event(manager: &mut Manager<Self>, event: Self::Event);
}

pub(super) struct Manager<S> {
    config: ManagerConfig,
    registry: Registry,
    metrics: Metrics,
    /// Per-kind metric handles, looked up once per kind.
    kind_metrics: HashMap<String, KindMetrics>,
    /// Cloned into every run's context so processors can report progress.
    progress_sender: mpsc::Sender<ProgressUpdate>,
    /// Progress from runs; drained before a run's result is applied, so a
    /// report sent just before returning is never lost.
    progress_updates: mpsc::Receiver<ProgressUpdate>,
    /// The tasks this process holds, in id (= creation) order: every
    /// retained task (local), or the ones this replica runs (cluster).
    tasks: BTreeMap<TaskId, Arc<Task>>,
    runs: JoinSet<RunOutput>,
    running: HashMap<TaskId, RunSlot>,
    /// Slots in use by kind (the keys of `running`, counted by kind).
    running_by_kind: HashMap<String, usize>,
    /// Which task each spawned run belongs to; a panicked run is known only
    /// by its tokio id.
    run_owners: HashMap<tokio::task::Id, TaskId>,
    timers: DelayQueue<Timer>,
    /// One channel per watched task, shared by all its watchers.
    watchers: HashMap<TaskId, watch::Sender<WatchState>>,
    /// Every change, numbered, for `WatchTasks` streams.
    journal: Journal,
    /// Callers waiting for the last run to stop.
    idle_waiters: Vec<oneshot::Sender<Result<(), ManagerError>>>,
    /// Cleared when shutdown begins: creates are refused.
    accepting: bool,
    /// Cleared when running tasks are stopped for shutdown: none start.
    starting: bool,
    /// Persists changes in batches and holds the replies that wait on them.
    persister: Persister,
    /// Worker kinds whose lack of a worker was logged.
    worker_warnings: workers::WorkerWarnings,
    /// What this store's shape adds.
    shape: S,
}

impl<S: Shape> Manager<S> {
    pub(super) fn new(
        config: ManagerConfig,
        registry: Registry,
        metrics: Metrics,
        commits: Arc<dyn TaskStore>,
        store_health: watch::Sender<StoreHealth>,
        shape: S,
    ) -> Self {
        let (progress_sender, progress_updates) = mpsc::channel(PROGRESS_BUFFER);
        let journal = Journal::new(config.watch_journal_capacity);
        Self {
            persister: Persister::new(
                commits,
                config.node_name.clone(),
                metrics.clone(),
                store_health,
            ),
            config,
            registry,
            metrics,
            kind_metrics: HashMap::new(),
            progress_sender,
            progress_updates,
            tasks: BTreeMap::new(),
            runs: JoinSet::new(),
            running: HashMap::new(),
            running_by_kind: HashMap::new(),
            run_owners: HashMap::new(),
            timers: DelayQueue::new(),
            watchers: HashMap::new(),
            journal,
            idle_waiters: Vec::new(),
            accepting: true,
            starting: true,
            worker_warnings: workers::WorkerWarnings::default(),
            shape,
        }
    }

    /// The loop. Ends when every handle is gone; runs still going are then
    /// aborted.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(COMMAND_BATCH);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_PERIOD);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let workers = self.registry.workers().cloned();
        let worker_room_grew = async || match &workers {
            Some(workers) => workers.room_grew().await,
            None => std::future::pending().await,
        };
        loop {
            tokio::select! {
                committed = self.persister.committed(), if self.persister.is_committing() => {
                    self.handle_committed(committed);
                }
                Some(event) = self.shape.next_event() => S::handle_event(&mut self, event),
                received = commands.recv_many(&mut batch, COMMAND_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    for command in batch.drain(..) {
                        self.handle_command(command);
                    }
                }
                Some(update) = self.progress_updates.recv() => self.handle_progress(update),
                () = worker_room_grew() => S::worker_room_grew(&mut self),
                Some(finished) = self.runs.join_next_with_id() => self.handle_run_finished(finished),
                Some(expired) = poll_fn(|context| self.timers.poll_expired(context)) => {
                    self.handle_timer(expired.into_inner());
                }
                _ = housekeeping.tick() => {
                    self.sweep_watchers();
                    self.journal.prune();
                    self.warn_of_kinds_without_workers();
                    S::housekeeping(&mut self);
                }
            }
            if self.starting {
                S::start_due(&mut self);
            }
            self.persister.flush();
            if self.running.is_empty() {
                for waiter in self.idle_waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
            }
        }
        debug!(
            running = self.running.len(),
            "manager stopping; aborting runs"
        );
        self.runs.shutdown().await;
        // What was decided must still reach the store.
        while self.persister.has_work() {
            self.persister.flush();
            let committed = self.persister.committed().await;
            let failed = committed.outcome.is_err();
            self.handle_committed(committed);
            if failed {
                error!("changes of the last moments could not be stored");
                break;
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        // A caller that gave up has dropped its receiver: not our problem.
        match command {
            Command::Create {
                new_task,
                data_bytes,
                respond_to,
            } => S::create(self, new_task, data_bytes, respond_to),
            Command::CreateBatch {
                new_tasks,
                respond_to,
            } => S::create_batch(self, new_tasks, respond_to),
            Command::Get { id, respond_to } => {
                let _ = respond_to.send(self.get(id));
            }
            Command::List { query, respond_to } => {
                let _ = respond_to.send(Ok(self.list(&query)));
            }
            Command::Cancel { id, respond_to } => S::cancel(self, id, respond_to),
            Command::Delete { id, respond_to } => S::delete(self, id, respond_to),
            Command::Watch { id, respond_to } => S::watch(self, id, respond_to),
            Command::WatchTasks {
                filter,
                start,
                log,
                respond_to,
            } => {
                if let Some(watching) = log {
                    self.change_log_watched(watching);
                }
                let _ = respond_to.send(self.watch_tasks(&filter, start));
            }
            Command::Flush { respond_to } => {
                if self.persister.has_work() {
                    self.persister.defer(Deferred::Flushed(respond_to));
                } else {
                    let _ = respond_to.send(Ok(()));
                }
            }
            Command::StopAccepting { respond_to } => {
                self.accepting = false;
                let _ = respond_to.send(Ok(()));
            }
            Command::StopStarting { respond_to } => {
                self.starting = false;
                let _ = respond_to.send(Ok(()));
            }
            Command::WaitUntilIdle { respond_to } => self.idle_waiters.push(respond_to),
            Command::CancelRunning { reason, respond_to } => {
                self.starting = false;
                S::stop_running(self, reason, respond_to);
            }
            Command::Stats { respond_to } => {
                let _ = respond_to.send(Ok(self.stats()));
            }
            Command::TenantWaiting {
                tenant,
                request_ids,
                respond_to,
            } => {
                let waiting = S::tenant_waiting(self, &tenant);
                let known = S::known_request_ids(self, &tenant, &request_ids);
                let _ = respond_to.send(Ok((waiting, known)));
            }
            Command::Schedule(command) => S::schedule_command(self, command),
        }
    }

    /// Why a create cannot be taken now, whatever it asks: shutdown, or a
    /// store known to fail (waiting for it would keep the client past its
    /// 2 s answer).
    fn refusal(&self) -> Option<ManagerError> {
        if !self.accepting {
            return Some(ManagerError::ShuttingDown);
        }
        self.store_refusal()
    }

    /// Whether the waiting tasks fill `queue_capacity`.
    fn queue_is_full(&self) -> bool {
        S::pending_count(self) >= self.config.queue_capacity
    }

    fn queue_full(&self) -> ManagerError {
        ManagerError::QueueFull {
            capacity: self.config.queue_capacity,
            retry_after: self.config.queue_full_retry_after,
        }
    }

    /// A new task is in: counted, logged, recorded for the store, and
    /// answered (if a client waits: a schedule's firing has none) now
    /// (memory) or once its insert is durable.
    fn admit(&mut self, task: Arc<Task>, respond_to: Option<Reply<Arc<Task>>>) {
        self.metrics_of(&task.kind).task_created();
        tracing::debug!(task_id = %task.id, kind = %task.kind, "task created");
        if self.persister.is_durable() {
            let id = task.id;
            self.persister.insert(task);
            if let Some(respond_to) = respond_to {
                self.persister.defer(Deferred::Created { id, respond_to });
            }
        } else if let Some(respond_to) = respond_to {
            let _ = respond_to.send(Ok(task));
        }
    }

    /// A task held here.
    fn get(&self, id: TaskId) -> Result<Arc<Task>, ManagerError> {
        self.tasks
            .get(&id)
            .cloned()
            .ok_or(ManagerError::NotFound(id))
    }

    /// One page of the tasks held here. (On PostgreSQL the handle reads the
    /// table instead.)
    fn list(&self, query: &ListQuery) -> ListPage {
        let start = query.after.map_or(Bound::Unbounded, Bound::Excluded);
        let matches = |task: &Task| {
            status_and_labels_match(&query.statuses, &query.labels, task.status, &task.labels)
                && tenant_matches(query.tenant.as_deref(), &task.tenant)
        };
        let mut tasks: Vec<Arc<Task>> = Vec::new();
        let mut last_examined = None;
        for (scanned, (id, task)) in self.tasks.range((start, Bound::Unbounded)).enumerate() {
            if scanned == LIST_SCAN_BUDGET {
                // Everything up to `last_examined` has been looked at.
                return ListPage {
                    tasks,
                    next_after: last_examined,
                };
            }
            if matches(task) {
                if tasks.len() == query.limit {
                    // One more match exists, so there is a next page.
                    let next_after = tasks.last().map(|task| task.id);
                    return ListPage { tasks, next_after };
                }
                tasks.push(Arc::clone(task));
            }
            last_examined = Some(*id);
        }
        ListPage {
            tasks,
            next_after: None,
        }
    }

    fn stats(&self) -> ManagerStats {
        let mut stats = ManagerStats {
            tasks: self.tasks.len(),
            pending: S::pending_count(self),
            running: self.running.len(),
            watched_tasks: self.watchers.len(),
            task_streams: self.journal.streams(),
            worker_kinds: self.worker_kind_figures(),
            watchers: self
                .watchers
                .values()
                .map(watch::Sender::receiver_count)
                .sum(),
            ..ManagerStats::default()
        };
        S::shape_stats(self, &mut stats);
        stats
    }

    fn metrics_of(&mut self, kind: &str) -> &KindMetrics {
        if !self.kind_metrics.contains_key(kind) {
            let handles = self.metrics.for_kind(kind);
            self.kind_metrics.insert(kind.to_owned(), handles);
        }
        // Inserted just above when missing.
        &self.kind_metrics[kind]
    }

    fn status_of(&self, task_id: TaskId) -> Option<TaskStatus> {
        self.tasks.get(&task_id).map(|task| task.status)
    }
}

/// The current time as the stores keep it (whole microseconds), so a task
/// reads the same before and after a restart.
fn now() -> SystemTime {
    let since_epoch = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    std::time::UNIX_EPOCH + Duration::from_micros(since_epoch.as_micros() as u64)
}
