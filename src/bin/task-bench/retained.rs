//! `--retained-rss`: the resident memory of the real binary holding many
//! finished tasks with sizeable data on SQLite, once they have all run and
//! again after a restart on the same file.
//!
//! The binary is any `task-processor` (`--binary PATH`; by default the one
//! next to this bench), so a build of an older commit is measured the same
//! way: everything goes over gRPC and the admin port, nothing in-process.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value as JsonValue, json};
use task_processor::pb::{self, task_service_client::TaskServiceClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::memory::resident_bytes;

/// What to measure, from the command line.
pub struct Run {
    binary: PathBuf,
    tasks: usize,
    data_bytes: usize,
}

impl Run {
    /// `--binary`, `--tasks` and `--data-bytes`, or their defaults: the
    /// `task-processor` next to this bench, 100 000 tasks of 20 KiB.
    pub fn new(
        binary: Option<PathBuf>,
        tasks: Option<usize>,
        data_bytes: Option<usize>,
    ) -> anyhow::Result<Self> {
        let binary = match binary {
            Some(path) => path,
            None => std::env::current_exe()?.with_file_name("task-processor"),
        };
        Ok(Self {
            binary,
            tasks: tasks.unwrap_or(100_000),
            data_bytes: data_bytes.unwrap_or(20 * 1024),
        })
    }
}

/// A started binary and where it serves.
struct Server {
    child: Child,
    grpc_url: String,
    admin_address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn report(run: Run) -> anyhow::Result<()> {
    // Several GB at the default size: a directory of its own, removed at
    // the end (the bench has no tempfile crate; it is for tests).
    let directory = std::env::temp_dir().join(format!("task-bench-{}", std::process::id()));
    std::fs::create_dir_all(&directory)?;
    let measured = measure(&run, &directory).await;
    let _ = std::fs::remove_dir_all(&directory);
    measured
}

async fn measure(run: &Run, directory: &std::path::Path) -> anyhow::Result<()> {
    let store = format!("sqlite://{}", directory.join("tasks.db").display());
    println!(
        "## Resident memory with {} finished echo tasks of {} bytes of data on SQLite\n",
        run.tasks, run.data_bytes
    );
    println!("binary: {}\n", run.binary.display());
    println!("| moment | resident | task_processor_held_bytes |");
    println!("|---|---:|---:|");

    let server = start(run, &store).await?;
    let idle = resident_bytes(&server.child.id().to_string())?;
    print_row("started, empty", idle, &server).await;
    let started = Instant::now();
    create_echo_tasks(&server.grpc_url, run).await?;
    wait_until_all_finished(&server, run.tasks).await?;
    let took = started.elapsed();
    let live = resident_bytes(&server.child.id().to_string())?;
    print_row(&format!("all finished ({took:.0?})"), live, &server).await;
    check_a_task(&server, run).await?;
    stop(server)?;

    let server = start(run, &store).await?;
    wait_until_all_finished(&server, run.tasks).await?;
    let restarted = resident_bytes(&server.child.id().to_string())?;
    print_row("after a restart", restarted, &server).await;
    check_a_task(&server, run).await?;
    println!();
    Ok(())
}

async fn print_row(moment: &str, resident: u64, server: &Server) {
    let held = metric(server, "task_processor_held_bytes")
        .await
        .map_or_else(|| "—".to_owned(), |held| format!("{held:.0}"));
    println!(
        "| {moment} | {:.0} MiB | {held} |",
        resident as f64 / (1024.0 * 1024.0)
    );
}

/// Starts the binary on free ports, logging only its "serving" line, and
/// reads its addresses from that line.
async fn start(run: &Run, store: &str) -> anyhow::Result<Server> {
    let tasks = run.tasks.to_string();
    let mut child = Command::new(&run.binary)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--store", store, "--max-concurrent", "16"])
        .args(["--max-finished-tasks", &tasks, "--queue-capacity", &tasks])
        .args(["--drain-period", "0s", "--shutdown-grace", "0s"])
        .env("RUST_LOG", "warn,task_processor::server=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", run.binary.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut server = Server {
        child,
        grpc_url: String::new(),
        admin_address: String::new(),
    };
    // Read on a thread of its own: the start takes a moment, and the log
    // must keep draining afterwards so the process never blocks on it.
    let (serving_sender, serving) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut serving_sender = Some(serving_sender);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let entry: JsonValue = serde_json::from_str(&line).unwrap_or_default();
            if entry["message"] == "serving"
                && let Some(sender) = serving_sender.take()
            {
                let _ = sender.send(entry);
            }
        }
    });
    if let Ok(entry) = serving.await {
        let field = |name: &str| entry[name].as_str().unwrap_or_default().to_owned();
        server.grpc_url = format!("http://{}", field("address"));
        server.admin_address = field("admin_address");
        return Ok(server);
    }
    anyhow::bail!("{} ended before serving", run.binary.display())
}

/// SIGTERM, then wait for the exit, so the file is free for the next start.
fn stop(mut server: Server) -> anyhow::Result<()> {
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()?;
    server.child.wait()?;
    Ok(())
}

fn data(index: usize, bytes: usize) -> JsonValue {
    json!({"index": index, "text": "x".repeat(bytes)})
}

/// Creates the tasks over 8 connections, 64 calls in flight.
async fn create_echo_tasks(url: &str, run: &Run) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(Channel::from_shared(url.to_owned())?.connect().await?);
    }
    let mut workers = Vec::new();
    for worker in 0..64 {
        let mut client = TaskServiceClient::new(channels[worker % channels.len()].clone());
        let next = Arc::clone(&next);
        let (tasks, data_bytes) = (run.tasks, run.data_bytes);
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= tasks {
                    return Ok::<(), tonic::Status>(());
                }
                let request = pb::CreateTaskRequest {
                    name: format!("retained {index}"),
                    kind: "echo".into(),
                    data: Some(task_processor::api::json::json_to_proto(&data(
                        index, data_bytes,
                    ))),
                    ..Default::default()
                };
                client.create_task(request).await?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

/// Polls the admin gauges until `tasks` are retained and none waits or runs.
async fn wait_until_all_finished(server: &Server, tasks: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let retained = metric(server, "task_processor_retained_tasks").await;
        let waiting = metric(server, "task_processor_queue_depth").await;
        let running = metric(server, "task_processor_running_tasks").await;
        if retained == Some(tasks as f64) && waiting == Some(0.0) && running == Some(0.0) {
            // Let the last commits land and the allocator settle.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "tasks did not finish in time");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A finished task still answers with its exact data and result.
async fn check_a_task(server: &Server, run: &Run) -> anyhow::Result<()> {
    let channel = Channel::from_shared(server.grpc_url.clone())?
        .connect()
        .await?;
    let mut client = TaskServiceClient::new(channel);
    let page = client
        .list_tasks(pb::ListTasksRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    let task = page.tasks.first().context("no task listed")?;
    let index = task
        .name
        .strip_prefix("retained ")
        .and_then(|index| index.parse().ok())
        .context("a task of this run")?;
    let expected = task_processor::api::json::json_to_proto(&data(index, run.data_bytes));
    anyhow::ensure!(
        task.data.as_ref() == Some(&expected) && task.result.as_ref() == Some(&expected),
        "task {} lost its data or result",
        task.id
    );
    Ok(())
}

/// One sample of `/metrics` on the admin port, over a bare HTTP/1.1 GET.
async fn metric(server: &Server, name: &str) -> Option<f64> {
    let mut stream = tokio::net::TcpStream::connect(&server.admin_address)
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}
