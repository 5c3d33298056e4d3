//! The baselines the agent is measured against: minimal hyper servers, each as little code as
//! the job allows, on the fixtures' runtime. (The Docker API stand-in is
//! [`crate::docker::DockerSocket::stand_in`].)

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
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
