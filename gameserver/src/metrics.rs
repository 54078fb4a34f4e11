//! The game server's Prometheus metrics, all under the `gameserver_` prefix.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tanks_core::events::EventMetrics;

/// Tick and send durations, in seconds. A 30 Hz tick has 33 ms; the work in it
/// should take well under 2 ms, so the buckets are dense from 50 µs to 5 ms.
const TICK_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.001_25, 0.001_5, 0.001_75,
    0.002, 0.002_5, 0.003, 0.005, 0.01, 0.02, 0.033, 0.1,
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub datagrams_in: IntCounter,
    pub datagrams_out: IntCounter,
    pub send_errors: IntCounter,
    /// Refused datagrams, by reason (`invalid_json`, `rate_limited`, `unknown_player`...).
    pub bad_datagrams: IntCounterVec,
    pub sessions: IntGauge,
    pub players: IntGauge,
    pub tanks_in_use: IntGauge,
    /// Simulation and snapshot serialization of one tick (under the session lock).
    pub tick_seconds: Histogram,
    /// Sending one tick's snapshots.
    pub send_seconds: Histogram,
    pub ticks_late: IntCounter,
    /// Commands by `type` (move, shoot, join, leave, login...), `path` (direct,
    /// broker, tcp) and `result`.
    pub commands: IntCounterVec,
    /// Join-time revocation checks, by `result` (see [`crate::revocation`]).
    pub revocation_checks: IntCounterVec,
    pub tcp_connections: IntGauge,
    pub events: EventMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        Self::register(tanks_core::telemetry::registry("gameserver"))
    }

    fn register(registry: Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str| {
            let h =
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(TICK_BUCKETS.to_vec()))
                    .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let bad_datagrams = IntCounterVec::new(
            Opts::new("bad_datagrams_total", "Datagrams refused, by reason"),
            &["reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(bad_datagrams.clone()))
            .expect("unique metric");
        let commands = IntCounterVec::new(
            Opts::new(
                "commands_total",
                "Player commands, by type, path and result",
            ),
            &["type", "path", "result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(commands.clone()))
            .expect("unique metric");
        let revocation_checks = IntCounterVec::new(
            Opts::new(
                "revocation_checks_total",
                "Join-time checks of a token's revocation, by result: revoked, not_revoked, cached, unavailable",
            ),
            &["result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(revocation_checks.clone()))
            .expect("unique metric");
        Self {
            datagrams_in: counter("datagrams_received_total", "UDP datagrams received"),
            datagrams_out: counter("datagrams_sent_total", "UDP datagrams sent"),
            send_errors: counter("datagram_send_errors_total", "UDP sends that failed"),
            bad_datagrams,
            sessions: gauge("sessions", "Live sessions"),
            players: gauge("players", "Players in sessions"),
            tanks_in_use: gauge("tanks_in_use", "Tanks taken from the pool"),
            tick_seconds: histogram(
                "tick_duration_seconds",
                "Simulation and snapshot building per tick",
            ),
            send_seconds: histogram("snapshot_send_seconds", "Sending one tick's snapshots"),
            ticks_late: counter(
                "ticks_late_total",
                "Ticks that started more than one period late",
            ),
            commands,
            revocation_checks,
            tcp_connections: gauge("tcp_connections", "Open TCP command connections"),
            events: EventMetrics::register(&registry).expect("unique metric"),
            registry,
        }
    }

    pub fn command(&self, kind: &str, path: &str, result: &str) {
        self.commands.with_label_values(&[kind, path, result]).inc();
    }

    pub fn bad(&self, reason: &str) {
        self.bad_datagrams.with_label_values(&[reason]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
