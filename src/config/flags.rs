//! The command-line flags: the top layer of the configuration.
//!
//! Values stay text here and are parsed with every other layer, so an error
//! names the flag the same way it names a file key or a variable.

use std::path::PathBuf;

use clap::Parser;

/// task-processor: runs tasks submitted over gRPC with bounded workers,
/// timeouts and cancellation, and streams their states live.
///
/// Settings come from built-in defaults, then the YAML file given with
/// --config, then environment variables, then these flags; later layers
/// win. Durations take forms like 30s, 5m, 1h 30m.
#[derive(Clone, Debug, Default, Parser)]
#[command(version, about, long_about)]
pub struct Flags {
    /// YAML file with settings (keys as in config/example.yaml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,

    /// More log output: -v for debug, -vv for trace.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// gRPC address [env: SERVER_HOST, SERVER_PORT] [default: 0.0.0.0:50051]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,

    /// Admin HTTP address for /metrics, /healthz and /readyz
    /// [env: TASK_PROCESSOR_ADMIN_LISTEN] [default: 0.0.0.0:9090]
    #[arg(long, value_name = "HOST:PORT")]
    pub admin_listen: Option<String>,

    /// How many tasks run at once; the rest wait in FIFO order
    /// [env: PROCESSING_MAX_CONCURRENT] [default: 10]
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<String>,

    /// How many tasks may wait; beyond it CreateTask answers
    /// RESOURCE_EXHAUSTED [env: TASK_PROCESSOR_QUEUE_CAPACITY] [default: 10000]
    #[arg(long, value_name = "N")]
    pub queue_capacity: Option<String>,

    /// Timeout of a task that asks for none, whole seconds; 0s means none
    /// [env: PROCESSING_DEFAULT_TIMEOUT] [default: 60s]
    #[arg(long, value_name = "DURATION")]
    pub default_timeout: Option<String>,

    /// Largest timeout a task may ask for, whole seconds
    /// [env: PROCESSING_MAX_TIMEOUT] [default: 300s]
    #[arg(long, value_name = "DURATION")]
    pub max_timeout: Option<String>,

    /// Largest task data, in bytes of its protobuf encoding
    /// [env: TASK_PROCESSOR_MAX_DATA_BYTES] [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_data_bytes: Option<String>,

    /// How long a demo task works [env: TASK_PROCESSOR_DEMO_DURATION]
    /// [default: 2s]
    #[arg(long, value_name = "DURATION")]
    pub demo_duration: Option<String>,

    /// Name written into the node of tasks this process runs
    /// [env: TASK_PROCESSOR_NODE_NAME] [default: host name plus a random
    /// suffix]
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// After SIGTERM, how long reads and watches go on while creates are
    /// refused [env: TASK_PROCESSOR_DRAIN_PERIOD] [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub drain_period: Option<String>,

    /// After the drain, how long running tasks may take to finish before
    /// they are cancelled [env: TASK_PROCESSOR_SHUTDOWN_GRACE] [default: 25s]
    #[arg(long, value_name = "DURATION")]
    pub shutdown_grace: Option<String>,

    /// How long finished tasks are kept [env: TASK_PROCESSOR_RETENTION]
    /// [default: 24h]
    #[arg(long, value_name = "DURATION")]
    pub retention: Option<String>,

    /// How many finished tasks are kept at most; the oldest go first
    /// [env: TASK_PROCESSOR_MAX_FINISHED_TASKS] [default: 100000]
    #[arg(long, value_name = "N")]
    pub max_finished_tasks: Option<String>,

    /// Memory budget for tasks' data and results, in bytes of their JSON
    /// text (512MiB and 2GiB are accepted too); a create beyond it is
    /// RESOURCE_EXHAUSTED [env: TASK_PROCESSOR_MAX_HELD_BYTES]
    /// [default: 536870912]
    #[arg(long, value_name = "BYTES")]
    pub max_held_bytes: Option<String>,

    /// A task whose runs were cut short this many times in a row (its
    /// server died or handed it over) fails instead of running again
    /// [env: TASK_PROCESSOR_MAX_CUT_SHORT_RUNS] [default: 5]
    #[arg(long, value_name = "N")]
    pub max_cut_short_runs: Option<String>,

    /// WatchTasks: at most this many task changes are kept (each at most
    /// ten minutes) for streams to resume from
    /// [env: TASK_PROCESSOR_WATCH_JOURNAL_CAPACITY] [default: 10000]
    #[arg(long, value_name = "N")]
    pub watch_journal_capacity: Option<String>,

    /// Per-kind rules as YAML or JSON: max_concurrent (within the global
    /// limit, per replica) and the default retry_policy, e.g.
    /// '{email: {max_concurrent: 5, retry_policy: {max_attempts: 3}}}'
    /// [env: TASK_PROCESSOR_KINDS] [default: {}]
    #[arg(long, value_name = "YAML")]
    pub kinds: Option<String>,

    /// Where tasks live: memory, sqlite://PATH (one process) or
    /// postgres://USER@HOST/DB (many replicas) [env: TASK_PROCESSOR_STORE]
    /// [default: sqlite://task-processor.db]
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,

    /// PostgreSQL store: how long a replica's claim on a running task lasts
    /// unless renewed; a dead replica's tasks are taken over after it
    /// [env: TASK_PROCESSOR_LEASE] [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub lease: Option<String>,

    /// The kinds remote workers run through WorkerService, comma
    /// separated: CreateTask accepts them, and their tasks wait until a
    /// worker for the kind connects [env: TASK_PROCESSOR_WORKER_KINDS]
    /// [default: none]
    #[arg(long, value_name = "KINDS")]
    pub worker_kinds: Option<String>,

    /// How long an HTTP/2 connection may be silent before the server pings
    /// it [env: TASK_PROCESSOR_KEEPALIVE_INTERVAL] [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub keepalive_interval: Option<String>,

    /// How long a ping's answer may take before the connection is dropped
    /// (a vanished worker's tasks then run again)
    /// [env: TASK_PROCESSOR_KEEPALIVE_TIMEOUT] [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub keepalive_timeout: Option<String>,

    /// A browser origin (https://host[:port]) whose pages may call the REST
    /// routes and gRPC-Web; repeat the flag or separate origins with commas;
    /// none means no CORS at all
    /// [env: TASK_PROCESSOR_CORS_ORIGINS] [default: none]
    #[arg(long = "cors-origin", value_name = "ORIGIN", action = clap::ArgAction::Append)]
    pub cors_origins: Vec<String>,

    /// error, warn, info, debug or trace; RUST_LOG, when set, overrides it
    /// [env: LOG_LEVEL] [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// json or text [env: LOG_FORMAT] [default: json]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// TLS certificate chain (PEM) of the gRPC port, re-read when it
    /// changes; with --tls-key the port serves TLS only
    /// [env: TASK_PROCESSOR_TLS_CERT] [default: none]
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,

    /// Private key (PEM) of --tls-cert [env: TASK_PROCESSOR_TLS_KEY]
    /// [default: none]
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,

    /// CA certificates (PEM): clients must present a certificate they
    /// signed (mTLS) [env: TASK_PROCESSOR_TLS_CLIENT_CA] [default: none]
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<String>,

    /// Principals file (YAML): turns authentication on; re-read when it
    /// changes [env: TASK_PROCESSOR_AUTH_PRINCIPALS] [default: none]
    #[arg(long, value_name = "FILE")]
    pub auth_principals: Option<String>,

    /// With --auth-principals, reflection needs a principal too: true or
    /// false [env: TASK_PROCESSOR_AUTH_PROTECT_REFLECTION] [default: false]
    #[arg(long, value_name = "BOOL")]
    pub auth_protect_reflection: Option<String>,

    /// Per-tenant quotas of waiting tasks, YAML: '{team-a: {max_waiting:
    /// 100}}' [env: TASK_PROCESSOR_AUTH_TENANT_QUOTAS] [default: {}]
    #[arg(long, value_name = "YAML")]
    pub auth_tenant_quotas: Option<String>,
}

impl Flags {
    /// The settings given as flags: (key, value, flag).
    pub(super) fn values(&self) -> Vec<(&'static str, String, &'static str)> {
        let flags = [
            ("listen", &self.listen, "--listen"),
            ("admin_listen", &self.admin_listen, "--admin-listen"),
            ("max_concurrent", &self.max_concurrent, "--max-concurrent"),
            ("queue_capacity", &self.queue_capacity, "--queue-capacity"),
            (
                "default_timeout",
                &self.default_timeout,
                "--default-timeout",
            ),
            ("max_timeout", &self.max_timeout, "--max-timeout"),
            ("max_data_bytes", &self.max_data_bytes, "--max-data-bytes"),
            ("demo_duration", &self.demo_duration, "--demo-duration"),
            ("node_name", &self.node_name, "--node-name"),
            ("drain_period", &self.drain_period, "--drain-period"),
            ("shutdown_grace", &self.shutdown_grace, "--shutdown-grace"),
            ("retention", &self.retention, "--retention"),
            (
                "max_finished_tasks",
                &self.max_finished_tasks,
                "--max-finished-tasks",
            ),
            ("max_held_bytes", &self.max_held_bytes, "--max-held-bytes"),
            (
                "max_cut_short_runs",
                &self.max_cut_short_runs,
                "--max-cut-short-runs",
            ),
            (
                "watch_journal_capacity",
                &self.watch_journal_capacity,
                "--watch-journal-capacity",
            ),
            ("kinds", &self.kinds, "--kinds"),
            ("worker_kinds", &self.worker_kinds, "--worker-kinds"),
            (
                "keepalive_interval",
                &self.keepalive_interval,
                "--keepalive-interval",
            ),
            (
                "keepalive_timeout",
                &self.keepalive_timeout,
                "--keepalive-timeout",
            ),
            ("store", &self.store, "--store"),
            ("lease", &self.lease, "--lease"),
            ("log_level", &self.log_level, "--log-level"),
            ("log_format", &self.log_format, "--log-format"),
            ("tls.cert_file", &self.tls_cert, "--tls-cert"),
            ("tls.key_file", &self.tls_key, "--tls-key"),
            ("tls.client_ca_file", &self.tls_client_ca, "--tls-client-ca"),
            (
                "auth.principals_file",
                &self.auth_principals,
                "--auth-principals",
            ),
            (
                "auth.protect_reflection",
                &self.auth_protect_reflection,
                "--auth-protect-reflection",
            ),
            (
                "auth.tenant_quotas",
                &self.auth_tenant_quotas,
                "--auth-tenant-quotas",
            ),
        ];
        let mut values: Vec<_> = flags
            .into_iter()
            .filter_map(|(key, value, flag)| value.clone().map(|value| (key, value, flag)))
            .collect();
        // Repeated flags are one list, as a comma list is.
        if !self.cors_origins.is_empty() {
            values.push(("cors_origins", self.cors_origins.join(","), "--cors-origin"));
        }
        values
    }
}
