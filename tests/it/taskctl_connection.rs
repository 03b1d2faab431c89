//! `taskctl` when the connection under it fails: the real server binary is
//! killed or frozen in the middle of a `taskctl watch`, and taskctl must
//! say "unavailable" (exit 7) in one plain line, soon — never hang, never
//! exit 1 with an h2 protocol error. Also: taskctl's default call timeout
//! outlasts a server that waits on its store before answering UNAVAILABLE.
//!
//! The server binary runs under [`Process`], whose drop kills it (SIGKILL
//! ends a stopped process too), and taskctl under [`Watching`], whose drop
//! kills it: a failed assertion leaves no process behind.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, ChildStderr, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::json;
use tonic::Code;

use crate::{
    process::{Process, start_binary},
    support::{DEADLINE, create},
    taskctl::{TASKCTL, command, run, start_scripted_after},
};

/// A `taskctl watch` running as a child process, its stdout read line by
/// line as it comes.
struct Watching {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<ChildStderr>,
}

impl Watching {
    /// Starts `taskctl watch <task_id>` against the server; `env` adds
    /// variables (the hidden keepalive setting).
    fn start(server: &Process, task_id: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(TASKCTL)
            .args(["--addr", &server.grpc_url, "watch", task_id])
            .env_remove("TASKCTL_ADDR")
            .env_remove("TASKCTL_CALL_TIMEOUT")
            .env_remove("TASKCTL_KEEPALIVE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("taskctl starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    /// Waits for the first state line: the stream is open and taskctl is
    /// following the task.
    fn until_following(&self) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .expect("taskctl prints the task's state once it follows it")
    }

    /// Polls until taskctl exits, failing the test after `deadline`;
    /// returns its exit code and stderr.
    async fn exit_within(&mut self, deadline: Duration) -> (i32, String) {
        let until = tokio::time::Instant::now() + deadline;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "taskctl still running {deadline:?} after the server went away"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.stderr.take() {
            pipe.read_to_string(&mut stderr).expect("UTF-8 stderr");
        }
        let code = status
            .code()
            .unwrap_or_else(|| panic!("taskctl was killed by a signal: {status:?}"));
        (code, stderr)
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal (`STOP`, `CONT`) to the server process.
fn signal(server: &Process, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name}");
}

/// Starts the server binary with a task that sleeps a minute, long past
/// any test, and a `taskctl watch` following it.
async fn watching_a_long_task(env: &[(&str, &str)]) -> (Process, Watching) {
    let server = start_binary(&["--drain-period", "0s"], &[]);
    let mut client = server.client().await;
    let task = create(
        &mut client,
        "long nap",
        "sleep",
        Some(json!({"seconds": 60})),
    )
    .await;
    let watching = Watching::start(&server, &task.id, env);
    watching.until_following();
    (server, watching)
}

/// The message of a lost connection: one line, in words, exit 7.
#[track_caller]
fn assert_connection_lost(code: i32, stderr: &str) {
    assert_eq!(code, 7, "exit code; stderr: {stderr}");
    let message = stderr.trim_end();
    assert!(!message.contains('\n'), "one line: {stderr:?}");
    assert!(
        message.starts_with("taskctl: the connection to the server was lost: "),
        "{stderr:?}"
    );
    assert!(!message.contains("h2 protocol error"), "{stderr:?}");
}

#[tokio::test]
async fn a_watch_whose_server_is_killed_exits_unavailable() {
    let (mut server, mut watching) = watching_a_long_task(&[]).await;
    server.kill_hard();
    let (code, stderr) = watching.exit_within(DEADLINE).await;
    assert_connection_lost(code, &stderr);
}

#[tokio::test]
async fn a_watch_whose_server_freezes_exits_unavailable_through_keepalive() {
    // Pings every second, each answered within a second: a frozen server
    // is noticed in about 2 s instead of the default 20 s.
    let (server, mut watching) = watching_a_long_task(&[("TASKCTL_KEEPALIVE", "1s")]).await;
    signal(&server, "STOP");
    let exited = watching.exit_within(DEADLINE).await;
    // Resumed so it dies like any other; its drop kills it either way.
    signal(&server, "CONT");
    let (code, stderr) = exited;
    assert_connection_lost(code, &stderr);
}

#[tokio::test]
async fn the_default_call_timeout_outlasts_the_servers_store_wait() {
    // A server whose store is down answers UNAVAILABLE after waiting for
    // it. The real server's wait cannot be set from outside, so a
    // scripted one answers after 12 s: longer than the 10 s that taskctl
    // used to give up after (issue 9), well within today's default.
    let (address, serving) = start_scripted_after(
        Duration::from_secs(12),
        Some((
            Code::Unavailable,
            "the task store is unavailable, try again: pool timed out",
        )),
    )
    .await;
    let unknown = "0190b4a4-5d3e-7f00-8000-000000000000";
    let answered = run(command(&address, &["get", unknown])).await;
    answered.expect_code(7);
    assert_eq!(
        answered.stderr.trim(),
        "taskctl: server unavailable: the task store is unavailable, try again: pool timed out"
    );
    serving.abort();

    let help = run(command(&address, &["--help"])).await;
    help.expect_code(0);
    assert!(help.stdout.contains("[default: 30s]"), "{}", help.stdout);
}
