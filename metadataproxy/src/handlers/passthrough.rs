//! Passthrough: everything that is not a credential route goes to the upstream metadata
//! service, method, path, query, headers and body intact (hop-by-hop headers aside), and its
//! answer comes back with its status, headers and body. No `X-Forwarded-For` is added: the
//! real service refuses IMDSv2 token requests that carry one.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::Failure;
use crate::app::State;
use crate::upstream::strip_hop_by_hop;

/// Largest request body forwarded.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Forwards `req` upstream.
pub async fn forward(state: &State, req: Request<Incoming>) -> Result<Response<Bytes>, Failure> {
    if !state.passthrough_policy.allows(req.uri().path()) {
        return Err(Failure::PassthroughDenied);
    }
    let (mut parts, body) = req.into_parts();
    let body = tokio::time::timeout(
        state.limits.body_timeout,
        Limited::new(body, MAX_REQUEST_BODY).collect(),
    )
    .await
    .map_err(|_| Failure::BadRequestBody("timed out".into()))?
    .map_err(|e| Failure::BadRequestBody(e.to_string()))?
    .to_bytes();
    strip_hop_by_hop(&mut parts.headers);
    // The caller's token is the agent's, meaningless upstream; the upstream client adds its
    // own when the upstream wants one.
    parts.headers.remove(crate::imdsv2::TOKEN_HEADER);
    parts.headers.remove(crate::imdsv2::TTL_HEADER);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    if !body.is_empty() || parts.method == http::Method::PUT || parts.method == http::Method::POST {
        parts.headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(body.len()),
        );
    }
    state
        .upstream
        .send(Request::from_parts(parts, body))
        .await
        .map_err(Failure::Upstream)
}
