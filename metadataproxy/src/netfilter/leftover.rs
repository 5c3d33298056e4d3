//! The agent's table as a leftover: an earlier `INTERCEPT=iptables` run that kept it
//! (`IPTABLES_ON_SHUTDOWN=keep`, a `SIGKILL`) under an agent now in another mode, which the
//! table would keep redirecting or refusing containers' metadata connections from. Found by
//! name, in each family the agent may have used; removed by name, whoever left it.

use super::netlink::{Message, Socket, NFPROTO_IPV4};
use super::{kernel, NetfilterError, TABLE};

/// `NFPROTO_IPV6`: an `ip6 metadataproxy` table is the agent's too.
const NFPROTO_IPV6: u8 = 10;

/// The families the agent's table may exist in, with their `nft` names.
const FAMILIES: [(u8, &str); 2] = [(NFPROTO_IPV4, "ip"), (NFPROTO_IPV6, "ip6")];

/// The agent's tables that exist now, as `nft` names them (`ip metadataproxy`).
pub fn tables() -> Result<Vec<String>, NetfilterError> {
    let mut sock = Socket::open().map_err(kernel)?;
    let mut found = Vec::new();
    for (family, name) in FAMILIES {
        if sock.table_handle(family, TABLE).map_err(kernel)?.is_some() {
            found.push(format!("{name} {TABLE}"));
        }
    }
    Ok(found)
}

/// Deletes the agent's tables, in each family; returns those it deleted (none: there was
/// nothing to remove).
pub fn remove() -> Result<Vec<String>, NetfilterError> {
    let mut sock = Socket::open().map_err(kernel)?;
    let mut removed = Vec::new();
    for (family, name) in FAMILIES {
        match sock.batch(
            "remove the interception table",
            &[Message::del_table(family, TABLE, None)],
        ) {
            Ok(_) => removed.push(format!("{name} {TABLE}")),
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(kernel(e)),
        }
    }
    Ok(removed)
}
