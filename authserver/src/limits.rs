//! Brute-force and flood limits: fixed-window counters of failed logins per username
//! and per client address, and of registrations per address.
//!
//! With Redis the counters are shared by every replica (`INCR` plus an expiry on the
//! window's first hit, in one script so a crash between them cannot leave a counter
//! that never expires). Without Redis they live in bounded maps in this process.
//!
//! Counting failures per username whether or not the user exists keeps the limit
//! from revealing which accounts exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tanks_core::redis_store::ConnectionManager;

/// Most keys one in-memory counter map tracks. A full map (after dropping expired
/// windows) stops tracking new keys rather than growing; the per-address limit still
/// holds an attacker back, since filling the username map needs thousands of addresses.
pub const MEMORY_KEYS: usize = 200_000;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub window: Duration,
    pub failures_per_user: u32,
    pub failures_per_ip: u32,
    pub registrations_per_ip: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bucket {
    UserFailures,
    IpFailures,
    IpRegistrations,
}

impl Bucket {
    fn tag(self) -> &'static str {
        match self {
            Bucket::UserFailures => "fail:user",
            Bucket::IpFailures => "fail:ip",
            Bucket::IpRegistrations => "reg:ip",
        }
    }
}

/// What [`RateLimiter::login_gate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginGate {
    pub blocked: bool,
    /// Failures already counted for the username, so a success knows whether to reset.
    pub user_failures: u32,
}

#[derive(Clone)]
pub struct RateLimiter {
    limits: Limits,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<HashMap<Bucket, Mutex<Windows>>>),
    Redis {
        conn: ConnectionManager,
        prefix: String,
        script: Arc<redis::Script>,
    },
}

/// Increments each key, starting its window on the first hit; returns the new counts.
const INCR_SCRIPT: &str = r"
local counts = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
  counts[i] = n
end
return counts
";

impl RateLimiter {
    pub fn memory(limits: Limits) -> Self {
        let maps = [
            Bucket::UserFailures,
            Bucket::IpFailures,
            Bucket::IpRegistrations,
        ]
        .into_iter()
        .map(|b| (b, Mutex::new(Windows::default())))
        .collect();
        Self {
            limits,
            backend: Backend::Memory(Arc::new(maps)),
        }
    }

    pub fn redis(limits: Limits, conn: ConnectionManager, prefix: &str) -> Self {
        let backend = Backend::Redis {
            conn,
            prefix: format!("{prefix}rl:"),
            script: Arc::new(redis::Script::new(INCR_SCRIPT)),
        };
        Self { limits, backend }
    }

    /// Whether a login for `user` from `ip` may be checked at all.
    pub async fn login_gate(&self, user: &str, ip: IpAddr) -> redis::RedisResult<LoginGate> {
        let ip = ip.to_string();
        let [user_failures, ip_failures] = self
            .counts([(Bucket::UserFailures, user), (Bucket::IpFailures, &ip)])
            .await?;
        Ok(LoginGate {
            blocked: user_failures >= self.limits.failures_per_user
                || ip_failures >= self.limits.failures_per_ip,
            user_failures,
        })
    }

    /// Counts a failed login against the username (if it was well-formed) and the address.
    pub async fn login_failed(&self, user: Option<&str>, ip: IpAddr) -> redis::RedisResult<()> {
        let ip = ip.to_string();
        match user {
            Some(user) => {
                self.hit(&[(Bucket::UserFailures, user), (Bucket::IpFailures, &ip)])
                    .await?
            }
            None => self.hit(&[(Bucket::IpFailures, &ip)]).await?,
        };
        Ok(())
    }

    /// A correct password clears the username's failures (not the address's: one
    /// known account must not launder guesses against others).
    pub async fn login_succeeded(&self, user: &str, gate: LoginGate) -> redis::RedisResult<()> {
        if gate.user_failures == 0 {
            return Ok(());
        }
        match &self.backend {
            Backend::Memory(maps) => {
                maps[&Bucket::UserFailures]
                    .lock()
                    .expect("limiter lock")
                    .map
                    .remove(user);
                Ok(())
            }
            Backend::Redis { conn, prefix, .. } => {
                redis::cmd("DEL")
                    .arg(redis_key(prefix, Bucket::UserFailures, user))
                    .query_async::<()>(&mut conn.clone())
                    .await
            }
        }
    }

    /// Counts a registration attempt from `ip`; false once the address is over its limit.
    pub async fn register_allowed(&self, ip: IpAddr) -> redis::RedisResult<bool> {
        let counts = self
            .hit(&[(Bucket::IpRegistrations, &ip.to_string())])
            .await?;
        Ok(counts.first().copied().unwrap_or(0) <= self.limits.registrations_per_ip)
    }

    async fn counts<const N: usize>(
        &self,
        keys: [(Bucket, &str); N],
    ) -> redis::RedisResult<[u32; N]> {
        match &self.backend {
            Backend::Memory(maps) => {
                let now = Instant::now();
                Ok(keys.map(|(bucket, key)| {
                    maps[&bucket].lock().expect("limiter lock").count(key, now)
                }))
            }
            Backend::Redis { conn, prefix, .. } => {
                let mut cmd = redis::cmd("MGET");
                for (bucket, key) in keys {
                    cmd.arg(redis_key(prefix, bucket, key));
                }
                let got: Vec<Option<u32>> = cmd.query_async(&mut conn.clone()).await?;
                let mut out = [0; N];
                for (slot, value) in out.iter_mut().zip(got) {
                    *slot = value.unwrap_or(0);
                }
                Ok(out)
            }
        }
    }

    async fn hit(&self, keys: &[(Bucket, &str)]) -> redis::RedisResult<Vec<u32>> {
        match &self.backend {
            Backend::Memory(maps) => {
                let now = Instant::now();
                Ok(keys
                    .iter()
                    .map(|(bucket, key)| {
                        maps[bucket]
                            .lock()
                            .expect("limiter lock")
                            .hit(key, now, self.limits.window)
                    })
                    .collect())
            }
            Backend::Redis {
                conn,
                prefix,
                script,
            } => {
                let mut invocation = script.prepare_invoke();
                for (bucket, key) in keys {
                    invocation.key(redis_key(prefix, *bucket, key));
                }
                invocation.arg(self.limits.window.as_millis() as u64);
                invocation.invoke_async(&mut conn.clone()).await
            }
        }
    }
}

fn redis_key(prefix: &str, bucket: Bucket, key: &str) -> String {
    format!("{prefix}{}:{key}", bucket.tag())
}

/// One bucket's in-memory windows.
#[derive(Default)]
struct Windows {
    map: HashMap<String, Window>,
    /// No full sweep before this instant: sweeping a full map on every insert would
    /// turn a flood of new keys into quadratic work.
    next_sweep: Option<Instant>,
}

struct Window {
    count: u32,
    ends: Instant,
}

impl Windows {
    fn count(&self, key: &str, now: Instant) -> u32 {
        self.map
            .get(key)
            .filter(|w| w.ends > now)
            .map_or(0, |w| w.count)
    }

    fn hit(&mut self, key: &str, now: Instant, window: Duration) -> u32 {
        if let Some(w) = self.map.get_mut(key) {
            if w.ends <= now {
                *w = Window {
                    count: 0,
                    ends: now + window,
                };
            }
            w.count = w.count.saturating_add(1);
            return w.count;
        }
        if self.map.len() >= MEMORY_KEYS {
            if self.next_sweep.is_some_and(|t| t > now) {
                return 1;
            }
            self.map.retain(|_, w| w.ends > now);
            self.next_sweep = Some(now + Duration::from_secs(1));
            if self.map.len() >= MEMORY_KEYS {
                tracing::warn!(
                    keys = self.map.len(),
                    "rate-limit map full; not tracking a new key"
                );
                return 1;
            }
        }
        self.map.insert(
            key.to_owned(),
            Window {
                count: 1,
                ends: now + window,
            },
        );
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            window: Duration::from_secs(60),
            failures_per_user: 3,
            failures_per_ip: 5,
            registrations_per_ip: 2,
        }
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn user_failures_block_then_success_resets() {
        let limiter = RateLimiter::memory(limits());
        for _ in 0..3 {
            assert!(!limiter.login_gate("alice", IP).await.unwrap().blocked);
            limiter.login_failed(Some("alice"), IP).await.unwrap();
        }
        let gate = limiter.login_gate("alice", IP).await.unwrap();
        assert!(gate.blocked);
        assert!(!limiter.login_gate("bob", IP).await.unwrap().blocked);
        limiter.login_succeeded("alice", gate).await.unwrap();
        assert!(!limiter.login_gate("alice", IP).await.unwrap().blocked);
    }

    #[tokio::test]
    async fn address_failures_block_every_user() {
        let limiter = RateLimiter::memory(limits());
        for i in 0..5 {
            limiter
                .login_failed(Some(&format!("user{i}")), IP)
                .await
                .unwrap();
        }
        assert!(limiter.login_gate("someone", IP).await.unwrap().blocked);
        let other: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(!limiter.login_gate("someone", other).await.unwrap().blocked);
    }

    #[tokio::test]
    async fn registrations_per_address() {
        let limiter = RateLimiter::memory(limits());
        assert!(limiter.register_allowed(IP).await.unwrap());
        assert!(limiter.register_allowed(IP).await.unwrap());
        assert!(!limiter.register_allowed(IP).await.unwrap());
    }

    #[test]
    fn windows_expire_and_the_map_stays_bounded() {
        let mut windows = Windows::default();
        let now = Instant::now();
        let window = Duration::from_secs(1);
        assert_eq!(windows.hit("k", now, window), 1);
        assert_eq!(windows.hit("k", now, window), 2);
        assert_eq!(windows.count("k", now + window), 0);
        assert_eq!(windows.hit("k", now + window, window), 1);
        for i in 0..MEMORY_KEYS + 10 {
            windows.hit(&i.to_string(), now, window);
        }
        assert!(windows.map.len() <= MEMORY_KEYS);
    }
}
