//! The principals file: who may call, with which roles, in which tenant;
//! and finding the principal a bearer token or a certificate subject names.
//!
//! Tokens are never held here, only their SHA-256 hashes, and a presented
//! token is compared against every hash in constant time, so neither the
//! file nor the timing of an answer tells which tokens exist. Nothing here
//! logs a token or a hash.

use std::{collections::HashSet, fmt, sync::Arc};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a principal may do; the contract's four roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Get, List and the watches.
    Read,
    /// Creates, cancels, deletes, and changes to schedules.
    Write,
    /// The worker service.
    Work,
    /// Everything, including RPCs no other role names.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Work => "work",
            Self::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "work" => Some(Self::Work),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Read => 1,
            Self::Write => 2,
            Self::Work => 4,
            Self::Admin => 8,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// An authenticated caller, put in each authorized request's extensions
/// (as `Arc<Principal>`) for the handlers and the steps after this one
/// (tenants, audit) to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// As the file names it: a person or service, or a certificate's URI
    /// SAN or CN.
    pub name: String,
    /// Empty for a principal bound to no tenant. Parsed and carried, not
    /// yet enforced.
    pub tenant: String,
    roles: u8,
}

impl Principal {
    /// Whether the principal may act as `role`: it has it, or is admin.
    pub fn may(&self, role: Role) -> bool {
        self.roles & (role.bit() | Role::Admin.bit()) != 0
    }

    /// Whether the principal has `role` itself.
    pub fn has(&self, role: Role) -> bool {
        self.roles & role.bit() != 0
    }
}

/// The principals of one version of the file.
#[derive(Debug, Default)]
pub struct Principals {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    principal: Arc<Principal>,
    token_sha256: Option<[u8; 32]>,
}

/// Why a principals file cannot be used; the reload keeps the last good
/// one, the start refuses to run.
#[derive(Debug, thiserror::Error)]
pub enum PrincipalsError {
    #[error("not valid YAML for a principals file: {0}")]
    Syntax(String),
    #[error("principal #{index} has no name")]
    NoName { index: usize },
    #[error("principal {name}: unknown role {role:?} (roles: read, write, work, admin)")]
    UnknownRole { name: String, role: String },
    #[error("principal {name}: token_sha256 must be 64 hex digits (the SHA-256 of the token)")]
    BadHash { name: String },
    #[error("principal {name}: its token_sha256 is another principal's too")]
    DuplicateHash { name: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDocument {
    #[serde(default)]
    principals: Vec<FileEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    #[serde(default)]
    name: String,
    #[serde(default)]
    token_sha256: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
}

impl Principals {
    /// Parses a principals file (YAML, see docs/security.md).
    pub fn parse(text: &str) -> Result<Self, PrincipalsError> {
        // An empty file is no principals (everyone refused), not an error:
        // a Secret may be mounted before it is filled.
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let document: FileDocument = yaml_serde::from_str(text)
            .map_err(|error| PrincipalsError::Syntax(error.to_string()))?;
        let mut seen_hashes = HashSet::new();
        let mut entries = Vec::with_capacity(document.principals.len());
        for (index, entry) in document.principals.into_iter().enumerate() {
            let name = entry.name.trim().to_owned();
            if name.is_empty() {
                return Err(PrincipalsError::NoName { index: index + 1 });
            }
            let mut roles = 0;
            for role in &entry.roles {
                let parsed =
                    Role::parse(role.trim()).ok_or_else(|| PrincipalsError::UnknownRole {
                        name: name.clone(),
                        role: role.clone(),
                    })?;
                roles |= parsed.bit();
            }
            let token_sha256 = match entry.token_sha256 {
                None => None,
                Some(hex) => {
                    let hash = parse_hash(hex.trim())
                        .ok_or_else(|| PrincipalsError::BadHash { name: name.clone() })?;
                    if !seen_hashes.insert(hash) {
                        return Err(PrincipalsError::DuplicateHash { name });
                    }
                    Some(hash)
                }
            };
            entries.push(Entry {
                principal: Arc::new(Principal {
                    name,
                    tenant: entry.tenant.unwrap_or_default(),
                    roles,
                }),
                token_sha256,
            });
        }
        Ok(Self { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal whose token this is. Every hash is compared, in
    /// constant time, whatever matched, so the time taken says nothing of
    /// which hashes exist or how close a guess came.
    pub fn by_token(&self, token: &str) -> Option<Arc<Principal>> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if let Some(hash) = &entry.token_sha256
                && bool::from(hash.ct_eq(&presented))
            {
                found = Some(&entry.principal);
            }
        }
        found.cloned()
    }

    /// The principal a client certificate's subject (URI SAN, else CN)
    /// names; the first of that name in the file.
    pub fn by_name(&self, name: &str) -> Option<Arc<Principal>> {
        self.entries
            .iter()
            .find(|entry| entry.principal.name == name)
            .map(|entry| entry.principal.clone())
    }
}

/// The hex SHA-256 of `token`, as a principals file holds it.
pub fn token_sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut hash = [0; 32];
    for (index, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &str) -> String {
        format!("principals:\n{entries}")
    }

    #[test]
    fn tokens_find_their_principal_and_nothing_else() {
        let text = file(&format!(
            "  - name: alice\n    token_sha256: {}\n    roles: [read, write]\n    tenant: team-a\n\
             \x20 - name: spiffe://cluster.local/ns/jobs/sa/worker\n    roles: [work]\n",
            token_sha256_hex("secret-a")
        ));
        let principals = Principals::parse(&text).expect("valid");
        let alice = principals.by_token("secret-a").expect("alice's token");
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.tenant, "team-a");
        assert!(alice.may(Role::Read) && alice.may(Role::Write));
        assert!(!alice.may(Role::Work) && !alice.may(Role::Admin));
        assert!(principals.by_token("secret-b").is_none());
        assert!(principals.by_token("").is_none());
        let worker = principals
            .by_name("spiffe://cluster.local/ns/jobs/sa/worker")
            .expect("by name");
        assert!(worker.may(Role::Work) && !worker.may(Role::Read));
        assert_eq!(worker.tenant, "");
    }

    #[test]
    fn admin_may_act_as_every_role() {
        let principals =
            Principals::parse(&file("  - name: root\n    roles: [admin]\n")).expect("valid");
        let root = principals.by_name("root").expect("root");
        for role in [Role::Read, Role::Write, Role::Work, Role::Admin] {
            assert!(root.may(role), "{role}");
        }
    }

    #[test]
    fn mistakes_are_refused_with_what_is_wrong() {
        for (text, expected) in [
            ("principals: [", "not valid YAML"),
            (
                "principals:\n  - name: a\n    roles: [reed]\n",
                "unknown role \"reed\"",
            ),
            (
                "principals:\n  - name: a\n    token_sha256: abc\n",
                "64 hex digits",
            ),
            (
                "principals:\n  - roles: [read]\n",
                "principal #1 has no name",
            ),
            (
                "principals:\n  - name: a\n    rolez: [read]\n",
                "unknown field",
            ),
        ] {
            let error = Principals::parse(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        let hash = token_sha256_hex("t");
        let duplicated = file(&format!(
            "  - name: a\n    token_sha256: {hash}\n  - name: b\n    token_sha256: {hash}\n"
        ));
        let error = Principals::parse(&duplicated)
            .expect_err("duplicate")
            .to_string();
        assert!(error.contains("principal b"), "{error}");
        assert!(!error.contains(&hash), "never the hash: {error}");
    }

    #[test]
    fn an_empty_file_has_no_principals() {
        assert!(Principals::parse("").expect("empty").is_empty());
        assert!(
            Principals::parse("principals: []")
                .expect("empty")
                .is_empty()
        );
    }
}
