//! The benchmark (`cargo xtask bench`, which runs scripts/bench.sh, which runs this): the
//! release agent and, in the same run, a baseline for each scenario that bounds what is
//! possible; load from inside a container's network namespace; a table on stdout, Markdown and
//! an SVG chart under `docs/bench/`.
//!
//! Flags: `--out DIR` (default `docs/bench`), `--seconds N` per load (default 5),
//! `--profile` (perf record of the agent under the cached-credentials load, to
//! `DIR/profile.txt`, and of the whole machine under the connect + request load in each
//! interception mode, to `DIR/profile-interception.txt`), `--only SCENARIO[,SCENARIO...]` (of `hot`, `lookup`, `lookup-ebpf`,
//! `first`, `interception`, `startup`: only those run, and the table is printed, not written).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use metadataproxy_tests::bench::report::{latency, Line, Ratio, Report, Verdict};
use metadataproxy_tests::bench::servers;
use metadataproxy_tests::bench::wrk::{self, Load};
use metadataproxy_tests::bench::{agent_binary, BenchAgent};
use metadataproxy_tests::docker::FakeContainer;
use metadataproxy_tests::sinks::UdpSink;
use metadataproxy_tests::{
    docker0_gateway, run, test_env, AwsCounter, Container, DockerSocket, FakeUpstream, TestEnv,
};

const ACCOUNT: &str = "123456789012";
const CONNECTIONS: [u32; 4] = [1, 16, 64, 256];
/// Interleaved runs behind each targeted ratio.
const ROUNDS: u32 = 3;
/// The scenarios, in the order they run, as `--only` names them.
const SCENARIOS: [&str; 6] = [
    "hot",
    "lookup",
    "lookup-ebpf",
    "first",
    "interception",
    "startup",
];

struct Bench {
    env: TestEnv,
    agent_bin: PathBuf,
    work: PathBuf,
    seconds: u32,
    gateway: String,
    aws: AwsCounter,
    report: Report,
    profile: Option<PathBuf>,
    /// `--dogstatsd`: the listener every agent sends its metrics to.
    dogstatsd: Option<UdpSink>,
}

fn role_arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{name}")
}

fn line(scenario: &str, subject: &str, load: &Load) -> Line {
    let mut other = Vec::new();
    if load.non_2xx > 0 {
        other.push(format!("{} non-2xx", load.non_2xx));
    }
    if load.socket_errors > 0 {
        other.push(format!("{} socket errors", load.socket_errors));
    }
    Line {
        scenario: scenario.into(),
        subject: subject.into(),
        rps: Some(load.rps),
        p50_us: Some(load.p50_us),
        p99_us: Some(load.p99_us),
        other: other.join(", "),
    }
}

/// `rounds` loads of each of `urls` in turn (so that drift of the shared machine hits every
/// subject alike); per subject, the median of each measure.
fn interleaved(from: &Container, urls: &[&str], c: u32, seconds: u32, rounds: u32) -> Vec<Load> {
    let mut runs: Vec<Vec<Load>> = vec![Vec::new(); urls.len()];
    for _ in 0..rounds {
        for (i, u) in urls.iter().enumerate() {
            runs[i].push(wrk::run(from, u, c, seconds, false));
        }
    }
    runs.iter().map(|r| median_load(r)).collect()
}

/// The median of `runs` (rate and latencies), with their counts summed.
fn median_load(runs: &[Load]) -> Load {
    Load {
        rps: median(runs.iter().map(|l| l.rps).collect()),
        p50_us: median(runs.iter().map(|l| l.p50_us).collect()),
        p99_us: median(runs.iter().map(|l| l.p99_us).collect()),
        requests: runs.iter().map(|l| l.requests).sum(),
        non_2xx: runs.iter().map(|l| l.non_2xx).sum(),
        socket_errors: runs.iter().map(|l| l.socket_errors).sum(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The load's container as the Docker stand-in reports it (its real id and pid).
fn real_container(from: &Container) -> FakeContainer {
    FakeContainer {
        id: run("docker", &["inspect", "--format", "{{.Id}}", &from.name]),
        name: from.name.clone(),
        ip: from.ip.clone(),
        role: role_arn("bench-role"),
        pid: run(
            "docker",
            &["inspect", "--format", "{{.State.Pid}}", &from.name],
        )
        .parse()
        .unwrap_or(0),
    }
}

/// Empty cgroups `<parent>/docker-<id>.scope` for synthetic containers, removed on drop.
struct SyntheticCgroups {
    parent: PathBuf,
    dirs: Vec<PathBuf>,
}

impl SyntheticCgroups {
    fn create(parent: &Path, ids: impl Iterator<Item = String>) -> SyntheticCgroups {
        // Left over from an interrupted run.
        drop(SyntheticCgroups::existing(parent));
        std::fs::create_dir(parent)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", parent.display()));
        let mut made = SyntheticCgroups {
            parent: parent.to_path_buf(),
            dirs: Vec::new(),
        };
        for id in ids {
            let dir = parent.join(format!("docker-{id}.scope"));
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
            made.dirs.push(dir);
        }
        made
    }

    fn existing(parent: &Path) -> SyntheticCgroups {
        let dirs = std::fs::read_dir(parent)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        SyntheticCgroups {
            parent: parent.to_path_buf(),
            dirs,
        }
    }
}

impl Drop for SyntheticCgroups {
    fn drop(&mut self) {
        // cgroups are removed with rmdir, one at a time (they hold no process).
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
        let _ = std::fs::remove_dir(&self.parent);
    }
}

impl Bench {
    fn log(&self, name: &str) -> PathBuf {
        self.work.join(format!("agent-{name}.log"))
    }

    fn agent(&self, name: &str, docker_url: &str, vars: &[(&str, String)]) -> BenchAgent {
        // The upstream is never the real metadata address: the emulated one unless a scenario
        // names its own fake (the guard would reject it anyway).
        let mut all = vec![
            ("DOCKER_URL", docker_url.to_string()),
            ("METADATA_URL", "builtin".to_string()),
            // The loads come from one container, far above any SDK's rate: measured without
            // the per-caller limit (which would answer them 429).
            ("REQUEST_RATE_LIMIT", "0".to_string()),
        ];
        if let Some(sink) = &self.dogstatsd {
            all.push(("DATADOG_ADDR", sink.addr.to_string()));
        }
        all.extend(vars.iter().cloned());
        BenchAgent::start(&self.agent_bin, &self.log(name), &self.aws.url(), &all)
    }

    fn url(&self, port: u16, path: &str) -> String {
        format!("http://{}:{port}{path}", self.gateway)
    }

    /// The agent's exact answer, for the fixed-bytes baseline.
    fn answer_of(&self, from: &Container, url: &str) -> (StatusCode, HeaderMap, Bytes) {
        let (status, headers, body) = from.curl(&[url]);
        assert_eq!(status, 200, "{url}: {body}");
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            if matches!(
                k.as_str(),
                "date" | "content-length" | "connection" | "transfer-encoding"
            ) {
                continue;
            }
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                map.insert(k, v);
            }
        }
        (StatusCode::OK, map, Bytes::from(body))
    }

    /// Cached credentials and role listing at 1/16/64/256 connections, passthrough, against
    /// their baselines; Docker and STS calls during the agent's loads.
    fn hot_paths(&mut self, from: &Container, upstream: &FakeUpstream) -> (Vec<String>, usize) {
        let docker = DockerSocket::counting("bench");
        let agent = self.agent(
            "hot",
            &docker.url(),
            &[(
                "METADATA_URL",
                format!("http://127.0.0.1:{}", upstream.addr.port()),
            )],
        );
        let creds_path = "/latest/meta-data/iam/security-credentials/bench-role";
        let list_path = "/latest/meta-data/iam/security-credentials/";
        let mut docker_calls = Vec::new();
        let mut sts_calls = 0;
        for (name, path) in [
            ("cached credentials", creds_path),
            ("role listing", list_path),
        ] {
            let url = self.url(agent.port, path);
            let (status, headers, body) = self.answer_of(from, &url);
            let baseline = servers::fixed(status, headers, body);
            let base_url = self.url(baseline.addr.port(), path);
            // Warm both (connections, caches, the CPU's frequency).
            wrk::run(from, &base_url, 16, 1, false);
            wrk::run(from, &url, 16, 1, false);
            for c in CONNECTIONS {
                let scenario = if c == 64 {
                    format!("{name}, {c} connections (median of {ROUNDS} interleaved runs)")
                } else {
                    format!("{name}, {c} connections")
                };
                let (d0, s0) = (docker.requests().len(), self.aws.count("AssumeRole"));
                let (b, a) = if c == 64 {
                    let m = interleaved(from, &[&base_url, &url], c, self.seconds, ROUNDS);
                    (m[0].clone(), m[1].clone())
                } else {
                    (
                        wrk::run(from, &base_url, c, self.seconds, false),
                        wrk::run(from, &url, c, self.seconds, false),
                    )
                };
                if let Some(out) = self
                    .profile
                    .clone()
                    .filter(|_| name == "cached credentials" && c == 64)
                {
                    let p = start_profile(agent.pid(), self.seconds, out);
                    wrk::run(from, &url, c, self.seconds + 1, false);
                    p.join().expect("profile");
                }
                docker_calls.extend(docker.requests().into_iter().skip(d0));
                sts_calls += self.aws.count("AssumeRole") - s0;
                self.report.lines.push(line(
                    &scenario,
                    "baseline: minimal hyper server, same bytes",
                    &b,
                ));
                self.report.lines.push(line(&scenario, "metadataproxy", &a));
                let short = if name == "role listing" {
                    "listing"
                } else {
                    "cached"
                };
                if name == "cached credentials" || c == 64 {
                    self.report.ratios.push(Ratio {
                        label: format!("{short}, {c} conns: req/s"),
                        value: a.rps / b.rps,
                        target: (name == "cached credentials" && c == 64).then_some((0.85, true)),
                    });
                }
                if name == "cached credentials" && c == 64 {
                    self.report.ratios.push(Ratio {
                        label: format!("{short}, {c} conns: p99"),
                        value: a.p99_us / b.p99_us,
                        target: Some((1.25, false)),
                    });
                    self.report.verdicts.push(Verdict {
                        target:
                            "cached credentials at 64 connections: ≥ 85% of the baseline's req/s"
                                .into(),
                        measured: format!("{:.0}%", 100.0 * a.rps / b.rps),
                        met: a.rps / b.rps >= 0.85,
                    });
                    self.report.verdicts.push(Verdict {
                        target: "cached credentials at 64 connections: p99 ≤ 1.25 × the baseline's"
                            .into(),
                        measured: format!(
                            "{:.2} × ({} vs {})",
                            a.p99_us / b.p99_us,
                            latency(a.p99_us),
                            latency(b.p99_us)
                        ),
                        met: a.p99_us / b.p99_us <= 1.25,
                    });
                }
            }
        }
        // Passthrough of a small path.
        let proxy = servers::proxy(upstream.addr);
        let path = "/latest/meta-data/instance-id";
        let direct_url = self.url(upstream.addr.port(), path);
        let proxy_url = self.url(proxy.addr.port(), path);
        let agent_url = self.url(agent.port, path);
        for u in [&direct_url, &proxy_url, &agent_url] {
            wrk::run(from, u, 16, 1, false);
        }
        let scenario = format!(
            "passthrough /latest/meta-data/instance-id, 64 connections (median of {ROUNDS} interleaved runs)"
        );
        let scenario = scenario.as_str();
        let m = interleaved(
            from,
            &[&direct_url, &proxy_url, &agent_url],
            64,
            self.seconds,
            ROUNDS,
        );
        let (d, p, a) = (m[0].clone(), m[1].clone(), m[2].clone());
        self.report
            .lines
            .push(line(scenario, "baseline: the upstream directly", &d));
        self.report.lines.push(line(
            scenario,
            "baseline: minimal hyper reverse proxy (pooled)",
            &p,
        ));
        self.report.lines.push(line(scenario, "metadataproxy", &a));
        self.report.ratios.push(Ratio {
            label: "passthrough vs minimal proxy".into(),
            value: a.rps / p.rps,
            target: Some((0.85, true)),
        });
        self.report.ratios.push(Ratio {
            label: "passthrough vs upstream directly".into(),
            value: a.rps / d.rps,
            target: None,
        });
        self.report.verdicts.push(Verdict {
            target: "passthrough: ≥ 85% of the minimal proxy's req/s".into(),
            measured: format!("{:.0}%", 100.0 * a.rps / p.rps),
            met: a.rps / p.rps >= 0.85,
        });
        agent.stop();
        (docker_calls, sts_calls)
    }

    /// The first credential request of a new container, with the default prefetch and
    /// without, against one AssumeRole call alone.
    fn first_request(&mut self) {
        let tries = 6;
        let nonce = std::process::id();
        for (variant, prefetch) in [
            ("default (prefetch on)", "true"),
            ("CREDENTIAL_PREFETCH=false", "false"),
        ] {
            let agent = self.agent(
                &format!("first-{prefetch}"),
                "unix:///var/run/docker.sock",
                &[("CREDENTIAL_PREFETCH", prefetch.into())],
            );
            let mut times = Vec::new();
            for i in 0..tries {
                let role = format!("bench-new-{nonce}-{prefetch}-{i}");
                let c = Container::start(
                    &self.env,
                    &format!("bench-new-{i}"),
                    None,
                    &[("IAM_ROLE", &role_arn(&role))],
                );
                let url = self.url(
                    agent.port,
                    &format!("/latest/meta-data/iam/security-credentials/{role}"),
                );
                let out = c.run_inside(
                    "curl",
                    &[
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code} %{time_total}",
                        "--max-time",
                        "10",
                        &url,
                    ],
                );
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let mut parts = text.split_whitespace();
                assert_eq!(parts.next(), Some("200"), "first request: {text}");
                let secs: f64 = parts.next().and_then(|t| t.parse().ok()).expect("time");
                times.push(secs * 1e6);
            }
            let m = median(times.clone());
            let worst = times.iter().copied().fold(0.0, f64::max);
            self.report.lines.push(Line {
                scenario: "first request of a new container".into(),
                subject: format!("metadataproxy, {variant}"),
                p50_us: Some(m),
                other: format!("{tries} containers; slowest {}", latency(worst)),
                ..Line::default()
            });
            agent.stop();
        }
        // The STS call alone, through the same counter in front of moto.
        let cfg = metadataproxy_tests::aws_config(
            &self.aws.url(),
            metadataproxy_tests::test_credentials(),
        );
        let sts = metadataproxy_tests::rt().block_on(async {
            let client = aws_sdk_sts::Client::new(&cfg);
            let mut times = Vec::new();
            for i in 0..tries {
                let t = Instant::now();
                client
                    .assume_role()
                    .role_arn(role_arn(&format!("bench-sts-{nonce}-{i}")))
                    .role_session_name("bench")
                    .send()
                    .await
                    .expect("AssumeRole");
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            times
        });
        let m = median(sts);
        self.report.lines.push(Line {
            scenario: "first request of a new container".into(),
            subject: "baseline: one AssumeRole call to moto (AWS SDK)".into(),
            p50_us: Some(m),
            other: format!("{tries} calls"),
            ..Line::default()
        });
    }

    /// Connect + request per request: through the eBPF redirect, through the iptables-mode
    /// redirect, and directly to the agent's address. The three modes cannot run at once (the
    /// eBPF redirect rewrites the destination before the nf_tables redirect sees it), so each
    /// round starts and stops an agent per mode, and every mode's figure is the median of
    /// `ROUNDS` interleaved rounds.
    fn interception(&mut self, from: &Container) {
        let path = "/latest/meta-data/iam/security-credentials/bench-role";
        let metadata = format!("http://169.254.169.254{path}");
        let scenario =
            format!("connect + request (Connection: close), 16 connections (median of {ROUNDS} interleaved runs)");
        let pins = "/sys/fs/bpf/mp-bench";
        let _ = std::fs::remove_dir_all(pins);
        let modes: [(&str, Vec<(&str, String)>); 3] = [
            ("direct to the agent's address (no interception)", vec![]),
            (
                "iptables mode (nf_tables redirect)",
                vec![("INTERCEPT", "iptables".into())],
            ),
            (
                "eBPF mode (connect4 redirect)",
                vec![
                    ("INTERCEPT", "ebpf".into()),
                    ("EBPF_PIN_PATH", pins.into()),
                    ("EBPF_ON_SHUTDOWN", "detach".into()),
                ],
            ),
        ];
        let mut runs: Vec<Vec<Load>> = vec![Vec::new(); modes.len()];
        let mut sections = Vec::new();
        for round in 0..ROUNDS {
            for (i, (mode, vars)) in modes.iter().enumerate() {
                let agent = self.agent(
                    &format!("intercept-{i}-{round}"),
                    "unix:///var/run/docker.sock",
                    vars,
                );
                let url = if i == 0 {
                    self.url(agent.port, path)
                } else {
                    metadata.clone()
                };
                wrk::run(from, &url, 4, 1, true);
                let l = wrk::run(from, &url, 16, self.seconds, true);
                assert_eq!(l.non_2xx, 0, "{mode}: {l:?}");
                runs[i].push(l);
                if self.profile.is_some() && round == 0 {
                    // The whole machine: the kernel programs and the redirect's work run in
                    // the client's (wrk's) context and in softirq, not in the agent's.
                    let p = start_system_profile(self.seconds);
                    let profiled = wrk::run(from, &url, 16, self.seconds + 1, true);
                    let text = p.join().expect("profile");
                    sections.push(format!(
                        "## {mode}: {:.0} req/s while profiled\n\n{text}",
                        profiled.rps
                    ));
                }
                agent.stop();
            }
        }
        let _ = std::fs::remove_dir_all(pins);
        let medians: Vec<Load> = runs.iter().map(|r| median_load(r)).collect();
        for ((mode, _), l) in modes.iter().zip(&medians) {
            self.report.lines.push(line(&scenario, mode, l));
        }
        let (direct, iptables, ebpf) = (medians[0].rps, medians[1].rps, medians[2].rps);
        self.report.ratios.push(Ratio {
            label: "iptables mode vs direct (connect + request)".into(),
            value: iptables / direct,
            target: None,
        });
        self.report.ratios.push(Ratio {
            label: "eBPF mode vs direct (connect + request)".into(),
            value: ebpf / direct,
            target: Some((0.9, true)),
        });
        self.report.verdicts.push(Verdict {
            target: "connect + request in eBPF mode: ≥ 0.9 of direct connections to the agent"
                .into(),
            measured: format!("{:.2}", ebpf / direct),
            met: ebpf / direct >= 0.9,
        });
        self.report.verdicts.push(Verdict {
            target: "connect + request in eBPF mode: ≥ iptables mode in the same run".into(),
            measured: format!("{:.2} of iptables mode", ebpf / iptables),
            met: ebpf >= iptables,
        });
        if let Some(out) = &self.profile {
            let out = out.with_file_name("profile-interception.txt");
            let text = format!(
                "perf record -a -e cpu-clock (the whole machine) under the connect + request \
                 load (Connection: close, 16 connections), per interception mode (first round); \
                 self time by command, then by command and symbol\n\n{}\n",
                sections.join("\n\n")
            );
            std::fs::write(&out, text).expect("write the interception profile");
        }
    }

    /// Agents side by side, one per size `n`, each with its own Docker stand-in that lists
    /// `n - 1` synthetic containers and `real`, and `vars(n)`; returned once each one's
    /// prefetch has settled, with how many roles each cached.
    fn lookup_agents(
        &mut self,
        name: &str,
        real: &FakeContainer,
        sizes: &[usize],
        vars: impl Fn(usize) -> Vec<(&'static str, String)>,
    ) -> (Vec<DockerSocket>, Vec<BenchAgent>, Vec<usize>) {
        let mut stand_ins = Vec::new();
        let mut agents = Vec::new();
        let mut roles_cached = Vec::new();
        for &n in sizes {
            let roles = n.min(100);
            let mut containers: Vec<FakeContainer> = (0..n - 1)
                .map(|i| {
                    let mut c = FakeContainer::synthetic(i, roles);
                    c.role = role_arn(&c.role);
                    c
                })
                .collect();
            containers.push(real.clone());
            let socket = self.work.join(format!("docker-{name}-{n}.sock"));
            let docker = DockerSocket::stand_in(&socket, containers);
            let before = self.aws.count("AssumeRole");
            let agent = self.agent(&format!("{name}-{n}"), &docker.url(), &vars(n));
            // Prefetch: one AssumeRole per distinct role; wait until it has settled.
            let mut last = (self.aws.count("AssumeRole"), Instant::now());
            let settle = Instant::now();
            while settle.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(200));
                let now = self.aws.count("AssumeRole");
                if now != last.0 {
                    last = (now, Instant::now());
                } else if now - before >= roles && last.1.elapsed() > Duration::from_millis(600) {
                    break;
                }
            }
            roles_cached.push(self.aws.count("AssumeRole") - before);
            stand_ins.push(docker);
            agents.push(agent);
        }
        (stand_ins, agents, roles_cached)
    }

    /// Cached credentials at 64 connections from `from`, to each of `agents` in interleaved
    /// rounds; the Docker calls their stand-ins saw and the STS calls made meanwhile.
    fn lookup_loads(
        &self,
        from: &Container,
        stand_ins: &[DockerSocket],
        agents: &[BenchAgent],
    ) -> (Vec<Load>, Vec<String>, usize) {
        let path = "/latest/meta-data/iam/security-credentials/bench-role";
        let urls: Vec<String> = agents.iter().map(|a| self.url(a.port, path)).collect();
        for u in &urls {
            wrk::run(from, u, 16, 1, false);
        }
        let d0: Vec<usize> = stand_ins.iter().map(|d| d.requests().len()).collect();
        let s0 = self.aws.count("AssumeRole");
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        let loads = interleaved(from, &refs, 64, self.seconds, ROUNDS);
        let mut docker_calls = Vec::new();
        for (d, before) in stand_ins.iter().zip(d0) {
            docker_calls.extend(d.requests().into_iter().skip(before));
        }
        (loads, docker_calls, self.aws.count("AssumeRole") - s0)
    }

    /// Cached credentials at 64 connections with 10, 100 and 500 containers known (a Docker
    /// API stand-in); resident memory with 500 containers and 100 roles cached.
    fn lookup_cost(&mut self, from: &Container) -> (Vec<String>, usize) {
        let real = real_container(from);
        // Three agents side by side, each with its own stand-in, measured in interleaved
        // rounds.
        let sizes = [10usize, 100, 500];
        let (stand_ins, agents, roles_cached) =
            self.lookup_agents("lookup", &real, &sizes, |_| Vec::new());
        let (loads, docker_calls, sts_calls) = self.lookup_loads(from, &stand_ins, &agents);
        let base = loads[0].rps;
        for (i, n) in sizes.into_iter().enumerate() {
            let rss = agents[i].rss_kib() as f64 / 1024.0;
            let scenario = format!(
                "cached credentials, 64 connections, {n} containers known (median of {ROUNDS} interleaved runs)"
            );
            let mut l = line(&scenario, "metadataproxy (Docker API stand-in)", &loads[i]);
            l.other = format!(
                "{}resident {rss:.1} MB, {} roles cached",
                if l.other.is_empty() {
                    String::new()
                } else {
                    format!("{}; ", l.other)
                },
                roles_cached[i]
            );
            self.report.lines.push(l);
            if i == 0 {
                continue;
            }
            let cost = base / loads[i].rps;
            self.report.ratios.push(Ratio {
                label: format!("lookup cost, {n} vs 10 containers"),
                value: cost,
                target: Some((1.1, false)),
            });
            if n == 500 {
                self.report.verdicts.push(Verdict {
                    target: "lookup cost flat from 10 to 500 containers (ratio ≤ 1.1)".into(),
                    measured: format!("{cost:.2}"),
                    met: cost <= 1.1,
                });
                self.report.verdicts.push(Verdict {
                    target: "resident memory < 30 MB with 500 containers (100 roles cached)".into(),
                    measured: format!("{rss:.1} MB"),
                    met: rss < 30.0,
                });
            }
        }
        for agent in agents {
            agent.stop();
        }
        (docker_calls, sts_calls)
    }

    /// eBPF mode: cached credentials at 64 connections with 10 and 500 containers known.
    /// Each container has its cgroup under a container parent (the synthetic ones an empty
    /// `docker-<id>.scope`, one parent per agent), so a request pays what a host running that
    /// many containers makes it pay: the kernel's record, the cgroup-to-container lookup and
    /// the IP check. The load connects to each agent's redirect address directly (recorded by
    /// the kernel program like a redirected connect), so both agents run side by side.
    fn lookup_cost_ebpf(&mut self, from: &Container) -> (Vec<String>, usize) {
        let real = real_container(from);
        let root = metadataproxy_tests::cgroup2_root();
        let sizes = [10usize, 500];
        let cgroups: Vec<SyntheticCgroups> = sizes
            .iter()
            .map(|&n| {
                SyntheticCgroups::create(
                    &root.join(format!("mp-bench-{n}.slice")),
                    (0..n - 1).map(|i| FakeContainer::synthetic(i, 1).id),
                )
            })
            .collect();
        let pins = |n: usize| format!("/sys/fs/bpf/mp-bench-lookup-{n}");
        for &n in &sizes {
            let _ = std::fs::remove_dir_all(pins(n));
        }
        let (stand_ins, agents, _) = self.lookup_agents("lookup-ebpf", &real, &sizes, |n| {
            vec![
                ("INTERCEPT", "ebpf".into()),
                ("EBPF_PIN_PATH", pins(n)),
                ("EBPF_ON_SHUTDOWN", "detach".into()),
                // The synthetic parent first: a walk stats every synthetic container before it
                // finds the load's (under `docker`), as on a host where all n share a parent.
                (
                    "EBPF_CONTAINER_CGROUPS",
                    format!("mp-bench-{n}.slice,docker"),
                ),
            ]
        });
        let (loads, docker_calls, sts_calls) = self.lookup_loads(from, &stand_ins, &agents);
        for (i, n) in sizes.into_iter().enumerate() {
            let scenario = format!(
                "eBPF mode: cached credentials, 64 connections, {n} containers known (median of {ROUNDS} interleaved runs)"
            );
            let l = line(
                &scenario,
                "metadataproxy (Docker API stand-in, a cgroup per container)",
                &loads[i],
            );
            assert_eq!(l.other, "", "{scenario}: {:?}", loads[i]);
            self.report.lines.push(l);
        }
        let cost = loads[0].rps / loads[1].rps;
        self.report.ratios.push(Ratio {
            label: "eBPF lookup cost, 500 vs 10 containers".into(),
            value: cost,
            target: Some((1.1, false)),
        });
        self.report.verdicts.push(Verdict {
            target: "eBPF mode: lookup cost flat from 10 to 500 containers (ratio ≤ 1.1)".into(),
            measured: format!("{cost:.2}"),
            met: cost <= 1.1,
        });
        for agent in agents {
            agent.stop();
        }
        for &n in &sizes {
            let _ = std::fs::remove_dir_all(pins(n));
        }
        drop(cgroups);
        (docker_calls, sts_calls)
    }

    /// Spawn to `/readyz` 200 in classic mode, five times.
    fn start_up(&mut self) {
        let mut times = Vec::new();
        for i in 0..5 {
            let agent = self.agent(&format!("start-{i}"), "unix:///var/run/docker.sock", &[]);
            times.push(agent.start_to_ready.as_secs_f64() * 1e6);
            agent.stop();
        }
        let m = median(times.clone());
        self.report.lines.push(Line {
            scenario: "start-up to ready (classic mode, /readyz 200)".into(),
            subject: "metadataproxy".into(),
            p50_us: Some(m),
            other: format!(
                "5 starts; slowest {}",
                latency(times.iter().copied().fold(0.0, f64::max))
            ),
            ..Line::default()
        });
        self.report.verdicts.push(Verdict {
            target: "start-up to ready < 200 ms in classic mode (median of 5)".into(),
            measured: latency(m),
            met: m < 200_000.0,
        });
    }
}

/// `perf record` of `pid` for `seconds` (CPU clock, DWARF call graphs), reported to `out`:
/// the symbols by self time, then by time including callees.
fn start_profile(pid: u32, seconds: u32, out: PathBuf) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let data = std::env::temp_dir().join("metadataproxy-bench.perf.data");
        let status = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "499"])
            .args(["--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
            .arg(&data)
            .args(["--", "sleep", &seconds.to_string()])
            .status()
            .expect("perf");
        assert!(status.success(), "perf record failed");
        let report = |extra: &[&str]| {
            let out = Command::new("perf")
                .args(["report", "--stdio", "-g", "none", "--percent-limit", "1"])
                .args(["--sort", "symbol", "-i"])
                .arg(&data)
                .args(extra)
                .output()
                .expect("perf report");
            // Without the runtime's own frames, which include everything.
            let generic = [
                "tokio::runtime",
                "std::sys",
                "clone3",
                "start_thread",
                "FnOnce",
                "graceful::GracefulConnectionFuture",
                "serve::{{closure}}",
            ];
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter(|l| !generic.iter().any(|g| l.contains(g)))
                .map(|l| l.trim_end().trim_end_matches(['-', ' ']).to_string())
                .take(45)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let text = format!(
            "perf record -e cpu-clock --call-graph dwarf of the agent under the cached-credentials \
             load at 64 connections\n\n## Self time\n\n{}\n\n## Including callees\n\n{}\n",
            report(&["--no-children"]),
            report(&["--children"]),
        );
        std::fs::write(&out, text).expect("write the profile");
        let _ = std::fs::remove_file(&data);
    })
}

/// `perf record -a` for `seconds` (CPU clock, no call graphs): the self time of every command
/// and symbol on the machine, kernel included.
fn start_system_profile(seconds: u32) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let data = std::env::temp_dir().join("metadataproxy-bench-system.perf.data");
        let status = Command::new("perf")
            .args(["record", "-q", "-a", "-e", "cpu-clock", "-F", "999", "-o"])
            .arg(&data)
            .args(["--", "sleep", &seconds.to_string()])
            .status()
            .expect("perf");
        assert!(status.success(), "perf record failed");
        let report = |sort: &str, limit: &str, lines: usize| {
            let out = Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "--percent-limit",
                    limit,
                ])
                .args(["--sort", sort, "-i"])
                .arg(&data)
                .output()
                .expect("perf report");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .take(lines)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let text = format!(
            "By command:\n\n{}\n\nBy command and symbol:\n\n{}",
            report("comm", "0.5", 12),
            report("comm,dso,symbol", "0.4", 40)
        );
        let _ = std::fs::remove_file(&data);
        text
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out = PathBuf::from("docs/bench");
    let mut seconds = 5;
    let mut profile = false;
    let mut only: Option<Vec<String>> = None;
    let mut dogstatsd = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(args.next().expect("--out DIR")),
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds N")
            }
            "--profile" => profile = true,
            "--dogstatsd" => dogstatsd = true,
            "--only" => {
                let names: Vec<String> = args
                    .next()
                    .expect("--only SCENARIO[,SCENARIO...]")
                    .split(',')
                    .map(str::to_string)
                    .collect();
                for n in &names {
                    assert!(
                        SCENARIOS.contains(&n.as_str()),
                        "unknown scenario {n} (one of {})",
                        SCENARIOS.join(", ")
                    );
                }
                only = Some(names);
            }
            other => panic!(
                "unknown flag {other} (--out DIR, --seconds N, --profile, --only SCENARIO,..., --dogstatsd)"
            ),
        }
    }
    let wants = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));
    std::fs::create_dir_all(&out).expect("output directory");
    let began = Instant::now();
    let env = test_env();
    let work = std::env::temp_dir().join("metadataproxy-bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work directory");
    let aws = AwsCounter::start(&env.moto_url);
    let mut b = Bench {
        gateway: docker0_gateway(),
        agent_bin: agent_binary(),
        env,
        work,
        seconds,
        aws,
        report: Report::default(),
        profile: profile.then(|| out.join("profile.txt")),
        dogstatsd: dogstatsd.then(UdpSink::start),
    };
    b.report.environment = environment();
    if let Some(sink) = &b.dogstatsd {
        b.report.environment.push((
            "metrics sink".into(),
            format!("DogStatsD over UDP to {} (--dogstatsd)", sink.addr),
        ));
    }
    let from = Container::start(
        &b.env,
        "bench",
        None,
        &[("IAM_ROLE", &role_arn("bench-role"))],
    );
    // The upstream for passthrough, reachable from the container (0.0.0.0).
    let upstream = FakeUpstream::start_on("0.0.0.0:0".parse().expect("addr"));

    let (mut d1, mut s1) = (Vec::new(), 0);
    if wants("hot") {
        eprintln!("[bench] hot paths");
        (d1, s1) = b.hot_paths(&from, &upstream);
    }
    let (mut d2, mut s2) = (Vec::new(), 0);
    if wants("lookup") {
        eprintln!("[bench] lookup cost and memory");
        (d2, s2) = b.lookup_cost(&from);
    }
    if wants("lookup-ebpf") {
        eprintln!("[bench] lookup cost in eBPF mode");
        let (d, s) = b.lookup_cost_ebpf(&from);
        d2.extend(d);
        s2 += s;
    }
    // The lookup-cost agents live less than a minute, so their index's background reconcile
    // (a full sync every DOCKER_RECONCILE_INTERVAL, 60 s) never runs during their loads: every
    // Docker call there would be on the request path. The hot-path agent runs longer; its
    // calls are reported as seen (a reconcile is a list plus an inspect per container).
    let loaded = ["hot", "lookup", "lookup-ebpf"].into_iter().any(wants);
    b.report.verdicts.push(Verdict {
        target: "zero Docker and STS calls on the hot path (during every cached-credentials load)"
            .into(),
        measured: format!(
            "{} Docker calls during the 10/100/500-container loads (classic and eBPF mode); \
             {} STS calls during all loads (the long-running hot-path agent's 60 s background \
             reconcile made {} lists and {} inspects)",
            d2.len(),
            s1 + s2,
            d1.iter().filter(|c| c.contains("/containers/json")).count(),
            d1.iter()
                .filter(|c| !c.contains("/containers/json"))
                .count(),
        ),
        met: d2.is_empty() && s1 + s2 == 0,
    });
    if !loaded {
        b.report.verdicts.pop();
    }
    if wants("first") {
        eprintln!("[bench] first request of a new container");
        b.first_request();
    }
    if wants("interception") {
        eprintln!("[bench] interception");
        b.interception(&from);
    }
    if wants("startup") {
        eprintln!("[bench] start-up");
        b.start_up();
    }
    b.report.environment.push((
        "benchmark duration".into(),
        format!("{:.0} s", began.elapsed().as_secs_f64()),
    ));

    if let Some(sink) = &b.dogstatsd {
        b.report.environment.push((
            "DogStatsD lines received".into(),
            sink.lines().len().to_string(),
        ));
    }
    print!("{}", b.report.text());
    if only.is_some() {
        // A partial run's table is not the benchmark's.
        eprintln!("[bench] --only: {} not written", out.display());
    } else {
        write(&out.join("results.md"), &b.report.markdown());
        write(&out.join("results.svg"), &b.report.svg());
        eprintln!(
            "[bench] wrote {} and {}",
            out.join("results.md").display(),
            out.join("results.svg").display()
        );
    }
    drop(upstream);
    drop(from);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn environment() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let sh = |c: &str, a: &[&str]| {
        Command::new(c)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    vec![
        ("date".into(), sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
        (
            "commit".into(),
            sh("git", &["rev-parse", "--short", "HEAD"]),
        ),
        (
            "machine".into(),
            format!(
                "{} cores ({cpu}), kernel {}",
                std::thread::available_parallelism().map_or(0, |n| n.get()),
                sh("uname", &["-r"])
            ),
        ),
        (
            "load generator".into(),
            sh("wrk", &["-v"])
                .lines()
                .next()
                .unwrap_or("wrk")
                .to_string(),
        ),
    ]
}
