//! Configuration: command-line flags and environment variables, validated into a [`Config`].
//!
//! Every setting is a flag and an environment variable (the flag wins). Values are parsed
//! here and nowhere else; an invalid value is a [`ConfigError`] that names the variable, the
//! flag and the value, and `main` turns it into exit code 64 (`EX_USAGE`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

mod args;
mod values;

pub use args::{Args, Command, EbpfCommand, IptablesCommand};
use values::*;
pub use values::{parse_go_duration, DurationError};

pub use crate::ebpf::{EbpfConfig, OnShutdown};
pub use crate::identity::DockerUrl;
pub use crate::imdsv2::{default_token_key_file, TokenKeyConfig, DEFAULT_TOKEN_KEY_FILE};
pub use crate::netfilter::{InterfaceMatch, IptablesConfig, RulesOnShutdown};
pub use crate::roles::StsConfig;
use crate::roles::{AccountId, RoleSpec};
pub use crate::telemetry::{LogConfig, LogFormat, NewRelicConfig, RequestLog, TelemetryConfig};
pub use crate::upstream::{BuiltinValues, UpstreamConfig};

/// Exit code for invalid configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// `REQUEST_RATE_LIMIT`'s default: far above what an SDK asks (a token, a role name and
/// credentials every few minutes, or a region at start), low enough that one container cannot
/// starve the others or fill the log. The burst is twice the rate unless set.
pub const DEFAULT_REQUEST_RATE: &str = "100";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the proxy listens (`HOST`, `PORT`).
    pub listen: SocketAddr,
    /// The container credentials endpoint (`CONTAINER_CREDENTIALS_PORT`,
    /// `CONTAINER_AUTHORIZATION`, `CONTAINER_IMDS`).
    pub container_endpoint: ContainerEndpointConfig,
    /// The upstream metadata service (`METADATA_URL`).
    pub upstream: UpstreamConfig,
    /// Upstream connect timeout (`METADATA_CONNECT_TIMEOUT`).
    pub upstream_connect_timeout: Duration,
    /// Upstream total timeout (`METADATA_TIMEOUT`).
    pub upstream_timeout: Duration,
    /// Interception mode (`INTERCEPT`).
    pub intercept: Intercept,
    /// Role for containers without `IAM_ROLE` (`DEFAULT_ROLE`).
    pub default_role: Option<RoleSpec>,
    /// Account for bare role names (`DEFAULT_ACCOUNT_ID`).
    pub default_account_id: Option<AccountId>,
    /// Logging (`LOG_LEVEL`, `LOG_FORMAT`).
    pub log: LogConfig,
    /// Which requests get a log line (`REQUEST_LOG`).
    pub request_log: RequestLog,
    /// Docker daemon (`DOCKER_URL`, `DOCKER_HOST`).
    pub docker: DockerUrl,
    /// Retry window for a container not yet listed (`CONTAINER_LOOKUP_TIMEOUT`).
    pub container_lookup_timeout: Duration,
    /// Full resync period of the container index (`DOCKER_RECONCILE_INTERVAL`).
    pub docker_reconcile_interval: Duration,
    /// Prefetch credentials at container start (`CREDENTIAL_PREFETCH`).
    pub credential_prefetch: bool,
    /// Refresh margin before credential expiry (`ROLE_CACHE_OFFSET`).
    pub role_cache_offset: Duration,
    /// STS session name template (`ROLE_SESSION_NAME`).
    pub role_session_name: crate::roles::SessionTemplate,
    /// Tag sessions with the container (`ROLE_SESSION_TAGS`).
    pub role_session_tags: bool,
    /// STS session duration (`ROLE_SESSION_DURATION`).
    pub role_session_duration: Duration,
    /// AssumeRole calls per second (`STS_RATE_LIMIT`, 0: unlimited).
    pub sts_rate_limit: u32,
    /// Region of the agent's AWS clients (`AWS_REGION`).
    pub aws_region: Option<String>,
    /// Where role credentials come from (`STS`).
    pub sts: StsConfig,
    /// Metrics sinks and the admin listener.
    pub telemetry: TelemetryConfig,
    /// Grace period for in-flight requests on shutdown (`SHUTDOWN_GRACE`).
    pub shutdown_grace: Duration,
    /// `IMDSV2=required`.
    pub imdsv2_required: bool,
    /// `TOKEN_KEY_FILE`, `TOKEN_KEY_ROTATION`.
    pub token_key: TokenKeyConfig,
    /// `PASSTHROUGH_ALLOW`, `PASSTHROUGH_DENY`.
    pub passthrough: crate::policy::PathPolicy,
    /// `ALLOWED_ROLES`; the rules of `ROLE_POLICY_FILE` are added by
    /// `app::read_role_policy`.
    pub roles: crate::policy::RolePolicy,
    /// `ROLE_POLICY_FILE`, as given.
    pub role_policy_file: Option<std::path::PathBuf>,
    /// `AUDIT_LOG_FILE`.
    pub audit_log_file: Option<std::path::PathBuf>,
    /// Connection, rate and request-size limits.
    pub limits: crate::limits::Limits,
    /// `EBPF_PIN_PATH` in every mode, where the agent looks for an earlier eBPF-mode run's
    /// pins when it is not in eBPF mode itself; `None` when the value is not an absolute path
    /// (only eBPF mode refuses that).
    pub ebpf_pin_path: Option<std::path::PathBuf>,
}

/// The container credentials endpoint and the metadata service's place for containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerEndpointConfig {
    /// Where it listens (`HOST`, `CONTAINER_CREDENTIALS_PORT`); `None`: off, and
    /// `169.254.170.2` is never intercepted.
    pub listen: Option<SocketAddr>,
    /// `CONTAINER_AUTHORIZATION=required`: every container must set
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    pub authorization_required: bool,
    /// `CONTAINER_IMDS=on`: containers are served the instance metadata service.
    pub imds: bool,
}

/// How container traffic reaches the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intercept {
    /// The operator installs DNAT rules (classic mode).
    None,
    /// The agent installs and removes its own netfilter rules (classic identity).
    Iptables(IptablesConfig),
    /// The kernel program redirects and tags connections.
    Ebpf(EbpfConfig),
}

fn parse_container_endpoint(
    a: &Args,
    host: IpAddr,
    port: u16,
) -> Result<ContainerEndpointConfig, ConfigError> {
    let listen = match a.container_credentials_port.trim() {
        "off" => None,
        p => {
            let p: u16 = p.parse().map_err(|_| {
                invalid(
                    "CONTAINER_CREDENTIALS_PORT",
                    &a.container_credentials_port,
                    "expected a port number 0-65535 or off",
                )
            })?;
            if p != 0 && p == port {
                return Err(invalid(
                    "CONTAINER_CREDENTIALS_PORT",
                    &a.container_credentials_port,
                    "must differ from PORT",
                ));
            }
            Some(SocketAddr::new(host, p))
        }
    };
    let authorization_required = match a.container_authorization.trim() {
        "optional" => false,
        "required" => true,
        _ => {
            return Err(invalid(
                "CONTAINER_AUTHORIZATION",
                &a.container_authorization,
                "expected optional or required",
            ))
        }
    };
    let imds = match a.container_imds.trim() {
        "on" => true,
        "off" => false,
        _ => {
            return Err(invalid(
                "CONTAINER_IMDS",
                &a.container_imds,
                "expected on or off",
            ))
        }
    };
    Ok(ContainerEndpointConfig {
        listen,
        authorization_required,
        imds,
    })
}

/// An invalid setting: names the variable, its flag, the value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment variable.
    pub variable: &'static str,
    /// The offending value (redacted for secrets).
    pub value: String,
    /// What was expected.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = format!("--{}", self.variable.to_ascii_lowercase().replace('_', "-"));
        write!(
            f,
            "invalid value {:?} for {} ({}): {}",
            self.value, self.variable, flag, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

fn invalid(variable: &'static str, value: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError {
        variable,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let host: IpAddr = a
            .host
            .trim()
            .parse()
            .map_err(|_| invalid("HOST", &a.host, "expected an IPv4 or IPv6 address"))?;
        let port: u16 = a
            .port
            .trim()
            .parse()
            .map_err(|_| invalid("PORT", &a.port, "expected a port number 0-65535"))?;

        let container_endpoint = parse_container_endpoint(&a, host, port)?;

        let aws_region = match a.aws_region.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(r) if is_region(r) => Some(r.to_string()),
            Some(r) => {
                return Err(invalid(
                    "AWS_REGION",
                    r,
                    "expected a region name such as us-east-1",
                ))
            }
        };

        let upstream = parse_upstream(&a, aws_region.as_deref())?;
        let sts = parse_sts(&a, &upstream)?;
        let upstream_connect_timeout =
            positive_duration("METADATA_CONNECT_TIMEOUT", &a.metadata_connect_timeout)?;
        let upstream_timeout = positive_duration("METADATA_TIMEOUT", &a.metadata_timeout)?;

        let intercept = match a.intercept.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Intercept::None,
            "ebpf" => Intercept::Ebpf(parse_ebpf(&a)?),
            "iptables" => Intercept::Iptables(parse_iptables(&a)?),
            _ => {
                return Err(invalid(
                    "INTERCEPT",
                    &a.intercept,
                    "expected none, iptables or ebpf",
                ))
            }
        };

        let default_account_id = match non_empty(&a.default_account_id) {
            None => None,
            Some(v) => Some(
                AccountId::parse(v)
                    .ok_or_else(|| invalid("DEFAULT_ACCOUNT_ID", v, "expected 12 digits"))?,
            ),
        };
        let default_role =
            match non_empty(&a.default_role) {
                None => None,
                Some(v) => Some(RoleSpec::parse(v).map_err(|e| {
                    invalid("DEFAULT_ROLE", v, format!("not a role name or ARN: {e}"))
                })?),
            };

        let level = match a.log_level.trim().to_ascii_lowercase().as_str() {
            "trace" => tracing::Level::TRACE,
            "debug" => tracing::Level::DEBUG,
            "info" => tracing::Level::INFO,
            "warn" | "warning" => tracing::Level::WARN,
            "error" | "fatal" | "panic" => tracing::Level::ERROR,
            _ => {
                return Err(invalid(
                    "LOG_LEVEL",
                    &a.log_level,
                    "expected debug, info, warning, error, fatal or panic",
                ))
            }
        };
        let format = match a.log_format.trim().to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            "gelf" => LogFormat::Gelf,
            _ => {
                return Err(invalid(
                    "LOG_FORMAT",
                    &a.log_format,
                    "expected text, json or gelf",
                ))
            }
        };

        let request_log = match a.request_log.trim().to_ascii_lowercase().as_str() {
            "all" => RequestLog::All,
            "errors" => RequestLog::Errors,
            "none" => RequestLog::None,
            _ => {
                return Err(invalid(
                    "REQUEST_LOG",
                    &a.request_log,
                    "expected all, errors or none",
                ))
            }
        };

        let docker = match (non_empty(&a.docker_url), non_empty(&a.docker_host)) {
            (Some(v), _) => parse_docker_url("DOCKER_URL", v)?,
            (None, Some(v)) => parse_docker_url("DOCKER_HOST", v)?,
            (None, None) => DockerUrl::Unix("/var/run/docker.sock".into()),
        };

        let container_lookup_timeout = parse_go_duration(&a.container_lookup_timeout)
            .map_err(|e| invalid("CONTAINER_LOOKUP_TIMEOUT", &a.container_lookup_timeout, e))?;
        let docker_reconcile_interval =
            positive_duration("DOCKER_RECONCILE_INTERVAL", &a.docker_reconcile_interval)?;
        let credential_prefetch = parse_bool(a.credential_prefetch.trim()).ok_or_else(|| {
            invalid(
                "CREDENTIAL_PREFETCH",
                &a.credential_prefetch,
                "expected true or false",
            )
        })?;
        let role_cache_offset = parse_go_duration(&a.role_cache_offset)
            .map_err(|e| invalid("ROLE_CACHE_OFFSET", &a.role_cache_offset, e))?;
        let role_session_duration = parse_go_duration(&a.role_session_duration)
            .map_err(|e| invalid("ROLE_SESSION_DURATION", &a.role_session_duration, e))?;
        if role_session_duration < Duration::from_secs(900)
            || role_session_duration > Duration::from_secs(12 * 3600)
            || role_session_duration.subsec_nanos() != 0
        {
            return Err(invalid(
                "ROLE_SESSION_DURATION",
                &a.role_session_duration,
                "expected whole seconds from 15m to 12h",
            ));
        }
        if role_cache_offset >= role_session_duration {
            return Err(invalid(
                "ROLE_CACHE_OFFSET",
                &a.role_cache_offset,
                format!(
                    "must be shorter than the session duration ({}s, ROLE_SESSION_DURATION), \
                     or credentials would be refreshed on every request",
                    role_session_duration.as_secs()
                ),
            ));
        }
        let sts_rate_limit: u32 = a.sts_rate_limit.trim().parse().map_err(|_| {
            invalid(
                "STS_RATE_LIMIT",
                &a.sts_rate_limit,
                "expected a whole number of calls per second (0: no limit)",
            )
        })?;
        let role_session_name = crate::roles::SessionTemplate::parse(a.role_session_name.trim())
            .map_err(|e| invalid("ROLE_SESSION_NAME", &a.role_session_name, e))?;
        let role_session_tags = parse_bool(a.role_session_tags.trim()).ok_or_else(|| {
            invalid(
                "ROLE_SESSION_TAGS",
                &a.role_session_tags,
                "expected true or false",
            )
        })?;

        let telemetry = parse_telemetry(&a)?;

        let shutdown_grace = parse_go_duration(&a.shutdown_grace)
            .map_err(|e| invalid("SHUTDOWN_GRACE", &a.shutdown_grace, e))?;
        let imdsv2_required = match a.imdsv2.trim() {
            "optional" => false,
            "required" => true,
            _ => {
                return Err(invalid(
                    "IMDSV2",
                    &a.imdsv2,
                    "expected optional or required",
                ))
            }
        };

        let token_key = parse_token_key(&a)?;

        let passthrough = crate::policy::PathPolicy::parse(&a.passthrough_allow, "")
            .map_err(|e| invalid("PASSTHROUGH_ALLOW", &a.passthrough_allow, e))
            .and_then(|_| {
                crate::policy::PathPolicy::parse("", &a.passthrough_deny)
                    .map_err(|e| invalid("PASSTHROUGH_DENY", &a.passthrough_deny, e))
            })
            .and_then(|_| {
                crate::policy::PathPolicy::parse(&a.passthrough_allow, &a.passthrough_deny)
                    .map_err(|e| invalid("PASSTHROUGH_DENY", &a.passthrough_deny, e))
            })?;
        let allowed_roles = a.allowed_roles.clone().unwrap_or_default();
        let roles = crate::policy::RolePolicy::parse(&allowed_roles, None)
            .map_err(|e| invalid("ALLOWED_ROLES", &allowed_roles, e))?;
        // Read by the application (`app::read_role_policy`), not here.
        let role_policy_file = non_empty(&a.role_policy_file).map(std::path::PathBuf::from);
        let audit_log_file = match non_empty(&a.audit_log_file) {
            None => None,
            Some(p) if std::path::Path::new(p).is_absolute() => Some(std::path::PathBuf::from(p)),
            Some(p) => return Err(invalid("AUDIT_LOG_FILE", p, "expected an absolute path")),
        };

        let limits = parse_limits(&a)?;
        let ebpf_pin_path =
            Some(std::path::PathBuf::from(a.ebpf_pin_path.trim())).filter(|p| p.is_absolute());

        Ok(Config {
            container_endpoint,
            listen: SocketAddr::new(host, port),
            upstream,
            upstream_connect_timeout,
            upstream_timeout,
            intercept,
            default_role,
            default_account_id,
            log: LogConfig { level, format },
            request_log,
            docker,
            container_lookup_timeout,
            docker_reconcile_interval,
            credential_prefetch,
            role_cache_offset,
            role_session_name,
            role_session_tags,
            role_session_duration,
            sts_rate_limit,
            aws_region,
            sts,
            telemetry,
            shutdown_grace,
            imdsv2_required,
            token_key,
            passthrough,
            roles,
            role_policy_file,
            audit_log_file,
            limits,
            ebpf_pin_path,
        })
    }
}

fn parse_token_key(a: &Args) -> Result<TokenKeyConfig, ConfigError> {
    let file = match a.token_key_file.as_deref().map(str::trim) {
        None => Some(
            default_token_key_file(
                nix::unistd::geteuid().is_root(),
                std::env::var("XDG_STATE_HOME").ok().as_deref(),
                std::env::var("HOME").ok().as_deref(),
            )
            .ok_or_else(|| {
                invalid(
                    "TOKEN_KEY_FILE",
                    "",
                    "no default for an agent that is not root and has no HOME: set it to a \
                     file path, or none",
                )
            })?,
        ),
        Some("none") => None,
        Some(p) if std::path::Path::new(p).is_absolute() && !p.ends_with('/') => {
            Some(std::path::PathBuf::from(p))
        }
        Some(p) => {
            return Err(invalid(
                "TOKEN_KEY_FILE",
                p,
                "expected an absolute file path, or none",
            ))
        }
    };
    let longest = Duration::from_secs(crate::imdsv2::MAX_TTL);
    let rotation = match parse_go_duration(&a.token_key_rotation) {
        Ok(d) if d.is_zero() => None,
        Ok(d) if d >= longest => Some(d),
        Ok(_) => {
            return Err(invalid(
                "TOKEN_KEY_ROTATION",
                &a.token_key_rotation,
                "expected 0 (never) or at least 6h, the longest lifetime of a token",
            ))
        }
        Err(e) => return Err(invalid("TOKEN_KEY_ROTATION", &a.token_key_rotation, e)),
    };
    Ok(TokenKeyConfig { file, rotation })
}

fn parse_limits(a: &Args) -> Result<crate::limits::Limits, ConfigError> {
    let number = |var: &'static str, v: &str, min: u64, max: u64| -> Result<u64, ConfigError> {
        v.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                invalid(
                    var,
                    v,
                    format!("expected a whole number from {min} to {max}"),
                )
            })
    };
    let rate = number("REQUEST_RATE_LIMIT", &a.request_rate_limit, 0, 1_000_000)? as u32;
    let burst = match &a.request_rate_burst {
        None => rate.saturating_mul(2),
        Some(raw) => {
            let burst = number("REQUEST_RATE_BURST", raw, 0, 1_000_000)? as u32;
            if burst > 0 && rate == 0 {
                return Err(invalid(
                    "REQUEST_RATE_BURST",
                    raw,
                    "needs REQUEST_RATE_LIMIT (0 is no limit)",
                ));
            }
            if burst == 0 {
                rate
            } else {
                burst
            }
        }
    };
    Ok(crate::limits::Limits {
        rate,
        burst,
        max_header_bytes: number("MAX_HEADER_BYTES", &a.max_header_bytes, 8192, 1 << 20)? as usize,
        header_timeout: positive_duration("HEADER_READ_TIMEOUT", &a.header_read_timeout)?,
        body_timeout: positive_duration("BODY_READ_TIMEOUT", &a.body_read_timeout)?,
        max_connections: number("MAX_CONNECTIONS", &a.max_connections, 1, 1_000_000)? as usize,
        max_connections_per_ip: number(
            "MAX_CONNECTIONS_PER_IP",
            &a.max_connections_per_ip,
            0,
            1_000_000,
        )? as usize,
        check_host: parse_bool(a.check_host_header.trim()).ok_or_else(|| {
            invalid(
                "CHECK_HOST_HEADER",
                &a.check_host_header,
                "expected true or false",
            )
        })?,
    })
}

fn parse_telemetry(a: &Args) -> Result<TelemetryConfig, ConfigError> {
    let bool_var = |var: &'static str, v: &str| {
        parse_bool(v.trim()).ok_or_else(|| invalid(var, v, "expected true or false"))
    };
    let label_separator = a.label_separator.clone();
    if label_separator.is_empty()
        || label_separator.len() > 3
        || !label_separator
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(invalid(
            "LABEL_SEPARATOR",
            &a.label_separator,
            "expected 1 to 3 letters, digits or _ (what every sink keeps in a label name)",
        ));
    }
    let interval = |var: &'static str, v: &str| -> Result<Duration, ConfigError> {
        let d = positive_duration(var, v)?;
        if d < Duration::from_millis(100) {
            return Err(invalid(var, v, "must be at least 100ms"));
        }
        Ok(d)
    };
    let newrelic = match (
        non_empty(&a.newrelic_app_name),
        non_empty(&a.newrelic_license),
    ) {
        (Some(app), Some(license)) => {
            let endpoint: http::Uri = a.newrelic_endpoint.trim().parse().map_err(|_| {
                invalid("NEWRELIC_ENDPOINT", &a.newrelic_endpoint, "expected a URL")
            })?;
            if !matches!(endpoint.scheme_str(), Some("http" | "https")) || endpoint.host().is_none()
            {
                return Err(invalid(
                    "NEWRELIC_ENDPOINT",
                    &a.newrelic_endpoint,
                    "expected an http:// or https:// URL",
                ));
            }
            Some(NewRelicConfig {
                app_name: app.to_string(),
                license: crate::roles::Secret::new(license),
                endpoint,
                interval: interval("NEWRELIC_FLUSH_INTERVAL", &a.newrelic_flush_interval)?,
            })
        }
        (None, None) => None,
        (Some(app), None) => {
            return Err(invalid(
                "NEWRELIC_LICENSE",
                "",
                format!("must be set when NEWRELIC_APP_NAME is ({app:?})"),
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "NEWRELIC_APP_NAME",
                "",
                "must be set when NEWRELIC_LICENSE is",
            ))
        }
    };
    let admin_addr = match a.admin_addr.trim() {
        "off" | "none" | "" => None,
        v => Some(v.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "ADMIN_ADDR",
                &a.admin_addr,
                "expected ip:port (for example 127.0.0.1:8001) or off",
            )
        })?),
    };
    let t = TelemetryConfig {
        copy_docker_labels: comma_list("COPY_DOCKER_LABELS", &a.copy_docker_labels)?,
        copy_docker_env: comma_list("COPY_DOCKER_ENV", &a.copy_docker_env)?,
        label_separator,
        statsd_addr: host_port("STATSD_ADDR", &a.statsd_addr)?,
        statsite_addr: host_port("STATSITE_ADDR", &a.statsite_addr)?,
        datadog_addr: dogstatsd_addr("DATADOG_ADDR", &a.datadog_addr)?,
        flush_interval: interval("METRICS_FLUSH_INTERVAL", &a.metrics_flush_interval)?,
        enable_prometheus: match non_empty(&a.enable_prometheus) {
            None => false,
            Some(v) => bool_var("ENABLE_PROMETHEUS", v)?,
        },
        prometheus_copy_labels: bool_var("PROMETHEUS_COPY_LABELS", &a.prometheus_copy_labels)?,
        unbounded_labels: bool_var("METRICS_UNBOUNDED_LABELS", &a.metrics_unbounded_labels)?,
        newrelic,
        admin_addr,
        metrics_on_proxy_port: bool_var("METRICS_ON_PROXY_PORT", &a.metrics_on_proxy_port)?,
    };
    // Settings that would do nothing are refused rather than ignored.
    let needs_prometheus = [
        ("METRICS_ON_PROXY_PORT", t.metrics_on_proxy_port),
        ("PROMETHEUS_COPY_LABELS", t.prometheus_copy_labels),
    ];
    for (var, set) in needs_prometheus {
        if set && !t.enable_prometheus {
            return Err(invalid(var, "true", "needs ENABLE_PROMETHEUS=true"));
        }
    }
    let push_sink = t.statsd_addr.is_some()
        || t.statsite_addr.is_some()
        || t.datadog_addr.is_some()
        || t.newrelic.is_some();
    if t.unbounded_labels && !push_sink {
        return Err(invalid(
            "METRICS_UNBOUNDED_LABELS",
            "true",
            "only the statsd family and New Relic carry these labels: set one of them",
        ));
    }
    // Two copied keys must not end up as one label name in any sink.
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (key, name) in t
        .copied_labels()
        .labels
        .iter()
        .chain(&t.copied_labels().env)
    {
        let folded: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if let Some(other) = seen.insert(folded.clone(), key.clone()) {
            let var = if t.copy_docker_env.contains(key) {
                "COPY_DOCKER_ENV"
            } else {
                "COPY_DOCKER_LABELS"
            };
            return Err(invalid(
                var,
                key,
                format!("gives the same label name ({folded}) as {other:?}"),
            ));
        }
    }
    Ok(t)
}

fn parse_ebpf(a: &Args) -> Result<EbpfConfig, ConfigError> {
    let absolute = |var: &'static str, v: &str| {
        let p = std::path::PathBuf::from(v);
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(invalid(var, v, "expected an absolute path"))
        }
    };
    let cgroup_path = match non_empty(&a.ebpf_cgroup_path) {
        Some(v) => Some(absolute("EBPF_CGROUP_PATH", v)?),
        None => None,
    };
    let pin_path = absolute("EBPF_PIN_PATH", a.ebpf_pin_path.trim())?;
    let redirect_addr = match non_empty(&a.ebpf_redirect_addr) {
        Some(v) => Some(
            v.parse()
                .map_err(|_| invalid("EBPF_REDIRECT_ADDR", v, "expected an IPv4 address"))?,
        ),
        None => None,
    };
    let container_cgroups = if a.ebpf_container_cgroups.trim() == "auto" {
        None
    } else {
        let list = comma_list(
            "EBPF_CONTAINER_CGROUPS",
            &Some(a.ebpf_container_cgroups.clone()),
        )?
        .into_iter()
        .map(|d| d.trim_matches('/').to_string())
        .collect::<Vec<_>>();
        if list.is_empty() || list.iter().any(|d| d.is_empty() || d.contains("..")) {
            return Err(invalid(
                "EBPF_CONTAINER_CGROUPS",
                &a.ebpf_container_cgroups,
                "expected auto or a comma list of cgroup directories such as docker,system.slice",
            ));
        }
        Some(list)
    };
    let on_shutdown = match a.ebpf_on_shutdown.trim().to_ascii_lowercase().as_str() {
        "keep" => OnShutdown::Keep,
        "detach" => OnShutdown::Detach,
        _ => {
            return Err(invalid(
                "EBPF_ON_SHUTDOWN",
                &a.ebpf_on_shutdown,
                "expected keep or detach",
            ))
        }
    };
    Ok(EbpfConfig {
        cgroup_path,
        pin_path,
        redirect_addr,
        container_cgroups,
        on_shutdown,
    })
}

fn parse_iptables(a: &Args) -> Result<IptablesConfig, ConfigError> {
    let mut interfaces = Vec::new();
    for item in a.iptables_interfaces.split(',').map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let Some(m) = InterfaceMatch::parse(item) else {
            return Err(invalid(
                "IPTABLES_INTERFACES",
                &a.iptables_interfaces,
                "expected a comma list of interface names (up to 15 characters, no white space, \
                 `/` or `:`), a trailing + matching a prefix, such as docker0,br-+",
            ));
        };
        if !interfaces.contains(&m) {
            interfaces.push(m);
        }
    }
    if interfaces.len() > 64 {
        return Err(invalid(
            "IPTABLES_INTERFACES",
            &a.iptables_interfaces,
            "at most 64 entries; use a prefix (br-+) to cover many interfaces",
        ));
    }
    if interfaces.is_empty() {
        return Err(invalid(
            "IPTABLES_INTERFACES",
            &a.iptables_interfaces,
            "expected at least one interface, such as docker0,br-+",
        ));
    }
    let on_shutdown = match a.iptables_on_shutdown.trim().to_ascii_lowercase().as_str() {
        "remove" => RulesOnShutdown::Remove,
        "keep" => RulesOnShutdown::Keep,
        _ => {
            return Err(invalid(
                "IPTABLES_ON_SHUTDOWN",
                &a.iptables_on_shutdown,
                "expected remove or keep",
            ))
        }
    };
    Ok(IptablesConfig {
        interfaces,
        on_shutdown,
    })
}

/// `BUILTIN_ACCOUNT_ID`: the built-in metadata service's account, and the built-in STS's.
fn builtin_account_id(a: &Args) -> Result<AccountId, ConfigError> {
    AccountId::parse(a.builtin_account_id.trim()).ok_or_else(|| {
        invalid(
            "BUILTIN_ACCOUNT_ID",
            &a.builtin_account_id,
            "expected 12 digits",
        )
    })
}

fn parse_sts(a: &Args, upstream: &UpstreamConfig) -> Result<StsConfig, ConfigError> {
    let acknowledged = parse_bool(a.acknowledge_fake_credentials.trim()).ok_or_else(|| {
        invalid(
            "ACKNOWLEDGE_FAKE_CREDENTIALS",
            &a.acknowledge_fake_credentials,
            "expected true or false",
        )
    })?;
    match a.sts.trim().to_ascii_lowercase().as_str() {
        "aws" => {
            if acknowledged {
                return Err(invalid(
                    "ACKNOWLEDGE_FAKE_CREDENTIALS",
                    &a.acknowledge_fake_credentials,
                    "acknowledges STS=builtin, which is not set (STS is aws)",
                ));
            }
            Ok(StsConfig::Aws)
        }
        "builtin" => {
            if let UpstreamConfig::Url(url) = upstream {
                if !acknowledged {
                    return Err(invalid(
                        "STS",
                        &a.sts,
                        format!(
                            "METADATA_URL is {url}, not builtin: on such a host (an EC2 instance, \
                             most likely) containers would get fake credentials instead of their \
                             roles'; use METADATA_URL=builtin, or set \
                             ACKNOWLEDGE_FAKE_CREDENTIALS=true if fake credentials are what you want"
                        ),
                    ));
                }
            }
            let account_id = builtin_account_id(a)?;
            Ok(StsConfig::Builtin { account_id })
        }
        _ => Err(invalid("STS", &a.sts, "expected aws or builtin")),
    }
}

fn parse_upstream(a: &Args, region: Option<&str>) -> Result<UpstreamConfig, ConfigError> {
    let raw = a.metadata_url.trim();
    if raw.eq_ignore_ascii_case("builtin") {
        let local_ipv4 = a.builtin_local_ipv4.trim().parse().map_err(|_| {
            invalid(
                "BUILTIN_LOCAL_IPV4",
                &a.builtin_local_ipv4,
                "expected an IPv4 address",
            )
        })?;
        let availability_zone = match non_empty(&a.builtin_availability_zone) {
            Some(az) => az.to_string(),
            None => format!("{}a", region.unwrap_or("us-east-1")),
        };
        let region = availability_zone
            .trim_end_matches(|c: char| c.is_ascii_lowercase())
            .to_string();
        let mut az_region = availability_zone.clone();
        az_region.pop();
        if !is_region(&az_region) {
            return Err(invalid(
                "BUILTIN_AVAILABILITY_ZONE",
                &availability_zone,
                "expected a region followed by a letter, such as us-east-1a",
            ));
        }
        let values = [
            ("BUILTIN_INSTANCE_ID", &a.builtin_instance_id),
            ("BUILTIN_AMI_ID", &a.builtin_ami_id),
            ("BUILTIN_INSTANCE_TYPE", &a.builtin_instance_type),
            ("BUILTIN_MAC", &a.builtin_mac),
        ];
        for (var, v) in values {
            if v.trim().is_empty() || !v.chars().all(|c| c.is_ascii_graphic()) {
                return Err(invalid(var, v, "expected a non-empty printable value"));
            }
        }
        let account_id = builtin_account_id(a)?;
        return Ok(UpstreamConfig::Builtin(BuiltinValues {
            instance_id: a.builtin_instance_id.trim().into(),
            ami_id: a.builtin_ami_id.trim().into(),
            instance_type: a.builtin_instance_type.trim().into(),
            local_ipv4,
            mac: a.builtin_mac.trim().into(),
            availability_zone,
            region: if region.is_empty() { az_region } else { region },
            account_id: account_id.as_str().to_string(),
        }));
    }
    let uri: http::Uri = raw.parse().map_err(|_| {
        invalid(
            "METADATA_URL",
            raw,
            "expected http://host[:port] or builtin",
        )
    })?;
    let ok = uri.scheme_str() == Some("http")
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none();
    if !ok {
        return Err(invalid(
            "METADATA_URL",
            raw,
            "expected http://host[:port] (no path) or builtin",
        ));
    }
    let base = format!("http://{}", uri.authority().expect("checked above"));
    Ok(UpstreamConfig::Url(
        base.parse().expect("rebuilt from a valid URI"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> Args {
        let mut argv = vec!["metadataproxy".to_string()];
        for (k, v) in pairs {
            argv.push(format!("--{k}={v}"));
        }
        Args::parse_from_vars(argv.iter().skip(1).map(String::as_str), []).expect("flags parse")
    }

    fn err(pairs: &[(&str, &str)]) -> ConfigError {
        Config::try_from(args(pairs)).expect_err("should be invalid")
    }

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("2us"), Ok(Duration::from_micros(2)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration(".5s"), Ok(Duration::from_millis(500)));
        for bad in [
            "",
            "15",
            "m",
            "15x",
            "-1m",
            "1..5s",
            "1h 30m",
            "9999999999999h",
            // Found by the config fuzz target: the fraction overflowed.
            "340282366920938463463374607431768211.9us",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::try_from(args(&[])).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(
            c.upstream,
            UpstreamConfig::Url("http://169.254.169.254".parse().unwrap())
        );
        assert_eq!(c.role_cache_offset, Duration::from_secs(900));
        assert_eq!(c.role_session_duration, Duration::from_secs(3600));
        assert_eq!(
            c.role_session_name,
            crate::roles::SessionTemplate::parse("go-metadataproxy").unwrap()
        );
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, tracing::Level::INFO);
        assert_eq!(c.container_lookup_timeout, Duration::from_secs(5));
        assert!(c.default_role.is_none());
        assert_eq!(c.token_key.rotation, Some(Duration::from_secs(86_400)));
        let file = c.token_key.file.expect("a default key file");
        assert!(file.is_absolute() && file.ends_with("metadataproxy/token.key"));
    }

    #[test]
    fn the_default_key_file_is_the_system_state_directory_for_root_else_the_users() {
        let d = |root, xdg, home| default_token_key_file(root, xdg, home);
        let p = |s: &str| Some(std::path::PathBuf::from(s));
        assert_eq!(
            d(true, Some("/x"), Some("/home/a")),
            p("/var/lib/metadataproxy/token.key")
        );
        assert_eq!(
            d(false, Some("/x/state"), Some("/home/a")),
            p("/x/state/metadataproxy/token.key")
        );
        assert_eq!(
            d(false, None, Some("/home/a")),
            p("/home/a/.local/state/metadataproxy/token.key")
        );
        // Relative values are ignored, as the XDG specification says.
        assert_eq!(
            d(false, Some("state"), Some("/home/a")),
            p("/home/a/.local/state/metadataproxy/token.key")
        );
        assert_eq!(d(false, None, None), None);
        assert_eq!(d(false, Some(""), Some("relative")), None);
    }

    #[test]
    fn token_key_file_and_rotation() {
        let c = |pairs: &[(&str, &str)]| Config::try_from(args(pairs)).unwrap().token_key;
        assert_eq!(c(&[("token-key-file", "none")]).file, None);
        assert_eq!(
            c(&[("token-key-file", "/run/mp/k")]).file,
            Some("/run/mp/k".into())
        );
        assert_eq!(c(&[("token-key-rotation", "0")]).rotation, None);
        assert_eq!(
            c(&[("token-key-rotation", "6h")]).rotation,
            Some(Duration::from_secs(21_600))
        );
    }

    #[test]
    fn iptables_mode_parses_its_interfaces_and_shutdown_policy() {
        let c = Config::try_from(args(&[("intercept", "iptables")])).unwrap();
        let Intercept::Iptables(ipt) = c.intercept else {
            panic!("not iptables: {:?}", c.intercept);
        };
        assert_eq!(
            ipt.interfaces,
            [
                InterfaceMatch::Exact("docker0".into()),
                InterfaceMatch::Prefix("br-".into())
            ]
        );
        assert_eq!(ipt.on_shutdown, RulesOnShutdown::Remove);
        let c = Config::try_from(args(&[
            ("intercept", "IPTABLES"),
            ("iptables-interfaces", " cni0 , veth* ,cni0"),
            ("iptables-on-shutdown", "keep"),
        ]))
        .unwrap();
        let Intercept::Iptables(ipt) = c.intercept else {
            panic!("not iptables");
        };
        assert_eq!(
            ipt.interfaces,
            [
                InterfaceMatch::Exact("cni0".into()),
                InterfaceMatch::Prefix("veth".into())
            ]
        );
        assert_eq!(ipt.on_shutdown, RulesOnShutdown::Keep);
        for bad in [
            "",
            "+",
            "a b",
            "eth0/1",
            "averyveryverylongname",
            "br-++",
            ",",
        ] {
            let e = err(&[("intercept", "iptables"), ("iptables-interfaces", bad)]);
            assert_eq!(e.variable, "IPTABLES_INTERFACES", "{bad:?}");
        }
        let e = err(&[("intercept", "iptables"), ("iptables-on-shutdown", "maybe")]);
        assert_eq!(e.variable, "IPTABLES_ON_SHUTDOWN");
        assert_eq!(
            InterfaceMatch::Exact("lo".into()).match_bytes(),
            b"lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
        );
        assert_eq!(InterfaceMatch::Prefix("br-".into()).match_bytes(), b"br-");
        assert_eq!(InterfaceMatch::parse("br-*").unwrap().to_string(), "br-+");
    }

    #[test]
    fn offset_at_or_above_session_is_refused() {
        let e = err(&[("role-cache-offset", "1h")]);
        assert_eq!(e.variable, "ROLE_CACHE_OFFSET");
        assert!(e.to_string().contains("shorter than the session duration"));
        let e = err(&[("role-cache-offset", "2h"), ("role-session-duration", "1h")]);
        assert_eq!(e.variable, "ROLE_CACHE_OFFSET");
        assert!(Config::try_from(args(&[
            ("role-cache-offset", "1h"),
            ("role-session-duration", "2h")
        ]))
        .is_ok());
    }

    #[test]
    fn each_invalid_value_names_its_variable() {
        let cases: &[(&str, &str, &str)] = &[
            ("host", "nope", "HOST"),
            ("port", "99999", "PORT"),
            ("metadata-url", "ftp://x", "METADATA_URL"),
            ("metadata-url", "http://x/path", "METADATA_URL"),
            ("metadata-url", "http://user:secret@x", "METADATA_URL"),
            ("metadata-timeout", "0", "METADATA_TIMEOUT"),
            ("intercept", "magic", "INTERCEPT"),
            ("default-role", "a b", "DEFAULT_ROLE"),
            ("default-account-id", "12345", "DEFAULT_ACCOUNT_ID"),
            ("log-level", "loud", "LOG_LEVEL"),
            ("log-format", "xml", "LOG_FORMAT"),
            ("docker-url", "/var/run/docker.sock", "DOCKER_URL"),
            ("role-cache-offset", "soon", "ROLE_CACHE_OFFSET"),
            ("role-session-duration", "5m", "ROLE_SESSION_DURATION"),
            ("role-session-name", "x", "ROLE_SESSION_NAME"),
            ("aws-region", "Mars", "AWS_REGION"),
            ("statsd-addr", "nohost", "STATSD_ADDR"),
            ("statsd-addr", "unix:///run/statsd.sock", "STATSD_ADDR"),
            ("datadog-addr", "unix://relative.sock", "DATADOG_ADDR"),
            ("datadog-addr", "[::1]:8125", "DATADOG_ADDR"),
            ("enable-prometheus", "maybe", "ENABLE_PROMETHEUS"),
            ("copy-docker-labels", "a,,b", "COPY_DOCKER_LABELS"),
            ("newrelic-app-name", "app", "NEWRELIC_LICENSE"),
            ("token-key-file", "token.key", "TOKEN_KEY_FILE"),
            (
                "token-key-file",
                "/var/lib/metadataproxy/",
                "TOKEN_KEY_FILE",
            ),
            ("token-key-file", "", "TOKEN_KEY_FILE"),
            ("token-key-rotation", "1h", "TOKEN_KEY_ROTATION"),
            ("token-key-rotation", "daily", "TOKEN_KEY_ROTATION"),
        ];
        for (flag, value, var) in cases {
            let e = err(&[(flag, value)]);
            assert_eq!(&e.variable, var, "--{flag}={value}");
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn docker_url_falls_back_to_docker_host() {
        let c = Config::try_from(args(&[("docker-host", "tcp://127.0.0.1:2375")])).unwrap();
        assert_eq!(c.docker, DockerUrl::Tcp("127.0.0.1:2375".into()));
        let c = Config::try_from(args(&[
            ("docker-host", "tcp://127.0.0.1:2375"),
            ("docker-url", "unix:///run/d.sock"),
        ]))
        .unwrap();
        assert_eq!(c.docker, DockerUrl::Unix("/run/d.sock".into()));
    }

    #[test]
    fn dogstatsd_takes_udp_or_the_agents_unix_socket() {
        for addr in [
            "127.0.0.1:8125",
            "datadog-agent:8125",
            "unix:///var/run/datadog/dsd.socket",
            "unixgram:///var/run/datadog/dsd.socket",
            "unixstream:///var/run/datadog/dsd.socket",
        ] {
            let c = Config::try_from(args(&[("datadog-addr", addr)])).unwrap();
            assert_eq!(c.telemetry.datadog_addr.as_deref(), Some(addr));
        }
    }

    #[test]
    fn builtin_region_follows_availability_zone() {
        let c = Config::try_from(args(&[
            ("metadata-url", "builtin"),
            ("builtin-availability-zone", "eu-west-3b"),
        ]))
        .unwrap();
        match c.upstream {
            UpstreamConfig::Builtin(v) => assert_eq!(v.region, "eu-west-3"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn builtin_sts_takes_bare_names_into_the_builtin_account() {
        assert_eq!(Config::try_from(args(&[])).unwrap().sts, StsConfig::Aws);
        let c = Config::try_from(args(&[
            ("metadata-url", "builtin"),
            ("sts", "builtin"),
            ("builtin-account-id", "210987654321"),
        ]))
        .unwrap();
        assert_eq!(
            c.sts,
            StsConfig::Builtin {
                account_id: AccountId::parse("210987654321").unwrap()
            }
        );
        let e = err(&[
            ("metadata-url", "builtin"),
            ("sts", "builtin"),
            ("builtin-account-id", "12"),
        ]);
        assert_eq!(e.variable, "BUILTIN_ACCOUNT_ID");
        assert_eq!(err(&[("sts", "moto")]).variable, "STS");
    }

    #[test]
    fn builtin_sts_beside_a_real_metadata_service_needs_the_acknowledgement() {
        let e = err(&[("sts", "builtin")]);
        assert_eq!(e.variable, "STS");
        let message = e.to_string();
        for named in [
            "METADATA_URL",
            "http://169.254.169.254",
            "ACKNOWLEDGE_FAKE_CREDENTIALS",
        ] {
            assert!(message.contains(named), "{message}");
        }
        let c = Config::try_from(args(&[
            ("sts", "builtin"),
            ("acknowledge-fake-credentials", "true"),
        ]))
        .unwrap();
        assert!(matches!(c.sts, StsConfig::Builtin { .. }));
        // The acknowledgement alone would do nothing: refused.
        let e = err(&[("acknowledge-fake-credentials", "true")]);
        assert_eq!(e.variable, "ACKNOWLEDGE_FAKE_CREDENTIALS");
        let e = err(&[("sts", "builtin"), ("acknowledge-fake-credentials", "sure")]);
        assert_eq!(e.variable, "ACKNOWLEDGE_FAKE_CREDENTIALS");
    }

    #[test]
    fn new_relic_license_value_never_appears_in_errors() {
        let e = err(&[("newrelic-license", "secret-license-key")]);
        assert!(!e.to_string().contains("secret-license-key"));
    }

    #[test]
    fn variables_are_read_from_the_map_given_and_a_flag_wins() {
        let from_vars = |argv: &[&str], vars: &[(&str, &str)]| {
            Config::try_from(
                Args::parse_from_vars(argv.iter().copied(), vars.iter().copied()).unwrap(),
            )
        };
        let c = from_vars(
            &[],
            &[
                ("PORT", "9000"),
                ("DEFAULT_ROLE", "web"),
                ("NOT_A_SETTING", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.default_role.as_ref().map(|r| r.name()), Some("web"));
        let c = from_vars(&["--port=7000"], &[("PORT", "9000")]).unwrap();
        assert_eq!(c.listen.port(), 7000);
        let e = from_vars(&[], &[("PORT", "eighty")]).unwrap_err();
        assert_eq!(e.variable, "PORT");
        // An empty map: the defaults.
        assert_eq!(from_vars(&[], &[]).unwrap().listen.port(), 8000);
    }

    #[test]
    fn maintenance_commands_parse_beside_the_agents_flags() {
        let a = Args::parse_from_vars(["--port=9000"], []).unwrap();
        assert!(a.command.is_none());
        let a = Args::parse_from_vars(["ebpf", "detach"], []).unwrap();
        assert!(matches!(
            a.command,
            Some(Command::Ebpf {
                action: EbpfCommand::Detach { pin_path: None }
            })
        ));
        let a = Args::parse_from_vars(
            [
                "--ebpf-pin-path=/sys/fs/bpf/a",
                "ebpf",
                "detach",
                "--pin-path",
                "/sys/fs/bpf/b",
            ],
            [],
        )
        .unwrap();
        assert_eq!(a.ebpf_pin_path, "/sys/fs/bpf/a");
        match a.command {
            Some(Command::Ebpf {
                action: EbpfCommand::Detach { pin_path },
            }) => assert_eq!(pin_path.as_deref(), Some("/sys/fs/bpf/b")),
            other => panic!("{other:?}"),
        }
        let a = Args::parse_from_vars(["iptables", "remove"], []).unwrap();
        assert!(matches!(
            a.command,
            Some(Command::Iptables {
                action: IptablesCommand::Remove
            })
        ));
        assert!(Args::parse_from_vars(["ebpf"], []).is_err());
        assert!(Args::parse_from_vars(["iptables", "install"], []).is_err());
    }

    #[test]
    fn the_pin_path_is_known_in_every_mode_for_leftover_checks() {
        let c = Config::try_from(args(&[("intercept", "iptables")])).unwrap();
        assert_eq!(
            c.ebpf_pin_path.as_deref(),
            Some(std::path::Path::new("/sys/fs/bpf/metadataproxy"))
        );
        // Only eBPF mode refuses a relative pin path; the others skip the check.
        let c = Config::try_from(args(&[("ebpf-pin-path", "relative")])).unwrap();
        assert_eq!(c.ebpf_pin_path, None);
    }
}
