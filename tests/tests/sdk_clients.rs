//! Real AWS SDKs as containers' programs: botocore, the JavaScript SDK v3, the Go SDKs v1 and
//! v2, and Ruby's aws-sdk-core, each run from a container's network namespace and cgroup
//! against the agent in `INTERCEPT=iptables` mode, so that they reach it on
//! `169.254.169.254:80` as they would on EC2. Each SDK, with `IMDSV2=optional` and with
//! `IMDSV2=required`:
//!
//! - gets the container's role through its default credential chain (asking for a token
//!   first) and proves the credentials with STS `GetCallerIdentity` (moto, through a counter
//!   on the bridge's address, the only way out of the container's namespace here);
//! - reads the region from the metadata service where the SDK can (all but JavaScript v3):
//!   the agent passes that through to its upstream, a fake with a region found nowhere else in
//!   the client's environment;
//! - keeps working across an agent restart: the same process, with the same SDK objects,
//!   fetches its credentials again from a second agent that shares the first one's token key
//!   (`TOKEN_KEY_FILE`), and no request is refused. The SDKs that keep their token (Go v1 and
//!   v2, Ruby) present the first agent's token to the second and ask for no new one; botocore
//!   and JavaScript v3 ask for a token before every fetch. (Without a shared key, Go v1's
//!   metadata client and Ruby's `Aws::EC2Metadata` fail with 401 until their 6-hour token
//!   expires, Ruby's credentials refresh keeps the old credentials, and Go v2 takes a new token
//!   after one refused request.)
//!
//! The clients are in `tests/sdk-clients/` (see its README for the protocol);
//! `mp_install_sdk_clients` (scripts/test-env.sh) installs the SDKs and exports where they
//! are; the Go clients are built here, once per run of this binary, in GOPATH mode against
//! Debian's packages. Without any of it these tests fail, naming what is missing.
//!
//! The agent's netfilter table is host-wide, so these tests run one at a time.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metadataproxy::config::BuiltinValues;
use metadataproxy_tests::sdk::{clean_client_env, clients_dir, go_client, provided};
use metadataproxy_tests::sinks::http_get;
use metadataproxy_tests::{
    agent_table_exists, assert_no_escape, catcher, docker0_gateway, eventually, scratch_dir,
    serial, test_env, Agent, AgentTableCleanup, AwsCounter, Container, FakeUpstream, TestEnv,
};

/// The region of the fake upstream: nothing else in a client's environment names it.
const REGION: &str = "ap-southeast-2";
const ACCOUNT: &str = "123456789012";
/// How long a client may take for one phase (start-up included: Node.js and Ruby load a lot).
const PHASE_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sdk {
    Botocore,
    JavaScriptV3,
    GoV1,
    GoV2,
    Ruby,
}

impl Sdk {
    fn slug(self) -> &'static str {
        match self {
            Sdk::Botocore => "botocore",
            Sdk::JavaScriptV3 => "js-v3",
            Sdk::GoV1 => "go-v1",
            Sdk::GoV2 => "go-v2",
            Sdk::Ruby => "ruby",
        }
    }

    /// The credential providers the client reports, each with the source the SDK names for
    /// credentials from the metadata service (the proof that its chain got as far as that).
    fn providers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Sdk::Botocore => &[("session default chain", "iam-role")],
            Sdk::JavaScriptV3 => &[
                ("fromInstanceMetadata", "fromInstanceMetadata"),
                ("fromNodeProviderChain", "fromNodeProviderChain"),
            ],
            Sdk::GoV1 => &[("session default chain", "EC2RoleProvider")],
            Sdk::GoV2 => &[("LoadDefaultConfig", "EC2RoleProvider")],
            Sdk::Ruby => &[("CredentialProviderChain", "Aws::InstanceProfileCredentials")],
        }
    }

    /// Whether the SDK reads the region from the metadata service.
    fn reads_region(self) -> bool {
        self != Sdk::JavaScriptV3
    }

    /// Whether the SDK keeps its IMDSv2 token between fetches (rather than asking for one
    /// before each).
    fn holds_token(self) -> bool {
        matches!(self, Sdk::GoV1 | Sdk::GoV2 | Sdk::Ruby)
    }

    /// The program and arguments that run the client, and the variables it needs.
    fn command(self) -> (PathBuf, Vec<PathBuf>, Vec<(&'static str, String)>) {
        let clients = clients_dir();
        match self {
            Sdk::Botocore => (
                PathBuf::from(provided(
                    "MP_TEST_SDK_PYTHON",
                    "the moto venv's Python (botocore)",
                )),
                vec![clients.join("botocore/client.py")],
                vec![("PYTHONDONTWRITEBYTECODE", "1".into())],
            ),
            Sdk::JavaScriptV3 => {
                let node_path = provided("MP_TEST_SDK_NODE_PATH", "the JavaScript SDK v3");
                assert!(
                    Path::new(&node_path)
                        .join("@aws-sdk/credential-providers")
                        .is_dir(),
                    "{node_path} has no @aws-sdk/credential-providers: run \
                     mp_install_sdk_clients (scripts/test-env.sh), which installs the \
                     JavaScript SDK v3 with npm ci"
                );
                (
                    PathBuf::from("/usr/bin/env"),
                    vec!["node".into(), clients.join("js/client.cjs")],
                    vec![("NODE_PATH", node_path)],
                )
            }
            Sdk::GoV1 => (
                go_client("go-v1", Path::new(env!("CARGO_TARGET_TMPDIR"))),
                vec![],
                vec![],
            ),
            Sdk::GoV2 => (
                go_client("go-v2", Path::new(env!("CARGO_TARGET_TMPDIR"))),
                vec![],
                vec![],
            ),
            Sdk::Ruby => {
                let check = Command::new("ruby")
                    .args(["-e", "require 'aws-sdk-core'"])
                    .output();
                assert!(
                    check.as_ref().is_ok_and(|o| o.status.success()),
                    "ruby with aws-sdk-core is missing ({check:?}): run mp_install_sdk_clients \
                     (scripts/test-env.sh), which installs Debian's ruby-aws-sdk-core"
                );
                (
                    PathBuf::from("/usr/bin/env"),
                    vec!["ruby".into(), clients.join("ruby/client.rb")],
                    vec![],
                )
            }
        }
    }
}

/// One test's components: the agent's upstream and the STS counter outlive the agents.
struct Setup {
    env: TestEnv,
    upstream: FakeUpstream,
    /// moto behind a counter, for the agents' AssumeRole.
    aws: AwsCounter,
    /// moto behind another counter, on docker0's address: the containers' way to STS.
    sts: AwsCounter,
    imdsv2: &'static str,
    /// Holds the token key file, shared by the test's agents.
    dir: PathBuf,
    // Dropped last: the table goes even when a test fails half-way.
    _cleanup: AgentTableCleanup,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Setup {
    fn new(name: &str, imdsv2: &'static str) -> Setup {
        let serial = serial();
        let cleanup = AgentTableCleanup;
        assert!(
            !agent_table_exists(),
            "a table ip metadataproxy is already there (left by another run?)"
        );
        let env = test_env();
        catcher().emulator.clear();
        let upstream = FakeUpstream::start_with(BuiltinValues {
            region: REGION.into(),
            availability_zone: format!("{REGION}b"),
            ..BuiltinValues::default()
        });
        // An upstream like EC2 with IMDSv2 enforced, when the agent enforces it too.
        upstream.emulator.require_tokens(imdsv2 == "required");
        let aws = AwsCounter::start(&env.moto_url);
        let sts = AwsCounter::start_on(&env.moto_url, &docker0_gateway());
        let dir = scratch_dir(name);
        Setup {
            env,
            upstream,
            aws,
            sts,
            imdsv2,
            dir,
            _cleanup: cleanup,
            _serial: serial,
        }
    }

    /// An agent in iptables mode, ready (its Docker index synced) when this returns.
    fn agent(&self) -> Agent {
        let key = self.dir.join("token.key");
        let agent = Agent::start(
            &self.upstream.url(),
            &self.aws.url(),
            &[
                ("INTERCEPT", "iptables"),
                ("DEFAULT_ACCOUNT_ID", ACCOUNT),
                ("IMDSV2", self.imdsv2),
                ("TOKEN_KEY_FILE", key.to_str().expect("utf-8 path")),
            ],
        );
        let ready = eventually(Duration::from_secs(10), || {
            (http_get(&agent.admin_addr(), "/readyz").0 == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "agent not ready: {}",
            http_get(&agent.admin_addr(), "/readyz").1
        );
        agent
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a client reported for one phase.
#[derive(Debug)]
struct Phase {
    region: Option<String>,
    /// (provider, source, ARN, access key id), one per credential provider.
    credentials: Vec<(String, String, String, String)>,
}

/// A client process inside a container's namespaces, between its phases.
struct Client {
    sdk: Sdk,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Client {
    fn spawn(sdk: Sdk, container: &Container, sts_url: &str, home: &Path) -> Client {
        let (program, args, vars) = sdk.command();
        let args: Vec<&str> = args
            .iter()
            .map(|a| a.to_str().expect("utf-8 path"))
            .collect();
        let mut cmd = container.command_inside(program.to_str().expect("utf-8 path"), &args);
        // Nothing of the test's environment: no static keys, no region, no proxy. The
        // metadata endpoint is the SDKs' default, written out: inside the container's
        // namespace it is intercepted to the agent.
        clean_client_env(&mut cmd, home, sts_url);
        cmd.env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "http://169.254.169.254",
        )
        .envs(vars)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the SDK client");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let errors = Arc::new(Mutex::new(String::new()));
        let sink = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut all = sink.lock().expect("lock");
                all.push_str(&line);
                all.push('\n');
            }
        });
        Client {
            sdk,
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: errors,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits for the report of phase `name`, failing with the client's stderr and the
    /// agent's log.
    fn phase(&mut self, name: &str, agent: &Agent) -> Phase {
        let line = self.lines.recv_timeout(PHASE_LIMIT).unwrap_or_else(|e| {
            // Give the stderr reader a moment to catch the client's last words.
            let _ = eventually(Duration::from_secs(2), || {
                matches!(self.child.try_wait(), Ok(Some(_))).then_some(())
            });
            panic!(
                "{:?}: no report of phase {name} ({e}; exit: {:?})\nclient stderr:\n{}\nagent \
                 log:\n{}",
                self.sdk,
                self.child.try_wait(),
                self.stderr(),
                agent.raw_logs()
            )
        });
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{:?}: not a report ({e}): {line}", self.sdk));
        assert_eq!(v["phase"], name, "{line}");
        let credentials = v["credentials"]
            .as_array()
            .unwrap_or_else(|| panic!("no credentials in {line}"))
            .iter()
            .map(|c| {
                let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (
                    field("provider"),
                    field("source"),
                    field("arn"),
                    field("access_key_id"),
                )
            })
            .collect();
        Phase {
            region: v["region"].as_str().map(str::to_string),
            credentials,
        }
    }

    /// Lets the client go on to its second phase.
    fn go_on(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"again\n")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{:?}: write to the client: {e}", self.sdk));
    }

    /// Waits for a clean exit.
    fn finish(mut self) {
        drop(self.stdin.take());
        let exited = eventually(Duration::from_secs(20), || {
            self.child.try_wait().expect("wait for the client")
        });
        let status = exited.unwrap_or_else(|| panic!("{:?}: client did not exit", self.sdk));
        assert!(
            status.success(),
            "{:?}: client exit {status}: {}",
            self.sdk,
            self.stderr()
        );
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's request lines for `handler` that answered `status`.
fn requests(agent: &Agent, handler: &str, status: u64) -> usize {
    agent
        .logs()
        .iter()
        .filter(|l| {
            l["message"] == "request" && l["handler"] == handler && l["response_code"] == status
        })
        .count()
}

/// The agent's request lines refused for their token (or the lack of one).
fn token_refusals(agent: &Agent) -> Vec<String> {
    agent
        .logs()
        .iter()
        .filter(|l| {
            l["message"] == "request"
                && l["error_description"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("token_"))
        })
        .map(|l| l.to_string())
        .collect()
}

/// Waits until the agent has logged at least `n` credential answers (the log reaches the test
/// through a pipe and a reader thread).
fn await_credentials(agent: &Agent, n: usize) {
    let seen = eventually(Duration::from_secs(10), || {
        (requests(agent, "iam-security-crentials-for-role", 200) >= n).then_some(())
    });
    assert!(
        seen.is_some(),
        "fewer than {n} credential answers logged: {}",
        agent.raw_logs()
    );
}

/// Requests that the agent passed through to its upstream (the agent's own token PUTs left
/// out).
fn passed_through(upstream: &FakeUpstream) -> usize {
    upstream
        .emulator
        .recorded()
        .iter()
        .filter(|r| !(r.method == "PUT" && r.path_and_query == "/latest/api/token"))
        .count()
}

fn check_phase(sdk: Sdk, phase: &Phase, role: &str, what: &str) {
    let expected_arn = format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/go-metadataproxy");
    let providers = sdk.providers();
    assert_eq!(
        phase.credentials.len(),
        providers.len(),
        "{sdk:?} {what}: {phase:?}"
    );
    for ((provider, source, arn, _), (want_provider, want_source)) in
        phase.credentials.iter().zip(providers)
    {
        assert_eq!(
            (provider.as_str(), source.as_str()),
            (*want_provider, *want_source),
            "{sdk:?} {what}: credentials from elsewhere than the metadata service"
        );
        assert_eq!(arn, &expected_arn, "{sdk:?} {what}: GetCallerIdentity");
    }
    if sdk.reads_region() {
        assert_eq!(
            phase.region.as_deref(),
            Some(REGION),
            "{sdk:?} {what}: region"
        );
    }
}

fn terminate(agent: &mut Agent) {
    let status = agent.stop("-TERM");
    assert!(status.success(), "agent exit on SIGTERM: {status:?}");
}

/// The whole scenario for one SDK with `IMDSV2=imdsv2`.
fn exercise(sdk: Sdk, imdsv2: &'static str) {
    let name = format!("sdk-{}-{imdsv2}", sdk.slug());
    let s = Setup::new(&name, imdsv2);
    let role = format!("{name}-role");
    let container = Container::start(&s.env, &name, None, &[("IAM_ROLE", &role)]);
    let mut first = s.agent();
    let upstream_before = passed_through(&s.upstream);

    let mut client = Client::spawn(sdk, &container, &s.sts.url(), &s.dir);
    let one = client.phase("first", &first);
    check_phase(sdk, &one, &role, "first phase");
    let n = sdk.providers().len();
    await_credentials(&first, n);
    assert!(
        requests(&first, "api-token", 200) >= 1,
        "{sdk:?} asked for no IMDSv2 token: {}",
        first.raw_logs()
    );
    assert_eq!(token_refusals(&first), Vec::<String>::new(), "{sdk:?}");
    let upstream_first = passed_through(&s.upstream);
    if sdk.reads_region() {
        assert!(
            upstream_first > upstream_before,
            "no passthrough for the region"
        );
    }

    // A new agent, on another port, with the same token key. The client has not made a
    // request in between, and does not know.
    terminate(&mut first);
    let second = s.agent();
    client.go_on();
    let two = client.phase("second", &second);
    check_phase(sdk, &two, &role, "after the restart");
    for (a, b) in one.credentials.iter().zip(&two.credentials) {
        // The second agent's AssumeRole gave new keys: the client really fetched again (an SDK
        // that kept its old credentials after a failed fetch would report the same key).
        assert_ne!(a.3, b.3, "{sdk:?} {}: credentials not fetched again", a.0);
    }
    client.finish();
    await_credentials(&second, n);
    assert_eq!(
        token_refusals(&second),
        Vec::<String>::new(),
        "{sdk:?}: the second agent refused a token (TOKEN_KEY_FILE should have given it the \
         first agent's key)"
    );
    let minted = requests(&second, "api-token", 200);
    if sdk.holds_token() {
        assert_eq!(
            minted, 0,
            "{sdk:?} keeps its token, yet asked the second agent for a new one"
        );
    } else {
        assert!(
            minted >= 1,
            "{sdk:?} was expected to ask for a token before each fetch"
        );
    }
    if sdk.reads_region() {
        assert!(
            passed_through(&s.upstream) > upstream_first,
            "no passthrough for the region after the restart"
        );
    }
    // Every proof went to moto through the containers' counter: one GetCallerIdentity per
    // provider and phase, and nothing else. Each agent assumed the role once.
    assert_eq!(s.sts.count("GetCallerIdentity"), 2 * n);
    assert_eq!(s.sts.count("AssumeRole"), 0);
    assert_eq!(s.aws.count_matching("AssumeRole", &role), 2);
    assert_no_escape();
}

#[test]
fn botocore_gets_its_role_and_region_across_a_restart_tokens_optional() {
    exercise(Sdk::Botocore, "optional");
}

#[test]
fn botocore_gets_its_role_and_region_across_a_restart_tokens_required() {
    exercise(Sdk::Botocore, "required");
}

#[test]
fn javascript_v3_gets_its_role_across_a_restart_tokens_optional() {
    exercise(Sdk::JavaScriptV3, "optional");
}

#[test]
fn javascript_v3_gets_its_role_across_a_restart_tokens_required() {
    exercise(Sdk::JavaScriptV3, "required");
}

#[test]
fn go_v1_gets_its_role_and_region_across_a_restart_tokens_optional() {
    exercise(Sdk::GoV1, "optional");
}

#[test]
fn go_v1_gets_its_role_and_region_across_a_restart_tokens_required() {
    exercise(Sdk::GoV1, "required");
}

#[test]
fn go_v2_gets_its_role_and_region_across_a_restart_tokens_optional() {
    exercise(Sdk::GoV2, "optional");
}

#[test]
fn go_v2_gets_its_role_and_region_across_a_restart_tokens_required() {
    exercise(Sdk::GoV2, "required");
}

#[test]
fn ruby_gets_its_role_and_region_across_a_restart_tokens_optional() {
    exercise(Sdk::Ruby, "optional");
}

#[test]
fn ruby_gets_its_role_and_region_across_a_restart_tokens_required() {
    exercise(Sdk::Ruby, "required");
}
