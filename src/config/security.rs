//! The security settings: TLS files and the principals file, each off
//! until set (see docs/security.md). Only paths and switches live here;
//! `auth` reads the files.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

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
    /// Per tenant, how many of its tasks may wait at once; tenants not
    /// listed have no quota of their own (only `queue_capacity`).
    pub tenant_quotas: BTreeMap<String, TenantQuota>,
}

/// The quota of one tenant (`auth.tenant_quotas.<tenant>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuota {
    /// At most this many of the tenant's tasks wait (pending or retrying)
    /// at once; a create past it is `RESOURCE_EXHAUSTED`.
    pub max_waiting: usize,
}

/// The `auth.tenant_quotas` setting: a mapping of tenant names to their
/// quota, as YAML (a mapping in the file, the same as text elsewhere).
pub fn tenant_quotas(text: &str) -> Result<BTreeMap<String, TenantQuota>, String> {
    let quotas: Option<BTreeMap<String, TenantQuota>> =
        yaml_serde::from_str(text).map_err(|error| {
            format!("must be a mapping of tenant names to {{max_waiting: N}} ({error})")
        })?;
    let quotas = quotas.unwrap_or_default();
    if let Some(tenant) = quotas.keys().find(|tenant| tenant.is_empty()) {
        return Err(format!("{tenant:?}: a tenant name must not be empty"));
    }
    Ok(quotas)
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
