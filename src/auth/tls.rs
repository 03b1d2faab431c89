//! TLS for the gRPC port: the server's certificate from PEM files, swapped
//! for new connections when the files change (cert-manager's rotation), and
//! with a client CA, client certificates required and verified (mTLS).
//!
//! rustls on the ring provider, which sqlx already builds. The handshake
//! itself is the server's (`server/tls_accept.rs`); this module only makes
//! its `ServerConfig`.

use std::{fmt, path::Path, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};

use super::{
    SecurityError,
    reload::{self, Current},
};
use crate::config::TlsSettings;

/// The protocols offered in ALPN: HTTP/2 for gRPC, HTTP/1.1 for the REST
/// gateway, gRPC-Web and curl.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The server's `ServerConfig`, and with it the task that follows the
/// certificate files.
pub fn server_config(settings: &TlsSettings) -> Result<Option<Arc<ServerConfig>>, SecurityError> {
    let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_pem = read(cert_file, "TLS certificate")?;
    let key_pem = read(key_file, "TLS key")?;
    let certified = certified_key(&provider, &cert_pem, &key_pem)
        .map_err(|problem| problem.into_error(cert_file, key_file))?;
    let resolver = Arc::new(CertificateResolver {
        current: Arc::new(Current::new(certified)),
    });
    let follow_provider = provider.clone();
    reload::follow(
        "TLS certificate",
        vec![cert_file.clone(), key_file.clone()],
        vec![cert_pem, key_pem],
        &resolver.current,
        move |files| {
            let [cert_pem, key_pem] = files else {
                return Err("expected a certificate and a key".into());
            };
            certified_key(&follow_provider, cert_pem, key_pem)
                .map_err(|problem| problem.to_string())
        },
    );

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| SecurityError::Tls(error.to_string()))?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let roots = client_roots(ca_file)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| SecurityError::Invalid {
                    what: "TLS client CA",
                    path: ca_file.clone(),
                    reason: error.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = ALPN_PROTOCOLS
        .iter()
        .map(|protocol| protocol.to_vec())
        .collect();
    Ok(Some(Arc::new(config)))
}

/// Hands every handshake the certificate in force when it starts.
struct CertificateResolver {
    current: Arc<Current<Arc<CertifiedKey>>>,
}

impl fmt::Debug for CertificateResolver {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("CertificateResolver")
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.get()))
    }
}

/// Why a certificate and key cannot be served, before we know which
/// files they came from (a reload names both).
#[derive(Debug)]
enum KeyProblem {
    Certificate(String),
    Key(String),
    Mismatch(String),
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Certificate(reason) => write!(formatter, "the certificate: {reason}"),
            Self::Key(reason) => write!(formatter, "the key: {reason}"),
            Self::Mismatch(reason) => {
                write!(
                    formatter,
                    "the key does not belong to the certificate: {reason}"
                )
            }
        }
    }
}

impl KeyProblem {
    fn into_error(self, cert_file: &Path, key_file: &Path) -> SecurityError {
        match self {
            Self::Certificate(reason) => SecurityError::Invalid {
                what: "TLS certificate",
                path: cert_file.to_owned(),
                reason,
            },
            Self::Key(reason) => SecurityError::Invalid {
                what: "TLS key",
                path: key_file.to_owned(),
                reason,
            },
            Self::Mismatch(reason) => SecurityError::Invalid {
                what: "TLS key",
                path: key_file.to_owned(),
                reason: format!(
                    "does not belong to the certificate {}: {reason}",
                    cert_file.display()
                ),
            },
        }
    }
}

/// A certificate chain (leaf first) and its private key, from PEM, checked
/// to belong together, so a half-rotated pair is never served.
fn certified_key(
    provider: &CryptoProvider,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, KeyProblem> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| KeyProblem::Certificate(format!("not PEM: {error}")))?;
    if chain.is_empty() {
        return Err(KeyProblem::Certificate("no CERTIFICATE block in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| KeyProblem::Key(format!("no usable PEM private key: {error}")))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| KeyProblem::Key(error.to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|error| KeyProblem::Mismatch(error.to_string()))?;
    Ok(Arc::new(certified))
}

fn client_roots(ca_file: &Path) -> Result<RootCertStore, SecurityError> {
    let invalid = |reason: String| SecurityError::Invalid {
        what: "TLS client CA",
        path: ca_file.to_owned(),
        reason,
    };
    let pem = read(ca_file, "TLS client CA")?;
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate.map_err(|error| invalid(format!("not PEM: {error}")))?;
        roots
            .add(certificate)
            .map_err(|error| invalid(error.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("no CERTIFICATE block in it".into()));
    }
    Ok(roots)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}
