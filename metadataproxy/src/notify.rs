//! The systemd notify protocol, sender side: `READY=1` in one datagram on the unix socket named
//! by `NOTIFY_SOCKET` (a path, or an abstract name written `@name`). A unit with `Type=notify`
//! counts the agent as started only then, so units ordered after it (`docker.service`) wait
//! for interception to be in place. Without `NOTIFY_SOCKET` (not run by systemd) nothing is
//! sent.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The message that tells the service manager start-up is complete.
pub const READY: &str = "READY=1";

/// Sends `message` to the socket named by `NOTIFY_SOCKET`; `Ok(false)` when it is unset or
/// empty.
pub fn notify_from_env(message: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => notify(&socket, message).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `message` in one datagram to `socket`: a filesystem path, or `@name` for a name in
/// the abstract namespace.
pub fn notify(socket: &OsStr, message: &str) -> io::Result<()> {
    let addr = address(socket)?;
    let sender = UnixDatagram::unbound()?;
    sender.send_to_addr(message.as_bytes(), &addr)?;
    Ok(())
}

fn address(socket: &OsStr) -> io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = socket.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        None if bytes.starts_with(b"/") => SocketAddr::from_pathname(socket),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "NOTIFY_SOCKET={}: expected an absolute path or @name",
                socket.to_string_lossy()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(listener: &UnixDatagram) -> String {
        listener
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("a datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn ready_reaches_a_socket_named_by_path() {
        let dir = std::env::temp_dir().join(format!("mp-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str(), READY).unwrap();
        assert_eq!(receive(&listener), "READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ready_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("mp-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        notify(OsStr::new(&format!("@{name}")), READY).unwrap();
        assert_eq!(receive(&listener), "READY=1");
    }

    #[test]
    fn a_relative_socket_name_is_an_error_naming_the_variable() {
        let e = notify(OsStr::new("notify.sock"), READY).unwrap_err();
        assert!(e.to_string().contains("NOTIFY_SOCKET=notify.sock"), "{e}");
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error() {
        assert!(notify(OsStr::new("/nonexistent/mp-notify.sock"), READY).is_err());
    }
}
