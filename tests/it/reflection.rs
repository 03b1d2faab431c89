//! Server reflection, seen by a client that has no generated code and no
//! `.proto`, as grpcurl is: in both `grpc.reflection.v1` and
//! `grpc.reflection.v1alpha` the server lists its services and serves every
//! file they need, the well-known types included, and a descriptor pool
//! built from those files alone is enough to call `TaskService` with JSON.
//!
//! Nothing here may use `task_processor::pb`: every message type the tests
//! send or read comes from reflection.

// A test that cannot go on fails with a message; that is what `expect` is for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, ServiceDescriptor,
};
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use serde_json::{Value as JsonValue, json};
use tonic::{
    Request, Status,
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
};

use crate::support::{TestServer, eventually};

const TASK_SERVICE: &str = "taskprocessor.v1.TaskService";
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const TASK_METHODS: [&str; 14] = [
    "CreateTask",
    "BatchCreateTasks",
    "GetTask",
    "ListTasks",
    "CancelTask",
    "WatchTask",
    "WatchTasks",
    "DeleteTask",
    "CreateSchedule",
    "GetSchedule",
    "ListSchedules",
    "PauseSchedule",
    "ResumeSchedule",
    "DeleteSchedule",
];

/// The create request a grpcurl user would type.
const CREATE_REQUEST_JSON: &str =
    r#"{"name":"via reflection","kind":"echo","data":{"n":1,"s":"x"},"labels":{"k":"v"}}"#;

/// `data` of [`CREATE_REQUEST_JSON`] as it comes back: `google.protobuf.Value`
/// holds every number as a double, so `1` returns as `1.0`.
fn sent_data() -> JsonValue {
    json!({"n": 1.0, "s": "x"})
}

// ---------------------------------------------------------------------------
// Reflection, in either version
// ---------------------------------------------------------------------------

/// The questions these tests ask reflection; both versions have them all.
#[derive(Debug)]
enum Question<'a> {
    ListServices,
    FileContainingSymbol(&'a str),
    FileByFilename(&'a str),
}

/// What reflection answers to a [`Question`].
enum Answer {
    Services(Vec<String>),
    /// Encoded `FileDescriptorProto`s.
    Files(Vec<Vec<u8>>),
}

/// One version of the reflection protocol, as a client sees it.
trait ReflectionVersion {
    /// The full name of this version's reflection service.
    const SERVICE: &'static str;

    /// Asks `question` on a fresh reflection stream; panics on an error answer.
    async fn ask(channel: Channel, question: Question<'_>) -> Answer;
}

/// Implements [`ReflectionVersion`] on `$version` with tonic-reflection's
/// client in `pb::$module`: v1 and v1alpha are the same protocol, but their
/// generated types are distinct, so the code is written once here.
macro_rules! reflection_version {
    ($version:ident, $module:ident) => {
        struct $version;

        impl ReflectionVersion for $version {
            const SERVICE: &'static str =
                concat!("grpc.reflection.", stringify!($module), ".ServerReflection");

            async fn ask(channel: Channel, question: Question<'_>) -> Answer {
                use tonic_reflection::pb::$module::{
                    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                    server_reflection_request::MessageRequest,
                    server_reflection_response::MessageResponse,
                };

                let message_request = match &question {
                    Question::ListServices => MessageRequest::ListServices(String::new()),
                    Question::FileContainingSymbol(symbol) => {
                        MessageRequest::FileContainingSymbol((*symbol).to_owned())
                    }
                    Question::FileByFilename(filename) => {
                        MessageRequest::FileByFilename((*filename).to_owned())
                    }
                };
                let request = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(message_request),
                };
                let mut answers = ServerReflectionClient::new(channel)
                    .server_reflection_info(tokio_stream::once(request))
                    .await
                    .unwrap_or_else(|status| panic!("{question:?}: {status:?}"))
                    .into_inner();
                let answer = answers
                    .message()
                    .await
                    .unwrap_or_else(|status| panic!("{question:?}: {status:?}"))
                    .unwrap_or_else(|| panic!("{question:?}: no answer"));
                match answer.message_response {
                    Some(MessageResponse::ListServicesResponse(list)) => Answer::Services(
                        list.service
                            .into_iter()
                            .map(|service| service.name)
                            .collect(),
                    ),
                    Some(MessageResponse::FileDescriptorResponse(files)) => {
                        Answer::Files(files.file_descriptor_proto)
                    }
                    other => panic!("{question:?}: unexpected answer {other:?}"),
                }
            }
        }
    };
}

reflection_version!(ReflectionV1, v1);
reflection_version!(ReflectionV1Alpha, v1alpha);

async fn list_services<R: ReflectionVersion>(channel: &Channel) -> Vec<String> {
    match R::ask(channel.clone(), Question::ListServices).await {
        Answer::Services(services) => services,
        Answer::Files(_) => panic!("ListServices answered with files"),
    }
}

async fn ask_for_files<R: ReflectionVersion>(
    channel: &Channel,
    question: Question<'_>,
) -> Vec<FileDescriptorProto> {
    let encoded_files = match R::ask(channel.clone(), question).await {
        Answer::Files(files) => files,
        Answer::Services(_) => panic!("a file question answered with services"),
    };
    assert!(
        !encoded_files.is_empty(),
        "reflection answered with no file"
    );
    encoded_files
        .iter()
        .map(|encoded| {
            FileDescriptorProto::decode(encoded.as_slice()).expect("a FileDescriptorProto")
        })
        .collect()
}

/// Builds a pool from the file that defines `symbol` and every file it
/// imports, transitively, asking for each import by name as grpcurl does.
async fn resolve_pool<R: ReflectionVersion>(channel: &Channel, symbol: &str) -> DescriptorPool {
    let mut resolved: BTreeMap<String, FileDescriptorProto> = BTreeMap::new();
    let mut to_resolve = ask_for_files::<R>(channel, Question::FileContainingSymbol(symbol)).await;
    while let Some(file) = to_resolve.pop() {
        if resolved.contains_key(file.name()) {
            continue;
        }
        for dependency in &file.dependency {
            let already_known = resolved.contains_key(dependency)
                || to_resolve.iter().any(|queued| queued.name() == dependency);
            if !already_known {
                let fetched =
                    ask_for_files::<R>(channel, Question::FileByFilename(dependency)).await;
                assert!(
                    fetched
                        .iter()
                        .any(|fetched_file| fetched_file.name() == dependency),
                    "asked for {dependency}, got {:?}",
                    fetched
                        .iter()
                        .map(FileDescriptorProto::name)
                        .collect::<Vec<_>>()
                );
                to_resolve.extend(fetched);
            }
        }
        resolved.insert(file.name().to_owned(), file);
    }
    DescriptorPool::from_file_descriptor_set(FileDescriptorSet {
        file: resolved.into_values().collect(),
    })
    .unwrap_or_else(|error| panic!("the files served for {symbol} form a pool: {error}"))
}

// ---------------------------------------------------------------------------
// What both versions must do
// ---------------------------------------------------------------------------

fn method_names(service: &ServiceDescriptor) -> Vec<String> {
    service
        .methods()
        .map(|method| method.name().to_owned())
        .collect()
}

async fn lists_task_health_and_reflection_services<R: ReflectionVersion>() {
    let server = TestServer::start().await;
    let services = list_services::<R>(&server.channel().await).await;
    for expected in [
        TASK_SERVICE,
        "taskprocessor.v1.WorkerService",
        HEALTH_SERVICE,
        R::SERVICE,
    ] {
        assert!(
            services.iter().any(|service| service == expected),
            "{expected} missing from {services:?}"
        );
    }
}

async fn resolves_task_service_with_well_known_types<R: ReflectionVersion>() {
    let server = TestServer::start().await;
    let pool = resolve_pool::<R>(&server.channel().await, TASK_SERVICE).await;

    for needed_file in [
        "taskprocessor/v1/task_service.proto",
        "google/protobuf/struct.proto",
        "google/protobuf/timestamp.proto",
        "google/protobuf/duration.proto",
        "google/protobuf/empty.proto",
    ] {
        assert!(
            pool.get_file_by_name(needed_file).is_some(),
            "{needed_file} was not resolved"
        );
    }
    let service = pool
        .get_service_by_name(TASK_SERVICE)
        .expect("TaskService in the pool");
    assert_eq!(method_names(&service), TASK_METHODS);
    for method in service.methods() {
        let streams = matches!(method.name(), "WatchTask" | "WatchTasks");
        assert_eq!(method.is_server_streaming(), streams, "{}", method.name());
        assert!(!method.is_client_streaming(), "{}", method.name());
    }
}

async fn resolves_health_service<R: ReflectionVersion>() {
    let server = TestServer::start().await;
    let pool = resolve_pool::<R>(&server.channel().await, HEALTH_SERVICE).await;
    let service = pool
        .get_service_by_name(HEALTH_SERVICE)
        .expect("Health in the pool");
    assert_eq!(method_names(&service), ["Check", "Watch"]);
}

/// Creates an echo task, polls it to completion and watches it, knowing the
/// service only through the pool reflection served.
async fn json_client_runs_a_task<R: ReflectionVersion>() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let pool = resolve_pool::<R>(&channel, TASK_SERVICE).await;
    let mut client = JsonClient::new(pool, channel);

    let created = client.unary("CreateTask", CREATE_REQUEST_JSON).await;
    assert_eq!(created["status"], "TASK_STATUS_PENDING", "{created}");
    assert_eq!(created["name"], "via reflection");
    assert_eq!(created["kind"], "echo");
    assert_eq!(created["data"], sent_data());
    assert_eq!(created["labels"], json!({"k": "v"}));
    assert!(created["createdAt"].is_string(), "createdAt: {created}");
    let id = created["id"].as_str().expect("id is a string").to_owned();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "id {id:?} is not a UUID"
    );
    let by_id = json!({ "id": id }).to_string();

    let completed = eventually("the task to complete", || {
        let mut client = client.clone();
        let by_id = by_id.clone();
        async move {
            let task = client.unary("GetTask", &by_id).await;
            (task["status"] == "TASK_STATUS_COMPLETED").then_some(task)
        }
    })
    .await;
    assert_eq!(completed["result"], sent_data());

    let updates = client.server_streaming("WatchTask", &by_id).await;
    assert_eq!(
        updates.len(),
        1,
        "a finished task's watch sends one state: {updates:?}"
    );
    assert_eq!(updates[0]["task"]["id"], id.as_str());
    assert_eq!(updates[0]["task"]["status"], "TASK_STATUS_COMPLETED");
}

/// Runs every check above against one reflection version, in a module named
/// after it.
macro_rules! reflection_tests {
    ($module:ident, $version:ty) => {
        mod $module {
            #[tokio::test]
            async fn lists_task_health_and_reflection_services() {
                super::lists_task_health_and_reflection_services::<$version>().await;
            }

            #[tokio::test]
            async fn resolves_task_service_with_well_known_types() {
                super::resolves_task_service_with_well_known_types::<$version>().await;
            }

            #[tokio::test]
            async fn resolves_health_service() {
                super::resolves_health_service::<$version>().await;
            }

            #[tokio::test]
            async fn json_client_runs_a_task() {
                super::json_client_runs_a_task::<$version>().await;
            }
        }
    };
}

reflection_tests!(v1, super::ReflectionV1);
reflection_tests!(v1alpha, super::ReflectionV1Alpha);

// ---------------------------------------------------------------------------
// A JSON client built from descriptors alone
// ---------------------------------------------------------------------------

/// Calls `TaskService` with requests and responses as proto3 JSON, knowing
/// its types only through `pool`.
#[derive(Clone)]
struct JsonClient {
    pool: DescriptorPool,
    grpc: Grpc<Channel>,
}

impl JsonClient {
    fn new(pool: DescriptorPool, channel: Channel) -> Self {
        Self {
            pool,
            grpc: Grpc::new(channel),
        }
    }

    /// Calls a unary method of `TaskService`; panics on an error status.
    async fn unary(&mut self, method_name: &str, request_json: &str) -> JsonValue {
        let method = self.method(method_name);
        let request = message_from_json(method.input(), request_json);
        self.grpc.ready().await.expect("channel ready");
        let response = self
            .grpc
            .unary(
                Request::new(request),
                path_of(&method),
                DynamicCodec::new(&method),
            )
            .await
            .unwrap_or_else(|status| panic!("{method_name}: {status:?}"));
        message_to_json(&response.into_inner())
    }

    /// Calls a server-streaming method of `TaskService` and collects the
    /// stream; panics unless it ends with `OK`.
    async fn server_streaming(&mut self, method_name: &str, request_json: &str) -> Vec<JsonValue> {
        let method = self.method(method_name);
        let request = message_from_json(method.input(), request_json);
        self.grpc.ready().await.expect("channel ready");
        let mut stream = self
            .grpc
            .server_streaming(
                Request::new(request),
                path_of(&method),
                DynamicCodec::new(&method),
            )
            .await
            .unwrap_or_else(|status| panic!("{method_name}: {status:?}"))
            .into_inner();
        let mut messages = Vec::new();
        while let Some(message) = stream
            .message()
            .await
            .unwrap_or_else(|status| panic!("{method_name} stream: {status:?}"))
        {
            messages.push(message_to_json(&message));
        }
        messages
    }

    fn method(&self, method_name: &str) -> MethodDescriptor {
        self.pool
            .get_service_by_name(TASK_SERVICE)
            .expect("TaskService in the pool")
            .methods()
            .find(|method| method.name() == method_name)
            .unwrap_or_else(|| panic!("no method {method_name} in {TASK_SERVICE}"))
    }
}

/// The HTTP/2 path of `method`: `/package.Service/Method`.
fn path_of(method: &MethodDescriptor) -> PathAndQuery {
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    PathAndQuery::try_from(path).expect("a valid path")
}

fn message_from_json(descriptor: MessageDescriptor, json: &str) -> DynamicMessage {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(descriptor, &mut deserializer)
        .unwrap_or_else(|error| panic!("{json} does not fit the request type: {error}"));
    deserializer.end().expect("nothing after the JSON");
    message
}

fn message_to_json(message: &DynamicMessage) -> JsonValue {
    serde_json::to_value(message).expect("a message serializes as JSON")
}

/// A gRPC codec for messages known only by descriptor: it encodes any
/// [`DynamicMessage`] and decodes the method's output type.
struct DynamicCodec {
    output: MessageDescriptor,
}

impl DynamicCodec {
    fn new(method: &MethodDescriptor) -> Self {
        Self {
            output: method.output(),
        }
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder {
            output: self.output.clone(),
        }
    }
}

struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|error| Status::internal(format!("encoding the request: {error}")))
    }
}

struct DynamicDecoder {
    output: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.output.clone(), src)
            .map(Some)
            .map_err(|error| Status::internal(format!("decoding the response: {error}")))
    }
}
