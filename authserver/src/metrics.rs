//! The auth server's Prometheus metrics, all prefixed `authserver_`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use tanks_core::events::EventMetrics;
use tanks_core::telemetry::LATENCY_BUCKETS;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub connections_active: IntGauge,
    pub connections_total: IntCounter,
    /// By reason: `limit` (connection cap), `per_source` (one address's cap),
    /// `shutting_down`.
    pub connections_rejected: IntCounterVec,
    /// Every answered request, by action (`invalid` for unparsable lines) and status.
    pub requests: IntCounterVec,
    /// Successful logins and registrations: the "successful auths".
    pub auth_success: IntCounterVec,
    /// Failed logins by reason (`unknown_user`, `wrong_password`, `rate_limited`, ..).
    pub auth_failures: IntCounterVec,
    pub request_duration: HistogramVec,
    /// Password verifications started by logins (each one Argon2id run, real or dummy):
    /// what the brute-force limits bound.
    pub password_verifications: IntCounter,
    pub hash_waiting: IntGauge,
    pub hash_duration: Histogram,
    pub events: EventMetrics,
}

impl Metrics {
    pub fn new(registry: Registry) -> prometheus::Result<Self> {
        let connections_active =
            IntGauge::new("connections_active", "Client connections open now")?;
        let connections_total =
            IntCounter::new("connections_total", "Client connections accepted")?;
        let connections_rejected = IntCounterVec::new(
            Opts::new(
                "connections_rejected_total",
                "Connections refused, by reason",
            ),
            &["reason"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests answered, by action and status"),
            &["action", "status"],
        )?;
        let auth_success = IntCounterVec::new(
            Opts::new("auth_success_total", "Successful registrations and logins"),
            &["action"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "auth_failures_total",
                "Failed logins and registrations, by action and reason",
            ),
            &["action", "reason"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time to answer a request, by action",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["action"],
        )?;
        let password_verifications = IntCounter::new(
            "password_verifications_total",
            "Login password verifications started (one Argon2id run each)",
        )?;
        let hash_waiting =
            IntGauge::new("hash_waiting", "Password hashes waiting for a hashing slot")?;
        let hash_duration = Histogram::with_opts(
            HistogramOpts::new(
                "hash_duration_seconds",
                "Time one Argon2id hash or verification takes",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        for collector in [
            Box::new(connections_active.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connections_total.clone()),
            Box::new(connections_rejected.clone()),
            Box::new(requests.clone()),
            Box::new(auth_success.clone()),
            Box::new(auth_failures.clone()),
            Box::new(request_duration.clone()),
            Box::new(password_verifications.clone()),
            Box::new(hash_waiting.clone()),
            Box::new(hash_duration.clone()),
        ] {
            registry.register(collector)?;
        }
        let events = EventMetrics::register(&registry)?;
        Ok(Self {
            registry,
            connections_active,
            connections_total,
            connections_rejected,
            requests,
            auth_success,
            auth_failures,
            request_duration,
            password_verifications,
            hash_waiting,
            hash_duration,
            events,
        })
    }
}
