//! Free TCP ports on 127.0.0.1, never handed out twice per process.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, TcpListener},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use crate::{wait_until, TestkitError};

/// How many ephemeral ports are tried before giving up.
const MAX_PORT_ATTEMPTS: u32 = 200;

/// Ports already handed out in this process; a port is never returned twice, which
/// keeps two servers started in parallel tests from racing for the same port.
static HANDED_OUT_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Returns a port on 127.0.0.1 that was free a moment ago and was never returned
/// before by this process.
///
/// The listener is dropped before returning, so another process may still take the
/// port; server start-up retries with new ports when that happens.
pub fn free_port() -> Result<u16, TestkitError> {
    for _ in 0..MAX_PORT_ATTEMPTS {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|source| TestkitError::io("bind 127.0.0.1:0", source))?;
        let port = listener
            .local_addr()
            .map_err(|source| TestkitError::io("read local address of listener", source))?
            .port();
        let mut handed_out = HANDED_OUT_PORTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(TestkitError::NoFreePort {
        attempts: MAX_PORT_ATTEMPTS,
    })
}

/// Whether 127.0.0.1:`port` can be bound right now.
pub(crate) fn is_port_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Waits until 127.0.0.1:`port` can be bound, e.g. after a server was stopped.
pub(crate) fn wait_until_port_free(port: u16, timeout: Duration) -> Result<(), TestkitError> {
    wait_until(
        timeout,
        Duration::from_millis(50),
        &format!("port {port} to become free"),
        || is_port_free(port),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() -> Result<(), TestkitError> {
        let first = free_port()?;
        let second = free_port()?;
        assert_ne!(first, second);
        assert!(is_port_free(first));
        Ok(())
    }
}
