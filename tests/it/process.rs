//! The real binary: started as a process, configured, probed over HTTP and
//! stopped with SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value as JsonValue, json};
use task_processor::pb::{self, task_service_client::TaskServiceClient};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{eventually, health_status, http_get, request, wait_for_task_service_health};

/// Environment variables of a case.
type Vars<'a> = &'a [(&'a str, &'a str)];

/// A running binary, where it listens, and the log lines it wrote.
pub struct Process {
    pub child: Child,
    pub grpc_url: String,
    pub admin_address: String,
    pub log: Arc<Mutex<Vec<JsonValue>>>,
}

impl Process {
    pub async fn client(&self) -> TaskServiceClient<tonic::transport::Channel> {
        TaskServiceClient::new(self.channel().await)
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.grpc_url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    /// Whether the process logged a line with this message about this task.
    pub fn logged(&self, message: &str, task_id: &str) -> bool {
        self.log
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|entry| entry["message"] == message && entry["task_id"] == task_id)
    }

    /// Whether the server logged a line whose message starts with `prefix`.
    pub fn logged_message(&self, prefix: &str) -> bool {
        self.log.lock().expect("not poisoned").iter().any(|entry| {
            entry["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
        })
    }

    /// Waits until the server says its store cannot be written: the task
    /// service's health `NOT_SERVING` and `/readyz` 503, while the process's
    /// own health and `/healthz` stay up.
    pub async fn expect_store_failure_reported(&self) {
        let health = HealthClient::new(self.channel().await);
        wait_for_task_service_health(&health, ServingStatus::NotServing).await;
        assert_eq!(health_status(&health, "").await, ServingStatus::Serving);
        let (ready, body) = http_get(&self.admin_address, "/readyz").await;
        assert_eq!(ready, 503, "{body}");
        assert_eq!(http_get(&self.admin_address, "/healthz").await.0, 200);
    }

    /// Waits until the server says it serves again: the task service's
    /// health `SERVING` and `/readyz` 200.
    pub async fn expect_store_recovery_reported(&self) {
        let health = HealthClient::new(self.channel().await);
        wait_for_task_service_health(&health, ServingStatus::Serving).await;
        assert_eq!(http_get(&self.admin_address, "/readyz").await.0, 200);
    }

    /// SIGKILL: no shutdown, no last flush.
    pub fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL sent");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on free loopback ports and reads its addresses from
/// its JSON "serving" log line. The store is memory unless the arguments
/// name one (never the default file in the working directory).
pub fn start_binary(arguments: &[&str], env: &[(&str, &str)]) -> Process {
    start_binary_under(&[], arguments, env)
}

/// Like [`start_binary`], under a soft and hard limit of `nofile` open
/// file descriptors (set by the shell, which then becomes the server).
pub fn start_binary_with_nofile(nofile: u32, arguments: &[&str]) -> Process {
    let script = format!("ulimit -n {nofile} && exec \"$0\" \"$@\"");
    start_binary_under(&["sh", "-c", &script], arguments, &[])
}

/// Like [`start_binary`], run by `wrapper` (a command that ends by running
/// the binary path and arguments that follow it, such as `sh -c '…; exec
/// "$0" "$@"'`).
pub fn start_binary_under(wrapper: &[&str], arguments: &[&str], env: &[(&str, &str)]) -> Process {
    let (mut process, lines) = spawn_until_serving(wrapper, arguments, env);
    // Keep reading the log so the process never blocks on a full pipe.
    let log = Arc::new(Mutex::new(Vec::new()));
    let collected = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(entry) = serde_json::from_str(&line) {
                collected.lock().expect("not poisoned").push(entry);
            }
        }
    });
    process.log = log;
    process
}

/// The read end of a server's stdout, held open and never read.
pub type UnreadStdout = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// Like [`start_binary`], but nothing reads the log after the "serving"
/// line: the pipe fills as with a stalled log collector. Keep the
/// [`UnreadStdout`] as long as the process: closing it would make writes
/// fail instead of wait. [`Process::log`] stays empty.
pub fn start_binary_with_stdout_unread(
    arguments: &[&str],
    env: &[(&str, &str)],
) -> (Process, UnreadStdout) {
    spawn_until_serving(&[], arguments, env)
}

/// Starts the binary (see [`start_binary_under`]) and reads its log up to
/// its JSON "serving" line, for its addresses; returns the rest unread.
fn spawn_until_serving(
    wrapper: &[&str],
    arguments: &[&str],
    env: &[(&str, &str)],
) -> (Process, UnreadStdout) {
    let store_given = arguments.contains(&"--store")
        || env.iter().any(|(name, _)| *name == "TASK_PROCESSOR_STORE");
    let default_store: &[&str] = if store_given {
        &[]
    } else {
        &["--store", "memory"]
    };
    let binary = env!("CARGO_BIN_EXE_task-processor");
    let mut command = match wrapper.split_first() {
        Some((program, wrapper_arguments)) => {
            let mut command = Command::new(program);
            command.args(wrapper_arguments).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    // The log is read as JSON at the shipped level unless a case says
    // otherwise, whatever the environment of whoever runs the tests.
    let mut child = command
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(default_store)
        .args(arguments)
        .env_remove("RUST_LOG")
        .env_remove("LOG_LEVEL")
        .env_remove("LOG_FORMAT")
        // Nor does it export traces unless a case asks for it.
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SDK_DISABLED")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let serving = loop {
        let line = lines
            .next()
            .expect("the server logs that it serves")
            .expect("readable log");
        let entry: JsonValue = serde_json::from_str(&line).expect("every log line is JSON");
        if entry["message"] == "serving" {
            break entry;
        }
    };
    let field = |name: &str| serving[name].as_str().expect("an address").to_owned();
    let process = Process {
        child,
        grpc_url: format!("http://{}", field("address")),
        admin_address: field("admin_address"),
        log: Arc::default(),
    };
    (process, lines)
}

pub fn send_sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_drains_then_ends_watches_cancels_runs_and_exits_zero() {
    // The checks "while draining" below must all fit in the drain period,
    // on a loaded machine too: it is long on purpose.
    let mut process = start_binary(
        &[
            "--drain-period",
            "5s",
            "--shutdown-grace",
            "1s",
            "--demo-duration",
            "10m",
        ],
        &[],
    );
    let channel = tonic::transport::Channel::from_shared(process.grpc_url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = TaskServiceClient::new(channel.clone());
    let health = HealthClient::new(channel);
    assert_eq!(http_get(&process.admin_address, "/readyz").await.0, 200);
    assert_eq!(http_get(&process.admin_address, "/healthz").await.0, 200);

    let task = client
        .create_task(request("long demo", "demo", Some(json!({"n": 1}))))
        .await
        .expect("created")
        .into_inner();
    crate::support::wait_for_status(&client, &task.id, pb::TaskStatus::Running).await;
    let mut watch = client
        .watch_task(pb::WatchTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    watch.next().await.expect("first").expect("ok");

    let signalled = Instant::now();
    send_sigterm(&process.child);
    eventually("health NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            let response = health.check(HealthCheckRequest::default()).await.ok()?;
            (response.into_inner().status == ServingStatus::NotServing as i32).then_some(())
        }
    })
    .await;
    assert_eq!(
        http_get(&process.admin_address, "/readyz").await.0,
        503,
        "not ready while draining"
    );
    assert_eq!(
        http_get(&process.admin_address, "/healthz").await.0,
        200,
        "still alive"
    );
    let refused = client
        .create_task(request("late", "echo", None))
        .await
        .expect_err("refused while draining");
    assert_eq!(refused.code(), Code::Unavailable);
    // A refused call is worth a line by default (successful ones are not).
    eventually("the refused CreateTask's log line", || {
        let refused_logged = process
            .log
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|entry| {
                entry["message"] == "rpc finished"
                    && entry["level"] == "INFO"
                    && entry["method"] == "TaskService/CreateTask"
                    && entry["code"] == "Unavailable"
            });
        async move { refused_logged.then_some(()) }
    })
    .await;
    let during_drain = crate::support::get(&mut client, &task.id).await;
    assert_eq!(
        during_drain.status,
        pb::TaskStatus::Running as i32,
        "reads work while draining"
    );

    let end = loop {
        match watch.next().await {
            Some(Ok(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(
        end.expect("error").expect_err("not OK").code(),
        Code::Unavailable
    );

    let exit = eventually("the process to exit", || {
        let exited = process.child.try_wait().expect("wait");
        async move { exited }
    })
    .await;
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    // The budget a pod gets: drain 5 s + grace 1 s + forced stop 1 s +
    // closing 2 s, with room for a loaded machine.
    let budget = Duration::from_secs(5 + 1 + 1 + 2 + 15);
    assert!(signalled.elapsed() < budget, "{:?}", signalled.elapsed());
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut process = start_binary(&["--drain-period", "1h"], &[]);
    send_sigterm(&process.child);
    eventually("readiness to drop", || {
        let admin = process.admin_address.clone();
        async move { (http_get(&admin, "/readyz").await.0 == 503).then_some(()) }
    })
    .await;
    send_sigterm(&process.child);
    let exit = eventually("the process to exit", || {
        let exited = process.child.try_wait().expect("wait");
        async move { exited }
    })
    .await;
    assert!(
        !exit.success(),
        "an interrupted drain is not a clean exit: {exit:?}"
    );
}

#[tokio::test]
async fn settings_come_from_file_then_environment_then_flags() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        file.path(),
        "node_name: from-file\nmax_concurrent: 3\nlog_format: json\n",
    )
    .expect("written");
    let path = file.path().to_str().expect("utf-8");
    let output = Command::new(env!("CARGO_BIN_EXE_task-processor"))
        .args(["--config", path, "--max-concurrent", "5", "--print-config"])
        .env("PROCESSING_MAX_CONCURRENT", "4")
        .env("TASK_PROCESSOR_QUEUE_CAPACITY", "77")
        .output()
        .expect("runs");
    assert!(output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("node_name: from-file"), "{printed}");
    assert!(printed.contains("max_concurrent: 5"), "{printed}");
    assert!(printed.contains("queue_capacity: 77"), "{printed}");
}

#[tokio::test]
async fn invalid_settings_exit_non_zero_naming_setting_and_source_before_binding() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("address").to_string();
    let cases: &[(&[&str], Vars, &str)] = &[
        (&["--max-concurrent", "0"], &[], "flag --max-concurrent"),
        (
            &[],
            &[("PROCESSING_MAX_TIMEOUT", "soon")],
            "environment variable PROCESSING_MAX_TIMEOUT",
        ),
        // Checked before binding: the taken port is never reached.
        (
            &["--listen", &taken, "--log-format", "xml"],
            &[],
            "log_format",
        ),
    ];
    for (arguments, env, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_task-processor"))
            .args(*arguments)
            .envs(env.iter().copied())
            .output()
            .expect("runs");
        assert!(!output.status.success(), "{arguments:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{arguments:?}: {stderr}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_task-processor"))
        .args(["--listen", &taken, "--admin-listen", "127.0.0.1:0"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot listen"));
}

/// Resident memory of a process, from /proc.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc readable");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS present");
    kib * 1024
}

/// Creates `count` echo tasks over `connections` concurrent clients.
async fn create_echo_tasks(url: &str, count: usize, connections: usize) {
    let mut workers = Vec::new();
    for worker in 0..connections {
        let channel = tonic::transport::Channel::from_shared(url.to_owned())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut client = TaskServiceClient::new(channel);
        workers.push(tokio::spawn(async move {
            for index in (worker..count).step_by(connections) {
                let data = json!({"index": index, "padding": "x".repeat(2000)});
                client
                    .create_task(request("stream", "echo", Some(data)))
                    .await
                    .expect("accepted");
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
}

/// Under a sustained stream of tasks, retention holds memory flat: the
/// resident size after 25 000 tasks is about what it was after 5 000.
#[tokio::test]
async fn retention_keeps_memory_flat_under_a_stream_of_tasks() {
    let process = start_binary(
        &["--max-finished-tasks", "1000", "--max-concurrent", "64"],
        &[("RUST_LOG", "warn,task_processor::server=info")],
    );
    let pid = process.child.id();
    create_echo_tasks(&process.grpc_url, 5_000, 16).await;
    let warmed_up = resident_bytes(pid);
    create_echo_tasks(&process.grpc_url, 20_000, 16).await;
    let after = resident_bytes(pid);
    // Without retention, 20 000 more tasks of over 2 KB each would add
    // more than 40 MiB; allow allocator noise only.
    let growth = after.saturating_sub(warmed_up);
    assert!(
        growth < 8 * 1024 * 1024,
        "resident memory grew by {growth} bytes ({warmed_up} -> {after})"
    );
    let (_, metrics) = http_get(&process.admin_address, "/metrics").await;
    let retained = metrics
        .lines()
        .find_map(|line| line.strip_prefix("task_processor_retained_tasks "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .expect("retained_tasks gauge");
    assert!(retained <= 1000.0 + 64.0, "{retained} tasks retained");
}

/// CPU time the process has used (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc readable");
    // Fields after the command name, which is in parentheses: state is
    // field 3, utime 14 and stime 15, in clock ticks.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a command name")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf runs");
    let per_second: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK");
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// Out of file descriptors, the server backs off instead of retrying
/// accept in a loop (which cost a whole core and starved everything
/// else), counts what it refused, and answers again once connections
/// close.
#[tokio::test]
async fn out_of_file_descriptors_the_server_backs_off_counts_and_recovers() {
    let process = start_binary_with_nofile(64, &[]);
    let pid = process.child.id();
    let grpc_address = process.grpc_url.trim_start_matches("http://").to_owned();

    // More than twice as many connections as descriptors; the kernel
    // completes those the server cannot accept in the listen backlog (128:
    // tokio's), so every connect returns.
    let mut flood = Vec::new();
    for _ in 0..150 {
        flood.push(
            tokio::net::TcpStream::connect(&grpc_address)
                .await
                .expect("connected"),
        );
    }
    let cpu_before = cpu_time(pid);
    let wall_before = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_per_second =
        (cpu_time(pid) - cpu_before).as_secs_f64() / wall_before.elapsed().as_secs_f64();
    // Spinning on EMFILE costs a core (1 CPU-second per second); a
    // back-off costs next to nothing. Generous for a loaded machine.
    assert!(
        cpu_per_second < 0.3,
        "the server used {cpu_per_second:.2} CPU-seconds per second while out of descriptors"
    );
    let warned = process
        .log
        .lock()
        .expect("not poisoned")
        .iter()
        .any(|entry| {
            entry["level"] == "WARN"
                && entry["message"]
                    .as_str()
                    .is_some_and(|message| message.starts_with("cannot accept gRPC connections"))
                && entry["refused"]
                    .as_u64()
                    .is_some_and(|refused| refused >= 1)
        });
    assert!(warned, "a warning says accepts are refused, and how many");

    drop(flood);
    eventually("health to answer SERVING once connections close", || {
        let url = process.grpc_url.clone();
        async move {
            let channel = tonic::transport::Channel::from_shared(url)
                .expect("url")
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(2))
                .connect()
                .await
                .ok()?;
            let response = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .ok()?;
            (response.into_inner().status == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await;
    let (_, metrics) = http_get(&process.admin_address, "/metrics").await;
    let refused = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(r#"task_processor_grpc_accept_errors_total{reason="emfile"} "#)
        })
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no emfile refusals counted:\n{metrics}"));
    assert!(refused >= 1.0, "{refused}");
}
