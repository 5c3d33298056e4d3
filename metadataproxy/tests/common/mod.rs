//! In-process fixtures: the real server and router over loopback, with fakes behind the
//! Docker, STS and IAM seams and the built-in emulator as a recording upstream.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use metadataproxy::app::Deps;
use metadataproxy::builtin::Emulator;
use metadataproxy::clock::SystemClock;
use metadataproxy::config::{Args, BuiltinValues, Config};
use metadataproxy::identity::kernel::{ConnRecord, KernelIdentity};
use metadataproxy::identity::{Container, ContainerLookup, LookupError};
use metadataproxy::roles::Partition;
use metadataproxy::testing::{FakeIam, FakeSts};
use metadataproxy::upstream::{HttpUpstream, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Containers by IP.
#[derive(Debug, Default)]
pub struct FakeLookup(pub Mutex<HashMap<IpAddr, Container>>);

impl ContainerLookup for FakeLookup {
    fn by_ip(&self, ip: IpAddr) -> BoxFuture<'_, Result<Option<Container>, LookupError>> {
        let found = self.0.lock().unwrap().get(&ip).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Container>, LookupError>> {
        let found = self
            .0
            .lock()
            .unwrap()
            .values()
            .find(|c| c.id == id)
            .cloned();
        Box::pin(async move { Ok(found) })
    }
}

/// The request core's services without a socket: `containers` behind the Docker seam (by
/// address), fake STS and IAM, the built-in emulator upstream, `flags` on top of a zero
/// lookup window.
pub fn services_without_socket(
    containers: &[(&str, Container)],
    flags: &[&str],
) -> (metadataproxy::server::Services, Arc<FakeSts>) {
    let lookup = Arc::new(FakeLookup::default());
    for (ip, c) in containers {
        lookup
            .0
            .lock()
            .unwrap()
            .insert(ip.parse().expect("an IP"), c.clone());
    }
    let sts = Arc::new(FakeSts::default());
    let mut all = vec!["--container-lookup-timeout", "0"];
    all.extend_from_slice(flags);
    let services = metadataproxy::app::services(
        &config(&all),
        Deps {
            lookup,
            sts: sts.clone(),
            iam: Arc::new(FakeIam::default()),
            upstream: Arc::new(Emulator::new(BuiltinValues::default())),
            clock: Arc::new(SystemClock),
            partition: Partition::for_region("us-east-1"),
            kernel: None,
        },
    );
    (services, sts)
}

/// A running in-process agent.
pub struct Harness {
    pub addr: SocketAddr,
    pub upstream: Emulator,
    pub upstream_addr: SocketAddr,
    pub lookup: Arc<FakeLookup>,
    pub sts: Arc<FakeSts>,
    pub iam: Arc<FakeIam>,
}

pub fn config(extra: &[&str]) -> Config {
    let mut argv = vec!["metadataproxy".to_string()];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    Config::try_from(Args::parse_from_vars(argv, []).expect("flags")).expect("valid config")
}

impl Harness {
    /// Starts the agent with `flags`, the emulator as upstream over TCP (unless `upstream`
    /// overrides it), and 127.0.0.1 mapped to `container` if given.
    pub async fn start(flags: &[&str], container: Option<Container>) -> Harness {
        Self::start_with(flags, container, None).await
    }

    /// Like [`Harness::start`], in eBPF mode with `kernel` as the kernel's records.
    pub async fn start_with(
        flags: &[&str],
        container: Option<Container>,
        kernel: Option<Arc<dyn KernelIdentity>>,
    ) -> Harness {
        let emulator = Emulator::new(BuiltinValues::default());
        let up_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = up_listener.local_addr().unwrap();
        emulator.serve(up_listener);
        let mut all = vec![
            "--container-lookup-timeout".to_string(),
            "0".to_string(),
            "--metadata-url".to_string(),
            format!("http://{upstream_addr}"),
        ];
        all.extend(flags.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let config = config(&refs);
        let upstream: Arc<dyn Upstream> = match &config.upstream {
            metadataproxy::config::UpstreamConfig::Url(base) => Arc::new(HttpUpstream::new(
                base.clone(),
                config.upstream_connect_timeout,
                config.upstream_timeout,
            )),
            metadataproxy::config::UpstreamConfig::Builtin(_) => Arc::new(emulator.clone()),
        };
        let lookup = Arc::new(FakeLookup::default());
        if let Some(c) = container {
            lookup
                .0
                .lock()
                .unwrap()
                .insert("127.0.0.1".parse().unwrap(), c);
        }
        let sts = Arc::new(FakeSts::default());
        let iam = Arc::new(FakeIam::default());
        let state = Arc::new(metadataproxy::app::services(
            &config,
            Deps {
                lookup: lookup.clone(),
                sts: sts.clone(),
                iam: iam.clone(),
                upstream,
                clock: Arc::new(SystemClock),
                partition: Partition::for_region("us-east-1"),
                kernel,
            },
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(metadataproxy::server::serve(
            listener,
            state,
            std::future::pending(),
            Duration::from_secs(1),
        ));
        Harness {
            addr,
            upstream: emulator,
            upstream_addr,
            lookup,
            sts,
            iam,
        }
    }

    pub async fn get(&self, path: &str) -> RawResponse {
        raw_request(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"),
        )
        .await
    }
}

pub fn container(role: Option<&str>, external_id: Option<&str>) -> Container {
    let mut env = vec![];
    let role_kv = role.map(|r| format!("IAM_ROLE={r}"));
    let ext_kv = external_id.map(|e| format!("IAM_EXTERNAL_ID={e}"));
    env.extend(role_kv.as_deref());
    env.extend(ext_kv.as_deref());
    Container::from_env(
        "0123456789abcdef0123456789abcdef".into(),
        "/web".into(),
        "img:1".into(),
        env,
    )
}

/// A parsed HTTP/1.1 answer.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `raw` bytes as they are (no client-side normalisation of the path) and reads the
/// answer until the server closes.
pub async fn raw_request(addr: SocketAddr, raw: &str) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("answer within 20 s")
        .unwrap();
    parse_response(&buf)
}

/// Like [`raw_request`], from the loopback address `src` (127.0.0.0/8: every one is local).
pub async fn raw_request_from(src: &str, addr: SocketAddr, raw: &str) -> RawResponse {
    let mut s = connect_from(src, addr).await;
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("answer within 20 s")
        .unwrap();
    parse_response(&buf)
}

/// A connection to `addr` from the loopback address `src`.
pub async fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(src.parse().unwrap(), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

pub fn parse_response(buf: &[u8]) -> RawResponse {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("complete head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    RawResponse {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    }
}

/// The kernel's records, as a test sets them: every connection gets `record`, and its cgroup
/// belongs to `container_id`.
#[derive(Debug, Default)]
pub struct FakeKernel {
    pub record: Mutex<Option<ConnRecord>>,
    pub container_id: Mutex<Option<String>>,
}

impl FakeKernel {
    pub fn new(record: bool, container_id: Option<&str>) -> Arc<FakeKernel> {
        Arc::new(FakeKernel {
            record: Mutex::new(record.then(|| ConnRecord {
                cgroup_id: 4242,
                tgid: 77,
                ..ConnRecord::default()
            })),
            container_id: Mutex::new(container_id.map(str::to_string)),
        })
    }
}

impl KernelIdentity for FakeKernel {
    fn take(&self, _client: SocketAddr, _server: SocketAddr) -> Option<ConnRecord> {
        *self.record.lock().unwrap()
    }

    fn container_id(&self, _record: &ConnRecord) -> Option<String> {
        self.container_id.lock().unwrap().clone()
    }
}
