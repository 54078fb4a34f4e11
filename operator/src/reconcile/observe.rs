//! What a GameFleet reconcile sees, translated from Kubernetes objects into the domain's
//! plain data: the fleet's spec as a [`FleetPolicy`], each pod as a classified
//! [`Server`]. The only place the reconciler's decisions meet pods and specs.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::Context;
use crate::api::gamefleet::Scheduling;
use crate::api::{GameFleet, labels};
use crate::domain::decision::FleetPolicy;
use crate::domain::fleet::{
    self, CountOrPercent, HealthPolicy, Observation, Placement, RolloutPolicy, Server,
};
use crate::domain::scaling::{Buffer, ScalingPolicy};
use crate::servers::{LoadEntry, LoadIndex, eviction, ownership};

/// A fleet's pods and what the decision reads of them.
pub struct Observed {
    pub pods: Vec<Arc<Pod>>,
    /// `pods`, classified, in the same order.
    pub servers: Vec<Server>,
    /// Matches waiting for a server of this fleet.
    pub pending_sessions: u32,
}

pub fn observe(fleet: &GameFleet, ctx: &Context, hash: &str, health: &HealthPolicy) -> Observed {
    let pods = fleet_pods(fleet, ctx);
    let mut servers = classify_all(&pods, hash, health, &ctx.loads);
    if let Some(view) = &ctx.pending_matches {
        for (pod, server) in pods.iter().zip(&mut servers) {
            server.holds_match = view.holds_match(&LoadIndex::key(pod));
        }
    }
    let pending_sessions = ctx.pending_matches.as_ref().map_or(0, |view| {
        view.pending(&fleet.namespace().unwrap_or_default(), &fleet.name_any())
    });
    Observed {
        pods,
        servers,
        pending_sessions,
    }
}

/// Every pod of a fleet, classified: one look at the clock and one lock of the load
/// index for all of them.
pub fn classify_all(
    pods: &[Arc<Pod>],
    hash: &str,
    health: &HealthPolicy,
    loads: &LoadIndex,
) -> Vec<Server> {
    let now = Timestamp::now();
    pods.iter()
        .zip(loads.entries_of(pods))
        .map(|(p, entry)| classify_at(p, hash, health, entry.as_ref(), now))
        .collect()
}

/// `namespace/name`: the key of a fleet's expectations and stabilizer.
pub fn fleet_key(fleet: &GameFleet) -> String {
    format!(
        "{}/{}",
        fleet.namespace().unwrap_or_default(),
        fleet.name_any()
    )
}

/// The fleet's pods: from the cache, controlled by this very fleet (its uid, not a
/// deleted namesake's, nor just the fleet label),
/// with this operator's own recent creations and deletions laid over.
pub fn fleet_pods(fleet: &GameFleet, ctx: &Context) -> Vec<Arc<Pod>> {
    let cached: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| ownership::owned_by(p, fleet))
        .cloned()
        .collect();
    ctx.expectations.overlay(&fleet_key(fleet), cached)
}

fn elapsed_since(t: Option<&Time>, now: Timestamp) -> Duration {
    t.map(|t| Duration::try_from(now.duration_since(t.0)).unwrap_or_default())
        .unwrap_or_default()
}

/// A pod and its load as the decisions see them.
pub fn classify(pod: &Pod, hash: &str, health: &HealthPolicy, loads: &LoadIndex) -> Server {
    let entry = loads.get(&LoadIndex::key(pod));
    classify_at(pod, hash, health, entry.as_ref(), Timestamp::now())
}

/// [`classify`] with the pod's load entry and the time already looked up.
fn classify_at(
    pod: &Pod,
    hash: &str,
    health: &HealthPolicy,
    entry: Option<&LoadEntry>,
    now: Timestamp,
) -> Server {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let obs = Observation {
        terminating: pod.metadata.deletion_timestamp.is_some(),
        failed: matches!(phase, "Failed" | "Succeeded"),
        age: elapsed_since(pod.metadata.creation_timestamp.as_ref(), now),
        running_for: (phase == "Running")
            .then(|| elapsed_since(status.and_then(|s| s.start_time.as_ref()), now)),
        report: entry.and_then(|e| e.view()),
        failing_for: entry.and_then(|e| e.failing_since).map(|t| t.elapsed()),
        drain_requested: entry.is_some_and(|e| e.drain_requested),
    };
    let report = obs.report.unwrap_or_default();
    Server {
        name: pod.name_any(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        current: pod.labels().get(labels::TEMPLATE_HASH).map(String::as_str) == Some(hash),
        state: fleet::classify(&obs, health),
        sessions: report.sessions,
        players: report.players,
        evictable: eviction::evictable(pod),
        holds_match: false,
    }
}

fn count_or_percent(v: &IntOrString) -> CountOrPercent {
    match v {
        IntOrString::Int(n) => CountOrPercent::Count((*n).max(0) as u32),
        IntOrString::String(s) => {
            CountOrPercent::Percent(s.trim_end_matches('%').parse().unwrap_or(25))
        }
    }
}

/// The fleet's spec in the domain's terms (negative numbers the schema should have
/// refused count as zero).
pub fn policies(fleet: &GameFleet) -> FleetPolicy {
    let spec = &fleet.spec;
    let s = &spec.scaling;
    let buffer = match (s.buffer.slots, s.buffer.percent) {
        (_, Some(p)) => Buffer::Percent(p.max(0) as u32),
        (Some(n), None) => Buffer::Slots(n.max(0) as u32),
        (None, None) => Buffer::Slots(0),
    };
    FleetPolicy {
        scaling: ScalingPolicy {
            min_replicas: s.min_replicas.max(0) as u32,
            max_replicas: s.max_replicas.max(0) as u32,
            floor: spec.replicas.map(|r| r.max(0) as u32),
            buffer,
            sessions_per_server: spec.capacity.sessions_per_server.max(1) as u32,
            scale_to_zero: s.scale_to_zero,
        },
        rollout: RolloutPolicy {
            max_surge: count_or_percent(&spec.rolling_update.max_surge),
            max_unavailable: count_or_percent(&spec.rolling_update.max_unavailable),
        },
        health: HealthPolicy {
            startup_timeout: Duration::from_secs(spec.health.startup_timeout_seconds.max(1) as u64),
            unresponsive: Duration::from_secs(spec.health.unresponsive_seconds.max(1) as u64),
        },
        placement: match spec.scheduling {
            Scheduling::Packed => Placement::Packed,
            Scheduling::Distributed => Placement::Distributed,
        },
        scale_down_delay: Duration::from_secs(s.scale_down_delay_seconds.max(0) as u64),
    }
}
