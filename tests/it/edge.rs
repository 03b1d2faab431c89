//! The gRPC edge under abuse: requests larger than the limit, the HTTP/2
//! bounds every connection gets, and clients that never speak.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use task_processor::{
    pb,
    server::{FIRST_BYTES_TIMEOUT, MAX_CONCURRENT_STREAMS},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::{TestServer, request};

/// `TaskService`'s limit in tests: `max_data_bytes` (1 MiB) + 1 MiB.
const TASK_SERVICE_LIMIT: usize = 2 * 1024 * 1024;

/// What health and reflection accept: tonic's default.
const DEFAULT_LIMIT: usize = 4 * 1024 * 1024;

fn assert_resource_exhausted(status: &tonic::Status, limit: usize) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&format!("{limit} bytes")),
        "the message states the limit: {status:?}"
    );
}

/// As in grpc-go and grpc-java: a request over the limit is
/// `RESOURCE_EXHAUSTED` naming the limit, for unary and server-streaming
/// calls and for every service.
#[tokio::test]
async fn an_oversized_request_is_resource_exhausted_stating_the_limit() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let oversized = TASK_SERVICE_LIMIT + 1024;

    let status = client
        .create_task(request("big", "echo", Some(json!("x".repeat(oversized)))))
        .await
        .expect_err("over the limit");
    assert_resource_exhausted(&status, TASK_SERVICE_LIMIT);

    let status = client
        .watch_task(pb::WatchTaskRequest {
            id: "x".repeat(oversized),
        })
        .await
        .expect_err("over the limit");
    assert_resource_exhausted(&status, TASK_SERVICE_LIMIT);

    let mut health = HealthClient::new(server.channel().await);
    let status = health
        .check(HealthCheckRequest {
            service: "x".repeat(DEFAULT_LIMIT + 1024),
        })
        .await
        .expect_err("over the limit");
    assert_resource_exhausted(&status, DEFAULT_LIMIT);

    // The connection is still good for calls within the limit.
    crate::support::create(&mut client, "small", "echo", Some(json!("x"))).await;
}

/// The server advertises SETTINGS_MAX_CONCURRENT_STREAMS, so one
/// connection cannot hold an unbounded number of calls (and of their
/// buffered responses); a raw HTTP/2 client sees the value.
#[tokio::test]
async fn every_connection_is_told_how_many_streams_it_may_open() {
    let server = TestServer::start().await;
    let tcp = tokio::net::TcpStream::connect(server.address)
        .await
        .expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(connection);
    // One call, so the server's SETTINGS (its first frame) have arrived.
    let health_check = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/grpc.health.v1.Health/Check",
            server.address
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let mut send = send.ready().await.expect("ready");
    let (response, mut body) = send.send_request(health_check, false).expect("sent");
    // An empty HealthCheckRequest: uncompressed, zero bytes long.
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("request body");
    let response = response.await.expect("answered");
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(
        send.current_max_send_streams(),
        MAX_CONCURRENT_STREAMS as usize,
        "SETTINGS_MAX_CONCURRENT_STREAMS"
    );
}

/// The type of an HTTP/2 PING frame.
const PING_FRAME: u8 = 0x6;

/// Reads the next HTTP/2 frame: its type and flags (the payload is
/// skipped); `None` once the server has closed the connection.
async fn next_frame(tcp: &mut TcpStream) -> Option<(u8, u8)> {
    let mut header = [0u8; 9];
    tcp.read_exact(&mut header).await.ok()?;
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let mut payload = vec![0u8; length as usize];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((header[3], header[4]))
}

/// A peer that stops answering (here: one that never answers a PING) is
/// pinged after 20 s of quiet and dropped 20 s later, freeing what its
/// streams held. A deadline well past 40 s bounds the wait.
#[tokio::test]
async fn a_peer_that_stops_answering_is_pinged_then_dropped() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.address).await.expect("connect");
    // The client preface and an empty SETTINGS frame; nothing more, ever.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface sent");
    let deadline = Duration::from_secs(90);
    let pinged = tokio::time::timeout(deadline, async {
        loop {
            match next_frame(&mut tcp).await {
                // Not an ACK: the server's own ping.
                Some((PING_FRAME, flags)) if flags & 0x1 == 0 => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(pinged, Ok(true), "the server pings a quiet connection");
    let closed = tokio::time::timeout(deadline, async {
        while next_frame(&mut tcp).await.is_some() {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server drops a peer that does not answer"
    );
}

/// Waits for the server to close `silent`, which has sent nothing; fails
/// the test past twice the allowance. Returns how long that took.
async fn closed_by_the_server(mut silent: TcpStream, port: &str) -> Duration {
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(FIRST_BYTES_TIMEOUT * 2, silent.read(&mut byte))
        .await
        .unwrap_or_else(|_| panic!("the {port} port kept a client that sent nothing"));
    // Closed (or reset), with nothing sent: the server has nothing to say
    // to a peer whose protocol it does not know.
    assert!(matches!(read, Ok(0) | Err(_)), "{port}: {read:?}");
    started.elapsed()
}

#[tokio::test]
async fn a_client_that_never_speaks_is_disconnected() {
    let server = TestServer::start().await;
    let on_grpc = TcpStream::connect(server.address).await.expect("connect");
    let on_admin = TcpStream::connect(server.admin_address)
        .await
        .expect("connect");
    let (grpc_waited, admin_waited) = tokio::join!(
        closed_by_the_server(on_grpc, "gRPC"),
        closed_by_the_server(on_admin, "admin"),
    );
    // Not at once (the server's clock started a moment before ours).
    for waited in [grpc_waited, admin_waited] {
        assert!(
            waited >= FIRST_BYTES_TIMEOUT / 2,
            "closed after only {waited:?}"
        );
    }

    // A client that speaks is served as ever, on connections made as the
    // silent ones waited.
    for (address, path) in [
        (server.address, "/health"),
        (server.admin_address, "/healthz"),
    ] {
        let mut speaking = TcpStream::connect(address).await.expect("connect");
        speaking
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("request sent");
        let mut answer = String::new();
        speaking
            .read_to_string(&mut answer)
            .await
            .expect("answer read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
}
