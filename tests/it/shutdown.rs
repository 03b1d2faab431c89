//! Shutdown in process: not serving and refusing creates at once, reads
//! during the drain, then watches end UNAVAILABLE and running tasks are
//! cancelled.

use std::time::Duration;

use serde_json::json;
use task_processor::{config::Config, pb, server::TASK_SERVICE_NAME, task::TaskStatus};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{TestServer, create, eventually, request, test_config, wait_for_status};

#[tokio::test]
async fn health_serves_both_names_until_shutdown_then_the_sequence_runs_in_order() {
    let mut server = TestServer::start_with(Config {
        // The checks "during the drain" must fit in it, on a loaded machine
        // too: it is long on purpose.
        drain_period: Duration::from_secs(5),
        ..test_config()
    })
    .await;
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let mut client = server.client().await;
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for service in ["", TASK_SERVICE_NAME] {
        let status = health
            .check(check(service))
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let running = create(&mut client, "long", "sleep", Some(json!({"seconds": 600}))).await;
    wait_for_status(&client, &running.id, pb::TaskStatus::Running).await;
    let mut watch = client
        .watch_task(pb::WatchTaskRequest {
            id: running.id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    watch.next().await.expect("first").expect("ok");

    let stopped = server.begin_shutdown();
    for service in ["", TASK_SERVICE_NAME] {
        eventually("health NOT_SERVING", || {
            let mut health = health.clone();
            async move {
                let status = health.check(check(service)).await.ok()?.into_inner().status;
                (status == ServingStatus::NotServing as i32).then_some(())
            }
        })
        .await;
    }
    // During the drain: creates refused, reads answered.
    let refused = client
        .create_task(request("late", "echo", None))
        .await
        .expect_err("creates are refused");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let still_running = crate::support::get(&mut client, &running.id).await;
    assert_eq!(still_running.status, pb::TaskStatus::Running as i32);

    // After the drain: the watch ends UNAVAILABLE, the task is cancelled.
    let end = loop {
        match watch.next().await {
            Some(Ok(_)) => continue,
            other => break other,
        }
    };
    let status = end
        .expect("the stream ends with an error")
        .expect_err("not OK");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the server stops within the budget")
        .expect("cleanly");
    let id = running.id.parse().expect("uuid");
    let cancelled = server.manager.get_task(id).await.expect("still known");
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert!(
        cancelled.error.contains("shutting down"),
        "{}",
        cancelled.error
    );
}
