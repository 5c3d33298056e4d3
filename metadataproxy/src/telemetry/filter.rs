//! [`SinkFilter`]: what one sink of the fan-out may see of a metric, decided when the series is
//! registered (before the sink stores anything).

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};

/// Names of the DogStatsD exporter's own telemetry (points, payloads and bytes sent or
/// dropped): they go to the DogStatsD sink only, as Datadog's client dashboards expect.
pub const DOGSTATSD_CLIENT_PREFIX: &str = "datadog.dogstatsd.client.";

type LabelPredicate = Box<dyn Fn(&Label) -> bool + Send + Sync>;

/// Wraps a sink's recorder: the labels `drop` picks never reach it, and neither does the
/// DogStatsD exporter's telemetry unless [`SinkFilter::with_dogstatsd_client`] lets it.
pub struct SinkFilter<R> {
    inner: R,
    drop: LabelPredicate,
    dogstatsd_client: bool,
}

impl<R> std::fmt::Debug for SinkFilter<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkFilter")
    }
}

impl<R> SinkFilter<R> {
    /// `inner`, without the labels for which `drop` is true.
    pub fn new(inner: R, drop: impl Fn(&Label) -> bool + Send + Sync + 'static) -> Self {
        SinkFilter {
            inner,
            drop: Box::new(drop),
            dogstatsd_client: false,
        }
    }

    /// Lets the DogStatsD exporter's own telemetry through (the DogStatsD sink itself).
    pub fn with_dogstatsd_client(mut self) -> Self {
        self.dogstatsd_client = true;
        self
    }

    /// `None`: not for this sink. Otherwise the key to register (a new one only when a label
    /// is dropped: the common case costs no allocation).
    fn admit(&self, key: &Key) -> Option<Option<Key>> {
        if !self.dogstatsd_client && key.name().starts_with(DOGSTATSD_CLIENT_PREFIX) {
            return None;
        }
        if !key.labels().any(|l| (self.drop)(l)) {
            return Some(None);
        }
        let labels: Vec<Label> = key.labels().filter(|l| !(self.drop)(l)).cloned().collect();
        Some(Some(Key::from_parts(key.name_shared(), labels)))
    }
}

impl<R: Recorder> Recorder for SinkFilter<R> {
    fn describe_counter(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.inner.describe_counter(k, u, d)
    }
    fn describe_gauge(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.inner.describe_gauge(k, u, d)
    }
    fn describe_histogram(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.inner.describe_histogram(k, u, d)
    }
    fn register_counter(&self, key: &Key, m: &Metadata<'_>) -> Counter {
        match self.admit(key) {
            None => Counter::noop(),
            Some(Some(k)) => self.inner.register_counter(&k, m),
            Some(None) => self.inner.register_counter(key, m),
        }
    }
    fn register_gauge(&self, key: &Key, m: &Metadata<'_>) -> Gauge {
        match self.admit(key) {
            None => Gauge::noop(),
            Some(Some(k)) => self.inner.register_gauge(&k, m),
            Some(None) => self.inner.register_gauge(key, m),
        }
    }
    fn register_histogram(&self, key: &Key, m: &Metadata<'_>) -> Histogram {
        match self.admit(key) {
            None => Histogram::noop(),
            Some(Some(k)) => self.inner.register_histogram(&k, m),
            Some(None) => self.inner.register_histogram(key, m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::push::{PushRecorder, Value};

    #[test]
    fn labels_are_dropped_before_registration() {
        let r = PushRecorder::new(3);
        let f = SinkFilter::new(r.clone(), |l| l.key() == "secret_path");
        metrics::with_local_recorder(&f, || {
            metrics::counter!("c", "secret_path" => "/x", "keep" => "y").increment(1);
            metrics::counter!("c", "secret_path" => "/z", "keep" => "y").increment(1);
        });
        let drained = r.drain();
        assert_eq!(drained.len(), 1, "both requests fold into one series");
        let labels: Vec<_> = drained[0].key.labels().map(|l| l.key()).collect();
        assert_eq!(labels, ["keep"]);
        assert_eq!(drained[0].value, Value::Counter(2));
    }

    #[test]
    fn the_dogstatsd_client_telemetry_reaches_only_the_sink_that_asks() {
        let name = "datadog.dogstatsd.client.packets_dropped";
        let plain = PushRecorder::new(3);
        let dog = PushRecorder::new(3);
        let fanout = metrics_util::layers::FanoutBuilder::default()
            .add_recorder(SinkFilter::new(plain.clone(), |_| false))
            .add_recorder(SinkFilter::new(dog.clone(), |_| false).with_dogstatsd_client())
            .build();
        metrics::with_local_recorder(&fanout, || {
            metrics::counter!(name).increment(1);
            metrics::counter!("metadataproxy.x").increment(1);
        });
        let names = |r: &PushRecorder| {
            let mut n: Vec<String> = r.drain().iter().map(|s| s.key.name().into()).collect();
            n.sort();
            n
        };
        assert_eq!(names(&plain), ["metadataproxy.x"]);
        assert_eq!(names(&dog), [name, "metadataproxy.x"]);
    }
}
