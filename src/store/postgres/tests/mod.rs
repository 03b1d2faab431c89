//! The PostgreSQL store against a real database (`TASK_PROCESSOR_TEST_POSTGRES`,
//! default `postgres://postgres@127.0.0.1:5432/test`), each test in a schema
//! of its own: the helpers, and writes, reads and connecting. Claims, leases
//! and retention are in `claims`; the change feed in `feed`.

use serde_json::json;
use sqlx::{Connection, PgConnection};

use std::{
    collections::BTreeMap,
    io::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use super::*;
use crate::{
    store::row::micros,
    task::{NewTask, Progress, TaskEvent},
};

const DEFAULT_BASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn a_page_stops_at_its_limit_or_its_bytes_but_always_holds_one_task() {
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let sized = |sizes: &[usize]| -> Vec<(Uuid, i64)> {
        ids.iter()
            .zip(sizes)
            .map(|(id, size)| (*id, i64::try_from(*size).expect("small")))
            .collect()
    };
    let mib = 1024 * 1024;
    // All fit, none beyond: the last page.
    assert_eq!(cut_page(&sized(&[1, 2, 3]), 3), (ids[..3].to_vec(), None));
    // One more than the limit matched: the next page starts after it.
    let (page, next) = cut_page(&sized(&[1, 2, 3, 4]), 3);
    assert_eq!(
        (page, next),
        (ids[..3].to_vec(), Some(TaskId::from_uuid(ids[2])))
    );
    // The bytes run out before the limit does.
    let (page, next) = cut_page(&sized(&[2 * mib, 2 * mib, mib, 1]), 10);
    assert_eq!(
        (page, next),
        (ids[..2].to_vec(), Some(TaskId::from_uuid(ids[1])))
    );
    // A task larger than a page goes alone.
    let (page, next) = cut_page(&sized(&[5 * mib, 1]), 10);
    assert_eq!(
        (page, next),
        (ids[..1].to_vec(), Some(TaskId::from_uuid(ids[0])))
    );
}

/// A schema of one test's own, dropped when the test ends, even by a
/// panic.
struct TestSchema {
    base_url: String,
    schema: String,
    /// The base URL with the schema as its search_path.
    url: String,
}

impl TestSchema {
    /// `None` (after saying so on stderr) when there is no PostgreSQL to
    /// test against, unless `CI=true`, where that is a failure.
    async fn create(test: &str) -> Option<Self> {
        let base_url = std::env::var("TASK_PROCESSOR_TEST_POSTGRES")
            .unwrap_or_else(|_| DEFAULT_BASE_URL.to_owned());
        let shown = StoreUrl::Postgres(base_url.clone()).to_string();
        let reason = match tokio::time::timeout(PATIENCE, PgConnection::connect(&base_url)).await {
            Ok(Ok(mut connection)) => {
                let schema = format!("tp_lib_{}", Uuid::now_v7().simple());
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut connection)
                    .await
                    .expect("create the test schema");
                let _ = connection.close().await;
                let separator = if base_url.contains('?') { '&' } else { '?' };
                let url = format!("{base_url}{separator}options=-c%20search_path%3D{schema}");
                return Some(Self {
                    base_url,
                    schema,
                    url,
                });
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {PATIENCE:?}"),
        };
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("PostgreSQL at {shown} is unreachable ({reason}), and CI=true");
        }
        // Straight to stderr: libtest captures print macros.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED store::postgres::tests::{test}: PostgreSQL at {shown} is unreachable \
             ({reason}); set TASK_PROCESSOR_TEST_POSTGRES to test against one"
        );
        None
    }

    async fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url).await.expect("connect")
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // Best effort, on a thread of its own: Drop cannot await, and the
        // test's runtime may be unwinding.
        let base_url = self.base_url.clone();
        let statement = format!(
            "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.schema
        );
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut connection) = PgConnection::connect(&base_url).await {
                    let _ = sqlx::raw_sql(statement.as_str())
                        .execute(&mut connection)
                        .await;
                    let _ = connection.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// Opens a test schema and its store, or skips the test.
macro_rules! store_or_skip {
    ($test:literal) => {{
        let Some(schema) = TestSchema::create($test).await else {
            return;
        };
        let store = schema.store().await;
        (schema, store)
    }};
}

/// Now, to the microsecond the columns keep, so a task read back
/// equals the one written.
fn now() -> SystemTime {
    let micros = micros(SystemTime::now());
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).expect("after 1970"))
}

fn task(name: &str) -> Task {
    Task::new(
        TaskId::generate(),
        NewTask {
            name: name.to_owned(),
            description: format!("the {name} task"),
            kind: "echo".to_owned(),
            data: Some(Arc::new(json!({"name": name, "n": 1}))),
            timeout_seconds: 60,
            labels: BTreeMap::new(),
            request_id: None,
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

fn without_data(task: &Task) -> Task {
    let mut task = task.clone();
    task.data = None;
    task
}

async fn insert(store: &PostgresStore, tasks: &[Task]) -> Vec<Inserted> {
    let tasks: Vec<Arc<Task>> = tasks.iter().cloned().map(Arc::new).collect();
    let batch = Batch {
        inserts: tasks.clone(),
        updates: Vec::new(),
        changes: tasks,
    };
    store.commit("api", &batch).await.expect("commit").inserted
}

async fn update(store: &PostgresStore, origin: &str, task: &Task) -> bool {
    let task = Arc::new(task.clone());
    let batch = Batch {
        inserts: Vec::new(),
        updates: vec![Arc::clone(&task)],
        changes: vec![task],
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

async fn expire_lease(store: &PostgresStore, id: TaskId) {
    sqlx::query("UPDATE tasks SET lease_until = now() - interval '1 hour' WHERE id = $1")
        .bind(id.as_uuid())
        .execute(&store.pool)
        .await
        .expect("expire the lease");
}

async fn lease_until_is_null(store: &PostgresStore, id: TaskId) -> bool {
    sqlx::query_scalar("SELECT lease_until IS NULL FROM tasks WHERE id = $1")
        .bind(id.as_uuid())
        .fetch_one(&store.pool)
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
    let (_schema, store) = store_or_skip!("concurrent_inserts_of_one_request_id_store_one_task");
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
        .fetch_one(&store.pool)
        .await
        .expect("count");
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn updates_are_written_only_while_the_run_holds_the_task() {
    let (_schema, store) = store_or_skip!("updates_are_written_only_while_the_run_holds_the_task");
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
    assert!(!lease_until_is_null(&store, kept.id).await);
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
    assert!(lease_until_is_null(&store, kept.id).await);
    // Finished: nothing more is written.
    assert!(!update(&store, "n1", &completed).await);

    // Taken over after the lease ran out: the old run's update is refused.
    expire_lease(&store, taken.id).await;
    let retaken = store.claim("n2", 1, HOUR, None).await.expect("claim");
    assert_eq!(ids(&retaken), [taken.id]);
    let late = applied(&run_taken, TaskEvent::Complete(Arc::new(json!("late"))));
    assert!(!update(&store, "n1", &late).await);
    let current = applied(&retaken[0], TaskEvent::Fail("boom".to_owned()));
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
        changes: Vec::new(),
    };
    let outcome = store.commit("n1", &batch).await.expect("commit");
    assert_eq!(outcome.inserted, [Inserted::New]);
    assert_eq!(outcome.updated, [false]);
    let stored = store.get(cancelled.id).await.expect("get").expect("row");
    assert_eq!(stored.status, TaskStatus::Cancelled);
    assert_eq!(stored.result, None);
    assert_eq!(store.get(fresh.id).await.expect("get"), Some(fresh));
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
    .execute(&store.pool)
    .await
    .expect("fake a newer migration");
    match PostgresStore::connect(&schema.url).await {
        Err(StoreError::NewerSchema {
            found, supported, ..
        }) => {
            assert_eq!(found, 99999);
            assert_eq!(supported, crate::store::latest_version(&MIGRATOR));
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
