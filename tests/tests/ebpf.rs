//! eBPF mode end to end, as root on the real kernel: the kernel program redirects containers'
//! metadata connects (no DNAT rule anywhere) and the agent checks that the peer IP and the
//! connecting cgroup agree. Escapes are made visible by the catcher on `169.254.169.254:80`
//! (loopback): every test asserts that it recorded nothing from a container.
//!
//! These tests attach to the root cgroup, so they run one at a time.

use std::path::PathBuf;
use std::time::Duration;

use metadataproxy_tests::{
    assert_no_escape, attachments, catcher, cgroup2_root, docker0_gateway, error_descriptions,
    eventually, map_entries, run, serial, test_env, Agent, AwsCounter, Container, FakeUpstream,
    Network, PinDir, TestEnv,
};

const MD: &str = "http://169.254.169.254/latest/meta-data";

/// An agent in eBPF mode with its own pins, and an empty catcher.
struct Setup {
    env: TestEnv,
    upstream: FakeUpstream,
    aws: AwsCounter,
    agent: Agent,
    pins: PinDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

fn ebpf_vars<'a>(pins: &'a PinDir, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut vars = vec![
        ("INTERCEPT", "ebpf"),
        ("EBPF_PIN_PATH", pins.as_str()),
        ("DEFAULT_ACCOUNT_ID", "123456789012"),
    ];
    vars.extend_from_slice(extra);
    vars
}

impl Setup {
    fn start(name: &str, extra: &[(&str, &str)]) -> Setup {
        let serial = serial();
        let env = test_env();
        catcher().emulator.clear();
        let upstream = FakeUpstream::start();
        let aws = AwsCounter::start(&env.moto_url);
        let pins = PinDir::new(name);
        let agent = Agent::start(&upstream.url(), &aws.url(), &ebpf_vars(&pins, extra));
        assert_eq!(attachments("mp_connect4"), 1, "one connect4 attachment");
        assert_eq!(attachments("mp_connect6"), 1, "one connect6 attachment");
        assert_eq!(attachments("mp_sockops"), 1, "one sockops attachment");
        Setup {
            env,
            upstream,
            aws,
            agent,
            pins,
            _serial: serial,
        }
    }

    fn container(&self, name: &str, network: Option<&str>, vars: &[(&str, &str)]) -> Container {
        Container::start(&self.env, name, network, vars)
    }

    /// The agent's address as containers reach it without the redirect.
    fn agent_url(&self) -> String {
        format!("http://{}:{}", docker0_gateway(), self.agent.port)
    }
}

/// What an upstream received besides the agent's own IMDSv2 token requests.
fn forwarded(rec: &[metadataproxy::builtin::Recorded]) -> Vec<metadataproxy::builtin::Recorded> {
    rec.iter()
        .filter(|r| !(r.method == "PUT" && r.path_and_query == "/latest/api/token"))
        .cloned()
        .collect()
}

/// The status of a GET from this (host) process, by curl.
fn http_code_from_host(url: &str) -> String {
    run(
        "curl",
        &[
            "-s",
            "--noproxy",
            "*",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ],
    )
}

fn creds_of(c: &Container, role: &str) -> serde_json::Value {
    let r = c.wget(&format!("{MD}/iam/security-credentials/{role}"));
    assert_eq!(r.status, 200, "{}: credentials for {role}", c.name);
    serde_json::from_str(&r.body).expect("credentials JSON")
}

#[test]
fn containers_on_default_bridge_and_user_network_get_credentials_through_the_kernel() {
    let s = Setup::start("redirect", &[]);
    let net = Network::create("ebpf-redirect", 21);
    let bridged = s.container("ebpf-bridge", None, &[("IAM_ROLE", "bridge-role")]);
    let user = s.container("ebpf-user", Some(&net.name), &[("IAM_ROLE", "user-role")]);
    for (c, role) in [(&bridged, "bridge-role"), (&user, "user-role")] {
        assert_eq!(
            c.wget(&format!("{MD}/iam/security-credentials/")).body,
            role
        );
        let v = creds_of(c, role);
        let arn = metadataproxy_tests::caller_identity(&s.env.moto_url, &v);
        assert_eq!(
            arn,
            format!("arn:aws:sts::123456789012:assumed-role/{role}/go-metadataproxy")
        );
        // Passthrough goes to the configured upstream, not to the real address.
        let id = c.wget(&format!("{MD}/instance-id"));
        assert_eq!((id.status, id.body.as_str()), (200, "i-0123456789abcdef0"));
        // An IPv6 socket to the IPv4-mapped address bypasses connect4: connect6 redirects it.
        let mapped =
            c.wget("http://[::ffff:169.254.169.254]/latest/meta-data/iam/security-credentials/");
        assert_eq!(
            (mapped.status, mapped.body.as_str()),
            (200, role),
            "{}",
            c.name
        );
    }
    assert_eq!(forwarded(&s.upstream.emulator.recorded()).len(), 2);
    for role in ["bridge-role", "user-role"] {
        assert_eq!(
            s.aws.count_matching("AssumeRole", &format!("%2F{role}&")),
            1
        );
    }
    // Every record was consumed when its connection was accepted: nothing accumulates.
    let maps = s.pins.0.join("maps-v1");
    assert_eq!(
        map_entries(&maps.join("MP_CONTAINER_PARENTS")),
        1,
        "the count works"
    );
    assert_eq!(map_entries(&maps.join("MP_SOCKETS")), 0);
    assert_eq!(map_entries(&maps.join("MP_CONNECTIONS")), 0);
    assert_no_escape();
}

#[test]
fn a_container_forging_another_containers_ip_is_refused() {
    let s = Setup::start("forged", &[]);
    let net = Network::create("ebpf-forged", 22);
    let victim = s.container(
        "ebpf-victim",
        Some(&net.name),
        &[("IAM_ROLE", "victim-role")],
    );
    // The victim gets its credentials before the attack.
    creds_of(&victim, "victim-role");
    let attacker = Container::start_privileged(
        &s.env,
        "ebpf-attacker",
        Some(&net.name),
        &[("IAM_ROLE", "attacker-role")],
        &["--cap-add", "NET_ADMIN"],
    );
    attacker.take_ip_of(&victim, &net.gateway);

    // Through the metadata address (redirected) and directly at the agent's address.
    for base in [
        MD.to_string(),
        format!("{}/latest/meta-data", s.agent_url()),
    ] {
        for path in [
            "iam/security-credentials/",
            "iam/security-credentials/victim-role",
            "iam/info",
        ] {
            let r = attacker.wget(&format!("{base}/{path}"));
            assert_eq!(r.status, 404, "{base}/{path}: {r:?}");
            assert!(!r.body.contains("AccessKeyId"));
        }
    }
    let mismatches = error_descriptions(&s.agent)
        .get("identity_mismatch")
        .copied()
        .unwrap_or(0);
    assert_eq!(mismatches, 6, "{}", s.agent.raw_logs());
    let warnings: Vec<_> = s
        .agent
        .logs()
        .into_iter()
        .filter(|l| l["level"] == "WARN" && l["by_ip"].is_string())
        .collect();
    assert_eq!(warnings.len(), 6);
    assert!(warnings[0]["by_ip"]
        .as_str()
        .unwrap()
        .contains("mp-test-ebpf-victim"));
    assert_eq!(warnings[5]["identity_mismatches_total"], 6);
    assert_no_escape();
}

#[test]
fn a_host_network_container_gets_its_own_role() {
    let s = Setup::start("hostnet", &[]);
    let c = s.container(
        "ebpf-hostnet",
        Some("host"),
        &[("IAM_ROLE", "hostnet-role")],
    );
    assert_eq!(
        c.wget(&format!("{MD}/iam/security-credentials/")).body,
        "hostnet-role"
    );
    let v = creds_of(&c, "hostnet-role");
    assert_eq!(
        metadataproxy_tests::caller_identity(&s.env.moto_url, &v),
        "arn:aws:sts::123456789012:assumed-role/hostnet-role/go-metadataproxy"
    );
    assert_no_escape();
}

#[test]
fn a_process_in_a_child_cgroup_of_a_container_is_that_container() {
    let s = Setup::start("child-cgroup", &[]);
    let c = s.container("ebpf-child", None, &[("IAM_ROLE", "child-role")]);
    // Indexed (with its cgroup) by the time it answers from its own cgroup.
    assert_eq!(
        c.wget(&format!("{MD}/iam/security-credentials/")).body,
        "child-role"
    );
    // A child cgroup of the container's own (as systemd inside a container, or `docker exec`
    // in some setups, make), holding a process in the container's network namespace.
    let pid = run(
        "docker",
        &["inspect", "--format", "{{.State.Pid}}", &c.name],
    );
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .expect("container cgroup")
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("a cgroup2 line");
    let child = cgroup2_root()
        .join(own.trim_start_matches('/'))
        .join("mp-test-child");
    std::fs::create_dir(&child).expect("create the child cgroup");
    let procs = child.join("cgroup.procs");
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "echo $$ > \"$1\" && grep '^0::' /proc/self/cgroup && \
             exec nsenter -t \"$2\" -n -- curl -s --max-time 5 \"$3\"",
            "sh",
            procs.to_str().expect("path"),
            &pid,
            &format!("{MD}/iam/security-credentials/"),
        ])
        .output()
        .expect("run in the child cgroup");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::remove_dir(&child);
    let (cgroup, body) = text.split_once('\n').unwrap_or((&text, ""));
    assert!(
        cgroup.ends_with("/mp-test-child"),
        "ran in {cgroup}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(body, "child-role", "{text}");
    assert_no_escape();
}

#[test]
fn a_host_process_is_not_redirected_and_gets_no_container_credentials() {
    let s = Setup::start("hostproc", &[]);
    // This test process is a host process: its connect is not redirected, so it reaches the
    // catcher (standing in for the real service), and the agent never sees it.
    let out = http_code_from_host(&format!("{MD}/iam/security-credentials/"));
    assert_eq!(out, "404", "the catcher serves no IAM paths");
    let reached: Vec<String> = catcher()
        .emulator
        .recorded()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(reached, ["/latest/meta-data/iam/security-credentials/"]);
    assert!(
        !s.agent.logs().iter().any(|l| l["message"] == "request"),
        "{}",
        s.agent.raw_logs()
    );
    // A host process that connects to the agent directly is tagged, and is not a container.
    let direct = http_code_from_host(&format!(
        "{}/latest/meta-data/iam/security-credentials/",
        s.agent_url()
    ));
    assert_eq!(direct, "404");
    // The agent's log reaches the test through a pipe and a reader thread: wait for the line.
    let found = eventually(Duration::from_secs(5), || {
        error_descriptions(&s.agent)
            .get("could_not_find_container")
            .copied()
    });
    assert_eq!(found, Some(1), "{}", s.agent.raw_logs());
}

#[test]
fn the_agents_own_upstream_calls_are_not_redirected_back_to_it() {
    let _serial = serial();
    let env = test_env();
    catcher().emulator.clear();
    let aws = AwsCounter::start(&env.moto_url);
    let pins = PinDir::new("own-calls");
    // The agent runs in a cgroup under the container parent, where every metadata connect is
    // redirected, and forwards to the real address: the catcher must receive it.
    let cgroup: PathBuf = cgroup2_root().join("docker/mp-test-agent");
    let agent = Agent::start_in(
        Some(&cgroup),
        "http://169.254.169.254",
        &aws.url(),
        &ebpf_vars(&pins, &[]),
    );
    let c = Container::start(&env, "ebpf-owncalls", None, &[]);
    let r = c.wget(&format!("{MD}/instance-id"));
    assert_eq!((r.status, r.body.as_str()), (200, "i-0123456789abcdef0"));
    let all = catcher().emulator.recorded();
    assert!(
        all.iter()
            .any(|r| r.method == "PUT" && r.path_and_query == "/latest/api/token"),
        "the agent's own IMDSv2 token request reached the real address too: {all:?}"
    );
    let rec = forwarded(&all);
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0].path_and_query, "/latest/meta-data/instance-id");
    // From the agent (a host address), not from the container.
    assert_ne!(rec[0].peer.expect("peer").ip().to_string(), c.ip, "{rec:?}");
    drop(c);
    drop(agent);
    let _ = std::fs::remove_dir(&cgroup);
}

#[test]
fn a_container_calling_at_start_gets_its_credentials() {
    let s = Setup::start("atstart", &[]);
    let name = "mp-test-ebpf-atstart";
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", name])
        .output();
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--name",
            name,
            "-e",
            "IAM_ROLE=early-role",
            &s.env.image,
            "timeout",
            "10",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("{MD}/iam/security-credentials/early-role"),
        ])
        .output()
        .expect("docker run");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("\"AccessKeyId\""),
        "{body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_escape();
}

#[test]
fn after_sigkill_containers_are_refused_and_a_restart_takes_over() {
    let mut s = Setup::start("restart", &[]);
    let c = s.container("ebpf-restart", None, &[("IAM_ROLE", "restart-role")]);
    creds_of(&c, "restart-role");
    s.agent.stop("-KILL");
    // Still redirected to the dead agent: refused, never the real service.
    let r = c.wget(&format!("{MD}/iam/security-credentials/restart-role"));
    assert_eq!(r.status, 0, "no answer while the agent is down: {r:?}");
    assert_eq!(c.wget(&format!("{MD}/instance-id")).status, 0);
    assert_eq!(
        attachments("mp_connect4"),
        1,
        "the pinned programs stay attached"
    );

    let port = s.agent.port.to_string();
    let agent = Agent::start(
        &s.upstream.url(),
        &s.aws.url(),
        &ebpf_vars(&s.pins, &[("PORT", &port)]),
    );
    assert_eq!(
        attachments("mp_connect4"),
        1,
        "exactly one attachment after the restart"
    );
    assert_eq!(attachments("mp_sockops"), 1);
    creds_of(&c, "restart-role");
    drop(agent);
    assert_no_escape();
}

#[test]
fn clean_shutdown_keeps_or_detaches_as_configured() {
    let mut keep = Setup::start("keep", &[]);
    assert!(keep.agent.stop("-TERM").success());
    assert_eq!(
        attachments("mp_connect4"),
        1,
        "EBPF_ON_SHUTDOWN=keep stays attached"
    );
    let c = keep.container("ebpf-keep", None, &[("IAM_ROLE", "keep-role")]);
    assert_eq!(c.wget(&format!("{MD}/iam/security-credentials/")).status, 0);
    drop(c);
    drop(keep);
    assert!(
        eventually(Duration::from_secs(5), || (attachments("mp_connect4") == 0)
            .then_some(()))
        .is_some(),
        "removing the pins detaches"
    );

    let mut detach = Setup::start("detach", &[("EBPF_ON_SHUTDOWN", "detach")]);
    assert!(detach.agent.stop("-TERM").success());
    assert_eq!(
        attachments("mp_connect4"),
        0,
        "EBPF_ON_SHUTDOWN=detach detaches"
    );
    assert_eq!(attachments("mp_sockops"), 0);
    assert!(!detach.pins.0.exists());
    assert_no_escape();
}

#[test]
fn a_container_parent_that_appears_after_start_up_is_redirected() {
    let parent = cgroup2_root().join("mp-test-late.slice");
    let child = parent.join("child");
    let _ = std::fs::remove_dir(&child);
    let _ = std::fs::remove_dir(&parent);
    let s = Setup::start(
        "lateparent",
        &[("EBPF_CONTAINER_CGROUPS", "docker,mp-test-late.slice")],
    );
    // Created after the agent started, like a systemd slice made by the first container.
    std::fs::create_dir_all(&child).expect("create cgroups");
    eventually(Duration::from_secs(10), || {
        s.agent
            .logs()
            .iter()
            .any(|l| {
                l["message"]
                    == "container parent cgroup appeared: containers under it are redirected"
            })
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the agent saw the new parent: {}", s.agent.raw_logs()));
    // A process under it is redirected to the agent (which finds no container: 404), not
    // sent to the real address.
    let code = run(
        "sh",
        &[
            "-c",
            "echo $$ > \"$1/cgroup.procs\" && exec curl -s --noproxy '*' -m 5 -o /dev/null -w '%{http_code}' http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "sh",
            child.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, "404");
    assert_eq!(
        error_descriptions(&s.agent).get("could_not_find_container"),
        Some(&1),
        "{}",
        s.agent.raw_logs()
    );
    assert_no_escape();
    let _ = std::fs::remove_dir(&child);
    let _ = std::fs::remove_dir(&parent);
}

#[test]
fn the_sdk_in_a_containers_namespaces_gets_its_credentials_with_tokens_required() {
    let s = Setup::start("imdsv2", &[("IMDSV2", "required")]);
    let a = s.container("ebpf-imdsv2-a", None, &[("IAM_ROLE", "sdk-role-a")]);
    let b = s.container("ebpf-imdsv2-b", None, &[("IAM_ROLE", "sdk-role-b")]);
    // The SDK's provider, in A's network namespace and cgroup: redirected by the kernel.
    let out = a.run_inside(env!("CARGO_BIN_EXE_imds-client"), &[]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.agent.raw_logs()
    );
    let creds: serde_json::Value = serde_json::from_slice(&out.stdout).expect("credentials");
    assert!(
        metadataproxy_tests::caller_identity(&s.env.moto_url, &creds)
            .contains(":assumed-role/sdk-role-a/")
    );
    // Without a token: 401. A's token (bound to A's cgroup's container) from B: 401.
    assert_eq!(
        a.wget(&format!("{MD}/iam/security-credentials/")).status,
        401
    );
    let (status, _, token) = a.curl(&[
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
        "http://169.254.169.254/latest/api/token",
    ]);
    assert_eq!(status, 200);
    let header = format!("X-aws-ec2-metadata-token: {token}");
    let url = format!("{MD}/iam/security-credentials/");
    let (status, _, body) = a.curl(&["-H", &header, &url]);
    assert_eq!((status, body.as_str()), (200, "sdk-role-a"));
    let (status, _, _) = b.curl(&["-H", &header, &url]);
    assert_eq!(status, 401);
    assert_no_escape();
}

/// The cgroup id of `c`'s process: the inode of its cgroup2 directory, as the kernel's
/// `bpf_get_current_cgroup_id` gives it.
fn cgroup_id_of(c: &Container) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let pid = run(
        "docker",
        &["inspect", "--format", "{{.State.Pid}}", &c.name],
    );
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .expect("container cgroup")
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("a cgroup2 line");
    std::fs::metadata(cgroup2_root().join(own.trim_start_matches('/')))
        .expect("the container's cgroup directory")
        .ino()
}

/// The agent's log lines from the kernel program (target `metadataproxy::kernel`).
fn kernel_lines(agent: &Agent) -> Vec<String> {
    agent
        .logs()
        .iter()
        .filter(|l| l["target"] == "metadataproxy::kernel")
        .map(|l| l["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `program` as the verifier left it (`bpftool prog dump xlated`), through its pinned link.
fn xlated(pins: &PinDir, program: &str) -> String {
    let link = ["a", "b"]
        .iter()
        .map(|s| pins.0.join(format!("{program}_link_{s}")))
        .find(|p| p.exists())
        .expect("a pinned link");
    let info: serde_json::Value = serde_json::from_str(&run(
        "bpftool",
        &[
            "-j",
            "link",
            "show",
            "pinned",
            link.to_str().expect("utf-8"),
        ],
    ))
    .expect("bpftool JSON");
    let id = info["prog_id"].as_u64().expect("prog_id").to_string();
    run("bpftool", &["prog", "dump", "xlated", "id", &id])
}

#[test]
fn at_debug_the_kernel_program_logs_its_decisions_with_the_cgroup_id() {
    let s = Setup::start("kernel-log", &[("LOG_LEVEL", "debug")]);
    let c = s.container("ebpf-kernel-log", None, &[("IAM_ROLE", "log-role")]);
    assert_eq!(
        c.wget(&format!("{MD}/iam/security-credentials/")).body,
        "log-role"
    );
    // No IPv6 metadata address to redirect to: connect6 refuses it (before any route lookup).
    let v6 = c.wget("http://[fd00:ec2::254]/latest/meta-data/");
    assert_ne!(v6.status, 200, "{v6:?}");
    let id = cgroup_id_of(&c);
    let redirect = format!("redirect 169.254.169.254:80 to {}:", docker0_gateway());
    let cgroup = format!("cgroup_id={id} ");
    // The agent's log reaches the test through a pipe and a reader thread: wait for the lines.
    let found = eventually(Duration::from_secs(10), || {
        let lines = kernel_lines(&s.agent);
        let redirected = lines
            .iter()
            .any(|l| l.starts_with(&redirect) && l.contains(&cgroup));
        let refused = lines
            .iter()
            .any(|l| l.starts_with("refuse [fd00:ec2::254]:80 ") && l.contains(&cgroup));
        (redirected && refused).then_some(())
    });
    assert!(
        found.is_some(),
        "no redirect and refusal lines for cgroup {id}: {:#?}",
        kernel_lines(&s.agent)
    );
    // The logging code was verified and kept: the program writes to the log ring buffer.
    assert!(xlated(&s.pins, "mp_connect4").contains("bpf_ringbuf_reserve"));
    assert_no_escape();
}

#[test]
fn at_info_the_kernel_program_logs_nothing_and_its_logging_code_is_gone() {
    let s = Setup::start("kernel-log-info", &[("LOG_LEVEL", "info")]);
    let c = s.container("ebpf-kernel-quiet", None, &[("IAM_ROLE", "quiet-role")]);
    assert_eq!(
        c.wget(&format!("{MD}/iam/security-credentials/")).body,
        "quiet-role"
    );
    let v6 = c.wget("http://[fd00:ec2::254]/latest/meta-data/");
    assert_ne!(v6.status, 200, "{v6:?}");
    // Loaded with aya-log's level at 0: the verifier removed every logging branch, so the
    // programs cannot write a record, and a connect costs what it did without them.
    for program in ["mp_connect4", "mp_connect6", "mp_sockops"] {
        let code = xlated(&s.pins, program);
        assert!(!code.contains("bpf_ringbuf"), "{program}:\n{code}");
    }
    // The request was logged (audit lines are written at info): the log was read up to it.
    let audited = eventually(Duration::from_secs(10), || {
        s.agent
            .logs()
            .iter()
            .any(|l| l["message"] == "request")
            .then_some(())
    });
    assert!(audited.is_some(), "{}", s.agent.raw_logs());
    assert_eq!(kernel_lines(&s.agent), Vec::<String>::new());
    assert_no_escape();
}
