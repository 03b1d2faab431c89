//! Bearer tokens and roles, decided in one place for every way in: each
//! role against each RPC over gRPC, the refusals' codes and words, REST's
//! 401 and 403 with the gateway's JSON body, gRPC-Web, and what stays
//! open (health, `/health`, reflection unless protected).

use bytes::Bytes;
use http::Method;
use serde_json::Value as JsonValue;
use task_processor::pb;
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::{Files, ONE_PER_ROLE, principals_yaml, with_token};
use crate::{http::Http, support::request};

/// Every RPC of the task service, and two the contract gives to other roles.
const PATHS: &[&str] = &[
    "/taskprocessor.v1.TaskService/CreateTask",
    "/taskprocessor.v1.TaskService/BatchCreateTasks",
    "/taskprocessor.v1.TaskService/GetTask",
    "/taskprocessor.v1.TaskService/ListTasks",
    "/taskprocessor.v1.TaskService/CancelTask",
    "/taskprocessor.v1.TaskService/WatchTask",
    "/taskprocessor.v1.TaskService/WatchTasks",
    "/taskprocessor.v1.TaskService/DeleteTask",
    "/taskprocessor.v1.TaskService/CreateSchedule",
    "/taskprocessor.v1.TaskService/GetSchedule",
    "/taskprocessor.v1.TaskService/ListSchedules",
    "/taskprocessor.v1.TaskService/PauseSchedule",
    "/taskprocessor.v1.TaskService/ResumeSchedule",
    "/taskprocessor.v1.TaskService/DeleteSchedule",
    "/taskprocessor.v1.WorkerService/Anything",
    "/taskprocessor.v1.TaskService/NotAnRpc",
];

/// The role the contract says each path needs.
fn needed_role(path: &str) -> &'static str {
    let method = path.rsplit('/').next().unwrap_or(path);
    if path.contains("WorkerService") {
        return "work";
    }
    match method {
        "GetTask" | "ListTasks" | "WatchTask" | "WatchTasks" | "GetSchedule" | "ListSchedules" => {
            "read"
        }
        "NotAnRpc" => "admin",
        _ => "write",
    }
}

/// Calls `path` with an empty request as `token`: the code the call ended
/// with before any message (`Ok` when the stream began).
async fn call(channel: &Channel, path: &'static str, token: Option<&str>) -> (Code, String) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    let request = match token {
        Some(token) => with_token((), token),
        None => Request::new(()),
    };
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc
        .server_streaming(request, http::uri::PathAndQuery::from_static(path), codec)
        .await
    {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

#[tokio::test]
async fn every_role_against_every_rpc() {
    let files = Files::new();
    let server = super::start_with_principals(&files, &principals_yaml(ONE_PER_ROLE), false).await;
    let channel = server.channel().await;
    for (name, token, roles) in ONE_PER_ROLE {
        for path in PATHS {
            let needed = needed_role(path);
            let allowed = roles.contains(&needed) || roles.contains(&"admin");
            let (code, message) = call(&channel, path, *token).await;
            if allowed {
                assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                    "{name} {roles:?} may call {path}: {code:?} {message}"
                );
            } else {
                let method = path.rsplit('/').next().unwrap_or(path);
                assert_eq!(
                    (code, message.as_str()),
                    (
                        Code::PermissionDenied,
                        format!("principal {name} lacks role {needed} for {method}").as_str()
                    ),
                    "{name} {roles:?} calls {path}"
                );
            }
        }
    }
    // Without credentials, or with a wrong token, nothing but health.
    for path in PATHS {
        assert_eq!(
            call(&channel, path, None).await.0,
            Code::Unauthenticated,
            "{path}"
        );
        assert_eq!(
            call(&channel, path, Some("guess")).await.0,
            Code::Unauthenticated,
            "{path}"
        );
    }
}

#[tokio::test]
async fn refusals_say_what_was_wrong_and_never_which_tokens_exist() {
    let files = Files::new();
    let server = super::start_with_principals(&files, &principals_yaml(ONE_PER_ROLE), false).await;
    let mut client = server.client().await;

    let missing = client
        .create_task(request("x", "echo", None))
        .await
        .expect_err("no token");
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().starts_with("no bearer token"),
        "{}",
        missing.message()
    );

    let unknown = client
        .create_task(with_token(request("x", "echo", None), "writer-tokeN"))
        .await
        .expect_err("unknown token");
    assert_eq!(
        (unknown.code(), unknown.message()),
        (Code::Unauthenticated, "unknown token")
    );

    let mut basic = Request::new(request("x", "echo", None));
    basic.metadata_mut().insert(
        "authorization",
        "Basic d3JpdGVyOnRva2Vu".parse().expect("value"),
    );
    let not_bearer = client.create_task(basic).await.expect_err("not bearer");
    assert_eq!(not_bearer.code(), Code::Unauthenticated);

    let denied = client
        .create_task(with_token(request("x", "echo", None), "reader-token"))
        .await
        .expect_err("a reader cannot create");
    assert_eq!(
        (denied.code(), denied.message()),
        (
            Code::PermissionDenied,
            "principal reader lacks role write for CreateTask"
        )
    );

    let created = client
        .create_task(with_token(request("x", "echo", None), "writer-token"))
        .await
        .expect("a writer creates")
        .into_inner();
    client
        .get_task(with_token(
            pb::GetTaskRequest { id: created.id },
            "reader-token",
        ))
        .await
        .expect("a reader reads");
}

#[tokio::test]
async fn rest_and_grpc_web_are_decided_the_same_way() {
    let files = Files::new();
    let server = super::start_with_principals(&files, &principals_yaml(ONE_PER_ROLE), false).await;
    let http = Http::new(server.address);
    let body = r#"{"name":"rest","kind":"echo"}"#;
    let post = |token: Option<&str>| {
        let authorization = token.map(|token| format!("Bearer {token}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(value) = &authorization {
            headers.push(("authorization", value.as_str()));
        }
        http.request(Method::POST, "/api/v1/tasks", &headers, Bytes::from(body))
    };
    let json = |text: &str| -> JsonValue { serde_json::from_str(text).expect("a JSON body") };

    let missing = http.send(post(None)).await;
    assert_eq!(missing.status, 401, "{missing:?}");
    let error = json(&missing.body);
    assert_eq!(error["code"], 16);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no bearer token")),
        "{error}"
    );

    let unknown = http.send(post(Some("nope"))).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(json(&unknown.body)["message"], "unknown token");

    let denied = http.send(post(Some("reader-token"))).await;
    assert_eq!(denied.status, 403);
    let error = json(&denied.body);
    assert_eq!(error["code"], 7);
    assert_eq!(
        error["message"],
        "principal reader lacks role write for CreateTask"
    );

    let created = http.send(post(Some("writer-token"))).await;
    assert!(created.status < 300, "{created:?}");
    let listed = http
        .send(http.request(
            Method::GET,
            "/api/v1/tasks",
            &[("authorization", "Bearer reader-token")],
            Bytes::new(),
        ))
        .await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let watch = http.get("/api/v1/watch").await;
    assert_eq!(watch.status, 401, "{watch:?}");

    // /health stays open.
    assert_eq!(http.get("/health").await.status, 200);

    // gRPC-Web: the same refusal, as grpc-status.
    let grpc_web = http
        .send(http.request(
            Method::POST,
            "/taskprocessor.v1.TaskService/ListTasks",
            &[("content-type", "application/grpc-web+proto")],
            Bytes::from_static(&[0, 0, 0, 0, 0]),
        ))
        .await;
    assert_eq!(
        grpc_web
            .headers
            .get("grpc-status")
            .map(|value| value.as_bytes()),
        Some(&b"16"[..]),
        "{grpc_web:?}"
    );
}

async fn list_services(channel: Channel, token: Option<&str>) -> Result<(), Code> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let question = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let stream = tokio_stream::once(question);
    let request = match token {
        Some(token) => with_token(stream, token),
        None => Request::new(stream),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(request)
        .await
        .map_err(|status| status.code())?
        .into_inner();
    answers.message().await.map_err(|status| status.code())?;
    Ok(())
}

#[tokio::test]
async fn health_is_open_and_reflection_is_open_unless_protected() {
    let files = Files::new();
    let yaml = principals_yaml(ONE_PER_ROLE);
    let open = super::start_with_principals(&files, &yaml, false).await;
    HealthClient::new(open.channel().await)
        .check(HealthCheckRequest::default())
        .await
        .expect("health needs no token");
    assert_eq!(list_services(open.channel().await, None).await, Ok(()));

    let protected_files = Files::new();
    let protected = super::start_with_principals(&protected_files, &yaml, true).await;
    HealthClient::new(protected.channel().await)
        .check(HealthCheckRequest {
            service: task_processor::server::TASK_SERVICE_NAME.into(),
        })
        .await
        .expect("health needs no token");
    assert_eq!(
        list_services(protected.channel().await, None).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        list_services(protected.channel().await, Some("guess")).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        list_services(protected.channel().await, Some("reader-token")).await,
        Ok(())
    );
}
