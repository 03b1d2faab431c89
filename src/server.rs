//! The server: `TaskService`, gRPC health and reflection on one listener,
//! and the order in which things stop.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::{
    api::TaskApi,
    config::ServerConfig,
    manager::{FORCED_STOP_AFTER, ManagerHandle},
    pb::{self, task_service_server::TaskServiceServer},
    processor::Registry,
};

/// Room in a request for everything besides `data`.
const REQUEST_OVERHEAD_BYTES: usize = 1024 * 1024;

/// How long open connections (a health Watch, say) may delay the exit once
/// everything of ours has stopped.
const CONNECTION_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The health service name of `TaskService`.
pub const TASK_SERVICE_NAME: &str = "taskprocessor.v1.TaskService";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
    #[error("the reflection service could not be built")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server task panicked or was cancelled")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the service on `listener` until `shutdown` completes, then stops in
/// order (see [`run_with_manager`]).
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let manager = ManagerHandle::spawn(config.manager_config(), registry.clone());
    run_with_manager(listener, config, registry, manager, shutdown).await
}

/// Like [`run`], with a manager the caller spawned (and may keep a handle
/// to, to look at its counters).
///
/// When `shutdown` completes: health goes `NOT_SERVING` and creates get
/// `UNAVAILABLE` at once; for the drain period reads and watches go on;
/// then open watch streams end `UNAVAILABLE`, running tasks are cancelled
/// (and aborted a second later if they ignore it) and the listener closes.
pub async fn run_with_manager(
    listener: TcpListener,
    config: ServerConfig,
    registry: Registry,
    manager: ManagerHandle,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status(TASK_SERVICE_NAME, ServingStatus::Serving)
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let watches_end = CancellationToken::new();
    let api = TaskApi::new(
        manager.clone(),
        registry,
        config.limits(),
        watches_end.clone(),
    );
    let task_service = TaskServiceServer::new(api)
        .max_decoding_message_size(config.max_data_bytes + REQUEST_OVERHEAD_BYTES);

    let local_address = listener
        .local_addr()
        .map_or_else(|error| error.to_string(), |address| address.to_string());
    let stop_serving = CancellationToken::new();
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(task_service);
    let mut serving = tokio::spawn(router.serve_with_incoming_shutdown(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        stop_serving.clone().cancelled_owned(),
    ));
    info!(address = %local_address, node = %config.node_name, "serving");

    tokio::select! {
        () = shutdown => {}
        finished = &mut serving => {
            // The server stopped on its own: that is an error.
            finished??;
            return Ok(());
        }
    }

    info!(drain_period = ?config.drain_period, "shutdown begun: not serving, refusing creates");
    for service in ["", TASK_SERVICE_NAME] {
        health_reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    // An error means the manager is already gone, which is what we want.
    let _ = manager.stop_accepting().await;
    tokio::time::sleep(config.drain_period).await;

    // Watchers hear UNAVAILABLE (retry elsewhere) before their tasks are
    // cancelled under them.
    watches_end.cancel();
    let cancelled = manager
        .cancel_running("cancelled: the server is shutting down")
        .await
        .unwrap_or_default();
    info!(cancelled, "running tasks cancelled");
    wait_for_runs_to_stop(&manager).await;

    stop_serving.cancel();
    match tokio::time::timeout(CONNECTION_CLOSE_GRACE, &mut serving).await {
        Ok(finished) => finished??,
        Err(_) => {
            warn!("connections still open after the grace period; closing them");
            serving.abort();
        }
    }
    info!("stopped");
    Ok(())
}

/// Waits until no processor runs any more; cancelled ones are aborted after
/// [`FORCED_STOP_AFTER`], so this is bounded.
async fn wait_for_runs_to_stop(manager: &ManagerHandle) {
    let deadline = tokio::time::Instant::now() + FORCED_STOP_AFTER + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        match manager.stats().await {
            Ok(stats) if stats.running > 0 => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return,
        }
    }
}
