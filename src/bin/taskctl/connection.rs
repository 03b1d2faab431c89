//! Reaching the server: turning `--addr` into an endpoint, connecting, and
//! turning a failed connection into words (`no server at …`).
//!
//! TLS is not implemented; its flag names are reserved and refused here.

use std::{io, time::Duration};

use task_processor::errors::error_chain;
use tonic::transport::{Channel, Endpoint};

use crate::{cli::GlobalArgs, errors::CliError};

/// How often taskctl pings the server over HTTP/2, and how long each ping
/// may go unanswered: a server that froze or vanished without closing the
/// connection (SIGSTOP, a dead host, a dropped route) is noticed within
/// about twice this, 20 s, and reported as a lost connection (exit 7)
/// instead of a watch that never returns. Pings are cheap, and one every
/// 10 s is well above what servers tolerate. Overridable only by the
/// hidden `--keepalive`, for tests. Text, because it is clap's default.
pub const DEFAULT_KEEPALIVE: &str = "10s";

/// Where and how to connect, checked before any network traffic.
#[derive(Debug, Clone)]
pub struct ServerAddress {
    /// The URI tonic connects to, always with a scheme.
    uri: String,
    /// `host:port`, as people write it in messages.
    authority: String,
}

impl ServerAddress {
    /// Accepts `http://host:port` and `host:port`; refuses `https://` and
    /// the TLS flags until TLS is supported.
    pub fn from_flags(global: &GlobalArgs) -> Result<Self, CliError> {
        if global.tls || global.ca_cert.is_some() {
            return Err(tls_not_supported());
        }
        Self::parse(&global.addr)
    }

    fn parse(text: &str) -> Result<Self, CliError> {
        let text = text.trim();
        let uri = match text.split_once("://") {
            Some(("http", _)) => text.to_owned(),
            Some(("https", _)) => return Err(tls_not_supported()),
            Some((scheme, _)) => {
                return Err(CliError::Usage(format!(
                    "--addr {text:?}: unknown scheme {scheme:?}; use http://host:port or host:port"
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
        Ok(Self { uri, authority })
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
    ) -> Result<Channel, CliError> {
        let endpoint = Endpoint::from_shared(self.uri.clone())
            .map_err(|error| CliError::Usage(format!("--addr {}: {error}", self.uri)))?
            .connect_timeout(connect_timeout)
            .http2_keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive)
            .keep_alive_while_idle(true);
        let connecting = endpoint.connect();
        match tokio::time::timeout(connect_timeout, connecting).await {
            Ok(Ok(channel)) => Ok(channel),
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

fn tls_not_supported() -> CliError {
    CliError::Usage(
        "TLS is not supported yet (--tls, --ca-cert and https:// are reserved); \
         use a plain http://host:port address"
            .into(),
    )
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
    fn tls_and_nonsense_are_usage_errors() {
        for text in [
            "https://host:1",
            "ftp://host:1",
            "http://",
            "not an address",
        ] {
            let error = ServerAddress::parse(text).expect_err(text);
            assert!(matches!(error, CliError::Usage(_)), "{text}: {error}");
        }
    }
}
