//! Wires the operator together: metrics and probes, leader election, the pod cache, the
//! load poller, the GameFleet controller and (when configured) the Match controller on
//! the same pod cache and load reports. `main` parses flags and calls [`run`];
//! tests call it in-process, several times to play several replicas.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::http::StatusCode;
use axum::routing::get;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{GameFleet, labels, namespaced_or_all};
use crate::leader::{Elector, LeaseSettings};
use crate::matches::runtime::MatchConfig;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, Settings};
use crate::servers::cached::keep_what_is_read;
use crate::servers::{
    EndpointResolver, HttpServerClient, LoadIndex, Poller, ServerClient, pod_ip_resolver,
};

pub struct Config {
    /// Watch one namespace only (default: all).
    pub namespace: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (none: not served).
    pub metrics_addr: Option<SocketAddr>,
    /// Leader election; `None` acts at once (a single replica, or tests).
    pub lease: Option<LeaseSettings>,
    pub reconciler: Settings,
    pub controller_concurrency: u16,
    pub poll_interval: Duration,
    pub poll_concurrency: usize,
    pub control_token: Option<String>,
    pub control_timeout: Duration,
    pub resolver: EndpointResolver,
    /// Replaces the HTTP client of the game servers (tests).
    pub server_client: Option<Arc<dyn ServerClient>>,
    /// Shared with the caller so tests and benchmarks can read what the operator sees.
    pub loads: Arc<LoadIndex>,
    pub metrics: Arc<Metrics>,
    /// The Match controller (none: GameFleets only). It shares this operator's pod
    /// cache, load reports, resolver and metrics registry, and runs only while leading.
    pub matches: Option<MatchConfig>,
    /// Run the RedisBackup controller (its RBAC needs CronJobs, Jobs and Secrets).
    pub backups: bool,
    /// Run the Edge controller (its RBAC needs ConfigMaps and Services), and give
    /// Matches on the fleets an Edge fronts the edge's address and port.
    pub edges: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: None,
            metrics_addr: None,
            lease: None,
            reconciler: Settings::default(),
            controller_concurrency: 16,
            poll_interval: Duration::from_secs(2),
            poll_concurrency: 64,
            control_token: None,
            control_timeout: Duration::from_secs(1),
            resolver: pod_ip_resolver(),
            server_client: None,
            loads: Arc::default(),
            metrics: Arc::default(),
            matches: None,
            backups: false,
            edges: false,
        }
    }
}

/// The async runtime for `worker_threads`: 1 is a single-threaded runtime, 0 one worker
/// per core. The operator waits on the API server almost all the time; on one thread it
/// has none of the cross-thread wake-ups that were a fifth of its CPU under a burst of
/// allocations, and it leaves the cores to the API server when they share a machine.
pub fn tokio_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if worker_threads > 1 {
            b.worker_threads(worker_threads);
        }
        b
    };
    builder.enable_all().build()
}

/// Runs until `shutdown` resolves (then finishes in-flight reconciles and releases the
/// Lease) or until leadership is lost (an error: the process should restart and stand by).
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = shutdown.boxed().shared();
    let metrics = config.metrics.clone();
    let ready = Arc::new(AtomicBool::new(false));

    let http = match config.metrics_addr {
        Some(addr) => {
            let flag = ready.clone();
            let router = tanks_core::telemetry::metrics_router(metrics.registry.clone()).route(
                "/readyz",
                get(move || {
                    let ok = flag.load(Ordering::Relaxed);
                    async move {
                        if ok {
                            (StatusCode::OK, "ok")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "starting")
                        }
                    }
                }),
            );
            let (local, task) =
                tanks_core::telemetry::serve_http(addr, router, shutdown.clone()).await?;
            info!(%local, "metrics and probes listening");
            Some(task)
        }
        None => None,
    };

    let (leader_tx, mut leader_rx) = watch::channel(config.lease.is_none());
    let elector = config.lease.clone().map(|lease| {
        let elector = Elector::new(client.clone(), lease);
        tokio::spawn(elector.run(leader_tx.clone(), shutdown.clone()))
    });
    // Without election the sender stays here, so "lost leadership" never fires.
    let _keep_sender = config.lease.is_none().then_some(leader_tx);

    // Stand by until this replica leads (or is told to stop).
    let leading = *leader_rx.borrow();
    if !leading {
        ready.store(true, Ordering::Relaxed);
        info!("standing by for the lease");
        loop {
            tokio::select! {
                _ = shutdown.clone() => {
                    finish(elector, http).await;
                    return Ok(());
                }
                r = leader_rx.changed() => r.context("leader election stopped")?,
            }
            let now_leading = *leader_rx.borrow();
            if now_leading {
                break;
            }
        }
    }
    metrics.leader.set(1);
    info!("leading: starting the GameFleet controller");

    let fleets: Api<GameFleet> = namespaced_or_all(&client, config.namespace.as_deref());
    let pods_api: Api<Pod> = namespaced_or_all(&client, config.namespace.as_deref());
    let (pod_store, pod_writer) = reflector::store();
    let pod_stream = watcher(
        pods_api,
        watcher::Config::default().labels(labels::MANAGED_SELECTOR),
    )
    .default_backoff()
    // Thousands of servers: the cache keeps only what is read of each.
    .modify(keep_what_is_read)
    .reflect(pod_writer)
    .touched_objects();

    let server_client: Arc<dyn ServerClient> = config.server_client.clone().unwrap_or_else(|| {
        Arc::new(HttpServerClient::new(
            config.control_token.clone(),
            config.control_timeout,
        ))
    });
    let (cache_tx, cache_ready) = watch::channel(false);
    let match_cache_ready = cache_ready.clone();
    let ready_task = {
        let (store, ready) = (pod_store.clone(), ready.clone());
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                ready.store(true, Ordering::Relaxed);
                let _ = cache_tx.send(true);
                // Keep the sender: receivers see "closed" otherwise.
                std::future::pending::<()>().await;
            }
        })
    };
    let mut ctx = Context::new(
        client.clone(),
        metrics.clone(),
        pod_store.clone(),
        cache_ready.clone(),
        config.loads.clone(),
        server_client.clone(),
        config.resolver.clone(),
        config.reconciler.clone(),
    );
    let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded();
    // One allocation view, shared: the Match controller fills it, fleet scaling reads
    // its pending counts.
    let mut matches_config = config.matches;
    if let Some(matches) = &mut matches_config {
        matches.edges = config.edges;
        let view = matches
            .view
            .clone()
            .unwrap_or_else(|| matches.view_for(pod_store.clone(), config.loads.clone()));
        matches.view = Some(view.clone());
        matches.fleet_trigger = Some(trigger_tx.clone());
        matches
            .server_client
            .get_or_insert_with(|| server_client.clone());
        ctx.pending_matches = Some(view);
    }
    let ctx = Arc::new(ctx);
    // Built (not run) first: its fleet store tells the poller which pods are ours.
    let controller = Controller::new(fleets, watcher::Config::default())
        .owns_stream(pod_stream)
        .reconcile_on(trigger_rx)
        .with_config(ControllerConfig::default().concurrency(config.controller_concurrency));
    let poller = Poller {
        pods: pod_store.clone(),
        fleets: Some(controller.store()),
        cache_ready,
        loads: config.loads.clone(),
        client: server_client,
        resolver: config.resolver.clone(),
        metrics: metrics.clone(),
        interval: config.poll_interval,
        concurrency: config.poll_concurrency,
        trigger: trigger_tx,
    };
    let poll_task = tokio::spawn(poller.run());

    // The Match controller reads the pod cache in its first reconcile, so it starts
    // once that cache has listed everything.
    let match_task = matches_config.map(|mut matches| {
        matches.metrics = metrics.clone();
        matches.resolver = config.resolver.clone();
        let (client, pods, loads) = (client.clone(), pod_store.clone(), config.loads.clone());
        let mut ready = match_cache_ready;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if ready.wait_for(|r| *r).await.is_err() {
                return;
            }
            if let Err(e) = crate::matches::runtime::run(client, matches, pods, loads, stop).await {
                warn!(error = %e, "match controller stopped");
            }
        })
    });

    let backup_task = config.backups.then(|| {
        tokio::spawn(crate::backup::controller::run(
            client.clone(),
            config.namespace.clone(),
            metrics.registry.clone(),
            config.reconciler.identity.clone(),
            shutdown.clone(),
        ))
    });

    let edge_task = config.edges.then(|| {
        tokio::spawn(crate::edge::controller::run(
            client.clone(),
            config.namespace.clone(),
            config.reconciler.identity.clone(),
            shutdown.clone(),
        ))
    });

    let controller = controller
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller");
            }
        });

    let lost = async {
        loop {
            if leader_rx.changed().await.is_err() {
                return std::future::pending::<()>().await;
            }
            let still = *leader_rx.borrow();
            if !still {
                return;
            }
        }
    };
    let result = tokio::select! {
        _ = controller => Ok(()),
        _ = lost => {
            warn!("lost the lease: stopping");
            Err(anyhow::anyhow!("lost leadership"))
        }
    };
    metrics.leader.set(0);
    if let Some(mut task) = match_task {
        // After a shutdown it finishes its in-flight reconciles; after a lost lease it
        // must not act any more.
        if result.is_err()
            || tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
    for task in [backup_task, edge_task].into_iter().flatten() {
        task.abort();
    }
    poll_task.abort();
    ready_task.abort();
    finish(elector, http).await;
    result
}

async fn finish(
    elector: Option<tokio::task::JoinHandle<()>>,
    http: Option<tokio::task::JoinHandle<()>>,
) {
    if let Some(mut e) = elector {
        // After a shutdown it releases the Lease and ends; after a lost lease it is stopped.
        if tokio::time::timeout(Duration::from_secs(5), &mut e)
            .await
            .is_err()
        {
            e.abort();
        }
    }
    if let Some(h) = http {
        h.abort();
    }
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_worker_thread_is_a_single_threaded_runtime() {
        let flavor = |n| super::tokio_runtime(n).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(0), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(2), RuntimeFlavor::MultiThread);
    }
}
