//! OpenTelemetry tracing: the tracer provider that exports spans over
//! OTLP/gRPC, installed only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or its
//! traces-only twin) is set, and the join of a call's span to the trace
//! its client sent in the W3C `traceparent`/`tracestate` metadata. Nothing
//! here runs, or allocates, when no endpoint is set: no layer, no
//! propagator, no exporter.

use std::time::Duration;

use http::HeaderMap;
use opentelemetry::{
    Key,
    propagation::Extractor,
    trace::{TraceContextExt, TraceId, TracerProvider as _},
};
use opentelemetry_otlp::{ExporterBuildError, SpanExporter};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    runtime,
    trace::{SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};
use tracing::{Metadata, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, registry::LookupSpan};

/// The variable that turns tracing on: where the OTLP/gRPC collector is.
pub const ENDPOINT_VARIABLE: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The standard traces-only endpoint, which also turns tracing on.
const TRACES_ENDPOINT_VARIABLE: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

/// The standard switch that turns the SDK off whatever else is set.
const SDK_DISABLED_VARIABLE: &str = "OTEL_SDK_DISABLED";

/// `service.name` when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names one (the SDK's own default,
/// `unknown_service:<binary>`, says nothing useful in a trace view).
pub const DEFAULT_SERVICE_NAME: &str = "task-processor";

/// How long the exit waits for the spans still batched to be exported; a
/// collector that is down must not hold a shutdown for long.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why tracing could not be set up (an endpoint that is not a URL, ...).
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("cannot set up the OTLP trace exporter ({ENDPOINT_VARIABLE} and the OTEL_* variables)")]
    Exporter(#[from] ExporterBuildError),
}

/// The tracer provider, while tracing is on. Keep it to the end of main and
/// call [`Tracing::shutdown`] there, so the last spans are exported.
pub struct Tracing {
    provider: SdkTracerProvider,
    /// Where spans go, for the start line.
    endpoint: String,
}

impl Tracing {
    /// Sets up the exporter when an OTLP endpoint is set in `env` (and
    /// `OTEL_SDK_DISABLED` is not `true`), else `None`. The exporter and the
    /// batch processor read the other standard variables themselves:
    /// `OTEL_EXPORTER_OTLP_{TIMEOUT,HEADERS,COMPRESSION}`, `OTEL_BSP_*`,
    /// `OTEL_TRACES_SAMPLER`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`.
    /// Must be called on the tokio runtime: the batch processor is a task
    /// on it.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, TracingError> {
        let disabled = env(SDK_DISABLED_VARIABLE)
            .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"));
        // The traces-only variable wins, as in the exporter.
        let endpoint = [TRACES_ENDPOINT_VARIABLE, ENDPOINT_VARIABLE]
            .into_iter()
            .find_map(|name| env(name).filter(|value| !value.trim().is_empty()));
        let Some(endpoint) = endpoint.filter(|_| !disabled) else {
            return Ok(None);
        };
        let exporter = SpanExporter::builder().with_tonic().build()?;
        let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource())
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(Some(Self { provider, endpoint }))
    }

    /// The collector spans are exported to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The layer that makes OTel spans of our spans (see [`exported`]).
    pub fn layer<S>(&self) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        let tracer = self.provider.tracer(DEFAULT_SERVICE_NAME);
        // A dynamic filter, asked at every span and event rather than
        // once per callsite: with per-layer filters, a callsite enabled
        // "always" skips `enabled` and reads this thread's filter state as
        // the last `enabled` left it, and sqlx asks `enabled` for its
        // slow-query warning at every statement without then logging it.
        // That left this layer's bit at "disabled" for the next `rpc` span
        // on the thread: on PostgreSQL most creates had no OTel span.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::dynamic_filter_fn(
                |metadata, _| exported(metadata),
            ))
            .boxed()
    }

    /// Exports what is still batched and stops the exporter, waiting at
    /// most [`SHUTDOWN_TIMEOUT`] (the batch task's own shutdown has no
    /// deadline: a collector that does not answer would hold the exit for
    /// the export timeout and its retries). Run off the runtime's workers:
    /// the SDK blocks until its batch task, on those workers, has exported.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let exported = tokio::time::timeout(
            SHUTDOWN_TIMEOUT,
            tokio::task::spawn_blocking(move || provider.shutdown()),
        )
        .await;
        match exported {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "could not export the last spans"),
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!(
                timeout_s = SHUTDOWN_TIMEOUT.as_secs(),
                "the last spans were not exported in time; exiting without them"
            ),
        }
    }
}

/// What becomes an OTel span or span event: our own spans (the `rpc` span
/// of each call is at `debug`, so it exists only when something wants it)
/// and our events at `info` and above, recorded on the span they happen in.
/// Other crates' spans (h2, sqlx) would bury ours.
fn exported(metadata: &Metadata<'_>) -> bool {
    if !metadata.target().starts_with("task_processor") {
        return false;
    }
    let most_verbose = if metadata.is_span() {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    *metadata.level() <= most_verbose
}

/// The environment's resource, named [`DEFAULT_SERVICE_NAME`] unless it
/// names itself.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        return detected;
    }
    Resource::builder()
        .with_service_name(DEFAULT_SERVICE_NAME)
        .build()
}

/// Makes `span` (a call's span) the child of the trace context in the
/// call's `traceparent`/`tracestate` metadata, or the root of a new trace
/// when there is none, names its OTel span `name` (kind server), and
/// records the trace id in its `trace_id` field so that the lines logged
/// within the call carry it. Does nothing, at the cost of a check, when the
/// span is off or tracing is not installed.
pub fn join_caller_trace(span: &Span, headers: &HeaderMap, name: &str) {
    if span.is_disabled() {
        return;
    }
    // The global propagator is a no-op until `Tracing::from_env` installs
    // W3C trace context.
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    if span.set_parent(parent).is_err() {
        // No OTel layer (tracing is off, the span exists for the logs).
        return;
    }
    span.record("otel.name", name);
    span.record("otel.kind", "server");
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// Reads propagation fields from HTTP/2 headers (gRPC metadata).
struct HeaderExtractor<'headers>(&'headers HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_is_off_without_an_endpoint_or_when_disabled() {
        let none = |_: &str| None;
        assert!(Tracing::from_env(none).expect("no error").is_none());
        let empty = |name: &str| (name == ENDPOINT_VARIABLE).then(String::new);
        assert!(Tracing::from_env(empty).expect("no error").is_none());
        let disabled = |name: &str| match name {
            ENDPOINT_VARIABLE => Some("http://127.0.0.1:4317".to_owned()),
            SDK_DISABLED_VARIABLE => Some("TRUE".to_owned()),
            _ => None,
        };
        assert!(Tracing::from_env(disabled).expect("no error").is_none());
    }
}
