//! Runs Match allocation: the matchmaking consumer, the Match controller, and a small
//! loop that follows load reports (finished sessions, players in), keeps the pending
//! gauge and forgets deleted Matches.
//!
//! [`run`] takes the pod cache and load index the GameFleet runtime already has (one pod
//! watch, one poller for both controllers); [`run_standalone`] makes its own, for tests,
//! benchmarks and a Match-only deployment.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::info;

use crate::api::{Edge, GameFleet, Match, labels, namespaced_or_all};
use crate::matches::cluster::PodLoadSource;
use crate::matches::consumer::{self, ConsumerConfig};
use crate::matches::metrics::MatchMetrics;
use crate::matches::publish::AllocationPublisher;
use crate::matches::reconcile::{self, MatchContext, MatchSettings, Rebuild};
use crate::matches::view::AllocationView;
use crate::metrics::Metrics;
use crate::servers::cached::keep_what_is_read;
use crate::servers::{
    EndpointResolver, HttpServerClient, LoadIndex, Poller, ServerClient, pod_ip_resolver,
};

pub struct MatchConfig {
    /// Watch one namespace only (default: all).
    pub namespace: Option<String>,
    pub settings: MatchSettings,
    /// Match reconciles at once (each mostly waits on a game server and the API server).
    pub concurrency: u16,
    /// Consume `matchmaking_events` (none: Matches come from elsewhere).
    pub consumer: Option<ConsumerConfig>,
    /// Publish allocations to RabbitMQ: the URI and the queue.
    pub publish: Option<(String, String)>,
    pub control_token: Option<String>,
    pub control_timeout: Duration,
    pub resolver: EndpointResolver,
    /// The game servers' client; none makes one from `control_token` and
    /// `control_timeout` (the GameFleet runtime passes its own, so both controllers
    /// share one connection pool).
    pub server_client: Option<Arc<dyn ServerClient>>,
    /// How old a fleet's server list may get in the allocation view. Reservations are
    /// counted in the view itself, so this bounds only how late it sees a server become
    /// ready or drain and a session end; reports are up to a poll interval (2 s) old
    /// anyway. Each read walks every pod of the fleet: at 100 ms that was an eighth of
    /// the operator's CPU in the allocation benchmark.
    pub view_refresh: Duration,
    /// How long a server that refused a session is skipped.
    pub refusal_hold: Duration,
    /// Longest wait at start for the first load report of every running server.
    pub first_round_wait: Duration,
    /// How often load reports are checked for finished sessions and players.
    pub follow_interval: Duration,
    pub metrics: Arc<Metrics>,
    /// Shared with the caller so tests and benchmarks can read the pending counts.
    pub view: Option<Arc<AllocationView>>,
    /// Asks the GameFleet controller to reconcile a fleet that has Matches waiting for
    /// room (it scales for them).
    pub fleet_trigger: Option<futures::channel::mpsc::UnboundedSender<ObjectRef<GameFleet>>>,
    /// Watch Edges: a Match on a fleet an Edge fronts gets the edge's address and the
    /// server's edge port as its endpoint.
    pub edges: bool,
}

impl Default for MatchConfig {
    fn default() -> Self {
        MatchConfig {
            namespace: None,
            settings: MatchSettings::default(),
            concurrency: 64,
            consumer: None,
            publish: None,
            control_token: None,
            control_timeout: Duration::from_secs(1),
            resolver: pod_ip_resolver(),
            server_client: None,
            view_refresh: Duration::from_millis(500),
            refusal_hold: Duration::from_secs(2),
            first_round_wait: Duration::from_secs(10),
            follow_interval: Duration::from_secs(1),
            metrics: Arc::default(),
            view: None,
            fleet_trigger: None,
            edges: false,
        }
    }
}

impl MatchConfig {
    /// The configured game-server client, or a new HTTP one.
    pub fn game_server_client(&self) -> Arc<dyn ServerClient> {
        self.server_client.clone().unwrap_or_else(|| {
            Arc::new(HttpServerClient::new(
                self.control_token.clone(),
                self.control_timeout,
            ))
        })
    }

    /// The allocation view over these pods and loads (shared so its pending counts can
    /// feed fleet scaling).
    pub fn view_for(&self, pods: Store<Pod>, loads: Arc<LoadIndex>) -> Arc<AllocationView> {
        Arc::new(AllocationView::new(
            Box::new(PodLoadSource { pods, loads }),
            self.view_refresh,
            self.refusal_hold,
        ))
    }
}

/// Runs until `shutdown` resolves. Call it once `pods` has its first full list (see
/// [`store_ready`]): the first allocation reads it.
pub async fn run(
    client: Client,
    config: MatchConfig,
    pods: Store<Pod>,
    loads: Arc<LoadIndex>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = shutdown.boxed().shared();
    let match_metrics = Arc::new(MatchMetrics::new(&config.metrics.registry));
    let view = config
        .view
        .clone()
        .unwrap_or_else(|| config.view_for(pods.clone(), loads.clone()));

    // Matches: one watch feeds both the cache (the view's rebuild) and the controller.
    let (match_store, match_writer) = reflector::store();
    let match_stream = watcher(
        namespaced_or_all::<Match>(&client, config.namespace.as_deref()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|m: &mut Match| m.meta_mut().managed_fields = None)
    .reflect(match_writer)
    .applied_objects();
    let (fleet_store, fleet_writer) = reflector::store();
    let fleet_stream = watcher(
        namespaced_or_all::<GameFleet>(&client, config.namespace.as_deref()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(fleet_writer);
    // Every task stops with this future, also when it is dropped mid-way (a kill).
    let mut tasks = AbortOnDrop::default();
    tasks
        .0
        .push(tokio::spawn(fleet_stream.for_each(|_| async {})));

    let edge_store = if config.edges {
        let (store, writer) = reflector::store();
        let stream = watcher(
            namespaced_or_all::<Edge>(&client, config.namespace.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer);
        tasks.0.push(tokio::spawn(stream.for_each(|_| async {})));
        // Before the first allocation, or a Match on a fronted fleet would get the
        // server's own address. Bounded: without the CRD the watch never lists.
        if tokio::time::timeout(config.first_round_wait, store_ready(&store))
            .await
            .is_err()
        {
            tracing::warn!(
                "Edges not listed yet; Match endpoints may bypass an edge until they are"
            );
        }
        Some(store)
    } else {
        None
    };

    let consumer_task = config.consumer.clone().map(|c| {
        let client = client.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { consumer::run(client, c, stop).await })
    });
    let consumer_index = consumer_task.is_some().then_some(tasks.0.len());
    tasks.0.extend(consumer_task);

    let server_client = config.game_server_client();
    let ctx = Arc::new(MatchContext {
        client: client.clone(),
        pods: pods.clone(),
        fleets: fleet_store,
        edges: edge_store,
        loads: loads.clone(),
        view: view.clone(),
        server_client,
        resolver: config.resolver.clone(),
        publisher: config
            .publish
            .as_ref()
            .map(|(uri, queue)| AllocationPublisher::new(uri.clone(), queue.clone())),
        metrics: config.metrics.clone(),
        match_metrics: match_metrics.clone(),
        settings: config.settings.clone(),
        rebuild: Some(Rebuild {
            matches: match_store.clone(),
            pods: pods.clone(),
            first_round_wait: config.first_round_wait,
        }),
        rebuilt: Default::default(),
    });

    let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded();
    tasks.0.push(tokio::spawn(follow_reports(
        FollowTargets {
            matches: match_store.clone(),
            fleets: config.fleet_trigger.clone(),
        },
        loads,
        view,
        match_metrics,
        config.follow_interval,
        trigger_tx,
    )));

    info!("starting the Match controller");
    Controller::for_stream(match_stream, match_store)
        .reconcile_on(trigger_rx)
        .with_config(ControllerConfig::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "match controller");
            }
        })
        .await;

    if let Some(i) = consumer_index {
        // The consumer stops on the same shutdown; a little grace for in-flight creates.
        let consumer = &tasks.0[i];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !consumer.is_finished() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Waits until a reflector store has its first full list; false if its writer is gone.
///
/// `Store::wait_until_ready` wakes only the last of several concurrent waiters (it polls
/// one oneshot receiver from each), and the controller and the poller wait on these
/// stores too: polling again every 50 ms sees the memoized readiness regardless.
pub async fn store_ready<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(50), store.wait_until_ready()).await {
            Ok(result) => return result.is_ok(),
            Err(_) => continue,
        }
    }
}

/// Aborts its tasks when dropped.
#[derive(Default)]
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// What [`follow_reports`] reads and wakes.
struct FollowTargets {
    matches: Store<Match>,
    fleets: Option<futures::channel::mpsc::UnboundedSender<ObjectRef<GameFleet>>>,
}

/// Asks for a reconcile of every allocated Match whose server reports its session ended
/// or its players in, and of every fleet with Matches waiting for room; keeps the
/// pending gauge; forgets Matches that were deleted.
async fn follow_reports(
    targets: FollowTargets,
    loads: Arc<LoadIndex>,
    view: Arc<AllocationView>,
    metrics: Arc<MatchMetrics>,
    interval: Duration,
    trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<Match>>,
) {
    let FollowTargets { matches, fleets } = targets;
    loop {
        tokio::time::sleep(interval).await;
        let live: HashSet<String> = matches
            .state()
            .iter()
            .map(|m| format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any()))
            .collect();
        view.retain(&live);
        metrics.pending.reset();
        for (fleet, n) in view.pending_by_fleet() {
            let (ns, name) = fleet.split_once('/').unwrap_or(("", fleet.as_str()));
            metrics
                .pending
                .with_label_values(&[ns, name])
                .set(i64::from(n));
            if let Some(fleets) = &fleets {
                let _ = fleets.unbounded_send(ObjectRef::new(name).within(ns));
            }
        }
        // One look at each server's report (not one per match: thousands of matches
        // share a thousand servers).
        for (server_key, names) in view.assignments_by_server() {
            let Some(report) = loads.get(&server_key).and_then(|e| e.report) else {
                continue;
            };
            let ns = server_key.split_once('/').map_or("", |(ns, _)| ns);
            for name in names {
                let ended = report.finished.iter().any(|f| f.match_id == name);
                let live_players = report
                    .matches
                    .iter()
                    .any(|s| s.match_id == name && s.players > 0);
                if !ended && !live_players {
                    continue;
                }
                let r = ObjectRef::<Match>::new(&name).within(ns);
                let allocated =
                    matches.get(&r).map(|m| m.phase()) == Some(crate::api::MatchPhase::Allocated);
                if (ended || allocated) && trigger.unbounded_send(r).is_err() {
                    return;
                }
            }
        }
    }
}

/// [`run`] with its own pod cache and load poller (no GameFleet controller). That poller
/// trusts the fleet label, as there is no GameFleet to check a pod's owner against: for
/// tests and benchmarks, whose pods no fleet owns; the operator binary never runs it.
pub async fn run_standalone(
    client: Client,
    config: MatchConfig,
    loads: Arc<LoadIndex>,
    poll_interval: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (pod_store, pod_writer) = reflector::store();
    let pod_stream = watcher(
        namespaced_or_all::<Pod>(&client, config.namespace.as_deref()),
        watcher::Config::default().labels(labels::MANAGED_SELECTOR),
    )
    .default_backoff()
    .modify(keep_what_is_read)
    .reflect(pod_writer);
    let mut tasks = AbortOnDrop::default();
    tasks
        .0
        .push(tokio::spawn(pod_stream.for_each(|_| async {})));
    let mut config = config;
    let server_client = config.game_server_client();
    config.server_client = Some(server_client.clone());
    // Fleet reconcile requests have no taker here.
    let (trigger, _) = futures::channel::mpsc::unbounded();
    let (cache_tx, cache_ready) = tokio::sync::watch::channel(false);
    let poller = Poller {
        cache_ready,
        pods: pod_store.clone(),
        // Test and benchmark pods that no fleet owns: polled by their label.
        fleets: None,
        loads: loads.clone(),
        client: server_client,
        resolver: config.resolver.clone(),
        metrics: config.metrics.clone(),
        interval: poll_interval,
        concurrency: 128,
        trigger,
    };
    // Nothing else waits on this store yet (see `store_ready`).
    store_ready(&pod_store).await;
    let _ = cache_tx.send(true);
    tasks.0.push(tokio::spawn(poller.run()));
    run(client, config, pod_store, loads, shutdown).await
}
