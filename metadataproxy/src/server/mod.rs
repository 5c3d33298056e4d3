//! The HTTP server: accept loop, per-request dispatch on [`router::classify`], the common
//! response headers, the request log line, and graceful shutdown. Failures become answers in
//! [`failure`] only.

mod failure;
pub mod handlers;
pub mod router;
mod services;

pub use failure::Failure;
pub use services::Services;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::identity::{canonical_ip, Connection, IdentityError};
use crate::limits::{ConnectionGate, Peer, RateVerdict};
use crate::metrics;
use crate::telemetry::RequestLog;
use handlers::credentials::{self, CallerInfo};
use handlers::{container, passthrough, token};
use router::Route;

/// `X-Powered-By` on every answer, kept for compatibility with go-metadataproxy.
pub const POWERED_BY: &str = "go-metadataproxy metadataproxy";

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The instance metadata service (`169.254.169.254`).
    Metadata,
    /// The container credentials endpoint (`169.254.170.2`).
    ContainerCredentials,
}

/// Serves `listener` (the metadata service) until `shutdown` resolves, then stops accepting
/// and gives in-flight requests up to `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<Services>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    serve_endpoints(vec![(listener, Endpoint::Metadata)], state, shutdown, grace).await;
}

/// The first connection any of `listeners` has, with the endpoint it serves.
async fn accept_any(
    listeners: &[(TcpListener, Endpoint)],
) -> (
    std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
    Endpoint,
) {
    std::future::poll_fn(|cx| {
        for (listener, endpoint) in listeners {
            if let std::task::Poll::Ready(r) = listener.poll_accept(cx) {
                return std::task::Poll::Ready((r, *endpoint));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Serves every listener, each as its endpoint, under the same limits (connection caps and
/// request rates count a caller's connections to all of them), until `shutdown` resolves;
/// then stops accepting and gives in-flight requests up to `grace` to finish.
pub async fn serve_endpoints(
    listeners: Vec<(TcpListener, Endpoint)>,
    state: Arc<Services>,
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
            (accepted, endpoint) = accept_any(&listeners) => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Everything else a connection costs runs in its own task, on any worker
                // thread: the accept loop only accepts. (In eBPF mode, taking the kernel's
                // record is a map lookup and a delete, two bpf syscalls; done here they
                // serialised every new connection behind one thread.)
                let watcher = graceful.watcher();
                let state = state.clone();
                let gate = gate.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
                    let local = stream.local_addr().ok();
                    let kernel = match (state.attest.kernel(), local) {
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
                        return;
                    };
                    let _permit = permit;
                    let _ = stream.set_nodelay(true);
                    let conn = Connection {
                        local_port: local.map(|a| a.port()).unwrap_or(0),
                        ip: canonical_ip(peer.ip()),
                        kernel,
                    };
                    let rate_key = rate_key(&conn);
                    let ip = conn.ip;
                    let svc_state = state.clone();
                    let svc = service_fn(move |req| {
                        let state = svc_state.clone();
                        async move {
                            Ok::<_, Infallible>(handle_at(&state, endpoint, &conn, req).await)
                        }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn).await {
                        if e.is_parse() {
                            parser_refusal(&state, &e, ip, rate_key);
                        } else {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listeners);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining connections"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}

/// A request the HTTP parser refused before it became a request (bad method, version, URI or
/// header, obs-fold, a head over `MAX_HEADER_BYTES`): hyper has already answered it (400, 414
/// or 431) with headers of its own, so it gets no `X-Request-ID`; it gets its log line and its
/// count like every other refusal, bounded by the caller's request rate like its requests.
fn parser_refusal(state: &Services, e: &hyper::Error, ip: std::net::IpAddr, rate_key: Peer) {
    // What hyper sent (`hyper::proto::h1::role::Server::on_error`); nothing for an HTTP/2
    // preface.
    let status: Option<u16> = if e.is_parse_version_h2() {
        None
    } else if e.is_parse_too_large() {
        Some(if e.to_string().contains("URI") {
            414
        } else {
            431
        })
    } else {
        Some(400)
    };
    metrics::blocked("http_parse_error");
    let rate = state
        .request_rate
        .as_ref()
        .map_or(RateVerdict::Allow, |r| r.check(rate_key, Instant::now()));
    if rate == (RateVerdict::Refuse { log: None }) || state.request_log == RequestLog::None {
        return;
    }
    tracing::event!(
        target: "metadataproxy::request",
        tracing::Level::INFO,
        request_id = %uuid::Uuid::new_v4(),
        remote_addr = %ip,
        handler = "http-parser",
        response_code = status,
        error_description = "http_parse_error",
        error = %e,
        "request"
    );
}

/// The key of the caller's request rate: its cgroup in eBPF mode, else its address.
fn rate_key(conn: &Connection) -> Peer {
    match &conn.kernel {
        Some(r) => Peer::Cgroup(r.cgroup_id),
        None => Peer::Ip(conn.ip),
    }
}

/// Answers one request to the metadata service.
pub async fn handle<B>(
    state: &Services,
    conn: &Connection,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    handle_at(state, Endpoint::Metadata, conn, req).await
}

/// Answers one request to `endpoint`.
pub async fn handle_at<B>(
    state: &Services,
    endpoint: Endpoint,
    conn: &Connection,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4();
    let ip = conn.ip;
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = match endpoint {
        Endpoint::Metadata => router::classify(req.uri().path(), req.uri().query()),
        Endpoint::ContainerCredentials => {
            router::classify_container(req.uri().path(), req.uri().query())
        }
    };
    // Logs and counts the request if it is dropped before it is answered (the client went
    // away while the agent waited on Docker, STS or the upstream).
    let mut abandoned = Abandoned {
        armed: true,
        logged: state.request_log != RequestLog::None,
        request_id,
        ip,
        method: bounded(method.as_str(), MAX_LOGGED_METHOD).to_string(),
        path: bounded(&path, MAX_LOGGED_PATH).to_string(),
        handler: route.handler_name(),
        started,
        label_names: &state.copied_label_names,
    };
    let mut caller = CallerInfo::default();
    // METRICS_ON_PROXY_PORT: go-metadataproxy's /metrics, for operators who opted in.
    let exposition = state.proxy_metrics.as_ref().filter(|_| {
        endpoint == Endpoint::Metadata && path == "/metrics" && method == http::Method::GET
    });

    // eBPF mode: every caller the agent serves (a redirected container, a host process) made
    // its connect under the kernel program; a connection without a record came from elsewhere
    // (another host, a raw socket) and gets nothing, passthrough included.
    let unidentified = state.attest.unrecorded(conn);
    let rate = state.request_rate.as_ref().map_or(RateVerdict::Allow, |r| {
        r.check(rate_key(conn), Instant::now())
    });
    let rate_limited = rate != RateVerdict::Allow;
    let duplicate = crate::limits::duplicate_header(req.headers());
    let host_allowed = |host: Option<&str>| match endpoint {
        Endpoint::Metadata => crate::limits::host_allowed(host, conn.local_port),
        Endpoint::ContainerCredentials => {
            crate::limits::container_host_allowed(host, conn.local_port)
        }
    };
    let host_refused = state.limits.check_host
        && !(host_allowed(
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok()),
        ) && req
            .uri()
            .authority()
            // Absolute-form (RFC 9112 3.2.2): the authority is the target's host.
            .is_none_or(|a| host_allowed(Some(a.as_str()))));
    // Only the metadata service has host services to pass through: on the container
    // credentials endpoint a host service is no container, and gets nothing.
    let host_service = endpoint == Endpoint::Metadata && state.attest.is_host_service(conn).await;
    let result: Result<Response<Bytes>, Failure> = match &route {
        _ if unidentified && !matches!(route, Route::Redirect(_)) => {
            Err(IdentityError::NoKernelRecord.into())
        }
        _ if rate_limited => Err(Failure::RateLimited),
        // A host service redirected with the containers of its slice: as if the agent were not
        // there (the route was classified for the log line only).
        _ if host_service => passthrough::forward_host(&state.forwarder, req).await,
        // CONTAINER_IMDS=off: nothing from the metadata service for anyone the agent serves
        // (containers, and callers that are no container).
        _ if endpoint == Endpoint::Metadata && !state.container_imds => {
            Err(Failure::ContainerImdsOff)
        }
        _ if duplicate.is_some() => Err(Failure::DuplicateHeader(duplicate.expect("checked"))),
        _ if host_refused => Err(Failure::HostNotAllowed),
        Route::ContainerCredentials(_) if method != http::Method::GET => {
            Err(Failure::ContainerMethod)
        }
        Route::ContainerCredentials(target) => {
            let request_target = req
                .uri()
                .path_and_query()
                .map_or(path.as_str(), |pq| pq.as_str());
            container::credentials(
                &state.attest,
                &state.issuer,
                &state.audit,
                state.container,
                conn,
                *target,
                request_target,
                req.headers(),
                &mut caller,
            )
            .await
        }
        Route::Token => {
            token::mint(&state.attest, &state.tokens, conn, &method, req.headers()).await
        }
        // With IMDSV2=required every other answer, refusals and redirects included, needs a
        // token first.
        _ => match token::check(
            &state.attest,
            &state.tokens,
            state.imdsv2_required,
            conn,
            req.headers(),
        )
        .await
        {
            Err(f) => Err(f),
            Ok(()) => match &route {
                _ if exposition.is_some() => Ok(metrics_page(exposition.expect("checked"))),
                Route::Redirect(location) => Ok(redirect(location)),
                Route::Favicon => Err(Failure::Favicon),
                Route::BadPath => Err(Failure::BadPath),
                Route::NotCanonical => Err(Failure::PathNotCanonical),
                Route::RoleName { .. } => {
                    credentials::role_name(&state.attest, &state.issuer, conn, &mut caller).await
                }
                Route::Credentials { role, .. } => {
                    credentials::credentials(
                        &state.attest,
                        &state.issuer,
                        &state.audit,
                        conn,
                        role,
                        &mut caller,
                    )
                    .await
                }
                Route::Info { .. } => {
                    credentials::info(&state.attest, &state.issuer, conn, &mut caller).await
                }
                Route::IamDenied { .. } => Err(Failure::IamPathNotServed),
                Route::Passthrough(canon) => {
                    passthrough::forward(&state.forwarder, canon, req).await
                }
                Route::Token | Route::ContainerCredentials(_) => {
                    unreachable!("answered above")
                }
            },
        },
    };

    let (mut resp, failure) = match result {
        Ok(resp) => (resp, None),
        Err(f) => (
            match endpoint {
                Endpoint::Metadata => f.response(),
                Endpoint::ContainerCredentials => f.container_response(),
            },
            Some(f),
        ),
    };
    let headers = resp.headers_mut();
    headers.insert("x-powered-by", HeaderValue::from_static(POWERED_BY));
    headers.insert(
        "x-request-id",
        HeaderValue::from_str(&request_id.to_string()).expect("a UUID is a valid header value"),
    );
    let status = resp.status();
    let error_description = failure.as_ref().map(Failure::description);
    let error = failure
        .as_ref()
        .map(|f| bounded(&f.to_string(), MAX_LOGGED_ERROR).to_string());
    // Caller-controlled fields are cut, so that a flood of long paths writes no more log than
    // a flood of short ones; the full length is recorded.
    let logged_path = bounded(&path, MAX_LOGGED_PATH);
    let path_bytes = (logged_path.len() < path.len()).then_some(path.len());
    let logged_method = bounded(method.as_str(), MAX_LOGGED_METHOD);
    if caller.container_id.is_none() {
        // Requests that need no identity (passthrough) still name their caller when the
        // index knows it, at no cost: logs and metrics only, never a decision.
        if let Some(c) = state.attest.peek(ip) {
            caller = CallerInfo::of(&c);
        }
    }
    if let Some(
        f @ (Failure::IamPathNotServed
        | Failure::PathNotCanonical
        | Failure::DuplicateHeader(_)
        | Failure::Identity(IdentityError::NoKernelRecord)
        | Failure::PassthroughDenied
        | Failure::RateLimited
        | Failure::HostNotAllowed),
    ) = &failure
    {
        metrics::blocked(f.description());
    }
    let elapsed = started.elapsed();
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let handler = if host_service {
        "host-service"
    } else if exposition.is_some() {
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
            path: logged_path,
            handler_name: handler,
            role_name: caller.role_name.as_deref().unwrap_or(""),
            remote_addr: ip,
            response_code: status.as_u16(),
            error_description: error_description.unwrap_or(""),
            copied,
            duration: elapsed,
        });
        if let Some(timing) = resp.extensions().get::<metrics::UpstreamTiming>() {
            metrics::upstream_timing(*timing, logged_path, copied);
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
    // A caller over its rate gets one line a second, with the count of those it did not.
    let refusals_not_logged = match rate {
        RateVerdict::Refuse { log: None } => {
            abandoned.armed = false;
            return resp.map(Full::new);
        }
        RateVerdict::Refuse {
            log: Some(unlogged),
        } => Some(unlogged),
        RateVerdict::Allow => None,
    };
    macro_rules! request_line {
        ($level:expr) => {
            tracing::event!(
                target: "metadataproxy::request",
                $level,
                request_id = %request_id,
                remote_addr = %ip,
                method = %logged_method,
                path = %logged_path,
                path_bytes = path_bytes,
                handler = handler,
                api_version = api_version,
                container_id = caller.container_id.as_deref(),
                container_name = caller.container_name.as_deref(),
                role_name = caller.role_name.as_deref(),
                container_labels = container_labels.as_deref(),
                response_code = status.as_u16(),
                error_description = error_description,
                error = error.as_deref(),
                refusals_not_logged = refusals_not_logged,
                duration_ms = duration_ms,
                "request"
            )
        };
    }
    let logged = match state.request_log {
        RequestLog::All => true,
        RequestLog::None => false,
        // Refusals, failures and the credentials a container was given.
        RequestLog::Errors => {
            status.as_u16() >= 400
                || (status == StatusCode::OK
                    && matches!(
                        route,
                        Route::Credentials { .. } | Route::ContainerCredentials(_)
                    ))
        }
    };
    if logged {
        if status.is_server_error() {
            request_line!(tracing::Level::WARN);
        } else {
            request_line!(tracing::Level::INFO);
        }
    }
    abandoned.armed = false;
    resp.map(Full::new)
}

/// The status logged for a request whose client went away before its answer (nginx's
/// "client closed request"); no answer is sent.
pub const CLIENT_WENT_AWAY: u16 = 499;

/// A request in flight: dropped while armed, it writes the request's log line and count.
struct Abandoned<'a> {
    armed: bool,
    /// Whether the request's line is written (`REQUEST_LOG` is not `none`).
    logged: bool,
    request_id: uuid::Uuid,
    ip: std::net::IpAddr,
    method: String,
    path: String,
    handler: &'static str,
    started: Instant,
    /// The copied labels' names: blank for a caller never identified.
    label_names: &'a [String],
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let elapsed = self.started.elapsed();
        if metrics::enabled() {
            let blank: Vec<(String, String)> = self
                .label_names
                .iter()
                .map(|n| (n.clone(), String::new()))
                .collect();
            metrics::request(&metrics::RequestRecord {
                path: &self.path,
                handler_name: self.handler,
                role_name: "",
                remote_addr: self.ip,
                response_code: CLIENT_WENT_AWAY,
                error_description: "client_went_away",
                copied: &blank,
                duration: elapsed,
            });
        }
        if !self.logged {
            return;
        }
        tracing::event!(
            target: "metadataproxy::request",
            tracing::Level::INFO,
            request_id = %self.request_id,
            remote_addr = %self.ip,
            method = %self.method,
            path = %self.path,
            handler = self.handler,
            response_code = CLIENT_WENT_AWAY,
            error_description = "client_went_away",
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    }
}

/// Longest path written to a log line or a metric label, in bytes.
pub const MAX_LOGGED_PATH: usize = 256;
/// Longest method written to a log line.
const MAX_LOGGED_METHOD: usize = 16;
/// Longest error text written to a log line.
const MAX_LOGGED_ERROR: usize = 512;

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn bounded(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn metrics_page(handle: &metrics_exporter_prometheus::PrometheusHandle) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(handle.render()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::PROMETHEUS_CONTENT_TYPE),
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
