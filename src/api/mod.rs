//! The gRPC edge: `TaskService` handlers that validate requests, call the
//! manager and convert answers.

mod convert;
pub mod error;
pub mod json;
pub mod page_token;
pub mod validate;

use std::pin::Pin;

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    manager::{ManagerHandle, TaskWatch},
    pb::{self, task_service_server::TaskService},
    processor::Registry,
    task::TaskId,
};

pub use error::ApiError;
pub use validate::Limits;

/// The stream type of `WatchTask`.
pub type WatchTaskStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchTaskResponse, Status>> + Send + 'static>>;

/// The `TaskService` implementation.
#[derive(Clone, Debug)]
pub struct TaskApi {
    manager: ManagerHandle,
    registry: Registry,
    limits: Limits,
    /// Fires when the server stops: open watch streams end `UNAVAILABLE`.
    shutdown: CancellationToken,
}

impl TaskApi {
    pub fn new(
        manager: ManagerHandle,
        registry: Registry,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            manager,
            registry,
            limits,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl TaskService for TaskApi {
    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let result = async {
            let new_task = validate::new_task(request.into_inner(), &self.limits, &self.registry)?;
            let task = self.manager.create_task(new_task).await?;
            record_task_id(&task.id);
            Ok(pb::Task::from(&*task))
        }
        .await;
        respond(result)
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let result = async {
            let id = validate::task_id(&request.get_ref().id)?;
            record_task_id(&id);
            let task = self.manager.get_task(id).await?;
            Ok(pb::Task::from(&*task))
        }
        .await;
        respond(result)
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let result = async {
            let query = validate::list_query(request.into_inner())?;
            let page = self.manager.list_tasks(query.clone()).await?;
            Ok(pb::ListTasksResponse {
                tasks: page
                    .tasks
                    .iter()
                    .map(|task| pb::Task::from(&**task))
                    .collect(),
                next_page_token: page
                    .next_after
                    .map(|after| page_token::encode(after, &query))
                    .unwrap_or_default(),
            })
        }
        .await;
        respond(result)
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let result = async {
            let id = validate::task_id(&request.get_ref().id)?;
            record_task_id(&id);
            let task = self.manager.cancel_task(id).await?;
            Ok(pb::Task::from(&*task))
        }
        .await;
        respond(result)
    }

    type WatchTaskStream = WatchTaskStream;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let result = async {
            let id = validate::task_id(&request.get_ref().id)?;
            record_task_id(&id);
            let watch = self.manager.watch_task(id).await?;
            Ok(watch_stream(watch, self.shutdown.clone()))
        }
        .await;
        respond(result)
    }
}

/// Names the task in the call's span (see `telemetry::RpcLayer`).
fn record_task_id(id: &TaskId) {
    tracing::Span::current().record("task_id", tracing::field::display(id));
}

/// Converts an outcome; the RPC layer logs it with its code and latency.
fn respond<T>(result: Result<T, ApiError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

/// One step of a watch stream.
// Lives on the stack for one message at a time; boxing would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
enum WatchStep {
    Send(pb::WatchTaskResponse),
    /// The terminal state was sent: end with `OK`.
    Done,
    /// The server is stopping: end with `UNAVAILABLE`.
    Unavailable,
}

/// Turns a manager watch into the gRPC stream: states as they come, `OK`
/// after the terminal one, `UNAVAILABLE` if the server stops first. When
/// the client goes away, tonic drops this stream and with it the watch.
fn watch_stream(mut watch: TaskWatch, shutdown: CancellationToken) -> WatchTaskStream {
    Box::pin(async_stream::stream! {
        loop {
            // Shutdown first: once it fires, watchers must hear UNAVAILABLE,
            // not the cancellation the shutdown is about to cause.
            let step = tokio::select! {
                biased;
                () = shutdown.cancelled() => WatchStep::Unavailable,
                next = watch.next() => match next {
                    Some(task) => WatchStep::Send(pb::WatchTaskResponse {
                        task: Some(pb::Task::from(&*task)),
                    }),
                    None if watch.is_finished() => WatchStep::Done,
                    None => WatchStep::Unavailable,
                },
            };
            match step {
                WatchStep::Send(response) => yield Ok(response),
                WatchStep::Done => break,
                WatchStep::Unavailable => {
                    yield Err(Status::unavailable(
                        "the server is shutting down; watch the task again to reconnect",
                    ));
                    break;
                }
            }
        }
    })
}
