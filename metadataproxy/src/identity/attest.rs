//! Attesting the caller: from a connection to the container behind it.
//!
//! Classic and iptables modes know a connection by its peer address alone: the container
//! that owns it (waiting up to `CONTAINER_LOOKUP_TIMEOUT` for one that is not indexed yet). In
//! eBPF mode the kernel program also recorded which cgroup made the connect; the container of
//! that cgroup must be the one that owns the peer address (or no container owns it: the host
//! network), else the request is refused as a mismatch. The same answer binds IMDSv2 tokens.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::kernel::{CgroupKind, ConnRecord, KernelIdentity};
use super::{find_with_retry, Container, ContainerIndex, ContainerLookup, LookupError};
use crate::imdsv2::Binding;

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

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No running container has the caller's address.
    #[error("no running container has this address")]
    NotFound,
    /// The Docker daemon could not answer.
    #[error(transparent)]
    Docker(LookupError),
    /// Several running containers claim the caller's address.
    #[error(transparent)]
    Ambiguous(LookupError),
    /// eBPF mode: the connection has no fresh kernel record (raw-socket handshake, forged
    /// source, or a path around the kernel program).
    #[error("no kernel record for this connection")]
    NoKernelRecord,
    /// eBPF mode: the peer IP and the connecting cgroup name different callers.
    #[error("peer IP belongs to {by_ip}, but the connection came from {by_cgroup}")]
    Mismatch {
        /// The container owning the peer IP.
        by_ip: String,
        /// The container of the connecting cgroup, or `a host process`.
        by_cgroup: String,
    },
}

impl IdentityError {
    /// The `error_description` of logs and metrics.
    pub fn description(&self) -> &'static str {
        match self {
            IdentityError::NotFound => "could_not_find_container",
            IdentityError::Docker(_) => "docker_unavailable",
            IdentityError::Ambiguous(_) => "ambiguous_container",
            IdentityError::NoKernelRecord => "no_kernel_identity",
            IdentityError::Mismatch { .. } => "identity_mismatch",
        }
    }
}

impl From<LookupError> for IdentityError {
    fn from(e: LookupError) -> Self {
        match e {
            e @ LookupError::Ambiguous { .. } => IdentityError::Ambiguous(e),
            e @ LookupError::Docker(_) => IdentityError::Docker(e),
        }
    }
}

/// Finds and checks the container behind a connection.
#[derive(Debug)]
pub struct Attestor {
    lookup: Arc<dyn ContainerLookup>,
    kernel: Option<Arc<dyn KernelIdentity>>,
    index: Option<Arc<ContainerIndex>>,
    window: Duration,
    mismatches: AtomicU64,
}

impl Attestor {
    /// Attests by `lookup` (peer address → container), waiting up to `window` for a container
    /// not known yet; with `kernel` (eBPF mode), also by the connecting cgroup.
    pub fn new(
        lookup: Arc<dyn ContainerLookup>,
        kernel: Option<Arc<dyn KernelIdentity>>,
        window: Duration,
    ) -> Attestor {
        Attestor {
            lookup,
            kernel,
            index: None,
            window,
            mismatches: AtomicU64::new(0),
        }
    }

    /// The index behind `lookup`, whose cgroup map answers cgroup → container in eBPF mode.
    pub fn with_index(mut self, index: Arc<ContainerIndex>) -> Attestor {
        self.index = Some(index);
        self
    }

    /// eBPF mode: the kernel's connection records.
    pub fn kernel(&self) -> Option<&Arc<dyn KernelIdentity>> {
        self.kernel.as_ref()
    }

    /// What the log line and the audit record call the way callers are known.
    pub fn source(&self) -> &'static str {
        if self.kernel.is_some() {
            "cgroup"
        } else {
            "ip"
        }
    }

    /// The container at `ip` if the index already knows it: for logs and metrics only, never
    /// for a decision.
    pub fn peek(&self, ip: IpAddr) -> Option<Container> {
        self.lookup.peek(ip)
    }

    /// eBPF mode: a connection that did not pass the kernel program (no record) came from
    /// elsewhere (another host, a raw socket).
    pub fn unrecorded(&self, conn: &Connection) -> bool {
        self.kernel.is_some() && conn.kernel.is_none()
    }

    /// The caller's container.
    pub async fn container(&self, conn: &Connection) -> Result<Container, IdentityError> {
        match &self.kernel {
            None => self.by_ip(conn.ip).await,
            Some(kernel) => self.verified(kernel, conn).await,
        }
    }

    /// Classic mode: the container that owns the peer IP.
    async fn by_ip(&self, ip: IpAddr) -> Result<Container, IdentityError> {
        // No container has a loopback address, a Docker network's gateway or an address
        // outside every Docker network: such callers get one look, not the retry window.
        let window = if ip.is_loopback() || !self.lookup.may_be_container(ip) {
            Duration::ZERO
        } else {
            self.window
        };
        find_with_retry(window, || self.lookup.by_ip(ip))
            .await?
            .ok_or(IdentityError::NotFound)
    }

    /// eBPF mode: the container of the connecting cgroup, which must also own the peer IP
    /// unless no container does (host network).
    async fn verified(
        &self,
        kernel: &Arc<dyn KernelIdentity>,
        conn: &Connection,
    ) -> Result<Container, IdentityError> {
        let record = conn.kernel.ok_or(IdentityError::NoKernelRecord)?;
        // The index's cgroup map (O(1)); a walk of the cgroup filesystem only on a miss.
        let by_cgroup = super::kernel::container_of(kernel, self.index.as_deref(), record).await;
        let by_ip = self.lookup.by_ip(conn.ip).await?;
        match (by_cgroup, by_ip) {
            (None, None) => Err(IdentityError::NotFound),
            (None, Some(c)) => Err(self.mismatch(conn, &record, &c, None)),
            (Some(id), Some(c)) if c.id != id => Err(self.mismatch(conn, &record, &c, Some(&id))),
            // Both name the same container: it is already at hand.
            (Some(_), Some(c)) => Ok(c),
            // A host-network container (no address of its own): by its id.
            (Some(id), None) => find_with_retry(self.window, || self.lookup.by_id(&id))
                .await?
                .ok_or(IdentityError::NotFound),
        }
    }

    fn mismatch(
        &self,
        conn: &Connection,
        record: &ConnRecord,
        by_ip: &Container,
        by_cgroup: Option<&str>,
    ) -> IdentityError {
        let by_cgroup = by_cgroup
            .map(|id| format!("container {}", &id[..id.len().min(12)]))
            .unwrap_or_else(|| format!("a host process (pid {})", record.tgid));
        let by_ip = format!("container {} ({})", by_ip.short_id(), by_ip.name);
        let total = self.mismatches.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::identity_mismatch();
        tracing::warn!(
            peer = %conn.ip,
            by_ip = %by_ip,
            by_cgroup = %by_cgroup,
            cgroup_id = record.cgroup_id,
            identity_mismatches_total = total,
            "identity mismatch: the peer IP and the connecting cgroup disagree"
        );
        IdentityError::Mismatch { by_ip, by_cgroup }
    }

    /// Who the caller is, for binding IMDSv2 tokens: its container when it is one (by cgroup
    /// in eBPF mode, by address otherwise), else its address. Loopback callers are never looked
    /// up.
    pub async fn binding(&self, conn: &Connection) -> Binding {
        if let (Some(kernel), Some(record)) = (&self.kernel, conn.kernel) {
            let by_cgroup =
                super::kernel::container_of(kernel, self.index.as_deref(), record).await;
            return match by_cgroup {
                Some(id) => Binding::Container(id),
                None => Binding::Ip(conn.ip),
            };
        }
        if conn.ip.is_loopback() {
            return Binding::Ip(conn.ip);
        }
        match self.lookup.by_ip(conn.ip).await {
            Ok(Some(c)) => Binding::Container(c.id),
            _ => Binding::Ip(conn.ip),
        }
    }

    /// eBPF mode: whether a redirected connection came from a host service (see
    /// [`super::cgroup::classify_path`]). Known cgroups are answered from memory; a new one
    /// costs a walk of its path, off the runtime.
    pub async fn is_host_service(&self, conn: &Connection) -> bool {
        let (Some(kernel), Some(record)) = (&self.kernel, conn.kernel) else {
            return false;
        };
        if record.redirected == 0 {
            return false;
        }
        let kind = match kernel.cached_kind(&record) {
            Some(kind) => kind,
            None => {
                let kernel = kernel.clone();
                tokio::task::spawn_blocking(move || kernel.kind(&record))
                    .await
                    .unwrap_or(CgroupKind::Unknown)
            }
        };
        kind == CgroupKind::HostService
    }
}
