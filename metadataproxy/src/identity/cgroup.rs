//! cgroup (v2) paths and ids: which container a cgroup belongs to.
//!
//! Docker puts a container's processes in `/docker/<id>` (cgroupfs driver) or
//! `/system.slice/docker-<id>.scope` (systemd driver, also under other slices); a container may
//! create sub-cgroups below its own. A cgroup's id is the inode number of its directory in the
//! cgroup2 mount (64-bit kernfs ids: not reused while the system runs).
//!
//! Two ways from a container to its cgroup id, used when it is indexed: its main process's
//! `/proc/<pid>/cgroup` (any layout; the path must name the container, so a reused pid or
//! another pid namespace cannot mislead it), else the driver layouts under the container
//! parents. One way back, for a cgroup id no indexed container has: a walk of the parents'
//! children (a directory read plus one `stat` per container).
//!
//! Podman's containers (rootful) live in `<slice>/libpod-<id>.scope` (systemd:
//! `machine.slice`, pods in `machine.slice/machine-libpod_pod_<pod>.slice`; conmon beside them
//! in `libpod-conmon-<id>.scope`, which is no container) or `/libpod_parent/libpod-<id>`
//! (cgroupfs). These are recognised as containers; eBPF mode still refuses to start with Podman
//! as the engine ([`LayoutError::Podman`]).
//!
//! With the systemd driver, containers share `system.slice` with the host's services; the
//! kernel redirects the whole slice and the agent tells them apart per connection by the
//! shape of the cgroup's path ([`classify_path`]): a container's scope, a service, or
//! neither.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The cgroup2 mount: `/sys/fs/cgroup` on pure cgroup2 hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones. Reads `/proc/self/mounts`.
pub fn detect_cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    cgroup2_root_from_mounts(&mounts)
}

/// The first cgroup2 mount point listed in a `/proc/mounts` text.
pub fn cgroup2_root_from_mounts(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, mount_point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The container id a cgroup path (relative to the cgroup2 root) belongs to, if any.
pub fn container_id_from_path(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    (0..segments.len()).find_map(|i| names_container(&segments, i).map(str::to_string))
}

/// The container id that segment `i` of a cgroup path names, by the engines' layouts:
/// `docker-<id>.scope` or `libpod-<id>.scope` under any slice (systemd driver), `<id>` directly
/// under `docker` or `libpod-<id>` directly under `libpod_parent` (cgroupfs driver).
fn names_container<'a>(segments: &[&'a str], i: usize) -> Option<&'a str> {
    let segment = segments[i];
    let parent = i.checked_sub(1).map(|p| segments[p]);
    let id = if let Some(unit) = segment.strip_suffix(".scope") {
        unit.strip_prefix("docker-")
            .or_else(|| unit.strip_prefix("libpod-"))?
    } else if parent == Some("docker") {
        segment
    } else if parent == Some("libpod_parent") {
        segment.strip_prefix("libpod-")?
    } else {
        return None;
    };
    is_container_id(id).then_some(id)
}

/// Whether a cgroup path is one of Podman's container layouts (`libpod-<id>`).
pub fn is_podman_container_path(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    (0..segments.len())
        .any(|i| names_container(&segments, i).is_some() && segments[i].starts_with("libpod-"))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The id (inode number) of a cgroup directory.
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// The cgroup2 path (relative to the mount) in a `/proc/<pid>/cgroup` text: its `0::` line.
pub fn unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim_end)
}

/// The container's own cgroup in `path` (a cgroup2 path of one of its processes): the path up
/// to its first segment that names container `id` (`<id>`, `docker-<id>.scope`,
/// `libpod-<id>.scope`, `libpod-<id>`), so that a process in a child cgroup (`docker exec` in some setups,
/// systemd inside the container) still gives the container's cgroup. `None` when no segment
/// names it, or for a path outside the reader's cgroup namespace (`/..`).
pub fn container_cgroup_in_path(path: &str, id: &str) -> Option<String> {
    if !is_container_id(id) || !path.starts_with('/') {
        return None;
    }
    let mut out = String::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        if segment == ".." || segment == "." {
            return None;
        }
        out.push('/');
        out.push_str(segment);
        let names_it = segment == id
            || segment.strip_prefix("libpod-") == Some(id)
            || segment
                .strip_suffix(".scope")
                .and_then(|s| s.strip_suffix(id))
                .is_some_and(|prefix| prefix.ends_with('-'));
        if names_it {
            return Some(out);
        }
    }
    None
}

/// The id of container `id`'s cgroup by the driver layouts under `parents` (relative to
/// `root`): `<parent>/<id>` or `<parent>/libpod-<id>` (cgroupfs), `<parent>/docker-<id>.scope`
/// or `<parent>/libpod-<id>.scope` (systemd), whichever exists.
pub fn container_cgroup_by_layout(root: &Path, parents: &[String], id: &str) -> Option<u64> {
    if !is_container_id(id) {
        return None;
    }
    parents.iter().find_map(|parent| {
        let parent = root.join(parent.trim_matches('/'));
        [
            parent.join(id),
            parent.join(format!("docker-{id}.scope")),
            parent.join(format!("libpod-{id}")),
            parent.join(format!("libpod-{id}.scope")),
        ]
        .iter()
        .find_map(|dir| cgroup_id(dir).ok())
    })
}

/// Finds the container whose cgroup has one of the ids in `ids` (a cgroup and its ancestors),
/// by walking the container parent directories `parents` (relative to `root`). Returns the
/// container's cgroup id (the one of `ids` that matched) and the container id.
pub fn find_container_by_cgroup_id(
    root: &Path,
    parents: &[String],
    ids: &[u64],
) -> Option<(u64, String)> {
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(root.join(parent)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_dir() || !ids.contains(&meta.ino()) {
                continue;
            }
            let rel = format!("/{parent}/{}", entry.file_name().to_string_lossy());
            if let Some(id) = container_id_from_path(&rel) {
                return Some((meta.ino(), id));
            }
        }
    }
    None
}

/// What a cgroup (path relative to the cgroup2 root) is, as far as the agent is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupKind {
    /// A container's cgroup, or one below it.
    Container(String),
    /// A host service of systemd: `<slice>/…/<name>.service` and below (sshd, the SSM agent,
    /// dockerd and its credential helpers). It keeps the instance's own metadata and role.
    HostService,
    /// Anything else: neither a container nor a service (a session scope, another engine's
    /// scope, an unknown layout). Gets what an unidentified caller gets.
    Unknown,
}

/// Classifies a cgroup path: a container by [`container_id_from_path`]; a host service when
/// the path is one or more systemd slices (`*.slice`) followed by a unit named `*.service`.
/// An allow-list: every other shape is [`CgroupKind::Unknown`].
pub fn classify_path(path: &str) -> CgroupKind {
    if let Some(id) = container_id_from_path(path) {
        return CgroupKind::Container(id);
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let slices = segments
        .iter()
        .take_while(|s| is_unit_name(s, ".slice"))
        .count();
    match segments.get(slices) {
        Some(unit) if slices > 0 && is_unit_name(unit, ".service") => CgroupKind::HostService,
        _ => CgroupKind::Unknown,
    }
}

/// A systemd unit name with `suffix`: a non-empty name of the characters systemd allows
/// (letters, digits, `:-_.\@`).
fn is_unit_name(s: &str, suffix: &str) -> bool {
    s.strip_suffix(suffix).is_some_and(|name| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
    })
}

/// The path (relative to `root`, with a leading `/`) of the cgroup whose ancestors, from the
/// first level below the root down, have the ids `ancestors` (0 ends the list): one directory
/// read per level. `None` when a level is not found (the cgroup is gone).
pub fn path_of_ancestors(root: &Path, ancestors: &[u64]) -> Option<String> {
    let mut dir = root.to_path_buf();
    let mut path = String::new();
    for id in ancestors.iter().copied().take_while(|id| *id != 0) {
        let child = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .find(|e| e.metadata().is_ok_and(|m| m.is_dir() && m.ino() == id))?;
        path.push('/');
        path.push_str(&child.file_name().to_string_lossy());
        dir = child.path();
    }
    Some(if path.is_empty() { "/".into() } else { path })
}

/// What the host says about where containers live, gathered at eBPF start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayoutFacts {
    /// Docker's `CgroupDriver` (`cgroupfs`, `systemd`), when Docker answered.
    pub driver: Option<String>,
    /// Whether systemd is the init (`/run/systemd/system` exists): on such a host with pure
    /// cgroup2, Docker's default driver is systemd.
    pub systemd_init: bool,
    /// Running containers: (name, cgroup path relative to the cgroup2 root).
    pub containers: Vec<(String, String)>,
    /// The engine, when it names itself: `Podman Engine` for Podman's API service.
    pub engine: Option<String>,
}

/// Why the container parents cannot be settled: eBPF mode does not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Running containers sit where no container parent covers them, or in cgroups that are
    /// not a container's shape.
    #[error(
        "running containers are in cgroups that EBPF_CONTAINER_CGROUPS ({parents}) does not \
         cover or that are not a Docker container's (docker/<id>, <slice>/docker-<id>.scope): \
         {found}; set EBPF_CONTAINER_CGROUPS to their parent directories"
    )]
    Uncovered {
        /// The parents in force.
        parents: String,
        /// `name in path`, for each container not covered.
        found: String,
    },
    /// The container engine is Podman (it says so, or its containers' cgroups do).
    #[error(
        "the container engine is Podman ({evidence}): eBPF mode is not supported with Podman. \
         The agent recognises Podman's container cgroups (machine.slice/libpod-<id>.scope, \
         libpod_parent/libpod-<id>), but the kernel redirect has not been proven with them; \
         use classic mode (INTERCEPT=none) with DNAT rules for Podman's bridges (podman+), as \
         docs/deployment.md shows (INTERCEPT=iptables covers Docker's bridges only)"
    )]
    Podman {
        /// What showed it.
        evidence: String,
    },
    /// A cgroup driver this agent does not know.
    #[error("Docker's cgroup driver is {0:?}; eBPF mode knows cgroupfs and systemd")]
    UnknownDriver(String),
}

/// The directories (relative to the cgroup2 root) whose descendants the kernel redirects.
///
/// `configured` is `EBPF_CONTAINER_CGROUPS` (`None`: `auto`). With `auto`: `docker` for the
/// cgroupfs driver; `system.slice` and `docker.slice` for the systemd driver (containers sit
/// beside host services there: the agent tells them apart per connection, see
/// [`classify_path`]); all of them when Docker did not answer (at boot) on a systemd host, and
/// `docker` and `docker.slice` on others; plus the parent of every running container. Either
/// way every running container must be a container's cgroup below one of them, else
/// [`LayoutError::Uncovered`] naming each: the agent never leaves a container unredirected
/// without saying so.
pub fn container_parents(
    configured: Option<&[String]>,
    facts: &LayoutFacts,
) -> Result<Vec<String>, LayoutError> {
    if let Some(engine) = facts.engine.as_deref().filter(|e| e.contains("Podman")) {
        return Err(LayoutError::Podman {
            evidence: format!("the engine names itself {engine:?}"),
        });
    }
    if let Some((name, path)) = facts
        .containers
        .iter()
        .find(|(_, path)| is_podman_container_path(path))
    {
        return Err(LayoutError::Podman {
            evidence: format!("container {name} is in {path}"),
        });
    }
    let parents: Vec<String> = match configured {
        Some(list) => list.to_vec(),
        None => {
            let mut parents: Vec<String> = match facts.driver.as_deref() {
                Some("cgroupfs") => vec!["docker".into()],
                Some("systemd") => vec!["system.slice".into(), "docker.slice".into()],
                Some(other) => return Err(LayoutError::UnknownDriver(other.to_string())),
                None if facts.systemd_init => vec![
                    "docker".into(),
                    "docker.slice".into(),
                    "system.slice".into(),
                ],
                None => vec!["docker".into(), "docker.slice".into()],
            };
            for (_, path) in &facts.containers {
                if let Some(parent) = parent_of_container(path) {
                    if !parent.is_empty() && !parents.contains(&parent) {
                        parents.push(parent);
                    }
                }
            }
            parents
        }
    };
    let uncovered: Vec<String> = facts
        .containers
        .iter()
        .filter(|(_, path)| {
            !matches!(classify_path(path), CgroupKind::Container(_))
                || !parents.iter().any(|parent| is_below(path, parent))
        })
        .map(|(name, path)| format!("{name} in {path}"))
        .collect();
    if !uncovered.is_empty() {
        return Err(LayoutError::Uncovered {
            parents: parents.join(","),
            found: uncovered.join(", "),
        });
    }
    Ok(parents)
}

/// The directory a container's cgroup sits in: `docker` for `/docker/<id>`, `system.slice`
/// for `/system.slice/docker-<id>.scope`.
fn parent_of_container(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let at = (0..segments.len()).position(|i| names_container(&segments, i).is_some())?;
    Some(segments[..at].join("/"))
}

/// Whether `path` is strictly below the directory `parent` (both relative to the root).
fn is_below(path: &str, parent: &str) -> bool {
    let parent = parent.trim_matches('/');
    path.trim_start_matches('/')
        .strip_prefix(parent)
        .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    #[test]
    fn container_ids_from_every_driver_layout() {
        let cases = [
            (format!("/docker/{ID}"), Some(ID)),
            (format!("/docker/{ID}/nested/child"), Some(ID)),
            (format!("/system.slice/docker-{ID}.scope"), Some(ID)),
            (format!("/docker.slice/docker-{ID}.scope"), Some(ID)),
            (format!("/kubepods.slice/docker-{ID}.scope/sub"), Some(ID)),
            ("/system.slice/sshd.service".to_string(), None),
            ("/user.slice/user-0.slice/session-1.scope".to_string(), None),
            ("/".to_string(), None),
            (format!("/other/{ID}"), None),
            (format!("/docker/{}", &ID[..63]), None),
            (format!("/docker/{}", ID.to_uppercase()), None),
        ];
        for (path, want) in cases {
            assert_eq!(container_id_from_path(&path).as_deref(), want, "{path}");
        }
    }

    /// Podman 4.3's paths: the cgroupfs one as read from `/proc/<pid>/cgroup` of a container
    /// of `podman system service --cgroup-manager cgroupfs` on the test machine, the systemd
    /// ones as shared/design/host-layouts.md records them from RHEL 9 hosts.
    #[test]
    fn podman_container_cgroups() {
        const REAL: &str = "a2f025ad81bcd70ae339a52e1f481a272f267efca1d22b26d8fbf4e7fdf7498f";
        let pod = "3c1f5ee3a1e0d5b0b1bd8f87c6d2b7e1a7e8a5f0c6f1a7e9c2b3d4e5f6a7b8c9";
        let containers = [
            (format!("/libpod_parent/libpod-{REAL}"), REAL),
            (format!("/libpod_parent/libpod-{ID}/sub"), ID),
            (format!("/machine.slice/libpod-{ID}.scope"), ID),
            (format!("/machine.slice/libpod-{ID}.scope/container"), ID),
            (
                format!("/machine.slice/machine-libpod_pod_{pod}.slice/libpod-{ID}.scope"),
                ID,
            ),
        ];
        for (path, id) in &containers {
            assert_eq!(container_id_from_path(path).as_deref(), Some(*id), "{path}");
            assert_eq!(classify_path(path), CgroupKind::Container(id.to_string()));
            assert!(is_podman_container_path(path), "{path}");
        }
        // conmon's scope, a pod's slice and its infra-less parent are no container.
        for path in [
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/machine.slice/machine-libpod_pod_{pod}.slice"),
            "/libpod_parent".to_string(),
            format!("/libpod_parent/conmon-{ID}"),
            format!("/other/libpod-{ID}"),
        ] {
            assert_eq!(container_id_from_path(&path), None, "{path}");
            assert!(!is_podman_container_path(&path), "{path}");
        }
        assert!(!is_podman_container_path(&format!("/docker/{ID}")));
        // A process in a child cgroup gives the container's own.
        assert_eq!(
            container_cgroup_in_path(&format!("/libpod_parent/libpod-{ID}/sub"), ID).as_deref(),
            Some(format!("/libpod_parent/libpod-{ID}").as_str())
        );
        assert_eq!(
            container_cgroup_in_path(&format!("/machine.slice/libpod-{ID}.scope"), ID).as_deref(),
            Some(format!("/machine.slice/libpod-{ID}.scope").as_str())
        );
        // The layouts under a parent.
        let root = std::env::temp_dir().join(format!("mp-cgroup-podman-{}", std::process::id()));
        let dir = root.join("libpod_parent").join(format!("libpod-{ID}"));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            container_cgroup_by_layout(&root, &["libpod_parent".into()], ID),
            Some(cgroup_id(&dir).unwrap())
        );
        let scope = root
            .join("machine.slice")
            .join(format!("libpod-{ID}.scope"));
        std::fs::create_dir_all(&scope).unwrap();
        assert_eq!(
            container_cgroup_by_layout(&root, &["machine.slice".into()], ID),
            Some(cgroup_id(&scope).unwrap())
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn ebpf_mode_refuses_podman_by_its_name_or_its_cgroups() {
        let podman = LayoutFacts {
            driver: Some("cgroupfs".into()),
            engine: Some("Podman Engine".into()),
            ..LayoutFacts::default()
        };
        let err = container_parents(None, &podman).unwrap_err();
        assert!(matches!(err, LayoutError::Podman { .. }));
        let message = err.to_string();
        for needle in ["Podman", "INTERCEPT=none", "podman+", "libpod"] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
        // Even with the parents configured.
        assert!(container_parents(Some(&["libpod_parent".into()]), &podman).is_err());
        let by_cgroup = LayoutFacts {
            driver: Some("systemd".into()),
            containers: vec![("web".into(), format!("/machine.slice/libpod-{ID}.scope"))],
            ..LayoutFacts::default()
        };
        let message = container_parents(None, &by_cgroup).unwrap_err().to_string();
        assert!(
            message.contains("container web is in /machine.slice/libpod-"),
            "{message}"
        );
        // Docker, saying who it is, is not refused.
        let docker = LayoutFacts {
            driver: Some("cgroupfs".into()),
            engine: Some("Engine".into()),
            containers: vec![("web".into(), format!("/docker/{ID}"))],
            ..LayoutFacts::default()
        };
        assert_eq!(container_parents(None, &docker).unwrap(), ["docker"]);
    }

    #[test]
    fn cgroup2_root_on_hybrid_and_pure_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert_eq!(
            cgroup2_root_from_mounts(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert_eq!(
            cgroup2_root_from_mounts(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_root_from_mounts("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn walk_finds_a_container_directory_by_inode() {
        let root = std::env::temp_dir().join(format!("mp-cgroup-walk-{}", std::process::id()));
        let dir = root.join("docker").join(ID);
        std::fs::create_dir_all(dir.join("nested")).unwrap();
        let id = cgroup_id(&dir).unwrap();
        let parents = ["docker".to_string()];
        assert_eq!(
            find_container_by_cgroup_id(&root, &parents, &[1, id]),
            Some((id, ID.to_string()))
        );
        assert_eq!(find_container_by_cgroup_id(&root, &parents, &[1]), None);
        // Only the configured parents are searched.
        assert_eq!(
            find_container_by_cgroup_id(&root, &["other".into()], &[id]),
            None
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cgroups_classified_from_real_world_paths() {
        use CgroupKind::*;
        let c = || Container(ID.to_string());
        let cases = [
            (format!("/docker/{ID}"), c()),
            (format!("/system.slice/docker-{ID}.scope"), c()),
            (format!("/system.slice/docker-{ID}.scope/init"), c()),
            (format!("/docker.slice/docker-{ID}.scope"), c()),
            (format!("/a.slice/a-b.slice/docker-{ID}.scope"), c()),
            ("/system.slice/sshd.service".into(), HostService),
            ("/system.slice/docker.service".into(), HostService),
            ("/system.slice/containerd.service".into(), HostService),
            ("/system.slice/amazon-ssm-agent.service".into(), HostService),
            (
                "/system.slice/snap.amazon-ssm-agent.amazon-ssm-agent.service".into(),
                HostService,
            ),
            (
                "/system.slice/system-getty.slice/getty@tty1.service".into(),
                HostService,
            ),
            (
                "/system.slice/system-serial\\x2dgetty.slice/serial-getty@ttyS0.service".into(),
                HostService,
            ),
            ("/system.slice/cloud-init.service/sub".into(), HostService),
            ("/system.slice/metadataproxy.service".into(), HostService),
            ("/system.slice/libpod-abc.scope".into(), Unknown),
            (format!("/machine.slice/libpod-{ID}.scope"), c()),
            (format!("/libpod_parent/libpod-{ID}"), c()),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), Unknown),
            ("/system.slice/run-r1234.scope".into(), Unknown),
            ("/user.slice/user-0.slice/session-1.scope".into(), Unknown),
            (
                "/user.slice/user-1000.slice/user@1000.service".into(),
                HostService,
            ),
            ("/init.scope".into(), Unknown),
            ("/".into(), Unknown),
            ("/sshd.service".into(), Unknown),
            ("/system.slice/.service".into(), Unknown),
            ("/system.slice/x y.service".into(), Unknown),
            (format!("/other/{ID}"), Unknown),
        ];
        for (path, want) in cases {
            assert_eq!(classify_path(&path), want, "{path}");
        }
    }

    #[test]
    fn container_parents_from_the_driver_and_the_containers() {
        let facts = |driver: Option<&str>, systemd: bool, paths: &[&str]| LayoutFacts {
            driver: driver.map(str::to_string),
            systemd_init: systemd,
            containers: paths
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("c{i}"), p.to_string()))
                .collect(),
            engine: None,
        };
        let systemd = format!("/system.slice/docker-{ID}.scope");
        let cgroupfs = format!("/docker/{ID}");
        let nested = format!("/a.slice/a-b.slice/docker-{ID}.scope");
        assert_eq!(
            container_parents(None, &facts(Some("cgroupfs"), true, &[&cgroupfs])).unwrap(),
            ["docker"]
        );
        assert_eq!(
            container_parents(None, &facts(Some("systemd"), true, &[&systemd, &nested])).unwrap(),
            ["system.slice", "docker.slice", "a.slice/a-b.slice"]
        );
        // Docker not up yet (boot): every default place.
        assert_eq!(
            container_parents(None, &facts(None, true, &[])).unwrap(),
            ["docker", "docker.slice", "system.slice"]
        );
        assert_eq!(
            container_parents(None, &facts(None, false, &[])).unwrap(),
            ["docker", "docker.slice"]
        );
        // An explicit list that misses where containers are: refused, naming them.
        let old_default = ["docker".to_string(), "docker.slice".to_string()];
        let err = container_parents(
            Some(&old_default),
            &facts(Some("systemd"), true, &[&systemd]),
        )
        .unwrap_err();
        assert!(err.to_string().contains(&systemd), "{err}");
        // A container in a cgroup of no known shape (a custom cgroupfs parent).
        let odd = format!("/mycustom/{ID}");
        let err = container_parents(None, &facts(Some("cgroupfs"), false, &[&odd])).unwrap_err();
        assert!(err.to_string().contains(&odd), "{err}");
        assert!(matches!(
            container_parents(None, &facts(Some("none"), false, &[])),
            Err(LayoutError::UnknownDriver(_))
        ));
    }

    #[test]
    fn a_path_is_found_level_by_level_from_its_ancestors() {
        let root = std::env::temp_dir().join(format!("mp-cgroup-path-{}", std::process::id()));
        let leaf = root.join("system.slice").join("sshd.service");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::create_dir_all(root.join("system.slice").join("other.service")).unwrap();
        let ids = [
            cgroup_id(&root.join("system.slice")).unwrap(),
            cgroup_id(&leaf).unwrap(),
            0,
        ];
        assert_eq!(
            path_of_ancestors(&root, &ids).as_deref(),
            Some("/system.slice/sshd.service")
        );
        assert_eq!(path_of_ancestors(&root, &[0]).as_deref(), Some("/"));
        assert_eq!(path_of_ancestors(&root, &[ids[0], 1]), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_unified_line_of_proc_cgroup_on_hybrid_and_pure_hosts() {
        let hybrid =
            format!("12:pids:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/docker/{ID}\n");
        assert_eq!(
            unified_path(&hybrid),
            Some(format!("/docker/{ID}").as_str())
        );
        let pure = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            unified_path(&pure),
            Some(format!("/system.slice/docker-{ID}.scope").as_str())
        );
        assert_eq!(unified_path("4:memory:/x\n"), None, "cgroup v1 only");
    }

    #[test]
    fn a_containers_own_cgroup_from_its_process_path_in_every_layout() {
        let cases = [
            (format!("/docker/{ID}"), Some(format!("/docker/{ID}"))),
            // A process in a child cgroup of the container (systemd inside, docker exec).
            (
                format!("/docker/{ID}/init.scope"),
                Some(format!("/docker/{ID}")),
            ),
            (
                format!("/system.slice/docker-{ID}.scope"),
                Some(format!("/system.slice/docker-{ID}.scope")),
            ),
            (
                format!("/a.slice/a-b.slice/docker-{ID}.scope/sub/deeper"),
                Some(format!("/a.slice/a-b.slice/docker-{ID}.scope")),
            ),
            (
                format!("/custom-parent/{ID}"),
                Some(format!("/custom-parent/{ID}")),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                Some(format!("/machine.slice/libpod-{ID}.scope")),
            ),
            // Another container's path (a reused pid, another pid namespace): not this one.
            (format!("/docker/{}", "a".repeat(64)), None),
            ("/system.slice/sshd.service".to_string(), None),
            ("/".to_string(), None),
            // Outside the reader's cgroup namespace.
            (format!("/../docker/{ID}"), None),
            (format!("/docker/x{ID}"), None),
            (format!("/docker/docker{ID}.scope"), None),
        ];
        for (path, want) in cases {
            assert_eq!(container_cgroup_in_path(&path, ID), want, "{path}");
        }
        assert_eq!(container_cgroup_in_path("/docker/abc", "abc"), None);
    }

    #[test]
    fn layout_finds_the_cgroupfs_and_systemd_directories() {
        let root = std::env::temp_dir().join(format!("mp-cgroup-layout-{}", std::process::id()));
        let other = "b".repeat(64);
        let cgroupfs = root.join("docker").join(ID);
        let systemd = root
            .join("system.slice")
            .join(format!("docker-{other}.scope"));
        std::fs::create_dir_all(&cgroupfs).unwrap();
        std::fs::create_dir_all(&systemd).unwrap();
        let parents = ["docker".to_string(), "system.slice".to_string()];
        assert_eq!(
            container_cgroup_by_layout(&root, &parents, ID),
            Some(cgroup_id(&cgroupfs).unwrap())
        );
        assert_eq!(
            container_cgroup_by_layout(&root, &parents, &other),
            Some(cgroup_id(&systemd).unwrap())
        );
        assert_eq!(container_cgroup_by_layout(&root, &parents[1..], ID), None);
        assert_eq!(
            container_cgroup_by_layout(&root, &parents, &"c".repeat(64)),
            None
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
