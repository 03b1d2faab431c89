//! What the server knows of a connection's peer, for every request on it:
//! its address, and with mTLS the identity its certificate names.
//!
//! The identity is read once, when the handshake ends, so a request pays
//! an `Arc` clone for it, never a certificate parse.

use std::{net::SocketAddr, sync::Arc};

use tonic::transport::server::TcpConnectInfo;
use x509_cert::{
    Certificate,
    der::{
        Decode, Tag, Tagged,
        asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef},
        oid::db::rfc4519::CN,
    },
    ext::pkix::{SubjectAltName, name::GeneralName},
};

/// The connection info tonic puts in every request's extensions (our
/// connections' `Connected::ConnectInfo`), in place of `TcpConnectInfo`.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub local_addr: Option<SocketAddr>,
    pub remote_addr: Option<SocketAddr>,
    /// With mTLS: the verified client certificate's first URI SAN (a SPIFFE
    /// id, say), else its subject's CN. `None` on a plaintext connection, or
    /// when the certificate names neither.
    pub certificate_subject: Option<Arc<str>>,
}

impl PeerInfo {
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    /// A connection's addresses, as tonic would have given them.
    pub fn of_tcp(tcp: TcpConnectInfo, certificate_subject: Option<Arc<str>>) -> Self {
        Self {
            local_addr: tcp.local_addr,
            remote_addr: tcp.remote_addr,
            certificate_subject,
        }
    }
}

/// The identity a DER certificate names: its first URI SAN, else its CN.
/// `None` when it cannot be parsed (rustls verified it already, so this
/// means a form we do not read) or names neither.
pub fn certificate_subject(der: &[u8]) -> Option<Arc<str>> {
    let certificate = Certificate::from_der(der).ok()?;
    let tbs = &certificate.tbs_certificate;
    if let Ok(Some((_critical, names))) = tbs.get::<SubjectAltName>() {
        let uri = names.0.iter().find_map(|name| match name {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.as_str()),
            _ => None,
        });
        if let Some(uri) = uri {
            return Some(Arc::from(uri));
        }
    }
    tbs.subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|attribute| attribute.oid == CN)
        .find_map(|attribute| directory_string(&attribute.value))
        .map(Arc::from)
}

/// A CN's text: the DirectoryString forms certificates use.
fn directory_string(value: &x509_cert::der::Any) -> Option<String> {
    let text = match value.tag() {
        Tag::Utf8String => Utf8StringRef::try_from(value).ok()?.as_str().to_owned(),
        Tag::PrintableString => PrintableStringRef::try_from(value)
            .ok()?
            .as_str()
            .to_owned(),
        Tag::Ia5String => Ia5StringRef::try_from(value).ok()?.as_str().to_owned(),
        Tag::TeletexString => TeletexStringRef::try_from(value).ok()?.as_str().to_owned(),
        _ => return None,
    };
    Some(text)
}
