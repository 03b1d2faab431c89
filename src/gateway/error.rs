//! Errors as HTTP answers, the way grpc-gateway writes them: the HTTP
//! status of the gRPC code, and a JSON body `{"code", "message",
//! "details"}` with the gRPC code's number and the status's details (a
//! `google.rpc.BadRequest` naming the field, a `RetryInfo`) in proto3 JSON.
//! `RESOURCE_EXHAUSTED` with a `RetryInfo` also says `Retry-After`.

use axum::{
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use prost::Message;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tracing::{debug, error};

use super::{
    Gateway,
    call::{CallContext, REQUEST_ID_HEADER, request_id_of},
};
use crate::api::proto_json::{JsonLayout, RPC_STATUS, Unpopulated};

/// The content type of every JSON answer.
pub const JSON: &str = "application/json";

/// What the gateway refuses itself, before any RPC runs.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The body or a query parameter is not what the route takes.
    #[error("{reason}")]
    BadRequest { reason: String },
    #[error("the request body is larger than this server's limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("no route for {method} {path}")]
    NoRoute { method: Method, path: String },
    #[error("{path} does not take {method}")]
    MethodNotAllowed { method: Method, path: String },
}

impl GatewayError {
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::BadRequest {
            reason: reason.into(),
        }
    }

    /// The gRPC code of the refusal, as if an RPC had refused it.
    fn code(&self) -> Code {
        match self {
            Self::BadRequest { .. } => Code::InvalidArgument,
            Self::TooLarge { .. } => Code::ResourceExhausted,
            Self::NoRoute { .. } => Code::NotFound,
            Self::MethodNotAllowed { .. } => Code::Unimplemented,
        }
    }

    fn http_status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            _ => http_status(self.code()),
        }
    }

    /// The answer to `call`, with its request id: no RPC made one, so the
    /// client's, or a new one as the RPC layer would make.
    pub fn into_response_for(self, call: &CallContext) -> Response {
        let mut response = self.into_response();
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER, call.request_id_or_new());
        response
    }
}

/// An error's JSON body when it has no details, fields in grpc-gateway's
/// order.
#[derive(serde::Serialize)]
struct PlainError<'a> {
    code: i32,
    message: &'a str,
    details: [(); 0],
}

impl PlainError<'_> {
    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        debug!(error = %self, "request refused before any call");
        let message = self.to_string();
        let body = PlainError {
            code: self.code() as i32,
            message: &message,
            details: [],
        };
        (
            self.http_status(),
            [(header::CONTENT_TYPE, JSON)],
            body.to_json(),
        )
            .into_response()
    }
}

/// The HTTP status grpc-gateway answers a gRPC code with, except
/// `FAILED_PRECONDITION`, which the contract makes 412 (the resource is not
/// in a state for the call) where grpc-gateway says 400.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        // nginx's "client closed request", as grpc-gateway answers.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Whole seconds to wait, rounded up, from the status's `RetryInfo`.
fn retry_after_seconds(status: &Status) -> Option<u64> {
    let delay = status.get_details_retry_info()?.retry_delay?;
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    Some(seconds.max(1))
}

impl Gateway {
    /// The JSON body of `status`: its code, message and details.
    pub(super) fn status_json(&self, status: &Status) -> String {
        // The details travel as an encoded google.rpc.Status; its code and
        // message are the status's own (the RPC layer may have rewritten
        // them, dropping the details).
        let details = tonic_types::pb::Status::decode(status.details())
            .map(|decoded| decoded.details)
            .unwrap_or_default();
        let rpc_status = tonic_types::pb::Status {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details,
        };
        self.proto_json
            .to_json(
                &rpc_status,
                RPC_STATUS,
                JsonLayout::Compact,
                Unpopulated::Emit,
            )
            .unwrap_or_else(|render_error| {
                error!(error = %render_error, "cannot write an error's details as JSON");
                PlainError {
                    code: status.code() as i32,
                    message: status.message(),
                    details: [],
                }
                .to_json()
            })
    }

    /// The answer to a call that failed with `status`.
    pub(super) fn status_response(&self, status: &Status) -> Response {
        let mut response = (
            http_status(status.code()),
            [(header::CONTENT_TYPE, JSON)],
            self.status_json(status),
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(request_id) = request_id_of(status.metadata()) {
            headers.insert(REQUEST_ID_HEADER, request_id);
        }
        if status.code() == Code::ResourceExhausted
            && let Some(seconds) = retry_after_seconds(status)
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn codes_map_as_the_contract_says() {
        for (code, status) in [
            (Code::InvalidArgument, 400),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::FailedPrecondition, 412),
            (Code::ResourceExhausted, 429),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::Unavailable, 503),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::DataLoss, 500),
        ] {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let status = |delay| {
            Status::with_error_details(
                Code::ResourceExhausted,
                "full",
                ErrorDetails::with_retry_info(Some(delay)),
            )
        };
        assert_eq!(
            retry_after_seconds(&status(Duration::from_secs(1))),
            Some(1)
        );
        assert_eq!(
            retry_after_seconds(&status(Duration::from_millis(1500))),
            Some(2)
        );
        assert_eq!(retry_after_seconds(&status(Duration::ZERO)), Some(1));
        assert_eq!(
            retry_after_seconds(&Status::resource_exhausted("full")),
            None
        );
    }
}
