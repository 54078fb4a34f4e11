//! Match allocation metrics, registered in the operator's registry (`operator_` prefix).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

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
        let _ = registry.register(Box::new(m.pending.clone()));
        let _ = registry.register(Box::new(m.ended.clone()));
        m
    }
}
