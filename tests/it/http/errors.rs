//! Every error mapping the REST routes can be driven to: the HTTP status
//! grpc-gateway gives the gRPC code (412 for `FAILED_PRECONDITION`, as the
//! contract says), a JSON body `{"code", "message", "details"}` with the
//! gRPC code's number and the status's details, `Retry-After` on 429; and
//! what the gateway refuses itself (a body that is not JSON, a query
//! parameter it does not know, a body over the limit, a route or method it
//! does not have).

use serde_json::json;
use task_processor::{config::Config, pb};
use tonic::Code;

use super::{Http, id_of};
use crate::support::{TestServer, test_config, wait_for_status};

#[tokio::test]
async fn a_broken_rule_is_400_with_the_field_violation() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let answer = http.post("/api/v1/tasks", r#"{"name": "  "}"#).await;
    answer.assert_error(400, Code::InvalidArgument, "name");
    assert!(answer.header("x-request-id").is_some(), "{answer:?}");
    let body = answer.json();
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    assert_eq!(body["details"][0]["fieldViolations"][0]["field"], "name");

    http.post("/api/v1/tasks", r#"{"name": "n", "kind": "nope"}"#)
        .await
        .assert_error(400, Code::InvalidArgument, "kind");
    http.get("/api/v1/tasks/not-a-uuid")
        .await
        .assert_error(400, Code::InvalidArgument, "id");
    http.get("/api/v1/tasks?pageSize=-1").await.assert_error(
        400,
        Code::InvalidArgument,
        "page_size",
    );
}

#[tokio::test]
async fn a_body_that_is_not_the_request_is_400_naming_the_problem() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    for (body, named) in [
        (r#"{"name": "n""#, "EOF"),
        (r#"{"name": "n", "nme": "x"}"#, "nme"),
        (r#"{"name": 5}"#, "string"),
        (r#"{"name": "n"} trailing"#, "trailing"),
        ("", "EOF"),
        (r#"{"name": "n", "data": {"x": NaN}}"#, "line 1"),
    ] {
        let answer = http.post("/api/v1/tasks", body).await;
        answer.assert_error(400, Code::InvalidArgument, named);
        assert!(
            answer.json()["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("the body is not a CreateTaskRequest")),
            "{answer:?}"
        );
    }
    http.get("/api/v1/tasks?status=DONE")
        .await
        .assert_error(400, Code::InvalidArgument, "status");
    http.get("/api/v1/tasks?page=2")
        .await
        .assert_error(400, Code::InvalidArgument, "page");
    http.get("/api/v1/tasks?label=team").await.assert_error(
        400,
        Code::InvalidArgument,
        "key=value",
    );
}

#[tokio::test]
async fn an_unknown_id_is_404_and_unknown_routes_and_methods_say_so() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let unknown = "01a2150b-41f3-7040-a887-8a8983bcd827";
    for answer in [
        http.get(&format!("/api/v1/tasks/{unknown}")).await,
        http.post(&format!("/api/v1/tasks/{unknown}/cancel"), "")
            .await,
        http.delete(&format!("/api/v1/tasks/{unknown}")).await,
        http.get(&format!("/api/v1/tasks/{unknown}/watch")).await,
    ] {
        answer.assert_error(404, Code::NotFound, unknown);
    }
    http.get("/api/v2/tasks")
        .await
        .assert_error(404, Code::NotFound, "GET /api/v2/tasks");
    let put = http.send(http.request(http::Method::PUT, "/api/v1/tasks", &[], ""));
    put.await.assert_error(405, Code::Unimplemented, "PUT");
}

#[tokio::test]
async fn a_request_id_reused_with_other_parameters_is_409() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let first = http
        .create(r#"{"name": "once", "kind": "echo", "requestId": "order-17"}"#)
        .await;
    // The same parameters: the same task.
    let again = http
        .create(r#"{"name": "once", "kind": "echo", "request_id": "order-17"}"#)
        .await;
    assert_eq!(again["id"], first["id"]);
    http.post(
        "/api/v1/tasks",
        r#"{"name": "other", "kind": "echo", "requestId": "order-17"}"#,
    )
    .await
    .assert_error(409, Code::AlreadyExists, "order-17");
}

#[tokio::test]
async fn cancelling_a_finished_task_or_deleting_an_unfinished_one_is_412() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let client = server.client().await;
    let finished = id_of(&http.create(r#"{"name": "done", "kind": "echo"}"#).await);
    wait_for_status(&client, &finished, pb::TaskStatus::Completed).await;
    http.post(&format!("/api/v1/tasks/{finished}/cancel"), "")
        .await
        .assert_error(412, Code::FailedPrecondition, "cannot be cancelled");

    let running = id_of(&http.create(r#"{"name": "held", "kind": "gate"}"#).await);
    wait_for_status(&client, &running, pb::TaskStatus::Running).await;
    http.delete(&format!("/api/v1/tasks/{running}"))
        .await
        .assert_error(412, Code::FailedPrecondition, &running);
    server.gate.release(1);
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after() {
    let server = TestServer::start_with(Config {
        max_concurrent: 1,
        queue_capacity: 1,
        ..test_config()
    })
    .await;
    let http = Http::new(server.address);
    let client = server.client().await;
    let running = id_of(&http.create(r#"{"name": "runs", "kind": "gate"}"#).await);
    wait_for_status(&client, &running, pb::TaskStatus::Running).await;
    http.create(r#"{"name": "waits", "kind": "gate"}"#).await;

    let refused = http
        .post("/api/v1/tasks", r#"{"name": "refused", "kind": "gate"}"#)
        .await;
    refused.assert_error(429, Code::ResourceExhausted, "queue");
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
    let detail = &refused.json()["details"][0];
    assert_eq!(detail["@type"], "type.googleapis.com/google.rpc.RetryInfo");
    assert_eq!(detail["retryDelay"], "1s");
    server.gate.release(2);
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_it_is_read_whole() {
    let server = TestServer::start_with(Config {
        max_data_bytes: 1000,
        ..test_config()
    })
    .await;
    let http = Http::new(server.address);
    // Over the gRPC request limit (data plus 1 MiB) but within the JSON
    // body limit: the RPC's own refusal.
    let data = "x".repeat(1024 * 1024 + 2000);
    let body = json!({"name": "big", "kind": "echo", "data": data}).to_string();
    http.post("/api/v1/tasks", &body)
        .await
        .assert_error(429, Code::ResourceExhausted, "limit");
    // Over the JSON body limit (four times the request limit).
    let body = json!({"name": "huge", "data": "x".repeat(5 * 1024 * 1024)}).to_string();
    http.post("/api/v1/tasks", &body)
        .await
        .assert_error(413, Code::ResourceExhausted, "limit");
    // Within the request limit, over max_data_bytes: the field's rule.
    let body = json!({"name": "data", "kind": "echo", "data": "x".repeat(2000)}).to_string();
    http.post("/api/v1/tasks", &body)
        .await
        .assert_error(400, Code::InvalidArgument, "data");
}
