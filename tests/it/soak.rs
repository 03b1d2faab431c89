//! Soak and chaos: mixed load (create, get, list, watch, cancel) from
//! several clients while faults are injected, then the checks that matter:
//! every create answered OK exists and reached a terminal status, no call
//! was answered `INTERNAL`, and the server's resident memory stayed under a
//! bound.
//!
//! The short form runs in CI (about a minute). `TASK_PROCESSOR_SOAK_SECONDS`
//! sets how long each phase lasts (default 4) for the long form, run by
//! hand: `TASK_PROCESSOR_SOAK_SECONDS=60 cargo test --release --test it soak -- --nocapture`.

use std::{
    collections::HashSet,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use task_processor::pb::{self, task_service_client::TaskServiceClient};
use tokio::{sync::watch, task::JoinSet};
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};

use crate::{
    process::{Process, start_binary, start_binary_under},
    proxy::Proxy,
    stores::{fresh_postgres_schema, postgres_available},
    support::{list_all, missing_tasks, request, status_of},
};

/// Clients driving load at once.
const CLIENTS: usize = 6;

/// The server's resident memory must stay under this through the run:
/// tasks carry up to 8 KiB of data, retention keeps at most 100 000.
const RSS_BOUND_BYTES: u64 = 512 * 1024 * 1024;

/// ListTasks calls the slow reader leaves unread on its one connection.
const SLOW_READER_STREAMS: usize = 60;

/// A client that asks for big pages and never reads a byte of them: one
/// HTTP/2 connection that grants the server no flow-control window, so
/// every answer stays in the server. Dropped, it closes the connection.
struct SlowReader {
    _streams: Vec<h2::client::ResponseFuture>,
    _connection: tokio::task::JoinHandle<()>,
}

impl SlowReader {
    async fn start(grpc_url: &str) -> Self {
        let address = grpc_url.trim_start_matches("http://");
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .expect("handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let page = prost::Message::encode_to_vec(&pb::ListTasksRequest {
            page_size: 1000,
            ..Default::default()
        });
        let mut framed = vec![0u8];
        framed.extend_from_slice(&u32::try_from(page.len()).expect("small").to_be_bytes());
        framed.extend_from_slice(&page);
        let mut streams = Vec::new();
        let mut send = send;
        for _ in 0..SLOW_READER_STREAMS {
            let list = http::Request::builder()
                .method("POST")
                .uri(format!("{grpc_url}/taskprocessor.v1.TaskService/ListTasks"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request");
            send = send.ready().await.expect("ready");
            let (response, mut body) = send.send_request(list, false).expect("sent");
            body.send_data(bytes::Bytes::from(framed.clone()), true)
                .expect("request body");
            streams.push(response);
        }
        Self {
            _streams: streams,
            _connection: connection,
        }
    }
}

/// How long each phase of load lasts.
fn phase() -> Duration {
    let seconds = std::env::var("TASK_PROCESSOR_SOAK_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(4);
    Duration::from_secs(seconds)
}

/// What the clients saw, shared between them.
#[derive(Default)]
struct Observed {
    acknowledged: Vec<String>,
    /// Answers that are never right, whatever the fault: `INTERNAL`,
    /// `UNKNOWN` from the server itself, and the like.
    wrong: Vec<String>,
    calls: usize,
    unavailable: usize,
}

/// The load: each client picks an operation by turn, against whatever
/// server `target` points at now (a restart moves it).
struct Load {
    observed: Arc<Mutex<Observed>>,
    stop: watch::Sender<bool>,
    clients: JoinSet<()>,
}

impl Load {
    fn start(target: watch::Receiver<TaskServiceClient<Channel>>) -> Self {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let (stop, stopped) = watch::channel(false);
        let mut clients = JoinSet::new();
        for number in 0..CLIENTS {
            clients.spawn(drive(
                number,
                target.clone(),
                stopped.clone(),
                Arc::clone(&observed),
            ));
        }
        Self {
            observed,
            stop,
            clients,
        }
    }

    async fn stop(mut self) -> Observed {
        self.stop.send_replace(true);
        while self.clients.join_next().await.is_some() {}
        std::mem::take(&mut *self.observed.lock().expect("not poisoned"))
    }
}

async fn drive(
    number: usize,
    target: watch::Receiver<TaskServiceClient<Channel>>,
    stopped: watch::Receiver<bool>,
    observed: Arc<Mutex<Observed>>,
) {
    let mut turn = number;
    while !*stopped.borrow() {
        turn += 1;
        let mut client = target.borrow().clone();
        let known = {
            let observed = observed.lock().expect("not poisoned");
            let count = observed.acknowledged.len();
            (count > 0).then(|| observed.acknowledged[(turn * 7919) % count].clone())
        };
        let operation = match (turn % 8, known.is_some()) {
            (0..=3, _) | (_, false) => "create",
            (4, true) => "get",
            (5, true) => "list",
            (6, true) => "watch",
            _ => "cancel",
        };
        let answer: Result<(), tonic::Status> = match (turn % 8, known) {
            (0..=3, _) | (_, None) => {
                let create = create_request(turn);
                match in_time(client.create_task(create)).await {
                    Ok(task) => {
                        observed
                            .lock()
                            .expect("not poisoned")
                            .acknowledged
                            .push(task.into_inner().id);
                        Ok(())
                    }
                    Err(status) => Err(status),
                }
            }
            (4, Some(id)) => in_time(client.get_task(pb::GetTaskRequest { id }))
                .await
                .map(drop),
            (5, Some(_)) => in_time(client.list_tasks(pb::ListTasksRequest {
                page_size: 50,
                ..Default::default()
            }))
            .await
            .map(drop),
            (6, Some(id)) => watch_to_the_end(&mut client, id).await,
            (_, Some(id)) => {
                match in_time(client.cancel_task(pb::CancelTaskRequest { id })).await {
                    Err(status) if status.code() == Code::FailedPrecondition => Ok(()),
                    other => other.map(drop),
                }
            }
        };
        let failed = answer.is_err();
        record(&observed, operation, answer);
        if failed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Counts one answer; sorts out the ones no fault can excuse.
fn record(observed: &Mutex<Observed>, operation: &str, answer: Result<(), tonic::Status>) {
    let mut observed = observed.lock().expect("not poisoned");
    observed.calls += 1;
    if let Err(status) = answer {
        match status.code() {
            Code::Unavailable => observed.unavailable += 1,
            // A connection to a killed server, or a call cut short.
            Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                if std::error::Error::source(&status).is_some() => {}
            Code::NotFound | Code::ResourceExhausted => {}
            _ => observed.wrong.push(format!(
                "{operation} at {:?}: {:?} {}",
                std::time::SystemTime::now(),
                status.code(),
                status.message()
            )),
        }
    }
}

/// Tasks that finish by themselves: echo, short sleeps, failures.
fn create_request(turn: usize) -> pb::CreateTaskRequest {
    let padding = "x".repeat((turn % 4) * 2048);
    match turn % 3 {
        0 => request("soak echo", "echo", Some(json!({"padding": padding}))),
        1 => request(
            "soak sleep",
            "sleep",
            Some(json!({"seconds": 0.05, "padding": padding})),
        ),
        _ => request("soak fail", "fail", Some(json!({"message": "planned"}))),
    }
}

async fn watch_to_the_end(
    client: &mut TaskServiceClient<Channel>,
    id: String,
) -> Result<(), tonic::Status> {
    let mut stream = in_time(client.watch_task(pb::WatchTaskRequest { id }))
        .await?
        .into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(message) = stream.next().await {
            message?;
        }
        Ok(())
    })
    .await;
    ended.unwrap_or(Ok(()))
}

/// A call, given up after 5 s as `DEADLINE_EXCEEDED`, which the checks
/// report as wrong: the contract wants an answer within 2 s even while the
/// store fails (before the fix, calls waited 10 s for the database).
async fn in_time<T>(
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within 5 s")))
}

/// Samples the server's resident memory until told to stop; the highest.
struct RssSampler {
    stop: watch::Sender<bool>,
    sampling: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: watch::Receiver<u32>) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let sampling = tokio::spawn(async move {
            let mut highest = 0;
            while !*stopped.borrow() {
                highest = highest.max(rss_bytes(*pid.borrow()).unwrap_or(0));
                let _ = tokio::time::timeout(Duration::from_millis(100), stopped.changed()).await;
            }
            highest
        });
        Self { stop, sampling }
    }

    async fn highest(self) -> u64 {
        self.stop.send_replace(true);
        self.sampling.await.expect("sampler joined")
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The checks at the end: nothing answered OK is missing, everything
/// ended, nothing was answered wrongly, memory stayed bounded.
async fn check(process: &Process, observed: &Observed, highest_rss: u64) {
    eprintln!(
        "soak: {} calls, {} creates answered OK, {} UNAVAILABLE, highest RSS {} MiB",
        observed.calls,
        observed.acknowledged.len(),
        observed.unavailable,
        highest_rss / (1024 * 1024)
    );
    assert!(
        observed.wrong.is_empty(),
        "wrong answers: {:?}",
        observed.wrong
    );
    assert!(
        highest_rss < RSS_BOUND_BYTES,
        "resident memory reached {highest_rss} bytes"
    );
    let mut client = process.client().await;
    let lost = missing_tasks(&mut client, &observed.acknowledged)
        .await
        .len();
    assert_eq!(
        lost,
        0,
        "of {} tasks whose create was answered OK, {lost} are missing",
        observed.acknowledged.len()
    );
    crate::support::eventually("every acknowledged task ends", || {
        let mut client = client.clone();
        let acknowledged = &observed.acknowledged;
        async move {
            let tasks = list_all(&mut client).await;
            let ended: HashSet<&str> = tasks
                .iter()
                .filter(|task| {
                    matches!(
                        status_of(task),
                        pb::TaskStatus::Completed
                            | pb::TaskStatus::Failed
                            | pb::TaskStatus::Cancelled
                    )
                })
                .map(|task| task.id.as_str())
                .collect();
            acknowledged
                .iter()
                .all(|id| ended.contains(id.as_str()))
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_under_load_survives_kill_9_and_a_full_disk() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("tasks.db");
    let store = format!("sqlite://{}", path.display());
    let arguments = ["--store", store.as_str()];
    // Started under a file size limit it can lower later: SIGXFSZ ignored,
    // so a write past the limit fails instead of killing the process.
    let start = || {
        start_binary_under(
            &["sh", "-c", "trap '' XFSZ; exec \"$0\" \"$@\""],
            &arguments,
            &[],
        )
    };
    let mut process = start();
    let (target, targets) = watch::channel(process.client().await);
    let (pid, pids) = watch::channel(process.child.id());
    let sampler = RssSampler::start(pids);
    let load = Load::start(targets);

    tokio::time::sleep(phase()).await;
    eprintln!(
        "soak: kill -9 and restart at {:?}",
        std::time::SystemTime::now()
    );
    process.kill_hard();
    process = start();
    pid.send_replace(process.child.id());
    target.send_replace(process.client().await);

    eprintln!(
        "soak: a client stops reading {SLOW_READER_STREAMS} big list pages at {:?}",
        std::time::SystemTime::now()
    );
    let slow_reader = SlowReader::start(&process.grpc_url).await;
    tokio::time::sleep(phase()).await;
    eprintln!(
        "soak: the disk fills up at {:?}",
        std::time::SystemTime::now()
    );
    let limit = file_sizes(directory.path()) + 256 * 1024;
    set_file_size_limit(&process, &limit.to_string());
    tokio::time::sleep(phase()).await;
    eprintln!(
        "soak: the disk has room again at {:?}",
        std::time::SystemTime::now()
    );
    set_file_size_limit(&process, "unlimited");

    tokio::time::sleep(phase()).await;
    drop(slow_reader);
    let observed = load.stop().await;
    let highest_rss = sampler.highest().await;
    // What was answered OK must be in the file, not only in memory.
    process.kill_hard();
    let restarted = start();
    check(&restarted, &observed, highest_rss).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_under_load_survives_a_cut_and_a_silent_network() {
    if !postgres_available("soak::postgres_under_load") {
        return;
    }
    let direct = fresh_postgres_schema().await;
    let authority = direct
        .split_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("host:port in the URL")
        .to_owned();
    let address = std::net::ToSocketAddrs::to_socket_addrs(&authority)
        .expect("resolvable")
        .next()
        .expect("an address");
    let proxy = Proxy::start(address).await;
    let through_proxy = direct.replacen(&authority, &proxy.address().to_string(), 1);
    let process = start_binary(&["--store", through_proxy.as_str()], &[]);
    let (_target, targets) = watch::channel(process.client().await);
    let (_pid, pids) = watch::channel(process.child.id());
    let sampler = RssSampler::start(pids);
    let load = Load::start(targets);

    for (fault, what) in [
        (Proxy::cut as fn(&Proxy), "cut (connections closed)"),
        (Proxy::silence, "silent (packets dropped)"),
    ] {
        tokio::time::sleep(phase()).await;
        eprintln!("soak: the network to PostgreSQL is {what}");
        fault(&proxy);
        // Longer than a call's 5 s patience, so a call that hangs until
        // the network is back shows as a hang.
        tokio::time::sleep(phase() * 2).await;
        eprintln!("soak: the network is back");
        proxy.restore();
    }
    tokio::time::sleep(phase()).await;
    let observed = load.stop().await;
    let highest_rss = sampler.highest().await;
    assert!(observed.unavailable > 0, "the cut was never noticed");
    check(&process, &observed, highest_rss).await;
}

/// The largest file in the store's directory.
fn file_sizes(directory: &std::path::Path) -> u64 {
    std::fs::read_dir(directory)
        .expect("store directory")
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .max()
        .unwrap_or(0)
}

fn set_file_size_limit(process: &Process, limit: &str) {
    let set = Command::new("prlimit")
        .args([
            "--pid",
            &process.child.id().to_string(),
            &format!("--fsize={limit}:unlimited"),
        ])
        .status()
        .expect("prlimit runs");
    assert!(set.success(), "prlimit could not set the limit");
}
