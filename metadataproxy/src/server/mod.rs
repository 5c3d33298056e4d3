//! The HTTP server: accept loop, per-request dispatch on [`router::classify`], the common
//! response headers, the request log line, and graceful shutdown.

pub mod router;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::app::State;
use crate::handlers::iam::{CallerInfo, Connection};
use crate::handlers::{iam, passthrough, token, Failure};
use crate::identity::canonical_ip;
use crate::limits::{ConnectionGate, Peer};
use crate::telemetry::metrics;
use router::Route;

/// `X-Powered-By` on every answer, kept for compatibility with go-metadataproxy.
pub const POWERED_BY: &str = "go-metadataproxy metadataproxy";

/// Serves `listener` until `shutdown` resolves, then stops accepting and gives in-flight
/// requests up to `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_timeout)
        .max_buf_size(state.limits.max_header_bytes)
        .keep_alive(true);
    let gate = ConnectionGate::new(
        state.limits.max_connections,
        state.limits.max_connections_per_ip,
    );
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let local = stream.local_addr().ok();
                let kernel = match (&state.kernel, local) {
                    (Some(kernel), Some(local)) => kernel.take(peer, local),
                    _ => None,
                };
                let gate_key = match &kernel {
                    Some(record) => Peer::Cgroup(record.cgroup_id),
                    None => Peer::Ip(canonical_ip(peer.ip())),
                };
                let Some(permit) = gate.admit(gate_key) else {
                    // Over MAX_CONNECTIONS or MAX_CONNECTIONS_PER_IP: closed at once.
                    metrics::blocked("connection_limit");
                    tracing::debug!(%peer, open = gate.open(), "connection refused: limit reached");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = Connection {
                    local_port: local.map(|a| a.port()).unwrap_or(0),
                    ip: canonical_ip(peer.ip()),
                    kernel,
                };
                let state = state.clone();
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, &conn, req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining connections"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}

/// Answers one request.
pub async fn handle(
    state: &State,
    conn: &Connection,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4();
    let ip = conn.ip;
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = router::classify(req.uri().path(), req.uri().query());
    let mut caller = CallerInfo::default();
    // METRICS_ON_PROXY_PORT: go-metadataproxy's /metrics, for operators who opted in.
    let exposition = state
        .proxy_metrics
        .as_ref()
        .filter(|_| path == "/metrics" && method == http::Method::GET);

    // eBPF mode: every caller the agent serves (a redirected container, a host process) made
    // its connect under the kernel program; a connection without a record came from elsewhere
    // (another host, a raw socket) and gets nothing, passthrough included.
    let unidentified = state.kernel.is_some() && conn.kernel.is_none();
    let rate_limited = state
        .request_rate
        .as_ref()
        .is_some_and(|r| !r.allow(&conn.rate_key(), Instant::now()));
    let host_refused = state.limits.check_host
        && !crate::limits::host_allowed(
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok()),
            conn.local_port,
        );
    let result: Result<Response<Bytes>, Failure> = match &route {
        _ if unidentified && !matches!(route, Route::Redirect(_)) => Err(Failure::NoKernelIdentity),
        _ if rate_limited => Err(Failure::RateLimited),
        _ if host_refused => Err(Failure::HostNotAllowed),
        Route::Redirect(location) => Ok(redirect(location)),
        Route::Token => token::mint(state, conn, &method, req.headers()).await,
        Route::Favicon => Err(Failure::Favicon),
        Route::BadPath => Err(Failure::BadPath),
        _ => match token::check(state, conn, req.headers()).await {
            Err(f) => Err(f),
            Ok(()) => match &route {
                _ if exposition.is_some() => Ok(metrics_page(exposition.expect("checked"))),
                Route::RoleName { .. } => iam::role_name(state, conn, &mut caller).await,
                Route::Credentials { role, .. } => {
                    iam::credentials(state, conn, role, &mut caller).await
                }
                Route::Info { .. } => iam::info(state, conn, &mut caller).await,
                Route::IamDenied { .. } => Err(Failure::IamPathNotServed),
                _ => passthrough::forward(state, req).await,
            },
        },
    };

    let (mut resp, failure) = match result {
        Ok(resp) => (resp, None),
        Err(f) => (f.response(), Some(f)),
    };
    let headers = resp.headers_mut();
    headers.insert("x-powered-by", HeaderValue::from_static(POWERED_BY));
    headers.insert(
        "x-request-id",
        HeaderValue::from_str(&request_id.to_string()).expect("a UUID is a valid header value"),
    );
    let status = resp.status();
    let error_description = failure.as_ref().map(Failure::description);
    let error = failure.as_ref().map(|f| f.to_string());
    if caller.container_id.is_none() {
        // Requests that need no identity (passthrough) still name their caller when the
        // index knows it, at no cost: logs and metrics only, never a decision.
        if let Some(c) = state.lookup.peek(ip) {
            caller = CallerInfo::of(&c);
        }
    }
    if let Some(
        f @ (Failure::IamPathNotServed
        | Failure::NoKernelIdentity
        | Failure::PassthroughDenied
        | Failure::RateLimited
        | Failure::HostNotAllowed),
    ) = &failure
    {
        metrics::blocked(f.description());
    }
    let elapsed = started.elapsed();
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let handler = if exposition.is_some() {
        "metrics"
    } else {
        route.handler_name()
    };
    let api_version = route.api_version();
    let blank_labels: Vec<(String, String)>;
    let copied: &[(String, String)] = if !metrics::enabled() {
        &[]
    } else if caller.labels.is_empty() {
        blank_labels = state
            .copied_label_names
            .iter()
            .map(|n| (n.clone(), String::new()))
            .collect();
        &blank_labels
    } else {
        &caller.labels
    };
    if metrics::enabled() {
        metrics::request(&metrics::RequestRecord {
            path: &path,
            handler_name: handler,
            role_name: caller.role_name.as_deref().unwrap_or(""),
            remote_addr: ip,
            response_code: status.as_u16(),
            error_description: error_description.unwrap_or(""),
            copied,
            duration: elapsed,
        });
        if let Some(timing) = resp.extensions().get::<metrics::UpstreamTiming>() {
            metrics::upstream_timing(*timing, &path, copied);
        }
    }
    let container_labels = (!caller.labels.is_empty()).then(|| {
        caller
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    });
    macro_rules! request_line {
        ($level:expr) => {
            tracing::event!(
                target: "metadataproxy::request",
                $level,
                request_id = %request_id,
                remote_addr = %ip,
                method = %method,
                path = %path,
                handler = handler,
                api_version = api_version,
                container_id = caller.container_id.as_deref(),
                container_name = caller.container_name.as_deref(),
                role_name = caller.role_name.as_deref(),
                container_labels = container_labels.as_deref(),
                response_code = status.as_u16(),
                error_description = error_description,
                error = error.as_deref(),
                duration_ms = duration_ms,
                "request"
            )
        };
    }
    if status.is_server_error() {
        request_line!(tracing::Level::WARN);
    } else {
        request_line!(tracing::Level::INFO);
    }
    resp.map(Full::new)
}

fn metrics_page(handle: &metrics_exporter_prometheus::PrometheusHandle) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(handle.render()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(crate::admin::PROMETHEUS_CONTENT_TYPE),
    );
    resp
}

fn redirect(location: &str) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}
