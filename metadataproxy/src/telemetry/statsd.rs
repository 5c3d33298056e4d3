//! Plain statsd and statsite over UDP: the small formatter kept on top of the push recorder
//! (DogStatsD is `metrics-exporter-dogstatsd`, see [`super::dogstatsd`]).
//!
//! Neither has tags: as go-metadataproxy's sinks did, the label values are appended to the
//! name, in the order the metric lists them, joined by `.`
//! (`metadataproxy.http_request.latest.iam-info-handler.my-role.200.none.go-metadataproxy`).
//! An empty value is `none`; characters other than letters, digits, `_` and `-` become `_`.
//! No kept crate writes these names, and the DogStatsD exporter's packets (several samples in
//! one line, `|d` distributions) are not plain statsd.
//!
//! Counters are `|c` (the increase since the last flush), gauges `|g`, histograms `|ms`, one
//! line per sample (histograms named `*_seconds` are converted to milliseconds). Lines are
//! packed into datagrams of at most [`MAX_DATAGRAM`] bytes.

use std::time::Duration;

use tokio::net::UdpSocket;

use super::push::{PushRecorder, Sample, Value};

/// Largest datagram sent: fits a 1500-byte MTU with IP and UDP headers to spare.
pub const MAX_DATAGRAM: usize = 1432;

/// Lines longer than this are dropped.
pub const MAX_LINE: usize = 8192;

/// Which dialect a sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Plain statsd (`STATSD_ADDR`).
    Statsd,
    /// statsite (`STATSITE_ADDR`).
    Statsite,
}

impl Flavor {
    /// The sink's name in logs and the export error metric.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Statsd => "statsd",
            Flavor::Statsite => "statsite",
        }
    }
}

fn sanitize_segment(v: &str, out: &mut String) {
    if v.is_empty() {
        out.push_str("none");
        return;
    }
    out.extend(v.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        }
    }));
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The lines for one flush (statsd and statsite speak the same dialect).
pub fn lines(samples: &[Sample]) -> Vec<String> {
    let mut out = Vec::new();
    for s in samples {
        let mut name = String::new();
        sanitize_name(s.key.name(), &mut name);
        for l in s.key.labels() {
            name.push('.');
            sanitize_segment(l.value(), &mut name);
        }
        let mut push = |value: String, kind: &str| out.push(format!("{name}:{value}|{kind}"));
        match &s.value {
            Value::Counter(n) => push(n.to_string(), "c"),
            Value::Gauge(v) => push(number(*v), "g"),
            Value::Histogram(samples) => {
                let scale = if s.key.name().ends_with("_seconds") {
                    1000.0
                } else {
                    1.0
                };
                for v in samples {
                    push(number(v * scale), "ms");
                }
            }
        }
    }
    out
}

fn sanitize_name(name: &str, out: &mut String) {
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
            c
        } else {
            '_'
        }
    }));
}

/// Packs lines into newline-separated datagrams of at most [`MAX_DATAGRAM`] bytes (a longer
/// line goes alone; one over [`MAX_LINE`] is dropped).
pub fn datagrams(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in lines {
        if line.len() > MAX_LINE {
            // No sink takes it (copied label values can be long): dropped, not the flush.
            continue;
        }
        if !current.is_empty() && current.len() + 1 + line.len() > MAX_DATAGRAM {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Sends what `recorder` gathered to `addr` every `interval`, until the task is dropped.
pub async fn run(flavor: Flavor, addr: String, recorder: PushRecorder, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut socket: Option<UdpSocket> = None;
    loop {
        tick.tick().await;
        let samples = recorder.drain();
        if samples.is_empty() {
            continue;
        }
        if socket.is_none() {
            socket = connect(&addr).await.map_err(|e| {
                tracing::warn!(sink = flavor.name(), addr = %addr, error = %e, "metrics sink unreachable");
            }).ok();
        }
        let Some(sock) = &socket else {
            crate::metrics::export_error(flavor.name());
            continue;
        };
        let mut failed = false;
        for datagram in datagrams(&lines(&samples)) {
            if let Err(e) = sock.send(datagram.as_bytes()).await {
                tracing::debug!(sink = flavor.name(), error = %e, "metrics datagram not sent");
                crate::metrics::export_error(flavor.name());
                failed = true;
            }
        }
        if failed {
            // Re-resolve next time: the sink may have moved.
            socket = None;
        }
    }
}

async fn connect(addr: &str) -> std::io::Result<UdpSocket> {
    let target = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let bind: std::net::SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(target).await?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use metrics::{Key, Label};

    use super::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: Value) -> Sample {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(k.to_string(), v.to_string()))
            .collect();
        Sample {
            key: Key::from_parts(name.to_string(), labels),
            value,
        }
    }

    #[test]
    fn label_values_are_folded_into_the_name() {
        let s = [
            sample(
                "metadataproxy.http_request",
                &[
                    ("api_version", "latest"),
                    ("role_name", "my role:x"),
                    ("error_description", ""),
                ],
                Value::Counter(3),
            ),
            sample("g", &[], Value::Gauge(2.5)),
            sample(
                "metadataproxy.http_request_duration_seconds",
                &[("handler_name", "passthrough")],
                Value::Histogram(vec![0.002, 1.0]),
            ),
        ];
        assert_eq!(
            lines(&s),
            [
                "metadataproxy.http_request.latest.my_role_x.none:3|c",
                "g:2.5|g",
                "metadataproxy.http_request_duration_seconds.passthrough:2|ms",
                "metadataproxy.http_request_duration_seconds.passthrough:1000|ms",
            ]
        );
    }

    #[test]
    fn datagrams_stay_under_the_limit() {
        let lines: Vec<String> = (0..100).map(|i| format!("metric.{i:03}:1|c")).collect();
        let grams = datagrams(&lines);
        assert!(grams.len() > 1);
        assert!(grams.iter().all(|g| g.len() <= MAX_DATAGRAM));
        let rejoined: Vec<&str> = grams.iter().flat_map(|g| g.split('\n')).collect();
        assert_eq!(rejoined.len(), 100);
    }
}
