//! The README's offline walkthrough, step by step: the agent with both built-ins (the emulated
//! metadata service and the built-in STS), reached at docker0's address and, with
//! `INTERCEPT=iptables`, at `169.254.169.254`; containers started with `docker run` exactly as
//! the README writes them, each getting fake credentials for its own role and none for
//! another's; a real SDK's IMDS provider in a container; Ctrl-C.
//!
//! Each command is taken from the README (the test fails if the README no longer has it) and
//! run with three substitutions only: the agent binary of this build for `cargo run ...` or
//! `target/release/metadataproxy`, a free port for `8000` (the README's port may be taken on a
//! test machine), and the test image for `busybox` (no registry here). The agent gets the
//! environment of a shell without any AWS setting, plus JSON logs and a free admin port, which
//! the fixture reads. Nothing may reach the real metadata address: the catcher on
//! `169.254.169.254:80` (on loopback) must stay empty.

use std::process::{Command, Output};
use std::time::Duration;

use metadataproxy_tests::readme::README;
use metadataproxy_tests::{
    agent_table_exists, assert_no_escape, catcher, docker0_gateway, eventually, imds_time_seconds,
    serial, test_env, Agent, AgentTableCleanup, Container, TestEnv,
};

const BRIDGE_IP: &str =
    "BRIDGE_IP=$(ip -4 -o addr show dev docker0 | awk '{print $4}' | cut -d/ -f1)";
const AGENT_AT_BRIDGE: &str = "cargo run --release -p metadataproxy -- --metadata-url builtin \
     --sts builtin --host \"$BRIDGE_IP\" --port 8000";
const DEMO_AT_BRIDGE: &str = "docker run --rm -e IAM_ROLE=demo busybox wget -qO- \
     http://$BRIDGE_IP:8000/latest/meta-data/iam/security-credentials/demo";
const REPORTS_INFO_AT_BRIDGE: &str = "docker run --rm -e IAM_ROLE=reports busybox wget -qO- \
     http://$BRIDGE_IP:8000/latest/meta-data/iam/info";
const REPORTS_ASKS_FOR_DEMO_AT_BRIDGE: &str = "docker run --rm -e IAM_ROLE=reports busybox \
     wget -qO- http://$BRIDGE_IP:8000/latest/meta-data/iam/security-credentials/demo";
const AGENT_ON_IPTABLES: &str = "sudo target/release/metadataproxy --metadata-url builtin \
     --sts builtin --intercept iptables --port 8000";
const DEMO_ON_METADATA_ADDRESS: &str = "docker run --rm -e IAM_ROLE=demo busybox wget -qO- \
     http://169.254.169.254/latest/meta-data/iam/security-credentials/demo";
const REPORTS_INFO_ON_METADATA_ADDRESS: &str = "docker run --rm -e IAM_ROLE=reports busybox \
     wget -qO- http://169.254.169.254/latest/meta-data/iam/info";

/// Starts the agent from the README's command `line` in a shell without any AWS setting; it
/// warns that its credentials are fake.
fn start_agent(line: &str, prefix: &str, bridge_ip: &str) -> Agent {
    let agent = README.start_agent(line, prefix, bridge_ip, &[]);
    let warned = agent.logs().iter().any(|l| {
        l["level"] == "WARN"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("FAKE credentials"))
    });
    assert!(
        warned,
        "no warning that the credentials are fake: {}",
        agent.raw_logs()
    );
    agent
}

/// The credentials a step printed, checked for what the built-in STS issues.
fn fake_credentials(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("credentials JSON");
    assert_eq!(v["Code"], "Success");
    assert_eq!(v["Type"], "AWS-HMAC");
    let key = v["AccessKeyId"].as_str().unwrap();
    assert!(key.starts_with("ASIALOCAL") && key.len() == 20, "{key}");
    let secret = v["SecretAccessKey"].as_str().unwrap();
    assert!(
        secret.starts_with("localfake") && secret.len() == 40,
        "{secret}"
    );
    assert!(v["Token"]
        .as_str()
        .unwrap()
        .starts_with("FAKE/metadataproxy-builtin-sts/"));
    // The default session: an hour, so refresh-ahead works as against STS.
    let length = imds_time_seconds(v["Expiration"].as_str().unwrap())
        - imds_time_seconds(v["LastUpdated"].as_str().unwrap());
    assert_eq!(length, 3600, "{v}");
    v
}

/// The assumed-role ARN a step's `iam/info` printed.
fn info_arn(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    v["InstanceProfileArn"].as_str().expect("arn").to_string()
}

/// The role the agent audited for the credentials with `key`.
fn audited_role(agent: &Agent, key: &str) -> String {
    eventually(Duration::from_secs(5), || {
        agent
            .logs()
            .into_iter()
            .find(|l| l["message"] == "credentials issued" && l["access_key_id"] == key)
            .and_then(|l| l["role_arn"].as_str().map(str::to_string))
    })
    .unwrap_or_else(|| panic!("no audit line for {key}: {}", agent.raw_logs()))
}

/// The AWS SDK for Rust's IMDS credentials provider, run in a container whose role is `demo`,
/// against `endpoint` (`None`: the SDK's default, the metadata address): its access key id.
fn sdk_access_key(env: &TestEnv, name: &str, endpoint: Option<&str>) -> String {
    let c = Container::start(env, name, None, &[("IAM_ROLE", "demo")]);
    let args: Vec<&str> = endpoint.into_iter().collect();
    let out = c.run_inside(env!("CARGO_BIN_EXE_imds-client"), &args);
    assert!(
        out.status.success(),
        "the SDK's IMDS provider failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("SDK output");
    v["AccessKeyId"].as_str().expect("AccessKeyId").to_string()
}

#[test]
fn offline_at_docker0s_address_each_container_gets_its_own_fake_role() {
    let _serial = serial();
    let env = test_env();
    catcher().emulator.clear();

    // The README's way to find docker0's address gives what the interface has.
    let shown = Command::new("sh")
        .args([
            "-c",
            &format!("{}; echo \"$BRIDGE_IP\"", README.shown(BRIDGE_IP)),
        ])
        .output()
        .expect("sh");
    let bridge_ip = docker0_gateway();
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), bridge_ip);

    let mut agent = start_agent(
        AGENT_AT_BRIDGE,
        "cargo run --release -p metadataproxy -- ",
        &bridge_ip,
    );

    let demo = fake_credentials(&README.run_step(&env, &agent, &bridge_ip, DEMO_AT_BRIDGE));
    let demo_key = demo["AccessKeyId"].as_str().unwrap();
    assert_eq!(
        audited_role(&agent, demo_key),
        "arn:aws:iam::123456789012:role/demo"
    );

    // Another container: its own role.
    let arn = info_arn(&README.run_step(&env, &agent, &bridge_ip, REPORTS_INFO_AT_BRIDGE));
    assert_eq!(
        arn,
        "arn:aws:sts::123456789012:assumed-role/reports/go-metadataproxy"
    );
    // And not the first one's.
    let out = README.run_step(&env, &agent, &bridge_ip, REPORTS_ASKS_FOR_DEMO_AT_BRIDGE);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404 Not Found"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");

    // A real SDK in a container, pointed at the agent.
    let endpoint = format!("http://{bridge_ip}:{}", agent.port);
    let key = sdk_access_key(&env, "walk-sdk-bridge", Some(&endpoint));
    assert!(key.starts_with("ASIALOCAL"), "{key}");
    assert_eq!(
        audited_role(&agent, &key),
        "arn:aws:iam::123456789012:role/demo"
    );

    agent.interrupt();
    assert_no_escape();
}

#[test]
fn offline_on_the_metadata_address_with_iptables_and_rules_gone_on_ctrl_c() {
    let _serial = serial();
    let _cleanup = AgentTableCleanup;
    assert!(
        !agent_table_exists(),
        "a table ip metadataproxy is already there (left by another run?)"
    );
    let env = test_env();
    catcher().emulator.clear();
    let bridge_ip = docker0_gateway();

    let mut agent = start_agent(
        AGENT_ON_IPTABLES,
        "sudo target/release/metadataproxy ",
        &bridge_ip,
    );
    assert!(agent_table_exists());

    let demo =
        fake_credentials(&README.run_step(&env, &agent, &bridge_ip, DEMO_ON_METADATA_ADDRESS));
    assert_eq!(
        audited_role(&agent, demo["AccessKeyId"].as_str().unwrap()),
        "arn:aws:iam::123456789012:role/demo"
    );
    let arn =
        info_arn(&README.run_step(&env, &agent, &bridge_ip, REPORTS_INFO_ON_METADATA_ADDRESS));
    assert_eq!(
        arn,
        "arn:aws:sts::123456789012:assumed-role/reports/go-metadataproxy"
    );

    // A real SDK in a container, with nothing to configure.
    let key = sdk_access_key(&env, "walk-sdk-iptables", None);
    assert!(key.starts_with("ASIALOCAL"), "{key}");
    assert_eq!(
        audited_role(&agent, &key),
        "arn:aws:iam::123456789012:role/demo"
    );
    assert_no_escape();

    agent.interrupt();
    assert!(
        !agent_table_exists(),
        "the agent's rules are still there after Ctrl-C"
    );
    assert_no_escape();
}
