//! Per-source token buckets for datagrams. A source is an address and port: one
//! client socket. The table is bounded; when a flood of spoofed sources fills it, a new
//! source takes the place of the one heard from least recently, so sources that keep
//! sending (players, and a real flooder) keep their buckets and stay limited. Clearing
//! the table instead would hand every flooder a fresh full bucket each time it filled.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for RateLimit {
    /// A seed client sends 30 moves per second; four times that leaves room for
    /// shots and jitter.
    fn default() -> Self {
        Self {
            per_second: 120.0,
            burst: 120.0,
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
    /// Heard from since it was (re)queued for eviction: the CLOCK reference bit.
    referenced: bool,
}

pub struct RateLimiter {
    limit: RateLimit,
    buckets: HashMap<SocketAddr, Bucket>,
    /// Every tracked source once, roughly oldest first: a second-chance (CLOCK) queue.
    /// Kept in step with `buckets` (same sources), and only pushed to when a source is
    /// added or requeued, not on every datagram, so the hot path stays one map lookup.
    order: VecDeque<SocketAddr>,
    max_sources: usize,
}

impl RateLimiter {
    pub fn new(limit: RateLimit, max_sources: usize) -> Self {
        let max_sources = max_sources.max(1);
        Self {
            limit,
            buckets: HashMap::with_capacity(max_sources.min(1 << 16)),
            order: VecDeque::with_capacity(max_sources.min(1 << 16)),
            max_sources,
        }
    }

    /// Takes one token for `source`; false when it has none left.
    pub fn allow(&mut self, source: SocketAddr, now: Instant) -> bool {
        let limit = self.limit;
        let bucket = match self.buckets.get_mut(&source) {
            Some(bucket) => {
                bucket.referenced = true;
                bucket
            }
            // A new source starts unreferenced: a spoofed one-datagram source is the
            // first to go, before any source that was heard from twice.
            None => {
                if self.buckets.len() >= self.max_sources {
                    self.evict_stalest();
                }
                self.order.push_back(source);
                self.buckets.entry(source).or_insert(Bucket {
                    tokens: limit.burst,
                    last: now,
                    referenced: false,
                })
            }
        };
        let refill = now.duration_since(bucket.last).as_secs_f64() * limit.per_second;
        bucket.tokens = (bucket.tokens + refill).min(limit.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops the source heard from least recently (approximately: the first in queue
    /// order not heard from since it was queued). A source heard from since is requeued
    /// with its newer time instead. Each requeue follows at least one datagram from that
    /// source, so the work is amortized O(1) per datagram, and one call ends within one
    /// pass over the queue since nothing is heard from during it.
    fn evict_stalest(&mut self) {
        while let Some(source) = self.order.pop_front() {
            let Some(bucket) = self.buckets.get_mut(&source) else {
                continue;
            };
            if std::mem::take(&mut bucket.referenced) {
                self.order.push_back(source);
            } else {
                self.buckets.remove(&source);
                return;
            }
        }
    }

    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let mut rl = RateLimiter::new(
            RateLimit {
                per_second: 10.0,
                burst: 5.0,
            },
            100,
        );
        let t0 = Instant::now();
        let passed = (0..20).filter(|_| rl.allow(addr(1), t0)).count();
        assert_eq!(passed, 5);
        assert!(rl.allow(addr(2), t0), "other sources have their own bucket");
        assert!(
            rl.allow(addr(1), t0 + Duration::from_millis(100)),
            "one token back after 100 ms"
        );
        assert!(!rl.allow(addr(1), t0 + Duration::from_millis(100)));
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut rl = RateLimiter::new(RateLimit::default(), 8);
        let t0 = Instant::now();
        for port in 0..1000 {
            rl.allow(addr(port), t0);
            assert!(rl.sources() <= 8);
            assert_eq!(rl.order.len(), rl.sources());
        }
    }

    fn spoofed(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0xC000_0000 + i), 4242))
    }

    #[test]
    fn a_spoofed_flood_filling_the_table_does_not_reset_the_limits() {
        const TABLE: usize = 64;
        let limit = RateLimit {
            per_second: 10.0,
            burst: 5.0,
        };
        let mut rl = RateLimiter::new(limit, TABLE);
        let t0 = Instant::now();
        let flooder = SocketAddr::from(([203, 0, 113, 7], 9999));
        let players: Vec<_> = (1..=8).map(addr).collect();
        // The flooder spends its burst; each player spends all but two tokens.
        assert_eq!((0..100).filter(|_| rl.allow(flooder, t0)).count(), 5);
        for &p in &players {
            for _ in 0..3 {
                assert!(rl.allow(p, t0));
            }
        }
        // Twenty times more spoofed sources than the table holds, one datagram each,
        // while the flooder keeps sending and the players send now and then. No time
        // passes, so no bucket earns a token: any datagram let through beyond the
        // players' two left would be a bucket handed out afresh.
        let mut flooder_passed = 0;
        let mut players_passed = vec![0; players.len()];
        for i in 0..(20 * TABLE as u32) {
            assert!(rl.allow(spoofed(i), t0), "a new source gets its burst");
            flooder_passed += usize::from(rl.allow(flooder, t0));
            if i % 16 == 0 {
                for (n, &p) in players.iter().enumerate() {
                    players_passed[n] += usize::from(rl.allow(p, t0));
                }
            }
            assert!(rl.sources() <= TABLE);
        }
        assert_eq!(flooder_passed, 0, "the flooder stayed limited");
        assert_eq!(
            players_passed,
            vec![2; players.len()],
            "each player kept its bucket: exactly the two tokens it had left"
        );
        // Once time passes the flooder earns tokens at the configured rate only.
        let later = t0 + Duration::from_millis(100);
        assert_eq!((0..100).filter(|_| rl.allow(flooder, later)).count(), 1);
    }

    #[test]
    fn the_stalest_source_makes_room() {
        let mut rl = RateLimiter::new(
            RateLimit {
                per_second: 1.0,
                burst: 1.0,
            },
            3,
        );
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(10);
        for port in 1..=3 {
            assert!(rl.allow(addr(port), t0));
        }
        // Source 1 was queued first but is heard from again; 2 is now the stalest.
        assert!(!rl.allow(addr(1), t1));
        assert!(rl.allow(addr(4), t1));
        assert!(!rl.allow(addr(1), t1), "source 1 kept its empty bucket");
        assert!(!rl.allow(addr(3), t1), "source 3 kept its empty bucket");
        assert!(
            rl.allow(addr(2), t1),
            "source 2 was dropped and starts afresh"
        );
    }
}
