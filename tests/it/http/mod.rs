//! HTTP on the gRPC port, with a real HTTP client over TCP (hyper, HTTP/1.1
//! as curl speaks it, and HTTP/2 with prior knowledge): the REST routes and
//! their errors, `/health`, watches as Server-Sent Events, CORS, and
//! gRPC-Web with hand-framed protobuf.

mod cors;
mod dashboard;
mod errors;
mod grpc_web;
mod rest;
mod sse;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::Value as JsonValue;

use crate::support::DEADLINE;

/// What curl sends with `-d`, whatever the body is.
pub const CURL_FORM: &str = "application/x-www-form-urlencoded";

/// A client of one server's gRPC port.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    address: SocketAddr,
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body as text (what is not UTF-8 replaced), for JSON.
    pub body: String,
    /// The body as it came, for gRPC-Web.
    pub bytes: Bytes,
}

impl Http {
    /// HTTP/1.1, as curl speaks it.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            address,
        }
    }

    /// HTTP/2 without TLS, with prior knowledge (`curl --http2-prior-knowledge`).
    pub fn http2(address: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
            address,
        }
    }

    /// A request to `path` with `headers`, not yet sent.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.address));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(Full::new(body.into()))
            .expect("a valid request")
    }

    /// Sends `request` and returns the response whose body is still to come.
    pub async fn open(&self, request: Request<Full<Bytes>>) -> Response<Incoming> {
        tokio::time::timeout(DEADLINE, self.client.request(request))
            .await
            .expect("answered in time")
            .expect("the server answers")
    }

    /// Sends `request` and reads the whole answer.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Answer {
        let response = self.open(request).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
            .await
            .expect("body in time")
            .expect("a body")
            .to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            bytes: body,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.request(Method::GET, path, &[], Bytes::new()))
            .await
    }

    /// A POST as `curl -d BODY` makes it.
    pub async fn post(&self, path: &str, body: &str) -> Answer {
        let request = self.request(
            Method::POST,
            path,
            &[("content-type", CURL_FORM)],
            body.to_owned(),
        );
        self.send(request).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(self.request(Method::DELETE, path, &[], Bytes::new()))
            .await
    }

    /// Creates a task from its JSON; fails the test unless `201`.
    pub async fn create(&self, body: &str) -> JsonValue {
        let answer = self.post("/api/v1/tasks", body).await;
        assert_eq!(answer.status, 201, "{answer:?}");
        answer.json()
    }
}

impl Answer {
    pub fn json(&self) -> JsonValue {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("an ASCII header"))
    }

    /// Asserts an error answer: its HTTP status, its JSON body's gRPC code,
    /// and that its message holds `words`.
    pub fn assert_error(&self, status: u16, code: tonic::Code, words: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        assert_eq!(body["code"], code as i32, "{self:?}");
        let message = body["message"].as_str().expect("a message");
        assert!(message.contains(words), "{words:?} in {message:?}");
        assert!(body["details"].is_array(), "{self:?}");
    }
}

/// The `id` of a task's JSON.
pub fn id_of(task: &JsonValue) -> String {
    task["id"].as_str().expect("an id").to_owned()
}
