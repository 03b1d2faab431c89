//! Tenants, on every store: two principals bound to tenants and one bound
//! to none. Each tenant sees and touches only its own tasks (another's are
//! `NOT_FOUND` for Get, Cancel, Delete and Watch, and never appear in
//! ListTasks or WatchTasks); the principal without a tenant sees all;
//! `request_id`s are per tenant; SQLite keeps tenants across a restart;
//! PostgreSQL rows from before the migration belong to no tenant.

use std::time::Duration;

use task_processor::{
    config::{AuthSettings, Config, TenantQuota},
    pb::{self, task_service_client::TaskServiceClient},
    store::StoreUrl,
};
use tokio_stream::StreamExt as _;
use tonic::{
    Code, Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use super::Files;
use crate::{
    support::{TestServer, request, status_of, test_config},
    watch_tasks::{Stream, initial_list, next_task},
};

/// alice and bob each belong to a tenant; ops to none (and is admin).
const PRINCIPALS: &str = "\
principals:
  - name: alice
    token_sha256: TOKEN_A
    roles: [read, write]
    tenant: team-a
  - name: bob
    token_sha256: TOKEN_B
    roles: [read, write]
    tenant: team-b
  - name: ops
    token_sha256: TOKEN_OPS
    roles: [admin]
  - name: worker-a
    token_sha256: TOKEN_WORKER_A
    roles: [work]
    tenant: team-a
";

fn principals_yaml() -> String {
    use task_processor::auth::token_sha256_hex;
    PRINCIPALS
        .replace("TOKEN_A", &token_sha256_hex("alice-token"))
        .replace("TOKEN_B", &token_sha256_hex("bob-token"))
        .replace("TOKEN_OPS", &token_sha256_hex("ops-token"))
        .replace("TOKEN_WORKER_A", &token_sha256_hex("worker-a-token"))
}

/// Sends `authorization: Bearer <token>` with every call.
#[derive(Clone)]
struct Bearer(&'static str);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = format!("Bearer {}", self.0)
            .parse()
            .map_err(|_| Status::internal("a header value"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

type As = TaskServiceClient<InterceptedService<Channel, Bearer>>;

struct Principals {
    alice: As,
    bob: As,
    ops: As,
}

async fn clients(server: &TestServer) -> Principals {
    let channel = server.channel().await;
    let as_ = |token| TaskServiceClient::with_interceptor(channel.clone(), Bearer(token));
    Principals {
        alice: as_("alice-token"),
        bob: as_("bob-token"),
        ops: as_("ops-token"),
    }
}

/// A server on the current store (or `store`) with the three principals.
async fn start(files: &Files, store: StoreUrl) -> TestServer {
    start_with(files, store, test_config()).await
}

/// The same, with the rest of `config`.
async fn start_with(files: &Files, store: StoreUrl, config: Config) -> TestServer {
    let principals = files.write("principals.yaml", &principals_yaml());
    TestServer::start_with(Config {
        auth: AuthSettings {
            principals_file: Some(principals),
            ..config.auth.clone()
        },
        store,
        ..config
    })
    .await
}

async fn create(client: &mut As, name: &str, kind: &str) -> pb::Task {
    client
        .create_task(request(name, kind, None))
        .await
        .unwrap_or_else(|status| panic!("create {name}: {status:?}"))
        .into_inner()
}

async fn create_with_key(client: &mut As, name: &str, request_id: &str) -> pb::Task {
    let mut create = request(name, "gate", None);
    create.request_id = request_id.into();
    client
        .create_task(create)
        .await
        .unwrap_or_else(|status| panic!("create {name}: {status:?}"))
        .into_inner()
}

/// The names of every task `client` lists, page after page.
async fn listed(client: &mut As) -> Vec<String> {
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_tasks(pb::ListTasksRequest {
                page_size: 2,
                page_token,
                ..Default::default()
            })
            .await
            .expect("listed")
            .into_inner();
        names.extend(page.tasks.into_iter().map(|task| task.name));
        if page.next_page_token.is_empty() {
            return names;
        }
        page_token = page.next_page_token;
    }
}

/// The code a call ended with.
fn code<T>(result: Result<T, Status>) -> Code {
    result.err().map_or(Code::Ok, |status| status.code())
}

/// The code of each single-task RPC `client` makes on task `id`.
async fn codes_on(client: &mut As, id: &str) -> [Code; 4] {
    let get = code(
        client
            .get_task(pb::GetTaskRequest { id: id.into() })
            .await
            .map(drop),
    );
    let watch = code(
        client
            .watch_task(pb::WatchTaskRequest { id: id.into() })
            .await
            .map(drop),
    );
    let cancel = code(
        client
            .cancel_task(pb::CancelTaskRequest { id: id.into() })
            .await
            .map(drop),
    );
    let delete = code(
        client
            .delete_task(pb::DeleteTaskRequest { id: id.into() })
            .await
            .map(drop),
    );
    [get, watch, cancel, delete]
}

async fn each_tenant_sees_and_touches_only_its_own_tasks() {
    let files = Files::new();
    let server = start(&files, StoreUrl::Memory).await;
    let Principals {
        mut alice,
        mut bob,
        mut ops,
    } = clients(&server).await;
    let a1 = create(&mut alice, "a1", "gate").await;
    let b1 = create(&mut bob, "b1", "gate").await;
    let a2 = create(&mut alice, "a2", "gate").await;
    let o1 = create(&mut ops, "o1", "gate").await;

    assert_eq!(listed(&mut alice).await, ["a1", "a2"]);
    assert_eq!(listed(&mut bob).await, ["b1"]);
    assert_eq!(listed(&mut ops).await, ["a1", "b1", "a2", "o1"]);

    // Another tenant's task, and one of no tenant, are as if absent: every
    // RPC on them is NOT_FOUND, and the cancel changed nothing.
    let not_found = [Code::NotFound; 4];
    assert_eq!(codes_on(&mut alice, &b1.id).await, not_found);
    assert_eq!(codes_on(&mut alice, &o1.id).await, not_found);
    assert_eq!(codes_on(&mut bob, &a1.id).await, not_found);
    let b1_now = ops
        .get_task(pb::GetTaskRequest { id: b1.id.clone() })
        .await
        .expect("ops sees b1")
        .into_inner();
    assert_ne!(status_of(&b1_now), pb::TaskStatus::Cancelled);

    // Its own: get and watch work; cancel, then delete once finished.
    let own = alice
        .get_task(pb::GetTaskRequest { id: a2.id.clone() })
        .await
        .expect("alice gets a2")
        .into_inner();
    assert_eq!(own.name, "a2");
    alice
        .watch_task(pb::WatchTaskRequest { id: a2.id.clone() })
        .await
        .expect("alice watches a2");
    let cancelled = alice
        .cancel_task(pb::CancelTaskRequest { id: a2.id.clone() })
        .await
        .expect("alice cancels a2")
        .into_inner();
    assert_eq!(status_of(&cancelled), pb::TaskStatus::Cancelled);
    alice
        .delete_task(pb::DeleteTaskRequest { id: a2.id.clone() })
        .await
        .expect("alice deletes a2");

    // The principal without a tenant acts on anyone's.
    ops.cancel_task(pb::CancelTaskRequest { id: b1.id.clone() })
        .await
        .expect("ops cancels b1");
    assert_eq!(listed(&mut bob).await, ["b1"]);
    server.gate.release(16);
}

async fn a_request_id_is_unique_per_tenant() {
    let files = Files::new();
    let server = start(&files, StoreUrl::Memory).await;
    let Principals {
        mut alice,
        mut bob,
        mut ops,
    } = clients(&server).await;
    let first = create_with_key(&mut alice, "same", "key-1").await;
    let again = create_with_key(&mut alice, "same", "key-1").await;
    assert_eq!(again.id, first.id, "a repeat within the tenant");
    let other = create_with_key(&mut bob, "same", "key-1").await;
    assert_ne!(other.id, first.id, "another tenant's key is its own");
    let none = create_with_key(&mut ops, "same", "key-1").await;
    assert_ne!(none.id, first.id);
    assert_ne!(none.id, other.id);
    // A batch too: bob's repeat finds bob's task.
    let batch = bob
        .batch_create_tasks(pb::BatchCreateTasksRequest {
            requests: vec![pb::CreateTaskRequest {
                request_id: "key-1".into(),
                ..request("same", "gate", None)
            }],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.tasks[0].id, other.id);
    assert_eq!(listed(&mut ops).await.len(), 3);
    server.gate.release(16);
}

async fn watch_tasks_shows_a_tenant_only_its_own_tasks_and_changes() {
    let files = Files::new();
    let server = start(&files, StoreUrl::Memory).await;
    let Principals {
        mut alice,
        mut bob,
        mut ops,
    } = clients(&server).await;
    create(&mut bob, "b-before", "echo").await;
    create(&mut alice, "a-before", "echo").await;
    let open = |client: &mut As| {
        let mut client = client.clone();
        async move {
            client
                .watch_tasks(pb::WatchTasksRequest {
                    send_initial: true,
                    ..Default::default()
                })
                .await
                .expect("watch opened")
                .into_inner()
        }
    };
    let mut alice_stream: Stream = open(&mut alice).await;
    let mut ops_stream: Stream = open(&mut ops).await;
    let (listed, _) = initial_list(&mut alice_stream).await;
    let names: Vec<_> = listed.iter().map(|task| task.name.as_str()).collect();
    assert_eq!(names, ["a-before"]);
    let (all, _) = initial_list(&mut ops_stream).await;
    assert_eq!(all.len(), 2);

    // bob's task changes first; alice's stream must skip all of it and
    // show her own next task first.
    let b_live = create(&mut bob, "b-live", "echo").await;
    let a_live = create(&mut alice, "a-live", "echo").await;
    loop {
        let (task, _) = next_task(&mut alice_stream).await;
        assert_ne!(task.id, b_live.id, "alice saw bob's task: {task:?}");
        assert!(
            task.name.starts_with("a-"),
            "alice saw another's task: {task:?}"
        );
        if task.id == a_live.id && status_of(&task) == pb::TaskStatus::Completed {
            break;
        }
    }
    // The principal without a tenant sees bob's change too.
    loop {
        let (task, _) = next_task(&mut ops_stream).await;
        if task.id == b_live.id {
            break;
        }
    }
    // Nothing of bob's is pending for alice either.
    let more = tokio::time::timeout(Duration::from_millis(300), alice_stream.next()).await;
    if let Ok(Some(Ok(message))) = more
        && let Some(task) = message.task
    {
        assert!(task.name.starts_with("a-"), "alice saw {task:?}");
    }
}

async fn schedules_belong_to_their_tenant_and_fire_its_tasks() {
    let files = Files::new();
    let server = start(&files, StoreUrl::Memory).await;
    let Principals {
        mut alice,
        mut bob,
        ops,
    } = clients(&server).await;
    let schedule = alice
        .create_schedule(crate::schedules::schedule_request(
            "@every 1s",
            pb::OverlapPolicy::Allow,
            request("tick", "echo", None),
        ))
        .await
        .expect("alice's schedule")
        .into_inner();
    let id = schedule.id.clone();

    let schedules_of = |client: &As| {
        let mut client = client.clone();
        async move {
            client
                .list_schedules(pb::ListSchedulesRequest::default())
                .await
                .expect("listed")
                .into_inner()
                .schedules
                .into_iter()
                .map(|schedule| schedule.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(schedules_of(&alice).await, [id.as_str()]);
    assert!(schedules_of(&bob).await.is_empty());
    assert_eq!(schedules_of(&ops).await, [id.as_str()]);

    let get = code(
        bob.get_schedule(pb::GetScheduleRequest { id: id.clone() })
            .await,
    );
    let pause = code(
        bob.pause_schedule(pb::PauseScheduleRequest { id: id.clone() })
            .await,
    );
    let resume = code(
        bob.resume_schedule(pb::ResumeScheduleRequest { id: id.clone() })
            .await,
    );
    let delete = code(
        bob.delete_schedule(pb::DeleteScheduleRequest { id: id.clone() })
            .await,
    );
    assert_eq!([get, pause, resume, delete], [Code::NotFound; 4]);

    // Its firings create alice's tasks: she sees them, bob does not.
    let fired = crate::support::eventually("a firing", || {
        let mut alice = alice.clone();
        async move {
            let names = listed(&mut alice).await;
            (!names.is_empty()).then_some(names)
        }
    })
    .await;
    assert!(fired.iter().all(|name| name == "tick"), "{fired:?}");
    assert!(listed(&mut bob).await.is_empty());
    alice
        .delete_schedule(pb::DeleteScheduleRequest { id: id.clone() })
        .await
        .expect("alice deletes her schedule");
    assert!(schedules_of(&ops).await.is_empty());
}

async fn a_tenant_past_its_quota_of_waiting_tasks_is_resource_exhausted() {
    let files = Files::new();
    let config = Config {
        max_concurrent: 1,
        auth: AuthSettings {
            tenant_quotas: [("team-a".to_owned(), TenantQuota { max_waiting: 2 })].into(),
            ..AuthSettings::default()
        },
        ..test_config()
    };
    let server = start_with(&files, StoreUrl::Memory, config).await;
    let Principals {
        mut alice,
        mut bob,
        mut ops,
    } = clients(&server).await;
    // ops's task takes the only slot, so alice's wait.
    let holder = create(&mut ops, "holder", "gate").await;
    crate::support::eventually("the holder to run", || {
        let mut ops = ops.clone();
        let id = holder.id.clone();
        async move {
            let task = ops.get_task(pb::GetTaskRequest { id }).await.ok()?;
            (status_of(task.get_ref()) == pb::TaskStatus::Running).then_some(())
        }
    })
    .await;
    let first = create(&mut alice, "a1", "gate").await;
    let second = create_with_key(&mut alice, "a2", "key-a2").await;

    let refused = alice
        .create_task(request("a3", "gate", None))
        .await
        .expect_err("past the quota");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("team-a") && refused.message().contains("max_waiting 2"),
        "the message names the tenant and the limit: {}",
        refused.message()
    );
    let refused = alice
        .batch_create_tasks(pb::BatchCreateTasksRequest {
            requests: vec![request("a3", "gate", None)],
        })
        .await
        .expect_err("a batch past the quota");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // A create repeated with its request_id adds nothing to wait: at the
    // quota it still gets its task back, alone or in a batch; a batch that
    // also adds a new task is refused.
    let again = create_with_key(&mut alice, "a2", "key-a2").await;
    assert_eq!(again.id, second.id);
    let mut repeated = request("a2", "gate", None);
    repeated.request_id = "key-a2".into();
    let batch = alice
        .batch_create_tasks(pb::BatchCreateTasksRequest {
            requests: vec![repeated.clone()],
        })
        .await
        .expect("a repeated batch at the quota")
        .into_inner();
    assert_eq!(batch.tasks[0].id, second.id);
    let refused = alice
        .batch_create_tasks(pb::BatchCreateTasksRequest {
            requests: vec![repeated, request("a4", "gate", None)],
        })
        .await
        .expect_err("a new task past the quota");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // Other tenants have no quota here; the waiting count goes down as
    // alice's tasks leave the queue.
    for name in ["b1", "b2", "b3"] {
        create(&mut bob, name, "gate").await;
    }
    alice
        .cancel_task(pb::CancelTaskRequest { id: first.id })
        .await
        .expect("cancelled");
    create(&mut alice, "a3", "gate").await;
    server.gate.release(16);
}

/// A worker runs the tasks of every tenant, so a principal bound to one
/// may not open `Work` (it would see the others' data); one without a
/// tenant may.
async fn a_worker_principal_bound_to_a_tenant_is_refused() {
    use task_processor::pb::worker_service_client::WorkerServiceClient;
    let files = Files::new();
    let server = start_with(
        &files,
        crate::stores::fresh_store().await,
        crate::workers::worker_config(),
    )
    .await;
    let hello = || tokio_stream::iter([crate::workers::hello(&["remote"], 1, "w")]);
    let channel = server.channel().await;
    let mut bound =
        WorkerServiceClient::with_interceptor(channel.clone(), Bearer("worker-a-token"));
    let refused = bound.work(hello()).await.expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("team-a"), "{refused:?}");
    let mut unbound = WorkerServiceClient::with_interceptor(channel, Bearer("ops-token"));
    unbound
        .work(hello())
        .await
        .expect("a principal without a tenant works");
}

contract_tests!(
    a_worker_principal_bound_to_a_tenant_is_refused,
    each_tenant_sees_and_touches_only_its_own_tasks,
    a_request_id_is_unique_per_tenant,
    watch_tasks_shows_a_tenant_only_its_own_tasks_and_changes,
    schedules_belong_to_their_tenant_and_fire_its_tasks,
    a_tenant_past_its_quota_of_waiting_tasks_is_resource_exhausted,
);

#[tokio::test]
async fn sqlite_keeps_tenants_across_a_restart() {
    let files = Files::new();
    let path = crate::stores::fresh_sqlite_path();
    let mut server = start(&files, StoreUrl::Sqlite(path.clone())).await;
    let Principals {
        mut alice, mut bob, ..
    } = clients(&server).await;
    let kept = create_with_key(&mut alice, "kept", "key-1").await;
    let bobs = create_with_key(&mut bob, "bobs", "key-1").await;
    server.begin_shutdown().await.expect("stopped cleanly");
    drop(server);
    let restarted = crate::support::eventually("the file to be free", || async {
        task_processor::store::SqliteStore::open(&path)
            .await
            .ok()
            .map(drop)
    });
    restarted.await;

    let server = start(&files, StoreUrl::Sqlite(path)).await;
    let Principals {
        mut alice,
        mut bob,
        mut ops,
    } = clients(&server).await;
    assert_eq!(listed(&mut alice).await, ["kept"]);
    assert_eq!(listed(&mut bob).await, ["bobs"]);
    assert_eq!(listed(&mut ops).await, ["kept", "bobs"]);
    assert_eq!(codes_on(&mut bob, &kept.id).await, [Code::NotFound; 4]);
    // The per-tenant request_ids came back with the tasks.
    let again = create_with_key(&mut alice, "kept", "key-1").await;
    assert_eq!(again.id, kept.id);
    let again = create_with_key(&mut bob, "bobs", "key-1").await;
    assert_eq!(again.id, bobs.id);
    server.gate.release(16);
}

/// A schema at the last migration before tenants: the files of
/// `migrations/postgres` numbered below `first_excluded`, applied by sqlx's
/// own migrator (so the server's migrator finds them applied, checksums
/// and all, and applies only the rest).
async fn postgres_schema_before(first_excluded: i64) -> (String, sqlx::PgPool) {
    let url = crate::stores::fresh_postgres_schema().await;
    let older = tempfile::tempdir().expect("a temporary directory");
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
    for entry in std::fs::read_dir(directory).expect("the PostgreSQL migrations") {
        let entry = entry.expect("a migration");
        let name = entry.file_name().to_string_lossy().into_owned();
        let version: i64 = name
            .split('_')
            .next()
            .and_then(|version| version.parse().ok())
            .expect("<version>_<description>.sql");
        if version < first_excluded {
            std::fs::copy(entry.path(), older.path().join(&name)).expect("copied");
        }
    }
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::migrate::Migrator::new(older.path())
        .await
        .expect("the older migrations")
        .run(&pool)
        .await
        .expect("the schema before tenants");
    (url, pool)
}

#[tokio::test]
async fn postgres_rows_from_before_tenants_belong_to_no_tenant() {
    const TEST: &str = "security::tenants::postgres_rows_from_before_tenants_belong_to_no_tenant";
    if !crate::stores::postgres_available(TEST) {
        return;
    }
    let (url, pool) = postgres_schema_before(7).await;
    let id = uuid::Uuid::now_v7();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as i64;
    sqlx::query(
        "INSERT INTO tasks (id, name, description, kind, status, error, timeout_seconds, \
         labels, attempt, node, revision, request_id, created_at, completed_at) \
         VALUES ($1, 'legacy', '', 'echo', 'completed', '', 0, '{}', 1, 'old', 3, 'key-1', $2, $2)",
    )
    .bind(id)
    .bind(now)
    .execute(&pool)
    .await
    .expect("a row from before tenants");

    let files = Files::new();
    let server = start(&files, StoreUrl::Postgres(url)).await;
    let tenant: String = sqlx::query_scalar("SELECT tenant FROM tasks WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("the migrated row");
    assert_eq!(tenant, "");
    let Principals {
        mut alice,
        mut bob,
        mut ops,
    } = clients(&server).await;
    assert_eq!(listed(&mut ops).await, ["legacy"]);
    assert!(listed(&mut alice).await.is_empty());
    let id = id.to_string();
    assert_eq!(
        codes_on(&mut alice, &id).await,
        [Code::NotFound; 4],
        "a tenant never sees a task of no tenant"
    );
    // Its request_id is no tenant's: bob's is his own.
    let bobs = create_with_key(&mut bob, "bobs", "key-1").await;
    assert_ne!(bobs.id, id);
    ops.get_task(pb::GetTaskRequest { id })
        .await
        .expect("the principal without a tenant sees it");
    server.gate.release(16);
}

/// REST calls the same RPCs in process, through the same layer: a tenant's
/// GET, list, cancel and delete of another tenant's task are 404 / absent.
#[tokio::test]
async fn rest_routes_follow_the_same_tenant_rule() {
    use bytes::Bytes;
    use http::Method;

    let files = Files::new();
    let server = start(&files, StoreUrl::Memory).await;
    let Principals { mut bob, .. } = clients(&server).await;
    let bobs = create(&mut bob, "bobs", "gate").await;
    let http = crate::http::Http::new(server.address);
    let as_alice = |method: Method, path: String| {
        http.request(
            method,
            &path,
            &[("authorization", "Bearer alice-token")],
            Bytes::new(),
        )
    };
    let task_path = format!("/api/v1/tasks/{}", bobs.id);
    let get = http.send(as_alice(Method::GET, task_path.clone())).await;
    assert_eq!(get.status, 404, "{get:?}");
    let cancel = http
        .send(as_alice(Method::POST, format!("{task_path}/cancel")))
        .await;
    assert_eq!(cancel.status, 404, "{cancel:?}");
    let delete = http.send(as_alice(Method::DELETE, task_path)).await;
    assert_eq!(delete.status, 404, "{delete:?}");
    let list = http
        .send(as_alice(Method::GET, "/api/v1/tasks".to_owned()))
        .await;
    assert_eq!(list.status, 200, "{list:?}");
    assert!(!list.body.contains(&bobs.id), "{}", list.body);
    server.gate.release(16);
}
