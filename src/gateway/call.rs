//! One REST call, in and out: the JSON body read as the RPC's request;
//! the client's request id and the connection's peer handed to the RPC, so
//! the RPC layer logs the call as it logs a gRPC one; and the RPC's answer
//! written as JSON with the request id the call was given.

use axum::{
    body::Bytes,
    extract::{FromRequestParts, rejection::BytesRejection},
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue};
use prost::Message;
use tonic::{Status, metadata::MetadataMap};
use tracing::error;

use super::{
    Gateway,
    error::{GatewayError, JSON},
};
use crate::{
    api::proto_json::{JsonLayout, Unpopulated},
    auth::PeerInfo,
};

/// The header (and gRPC metadata key) of a call's request id, both ways, as
/// the RPC layer names it.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id the RPC layer keeps from a client.
const MAX_REQUEST_ID_LENGTH: usize = 128;

/// The headers a REST request hands on to its RPC as metadata: the request
/// id, the W3C trace context, credentials. Nothing else (cookies, hop
/// headers) becomes metadata.
const FORWARDED_HEADERS: [&str; 4] = [
    REQUEST_ID_HEADER,
    "traceparent",
    "tracestate",
    "authorization",
];

/// The parts of a REST request that its RPC carries on.
#[derive(Clone, Debug, Default)]
pub struct CallContext {
    /// The [`FORWARDED_HEADERS`] the client sent.
    forwarded: HeaderMap,
    /// The connection's peer: its address, and with mTLS its
    /// certificate's identity, which the auth layer reads.
    connect_info: Option<PeerInfo>,
}

impl<S: Send + Sync> FromRequestParts<S> for CallContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut forwarded = HeaderMap::new();
        for name in FORWARDED_HEADERS {
            if let Some(value) = parts.headers.get(name) {
                forwarded.insert(name, value.clone());
            }
        }
        Ok(Self {
            forwarded,
            connect_info: parts.extensions.get::<PeerInfo>().cloned(),
        })
    }
}

impl CallContext {
    /// The RPC's request: `message`, with the forwarded headers as
    /// metadata (the RPC layer keeps the client's request id when usable,
    /// else makes one) and the peer.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::from_parts(
            MetadataMap::from_headers(self.forwarded.clone()),
            tonic::Extensions::default(),
            message,
        );
        if let Some(connect_info) = &self.connect_info {
            request.extensions_mut().insert(connect_info.clone());
        }
        request
    }

    /// For an answer given before any RPC ran: the client's request id
    /// when the RPC layer would keep it (1 to 128 visible characters), or a
    /// new UUID v7 as it makes.
    pub fn request_id_or_new(&self) -> HeaderValue {
        let usable = self.forwarded.get(REQUEST_ID_HEADER).filter(|value| {
            !value.is_empty() && value.len() <= MAX_REQUEST_ID_LENGTH && value.to_str().is_ok()
        });
        if let Some(request_id) = usable {
            return request_id.clone();
        }
        let mut buffer = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buffer);
        // A hyphenated UUID is always a valid header value.
        HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}

/// The request id the RPC layer gave the call, from an answer's metadata.
pub fn request_id_of(metadata: &MetadataMap) -> Option<HeaderValue> {
    metadata
        .get(REQUEST_ID_HEADER)
        .and_then(|value| HeaderValue::from_bytes(value.as_bytes()).ok())
}

impl Gateway {
    /// The body as the message `full_name`, or why it is not one.
    pub(super) fn read_body<T: Message + Default>(
        &self,
        body: Result<Bytes, BytesRejection>,
        full_name: &str,
    ) -> Result<T, GatewayError> {
        let body = body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                GatewayError::TooLarge {
                    limit: self.max_body_bytes,
                }
            } else {
                GatewayError::bad_request(rejection.body_text())
            }
        })?;
        self.proto_json
            .from_json(&body, full_name)
            .map_err(|parse_error| {
                // `taskprocessor.v1.CreateTaskRequest` → `CreateTaskRequest`.
                let name = full_name.rsplit('.').next().unwrap_or(full_name);
                GatewayError::bad_request(format!("the body is not a {name}: {parse_error}"))
            })
    }

    /// The answer to a call: `success` with the message as JSON, or the
    /// error the call failed with.
    pub(super) fn answer<T: Message>(
        &self,
        success: StatusCode,
        answer: Result<tonic::Response<T>, Status>,
        full_name: &str,
    ) -> Response {
        let response = match answer {
            Ok(response) => response,
            Err(status) => return self.status_response(&status),
        };
        let request_id = request_id_of(response.metadata());
        let json = self.proto_json.to_json(
            response.get_ref(),
            full_name,
            JsonLayout::Compact,
            Unpopulated::Emit,
        );
        let mut response = match json {
            Ok(json) => (success, [(header::CONTENT_TYPE, JSON)], json).into_response(),
            Err(render_error) => {
                error!(error = %render_error, "cannot write an answer as JSON");
                self.status_response(&Status::internal(
                    "internal error; the server logged the details",
                ))
            }
        };
        if let Some(request_id) = request_id {
            response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
        }
        response
    }
}
