//! The GameFleet controller: a thin `reconcile` that dispatches through the finalizer to
//! [`apply`] (drive the fleet toward its target) and [`cleanup`] (on deletion: drain,
//! delete empty servers, wait for busy ones).

pub mod pods;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::api::gamefleet::PortKind;
use crate::api::{GameFleet, labels};
use crate::control::{EndpointResolver, GameServerControl};
use crate::domain::fleet::{
    self, CountOrPercent, HealthPolicy, Observation, Placement, Removal, RemoveReason,
    RolloutPolicy, Server, ServerState,
};
use crate::domain::ports::PortAllocator;
use crate::domain::scaling::{self, Buffer, Load, ScalingPolicy, Stabilizer};
use crate::error::{Error, Result};
use crate::index::{Expectations, LoadIndex, PortReservations};
use crate::matches::view::AllocationView;
use crate::metrics::Metrics;

pub const FINALIZER: &str = "tanks.dev/drain-servers";
/// Field manager of the safe-to-evict annotation (its own, so it never fights others).
pub const EVICT_MANAGER: &str = "tanks-operator-evict";

/// Tunables of the reconciler.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pod creations in flight at once.
    pub create_concurrency: usize,
    /// Look at every fleet at least this often (time-based rules: startup timeout,
    /// lost servers, stabilization).
    pub resync: Duration,
    /// Who we are (the Lease identity): recorded on created pods.
    pub identity: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            create_concurrency: 64,
            resync: Duration::from_secs(15),
            identity: "operator".into(),
        }
    }
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub pods: Store<Pod>,
    /// True once the pod cache has listed everything. (One task waits on the store and
    /// publishes here: kube-runtime 5.0's `Store::wait_until_ready` wakes only the last
    /// of several concurrent waiters.)
    pub cache_ready: tokio::sync::watch::Receiver<bool>,
    pub loads: Arc<LoadIndex>,
    pub control: Arc<dyn GameServerControl>,
    pub resolver: EndpointResolver,
    pub expectations: Expectations,
    pub stabilizers: Mutex<HashMap<String, Stabilizer>>,
    pub ports: Mutex<PortReservations>,
    pub settings: Settings,
    /// Matches waiting for room, by fleet: demand the fleet scales for (none when the
    /// Match controller is off).
    pub pending_matches: Option<Arc<AllocationView>>,
}

impl Context {
    // One argument per shared part; a builder would only move the list elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        pods: Store<Pod>,
        cache_ready: tokio::sync::watch::Receiver<bool>,
        loads: Arc<LoadIndex>,
        control: Arc<dyn GameServerControl>,
        resolver: EndpointResolver,
        settings: Settings,
    ) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "tanks-operator".into(),
            instance: Some(settings.identity.clone()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            pods,
            cache_ready,
            loads,
            control,
            resolver,
            expectations: Expectations::default(),
            stabilizers: Mutex::default(),
            ports: Mutex::default(),
            settings,
            pending_matches: None,
        }
    }
}

#[instrument(skip_all, fields(fleet = %fleet.name_any(), ns = fleet.namespace().unwrap_or_default()))]
pub async fn reconcile(fleet: Arc<GameFleet>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&["GameFleet"])
        .start_timer();
    let ns = fleet.namespace().unwrap_or_default();
    let api: Api<GameFleet> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, fleet, |event| async {
        match event {
            Finalizer::Apply(fleet) => apply(fleet, &ctx).await,
            Finalizer::Cleanup(fleet) => cleanup(fleet, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    timer.observe_duration();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .with_label_values(&["GameFleet", outcome])
        .inc();
    result
}

pub fn error_policy(fleet: Arc<GameFleet>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(fleet = %fleet.name_any(), kind = error.kind(), %error, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .with_label_values(&["GameFleet", error.kind()])
        .inc();
    Action::requeue(Duration::from_secs(5))
}

async fn wait_for_cache(ctx: &Context) -> Result<()> {
    let mut ready = ctx.cache_ready.clone();
    ready
        .wait_for(|r| *r)
        .await
        .map(|_| ())
        .map_err(|_| Error::CacheNotReady)
}

fn fleet_key(fleet: &GameFleet) -> String {
    format!(
        "{}/{}",
        fleet.namespace().unwrap_or_default(),
        fleet.name_any()
    )
}

/// The fleet's pods: from the cache, owned by this very fleet (not a deleted namesake),
/// with this operator's own recent creations and deletions laid over.
fn fleet_pods(fleet: &GameFleet, ctx: &Context) -> Vec<Arc<Pod>> {
    let ns = fleet.namespace();
    let name = fleet.name_any();
    let uid = fleet.uid();
    let cached: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| {
            p.namespace() == ns
                && p.labels().get(labels::FLEET) == Some(&name)
                && p.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .cloned()
        .collect();
    ctx.expectations.overlay(&fleet_key(fleet), cached)
}

fn elapsed_since(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Duration {
    t.map(|t| {
        let d = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
        Duration::try_from(d).unwrap_or_default()
    })
    .unwrap_or_default()
}

/// A pod and its load as the decisions see them.
fn classify(pod: &Pod, hash: &str, health: &HealthPolicy, loads: &LoadIndex) -> Server {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let entry = loads.get(&LoadIndex::key(pod));
    let obs = Observation {
        terminating: pod.metadata.deletion_timestamp.is_some(),
        failed: matches!(phase, "Failed" | "Succeeded"),
        age: elapsed_since(pod.metadata.creation_timestamp.as_ref()),
        running_for: (phase == "Running")
            .then(|| elapsed_since(status.and_then(|s| s.start_time.as_ref()))),
        report: entry.as_ref().and_then(|e| e.view()),
        failing_for: entry
            .as_ref()
            .and_then(|e| e.failing_since)
            .map(|t| t.elapsed()),
        drain_requested: entry.as_ref().is_some_and(|e| e.drain_requested),
    };
    let report = obs.report.unwrap_or_default();
    Server {
        name: pod.name_any(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        current: pod.labels().get(labels::TEMPLATE_HASH).map(String::as_str) == Some(hash),
        state: fleet::classify(&obs, health),
        sessions: report.sessions,
        players: report.players,
        evictable: pod
            .annotations()
            .get(labels::SAFE_TO_EVICT)
            .map(|v| v == "true"),
    }
}

fn count_or_percent(
    v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
) -> CountOrPercent {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match v {
        IntOrString::Int(n) => CountOrPercent::Count((*n).max(0) as u32),
        IntOrString::String(s) => {
            CountOrPercent::Percent(s.trim_end_matches('%').parse().unwrap_or(25))
        }
    }
}

fn policies(fleet: &GameFleet) -> (ScalingPolicy, RolloutPolicy, HealthPolicy, Placement) {
    let spec = &fleet.spec;
    let s = &spec.scaling;
    let buffer = match (s.buffer.slots, s.buffer.percent) {
        (_, Some(p)) => Buffer::Percent(p.max(0) as u32),
        (Some(n), None) => Buffer::Slots(n.max(0) as u32),
        (None, None) => Buffer::Slots(0),
    };
    let scaling = ScalingPolicy {
        min_replicas: s.min_replicas.max(0) as u32,
        max_replicas: s.max_replicas.max(0) as u32,
        floor: spec.replicas.map(|r| r.max(0) as u32),
        buffer,
        sessions_per_server: spec.capacity.sessions_per_server.max(1) as u32,
        scale_to_zero: s.scale_to_zero,
    };
    let rollout = RolloutPolicy {
        max_surge: count_or_percent(&spec.rolling_update.max_surge),
        max_unavailable: count_or_percent(&spec.rolling_update.max_unavailable),
    };
    let health = HealthPolicy {
        startup_timeout: Duration::from_secs(spec.health.startup_timeout_seconds.max(1) as u64),
        unresponsive: Duration::from_secs(spec.health.unresponsive_seconds.max(1) as u64),
    };
    let placement = match spec.scheduling {
        crate::api::gamefleet::Scheduling::Packed => Placement::Packed,
        crate::api::gamefleet::Scheduling::Distributed => Placement::Distributed,
    };
    (scaling, rollout, health, placement)
}

/// Drives one fleet toward its target: replace, scale, roll, mark, then report.
pub async fn apply(fleet: Arc<GameFleet>, ctx: &Context) -> Result<Action> {
    // The controller drives the pod watch; never decide on a half-listed cache (after a
    // restart that would create duplicates of every running server).
    wait_for_cache(ctx).await?;
    let key = fleet_key(&fleet);
    let ns = fleet.namespace().unwrap_or_default();
    let hash = pods::template_hash(&fleet);
    let (scaling_policy, rollout, health, placement) = policies(&fleet);

    let pods = fleet_pods(&fleet, ctx);
    let by_name: HashMap<String, &Pod> = pods.iter().map(|p| (p.name_any(), &**p)).collect();
    let servers: Vec<Server> = pods
        .iter()
        .map(|p| classify(p, &hash, &health, &ctx.loads))
        .collect();

    let stays = |s: &&Server| {
        matches!(
            s.state,
            ServerState::Starting | ServerState::Ready | ServerState::Unready
        )
    };
    let load = Load {
        sessions: servers.iter().filter(stays).map(|s| s.sessions).sum(),
        busy_servers: servers
            .iter()
            .filter(stays)
            .filter(|s| s.sessions > 0)
            .count() as u32,
        pending_sessions: ctx
            .pending_matches
            .as_ref()
            .map_or(0, |view| view.pending(&ns, &fleet.name_any())),
    };
    let rec = scaling::recommend(&scaling_policy, load);
    let current = servers.iter().filter(stays).filter(|s| s.current).count() as u32;
    let window = Duration::from_secs(fleet.spec.scaling.scale_down_delay_seconds.max(0) as u64);
    let stable = ctx
        .stabilizers
        .lock()
        .expect("stabilizers lock")
        .entry(key.clone())
        .or_default()
        .stabilize(Instant::now(), rec.replicas, current, window);
    let target = stable.replicas;
    let reason = if target == rec.replicas {
        rec.reason.clone()
    } else {
        format!(
            "holding {target} for the scale-down delay (load asks {}: {})",
            rec.replicas, rec.reason
        )
    };

    let plan = fleet::plan(&servers, target, &rollout, placement);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    // Removals: failed, lost and drained servers at once; empty ones after a drain call
    // confirms they are still empty.
    let mut removed: HashMap<RemoveReason, u32> = HashMap::new();
    for r in &plan.remove {
        let Some(pod) = by_name.get(&r.name) else {
            continue;
        };
        if r.drain_first && !drain_confirms_empty(pod, ctx).await {
            continue;
        }
        if delete_pod(&pods_api, pod, ctx, &key, r).await? {
            *removed.entry(r.reason).or_default() += 1;
        }
    }
    // Busy old servers: told to take no new session; they go once empty.
    let mut drained = 0;
    for name in &plan.drain {
        if let Some(pod) = by_name.get(name)
            && drain(pod, ctx).await.is_some()
        {
            drained += 1;
        }
    }

    let mut create_error = None;
    let created = if plan.create > 0 {
        match create_pods(&fleet, &hash, plan.create, ctx, &key).await {
            Ok(n) => n,
            Err((n, e)) => {
                create_error = Some(e);
                n
            }
        }
    } else {
        0
    };

    mark_evictable(&pods_api, &plan.evictable, ctx).await;

    // Events for what changed, one per kind of decision.
    let scale_downs = removed.get(&RemoveReason::ScaleDown).copied().unwrap_or(0);
    if created > 0 {
        let rolling = servers
            .iter()
            .any(|s| !s.current && s.state != ServerState::Terminating);
        let (why, verb) = if rolling {
            ("RollingUpdate", "Rolling")
        } else {
            ("ScaledUp", "Scale")
        };
        publish(
            ctx,
            &fleet,
            EventType::Normal,
            why,
            verb,
            format!("created {created} servers toward {target}: {reason}"),
        )
        .await;
    }
    if scale_downs > 0 {
        publish(
            ctx,
            &fleet,
            EventType::Normal,
            "ScaledDown",
            "Scale",
            format!("removed {scale_downs} empty servers toward {target}: {reason}"),
        )
        .await;
    }
    let outdated = removed.get(&RemoveReason::Outdated).copied().unwrap_or(0);
    if outdated > 0 || drained > 0 {
        publish(ctx, &fleet, EventType::Normal, "RollingUpdate", "Rolling", format!(
            "template {hash}: removed {outdated} empty old servers, draining {drained} busy ones"
        ))
        .await;
    }
    let replaced = removed.get(&RemoveReason::Failed).copied().unwrap_or(0)
        + removed.get(&RemoveReason::Lost).copied().unwrap_or(0);
    if replaced > 0 {
        publish(
            ctx,
            &fleet,
            EventType::Warning,
            "ReplacedServers",
            "Replace",
            format!("replacing {replaced} failed or unresponsive servers"),
        )
        .await;
    }
    if !plan.lost_busy.is_empty() {
        publish(
            ctx,
            &fleet,
            EventType::Warning,
            "ServersNotReporting",
            "Replace",
            format!(
                "{} busy servers stopped reporting; kept until they fail or empty: {}",
                plan.lost_busy.len(),
                plan.lost_busy.join(", ")
            ),
        )
        .await;
    }
    if let Some(e) = &create_error {
        publish(
            ctx,
            &fleet,
            EventType::Warning,
            "CreateFailed",
            "Scale",
            e.clone(),
        )
        .await;
    }

    let scaled = created > 0 || scale_downs > 0;
    let servers_now: Vec<Server> = if scaled || !plan.remove.is_empty() {
        fleet_pods(&fleet, ctx)
            .iter()
            .map(|p| classify(p, &hash, &health, &ctx.loads))
            .collect()
    } else {
        servers
    };
    let facts = status::Facts {
        servers: &servers_now,
        desired: target,
        reason: &reason,
        hash: &hash,
        scaled,
        at_max: rec.replicas >= scaling_policy.max_replicas && scaling_policy.max_replicas > 0,
        create_error: create_error.as_deref(),
    };
    let st = status::compute(&fleet, &facts);
    let name = fleet.name_any();
    for (measure, value) in [
        ("replicas", i64::from(st.replicas)),
        ("ready", i64::from(st.ready_replicas)),
        ("allocated", i64::from(st.allocated_replicas)),
        ("draining", i64::from(st.draining_replicas)),
        ("desired", i64::from(st.desired_replicas)),
        ("players", st.players),
        ("sessions", st.sessions),
        ("capacity", st.capacity),
    ] {
        ctx.metrics.set_fleet(&ns, &name, measure, value);
    }
    let api: Api<GameFleet> = Api::namespaced(ctx.client.clone(), &ns);
    status::write(&api, &fleet, st).await?;

    if create_error.is_some() {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let mut next = ctx.settings.resync;
    if let Some(recheck) = stable.recheck_in {
        next = next.min(recheck);
    }
    Ok(Action::requeue(next))
}

/// On deletion: drain every server, delete the empty ones, keep the finalizer until the
/// busy ones have emptied, so deleting a fleet never cuts a live match.
pub async fn cleanup(fleet: Arc<GameFleet>, ctx: &Context) -> Result<Action> {
    wait_for_cache(ctx).await?;
    let key = fleet_key(&fleet);
    let ns = fleet.namespace().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let (_, _, health, _) = policies(&fleet);
    let hash = pods::template_hash(&fleet);
    let mut busy = 0;
    for pod in fleet_pods(&fleet, ctx) {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let server = classify(&pod, &hash, &health, &ctx.loads);
        let empty = match server.state {
            ServerState::Failed | ServerState::Lost | ServerState::Starting => server.sessions == 0,
            _ => drain(&pod, ctx).await.is_some_and(|r| r.sessions == 0),
        };
        if empty {
            let removal = Removal {
                name: pod.name_any(),
                reason: RemoveReason::ScaleDown,
                drain_first: false,
            };
            delete_pod(&pods_api, &pod, ctx, &key, &removal).await?;
        } else {
            busy += 1;
        }
    }
    if busy > 0 {
        info!(busy, "fleet deleted; waiting for busy servers to empty");
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    ctx.expectations.forget(&key);
    ctx.stabilizers
        .lock()
        .expect("stabilizers lock")
        .remove(&key);
    ctx.metrics.forget_fleet(&ns, &fleet.name_any());
    Ok(Action::await_change())
}

async fn publish(
    ctx: &Context,
    fleet: &GameFleet,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &fleet.object_ref(&())).await {
        warn!(error = %e, reason, "publishing event");
    }
}

/// Tells a server to drain; `Some(report)` when it answered.
async fn drain(pod: &Pod, ctx: &Context) -> Option<tanks_core::protocol::control::LoadReport> {
    let key = LoadIndex::key(pod);
    let base = (ctx.resolver)(pod)?;
    match ctx.control.drain(&base).await {
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
async fn delete_pod(
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

/// Creates `count` pods in slow-start batches (1, 2, 4, ... like the ReplicaSet
/// controller), `create_concurrency` in flight, stopping at the first refusal so a bad
/// template costs one failed request, not hundreds. Returns how many were created.
async fn create_pods(
    fleet: &GameFleet,
    hash: &str,
    count: u32,
    ctx: &Context,
    key: &str,
) -> std::result::Result<u32, (u32, String)> {
    let ns = fleet.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let dynamic = fleet.spec.ports.policy == PortKind::Dynamic;
    let mut created = 0u32;
    let mut batch = 1u32;
    while created < count {
        let n = batch.min(count - created);
        // Ports for the batch, under the lock so concurrent reconciles never pick the same.
        let mut reserved = Vec::new();
        if dynamic {
            let mut reservations = ctx.ports.lock().expect("ports lock");
            let all = ctx.pods.state();
            let cached: HashSet<String> = all.iter().map(|p| LoadIndex::key(p)).collect();
            let mut in_use: Vec<u16> = all.iter().filter_map(|p| pods::host_port(p)).collect();
            in_use.extend(reservations.pending(&cached));
            let start = fleet.spec.ports.range_start.clamp(1, 65535) as u16;
            let end = fleet.spec.ports.range_end.clamp(1, 65535) as u16;
            let mut alloc = PortAllocator::new(start, end, in_use);
            for i in 0..n {
                let port = alloc.allocate();
                let tmp = format!("{ns}/pending-{}-{i}", uuid::Uuid::new_v4());
                reservations.reserve(tmp.clone(), port);
                reserved.push((tmp, port));
            }
        }
        let pods: Vec<(Option<(String, u16)>, Pod)> = (0..n as usize)
            .map(|i| {
                let res = reserved.get(i).cloned();
                let port = res.as_ref().map(|r| r.1);
                pods::build(fleet, hash, port, &ctx.settings.identity).map(|p| (res, p))
            })
            .collect::<Result<_>>()
            .map_err(|e| (created, e.to_string()))?;
        let results: Vec<std::result::Result<(), String>> = futures::stream::iter(pods)
            .map(|(res, pod)| {
                let api = api.clone();
                async move {
                    let out = api.create(&PostParams::default(), &pod).await;
                    let mut reservations = ctx.ports.lock().expect("ports lock");
                    if let Some((tmp, port)) = &res {
                        reservations.release(tmp);
                        if let Ok(p) = &out {
                            reservations.reserve(LoadIndex::key(p), *port);
                        }
                    }
                    drop(reservations);
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
            })
            .buffer_unordered(ctx.settings.create_concurrency.max(1))
            .collect()
            .await;
        let ok = results.iter().filter(|r| r.is_ok()).count() as u32;
        created += ok;
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            warn!(error = %e, created, "creating game-server pods");
            return Err((created, e));
        }
        batch = batch.saturating_mul(2);
    }
    info!(created, "created game-server pods");
    Ok(created)
}

/// Marks busy servers not evictable and empty ones evictable (cluster autoscaler).
async fn mark_evictable(api: &Api<Pod>, changes: &[(String, bool)], ctx: &Context) {
    futures::stream::iter(changes)
        .for_each_concurrent(ctx.settings.create_concurrency.max(1), |(name, evictable)| async move {
            let patch = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "annotations": {labels::SAFE_TO_EVICT: evictable.to_string()}},
            });
            let pp = PatchParams::apply(EVICT_MANAGER).force();
            if let Err(e) = api.patch(name, &pp, &Patch::Apply(patch)).await {
                warn!(pod = %name, error = %e, "marking safe-to-evict");
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
