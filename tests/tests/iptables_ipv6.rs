//! `INTERCEPT=iptables` and the metadata service's IPv6 endpoint, end to end as root on the
//! real kernel and Docker engine: a container on an IPv6-enabled Docker network can connect to
//! `[fd00:ec2::254]:80`; with the agent running its `ip6 metadataproxy` table resets that
//! connection, and nothing reaches the recording catcher the test puts on
//! `[fd00:ec2::254]:80` on loopback. The table is kept, removed and repaired like the IPv4 one.
//!
//! Nothing may leave the machine: this host has an IPv6 default route, so for the test's
//! duration ip6tables rules reject `fd00:ec2::254` on output (except to loopback) and on
//! forward, besides the test command's own guard. They go in before the address and the
//! network, and come out after them.
//!
//! The tables are host-wide, so these tests run one at a time (and under the end-to-end lock
//! with the other test files).

use std::time::{Duration, Instant};

use metadataproxy_tests::sinks::http_get;
use metadataproxy_tests::{
    agent_ipv6_table_exists, agent_table_exists, assert_same_netfilter, catcher, eventually,
    ip6tables_snapshot, netfilter_snapshot, run, serial, test_env, Agent, AgentTableCleanup,
    AwsCounter, Container, FakeUpstream, Fetched, LoopbackAddress6, Network, Rule,
};

const MD6: &str = "http://[fd00:ec2::254]/latest/meta-data";
const MD: &str = "http://169.254.169.254/latest/meta-data";

struct Setup {
    upstream: FakeUpstream,
    aws: AwsCounter,
    /// The recording stand-in for the real service's IPv6 endpoint.
    catcher6: FakeUpstream,
    container: Container,
    // Dropped in this order: the container, the network, the address, the guards, and the
    // tables last, even when a test fails half-way.
    _net: Network,
    _address: LoopbackAddress6,
    _guards: (Rule, Rule),
    _cleanup: AgentTableCleanup,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Setup {
    fn new(name: &str, octet: u8, subnet6: &str) -> Setup {
        let serial = serial();
        let cleanup = AgentTableCleanup;
        assert!(
            !agent_table_exists() && !agent_ipv6_table_exists(),
            "a metadataproxy table is already there (left by another run?)"
        );
        let env = test_env();
        catcher().emulator.clear();
        let guards = (
            Rule::insert6(
                "filter",
                "OUTPUT",
                &["-d", "fd00:ec2::254/128", "!", "-o", "lo", "-j", "REJECT"],
            ),
            Rule::insert6(
                "filter",
                "FORWARD",
                &["-d", "fd00:ec2::254/128", "-j", "REJECT"],
            ),
        );
        let address = LoopbackAddress6::add("fd00:ec2::254");
        let catcher6 = FakeUpstream::start_on("[fd00:ec2::254]:80".parse().expect("addr"));
        let upstream = FakeUpstream::start();
        let aws = AwsCounter::start(&env.moto_url);
        let net = Network::create_dual_stack(name, octet, subnet6);
        let container = Container::start(&env, name, Some(&net.name), &[("IAM_ROLE", "v6-role")]);
        Setup {
            upstream,
            aws,
            catcher6,
            container,
            _net: net,
            _address: address,
            _guards: guards,
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

    /// What reached the IPv6 catcher.
    fn escapes(&self) -> Vec<String> {
        self.catcher6
            .emulator
            .recorded()
            .iter()
            .map(|r| format!("{} {} from {:?}", r.method, r.path_and_query, r.peer))
            .collect()
    }

    /// The container's request to the IPv6 endpoint: refused at once (a reset, not a
    /// timeout), and nothing reaches the catcher.
    fn assert_refused(&self, path: &str) {
        let start = Instant::now();
        let out = self.container.exec(&[
            "timeout",
            "5",
            "wget",
            "-S",
            "-q",
            "-O",
            "-",
            &format!("{MD6}/{path}"),
        ]);
        let r = metadataproxy_tests::parse_wget(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(r.status, 0, "answered over IPv6: {r:?}");
        assert!(
            stderr.contains("refused") && start.elapsed() < Duration::from_secs(4),
            "not reset: {stderr} after {:?}",
            start.elapsed()
        );
        assert!(self.escapes().is_empty(), "escaped: {:?}", self.escapes());
        assert!(
            catcher().emulator.recorded().is_empty(),
            "escaped over IPv4: {:?}",
            catcher().emulator.recorded()
        );
    }

    /// Without the agent's rules, the request reaches the catcher (so the refusals above are
    /// the rules' doing, not a network that goes nowhere).
    fn assert_reaches_the_catcher(&self) {
        let r = self.container.wget(&format!("{MD6}/instance-id"));
        assert_eq!(
            r,
            Fetched {
                status: 200,
                body: "i-0123456789abcdef0".into()
            }
        );
        assert_eq!(self.escapes().len(), 1, "{:?}", self.escapes());
        self.catcher6.emulator.clear();
    }
}

fn readyz(agent: &Agent) -> (u16, serde_json::Value) {
    let (status, body) = http_get(&agent.admin_addr(), "/readyz");
    (status, serde_json::from_str(&body).expect("readyz JSON"))
}

fn terminate(agent: &mut Agent) {
    let status = agent.stop("-TERM");
    assert!(status.success(), "agent exit on SIGTERM: {status:?}");
}

fn snapshot() -> ((String, String), String) {
    (netfilter_snapshot(), ip6tables_snapshot())
}

fn assert_same(before: &((String, String), String), what: &str) {
    let (v4, v6) = snapshot();
    assert_same_netfilter(&before.0, &v4, what);
    assert!(
        before.1 == v6,
        "{what}: ip6tables-save differs: before {:?}, after {v6:?}",
        before.1
    );
}

#[test]
fn the_ipv6_endpoint_is_refused_repaired_and_shutdown_restores_the_rules() {
    let s = Setup::new("ipt-v6", 65, "fd00:dead:beef::/64");
    assert!(
        s.container.ip.starts_with("172.30.65."),
        "{}",
        s.container.ip
    );
    s.assert_reaches_the_catcher();
    let before = snapshot();

    let mut agent = s.agent(&[]);
    assert!(agent_table_exists() && agent_ipv6_table_exists());
    let table = run("nft", &["list", "table", "ip6", "metadataproxy"]);
    for iface in ["docker0", "br-*"] {
        assert!(
            table.contains(&format!(
                "iifname \"{iface}\" ip6 daddr fd00:ec2::254 tcp dport 80 counter packets"
            )),
            "{table}"
        );
    }
    assert_eq!(table.matches("reject with tcp reset").count(), 4, "{table}");
    let ready = eventually(Duration::from_secs(10), || {
        let (status, body) = readyz(&agent);
        (status == 200).then_some(body)
    })
    .unwrap_or_else(|| panic!("not ready: {}", readyz(&agent).1));
    assert_eq!(
        ready["checks"]["interception"]["detail"],
        "iptables: tables ip and ip6 metadataproxy in place",
        "{ready}"
    );

    s.assert_refused("iam/security-credentials/");
    s.assert_refused("instance-id");
    // The same container, over IPv4 on the same network, gets its role from the agent.
    let role = s.container.wget(&format!("{MD}/iam/security-credentials/"));
    assert_eq!((role.status, role.body.as_str()), (200, "v6-role"));
    // The kernel counted the refusals.
    let table = run("nft", &["list", "chain", "ip6", "metadataproxy", "input"]);
    assert!(
        table.contains("br-*\" ip6 daddr fd00:ec2::254 tcp dport 80 counter packets")
            && !table.contains("br-*\" ip6 daddr fd00:ec2::254 tcp dport 80 counter packets 0 "),
        "{table}"
    );

    // Deleted (a firewall reload): put back, on its own; the IPv4 table is left as it is.
    run("nft", &["delete", "table", "ip6", "metadataproxy"]);
    let back = eventually(Duration::from_secs(10), || {
        (agent_ipv6_table_exists() && readyz(&agent).0 == 200).then_some(())
    });
    assert!(back.is_some(), "not reinstalled: {}", agent.raw_logs());
    s.assert_refused("iam/security-credentials/");
    // Rules removed from it: rebuilt.
    run("nft", &["flush", "chain", "ip6", "metadataproxy", "input"]);
    let rebuilt = eventually(Duration::from_secs(10), || {
        run("nft", &["list", "chain", "ip6", "metadataproxy", "input"])
            .contains("reject with tcp reset")
            .then_some(())
    });
    assert!(rebuilt.is_some(), "not rebuilt: {}", agent.raw_logs());
    s.assert_refused("iam/security-credentials/");
    let repairs: Vec<_> = agent
        .logs()
        .into_iter()
        .filter(|l| l["message"].as_str().unwrap_or("").contains("reinstalled"))
        .map(|l| l["family"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(repairs, ["ip6", "ip6"], "{}", agent.raw_logs());

    terminate(&mut agent);
    assert!(!agent_table_exists() && !agent_ipv6_table_exists());
    assert_same(&before, "netfilter state after shutdown");
    // And the refusal is really gone.
    s.assert_reaches_the_catcher();
}

#[test]
fn keep_keeps_the_ipv6_table_and_the_next_agent_takes_it_over() {
    let s = Setup::new("ipt-v6-keep", 66, "fd00:dead:beef:1::/64");
    s.assert_reaches_the_catcher();
    let before = snapshot();

    let mut first = s.agent(&[("IPTABLES_ON_SHUTDOWN", "keep")]);
    s.assert_refused("iam/security-credentials/");
    terminate(&mut first);
    // Kept: still refused with no agent running.
    assert!(agent_table_exists() && agent_ipv6_table_exists());
    s.assert_refused("iam/security-credentials/");

    // The next agent replaces both tables; the earlier one's handles are gone.
    let mut second = s.agent(&[]);
    s.assert_refused("iam/security-credentials/");
    let tables = run("nft", &["list", "tables"]);
    assert_eq!(
        tables
            .lines()
            .filter(|l| l.trim() == "table ip6 metadataproxy")
            .count(),
        1,
        "{tables}"
    );
    // A third takes over from the second, whose shutdown leaves the third's tables alone.
    let mut third = s.agent(&[]);
    terminate(&mut second);
    assert!(
        agent_table_exists() && agent_ipv6_table_exists(),
        "the older agent removed its successor's tables"
    );
    let left_alone: Vec<_> = second
        .logs()
        .into_iter()
        .filter(|l| l["message"].as_str().unwrap_or("").contains("left alone"))
        .map(|l| l["family"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(left_alone, ["ip", "ip6"], "{}", second.raw_logs());
    s.assert_refused("iam/security-credentials/");
    terminate(&mut third);
    assert!(!agent_table_exists() && !agent_ipv6_table_exists());
    assert_same(&before, "netfilter state after shutdown");
    s.assert_reaches_the_catcher();
}

#[test]
fn the_documented_ip6tables_lines_refuse_the_ipv6_endpoint_in_classic_mode() {
    let s = Setup::new("classic-v6", 67, "fd00:dead:beef:2::/64");
    s.assert_reaches_the_catcher();
    let before = ip6tables_snapshot();
    {
        // docs/deployment.md, "Classic mode", as printed there (INTERCEPT=none: no agent table).
        let mut rules = Vec::new();
        for chain in ["FORWARD", "INPUT"] {
            for iface in ["docker0", "br-+"] {
                rules.push(Rule::insert6(
                    "filter",
                    chain,
                    &[
                        "-i",
                        iface,
                        "-d",
                        "fd00:ec2::254/128",
                        "-p",
                        "tcp",
                        "--dport",
                        "80",
                        "-j",
                        "REJECT",
                        "--reject-with",
                        "tcp-reset",
                    ],
                ));
            }
        }
        s.assert_refused("iam/security-credentials/");
    }
    assert_eq!(ip6tables_snapshot(), before);
    s.assert_reaches_the_catcher();
}
