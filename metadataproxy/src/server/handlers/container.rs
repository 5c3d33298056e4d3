//! The container credentials endpoint (`169.254.170.2`, the protocol of ECS task roles): the
//! calling container's role credentials, with the identity, role resolution, policy, cache
//! and audit of the metadata service's credential route. A container that sets
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN` is served only on requests that carry exactly that
//! `Authorization` header.

use bytes::Bytes;
use http::{HeaderMap, Response};
use serde::Serialize;

use crate::audit::Audit;
use crate::identity::{Attestor, Connection, Container};
use crate::roles::{Credentials, Issuer};
use crate::server::Failure;

use super::credentials::{issue, ok, CallerInfo};
use crate::server::router::ContainerTarget as Target;

/// The settings the endpoint applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// `CONTAINER_AUTHORIZATION=required`.
    pub authorization_required: bool,
}

/// `GET` on the endpoint: the caller's credentials. `request_target` is the path and query as
/// sent.
#[allow(clippy::too_many_arguments)]
pub async fn credentials(
    attest: &Attestor,
    issuer: &Issuer,
    audit: &Audit,
    settings: Settings,
    conn: &Connection,
    target: Target,
    request_target: &str,
    headers: &HeaderMap,
    info: &mut CallerInfo,
) -> Result<Response<Bytes>, Failure> {
    let container = attest.container(conn).await?;
    *info = CallerInfo::of(&container);
    if target == Target::Named && container.credentials_uri.as_deref() != Some(request_target) {
        return Err(Failure::ContainerPathNotServed);
    }
    authorize(&container, settings, headers)?;
    let spec = issuer.role_of(&container)?;
    info.role_name = Some(spec.name().to_string());
    let issued = issue(attest, issuer, audit, conn, &container, &spec).await?;
    Ok(ok(
        "application/json",
        body(&issued.credentials, issued.request.role_arn.as_str()),
    ))
}

/// The container's authorization token, when it has one, must be the request's one
/// `Authorization` header, byte for byte.
fn authorize(
    container: &Container,
    settings: Settings,
    headers: &HeaderMap,
) -> Result<(), Failure> {
    let mut presented = headers.get_all(http::header::AUTHORIZATION).iter();
    let (first, second) = (presented.next(), presented.next());
    if second.is_some() {
        return Err(Failure::DuplicateHeader("authorization"));
    }
    match (&container.authorization, first) {
        (Some(token), Some(value)) if token.matches(value.as_bytes()) => Ok(()),
        (Some(_), Some(_)) => Err(Failure::AuthorizationInvalid),
        (Some(_), None) => Err(Failure::AuthorizationMissing),
        (None, _) if settings.authorization_required => Err(Failure::AuthorizationNotSet),
        (None, _) => Ok(()),
    }
}

/// The container credentials format, keys in the order the ECS agent writes them.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Body<'a> {
    role_arn: &'a str,
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: String,
}

fn body(c: &Credentials, role_arn: &str) -> Bytes {
    let body = Body {
        role_arn,
        access_key_id: &c.access_key_id,
        secret_access_key: c.secret_access_key.expose(),
        token: c.session_token.expose(),
        expiration: crate::clock::format_time(c.expiration),
    };
    Bytes::from(serde_json::to_vec(&body).expect("plain strings serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(env: &[&str]) -> Container {
        Container::from_env("c".into(), "n".into(), "i".into(), env.iter().copied())
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_token_must_be_the_one_authorization_header() {
        let with = container(&["AWS_CONTAINER_AUTHORIZATION_TOKEN=Basic abc"]);
        let optional = Settings::default();
        let required = Settings {
            authorization_required: true,
        };
        assert!(authorize(&with, optional, &headers(&["Basic abc"])).is_ok());
        assert!(authorize(&with, required, &headers(&["Basic abc"])).is_ok());
        let refused = |h: &[&str]| authorize(&with, optional, &headers(h)).unwrap_err();
        assert!(matches!(refused(&[]), Failure::AuthorizationMissing));
        assert!(matches!(
            refused(&["Basic ab"]),
            Failure::AuthorizationInvalid
        ));
        assert!(matches!(
            refused(&["basic abc"]),
            Failure::AuthorizationInvalid
        ));
        assert!(matches!(
            refused(&["Basic abc "]),
            Failure::AuthorizationInvalid
        ));
        assert!(matches!(
            refused(&["Basic abc", "Basic abc"]),
            Failure::DuplicateHeader(_)
        ));
        // No token set: served unless every container must have one.
        let without = container(&[]);
        assert!(authorize(&without, optional, &headers(&[])).is_ok());
        assert!(authorize(&without, optional, &headers(&["anything"])).is_ok());
        assert!(matches!(
            authorize(&without, required, &headers(&["Basic abc"])).unwrap_err(),
            Failure::AuthorizationNotSet
        ));
    }

    #[test]
    fn body_is_the_container_credentials_format() {
        let c = crate::testing::example_credentials();
        let got = body(&c, "arn:aws:iam::123456789012:role/r");
        assert_eq!(
            std::str::from_utf8(&got).unwrap(),
            "{\"RoleArn\":\"arn:aws:iam::123456789012:role/r\",\"AccessKeyId\":\"ASIAEXAMPLE\",\
             \"SecretAccessKey\":\"secret\",\"Token\":\"token\",\
             \"Expiration\":\"2026-05-01T13:00:00Z\"}"
        );
    }
}
