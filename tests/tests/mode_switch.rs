//! Mode switches, end to end as root on the real kernel: an agent started over another mode's
//! leftovers (the pins of an `EBPF_ON_SHUTDOWN=keep` run, the table of an
//! `IPTABLES_ON_SHUTDOWN=keep` run) names them in a warning and in `/readyz`, which fails
//! until `metadataproxy ebpf detach` / `metadataproxy iptables remove` has taken them away.
//!
//! The table and the programs are host-wide, so these tests run one at a time.

use std::process::Command;
use std::time::Duration;

use metadataproxy_tests::sinks::http_get;
use metadataproxy_tests::{
    agent_binary, agent_ipv6_table_exists, agent_table_exists, attachments, catcher, eventually,
    serial, test_env, Agent, AgentTableCleanup, AwsCounter, Container, FakeUpstream, PinDir,
};

const MD: &str = "http://169.254.169.254/latest/meta-data";
const PROGRAMS: [&str; 3] = ["mp_connect4", "mp_connect6", "mp_sockops"];

fn readyz(agent: &Agent) -> (u16, serde_json::Value) {
    let (status, body) = http_get(&agent.admin_addr(), "/readyz");
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("readyz JSON ({e}): {body}"));
    (status, v)
}

/// `metadataproxy <args>`: exit status, stdout, stderr.
fn command(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_binary())
        .args(args)
        .env_remove("EBPF_PIN_PATH")
        .output()
        .expect("run the agent binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The warnings naming a leftover of kind `what`.
fn leftover_warnings(agent: &Agent, what: &str) -> Vec<serde_json::Value> {
    agent
        .logs()
        .into_iter()
        .filter(|l| l["level"] == "WARN" && l["what"] == what)
        .collect()
}

fn escapes() -> Vec<String> {
    catcher()
        .emulator
        .recorded()
        .iter()
        .map(|r| format!("{} {} from {:?}", r.method, r.path_and_query, r.peer))
        .collect()
}

#[test]
fn ebpf_pins_kept_under_an_iptables_agent_are_reported_and_detached_by_the_command() {
    let _serial = serial();
    let _cleanup = AgentTableCleanup;
    assert!(
        !agent_table_exists(),
        "a table ip metadataproxy is already there"
    );
    let env = test_env();
    catcher().emulator.clear();
    let upstream = FakeUpstream::start();
    let aws = AwsCounter::start(&env.moto_url);
    let pins = PinDir::new("switch-ebpf");
    let base = [("DEFAULT_ACCOUNT_ID", "123456789012")];

    let mut ebpf = Agent::start(
        &upstream.url(),
        &aws.url(),
        &[
            base[0],
            ("INTERCEPT", "ebpf"),
            ("EBPF_PIN_PATH", pins.as_str()),
            ("EBPF_ON_SHUTDOWN", "keep"),
        ],
    );
    assert!(ebpf.stop("-TERM").success());
    for p in PROGRAMS {
        assert_eq!(
            attachments(p),
            1,
            "{p} kept attached by EBPF_ON_SHUTDOWN=keep"
        );
    }

    let agent = Agent::start(
        &upstream.url(),
        &aws.url(),
        &[
            base[0],
            ("INTERCEPT", "iptables"),
            ("EBPF_PIN_PATH", pins.as_str()),
        ],
    );
    let warnings = leftover_warnings(&agent, "ebpf_pins");
    assert_eq!(warnings.len(), 1, "{}", agent.raw_logs());
    assert_eq!(warnings[0]["location"], pins.as_str());
    let message = warnings[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("mp_connect4_link_a"), "{message}");
    assert!(
        message.contains(&format!(
            "metadataproxy ebpf detach --pin-path {}",
            pins.as_str()
        )),
        "{message}"
    );
    let (status, ready) = readyz(&agent);
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["leftovers"]["ok"], false, "{ready}");
    assert_eq!(ready["checks"]["interception"]["ok"], true, "{ready}");
    let detail = ready["checks"]["leftovers"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(detail.contains("metadataproxy ebpf detach"), "{detail}");

    // The leftover programs send containers to the stopped agent's port: refused, silently
    // before this change (and never to the real address).
    let c = Container::start(&env, "switch-ebpf", None, &[("IAM_ROLE", "switch-role")]);
    let refused = c.wget(&format!("{MD}/iam/security-credentials/switch-role"));
    assert_eq!(
        refused.status, 0,
        "answered through leftover pins: {refused:?}"
    );

    let (code, stdout, stderr) = command(&["ebpf", "detach", "--pin-path", pins.as_str()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("detached and unpinned 3 link(s)"),
        "{stdout}"
    );
    for p in PROGRAMS {
        assert_eq!(attachments(p), 0, "{p} still attached after ebpf detach");
    }
    assert!(!pins.0.exists(), "the pin directory is still there");
    let (code, stdout, _) = command(&["ebpf", "detach", "--pin-path", pins.as_str()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("nothing to remove"), "{stdout}");

    let ready = eventually(Duration::from_secs(10), || {
        let (status, ready) = readyz(&agent);
        (status == 200).then_some(ready)
    });
    assert!(
        ready.is_some(),
        "not ready after detach: {:?}",
        readyz(&agent)
    );
    let r = c.wget(&format!("{MD}/iam/security-credentials/switch-role"));
    assert_eq!(
        r.status, 200,
        "iptables mode serves once the pins are gone: {r:?}"
    );
    assert_eq!(escapes(), Vec::<String>::new(), "reached the real address");
}

#[test]
fn a_table_kept_under_an_ebpf_agent_is_reported_and_removed_by_the_command() {
    let _serial = serial();
    let _cleanup = AgentTableCleanup;
    assert!(
        !agent_table_exists(),
        "a table ip metadataproxy is already there"
    );
    let env = test_env();
    catcher().emulator.clear();
    let upstream = FakeUpstream::start();
    let aws = AwsCounter::start(&env.moto_url);
    let pins = PinDir::new("switch-nft");

    let mut iptables = Agent::start(
        &upstream.url(),
        &aws.url(),
        &[("INTERCEPT", "iptables"), ("IPTABLES_ON_SHUTDOWN", "keep")],
    );
    assert!(iptables.stop("-TERM").success());
    assert!(
        agent_table_exists(),
        "IPTABLES_ON_SHUTDOWN=keep keeps the table"
    );

    let mut agent = Agent::start(
        &upstream.url(),
        &aws.url(),
        &[
            ("INTERCEPT", "ebpf"),
            ("EBPF_PIN_PATH", pins.as_str()),
            ("EBPF_ON_SHUTDOWN", "detach"),
        ],
    );
    // Both of the iptables agent's tables, ip and ip6, are reported.
    let warnings = leftover_warnings(&agent, "nftables_table");
    let locations: Vec<&str> = warnings
        .iter()
        .map(|w| w["location"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        locations,
        ["table ip metadataproxy", "table ip6 metadataproxy"],
        "{}",
        agent.raw_logs()
    );
    assert!(warnings
        .iter()
        .all(|w| w["remove_with"] == "metadataproxy iptables remove"));
    let (status, ready) = readyz(&agent);
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["leftovers"]["ok"], false, "{ready}");
    assert_eq!(ready["checks"]["interception"]["ok"], true, "{ready}");

    let (code, stdout, stderr) = command(&["iptables", "remove"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("removed table ip metadataproxy, table ip6 metadataproxy"),
        "{stdout}"
    );
    assert!(!agent_table_exists(), "the ip table is still there");
    assert!(!agent_ipv6_table_exists(), "the ip6 table is still there");
    let (code, stdout, _) = command(&["iptables", "remove"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("nothing to remove"), "{stdout}");

    let ready = eventually(Duration::from_secs(10), || {
        let (status, ready) = readyz(&agent);
        (status == 200).then_some(ready)
    });
    assert!(
        ready.is_some(),
        "not ready after remove: {:?}",
        readyz(&agent)
    );
    assert!(agent.stop("-TERM").success());
    assert_eq!(escapes(), Vec::<String>::new(), "reached the real address");
}

#[test]
fn the_commands_fail_with_a_reason_on_a_directory_that_is_not_bpffs() {
    let dir = std::env::temp_dir().join(format!("mp-test-not-bpffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (code, stdout, stderr) =
        command(&["ebpf", "detach", "--pin-path", dir.to_str().expect("utf-8")]);
    assert!(dir.exists(), "a directory outside bpffs was removed");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("is not on a bpf filesystem"), "{stderr}");
    let (code, _, stderr) = command(&["ebpf", "detach", "--pin-path", "relative"]);
    assert_eq!(code, 64, "{stderr}");
}
