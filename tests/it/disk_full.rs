//! The SQLite store when the disk fills up: creates answer `UNAVAILABLE`
//! (never OK for a task that is not in the file), health and `/readyz` say
//! so, the server recovers by itself once there is room again, and every
//! create it answered OK is in the file after `kill -9`. A schedule's
//! firings are held back meanwhile and go on after.
//!
//! Two ways to fill the disk: a file size limit (`RLIMIT_FSIZE`, with
//! `SIGXFSZ` ignored so a write past it fails with `EFBIG`), which works
//! anywhere, and a real tmpfs that fills up, where the test runs as root.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::json;
use task_processor::{pb, pb::task_service_client::TaskServiceClient};
use tonic::{Code, transport::Channel};

use crate::{
    process::{Process, start_binary, start_binary_under},
    schedules::{create_schedule, get_schedule, schedule_request, tasks_of, wait_for_tasks},
    support::{missing_tasks, request},
};

/// Each create carries this much data, so the disk fills in a few dozen.
const DATA_BYTES: usize = 50 * 1024;

/// A client gives up on a create after this long: far above the 2 s in
/// which the contract wants an answer, so only a hang fails the test.
const CREATE_PATIENCE: Duration = Duration::from_secs(10);

/// How many creates may go by before the disk must have filled up.
const MOST_CREATES: usize = 500;

/// How the disk is made full, and room made again.
trait Fault {
    /// Runs the binary so that the fault can apply.
    fn start(&self, arguments: &[&str]) -> Process;
    /// Leaves little room, once the store is open.
    fn fill(&self) {}
    /// Makes room again.
    fn free(&self, process: &Process);
}

/// Files may grow to `limit_bytes` and no further.
struct FileSizeLimit {
    limit_bytes: u64,
}

impl Fault for FileSizeLimit {
    fn start(&self, arguments: &[&str]) -> Process {
        let limit = format!("--fsize={}:unlimited", self.limit_bytes);
        // An ignored signal stays ignored through exec, so the write past
        // the limit fails with EFBIG instead of killing the process.
        let script = format!("trap '' XFSZ; exec prlimit {limit} -- \"$0\" \"$@\"");
        start_binary_under(&["sh", "-c", &script], arguments, &[])
    }

    fn free(&self, process: &Process) {
        let raised = Command::new("prlimit")
            .args([
                "--pid",
                &process.child.id().to_string(),
                "--fsize=unlimited:unlimited",
            ])
            .status()
            .expect("prlimit runs");
        assert!(raised.success(), "prlimit could not raise the limit");
    }
}

/// A tmpfs of its own, nearly filled by a file that `free` deletes.
struct FullTmpfs {
    mount_point: PathBuf,
    filler: PathBuf,
}

impl FullTmpfs {
    /// Mounts a small tmpfs, or `None` where that is not allowed.
    fn mount(under: &Path) -> Option<Self> {
        let mount_point = under.join("tmpfs");
        std::fs::create_dir(&mount_point).expect("mount point made");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&mount_point)
            .output()
            .ok()?;
        if !mounted.status.success() {
            return None;
        }
        let filler = mount_point.join("filler");
        Some(Self {
            mount_point,
            filler,
        })
    }
}

impl Fault for FullTmpfs {
    fn start(&self, arguments: &[&str]) -> Process {
        start_binary(arguments, &[])
    }

    /// Fills all but about 768 KiB: room for a dozen creates.
    fn fill(&self) {
        let size = fs_available(&self.mount_point).saturating_sub(768 * 1024);
        std::fs::write(
            &self.filler,
            vec![0u8; usize::try_from(size).expect("fits")],
        )
        .expect("filler written");
    }

    fn free(&self, _process: &Process) {
        std::fs::remove_file(&self.filler).expect("filler removed");
    }
}

impl Drop for FullTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

/// Free bytes on the file system of `path`, as `df` reports them.
fn fs_available(path: &Path) -> u64 {
    let output = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("df runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .expect("df prints the free bytes")
}

#[tokio::test]
async fn a_file_size_limit_loses_no_answered_create_and_the_server_recovers() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let fault = FileSizeLimit {
        limit_bytes: 1024 * 1024,
    };
    fill_the_disk_then_free_it(&fault, &directory.path().join("tasks.db")).await;
}

#[tokio::test]
async fn a_full_tmpfs_loses_no_answered_create_and_the_server_recovers() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let Some(tmpfs) = FullTmpfs::mount(directory.path()) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (the test needs root)");
        return;
    };
    let path = tmpfs.mount_point.join("tasks.db");
    fill_the_disk_then_free_it(&tmpfs, &path).await;
}

async fn fill_the_disk_then_free_it(fault: &dyn Fault, path: &Path) {
    let store = format!("sqlite://{}", path.display());
    // One slot and long sleeps: the tasks stay pending, so the inserts are
    // what fills the disk.
    let arguments = ["--store", store.as_str(), "--max-concurrent", "1"];
    let process = fault.start(&arguments);
    let mut client = process.client().await;
    fault.fill();

    let mut acknowledged: Vec<String> = Vec::new();
    let mut refused = 0;
    for number in 0..MOST_CREATES {
        match create_big(&mut client, number).await {
            Ok(id) => acknowledged.push(id),
            Err(code) => {
                assert_eq!(code, Code::Unavailable, "a failed write is UNAVAILABLE");
                refused += 1;
                if refused == 5 {
                    break;
                }
            }
        }
    }
    assert_eq!(refused, 5, "the disk never filled up");
    assert!(
        !acknowledged.is_empty(),
        "nothing fit before the disk filled"
    );

    // While the store cannot write: the task service is not serving, the
    // process is; creates are refused.
    process.expect_store_failure_reported().await;
    let refused_now = create_big(&mut client, MOST_CREATES).await;
    assert_eq!(refused_now, Err(Code::Unavailable));

    // Room again: the server finds out by itself, without a restart.
    fault.free(&process);
    process.expect_store_recovery_reported().await;
    for number in 0..5 {
        let id = create_big(&mut client, MOST_CREATES + 1 + number)
            .await
            .expect("creates succeed once there is room");
        acknowledged.push(id);
    }

    let mut process = process;
    process.kill_hard();
    let restarted = start_binary(&arguments, &[]);
    let mut client = restarted.client().await;
    let lost = missing_tasks(&mut client, &acknowledged).await;
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged creates lost after kill -9",
        lost.len(),
        acknowledged.len()
    );
}

async fn create_big(
    client: &mut TaskServiceClient<Channel>,
    number: usize,
) -> Result<String, Code> {
    let data = json!({"seconds": 3600, "padding": "x".repeat(DATA_BYTES)});
    let create = client.create_task(request(&format!("big {number}"), "sleep", Some(data)));
    match tokio::time::timeout(CREATE_PATIENCE, create).await {
        Ok(Ok(task)) => Ok(task.into_inner().id),
        Ok(Err(status)) => Err(status.code()),
        Err(_) => panic!("a create got no answer within {CREATE_PATIENCE:?}"),
    }
}

#[tokio::test]
async fn a_schedule_is_held_back_while_the_disk_is_full_and_fires_again_after() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let fault = FileSizeLimit {
        limit_bytes: 1024 * 1024,
    };
    let path = directory.path().join("tasks.db");
    let store = format!("sqlite://{}", path.display());
    let arguments = ["--store", store.as_str(), "--max-concurrent", "1"];
    let mut process = fault.start(&arguments);
    let mut client = process.client().await;
    let schedule = create_schedule(
        &mut client,
        schedule_request(
            "@every 1s",
            pb::OverlapPolicy::Allow,
            request(
                "tick",
                "echo",
                Some(json!({"padding": "x".repeat(DATA_BYTES)})),
            ),
        ),
    )
    .await;
    wait_for_tasks(&client, &schedule.id, 1).await;

    // Fills the file with large creates, one at a time, until one does not
    // fit: less room is left than a firing's task needs (it is as large).
    let mut number = 0;
    while create_big(&mut client, number).await.is_ok() {
        number += 1;
        assert!(number < MOST_CREATES, "the disk never filled up");
    }
    // The next firing fails with its batch. Throughout, no firing is half
    // done: the schedule never names a task that is not there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !process.logged_message("a firing's task could not be stored") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no firing met the full disk"
        );
        let read = get_schedule(&mut client, &schedule.id).await;
        let named = client
            .get_task(pb::GetTaskRequest {
                id: read.last_task_id.clone(),
            })
            .await;
        if named.is_err() {
            // Its firing failed between the two reads: the schedule must
            // have been taken back since.
            let again = get_schedule(&mut client, &schedule.id).await;
            assert_ne!(
                again.last_task_id, read.last_task_id,
                "the schedule names task {}, which is not there: {named:?}",
                read.last_task_id
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Taken back: the schedule names a task that is there.
    let read = get_schedule(&mut client, &schedule.id).await;
    let named = client
        .get_task(pb::GetTaskRequest {
            id: read.last_task_id.clone(),
        })
        .await;
    assert!(
        named.is_ok(),
        "after its firing failed, the schedule names task {}, which is not there: {named:?}",
        read.last_task_id
    );
    let before = tasks_of(&mut client, &schedule.id).await.len();

    fault.free(&process);
    wait_for_tasks(&client, &schedule.id, before + 1).await;

    // What the file holds is consistent: the schedule's last firing names a
    // task that is stored.
    let flushed = create_big(&mut client, number).await;
    assert!(flushed.is_ok(), "{flushed:?}");
    process.kill_hard();
    let restarted = start_binary(&arguments, &[]);
    let mut client = restarted.client().await;
    let stored = get_schedule(&mut client, &schedule.id).await;
    assert!(!stored.last_task_id.is_empty(), "{stored:?}");
    let missing = missing_tasks(&mut client, std::slice::from_ref(&stored.last_task_id)).await;
    assert!(
        missing.is_empty(),
        "the schedule's last task {} is not in the file",
        stored.last_task_id
    );
}
