//! Parsers for setting values, shared by every layer. Each returns a
//! reason a person can act on.

use std::time::Duration;

use serde::Serializer;

use super::LogFormat;
use crate::store::StoreUrl;

/// `host:port`, with a numeric port. The host may be a name; it is
/// resolved when the port is bound.
pub fn address(text: &str) -> Result<String, String> {
    let text = text.trim();
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} must be host:port, e.g. 0.0.0.0:50051"))?;
    if host.is_empty() {
        return Err(format!(
            "{text:?} has no host; use 0.0.0.0:{port} for every interface"
        ));
    }
    // An IPv6 host must be bracketed; anything else with a colon is garbage
    // such as a Kubernetes service link (`tcp://10.0.0.1:80`).
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.contains(':') && !bracketed {
        return Err(format!(
            "{text:?} is not host:port (write IPv6 hosts as [::1]:50051)"
        ));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{text:?} has no valid port (0 to 65535)"))?;
    Ok(text.to_owned())
}

/// A whole number, 0 or more.
pub fn count(text: &str) -> Result<usize, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))
}

/// A size in bytes, 1 or more: a whole number, or one with a binary unit
/// (`512MiB`, `64 KiB`, `2GiB`).
pub fn bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?} is not a size like 536870912, 512MiB or 2GiB"
            ));
        }
    };
    let value = number
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?} is not a size like 536870912, 512MiB or 2GiB"))?;
    if value == 0 {
        return Err("must be at least 1".into());
    }
    Ok(value)
}

/// A whole number, 1 or more.
pub fn positive(text: &str) -> Result<usize, String> {
    match count(text)? {
        0 => Err("must be at least 1".into()),
        value => Ok(value),
    }
}

/// A count of at least 1 that fits 32 bits.
pub fn positive_u32(text: &str) -> Result<u32, String> {
    let value = positive(text)?;
    u32::try_from(value).map_err(|_| format!("must be at most {}", u32::MAX))
}

/// `30s`, `5m`, `1h 30m`, or a bare number of seconds as the Go service
/// accepted.
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not a duration like 30s or 5m ({error})"))
}

/// A duration of whole seconds that fits the API's `uint32` seconds.
pub fn whole_seconds(text: &str) -> Result<Duration, String> {
    let value = duration(text)?;
    if value.subsec_nanos() != 0 {
        return Err(format!("{text:?} must be a whole number of seconds"));
    }
    if value.as_secs() > u64::from(u32::MAX) {
        return Err(format!("{text:?} is too long"));
    }
    Ok(value)
}

pub fn node_name(text: &str) -> Result<String, String> {
    let name = text.trim();
    if name.is_empty() || name.len() > 253 || name.chars().any(char::is_control) {
        return Err("must be 1 to 253 characters without control characters".into());
    }
    // A run on a remote worker shows as `<node>/<worker>`.
    if name.contains('/') {
        return Err(format!("{name:?} must not contain \"/\""));
    }
    Ok(name.to_owned())
}

/// The kinds remote workers run: a comma list, `none`, or a YAML list (as
/// the config file's list arrives). Each is 1 to 100 characters of
/// letters, digits, `.`, `_` and `-`, as a kind name in a request may be.
pub fn worker_kinds(text: &str) -> Result<Vec<String>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") || text.is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<String> = if text.starts_with('[') {
        yaml_serde::from_str(text)
            .map_err(|error| format!("{text:?} is not a list of kinds: {error}"))?
    } else {
        text.split(',').map(str::to_owned).collect()
    };
    let mut kinds: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let kind = item.trim();
        let valid = !kind.is_empty()
            && kind.len() <= 100
            && kind
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(format!(
                "{kind:?} is not a kind name: 1 to 100 letters, digits, '.', '_' or '-'"
            ));
        }
        if kinds.iter().any(|seen| seen == kind) {
            return Err(format!("{kind:?} is named twice"));
        }
        kinds.push(kind.to_owned());
    }
    Ok(kinds)
}

/// A duration above zero.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let value = duration(text)?;
    if value.is_zero() {
        return Err("must be more than 0s".into());
    }
    Ok(value)
}

pub fn log_level(text: &str) -> Result<String, String> {
    let level = text.trim().to_ascii_lowercase();
    match level.as_str() {
        "error" | "warn" | "info" | "debug" | "trace" => Ok(level),
        // The Go service's names.
        "warning" => Ok("warn".into()),
        _ => Err(format!(
            "{text:?} is not one of error, warn, info, debug, trace"
        )),
    }
}

pub fn log_format(text: &str) -> Result<LogFormat, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "json" => Ok(LogFormat::Json),
        "text" | "console" | "pretty" => Ok(LogFormat::Text),
        _ => Err(format!("{text:?} is not one of json, text")),
    }
}

pub fn store(text: &str) -> Result<StoreUrl, String> {
    text.parse()
}

/// Browser origins for CORS: a comma-separated list, or a YAML or JSON list
/// (as the file gives it); `none` (or nothing, or `[]`) is none. Each is
/// what a browser sends in `Origin`: `http` or `https`, a host, maybe a
/// port, and nothing else.
pub fn origins(text: &str) -> Result<Vec<String>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let items: Vec<String> = if text.starts_with('[') {
        yaml_serde::from_str(text)
            .map_err(|error| format!("{text:?} is not a list of origins: {error}"))?
    } else {
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    };
    items.iter().map(|item| origin(item.trim())).collect()
}

fn origin(text: &str) -> Result<String, String> {
    if text == "*" {
        return Err(
            "\"*\" is not accepted: list the origins whose pages may call the server".into(),
        );
    }
    let refused = || {
        format!(
            "{text:?} is not an origin: write the scheme, host and port only, as a browser \
             sends it, e.g. https://tasks.example.com or http://localhost:8080"
        )
    };
    let uri: http::Uri = text.parse().map_err(|_| refused())?;
    let scheme_is_web = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_only = uri
        .authority()
        .is_some_and(|authority| !authority.as_str().contains('@') && !authority.host().is_empty());
    let no_path = uri.path() == "/" && uri.query().is_none() && !text.ends_with('/');
    if !(scheme_is_web && host_only && no_path) {
        return Err(refused());
    }
    // Browsers send scheme and host in lower case.
    Ok(text.to_ascii_lowercase())
}

/// Values that print themselves safely (a store URL hides its password).
pub fn serialize_display<T: std::fmt::Display, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Durations print as they are written: `30s`, `5m`, `1day`.
pub fn serialize_duration<S: Serializer>(
    value: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let text = if value.is_zero() {
        "0s".to_owned()
    } else {
        humantime::format_duration(*value).to_string()
    };
    serializer.serialize_str(&text)
}

/// The host name plus six random hex digits, so two processes on one host
/// differ.
pub fn default_node_name() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host = if host.is_empty() {
        "task-processor".to_owned()
    } else {
        host
    };
    // The tail of a v7 UUID is random.
    let random = uuid::Uuid::now_v7().simple().to_string();
    format!("{host}-{}", &random[random.len() - 6..])
}
