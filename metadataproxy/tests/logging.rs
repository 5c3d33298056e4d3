//! Request log lines in each format: the documented fields are there, secrets are not.

mod common;

use common::{container, Harness};
use metadataproxy::config::{LogConfig, LogFormat};
use metadataproxy::testing::{SECRET_MARK, TOKEN_MARK};

const EXTERNAL_ID: &str = "EXTERNALIDVALUE";

use metadataproxy::testing::SharedBuf as Buf;

/// Runs a credential request, an info request, a refused request and a passthrough with
/// logs in `format`, and returns the output. Runs on the current-thread runtime, so the
/// thread-local subscriber sees the server's tasks too.
async fn logs_for(format: LogFormat) -> String {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = metadataproxy::telemetry::subscriber(
        LogConfig {
            level: tracing::Level::INFO,
            format,
        },
        move || writer.clone(),
    );
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = Harness::start(
        &[],
        Some(container(Some("my-role@123456789012"), Some(EXTERNAL_ID))),
    )
    .await;
    let creds = h
        .get("/latest/meta-data/iam/security-credentials/my-role")
        .await;
    assert_eq!(creds.status, 200);
    assert!(
        creds.text().contains(SECRET_MARK),
        "the fake's secret is served"
    );
    assert_eq!(h.get("/latest/meta-data/iam/info").await.status, 200);
    assert_eq!(
        h.get("/latest/meta-data/iam/security-credentials/other")
            .await
            .status,
        404
    );
    assert_eq!(h.get("/latest/meta-data/instance-id").await.status, 200);
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    out
}

fn assert_no_secrets(out: &str) {
    for secret in [SECRET_MARK, TOKEN_MARK, EXTERNAL_ID] {
        assert!(!out.contains(secret), "{secret} leaked into logs:\n{out}");
    }
}

fn request_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .filter(|v| v["message"] == "request" || v["short_message"] == "request")
        .collect()
}

#[tokio::test]
async fn json_lines_carry_the_request_fields() {
    let out = logs_for(LogFormat::Json).await;
    assert_no_secrets(&out);
    let lines = request_lines(&out);
    assert_eq!(lines.len(), 4, "{out}");
    let creds = &lines[0];
    assert_eq!(creds["level"], "INFO");
    assert_eq!(creds["handler"], "iam-security-crentials-for-role");
    assert_eq!(creds["response_code"], 200);
    assert_eq!(creds["remote_addr"], "127.0.0.1");
    assert_eq!(creds["container_id"], "0123456789abcdef0123456789abcdef");
    assert_eq!(creds["container_name"], "web");
    assert_eq!(creds["role_name"], "my-role");
    assert_eq!(creds["request_id"].as_str().unwrap().len(), 36);
    assert!(creds.get("error_description").is_none());
    assert_eq!(lines[1]["handler"], "iam-info-handler");
    let refused = &lines[2];
    assert_eq!(refused["response_code"], 404);
    assert_eq!(refused["error_description"], "role_names_do_not_match");
    assert_eq!(lines[3]["handler"], "passthrough");
    assert_eq!(lines[3]["path"], "/latest/meta-data/instance-id");
}

#[tokio::test]
async fn gelf_lines_are_gelf_1_1() {
    let out = logs_for(LogFormat::Gelf).await;
    assert_no_secrets(&out);
    let lines = request_lines(&out);
    assert_eq!(lines.len(), 4, "{out}");
    for line in &lines {
        assert_eq!(line["version"], "1.1");
        assert!(line["host"].as_str().is_some_and(|h| !h.is_empty()));
        assert!(line["timestamp"].as_f64().unwrap() > 1.7e9);
        assert_eq!(line["level"], 6);
        for (k, _) in line.as_object().unwrap() {
            let standard = ["version", "host", "short_message", "timestamp", "level"];
            assert!(standard.contains(&k.as_str()) || k.starts_with('_'), "{k}");
            assert_ne!(k, "_id");
        }
    }
    assert_eq!(lines[0]["_handler"], "iam-security-crentials-for-role");
    assert_eq!(lines[0]["_container_name"], "web");
    assert_eq!(lines[0]["_role_name"], "my-role");
    assert_eq!(lines[0]["_response_code"], 200);
    assert_eq!(lines[2]["_error_description"], "role_names_do_not_match");
}

#[tokio::test]
async fn text_lines_carry_the_request_fields() {
    let out = logs_for(LogFormat::Text).await;
    assert_no_secrets(&out);
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" request ")).collect();
    assert_eq!(lines.len(), 4, "{out}");
    for field in [
        "request_id=",
        "remote_addr=127.0.0.1",
        "container_id=\"0123456789abcdef0123456789abcdef\"",
        "container_name=\"web\"",
        "role_name=\"my-role\"",
        "response_code=200",
        "handler=\"iam-security-crentials-for-role\"",
    ] {
        assert!(
            lines[0].contains(field),
            "{field} missing from {}",
            lines[0]
        );
    }
    assert!(lines[2].contains("error_description=\"role_names_do_not_match\""));
}

/// JSON request lines written while `run` drives a fresh agent started with `flags`.
async fn json_lines_of<F, Fut>(flags: &[&str], run: F) -> Vec<serde_json::Value>
where
    F: FnOnce(Harness) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    json_lines_with(flags, None, run).await
}

/// Like [`json_lines_of`], with `container` behind every caller.
async fn json_lines_with<F, Fut>(
    flags: &[&str],
    container: Option<metadataproxy::identity::Container>,
    run: F,
) -> Vec<serde_json::Value>
where
    F: FnOnce(Harness) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = metadataproxy::telemetry::subscriber(
        LogConfig {
            level: tracing::Level::INFO,
            format: LogFormat::Json,
        },
        move || writer.clone(),
    );
    let _guard = tracing::subscriber::set_default(subscriber);
    run(Harness::start(flags, container).await).await;
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    request_lines(&out)
}

#[tokio::test]
async fn long_paths_are_cut_in_log_lines_with_their_length_recorded() {
    let long = format!("/latest/meta-data/{}", "a".repeat(10_000));
    let lines = json_lines_of(&[], |h| async move {
        assert_eq!(h.get(&long).await.status, 404);
        assert_eq!(h.get("/latest/meta-data/ami-id").await.status, 200);
    })
    .await;
    assert_eq!(lines.len(), 2);
    let cut = lines[0]["path"].as_str().unwrap();
    assert_eq!(cut.len(), 256);
    assert!(cut.starts_with("/latest/meta-data/aaa"));
    assert_eq!(lines[0]["path_bytes"], 10_018);
    assert!(lines[1].get("path_bytes").is_none());
    assert_eq!(lines[1]["path"], "/latest/meta-data/ami-id");
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_one_line_a_second() {
    let lines = json_lines_of(
        &["--request-rate-limit", "1", "--request-rate-burst", "2"],
        |h| async move {
            let mut refused = 0;
            for _ in 0..30 {
                if h.get("/latest/meta-data/ami-id").await.status == 429 {
                    refused += 1;
                }
            }
            assert!(refused >= 27, "{refused} refused");
        },
    )
    .await;
    let refusals: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["response_code"] == 429).collect();
    // 30 requests well within a few seconds: 2 or 3 served, and one refusal line for each
    // second they took.
    assert!(
        !refusals.is_empty() && refusals.len() <= 3,
        "{} refusal lines: {refusals:?}",
        refusals.len()
    );
    assert_eq!(refusals[0]["error_description"], "rate_limited");
    assert_eq!(refusals[0]["refusals_not_logged"], 0);
}

#[tokio::test]
async fn requests_the_http_parser_refuses_get_a_line_too() {
    let lines = json_lines_of(&["--max-header-bytes", "8192"], |h| async move {
        for (raw, status) in [
            ("GET / HTTP/9.9\r\nHost: a\r\n\r\n", 400),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n folded\r\n\r\n",
                400,
            ),
            ("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ] {
            let r = common::raw_request(h.addr, raw).await;
            assert_eq!(r.status, status, "{raw:?}");
        }
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "b".repeat(20_000)
        );
        let r = common::raw_request(h.addr, &big).await;
        assert_eq!(r.status, 431);
        // Give the connection tasks a moment to log (they end after the answer is sent).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    })
    .await;
    let parser: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["handler"] == "http-parser")
        .collect();
    let codes: Vec<i64> = parser
        .iter()
        .map(|l| l["response_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [400, 400, 400, 431], "{parser:?}");
    for l in parser {
        assert_eq!(l["error_description"], "http_parse_error");
        assert_eq!(l["request_id"].as_str().unwrap().len(), 36);
        assert_eq!(l["remote_addr"], "127.0.0.1");
    }
}

#[tokio::test]
async fn a_request_whose_client_goes_away_still_gets_its_line() {
    use tokio::io::AsyncWriteExt;
    // An upstream that accepts and never answers: the agent waits on it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let lines = json_lines_of(
        &["--metadata-url", &url, "--metadata-timeout", "60s"],
        |h| async move {
            let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
            s.write_all(
                b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
            )
            .await
            .unwrap();
            // The request is in flight (its upstream never answers); the client gives up.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            drop(s);
            // The agent notices the closed connection and drops the request: wait for it.
            for _ in 0..100 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    let gone: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["error_description"] == "client_went_away")
        .collect();
    assert_eq!(gone.len(), 1, "{lines:?}");
    assert_eq!(gone[0]["response_code"], 499);
    assert_eq!(gone[0]["path"], "/latest/meta-data/instance-id");
    assert_eq!(gone[0]["handler"], "passthrough");
    assert_eq!(lines.len(), 1, "and no other line for it: {lines:?}");
}

/// What one kernel program event becomes in `format` with the agent at `level`: the event
/// as aya-log hands it over, a `log::Record` given to tracing-log's `LogTracer`.
fn kernel_event_in(format: LogFormat, level: tracing::Level) -> String {
    use log::Log;
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber =
        metadataproxy::telemetry::subscriber(LogConfig { level, format }, move || writer.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing_log::LogTracer::new().log(
        &log::Record::builder()
            .target("metadataproxy::kernel")
            .level(log::Level::Debug)
            .module_path_static(Some("metadataproxy_ebpf"))
            .file_static(Some("metadataproxy-ebpf/src/main.rs"))
            .line(Some(1))
            .args(format_args!(
                "redirect 169.254.169.254:80 to 172.17.0.1:8000 cgroup_id=42 pid=7"
            ))
            .build(),
    );
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    out
}

#[test]
fn kernel_events_are_logged_under_their_target_at_debug_only() {
    const MESSAGE: &str = "redirect 169.254.169.254:80 to 172.17.0.1:8000 cgroup_id=42 pid=7";
    for format in [LogFormat::Text, LogFormat::Json, LogFormat::Gelf] {
        assert_eq!(
            kernel_event_in(format, tracing::Level::INFO),
            "",
            "{format:?}"
        );
    }
    let text = kernel_event_in(LogFormat::Text, tracing::Level::DEBUG);
    assert!(
        text.contains(&format!("DEBUG metadataproxy::kernel: {MESSAGE}")),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&kernel_event_in(LogFormat::Json, tracing::Level::DEBUG)).unwrap();
    assert_eq!(
        (&json["target"], &json["level"], &json["message"]),
        (
            &serde_json::json!("metadataproxy::kernel"),
            &serde_json::json!("DEBUG"),
            &serde_json::json!(MESSAGE)
        ),
        "{json}"
    );
    let gelf: serde_json::Value =
        serde_json::from_str(&kernel_event_in(LogFormat::Gelf, tracing::Level::DEBUG)).unwrap();
    assert_eq!(
        (&gelf["_target"], &gelf["level"], &gelf["short_message"]),
        (
            &serde_json::json!("metadataproxy::kernel"),
            &serde_json::json!(7),
            &serde_json::json!(MESSAGE)
        ),
        "{gelf}"
    );
}

/// Runs a passthrough, a credential issuance, a refusal and a not-found path with
/// `REQUEST_LOG=setting`: the handlers of the lines written.
async fn handlers_logged(setting: &str) -> Vec<String> {
    let lines = json_lines_with(
        &["--request-log", setting],
        Some(container(Some("my-role@123456789012"), None)),
        |h| async move {
            assert_eq!(h.get("/latest/meta-data/instance-id").await.status, 200);
            let base = "/latest/meta-data/iam/security-credentials/";
            assert_eq!(h.get(base).await.status, 200);
            assert_eq!(h.get(&format!("{base}my-role")).await.status, 200);
            assert_eq!(h.get(&format!("{base}other")).await.status, 404);
            assert_eq!(h.get("/latest/meta-data/nothing-here").await.status, 404);
        },
    )
    .await;
    lines
        .iter()
        .map(|l| format!("{} {}", l["handler"].as_str().unwrap(), l["response_code"]))
        .collect()
}

#[tokio::test]
async fn request_log_chooses_which_requests_get_a_line() {
    assert_eq!(
        handlers_logged("all").await,
        [
            "passthrough 200",
            "iam-security-credentials-name 200",
            "iam-security-crentials-for-role 200",
            "iam-security-crentials-for-role 404",
            "passthrough 404",
        ]
    );
    assert_eq!(
        handlers_logged("errors").await,
        [
            "iam-security-crentials-for-role 200",
            "iam-security-crentials-for-role 404",
            "passthrough 404",
        ]
    );
    assert_eq!(handlers_logged("none").await, Vec::<String>::new());
}
