//! Command-line flags, each with an environment variable behind it. With none set the
//! server runs on embedded defaults (in-memory users, in-memory events) but refuses the
//! public development token key unless `--dev` says this is a development run.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tanks_core::protocol::auth::Messages;
use tanks_core::proxy_protocol::TrustedProxies;
use tanks_core::token::{TokenSigner, is_development_key};

use crate::password::HashParams;

/// The environment variable that may hold the token key itself.
pub const TOKEN_KEY_ENV: &str = "AUTH_TOKEN_KEY";

/// Which texts login answers carry, see [`Messages`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum MessageTexts {
    /// The prototype's (Russian) texts, so its clients work unchanged.
    #[default]
    Prototype,
    /// English texts.
    English,
}

impl From<MessageTexts> for Messages {
    fn from(texts: MessageTexts) -> Self {
        match texts {
            MessageTexts::Prototype => Messages::Prototype,
            MessageTexts::English => Messages::English,
        }
    }
}

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
    /// Without either the server refuses to start, unless --dev allows the built-in
    /// development key.
    #[arg(long, env = "TOKEN_KEY_FILE")]
    pub token_key_file: Option<PathBuf>,

    /// Development run: allow the built-in development token key (public, so anyone can
    /// forge tokens with it). Without this flag the server refuses to start on it.
    #[arg(long = "dev", env = "AUTH_DEV", default_value_t = false,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub dev: bool,

    /// Texts of the login answers' `message`: the prototype's (`Пользователь <name>
    /// успешно аутентифицирован.`), so clients written for it work unchanged, or English.
    #[arg(long, env = "AUTH_MESSAGES", value_enum, default_value_t = MessageTexts::Prototype)]
    pub messages: MessageTexts,

    /// How long a session token stays valid, in seconds.
    #[arg(long, env = "AUTH_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,

    /// Most client connections open at once; more are answered with an error and closed.
    #[arg(long, env = "AUTH_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most connections open at once from one client address (IPv6: one /64), so one
    /// client cannot hold every slot of --max-connections; more are answered with an
    /// error and closed. Game servers log players in through this port from their own
    /// address, so leave room for their login bursts.
    #[arg(long, env = "AUTH_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 256)]
    pub max_connections_per_source: usize,

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

    /// Expect a PROXY protocol header (v1 or v2) at the start of every connection from
    /// --trusted-proxies (the Nginx edge), and take the client's address from it for
    /// the per-source connection cap, the rate limits and audit events. A trusted
    /// proxy's connection without a valid header within --read-timeout-secs is
    /// refused; a header from any other address is refused (anyone could claim any
    /// address with it); other addresses connect directly as before.
    #[arg(long, env = "AUTH_PROXY_PROTOCOL", default_value_t = false,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub proxy_protocol: bool,

    /// The addresses allowed to send PROXY headers: comma-separated IP addresses or
    /// CIDR ranges, e.g. 10.244.0.0/16 (the edge pods' network). Required by, and
    /// only meaningful with, --proxy-protocol.
    #[arg(long, env = "AUTH_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,

    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, env = "AUTH_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
}

impl Config {
    /// The defaults, as if run with no flags (environment variables still apply).
    pub fn embedded() -> Self {
        Self::parse_from(["authserver"])
    }

    /// The token signer from --token-key-file, else AUTH_TOKEN_KEY, else the built-in
    /// development key; the bool says whether it is the development key.
    pub fn token_signer(&self) -> anyhow::Result<(TokenSigner, bool)> {
        self.token_signer_with(std::env::var_os(TOKEN_KEY_ENV))
    }

    fn token_signer_with(&self, from_env: Option<OsString>) -> anyhow::Result<(TokenSigner, bool)> {
        match (&self.token_key_file, from_env.filter(|k| !k.is_empty())) {
            (None, Some(key)) => {
                let key = key.into_encoded_bytes();
                let key = key.trim_ascii();
                let signer =
                    TokenSigner::new(key).map_err(|e| anyhow::anyhow!("{TOKEN_KEY_ENV}: {e}"))?;
                Ok((signer, is_development_key(key)))
            }
            (file, _) => TokenSigner::from_key_file(file.as_deref()),
        }
    }

    /// What the binary checks before starting: the token key loads, and is not the
    /// development key unless --dev. The error is one line saying why and what to do.
    pub fn check_token_key(&self) -> anyhow::Result<()> {
        let (_, development_key) = self.token_signer()?;
        refuse_development_key(development_key, self.dev).map_err(anyhow::Error::msg)
    }

    /// Whose PROXY headers are believed, or None without --proxy-protocol; an error
    /// for the two flags without each other.
    pub fn proxy_protocol(&self) -> anyhow::Result<Option<TrustedProxies>> {
        match (self.proxy_protocol, self.trusted_proxies.is_empty()) {
            (true, false) => Ok(Some(self.trusted_proxies.clone())),
            (false, true) => Ok(None),
            (true, true) => anyhow::bail!(
                "--proxy-protocol needs --trusted-proxies (AUTH_TRUSTED_PROXIES): the \
                 addresses of the proxies whose headers to believe, e.g. 10.244.0.0/16"
            ),
            (false, false) => anyhow::bail!(
                "--trusted-proxies is set but --proxy-protocol (AUTH_PROXY_PROTOCOL) is \
                 not: turn it on, or drop --trusted-proxies"
            ),
        }
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

/// The decision: the public development key only in a development run.
pub fn refuse_development_key(development_key: bool, dev: bool) -> Result<(), String> {
    if development_key && !dev {
        return Err(format!(
            "refusing to start with the built-in development token key (it is public: \
             anyone could forge session tokens); give a key with --token-key-file \
             (TOKEN_KEY_FILE) or {TOKEN_KEY_ENV} (hack/gen-secrets makes one), or pass \
             --dev (AUTH_DEV=1) for a local development run"
        ));
    }
    Ok(())
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

    #[test]
    fn the_development_key_needs_the_dev_flag() {
        assert!(refuse_development_key(false, false).is_ok());
        assert!(refuse_development_key(false, true).is_ok());
        assert!(refuse_development_key(true, true).is_ok());
        let why = refuse_development_key(true, false).unwrap_err();
        assert!(!why.contains('\n'), "one line: {why}");
        for hint in ["development token key", "--token-key-file", "--dev"] {
            assert!(why.contains(hint), "{why}");
        }
    }

    #[test]
    fn every_way_of_giving_the_development_key_counts_as_it() {
        let mut config = Config::try_parse_from(["authserver"]).unwrap();
        config.token_key_file = None;
        // Nothing configured: the built-in key.
        assert!(config.token_signer_with(None).unwrap().1);
        assert!(config.token_signer_with(Some("".into())).unwrap().1);
        // The same bytes in the environment variable.
        let dev = String::from_utf8(tanks_core::token::DEVELOPMENT_KEY.to_vec()).unwrap();
        assert!(config.token_signer_with(Some(dev.into())).unwrap().1);
        // A real key.
        let real = "k".repeat(40);
        assert!(!config.token_signer_with(Some(real.into())).unwrap().1);
        // A short one is an error naming the variable.
        let err = config.token_signer_with(Some("short".into())).unwrap_err();
        assert!(err.to_string().contains(TOKEN_KEY_ENV), "{err}");
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies_and_the_other_way_round() {
        let parse = |args: &[&str]| {
            let mut all = vec!["authserver"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).unwrap().proxy_protocol()
        };
        if std::env::var_os("AUTH_PROXY_PROTOCOL").is_none()
            && std::env::var_os("AUTH_TRUSTED_PROXIES").is_none()
        {
            assert!(parse(&[]).unwrap().is_none());
            let err = parse(&["--proxy-protocol"]).unwrap_err().to_string();
            assert!(err.contains("--trusted-proxies"), "{err}");
            let err = parse(&["--trusted-proxies", "10.0.0.0/8"])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--proxy-protocol"), "{err}");
        }
        let trusted = parse(&["--proxy-protocol", "--trusted-proxies", "10.0.0.0/8,::1"])
            .unwrap()
            .unwrap();
        assert!(trusted.contains("10.2.3.4".parse().unwrap()));
        let bad = Config::try_parse_from(["authserver", "--trusted-proxies", "10.0.0.0/99"]);
        assert!(bad.unwrap_err().to_string().contains("CIDR"));
    }

    #[test]
    fn dev_flag_and_message_texts_parse() {
        let config = Config::try_parse_from(["authserver", "--dev"]).unwrap();
        assert!(config.dev);
        let config = Config::try_parse_from(["authserver", "--messages", "english"]).unwrap();
        assert_eq!(Messages::from(config.messages), Messages::English);
        assert!(Config::try_parse_from(["authserver", "--messages", "klingon"]).is_err());
        if std::env::var_os("AUTH_MESSAGES").is_none() {
            let config = Config::try_parse_from(["authserver"]).unwrap();
            assert_eq!(Messages::from(config.messages), Messages::Prototype);
        }
    }
}
