//! The manager: one actor task owns every task, the FIFO queue, the running
//! set, the timers and the watchers; everyone else holds a [`ManagerHandle`].
//!
//! The handle sends commands over a bounded channel and awaits a `oneshot`
//! reply. Nothing here knows about gRPC.

mod actor;
mod error;
mod journal;
mod persist;
mod scope;
mod watch;
mod watch_tasks;
mod workers;
pub use workers::worker_row;

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    metrics::{Metrics, Occupancy, WorkerKindOccupancy},
    processor::Registry,
    schedule::{NewSchedule, Schedule, ScheduleId},
    store::{
        MemoryStore, PostgresStore, SqliteStore, StoreError, StoreUrl, TaskStore,
        postgres::{ChangeFeed, ChangeLogStart, ChangesAfter, Watching},
        within,
    },
    task::{NewTask, PayloadLocation, Task, TaskId, TraceContext},
};

use actor::json_bytes as held_json_bytes;

pub use crate::store::{LIST_PAGE_BYTES, ListPage, ListQuery, SchedulePage, postgres::WorkerRow};
pub use error::ManagerError;
pub use journal::DEFAULT_JOURNAL_CAPACITY;
use journal::LOG_KEPT_ON;
pub use scope::{Scope, Scoped};
pub use watch::TaskWatch;
pub use watch_tasks::{
    BOOKMARK_AFTER, TaskFilter, TasksEvent, TasksWatch, TasksWatchEnd, WatchPosition, WatchStart,
};

/// How long a processor may keep running after it was told to stop
/// (cancel, timeout, shutdown) before it is aborted and its slot freed.
pub const FORCED_STOP_AFTER: Duration = Duration::from_secs(1);

/// How many commands may wait for the actor before callers wait in turn.
const COMMAND_BUFFER: usize = 4096;

/// How many progress reports may wait for the actor before processors wait.
pub(super) const PROGRESS_BUFFER: usize = 1024;

/// How often a create goes in again when the earlier task of its
/// `request_id` was forgotten while its payload was being read.
const CREATE_ATTEMPTS: usize = 3;

/// PostgreSQL: how long a read (Get, List, a watch's first state) may take
/// before the client hears `UNAVAILABLE`. A connection whose network went
/// silent never answers; a page of the largest tasks reads in well under a
/// second. Shorter than the 5 s a patient client waits, so it hears why.
const STORE_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// PostgreSQL: how long a cancel, a claim, a lease renewal or a hand-over
/// may take before it counts as failed (commits and probes have the same
/// deadline, from the store).
const STORE_CALL_TIMEOUT: Duration = crate::store::postgres::CALL_DEADLINE;

/// PostgreSQL: how long one round of retention may take. It deletes in
/// bounded chunks and nobody waits on it, but a silent network must not
/// stop it from ever running again.
const STORE_HOUSEKEEPING_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the store takes writes, as the last commit (or probe) found.
/// gRPC health of the task service and `/readyz` follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreHealth {
    /// The last commit or probe succeeded (or nothing was written yet).
    Writable,
    /// The last one failed, for this reason; creates are refused.
    Failing(String),
}

/// Makes a run's span (`task.run`) the child of the trace its task was
/// created in. The manager knows no tracing backend: the edge that sets one
/// up gives this (`telemetry::join_stored_trace`), so OpenTelemetry stays
/// there.
pub type JoinStoredTrace = fn(&tracing::Span, &TraceContext);

/// What the manager needs to know to run tasks.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// At most this many processors run at once.
    pub max_concurrent: usize,
    /// At most this many tasks wait in the queue; more is `QueueFull`.
    pub queue_capacity: usize,
    /// The name written into `Task.node` for runs on this process.
    pub node_name: String,
    /// How long a caller should wait before retrying on a full queue.
    pub queue_full_retry_after: Duration,
    /// Finished tasks are forgotten this long after they finished...
    pub retention: Duration,
    /// ...or sooner when more than this many have finished (oldest first).
    pub max_finished_tasks: usize,
    /// PostgreSQL store: how long a claim on a running task lasts unless
    /// renewed (every third of it).
    pub lease: Duration,
    /// Creates are refused while tasks' data and results held in memory
    /// would go past this many bytes (memory and SQLite stores).
    pub max_held_bytes: u64,
    /// A task whose runs were cut short this many times in a row (its
    /// server died or handed it over) fails instead of running again.
    pub max_cut_short_runs: u32,
    /// At most this many tasks of a kind run at once here, within
    /// `max_concurrent`; kinds not listed have no limit of their own.
    pub kind_limits: HashMap<String, usize>,
    /// `WatchTasks`: at most this many changes are kept for streams to
    /// resume from (besides being kept no longer than ten minutes).
    pub watch_journal_capacity: usize,
    /// Per tenant, at most this many of its tasks wait (pending or
    /// retrying) at once; a create past it is `TenantQuotaFull`.
    pub tenant_max_waiting: HashMap<String, usize>,
    /// Joins each run's span to the trace of its task's create; `None`
    /// leaves every run the root of a trace of its own.
    pub join_stored_trace: Option<JoinStoredTrace>,
}

/// The default of [`ManagerConfig::max_cut_short_runs`].
pub const DEFAULT_MAX_CUT_SHORT_RUNS: u32 = 5;

/// Counters that show what the manager holds, for tests and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagerStats {
    pub tasks: usize,
    pub pending: usize,
    /// Tasks waiting for a retry's back-off (then for a slot).
    pub retrying: usize,
    /// Slots in use: running processors, including ones told to stop.
    pub running: usize,
    /// Tasks with a watch channel open.
    pub watched_tasks: usize,
    /// Open watch streams over all tasks.
    pub watchers: usize,
    /// Open `WatchTasks` streams.
    pub task_streams: usize,
    pub request_ids: usize,
    /// Finished tasks still retained.
    pub finished: usize,
    /// Bytes of tasks' data and results held in memory (compact JSON),
    /// what `max_held_bytes` bounds.
    pub held_bytes: u64,
    /// Schedules held here (memory and SQLite; PostgreSQL holds none).
    pub schedules: usize,
    /// Per worker kind: streams connected here, and tasks waiting while
    /// none is.
    pub worker_kinds: Vec<WorkerKindOccupancy>,
}

impl ManagerStats {
    /// The figures the metrics' gauges show.
    pub fn occupancy(&self) -> Occupancy {
        Occupancy {
            pending: self.pending,
            retrying: self.retrying,
            running: self.running,
            watchers: self.watchers,
            retained_tasks: self.tasks,
            held_bytes: self.held_bytes,
            worker_kinds: self.worker_kinds.clone(),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, ManagerError>>;

/// A store as opened for a manager: where its commits go, and what else
/// the handle and the actor need of it.
struct Opened {
    commits: Arc<dyn TaskStore>,
    /// SQLite: where finished tasks' payloads are read from.
    payload_store: Option<Weak<SqliteStore>>,
    /// PostgreSQL: the shared truth, read directly by the handle and
    /// followed by the actor through its change feed, which listens before
    /// anything is served (a change announced before would never reach this
    /// replica's watchers).
    /// The change log's start is read once the feed listens.
    shared_store: Option<(PostgresStore, ChangeFeed, ChangeLogStart)>,
    /// SQLite: what the file held at start.
    stored: Vec<Task>,
    /// SQLite: the schedules the file held at start.
    stored_schedules: Vec<Schedule>,
}

impl Opened {
    fn memory() -> Self {
        Self {
            commits: Arc::new(MemoryStore),
            payload_store: None,
            shared_store: None,
            stored: Vec::new(),
            stored_schedules: Vec::new(),
        }
    }
}

/// A message to the actor; each carries the sender of its reply.
#[derive(Debug)]
enum Command {
    Create {
        new_task: NewTask,
        /// The size of `new_task.data`, measured by the caller so the actor
        /// never walks a payload.
        data_bytes: u64,
        respond_to: Reply<Arc<Task>>,
    },
    /// `BatchCreateTasks`: all or nothing, in order.
    CreateBatch {
        /// Each task with the size of its data, measured by the caller.
        new_tasks: Vec<(NewTask, u64)>,
        respond_to: Reply<Vec<Arc<Task>>>,
    },
    Get {
        id: TaskId,
        respond_to: Reply<Arc<Task>>,
    },
    List {
        query: ListQuery,
        respond_to: Reply<ListPage>,
    },
    Cancel {
        id: TaskId,
        respond_to: Reply<Arc<Task>>,
    },
    Delete {
        id: TaskId,
        respond_to: Reply<()>,
    },
    Watch {
        id: TaskId,
        respond_to: Reply<TaskWatch>,
    },
    /// `WatchTasks`: a subscription to the change journal, with the initial
    /// list when asked for.
    WatchTasks {
        filter: TaskFilter,
        start: WatchStart,
        /// PostgreSQL: the change log, as turned on for this stream.
        log: Option<Watching>,
        respond_to: Reply<WatchTasksStart>,
    },
    StopAccepting {
        respond_to: Reply<()>,
    },
    StopStarting {
        respond_to: Reply<()>,
    },
    WaitUntilIdle {
        respond_to: Reply<()>,
    },
    CancelRunning {
        reason: String,
        respond_to: Reply<usize>,
    },
    Stats {
        respond_to: Reply<ManagerStats>,
    },
    /// How many of a tenant's tasks wait (local shape), for its quota, and
    /// how many of `request_ids` name a task of the tenant already.
    TenantWaiting {
        tenant: String,
        request_ids: Vec<String>,
        respond_to: Reply<(u64, usize)>,
    },
    Schedule(ScheduleCommand),
    Flush {
        respond_to: Reply<()>,
    },
}

/// What the actor answers a new `WatchTasks` stream: where it starts in the
/// journal and, while the initial list is to be sent, the list's rest:
/// after which task it goes on, and the matching tasks after it as of the
/// subscription.
#[derive(Debug)]
struct WatchTasksStart {
    subscription: journal::Subscription,
    initial_list: Option<watch_tasks::InitialList>,
}

/// A request about schedules, for the shape to serve: the local shape holds
/// them (and a SQLite file keeps a copy), the cluster shape asks the shared
/// table.
#[derive(Debug)]
enum ScheduleCommand {
    Create {
        /// Boxed: the other requests are small.
        new_schedule: Box<NewSchedule>,
        respond_to: Reply<Arc<Schedule>>,
    },
    Get {
        id: ScheduleId,
        respond_to: Reply<Arc<Schedule>>,
    },
    List {
        after: Option<ScheduleId>,
        limit: usize,
        /// Only this tenant's schedules; `None`: every tenant's.
        tenant: Option<String>,
        respond_to: Reply<SchedulePage>,
    },
    /// Pause (`paused`) or resume.
    SetPaused {
        id: ScheduleId,
        paused: bool,
        respond_to: Reply<Arc<Schedule>>,
    },
    Delete {
        id: ScheduleId,
        respond_to: Reply<()>,
    },
}

/// The way to the manager actor. Cheap to clone; the actor stops when the
/// last handle is dropped.
#[derive(Clone, Debug)]
pub struct ManagerHandle {
    commands: mpsc::Sender<Command>,
    /// PostgreSQL: reads go straight to the shared database, which any
    /// replica may have written.
    shared_store: Option<PostgresStore>,
    /// SQLite: where the payloads of finished tasks are, which the actor
    /// does not hold; the handle reads them, so the actor never waits on
    /// the disk. Weak: the file closes when the actor ends, as before,
    /// however long handles live.
    payload_store: Option<Weak<SqliteStore>>,
    /// What the persister last found of the store.
    store_health: tokio::sync::watch::Receiver<StoreHealth>,
    /// `ManagerConfig::tenant_max_waiting`, checked by `Scoped` creates.
    tenant_max_waiting: Arc<HashMap<String, usize>>,
    /// How long a client refused by its tenant's quota should wait.
    quota_retry_after: Duration,
}

impl ManagerHandle {
    /// Spawns the actor, with nothing persisted, on the current tokio
    /// runtime and returns its handle.
    pub fn spawn(config: ManagerConfig, registry: Registry, metrics: Metrics) -> Self {
        Self::spawn_on(config, registry, metrics, Opened::memory())
    }

    /// Opens the store `url` names, takes back what it holds (SQLite) and
    /// spawns the actor.
    pub async fn start(
        config: ManagerConfig,
        registry: Registry,
        metrics: Metrics,
        url: &StoreUrl,
    ) -> Result<Self, StoreError> {
        let opened = match url {
            StoreUrl::Memory => Opened::memory(),
            StoreUrl::Sqlite(path) => {
                let store = Arc::new(SqliteStore::open(path).await?);
                let stored = store.load().await?;
                let stored_schedules = store.load_schedules().await?;
                Opened {
                    commits: Arc::clone(&store) as Arc<dyn TaskStore>,
                    payload_store: Some(Arc::downgrade(&store)),
                    shared_store: None,
                    stored,
                    stored_schedules,
                }
            }
            StoreUrl::Postgres(url) => {
                let store = PostgresStore::connect(url).await?;
                let feed = store.listen().await?;
                let log_start = store.change_log_start().await?;
                Opened {
                    commits: Arc::new(store.clone()),
                    payload_store: None,
                    shared_store: Some((store, feed, log_start)),
                    stored: Vec::new(),
                    stored_schedules: Vec::new(),
                }
            }
        };
        Ok(Self::spawn_on(config, registry, metrics, opened))
    }

    fn spawn_on(
        config: ManagerConfig,
        registry: Registry,
        metrics: Metrics,
        opened: Opened,
    ) -> Self {
        let (commands, command_receiver) = mpsc::channel(COMMAND_BUFFER);
        let tenant_max_waiting = Arc::new(config.tenant_max_waiting.clone());
        let quota_retry_after = config.queue_full_retry_after;
        let Opened {
            commits,
            payload_store,
            shared_store,
            stored,
            stored_schedules,
        } = opened;
        let (health_sender, store_health) = tokio::sync::watch::channel(StoreHealth::Writable);
        // The one place that asks which store this is: it picks the shape.
        let shared_store = match shared_store {
            Some((store, feed, log_start)) => {
                let kinds = registry.kinds().into_iter().map(str::to_owned).collect();
                let shape = actor::Cluster::new(store.clone(), kinds, feed);
                let mut actor =
                    actor::Manager::new(config, registry, metrics, commits, health_sender, shape);
                actor.number_journal_by_log(log_start);
                tokio::spawn(actor.run(command_receiver));
                Some(store)
            }
            None => {
                let shape = actor::Local::new(config.max_held_bytes, stored_schedules);
                let mut actor =
                    actor::Manager::new(config, registry, metrics, commits, health_sender, shape);
                if !stored.is_empty() {
                    actor.recover(stored);
                }
                tokio::spawn(actor.run(command_receiver));
                None
            }
        };
        Self {
            commands,
            shared_store,
            payload_store,
            store_health,
            tenant_max_waiting,
            quota_retry_after,
        }
    }

    /// Follows whether the store takes writes.
    pub fn store_health(&self) -> tokio::sync::watch::Receiver<StoreHealth> {
        self.store_health.clone()
    }

    /// Validated task in, stored `PENDING` task out (or, for a repeated
    /// `request_id` with the same parameters, the task created first).
    pub async fn create_task(&self, new_task: NewTask) -> Result<Arc<Task>, ManagerError> {
        let data_bytes = new_task.data.as_deref().map_or(0, held_json_bytes);
        // Only a repeated request_id can be answered with a finished task,
        // whose data must then be compared here, after reading it back.
        let repeatable = new_task.request_id.is_some().then(|| new_task.clone());
        let mut new_task = Some(new_task);
        for _ in 0..CREATE_ATTEMPTS {
            let Some(sent) = new_task.take().or_else(|| repeatable.clone()) else {
                break;
            };
            let task = self
                .call(|respond_to| Command::Create {
                    new_task: sent,
                    data_bytes,
                    respond_to,
                })
                .await?;
            if task.payload == PayloadLocation::InTask {
                return Ok(task);
            }
            let id = task.id;
            match (self.with_payloads(vec![task]).await?.pop(), &repeatable) {
                (Some(found), Some(asked)) if !found.was_created_from(asked) => {
                    return Err(ManagerError::RequestIdConflict {
                        request_id: asked.request_id.clone().unwrap_or_default(),
                    });
                }
                (Some(found), _) => return Ok(found),
                // Forgotten by retention since: its request_id is free
                // again, so the create goes in anew.
                (None, Some(_)) => continue,
                (None, None) => return Err(ManagerError::NotFound(id)),
            }
        }
        Err(ManagerError::Storage(
            "the task with this request_id was being forgotten; try again".into(),
        ))
    }

    /// Validated tasks in, stored tasks out, in the same order, all or
    /// nothing: each `PENDING`, or for a repeated `request_id` with the
    /// same parameters the task created first.
    pub async fn create_tasks(
        &self,
        new_tasks: Vec<NewTask>,
    ) -> Result<Vec<Arc<Task>>, ManagerError> {
        // Kept to compare with what a repeated request_id finds, once its
        // payload is read back (a finished task's may be in the file only).
        let asked: Vec<Option<NewTask>> = new_tasks
            .iter()
            .map(|new_task| new_task.request_id.is_some().then(|| new_task.clone()))
            .collect();
        let new_tasks = new_tasks
            .into_iter()
            .map(|new_task| {
                let data_bytes = new_task.data.as_deref().map_or(0, held_json_bytes);
                (new_task, data_bytes)
            })
            .collect();
        let tasks = self
            .call(|respond_to| Command::CreateBatch {
                new_tasks,
                respond_to,
            })
            .await?;
        if tasks
            .iter()
            .all(|task| task.payload == PayloadLocation::InTask)
        {
            return Ok(tasks);
        }
        let count = tasks.len();
        let tasks = self.with_payloads(tasks).await?;
        if tasks.len() != count {
            return Err(ManagerError::Storage(
                "a task with one of the request_ids was being forgotten; try again".into(),
            ));
        }
        for (task, asked) in tasks.iter().zip(&asked) {
            if let Some(asked) = asked
                && !task.was_created_from(asked)
            {
                return Err(ManagerError::RequestIdConflict {
                    request_id: asked.request_id.clone().unwrap_or_default(),
                });
            }
        }
        Ok(tasks)
    }

    pub async fn get_task(&self, id: TaskId) -> Result<Arc<Task>, ManagerError> {
        if let Some(store) = &self.shared_store {
            return match within(STORE_READ_TIMEOUT, store.get(id)).await {
                Ok(Some(task)) => Ok(Arc::new(task)),
                Ok(None) => Err(ManagerError::NotFound(id)),
                Err(error) => Err(storage_error(&error)),
            };
        }
        let task = self
            .call(|respond_to| Command::Get { id, respond_to })
            .await?;
        self.with_payload(task).await
    }

    pub async fn list_tasks(&self, query: ListQuery) -> Result<ListPage, ManagerError> {
        if let Some(store) = &self.shared_store {
            return within(STORE_READ_TIMEOUT, store.list(&query))
                .await
                .map_err(|error| storage_error(&error));
        }
        let page = self
            .call(|respond_to| Command::List { query, respond_to })
            .await?;
        self.page_with_payloads(page).await
    }

    /// Cancels a pending or running task; the returned task is already
    /// `CANCELLED`. Cancelling a cancelled task returns it unchanged.
    pub async fn cancel_task(&self, id: TaskId) -> Result<Arc<Task>, ManagerError> {
        let task = self
            .call(|respond_to| Command::Cancel { id, respond_to })
            .await?;
        self.with_payload(task).await
    }

    /// Forgets a finished task and its data at once, on every store.
    pub async fn delete_task(&self, id: TaskId) -> Result<(), ManagerError> {
        self.call(|respond_to| Command::Delete { id, respond_to })
            .await
    }

    /// Stores a new schedule; it fires from now on (unless created paused).
    pub async fn create_schedule(
        &self,
        new_schedule: NewSchedule,
    ) -> Result<Arc<Schedule>, ManagerError> {
        self.call(|respond_to| {
            Command::Schedule(ScheduleCommand::Create {
                new_schedule: Box::new(new_schedule),
                respond_to,
            })
        })
        .await
    }

    pub async fn get_schedule(&self, id: ScheduleId) -> Result<Arc<Schedule>, ManagerError> {
        self.call(|respond_to| Command::Schedule(ScheduleCommand::Get { id, respond_to }))
            .await
    }

    /// Up to `limit` schedules in creation order, after `after`, of
    /// `tenant` when it names one.
    pub async fn list_schedules(
        &self,
        after: Option<ScheduleId>,
        limit: usize,
        tenant: Option<String>,
    ) -> Result<SchedulePage, ManagerError> {
        self.call(|respond_to| {
            Command::Schedule(ScheduleCommand::List {
                after,
                limit,
                tenant,
                respond_to,
            })
        })
        .await
    }

    /// Pauses (`paused`) or resumes a schedule; returns it as it now is.
    pub async fn set_schedule_paused(
        &self,
        id: ScheduleId,
        paused: bool,
    ) -> Result<Arc<Schedule>, ManagerError> {
        self.call(|respond_to| {
            Command::Schedule(ScheduleCommand::SetPaused {
                id,
                paused,
                respond_to,
            })
        })
        .await
    }

    /// Deletes a schedule; the tasks it created stay.
    pub async fn delete_schedule(&self, id: ScheduleId) -> Result<(), ManagerError> {
        self.call(|respond_to| Command::Schedule(ScheduleCommand::Delete { id, respond_to }))
            .await
    }

    /// Subscribes to a task; the watch's first state is the current one.
    pub async fn watch_task(&self, id: TaskId) -> Result<TaskWatch, ManagerError> {
        let mut watch = self
            .call(|respond_to| Command::Watch { id, respond_to })
            .await?;
        // Only a finished task can lack its payload, and then this first
        // state is also the last.
        if let Some(first) = watch.first_state_mut()
            && first.payload == PayloadLocation::InStore
        {
            *first = self.with_payload(Arc::clone(first)).await?;
        }
        Ok(watch)
    }

    /// Subscribes to the changes of the tasks that match `filter`, from
    /// `start`. A position this process cannot resume from is
    /// `WatchPositionLost`.
    pub async fn watch_tasks(
        &self,
        filter: TaskFilter,
        start: WatchStart,
    ) -> Result<TasksWatch, ManagerError> {
        // PostgreSQL: changes are recorded in the change log from now on,
        // before the stream subscribes, so its tokens resume anywhere.
        let log = match &self.shared_store {
            Some(store) => Some(
                within(STORE_READ_TIMEOUT, store.watch_change_log(LOG_KEPT_ON))
                    .await
                    .map_err(|error| storage_error(&error))?,
            ),
            None => None,
        };
        let WatchTasksStart {
            subscription,
            initial_list,
        } = self
            .call(|respond_to| Command::WatchTasks {
                filter: filter.clone(),
                start,
                log,
                respond_to,
            })
            .await?;
        let mut watch = TasksWatch::new(filter, subscription, initial_list, self.clone());
        // PostgreSQL: a resume the change log cannot serve is refused now,
        // before the stream starts, as a local journal refuses it.
        watch.read_log_page().await?;
        Ok(watch)
    }

    /// PostgreSQL: up to `limit` changes of the change log after `after`,
    /// each with its task's data; `None` when the log let some of them go.
    /// (No change log, no changes.)
    async fn logged_changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Option<Vec<Arc<journal::Change>>>, ManagerError> {
        let Some(store) = &self.shared_store else {
            return Ok(Some(Vec::new()));
        };
        let changes = match within(STORE_READ_TIMEOUT, store.changes_after(after, limit)).await {
            Ok(ChangesAfter::Changes(changes)) => changes,
            Ok(ChangesAfter::Pruned) => return Ok(None),
            Err(error) => return Err(storage_error(&error)),
        };
        let changes = changes
            .into_iter()
            .map(|change| {
                let before = journal::Before::of_logged(change.deleted, change.task.revision);
                let mut task = change.task;
                if !change.complete {
                    // Too large to announce whole: the result is read back.
                    task.payload = PayloadLocation::InStore;
                }
                Arc::new(journal::Change {
                    seq: change.position.unwrap_or_default(),
                    task: Arc::new(task),
                    before,
                })
            })
            .collect();
        Ok(Some(changes))
    }

    /// Refuses new tasks from now on (`ShuttingDown`); everything else,
    /// including running tasks, carries on.
    pub async fn stop_accepting(&self) -> Result<(), ManagerError> {
        self.call(|respond_to| Command::StopAccepting { respond_to })
            .await
    }

    /// Starts no more tasks; running ones carry on.
    pub async fn stop_starting(&self) -> Result<(), ManagerError> {
        self.call(|respond_to| Command::StopStarting { respond_to })
            .await
    }

    /// Completes when no processor runs (at once if none does).
    pub async fn wait_until_idle(&self) -> Result<(), ManagerError> {
        self.call(|respond_to| Command::WaitUntilIdle { respond_to })
            .await
    }

    /// Cancels every running task with `reason` and starts no new ones.
    /// Returns how many were cancelled.
    pub async fn cancel_running(&self, reason: impl Into<String>) -> Result<usize, ManagerError> {
        let reason = reason.into();
        self.call(|respond_to| Command::CancelRunning { reason, respond_to })
            .await
    }

    /// Completes when every change decided so far is durable.
    pub async fn flush(&self) -> Result<(), ManagerError> {
        self.call(|respond_to| Command::Flush { respond_to }).await
    }

    pub async fn stats(&self) -> Result<ManagerStats, ManagerError> {
        self.call(|respond_to| Command::Stats { respond_to }).await
    }

    /// Completes when the actor is gone. Outside a shutdown that means it
    /// died (a bug): the server then exits so it is restarted, instead of
    /// answering `UNAVAILABLE` forever while its health says `SERVING`.
    pub async fn closed(&self) {
        self.commands.closed().await;
    }

    /// `task` with its payload, read back from the file if the actor let
    /// it go; `NotFound` if retention forgot the task meanwhile.
    async fn with_payload(&self, task: Arc<Task>) -> Result<Arc<Task>, ManagerError> {
        let id = task.id;
        self.with_payloads(vec![task])
            .await?
            .pop()
            .ok_or(ManagerError::NotFound(id))
    }

    /// `page` with its payloads, cut short (before reading any payload from
    /// the file) where those read from the file would pass
    /// [`LIST_PAGE_BYTES`], as the PostgreSQL store does: a page of large
    /// finished tasks is never read whole. The
    /// first task always stays; a page cut short goes on after its last
    /// task. The API then cuts the encoded response exactly.
    async fn page_with_payloads(&self, page: ListPage) -> Result<ListPage, ManagerError> {
        let in_store: Vec<TaskId> = page
            .tasks
            .iter()
            .filter(|task| task.payload == PayloadLocation::InStore)
            .map(|task| task.id)
            .collect();
        if in_store.is_empty() {
            return Ok(page);
        }
        let Some(store) = self.payload_store()? else {
            return Ok(page);
        };
        let sizes = store
            .payload_sizes(&in_store)
            .await
            .map_err(|error| storage_error(&error))?;
        let mut kept: Vec<Arc<Task>> = Vec::with_capacity(page.tasks.len());
        let mut used = 0;
        let mut next_after = page.next_after;
        for task in page.tasks {
            let bytes = match task.payload {
                // Already in memory, shared with the actor: sending it reads
                // nothing. The budget bounds what is read from the file; the
                // API cuts the encoded page exactly.
                PayloadLocation::InTask => 0,
                PayloadLocation::InStore => match sizes.get(&task.id) {
                    Some(bytes) => *bytes,
                    None => continue, // forgotten meanwhile
                },
            };
            if !kept.is_empty() && used + bytes > LIST_PAGE_BYTES as u64 {
                next_after = kept.last().map(|task| task.id);
                break;
            }
            used += bytes;
            kept.push(task);
        }
        Ok(ListPage {
            tasks: self.with_payloads(kept).await?,
            next_after,
        })
    }

    /// SQLite: the file, while the actor (which owns it) lives; `None` for
    /// the other stores, which never let a payload go.
    fn payload_store(&self) -> Result<Option<Arc<SqliteStore>>, ManagerError> {
        match &self.payload_store {
            None => Ok(None),
            Some(store) => store.upgrade().map(Some).ok_or(ManagerError::ShuttingDown),
        }
    }

    /// `tasks` with their payloads, reading those the actor let go from the
    /// file in one query; a task retention forgot meanwhile is left out.
    async fn with_payloads(&self, tasks: Vec<Arc<Task>>) -> Result<Vec<Arc<Task>>, ManagerError> {
        let missing: Vec<TaskId> = tasks
            .iter()
            .filter(|task| task.payload == PayloadLocation::InStore)
            .map(|task| task.id)
            .collect();
        if missing.is_empty() {
            return Ok(tasks);
        }
        let Some(store) = self.payload_store()? else {
            return Ok(tasks);
        };
        let mut payloads = store
            .payloads(&missing)
            .await
            .map_err(|error| storage_error(&error))?;
        Ok(tasks
            .into_iter()
            .filter_map(|task| {
                if task.payload == PayloadLocation::InTask {
                    return Some(task);
                }
                let payload = payloads.remove(&task.id)?;
                Some(Arc::new(Task {
                    data: payload.data,
                    result: payload.result,
                    payload: PayloadLocation::InTask,
                    ..(*task).clone()
                }))
            })
            .collect())
    }

    /// Sends one command and waits for its reply. An actor that is gone
    /// means the server is stopping.
    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, ManagerError> {
        let (respond_to, reply) = oneshot::channel();
        self.commands
            .send(command(respond_to))
            .await
            .map_err(|_| ManagerError::ShuttingDown)?;
        reply.await.map_err(|_| ManagerError::ShuttingDown)?
    }
}

/// A store failure as the client sees it: its causes, no internals.
fn storage_error(error: &StoreError) -> ManagerError {
    tracing::error!(error = %crate::errors::error_chain(error), "the task store failed");
    ManagerError::Storage(error.to_string())
}

#[cfg(test)]
mod tests;
