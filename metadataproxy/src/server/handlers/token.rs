//! IMDSv2 on the agent: `PUT /latest/api/token` mints a token bound to the caller, and every
//! other request is checked against the token it carries (`IMDSV2=required`: it must carry one).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response};

use crate::identity::{Attestor, Connection};
use crate::imdsv2::{parse_ttl, TokenError, TokenKeys, TOKEN_HEADER, TTL_HEADER};
use crate::server::Failure;

/// `PUT /{v}/api/token`: a token for the caller, with the TTL it asked for.
pub async fn mint(
    attest: &Attestor,
    tokens: &TokenKeys,
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
    let binding = attest.binding(conn).await;
    let token = tokens.mint(&binding, Duration::from_secs(ttl), SystemTime::now());
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
pub async fn check(
    attest: &Attestor,
    tokens: &TokenKeys,
    required: bool,
    conn: &Connection,
    headers: &HeaderMap,
) -> Result<(), Failure> {
    let Some(token) = headers.get(TOKEN_HEADER) else {
        return if required {
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
    let (bound, expiry) = tokens.open(token, now).map_err(Failure::Token)?;
    if now >= expiry {
        return Err(Failure::Token(TokenError::Expired));
    }
    if bound != attest.binding(conn).await {
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
