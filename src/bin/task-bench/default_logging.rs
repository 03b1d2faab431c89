//! `--default-logging`: the real `task-processor` binary as it ships
//! (`LOG_LEVEL` unset, JSON lines on stdout, read through a pipe as a
//! container runtime reads it), next to a bare tonic echo server, each in
//! a process of its own, driven by this process as an independent client.
//!
//! The default run measures our server in this process with no log
//! subscriber at all, so it cannot see what logging costs; this run can.
//! A third server, the same binary at `warn`, shows how much of the gap to
//! the echo is logging and how much is everything else.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use serde_json::Value as JsonValue;
use task_processor::pb::{self, task_service_client::TaskServiceClient};
use tokio::{io::AsyncReadExt, net::TcpListener};
use tonic::transport::Channel;

use crate::{
    CONNECTIONS, Scale,
    load::{self, Measured, create_request, millis},
};

type Client = TaskServiceClient<Channel>;

/// Calls in flight, as the independent client ran them.
const IN_FLIGHT: usize = 64;

/// Alternating slices per figure: echo, ours, ours at warn, echo, ….
const SLICES: u32 = 3;

/// What `--default-logging` compares, from the command line.
pub struct Run {
    binary: PathBuf,
}

impl Run {
    /// `--binary`, or the `task-processor` next to this bench.
    pub fn new(binary: Option<PathBuf>) -> anyhow::Result<Self> {
        let binary = match binary {
            Some(path) => path,
            None => std::env::current_exe()?.with_file_name("task-processor"),
        };
        Ok(Self { binary })
    }
}

/// A server in a child process: where it serves, and what it wrote.
struct ServerProcess {
    name: &'static str,
    child: Child,
    url: String,
    admin_address: Option<String>,
    /// Lines and bytes it wrote to stdout after its "serving" line.
    log_lines: Arc<AtomicU64>,
    log_bytes: Arc<AtomicU64>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    fn cpu(&self) -> f64 {
        cpu_seconds(&self.child.id().to_string()).unwrap_or(0.0)
    }
}

/// The figures of one server over one RPC's slices.
struct Figures {
    slices: Vec<Measured>,
    cpu_seconds: f64,
    calls: usize,
}

impl Figures {
    fn new() -> Self {
        Self {
            slices: Vec::new(),
            cpu_seconds: 0.0,
            calls: 0,
        }
    }

    fn median(&self) -> Measured {
        let mut slices = self.slices.clone();
        slices.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        slices[slices.len() / 2]
    }

    /// Server CPU time per call, in microseconds.
    fn cpu_per_call(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.calls.max(1) as f64
    }
}

pub async fn report(run: Run, scale: Scale) -> anyhow::Result<()> {
    let echo = start_echo()?;
    let shipped = start_ours(&run.binary, "ours, shipped defaults", &[])?;
    // The "serving" line is how the bench learns the addresses, so the
    // server module stays at info; the RPC layer and the rest are at warn.
    let quiet = start_ours(
        &run.binary,
        "ours, warn",
        &[(
            "RUST_LOG",
            "warn,task_processor::server=info,task_processor::server::rpc_layer=warn",
        )],
    )?;
    let servers = [&echo, &shipped, &quiet];
    let mut clients = Vec::new();
    for server in servers {
        clients.push(connect(&server.url).await?);
    }
    let slice = scale.phase * 2 / SLICES;
    println!(
        "## Shipped defaults against a bare echo (each server a process of its own; {CONNECTIONS} connections, {IN_FLIGHT} in flight, {SLICES} alternating slices of {slice:?} each, median slice shown)\n"
    );
    println!("binary: {}\n", run.binary.display());
    println!("| RPC | server | ops/s | ratio to echo | p50 | p99 | server CPU per call |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let failed: Vec<Arc<AtomicU64>> = servers.iter().map(|_| Arc::default()).collect();
    for rpc in ["CreateTask", "GetTask"] {
        let mut figures: Vec<Figures> = servers.iter().map(|_| Figures::new()).collect();
        // GetTask reads a task made just before, so the creates of the
        // CreateTask figure cannot have made retention forget it (the echo
        // answers any id with its one stored task).
        let mut ids = Vec::new();
        for client in &clients {
            let task = client[0]
                .clone()
                .create_task(create_request())
                .await?
                .into_inner();
            ids.push(task.id);
        }
        // Warm every server up first, so the first slice is not special.
        for (index, client) in clients.iter().enumerate() {
            drive(
                rpc,
                client,
                &ids[index],
                Duration::from_millis(300),
                &failed[index],
            )
            .await;
        }
        for _ in 0..SLICES {
            for (index, server) in servers.iter().enumerate() {
                let cpu_before = server.cpu();
                let measured =
                    drive(rpc, &clients[index], &ids[index], slice, &failed[index]).await;
                let figure = &mut figures[index];
                figure.cpu_seconds += server.cpu() - cpu_before;
                figure.calls += measured.calls;
                figure.slices.push(measured);
            }
        }
        let ceiling = figures[0].median().per_second;
        for (server, figure) in servers.iter().zip(&figures) {
            let measured = figure.median();
            println!(
                "| {rpc} | {} | {:.0} | {:.2}x | {} | {} | {:.1} µs |",
                server.name,
                measured.per_second,
                measured.per_second / ceiling,
                millis(measured.p50),
                millis(measured.p99),
                figure.cpu_per_call(),
            );
        }
    }
    println!();
    for (server, failed) in servers.iter().zip(&failed) {
        let failed = failed.load(Ordering::Relaxed);
        if failed > 0 {
            println!(
                "{}: {failed} calls failed; its figures are not comparable",
                server.name
            );
        }
    }
    for server in [&shipped, &quiet] {
        let dropped = match &server.admin_address {
            Some(address) => load_metric(address, "task_processor_log_lines_dropped_total")
                .await
                .map_or_else(|| "not exported".to_owned(), |value| format!("{value:.0}")),
            None => "—".to_owned(),
        };
        println!(
            "{}: {} log lines ({} bytes) written after \"serving\"; task_processor_log_lines_dropped_total: {dropped}",
            server.name,
            server.log_lines.load(Ordering::Relaxed),
            server.log_bytes.load(Ordering::Relaxed),
        );
    }
    println!();
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(url.to_owned())?
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        clients.push(TaskServiceClient::new(channel));
    }
    Ok(clients)
}

/// Drives `rpc` for `phase`; calls that fail are counted in `failed` (a
/// figure with failures in it is not comparable, and the report says so).
async fn drive(
    rpc: &'static str,
    clients: &[Client],
    id: &str,
    phase: Duration,
    failed: &Arc<AtomicU64>,
) -> Measured {
    let id = id.to_owned();
    let failed = Arc::clone(failed);
    let call = move |mut client: Client| {
        let id = id.clone();
        let failed = Arc::clone(&failed);
        async move {
            let outcome = if rpc == "CreateTask" {
                client.create_task(create_request()).await.map(drop)
            } else {
                client.get_task(pb::GetTaskRequest { id }).await.map(drop)
            };
            if let Err(status) = outcome
                && failed.fetch_add(1, Ordering::Relaxed) == 0
            {
                eprintln!("{rpc} failed (only the first failure is shown): {status}");
            }
        }
    };
    load::drive(clients, IN_FLIGHT, phase, call).await
}

/// Starts `binary` on free ports with the memory store, and room for every
/// create of the run: `--max-concurrent 64` (at the default 10, echo runs
/// fall behind creates) and `--queue-capacity 2000000`, as the in-process
/// figures have. Nothing else is set: the environment is cleared but for
/// `env`, so logging is as shipped. Its stdout is a pipe that a thread of
/// this process drains, counting what it reads.
fn start_ours(
    binary: &Path,
    name: &'static str,
    env: &[(&str, &str)],
) -> anyhow::Result<ServerProcess> {
    let mut child = Command::new(binary)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--store", "memory", "--max-concurrent", "64"])
        .args(["--queue-capacity", "2000000"])
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with cargo build --release)",
                binary.display()
            )
        })?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut reader = BufReader::new(stdout);
    let serving = loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            anyhow::bail!("{} ended before serving", binary.display());
        }
        let entry: JsonValue = serde_json::from_str(&line).unwrap_or_default();
        if entry["message"] == "serving" {
            break entry;
        }
    };
    let log_lines = Arc::new(AtomicU64::new(0));
    let log_bytes = Arc::new(AtomicU64::new(0));
    let (lines, bytes) = (Arc::clone(&log_lines), Arc::clone(&log_bytes));
    // Drained as a log collector would: read, counted, thrown away.
    std::thread::spawn(move || {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read) = reader.read(&mut buffer) {
            if read == 0 {
                break;
            }
            let newlines = buffer[..read].iter().filter(|byte| **byte == b'\n').count();
            lines.fetch_add(newlines as u64, Ordering::Relaxed);
            bytes.fetch_add(read as u64, Ordering::Relaxed);
        }
    });
    let field = |name: &str| serving[name].as_str().unwrap_or_default().to_owned();
    Ok(ServerProcess {
        name,
        child,
        url: format!("http://{}", field("address")),
        admin_address: Some(field("admin_address")),
        log_lines,
        log_bytes,
    })
}

/// Starts this binary again as the bare echo (`--bare-server`), which
/// prints its address on its first line.
fn start_echo() -> anyhow::Result<ServerProcess> {
    let binary = std::env::current_exe()?;
    let mut child = Command::new(&binary)
        .arg("--bare-server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {} --bare-server", binary.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let address = line.trim();
    anyhow::ensure!(!address.is_empty(), "the bare echo did not start");
    Ok(ServerProcess {
        name: "bare tonic echo",
        url: format!("http://{address}"),
        child,
        admin_address: None,
        log_lines: Arc::default(),
        log_bytes: Arc::default(),
    })
}

/// `--bare-server`, in a child of [`report`]: the bare echo on a free port,
/// on a runtime like the binary's, until its stdin closes (its parent
/// ended).
pub async fn serve_bare() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    // Read on a thread: the runtime has no stdin of its own (tokio's
    // io-std is not enabled), and a blocking read must not hold a worker.
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = closed.send(());
    });
    let stdin_closed = async {
        let _ = stdin_closed.await;
    };
    crate::bare::serve(listener, stdin_closed).await;
    Ok(())
}

/// CPU time (user and system) a process has used, from /proc: fields 14
/// and 15 of its `stat`, in clock ticks of USER_HZ, which Linux fixes at
/// 100 for /proc.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

/// One sample of `/metrics` on the admin port, over a bare HTTP/1.1 GET.
async fn load_metric(address: &str, name: &str) -> Option<f64> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
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
