//! A recorder for the push sinks this crate formats itself (statsd, statsite, New Relic; the
//! DogStatsD sink is `metrics-exporter-dogstatsd`'s own recorder): it aggregates
//! between flushes, and each flush drains what changed. Counters are sent as the increase
//! since the last flush, gauges when they were set since the last flush, histograms as their
//! samples. A series that sees nothing for `idle_flushes` flushes is dropped, so that labels
//! with many values (copied Docker labels, opt-in paths) do not grow memory without bound.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_util::registry::{Registry, Storage};
use metrics_util::storage::AtomicBucket;

/// What one series contributed to a flush.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Increase since the last flush (never 0).
    Counter(u64),
    /// Last value set.
    Gauge(f64),
    /// Every sample recorded since the last flush.
    Histogram(Vec<f64>),
}

/// One series in a flush.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Name and labels.
    pub key: Key,
    /// What it recorded.
    pub value: Value,
}

#[derive(Debug, Default)]
struct PushCounter {
    value: AtomicU64,
    idle: AtomicU32,
}

impl CounterFn for PushCounter {
    fn increment(&self, value: u64) {
        self.value.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.value.store(value, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct PushGauge {
    bits: AtomicU64,
    touched: AtomicBool,
    idle: AtomicU32,
}

impl PushGauge {
    fn update(&self, f: impl Fn(f64) -> f64) {
        let _ = self
            .bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(f(f64::from_bits(b)).to_bits())
            });
        self.touched.store(true, Ordering::Release);
    }
}

impl GaugeFn for PushGauge {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }
    fn set(&self, value: f64) {
        self.bits.store(value.to_bits(), Ordering::Relaxed);
        self.touched.store(true, Ordering::Release);
    }
}

#[derive(Debug, Default)]
struct PushHistogram {
    samples: AtomicBucket<f64>,
    idle: AtomicU32,
}

impl HistogramFn for PushHistogram {
    fn record(&self, value: f64) {
        self.samples.push(value);
    }
}

#[derive(Debug)]
struct PushStorage;

impl Storage<Key> for PushStorage {
    type Counter = Arc<PushCounter>;
    type Gauge = Arc<PushGauge>;
    type Histogram = Arc<PushHistogram>;

    fn counter(&self, _: &Key) -> Self::Counter {
        Arc::default()
    }
    fn gauge(&self, _: &Key) -> Self::Gauge {
        Arc::default()
    }
    fn histogram(&self, _: &Key) -> Self::Histogram {
        Arc::default()
    }
}

/// The aggregating recorder; clones share their series.
#[derive(Debug, Clone)]
pub struct PushRecorder {
    registry: Arc<Registry<Key, PushStorage>>,
    idle_flushes: u32,
}

impl PushRecorder {
    /// A recorder that forgets a series after `idle_flushes` flushes without data.
    pub fn new(idle_flushes: u32) -> Self {
        PushRecorder {
            registry: Arc::new(Registry::new(PushStorage)),
            idle_flushes: idle_flushes.max(1),
        }
    }

    /// What was recorded since the last drain.
    pub fn drain(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        let limit = self.idle_flushes;
        let keep = |active: bool, idle: &AtomicU32| {
            if active {
                idle.store(0, Ordering::Relaxed);
                true
            } else {
                idle.fetch_add(1, Ordering::Relaxed) + 1 < limit
            }
        };
        self.registry.retain_counters(|key, c| {
            let delta = c.value.swap(0, Ordering::Relaxed);
            if delta > 0 {
                out.push(Sample {
                    key: key.clone(),
                    value: Value::Counter(delta),
                });
            }
            keep(delta > 0, &c.idle)
        });
        self.registry.retain_gauges(|key, g| {
            let touched = g.touched.swap(false, Ordering::Acquire);
            if touched {
                out.push(Sample {
                    key: key.clone(),
                    value: Value::Gauge(f64::from_bits(g.bits.load(Ordering::Relaxed))),
                });
            }
            keep(touched, &g.idle)
        });
        self.registry.retain_histograms(|key, h| {
            let mut samples = Vec::new();
            h.samples.clear_with(|s| samples.extend_from_slice(s));
            let active = !samples.is_empty();
            if active {
                out.push(Sample {
                    key: key.clone(),
                    value: Value::Histogram(samples),
                });
            }
            keep(active, &h.idle)
        });
        out
    }
}

impl Recorder for PushRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(r: &PushRecorder, f: impl FnOnce()) {
        metrics::with_local_recorder(r, f);
    }

    #[test]
    fn counters_send_their_increase_gauges_when_set_histograms_their_samples() {
        let r = PushRecorder::new(3);
        record(&r, || {
            metrics::counter!("c", "a" => "1").increment(2);
            metrics::counter!("c", "a" => "1").increment(3);
            metrics::gauge!("g").set(7.5);
            metrics::histogram!("h").record(0.25);
            metrics::histogram!("h").record(0.5);
        });
        let mut first = r.drain();
        first.sort_by(|a, b| a.key.name().cmp(b.key.name()));
        assert_eq!(first.len(), 3);
        assert_eq!(first[0].value, Value::Counter(5));
        assert_eq!(first[0].key.labels().next().unwrap().value(), "1");
        assert_eq!(first[1].value, Value::Gauge(7.5));
        assert_eq!(first[2].value, Value::Histogram(vec![0.25, 0.5]));
        assert!(r.drain().is_empty(), "nothing new: nothing sent");
        record(&r, || metrics::counter!("c", "a" => "1").increment(1));
        assert_eq!(r.drain()[0].value, Value::Counter(1));
    }

    #[test]
    fn idle_series_are_forgotten() {
        let r = PushRecorder::new(2);
        record(&r, || metrics::counter!("c").increment(1));
        assert_eq!(r.drain().len(), 1);
        let mut count = 0;
        r.registry.visit_counters(|_, _| count += 1);
        assert_eq!(count, 1);
        r.drain();
        r.drain();
        let mut count = 0;
        r.registry.visit_counters(|_, _| count += 1);
        assert_eq!(count, 0);
    }
}
