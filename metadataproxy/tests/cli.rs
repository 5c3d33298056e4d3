//! The binary: invalid configuration exits 64 naming the variable; `--help` documents every
//! variable, and docs/configuration.md every flag of `--help`; a valid configuration serves and
//! drains on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use metadataproxy::testing::{clean_command, TEST_SDK};

const BIN: &str = env!("CARGO_BIN_EXE_metadataproxy");

/// The agent with a clean environment: only `vars`, plus settings that keep the AWS SDK
/// from looking anywhere but here.
fn agent(vars: &[(&str, &str)]) -> Command {
    let settings = [
        ("METADATA_URL", "builtin"),
        ("ADMIN_ADDR", "127.0.0.1:0"),
        ("CONTAINER_CREDENTIALS_PORT", "0"),
        // Nothing left behind in the state directory of whoever runs the tests.
        ("TOKEN_KEY_FILE", "none"),
    ];
    clean_command(&[BIN], &[TEST_SDK, &settings, vars].concat())
}

#[test]
fn each_invalid_value_exits_64_naming_variable_and_value() {
    let cases: &[(&str, &str)] = &[
        ("HOST", "not-an-ip"),
        ("PORT", "70000"),
        ("CONTAINER_CREDENTIALS_PORT", "8o02"),
        ("CONTAINER_AUTHORIZATION", "always"),
        ("CONTAINER_IMDS", "no"),
        ("METADATA_URL", "ftp://169.254.169.254"),
        ("METADATA_CONNECT_TIMEOUT", "fast"),
        ("METADATA_TIMEOUT", "0"),
        ("INTERCEPT", "sometimes"),
        ("DEFAULT_ROLE", "not a role"),
        ("DEFAULT_ACCOUNT_ID", "1234"),
        ("LOG_LEVEL", "verbose"),
        ("LOG_FORMAT", "xml"),
        ("DOCKER_URL", "docker.sock"),
        ("DOCKER_HOST", "ssh://host"),
        ("CONTAINER_LOOKUP_TIMEOUT", "5"),
        ("ROLE_CACHE_OFFSET", "1h"),
        ("ROLE_CACHE_OFFSET", "-5m"),
        ("ROLE_SESSION_NAME", "has space"),
        ("ROLE_SESSION_DURATION", "13h"),
        ("AWS_REGION", "moon-base"),
        ("COPY_DOCKER_LABELS", ",x"),
        ("COPY_DOCKER_ENV", "a, ,b"),
        ("STATSD_ADDR", "localhost"),
        ("STATSITE_ADDR", ":8125"),
        ("DATADOG_ADDR", "host:port"),
        ("ENABLE_PROMETHEUS", "perhaps"),
        ("SHUTDOWN_GRACE", "later"),
        ("BUILTIN_LOCAL_IPV4", "10.0.0"),
        ("BUILTIN_AVAILABILITY_ZONE", "Mars"),
        ("BUILTIN_ACCOUNT_ID", "abc"),
        ("DOCKER_RECONCILE_INTERVAL", "0"),
        ("CREDENTIAL_PREFETCH", "sometimes"),
        ("STS_RATE_LIMIT", "-1"),
        ("ROLE_SESSION_TAGS", "yes please"),
        ("ROLE_SESSION_NAME", "mp-{unknown}"),
        ("LABEL_SEPARATOR", "//"),
        ("METRICS_FLUSH_INTERVAL", "0"),
        ("PROMETHEUS_COPY_LABELS", "maybe"),
        ("METRICS_UNBOUNDED_LABELS", "2"),
        ("ADMIN_ADDR", "localhost:8001"),
        ("METRICS_ON_PROXY_PORT", "on-ish"),
        ("IMDSV2", "sometimes"),
        ("PASSTHROUGH_ALLOW", "meta-data//x"),
        ("PASSTHROUGH_DENY", "a/**b"),
        ("ALLOWED_ROLES", "my-role"),
        ("ROLE_POLICY_FILE", "/nonexistent/roles.json"),
        ("AUDIT_LOG_FILE", "relative/audit.log"),
        ("REQUEST_RATE_LIMIT", "-3"),
        ("REQUEST_RATE_BURST", "lots"),
        ("MAX_HEADER_BYTES", "100"),
        ("HEADER_READ_TIMEOUT", "0"),
        ("BODY_READ_TIMEOUT", "forever"),
        ("MAX_CONNECTIONS", "0"),
        ("MAX_CONNECTIONS_PER_IP", "many"),
        ("CHECK_HOST_HEADER", "strict"),
        ("METRICS_FLUSH_INTERVAL", "1ns"),
        ("LABEL_SEPARATOR", "."),
        ("STS", "moto"),
        ("ACKNOWLEDGE_FAKE_CREDENTIALS", "sure"),
    ];
    for (var, value) in cases {
        let out = agent(&[(var, value)]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
        assert!(stderr.contains(value), "{var}={value}: {stderr}");
    }
}

#[test]
fn each_invalid_ebpf_value_exits_64_naming_variable_and_value() {
    let cases: &[(&str, &str)] = &[
        ("EBPF_CGROUP_PATH", "relative/path"),
        ("EBPF_PIN_PATH", "bpf"),
        ("EBPF_REDIRECT_ADDR", "docker0"),
        ("EBPF_CONTAINER_CGROUPS", "docker,,x"),
        ("EBPF_CONTAINER_CGROUPS", "../escape"),
        ("EBPF_ON_SHUTDOWN", "linger"),
    ];
    for (var, value) in cases {
        let out = agent(&[("INTERCEPT", "ebpf"), (var, value)])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
        assert!(stderr.contains(value), "{var}={value}: {stderr}");
    }
}

#[test]
fn new_relic_needs_both_settings_and_never_echoes_the_license() {
    let out = agent(&[("NEWRELIC_LICENSE", "license-secret-value")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr.contains("NEWRELIC_APP_NAME"), "{stderr}");
    assert!(!stderr.contains("license-secret-value"));
}

#[test]
fn new_relic_endpoint_and_interval_are_checked_without_echoing_the_license() {
    for (var, value) in [
        ("NEWRELIC_ENDPOINT", "ftp://metric-api.example/metric/v1"),
        ("NEWRELIC_ENDPOINT", "not a url"),
        ("NEWRELIC_FLUSH_INTERVAL", "soon"),
    ] {
        let out = agent(&[
            ("NEWRELIC_APP_NAME", "app"),
            ("NEWRELIC_LICENSE", "license-secret-value"),
            (var, value),
        ])
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{stderr}");
        assert!(!stderr.contains("license-secret-value"), "{stderr}");
    }
}

#[test]
fn an_admin_address_in_use_stops_start_up_naming_the_variable() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = agent(&[
        ("ADMIN_ADDR", addr.as_str()),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("DOCKER_URL", "unix:///nonexistent.sock"),
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("ADMIN_ADDR"), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}

#[test]
fn settings_that_would_do_nothing_are_refused() {
    for (vars, named) in [
        (
            vec![("METRICS_ON_PROXY_PORT", "true")],
            "METRICS_ON_PROXY_PORT",
        ),
        (
            vec![("PROMETHEUS_COPY_LABELS", "true")],
            "PROMETHEUS_COPY_LABELS",
        ),
        (
            vec![("METRICS_UNBOUNDED_LABELS", "true")],
            "METRICS_UNBOUNDED_LABELS",
        ),
        (
            vec![("REQUEST_RATE_LIMIT", "0"), ("REQUEST_RATE_BURST", "5")],
            "REQUEST_RATE_BURST",
        ),
        (
            vec![("COPY_DOCKER_LABELS", "team"), ("COPY_DOCKER_ENV", "TEAM")],
            "COPY_DOCKER_ENV",
        ),
        (
            vec![("COPY_DOCKER_LABELS", "a.b,a_b")],
            "COPY_DOCKER_LABELS",
        ),
        (
            vec![("ACKNOWLEDGE_FAKE_CREDENTIALS", "true")],
            "ACKNOWLEDGE_FAKE_CREDENTIALS",
        ),
    ] {
        let out = agent(&vars).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{vars:?}: {stderr}");
        assert!(stderr.contains(named), "{vars:?}: {stderr}");
    }
}

#[test]
fn unknown_flag_exits_64() {
    let out = agent(&[]).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "HOST",
        "PORT",
        "METADATA_URL",
        "INTERCEPT",
        "DEFAULT_ROLE",
        "DEFAULT_ACCOUNT_ID",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "DOCKER_URL",
        "ROLE_CACHE_OFFSET",
        "ROLE_SESSION_NAME",
        "ROLE_SESSION_DURATION",
        "AWS_REGION",
        "COPY_DOCKER_LABELS",
        "COPY_DOCKER_ENV",
        "STATSD_ADDR",
        "STATSITE_ADDR",
        "DATADOG_ADDR",
        "ENABLE_PROMETHEUS",
        "NEWRELIC_APP_NAME",
        "NEWRELIC_LICENSE",
        "NEWRELIC_ENDPOINT",
        "NEWRELIC_FLUSH_INTERVAL",
        "ADMIN_ADDR",
        "METRICS_ON_PROXY_PORT",
        "METRICS_FLUSH_INTERVAL",
        "LABEL_SEPARATOR",
        "PROMETHEUS_COPY_LABELS",
        "METRICS_UNBOUNDED_LABELS",
        "IMDSV2",
        "PASSTHROUGH_ALLOW",
        "PASSTHROUGH_DENY",
        "ALLOWED_ROLES",
        "ROLE_POLICY_FILE",
        "AUDIT_LOG_FILE",
        "REQUEST_RATE_LIMIT",
        "REQUEST_RATE_BURST",
        "MAX_HEADER_BYTES",
        "HEADER_READ_TIMEOUT",
        "BODY_READ_TIMEOUT",
        "MAX_CONNECTIONS",
        "MAX_CONNECTIONS_PER_IP",
        "CHECK_HOST_HEADER",
        "STS",
        "ACKNOWLEDGE_FAKE_CREDENTIALS",
    ] {
        assert!(
            help.contains(&format!("[env: {var}")),
            "{var} missing from --help"
        );
    }
    assert!(help.contains("[default: 15m]"));
    assert!(help.contains("[default: 127.0.0.1:8001]"));
    assert!(help.contains("[default: http://169.254.169.254]"));
}

#[test]
fn builtin_sts_beside_a_real_metadata_service_needs_the_acknowledgement() {
    // The metadata service is never contacted: start-up stops at the configuration.
    let out = agent(&[("METADATA_URL", "http://127.0.0.1:9"), ("STS", "builtin")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for named in ["STS", "METADATA_URL", "ACKNOWLEDGE_FAKE_CREDENTIALS"] {
        assert!(stderr.contains(named), "{named}: {stderr}");
    }
}

/// Starts the agent with `vars` (JSON logs, loopback, no Docker) and returns its log lines up
/// to and including "metadataproxy ready", then stops it.
fn lines_until_ready(vars: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let mut all = vec![
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("LOG_FORMAT", "json"),
        ("DOCKER_URL", "unix:///nonexistent/docker.sock"),
    ];
    all.extend_from_slice(vars);
    let mut child = agent(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let ready = v["message"] == "metadataproxy ready";
        seen.push(v);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen.last().map(|v| v["message"].clone()),
        Some("metadataproxy ready".into()),
        "{seen:?}"
    );
    seen
}

#[test]
fn builtin_sts_warns_at_start_that_the_credentials_are_fake() {
    let warnings = |lines: &[serde_json::Value]| -> Vec<String> {
        lines
            .iter()
            .filter(|v| v["level"] == "WARN")
            .map(|v| v["message"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let lines = lines_until_ready(&[("STS", "builtin")]);
    let w = warnings(&lines);
    assert!(
        w.iter().any(|m| m.contains("FAKE credentials")),
        "no warning: {w:?}"
    );
    // The acknowledged form says where it runs.
    let lines = lines_until_ready(&[
        ("METADATA_URL", "http://127.0.0.1:9"),
        ("STS", "builtin"),
        ("ACKNOWLEDGE_FAKE_CREDENTIALS", "true"),
    ]);
    let w = warnings(&lines);
    assert!(w.iter().any(|m| m.contains("FAKE credentials")), "{w:?}");
    assert!(
        w.iter()
            .any(|m| m.contains("ACKNOWLEDGE_FAKE_CREDENTIALS=true")),
        "{w:?}"
    );
    // And the agent with STS=aws says nothing of the kind.
    let lines = lines_until_ready(&[]);
    let w = warnings(&lines);
    assert!(!w.iter().any(|m| m.contains("FAKE")), "{w:?}");
}

#[test]
fn serves_with_builtin_upstream_and_drains_on_sigterm() {
    let mut child = agent(&[
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("LOG_FORMAT", "json"),
        ("DOCKER_URL", "unix:///nonexistent/docker.sock"),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("agent printed a ready line").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "metadataproxy ready" {
            break v["listen"].as_str().unwrap().to_string();
        }
    };
    let body = http_get(&addr, "/latest/meta-data/instance-id");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with("i-0123456789abcdef0"), "{body}");
    // No Docker daemon: a credential request is a clean 404, not a crash.
    let body = http_get(&addr, "/latest/meta-data/iam/security-credentials/");
    assert!(body.starts_with("HTTP/1.1 404"), "{body}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exited = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let exited = exited.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("agent did not exit after SIGTERM")
    });
    assert!(exited.success(), "{exited:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("shutdown requested")),
        "{rest:?}"
    );
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// One option of a `--help` text: its long flag, and the variable and default clap prints
/// beside it (`[env: NAME=]`, `[default: VALUE]`).
#[derive(Debug)]
struct HelpOption {
    /// `metadataproxy` and the subcommand words before the flag, for messages.
    command: String,
    flag: String,
    env: Option<String>,
    default: Option<String>,
}

/// The text between `open` and the next `]` in `text`, if `open` is there.
fn bracketed<'a>(text: &'a str, open: &str) -> Option<&'a str> {
    let rest = &text[text.find(open)? + open.len()..];
    Some(&rest[..rest.find(']')?])
}

/// Every option the binary's `--help` prints, for `words` (the subcommand) and each of its
/// subcommands in turn.
fn help_options(words: &[&str]) -> Vec<HelpOption> {
    // A clean environment: clap prints the value of a variable that is set (`[env: HOST=x]`).
    let out = Command::new(BIN)
        .env_clear()
        .args(words)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{words:?} --help: {out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let command = std::iter::once("metadataproxy")
        .chain(words.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    // Each option's block runs from its flag line to the next option or section.
    let mut blocks: Vec<String> = Vec::new();
    let mut subcommands = Vec::new();
    let mut section = "";
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let item = line.trim_start();
        match section {
            "Options:" if item.starts_with('-') && indent <= 6 => blocks.push(item.to_string()),
            "Options:" if !blocks.is_empty() => {
                let last = blocks.last_mut().unwrap();
                last.push(' ');
                last.push_str(item);
            }
            "Commands:" if indent == 2 => {
                let name = item.split_whitespace().next().unwrap_or_default();
                if name != "help" {
                    subcommands.push(name.to_string());
                }
            }
            _ => {}
        }
    }
    let mut options: Vec<HelpOption> = blocks
        .iter()
        .map(|block| {
            let flag = block
                .split([' ', ',', '='])
                .find(|w| w.starts_with("--"))
                .unwrap_or_else(|| {
                    panic!("{command} --help: an option without a long flag: {block}")
                });
            HelpOption {
                command: command.clone(),
                flag: flag.to_string(),
                env: bracketed(block, "[env: ")
                    .and_then(|e| e.split('=').next())
                    .map(str::to_string),
                default: bracketed(block, "[default: ").map(str::to_string),
            }
        })
        .collect();
    for sub in &subcommands {
        let mut deeper: Vec<&str> = words.to_vec();
        deeper.push(sub);
        options.extend(help_options(&deeper));
    }
    options
}

#[test]
fn every_flag_of_help_is_in_the_configuration_doc() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let options = help_options(&[]);
    // The parse itself: a help text it could not read would make this test pass on nothing.
    let host = options.iter().find(|o| o.flag == "--host").expect("--host");
    assert_eq!(
        (host.env.as_deref(), host.default.as_deref()),
        (Some("HOST"), Some("0.0.0.0"))
    );
    assert!(
        options.iter().any(|o| o.flag == "--pin-path"),
        "{options:?}"
    );
    assert!(options.iter().filter(|o| o.env.is_some()).count() > 50);

    // A flag with a variable has its table row: `| `NAME` | `--flag` | default | meaning |`,
    // its default (when `--help` prints one) in the third cell. Any other flag is named
    // somewhere, in backticks.
    let rows: Vec<Vec<&str>> = doc
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    let mut missing = Vec::new();
    for o in &options {
        let flag = format!("`{}`", o.flag);
        let Some(env) = &o.env else {
            if !doc.contains(&flag) {
                missing.push(format!("{}: {flag} is not in the doc", o.command));
            }
            continue;
        };
        let Some(row) = rows.iter().find(|r| r.get(2) == Some(&flag.as_str())) else {
            missing.push(format!(
                "{}: no row `| `{env}` | {flag} | ... |` in the doc",
                o.command
            ));
            continue;
        };
        if row[1] != format!("`{env}`") {
            missing.push(format!(
                "{}: {flag}'s row names {} instead of its variable `{env}`",
                o.command, row[1]
            ));
        }
        if let Some(default) = &o.default {
            if !row
                .get(3)
                .is_some_and(|c| c.contains(&format!("`{default}`")))
            {
                missing.push(format!(
                    "{}: {flag}'s row does not give its default `{default}`: {}",
                    o.command,
                    row.join(" | ")
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not match --help:\n{}",
        missing.join("\n")
    );
}
