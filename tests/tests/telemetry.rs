//! Telemetry end to end: a real Prometheus server scraping the admin listener, `promtool`, UDP
//! listeners for statsd, statsite and DogStatsD, a Unix datagram socket for DogStatsD, a local
//! endpoint for New Relic's Metric API, and containers on a real Docker engine whose labels and
//! environment are copied.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use metadataproxy_tests::sinks::{
    http_get, parse_statsd, HttpStub, Prometheus, StatsdLine, UdpSink, UnixDatagramSink,
};
use metadataproxy_tests::{eventually, Agent, Classic, FakeUpstream};

const MD: &str = "http://169.254.169.254/latest/meta-data";
const CREDS: &str = "iam-security-crentials-for-role";

fn promtool_check(exposition: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`, installed by the test command)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write exposition");
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn prometheus_scrapes_the_admin_listener_with_bounded_labels() {
    let statsd = UdpSink::start();
    let statsd_addr = statsd.addr.to_string();
    let s = Classic::start(
        "tm-prom",
        51,
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("ENABLE_PROMETHEUS", "true"),
            ("COPY_DOCKER_LABELS", "com.example.team"),
            // Unbounded labels need a push sink; they must still stay off Prometheus.
            ("METRICS_UNBOUNDED_LABELS", "true"),
            ("STATSD_ADDR", &statsd_addr),
        ],
    );
    let c = metadataproxy_tests::Container::start_privileged(
        &s.env,
        "tm-prom",
        Some(&s.net.name),
        &[("IAM_ROLE", "prom-role")],
        &["--label", "com.example.team=payments"],
    );
    for _ in 0..3 {
        let r = c.wget(&format!("{MD}/iam/security-credentials/prom-role"));
        assert_eq!(r.status, 200, "{}", s.agent.raw_logs());
    }
    assert_eq!(c.wget(&format!("{MD}/instance-id")).status, 200);
    assert_eq!(
        c.wget(&format!("{MD}/iam/security-credentials/other-role"))
            .status,
        404
    );

    let admin = s.agent.admin_addr();
    let (status, exposition) = http_get(&admin, "/metrics");
    assert_eq!(status, 200);
    let (ok, lint) = promtool_check(&exposition);
    assert!(ok, "promtool check metrics: {lint}\n{exposition}");
    let expected = format!(
        "metadataproxy_http_request_total{{api_version=\"latest\",handler_name=\"{CREDS}\",\
         role_name=\"prom-role\",response_code=\"200\",error_description=\"\",\
         service=\"go-metadataproxy\"}} 3"
    );
    assert!(exposition.contains(&expected), "{exposition}");
    assert!(
        exposition.contains("error_description=\"role_names_do_not_match\""),
        "{exposition}"
    );
    // Unbounded and copied labels stay off Prometheus (no PROMETHEUS_COPY_LABELS).
    for absent in ["request_path", "remote_addr", "container_com", "payments"] {
        assert!(!exposition.contains(absent), "{absent} in {exposition}");
    }

    let prom = Prometheus::start("tm-prom", std::slice::from_ref(&admin));
    let series = eventually(Duration::from_secs(30), || {
        let r = prom.query(&format!(
            "metadataproxy_http_request_total{{role_name=\"prom-role\",handler_name=\"{CREDS}\",response_code=\"200\"}}"
        ));
        (!r.is_empty()).then_some(r)
    })
    .unwrap_or_else(|| panic!("series scraped within 30 s: {}", prom.log()));
    assert_eq!(series[0]["value"][1], "3");
    assert_eq!(series[0]["metric"]["job"], "metadataproxy");
    let sts =
        prom.query("metadataproxy_sts_assume_role_total{role_name=\"prom-role\",result=\"ok\"}");
    assert!(!sts.is_empty(), "AssumeRole counted per role");
    let index = prom.query("metadataproxy_docker_index_containers");
    let containers: f64 = index[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("index gauge");
    assert!(containers >= 1.0);
    let latency = prom.query(&format!(
        "histogram_quantile(0.5, sum by (le) (metadataproxy_http_request_duration_seconds_bucket{{handler_name=\"{CREDS}\"}}))"
    ));
    assert!(!latency.is_empty(), "latency histogram queryable");
    let cache = prom.query("metadataproxy_credential_cache_total{result=\"hit\"}");
    assert!(!cache.is_empty(), "cache hits counted");

    let (status, body) = http_get(&admin, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(&admin, "/readyz");
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["checks"]["docker"]["ok"], true);
    assert_eq!(ready["checks"]["aws_credentials"]["ok"], true);
}

#[test]
fn the_proxy_port_serves_metrics_only_when_asked() {
    let env = metadataproxy_tests::test_env();
    let upstream = FakeUpstream::start();
    let plain = Agent::start(
        &upstream.url(),
        &env.moto_url,
        &[("ENABLE_PROMETHEUS", "true")],
    );
    let (status, body) = http_get(&format!("127.0.0.1:{}", plain.port), "/metrics");
    assert!(!body.contains("metadataproxy_"), "{body}");
    // Not a metadata path (no version, no tree): outside the canonical form, never forwarded.
    assert_eq!(status, 404);
    assert!(
        upstream.emulator.recorded().is_empty(),
        "/metrics on the proxy port is not the exposition by default, and not forwarded"
    );

    let compat = Agent::start(
        &upstream.url(),
        &env.moto_url,
        &[
            ("ENABLE_PROMETHEUS", "true"),
            ("METRICS_ON_PROXY_PORT", "true"),
        ],
    );
    let (status, body) = http_get(&format!("127.0.0.1:{}", compat.port), "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("metadataproxy_build_info{"),
        "exposition on the proxy port: {body}"
    );
    let (status, body) = http_get(&compat.admin_addr(), "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("handler_name=\"metrics\""), "{body}");
}

fn sum(lines: &[StatsdLine], f: impl Fn(&StatsdLine) -> bool) -> f64 {
    lines.iter().filter(|l| f(l)).map(|l| l.value).sum()
}

#[test]
fn statsd_statsite_dogstatsd_and_new_relic_receive_the_documented_payloads() {
    let statsd = UdpSink::start();
    let statsite = UdpSink::start();
    let dogstatsd = UdpSink::start();
    let newrelic = HttpStub::start(|_| (202, "application/json", "{}".into()));
    let endpoint = format!("{}/metric/v1", newrelic.url());
    let (statsd_addr, statsite_addr, dog_addr) = (
        statsd.addr.to_string(),
        statsite.addr.to_string(),
        dogstatsd.addr.to_string(),
    );
    let s = Classic::start(
        "tm-sinks",
        52,
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("STATSD_ADDR", &statsd_addr),
            ("STATSITE_ADDR", &statsite_addr),
            ("DATADOG_ADDR", &dog_addr),
            ("METRICS_FLUSH_INTERVAL", "200ms"),
            ("NEWRELIC_APP_NAME", "mp-test-app"),
            ("NEWRELIC_LICENSE", "nr-license-0123456789"),
            ("NEWRELIC_ENDPOINT", &endpoint),
            ("NEWRELIC_FLUSH_INTERVAL", "1s"),
            ("COPY_DOCKER_LABELS", "com.example.team"),
            ("COPY_DOCKER_ENV", "APP_NAME"),
        ],
    );
    let c = metadataproxy_tests::Container::start_privileged(
        &s.env,
        "tm-sinks",
        Some(&s.net.name),
        &[("IAM_ROLE", "sink-role"), ("APP_NAME", "Checkout")],
        &["--label", "com.example.team=payments"],
    );
    for _ in 0..2 {
        let r = c.wget(&format!("{MD}/iam/security-credentials/sink-role"));
        assert_eq!(r.status, 200, "{}", s.agent.raw_logs());
    }
    assert_eq!(c.wget(&format!("{MD}/instance-id")).status, 200);

    // statsd and statsite: label values folded into the name, in the documented order.
    let folded = format!(
        "metadataproxy.http_request.latest.{CREDS}.sink-role.200.none.go-metadataproxy.payments.Checkout"
    );
    for (sink, which) in [(&statsd, "statsd"), (&statsite, "statsite")] {
        let lines = eventually(Duration::from_secs(10), || {
            let lines: Vec<StatsdLine> = sink
                .lines()
                .iter()
                .filter_map(|l| parse_statsd(l))
                .collect();
            (sum(&lines, |l| l.name == folded && l.kind == "c") >= 2.0).then_some(lines)
        })
        .unwrap_or_else(|| panic!("{which}: {folded} counted twice: {:?}", sink.lines()));
        assert_eq!(sum(&lines, |l| l.name == folded), 2.0, "{which}");
        assert!(
            lines.iter().any(|l| l.name
                == format!("metadataproxy.http_request_duration_seconds.{CREDS}")
                && l.kind == "ms"),
            "{which}: latency timer: {:?}",
            sink.lines()
        );
        assert!(
            lines
                .iter()
                .any(|l| l.name == "metadataproxy.docker_index_containers" && l.kind == "g"),
            "{which}: index gauge"
        );
        assert!(
            lines.iter().all(|l| l.tags.is_empty()),
            "{which}: no tags on plain statsd"
        );
        assert!(
            lines.iter().all(|l| l.name.starts_with("metadataproxy.")),
            "{which}: the DogStatsD exporter's own telemetry stays on DogStatsD"
        );
    }

    // DogStatsD (metrics-exporter-dogstatsd): the name as is, labels as tags, copied labels
    // included, latency as a distribution in seconds, the exporter's own telemetry.
    let request_tags: HashMap<String, String> = [
        ("api_version", "latest"),
        ("handler_name", CREDS),
        ("role_name", "sink-role"),
        ("response_code", "200"),
        ("service", "go-metadataproxy"),
        ("container_com.example.team", "payments"),
        ("container_app_name", "Checkout"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let requests = |lines: &[StatsdLine]| {
        sum(lines, |l| {
            l.name == "metadataproxy.http_request" && l.kind == "c" && l.tags == request_tags
        })
    };
    let lines = eventually(Duration::from_secs(15), || {
        let lines: Vec<StatsdLine> = dogstatsd
            .lines()
            .iter()
            .filter_map(|l| parse_statsd(l))
            .collect();
        let has = |name: &str| lines.iter().any(|l| l.name == name);
        let samples: usize = lines
            .iter()
            .filter(|l| {
                l.name == "metadataproxy.http_request_duration_seconds"
                    && l.tags.get("handler_name").map(String::as_str) == Some(CREDS)
            })
            .map(|l| l.values.len())
            .sum();
        (requests(&lines) >= 2.0
            && samples >= 2
            // The exporter spreads a flush's payloads over the interval: wait for every
            // gauge asserted on below, not the first.
            && has("metadataproxy.aws_response_time")
            && has("metadataproxy.aws_request_time")
            && has("metadataproxy.aws_connection_time")
            && has("datadog.dogstatsd.client.packets_sent"))
        .then_some(lines)
    })
    .unwrap_or_else(|| panic!("dogstatsd lines: {:?}", dogstatsd.lines()));
    assert!(
        dogstatsd.lines().iter().all(|l| parse_statsd(l).is_some()),
        "every DogStatsD line parses: {:?}",
        dogstatsd.lines()
    );
    assert_eq!(
        sum(&lines, |l| l.name == "metadataproxy.http_request"
            && l.kind == "c"
            && l.tags == request_tags),
        2.0,
        "{:?}",
        dogstatsd.lines()
    );
    assert_eq!(
        sum(&lines, |l| l.name == "metadataproxy.sts_assume_role"
            && l.tags.get("role_name").map(String::as_str)
                == Some("sink-role")
            && l.tags.get("result").map(String::as_str) == Some("ok")),
        1.0,
        "one AssumeRole (prefetch) for two requests"
    );
    for gauge in [
        "metadataproxy.aws_response_time",
        "metadataproxy.aws_request_time",
        "metadataproxy.aws_connection_time",
    ] {
        let g = lines
            .iter()
            .find(|l| l.name == gauge)
            .unwrap_or_else(|| panic!("{gauge} sent"));
        assert_eq!(g.kind, "g");
        assert_eq!(
            g.tags.get("handler_name").map(String::as_str),
            Some("passthrough")
        );
        assert_eq!(
            g.tags.get("container_app_name").map(String::as_str),
            Some("Checkout"),
            "a passthrough caller known to the index carries its labels"
        );
    }
    let response_ns = lines
        .iter()
        .find(|l| l.name == "metadataproxy.aws_response_time")
        .expect("gauge")
        .value;
    assert!(response_ns > 0.0, "a round trip takes some nanoseconds");
    // Histograms are distributions (`|d`), in seconds as recorded, with their sample rate.
    let latency: Vec<&StatsdLine> = lines
        .iter()
        .filter(|l| {
            l.name == "metadataproxy.http_request_duration_seconds"
                && l.tags.get("handler_name").map(String::as_str) == Some(CREDS)
        })
        .collect();
    assert!(!latency.is_empty(), "{:?}", dogstatsd.lines());
    for l in &latency {
        assert_eq!(l.kind, "d");
        assert_eq!(l.rate, Some(1.0), "two samples: none dropped");
        assert!(
            l.values.iter().all(|v| *v > 0.0 && *v < 10.0),
            "seconds, not milliseconds: {l:?}"
        );
    }
    assert_eq!(
        latency.iter().map(|l| l.values.len()).sum::<usize>(),
        2,
        "one sample per request"
    );
    let sent = lines
        .iter()
        .find(|l| l.name == "datadog.dogstatsd.client.packets_sent")
        .expect("exporter telemetry");
    assert_eq!(
        sent.tags.get("client_transport").map(String::as_str),
        Some("udp")
    );

    // New Relic: the Metric API format. The two requests may fall in different flushes: wait
    // until both are counted.
    let counted = |posts: &[metadataproxy_tests::sinks::Recorded]| -> f64 {
        let mut n = 0.0;
        for p in posts {
            let Ok(body) = serde_json::from_str::<serde_json::Value>(&p.body) else {
                continue;
            };
            for block in body.as_array().into_iter().flatten() {
                for m in block["metrics"].as_array().into_iter().flatten() {
                    if m["name"] == "metadataproxy.http_request"
                        && m["attributes"]["handler_name"] == CREDS
                    {
                        n += m["value"].as_f64().unwrap_or(0.0);
                    }
                }
            }
        }
        n
    };
    let posts = eventually(Duration::from_secs(15), || {
        let posts = newrelic.requests();
        (counted(&posts) >= 2.0).then_some(posts)
    })
    .unwrap_or_else(|| panic!("New Relic counted both requests: {:?}", newrelic.requests()));
    assert_eq!(counted(&posts), 2.0);
    for p in &posts {
        assert_eq!(p.method, "POST");
        assert_eq!(p.path, "/metric/v1");
        assert_eq!(
            p.headers.get("api-key").map(String::as_str),
            Some("nr-license-0123456789")
        );
        assert_eq!(
            p.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        let body: serde_json::Value = serde_json::from_str(&p.body).expect("JSON payload");
        let blocks = body.as_array().expect("an array of blocks");
        for block in blocks {
            let common = &block["common"];
            assert!(common["timestamp"].as_u64().expect("timestamp ms") > 1_600_000_000_000);
            assert_eq!(common["interval.ms"], 1000);
            assert_eq!(common["attributes"]["app.name"], "mp-test-app");
            for m in block["metrics"].as_array().expect("metrics") {
                let name = m["name"].as_str().expect("name");
                assert!(name.starts_with("metadataproxy."), "{name}");
                match m["type"].as_str().expect("type") {
                    "count" => assert!(m["value"].as_f64().is_some()),
                    "gauge" => assert!(m["value"].as_f64().is_some()),
                    "summary" => {
                        for k in ["count", "sum", "min", "max"] {
                            assert!(m["value"][k].as_f64().is_some(), "{m}");
                        }
                    }
                    other => panic!("type {other}"),
                }
                assert!(m["attributes"].is_object());
                if name == "metadataproxy.http_request" && m["attributes"]["handler_name"] == CREDS
                {
                    assert_eq!(m["attributes"]["role_name"], "sink-role");
                    assert_eq!(m["attributes"]["container_com.example.team"], "payments");
                    assert_eq!(m["attributes"]["container_app_name"], "Checkout");
                }
            }
        }
    }

    // Log fields carry the copied labels; the license never appears.
    let logs = s.agent.logs();
    assert!(logs.iter().any(|l| l["message"] == "request"
        && l["container_labels"]
            == "container_com.example.team=payments,container_app_name=Checkout"));
    assert!(!s.agent.raw_logs().contains("nr-license-0123456789"));
}

#[test]
fn dogstatsd_reaches_the_agents_unix_socket() {
    let env = metadataproxy_tests::test_env();
    let upstream = FakeUpstream::start();
    let socket = UnixDatagramSink::start("tm-dsd-unix");
    let agent = Agent::start(
        &upstream.url(),
        &env.moto_url,
        &[
            ("DATADOG_ADDR", &socket.url()),
            ("METRICS_FLUSH_INTERVAL", "200ms"),
        ],
    );
    let lines = eventually(Duration::from_secs(15), || {
        let lines: Vec<StatsdLine> = socket
            .lines()
            .iter()
            .filter_map(|l| parse_statsd(l))
            .collect();
        let has = |name: &str| lines.iter().any(|l| l.name == name);
        (has("metadataproxy.build_info") && has("datadog.dogstatsd.client.packets_sent"))
            .then_some(lines)
    })
    .unwrap_or_else(|| {
        panic!(
            "lines on {}: {:?}\n{}",
            socket.url(),
            socket.lines(),
            agent.raw_logs()
        )
    });
    let info = lines
        .iter()
        .find(|l| l.name == "metadataproxy.build_info")
        .expect("build info");
    assert_eq!((info.kind.as_str(), info.value), ("g", 1.0));
    assert_eq!(
        info.tags.get("service").map(String::as_str),
        Some("go-metadataproxy")
    );
    assert!(info.tags.contains_key("version"), "{info:?}");
    let sent = lines
        .iter()
        .find(|l| l.name == "datadog.dogstatsd.client.packets_sent")
        .expect("exporter telemetry");
    assert_eq!(
        sent.tags.get("client_transport").map(String::as_str),
        Some("uds"),
        "a datagram socket"
    );
}
