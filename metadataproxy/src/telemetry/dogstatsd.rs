//! The DogStatsD sink (`DATADOG_ADDR`): `metrics-exporter-dogstatsd`'s recorder, one branch of
//! the fan-out. The crate aggregates between flushes, packs the lines into payloads, sends them
//! from its own thread every `METRICS_FLUSH_INTERVAL` (spread over the interval), and reports
//! its own drops as `datadog.dogstatsd.client.*` metrics to the same agent.
//!
//! What it is given: counters and gauges as such, histograms as distributions (`|d`, several
//! samples per line, in the unit they were recorded in: seconds), reservoir-sampled to at most
//! [`HISTOGRAM_RESERVOIR`] samples per flush (with `|@rate` when sampled). Labels are tags;
//! empty ones are left out before they reach it (see [`super::export`]).
//!
//! Addresses: `host:port` (UDP), `unix:///path` or `unixgram:///path` (the Datadog agent's
//! datagram socket, `dogstatsd_socket`), `unixstream:///path` (its stream socket,
//! `dogstatsd_stream_socket`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_dogstatsd::{BuildError, DogStatsDBuilder, DogStatsDRecorder};

/// Histogram samples kept per flush and series (about 16 KiB each).
pub const HISTOGRAM_RESERVOIR: usize = 1024;

/// The crate's address for `DATADOG_ADDR`: it reads `unix://` as a stream socket, the Datadog
/// agent's default is a datagram socket, which the crate calls `unixgram://`.
pub fn remote_address(addr: &str) -> String {
    if let Some(path) = addr.strip_prefix("unix://") {
        format!("unixgram://{path}")
    } else if let Some(path) = addr.strip_prefix("unixstream://") {
        format!("unix://{path}")
    } else {
        addr.to_string()
    }
}

fn build(addr: &str, interval: Duration) -> Result<DogStatsDRecorder, BuildError> {
    DogStatsDBuilder::default()
        .with_remote_address(remote_address(addr))?
        .with_flush_interval(interval)
        .with_telemetry(true)
        .with_histogram_sampling(true)
        .with_histogram_reservoir_size(HISTOGRAM_RESERVOIR)
        .send_histograms_as_distributions(true)
        .build()
}

/// The DogStatsD branch of the fan-out. The crate resolves a UDP host name once, when it is
/// built; while the name does not resolve (the Datadog agent not up yet), metrics for this sink
/// are dropped and the build is retried every flush interval (at least every second).
#[derive(Clone)]
pub struct DogStatsd {
    inner: Arc<OnceLock<DogStatsDRecorder>>,
}

impl std::fmt::Debug for DogStatsd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DogStatsd")
            .field("ready", &self.inner.get().is_some())
            .finish()
    }
}

impl DogStatsd {
    /// Builds the exporter for `addr` (its sending thread starts at once); call from inside the
    /// runtime, which runs the retries.
    pub fn start(addr: &str, interval: Duration) -> DogStatsd {
        let sink = DogStatsd {
            inner: Arc::new(OnceLock::new()),
        };
        match build(addr, interval) {
            Ok(r) => {
                let _ = sink.inner.set(r);
            }
            Err(e) => {
                tracing::warn!(sink = "dogstatsd", addr, error = %e, "metrics sink unreachable; retrying");
                let slot = sink.inner.clone();
                let addr = addr.to_string();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let a = addr.clone();
                        // Name resolution blocks.
                        if let Ok(Ok(r)) =
                            tokio::task::spawn_blocking(move || build(&a, interval)).await
                        {
                            let _ = slot.set(r);
                            tracing::info!(sink = "dogstatsd", addr, "metrics sink resolved");
                            return;
                        }
                    }
                });
            }
        }
        sink
    }

    /// Whether the exporter is built (its address resolved).
    pub fn ready(&self) -> bool {
        self.inner.get().is_some()
    }
}

impl Recorder for DogStatsd {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, m: &Metadata<'_>) -> Counter {
        match self.inner.get() {
            Some(r) => r.register_counter(key, m),
            None => Counter::noop(),
        }
    }
    fn register_gauge(&self, key: &Key, m: &Metadata<'_>) -> Gauge {
        match self.inner.get() {
            Some(r) => r.register_gauge(key, m),
            None => Gauge::noop(),
        }
    }
    fn register_histogram(&self, key: &Key, m: &Metadata<'_>) -> Histogram {
        match self.inner.get() {
            Some(r) => r.register_histogram(key, m),
            None => Histogram::noop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_socket_is_a_datagram_socket() {
        assert_eq!(
            remote_address("unix:///var/run/datadog/dsd.socket"),
            "unixgram:///var/run/datadog/dsd.socket"
        );
        assert_eq!(remote_address("unixgram:///s"), "unixgram:///s");
        assert_eq!(remote_address("unixstream:///s"), "unix:///s");
        assert_eq!(remote_address("127.0.0.1:8125"), "127.0.0.1:8125");
    }
}
