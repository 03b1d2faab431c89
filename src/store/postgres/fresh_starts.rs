//! Fresh tasks that start in the commit that stores them.
//!
//! A replica with free slots would otherwise insert a new task as pending
//! and then claim it in the same transaction: two writes of one row, each
//! a new row version with its index entries, and the claim's walk of the
//! ready index. When the claim of the commit has taken every older ready
//! task it could and room is left, the fresh tasks that fit are stored
//! running on this replica by the insert itself. Older tasks are claimed
//! first, so start order (priority, then FIFO) is kept: a fresh task only
//! takes room that no waiting task in the table could have had.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use crate::store::{
    ClaimAsk,
    row::{from_micros, micros},
};
use crate::task::{Task, TaskEvent, TaskId, TaskStatus};

/// The fresh tasks of `inserts` that start on `node` now, each as it is to
/// be stored (running, first attempt), given what the claim of the same
/// commit took already (`claimed`) out of `ask`'s limit and rooms.
pub(super) fn fresh_starts(
    node: &str,
    ask: &ClaimAsk,
    claimed: &[Task],
    inserts: &[Arc<Task>],
    now: SystemTime,
) -> HashMap<TaskId, Task> {
    let mut starts = HashMap::new();
    // To the microsecond the table keeps, so the task started here is the
    // one every replica reads back.
    let started_at = from_micros(micros(now));
    let mut limit_left = ask.limit.saturating_sub(claimed.len());
    if limit_left == 0 {
        return starts;
    }
    let mut room_left: HashMap<&str, usize> = ask
        .rooms
        .iter()
        .map(|room| (room.kind.as_str(), room.room))
        .collect();
    for task in claimed {
        if let Some(room) = room_left.get_mut(task.kind.as_str()) {
            *room = room.saturating_sub(1);
        }
    }
    let mut ready: Vec<&Arc<Task>> = inserts
        .iter()
        .filter(|task| task.status == TaskStatus::Pending && task.ready_at() <= now)
        .collect();
    ready.sort_by_key(|task| task.start_order());
    for task in ready {
        if limit_left == 0 {
            break;
        }
        let Some(room) = room_left.get_mut(task.kind.as_str()) else {
            continue;
        };
        if *room == 0 || starts.contains_key(&task.id) {
            continue;
        }
        let mut started = (**task).clone();
        if started
            .apply(
                TaskEvent::Start {
                    node: node.to_owned(),
                },
                started_at,
            )
            .is_err()
        {
            continue;
        }
        *room -= 1;
        limit_left -= 1;
        starts.insert(task.id, started);
    }
    starts
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::postgres::KindRoom;
    use crate::task::NewTask;

    fn task(kind: &str, priority: i32, run_after: Option<SystemTime>) -> Arc<Task> {
        let new_task = NewTask {
            tenant: String::new(),
            name: String::new(),
            description: String::new(),
            kind: kind.into(),
            data: None,
            timeout_seconds: 0,
            labels: Default::default(),
            request_id: None,
            scheduling: crate::task::Scheduling {
                priority,
                run_after,
                ..Default::default()
            },
            trace_context: Default::default(),
        };
        Arc::new(Task::new(TaskId::generate(), new_task, SystemTime::now()))
    }

    fn ask(limit: usize, rooms: &[(&str, usize)]) -> ClaimAsk {
        ClaimAsk {
            limit,
            lease: Duration::from_secs(30),
            rooms: rooms
                .iter()
                .map(|(kind, room)| KindRoom {
                    kind: (*kind).into(),
                    room: *room,
                })
                .collect(),
            take_over: false,
        }
    }

    fn started(task: &Arc<Task>) -> Task {
        let mut started = (**task).clone();
        started
            .apply(
                TaskEvent::Start {
                    node: "node-a".into(),
                },
                SystemTime::now(),
            )
            .expect("a pending task starts");
        started
    }

    #[test]
    fn fresh_tasks_take_the_room_the_claim_left_best_first_and_start_here() {
        let first = task("echo", 0, None);
        let urgent = task("echo", 5, None);
        let last = task("echo", 0, None);
        let claimed = [started(&task("echo", 0, None))];
        let inserts = [Arc::clone(&first), Arc::clone(&last), Arc::clone(&urgent)];
        let starts = fresh_starts(
            "node-a",
            &ask(10, &[("echo", 3)]),
            &claimed,
            &inserts,
            SystemTime::now(),
        );
        // Room 3, one taken by the claim: the urgent one, then the older.
        assert_eq!(starts.len(), 2);
        let urgent_started = &starts[&urgent.id];
        assert_eq!(urgent_started.status, TaskStatus::Running);
        assert_eq!(urgent_started.attempt, 1);
        assert_eq!(urgent_started.node, "node-a");
        assert!(urgent_started.started_at.is_some());
        assert!(starts.contains_key(&first.id));
        assert!(!starts.contains_key(&last.id));
    }

    #[test]
    fn the_limit_counts_what_the_claim_took_of_every_kind() {
        let email = task("email", 0, None);
        let echo = task("echo", 0, None);
        let claimed = [started(&task("echo", 0, None))];
        let inserts = [Arc::clone(&email), Arc::clone(&echo)];
        let starts = fresh_starts(
            "node-a",
            &ask(2, &[("echo", 2), ("email", 2)]),
            &claimed,
            &inserts,
            SystemTime::now(),
        );
        assert_eq!(starts.len(), 1, "a limit of 2 with one claimed leaves one");
        let full = fresh_starts(
            "node-a",
            &ask(1, &[("echo", 2), ("email", 2)]),
            &claimed,
            &inserts,
            SystemTime::now(),
        );
        assert!(full.is_empty(), "a claim that filled the limit leaves none");
    }

    #[test]
    fn delayed_tasks_and_kinds_without_room_stay_pending() {
        let later = task("echo", 0, Some(SystemTime::now() + Duration::from_secs(60)));
        let unknown = task("thumbnail", 0, None);
        let full_kind = task("email", 0, None);
        let claimed = [started(&task("email", 0, None))];
        let inserts = [later, unknown, full_kind];
        let starts = fresh_starts(
            "node-a",
            &ask(10, &[("echo", 5), ("email", 1)]),
            &claimed,
            &inserts,
            SystemTime::now(),
        );
        assert!(starts.is_empty(), "{starts:?}");
    }
}
