//! When a call goes wrong: each error said once, in words, with what to
//! do, and its exit code: not found, invalid arguments, usage errors, no
//! server, a full queue (busy) and a call past its deadline (against a
//! scripted `TaskService`).

use super::*;

#[tokio::test]
async fn errors_say_what_to_do_and_exit_with_their_code() {
    let server = TestServer::start().await;
    let unknown = "0190b4a4-5d3e-7f00-8000-000000000000";
    for subcommand in ["get", "watch", "cancel"] {
        let missing = taskctl(&server, &[subcommand, unknown]).await;
        missing.expect_code(5);
        assert_eq!(
            missing.stderr.trim(),
            format!("taskctl: task {unknown} not found")
        );
    }

    // The violation is told once, naming the field and what sets it.
    let blank = taskctl(&server, &["create", "  "]).await;
    blank.expect_code(6);
    assert_eq!(
        blank.stderr.trim(),
        "taskctl: invalid argument: field name (NAME): is required and must not be blank"
    );
    let bad_label = taskctl(&server, &["create", "x", "--label", "bad key!=v"]).await;
    bad_label.expect_code(6);
    assert_eq!(bad_label.stderr.lines().count(), 1, "{}", bad_label.stderr);
    assert!(
        bad_label
            .stderr
            .starts_with("taskctl: invalid argument: field labels (--label): key \"bad key!\""),
        "{}",
        bad_label.stderr
    );
    let not_uuid = taskctl(&server, &["get", "not-a-uuid"]).await;
    not_uuid.expect_code(6);
    assert_eq!(
        not_uuid.stderr.trim(),
        "taskctl: invalid argument: field id (ID): \"not-a-uuid\" is not a UUID"
    );

    // --data is named once, as given.
    let not_json = taskctl(&server, &["create", "x", "--data", "{not json"]).await;
    not_json.expect_code(2);
    assert!(
        not_json
            .stderr
            .starts_with("taskctl: --data is not valid JSON: "),
        "{}",
        not_json.stderr
    );
    assert_eq!(
        not_json.stderr.matches("--data").count(),
        2,
        "once, and once in the quoting hint: {}",
        not_json.stderr
    );
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("broken.json");
    std::fs::write(&path, "{not json").expect("written");
    let argument = format!("@{}", path.display());
    let not_json = taskctl(&server, &["create", "x", "--data", &argument]).await;
    not_json.expect_code(2);
    assert!(
        not_json
            .stderr
            .starts_with(&format!("taskctl: --data {argument} is not valid JSON: ")),
        "{}",
        not_json.stderr
    );
    assert_eq!(
        not_json.stderr.matches("--data").count(),
        1,
        "{}",
        not_json.stderr
    );

    // Usage errors, found before any call.
    for args in [
        &["create", "x", "--data", "{not json"][..],
        &["create", "x", "--label", "novalue"],
        &["create", "x", "--timeout", "soon"],
        &["list", "--status", "sleeping"],
        &["list", "--limit", "0"],
        &["--call-timeout", "0s", "health"],
        &["--key", "client.key", "health"],
        &["--token", "a", "--token-file", "token.txt", "health"],
        &["frobnicate"],
    ] {
        let usage = taskctl(&server, args).await;
        usage.expect_code(2);
        assert!(!usage.stderr.is_empty(), "{args:?}");
    }
    // `--ca-cert` is the old name of `--ca`; TLS flags with an explicit
    // http:// address are a contradiction, said as such.
    let tls = taskctl(&server, &["get", unknown, "--ca-cert", "ca.pem"]).await;
    tls.expect_code(2);
    assert!(
        tls.stderr
            .contains("is plaintext, but TLS flags were given"),
        "{}",
        tls.stderr
    );
}

#[tokio::test]
async fn no_server_is_reported_as_such() {
    let address = closed_port_address().await;
    for addr in [address.clone(), format!("http://{address}")] {
        let refused = run(command(&addr, &["list"])).await;
        refused.expect_code(7);
        assert_eq!(
            refused.stderr.trim(),
            format!(
                "taskctl: no server at {address} (connection refused) — is task-processor running?"
            )
        );
    }
    // The address may come from the environment too.
    let mut from_env = std::process::Command::new(TASKCTL);
    from_env
        .args(["health"])
        .env("TASKCTL_ADDR", &address)
        .stdin(Stdio::null());
    let refused = run(assert_cmd::Command::from_std(from_env)).await;
    refused.expect_code(7);
    assert!(refused.stderr.contains(&address), "{}", refused.stderr);
}

#[tokio::test]
async fn a_full_queue_exits_busy_and_says_when_to_retry() {
    let server = TestServer::start_with(Config {
        max_concurrent: 1,
        queue_capacity: 1,
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    let running = create(&mut client, "running", "gate", None).await;
    wait_for_status(&client, &running.id, pb::TaskStatus::Running).await;
    create(&mut client, "waiting", "gate", None).await;

    let refused = taskctl(&server, &["create", "one too many", "--kind", "gate"]).await;
    refused.expect_code(8);
    assert_eq!(
        refused.stderr.trim(),
        "taskctl: the server is busy: the queue is full: 1 tasks are waiting; retry in 1s"
    );
    server.gate.release(2);
}

#[tokio::test]
async fn a_call_past_its_deadline_is_reported_as_our_timeout() {
    // No answer at all: whichever of taskctl's timer, tonic's client and
    // the server notices the deadline first, it is the same timeout.
    let (address, serving) = start_scripted(None).await;
    let unknown = "0190b4a4-5d3e-7f00-8000-000000000000";
    let silent = run(command(
        &address,
        &["get", unknown, "--call-timeout", "300ms"],
    ))
    .await;
    silent.expect_code(1);
    assert_eq!(
        silent.stderr.trim(),
        "taskctl: no answer within 300ms (raise it with --call-timeout)"
    );
    serving.abort();

    // What tonic's server answers when the deadline taskctl sent passes,
    // and what other servers answer.
    for answer in [
        (Code::Cancelled, "Timeout expired"),
        (Code::DeadlineExceeded, "deadline exceeded"),
    ] {
        let (address, serving) = start_scripted(Some(answer)).await;
        let late = run(command(&address, &["create", "late"])).await;
        late.expect_code(1);
        assert_eq!(
            late.stderr.trim(),
            "taskctl: no answer within 30s (raise it with --call-timeout)",
            "{answer:?}"
        );
        serving.abort();
    }

    // Other refusals are told in words, never as a bare gRPC code.
    let (address, serving) = start_scripted(Some((Code::Internal, "handler panicked"))).await;
    let failed = run(command(&address, &["list"])).await;
    failed.expect_code(1);
    assert_eq!(
        failed.stderr.trim(),
        "taskctl: the server failed (internal error): handler panicked"
    );
    serving.abort();
}
