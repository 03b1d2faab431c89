//! The task routes: each reads its request (a JSON body, the id in the
//! path, the list's query string), runs the `TaskService` RPC it stands for
//! and answers its message as JSON.

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State, rejection::BytesRejection},
    http::StatusCode,
    response::Response,
};

use super::{Gateway, call::CallContext, query};
use crate::{
    api::proto_json::{
        BATCH_CREATE_TASKS_REQUEST, BATCH_CREATE_TASKS_RESPONSE, CREATE_TASK_REQUEST, EMPTY,
        LIST_TASKS_RESPONSE, TASK,
    },
    pb,
};

/// `POST /api/v1/tasks`: `CreateTask`, answered `201 Created`.
pub(super) async fn create_task(
    State(gateway): State<Gateway>,
    call: CallContext,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request: pb::CreateTaskRequest = match gateway.read_body(body, CREATE_TASK_REQUEST) {
        Ok(request) => request,
        Err(refused) => return refused.into_response_for(&call),
    };
    let answer = gateway
        .tasks
        .clone()
        .create_task(call.request(request))
        .await;
    gateway.answer(StatusCode::CREATED, answer, TASK)
}

/// `POST /api/v1/tasks:batchCreate`: `BatchCreateTasks` (body:
/// `{"requests": [CreateTaskRequest, …]}`), answered `201 Created` with
/// every task, in request order.
pub(super) async fn batch_create_tasks(
    State(gateway): State<Gateway>,
    call: CallContext,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request: pb::BatchCreateTasksRequest =
        match gateway.read_body(body, BATCH_CREATE_TASKS_REQUEST) {
            Ok(request) => request,
            Err(refused) => return refused.into_response_for(&call),
        };
    let answer = gateway
        .tasks
        .clone()
        .batch_create_tasks(call.request(request))
        .await;
    gateway.answer(StatusCode::CREATED, answer, BATCH_CREATE_TASKS_RESPONSE)
}

/// `GET /api/v1/tasks/{id}`: `GetTask`.
pub(super) async fn get_task(
    State(gateway): State<Gateway>,
    call: CallContext,
    Path(id): Path<String>,
) -> Response {
    let answer = gateway
        .tasks
        .clone()
        .get_task(call.request(pb::GetTaskRequest { id }))
        .await;
    gateway.answer(StatusCode::OK, answer, TASK)
}

/// `GET /api/v1/tasks?pageSize=&pageToken=&status=&label=key=value`:
/// `ListTasks`.
pub(super) async fn list_tasks(
    State(gateway): State<Gateway>,
    call: CallContext,
    RawQuery(raw_query): RawQuery,
) -> Response {
    let request = match query::list_tasks_request(raw_query.as_deref().unwrap_or_default()) {
        Ok(request) => request,
        Err(refused) => return refused.into_response_for(&call),
    };
    let answer = gateway
        .tasks
        .clone()
        .list_tasks(call.request(request))
        .await;
    gateway.answer(StatusCode::OK, answer, LIST_TASKS_RESPONSE)
}

/// `POST /api/v1/tasks/{id}/cancel`: `CancelTask` (a body is ignored).
pub(super) async fn cancel_task(
    State(gateway): State<Gateway>,
    call: CallContext,
    Path(id): Path<String>,
) -> Response {
    let answer = gateway
        .tasks
        .clone()
        .cancel_task(call.request(pb::CancelTaskRequest { id }))
        .await;
    gateway.answer(StatusCode::OK, answer, TASK)
}

/// `DELETE /api/v1/tasks/{id}`: `DeleteTask`, answered `{}`.
pub(super) async fn delete_task(
    State(gateway): State<Gateway>,
    call: CallContext,
    Path(id): Path<String>,
) -> Response {
    let answer = gateway
        .tasks
        .clone()
        .delete_task(call.request(pb::DeleteTaskRequest { id }))
        .await;
    gateway.answer(StatusCode::OK, answer, EMPTY)
}
