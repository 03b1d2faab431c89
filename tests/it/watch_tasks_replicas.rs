//! `WatchTasks` across PostgreSQL replicas: a stream resumed on another
//! replica goes on from its token through the shared change log, with
//! nothing lost and nothing repeated, whichever replica made the changes;
//! and a token older than what the log keeps is refused.

use serde_json::json;
use sqlx::Connection as _;
use task_processor::{config::Config, pb, store::StoreUrl, store::postgres::PostgresStore};
use tonic::Code;

use crate::{
    stores::{self, StoreUnderTest},
    support::{TestServer, status_of, test_config, wait_for_status},
    watch_tasks::{create, labelled, next_task, team, until, until_tasks, watch_tasks},
};

use pb::TaskStatus::{Completed, Pending, Running};

/// Two replicas (`a`, `b`) on one fresh schema, and its URL.
async fn two_replicas() -> (TestServer, TestServer, StoreUrl) {
    let store = stores::fresh_store().await;
    let replica = |name: &str| Config {
        store: store.clone(),
        node_name: name.into(),
        ..test_config()
    };
    let a = TestServer::start_with(replica("replica-a")).await;
    let b = TestServer::start_with(replica("replica-b")).await;
    (a, b, store)
}

async fn on_postgres(test: &str, body: impl Future<Output = ()>) {
    if stores::postgres_available(test) {
        stores::on_store(StoreUnderTest::Postgres, body).await;
    }
}

#[tokio::test]
async fn a_stream_resumed_on_another_replica_loses_and_repeats_nothing() {
    on_postgres("watch_tasks_replicas::resumed_on_another_replica", async {
        let (a, b, _) = two_replicas().await;
        let (mut on_a, mut on_b) = (a.client().await, b.client().await);
        let mut stream = watch_tasks(&mut on_a, team("a")).await;
        let first = create(&mut on_a, labelled("first", "echo", "a")).await;
        let token = loop {
            let (task, token) = next_task(&mut stream).await;
            if task.id == first.id && status_of(&task) == Completed {
                break token;
            }
        };
        drop(stream);

        // While no stream is open, changes through both replicas: a task
        // created on each, another team's, and a delete.
        let second = create(&mut on_b, labelled("second", "echo", "a")).await;
        wait_for_status(&on_b, &second.id, Completed).await;
        create(&mut on_a, labelled("other team", "echo", "b")).await;
        let third = create(&mut on_a, labelled("third", "echo", "a")).await;
        wait_for_status(&on_a, &third.id, Completed).await;
        on_b.delete_task(pb::DeleteTaskRequest {
            id: second.id.clone(),
        })
        .await
        .expect("deleted");

        let mut resumed = watch_tasks(
            &mut on_b,
            pb::WatchTasksRequest {
                resume_token: token,
                ..team("a")
            },
        )
        .await;
        // And after the resume, live, made on the first replica.
        let fourth = create(&mut on_a, labelled("fourth", "echo", "a")).await;
        let tasks = until_tasks(&mut resumed, &fourth.id, Completed).await;
        let seen: Vec<(&str, pb::TaskStatus)> = tasks
            .iter()
            .map(|task| (task.name.as_str(), status_of(task)))
            .collect();
        assert_eq!(
            seen,
            [
                ("second", Pending),
                ("second", Running),
                ("second", Completed),
                ("third", Pending),
                ("third", Running),
                ("third", Completed),
                // The delete, with the last state.
                ("second", Completed),
                ("fourth", Pending),
                ("fourth", Running),
                ("fourth", Completed),
            ],
            "every change after the token, once, in order"
        );
        // Read back from the log, a change carries its task's data (the
        // deleted task's is gone with it).
        for task in tasks.iter().filter(|task| task.name != "second") {
            assert_eq!(
                crate::support::json(&task.data),
                Some(json!({"name": task.name})),
                "{task:?}"
            );
        }
        // The next message is news: nothing more was queued.
        let fifth = create(&mut on_b, labelled("fifth", "echo", "a")).await;
        let (next, _) = next_task(&mut resumed).await;
        assert_eq!((status_of(&next), next.id), (Pending, fifth.id));
    })
    .await;
}

#[tokio::test]
async fn a_token_the_change_log_let_go_of_is_failed_precondition() {
    on_postgres("watch_tasks_replicas::pruned_token", async {
        let (a, b, store) = two_replicas().await;
        let (mut on_a, mut on_b) = (a.client().await, b.client().await);
        let mut stream = watch_tasks(&mut on_a, team("a")).await;
        let first = create(&mut on_a, labelled("first", "echo", "a")).await;
        let (_, old_token) = next_task(&mut stream).await;
        until(&mut stream, &first.id, Completed).await;
        let second = create(&mut on_a, labelled("second", "echo", "a")).await;
        let (_, recent_token) = next_task(&mut stream).await;
        until(&mut stream, &second.id, Completed).await;

        // Pruned as the replicas' housekeeping does, keeping the last 3.
        let StoreUrl::Postgres(url) = store else {
            panic!("a PostgreSQL store");
        };
        let log = PostgresStore::connect(&url).await.expect("connected");
        let pruned = log
            .prune_change_log(std::time::Duration::from_secs(600), 3)
            .await
            .expect("pruned");
        assert!(pruned > 0, "the first task's changes went");

        let refused = on_b
            .watch_tasks(pb::WatchTasksRequest {
                resume_token: old_token,
                ..team("a")
            })
            .await
            .expect_err("its successors were let go");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("list the tasks again"),
            "{refused:?}"
        );
        // A token whose successors are kept still resumes, on either.
        let mut resumed = watch_tasks(
            &mut on_b,
            pb::WatchTasksRequest {
                resume_token: recent_token,
                ..team("a")
            },
        )
        .await;
        let seen = until(&mut resumed, &second.id, Completed).await;
        assert_eq!(
            seen,
            [
                ("second".to_string(), Running),
                ("second".to_string(), Completed)
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn a_lost_listen_connection_ends_streams_aborted_and_they_resume_through_the_log() {
    on_postgres("watch_tasks_replicas::lost_listener", async {
        let (a, b, store) = two_replicas().await;
        let (mut on_a, mut on_b) = (a.client().await, b.client().await);
        let mut stream = watch_tasks(&mut on_a, team("a")).await;
        let first = create(&mut on_a, labelled("first", "gate", "a")).await;
        let (_, mut token) = next_task(&mut stream).await;

        // The replicas' listeners lose their connections; changes go on.
        let StoreUrl::Postgres(url) = store else {
            panic!("a PostgreSQL store");
        };
        let mut sql = sqlx::PgConnection::connect(&url).await.expect("connected");
        let terminated: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query = 'LISTEN \"task_processor_changes_' || current_schema() || '\"'",
        )
        .fetch_all(&mut sql)
        .await
        .expect("terminated");
        assert_eq!(terminated, [true, true], "one listener per replica");
        let second = create(&mut on_b, labelled("second", "echo", "a")).await;
        wait_for_status(&on_b, &second.id, Completed).await;
        a.gate.release(1);
        b.gate.release(1);
        wait_for_status(&on_a, &first.id, Completed).await;

        // The stream ends ABORTED, never silently past what it missed.
        // One deadline for all: bookmarks would keep a stream that never
        // ends busy.
        let mut seen: Vec<(String, pb::TaskStatus)> = Vec::new();
        let deadline = tokio::time::Instant::now() + crate::support::DEADLINE;
        let ended = loop {
            let message = tokio::time::timeout_at(deadline, stream.message())
                .await
                .expect("the stream ends in time");
            match message {
                Ok(Some(message)) => {
                    if let Some(task) = &message.task {
                        seen.push((task.name.clone(), status_of(task)));
                    }
                    token = message.resume_token;
                }
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(ended.code(), Code::Aborted, "{ended:?}");

        // Resumed from its last token: the rest, nothing twice.
        let mut resumed = watch_tasks(
            &mut on_a,
            pb::WatchTasksRequest {
                resume_token: token,
                ..team("a")
            },
        )
        .await;
        for task in [&first, &second] {
            if !seen.contains(&(task.name.clone(), Completed)) {
                let tasks = until_tasks(&mut resumed, &task.id, Completed).await;
                seen.extend(
                    tasks
                        .iter()
                        .map(|task| (task.name.clone(), status_of(task))),
                );
            }
        }
        let of = |name: &str| -> Vec<pb::TaskStatus> {
            seen.iter()
                .filter(|(each, _)| each == name)
                .map(|(_, status)| *status)
                .collect()
        };
        assert_eq!(of("first"), [Running, Completed], "{seen:?}");
        assert_eq!(of("second"), [Pending, Running, Completed], "{seen:?}");
    })
    .await;
}

/// How many changes the schema's change log holds.
async fn logged(sql: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM task_changes")
        .fetch_one(sql)
        .await
        .expect("counted")
}

#[tokio::test]
async fn the_change_log_records_only_while_streams_follow_and_a_gap_refuses_older_tokens() {
    on_postgres("watch_tasks_replicas::log_on_while_watched", async {
        let (a, b, store) = two_replicas().await;
        let (mut on_a, mut on_b) = (a.client().await, b.client().await);
        let StoreUrl::Postgres(url) = store else {
            panic!("a PostgreSQL store");
        };
        let mut sql = sqlx::PgConnection::connect(&url).await.expect("connected");

        // Nobody watches: changes cost no row in the log.
        let unwatched = create(&mut on_a, labelled("unwatched", "echo", "a")).await;
        wait_for_status(&on_a, &unwatched.id, Completed).await;
        assert_eq!(logged(&mut sql).await, 0);

        // A stream turns it on, for the changes of every replica.
        let mut stream = watch_tasks(&mut on_a, team("a")).await;
        let watched = create(&mut on_b, labelled("watched", "echo", "a")).await;
        let (_, token) = next_task(&mut stream).await;
        until(&mut stream, &watched.id, Completed).await;
        assert!(logged(&mut sql).await >= 3, "the watched task's changes");
        drop(stream);

        // The log goes off (as when no stream has followed for a quarter of
        // an hour); a change is not recorded; a new stream turns it on.
        sqlx::query("UPDATE task_changes_horizon SET watched_until = now() - interval '1 second'")
            .execute(&mut sql)
            .await
            .expect("turned off");
        let missed = create(&mut on_b, labelled("missed", "echo", "a")).await;
        wait_for_status(&on_b, &missed.id, Completed).await;
        let mut fresh = watch_tasks(&mut on_b, team("a")).await;
        // A token from before the gap would skip `missed`: refused.
        let refused = on_b
            .watch_tasks(pb::WatchTasksRequest {
                resume_token: token,
                ..team("a")
            })
            .await
            .expect_err("across a gap in the log");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        // The new stream's own tokens resume on the other replica.
        let after = create(&mut on_a, labelled("after", "echo", "a")).await;
        let (first, fresh_token) = next_task(&mut fresh).await;
        assert_eq!((status_of(&first), first.id), (Pending, after.id.clone()));
        drop(fresh);
        let mut resumed = watch_tasks(
            &mut on_a,
            pb::WatchTasksRequest {
                resume_token: fresh_token,
                ..team("a")
            },
        )
        .await;
        let seen = until(&mut resumed, &after.id, Completed).await;
        assert_eq!(
            seen,
            [
                ("after".to_string(), Running),
                ("after".to_string(), Completed)
            ]
        );
    })
    .await;
}
