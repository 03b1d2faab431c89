//! Retries and cut-short runs across restarts on SQLite: a `RETRYING` task
//! is in the file and the next process runs it at its `run_after`, after a
//! graceful shutdown and after `kill -9`; a run that a stop cuts short runs
//! again as a new attempt, and the start after the `max_cut_short_runs`-th
//! one fails the task instead.
//!
//! A read on SQLite is answered from the actor's memory, which may be ahead
//! of the file. Before a `kill -9` the tests therefore make sure what they
//! saw is durable: they create a task (delayed by an hour, so it never
//! runs), whose answer waits for its batch to commit, and batches commit in
//! order.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use serde_json::json;
use task_processor::{
    config::Config,
    pb,
    store::{SqliteStore, StoreUrl},
};

use crate::{
    process::start_binary,
    retries::{create_with_policy, policy},
    stores::fresh_sqlite_path,
    support::{
        Client, TestServer, eventually, get, json, request, status_of, test_config,
        wait_for_attempt, wait_for_status,
    },
};

/// The back-off of the retried tasks: long enough that a restart happens
/// within it, short enough to wait for.
const BACKOFF: Duration = Duration::from_secs(4);

fn time_of(timestamp: &Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(timestamp.expect("set")).expect("a valid time")
}

/// Returns once everything the server decided before this call is in its
/// file: a create is answered only when its batch has committed, after
/// every batch before it.
async fn wait_until_durable(client: &mut Client) {
    client
        .create_task(pb::CreateTaskRequest {
            run_after: Some((SystemTime::now() + Duration::from_secs(3600)).into()),
            ..request("commit barrier", "echo", None)
        })
        .await
        .expect("the barrier is created");
}

/// A `flaky` task that fails its first run, may run twice, and waits
/// [`BACKOFF`] in between; returns it once it is `RETRYING`.
async fn retrying_flaky_task(client: &mut Client) -> pb::Task {
    let task =
        create_with_policy(client, "flaky", json!({"failures": 1}), policy(2, BACKOFF)).await;
    let retrying = wait_for_status(client, &task.id, pb::TaskStatus::Retrying).await;
    assert_eq!(retrying.attempt, 1);
    assert_eq!(retrying.error, "flaky failure 1");
    retrying
}

/// Checks, on the server after a restart, that the task `before` still
/// waits for its back-off (while that has not passed), then runs once more
/// on `node`, not before its `run_after`, and completes.
async fn assert_retried_after_restart(client: &mut Client, before: &pb::Task, node: &str) {
    let run_after = time_of(&before.run_after);
    let reloaded = get(client, &before.id).await;
    if SystemTime::now() < run_after {
        assert_eq!(
            status_of(&reloaded),
            pb::TaskStatus::Retrying,
            "{reloaded:?}"
        );
        assert_eq!(reloaded.attempt, 1);
        assert_eq!(time_of(&reloaded.run_after), run_after, "its back-off kept");
    }
    let done = wait_for_status(client, &before.id, pb::TaskStatus::Completed).await;
    assert_eq!(done.attempt, 2, "one more run, not a restart of the first");
    assert_eq!(json(&done.result), Some(json!({"attempts": 2})));
    assert_eq!(done.node, node, "run by the new process");
    assert_eq!(done.error, "");
    let started = time_of(&done.started_at);
    assert!(
        started >= run_after,
        "started at {started:?}, before its run_after {run_after:?}"
    );
}

/// The arguments of the binary on `store`, one slot, named `node`, with
/// `extra` flags.
fn binary_arguments(store: &str, node: &str, extra: &[&str]) -> Vec<String> {
    let mut arguments: Vec<String> = [
        "--store",
        store,
        "--node-name",
        node,
        "--max-concurrent",
        "1",
        "--drain-period",
        "0s",
        "--shutdown-grace",
        "0s",
    ]
    .iter()
    .map(|argument| (*argument).to_owned())
    .collect();
    arguments.extend(extra.iter().map(|argument| (*argument).to_owned()));
    arguments
}

fn start_on(arguments: &[String]) -> crate::process::Process {
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    start_binary(&arguments, &[])
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// An in-process server on the file at `path`, named `node`, one slot.
async fn start_in_process(path: &Path, node: &str, max_cut_short_runs: u32) -> TestServer {
    TestServer::start_with(Config {
        store: StoreUrl::Sqlite(path.to_path_buf()),
        node_name: node.into(),
        max_concurrent: 1,
        max_cut_short_runs,
        ..test_config()
    })
    .await
}

/// Shuts the in-process server down gracefully and waits until the file
/// is free for the next one.
async fn shut_down(mut server: TestServer, path: &Path) {
    server.begin_shutdown().await.expect("stopped cleanly");
    drop(server);
    eventually("the server to let go of the file", || async {
        SqliteStore::open(path).await.ok().map(drop)
    })
    .await;
}

#[tokio::test]
async fn a_retrying_task_survives_a_graceful_restart_and_runs_at_its_run_after() {
    let path = fresh_sqlite_path();
    let server = start_in_process(&path, "before", 5).await;
    let mut client = server.client().await;
    let retrying = retrying_flaky_task(&mut client).await;
    shut_down(server, &path).await;

    let restarted = start_in_process(&path, "after", 5).await;
    let mut client = restarted.client().await;
    assert_retried_after_restart(&mut client, &retrying, "after").await;
}

#[tokio::test]
async fn a_retrying_task_survives_kill_9_and_runs_at_its_run_after() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = sqlite_url(&directory.path().join("tasks.db"));
    let mut process = start_on(&binary_arguments(&store, "before", &[]));
    let mut client = process.client().await;
    let retrying = retrying_flaky_task(&mut client).await;
    wait_until_durable(&mut client).await;
    process.kill_hard();

    let restarted = start_on(&binary_arguments(&store, "after", &[]));
    let mut client = restarted.client().await;
    assert_retried_after_restart(&mut client, &retrying, "after").await;
}

/// The task the cut-short tests run: a sleep of an hour, `RUNNING` through
/// every stop.
async fn create_long_run(client: &mut Client) -> pb::Task {
    let task = client
        .create_task(request(
            "cut short",
            "sleep",
            Some(json!({"seconds": 3600})),
        ))
        .await
        .expect("created")
        .into_inner();
    let running = wait_for_attempt(client, &task.id, 1).await;
    assert_eq!(status_of(&running), pb::TaskStatus::Running);
    running
}

/// Checks that the task `id` runs again as `attempt` on `node`.
async fn assert_runs_again(client: &mut Client, id: &str, attempt: u32, node: &str) {
    let rerun = wait_for_attempt(client, id, attempt).await;
    assert_eq!(status_of(&rerun), pb::TaskStatus::Running, "{rerun:?}");
    assert_eq!(rerun.node, node);
    assert_eq!(rerun.error, "", "a run cut short is no failed run");
}

/// Checks that the start after the second cut-short run failed the task
/// `id` without running it, saying why.
async fn assert_failed_as_cut_short_too_often(client: &mut Client, id: &str) {
    let failed = wait_for_status(client, id, pb::TaskStatus::Failed).await;
    assert!(
        failed.error.contains("cut short 2 times"),
        "the error says its runs were cut short: {:?}",
        failed.error
    );
    assert!(failed.completed_at.is_some());
    assert_eq!(json(&failed.result), None);
}

#[tokio::test]
async fn runs_cut_short_by_kill_9_run_again_until_max_cut_short_runs_then_the_task_fails() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = sqlite_url(&directory.path().join("tasks.db"));
    let limit = ["--max-cut-short-runs", "2"];

    let mut first = start_on(&binary_arguments(&store, "first", &limit));
    let mut client = first.client().await;
    let task = create_long_run(&mut client).await;
    wait_until_durable(&mut client).await;
    first.kill_hard();

    // Cut short once: it runs again, as a new attempt.
    let mut second = start_on(&binary_arguments(&store, "second", &limit));
    let mut client = second.client().await;
    assert_runs_again(&mut client, &task.id, 2, "second").await;
    wait_until_durable(&mut client).await;
    second.kill_hard();

    // Cut short twice: the next start fails it.
    let third = start_on(&binary_arguments(&store, "third", &limit));
    let mut client = third.client().await;
    assert_failed_as_cut_short_too_often(&mut client, &task.id).await;
}

#[tokio::test]
async fn runs_cut_short_by_graceful_shutdowns_count_toward_max_cut_short_runs_too() {
    let path = fresh_sqlite_path();
    let first = start_in_process(&path, "first", 2).await;
    let mut client = first.client().await;
    let task = create_long_run(&mut client).await;
    shut_down(first, &path).await;

    let second = start_in_process(&path, "second", 2).await;
    let mut client = second.client().await;
    assert_runs_again(&mut client, &task.id, 2, "second").await;
    shut_down(second, &path).await;

    let third = start_in_process(&path, "third", 2).await;
    let mut client = third.client().await;
    assert_failed_as_cut_short_too_often(&mut client, &task.id).await;
}
