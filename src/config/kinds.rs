//! The `kinds` setting: per-kind rules, as YAML (a mapping in the file, or
//! the same as text in the environment or a flag):
//!
//! ```yaml
//! kinds:
//!   email:
//!     max_concurrent: 5          # at most 5 email tasks run at once
//!     retry_policy:              # the default policy of email tasks
//!       max_attempts: 5
//!       initial_backoff: 2s
//!       max_backoff: 10m
//!       backoff_multiplier: 2
//! ```

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::task::RetryPolicy;

/// The rules of one kind, as written.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KindSettings {
    /// At most this many tasks of the kind run at once (on one replica),
    /// within the global `max_concurrent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    /// The kind's default retry policy; fields left out take the
    /// contract's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<PolicySettings>,
}

/// A retry policy as written: durations in humantime form (`2s`, `10m`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_backoff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_multiplier: Option<f64>,
}

/// Every kind's rules, by kind name.
pub type Kinds = BTreeMap<String, KindSettings>;

/// Parses and checks the `kinds` setting's text (YAML or JSON).
pub fn parse(text: &str) -> Result<Kinds, String> {
    let kinds: Option<Kinds> = yaml_serde::from_str(text)
        .map_err(|error| format!("must be a mapping of kind names to their rules ({error})"))?;
    let kinds = kinds.unwrap_or_default();
    for (kind, settings) in &kinds {
        if settings.max_concurrent == Some(0) {
            return Err(format!("{kind}.max_concurrent must be at least 1"));
        }
        if let Some(policy) = &settings.retry_policy {
            policy
                .resolve()
                .map_err(|(field, reason)| format!("{kind}.retry_policy.{field} {reason}"))?;
        }
    }
    Ok(kinds)
}

impl PolicySettings {
    /// The effective policy: each field left out takes the contract's
    /// default, and the whole must obey the contract's rules. An error
    /// names the field and says why.
    pub fn resolve(&self) -> Result<RetryPolicy, (&'static str, String)> {
        let defaults = RetryPolicy::default();
        let wait = |field: &'static str, text: &Option<String>, default: Duration| match text {
            None => Ok(default),
            Some(text) => humantime::parse_duration(text)
                .map_err(|error| (field, format!("is not a duration ({error}): {text:?}"))),
        };
        let policy = RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            initial_backoff: wait(
                "initial_backoff",
                &self.initial_backoff,
                defaults.initial_backoff,
            )?,
            max_backoff: wait("max_backoff", &self.max_backoff, defaults.max_backoff)?,
            backoff_multiplier: self
                .backoff_multiplier
                .unwrap_or(defaults.backoff_multiplier),
        };
        policy
            .check()
            .map_err(|invalid| (invalid.field, invalid.reason))?;
        Ok(policy)
    }
}

/// The kinds' rules as text for a layer (the file's mapping, re-encoded).
pub fn to_text(value: &yaml_serde::Value) -> String {
    yaml_serde::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_with_defaults_for_what_is_left_out() {
        let kinds = parse(
            "email: {max_concurrent: 2, retry_policy: {max_attempts: 4, initial_backoff: 3s}}\n\
             report: {}",
        )
        .expect("valid");
        let email = &kinds["email"];
        assert_eq!(email.max_concurrent, Some(2));
        let policy = email
            .retry_policy
            .as_ref()
            .expect("a policy")
            .resolve()
            .expect("valid policy");
        assert_eq!(policy.max_attempts, 4);
        assert_eq!(policy.initial_backoff, Duration::from_secs(3));
        assert_eq!(policy.max_backoff, Duration::from_secs(300));
        assert_eq!(kinds["report"], KindSettings::default());
        assert!(parse("").expect("empty").is_empty());
    }

    #[test]
    fn every_broken_rule_names_the_kind_and_the_field() {
        for (text, named) in [
            ("email: {max_concurrent: 0}", "email.max_concurrent"),
            (
                "email: {retry_policy: {max_attempts: 0}}",
                "email.retry_policy.max_attempts",
            ),
            (
                "email: {retry_policy: {initial_backoff: soon}}",
                "email.retry_policy.initial_backoff",
            ),
            (
                "email: {retry_policy: {initial_backoff: 1h, max_backoff: 1m}}",
                "email.retry_policy.max_backoff",
            ),
            (
                "email: {retry_policy: {backoff_multiplier: 0.5}}",
                "email.retry_policy.backoff_multiplier",
            ),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.starts_with(named), "{text}: {error}");
        }
        let unknown = parse("email: {max_concurent: 2}").expect_err("typo");
        assert!(unknown.contains("max_concurent"), "{unknown}");
        assert!(parse("[1, 2]").is_err());
    }
}
