//! eBPF mode's settings (`EBPF_*`).

/// eBPF mode settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfConfig {
    /// cgroup2 directory to attach to (`EBPF_CGROUP_PATH`); `None`: the cgroup2 mount.
    pub cgroup_path: Option<std::path::PathBuf>,
    /// bpffs pin directory (`EBPF_PIN_PATH`).
    pub pin_path: std::path::PathBuf,
    /// Redirect target (`EBPF_REDIRECT_ADDR`); `None`: docker0's address.
    pub redirect_addr: Option<std::net::Ipv4Addr>,
    /// Container parent cgroups (`EBPF_CONTAINER_CGROUPS`); `None`: `auto`, settled at start-up
    /// by `identity::cgroup::container_parents`.
    pub container_cgroups: Option<Vec<String>>,
    /// Clean-shutdown policy (`EBPF_ON_SHUTDOWN`).
    pub on_shutdown: OnShutdown,
}

/// What a clean shutdown does with the kernel programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    /// Leave them attached: fail closed.
    Keep,
    /// Detach and unpin them.
    Detach,
}
