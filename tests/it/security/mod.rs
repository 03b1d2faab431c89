//! Security of the gRPC port against the real server over real TCP: TLS
//! and certificate rotation (`tls`), mTLS identities (`mtls`), bearer
//! tokens and roles on gRPC, gRPC-Web and REST (`roles`), the principals
//! file's reload (`reload`), the audit line (`audit`), and taskctl over TLS
//! with a token (`taskctl`).
//!
//! Here are the helpers they share: certificates made with rcgen (a CA,
//! server and client certificates), files in a temporary directory, a
//! server started with them, and clients that trust the test CA.

mod audit;
mod mtls;
mod reload;
mod roles;
mod taskctl;
mod tenants;
mod tls;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use task_processor::{
    auth::token_sha256_hex,
    config::{AuthSettings, Config, TlsSettings},
    pb::task_service_client::TaskServiceClient,
};
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::support::{Client, DEADLINE, TestServer, test_config};

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

/// A test CA that signs server and client certificates.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key");
        Self {
            ca: CertifiedIssuer::self_signed(params, key).expect("a CA"),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for 127.0.0.1 and localhost, with `serial`.
    pub fn server(&self, serial: u64) -> Pair {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).expect("params");
        params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
        params
            .distinguished_name
            .push(DnType::CommonName, "task-processor");
        self.sign(params)
    }

    /// A client certificate with a URI SAN (when given) and a CN.
    pub fn client(&self, uri: Option<&str>, common_name: &str) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("an IA5 URI"))];
        }
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.ca).expect("signed");
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// The files a secure server reads, in a directory that lives as long as
/// the test.
pub struct Files {
    pub directory: TempDir,
}

impl Files {
    pub fn new() -> Self {
        Self {
            directory: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    /// Writes `name` whole: to a temporary file first, renamed over it, so
    /// the server never reads half of it (as a Secret's swap).
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        let partial = self.path(&format!(".{name}.partial"));
        std::fs::write(&partial, contents).expect("written");
        std::fs::rename(&partial, &path).expect("renamed");
        path
    }
}

/// A principals file's text: (name, token, roles, tenant); a `None` token
/// is a certificate identity.
pub fn principals_yaml(principals: &[(&str, Option<&str>, &[&str])]) -> String {
    let mut text = String::from("principals:\n");
    for (name, token, roles) in principals {
        text.push_str(&format!(
            "  - name: {name:?}\n    roles: [{}]\n",
            roles.join(", ")
        ));
        if let Some(token) = token {
            text.push_str(&format!("    token_sha256: {}\n", token_sha256_hex(token)));
        }
    }
    text
}

/// The principals most tests use, one per role.
pub const ONE_PER_ROLE: &[(&str, Option<&str>, &[&str])] = &[
    ("reader", Some("reader-token"), &["read"]),
    ("writer", Some("writer-token"), &["write"]),
    ("worker", Some("worker-token"), &["work"]),
    ("root", Some("root-token"), &["admin"]),
    ("both", Some("both-token"), &["read", "write"]),
];

/// A server with TLS from `files` (`server.crt`, `server.key`, and
/// `client-ca.crt` when `mtls`) and the principals of `principals.yaml`
/// when it exists.
pub async fn start_secure(files: &Files, mtls: bool, protect_reflection: bool) -> TestServer {
    let principals = files.path("principals.yaml");
    let tls = TlsSettings {
        cert_file: Some(files.path("server.crt")),
        key_file: Some(files.path("server.key")),
        client_ca_file: mtls.then(|| files.path("client-ca.crt")),
    };
    TestServer::start_with(Config {
        tls,
        auth: AuthSettings {
            tenant_quotas: Default::default(),
            principals_file: principals.exists().then_some(principals),
            protect_reflection,
        },
        ..test_config()
    })
    .await
}

/// A plaintext server with the principals of `yaml`.
pub async fn start_with_principals(
    files: &Files,
    yaml: &str,
    protect_reflection: bool,
) -> TestServer {
    let principals = files.write("principals.yaml", yaml);
    TestServer::start_with(Config {
        auth: AuthSettings {
            tenant_quotas: Default::default(),
            principals_file: Some(principals),
            protect_reflection,
        },
        ..test_config()
    })
    .await
}

/// A TLS channel to `address` that trusts `ca_pem`, presenting `identity`.
pub async fn tls_channel(
    address: SocketAddr,
    ca_pem: &str,
    identity: Option<&Pair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(&pair.cert_pem, &pair.key_pem));
    }
    Channel::from_shared(format!("https://{address}"))
        .expect("a URI")
        .tls_config(tls)?
        .connect_timeout(DEADLINE)
        .connect()
        .await
}

pub async fn tls_client(address: SocketAddr, ca_pem: &str, identity: Option<&Pair>) -> Client {
    TaskServiceClient::new(
        tls_channel(address, ca_pem, identity)
            .await
            .expect("a TLS connection"),
    )
}

/// The certificate a new TLS connection to `address` is shown, or why the
/// handshake failed. `alpn` is offered.
pub async fn served_certificate(
    address: SocketAddr,
    ca_pem: &str,
    alpn: &[u8],
) -> Result<CertificateDer<'static>, String> {
    let stream = handshake(address, ca_pem, None, alpn).await?;
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.clone().into_owned())
        .ok_or_else(|| "no certificate".into())
}

/// A TLS client connection to `address`, trusting `ca_pem`.
pub async fn handshake(
    address: SocketAddr,
    ca_pem: &str,
    identity: Option<&Pair>,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(certificate.expect("PEM"))
            .expect("a root certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(pair) => builder
            .with_client_auth_cert(
                vec![pair.der.clone()],
                rustls::pki_types::PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())
                    .expect("a key"),
            )
            .expect("a client identity"),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|error| error.to_string())?;
    let name = ServerName::try_from("127.0.0.1").expect("a server name");
    tokio::time::timeout(DEADLINE, connector.connect(name.to_owned(), tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|error| error.to_string())
}

/// A request with `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a header value"),
    );
    request
}
