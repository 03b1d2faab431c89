//! `WatchTasks` on the wire: the manager's [`TasksWatch`] as a gRPC stream,
//! each message with its resume token.

use std::pin::Pin;

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::resume_token;
use crate::{
    manager::{TaskFilter, TasksEvent, TasksWatch, TasksWatchEnd},
    pb,
};

/// The stream type of `WatchTasks`.
pub type WatchTasksStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchTasksResponse, Status>> + Send + 'static>>;

/// Turns a manager stream into the gRPC stream: messages as they come,
/// `ABORTED` for a client that fell too far behind, `UNAVAILABLE` when the
/// server stops. When the client goes away, tonic drops this stream and
/// with it the subscription.
pub(super) fn watch_tasks_stream(
    mut watch: TasksWatch,
    filter: TaskFilter,
    shutdown: CancellationToken,
) -> WatchTasksStream {
    Box::pin(async_stream::stream! {
        loop {
            // Shutdown first: once it fires, streams must hear UNAVAILABLE.
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => Err(TasksWatchEnd::Closed),
                next = watch.next() => next,
            };
            match next {
                Ok(event) => yield Ok(response(event, &filter)),
                Err(TasksWatchEnd::Lagged) => {
                    yield Err(Status::aborted(
                        "the client fell too far behind the changes; call WatchTasks again \
                         with the resume_token of the last message received",
                    ));
                    break;
                }
                Err(TasksWatchEnd::StoreFailed) => {
                    yield Err(Status::unavailable(
                        "the task store could not be read; call WatchTasks again with the \
                         resume_token of the last message received",
                    ));
                    break;
                }
                Err(TasksWatchEnd::Closed) => {
                    yield Err(Status::unavailable(
                        "the server is shutting down; call WatchTasks again with the \
                         resume_token of the last message received",
                    ));
                    break;
                }
            }
        }
    })
}

fn response(event: TasksEvent, filter: &TaskFilter) -> pb::WatchTasksResponse {
    match event {
        TasksEvent::Task { task, position } => pb::WatchTasksResponse {
            task: Some(pb::Task::from(&*task)),
            initial_done: false,
            resume_token: resume_token::encode(&position, filter),
        },
        TasksEvent::InitialDone { position } => pb::WatchTasksResponse {
            task: None,
            initial_done: true,
            resume_token: resume_token::encode(&position, filter),
        },
        TasksEvent::Bookmark { position } => pb::WatchTasksResponse {
            task: None,
            initial_done: false,
            resume_token: resume_token::encode(&position, filter),
        },
    }
}
