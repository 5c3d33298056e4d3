//! IMDSv2 on the agent: `PUT /latest/api/token` mints a token bound to the caller, and every
//! other request is checked against the token it carries (`IMDSV2=required`: it must carry one).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::iam::Connection;
use super::Failure;
use crate::app::State;
use crate::imdsv2::{parse_ttl, Binding, TokenError, TOKEN_HEADER, TTL_HEADER};

/// Who the caller is, for binding tokens: its container when it is one (by cgroup in eBPF
/// mode, by address in classic mode), else its address. Loopback callers are never looked up.
pub async fn binding(state: &State, conn: &Connection) -> Binding {
    if let (Some(kernel), Some(record)) = (&state.kernel, conn.kernel) {
        // The index's cgroup map (O(1)); a walk of the cgroup filesystem only on a miss.
        let by_cgroup =
            crate::identity::kernel::container_of(kernel, state.index.as_deref(), record).await;
        return match by_cgroup {
            Some(id) => Binding::Container(id),
            None => Binding::Ip(conn.ip),
        };
    }
    if conn.ip.is_loopback() {
        return Binding::Ip(conn.ip);
    }
    match state.lookup.by_ip(conn.ip).await {
        Ok(Some(c)) => Binding::Container(c.id),
        _ => Binding::Ip(conn.ip),
    }
}

/// `PUT /{v}/api/token`: a token for the caller, with the TTL it asked for.
pub async fn mint(
    state: &State,
    conn: &Connection,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response<Bytes>, Failure> {
    if method != Method::PUT {
        return Err(Failure::TokenMethod);
    }
    // The real service refuses token requests that went through a proxy (X-Forwarded-For);
    // so does the agent, for every header a proxy adds, in any spelling.
    if headers
        .keys()
        .any(|name| is_forwarding_header(name.as_str()))
    {
        return Err(Failure::TokenForwarded);
    }
    let ttl = parse_ttl(headers.get(TTL_HEADER)).ok_or(Failure::TokenTtl)?;
    let binding = binding(state, conn).await;
    let token = state
        .tokens
        .mint(&binding, Duration::from_secs(ttl), SystemTime::now());
    let mut resp = Response::new(Bytes::from(token));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    resp.headers_mut()
        .insert(TTL_HEADER, HeaderValue::from(ttl));
    Ok(resp)
}

/// The token check of every other request: a token that is present must be valid for this
/// caller; with `IMDSV2=required` one must be present.
pub async fn check(state: &State, conn: &Connection, headers: &HeaderMap) -> Result<(), Failure> {
    let Some(token) = headers.get(TOKEN_HEADER) else {
        return if state.imdsv2_required {
            Err(Failure::TokenMissing)
        } else {
            Ok(())
        };
    };
    let token = token
        .to_str()
        .map_err(|_| Failure::Token(TokenError::Invalid))?;
    // Cheap checks first: a forged token costs no lookup.
    let now = SystemTime::now();
    let (bound, expiry) = state.tokens.open(token, now).map_err(Failure::Token)?;
    if now >= expiry {
        return Err(Failure::Token(TokenError::Expired));
    }
    if bound != binding(state, conn).await {
        return Err(Failure::Token(TokenError::WrongCaller));
    }
    Ok(())
}

/// Headers that a proxy adds: a token PUT that carries one went through a proxy. Names are
/// compared with `_` read as `-`, as some servers read them.
const FORWARDING_HEADERS: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
    "via",
];

fn is_forwarding_header(name: &str) -> bool {
    let dashed = name.replace('_', "-");
    FORWARDING_HEADERS.contains(&dashed.as_str())
}

/// The status of a token failure.
pub fn status(f: &Failure) -> Option<StatusCode> {
    match f {
        Failure::TokenMissing | Failure::Token(_) => Some(StatusCode::UNAUTHORIZED),
        Failure::TokenTtl | Failure::TokenForwarded => Some(StatusCode::BAD_REQUEST),
        Failure::TokenMethod => Some(StatusCode::METHOD_NOT_ALLOWED),
        _ => None,
    }
}
