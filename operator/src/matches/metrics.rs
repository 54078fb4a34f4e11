//! Match allocation metrics, registered in the operator's registry (`operator_` prefix).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// One allocation is a reservation, one HTTP call to a game server and one status write:
/// milliseconds when the API server keeps up, up to seconds when it does not.
const ALLOCATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

pub struct MatchMetrics {
    /// Allocation attempts by result: `allocated`, `no_capacity`, `refused`, `error`.
    pub allocations: IntCounterVec,
    /// From the reservation to the status write, for allocations that succeeded.
    pub allocation_duration: Histogram,
    /// The steps of a successful allocation: `session` (the game server's HTTP call),
    /// `publish` (the matchmaker's message, until the broker confirmed it) and `status`
    /// (the status write): says whether the API server, a game server or the broker is
    /// the slow part.
    pub allocation_step: HistogramVec,
    /// Matches waiting for room, per fleet (what fleet scaling adds to demand).
    pub pending: IntGaugeVec,
    /// Matches that reached a terminal phase, by phase and reason.
    pub ended: IntCounterVec,
}

impl MatchMetrics {
    pub fn new(registry: &Registry) -> Self {
        let m = MatchMetrics {
            allocations: IntCounterVec::new(
                Opts::new(
                    "match_allocations_total",
                    "Match allocation attempts by result",
                ),
                &["result"],
            )
            .unwrap(),
            allocation_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "match_allocation_seconds",
                    "Reservation to status write of successful allocations",
                )
                .buckets(ALLOCATION_BUCKETS.to_vec()),
            )
            .unwrap(),
            allocation_step: HistogramVec::new(
                HistogramOpts::new(
                    "match_allocation_step_seconds",
                    "Duration of each step of successful allocations",
                )
                .buckets(ALLOCATION_BUCKETS.to_vec()),
                &["step"],
            )
            .unwrap(),
            pending: IntGaugeVec::new(
                Opts::new(
                    "matches_pending",
                    "Matches waiting for a game server with room",
                ),
                &["namespace", "fleet"],
            )
            .unwrap(),
            ended: IntCounterVec::new(
                Opts::new("matches_ended_total", "Matches that finished or failed"),
                &["phase", "reason"],
            )
            .unwrap(),
        };
        // Registering twice (two runtimes on one registry in tests) keeps the first.
        let _ = registry.register(Box::new(m.allocations.clone()));
        let _ = registry.register(Box::new(m.allocation_duration.clone()));
        let _ = registry.register(Box::new(m.allocation_step.clone()));
        let _ = registry.register(Box::new(m.pending.clone()));
        let _ = registry.register(Box::new(m.ended.clone()));
        m
    }

    pub fn observe_step(&self, step: &str, started: std::time::Instant) {
        self.allocation_step
            .with_label_values(&[step])
            .observe(started.elapsed().as_secs_f64());
    }
}
