//! The credential routes: role name, credentials for the role, instance profile info. The
//! caller is attested by [`Attestor`], credentials come from [`Issuer`]; this module only turns
//! their answers into bodies.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Serialize;

use crate::audit::Audit;
use crate::identity::{Attestor, Connection, Container};
use crate::roles::{Credentials, Issued, Issuer, RoleSpec};
use crate::server::Failure;

/// What a handler learned about the caller, for the request log line.
#[derive(Debug, Default, Clone)]
pub struct CallerInfo {
    /// Container id.
    pub container_id: Option<String>,
    /// Container name.
    pub container_name: Option<String>,
    /// The container's role name.
    pub role_name: Option<String>,
    /// The container's copied telemetry labels (`COPY_DOCKER_*`).
    pub labels: Vec<(String, String)>,
}

impl CallerInfo {
    /// What a request log line and metrics say about `container`.
    pub fn of(container: &Container) -> CallerInfo {
        CallerInfo {
            container_id: Some(container.id.clone()),
            container_name: Some(container.name.clone()),
            role_name: None,
            labels: container.labels.clone(),
        }
    }
}

/// The caller's container and role.
async fn caller(
    attest: &Attestor,
    issuer: &Issuer,
    conn: &Connection,
    info: &mut CallerInfo,
) -> Result<(Container, RoleSpec), Failure> {
    let container = attest.container(conn).await?;
    *info = CallerInfo::of(&container);
    let spec = issuer.role_of(&container)?;
    info.role_name = Some(spec.name().to_string());
    Ok((container, spec))
}

/// `.../security-credentials[/]`: the role name, no trailing newline.
pub async fn role_name(
    attest: &Attestor,
    issuer: &Issuer,
    conn: &Connection,
    info: &mut CallerInfo,
) -> Result<Response<Bytes>, Failure> {
    let (_, spec) = caller(attest, issuer, conn, info).await?;
    Ok(ok(
        "text/plain; charset=utf-8",
        spec.name().as_bytes().to_vec(),
    ))
}

/// `.../security-credentials/{role}[/]`: credentials, only for the container's own role.
pub async fn credentials(
    attest: &Attestor,
    issuer: &Issuer,
    audit: &Audit,
    conn: &Connection,
    requested: &str,
    info: &mut CallerInfo,
) -> Result<Response<Bytes>, Failure> {
    let (container, spec) = caller(attest, issuer, conn, info).await?;
    if requested != spec.name() {
        return Err(Failure::RoleNamesDoNotMatch {
            requested: requested.to_string(),
            actual: spec.name().to_string(),
        });
    }
    let issued = issue(attest, issuer, audit, conn, &container, &spec).await?;
    Ok(ok(
        "application/json",
        credentials_body(&issued.credentials),
    ))
}

/// Credentials for `container`'s role `spec`, recorded in the audit log: what every route that
/// hands credentials to a container does.
pub(super) async fn issue(
    attest: &Attestor,
    issuer: &Issuer,
    audit: &Audit,
    conn: &Connection,
    container: &Container,
    spec: &RoleSpec,
) -> Result<Issued, Failure> {
    let issued = issuer.credentials(container, spec).await?;
    audit.issued(&crate::audit::Issued {
        container,
        role_arn: issued.request.role_arn.as_str(),
        credentials: &issued.credentials,
        identity_source: attest.source(),
        remote_addr: conn.ip,
    });
    Ok(issued)
}

/// `.../iam/info`: the assumed role as the instance profile.
pub async fn info(
    attest: &Attestor,
    issuer: &Issuer,
    conn: &Connection,
    info: &mut CallerInfo,
) -> Result<Response<Bytes>, Failure> {
    let (container, spec) = caller(attest, issuer, conn, info).await?;
    let issued = issuer.credentials(&container, &spec).await?;
    Ok(ok("application/json", info_body(&issued.credentials)))
}

pub(super) fn ok(content_type: &'static str, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// Keys in sorted order, as the contract's body has them.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsBody<'a> {
    access_key_id: &'a str,
    code: &'static str,
    expiration: String,
    last_updated: String,
    secret_access_key: &'a str,
    token: &'a str,
    #[serde(rename = "Type")]
    kind: &'static str,
}

/// The credentials JSON: sorted keys, two-space indent, trailing newline. Rendered once per
/// set of credentials.
pub fn credentials_body(c: &Credentials) -> Bytes {
    c.rendered
        .get_or_init(|| Bytes::from(render_credentials(c)))
}

fn render_credentials(c: &Credentials) -> Vec<u8> {
    let body = CredentialsBody {
        access_key_id: &c.access_key_id,
        code: "Success",
        expiration: crate::clock::format_time(c.expiration),
        last_updated: crate::clock::format_time(c.obtained_at),
        secret_access_key: c.secret_access_key.expose(),
        token: c.session_token.expose(),
        kind: "AWS-HMAC",
    };
    let mut out = serde_json::to_vec_pretty(&body).expect("plain strings serialize");
    out.push(b'\n');
    out
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InfoBody<'a> {
    code: &'static str,
    instance_profile_arn: &'a str,
    instance_profile_id: &'a str,
    last_updated: String,
}

/// The info JSON: sorted keys, two-space indent, trailing newline.
pub fn info_body(c: &Credentials) -> Vec<u8> {
    let body = InfoBody {
        code: "Success",
        instance_profile_arn: &c.assumed_role_arn,
        instance_profile_id: &c.assumed_role_id,
        last_updated: crate::clock::format_time(c.obtained_at),
    };
    let mut out = serde_json::to_vec_pretty(&body).expect("plain strings serialize");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_body_is_exactly_the_contract() {
        let c = crate::testing::example_credentials();
        let want = "{\n  \"AccessKeyId\": \"ASIAEXAMPLE\",\n  \"Code\": \"Success\",\n  \
                    \"Expiration\": \"2026-05-01T13:00:00Z\",\n  \"LastUpdated\": \
                    \"2026-05-01T12:00:00Z\",\n  \"SecretAccessKey\": \"secret\",\n  \
                    \"Token\": \"token\",\n  \"Type\": \"AWS-HMAC\"\n}\n";
        assert_eq!(
            String::from_utf8(credentials_body(&c).to_vec()).unwrap(),
            want
        );
        // Rendered once: the same bytes again.
        assert_eq!(credentials_body(&c), credentials_body(&c));
        let want = "{\n  \"Code\": \"Success\",\n  \"InstanceProfileArn\": \
                    \"arn:aws:sts::123456789012:assumed-role/r/s\",\n  \"InstanceProfileId\": \
                    \"AROAEXAMPLE:s\",\n  \"LastUpdated\": \"2026-05-01T12:00:00Z\"\n}\n";
        assert_eq!(String::from_utf8(info_body(&c)).unwrap(), want);
    }
}
