//! Claims (FIFO, by kind, after a lease ran out), renewals, hand-over,
//! cancels and retention, against a real database.

use super::*;

#[tokio::test]
async fn a_claim_for_some_kinds_leaves_the_others_waiting() {
    let (_schema, store) = store_or_skip!("a_claim_for_some_kinds_leaves_the_others_waiting");
    let mut unknown = task("new kind");
    unknown.kind = "added-later".to_owned();
    let known = task("known");
    insert(&store, &[unknown.clone(), known.clone()]).await;
    let kinds = ["echo".to_owned(), "sleep".to_owned()];
    let claimed = store
        .claim("old", 10, HOUR, Some(&kinds))
        .await
        .expect("claim");
    assert_eq!(ids(&claimed), [known.id]);
    let later = store.claim("new", 10, HOUR, None).await.expect("claim");
    assert_eq!(ids(&later), [unknown.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_are_fifo_and_concurrent_claims_never_share_a_task() {
    let (_schema, store) =
        store_or_skip!("claims_are_fifo_and_concurrent_claims_never_share_a_task");
    assert!(
        store
            .claim("n1", 0, HOUR, None)
            .await
            .expect("claim")
            .is_empty()
    );
    let tasks: Vec<Task> = (0..5).map(|index| task(&format!("t{index}"))).collect();
    insert(&store, &tasks).await;

    let claimed = store.claim("n1", 3, HOUR, None).await.expect("claim");
    assert_eq!(ids(&claimed), ids(&tasks[..3]));
    for (claimed, original) in claimed.iter().zip(&tasks) {
        assert_eq!(claimed.status, TaskStatus::Running);
        assert_eq!(claimed.attempt, 1);
        assert_eq!(claimed.node, "n1");
        assert_eq!(claimed.revision, 2);
        assert_eq!(claimed.progress, None);
        assert!(
            claimed
                .started_at
                .is_some_and(|started| started >= original.created_at)
        );
        assert_eq!(claimed.data, original.data);
        assert_eq!(
            store.get(claimed.id).await.expect("get").as_ref(),
            Some(claimed)
        );
    }
    assert_eq!(store.count_pending().await.expect("count"), 2);
    let rest = store.claim("n2", 10, HOUR, None).await.expect("claim");
    assert_eq!(ids(&rest), ids(&tasks[3..]));
    assert!(
        store
            .claim("n2", 10, HOUR, None)
            .await
            .expect("claim")
            .is_empty()
    );

    // Two replicas claiming at once split the work without overlap.
    let many: Vec<Task> = (0..60).map(|index| task(&format!("m{index}"))).collect();
    insert(&store, &many).await;
    let (left, right) = tokio::join!(
        store.claim("left", 40, HOUR, None),
        store.claim("right", 40, HOUR, None)
    );
    let (left, right) = (left.expect("claim"), right.expect("claim"));
    let mut all: Vec<TaskId> = ids(&left).into_iter().chain(ids(&right)).collect();
    assert_eq!(all.len(), 60, "{} + {}", left.len(), right.len());
    all.sort();
    all.dedup();
    assert_eq!(all, ids(&many), "no task was claimed twice");
    for claimed in [&left, &right] {
        assert!(claimed.windows(2).all(|pair| pair[0].id < pair[1].id));
    }
}

#[tokio::test]
async fn claims_take_over_expired_leases_only() {
    let (schema, store) = store_or_skip!("claims_take_over_expired_leases_only");
    let (dead, alive) = (task("dead"), task("alive"));
    insert(&store, &[dead.clone(), alive.clone()]).await;
    let claimed = store.claim("n1", 2, HOUR, None).await.expect("claim");
    assert_eq!(ids(&claimed), [dead.id, alive.id]);

    // A live lease keeps the task where it is.
    assert!(
        store
            .claim("n2", 10, HOUR, None)
            .await
            .expect("claim")
            .is_empty()
    );

    expire_lease(&schema, dead.id).await;
    let taken = store.claim("n2", 10, HOUR, None).await.expect("claim");
    assert_eq!(ids(&taken), [dead.id]);
    assert_eq!(taken[0].attempt, 2);
    assert_eq!(taken[0].node, "n2");
    assert_eq!(taken[0].revision, 3);

    // A lease of zero runs out at once.
    let quick = task("quick");
    insert(&store, std::slice::from_ref(&quick)).await;
    let first = store
        .claim("n1", 1, Duration::ZERO, None)
        .await
        .expect("claim");
    assert_eq!(ids(&first), [quick.id]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let second = loop {
        let second = store.claim("n2", 1, HOUR, None).await.expect("claim");
        if !second.is_empty() || tokio::time::Instant::now() > deadline {
            break second;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(ids(&second), [quick.id]);
    assert_eq!(second[0].attempt, 2);
}

#[tokio::test]
async fn renew_keeps_only_the_runs_still_held_and_release_lets_them_go() {
    let (schema, store) =
        store_or_skip!("renew_keeps_only_the_runs_still_held_and_release_lets_them_go");
    let tasks: Vec<Task> = (0..4).map(|index| task(&format!("r{index}"))).collect();
    insert(&store, &tasks).await;
    let claimed = store.claim("n1", 4, HOUR, None).await.expect("claim");
    let running: Vec<(TaskId, u32)> = claimed.iter().map(|task| (task.id, task.attempt)).collect();

    store
        .cancel(tasks[1].id, "stop", "api")
        .await
        .expect("cancel");
    expire_lease(&schema, tasks[2].id).await;
    assert_eq!(
        ids(&store.claim("n2", 1, HOUR, None).await.expect("claim")),
        [tasks[2].id]
    );

    let mut asked = running.clone();
    // A stale attempt of a held task is not held.
    asked.push((tasks[3].id, 7));
    let held = store.renew("n1", &running, HOUR).await.expect("renew");
    assert_eq!(held, [tasks[0].id, tasks[3].id]);
    let held = store.renew("n2", &asked, HOUR).await.expect("renew");
    assert!(held.is_empty());
    assert!(
        store
            .renew("n1", &[], HOUR)
            .await
            .expect("renew")
            .is_empty()
    );

    // Released: another replica takes them over at once.
    assert!(
        store
            .claim("n3", 10, HOUR, None)
            .await
            .expect("claim")
            .is_empty()
    );
    store.release("n1", &running).await.expect("release");
    let taken = store.claim("n3", 10, HOUR, None).await.expect("claim");
    assert_eq!(ids(&taken), [tasks[0].id, tasks[3].id]);
    assert!(
        taken
            .iter()
            .all(|task| task.attempt == 2 && task.node == "n3")
    );
}

#[tokio::test]
async fn cancel_reports_what_it_found() {
    let (schema, store) = store_or_skip!("cancel_reports_what_it_found");
    let (pending, running, done) = (task("pending"), task("running"), finished("done", HOUR));
    insert(&store, &[pending.clone(), running.clone(), done.clone()]).await;
    let claimed = store.claim("n1", 1, HOUR, None).await.expect("claim");
    assert_eq!(ids(&claimed), [pending.id]);
    let claimed = store.claim("n1", 1, HOUR, None).await.expect("claim");
    assert_eq!(ids(&claimed), [running.id]);

    let Cancelled::Now(cancelled) = store
        .cancel(running.id, "no longer\u{0} needed", "api")
        .await
        .expect("cancel")
    else {
        panic!("a running task is cancellable");
    };
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(cancelled.error, "no longer\u{FFFD} needed");
    assert_eq!(cancelled.revision, claimed[0].revision + 1);
    assert_eq!(cancelled.data, running.data);
    assert!(cancelled.completed_at.is_some());
    assert!(lease_until_is_null(&schema, running.id).await);
    assert_eq!(
        store.get(running.id).await.expect("get"),
        Some(cancelled.clone())
    );

    assert_eq!(
        store
            .cancel(running.id, "again", "api")
            .await
            .expect("cancel"),
        Cancelled::Already(cancelled)
    );
    assert_eq!(
        store.cancel(done.id, "late", "api").await.expect("cancel"),
        Cancelled::Finished(done)
    );
    assert_eq!(
        store
            .cancel(TaskId::generate(), "who?", "api")
            .await
            .expect("cancel"),
        Cancelled::NotFound
    );
    // Pending (here: claimed, then freshly inserted) works too.
    let waiting = task("waiting");
    insert(&store, std::slice::from_ref(&waiting)).await;
    assert!(matches!(
        store.cancel(waiting.id, "stop", "api").await.expect("cancel"),
        Cancelled::Now(task) if task.status == TaskStatus::Cancelled && task.attempt == 0
    ));
}

#[tokio::test]
async fn retention_deletes_old_and_excess_finished_tasks_only() {
    let (schema, store) = store_or_skip!("retention_deletes_old_and_excess_finished_tasks_only");
    let minutes = |count: u64| Duration::from_secs(60 * count);
    let old: Vec<Task> = (0..3)
        .map(|index| finished(&format!("old{index}"), minutes(120 + index)))
        .collect();
    let recent: Vec<Task> = [50, 40, 30, 20, 10]
        .into_iter()
        .map(|ago| finished(&format!("recent{ago}"), minutes(ago)))
        .collect();
    let (pending, running) = (task("pending"), task("running"));
    let mut all = old.clone();
    all.extend(recent.iter().cloned());
    all.push(pending.clone());
    all.push(running.clone());
    insert(&store, &all).await;
    // Long pending and running tasks are never deleted.
    sqlx::query("UPDATE tasks SET created_at = 0 WHERE id = ANY($1)")
        .bind(vec![*pending.id.as_uuid(), *running.id.as_uuid()])
        .execute(&schema.sql)
        .await
        .expect("age them");
    store.claim("n1", 1, HOUR, None).await.expect("claim");

    // Three are too old, and of the five others the two oldest are
    // beyond the newest three.
    assert_eq!(
        store
            .enforce_retention("n1", HOUR, 3)
            .await
            .expect("retention"),
        5
    );
    let remaining = store
        .list(&ListQuery {
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    let mut expected: Vec<TaskId> = ids(&recent[2..]);
    expected.push(pending.id);
    expected.push(running.id);
    expected.sort();
    assert_eq!(
        remaining
            .tasks
            .iter()
            .map(|task| task.id)
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(
        store
            .enforce_retention("n1", HOUR, 3)
            .await
            .expect("retention"),
        0
    );

    // Replicas enforcing at once delete each task once.
    let newer: Vec<Task> = (0..4)
        .map(|index| finished(&format!("newer{index}"), minutes(5 - index)))
        .collect();
    insert(&store, &newer).await;
    let (left, right) = tokio::join!(
        store.enforce_retention("n1", HOUR, 3),
        store.enforce_retention("n1", HOUR, 3)
    );
    assert_eq!(left.expect("retention") + right.expect("retention"), 4);
    let finished_left: Vec<i64> = sqlx::query_scalar(
        "SELECT completed_at FROM tasks WHERE completed_at IS NOT NULL ORDER BY completed_at",
    )
    .fetch_all(&schema.sql)
    .await
    .expect("finished");
    let newest: Vec<i64> = newer[1..]
        .iter()
        .map(|task| micros(task.completed_at.expect("finished")))
        .collect();
    assert_eq!(finished_left, newest);
    assert_eq!(store.count_pending().await.expect("count"), 1);
}

/// The walk over expired leases passes every row that ran since the last
/// vacuum, so only claims that ask for a take-over make it; an ordinary
/// claim takes ready tasks and leaves an expired run for the next one that
/// does, which then takes it before younger ready tasks (FIFO).
#[tokio::test]
async fn only_a_claim_that_takes_over_takes_an_expired_run() {
    let (_schema, store) = store_or_skip!("only_a_claim_that_takes_over_takes_an_expired_run");
    let expired = task("expired");
    insert(&store, std::slice::from_ref(&expired)).await;
    let first = store
        .claim("gone", 1, Duration::ZERO, None)
        .await
        .expect("claim");
    assert_eq!(ids(&first), [expired.id]);
    let ready = task("ready");
    insert(&store, std::slice::from_ref(&ready)).await;
    let rooms = [KindRoom {
        kind: "echo".to_owned(),
        room: 10,
    }];
    let claim = |take_over| ClaimRequest {
        node: "n2",
        limit: 10,
        lease: HOUR,
        rooms: &rooms,
        now: SystemTime::now(),
        take_over,
    };
    let ordinary = store.claim_due(claim(false)).await.expect("claim");
    assert_eq!(ids(&ordinary.tasks), [ready.id]);
    let taking_over = store.claim_due(claim(true)).await.expect("claim");
    assert_eq!(ids(&taking_over.tasks), [expired.id]);
    assert_eq!(taking_over.tasks[0].attempt, 2);
}

/// A claim that rides on a commit takes the older ready tasks first; the
/// room it leaves goes to the commit's own new tasks, which are stored
/// running here with a lease (so no take-over walk mistakes them for a run
/// nobody renews), announced pending then running, and the rest stay
/// pending for later claims.
#[tokio::test]
async fn a_commit_starts_its_new_tasks_in_the_room_its_claim_leaves() {
    let (schema, store) =
        store_or_skip!("a_commit_starts_its_new_tasks_in_the_room_its_claim_leaves");
    let older = task("older");
    insert(&store, std::slice::from_ref(&older)).await;
    let mut feed = store.listen().await.expect("listen");
    let fresh: Vec<Task> = (0..3).map(|index| task(&format!("fresh{index}"))).collect();
    let fresh_arcs: Vec<Arc<Task>> = fresh.iter().cloned().map(Arc::new).collect();
    let batch = Batch {
        inserts: fresh_arcs.clone(),
        changes: fresh_arcs,
        claim: Some(ClaimAsk {
            limit: 10,
            lease: HOUR,
            rooms: vec![KindRoom {
                kind: "echo".to_owned(),
                room: 3,
            }],
            take_over: false,
        }),
        ..Batch::default()
    };
    let outcome = store.commit("n1", &batch).await.expect("commit");
    let claimed = outcome.claimed.expect("the claim ran").tasks;
    assert_eq!(ids(&claimed), [older.id, fresh[0].id, fresh[1].id]);
    for started in &claimed {
        assert_eq!(started.status, TaskStatus::Running);
        assert_eq!(started.attempt, 1);
        assert_eq!(started.node, "n1");
        assert_eq!(started.revision, 2);
        assert_eq!(
            store.get(started.id).await.expect("get").as_ref(),
            Some(started)
        );
        assert!(!lease_until_is_null(&schema, started.id).await);
    }
    let waiting = store.get(fresh[2].id).await.expect("get").expect("stored");
    assert_eq!(waiting.status, TaskStatus::Pending);
    assert_eq!(store.count_pending().await.expect("count"), 1);

    // Announced in order: the inserts as created, then the starts.
    let mut announced = Vec::new();
    for _ in 0..6 {
        let change = next_change(&mut feed).await;
        announced.push((change.task.id, change.task.status));
    }
    let pending = TaskStatus::Pending;
    let running = TaskStatus::Running;
    assert_eq!(
        announced,
        [
            (fresh[0].id, pending),
            (fresh[1].id, pending),
            (fresh[2].id, pending),
            (older.id, running),
            (fresh[0].id, running),
            (fresh[1].id, running),
        ]
    );
    // Nothing takes them over while their lease holds.
    let rooms = [KindRoom {
        kind: "echo".to_owned(),
        room: 10,
    }];
    let taking_over = store
        .claim_due(ClaimRequest {
            node: "n2",
            limit: 10,
            lease: HOUR,
            rooms: &rooms,
            now: SystemTime::now(),
            take_over: true,
        })
        .await
        .expect("claim");
    assert_eq!(ids(&taking_over.tasks), [fresh[2].id]);
}

/// A commit that ends runs and claims makes due tasks ready in its update's
/// statement; the next due time it answers still counts a retry that the
/// same statement writes (which that statement's snapshot cannot see).
#[tokio::test]
async fn a_claim_riding_on_an_update_answers_the_retry_that_update_writes() {
    let (_schema, store) =
        store_or_skip!("a_claim_riding_on_an_update_answers_the_retry_that_update_writes");
    let mut flaky = task("flaky");
    flaky.scheduling.retry_policy.max_attempts = 3;
    flaky.scheduling.retry_policy.initial_backoff = Duration::from_secs(600);
    insert(&store, std::slice::from_ref(&flaky)).await;
    let running = store.claim("n1", 1, HOUR, None).await.expect("claim");
    assert_eq!(ids(&running), [flaky.id]);
    let retrying = Arc::new(applied(
        &running[0],
        TaskEvent::Fail(Failure::retryable("try again")),
    ));
    assert_eq!(retrying.status, TaskStatus::Retrying);
    let retry_at = retrying.retry_at.expect("a retry time");
    let batch = Batch {
        updates: vec![Arc::clone(&retrying)],
        changes: vec![retrying],
        claim: Some(ClaimAsk {
            limit: 1,
            lease: HOUR,
            rooms: vec![KindRoom {
                kind: "echo".to_owned(),
                room: 1,
            }],
            take_over: false,
        }),
        ..Batch::default()
    };
    let outcome = store.commit("n1", &batch).await.expect("commit");
    assert_eq!(outcome.updated, [true]);
    let claimed = outcome.claimed.expect("the claim ran");
    assert!(claimed.tasks.is_empty(), "{:?}", claimed.tasks);
    let next_due = claimed.next_due.expect("the retry is due later");
    let gap = next_due
        .duration_since(retry_at)
        .unwrap_or_else(|early| early.duration());
    assert!(
        gap < Duration::from_millis(1),
        "{next_due:?} vs {retry_at:?}"
    );
}
