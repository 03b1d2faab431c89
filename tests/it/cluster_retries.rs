//! Retries on PostgreSQL across replicas: a `RETRYING` task is in the
//! table, not in a replica, so it outlives the replica that ran it (stopped
//! or killed) and a replica started later runs it at its `run_after`; with
//! two replicas up, its next run happens on one of them, once.

use std::time::{Duration, SystemTime};

use serde_json::json;
use task_processor::{config::Config, pb, store::StoreUrl};

use crate::{
    process::{send_sigterm, start_binary},
    retries::{create_with_policy, policy},
    stores::{fresh_postgres_schema, postgres_available},
    support::{
        TestServer, get, json, request, status_of, test_config, wait_for_attempt, wait_for_status,
    },
};

fn time_of(timestamp: &Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(timestamp.expect("set")).expect("a valid time")
}

/// How the first replica goes away.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Sigterm,
    Kill9,
}

/// Replica `a` alone runs a `flaky` task until it is `RETRYING` (back-off
/// 2 s), then goes away as `stop` says; replica `b`, started afterwards on
/// the same schema, runs it at its `run_after`.
async fn a_retrying_task_outlives_its_replica(test: &str, stop: Stop) {
    if !postgres_available(test) {
        return;
    }
    let store = fresh_postgres_schema().await;
    let start = |name: &str| {
        start_binary(
            &[
                "--store",
                store.as_str(),
                "--node-name",
                name,
                "--drain-period",
                "0s",
                "--shutdown-grace",
                "0s",
            ],
            &[],
        )
    };
    let mut first = start("a");
    let mut on_a = first.client().await;
    let task = create_with_policy(
        &mut on_a,
        "flaky",
        json!({"failures": 1}),
        policy(2, Duration::from_secs(2)),
    )
    .await;
    // Reads on PostgreSQL come from the table: what they show is committed.
    let retrying = wait_for_status(&on_a, &task.id, pb::TaskStatus::Retrying).await;
    assert_eq!((retrying.attempt, retrying.node.as_str()), (1, "a"));
    let run_after = time_of(&retrying.run_after);
    match stop {
        Stop::Sigterm => {
            send_sigterm(&first.child);
            let exit = first.child.wait().expect("exits");
            assert!(exit.success(), "{exit:?}");
        }
        Stop::Kill9 => first.kill_hard(),
    }

    let second = start("b");
    let mut on_b = second.client().await;
    let reloaded = get(&mut on_b, &task.id).await;
    if SystemTime::now() < run_after {
        assert_eq!(
            status_of(&reloaded),
            pb::TaskStatus::Retrying,
            "{reloaded:?}"
        );
    }
    let done = wait_for_status(&on_b, &task.id, pb::TaskStatus::Completed).await;
    assert_eq!(done.attempt, 2);
    assert_eq!(done.node, "b", "run by the replica that is left");
    assert_eq!(json(&done.result), Some(json!({"attempts": 2})));
    let started = time_of(&done.started_at);
    assert!(
        started >= run_after,
        "started at {started:?}, before its run_after {run_after:?}"
    );
}

#[tokio::test]
async fn a_retrying_task_outlives_its_replicas_shutdown_and_runs_on_a_later_one() {
    a_retrying_task_outlives_its_replica("cluster_retries::sigterm", Stop::Sigterm).await;
}

#[tokio::test]
async fn a_retrying_task_outlives_its_replicas_kill_9_and_runs_on_a_later_one() {
    a_retrying_task_outlives_its_replica("cluster_retries::kill_9", Stop::Kill9).await;
}

/// The runs of task `id` that the gates of `replicas` saw start.
fn runs_of(replicas: &[&TestServer], id: &str) -> usize {
    replicas
        .iter()
        .map(|replica| {
            let started = replica.gate.started();
            started.iter().filter(|started| *started == id).count()
        })
        .sum()
}

#[tokio::test]
async fn with_two_replicas_up_a_retrying_task_runs_again_exactly_once_on_either() {
    if !postgres_available("cluster_retries::exactly_once") {
        return;
    }
    let store = StoreUrl::Postgres(fresh_postgres_schema().await);
    let replica = |name: &str| Config {
        store: store.clone(),
        node_name: name.into(),
        ..test_config()
    };
    let a = TestServer::start_with(replica("a")).await;
    let b = TestServer::start_with(replica("b")).await;
    let mut on_a = a.client().await;
    // The gate fails the first run at once and holds the second until the
    // test opens it: no timeout to race on a loaded machine.
    let task = on_a
        .create_task(pb::CreateTaskRequest {
            retry_policy: Some(policy(2, Duration::from_millis(500))),
            ..request("gated", "gate", Some(json!({"fail_attempts": 1})))
        })
        .await
        .expect("created on a")
        .into_inner();
    let retrying = wait_for_status(&on_a, &task.id, pb::TaskStatus::Retrying).await;
    assert_eq!(retrying.attempt, 1);
    assert!(
        retrying.error.contains("failed attempt 1"),
        "{}",
        retrying.error
    );
    assert_eq!(runs_of(&[&a, &b], &task.id), 1);

    let second_run = wait_for_attempt(&on_a, &task.id, 2).await;
    assert_eq!(status_of(&second_run), pb::TaskStatus::Running);
    let runner = match second_run.node.as_str() {
        "a" => &a,
        "b" => &b,
        other => panic!("run by an unknown node {other:?}"),
    };
    assert_eq!(runs_of(&[&a, &b], &task.id), 2, "one run more, not two");
    runner.gate.release(1);
    let done = wait_for_status(&on_a, &task.id, pb::TaskStatus::Completed).await;
    assert_eq!(
        (done.attempt, done.node.as_str()),
        (2, second_run.node.as_str())
    );
    assert_eq!(json(&done.result), Some(json!({"fail_attempts": 1})));
    assert_eq!(runs_of(&[&a, &b], &task.id), 2, "and no run after it");
}
