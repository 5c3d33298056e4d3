//! The agent image (Dockerfile, `FROM scratch`, built by the test command with
//! `scripts/build-image.sh`) run as a host agent container with the `docker run`
//! lines of docs/deployment.md, in classic mode (the operator's DNAT rule), in iptables mode (the agent's own rules)
//! and in eBPF mode; a workload container gets its role's credentials in each.

use std::process::Command;
use std::time::Duration;

use metadataproxy_tests::{
    agent_table_exists, assert_same_netfilter, catcher, eventually, netfilter_snapshot, run,
    serial, test_env, AgentTableCleanup, AwsCounter, Container, FakeUpstream, Network, PinDir,
    Rule,
};

const MD: &str = "http://169.254.169.254/latest/meta-data";

/// The `docker run` flags of docs/deployment.md for eBPF mode.
const EBPF_RUN_FLAGS: &[&str] = &[
    "--net=host",
    "--cgroupns=host",
    "--pid=host",
    "--cap-add=SYS_ADMIN",
    "--cap-add=NET_ADMIN",
    "-v",
    "/var/run/docker.sock:/var/run/docker.sock",
    "-v",
    "/sys/fs/bpf:/sys/fs/bpf",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:ro",
];

/// The `docker run` flags of docs/deployment.md for iptables mode.
const IPTABLES_RUN_FLAGS: &[&str] = &[
    "--net=host",
    "--cap-add=NET_ADMIN",
    "-v",
    "/var/run/docker.sock:/var/run/docker.sock",
];

fn image() -> String {
    std::env::var("MP_TEST_AGENT_IMAGE").expect(
        "MP_TEST_AGENT_IMAGE is not set: the test command builds the image \
         (scripts/build-image.sh) and exports it",
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The agent running as a container; removed when dropped, with its state volume.
struct AgentContainer {
    name: String,
    /// The documented `-v metadataproxy-state:/var/lib/metadataproxy`, one per test.
    volume: String,
}

impl AgentContainer {
    /// `docker run -d --name mp-test-agent-{name} {flags} -v VOLUME:/var/lib/metadataproxy
    /// IMAGE` with `env`; the volume is `mp-test-state-{name}` (kept while the container is
    /// re-created under the same name).
    fn run(name: &str, flags: &[&str], env: &[(&str, String)]) -> AgentContainer {
        let volume = format!("mp-test-state-{name}");
        let name = format!("mp-test-agent-{name}");
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
        args.extend(flags.iter().map(|f| f.to_string()));
        args.push("-v".into());
        args.push(format!("{volume}:/var/lib/metadataproxy"));
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.push(image());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run("docker", &refs);
        AgentContainer { name, volume }
    }

    /// `docker rm -f` and the same `docker run` again, as an upgrade does; the volume stays.
    fn recreate(self, name: &str, flags: &[&str], env: &[(&str, String)]) -> AgentContainer {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
        std::mem::forget(self);
        AgentContainer::run(name, flags, env)
    }

    fn logs(&self) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.name])
            .output()
            .expect("docker logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Runs the agent with two free ports (`PORT`, `ADMIN_ADDR`) from `vars(port, admin)` and
    /// waits until it is ready. A port picked free can be taken (by any outgoing connection)
    /// before the agent binds it: then it starts again with other ports.
    fn run_ready(
        name: &str,
        flags: &[&str],
        vars: impl Fn(u16, u16) -> Vec<(&'static str, String)>,
    ) -> (AgentContainer, u16) {
        for _ in 0..5 {
            let (port, admin) = (free_port(), free_port());
            let agent = AgentContainer::run(name, flags, &vars(port, admin));
            let ready = eventually(Duration::from_secs(30), || {
                let logs = agent.logs();
                if logs.contains("metadataproxy ready") {
                    Some(true)
                } else if logs.contains("Address already in use") {
                    Some(false)
                } else {
                    None
                }
            });
            match ready {
                Some(true) => return (agent, port),
                Some(false) => continue,
                None => panic!("agent container ready: {}", agent.logs()),
            }
        }
        panic!("no free port pair in 5 tries");
    }

    fn health(&self) -> String {
        run(
            "docker",
            &[
                "inspect",
                "--format",
                "{{.State.Health.Status}}",
                &self.name,
            ],
        )
        .trim()
        .to_string()
    }
}

impl Drop for AgentContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.volume])
            .output();
    }
}

/// What the test adds to the documented lines: its own ports, the fake upstream, moto (by
/// host name, so that name resolution in the static binary is exercised), test credentials.
fn test_env_vars(
    upstream: &FakeUpstream,
    aws: &AwsCounter,
    port: u16,
    admin: u16,
) -> Vec<(&'static str, String)> {
    vec![
        ("PORT", port.to_string()),
        ("ADMIN_ADDR", format!("127.0.0.1:{admin}")),
        ("CONTAINER_CREDENTIALS_PORT", "0".into()),
        ("METADATA_URL", upstream.url()),
        (
            "AWS_ENDPOINT_URL",
            format!("http://localhost:{}", aws.addr.port()),
        ),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("DEFAULT_ACCOUNT_ID", "123456789012".into()),
    ]
}

#[test]
fn the_image_serves_a_workload_in_classic_mode() {
    let _serial = serial();
    let env = test_env();
    let upstream = FakeUpstream::start();
    let aws = AwsCounter::start(&env.moto_url);
    // docs/deployment.md: "Classic mode (your DNAT rules)": not root, only the Docker socket's group.
    let socket_group = std::fs::metadata("/var/run/docker.sock")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m).to_string())
        .expect("the Docker socket");
    let flags = [
        "--net=host",
        "--user",
        "65534:65534",
        "--group-add",
        &socket_group,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
    ];
    let _ = Command::new("docker")
        .args(["volume", "rm", "-f", "mp-test-state-classic"])
        .output();
    let (agent, port) = AgentContainer::run_ready("classic", &flags, |port, admin| {
        test_env_vars(&upstream, &aws, port, admin)
    });
    let user = run(
        "docker",
        &["inspect", "--format", "{{.Config.User}}", &agent.name],
    );
    assert_eq!(user.trim(), "65534:65534");
    let net = Network::create("image-classic", 74);
    let _dnat = Rule::dnat("br-+", &net.subnet, &net.gateway, port);
    let c = Container::start(
        &env,
        "image-classic",
        Some(&net.name),
        &[("IAM_ROLE", "image-role")],
    );
    let r = c.wget(&format!("{MD}/iam/security-credentials/image-role"));
    assert_eq!(r.status, 200, "{}", agent.logs());
    let creds: serde_json::Value = serde_json::from_str(&r.body).expect("credentials JSON");
    assert!(metadataproxy_tests::caller_identity(&env.moto_url, &creds)
        .contains(":assumed-role/image-role/"));
    assert_eq!(aws.count_matching("AssumeRole", "%2Fimage-role&"), 1);

    // `docker logs` shows the structured logs.
    let logs = agent.logs();
    let request = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "request" && l["container_name"] == "mp-test-image-classic")
        .unwrap_or_else(|| panic!("a JSON request line in docker logs: {logs}"));
    assert_eq!(request["response_code"], 200);
    assert!(!logs.contains(creds["SecretAccessKey"].as_str().unwrap()));

    // The HEALTHCHECK (`metadataproxy --healthcheck`, /readyz) turns healthy.
    eventually(Duration::from_secs(45), || {
        (agent.health() == "healthy").then_some(())
    })
    .unwrap_or_else(|| panic!("healthy: {} {}", agent.health(), agent.logs()));

    // The token key is kept in the state volume, private to the agent's user (nobody) ...
    let stat = run(
        "docker",
        &[
            "run",
            "--rm",
            "-v",
            &format!("{}:/state:ro", agent.volume),
            &env.image,
            "stat",
            "-c",
            "%u %a",
            "/state",
            "/state/token.key",
        ],
    );
    assert_eq!(
        stat.trim(),
        "65534 700\n65534 600",
        "state directory and key file"
    );
    // ... so a token the workload holds outlives a re-created agent container (an upgrade).
    let (status, _, token) = c.curl(&[
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 21600",
        "http://169.254.169.254/latest/api/token",
    ]);
    assert_eq!(status, 200);
    let agent = agent.recreate(
        "classic",
        &flags,
        &test_env_vars(&upstream, &aws, port, free_port()),
    );
    eventually(Duration::from_secs(30), || {
        agent.logs().contains("metadataproxy ready").then_some(())
    })
    .unwrap_or_else(|| panic!("re-created agent ready: {}", agent.logs()));
    let (status, _, body) = c.curl(&[
        "-H",
        &format!("X-aws-ec2-metadata-token: {token}"),
        &format!("{MD}/iam/security-credentials/image-role"),
    ]);
    assert_eq!(status, 200, "{body} {}", agent.logs());
    assert!(
        agent.logs().contains("IMDSv2 token key loaded"),
        "{}",
        agent.logs()
    );
}

/// How docs/deployment.md runs the image in an interception mode.
struct Mode {
    /// Names the test's containers and the agent's volume.
    name: &'static str,
    /// The documented `docker run` flags.
    flags: &'static [&'static str],
    /// The mode's settings.
    vars: Vec<(&'static str, String)>,
    /// What the agent logs once `docker stop` has undone its interception.
    undone: &'static str,
}

/// In `mode`, the image serves a workload (already running) its role's credentials and the
/// upstream's answers, nothing reaches the real address, the HEALTHCHECK turns healthy, and
/// `docker stop` undoes the interception: the host's netfilter state is as before.
fn serves_a_workload_and_undoes_its_interception_on_stop(mode: Mode) {
    let _serial = serial();
    let _cleanup = AgentTableCleanup;
    let env = test_env();
    catcher().emulator.clear();
    let upstream = FakeUpstream::start();
    let aws = AwsCounter::start(&env.moto_url);
    let role = format!("image-{}-role", mode.name);
    let c = Container::start(
        &env,
        &format!("image-{}", mode.name),
        None,
        &[("IAM_ROLE", &role)],
    );
    let before = netfilter_snapshot();
    let (agent, _) = AgentContainer::run_ready(mode.name, mode.flags, |port, admin| {
        let mut vars = test_env_vars(&upstream, &aws, port, admin);
        vars.extend(mode.vars.iter().cloned());
        vars
    });
    let r = c.wget(&format!("{MD}/iam/security-credentials/{role}"));
    assert_eq!(r.status, 200, "{}", agent.logs());
    let id = c.wget(&format!("{MD}/instance-id"));
    assert_eq!((id.status, id.body.as_str()), (200, "i-0123456789abcdef0"));
    let escaped = catcher().emulator.recorded();
    assert!(escaped.is_empty(), "reached the real address: {escaped:?}");
    eventually(Duration::from_secs(45), || {
        (agent.health() == "healthy").then_some(())
    })
    .unwrap_or_else(|| panic!("healthy: {} {}", agent.health(), agent.logs()));
    run("docker", &["stop", "-t", "20", &agent.name]);
    assert!(agent.logs().contains(mode.undone), "{}", agent.logs());
    assert!(!agent_table_exists());
    assert_same_netfilter(
        &before,
        &netfilter_snapshot(),
        "netfilter state after docker stop",
    );
}

#[test]
fn the_image_serves_a_workload_in_iptables_mode_and_removes_its_rules_on_stop() {
    // docs/deployment.md: "iptables mode", with the default IPTABLES_ON_SHUTDOWN=remove.
    serves_a_workload_and_undoes_its_interception_on_stop(Mode {
        name: "iptables",
        flags: IPTABLES_RUN_FLAGS,
        vars: vec![("INTERCEPT", "iptables".into())],
        undone: "interception rules removed",
    });
}

#[test]
fn the_image_serves_a_workload_in_ebpf_mode_and_detaches_on_stop() {
    let pins = PinDir::new("image");
    // docs/deployment.md: "eBPF mode"; SIGTERM with EBPF_ON_SHUTDOWN=detach: the programs go.
    serves_a_workload_and_undoes_its_interception_on_stop(Mode {
        name: "ebpf",
        flags: EBPF_RUN_FLAGS,
        vars: vec![
            ("INTERCEPT", "ebpf".into()),
            ("EBPF_PIN_PATH", pins.as_str().to_string()),
            ("EBPF_ON_SHUTDOWN", "detach".into()),
        ],
        undone: "eBPF redirect detached",
    });
}

#[test]
fn restarting_the_agent_container_never_lets_a_workload_reach_the_real_service() {
    let _serial = serial();
    let pins = PinDir::new("image-restart");
    let pin_path = pins.as_str().to_string();
    restart_while_polling("restart", EBPF_RUN_FLAGS, move || {
        vec![
            ("INTERCEPT", "ebpf".into()),
            ("EBPF_PIN_PATH", pin_path.clone()),
            // The default: the redirect stays while the agent is away (fail closed).
            ("EBPF_ON_SHUTDOWN", "keep".into()),
        ]
    });
}

#[test]
fn restarting_the_agent_container_in_iptables_mode_with_keep_never_lets_a_workload_escape() {
    let _serial = serial();
    let _cleanup = AgentTableCleanup;
    restart_while_polling("restart-ipt", IPTABLES_RUN_FLAGS, || {
        vec![
            ("INTERCEPT", "iptables".into()),
            // The documented line for production: the rules stay while the agent is away.
            ("IPTABLES_ON_SHUTDOWN", "keep".into()),
        ]
    });
    assert!(agent_table_exists(), "kept after the last stop");
}

/// A workload polls its credentials five times a second while the agent container is stopped
/// and started: every poll gets its credentials or a refused connection, and nothing reaches
/// the catcher.
fn restart_while_polling(
    name: &str,
    flags: &[&str],
    mode: impl Fn() -> Vec<(&'static str, String)>,
) {
    let env = test_env();
    catcher().emulator.clear();
    let upstream = FakeUpstream::start();
    let aws = AwsCounter::start(&env.moto_url);
    let vars = |port, admin| {
        let mut vars = test_env_vars(&upstream, &aws, port, admin);
        vars.extend(mode());
        vars
    };
    let (agent, _) = AgentContainer::run_ready(name, flags, vars);
    let c = Container::start(
        &env,
        &format!("image-{name}"),
        None,
        &[("IAM_ROLE", "restart-role")],
    );
    assert_eq!(
        c.wget(&format!("{MD}/iam/security-credentials/restart-role"))
            .status,
        200
    );
    // The workload polls five times a second, recording what each poll got.
    let url = format!("{MD}/iam/security-credentials/restart-role");
    let out = c.exec(&[
        "sh",
        "-c",
        &format!(
            "(while :; do timeout 3 wget -S -q -O /dev/null {url} 2>&1 | head -n 1; sleep 0.2; done) \
             > /tmp/polls 2>&1 &"
        ),
    ]);
    assert!(out.status.success());
    std::thread::sleep(Duration::from_secs(1));
    run("docker", &["stop", "-t", "10", &agent.name]);
    std::thread::sleep(Duration::from_secs(2));
    run("docker", &["start", &agent.name]);
    eventually(Duration::from_secs(30), || {
        (agent.logs().matches("metadataproxy ready").count() >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("agent back: {}", agent.logs()));
    std::thread::sleep(Duration::from_secs(2));
    let _ = c.exec(&["sh", "-c", "kill $(pgrep -f 'while :') 2>/dev/null; true"]);
    let polls = String::from_utf8_lossy(&c.exec(&["cat", "/tmp/polls"]).stdout).into_owned();
    let lines: Vec<&str> = polls.lines().filter(|l| !l.trim().is_empty()).collect();
    let ok = lines.iter().filter(|l| l.contains("200 OK")).count();
    let refused = lines
        .iter()
        .filter(|l| l.contains("refused") || l.contains("can't connect"))
        .count();
    assert!(ok > 0 && refused > 0, "both answers and refusals: {polls}");
    assert_eq!(
        ok + refused,
        lines.len(),
        "only answers and refusals: {polls}"
    );
    let escaped = catcher().emulator.recorded();
    assert!(escaped.is_empty(), "reached the real address: {escaped:?}");
    // Stop it cleanly (the mode's shutdown policy), then remove it.
    run("docker", &["stop", "-t", "10", &agent.name]);
    drop(agent);
}
