//! Brute-force and flood limits: fixed-window counters of failed logins per username
//! and per client address, and of registrations per address.
//!
//! A login attempt is counted *before* its password is hashed, in one atomic step that
//! checks both limits and takes a slot from each ([`RateLimiter::login_attempt`]).
//! Checking first and counting after the hash would let every concurrent guess pass
//! the check while the others are still hashing: 64 guesses at once would cost 64
//! Argon2 verifications however low the limit. A successful login hands its slot back,
//! so the counters still count failures.
//!
//! With Redis the counters are shared by every replica (a Lua script, which Redis runs
//! atomically: the check, the `INCR`s and the expiry on the window's first hit, so
//! neither two replicas nor a crash between commands can break the count). Without
//! Redis they live in bounded maps in this process, both taken under their locks.
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

/// What [`RateLimiter::login_attempt`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginGate {
    /// Counted against the username and the address; the password may be checked.
    Allowed,
    /// A limit is reached: refuse without hashing. Nothing was counted.
    Blocked,
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
        reserve: Arc<redis::Script>,
        refund: Arc<redis::Script>,
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

/// Takes one slot from each key (KEYS) if none is at its limit (ARGV[2..]); the window
/// (ARGV[1], ms) starts on a key's first hit. Returns 1 if taken, 0 if refused. Refused
/// attempts are not counted: the counters stay at the limit rather than climb.
const RESERVE_SCRIPT: &str = r"
for i, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') >= tonumber(ARGV[i + 1]) then
    return 0
  end
end
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
end
return 1
";

/// After a correct password: clears the username's counter (KEYS[1]) and gives back
/// the address's slot (KEYS[2]) this attempt took, keeping its expiry.
const REFUND_SCRIPT: &str = r"
redis.call('DEL', KEYS[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
return 1
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
            reserve: Arc::new(redis::Script::new(RESERVE_SCRIPT)),
            refund: Arc::new(redis::Script::new(REFUND_SCRIPT)),
        };
        Self { limits, backend }
    }

    /// Counts a login attempt for `user` from `ip` before its password is checked, or
    /// refuses it when either limit is reached. Atomic: concurrent attempts (on any
    /// replica sharing the Redis) never take more slots than the limits hold.
    pub async fn login_attempt(&self, user: &str, ip: IpAddr) -> redis::RedisResult<LoginGate> {
        let ip = ip.to_string();
        let limits = self.limits;
        let taken = match &self.backend {
            Backend::Memory(maps) => {
                let now = Instant::now();
                // Always the username map first, then the address map: one lock order.
                let mut users = maps[&Bucket::UserFailures].lock().expect("limiter lock");
                let mut ips = maps[&Bucket::IpFailures].lock().expect("limiter lock");
                if users.count(user, now) >= limits.failures_per_user
                    || ips.count(&ip, now) >= limits.failures_per_ip
                {
                    false
                } else {
                    users.hit(user, now, limits.window);
                    ips.hit(&ip, now, limits.window);
                    true
                }
            }
            Backend::Redis {
                conn,
                prefix,
                reserve,
                ..
            } => {
                let taken: i64 = reserve
                    .key(redis_key(prefix, Bucket::UserFailures, user))
                    .key(redis_key(prefix, Bucket::IpFailures, &ip))
                    .arg(limits.window.as_millis() as u64)
                    .arg(limits.failures_per_user)
                    .arg(limits.failures_per_ip)
                    .invoke_async(&mut conn.clone())
                    .await?;
                taken == 1
            }
        };
        Ok(if taken {
            LoginGate::Allowed
        } else {
            LoginGate::Blocked
        })
    }

    /// Counts a failed login that never reached a password check (a malformed
    /// username) against the address.
    pub async fn login_failed(&self, ip: IpAddr) -> redis::RedisResult<()> {
        self.hit(&[(Bucket::IpFailures, &ip.to_string())]).await?;
        Ok(())
    }

    /// A correct password clears the username's failures and hands back the slot the
    /// attempt took from the address, but no more (one known account must not launder
    /// guesses against others).
    pub async fn login_succeeded(&self, user: &str, ip: IpAddr) -> redis::RedisResult<()> {
        let ip = ip.to_string();
        match &self.backend {
            Backend::Memory(maps) => {
                let now = Instant::now();
                let mut users = maps[&Bucket::UserFailures].lock().expect("limiter lock");
                let mut ips = maps[&Bucket::IpFailures].lock().expect("limiter lock");
                users.map.remove(user);
                if let Some(w) = ips.map.get_mut(&ip).filter(|w| w.ends > now) {
                    w.count = w.count.saturating_sub(1);
                }
                Ok(())
            }
            Backend::Redis {
                conn,
                prefix,
                refund,
                ..
            } => {
                refund
                    .key(redis_key(prefix, Bucket::UserFailures, user))
                    .key(redis_key(prefix, Bucket::IpFailures, &ip))
                    .invoke_async::<()>(&mut conn.clone())
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
                ..
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
            assert_eq!(
                limiter.login_attempt("alice", IP).await.unwrap(),
                LoginGate::Allowed
            );
        }
        assert_eq!(
            limiter.login_attempt("alice", IP).await.unwrap(),
            LoginGate::Blocked
        );
        assert_eq!(
            limiter.login_attempt("bob", IP).await.unwrap(),
            LoginGate::Allowed
        );
        limiter.login_succeeded("alice", IP).await.unwrap();
        assert_eq!(
            limiter.login_attempt("alice", IP).await.unwrap(),
            LoginGate::Allowed
        );
    }

    #[tokio::test]
    async fn address_attempts_block_every_user() {
        let limiter = RateLimiter::memory(limits());
        for i in 0..5 {
            let gate = limiter
                .login_attempt(&format!("user{i}"), IP)
                .await
                .unwrap();
            assert_eq!(gate, LoginGate::Allowed);
        }
        assert_eq!(
            limiter.login_attempt("someone", IP).await.unwrap(),
            LoginGate::Blocked
        );
        let other: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            limiter.login_attempt("someone", other).await.unwrap(),
            LoginGate::Allowed
        );
    }

    #[tokio::test]
    async fn a_success_gives_back_only_its_own_slot() {
        let limiter = RateLimiter::memory(limits());
        // Four guesses against others, then a correct login: the address keeps its
        // four failures, so one more attempt is all it has.
        for i in 0..4 {
            limiter.login_attempt(&format!("v{i}"), IP).await.unwrap();
        }
        assert_eq!(
            limiter.login_attempt("mine", IP).await.unwrap(),
            LoginGate::Allowed
        );
        limiter.login_succeeded("mine", IP).await.unwrap();
        assert_eq!(
            limiter.login_attempt("v9", IP).await.unwrap(),
            LoginGate::Allowed
        );
        assert_eq!(
            limiter.login_attempt("v10", IP).await.unwrap(),
            LoginGate::Blocked
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_attempts_take_at_most_the_limit() {
        let limiter = RateLimiter::memory(limits());
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.login_attempt("alice", IP).await.unwrap() })
            })
            .collect();
        let mut allowed = 0;
        for task in tasks {
            if task.await.unwrap() == LoginGate::Allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 3);
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
