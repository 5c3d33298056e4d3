//! eBPF mode: the only module that names aya. Loads the kernel programs shipped in
//! `metadataproxy/ebpf/metadataproxy.bpf.o`, attaches them to the cgroup2 hierarchy, pins them
//! in bpffs so containers stay redirected (fail closed) while the agent is down, and reads the
//! kernel's connection records.
//!
//! Takeover: a restarted agent reuses the pinned maps, attaches its programs, and only then
//! unpins the previous agent's links, so there is never a moment without a redirect and never
//! more than one attachment once start-up is done.
//!
//! At `LOG_LEVEL=debug` the kernel program's own events are logged too ([`kernel_log`]).

mod kernel_log;
mod settings;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{Array, HashMap, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use metadataproxy_common::{maps, programs, Config, ConnKey, ConnRecord};

use crate::identity::cgroup::{
    cgroup_id, classify_path, detect_cgroup2_root, path_of_ancestors, CgroupKind,
};
use crate::identity::kernel::{is_fresh, monotonic_ns, CgroupResolver, KernelIdentity};
pub use settings::{EbpfConfig, OnShutdown};

/// The kernel object, built by `cargo xtask build-ebpf` and checked against the source in CI.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/ebpf/metadataproxy.bpf.o"
));

/// Pinned maps live in a directory named after their layout: a change to the shared types
/// bumps it, so an agent never reuses maps of another layout.
const MAPS_DIR: &str = "maps-v1";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Why eBPF mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// No cgroup2 hierarchy to attach to.
    #[error("no cgroup2 mount found; set EBPF_CGROUP_PATH")]
    NoCgroup2,
    /// No redirect address.
    #[error("no IPv4 address on docker0 to redirect to; set EBPF_REDIRECT_ADDR")]
    NoRedirectAddress,
    /// The listener does not cover the redirect address.
    #[error("the agent listens on {listen} but EBPF_REDIRECT_ADDR is {redirect}: listen on 0.0.0.0 or on the redirect address")]
    NotListening {
        /// The listen address.
        listen: IpAddr,
        /// The redirect address.
        redirect: Ipv4Addr,
    },
    /// A filesystem step failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The pin directory is not on a bpffs.
    #[error("{0} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpfFs(PathBuf),
    /// Where containers live could not be settled (see `identity::cgroup::container_parents`).
    #[error(transparent)]
    Layout(#[from] crate::identity::cgroup::LayoutError),
    /// Loading, configuring or pinning failed (permissions, kernel support).
    #[error("{what}: {} ({KERNEL_NEEDS})", chain(.source.as_ref()))]
    Kernel {
        /// The step.
        what: &'static str,
        /// The error (aya's, or the kernel's errno).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A kernel program could not be loaded or attached to the cgroup.
    #[error("attach a kernel program: {program}: {} ({KERNEL_NEEDS})", chain(.source))]
    Attach {
        /// The program.
        program: &'static str,
        /// The error.
        source: AttachError,
    },
}

/// What eBPF mode needs of the host: said with every kernel failure.
const KERNEL_NEEDS: &str =
    "eBPF mode needs root or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN, cgroup2 and BPF link support";

/// Why a program could not be loaded, attached, or its link kept.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Loading or attaching the program.
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    /// Turning its attachment into a link that outlives the agent.
    #[error(transparent)]
    Link(#[from] aya::programs::links::LinkError),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> EbpfError + 'a {
    move |source| EbpfError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn kernel<E>(what: &'static str) -> impl FnOnce(E) -> EbpfError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| EbpfError::Kernel {
        what,
        source: Box::new(e),
    }
}

/// `error` and its sources, joined by `: `: aya keeps the kernel's reason (the errno) in a
/// source, and the message is all an operator sees.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let texts: Vec<String> = anyhow::Chain::new(error).map(|e| e.to_string()).collect();
    texts.join(": ")
}

/// The attached kernel programs and the agent's handle on their connection records.
#[derive(Debug)]
pub struct KernelRedirect {
    /// The kernel's settings, and what was last written there.
    config: Mutex<ConfigMap>,
    /// Started before docker0 had an address: the redirect is written in once it has one.
    awaiting_docker0: std::sync::atomic::AtomicBool,
    connections: Mutex<HashMap<MapData, ConnKey, ConnRecord>>,
    parents: Mutex<HashMap<MapData, u64, u8>>,
    cgroup_root: PathBuf,
    parent_dirs: Vec<String>,
    resolver: CgroupResolver,
    pin_dir: PathBuf,
    on_shutdown: OnShutdown,
    /// What each connecting cgroup is (by cgroup id): cgroups live as long as their
    /// container or service, so a path is walked once per cgroup.
    kinds: moka::sync::Cache<u64, CgroupKind>,
    /// Where containers' metadata connects go (at start-up: loopback until docker0 has an
    /// address, see [`KernelRedirect::follow_docker0`]).
    pub redirect: SocketAddr,
    /// The cgroup2 directory the programs are attached to.
    pub cgroup: PathBuf,
}

/// The kernel's settings map and the value last written to it.
struct ConfigMap(Array<MapData, Config>, Config);

impl std::fmt::Debug for ConfigMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConfigMap").field(&self.1).finish()
    }
}

impl KernelRedirect {
    /// Loads, configures, attaches and pins the programs, taking over from a previous agent;
    /// `container_parents` are the directories whose descendants are redirected (see
    /// [`container_parents`](crate::identity::cgroup::container_parents)).
    pub fn install(
        cfg: &EbpfConfig,
        container_parents: &[String],
        listen: SocketAddr,
        container_listen: Option<SocketAddr>,
    ) -> Result<KernelRedirect, EbpfError> {
        let cgroup_root = detect_cgroup2_root().ok_or(EbpfError::NoCgroup2)?;
        let attach_to = cfg
            .cgroup_path
            .clone()
            .unwrap_or_else(|| cgroup_root.clone());
        // Before Docker (at boot, the agent ordered before it) docker0 does not exist yet:
        // the programs attach all the same, pointing containers at the loopback address of
        // their own network namespace (refused: fail closed) until docker0 has an address,
        // which `follow_docker0` then writes in. No container runs before Docker anyway.
        let (redirect_ip, awaiting_docker0) = match cfg.redirect_addr {
            Some(ip) => (ip, false),
            None => match interface_ipv4("docker0") {
                Some(ip) => (ip, false),
                None if listen.ip().is_unspecified() => (Ipv4Addr::LOCALHOST, true),
                None => return Err(EbpfError::NoRedirectAddress),
            },
        };
        if !listen.ip().is_unspecified() && listen.ip() != IpAddr::V4(redirect_ip) {
            return Err(EbpfError::NotListening {
                listen: listen.ip(),
                redirect: redirect_ip,
            });
        }
        let redirect = SocketAddr::new(IpAddr::V4(redirect_ip), listen.port());

        ensure_bpffs(&cfg.pin_path)?;
        let maps_dir = cfg.pin_path.join(MAPS_DIR);
        std::fs::create_dir_all(&maps_dir).map_err(io("create", &maps_dir))?;

        let parents = parent_ids(&cgroup_root, container_parents)?;
        let own_cgroup = own_cgroup_id(&cgroup_root)?;

        let map_names = [
            maps::CONFIG,
            maps::CONTAINER_PARENTS,
            maps::SOCKETS,
            maps::CONNECTIONS,
        ];
        let pins: Vec<PathBuf> = map_names.iter().map(|n| maps_dir.join(n)).collect();
        let log_level = kernel_log::level();
        let mut loader = EbpfLoader::new();
        for (name, pin) in map_names.iter().zip(&pins) {
            loader.map_pin_path(name, pin.as_path());
        }
        kernel_log::set_level(&mut loader, &log_level);
        let mut bpf = loader
            .load(OBJECT)
            .map_err(kernel("load the kernel object"))?;
        if log_level != 0 {
            kernel_log::forward(&mut bpf);
        }

        let mut parents_map: HashMap<MapData, u64, u8> = HashMap::try_from(
            bpf.take_map(maps::CONTAINER_PARENTS)
                .expect("map in object"),
        )
        .map_err(kernel("open the container parents map"))?;
        sync_parents(&mut parents_map, &parents)
            .map_err(kernel("write the container parents map"))?;
        let mut config_map: Array<MapData, Config> =
            Array::try_from(bpf.take_map(maps::CONFIG).expect("map in object"))
                .map_err(kernel("open the config map"))?;
        let config = Config {
            redirect_ip4: u32::from_ne_bytes(redirect_ip.octets()),
            redirect_port: u32::from(listen.port().to_be()),
            agent_port: u32::from(listen.port()),
            agent_tgid: std::process::id(),
            agent_cgroup: own_cgroup,
            enabled: 1,
            container_port: container_listen.map_or(0, |a| u32::from(a.port().to_be())),
        };
        config_map
            .set(0, config, 0)
            .map_err(kernel("write the config map"))?;

        let cgroup_dir = std::fs::File::open(&attach_to).map_err(io("open cgroup", &attach_to))?;
        attach_pinned::<CgroupSockAddr>(&mut bpf, programs::CONNECT4, &cgroup_dir, &cfg.pin_path)?;
        attach_pinned::<CgroupSockAddr>(&mut bpf, programs::CONNECT6, &cgroup_dir, &cfg.pin_path)?;
        attach_pinned::<SockOps>(&mut bpf, programs::SOCKOPS, &cgroup_dir, &cfg.pin_path)?;

        let connections =
            HashMap::try_from(bpf.take_map(maps::CONNECTIONS).expect("map in object"))
                .map_err(kernel("open the connections map"))?;
        tracing::info!(
            cgroup = %attach_to.display(),
            redirect = %redirect,
            container_endpoint = container_listen.map(|a| a.port()),
            pin_path = %cfg.pin_path.display(),
            container_parents = %container_parents.join(","),
            "eBPF redirect attached"
        );
        if awaiting_docker0 {
            tracing::warn!(
                "docker0 has no IPv4 address yet (Docker not started): containers' metadata connects are refused until it has one, then redirected to it"
            );
        }
        for dir in container_parents {
            if !cgroup_root.join(dir).is_dir() {
                tracing::warn!(
                    cgroup = %cgroup_root.join(dir).display(),
                    "container parent cgroup does not exist yet: containers under it are redirected once it appears (checked every 2 s)"
                );
            }
        }
        Ok(KernelRedirect {
            config: Mutex::new(ConfigMap(config_map, config)),
            awaiting_docker0: std::sync::atomic::AtomicBool::new(awaiting_docker0),
            connections: Mutex::new(connections),
            parents: Mutex::new(parents_map),
            cgroup_root: cgroup_root.clone(),
            parent_dirs: container_parents.to_vec(),
            resolver: CgroupResolver::new(cgroup_root, container_parents.to_vec()),
            kinds: moka::sync::Cache::builder()
                .max_capacity(KNOWN_CGROUPS)
                .time_to_idle(std::time::Duration::from_secs(600))
                .build(),
            pin_dir: cfg.pin_path.clone(),
            on_shutdown: cfg.on_shutdown,
            redirect,
            cgroup: attach_to,
        })
    }

    /// Re-reads the container parent cgroups (a systemd slice created by the first container,
    /// a parent deleted and recreated) and updates the kernel's map. Returns how many parents
    /// it now holds.
    pub fn refresh_parents(&self) -> usize {
        let ids = container_parent_ids(&self.cgroup_root, &self.parent_dirs);
        let mut map = self.parents.lock().expect("parents map lock");
        let before: Vec<u64> = map.keys().filter_map(Result::ok).collect();
        if let Err(e) = sync_parents(&mut map, &ids) {
            tracing::error!(error = %e, "could not update the container parents map");
        }
        for id in ids.iter().filter(|id| !before.contains(id)) {
            tracing::info!(
                cgroup_id = id,
                "container parent cgroup appeared: containers under it are redirected"
            );
        }
        ids.len()
    }

    /// Started before Docker: once docker0 has an IPv4 address, makes it the redirect target.
    /// Returns whether the agent is still waiting for it.
    pub fn follow_docker0(&self) -> bool {
        use std::sync::atomic::Ordering;
        if !self.awaiting_docker0.load(Ordering::Relaxed) {
            return false;
        }
        let Some(ip) = interface_ipv4("docker0") else {
            return true;
        };
        let mut guard = self.config.lock().expect("config map lock");
        let ConfigMap(map, config) = &mut *guard;
        let mut updated = *config;
        updated.redirect_ip4 = u32::from_ne_bytes(ip.octets());
        if let Err(e) = map.set(0, updated, 0) {
            tracing::error!(error = %e, "could not write docker0's address in the config map");
            return true;
        }
        *config = updated;
        self.awaiting_docker0.store(false, Ordering::Relaxed);
        tracing::info!(
            redirect = %SocketAddr::new(IpAddr::V4(ip), self.redirect.port()),
            "docker0 has an address: containers' metadata connects are redirected to it"
        );
        false
    }

    /// Whether each program still has a pinned link (a newer agent's takeover counts: the
    /// redirect stays in place).
    pub fn is_attached(&self) -> bool {
        [programs::CONNECT4, programs::CONNECT6, programs::SOCKOPS]
            .iter()
            .all(|p| link_pins(&self.pin_dir, p).iter().any(|pin| pin.exists()))
    }

    /// Applies the clean-shutdown policy: keep (fail closed) or detach and unpin everything.
    pub fn shutdown(&self) {
        match self.on_shutdown {
            OnShutdown::Keep => tracing::info!(
                pin_path = %self.pin_dir.display(),
                "eBPF redirect stays attached (EBPF_ON_SHUTDOWN=keep): containers' metadata connects are refused until the agent is back"
            ),
            OnShutdown::Detach => match detach(&self.pin_dir) {
                Ok(()) => tracing::info!("eBPF redirect detached and unpinned"),
                Err(e) => tracing::error!(error = %e, "could not detach the eBPF redirect"),
            },
        }
    }
}

/// Detaches and unpins everything under `pin_dir` (links and maps).
pub fn detach(pin_dir: &Path) -> std::io::Result<()> {
    for program in [programs::CONNECT4, programs::CONNECT6, programs::SOCKOPS] {
        for pin in link_pins(pin_dir, program) {
            if let Ok(link) = PinnedLink::from_pin(&pin) {
                drop(link.unpin()?);
            }
        }
    }
    match std::fs::remove_dir_all(pin_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The link pins under `pin_dir`: an eBPF-mode agent's programs, which stay attached as long
/// as these exist (a leftover when no eBPF-mode agent runs).
pub fn pinned_links(pin_dir: &Path) -> Vec<PathBuf> {
    [programs::CONNECT4, programs::CONNECT6, programs::SOCKOPS]
        .iter()
        .flat_map(|p| link_pins(pin_dir, p))
        .filter(|pin| pin.exists())
        .collect()
}

/// `metadataproxy ebpf detach`: detaches and unpins what an earlier agent left under
/// `pin_dir`. Returns the link pins it removed, `None` when there was no pin directory.
/// Refuses a directory that is not on a bpffs (a mistyped path is never deleted).
pub fn remove_pins(pin_dir: &Path) -> Result<Option<Vec<PathBuf>>, EbpfError> {
    if !pin_dir.exists() {
        return Ok(None);
    }
    if !on_bpffs(pin_dir) {
        return Err(EbpfError::NotBpfFs(pin_dir.to_path_buf()));
    }
    let links = pinned_links(pin_dir);
    detach(pin_dir).map_err(io("remove", pin_dir))?;
    Ok(Some(links))
}

fn on_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// The two pin names a program's link alternates between across restarts (bpffs refuses
/// dots in names).
fn link_pins(pin_dir: &Path, program: &str) -> [PathBuf; 2] {
    [
        pin_dir.join(format!("{program}_link_a")),
        pin_dir.join(format!("{program}_link_b")),
    ]
}

trait CgroupProgram: Sized {
    fn load_and_attach(
        program: &mut aya::programs::Program,
        cgroup: &std::fs::File,
    ) -> Result<FdLink, AttachError>;
}

/// Both program kinds load, attach to a cgroup and hand over their link the same way.
macro_rules! cgroup_program {
    ($kind:ty) => {
        impl CgroupProgram for $kind {
            fn load_and_attach(
                program: &mut aya::programs::Program,
                cgroup: &std::fs::File,
            ) -> Result<FdLink, AttachError> {
                let p: &mut $kind = program.try_into()?;
                p.load()?;
                let id = p.attach(cgroup, CgroupAttachMode::Single)?;
                Ok(p.take_link(id)?.try_into()?)
            }
        }
    };
}

cgroup_program!(CgroupSockAddr);
cgroup_program!(SockOps);

/// Attaches `name` (a new link), pins it under the free one of its two pin names, then unpins
/// the previous agent's link: one attachment before, one after, and no gap.
fn attach_pinned<P: CgroupProgram>(
    bpf: &mut Ebpf,
    name: &'static str,
    cgroup: &std::fs::File,
    pin_dir: &Path,
) -> Result<(), EbpfError> {
    let [a, b] = link_pins(pin_dir, name);
    let (new_pin, old_pin) = if a.exists() { (b, a) } else { (a, b) };
    if new_pin.exists() {
        // Both names taken (a crash mid-takeover): drop the one we are about to reuse.
        if let Ok(link) = PinnedLink::from_pin(&new_pin) {
            drop(link.unpin().map_err(io("unpin", &new_pin))?);
        }
    }
    let program = bpf.program_mut(name).expect("program in object");
    let link = P::load_and_attach(program, cgroup).map_err(|source| EbpfError::Attach {
        program: name,
        source,
    })?;
    link.pin(&new_pin).map_err(kernel("pin a link"))?;
    if old_pin.exists() {
        if let Ok(old) = PinnedLink::from_pin(&old_pin) {
            drop(old.unpin().map_err(io("unpin", &old_pin))?);
            tracing::info!(
                program = name,
                "took over from the previous agent's attachment"
            );
        }
    }
    Ok(())
}

impl KernelIdentity for KernelRedirect {
    fn take(&self, client: SocketAddr, server: SocketAddr) -> Option<ConnRecord> {
        let (IpAddr::V4(client_ip), IpAddr::V4(server_ip)) = (
            crate::identity::canonical_ip(client.ip()),
            crate::identity::canonical_ip(server.ip()),
        ) else {
            return None;
        };
        let key = ConnKey {
            client_ip4: u32::from_ne_bytes(client_ip.octets()),
            server_ip4: u32::from_ne_bytes(server_ip.octets()),
            client_port: client.port(),
            server_port: server.port(),
        };
        let mut map = self.connections.lock().expect("connections map lock");
        let record = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        is_fresh(record.ktime_ns, monotonic_ns()).then_some(record)
    }

    fn container_id(&self, record: &ConnRecord) -> Option<String> {
        self.resolver.container_id(record)
    }

    fn container_parents(&self) -> Vec<String> {
        self.parent_dirs.clone()
    }

    fn cached_kind(&self, record: &ConnRecord) -> Option<CgroupKind> {
        self.kinds.get(&record.cgroup_id)
    }

    fn kind(&self, record: &ConnRecord) -> CgroupKind {
        if let Some(kind) = self.kinds.get(&record.cgroup_id) {
            return kind;
        }
        // Deeper than the kernel records (MAX_CGROUP_LEVEL): the path's first levels decide.
        match path_of_ancestors(&self.cgroup_root, &record.ancestors) {
            Some(path) => {
                let kind = classify_path(&path);
                self.kinds.insert(record.cgroup_id, kind.clone());
                kind
            }
            // Gone already: nothing to remember.
            None => CgroupKind::Unknown,
        }
    }
}

/// cgroups whose kind is remembered at most.
const KNOWN_CGROUPS: u64 = 16_384;

/// The first IPv4 address of `name`.
fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        if ifa.interface_name != name {
            return None;
        }
        let addr = ifa.address?;
        addr.as_sockaddr_in().map(|sin| sin.ip())
    })
}

/// Makes sure `pin_path` is on a bpffs, mounting one at /sys/fs/bpf when that is where it
/// should be and nothing is mounted there.
fn ensure_bpffs(pin_path: &Path) -> Result<(), EbpfError> {
    let is_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
            .unwrap_or(false)
    };
    let mut probe = pin_path.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if is_bpffs(&probe) {
        return std::fs::create_dir_all(pin_path).map_err(io("create", pin_path));
    }
    let default = Path::new("/sys/fs/bpf");
    if pin_path.starts_with(default) && default.is_dir() && !is_bpffs(default) {
        nix::mount::mount(
            Some("bpf"),
            default,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(kernel("mount bpffs at /sys/fs/bpf"))?;
        return std::fs::create_dir_all(pin_path).map_err(io("create", pin_path));
    }
    Err(EbpfError::NotBpfFs(pin_path.to_path_buf()))
}

/// The ids of the container parent cgroups; a missing `docker` directory (cgroupfs driver,
/// no container started yet) is created so that its id is known before the first container.
/// (systemd slices are left to systemd.)
fn parent_ids(root: &Path, dirs: &[String]) -> Result<Vec<u64>, EbpfError> {
    for dir in dirs {
        let path = root.join(dir);
        if !path.exists() && !dir.ends_with(".slice") {
            std::fs::create_dir_all(&path).map_err(io("create cgroup", &path))?;
        }
    }
    Ok(container_parent_ids(root, dirs))
}

/// The ids of the container parent cgroups that exist now.
fn container_parent_ids(root: &Path, dirs: &[String]) -> Vec<u64> {
    dirs.iter()
        .filter_map(|dir| cgroup_id(&root.join(dir)).ok())
        .collect()
}

/// Makes the kernel's parents map hold exactly `ids`.
fn sync_parents(
    map: &mut HashMap<MapData, u64, u8>,
    ids: &[u64],
) -> Result<(), aya::maps::MapError> {
    let stale: Vec<u64> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !ids.contains(k))
        .collect();
    for key in stale {
        let _ = map.remove(&key);
    }
    for id in ids {
        map.insert(id, 1, 0)?;
    }
    Ok(())
}

/// The agent's own cgroup id: `0::<path>` in /proc/self/cgroup, under the cgroup2 root.
fn own_cgroup_id(root: &Path) -> Result<u64, EbpfError> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(io("read", Path::new("/proc/self/cgroup")))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    let dir = root.join(rel);
    cgroup_id(&dir).map_err(io("stat cgroup", &dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like aya's syscall errors: the errno is the source, not in the message.
    #[derive(Debug, thiserror::Error)]
    #[error("`bpf_prog_load` failed")]
    struct Syscall(#[source] std::io::Error);

    #[test]
    fn kernel_failures_say_the_errno_and_keep_the_source() {
        let e = kernel("load the kernel object")(Syscall(std::io::Error::from_raw_os_error(
            nix::libc::EPERM,
        )));
        let text = e.to_string();
        assert!(
            text.starts_with("load the kernel object: `bpf_prog_load` failed: ")
                && text.contains("(os error 1)")
                && text.ends_with(&format!("({KERNEL_NEEDS})")),
            "{text}"
        );
        let source = std::error::Error::source(&e).expect("the source is kept");
        assert!(source.downcast_ref::<Syscall>().is_some());
    }
}
