//! An emulated EC2 metadata service: the upstream for `METADATA_URL=builtin` (hosts that are
//! not on EC2) and the recording fake upstream in tests.
//!
//! It serves a small non-IAM tree, implements IMDSv2 tokens (`PUT /latest/api/token`), and
//! records every request it receives so a test can prove what did (or did not) reach it. It
//! never serves anything under `meta-data/iam`: the agent answers those itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::upstream::BuiltinValues;
use crate::upstream::{Upstream, UpstreamError};

/// IMDSv2 header carrying a token on requests.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// IMDSv2 header carrying the token lifetime.
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const MAX_TOKEN_TTL: u64 = 21_600;

/// One request as the emulator received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: Method,
    /// Path and query as received.
    pub path_and_query: String,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Body as received.
    pub body: Bytes,
    /// Peer address, when served over TCP.
    pub peer: Option<SocketAddr>,
}

/// The emulated metadata service.
#[derive(Debug, Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    values: BuiltinValues,
    tokens_required: std::sync::atomic::AtomicBool,
    tokens: Mutex<HashMap<String, Instant>>,
    record: Mutex<Vec<Recorded>>,
}

impl Emulator {
    /// An emulator serving `values`, tokens optional.
    pub fn new(values: BuiltinValues) -> Self {
        Emulator {
            inner: Arc::new(Inner {
                values,
                tokens_required: false.into(),
                tokens: Mutex::new(HashMap::new()),
                record: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Requires IMDSv2 tokens (`HttpTokens=required`): GETs without one get 401.
    pub fn require_tokens(&self, required: bool) {
        self.inner
            .tokens_required
            .store(required, std::sync::atomic::Ordering::SeqCst);
    }

    /// Forgets every token it handed out (as a restarted metadata service would).
    pub fn clear_tokens(&self) {
        self.inner.tokens.lock().expect("token lock").clear();
    }

    /// Everything received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.inner.record.lock().expect("record lock").clone()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.inner.record.lock().expect("record lock").clear();
    }

    /// Answers one request (and records it).
    pub fn handle(&self, req: &Request<Bytes>, peer: Option<SocketAddr>) -> Response<Bytes> {
        self.inner
            .record
            .lock()
            .expect("record lock")
            .push(Recorded {
                method: req.method().clone(),
                path_and_query: req
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                headers: req.headers().clone(),
                body: req.body().clone(),
                peer,
            });
        self.answer(req)
    }

    fn answer(&self, req: &Request<Bytes>) -> Response<Bytes> {
        let path = req.uri().path();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if let [_, "api", "token"] = segments.as_slice() {
            return self.token(req);
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        match req.headers().get(TOKEN_HEADER) {
            Some(token) if !self.token_valid(token.to_str().unwrap_or_default()) => {
                return text(StatusCode::UNAUTHORIZED, "Unauthorized");
            }
            Some(_) => {}
            None if self
                .inner
                .tokens_required
                .load(std::sync::atomic::Ordering::SeqCst) =>
            {
                return text(StatusCode::UNAUTHORIZED, "Unauthorized");
            }
            None => {}
        }
        let v = &self.inner.values;
        let hostname = format!(
            "ip-{}.{}.compute.internal",
            v.local_ipv4.to_string().replace('.', "-"),
            v.region
        );
        let body: String = match segments.as_slice() {
            [] => "latest".into(),
            [_] => "dynamic\nmeta-data\nuser-data".into(),
            [_, "meta-data"] => [
                "ami-id",
                "hostname",
                "instance-id",
                "instance-type",
                "local-hostname",
                "local-ipv4",
                "mac",
                "placement/",
            ]
            .join("\n"),
            [_, "meta-data", "ami-id"] => v.ami_id.clone(),
            [_, "meta-data", "hostname"] | [_, "meta-data", "local-hostname"] => hostname,
            [_, "meta-data", "instance-id"] => v.instance_id.clone(),
            [_, "meta-data", "instance-type"] => v.instance_type.clone(),
            [_, "meta-data", "local-ipv4"] => v.local_ipv4.to_string(),
            [_, "meta-data", "mac"] => v.mac.clone(),
            [_, "meta-data", "placement"] => "availability-zone\nregion".into(),
            [_, "meta-data", "placement", "availability-zone"] => v.availability_zone.clone(),
            [_, "meta-data", "placement", "region"] => v.region.clone(),
            [_, "dynamic"] => "instance-identity/".into(),
            [_, "dynamic", "instance-identity"] => "document".into(),
            [_, "dynamic", "instance-identity", "document"] => {
                let doc = serde_json::json!({
                    "accountId": v.account_id,
                    "architecture": "x86_64",
                    "availabilityZone": v.availability_zone,
                    "imageId": v.ami_id,
                    "instanceId": v.instance_id,
                    "instanceType": v.instance_type,
                    "pendingTime": "2026-01-01T00:00:00Z",
                    "privateIp": v.local_ipv4.to_string(),
                    "region": v.region,
                    "version": "2017-09-30",
                });
                serde_json::to_string_pretty(&doc).expect("json")
            }
            _ => return text(StatusCode::NOT_FOUND, "Not Found"),
        };
        text(StatusCode::OK, &body)
    }

    fn token(&self, req: &Request<Bytes>) -> Response<Bytes> {
        if req.method() != Method::PUT {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        // The real service refuses token requests that went through a proxy.
        if req.headers().contains_key("x-forwarded-for") {
            return text(StatusCode::FORBIDDEN, "Forbidden");
        }
        let ttl = req
            .headers()
            .get(TOKEN_TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|t| (1..=MAX_TOKEN_TTL).contains(t));
        let Some(ttl) = ttl else {
            return text(StatusCode::BAD_REQUEST, "Bad Request");
        };
        let token: String = {
            use rand::Rng;
            let bytes: [u8; 32] = rand::rng().random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        let mut tokens = self.inner.tokens.lock().expect("token lock");
        let now = Instant::now();
        tokens.retain(|_, expiry| *expiry > now);
        tokens.insert(token.clone(), now + Duration::from_secs(ttl));
        let mut resp = text(StatusCode::OK, &token);
        resp.headers_mut().insert(
            TOKEN_TTL_HEADER,
            ttl.to_string()
                .parse()
                .expect("digits are a valid header value"),
        );
        resp
    }

    fn token_valid(&self, token: &str) -> bool {
        let tokens = self.inner.tokens.lock().expect("token lock");
        tokens.get(token).is_some_and(|e| *e > Instant::now())
    }

    /// Serves the emulator over HTTP/1 on `listener` until the task is aborted.
    pub fn serve(&self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let emulator = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let emulator = emulator.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let emulator = emulator.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = Limited::new(body, 1024 * 1024)
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let resp =
                                emulator.handle(&Request::from_parts(parts, body), Some(peer));
                            Ok::<_, Infallible>(resp.map(Full::new))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
    }
}

fn text(status: StatusCode, body: &str) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::copy_from_slice(body.as_bytes()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}

impl Upstream for Emulator {
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, UpstreamError>> {
        let resp = self.handle(&req, None);
        Box::pin(async move { Ok(resp) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(e: &Emulator, path: &str, token: Option<&str>) -> Response<Bytes> {
        let mut b = Request::get(path);
        if let Some(t) = token {
            b = b.header(TOKEN_HEADER, t);
        }
        e.handle(&b.body(Bytes::new()).unwrap(), None)
    }

    fn put_token(e: &Emulator, ttl: Option<&str>, xff: bool) -> Response<Bytes> {
        let mut b = Request::put("/latest/api/token");
        if let Some(t) = ttl {
            b = b.header(TOKEN_TTL_HEADER, t);
        }
        if xff {
            b = b.header("x-forwarded-for", "10.0.0.1");
        }
        e.handle(&b.body(Bytes::new()).unwrap(), None)
    }

    #[test]
    fn serves_the_tree_and_records() {
        let e = Emulator::new(BuiltinValues::default());
        let r = get(&e, "/latest/meta-data/instance-id", None);
        assert_eq!(r.status(), 200);
        assert_eq!(r.body().as_ref(), b"i-0123456789abcdef0");
        let r = get(&e, "/latest/meta-data/placement/region", None);
        assert_eq!(r.body().as_ref(), b"us-east-1");
        let r = get(&e, "/latest/dynamic/instance-identity/document", None);
        let doc: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(doc["accountId"], "123456789012");
        assert_eq!(get(&e, "/latest/meta-data/iam/info", None).status(), 404);
        assert_eq!(e.recorded().len(), 4);
    }

    #[test]
    fn imdsv2_tokens_follow_the_real_rules() {
        let e = Emulator::new(BuiltinValues::default());
        e.require_tokens(true);
        assert_eq!(get(&e, "/latest/meta-data/instance-id", None).status(), 401);
        assert_eq!(put_token(&e, None, false).status(), 400);
        assert_eq!(put_token(&e, Some("0"), false).status(), 400);
        assert_eq!(put_token(&e, Some("21601"), false).status(), 400);
        assert_eq!(put_token(&e, Some("60"), true).status(), 403);
        let r = put_token(&e, Some("21600"), false);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[TOKEN_TTL_HEADER], "21600");
        let token = String::from_utf8(r.body().to_vec()).unwrap();
        assert_eq!(
            get(&e, "/latest/meta-data/instance-id", Some(&token)).status(),
            200
        );
        assert_eq!(
            get(&e, "/latest/meta-data/instance-id", Some("forged")).status(),
            401
        );
    }
}
