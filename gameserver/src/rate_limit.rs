//! Per-source token buckets for datagrams. A source is an address and port: one
//! client socket. The table is bounded; under a flood of spoofed sources it forgets
//! idle entries first, then everything, rather than grow.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
}

pub struct RateLimiter {
    limit: RateLimit,
    buckets: HashMap<SocketAddr, Bucket>,
    max_sources: usize,
}

/// Entries idle this long are dropped first when the table is full.
const IDLE: Duration = Duration::from_secs(10);

impl RateLimiter {
    pub fn new(limit: RateLimit, max_sources: usize) -> Self {
        Self {
            limit,
            buckets: HashMap::with_capacity(max_sources.min(1 << 16)),
            max_sources,
        }
    }

    /// Takes one token for `source`; false when it has none left.
    pub fn allow(&mut self, source: SocketAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_sources {
            self.buckets
                .retain(|_, b| now.duration_since(b.last) < IDLE);
            if self.buckets.len() >= self.max_sources {
                self.buckets.clear();
            }
        }
        let limit = self.limit;
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: limit.burst,
            last: now,
        });
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

    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }
}
