//! New Relic export: the Metric API (`POST /metric/v1`, JSON, `Api-Key` header).
//!
//! Each flush is one payload: a `common` block (the flush's timestamp and interval, and the
//! attributes `app.name`, `host.name` and `service`) and one metric per series: counters as
//! `count` (the increase over the interval), gauges as `gauge`, histograms as `summary`
//! (`count`, `sum`, `min`, `max`). Labels become attributes; empty values are left out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value as Json};

use super::push::{PushRecorder, Sample, Value};
use super::NewRelicConfig;

/// Most metrics in one payload (the API takes up to 1 MB compressed).
const MAX_METRICS_PER_POST: usize = 2000;
/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// The JSON payloads for one flush.
pub fn payloads(
    samples: &[Sample],
    app_name: &str,
    host: &str,
    timestamp_ms: u64,
    interval: Duration,
) -> Vec<Json> {
    let interval_ms = interval.as_millis() as u64;
    samples
        .chunks(MAX_METRICS_PER_POST)
        .map(|chunk| {
            let metrics: Vec<Json> = chunk.iter().map(metric).collect();
            json!([{
                "common": {
                    "timestamp": timestamp_ms,
                    "interval.ms": interval_ms,
                    "attributes": {
                        "app.name": app_name,
                        "host.name": host,
                        "service": crate::metrics::SERVICE,
                    }
                },
                "metrics": metrics,
            }])
        })
        .collect()
}

fn metric(s: &Sample) -> Json {
    let mut attributes = Map::new();
    for l in s.key.labels().filter(|l| !l.value().is_empty()) {
        attributes.insert(l.key().to_string(), Json::String(l.value().to_string()));
    }
    let (kind, value) = match &s.value {
        Value::Counter(n) => ("count", json!(n)),
        Value::Gauge(v) => ("gauge", json!(v)),
        Value::Histogram(samples) => {
            let sum: f64 = samples.iter().sum();
            let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
            let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (
                "summary",
                json!({"count": samples.len(), "sum": sum, "min": min, "max": max}),
            )
        }
    };
    json!({
        "name": s.key.name(),
        "type": kind,
        "value": value,
        "attributes": attributes,
    })
}

/// Posts what `recorder` gathered every `config.interval`, until the task is dropped.
pub async fn run(config: NewRelicConfig, recorder: PushRecorder, host: String) {
    let https = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
    {
        Ok(b) => b.https_or_http().enable_http1().build(),
        Err(e) => {
            tracing::error!(error = %e, "New Relic export disabled: no TLS root certificates");
            return;
        }
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let samples = recorder.drain();
        if samples.is_empty() {
            continue;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for payload in payloads(&samples, &config.app_name, &host, now_ms, config.interval) {
            let req = http::Request::post(config.endpoint.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("Api-Key", config.license.expose())
                .header(
                    http::header::USER_AGENT,
                    concat!("metadataproxy/", env!("CARGO_PKG_VERSION")),
                )
                .body(Full::new(Bytes::from(payload.to_string())));
            let req = match req {
                Ok(r) => r,
                Err(_) => {
                    // Only a license with characters a header cannot carry gets here.
                    tracing::error!(
                        "New Relic export disabled: NEWRELIC_LICENSE is not a valid header value"
                    );
                    return;
                }
            };
            // The whole exchange, body included, under the timeout: a stalled endpoint must
            // not stop the flushes.
            let exchange = async {
                let resp = client.request(req).await?;
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                Ok::<_, hyper_util::client::legacy::Error>(status)
            };
            match tokio::time::timeout(POST_TIMEOUT, exchange).await {
                Ok(Ok(status)) if status.is_success() => {}
                Ok(Ok(status)) => {
                    crate::metrics::export_error("newrelic");
                    tracing::warn!(status = status.as_u16(), "New Relic refused the metrics");
                }
                Ok(Err(e)) => {
                    crate::metrics::export_error("newrelic");
                    tracing::warn!(error = %e, "could not send metrics to New Relic");
                }
                Err(_) => {
                    crate::metrics::export_error("newrelic");
                    tracing::warn!("sending metrics to New Relic timed out");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use metrics::{Key, Label};

    use super::*;

    #[test]
    fn payload_follows_the_metric_api() {
        let samples = vec![
            Sample {
                key: Key::from_parts(
                    "metadataproxy.http_request",
                    vec![
                        Label::new("role_name", "r"),
                        Label::new("error_description", ""),
                    ],
                ),
                value: Value::Counter(4),
            },
            Sample {
                key: Key::from_name("metadataproxy.sts_assume_role_duration_seconds"),
                value: Value::Histogram(vec![0.5, 0.25, 1.0]),
            },
        ];
        let p = payloads(&samples, "app", "host-1", 1000, Duration::from_secs(10));
        assert_eq!(p.len(), 1);
        let block = &p[0][0];
        assert_eq!(block["common"]["timestamp"], 1000);
        assert_eq!(block["common"]["interval.ms"], 10000);
        assert_eq!(block["common"]["attributes"]["app.name"], "app");
        let m = &block["metrics"];
        assert_eq!(m[0]["name"], "metadataproxy.http_request");
        assert_eq!(m[0]["type"], "count");
        assert_eq!(m[0]["value"], 4);
        assert_eq!(m[0]["attributes"], json!({"role_name": "r"}));
        assert_eq!(m[1]["type"], "summary");
        assert_eq!(
            m[1]["value"],
            json!({"count": 3, "sum": 1.75, "min": 0.25, "max": 1.0})
        );
    }
}
