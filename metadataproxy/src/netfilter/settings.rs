//! iptables mode's settings (`IPTABLES_INTERFACES`, `IPTABLES_ON_SHUTDOWN`).

use std::fmt;

/// iptables mode settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesConfig {
    /// Interfaces whose metadata traffic is redirected (`IPTABLES_INTERFACES`).
    pub interfaces: Vec<InterfaceMatch>,
    /// Clean-shutdown policy (`IPTABLES_ON_SHUTDOWN`).
    pub on_shutdown: RulesOnShutdown,
}

/// An interface name, or a prefix of names (`br-+`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceMatch {
    /// This interface.
    Exact(String),
    /// Every interface whose name starts with this.
    Prefix(String),
}

impl InterfaceMatch {
    /// Parses `docker0` or `br-+` / `br-*`; `None` for names the kernel cannot have.
    pub fn parse(s: &str) -> Option<InterfaceMatch> {
        let (name, prefix) = match s.strip_suffix(['+', '*']) {
            Some(p) => (p, true),
            None => (s, false),
        };
        // IFNAMSIZ is 16 with the NUL; no '/', ':' or white space in interface names.
        let valid = !name.is_empty()
            && name.len() < 16
            && name
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | ':' | '+' | '*'));
        match (valid, prefix) {
            (false, _) => None,
            (true, true) => Some(InterfaceMatch::Prefix(name.to_string())),
            (true, false) => Some(InterfaceMatch::Exact(name.to_string())),
        }
    }

    /// Whether the interface `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            InterfaceMatch::Exact(n) => n == name,
            InterfaceMatch::Prefix(p) => name.starts_with(p.as_str()),
        }
    }

    /// What the kernel compares the interface name register with: the name padded with NULs
    /// to 16 bytes, or the prefix alone.
    pub fn match_bytes(&self) -> Vec<u8> {
        match self {
            InterfaceMatch::Exact(n) => {
                let mut v = n.as_bytes().to_vec();
                v.resize(16, 0);
                v
            }
            InterfaceMatch::Prefix(p) => p.as_bytes().to_vec(),
        }
    }
}

impl fmt::Display for InterfaceMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterfaceMatch::Exact(n) => f.write_str(n),
            InterfaceMatch::Prefix(p) => write!(f, "{p}+"),
        }
    }
}

/// What a clean shutdown does with iptables mode's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesOnShutdown {
    /// Remove exactly the agent's table.
    Remove,
    /// Leave it: fail closed.
    Keep,
}
