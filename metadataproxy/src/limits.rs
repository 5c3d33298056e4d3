//! Protections of the proxy port: connection caps (total and per peer address), a per-caller
//! request rate, and the `Host` header check. Header size and read timeouts are applied by the
//! HTTP server itself (see [`crate::server`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits of `Config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Requests per second per caller (`REQUEST_RATE_LIMIT`, 0: off).
    pub rate: u32,
    /// Burst per caller (`REQUEST_RATE_BURST`).
    pub burst: u32,
    /// Largest request head (`MAX_HEADER_BYTES`).
    pub max_header_bytes: usize,
    /// Time allowed for the request head (`HEADER_READ_TIMEOUT`).
    pub header_timeout: Duration,
    /// Time allowed for the request body (`BODY_READ_TIMEOUT`).
    pub body_timeout: Duration,
    /// Open connections in all (`MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Open connections per peer address (`MAX_CONNECTIONS_PER_IP`, 0: no cap).
    pub max_connections_per_ip: usize,
    /// Refuse requests whose `Host` is not the metadata service's (`CHECK_HOST_HEADER`).
    pub check_host: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate: 0,
            burst: 0,
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_ip: 256,
            check_host: false,
        }
    }
}

/// Whose connections count together: a peer address, or in eBPF mode the connecting cgroup
/// (host-network containers and host processes share the host's addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// By address.
    Ip(IpAddr),
    /// By cgroup id.
    Cgroup(u64),
}

/// Counts open connections, in all and per peer.
#[derive(Debug)]
pub struct ConnectionGate {
    max: usize,
    per_ip: usize,
    open: Mutex<(usize, HashMap<Peer, usize>)>,
}

/// Held while a connection is open.
#[derive(Debug)]
pub struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
    ip: Peer,
}

impl ConnectionGate {
    /// A gate for `max` connections, `per_ip` from one address (0: no per-address cap).
    pub fn new(max: usize, per_ip: usize) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            max,
            per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A permit for a connection from `ip`, or `None` when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: Peer) -> Option<ConnectionPermit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *open;
        if *total >= self.max {
            return None;
        }
        let mine = per_ip.entry(ip).or_insert(0);
        if self.per_ip > 0 && *mine >= self.per_ip {
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(ConnectionPermit {
            gate: self.clone(),
            ip,
        })
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *open;
        *total -= 1;
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Token buckets per caller; idle callers are forgotten.
#[derive(Debug)]
pub struct RequestRate {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Callers remembered at most; past it, full buckets are dropped first.
const MAX_CALLERS: usize = 65_536;

impl RequestRate {
    /// `rate` requests per second with bursts of `burst`.
    pub fn new(rate: u32, burst: u32) -> RequestRate {
        RequestRate {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `caller` at `now`; `false` when it has none left.
    pub fn allow(&self, caller: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_CALLERS && !buckets.contains_key(caller) {
            // Forget callers whose bucket has refilled (they lose nothing); if every caller
            // is active, forget them all rather than grow without bound.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= MAX_CALLERS / 2 {
                buckets.clear();
            }
        }
        let (tokens, at) = buckets
            .entry(caller.to_string())
            .or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The `Host` values the metadata service answers to, with an optional port.
pub fn host_allowed(host: Option<&str>, agent_port: u16) -> bool {
    let Some(host) = host else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    let (name, port) = match host.rsplit_once(':') {
        // `[v6]:port` or `name:port`; a bare IPv6 literal has more than one colon.
        Some((n, p)) if !n.contains(':') || n.ends_with(']') => (n.to_string(), Some(p)),
        _ => (host.clone(), None),
    };
    let port_ok = match port {
        None => true,
        Some(p) => p == "80" || p.parse::<u16>().ok() == Some(agent_port),
    };
    port_ok
        && matches!(
            name.as_str(),
            "169.254.169.254" | "[fd00:ec2::254]" | "instance-data" | "instance-data.ec2.internal"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_caps_hold_and_free_on_drop() {
        let gate = ConnectionGate::new(3, 2);
        let a = Peer::Ip("10.0.0.1".parse().unwrap());
        let b = Peer::Cgroup(7);
        let p1 = gate.admit(a).unwrap();
        let _p2 = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "per-address cap");
        let _p3 = gate.admit(b).unwrap();
        assert!(gate.admit(b).is_none(), "total cap");
        drop(p1);
        assert_eq!(gate.open(), 2);
        assert!(gate.admit(b).is_some());
    }

    #[test]
    fn rate_allows_a_burst_then_the_rate() {
        let r = RequestRate::new(2, 3);
        let t0 = Instant::now();
        assert!((0..3).all(|_| r.allow("a", t0)));
        assert!(!r.allow("a", t0));
        assert!(r.allow("b", t0), "callers have their own buckets");
        assert!(r.allow("a", t0 + Duration::from_millis(500)));
        assert!(!r.allow("a", t0 + Duration::from_millis(600)));
    }

    #[test]
    fn host_check() {
        for ok in [
            "169.254.169.254",
            "169.254.169.254:80",
            "169.254.169.254:8000",
            "[fd00:ec2::254]",
            "[FD00:EC2::254]:80",
            "instance-data",
        ] {
            assert!(host_allowed(Some(ok), 8000), "{ok}");
        }
        for bad in [
            "evil.example",
            "169.254.169.254.evil.example",
            "169.254.169.254:81",
            "localhost",
            "",
        ] {
            assert!(!host_allowed(Some(bad), 8000), "{bad}");
        }
        assert!(!host_allowed(None, 8000));
    }
}
