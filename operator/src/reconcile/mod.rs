//! The GameFleet controller: a thin `reconcile` that dispatches through the finalizer to
//! [`apply`] (drive the fleet toward its target) and [`cleanup`] (on deletion: drain,
//! delete empty servers, wait for busy ones).
//!
//! [`apply`] reads top to bottom: [`observe`] the fleet's pods and spec in the domain's
//! terms, decide ([`crate::domain::decision`], no Kubernetes), [`act`] on the plan, then
//! [`report`] (Events, gauges, status).

pub mod act;
pub mod expectations;
pub mod observe;
pub mod pods;
pub mod report;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tracing::{info, instrument, warn};

use crate::api::GameFleet;
use crate::domain::decision::{self, Decision};
use crate::domain::fleet::{Removal, RemoveReason, ServerState};
use crate::domain::scaling::Stabilizer;
use crate::error::{Error, Result};
use crate::matches::view::AllocationView;
use crate::metrics::Metrics;
use crate::servers::{EndpointResolver, LoadIndex, ServerClient};
use act::Outcome;
use expectations::{Expectations, PortReservations};
use observe::{Observed, fleet_key};

pub const FINALIZER: &str = "tanks.dev/drain-servers";

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
    pub server_client: Arc<dyn ServerClient>,
    pub resolver: EndpointResolver,
    pub expectations: Expectations,
    pub stabilizers: Mutex<HashMap<String, Stabilizer>>,
    pub ports: Mutex<PortReservations>,
    pub settings: Settings,
    /// The Match controller's allocation view (none when it is off): Matches waiting for
    /// room, by fleet, are demand the fleet scales for; a server holding a match stays
    /// not evictable before its report lists the session.
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
        server_client: Arc<dyn ServerClient>,
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
            server_client,
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

/// Drives one fleet toward its target: observe, decide, act, report.
pub async fn apply(fleet: Arc<GameFleet>, ctx: &Context) -> Result<Action> {
    // The controller drives the pod watch; never decide on a half-listed cache (after a
    // restart that would create duplicates of every running server).
    wait_for_cache(ctx).await?;
    let key = fleet_key(&fleet);
    let hash = pods::template_hash(&fleet);
    let policy = observe::policies(&fleet);

    let observed = observe::observe(&fleet, ctx, &hash, &policy.health);
    let decision = decide(&key, &observed, &policy, ctx);
    let outcome = act::execute(&fleet, &hash, &observed.pods, &decision.plan, ctx, &key).await?;

    report::publish(ctx, &fleet, report::notes(&decision, &outcome, &hash)).await;
    // What was removed or created shows in the status at once, not a reconcile later.
    let servers = if outcome.scaled() || !decision.plan.remove.is_empty() {
        let pods = observe::fleet_pods(&fleet, ctx);
        observe::classify_all(&pods, &hash, &policy.health, &ctx.loads)
    } else {
        observed.servers
    };
    report::status(ctx, &fleet, &servers, &decision, &outcome, &hash).await?;
    Ok(next_look(&decision, &outcome, ctx))
}

/// The domain's decision, with the fleet's stabilizer from the context.
fn decide(
    key: &str,
    observed: &Observed,
    policy: &decision::FleetPolicy,
    ctx: &Context,
) -> Decision {
    let mut stabilizers = ctx.stabilizers.lock().expect("stabilizers lock");
    decision::decide(
        &observed.servers,
        observed.pending_sessions,
        policy,
        stabilizers.entry(key.to_owned()).or_default(),
        Instant::now(),
    )
}

/// Soon after a refused create; else at the resync, or when a held scale-down may take
/// effect if that is sooner.
fn next_look(decision: &Decision, outcome: &Outcome, ctx: &Context) -> Action {
    if outcome.create_error.is_some() {
        return Action::requeue(Duration::from_secs(5));
    }
    let mut next = ctx.settings.resync;
    if let Some(recheck) = decision.recheck_in {
        next = next.min(recheck);
    }
    Action::requeue(next)
}

/// On deletion: drain every server, delete the empty ones, keep the finalizer until the
/// busy ones have emptied, so deleting a fleet never cuts a live match.
pub async fn cleanup(fleet: Arc<GameFleet>, ctx: &Context) -> Result<Action> {
    wait_for_cache(ctx).await?;
    let key = fleet_key(&fleet);
    let ns = fleet.namespace().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let health = observe::policies(&fleet).health;
    let hash = pods::template_hash(&fleet);
    let mut busy = 0;
    for pod in observe::fleet_pods(&fleet, ctx) {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let server = observe::classify(&pod, &hash, &health, &ctx.loads);
        let empty = match server.state {
            ServerState::Failed | ServerState::Lost | ServerState::Starting => server.sessions == 0,
            _ => act::drain(&pod, ctx).await.is_some_and(|r| r.sessions == 0),
        };
        if empty {
            let removal = Removal {
                name: pod.name_any(),
                reason: RemoveReason::ScaleDown,
                drain_first: false,
            };
            act::delete_pod(&pods_api, &pod, ctx, &key, &removal).await?;
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

#[cfg(test)]
mod tests;
