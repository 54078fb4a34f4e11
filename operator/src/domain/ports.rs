//! Host ports for the `Dynamic` policy.
//!
//! A port is given when the pod is created, before the scheduler has picked a node, as
//! Agones does. The allocator hands out the least-used port of the range, so a port is
//! reused only once every port of the range is in use; the scheduler's NodePorts filter
//! then places a pod only on a node where its host port is free. Two servers on one node
//! therefore never share a port, and a range as large as the busiest node's server count
//! never runs out.

use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct PortAllocator {
    start: u16,
    end: u16,
    usage: HashMap<u16, u32>,
}

impl PortAllocator {
    /// `in_use`: the host ports of every existing server (all fleets share the nodes).
    pub fn new(start: u16, end: u16, in_use: impl IntoIterator<Item = u16>) -> Self {
        let mut usage = HashMap::new();
        for port in in_use {
            *usage.entry(port).or_insert(0) += 1;
        }
        PortAllocator {
            start,
            end: end.max(start),
            usage,
        }
    }

    /// The least-used port of the range (lowest number on a tie).
    pub fn allocate(&mut self) -> u16 {
        let mut best = (u32::MAX, self.start);
        for port in self.start..=self.end {
            let used = self.usage.get(&port).copied().unwrap_or(0);
            if used < best.0 {
                best = (used, port);
                if used == 0 {
                    break;
                }
            }
        }
        *self.usage.entry(best.1).or_insert(0) += 1;
        best.1
    }

    pub fn release(&mut self, port: u16) {
        if let Some(n) = self.usage.get_mut(&port) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ports_are_unique_until_the_range_is_used_up() {
        let mut a = PortAllocator::new(7000, 7099, [7000, 7001]);
        let got: HashSet<u16> = (0..98).map(|_| a.allocate()).collect();
        assert_eq!(got.len(), 98);
        assert!(!got.contains(&7000) && !got.contains(&7001));
        // Range exhausted once: reuse starts with the least used.
        assert_eq!(a.allocate(), 7000);
    }

    #[test]
    fn released_ports_come_back_first() {
        let mut a = PortAllocator::new(7000, 7002, []);
        let (p1, _p2, _p3) = (a.allocate(), a.allocate(), a.allocate());
        a.release(p1);
        assert_eq!(a.allocate(), p1);
    }
}
