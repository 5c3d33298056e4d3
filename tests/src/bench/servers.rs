//! The baselines the agent is measured against, and a Docker API stand-in: minimal hyper
//! servers, each as little code as the job allows, on the fixtures' runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::rt;

/// A server bound to `0.0.0.0` on any port; aborted when dropped.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn bind_any() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind a baseline");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

/// A minimal hyper server answering every request with `status`, `headers` and `body`: the
/// bytes the agent answers, without anything the agent does to find them.
pub fn fixed(status: StatusCode, headers: HeaderMap, body: Bytes) -> Server {
    let (listener, addr) = rt().block_on(bind_any());
    let task = rt().spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (headers, body) = (headers.clone(), body.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let mut r = Response::new(Full::new(body.clone()));
                    *r.status_mut() = status;
                    *r.headers_mut() = headers.clone();
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server { addr, task }
}

/// A minimal hyper reverse proxy with a pooled client: forwards each request to `upstream`
/// and streams the answer back.
pub fn proxy(upstream: SocketAddr) -> Server {
    let (listener, addr) = rt().block_on(bind_any());
    let task = rt().spawn(async move {
        let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let client = client.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let client = client.clone();
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let pq = parts
                            .uri
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_else(|| "/".into());
                        parts.uri = format!("http://{upstream}{pq}").parse().expect("uri");
                        match client.request(Request::from_parts(parts, body)).await {
                            Ok(resp) => Ok::<_, Infallible>(resp.map(|b| b.boxed())),
                            Err(_) => {
                                let mut r = Response::new(
                                    Full::new(Bytes::new())
                                        .map_err(|never| match never {})
                                        .boxed(),
                                );
                                *r.status_mut() = StatusCode::BAD_GATEWAY;
                                Ok(r)
                            }
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server { addr, task }
}

/// One container the Docker stand-in reports.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    /// 64 hex digits.
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// Its address on the `bridge` network.
    pub ip: String,
    /// Its `IAM_ROLE`.
    pub role: String,
    /// Its `State.Pid` (0: none, as Docker reports for a stopped container).
    pub pid: u32,
}

impl FakeContainer {
    /// The `n`th synthetic container: `10.200.x.y`, role `bench-role-{n % roles}`.
    pub fn synthetic(n: usize, roles: usize) -> FakeContainer {
        FakeContainer {
            id: format!("{:064x}", 0xbe0c_0000_0000u64 + n as u64),
            name: format!("synthetic-{n}"),
            ip: format!("10.200.{}.{}", n / 250, 1 + n % 250),
            role: format!("bench-role-{}", n % roles.max(1)),
            pid: 0,
        }
    }

    fn networks(&self) -> serde_json::Value {
        serde_json::json!({"bridge": {"IPAddress": self.ip, "NetworkID": "bench"}})
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "Id": self.id,
            "Names": [format!("/{}", self.name)],
            "Image": "bench/image",
            "State": "running",
            "NetworkSettings": {"Networks": self.networks()},
        })
    }

    fn inspect(&self) -> serde_json::Value {
        serde_json::json!({
            "Id": self.id,
            "Name": format!("/{}", self.name),
            "State": {"Running": true, "Status": "running", "Pid": self.pid},
            "Config": {
                "Image": "bench/image",
                "Env": [format!("IAM_ROLE={}", self.role), "PATH=/bin".to_string()],
                "Labels": {},
            },
            "NetworkSettings": {"Networks": self.networks()},
        })
    }
}

/// A body that never ends: Docker's event stream with no events.
struct Silent;

impl Body for Silent {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

/// A Docker Engine API stand-in on a unix socket: `/version`, the container list and inspect
/// for a fixed set of containers, and an event stream that stays silent. Counts the requests
/// it answers.
#[derive(Debug)]
pub struct DockerStandIn {
    /// The socket (`DOCKER_URL=unix://...`).
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DockerStandIn {
    /// Serves `containers` on `socket`.
    pub fn start(socket: &Path, containers: Vec<FakeContainer>) -> DockerStandIn {
        let _ = std::fs::remove_file(socket);
        let _enter = rt().enter();
        let listener = tokio::net::UnixListener::bind(socket).expect("bind the Docker stand-in");
        let containers = Arc::new(containers);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let counted = requests.clone();
        let task = rt().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (containers, counted) = (containers.clone(), counted.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        counted.lock().expect("lock").push(format!(
                            "{} {}",
                            req.method(),
                            req.uri().path()
                        ));
                        let answer = answer(&containers, req.uri().path());
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        DockerStandIn {
            socket: socket.to_path_buf(),
            requests,
            task,
        }
    }

    /// `unix://...` for `DOCKER_URL`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The requests answered so far (`GET /v1.41/containers/json`, ...).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for DockerStandIn {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The stand-in's network, as Docker's network list and inspect show it.
fn bench_network() -> serde_json::Value {
    serde_json::json!({
        "Id": "bench",
        "Name": "bench",
        "Driver": "bridge",
        "IPAM": {"Config": [
            {"Subnet": "10.200.0.0/16", "Gateway": "10.200.255.254"},
            {"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"},
        ]},
    })
}

fn answer(containers: &[FakeContainer], path: &str) -> Response<AnyBody> {
    // With or without the `/v1.41` prefix.
    let path = match path.strip_prefix("/v") {
        Some(rest) => rest.find('/').map_or(path, |i| &rest[i..]),
        None => path,
    };
    let json = |status: StatusCode, v: serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r.headers_mut()
            .insert("api-version", http::HeaderValue::from_static("1.41"));
        r
    };
    match path {
        "/_ping" => json(StatusCode::OK, serde_json::json!("OK")),
        "/version" => json(
            StatusCode::OK,
            serde_json::json!({"ApiVersion": "1.41", "MinAPIVersion": "1.12", "Version": "20.10.24"}),
        ),
        // One network holding every container: the synthetic ones' 10.200.0.0/16 and the
        // default bridge, where the load's real container is.
        "/networks" => json(StatusCode::OK, serde_json::json!([bench_network()])),
        "/networks/bench" => json(StatusCode::OK, bench_network()),
        "/containers/json" => json(
            StatusCode::OK,
            serde_json::Value::Array(containers.iter().map(FakeContainer::summary).collect()),
        ),
        "/events" => {
            let mut r = Response::new(Silent.boxed());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        p => match p
            .strip_prefix("/containers/")
            .and_then(|rest| rest.strip_suffix("/json"))
            .and_then(|id| containers.iter().find(|c| c.id == id || c.name == id))
        {
            Some(c) => json(StatusCode::OK, c.inspect()),
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"message": format!("no such path {p}")}),
            ),
        },
    }
}
