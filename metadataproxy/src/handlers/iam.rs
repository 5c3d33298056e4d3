//! The credential routes: role name, credentials for the role, instance profile info.
//!
//! Data flows one way: peer address → container → role → credentials → body.

use std::net::IpAddr;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Serialize;

use super::Failure;
use crate::app::State;
use crate::identity::kernel::{ConnRecord, KernelIdentity};
use crate::identity::{find_with_retry, Container, LookupError};
use crate::roles::{AssumeRoleRequest, Credentials, RoleSpec};

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

/// The connection a request arrived on: what identifies its caller.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    /// Peer address (IPv4-mapped IPv6 already folded to IPv4).
    pub ip: IpAddr,
    /// eBPF mode: the kernel's record of who connected, taken at accept.
    pub kernel: Option<ConnRecord>,
    /// The port the connection arrived on (for the `Host` check).
    pub local_port: u16,
}

impl Connection {
    /// The key of the caller's request rate: its cgroup in eBPF mode, else its address.
    pub fn rate_key(&self) -> crate::limits::Peer {
        match &self.kernel {
            Some(r) => crate::limits::Peer::Cgroup(r.cgroup_id),
            None => crate::limits::Peer::Ip(self.ip),
        }
    }
}

/// The caller's container and role.
async fn caller(
    state: &State,
    conn: &Connection,
    info: &mut CallerInfo,
) -> Result<(Container, RoleSpec), Failure> {
    let container = match &state.kernel {
        None => container_by_ip(state, conn.ip).await?,
        Some(kernel) => container_verified(state, kernel.clone(), conn).await?,
    };
    *info = CallerInfo::of(&container);
    let spec = role_of(state, &container)?;
    info.role_name = Some(spec.name().to_string());
    Ok((container, spec))
}

/// The container's role: its `IAM_ROLE`, else `DEFAULT_ROLE`.
pub(crate) fn role_of(state: &State, container: &Container) -> Result<RoleSpec, Failure> {
    match &container.role {
        Some(raw) => RoleSpec::parse(raw).map_err(Failure::InvalidRole),
        None => state.default_role.clone().ok_or(Failure::NoRole),
    }
}

fn lookup_failure(e: LookupError) -> Failure {
    match e {
        e @ LookupError::Ambiguous { .. } => Failure::AmbiguousContainer(e),
        e @ LookupError::Docker(_) => Failure::Docker(e),
    }
}

/// Classic mode: the container that owns the peer IP.
async fn container_by_ip(state: &State, ip: IpAddr) -> Result<Container, Failure> {
    // No container has a loopback address, a Docker network's gateway or an address outside
    // every Docker network: such callers get one look, not the retry window.
    let window = if ip.is_loopback() || !state.lookup.may_be_container(ip) {
        std::time::Duration::ZERO
    } else {
        state.lookup_window
    };
    find_with_retry(window, || state.lookup.by_ip(ip))
        .await
        .map_err(lookup_failure)?
        .ok_or(Failure::CouldNotFindContainer)
}

/// eBPF mode: the container of the connecting cgroup, which must also own the peer IP unless
/// no container does (host network).
async fn container_verified(
    state: &State,
    kernel: std::sync::Arc<dyn KernelIdentity>,
    conn: &Connection,
) -> Result<Container, Failure> {
    let record = conn.kernel.ok_or(Failure::NoKernelIdentity)?;
    // The index's cgroup map (O(1)); a walk of the cgroup filesystem only on a miss.
    let by_cgroup =
        crate::identity::kernel::container_of(&kernel, state.index.as_deref(), record).await;
    let by_ip = state.lookup.by_ip(conn.ip).await.map_err(lookup_failure)?;
    let mismatch = |by_ip: &Container, by_cgroup: Option<&str>| {
        let by_cgroup = by_cgroup
            .map(|id| format!("container {}", &id[..id.len().min(12)]))
            .unwrap_or_else(|| format!("a host process (pid {})", record.tgid));
        let by_ip = format!("container {} ({})", by_ip.short_id(), by_ip.name);
        let total = state
            .identity_mismatches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        crate::metrics::identity_mismatch();
        tracing::warn!(
            peer = %conn.ip,
            by_ip = %by_ip,
            by_cgroup = %by_cgroup,
            cgroup_id = record.cgroup_id,
            identity_mismatches_total = total,
            "identity mismatch: the peer IP and the connecting cgroup disagree"
        );
        Failure::IdentityMismatch { by_ip, by_cgroup }
    };
    match (by_cgroup, by_ip) {
        (None, None) => Err(Failure::CouldNotFindContainer),
        (None, Some(c)) => Err(mismatch(&c, None)),
        (Some(id), Some(c)) if c.id != id => Err(mismatch(&c, Some(&id))),
        // Both name the same container: it is already at hand.
        (Some(_), Some(c)) => Ok(c),
        // A host-network container (no address of its own): by its id.
        (Some(id), None) => find_with_retry(state.lookup_window, || state.lookup.by_id(&id))
            .await
            .map_err(lookup_failure)?
            .ok_or(Failure::CouldNotFindContainer),
    }
}

/// Every AssumeRole input for `container` in role `spec`: the credential cache key.
pub(crate) async fn assume_role_request(
    state: &State,
    container: &Container,
    spec: &RoleSpec,
) -> Result<AssumeRoleRequest, Failure> {
    let role_arn = state
        .resolver
        .resolve(spec)
        .await
        .map_err(|e| Failure::CouldNotResolveRole((*e).clone()))?;
    if !state.role_policy.allows(role_arn.as_str(), container) {
        crate::metrics::role_not_allowed(spec.name());
        tracing::warn!(
            container_id = %container.id,
            container_name = %container.name,
            image = %container.image,
            role_arn = %role_arn,
            "role not allowed by the role policy"
        );
        return Err(Failure::RoleNotAllowed(role_arn.to_string()));
    }
    Ok(AssumeRoleRequest {
        role_arn,
        external_id: container.external_id.clone(),
        session_name: state.session_name.render(container),
        duration: state.session_duration,
        policy: None,
        tags: if state.session_tags {
            crate::roles::session_tags(container)
        } else {
            Vec::new()
        },
    })
}

pub(crate) async fn credentials_for(
    state: &State,
    container: &Container,
    spec: &RoleSpec,
) -> Result<std::sync::Arc<Credentials>, Failure> {
    let req = assume_role_request(state, container, spec).await?;
    state
        .credentials
        .get(&req)
        .await
        .map_err(Failure::CouldNotAssumeRole)
}

/// `.../security-credentials[/]`: the role name, no trailing newline.
pub async fn role_name(
    state: &State,
    conn: &Connection,
    info: &mut CallerInfo,
) -> Result<Response<Bytes>, Failure> {
    let (_, spec) = caller(state, conn, info).await?;
    Ok(ok(
        "text/plain; charset=utf-8",
        spec.name().as_bytes().to_vec(),
    ))
}

/// `.../security-credentials/{role}[/]`: credentials, only for the container's own role.
pub async fn credentials(
    state: &State,
    conn: &Connection,
    requested: &str,
    info: &mut CallerInfo,
) -> Result<Response<Bytes>, Failure> {
    let (container, spec) = caller(state, conn, info).await?;
    if requested != spec.name() {
        return Err(Failure::RoleNamesDoNotMatch {
            requested: requested.to_string(),
            actual: spec.name().to_string(),
        });
    }
    let req = assume_role_request(state, &container, &spec).await?;
    let creds = state
        .credentials
        .get(&req)
        .await
        .map_err(Failure::CouldNotAssumeRole)?;
    state.audit.issued(&crate::audit::Issued {
        container: &container,
        role_arn: req.role_arn.as_str(),
        credentials: &creds,
        identity_source: if state.kernel.is_some() {
            "cgroup"
        } else {
            "ip"
        },
        remote_addr: conn.ip,
    });
    Ok(ok("application/json", credentials_body(&creds)))
}

/// `.../iam/info`: the assumed role as the instance profile.
pub async fn info(
    state: &State,
    conn: &Connection,
    info: &mut CallerInfo,
) -> Result<Response<Bytes>, Failure> {
    let (container, spec) = caller(state, conn, info).await?;
    let creds = credentials_for(state, &container, &spec).await?;
    Ok(ok("application/json", info_body(&creds)))
}

fn ok(content_type: &'static str, body: impl Into<Bytes>) -> Response<Bytes> {
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
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::roles::Secret;

    #[test]
    fn credentials_body_is_exactly_the_contract() {
        let c = Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Secret::new("secret"),
            session_token: Secret::new("token"),
            expiration: UNIX_EPOCH + Duration::from_secs(1_777_640_400),
            obtained_at: UNIX_EPOCH + Duration::from_secs(1_777_636_800),
            assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/r/s".into(),
            assumed_role_id: "AROAEXAMPLE:s".into(),
            rendered: crate::roles::Rendered::default(),
        };
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
