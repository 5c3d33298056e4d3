//! eBPF mode: who the kernel says opened a connection.
//!
//! The kernel program records, for every connect to the metadata address (redirected) or to
//! the agent's port, the connecting process's cgroup and its ancestors. The agent takes that
//! record when it accepts the connection; identity is then the cgroup's container, which must
//! agree with the container that owns the peer IP.
//!
//! cgroup to container is O(1) in the agent: [`container_of`] asks the container index, which
//! records each container's cgroup id when it indexes it and walks the cgroup filesystem only
//! on a miss (see [`super::index`]). Without an index that maps cgroups (tests with a fake
//! kernel), it asks [`KernelIdentity::container_id`].

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use metadataproxy_common::ConnRecord;

pub use super::cgroup::CgroupKind;
use super::cgroup::{
    cgroup_id, container_cgroup_by_layout, container_cgroup_in_path, find_container_by_cgroup_id,
    unified_path,
};
use super::{Container, ContainerIndex};

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

    /// The directories (relative to the cgroup2 root) whose descendants are redirected, as
    /// settled at start-up.
    fn container_parents(&self) -> Vec<String> {
        Vec::new()
    }

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

/// The cgroup filesystem as the container index uses it in eBPF mode: [`CgroupResolver`] in
/// the agent, a fake in tests. Both calls may read the filesystem: call them off the async
/// runtime.
pub trait CgroupTree: Send + Sync + fmt::Debug {
    /// The id of `container`'s own cgroup (not a child of it), when it is indexed.
    fn container_cgroup(&self, container: &Container) -> Option<u64>;

    /// A miss: the container whose cgroup is one of `ids` (a cgroup, then its ancestors), with
    /// the one of `ids` that is its cgroup.
    fn walk(&self, ids: &[u64]) -> Option<(u64, String)>;
}

/// A connection's cgroup, then its ancestors from the deepest up (the innermost container
/// wins: a container nested in another's cgroup is itself); no zeros, no repeats.
pub fn record_cgroups(record: &ConnRecord) -> Vec<u64> {
    let mut ids = vec![record.cgroup_id];
    for id in record.ancestors.iter().rev().copied() {
        if id != 0 && !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Resolves cgroup ids to containers from the cgroup2 hierarchy and `/proc`.
#[derive(Debug, Clone)]
pub struct CgroupResolver {
    root: PathBuf,
    parents: Vec<String>,
    proc: PathBuf,
}

impl CgroupResolver {
    /// A resolver over the cgroup2 mount at `root`, for containers under `parents`.
    pub fn new(root: PathBuf, parents: Vec<String>) -> Self {
        CgroupResolver {
            root,
            parents,
            proc: PathBuf::from("/proc"),
        }
    }

    /// The same, reading processes' cgroups under `proc` instead of `/proc` (tests).
    pub fn with_proc(mut self, proc: PathBuf) -> Self {
        self.proc = proc;
        self
    }

    /// The container of `record`'s cgroup or any of its ancestors, by a walk.
    pub fn container_id(&self, record: &ConnRecord) -> Option<String> {
        self.walk(&record_cgroups(record)).map(|(_, id)| id)
    }
}

impl CgroupTree for CgroupResolver {
    fn container_cgroup(&self, container: &Container) -> Option<u64> {
        // Its process's cgroup2 path, which must name the container (a pid reused since Docker
        // answered, or a pid from another pid namespace, names another cgroup).
        let by_pid = container.pid.and_then(|pid| {
            let text =
                std::fs::read_to_string(self.proc.join(pid.to_string()).join("cgroup")).ok()?;
            let own = container_cgroup_in_path(unified_path(&text)?, &container.id)?;
            cgroup_id(&self.root.join(own.trim_start_matches('/'))).ok()
        });
        by_pid.or_else(|| container_cgroup_by_layout(&self.root, &self.parents, &container.id))
    }

    fn walk(&self, ids: &[u64]) -> Option<(u64, String)> {
        find_container_by_cgroup_id(&self.root, &self.parents, ids)
    }
}

/// The container whose cgroup (or an ancestor cgroup) made the connection of `record`: from
/// the index's cgroup map when it keeps one (the agent in eBPF mode; a walk only on a miss),
/// else from `kernel` (a walk, off the async runtime).
pub async fn container_of(
    kernel: &Arc<dyn KernelIdentity>,
    index: Option<&ContainerIndex>,
    record: ConnRecord,
) -> Option<String> {
    if let Some(index) = index.filter(|i| i.maps_cgroups()) {
        return index.container_by_cgroup(&record).await;
    }
    let kernel = kernel.clone();
    tokio::task::spawn_blocking(move || kernel.container_id(&record))
        .await
        .unwrap_or(None)
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

    const ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    #[test]
    fn a_records_cgroups_are_its_own_then_its_ancestors_deepest_first() {
        let mut r = ConnRecord {
            cgroup_id: 40,
            ..ConnRecord::default()
        };
        r.ancestors[..4].copy_from_slice(&[1, 20, 30, 40]);
        assert_eq!(record_cgroups(&r), [40, 30, 20, 1]);
        r.cgroup_id = 0;
        r.ancestors = [0; metadataproxy_common::MAX_CGROUP_LEVEL];
        assert_eq!(
            record_cgroups(&r),
            [0],
            "the cgroup itself, even if unknown"
        );
    }

    /// A cgroup2 tree and a `/proc` in a temporary directory.
    struct Tree {
        dir: PathBuf,
        resolver: CgroupResolver,
    }

    impl Tree {
        fn new(name: &str) -> Tree {
            let dir = std::env::temp_dir().join(format!("mp-kernel-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("cgroup")).unwrap();
            let resolver = CgroupResolver::new(
                dir.join("cgroup"),
                vec!["docker".into(), "system.slice".into()],
            )
            .with_proc(dir.join("proc"));
            Tree { dir, resolver }
        }

        fn cgroup(&self, path: &str) -> u64 {
            let d = self.dir.join("cgroup").join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&d).unwrap();
            cgroup_id(&d).unwrap()
        }

        fn process(&self, pid: u32, path: &str) {
            let d = self.dir.join("proc").join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup"), format!("1:name=systemd:/x\n0::{path}\n")).unwrap();
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn container(pid: Option<u32>) -> Container {
        let mut c = Container::from_env(ID.into(), "web".into(), "img".into(), []);
        c.pid = pid;
        c
    }

    #[test]
    fn a_containers_cgroup_comes_from_its_process_in_any_layout() {
        let t = Tree::new("proc");
        // A custom parent that no layout and no walk knows; the process sits in a child.
        let own = t.cgroup(&format!("/custom.slice/docker-{ID}.scope"));
        t.cgroup(&format!("/custom.slice/docker-{ID}.scope/init.scope"));
        t.process(4242, &format!("/custom.slice/docker-{ID}.scope/init.scope"));
        assert_eq!(
            t.resolver.container_cgroup(&container(Some(4242))),
            Some(own)
        );
        assert_eq!(t.resolver.container_cgroup(&container(None)), None);
    }

    #[test]
    fn a_process_that_is_not_the_containers_falls_back_to_the_layouts() {
        let t = Tree::new("layout");
        let own = t.cgroup(&format!("/docker/{ID}"));
        let other = "a".repeat(64);
        t.cgroup(&format!("/docker/{other}"));
        // The pid now belongs to another container (reused, or another pid namespace).
        t.process(4242, &format!("/docker/{other}"));
        assert_eq!(
            t.resolver.container_cgroup(&container(Some(4242))),
            Some(own)
        );
        // No such process at all.
        assert_eq!(
            t.resolver.container_cgroup(&container(Some(999))),
            Some(own)
        );
        assert_eq!(t.resolver.container_cgroup(&container(None)), Some(own));
    }

    #[test]
    fn the_walk_names_the_cgroup_it_matched() {
        let t = Tree::new("walk");
        let own = t.cgroup(&format!("/system.slice/docker-{ID}.scope"));
        let child = t.cgroup(&format!("/system.slice/docker-{ID}.scope/sub"));
        let mut r = ConnRecord {
            cgroup_id: child,
            ..ConnRecord::default()
        };
        r.ancestors[..3].copy_from_slice(&[1, own, child]);
        assert_eq!(
            t.resolver.walk(&record_cgroups(&r)),
            Some((own, ID.to_string()))
        );
        assert_eq!(t.resolver.container_id(&r).as_deref(), Some(ID));
        assert_eq!(t.resolver.walk(&[1, 2]), None);
    }

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
