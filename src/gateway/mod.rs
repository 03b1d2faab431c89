//! The HTTP face of the gRPC port: the contract's REST routes with proto3
//! JSON bodies (`tasks`, `schedules`, watches as Server-Sent Events in
//! `watch`), `GET /health`, CORS for the configured origins, and the
//! dispatch that hands gRPC and gRPC-Web requests to tonic's routes. One
//! router on one listener; the server wires it.
//!
//! A REST route runs the RPC it stands for in process, through the same
//! tower stack a gRPC client reaches (the RPC layer, `TaskCodec` and its
//! limits, `TaskApi`), as grpc-gateway does over the network. So validation,
//! error messages and details, request ids, the call's log line and its
//! metrics are the gRPC ones, written once. Nothing here validates a field,
//! talks to the manager or logs a call; it only translates.

mod call;
mod dashboard;
mod error;
mod query;
mod schedules;
mod tasks;
mod watch;

use std::{convert::Infallible, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio_util::sync::CancellationToken;
use tower::{ServiceExt, util::BoxCloneSyncService};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    api::proto_json::{ProtoJson, ProtoJsonError},
    pb::task_service_client::TaskServiceClient,
};

/// A gRPC service as the gateway calls it in process: the task service
/// behind the RPC layer.
pub type GrpcService = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// Every gRPC service of the port (with gRPC-Web translated), for the
/// requests that are not REST.
pub type GrpcRoutes = BoxCloneSyncService<
    http::Request<axum::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// The comment SSE streams send when nothing else happened for this long,
/// so proxies and browsers keep an idle watch open.
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the routes share.
#[derive(Clone)]
pub struct Gateway {
    /// The task service, called in process for every REST route.
    tasks: TaskServiceClient<GrpcService>,
    /// gRPC and gRPC-Web requests go here.
    grpc: GrpcRoutes,
    proto_json: ProtoJson,
    /// Fires when the drain begins: `/health` answers 503 from then on.
    draining: CancellationToken,
    /// The most a JSON body may take.
    max_body_bytes: usize,
}

impl Gateway {
    /// `tasks` is the task service as gRPC clients reach it; `grpc` every
    /// gRPC service of the port; a JSON body may take `max_body_bytes`.
    pub fn new(
        tasks: GrpcService,
        grpc: GrpcRoutes,
        draining: CancellationToken,
        max_body_bytes: usize,
    ) -> Result<Self, ProtoJsonError> {
        // The size limits are the server's (the request limit in the task
        // service, the JSON body limit in `router`); in process, nothing
        // needs a second one.
        let tasks = TaskServiceClient::new(tasks)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        Ok(Self {
            tasks,
            grpc,
            proto_json: ProtoJson::new()?,
            draining,
            max_body_bytes,
        })
    }
}

/// The whole port: REST routes, `/health`, and gRPC (and gRPC-Web) for
/// everything else. With `cors_origins`, browsers on those origins may call
/// the REST routes and gRPC-Web; with none, no CORS header is ever sent.
pub fn router(gateway: Gateway, cors_origins: &[String]) -> Router {
    let max_body_bytes = gateway.max_body_bytes;
    let router = Router::new()
        .route("/health", get(health))
        .merge(dashboard::routes())
        .route(
            "/api/v1/tasks",
            post(tasks::create_task).get(tasks::list_tasks),
        )
        // Google's custom-method form: a path of its own, so no task id
        // can be mistaken for it.
        .route("/api/v1/tasks:batchCreate", post(tasks::batch_create_tasks))
        .route(
            "/api/v1/tasks/{id}",
            get(tasks::get_task).delete(tasks::delete_task),
        )
        .route("/api/v1/tasks/{id}/cancel", post(tasks::cancel_task))
        .route("/api/v1/tasks/{id}/watch", get(watch::watch_task))
        .route("/api/v1/watch", get(watch::watch_tasks))
        .route(
            "/api/v1/schedules",
            post(schedules::create_schedule).get(schedules::list_schedules),
        )
        .route(
            "/api/v1/schedules/{id}",
            get(schedules::get_schedule).delete(schedules::delete_schedule),
        )
        .route(
            "/api/v1/schedules/{id}/pause",
            post(schedules::pause_schedule),
        )
        .route(
            "/api/v1/schedules/{id}/resume",
            post(schedules::resume_schedule),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(grpc_or_not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(gateway);
    match cors_layer(cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// `GET /health`: `{"status":"ok"}`, or 503 once the shutdown has begun.
async fn health(State(gateway): State<Gateway>) -> Response {
    let (status, text) = if gateway.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else {
        (StatusCode::OK, r#"{"status":"ok"}"#)
    };
    (status, [(header::CONTENT_TYPE, error::JSON)], text).into_response()
}

/// gRPC and gRPC-Web (every `application/grpc…` content type) go to tonic;
/// anything else found no route.
async fn grpc_or_not_found(State(gateway): State<Gateway>, request: Request) -> Response {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    if !is_grpc {
        return error::GatewayError::NoRoute {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
        }
        .into_response();
    }
    match gateway.grpc.oneshot(request).await {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    }
}

async fn method_not_allowed(method: Method, request: Request) -> Response {
    error::GatewayError::MethodNotAllowed {
        method,
        path: request.uri().path().to_owned(),
    }
    .into_response()
}

/// The headers a browser may send: JSON and gRPC-Web's own.
const CORS_REQUEST_HEADERS: [&str; 6] = [
    "content-type",
    "x-request-id",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
];

/// The headers a browser's script may read: the request id, `Retry-After`,
/// and the status gRPC-Web sends in headers when it has no body.
const CORS_EXPOSED_HEADERS: [&str; 5] = [
    "x-request-id",
    "retry-after",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
];

/// How long a browser may keep a preflight's answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// CORS for exactly `origins` (validated by `config`), or none at all.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    // Each origin was checked to be a valid header value when the
    // configuration was loaded; one that is not could never match anyway.
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers(CORS_REQUEST_HEADERS.map(header::HeaderName::from_static))
            .expose_headers(CORS_EXPOSED_HEADERS.map(header::HeaderName::from_static))
            .max_age(CORS_MAX_AGE),
    )
}
