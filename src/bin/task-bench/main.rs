//! `task-bench`: the benchmark that keeps us honest. Starts everything it
//! needs in this process (our server on the memory store, and a bare tonic
//! server as the ceiling), drives both with the same client, and prints
//! every figure with its ratio to the ceiling or its target.
//!
//! Run: `cargo run --release --bin task-bench` (`--quick` for a short run;
//! `--only-actor` or `--only-create` for one figure, e.g. under a profiler).
//! `--stores` is a run of its own: the memory, SQLite and PostgreSQL stores
//! side by side, next to the disk's own fsync rate (see `stores.rs`).
//! `--retained-rss [--binary PATH] [--tasks N] [--data-bytes B]` is one too:
//! the resident memory of a real binary holding N finished tasks on SQLite,
//! live and after a restart (see `retained.rs`). `--delayed` is one too:
//! memory per delayed task and how late due tasks start (see `delayed.rs`).
//! `--default-logging [--binary PATH]` is one too: the real binary with its
//! shipped defaults, logging included, against a bare echo, each in a
//! process of its own (see `default_logging.rs`).
//! `--workers` is one too: remote workers against local processors, and
//! the latency from a create to the worker (see `workers.rs`).
//! `--help` lists the flags; an unknown one is an error (exit 2), as is
//! asking for two runs at once.
//! These machines are noisy: compare ratios taken in the same run, not
//! absolute figures across runs.

mod bare;
mod default_logging;
mod delayed;
mod load;
mod memory;
mod retained;
mod stores;
mod watch;
mod workers;

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use task_processor::{
    config::Config,
    manager::ManagerHandle,
    metrics::Metrics,
    pb::task_service_client::TaskServiceClient,
    processor::Registry,
    server::{self, Listeners},
    store::StoreUrl,
    task::NewTask,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// The same allocator as the `task-processor` binary, so the figures are
/// the service's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Connections every RPC scenario spreads its calls over.
pub const CONNECTIONS: usize = 4;

/// A server running in this process until dropped (or [`stop`]ped).
///
/// [`stop`]: RunningServer::stop
pub struct RunningServer {
    pub url: String,
    pub manager: Option<ManagerHandle>,
    /// Ours only: the metrics its manager bumps, read by the stores figures
    /// to see tasks finish whatever the store.
    pub metrics: Option<Metrics>,
    stop: oneshot::Sender<()>,
    served: JoinHandle<()>,
}

impl RunningServer {
    /// Our server on the store `config.store` names, no admin port,
    /// logging off (no subscriber is installed).
    pub async fn ours(config: Config) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", grpc.local_addr()?);
        let registry =
            server::registry_with_workers(&config, Registry::with_builtins(config.demo_duration))?;
        let metrics = Metrics::new();
        let manager = ManagerHandle::start(
            config.manager_config(),
            registry.clone(),
            metrics.clone(),
            &config.store,
        )
        .await
        .with_context(|| format!("opening the {} store", config.store))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = Listeners { grpc, admin: None };
        let served = tokio::spawn(server::run_with(
            listeners,
            config,
            registry,
            manager.clone(),
            metrics.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            url,
            manager: Some(manager),
            metrics: Some(metrics),
            stop,
            served: tokio::spawn(async {
                if let Ok(Err(error)) = served.await {
                    eprintln!("our server failed: {error:#}");
                }
            }),
        })
    }

    /// The ceiling: tonic serving the same messages with no manager.
    pub async fn bare() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(bare::serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            url,
            manager: None,
            metrics: None,
            stop,
            served,
        })
    }

    /// Shuts the server down and waits (up to `STOP_WAIT`) until it has
    /// stopped: for a durable store, until its last changes are written and
    /// it let go of the file or database.
    pub async fn stop(self) {
        const STOP_WAIT: Duration = Duration::from_secs(10);
        let _ = self.stop.send(());
        if tokio::time::timeout(STOP_WAIT, self.served).await.is_err() {
            eprintln!("a server did not stop within {STOP_WAIT:?}");
        }
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

/// Settings for the benchmarked server: memory store, large queue, no
/// timeouts in play.
pub fn bench_config() -> Config {
    Config {
        store: StoreUrl::Memory,
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
        scheduling: Default::default(),
        trace_context: Default::default(),
        tenant: String::new(),
    }
}

/// What `task-bench --help` prints above the flags.
const ABOUT: &str = "\
The benchmark of task-processor. Without a flag it runs everything in this
process (about 100 s): the memory our server holds, CreateTask and GetTask
at 1, 64 and 256 in flight against our server and against a bare tonic
server (the ceiling), end to end task throughput, the manager actor alone,
and WatchTask streams (10 000 open, then fan-out latency to 1 000 watchers).
Compare the ratios of one run, not absolute figures across runs.";

/// What `task-bench --help` prints below the flags.
const AFTER_HELP: &str = "\
The runs marked 'Instead' replace the default run; give at most one.

Environment:
  TASK_BENCH_POSTGRES  the database of --stores, which makes and drops a schema in it
                       [default: postgres://postgres@127.0.0.1:5432/test]";

/// The command line. At most one of the runs of their own (`--only-create`,
/// `--only-actor`, `--stores`, `--retained-rss`, `--delayed`,
/// `--default-logging`); without one, everything.
#[derive(Debug, Parser)]
#[command(name = "task-bench", about = ABOUT, long_about = None, after_help = AFTER_HELP)]
struct Arguments {
    /// Shorter phases and fewer tasks: a smoke run (about 15 s; --stores 6 s, --delayed 4 s)
    #[arg(long)]
    quick: bool,
    /// Instead: only CreateTask at 64 in flight against our server, for a profiler
    #[arg(long, group = "run")]
    only_create: bool,
    /// Instead: only the manager actor alone, GetTask and CreateTask commands/s
    #[arg(long, group = "run")]
    only_actor: bool,
    /// Instead: the memory, SQLite and PostgreSQL stores side by side, and fsyncs/s
    #[arg(long, group = "run")]
    stores: bool,
    /// Instead: memory of a real task-processor retaining tasks on SQLite, and restarted
    #[arg(long, groups = ["run", "real_binary"])]
    retained_rss: bool,
    /// Instead: 100 000 delayed tasks: resident memory per delayed task, and how late they start
    #[arg(long, group = "run")]
    delayed: bool,
    /// Instead: the real task-processor with its shipped defaults (logging on) against a bare echo, each a process of its own
    #[arg(long, groups = ["run", "real_binary"])]
    default_logging: bool,
    /// Instead: no-op tasks through remote workers (1 and 8 streams) against local processors, and create-to-assignment latency
    #[arg(long, group = "run")]
    workers: bool,
    /// Inside --delayed: one memory phase in a fresh process, one line out
    #[arg(long, value_enum, value_name = "KIND", group = "run", hide = true)]
    memory_phase: Option<delayed::MemoryPhase>,
    /// Inside --default-logging: the bare echo in a process of its own
    #[arg(long, group = "run", hide = true)]
    bare_server: bool,
    /// With --retained-rss or --default-logging: the binary to measure [default: task-processor beside this]
    #[arg(long, value_name = "PATH", requires = "real_binary")]
    binary: Option<PathBuf>,
    /// With --retained-rss: tasks to create and retain [default: 100000]
    #[arg(long, value_name = "N", requires = "retained_rss")]
    tasks: Option<usize>,
    /// With --retained-rss: text in each task's data and result [default: 20480]
    #[arg(long, value_name = "BYTES", requires = "retained_rss")]
    data_bytes: Option<usize>,
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
    /// `--stores`: how long each store creates tasks in one round.
    pub store_phase: Duration,
    /// `--stores`: rounds, each measuring every store once; the median
    /// round is shown.
    pub store_rounds: usize,
    /// `--delayed`: tasks in each of its memory and lateness phases.
    pub delayed_tasks: usize,
}

impl Scale {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                phase: Duration::from_millis(500),
                end_to_end_tasks: 10_000,
                retained_tasks: 100_000,
                open_watchers: 1_000,
                fan_out_watchers: 200,
                fan_out_rounds: 3,
                store_phase: Duration::from_millis(400),
                store_rounds: 3,
                delayed_tasks: 10_000,
            }
        } else {
            Self {
                phase: Duration::from_secs(3),
                end_to_end_tasks: 100_000,
                retained_tasks: 1_000_000,
                open_watchers: 10_000,
                fan_out_watchers: 1_000,
                fan_out_rounds: 10,
                store_phase: Duration::from_millis(1500),
                store_rounds: 5,
                delayed_tasks: 100_000,
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    // First, before anything starts: `--help` prints and exits 0, a usage
    // error prints and exits 2.
    let arguments = Arguments::parse();
    let scale = Scale::new(arguments.quick);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(arguments, scale))
}

async fn run(arguments: Arguments, scale: Scale) -> anyhow::Result<()> {
    // `--only-create`: just CreateTask at 64 in flight against our server,
    // for a profiler to watch; `--only-actor`: just the actor figures;
    // `--stores`: the stores side by side (not part of the default run: it
    // needs a disk and a database, and measures them as much as us).
    if arguments.only_create {
        return load::profile_create(scale).await;
    }
    if arguments.only_actor {
        return load::report_actor(scale).await;
    }
    if arguments.stores {
        return stores::report(scale).await;
    }
    if arguments.delayed {
        return delayed::report(scale, arguments.quick).await;
    }
    if arguments.workers {
        return workers::report(scale).await;
    }
    if let Some(phase) = arguments.memory_phase {
        return delayed::memory_phase(phase, scale).await;
    }
    if arguments.default_logging {
        return default_logging::report(default_logging::Run::new(arguments.binary)?, scale).await;
    }
    if arguments.bare_server {
        return default_logging::serve_bare().await;
    }
    if arguments.retained_rss {
        return retained::report(retained::Run::new(
            arguments.binary,
            arguments.tasks,
            arguments.data_bytes,
        )?)
        .await;
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Arguments::command().debug_assert();
    }
}
