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
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

pub use settings::{LogConfig, LogFormat, NewRelicConfig, RequestLog, TelemetryConfig};

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
    EnvFilter::new(format!("{others},metadataproxy={ours},{AUDIT_TARGET}=info"))
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

/// How many log lines may wait for the writer thread. Past it, lines are dropped and counted
/// ([`report_dropped_lines`]), never waited for: a request never blocks on stdout. At a few
/// hundred bytes a line, a full buffer holds a few MB.
pub const LOG_BUFFER_LINES: usize = 8192;

/// The target of the audit lines ([`crate::audit`]), which are never dropped.
pub const AUDIT_TARGET: &str = "metadataproxy::audit";

/// The log writer thread: dropping it (a clean shutdown, or a failed start once its error is
/// logged) writes out every buffered line first.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: tracing_appender::non_blocking::WorkerGuard,
}

impl fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogGuard")
    }
}

/// The dropped-lines count of the installed writer.
static DROPPED: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Installs the global subscriber writing to stdout off the runtime's worker threads: lines go
/// through a bounded buffer ([`LOG_BUFFER_LINES`]) to a thread of their own, which writes them
/// out. Audit lines, rare and a record rather than a diagnostic, are written at once instead,
/// never dropped.
pub fn init(config: LogConfig) -> LogGuard {
    let (lines, guard) = log_writer(std::io::stdout(), LOG_BUFFER_LINES);
    let _ = DROPPED.set(lines.error_counter());
    let _ = tracing::subscriber::set_global_default(subscriber(
        config,
        with_audit(lines, std::io::stdout),
    ));
    LogGuard { _writer: guard }
}

/// A non-blocking, lossy writer of lines to `out`, holding at most `limit` lines.
pub fn log_writer<W: std::io::Write + Send + 'static>(
    out: W,
    limit: usize,
) -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(limit)
        .thread_name("metadataproxy-log")
        .finish(out)
}

/// `lines` for every event but the audit lines, which go to `audit`.
pub fn with_audit<L, A>(lines: L, audit: A) -> impl for<'a> MakeWriter<'a> + Send + Sync + 'static
where
    L: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    A: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    lines
        .with_filter(|m: &tracing::Metadata<'_>| m.target() != AUDIT_TARGET)
        .and(audit.with_filter(|m: &tracing::Metadata<'_>| m.target() == AUDIT_TARGET))
}

/// Log lines dropped so far because the writer could not keep up (0 before [`init`]).
pub fn dropped_lines() -> usize {
    DROPPED.get().map_or(0, |c| c.dropped_lines())
}

/// Counts dropped log lines (`metadataproxy_log_lines_dropped_total`) and says so in a warning,
/// at most once a second.
pub async fn report_dropped_lines() {
    let mut reported = 0;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let total = dropped_lines();
        if total > reported {
            crate::metrics::log_lines_dropped((total - reported) as u64);
            tracing::warn!(
                dropped = total - reported,
                dropped_total = total,
                "log lines dropped: stdout did not keep up with the log (see REQUEST_LOG)"
            );
            reported = total;
        }
    }
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
        // Events made from `log` records (the kernel program's, see `ebpf::kernel_log`) carry
        // their own target and level here; their `log.*` fields stay, as in JSON lines.
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
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
            Value::from(syslog_severity(metadata.level())),
        );
        obj.insert("_target".into(), Value::from(metadata.target()));
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;
    use crate::testing::SharedBuf;

    /// Stdout that does not take a byte until `open` says so.
    struct Stuck {
        open: mpsc::Receiver<()>,
        waited: bool,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if !self.waited {
                let _ = self.open.recv();
                self.waited = true;
            }
            self.out.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stdout_costs_lines_not_waiting_and_a_clean_stop_writes_the_rest() {
        let (open, gate) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let stuck = Stuck {
            open: gate,
            waited: false,
            out: out.clone(),
        };
        let (lines, guard) = log_writer(stuck, 4);
        let counter = lines.error_counter();
        // 100 lines while stdout takes nothing: they are all handed over, none waited for
        // (were one to wait, the writing thread would never finish and `done` would stay
        // empty).
        let (done, finished) = mpsc::channel();
        let writer = lines.clone();
        std::thread::spawn(move || {
            for i in 0..100 {
                // One write per line, as the formatter writes an event.
                let _ = writer
                    .make_writer()
                    .write_all(format!("line {i}\n").as_bytes());
            }
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("a logging thread waited on a stuck stdout");
        let dropped = counter.dropped_lines();
        assert!(dropped >= 100 - 4 - 1, "{dropped} dropped");
        // Stdout is back; the guard's drop writes out what the buffer holds.
        open.send(()).unwrap();
        drop(guard);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let written: Vec<&str> = text.lines().collect();
        assert_eq!(written.len() + dropped, 100, "{text}");
        // Whole lines, in order.
        let numbers: Vec<usize> = written
            .iter()
            .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
            .collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
        assert_eq!(numbers.first(), Some(&0));
    }

    #[test]
    fn audit_lines_bypass_the_buffer() {
        let (lines, audit) = (SharedBuf::default(), SharedBuf::default());
        let (l, a) = (lines.clone(), audit.clone());
        let writer = with_audit(move || l.clone(), move || a.clone());
        let config = LogConfig {
            level: Level::INFO,
            format: LogFormat::Json,
        };
        tracing::subscriber::with_default(subscriber(config, writer), || {
            tracing::info!(target: "metadataproxy::request", "request");
            tracing::info!(target: "metadataproxy::audit", "credentials issued");
        });
        let text = |b: &SharedBuf| b.text();
        assert!(text(&lines).contains("\"request\""), "{}", text(&lines));
        assert!(!text(&lines).contains("credentials issued"));
        assert!(
            text(&audit).contains("credentials issued"),
            "{}",
            text(&audit)
        );
        assert!(!text(&audit).contains("\"request\""));
    }
}
