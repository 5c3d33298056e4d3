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
//! `redirect` sends a container's connection to the address of the bridge it arrived on, so
//! every bridge, present or future, is covered without knowing its address; with a specific
//! `HOST` the rules `dnat` to it instead. The source address is kept: classic identity (by
//! container IP) works unchanged. The table coexists with iptables-legacy and iptables-nft
//! rules (Docker's included): `iptables-save` never shows it; `nft list table ip
//! metadataproxy` does.

pub mod leftover;
pub mod netlink;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use crate::config::{InterfaceMatch, IptablesConfig, RulesOnShutdown};
use netlink::{Expr, Hook, Message, NetlinkError, Socket, NFPROTO_IPV4, REG_1, REG_2};

/// The agent's table (family `ip`).
pub const TABLE: &str = "metadataproxy";
/// The instance metadata service's address.
const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Before Docker's DNAT (`dstnat`, -100) and iptables' nat PREROUTING.
const PREROUTING_PRIORITY: i32 = -110;
/// Before iptables' filter chains (0).
const FILTER_PRIORITY: i32 = -10;
/// `IPS_DST_NAT`: the connection's destination was rewritten (by our redirect).
const IPS_DST_NAT: u32 = 0x20;

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    /// The listen address cannot be a redirect target.
    #[error("{0}")]
    Target(String),
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
        Some(Errno::EPROTONOSUPPORT) | Some(Errno::ENOENT) | Some(Errno::EOPNOTSUPP) => {
            " (does this kernel have nf_tables with nat, redir, ct and reject support?)"
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
            IpAddr::V4(ip) if ip.is_loopback() => Err(NetfilterError::Target(format!(
                "INTERCEPT=iptables: HOST {ip} is a loopback address, which containers' \
                 redirected connections cannot reach; use 0.0.0.0 (the default) or an address \
                 of the host"
            ))),
            IpAddr::V4(ip) => Ok(Target::Dnat { ip, port }),
            IpAddr::V6(ip) => Err(NetfilterError::Target(format!(
                "INTERCEPT=iptables: HOST {ip} is IPv6; the redirect is IPv4 (use 0.0.0.0, the \
                 default, or an IPv4 address of the host)"
            ))),
        }
    }

    fn port(self) -> u16 {
        match self {
            Target::Redirect { port } | Target::Dnat { port, .. } => port,
        }
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

/// The batch that installs the agent's table holding `cfg`'s rules. The kernel applies a batch
/// atomically: connections never see a partial ruleset.
fn batch(cfg: &IptablesConfig, target: Target, how: Install) -> Vec<Message> {
    let f = NFPROTO_IPV4;
    let mut m = match how {
        Install::Replace => vec![
            Message::new_table(f, TABLE),
            Message::del_table(f, TABLE, None),
        ],
        Install::Create => vec![],
        Install::Rebuild { ours } => vec![Message::del_table(f, TABLE, Some(ours))],
    };
    m.push(Message::create_table(f, TABLE).echo());
    m.extend(contents(cfg, target));
    m
}

/// The chains and rules of the table (see the module documentation).
fn contents(cfg: &IptablesConfig, target: Target) -> Vec<Message> {
    let f = NFPROTO_IPV4;
    let mut m = vec![Message::new_base_chain(
        f,
        TABLE,
        "prerouting",
        "nat",
        Hook::Prerouting,
        PREROUTING_PRIORITY,
    )];
    let port = target.port().to_be_bytes();
    // `iifname IFACE ip daddr 169.254.169.254 tcp dport 80`
    let to_metadata = |iface: &InterfaceMatch| {
        vec![
            Expr::meta_iifname(),
            Expr::cmp_eq(&iface.match_bytes()),
            Expr::payload_network(16, 4),
            Expr::cmp_eq(&METADATA_IP.octets()),
            Expr::meta_l4proto(),
            Expr::cmp_eq(&[6]),
            Expr::payload_transport(2, 2),
            Expr::cmp_eq(&80u16.to_be_bytes()),
            Expr::counter(),
        ]
    };
    for iface in &cfg.interfaces {
        let mut exprs = to_metadata(iface);
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
    // Connections the nat chain did not redirect (opened before the table was there: the nat
    // hook sees only a connection's first packet) still carry the metadata address: reset
    // them, on the way to the real service (forward) or to a local address (input).
    let leftovers = |chain: &str| -> Vec<Message> {
        cfg.interfaces
            .iter()
            .map(|iface| {
                let mut exprs = to_metadata(iface);
                exprs.push(Expr::reject_tcp_reset());
                Message::new_rule(f, TABLE, chain, &exprs)
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
    // The agent's port: redirected connections and loopback only.
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
    // Only towards the agent: the host's own connections that happen to use PORT as their
    // local port get their answers.
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
    m
}

/// How many rules the table holds.
fn expected_rules(cfg: &IptablesConfig) -> usize {
    3 * cfg.interfaces.len() + 3
}

/// The state of the agent's table, as the kernel has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Our table, with all its rules.
    Installed,
    /// No table: someone flushed the ruleset or deleted it.
    Missing,
    /// Our table, with rules removed.
    Incomplete {
        /// Rules it holds.
        rules: usize,
        /// Rules it should hold.
        expected: usize,
    },
    /// A table of that name that is not the one we installed (another agent's).
    Replaced,
    /// The kernel could not be asked.
    Unknown(String),
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Installed => write!(f, "table ip {TABLE} in place"),
            Status::Missing => write!(f, "table ip {TABLE} is missing (being reinstalled)"),
            Status::Incomplete { rules, expected } => write!(
                f,
                "table ip {TABLE} holds {rules} rules, {expected} expected (being reinstalled)"
            ),
            Status::Replaced => write!(
                f,
                "table ip {TABLE} was replaced by another program (another agent?)"
            ),
            Status::Unknown(why) => write!(f, "cannot read the rules: {why}"),
        }
    }
}

/// The installed rules and what to do with them.
#[derive(Debug)]
pub struct NatRules {
    cfg: IptablesConfig,
    target: Target,
    /// The kernel's handle of the table we installed.
    handle: Mutex<Option<u64>>,
    /// Serialises repair and shutdown: once shut down, nothing is reinstalled.
    lifecycle: Mutex<bool>,
}

impl NatRules {
    /// Installs (or atomically replaces) the agent's table.
    pub fn install(cfg: &IptablesConfig, listen: SocketAddr) -> Result<NatRules, NetfilterError> {
        let target = Target::for_listen(listen)?;
        let rules = NatRules {
            cfg: cfg.clone(),
            target,
            handle: Mutex::new(None),
            lifecycle: Mutex::new(false),
        };
        rules.apply(Install::Replace)?;
        tracing::info!(
            table = TABLE,
            interfaces = %cfg.interfaces.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
            target = ?target,
            "interception rules installed (nf_tables): containers' metadata connections are redirected to the agent"
        );
        Ok(rules)
    }

    fn apply(&self, how: Install) -> Result<(), NetfilterError> {
        let mut sock = Socket::open().map_err(kernel)?;
        let echoes = sock
            .batch(
                "install the interception table",
                &batch(&self.cfg, self.target, how),
            )
            .map_err(kernel)?;
        // The handle of the table this batch created, from the kernel's echo; a lookup by name
        // could already see another agent's.
        let handle = match echoes.iter().find_map(|e| e.table_handle()) {
            Some(h) => Some(h),
            None => sock.table_handle(NFPROTO_IPV4, TABLE).map_err(kernel)?,
        };
        *self.handle.lock().expect("lock") = handle;
        Ok(())
    }

    /// Asks the kernel whether the table is still ours and complete.
    pub fn status(&self) -> Status {
        let ours = *self.handle.lock().expect("lock");
        let result = Socket::open().and_then(|mut s| {
            let before = s.table_handle(NFPROTO_IPV4, TABLE)?;
            let rules = s.rule_count(NFPROTO_IPV4, TABLE)?;
            // Read again: a table replaced between the two reads is not ours with rules
            // missing.
            let after = s.table_handle(NFPROTO_IPV4, TABLE)?;
            Ok((before, rules, after))
        });
        match result {
            Err(e) => Status::Unknown(e.to_string()),
            Ok((None, _, None)) => Status::Missing,
            Ok((before, rules, after)) if before == after && after == ours => {
                let rules = rules.unwrap_or(0);
                let expected = expected_rules(&self.cfg);
                if rules == expected {
                    Status::Installed
                } else {
                    Status::Incomplete { rules, expected }
                }
            }
            Ok(_) => Status::Replaced,
        }
    }

    /// Puts the table back when it went missing or lost rules (a `nft flush ruleset`, a
    /// firewall reload). A table replaced by another program is left to it, and the batches
    /// fail rather than overwrite one that appears meanwhile. Returns whether it reinstalled.
    pub fn repair(&self) -> bool {
        let stopped = self.lifecycle.lock().expect("lock");
        if *stopped {
            return false;
        }
        let status = self.status();
        let how = match (&status, *self.handle.lock().expect("lock")) {
            (Status::Missing, _) => Install::Create,
            (Status::Incomplete { .. }, Some(ours)) => Install::Rebuild { ours },
            _ => return false,
        };
        match self.apply(how) {
            Ok(()) => {
                tracing::warn!(
                    table = TABLE,
                    was = %status,
                    "interception rules were removed by something else; reinstalled"
                );
                metrics::counter!(crate::telemetry::metrics::INTERCEPTION_REPAIRS).increment(1);
                true
            }
            Err(e) => {
                tracing::error!(table = TABLE, error = %e, "cannot reinstall the interception rules");
                false
            }
        }
    }

    /// Applies the shutdown policy: remove exactly our table, or keep it (fail closed:
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
        let Some(handle) = *self.handle.lock().expect("lock") else {
            return;
        };
        // By handle: a table that another agent put in place since is not ours to remove.
        let result = Socket::open().and_then(|mut s| {
            s.batch(
                "remove the interception table",
                &[Message::del_table(NFPROTO_IPV4, TABLE, Some(handle))],
            )
        });
        match result {
            Ok(_) => tracing::info!(table = TABLE, "interception rules removed"),
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => tracing::info!(
                table = TABLE,
                "interception table already gone or replaced by another agent; left alone"
            ),
            Err(e) => {
                tracing::error!(table = TABLE, error = %e, "cannot remove the interception rules")
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
}
