//! The admin HTTP port: `/metrics` (OpenMetrics text, as Prometheus scrapes it), `/healthz` (the
//! process is alive) and `/readyz` (it takes traffic; false from the moment
//! a drain begins, and while the store cannot be written), for clusters and
//! tools without native gRPC probes.
//!
//! Its connections are held to the gRPC port's rule for silent clients: one
//! that sends nothing for
//! [`FIRST_BYTES_TIMEOUT`](crate::server::FIRST_BYTES_TIMEOUT) after connecting is
//! closed, so idle sockets cannot pile up on a port that is often open to a
//! whole cluster.

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use std::{io, net::SocketAddr};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    manager::{ManagerHandle, StoreHealth},
    metrics::Metrics,
    server::connection::Connection,
};

/// What `prometheus-client` writes: the OpenMetrics text format, which
/// Prometheus negotiates and parses.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    manager: ManagerHandle,
    /// Fires when the drain begins: not ready any more.
    draining: CancellationToken,
}

/// Serves the admin endpoints on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    manager: ManagerHandle,
    draining: CancellationToken,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let state = AdminState {
        metrics,
        manager,
        draining,
    };
    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(AdminListener(listener), router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// The admin port's listener: axum's own for `TcpListener` (which backs
/// off after a failed accept), each connection wrapped as the gRPC port's
/// plaintext ones are.
struct AdminListener(TcpListener);

impl axum::serve::Listener for AdminListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, address) = axum::serve::Listener::accept(&mut self.0).await;
        (Connection::plain(stream), address)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    // Stats fail only when the manager is gone, at the very end of a
    // shutdown: the counters are still worth serving.
    let stats = state.manager.stats().await.unwrap_or_default();
    (
        [(header::CONTENT_TYPE, OPENMETRICS_TEXT)],
        state.metrics.render(&stats.occupancy()),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    if state.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    match &*state.manager.store_health().borrow() {
        StoreHealth::Writable => (StatusCode::OK, "ready\n".into()),
        StoreHealth::Failing(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the task store cannot be written: {reason}\n"),
        ),
    }
}
