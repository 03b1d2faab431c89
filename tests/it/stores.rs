//! The stores the contract suite runs against, one test at a time.
//!
//! `contract_tests!` turns each listed test into three: `memory::name`,
//! `sqlite::name` and `postgres::name`. The store travels in a task-local,
//! so test bodies stay as they are and `TestServer::start` picks it up.
//! PostgreSQL tests need the database at `TASK_PROCESSOR_TEST_POSTGRES`
//! (default `postgres://postgres@127.0.0.1:5432/test`); without it they are
//! skipped with a note, unless `CI=true`, where they fail.

use std::{
    future::Future,
    io::Write as _,
    net::{TcpStream, ToSocketAddrs},
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sqlx::{Connection, PgConnection};
use task_processor::store::StoreUrl;

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Test schemas older than this were left by runs that ended early.
const STALE_SCHEMA_AGE: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreUnderTest {
    Memory,
    Sqlite,
    Postgres,
}

tokio::task_local! {
    static STORE: StoreUnderTest;
}

/// Runs `test` with servers on `store`.
pub async fn on_store(store: StoreUnderTest, test: impl Future<Output = ()>) {
    STORE.scope(store, test).await;
}

/// The store of the test running now (memory outside the contract suite).
pub fn current() -> StoreUnderTest {
    STORE
        .try_with(|store| *store)
        .unwrap_or(StoreUnderTest::Memory)
}

/// A fresh, empty store of the current kind for one server.
pub async fn fresh_store() -> StoreUrl {
    match current() {
        StoreUnderTest::Memory => StoreUrl::Memory,
        StoreUnderTest::Sqlite => StoreUrl::Sqlite(fresh_sqlite_path()),
        StoreUnderTest::Postgres => StoreUrl::Postgres(fresh_postgres_schema().await),
    }
}

/// A new file name in a directory that lives as long as the test binary.
pub fn fresh_sqlite_path() -> PathBuf {
    static DIRECTORY: OnceLock<tempfile::TempDir> = OnceLock::new();
    let directory = DIRECTORY.get_or_init(|| tempfile::tempdir().expect("temporary directory"));
    directory
        .path()
        .join(format!("{}.db", uuid::Uuid::now_v7().simple()))
}

pub fn postgres_base_url() -> String {
    std::env::var("TASK_PROCESSOR_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.to_owned())
}

/// Whether PostgreSQL tests can run: the database answers. When it does
/// not, outside CI the test is skipped with a note on the terminal (past
/// libtest's capture); in CI that is a failure.
pub fn postgres_available(test: &str) -> bool {
    static REACHABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let reachable = REACHABLE.get_or_init(|| probe(&postgres_base_url()));
    match reachable {
        Ok(()) => true,
        Err(reason) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true requires PostgreSQL for {test}: {reason}"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {reason} (set TASK_PROCESSOR_TEST_POSTGRES, or CI=true to fail instead)"
            );
            false
        }
    }
}

fn probe(url: &str) -> Result<(), String> {
    let authority = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split('/').next())
        .map(|authority| authority.rsplit('@').next().unwrap_or(authority))
        .ok_or_else(|| format!("cannot read the host of {url}"))?;
    let address = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:5432")
    };
    let addresses = address
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {address}: {error}"))?;
    for address in addresses {
        if TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok() {
            return Ok(());
        }
    }
    Err(format!("no PostgreSQL answers at {address}"))
}

/// Creates a schema of its own for one server (or one cluster of them) and
/// returns the URL that puts it first on the search path.
pub async fn fresh_postgres_schema() -> String {
    let base = postgres_base_url();
    let mut connection = PgConnection::connect(&base)
        .await
        .unwrap_or_else(|error| panic!("connect to {base}: {error}"));
    drop_stale_schemas(&mut connection).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let schema = format!(
        "tp_it_{now}_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut connection)
        .await
        .expect("create schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

/// Drops, once per test binary, the schemas of runs that ended an hour ago
/// or more, so the test database does not fill up.
async fn drop_stale_schemas(connection: &mut PgConnection) {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.set(()).is_err() {
        return;
    }
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tp\\_it\\_%'",
    )
    .fetch_all(&mut *connection)
    .await
    .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    for name in names {
        let created: Option<u64> = name.split('_').nth(2).and_then(|secs| secs.parse().ok());
        if created.is_some_and(|created| now.saturating_sub(created) >= STALE_SCHEMA_AGE.as_secs())
        {
            let _ = sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
                .execute(&mut *connection)
                .await;
        }
    }
}

/// Instantiates each listed test once per store.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::stores::on_store($crate::stores::StoreUnderTest::Memory, super::$name()).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::stores::on_store($crate::stores::StoreUnderTest::Sqlite, super::$name()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if $crate::stores::postgres_available(concat!(module_path!(), "::", stringify!($name))) {
                        $crate::stores::on_store($crate::stores::StoreUnderTest::Postgres, super::$name()).await;
                    }
                }
            )*
        }
    };
}
