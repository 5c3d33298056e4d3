//! Logging, metrics and admin settings.

use std::net::SocketAddr;
use std::time::Duration;

/// Logging settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Least severe level written.
    pub level: tracing::Level,
    /// Line format.
    pub format: LogFormat,
}

/// Which requests get a log line (`REQUEST_LOG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestLog {
    /// Every request, as go-metadataproxy logged them.
    #[default]
    All,
    /// Refusals and failures (status 400 and above, the client gone away, the HTTP parser's
    /// refusals) and credential issuances.
    Errors,
    /// None.
    None,
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    Text,
    /// One JSON object per line.
    Json,
    /// One GELF 1.1 JSON object per line.
    Gelf,
}

/// Metrics and admin settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `COPY_DOCKER_LABELS`.
    pub copy_docker_labels: Vec<String>,
    /// `COPY_DOCKER_ENV`.
    pub copy_docker_env: Vec<String>,
    /// `LABEL_SEPARATOR`.
    pub label_separator: String,
    /// `STATSD_ADDR`.
    pub statsd_addr: Option<String>,
    /// `STATSITE_ADDR`.
    pub statsite_addr: Option<String>,
    /// `DATADOG_ADDR`.
    pub datadog_addr: Option<String>,
    /// `METRICS_FLUSH_INTERVAL`.
    pub flush_interval: Duration,
    /// `ENABLE_PROMETHEUS`.
    pub enable_prometheus: bool,
    /// `PROMETHEUS_COPY_LABELS`.
    pub prometheus_copy_labels: bool,
    /// `METRICS_UNBOUNDED_LABELS`.
    pub unbounded_labels: bool,
    /// `NEWRELIC_*`.
    pub newrelic: Option<NewRelicConfig>,
    /// `ADMIN_ADDR` (`None`: off).
    pub admin_addr: Option<SocketAddr>,
    /// `METRICS_ON_PROXY_PORT`.
    pub metrics_on_proxy_port: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            copy_docker_labels: Vec::new(),
            copy_docker_env: Vec::new(),
            label_separator: "_".into(),
            statsd_addr: None,
            statsite_addr: None,
            datadog_addr: None,
            flush_interval: Duration::from_secs(1),
            enable_prometheus: false,
            prometheus_copy_labels: false,
            unbounded_labels: false,
            newrelic: None,
            admin_addr: None,
            metrics_on_proxy_port: false,
        }
    }
}

impl TelemetryConfig {
    /// The copied Docker labels and env keys with their label names:
    /// `container<LABEL_SEPARATOR><key>`, lower-cased.
    pub fn copied_labels(&self) -> crate::identity::CopiedLabels {
        let name = |k: &String| format!("container{}{}", self.label_separator, k.to_lowercase());
        crate::identity::CopiedLabels {
            labels: self
                .copy_docker_labels
                .iter()
                .map(|k| (k.clone(), name(k)))
                .collect(),
            env: self
                .copy_docker_env
                .iter()
                .map(|k| (k.clone(), name(k)))
                .collect(),
        }
    }
}

/// The New Relic export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRelicConfig {
    /// `NEWRELIC_APP_NAME`.
    pub app_name: String,
    /// `NEWRELIC_LICENSE`, never printed.
    pub license: crate::roles::Secret,
    /// `NEWRELIC_ENDPOINT`.
    pub endpoint: http::Uri,
    /// `NEWRELIC_FLUSH_INTERVAL`.
    pub interval: Duration,
}
