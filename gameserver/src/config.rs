//! Command-line flags (each with an environment variable) and the settings they make.
//! With no flags at all the server runs on embedded defaults: no brokers, events to a
//! local file, the development token key and control secret.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use tanks_core::events::{KafkaSettings, SinkConfig};
use tanks_core::protocol::control::DEFAULT_CONTROL_PORT;
use tanks_core::protocol::game::DEFAULT_METRICS_PORT;
use tanks_core::protocol::game::tcp::DEFAULT_TCP_PORT;
use tanks_core::protocol::game::udp::DEFAULT_UDP_PORT;
use tanks_core::rabbit::{MATCHMAKING_EVENTS, PLAYER_COMMANDS};
use tanks_core::token::TokenSigner;

use crate::rate_limit::RateLimit;
use crate::revocation::{RevocationSettings, WhenUnavailable};
use crate::rules::Rules;
use crate::sessions::ManagerConfig;
use crate::tcp::TcpLimits;

/// Used when no control secret is configured, so a fresh checkout runs; never in production.
pub const DEVELOPMENT_CONTROL_SECRET: &str = "tanks-development-control-secret";

/// How `move` and `shoot` reach the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CommandPath {
    /// Queued for the next tick by the receiving thread: the real-time path.
    Direct,
    /// Published to the command queue, applied by the PlayerCommandConsumer (the seed's flow).
    Broker,
}

impl CommandPath {
    pub fn label(self) -> &'static str {
        match self {
            CommandPath::Direct => "direct",
            CommandPath::Broker => "broker",
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "gameserver",
    version,
    about = "Authoritative tank-battle game server (UDP play, TCP commands, control interface for the operator)"
)]
pub struct Args {
    /// UDP address players send datagrams to.
    #[arg(long, env = "GAMESERVER_UDP_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_UDP_PORT)))]
    pub udp_addr: SocketAddr,
    /// TCP address for text commands (LOGIN, MOVE, SHOOT).
    #[arg(long, env = "GAMESERVER_TCP_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_TCP_PORT)))]
    pub tcp_addr: SocketAddr,
    /// Control interface for the operator (keep it off the players' network).
    #[arg(long, env = "GAMESERVER_CONTROL_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_CONTROL_PORT)))]
    pub control_addr: SocketAddr,
    /// Prometheus metrics.
    #[arg(long, env = "GAMESERVER_METRICS_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_METRICS_PORT)))]
    pub metrics_addr: SocketAddr,
    /// This server's name in events and load reports (the pod name under the operator).
    #[arg(long, env = "GAMESERVER_NAME")]
    pub server_name: Option<String>,

    /// Simulation ticks (and snapshots) per second.
    #[arg(long, env = "GAMESERVER_TICK_RATE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=240))]
    pub tick_rate: u32,
    /// Sessions hosted at once.
    #[arg(long, env = "GAMESERVER_MAX_SESSIONS", default_value_t = 512)]
    pub max_sessions: usize,
    /// Players per session (7 vs 7 by default).
    #[arg(long, env = "GAMESERVER_PLAYERS_PER_SESSION", default_value_t = 14)]
    pub players_per_session: usize,
    /// A match lasts this many seconds (0: until one team is left or everyone leaves).
    #[arg(long, env = "GAMESERVER_MATCH_SECONDS", default_value_t = 300)]
    pub match_seconds: u64,
    /// Whether players may join without a match, the seed's way.
    #[arg(long, env = "GAMESERVER_OPEN_SESSIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub open_sessions: bool,
    /// Seconds of silence after which a player is removed.
    #[arg(long, env = "GAMESERVER_PLAYER_TIMEOUT_SECONDS", default_value_t = 30)]
    pub player_timeout_seconds: u64,
    /// Map size, units.
    #[arg(long, env = "GAMESERVER_MAP_SIZE", default_value_t = 1000.0)]
    pub map_size: f64,
    /// Fastest a tank goes, units per second.
    #[arg(long, env = "GAMESERVER_MAX_SPEED", default_value_t = 150.0)]
    pub max_speed: f64,

    /// Refuse `join_game` without a valid token (the default under the operator).
    #[arg(long, env = "GAMESERVER_REQUIRE_TOKEN", default_value_t = false, action = clap::ArgAction::Set)]
    pub require_token: bool,
    /// File holding the token signing key (shared with the auth server).
    #[arg(long, env = "TANKS_TOKEN_KEY_FILE")]
    pub token_key_file: Option<PathBuf>,
    /// File holding the control interface's bearer secret.
    #[arg(long, env = "GAMESERVER_CONTROL_SECRET_FILE")]
    pub control_secret_file: Option<PathBuf>,
    /// The auth server's Redis, where a logout revokes its token: joins with a revoked
    /// token are refused. Without it, a logged-out token joins until it expires.
    #[arg(long, env = "GAMESERVER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// The auth server's Redis key prefix (its `--redis-prefix`).
    #[arg(long, env = "GAMESERVER_REDIS_PREFIX", default_value = tanks_core::protocol::auth::DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,
    /// Longest wait for Redis at a join, milliseconds (the UDP thread waits).
    #[arg(long, env = "GAMESERVER_REVOCATION_TIMEOUT_MS", default_value_t = 50)]
    pub revocation_timeout_ms: u64,
    /// When Redis cannot say whether a token was revoked: `open` lets it join (counted),
    /// `closed` refuses it.
    #[arg(long, env = "GAMESERVER_REVOCATION_WHEN_UNAVAILABLE", value_enum, default_value_t = WhenUnavailable::Open)]
    pub revocation_when_unavailable: WhenUnavailable,
    /// The auth server, for TCP `LOGIN` (newline JSON over TCP).
    #[arg(long, env = "GAMESERVER_AUTH_ADDR", default_value = "127.0.0.1:8888")]
    pub auth_addr: String,

    /// RabbitMQ URI. Without it, commands travel in-process.
    #[arg(long, env = "GAMESERVER_AMQP_URL")]
    pub amqp_url: Option<String>,
    /// This server's player command queue (one per server when there are several).
    #[arg(long, env = "GAMESERVER_COMMAND_QUEUE", default_value = PLAYER_COMMANDS)]
    pub command_queue: String,
    /// How UDP `move`/`shoot` reach the game.
    #[arg(long, env = "GAMESERVER_COMMAND_PATH", value_enum, default_value_t = CommandPath::Direct)]
    pub command_path: CommandPath,
    /// Consume matchmaking events and create sessions from them (standalone; under the
    /// operator the operator consumes them and calls the control interface).
    #[arg(long, env = "GAMESERVER_CONSUME_MATCHMAKING", default_value_t = true, action = clap::ArgAction::Set)]
    pub consume_matchmaking: bool,
    #[arg(long, env = "GAMESERVER_MATCHMAKING_QUEUE", default_value = MATCHMAKING_EVENTS)]
    pub matchmaking_queue: String,
    /// Unacked RabbitMQ messages in flight per consumer.
    #[arg(long, env = "GAMESERVER_PREFETCH", default_value_t = 256)]
    pub prefetch: u16,

    /// Kafka bootstrap servers. Without them, events go to --events-file.
    #[arg(long, env = "GAMESERVER_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// JSON-lines file for events when Kafka is not configured (default: in the temp dir).
    #[arg(long, env = "GAMESERVER_EVENTS_FILE")]
    pub events_file: Option<PathBuf>,
    /// Publish tank coordinates every this many ticks (0: never).
    #[arg(long, env = "GAMESERVER_COORDINATES_EVERY", default_value_t = 1)]
    pub coordinates_every: u64,

    /// Datagrams per second allowed from one source address.
    #[arg(long, env = "GAMESERVER_RATE_LIMIT", default_value_t = 120.0)]
    pub rate_limit: f64,
    /// Most TCP command connections open at once; more get `BUSY ...` and are closed.
    #[arg(long, env = "GAMESERVER_TCP_MAX_CONNECTIONS", default_value_t = crate::tcp::MAX_CONNECTIONS)]
    pub tcp_max_connections: usize,
    /// Most TCP command connections from one client address (IPv6: one /64), so one
    /// client cannot hold every slot; more get `BUSY ...` and are closed.
    #[arg(long, env = "GAMESERVER_TCP_MAX_CONNECTIONS_PER_SOURCE", default_value_t = crate::tcp::MAX_CONNECTIONS_PER_SOURCE)]
    pub tcp_max_connections_per_source: usize,
    /// After SIGTERM, seconds to let running sessions finish before ending them.
    #[arg(long, env = "GAMESERVER_DRAIN_SECONDS", default_value_t = 60)]
    pub drain_seconds: u64,
    /// UDP socket send and receive buffer, bytes.
    #[arg(long, env = "GAMESERVER_SOCKET_BUFFER", default_value_t = 8 << 20)]
    pub socket_buffer: usize,
    /// Threads sending each tick's snapshots (at least 1). The kernel's loopback or
    /// NIC path costs microseconds per datagram: at 5,000 players one thread spent
    /// half the tick period sending, and the last players' snapshots left that late.
    #[arg(long, env = "GAMESERVER_SEND_THREADS", default_value_t = 2)]
    pub send_threads: usize,
    /// The control secret itself, from the operator's `TANKS_CONTROL_TOKEN` (never a flag:
    /// a secret on the command line shows in `ps`).
    #[arg(skip)]
    pub control_secret: Option<String>,
    /// Whether the operator's `TANKS_FLEET` is set: a deployed server, which refuses the
    /// development token key and control secret.
    #[arg(skip)]
    pub under_fleet: bool,
}

/// What the operator's pod template sets in every game-server container. Each fills the
/// setting of the same meaning when neither its flag nor its `GAMESERVER_*` variable is
/// given, so a GameFleet template needs no arguments at all.
pub mod operator_env {
    /// The game port (the pod's host port): the UDP port to listen on.
    pub const GAME_PORT: &str = "TANKS_GAME_PORT";
    /// The pod name.
    pub const SERVER_NAME: &str = "TANKS_SERVER_NAME";
    pub const SESSIONS_PER_SERVER: &str = "TANKS_SESSIONS_PER_SERVER";
    pub const PLAYERS_PER_SESSION: &str = "TANKS_PLAYERS_PER_SESSION";
    /// The fleet: its presence means the server runs under the operator, where tokens
    /// are mandatory unless `--require-token false` says otherwise.
    pub const FLEET: &str = "TANKS_FLEET";
    /// The control interface's bearer secret (when no secret file is given).
    pub const CONTROL_TOKEN: &str = "TANKS_CONTROL_TOKEN";
}

/// Everything the server needs to start, built from [`Args`] or directly by tests.
#[derive(Debug, Clone)]
pub struct Settings {
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    pub control_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub manager: ManagerConfig,
    pub require_token: bool,
    pub signer: TokenSigner,
    /// Where logouts are checked at join (none: not checked).
    pub revocation: Option<RevocationSettings>,
    pub control_secret: String,
    pub auth_addr: String,
    pub amqp_url: Option<String>,
    pub command_queue: String,
    pub command_path: CommandPath,
    pub matchmaking_queue: Option<String>,
    pub prefetch: u16,
    pub sink: SinkConfig,
    pub rate_limit: RateLimit,
    pub tcp_limits: TcpLimits,
    pub drain_timeout: Duration,
    pub socket_buffer: usize,
    pub send_threads: usize,
    /// What runs on embedded defaults, for the first log line.
    pub defaults_in_use: Vec<&'static str>,
}

impl Settings {
    /// Loopback, ephemeral ports, memory sink-ready defaults: for tests and tools.
    pub fn local(sink: SinkConfig) -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            udp_addr: loopback,
            tcp_addr: loopback,
            control_addr: loopback,
            metrics_addr: None,
            manager: ManagerConfig::new("local", Rules::default()),
            require_token: false,
            signer: TokenSigner::from_key_file(None).expect("development key").0,
            revocation: None,
            control_secret: DEVELOPMENT_CONTROL_SECRET.to_owned(),
            auth_addr: "127.0.0.1:8888".to_owned(),
            amqp_url: None,
            command_queue: PLAYER_COMMANDS.to_owned(),
            command_path: CommandPath::Direct,
            matchmaking_queue: None,
            prefetch: 256,
            sink,
            rate_limit: RateLimit::default(),
            tcp_limits: TcpLimits::default(),
            drain_timeout: Duration::from_secs(5),
            socket_buffer: 4 << 20,
            send_threads: 2,
            defaults_in_use: Vec::new(),
        }
    }
}

impl Args {
    /// The command line and environment, then the operator's variables where neither
    /// set a value (see [`operator_env`]). Exits with clap's message on bad flags.
    pub fn from_env() -> anyhow::Result<Args> {
        let matches = Args::command().get_matches();
        let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        args.apply_operator_env(&matches, |key| std::env::var(key).ok())?;
        Ok(args)
    }

    /// Fills unset settings from the operator's variables, as `env` returns them.
    pub fn apply_operator_env(
        &mut self,
        matches: &ArgMatches,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        let unset = |id: &str| {
            matches
                .value_source(id)
                .is_none_or(|s| s == ValueSource::DefaultValue)
        };
        let var = |key: &str| env(key).filter(|v| !v.trim().is_empty());
        let number = |key: &str, raw: String| {
            raw.trim()
                .parse::<u32>()
                .map_err(|e| anyhow::anyhow!("{key}={raw:?} is not a number: {e}"))
        };
        if unset("udp_addr")
            && let Some(raw) = var(operator_env::GAME_PORT)
        {
            let port =
                u16::try_from(number(operator_env::GAME_PORT, raw.clone())?).map_err(|_| {
                    anyhow::anyhow!("{}={raw:?} is not a port", operator_env::GAME_PORT)
                })?;
            self.udp_addr.set_port(port);
        }
        if unset("server_name")
            && let Some(name) = var(operator_env::SERVER_NAME)
        {
            self.server_name = Some(name);
        }
        if unset("max_sessions")
            && let Some(raw) = var(operator_env::SESSIONS_PER_SERVER)
        {
            self.max_sessions = number(operator_env::SESSIONS_PER_SERVER, raw)? as usize;
        }
        if unset("players_per_session")
            && let Some(raw) = var(operator_env::PLAYERS_PER_SESSION)
        {
            self.players_per_session = number(operator_env::PLAYERS_PER_SESSION, raw)? as usize;
        }
        self.under_fleet = var(operator_env::FLEET).is_some();
        if unset("require_token") && self.under_fleet {
            self.require_token = true;
        }
        if self.control_secret_file.is_none() {
            self.control_secret = var(operator_env::CONTROL_TOKEN);
        }
        Ok(())
    }

    pub fn into_settings(self) -> anyhow::Result<Settings> {
        let mut defaults = Vec::new();
        let (signer, dev_key) = TokenSigner::from_key_file(self.token_key_file.as_deref())?;
        if dev_key {
            defaults.push("development token key");
        }
        let control_secret = match (&self.control_secret_file, &self.control_secret) {
            (None, Some(secret)) => {
                anyhow::ensure!(
                    secret.trim().len() >= 16,
                    "{} is shorter than 16 characters",
                    operator_env::CONTROL_TOKEN
                );
                secret.trim().to_owned()
            }
            (Some(path), _) => {
                let raw = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("reading control secret {}: {e}", path.display())
                })?;
                let secret = raw.trim().to_owned();
                anyhow::ensure!(
                    secret.len() >= 16,
                    "control secret in {} is shorter than 16 characters",
                    path.display()
                );
                secret
            }
            (None, None) => DEVELOPMENT_CONTROL_SECRET.to_owned(),
        };
        let dev_secret = control_secret == DEVELOPMENT_CONTROL_SECRET;
        if dev_secret {
            defaults.push("development control secret");
        }
        if self.under_fleet {
            refuse_development_secrets(dev_key, dev_secret)?;
        }
        let sink = match (&self.kafka_brokers, &self.events_file) {
            (Some(brokers), _) => {
                SinkConfig::Kafka(KafkaSettings::new(brokers.clone(), "gameserver"))
            }
            (None, Some(path)) => SinkConfig::File(path.clone()),
            (None, None) => {
                defaults.push("events to a local file");
                SinkConfig::File(std::env::temp_dir().join("gameserver-events.jsonl"))
            }
        };
        if self.amqp_url.is_none() {
            defaults.push("in-process command delivery");
        }
        if self.redis_url.is_none() {
            defaults.push("logged-out tokens not checked (no Redis)");
        }
        let revocation = self.redis_url.map(|redis_url| RevocationSettings {
            redis_url,
            prefix: self.redis_prefix,
            timeout: Duration::from_millis(self.revocation_timeout_ms.max(1)),
            when_unavailable: self.revocation_when_unavailable,
        });
        let server = self
            .server_name
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "gameserver".to_owned());
        let mut rules = Rules::for_tick_rate(self.tick_rate);
        rules.map_width = self.map_size;
        rules.map_height = self.map_size;
        rules.max_speed = self.max_speed;
        let per_second = u64::from(self.tick_rate);
        let mut manager = ManagerConfig::new(server, rules);
        manager.max_sessions = self.max_sessions.max(1);
        manager.players_per_session = self.players_per_session.max(1);
        manager.match_ticks = self.match_seconds * per_second;
        manager.player_timeout_ticks = self.player_timeout_seconds.max(1) * per_second;
        manager.coordinates_every = self.coordinates_every;
        manager.open_sessions = self.open_sessions;
        Ok(Settings {
            udp_addr: self.udp_addr,
            tcp_addr: self.tcp_addr,
            control_addr: self.control_addr,
            metrics_addr: Some(self.metrics_addr),
            manager,
            require_token: self.require_token,
            signer,
            revocation,
            control_secret,
            auth_addr: self.auth_addr,
            amqp_url: self.amqp_url,
            command_queue: self.command_queue,
            command_path: self.command_path,
            matchmaking_queue: self.consume_matchmaking.then_some(self.matchmaking_queue),
            prefetch: self.prefetch.max(1),
            sink,
            rate_limit: RateLimit {
                per_second: self.rate_limit,
                burst: self.rate_limit.max(1.0),
            },
            tcp_limits: TcpLimits {
                max_connections: self.tcp_max_connections,
                max_per_source: self.tcp_max_connections_per_source,
            },
            drain_timeout: Duration::from_secs(self.drain_seconds),
            socket_buffer: self.socket_buffer,
            send_threads: self.send_threads.max(1),
            defaults_in_use: defaults,
        })
    }
}

/// The decision for a deployed server (under the operator): neither the development
/// token key nor the development control secret, both public. The error is one line.
pub fn refuse_development_secrets(dev_key: bool, dev_secret: bool) -> anyhow::Result<()> {
    let what = match (dev_key, dev_secret) {
        (false, false) => return Ok(()),
        (true, false) => "the development token key",
        (false, true) => "the development control secret",
        (true, true) => "the development token key and control secret",
    };
    anyhow::bail!(
        "refusing to start under the operator ({} is set) with {what}, which are public: \
         mount the install's Secrets with --token-key-file (TANKS_TOKEN_KEY_FILE) and \
         --control-secret-file (or {}); hack/gen-secrets makes them",
        operator_env::FLEET,
        operator_env::CONTROL_TOKEN
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_means_embedded_defaults() {
        let args = Args::try_parse_from(["gameserver"]).unwrap();
        assert_eq!(args.udp_addr.port(), 9999);
        assert_eq!(args.tcp_addr.port(), 8889);
        assert_eq!(args.metrics_addr.port(), 8001);
        let settings = args.into_settings().unwrap();
        assert!(
            settings
                .defaults_in_use
                .contains(&"development control secret")
        );
        assert!(
            settings
                .defaults_in_use
                .contains(&"in-process command delivery")
        );
        assert_eq!(settings.command_queue, "player_commands");
        assert_eq!(settings.manager.players_per_session, 14);
    }

    fn with_operator_env(argv: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Args> {
        let matches = Args::command().try_get_matches_from(argv).unwrap();
        let mut args = Args::from_arg_matches(&matches).unwrap();
        args.apply_operator_env(&matches, |key| {
            env.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        })?;
        Ok(args)
    }

    /// A token key file of the install's own (not the development key).
    fn own_key_file(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "gameserver-config-{name}-{}.key",
            std::process::id()
        ));
        std::fs::write(&path, "an-install-token-key-of-32-or-more-bytes\n").unwrap();
        path
    }

    #[test]
    fn the_operators_variables_fill_what_no_flag_set() {
        let key = own_key_file("operator-env");
        let key_arg = format!("--token-key-file={}", key.display());
        let env = [
            ("TANKS_GAME_PORT", "7003"),
            ("TANKS_SERVER_NAME", "arena-x7k2p"),
            ("TANKS_SESSIONS_PER_SERVER", "8"),
            ("TANKS_PLAYERS_PER_SESSION", "4"),
            ("TANKS_FLEET", "arena"),
            ("TANKS_CONTROL_TOKEN", "a-control-token-of-some-length"),
        ];
        let args = with_operator_env(&["gameserver", &key_arg], &env).unwrap();
        assert_eq!(args.udp_addr, SocketAddr::from(([0, 0, 0, 0], 7003)));
        assert_eq!(args.server_name.as_deref(), Some("arena-x7k2p"));
        assert_eq!((args.max_sessions, args.players_per_session), (8, 4));
        assert!(
            args.require_token,
            "tokens are mandatory under the operator"
        );
        let settings = args.into_settings().unwrap();
        assert_eq!(settings.control_secret, "a-control-token-of-some-length");
        assert!(
            !settings
                .defaults_in_use
                .contains(&"development control secret")
        );
        assert_eq!(settings.manager.max_sessions, 8);

        // Flags win over the operator's variables.
        let args = with_operator_env(
            &[
                "gameserver",
                "--udp-addr",
                "127.0.0.1:9000",
                "--max-sessions",
                "2",
                "--require-token",
                "false",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(args.udp_addr.port(), 9000);
        assert_eq!(args.max_sessions, 2);
        assert!(!args.require_token);

        // Garbage is an error that names the variable.
        let err = with_operator_env(&["gameserver"], &[("TANKS_GAME_PORT", "99999")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("TANKS_GAME_PORT"), "{err}");
        let err = with_operator_env(&["gameserver"], &[("TANKS_SESSIONS_PER_SERVER", "many")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("TANKS_SESSIONS_PER_SERVER"), "{err}");
        let short =
            with_operator_env(&["gameserver"], &[("TANKS_CONTROL_TOKEN", "short")]).unwrap();
        assert!(short.into_settings().is_err());
        let _ = std::fs::remove_file(key);
    }

    #[test]
    fn the_decision_refuses_either_development_secret() {
        assert!(refuse_development_secrets(false, false).is_ok());
        for (dev_key, dev_secret, named) in [
            (true, false, "development token key"),
            (false, true, "development control secret"),
            (true, true, "development token key and control secret"),
        ] {
            let why = refuse_development_secrets(dev_key, dev_secret)
                .unwrap_err()
                .to_string();
            assert!(!why.contains('\n'), "one line: {why}");
            assert!(why.contains(named), "{why}");
            assert!(why.contains("TANKS_FLEET"), "{why}");
        }
    }

    #[test]
    fn under_the_operator_the_development_secrets_are_refused() {
        let key = own_key_file("fleet");
        let key_arg = format!("--token-key-file={}", key.display());
        let secret = ("TANKS_CONTROL_TOKEN", "a-control-token-of-some-length");
        let fleet = ("TANKS_FLEET", "arena");
        let settings = |argv: &[&str], env: &[(&str, &str)]| {
            with_operator_env(argv, env).unwrap().into_settings()
        };
        // Neither given: both named.
        let err = settings(&["gameserver"], &[fleet]).unwrap_err().to_string();
        assert!(err.contains("token key and control secret"), "{err}");
        // A real control secret, the development key.
        let err = settings(&["gameserver"], &[fleet, secret])
            .unwrap_err()
            .to_string();
        assert!(err.contains("development token key"), "{err}");
        // A real key, no control secret.
        let err = settings(&["gameserver", &key_arg], &[fleet])
            .unwrap_err()
            .to_string();
        assert!(err.contains("development control secret"), "{err}");
        // The development secret given explicitly is still the development secret.
        let err = settings(
            &["gameserver", &key_arg],
            &[fleet, ("TANKS_CONTROL_TOKEN", DEVELOPMENT_CONTROL_SECRET)],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("development control secret"), "{err}");
        // Both of the install's own: starts, even with tokens switched off.
        let ok = settings(
            &["gameserver", &key_arg, "--require-token", "false"],
            &[fleet, secret],
        )
        .unwrap();
        assert!(
            ok.defaults_in_use
                .iter()
                .all(|d| !d.starts_with("development"))
        );
        // Outside a fleet the embedded defaults still run (hack/run, local tests).
        assert!(settings(&["gameserver"], &[]).is_ok());
        let _ = std::fs::remove_file(key);
    }

    #[test]
    fn flags_override() {
        let args = Args::try_parse_from([
            "gameserver",
            "--command-path",
            "broker",
            "--require-token",
            "true",
            "--command-queue",
            "player_commands.gs-1",
            "--tick-rate",
            "60",
        ])
        .unwrap();
        let settings = args.into_settings().unwrap();
        assert_eq!(settings.command_path, CommandPath::Broker);
        assert!(settings.require_token);
        assert_eq!(settings.command_queue, "player_commands.gs-1");
        assert_eq!(settings.manager.rules.tick_rate, 60);
    }
}
