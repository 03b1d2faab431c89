//! CORS: pages of the configured origins may call the REST routes and
//! gRPC-Web (preflights answered, headers exposed); other origins get no
//! CORS header, so browsers keep their pages out; with no origin
//! configured (the default), no CORS header is ever sent.

use bytes::Bytes;
use http::Method;
use task_processor::config::Config;

use super::{Answer, Http};
use crate::support::{TestServer, test_config};

const ALLOWED: &str = "http://dashboard.example:8080";
const OTHER: &str = "https://evil.example";

async fn server_allowing(origins: &[&str]) -> TestServer {
    TestServer::start_with(Config {
        cors_origins: origins.iter().map(|origin| (*origin).to_owned()).collect(),
        ..test_config()
    })
    .await
}

/// A browser's preflight before a POST with a JSON body or gRPC-Web.
async fn preflight(http: &Http, path: &str, origin: &str, headers: &str) -> Answer {
    let request = http.request(
        Method::OPTIONS,
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", headers),
        ],
        Bytes::new(),
    );
    http.send(request).await
}

async fn get_from(http: &Http, path: &str, origin: &str) -> Answer {
    let request = http.request(Method::GET, path, &[("origin", origin)], Bytes::new());
    http.send(request).await
}

#[tokio::test]
async fn a_configured_origin_may_call_and_read_the_answers() {
    let server = server_allowing(&[ALLOWED, "https://other.example"]).await;
    let http = Http::new(server.address);

    let answer = preflight(&http, "/api/v1/tasks", ALLOWED, "content-type").await;
    assert!((200..300).contains(&answer.status), "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some(ALLOWED));
    let methods = answer
        .header("access-control-allow-methods")
        .expect("methods");
    for method in ["GET", "POST", "DELETE"] {
        assert!(methods.contains(method), "{methods}");
    }
    let headers = answer
        .header("access-control-allow-headers")
        .expect("headers");
    assert!(headers.contains("content-type"), "{headers}");

    // gRPC-Web's preflight.
    let answer = preflight(
        &http,
        "/taskprocessor.v1.TaskService/GetTask",
        ALLOWED,
        "content-type,x-grpc-web,x-user-agent",
    )
    .await;
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some(ALLOWED),
        "{answer:?}"
    );
    let headers = answer
        .header("access-control-allow-headers")
        .expect("headers");
    assert!(headers.contains("x-grpc-web"), "{headers}");

    let answer = get_from(&http, "/api/v1/tasks", ALLOWED).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), Some(ALLOWED));
    let exposed = answer
        .header("access-control-expose-headers")
        .expect("exposed headers");
    for header in ["x-request-id", "retry-after", "grpc-status"] {
        assert!(exposed.contains(header), "{exposed}");
    }
}

#[tokio::test]
async fn another_origin_gets_no_cors_header() {
    let server = server_allowing(&[ALLOWED]).await;
    let http = Http::new(server.address);
    let answer = preflight(&http, "/api/v1/tasks", OTHER, "content-type").await;
    assert_eq!(
        answer.header("access-control-allow-origin"),
        None,
        "{answer:?}"
    );
    let answer = get_from(&http, "/api/v1/tasks", OTHER).await;
    // The answer itself is given (CORS is the browser's to enforce)…
    assert_eq!(answer.status, 200);
    // …without the header that would let a page read it.
    assert_eq!(
        answer.header("access-control-allow-origin"),
        None,
        "{answer:?}"
    );
}

#[tokio::test]
async fn without_configured_origins_no_cors_header_is_sent() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let answer = preflight(&http, "/api/v1/tasks", ALLOWED, "content-type").await;
    assert_eq!(
        answer.header("access-control-allow-origin"),
        None,
        "{answer:?}"
    );
    let answer = get_from(&http, "/api/v1/tasks", ALLOWED).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .headers
            .keys()
            .all(|name| !name.as_str().starts_with("access-control-")),
        "{answer:?}"
    );
}
