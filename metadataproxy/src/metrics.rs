//! What the agent measures, through the `metrics` facade. Every metric the agent records is
//! named and labelled here, so that the table in docs/operations.md and the sinks have one
//! source.
//!
//! Names use dots (`metadataproxy.http_request`), as the statsd family and New Relic expect;
//! the Prometheus sink turns them into `metadataproxy_http_request_total` and the like.
//!
//! Label values are bounded by construction (a handler name, a status code, an error
//! description from a fixed set) or by what runs on the host (the containers' own role names,
//! whoever starts the containers sets them; never a role a request names), except
//! `request_path` and `remote_addr`, which are only recorded with `METRICS_UNBOUNDED_LABELS`
//! and never reach Prometheus, and the copied Docker labels. Idle series leave every sink.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{counter, gauge, histogram, Label};

/// Content type of the Prometheus text exposition (the admin port's `/metrics`, and the
/// proxy port's with `METRICS_ON_PROXY_PORT`).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every request, by handler, role, status and error (`counter`).
pub const HTTP_REQUEST: &str = "metadataproxy.http_request";
/// Request latency by handler, in seconds (`histogram`).
pub const HTTP_REQUEST_DURATION: &str = "metadataproxy.http_request_duration_seconds";
/// Passthrough: the whole upstream round trip, in nanoseconds (`gauge`, as documented).
pub const AWS_RESPONSE_TIME: &str = "metadataproxy.aws_response_time";
/// Passthrough: the upstream round trip minus the connect, in nanoseconds (`gauge`).
pub const AWS_REQUEST_TIME: &str = "metadataproxy.aws_request_time";
/// Passthrough: the upstream connect, in nanoseconds, 0 on a reused connection (`gauge`).
pub const AWS_CONNECTION_TIME: &str = "metadataproxy.aws_connection_time";
/// `sts:AssumeRole` calls by role, result and AWS error code (`counter`).
pub const STS_ASSUME_ROLE: &str = "metadataproxy.sts_assume_role";
/// `sts:AssumeRole` latency in seconds (`histogram`).
pub const STS_ASSUME_ROLE_DURATION: &str = "metadataproxy.sts_assume_role_duration_seconds";
/// Credential cache outcomes: `hit`, `miss`, `refresh`, `stale`, `backoff` (`counter`).
pub const CREDENTIAL_CACHE: &str = "metadataproxy.credential_cache";
/// Credentials fetched for a container before it asked, by result (`counter`).
pub const CREDENTIAL_PREFETCH: &str = "metadataproxy.credential_prefetch";
/// Credentials renewed ahead of expiry (`counter`).
pub const CREDENTIAL_REFRESH_AHEAD: &str = "metadataproxy.credential_refresh_ahead";
/// Cached credential sets (`gauge`).
pub const CREDENTIAL_CACHE_ENTRIES: &str = "metadataproxy.credential_cache_entries";
/// Container lookups by source (`index`, `docker`; `networks`: the address is outside every
/// Docker network or a gateway; `negative_cache`: a recent direct lookup's answer was reused)
/// and result (`found`, `not_found`, `error`) (`counter`).
pub const DOCKER_LOOKUP: &str = "metadataproxy.docker_lookup";
/// Containers in the index (`gauge`).
pub const DOCKER_INDEX_CONTAINERS: &str = "metadataproxy.docker_index_containers";
/// 1 while the index is synced and Docker's event stream is up (`gauge`).
pub const DOCKER_INDEX_SYNCED: &str = "metadataproxy.docker_index_synced";
/// Full syncs of the index (`counter`).
pub const DOCKER_INDEX_SYNCS: &str = "metadataproxy.docker_index_syncs";
/// Docker events applied to the index (`counter`).
pub const DOCKER_EVENTS: &str = "metadataproxy.docker_events";
/// eBPF mode: requests refused because the peer IP and the cgroup disagreed (`counter`).
pub const IDENTITY_MISMATCH: &str = "metadataproxy.identity_mismatch";
/// Counter: log lines dropped because stdout did not keep up.
pub const LOG_LINES_DROPPED: &str = "metadataproxy.log_lines_dropped";
/// iptables mode: times the agent's netfilter table was found missing and reinstalled
/// (`counter`).
pub const INTERCEPTION_REPAIRS: &str = "metadataproxy.interception_repairs";
/// Requests refused before any lookup, by reason (`counter`).
pub const BLOCKED_REQUEST: &str = "metadataproxy.blocked_request";
/// Credential requests refused by the role policy, by role (`counter`).
pub const ROLE_NOT_ALLOWED: &str = "metadataproxy.role_not_allowed";
/// Always 1, with the version (`gauge`).
pub const BUILD_INFO: &str = "metadataproxy.build_info";
/// Batches a sink could not send, by sink (`counter`).
pub const TELEMETRY_EXPORT_ERRORS: &str = "metadataproxy.telemetry_export_errors";

/// The `service` label's value, as go-metadataproxy sent it.
pub const SERVICE: &str = "go-metadataproxy";

/// Labels that only the statsd family and New Relic may carry (one value per path or caller).
pub const UNBOUNDED_LABELS: [&str; 2] = ["request_path", "remote_addr"];

static UNBOUNDED: AtomicBool = AtomicBool::new(false);
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Marks a recorder as installed: request metrics are built only then (their labels cost a
/// few allocations per request).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether request metrics are recorded (a global recorder is installed).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Records `request_path` and `remote_addr` on request metrics (`METRICS_UNBOUNDED_LABELS`).
pub fn set_unbounded_labels(on: bool) {
    UNBOUNDED.store(on, Ordering::Relaxed);
}

/// Help texts, for the Prometheus exposition.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUEST,
        "Requests answered, by handler, role and status."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        "Request latency in seconds, by handler."
    );
    describe_gauge!(
        AWS_RESPONSE_TIME,
        "Last passthrough upstream round trip in nanoseconds."
    );
    describe_gauge!(
        AWS_REQUEST_TIME,
        "Last passthrough upstream round trip minus connect, in nanoseconds."
    );
    describe_gauge!(
        AWS_CONNECTION_TIME,
        "Last passthrough upstream connect time in nanoseconds (0: reused connection)."
    );
    describe_counter!(
        STS_ASSUME_ROLE,
        "sts:AssumeRole calls by role, result and error code."
    );
    describe_histogram!(
        STS_ASSUME_ROLE_DURATION,
        "sts:AssumeRole latency in seconds."
    );
    describe_counter!(
        CREDENTIAL_CACHE,
        "Credential cache outcomes: hit, miss, refresh, stale (served while STS fails), backoff."
    );
    describe_counter!(
        CREDENTIAL_PREFETCH,
        "Credentials fetched at container start."
    );
    describe_counter!(
        CREDENTIAL_REFRESH_AHEAD,
        "Credentials renewed ahead of expiry."
    );
    describe_gauge!(CREDENTIAL_CACHE_ENTRIES, "Cached credential sets.");
    describe_counter!(DOCKER_LOOKUP, "Container lookups by source and result.");
    describe_gauge!(DOCKER_INDEX_CONTAINERS, "Running containers in the index.");
    describe_gauge!(
        DOCKER_INDEX_SYNCED,
        "1 while the index is synced with Docker and follows its events."
    );
    describe_counter!(DOCKER_INDEX_SYNCS, "Full syncs of the container index.");
    describe_counter!(DOCKER_EVENTS, "Docker events applied to the index.");
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because stdout did not keep up (the request never waits for it)."
    );
    describe_counter!(
        IDENTITY_MISMATCH,
        "eBPF mode: requests refused because peer IP and cgroup disagreed."
    );
    describe_counter!(
        BLOCKED_REQUEST,
        "Requests refused before any lookup, by reason."
    );
    describe_counter!(
        ROLE_NOT_ALLOWED,
        "Credential requests refused by the role policy."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");
    describe_counter!(
        TELEMETRY_EXPORT_ERRORS,
        "Metric batches a sink could not send."
    );
}

/// Sets the build info gauge.
pub fn build_info() {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "service" => SERVICE).set(1.0);
}

/// Metadata service API versions, for a bounded `api_version` label: any other segment is
/// `other`.
const KNOWN_VERSIONS: [&str; 29] = [
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "2024-04-11",
    "latest",
];

/// The `api_version` label of a request path: its first segment when that is a known API
/// version, `other` when not, empty for `/`.
pub fn api_version_label(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if first.is_empty() {
        return "";
    }
    KNOWN_VERSIONS
        .iter()
        .find(|v| **v == first)
        .copied()
        .unwrap_or("other")
}

/// One answered request, as metrics see it.
#[derive(Debug)]
pub struct RequestRecord<'a> {
    /// The request path.
    pub path: &'a str,
    /// `handler_name`.
    pub handler_name: &'static str,
    /// The calling container's role name, empty when unknown.
    pub role_name: &'a str,
    /// The peer address.
    pub remote_addr: std::net::IpAddr,
    /// The status sent.
    pub response_code: u16,
    /// The failure's description, empty on success.
    pub error_description: &'static str,
    /// Copied Docker labels of the caller.
    pub copied: &'a [(String, String)],
    /// Time to answer.
    pub duration: Duration,
}

/// Records `metadataproxy.http_request` and the latency histogram.
pub fn request(r: &RequestRecord<'_>) {
    let mut labels: Vec<Label> = Vec::with_capacity(8 + r.copied.len());
    labels.push(Label::new("api_version", api_version_label(r.path)));
    labels.push(Label::new("handler_name", r.handler_name));
    labels.push(Label::new("role_name", r.role_name.to_string()));
    if UNBOUNDED.load(Ordering::Relaxed) {
        labels.push(Label::new("request_path", truncated(r.path)));
        labels.push(Label::new("remote_addr", r.remote_addr.to_string()));
    }
    labels.push(Label::new("response_code", r.response_code.to_string()));
    labels.push(Label::new("error_description", r.error_description));
    labels.push(Label::new("service", SERVICE));
    for (k, v) in r.copied {
        labels.push(Label::new(k.clone(), v.clone()));
    }
    counter!(HTTP_REQUEST, labels).increment(1);
    histogram!(HTTP_REQUEST_DURATION, "handler_name" => r.handler_name)
        .record(r.duration.as_secs_f64());
}

/// A path cut to 256 bytes (at a character boundary), so that one long path cannot make a
/// metric line larger than a datagram.
fn truncated(path: &str) -> String {
    let mut end = path.len().min(256);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_string()
}

/// Upstream timings of one passthrough request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamTiming {
    /// The whole round trip.
    pub response: Duration,
    /// The connect (zero on a reused connection).
    pub connection: Duration,
}

/// Records the three documented `aws_*_time` gauges (nanoseconds).
pub fn upstream_timing(t: UpstreamTiming, path: &str, copied: &[(String, String)]) {
    let mut labels: Vec<Label> = Vec::with_capacity(3 + copied.len());
    labels.push(Label::new("api_version", api_version_label(path)));
    labels.push(Label::new("handler_name", "passthrough"));
    if UNBOUNDED.load(Ordering::Relaxed) {
        labels.push(Label::new("request_path", truncated(path)));
    }
    labels.push(Label::new("service", SERVICE));
    for (k, v) in copied {
        labels.push(Label::new(k.clone(), v.clone()));
    }
    let ns = |d: Duration| d.as_nanos() as f64;
    gauge!(AWS_RESPONSE_TIME, labels.clone()).set(ns(t.response));
    gauge!(AWS_REQUEST_TIME, labels.clone()).set(ns(t.response.saturating_sub(t.connection)));
    gauge!(AWS_CONNECTION_TIME, labels).set(ns(t.connection));
}

/// Records one `sts:AssumeRole` call: `error_code` is empty on success.
pub fn assume_role(role_name: &str, error_code: Option<&str>, duration: Duration) {
    let (result, code) = match error_code {
        None => ("ok", String::new()),
        Some(c) => ("error", bounded_code(c)),
    };
    counter!(
        STS_ASSUME_ROLE,
        "role_name" => role_name.to_string(),
        "result" => result,
        "error_code" => code
    )
    .increment(1);
    histogram!(STS_ASSUME_ROLE_DURATION, "result" => result).record(duration.as_secs_f64());
}

/// AWS error codes are short identifiers; anything else is folded to `Other`.
fn bounded_code(code: &str) -> String {
    if !code.is_empty()
        && code.len() <= 64
        && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
    {
        code.to_string()
    } else {
        "Other".to_string()
    }
}

/// Records a credential cache outcome.
pub fn cache(result: &'static str) {
    counter!(CREDENTIAL_CACHE, "result" => result).increment(1);
}

/// Records a prefetch.
pub fn prefetch(ok: bool) {
    counter!(CREDENTIAL_PREFETCH, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Records a renewal ahead of expiry.
pub fn refresh_ahead() {
    counter!(CREDENTIAL_REFRESH_AHEAD).increment(1);
}

/// Records a container lookup.
pub fn docker_lookup(source: &'static str, result: &'static str) {
    counter!(DOCKER_LOOKUP, "source" => source, "result" => result).increment(1);
}

/// Records a full sync of the index.
pub fn index_sync() {
    counter!(DOCKER_INDEX_SYNCS).increment(1);
}

/// Records an applied Docker event.
pub fn docker_event(action: &str) {
    let action = match action {
        "create" => "create",
        "start" => "start",
        "die" => "die",
        "stop" => "stop",
        "destroy" => "destroy",
        "remove" => "remove",
        "rename" => "rename",
        "connect" => "connect",
        "disconnect" => "disconnect",
        _ => "other",
    };
    counter!(DOCKER_EVENTS, "action" => action).increment(1);
}

/// Sets the state gauges (called periodically, so push sinks send them every interval).
pub fn state(index_containers: Option<usize>, synced: Option<bool>, cache_entries: u64) {
    if let Some(n) = index_containers {
        gauge!(DOCKER_INDEX_CONTAINERS).set(n as f64);
    }
    if let Some(s) = synced {
        gauge!(DOCKER_INDEX_SYNCED).set(if s { 1.0 } else { 0.0 });
    }
    gauge!(CREDENTIAL_CACHE_ENTRIES).set(cache_entries as f64);
    build_info();
}

/// Records log lines the writer dropped.
pub fn log_lines_dropped(n: u64) {
    counter!(LOG_LINES_DROPPED).increment(n);
}

/// Records an identity mismatch (eBPF mode).
pub fn identity_mismatch() {
    counter!(IDENTITY_MISMATCH).increment(1);
}

/// Records a request refused before any lookup.
pub fn blocked(reason: &'static str) {
    counter!(BLOCKED_REQUEST, "reason" => reason).increment(1);
}

/// Records a role refused by the role policy.
pub fn role_not_allowed(role_name: &str) {
    counter!(ROLE_NOT_ALLOWED, "role_name" => role_name.to_string()).increment(1);
}

/// Records a batch a sink could not send.
pub fn export_error(sink: &'static str) {
    counter!(TELEMETRY_EXPORT_ERRORS, "sink" => sink).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_is_bounded() {
        assert_eq!(api_version_label("/latest/meta-data/"), "latest");
        assert_eq!(api_version_label("/2009-04-04/meta-data"), "2009-04-04");
        assert_eq!(api_version_label("/2099-01-01/x"), "other");
        assert_eq!(api_version_label("/zzzz"), "other");
        assert_eq!(api_version_label("/"), "");
    }

    #[test]
    fn error_codes_are_bounded() {
        assert_eq!(bounded_code("AccessDenied"), "AccessDenied");
        assert_eq!(bounded_code("a b"), "Other");
        assert_eq!(bounded_code(&"x".repeat(100)), "Other");
    }
}
