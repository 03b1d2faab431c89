//! Configuration: the command-line flags and the validated settings the
//! server runs with.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;

use crate::{api::Limits, manager::ManagerConfig};

/// The largest `--max-data-bytes` accepted: gRPC messages this big are
/// already unwise.
const MAX_DATA_BYTES_CEILING: usize = 64 * 1024 * 1024;

/// How long a client should wait before retrying when the queue is full.
const QUEUE_FULL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// task-processor: runs tasks submitted over gRPC with bounded workers,
/// timeouts and cancellation, and streams their states live.
#[derive(Clone, Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Flags {
    /// Address the gRPC server listens on.
    #[arg(long, default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// How many tasks may run at the same time; the rest wait in FIFO order.
    #[arg(long, default_value_t = 10)]
    pub max_concurrent: usize,

    /// How many tasks may wait in the queue; beyond it, CreateTask answers
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 10_000)]
    pub queue_capacity: usize,

    /// Timeout of a task that asks for none (timeout_seconds 0), in whole
    /// seconds ("60s", "5m"); "0s" means no timeout.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub default_timeout: Duration,

    /// Largest timeout a task may ask for; larger requests are refused.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub max_timeout: Duration,

    /// How long a `demo` task works.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub demo_duration: Duration,

    /// Largest task `data`, in bytes of its protobuf encoding.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_data_bytes: usize,

    /// Name this process writes into the `node` of the tasks it runs.
    /// Default: the host name plus a short random suffix, so two processes
    /// on one host differ.
    #[arg(long)]
    pub node_name: Option<String>,

    /// On SIGTERM/SIGINT, how long to keep answering reads and watches
    /// (while refusing creates and reporting NOT_SERVING) before running
    /// tasks are cancelled and the server stops. A second signal exits at
    /// once.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_period: Duration,
}

/// A setting that cannot work, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting --{setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

/// The validated settings of one server process.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_concurrent: usize,
    pub queue_capacity: usize,
    pub default_timeout_seconds: u32,
    pub max_timeout_seconds: u32,
    pub demo_duration: Duration,
    pub max_data_bytes: usize,
    pub node_name: String,
    pub drain_period: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            max_concurrent: 10,
            queue_capacity: 10_000,
            default_timeout_seconds: 60,
            max_timeout_seconds: 300,
            demo_duration: Duration::from_secs(2),
            max_data_bytes: 1024 * 1024,
            node_name: default_node_name(),
            drain_period: Duration::from_secs(5),
        }
    }
}

impl TryFrom<Flags> for ServerConfig {
    type Error = ConfigError;

    fn try_from(flags: Flags) -> Result<Self, Self::Error> {
        let config = Self {
            listen: flags.listen,
            max_concurrent: flags.max_concurrent,
            queue_capacity: flags.queue_capacity,
            default_timeout_seconds: whole_seconds("default-timeout", flags.default_timeout)?,
            max_timeout_seconds: whole_seconds("max-timeout", flags.max_timeout)?,
            demo_duration: flags.demo_duration,
            max_data_bytes: flags.max_data_bytes,
            node_name: flags.node_name.unwrap_or_else(default_node_name),
            drain_period: flags.drain_period,
        };
        config.validate()?;
        Ok(config)
    }
}

impl ServerConfig {
    /// Checks the settings fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent == 0 {
            return Err(invalid("max-concurrent", "must be at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(invalid("queue-capacity", "must be at least 1"));
        }
        if self.max_timeout_seconds == 0 {
            return Err(invalid("max-timeout", "must be at least 1s"));
        }
        if self.default_timeout_seconds > self.max_timeout_seconds {
            return Err(invalid(
                "default-timeout",
                format!(
                    "{}s is above --max-timeout ({}s)",
                    self.default_timeout_seconds, self.max_timeout_seconds
                ),
            ));
        }
        if self.max_data_bytes == 0 || self.max_data_bytes > MAX_DATA_BYTES_CEILING {
            return Err(invalid(
                "max-data-bytes",
                format!("must be between 1 and {MAX_DATA_BYTES_CEILING}"),
            ));
        }
        let node_name = self.node_name.trim();
        if node_name.is_empty() || node_name.len() > 253 || node_name.chars().any(char::is_control)
        {
            return Err(invalid(
                "node-name",
                "must be 1 to 253 characters without control characters",
            ));
        }
        Ok(())
    }

    pub fn manager_config(&self) -> ManagerConfig {
        ManagerConfig {
            max_concurrent: self.max_concurrent,
            queue_capacity: self.queue_capacity,
            node_name: self.node_name.clone(),
            queue_full_retry_after: QUEUE_FULL_RETRY_AFTER,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            default_timeout_seconds: self.default_timeout_seconds,
            max_timeout_seconds: self.max_timeout_seconds,
            max_data_bytes: self.max_data_bytes,
        }
    }
}

fn whole_seconds(setting: &'static str, duration: Duration) -> Result<u32, ConfigError> {
    if duration.subsec_nanos() != 0 {
        return Err(invalid(setting, "must be a whole number of seconds"));
    }
    u32::try_from(duration.as_secs()).map_err(|_| invalid(setting, "is too large"))
}

/// The host name plus six random hex digits.
fn default_node_name() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host = if host.is_empty() {
        "task-processor".to_owned()
    } else {
        host
    };
    // The tail of a v7 UUID is random.
    let random = uuid::Uuid::now_v7().simple().to_string();
    format!("{host}-{}", &random[random.len() - 6..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arguments: &[&str]) -> Result<ServerConfig, String> {
        let flags = Flags::try_parse_from(
            std::iter::once("task-processor").chain(arguments.iter().copied()),
        )
        .map_err(|error| error.to_string())?;
        ServerConfig::try_from(flags).map_err(|error| error.to_string())
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "0.0.0.0:50051");
        assert_eq!(config.max_concurrent, 10);
        assert_eq!(config.queue_capacity, 10_000);
        assert_eq!(config.default_timeout_seconds, 60);
        assert_eq!(config.max_timeout_seconds, 300);
        assert_eq!(config.demo_duration, Duration::from_secs(2));
        assert_eq!(config.max_data_bytes, 1024 * 1024);
    }

    #[test]
    fn two_default_node_names_differ() {
        assert_ne!(default_node_name(), default_node_name());
    }

    #[test]
    fn every_invalid_setting_is_named() {
        let cases: &[(&[&str], &str)] = &[
            (&["--max-concurrent", "0"], "--max-concurrent"),
            (&["--queue-capacity", "0"], "--queue-capacity"),
            (&["--max-timeout", "0s"], "--max-timeout"),
            (&["--default-timeout", "10m"], "--default-timeout"),
            (&["--default-timeout", "1.5s"], "--default-timeout"),
            (&["--max-data-bytes", "0"], "--max-data-bytes"),
            (&["--node-name", " "], "--node-name"),
            (&["--default-timeout", "soon"], "--default-timeout"),
        ];
        for (arguments, setting) in cases {
            let error = parse(arguments).expect_err("invalid");
            assert!(error.contains(setting), "{arguments:?}: {error}");
        }
    }
}
