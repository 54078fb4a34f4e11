//! The Match controller. One reconcile per Match, by phase:
//!
//! - `Pending`: reserve a slot in the [`AllocationView`], ask that game server for the
//!   session, mark its pod not evictable (unless it already is, busy), publish the result
//!   for the matchmaker, write `Allocated` with the endpoint.
//!   No room: stay `Pending` (counted for fleet scaling) and look again shortly; `Failed`
//!   once `pendingTimeout` has passed.
//! - `Allocated` / `Running`: follow the server's load report: `Running` once players are
//!   in, `Finished` once it lists the session as ended (the slot returns), `Failed` when
//!   the server is gone.
//! - `Finished` / `Failed`: deleted after the TTL.
//!
//! One status write per transition (a JSON Patch replacing the whole status): an
//! allocation costs the API server the create (by the consumer), this patch, and, on a
//! server that was empty, one pod patch (the safe-to-evict mark).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tanks_core::protocol::control::{CreateSession, SessionCreated};
use tanks_core::protocol::matchmaking::{Endpoint, MATCH_ALLOCATED, MatchAllocated};
use tracing::{instrument, warn};

use crate::api::conditions::condition;
use crate::api::gamefleet::Scheduling;
use crate::api::matches::{MatchEndpoint, MatchPhase, MatchStatus};
use crate::api::{Edge, GameFleet, Match};
use crate::domain::allocation::Strategy;
use crate::error::{Error, Result};
use crate::matches::metrics::MatchMetrics;
use crate::matches::publish::AllocationPublisher;
use crate::matches::view::AllocationView;
use crate::metrics::Metrics;
use crate::servers::address::game_endpoint;
use crate::servers::{EndpointResolver, LoadIndex, ServerClient, ServerError, eviction};

/// Field manager of Match status writes.
pub const MANAGER: &str = "tanks-operator-match";
const KIND: &str = "Match";
/// Servers tried in one reconcile before waiting (each refusal marks one server).
const MAX_TRIES: usize = 5;
/// Players reach game servers over UDP.
const PROTOCOL: &str = "UDP";

#[derive(Debug, Clone)]
pub struct MatchSettings {
    /// A match still without a server after this long fails.
    pub pending_timeout: Duration,
    /// How often a pending match looks for room again.
    pub pending_retry: Duration,
    /// Finished and Failed matches are deleted after this long.
    pub finished_ttl: Duration,
    /// How often an allocated match is checked besides the load-report triggers.
    pub resync: Duration,
    /// A report this much newer than the allocation that lists the session neither live
    /// nor finished means the server lost it (a restart).
    pub vanish_grace: Duration,
    /// For fleets that cannot be read.
    pub default_strategy: Strategy,
}

impl Default for MatchSettings {
    fn default() -> Self {
        MatchSettings {
            pending_timeout: Duration::from_secs(300),
            pending_retry: Duration::from_secs(1),
            finished_ttl: Duration::from_secs(300),
            resync: Duration::from_secs(60),
            vanish_grace: Duration::from_secs(10),
            default_strategy: Strategy::Packed,
        }
    }
}

pub struct MatchContext {
    pub client: Client,
    pub pods: Store<Pod>,
    pub fleets: Store<GameFleet>,
    /// Edges, when the operator runs the edge (see [`edge_endpoint`]).
    pub edges: Option<Store<Edge>>,
    pub loads: Arc<LoadIndex>,
    pub view: Arc<AllocationView>,
    pub server_client: Arc<dyn ServerClient>,
    pub resolver: EndpointResolver,
    pub publisher: Option<AllocationPublisher>,
    pub metrics: Arc<Metrics>,
    pub match_metrics: Arc<MatchMetrics>,
    pub settings: MatchSettings,
    /// Rebuilds the view from the API server before the first decision (see
    /// [`AllocationView`]); `None` in unit tests.
    pub rebuild: Option<Rebuild>,
    pub rebuilt: tokio::sync::OnceCell<()>,
}

/// What the view is rebuilt from. The first reconcile runs it: the controller starts
/// reconciling only once its Match cache is complete, and the caller starts the
/// controller only once the pod cache is.
pub struct Rebuild {
    pub matches: Store<Match>,
    pub pods: Store<Pod>,
    /// Longest wait for the first load report of every running server.
    pub first_round_wait: Duration,
}

async fn rebuild(r: &Rebuild, loads: &LoadIndex, view: &AllocationView) {
    let mut held = 0;
    for m in r.matches.state() {
        let status = m.status.clone().unwrap_or_default();
        if status.phase.holds_slot() {
            held += 1;
            view.observe(
                &m.namespace().unwrap_or_default(),
                &m.name_any(),
                status.game_server.as_deref(),
                true,
            );
        }
    }
    let deadline = Instant::now() + r.first_round_wait;
    loop {
        let waiting = r
            .pods
            .state()
            .iter()
            .filter(|p| {
                p.labels().contains_key(crate::api::labels::FLEET)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && loads.get(&LoadIndex::key(p)).is_none()
            })
            .count();
        if waiting == 0 || Instant::now() >= deadline {
            tracing::info!(
                held,
                unreported_servers = waiting,
                "allocation view rebuilt"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[instrument(skip_all, fields(name = %m.name_any(), ns = m.namespace().unwrap_or_default()))]
pub async fn reconcile(m: Arc<Match>, ctx: Arc<MatchContext>) -> Result<Action> {
    if let Some(r) = &ctx.rebuild {
        ctx.rebuilt
            .get_or_init(|| rebuild(r, &ctx.loads, &ctx.view))
            .await;
    }
    let timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&[KIND])
        .start_timer();
    let result = match m.phase() {
        MatchPhase::Pending => allocate(&m, &ctx).await,
        MatchPhase::Allocated | MatchPhase::Running => follow(&m, &ctx).await,
        MatchPhase::Finished | MatchPhase::Failed => expire(&m, &ctx).await,
    };
    timer.observe_duration();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .with_label_values(&[KIND, outcome])
        .inc();
    result
}

pub fn error_policy(m: Arc<Match>, error: &Error, ctx: Arc<MatchContext>) -> Action {
    warn!(name = %m.name_any(), kind = error.kind(), %error, "match reconcile failed");
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[KIND, error.kind()])
        .inc();
    Action::requeue(ctx.settings.pending_retry)
}

fn now() -> Timestamp {
    Timestamp::now()
}

fn age(m: &Match) -> Duration {
    since(m.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn since(t: Option<Timestamp>) -> Duration {
    t.and_then(|t| Duration::try_from(now().duration_since(t)).ok())
        .unwrap_or_default()
}

fn parse_time(s: Option<&String>) -> Option<Timestamp> {
    s.and_then(|s| s.parse().ok())
}

fn strategy(m: &Match, ctx: &MatchContext) -> Strategy {
    let r = ObjectRef::<GameFleet>::new(&m.spec.fleet).within(&m.namespace().unwrap_or_default());
    match ctx.fleets.get(&r).map(|f| f.spec.scheduling) {
        Some(Scheduling::Packed) => Strategy::Packed,
        Some(Scheduling::Distributed) => Strategy::Distributed,
        None => ctx.settings.default_strategy,
    }
}

/// The conditions a Match shows now, for the next condition's transition time.
fn previous_conditions(m: &Match) -> &[Condition] {
    m.status.as_ref().map_or(&[], |s| &s.conditions)
}

/// Replaces the whole status with one JSON Patch `add /status`. Cheaper for the API
/// server than a server-side apply (no managed-fields merge: about a tenth of the status
/// write's cost, measured with `alloc-bench`), and as whole: fields left out are gone.
async fn write_status(m: &Match, ctx: &MatchContext, status: &MatchStatus) -> Result<()> {
    let api: Api<Match> = Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default());
    api.patch_status(
        &m.name_any(),
        &PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        },
        &Patch::<()>::Json(status_patch(status)?),
    )
    .await?;
    Ok(())
}

/// `[{"op": "add", "path": "/status", "value": status}]`: `add` on an existing member
/// replaces it, so this works for the first status and every later one.
pub fn status_patch(status: &MatchStatus) -> Result<json_patch::Patch> {
    let value = serde_json::to_value(status).map_err(Error::Serialize)?;
    Ok(json_patch::Patch(vec![json_patch::PatchOperation::Add(
        json_patch::AddOperation {
            path: json_patch::jsonptr::PointerBuf::parse("/status").expect("a valid pointer"),
            value,
        },
    )]))
}

/// A pending match: reserve a slot → open the session → publish → status. A server
/// that refuses or cannot be reached gives its slot back and the next is tried, up to
/// [`MAX_TRIES`]; with no room at all the match waits.
async fn allocate(m: &Match, ctx: &MatchContext) -> Result<Action> {
    let waited = age(m);
    if waited >= ctx.settings.pending_timeout {
        ctx.view
            .release(&m.namespace().unwrap_or_default(), &m.name_any());
        let reason = format!(
            "no game server of fleet {} had room within {}s",
            m.spec.fleet,
            ctx.settings.pending_timeout.as_secs()
        );
        return fail(m, ctx, "AllocationTimeout", &reason).await;
    }
    let strategy = strategy(m, ctx);
    for _ in 0..MAX_TRIES {
        let started = Instant::now();
        let target = match reserve(m, ctx, strategy) {
            Reserved::Server(target) => target,
            Reserved::Unreachable => continue,
            Reserved::NoRoom => {
                ctx.match_metrics
                    .allocations
                    .with_label_values(&["no_capacity"])
                    .inc();
                return wait_for_room(m, ctx, waited).await;
            }
        };
        let Some(session) = open_session(m, ctx, &target).await? else {
            continue;
        };
        protect(m, ctx, &target).await?;
        publish(m, ctx, &target, &session).await?;
        write_allocated(m, ctx, target, session).await?;
        ctx.match_metrics
            .allocations
            .with_label_values(&["allocated"])
            .inc();
        ctx.match_metrics
            .allocation_duration
            .observe(started.elapsed().as_secs_f64());
        return Ok(Action::requeue(ctx.settings.resync));
    }
    wait_for_room(m, ctx, waited).await
}

/// The game server a match's slot is reserved on, and where it is reached.
struct Target {
    /// `namespace/pod`, as the view names servers.
    key: String,
    /// The pod name.
    server: String,
    /// Its control interface.
    base: String,
    /// Where players join.
    endpoint: (String, u16),
    /// Its pod is marked not evictable and its report lists sessions, so the GameFleet
    /// controller keeps it so: no mark to write.
    protected: bool,
}

enum Reserved {
    Server(Target),
    /// The view chose a server whose pod has no address (yet): skipped.
    Unreachable,
    NoRoom,
}

/// Reserves a slot in the view for `m` and finds where its server is reached.
fn reserve(m: &Match, ctx: &MatchContext, strategy: Strategy) -> Reserved {
    let ns = m.namespace().unwrap_or_default();
    let Some(reserved) = ctx
        .view
        .reserve(&ns, &m.name_any(), &m.spec.fleet, strategy)
    else {
        return Reserved::NoRoom;
    };
    let key = reserved.server().to_owned();
    let server = key
        .split_once('/')
        .map_or(key.as_str(), |(_, n)| n)
        .to_owned();
    let pod = ctx.pods.get(&ObjectRef::new(&server).within(&ns));
    let fronted = ctx
        .edges
        .as_ref()
        .and_then(|edges| edge_endpoint(edges, &ns, &m.spec.fleet, &server));
    let reached = pod.as_deref().and_then(|p| {
        let endpoint = match &fronted {
            // A server the edge has no port for (yet) is not reachable by players.
            Some(edge) => edge.clone()?,
            None => game_endpoint(p)?,
        };
        Some(((ctx.resolver)(p)?, endpoint))
    });
    match reached {
        Some((base, endpoint)) => Reserved::Server(Target {
            protected: pod.as_deref().and_then(eviction::evictable) == Some(false)
                && ctx
                    .loads
                    .get(&key)
                    .and_then(|e| e.report)
                    .is_some_and(|r| r.sessions > 0),
            key,
            server,
            base,
            endpoint,
        }),
        None => {
            give_back(m, ctx, &key);
            Reserved::Unreachable
        }
    }
}

/// Where players reach `server` of `fleet` through an Edge of `ns` that fronts the
/// fleet: `Some(None)` when one does but has no port for that server yet (just
/// created: the Edge controller has not rendered it), `None` when no Edge fronts the
/// fleet (players then go to the server directly). With several Edges on one fleet, the
/// first by name is used.
pub fn edge_endpoint(
    edges: &Store<Edge>,
    ns: &str,
    fleet: &str,
    server: &str,
) -> Option<Option<(String, u16)>> {
    let mut fronting: Vec<_> = edges
        .state()
        .into_iter()
        .filter(|e| {
            e.namespace().as_deref() == Some(ns) && e.spec.fleets.iter().any(|f| f == fleet)
        })
        .collect();
    fronting.sort_by_key(|e| e.name_any());
    let edge = fronting.first()?;
    let port = edge
        .status
        .as_ref()
        .and_then(|s| s.ports.get(server))
        .and_then(|p| u16::try_from(*p).ok());
    Some(port.map(|p| (edge.spec.public_address.clone(), p)))
}

/// Releases `m`'s reservation and skips its server for a while.
fn give_back(m: &Match, ctx: &MatchContext, server_key: &str) {
    ctx.view
        .release(&m.namespace().unwrap_or_default(), &m.name_any());
    ctx.view.refused(server_key);
}

/// Asks the target for the match's session: `None` when it refused (the slot is given
/// back and another server may say yes), an error when the call failed.
async fn open_session(
    m: &Match,
    ctx: &MatchContext,
    target: &Target,
) -> Result<Option<SessionCreated>> {
    let request = CreateSession {
        match_id: m.name_any(),
        players: m.spec.players.clone(),
        map: m.spec.map.clone(),
        mode: m.spec.mode.clone(),
    };
    let step = Instant::now();
    match ctx
        .server_client
        .create_session(&target.base, &request)
        .await
    {
        Ok(created) => {
            ctx.match_metrics.observe_step("session", step);
            Ok(Some(created))
        }
        Err(ServerError::Refused(why, message)) => {
            tracing::debug!(server = %target.server, %why, %message, "server refused the session; trying another");
            ctx.match_metrics
                .allocations
                .with_label_values(&["refused"])
                .inc();
            give_back(m, ctx, &target.key);
            Ok(None)
        }
        Err(e) => {
            ctx.match_metrics
                .allocations
                .with_label_values(&["error"])
                .inc();
            give_back(m, ctx, &target.key);
            Err(Error::Session(e))
        }
    }
}

/// Marks the target's pod not evictable before anyone hears of the endpoint: the cluster
/// autoscaler must not take a server players are about to join. The GameFleet controller
/// would mark it only once a load report lists the session (up to a poll later). A
/// failure retries the whole step, like [`publish`] (the session call is idempotent).
async fn protect(m: &Match, ctx: &MatchContext, target: &Target) -> Result<()> {
    if target.protected {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default());
    let step = Instant::now();
    eviction::mark(&api, &target.server, false).await?;
    ctx.match_metrics.observe_step("protect", step);
    Ok(())
}

/// Tells the matchmaker (when there is a broker). Before the status: a failure here
/// retries the whole step (the slot and the session stay), so the matchmaker hears of
/// every allocation at least once.
async fn publish(
    m: &Match,
    ctx: &MatchContext,
    target: &Target,
    session: &SessionCreated,
) -> Result<()> {
    let Some(publisher) = &ctx.publisher else {
        return Ok(());
    };
    let (address, port) = &target.endpoint;
    let message = MatchAllocated {
        event_type: MATCH_ALLOCATED.into(),
        event_id: m.spec.source_event_id.clone(),
        match_id: m.spec.match_id.clone(),
        namespace: m.namespace().unwrap_or_default(),
        name: m.name_any(),
        endpoint: Endpoint {
            address: address.clone(),
            port: *port,
            protocol: PROTOCOL.into(),
        },
        session_id: session.session_id.clone(),
        game_server: target.server.clone(),
        players: m.spec.players.clone(),
    };
    let step = Instant::now();
    publisher
        .publish(&message)
        .await
        .map_err(|e| Error::Publish(e.to_string()))?;
    ctx.match_metrics.observe_step("publish", step);
    Ok(())
}

/// Writes `Allocated` with the endpoint: the allocation's one status write.
async fn write_allocated(
    m: &Match,
    ctx: &MatchContext,
    target: Target,
    session: SessionCreated,
) -> Result<()> {
    let (address, port) = target.endpoint;
    let status = MatchStatus {
        phase: MatchPhase::Allocated,
        game_server: Some(target.server.clone()),
        endpoint: Some(MatchEndpoint {
            address,
            port: i32::from(port),
            protocol: PROTOCOL.into(),
        }),
        session_id: Some(session.session_id),
        allocated_at: Some(now().to_string()),
        observed_generation: m.metadata.generation,
        conditions: vec![condition(
            previous_conditions(m),
            "Allocated",
            true,
            "SessionCreated",
            format!("session on {}", target.server),
            m.metadata.generation,
        )],
        ..Default::default()
    };
    let step = Instant::now();
    write_status(m, ctx, &status).await?;
    ctx.match_metrics.observe_step("status", step);
    Ok(())
}

/// No server has room: say so once in the status, look again shortly.
async fn wait_for_room(m: &Match, ctx: &MatchContext, waited: Duration) -> Result<Action> {
    let reason = format!(
        "waiting for a game server of fleet {} with room",
        m.spec.fleet
    );
    let current = m.status.as_ref().and_then(|s| s.reason.as_deref());
    if current != Some(reason.as_str()) {
        let status = MatchStatus {
            phase: MatchPhase::Pending,
            reason: Some(reason.clone()),
            observed_generation: m.metadata.generation,
            conditions: vec![condition(
                previous_conditions(m),
                "Allocated",
                false,
                "NoCapacity",
                reason.clone(),
                m.metadata.generation,
            )],
            ..Default::default()
        };
        write_status(m, ctx, &status).await?;
    }
    let left = ctx.settings.pending_timeout.saturating_sub(waited);
    Ok(Action::requeue(
        ctx.settings
            .pending_retry
            .min(left)
            .max(Duration::from_millis(50)),
    ))
}

async fn fail(m: &Match, ctx: &MatchContext, reason_kind: &str, reason: &str) -> Result<Action> {
    let mut status = m.status.clone().unwrap_or_default();
    status.phase = MatchPhase::Failed;
    status.reason = Some(reason.to_owned());
    status.finished_at = Some(now().to_string());
    status.observed_generation = m.metadata.generation;
    status.conditions = vec![condition(
        previous_conditions(m),
        "Allocated",
        false,
        reason_kind,
        reason,
        m.metadata.generation,
    )];
    write_status(m, ctx, &status).await?;
    ctx.match_metrics
        .ended
        .with_label_values(&["Failed", reason_kind])
        .inc();
    Ok(Action::requeue(ctx.settings.finished_ttl))
}

/// An allocated match: follows its session through the server's load reports.
async fn follow(m: &Match, ctx: &MatchContext) -> Result<Action> {
    let ns = m.namespace().unwrap_or_default();
    let name = m.name_any();
    let status = m.status.clone().unwrap_or_default();
    let Some(server) = status.game_server.clone() else {
        return fail(m, ctx, "NoGameServer", "allocated without a game server").await;
    };
    ctx.view.observe(&ns, &name, Some(&server), true);
    let pod = ctx.pods.get(&ObjectRef::new(&server).within(&ns));
    if pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some()) {
        ctx.view.release(&ns, &name);
        return fail(
            m,
            ctx,
            "GameServerLost",
            &format!("game server {server} is gone"),
        )
        .await;
    }
    let entry = ctx.loads.get(&format!("{ns}/{server}")).unwrap_or_default();
    let Some(report) = entry.report else {
        return Ok(Action::requeue(ctx.settings.resync));
    };
    if let Some(done) = report.finished.iter().find(|f| f.match_id == name) {
        ctx.view.release(&ns, &name);
        let mut next = status;
        next.phase = MatchPhase::Finished;
        next.reason = Some(format!("session ended: {}", done.reason));
        next.finished_at = Some(now().to_string());
        next.conditions = vec![condition(
            previous_conditions(m),
            "Finished",
            true,
            "SessionEnded",
            done.reason.clone(),
            m.metadata.generation,
        )];
        write_status(m, ctx, &next).await?;
        ctx.match_metrics
            .ended
            .with_label_values(&["Finished", "SessionEnded"])
            .inc();
        return Ok(Action::requeue(ctx.settings.finished_ttl));
    }
    match report.matches.iter().find(|s| s.match_id == name) {
        Some(live) if live.players > 0 && status.phase == MatchPhase::Allocated => {
            let mut next = status;
            next.phase = MatchPhase::Running;
            next.running_at = Some(now().to_string());
            write_status(m, ctx, &next).await?;
        }
        Some(_) => {}
        None => {
            // Neither live nor ended in a report taken well after the allocation: the
            // server lost the session (it restarted).
            let allocated_for = since(parse_time(status.allocated_at.as_ref()));
            let report_age = entry.last_ok.map_or(Duration::MAX, |t| t.elapsed());
            if report_age.saturating_add(ctx.settings.vanish_grace) < allocated_for {
                ctx.view.release(&ns, &name);
                return fail(
                    m,
                    ctx,
                    "SessionLost",
                    &format!("game server {server} no longer has the session"),
                )
                .await;
            }
        }
    }
    Ok(Action::requeue(ctx.settings.resync))
}

/// A finished or failed match: gone after the TTL.
async fn expire(m: &Match, ctx: &MatchContext) -> Result<Action> {
    let ns = m.namespace().unwrap_or_default();
    let name = m.name_any();
    ctx.view.release(&ns, &name);
    let ended = m
        .status
        .as_ref()
        .and_then(|s| parse_time(s.finished_at.as_ref()));
    let done_for = match ended {
        Some(t) => since(Some(t)),
        None => age(m),
    };
    if done_for < ctx.settings.finished_ttl {
        return Ok(Action::requeue(ctx.settings.finished_ttl - done_for));
    }
    let api: Api<Match> = Api::namespaced(ctx.client.clone(), &ns);
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
