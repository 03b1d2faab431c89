//! The manager: one actor task owns every task, the FIFO queue, the running
//! set, the timers and the watchers; everyone else holds a [`ManagerHandle`].
//!
//! The handle sends commands over a bounded channel and awaits a `oneshot`
//! reply. Nothing here knows about gRPC.

mod actor;
mod persist;
mod watch;

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};

use crate::{
    metrics::Metrics,
    processor::Registry,
    store::{PostgresStore, SqliteStore, StoreError, StoreUrl},
    task::{NewTask, Task, TaskId, TaskStatus},
};

use persist::Backend;

pub use crate::store::{LIST_PAGE_BYTES, ListPage, ListQuery};
pub use watch::TaskWatch;

/// How long a processor may keep running after it was told to stop
/// (cancel, timeout, shutdown) before it is aborted and its slot freed.
pub const FORCED_STOP_AFTER: Duration = Duration::from_secs(1);

/// How many commands may wait for the actor before callers wait in turn.
const COMMAND_BUFFER: usize = 4096;

/// How many progress reports may wait for the actor before processors wait.
const PROGRESS_BUFFER: usize = 1024;

/// PostgreSQL: how long a read (Get, List) may take before the client hears
/// `UNAVAILABLE`. A connection whose network was cut never answers; a page
/// of the largest tasks reads in well under a second.
const STORE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the store takes writes, as the last commit (or probe) found.
/// gRPC health of the task service and `/readyz` follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreHealth {
    /// The last commit or probe succeeded (or nothing was written yet).
    Writable,
    /// The last one failed, for this reason; creates are refused.
    Failing(String),
}

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
}

/// Why the manager refused a command.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("task {0} not found")]
    NotFound(TaskId),
    #[error("task {id} is already {status} and cannot be cancelled")]
    NotCancellable { id: TaskId, status: TaskStatus },
    #[error("request_id {request_id:?} was already used with different parameters")]
    RequestIdConflict { request_id: String },
    #[error("the queue is full: {capacity} tasks are waiting")]
    QueueFull {
        capacity: usize,
        retry_after: Duration,
    },
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The store failed; nothing was changed (a create was not accepted).
    #[error("the task store is unavailable, try again: {0}")]
    Storage(String),
}

/// Counters that show what the manager holds, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManagerStats {
    pub tasks: usize,
    pub pending: usize,
    /// Slots in use: running processors, including ones told to stop.
    pub running: usize,
    /// Tasks with a watch channel open.
    pub watched_tasks: usize,
    /// Open watch streams over all tasks.
    pub watchers: usize,
    pub request_ids: usize,
    /// Finished tasks still retained.
    pub finished: usize,
}

type Reply<T> = oneshot::Sender<Result<T, ManagerError>>;

/// A message to the actor; each carries the sender of its reply.
#[derive(Debug)]
enum Command {
    Create {
        new_task: NewTask,
        respond_to: Reply<Arc<Task>>,
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
    Watch {
        id: TaskId,
        respond_to: Reply<TaskWatch>,
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
    Flush {
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
    /// What the persister last found of the store.
    store_health: tokio::sync::watch::Receiver<StoreHealth>,
}

impl ManagerHandle {
    /// Spawns the actor, with nothing persisted, on the current tokio
    /// runtime and returns its handle.
    pub fn spawn(config: ManagerConfig, registry: Registry, metrics: Metrics) -> Self {
        Self::spawn_on(config, registry, metrics, Backend::Memory, Vec::new())
    }

    /// Opens the store `url` names, takes back what it holds (SQLite) and
    /// spawns the actor.
    pub async fn start(
        config: ManagerConfig,
        registry: Registry,
        metrics: Metrics,
        url: &StoreUrl,
    ) -> Result<Self, StoreError> {
        let (backend, stored) = match url {
            StoreUrl::Memory => (Backend::Memory, Vec::new()),
            StoreUrl::Sqlite(path) => {
                let store = SqliteStore::open(path).await?;
                let stored = store.load().await?;
                (Backend::Sqlite(Arc::new(store)), stored)
            }
            StoreUrl::Postgres(url) => {
                let store = PostgresStore::connect(url).await?;
                (Backend::Postgres(store), Vec::new())
            }
        };
        Ok(Self::spawn_on(config, registry, metrics, backend, stored))
    }

    fn spawn_on(
        config: ManagerConfig,
        registry: Registry,
        metrics: Metrics,
        backend: Backend,
        stored: Vec<Task>,
    ) -> Self {
        let (commands, command_receiver) = mpsc::channel(COMMAND_BUFFER);
        let (progress_sender, progress_receiver) = mpsc::channel(PROGRESS_BUFFER);
        let shared_store = match &backend {
            Backend::Postgres(store) => Some(store.clone()),
            Backend::Memory | Backend::Sqlite(_) => None,
        };
        let (health_sender, store_health) = tokio::sync::watch::channel(StoreHealth::Writable);
        let mut actor = actor::Manager::new(
            config,
            registry,
            metrics,
            backend,
            progress_sender,
            progress_receiver,
            health_sender,
        );
        if !stored.is_empty() {
            actor.recover(stored);
        }
        tokio::spawn(actor.run(command_receiver));
        Self {
            commands,
            shared_store,
            store_health,
        }
    }

    /// Follows whether the store takes writes.
    pub fn store_health(&self) -> tokio::sync::watch::Receiver<StoreHealth> {
        self.store_health.clone()
    }

    /// Validated task in, stored `PENDING` task out (or, for a repeated
    /// `request_id` with the same parameters, the task created first).
    pub async fn create_task(&self, new_task: NewTask) -> Result<Arc<Task>, ManagerError> {
        self.call(|respond_to| Command::Create {
            new_task,
            respond_to,
        })
        .await
    }

    pub async fn get_task(&self, id: TaskId) -> Result<Arc<Task>, ManagerError> {
        if let Some(store) = &self.shared_store {
            return match read_in_time(store.get(id)).await {
                Ok(Some(task)) => Ok(Arc::new(task)),
                Ok(None) => Err(ManagerError::NotFound(id)),
                Err(error) => Err(storage_error(&error)),
            };
        }
        self.call(|respond_to| Command::Get { id, respond_to })
            .await
    }

    pub async fn list_tasks(&self, query: ListQuery) -> Result<ListPage, ManagerError> {
        if let Some(store) = &self.shared_store {
            return read_in_time(store.list(&query))
                .await
                .map_err(|error| storage_error(&error));
        }
        self.call(|respond_to| Command::List { query, respond_to })
            .await
    }

    /// Cancels a pending or running task; the returned task is already
    /// `CANCELLED`. Cancelling a cancelled task returns it unchanged.
    pub async fn cancel_task(&self, id: TaskId) -> Result<Arc<Task>, ManagerError> {
        self.call(|respond_to| Command::Cancel { id, respond_to })
            .await
    }

    /// Subscribes to a task; the watch's first state is the current one.
    pub async fn watch_task(&self, id: TaskId) -> Result<TaskWatch, ManagerError> {
        self.call(|respond_to| Command::Watch { id, respond_to })
            .await
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

/// A read of the shared store, given up after [`STORE_READ_TIMEOUT`].
async fn read_in_time<T>(
    read: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(STORE_READ_TIMEOUT, read)
        .await
        .unwrap_or(Err(StoreError::TimedOut {
            after: STORE_READ_TIMEOUT,
        }))
}

/// A store failure as the client sees it: its causes, no internals.
fn storage_error(error: &StoreError) -> ManagerError {
    tracing::error!(error = %crate::telemetry::error_chain(error), "the task store failed");
    ManagerError::Storage(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_completes_when_the_actor_is_gone() {
        let config = ManagerConfig {
            max_concurrent: 1,
            queue_capacity: 1,
            node_name: "test".into(),
            queue_full_retry_after: Duration::from_secs(1),
            retention: Duration::from_secs(60),
            max_finished_tasks: 10,
            lease: Duration::from_secs(30),
        };
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let manager = first
            .block_on(async { ManagerHandle::spawn(config, Registry::empty(), Metrics::new()) });
        // Dropping the runtime drops the actor, as a panic in it would.
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        second.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), manager.closed())
                .await
                .expect("closed() completes once the actor is gone");
            let answer = manager.stats().await;
            assert!(
                matches!(answer, Err(ManagerError::ShuttingDown)),
                "{answer:?}"
            );
        });
    }
}
