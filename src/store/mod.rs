//! Where tasks live: nowhere but memory, one SQLite file, or a PostgreSQL
//! database shared by many replicas. One setting (`store`) chooses.
//!
//! The manager actor stays the one writer of its replica: it hands the
//! store batches of [`Write`]s and never waits on them in its loop. Nothing
//! here knows about the actor or about gRPC.

mod batch;
pub mod postgres;
#[macro_use]
mod row;
mod schedule_row;
pub mod sqlite;

use std::{collections::BTreeMap, fmt, path::PathBuf, str::FromStr, sync::Arc};

use crate::{
    schedule::{Schedule, ScheduleId},
    task::{Task, TaskId, TaskStatus},
};

pub use batch::{Batch, BatchOutcome, ClaimAsk, Inserted, MemoryStore, TaskStore};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Which store, as the `store` setting names it.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory`: tasks are lost when the process ends.
    Memory,
    /// `sqlite://PATH`: one file on a local disk, one server process.
    Sqlite(PathBuf),
    /// `postgres://…`: a database shared by every replica.
    Postgres(String),
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text == "memory" {
            return Ok(StoreUrl::Memory);
        }
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite://task-processor.db".into());
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(text.to_owned()));
        }
        Err(format!(
            "{:?} is not a store: use memory, sqlite://PATH or postgres://USER@HOST/DATABASE",
            redact(text)
        ))
    }
}

/// Shows the store without a password, for logs and `--print-config`.
impl fmt::Display for StoreUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Memory => formatter.write_str("memory"),
            StoreUrl::Sqlite(path) => write!(formatter, "sqlite://{}", path.display()),
            StoreUrl::Postgres(url) => formatter.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the {store} store")]
    Open {
        store: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot bring the {store} schema up to date")]
    Migrate {
        store: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error(
        "the {store} schema is at version {found}, newer than this task-processor knows \
         (up to {supported}); run a task-processor at least as new as the one that wrote it"
    )]
    NewerSchema {
        store: String,
        found: i64,
        supported: i64,
    },
    #[error("the database failed")]
    Database(#[from] sqlx::Error),
    #[error("task {id} in the database cannot be read: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("schedule {id} in the database cannot be read: {reason}")]
    CorruptSchedule { id: ScheduleId, reason: String },
    #[error("the database did not answer within {}", humantime::format_duration(*after))]
    TimedOut { after: std::time::Duration },
}

/// `call`, given up after `deadline` with [`StoreError::TimedOut`].
///
/// A database whose network went silent never answers and never fails: a
/// statement in flight waits until TCP gives up, many minutes later. Every
/// call to a shared store goes through this, so no caller (a client's
/// request, or the actor's claims and renewals) waits longer than its
/// deadline; dropping the call drops its connection.
pub async fn within<T>(
    deadline: std::time::Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or(Err(StoreError::TimedOut { after: deadline }))
}

/// One change to persist. The manager folds the changes of one batch so
/// each task appears once, with its latest state.
#[derive(Clone, Debug)]
pub enum Write {
    /// A new task, stored whole.
    Insert(Arc<Task>),
    /// A new state of a stored task: only what can change is written.
    Update(Arc<Task>),
    /// A finished task that retention lets go.
    Delete(TaskId),
}

impl Write {
    pub fn task_id(&self) -> TaskId {
        match self {
            Write::Insert(task) | Write::Update(task) => task.id,
            Write::Delete(id) => *id,
        }
    }
}

/// The most a `ListTasks` page may carry, encoded: gRPC's default receive
/// limit (grpc-go, grpc-java, tonic), so that any client can list. A store
/// stops reading a page once its tasks' payloads (data and results) pass
/// it, so a page of large tasks is never read whole; the API then cuts the
/// encoded response exactly.
pub const LIST_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// A filter and a position for listing tasks in creation order.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only tasks in one of these statuses; empty means any.
    pub statuses: Vec<TaskStatus>,
    /// Only tasks that carry every one of these pairs.
    pub labels: BTreeMap<String, String>,
    /// Start after this id (exclusive); `None` starts at the oldest task.
    pub after: Option<TaskId>,
    /// At most this many tasks.
    pub limit: usize,
    /// Only the tasks of this tenant; `None` for every tenant's (a caller
    /// bound to no tenant). Set by the manager from the caller's scope.
    pub tenant: Option<String>,
}

/// The tenant part of a list's or a watch's filter: `None` passes every
/// task, `Some(tenant)` only that tenant's (`Some("")`: the tasks created
/// without one).
pub fn tenant_matches(wanted: Option<&str>, tenant: &str) -> bool {
    wanted.is_none_or(|wanted| wanted == tenant)
}

/// The filter of `ListTasks` (and `WatchTasks`): a task in `status` with
/// `labels` passes when `statuses` is empty or holds its status, and it
/// carries every pair of `wanted_labels`.
pub fn status_and_labels_match(
    statuses: &[TaskStatus],
    wanted_labels: &BTreeMap<String, String>,
    status: TaskStatus,
    labels: &BTreeMap<String, String>,
) -> bool {
    (statuses.is_empty() || statuses.contains(&status))
        && wanted_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

/// One page of a listing.
#[derive(Clone, Debug)]
pub struct ListPage {
    pub tasks: Vec<Arc<Task>>,
    /// Where the next page starts; `None` on the last page.
    pub next_after: Option<TaskId>,
}

/// One page of schedules in id (creation) order.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulePage {
    pub schedules: Vec<Arc<Schedule>>,
    /// Where the next page starts; `None` on the last page.
    pub next_after: Option<ScheduleId>,
}

/// The highest migration version this binary carries.
fn latest_version(migrator: &sqlx::migrate::Migrator) -> i64 {
    migrator
        .iter()
        .map(|migration| migration.version)
        .max()
        .unwrap_or(0)
}

/// Refuses a database whose recorded migrations (`found`: the highest
/// version in `_sqlx_migrations`, if it has one) go past what `migrator`
/// carries: a newer binary wrote it, and this one would misread it.
fn refuse_newer_schema(
    store: &str,
    migrator: &sqlx::migrate::Migrator,
    found: Option<i64>,
) -> Result<(), StoreError> {
    let supported = latest_version(migrator);
    match found {
        Some(found) if found > supported => Err(StoreError::NewerSchema {
            store: store.to_owned(),
            found,
            supported,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_and_print_without_secrets() {
        assert_eq!("memory".parse::<StoreUrl>(), Ok(StoreUrl::Memory));
        assert_eq!(
            "sqlite:///var/lib/tasks.db".parse::<StoreUrl>(),
            Ok(StoreUrl::Sqlite("/var/lib/tasks.db".into()))
        );
        let postgres: StoreUrl = "postgres://app:hunter2@db:5432/tasks"
            .parse()
            .expect("postgres url");
        assert_eq!(postgres.to_string(), "postgres://app:***@db:5432/tasks");
        assert!(!format!("{postgres:?}").contains("hunter2"));
        let error = "mysql://app:hunter2@db/tasks"
            .parse::<StoreUrl>()
            .expect_err("not a store");
        assert!(!error.contains("hunter2"), "{error}");
        assert!("sqlite://".parse::<StoreUrl>().is_err());
    }
}
