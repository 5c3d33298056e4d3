//! Boot without a window, end to end as root on the real kernel and Docker engine: the agent
//! starts while Docker is not there yet (its `DOCKER_URL` names a socket that appears only
//! later), intercepts from the start, tells the service manager it is ready (`READY=1` on
//! `NOTIFY_SOCKET`) only once its nf_tables table is installed or its eBPF programs are
//! attached, and serves containers' credentials once Docker appears. The unit file passes
//! `systemd-analyze verify`.
//!
//! The table and the programs are host-wide, so these tests run one at a time.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use metadataproxy_tests::sinks::http_get;
use metadataproxy_tests::{
    agent_binary, agent_table_exists, attachments, catcher, eventually, serial, test_env, Agent,
    AgentTableCleanup, AwsCounter, Container, DockerSocket, FakeUpstream, PinDir,
};

const MD: &str = "http://169.254.169.254/latest/meta-data";

/// What a container sent to the catcher (the real metadata service's stand-in).
fn escapes() -> Vec<String> {
    catcher()
        .emulator
        .recorded()
        .iter()
        .map(|r| format!("{} {} from {:?}", r.method, r.path_and_query, r.peer))
        .collect()
}

/// A `NOTIFY_SOCKET` that runs `at_ready` the moment the first datagram arrives and hands
/// back the datagram and what `at_ready` found.
struct NotifyListener<T> {
    path: PathBuf,
    received: mpsc::Receiver<(String, T)>,
}

impl<T: Send + 'static> NotifyListener<T> {
    fn bind(name: &str, at_ready: impl FnOnce() -> T + Send + 'static) -> NotifyListener<T> {
        let path = std::env::temp_dir().join(format!("mp-test-notify-{name}.sock"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let (tx, received) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            if let Ok(n) = socket.recv(&mut buf) {
                // Checked before anything else: what was in place when READY arrived.
                let found = at_ready();
                let _ = tx.send((String::from_utf8_lossy(&buf[..n]).into_owned(), found));
            }
        });
        NotifyListener { path, received }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("utf-8")
    }

    fn wait(&self) -> (String, T) {
        self.received
            .recv_timeout(Duration::from_secs(30))
            .expect("a notification within 30 s")
    }
}

impl<T> Drop for NotifyListener<T> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A `DOCKER_URL` whose socket does not exist yet: [`DockerSocket::counting`] with the same
/// name creates it.
fn late_docker_url(name: &str) -> String {
    let socket = std::env::temp_dir().join(format!("mp-test-docker-{name}.sock"));
    let _ = std::fs::remove_file(&socket);
    format!("unix://{}", socket.display())
}

fn readyz(agent: &Agent) -> (u16, serde_json::Value) {
    let (status, body) = http_get(&agent.admin_addr(), "/readyz");
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("readyz JSON ({e}): {body}"));
    (status, v)
}

/// The agent of `vars` started with Docker out of its reach: ready (and notified) with its
/// interception in place, it intercepts a container's metadata request at once, and serves
/// the container's credentials once the Docker socket appears.
fn starts_before_docker(
    name: &str,
    mode_vars: &[(&str, &str)],
    at_ready: impl FnOnce() -> bool + Send + 'static,
) {
    let env = test_env();
    catcher().emulator.clear();
    let upstream = FakeUpstream::start();
    let aws = AwsCounter::start(&env.moto_url);
    let docker_url = late_docker_url(name);
    // The container exists (the shared dockerd is up) but the agent cannot see Docker yet:
    // what a restart-policy container is to an agent that is starting before dockerd.
    let role = format!("boot-{name}");
    let c = Container::start(&env, &format!("boot-{name}"), None, &[("IAM_ROLE", &role)]);

    let listener = NotifyListener::bind(name, at_ready);
    let mut vars = vec![
        ("DOCKER_URL", docker_url.as_str()),
        ("DEFAULT_ACCOUNT_ID", "123456789012"),
        ("CONTAINER_LOOKUP_TIMEOUT", "1s"),
        ("NOTIFY_SOCKET", listener.path()),
    ];
    vars.extend_from_slice(mode_vars);
    let agent = Agent::start(&upstream.url(), &aws.url(), &vars);
    let (message, in_place) = listener.wait();
    assert_eq!(message, "READY=1");
    assert!(
        in_place,
        "interception was not in place when READY=1 arrived"
    );
    let logs = agent.raw_logs();
    assert!(
        logs.contains("readiness sent to the service manager"),
        "{logs}"
    );

    let (status, ready) = readyz(&agent);
    assert_eq!(status, 503, "ready without Docker: {ready}");
    assert_eq!(ready["checks"]["docker"]["ok"], false, "{ready}");
    assert_eq!(ready["checks"]["interception"]["ok"], true, "{ready}");

    // Intercepted before Docker is reachable: the agent answers (it cannot name the
    // container yet), the real address never sees the request.
    let early = c.wget(&format!("{MD}/iam/security-credentials/{role}"));
    assert_ne!(early.status, 200, "credentials without Docker: {early:?}");
    assert_ne!(
        early.status, 0,
        "no answer at all: the agent should have answered"
    );
    assert_eq!(escapes(), Vec::<String>::new(), "reached the real address");

    let docker = DockerSocket::counting(name);
    assert_eq!(docker.url(), docker_url);
    let synced = eventually(Duration::from_secs(15), || {
        let (status, ready) = readyz(&agent);
        (status == 200).then_some(ready)
    });
    assert!(
        synced.is_some(),
        "not ready 15 s after Docker appeared: {:?}",
        readyz(&agent)
    );
    let r = c.wget(&format!("{MD}/iam/security-credentials/{role}"));
    assert_eq!(r.status, 200, "credentials once Docker is there: {r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("credentials JSON");
    assert_eq!(
        metadataproxy_tests::caller_identity(&env.moto_url, &v),
        format!("arn:aws:sts::123456789012:assumed-role/{role}/go-metadataproxy")
    );
    assert_eq!(escapes(), Vec::<String>::new(), "reached the real address");
}

#[test]
fn iptables_mode_intercepts_and_notifies_before_docker_and_serves_once_it_appears() {
    let _serial = serial();
    let _cleanup = AgentTableCleanup;
    assert!(
        !agent_table_exists(),
        "a table ip metadataproxy is already there (left by another run?)"
    );
    starts_before_docker(
        "iptables",
        &[
            ("INTERCEPT", "iptables"),
            ("IPTABLES_ON_SHUTDOWN", "remove"),
        ],
        agent_table_exists,
    );
}

#[test]
fn ebpf_mode_intercepts_and_notifies_before_docker_and_serves_once_it_appears() {
    let _serial = serial();
    let pins = PinDir::new("boot");
    assert_eq!(attachments("mp_connect4"), 0, "programs already attached");
    let pin_dir = pins.0.clone();
    starts_before_docker(
        "ebpf",
        &[
            ("INTERCEPT", "ebpf"),
            ("EBPF_PIN_PATH", pins.as_str()),
            ("EBPF_ON_SHUTDOWN", "detach"),
        ],
        move || {
            ["mp_connect4", "mp_connect6", "mp_sockops"]
                .iter()
                .all(|p| attachments(p) == 1)
                && pin_dir.join("mp_connect4_link_a").exists()
        },
    );
}

#[test]
fn classic_mode_notifies_an_abstract_socket_once_listening() {
    use std::os::linux::net::SocketAddrExt;
    let _serial = serial();
    let env = test_env();
    let upstream = FakeUpstream::start();
    let aws = AwsCounter::start(&env.moto_url);
    let name = format!("mp-test-notify-{}", std::process::id());
    let socket = UnixDatagram::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name"),
    )
    .expect("bind the abstract notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let notify = format!("@{name}");
    let agent = Agent::start(
        &upstream.url(),
        &aws.url(),
        &[
            ("NOTIFY_SOCKET", notify.as_str()),
            ("DOCKER_URL", &late_docker_url("classic")),
        ],
    );
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    // Listening when it said so.
    std::net::TcpStream::connect(("127.0.0.1", agent.port)).expect("the proxy port answers");
}

#[test]
fn the_systemd_unit_verifies_and_orders_the_agent_before_docker() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/metadataproxy.service");
    let text = std::fs::read_to_string(&unit).expect("the unit file");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(lines.contains(&"Type=notify"), "{text}");
    assert!(lines.contains(&"Before=docker.service"), "{text}");
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("After=") && l.contains("docker.service")
                || l.starts_with("Requires=") && l.contains("docker")
                || l.starts_with("BindsTo=")),
        "the agent must not wait for Docker: {text}"
    );
    // Debian's systemd package (on every machine the test command runs on) has it: fail, never
    // skip, without it.
    let analyze = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze (Debian's systemd package) to verify the unit");
    assert!(analyze.status.success());
    // `verify` checks that ExecStart exists: point it at the built agent.
    let dir = std::env::temp_dir().join(format!("mp-test-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("unit dir");
    let copy = dir.join("metadataproxy.service");
    std::fs::write(
        &copy,
        text.replace(
            "/usr/local/bin/metadataproxy",
            agent_binary().to_str().expect("utf-8"),
        ),
    )
    .expect("write the unit");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze verify");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
