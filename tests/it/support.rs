//! Test support: starting the real server on 127.0.0.1:0, clients, test
//! processors, and polling with deadlines (never bare sleeps).

use std::{
    collections::HashSet,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::Value as JsonValue;
use task_processor::{
    config::Config,
    manager::{ManagerHandle, ManagerStats},
    metrics::Metrics,
    pb::{self, task_service_client::TaskServiceClient},
    processor::{Processor, ProcessorError, Registry, TaskContext},
    server,
    store::StoreUrl,
    task::TaskId,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Code, Status, transport::Channel};

/// How long any polled condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub type Client = TaskServiceClient<Channel>;

/// Settings for tests: a fast demo, no drain, no grace.
pub fn test_config() -> Config {
    Config {
        demo_duration: Duration::from_millis(100),
        drain_period: Duration::ZERO,
        shutdown_grace: Duration::ZERO,
        node_name: "test-node".into(),
        // Replaced by a fresh store of the kind the test runs on.
        store: StoreUrl::Memory,
        ..Config::default()
    }
}

/// A running server and what a test needs to drive and inspect it.
pub struct TestServer {
    pub address: SocketAddr,
    pub admin_address: SocketAddr,
    pub manager: ManagerHandle,
    pub gate: Gate,
    stop: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    /// A server that runs one task at a time, so tests can hold the only
    /// slot and keep everything else waiting.
    pub async fn with_one_slot() -> Self {
        Self::start_with(Config {
            max_concurrent: 1,
            ..test_config()
        })
        .await
    }

    pub async fn start_with(config: Config) -> Self {
        let gate = Gate::default();
        let mut registry = Registry::with_builtins(config.demo_duration);
        registry.register("gate", gate.clone());
        registry.register("stubborn", StubbornProcessor);
        registry.register("panic", PanicProcessor);
        registry.register("chatty", ChattyProcessor);
        Self::start_with_registry(config, registry, gate).await
    }

    async fn start_with_registry(mut config: Config, registry: Registry, gate: Gate) -> Self {
        let registry = server::registry_with_workers(&config, registry).expect("worker kinds");
        if config.store == StoreUrl::Memory {
            config.store = crate::stores::fresh_store().await;
        }
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = grpc.local_addr().expect("local address");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin_address = admin.local_addr().expect("local address");
        let listeners = server::Listeners {
            grpc,
            admin: Some(admin),
        };
        let metrics = Metrics::new();
        let manager = ManagerHandle::start(
            config.manager_config(),
            registry.clone(),
            metrics.clone(),
            &config.store,
        )
        .await
        .unwrap_or_else(|error| panic!("open {}: {error:?}", config.store));
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn({
            let manager = manager.clone();
            async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                server::run_with(listeners, config, registry, manager, metrics, shutdown)
                    .await
                    .expect("server runs and stops cleanly");
            }
        });
        Self {
            address,
            admin_address,
            manager,
            gate,
            stop: Some(stop),
            serving: Some(serving),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self) -> Client {
        TaskServiceClient::new(self.channel().await)
    }

    /// Starts the shutdown sequence; returns a handle that finishes when
    /// the server has stopped.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.serving.take().expect("server still running")
    }

    pub async fn stats(&self) -> ManagerStats {
        self.manager.stats().await.expect("manager alive")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(serving) = &self.serving {
            serving.abort();
        }
    }
}

/// Polls `check` until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A create request of `kind` with `data` given as JSON.
pub fn request(name: &str, kind: &str, data: Option<JsonValue>) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        name: name.into(),
        kind: kind.into(),
        data: data.as_ref().map(task_processor::api::json::json_to_proto),
        ..Default::default()
    }
}

pub async fn create(
    client: &mut Client,
    name: &str,
    kind: &str,
    data: Option<JsonValue>,
) -> pb::Task {
    client
        .create_task(request(name, kind, data))
        .await
        .unwrap_or_else(|status| panic!("create {name}: {status:?}"))
        .into_inner()
}

pub async fn get(client: &mut Client, id: &str) -> pb::Task {
    client
        .get_task(pb::GetTaskRequest { id: id.into() })
        .await
        .unwrap_or_else(|status| panic!("get {id}: {status:?}"))
        .into_inner()
}

/// Every task the server holds, oldest first, page after page.
pub async fn list_all(client: &mut Client) -> Vec<pb::Task> {
    let mut tasks = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_tasks(pb::ListTasksRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return tasks;
        }
        page_token = page.next_page_token;
    }
}

/// How many tasks the server holds, as clients see them.
pub async fn count_tasks(client: &mut Client) -> usize {
    list_all(client).await.len()
}

/// Polls until the task is on its `attempt`-th run.
pub async fn wait_for_attempt(client: &Client, id: &str, attempt: u32) -> pb::Task {
    eventually(&format!("task {id} to run as attempt {attempt}"), || {
        let mut client = client.clone();
        async move {
            let task = get(&mut client, id).await;
            (task.attempt == attempt).then_some(task)
        }
    })
    .await
}

pub fn status_of(task: &pb::Task) -> pb::TaskStatus {
    pb::TaskStatus::try_from(task.status).expect("known status")
}

/// Polls until the task has `status`.
pub async fn wait_for_status(client: &Client, id: &str, status: pb::TaskStatus) -> pb::Task {
    eventually(&format!("task {id} to be {status:?}"), || {
        let mut client = client.clone();
        async move {
            let task = get(&mut client, id).await;
            (status_of(&task) == status).then_some(task)
        }
    })
    .await
}

/// The JSON form of a task's `result` or `data`.
pub fn json(value: &Option<prost_types::Value>) -> Option<JsonValue> {
    value
        .as_ref()
        .map(|value| task_processor::api::json::json_from_proto(value).expect("valid JSON"))
}

/// Asserts an `INVALID_ARGUMENT` whose message and `BadRequest` detail name
/// `field`.
pub fn assert_invalid_argument(status: &Status, field: &str) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "message {:?} should name {field}",
        status.message()
    );
    let bad_request = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest detail in {status:?}"));
    assert!(
        bad_request
            .field_violations
            .iter()
            .any(|violation| violation.field == field && !violation.description.is_empty()),
        "BadRequest {bad_request:?} should name {field}"
    );
}

/// A processor the test opens and closes: each run waits for a permit (or
/// cancellation), and the gate records how many run at once and in which
/// order they started. A task whose data holds `"fail_attempts": n` fails
/// its first `n` runs at once, without waiting, so a test can see a retry
/// without racing a timeout.
#[derive(Clone)]
pub struct Gate {
    permits: Arc<tokio::sync::Semaphore>,
    running: Arc<AtomicUsize>,
    most_running: Arc<AtomicUsize>,
    started: Arc<Mutex<Vec<TaskId>>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(0)),
            running: Arc::default(),
            most_running: Arc::default(),
            started: Arc::default(),
        }
    }
}

impl Gate {
    /// Lets `count` more runs finish.
    pub fn release(&self, count: usize) {
        self.permits.add_permits(count);
    }

    pub fn most_running(&self) -> usize {
        self.most_running.load(Ordering::SeqCst)
    }

    pub fn started(&self) -> Vec<String> {
        self.started
            .lock()
            .expect("not poisoned")
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}

#[async_trait::async_trait]
impl Processor for Gate {
    async fn process(&self, context: TaskContext) -> Result<JsonValue, ProcessorError> {
        self.started
            .lock()
            .expect("not poisoned")
            .push(context.task_id);
        let fail_attempts = context
            .data()
            .get("fail_attempts")
            .and_then(JsonValue::as_u64);
        if fail_attempts.is_some_and(|failures| u64::from(context.attempt) <= failures) {
            return Err(ProcessorError::new(format!(
                "gate failed attempt {} as asked",
                context.attempt
            )));
        }
        let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now_running, Ordering::SeqCst);
        let outcome = tokio::select! {
            permit = self.permits.acquire() => {
                permit.expect("semaphore open").forget();
                Ok(context.data().clone())
            }
            () = context.cancellation.cancelled() => Err(ProcessorError::new("stopped")),
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

/// Ignores cancellation entirely: only a forced abort stops it.
pub struct StubbornProcessor;

#[async_trait::async_trait]
impl Processor for StubbornProcessor {
    async fn process(&self, _context: TaskContext) -> Result<JsonValue, ProcessorError> {
        std::future::pending::<()>().await;
        Ok(JsonValue::Null)
    }
}

/// Panics at once.
pub struct PanicProcessor;

#[async_trait::async_trait]
impl Processor for PanicProcessor {
    async fn process(&self, _context: TaskContext) -> Result<JsonValue, ProcessorError> {
        panic!("deliberate test panic");
    }
}

/// Reports progress `data.reports` times as fast as it can, then completes.
pub struct ChattyProcessor;

#[async_trait::async_trait]
impl Processor for ChattyProcessor {
    async fn process(&self, context: TaskContext) -> Result<JsonValue, ProcessorError> {
        let reports = context
            .data()
            .get("reports")
            .and_then(JsonValue::as_u64)
            .unwrap_or(100);
        for report in 1..=reports {
            let percent = (report * 100 / reports) as u32;
            context
                .report_progress(percent, format!("report {report}"))
                .await;
        }
        Ok(JsonValue::from(reports))
    }
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub async fn http_get(address: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("admin port open");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Those of `ids` that no task on the server has: what a store lost.
pub async fn missing_tasks(client: &mut Client, ids: &[String]) -> Vec<String> {
    let stored: HashSet<String> = list_all(client)
        .await
        .into_iter()
        .map(|task| task.id)
        .collect();
    ids.iter()
        .filter(|id| !stored.contains(*id))
        .cloned()
        .collect()
}

/// gRPC health of `service` ("" for the process) as the server reports it.
pub async fn health_status(
    health: &tonic_health::pb::health_client::HealthClient<Channel>,
    service: &str,
) -> tonic_health::pb::health_check_response::ServingStatus {
    let mut health = health.clone();
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health answers");
    response.into_inner().status()
}

/// Polls the task service's gRPC health until it is `wanted`.
pub async fn wait_for_task_service_health(
    health: &tonic_health::pb::health_client::HealthClient<Channel>,
    wanted: tonic_health::pb::health_check_response::ServingStatus,
) {
    eventually(&format!("task service health {wanted:?}"), || async {
        (health_status(health, "taskprocessor.v1.TaskService").await == wanted).then_some(())
    })
    .await;
}
