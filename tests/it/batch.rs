//! `BatchCreateTasks` (contract v1.1, "Many tasks in one call"): up to 1000
//! tasks, all or nothing, answered and queued in request order; every
//! request validated first, a broken rule named `requests[i].<field>`;
//! `request_id` per item as in `CreateTask`; a batch that does not fit in
//! the queue is refused whole. On every store.

use serde_json::json;
use task_processor::{config::Config, pb};
use tonic::Code;

use crate::support::{
    Client, TestServer, assert_invalid_argument, count_tasks, request, status_of, test_config,
    wait_for_status,
};

async fn batch(
    client: &mut Client,
    requests: Vec<pb::CreateTaskRequest>,
) -> Result<Vec<pb::Task>, tonic::Status> {
    client
        .batch_create_tasks(pb::BatchCreateTasksRequest { requests })
        .await
        .map(|response| response.into_inner().tasks)
}

fn gated(name: &str) -> pb::CreateTaskRequest {
    request(name, "gate", Some(json!({"gated": true})))
}

async fn a_batch_is_answered_and_queued_in_request_order() {
    let server = TestServer::with_one_slot().await;
    let mut client = server.client().await;
    let names: Vec<String> = (0..5).map(|number| format!("task {number}")).collect();
    let tasks = batch(&mut client, names.iter().map(|name| gated(name)).collect())
        .await
        .expect("created");
    let answered: Vec<&str> = tasks.iter().map(|task| task.name.as_str()).collect();
    assert_eq!(answered, names, "answered in request order");
    for task in &tasks {
        assert_eq!(task.revision, 1, "{task:?}");
        assert!(
            matches!(
                status_of(task),
                pb::TaskStatus::Pending | pb::TaskStatus::Running
            ),
            "{task:?}"
        );
    }
    let ids: Vec<&str> = tasks.iter().map(|task| task.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(
        ids, sorted,
        "ids in request order, so FIFO is request order"
    );
    server.gate.release(5);
    for task in &tasks {
        wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    }
    assert_eq!(
        server.gate.started(),
        ids.iter().map(|id| (*id).to_owned()).collect::<Vec<_>>(),
        "run in request order"
    );
}

async fn a_broken_request_refuses_the_whole_batch_naming_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let refused = batch(
        &mut client,
        vec![
            request("fine", "echo", None),
            request("fine too", "echo", None),
            request("   ", "echo", None),
        ],
    )
    .await
    .expect_err("a blank name");
    assert_invalid_argument(&refused, "requests[2].name");
    let refused = batch(
        &mut client,
        vec![
            request("fine", "echo", None),
            request("unknown", "no-such-kind", None),
        ],
    )
    .await
    .expect_err("an unknown kind");
    assert_invalid_argument(&refused, "requests[1].kind");
    let empty = batch(&mut client, Vec::new()).await.expect_err("empty");
    assert_invalid_argument(&empty, "requests");
    let too_many = batch(
        &mut client,
        (0..1001).map(|_| request("t", "echo", None)).collect(),
    )
    .await
    .expect_err("1001 requests");
    assert_invalid_argument(&too_many, "requests");
    assert_eq!(count_tasks(&mut client).await, 0, "nothing was created");

    let thousand = batch(
        &mut client,
        (0..1000).map(|_| request("t", "echo", None)).collect(),
    )
    .await
    .expect("1000 is allowed");
    assert_eq!(thousand.len(), 1000);
}

async fn request_ids_work_per_item_and_a_conflict_refuses_the_batch() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let keyed = |key: &str, name: &str| pb::CreateTaskRequest {
        request_id: key.into(),
        ..request(name, "echo", Some(json!({"n": 1})))
    };
    let first = batch(
        &mut client,
        vec![
            keyed("a", "a"),
            request("plain", "echo", None),
            keyed("a", "a"),
        ],
    )
    .await
    .expect("created");
    assert_eq!(first[0].id, first[2].id, "the same key twice is one task");
    assert_ne!(first[0].id, first[1].id);
    assert_eq!(count_tasks(&mut client).await, 2);

    let again = batch(&mut client, vec![keyed("b", "b"), keyed("a", "a")])
        .await
        .expect("a repeated key with the same parameters");
    assert_eq!(again[1].id, first[0].id, "the task the first call created");
    assert_eq!(count_tasks(&mut client).await, 3);

    let conflict = batch(&mut client, vec![keyed("c", "c"), keyed("a", "other name")])
        .await
        .expect_err("the key with other parameters");
    assert_eq!(conflict.code(), Code::AlreadyExists, "{conflict:?}");
    let inside = batch(&mut client, vec![keyed("d", "d"), keyed("d", "not d")])
        .await
        .expect_err("one key, two parameter sets, in one batch");
    assert_eq!(inside.code(), Code::AlreadyExists, "{inside:?}");
    assert_eq!(
        count_tasks(&mut client).await,
        3,
        "a refused batch created nothing, not even its first request"
    );
}

async fn a_batch_that_does_not_fit_in_the_queue_is_refused_whole() {
    let server = TestServer::start_with(Config {
        max_concurrent: 1,
        queue_capacity: 3,
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    let running = batch(&mut client, vec![gated("running")])
        .await
        .expect("one task");
    wait_for_status(&client, &running[0].id, pb::TaskStatus::Running).await;
    let refused = batch(
        &mut client,
        (0..4).map(|number| gated(&format!("{number}"))).collect(),
    )
    .await
    .expect_err("4 do not fit in a queue of 3");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(count_tasks(&mut client).await, 1, "none of it was created");
    let fits = batch(
        &mut client,
        (0..3).map(|number| gated(&format!("{number}"))).collect(),
    )
    .await
    .expect("3 fit");
    assert_eq!(fits.len(), 3);
    server.gate.release(4);
}

contract_tests!(
    a_batch_is_answered_and_queued_in_request_order,
    a_broken_request_refuses_the_whole_batch_naming_it,
    request_ids_work_per_item_and_a_conflict_refuses_the_batch,
    a_batch_that_does_not_fit_in_the_queue_is_refused_whole,
);
