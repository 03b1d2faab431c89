//! The commands that are not about tasks: `health` (SERVING, then
//! NOT_SERVING while the server drains), shell `completions`, and the
//! `--help` of taskctl and each subcommand (examples, exit codes).

use super::*;

#[tokio::test]
async fn health_reports_serving_then_not_serving() {
    let mut server = TestServer::start_with(Config {
        drain_period: Duration::from_secs(5),
        ..test_config()
    })
    .await;
    let serving = taskctl(&server, &["health"]).await;
    serving.expect_code(0);
    assert!(
        serving
            .stdout
            .contains("taskprocessor.v1.TaskService  SERVING"),
        "{}",
        serving.stdout
    );
    assert_eq!(
        serving.stdout.matches("SERVING").count(),
        2,
        "{}",
        serving.stdout
    );

    let as_json = taskctl(&server, &["health", "-o", "json"]).await;
    as_json.expect_code(0);
    let reports: Vec<JsonValue> = as_json
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(
        reports,
        vec![
            json!({"service": "", "status": "SERVING"}),
            json!({"service": "taskprocessor.v1.TaskService", "status": "SERVING"}),
        ]
    );
    let one = taskctl(
        &server,
        &[
            "health",
            "--service",
            "taskprocessor.v1.TaskService",
            "-o",
            "yaml",
        ],
    )
    .await;
    one.expect_code(0);
    assert_eq!(
        one.stdout,
        "---\nservice: taskprocessor.v1.TaskService\nstatus: SERVING\n"
    );

    let unknown = taskctl(&server, &["health", "--service", "no.such.Service"]).await;
    unknown.expect_code(5);

    let stopped = server.begin_shutdown();
    let draining = eventually("health to say NOT_SERVING", || async {
        let run = taskctl(&server, &["health"]).await;
        (run.code != 0).then_some(run)
    })
    .await;
    draining.expect_code(7);
    assert!(
        draining.stdout.contains("NOT_SERVING"),
        "{}",
        draining.stdout
    );
    assert!(
        draining.stderr.contains("not SERVING"),
        "{}",
        draining.stderr
    );
    // Creates are refused while the server drains.
    let refused = taskctl(&server, &["create", "late"]).await;
    refused.expect_code(7);
    stopped.abort();
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        // No server is needed: the address is never used.
        let completions = run(command("127.0.0.1:9", &["completions", shell])).await;
        completions.expect_code(0);
        assert!(completions.stdout.contains("taskctl"), "{shell}");
        assert!(completions.stdout.contains("watch"), "{shell}");
    }
}

#[tokio::test]
async fn help_shows_examples_and_exit_codes() {
    let help = run(command("127.0.0.1:9", &["--help"])).await;
    help.expect_code(0);
    assert!(help.stdout.contains("Exit codes:"), "{}", help.stdout);
    for line in [
        "  3  the task failed",
        "  7  unavailable",
        "  8  the server is busy (queue or memory budget full); retry later",
    ] {
        assert!(help.stdout.contains(line), "{line} in {}", help.stdout);
    }
    for subcommand in [
        "create",
        "get",
        "list",
        "watch",
        "cancel",
        "health",
        "completions",
    ] {
        let help = run(command("127.0.0.1:9", &[subcommand, "--help"])).await;
        help.expect_code(0);
        assert!(
            help.stdout.contains(&format!("taskctl {subcommand}")),
            "{subcommand}: {}",
            help.stdout
        );
        assert!(help.stdout.contains("Examples:"), "{subcommand}");
    }
}
