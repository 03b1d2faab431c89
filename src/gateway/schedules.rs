//! The schedule routes, the same way as the task routes: each runs the
//! schedule RPC it stands for and answers its message as JSON.

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State, rejection::BytesRejection},
    http::StatusCode,
    response::Response,
};

use super::{Gateway, call::CallContext, query};
use crate::{
    api::proto_json::{CREATE_SCHEDULE_REQUEST, EMPTY, LIST_SCHEDULES_RESPONSE, SCHEDULE},
    pb,
};

/// `POST /api/v1/schedules`: `CreateSchedule`, answered `201 Created`.
pub(super) async fn create_schedule(
    State(gateway): State<Gateway>,
    call: CallContext,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request: pb::CreateScheduleRequest = match gateway.read_body(body, CREATE_SCHEDULE_REQUEST)
    {
        Ok(request) => request,
        Err(refused) => return refused.into_response_for(&call),
    };
    let answer = gateway
        .tasks
        .clone()
        .create_schedule(call.request(request))
        .await;
    gateway.answer(StatusCode::CREATED, answer, SCHEDULE)
}

/// `GET /api/v1/schedules/{id}`: `GetSchedule`.
pub(super) async fn get_schedule(
    State(gateway): State<Gateway>,
    call: CallContext,
    Path(id): Path<String>,
) -> Response {
    let answer = gateway
        .tasks
        .clone()
        .get_schedule(call.request(pb::GetScheduleRequest { id }))
        .await;
    gateway.answer(StatusCode::OK, answer, SCHEDULE)
}

/// `GET /api/v1/schedules?pageSize=&pageToken=`: `ListSchedules`.
pub(super) async fn list_schedules(
    State(gateway): State<Gateway>,
    call: CallContext,
    RawQuery(raw_query): RawQuery,
) -> Response {
    let request = match query::list_schedules_request(raw_query.as_deref().unwrap_or_default()) {
        Ok(request) => request,
        Err(refused) => return refused.into_response_for(&call),
    };
    let answer = gateway
        .tasks
        .clone()
        .list_schedules(call.request(request))
        .await;
    gateway.answer(StatusCode::OK, answer, LIST_SCHEDULES_RESPONSE)
}

/// `POST /api/v1/schedules/{id}/pause`: `PauseSchedule`.
pub(super) async fn pause_schedule(
    State(gateway): State<Gateway>,
    call: CallContext,
    Path(id): Path<String>,
) -> Response {
    let answer = gateway
        .tasks
        .clone()
        .pause_schedule(call.request(pb::PauseScheduleRequest { id }))
        .await;
    gateway.answer(StatusCode::OK, answer, SCHEDULE)
}

/// `POST /api/v1/schedules/{id}/resume`: `ResumeSchedule`.
pub(super) async fn resume_schedule(
    State(gateway): State<Gateway>,
    call: CallContext,
    Path(id): Path<String>,
) -> Response {
    let answer = gateway
        .tasks
        .clone()
        .resume_schedule(call.request(pb::ResumeScheduleRequest { id }))
        .await;
    gateway.answer(StatusCode::OK, answer, SCHEDULE)
}

/// `DELETE /api/v1/schedules/{id}`: `DeleteSchedule`, answered `{}`.
pub(super) async fn delete_schedule(
    State(gateway): State<Gateway>,
    call: CallContext,
    Path(id): Path<String>,
) -> Response {
    let answer = gateway
        .tasks
        .clone()
        .delete_schedule(call.request(pb::DeleteScheduleRequest { id }))
        .await;
    gateway.answer(StatusCode::OK, answer, EMPTY)
}
