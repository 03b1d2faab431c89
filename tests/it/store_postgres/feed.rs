//! The change feed against a real database. (The notification payloads
//! are unit tests next to the code, in `src/store/postgres/feed.rs`.)

use super::*;

#[tokio::test]
async fn the_feed_delivers_every_written_change_in_order() {
    let (_schema, store) = store_or_skip!("the_feed_delivers_every_written_change_in_order");
    let mut feed = store.listen().await.expect("listen");

    // Another schema in the same database is not heard here: its feed
    // hears its change, and this feed's first change is this schema's.
    let other_schema = Schema::create().await;
    let other_store = other_schema.store().await;
    let mut other_feed = other_store.listen().await.expect("listen");
    let elsewhere = task("elsewhere");
    insert(&other_store, std::slice::from_ref(&elsewhere)).await;
    assert_eq!(
        next_change(&mut other_feed).await.task,
        without_data(&elsewhere)
    );

    let first = task("first");
    let second = with_request_id(task("second"), "key");
    insert(&store, &[first.clone(), second.clone()]).await;
    let change = next_change(&mut feed).await;
    assert_eq!(change.origin, "api");
    assert!(change.complete);
    assert_eq!(change.task, without_data(&first));
    assert_eq!(next_change(&mut feed).await.task, without_data(&second));

    // Not stored, so not announced.
    assert_eq!(
        insert(&store, &[with_request_id(task("dup"), "key")]).await,
        [Inserted::Existing(second.clone())]
    );

    let claimed = store.claim("n1", 1, HOUR, None).await.expect("claim");
    let change = next_change(&mut feed).await;
    assert_eq!(change.origin, "n1");
    assert_eq!(change.task, without_data(&claimed[0]));

    // Progress and completion as the run publishes them, several
    // states of one task in one batch, times to the nanosecond.
    let halfway = applied(
        &claimed[0],
        TaskEvent::Progress(Progress {
            percent: 50,
            message: "half\u{0}way".to_owned(),
        }),
    );
    let done = applied(
        &halfway,
        TaskEvent::Complete(Arc::new(json!({"text": "a\u{0}b"}))),
    );
    let batch = Batch {
        inserts: Vec::new(),
        updates: vec![Arc::new(done.clone())],
        deletes: Vec::new(),
        changes: vec![Arc::new(halfway.clone()), Arc::new(done.clone())],
        ..Batch::default()
    };
    assert_eq!(
        store.commit("n1", &batch).await.expect("commit").updated,
        [true]
    );
    assert_eq!(next_change(&mut feed).await.task, without_data(&halfway));
    let change = next_change(&mut feed).await;
    assert!(change.complete);
    assert_eq!(change.task, without_data(&done));

    // A large result stays out of the notification.
    let claimed = store.claim("n1", 1, HOUR, None).await.expect("claim");
    assert_eq!(next_change(&mut feed).await.task, without_data(&claimed[0]));
    let large = applied(
        &claimed[0],
        TaskEvent::Complete(Arc::new(json!({"text": "x".repeat(10_000)}))),
    );
    assert!(update(&store, "n1", &large).await);
    let change = next_change(&mut feed).await;
    assert!(!change.complete);
    let mut expected = without_data(&large);
    expected.result = None;
    assert_eq!(change.task, expected);
    assert_eq!(
        store.get(large.id).await.expect("get").expect("row").result,
        large.result
    );

    // A refused update is not announced; the cancel after it is.
    assert!(!update(&store, "n9", &large).await);
    let third = task("third");
    insert(&store, std::slice::from_ref(&third)).await;
    assert_eq!(next_change(&mut feed).await.task, without_data(&third));
    let Cancelled::Now(cancelled) = store
        .cancel(third.id, "stop", "api-2")
        .await
        .expect("cancel")
    else {
        panic!("a pending task is cancellable");
    };
    let change = next_change(&mut feed).await;
    assert_eq!(change.origin, "api-2");
    assert_eq!(change.task, without_data(&cancelled));
}

#[tokio::test]
async fn a_release_tells_the_other_replicas_there_is_work() {
    let (_schema, store) = store_or_skip!("a_release_tells_the_other_replicas_there_is_work");
    let running = task("handed over");
    insert(&store, std::slice::from_ref(&running)).await;
    let claimed = store.claim("leaving", 1, HOUR, None).await.expect("claim");
    let mut feed = store.listen().await.expect("listen");
    store
        .release("leaving", &[(running.id, claimed[0].attempt)])
        .await
        .expect("release");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, feed.next()).await {
            Ok(Ok(FeedEvent::WorkWaiting)) => break,
            // The feed starts with a gap: it was not listening before.
            Ok(Ok(FeedEvent::Gap)) => continue,
            other => panic!("expected work waiting, got {other:?}"),
        }
    }
    let taken = store.claim("staying", 1, HOUR, None).await.expect("claim");
    assert_eq!(ids(&taken), [running.id]);
}

#[tokio::test]
async fn the_feed_reports_a_gap_when_its_connection_is_lost() {
    let (schema, store) = store_or_skip!("the_feed_reports_a_gap_when_its_connection_is_lost");
    let mut feed = store.listen().await.expect("listen");
    // The listener's last statement was `LISTEN "<channel>"`, and the
    // channel is `task_processor_changes_<schema>` (a test schema's name is
    // short enough to be spelled out).
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query = 'LISTEN \"task_processor_changes_' || current_schema() || '\"'",
    )
    .fetch_all(&schema.sql)
    .await
    .expect("terminate the listener's connection");
    assert_eq!(terminated, [true]);

    // The loss shows as a gap, possibly after an error; never silently.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, feed.next()).await {
            Ok(Ok(FeedEvent::Gap)) => break,
            Ok(Err(_)) => continue,
            other => panic!("expected a gap, got {other:?}"),
        }
    }
    // Listening again: changes arrive as before.
    let after = task("after");
    insert(&store, std::slice::from_ref(&after)).await;
    assert_eq!(next_change(&mut feed).await.task, without_data(&after));
}
