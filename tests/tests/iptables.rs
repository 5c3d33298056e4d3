//! `INTERCEPT=iptables` end to end, as root on the real kernel: the agent installs its own
//! netfilter table (no rule written by the test), containers on `docker0` and on a user-defined
//! bridge get their credentials through it, escapes are made visible by the catcher on
//! `169.254.169.254:80`, and after a clean shutdown `iptables-save` and `nft list ruleset` print
//! exactly what they printed before the agent started.
//!
//! The table is host-wide, so these tests run one at a time.

use std::time::Duration;

use metadataproxy_tests::sinks::http_get;
use metadataproxy_tests::{
    agent_table_exists, assert_same_netfilter, catcher, docker0_gateway, eventually,
    netfilter_snapshot, run, serial, test_env, Agent, AgentTableCleanup, AwsCounter, Container,
    FakeUpstream, Network, TestEnv,
};

const MD: &str = "http://169.254.169.254/latest/meta-data";

struct Setup {
    env: TestEnv,
    upstream: FakeUpstream,
    aws: AwsCounter,
    // Dropped last: the table goes even when a test fails half-way.
    _cleanup: AgentTableCleanup,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Setup {
    fn new() -> Setup {
        let serial = serial();
        let cleanup = AgentTableCleanup;
        assert!(
            !agent_table_exists(),
            "a table ip metadataproxy is already there (left by another run?)"
        );
        let env = test_env();
        catcher().emulator.clear();
        let upstream = FakeUpstream::start();
        let aws = AwsCounter::start(&env.moto_url);
        Setup {
            env,
            upstream,
            aws,
            _cleanup: cleanup,
            _serial: serial,
        }
    }

    fn agent(&self, extra: &[(&str, &str)]) -> Agent {
        let mut vars = vec![
            ("INTERCEPT", "iptables"),
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
        ];
        vars.extend_from_slice(extra);
        Agent::start(&self.upstream.url(), &self.aws.url(), &vars)
    }

    fn container(&self, name: &str, network: Option<&str>, role: &str) -> Container {
        Container::start(&self.env, name, network, &[("IAM_ROLE", role)])
    }
}

/// What a container sent to the catcher (the real metadata service's stand-in).
fn escapes() -> Vec<String> {
    catcher()
        .emulator
        .recorded()
        .iter()
        .map(|r| format!("{} {} from {:?}", r.method, r.path_and_query, r.peer))
        .collect()
}

fn assert_credentials(c: &Container, role: &str, moto_url: &str) {
    let r = c.wget(&format!("{MD}/iam/security-credentials/{role}"));
    assert_eq!(r.status, 200, "{}: credentials for {role}: {r:?}", c.name);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("credentials JSON");
    assert_eq!(
        metadataproxy_tests::caller_identity(moto_url, &v),
        format!("arn:aws:sts::123456789012:assumed-role/{role}/go-metadataproxy")
    );
}

fn readyz(agent: &Agent) -> (u16, serde_json::Value) {
    let (status, body) = http_get(&agent.admin_addr(), "/readyz");
    (status, serde_json::from_str(&body).expect("readyz JSON"))
}

fn terminate(agent: &mut Agent) {
    let status = agent.stop("-TERM");
    assert!(status.success(), "agent exit on SIGTERM: {status:?}");
}

#[test]
fn every_bridge_is_intercepted_and_shutdown_restores_the_rules_it_found() {
    let s = Setup::new();
    // The network first: Docker adds its own rules for it, which are part of "before".
    let net = Network::create("ipt-bridges", 42);
    let bridged = s.container("ipt-bridge", None, "bridge-role");
    let user = s.container("ipt-user", Some(&net.name), "user-role");
    let before = netfilter_snapshot();

    let mut agent = s.agent(&[]);
    assert!(agent_table_exists());
    // The table is in place before the agent serves; Docker's index syncs alongside.
    let (_, ready) = readyz(&agent);
    assert_eq!(ready["checks"]["interception"]["ok"], true, "{ready}");
    let synced = eventually(Duration::from_secs(10), || {
        (readyz(&agent).0 == 200).then_some(())
    });
    assert!(synced.is_some(), "not ready: {}", readyz(&agent).1);
    for (c, role) in [(&bridged, "bridge-role"), (&user, "user-role")] {
        assert_eq!(
            c.wget(&format!("{MD}/iam/security-credentials/")).body,
            role
        );
        assert_credentials(c, role, &s.env.moto_url);
        let id = c.wget(&format!("{MD}/instance-id"));
        assert_eq!((id.status, id.body.as_str()), (200, "i-0123456789abcdef0"));
    }
    // A bridge created after the agent started is covered too (`br-+`).
    let late = Network::create("ipt-late", 43);
    let late_c = s.container("ipt-late", Some(&late.name), "late-role");
    assert_credentials(&late_c, "late-role", &s.env.moto_url);

    // The agent's real port answers only redirected and local connections: a container that
    // connects to it directly is reset.
    let direct = bridged.wget(&format!(
        "http://{}:{}/latest/meta-data/instance-id",
        docker0_gateway(),
        agent.port
    ));
    assert_eq!(direct.status, 0, "direct connection answered: {direct:?}");
    let (status, _) = http_get(&format!("127.0.0.1:{}", agent.port), "/latest/meta-data/");
    assert_eq!(status, 200, "loopback is allowed");
    assert!(escapes().is_empty(), "escaped: {:?}", escapes());

    terminate(&mut agent);
    assert!(!agent_table_exists());
    // `late` was created and is still there: compare before removing it would differ by its
    // rules, so remove it first.
    drop(late_c);
    drop(late);
    assert_same_netfilter(
        &before,
        &netfilter_snapshot(),
        "netfilter state after shutdown",
    );
    // And the redirect is really gone: the same request now reaches the catcher.
    let escaped = bridged.wget(&format!("{MD}/instance-id"));
    assert_eq!(escaped.status, 200, "{escaped:?}");
    assert_eq!(escapes().len(), 1, "{:?}", escapes());
    catcher().emulator.clear();
}

#[test]
fn keep_fails_closed_and_only_the_current_agent_removes_the_table() {
    let s = Setup::new();
    let c = s.container("ipt-keep", None, "keep-role");
    let before = netfilter_snapshot();

    let mut first = s.agent(&[("IPTABLES_ON_SHUTDOWN", "keep")]);
    assert_credentials(&c, "keep-role", &s.env.moto_url);
    terminate(&mut first);
    // Kept: metadata connections are refused while no agent runs; nothing escapes.
    assert!(agent_table_exists(), "the keep setting removed the table");
    assert_ne!(netfilter_snapshot(), before);
    let refused = c.wget(&format!("{MD}/iam/security-credentials/keep-role"));
    assert_eq!(refused.status, 0, "{refused:?}");
    assert!(escapes().is_empty(), "escaped: {:?}", escapes());

    // The next agent replaces the kept table (on another port) and serves at once.
    let mut second = s.agent(&[]);
    assert_credentials(&c, "keep-role", &s.env.moto_url);
    // A third takes over from the second; the second's shutdown must not remove the third's.
    let mut third = s.agent(&[]);
    assert_ne!(second.port, third.port);
    assert_eq!(
        run("nft", &["list", "tables"])
            .lines()
            .filter(|l| l.trim() == "table ip metadataproxy")
            .count(),
        1
    );
    terminate(&mut second);
    assert!(
        agent_table_exists(),
        "the older agent removed its successor's table"
    );
    assert_credentials(&c, "keep-role", &s.env.moto_url);
    assert!(second
        .logs()
        .iter()
        .any(|l| l["message"].as_str().unwrap_or("").contains("left alone")));
    terminate(&mut third);
    assert_same_netfilter(
        &before,
        &netfilter_snapshot(),
        "netfilter state after shutdown",
    );
    assert!(escapes().is_empty(), "escaped: {:?}", escapes());
}

#[test]
fn a_flushed_table_is_reinstalled_and_readiness_follows_it() {
    let s = Setup::new();
    let c = s.container("ipt-repair", None, "repair-role");
    let before = netfilter_snapshot();
    let mut agent = s.agent(&[]);
    assert_credentials(&c, "repair-role", &s.env.moto_url);

    // Someone deletes the table (a `nft flush ruleset`, a firewall reload).
    run("nft", &["delete", "table", "ip", "metadataproxy"]);
    let (status, ready) = readyz(&agent);
    if status == 503 {
        // Unless the repair was quicker than this request.
        assert_eq!(ready["checks"]["interception"]["ok"], false, "{ready}");
    }
    let back = eventually(Duration::from_secs(10), || {
        (readyz(&agent).0 == 200 && agent_table_exists()).then_some(())
    });
    assert!(
        back.is_some(),
        "table not reinstalled: {}",
        agent.raw_logs()
    );
    assert_credentials(&c, "repair-role", &s.env.moto_url);

    // A rule removed from the table is noticed too.
    run("nft", &["flush", "chain", "ip", "metadataproxy", "input"]);
    let repaired = eventually(Duration::from_secs(10), || {
        let out = run("nft", &["list", "chain", "ip", "metadataproxy", "input"]);
        out.contains("reject with tcp reset").then_some(())
    });
    assert!(
        repaired.is_some(),
        "rules not restored: {}",
        agent.raw_logs()
    );
    let repairs = agent
        .logs()
        .iter()
        .filter(|l| l["message"].as_str().unwrap_or("").contains("reinstalled"))
        .count();
    assert_eq!(repairs, 2, "{}", agent.raw_logs());
    terminate(&mut agent);
    assert_same_netfilter(&before, &netfilter_snapshot(), "after shutdown");
    assert!(escapes().is_empty(), "escaped: {:?}", escapes());
}

#[test]
fn a_connection_opened_before_the_rules_cannot_go_on_to_the_real_service() {
    let s = Setup::new();
    let c = s.container("ipt-early", None, "early-role");
    // No agent yet: a keep-alive connection reaches the real service (the catcher); its
    // second request, sent after the agent has started, must not.
    let out = c.exec(&[
        "sh",
        "-c",
        "(printf 'GET /latest/meta-data/instance-id HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n'; sleep 6; \
         printf 'GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n'; \
         sleep 2) | timeout 12 nc 169.254.169.254 80 > /tmp/early 2>&1 &",
    ]);
    assert!(out.status.success());
    let first = eventually(Duration::from_secs(5), || {
        (!escapes().is_empty()).then_some(())
    });
    assert!(
        first.is_some(),
        "the first request did not reach the catcher"
    );
    let mut agent = s.agent(&[]);
    std::thread::sleep(Duration::from_secs(8));
    let seen = escapes();
    assert_eq!(seen.len(), 1, "after the rules: {seen:?}");
    assert!(seen[0].contains("instance-id"), "{seen:?}");
    catcher().emulator.clear();
    // New connections are redirected.
    assert_credentials(&c, "early-role", &s.env.moto_url);
    terminate(&mut agent);
}

/// Runs the agent in iptables mode with `vars`, through `wrapper` (e.g. `setpriv`), without
/// a Docker daemon or AWS behind it: for start-up failures.
fn start_up_failure(wrapper: &[&str], vars: &[(&str, &str)]) -> String {
    Agent::start_up_failure(wrapper, &[&[("INTERCEPT", "iptables")], vars].concat())
}

#[test]
fn a_loopback_host_address_is_refused_at_start_up() {
    let _s = Setup::new();
    let stderr = start_up_failure(&["env"], &[("HOST", "127.0.0.1")]);
    assert!(
        stderr.contains("HOST 127.0.0.1 is a loopback address"),
        "{stderr}"
    );
    assert!(!agent_table_exists());
}

#[test]
fn without_net_admin_start_up_fails_at_once_naming_the_capability() {
    let _s = Setup::new();
    // The kernel's refusal (EPERM on the batch) is read, not waited out: a timeout would say
    // that the kernel did not answer, without the hint.
    let stderr = start_up_failure(&["setpriv", "--bounding-set=-net_admin"], &[]);
    assert!(stderr.contains("needs CAP_NET_ADMIN"), "{stderr}");
    assert!(!agent_table_exists());
}
