//! The gRPC edge under abuse: requests larger than the limit, and the
//! HTTP/2 bounds every connection gets.

use serde_json::json;
use task_processor::pb;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::{TestServer, request};

/// `TaskService`'s limit in tests: `max_data_bytes` (1 MiB) + 1 MiB.
const TASK_SERVICE_LIMIT: usize = 2 * 1024 * 1024;

/// What health and reflection accept: tonic's default.
const DEFAULT_LIMIT: usize = 4 * 1024 * 1024;

fn assert_resource_exhausted(status: &tonic::Status, limit: usize) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&format!("{limit} bytes")),
        "the message states the limit: {status:?}"
    );
}

/// As in grpc-go and grpc-java: a request over the limit is
/// `RESOURCE_EXHAUSTED` naming the limit, for unary and server-streaming
/// calls and for every service.
#[tokio::test]
async fn an_oversized_request_is_resource_exhausted_stating_the_limit() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let oversized = TASK_SERVICE_LIMIT + 1024;

    let status = client
        .create_task(request("big", "echo", Some(json!("x".repeat(oversized)))))
        .await
        .expect_err("over the limit");
    assert_resource_exhausted(&status, TASK_SERVICE_LIMIT);

    let status = client
        .watch_task(pb::WatchTaskRequest {
            id: "x".repeat(oversized),
        })
        .await
        .expect_err("over the limit");
    assert_resource_exhausted(&status, TASK_SERVICE_LIMIT);

    let mut health = HealthClient::new(server.channel().await);
    let status = health
        .check(HealthCheckRequest {
            service: "x".repeat(DEFAULT_LIMIT + 1024),
        })
        .await
        .expect_err("over the limit");
    assert_resource_exhausted(&status, DEFAULT_LIMIT);

    // The connection is still good for calls within the limit.
    crate::support::create(&mut client, "small", "echo", Some(json!("x"))).await;
}
