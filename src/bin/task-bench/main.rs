//! `task-bench`: the benchmark that keeps us honest. Starts everything it
//! needs in this process (our server on the memory store, and a bare tonic
//! server as the ceiling), drives both with the same client, and prints
//! every figure with its ratio to the ceiling or its target.
//!
//! Run: `cargo run --release --bin task-bench` (`--quick` for a short run;
//! `--only-actor` or `--only-create` for one figure, e.g. under a profiler).
//! These machines are noisy: compare ratios taken in the same run, not
//! absolute figures across runs.

mod bare;
mod load;
mod memory;
mod watch;

use std::time::Duration;

use anyhow::Context;
use task_processor::{
    config::Config,
    manager::ManagerHandle,
    metrics::Metrics,
    pb::task_service_client::TaskServiceClient,
    processor::Registry,
    server::{self, Listeners},
    task::NewTask,
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::Channel;

/// The same allocator as the `task-processor` binary, so the figures are
/// the service's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Connections every RPC scenario spreads its calls over.
pub const CONNECTIONS: usize = 4;

/// A server running in this process until dropped.
pub struct RunningServer {
    pub url: String,
    pub manager: Option<ManagerHandle>,
    _stop: oneshot::Sender<()>,
}

impl RunningServer {
    /// Our server, memory store, no admin port, logging off (no
    /// subscriber is installed).
    pub async fn ours(config: Config) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", grpc.local_addr()?);
        let registry = Registry::with_builtins(config.demo_duration);
        let metrics = Metrics::new();
        let manager =
            ManagerHandle::spawn(config.manager_config(), registry.clone(), metrics.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = Listeners { grpc, admin: None };
        tokio::spawn(server::run_with(
            listeners,
            config,
            registry,
            manager.clone(),
            metrics,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            url,
            manager: Some(manager),
            _stop: stop,
        })
    }

    /// The ceiling: tonic serving the same messages with no manager.
    pub async fn bare() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(bare::serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            url,
            manager: None,
            _stop: stop,
        })
    }

    pub async fn clients(
        &self,
        connections: usize,
    ) -> anyhow::Result<Vec<TaskServiceClient<Channel>>> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let channel = Channel::from_shared(self.url.clone())?
                .connect()
                .await
                .with_context(|| format!("connecting to {}", self.url))?;
            clients
                .push(TaskServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024));
        }
        Ok(clients)
    }
}

/// Settings for the benchmarked server: large queue, no timeouts in play.
pub fn bench_config() -> Config {
    Config {
        queue_capacity: 2_000_000,
        max_finished_tasks: 2_000_000,
        drain_period: Duration::ZERO,
        shutdown_grace: Duration::ZERO,
        node_name: "bench".into(),
        ..Config::default()
    }
}

/// A task of the `echo` kind with no data, as the in-process figures
/// create them.
pub fn echo_task(name: &str) -> NewTask {
    NewTask {
        name: name.into(),
        description: String::new(),
        kind: "echo".into(),
        data: None,
        timeout_seconds: 60,
        labels: Default::default(),
        request_id: None,
    }
}

/// Runs-long knobs: `--quick` shortens every phase for a smoke run.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub phase: Duration,
    pub end_to_end_tasks: usize,
    pub retained_tasks: usize,
    pub open_watchers: usize,
    pub fan_out_watchers: usize,
    pub fan_out_rounds: usize,
}

impl Scale {
    fn from_arguments() -> Self {
        if std::env::args().any(|argument| argument == "--quick") {
            Self {
                phase: Duration::from_millis(500),
                end_to_end_tasks: 10_000,
                retained_tasks: 100_000,
                open_watchers: 1_000,
                fan_out_watchers: 200,
                fan_out_rounds: 3,
            }
        } else {
            Self {
                phase: Duration::from_secs(3),
                end_to_end_tasks: 100_000,
                retained_tasks: 1_000_000,
                open_watchers: 10_000,
                fan_out_watchers: 1_000,
                fan_out_rounds: 10,
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let scale = Scale::from_arguments();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(scale))
}

async fn run(scale: Scale) -> anyhow::Result<()> {
    // `--only-create`: just CreateTask at 64 in flight against our server,
    // for a profiler to watch; `--only-actor`: just the actor figures.
    if std::env::args().any(|argument| argument == "--only-create") {
        return load::profile_create(scale).await;
    }
    if std::env::args().any(|argument| argument == "--only-actor") {
        return load::report_actor(scale).await;
    }
    println!(
        "task-bench: {} cores, scale {scale:?}\n",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    // Memory first, while the process has allocated little else.
    memory::report(scale).await?;
    load::report_unary(scale).await?;
    load::report_end_to_end(scale).await?;
    load::report_actor(scale).await?;
    watch::report(scale).await?;
    Ok(())
}
