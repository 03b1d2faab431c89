//! The trace a task keeps: the W3C context of the call that created it,
//! taken when the task is created, and made the parent of each of its
//! runs' spans, on whichever server and however much later the run is.
//! Both go through the global propagator, which is W3C trace context while
//! tracing is on and the SDK's no-op otherwise; and both return at their
//! first check when the span at hand is off.

use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::task::TraceContext;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The trace context of the current span (a create call's), for the task
/// to keep; empty when tracing is off or the span is not traced.
pub fn current_trace_context() -> TraceContext {
    let span = Span::current();
    if span.is_disabled() {
        return TraceContext::default();
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return TraceContext::default();
    }
    let mut carrier = TraceContext::default();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Carrier(&mut carrier));
    });
    carrier
}

/// Makes `span` (a run's) the child of the trace `stored` names. Does
/// nothing when the span is off, tracing is not installed, or `stored` is
/// not a valid context (an older row, a schedule's firing).
pub fn join_stored_trace(span: &Span, stored: &TraceContext) {
    if span.is_disabled() || stored.is_empty() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&StoredContext(stored))
    });
    if !parent.span().span_context().is_valid() {
        return;
    }
    // An error means no OTel layer: tracing is off, the span is for logs.
    let _ = span.set_parent(parent);
}

/// Writes the propagation fields into a task's trace context.
struct Carrier<'context>(&'context mut TraceContext);

impl Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.0.traceparent = value,
            TRACESTATE => self.0.tracestate = value,
            // W3C trace context has no other field.
            _ => {}
        }
    }
}

/// Reads the propagation fields of a stored trace context.
struct StoredContext<'context>(&'context TraceContext);

impl Extractor for StoredContext<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match key {
            TRACEPARENT => &self.0.traceparent,
            TRACESTATE => &self.0.tracestate,
            _ => return None,
        };
        (!value.is_empty()).then_some(value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    #[test]
    fn a_kept_context_reads_back_as_the_trace_it_was_taken_from() {
        let stored = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            tracestate: "vendor=value".to_owned(),
        };
        let propagator = TraceContextPropagator::new();
        let context = propagator.extract(&StoredContext(&stored));
        let mut written = TraceContext::default();
        propagator.inject_context(&context, &mut Carrier(&mut written));
        assert_eq!(written, stored);
    }

    #[test]
    fn without_a_traced_span_there_is_nothing_to_keep() {
        assert!(current_trace_context().is_empty());
    }
}
