//! `WatchTasks` on the manager, in paused time: bookmarks after ten quiet
//! seconds (and not before), carrying the position of the last change the
//! stream looked at; and a resume from a bookmark.

use super::{Harness, config, task, within};
use crate::{
    manager::{BOOKMARK_AFTER, TaskFilter, TasksEvent, WatchStart},
    task::TaskStatus,
};

fn only_kind(kind: &str) -> TaskFilter {
    TaskFilter {
        kinds: vec![kind.into()],
        ..TaskFilter::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_quiet_stream_gets_a_bookmark_after_ten_seconds_and_not_before() {
    let harness = Harness::new(config(1, 10));
    let subscribed_at = harness.now();
    let mut watch = harness
        .manager
        .watch_tasks(only_kind("nothing-of-this-kind"), WatchStart::Now)
        .await
        .expect("subscribed");
    // Changes that do not match move the position but send nothing.
    let echo = harness.create(task("echo", "unrelated")).await;
    harness.until_status(echo.id, TaskStatus::Completed).await;

    let bookmark = within("a bookmark", watch.next())
        .await
        .expect("stream goes on");
    assert_eq!(harness.now() - subscribed_at, BOOKMARK_AFTER, "not before");
    let TasksEvent::Bookmark { position } = bookmark else {
        panic!("a bookmark, got {bookmark:?}");
    };
    assert_eq!(
        position.seq, 3,
        "created, running, completed were looked at"
    );
    assert_eq!(position.listing, None);

    // A resume from the bookmark sees only what happens after it.
    let filter = TaskFilter::default();
    let mut resumed = harness
        .manager
        .watch_tasks(filter, WatchStart::Resume(position))
        .await
        .expect("resumable");
    let next = harness.create(task("echo", "after the bookmark")).await;
    let event = within("the next change", resumed.next())
        .await
        .expect("stream goes on");
    let TasksEvent::Task { task, position } = event else {
        panic!("a task, got {event:?}");
    };
    assert_eq!((task.id, task.status), (next.id, TaskStatus::Pending));
    assert_eq!(position.seq, 4);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_sends_something_waits_ten_seconds_again() {
    let harness = Harness::new(config(1, 10));
    let mut watch = harness
        .manager
        .watch_tasks(only_kind("echo"), WatchStart::Now)
        .await
        .expect("subscribed");
    harness.sleep_until(BOOKMARK_AFTER / 2).await;
    let created = harness.create(task("echo", "sent")).await;
    for _ in 0..3 {
        let event = within("a change", watch.next()).await.expect("goes on");
        assert!(
            matches!(&event, TasksEvent::Task { task, .. } if task.id == created.id),
            "{event:?}"
        );
    }
    let sent_at = harness.now();
    let bookmark = within("a bookmark", watch.next()).await.expect("goes on");
    assert!(
        matches!(bookmark, TasksEvent::Bookmark { .. }),
        "{bookmark:?}"
    );
    assert_eq!(harness.now() - sent_at, BOOKMARK_AFTER);
}
