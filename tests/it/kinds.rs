//! Per-kind rules (`kinds` setting): a kind's own concurrency limit within
//! the global one, and its default retry policy. On every store.

use std::collections::BTreeMap;

use serde_json::json;
use task_processor::{
    config::{Config, KindSettings, PolicySettings},
    pb,
};

use crate::support::{
    TestServer, create, eventually, json, list_all, status_of, test_config, wait_for_status,
};

async fn a_kind_never_runs_more_tasks_than_its_own_limit_while_others_start() {
    let server = TestServer::start_with(Config {
        max_concurrent: 5,
        kinds: BTreeMap::from([(
            "gate".to_owned(),
            KindSettings {
                max_concurrent: Some(2),
                retry_policy: None,
            },
        )]),
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    let mut gated = Vec::new();
    for index in 0..5 {
        gated.push(create(&mut client, &format!("gate {index}"), "gate", None).await);
    }
    // Created after every gate task, with free slots: they run at once even
    // though gate tasks wait ahead of them.
    let mut echoes = Vec::new();
    for index in 0..3 {
        echoes.push(create(&mut client, &format!("echo {index}"), "echo", None).await);
    }
    for echo in &echoes {
        wait_for_status(&client, &echo.id, pb::TaskStatus::Completed).await;
    }
    let running = eventually("two gate tasks running", || {
        let mut client = client.clone();
        async move {
            let running = list_all(&mut client)
                .await
                .iter()
                .filter(|task| status_of(task) == pb::TaskStatus::Running)
                .count();
            (running == 2).then_some(running)
        }
    })
    .await;
    assert_eq!(running, 2);
    server.gate.release(gated.len());
    for task in &gated {
        wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    }
    assert_eq!(server.gate.most_running(), 2, "the kind's limit held");
}

/// The global limit holds as slots free one run at a time: each end frees
/// one slot and exactly one waiting task takes it. (On PostgreSQL the claim
/// rides on the commit that ends the run, or inserts the tasks, and must
/// count only the slots that commit frees.)
async fn runs_never_exceed_max_concurrent_as_slots_free_one_at_a_time() {
    let server = TestServer::start_with(Config {
        max_concurrent: 3,
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    let mut gated = Vec::new();
    for index in 0..7 {
        gated.push(create(&mut client, &format!("gate {index}"), "gate", None).await);
    }
    for released in 1..=gated.len() {
        server.gate.release(1);
        eventually("the released run ended", || {
            let mut client = client.clone();
            async move {
                let completed = list_all(&mut client)
                    .await
                    .iter()
                    .filter(|task| status_of(task) == pb::TaskStatus::Completed)
                    .count();
                (completed >= released).then_some(())
            }
        })
        .await;
    }
    assert_eq!(server.gate.most_running(), 3, "max_concurrent held");
}

async fn a_kind_without_a_policy_of_its_own_request_gets_the_kinds_default() {
    let server = TestServer::start_with(Config {
        kinds: BTreeMap::from([(
            "flaky".to_owned(),
            KindSettings {
                max_concurrent: None,
                retry_policy: Some(PolicySettings {
                    max_attempts: Some(3),
                    initial_backoff: Some("100ms".into()),
                    ..PolicySettings::default()
                }),
            },
        )]),
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    let task = create(&mut client, "flaky", "flaky", Some(json!({"failures": 2}))).await;
    let policy = task.retry_policy.expect("echoed");
    assert_eq!(policy.max_attempts, 3);
    assert_eq!(
        policy.initial_backoff,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000
        })
    );
    let done = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    assert_eq!(json(&done.result), Some(json!({"attempts": 3})));
    // Other kinds keep the contract's default: one run.
    let other = create(&mut client, "fail", "fail", None).await;
    assert_eq!(other.retry_policy.expect("echoed").max_attempts, 1);
}

contract_tests!(
    a_kind_never_runs_more_tasks_than_its_own_limit_while_others_start,
    runs_never_exceed_max_concurrent_as_slots_free_one_at_a_time,
    a_kind_without_a_policy_of_its_own_request_gets_the_kinds_default,
);
