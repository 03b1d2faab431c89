//! `--stores`: the memory, SQLite and PostgreSQL stores side by side, and
//! the disk's own fsync rate beside the SQLite figure.
//!
//! For each store our real server runs on `127.0.0.1:0` (SQLite: a file in
//! a scratch directory; PostgreSQL: a schema of its own, dropped at the end)
//! and takes `CreateTask` (`echo`) at 64 in flight over four connections for
//! one phase. Create/s is what it answered in that phase; end-to-end/s is
//! the same tasks over the time from the first create until every one of
//! them is `COMPLETED` and that state is durable. In the same rounds, in
//! the directory of the SQLite file: the disk's fsync rate (4 KiB written
//! and `fsync`ed, one after another) and SQLite committing one INSERT per
//! transaction, which is what one fsync per task would give. Each round
//! measures everything once, in turn, so drift in the machine's load hits
//! every figure alike; the median over rounds is shown.
//!
//! Nothing here is a test: it prints figures and asserts nothing about them.

use std::{
    fs::OpenOptions,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::Context;
use sqlx::{
    Connection, PgConnection, SqliteConnection,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqliteSynchronous},
};
use task_processor::{
    config::Config,
    manager::ManagerHandle,
    metrics::{Metrics, Occupancy},
    pb::task_service_client::TaskServiceClient,
    store::StoreUrl,
};
use tonic::transport::Channel;

use crate::{
    CONNECTIONS, RunningServer, Scale, bench_config,
    load::{Measured, create, create_request, drive, millis},
};

/// Creates in flight against each store, and the server's `max_concurrent`.
const IN_FLIGHT: usize = 64;

/// Tasks per `BatchCreateTasks` call, as issue 15's targets are stated.
const BATCH_SIZE: usize = 100;

/// `BatchCreateTasks` calls in flight against each store: two per
/// connection, so one batch commits while the next arrives.
const BATCHES_IN_FLIGHT: usize = 8;

/// Issue 15's end-to-end targets for batches of 100 `echo` tasks, in tasks
/// per second, by store (memory, SQLite, PostgreSQL).
const BATCH_TARGETS: [f64; 3] = [150_000.0, 60_000.0, 30_000.0];

/// Where the PostgreSQL figures run; unset, the local test database.
const POSTGRES_VARIABLE: &str = "TASK_BENCH_POSTGRES";
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How long PostgreSQL may take to answer before it is left out.
const CONNECT_WAIT: Duration = Duration::from_secs(3);

/// How long the tasks of one phase may take to finish before the run fails.
const COMPLETION_WAIT: Duration = Duration::from_secs(120);

/// The size of one write in the fsync probe: a page, as SQLite writes.
const PROBE_BLOCK: usize = 4096;

/// Blocks in the probe file, overwritten in turn as a WAL is.
const PROBE_BLOCKS: u64 = 256;

/// What one store did in one round.
#[derive(Clone, Copy, Debug)]
struct StoreFigures {
    create: Measured,
    /// Tasks completed and durable per second, from the first create.
    end_to_end: f64,
}

/// One round: every store in turn, then the disk and SQLite alone.
#[derive(Debug)]
struct Round {
    /// In the order of the contenders; memory first.
    stores: Vec<StoreFigures>,
    /// The same, with `BatchCreateTasks` of [`BATCH_SIZE`]; `create` counts
    /// calls.
    batches: Vec<StoreFigures>,
    disk_fsyncs: f64,
    single_commits: f64,
}

/// One of our servers under measurement, with its connections.
struct Contender {
    name: &'static str,
    server: RunningServer,
    clients: Vec<TaskServiceClient<Channel>>,
}

/// Counters from the server's metrics: the one view of task progress that
/// is the same whatever the store.
#[derive(Clone, Copy, Debug)]
struct TaskCounts {
    created: u64,
    completed: u64,
}

pub async fn report(scale: Scale) -> anyhow::Result<()> {
    let directory = ScratchDirectory::create()?;
    println!(
        "task-bench --stores: {} cores, {} rounds of {:?} per store\n",
        std::thread::available_parallelism().map_or(0, usize::from),
        scale.store_rounds,
        scale.store_phase
    );
    println!(
        "scratch directory (SQLite file, fsync probe): {} on {}",
        directory.path.display(),
        mount_of(&directory.path)
    );
    let base_url = std::env::var(POSTGRES_VARIABLE).unwrap_or_else(|_| DEFAULT_POSTGRES.to_owned());
    let schema = match PostgresSchema::create(&base_url).await {
        Ok(schema) => {
            println!(
                "PostgreSQL: {} (schema {}, dropped at the end)\n",
                redacted(&base_url),
                schema.name
            );
            Some(schema)
        }
        Err(reason) => {
            println!(
                "PostgreSQL: SKIPPED, {} is unreachable: {reason}. Set {POSTGRES_VARIABLE} to a \
                 database to include it.\n",
                redacted(&base_url)
            );
            None
        }
    };
    let outcome = measure(scale, &directory.path, schema.as_ref()).await;
    if let Some(schema) = schema {
        schema.drop().await;
    }
    let rounds = outcome?;
    print_report(scale, &rounds);
    Ok(())
}

async fn measure(
    scale: Scale,
    directory: &Path,
    schema: Option<&PostgresSchema>,
) -> anyhow::Result<Vec<Round>> {
    let mut stores = vec![
        ("memory", StoreUrl::Memory),
        ("SQLite", StoreUrl::Sqlite(directory.join("tasks.db"))),
    ];
    if let Some(schema) = schema {
        stores.push(("PostgreSQL", StoreUrl::Postgres(schema.url.clone())));
    }
    let mut contenders = Vec::new();
    for (name, store) in stores {
        let server = RunningServer::ours(Config {
            max_concurrent: IN_FLIGHT,
            store,
            ..bench_config()
        })
        .await?;
        let clients = server.clients(CONNECTIONS).await?;
        contenders.push(Contender {
            name,
            server,
            clients,
        });
    }

    print_header(&contenders);
    // Connections, statement caches and the first pages of each store warm
    // up in a short phase that is not counted.
    for contender in &contenders {
        measure_store(contender, scale.store_phase / 4).await?;
        measure_batches(contender, scale.store_phase / 4).await?;
    }
    let probe_phase = scale.store_phase / 2;
    let mut rounds = Vec::with_capacity(scale.store_rounds);
    for round in 1..=scale.store_rounds {
        let mut stores = Vec::with_capacity(contenders.len());
        let mut batches = Vec::with_capacity(contenders.len());
        for contender in &contenders {
            stores.push(measure_store(contender, scale.store_phase).await?);
            batches.push(measure_batches(contender, scale.store_phase).await?);
        }
        let probe_directory = directory.to_owned();
        let disk_fsyncs = tokio::task::spawn_blocking(move || {
            disk_fsyncs_per_second(&probe_directory, probe_phase)
        })
        .await??;
        let single_commits =
            single_commits_per_second(&directory.join(format!("single-{round}.db")), probe_phase)
                .await?;
        rounds.push(Round {
            stores,
            batches,
            disk_fsyncs,
            single_commits,
        });
        eprintln!("round {round}/{} done", scale.store_rounds);
    }

    for contender in contenders {
        contender.server.stop().await;
    }
    Ok(rounds)
}

/// One phase against one store: creates at [`IN_FLIGHT`] for `phase`, then
/// waits until all of them completed and are durable.
async fn measure_store(contender: &Contender, phase: Duration) -> anyhow::Result<StoreFigures> {
    measure_phase(contender, phase, IN_FLIGHT, create, 1).await
}

/// The same with `BatchCreateTasks` of [`BATCH_SIZE`] `echo` tasks, at
/// [`BATCHES_IN_FLIGHT`].
async fn measure_batches(contender: &Contender, phase: Duration) -> anyhow::Result<StoreFigures> {
    measure_phase(
        contender,
        phase,
        BATCHES_IN_FLIGHT,
        create_batch,
        BATCH_SIZE,
    )
    .await
}

async fn create_batch(mut client: TaskServiceClient<Channel>) {
    let requests = vec![create_request(); BATCH_SIZE];
    if let Err(status) = client
        .batch_create_tasks(task_processor::pb::BatchCreateTasksRequest { requests })
        .await
    {
        eprintln!("batch create failed: {status}");
    }
}

/// One phase of `call` (which creates `tasks_per_call` tasks) at
/// `in_flight`, then the wait until all of them completed and are durable.
async fn measure_phase<F, Fut>(
    contender: &Contender,
    phase: Duration,
    in_flight: usize,
    call: F,
    tasks_per_call: usize,
) -> anyhow::Result<StoreFigures>
where
    F: Fn(TaskServiceClient<Channel>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (metrics, manager) = parts_of(&contender.server)?;
    let before = task_counts(metrics)?;
    let started = Instant::now();
    let create = drive(&contender.clients, in_flight, phase, call).await;
    let created = task_counts(metrics)?.created - before.created;
    anyhow::ensure!(
        created > 0,
        "{}: no create seen in the metrics (all failed, or task_processor_tasks_created_total \
         was renamed)",
        contender.name
    );
    let asked = (create.calls * tasks_per_call) as u64;
    if created != asked {
        eprintln!(
            "{}: {} of {asked} creates failed",
            contender.name,
            asked - created.min(asked),
        );
    }
    let deadline = Instant::now() + COMPLETION_WAIT;
    while task_counts(metrics)?.completed < before.completed + created {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}: tasks still unfinished after {COMPLETION_WAIT:?}",
            contender.name
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Every COMPLETED above is decided; this waits until it is stored.
    manager.flush().await?;
    Ok(StoreFigures {
        create,
        end_to_end: created as f64 / started.elapsed().as_secs_f64(),
    })
}

fn parts_of(server: &RunningServer) -> anyhow::Result<(&Metrics, &ManagerHandle)> {
    let metrics = server.metrics.as_ref();
    let manager = server.manager.as_ref();
    metrics
        .zip(manager)
        .ok_or_else(|| anyhow::anyhow!("our server has metrics and a manager"))
}

/// Tasks created and completed so far, summed over kinds, as `/metrics`
/// shows them. The manager bumps `completed` when it decides the status,
/// in memory and on every store alike.
fn task_counts(metrics: &Metrics) -> anyhow::Result<TaskCounts> {
    let text = metrics.render(&Occupancy::default());
    let mut counts = TaskCounts {
        created: 0,
        completed: 0,
    };
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value = value.parse::<f64>().unwrap_or(0.0) as u64;
        if series.starts_with("task_processor_tasks_created_total{") {
            counts.created += value;
        } else if series.starts_with("task_processor_tasks_finished_total{")
            && series.contains("status=\"completed\"")
        {
            counts.completed += value;
        }
    }
    Ok(counts)
}

/// fsyncs per second of the disk under `directory`: a 4 KiB block written
/// and `fsync`ed, one after another, over a preallocated file, as a WAL is
/// reused. `fsync`, not `fdatasync`: the SQLite that sqlx bundles calls
/// `fsync` at each commit.
fn disk_fsyncs_per_second(directory: &Path, phase: Duration) -> anyhow::Result<f64> {
    let path = directory.join("fsync-probe");
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = [0x5a_u8; PROBE_BLOCK];
    for index in 0..PROBE_BLOCKS {
        file.write_all_at(&block, index * PROBE_BLOCK as u64)?;
    }
    file.sync_all()?;
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < phase {
        file.write_all_at(&block, (syncs % PROBE_BLOCKS) * PROBE_BLOCK as u64)?;
        file.sync_all()?;
        syncs += 1;
    }
    let per_second = syncs as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(per_second)
}

/// Rows per second with one INSERT per transaction on a fresh SQLite file,
/// set up as our store sets up its own (WAL, `synchronous=FULL`, exclusive
/// lock): one commit, so one fsync, per task.
async fn single_commits_per_second(path: &Path, phase: Duration) -> anyhow::Result<f64> {
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .locking_mode(SqliteLockingMode::Exclusive);
    let mut connection = SqliteConnection::connect_with(&options)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    sqlx::query(
        "CREATE TABLE tasks (id BLOB NOT NULL PRIMARY KEY, name TEXT NOT NULL, \
         kind TEXT NOT NULL, status TEXT NOT NULL, data TEXT, created_at INTEGER NOT NULL)",
    )
    .execute(&mut connection)
    .await?;
    let started = Instant::now();
    let mut rows = 0u64;
    while started.elapsed() < phase {
        sqlx::query(
            "INSERT INTO tasks (id, name, kind, status, data, created_at) \
             VALUES (?, 'bench', 'echo', 'pending', '{\"n\":1}', ?)",
        )
        .bind(uuid::Uuid::now_v7().as_bytes().as_slice())
        .bind(i64::try_from(rows).unwrap_or(i64::MAX))
        .execute(&mut connection)
        .await?;
        rows += 1;
    }
    let per_second = rows as f64 / started.elapsed().as_secs_f64();
    connection.close().await?;
    Ok(per_second)
}

fn print_header(contenders: &[Contender]) {
    let names: Vec<&str> = contenders.iter().map(|contender| contender.name).collect();
    println!(
        "stores measured, in this order each round: {}",
        names.join(", ")
    );
}

fn print_report(scale: Scale, rounds: &[Round]) {
    let Some(first) = rounds.first() else {
        return;
    };
    let names = ["memory", "SQLite", "PostgreSQL"];
    let stores = first.stores.len();

    println!(
        "\n## Stores (CreateTask `echo` at {IN_FLIGHT} in flight over {CONNECTIONS} connections, \
         max_concurrent {IN_FLIGHT}, {:?} per store per round, median of {} rounds)\n",
        scale.store_phase,
        rounds.len()
    );
    println!(
        "| store | create/s | ratio to memory | create p50 | create p99 | end-to-end/s | ratio to memory |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (index, name) in names.iter().enumerate().take(stores) {
        let of = |figure: fn(&StoreFigures) -> f64| {
            median(rounds.iter().map(|round| figure(&round.stores[index])))
        };
        let ratio = |figure: fn(&StoreFigures) -> f64| {
            median(
                rounds
                    .iter()
                    .map(|round| figure(&round.stores[index]) / figure(&round.stores[0])),
            )
        };
        println!(
            "| {name} | {:.0} | {:.2}x | {} | {} | {:.0} | {:.2}x |",
            of(|figures| figures.create.per_second),
            ratio(|figures| figures.create.per_second),
            millis(Duration::from_secs_f64(of(|figures| {
                figures.create.p50.as_secs_f64()
            }))),
            millis(Duration::from_secs_f64(of(|figures| {
                figures.create.p99.as_secs_f64()
            }))),
            of(|figures| figures.end_to_end),
            ratio(|figures| figures.end_to_end),
        );
    }

    println!(
        "\n## BatchCreateTasks ({BATCH_SIZE} `echo` tasks a call, {BATCHES_IN_FLIGHT} calls in \
         flight over {CONNECTIONS} connections, same servers and rounds, median of {})\n",
        rounds.len()
    );
    println!(
        "| store | tasks created/s | ratio to single creates | end-to-end tasks/s | target | reached |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    for (index, name) in names.iter().enumerate().take(stores) {
        let created = median(
            rounds
                .iter()
                .map(|round| round.batches[index].create.per_second * BATCH_SIZE as f64),
        );
        let ratio = median(rounds.iter().map(|round| {
            round.batches[index].create.per_second * BATCH_SIZE as f64
                / round.stores[index].create.per_second
        }));
        let end_to_end = median(rounds.iter().map(|round| round.batches[index].end_to_end));
        let target = BATCH_TARGETS[index];
        println!(
            "| {name} | {created:.0} | {ratio:.1}x | {end_to_end:.0} | {target:.0} | {} |",
            if end_to_end >= target { "yes" } else { "no" }
        );
    }

    let sqlite = |round: &Round| round.stores[1].create.per_second;
    println!(
        "\n## What grouping buys on SQLite (same directory, same rounds, median of {})\n",
        rounds.len()
    );
    println!("| figure | per second |");
    println!("|---|---:|");
    println!(
        "| the disk: 4 KiB write + fsync, one after another | {:.0} |",
        median(rounds.iter().map(|round| round.disk_fsyncs))
    );
    println!(
        "| SQLite alone: one INSERT per transaction (WAL, synchronous=FULL) | {:.0} |",
        median(rounds.iter().map(|round| round.single_commits))
    );
    println!(
        "| ours on SQLite: CreateTask at {IN_FLIGHT} in flight | {:.0} |",
        median(rounds.iter().map(sqlite))
    );
    println!(
        "\nours on SQLite: {:.1} tasks created per fsync the disk can do in the same time; \
         {:.1}x one-INSERT-per-transaction SQLite",
        median(rounds.iter().map(|round| sqlite(round) / round.disk_fsyncs)),
        median(
            rounds
                .iter()
                .map(|round| sqlite(round) / round.single_commits)
        ),
    );

    println!("\n### Every round\n");
    let mut header = String::from("| round |");
    let mut rule = String::from("|---:|");
    for name in names.iter().take(stores) {
        header.push_str(&format!(" {name} create/s | {name} end-to-end/s |"));
        rule.push_str("---:|---:|");
    }
    println!("{header} disk fsyncs/s | SQLite single commits/s |");
    println!("{rule}---:|---:|");
    for (number, round) in rounds.iter().enumerate() {
        let mut row = format!("| {} |", number + 1);
        for figures in &round.stores {
            row.push_str(&format!(
                " {:.0} | {:.0} |",
                figures.create.per_second, figures.end_to_end
            ));
        }
        println!(
            "{row} {:.0} | {:.0} |",
            round.disk_fsyncs, round.single_commits
        );
    }
    println!();
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The URL without a password, as the server prints it.
fn redacted(url: &str) -> String {
    StoreUrl::Postgres(url.to_owned()).to_string()
}

/// The filesystem `path` lives on, from `/proc/mounts` (the longest mount
/// point above it): a tmpfs here would make every fsync figure meaningless.
fn mount_of(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "an unknown filesystem".into();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let mount_point = fields.next()?;
            let filesystem = fields.next()?;
            path.starts_with(mount_point).then(|| {
                (
                    mount_point.len(),
                    format!("{device} ({filesystem}, mounted on {mount_point})"),
                )
            })
        })
        .max_by_key(|(length, _)| *length)
        .map_or_else(
            || "an unknown filesystem".into(),
            |(_, description)| description,
        )
}

/// A directory of our own under the system's temporary directory (`TMPDIR`
/// chooses another disk), removed with everything in it when dropped.
struct ScratchDirectory {
    path: PathBuf,
}

impl ScratchDirectory {
    fn create() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "task-bench-stores-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for ScratchDirectory {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!("could not remove {}: {error}", self.path.display());
        }
    }
}

/// A schema of our own in the PostgreSQL database, so the figures start
/// from an empty table and touch nothing else there.
struct PostgresSchema {
    base_url: String,
    name: String,
    /// The base URL with the schema first on the search path.
    url: String,
}

impl PostgresSchema {
    async fn create(base_url: &str) -> anyhow::Result<Self> {
        let mut connection = connect(base_url).await?;
        let random = uuid::Uuid::now_v7().simple().to_string();
        // The random tail of a UUID v7; short, since the change channel's
        // name (an identifier, at most 63 bytes) ends with the schema's.
        let name = format!("tp_bench_{}", &random[random.len() - 12..]);
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut connection)
            .await?;
        let separator = if base_url.contains('?') { '&' } else { '?' };
        let url = format!("{base_url}{separator}options=-c%20search_path%3D{name}");
        Ok(Self {
            base_url: base_url.to_owned(),
            name,
            url,
        })
    }

    /// Drops the schema and every table in it; says so if it cannot.
    async fn drop(self) {
        let dropped = async {
            let mut connection = connect(&self.base_url).await?;
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
                .execute(&mut connection)
                .await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(error) = dropped {
            eprintln!(
                "could not drop the PostgreSQL schema {}: {error:#}",
                self.name
            );
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    tokio::time::timeout(CONNECT_WAIT, PgConnection::connect(url))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_WAIT:?}"))?
        .map_err(anyhow::Error::from)
}
