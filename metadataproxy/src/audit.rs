//! The audit log: one structured line per credential issuance (a set of credentials served to
//! a container for the first time; serving it the same credentials again is not audited
//! again). To stdout with the other logs (target `metadataproxy::audit`), or, with
//! `AUDIT_LOG_FILE`, as JSON lines appended to that file only. Never a secret: the access key
//! id is not one (CloudTrail shows it); the secret key and the token are not written.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use crate::identity::Container;
use crate::roles::Credentials;

/// Where audit lines go.
#[derive(Debug)]
pub struct Audit {
    file: Option<Mutex<std::fs::File>>,
    /// (container id, access key id) pairs already written: a container that asks again for
    /// the same credentials has nothing new to audit (its request lines record each ask).
    seen: moka::sync::Cache<(String, String), ()>,
}

/// How many issuances are remembered; past it the oldest may be written again (a duplicate,
/// never a missing line).
const SEEN_CAPACITY: u64 = 65_536;

impl Default for Audit {
    fn default() -> Audit {
        Audit {
            file: None,
            seen: seen_cache(),
        }
    }
}

fn seen_cache() -> moka::sync::Cache<(String, String), ()> {
    moka::sync::Cache::builder()
        .max_capacity(SEEN_CAPACITY)
        // Credentials live at most 12 h (ROLE_SESSION_DURATION).
        .time_to_live(std::time::Duration::from_secs(12 * 3600))
        .build()
}

/// One issuance.
#[derive(Debug)]
pub struct Issued<'a> {
    /// The container served.
    pub container: &'a Container,
    /// The role assumed.
    pub role_arn: &'a str,
    /// What it got.
    pub credentials: &'a Credentials,
    /// How the caller was identified: `ip` (classic) or `cgroup` (eBPF).
    pub identity_source: &'static str,
    /// The peer address.
    pub remote_addr: IpAddr,
}

impl Audit {
    /// Audit lines to stdout (`None`) or appended to `path`.
    pub fn open(path: Option<&Path>) -> std::io::Result<Audit> {
        let file = match path {
            None => None,
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
        };
        Ok(Audit {
            file,
            seen: seen_cache(),
        })
    }

    /// Records an issuance.
    pub fn issued(&self, i: &Issued<'_>) {
        let key = (
            i.container.id.to_string(),
            i.credentials.access_key_id.clone(),
        );
        if self.seen.contains_key(&key) {
            return;
        }
        self.seen.insert(key, ());
        let expiration = crate::clock::format_time(i.credentials.expiration);
        match &self.file {
            None => tracing::info!(
                target: "metadataproxy::audit",
                container_id = %i.container.id,
                container_name = %i.container.name,
                image = %i.container.image,
                role_arn = i.role_arn,
                access_key_id = %i.credentials.access_key_id,
                expiration = %expiration,
                identity_source = i.identity_source,
                remote_addr = %i.remote_addr,
                "credentials issued"
            ),
            Some(file) => {
                let line = serde_json::json!({
                    "timestamp": crate::clock::format_time(std::time::SystemTime::now()),
                    "message": "credentials issued",
                    "container_id": i.container.id,
                    "container_name": i.container.name,
                    "image": i.container.image,
                    "role_arn": i.role_arn,
                    "access_key_id": i.credentials.access_key_id,
                    "expiration": expiration,
                    "identity_source": i.identity_source,
                    "remote_addr": i.remote_addr.to_string(),
                });
                let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = writeln!(f, "{line}") {
                    tracing::error!(error = %e, "cannot write the audit log");
                }
            }
        }
    }
}
