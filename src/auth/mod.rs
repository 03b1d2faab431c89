//! Security of the gRPC port, all of it off by default: TLS with
//! certificate rotation and mTLS (`tls`), the principals file (`principals`),
//! which role each RPC needs (`access`), and the tower layer that decides
//! every call (`layer`). `peer` is what a connection tells a request;
//! `reload` follows files that change on disk.
//!
//! Tenants are parsed and carried on the [`Principal`], not yet enforced.
//! Nothing here knows the manager or the store.

mod access;
mod layer;
mod peer;
mod principals;
mod reload;
mod tls;

use std::{path::PathBuf, sync::Arc};

use crate::config::{AuthSettings, TlsSettings};

pub use access::{Access, access, audited, method_name};
pub use layer::{AuthLayer, AuthService, Authenticator, Refusal};
pub use peer::{PeerInfo, certificate_subject};
pub use principals::{Principal, Principals, PrincipalsError, Role, token_sha256_hex};
pub use reload::POLL_EVERY;

/// Why the security settings cannot be used at start. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {reason}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("principals file {path}")]
    Principals {
        path: PathBuf,
        #[source]
        source: PrincipalsError,
    },
    #[error("TLS cannot be set up: {0}")]
    Tls(String),
}

/// The port's security, made once at start from the settings.
pub struct Security {
    /// `Some` serves TLS only on the port.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Checks every call when principals are configured; passes every
    /// call straight through otherwise.
    pub layer: AuthLayer,
}

impl Security {
    /// Reads the files the settings name, and starts following them for
    /// changes (until what is returned is dropped). Needs a tokio runtime.
    pub fn load(tls: &TlsSettings, auth: &AuthSettings) -> Result<Self, SecurityError> {
        let tls_config = tls::server_config(tls)?;
        let authenticator = match &auth.principals_file {
            None => None,
            Some(path) => Some(Arc::new(Authenticator::load(
                path,
                auth.protect_reflection,
                tls.client_ca_file.is_some(),
            )?)),
        };
        Ok(Self {
            tls: tls_config,
            layer: AuthLayer::new(authenticator),
        })
    }
}
