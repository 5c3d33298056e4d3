//! Passthrough: everything that is not a credential route goes to the upstream metadata
//! service, and its answer comes back with its status, headers and body.
//!
//! What goes upstream is the method, the **canonical** path and query the router checked
//! (`path::canonical`, never the raw bytes), the body, and the request headers whose
//! names are plain (`[a-z0-9-]`): hop-by-hop headers and names with any other character (an
//! underscore look-alike such as `X_aws_ec2_metadata_token`, which some servers read as the
//! dashed name) are dropped. No `X-Forwarded-For` is added: the real service refuses IMDSv2
//! token requests that carry one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Body;

use crate::limits::BodyBudget;
use crate::path::CanonicalPath;
use crate::policy::PathPolicy;
use crate::server::Failure;
use crate::upstream::{strip_hop_by_hop, Upstream};

/// What forwarding needs: the upstream, which paths may go there, and how request bodies are
/// held.
#[derive(Debug)]
pub struct Forwarder {
    /// Where passthrough requests go.
    pub upstream: Arc<dyn Upstream>,
    /// Which passthrough paths are forwarded (`PASSTHROUGH_POLICY_FILE`).
    pub policy: PathPolicy,
    /// How long a request body may take to arrive (`BODY_READ_TIMEOUT`).
    pub body_timeout: Duration,
    /// Request body bytes held at once, across connections.
    pub budget: BodyBudget,
}

/// Largest request body forwarded.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Forwards `req` upstream, with `target` as its path and query.
pub async fn forward<B>(
    fwd: &Forwarder,
    target: &CanonicalPath,
    req: Request<B>,
) -> Result<Response<Bytes>, Failure>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if !fwd.policy.allows(target) {
        return Err(Failure::PassthroughDenied);
    }
    if declared_length(req.headers()).is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        // Refused before a byte of it is read or waited for.
        return Err(Failure::BodyTooLarge);
    }
    let (mut parts, body) = req.into_parts();
    // Held until the answer is back: the body's bytes live that long.
    let (body, _held) = read_body(fwd, body).await?;
    parts.uri = target
        .target()
        .parse()
        .map_err(|_| Failure::PathNotCanonical)?;
    strip_hop_by_hop(&mut parts.headers);
    keep_plain_names(&mut parts.headers);
    // The caller's token is the agent's, meaningless upstream; the upstream client adds its
    // own when the upstream wants one.
    parts.headers.remove(crate::imdsv2::TOKEN_HEADER);
    parts.headers.remove(crate::imdsv2::TTL_HEADER);
    set_length(&mut parts, &body);
    fwd.upstream
        .send(Request::from_parts(parts, body))
        .await
        .map_err(Failure::Upstream)
}

/// eBPF mode, a host service (`system.slice/<name>.service`) redirected with the containers
/// that share its slice: forwarded as it was sent, path, query and IMDSv2 headers included, as
/// if the agent were not there. The host keeps the instance's own metadata and role; only
/// hop-by-hop headers go, and bodies are held to the same limits.
pub async fn forward_host<B>(fwd: &Forwarder, req: Request<B>) -> Result<Response<Bytes>, Failure>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if declared_length(req.headers()).is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return Err(Failure::BodyTooLarge);
    }
    let (mut parts, body) = req.into_parts();
    let (body, _held) = read_body(fwd, body).await?;
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = target.parse().map_err(|_| Failure::BadPath)?;
    strip_hop_by_hop(&mut parts.headers);
    set_length(&mut parts, &body);
    fwd.upstream
        .send_as_is(Request::from_parts(parts, body))
        .await
        .map_err(Failure::Upstream)
}

/// Reads a body of at most [`MAX_REQUEST_BODY`] within `BODY_READ_TIMEOUT`, each chunk taken
/// from the agent-wide body budget as it arrives, so stalled bodies cannot pin more memory than
/// the budget whatever the number of connections.
async fn read_body<B>(
    fwd: &Forwarder,
    mut body: B,
) -> Result<(Bytes, Option<tokio::sync::SemaphorePermit<'_>>), Failure>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + fwd.body_timeout;
    let mut buf = bytes::BytesMut::new();
    let mut held: Option<tokio::sync::SemaphorePermit<'_>> = None;
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| Failure::BadRequestBody("timed out".into()))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| Failure::BadRequestBody(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > MAX_REQUEST_BODY {
            return Err(Failure::BodyTooLarge);
        }
        let permit = fwd
            .budget
            .take(data.len())
            .ok_or(Failure::BodyBudgetSpent)?;
        match &mut held {
            Some(h) => h.merge(permit),
            None => held = Some(permit),
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
}

/// The body's own `Content-Length` (bodies are forwarded whole, never chunked).
fn set_length(parts: &mut http::request::Parts, body: &Bytes) {
    parts.headers.remove(http::header::CONTENT_LENGTH);
    if !body.is_empty() || parts.method == http::Method::PUT || parts.method == http::Method::POST {
        parts.headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(body.len()),
        );
    }
}

/// The `Content-Length` a request declares; an unreadable one counts as too large (hyper has
/// already refused those that are not a number).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH).map(|v| {
        v.to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    })
}

/// Whether a header name is forwarded: letters, digits and `-` only.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Drops headers whose names are not plain.
fn keep_plain_names(headers: &mut HeaderMap) {
    let odd: Vec<http::HeaderName> = headers
        .keys()
        .filter(|n| !is_plain_name(n.as_str()))
        .cloned()
        .collect();
    for name in odd {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_header_names_are_forwarded() {
        let mut h = HeaderMap::new();
        for name in [
            "x_aws_ec2_metadata_token",
            "x_forwarded_for",
            "x.odd",
            "x~tilde",
            "accept",
            "user-agent",
            "x-custom-1",
        ] {
            h.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "v".parse().unwrap(),
            );
        }
        keep_plain_names(&mut h);
        let mut left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "user-agent", "x-custom-1"]);
    }

    #[test]
    fn declared_lengths() {
        let mut h = HeaderMap::new();
        assert_eq!(declared_length(&h), None);
        h.insert(http::header::CONTENT_LENGTH, "70000".parse().unwrap());
        assert_eq!(declared_length(&h), Some(70_000));
        h.insert(http::header::CONTENT_LENGTH, "x".parse().unwrap());
        assert_eq!(declared_length(&h), Some(u64::MAX));
    }
}
