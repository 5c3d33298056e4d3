//! Another interception mode's leftovers. An `EBPF_ON_SHUTDOWN=keep` run leaves its programs
//! attached (pinned under `EBPF_PIN_PATH`), an `IPTABLES_ON_SHUTDOWN=keep` run its nf_tables
//! table; under an agent started in another mode they keep acting on containers' metadata
//! connections (redirected to a port that may refuse them, or refused) while that agent
//! believes its own interception is in charge. The agent looks for them at start (a warning
//! each) and on every `/readyz`, which fails while any is there; `metadataproxy ebpf detach`
//! and `metadataproxy iptables remove` take them away.

use std::fmt;
use std::path::PathBuf;

use crate::config::{Config, Intercept};

/// Why the leftovers could not be looked for.
#[derive(Debug, thiserror::Error)]
pub enum LeftoverError {
    /// The kernel's nf_tables could not be read.
    #[error("cannot look for the nf_tables table: {0}")]
    Tables(#[source] crate::netfilter::NetfilterError),
}

/// What another mode left in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// Pinned links of an eBPF-mode run: its programs are attached.
    EbpfLinks {
        /// The pin directory.
        pin_path: PathBuf,
        /// The link pins in it.
        links: Vec<PathBuf>,
    },
    /// The agent's nf_tables table, as `nft` names it (`ip metadataproxy`).
    NftTable(String),
}

impl Leftover {
    /// The command that removes it.
    pub fn removal(&self) -> String {
        match self {
            Leftover::EbpfLinks { pin_path, .. } => format!(
                "metadataproxy ebpf detach --pin-path {}",
                pin_path.display()
            ),
            Leftover::NftTable(_) => "metadataproxy iptables remove".into(),
        }
    }

    /// What it is, for the `what` field of the log line.
    pub fn what(&self) -> &'static str {
        match self {
            Leftover::EbpfLinks { .. } => "ebpf_pins",
            Leftover::NftTable(_) => "nftables_table",
        }
    }

    /// Where it is, for the `location` field of the log line.
    pub fn location(&self) -> String {
        match self {
            Leftover::EbpfLinks { pin_path, .. } => pin_path.display().to_string(),
            Leftover::NftTable(table) => format!("table {table}"),
        }
    }
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Leftover::EbpfLinks { pin_path, links } => {
                let names: Vec<String> = links
                    .iter()
                    .filter_map(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                write!(
                    f,
                    "eBPF programs of an earlier INTERCEPT=ebpf run are still attached (pinned \
                     at {}: {}): they redirect containers' metadata connects to that run's \
                     port, not to this agent's interception; remove them with `{}`",
                    pin_path.display(),
                    names.join(", "),
                    self.removal()
                )
            }
            Leftover::NftTable(table) => write!(
                f,
                "nf_tables table {table} of an earlier INTERCEPT=iptables run is still there: it \
                 redirects or refuses containers' metadata connections before this agent's \
                 interception sees them; remove it with `{}`",
                self.removal()
            ),
        }
    }
}

/// Where to look, given the mode the agent runs in: everything but its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeftoverCheck {
    /// `EBPF_PIN_PATH`, when the agent is not in eBPF mode.
    pub ebpf_pin_path: Option<PathBuf>,
    /// Whether to look for the nf_tables table (the agent is not in iptables mode).
    pub nftables: bool,
}

impl LeftoverCheck {
    /// The checks for `config`'s mode.
    pub fn for_config(config: &Config) -> LeftoverCheck {
        LeftoverCheck {
            ebpf_pin_path: match config.intercept {
                Intercept::Ebpf(_) => None,
                _ => config.ebpf_pin_path.clone(),
            },
            nftables: !matches!(config.intercept, Intercept::Iptables(_)),
        }
    }

    /// What is there now. Blocking (a netlink round trip, a few `stat`s).
    pub fn find(&self) -> Result<Vec<Leftover>, LeftoverError> {
        let mut found = Vec::new();
        if let Some(pin_path) = &self.ebpf_pin_path {
            let links = crate::ebpf::pinned_links(pin_path);
            if !links.is_empty() {
                found.push(Leftover::EbpfLinks {
                    pin_path: pin_path.clone(),
                    links,
                });
            }
        }
        if self.nftables {
            match crate::netfilter::leftover::tables() {
                Ok(tables) => found.extend(tables.into_iter().map(Leftover::NftTable)),
                // Without CAP_NET_ADMIN (classic mode run as nobody) the table cannot be read,
                // and the operator's own rules are what matters there.
                Err(e) if is_permission(&e) => {}
                Err(e) => return Err(LeftoverError::Tables(e)),
            }
        }
        Ok(found)
    }

    /// Logs a warning for each leftover (or that the check failed); returns how many.
    pub fn warn(&self) -> usize {
        match self.find() {
            Ok(found) => {
                for l in &found {
                    tracing::warn!(
                        what = l.what(),
                        location = %l.location(),
                        remove_with = %l.removal(),
                        "{l}"
                    );
                }
                found.len()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check for other interception modes' leftovers");
                0
            }
        }
    }
}

fn is_permission(e: &crate::netfilter::NetfilterError) -> bool {
    use nix::errno::Errno;
    match e {
        crate::netfilter::NetfilterError::Kernel { source, .. } => {
            matches!(source.errno(), Some(Errno::EPERM) | Some(Errno::EACCES))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(intercept: &str) -> Config {
        Config::try_from(
            crate::config::Args::parse_from_vars(
                [
                    format!("--intercept={intercept}").as_str(),
                    "--ebpf-pin-path=/sys/fs/bpf/mp-x",
                ],
                [],
            )
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn each_mode_looks_for_the_other_modes_leftovers_only() {
        let pins = Some(PathBuf::from("/sys/fs/bpf/mp-x"));
        assert_eq!(
            LeftoverCheck::for_config(&config("none")),
            LeftoverCheck {
                ebpf_pin_path: pins.clone(),
                nftables: true
            }
        );
        assert_eq!(
            LeftoverCheck::for_config(&config("iptables")),
            LeftoverCheck {
                ebpf_pin_path: pins,
                nftables: false
            }
        );
        assert_eq!(
            LeftoverCheck::for_config(&config("ebpf")),
            LeftoverCheck {
                ebpf_pin_path: None,
                nftables: true
            }
        );
    }

    #[test]
    fn a_pin_directory_without_links_is_no_leftover() {
        let dir = std::env::temp_dir().join(format!("mp-leftover-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("maps-v1")).unwrap();
        let check = LeftoverCheck {
            ebpf_pin_path: Some(dir.clone()),
            nftables: false,
        };
        assert_eq!(check.find().unwrap(), vec![]);
        std::fs::write(dir.join("mp_connect4_link_b"), b"").unwrap();
        let found = check.find().unwrap();
        assert_eq!(
            found,
            vec![Leftover::EbpfLinks {
                pin_path: dir.clone(),
                links: vec![dir.join("mp_connect4_link_b")]
            }]
        );
        let text = found[0].to_string();
        assert!(text.contains("mp_connect4_link_b"), "{text}");
        assert!(
            text.contains(&format!(
                "metadataproxy ebpf detach --pin-path {}",
                dir.display()
            )),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_table_leftover_names_the_removal_command() {
        let l = Leftover::NftTable("ip metadataproxy".into());
        assert_eq!(l.location(), "table ip metadataproxy");
        assert!(l.to_string().contains("`metadataproxy iptables remove`"));
    }
}
