//! The operator's Prometheus metrics, all under the `operator_` prefix.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Reconciles take from a millisecond (nothing to do) to seconds (creating hundreds of
/// pods): buckets from 1 ms to 30 s.
const RECONCILE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub reconcile_errors: IntCounterVec,
    pub pods_created: IntCounter,
    pub pod_create_errors: IntCounter,
    pub pods_deleted: IntCounterVec,
    pub servers_drained: IntCounter,
    pub load_polls: IntCounterVec,
    pub poll_round: Histogram,
    pub leader: IntGauge,
    pub fleet: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(tanks_core::telemetry::registry("operator"))
    }
}

impl Metrics {
    pub fn new(registry: Registry) -> Self {
        let m = Metrics {
            reconciles: IntCounterVec::new(
                Opts::new("reconciles_total", "Reconciles by resource kind and result"),
                &["kind", "result"],
            )
            .unwrap(),
            reconcile_duration: HistogramVec::new(
                HistogramOpts::new("reconcile_duration_seconds", "Reconcile duration")
                    .buckets(RECONCILE_BUCKETS.to_vec()),
                &["kind"],
            )
            .unwrap(),
            reconcile_errors: IntCounterVec::new(
                Opts::new("reconcile_errors_total", "Failed reconciles by error kind"),
                &["kind", "error"],
            )
            .unwrap(),
            pods_created: IntCounter::new("pods_created_total", "Game-server pods created").unwrap(),
            pod_create_errors: IntCounter::new(
                "pod_create_errors_total",
                "Game-server pod creations the API server refused",
            )
            .unwrap(),
            pods_deleted: IntCounterVec::new(
                Opts::new("pods_deleted_total", "Game-server pods deleted, by reason"),
                &["reason"],
            )
            .unwrap(),
            servers_drained: IntCounter::new("servers_drained_total", "Drain calls that succeeded")
                .unwrap(),
            load_polls: IntCounterVec::new(
                Opts::new("load_polls_total", "Load polls of game servers by result"),
                &["result"],
            )
            .unwrap(),
            poll_round: Histogram::with_opts(
                HistogramOpts::new("load_poll_round_seconds", "Time to poll every server once")
                    .buckets(RECONCILE_BUCKETS.to_vec()),
            )
            .unwrap(),
            leader: IntGauge::new("leader", "1 while this replica holds the Lease").unwrap(),
            fleet: IntGaugeVec::new(
                Opts::new("fleet_servers", "Fleet gauges: replicas, ready, allocated, draining, desired, players, sessions, capacity"),
                &["namespace", "fleet", "measure"],
            )
            .unwrap(),
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.reconciles.clone())).unwrap();
        r.register(Box::new(m.reconcile_duration.clone())).unwrap();
        r.register(Box::new(m.reconcile_errors.clone())).unwrap();
        r.register(Box::new(m.pods_created.clone())).unwrap();
        r.register(Box::new(m.pod_create_errors.clone())).unwrap();
        r.register(Box::new(m.pods_deleted.clone())).unwrap();
        r.register(Box::new(m.servers_drained.clone())).unwrap();
        r.register(Box::new(m.load_polls.clone())).unwrap();
        r.register(Box::new(m.poll_round.clone())).unwrap();
        r.register(Box::new(m.leader.clone())).unwrap();
        r.register(Box::new(m.fleet.clone())).unwrap();
        m
    }

    pub fn set_fleet(&self, ns: &str, fleet: &str, measure: &str, value: i64) {
        self.fleet
            .with_label_values(&[ns, fleet, measure])
            .set(value);
    }

    pub fn forget_fleet(&self, ns: &str, fleet: &str) {
        for measure in [
            "replicas",
            "ready",
            "allocated",
            "draining",
            "desired",
            "players",
            "sessions",
            "capacity",
        ] {
            let _ = self.fleet.remove_label_values(&[ns, fleet, measure]);
        }
    }
}
