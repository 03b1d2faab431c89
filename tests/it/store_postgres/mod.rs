//! The PostgreSQL store through its public API, against a real database
//! (`TASK_PROCESSOR_TEST_POSTGRES`, see `stores`), each test in a schema of
//! its own from `stores::fresh_postgres_schema`: the helpers, and writes,
//! reads and connecting. Claims, leases and retention are in `claims`; the
//! change feed in `feed`. Tests that need no database (page cuts, the
//! notification payloads) are unit tests next to the code.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::json;
use sqlx::{PgPool, postgres::PgPoolOptions};
use task_processor::{
    store::{
        ClaimAsk, ListPage, ListQuery, PostgresStore, StoreError,
        postgres::{
            Batch, Cancelled, Change, ChangeFeed, ClaimRequest, FeedEvent, Inserted, KindRoom,
        },
    },
    task::{Failure, NewTask, Progress, Task, TaskEvent, TaskId, TaskStatus, TraceContext},
};

use crate::stores::fresh_postgres_schema;

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

const HOUR: Duration = Duration::from_secs(3600);

/// One test's schema: its URL, and a pool of its own on it for the SQL a
/// test runs behind the store's back (expiring a lease, faking a newer
/// migration, reading a column the store does not return).
struct Schema {
    url: String,
    sql: PgPool,
}

impl Schema {
    async fn create() -> Self {
        let url = fresh_postgres_schema().await;
        let sql = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("connect to the test schema");
        Self { url, sql }
    }

    async fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url).await.expect("connect")
    }
}

/// A fresh schema and the store on it; returns from the test (skips it)
/// when there is no PostgreSQL to test against, as `postgres_available`
/// decides.
macro_rules! store_or_skip {
    ($test:literal) => {{
        if !$crate::stores::postgres_available(concat!(module_path!(), "::", $test)) {
            return;
        }
        let schema = $crate::store_postgres::Schema::create().await;
        let store = schema.store().await;
        (schema, store)
    }};
}

/// Microseconds since the Unix epoch, as the columns keep times.
fn micros(time: SystemTime) -> i64 {
    let since = time.duration_since(UNIX_EPOCH).expect("after 1970");
    i64::try_from(since.as_micros()).expect("before the year 294 000")
}

/// Now, to the microsecond the columns keep, so a task read back
/// equals the one written.
fn now() -> SystemTime {
    UNIX_EPOCH
        + Duration::from_micros(u64::try_from(micros(SystemTime::now())).expect("after 1970"))
}

fn task(name: &str) -> Task {
    Task::new(
        TaskId::generate(),
        NewTask {
            tenant: Default::default(),
            name: name.to_owned(),
            description: format!("the {name} task"),
            kind: "echo".to_owned(),
            data: Some(Arc::new(json!({"name": name, "n": 1}))),
            timeout_seconds: 60,
            labels: BTreeMap::new(),
            request_id: None,
            scheduling: Default::default(),
            // Kept by the store, so every test here reads it back too.
            trace_context: TraceContext {
                traceparent: format!("00-{:032x}-00f067aa0ba902b7-01", fastrand::u128(1..)),
                tracestate: "vendor=value".to_owned(),
            },
        },
        now(),
    )
}

fn with_request_id(mut task: Task, request_id: &str) -> Task {
    task.request_id = Some(request_id.to_owned());
    task
}

fn with_labels(mut task: Task, labels: &[(&str, &str)]) -> Task {
    task.labels = labels
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    task
}

/// A task that finished `ago` before now, as if it ran and completed.
fn finished(name: &str, ago: Duration) -> Task {
    let mut task = task(name);
    let completed_at = now() - ago;
    task.status = TaskStatus::Completed;
    task.result = Some(Arc::new(json!("done")));
    task.attempt = 1;
    task.node = "n0".to_owned();
    task.revision = 3;
    task.started_at = Some(completed_at);
    task.completed_at = Some(completed_at);
    task
}

fn applied(task: &Task, event: TaskEvent) -> Task {
    let mut next = task.clone();
    next.apply(event, SystemTime::now()).expect("legal event");
    next
}

/// A task as the change feed announces it: without `data` nor the trace
/// context (a run reads that from the row it claims).
fn without_data(task: &Task) -> Task {
    let mut task = task.clone();
    task.data = None;
    task.trace_context = TraceContext::default();
    task
}

async fn insert(store: &PostgresStore, tasks: &[Task]) -> Vec<Inserted> {
    let tasks: Vec<Arc<Task>> = tasks.iter().cloned().map(Arc::new).collect();
    let batch = Batch {
        inserts: tasks.clone(),
        updates: Vec::new(),
        deletes: Vec::new(),
        changes: tasks,
        ..Batch::default()
    };
    store.commit("api", &batch).await.expect("commit").inserted
}

async fn update(store: &PostgresStore, origin: &str, task: &Task) -> bool {
    let task = Arc::new(task.clone());
    let batch = Batch {
        inserts: Vec::new(),
        updates: vec![Arc::clone(&task)],
        deletes: Vec::new(),
        changes: vec![task],
        ..Batch::default()
    };
    let outcome = store.commit(origin, &batch).await.expect("commit");
    outcome.updated == [true]
}

async fn next_change(feed: &mut ChangeFeed) -> Change {
    match tokio::time::timeout(PATIENCE, feed.next()).await {
        Ok(Ok(FeedEvent::Change(change))) => change,
        other => panic!("expected a change, got {other:?}"),
    }
}

async fn expire_lease(schema: &Schema, id: TaskId) {
    sqlx::query("UPDATE tasks SET lease_until = now() - interval '1 hour' WHERE id = $1")
        .bind(id.as_uuid())
        .execute(&schema.sql)
        .await
        .expect("expire the lease");
}

async fn lease_until_is_null(schema: &Schema, id: TaskId) -> bool {
    sqlx::query_scalar("SELECT lease_until IS NULL FROM tasks WHERE id = $1")
        .bind(id.as_uuid())
        .fetch_one(&schema.sql)
        .await
        .expect("read the lease")
}

fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|task| task.id).collect()
}

#[tokio::test]
async fn tasks_round_trip_and_list_in_keyset_pages_with_filters() {
    let (_schema, store) = store_or_skip!("tasks_round_trip_and_list_in_keyset_pages_with_filters");
    let mut first = with_labels(task("first"), &[("team", "a"), ("env", "prod")]);
    first.data = Some(Arc::new(json!({"text": "a\u{0}b", "deep": [[1.5, null]]})));
    first.request_id = Some("request-1".to_owned());
    let second = with_labels(task("second"), &[("team", "a")]);
    let third = with_labels(task("third"), &[("team", "b"), ("env", "prod")]);
    let fourth = finished("fourth", Duration::from_secs(1));
    let fifth = with_labels(task("fifth"), &[("team", "a"), ("env", "prod"), ("x", "y")]);
    let all = [first, second, third, fourth, fifth];
    let outcomes = insert(&store, &all).await;
    assert_eq!(outcomes, vec![Inserted::New; 5]);

    for task in &all {
        assert_eq!(store.get(task.id).await.expect("get").as_ref(), Some(task));
    }
    assert_eq!(store.get(TaskId::generate()).await.expect("get"), None);
    assert_eq!(store.count_pending().await.expect("count"), 4);

    let list = |statuses: Vec<TaskStatus>, labels: &[(&str, &str)], after, limit| ListQuery {
        tenant: Default::default(),
        statuses,
        labels: labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect(),
        after,
        limit,
    };
    let names = |page: &ListPage| -> Vec<String> {
        page.tasks.iter().map(|task| task.name.clone()).collect()
    };

    // Everything, in pages of two.
    let page = store.list(&list(vec![], &[], None, 2)).await.expect("list");
    assert_eq!(names(&page), ["first", "second"]);
    assert_eq!(*page.tasks[0], all[0]);
    assert_eq!(page.next_after, Some(all[1].id));
    let page = store
        .list(&list(vec![], &[], page.next_after, 2))
        .await
        .expect("list");
    assert_eq!(names(&page), ["third", "fourth"]);
    assert_eq!(page.next_after, Some(all[3].id));
    let page = store
        .list(&list(vec![], &[], page.next_after, 2))
        .await
        .expect("list");
    assert_eq!(names(&page), ["fifth"]);
    assert_eq!(page.next_after, None);
    // A page that ends exactly at the last match is the last page.
    let page = store.list(&list(vec![], &[], None, 5)).await.expect("list");
    assert_eq!(page.tasks.len(), 5);
    assert_eq!(page.next_after, None);

    // Labels: every pair must match.
    let page = store
        .list(&list(vec![], &[("team", "a"), ("env", "prod")], None, 10))
        .await
        .expect("list");
    assert_eq!(names(&page), ["first", "fifth"]);
    let page = store
        .list(&list(vec![], &[("team", "a"), ("env", "prod")], None, 1))
        .await
        .expect("list");
    assert_eq!(names(&page), ["first"]);
    assert_eq!(page.next_after, Some(all[0].id));
    let page = store
        .list(&list(
            vec![],
            &[("team", "a"), ("env", "prod")],
            page.next_after,
            1,
        ))
        .await
        .expect("list");
    assert_eq!(names(&page), ["fifth"]);
    assert_eq!(page.next_after, None);
    let page = store
        .list(&list(vec![], &[("team", "c")], None, 10))
        .await
        .expect("list");
    assert!(page.tasks.is_empty());

    // Statuses, alone and with labels.
    let page = store
        .list(&list(vec![TaskStatus::Completed], &[], None, 10))
        .await
        .expect("list");
    assert_eq!(names(&page), ["fourth"]);
    let page = store
        .list(&list(
            vec![TaskStatus::Completed, TaskStatus::Pending],
            &[("env", "prod")],
            None,
            10,
        ))
        .await
        .expect("list");
    assert_eq!(names(&page), ["first", "third", "fifth"]);
    let page = store
        .list(&list(vec![TaskStatus::Running], &[], None, 10))
        .await
        .expect("list");
    assert!(page.tasks.is_empty());
}

#[tokio::test]
async fn a_taken_request_id_returns_the_task_that_holds_it() {
    let (_schema, store) = store_or_skip!("a_taken_request_id_returns_the_task_that_holds_it");
    let original = with_request_id(task("original"), "key-1");
    assert_eq!(
        insert(&store, std::slice::from_ref(&original)).await,
        [Inserted::New]
    );

    // Across batches.
    let again = with_request_id(task("again"), "key-1");
    let other = with_request_id(task("other"), "key-2");
    let outcomes = insert(&store, &[again.clone(), other.clone()]).await;
    assert_eq!(
        outcomes,
        [Inserted::Existing(original.clone()), Inserted::New]
    );
    assert_eq!(store.get(again.id).await.expect("get"), None);

    // Inside one batch: the first wins, the later ones get it.
    let one = with_request_id(task("one"), "key-3");
    let two = with_request_id(task("two"), "key-3");
    let plain = task("plain");
    let three = with_request_id(task("three"), "key-3");
    let also_original = with_request_id(task("also original"), "key-1");
    let outcomes = insert(
        &store,
        &[
            one.clone(),
            two.clone(),
            plain.clone(),
            three.clone(),
            also_original,
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        [
            Inserted::New,
            Inserted::Existing(one.clone()),
            Inserted::New,
            Inserted::Existing(one.clone()),
            Inserted::Existing(original),
        ]
    );
    assert_eq!(store.get(two.id).await.expect("get"), None);
    assert_eq!(store.get(three.id).await.expect("get"), None);
    assert_eq!(store.get(plain.id).await.expect("get"), Some(plain));

    // A batch that repeats a stored task (a retried commit) is told so.
    assert_eq!(
        insert(&store, std::slice::from_ref(&other)).await,
        [Inserted::Existing(other)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inserts_of_one_request_id_store_one_task() {
    let (schema, store) = store_or_skip!("concurrent_inserts_of_one_request_id_store_one_task");
    let mut inserts = tokio::task::JoinSet::new();
    for index in 0..20 {
        let store = store.clone();
        inserts.spawn(async move {
            let task = with_request_id(task(&format!("racer {index}")), "the-key");
            let outcome = insert(&store, std::slice::from_ref(&task)).await;
            (task, outcome)
        });
    }
    let mut winners = Vec::new();
    let mut holders = Vec::new();
    while let Some(joined) = inserts.join_next().await {
        let (task, outcome) = joined.expect("insert task");
        match outcome.as_slice() {
            [Inserted::New] => winners.push(task),
            [Inserted::Existing(holder)] => holders.push(holder.clone()),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one insert stores the task");
    assert_eq!(holders.len(), 19);
    assert!(holders.iter().all(|holder| *holder == winners[0]));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
        .fetch_one(&schema.sql)
        .await
        .expect("count");
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn updates_are_written_only_while_the_run_holds_the_task() {
    let (schema, store) = store_or_skip!("updates_are_written_only_while_the_run_holds_the_task");
    let (taken, cancelled, kept) = (task("taken"), task("cancelled"), task("kept"));
    insert(&store, &[taken.clone(), cancelled.clone(), kept.clone()]).await;
    let claimed = store.claim("n1", 3, HOUR, None).await.expect("claim");
    let [run_taken, run_cancelled, run_kept] = <[Task; 3]>::try_from(claimed).expect("three");

    // Progress is written while held; a terminal state clears the lease.
    let progressed = applied(
        &run_kept,
        TaskEvent::Progress(Progress {
            percent: 50,
            message: "half".to_owned(),
        }),
    );
    assert!(update(&store, "n1", &progressed).await);
    assert_eq!(
        store
            .get(kept.id)
            .await
            .expect("get")
            .expect("row")
            .progress,
        progressed.progress
    );
    assert!(!lease_until_is_null(&schema, kept.id).await);
    // Another node cannot write it.
    assert!(!update(&store, "n2", &progressed).await);
    let completed = applied(
        &progressed,
        TaskEvent::Complete(Arc::new(json!({"ok": true}))),
    );
    assert!(update(&store, "n1", &completed).await);
    let stored = store.get(kept.id).await.expect("get").expect("row");
    assert_eq!(stored.status, TaskStatus::Completed);
    assert_eq!(stored.result, completed.result);
    assert_eq!(stored.revision, completed.revision);
    assert!(lease_until_is_null(&schema, kept.id).await);
    // Finished: nothing more is written.
    assert!(!update(&store, "n1", &completed).await);

    // Taken over after the lease ran out: the old run's update is refused.
    expire_lease(&schema, taken.id).await;
    let retaken = store.claim("n2", 1, HOUR, None).await.expect("claim");
    assert_eq!(ids(&retaken), [taken.id]);
    let late = applied(&run_taken, TaskEvent::Complete(Arc::new(json!("late"))));
    assert!(!update(&store, "n1", &late).await);
    let current = applied(&retaken[0], TaskEvent::Fail(Failure::permanent("boom")));
    assert!(update(&store, "n2", &current).await);
    assert_eq!(
        store.get(taken.id).await.expect("get").expect("row").error,
        "boom"
    );

    // Cancelled elsewhere: refused too, and the batch goes on.
    let outcome = store
        .cancel(cancelled.id, "stop", "api")
        .await
        .expect("cancel");
    assert!(matches!(outcome, Cancelled::Now(_)));
    let late = applied(&run_cancelled, TaskEvent::Complete(Arc::new(json!("late"))));
    let fresh = task("fresh");
    let batch = Batch {
        inserts: vec![Arc::new(fresh.clone())],
        updates: vec![Arc::new(late)],
        deletes: Vec::new(),
        changes: Vec::new(),
        ..Batch::default()
    };
    let outcome = store.commit("n1", &batch).await.expect("commit");
    assert_eq!(outcome.inserted, [Inserted::New]);
    assert_eq!(outcome.updated, [false]);
    let stored = store.get(cancelled.id).await.expect("get").expect("row");
    assert_eq!(stored.status, TaskStatus::Cancelled);
    assert_eq!(stored.result, None);
    assert_eq!(store.get(fresh.id).await.expect("get"), Some(fresh));
}

/// The newest migration the binary embeds: the highest version among the
/// files of `migrations/postgres` (`<version>_<description>.sql`).
fn latest_migration() -> i64 {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
    std::fs::read_dir(directory)
        .expect("the PostgreSQL migrations")
        .filter_map(|entry| {
            let name = entry.expect("a migration").file_name();
            let name = name.to_str()?;
            name.strip_suffix(".sql")?.split('_').next()?.parse().ok()
        })
        .max()
        .expect("at least one migration")
}

#[tokio::test]
async fn connect_refuses_a_schema_newer_than_this_binary() {
    let (schema, store) = store_or_skip!("connect_refuses_a_schema_newer_than_this_binary");
    // Connecting again to an up-to-date schema is fine.
    let again = schema.store().await;
    assert_eq!(again.name(), store.name());
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999, 'from the future', true, '\\x00'::bytea, 0)",
    )
    .execute(&schema.sql)
    .await
    .expect("fake a newer migration");
    match PostgresStore::connect(&schema.url).await {
        Err(StoreError::NewerSchema {
            found, supported, ..
        }) => {
            assert_eq!(found, 99999);
            assert_eq!(supported, latest_migration());
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}

#[tokio::test]
async fn errors_name_the_store_without_its_password() {
    // Nothing listens on port 1: the connection is refused at once.
    let url = "postgres://app:hunter2@127.0.0.1:1/tasks";
    match PostgresStore::connect(url).await {
        Err(StoreError::Open { store, .. }) => {
            assert_eq!(store, "postgres://app:***@127.0.0.1:1/tasks");
        }
        other => panic!("expected Open, got {other:?}"),
    }
}

// Declared last: they use `store_or_skip!`, which must be defined before them.
mod claims;
mod feed;
mod schedules;
