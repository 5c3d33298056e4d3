//! Logs ([this module](self)) and the metrics sinks ([`export`] wires them; what is measured
//! is named in [`crate::metrics`]).
//!
//! Log lines go to stdout in one of three formats (`LOG_FORMAT`): `text`, `json`, or `gelf`
//! (GELF 1.1, one JSON object per line, extra fields `_`-prefixed). Nothing secret is ever a
//! field: credentials, tokens and external ids are wrapped in types whose `Debug` hides them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

pub use settings::{LogConfig, LogFormat, NewRelicConfig, TelemetryConfig};

pub mod dogstatsd;
pub mod export;
pub mod filter;
pub mod newrelic;
pub mod push;
mod settings;
pub mod statsd;

/// The filter for `level`: this crate at `level`, dependencies no chattier than `warn`, the
/// audit lines always.
pub fn filter(level: Level) -> EnvFilter {
    let ours = level.as_str().to_ascii_lowercase();
    let others = if level < Level::WARN { "error" } else { "warn" };
    // Audit lines are written whatever the level (they are not diagnostics).
    EnvFilter::new(format!(
        "{others},metadataproxy={ours},metadataproxy::audit=info"
    ))
}

/// A subscriber writing `config`'s format to `writer`.
pub fn subscriber<W>(config: LogConfig, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(config.level))
        .with_writer(writer)
        .with_ansi(false);
    match config.format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
        LogFormat::Gelf => Box::new(builder.event_format(Gelf::new(hostname())).finish()),
    }
}

/// Installs the global subscriber writing to stdout.
pub fn init(config: LogConfig) {
    let _ = tracing::subscriber::set_global_default(subscriber(config, std::io::stdout));
}

/// This host's name, for GELF and New Relic.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// GELF 1.1 lines: `version`, `host`, `short_message`, `timestamp`, `level` (syslog
/// severity), and every event field as `_name`.
#[derive(Debug, Clone)]
pub struct Gelf {
    host: String,
}

impl Gelf {
    /// A formatter that names `host` as the source.
    pub fn new(host: String) -> Self {
        Gelf { host }
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), Value::from(format!("{value:?}")));
    }
}

fn syslog_severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N> FormatEvent<S, N> for Gelf
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields
            .0
            .remove("message")
            .and_then(|m| m.as_str().map(str::to_string))
            .unwrap_or_default();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| (d.as_millis() as f64) / 1000.0)
            .unwrap_or(0.0);
        let mut obj = serde_json::Map::new();
        obj.insert("version".into(), Value::from("1.1"));
        obj.insert("host".into(), Value::from(self.host.as_str()));
        obj.insert("short_message".into(), Value::from(message));
        obj.insert("timestamp".into(), Value::from(timestamp));
        obj.insert(
            "level".into(),
            Value::from(syslog_severity(event.metadata().level())),
        );
        obj.insert("_target".into(), Value::from(event.metadata().target()));
        for (k, v) in fields.0 {
            // `_id` is reserved by GELF.
            let key = if k == "id" {
                "_field_id".to_string()
            } else {
                format!("_{k}")
            };
            obj.insert(key, v);
        }
        let line = serde_json::to_string(&Value::Object(obj)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}
