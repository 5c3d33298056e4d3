//! The kernel side of metadataproxy's eBPF mode.
//!
//! `mp_connect4` (`cgroup/connect4`, process context) rewrites TCP connects to
//! `169.254.169.254:80` made by processes in container cgroups to the agent's address, and
//! records who made each connect to the metadata address or to the agent's port, keyed by
//! socket cookie. `mp_sockops` (`TCP_CONNECT_CB`, still in the connecting process, after the
//! source port is chosen) moves that record to a map keyed by the connection's addresses and
//! ports, where the agent reads it when it accepts the connection.
//!
//! Both programs always allow the connect: they only redirect or observe.
#![no_std]
#![no_main]

use aya_ebpf::bindings::BPF_SOCK_OPS_TCP_CONNECT_CB;
use aya_ebpf::helpers::generated::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
    bpf_ktime_get_ns,
};
use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid};
use aya_ebpf::macros::{cgroup_sock_addr, map, sock_ops};
use aya_ebpf::maps::{Array, HashMap, LruHashMap};
use aya_ebpf::programs::{SockAddrContext, SockOpsContext};
use aya_ebpf::EbpfContext;
use metadataproxy_common::{
    Config, ConnKey, ConnRecord, MAX_CGROUP_LEVEL, METADATA_IPV4_BE, METADATA_PORT_BE,
};

const SOCK_STREAM: u32 = 1;
const AF_INET: u32 = 2;

#[map(name = "MP_CONFIG")]
static MP_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "MP_CONTAINER_PARENTS")]
static MP_CONTAINER_PARENTS: HashMap<u64, u8> = HashMap::with_max_entries(64, 0);

#[map(name = "MP_SOCKETS")]
static MP_SOCKETS: LruHashMap<u64, ConnRecord> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "MP_CONNECTIONS")]
static MP_CONNECTIONS: LruHashMap<ConnKey, ConnRecord> = LruHashMap::with_max_entries(65536, 0);

#[cgroup_sock_addr(connect4)]
pub fn mp_connect4(ctx: SockAddrContext) -> i32 {
    try_connect4(&ctx);
    1
}

fn try_connect4(ctx: &SockAddrContext) {
    let Some(config) = MP_CONFIG.get(0) else {
        return;
    };
    if config.enabled == 0 {
        return;
    }
    // SAFETY: the kernel hands the program a valid `bpf_sock_addr` for its whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return;
    }
    let to_metadata = sa.user_ip4 == METADATA_IPV4_BE && sa.user_port == METADATA_PORT_BE;
    let to_agent = u32::from(u16::from_be(sa.user_port as u16)) == config.agent_port;
    if !to_metadata && !to_agent {
        return;
    }
    // SAFETY: argument-less helpers, available in cgroup/connect4 (process context).
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let mut record = ConnRecord {
        cgroup_id,
        tgid,
        ..ConnRecord::default()
    };
    let mut in_container = false;
    let mut level = 0;
    while level < MAX_CGROUP_LEVEL {
        // SAFETY: any level is valid; levels deeper than the cgroup give 0.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id((level + 1) as i32) };
        record.ancestors[level] = ancestor;
        if ancestor != 0
            && ancestor != cgroup_id
            // SAFETY: read-only lookup of a plain value.
            && unsafe { MP_CONTAINER_PARENTS.get(&ancestor) }.is_some()
        {
            in_container = true;
        }
        level += 1;
    }
    if to_metadata {
        let is_agent = tgid == config.agent_tgid && cgroup_id == config.agent_cgroup;
        if is_agent || !in_container {
            // The agent's own upstream calls and host processes reach the real service.
            return;
        }
        sa.user_ip4 = config.redirect_ip4;
        sa.user_port = config.redirect_port;
        record.redirected = 1;
    }
    // SAFETY: the context pointer is what these helpers expect in cgroup/connect4.
    let cookie = unsafe {
        record.netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
        record.ktime_ns = bpf_ktime_get_ns();
        bpf_get_socket_cookie(ctx.as_ptr())
    };
    let _ = MP_SOCKETS.insert(&cookie, &record, 0);
}

#[sock_ops]
pub fn mp_sockops(ctx: SockOpsContext) -> u32 {
    try_sockops(&ctx);
    1
}

fn try_sockops(ctx: &SockOpsContext) {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB || ctx.family() != AF_INET {
        return;
    }
    // SAFETY: the context pointer is what the helper expects in sockops.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(record) = (unsafe { MP_SOCKETS.get(&cookie) }).copied() else {
        return;
    };
    let _ = MP_SOCKETS.remove(&cookie);
    let key = ConnKey {
        client_ip4: ctx.local_ip4(),
        server_ip4: ctx.remote_ip4(),
        client_port: ctx.local_port() as u16,
        // `remote_port` holds the network-order port in its upper half.
        server_port: u16::from_be((ctx.remote_port() >> 16) as u16),
    };
    let _ = MP_CONNECTIONS.insert(&key, &record, 0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
