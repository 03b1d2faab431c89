//! `GET /api/v1/tasks/{id}/watch`: `WatchTask` as Server-Sent Events. Each
//! `WatchTaskResponse` is one event with one `data:` line of JSON, under
//! the RPC's rules (the current state first, every status change in order,
//! the stream ends after a terminal state). An error before the first
//! message (a bad or unknown id) is an ordinary JSON error answer; one
//! after it (the server shutting down: `UNAVAILABLE`) is a last event named
//! `error` carrying the same JSON as an error answer. A comment goes out
//! every [`SSE_KEEP_ALIVE`] of quiet.
//!
//! The RPC's response stream lives inside the event stream: when the
//! client goes away, hyper drops the body, which drops the RPC's stream,
//! which the RPC layer logs as `CANCELLED` and the manager forgets.

use std::convert::Infallible;

use axum::{
    extract::{Path, State},
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
};
use crate::{
    api::proto_json::{JsonLayout, Unpopulated, WATCH_TASK_RESPONSE},
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
    let response = match answer {
        Ok(response) => response,
        Err(status) => return gateway.status_response(&status),
    };
    let request_id = request_id_of(response.metadata());
    let events = events(gateway, response.into_inner());
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
fn events(
    gateway: Gateway,
    mut messages: tonic::Streaming<pb::WatchTaskResponse>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        loop {
            match messages.message().await {
                Ok(Some(message)) => {
                    let json = gateway.proto_json.to_json(
                        &message,
                        WATCH_TASK_RESPONSE,
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
