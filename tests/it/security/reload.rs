//! The principals file is re-read when it changes: a new token works
//! without a restart, and a broken file keeps the last good principals.

use std::time::Duration;

use task_processor::{auth::POLL_EVERY, pb};
use tonic::Code;

use super::{Files, principals_yaml, with_token};
use crate::support::eventually;

#[tokio::test]
async fn a_new_token_works_without_a_restart_and_a_broken_file_changes_nothing() {
    let files = Files::new();
    let server = super::start_with_principals(
        &files,
        &principals_yaml(&[("old", Some("old-token"), &["read"])]),
        false,
    )
    .await;
    let mut client = server.client().await;
    let list = |token: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .list_tasks(with_token(pb::ListTasksRequest::default(), token))
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        }
    };
    assert_eq!(list("new-token").await, Err(Code::Unauthenticated));

    files.write(
        "principals.yaml",
        &principals_yaml(&[
            ("old", Some("old-token"), &["read"]),
            ("new", Some("new-token"), &["read"]),
        ]),
    );
    eventually("the new token accepted", || async {
        list("new-token").await.ok()
    })
    .await;

    files.write("principals.yaml", "principals: [ broken");
    let watched_until = tokio::time::Instant::now() + POLL_EVERY * 3;
    while tokio::time::Instant::now() < watched_until {
        assert_eq!(
            list("new-token").await,
            Ok(()),
            "kept while the file is broken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A token taken out of the file stops working.
    files.write(
        "principals.yaml",
        &principals_yaml(&[("new", Some("new-token"), &["read"])]),
    );
    eventually("the old token refused", || async {
        (list("old-token").await == Err(Code::Unauthenticated)).then_some(())
    })
    .await;
    client
        .list_tasks(with_token(pb::ListTasksRequest::default(), "new-token"))
        .await
        .expect("the new token still works");
}
