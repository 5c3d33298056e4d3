//! Local peers for the telemetry and STS fault tests: UDP listeners for the statsd family, a
//! Unix datagram socket for DogStatsD, a recording HTTP endpoint (New Relic, the fault-injecting STS stub), a real Prometheus server,
//! and a plain HTTP GET for the admin listener.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::{eventually, rt};

/// A UDP listener on 127.0.0.1 keeping every line it receives.
#[derive(Debug)]
pub struct UdpSink {
    /// Where it listens.
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl UdpSink {
    /// Listens on a free port.
    pub fn start() -> UdpSink {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let addr = socket.local_addr().expect("addr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let mut lines = sink.lock().expect("lock");
                lines.extend(text.lines().map(str::to_string));
            }
        });
        UdpSink { addr, lines }
    }

    /// Every line received so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }
}

/// A Unix datagram socket (the Datadog agent's kind) keeping every line it receives.
#[derive(Debug)]
pub struct UnixDatagramSink {
    /// Its path.
    pub path: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl UnixDatagramSink {
    /// Binds `name` under a fresh temporary directory.
    pub fn start(name: &str) -> UnixDatagramSink {
        let dir = std::env::temp_dir().join(format!("mp-test-uds-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("socket dir");
        let path = dir.join("dsd.socket");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind unix datagram");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let mut lines = sink.lock().expect("lock");
                lines.extend(text.lines().map(str::to_string));
            }
        });
        UnixDatagramSink { path, lines }
    }

    /// `unix:///path`, as `DATADOG_ADDR` takes it.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Every line received so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }
}

impl Drop for UnixDatagramSink {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A statsd line: `name:value|type` with optional `|@rate` and `|#tags`. DogStatsD may carry
/// several values in one line (`name:v1:v2|d`).
#[derive(Debug, Clone, PartialEq)]
pub struct StatsdLine {
    /// Metric name.
    pub name: String,
    /// The sum of [`StatsdLine::values`] (the value of a one-value line).
    pub value: f64,
    /// Every value.
    pub values: Vec<f64>,
    /// `c`, `g`, `ms`, `d`.
    pub kind: String,
    /// The sample rate (`|@rate`), when given.
    pub rate: Option<f64>,
    /// DogStatsD tags.
    pub tags: HashMap<String, String>,
}

/// Parses one statsd line; `None` when it is not one.
pub fn parse_statsd(line: &str) -> Option<StatsdLine> {
    let (name, rest) = line.split_once(':')?;
    let mut parts = rest.split('|');
    let values = parts
        .next()?
        .split(':')
        .map(|v| v.parse().ok())
        .collect::<Option<Vec<f64>>>()?;
    let kind = parts.next()?.to_string();
    let mut tags = HashMap::new();
    let mut rate = None;
    for p in parts {
        if let Some(r) = p.strip_prefix('@') {
            rate = Some(r.parse().ok()?);
            continue;
        }
        let t = p.strip_prefix('#')?;
        for tag in t.split(',') {
            let (k, v) = tag.split_once(':')?;
            tags.insert(k.to_string(), v.to_string());
        }
    }
    Some(StatsdLine {
        name: name.to_string(),
        value: values.iter().sum(),
        values,
        kind,
        rate,
        tags,
    })
}

/// One request an [`HttpStub`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When it arrived.
    pub at: Instant,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers (names lower-case).
    pub headers: HashMap<String, String>,
    /// Body.
    pub body: String,
}

/// What an [`HttpStub`] answers: status, content type, body.
pub type Answer = (u16, &'static str, String);

type Responder = dyn Fn(&Recorded) -> Answer + Send + Sync;

/// An HTTP/1 server on 127.0.0.1 that records every request and answers with `respond`.
pub struct HttpStub {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for HttpStub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStub")
            .field("addr", &self.addr)
            .finish()
    }
}

impl HttpStub {
    /// Serves `respond` on a free port.
    pub fn start(respond: impl Fn(&Recorded) -> Answer + Send + Sync + 'static) -> HttpStub {
        let respond: Arc<Responder> = Arc::new(respond);
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind stub");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let task = rt().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let respond = respond.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let respond = respond.clone();
                        let recorded = recorded.clone();
                        async move {
                            let at = Instant::now();
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let r = Recorded {
                                at,
                                method: parts.method.to_string(),
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.as_str().to_string())
                                    .unwrap_or_default(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            v.to_str().unwrap_or_default().to_string(),
                                        )
                                    })
                                    .collect(),
                                body: String::from_utf8_lossy(&body).into_owned(),
                            };
                            let (status, content_type, body) = respond(&r);
                            recorded.lock().expect("lock").push(r);
                            let resp = http::Response::builder()
                                .status(status)
                                .header("content-type", content_type)
                                .body(Full::new(Bytes::from(body)))
                                .expect("response");
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        HttpStub {
            addr,
            requests,
            task,
        }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of `key` in a form-encoded body (`+` and `%XX` decoded).
pub fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An STS `AssumeRole` success answer with credentials expiring `valid` from now.
pub fn sts_success(role_arn: &str, valid: Duration) -> Answer {
    let stamp = metadataproxy::clock::format_time(std::time::SystemTime::now() + valid);
    let key = format!("ASIASTUB{:012}", next_key());
    let name = role_arn.rsplit('/').next().unwrap_or("role");
    let body = format!(
        r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>{key}</AccessKeyId>
      <SecretAccessKey>stub-secret</SecretAccessKey>
      <SessionToken>stub-token</SessionToken>
      <Expiration>{stamp}</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <AssumedRoleId>AROASTUB:{name}</AssumedRoleId>
      <Arn>arn:aws:sts::123456789012:assumed-role/{name}/session</Arn>
    </AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>stub</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#
    );
    (200, "text/xml", body)
}

/// An STS error answer.
pub fn sts_error(status: u16, code: &str) -> Answer {
    let kind = if status >= 500 { "Receiver" } else { "Sender" };
    let body = format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>{kind}</Type><Code>{code}</Code><Message>injected by the test stub</Message></Error>
  <RequestId>stub</RequestId>
</ErrorResponse>"#
    );
    (status, "text/xml", body)
}

fn next_key() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// `GET http://addr{path}` over a plain socket: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A real Prometheus server (Debian's `prometheus` package) scraping `targets` every second.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:port` of its HTTP API.
    pub addr: String,
}

impl Prometheus {
    /// Starts it with its own configuration and storage under a temporary directory, and
    /// waits until it is ready.
    pub fn start(name: &str, targets: &[String]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("mp-test-prometheus-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: metadataproxy\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("prometheus.log")).expect("log file"),
            ))
            .spawn()
            .expect("run prometheus (Debian package `prometheus`, installed by the test command)");
        let p = Prometheus { child, dir, addr };
        eventually(Duration::from_secs(30), || {
            TcpStream::connect(&p.addr)
                .ok()
                .and_then(|_| (http_get(&p.addr, "/-/ready").0 == 200).then_some(()))
        })
        .unwrap_or_else(|| panic!("prometheus ready within 30 s: {}", p.log()));
        p
    }

    /// The result vector of an instant query.
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let mut q = String::new();
        for b in expr.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                q.push(b as char);
            } else {
                q.push_str(&format!("%{b:02X}"));
            }
        }
        let (status, body) = http_get(&self.addr, &format!("/api/v1/query?query={q}"));
        assert_eq!(status, 200, "query {expr}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
