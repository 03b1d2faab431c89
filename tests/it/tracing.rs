//! OpenTelemetry tracing, against a fake OTLP/gRPC collector of the outside
//! world: the real binary exports a call's span under the trace its client
//! sent in `traceparent`, logs the trace id, and without an endpoint never
//! so much as connects.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::span::SpanKind,
};
use serde_json::Value as JsonValue;
use tokio::net::TcpListener;
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{
    process::{Process, send_sigterm, start_binary},
    support::{eventually, request},
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
    parent_span_id: String,
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
                spans.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    parent_span_id: hex(&span.parent_span_id),
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
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Creates an `echo` task with `traceparent` (and `tracestate`) metadata
/// naming [`TRACE_ID`] and [`PARENT_SPAN_ID`]; returns the task id.
async fn create_in_trace(process: &Process) -> String {
    let mut client = process.client().await;
    let mut create = Request::new(request("traced", "echo", None));
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    create.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str()).expect("ascii"),
    );
    create
        .metadata_mut()
        .insert("tracestate", MetadataValue::from_static("vendor=value"));
    client
        .create_task(create)
        .await
        .expect("created")
        .into_inner()
        .id
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
