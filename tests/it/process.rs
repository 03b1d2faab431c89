//! The real binary: started as a process, stopped with SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use serde_json::json;
use task_processor::pb::{self, task_service_client::TaskServiceClient};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{eventually, request};

/// The binary, started on a free loopback port; returns it and its address
/// as read from its "serving" log line.
fn start_binary(arguments: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_task-processor"))
        .args(["--listen", "127.0.0.1:0"])
        .args(arguments)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("the server logs that it serves")
            .expect("readable log");
        if let Some(rest) = line
            .split("address=")
            .nth(1)
            .filter(|_| line.contains("serving"))
        {
            break rest
                .split_whitespace()
                .next()
                .expect("an address")
                .to_owned();
        }
    };
    // Keep draining the log so the process never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, format!("http://{address}"))
}

fn send_sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_drains_refuses_creates_ends_watches_and_exits_zero() {
    let (mut child, url) = start_binary(&["--drain-period", "2s", "--demo-duration", "10m"]);
    let channel = tonic::transport::Channel::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = TaskServiceClient::new(channel.clone());
    let health = HealthClient::new(channel);
    let task = client
        .create_task(request("long demo", "demo", Some(json!({"n": 1}))))
        .await
        .expect("created")
        .into_inner();
    let mut watch = client
        .watch_task(pb::WatchTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    watch.next().await.expect("first").expect("ok");

    send_sigterm(&child);
    eventually("health NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            let response = health.check(HealthCheckRequest::default()).await.ok()?;
            (response.into_inner().status == ServingStatus::NotServing as i32).then_some(())
        }
    })
    .await;
    let refused = client
        .create_task(request("late", "echo", None))
        .await
        .expect_err("refused while draining");
    assert_eq!(refused.code(), Code::Unavailable);

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
        let exited = child.try_wait().expect("wait");
        async move { exited }
    })
    .await;
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}

#[tokio::test]
async fn invalid_flags_exit_non_zero_naming_the_setting_before_binding() {
    let output = Command::new(env!("CARGO_BIN_EXE_task-processor"))
        .args(["--listen", "127.0.0.1:0", "--max-concurrent", "0"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--max-concurrent"), "{stderr}");
}
