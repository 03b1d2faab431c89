//! Retries (contract v1.1, "Scheduling"): a failed run is retried while the
//! task's policy allows, after a back-off, as `RETRYING`; a permanent
//! failure is final; a retrying task can be cancelled. On every store.

use std::time::Duration;

use serde_json::json;
use task_processor::pb;
use tokio_stream::StreamExt;

use crate::support::{
    Client, TestServer, assert_invalid_argument, get, json, request, status_of, wait_for_status,
};

/// A policy of `max_attempts` runs with waits of `backoff`, not growing.
pub fn policy(max_attempts: u32, backoff: Duration) -> pb::RetryPolicy {
    let duration = prost_types::Duration::try_from(backoff).expect("short");
    pb::RetryPolicy {
        max_attempts,
        initial_backoff: Some(duration),
        max_backoff: Some(duration),
        backoff_multiplier: 1.0,
    }
}

/// Creates a task of `kind` with `data` and a retry policy.
pub async fn create_with_policy(
    client: &mut Client,
    kind: &str,
    data: serde_json::Value,
    retry_policy: pb::RetryPolicy,
) -> pb::Task {
    client
        .create_task(pb::CreateTaskRequest {
            retry_policy: Some(retry_policy),
            ..request(kind, kind, Some(data))
        })
        .await
        .expect("create")
        .into_inner()
}

/// Every state a watch of the task delivers, to the end.
async fn watch_to_end(client: &mut Client, id: &str) -> Vec<pb::Task> {
    let mut stream = client
        .watch_task(pb::WatchTaskRequest { id: id.into() })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(message) = stream.next().await {
        seen.push(message.expect("a state").task.expect("task"));
    }
    seen
}

fn seconds(timestamp: &Option<prost_types::Timestamp>) -> f64 {
    let timestamp = timestamp.as_ref().expect("set");
    timestamp.seconds as f64 + f64::from(timestamp.nanos) / 1e9
}

async fn a_flaky_task_is_retried_after_its_backoff_until_it_completes() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let backoff = Duration::from_millis(300);
    // A moment's delay, so the watch starts before the first run fails.
    let run_after = std::time::SystemTime::now() + Duration::from_secs(2);
    let task = client
        .create_task(pb::CreateTaskRequest {
            retry_policy: Some(policy(3, backoff)),
            run_after: Some(run_after.into()),
            ..request("flaky", "flaky", Some(json!({"failures": 2})))
        })
        .await
        .expect("create")
        .into_inner();
    let effective = task.retry_policy.expect("echoed");
    assert_eq!(effective.max_attempts, 3);
    let seen = watch_to_end(&mut client, &task.id).await;
    assert_eq!(
        status_of(&seen[0]),
        pb::TaskStatus::Pending,
        "watched in time"
    );
    let mut statuses: Vec<pb::TaskStatus> = seen.iter().map(status_of).collect();
    statuses.dedup();
    assert_eq!(
        statuses
            .iter()
            .skip_while(|status| **status == pb::TaskStatus::Pending)
            .copied()
            .collect::<Vec<_>>(),
        [
            pb::TaskStatus::Running,
            pb::TaskStatus::Retrying,
            pb::TaskStatus::Running,
            pb::TaskStatus::Retrying,
            pb::TaskStatus::Running,
            pb::TaskStatus::Completed,
        ],
        "every status change is delivered, in order"
    );
    let retrying: Vec<&pb::Task> = seen
        .iter()
        .filter(|task| status_of(task) == pb::TaskStatus::Retrying)
        .collect();
    for (index, state) in retrying.iter().enumerate() {
        let failed_run = index as u32 + 1;
        assert_eq!(
            state.attempt, failed_run,
            "the number of the run that failed"
        );
        assert_eq!(state.error, format!("flaky failure {failed_run}"));
        assert!(state.completed_at.is_none());
        // The back-off starts when the run fails, after it started.
        let wait = seconds(&state.run_after) - seconds(&state.started_at);
        assert!(
            wait >= 0.8 * backoff.as_secs_f64() - 0.001,
            "the back-off is at least 0.8 of the wait: {wait}s"
        );
    }
    let done = seen.last().expect("terminal");
    assert_eq!(status_of(done), pb::TaskStatus::Completed);
    assert_eq!(done.attempt, 3);
    assert_eq!(json(&done.result), Some(json!({"attempts": 3})));
    assert_eq!(done.error, "", "a completed task has no error");
    // The third run did not start before the second back-off ended.
    assert!(seconds(&done.started_at) >= seconds(&retrying[1].run_after) - 0.001);
}

async fn a_task_fails_once_its_attempts_are_spent() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create_with_policy(
        &mut client,
        "flaky",
        json!({"failures": 5}),
        policy(2, Duration::from_millis(50)),
    )
    .await;
    let failed = wait_for_status(&client, &task.id, pb::TaskStatus::Failed).await;
    assert_eq!(failed.attempt, 2);
    assert_eq!(failed.error, "flaky failure 2");
    assert!(failed.completed_at.is_some());
}

async fn a_permanent_failure_is_not_retried() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create_with_policy(
        &mut client,
        "fail",
        json!({"message": "bad input", "permanent": true}),
        policy(5, Duration::from_millis(50)),
    )
    .await;
    let failed = wait_for_status(&client, &task.id, pb::TaskStatus::Failed).await;
    assert_eq!((failed.attempt, failed.error.as_str()), (1, "bad input"));
}

async fn without_a_policy_a_failed_run_is_final() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = client
        .create_task(request("flaky", "flaky", Some(json!({"failures": 1}))))
        .await
        .expect("create")
        .into_inner();
    let policy = task.retry_policy.expect("the default policy is echoed");
    assert_eq!(
        policy.max_attempts, 1,
        "one run, no retry, unless configured"
    );
    let failed = wait_for_status(&client, &task.id, pb::TaskStatus::Failed).await;
    assert_eq!(
        (failed.attempt, failed.error.as_str()),
        (1, "flaky failure 1")
    );
}

async fn a_run_that_times_out_is_retried() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = client
        .create_task(pb::CreateTaskRequest {
            timeout_seconds: 1,
            retry_policy: Some(policy(2, Duration::from_millis(50))),
            ..request("slow", "sleep", Some(json!({"seconds": 30})))
        })
        .await
        .expect("create")
        .into_inner();
    // Watched, not polled: RETRYING lasts only the 50 ms back-off, which a
    // poll on a busy machine can miss; a watch delivers every status.
    let states = watch_to_end(&mut client, &task.id).await;
    let retrying = states
        .iter()
        .find(|state| status_of(state) == pb::TaskStatus::Retrying)
        .unwrap_or_else(|| panic!("no RETRYING state in {states:?}"));
    assert!(retrying.error.contains("timed out"), "{}", retrying.error);
    let failed = states.last().expect("a final state");
    assert_eq!(status_of(failed), pb::TaskStatus::Failed);
    assert_eq!(failed.attempt, 2);
    assert!(failed.error.contains("timed out"), "{}", failed.error);
}

async fn a_retrying_task_can_be_cancelled_like_a_pending_one() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create_with_policy(
        &mut client,
        "flaky",
        json!({"failures": 1}),
        policy(2, Duration::from_secs(60)),
    )
    .await;
    let retrying = wait_for_status(&client, &task.id, pb::TaskStatus::Retrying).await;
    assert!(retrying.run_after.is_some(), "when the next run may start");
    let cancelled = client
        .cancel_task(pb::CancelTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(status_of(&cancelled), pb::TaskStatus::Cancelled);
    assert!(cancelled.completed_at.is_some());
    let listed = client
        .list_tasks(pb::ListTasksRequest {
            statuses: vec![pb::TaskStatus::Retrying as i32],
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.tasks.is_empty(), "no longer retrying");
    assert_eq!(
        status_of(&get(&mut client, &task.id).await),
        pb::TaskStatus::Cancelled
    );
}

async fn retrying_tasks_are_listed_by_their_status() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create_with_policy(
        &mut client,
        "flaky",
        json!({"failures": 1}),
        policy(2, Duration::from_secs(60)),
    )
    .await;
    wait_for_status(&client, &task.id, pb::TaskStatus::Retrying).await;
    let listed = client
        .list_tasks(pb::ListTasksRequest {
            statuses: vec![pb::TaskStatus::Retrying as i32],
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<&str> = listed.tasks.iter().map(|task| task.id.as_str()).collect();
    assert_eq!(ids, [task.id.as_str()]);
}

async fn a_policy_out_of_range_is_refused_naming_its_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let cases = [
        (
            pb::RetryPolicy {
                max_attempts: 101,
                ..Default::default()
            },
            "retry_policy.max_attempts",
        ),
        (
            pb::RetryPolicy {
                backoff_multiplier: f64::NAN,
                ..Default::default()
            },
            "retry_policy.backoff_multiplier",
        ),
        (
            pb::RetryPolicy {
                backoff_multiplier: -1.0,
                ..Default::default()
            },
            "retry_policy.backoff_multiplier",
        ),
        (
            pb::RetryPolicy {
                initial_backoff: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "retry_policy.initial_backoff",
        ),
    ];
    for (retry_policy, field) in cases {
        let status = client
            .create_task(pb::CreateTaskRequest {
                retry_policy: Some(retry_policy),
                ..request("bad", "echo", None)
            })
            .await
            .expect_err("refused");
        assert_invalid_argument(&status, field);
    }
    assert!(
        crate::support::count_tasks(&mut client).await == 0,
        "nothing was created"
    );
}

/// The metric `name` with `labels`, once `wanted` holds for it.
async fn metric_when(
    server: &TestServer,
    name: &str,
    labels: &[(&str, &str)],
    wanted: impl Fn(f64) -> bool,
) -> f64 {
    let admin = server.admin_address.to_string();
    crate::support::eventually(&format!("{name} {labels:?}"), || {
        let admin = admin.clone();
        let wanted = &wanted;
        async move {
            let (_, body) = crate::support::http_get(&admin, "/metrics").await;
            let scrape = crate::operations::scrape(&body);
            crate::operations::sample(&scrape, name, labels).filter(|value| wanted(*value))
        }
    })
    .await
}

async fn retries_retrying_tasks_and_start_delays_are_measured() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let waiting = create_with_policy(
        &mut client,
        "flaky",
        json!({"failures": 1}),
        policy(2, Duration::from_secs(60)),
    )
    .await;
    wait_for_status(&client, &waiting.id, pb::TaskStatus::Retrying).await;
    // With PostgreSQL the gauge is counted every second.
    metric_when(&server, "task_processor_retrying_tasks", &[], |value| {
        value == 1.0
    })
    .await;
    let twice = create_with_policy(
        &mut client,
        "flaky",
        json!({"failures": 2}),
        policy(3, Duration::from_millis(50)),
    )
    .await;
    wait_for_status(&client, &twice.id, pb::TaskStatus::Completed).await;
    let retries = metric_when(
        &server,
        "task_processor_task_retries_total",
        &[("kind", "flaky")],
        |value| value >= 3.0,
    )
    .await;
    assert_eq!(
        retries, 3.0,
        "one retry of the first task, two of the second"
    );
    let starts = metric_when(
        &server,
        "task_processor_task_start_delay_seconds_count",
        &[("kind", "flaky")],
        |value| value >= 4.0,
    )
    .await;
    assert_eq!(starts, 4.0, "every run that started, after waiting");
}

contract_tests!(
    retries_retrying_tasks_and_start_delays_are_measured,
    a_flaky_task_is_retried_after_its_backoff_until_it_completes,
    a_task_fails_once_its_attempts_are_spent,
    a_permanent_failure_is_not_retried,
    without_a_policy_a_failed_run_is_final,
    a_run_that_times_out_is_retried,
    a_retrying_task_can_be_cancelled_like_a_pending_one,
    retrying_tasks_are_listed_by_their_status,
    a_policy_out_of_range_is_refused_naming_its_field,
);
