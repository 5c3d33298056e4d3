//! The container credentials endpoint (`169.254.170.2:80`) end to end, in eBPF and iptables
//! modes: real SDK clients (botocore's `ContainerProvider` and default chain, JavaScript v3's
//! `fromContainerMetadata` and default chain, Go v2's `endpointcreds` through
//! `LoadDefaultConfig`) run from a container's network namespace and cgroup, with the
//! container's `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (and, for one container,
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN`), and the metadata service disabled in their SDK: they
//! get their container's role through the redirect and prove it with STS `GetCallerIdentity`
//! against moto. Nothing reaches the recording catchers on `169.254.170.2` and
//! `169.254.169.254` (loopback).
//!
//! Also: a request without the container's token gets 401 through the redirect, and the token
//! is in no log line; `CONTAINER_IMDS=off` leaves containers the endpoint only (403 from the
//! metadata service); `CONTAINER_CREDENTIALS_PORT=off` intercepts nothing on `169.254.170.2`.
//!
//! The agent's netfilter table and eBPF attachments are host-wide, so these tests run one at a
//! time.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use metadataproxy_tests::sdk::{clean_client_env, clients_dir, go_client, provided};
use metadataproxy_tests::sinks::http_get;
use metadataproxy_tests::{
    agent_table_exists, assert_no_container_endpoint_escape, assert_no_escape, catcher,
    container_catcher, docker0_gateway, eventually, scratch_dir, serial, test_env, Agent,
    AgentTableCleanup, AwsCounter, Container, FakeUpstream, PinDir, TestEnv,
};

const ACCOUNT: &str = "123456789012";
const TOKEN: &str = "Bearer mp-test-0f1e2d3c4b5a69788796a5b4c3d2e1f0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Iptables,
    Ebpf,
}

/// One test's agent and what it talks to.
struct Setup {
    env: TestEnv,
    // Kept for the agent's life: its upstream and its STS.
    _upstream: FakeUpstream,
    _aws: AwsCounter,
    /// moto behind a counter on docker0's address: the clients' way to STS.
    sts: AwsCounter,
    agent: Agent,
    dir: std::path::PathBuf,
    // Dropped after the agent: the table or the pins go even when a test fails half-way.
    _pins: Option<PinDir>,
    _table: Option<AgentTableCleanup>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Setup {
    fn new(name: &str, mode: Mode, extra: &[(&str, &str)]) -> Setup {
        let serial = serial();
        let env = test_env();
        catcher().emulator.clear();
        container_catcher().emulator.clear();
        let upstream = FakeUpstream::start();
        let aws = AwsCounter::start(&env.moto_url);
        let sts = AwsCounter::start_on(&env.moto_url, &docker0_gateway());
        let mut vars = vec![("DEFAULT_ACCOUNT_ID", ACCOUNT)];
        let (pins, table) = match mode {
            Mode::Iptables => {
                assert!(
                    !agent_table_exists(),
                    "a table ip metadataproxy is already there (left by another run?)"
                );
                vars.push(("INTERCEPT", "iptables"));
                (None, Some(AgentTableCleanup))
            }
            Mode::Ebpf => (Some(PinDir::new(name)), None),
        };
        let pin_path = pins.as_ref().map(|p| p.as_str().to_string());
        if let Some(path) = &pin_path {
            vars.extend([("INTERCEPT", "ebpf"), ("EBPF_PIN_PATH", path.as_str())]);
        }
        vars.extend_from_slice(extra);
        let agent = Agent::start(&upstream.url(), &aws.url(), &vars);
        let ready = eventually(Duration::from_secs(10), || {
            (http_get(&agent.admin_addr(), "/readyz").0 == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "agent not ready: {}",
            http_get(&agent.admin_addr(), "/readyz").1
        );
        Setup {
            env,
            _upstream: upstream,
            _aws: aws,
            sts,
            agent,
            dir: scratch_dir(name),
            _pins: pins,
            _table: table,
            _serial: serial,
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug, Clone, Copy)]
enum Sdk {
    Botocore,
    JavaScriptV3,
    GoV2,
}

impl Sdk {
    /// (provider, source) per credential the client reports.
    fn providers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Sdk::Botocore => &[
                ("session default chain", "container-role"),
                ("ContainerProvider", "container-role"),
            ],
            Sdk::JavaScriptV3 => &[
                ("fromContainerMetadata", "fromContainerMetadata"),
                ("fromNodeProviderChain", "fromNodeProviderChain"),
            ],
            Sdk::GoV2 => &[("LoadDefaultConfig", "CredentialsEndpointProvider")],
        }
    }

    fn command(self, tmp: &Path) -> (String, Vec<String>, Vec<(&'static str, String)>) {
        let clients = clients_dir();
        let path = |p: std::path::PathBuf| p.to_str().expect("utf-8 path").to_string();
        match self {
            Sdk::Botocore => (
                provided("MP_TEST_SDK_PYTHON", "the moto venv's Python (botocore)"),
                vec![path(clients.join("botocore/container.py"))],
                vec![("PYTHONDONTWRITEBYTECODE", "1".into())],
            ),
            Sdk::JavaScriptV3 => (
                "/usr/bin/env".into(),
                vec!["node".into(), path(clients.join("js/container.cjs"))],
                vec![(
                    "NODE_PATH",
                    provided("MP_TEST_SDK_NODE_PATH", "the JavaScript SDK v3"),
                )],
            ),
            Sdk::GoV2 => (path(go_client("go-v2-container", tmp)), vec![], vec![]),
        }
    }
}

/// A container with `IAM_ROLE=role` and the container endpoint's environment `vars`.
fn container(s: &Setup, name: &str, role: &str, vars: &[(&str, &str)]) -> Container {
    let mut all = vec![("IAM_ROLE", role)];
    all.extend_from_slice(vars);
    Container::start(&s.env, name, None, &all)
}

/// Runs `sdk`'s container-endpoint client in `container` with `vars` (the container's own
/// endpoint variables, as its processes have them); fails with its stderr and the agent's log
/// unless every provider got `role` and proved it.
fn expect_role(s: &Setup, sdk: Sdk, container: &Container, vars: &[(&str, &str)], role: &str) {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (program, args, client_vars) = sdk.command(tmp);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = container.command_inside(&program, &args);
    // Nothing of the test's environment, and no metadata service: the endpoint or nothing.
    clean_client_env(&mut cmd, &s.dir, &s.sts.url());
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(client_vars)
        .envs(vars.iter().copied())
        .stdin(Stdio::null());
    let out = cmd.output().expect("run the SDK client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{sdk:?} in {}: exit {}: {stderr}\nagent log:\n{}",
        container.name,
        out.status,
        s.agent.raw_logs()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{sdk:?}: not a report ({e}): {stdout}"));
    let got = v["credentials"].as_array().expect("credentials");
    let want = sdk.providers();
    assert_eq!(got.len(), want.len(), "{sdk:?}: {line}");
    let arn = format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/go-metadataproxy");
    for (c, (provider, source)) in got.iter().zip(want) {
        assert_eq!(
            (c["provider"].as_str(), c["source"].as_str()),
            (Some(*provider), Some(*source)),
            "{sdk:?}: credentials from elsewhere than the container endpoint: {line}"
        );
        assert_eq!(
            c["arn"],
            arn.as_str(),
            "{sdk:?} {provider}: GetCallerIdentity"
        );
    }
}

/// The agent's request lines on the container endpoint that answered `status`.
fn answered(agent: &Agent, status: u64) -> usize {
    agent
        .logs()
        .iter()
        .filter(|l| {
            l["message"] == "request"
                && l["handler"] == "container-credentials"
                && l["response_code"] == status
        })
        .count()
}

/// Every client, in a container with a relative URI of its own and in one with a token too.
fn sdks_get_their_containers_role(mode: Mode) {
    let name = match mode {
        Mode::Iptables => "ce-sdk-iptables",
        Mode::Ebpf => "ce-sdk-ebpf",
    };
    let s = Setup::new(name, mode, &[]);
    let plain_vars = [(
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "/v2/credentials/3f1c2b9e-7d4a-4e8b-9c1d-0a2b3c4d5e6f",
    )];
    let token_vars = [
        ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/creds/mine"),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", TOKEN),
    ];
    let plain = container(&s, &format!("{name}-plain"), "ce-plain-role", &plain_vars);
    let tokened = container(&s, &format!("{name}-token"), "ce-token-role", &token_vars);
    for sdk in [Sdk::Botocore, Sdk::JavaScriptV3, Sdk::GoV2] {
        expect_role(&s, sdk, &plain, &plain_vars, "ce-plain-role");
        expect_role(&s, sdk, &tokened, &token_vars, "ce-token-role");
    }
    // Through the same redirect: without the token, with another container's path, or from
    // a container without a token asking for the other's path, nothing.
    let url = "http://169.254.170.2/creds/mine";
    let (status, _, body) = tokened.curl(&[url]);
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = tokened.curl(&["-H", "Authorization: Bearer wrong", url]);
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = plain.curl(&["-H", &format!("Authorization: {TOKEN}"), url]);
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = tokened.curl(&["-H", &format!("Authorization: {TOKEN}"), url]);
    assert_eq!(status, 200, "{body}");
    // Each SDK call and the curls, logged; the token in no line.
    let seen = eventually(Duration::from_secs(10), || {
        (answered(&s.agent, 401) >= 2 && answered(&s.agent, 200) >= 11).then_some(())
    });
    assert!(
        seen.is_some(),
        "request lines missing: {}",
        s.agent.raw_logs()
    );
    assert!(
        !s.agent.raw_logs().contains("0f1e2d3c4b5a6978"),
        "the authorization token is in the agent's log"
    );
    assert_no_container_endpoint_escape();
    assert_no_escape();
}

#[test]
fn sdks_get_their_containers_role_through_the_ebpf_redirect() {
    sdks_get_their_containers_role(Mode::Ebpf);
}

#[test]
fn sdks_get_their_containers_role_through_the_iptables_redirect() {
    sdks_get_their_containers_role(Mode::Iptables);
}

/// `CONTAINER_IMDS=off`: the metadata service gives containers nothing, the endpoint still
/// serves them.
fn containers_without_imds(mode: Mode) {
    let name = match mode {
        Mode::Iptables => "ce-no-imds-iptables",
        Mode::Ebpf => "ce-no-imds-ebpf",
    };
    let s = Setup::new(name, mode, &[("CONTAINER_IMDS", "off")]);
    let vars = [(
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "/v2/credentials/x",
    )];
    let c = container(&s, name, "ce-no-imds-role", &vars);
    for path in [
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials/ce-no-imds-role",
        "/latest/meta-data/instance-id",
        "/latest/user-data",
    ] {
        let (status, _, body) = c.curl(&[&format!("http://169.254.169.254{path}")]);
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, _, body) = c.curl(&[
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
        "http://169.254.169.254/latest/api/token",
    ]);
    assert_eq!(status, 403, "token: {body}");
    expect_role(&s, Sdk::Botocore, &c, &vars, "ce-no-imds-role");
    assert_no_container_endpoint_escape();
    assert_no_escape();
}

#[test]
fn container_imds_off_leaves_containers_the_endpoint_only_in_ebpf_mode() {
    containers_without_imds(Mode::Ebpf);
}

#[test]
fn container_imds_off_leaves_containers_the_endpoint_only_in_iptables_mode() {
    containers_without_imds(Mode::Iptables);
}

/// `CONTAINER_CREDENTIALS_PORT=off`: the agent does not listen for it, and a container's
/// connect to `169.254.170.2` is not intercepted (here it reaches the loopback catcher).
fn endpoint_off(mode: Mode) {
    let name = match mode {
        Mode::Iptables => "ce-off-iptables",
        Mode::Ebpf => "ce-off-ebpf",
    };
    let s = Setup::new(name, mode, &[("CONTAINER_CREDENTIALS_PORT", "off")]);
    assert_eq!(s.agent.container_port, None);
    let c = container(&s, name, "ce-off-role", &[]);
    let (status, _, body) = c.curl(&["http://169.254.170.2/v2/credentials/x"]);
    let recorded = container_catcher().emulator.recorded();
    assert_eq!(
        recorded.len(),
        1,
        "not exactly one request reached 169.254.170.2 itself (status {status}, {body})"
    );
    assert_eq!(recorded[0].path_and_query, "/v2/credentials/x");
    assert_eq!(answered(&s.agent, 200), 0);
    // The metadata service is still intercepted.
    let (status, _, body) =
        c.curl(&["http://169.254.169.254/latest/meta-data/iam/security-credentials/"]);
    assert_eq!((status, body.as_str()), (200, "ce-off-role"));
    assert_no_escape();
}

#[test]
fn endpoint_off_intercepts_nothing_in_ebpf_mode() {
    endpoint_off(Mode::Ebpf);
}

#[test]
fn endpoint_off_intercepts_nothing_in_iptables_mode() {
    endpoint_off(Mode::Iptables);
}
