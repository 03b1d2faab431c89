//! The change feed against a real database, and the notification payloads.

use super::*;
use crate::store::postgres::feed::{decode_change, from_nanos, nanos};

#[tokio::test]
async fn the_feed_delivers_every_written_change_in_order() {
    let (schema, store) = store_or_skip!("the_feed_delivers_every_written_change_in_order");
    let mut feed = store.listen().await.expect("listen");

    // Another schema in the same database is not heard here.
    let other_schema = TestSchema::create("the_feed_delivers_every_written_change_in_order")
        .await
        .expect("the database answered a moment ago");
    let other_store = other_schema.store().await;
    assert_ne!(other_store.channel, store.channel);
    insert(&other_store, &[task("elsewhere")]).await;

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
        changes: vec![Arc::new(halfway.clone()), Arc::new(done.clone())],
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

    drop(other_store);
    drop(other_schema);
    drop(schema);
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
    let (_schema, store) = store_or_skip!("the_feed_reports_a_gap_when_its_connection_is_lost");
    let mut feed = store.listen().await.expect("listen");
    let listening = format!("LISTEN \"{}\"", store.channel);
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1",
    )
    .bind(listening)
    .fetch_all(&store.pool)
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

#[test]
fn payloads_fit_a_notification_and_read_back_as_published() {
    let mut task = task("payload");
    task.created_at = SystemTime::now();
    task.error = "a\u{0}b \"quoted\"".to_owned();
    task.progress = Some(Progress {
        percent: 5,
        message: "π".to_owned(),
    });
    task.labels = BTreeMap::from([("team".to_owned(), "ä".to_owned())]);
    task.request_id = Some("key".to_owned());
    task.result = Some(Arc::new(json!({"text": "c\u{0}d"})));
    let text = change_payload("n1", &task).expect("fits");
    let change = decode_change(&text).expect("decodes");
    assert_eq!(change.origin, "n1");
    assert!(change.complete);
    assert_eq!(change.task, without_data(&task));

    // Too large with its result: result and error are left out.
    task.result = Some(Arc::new(json!("x".repeat(8_000))));
    let text = change_payload("n1", &task).expect("fits");
    assert!(text.len() <= MAX_PAYLOAD_BYTES);
    let change = decode_change(&text).expect("decodes");
    assert!(!change.complete);
    let mut expected = without_data(&task);
    expected.result = None;
    expected.error = String::new();
    assert_eq!(change.task, expected);

    // Too large without them too: the large free texts go as well.
    task.description = "\u{1F600}".repeat(4096);
    task.labels = (0..64)
        .map(|index| (format!("key{index}"), "v".repeat(256)))
        .collect();
    let text = change_payload("n1", &task).expect("fits");
    assert!(text.len() <= MAX_PAYLOAD_BYTES);
    let change = decode_change(&text).expect("decodes");
    assert!(!change.complete);
    assert_eq!(change.task.status, task.status);
    assert_eq!(change.task.revision, task.revision);
    assert_eq!(change.task.description, "");

    assert!(decode_change("{\"origin\": 1}").is_err());
    assert!(decode_change("not json").is_err());
}

#[test]
fn times_survive_as_nanoseconds() {
    for time in [
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        UNIX_EPOCH - Duration::new(5, 1),
    ] {
        assert_eq!(from_nanos(nanos(time)), time);
    }
}
