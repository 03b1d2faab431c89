//! What taskctl prints, in each of its formats: the key/value view and
//! the list table for people, proto3 JSON and YAML that read back to the
//! very task the server has, the same text for the same task every time,
//! and YAML that a YAML 1.1 reader cannot misread.

use super::*;

#[tokio::test]
async fn create_get_and_list_print_tables_for_people() {
    let server = TestServer::start().await;
    let created = taskctl(
        &server,
        &[
            "create",
            "nightly report",
            "--kind",
            "gate",
            "--description",
            "the nightly one",
            "--data",
            r#"{"rows": 3}"#,
            "--label",
            "team=data",
            "--label",
            "env=dev",
            "--timeout",
            "1500ms",
        ],
    )
    .await;
    created.expect_code(0);
    let id = detail(&created.stdout, "ID").to_owned();
    assert_eq!(detail(&created.stdout, "STATUS"), "PENDING");
    assert_eq!(detail(&created.stdout, "TIMEOUT"), "2s", "rounded up");

    let fetched = taskctl(&server, &["get", &id]).await;
    fetched.expect_code(0);
    let view = &fetched.stdout;
    assert_eq!(detail(view, "NAME"), "nightly report");
    assert_eq!(detail(view, "DESCRIPTION"), "the nightly one");
    assert_eq!(detail(view, "KIND"), "gate");
    assert_eq!(detail(view, "DATA"), r#"{"rows":3}"#);
    assert_eq!(detail(view, "LABELS"), "env=dev, team=data");
    assert!(detail(view, "CREATED").ends_with("ago)"), "{view}");

    let listed = taskctl(&server, &["list"]).await;
    listed.expect_code(0);
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", listed.stdout);
    for column in [
        "ID", "NAME", "KIND", "STATUS", "PROGRESS", "AGE", "DURATION",
    ] {
        assert!(lines[0].contains(column), "{column} in {}", lines[0]);
    }
    assert!(lines[1].starts_with(&id), "{}", lines[1]);
    assert!(lines[1].contains("nightly report"), "{}", lines[1]);
    assert!(lines[1].contains("ago"), "{}", lines[1]);
    server.gate.release(1);
}

#[tokio::test]
async fn json_and_yaml_read_back_to_the_task_the_server_has() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let data = json!({
        "int": 42, "neg": -7, "frac": 0.25, "big": 1e300, "nul": "a\u{0000}b", "emoji": "🦀",
        "list": [null, true, "x", [], {}], "nested": {"deeper": {"n": 1}}
    });
    let task = create(&mut client, "round trip", "echo", Some(data.clone())).await;
    let task = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;

    let as_json = taskctl(&server, &["get", &task.id, "-o", "json"]).await;
    as_json.expect_code(0);
    assert_eq!(task_from_json(&as_json.stdout), task);
    // What grpcurl prints: lowerCamelCase, enum names, strings for uint64,
    // RFC 3339 times, whole numbers without a fraction.
    let printed: JsonValue = serde_json::from_str(&as_json.stdout).expect("JSON");
    assert_eq!(printed["status"], "TASK_STATUS_COMPLETED");
    assert_eq!(
        printed["revision"],
        JsonValue::String(task.revision.to_string())
    );
    assert!(
        printed["createdAt"]
            .as_str()
            .expect("a string")
            .ends_with('Z')
    );
    assert_eq!(printed["timeoutSeconds"], 60);
    assert_eq!(printed["result"], data);
    assert!(
        as_json.stdout.contains(r#""int": 42,"#),
        "{}",
        as_json.stdout
    );

    let as_yaml = taskctl(&server, &["get", &task.id, "--output", "yaml"]).await;
    as_yaml.expect_code(0);
    assert_eq!(
        from_yaml::<pb::Task>("taskprocessor.v1.Task", &as_yaml.stdout),
        task
    );
    let yaml_value: JsonValue = yaml_serde::from_str(&as_yaml.stdout).expect("YAML");
    assert_eq!(yaml_value, printed, "YAML is the JSON value");

    let listed = taskctl(&server, &["list", "-o", "json"]).await;
    listed.expect_code(0);
    let response: pb::ListTasksResponse =
        from_json("taskprocessor.v1.ListTasksResponse", &listed.stdout);
    assert_eq!(response.tasks, vec![task.clone()]);
    let listed = taskctl(&server, &["list", "-o", "yaml"]).await;
    let response: pb::ListTasksResponse =
        from_yaml("taskprocessor.v1.ListTasksResponse", &listed.stdout);
    assert_eq!(response.tasks, vec![task.clone()]);

    let watched = taskctl(&server, &["watch", &task.id, "-o", "json"]).await;
    watched.expect_code(0);
    assert_eq!(watched_tasks(&watched.stdout), vec![task.clone()]);
    let watched = taskctl(&server, &["watch", &task.id, "-o", "yaml"]).await;
    watched.expect_code(0);
    let documents: Vec<&str> = watched
        .stdout
        .split("---\n")
        .filter(|document| !document.is_empty())
        .collect();
    assert_eq!(documents.len(), 1, "{}", watched.stdout);
    let message: pb::WatchTaskResponse =
        from_yaml("taskprocessor.v1.WatchTaskResponse", documents[0]);
    assert_eq!(message.task, Some(task));
}

#[tokio::test]
async fn the_same_task_prints_the_same_text_every_time() {
    let server = TestServer::start().await;
    let keys = [
        "team", "env", "zone", "app", "tier", "owner", "cost", "batch",
    ];
    let label_args: Vec<String> = keys.iter().map(|key| format!("{key}=v-{key}")).collect();
    let mut args = vec![
        "create",
        "labelled",
        "--kind",
        "echo",
        "--data",
        r#"{"zeta": 1, "alpha": {"x": 2, "b": 3}, "mid": 4}"#,
        "-o",
        "json",
    ];
    for label in &label_args {
        args.extend(["--label", label.as_str()]);
    }
    let created = taskctl(&server, &args).await;
    created.expect_code(0);
    let id = task_from_json(&created.stdout).id;

    let mut sorted = keys;
    sorted.sort_unstable();
    for format in ["json", "yaml"] {
        let first = taskctl(&server, &["get", &id, "-o", format]).await;
        first.expect_code(0);
        for _ in 0..3 {
            let again = taskctl(&server, &["get", &id, "-o", format]).await;
            assert_eq!(again.stdout, first.stdout, "-o {format}");
        }
        // Map entries in key order; the task's fields in declaration order.
        let positions: Vec<usize> = sorted
            .iter()
            .map(|key| {
                first
                    .stdout
                    .find(&format!("v-{key}"))
                    .unwrap_or_else(|| panic!("{key} in {}", first.stdout))
            })
            .collect();
        assert!(positions.is_sorted(), "-o {format}: {}", first.stdout);
        let data_keys: Vec<usize> = ["alpha", "b", "x", "mid", "zeta"]
            .iter()
            .map(|key| {
                let written = if format == "json" {
                    format!("\"{key}\":")
                } else {
                    format!(" {key}:")
                };
                first
                    .stdout
                    .find(&written)
                    .unwrap_or_else(|| panic!("{written} in {}", first.stdout))
            })
            .collect();
        assert!(data_keys.is_sorted(), "-o {format}: {}", first.stdout);
        assert!(
            first.stdout.find("name").expect("name") < first.stdout.find("kind").expect("kind")
        );
    }
}

#[tokio::test]
async fn yaml_quotes_strings_a_yaml_1_1_reader_would_misread() {
    let server = TestServer::start().await;
    let created = taskctl(
        &server,
        &[
            "create",
            "2026-11-25",
            "--kind",
            "echo",
            "--description",
            "1_000",
            "--data",
            r#"{"day": "2026-11-25", "answer": "yes", "at": "12:30"}"#,
            "--label",
            "on=off",
            "-o",
            "json",
        ],
    )
    .await;
    created.expect_code(0);
    let id = task_from_json(&created.stdout).id;
    let mut client = server.client().await;
    let task = wait_for_status(&client, &id, pb::TaskStatus::Completed).await;

    let as_yaml = taskctl(&server, &["get", &id, "-o", "yaml"]).await;
    as_yaml.expect_code(0);
    let yaml = &as_yaml.stdout;
    for line in [
        "name: '2026-11-25'",
        "description: '1_000'",
        "  'on': 'off'",
        "  day: '2026-11-25'",
        "  answer: 'yes'",
        "  at: '12:30'",
    ] {
        assert!(
            yaml.lines().any(|written| written == line),
            "{line} in {yaml}"
        );
    }
    // RFC 3339 times are timestamps to YAML 1.1.
    for key in ["createdAt", "startedAt", "completedAt"] {
        let value = yaml
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("{key} in {yaml}"));
        assert!(
            value.starts_with('\'') && value.ends_with('\''),
            "{key}: {value}"
        );
    }
    assert_eq!(from_yaml::<pb::Task>("taskprocessor.v1.Task", yaml), task);
    assert_eq!(get(&mut client, &id).await, task);
}
