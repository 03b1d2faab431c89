//! OpenTelemetry tracing, against a fake OTLP/gRPC collector of the outside
//! world: the real binary exports a call's span under the trace its client
//! sent in `traceparent`, logs the trace id, and without an endpoint never
//! so much as connects. A task's run is a span in the trace of its create,
//! also when it runs after a restart (SQLite) or on another replica
//! (PostgreSQL).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::{span::SpanKind, status::StatusCode},
};
use serde_json::{Value as JsonValue, json};
use task_processor::pb;
use tokio::net::TcpListener;
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{
    process::{Process, send_sigterm, start_binary},
    stores::{fresh_postgres_schema, fresh_sqlite_path, postgres_available},
    support::{eventually, request, wait_for_status},
};

/// The trace and the parent span a client sends in its `traceparent`.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// A span as the collector received it.
#[derive(Clone, Debug)]
struct ReceivedSpan {
    service_name: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    /// Attributes, their values as text.
    attributes: HashMap<String, String>,
    /// The status code (`StatusCode`) and its message.
    status: (i32, String),
}

/// The fake collector: keeps every span exported to it, and counts the
/// connections made to its listener.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    connections: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("not poisoned");
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| attribute.value.as_ref()?.value.clone())
                .map(|value| match value {
                    AnyValue::StringValue(name) => name,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                let attributes = span
                    .attributes
                    .iter()
                    .filter_map(|attribute| {
                        let text = match attribute.value.as_ref()?.value.as_ref()? {
                            AnyValue::StringValue(text) => text.clone(),
                            AnyValue::IntValue(number) => number.to_string(),
                            other => format!("{other:?}"),
                        };
                        Some((attribute.key.clone(), text))
                    })
                    .collect();
                spans.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes,
                    status: span
                        .status
                        .map(|status| (status.code, status.message))
                        .unwrap_or_default(),
                });
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serves on a free loopback port; returns its URL.
    async fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let connections = Arc::clone(&self.connections);
        let incoming = TcpListenerStream::new(listener).map(move |connection| {
            connections.fetch_add(1, Ordering::SeqCst);
            connection
        });
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        format!("http://{address}")
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("not poisoned").clone()
    }

    /// The first span named `name` whose attribute `task_id` is `task_id`.
    fn span_of_task(&self, name: &str, task_id: &str) -> Option<ReceivedSpan> {
        self.spans().into_iter().find(|span| {
            span.name == name && span.attributes.get("task_id").map(String::as_str) == Some(task_id)
        })
    }

    /// Waits for the `task.run` span of `task_id`, which must be in the
    /// client's trace ([`TRACE_ID`]), of attempt `attempt`.
    async fn run_in_trace(&self, task_id: &str, attempt: u32) -> ReceivedSpan {
        let run = eventually("the task.run span at the collector", || async {
            self.span_of_task("task.run", task_id)
        })
        .await;
        assert_eq!(run.trace_id, TRACE_ID, "{run:?}");
        assert_eq!(
            run.attributes.get("attempt").map(String::as_str),
            Some(attempt.to_string().as_str()),
            "{run:?}"
        );
        run
    }

    /// [`Collector::run_in_trace`], and the run is a child of the
    /// `CreateTask` call's span.
    async fn run_in_trace_of_create(&self, task_id: &str, attempt: u32) -> ReceivedSpan {
        let create = eventually("the CreateTask span at the collector", || async {
            self.span_of_task("TaskService/CreateTask", task_id)
        })
        .await;
        assert_eq!(create.trace_id, TRACE_ID, "{create:?}");
        let run = self.run_in_trace(task_id, attempt).await;
        assert_eq!(run.parent_span_id, create.span_id, "{run:?} {create:?}");
        run
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Creates an `echo` task with `traceparent` (and `tracestate`) metadata
/// naming [`TRACE_ID`] and [`PARENT_SPAN_ID`]; returns the task id.
async fn create_in_trace(process: &Process) -> String {
    create_request_in_trace(process, request("traced", "echo", None)).await
}

/// Sends `create` with the metadata of [`create_in_trace`]; returns the
/// task id.
async fn create_request_in_trace(process: &Process, create: pb::CreateTaskRequest) -> String {
    let mut client = process.client().await;
    client
        .create_task(in_trace(create))
        .await
        .expect("created")
        .into_inner()
        .id
}

/// `message` as a request with `traceparent` and `tracestate` metadata
/// naming [`TRACE_ID`] and [`PARENT_SPAN_ID`].
fn in_trace<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str()).expect("ascii"),
    );
    request
        .metadata_mut()
        .insert("tracestate", MetadataValue::from_static("vendor=value"));
    request
}

/// The `rpc finished` line of the CreateTask call (logged at debug).
fn create_line(process: &Process) -> Option<JsonValue> {
    process
        .log
        .lock()
        .expect("not poisoned")
        .iter()
        .find(|entry| {
            entry["message"] == "rpc finished" && entry["method"] == "TaskService/CreateTask"
        })
        .cloned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_is_exported_under_the_callers_trace_and_its_lines_carry_the_trace_id() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let process = start_binary(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("LOG_LEVEL", "debug"),
        ],
    );
    let task_id = create_in_trace(&process).await;

    let span = eventually("the CreateTask span at the collector", || async {
        collector
            .spans()
            .into_iter()
            .find(|span| span.name == "TaskService/CreateTask")
    })
    .await;
    assert_eq!(span.trace_id, TRACE_ID, "{span:?}");
    assert_eq!(span.parent_span_id, PARENT_SPAN_ID, "{span:?}");
    assert_eq!(span.kind, SpanKind::Server as i32, "{span:?}");
    assert_eq!(span.service_name, "task-processor", "{span:?}");
    assert!(collector.connections.load(Ordering::SeqCst) > 0);

    let line = eventually("the CreateTask line", || async { create_line(&process) }).await;
    assert_eq!(line["span"]["trace_id"], TRACE_ID, "{line}");
    assert_eq!(line["span"]["task_id"], task_id.as_str(), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_endpoint_nothing_is_traced_and_no_collector_is_dialled() {
    // The endpoint is not set: no layer, so no trace id in the lines.
    let process = start_binary(&[], &[("LOG_LEVEL", "debug")]);
    create_in_trace(&process).await;
    let line = eventually("the CreateTask line", || async { create_line(&process) }).await;
    assert!(line["span"].get("trace_id").is_none(), "{line}");
    drop(process);

    // Everything else that could make it export points at a collector,
    // with the SDK turned off by its standard switch: it never connects.
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let process = start_binary(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ],
    );
    create_in_trace(&process).await;
    // Many export periods, without a connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(collector.connections.load(Ordering::SeqCst), 0);
    assert!(collector.spans().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_spans_still_batched_are_exported_at_exit() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    // A batch that would wait ten minutes: only the exit sends it.
    let mut process = start_binary(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );
    create_in_trace(&process).await;
    assert!(collector.spans().is_empty());
    send_sigterm(&process.child);
    let status = tokio::task::block_in_place(|| process.child.wait()).expect("exits");
    assert!(status.success(), "{status}");
    let names: Vec<String> = collector
        .spans()
        .into_iter()
        .map(|span| span.name)
        .collect();
    assert!(
        names.iter().any(|name| name == "TaskService/CreateTask"),
        "{names:?}"
    );
}

/// What a process needs to export to `endpoint` quickly.
fn exporting_to(endpoint: &str) -> [(&str, &str); 2] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ]
}

/// A task created `delay` ahead of now, so it waits.
fn delayed_echo(delay: Duration) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        run_after: Some((SystemTime::now() + delay).into()),
        ..request("traced later", "echo", Some(json!({"n": 1})))
    }
}

/// Stops `process` with SIGTERM and waits for it to exit cleanly.
fn stop(mut process: Process) {
    send_sigterm(&process.child);
    let status = tokio::task::block_in_place(|| process.child.wait()).expect("exits");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_is_a_span_in_the_trace_of_its_create_and_ends_with_its_outcome() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let process = start_binary(&[], &exporting_to(&endpoint));
    let completed = create_in_trace(&process).await;
    let failed = create_request_in_trace(&process, request("traced failure", "fail", None)).await;

    let run = collector.run_in_trace_of_create(&completed, 1).await;
    assert_eq!(run.service_name, "task-processor", "{run:?}");
    assert_eq!(run.attributes.get("kind").map(String::as_str), Some("echo"));
    assert_eq!(
        run.attributes.get("outcome").map(String::as_str),
        Some("completed")
    );
    assert_ne!(run.status.0, StatusCode::Error as i32, "{run:?}");

    let run = collector.run_in_trace_of_create(&failed, 1).await;
    assert_eq!(
        run.attributes.get("outcome").map(String::as_str),
        Some("failed")
    );
    assert_eq!(run.status.0, StatusCode::Error as i32, "{run:?}");
    assert!(
        !run.status.1.is_empty(),
        "the error is the message: {run:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_run_of_a_batch_is_a_span_in_the_trace_of_the_batch_create() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let process = start_binary(&[], &exporting_to(&endpoint));
    let batch = pb::BatchCreateTasksRequest {
        requests: vec![
            request("first", "echo", None),
            request("second", "echo", None),
        ],
    };
    let mut client = process.client().await;
    let tasks = client
        .batch_create_tasks(in_trace(batch))
        .await
        .expect("created")
        .into_inner()
        .tasks;

    let create = eventually("the BatchCreateTasks span at the collector", || async {
        collector
            .spans()
            .into_iter()
            .find(|span| span.name == "TaskService/BatchCreateTasks")
    })
    .await;
    assert_eq!(create.trace_id, TRACE_ID, "{create:?}");
    for task in tasks {
        let run = collector.run_in_trace(&task.id, 1).await;
        assert_eq!(run.parent_span_id, create.span_id, "{run:?} {create:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_after_a_restart_joins_the_trace_of_its_create() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let store = format!("sqlite://{}", fresh_sqlite_path().display());
    let arguments = |node: &'static str| {
        [
            "--store",
            store.as_str(),
            "--node-name",
            node,
            "--drain-period",
            "0s",
            "--shutdown-grace",
            "0s",
        ]
    };
    let first = start_binary(&arguments("first"), &exporting_to(&endpoint));
    let task_id = create_request_in_trace(&first, delayed_echo(Duration::from_secs(3))).await;
    stop(first);

    let second = start_binary(&arguments("second"), &exporting_to(&endpoint));
    let done = wait_for_status(&second.client().await, &task_id, pb::TaskStatus::Completed).await;
    assert_eq!(done.node, "second", "run after the restart");
    collector.run_in_trace_of_create(&task_id, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_on_another_replica_joins_the_trace_of_its_create() {
    let test = "tracing::a_run_on_another_replica_joins_the_trace_of_its_create";
    if !postgres_available(test) {
        return;
    }
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let store = fresh_postgres_schema().await;
    let arguments = |node: &'static str| {
        [
            "--store",
            store.as_str(),
            "--node-name",
            node,
            "--drain-period",
            "0s",
            "--shutdown-grace",
            "0s",
        ]
    };
    // Created on A, which is gone by the time the task is due: B, which
    // never saw the create, claims it from the table and runs it.
    let runner = start_binary(&arguments("b"), &exporting_to(&endpoint));
    // At the shipped level: there, sqlx's unlogged check for a slow query
    // once left the exporter's filter state at "disabled" for the next
    // `rpc` span on the thread, and most creates had no span to join.
    let creator = start_binary(&arguments("a"), &exporting_to(&endpoint));
    let task_id = create_request_in_trace(&creator, delayed_echo(Duration::from_secs(2))).await;
    stop(creator);

    let done = wait_for_status(&runner.client().await, &task_id, pb::TaskStatus::Completed).await;
    assert_eq!(done.node, "b", "run on the other replica");
    collector.run_in_trace_of_create(&task_id, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_workers_assignment_carries_the_trace_of_the_create() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let process = start_binary(&["--worker-kinds", "remote"], &exporting_to(&endpoint));
    let task_id = create_request_in_trace(&process, request("traced remote", "remote", None)).await;
    let mut worker = crate::workers::RawWorker::open(
        process.channel().await,
        crate::workers::hello(&["remote"], 1, "traced"),
    )
    .await
    .expect("hello accepted");
    let assignment = match worker.next().await {
        pb::work_response::Message::Assignment(assignment) => assignment,
        other => panic!("expected an assignment, got {other:?}"),
    };
    assert_eq!(
        assignment.task.as_ref().map(|task| task.id.as_str()),
        Some(task_id.as_str())
    );
    let traceparent = assignment
        .trace_context
        .get("traceparent")
        .unwrap_or_else(|| panic!("no traceparent in {:?}", assignment.trace_context));
    assert!(
        traceparent.starts_with(&format!("00-{TRACE_ID}-")),
        "{traceparent}"
    );
    assert_eq!(
        assignment
            .trace_context
            .get("tracestate")
            .map(String::as_str),
        Some("vendor=value")
    );
    worker.complete(&task_id, 1, json!("done")).await;
    // The run, on the server's side, is a span in the same trace.
    let run = collector.run_in_trace_of_create(&task_id, 1).await;
    assert_eq!(
        run.attributes.get("outcome").map(String::as_str),
        Some("completed")
    );
}
