//! Callers that are no container, end to end against a real Docker engine (behind a proxy that
//! counts the agent's API calls): they cannot make the agent load Docker, the host's addresses
//! get their 404 without the retry window, and a container that starts while its address is
//! remembered as "no container" is still served on its first request.
//!
//! Host addresses are added on the test network's bridge (or on loopback) and removed by a
//! guard; requests are sent from them to the agent's port on the bridge address, exempted from
//! Docker's masquerade (which would rewrite a host source inside a Docker subnet), so that the
//! agent sees them as the peer.

use std::time::{Duration, Instant};

use metadataproxy_tests::sinks::http_get;
use metadataproxy_tests::{
    error_descriptions, eventually, rt, run, Agent, Classic, DockerSocket, Network, Rule,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CREDENTIALS: &str = "/latest/meta-data/iam/security-credentials/";

/// An address added to a host interface, removed when dropped.
#[derive(Debug)]
struct HostAddress {
    addr: String,
    dev: String,
}

impl HostAddress {
    fn add(addr: &str, dev: &str) -> HostAddress {
        let _ = std::process::Command::new("ip")
            .args(["addr", "del", &format!("{addr}/32"), "dev", dev])
            .output();
        run("ip", &["addr", "add", &format!("{addr}/32"), "dev", dev]);
        HostAddress {
            addr: addr.into(),
            dev: dev.into(),
        }
    }
}

impl Drop for HostAddress {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args([
                "addr",
                "del",
                &format!("{}/32", self.addr),
                "dev",
                &self.dev,
            ])
            .output();
    }
}

/// Exempts host traffic from `src` from Docker's masquerade of its subnets, until dropped.
fn unmasqueraded(src: &str) -> Rule {
    Rule::insert(
        "nat",
        "POSTROUTING",
        &["-s", &format!("{src}/32"), "-j", "RETURN"],
    )
}

/// docker0's IPv4 address on the host (Docker 20.10 leaves it out of the bridge network's
/// IPAM configuration).
fn docker0_address() -> String {
    let shown = run("ip", &["-4", "-o", "addr", "show", "dev", "docker0"]);
    shown
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("docker0 has no IPv4 address: {shown}"))
        .to_string()
}

/// How many request lines carry `description`, once at least `want` do (the log reaches the
/// test through a pipe and a reader thread), or what there is after 5 s.
fn lines_with(agent: &Agent, description: &str, want: usize) -> Option<usize> {
    eventually(Duration::from_secs(5), || {
        let n = error_descriptions(agent)
            .get(description)
            .copied()
            .unwrap_or(0);
        (n >= want).then_some(n)
    })
    .or_else(|| error_descriptions(agent).get(description).copied())
}

/// The peers of the agent's request lines.
fn peers(agent: &Agent) -> Vec<String> {
    agent
        .logs()
        .iter()
        .filter(|l| l["message"] == "request")
        .filter_map(|l| l["remote_addr"].as_str().map(str::to_string))
        .collect()
}

/// The network's id and its bridge interface on the host.
fn id_and_bridge(net: &Network) -> (String, String) {
    let id = run(
        "docker",
        &["network", "inspect", "--format", "{{.Id}}", &net.name],
    );
    let bridge = format!("br-{}", &id[..12]);
    (id, bridge)
}

/// `method path` from `src` to the agent's port on `dst`, one connection, at most `limit`:
/// the status, or `None` if no answer came within `limit`.
async fn request(
    src: &str,
    dst: &str,
    port: u16,
    method: &str,
    path: &str,
    limit: Duration,
) -> Option<u16> {
    let exchange = async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{src}:0").parse().expect("source"))
            .unwrap_or_else(|e| panic!("bind {src}: {e}"));
        let mut stream = socket
            .connect(format!("{dst}:{port}").parse().expect("destination"))
            .await
            .unwrap_or_else(|e| panic!("connect {src} -> {dst}:{port}: {e}"));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n\
             X-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    tokio::time::timeout(limit, exchange).await.ok()
}

fn request_blocking(src: &str, dst: &str, port: u16, method: &str, path: &str) -> Option<u16> {
    rt().block_on(request(
        src,
        dst,
        port,
        method,
        path,
        Duration::from_secs(2),
    ))
}

/// The agent's container listings: each direct lookup is one (a full sync is one too).
fn listings(docker: &DockerSocket) -> usize {
    docker
        .requests()
        .iter()
        .filter(|r| r.contains("/containers/json"))
        .count()
}

/// Waits until the agent has inspected the network `id` (it learns a network's subnets from
/// its `create` event).
fn wait_for_network(docker: &DockerSocket, id: &str) {
    eventually(Duration::from_secs(10), || {
        docker
            .requests()
            .iter()
            .any(|r| r.contains(&format!("/networks/{id}")))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the agent did not inspect network {id}: {:?}",
            docker.requests()
        )
    });
}

/// `metadataproxy_docker_lookup_total{source}` summed over results.
fn lookups_by(admin: &str, source: &str) -> f64 {
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with("metadataproxy_docker_lookup_total{"))
        .filter(|l| l.contains(&format!("source=\"{source}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_flood_from_an_address_no_container_owns_makes_a_docker_call_per_window_not_per_request() {
    const N: usize = 500;
    let docker = DockerSocket::counting("unknown-flood");
    let s = Classic::start(
        "unknown-flood",
        81,
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("DOCKER_URL", &docker.url()),
            ("DOCKER_RECONCILE_INTERVAL", "1h"),
            ("ENABLE_PROMETHEUS", "true"),
            // N connections from one address, all at once, every one answered by the lookup
            // (the per-caller rate would answer most of them 429 before any lookup).
            ("MAX_CONNECTIONS_PER_IP", "0"),
            ("REQUEST_RATE_LIMIT", "0"),
        ],
    );
    let (id, bridge) = id_and_bridge(&s.net);
    wait_for_network(&docker, &id);
    // A host process on the bridge, at an address inside the subnet that no container has:
    // it may be a container starting, so it gets the retry window, and its lookups go to the
    // negative cache.
    let spare = HostAddress::add("172.30.81.200", &bridge);
    let _direct = unmasqueraded(&spare.addr);
    let port = s.agent.port;
    let before = listings(&docker);
    let started = Instant::now();
    let statuses: Vec<Option<u16>> = rt().block_on(async {
        let requests = (0..N).map(|_| {
            tokio::spawn(async move {
                request(
                    "172.30.81.200",
                    "172.30.81.1",
                    port,
                    "GET",
                    CREDENTIALS,
                    Duration::from_secs(30),
                )
                .await
            })
        });
        let mut out = Vec::with_capacity(N);
        for r in requests.collect::<Vec<_>>() {
            out.push(r.await.expect("request task"));
        }
        out
    });
    let elapsed = started.elapsed();
    let during = listings(&docker) - before;
    drop(spare);
    let not_404: Vec<&Option<u16>> = statuses.iter().filter(|s| **s != Some(404)).collect();
    assert!(
        not_404.is_empty(),
        "every request is 404: {} are not ({:?}...)",
        not_404.len(),
        &not_404[..not_404.len().min(5)]
    );
    eprintln!("{N} requests over {elapsed:?}: {during} container listings");
    // One lookup per 1 s window at most, plus the window the flood started in.
    let bound = elapsed.as_secs() as usize + 2;
    assert!(
        during <= bound,
        "{N} requests over {elapsed:?} made {during} container listings (at most {bound})"
    );
    assert!(
        peers(&s.agent).iter().all(|p| p == "172.30.81.200"),
        "the agent saw the spare address"
    );
    let suppressed = lookups_by(&s.agent.admin_addr(), "negative_cache");
    assert!(
        suppressed >= (N - bound) as f64,
        "the lookups were answered by the negative cache: {suppressed}"
    );
    // The log reaches the test through a pipe: wait for every line.
    assert_eq!(lines_with(&s.agent, "could_not_find_container", N), Some(N));
}

#[test]
fn host_addresses_get_their_404_at_once_and_cost_no_docker_call() {
    let docker = DockerSocket::counting("unknown-host");
    let s = Classic::start(
        "unknown-host",
        82,
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("DOCKER_URL", &docker.url()),
            ("DOCKER_RECONCILE_INTERVAL", "1h"),
            ("ENABLE_PROMETHEUS", "true"),
        ],
    );
    let (id, _) = id_and_bridge(&s.net);
    wait_for_network(&docker, &id);
    // An address outside every Docker network, on loopback (traffic stays on the host).
    let outside = HostAddress::add("198.51.100.7", "lo");
    let port = s.agent.port;
    let before = listings(&docker);
    // From the test network's gateway, docker0's gateway, and the outside address; each would
    // wait the 5 s window (and time out here, after 2 s) if it were treated as a container.
    let docker0 = docker0_address();
    let sources = [s.net.gateway.as_str(), docker0.as_str(), &outside.addr];
    let _direct: Vec<Rule> = sources.iter().map(|src| unmasqueraded(src)).collect();
    for src in sources {
        for path in [
            CREDENTIALS,
            "/latest/meta-data/iam/security-credentials/some-role",
        ] {
            let status = request_blocking(src, &s.net.gateway, port, "GET", path);
            assert_eq!(status, Some(404), "{src} {path}: {}", s.agent.raw_logs());
        }
        // A token for the address: the agent's lookup costs no Docker call either.
        let status = request_blocking(src, &s.net.gateway, port, "PUT", "/latest/api/token");
        assert_eq!(status, Some(200), "{src} token");
    }
    assert_eq!(
        listings(&docker) - before,
        0,
        "no Docker lookup for the host's addresses: {:?}",
        docker.requests()
    );
    assert_eq!(lines_with(&s.agent, "could_not_find_container", 6), Some(6));
    let mut seen = peers(&s.agent);
    seen.dedup();
    assert_eq!(seen, sources, "the agent saw each source as the peer");
    assert!(lookups_by(&s.agent.admin_addr(), "networks") >= 9.0);
}

#[test]
fn a_container_started_while_its_address_is_remembered_as_no_container_is_served_at_once() {
    let docker = DockerSocket::counting("unknown-race");
    let s = Classic::start(
        "unknown-race",
        83,
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("DOCKER_URL", &docker.url()),
            ("DOCKER_RECONCILE_INTERVAL", "1h"),
        ],
    );
    let (id, bridge) = id_and_bridge(&s.net);
    wait_for_network(&docker, &id);
    let addr = "172.30.83.77";
    let name = "mp-test-unknown-race";
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", name])
        .output();
    // Created ahead (the slow part of `docker run`), started later: its first request is made
    // as soon as it runs, and must wait for nothing but the agent's start event.
    let script = format!(
        "r=$(timeout 8 wget -q -O - http://169.254.169.254{CREDENTIALS} 2>/dev/null); \
         echo \"${{r:-FAILED}}\" > /tmp/first; sleep 3600"
    );
    run(
        "docker",
        &[
            "create",
            "--name",
            name,
            "--network",
            &s.net.name,
            "--ip",
            addr,
            "-e",
            "IAM_ROLE=race-role",
            &s.env.image,
            "sh",
            "-c",
            &script,
        ],
    );
    let _container = RemoveContainer(name);
    // The agent learns that no container has the address: a token request from it, by the
    // host, makes the one direct lookup that the negative cache remembers.
    let spare = HostAddress::add(addr, &bridge);
    let direct = unmasqueraded(addr);
    let before = listings(&docker);
    let status = request_blocking(
        addr,
        &s.net.gateway,
        s.agent.port,
        "PUT",
        "/latest/api/token",
    );
    assert_eq!(status, Some(200));
    assert_eq!(
        listings(&docker) - before,
        1,
        "one direct lookup for {addr}: {:?}\n{}",
        docker.requests(),
        s.agent.raw_logs()
    );
    assert_eq!(peers(&s.agent), [addr]);
    let remembered = Instant::now();
    drop(direct);
    drop(spare);
    run("docker", &["start", name]);
    eprintln!(
        "started {:?} after the miss was remembered (window: 1 s)",
        remembered.elapsed()
    );
    let first = eventually(Duration::from_secs(20), || {
        let out = std::process::Command::new("docker")
            .args(["exec", name, "cat", "/tmp/first"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
    .unwrap_or_else(|| panic!("the container made no request: {}", s.agent.raw_logs()));
    assert_eq!(first, "race-role", "{}", s.agent.raw_logs());
}

/// Removes a container created by name when dropped.
#[derive(Debug)]
struct RemoveContainer(&'static str);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", self.0])
            .output();
    }
}
