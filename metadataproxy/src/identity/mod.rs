//! Who is calling: from a connection to a Docker container ([`Attestor`]): by its peer
//! address, and in eBPF mode also by the cgroup the kernel recorded for it ([`kernel`]). The
//! container index ([`index`]) follows Docker's events.
//!
//! Identity never comes from a header.

pub mod attest;
pub mod cgroup;
mod docker;
pub mod index;
pub mod kernel;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::future::BoxFuture;

pub use attest::{Attestor, Connection, IdentityError};
pub use docker::{DockerLookup, DockerUrl};
pub use index::ContainerIndex;

/// What the agent needs to know about a running container.
#[derive(Clone, PartialEq, Eq)]
pub struct Container {
    /// Full container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Image as the container was created from.
    pub image: String,
    /// The `IAM_ROLE` environment variable, if set and non-empty.
    pub role: Option<String>,
    /// The `IAM_EXTERNAL_ID` environment variable, if set and non-empty.
    pub external_id: Option<String>,
    /// Its addresses on every network (empty on the host network).
    pub ips: Vec<IpAddr>,
    /// Telemetry labels copied from its Docker labels and environment (`COPY_DOCKER_*`):
    /// (label name, value), in the configured order, empty when it lacks one.
    pub labels: Vec<(String, String)>,
    /// Its Docker labels, for the role policy.
    pub docker_labels: std::sync::Arc<std::collections::BTreeMap<String, String>>,
    /// Its main process in the host's pid namespace (`State.Pid`), from which eBPF mode reads
    /// its cgroup when it is indexed; `None` when Docker did not say.
    pub pid: Option<u32>,
    /// The request target its SDKs ask the container credentials endpoint for, beside
    /// `/v2/credentials/...`: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, or the path of an
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` on `169.254.170.2`.
    pub credentials_uri: Option<String>,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`: requests to the container credentials endpoint
    /// must carry exactly this `Authorization` header.
    pub authorization: Option<AuthorizationToken>,
}

/// A container's `AWS_CONTAINER_AUTHORIZATION_TOKEN`: compared in constant time, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorizationToken(String);

impl AuthorizationToken {
    /// Whether `presented` (an `Authorization` header's bytes) is exactly this token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(self.0.as_bytes(), presented).is_ok()
    }
}

impl fmt::Debug for AuthorizationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorizationToken(***)")
    }
}

/// The container credentials endpoint's address, as SDKs reach it
/// (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` is relative to it).
pub const CONTAINER_ENDPOINT_HOST: &str = "169.254.170.2";

/// The request target of an `AWS_CONTAINER_CREDENTIALS_FULL_URI` that names the container
/// credentials endpoint (`http://169.254.170.2[:80]/...`); `None` for any other address.
fn full_uri_target(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("http://")?;
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = authority.strip_suffix(":80").unwrap_or(authority);
    (host == CONTAINER_ENDPOINT_HOST).then(|| target.to_string())
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("image", &self.image)
            .field("role", &self.role)
            .field("external_id", &self.external_id.as_ref().map(|_| "***"))
            .field("ips", &self.ips)
            .field("labels", &self.labels)
            .field("docker_labels", &self.docker_labels.len())
            .field("pid", &self.pid)
            .field("credentials_uri", &self.credentials_uri)
            .field("authorization", &self.authorization)
            .finish()
    }
}

impl Container {
    /// Builds a container from its id, name, image and `KEY=VALUE` environment.
    pub fn from_env<'a>(
        id: String,
        name: String,
        image: String,
        env: impl IntoIterator<Item = &'a str>,
    ) -> Container {
        let mut role = None;
        let mut external_id = None;
        let mut relative_uri = None;
        let mut full_uri = None;
        let mut authorization = None;
        for kv in env {
            match kv.split_once('=') {
                Some(("IAM_ROLE", v)) if !v.trim().is_empty() => role = Some(v.trim().to_string()),
                Some(("IAM_EXTERNAL_ID", v)) if !v.is_empty() => external_id = Some(v.to_string()),
                Some(("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", v)) if v.starts_with('/') => {
                    relative_uri = Some(v.to_string())
                }
                Some(("AWS_CONTAINER_CREDENTIALS_FULL_URI", v)) => full_uri = full_uri_target(v),
                Some(("AWS_CONTAINER_AUTHORIZATION_TOKEN", v)) if !v.is_empty() => {
                    authorization = Some(AuthorizationToken(v.to_string()))
                }
                _ => {}
            }
        }
        // The SDKs prefer the relative URI when both are set.
        let credentials_uri = relative_uri.or(full_uri);
        Container {
            id,
            name: name.trim_start_matches('/').to_string(),
            image,
            role,
            external_id,
            ips: Vec::new(),
            labels: Vec::new(),
            docker_labels: Default::default(),
            pid: None,
            credentials_uri,
            authorization,
        }
    }

    /// The first 12 characters of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// Which Docker labels and environment keys become telemetry labels (`COPY_DOCKER_LABELS`,
/// `COPY_DOCKER_ENV`), and under which label names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopiedLabels {
    /// (Docker label key, telemetry label name).
    pub labels: Vec<(String, String)>,
    /// (environment key, telemetry label name).
    pub env: Vec<(String, String)>,
}

impl CopiedLabels {
    /// The label names, in order.
    pub fn names(&self) -> Vec<String> {
        self.labels
            .iter()
            .chain(&self.env)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The values a container with these Docker labels and `KEY=VALUE` environment gives.
    pub fn extract<'a>(
        &self,
        labels: &std::collections::HashMap<String, String>,
        env: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(self.labels.len() + self.env.len());
        for (key, name) in &self.labels {
            out.push((name.clone(), labels.get(key).cloned().unwrap_or_default()));
        }
        for (key, name) in &self.env {
            let value = env
                .clone()
                .into_iter()
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.to_string())
                .unwrap_or_default();
            out.push((name.clone(), value));
        }
        out
    }
}

/// Why a lookup failed (the daemon, not the absence of a container).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The Docker daemon could not be reached or answered with an error.
    #[error("docker: {0}")]
    Docker(String),
    /// More than one running container claims the address.
    #[error("{count} running containers have address {ip}")]
    Ambiguous {
        /// The address.
        ip: IpAddr,
        /// How many claim it.
        count: usize,
    },
}

/// Finds the running container that owns an IP address.
pub trait ContainerLookup: Send + Sync + fmt::Debug {
    /// The container with `ip` on any of its networks, if one is running.
    fn by_ip(&self, ip: IpAddr) -> BoxFuture<'_, Result<Option<Container>, LookupError>>;

    /// The running container with this full id.
    fn by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Container>, LookupError>>;

    /// The container with `ip` if it is known without asking anyone (the index's memory), for
    /// log fields and metric labels of requests that need no identity.
    fn peek(&self, _ip: IpAddr) -> Option<Container> {
        None
    }

    /// Whether a container may own `ip`: false only for addresses that no container can have
    /// (outside every Docker network, or a network's gateway), which need no retry window.
    fn may_be_container(&self, _ip: IpAddr) -> bool {
        true
    }
}

/// Runs `lookup` until it finds a container, for up to `window` (a container that has just
/// started may not be listed yet). Used on credential routes only, and only for addresses
/// that [`ContainerLookup::may_be_container`].
pub async fn find_with_retry<F, Fut>(
    window: Duration,
    mut lookup: F,
) -> Result<Option<Container>, LookupError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Container>, LookupError>>,
{
    const STEP: Duration = Duration::from_millis(200);
    let deadline = tokio::time::Instant::now() + window;
    loop {
        let result = lookup().await;
        match &result {
            Ok(Some(_)) | Err(LookupError::Ambiguous { .. }) => return result,
            Ok(None) | Err(LookupError::Docker(_)) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return result;
        }
        tokio::time::sleep(STEP.min(deadline - now)).await;
    }
}

/// Normalises a peer address: IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn env_gives_role_and_external_id() {
        let c = Container::from_env(
            "abcdef0123456789".into(),
            "/web".into(),
            "img".into(),
            [
                "PATH=/bin",
                "IAM_ROLE=my-role",
                "IAM_EXTERNAL_ID=ext=1",
                "X=IAM_ROLE=no",
            ],
        );
        assert_eq!(c.role.as_deref(), Some("my-role"));
        assert_eq!(c.external_id.as_deref(), Some("ext=1"));
        assert_eq!(c.name, "web");
        assert_eq!(c.short_id(), "abcdef012345");
        assert!(!format!("{c:?}").contains("ext=1"));
    }

    #[test]
    fn env_gives_the_container_endpoint_settings() {
        let of = |env: &[&str]| {
            Container::from_env("a".into(), "b".into(), "i".into(), env.iter().copied())
        };
        let c = of(&[
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/creds?id=1",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN=Bearer s3cret",
        ]);
        assert_eq!(c.credentials_uri.as_deref(), Some("/creds?id=1"));
        let token = c.authorization.as_ref().expect("token");
        assert!(token.matches(b"Bearer s3cret"));
        assert!(!token.matches(b"Bearer s3cre"));
        assert!(!token.matches(b""));
        assert!(!format!("{c:?}").contains("s3cret"));
        // A full URI on the endpoint's address gives its target; any other address none.
        for (uri, want) in [
            ("http://169.254.170.2/v1/x", Some("/v1/x")),
            ("http://169.254.170.2:80/y?z", Some("/y?z")),
            ("http://169.254.170.2", Some("/")),
            ("http://127.0.0.1/v1/x", None),
            ("http://169.254.170.2:8080/v1/x", None),
            ("https://169.254.170.2/v1/x", None),
            ("http://169.254.170.23/v1/x", None),
        ] {
            let c = of(&[&format!("AWS_CONTAINER_CREDENTIALS_FULL_URI={uri}")]);
            assert_eq!(c.credentials_uri.as_deref(), want, "{uri}");
        }
        // The relative URI wins, as in the SDKs; a relative URI must start with `/`.
        let c = of(&[
            "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.2/full",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/relative",
        ]);
        assert_eq!(c.credentials_uri.as_deref(), Some("/relative"));
        let c = of(&[
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=creds",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN=",
        ]);
        assert_eq!(c.credentials_uri, None);
        assert!(c.authorization.is_none());
    }

    #[test]
    fn copied_labels_keep_their_order_and_blank_what_is_missing() {
        let copy = CopiedLabels {
            labels: vec![(
                "com.example.team".into(),
                "container_com.example.team".into(),
            )],
            env: vec![
                ("APP".into(), "container_app".into()),
                ("NOPE".into(), "container_nope".into()),
            ],
        };
        let mut labels = std::collections::HashMap::new();
        labels.insert("com.example.team".to_string(), "Payments".to_string());
        let got = copy.extract(&labels, ["APP=web=1", "PATH=/bin"]);
        assert_eq!(
            got,
            [
                (
                    "container_com.example.team".to_string(),
                    "Payments".to_string()
                ),
                ("container_app".to_string(), "web=1".to_string()),
                ("container_nope".to_string(), String::new()),
            ]
        );
        assert_eq!(copy.names().len(), 3);
    }

    #[test]
    fn empty_role_is_no_role() {
        let c = Container::from_env("a".into(), "b".into(), "i".into(), ["IAM_ROLE="]);
        assert_eq!(c.role, None);
    }

    #[test]
    fn mapped_ipv6_peers_become_ipv4() {
        assert_eq!(
            canonical_ip("::ffff:172.17.0.2".parse().unwrap()),
            "172.17.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            canonical_ip("fd00::2".parse().unwrap()),
            "fd00::2".parse::<IpAddr>().unwrap()
        );
    }

    #[derive(Debug, Default)]
    struct AppearsOnThirdTry(AtomicUsize);

    impl ContainerLookup for AppearsOnThirdTry {
        fn by_ip(&self, _ip: IpAddr) -> BoxFuture<'_, Result<Option<Container>, LookupError>> {
            Box::pin(async move {
                let n = self.0.fetch_add(1, Ordering::SeqCst);
                Ok((n >= 2).then(|| Container::from_env("id".into(), "n".into(), "i".into(), [])))
            })
        }
        fn by_id<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<Container>, LookupError>> {
            Box::pin(async { Ok(None) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_finds_a_container_that_appears_late() {
        let inner = Arc::new(AppearsOnThirdTry::default());
        let lookup: Arc<dyn ContainerLookup> = inner.clone();
        let ip = "10.0.0.1".parse().unwrap();
        let found = find_with_retry(Duration::from_secs(5), || lookup.by_ip(ip))
            .await
            .unwrap();
        assert!(found.is_some());
        assert_eq!(inner.0.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_gives_up_after_the_window() {
        #[derive(Debug)]
        struct Never;
        impl ContainerLookup for Never {
            fn by_ip(&self, _: IpAddr) -> BoxFuture<'_, Result<Option<Container>, LookupError>> {
                Box::pin(async { Ok(None) })
            }
            fn by_id<'a>(
                &'a self,
                _: &'a str,
            ) -> BoxFuture<'a, Result<Option<Container>, LookupError>> {
                Box::pin(async { Ok(None) })
            }
        }
        let lookup: Arc<dyn ContainerLookup> = Arc::new(Never);
        let start = tokio::time::Instant::now();
        let ip = "10.0.0.1".parse().unwrap();
        let found = find_with_retry(Duration::from_secs(5), || lookup.by_ip(ip))
            .await
            .unwrap();
        assert!(found.is_none());
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
