//! The manager actor: the one owner of all task state.
//!
//! Its loop waits only on its own channels, its timers and the runs it
//! spawned; it never awaits a client, a watcher or a processor. Every task
//! change goes through [`Manager::transition`].

mod cluster;
mod commits;
mod held;
mod recover;

pub(super) use held::json_bytes;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    future::poll_fn,
    ops::Bound,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde_json::Value as JsonValue;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::{AbortHandle, JoinError, JoinSet},
    time::Instant,
};
use tokio_util::{
    sync::CancellationToken,
    time::{DelayQueue, delay_queue},
};
use tracing::{debug, error, info, warn};

use super::{
    Command, FORCED_STOP_AFTER, ListPage, ListQuery, ManagerConfig, ManagerError, ManagerStats,
    PROGRESS_BUFFER, Reply, StoreHealth,
    persist::{Deferred, Persister},
    watch::{TaskWatch, WatchState},
};
use crate::{
    metrics::{KindMetrics, Metrics},
    processor::{ProcessorError, ProgressReporter, ProgressUpdate, Registry, TaskContext},
    store::{PostgresStore, TaskStore},
    task::{Applied, NewTask, Task, TaskEvent, TaskId, TaskStatus},
};

/// How many queued commands the loop takes in one go.
const COMMAND_BATCH: usize = 256;

/// How many tasks one `List` may look at before it returns a short page
/// (with a token to go on), so a filter that matches nothing cannot hold
/// the loop for long.
const LIST_SCAN_BUDGET: usize = 20_000;

/// How often expired finished tasks and watch channels whose watchers all
/// left are dropped.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(1);

/// A run's result with its size (measured in the run's own task), or why
/// it failed.
type RunOutput = Result<(JsonValue, u64), ProcessorError>;

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
    cancellation: CancellationToken,
    abort: AbortHandle,
    timeout_timer: Option<delay_queue::Key>,
    forced_stop_timer: Option<delay_queue::Key>,
    /// Stopped by a shutdown on a durable store: the task stays `RUNNING`
    /// and runs again at the next start, so whatever this run returns is
    /// dropped.
    interrupted: bool,
}

pub(super) struct Manager {
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
    /// Every task, in id (= creation) order, for paging.
    tasks: BTreeMap<TaskId, Arc<Task>>,
    request_ids: HashMap<String, TaskId>,
    /// Pending tasks in FIFO order. Cancelled ones are skipped when popped
    /// and swept out when they pile up, so cancel stays O(1).
    queue: VecDeque<TaskId>,
    /// Tasks in `Pending`: what counts against `queue_capacity`.
    pending: usize,
    runs: JoinSet<RunOutput>,
    running: HashMap<TaskId, RunSlot>,
    /// Which task each spawned run belongs to; a panicked run is known only
    /// by its tokio id.
    run_owners: HashMap<tokio::task::Id, TaskId>,
    timers: DelayQueue<Timer>,
    /// One channel per watched task, shared by all its watchers.
    watchers: HashMap<TaskId, watch::Sender<WatchState>>,
    /// Finished tasks in the order they finished, for retention.
    finished: VecDeque<(Instant, TaskId)>,
    /// Callers waiting for the last run to stop.
    idle_waiters: Vec<oneshot::Sender<Result<(), ManagerError>>>,
    /// Cleared when shutdown begins: creates are refused.
    accepting: bool,
    /// Cleared when running tasks are cancelled for shutdown: none start.
    starting: bool,
    /// Persists changes in batches and holds the replies that wait on them.
    persister: Persister,
    /// Created tasks whose insert is not durable yet (SQLite).
    uncommitted: HashSet<TaskId>,
    /// PostgreSQL: what a replica of a cluster needs besides the above.
    cluster: Option<cluster::ClusterState>,
    /// The bytes of payloads held in `tasks`, against `max_held_bytes`
    /// (not kept in cluster mode, where the database holds the payloads).
    held: held::Held,
}

impl Manager {
    pub(super) fn new(
        config: ManagerConfig,
        registry: Registry,
        metrics: Metrics,
        commits: Arc<dyn TaskStore>,
        shared_store: Option<PostgresStore>,
        store_health: watch::Sender<StoreHealth>,
    ) -> Self {
        let cluster = shared_store.map(|store| {
            let kinds = registry.kinds().into_iter().map(str::to_owned).collect();
            cluster::ClusterState::new(store, kinds)
        });
        let (progress_sender, progress_updates) = mpsc::channel(PROGRESS_BUFFER);
        Self {
            held: held::Held::new(config.max_held_bytes),
            persister: Persister::new(
                commits,
                config.node_name.clone(),
                metrics.clone(),
                store_health,
            ),
            uncommitted: HashSet::new(),
            cluster,
            config,
            registry,
            metrics,
            kind_metrics: HashMap::new(),
            progress_sender,
            progress_updates,
            tasks: BTreeMap::new(),
            request_ids: HashMap::new(),
            queue: VecDeque::new(),
            pending: 0,
            runs: JoinSet::new(),
            running: HashMap::new(),
            run_owners: HashMap::new(),
            timers: DelayQueue::new(),
            watchers: HashMap::new(),
            finished: VecDeque::new(),
            idle_waiters: Vec::new(),
            accepting: true,
            starting: true,
        }
    }

    /// The loop. Ends when every handle is gone; runs still going are then
    /// aborted.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(COMMAND_BATCH);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_PERIOD);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                committed = self.persister.committed(), if self.persister.is_committing() => {
                    self.handle_committed(committed);
                }
                Some(event) = cluster::next_event(&mut self.cluster) => self.handle_cluster_event(event),
                received = commands.recv_many(&mut batch, COMMAND_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    for command in batch.drain(..) {
                        self.handle_command(command);
                    }
                }
                Some(update) = self.progress_updates.recv() => self.handle_progress(update),
                Some(finished) = self.runs.join_next_with_id() => self.handle_run_finished(finished),
                Some(expired) = poll_fn(|context| self.timers.poll_expired(context)) => {
                    self.handle_timer(expired.into_inner());
                }
                _ = housekeeping.tick() => {
                    self.sweep_watchers();
                    if self.cluster.is_some() {
                        self.cluster_housekeeping();
                    } else {
                        self.forget_expired_tasks();
                    }
                }
            }
            if self.cluster.is_some() {
                self.claim_pending();
            } else {
                self.start_pending();
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
            } => {
                if self.cluster.is_some() {
                    self.create_in_cluster(new_task, respond_to);
                } else {
                    self.create(new_task, data_bytes, respond_to);
                }
            }
            Command::Get { id, respond_to } => {
                let _ = respond_to.send(self.get(id));
            }
            Command::List { query, respond_to } => {
                let _ = respond_to.send(Ok(self.list(&query)));
            }
            Command::Cancel { id, respond_to } => {
                if self.cluster.is_some() {
                    self.cancel_in_cluster(id, respond_to);
                } else {
                    let answer = self.cancel(id);
                    self.answer_when_durable(answer, respond_to);
                }
            }
            Command::Watch { id, respond_to } => {
                if self.cluster.is_some() {
                    self.watch_in_cluster(id, respond_to);
                } else {
                    let _ = respond_to.send(self.watch(id));
                }
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
                if self.cluster.is_some() {
                    self.hand_over_running(respond_to);
                } else {
                    let _ = respond_to.send(Ok(self.cancel_running(&reason)));
                }
            }
            Command::Stats { respond_to } => {
                let _ = respond_to.send(Ok(self.stats()));
            }
        }
    }

    /// Accepts a task. With a durable store it is queued, and the client
    /// answered, only once its insert is committed.
    fn create(&mut self, new_task: NewTask, data_bytes: u64, respond_to: Reply<Arc<Task>>) {
        if !self.accepting {
            let _ = respond_to.send(Err(ManagerError::ShuttingDown));
            return;
        }
        if let Some(refused) = self.store_refusal() {
            let _ = respond_to.send(Err(refused));
            return;
        }
        if let Some(request_id) = &new_task.request_id
            && let Some(existing) = self
                .request_ids
                .get(request_id)
                .and_then(|id| self.tasks.get(id))
        {
            let answer = if existing.was_created_from(&new_task) {
                Ok(Arc::clone(existing))
            } else {
                Err(ManagerError::RequestIdConflict {
                    request_id: request_id.clone(),
                })
            };
            let id = existing.id;
            if answer.is_ok() && self.uncommitted.contains(&id) {
                // Answered when the first create's insert is durable.
                self.persister.defer(Deferred::Created { id, respond_to });
            } else {
                let _ = respond_to.send(answer);
            }
            return;
        }
        if self.pending >= self.config.queue_capacity {
            let _ = respond_to.send(Err(self.queue_full()));
            return;
        }
        if !self.make_room(data_bytes) {
            let _ = respond_to.send(Err(self.memory_full()));
            return;
        }
        let id = TaskId::generate();
        self.held.add(id, data_bytes);
        let task = Arc::new(Task::new(id, new_task, now()));
        if let Some(request_id) = &task.request_id {
            self.request_ids.insert(request_id.clone(), id);
        }
        self.tasks.insert(id, Arc::clone(&task));
        self.pending += 1;
        self.metrics_of(&task.kind).task_created();
        info!(task_id = %id, kind = %task.kind, "task created");
        if self.persister.is_durable() {
            self.uncommitted.insert(id);
            self.persister.insert(task);
            self.persister.defer(Deferred::Created { id, respond_to });
        } else {
            self.queue.push_back(id);
            let _ = respond_to.send(Ok(task));
        }
    }

    fn queue_full(&self) -> ManagerError {
        ManagerError::QueueFull {
            capacity: self.config.queue_capacity,
            retry_after: self.config.queue_full_retry_after,
        }
    }

    fn get(&self, id: TaskId) -> Result<Arc<Task>, ManagerError> {
        self.tasks
            .get(&id)
            .cloned()
            .ok_or(ManagerError::NotFound(id))
    }

    fn list(&self, query: &ListQuery) -> ListPage {
        let start = query.after.map_or(Bound::Unbounded, Bound::Excluded);
        let matches = |task: &Task| {
            (query.statuses.is_empty() || query.statuses.contains(&task.status))
                && query
                    .labels
                    .iter()
                    .all(|(key, value)| task.labels.get(key) == Some(value))
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

    fn cancel(&mut self, id: TaskId) -> Result<Arc<Task>, ManagerError> {
        let task = self.get(id)?;
        match task.status {
            TaskStatus::Cancelled => Ok(task),
            TaskStatus::Completed | TaskStatus::Failed => Err(ManagerError::NotCancellable {
                id,
                status: task.status,
            }),
            TaskStatus::Pending | TaskStatus::Running => {
                let cancelled = self
                    .transition(id, TaskEvent::Cancel("cancelled by client request".into()))
                    .unwrap_or(task);
                self.stop_run(id);
                self.compact_queue();
                Ok(cancelled)
            }
        }
    }

    fn watch(&mut self, id: TaskId) -> Result<TaskWatch, ManagerError> {
        let task = self.get(id)?;
        if task.status.is_terminal() {
            // Nothing will change: a channel whose sender is already gone
            // yields this one state and ends.
            let (_, receiver) = watch::channel(WatchState::new(task));
            return Ok(TaskWatch::new(receiver));
        }
        let sender = self
            .watchers
            .entry(id)
            .or_insert_with(|| watch::Sender::new(WatchState::new(Arc::clone(&task))));
        Ok(TaskWatch::new(sender.subscribe()))
    }

    fn cancel_running(&mut self, reason: &str) -> usize {
        self.starting = false;
        let running: Vec<TaskId> = self
            .running
            .keys()
            .copied()
            .filter(|id| self.status_of(*id) == Some(TaskStatus::Running))
            .collect();
        if self.persister.is_durable() {
            // A durable store keeps the task: stop the run, leave the task
            // RUNNING, and the next start runs it again (a new attempt), as
            // after a crash. A deploy does not cancel anybody's work.
            for id in &running {
                if let Some(slot) = self.running.get_mut(id) {
                    slot.interrupted = true;
                }
                self.stop_run(*id);
            }
            if !running.is_empty() {
                info!(
                    count = running.len(),
                    "running tasks interrupted; they run again when the server starts"
                );
            }
            return running.len();
        }
        for id in &running {
            self.transition(*id, TaskEvent::Cancel(reason.to_owned()));
            self.stop_run(*id);
        }
        running.len()
    }

    fn stats(&self) -> ManagerStats {
        ManagerStats {
            tasks: self.tasks.len(),
            pending: self
                .cluster
                .as_ref()
                .map_or(self.pending, cluster::ClusterState::pending_estimate),
            running: self.running.len(),
            watched_tasks: self.watchers.len(),
            watchers: self
                .watchers
                .values()
                .map(watch::Sender::receiver_count)
                .sum(),
            request_ids: self.request_ids.len(),
            finished: self.finished.len(),
            held_bytes: self.held.total(),
        }
    }

    fn handle_progress(&mut self, update: ProgressUpdate) {
        let is_current_run = self
            .running
            .get(&update.task_id)
            .is_some_and(|slot| slot.attempt == update.attempt && !slot.interrupted);
        if is_current_run && self.status_of(update.task_id) == Some(TaskStatus::Running) {
            self.transition(update.task_id, TaskEvent::Progress(update.progress));
        }
    }

    fn handle_run_finished(&mut self, finished: Result<(tokio::task::Id, RunOutput), JoinError>) {
        let run_id = match &finished {
            Ok((run_id, _)) => *run_id,
            Err(error) => error.id(),
        };
        let Some(task_id) = self.run_owners.remove(&run_id) else {
            return;
        };
        // Reports the run sent before it returned come first. They are
        // among those queued now; taking only those keeps this bounded
        // however fast other runs keep reporting.
        for _ in 0..self.progress_updates.len() {
            match self.progress_updates.try_recv() {
                Ok(update) => self.handle_progress(update),
                Err(_) => break,
            }
        }
        let Some(slot) = self.running.remove(&task_id) else {
            return;
        };
        for timer in [slot.timeout_timer, slot.forced_stop_timer]
            .into_iter()
            .flatten()
        {
            self.timers.remove(&timer);
        }
        let mut result_bytes = 0;
        let event = match finished {
            Ok((_, Ok((result, bytes)))) => {
                result_bytes = bytes;
                TaskEvent::Complete(Arc::new(result))
            }
            Ok((_, Err(error))) => TaskEvent::Fail(error.to_string()),
            Err(error) if error.is_panic() => {
                let message = panic_message(error.into_panic());
                warn!(task_id = %task_id, panic = %message, "processor panicked");
                TaskEvent::Fail(format!("processor panicked: {message}"))
            }
            // Aborted by us after a cancel or timeout: the task already
            // has its terminal state.
            Err(_) => return,
        };
        // Only the current run may finish its task; the result of a run that
        // was cancelled or timed out is discarded.
        let is_current_run = !slot.interrupted
            && self.tasks.get(&task_id).is_some_and(|task| {
                task.status == TaskStatus::Running && task.attempt == slot.attempt
            });
        if !is_current_run {
            debug!(task_id = %task_id, "late result of a stopped run discarded");
            return;
        }
        if self.cluster.is_none() {
            // Counted before the transition, which may make room for it.
            self.held.add(task_id, result_bytes);
        }
        self.transition(task_id, event);
    }

    fn handle_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Timeout(task_id) => {
                let Some(slot) = self.running.get_mut(&task_id) else {
                    return;
                };
                slot.timeout_timer = None;
                let timeout_seconds = self
                    .tasks
                    .get(&task_id)
                    .map_or(0, |task| task.timeout_seconds);
                if self.status_of(task_id) == Some(TaskStatus::Running) {
                    let error = format!("timed out after {timeout_seconds}s");
                    info!(task_id = %task_id, timeout_seconds, "task timed out");
                    self.transition(task_id, TaskEvent::Fail(error));
                }
                self.stop_run(task_id);
            }
            Timer::ForcedStop(task_id) => {
                if let Some(slot) = self.running.get_mut(&task_id) {
                    slot.forced_stop_timer = None;
                    warn!(task_id = %task_id, "processor ignored its stop signal; aborting it");
                    slot.abort.abort();
                }
            }
        }
    }

    /// Starts pending tasks, oldest first, while there are free slots.
    fn start_pending(&mut self) {
        while self.starting && self.running.len() < self.config.max_concurrent {
            let Some(task_id) = self.queue.pop_front() else {
                break;
            };
            let recovered_run = self.status_of(task_id) == Some(TaskStatus::Running)
                && !self.running.contains_key(&task_id);
            if self.status_of(task_id) != Some(TaskStatus::Pending) && !recovered_run {
                continue; // cancelled while it waited
            }
            self.start(task_id);
        }
    }

    fn start(&mut self, task_id: TaskId) {
        let node = self.config.node_name.clone();
        let start = if self.status_of(task_id) == Some(TaskStatus::Running) {
            // It was running when the last process died: run it again.
            TaskEvent::Restart { node }
        } else {
            TaskEvent::Start { node }
        };
        let Some(task) = self.transition(task_id, start) else {
            return;
        };
        self.spawn_run(task);
    }

    /// Runs a task that is `RUNNING` for this node on a free slot.
    fn spawn_run(&mut self, task: Arc<Task>) {
        let task_id = task.id;
        let Some(processor) = self.registry.get(&task.kind) else {
            // Kinds are checked on create and the registry never shrinks,
            // so this is a bug; fail the task rather than lose it.
            warn!(task_id = %task_id, kind = %task.kind, "no processor for kind");
            let error = format!("no processor is registered for kind {:?}", task.kind);
            self.transition(task_id, TaskEvent::Fail(error));
            return;
        };
        let cancellation = CancellationToken::new();
        let context = TaskContext::new(
            task_id,
            task.attempt,
            task.data.clone(),
            cancellation.clone(),
            ProgressReporter::new(self.progress_sender.clone()),
        );
        let abort = self.runs.spawn(async move {
            let result = processor.process(context).await?;
            // Sized here, in the run's task, so the actor never walks it.
            let bytes = held::json_bytes(&result);
            Ok((result, bytes))
        });
        self.run_owners.insert(abort.id(), task_id);
        let timeout_timer = (task.timeout_seconds > 0).then(|| {
            let timeout = Duration::from_secs(u64::from(task.timeout_seconds));
            self.timers.insert(Timer::Timeout(task_id), timeout)
        });
        info!(task_id = %task_id, kind = %task.kind, attempt = task.attempt, "task started");
        self.running.insert(
            task_id,
            RunSlot {
                attempt: task.attempt,
                cancellation,
                abort,
                timeout_timer,
                forced_stop_timer: None,
                interrupted: false,
            },
        );
    }

    /// Tells a run to stop, and arms the timer that aborts it if it does not.
    fn stop_run(&mut self, task_id: TaskId) {
        let Some(slot) = self.running.get_mut(&task_id) else {
            return;
        };
        slot.cancellation.cancel();
        if let Some(timer) = slot.timeout_timer.take() {
            self.timers.remove(&timer);
        }
        if slot.forced_stop_timer.is_none() {
            let timer = self
                .timers
                .insert(Timer::ForcedStop(task_id), FORCED_STOP_AFTER);
            slot.forced_stop_timer = Some(timer);
        }
    }

    /// The one door for task changes: checks the state machine, keeps the
    /// pending count, and publishes to watchers. Returns the new state, or
    /// `None` when the task is unknown or the event is illegal.
    fn transition(&mut self, task_id: TaskId, event: TaskEvent) -> Option<Arc<Task>> {
        let entry = self.tasks.get_mut(&task_id)?;
        let before = entry.status;
        match Arc::make_mut(entry).apply(event, now()) {
            Ok(Applied::Changed { status_changed }) => {
                let task = Arc::clone(entry);
                if before == TaskStatus::Pending && task.status != TaskStatus::Pending {
                    self.pending -= 1;
                }
                if status_changed {
                    debug!(task_id = %task_id, from = %before, to = %task.status, "task status changed");
                } else if let Some(progress) = &task.progress {
                    debug!(task_id = %task_id, kind = %task.kind, percent = progress.percent, "task progress");
                }
                if let Some(cluster) = self.cluster.as_mut() {
                    // Watchers hear it from the change feed once it is
                    // committed, as they do on every other replica.
                    if task.status.is_terminal() {
                        cluster.run_ending(task_id);
                    }
                    self.persister.update(Arc::clone(&task));
                } else {
                    self.persister.update(Arc::clone(&task));
                    self.publish(&task, status_changed);
                }
                if status_changed && task.status.is_terminal() {
                    self.record_finished(&task);
                }
                Some(task)
            }
            Ok(Applied::Unchanged) => Some(Arc::clone(entry)),
            Err(illegal) => {
                warn!(task_id = %task_id, %illegal, "illegal transition ignored");
                None
            }
        }
    }

    fn publish(&mut self, task: &Arc<Task>, status_changed: bool) {
        let Some(sender) = self.watchers.get(&task.id) else {
            return;
        };
        if sender.receiver_count() > 0 {
            sender.send_modify(|state| state.publish(Arc::clone(task), status_changed));
        }
        if task.status.is_terminal() || sender.receiver_count() == 0 {
            // Dropping the sender ends each watcher right after it has seen
            // the terminal state.
            self.watchers.remove(&task.id);
        }
    }

    /// Counts a finished task and keeps it only as long as retention allows.
    fn record_finished(&mut self, task: &Task) {
        let run_time = task
            .started_at
            .zip(task.completed_at)
            .and_then(|(started, completed)| completed.duration_since(started).ok());
        self.metrics_of(&task.kind)
            .task_finished(task.status, run_time);
        // Every way a task ends passes here: completion, failure, timeout,
        // cancel by a client or by shutdown.
        info!(
            task_id = %task.id,
            kind = %task.kind,
            status = %task.status,
            attempt = task.attempt,
            run_ms = run_time.map(|run_time| run_time.as_millis() as u64),
            error = %task.error,
            "task finished"
        );
        if self.cluster.is_some() {
            // The database keeps it; retention runs there.
            self.tasks.remove(&task.id);
            return;
        }
        self.finished.push_back((Instant::now(), task.id));
        while self.finished.len() > self.config.max_finished_tasks {
            if let Some((_, oldest)) = self.finished.pop_front() {
                self.forget(oldest);
            }
        }
        self.keep_within_budget();
    }

    /// Forgets finished tasks older than the retention period.
    fn forget_expired_tasks(&mut self) {
        while let Some((finished_at, id)) = self.finished.front().copied() {
            if finished_at.elapsed() < self.config.retention {
                break;
            }
            self.finished.pop_front();
            self.forget(id);
        }
    }

    /// Removes a finished task and its idempotency key.
    fn forget(&mut self, id: TaskId) {
        if let Some(task) = self.tasks.remove(&id) {
            self.held.release(id);
            self.persister.delete(id);
            if let Some(request_id) = &task.request_id
                && self.request_ids.get(request_id) == Some(&id)
            {
                self.request_ids.remove(request_id);
            }
            debug!(task_id = %id, "finished task forgotten");
        }
        self.watchers.remove(&id);
    }

    fn sweep_watchers(&mut self) {
        self.watchers
            .retain(|_, sender| sender.receiver_count() > 0);
    }

    /// Drops cancelled entries from the queue once they outnumber the live
    /// ones, so the queue stays proportional to `pending`.
    fn compact_queue(&mut self) {
        if self.queue.len() > 2 * self.pending + 64 {
            let tasks = &self.tasks;
            self.queue.retain(|id| {
                tasks
                    .get(id)
                    .is_some_and(|task| task.status == TaskStatus::Pending)
            });
        }
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

/// The text of a panic, when it has one.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}
