//! Podman as the container engine: its rootful API service, which the test command starts on a
//! socket of its own (`mp_start_podman` in `scripts/test-env.sh`), its networks, and what
//! netavark leaves on the host.
//!
//! netavark turns `ip_forward` on and leaves its chains (`NETAVARK_FORWARD`,
//! `NETAVARK-HOSTPORT-*`) and the jumps to them in iptables when its last container goes;
//! [`NetavarkRestore`] puts both back as they were. Forwarding off Podman's bridges is dropped
//! by the test command's guard meanwhile.

use std::path::PathBuf;
use std::process::Command;

use crate::{run, Container};

/// `podman run` on this machine needs lower limits than its hard ones.
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// The Podman API service of the test command.
#[derive(Debug, Clone)]
pub struct Podman {
    /// Its socket (`MP_TEST_PODMAN_SOCK`).
    pub socket: PathBuf,
    /// The busybox image in its storage (`MP_TEST_PODMAN_IMAGE`).
    pub image: String,
}

impl Podman {
    /// The service of the test command; panics (never skips) when it is missing or silent.
    pub fn from_env() -> Podman {
        let get = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!(
                    "{k} is not set: the Podman tests need the `podman system service` that \
                     scripts/test.sh starts (mp_install_podman, mp_start_podman)"
                )
            })
        };
        let podman = Podman {
            socket: get("MP_TEST_PODMAN_SOCK").into(),
            image: get("MP_TEST_PODMAN_IMAGE"),
        };
        let ping = Command::new("curl")
            .args(["-fsS", "--max-time", "5", "--unix-socket"])
            .arg(&podman.socket)
            .arg("http://podman/_ping")
            .output()
            .expect("curl");
        assert!(
            ping.status.success(),
            "Podman's API service does not answer on {}: {}",
            podman.socket.display(),
            String::from_utf8_lossy(&ping.stderr)
        );
        podman
    }

    /// `unix://...` for the agent's `DOCKER_URL`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The podman CLI as a client of the service.
    pub fn cli(&self) -> Vec<String> {
        vec![
            "podman".into(),
            "--remote".into(),
            "--url".into(),
            self.url(),
        ]
    }

    /// Runs the podman CLI, panicking with its output if it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let cli = self.cli();
        let mut all: Vec<&str> = cli[1..].iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        run("podman", &all)
    }

    /// `sleep` in a new container `mp-test-{name}` on `network` (`None`: Podman's default
    /// bridge) with `vars` and extra `podman run` flags.
    pub fn container(
        &self,
        name: &str,
        network: Option<&str>,
        vars: &[(&str, &str)],
        flags: &[&str],
    ) -> Container {
        let all: Vec<&str> = ULIMITS.iter().chain(flags).copied().collect();
        Container::run_on(
            self.cli(),
            &self.image,
            name,
            network,
            vars,
            &all,
            &["sleep", "3600"],
        )
    }

    /// The first subnet and gateway of a Podman network (`podman` is the default bridge).
    pub fn subnet_of(&self, network: &str) -> (String, String) {
        let out = self.run(&[
            "network",
            "inspect",
            "--format",
            "{{range .Subnets}}{{.Subnet}} {{.Gateway}} {{end}}",
            network,
        ]);
        let mut words = out.split_whitespace();
        match (words.next(), words.next()) {
            (Some(subnet), Some(gateway)) => (subnet.to_string(), gateway.to_string()),
            _ => panic!("network {network} has no subnet: {out}"),
        }
    }
}

/// A Podman network `mp-test-{name}` on a pinned subnet, removed when dropped.
#[derive(Debug)]
pub struct PodmanNetwork {
    /// `mp-test-...`.
    pub name: String,
    /// `a.b.c.0/24`.
    pub subnet: String,
    /// `a.b.c.1`.
    pub gateway: String,
    podman: Podman,
}

impl PodmanNetwork {
    /// Creates `mp-test-{name}` on `172.31.{octet}.0/24`.
    pub fn create(podman: &Podman, name: &str, octet: u8) -> PodmanNetwork {
        let name = format!("mp-test-{name}");
        let subnet = format!("172.31.{octet}.0/24");
        let gateway = format!("172.31.{octet}.1");
        let _ = Command::new("podman")
            .args(&podman.cli()[1..])
            .args(["network", "rm", "-f", &name])
            .output();
        podman.run(&[
            "network",
            "create",
            "--subnet",
            &subnet,
            "--gateway",
            &gateway,
            &name,
        ]);
        PodmanNetwork {
            name,
            subnet,
            gateway,
            podman: podman.clone(),
        }
    }
}

impl Drop for PodmanNetwork {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(&self.podman.cli()[1..])
            .args(["network", "rm", "-f", &self.name])
            .output();
    }
}

/// Puts `ip_forward` and the iptables chains back as they were when it was made, once the
/// test's containers are gone (drop it last).
#[derive(Debug)]
pub struct NetavarkRestore {
    ip_forward: String,
    /// `iptables-save` and `ip6tables-save` lines before.
    before: Vec<(&'static str, String)>,
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl NetavarkRestore {
    /// Records the state now.
    pub fn record() -> NetavarkRestore {
        NetavarkRestore {
            ip_forward: std::fs::read_to_string(IP_FORWARD).expect("read ip_forward"),
            before: ["iptables", "ip6tables"]
                .into_iter()
                .map(|p| (p, save(p)))
                .collect(),
        }
    }

    /// What differs now from the record, `iptables-save` style; empty when restored.
    pub fn difference(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (program, before) in &self.before {
            let now = save(program);
            let was: Vec<&str> = before.lines().collect();
            let is: Vec<&str> = now.lines().collect();
            out.extend(
                is.iter()
                    .filter(|l| !was.contains(l))
                    .map(|l| format!("{program}: + {l}")),
            );
            out.extend(
                was.iter()
                    .filter(|l| !is.contains(l))
                    .map(|l| format!("{program}: - {l}")),
            );
        }
        let forward = std::fs::read_to_string(IP_FORWARD).unwrap_or_default();
        if forward != self.ip_forward {
            out.push(format!(
                "ip_forward: {} (was {})",
                forward.trim(),
                self.ip_forward.trim()
            ));
        }
        out
    }

    /// Deletes the netavark rules and chains that were not there before, and restores
    /// `ip_forward`.
    pub fn restore(&self) {
        for (program, before) in &self.before {
            let now = save(program);
            let mut table = "filter";
            let mut chains = Vec::new();
            for line in now.lines() {
                if let Some(t) = line.strip_prefix('*') {
                    table = t;
                } else if before.lines().any(|l| l == line) {
                    continue;
                } else if let Some(chain) = line.strip_prefix(':') {
                    let chain = chain.split_whitespace().next().unwrap_or_default();
                    if chain.starts_with("NETAVARK") {
                        chains.push((table, chain.to_string()));
                    }
                } else if let Some(rule) = line.strip_prefix("-A ") {
                    let chain = rule.split_whitespace().next().unwrap_or_default();
                    if !chain.starts_with("NETAVARK") && rule.contains("NETAVARK") {
                        // The line as iptables-save quotes it: the shell splits it back.
                        let _ = Command::new("sh")
                            .arg("-c")
                            .arg(format!("{program} -w -t {table} -D {rule}"))
                            .output();
                    }
                }
            }
            for (table, chain) in &chains {
                let _ = Command::new(program)
                    .args(["-w", "-t", table, "-F", chain])
                    .output();
            }
            for (table, chain) in &chains {
                let _ = Command::new(program)
                    .args(["-w", "-t", table, "-X", chain])
                    .output();
            }
        }
        let _ = std::fs::write(IP_FORWARD, &self.ip_forward);
    }
}

impl Drop for NetavarkRestore {
    fn drop(&mut self) {
        self.restore();
    }
}

/// `iptables-save` (or `ip6tables-save`) without comments and counters.
fn save(program: &str) -> String {
    let out = Command::new(format!("{program}-save"))
        .output()
        .unwrap_or_else(|e| panic!("{program}-save: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.find(" [")) {
            (true, Some(i)) => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}
