//! What the real binary logs about workers: a warning, once per kind, while
//! tasks of a worker kind wait with no worker connected; a line when one
//! comes; and the connection itself.

use crate::{
    process::{send_sigterm, start_binary},
    support::{create, eventually},
};

use super::{RawWorker, hello};

#[tokio::test(flavor = "multi_thread")]
async fn tasks_waiting_without_a_worker_are_warned_of_once_until_one_connects() {
    let process = start_binary(&["--worker-kinds", "remote,unused"], &[]);
    let mut client = process.client().await;
    create(&mut client, "first", "remote", None).await;
    let warnings = |kind: &str| {
        process
            .log
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|entry| {
                entry["level"] == "WARN"
                    && entry["kind"] == kind
                    && entry["message"]
                        == "tasks wait for a worker kind that no connected worker runs"
            })
            .count()
    };
    eventually("the warning", || async {
        (warnings("remote") == 1).then_some(())
    })
    .await;
    // Another task of the kind, and housekeeping ticks (one a second)
    // later: still one. (The wait only gives the ticks a chance to repeat
    // the warning; nothing depends on how long they take.)
    create(&mut client, "second", "remote", None).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let _worker = RawWorker::open(process.channel().await, hello(&["remote"], 2, "late"))
        .await
        .expect("hello accepted");
    eventually("the worker's arrival to be logged", || async {
        process
            .logged_message("a worker for the kind connected")
            .then_some(())
    })
    .await;
    assert_eq!(warnings("remote"), 1, "warned once, not at every tick");
    assert_eq!(
        warnings("unused"),
        0,
        "a kind with nothing waiting is no warning"
    );
    assert!(process.logged_message("worker connected"));
    send_sigterm(&process.child);
}
