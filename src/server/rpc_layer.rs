//! Per-RPC observation: a tower layer that gives every call a span (method,
//! peer, request id; with tracing on, the client's trace as its parent and
//! its trace id), catches panics as `INTERNAL`, turns tonic's "message
//! too large" `OUT_OF_RANGE` into `RESOURCE_EXHAUSTED`, and records the
//! final code and latency in the metrics and in one log line, whose level
//! says whether an operator needs it (see [`interest`]): a routine call is
//! logged at `debug` only, so by default a successful call costs no line.

use std::{
    borrow::Cow,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::{Instrument, Span, debug_span, error};

use crate::{auth::PeerInfo, metrics::Metrics, telemetry};

/// The metadata key carrying a call's request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id taken from a client; longer ones are replaced.
const MAX_REQUEST_ID_LENGTH: usize = 128;

/// How tonic's decoder words a message over the limit (tonic 0.14,
/// `codec/decode.rs`), up to the length it found.
const TOO_LARGE_PREFIX: &str = "Error, decoded message length too large: found ";

/// A unary call that takes at least this long is logged at `info` even
/// when it succeeds. Healthy calls take well under a millisecond on memory
/// and a few on SQLite or PostgreSQL (a group commit); a second is far
/// beyond that, and below the store deadlines (1.5 s for a commit, 3 s for
/// a read), so a call that nearly ran into one is seen. Streams are never
/// slow: they last as long as their client wants.
pub const SLOW_CALL_THRESHOLD: Duration = Duration::from_secs(1);

/// The server-streaming and bidirectional methods we serve, whose latency
/// is their client's choice. (Unknown methods are answered
/// `UNIMPLEMENTED` at once, so they never come near the threshold.)
const STREAMING_METHODS: &[&str] = &[
    "TaskService/WatchTask",
    "TaskService/WatchTasks",
    "WorkerService/Work",
    "Health/Watch",
    "ServerReflection/ServerReflectionInfo",
];

/// The layer that observes every gRPC call.
#[derive(Clone, Debug)]
pub struct RpcLayer {
    metrics: Metrics,
}

impl RpcLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RpcService<S> {
    inner: S,
    metrics: Metrics,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, RequestBody> Service<Request<RequestBody>> for RpcService<S>
where
    S: Service<Request<RequestBody>, Response = Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Send,
    RequestBody: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let method = short_method(request.uri().path());
        let peer = Peer(
            request
                .extensions()
                .get::<PeerInfo>()
                .and_then(PeerInfo::remote_addr),
        );
        let request_id = request_id(request.headers());
        request
            .headers_mut()
            .insert(REQUEST_ID_HEADER, request_id.clone());
        // `task_id` is filled in by the handler once it knows the task, so
        // the call's line names the task it created, read or cancelled.
        // The span is at debug: at info, making it (its fields formatted,
        // entered at every poll) cost about a fifth of a GetTask's server
        // CPU, for every call, though by default only calls that failed or
        // were slow write a line. Those lines carry the span's fields
        // themselves, all but `task_id`.
        let span = debug_span!(
            "rpc",
            method = %method,
            peer = %peer,
            request_id = request_id.to_str().unwrap_or_default(),
            task_id = tracing::field::Empty,
            schedule_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
        );
        // With tracing on, the span joins the client's trace (W3C
        // `traceparent`), is exported as the call's span, and its
        // `trace_id` is in the call's lines. Otherwise this is a check.
        telemetry::join_caller_trace(&span, request.headers(), &method);
        let call = Call {
            method,
            peer,
            request_id,
            started: Instant::now(),
            span: span.clone(),
            metrics: self.metrics.clone(),
        };
        // The clone that was polled ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let outcome = AssertUnwindSafe(inner.call(request).instrument(span))
                .catch_unwind()
                .await;
            let mut response = match outcome {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    // The panic hook has logged it with a backtrace.
                    error!(
                        parent: &call.span,
                        method = %call.method,
                        request_id = call.request_id.to_str().unwrap_or_default(),
                        "handler panicked; answering INTERNAL"
                    );
                    Status::internal("internal error; the server logged the details").into_http()
                }
            };
            response
                .headers_mut()
                .insert(REQUEST_ID_HEADER, call.request_id.clone());
            rewrite_oversized_request(response.headers_mut());
            // A "trailers-only" answer (every error) has its code in the
            // headers; otherwise it comes in the trailers at the end.
            if let Some(code) = grpc_code(response.headers()) {
                call.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(ObservedBody {
                    inner: body,
                    call: Some(call),
                })
            }))
        })
    }
}

/// `/taskprocessor.v1.TaskService/CreateTask` → `TaskService/CreateTask`;
/// borrowed for the methods we serve, so most calls allocate nothing here.
fn short_method(path: &str) -> Cow<'static, str> {
    const KNOWN: &[(&str, &str)] = &[
        (
            "/taskprocessor.v1.TaskService/CreateTask",
            "TaskService/CreateTask",
        ),
        (
            "/taskprocessor.v1.TaskService/GetTask",
            "TaskService/GetTask",
        ),
        (
            "/taskprocessor.v1.TaskService/ListTasks",
            "TaskService/ListTasks",
        ),
        (
            "/taskprocessor.v1.TaskService/CancelTask",
            "TaskService/CancelTask",
        ),
        (
            "/taskprocessor.v1.TaskService/WatchTask",
            "TaskService/WatchTask",
        ),
        ("/grpc.health.v1.Health/Check", "Health/Check"),
        ("/grpc.health.v1.Health/Watch", "Health/Watch"),
    ];
    if let Some((_, short)) = KNOWN.iter().find(|(full, _)| *full == path) {
        return Cow::Borrowed(short);
    }
    let trimmed = path.trim_start_matches('/');
    Cow::Owned(match trimmed.split_once('/') {
        Some((service, method)) => {
            let service = service.rsplit('.').next().unwrap_or(service);
            format!("{service}/{method}")
        }
        None => trimmed.to_owned(),
    })
}

/// The client's `x-request-id` when usable, else a fresh one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    let from_client = headers.get(REQUEST_ID_HEADER).filter(|value| {
        !value.is_empty() && value.len() <= MAX_REQUEST_ID_LENGTH && value.to_str().is_ok()
    });
    if let Some(value) = from_client {
        return value.clone();
    }
    let mut buffer = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buffer);
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A peer address, shown as `unknown` when the transport has none.
struct Peer(Option<std::net::SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => address.fmt(formatter),
            None => formatter.write_str("unknown"),
        }
    }
}

/// Makes tonic's answer to a request over the size limit, `OUT_OF_RANGE`,
/// the `RESOURCE_EXHAUSTED` of gRPC's convention (grpc-go, grpc-java), with
/// a message that states the limit. tonic decides this before any handler
/// runs (unary and server-streaming calls: in the headers of a
/// trailers-only answer), or hands it to the handler of a client stream,
/// which ends the call with it (then in the trailers); both pass here. On a
/// server, only a request can be decoded, so the text cannot mean anything
/// else.
fn rewrite_oversized_request(headers: &mut HeaderMap) {
    if grpc_code(headers) != Some(Code::OutOfRange) {
        return;
    }
    let Some(message) = Status::from_header_map(headers).map(|status| status.message().to_owned())
    else {
        return;
    };
    let Some(sizes) = message.strip_prefix(TOO_LARGE_PREFIX) else {
        return;
    };
    // "{found} bytes, the limit is: {limit} bytes"
    let parsed = sizes
        .strip_suffix(" bytes")
        .and_then(|sizes| sizes.split_once(" bytes, the limit is: "))
        .and_then(|(found, limit)| Some((found.parse::<u64>().ok()?, limit.parse::<u64>().ok()?)));
    let text = match parsed {
        Some((found, limit)) => format!(
            "the request message is {found} bytes, more than this server's limit of {limit} bytes"
        ),
        // Another tonic's wording: keep its text, which names the limit.
        None => format!("the request message is larger than this server's limit: {message}"),
    };
    let mut rewritten = HeaderMap::new();
    if Status::resource_exhausted(text)
        .add_header(&mut rewritten)
        .is_ok()
    {
        headers.remove("grpc-status-details-bin");
        headers.extend(rewritten);
    }
}

fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// One call being observed.
struct Call {
    method: Cow<'static, str>,
    peer: Peer,
    request_id: HeaderValue,
    started: Instant,
    span: Span,
    metrics: Metrics,
}

impl Call {
    fn finish(self, code: Code) {
        let latency = self.started.elapsed();
        let stream = STREAMING_METHODS.contains(&self.method.as_ref());
        macro_rules! log_call {
            ($level:ident) => {
                tracing::$level!(
                    parent: &self.span,
                    method = %self.method,
                    peer = %self.peer,
                    request_id = self.request_id.to_str().unwrap_or_default(),
                    code = ?code,
                    latency_ms = millis(latency),
                    "rpc finished"
                )
            };
        }
        match interest(code, latency, stream) {
            Interest::Routine => log_call!(debug),
            Interest::Notable => log_call!(info),
            Interest::Trouble => log_call!(warn),
        }
        self.metrics.rpc_finished(self.method, code, latency);
    }
}

/// How much a finished call matters to an operator reading the log; its
/// line is written at `debug`, `info` or `warn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Interest {
    /// The call went as the protocol intends, whatever its code: the
    /// client got its answer (an error names the field or the state that
    /// refused it), and the metrics count it by method and code.
    Routine,
    /// The server turned the call away or took too long: it is
    /// unavailable (its store cannot be written, or it is shutting down),
    /// out of room (queue, memory budget, request size), past a deadline,
    /// or asked for a method it does not serve (a client built for another
    /// version).
    Notable,
    /// The server failed at its job: a bug (a panic is `INTERNAL`), or
    /// data it cannot read.
    Trouble,
}

/// The rule for a call's line: by its code, raised to `Notable` when a
/// unary call took [`SLOW_CALL_THRESHOLD`] or more.
///
/// Client errors (`INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`,
/// `FAILED_PRECONDITION`, …) and `CANCELLED` (the client left, or its
/// deadline passed) are routine: a misbehaving client would otherwise
/// write a line per call, at the cost this rule exists to avoid, and the
/// client already has the reason; `task_processor_rpc_requests_total`
/// shows their rate by code.
fn interest(code: Code, latency: Duration, stream: bool) -> Interest {
    let by_code = match code {
        Code::Internal | Code::Unknown | Code::DataLoss => Interest::Trouble,
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Unimplemented => Interest::Notable,
        Code::Ok
        | Code::Cancelled
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unauthenticated => Interest::Routine,
    };
    if !stream && latency >= SLOW_CALL_THRESHOLD {
        by_code.max(Interest::Notable)
    } else {
        by_code
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

pin_project_lite::pin_project! {
    /// A response body that reports the call's code when the trailers go
    /// out, or `CANCELLED` when the client leaves first.
    struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.finish(Code::Cancelled);
            }
        }
    }
}

impl<B> http_body::Body for ObservedBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut polled = this.inner.poll_frame(context);
        match &mut polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    rewrite_oversized_request(trailers);
                }
                if let Some(code) = frame.trailers_ref().and_then(grpc_code)
                    && let Some(call) = this.call.take()
                {
                    call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.take() {
                    call.finish(Code::Internal);
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    call.finish(Code::Ok);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// A handler with a bug.
    #[derive(Clone)]
    struct PanickingHandler;

    impl Service<Request<()>> for PanickingHandler {
        type Response = Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<()>) -> Self::Future {
            Box::pin(async { panic!("a bug in a handler") })
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_with_a_request_id() {
        let metrics = Metrics::new();
        let mut service = RpcLayer::new(metrics.clone()).layer(PanickingHandler);
        let request = Request::builder()
            .uri("/taskprocessor.v1.TaskService/GetTask")
            .body(())
            .expect("request");
        let response = service.call(request).await.expect("answered, not crashed");
        assert_eq!(grpc_code(response.headers()), Some(Code::Internal));
        assert!(response.headers().contains_key(REQUEST_ID_HEADER));
        let exposition = metrics.render(&crate::metrics::Occupancy::default());
        assert!(
            exposition
                .contains(r#"rpc_requests_total{method="TaskService/GetTask",code="Internal"} 1"#),
            "{exposition}"
        );
    }

    /// Answers like tonic when a request is over the limit: trailers-only,
    /// or (a client stream's handler ending with it) in the trailers.
    #[derive(Clone)]
    struct OversizedHandler {
        in_trailers: bool,
    }

    fn too_large() -> Status {
        Status::out_of_range(format!(
            "{TOO_LARGE_PREFIX}5000 bytes, the limit is: 4096 bytes"
        ))
    }

    /// A body of trailers alone.
    struct TrailersBody(Option<HeaderMap>);

    impl http_body::Body for TrailersBody {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _context: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.take().map(|trailers| Ok(Frame::trailers(trailers))))
        }
    }

    impl Service<Request<()>> for OversizedHandler {
        type Response = Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<()>) -> Self::Future {
            let in_trailers = self.in_trailers;
            Box::pin(async move {
                if !in_trailers {
                    return Ok(too_large().into_http());
                }
                let mut trailers = HeaderMap::new();
                too_large().add_header(&mut trailers).expect("valid status");
                Ok(Response::new(tonic::body::Body::new(TrailersBody(Some(
                    trailers,
                )))))
            })
        }
    }

    fn assert_rewritten(headers: &HeaderMap) {
        let status = Status::from_header_map(headers).expect("a status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the request message is 5000 bytes, more than this server's limit of 4096 bytes"
        );
    }

    #[tokio::test]
    async fn an_oversized_request_is_resource_exhausted_in_headers_or_trailers() {
        for in_trailers in [false, true] {
            let metrics = Metrics::new();
            let mut service =
                RpcLayer::new(metrics.clone()).layer(OversizedHandler { in_trailers });
            let request = Request::builder()
                .uri("/taskprocessor.v1.WorkerService/Work")
                .body(())
                .expect("request");
            let mut response = service.call(request).await.expect("answered");
            if in_trailers {
                assert_eq!(grpc_code(response.headers()), None);
                let frame = std::future::poll_fn(|context| {
                    http_body::Body::poll_frame(Pin::new(response.body_mut()), context)
                })
                .await
                .expect("a frame")
                .expect("not an error");
                assert_rewritten(frame.trailers_ref().expect("trailers"));
            } else {
                assert_rewritten(response.headers());
            }
            let exposition = metrics.render(&crate::metrics::Occupancy::default());
            assert!(
                exposition.contains(
                    r#"rpc_requests_total{method="WorkerService/Work",code="ResourceExhausted"} 1"#
                ),
                "{exposition}"
            );
        }
    }

    #[test]
    fn only_failures_of_the_server_and_slow_calls_are_above_debug() {
        let fast = Duration::from_millis(2);
        for code in [
            Code::Ok,
            Code::Cancelled,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
        ] {
            assert_eq!(interest(code, fast, false), Interest::Routine, "{code:?}");
        }
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Unimplemented,
        ] {
            assert_eq!(interest(code, fast, false), Interest::Notable, "{code:?}");
        }
        for code in [Code::Internal, Code::Unknown, Code::DataLoss] {
            assert_eq!(interest(code, fast, false), Interest::Trouble, "{code:?}");
        }
        let slow = SLOW_CALL_THRESHOLD;
        assert_eq!(interest(Code::Ok, slow, false), Interest::Notable);
        assert_eq!(interest(Code::NotFound, slow, false), Interest::Notable);
        assert_eq!(interest(Code::Internal, slow, false), Interest::Trouble);
        assert_eq!(
            interest(Code::Ok, SLOW_CALL_THRESHOLD * 600, true),
            Interest::Routine,
            "a stream lasts as long as its client wants"
        );
    }

    #[test]
    fn the_streaming_methods_are_named_as_the_layer_names_them() {
        for path in [
            "/taskprocessor.v1.TaskService/WatchTask",
            "/taskprocessor.v1.TaskService/WatchTasks",
            "/taskprocessor.v1.WorkerService/Work",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(
                STREAMING_METHODS.contains(&short_method(path).as_ref()),
                "{path}"
            );
        }
    }

    /// Every streaming RPC of our contract is known as one, so a stream
    /// added later is never logged as a slow call.
    #[test]
    fn every_streaming_rpc_of_the_contract_is_a_streaming_method() {
        use prost::Message;
        let descriptors = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .expect("our descriptor set decodes");
        let mut streams = Vec::new();
        for file in descriptors.file {
            if file.package() != "taskprocessor.v1" {
                continue;
            }
            for service in file.service {
                for method in &service.method {
                    if method.client_streaming() || method.server_streaming() {
                        streams.push(format!("{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        assert!(streams.len() >= 3, "{streams:?}");
        for stream in &streams {
            assert!(STREAMING_METHODS.contains(&stream.as_str()), "{stream}");
        }
    }

    #[test]
    fn methods_are_shortened_to_service_and_method() {
        assert_eq!(
            short_method("/taskprocessor.v1.TaskService/CreateTask"),
            "TaskService/CreateTask"
        );
        assert_eq!(short_method("/grpc.health.v1.Health/Check"), "Health/Check");
    }

    #[test]
    fn a_usable_client_request_id_is_kept_and_others_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(
            REQUEST_ID_HEADER,
            HeaderValue::from_str(&"x".repeat(200)).expect("ascii"),
        );
        assert_ne!(request_id(&headers).len(), 200);
        assert!(!request_id(&HeaderMap::new()).is_empty());
        assert!(
            uuid::Uuid::parse_str(request_id(&HeaderMap::new()).to_str().expect("ascii")).is_ok()
        );
    }
}
