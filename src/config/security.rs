//! The security settings: TLS files and the principals file, each off
//! until set (see docs/security.md). Only paths and switches live here;
//! `auth` reads the files.

use std::path::PathBuf;

use serde::Serialize;

/// TLS on the gRPC port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TlsSettings {
    /// The server's certificate chain, PEM, leaf first; re-read when it
    /// changes. With `key_file`, the port serves TLS only.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CAs whose client certificates are required and accepted (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

/// Authentication and roles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuthSettings {
    /// The principals (YAML); set, every call but health needs one.
    pub principals_file: Option<PathBuf>,
    /// Reflection needs a principal too.
    pub protect_reflection: bool,
}

/// A file path setting: any text; empty or `none` leaves it unset (so a
/// lower layer's file can be switched off from the environment).
pub fn path(text: &str) -> Result<Option<PathBuf>, String> {
    let text = text.trim();
    if text.is_empty() || text == "none" {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(text)))
}

/// `true` or `false`.
pub fn switch(text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{other:?} is neither true nor false")),
    }
}
