//! Reaching the server: turning `--addr` and the TLS and token flags into
//! an endpoint, connecting, and turning a failed connection into words
//! (`no server at …`).

use std::{io, path::Path, time::Duration};

use task_processor::errors::error_chain;
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{cli::GlobalArgs, errors::CliError};

/// How often taskctl pings the server over HTTP/2, and how long each ping
/// may go unanswered: a server that froze or vanished without closing the
/// connection (SIGSTOP, a dead host, a dropped route) is noticed within
/// about twice this, 20 s, and reported as a lost connection (exit 7)
/// instead of a watch that never returns. Pings are cheap, and one every
/// 10 s is well above what servers tolerate. Overridable only by the
/// hidden `--keepalive`, for tests. Text, because it is clap's default.
pub const DEFAULT_KEEPALIVE: &str = "10s";

/// What every call goes through: the channel, with the bearer token (if
/// any) added to each call's metadata.
pub type Transport = InterceptedService<Channel, Credentials>;

/// The `authorization` metadata every call carries, when a token is given.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    authorization: Option<AsciiMetadataValue>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        Ok(request)
    }
}

impl Credentials {
    /// From `--token` (or `TASKCTL_TOKEN`) or `--token-file`.
    fn from_flags(global: &GlobalArgs) -> Result<Self, CliError> {
        let token = match (&global.token, &global.token_file) {
            (Some(_), Some(_)) => {
                return Err(CliError::Usage(
                    "give --token (or TASKCTL_TOKEN) or --token-file, not both".into(),
                ));
            }
            (Some(token), None) => token.trim().to_owned(),
            (None, Some(file)) => read_text(file, "--token-file")?.trim().to_owned(),
            (None, None) => return Ok(Self::default()),
        };
        if token.is_empty() {
            return Err(CliError::Usage("the token is empty".into()));
        }
        // Never echo the token: the message says what is wrong with it only.
        let authorization = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            CliError::Usage("the token has characters a header cannot carry".into())
        })?;
        Ok(Self {
            authorization: Some(authorization),
        })
    }
}

/// Where and how to connect, checked before any network traffic.
#[derive(Debug, Clone)]
pub struct ServerAddress {
    /// The URI tonic connects to, always with a scheme.
    uri: String,
    /// `host:port`, as people write it in messages.
    authority: String,
    /// `Some` connects with TLS (`https://`, `--tls`, `--ca`, `--cert`).
    tls: Option<ClientTlsConfig>,
    credentials: Credentials,
}

impl ServerAddress {
    /// Accepts `http://host:port`, `https://host:port` and `host:port`
    /// (TLS when `--tls`, `--ca` or `--cert` asks for it), and reads the
    /// files the TLS and token flags name.
    pub fn from_flags(global: &GlobalArgs) -> Result<Self, CliError> {
        let mut address = Self::parse(&global.addr)?;
        let wants_tls = global.tls || global.ca.is_some() || global.cert.is_some();
        if wants_tls && address.uri.starts_with("http://") {
            if global.addr.trim().starts_with("http://") {
                return Err(CliError::Usage(format!(
                    "--addr {} is plaintext, but TLS flags were given; use https://{}",
                    global.addr.trim(),
                    address.authority
                )));
            }
            address.uri = format!("https://{}", address.authority);
        }
        if address.uri.starts_with("https://") {
            address.tls = Some(tls_config(global)?);
        } else if global.key.is_some() {
            return Err(CliError::Usage("--key needs --cert".into()));
        }
        address.credentials = Credentials::from_flags(global)?;
        Ok(address)
    }

    fn parse(text: &str) -> Result<Self, CliError> {
        let text = text.trim();
        let uri = match text.split_once("://") {
            Some(("http" | "https", _)) => text.to_owned(),
            Some((scheme, _)) => {
                return Err(CliError::Usage(format!(
                    "--addr {text:?}: unknown scheme {scheme:?}; use http://host:port, \
                     https://host:port or host:port"
                )));
            }
            None => format!("http://{text}"),
        };
        let parsed: http::Uri = uri.parse().map_err(|error| {
            CliError::Usage(format!(
                "--addr {text:?} is not an address ({error}); use host:port"
            ))
        })?;
        let authority = match parsed.authority() {
            Some(authority) if !authority.host().is_empty() => authority.to_string(),
            _ => {
                return Err(CliError::Usage(format!(
                    "--addr {text:?} has no host; use host:port"
                )));
            }
        };
        Ok(Self {
            uri,
            authority,
            tls: None,
            credentials: Credentials::default(),
        })
    }

    /// Connects at once, so that a missing server is reported as such
    /// rather than as the failure of whatever call came first.
    ///
    /// The connection pings the server every `keepalive`, and counts as
    /// lost when a ping goes unanswered as long, even with no call in
    /// flight: a watch waits on the server without sending anything, and
    /// only the pings tell a quiet task from a frozen server.
    pub async fn connect(
        &self,
        connect_timeout: Duration,
        keepalive: Duration,
    ) -> Result<Transport, CliError> {
        let mut endpoint = Endpoint::from_shared(self.uri.clone())
            .map_err(|error| CliError::Usage(format!("--addr {}: {error}", self.uri)))?
            .connect_timeout(connect_timeout)
            .http2_keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive)
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|error| CliError::Usage(format!("TLS: {}", error_chain(&error))))?;
        }
        let connecting = endpoint.connect();
        match tokio::time::timeout(connect_timeout, connecting).await {
            Ok(Ok(channel)) => Ok(InterceptedService::new(channel, self.credentials.clone())),
            Ok(Err(error)) => Err(self.connect_error(&error)),
            Err(_elapsed) => Err(CliError::CannotConnect {
                address: self.authority.clone(),
                reason: format!(
                    "no answer within {}",
                    humantime::format_duration(connect_timeout)
                ),
            }),
        }
    }

    fn connect_error(&self, error: &tonic::transport::Error) -> CliError {
        let address = self.authority.clone();
        match io_error_kind(error) {
            Some(io::ErrorKind::ConnectionRefused) => CliError::ConnectionRefused { address },
            _ => CliError::CannotConnect {
                address,
                reason: error_chain(error),
            },
        }
    }
}

/// TLS: the server's certificate checked against `--ca`, else the public
/// roots; with `--cert` and `--key`, our certificate for mTLS.
fn tls_config(global: &GlobalArgs) -> Result<ClientTlsConfig, CliError> {
    let mut config = ClientTlsConfig::new();
    config = match &global.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read_bytes(ca, "--ca")?)),
        None => config.with_webpki_roots(),
    };
    match (&global.cert, &global.key) {
        (Some(cert), Some(key)) => {
            let identity =
                Identity::from_pem(read_bytes(cert, "--cert")?, read_bytes(key, "--key")?);
            config = config.identity(identity);
        }
        (None, None) => {}
        _ => return Err(CliError::Usage("--cert and --key go together".into())),
    }
    Ok(config)
}

fn read_bytes(path: &Path, flag: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|error| {
        CliError::Usage(format!("{flag} {}: cannot read: {error}", path.display()))
    })
}

fn read_text(path: &Path, flag: &str) -> Result<String, CliError> {
    String::from_utf8(read_bytes(path, flag)?)
        .map_err(|_| CliError::Usage(format!("{flag} {}: not UTF-8 text", path.display())))
}

/// The kind of the first I/O error among the causes.
fn io_error_kind(error: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io_error) = current.downcast_ref::<io::Error>() {
            return Some(io_error.kind());
        }
        cause = current.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_without_a_scheme_get_http() {
        let address = ServerAddress::parse("127.0.0.1:50051").expect("valid");
        assert_eq!(address.uri, "http://127.0.0.1:50051");
        assert_eq!(address.authority, "127.0.0.1:50051");
        let address = ServerAddress::parse("http://tasks.internal:7000").expect("valid");
        assert_eq!(address.authority, "tasks.internal:7000");
    }

    #[test]
    fn https_is_accepted() {
        let address = ServerAddress::parse("https://tasks.internal:443").expect("valid");
        assert_eq!(address.uri, "https://tasks.internal:443");
    }

    #[test]
    fn nonsense_is_a_usage_error() {
        for text in ["ftp://host:1", "http://", "not an address"] {
            let error = ServerAddress::parse(text).expect_err(text);
            assert!(matches!(error, CliError::Usage(_)), "{text}: {error}");
        }
    }
}
