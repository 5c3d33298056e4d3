//! The admin listener (`ADMIN_ADDR`, loopback by default): `/metrics` (Prometheus
//! exposition), `/healthz` (the process answers) and `/readyz` (it can do its job). Containers
//! never reach it: it is not the proxy port.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;

use crate::ebpf::KernelRedirect;
use crate::identity::ContainerIndex;
use crate::leftovers::LeftoverCheck;
use crate::netfilter::{self, NatRules};

/// What puts containers' metadata traffic in front of the agent, for `/readyz`.
#[derive(Debug, Clone)]
pub enum Interception {
    /// The operator's own rules (`INTERCEPT=none`): nothing the agent can check.
    External,
    /// The agent's netfilter table (`INTERCEPT=iptables`).
    Iptables(Arc<NatRules>),
    /// The kernel programs (`INTERCEPT=ebpf`).
    Ebpf(Arc<KernelRedirect>),
}

/// A successful check of the agent's own AWS credentials is trusted this long.
const CREDENTIALS_CHECK_TTL: Duration = Duration::from_secs(30);
/// How long the credentials check may take.
const CREDENTIALS_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What readiness checks besides interception: the container index and the agent's own AWS
/// credentials.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// The container index (`None`: nothing to check).
    pub index: Option<Arc<ContainerIndex>>,
    /// The agent's own AWS credentials (`None` with `STS=builtin`).
    pub aws_credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    /// `STS=builtin`: containers get fake credentials, and the agent needs none of its own.
    pub builtin_sts: bool,
}

/// What the admin routes read.
#[derive(Debug)]
pub struct Admin {
    state: Readiness,
    prometheus: Option<PrometheusHandle>,
    interception: Interception,
    leftovers: LeftoverCheck,
    last_credentials_ok: Mutex<Option<Instant>>,
}

/// One readiness check: `Ok(detail)` or `Err(reason)`.
type Check = Result<String, String>;

impl Admin {
    /// The admin routes over the agent's state; `leftovers` says where other interception
    /// modes' leftovers are looked for.
    pub fn new(
        state: Readiness,
        prometheus: Option<PrometheusHandle>,
        interception: Interception,
        leftovers: LeftoverCheck,
    ) -> Arc<Admin> {
        Arc::new(Admin {
            state,
            prometheus,
            interception,
            leftovers,
            last_credentials_ok: Mutex::new(None),
        })
    }

    /// Another mode's programs or table act on containers' connections before this agent's
    /// interception (or instead of the operator's rules): not ready until they are removed.
    async fn leftovers(&self) -> Check {
        let check = self.leftovers.clone();
        let found = tokio::task::spawn_blocking(move || check.find())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if found.is_empty() {
            return Ok("none".into());
        }
        Err(found
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("; "))
    }

    fn docker(&self) -> Check {
        match &self.state.index {
            Some(index) if index.is_synced() => Ok(format!("{} containers indexed", index.len())),
            Some(_) => Err(
                "not synced with Docker: the daemon is unreachable or its event stream is down"
                    .into(),
            ),
            None => Ok("no index".into()),
        }
    }

    async fn credentials(&self) -> Check {
        if self.state.builtin_sts {
            return Ok("none needed: STS=builtin issues fake credentials".into());
        }
        let Some(provider) = &self.state.aws_credentials else {
            return Err("no AWS credentials provider configured".into());
        };
        let recent = self
            .last_credentials_ok
            .lock()
            .expect("lock")
            .is_some_and(|t| t.elapsed() < CREDENTIALS_CHECK_TTL);
        if recent {
            return Ok("available".into());
        }
        let result =
            tokio::time::timeout(CREDENTIALS_CHECK_TIMEOUT, provider.provide_credentials()).await;
        match result {
            Ok(Ok(c)) if c.expiry().is_none_or(|e| e > SystemTime::now()) => {
                *self.last_credentials_ok.lock().expect("lock") = Some(Instant::now());
                Ok("available".into())
            }
            Ok(Ok(_)) => Err("the agent's AWS credentials have expired".into()),
            // The provider's error names its source, never a secret.
            Ok(Err(e)) => Err(format!("the agent has no AWS credentials: {e}")),
            Err(_) => Err("timed out loading the agent's AWS credentials".into()),
        }
    }

    async fn interception(&self) -> Check {
        match &self.interception {
            Interception::Ebpf(r) if r.is_attached() => {
                Ok(format!("ebpf on {}", r.cgroup.display()))
            }
            Interception::Ebpf(_) => Err("eBPF programs are no longer attached".into()),
            Interception::Iptables(rules) => {
                let rules = rules.clone();
                let status = tokio::task::spawn_blocking(move || rules.status())
                    .await
                    .unwrap_or_else(|e| netfilter::Status::Unknown(e.to_string()));
                match status {
                    netfilter::Status::Installed => Ok(format!("iptables: {status}")),
                    other => Err(format!("iptables: {other}")),
                }
            }
            Interception::External => Ok("none (managed outside the agent)".into()),
        }
    }

    async fn readiness(&self) -> (bool, serde_json::Value) {
        let checks = [
            ("docker", self.docker()),
            ("aws_credentials", self.credentials().await),
            ("interception", self.interception().await),
            ("leftovers", self.leftovers().await),
        ];
        let ready = checks.iter().all(|(_, c)| c.is_ok());
        let mut body = serde_json::Map::new();
        for (name, check) in checks {
            body.insert(
                name.to_string(),
                match check {
                    Ok(detail) => json!({"ok": true, "detail": detail}),
                    Err(reason) => json!({"ok": false, "detail": reason}),
                },
            );
        }
        (ready, json!({"ready": ready, "checks": body}))
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => {
                let (ready, body) = self.readiness().await;
                let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
                *r.status_mut() = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            "/metrics" => match &self.prometheus {
                Some(handle) => {
                    let mut r = text(StatusCode::OK, handle.render());
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static(crate::metrics::PROMETHEUS_CONTENT_TYPE),
                    );
                    r
                }
                None => text(
                    StatusCode::NOT_FOUND,
                    "Prometheus export is off: set ENABLE_PROMETHEUS=true\n".into(),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: /metrics, /healthz, /readyz\n".into(),
            ),
        }
    }
}

/// Serves the admin routes on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let svc = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.handle(req).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
