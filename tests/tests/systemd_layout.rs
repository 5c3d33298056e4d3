//! eBPF mode on the systemd cgroup layout, end to end on the real kernel and Docker engine.
//!
//! dockerd here uses the cgroupfs driver; the systemd driver's layout is reproduced without
//! systemd: a container's processes are moved into `<cgroup2>/system.slice/docker-<id>.scope`,
//! beside a "host service" process in `system.slice/mp-test-host.service` and a process in a
//! cgroup of neither shape. The agent, started with the default `EBPF_CONTAINER_CGROUPS=auto`,
//! must find the layout from the containers' own cgroups, redirect the container from its
//! first connect, give the host service the instance's own metadata (the upstream, untouched),
//! and give nobody else anything of the host's. Escapes are made visible by the catcher on
//! `169.254.169.254:80`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use metadataproxy_tests::{
    assert_no_escape, catcher, cgroup2_root, eventually, run, serial, test_env, Agent, AwsCounter,
    Container, FakeUpstream, PinDir, TestEnv,
};

/// A cgroup directory made for the test (or already there), removed at the end if the test
/// made it and it is empty by then.
struct CgroupDir {
    path: PathBuf,
    made: bool,
}

impl CgroupDir {
    fn ensure(path: PathBuf) -> CgroupDir {
        let made = !path.exists();
        if made {
            std::fs::create_dir(&path)
                .unwrap_or_else(|e| panic!("create cgroup {}: {e}", path.display()));
        }
        CgroupDir { path, made }
    }

    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        if !self.made {
            return;
        }
        // The processes of a removed container take a moment to leave.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.path.display());
    }
}

/// A container whose processes were moved to `system.slice/docker-<id>.scope`, as Docker's
/// systemd driver places them. Fields drop in order: the container, then its scope.
struct MovedContainer {
    container: Container,
    _scope: CgroupDir,
    scope_path: String,
}

fn container_in_system_slice(
    env: &TestEnv,
    slice: &CgroupDir,
    name: &str,
    role: &str,
) -> MovedContainer {
    let container = Container::start(env, name, None, &[("IAM_ROLE", role)]);
    let id = run(
        "docker",
        &["inspect", "--format", "{{.Id}}", &container.name],
    );
    let pid = run(
        "docker",
        &["inspect", "--format", "{{.State.Pid}}", &container.name],
    );
    let root = cgroup2_root();
    let from = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("a cgroup2 line");
    let scope_name = format!("docker-{id}.scope");
    let scope = CgroupDir::ensure(slice.join(&scope_name));
    let procs =
        std::fs::read_to_string(root.join(from.trim_start_matches('/')).join("cgroup.procs"))
            .unwrap();
    for p in procs.lines() {
        std::fs::write(scope.path.join("cgroup.procs"), p).expect("move a container process");
    }
    let scope_path = format!("/system.slice/{scope_name}");
    let now = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(now.contains(&format!("0::{scope_path}")), "{now}");
    MovedContainer {
        container,
        _scope: scope,
        scope_path,
    }
}

/// Runs `program` on the host (host network) as a process of the cgroup `dir`.
fn in_cgroup(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new("sh")
        .args([
            "-c",
            "echo $$ > \"$1/cgroup.procs\" && shift && exec \"$@\"",
            "sh",
        ])
        .arg(dir)
        .arg(program)
        .args(args)
        .output()
        .expect("run in a cgroup");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn curl_in(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["-s", "--noproxy", "*", "-m", "5"];
    all.extend_from_slice(args);
    in_cgroup(dir, "curl", &all)
}

const MD: &str = "http://169.254.169.254/latest/meta-data";

#[test]
fn containers_in_system_slice_are_redirected_and_host_services_keep_the_instance() {
    let _serial = serial();
    let env = test_env();
    catcher().emulator.clear();
    let root = cgroup2_root();
    let slice = CgroupDir::ensure(root.join("system.slice"));
    let app = container_in_system_slice(&env, &slice, "sd-app", "sd-role");

    let upstream = FakeUpstream::start();
    upstream.emulator.require_tokens(true);
    let aws = AwsCounter::start(&env.moto_url);
    let pins = PinDir::new("sdlayout");
    // Default EBPF_CONTAINER_CGROUPS (auto): the layout comes from the container's cgroup.
    let agent = Agent::start(
        &upstream.url(),
        &aws.url(),
        &[
            ("INTERCEPT", "ebpf"),
            ("EBPF_PIN_PATH", pins.as_str()),
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
        ],
    );
    let settled = agent
        .logs()
        .into_iter()
        .find(|l| l["message"] == "container cgroups settled")
        .unwrap_or_else(|| panic!("{}", agent.raw_logs()));
    assert!(
        settled["container_parents"]
            .as_str()
            .unwrap()
            .split(',')
            .any(|p| p == "system.slice"),
        "{settled}"
    );

    // The container: redirected, its own role.
    let (status, _, body) = app
        .container
        .curl(&[&format!("{MD}/iam/security-credentials/sd-role")]);
    assert_eq!(status, 200, "{body} {}", agent.raw_logs());
    assert!(body.contains("\"AccessKeyId\""), "{body}");

    // A host service in the same slice: redirected too, and forwarded as it was sent, IMDSv2
    // token included: it keeps the instance's metadata and role.
    let service = CgroupDir::ensure(slice.join("mp-test-host.service"));
    let token = curl_in(
        &service.path,
        &[
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
            "http://169.254.169.254/latest/api/token",
        ],
    );
    assert!(!token.is_empty(), "{}", agent.raw_logs());
    let id = curl_in(
        &service.path,
        &[
            "-H",
            &format!("X-aws-ec2-metadata-token: {token}"),
            &format!("{MD}/instance-id"),
        ],
    );
    assert!(id.starts_with("i-"), "{id:?} {}", agent.raw_logs());
    let code = curl_in(
        &service.path,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("X-aws-ec2-metadata-token: {token}"),
            &format!("{MD}/iam/security-credentials/"),
        ],
    );
    assert_eq!(code, "404", "the emulated instance serves no IAM paths");
    let reached: Vec<String> = upstream
        .emulator
        .recorded()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect();
    for want in [
        "PUT /latest/api/token",
        "GET /latest/meta-data/instance-id",
        "GET /latest/meta-data/iam/security-credentials/",
    ] {
        assert!(
            reached.iter().any(|r| r == want),
            "{want} did not reach the instance: {reached:?}"
        );
    }
    // The log reaches the test through a pipe: wait for the three lines.
    let host_lines = eventually(Duration::from_secs(5), || {
        let n = agent
            .logs()
            .iter()
            .filter(|l| l["handler"] == "host-service")
            .count();
        (n >= 3).then_some(n)
    });
    assert_eq!(host_lines, Some(3), "{}", agent.raw_logs());

    // A cgroup in the slice that is neither a container's scope nor a service: no one's
    // credentials, and its IAM requests never reach the instance.
    let odd = CgroupDir::ensure(slice.join("mp-test-odd.scope"));
    let before = upstream.emulator.recorded().len();
    let code = curl_in(
        &odd.path,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{MD}/iam/security-credentials/"),
        ],
    );
    assert_eq!(code, "404");
    assert!(
        upstream.emulator.recorded()[before..]
            .iter()
            .all(|r| !r.path_and_query.contains("/iam/")),
        "{:?}",
        upstream.emulator.recorded()
    );
    assert_no_escape();
    drop(agent);
    drop(odd);
    drop(service);
    drop(app);
}

#[test]
fn an_explicit_list_that_misses_the_containers_refuses_to_start_naming_them() {
    let _serial = serial();
    let env = test_env();
    let root = cgroup2_root();
    let slice = CgroupDir::ensure(root.join("system.slice"));
    let app = container_in_system_slice(&env, &slice, "sd-refused", "r");
    let pins = PinDir::new("sdrefused");
    // The old default, which misses system.slice.
    let stderr = Agent::start_up_failure(
        &[],
        &[
            ("INTERCEPT", "ebpf"),
            ("EBPF_PIN_PATH", pins.as_str()),
            ("EBPF_CONTAINER_CGROUPS", "docker,docker.slice"),
            ("HOST", "0.0.0.0"),
            ("DOCKER_URL", "unix:///var/run/docker.sock"),
            ("AWS_ENDPOINT_URL", &env.moto_url),
        ],
    );
    assert!(stderr.contains(&app.scope_path), "{stderr}");
    assert!(stderr.contains("EBPF_CONTAINER_CGROUPS"), "{stderr}");
    assert!(
        !Path::new(pins.as_str()).join("mp_connect4_link_a").exists(),
        "nothing attached"
    );
    drop(app);
}
