//! Wires the configured sinks under one global recorder (a `metrics-util` fan-out: each
//! metric is recorded once, through the `metrics` facade, and reaches every sink, each behind
//! its own [`SinkFilter`]) and starts their flush tasks.
//!
//! | sink | recorder | labels it gets |
//! |---|---|---|
//! | Prometheus | `metrics-exporter-prometheus` | bounded ones only; copied Docker labels with `PROMETHEUS_COPY_LABELS` |
//! | DogStatsD | `metrics-exporter-dogstatsd` | all with a value (as tags), `request_path` and `remote_addr` included when `METRICS_UNBOUNDED_LABELS` is on |
//! | statsd, statsite, New Relic | [`PushRecorder`] | all, `request_path` and `remote_addr` included when `METRICS_UNBOUNDED_LABELS` is on |

use std::collections::HashSet;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::{Fanout, FanoutBuilder};

use super::dogstatsd::DogStatsd;
use super::filter::SinkFilter;
use super::push::PushRecorder;
use super::statsd::{self, Flavor};
use super::TelemetryConfig;
use crate::metrics::{self as m, UNBOUNDED_LABELS};

/// Histogram buckets (seconds) of the Prometheus exposition.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A push sink's series are forgotten after this long without data.
const PUSH_IDLE: Duration = Duration::from_secs(600);

/// The installed sinks.
#[derive(Debug, Default, Clone)]
pub struct Exporters {
    /// The Prometheus exposition, when `ENABLE_PROMETHEUS` is on.
    pub prometheus: Option<PrometheusHandle>,
}

/// Installs the global recorder for the sinks `cfg` names and spawns their tasks (call from
/// inside the runtime). With no sink configured nothing is installed and recording is free.
pub fn install(cfg: &TelemetryConfig, host: String) -> Exporters {
    let (recorder, exporters) = build(cfg, host);
    if let Some(recorder) = recorder {
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed");
        }
        m::set_enabled(true);
        m::describe();
        m::build_info();
    }
    exporters
}

/// The fan-out over the sinks `cfg` names (`None` when there is none), with their flush tasks
/// spawned.
pub fn build(cfg: &TelemetryConfig, host: String) -> (Option<Fanout>, Exporters) {
    m::set_unbounded_labels(cfg.unbounded_labels);
    let copied: HashSet<String> = cfg.copied_labels().names().into_iter().collect();
    let mut fanout = FanoutBuilder::default();
    let mut any = false;
    let mut exporters = Exporters::default();

    if cfg.enable_prometheus {
        // Series of containers' roles and copied labels come and go with the containers:
        // those idle for an hour leave the exposition.
        let recorder = PrometheusBuilder::new()
            .with_recommended_naming(true)
            .idle_timeout(
                metrics_util::MetricKindMask::ALL,
                Some(Duration::from_secs(3600)),
            )
            .set_buckets(&BUCKETS)
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        let keep_copied = cfg.prometheus_copy_labels;
        let copied = copied.clone();
        fanout = fanout.add_recorder(SinkFilter::new(recorder, move |l| {
            let k = l.key();
            UNBOUNDED_LABELS.contains(&k) || (!keep_copied && copied.contains(k))
        }));
        exporters.prometheus = Some(handle);
        any = true;
    }

    let idle_flushes =
        |interval: Duration| (PUSH_IDLE.as_secs_f64() / interval.as_secs_f64()).ceil() as u32;
    if let Some(addr) = &cfg.datadog_addr {
        // Empty values are left out (the crate would send them as bare tags).
        let sink = DogStatsd::start(addr, cfg.flush_interval);
        fanout = fanout
            .add_recorder(SinkFilter::new(sink, |l| l.value().is_empty()).with_dogstatsd_client());
        any = true;
    }

    for (flavor, addr) in [
        (Flavor::Statsd, &cfg.statsd_addr),
        (Flavor::Statsite, &cfg.statsite_addr),
    ] {
        let Some(addr) = addr else { continue };
        let recorder = PushRecorder::new(idle_flushes(cfg.flush_interval));
        fanout = fanout.add_recorder(SinkFilter::new(recorder.clone(), |_| false));
        tokio::spawn(statsd::run(
            flavor,
            addr.clone(),
            recorder,
            cfg.flush_interval,
        ));
        any = true;
    }

    if let Some(nr) = &cfg.newrelic {
        let recorder = PushRecorder::new(idle_flushes(nr.interval));
        fanout = fanout.add_recorder(SinkFilter::new(recorder.clone(), |_| false));
        tokio::spawn(super::newrelic::run(nr.clone(), recorder, host));
        any = true;
    }

    (any.then(|| fanout.build()), exporters)
}

/// Prometheus exposition text (for `/metrics`).
pub fn render(handle: &PrometheusHandle) -> String {
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RequestRecord;

    fn one_request(recorder: &Fanout) {
        let copied = vec![("container_team".to_string(), "payments".to_string())];
        metrics::with_local_recorder(recorder, || {
            m::request(&RequestRecord {
                path: "/latest/meta-data/iam/security-credentials/r",
                handler_name: "iam-security-crentials-for-role",
                role_name: "r",
                remote_addr: "172.17.0.2".parse().unwrap(),
                response_code: 200,
                error_description: "",
                copied: &copied,
                duration: Duration::from_millis(2),
            })
        });
    }

    #[tokio::test]
    async fn prometheus_gets_copied_labels_only_when_asked_and_never_unbounded_ones() {
        for copy in [false, true] {
            let cfg = TelemetryConfig {
                enable_prometheus: true,
                prometheus_copy_labels: copy,
                unbounded_labels: true,
                copy_docker_labels: vec!["team".into()],
                ..TelemetryConfig::default()
            };
            let (recorder, exporters) = build(&cfg, "h".into());
            one_request(&recorder.expect("a sink"));
            let text = render(&exporters.prometheus.expect("prometheus"));
            let line = text
                .lines()
                .find(|l| l.starts_with("metadataproxy_http_request_total{"))
                .expect("request counter");
            assert_eq!(line.contains("container_team=\"payments\""), copy, "{line}");
            assert!(!line.contains("request_path"), "{line}");
            assert!(!line.contains("remote_addr"), "{line}");
        }
        m::set_unbounded_labels(false);
    }

    /// Every line received on `socket` until `done` holds for them.
    fn receive_until(
        socket: &std::os::unix::net::UnixDatagram,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        let mut buf = vec![0u8; 65536];
        while !done(&lines) {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("a datagram ({e}); so far: {lines:?}"));
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            lines.extend(text.lines().map(str::to_string));
        }
        lines
    }

    fn tags(line: &str) -> std::collections::HashMap<String, String> {
        line.split('|')
            .filter_map(|p| p.strip_prefix('#'))
            .flat_map(|t| t.split(','))
            .map(|t| {
                let (k, v) = t.split_once(':').unwrap_or((t, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dogstatsd_reaches_a_unix_datagram_socket_with_tags_and_distributions() {
        let dir = std::env::temp_dir().join(format!("mp-dogstatsd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("dsd.socket");
        let _ = std::fs::remove_file(&path);
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        // A bound on the wait, not a timed assertion: the first flush comes after 100 ms.
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let cfg = TelemetryConfig {
            datadog_addr: Some(format!("unix://{}", path.display())),
            flush_interval: Duration::from_millis(100),
            copy_docker_labels: vec!["team".into()],
            ..TelemetryConfig::default()
        };
        let (recorder, _) = build(&cfg, "h".into());
        one_request(&recorder.expect("a sink"));
        let has = |lines: &[String], prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
        let lines = receive_until(&socket, |l| {
            has(l, "metadataproxy.http_request:")
                && has(l, "metadataproxy.http_request_duration_seconds:")
        });
        let _ = std::fs::remove_dir_all(&dir);

        let counter = lines
            .iter()
            .find(|l| l.starts_with("metadataproxy.http_request:1|c|#"))
            .unwrap_or_else(|| panic!("request counter: {lines:?}"));
        let t = tags(counter);
        for (k, v) in [
            ("api_version", "latest"),
            ("handler_name", "iam-security-crentials-for-role"),
            ("role_name", "r"),
            ("response_code", "200"),
            ("service", "go-metadataproxy"),
            ("container_team", "payments"),
        ] {
            assert_eq!(t.get(k).map(String::as_str), Some(v), "{k} in {counter}");
        }
        assert!(
            !t.contains_key("error_description"),
            "empty values are left out: {counter}"
        );
        // The latency: a distribution, in seconds, with its sample rate.
        let latency = lines
            .iter()
            .find(|l| l.starts_with("metadataproxy.http_request_duration_seconds:"))
            .expect("latency");
        assert_eq!(
            latency,
            "metadataproxy.http_request_duration_seconds:0.002|d|@1.0|#handler_name:iam-security-crentials-for-role"
        );
    }
}
