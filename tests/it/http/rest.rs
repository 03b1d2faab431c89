//! The REST routes as the contract lists them, answering proto3 JSON, over
//! HTTP/1.1 and HTTP/2 on the gRPC port; `/health`; and a REST call logged
//! and counted by the RPC layer like a gRPC one.

use std::time::Duration;

use serde_json::json;
use task_processor::{config::Config, pb};
use tonic::Code;

use super::{Http, id_of};
use crate::support::{TestServer, eventually, http_get, test_config, wait_for_status};

/// The seed's session, as written: create with `curl -X POST … -d '{…}'`
/// (a form content type, as curl sends), then get it until it completes.
async fn create_and_get_as_the_seed_did() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);

    let answer = http
        .post(
            "/api/v1/tasks",
            r#"{"name": "resize", "kind": "echo", "data": {"width": 640, "tags": ["a"]}}"#,
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert!(answer.header("x-request-id").is_some(), "{answer:?}");
    let task = answer.json();
    assert_eq!(task["name"], "resize");
    assert_eq!(task["kind"], "echo");
    assert_eq!(task["status"], "TASK_STATUS_PENDING");
    assert_eq!(task["data"], json!({"width": 640, "tags": ["a"]}));
    assert_eq!(task["revision"], "1", "64-bit integers are strings");
    assert_eq!(task["error"], "", "scalar defaults are written");
    assert!(
        task["createdAt"]
            .as_str()
            .is_some_and(|at| at.ends_with('Z'))
    );
    let id = id_of(&task);

    let done = eventually("the task to complete over REST", || {
        let http = http.clone();
        let path = format!("/api/v1/tasks/{id}");
        async move {
            let answer = http.get(&path).await;
            assert_eq!(answer.status, 200, "{answer:?}");
            let task = answer.json();
            (task["status"] == "TASK_STATUS_COMPLETED").then_some(task)
        }
    })
    .await;
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["result"], json!({"width": 640, "tags": ["a"]}));
    assert_eq!(done["attempt"], 1);
}

contract_tests!(
    create_and_get_as_the_seed_did,
    batch_create_answers_every_task_in_order_or_none
);

#[tokio::test]
async fn list_filters_by_status_and_label_and_pages() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let client = server.client().await;
    let mut ids = Vec::new();
    for (name, team) in [("one", "a"), ("two", "b"), ("three", "a")] {
        let task = http
            .create(&format!(
                r#"{{"name": "{name}", "kind": "echo", "labels": {{"team": "{team}"}}}}"#
            ))
            .await;
        ids.push(id_of(&task));
    }
    for id in &ids {
        wait_for_status(&client, id, pb::TaskStatus::Completed).await;
    }
    let held = id_of(&http.create(r#"{"name": "held", "kind": "gate"}"#).await);
    wait_for_status(&client, &held, pb::TaskStatus::Running).await;

    let ids_of = |answer: &super::Answer| -> Vec<String> {
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(id_of)
            .collect()
    };
    let all = http.get("/api/v1/tasks").await;
    assert_eq!(ids_of(&all).len(), 4);
    assert_eq!(all.json()["nextPageToken"], "");

    let team_a = http.get("/api/v1/tasks?label=team%3Da").await;
    assert_eq!(ids_of(&team_a), [ids[0].clone(), ids[2].clone()]);
    let running = http.get("/api/v1/tasks?status=TASK_STATUS_RUNNING").await;
    assert_eq!(ids_of(&running), [held.as_str()]);
    let both = http
        .get("/api/v1/tasks?status=TASK_STATUS_RUNNING&status=TASK_STATUS_COMPLETED&label=team=b")
        .await;
    assert_eq!(ids_of(&both), [ids[1].clone()]);
    let short_name = http.get("/api/v1/tasks?status=running").await;
    assert_eq!(ids_of(&short_name), [held.as_str()]);

    // Paging, with the filters kept alongside the token.
    let first = http.get("/api/v1/tasks?pageSize=1&label=team=a").await;
    assert_eq!(ids_of(&first), [ids[0].clone()]);
    let token = first.json()["nextPageToken"]
        .as_str()
        .expect("a token")
        .to_owned();
    assert!(!token.is_empty());
    let second = http
        .get(&format!(
            "/api/v1/tasks?pageSize=1&label=team=a&pageToken={token}"
        ))
        .await;
    assert_eq!(ids_of(&second), [ids[2].clone()]);
    // The same token with other filters is the RPC's INVALID_ARGUMENT.
    http.get(&format!("/api/v1/tasks?pageSize=1&pageToken={token}"))
        .await
        .assert_error(400, Code::InvalidArgument, "page_token");
    server.gate.release(1);
}

#[tokio::test]
async fn cancel_then_delete_then_the_task_is_gone() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let client = server.client().await;
    let id = id_of(&http.create(r#"{"name": "held", "kind": "gate"}"#).await);
    wait_for_status(&client, &id, pb::TaskStatus::Running).await;

    let cancelled = http.post(&format!("/api/v1/tasks/{id}/cancel"), "").await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    let task = cancelled.json();
    assert_eq!(task["status"], "TASK_STATUS_CANCELLED");
    assert!(task["completedAt"].is_string());
    assert!(
        task["error"]
            .as_str()
            .is_some_and(|error| error.contains("cancel"))
    );
    // Cancelling again succeeds and changes nothing.
    let again = http.post(&format!("/api/v1/tasks/{id}/cancel"), "").await;
    assert_eq!(again.json()["revision"], task["revision"]);

    let deleted = http.delete(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    assert_eq!(deleted.json(), json!({}));
    http.get(&format!("/api/v1/tasks/{id}"))
        .await
        .assert_error(404, Code::NotFound, &id);
}

/// `BatchCreateTasks` as curl calls it: all the tasks, in order, or none
/// with the broken field named.
async fn batch_create_answers_every_task_in_order_or_none() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let answer = http
        .post(
            "/api/v1/tasks:batchCreate",
            r#"{"requests": [
                {"name": "first", "kind": "echo", "data": {"n": 1}},
                {"name": "second", "kind": "echo", "requestId": "batch-rest-2"}
            ]}"#,
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let tasks = answer.json()["tasks"].clone();
    let names: Vec<&str> = tasks
        .as_array()
        .expect("a list of tasks")
        .iter()
        .map(|task| task["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["first", "second"]);
    assert_eq!(tasks[0]["data"], json!({"n": 1}));
    for task in tasks.as_array().expect("tasks") {
        let stored = http.get(&format!("/api/v1/tasks/{}", id_of(task))).await;
        assert_eq!(stored.status, 200, "durable before the answer: {stored:?}");
    }

    let refused = http
        .post(
            "/api/v1/tasks:batchCreate",
            r#"{"requests": [{"name": "fine", "kind": "echo"}, {"name": "", "kind": "echo"}]}"#,
        )
        .await;
    refused.assert_error(400, Code::InvalidArgument, "requests[1].name");
    let listed = http.get("/api/v1/tasks").await.json();
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(2),
        "nothing of the refused batch: {listed}"
    );
    http.post("/api/v1/tasks:batchCreate", r#"{"requests": "#)
        .await
        .assert_error(400, Code::InvalidArgument, "not a BatchCreateTasksRequest");
}

#[tokio::test]
async fn the_routes_answer_over_http2_too() {
    let server = TestServer::start().await;
    let http = Http::http2(server.address);
    let task = http.create(r#"{"name": "over h2", "kind": "echo"}"#).await;
    let answer = http.get(&format!("/api/v1/tasks/{}", id_of(&task))).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["name"], "over h2");
    let health = http.get("/health").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, r#"{"status":"ok"}"#)
    );
}

#[tokio::test]
async fn a_rest_call_is_logged_and_counted_as_its_rpc_with_the_clients_request_id() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let request = http.request(
        http::Method::GET,
        "/api/v1/tasks/01a2150b-41f3-7040-a887-8a8983bcd827",
        &[("x-request-id", "rest-7f3a")],
        "",
    );
    let answer = http.send(request).await;
    answer.assert_error(404, Code::NotFound, "01a2150b");
    assert_eq!(answer.header("x-request-id"), Some("rest-7f3a"));
    // A refusal before any call keeps the client's id too.
    let request = http.request(
        http::Method::POST,
        "/api/v1/tasks",
        &[("x-request-id", "rest-7f3b")],
        "{",
    );
    assert_eq!(
        http.send(request).await.header("x-request-id"),
        Some("rest-7f3b")
    );

    let (status, metrics) = http_get(&server.admin_address.to_string(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"task_processor_rpc_requests_total{method="TaskService/GetTask",code="NotFound"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn schedules_have_their_routes_too() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let created = http
        .post(
            "/api/v1/schedules",
            r#"{"cron": "@every 1h", "task": {"name": "hourly", "kind": "echo"}}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let schedule = created.json();
    assert_eq!(schedule["cron"], "@every 1h");
    assert_eq!(schedule["overlap"], "OVERLAP_POLICY_SKIP");
    let id = id_of(&schedule);
    let path = format!("/api/v1/schedules/{id}");

    assert_eq!(http.get(&path).await.json()["task"]["name"], "hourly");
    let listed = http.get("/api/v1/schedules?pageSize=10").await.json();
    assert_eq!(listed["schedules"][0]["id"], id.as_str());
    let paused = http.post(&format!("{path}/pause"), "").await.json();
    assert_eq!(paused["paused"], true);
    let resumed = http.post(&format!("{path}/resume"), "").await.json();
    assert_eq!(resumed["paused"], false);
    assert_eq!(http.delete(&path).await.json(), json!({}));
    http.get(&path).await.assert_error(404, Code::NotFound, &id);
}

#[tokio::test]
async fn health_answers_503_once_the_shutdown_begins() {
    let mut server = TestServer::start_with(Config {
        // Long enough to look at /health while the drain goes on.
        drain_period: Duration::from_secs(3),
        ..test_config()
    })
    .await;
    let http = Http::new(server.address);
    let ok = http.get("/health").await;
    assert_eq!((ok.status, ok.body.as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(ok.header("content-type"), Some("application/json"));

    let _stopping = server.begin_shutdown();
    let draining = eventually("/health to answer 503", || {
        let http = http.clone();
        async move {
            let answer = http.get("/health").await;
            (answer.status == 503).then_some(answer)
        }
    })
    .await;
    assert_eq!(draining.body, r#"{"status":"draining"}"#);
}
