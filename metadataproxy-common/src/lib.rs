//! Types and constants shared by the userspace agent and the kernel program.
//!
//! `#![no_std]` so the kernel program can use it. Every map key and value is `#[repr(C)]` with
//! explicit padding, so both sides agree on the layout byte for byte. The `user` feature adds
//! `aya::Pod` for the agent.
#![no_std]

/// The address every EC2 instance reaches its metadata service at, in network byte order as
/// `bpf_sock_addr.user_ip4` holds it (the bytes 169.254.169.254 in memory order).
pub const METADATA_IPV4_BE: u32 = u32::from_ne_bytes([169, 254, 169, 254]);
/// The port of the metadata service, in network byte order as `bpf_sock_addr.user_port`
/// holds it.
pub const METADATA_PORT_BE: u32 = (80u16.to_be()) as u32;

/// The container credentials endpoint's address (`169.254.170.2`), in network byte order as
/// `bpf_sock_addr.user_ip4` holds it. Its port is the metadata service's, 80.
pub const CONTAINER_ENDPOINT_IPV4_BE: u32 = u32::from_ne_bytes([169, 254, 170, 2]);

/// Deepest cgroup level the kernel program inspects for container parents.
pub const MAX_CGROUP_LEVEL: usize = 6;

/// Map names, as the loader finds them in the object.
pub mod maps {
    /// [`super::Config`], one entry at index 0.
    pub const CONFIG: &str = "MP_CONFIG";
    /// cgroup id of a directory whose descendants are containers → 1.
    pub const CONTAINER_PARENTS: &str = "MP_CONTAINER_PARENTS";
    /// socket cookie → [`super::ConnRecord`], written by connect4, read by sockops.
    pub const SOCKETS: &str = "MP_SOCKETS";
    /// [`super::ConnKey`] → [`super::ConnRecord`], written by sockops, read by the agent.
    pub const CONNECTIONS: &str = "MP_CONNECTIONS";
}

/// The kernel program's log events (aya-log): their target, which the agent's `tracing` output
/// keeps (`LOG_LEVEL=debug`).
pub const LOG_TARGET: &str = "metadataproxy::kernel";

/// Program names, as the loader finds them in the object.
pub mod programs {
    /// The `cgroup/connect4` program.
    pub const CONNECT4: &str = "mp_connect4";
    /// The `cgroup/connect6` program.
    pub const CONNECT6: &str = "mp_connect6";
    /// The `sockops` program.
    pub const SOCKOPS: &str = "mp_sockops";
}

/// Settings the agent writes for the kernel program.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    /// Where redirected connects go: IPv4 in network byte order (as `user_ip4`).
    pub redirect_ip4: u32,
    /// Where redirected connects go: port in network byte order, widened (as `user_port`).
    pub redirect_port: u32,
    /// The agent's port in host byte order.
    pub agent_port: u32,
    /// The agent's process id (init namespace): its own connects are never redirected.
    pub agent_tgid: u32,
    /// The agent's cgroup id: with `agent_tgid`, identifies the agent (a reused pid alone
    /// does not).
    pub agent_cgroup: u64,
    /// 1 when the agent has written a valid configuration.
    pub enabled: u32,
    /// Where redirected connects to the container credentials endpoint go (at
    /// `redirect_ip4`): port in network byte order, widened; 0 when the endpoint is off and
    /// its address is never intercepted.
    pub container_port: u32,
}

/// A TCP connection as both ends see it: the client's address and port and the server's.
/// Addresses in network byte order, ports in host byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ConnKey {
    /// Client IPv4, network byte order.
    pub client_ip4: u32,
    /// Server IPv4, network byte order.
    pub server_ip4: u32,
    /// Client port, host byte order.
    pub client_port: u16,
    /// Server port, host byte order.
    pub server_port: u16,
}

/// Who made a connection, recorded in process context at `connect()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnRecord {
    /// cgroup (v2) id of the connecting process.
    pub cgroup_id: u64,
    /// Its ancestors' ids at levels 1..=MAX_CGROUP_LEVEL (0 where the level does not exist).
    pub ancestors: [u64; MAX_CGROUP_LEVEL],
    /// Network namespace cookie of the socket.
    pub netns_cookie: u64,
    /// `bpf_ktime_get_ns()` at connect (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Process id (init namespace) of the connecting process.
    pub tgid: u32,
    /// 1 when the connect was redirected from the metadata address.
    pub redirected: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data: `#[repr(C)]`, only integer fields, no implicit padding (the
    // sizes are asserted below), and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnRecord {}
}

const _: () = assert!(core::mem::size_of::<Config>() == 32);
const _: () = assert!(core::mem::size_of::<ConnKey>() == 12);
const _: () = assert!(core::mem::size_of::<ConnRecord>() == 8 * (3 + MAX_CGROUP_LEVEL) + 8);
