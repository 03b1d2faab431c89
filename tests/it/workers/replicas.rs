//! Workers on PostgreSQL replicas: a worker may connect to any replica,
//! which claims tasks of its kinds for it; a cancel made on another replica
//! reaches it; with workers on several replicas, work goes to all of them.

use std::{collections::HashSet, future::Future};

use serde_json::json;
use task_processor::{
    config::Config,
    pb::{self, worker_service_client::WorkerServiceClient},
};

use super::{RawWorker, worker_config};
use crate::{
    stores::{self, StoreUnderTest},
    support::{TestServer, create, eventually, get, request, status_of, wait_for_status},
};

async fn two_replicas() -> (TestServer, TestServer) {
    let store = stores::fresh_store().await;
    let replica = |name: &str| Config {
        store: store.clone(),
        node_name: name.into(),
        ..worker_config()
    };
    let a = TestServer::start_with(replica("replica-a")).await;
    let b = TestServer::start_with(replica("replica-b")).await;
    (a, b)
}

async fn on_postgres(test: &str, body: impl Future<Output = ()>) {
    if stores::postgres_available(test) {
        stores::on_store(StoreUnderTest::Postgres, body).await;
    }
}

#[tokio::test]
async fn a_worker_on_one_replica_runs_and_is_cancelled_from_the_other() {
    on_postgres(module_path!(), async {
        let (a, b) = two_replicas().await;
        let mut client_a = a.client().await;
        let mut worker = RawWorker::connect(&b, &["remote"], 1, "on-b").await;
        let task = create(&mut client_a, "made on a", "remote", Some(json!({"n": 1}))).await;
        let run = worker.next_assignment().await;
        assert_eq!(run.id, task.id);
        assert_eq!(run.node, "replica-b/on-b");
        crate::support::eventually("the worker's node to be stored", || {
            let mut client = client_a.clone();
            let id = task.id.clone();
            async move { (get(&mut client, &id).await.node == "replica-b/on-b").then_some(()) }
        })
        .await;

        client_a
            .cancel_task(pb::CancelTaskRequest {
                id: task.id.clone(),
            })
            .await
            .expect("cancel on a");
        let cancellation = worker.next_cancellation().await;
        assert_eq!(cancellation.task_id, task.id);
        assert_eq!(cancellation.cause(), pb::CancellationCause::Cancelled);
        worker.fail(&run.id, run.attempt, "stopped", false).await;
        let cancelled = wait_for_status(&client_a, &task.id, pb::TaskStatus::Cancelled).await;
        assert_eq!(cancelled.result, None);

        // The next one, made on a, completes on b.
        let next = create(&mut client_a, "next", "remote", None).await;
        let run = worker.next_assignment().await;
        assert_eq!(run.id, next.id);
        worker.progress(&run, 50, "half").await;
        worker.complete(&run.id, run.attempt, json!("from b")).await;
        let done = wait_for_status(&client_a, &next.id, pb::TaskStatus::Completed).await;
        assert_eq!(done.node, "replica-b/on-b");
    })
    .await;
}

#[tokio::test]
async fn no_replica_claims_a_worker_kind_without_a_worker_and_work_spreads_over_both() {
    on_postgres(module_path!(), async {
        let (a, b) = two_replicas().await;
        let mut client = a.client().await;
        let mut tasks = Vec::new();
        for index in 0..4 {
            tasks.push(create(&mut client, &format!("task {index}"), "remote", None).await);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        for task in &tasks {
            assert_eq!(
                status_of(&get(&mut client, &task.id).await),
                pb::TaskStatus::Pending,
                "no replica takes a task no worker of it can run"
            );
        }
        let mut on_a = RawWorker::connect(&a, &["remote"], 2, "on-a").await;
        let mut on_b = RawWorker::connect(&b, &["remote"], 2, "on-b").await;
        // Each takes two and holds them: four tasks, two slots each, so
        // both replicas must have claimed two for their worker.
        let mut nodes = HashSet::new();
        let mut runs = Vec::new();
        for worker in [&mut on_a, &mut on_b] {
            for _ in 0..2 {
                let run = worker.next_assignment().await;
                nodes.insert(run.node.clone());
                runs.push(run);
            }
        }
        for (index, run) in runs.iter().enumerate() {
            let worker = if index < 2 { &on_a } else { &on_b };
            worker.complete(&run.id, run.attempt, json!("ok")).await;
        }
        assert_eq!(
            nodes,
            HashSet::from(["replica-a/on-a".to_owned(), "replica-b/on-b".to_owned()])
        );
        for task in &tasks {
            wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
        }
    })
    .await;
}

#[tokio::test]
async fn list_workers_on_any_replica_shows_the_workers_of_every_replica() {
    on_postgres(module_path!(), async {
        let (a, b) = two_replicas().await;
        let _on_a = RawWorker::connect(&a, &["remote"], 2, "on-a").await;
        let on_b = RawWorker::connect(&b, &["remote", "other-remote"], 3, "on-b").await;
        let expected = vec![
            ("on-a".to_owned(), "replica-a".to_owned(), 2),
            ("on-b".to_owned(), "replica-b".to_owned(), 3),
        ];
        for server in [&a, &b] {
            let expected = expected.clone();
            eventually("every replica's workers to be listed", || {
                let expected = expected.clone();
                let listing = listed_by(server);
                async move { (listing.await == expected).then_some(()) }
            })
            .await;
        }
        // A worker that leaves leaves every list.
        drop(on_b);
        eventually("the worker that left to be gone from a's list", || {
            let listing = listed_by(&a);
            async move {
                let names: Vec<String> =
                    listing.await.into_iter().map(|(name, _, _)| name).collect();
                (names == ["on-a"]).then_some(())
            }
        })
        .await;
    })
    .await;
}

/// (name, node, max_concurrent) of each worker `server` lists, sorted.
async fn listed_by(server: &TestServer) -> Vec<(String, String, u32)> {
    let mut client = WorkerServiceClient::new(server.channel().await);
    let mut workers: Vec<(String, String, u32)> = client
        .list_workers(pb::ListWorkersRequest {})
        .await
        .expect("list")
        .into_inner()
        .workers
        .into_iter()
        .map(|worker| (worker.worker_name, worker.node, worker.max_concurrent))
        .collect();
    workers.sort();
    workers
}

#[tokio::test]
async fn streams_of_overlapping_kinds_are_never_claimed_more_than_they_can_run() {
    on_postgres(module_path!(), async {
        let server = TestServer::start_with(worker_config()).await;
        let mut client = server.client().await;
        // One slot that runs both kinds, one that runs only `remote`, and
        // work of both kinds waiting: claiming each kind up to the slots
        // that could run it would take three tasks for two slots.
        let mut wide = RawWorker::connect(&server, &["remote", "other-remote"], 1, "wide").await;
        let mut narrow = RawWorker::connect(&server, &["remote"], 1, "narrow").await;
        // All at once, so one claim sees them all.
        let tasks = client
            .batch_create_tasks(pb::BatchCreateTasksRequest {
                requests: vec![
                    request("other", "other-remote", None),
                    request("remote 1", "remote", None),
                    request("remote 2", "remote", None),
                    request("remote 3", "remote", None),
                ],
            })
            .await
            .expect("batch")
            .into_inner()
            .tasks;
        let mut done = 0;
        let deadline = tokio::time::Instant::now() + crate::support::DEADLINE;
        while done < tasks.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {done} tasks ran"
            );
            for worker in [&mut wide, &mut narrow] {
                if done == tasks.len() {
                    break;
                }
                if let Ok(run) = tokio::time::timeout(
                    std::time::Duration::from_millis(200),
                    worker.next_assignment(),
                )
                .await
                {
                    assert_eq!(run.attempt, 1, "a run was given back: {run:?}");
                    worker.complete(&run.id, run.attempt, json!("ok")).await;
                    done += 1;
                }
            }
        }
        for task in &tasks {
            let finished = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
            assert_eq!(finished.attempt, 1, "{finished:?}");
        }
    })
    .await;
}
