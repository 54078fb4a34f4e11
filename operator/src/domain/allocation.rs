//! Which game server gets a new match. No Kubernetes here: the caller describes each
//! server as a [`Slotted`] and gets back the index of the one to use.
//!
//! Never a server that is not ready, is draining, or is full; among the rest:
//! - `Packed`: the busiest server that still has room, so load concentrates and empty
//!   servers can be scaled away;
//! - `Distributed`: the emptiest (by share of its capacity), spreading load and blast
//!   radius.
//!
//! Ties go to the smaller name, so the choice is deterministic.

use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    Packed,
    Distributed,
}

/// One game server as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slotted {
    pub name: String,
    pub ready: bool,
    pub draining: bool,
    /// Sessions it can host at once.
    pub capacity: u32,
    /// Sessions it hosts or has been promised (reservations in flight included).
    pub used: u32,
}

impl Slotted {
    pub fn has_room(&self) -> bool {
        self.ready && !self.draining && self.used < self.capacity
    }
}

/// The server for the next match, or `None` when no server has room.
pub fn pick(servers: &[Slotted], strategy: Strategy) -> Option<usize> {
    pick_where(servers, strategy, |_| true)
}

/// [`pick`] among the servers whose index `allowed` accepts (the rest are skipped as if
/// draining): one pass, no copy of the list.
pub fn pick_where(
    servers: &[Slotted],
    strategy: Strategy,
    allowed: impl Fn(usize) -> bool,
) -> Option<usize> {
    servers
        .iter()
        .enumerate()
        .filter(|(i, s)| s.has_room() && allowed(*i))
        .min_by(|(_, a), (_, b)| rank(a, b, strategy).then_with(|| a.name.cmp(&b.name)))
        .map(|(i, _)| i)
}

/// `Less` means `a` is the better choice.
fn rank(a: &Slotted, b: &Slotted, strategy: Strategy) -> Ordering {
    // used/capacity compared without division: a.used * b.cap vs b.used * a.cap.
    let share = |x: &Slotted, y: &Slotted| {
        (x.used as u64 * y.capacity as u64).cmp(&(y.used as u64 * x.capacity as u64))
    };
    match strategy {
        // Busiest first: most sessions, then the fullest share.
        Strategy::Packed => b.used.cmp(&a.used).then_with(|| share(b, a)),
        // Emptiest share first, then the fewest sessions.
        Strategy::Distributed => share(a, b).then_with(|| a.used.cmp(&b.used)),
    }
}

/// Free slots over the servers that can take a match.
pub fn free_slots(servers: &[Slotted]) -> u32 {
    servers
        .iter()
        .filter(|s| s.ready && !s.draining)
        .map(|s| s.capacity.saturating_sub(s.used))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, used: u32, capacity: u32) -> Slotted {
        Slotted {
            name: name.into(),
            ready: true,
            draining: false,
            capacity,
            used,
        }
    }

    fn picked(servers: &[Slotted], strategy: Strategy) -> Option<&str> {
        pick(servers, strategy).map(|i| servers[i].name.as_str())
    }

    #[test]
    fn packed_fills_the_busiest_server_with_room() {
        let servers = [s("a", 1, 4), s("b", 3, 4), s("c", 4, 4), s("d", 0, 4)];
        assert_eq!(picked(&servers, Strategy::Packed), Some("b"));
    }

    #[test]
    fn distributed_takes_the_emptiest_share() {
        let servers = [s("a", 1, 4), s("b", 1, 2), s("c", 0, 4), s("d", 0, 8)];
        assert_eq!(
            picked(&servers, Strategy::Distributed),
            Some("c"),
            "tie on share 0: fewer used, then name"
        );
        let servers = [s("a", 2, 8), s("b", 1, 2)];
        assert_eq!(picked(&servers, Strategy::Distributed), Some("a"));
    }

    #[test]
    fn never_draining_unready_or_full() {
        let mut draining = s("a", 1, 4);
        draining.draining = true;
        let mut unready = s("b", 1, 4);
        unready.ready = false;
        let servers = [draining, unready, s("c", 4, 4), s("d", 9, 4)];
        for strategy in [Strategy::Packed, Strategy::Distributed] {
            assert_eq!(pick(&servers, strategy), None);
        }
        assert_eq!(free_slots(&servers), 0);
        assert_eq!(pick(&[], Strategy::Packed), None);
    }

    #[test]
    fn pick_where_skips_what_it_is_told_to() {
        let servers = [s("a", 3, 4), s("b", 1, 4)];
        assert_eq!(pick_where(&servers, Strategy::Packed, |i| i != 0), Some(1));
        assert_eq!(pick_where(&servers, Strategy::Packed, |_| false), None);
    }

    #[test]
    fn ties_go_to_the_smaller_name() {
        let servers = [s("b", 2, 4), s("a", 2, 4)];
        assert_eq!(picked(&servers, Strategy::Packed), Some("a"));
        assert_eq!(picked(&servers, Strategy::Distributed), Some("a"));
    }

    #[test]
    fn repeated_picks_never_exceed_capacity() {
        for strategy in [Strategy::Packed, Strategy::Distributed] {
            let mut servers: Vec<Slotted> = (0..5).map(|i| s(&format!("s{i}"), i % 3, 3)).collect();
            let mut placed = 0;
            while let Some(i) = pick(&servers, strategy) {
                servers[i].used += 1;
                placed += 1;
            }
            assert_eq!(placed, 11, "15 slots, 4 in use");
            assert!(servers.iter().all(|s| s.used <= s.capacity));
        }
    }
}
