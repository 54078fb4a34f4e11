//! The load poller.
//!
//! Load is pulled, not pushed. The operator already knows every server (its pod watch);
//! a poll that fails is itself the "stopped reporting" signal, with no separate
//! heartbeat; the operator sets the rate (one round every `interval`, bounded
//! concurrency) instead of thousands of servers deciding when to call it; and the game
//! servers need neither the operator's address nor a way through to it. The cost is one
//! small HTTP request per server per round: at 1,000 servers and 2 s, 500 requests/s on
//! keep-alive connections.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::GameFleet;
use crate::api::labels;
use crate::metrics::Metrics;
use crate::servers::address::EndpointResolver;
use crate::servers::client::ServerClient;
use crate::servers::loads::LoadIndex;
use crate::servers::ownership;

/// Polls every running fleet pod once per `interval` and asks for a reconcile of a fleet
/// whose servers' load changed in a way its decisions depend on.
pub struct Poller {
    pub pods: Store<Pod>,
    /// The fleets: only pods one of them controls (by uid) are polled, so the control
    /// token goes to no other pod, whatever its labels. `None` only in
    /// `matches::runtime::run_standalone`, the harness of tests and benchmarks whose
    /// pods no fleet owns: there the fleet label is trusted.
    pub fleets: Option<Store<GameFleet>>,
    pub cache_ready: tokio::sync::watch::Receiver<bool>,
    pub loads: Arc<LoadIndex>,
    pub client: Arc<dyn ServerClient>,
    pub resolver: EndpointResolver,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
    pub concurrency: usize,
    pub trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<GameFleet>>,
}

impl Poller {
    pub async fn run(mut self) {
        if self.cache_ready.wait_for(|r| *r).await.map(|_| ()).is_err() {
            return;
        }
        tracing::debug!("load poller started");
        loop {
            let started = Instant::now();
            self.round().await;
            self.metrics
                .poll_round
                .observe(started.elapsed().as_secs_f64());
            tokio::time::sleep(self.interval.saturating_sub(started.elapsed())).await;
        }
    }

    async fn round(&self) {
        let pods = self.pods.state();
        let mut live = HashSet::with_capacity(pods.len());
        let targets: Vec<(String, String, String)> = pods
            .iter()
            .filter_map(|pod| {
                let key = LoadIndex::key(pod);
                live.insert(key.clone());
                let running =
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if !running || pod.metadata.deletion_timestamp.is_some() {
                    return None;
                }
                let fleet = match &self.fleets {
                    Some(fleets) => ownership::owning_fleet(pod, fleets)?,
                    None => pod.labels().get(labels::FLEET)?.clone(),
                };
                let base = (self.resolver)(pod)?;
                Some((key, fleet, base))
            })
            .collect();
        self.loads.retain(&live);
        tracing::trace!(servers = targets.len(), "polling load");

        let changed: HashMap<String, ObjectRef<GameFleet>> = futures::stream::iter(targets)
            .map(|(key, fleet, base)| async move {
                let result = self.client.load(&base).await;
                if let Err(e) = &result {
                    tracing::debug!(server = %key, %base, error = %e, "load poll failed");
                }
                self.metrics
                    .load_polls
                    .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
                    .inc();
                let ns = key.split('/').next().unwrap_or_default().to_owned();
                self.loads
                    .record(&key, result)
                    .then(|| ObjectRef::new(&fleet).within(&ns))
            })
            .buffer_unordered(self.concurrency.max(1))
            .filter_map(|r| async move { r })
            .map(|r| {
                (
                    format!("{}/{}", r.namespace.clone().unwrap_or_default(), r.name),
                    r,
                )
            })
            .collect()
            .await;
        for fleet in changed.into_values() {
            let _ = self.trigger.unbounded_send(fleet);
        }
    }
}
