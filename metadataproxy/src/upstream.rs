//! The upstream metadata service that passthrough requests go to: a pooled HTTP client to the
//! real (or a fake) service, or the built-in emulator in process.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

pub use crate::metrics::UpstreamTiming;

/// Largest upstream answer the agent relays (user-data is at most 16 KiB on EC2).
pub const MAX_UPSTREAM_BODY: usize = 1024 * 1024;

/// Why an upstream request failed; the container gets 502.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Connecting or talking to the upstream failed.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// No complete answer within the total timeout.
    #[error("upstream timed out after {0:?}")]
    Timeout(Duration),
    /// The answer was larger than [`MAX_UPSTREAM_BODY`].
    #[error("upstream answer too large")]
    TooLarge,
}

impl UpstreamError {
    /// The `error_description` for logs and metrics.
    pub fn description(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable(_) => "upstream_unreachable",
            UpstreamError::Timeout(_) => "upstream_timeout",
            UpstreamError::TooLarge => "upstream_too_large",
        }
    }
}

/// Somewhere to send a passthrough request.
pub trait Upstream: Send + Sync + fmt::Debug {
    /// Sends `req` (origin-form URI: path and query) and returns the whole answer, with an
    /// [`UpstreamTiming`] in its extensions when the round trip went over the network.
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, UpstreamError>>;

    /// Sends `req` as the caller made it: its own IMDSv2 headers, none of the agent's (a host
    /// service's requests, which hold the instance's own tokens).
    fn send_as_is(
        &self,
        req: Request<Bytes>,
    ) -> BoxFuture<'_, Result<Response<Bytes>, UpstreamError>> {
        self.send(req)
    }
}

/// Headers that belong to one connection, never forwarded in either direction (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(http::header::UPGRADE);
}

/// When and how fast a pooled upstream connection was made; hyper copies it into the
/// extensions of every response that connection carries.
#[derive(Debug, Clone, Copy)]
struct ConnectInfo {
    at: Instant,
    took: Duration,
}

/// [`HttpConnector`] that records [`ConnectInfo`] on each connection it makes.
#[derive(Debug, Clone)]
struct TimedConnector(HttpConnector);

/// A connection made by [`TimedConnector`].
#[derive(Debug)]
struct TimedIo {
    io: TokioIo<TcpStream>,
    info: ConnectInfo,
}

impl tower_service::Service<http::Uri> for TimedConnector {
    type Response = TimedIo;
    type Error = <HttpConnector as tower_service::Service<http::Uri>>::Error;
    type Future = BoxFuture<'static, Result<TimedIo, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let started = Instant::now();
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            let at = Instant::now();
            Ok(TimedIo {
                io,
                info: ConnectInfo {
                    at,
                    took: at - started,
                },
            })
        })
    }
}

impl Connection for TimedIo {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.info)
    }
}

impl hyper::rt::Read for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TimedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Lifetime of the agent's own upstream token.
const UPSTREAM_TOKEN_TTL: u64 = 21_600;
/// A token is renewed when it has less than this left.
const UPSTREAM_TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// Longest wait for the upstream's token answer (within the request's own timeout).
const UPSTREAM_TOKEN_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed token PUT (an IMDSv1-only upstream), the next try waits this long.
const UPSTREAM_TOKEN_RETRY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct UpstreamToken {
    current: Option<(String, Instant)>,
    retry_after: Option<Instant>,
}

/// A pooled HTTP/1 client to an upstream base URL. It speaks IMDSv2 on its own: it fetches a
/// token, sends it with every request and renews it before it expires or when the upstream
/// answers 401, so passthrough works on hosts with `HttpTokens=required`. Against an upstream
/// without tokens it falls back to plain requests.
#[derive(Clone)]
pub struct HttpUpstream {
    base: http::Uri,
    client: Client<TimedConnector, Full<Bytes>>,
    timeout: Duration,
    token: Arc<tokio::sync::Mutex<UpstreamToken>>,
}

impl fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpUpstream {
    /// A client for `base` (`http://host[:port]`).
    pub fn new(base: http::Uri, connect_timeout: Duration, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(TimedConnector(connector));
        HttpUpstream {
            base,
            client,
            timeout,
            token: Arc::default(),
        }
    }

    /// The agent's upstream token: cached, renewed before it expires. `rejected` is a token
    /// the upstream just refused (401): it is replaced unless another request already did.
    /// `None` when the upstream hands out none (IMDSv1 only, failing, or slow).
    ///
    /// One fetch at a time, under its own short timeout; a failure (or a fetch abandoned by
    /// its request's timeout) is not retried for a minute, and a still-valid token is kept
    /// meanwhile.
    async fn upstream_token(&self, rejected: Option<&str>) -> Option<String> {
        let mut state = self.token.lock().await;
        let now = Instant::now();
        let current = state
            .current
            .as_ref()
            .filter(|(_, expiry)| *expiry > now)
            .map(|(t, e)| (t.clone(), *e));
        if let Some((token, expiry)) = &current {
            let refused = rejected == Some(token.as_str());
            if !refused && *expiry > now + UPSTREAM_TOKEN_MARGIN {
                return Some(token.clone());
            }
            if !refused && rejected.is_some() {
                // Someone renewed it since this request sent the refused one.
                return Some(token.clone());
            }
        }
        if state.retry_after.is_some_and(|t| t > now) {
            return current
                .filter(|(t, _)| rejected != Some(t.as_str()))
                .map(|(t, _)| t);
        }
        // Pessimistic: if this fetch is abandoned (its request timed out), the next requests
        // do not wait on another one for a minute.
        state.retry_after = Some(now + UPSTREAM_TOKEN_RETRY);
        let mut uri = http::uri::Parts::from(self.base.clone());
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/latest/api/token"));
        let req = http::Uri::from_parts(uri).ok().and_then(|uri| {
            Request::put(uri)
                .header(crate::imdsv2::TTL_HEADER, UPSTREAM_TOKEN_TTL)
                .body(Full::new(Bytes::new()))
                .ok()
        })?;
        let fetch_timeout = (self.timeout / 2).min(UPSTREAM_TOKEN_TIMEOUT);
        let fetched = tokio::time::timeout(fetch_timeout, async {
            let resp = self.client.request(req).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let body = Limited::new(resp.into_body(), 4096).collect().await.ok()?;
            String::from_utf8(body.to_bytes().to_vec())
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty() && http::HeaderValue::from_str(t).is_ok())
        })
        .await
        .ok()
        .flatten();
        match fetched {
            Some(token) => {
                tracing::debug!("upstream IMDSv2 token renewed");
                state.current =
                    Some((token.clone(), now + Duration::from_secs(UPSTREAM_TOKEN_TTL)));
                state.retry_after = None;
                Some(token)
            }
            // Keep a token that is still valid (unless the upstream just refused it).
            None => current
                .filter(|(t, _)| rejected != Some(t.as_str()))
                .map(|(t, _)| t),
        }
    }

    /// Sends `req` with the agent's token; returns the answer and the token it carried.
    async fn with_token(
        &self,
        req: &Request<Bytes>,
        rejected: Option<&str>,
    ) -> Result<(Response<Bytes>, Option<String>), UpstreamError> {
        let mut copy = Request::new(req.body().clone());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.headers_mut() = req.headers().clone();
        let token = self.upstream_token(rejected).await;
        if let Some(v) = token
            .as_deref()
            .and_then(|t| http::HeaderValue::from_str(t).ok())
        {
            copy.headers_mut().insert(crate::imdsv2::TOKEN_HEADER, v);
        }
        Ok((self.round_trip(copy).await?, token))
    }

    async fn round_trip(&self, req: Request<Bytes>) -> Result<Response<Bytes>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut uri = http::uri::Parts::from(self.base.clone());
        uri.path_and_query = Some(
            path_and_query
                .parse()
                .map_err(|_| UpstreamError::Unreachable("bad request path".into()))?,
        );
        parts.uri = http::Uri::from_parts(uri)
            .map_err(|_| UpstreamError::Unreachable("bad upstream URI".into()))?;
        let req = Request::from_parts(parts, Full::new(body));
        let started = Instant::now();
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| UpstreamError::Unreachable(error_chain(&e)))?;
        let (mut parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_UPSTREAM_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    UpstreamError::TooLarge
                } else {
                    UpstreamError::Unreachable(e.to_string())
                }
            })?
            .to_bytes();
        strip_hop_by_hop(&mut parts.headers);
        let connection = match parts.extensions.remove::<ConnectInfo>() {
            // Made for this request; a pooled connection made earlier cost nothing.
            Some(c) if c.at >= started => c.took,
            _ => Duration::ZERO,
        };
        parts.extensions.insert(UpstreamTiming {
            response: started.elapsed(),
            connection,
        });
        Ok(Response::from_parts(parts, body))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

impl Upstream for HttpUpstream {
    fn send_as_is(
        &self,
        req: Request<Bytes>,
    ) -> BoxFuture<'_, Result<Response<Bytes>, UpstreamError>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.round_trip(req))
                .await
                .map_err(|_| UpstreamError::Timeout(self.timeout))?
        })
    }

    fn send(&self, req: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, UpstreamError>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, async {
                let (resp, sent) = self.with_token(&req, None).await?;
                if resp.status() != http::StatusCode::UNAUTHORIZED {
                    return Ok(resp);
                }
                // The token was revoked, or the upstream started to require one: once more
                // with a fresh token.
                let rejected = sent.unwrap_or_default();
                Ok(self.with_token(&req, Some(&rejected)).await?.0)
            })
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
        })
    }
}

/// Where passthrough requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamConfig {
    /// A real (or fake) metadata service at this base URL (scheme and authority only).
    Url(http::Uri),
    /// The built-in emulated metadata tree.
    Builtin(BuiltinValues),
}

/// Values served by the built-in emulated metadata service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinValues {
    /// `meta-data/instance-id`.
    pub instance_id: String,
    /// `meta-data/ami-id`.
    pub ami_id: String,
    /// `meta-data/instance-type`.
    pub instance_type: String,
    /// `meta-data/local-ipv4`.
    pub local_ipv4: std::net::Ipv4Addr,
    /// `meta-data/mac`.
    pub mac: String,
    /// `meta-data/placement/availability-zone`.
    pub availability_zone: String,
    /// `meta-data/placement/region`.
    pub region: String,
    /// Account in `dynamic/instance-identity/document`.
    pub account_id: String,
}

impl Default for BuiltinValues {
    fn default() -> Self {
        BuiltinValues {
            instance_id: "i-0123456789abcdef0".into(),
            ami_id: "ami-0123456789abcdef0".into(),
            instance_type: "t3.micro".into(),
            local_ipv4: std::net::Ipv4Addr::new(10, 0, 0, 10),
            mac: "02:00:00:00:00:01".into(),
            availability_zone: "us-east-1a".into(),
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(
            "x-aws-ec2-metadata-token-ttl-seconds",
            "21600".parse().unwrap(),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-aws-ec2-metadata-token-ttl-seconds"));
    }
}
