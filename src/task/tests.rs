//! The state machine's table, and the task's own rules.

use super::*;

fn pending_task() -> Task {
    let new_task = NewTask {
        tenant: Default::default(),
        name: "report".into(),
        description: String::new(),
        kind: "echo".into(),
        data: Some(Arc::new(serde_json::json!({"a": 1}))),
        timeout_seconds: 60,
        labels: BTreeMap::new(),
        request_id: None,
        scheduling: Scheduling {
            retry_policy: RetryPolicy {
                max_attempts: 3,
                ..RetryPolicy::default()
            },
            ..Scheduling::default()
        },
        trace_context: Default::default(),
    };
    Task::new(TaskId::generate(), new_task, SystemTime::now())
}

fn task_in(status: TaskStatus) -> Task {
    let mut task = pending_task();
    let now = SystemTime::now();
    let event = match status {
        TaskStatus::Pending => return task,
        TaskStatus::Running => None,
        TaskStatus::Completed => Some(TaskEvent::Complete(Arc::new(JsonValue::Null))),
        TaskStatus::Failed => Some(TaskEvent::Fail(Failure::permanent("boom"))),
        TaskStatus::Cancelled => Some(TaskEvent::Cancel("cancelled".into())),
        TaskStatus::Retrying => Some(TaskEvent::Fail(Failure::retryable("flaky"))),
    };
    let start = TaskEvent::Start { node: "n1".into() };
    task.apply(start, now).expect("pending task starts");
    if let Some(event) = event {
        task.apply(event, now).expect("running task finishes");
    }
    assert_eq!(task.status, status);
    task
}

fn every_event() -> Vec<TaskEvent> {
    vec![
        TaskEvent::Start { node: "n2".into() },
        TaskEvent::Restart { node: "n3".into() },
        TaskEvent::Assigned {
            worker: "w1".into(),
        },
        TaskEvent::Progress(Progress {
            percent: 40,
            message: "working".into(),
        }),
        TaskEvent::Complete(Arc::new(JsonValue::from(7))),
        TaskEvent::Fail(Failure::retryable("failed")),
        TaskEvent::QueueTimeout,
        TaskEvent::Cancel("cancelled".into()),
    ]
}

/// The full table of (status, event) pairs: which are legal and where
/// they lead. Anything not listed must be refused and change nothing.
#[test]
fn every_transition_is_legal_or_refused_as_the_state_machine_says() {
    use TaskStatus::*;
    let legal: &[(TaskStatus, &str, TaskStatus)] = &[
        (Pending, "start", Running),
        (Running, "restart", Running),
        (Running, "assigned", Running),
        (Pending, "cancel", Cancelled),
        (Running, "progress", Running),
        (Running, "complete", Completed),
        // The policy of `pending_task` allows three runs: one more here.
        (Running, "fail", Retrying),
        (Running, "cancel", Cancelled),
        (Pending, "queue timeout", Failed),
        (Retrying, "start", Running),
        (Retrying, "cancel", Cancelled),
        (Retrying, "queue timeout", Failed),
    ];
    let event_name = |event: &TaskEvent| match event {
        TaskEvent::Start { .. } => "start",
        TaskEvent::Restart { .. } => "restart",
        TaskEvent::Assigned { .. } => "assigned",
        TaskEvent::Progress(_) => "progress",
        TaskEvent::Complete(_) => "complete",
        TaskEvent::Fail(_) => "fail",
        TaskEvent::QueueTimeout => "queue timeout",
        TaskEvent::Cancel(_) => "cancel",
    };
    for from in TaskStatus::ALL {
        for event in every_event() {
            let name = event_name(&event);
            let mut task = task_in(from);
            let before = task.clone();
            let outcome = task.apply(event, SystemTime::now());
            let expected = legal
                .iter()
                .find(|(status, event, _)| *status == from && *event == name);
            match expected {
                Some((_, _, to)) => {
                    assert_eq!(
                        outcome,
                        Ok(Applied::Changed {
                            status_changed: from != *to
                        }),
                        "{from} + {name}"
                    );
                    assert_eq!(task.status, *to, "{from} + {name}");
                    assert_eq!(task.revision, before.revision + 1, "{from} + {name}");
                }
                None if from == Cancelled && name == "cancel" => {
                    assert_eq!(outcome, Ok(Applied::Unchanged));
                    assert_eq!(task, before, "cancelling again changes nothing");
                }
                None => {
                    assert!(outcome.is_err(), "{from} + {name} must be refused");
                    assert_eq!(task, before, "a refused event changes nothing");
                }
            }
        }
    }
}

#[test]
fn start_counts_attempts_and_stamps_node_and_time() {
    let mut task = pending_task();
    assert_eq!((task.attempt, task.revision), (0, 1));
    task.apply(
        TaskEvent::Start {
            node: "pod-a".into(),
        },
        SystemTime::now(),
    )
    .expect("start");
    assert_eq!(task.attempt, 1);
    assert_eq!(task.node, "pod-a");
    assert!(task.started_at.is_some());
    assert!(task.completed_at.is_none());
}

#[test]
fn restart_is_a_new_attempt_on_the_new_node_with_fresh_progress() {
    let mut task = task_in(TaskStatus::Running);
    task.apply(
        TaskEvent::Progress(Progress {
            percent: 50,
            message: "half".into(),
        }),
        SystemTime::now(),
    )
    .expect("progress");
    let outcome = task.apply(
        TaskEvent::Restart {
            node: "pod-b".into(),
        },
        SystemTime::now(),
    );
    assert_eq!(
        outcome,
        Ok(Applied::Changed {
            status_changed: false
        })
    );
    assert_eq!((task.attempt, task.node.as_str()), (2, "pod-b"));
    assert_eq!(task.progress, None);
}

#[test]
fn nul_in_processor_texts_is_replaced_so_every_store_can_hold_it() {
    let mut task = task_in(TaskStatus::Running);
    task.apply(
        TaskEvent::Fail(Failure::permanent("bad\0byte")),
        SystemTime::now(),
    )
    .expect("fail");
    assert_eq!(task.error, "bad\u{FFFD}byte");
}

#[test]
fn terminal_events_stamp_completion_and_keep_their_payload() {
    let completed = task_in(TaskStatus::Completed);
    assert!(completed.completed_at.is_some());
    assert_eq!(completed.result.as_deref(), Some(&JsonValue::Null));
    let failed = task_in(TaskStatus::Failed);
    assert_eq!(failed.error, "boom");
    assert!(failed.result.is_none());
    let cancelled = task_in(TaskStatus::Cancelled);
    assert_eq!(cancelled.error, "cancelled");
}

#[test]
fn repeated_identical_progress_is_not_a_change_and_percent_is_clamped() {
    let mut task = task_in(TaskStatus::Running);
    let progress = Progress {
        percent: 250,
        message: "almost".into(),
    };
    let first = task.apply(TaskEvent::Progress(progress.clone()), SystemTime::now());
    assert_eq!(
        first,
        Ok(Applied::Changed {
            status_changed: false
        })
    );
    assert_eq!(task.progress.as_ref().map(|p| p.percent), Some(100));
    let revision = task.revision;
    let second = task.apply(TaskEvent::Progress(progress), SystemTime::now());
    assert_eq!(second, Ok(Applied::Unchanged));
    assert_eq!(task.revision, revision);
}

#[test]
fn task_ids_round_trip_and_reject_non_uuids() {
    let id = TaskId::generate();
    assert_eq!(id.to_string().parse::<TaskId>().expect("parses"), id);
    assert!("not-a-uuid".parse::<TaskId>().is_err());
    assert!("".parse::<TaskId>().is_err());
}

#[test]
fn ids_sort_in_creation_order() {
    let ids: Vec<TaskId> = (0..1000).map(|_| TaskId::generate()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
}

#[test]
fn idempotency_compares_every_parameter() {
    let task = pending_task();
    let mut same = NewTask {
        tenant: Default::default(),
        name: task.name.clone(),
        description: task.description.clone(),
        kind: task.kind.clone(),
        data: task.data.clone(),
        timeout_seconds: task.timeout_seconds,
        labels: task.labels.clone(),
        request_id: task.request_id.clone(),
        scheduling: task.scheduling.clone(),
        trace_context: Default::default(),
    };
    assert!(task.was_created_from(&same));
    let mut other_priority = same.clone();
    other_priority.scheduling.priority = 5;
    assert!(!task.was_created_from(&other_priority));
    same.data = Some(Arc::new(serde_json::json!({"a": 2})));
    assert!(!task.was_created_from(&same));
}

fn failure(jitter: f64) -> TaskEvent {
    TaskEvent::Fail(Failure {
        error: "down".into(),
        permanent: false,
        jitter,
    })
}

#[test]
fn a_failed_run_retries_after_its_backoff_until_the_attempts_are_spent() {
    let mut task = task_in(TaskStatus::Running);
    task.scheduling.retry_policy.initial_backoff = Duration::from_secs(10);
    let now = SystemTime::now();
    task.apply(failure(0.0), now).expect("first failure");
    assert_eq!(task.status, TaskStatus::Retrying);
    assert_eq!((task.failed_runs, task.attempt), (1, 1));
    assert_eq!(task.error, "down");
    assert_eq!(task.run_after(), Some(now + Duration::from_secs(10)));
    assert_eq!(task.completed_at, None);

    task.apply(TaskEvent::Start { node: "n".into() }, now)
        .expect("rerun");
    assert_eq!((task.status, task.attempt), (TaskStatus::Running, 2));
    assert_eq!(task.error, "", "a running task has no error");
    task.apply(failure(1.0), now).expect("second failure");
    assert_eq!(task.status, TaskStatus::Retrying);
    // 10 s × 2, at the low end of the jitter.
    assert_eq!(task.run_after(), Some(now + Duration::from_secs(16)));

    task.apply(TaskEvent::Start { node: "n".into() }, now)
        .expect("third run");
    task.apply(failure(0.0), now).expect("third failure");
    assert_eq!(task.status, TaskStatus::Failed, "three runs were allowed");
    assert_eq!(task.failed_runs, 3);
    assert!(task.completed_at.is_some());
}

#[test]
fn a_permanent_failure_ends_the_task_whatever_attempts_remain() {
    let mut task = task_in(TaskStatus::Running);
    task.apply(
        TaskEvent::Fail(Failure::permanent("bad input")),
        SystemTime::now(),
    )
    .expect("fail");
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error, "bad input");
}

#[test]
fn runs_cut_short_count_in_a_row_and_a_failed_run_resets_them() {
    let mut task = task_in(TaskStatus::Running);
    for _ in 0..3 {
        task.apply(TaskEvent::Restart { node: "n".into() }, SystemTime::now())
            .expect("restart");
    }
    assert_eq!(
        (task.cut_short_runs, task.failed_runs, task.attempt),
        (3, 0, 4)
    );
    task.apply(failure(0.0), SystemTime::now()).expect("fail");
    assert_eq!(task.cut_short_runs, 0);
    assert_eq!(cut_short_too_often(4, 5), None);
    assert!(cut_short_too_often(5, 5).is_some_and(|error| error.contains("5 times in a row")));
}

#[test]
fn the_queue_deadline_counts_from_when_the_task_became_ready() {
    let mut task = pending_task();
    assert_eq!(task.queue_deadline(), None, "no queue timeout");
    task.scheduling.queue_timeout_seconds = 5;
    let created = task.created_at;
    assert_eq!(
        task.queue_deadline(),
        Some(created + Duration::from_secs(5))
    );
    task.scheduling.run_after = Some(created + Duration::from_secs(60));
    assert_eq!(
        task.queue_deadline(),
        Some(created + Duration::from_secs(65))
    );
    task.scheduling.run_after = Some(created - Duration::from_secs(60));
    assert_eq!(
        task.queue_deadline(),
        Some(created + Duration::from_secs(5)),
        "a past run_after means at once"
    );
    task.retry_at = Some(created + Duration::from_secs(100));
    assert_eq!(
        task.queue_deadline(),
        Some(created + Duration::from_secs(105))
    );

    task.apply(TaskEvent::QueueTimeout, SystemTime::now())
        .expect("times out");
    assert_eq!((task.status, task.attempt), (TaskStatus::Failed, 0));
    assert!(
        task.error.contains("never started in time"),
        "{}",
        task.error
    );
}

/// A run handed to a remote worker shows where it runs as
/// `<server node>/<worker>`, and still belongs to its server node, also
/// after it is handed to another worker or restarted elsewhere.
#[test]
fn an_assigned_run_names_its_worker_and_still_belongs_to_its_server_node() {
    let mut task = task_in(TaskStatus::Running);
    assert!(task.runs_on("n1"));
    task.apply(
        TaskEvent::Assigned {
            worker: "resizer-1".into(),
        },
        SystemTime::now(),
    )
    .expect("a running task is assigned");
    assert_eq!(task.node, "n1/resizer-1");
    assert!(task.runs_on("n1"));
    assert!(!task.runs_on("n1/resizer-1"));
    assert!(!task.runs_on("n"), "a prefix of the name is another node");
    task.apply(
        TaskEvent::Assigned {
            worker: "resizer-2".into(),
        },
        SystemTime::now(),
    )
    .expect("assigned again");
    assert_eq!(task.node, "n1/resizer-2");
    task.apply(TaskEvent::Restart { node: "n2".into() }, SystemTime::now())
        .expect("restarts elsewhere");
    assert_eq!(task.node, "n2");
    assert!(task.runs_on("n2") && !task.runs_on("n1"));
}
