//! Fixtures for end-to-end tests against real components: the agent binary as a process, a
//! real Docker engine (through the `docker` CLI), moto as STS and IAM, real iptables rules,
//! and the built-in emulator as a recording upstream.
//!
//! The test command (`scripts/test.sh`) starts dockerd and moto and exports `MP_TEST_*`;
//! without them these tests fail with a message saying so (they never skip).
//!
//! Everything a test creates is named `mp-test-*` and removed when its guard is dropped.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metadataproxy::builtin::Emulator;
use metadataproxy::config::BuiltinValues;
use metadataproxy::testing::{clean_command, TEST_SDK};
use tokio::runtime::Runtime;

pub mod bench;
pub mod docker;
pub mod podman;
pub mod readme;
pub mod sdk;
pub mod sinks;

pub use docker::DockerSocket;

/// One runtime for every async fixture of a test binary.
pub fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// What the test command provides.
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// moto's URL (STS and IAM).
    pub moto_url: String,
    /// The busybox image containers run.
    pub image: String,
}

/// Reads the test command's environment; panics (never skips) when it is missing.
pub fn test_env() -> TestEnv {
    let get = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!(
                "{k} is not set: end-to-end tests need the real Docker engine and moto that \
                 scripts/test.sh installs and starts; run `bash scripts/test.sh` (as root)"
            )
        })
    };
    let env = TestEnv {
        moto_url: get("MP_TEST_MOTO_URL"),
        image: get("MP_TEST_IMAGE"),
    };
    let ping = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
        .expect("docker CLI");
    assert!(
        ping.status.success(),
        "the Docker engine does not answer: {}",
        String::from_utf8_lossy(&ping.stderr)
    );
    env
}

/// Runs a command, panicking with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The agent binary built by `cargo build -p metadataproxy` in this target directory.
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/metadataproxy
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("metadataproxy"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build the agent first (`cargo build -p metadataproxy`; the test \
         command does)",
        bin.display()
    );
    bin
}

/// `wrapper` (a program that runs its last argument: `setpriv ...`, `sh -c ...`), then the
/// agent binary.
fn agent_argv(mut wrapper: Vec<OsString>) -> Vec<OsString> {
    wrapper.push(agent_binary().into());
    wrapper
}

/// The built-in emulator served on loopback, recording what reaches it.
#[derive(Debug)]
pub struct FakeUpstream {
    /// The emulator and its record.
    pub emulator: Emulator,
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    /// Serves a fresh emulator on `127.0.0.1`, any port.
    pub fn start() -> FakeUpstream {
        Self::start_on("127.0.0.1:0".parse().expect("addr"))
    }

    /// Serves a fresh emulator on `addr`.
    pub fn start_on(addr: SocketAddr) -> FakeUpstream {
        Self::serve(addr, BuiltinValues::default())
    }

    /// Serves a fresh emulator with `values` (another region, ...) on `127.0.0.1`, any port.
    pub fn start_with(values: BuiltinValues) -> FakeUpstream {
        Self::serve("127.0.0.1:0".parse().expect("addr"), values)
    }

    fn serve(addr: SocketAddr, values: BuiltinValues) -> FakeUpstream {
        let emulator = Emulator::new(values);
        let _enter = rt().enter();
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let task = emulator.serve(listener);
        FakeUpstream {
            emulator,
            addr,
            task,
        }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP listener on 127.0.0.1 that records every connection made to it (the peer and the
/// first bytes it sent, read for up to a second) and answers nothing: where something must
/// never connect, a count that a test can hold at zero.
#[derive(Debug)]
pub struct ConnectionRecorder {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectionRecorder {
    /// Listens on a free port.
    pub fn start() -> ConnectionRecorder {
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind recorder");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = rt().spawn(async move {
            use tokio::io::AsyncReadExt;
            while let Ok((mut stream, peer)) = listener.accept().await {
                // Counted at once; what it sent is filled in when it arrives.
                let at = {
                    let mut record = record.lock().expect("lock");
                    record.push(format!("from {peer}"));
                    record.len() - 1
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 512];
                    let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(0);
                    let first_line = String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    record.lock().expect("lock")[at] = format!("from {peer}: {first_line:?}");
                });
            }
        });
        ConnectionRecorder { addr, seen, task }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One line per connection so far: the peer and the first line it sent.
    pub fn connections(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for ConnectionRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A forwarding proxy in front of moto that counts the AWS actions passing through it.
#[derive(Debug)]
pub struct AwsCounter {
    /// Where the agent should send its STS and IAM calls.
    pub addr: SocketAddr,
    actions: Arc<Mutex<Vec<(String, String)>>>,
    scopes: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AwsCounter {
    /// A counter forwarding to `moto_url`.
    pub fn start(moto_url: &str) -> AwsCounter {
        Self::start_on(moto_url, "127.0.0.1")
    }

    /// A counter forwarding to `moto_url`, listening on `ip` (any port): a bridge's address
    /// makes moto reachable from that bridge's containers.
    pub fn start_on(moto_url: &str, ip: &str) -> AwsCounter {
        let target: http::Uri = moto_url.parse().expect("moto URL");
        let actions = Arc::new(Mutex::new(Vec::new()));
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind((ip, 0)))
            .unwrap_or_else(|e| panic!("bind the counter on {ip}: {e}"));
        let addr = listener.local_addr().expect("addr");
        let recorded = actions.clone();
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let signed = scopes.clone();
        let task = rt().spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let client = client.clone();
                let target = target.clone();
                let recorded = recorded.clone();
                let signed = signed.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let client = client.clone();
                        let target = target.clone();
                        let recorded = recorded.clone();
                        let signed = signed.clone();
                        async move {
                            let (mut parts, body) = req.into_parts();
                            // `AWS4-HMAC-SHA256 Credential=<key>/<date>/<region>/<service>/...`
                            let scope = parts
                                .headers
                                .get(http::header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.split("Credential=").nth(1))
                                .and_then(|v| v.split(',').next())
                                .unwrap_or("unsigned")
                                .to_string();
                            signed.lock().expect("lock").push(scope);
                            let body = body.collect().await?.to_bytes();
                            let form = String::from_utf8_lossy(&body);
                            let action = form
                                .split('&')
                                .find_map(|kv| kv.strip_prefix("Action="))
                                .unwrap_or("?")
                                .to_string();
                            recorded
                                .lock()
                                .expect("lock")
                                .push((action, form.into_owned()));
                            let pq = parts
                                .uri
                                .path_and_query()
                                .map(|p| p.as_str().to_string())
                                .unwrap_or_else(|| "/".into());
                            parts.uri =
                                format!("http://{}{pq}", target.authority().expect("authority"))
                                    .parse()
                                    .expect("uri");
                            let resp = client
                                .request(http::Request::from_parts(parts, Full::new(body)))
                                .await
                                .expect("moto answers");
                            let (parts, body) = resp.into_parts();
                            let body = body.collect().await?.to_bytes();
                            Ok::<_, hyper::Error>(http::Response::from_parts(
                                parts,
                                Full::new(body),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        AwsCounter {
            addr,
            actions,
            scopes,
            task,
        }
    }

    /// The SigV4 credential scope of every call so far, in order:
    /// `<access key id>/<date>/<region>/<service>/aws4_request` (`unsigned` for a call
    /// without one): who signed it, for which region.
    pub fn credential_scopes(&self) -> Vec<String> {
        self.scopes.lock().expect("lock").clone()
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many calls of `action` (e.g. `AssumeRole`) passed through.
    pub fn count(&self, action: &str) -> usize {
        self.actions
            .lock()
            .expect("lock")
            .iter()
            .filter(|(a, _)| a == action)
            .count()
    }

    /// How many calls of `action` had a form body containing `needle` (e.g.
    /// `role%2Fmy-role&`, form-encoded).
    pub fn count_matching(&self, action: &str, needle: &str) -> usize {
        self.forms(action)
            .iter()
            .filter(|f| f.contains(needle))
            .count()
    }

    /// The form bodies of the `action` calls, in order.
    pub fn forms(&self, action: &str) -> Vec<String> {
        self.actions
            .lock()
            .expect("lock")
            .iter()
            .filter(|(a, _)| a == action)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

impl Drop for AwsCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The agent binary, running.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    /// The port it listens on (all addresses).
    pub port: u16,
    /// The admin listener's port on 127.0.0.1 (`None` with `ADMIN_ADDR=off`).
    pub admin_port: Option<u16>,
    /// The container credentials endpoint's port (`None` with
    /// `CONTAINER_CREDENTIALS_PORT=off`).
    pub container_port: Option<u16>,
    logs: Arc<Mutex<Vec<String>>>,
    /// The directory of the agent's own token key file, made for it (removed on drop).
    key_dir: Option<PathBuf>,
}

impl Agent {
    /// Starts the agent on `0.0.0.0`, any port, JSON logs, with its STS/IAM calls going to
    /// `aws_url` and `vars` on top. The AWS SDK gets static test credentials and cannot
    /// look anything up elsewhere.
    pub fn start(upstream_url: &str, aws_url: &str, vars: &[(&str, &str)]) -> Agent {
        Self::start_in(None, upstream_url, aws_url, vars)
    }

    /// Like [`Agent::start`], with the agent's process placed in the cgroup2 directory
    /// `cgroup` (created if missing) before it runs.
    pub fn start_in(
        cgroup: Option<&std::path::Path>,
        upstream_url: &str,
        aws_url: &str,
        vars: &[(&str, &str)],
    ) -> Agent {
        // `sh` moves itself into the cgroup, then becomes the agent.
        let wrapper: Vec<OsString> = match cgroup {
            None => Vec::new(),
            Some(dir) => {
                std::fs::create_dir_all(dir).expect("create the agent's cgroup");
                let script = "echo $$ > \"$1/cgroup.procs\" && exec \"$2\"";
                vec![
                    "sh".into(),
                    "-c".into(),
                    script.into(),
                    "sh".into(),
                    dir.into(),
                ]
            }
        };
        let settings = [
            ("HOST", "0.0.0.0"),
            ("PORT", "0"),
            ("LOG_FORMAT", "json"),
            ("LOG_LEVEL", "debug"),
            ("METADATA_URL", upstream_url),
            ("DOCKER_URL", "unix:///var/run/docker.sock"),
            ("AWS_ENDPOINT_URL", aws_url),
            ("ADMIN_ADDR", "127.0.0.1:0"),
            ("CONTAINER_CREDENTIALS_PORT", "0"),
        ];
        Self::spawn(&agent_argv(wrapper), &[TEST_SDK, &settings, vars].concat())
    }

    /// Starts the agent binary with `args` and an environment of `env` only, as a user would
    /// run it from a shell (no test credentials, no endpoints), but for two settings the
    /// fixture needs: JSON logs (which it reads) and an admin listener on a free port.
    pub fn launch(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut argv = agent_argv(Vec::new());
        argv.extend(args.iter().map(OsString::from));
        // Through the environment, so that `args` stay as the docs write them.
        let fixture = [
            ("LOG_FORMAT", "json"),
            ("ADMIN_ADDR", "127.0.0.1:0"),
            ("CONTAINER_CREDENTIALS_PORT", "0"),
        ];
        Self::spawn(&argv, &[&fixture, env].concat())
    }

    /// Runs `wrapper` (e.g. `setpriv ...`; none: nothing) and the agent binary with the test
    /// SDK settings, the built-in upstream, no listener or key file of consequence and `vars`
    /// on top, expecting it to refuse to start: its standard error. Fails if it starts (is
    /// still running after 20 s) or exits 0.
    pub fn start_up_failure(wrapper: &[&str], vars: &[(&str, &str)]) -> String {
        let argv = agent_argv(wrapper.iter().map(OsString::from).collect());
        let settings = [
            ("PORT", "0"),
            ("ADMIN_ADDR", "off"),
            ("CONTAINER_CREDENTIALS_PORT", "off"),
            ("TOKEN_KEY_FILE", "none"),
            ("METADATA_URL", "builtin"),
        ];
        let mut child = clean_command(&argv, &[TEST_SDK, &settings, vars].concat())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the agent");
        let mut stderr = child.stderr.take().expect("stderr");
        let read = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the agent") {
                break status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent started: {}", read.join().unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = read.join().expect("read the agent's stderr");
        assert!(!status.success(), "the agent exited 0: {stderr}");
        stderr
    }

    /// Spawns `argv` with the environment `vars` only (stdout piped) and waits for its ready
    /// line. Unless `vars` name one, the agent gets a token key file of its own, removed with
    /// it.
    fn spawn(argv: &[OsString], vars: &[(&str, &str)]) -> Agent {
        let key_dir =
            (!vars.iter().any(|(k, _)| *k == "TOKEN_KEY_FILE")).then(|| scratch_dir("token-key"));
        let key_file = key_dir
            .as_ref()
            .map(|dir| dir.join("token.key").display().to_string());
        let mut all = vars.to_vec();
        all.extend(key_file.as_deref().map(|f| ("TOKEN_KEY_FILE", f)));
        let mut cmd = clean_command(argv, &all);
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn agent");
        let stdout = child.stdout.take().expect("stdout");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "metadataproxy ready" {
                        let _ = ready_tx.send((
                            v["listen"].as_str().unwrap_or_default().to_string(),
                            v["admin"].as_str().map(str::to_string),
                            v["container_endpoint"].as_str().map(str::to_string),
                        ));
                    }
                }
                sink.lock().expect("lock").push(line);
            }
        });
        let (listen, admin, container) = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("agent ready within 30 s");
        let port_of = |a: &str| -> u16 {
            a.rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("port in ready line")
        };
        let port = port_of(&listen);
        let admin_port = admin.as_deref().map(port_of);
        let container_port = container.as_deref().map(port_of);
        Agent {
            child,
            port,
            admin_port,
            container_port,
            logs,
            key_dir,
        }
    }

    /// Every log line so far, parsed.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The raw log output so far.
    pub fn raw_logs(&self) -> String {
        self.logs.lock().expect("lock").join("\n")
    }
}

impl Agent {
    /// `127.0.0.1:port` of the admin listener.
    pub fn admin_addr(&self) -> String {
        format!(
            "127.0.0.1:{}",
            self.admin_port.expect("the admin listener is on")
        )
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ctrl-C (SIGINT), as the README says to stop the agent: it exits 0.
    pub fn interrupt(&mut self) {
        let status = self.stop("-INT");
        assert!(
            status.success(),
            "agent exit on Ctrl-C (SIGINT): {status:?}"
        );
    }

    /// Sends `signal` (`-TERM`, `-KILL`) and waits up to 20 s for the agent to exit.
    pub fn stop(&mut self, signal: &str) -> std::process::ExitStatus {
        run("kill", &[signal, &self.child.id().to_string()]);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the agent") {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "agent did not exit after kill {signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.key_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A new, empty directory under the system's temporary directory, for one test's files
/// (the caller removes it).
pub fn scratch_dir(what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mp-test-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// A user-defined Docker network with a pinned subnet.
#[derive(Debug)]
pub struct Network {
    /// `mp-test-...`.
    pub name: String,
    /// The subnet, `a.b.c.0/24`.
    pub subnet: String,
    /// The bridge's address on the host (`a.b.c.1`).
    pub gateway: String,
}

impl Network {
    /// Creates `mp-test-{name}` on `172.30.{octet}.0/24`.
    pub fn create(name: &str, octet: u8) -> Network {
        let name = format!("mp-test-{name}");
        let subnet = format!("172.30.{octet}.0/24");
        let gateway = format!("172.30.{octet}.1");
        let _ = Command::new("docker")
            .args(["network", "rm", &name])
            .output();
        run(
            "docker",
            &[
                "network",
                "create",
                "--subnet",
                &subnet,
                "--gateway",
                &gateway,
                &name,
            ],
        );
        Network {
            name,
            subnet,
            gateway,
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// The address of `docker0` on the host, read from the interface: `docker network inspect
/// bridge` names no gateway on a daemon started without `--bip` (Docker's default), so the
/// tests read what the kernel has.
pub fn docker0_gateway() -> String {
    let out = run("ip", &["-4", "-o", "addr", "show", "dev", "docker0"]);
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("docker0 has no IPv4 address: {out}"))
}

/// A running busybox container.
#[derive(Debug)]
pub struct Container {
    /// `mp-test-...`.
    pub name: String,
    /// Its address on its network.
    pub ip: String,
    /// The engine's CLI that runs it: `docker`, or `podman --remote --url ...`.
    cli: Vec<String>,
}

/// What `wget` got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// HTTP status, or 0 when there was no answer.
    pub status: u16,
    /// Body (only for 2xx: busybox wget prints nothing else).
    pub body: String,
}

impl Container {
    /// Runs `sleep` in a new container named `mp-test-{name}` on `network` (`None`: the
    /// default bridge) with `env`.
    pub fn start(
        env: &TestEnv,
        name: &str,
        network: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Container {
        Self::start_privileged(env, name, network, vars, &[])
    }

    /// Like [`Container::start`], with extra `docker run` flags (capabilities).
    pub fn start_privileged(
        env: &TestEnv,
        name: &str,
        network: Option<&str>,
        vars: &[(&str, &str)],
        flags: &[&str],
    ) -> Container {
        Self::start_full(env, name, network, vars, flags, &["sleep", "3600"])
    }

    /// Like [`Container::start`], running `command` instead of `sleep`.
    pub fn start_command(
        env: &TestEnv,
        name: &str,
        network: Option<&str>,
        vars: &[(&str, &str)],
        command: &[&str],
    ) -> Container {
        Self::start_full(env, name, network, vars, &[], command)
    }

    fn start_full(
        env: &TestEnv,
        name: &str,
        network: Option<&str>,
        vars: &[(&str, &str)],
        flags: &[&str],
        command: &[&str],
    ) -> Container {
        Self::run_on(
            vec!["docker".into()],
            &env.image,
            name,
            network,
            vars,
            flags,
            command,
        )
    }

    /// Runs `command` in a new container `mp-test-{name}` of `image` with the engine CLI
    /// `cli` (program and leading arguments), on `network` (`None`: the engine's default),
    /// with `vars` and extra `run` flags.
    pub fn run_on(
        cli: Vec<String>,
        image: &str,
        name: &str,
        network: Option<&str>,
        vars: &[(&str, &str)],
        flags: &[&str],
        command: &[&str],
    ) -> Container {
        let name = format!("mp-test-{name}");
        let engine = |args: &[&str]| {
            let mut all: Vec<&str> = cli[1..].iter().map(String::as_str).collect();
            all.extend_from_slice(args);
            run(&cli[0], &all)
        };
        let _ = Command::new(&cli[0])
            .args(&cli[1..])
            .args(force_remove(&cli[0], &name))
            .output();
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
        args.extend(flags.iter().map(|f| f.to_string()));
        if let Some(n) = network {
            args.push("--network".into());
            args.push(n.into());
        }
        for (k, v) in vars {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.push(image.to_string());
        args.extend(command.iter().map(|c| c.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        engine(&refs);
        let ip = engine(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            &name,
        ])
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
        Container { name, ip, cli }
    }

    /// The engine CLI with `args`, as a command.
    pub fn engine(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.cli[0]);
        cmd.args(&self.cli[1..]).args(args);
        cmd
    }

    /// Runs a command in the container.
    pub fn exec(&self, cmd: &[&str]) -> std::process::Output {
        let mut args = vec!["exec", &self.name];
        args.extend_from_slice(cmd);
        self.engine(&args).output().expect("exec in the container")
    }

    /// Moves this container (it needs NET_ADMIN) onto `victim`'s IP and announces it with
    /// gratuitous ARP, so that replies to that IP come here rather than to the victim.
    pub fn take_ip_of(&self, victim: &Container, gateway: &str) {
        let script = format!(
            "ip addr flush dev eth0 && ip addr add {ip}/24 dev eth0 && \
             ip route add default via {gateway} && arping -U -c 2 -I eth0 -s {ip} {ip} >/dev/null; \
             ip -4 addr show dev eth0",
            ip = victim.ip
        );
        let out = self.exec(&["sh", "-c", &script]);
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains(&format!("inet {}/24", victim.ip)),
            "{} did not take {}'s IP: {shown} {}",
            self.name,
            victim.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a host program inside this container's network namespace and cgroup (so that
    /// both interception modes see it as the container), e.g. `curl` or the SDK client.
    pub fn run_inside(&self, program: &str, args: &[&str]) -> std::process::Output {
        let mut cmd = self.command_inside(program, args);
        // Inside the container's namespaces the metadata address is intercepted (and the
        // guard stands behind it): the SDK may use it there, as a container's SDK would.
        cmd.env_remove("AWS_EC2_METADATA_DISABLED");
        cmd.output().expect("run inside the container's namespaces")
    }

    /// The command that runs a host program inside this container's network namespace and
    /// cgroup, with the test's environment (to be adjusted by the caller).
    pub fn command_inside(&self, program: &str, args: &[&str]) -> Command {
        let out = self
            .engine(&["inspect", "--format", "{{.State.Pid}}", &self.name])
            .output()
            .expect("inspect the container");
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .expect("container cgroup")
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            .expect("a cgroup2 line");
        let procs = cgroup2_root()
            .join(cgroup.trim_start_matches('/'))
            .join("cgroup.procs")
            .to_string_lossy()
            .into_owned();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "procs=\"$1\"; pid=\"$2\"; shift 2; echo $$ > \"$procs\" && exec nsenter -t \"$pid\" -n -- \"$@\"",
            "sh",
            &procs,
            &pid,
            program,
        ]);
        cmd.args(args);
        cmd
    }

    /// `curl -s -i` from inside the container's namespaces (host curl, 5 s limit): status,
    /// lower-cased headers, body.
    pub fn curl(&self, args: &[&str]) -> (u16, HashMap<String, String>, String) {
        let mut all = vec!["-s", "-i", "--max-time", "5"];
        all.extend_from_slice(args);
        let out = self.run_inside("curl", &all);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, body.to_string())
    }

    /// `wget` from inside the container (5 s limit).
    pub fn wget(&self, url: &str) -> Fetched {
        let out = self.exec(&["timeout", "5", "wget", "-S", "-q", "-O", "-", url]);
        parse_wget(&out)
    }
}

/// Reads the status from busybox `wget -S` output.
pub fn parse_wget(out: &std::process::Output) -> Fetched {
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The last status line wins: wget follows redirects.
    let status = stderr
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("HTTP/1.1 ")
                .or_else(|| l.strip_prefix("HTTP/1.0 "))
                .or_else(|| l.split("HTTP/1.1 ").nth(1))?;
            rest.split_whitespace().next()?.parse::<u16>().ok()
        })
        .unwrap_or(0);
    Fetched {
        status,
        body: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self
            .engine(&force_remove(&self.cli[0], &self.name))
            .output();
    }
}

/// `rm -f NAME`, at once: Podman would first wait 10 s for `sleep` to heed SIGTERM.
fn force_remove<'a>(program: &str, name: &'a str) -> Vec<&'a str> {
    if program == "podman" {
        vec!["rm", "-f", "-t", "0", name]
    } else {
        vec!["rm", "-f", name]
    }
}

/// An iptables (or ip6tables) rule that is deleted when dropped.
#[derive(Debug)]
pub struct Rule {
    program: &'static str,
    table: String,
    spec: Vec<String>,
}

impl Rule {
    /// Inserts `spec` at the top of `chain` in `table` (iptables).
    pub fn insert(table: &str, chain: &str, spec: &[&str]) -> Rule {
        Self::insert_with("iptables", table, chain, spec)
    }

    /// Inserts `spec` at the top of `chain` in `table` (ip6tables).
    pub fn insert6(table: &str, chain: &str, spec: &[&str]) -> Rule {
        Self::insert_with("ip6tables", table, chain, spec)
    }

    fn insert_with(program: &'static str, table: &str, chain: &str, spec: &[&str]) -> Rule {
        let mut args = vec!["-w", "-t", table, "-I", chain];
        args.extend_from_slice(spec);
        run(program, &args);
        let mut kept = vec![chain.to_string()];
        kept.extend(spec.iter().map(|s| s.to_string()));
        Rule {
            program,
            table: table.into(),
            spec: kept,
        }
    }

    /// The classic-mode DNAT of `169.254.169.254:80` from `source` arriving on `iface` to
    /// `to_ip:to_port`, as docs/deployment.md documents it.
    pub fn dnat(iface: &str, source: &str, to_ip: &str, to_port: u16) -> Rule {
        let to = format!("{to_ip}:{to_port}");
        Rule::insert(
            "nat",
            "PREROUTING",
            &[
                "-i",
                iface,
                "-s",
                source,
                "-d",
                "169.254.169.254/32",
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        )
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let mut args = vec![
            "-w".to_string(),
            "-t".into(),
            self.table.clone(),
            "-D".into(),
        ];
        args.extend(self.spec.iter().cloned());
        let _ = Command::new(self.program).args(&args).output();
    }
}

/// Seconds since the epoch of an IMDS time (`YYYY-MM-DDTHH:MM:SSZ`, UTC), to compare an
/// `Expiration` with its `LastUpdated`.
pub fn imds_time_seconds(t: &str) -> i64 {
    assert!(
        t.len() == 20 && t.ends_with('Z') && &t[10..11] == "T",
        "not an IMDS time: {t:?}"
    );
    let n = |r: std::ops::Range<usize>| -> i64 {
        t[r].parse()
            .unwrap_or_else(|_| panic!("not an IMDS time: {t:?}"))
    };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days since the epoch of a proleptic Gregorian date, counted from March so that the
    // leap day comes last.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SDK config for calls the test itself makes to moto with `credentials`.
pub fn aws_config(
    moto_url: &str,
    credentials: aws_credential_types::Credentials,
) -> aws_config::SdkConfig {
    rt().block_on(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(moto_url)
            .credentials_provider(credentials)
            .load(),
    )
}

/// Static test credentials for moto.
pub fn test_credentials() -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::new("testing", "testing", None, None, "test")
}

/// Creates a role in moto (idempotent) and returns its ARN.
pub fn create_role(moto_url: &str, name: &str, path: &str) -> String {
    let iam = aws_sdk_iam::Client::new(&aws_config(moto_url, test_credentials()));
    rt().block_on(async {
        if let Ok(r) = iam.get_role().role_name(name).send().await {
            if let Some(role) = r.role {
                return role.arn;
            }
        }
        iam.create_role()
            .role_name(name)
            .path(path)
            .assume_role_policy_document(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#,
            )
            .send()
            .await
            .expect("create role in moto")
            .role
            .expect("role")
            .arn
    })
}

/// `sts:GetCallerIdentity` signed with the credentials JSON a container received.
pub fn caller_identity(moto_url: &str, creds: &serde_json::Value) -> String {
    let c = aws_credential_types::Credentials::new(
        creds["AccessKeyId"].as_str().expect("AccessKeyId"),
        creds["SecretAccessKey"].as_str().expect("SecretAccessKey"),
        Some(creds["Token"].as_str().expect("Token").to_string()),
        None,
        "container",
    );
    let sts = aws_sdk_sts::Client::new(&aws_config(moto_url, c));
    rt().block_on(sts.get_caller_identity().send())
        .expect("GetCallerIdentity with the container's credentials")
        .arn
        .expect("arn")
}

/// Counts of each `error_description` in the agent's request lines.
pub fn error_descriptions(agent: &Agent) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for line in agent
        .logs()
        .into_iter()
        .filter(|l| l["message"] == "request")
    {
        if let Some(e) = line["error_description"].as_str() {
            *out.entry(e.to_string()).or_default() += 1;
        }
    }
    out
}

/// A classic-mode setup: a recording upstream, an AWS call counter in front of moto, the agent,
/// and a user-defined network whose metadata traffic is DNATed to the agent.
#[derive(Debug)]
pub struct Classic {
    /// The test command's environment.
    pub env: TestEnv,
    /// The recording upstream.
    pub upstream: FakeUpstream,
    /// Counts the agent's STS and IAM calls.
    pub aws: AwsCounter,
    /// The agent.
    pub agent: Agent,
    // Dropped in this order: the rule before the network it names.
    _dnat: Rule,
    /// The network.
    pub net: Network,
}

impl Classic {
    /// Starts everything for a test called `name`, on `172.30.{octet}.0/24`, with agent `vars`.
    pub fn start(name: &str, octet: u8, vars: &[(&str, &str)]) -> Classic {
        Self::start_with_aws(name, octet, None, vars)
    }

    /// Like [`Classic::start`], with the agent's STS and IAM calls going to `aws_url` (a stub)
    /// instead of the counter in front of moto.
    pub fn start_with_aws(
        name: &str,
        octet: u8,
        aws_url: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Classic {
        let env = test_env();
        let upstream = FakeUpstream::start();
        let aws = AwsCounter::start(&env.moto_url);
        let agent = Agent::start(&upstream.url(), aws_url.unwrap_or(&aws.url()), vars);
        let net = Network::create(name, octet);
        let dnat = Rule::dnat("br-+", &net.subnet, &net.gateway, agent.port);
        Classic {
            env,
            upstream,
            aws,
            agent,
            _dnat: dnat,
            net,
        }
    }

    /// A container `mp-test-{name}` on this setup's network.
    pub fn container(&self, name: &str, vars: &[(&str, &str)]) -> Container {
        Container::start(&self.env, name, Some(&self.net.name), vars)
    }
}

/// Serialises tests that attach kernel programs to the root cgroup or use the shared catcher.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The recording fake on `169.254.169.254:80` (on loopback, put there by the test command):
/// whatever escapes interception, or is not meant to be intercepted, lands here.
pub fn catcher() -> &'static FakeUpstream {
    static CATCHER: OnceLock<FakeUpstream> = OnceLock::new();
    CATCHER.get_or_init(|| catcher_on("169.254.169.254"))
}

/// The recording fake on `169.254.170.2:80`, the container credentials endpoint's address (on
/// loopback, put there by the test command): whatever escapes its interception lands here.
pub fn container_catcher() -> &'static FakeUpstream {
    static CATCHER: OnceLock<FakeUpstream> = OnceLock::new();
    CATCHER.get_or_init(|| catcher_on("169.254.170.2"))
}

/// A recording fake on port 80 of `ip`, which the test command puts on loopback.
fn catcher_on(ip: &str) -> FakeUpstream {
    let has_address = run("ip", &["-4", "addr", "show", "dev", "lo"]).contains(&format!("{ip}/32"));
    assert!(
        has_address,
        "{ip} is not on loopback: the test command (scripts/test.sh) adds it for the catcher"
    );
    FakeUpstream::start_on(format!("{ip}:80").parse().expect("addr"))
}

/// Nothing reached the catcher: no request escaped interception to the real metadata address.
pub fn assert_no_escape() {
    let escaped = recorded_by(catcher());
    assert!(
        escaped.is_empty(),
        "reached the real metadata address: {escaped:?}"
    );
}

/// Nothing reached the container credentials endpoint's catcher.
pub fn assert_no_container_endpoint_escape() {
    let escaped = recorded_by(container_catcher());
    assert!(
        escaped.is_empty(),
        "reached 169.254.170.2 itself: {escaped:?}"
    );
}

fn recorded_by(catcher: &FakeUpstream) -> Vec<String> {
    catcher
        .emulator
        .recorded()
        .iter()
        .map(|r| format!("{} {} from {:?}", r.method, r.path_and_query, r.peer))
        .collect()
}

/// A bpffs pin directory for one test, removed (detaching what is pinned there) when dropped.
#[derive(Debug)]
pub struct PinDir(pub PathBuf);

impl PinDir {
    /// `/sys/fs/bpf/mp-test-{name}`, emptied first.
    pub fn new(name: &str) -> PinDir {
        let dir = PathBuf::from(format!("/sys/fs/bpf/mp-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        PinDir(dir)
    }

    /// The path as a string, for `EBPF_PIN_PATH`.
    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The cgroup2 mount.
pub fn cgroup2_root() -> PathBuf {
    metadataproxy::identity::cgroup::detect_cgroup2_root().expect("a cgroup2 mount")
}

/// How many of our programs are attached to the cgroup2 root, by `bpftool cgroup show`.
pub fn attachments(program: &str) -> usize {
    let root = cgroup2_root();
    run(
        "bpftool",
        &["cgroup", "show", root.to_str().expect("utf-8")],
    )
    .lines()
    .filter(|l| l.split_whitespace().any(|w| w == program))
    .count()
}

/// How many entries a pinned map holds, by `bpftool map dump`.
pub fn map_entries(pinned: &std::path::Path) -> usize {
    let out = run(
        "bpftool",
        &[
            "-j",
            "map",
            "dump",
            "pinned",
            pinned.to_str().expect("utf-8"),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool JSON");
    v.as_array().map(Vec::len).unwrap_or(0)
}

/// The host's netfilter state as `iptables-save` and `nft list ruleset` print it, without
/// counters (which traffic changes) or comments (which carry a date).
pub fn netfilter_snapshot() -> (String, String) {
    let iptables = run("iptables-save", &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.find(" [")) {
            (true, Some(i)) => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let nft = run("nft", &["--stateless", "list", "ruleset"]);
    (iptables, nft)
}

/// Whether the agent's netfilter table (`ip metadataproxy`) exists.
pub fn agent_table_exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", "metadataproxy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Deletes the agent's netfilter tables (`ip` and `ip6 metadataproxy`) when dropped, so that
/// a test that fails with an agent in iptables mode, or ends with a kept table, does not leave
/// later tests' metadata traffic redirected to a dead port or their "before" state different.
#[derive(Debug)]
pub struct AgentTableCleanup;

impl Drop for AgentTableCleanup {
    fn drop(&mut self) {
        for family in ["ip", "ip6"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, "metadataproxy"])
                .output();
        }
    }
}

/// Asserts that two [`netfilter_snapshot`]s are equal, naming the lines that differ.
pub fn assert_same_netfilter(before: &(String, String), after: &(String, String), what: &str) {
    for (tool, b, a) in [
        ("iptables-save", &before.0, &after.0),
        ("nft list ruleset", &before.1, &after.1),
    ] {
        let gone: Vec<&str> = b.lines().filter(|l| !a.lines().any(|x| x == *l)).collect();
        let added: Vec<&str> = a.lines().filter(|l| !b.lines().any(|x| x == *l)).collect();
        assert!(
            a == b,
            "{what}: {tool} differs; lines gone: {gone:#?}; lines added: {added:#?}"
        );
    }
}

/// `ip6tables-save` without comments or counters, like the first half of
/// [`netfilter_snapshot`] (which `nft list ruleset` covers for the nf_tables side).
pub fn ip6tables_snapshot() -> String {
    run("ip6tables-save", &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.find(" [")) {
            (true, Some(i)) => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the agent's IPv6 netfilter table (`ip6 metadataproxy`) exists.
pub fn agent_ipv6_table_exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "ip6", "metadataproxy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// An IPv6 address put on loopback for a test (`ip -6 addr add ADDR/128 dev lo nodad`),
/// removed when dropped unless it was there before.
#[derive(Debug)]
pub struct LoopbackAddress6 {
    cidr: String,
    added: bool,
}

impl LoopbackAddress6 {
    /// Puts `addr` (e.g. `fd00:ec2::254`) on `lo`.
    pub fn add(addr: &str) -> LoopbackAddress6 {
        let cidr = format!("{addr}/128");
        let present = run("ip", &["-6", "addr", "show", "dev", "lo"])
            .split_whitespace()
            .any(|w| w == cidr);
        if !present {
            run("ip", &["-6", "addr", "add", &cidr, "dev", "lo", "nodad"]);
        }
        LoopbackAddress6 {
            cidr,
            added: !present,
        }
    }
}

impl Drop for LoopbackAddress6 {
    fn drop(&mut self) {
        if self.added {
            let _ = Command::new("ip")
                .args(["-6", "addr", "del", &self.cidr, "dev", "lo"])
                .output();
        }
    }
}

impl Network {
    /// Creates `mp-test-{name}` on `172.30.{octet}.0/24` and the IPv6 subnet `subnet6`
    /// (`fd00:dead:beef::/64`; its `::1` is the bridge's address), with `--ipv6`.
    pub fn create_dual_stack(name: &str, octet: u8, subnet6: &str) -> Network {
        let name = format!("mp-test-{name}");
        let subnet = format!("172.30.{octet}.0/24");
        let gateway = format!("172.30.{octet}.1");
        let _ = Command::new("docker")
            .args(["network", "rm", &name])
            .output();
        run(
            "docker",
            &[
                "network",
                "create",
                "--ipv6",
                "--subnet",
                &subnet,
                "--gateway",
                &gateway,
                "--subnet",
                subnet6,
                &name,
            ],
        );
        Network {
            name,
            subnet,
            gateway,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::imds_time_seconds;
    use metadataproxy::clock::format_time;

    #[test]
    fn imds_times_read_back_what_the_agent_writes() {
        for secs in [0, 951_782_400, 1_709_164_800, 1_800_000_000, 4_102_444_799] {
            let written = format_time(UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(imds_time_seconds(&written), secs as i64, "{written}");
        }
    }
}
