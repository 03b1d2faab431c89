//! `taskctl schedule …` against the real server: a schedule created from
//! the command line fires tasks labelled with its id; `get`, `list`
//! (paged like `list`), `pause`, `resume` and `delete`; JSON and YAML read
//! back to the schedule the server holds; and refusals: a bad cron
//! expression or time zone names its flag and exits 6, an unknown id
//! exits 5, and what a template may not have is refused, saying why (2).
//!
//! Firings are awaited by polling with a deadline; that a paused schedule
//! does not fire is shown against a second schedule of the same interval
//! that does.

use super::*;

const SCHEDULE: &str = "taskprocessor.v1.Schedule";
const LIST_SCHEDULES_RESPONSE: &str = "taskprocessor.v1.ListSchedulesResponse";

/// An id no schedule has.
const UNKNOWN_ID: &str = "0190b4a4-5d3e-7f00-8000-000000000000";

/// `taskctl schedule create <args…> -o json`: the schedule it printed.
async fn create_schedule(server: &TestServer, args: &[&str]) -> pb::Schedule {
    let mut all = vec!["schedule", "create"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let created = taskctl(server, &all).await;
    created.expect_code(0);
    from_json(SCHEDULE, &created.stdout)
}

/// `taskctl schedule <subcommand> <id> -o json`: the schedule it printed.
async fn schedule_command(server: &TestServer, subcommand: &str, id: &str) -> pb::Schedule {
    let shown = taskctl(server, &["schedule", subcommand, id, "-o", "json"]).await;
    shown.expect_code(0);
    from_json(SCHEDULE, &shown.stdout)
}

/// The tasks `taskctl list --label schedule-id=<id>` shows: those the
/// schedule created.
async fn tasks_of(server: &TestServer, schedule_id: &str) -> Vec<pb::Task> {
    let label = format!("schedule-id={schedule_id}");
    let listed = taskctl(server, &["list", "--all", "--label", &label, "-o", "json"]).await;
    listed.expect_code(0);
    from_json::<pb::ListTasksResponse>("taskprocessor.v1.ListTasksResponse", &listed.stdout).tasks
}

/// Polls until the schedule has created more than `count` tasks; returns
/// them.
async fn until_more_tasks_than(
    server: &TestServer,
    schedule_id: &str,
    count: usize,
) -> Vec<pb::Task> {
    eventually(
        &format!("schedule {schedule_id} to create more than {count} tasks"),
        || async move {
            let tasks = tasks_of(server, schedule_id).await;
            (tasks.len() > count).then_some(tasks)
        },
    )
    .await
}

async fn schedules_listed(server: &TestServer, args: &[&str]) -> pb::ListSchedulesResponse {
    let mut all = vec!["schedule", "list"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let listed = taskctl(server, &all).await;
    listed.expect_code(0);
    from_json(LIST_SCHEDULES_RESPONSE, &listed.stdout)
}

fn ids(schedules: &[pb::Schedule]) -> Vec<&str> {
    schedules
        .iter()
        .map(|schedule| schedule.id.as_str())
        .collect()
}

#[tokio::test]
async fn a_schedule_fires_tasks_that_carry_its_id() {
    let server = TestServer::start().await;
    let schedule = create_schedule(
        &server,
        &[
            "heartbeat",
            "--cron",
            "@every 1s",
            "--kind",
            "echo",
            "--data",
            r#"{"ping": true}"#,
            "--label",
            "team=ops",
        ],
    )
    .await;
    assert_eq!(
        (schedule.cron.as_str(), schedule.time_zone.as_str()),
        ("@every 1s", "UTC")
    );
    assert_eq!(schedule.overlap, i32::from(pb::OverlapPolicy::Skip));
    assert!(!schedule.paused);
    assert!(schedule.next_fire_at.is_some());
    assert_eq!(schedule.last_task_id, "");

    let tasks = until_more_tasks_than(&server, &schedule.id, 0).await;
    let task = &tasks[0];
    assert_eq!(
        (task.name.as_str(), task.kind.as_str()),
        ("heartbeat", "echo")
    );
    assert_eq!(json_of(&task.data), Some(json!({"ping": true})));
    assert_eq!(
        task.labels,
        [
            ("team".to_owned(), "ops".to_owned()),
            ("schedule-id".to_owned(), schedule.id.clone())
        ]
        .into()
    );

    // The view shows the firing, and the last task is one it created.
    let shown = taskctl(&server, &["schedule", "get", &schedule.id]).await;
    shown.expect_code(0);
    let view = &shown.stdout;
    assert_eq!(detail(view, "ID"), schedule.id);
    assert_eq!(detail(view, "CRON"), "@every 1s");
    assert_eq!(detail(view, "TIME ZONE"), "UTC");
    assert_eq!(detail(view, "OVERLAP"), "SKIP");
    assert_eq!(detail(view, "PAUSED"), "no");
    assert_eq!(detail(view, "TASK NAME"), "heartbeat");
    assert_eq!(detail(view, "TASK KIND"), "echo");
    assert_eq!(detail(view, "TASK DATA"), r#"{"ping":true}"#);
    assert_eq!(detail(view, "TASK LABELS"), "team=ops");
    for key in ["NEXT FIRE", "LAST FIRE", "CREATED"] {
        assert!(detail(view, key).ends_with(')'), "{key} in {view}");
    }
    let last_task = detail(view, "LAST TASK").to_owned();
    let tasks = tasks_of(&server, &schedule.id).await;
    assert!(
        tasks.iter().any(|task| task.id == last_task),
        "{last_task} among {tasks:?}"
    );
}

#[tokio::test]
async fn pause_stops_the_firings_and_resume_starts_them_again() {
    let server = TestServer::start().await;
    let schedule =
        create_schedule(&server, &["tick", "--cron", "@every 1s", "--kind", "echo"]).await;
    until_more_tasks_than(&server, &schedule.id, 0).await;

    let paused = schedule_command(&server, "pause", &schedule.id).await;
    assert!(paused.paused);
    assert_eq!(
        paused.next_fire_at, None,
        "a paused schedule has no next firing"
    );
    let fired_before_pause = tasks_of(&server, &schedule.id).await.len();
    // Pausing again changes nothing.
    let again = schedule_command(&server, "pause", &schedule.id).await;
    assert_eq!(again, paused);
    let view = taskctl(&server, &["schedule", "get", &schedule.id]).await;
    view.expect_code(0);
    assert_eq!(detail(&view.stdout, "PAUSED"), "yes");
    assert_eq!(detail(&view.stdout, "NEXT FIRE"), "-");

    // A witness of the same interval, created after the pause, fires
    // twice: more than a second passed, in which the paused schedule
    // would have fired.
    let witness = create_schedule(
        &server,
        &["witness", "--cron", "@every 1s", "--kind", "echo"],
    )
    .await;
    until_more_tasks_than(&server, &witness.id, 1).await;
    assert_eq!(
        tasks_of(&server, &schedule.id).await.len(),
        fired_before_pause,
        "a paused schedule fired"
    );
    assert_eq!(schedule_command(&server, "get", &schedule.id).await, paused);

    let resumed = schedule_command(&server, "resume", &schedule.id).await;
    assert!(!resumed.paused);
    let next_fire_at = resumed
        .next_fire_at
        .expect("a resumed schedule fires again");
    let paused_at = paused.last_fire_at.expect("it fired before the pause");
    assert!(next_fire_at.seconds > paused_at.seconds, "{resumed:?}");
    until_more_tasks_than(&server, &schedule.id, fired_before_pause).await;
}

#[tokio::test]
async fn delete_stops_a_schedule_and_keeps_its_tasks() {
    let server = TestServer::start().await;
    let schedule =
        create_schedule(&server, &["tick", "--cron", "@every 1s", "--kind", "echo"]).await;
    until_more_tasks_than(&server, &schedule.id, 0).await;

    let deleted = taskctl(&server, &["schedule", "delete", &schedule.id]).await;
    deleted.expect_code(0);
    assert_eq!(
        deleted.stdout,
        format!("deleted schedule {}\n", schedule.id)
    );
    for subcommand in ["get", "pause", "resume", "delete"] {
        let gone = taskctl(&server, &["schedule", subcommand, &schedule.id]).await;
        gone.expect_code(5);
        assert_eq!(
            gone.stderr.trim(),
            format!("taskctl: schedule {} not found", schedule.id),
            "{subcommand}"
        );
    }
    assert!(
        !tasks_of(&server, &schedule.id).await.is_empty(),
        "the tasks it created stay"
    );
    assert!(schedules_listed(&server, &[]).await.schedules.is_empty());

    // -o json prints DeleteSchedule's empty answer, as grpcurl does.
    let other = create_schedule(&server, &["later", "--cron", "0 2 * * *", "--paused"]).await;
    let deleted = taskctl(&server, &["schedule", "delete", &other.id, "-o", "json"]).await;
    deleted.expect_code(0);
    assert_eq!(deleted.stdout, "{}\n");
}

#[tokio::test]
async fn list_shows_schedules_oldest_first_and_pages_like_list() {
    let server = TestServer::start().await;
    let mut created = Vec::new();
    for name in ["first", "second", "third"] {
        created.push(
            create_schedule(
                &server,
                &[name, "--cron", "0 2 * * *", "--kind", "echo", "--paused"],
            )
            .await,
        );
    }
    let created_ids = ids(&created);

    let table = taskctl(&server, &["schedule", "list"]).await;
    table.expect_code(0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", table.stdout);
    for column in [
        "ID",
        "NAME",
        "KIND",
        "CRON",
        "TIME ZONE",
        "PAUSED",
        "NEXT FIRE",
    ] {
        assert!(lines[0].contains(column), "{column} in {}", table.stdout);
    }
    for (line, schedule) in lines[1..].iter().zip(&created) {
        assert!(line.starts_with(&format!("{}  ", schedule.id)), "{line}");
        let name = &schedule.task.as_ref().expect("a template").name;
        assert!(line.contains(&format!("  {name}  ")), "{line}");
        assert!(line.contains("  0 2 * * *  UTC  "), "{line}");
    }

    // One page: the token of the next on stderr (table) or in the JSON.
    let page = taskctl(&server, &["schedule", "list", "--limit", "2"]).await;
    page.expect_code(0);
    assert_eq!(page.stdout.lines().count(), 3, "{}", page.stdout);
    let first = schedules_listed(&server, &["--limit", "2"]).await;
    assert_eq!(ids(&first.schedules), created_ids[..2]);
    assert_eq!(
        page.stderr.trim(),
        format!(
            "more schedules: add --page-token {} for the next page, or --all",
            first.next_page_token
        )
    );
    let rest = schedules_listed(
        &server,
        &["--limit", "2", "--page-token", &first.next_page_token],
    )
    .await;
    assert_eq!(ids(&rest.schedules), created_ids[2..]);
    assert_eq!(rest.next_page_token, "");

    let all = schedules_listed(&server, &["--all", "--limit", "1"]).await;
    assert_eq!(ids(&all.schedules), created_ids);
    assert_eq!(all.next_page_token, "");
    let yaml = taskctl(&server, &["schedule", "list", "--all", "-o", "yaml"]).await;
    yaml.expect_code(0);
    let from_yaml: pb::ListSchedulesResponse = from_yaml(LIST_SCHEDULES_RESPONSE, &yaml.stdout);
    assert_eq!(from_yaml, all);
}

#[tokio::test]
async fn json_and_yaml_read_back_to_the_schedule_the_server_holds() {
    let server = TestServer::start().await;
    let printed = create_schedule(
        &server,
        &[
            "nightly report",
            "--cron",
            "30 2 * * MON-FRI",
            "--tz",
            "Europe/Berlin",
            "--overlap",
            "allow",
            "--paused",
            "--kind",
            "echo",
            "--description",
            "for the office",
            "--data",
            r#"{"day": "2026-11-25"}"#,
            "--label",
            "team=finance",
            "--timeout",
            "30s",
            "--max-attempts",
            "3",
            "--priority",
            "-5",
            "--queue-timeout",
            "2m",
        ],
    )
    .await;
    let mut client = server.client().await;
    let held = client
        .get_schedule(pb::GetScheduleRequest {
            id: printed.id.clone(),
        })
        .await
        .expect("the schedule is held")
        .into_inner();
    assert_eq!(printed, held, "the JSON reads back to the schedule");
    let template = held.task.clone().expect("a template");
    assert_eq!(template.name, "nightly report");
    assert_eq!(template.description, "for the office");
    assert_eq!(json_of(&template.data), Some(json!({"day": "2026-11-25"})));
    assert_eq!(template.timeout_seconds, 30);
    assert_eq!(
        template.retry_policy.map(|policy| policy.max_attempts),
        Some(3)
    );
    assert_eq!(
        (template.priority, template.queue_timeout_seconds),
        (-5, 120)
    );

    let yaml = taskctl(&server, &["schedule", "get", &held.id, "-o", "yaml"]).await;
    yaml.expect_code(0);
    assert_eq!(from_yaml::<pb::Schedule>(SCHEDULE, &yaml.stdout), held);
    assert!(
        yaml.stdout.contains("\n    day: '2026-11-25'\n"),
        "a date-like string is quoted: {}",
        yaml.stdout
    );

    let json = taskctl(&server, &["schedule", "get", &held.id, "-o", "json"]).await;
    json.expect_code(0);
    let value: JsonValue = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(value["timeZone"], json!("Europe/Berlin"));
    assert_eq!(value["overlap"], json!("OVERLAP_POLICY_ALLOW"));
    assert_eq!(value["paused"], json!(true));
    assert_eq!(value["task"]["queueTimeoutSeconds"], json!(120));
    assert_eq!(value["task"]["retryPolicy"]["maxAttempts"], json!(3));
    assert!(value.get("nextFireAt").is_none(), "{}", json.stdout);

    let table = taskctl(&server, &["schedule", "get", &held.id]).await;
    table.expect_code(0);
    let view = &table.stdout;
    assert_eq!(detail(view, "TIME ZONE"), "Europe/Berlin");
    assert_eq!(detail(view, "OVERLAP"), "ALLOW");
    assert_eq!(detail(view, "TASK DESCRIPTION"), "for the office");
    assert_eq!(detail(view, "TASK TIMEOUT"), "30s");
    assert_eq!(detail(view, "TASK PRIORITY"), "-5");
    assert_eq!(detail(view, "TASK QUEUE TIMEOUT"), "120s");
    assert!(
        detail(view, "TASK RETRY POLICY").starts_with("3 attempts; "),
        "{view}"
    );
    assert_eq!(detail(view, "LAST TASK"), "-");
}

#[tokio::test]
async fn refusals_name_the_flag_and_exit_with_their_code() {
    let server = TestServer::start().await;
    for (flags, prefix) in [
        (
            &["--cron", "61 * * * *"][..],
            "taskctl: invalid argument: field cron (--cron): ",
        ),
        (
            &["--cron", "every minute"],
            "taskctl: invalid argument: field cron (--cron): ",
        ),
        (
            &["--cron", "0 2 * * *", "--tz", "Mars/Olympus_Mons"],
            "taskctl: invalid argument: field time_zone (--time-zone): ",
        ),
        (
            &["--cron", "0 2 * * *", "--time-zone", "europe/berlin"],
            "taskctl: invalid argument: field time_zone (--time-zone): ",
        ),
        (
            &["--cron", "0 2 * * *", "--kind", "resize"],
            "taskctl: invalid argument: field task.kind (--kind): ",
        ),
    ] {
        let mut args = vec!["schedule", "create", "x"];
        args.extend_from_slice(flags);
        let refused = taskctl(&server, &args).await;
        refused.expect_code(6);
        assert!(
            refused.stderr.starts_with(prefix),
            "{flags:?}: {}",
            refused.stderr
        );
        assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    }

    // What a template may not have is refused before anything is sent,
    // as a usage error that says why.
    for flags in [
        &["--request-id", "k"][..],
        &["--run-after", "2026-12-03T18:00:00Z"],
        &["--in", "10m"],
        &["--wait"],
    ] {
        let mut args = vec!["schedule", "create", "x", "--cron", "0 2 * * *"];
        args.extend_from_slice(flags);
        let usage = taskctl(&server, &args).await;
        usage.expect_code(2);
        let expected = format!(
            "taskctl: {} cannot be used with schedule create: ",
            flags[0]
        );
        assert!(usage.stderr.starts_with(&expected), "{}", usage.stderr);
        assert_eq!(usage.stderr.lines().count(), 1, "{}", usage.stderr);
    }
    let no_cron = taskctl(&server, &["schedule", "create", "x"]).await;
    no_cron.expect_code(2);
    assert!(no_cron.stderr.contains("--cron"), "{}", no_cron.stderr);
    assert!(schedules_listed(&server, &[]).await.schedules.is_empty());

    for subcommand in ["get", "pause", "resume", "delete"] {
        let missing = taskctl(&server, &["schedule", subcommand, UNKNOWN_ID]).await;
        missing.expect_code(5);
        assert_eq!(
            missing.stderr.trim(),
            format!("taskctl: schedule {UNKNOWN_ID} not found")
        );
    }
    let not_uuid = taskctl(&server, &["schedule", "get", "not-a-uuid"]).await;
    not_uuid.expect_code(6);
    assert_eq!(
        not_uuid.stderr.trim(),
        "taskctl: invalid argument: field id (ID): \"not-a-uuid\" is not a UUID"
    );

    let address = closed_port_address().await;
    let no_server = run(command(&address, &["schedule", "list"])).await;
    no_server.expect_code(7);
    assert!(
        no_server.stderr.starts_with("taskctl: no server at "),
        "{}",
        no_server.stderr
    );
}
