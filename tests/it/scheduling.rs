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

/// What a client sees, not what a processor counts: on PostgreSQL a slot
/// is free again only once the end of its previous run is in the
/// database, so the table never shows more runs than slots.
async fn a_client_never_sees_more_running_tasks_than_max_concurrent() {
    const LIMIT: usize = 5;
    let server = TestServer::start_with(Config {
        max_concurrent: LIMIT,
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    // Many short runs: each end is a moment where a slot frees while the
    // client polls.
    for index in 0..60u64 {
        let seconds = 0.05 + 0.01 * (index % 11) as f64;
        ids.push(
            create(
                &mut client,
                &format!("short {index}"),
                "sleep",
                Some(json!({ "seconds": seconds })),
            )
            .await
            .id,
        );
    }
    let running_request = || pb::ListTasksRequest {
        statuses: vec![pb::TaskStatus::Running as i32],
        page_size: 100,
        ..Default::default()
    };
    let mut most_running = 0;
    let mut polls = 0u32;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the tasks did not finish within a minute"
        );
        let running = client
            .list_tasks(running_request())
            .await
            .expect("list")
            .into_inner()
            .tasks
            .len();
        most_running = most_running.max(running);
        polls += 1;
        if running > 0 {
            continue;
        }
        let pending = client
            .list_tasks(pb::ListTasksRequest {
                statuses: vec![pb::TaskStatus::Pending as i32],
                page_size: 1,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
            .tasks
            .len();
        if pending == 0 {
            break;
        }
    }
    assert!(
        most_running <= LIMIT,
        "{most_running} tasks were RUNNING at once with max_concurrent {LIMIT} ({polls} polls)"
    );
    for id in &ids {
        wait_for_status(&client, id, pb::TaskStatus::Completed).await;
    }
}

contract_tests!(
    a_client_never_sees_more_running_tasks_than_max_concurrent,
    never_more_than_max_concurrent_tasks_run,
    waiting_tasks_start_in_fifo_order,
);
