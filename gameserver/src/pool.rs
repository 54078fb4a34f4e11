//! `TankPool`: every tank the server can host, allocated once at start-up. Acquiring
//! and releasing never allocates, and a released tank is reset before reuse, so no
//! state leaks from one match into the next.

use crate::rules::{Rules, Tank};

/// Index of a tank in its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TankIdx(pub u32);

pub struct TankPool {
    tanks: Vec<Tank>,
    in_use: Vec<bool>,
    /// Free indices; popped from the end, so recently released tanks (warm in cache)
    /// are reused first.
    free: Vec<u32>,
}

impl TankPool {
    pub fn new(capacity: usize, rules: &Rules) -> Self {
        let tanks = (0..capacity)
            .map(|i| Tank::new(format!("tank_{i}"), rules))
            .collect();
        Self {
            tanks,
            in_use: vec![false; capacity],
            free: (0..capacity as u32).rev().collect(),
        }
    }

    pub fn acquire(&mut self) -> Option<TankIdx> {
        let i = self.free.pop()?;
        self.in_use[i as usize] = true;
        Some(TankIdx(i))
    }

    /// Resets the tank and makes it available again. Releasing a free tank is a no-op.
    pub fn release(&mut self, idx: TankIdx, rules: &Rules) {
        let i = idx.0 as usize;
        if self.in_use.get(i).copied().unwrap_or(false) {
            self.tanks[i].reset(rules);
            self.in_use[i] = false;
            self.free.push(idx.0);
        }
    }

    pub fn get(&self, idx: TankIdx) -> &Tank {
        &self.tanks[idx.0 as usize]
    }

    pub fn get_mut(&mut self, idx: TankIdx) -> &mut Tank {
        &mut self.tanks[idx.0 as usize]
    }

    /// Two distinct tanks, mutably (a shooter and its target).
    pub fn pair_mut(&mut self, a: TankIdx, b: TankIdx) -> Option<(&mut Tank, &mut Tank)> {
        let (a, b) = (a.0 as usize, b.0 as usize);
        if a == b || a >= self.tanks.len() || b >= self.tanks.len() {
            return None;
        }
        if a < b {
            let (lo, hi) = self.tanks.split_at_mut(b);
            Some((&mut lo[a], &mut hi[0]))
        } else {
            let (lo, hi) = self.tanks.split_at_mut(a);
            Some((&mut hi[0], &mut lo[b]))
        }
    }

    pub fn capacity(&self) -> usize {
        self.tanks.len()
    }

    pub fn in_use(&self) -> usize {
        self.tanks.len() - self.free.len()
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquires_until_empty_then_refuses() {
        let rules = Rules::default();
        let mut pool = TankPool::new(3, &rules);
        let got: Vec<_> = std::iter::from_fn(|| pool.acquire()).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(pool.in_use(), 3);
        assert!(pool.acquire().is_none());
        pool.release(got[1], &rules);
        assert_eq!(pool.acquire(), Some(got[1]));
    }

    #[test]
    fn released_tanks_come_back_reset() {
        let rules = Rules::default();
        let mut pool = TankPool::new(1, &rules);
        let idx = pool.acquire().unwrap();
        let tank = pool.get_mut(idx);
        tank.take_damage(60, 0, true, &rules);
        tank.team = 3;
        pool.release(idx, &rules);
        pool.release(idx, &rules); // twice is harmless
        assert_eq!(pool.available(), 1);
        let again = pool.acquire().unwrap();
        assert_eq!(pool.get(again).health, 100);
        assert_eq!(pool.get(again).team, 0);
        assert_eq!(pool.get(again).id(), "tank_0");
    }

    #[test]
    fn pair_mut_gives_two_tanks_or_none() {
        let rules = Rules::default();
        let mut pool = TankPool::new(3, &rules);
        let (a, b) = pool.pair_mut(TankIdx(2), TankIdx(0)).unwrap();
        assert_eq!((a.id(), b.id()), ("tank_2", "tank_0"));
        assert!(pool.pair_mut(TankIdx(1), TankIdx(1)).is_none());
        assert!(pool.pair_mut(TankIdx(1), TankIdx(9)).is_none());
    }
}
