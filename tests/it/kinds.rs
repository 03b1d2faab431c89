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
    a_kind_without_a_policy_of_its_own_request_gets_the_kinds_default,
);
