//! `GET /api/v1/tasks/{id}/watch` and `GET /api/v1/watch`: `WatchTask` and
//! `WatchTasks` as Server-Sent Events. Each response message is one event
//! with one `data:` line of JSON, under the RPC's rules (for `WatchTask`:
//! the current state first, every status change in order, the stream ends
//! after a terminal state; for `WatchTasks`: the initial list if asked for,
//! then changes, each with its `resumeToken`). An error before the first
//! message (a bad or unknown id, a bad filter or token) is an ordinary JSON
//! error answer; one after it (the server shutting down: `UNAVAILABLE`; a
//! client too slow: `ABORTED`) is a last event named `error` carrying the
//! same JSON as an error answer. A comment goes out every
//! [`SSE_KEEP_ALIVE`] of quiet.
//!
//! The RPC's response stream lives inside the event stream: when the
//! client goes away, hyper drops the body, which drops the RPC's stream,
//! which the RPC layer logs as `CANCELLED` and the manager forgets.

use std::convert::Infallible;

use axum::{
    extract::{Path, RawQuery, State},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use tokio_stream::Stream;
use tracing::error;

use super::{
    Gateway, SSE_KEEP_ALIVE,
    call::{CallContext, REQUEST_ID_HEADER, request_id_of},
    query,
};
use crate::{
    api::proto_json::{JsonLayout, Unpopulated, WATCH_TASK_RESPONSE, WATCH_TASKS_RESPONSE},
    pb,
};

/// The comment text of a keep-alive.
const KEEP_ALIVE_TEXT: &str = "keep-alive";

pub(super) async fn watch_task(
    State(gateway): State<Gateway>,
    call: CallContext,
    Path(id): Path<String>,
) -> Response {
    let answer = gateway
        .tasks
        .clone()
        .watch_task(call.request(pb::WatchTaskRequest { id }))
        .await;
    match answer {
        Ok(response) => sse_response(gateway, response, WATCH_TASK_RESPONSE),
        Err(status) => gateway.status_response(&status),
    }
}

/// `GET /api/v1/watch?status=…&label=key=value&kind=…&sendInitial=true&resumeToken=…`.
pub(super) async fn watch_tasks(
    State(gateway): State<Gateway>,
    call: CallContext,
    RawQuery(raw_query): RawQuery,
) -> Response {
    let request = match query::watch_tasks_request(raw_query.as_deref().unwrap_or_default()) {
        Ok(request) => request,
        Err(refused) => return refused.into_response_for(&call),
    };
    let answer = gateway
        .tasks
        .clone()
        .watch_tasks(call.request(request))
        .await;
    match answer {
        Ok(response) => sse_response(gateway, response, WATCH_TASKS_RESPONSE),
        Err(status) => gateway.status_response(&status),
    }
}

/// The event stream of an RPC's response stream, with keep-alives and the
/// call's request id.
fn sse_response<M: prost::Message + Default + Send + 'static>(
    gateway: Gateway,
    response: tonic::Response<tonic::Streaming<M>>,
    message_name: &'static str,
) -> Response {
    let request_id = request_id_of(response.metadata());
    let events = events(gateway, response.into_inner(), message_name);
    let mut response = Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(SSE_KEEP_ALIVE)
                .text(KEEP_ALIVE_TEXT),
        )
        .into_response();
    if let Some(request_id) = request_id {
        response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    }
    response
}

/// The RPC's messages as events, then an `error` event if it failed.
fn events<M: prost::Message + Default + Send + 'static>(
    gateway: Gateway,
    mut messages: tonic::Streaming<M>,
    message_name: &'static str,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        loop {
            match messages.message().await {
                Ok(Some(message)) => {
                    let json = gateway.proto_json.to_json(
                        &message,
                        message_name,
                        JsonLayout::Compact,
                        Unpopulated::Emit,
                    );
                    match json {
                        Ok(json) => yield Ok(Event::default().data(json)),
                        Err(render_error) => {
                            error!(error = %render_error, "cannot write a watch message as JSON");
                            let status = tonic::Status::internal(
                                "internal error; the server logged the details",
                            );
                            yield Ok(Event::default().event("error").data(gateway.status_json(&status)));
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    yield Ok(Event::default().event("error").data(gateway.status_json(&status)));
                    break;
                }
            }
        }
    }
}
