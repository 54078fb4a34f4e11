//! Connections open per client address, so one address cannot hold every slot of a
//! server's global connection cap. Shared by the auth server's port and the game
//! server's TCP command port.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The open connections of each source. IPv6 addresses count per /64, the block one
/// host usually gets: otherwise a single host could rotate through addresses for free.
pub struct SourceConnections {
    max_per_source: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One open connection's place in [`SourceConnections`]; freed on drop.
pub struct SourceSlot {
    source: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl SourceConnections {
    pub fn new(max_per_source: usize) -> Self {
        Self {
            max_per_source: max_per_source.max(1),
            open: Arc::default(),
        }
    }

    /// A slot for a connection from `ip`, or None when its source is at the cap.
    pub fn try_open(&self, ip: IpAddr) -> Option<SourceSlot> {
        let source = source_of(ip);
        // The map holds plain counts: a poisoned lock leaves nothing half-updated.
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(source).or_insert(0);
        if *count >= self.max_per_source {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            source,
            open: self.open.clone(),
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.source) {
            *count -= 1;
            // Gone at zero: the map holds only sources with open connections.
            if *count == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// What counts as one source: an IPv4 address (also when IPv4-mapped), or an IPv6 /64.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_are_capped_per_source() {
        let caps = SourceConnections::new(2);
        let a = caps.try_open(ip("10.0.0.1")).unwrap();
        let _b = caps.try_open(ip("::ffff:10.0.0.1")).unwrap();
        assert!(
            caps.try_open(ip("10.0.0.1")).is_none(),
            "mapped IPv4 is the same"
        );
        assert!(caps.try_open(ip("10.0.0.2")).is_some());
        // The same host under IPv6 rotating the low 64 bits is one source.
        let _c = caps.try_open(ip("2001:db8::1")).unwrap();
        let _d = caps.try_open(ip("2001:db8::ffff:1")).unwrap();
        assert!(
            caps.try_open(ip("2001:db8::3")).is_none(),
            "one /64 is one source"
        );
        assert!(caps.try_open(ip("2001:db8:0:1::1")).is_some());
        drop(a);
        assert!(
            caps.try_open(ip("10.0.0.1")).is_some(),
            "a slot frees on close"
        );
        assert!(
            caps.open.lock().unwrap().len() <= 4,
            "empty sources are gone"
        );
    }
}
