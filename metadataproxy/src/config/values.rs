//! Value parsers shared by the settings: Go durations, lists, `host:port`, booleans, regions,
//! the Docker URL. Each refusal is a [`ConfigError`] naming the variable.

use std::net::SocketAddr;
use std::time::Duration;

use super::{invalid, ConfigError};
use crate::identity::DockerUrl;

pub(super) fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

pub(super) fn positive_duration(
    variable: &'static str,
    value: &str,
) -> Result<Duration, ConfigError> {
    match parse_go_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(invalid(variable, value, "must be greater than zero")),
        Err(e) => Err(invalid(variable, value, e)),
    }
}

pub(super) fn parse_docker_url(variable: &'static str, v: &str) -> Result<DockerUrl, ConfigError> {
    if let Some(path) = v.strip_prefix("unix://") {
        if path.starts_with('/') {
            return Ok(DockerUrl::Unix(path.to_string()));
        }
    } else if let Some(addr) = v
        .strip_prefix("tcp://")
        .or_else(|| v.strip_prefix("http://"))
    {
        let addr = addr.trim_end_matches('/');
        if is_host_port(addr) {
            return Ok(DockerUrl::Tcp(addr.to_string()));
        }
    }
    Err(invalid(
        variable,
        v,
        "expected unix:///path/to/docker.sock or tcp://host:port",
    ))
}

pub(super) fn comma_list(
    variable: &'static str,
    v: &Option<String>,
) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = non_empty(v) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim) {
        if item.is_empty() || item.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                variable,
                raw,
                "expected a comma-separated list of names without empty items or spaces",
            ));
        }
        out.push(item.to_string());
    }
    Ok(out)
}

pub(super) fn host_port(
    variable: &'static str,
    v: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    match non_empty(v) {
        None => Ok(None),
        Some(s) if is_host_port(s) => Ok(Some(s.to_string())),
        Some(s) => Err(invalid(variable, s, "expected host:port")),
    }
}

/// `DATADOG_ADDR`: `host:port` (UDP over IPv4: the exporter sends from an IPv4 socket) or a
/// Unix socket, `unix://` or `unixgram://` (datagram) or `unixstream://`, and an absolute path.
pub(super) fn dogstatsd_addr(
    variable: &'static str,
    v: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    let Some(s) = non_empty(v) else {
        return Ok(None);
    };
    let unix = ["unix://", "unixgram://", "unixstream://"]
        .iter()
        .find_map(|scheme| s.strip_prefix(scheme));
    let ok = match unix {
        Some(path) => path.len() > 1 && path.starts_with('/'),
        None => is_host_port(s) && !s.parse::<SocketAddr>().is_ok_and(|a| a.is_ipv6()),
    };
    if ok {
        Ok(Some(s.to_string()))
    } else {
        Err(invalid(
            variable,
            s,
            "expected host:port (UDP, IPv4) or unix:///path/to/dsd.socket",
        ))
    }
}

pub(super) fn is_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

pub(super) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A region name: lowercase letters, digits and dashes, such as `us-east-1` or `cn-north-1`.
pub(super) fn is_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.contains('-')
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && r.chars().last().is_some_and(|c| c.is_ascii_digit())
}

/// Why a Go duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing given.
    #[error("expected a duration such as 15m, 1h30m or 500ms")]
    Empty,
    /// A leading `-`.
    #[error("must not be negative")]
    Negative,
    /// A number without its unit.
    #[error("missing unit after {0:?} (use ns, us, ms, s, m or h)")]
    MissingUnit(String),
    /// A unit Go does not know.
    #[error("unknown unit {0:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit(String),
    /// Not a decimal number.
    #[error("bad number {0:?}")]
    BadNumber(String),
    /// More than `u64::MAX` nanoseconds.
    #[error("duration too large")]
    TooLarge,
}

/// Parses a Go `time.ParseDuration` string: `300ms`, `1.5h`, `1h30m`, `0`.
/// Negative durations are refused: nothing here means anything negative.
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_nanos: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number = &s[start..i];
        let unit_start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let unit = &s[unit_start..i];
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(DurationError::MissingUnit(number.to_string())),
            other => return Err(DurationError::UnknownUnit(other.to_string())),
        };
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(DurationError::BadNumber(number.to_string()));
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part
                .parse()
                .map_err(|_| DurationError::BadNumber(number.to_string()))?
        };
        let mut nanos = int.checked_mul(scale).ok_or(DurationError::TooLarge)?;
        let mut frac_scale = scale;
        for d in frac_part.bytes() {
            frac_scale /= 10;
            nanos = nanos
                .checked_add(u128::from(d - b'0') * frac_scale)
                .ok_or(DurationError::TooLarge)?;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .filter(|n| *n <= u128::from(u64::MAX))
            .ok_or(DurationError::TooLarge)?;
    }
    let secs = (total_nanos / 1_000_000_000) as u64;
    let sub = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}
