//! Schedules (contract v1.1, "Schedules: tasks created on a calendar"): a
//! schedule creates its template's task at each firing, labelled with its
//! id; `SKIP` does not fire while the previous task runs, `ALLOW` does;
//! pause, resume, get, list and delete; every bad field is named. On every
//! store. Restarts and several replicas are in `schedules_durable.rs`.

use std::{
    collections::HashSet,
    time::{Duration, SystemTime},
};

use serde_json::json;
use task_processor::pb;
use tonic::Code;

use crate::support::{
    Client, TestServer, assert_invalid_argument, eventually, json, request, status_of,
    wait_for_status,
};

pub fn time_of(timestamp: &Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(timestamp.expect("set")).expect("a valid time")
}

/// A `CreateSchedule` request firing `template` on `cron`.
pub fn schedule_request(
    cron: &str,
    overlap: pb::OverlapPolicy,
    template: pb::CreateTaskRequest,
) -> pb::CreateScheduleRequest {
    pb::CreateScheduleRequest {
        cron: cron.into(),
        time_zone: String::new(),
        task: Some(template),
        overlap: overlap.into(),
        paused: false,
    }
}

pub async fn create_schedule(
    client: &mut Client,
    request: pb::CreateScheduleRequest,
) -> pb::Schedule {
    client
        .create_schedule(request)
        .await
        .expect("schedule created")
        .into_inner()
}

pub async fn get_schedule(client: &mut Client, id: &str) -> pb::Schedule {
    client
        .get_schedule(pb::GetScheduleRequest { id: id.into() })
        .await
        .expect("schedule read")
        .into_inner()
}

/// Every task the schedule `id` created, oldest first.
pub async fn tasks_of(client: &mut Client, id: &str) -> Vec<pb::Task> {
    let mut tasks = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_tasks(pb::ListTasksRequest {
                page_size: 1000,
                page_token,
                labels: [("schedule-id".to_owned(), id.to_owned())].into(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return tasks;
        }
        page_token = page.next_page_token;
    }
}

/// Waits until the schedule `id` has created at least `count` tasks.
pub async fn wait_for_tasks(client: &Client, id: &str, count: usize) -> Vec<pb::Task> {
    eventually(&format!("{count} tasks of schedule {id}"), || {
        let mut client = client.clone();
        async move {
            let tasks = tasks_of(&mut client, id).await;
            (tasks.len() >= count).then_some(tasks)
        }
    })
    .await
}

async fn a_schedule_creates_its_task_at_each_firing_labelled_with_its_id() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let template = pb::CreateTaskRequest {
        labels: [("team".to_owned(), "a".to_owned())].into(),
        priority: 5,
        ..request(
            "  nightly report  ",
            "echo",
            Some(json!({"report": [1, 2]})),
        )
    };
    let schedule = create_schedule(
        &mut client,
        schedule_request("@every 1s", pb::OverlapPolicy::Allow, template),
    )
    .await;
    assert!(uuid::Uuid::parse_str(&schedule.id).is_ok(), "{schedule:?}");
    assert_eq!(schedule.cron, "@every 1s");
    assert_eq!(schedule.time_zone, "UTC", "an empty zone is UTC");
    assert_eq!(schedule.overlap(), pb::OverlapPolicy::Allow);
    assert!(!schedule.paused);
    assert_eq!(schedule.revision, 1);
    assert_eq!(schedule.last_task_id, "");
    assert_eq!(schedule.last_fire_at, None);
    let created_at = time_of(&schedule.created_at);
    assert_eq!(
        time_of(&schedule.next_fire_at),
        created_at + Duration::from_secs(1),
        "@every counts from the creation"
    );
    let echoed = schedule.task.as_ref().expect("the template");
    assert_eq!(echoed.name, "nightly report", "trimmed, as a task's name");
    assert_eq!(echoed.kind, "echo");
    assert_eq!(json(&echoed.data), Some(json!({"report": [1, 2]})));
    assert_eq!(echoed.timeout_seconds, 60, "the server's default filled in");
    assert_eq!(echoed.priority, 5);
    assert_eq!(
        echoed
            .retry_policy
            .as_ref()
            .map(|policy| policy.max_attempts),
        Some(1)
    );

    let tasks = wait_for_tasks(&client, &schedule.id, 2).await;
    for task in &tasks {
        assert_eq!(task.name, "nightly report");
        assert_eq!(task.kind, "echo");
        assert_eq!(task.priority, 5);
        assert_eq!(json(&task.data), Some(json!({"report": [1, 2]})));
        assert_eq!(task.labels["team"], "a");
        assert_eq!(task.labels["schedule-id"], schedule.id);
        assert!(time_of(&task.created_at) >= created_at + Duration::from_secs(1));
    }
    let first = wait_for_status(&client, &tasks[0].id, pb::TaskStatus::Completed).await;
    assert_eq!(json(&first.result), Some(json!({"report": [1, 2]})));

    let read = get_schedule(&mut client, &schedule.id).await;
    let ids: HashSet<String> = tasks_of(&mut client, &schedule.id)
        .await
        .into_iter()
        .map(|task| task.id)
        .collect();
    assert!(
        ids.contains(&read.last_task_id),
        "last_task_id {} is one of its tasks",
        read.last_task_id
    );
    let last_fire_at = time_of(&read.last_fire_at);
    let since_creation = last_fire_at
        .duration_since(created_at)
        .expect("fired after its creation");
    assert_eq!(
        since_creation.subsec_nanos(),
        0,
        "last_fire_at is a firing time (creation + whole seconds), not when it ran"
    );
    assert_eq!(
        time_of(&read.next_fire_at),
        last_fire_at + Duration::from_secs(1)
    );
    assert!(read.revision >= 3, "each firing is a change: {read:?}");
}

async fn skip_does_not_fire_while_the_previous_task_runs_and_allow_does() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let gated = || request("gated", "gate", Some(json!({"gated": true})));
    let skip = create_schedule(
        &mut client,
        schedule_request("@every 1s", pb::OverlapPolicy::Unspecified, gated()),
    )
    .await;
    assert_eq!(
        skip.overlap(),
        pb::OverlapPolicy::Skip,
        "SKIP is the default"
    );
    let [first] =
        <[pb::Task; 1]>::try_from(wait_for_tasks(&client, &skip.id, 1).await).expect("one task");
    wait_for_status(&client, &first.id, pb::TaskStatus::Running).await;
    // Two more firings come due while the first task runs; each is skipped
    // (and recorded: the revision goes up).
    let fired_once = get_schedule(&mut client, &skip.id).await.revision;
    eventually("two skipped firings", || {
        let mut client = client.clone();
        let id = skip.id.clone();
        async move { (get_schedule(&mut client, &id).await.revision >= fired_once + 2).then_some(()) }
    })
    .await;
    assert_eq!(
        tasks_of(&mut client, &skip.id).await.len(),
        1,
        "no firing while the previous task runs"
    );
    let skipped = get_schedule(&mut client, &skip.id).await;
    assert_eq!(skipped.last_task_id, first.id);
    server.gate.release(1);
    wait_for_status(&client, &first.id, pb::TaskStatus::Completed).await;
    let tasks = wait_for_tasks(&client, &skip.id, 2).await;
    assert_eq!(tasks[0].id, first.id);
    // Its later tasks stay held (no more permits), so nothing it does from
    // here can make an ALLOW task below complete.
    client
        .delete_schedule(pb::DeleteScheduleRequest { id: skip.id })
        .await
        .expect("delete");

    let allow = create_schedule(
        &mut client,
        schedule_request("@every 1s", pb::OverlapPolicy::Allow, gated()),
    )
    .await;
    let overlapping = wait_for_tasks(&client, &allow.id, 2).await;
    assert!(
        overlapping
            .iter()
            .all(|task| status_of(task) != pb::TaskStatus::Completed),
        "ALLOW fired again while the first task was still held: {overlapping:?}"
    );
    server.gate.release(100);
}

async fn pause_stops_firing_and_resume_goes_on_from_now() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let paused = create_schedule(
        &mut client,
        pb::CreateScheduleRequest {
            paused: true,
            ..schedule_request(
                "@every 1s",
                pb::OverlapPolicy::Allow,
                request("tick", "echo", None),
            )
        },
    )
    .await;
    assert!(paused.paused);
    assert_eq!(paused.next_fire_at, None, "a paused schedule is not due");
    let again = client
        .pause_schedule(pb::PauseScheduleRequest {
            id: paused.id.clone(),
        })
        .await
        .expect("pause a paused schedule")
        .into_inner();
    assert_eq!(
        again.revision, paused.revision,
        "pausing it again changes nothing"
    );

    let before_resume = SystemTime::now();
    let resumed = client
        .resume_schedule(pb::ResumeScheduleRequest {
            id: paused.id.clone(),
        })
        .await
        .expect("resume")
        .into_inner();
    assert!(!resumed.paused);
    assert_eq!(resumed.revision, paused.revision + 1);
    let next = time_of(&resumed.next_fire_at);
    assert!(
        next > before_resume && next <= SystemTime::now() + Duration::from_secs(1),
        "the first firing after now: {next:?}"
    );
    wait_for_tasks(&client, &paused.id, 1).await;

    let paused_again = client
        .pause_schedule(pb::PauseScheduleRequest {
            id: paused.id.clone(),
        })
        .await
        .expect("pause")
        .into_inner();
    assert!(paused_again.paused);
    assert_eq!(paused_again.next_fire_at, None);
    let count = tasks_of(&mut client, &paused.id).await.len();
    // Two firing times pass while paused.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        tasks_of(&mut client, &paused.id).await.len(),
        count,
        "no firing while paused"
    );
    let still = get_schedule(&mut client, &paused.id).await;
    assert_eq!(still.revision, paused_again.revision, "nothing changed");
}

async fn schedules_are_listed_in_pages_and_deleted_without_their_tasks() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let schedule = create_schedule(
            &mut client,
            pb::CreateScheduleRequest {
                time_zone: "Europe/Berlin".into(),
                ..schedule_request(
                    "30 9 * * MON-FRI",
                    pb::OverlapPolicy::Skip,
                    request(name, "echo", None),
                )
            },
        )
        .await;
        assert_eq!(schedule.time_zone, "Europe/Berlin");
        assert_eq!(schedule.cron, "30 9 * * MON-FRI");
        ids.push(schedule.id);
    }
    let first = client
        .list_schedules(pb::ListSchedulesRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    let listed: Vec<&str> = first.schedules.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(listed, [ids[0].as_str(), ids[1].as_str()], "oldest first");
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_schedules(pb::ListSchedulesRequest {
            page_size: 2,
            page_token: first.next_page_token,
        })
        .await
        .expect("list")
        .into_inner();
    let listed: Vec<&str> = second.schedules.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(listed, [ids[2].as_str()]);
    assert_eq!(second.next_page_token, "", "the last page");

    // A schedule that fired: deleting it keeps its task.
    let firing = create_schedule(
        &mut client,
        schedule_request(
            "@every 1s",
            pb::OverlapPolicy::Allow,
            request("kept", "echo", None),
        ),
    )
    .await;
    let [kept, ..] = &wait_for_tasks(&client, &firing.id, 1).await[..] else {
        unreachable!("at least one task")
    };
    client
        .delete_schedule(pb::DeleteScheduleRequest {
            id: firing.id.clone(),
        })
        .await
        .expect("delete");
    let gone = client
        .get_schedule(pb::GetScheduleRequest {
            id: firing.id.clone(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    let again = client
        .delete_schedule(pb::DeleteScheduleRequest {
            id: firing.id.clone(),
        })
        .await
        .expect_err("deleted already");
    assert_eq!(again.code(), Code::NotFound);
    let count = tasks_of(&mut client, &firing.id).await.len();
    assert!(count >= 1);
    crate::support::get(&mut client, &kept.id).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        tasks_of(&mut client, &firing.id).await.len(),
        count,
        "a deleted schedule fires no more"
    );
    let pause_gone = client
        .pause_schedule(pb::PauseScheduleRequest { id: firing.id })
        .await
        .expect_err("deleted");
    assert_eq!(pause_gone.code(), Code::NotFound, "{pause_gone:?}");
}

async fn bad_schedule_requests_are_refused_naming_their_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let echo = || request("t", "echo", None);
    let cases: Vec<(&str, pb::CreateScheduleRequest)> = vec![
        (
            "cron",
            schedule_request("", pb::OverlapPolicy::Skip, echo()),
        ),
        (
            "cron",
            schedule_request("61 * * * *", pb::OverlapPolicy::Skip, echo()),
        ),
        (
            "cron",
            schedule_request("* * * *", pb::OverlapPolicy::Skip, echo()),
        ),
        (
            "cron",
            schedule_request("@every 0s", pb::OverlapPolicy::Skip, echo()),
        ),
        (
            "cron",
            schedule_request("@hourly", pb::OverlapPolicy::Skip, echo()),
        ),
        (
            "time_zone",
            pb::CreateScheduleRequest {
                time_zone: "Mars/Olympus".into(),
                ..schedule_request("0 * * * *", pb::OverlapPolicy::Skip, echo())
            },
        ),
        (
            "task",
            pb::CreateScheduleRequest {
                task: None,
                ..schedule_request("0 * * * *", pb::OverlapPolicy::Skip, echo())
            },
        ),
        (
            "task.name",
            schedule_request(
                "0 * * * *",
                pb::OverlapPolicy::Skip,
                request(" ", "echo", None),
            ),
        ),
        (
            "task.kind",
            schedule_request(
                "0 * * * *",
                pb::OverlapPolicy::Skip,
                request("t", "nope", None),
            ),
        ),
        (
            "task.request_id",
            schedule_request(
                "0 * * * *",
                pb::OverlapPolicy::Skip,
                pb::CreateTaskRequest {
                    request_id: "once".into(),
                    ..echo()
                },
            ),
        ),
        (
            "task.run_after",
            schedule_request(
                "0 * * * *",
                pb::OverlapPolicy::Skip,
                pb::CreateTaskRequest {
                    run_after: Some(SystemTime::now().into()),
                    ..echo()
                },
            ),
        ),
        (
            "task.labels",
            schedule_request(
                "0 * * * *",
                pb::OverlapPolicy::Skip,
                pb::CreateTaskRequest {
                    labels: [("schedule-id".to_owned(), "mine".to_owned())].into(),
                    ..echo()
                },
            ),
        ),
        (
            "overlap",
            pb::CreateScheduleRequest {
                overlap: 7,
                ..schedule_request("0 * * * *", pb::OverlapPolicy::Skip, echo())
            },
        ),
    ];
    for (field, request) in cases {
        let refused = client
            .create_schedule(request.clone())
            .await
            .expect_err(&format!("{request:?} is refused"));
        assert_invalid_argument(&refused, field);
    }
    let bad_id = client
        .get_schedule(pb::GetScheduleRequest { id: "x".into() })
        .await
        .expect_err("not a uuid");
    assert_invalid_argument(&bad_id, "id");
    let negative = client
        .list_schedules(pb::ListSchedulesRequest {
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .expect_err("negative page size");
    assert_invalid_argument(&negative, "page_size");
    let garbage = client
        .list_schedules(pb::ListSchedulesRequest {
            page_size: 0,
            page_token: "garbage".into(),
        })
        .await
        .expect_err("bad token");
    assert_invalid_argument(&garbage, "page_token");
    let missing = client
        .get_schedule(pb::GetScheduleRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);
    let listed = client
        .list_schedules(pb::ListSchedulesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.schedules.is_empty(), "nothing refused was stored");
}

contract_tests!(
    a_schedule_creates_its_task_at_each_firing_labelled_with_its_id,
    skip_does_not_fire_while_the_previous_task_runs_and_allow_does,
    pause_stops_firing_and_resume_goes_on_from_now,
    schedules_are_listed_in_pages_and_deleted_without_their_tasks,
    bad_schedule_requests_are_refused_naming_their_field,
);
