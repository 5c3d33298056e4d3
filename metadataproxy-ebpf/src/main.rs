//! The kernel side of metadataproxy's eBPF mode.
//!
//! `mp_connect4` (`cgroup/connect4`, process context) rewrites TCP connects to
//! `169.254.169.254:80` (and, when the agent serves it, to the container credentials endpoint
//! `169.254.170.2:80`) made by processes in container cgroups to the agent's address, and
//! records who made each connect to those addresses or to the agent's, keyed by
//! socket cookie. `mp_connect6` does the same for IPv6 sockets connecting to IPv4-mapped
//! addresses (which bypass `connect4`), and refuses containers the IPv6 metadata address. `mp_sockops` (`TCP_CONNECT_CB`, still in the connecting process, after the
//! source port is chosen) moves that record to a map keyed by the connection's addresses and
//! ports, where the agent reads it when it accepts the connection.
//!
//! Both programs always allow the connect: they only redirect or observe.
//!
//! Debug events (aya-log, target [`LOG_TARGET`]): each redirect decision on a connect to the
//! metadata address, each refused IPv6 metadata connect, each failed map insert. The agent sets
//! their level when it loads the object: off unless it logs at debug, and then the verifier,
//! which sees the frozen level as a constant, drops the logging code from the programs.
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
use aya_log_ebpf::debug;
use metadataproxy_common::{
    Config, ConnKey, ConnRecord, CONTAINER_ENDPOINT_IPV4_BE, LOG_TARGET, MAX_CGROUP_LEVEL,
    METADATA_IPV4_BE, METADATA_PORT_BE,
};

const SOCK_STREAM: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[map(name = "MP_CONFIG")]
static MP_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "MP_CONTAINER_PARENTS")]
static MP_CONTAINER_PARENTS: HashMap<u64, u8> = HashMap::with_max_entries(64, 0);

#[map(name = "MP_SOCKETS")]
static MP_SOCKETS: LruHashMap<u64, ConnRecord> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "MP_CONNECTIONS")]
static MP_CONNECTIONS: LruHashMap<ConnKey, ConnRecord> = LruHashMap::with_max_entries(65536, 0);

/// What a connect should become.
enum Verdict {
    /// Not ours: leave it alone.
    Pass,
    /// From a container to the metadata service or the container credentials endpoint: send
    /// it to the agent, at this port (network order, widened).
    Redirect(u32),
    /// To the agent's own address and port: record who made it.
    Record,
}

/// The decision both connect hooks share, on an IPv4 destination (network order).
fn decide(config: &Config, ip4: u32, port: u32, record: &mut ConnRecord) -> Verdict {
    // The agent's port for a connect to the metadata service or (when it is served) the
    // container credentials endpoint.
    let target = if port != METADATA_PORT_BE {
        0
    } else if ip4 == METADATA_IPV4_BE {
        config.redirect_port
    } else if ip4 == CONTAINER_ENDPOINT_IPV4_BE {
        config.container_port
    } else {
        0
    };
    let to_agent = ip4 == config.redirect_ip4
        && (port == config.redirect_port
            || (config.container_port != 0 && port == config.container_port));
    if target == 0 && !to_agent {
        return Verdict::Pass;
    }
    fill(record);
    if target == 0 {
        return Verdict::Record;
    }
    let is_agent = record.tgid == config.agent_tgid && record.cgroup_id == config.agent_cgroup;
    if is_agent || !in_container(record) {
        // The agent's own upstream calls and host processes reach the real service.
        return Verdict::Pass;
    }
    record.redirected = 1;
    Verdict::Redirect(target)
}

/// Who is connecting: process, cgroup and its ancestors (process context).
fn fill(record: &mut ConnRecord) {
    // SAFETY: argument-less helpers, available in cgroup/connect4 and connect6.
    record.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    record.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let mut level = 0;
    while level < MAX_CGROUP_LEVEL {
        // SAFETY: any level is valid; levels deeper than the cgroup give 0.
        record.ancestors[level] = unsafe { bpf_get_current_ancestor_cgroup_id((level + 1) as i32) };
        level += 1;
    }
}

/// Whether the connecting process sits strictly below a container parent cgroup.
fn in_container(record: &ConnRecord) -> bool {
    let mut level = 0;
    while level < MAX_CGROUP_LEVEL {
        let ancestor = record.ancestors[level];
        if ancestor != 0
            && ancestor != record.cgroup_id
            // SAFETY: read-only lookup of a plain value.
            && unsafe { MP_CONTAINER_PARENTS.get(&ancestor) }.is_some()
        {
            return true;
        }
        level += 1;
    }
    false
}

/// Keeps the record for sockops, keyed by socket cookie.
fn remember(ctx: &SockAddrContext, record: &mut ConnRecord) {
    // SAFETY: the context pointer is what these helpers expect in cgroup/connect*.
    let cookie = unsafe {
        record.netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
        record.ktime_ns = bpf_ktime_get_ns();
        bpf_get_socket_cookie(ctx.as_ptr())
    };
    if let Err(errno) = MP_SOCKETS.insert(&cookie, &*record, 0) {
        log_insert_failed(ctx, "MP_SOCKETS", errno, record);
    }
}

#[cgroup_sock_addr(connect4)]
pub fn mp_connect4(ctx: SockAddrContext) -> i32 {
    let Some(config) = MP_CONFIG.get(0) else {
        return 1;
    };
    if config.enabled == 0 {
        return 1;
    }
    // SAFETY: the kernel hands the program a valid `bpf_sock_addr` for its whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return 1;
    }
    let mut record = ConnRecord::default();
    let verdict = decide(config, sa.user_ip4, sa.user_port, &mut record);
    log_decision(&ctx, &verdict, &record, sa.user_ip4, sa.user_port, config);
    match verdict {
        Verdict::Pass => {}
        Verdict::Record => remember(&ctx, &mut record),
        Verdict::Redirect(port) => {
            sa.user_ip4 = config.redirect_ip4;
            sa.user_port = port;
            remember(&ctx, &mut record);
        }
    }
    1
}

/// `::ffff:0:0/96`, the IPv4-mapped prefix, as the third word of `user_ip6`.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
/// `fd00:ec2::254`, the metadata service's IPv6 address, as `user_ip6` words.
const METADATA_IPV6: [u32; 4] = [
    u32::from_ne_bytes([0xfd, 0x00, 0x0e, 0xc2]),
    0,
    0,
    u32::from_ne_bytes([0, 0, 0x02, 0x54]),
];

/// IPv6 sockets: an IPv4-mapped destination goes to the IPv4 stack without passing
/// `connect4`, so the same rules apply here; the IPv6 metadata address is refused to
/// containers (there is no IPv6 redirect target).
#[cgroup_sock_addr(connect6)]
pub fn mp_connect6(ctx: SockAddrContext) -> i32 {
    let Some(config) = MP_CONFIG.get(0) else {
        return 1;
    };
    if config.enabled == 0 {
        return 1;
    }
    // SAFETY: the kernel hands the program a valid `bpf_sock_addr` for its whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return 1;
    }
    let ip6 = sa.user_ip6;
    let mut record = ConnRecord::default();
    if ip6 == METADATA_IPV6 && sa.user_port == METADATA_PORT_BE {
        fill(&mut record);
        let is_agent = record.tgid == config.agent_tgid && record.cgroup_id == config.agent_cgroup;
        return if !is_agent && in_container(&record) {
            log_refused_ipv6(&ctx, &record);
            0
        } else {
            1
        };
    }
    if ip6[0] != 0 || ip6[1] != 0 || ip6[2] != V4_MAPPED_WORD {
        return 1;
    }
    let verdict = decide(config, ip6[3], sa.user_port, &mut record);
    log_decision(&ctx, &verdict, &record, ip6[3], sa.user_port, config);
    match verdict {
        Verdict::Pass => {}
        Verdict::Record => remember(&ctx, &mut record),
        Verdict::Redirect(port) => {
            sa.user_ip6[3] = config.redirect_ip4;
            sa.user_port = port;
            remember(&ctx, &mut record);
        }
    }
    1
}

#[sock_ops]
pub fn mp_sockops(ctx: SockOpsContext) -> u32 {
    try_sockops(&ctx);
    1
}

fn try_sockops(ctx: &SockOpsContext) {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return;
    }
    // An IPv6 socket connected to an IPv4-mapped address went through the IPv4 stack, which
    // filled the IPv4 fields; a real IPv6 connection leaves them zero.
    if ctx.family() != AF_INET && ctx.family() != AF_INET6 {
        return;
    }
    let (client_ip4, server_ip4) = (ctx.local_ip4(), ctx.remote_ip4());
    if client_ip4 == 0 || server_ip4 == 0 {
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
        client_ip4,
        server_ip4,
        client_port: ctx.local_port() as u16,
        // `remote_port` holds the network-order port in its upper half.
        server_port: u16::from_be((ctx.remote_port() >> 16) as u16),
    };
    if let Err(errno) = MP_CONNECTIONS.insert(&key, &record, 0) {
        log_insert_failed(ctx, "MP_CONNECTIONS", errno, &record);
    }
}

// Debug events. Each is one aya-log record; with the level off (the agent not at debug) the
// verifier removes them, so they cost nothing per connect.

/// A connect to the metadata address or the container credentials endpoint (`ip4`, `port`:
/// network order, as the socket has them)
/// and what `decide` made of it: redirected to the agent, or passed through (the agent's own
/// call, or a host process). Connects `decide` did not look at say nothing.
#[inline(always)]
fn log_decision<C: EbpfContext>(
    ctx: &C,
    verdict: &Verdict,
    record: &ConnRecord,
    ip4: u32,
    port: u32,
    config: &Config,
) {
    match verdict {
        Verdict::Redirect(to_port) => debug!(
            ctx,
            target: LOG_TARGET,
            "redirect {:i}:{} to {:i}:{} cgroup_id={} pid={}",
            u32::from_be(ip4),
            u16::from_be(port as u16),
            u32::from_be(config.redirect_ip4),
            u16::from_be(*to_port as u16),
            record.cgroup_id,
            record.tgid
        ),
        // `fill` ran: it was a metadata connect, from the agent or from outside containers.
        Verdict::Pass if record.cgroup_id != 0 => debug!(
            ctx,
            target: LOG_TARGET,
            "pass {:i}:{} (agent or host process) cgroup_id={} pid={}",
            u32::from_be(ip4),
            u16::from_be(port as u16),
            record.cgroup_id,
            record.tgid
        ),
        _ => {}
    }
}

/// A container's connect to the IPv6 metadata address, refused.
#[inline(always)]
fn log_refused_ipv6<C: EbpfContext>(ctx: &C, record: &ConnRecord) {
    debug!(
        ctx,
        target: LOG_TARGET,
        "refuse [fd00:ec2::254]:80 cgroup_id={} pid={}",
        record.cgroup_id,
        record.tgid
    );
}

/// A record the agent will not find: `map` refused it (`errno`, negative).
#[inline(always)]
fn log_insert_failed<C: EbpfContext>(ctx: &C, map: &str, errno: i32, record: &ConnRecord) {
    debug!(
        ctx,
        target: LOG_TARGET,
        "insert into {} failed: errno {} cgroup_id={} pid={}",
        map,
        -errno,
        record.cgroup_id,
        record.tgid
    );
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
