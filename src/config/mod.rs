//! Configuration in layers: built-in defaults < YAML file (`--config`) <
//! environment < flags, resolved into one typed, validated [`Config`].
//!
//! Every setting is described once in [`SETTINGS`]: its file key, its
//! environment variable and its flag. A value that cannot be used is
//! reported with the setting, where it came from and why.

mod flags;
mod kinds;
mod parse;
mod security;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

use crate::{api::Limits, manager::ManagerConfig, store::StoreUrl};

pub use flags::Flags;
pub use kinds::{KindSettings, Kinds, PolicySettings};
pub use security::{AuthSettings, TenantQuota, TlsSettings};

/// How long a client should wait before retrying when the queue is full.
const QUEUE_FULL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The SQLite file of a server run from a working directory.
const DEFAULT_SQLITE_PATH: &str = "task-processor.db";

/// The shortest lease accepted: it is renewed every third of it.
const MIN_LEASE: Duration = Duration::from_secs(3);

/// The largest `max_data_bytes` accepted: gRPC messages this big are
/// already unwise.
const MAX_DATA_BYTES_CEILING: u64 = 64 * 1024 * 1024;

/// One setting: its key in the file, its environment variable and its flag.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub key: &'static str,
    pub env: &'static str,
    pub flag: &'static str,
}

const fn setting(key: &'static str, env: &'static str, flag: &'static str) -> Setting {
    Setting { key, env, flag }
}

/// Every setting. `listen` also honours the Go service's `SERVER_HOST` and
/// `SERVER_PORT`, each replacing its half of the address.
pub const SETTINGS: &[Setting] = &[
    setting("listen", "SERVER_HOST / SERVER_PORT", "--listen"),
    setting(
        "admin_listen",
        "TASK_PROCESSOR_ADMIN_LISTEN",
        "--admin-listen",
    ),
    setting(
        "max_concurrent",
        "PROCESSING_MAX_CONCURRENT",
        "--max-concurrent",
    ),
    setting(
        "queue_capacity",
        "TASK_PROCESSOR_QUEUE_CAPACITY",
        "--queue-capacity",
    ),
    setting(
        "default_timeout",
        "PROCESSING_DEFAULT_TIMEOUT",
        "--default-timeout",
    ),
    setting("max_timeout", "PROCESSING_MAX_TIMEOUT", "--max-timeout"),
    setting(
        "max_data_bytes",
        "TASK_PROCESSOR_MAX_DATA_BYTES",
        "--max-data-bytes",
    ),
    setting(
        "demo_duration",
        "TASK_PROCESSOR_DEMO_DURATION",
        "--demo-duration",
    ),
    setting("node_name", "TASK_PROCESSOR_NODE_NAME", "--node-name"),
    setting(
        "drain_period",
        "TASK_PROCESSOR_DRAIN_PERIOD",
        "--drain-period",
    ),
    setting(
        "shutdown_grace",
        "TASK_PROCESSOR_SHUTDOWN_GRACE",
        "--shutdown-grace",
    ),
    setting("retention", "TASK_PROCESSOR_RETENTION", "--retention"),
    setting(
        "max_finished_tasks",
        "TASK_PROCESSOR_MAX_FINISHED_TASKS",
        "--max-finished-tasks",
    ),
    setting(
        "max_held_bytes",
        "TASK_PROCESSOR_MAX_HELD_BYTES",
        "--max-held-bytes",
    ),
    setting(
        "max_cut_short_runs",
        "TASK_PROCESSOR_MAX_CUT_SHORT_RUNS",
        "--max-cut-short-runs",
    ),
    setting(
        "watch_journal_capacity",
        "TASK_PROCESSOR_WATCH_JOURNAL_CAPACITY",
        "--watch-journal-capacity",
    ),
    setting("kinds", "TASK_PROCESSOR_KINDS", "--kinds"),
    setting(
        "worker_kinds",
        "TASK_PROCESSOR_WORKER_KINDS",
        "--worker-kinds",
    ),
    setting(
        "keepalive_interval",
        "TASK_PROCESSOR_KEEPALIVE_INTERVAL",
        "--keepalive-interval",
    ),
    setting(
        "keepalive_timeout",
        "TASK_PROCESSOR_KEEPALIVE_TIMEOUT",
        "--keepalive-timeout",
    ),
    setting("store", "TASK_PROCESSOR_STORE", "--store"),
    setting("lease", "TASK_PROCESSOR_LEASE", "--lease"),
    setting(
        "cors_origins",
        "TASK_PROCESSOR_CORS_ORIGINS",
        "--cors-origin",
    ),
    setting("log_level", "LOG_LEVEL", "--log-level"),
    setting("log_format", "LOG_FORMAT", "--log-format"),
    setting("tls.cert_file", "TASK_PROCESSOR_TLS_CERT", "--tls-cert"),
    setting("tls.key_file", "TASK_PROCESSOR_TLS_KEY", "--tls-key"),
    setting(
        "tls.client_ca_file",
        "TASK_PROCESSOR_TLS_CLIENT_CA",
        "--tls-client-ca",
    ),
    setting(
        "auth.principals_file",
        "TASK_PROCESSOR_AUTH_PRINCIPALS",
        "--auth-principals",
    ),
    setting(
        "auth.protect_reflection",
        "TASK_PROCESSOR_AUTH_PROTECT_REFLECTION",
        "--auth-protect-reflection",
    ),
    setting(
        "auth.tenant_quotas",
        "TASK_PROCESSOR_AUTH_TENANT_QUOTAS",
        "--auth-tenant-quotas",
    ),
];

/// The sections of the file whose settings are nested one level
/// (`tls: {cert_file: …}`); their keys are `tls.cert_file` everywhere.
const SECTIONS: &[&str] = &["tls", "auth"];

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => formatter.write_str("the built-in default"),
            Source::File(path) => write!(formatter, "config file {}", path.display()),
            Source::Env(name) => write!(formatter, "environment variable {name}"),
            Source::Flag(flag) => write!(formatter, "flag {flag}"),
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {reason}")]
    FileSyntax { path: PathBuf, reason: String },
    #[error("config file {path}: unknown key {key:?} (known keys: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("invalid {setting} from {origin}: {reason}")]
    Invalid {
        setting: &'static str,
        origin: Source,
        reason: String,
    },
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for terminals.
    Text,
}

/// The validated settings of one server process.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// gRPC address, `host:port`.
    pub listen: String,
    /// Admin HTTP address (`/metrics`, `/healthz`, `/readyz`), `host:port`.
    pub admin_listen: String,
    pub max_concurrent: usize,
    pub queue_capacity: usize,
    /// Timeout of a task that asks for none; 0 means no timeout.
    #[serde(serialize_with = "parse::serialize_duration")]
    pub default_timeout: Duration,
    #[serde(serialize_with = "parse::serialize_duration")]
    pub max_timeout: Duration,
    pub max_data_bytes: usize,
    #[serde(serialize_with = "parse::serialize_duration")]
    pub demo_duration: Duration,
    pub node_name: String,
    /// After SIGTERM: how long reads and watches go on while creates are
    /// refused, so Kubernetes can take the pod out of its endpoints.
    #[serde(serialize_with = "parse::serialize_duration")]
    pub drain_period: Duration,
    /// After the drain: how long running tasks may take to finish before
    /// they are cancelled.
    #[serde(serialize_with = "parse::serialize_duration")]
    pub shutdown_grace: Duration,
    /// How long finished tasks are kept.
    #[serde(serialize_with = "parse::serialize_duration")]
    pub retention: Duration,
    /// How many finished tasks are kept at most; the oldest go first.
    pub max_finished_tasks: usize,
    /// The memory budget for tasks' data and results (as compact JSON): a
    /// create that would go past it is refused with RESOURCE_EXHAUSTED.
    pub max_held_bytes: u64,
    /// A task whose runs were cut short this many times in a row (its
    /// server died or handed it over) fails instead of running again.
    pub max_cut_short_runs: u32,
    /// `WatchTasks`: at most this many changes are kept for streams to
    /// resume from (each at most ten minutes).
    pub watch_journal_capacity: usize,
    /// Per-kind rules: a kind's `max_concurrent` and default retry policy.
    pub kinds: Kinds,
    /// The kinds remote workers run (`WorkerService`); none by default.
    pub worker_kinds: Vec<String>,
    /// How long an HTTP/2 connection may send nothing before the server
    /// pings it...
    #[serde(serialize_with = "parse::serialize_duration")]
    pub keepalive_interval: Duration,
    /// ...and how long the ping's answer may take before the connection is
    /// dropped: a worker that vanished (no FIN, no RST) is found within
    /// both, and its tasks run again.
    #[serde(serialize_with = "parse::serialize_duration")]
    pub keepalive_timeout: Duration,
    /// Where tasks live (printed without its password).
    #[serde(serialize_with = "parse::serialize_display")]
    pub store: StoreUrl,
    /// PostgreSQL store: how long a claim on a running task lasts unless
    /// renewed.
    #[serde(serialize_with = "parse::serialize_duration")]
    pub lease: Duration,
    /// The browser origins (`https://host[:port]`) whose pages may call the
    /// REST routes and gRPC-Web of the gRPC port; none by default, so no
    /// page of another origin can.
    pub cors_origins: Vec<String>,
    pub log_level: String,
    pub log_format: LogFormat,
    /// TLS on the gRPC port; off by default.
    pub tls: TlsSettings,
    /// Principals and roles; off by default (every call allowed).
    pub auth: AuthSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:50051".into(),
            admin_listen: "0.0.0.0:9090".into(),
            max_concurrent: 10,
            queue_capacity: 10_000,
            default_timeout: Duration::from_secs(60),
            max_timeout: Duration::from_secs(300),
            max_data_bytes: 1024 * 1024,
            demo_duration: Duration::from_secs(2),
            node_name: parse::default_node_name(),
            drain_period: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(25),
            retention: Duration::from_secs(24 * 60 * 60),
            max_finished_tasks: 100_000,
            // 512 tasks of the largest data (1 MiB) waiting at once; about
            // 1 GiB of resident memory with what the values cost beyond
            // their text, which fits a modest container.
            max_held_bytes: 512 * 1024 * 1024,
            max_cut_short_runs: crate::manager::DEFAULT_MAX_CUT_SHORT_RUNS,
            watch_journal_capacity: crate::manager::DEFAULT_JOURNAL_CAPACITY,
            kinds: Kinds::new(),
            worker_kinds: Vec::new(),
            // A vanished worker is noticed within 20 s, so its tasks run
            // again within the 30 s the contract promises.
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            store: StoreUrl::Sqlite(DEFAULT_SQLITE_PATH.into()),
            lease: Duration::from_secs(30),
            cors_origins: Vec::new(),
            log_level: "info".into(),
            log_format: LogFormat::Json,
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
        }
    }
}

/// The raw values of the file, environment and flag layers, by key.
#[derive(Debug, Default)]
struct Layers {
    values: BTreeMap<&'static str, (String, Source)>,
}

impl Layers {
    fn set(&mut self, key: &'static str, value: String, source: Source) {
        self.values.insert(key, (value, source));
    }

    /// The winning value of `key`, parsed, or the default.
    fn resolve<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
        default: T,
    ) -> Result<(T, Source), ConfigError> {
        match self.values.get(key) {
            None => Ok((default, Source::Default)),
            Some((raw, source)) => {
                parse(raw)
                    .map(|value| (value, source.clone()))
                    .map_err(|reason| ConfigError::Invalid {
                        setting: key,
                        origin: source.clone(),
                        reason,
                    })
            }
        }
    }
}

impl Config {
    /// Resolves the layers: defaults, then the file named by `--config`,
    /// then the environment (read through `env`), then the flags.
    pub fn load(flags: &Flags, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Config::default();
        let mut layers = Layers::default();
        let mut listen_base = defaults.listen.clone();
        if let Some(path) = &flags.config {
            for (key, value) in read_file(path)? {
                if key == "listen" {
                    listen_base.clone_from(&value);
                }
                layers.set(key, value, Source::File(path.clone()));
            }
        }
        apply_env(&mut layers, &listen_base, &env);
        for (key, value, flag) in flags.values() {
            layers.set(key, value, Source::Flag(flag));
        }
        Self::resolve(&layers, defaults)
    }

    fn resolve(layers: &Layers, defaults: Config) -> Result<Self, ConfigError> {
        use parse::{address, count, duration, log_format, log_level, node_name, positive};
        let (listen, _) = layers.resolve("listen", address, defaults.listen)?;
        let (admin_listen, _) = layers.resolve("admin_listen", address, defaults.admin_listen)?;
        let (max_concurrent, _) =
            layers.resolve("max_concurrent", positive, defaults.max_concurrent)?;
        let (queue_capacity, _) =
            layers.resolve("queue_capacity", positive, defaults.queue_capacity)?;
        let (default_timeout, default_timeout_source) = layers.resolve(
            "default_timeout",
            parse::whole_seconds,
            defaults.default_timeout,
        )?;
        let (max_timeout, max_timeout_source) =
            layers.resolve("max_timeout", parse::whole_seconds, defaults.max_timeout)?;
        let (max_data_bytes, max_data_bytes_source) =
            layers.resolve("max_data_bytes", count, defaults.max_data_bytes)?;
        let (demo_duration, _) =
            layers.resolve("demo_duration", duration, defaults.demo_duration)?;
        let (node_name, _) = layers.resolve("node_name", node_name, defaults.node_name)?;
        let (drain_period, _) = layers.resolve("drain_period", duration, defaults.drain_period)?;
        let (shutdown_grace, _) =
            layers.resolve("shutdown_grace", duration, defaults.shutdown_grace)?;
        let (retention, _) = layers.resolve("retention", duration, defaults.retention)?;
        let (max_finished_tasks, _) =
            layers.resolve("max_finished_tasks", positive, defaults.max_finished_tasks)?;
        let (max_held_bytes, max_held_bytes_source) =
            layers.resolve("max_held_bytes", parse::bytes, defaults.max_held_bytes)?;
        let (max_cut_short_runs, _) = layers.resolve(
            "max_cut_short_runs",
            parse::positive_u32,
            defaults.max_cut_short_runs,
        )?;
        let (watch_journal_capacity, _) = layers.resolve(
            "watch_journal_capacity",
            positive,
            defaults.watch_journal_capacity,
        )?;
        let (kinds, _) = layers.resolve("kinds", kinds::parse, defaults.kinds)?;
        let (worker_kinds, _) =
            layers.resolve("worker_kinds", parse::worker_kinds, defaults.worker_kinds)?;
        let (keepalive_interval, _) = layers.resolve(
            "keepalive_interval",
            parse::positive_duration,
            defaults.keepalive_interval,
        )?;
        let (keepalive_timeout, _) = layers.resolve(
            "keepalive_timeout",
            parse::positive_duration,
            defaults.keepalive_timeout,
        )?;
        let (store, _) = layers.resolve("store", parse::store, defaults.store)?;
        let (lease, lease_source) = layers.resolve("lease", duration, defaults.lease)?;
        let (cors_origins, _) =
            layers.resolve("cors_origins", parse::origins, defaults.cors_origins)?;
        let (log_level, _) = layers.resolve("log_level", log_level, defaults.log_level)?;
        let (log_format, _) = layers.resolve("log_format", log_format, defaults.log_format)?;
        let (tls, auth) = Self::resolve_security(layers)?;

        if max_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "max_timeout",
                origin: max_timeout_source,
                reason: "must be at least 1s".into(),
            });
        }
        if default_timeout > max_timeout {
            return Err(ConfigError::Invalid {
                setting: "default_timeout",
                origin: default_timeout_source,
                reason: format!(
                    "{} is above max_timeout ({}, from {max_timeout_source})",
                    humantime::format_duration(default_timeout),
                    humantime::format_duration(max_timeout),
                ),
            });
        }
        if max_data_bytes == 0 || max_data_bytes as u64 > MAX_DATA_BYTES_CEILING {
            return Err(ConfigError::Invalid {
                setting: "max_data_bytes",
                origin: max_data_bytes_source,
                reason: format!("must be between 1 and {MAX_DATA_BYTES_CEILING}"),
            });
        }
        if max_held_bytes < max_data_bytes as u64 {
            return Err(ConfigError::Invalid {
                setting: "max_held_bytes",
                origin: max_held_bytes_source,
                reason: format!(
                    "{max_held_bytes} is below max_data_bytes ({max_data_bytes}, from \
                     {max_data_bytes_source}): the budget must hold at least one task's data"
                ),
            });
        }
        if lease < MIN_LEASE {
            return Err(ConfigError::Invalid {
                setting: "lease",
                origin: lease_source,
                reason: format!(
                    "must be at least {} (it is renewed every third of it)",
                    humantime::format_duration(MIN_LEASE)
                ),
            });
        }
        Ok(Config {
            listen,
            admin_listen,
            max_concurrent,
            queue_capacity,
            default_timeout,
            max_timeout,
            max_data_bytes,
            demo_duration,
            node_name,
            drain_period,
            shutdown_grace,
            retention,
            max_finished_tasks,
            max_held_bytes,
            max_cut_short_runs,
            watch_journal_capacity,
            kinds,
            worker_kinds,
            keepalive_interval,
            keepalive_timeout,
            store,
            lease,
            cors_origins,
            log_level,
            log_format,
            tls,
            auth,
        })
    }

    fn resolve_security(layers: &Layers) -> Result<(TlsSettings, AuthSettings), ConfigError> {
        use security::{path, switch, tenant_quotas};
        let (cert_file, cert_source) = layers.resolve("tls.cert_file", path, None)?;
        let (key_file, key_source) = layers.resolve("tls.key_file", path, None)?;
        let (client_ca_file, client_ca_source) =
            layers.resolve("tls.client_ca_file", path, None)?;
        let (principals_file, _) = layers.resolve("auth.principals_file", path, None)?;
        let (protect_reflection, _) = layers.resolve("auth.protect_reflection", switch, false)?;
        let (tenant_quotas, _) =
            layers.resolve("auth.tenant_quotas", tenant_quotas, Default::default())?;
        // Half a TLS setting would serve plaintext while the operator
        // believes otherwise.
        match (&cert_file, &key_file) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    setting: "tls.key_file",
                    origin: cert_source,
                    reason: "tls.cert_file is set, so tls.key_file must be too".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    setting: "tls.cert_file",
                    origin: key_source,
                    reason: "tls.key_file is set, so tls.cert_file must be too".into(),
                });
            }
            _ => {}
        }
        if client_ca_file.is_some() && cert_file.is_none() {
            return Err(ConfigError::Invalid {
                setting: "tls.client_ca_file",
                origin: client_ca_source,
                reason: "client certificates need TLS: set tls.cert_file and tls.key_file".into(),
            });
        }
        Ok((
            TlsSettings {
                cert_file,
                key_file,
                client_ca_file,
            },
            AuthSettings {
                principals_file,
                protect_reflection,
                tenant_quotas,
            },
        ))
    }

    /// The effective configuration as YAML, for `--print-config`.
    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(self).unwrap_or_else(|error| format!("# cannot print: {error}\n"))
    }

    pub fn manager_config(&self) -> ManagerConfig {
        ManagerConfig {
            max_concurrent: self.max_concurrent,
            queue_capacity: self.queue_capacity,
            node_name: self.node_name.clone(),
            queue_full_retry_after: QUEUE_FULL_RETRY_AFTER,
            retention: self.retention,
            max_finished_tasks: self.max_finished_tasks,
            lease: self.lease,
            max_held_bytes: self.max_held_bytes,
            max_cut_short_runs: self.max_cut_short_runs,
            kind_limits: self
                .kinds
                .iter()
                .filter_map(|(kind, settings)| Some((kind.clone(), settings.max_concurrent?)))
                .collect(),
            watch_journal_capacity: self.watch_journal_capacity,
            tenant_max_waiting: self
                .auth
                .tenant_quotas
                .iter()
                .map(|(tenant, quota)| (tenant.clone(), quota.max_waiting))
                .collect(),
            // The server adds telemetry's: configuration knows no tracing.
            join_stored_trace: None,
        }
    }

    pub fn limits(&self) -> Limits {
        // Checked when the configuration was loaded.
        let retry_policies = self
            .kinds
            .iter()
            .filter_map(|(kind, settings)| {
                let policy = settings.retry_policy.as_ref()?.resolve().ok()?;
                Some((kind.clone(), policy))
            })
            .collect();
        Limits {
            default_timeout_seconds: seconds(self.default_timeout),
            max_timeout_seconds: seconds(self.max_timeout),
            max_data_bytes: self.max_data_bytes,
            retry_policies: std::sync::Arc::new(retry_policies),
        }
    }
}

/// Whole seconds, saturating; timeouts are validated as whole seconds that
/// fit a u32.
fn seconds(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

/// Reads the YAML file: a mapping of known keys to scalars.
fn read_file(path: &Path) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let syntax = |reason: String| ConfigError::FileSyntax {
        path: path.to_owned(),
        reason,
    };
    let document: yaml_serde::Value =
        yaml_serde::from_str(&text).map_err(|error| syntax(error.to_string()))?;
    let mapping = match document {
        yaml_serde::Value::Null => return Ok(Vec::new()),
        yaml_serde::Value::Mapping(mapping) => mapping,
        _ => return Err(syntax("the top level must be a mapping of settings".into())),
    };
    let mut values = Vec::new();
    for (key, value) in flatten_sections(mapping).map_err(syntax)? {
        let Some(setting) = SETTINGS.iter().find(|setting| setting.key == key) else {
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key,
                known: SETTINGS
                    .iter()
                    .map(|setting| setting.key)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let text = match value {
            yaml_serde::Value::Null => continue,
            // The one setting whose value is a mapping.
            yaml_serde::Value::Mapping(_)
                if setting.key == "kinds" || setting.key == "auth.tenant_quotas" =>
            {
                kinds::to_text(&value)
            }
            // The one whose value may be a list: as JSON, which
            // `parse::origins` reads back as a list.
            yaml_serde::Value::Sequence(_)
                if setting.key == "cors_origins" || setting.key == "worker_kinds" =>
            {
                serde_json::to_string(&value).unwrap_or_default()
            }
            yaml_serde::Value::Bool(flag) => flag.to_string(),
            yaml_serde::Value::Number(number) => number.to_string(),
            yaml_serde::Value::String(text) => text,
            _ => {
                return Err(syntax(format!(
                    "{key}: must be a single value, not a list or mapping"
                )));
            }
        };
        values.push((setting.key, text));
    }
    Ok(values)
}

/// The file's top-level pairs, with each section's (`tls:`, `auth:`)
/// pairs in place of the section, keyed `section.key`.
fn flatten_sections(
    mapping: yaml_serde::Mapping,
) -> Result<Vec<(String, yaml_serde::Value)>, String> {
    let mut pairs = Vec::new();
    for (key, value) in mapping {
        let key = key
            .as_str()
            .ok_or_else(|| "every key must be a string".to_owned())?
            .to_owned();
        match value {
            yaml_serde::Value::Mapping(section) if SECTIONS.contains(&key.as_str()) => {
                for (inner, value) in section {
                    let inner = inner
                        .as_str()
                        .ok_or_else(|| format!("{key}: every key must be a string"))?;
                    pairs.push((format!("{key}.{inner}"), value));
                }
            }
            // A section whose every key is commented out.
            yaml_serde::Value::Null if SECTIONS.contains(&key.as_str()) => {}
            value => pairs.push((key, value)),
        }
    }
    Ok(pairs)
}

/// Reads the environment layer. `SERVER_HOST` and `SERVER_PORT` each
/// replace their half of the address the lower layers chose.
fn apply_env(layers: &mut Layers, listen_base: &str, env: &impl Fn(&str) -> Option<String>) {
    let host = env("SERVER_HOST");
    let port = env("SERVER_PORT");
    if host.is_some() || port.is_some() {
        let (base_host, base_port) = listen_base.rsplit_once(':').unwrap_or((listen_base, ""));
        let host = host
            .map(|host| {
                if host.is_empty() {
                    "0.0.0.0".to_owned()
                } else {
                    host
                }
            })
            .unwrap_or_else(|| base_host.to_owned());
        let source = if port.is_some() {
            "SERVER_PORT"
        } else {
            "SERVER_HOST"
        };
        let port = port.unwrap_or_else(|| base_port.to_owned());
        layers.set("listen", format!("{host}:{port}"), Source::Env(source));
    }
    for setting in SETTINGS.iter().filter(|setting| setting.key != "listen") {
        if let Some(value) = env(setting.env) {
            layers.set(setting.key, value, Source::Env(setting.env));
        }
    }
}

#[cfg(test)]
mod tests;
