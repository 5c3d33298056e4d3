//! Classic mode with Podman as the container engine: rootful Podman 4.3's API service (started
//! by the test command on a socket of its own, `mp_start_podman`), the agent's `DOCKER_URL`
//! pointing at it through a counting proxy, iptables DNAT of `169.254.169.254:80` from Podman's
//! bridges, moto as STS. The agent reconciles once an hour here: whatever its index learns
//! during a test, it learns from Podman's events (or from a direct lookup, which the proxy
//! counts).
//!
//! eBPF mode refuses to start on Podman (its cgroup layouts are recognised, the redirect is
//! not proven with them); iptables mode refuses unless `IPTABLES_INTERFACES` covers Podman's
//! bridges, and with them serves its containers. Each test restores `ip_forward` and removes netavark's chains when
//! it ends.

use std::time::Duration;

use metadataproxy_tests::podman::{NetavarkRestore, Podman, PodmanNetwork};
use metadataproxy_tests::sinks::http_get;
use metadataproxy_tests::{
    agent_table_exists, eventually, serial, test_env, Agent, AgentTableCleanup, AwsCounter,
    DockerSocket, FakeUpstream, Rule,
};

const MD: &str = "http://169.254.169.254/latest/meta-data";

/// Everything a test needs, dropped in order: the agent before the socket it reads, the
/// netfilter restore last (after the test's containers and networks are gone).
struct Setup {
    podman: Podman,
    agent: Agent,
    docker: DockerSocket,
    _dnat: Rule,
    _upstream: FakeUpstream,
    _aws: AwsCounter,
    _restore: NetavarkRestore,
}

fn setup(name: &str) -> Setup {
    let env = test_env();
    let podman = Podman::from_env();
    let restore = NetavarkRestore::record();
    let (subnet, gateway) = podman.subnet_of("podman");
    let upstream = FakeUpstream::start();
    let aws = AwsCounter::start(&env.moto_url);
    let docker = DockerSocket::counting_in_front_of(&format!("podman-{name}"), &podman.socket);
    let agent = Agent::start(
        &upstream.url(),
        &aws.url(),
        &[
            ("DOCKER_URL", &docker.url()),
            ("DOCKER_RECONCILE_INTERVAL", "1h"),
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("ENABLE_PROMETHEUS", "true"),
        ],
    );
    // Podman's default bridge is podman0, its other networks podman1, podman2, ...
    let dnat = Rule::dnat("podman+", &subnet, &gateway, agent.port);
    Setup {
        podman,
        agent,
        docker,
        _dnat: dnat,
        _upstream: upstream,
        _aws: aws,
        _restore: restore,
    }
}

impl Setup {
    /// `/readyz`'s count of indexed containers, once the index is synced.
    fn indexed(&self) -> Option<usize> {
        let (_, body) = http_get(&self.agent.admin_addr(), "/readyz");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let detail = v["checks"]["docker"]["detail"].as_str()?;
        detail.strip_suffix(" containers indexed")?.parse().ok()
    }

    /// Waits until the index holds `n` containers (events travel asynchronously; the
    /// reconcile is an hour away, so only an event can get it there).
    fn wait_indexed(&self, n: usize) {
        let got = eventually(Duration::from_secs(30), || {
            (self.indexed() == Some(n)).then_some(())
        });
        assert!(
            got.is_some(),
            "the index holds {:?} containers, not {n}: {}",
            self.indexed(),
            self.agent.raw_logs()
        );
    }

    /// How many `action` events the agent has applied (`metadataproxy_docker_events_total`).
    fn events(&self, action: &str) -> u64 {
        let (_, exposition) = http_get(&self.agent.admin_addr(), "/metrics");
        let series = format!("metadataproxy_docker_events_total{{action=\"{action}\"}} ");
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the agent has applied `n` `action` events in all.
    fn wait_events(&self, action: &str, n: u64) {
        let got = eventually(Duration::from_secs(30), || {
            (self.events(action) >= n).then_some(())
        });
        assert!(
            got.is_some(),
            "{} {action} events applied, not {n}: {}",
            self.events(action),
            self.agent.raw_logs()
        );
    }

    /// The container lists the agent asked for (its syncs and direct lookups).
    fn lists(&self) -> usize {
        self.docker
            .requests()
            .iter()
            .filter(|r| r.contains("/containers/json"))
            .count()
    }
}

#[test]
fn roles_on_the_default_bridge_and_a_stop_leaves_the_index_at_once() {
    let _serial = serial();
    let s = setup("roles");
    s.wait_indexed(0);
    let a = s
        .podman
        .container("podman-roles-a", None, &[("IAM_ROLE", "role-a")], &[]);
    let b = s.podman.container(
        "podman-roles-b",
        None,
        &[("IAM_ROLE", "role-b@210987654321")],
        &[],
    );
    s.wait_indexed(2);
    let synced_lists = s.lists();
    for (c, role) in [(&a, "role-a"), (&b, "role-b")] {
        let listing = c.wget(&format!("{MD}/iam/security-credentials/"));
        assert_eq!(listing.status, 200, "{}: {}", c.name, s.agent.raw_logs());
        assert_eq!(listing.body, role, "{}", c.name);
        let creds = c.wget(&format!("{MD}/iam/security-credentials/{role}"));
        assert_eq!(creds.status, 200, "{}", c.name);
        let v: serde_json::Value = serde_json::from_str(&creds.body).unwrap();
        assert_eq!(v["Code"], "Success");
    }
    let other = a.wget(&format!("{MD}/iam/security-credentials/role-b"));
    assert_eq!(other.status, 404);
    // The index answered: no direct lookup.
    assert_eq!(s.lists(), synced_lists, "{:?}", s.docker.requests());

    // Stopped (Podman says `die`): out of the index without a reconcile.
    s.podman.run(&["stop", "-t", "0", &a.name]);
    s.wait_indexed(1);
    // Removed (Podman says `remove`).
    drop(b);
    s.wait_indexed(0);
    let seen: Vec<String> = s
        .agent
        .logs()
        .iter()
        .filter_map(|l| l["container_name"].as_str().map(str::to_string))
        .collect();
    assert!(seen.contains(&a.name) && seen.iter().any(|n| n.ends_with("podman-roles-b")));
}

#[test]
fn an_ip_reused_by_a_new_container_gets_its_role_at_once() {
    let _serial = serial();
    let s = setup("reuse");
    let ip = "10.88.0.200";
    let a = s.podman.container(
        "podman-reuse-a",
        None,
        &[("IAM_ROLE", "role-a")],
        &["--ip", ip],
    );
    assert_eq!(a.ip, ip);
    assert_eq!(
        a.wget(&format!("{MD}/iam/security-credentials/")).body,
        "role-a",
        "{}",
        s.agent.raw_logs()
    );
    drop(a);
    // Podman has announced the removal (as with Docker, a request racing the event itself
    // would still find the old container).
    s.wait_events("remove", 1);
    let b = s.podman.container(
        "podman-reuse-b",
        None,
        &[("IAM_ROLE", "role-b")],
        &["--ip", ip],
    );
    assert_eq!(b.ip, ip);
    // At once: the new container's role, never the old one's, never ambiguous.
    let listing = b.wget(&format!("{MD}/iam/security-credentials/"));
    assert_eq!(
        (listing.status, listing.body.as_str()),
        (200, "role-b"),
        "{}",
        s.agent.raw_logs()
    );
    assert_eq!(
        b.wget(&format!("{MD}/iam/security-credentials/role-b"))
            .status,
        200
    );
    assert_eq!(
        b.wget(&format!("{MD}/iam/security-credentials/role-a"))
            .status,
        404
    );
    let logs = s.agent.raw_logs();
    assert!(!logs.contains("ambiguous"), "{logs}");
}

#[test]
fn a_user_network_with_connect_and_disconnect() {
    let _serial = serial();
    let s = setup("net");
    s.wait_indexed(0);
    // Made after the agent started: Podman announces no network, so the index learns its
    // subnet when a container on it turns up.
    let net = PodmanNetwork::create(&s.podman, "podman-net", 91);
    let _dnat = Rule::dnat("podman+", &net.subnet, &net.gateway, s.agent.port);
    let on_net = s.podman.container(
        "podman-net-on",
        Some(&net.name),
        &[("IAM_ROLE", "role-on")],
        &[],
    );
    let joiner = s.podman.container(
        "podman-net-joiner",
        None,
        &[("IAM_ROLE", "role-joiner")],
        &[],
    );
    s.wait_indexed(2);
    let lists = s.lists();
    assert_eq!(
        on_net.wget(&format!("{MD}/iam/security-credentials/")).body,
        "role-on",
        "{}",
        s.agent.raw_logs()
    );

    // Connected to the network with a pinned address, the joiner calls the agent on that
    // network's gateway, from that address: the connect event told the index.
    let joined_ip = "172.31.91.50";
    s.podman.run(&[
        "network",
        "connect",
        "--ip",
        joined_ip,
        &net.name,
        &joiner.name,
    ]);
    let direct = format!(
        "http://{}:{}/latest/meta-data/iam/security-credentials/",
        net.gateway, s.agent.port
    );
    s.wait_events("connect", 1);
    let listing = joiner.wget(&direct);
    assert_eq!(
        (listing.status, listing.body.as_str()),
        (200, "role-joiner"),
        "{}",
        s.agent.raw_logs()
    );
    let from_joined = s
        .agent
        .logs()
        .into_iter()
        .filter(|l| l["remote_addr"] == joined_ip && l["container_name"] == joiner.name.as_str())
        .count();
    assert!(from_joined >= 1, "{}", s.agent.raw_logs());

    // Disconnected: its address on the network is its no more. A newcomer that takes it gets
    // its own role at once, not an ambiguity between the two.
    s.podman
        .run(&["network", "disconnect", &net.name, &joiner.name]);
    s.wait_events("disconnect", 1);
    let newcomer = s.podman.container(
        "podman-net-newcomer",
        Some(&net.name),
        &[("IAM_ROLE", "role-newcomer")],
        &["--ip", joined_ip],
    );
    assert_eq!(newcomer.ip, joined_ip);
    // Its start applied (a request racing it would be a direct lookup, and fine).
    s.wait_indexed(3);
    let r = newcomer.wget(&format!("{MD}/iam/security-credentials/"));
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "role-newcomer"),
        "{}",
        s.agent.raw_logs()
    );
    // Every answer came from the index, kept by events: no container list since the sync.
    assert_eq!(s.lists(), lists, "{:?}", s.docker.requests());
    drop((newcomer, joiner, on_net));
}

#[test]
fn ebpf_mode_refuses_to_start_on_podman() {
    let _serial = serial();
    let podman = Podman::from_env();
    let _restore = NetavarkRestore::record();
    let running = podman.container("podman-ebpf", None, &[("IAM_ROLE", "role-e")], &[]);
    let stderr =
        Agent::start_up_failure(&[], &[("INTERCEPT", "ebpf"), ("DOCKER_URL", &podman.url())]);
    for needle in ["Podman", "eBPF mode is not supported", "INTERCEPT=none"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    drop(running);
}

#[test]
fn iptables_mode_covers_podmans_bridges_or_refuses_to_start() {
    let _serial = serial();
    let env = test_env();
    let podman = Podman::from_env();
    let _restore = NetavarkRestore::record();
    // The default interfaces are Docker's: refused, naming the fix.
    let stderr = Agent::start_up_failure(
        &[],
        &[("INTERCEPT", "iptables"), ("DOCKER_URL", &podman.url())],
    );
    for needle in ["Podman", "IPTABLES_INTERFACES=docker0,br-+", "podman+"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    assert!(!agent_table_exists(), "a refused start left its table");
    // With Podman's bridges named, its containers are redirected to their own role.
    let _table = AgentTableCleanup;
    let upstream = FakeUpstream::start();
    let aws = AwsCounter::start(&env.moto_url);
    let agent = Agent::start(
        &upstream.url(),
        &aws.url(),
        &[
            ("INTERCEPT", "iptables"),
            ("IPTABLES_INTERFACES", "docker0,br-+,podman+"),
            ("DOCKER_URL", &podman.url()),
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
        ],
    );
    let c = podman.container("podman-ipt", None, &[("IAM_ROLE", "role-i")], &[]);
    let listing = eventually(Duration::from_secs(20), || {
        let got = c.wget(&format!("{MD}/iam/security-credentials/"));
        (got.status == 200).then_some(got)
    });
    assert_eq!(
        listing.map(|l| l.body).as_deref(),
        Some("role-i"),
        "{}",
        agent.raw_logs()
    );
    drop(c);
    drop(agent);
}
