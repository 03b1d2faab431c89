//! Bounded concurrency and FIFO start order.

use serde_json::json;
use task_processor::{config::Config, pb};

use crate::support::{TestServer, create, eventually, get, test_config, wait_for_status};

async fn never_more_than_max_concurrent_tasks_run() {
    let server = TestServer::start_with(Config {
        max_concurrent: 3,
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    let mut tasks = Vec::new();
    for index in 0..12 {
        tasks.push(create(&mut client, &format!("task {index}"), "gate", None).await);
    }
    let counts = eventually("three tasks running", || {
        let mut client = client.clone();
        async move {
            let listing = client
                .list_tasks(pb::ListTasksRequest::default())
                .await
                .expect("list")
                .into_inner();
            let running = listing
                .tasks
                .iter()
                .filter(|task| task.status == pb::TaskStatus::Running as i32)
                .count();
            let pending = listing.tasks.len() - running;
            (running == 3).then_some((running, pending))
        }
    })
    .await;
    assert_eq!(counts, (3, 9));
    // Let them all finish; the gate records how many ever ran at once.
    for _ in 0..12 {
        server.gate.release(1);
    }
    for task in &tasks {
        wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    }
    assert_eq!(server.gate.most_running(), 3);

    // Starts follow creation order: started_at never goes backwards.
    let mut previous_start = None;
    for task in &tasks {
        let started = get(&mut client, &task.id)
            .await
            .started_at
            .expect("started");
        let started = (started.seconds, started.nanos);
        if let Some(previous) = previous_start {
            assert!(previous <= started, "FIFO start order");
        }
        previous_start = Some(started);
    }
}

async fn waiting_tasks_start_in_fifo_order() {
    let server = TestServer::with_one_slot().await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for index in 0..20 {
        ids.push(
            create(
                &mut client,
                &format!("fifo {index}"),
                "gate",
                Some(json!(index)),
            )
            .await
            .id,
        );
    }
    server.gate.release(ids.len());
    for id in &ids {
        wait_for_status(&client, id, pb::TaskStatus::Completed).await;
    }
    assert_eq!(server.gate.started(), ids);
}

contract_tests!(
    never_more_than_max_concurrent_tasks_run,
    waiting_tasks_start_in_fifo_order,
);
