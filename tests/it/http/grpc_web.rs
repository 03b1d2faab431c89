//! gRPC-Web on the gRPC port, as a browser's grpc-web client sends it: a
//! POST over HTTP/1.1 with `application/grpc-web+proto` (or the base64
//! `application/grpc-web-text`) and a length-prefixed protobuf message; the
//! answer's messages and then its trailers come framed in the body.

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::Method;
use prost::Message;
use task_processor::pb;

use super::{Answer, Http};
use crate::support::TestServer;

/// A frame's flag: the trailers, rather than a message.
const TRAILERS_FLAG: u8 = 0x80;

const PROTO: &str = "application/grpc-web+proto";
const TEXT: &str = "application/grpc-web-text";

/// What a gRPC-Web call answered: its messages and its status.
#[derive(Debug)]
struct Outcome {
    messages: Vec<Bytes>,
    status: u32,
    message: String,
}

/// Frames `message` as gRPC (and gRPC-Web) do: a flag byte, the length as
/// four big-endian bytes, the message.
fn frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + encoded.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(encoded.len()).expect("small"));
    framed.put_slice(&encoded);
    framed.freeze()
}

/// Calls `method` with `message` in `content_type`'s encoding.
async fn call(http: &Http, method: &str, message: &impl Message, content_type: &str) -> Outcome {
    let mut body = frame(message);
    if content_type == TEXT {
        body = base64::engine::general_purpose::STANDARD
            .encode(&body)
            .into();
    }
    let request = http.request(
        Method::POST,
        method,
        &[
            ("content-type", content_type),
            ("x-grpc-web", "1"),
            ("accept", content_type),
        ],
        body,
    );
    let answer = http.send(request).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer
            .header("content-type")
            .is_some_and(|value| value.starts_with(content_type)),
        "{answer:?}"
    );
    assert!(answer.header("x-request-id").is_some(), "{answer:?}");
    decode(&answer, content_type)
}

/// The frames of an answer; a status sent in the headers (an error with
/// no message) counts as the trailers.
fn decode(answer: &Answer, content_type: &str) -> Outcome {
    let mut body = answer.bytes.clone();
    if content_type == TEXT {
        // Each chunk of the body is base64 of its own, padding included, so
        // the text is decoded four characters (three bytes) at a time.
        body = answer
            .bytes
            .chunks(4)
            .flat_map(|quantum| {
                base64::engine::general_purpose::STANDARD
                    .decode(quantum)
                    .expect("base64")
            })
            .collect::<Vec<u8>>()
            .into();
    }
    let mut outcome = Outcome {
        messages: Vec::new(),
        status: answer
            .header("grpc-status")
            .map_or(u32::MAX, |status| status.parse().expect("a number")),
        message: answer.header("grpc-message").unwrap_or_default().to_owned(),
    };
    while body.has_remaining() {
        let flag = body.get_u8();
        let length = body.get_u32() as usize;
        let payload = body.split_to(length);
        if flag & TRAILERS_FLAG == 0 {
            outcome.messages.push(payload);
            continue;
        }
        let text = std::str::from_utf8(&payload).expect("trailers are text");
        for line in text.split("\r\n").filter(|line| !line.is_empty()) {
            let (name, value) = line.split_once(':').expect("name:value");
            match name.trim() {
                "grpc-status" => outcome.status = value.trim().parse().expect("a number"),
                "grpc-message" => outcome.message = value.trim().to_owned(),
                _ => {}
            }
        }
    }
    // grpc-message is percent-encoded; tonic reads it back.
    let mut headers = http::HeaderMap::new();
    headers.insert("grpc-status", outcome.status.into());
    if let Ok(message) = http::HeaderValue::from_str(&outcome.message) {
        headers.insert("grpc-message", message);
    }
    if let Some(status) = tonic::Status::from_header_map(&headers) {
        outcome.message = status.message().to_owned();
    }
    outcome
}

#[tokio::test]
async fn a_grpc_web_call_creates_and_reads_a_task() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    for content_type in [PROTO, TEXT] {
        let created = call(
            &http,
            "/taskprocessor.v1.TaskService/CreateTask",
            &pb::CreateTaskRequest {
                name: format!("from a browser ({content_type})"),
                kind: "echo".into(),
                ..Default::default()
            },
            content_type,
        )
        .await;
        assert_eq!(created.status, 0, "{created:?}");
        assert_eq!(created.messages.len(), 1, "{created:?}");
        let task = pb::Task::decode(created.messages[0].clone()).expect("a Task");
        assert_eq!(task.name, format!("from a browser ({content_type})"));
        assert_eq!(task.status(), pb::TaskStatus::Pending);

        let read = call(
            &http,
            "/taskprocessor.v1.TaskService/GetTask",
            &pb::GetTaskRequest {
                id: task.id.clone(),
            },
            content_type,
        )
        .await;
        assert_eq!(read.status, 0, "{read:?}");
        assert_eq!(
            pb::Task::decode(read.messages[0].clone())
                .expect("a Task")
                .id,
            task.id
        );
    }
}

#[tokio::test]
async fn a_grpc_web_error_carries_its_status_and_health_answers_too() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let missing = call(
        &http,
        "/taskprocessor.v1.TaskService/GetTask",
        &pb::GetTaskRequest {
            id: "01a2150b-41f3-7040-a887-8a8983bcd827".into(),
        },
        PROTO,
    )
    .await;
    assert_eq!(missing.status, tonic::Code::NotFound as u32, "{missing:?}");
    assert!(missing.messages.is_empty());
    assert!(missing.message.contains("not found"), "{missing:?}");

    let health = call(
        &http,
        "/grpc.health.v1.Health/Check",
        &tonic_health::pb::HealthCheckRequest {
            service: "taskprocessor.v1.TaskService".into(),
        },
        PROTO,
    )
    .await;
    assert_eq!(health.status, 0, "{health:?}");
    let answer = tonic_health::pb::HealthCheckResponse::decode(health.messages[0].clone())
        .expect("a HealthCheckResponse");
    assert_eq!(
        answer.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}
