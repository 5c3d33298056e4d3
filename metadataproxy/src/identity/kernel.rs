//! eBPF mode: who the kernel says opened a connection.
//!
//! The kernel program records, for every connect to the metadata address (redirected) or to
//! the agent's port, the connecting process's cgroup and its ancestors. The agent takes that
//! record when it accepts the connection; identity is then the cgroup's container, which must
//! agree with the container that owns the peer IP.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use metadataproxy_common::ConnRecord;

use super::cgroup::find_container_by_cgroup_id;
pub use super::cgroup::CgroupKind;

/// A record older than this at accept time is not trusted (its tuple may have been reused).
pub const RECORD_MAX_AGE: Duration = Duration::from_secs(30);

/// The kernel's connection records.
pub trait KernelIdentity: Send + Sync + fmt::Debug {
    /// Removes and returns the record of the connection from `client` to `server`, if the
    /// kernel made one recently enough to trust.
    fn take(&self, client: SocketAddr, server: SocketAddr) -> Option<ConnRecord>;

    /// The container whose cgroup (or an ancestor cgroup) made the connection, if any. May
    /// read the filesystem: call it off the async runtime.
    fn container_id(&self, record: &ConnRecord) -> Option<String>;

    /// What the connecting cgroup is, when that is known without reading the filesystem.
    fn cached_kind(&self, _record: &ConnRecord) -> Option<CgroupKind> {
        None
    }

    /// What the connecting cgroup is: a container, a host service (which keeps the instance's
    /// own metadata), or neither. May read the filesystem: call it off the async runtime.
    fn kind(&self, record: &ConnRecord) -> CgroupKind {
        match self.container_id(record) {
            Some(id) => CgroupKind::Container(id),
            None => CgroupKind::Unknown,
        }
    }
}

/// Resolves cgroup ids to containers by walking the cgroup2 hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupResolver {
    root: PathBuf,
    parents: Vec<String>,
}

impl CgroupResolver {
    /// A resolver over the cgroup2 mount at `root`, for containers under `parents`.
    pub fn new(root: PathBuf, parents: Vec<String>) -> Self {
        CgroupResolver { root, parents }
    }

    /// The container of `record`'s cgroup or any of its ancestors.
    pub fn container_id(&self, record: &ConnRecord) -> Option<String> {
        let mut ids = vec![record.cgroup_id];
        ids.extend(record.ancestors.iter().copied().filter(|id| *id != 0));
        find_container_by_cgroup_id(&self.root, &self.parents, &ids)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Whether a record stamped at `ktime_ns` is recent enough at `now_ns`.
pub fn is_fresh(ktime_ns: u64, now_ns: u64) -> bool {
    now_ns >= ktime_ns && now_ns - ktime_ns <= RECORD_MAX_AGE.as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_expire() {
        let now = monotonic_ns();
        assert!(now > 0);
        assert!(is_fresh(now - 1_000, now));
        assert!(!is_fresh(now - RECORD_MAX_AGE.as_nanos() as u64 - 1, now));
        assert!(
            !is_fresh(now + 1, now),
            "a record from the future is not trusted"
        );
    }
}
