//! Tests moved here from the inline block of `manager/mod.rs`, as they
//! were. Unlike the rest of this folder they run in real time, and two of
//! them reach past the public API: the memory budget's byte count
//! (`held_json_bytes`) and the SQLite payload read-back (`spawn_on`,
//! `with_payloads`).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde_json::json;

use crate::{
    manager::{ManagerConfig, ManagerError, ManagerHandle, ManagerStats, Opened, held_json_bytes},
    metrics::Metrics,
    processor::Registry,
    store::{SqliteStore, TaskStore, Write},
    task::{NewTask, Task, TaskEvent, TaskId},
};

fn test_config() -> ManagerConfig {
    ManagerConfig {
        tenant_max_waiting: Default::default(),
        max_concurrent: 1,
        queue_capacity: 1,
        node_name: "test".into(),
        queue_full_retry_after: Duration::from_secs(1),
        retention: Duration::from_secs(60),
        max_finished_tasks: 10,
        lease: Duration::from_secs(30),
        max_held_bytes: 1024,
        max_cut_short_runs: 5,
        kind_limits: Default::default(),
        watch_journal_capacity: crate::manager::DEFAULT_JOURNAL_CAPACITY,
        join_stored_trace: None,
    }
}

fn echo(name: &str, data: serde_json::Value) -> NewTask {
    NewTask {
        tenant: Default::default(),
        name: name.into(),
        description: String::new(),
        kind: "echo".into(),
        data: Some(Arc::new(data)),
        timeout_seconds: 0,
        labels: BTreeMap::new(),
        request_id: None,
        scheduling: Default::default(),
        trace_context: Default::default(),
    }
}

/// Polls the stats until `done`, for at most 10 s.
async fn stats_when(manager: &ManagerHandle, done: impl Fn(&ManagerStats) -> bool) -> ManagerStats {
    for _ in 0..1000 {
        let stats = manager.stats().await.expect("manager alive");
        if done(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the manager never got there");
}

#[tokio::test]
async fn memory_counts_data_and_result_once_and_lets_the_oldest_finished_go_when_over() {
    let data = json!({"text": "x".repeat(1000)});
    let size = held_json_bytes(&data);
    let config = ManagerConfig {
        queue_capacity: 10,
        max_held_bytes: 5 * size,
        ..test_config()
    };
    let registry = Registry::with_builtins(Duration::ZERO);
    let manager = ManagerHandle::spawn(config, registry, Metrics::new());
    let first = manager
        .create_task(echo("first", data.clone()))
        .await
        .expect("fits");
    manager
        .create_task(echo("second", data.clone()))
        .await
        .expect("fits");
    let stats = stats_when(&manager, |stats| stats.finished == 2).await;
    assert_eq!(stats.held_bytes, 4 * size, "two data and two results");

    // Its data fits (5 of 5); its result takes the total over, so the
    // oldest finished task goes with its data and result.
    manager
        .create_task(echo("third", data.clone()))
        .await
        .expect("fits exactly");
    let stats = stats_when(&manager, |stats| stats.tasks == 2 && stats.running == 0).await;
    assert_eq!((stats.finished, stats.held_bytes), (2, 4 * size));
    assert!(matches!(
        manager.get_task(first.id).await,
        Err(ManagerError::NotFound(_))
    ));
}

#[tokio::test]
async fn payloads_come_back_from_the_file_and_a_forgotten_task_is_left_out() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = Arc::new(
        SqliteStore::open(&directory.path().join("tasks.db"))
            .await
            .expect("opens"),
    );
    let mut kept = Task::new(
        TaskId::generate(),
        echo("kept", json!({"n": 1.5, "text": "a\u{0}b"})),
        SystemTime::UNIX_EPOCH,
    );
    for event in [
        TaskEvent::Start { node: "n".into() },
        TaskEvent::Complete(Arc::new(json!(["done"]))),
    ] {
        kept.apply(event, SystemTime::UNIX_EPOCH).expect("legal");
    }
    store
        .commit(&[Write::Insert(Arc::new(kept.clone()))])
        .await
        .expect("stored");
    let forgotten = Task::new(
        TaskId::generate(),
        echo("forgotten", json!(null)),
        SystemTime::UNIX_EPOCH,
    );
    let manager = ManagerHandle::spawn_on(
        test_config(),
        Registry::empty(),
        Metrics::new(),
        Opened {
            commits: Arc::clone(&store) as Arc<dyn TaskStore>,
            payload_store: Some(Arc::downgrade(&store)),
            shared_store: None,
            stored: Vec::new(),
            stored_schedules: Vec::new(),
        },
    );

    let page = manager
        .with_payloads(vec![
            Arc::new(kept.without_payload()),
            Arc::new(forgotten.without_payload()),
        ])
        .await
        .expect("read");
    assert_eq!(page, vec![Arc::new(kept)], "the forgotten task is left out");
    let missing = manager
        .with_payload(Arc::new(forgotten.without_payload()))
        .await;
    assert!(
        matches!(missing, Err(ManagerError::NotFound(id)) if id == forgotten.id),
        "{missing:?}"
    );
}

#[test]
fn closed_completes_when_the_actor_is_gone() {
    let config = test_config();
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let manager =
        first.block_on(async { ManagerHandle::spawn(config, Registry::empty(), Metrics::new()) });
    // Dropping the runtime drops the actor, as a panic in it would.
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    second.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), manager.closed())
            .await
            .expect("closed() completes once the actor is gone");
        let answer = manager.stats().await;
        assert!(
            matches!(answer, Err(ManagerError::ShuttingDown)),
            "{answer:?}"
        );
    });
}
