//! `WorkerBuilder`: the worker's settings, checked once by `build` before
//! any traffic (address, TLS, token, handlers), with the defaults and why.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tonic::{
    metadata::AsciiMetadataValue,
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

use super::{Handler, Worker, WorkerError};
use crate::{errors::error_chain, pb};

/// The most tasks one stream may run at once (the contract's limit).
pub const MAX_CONCURRENT_LIMIT: u32 = 10_000;

/// How long running handlers may take to finish once the worker is told to
/// stop, before the stream is closed and their tasks go back to the server.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long a handler may go on after its run was cancelled before it is
/// dropped: until then the server keeps the stream's slot taken.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(10);

/// The first wait before reconnecting, doubled at each failure in a row.
pub const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_millis(250);

/// The longest wait between reconnects.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);

/// How often the connection is pinged, and how long a ping may go
/// unanswered: a worker waiting for assignments sends nothing, and only the
/// pings tell an idle server from a vanished one (then it reconnects).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(10);

/// How long connecting may take before it counts as a failure.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Collects a worker's settings; [`WorkerBuilder::build`] checks them.
pub struct WorkerBuilder {
    endpoint: String,
    name: String,
    max_concurrent: u32,
    token: Option<String>,
    tls_ca_pem: Option<Vec<u8>>,
    handlers: BTreeMap<String, Arc<dyn Handler>>,
    shutdown_grace: Duration,
    cancel_grace: Duration,
    reconnect_initial: Duration,
    reconnect_max: Duration,
    keepalive: Duration,
    connect_timeout: Duration,
}

/// The checked settings a running worker reads.
pub(super) struct Settings {
    pub(super) endpoint: Endpoint,
    /// `host:port`, for logs.
    pub(super) address: String,
    /// `Bearer <token>`, when a token was given.
    pub(super) authorization: Option<AsciiMetadataValue>,
    pub(super) hello: pb::WorkerHello,
    pub(super) handlers: BTreeMap<String, Arc<dyn Handler>>,
    pub(super) shutdown_grace: Duration,
    pub(super) cancel_grace: Duration,
    pub(super) reconnect_initial: Duration,
    pub(super) reconnect_max: Duration,
}

impl WorkerBuilder {
    pub(super) fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            name: String::new(),
            max_concurrent: 1,
            token: None,
            tls_ca_pem: None,
            handlers: BTreeMap::new(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            reconnect_initial: DEFAULT_RECONNECT_INITIAL,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            keepalive: DEFAULT_KEEPALIVE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The worker's name, shown in `Task.node` as `<server node>/<name>` and
    /// by `ListWorkers`; empty (the default) means "worker".
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many tasks run at once, 1 (the default) to 10000.
    pub fn max_concurrent(mut self, max_concurrent: u32) -> Self {
        self.max_concurrent = max_concurrent;
        self
    }

    /// A bearer token, sent as `authorization: Bearer <token>`; the
    /// server's principal for it needs the role `work`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Connects with TLS and checks the server's certificate against this CA
    /// (PEM). Without it, an `https://` endpoint is checked against the
    /// public roots.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Runs tasks of `kind` with `handler` (replacing an earlier one for the
    /// same kind). Every kind must be one the server hands out to workers.
    pub fn handle(mut self, kind: impl Into<String>, handler: impl Handler) -> Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// How long running handlers may take to finish after shutdown is
    /// signalled; then the stream closes and the server runs what was left
    /// again, elsewhere or later.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How long a cancelled handler may go on before it is dropped and its
    /// outcome sent, which frees the slot.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// The first and the longest wait between reconnects.
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_initial = initial;
        self.reconnect_max = max;
        self
    }

    /// How often the connection is pinged and how long a ping may go
    /// unanswered before the connection counts as lost.
    pub fn keepalive(mut self, keepalive: Duration) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// How long connecting may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Checks the settings; nothing is sent until [`Worker::run_until`].
    pub fn build(self) -> Result<Worker, WorkerError> {
        if self.handlers.is_empty() {
            return Err(WorkerError::Config(
                "no handler: call .handle(kind, handler) at least once".into(),
            ));
        }
        if !(1..=MAX_CONCURRENT_LIMIT).contains(&self.max_concurrent) {
            return Err(WorkerError::Config(format!(
                "max_concurrent must be 1 to {MAX_CONCURRENT_LIMIT}, not {}",
                self.max_concurrent
            )));
        }
        let (uri, address) = endpoint_uri(&self.endpoint, self.tls_ca_pem.is_some())?;
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|error| WorkerError::Config(format!("endpoint {uri}: {error}")))?
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive)
            .keep_alive_while_idle(true);
        if uri.starts_with("https://") {
            let tls = match self.tls_ca_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_webpki_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|error| WorkerError::Config(format!("TLS: {}", error_chain(&error))))?;
        }
        let authorization = match self.token {
            None => None,
            Some(token) => Some(authorization(&token)?),
        };
        let hello = pb::WorkerHello {
            kinds: self.handlers.keys().cloned().collect(),
            max_concurrent: self.max_concurrent,
            worker_name: self.name,
        };
        let settings = Settings {
            endpoint,
            address,
            authorization,
            hello,
            handlers: self.handlers,
            shutdown_grace: self.shutdown_grace,
            cancel_grace: self.cancel_grace,
            reconnect_initial: self.reconnect_initial,
            reconnect_max: self.reconnect_max,
        };
        Ok(Worker {
            settings: Arc::new(settings),
        })
    }
}

/// The URI to connect to and its `host:port`: `host:port` gets `http://`,
/// or `https://` when a CA was given; a CA with `http://` is a mistake.
fn endpoint_uri(text: &str, has_ca: bool) -> Result<(String, String), WorkerError> {
    let text = text.trim();
    let uri = match text.split_once("://") {
        Some(("http", _)) if has_ca => {
            return Err(WorkerError::Config(format!(
                "endpoint {text:?} is plaintext, but a TLS CA was given; use https://"
            )));
        }
        Some(("http" | "https", _)) => text.to_owned(),
        Some((scheme, _)) => {
            return Err(WorkerError::Config(format!(
                "endpoint {text:?}: unknown scheme {scheme:?}; use http://, https:// or host:port"
            )));
        }
        None if has_ca => format!("https://{text}"),
        None => format!("http://{text}"),
    };
    let parsed: http::Uri = uri
        .parse()
        .map_err(|error| WorkerError::Config(format!("endpoint {text:?}: {error}")))?;
    match parsed.authority() {
        Some(authority) if !authority.host().is_empty() => {
            let address = authority.to_string();
            Ok((uri, address))
        }
        _ => Err(WorkerError::Config(format!(
            "endpoint {text:?} has no host; use host:port"
        ))),
    }
}

/// The `authorization` header for `token`, which is never echoed.
fn authorization(token: &str) -> Result<AsciiMetadataValue, WorkerError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(WorkerError::Config("the token is empty".into()));
    }
    AsciiMetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| WorkerError::Config("the token has characters a header cannot carry".into()))
}

#[cfg(test)]
mod tests {
    use serde_json::Value as JsonValue;

    use super::*;
    use crate::worker::{Job, JobError};

    async fn noop(_job: Job) -> Result<JsonValue, JobError> {
        Ok(JsonValue::Null)
    }

    #[test]
    fn addresses_get_a_scheme() {
        let (uri, address) = endpoint_uri("127.0.0.1:50051", false).expect("valid");
        assert_eq!(uri, "http://127.0.0.1:50051");
        assert_eq!(address, "127.0.0.1:50051");
        let (uri, _) = endpoint_uri("tasks.internal:443", true).expect("valid");
        assert_eq!(uri, "https://tasks.internal:443");
        assert!(endpoint_uri("http://tasks.internal:80", true).is_err());
        assert!(endpoint_uri("ftp://tasks.internal", false).is_err());
        assert!(endpoint_uri("http://", false).is_err());
    }

    #[test]
    fn build_checks_handlers_concurrency_and_token() {
        let no_handler = Worker::builder("127.0.0.1:1").build();
        assert!(matches!(no_handler, Err(WorkerError::Config(_))));
        let zero = Worker::builder("127.0.0.1:1")
            .handle("resize", noop)
            .max_concurrent(0)
            .build();
        assert!(matches!(zero, Err(WorkerError::Config(_))));
        let bad_token = Worker::builder("127.0.0.1:1")
            .handle("resize", noop)
            .token("new\nline")
            .build();
        assert!(
            matches!(bad_token, Err(WorkerError::Config(message)) if !message.contains("line"))
        );
    }

    #[tokio::test]
    async fn the_hello_names_every_kind_once() {
        let worker = Worker::builder("127.0.0.1:1")
            .name("thumbs")
            .max_concurrent(4)
            .handle("resize", noop)
            .handle("thumbnail", noop)
            .handle("resize", noop)
            .build()
            .expect("valid");
        let hello = &worker.settings.hello;
        assert_eq!(hello.kinds, ["resize", "thumbnail"]);
        assert_eq!(hello.max_concurrent, 4);
        assert_eq!(hello.worker_name, "thumbs");
    }
}
