//! What a GameFleet reconcile does about its decision: removals (each empty server
//! drained first when the plan says so), drains of busy old servers, creations in
//! a slow start, safe-to-evict marks. Every pod write of the reconciler is here.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};
use tanks_core::protocol::control::LoadReport;
use tracing::{info, warn};

use super::{Context, pods};
use crate::api::GameFleet;
use crate::api::gamefleet::PortKind;
use crate::domain::fleet::{Plan, Removal, RemoveReason};
use crate::domain::ports::PortAllocator;
use crate::error::Result;
use crate::servers::address::host_port;
use crate::servers::{LoadIndex, eviction};

/// What acting on a plan did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub removed: HashMap<RemoveReason, u32>,
    /// Busy servers told to drain.
    pub drained: u32,
    pub created: u32,
    /// Why creating stopped short, if it did.
    pub create_error: Option<String>,
}

impl Outcome {
    pub fn removed(&self, reason: RemoveReason) -> u32 {
        self.removed.get(&reason).copied().unwrap_or(0)
    }

    /// The fleet's size changed on purpose (`lastScaleTime`).
    pub fn scaled(&self) -> bool {
        self.created > 0 || self.removed(RemoveReason::ScaleDown) > 0
    }
}

/// Carries out `plan` for `fleet`, whose pods are `pods`. Stops at the first API error
/// of a delete (the next reconcile starts over); a refused create stops creating and is
/// reported in the outcome instead, so the status can say why.
pub async fn execute(
    fleet: &GameFleet,
    hash: &str,
    pods: &[std::sync::Arc<Pod>],
    plan: &Plan,
    ctx: &Context,
    key: &str,
) -> Result<Outcome> {
    let by_name: HashMap<String, &Pod> = pods.iter().map(|p| (p.name_any(), &**p)).collect();
    let pods_api: Api<Pod> =
        Api::namespaced(ctx.client.clone(), &fleet.namespace().unwrap_or_default());
    let mut outcome = Outcome::default();

    // Removals: failed, lost and drained servers at once; empty ones after a drain call
    // confirms they are still empty.
    for r in &plan.remove {
        let Some(pod) = by_name.get(&r.name) else {
            continue;
        };
        if r.drain_first && !drain_confirms_empty(pod, ctx).await {
            continue;
        }
        if delete_pod(&pods_api, pod, ctx, key, r).await? {
            *outcome.removed.entry(r.reason).or_default() += 1;
        }
    }
    // Busy old servers: told to take no new session; they go once empty.
    for name in &plan.drain {
        if let Some(pod) = by_name.get(name)
            && drain(pod, ctx).await.is_some()
        {
            outcome.drained += 1;
        }
    }
    if plan.create > 0 {
        match create_pods(fleet, hash, plan.create, ctx, key).await {
            Ok(n) => outcome.created = n,
            Err((n, e)) => {
                outcome.created = n;
                outcome.create_error = Some(e);
            }
        }
    }
    mark_evictable(&pods_api, &plan.evictable, ctx).await;
    Ok(outcome)
}

/// Tells a server to drain; `Some(report)` when it answered.
pub async fn drain(pod: &Pod, ctx: &Context) -> Option<LoadReport> {
    let key = LoadIndex::key(pod);
    let base = (ctx.resolver)(pod)?;
    match ctx.server_client.drain(&base).await {
        Ok(report) => {
            ctx.metrics.servers_drained.inc();
            ctx.loads.drained(&key, Some(report.clone()));
            Some(report)
        }
        Err(e) => {
            warn!(pod = %pod.name_any(), error = %e, "drain failed");
            None
        }
    }
}

async fn drain_confirms_empty(pod: &Pod, ctx: &Context) -> bool {
    drain(pod, ctx).await.is_some_and(|r| r.sessions == 0)
}

/// Deletes a pod, pinned to its uid so a namesake is never hit. Gone already is fine.
pub async fn delete_pod(
    api: &Api<Pod>,
    pod: &Pod,
    ctx: &Context,
    key: &str,
    r: &Removal,
) -> Result<bool> {
    let name = pod.name_any();
    let dp = DeleteParams {
        preconditions: pod.uid().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => {
            ctx.expectations.deleted(key, &name);
            ctx.metrics
                .pods_deleted
                .with_label_values(&[r.reason.as_str()])
                .inc();
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Creates `count` pods with a slow start (one in flight, one more with every success,
/// up to `create_concurrency`: the ReplicaSet controller's doubling per round trip, with
/// no batch waiting for its slowest create), stopping at the first refusal so a bad
/// template costs a few failed requests, not hundreds. Returns how many were created.
async fn create_pods(
    fleet: &GameFleet,
    hash: &str,
    count: u32,
    ctx: &Context,
    key: &str,
) -> std::result::Result<u32, (u32, String)> {
    let ns = fleet.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let ports = if fleet.spec.ports.policy == PortKind::Dynamic {
        reserve_ports(fleet, &ns, count, ctx)
    } else {
        Vec::new()
    };
    let limit = ctx.settings.create_concurrency.max(1);
    let mut window = 1;
    let mut in_flight = FuturesUnordered::new();
    let (mut next, mut created) = (0, 0u32);
    let mut error = None;
    loop {
        while error.is_none() && next < count as usize && in_flight.len() < window.min(limit) {
            let reserved = ports.get(next).cloned();
            let port = reserved.as_ref().map(|r: &(String, u16)| r.1);
            match pods::build(fleet, hash, port, &ctx.settings.identity) {
                Ok(pod) => in_flight.push(create_one(&api, pod, reserved, ctx, key)),
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
            next += 1;
        }
        match in_flight.next().await {
            Some(Ok(())) => {
                created += 1;
                window += 1;
            }
            Some(Err(e)) => {
                error.get_or_insert(e);
            }
            None => break,
        }
    }
    // Ports of pods never attempted go back.
    if next < ports.len() {
        let mut reservations = ctx.ports.lock().expect("ports lock");
        for (tmp, _) in &ports[next..] {
            reservations.release(tmp);
        }
    }
    if let Some(e) = error {
        warn!(error = %e, created, "creating game-server pods");
        return Err((created, e));
    }
    info!(created, "created game-server pods");
    Ok(created)
}

/// Host ports for `count` new pods of a `Dynamic` fleet, reserved (under temporary
/// keys) before any is created, so concurrent reconciles never hand out the same.
fn reserve_ports(fleet: &GameFleet, ns: &str, count: u32, ctx: &Context) -> Vec<(String, u16)> {
    let mut reservations = ctx.ports.lock().expect("ports lock");
    let all = ctx.pods.state();
    let cached: HashSet<String> = all.iter().map(|p| LoadIndex::key(p)).collect();
    let mut in_use: Vec<u16> = all.iter().filter_map(|p| host_port(p)).collect();
    in_use.extend(reservations.pending(&cached));
    let start = fleet.spec.ports.range_start.clamp(1, 65535) as u16;
    let end = fleet.spec.ports.range_end.clamp(1, 65535) as u16;
    let mut alloc = PortAllocator::new(start, end, in_use);
    (0..count)
        .map(|i| {
            let port = alloc.allocate();
            let tmp = format!("{ns}/pending-{}-{i}", uuid::Uuid::new_v4());
            reservations.reserve(tmp.clone(), port);
            (tmp, port)
        })
        .collect()
}

/// Creates one pod; its port reservation moves from the temporary key to the pod's.
async fn create_one(
    api: &Api<Pod>,
    pod: Pod,
    reserved: Option<(String, u16)>,
    ctx: &Context,
    key: &str,
) -> std::result::Result<(), String> {
    let out = api.create(&PostParams::default(), &pod).await;
    if let Some((tmp, port)) = &reserved {
        let mut reservations = ctx.ports.lock().expect("ports lock");
        reservations.release(tmp);
        if let Ok(p) = &out {
            reservations.reserve(LoadIndex::key(p), *port);
        }
    }
    match out {
        Ok(p) => {
            ctx.metrics.pods_created.inc();
            ctx.expectations.created(key, p);
            Ok(())
        }
        Err(e) => {
            ctx.metrics.pod_create_errors.inc();
            Err(e.to_string())
        }
    }
}

/// Marks busy servers not evictable and empty ones evictable (cluster autoscaler).
async fn mark_evictable(api: &Api<Pod>, changes: &[(String, bool)], ctx: &Context) {
    futures::stream::iter(changes)
        .for_each_concurrent(
            ctx.settings.create_concurrency.max(1),
            |(name, evictable)| async move {
                if let Err(e) = eviction::mark(api, name, *evictable).await {
                    warn!(pod = %name, error = %e, "marking safe-to-evict");
                }
            },
        )
        .await;
}
