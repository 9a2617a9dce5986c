//! systemd's notify protocol (`Type=notify`): one datagram to `$NOTIFY_SOCKET` per state change.
//!
//! `READY=1` once the database answered and the first reconcile scheduled the syncers,
//! `WATCHDOG=1` after every reconcile pass (so a hung scheduler loop is restarted by systemd's
//! `WatchdogSec=`), `STOPPING=1` when shutdown begins. Without `$NOTIFY_SOCKET` (not under
//! systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` to systemd; returns whether a notification was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        // An abstract socket address (Linux): '@' stands for the leading NUL byte.
        Some(name) => abstract_send(&socket, name, state),
        None => socket.send_to(state.as_bytes(), &path).is_ok(),
    };
    if !sent {
        tracing::debug!("could not send {state:?} to systemd's notify socket");
    }
    sent
}

#[cfg(target_os = "linux")]
fn abstract_send(socket: &UnixDatagram, name: &[u8], state: &str) -> bool {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
        .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        .is_ok()
}

#[cfg(not(target_os = "linux"))]
fn abstract_send(_socket: &UnixDatagram, _name: &[u8], _state: &str) -> bool {
    false
}

/// systemd's watchdog period (`$WATCHDOG_USEC`), when the unit sets `WatchdogSec=`.
pub fn watchdog_period() -> Option<Duration> {
    std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&usec| usec > 0)
        .map(Duration::from_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_notify_socket_nothing_is_sent() {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            assert!(!notify("READY=1"));
        }
    }
}
