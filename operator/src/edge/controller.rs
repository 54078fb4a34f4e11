//! The Edge controller: from an `Edge`, the pods of the fleets it fronts and the auth
//! Service to the ConfigMap `<edge>-nginx` the edge's supervisor (`tanks-edge`) loads.
//!
//! One reconcile:
//!
//! 1. the spec and the auth Service's address become settings ([`spec::settings`]);
//! 2. the port map is read back from the ConfigMap (`ports`), fresh from the API server
//!    rather than from a cache, so a restarted operator, or one that just wrote it,
//!    continues from what nginx actually has: every live server keeps its port;
//! 3. [`plan::plan`] with the live pods and the wall clock;
//! 4. the ConfigMap is applied, with a controller reference to the Edge (garbage
//!    collected with it), only when its bytes differ;
//! 5. status: the hash, the ports by server (what Matches hand out), counts,
//!    conditions, and an Event on each transition.
//!
//! A bad spec, a missing Service or a port map that does not parse never fails the
//! reconcile (that would retry in a tight loop): it is the `Ready` condition and one
//! Warning Event, the old ConfigMap stays as it is, and the Edge is looked at again
//! later.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::net::Upstream;
use super::plan::{self, EdgePlan, GameServer};
use super::ports::{EdgePortMap, PortCounts};
use super::render::NginxRuntime;
use super::spec;
use crate::api::conditions::condition;
use crate::api::edge::{Edge, EdgeStatus};
use crate::api::{labels, namespaced_or_all};
use crate::error::{Error, Result};
use crate::servers::address::game_endpoint;

const MANAGER: &str = "tanks-operator-edge";
/// The ConfigMap's keys and annotation; `tanks-edge` reads the same names.
pub const CONFIG_KEY: &str = "nginx.conf";
pub const PORTS_KEY: &str = "ports";
pub const HASH_ANNOTATION: &str = "tanks.dev/config-hash";
/// On the ConfigMap: the Edge it belongs to (the controller watches by it).
pub const EDGE_LABEL: &str = "tanks.dev/edge";
/// A problem (a missing Service, say) is looked at again this often: nothing here
/// watches Services.
const RECHECK: Duration = Duration::from_secs(30);
/// Even when nothing changes; also bounds how late a re-created auth Service (a new
/// cluster IP) is seen.
const RESYNC: Duration = Duration::from_secs(60);
/// Pod events come in bursts (a scale-up is several events per pod): one reconcile,
/// one render and at most one reload for a burst.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The ConfigMap an Edge's config is written to.
pub fn config_map_name(edge: &str) -> String {
    format!("{edge}-nginx")
}

pub struct EdgeContext {
    pub client: Client,
    pub recorder: Recorder,
    /// Game-server pods (those the operator manages), from the controller's own watch.
    pub pods: Store<Pod>,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    identity: String,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let edges: Api<Edge> = namespaced_or_all(&client, namespace.as_deref());
    let config_maps: Api<ConfigMap> = namespaced_or_all(&client, namespace.as_deref());
    let pods: Api<Pod> = namespaced_or_all(&client, namespace.as_deref());
    let (pod_store, pod_writer) = reflector::store();
    let pod_stream = watcher(
        pods,
        watcher::Config::default().labels(labels::MANAGED_SELECTOR),
    )
    .default_backoff()
    .modify(|pod: &mut Pod| pod.meta_mut().managed_fields = None)
    .reflect(pod_writer)
    .touched_objects();

    let controller = Controller::new(edges, watcher::Config::default());
    // A pod concerns every Edge of its namespace that fronts its fleet.
    let edge_store = controller.store();
    let ctx = Arc::new(EdgeContext {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(identity),
            },
        ),
        client,
        pods: pod_store,
    });
    info!("starting the Edge controller");
    controller
        .owns(config_maps, watcher::Config::default().labels(EDGE_LABEL))
        .watches_stream(pod_stream, move |pod| edges_fronting(&edge_store, &pod))
        .with_config(ControllerConfig::default().debounce(DEBOUNCE))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "edge controller");
            }
        })
        .await;
}

fn edges_fronting(edges: &Store<Edge>, pod: &Pod) -> Vec<ObjectRef<Edge>> {
    let (Some(ns), Some(fleet)) = (pod.namespace(), pod.labels().get(labels::FLEET)) else {
        return Vec::new();
    };
    edges
        .state()
        .iter()
        .filter(|e| e.namespace().as_deref() == Some(ns.as_str()) && e.spec.fleets.contains(fleet))
        .map(|e| ObjectRef::from_obj(e.as_ref()))
        .collect()
}

/// Why an Edge cannot be rendered: the `Ready` condition's reason and message.
struct Problem {
    reason: &'static str,
    message: String,
}

fn problem(reason: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        reason,
        message: message.into(),
    }
}

pub async fn reconcile(edge: Arc<Edge>, ctx: Arc<EdgeContext>) -> Result<Action> {
    let ns = edge
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("an Edge is namespaced".into()))?;
    let name = edge.name_any();
    if !pods_listed(&ctx.pods).await {
        // An empty cache would release every port into quarantine: wait for the list.
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    match render(&edge, &ctx, &ns, &name).await? {
        Ok(out) => {
            let action = Action::requeue(
                out.plan
                    .ports
                    .next_release
                    .and_then(|t| t.duration_since(SystemTime::now()).ok())
                    .map_or(RESYNC, |d| d.min(RESYNC) + Duration::from_secs(1)),
            );
            report_rendered(&edge, &ctx, &ns, &out).await?;
            Ok(action)
        }
        Err(p) => {
            report_problem(&edge, &ctx, &ns, p).await?;
            Ok(Action::requeue(RECHECK))
        }
    }
}

async fn pods_listed(pods: &Store<Pod>) -> bool {
    tokio::time::timeout(Duration::from_millis(100), pods.wait_until_ready())
        .await
        .is_ok_and(|r| r.is_ok())
}

/// What a successful render did.
struct Outcome {
    plan: EdgePlan,
    counts: PortCounts,
    /// The ConfigMap was written (its bytes changed).
    written: bool,
}

/// Steps 1 to 4; `Ok(Err(_))` is a problem to report, `Err(_)` an API failure to retry.
async fn render(
    edge: &Edge,
    ctx: &EdgeContext,
    ns: &str,
    name: &str,
) -> Result<Result<Outcome, Problem>> {
    let auth_hosts = match auth_hosts(edge, &ctx.client, ns).await? {
        Ok(hosts) => hosts,
        Err(p) => return Ok(Err(p)),
    };
    let (base, policy) = match spec::settings(&edge.spec, NginxRuntime::default(), &auth_hosts) {
        Ok(settings) => settings,
        Err(e) => return Ok(Err(problem("InvalidSpec", e.to_string()))),
    };

    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let cm_name = config_map_name(name);
    let current = config_maps.get_opt(&cm_name).await?;
    if let Some(cm) = &current
        && let Some(owner) = cm
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
        && Some(owner.uid.as_str()) != edge.uid().as_deref()
    {
        return Ok(Err(problem(
            "ConfigMapConflict",
            format!(
                "ConfigMap {cm_name} belongs to {} {}: not overwritten",
                owner.kind, owner.name
            ),
        )));
    }
    let data = current.as_ref().and_then(|cm| cm.data.as_ref());
    let mut map = match data.and_then(|d| d.get(PORTS_KEY)) {
        None => EdgePortMap::new(),
        Some(text) => match EdgePortMap::parse(text) {
            Ok(map) => map,
            // A guess could move live players: keep what nginx has until a human looks.
            Err(e) => {
                return Ok(Err(problem(
                    "PortMapInvalid",
                    format!(
                        "ConfigMap {cm_name}, key {PORTS_KEY}: {e}; the config is left as it is"
                    ),
                )));
            }
        },
    };

    let servers = live_servers(&ctx.pods, ns, &edge.spec.fleets);
    let plan = match plan::plan(&base, &policy, &mut map, &servers, SystemTime::now()) {
        Ok(plan) => plan,
        Err(e) => return Ok(Err(problem("RenderFailed", e.to_string()))),
    };

    let counts = map.counts(&policy);
    let unchanged = data.is_some_and(|d| {
        d.get(CONFIG_KEY) == Some(&plan.rendered.text) && d.get(PORTS_KEY) == Some(&plan.port_map)
    });
    if unchanged {
        return Ok(Ok(Outcome {
            plan,
            counts,
            written: false,
        }));
    }
    let owner = edge
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidSpec("an Edge without a uid".into()))?;
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": cm_name,
            "labels": { EDGE_LABEL: name },
            "annotations": { HASH_ANNOTATION: plan.rendered.hash },
            "ownerReferences": [owner],
        },
        "data": { CONFIG_KEY: plan.rendered.text, PORTS_KEY: plan.port_map },
    });
    config_maps
        .patch(
            &cm_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
    info!(edge = %name, hash = %plan.rendered.hash, servers = plan.endpoints.len(), "edge config written");
    Ok(Ok(Outcome {
        plan,
        counts,
        written: true,
    }))
}

/// The auth upstream's hosts: the Service's cluster IPs, or its external name. A
/// headless Service has no stable address to render (its pods come and go): refused.
async fn auth_hosts(
    edge: &Edge,
    client: &Client,
    ns: &str,
) -> Result<Result<Vec<String>, Problem>> {
    let Some(auth) = &edge.spec.auth else {
        return Ok(Ok(Vec::new()));
    };
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let Some(service) = services.get_opt(&auth.service).await? else {
        return Ok(Err(problem(
            "AuthServiceMissing",
            format!("Service {:?} (auth.service) does not exist", auth.service),
        )));
    };
    let spec = service.spec.unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(Ok(spec.external_name.into_iter().collect()));
    }
    let ips: Vec<String> = spec
        .cluster_ips
        .or_else(|| spec.cluster_ip.map(|ip| vec![ip]))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| !ip.is_empty() && ip != "None")
        .collect();
    if ips.is_empty() {
        return Ok(Err(problem(
            "AuthServiceHeadless",
            format!(
                "Service {:?} has no cluster IP; the edge needs a ClusterIP or ExternalName Service",
                auth.service
            ),
        )));
    }
    Ok(Ok(ips))
}

/// The pods of `fleets` in `ns` that hold (or will hold) a game: neither terminating
/// nor finished. A pod without an address yet is listed without an upstream, so it
/// gets its port now and its listener once scheduled.
fn live_servers(pods: &Store<Pod>, ns: &str, fleets: &[String]) -> Vec<GameServer> {
    let fleets: BTreeSet<&str> = fleets.iter().map(String::as_str).collect();
    let mut servers: Vec<GameServer> = pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .filter(|p| {
            p.labels()
                .get(labels::FLEET)
                .is_some_and(|f| fleets.contains(f.as_str()))
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .map(|p| GameServer {
            key: format!("{ns}/{}", p.name_any()),
            upstream: game_endpoint(p).and_then(|(host, port)| Upstream::new(&host, port).ok()),
        })
        .collect();
    servers.sort_by(|a, b| a.key.cmp(&b.key));
    servers
}

async fn report_rendered(edge: &Edge, ctx: &EdgeContext, ns: &str, out: &Outcome) -> Result<()> {
    let plan = &out.plan;
    let previous = edge.status.clone().unwrap_or_default();
    let generation = edge.meta().generation;
    let ports: BTreeMap<String, i32> = plan
        .endpoints
        .iter()
        .map(|(key, port)| {
            let pod = key.split_once('/').map_or(key.as_str(), |(_, pod)| pod);
            (pod.to_owned(), i32::from(*port))
        })
        .collect();
    let ready = condition(
        &previous.conditions,
        "Ready",
        true,
        "ConfigRendered",
        format!(
            "{} game server(s) behind the edge; config {}",
            ports.len(),
            short(&plan.rendered.hash)
        ),
        generation,
    );
    let exhausted = match &plan.exhausted {
        Some(e) => condition(
            &previous.conditions,
            "PortsExhausted",
            true,
            "NoFreePort",
            e.to_string(),
            generation,
        ),
        None => condition(
            &previous.conditions,
            "PortsExhausted",
            false,
            "PortsAvailable",
            "every live server has an edge port",
            generation,
        ),
    };
    let status = EdgeStatus {
        config_hash: Some(plan.rendered.hash.clone()),
        servers: ports.len() as i32,
        ports,
        ports_in_use: out.counts.live as i32,
        ports_quarantined: out.counts.quarantined as i32,
        ports_free: out.counts.free as i32,
        observed_generation: generation,
        conditions: vec![ready.clone(), exhausted.clone()],
    };
    if transitioned(&previous.conditions, &ready) {
        publish(ctx, edge, false, &ready.reason, &ready.message).await;
    }
    if exhausted.status == "True" && transitioned(&previous.conditions, &exhausted) {
        publish(ctx, edge, true, "PortsExhausted", &exhausted.message).await;
    }
    if out.written && previous.config_hash.is_some() {
        publish(
            ctx,
            edge,
            false,
            "ConfigUpdated",
            &format!(
                "config {} with {} game server(s)",
                short(&plan.rendered.hash),
                status.servers
            ),
        )
        .await;
    }
    write_status(edge, ctx, ns, &previous, status).await
}

/// Keeps what was last rendered (nginx still runs it) and says why nothing new is.
async fn report_problem(edge: &Edge, ctx: &EdgeContext, ns: &str, p: Problem) -> Result<()> {
    warn!(edge = %edge.name_any(), reason = p.reason, message = %p.message, "edge not rendered");
    let previous = edge.status.clone().unwrap_or_default();
    let ready = condition(
        &previous.conditions,
        "Ready",
        false,
        p.reason,
        p.message,
        edge.meta().generation,
    );
    if transitioned(&previous.conditions, &ready) {
        publish(ctx, edge, true, &ready.reason, &ready.message).await;
    }
    let mut conditions: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| c.type_ != "Ready")
        .cloned()
        .collect();
    conditions.insert(0, ready);
    let status = EdgeStatus {
        observed_generation: edge.meta().generation,
        conditions,
        ..previous.clone()
    };
    write_status(edge, ctx, ns, &previous, status).await
}

fn transitioned(previous: &[Condition], now: &Condition) -> bool {
    previous
        .iter()
        .find(|c| c.type_ == now.type_)
        .is_none_or(|c| c.status != now.status || c.reason != now.reason)
}

async fn write_status(
    edge: &Edge,
    ctx: &EdgeContext,
    ns: &str,
    previous: &EdgeStatus,
    status: EdgeStatus,
) -> Result<()> {
    if &status == previous {
        return Ok(());
    }
    let api: Api<Edge> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "Edge",
        "status": status,
    });
    api.patch_status(
        &edge.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

async fn publish(ctx: &EdgeContext, edge: &Edge, warning: bool, reason: &str, note: &str) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &edge.object_ref(&())).await {
        warn!(error = %e, reason, "publishing event");
    }
}

pub fn error_policy(edge: Arc<Edge>, error: &Error, _ctx: Arc<EdgeContext>) -> Action {
    warn!(edge = %edge.name_any(), kind = error.kind(), %error, "edge reconcile failed");
    Action::requeue(Duration::from_secs(5))
}
