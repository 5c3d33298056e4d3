//! Self-managed classic interception (`INTERCEPT=iptables`).
//!
//! The agent programs the kernel's netfilter directly over netlink (nf_tables), so the image
//! needs no `iptables` binary. Everything lives in one table of its own, `ip metadataproxy`,
//! which nothing else touches and which is replaced or removed atomically:
//!
//! ```text
//! table ip metadataproxy {
//!   chain prerouting {            # before Docker's own DNAT (priority dstnat - 10)
//!     type nat hook prerouting priority -110; policy accept;
//!     iifname "docker0" ip daddr 169.254.169.254 tcp dport 80 counter redirect to :8000
//!     iifname "br-*"    ip daddr 169.254.169.254 tcp dport 80 counter redirect to :8000
//!   }
//!   chain forward {               # connections opened before the table: reset
//!     type filter hook forward priority -10; policy accept;
//!     iifname "docker0" ip daddr 169.254.169.254 tcp dport 80 counter reject with tcp reset
//!     iifname "br-*"    ip daddr 169.254.169.254 tcp dport 80 counter reject with tcp reset
//!   }
//!   chain input {                 # the same; then the agent's real port: only redirected
//!     type filter hook input priority -10; policy accept;      # and local traffic
//!     iifname "docker0" ip daddr 169.254.169.254 tcp dport 80 counter reject with tcp reset
//!     iifname "br-*"    ip daddr 169.254.169.254 tcp dport 80 counter reject with tcp reset
//!     tcp dport 8000 ct status dnat accept
//!     tcp dport 8000 iifname "lo" accept
//!     tcp dport 8000 ct direction original counter reject with tcp reset
//!   }
//! }
//! ```
//!
//! With the container credentials endpoint served (`CONTAINER_CREDENTIALS_PORT`), the same
//! three kinds of rule are added for `169.254.170.2:80` and the endpoint's port.
//!
//! `redirect` sends a container's connection to the address of the bridge it arrived on, so
//! every bridge, present or future, is covered without knowing its address; with a specific
//! `HOST` the rules `dnat` to it instead. The source address is kept: classic identity (by
//! container IP) works unchanged. The table coexists with iptables-legacy and iptables-nft
//! rules (Docker's included): `iptables-save` never shows it; `nft list table ip
//! metadataproxy` does.
//!
//! A second table, `ip6 metadataproxy`, refuses the real service's IPv6 endpoint to the same
//! interfaces (a container on an IPv6-enabled Docker network can reach `fd00:ec2::254`):
//!
//! ```text
//! table ip6 metadataproxy {
//!   chain forward {
//!     type filter hook forward priority -10; policy accept;
//!     iifname "docker0" ip6 daddr fd00:ec2::254 tcp dport 80 counter reject with tcp reset
//!     iifname "br-*"    ip6 daddr fd00:ec2::254 tcp dport 80 counter reject with tcp reset
//!   }
//!   chain input { ... the same, hook input ... }
//! }
//! ```
//!
//! Refused rather than redirected: the agent listens on one address, IPv4 in this mode (`HOST`
//! may not be IPv6), so a redirect would have nowhere to land, and SDKs use the IPv4 endpoint
//! unless told otherwise; a reset makes one told otherwise fail at once instead of timing out.
//! Both
//! tables are installed in one batch, and kept, removed (each by its handle) and repaired
//! alike. On a kernel without IPv6 (`ipv6.disable=1`) there is no endpoint to reach and no
//! `ip6` table: the agent says so in its log and in `/readyz`, and runs.

pub mod leftover;
pub mod netlink;
mod settings;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use netlink::{
    Expr, Hook, Message, NetlinkError, Socket, NFPROTO_IPV4, NFPROTO_IPV6, REG_1, REG_2,
};
pub use settings::{InterfaceMatch, IptablesConfig, RulesOnShutdown};

/// The agent's tables' name (families `ip` and `ip6`).
pub const TABLE: &str = "metadataproxy";
/// The container credentials endpoint's address.
const CONTAINER_ENDPOINT_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 2);
/// The instance metadata service's address.
const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The instance metadata service's IPv6 address (Nitro instances, when enabled).
const METADATA_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// Before Docker's DNAT (`dstnat`, -100) and iptables' nat PREROUTING.
const PREROUTING_PRIORITY: i32 = -110;
/// Before iptables' filter chains (0).
const FILTER_PRIORITY: i32 = -10;
/// `IPS_DST_NAT`: the connection's destination was rewritten (by our redirect).
const IPS_DST_NAT: u32 = 0x20;

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    /// `HOST` is a loopback address: redirected connections cannot reach it.
    #[error(
        "INTERCEPT=iptables: HOST {0} is a loopback address, which containers' redirected \
         connections cannot reach; use 0.0.0.0 (the default) or an address of the host"
    )]
    LoopbackHost(Ipv4Addr),
    /// `HOST` is IPv6: the redirect is IPv4.
    #[error(
        "INTERCEPT=iptables: HOST {0} is IPv6; the redirect is IPv4 (use 0.0.0.0, the default, \
         or an IPv4 address of the host)"
    )]
    Ipv6Host(Ipv6Addr),
    /// The container engine is Podman, and `IPTABLES_INTERFACES` covers none of its bridges.
    #[error(
        "INTERCEPT=iptables: the container engine is {engine}, whose bridges (podman0, podman1, \
         ...) IPTABLES_INTERFACES={interfaces} does not cover: its containers would reach the real \
         metadata service with the host's role. Add podman+ to IPTABLES_INTERFACES"
    )]
    EngineBridgesNotCovered {
        /// What the engine calls itself.
        engine: String,
        /// `IPTABLES_INTERFACES`.
        interfaces: String,
    },
    /// The kernel refused.
    #[error("{source}{hint}")]
    Kernel {
        /// The failing step.
        #[source]
        source: NetlinkError,
        /// What to check.
        hint: &'static str,
    },
}

fn kernel(source: NetlinkError) -> NetfilterError {
    use nix::errno::Errno;
    let hint = match source.errno() {
        Some(Errno::EPERM) => {
            " (INTERCEPT=iptables needs CAP_NET_ADMIN in the host's network namespace: run as \
             root, or with --net=host --cap-add=NET_ADMIN)"
        }
        Some(Errno::EPROTONOSUPPORT)
        | Some(Errno::ENOENT)
        | Some(Errno::EOPNOTSUPP)
        | Some(Errno::EAFNOSUPPORT) => {
            " (does this kernel have nf_tables with nat, redir, ct and reject support, for IPv4 \
             and IPv6?)"
        }
        _ => "",
    };
    NetfilterError::Kernel { source, hint }
}

/// Where redirected connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The agent listens on every address: to `port` on the bridge's own address.
    Redirect { port: u16 },
    /// The agent listens on one address.
    Dnat { ip: Ipv4Addr, port: u16 },
}

impl Target {
    /// The redirect target for an agent listening on `listen`.
    pub fn for_listen(listen: SocketAddr) -> Result<Target, NetfilterError> {
        let port = listen.port();
        match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => Ok(Target::Redirect { port }),
            IpAddr::V4(ip) if ip.is_loopback() => Err(NetfilterError::LoopbackHost(ip)),
            IpAddr::V4(ip) => Ok(Target::Dnat { ip, port }),
            IpAddr::V6(ip) => Err(NetfilterError::Ipv6Host(ip)),
        }
    }

    fn port(self) -> u16 {
        match self {
            Target::Redirect { port } | Target::Dnat { port, .. } => port,
        }
    }

    /// The same target at another port.
    fn with_port(self, port: u16) -> Target {
        match self {
            Target::Redirect { .. } => Target::Redirect { port },
            Target::Dnat { ip, .. } => Target::Dnat { ip, port },
        }
    }
}

/// A family the agent keeps a table in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `table ip metadataproxy`: redirects `169.254.169.254:80` to the agent.
    Ipv4,
    /// `table ip6 metadataproxy`: refuses `[fd00:ec2::254]:80`.
    Ipv6,
}

impl Family {
    /// The nf_tables family number.
    fn proto(self) -> u8 {
        match self {
            Family::Ipv4 => NFPROTO_IPV4,
            Family::Ipv6 => NFPROTO_IPV6,
        }
    }

    /// The family's name as `nft` prints it (`ip`, `ip6`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table {} {TABLE}", self.name())
    }
}

/// Whether the kernel has an IPv6 stack in this network namespace: without one
/// (`ipv6.disable=1`) `/proc/sys/net/ipv6` is absent, containers have no IPv6 and the IPv6
/// endpoint cannot be reached, so there is nothing for an `ip6` table to refuse. Read once: it
/// only changes with a reboot.
pub fn kernel_has_ipv6() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| has_ipv6_under(Path::new("/proc/sys/net")))
}

fn has_ipv6_under(proc_sys_net: &Path) -> bool {
    proc_sys_net.join("ipv6").is_dir()
}

/// The families to install on this host.
fn families(ipv6: bool) -> Vec<Family> {
    if ipv6 {
        vec![Family::Ipv4, Family::Ipv6]
    } else {
        vec![Family::Ipv4]
    }
}

/// How the table is (re)created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Install {
    /// At start-up: replace whatever table of that name there is (a kept one, a previous
    /// agent's). Creating the table before deleting it makes the batch valid whether or not it
    /// existed.
    Replace,
    /// Repair of a missing table: fails if another program has created one meanwhile.
    Create,
    /// Repair of our table with rules missing: fails if it is no longer ours.
    Rebuild { ours: u64 },
}

/// The messages that install the agent's table of `family` holding `cfg`'s rules, and the
/// index among them of the message that creates the table (its echo carries the handle). The
/// kernel applies a batch atomically: connections never see a partial ruleset.
fn batch(
    family: Family,
    cfg: &IptablesConfig,
    target: Target,
    container_port: Option<u16>,
    how: Install,
) -> (Vec<Message>, usize) {
    let f = family.proto();
    let mut m = match how {
        Install::Replace => vec![
            Message::new_table(f, TABLE),
            Message::del_table(f, TABLE, None),
        ],
        Install::Create => vec![],
        Install::Rebuild { ours } => vec![Message::del_table(f, TABLE, Some(ours))],
    };
    let create = m.len();
    m.push(Message::create_table(f, TABLE).echo());
    m.extend(contents(family, cfg, target, container_port));
    (m, create)
}

/// The chains and rules of the table of `family` (see the module documentation).
fn contents(
    family: Family,
    cfg: &IptablesConfig,
    target: Target,
    container_port: Option<u16>,
) -> Vec<Message> {
    match family {
        Family::Ipv4 => contents_ipv4(cfg, target, container_port),
        Family::Ipv6 => contents_ipv6(cfg),
    }
}

/// `iifname IFACE ip6 daddr fd00:ec2::254 tcp dport 80 counter reject with tcp reset`, in a
/// forward and an input chain: to the real endpoint (routed) and to a local address alike.
fn contents_ipv6(cfg: &IptablesConfig) -> Vec<Message> {
    let f = NFPROTO_IPV6;
    let mut m = Vec::new();
    for (chain, hook) in [("forward", Hook::Forward), ("input", Hook::Input)] {
        m.push(Message::new_base_chain(
            f,
            TABLE,
            chain,
            "filter",
            hook,
            FILTER_PRIORITY,
        ));
        for iface in &cfg.interfaces {
            let exprs = vec![
                Expr::meta_iifname(),
                Expr::cmp_eq(&iface.match_bytes()),
                // ip6 daddr: 16 bytes at offset 24 of the IPv6 header.
                Expr::payload_network(24, 16),
                Expr::cmp_eq(&METADATA_IPV6.octets()),
                Expr::meta_l4proto(),
                Expr::cmp_eq(&[6]),
                Expr::payload_transport(2, 2),
                Expr::cmp_eq(&80u16.to_be_bytes()),
                Expr::counter(),
                Expr::reject_tcp_reset(),
            ];
            m.push(Message::new_rule(f, TABLE, chain, &exprs));
        }
    }
    m
}

/// The IPv4 table's chains and rules (see the module documentation): for the metadata
/// service, and for the container credentials endpoint when `container_port` serves it.
fn contents_ipv4(
    cfg: &IptablesConfig,
    target: Target,
    container_port: Option<u16>,
) -> Vec<Message> {
    let f = NFPROTO_IPV4;
    // (address containers connect to on port 80, where the agent answers it)
    let endpoints: Vec<(Ipv4Addr, Target)> = std::iter::once((METADATA_IP, target))
        .chain(container_port.map(|p| (CONTAINER_ENDPOINT_IP, target.with_port(p))))
        .collect();
    let mut m = vec![Message::new_base_chain(
        f,
        TABLE,
        "prerouting",
        "nat",
        Hook::Prerouting,
        PREROUTING_PRIORITY,
    )];
    // `iifname IFACE ip daddr ADDRESS tcp dport 80`
    let to_endpoint = |iface: &InterfaceMatch, address: Ipv4Addr| {
        vec![
            Expr::meta_iifname(),
            Expr::cmp_eq(&iface.match_bytes()),
            Expr::payload_network(16, 4),
            Expr::cmp_eq(&address.octets()),
            Expr::meta_l4proto(),
            Expr::cmp_eq(&[6]),
            Expr::payload_transport(2, 2),
            Expr::cmp_eq(&80u16.to_be_bytes()),
            Expr::counter(),
        ]
    };
    for (address, target) in &endpoints {
        let port = target.port().to_be_bytes();
        for iface in &cfg.interfaces {
            let mut exprs = to_endpoint(iface, *address);
            match target {
                Target::Redirect { .. } => {
                    exprs.push(Expr::immediate(REG_1, &port));
                    exprs.push(Expr::redirect_port(REG_1));
                }
                Target::Dnat { ip, .. } => {
                    exprs.push(Expr::immediate(REG_1, &ip.octets()));
                    exprs.push(Expr::immediate(REG_2, &port));
                    exprs.push(Expr::dnat_ipv4(REG_1, REG_2));
                }
            }
            m.push(Message::new_rule(f, TABLE, "prerouting", &exprs));
        }
    }
    // Connections the nat chain did not redirect (opened before the table was there: the nat
    // hook sees only a connection's first packet) still carry the endpoint's address: reset
    // them, on the way to the real service (forward) or to a local address (input).
    let leftovers = |chain: &str| -> Vec<Message> {
        endpoints
            .iter()
            .flat_map(|(address, _)| {
                cfg.interfaces.iter().map(move |iface| {
                    let mut exprs = to_endpoint(iface, *address);
                    exprs.push(Expr::reject_tcp_reset());
                    Message::new_rule(f, TABLE, chain, &exprs)
                })
            })
            .collect()
    };
    m.push(Message::new_base_chain(
        f,
        TABLE,
        "forward",
        "filter",
        Hook::Forward,
        FILTER_PRIORITY,
    ));
    m.extend(leftovers("forward"));
    m.push(Message::new_base_chain(
        f,
        TABLE,
        "input",
        "filter",
        Hook::Input,
        FILTER_PRIORITY,
    ));
    m.extend(leftovers("input"));
    // The agent's ports: redirected connections and loopback only.
    for (_, target) in &endpoints {
        let port = target.port().to_be_bytes();
        let to_port = || {
            vec![
                Expr::meta_l4proto(),
                Expr::cmp_eq(&[6]),
                Expr::payload_transport(2, 2),
                Expr::cmp_eq(&port),
            ]
        };
        let mut redirected = to_port();
        redirected.extend([
            Expr::ct_status(),
            Expr::and_mask(IPS_DST_NAT.to_ne_bytes()),
            Expr::cmp_neq(&[0; 4]),
            Expr::accept(),
        ]);
        let mut local = to_port();
        local.extend([
            Expr::meta_iifname(),
            Expr::cmp_eq(&InterfaceMatch::Exact("lo".into()).match_bytes()),
            Expr::accept(),
        ]);
        // Only towards the agent: the host's own connections that happen to use the port as
        // their local port get their answers.
        let mut others = to_port();
        others.extend([
            Expr::ct_direction(),
            Expr::cmp_eq(&[0]), // IP_CT_DIR_ORIGINAL
            Expr::counter(),
            Expr::reject_tcp_reset(),
        ]);
        for rule in [redirected, local, others] {
            m.push(Message::new_rule(f, TABLE, "input", &rule));
        }
    }
    m
}

/// How many rules the table of `family` holds.
fn expected_rules(family: Family, cfg: &IptablesConfig, container_port: Option<u16>) -> usize {
    let endpoints = 1 + usize::from(container_port.is_some());
    match family {
        Family::Ipv4 => (3 * cfg.interfaces.len() + 3) * endpoints,
        Family::Ipv6 => 2 * cfg.interfaces.len(),
    }
}

/// The state of the agent's tables, as the kernel has them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Our tables, with all their rules.
    Installed,
    /// No table: someone flushed the ruleset or deleted it.
    Missing(Family),
    /// Our table, with rules removed.
    Incomplete {
        /// Which table.
        family: Family,
        /// Rules it holds.
        rules: usize,
        /// Rules it should hold.
        expected: usize,
    },
    /// A table of that name that is not the one we installed (another agent's).
    Replaced(Family),
    /// The kernel could not be asked.
    Unknown(String),
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Installed if kernel_has_ipv6() => {
                write!(f, "tables ip and ip6 {TABLE} in place")
            }
            Status::Installed => write!(
                f,
                "table ip {TABLE} in place; no ip6 table: this kernel has no IPv6 \
                 (ipv6.disable=1), so containers cannot reach fd00:ec2::254"
            ),
            Status::Missing(t) => write!(f, "{t} is missing (being reinstalled)"),
            Status::Incomplete {
                family,
                rules,
                expected,
            } => write!(
                f,
                "{family} holds {rules} rules, {expected} expected (being reinstalled)"
            ),
            Status::Replaced(t) => {
                write!(f, "{t} was replaced by another program (another agent?)")
            }
            Status::Unknown(why) => write!(f, "cannot read the rules: {why}"),
        }
    }
}

/// Refuses `cfg` on an engine whose bridges it does not cover: Podman's are `podman0`,
/// `podman1`, ... (`engine` is what the engine calls itself, when it is Podman).
pub fn check_engine(cfg: &IptablesConfig, engine: Option<&str>) -> Result<(), NetfilterError> {
    match engine {
        Some(engine) if !cfg.interfaces.iter().any(|i| i.matches("podman0")) => {
            Err(NetfilterError::EngineBridgesNotCovered {
                engine: engine.to_string(),
                interfaces: cfg
                    .interfaces
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            })
        }
        _ => Ok(()),
    }
}

/// The installed rules and what to do with them.
#[derive(Debug)]
pub struct NatRules {
    cfg: IptablesConfig,
    target: Target,
    /// The container credentials endpoint's port, when it is served.
    container_port: Option<u16>,
    /// The tables this host gets: IPv4, and IPv6 unless the kernel has none.
    families: Vec<Family>,
    /// The kernel's handles of the tables we installed, by [`Family::index`].
    handles: Mutex<[Option<u64>; 2]>,
    /// Serialises repair and shutdown: once shut down, nothing is reinstalled.
    lifecycle: Mutex<bool>,
}

impl NatRules {
    /// Installs (or atomically replaces) the agent's tables, both in one batch.
    /// `container_listen` is where the container credentials endpoint listens (on `listen`'s
    /// address), when it is served: `169.254.170.2:80` is redirected there.
    pub fn install(
        cfg: &IptablesConfig,
        listen: SocketAddr,
        container_listen: Option<SocketAddr>,
    ) -> Result<NatRules, NetfilterError> {
        let target = Target::for_listen(listen)?;
        let container_port = container_listen.map(|a| a.port());
        let rules = NatRules {
            cfg: cfg.clone(),
            target,
            container_port,
            families: families(kernel_has_ipv6()),
            handles: Mutex::new([None; 2]),
            lifecycle: Mutex::new(false),
        };
        let all: Vec<_> = rules
            .families
            .iter()
            .map(|f| (*f, Install::Replace))
            .collect();
        rules.apply(&all)?;
        tracing::info!(
            table = TABLE,
            interfaces = %cfg.interfaces.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
            target = ?target,
            container_endpoint = container_port,
            "interception rules installed (nf_tables): containers' metadata connections are redirected to the agent"
        );
        if rules.families.contains(&Family::Ipv6) {
            tracing::info!(
                table = TABLE,
                "IPv6 rules installed (table ip6 metadataproxy): containers' connections to [fd00:ec2::254]:80 are reset"
            );
        } else {
            tracing::warn!(
                table = TABLE,
                "this kernel has no IPv6 (ipv6.disable=1): no ip6 table, containers cannot reach fd00:ec2::254"
            );
        }
        Ok(rules)
    }

    /// Sends one batch that (re)creates the table of each family in `tables`, and records
    /// their new handles.
    fn apply(&self, tables: &[(Family, Install)]) -> Result<(), NetfilterError> {
        let mut messages = Vec::new();
        let mut creates = Vec::new();
        for (family, how) in tables {
            let (m, create) = batch(*family, &self.cfg, self.target, self.container_port, *how);
            creates.push((*family, messages.len() + create));
            messages.extend(m);
        }
        let mut sock = Socket::open().map_err(kernel)?;
        let echoes = sock
            .batch("install the interception table", &messages)
            .map_err(kernel)?;
        for (family, create) in creates {
            // The handle of the table this batch created, from the kernel's echo; a lookup by
            // name could already see another agent's.
            let handle = match echoes
                .iter()
                .find(|e| e.message == create)
                .and_then(|e| e.table_handle())
            {
                Some(h) => Some(h),
                None => sock.table_handle(family.proto(), TABLE).map_err(kernel)?,
            };
            self.handles.lock().expect("lock")[family.index()] = handle;
        }
        Ok(())
    }

    fn handle(&self, family: Family) -> Option<u64> {
        self.handles.lock().expect("lock")[family.index()]
    }

    /// Asks the kernel whether the tables are still ours and complete: the first that is not.
    pub fn status(&self) -> Status {
        self.families
            .iter()
            .map(|f| self.status_of(*f))
            .find(|s| *s != Status::Installed)
            .unwrap_or(Status::Installed)
    }

    fn status_of(&self, family: Family) -> Status {
        let ours = self.handle(family);
        let f = family.proto();
        let result = Socket::open().and_then(|mut s| {
            let before = s.table_handle(f, TABLE)?;
            let rules = s.rule_count(f, TABLE)?;
            // Read again: a table replaced between the two reads is not ours with rules
            // missing.
            let after = s.table_handle(f, TABLE)?;
            Ok((before, rules, after))
        });
        match result {
            Err(e) => Status::Unknown(e.to_string()),
            Ok((None, _, None)) => Status::Missing(family),
            Ok((before, rules, after)) if before == after && after == ours => {
                let rules = rules.unwrap_or(0);
                let expected = expected_rules(family, &self.cfg, self.container_port);
                if rules == expected {
                    Status::Installed
                } else {
                    Status::Incomplete {
                        family,
                        rules,
                        expected,
                    }
                }
            }
            Ok(_) => Status::Replaced(family),
        }
    }

    /// Puts a table back when it went missing or lost rules (a `nft flush ruleset`, a
    /// firewall reload), each table on its own. A table replaced by another program is left
    /// to it, and the batches fail rather than overwrite one that appears meanwhile. Returns
    /// whether it reinstalled one.
    pub fn repair(&self) -> bool {
        let stopped = self.lifecycle.lock().expect("lock");
        if *stopped {
            return false;
        }
        let mut repaired = false;
        for family in &self.families {
            let family = *family;
            let status = self.status_of(family);
            let how = match (&status, self.handle(family)) {
                (Status::Missing(_), _) => Install::Create,
                (Status::Incomplete { .. }, Some(ours)) => Install::Rebuild { ours },
                _ => continue,
            };
            match self.apply(&[(family, how)]) {
                Ok(()) => {
                    tracing::warn!(
                        table = TABLE,
                        family = family.name(),
                        was = %status,
                        "interception rules were removed by something else; reinstalled"
                    );
                    metrics::counter!(crate::metrics::INTERCEPTION_REPAIRS).increment(1);
                    repaired = true;
                }
                Err(e) => {
                    tracing::error!(
                        table = TABLE,
                        family = family.name(),
                        error = %e,
                        "cannot reinstall the interception rules"
                    );
                }
            }
        }
        repaired
    }

    /// Applies the shutdown policy: remove exactly our tables, or keep them (fail closed:
    /// containers' metadata connections are refused until the agent is back). No repair runs
    /// after this.
    pub fn shutdown(&self) {
        let mut stopped = self.lifecycle.lock().expect("lock");
        *stopped = true;
        if self.cfg.on_shutdown == RulesOnShutdown::Keep {
            tracing::info!(
                table = TABLE,
                "interception rules kept (IPTABLES_ON_SHUTDOWN=keep): containers' metadata connections are refused until the agent is back"
            );
            return;
        }
        for family in &self.families {
            let Some(handle) = self.handle(*family) else {
                continue;
            };
            // By handle, each table on its own: a table that another agent put in place since
            // is not ours to remove, and does not keep ours of the other family in place.
            let result = Socket::open().and_then(|mut s| {
                s.batch(
                    "remove the interception table",
                    &[Message::del_table(family.proto(), TABLE, Some(handle))],
                )
            });
            let family = family.name();
            match result {
                Ok(_) => tracing::info!(table = TABLE, family, "interception rules removed"),
                Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => tracing::info!(
                    table = TABLE,
                    family,
                    "interception table already gone or replaced by another agent; left alone"
                ),
                Err(e) => {
                    tracing::error!(table = TABLE, family, error = %e, "cannot remove the interception rules")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_follows_the_listen_address() {
        assert_eq!(
            Target::for_listen("0.0.0.0:8000".parse().unwrap()).unwrap(),
            Target::Redirect { port: 8000 }
        );
        assert_eq!(
            Target::for_listen("172.17.0.1:9000".parse().unwrap()).unwrap(),
            Target::Dnat {
                ip: Ipv4Addr::new(172, 17, 0, 1),
                port: 9000
            }
        );
        let e = Target::for_listen("127.0.0.1:8000".parse().unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("HOST 127.0.0.1 is a loopback"),
            "{e}"
        );
        let e = Target::for_listen("[::]:8000".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("IPv6"), "{e}");
    }

    #[test]
    fn podman_needs_its_bridges_covered() {
        let with = |list: &str| IptablesConfig {
            interfaces: list
                .split(',')
                .map(|i| InterfaceMatch::parse(i).unwrap())
                .collect(),
            ..cfg()
        };
        let e = check_engine(&with("docker0,br-+"), Some("Podman Engine")).unwrap_err();
        for needle in [
            "Podman Engine",
            "docker0,br-+",
            "podman+",
            "IPTABLES_INTERFACES",
        ] {
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
        assert!(check_engine(&with("docker0,br-+,podman+"), Some("Podman Engine")).is_ok());
        assert!(check_engine(&with("podman0"), Some("Podman Engine")).is_ok());
        assert!(check_engine(&with("docker0,br-+"), None).is_ok());
    }

    fn cfg() -> IptablesConfig {
        IptablesConfig {
            interfaces: vec![
                InterfaceMatch::Exact("docker0".into()),
                InterfaceMatch::Prefix("br-".into()),
            ],
            on_shutdown: RulesOnShutdown::Remove,
        }
    }

    fn hex(v: &[u8]) -> String {
        v.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn rendered(messages: &[Message]) -> Vec<String> {
        messages.iter().map(Message::render).collect()
    }

    #[test]
    fn the_ipv6_table_resets_the_ipv6_endpoint_from_every_interface_in_both_chains() {
        let cfg = cfg();
        let (messages, create) = batch(
            Family::Ipv6,
            &cfg,
            Target::Redirect { port: 8000 },
            None,
            Install::Replace,
        );
        let got = rendered(&messages);
        // `iifname IFACE ip6 daddr fd00:ec2::254 tcp dport 80 counter reject with tcp reset`
        let rule = |chain: &str, iface: &InterfaceMatch| {
            format!(
                "add rule 10 metadataproxy {chain}: meta 1 6 | cmp 1 0 {} | \
                 payload 1 1 24 16 | cmp 1 0 {} | meta 1 16 | cmp 1 0 06 | \
                 payload 1 2 2 2 | cmp 1 0 0050 | counter 0000000000000000 0000000000000000 | \
                 reject 1 00",
                hex(&iface.match_bytes()),
                hex(&METADATA_IPV6.octets()),
            )
        };
        let mut want = vec![
            "add table 10 metadataproxy".to_string(),
            "delete table 10 metadataproxy".into(),
            "create table 10 metadataproxy".into(),
            "add chain 10 metadataproxy forward filter hook 2 priority -10".into(),
        ];
        want.extend(cfg.interfaces.iter().map(|i| rule("forward", i)));
        want.push("add chain 10 metadataproxy input filter hook 1 priority -10".into());
        want.extend(cfg.interfaces.iter().map(|i| rule("input", i)));
        assert_eq!(got, want);
        assert_eq!(
            hex(&METADATA_IPV6.octets()),
            "fd000ec2000000000000000000000254"
        );
        assert_eq!(create, 2);
        // What the status check counts: every rule of the table.
        assert_eq!(
            got.iter().filter(|m| m.starts_with("add rule")).count(),
            expected_rules(Family::Ipv6, &cfg, None)
        );
        // Refused, never redirected or NATed: the agent listens on IPv4 only.
        assert!(!got.iter().any(|m| m.contains("nat") || m.contains("redir")));
        // Whatever the listen address, the IPv6 table is the same.
        let (dnat, _) = batch(
            Family::Ipv6,
            &cfg,
            Target::Dnat {
                ip: Ipv4Addr::new(172, 17, 0, 1),
                port: 9000,
            },
            None,
            Install::Replace,
        );
        assert_eq!(rendered(&dnat), want);
    }

    #[test]
    fn repairs_of_the_ipv6_table_create_or_rebuild_only_it() {
        let cfg = cfg();
        let target = Target::Redirect { port: 8000 };
        let (create, at) = batch(Family::Ipv6, &cfg, target, None, Install::Create);
        assert_eq!(at, 0);
        assert_eq!(create[0].render(), "create table 10 metadataproxy");
        let (rebuild, at) = batch(
            Family::Ipv6,
            &cfg,
            target,
            None,
            Install::Rebuild { ours: 7 },
        );
        assert_eq!(at, 1);
        assert_eq!(
            rebuild[0].render(),
            "delete table 10 metadataproxy handle 7"
        );
        assert!(rebuild[1..].iter().all(|m| m.render().contains(" 10 ")));
    }

    #[test]
    fn the_ipv4_table_is_unchanged_beside_it() {
        let cfg = cfg();
        let (messages, create) = batch(
            Family::Ipv4,
            &cfg,
            Target::Redirect { port: 8000 },
            None,
            Install::Replace,
        );
        let got = rendered(&messages);
        assert_eq!(create, 2);
        assert!(
            got.iter().all(|m| m.contains(" 2 metadataproxy")),
            "{got:#?}"
        );
        assert_eq!(
            got.iter().filter(|m| m.starts_with("add rule")).count(),
            expected_rules(Family::Ipv4, &cfg, None)
        );
        // ip daddr 169.254.169.254, redirected to the port.
        assert!(
            got[4].contains("payload 1 1 16 4 | cmp 1 0 a9fea9fe"),
            "{}",
            got[4]
        );
        assert!(
            got[4].ends_with("immediate 1 1f40 | redir 1 2"),
            "{}",
            got[4]
        );
        // Nothing for 169.254.170.2 when the container credentials endpoint is off.
        assert!(!got.iter().any(|m| m.contains("a9feaa02")), "{got:#?}");
    }

    #[test]
    fn the_container_endpoint_gets_the_same_rules_at_its_port() {
        let cfg = cfg();
        let (messages, _) = batch(
            Family::Ipv4,
            &cfg,
            Target::Redirect { port: 8000 },
            Some(8002),
            Install::Replace,
        );
        let got = rendered(&messages);
        let rules = |needle: &str| got.iter().filter(|m| m.contains(needle)).count();
        assert_eq!(
            got.iter().filter(|m| m.starts_with("add rule")).count(),
            expected_rules(Family::Ipv4, &cfg, Some(8002))
        );
        // Per interface: redirected to 8002 in prerouting, reset in forward and input.
        let n = cfg.interfaces.len();
        assert_eq!(rules("cmp 1 0 a9feaa02"), 3 * n, "{got:#?}");
        assert_eq!(rules("immediate 1 1f42 | redir 1 2"), n, "{got:#?}");
        assert_eq!(rules("immediate 1 1f40 | redir 1 2"), n, "{got:#?}");
        // And 8002 on the input chain: redirected and loopback only.
        assert_eq!(rules("payload 1 2 2 2 | cmp 1 0 1f42"), 3, "{got:#?}");
        assert_eq!(rules("payload 1 2 2 2 | cmp 1 0 1f40"), 3, "{got:#?}");
    }

    #[test]
    fn ipv6_is_detected_from_proc_and_decides_the_tables() {
        let dir = std::env::temp_dir().join(format!("mp-netfilter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!has_ipv6_under(&dir));
        assert_eq!(families(false), [Family::Ipv4]);
        std::fs::create_dir(dir.join("ipv6")).unwrap();
        assert!(has_ipv6_under(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(families(true), [Family::Ipv4, Family::Ipv6]);
        assert_eq!(Family::Ipv6.to_string(), "table ip6 metadataproxy");
        assert_eq!(
            Status::Missing(Family::Ipv6).to_string(),
            "table ip6 metadataproxy is missing (being reinstalled)"
        );
    }
}
