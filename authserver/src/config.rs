//! Command-line flags, each with an environment variable behind it. With none set the
//! server runs on embedded defaults: in-memory users, in-memory events, the
//! development token key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::password::HashParams;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "authserver",
    version,
    about = "Tanks auth server: register, login, verify and \
    logout over TCP (newline-delimited JSON), signed session tokens, audit events to Kafka."
)]
pub struct Config {
    /// TCP address clients connect to.
    #[arg(long, env = "AUTH_LISTEN_ADDR", default_value = "0.0.0.0:8888")]
    pub listen_addr: SocketAddr,

    /// HTTP address serving Prometheus `/metrics` and `/healthz`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8000")]
    pub metrics_addr: SocketAddr,

    /// Redis holding users, rate-limit counters and revoked tokens, e.g.
    /// redis://127.0.0.1:6379/0. Without it all three live in this process (lost on
    /// restart, not shared between replicas).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key this server writes, so several environments (or test
    /// runs) can share one Redis.
    #[arg(long, env = "AUTH_REDIS_PREFIX", default_value = tanks_core::protocol::auth::DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,

    /// Kafka bootstrap servers for `auth_events`, e.g. 127.0.0.1:9092. Without it events
    /// go to --events-file, or to a bounded in-memory buffer.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_brokers: Option<String>,

    /// Append events as JSON lines to this file when no Kafka is configured.
    #[arg(long, env = "AUTH_EVENTS_FILE")]
    pub events_file: Option<PathBuf>,

    /// File holding the token signing key (at least 32 bytes; a Kubernetes Secret in the
    /// cluster). The key may instead be given in the AUTH_TOKEN_KEY environment variable.
    /// Without either, a built-in development key is used and the log says so.
    #[arg(long, env = "TOKEN_KEY_FILE")]
    pub token_key_file: Option<PathBuf>,

    /// How long a session token stays valid, in seconds.
    #[arg(long, env = "AUTH_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,

    /// Most client connections open at once; more are answered with an error and closed.
    #[arg(long, env = "AUTH_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Seconds a connection may sit between requests before it is closed.
    #[arg(long, env = "AUTH_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Seconds a client has to finish a line once it started sending it.
    #[arg(long, env = "AUTH_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub read_timeout_secs: u64,

    /// Longest request line in bytes; a longer one is answered with an error and the
    /// connection closed.
    #[arg(long, env = "AUTH_MAX_LINE_BYTES", default_value_t = 4096)]
    pub max_line_bytes: usize,

    /// Password hashes computed at once (each takes a core and --argon2-memory-kib of
    /// memory). 0 means one per CPU core.
    #[arg(long, env = "AUTH_HASH_CONCURRENCY", default_value_t = 0)]
    pub hash_concurrency: usize,

    /// Argon2id memory cost in KiB (OWASP: at least 19456 with 2 iterations).
    #[arg(long, env = "AUTH_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,

    /// Argon2id iterations.
    #[arg(long, env = "AUTH_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Argon2id lanes.
    #[arg(long, env = "AUTH_ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,

    /// Allow Argon2id parameters below OWASP's advice (tests and benchmarks only).
    #[arg(long, env = "AUTH_ALLOW_WEAK_HASH", default_value_t = false)]
    pub allow_weak_hash: bool,

    /// Length of the rate-limit windows, in seconds.
    #[arg(long, env = "AUTH_RATE_WINDOW_SECS", default_value_t = 300)]
    pub rate_window_secs: u64,

    /// Failed logins per username per window before further attempts are refused
    /// without checking the password.
    #[arg(long, env = "AUTH_FAILURES_PER_USER", default_value_t = 10)]
    pub failures_per_user: u32,

    /// Failed logins per client address per window before that address is refused.
    #[arg(long, env = "AUTH_FAILURES_PER_IP", default_value_t = 100)]
    pub failures_per_ip: u32,

    /// Registrations per client address per window.
    #[arg(long, env = "AUTH_REGISTRATIONS_PER_IP", default_value_t = 30)]
    pub registrations_per_ip: u32,

    /// Most users the embedded (in-memory) store holds.
    #[arg(long, env = "AUTH_MAX_MEMORY_USERS", default_value_t = 1_000_000)]
    pub max_memory_users: usize,

    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, env = "AUTH_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
}

impl Config {
    /// The defaults, as if run with no flags (environment variables still apply).
    pub fn embedded() -> Self {
        Self::parse_from(["authserver"])
    }

    pub fn hash_params(&self) -> HashParams {
        HashParams {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
        }
    }

    pub fn hash_concurrency(&self) -> usize {
        if self.hash_concurrency > 0 {
            return self.hash_concurrency;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs.max(1))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_secs.max(1))
    }

    pub fn rate_window(&self) -> Duration {
        Duration::from_secs(self.rate_window_secs.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_defaults_are_embedded() {
        let config =
            Config::try_parse_from(["authserver", "--listen-addr", "127.0.0.1:1"]).unwrap();
        assert_eq!(config.listen_addr.port(), 1);
        assert!(config.redis_url.is_none() || std::env::var("REDIS_URL").is_ok());
        assert_eq!(config.hash_params(), HashParams::OWASP);
        assert!(config.hash_concurrency() >= 1);
    }
}
