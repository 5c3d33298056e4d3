//! cgroup (v2) paths and ids: which container a cgroup belongs to.
//!
//! Docker puts a container's processes in `/docker/<id>` (cgroupfs driver) or
//! `/system.slice/docker-<id>.scope` (systemd driver, also under other slices); a container may
//! create sub-cgroups below its own. A cgroup's id is the inode number of its directory in the
//! cgroup2 mount.

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
    for (i, segment) in segments.iter().enumerate() {
        // systemd driver: a `docker-<id>.scope` unit under any slice.
        if let Some(id) = segment
            .strip_prefix("docker-")
            .and_then(|s| s.strip_suffix(".scope"))
        {
            if is_container_id(id) {
                return Some(id.to_string());
            }
        }
        // cgroupfs driver: `<id>` directly under a `docker` directory.
        if i > 0 && segments[i - 1] == "docker" && is_container_id(segment) {
            return Some((*segment).to_string());
        }
    }
    None
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

/// Finds the container whose cgroup has one of the ids in `ids` (a cgroup and its ancestors),
/// by walking the container parent directories `parents` (relative to `root`).
pub fn find_container_by_cgroup_id(root: &Path, parents: &[String], ids: &[u64]) -> Option<String> {
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
                return Some(id);
            }
        }
    }
    None
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
            find_container_by_cgroup_id(&root, &parents, &[1, id]).as_deref(),
            Some(ID)
        );
        assert_eq!(find_container_by_cgroup_id(&root, &parents, &[1]), None);
        // Only the configured parents are searched.
        assert_eq!(
            find_container_by_cgroup_id(&root, &["other".into()], &[id]),
            None
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
