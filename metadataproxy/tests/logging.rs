//! Request log lines in each format: the documented fields are there, secrets are not.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{container, Harness, SECRET_MARK, TOKEN_MARK};
use metadataproxy::config::{LogConfig, LogFormat};

const EXTERNAL_ID: &str = "EXTERNALIDVALUE";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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
