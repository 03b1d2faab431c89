//! The server: `TaskService`, gRPC health and reflection on the gRPC
//! listener, with gRPC-Web and the HTTP gateway (REST, `/health`) beside
//! them on the same port; the admin endpoints on their own; and the order
//! in which things stop.

pub(crate) mod connection;
mod incoming;
pub mod rpc_layer;
mod tls_accept;

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tower::{Layer, util::BoxCloneSyncService};
use tracing::{error, info, warn};

use crate::{
    admin,
    api::{TaskApi, WorkerApi, proto_json::ProtoJsonError},
    auth::{Security, SecurityError},
    config::Config,
    gateway::{self, Gateway},
    manager::{FORCED_STOP_AFTER, ManagerConfig, ManagerHandle, StoreHealth},
    metrics::Metrics,
    pb::{
        self, task_service_server::TaskServiceServer, worker_service_server::WorkerServiceServer,
    },
    processor::{Registry, remote::WorkerHub},
    store::StoreError,
    telemetry,
};

pub use connection::FIRST_BYTES_TIMEOUT;
use incoming::Incoming;
use rpc_layer::RpcLayer;
use tls_accept::Connections;

/// Room in a request for everything besides `data`.
const REQUEST_OVERHEAD_BYTES: usize = 1024 * 1024;

/// How much larger than its protobuf encoding a request's JSON may be: a
/// REST body may take this many times the gRPC request limit, and the
/// request it becomes is held to that limit. (`data` as JSON text is
/// larger than encoded: a `\u0000` is six bytes for one, a field name is
/// spelt out.)
const JSON_BODY_EXPANSION: usize = 4;

/// How long open connections (a health Watch, say) may delay the exit once
/// everything of ours has stopped.
const CONNECTION_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long the exit may wait for the store to take the last changes.
const FINAL_FLUSH_GRACE: Duration = Duration::from_secs(5);

/// How many streams (calls) one HTTP/2 connection may have open at once,
/// advertised in SETTINGS_MAX_CONCURRENT_STREAMS (tonic advertises none by
/// default). It also bounds what one connection can make the server buffer
/// for responses its client does not read: each stream holds at most one
/// encoded response message (a `ListTasks` page is under 4 MiB) plus
/// hyper's 400 KiB send buffer, so about 100 × 4.4 MiB ≈ 440 MiB with the
/// default `max_data_bytes`, where a single unbounded page used to hold
/// tens of MiB per stream with no limit on streams.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// The health service name of `TaskService`.
pub const TASK_SERVICE_NAME: &str = "taskprocessor.v1.TaskService";

/// The health service name of `WorkerService`.
pub const WORKER_SERVICE_NAME: &str = "taskprocessor.v1.WorkerService";

/// The sockets the server answers on; the caller binds them, so tests can
/// use port 0 and nothing races for a port.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    /// `None` serves no admin endpoints.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the gRPC and admin addresses of `config`.
    pub async fn bind(config: &Config) -> Result<Self, ServerError> {
        let bind = |purpose: &'static str, address: &str| {
            let address = address.to_owned();
            async move {
                TcpListener::bind(&address)
                    .await
                    .map_err(|source| ServerError::Bind {
                        purpose,
                        address,
                        source,
                    })
            }
        };
        Ok(Self {
            grpc: bind("gRPC", &config.listen).await?,
            admin: Some(bind("admin HTTP", &config.admin_listen).await?),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen for {purpose} on {address}")]
    Bind {
        purpose: &'static str,
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
    #[error("the reflection service could not be built")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the HTTP gateway could not be built")]
    Gateway(#[from] ProtoJsonError),
    #[error("the gRPC server task panicked or was cancelled")]
    Join(#[from] tokio::task::JoinError),
    #[error("the task manager stopped unexpectedly")]
    ManagerStopped,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error("the setting kinds names {kind:?}, which no processor serves (kinds: {known})")]
    UnknownKind { kind: String, known: String },
    #[error(
        "the setting worker_kinds names {kind:?}, which a processor in this server runs; \
         choose another name for the workers' kind"
    )]
    WorkerKindTaken { kind: String },
    #[error(
        "worker_kinds is set but the registry has no worker hub: build it with \
         server::registry_with_workers"
    )]
    WorkersNotInRegistry,
}

/// `registry` with the kinds of `worker_kinds` handed to remote workers
/// (`WorkerService`). A worker kind may not be a kind a processor in this
/// server runs: a task of it would run in one place or the other by chance
/// of configuration.
pub fn registry_with_workers(config: &Config, registry: Registry) -> Result<Registry, ServerError> {
    if config.worker_kinds.is_empty() {
        return Ok(registry);
    }
    if let Some(kind) = config
        .worker_kinds
        .iter()
        .find(|kind| registry.get(kind).is_some())
    {
        return Err(ServerError::WorkerKindTaken { kind: kind.clone() });
    }
    Ok(registry.with_workers(WorkerHub::new(config.worker_kinds.iter().cloned())))
}

/// Refuses per-kind settings for a kind that no processor serves: a typo
/// there would silently leave the real kind without its limit or policy.
fn check_kinds(config: &Config, registry: &Registry) -> Result<(), ServerError> {
    match config
        .kinds
        .keys()
        .find(|kind| !registry.contains(kind.as_str()))
    {
        Some(kind) => Err(ServerError::UnknownKind {
            kind: kind.clone(),
            known: registry.kinds().join(", "),
        }),
        None => Ok(()),
    }
}

/// Runs the service until `shutdown` completes, then stops in order (see
/// [`run_with`]). `metrics` come from the caller, which may have given them
/// the log writer's count of dropped lines
/// ([`Metrics::with_dropped_log_lines`]).
pub async fn run(
    listeners: Listeners,
    config: Config,
    registry: Registry,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let registry = registry_with_workers(&config, registry)?;
    check_kinds(&config, &registry)?;
    let manager_config = ManagerConfig {
        join_stored_trace: Some(telemetry::join_stored_trace),
        ..config.manager_config()
    };
    let manager = ManagerHandle::start(
        manager_config,
        registry.clone(),
        metrics.clone(),
        &config.store,
    )
    .await?;
    info!(store = %config.store, "store opened");
    run_with(listeners, config, registry, manager, metrics, shutdown).await
}

/// Like [`run`], with a manager and metrics the caller made (and may keep,
/// to look at them).
///
/// When `shutdown` completes: gRPC health and `/readyz` go not-serving and
/// creates get `UNAVAILABLE` at once; for the drain period reads, watches
/// and runs go on; then no new task starts and running ones get the
/// shutdown grace to finish; then open watch streams end `UNAVAILABLE`,
/// what still runs is cancelled (and aborted a second later if it ignores
/// that), and the listeners close.
pub async fn run_with(
    listeners: Listeners,
    config: Config,
    registry: Registry,
    manager: ManagerHandle,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    check_kinds(&config, &registry)?;
    if !config.worker_kinds.is_empty() && registry.workers().is_none() {
        return Err(ServerError::WorkersNotInRegistry);
    }
    // First, so a missing or broken file stops the start before anything
    // listens.
    let security = Security::load(&config.tls, &config.auth)?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for service in [TASK_SERVICE_NAME, WORKER_SERVICE_NAME] {
        health_reporter
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    let draining = CancellationToken::new();
    let health_follower = tokio::spawn(follow_store_health(
        manager.store_health(),
        health_reporter.clone(),
    ));

    // google.rpc error details are served too, so grpcurl can print the
    // BadRequest and RetryInfo details of our errors.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let watches_end = CancellationToken::new();
    let workers_end = CancellationToken::new();
    let worker_api = WorkerApi::new(
        registry
            .workers()
            .cloned()
            .unwrap_or_else(|| WorkerHub::new([])),
        manager.clone(),
        config.node_name.clone(),
        metrics.clone(),
        workers_end.clone(),
    );
    let api = TaskApi::new(
        manager.clone(),
        registry,
        config.limits(),
        watches_end.clone(),
    );
    let request_limit = config.max_data_bytes + REQUEST_OVERHEAD_BYTES;
    let task_service = TaskServiceServer::new(api).max_decoding_message_size(request_limit);
    // An outcome carries a result, as large as a task's data may be.
    let worker_service =
        WorkerServiceServer::new(worker_api).max_decoding_message_size(request_limit);

    // Every call, gRPC, gRPC-Web or REST, passes the RPC layer once: gRPC
    // and gRPC-Web (translated to gRPC first) on their way to tonic's
    // routes, REST inside the gateway, which calls the task service behind
    // the same layer in process. The auth layer sits right inside it in
    // both places, so every call is decided by its gRPC path, and a
    // refusal is counted and logged like any answer.
    let rpc_layer = RpcLayer::new(metrics.clone());
    let auth_layer = security.layer;
    let grpc_routes = Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(task_service.clone())
        .add_service(worker_service)
        .prepare();
    let grpc = tonic_web::GrpcWebLayer::new().layer(rpc_layer.layer(auth_layer.layer(grpc_routes)));
    let gateway = Gateway::new(
        BoxCloneSyncService::new(rpc_layer.layer(auth_layer.layer(task_service))),
        BoxCloneSyncService::new(grpc),
        draining.clone(),
        JSON_BODY_EXPANSION * request_limit,
    )?;
    let port = gateway::router(gateway, &config.cors_origins);

    let grpc_address = address_of(&listeners.grpc);
    let stop_serving = CancellationToken::new();
    // HTTP/1.1 too, for curl, browsers and gRPC-Web; HTTP/2 connections
    // keep every bound below.
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // A peer that vanished (no FIN, no RST) is dropped within both,
        // freeing its streams and buffers; a worker's tasks then run again.
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout));
    let mut serving = tokio::spawn(server.serve_with_incoming_shutdown(
        port,
        Connections::new(
            Incoming::new(listeners.grpc, metrics.clone()),
            security.tls.clone(),
        ),
        stop_serving.clone().cancelled_owned(),
    ));

    let admin_address = listeners.admin.as_ref().map(address_of);
    let admin = listeners.admin.map(|listener| {
        tokio::spawn(admin::serve(
            listener,
            metrics,
            manager.clone(),
            draining.clone(),
            stop_serving.clone(),
        ))
    });
    info!(
        address = %grpc_address,
        tls = security.tls.is_some(),
        mtls = config.tls.client_ca_file.is_some(),
        authentication = config.auth.principals_file.is_some(),
        admin_address = admin_address.as_deref().unwrap_or("none"),
        node = %config.node_name,
        "serving"
    );

    tokio::select! {
        () = shutdown => {}
        finished = &mut serving => {
            // The server stopped on its own: that is an error.
            finished??;
            return Ok(());
        }
        () = manager.closed() => {
            error!("the task manager stopped unexpectedly; exiting so the process is restarted");
            serving.abort();
            return Err(ServerError::ManagerStopped);
        }
    }

    info!(
        drain_period = %humantime::format_duration(config.drain_period),
        "shutdown begun: not serving, refusing creates"
    );
    draining.cancel();
    // Stopped first, so it cannot say SERVING again after this.
    health_follower.abort();
    let _ = health_follower.await;
    for service in ["", TASK_SERVICE_NAME, WORKER_SERVICE_NAME] {
        health_reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    // Errors below mean the manager is already gone, which is the goal.
    let _ = manager.stop_accepting().await;
    tokio::time::sleep(config.drain_period).await;

    info!(
        shutdown_grace = %humantime::format_duration(config.shutdown_grace),
        "drain over: letting running tasks finish"
    );
    let _ = manager.stop_starting().await;
    let finished_in_time = tokio::time::timeout(config.shutdown_grace, manager.wait_until_idle())
        .await
        .is_ok();

    // Watchers hear UNAVAILABLE (retry elsewhere) before what still runs
    // is cancelled under them.
    watches_end.cancel();
    if !finished_in_time {
        // Cancelled on a single node; handed to other replicas in a cluster.
        let stopped = manager
            .cancel_running("cancelled: the server is shutting down")
            .await
            .unwrap_or_default();
        info!(stopped, "grace over: running tasks stopped");
        let stop_budget = FORCED_STOP_AFTER + Duration::from_secs(1);
        let _ = tokio::time::timeout(stop_budget, manager.wait_until_idle()).await;
    }
    // After the cancellations above went out on them: workers hear
    // UNAVAILABLE (connect again, elsewhere).
    workers_end.cancel();

    stop_serving.cancel();
    match tokio::time::timeout(CONNECTION_CLOSE_GRACE, &mut serving).await {
        Ok(finished) => finished??,
        Err(_) => {
            warn!("connections still open after the grace period; closing them");
            serving.abort();
        }
    }
    if let Some(admin) = admin {
        admin.abort();
    }
    // Every state decided above (cancels included) reaches the store.
    match tokio::time::timeout(FINAL_FLUSH_GRACE, manager.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(error = %error, "the last task changes may not be stored"),
        Err(_) => warn!("the store did not take the last task changes in time"),
    }
    info!("stopped");
    Ok(())
}

/// Keeps the task service's gRPC health in step with the store: not serving
/// while it cannot write, so Kubernetes sends traffic elsewhere without
/// restarting the pod (health for `""`, the process, stays serving). Runs
/// until the shutdown aborts it.
async fn follow_store_health(
    mut store_health: tokio::sync::watch::Receiver<StoreHealth>,
    health_reporter: tonic_health::server::HealthReporter,
) {
    loop {
        let health = store_health.borrow_and_update().clone();
        let status = match &health {
            StoreHealth::Writable => ServingStatus::Serving,
            StoreHealth::Failing(reason) => {
                warn!(reason = %reason, "the task store cannot be written: not serving until it can");
                ServingStatus::NotServing
            }
        };
        health_reporter
            .set_service_status(TASK_SERVICE_NAME, status)
            .await;
        if store_health.changed().await.is_err() {
            return;
        }
    }
}

fn address_of(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|error| error.to_string(), |address| address.to_string())
}
