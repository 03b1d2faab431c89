//! The gRPC edge: `TaskService` handlers that validate requests, call the
//! manager and convert answers.

mod convert;
pub mod error;
pub mod json;
pub mod page_token;
pub mod proto_json;
pub mod resume_token;
mod schedules;
pub mod validate;
mod watch_tasks;
pub mod workers;

use std::{pin::Pin, sync::Arc};

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    auth::Principal,
    manager::{LIST_PAGE_BYTES, ListPage, ListQuery, ManagerHandle, Scope, TaskWatch},
    pb::{self, task_service_server::TaskService},
    processor::Registry,
    task::TaskId,
    telemetry,
};

pub use error::ApiError;
pub use validate::Limits;
pub use watch_tasks::WatchTasksStream;
pub use workers::WorkerApi;

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
        let scope = scope_of(&request);
        let result = async {
            let mut new_task =
                validate::new_task(request.into_inner(), &self.limits, &self.registry)?;
            // Kept with the task, so its runs join this call's trace.
            new_task.trace_context = telemetry::current_trace_context();
            let task = self.manager.scoped(&scope).create_task(new_task).await?;
            record_task_id(&task.id);
            Ok(pb::Task::from(&*task))
        }
        .await;
        respond(result)
    }

    async fn batch_create_tasks(
        &self,
        request: Request<pb::BatchCreateTasksRequest>,
    ) -> Result<Response<pb::BatchCreateTasksResponse>, Status> {
        let scope = scope_of(&request);
        let result = async {
            let mut new_tasks =
                validate::new_tasks(request.into_inner(), &self.limits, &self.registry)?;
            let trace_context = telemetry::current_trace_context();
            if !trace_context.is_empty() {
                for new_task in &mut new_tasks {
                    new_task.trace_context.clone_from(&trace_context);
                }
            }
            let tasks = self.manager.scoped(&scope).create_tasks(new_tasks).await?;
            Ok(pb::BatchCreateTasksResponse {
                tasks: tasks.iter().map(|task| pb::Task::from(&**task)).collect(),
            })
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
            let task = self
                .manager
                .scoped(&scope_of(&request))
                .get_task(id)
                .await?;
            Ok(pb::Task::from(&*task))
        }
        .await;
        respond(result)
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let scope = scope_of(&request);
        let result = async {
            let query = validate::list_query(request.into_inner())?;
            let page = self
                .manager
                .scoped(&scope)
                .list_tasks(query.clone())
                .await?;
            Ok(bounded_page(&page, &query))
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
            let task = self
                .manager
                .scoped(&scope_of(&request))
                .cancel_task(id)
                .await?;
            Ok(pb::Task::from(&*task))
        }
        .await;
        respond(result)
    }

    async fn delete_task(
        &self,
        request: Request<pb::DeleteTaskRequest>,
    ) -> Result<Response<()>, Status> {
        let result = async {
            let id = validate::task_id(&request.get_ref().id)?;
            record_task_id(&id);
            self.manager
                .scoped(&scope_of(&request))
                .delete_task(id)
                .await?;
            Ok(())
        }
        .await;
        respond(result)
    }

    async fn create_schedule(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let scope = scope_of(&request);
        respond(
            self.create_schedule_call(&scope, request.into_inner())
                .await,
        )
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        respond(
            self.get_schedule_call(&scope_of(&request), &request.get_ref().id)
                .await,
        )
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        respond(
            self.list_schedules_call(&scope_of(&request), request.get_ref())
                .await,
        )
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        respond(
            self.set_schedule_paused_call(&scope_of(&request), &request.get_ref().id, true)
                .await,
        )
    }

    async fn resume_schedule(
        &self,
        request: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        respond(
            self.set_schedule_paused_call(&scope_of(&request), &request.get_ref().id, false)
                .await,
        )
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<()>, Status> {
        respond(
            self.delete_schedule_call(&scope_of(&request), &request.get_ref().id)
                .await,
        )
    }

    type WatchTaskStream = WatchTaskStream;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let result = async {
            let id = validate::task_id(&request.get_ref().id)?;
            record_task_id(&id);
            let watch = self
                .manager
                .scoped(&scope_of(&request))
                .watch_task(id)
                .await?;
            Ok(watch_stream(watch, self.shutdown.clone()))
        }
        .await;
        respond(result)
    }

    type WatchTasksStream = WatchTasksStream;

    async fn watch_tasks(
        &self,
        request: Request<pb::WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        let scope = scope_of(&request);
        let result = async {
            let (filter, start) = validate::watch_tasks_request(request.into_inner())?;
            let watch = self
                .manager
                .scoped(&scope)
                .watch_tasks(filter.clone(), start)
                .await?;
            Ok(watch_tasks::watch_tasks_stream(
                watch,
                filter,
                self.shutdown.clone(),
            ))
        }
        .await;
        respond(result)
    }
}

/// The most a `ListTasks` response may take, encoded: gRPC's default
/// receive limit (grpc-go, grpc-java, tonic), so that any client can list.
pub const MAX_LIST_PAGE_BYTES: usize = LIST_PAGE_BYTES;

/// Room kept in a page for `next_page_token`: a token is 44 characters,
/// plus a byte of field key and one of length.
const PAGE_TOKEN_FIELD_BYTES: usize = 64;

/// The response for `page`, cut short where the next task would take its
/// encoding past [`MAX_LIST_PAGE_BYTES`]; the first task always goes, so a
/// task larger than that is sent alone rather than never. A page cut short
/// continues right after the last task it sent, whatever the store had
/// read beyond it.
fn bounded_page(page: &ListPage, query: &ListQuery) -> pb::ListTasksResponse {
    /// The key of `ListTasksResponse.tasks` (field 1, length-delimited).
    const TASK_FIELD_KEY_BYTES: usize = 1;
    let budget = MAX_LIST_PAGE_BYTES - PAGE_TOKEN_FIELD_BYTES;
    let mut tasks = Vec::with_capacity(page.tasks.len());
    let mut used = 0;
    let mut last_sent = None;
    for task in &page.tasks {
        // Converted one at a time, so a cut page never copies the data of
        // the tasks it leaves out (but the one that did not fit).
        let converted = pb::Task::from(&**task);
        let length = prost::Message::encoded_len(&converted);
        let field = TASK_FIELD_KEY_BYTES + prost::length_delimiter_len(length) + length;
        if let Some(last_sent) = last_sent
            && used + field > budget
        {
            return pb::ListTasksResponse {
                tasks,
                next_page_token: page_token::encode(last_sent, query),
            };
        }
        used += field;
        tasks.push(converted);
        last_sent = Some(task.id);
    }
    pb::ListTasksResponse {
        tasks,
        next_page_token: page
            .next_after
            .map(|after| page_token::encode(after, query))
            .unwrap_or_default(),
    }
}

/// The caller's view of the tasks: its principal's tenant, which
/// `auth::AuthLayer` put into the request's extensions. Without one
/// (authentication off) the caller sees every task, as before tenants.
pub(crate) fn scope_of<T>(request: &Request<T>) -> Scope {
    request
        .extensions()
        .get::<Arc<Principal>>()
        .map_or(Scope::All, |principal| Scope::of_tenant(&principal.tenant))
}

/// Names the task in the call's span (see `server::rpc_layer::RpcLayer`).
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
