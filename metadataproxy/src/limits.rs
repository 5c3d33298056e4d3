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
            rate: 100,
            burst: 200,
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
    buckets: Mutex<HashMap<Peer, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// When this caller's last refusal was logged.
    logged: Option<Instant>,
    /// Refusals not logged since.
    unlogged: u64,
}

/// What [`RequestRate::check`] decides for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Served.
    Allow,
    /// Refused (429); `log` is `Some(n)` for the refusal that gets a log line (at most one a
    /// second per caller), `n` being the refusals since the last line that got none.
    Refuse {
        /// Whether to log this refusal, and how many went unlogged before it.
        log: Option<u64>,
    },
}

/// Callers remembered at most; past it, full buckets are dropped first.
const MAX_CALLERS: usize = 65_536;

/// One log line a second per refused caller.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

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
    pub fn allow(&self, caller: Peer, now: Instant) -> bool {
        self.check(caller, now) == RateVerdict::Allow
    }

    /// Takes a token for `caller` at `now`, and says whether a refusal is logged.
    pub fn check(&self, caller: Peer, now: Instant) -> RateVerdict {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_CALLERS && !buckets.contains_key(&caller) {
            // Forget callers whose bucket has refilled (they lose nothing); if every caller
            // is active, forget them all rather than grow without bound.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= MAX_CALLERS / 2 {
                buckets.clear();
            }
        }
        let b = buckets.entry(caller).or_insert(Bucket {
            tokens: self.burst,
            at: now,
            logged: None,
            unlogged: 0,
        });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.rate)
            .min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return RateVerdict::Allow;
        }
        let due = b
            .logged
            .is_none_or(|at| now.saturating_duration_since(at) >= REFUSAL_LOG_INTERVAL);
        if due {
            b.logged = Some(now);
            let unlogged = std::mem::take(&mut b.unlogged);
            RateVerdict::Refuse {
                log: Some(unlogged),
            }
        } else {
            b.unlogged += 1;
            RateVerdict::Refuse { log: None }
        }
    }
}

/// Request bodies held in memory at once, in all (`BODY_BUDGET`): real metadata requests carry
/// none, so this only bounds what stalled or slow bodies can pin, whatever the connection caps.
#[derive(Debug)]
pub struct BodyBudget(tokio::sync::Semaphore);

/// Bytes of request bodies the agent holds at once, across every connection.
pub const BODY_BUDGET: usize = 4 * 1024 * 1024;

impl BodyBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget(tokio::sync::Semaphore::new(bytes))
    }

    /// Takes `bytes` from the budget until the permit is dropped; `None` when it is spent.
    pub fn take(&self, bytes: usize) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.0.try_acquire_many(u32::try_from(bytes).ok()?).ok()
    }

    /// Bytes left.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

impl Default for BodyBudget {
    fn default() -> Self {
        BodyBudget::new(BODY_BUDGET)
    }
}

/// Headers that decide something and so may appear once only: with two, which one counts
/// would depend on who reads them.
const SINGLE_HEADERS: [&str; 3] = [
    "host",
    crate::imdsv2::TOKEN_HEADER,
    crate::imdsv2::TTL_HEADER,
];

/// The first of [`SINGLE_HEADERS`] that `headers` carries more than once.
pub fn duplicate_header(headers: &http::HeaderMap) -> Option<&'static str> {
    SINGLE_HEADERS
        .into_iter()
        .find(|name| headers.get_all(*name).iter().nth(1).is_some())
}

/// The `Host` values the metadata service answers to, with an optional port.
pub fn host_allowed(host: Option<&str>, agent_port: u16) -> bool {
    host_in(host, agent_port, &METADATA_HOSTS)
}

/// The `Host` values the container credentials endpoint answers to, with an optional port.
pub fn container_host_allowed(host: Option<&str>, agent_port: u16) -> bool {
    host_in(host, agent_port, &["169.254.170.2"])
}

const METADATA_HOSTS: [&str; 4] = [
    "169.254.169.254",
    "[fd00:ec2::254]",
    "instance-data",
    "instance-data.ec2.internal",
];

/// Whether `host` is one of `names`, with no port, port 80 or the agent's port.
fn host_in(host: Option<&str>, agent_port: u16, names: &[&str]) -> bool {
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
    port_ok && names.contains(&name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_answers_to_its_own_host_only() {
        for host in ["169.254.170.2", "169.254.170.2:80", "169.254.170.2:8002"] {
            assert!(container_host_allowed(Some(host), 8002), "{host}");
            assert!(!host_allowed(Some(host), 8002), "{host}");
        }
        for host in [
            "169.254.169.254",
            "instance-data",
            "169.254.170.2:81",
            "169.254.170.23",
        ] {
            assert!(!container_host_allowed(Some(host), 8002), "{host}");
        }
        assert!(!container_host_allowed(None, 8002));
        assert!(host_allowed(Some("169.254.169.254:8000"), 8000));
    }

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
        let (a, b) = (Peer::Cgroup(1), Peer::Cgroup(2));
        let t0 = Instant::now();
        assert!((0..3).all(|_| r.allow(a, t0)));
        assert!(!r.allow(a, t0));
        assert!(r.allow(b, t0), "callers have their own buckets");
        assert!(r.allow(a, t0 + Duration::from_millis(500)));
        assert!(!r.allow(a, t0 + Duration::from_millis(600)));
    }

    #[test]
    fn refusals_are_logged_once_a_second_with_the_count_between() {
        let r = RequestRate::new(2, 1);
        let (a, b) = (Peer::Cgroup(1), Peer::Cgroup(2));
        let t0 = Instant::now();
        assert_eq!(r.check(a, t0), RateVerdict::Allow);
        assert_eq!(r.check(a, t0), RateVerdict::Refuse { log: Some(0) });
        for _ in 0..5 {
            assert_eq!(r.check(a, t0), RateVerdict::Refuse { log: None });
        }
        assert_eq!(
            r.check(b, t0),
            RateVerdict::Allow,
            "callers have their own buckets"
        );
        // Refilled a token by 500 ms: served; the next refusal is within the second.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(r.check(a, t1), RateVerdict::Allow);
        assert_eq!(r.check(a, t1), RateVerdict::Refuse { log: None });
        let t2 = t0 + Duration::from_millis(1000);
        assert_eq!(r.check(a, t2), RateVerdict::Allow);
        assert_eq!(r.check(a, t2), RateVerdict::Refuse { log: Some(6) });
    }

    #[test]
    fn the_body_budget_is_shared_and_given_back() {
        let b = BodyBudget::new(100);
        let first = b.take(60).unwrap();
        assert!(b.take(50).is_none());
        let mut second = b.take(30).unwrap();
        second.merge(b.take(10).unwrap());
        assert_eq!(b.available(), 0);
        drop(first);
        drop(second);
        assert_eq!(b.available(), 100);
    }

    #[test]
    fn headers_that_decide_appear_once() {
        let mut h = http::HeaderMap::new();
        h.append("host", "169.254.169.254".parse().unwrap());
        h.append("x-aws-ec2-metadata-token", "a".parse().unwrap());
        h.append("accept", "a".parse().unwrap());
        h.append("accept", "b".parse().unwrap());
        assert_eq!(duplicate_header(&h), None);
        for name in SINGLE_HEADERS {
            let mut twice = h.clone();
            twice.append(name, "x".parse().unwrap());
            twice.append(name, "y".parse().unwrap());
            assert_eq!(duplicate_header(&twice), Some(name));
        }
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
