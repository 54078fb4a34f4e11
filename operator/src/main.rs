//! The operator binary: flags in, [`tanks_operator::runtime::run`] out.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tanks_core::rabbit;
use tanks_operator::leader::LeaseSettings;
use tanks_operator::matches::consumer::ConsumerConfig;
use tanks_operator::matches::reconcile::MatchSettings;
use tanks_operator::matches::runtime::MatchConfig;
use tanks_operator::reconcile::Settings;
use tanks_operator::runtime::{Config, run, tokio_runtime};

#[derive(Parser, Debug)]
#[command(
    name = "operator",
    about = "Runs the GameFleet and Match controllers of the tanks MMO."
)]
struct Args {
    /// `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Watch one namespace only (default: all namespaces).
    #[arg(long, env = "OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Turn leader election off (a single replica).
    #[arg(long, env = "OPERATOR_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    #[arg(long, env = "OPERATOR_LEASE_NAMESPACE", default_value = "tanks-system")]
    lease_namespace: String,
    #[arg(long, env = "OPERATOR_LEASE_NAME", default_value = "tanks-operator")]
    lease_name: String,
    #[arg(long, env = "OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// This replica's identity (default: the pod name, else host name and a random id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Bearer token of the game servers' control interface.
    #[arg(long, env = "TANKS_CONTROL_TOKEN", hide_env_values = true)]
    control_token: Option<String>,
    #[arg(long, env = "OPERATOR_POLL_INTERVAL_MS", default_value_t = 2000)]
    poll_interval_ms: u64,
    #[arg(long, env = "OPERATOR_POLL_CONCURRENCY", default_value_t = 64)]
    poll_concurrency: usize,
    #[arg(long, env = "OPERATOR_CREATE_CONCURRENCY", default_value_t = 64)]
    create_concurrency: usize,
    /// Turn the Match controller off (GameFleets only; its RBAC then needs no Matches).
    #[arg(long, env = "OPERATOR_NO_MATCHES")]
    no_matches: bool,
    /// Turn the RedisBackup controller off (its RBAC then needs no CronJobs or Secrets).
    #[arg(long, env = "OPERATOR_NO_BACKUPS")]
    no_backups: bool,
    /// Turn the Edge controller off (its RBAC then needs no ConfigMaps or Services), and
    /// Match endpoints are always the game server's own.
    #[arg(long, env = "OPERATOR_NO_EDGE")]
    no_edge: bool,
    /// RabbitMQ: consume matchmaking events and publish allocations (none: Matches come
    /// from elsewhere, e.g. kubectl, and allocations are only in their status).
    #[arg(long, env = "OPERATOR_AMQP_URL", hide_env_values = true)]
    amqp_url: Option<String>,
    #[arg(long, env = "OPERATOR_MATCHMAKING_QUEUE", default_value = rabbit::MATCHMAKING_EVENTS)]
    matchmaking_queue: String,
    #[arg(long, env = "OPERATOR_ALLOCATIONS_QUEUE", default_value = rabbit::MATCH_ALLOCATIONS)]
    allocations_queue: String,
    /// Where Matches made from events are created (default: `--namespace`, else `default`).
    #[arg(long, env = "OPERATOR_MATCH_NAMESPACE")]
    match_namespace: Option<String>,
    /// The GameFleet of events that name none.
    #[arg(long, env = "OPERATOR_DEFAULT_FLEET")]
    default_fleet: Option<String>,
    /// Finished and Failed Matches are deleted after this long.
    #[arg(long, env = "OPERATOR_MATCH_TTL_SECONDS", default_value_t = 300)]
    match_ttl_seconds: u64,
    /// Async worker threads: 1 runs everything on one thread, 0 one per core.
    #[arg(long, env = "OPERATOR_WORKER_THREADS", default_value_t = 1)]
    worker_threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio_runtime(args.worker_threads)?.block_on(operate(args))
}

async fn operate(args: Args) -> anyhow::Result<()> {
    // kube brings rustls; install one provider before any TLS connection.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tanks_core::telemetry::init_tracing();
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into());
        format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    });
    let client = kube::Client::try_default().await?;
    let lease_duration = Duration::from_secs(args.lease_seconds.max(3));
    let matches = (!args.no_matches).then(|| MatchConfig {
        namespace: args.namespace.clone(),
        settings: MatchSettings {
            finished_ttl: Duration::from_secs(args.match_ttl_seconds),
            ..MatchSettings::default()
        },
        consumer: args.amqp_url.as_ref().map(|uri| ConsumerConfig {
            amqp_uri: uri.clone(),
            queue: args.matchmaking_queue.clone(),
            namespace: args
                .match_namespace
                .clone()
                .or_else(|| args.namespace.clone())
                .unwrap_or_else(|| "default".into()),
            default_fleet: args.default_fleet.clone(),
            ..ConsumerConfig::default()
        }),
        publish: args
            .amqp_url
            .as_ref()
            .map(|uri| (uri.clone(), args.allocations_queue.clone())),
        control_token: args.control_token.clone(),
        ..MatchConfig::default()
    });
    let config = Config {
        namespace: args.namespace,
        metrics_addr: Some(args.metrics_addr),
        lease: (!args.no_leader_election).then(|| LeaseSettings {
            namespace: args.lease_namespace,
            name: args.lease_name,
            identity: identity.clone(),
            duration: lease_duration,
            renew_every: lease_duration / 5,
        }),
        reconciler: Settings {
            create_concurrency: args.create_concurrency,
            identity,
            ..Settings::default()
        },
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        poll_concurrency: args.poll_concurrency,
        control_token: args.control_token,
        matches,
        backups: !args.no_backups,
        edges: !args.no_edge,
        ..Config::default()
    };
    run(client, config, tanks_core::telemetry::shutdown_signal()).await
}
