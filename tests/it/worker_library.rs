//! The Rust worker library (`task_processor::worker`) against the real
//! server in process: runs, results, progress, failures and retries,
//! cancellation, its concurrency limit, reconnecting, draining, and a
//! refusal it must not retry.
//!
//! Every handler here is a `Probe`: it records what it saw and waits on a
//! gate the test opens, so no test depends on how fast anything runs.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::{Value as JsonValue, json};
use task_processor::{
    config::{AuthSettings, Config, TlsSettings},
    pb::{self, worker_service_client::WorkerServiceClient},
    worker::{Cancellation, Handler, Job, JobError, Worker, WorkerBuilder, WorkerError},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::{
    retries::policy,
    security::{Files, ONE_PER_ROLE, Pki, principals_yaml, tls_client, with_token},
    support::{
        DEADLINE, TestServer, create, eventually, get, json, request, status_of, test_config,
        wait_for_attempt, wait_for_status,
    },
};

/// The kind the workers of these tests run.
const KIND: &str = "resize";

/// A server that hands `resize` tasks to workers, with room for more runs
/// than any worker here takes, so the worker's own limit is what counts.
fn worker_config() -> Config {
    Config {
        worker_kinds: vec![KIND.to_owned()],
        max_concurrent: 10,
        ..test_config()
    }
}

/// A worker for `resize` on `probe`, reconnecting fast, as tests want.
fn worker_for(endpoint: impl Into<String>, probe: &Probe) -> WorkerBuilder {
    Worker::builder(endpoint)
        .name("w1")
        .handle(KIND, probe.handler())
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .shutdown_grace(DEADLINE)
}

/// A worker running in the background until `stop`.
struct RunningWorker {
    stop: CancellationToken,
    running: JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    fn spawn(builder: WorkerBuilder) -> Self {
        let worker = builder.build().expect("valid worker settings");
        let stop = CancellationToken::new();
        let running = tokio::spawn({
            let stop = stop.clone();
            async move { worker.run_until(stop.cancelled_owned()).await }
        });
        Self { stop, running }
    }

    /// Signals shutdown (SIGTERM, for a real worker).
    fn signal_stop(&self) {
        self.stop.cancel();
    }

    /// What `run_until` returned, failing after the deadline.
    async fn finished(self) -> Result<(), WorkerError> {
        tokio::time::timeout(DEADLINE, self.running)
            .await
            .expect("run_until returns")
            .expect("the worker task did not panic")
    }

    async fn stop(self) {
        self.signal_stop();
        self.finished().await.expect("a clean stop");
    }
}

/// A handler that records its runs and waits for the test.
///
/// `data.fail` = "permanent" or "retryable" fails at once; `data.progress`
/// reports 50 % "halfway" first. Otherwise a run waits for a permit of the
/// gate (or its cancellation) and returns `{"echo": data, "attempt": n}`.
#[derive(Clone)]
struct Probe {
    gate: Arc<Semaphore>,
    running: Arc<AtomicUsize>,
    most_running: Arc<AtomicUsize>,
    started: Arc<Mutex<Vec<(String, u32)>>>,
    cancelled: Arc<Mutex<Vec<(String, u32, Cancellation)>>>,
}

impl Probe {
    fn new() -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            running: Arc::default(),
            most_running: Arc::default(),
            started: Arc::default(),
            cancelled: Arc::default(),
        }
    }

    fn handler(&self) -> impl Handler {
        let probe = self.clone();
        move |job: Job| {
            let probe = probe.clone();
            async move { probe.run(job).await }
        }
    }

    async fn run(&self, job: Job) -> Result<JsonValue, JobError> {
        self.started
            .lock()
            .unwrap()
            .push((job.task_id().to_owned(), job.attempt()));
        match job.data()["fail"].as_str() {
            Some("permanent") => return Err(JobError::permanent("the image is corrupt")),
            Some("retryable") => return Err(JobError::retryable("the store is down")),
            _ => {}
        }
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        if job.data()["progress"].as_bool() == Some(true) {
            job.progress(50, "halfway").await;
        }
        let outcome = tokio::select! {
            permit = self.gate.acquire() => {
                permit.unwrap().forget();
                Ok(json!({ "echo": job.data(), "attempt": job.attempt() }))
            }
            () = job.cancelled() => {
                let cancellation = job.cancellation().cloned().expect("a reason once cancelled");
                self.cancelled.lock().unwrap().push((job.task_id().to_owned(), job.attempt(), cancellation));
                Err(JobError::retryable("stopped"))
            }
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        outcome
    }

    fn release(&self, runs: usize) {
        self.gate.add_permits(runs);
    }

    fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    fn started(&self) -> Vec<(String, u32)> {
        self.started.lock().unwrap().clone()
    }

    fn cancellation_of(&self, task_id: &str, attempt: u32) -> Option<Cancellation> {
        self.cancelled
            .lock()
            .unwrap()
            .iter()
            .find(|(id, run, _)| id == task_id && *run == attempt)
            .map(|(_, _, cancellation)| cancellation.clone())
    }
}

#[tokio::test]
async fn a_task_runs_on_the_worker_and_completes_with_its_result() {
    let server = TestServer::start_with(worker_config()).await;
    let mut client = server.client().await;
    let probe = Probe::new();
    let worker = RunningWorker::spawn(worker_for(server.url(), &probe));
    probe.release(1);
    let task = create(&mut client, "photo", KIND, Some(json!({ "width": 64 }))).await;
    let done = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    assert_eq!(
        json(&done.result),
        Some(json!({ "echo": { "width": 64 }, "attempt": 1 }))
    );
    assert_eq!(done.node, "test-node/w1");
    assert_eq!(probe.started(), [(task.id.clone(), 1)]);
    worker.stop().await;
}

#[tokio::test]
async fn progress_reaches_a_watcher() {
    let server = TestServer::start_with(worker_config()).await;
    let mut client = server.client().await;
    let probe = Probe::new();
    let worker = RunningWorker::spawn(worker_for(server.url(), &probe));
    let task = create(
        &mut client,
        "photo",
        KIND,
        Some(json!({ "progress": true })),
    )
    .await;
    let mut watch = client
        .watch_task(pb::WatchTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect("watch opened")
        .into_inner();
    // The handler waits on the gate after reporting, so the report must
    // reach the watcher before the task can end.
    let reported = tokio::time::timeout(DEADLINE, async {
        while let Some(message) = watch.next().await {
            let task = message.expect("watch ok").task.expect("a task");
            if let Some(progress) = task.progress {
                return Some(progress);
            }
        }
        None
    })
    .await
    .expect("progress within the deadline")
    .expect("progress before the watch ended");
    assert_eq!(reported.percent, 50);
    assert_eq!(reported.message, "halfway");
    probe.release(1);
    wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_permanent_error_fails_the_task_without_a_retry() {
    let server = TestServer::start_with(worker_config()).await;
    let client = server.client().await;
    let probe = Probe::new();
    let worker = RunningWorker::spawn(worker_for(server.url(), &probe));
    let task = create_with_retries(&client, json!({ "fail": "permanent" }), 3).await;
    let failed = wait_for_status(&client, &task.id, pb::TaskStatus::Failed).await;
    assert_eq!(failed.attempt, 1, "a permanent failure is not retried");
    assert_eq!(failed.error, "the image is corrupt");
    assert_eq!(probe.started(), [(task.id.clone(), 1)]);
    worker.stop().await;
}

#[tokio::test]
async fn a_retryable_error_is_retried_per_the_retry_policy() {
    let server = TestServer::start_with(worker_config()).await;
    let client = server.client().await;
    let probe = Probe::new();
    let worker = RunningWorker::spawn(worker_for(server.url(), &probe));
    let task = create_with_retries(&client, json!({ "fail": "retryable" }), 2).await;
    let failed = wait_for_status(&client, &task.id, pb::TaskStatus::Failed).await;
    assert_eq!(failed.attempt, 2, "one retry, as the policy allows");
    assert_eq!(failed.error, "the store is down");
    assert_eq!(
        probe.started(),
        [(task.id.clone(), 1), (task.id.clone(), 2)]
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_cancel_reaches_the_handler_and_frees_the_slot() {
    let server = TestServer::start_with(worker_config()).await;
    let mut client = server.client().await;
    let probe = Probe::new();
    let worker = RunningWorker::spawn(worker_for(server.url(), &probe).max_concurrent(1));
    let first = create(&mut client, "first", KIND, None).await;
    wait_for_status(&client, &first.id, pb::TaskStatus::Running).await;
    client
        .cancel_task(pb::CancelTaskRequest {
            id: first.id.clone(),
        })
        .await
        .expect("cancel");
    wait_for_status(&client, &first.id, pb::TaskStatus::Cancelled).await;
    let cancellation = eventually("the handler to see the cancellation", || {
        let cancellation = probe.cancellation_of(&first.id, 1);
        async move { cancellation }
    })
    .await;
    assert_eq!(cancellation.cause, pb::CancellationCause::Cancelled);
    assert!(!cancellation.reason.is_empty());
    // The worker's only slot is free again only if it sent an outcome for
    // the cancelled run.
    probe.release(1);
    let second = create(&mut client, "second", KIND, None).await;
    wait_for_status(&client, &second.id, pb::TaskStatus::Completed).await;
    assert_eq!(
        status_of(&get(&mut client, &first.id).await),
        pb::TaskStatus::Cancelled
    );
    worker.stop().await;
}

#[tokio::test]
async fn the_worker_runs_no_more_than_max_concurrent_at_once() {
    let server = TestServer::start_with(worker_config()).await;
    let mut client = server.client().await;
    let probe = Probe::new();
    let worker = RunningWorker::spawn(worker_for(server.url(), &probe).max_concurrent(2));
    let mut ids = Vec::new();
    for index in 0..5 {
        ids.push(
            create(&mut client, &format!("photo {index}"), KIND, None)
                .await
                .id,
        );
    }
    eventually("two runs at once", || {
        let running = probe.running();
        async move { (running >= 2).then_some(()) }
    })
    .await;
    // The server knows the limit from the hello, and holds the rest.
    let mut workers = WorkerServiceClient::new(server.channel().await);
    let listed = workers
        .list_workers(pb::ListWorkersRequest {})
        .await
        .expect("list workers")
        .into_inner()
        .workers;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].max_concurrent, 2);
    assert_eq!(listed[0].kinds, [KIND]);
    // One permit at a time: each freed slot takes the next task.
    for done in 1..=ids.len() {
        probe.release(1);
        eventually(&format!("{done} tasks completed"), || {
            let client = client.clone();
            let ids = ids.clone();
            async move {
                let mut client = client;
                let mut completed = 0;
                for id in &ids {
                    if status_of(&get(&mut client, id).await) == pb::TaskStatus::Completed {
                        completed += 1;
                    }
                }
                (completed >= done).then_some(())
            }
        })
        .await;
    }
    assert_eq!(probe.most_running.load(Ordering::SeqCst), 2);
    worker.stop().await;
}

#[tokio::test]
async fn a_cut_stream_is_reconnected_and_its_task_runs_again() {
    let server = TestServer::start_with(worker_config()).await;
    let mut client = server.client().await;
    let relay = Relay::start(server.address).await;
    let probe = Probe::new();
    let worker = RunningWorker::spawn(worker_for(format!("http://{}", relay.address), &probe));
    let task = create(&mut client, "photo", KIND, None).await;
    wait_for_status(&client, &task.id, pb::TaskStatus::Running).await;
    relay.cut();
    // The server gives the run back; the worker stops its handler and
    // reconnects, and the task runs again on the new stream.
    wait_for_attempt(&client, &task.id, 2).await;
    eventually("the cut-short run to be stopped", || {
        let cancellation = probe.cancellation_of(&task.id, 1);
        async move { cancellation }
    })
    .await;
    eventually("the second run to start on the worker", || {
        let started = probe.started().contains(&(task.id.clone(), 2));
        async move { started.then_some(()) }
    })
    .await;
    probe.release(1);
    let done = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    assert_eq!(
        json(&done.result),
        Some(json!({ "echo": null, "attempt": 2 }))
    );
    assert!(relay.connections() >= 2, "the worker connected again");
    worker.stop().await;
}

#[tokio::test]
async fn a_restarted_server_gets_its_worker_back() {
    let mut first_server = TestServer::start_with(worker_config()).await;
    let relay = Relay::start(first_server.address).await;
    let probe = Probe::new();
    let worker = RunningWorker::spawn(worker_for(format!("http://{}", relay.address), &probe));
    let mut client = first_server.client().await;
    let running = create(&mut client, "running at shutdown", KIND, None).await;
    wait_for_status(&client, &running.id, pb::TaskStatus::Running).await;
    first_server.begin_shutdown().await.expect("server stopped");
    let cancellation = eventually("the shutdown to reach the handler", || {
        let cancellation = probe.cancellation_of(&running.id, 1);
        async move { cancellation }
    })
    .await;
    assert_eq!(cancellation.cause, pb::CancellationCause::ShuttingDown);

    let second_server = TestServer::start_with(worker_config()).await;
    relay.retarget(second_server.address);
    let mut client = second_server.client().await;
    probe.release(1);
    let task = create(&mut client, "after the restart", KIND, None).await;
    wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    assert!(!worker.running.is_finished(), "the worker kept going");
    worker.stop().await;
}

#[tokio::test]
async fn drain_finishes_the_running_task_and_takes_no_new_one() {
    // One slot on the server: the second task waits for the first, so the
    // slot the first frees is exactly what a worker that did not drain
    // would be handed.
    let server = TestServer::start_with(Config {
        max_concurrent: 1,
        ..worker_config()
    })
    .await;
    let mut client = server.client().await;
    let probe = Probe::new();
    let worker = RunningWorker::spawn(worker_for(server.url(), &probe).max_concurrent(2));
    let first = create(&mut client, "first", KIND, None).await;
    wait_for_status(&client, &first.id, pb::TaskStatus::Running).await;
    let second = create(&mut client, "second", KIND, None).await;
    // Release, then signal, with no await between: the first run's end and
    // the signal reach the worker's loop together, and the drain must still
    // go out before that run's outcome frees the server's slot.
    probe.release(2);
    worker.signal_stop();
    worker
        .finished()
        .await
        .expect("a clean stop after the drain");
    let done = get(&mut client, &first.id).await;
    assert_eq!(status_of(&done), pb::TaskStatus::Completed);
    assert_eq!(
        json(&done.result),
        Some(json!({ "echo": null, "attempt": 1 }))
    );
    assert_eq!(probe.started(), [(first.id.clone(), 1)]);
    assert_eq!(
        status_of(&get(&mut client, &second.id).await),
        pb::TaskStatus::Pending
    );
    // The second task was only waiting: the next worker runs it.
    let next = RunningWorker::spawn(worker_for(server.url(), &probe));
    wait_for_status(&client, &second.id, pb::TaskStatus::Completed).await;
    next.stop().await;
}

#[tokio::test]
async fn a_run_that_outlasts_the_shutdown_grace_is_given_back() {
    let server = TestServer::start_with(worker_config()).await;
    let mut client = server.client().await;
    let probe = Probe::new();
    let worker = RunningWorker::spawn(
        worker_for(server.url(), &probe).shutdown_grace(Duration::from_millis(200)),
    );
    let task = create(&mut client, "slow", KIND, None).await;
    wait_for_status(&client, &task.id, pb::TaskStatus::Running).await;
    worker.signal_stop();
    worker
        .finished()
        .await
        .expect("a clean stop after the grace");
    assert!(
        probe.cancellation_of(&task.id, 1).is_some(),
        "the handler was told to stop"
    );
    // Given back: the next worker runs it again.
    probe.release(1);
    let next = RunningWorker::spawn(worker_for(server.url(), &probe));
    wait_for_attempt(&client, &task.id, 2).await;
    wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    next.stop().await;
}

#[tokio::test]
async fn a_refused_hello_is_returned_not_retried() {
    let server = TestServer::start_with(worker_config()).await;
    let probe = Probe::new();
    let worker = RunningWorker::spawn(
        Worker::builder(server.url())
            .handle("not-a-worker-kind", probe.handler())
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    );
    let error = worker.finished().await.expect_err("refused");
    assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");
    assert!(error.to_string().contains("hello.kinds"), "{error}");
}

#[tokio::test]
async fn over_tls_a_token_with_the_work_role_runs_tasks_and_others_are_refused() {
    let files = Files::new();
    let pki = Pki::new("worker test CA");
    let server_pair = pki.server(1);
    files.write("server.crt", &server_pair.cert_pem);
    files.write("server.key", &server_pair.key_pem);
    let principals = files.write("principals.yaml", &principals_yaml(ONE_PER_ROLE));
    let server = TestServer::start_with(Config {
        tls: TlsSettings {
            cert_file: Some(files.path("server.crt")),
            key_file: Some(files.path("server.key")),
            client_ca_file: None,
        },
        auth: AuthSettings {
            principals_file: Some(principals),
            ..AuthSettings::default()
        },
        ..worker_config()
    })
    .await;
    let endpoint = format!("https://{}", server.address);
    let probe = Probe::new();
    let secure = |token: &str| {
        worker_for(endpoint.clone(), &probe)
            .tls_ca_pem(pki.ca_pem())
            .token(token)
    };

    // A wrong token, and a right one without the role `work`: refused, once.
    let unknown = RunningWorker::spawn(secure("not-a-token"));
    let error = unknown.finished().await.expect_err("unknown token");
    assert_eq!(error.code(), Some(Code::Unauthenticated), "{error}");
    let reader = RunningWorker::spawn(secure("reader-token"));
    let error = reader.finished().await.expect_err("no work role");
    assert_eq!(error.code(), Some(Code::PermissionDenied), "{error}");

    let worker = RunningWorker::spawn(secure("worker-token"));
    let mut client = tls_client(server.address, &pki.ca_pem(), None).await;
    probe.release(1);
    let task = client
        .create_task(with_token(
            request("over tls", KIND, Some(json!({ "n": 7 }))),
            "writer-token",
        ))
        .await
        .expect("create")
        .into_inner();
    let done = eventually("the task to complete over TLS", || {
        let mut client = client.clone();
        let id = task.id.clone();
        async move {
            let task = client
                .get_task(with_token(pb::GetTaskRequest { id }, "reader-token"))
                .await
                .expect("get")
                .into_inner();
            (status_of(&task) == pb::TaskStatus::Completed).then_some(task)
        }
    })
    .await;
    assert_eq!(
        json(&done.result),
        Some(json!({ "echo": { "n": 7 }, "attempt": 1 }))
    );
    worker.stop().await;
}

/// Creates a `resize` task with `data` and `max_attempts` runs, 10 ms apart.
async fn create_with_retries(
    client: &crate::support::Client,
    data: JsonValue,
    max_attempts: u32,
) -> pb::Task {
    client
        .clone()
        .create_task(pb::CreateTaskRequest {
            retry_policy: Some(policy(max_attempts, Duration::from_millis(10))),
            ..request("photo", KIND, Some(data))
        })
        .await
        .expect("create")
        .into_inner()
}

/// A TCP relay between the worker and a server, to cut the worker's
/// connections and to point it at another server, as a restart at the same
/// address would.
struct Relay {
    address: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    forwarding: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepted: Arc<AtomicUsize>,
    accepting: JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let forwarding = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let accepting = tokio::spawn({
            let target = target.clone();
            let forwarding = forwarding.clone();
            let accepted = accepted.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let to = *target.lock().unwrap();
                    let forward = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(to).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    forwarding.lock().unwrap().push(forward);
                }
            }
        });
        Self {
            address,
            target,
            forwarding,
            accepted,
            accepting,
        }
    }

    /// Closes every connection through the relay (new ones go through).
    fn cut(&self) {
        for forward in self.forwarding.lock().unwrap().drain(..) {
            forward.abort();
        }
    }

    /// Sends new connections to `target`.
    fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}
