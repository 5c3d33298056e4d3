//! The Docker Engine API on a unix socket of the test's own, for the agent's `DOCKER_URL`:
//! either in front of the real daemon, to count the calls the agent makes, or a stand-in that
//! answers for a fixed set of containers (the benchmark's hundreds of synthetic ones). Either
//! way it records every request.
//!
//! (The container index's unit tests fake Docker one layer up, in memory behind the agent's
//! `DockerApi` trait and on paused time: another seam, for another kind of test.)

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::rt;

/// The Docker Engine API on a unix socket (`DOCKER_URL=unix://...`), recording the requests
/// it passes on or answers (`GET /v1.41/containers/json?all=1`, ...); removed when dropped.
#[derive(Debug)]
pub struct DockerSocket {
    /// The socket.
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What answers behind the socket.
#[derive(Debug)]
enum Behind {
    /// The daemon on this socket.
    Daemon(PathBuf),
    /// The stand-in, for these containers.
    StandIn(Arc<Vec<FakeContainer>>),
}

/// What answers one client connection's requests.
#[derive(Clone)]
enum Answerer {
    /// A connection to the daemon of the client's own.
    Daemon(Arc<tokio::sync::Mutex<SendRequest<Incoming>>>),
    /// The stand-in.
    StandIn(Arc<Vec<FakeContainer>>),
}

impl DockerSocket {
    /// In front of the daemon on `/var/run/docker.sock`, on a fresh socket named after `name`
    /// (`mp-test-docker-{name}.sock` in the temporary directory).
    pub fn counting(name: &str) -> DockerSocket {
        let socket = std::env::temp_dir().join(format!("mp-test-docker-{name}.sock"));
        Self::serve(&socket, Behind::Daemon("/var/run/docker.sock".into()))
    }

    /// In front of another engine's API socket (Podman's), likewise.
    pub fn counting_in_front_of(name: &str, daemon: &Path) -> DockerSocket {
        let socket = std::env::temp_dir().join(format!("mp-test-docker-{name}.sock"));
        Self::serve(&socket, Behind::Daemon(daemon.to_path_buf()))
    }

    /// A stand-in on `socket`: `/_ping`, `/version`, one network, the container list and
    /// inspect for `containers`, and an event stream that stays silent.
    pub fn stand_in(socket: &Path, containers: Vec<FakeContainer>) -> DockerSocket {
        Self::serve(socket, Behind::StandIn(Arc::new(containers)))
    }

    fn serve(socket: &Path, behind: Behind) -> DockerSocket {
        let _ = std::fs::remove_file(socket);
        let _enter = rt().enter();
        let listener = tokio::net::UnixListener::bind(socket).expect("bind the Docker API socket");
        let behind = Arc::new(behind);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = rt().spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(connection(client, behind.clone(), seen.clone()));
            }
        });
        DockerSocket {
            socket: socket.to_path_buf(),
            requests,
            task,
        }
    }

    /// `unix://...` for `DOCKER_URL`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Every request so far, as `METHOD target` (`GET /v1.41/containers/json?all=1`).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for DockerSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

type AnyBody = BoxBody<Bytes, hyper::Error>;

fn full(bytes: Bytes) -> AnyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// Serves one client connection: in front of the daemon, over a daemon connection of its own
/// (as the client's keep-alive would have had).
async fn connection(client: UnixStream, behind: Arc<Behind>, seen: Arc<Mutex<Vec<String>>>) {
    let answerer = match &*behind {
        Behind::Daemon(path) => {
            let Ok(stream) = UnixStream::connect(path).await else {
                return;
            };
            let Ok((sender, conn)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
            else {
                return;
            };
            tokio::spawn(conn);
            Answerer::Daemon(Arc::new(tokio::sync::Mutex::new(sender)))
        }
        Behind::StandIn(containers) => Answerer::StandIn(containers.clone()),
    };
    let svc = service_fn(move |req: Request<Incoming>| {
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_string(), |pq| pq.to_string());
        seen.lock()
            .expect("lock")
            .push(format!("{} {target}", req.method()));
        let answerer = answerer.clone();
        async move {
            match answerer {
                Answerer::Daemon(daemon) => forward(&daemon, req).await,
                Answerer::StandIn(containers) => Ok(answer(&containers, req.uri().path())),
            }
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), svc)
        .await;
}

/// `req` to the daemon; its answer streams back (the event stream stays open).
async fn forward(
    daemon: &tokio::sync::Mutex<SendRequest<Incoming>>,
    req: Request<Incoming>,
) -> Result<Response<AnyBody>, hyper::Error> {
    let mut sender = daemon.lock().await;
    sender.ready().await?;
    let answer = sender.send_request(req).await?;
    Ok(answer.map(BodyExt::boxed))
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

/// The stand-in's answer to `GET path`.
fn answer(containers: &[FakeContainer], path: &str) -> Response<AnyBody> {
    // With or without the `/v1.41` prefix.
    let path = match path.strip_prefix("/v") {
        Some(rest) => rest.find('/').map_or(path, |i| &rest[i..]),
        None => path,
    };
    let json = |status: StatusCode, v: serde_json::Value| {
        let mut r = Response::new(full(Bytes::from(v.to_string())));
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
            let mut r = Response::new(Silent.map_err(|never| match never {}).boxed());
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
