//! Precedence of the layers and every validation error, table-driven.

use std::{collections::HashMap, io::Write, time::Duration};

use clap::Parser;

use super::*;

/// Environment variables of a case.
type Vars<'a> = &'a [(&'a str, &'a str)];

/// Flags, environment, the setting the error must name, and a detail it
/// must contain.
type InvalidCase<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str, &'a str);

fn flags(arguments: &[&str]) -> Flags {
    Flags::try_parse_from(std::iter::once("task-processor").chain(arguments.iter().copied()))
        .expect("flags parse")
}

fn yaml_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("written");
    file
}

fn load(arguments: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    Config::load(&flags(arguments), |name| env.get(name).cloned())
}

#[test]
fn defaults_match_the_contract_and_the_issue() {
    let config = load(&[], &[]).expect("defaults are valid");
    assert_eq!(config.listen, "0.0.0.0:50051");
    assert_eq!(config.admin_listen, "0.0.0.0:9090");
    assert_eq!(config.max_concurrent, 10);
    assert_eq!(config.queue_capacity, 10_000);
    assert_eq!(config.default_timeout, Duration::from_secs(60));
    assert_eq!(config.max_timeout, Duration::from_secs(300));
    assert_eq!(config.max_data_bytes, 1024 * 1024);
    assert_eq!(config.demo_duration, Duration::from_secs(2));
    assert_eq!(config.drain_period, Duration::from_secs(5));
    assert_eq!(config.shutdown_grace, Duration::from_secs(25));
    assert_eq!(config.retention, Duration::from_secs(86_400));
    assert_eq!(config.max_finished_tasks, 100_000);
    assert_eq!(config.max_held_bytes, 512 * 1024 * 1024);
    assert_eq!(config.log_level, "info");
    assert_eq!(config.log_format, LogFormat::Json);
}

#[test]
fn two_default_node_names_differ() {
    assert_ne!(Config::default().node_name, Config::default().node_name);
}

#[test]
fn later_layers_win_setting_by_setting() {
    let file = yaml_file(
        "max_concurrent: 3\nqueue_capacity: 30\ndefault_timeout: 20s\nlog_format: text\n",
    );
    let path = file.path().to_str().expect("utf-8 path");
    // (flags, env, expected max_concurrent, queue_capacity, default_timeout)
    let cases: &[(&[&str], Vars, usize, usize, u64)] = &[
        (&[], &[], 10, 10_000, 60),
        (&["--config", path], &[], 3, 30, 20),
        (
            &["--config", path],
            &[("PROCESSING_MAX_CONCURRENT", "4")],
            4,
            30,
            20,
        ),
        (
            &["--config", path, "--max-concurrent", "5"],
            &[
                ("PROCESSING_MAX_CONCURRENT", "4"),
                ("TASK_PROCESSOR_QUEUE_CAPACITY", "40"),
            ],
            5,
            40,
            20,
        ),
        (
            &["--default-timeout", "7s"],
            &[("PROCESSING_DEFAULT_TIMEOUT", "30")],
            10,
            10_000,
            7,
        ),
        (
            &[],
            &[("PROCESSING_DEFAULT_TIMEOUT", "2m")],
            10,
            10_000,
            120,
        ),
    ];
    for (arguments, env, max_concurrent, queue_capacity, default_timeout) in cases {
        let config = load(arguments, env).expect("valid");
        assert_eq!(
            config.max_concurrent, *max_concurrent,
            "{arguments:?} {env:?}"
        );
        assert_eq!(
            config.queue_capacity, *queue_capacity,
            "{arguments:?} {env:?}"
        );
        assert_eq!(
            config.default_timeout.as_secs(),
            *default_timeout,
            "{arguments:?} {env:?}"
        );
    }
}

#[test]
fn the_store_defaults_to_sqlite_and_prints_without_its_password() {
    let config = load(&[], &[]).expect("valid");
    assert_eq!(config.store, StoreUrl::Sqlite("task-processor.db".into()));
    let config = load(&["--store", "postgres://app:secret@db/tasks"], &[]).expect("valid");
    let yaml = config.to_yaml();
    assert!(
        yaml.contains("store: postgres://app:***@db/tasks"),
        "{yaml}"
    );
    assert!(!yaml.contains("secret"), "{yaml}");
    let error = load(&["--store", "mysql://db/tasks"], &[]).expect_err("not a store");
    assert!(error.to_string().contains("--store"), "{error}");
    let error = load(&["--lease", "1s"], &[]).expect_err("too short");
    assert!(error.to_string().contains("lease"), "{error}");
}

#[test]
fn every_setting_is_read_from_its_environment_variable() {
    let env = [
        ("SERVER_HOST", "127.0.0.1"),
        ("SERVER_PORT", "6000"),
        ("TASK_PROCESSOR_ADMIN_LISTEN", "127.0.0.1:6001"),
        ("PROCESSING_MAX_CONCURRENT", "2"),
        ("TASK_PROCESSOR_QUEUE_CAPACITY", "3"),
        ("PROCESSING_DEFAULT_TIMEOUT", "4s"),
        ("PROCESSING_MAX_TIMEOUT", "5m"),
        ("TASK_PROCESSOR_MAX_DATA_BYTES", "600"),
        ("TASK_PROCESSOR_DEMO_DURATION", "700ms"),
        ("TASK_PROCESSOR_NODE_NAME", "pod-8"),
        ("TASK_PROCESSOR_DRAIN_PERIOD", "9s"),
        ("TASK_PROCESSOR_SHUTDOWN_GRACE", "10s"),
        ("TASK_PROCESSOR_RETENTION", "11m"),
        ("TASK_PROCESSOR_MAX_FINISHED_TASKS", "12"),
        ("TASK_PROCESSOR_MAX_HELD_BYTES", "64KiB"),
        ("TASK_PROCESSOR_MAX_CUT_SHORT_RUNS", "14"),
        ("TASK_PROCESSOR_WATCH_JOURNAL_CAPACITY", "15"),
        (
            "TASK_PROCESSOR_KINDS",
            r#"{"echo": {"max_concurrent": 3, "retry_policy": {"max_attempts": 2}}}"#,
        ),
        ("TASK_PROCESSOR_WORKER_KINDS", "thumbnail, email"),
        ("TASK_PROCESSOR_KEEPALIVE_INTERVAL", "16s"),
        ("TASK_PROCESSOR_KEEPALIVE_TIMEOUT", "17s"),
        ("TASK_PROCESSOR_STORE", "postgres://app:secret@db/tasks"),
        ("TASK_PROCESSOR_LEASE", "13s"),
        (
            "TASK_PROCESSOR_CORS_ORIGINS",
            "https://tasks.example.com, http://localhost:8080",
        ),
        ("LOG_LEVEL", "DEBUG"),
        ("LOG_FORMAT", "text"),
        ("TASK_PROCESSOR_TLS_CERT", "/tls/tls.crt"),
        ("TASK_PROCESSOR_TLS_KEY", "/tls/tls.key"),
        ("TASK_PROCESSOR_TLS_CLIENT_CA", "/tls/ca.crt"),
        ("TASK_PROCESSOR_AUTH_PRINCIPALS", "/auth/principals.yaml"),
        ("TASK_PROCESSOR_AUTH_PROTECT_REFLECTION", "true"),
        (
            "TASK_PROCESSOR_AUTH_TENANT_QUOTAS",
            "{team-a: {max_waiting: 16}}",
        ),
    ];
    let config = load(&[], &env).expect("valid");
    assert_eq!(
        config.tls,
        TlsSettings {
            cert_file: Some("/tls/tls.crt".into()),
            key_file: Some("/tls/tls.key".into()),
            client_ca_file: Some("/tls/ca.crt".into()),
        }
    );
    assert_eq!(
        config.auth,
        AuthSettings {
            principals_file: Some("/auth/principals.yaml".into()),
            protect_reflection: true,
            tenant_quotas: [("team-a".to_owned(), TenantQuota { max_waiting: 16 })].into(),
        }
    );
    assert_eq!(config.listen, "127.0.0.1:6000");
    assert_eq!(config.admin_listen, "127.0.0.1:6001");
    assert_eq!((config.max_concurrent, config.queue_capacity), (2, 3));
    assert_eq!(config.default_timeout, Duration::from_secs(4));
    assert_eq!(config.max_timeout, Duration::from_secs(300));
    assert_eq!(config.max_data_bytes, 600);
    assert_eq!(config.demo_duration, Duration::from_millis(700));
    assert_eq!(config.node_name, "pod-8");
    assert_eq!(config.drain_period, Duration::from_secs(9));
    assert_eq!(config.shutdown_grace, Duration::from_secs(10));
    assert_eq!(config.retention, Duration::from_secs(660));
    assert_eq!(config.max_finished_tasks, 12);
    assert_eq!(config.max_held_bytes, 64 * 1024);
    assert_eq!(config.max_cut_short_runs, 14);
    assert_eq!(config.watch_journal_capacity, 15);
    assert_eq!(config.manager_config().watch_journal_capacity, 15);
    assert_eq!(config.kinds["echo"].max_concurrent, Some(3));
    assert_eq!(config.manager_config().kind_limits["echo"], 3);
    assert_eq!(config.limits().default_retry_policy("echo").max_attempts, 2);
    assert_eq!(
        config.limits().default_retry_policy("sleep").max_attempts,
        1
    );
    assert_eq!(
        config.store,
        StoreUrl::Postgres("postgres://app:secret@db/tasks".into())
    );
    assert_eq!(config.lease, Duration::from_secs(13));
    assert_eq!(config.worker_kinds, ["thumbnail", "email"]);
    assert_eq!(config.keepalive_interval, Duration::from_secs(16));
    assert_eq!(config.keepalive_timeout, Duration::from_secs(17));
    assert_eq!(
        config.cors_origins,
        ["https://tasks.example.com", "http://localhost:8080"]
    );
    assert_eq!(
        (config.log_level.as_str(), config.log_format),
        ("debug", LogFormat::Text)
    );
    // Every setting of the table was exercised.
    assert_eq!(env.len(), SETTINGS.len() + 1, "listen has two variables");
}

#[test]
fn server_host_and_port_each_replace_their_half_of_the_address() {
    let file = yaml_file("listen: 10.0.0.1:7000\n");
    let path = file.path().to_str().expect("utf-8 path");
    let port_only = load(&["--config", path], &[("SERVER_PORT", "7001")]).expect("valid");
    assert_eq!(port_only.listen, "10.0.0.1:7001");
    let host_only = load(&[], &[("SERVER_HOST", "127.0.0.1")]).expect("valid");
    assert_eq!(host_only.listen, "127.0.0.1:50051");
    let empty_host = load(&[], &[("SERVER_HOST", ""), ("SERVER_PORT", "8080")]).expect("valid");
    assert_eq!(empty_host.listen, "0.0.0.0:8080");
    let flag_wins = load(&["--listen", "127.0.0.1:1"], &[("SERVER_PORT", "2")]).expect("valid");
    assert_eq!(flag_wins.listen, "127.0.0.1:1");
}

/// Each invalid value names the setting, its source and the reason.
#[test]
fn every_validation_error_names_setting_source_and_reason() {
    let file = yaml_file("max_concurrent: 0\n");
    let path = file.path().to_str().expect("utf-8 path").to_owned();
    let cases: Vec<InvalidCase> = vec![
        (
            vec!["--max-concurrent", "0"],
            vec![],
            "max_concurrent",
            "flag --max-concurrent",
        ),
        (
            vec!["--max-concurrent", "ten"],
            vec![],
            "max_concurrent",
            "not a whole number",
        ),
        (
            vec![],
            vec![("PROCESSING_MAX_CONCURRENT", "-1")],
            "max_concurrent",
            "environment variable PROCESSING_MAX_CONCURRENT",
        ),
        (
            vec!["--config", &path],
            vec![],
            "max_concurrent",
            "config file",
        ),
        (
            vec!["--queue-capacity", "0"],
            vec![],
            "queue_capacity",
            "at least 1",
        ),
        (
            vec!["--default-timeout", "soon"],
            vec![],
            "default_timeout",
            "not a duration",
        ),
        (
            vec!["--default-timeout", "1500ms"],
            vec![],
            "default_timeout",
            "whole number of seconds",
        ),
        (
            vec!["--default-timeout", "10m"],
            vec![],
            "default_timeout",
            "above max_timeout",
        ),
        (
            vec!["--max-timeout", "0s"],
            vec![],
            "max_timeout",
            "at least 1s",
        ),
        (
            vec![],
            vec![("PROCESSING_MAX_TIMEOUT", "200000000000s")],
            "max_timeout",
            "too long",
        ),
        (
            vec!["--max-data-bytes", "0"],
            vec![],
            "max_data_bytes",
            "between 1 and",
        ),
        (
            vec!["--max-data-bytes", "1GB"],
            vec![],
            "max_data_bytes",
            "not a whole number",
        ),
        (
            vec!["--demo-duration", "x"],
            vec![],
            "demo_duration",
            "not a duration",
        ),
        (vec!["--node-name", " "], vec![], "node_name", "1 to 253"),
        (
            vec!["--drain-period=-5s"],
            vec![],
            "drain_period",
            "not a duration",
        ),
        (
            vec![],
            vec![("TASK_PROCESSOR_SHUTDOWN_GRACE", "forever")],
            "shutdown_grace",
            "TASK_PROCESSOR_SHUTDOWN_GRACE",
        ),
        (
            vec!["--retention", "1 fortnight"],
            vec![],
            "retention",
            "not a duration",
        ),
        (
            vec!["--max-finished-tasks", "0"],
            vec![],
            "max_finished_tasks",
            "at least 1",
        ),
        (
            vec!["--watch-journal-capacity", "0"],
            vec![],
            "watch_journal_capacity",
            "at least 1",
        ),
        (
            vec!["--max-held-bytes", "0"],
            vec![],
            "max_held_bytes",
            "at least 1",
        ),
        (
            vec!["--max-held-bytes", "lots"],
            vec![],
            "max_held_bytes",
            "not a size",
        ),
        (
            vec![],
            vec![("TASK_PROCESSOR_MAX_HELD_BYTES", "1000")],
            "max_held_bytes",
            "below max_data_bytes",
        ),
        (
            vec![],
            vec![("LOG_LEVEL", "loud")],
            "log_level",
            "LOG_LEVEL",
        ),
        (
            vec![],
            vec![("LOG_FORMAT", "xml")],
            "log_format",
            "json, text",
        ),
        (vec!["--listen", "50051"], vec![], "listen", "host:port"),
        (vec!["--listen", ":50051"], vec![], "listen", "no host"),
        (
            vec![],
            vec![("SERVER_PORT", "tcp://10.0.0.1:80")],
            "listen",
            "SERVER_PORT",
        ),
        (
            vec![],
            vec![("SERVER_PORT", "http")],
            "listen",
            "SERVER_PORT",
        ),
        (
            vec!["--admin-listen", "0.0.0.0:99999"],
            vec![],
            "admin_listen",
            "valid port",
        ),
    ];
    for (arguments, env, setting, detail) in cases {
        let error = load(&arguments, &env).expect_err(&format!("{arguments:?} {env:?} must fail"));
        let message = error.to_string();
        assert!(
            message.contains(setting),
            "{arguments:?} {env:?}: {message}"
        );
        assert!(message.contains(detail), "{arguments:?} {env:?}: {message}");
    }
}

#[test]
fn file_problems_are_reported_with_the_file() {
    let unknown = yaml_file("max_concurent: 3\n");
    let unknown_path = unknown.path().to_str().expect("utf-8 path").to_owned();
    let broken = yaml_file("max_concurrent: [1, 2\n");
    let broken_path = broken.path().to_str().expect("utf-8 path").to_owned();
    let nested = yaml_file("log_level:\n  nested: true\n");
    let nested_path = nested.path().to_str().expect("utf-8 path").to_owned();
    let cases = [
        (unknown_path.as_str(), "unknown key \"max_concurent\""),
        (broken_path.as_str(), "not valid YAML"),
        (nested_path.as_str(), "single value"),
        ("/no/such/file.yaml", "cannot read config file"),
    ];
    for (path, expected) in cases {
        let message = load(&["--config", path], &[]).expect_err(path).to_string();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains(path), "{message}");
    }
}

#[test]
fn the_printed_configuration_loads_back_to_the_same_values() {
    let config = load(
        &["--max-concurrent", "7", "--retention", "90m"],
        &[("LOG_FORMAT", "text")],
    )
    .expect("valid");
    let yaml = config.to_yaml();
    assert!(yaml.contains("retention: 1h 30m"), "{yaml}");
    let file = yaml_file(&yaml);
    let path = file.path().to_str().expect("utf-8 path");
    let again = load(&["--config", path], &[]).expect("the printed YAML is a valid config file");
    assert_eq!(again.to_yaml(), yaml);
}

#[test]
fn the_example_file_documents_every_key_and_loads() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml");
    let text = std::fs::read_to_string(example).expect("config/example.yaml exists");
    for setting in SETTINGS {
        // A section's keys are nested under it: `tls:`, then `cert_file:`
        // indented (commented out, as most examples are).
        let documented = match setting.key.split_once('.') {
            Some((section, key)) => {
                text.contains(&format!("{section}:")) && text.contains(&format!(" {key}:"))
            }
            None => text.contains(&format!("{}:", setting.key)),
        };
        assert!(documented, "example.yaml lacks {}", setting.key);
    }
    load(&["--config", example], &[]).expect("the example is valid");
}

#[test]
fn cors_origins_come_as_repeated_flags_comma_lists_or_yaml_lists() {
    assert!(load(&[], &[]).expect("valid").cors_origins.is_empty());
    let config = load(
        &[
            "--cors-origin",
            "https://A.example.com",
            "--cors-origin",
            "http://localhost:8080,http://[::1]:3000",
        ],
        &[],
    )
    .expect("valid");
    assert_eq!(
        config.cors_origins,
        [
            "https://a.example.com",
            "http://localhost:8080",
            "http://[::1]:3000"
        ]
    );
    let file = yaml_file("cors_origins:\n  - https://tasks.example.com\n");
    let path = file.path().to_str().expect("utf-8 path");
    let config = load(&["--config", path], &[]).expect("a YAML list");
    assert_eq!(config.cors_origins, ["https://tasks.example.com"]);
    let yaml = config.to_yaml();
    let printed = yaml_file(&yaml);
    let path = printed.path().to_str().expect("utf-8 path");
    let again = load(&["--config", path], &[]).expect("prints as it loads");
    assert_eq!(again.cors_origins, config.cors_origins);
    for none in ["none", "[]", ""] {
        let config = load(&["--cors-origin", none], &[]).expect(none);
        assert!(config.cors_origins.is_empty(), "{none}");
    }

    for refused in [
        "*",
        "tasks.example.com",
        "https://tasks.example.com/",
        "https://tasks.example.com/app",
        "ftp://tasks.example.com",
        "https://user@tasks.example.com",
        "https://tasks.example.com?x=1",
    ] {
        let error = load(&["--cors-origin", refused], &[]).expect_err(refused);
        let message = error.to_string();
        assert!(
            message.contains("cors_origins") && message.contains("--cors-origin"),
            "{refused}: {message}"
        );
    }
}

#[test]
fn security_settings_nest_in_the_file_and_come_whole() {
    let file = yaml_file(
        "tls:\n  cert_file: /tls/tls.crt\n  key_file: /tls/tls.key\nauth:\n  principals_file: p.yaml\n",
    );
    let path = file.path().to_str().expect("utf-8 path");
    let config = load(&["--config", path], &[]).expect("valid");
    assert_eq!(config.tls.cert_file, Some("/tls/tls.crt".into()));
    assert_eq!(config.auth.principals_file, Some("p.yaml".into()));
    assert!(!config.auth.protect_reflection);
    let dotted = yaml_file("tls.cert_file: a.crt\ntls.key_file: a.key\n");
    let path = dotted.path().to_str().expect("utf-8 path");
    assert_eq!(
        load(&["--config", path], &[]).expect("valid").tls.key_file,
        Some("a.key".into())
    );
    // Tenant quotas: a mapping in the file, the same YAML in the
    // environment; a field other than max_waiting is refused.
    let quotas = yaml_file("auth:\n  tenant_quotas:\n    team-a:\n      max_waiting: 7\n");
    let path = quotas.path().to_str().expect("utf-8 path");
    let config = load(&["--config", path], &[]).expect("valid");
    assert_eq!(config.auth.tenant_quotas["team-a"].max_waiting, 7);
    assert_eq!(config.manager_config().tenant_max_waiting["team-a"], 7);
    let env = [(
        "TASK_PROCESSOR_AUTH_TENANT_QUOTAS",
        "{team-b: {max_waiting: 3}}",
    )];
    let config = load(&[], &env).expect("valid");
    assert_eq!(config.auth.tenant_quotas["team-b"].max_waiting, 3);
    assert!(load(&["--auth-tenant-quotas", "{team-a: {max: 3}}"], &[]).is_err());
    // Off by default.
    let defaults = load(&[], &[]).expect("valid");
    assert_eq!(defaults.tls, TlsSettings::default());
    assert_eq!(defaults.auth, AuthSettings::default());
    // Half a TLS setting, or a client CA without TLS, is refused.
    for args in [
        &["--tls-cert", "a.crt"][..],
        &["--tls-key", "a.key"],
        &["--tls-client-ca", "ca.crt"],
        &["--auth-protect-reflection", "yes"],
    ] {
        assert!(load(args, &[]).is_err(), "{args:?}");
    }
    let unknown = yaml_file("tls:\n  cert: a.crt\n");
    let path = unknown.path().to_str().expect("utf-8 path");
    let error = load(&["--config", path], &[])
        .expect_err("unknown key")
        .to_string();
    assert!(error.contains("tls.cert"), "{error}");
}

#[test]
fn worker_kinds_come_as_a_comma_list_or_a_yaml_list_and_bad_names_are_refused() {
    assert!(load(&[], &[]).expect("valid").worker_kinds.is_empty());
    let flags = load(&["--worker-kinds", "resize,email"], &[]).expect("valid");
    assert_eq!(flags.worker_kinds, ["resize", "email"]);
    let file = yaml_file("worker_kinds:\n  - resize\n  - email\n");
    let path = file.path().to_str().expect("utf-8 path");
    let from_file = load(&["--config", path], &[]).expect("valid");
    assert_eq!(from_file.worker_kinds, ["resize", "email"]);
    let printed = yaml_file(&from_file.to_yaml());
    let printed_path = printed.path().to_str().expect("utf-8 path");
    let again = load(&["--config", printed_path], &[]).expect("printed YAML loads");
    assert_eq!(again.worker_kinds, from_file.worker_kinds);
    for bad in ["resize,resize", "a b", "x/y", ","] {
        let error = load(&["--worker-kinds", bad], &[])
            .expect_err(bad)
            .to_string();
        assert!(error.contains("worker_kinds"), "{bad}: {error}");
    }
    let error = load(&["--node-name", "pod/1"], &[])
        .expect_err("a slash in a node name")
        .to_string();
    assert!(error.contains("node_name"), "{error}");
}
