//! The operator's side of the game servers' control interface
//! (`tanks_core::protocol::control`): load polling and drain.
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
use futures::future::BoxFuture;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tanks_core::protocol::control::{DEFAULT_CONTROL_PORT, DRAIN_PATH, LOAD_PATH, LoadReport};

use crate::api::GameFleet;
use crate::api::labels;
use crate::index::LoadIndex;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no control endpoint (pod has no IP yet)")]
    NoEndpoint,
    #[error("control request timed out")]
    Timeout,
    #[error("control request failed: {0}")]
    Transport(String),
    #[error("control interface answered {0}")]
    Status(StatusCode),
    #[error("control answer is not a load report: {0}")]
    Decode(String),
}

/// Speaks to one game server at a base URL such as `http://10.0.0.7:8890`.
pub trait GameServerControl: Send + Sync {
    fn load<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<LoadReport, ControlError>>;
    fn drain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<LoadReport, ControlError>>;
}

/// Where a pod's control interface listens. The default is the pod IP and the container
/// port named `control` (8890 when none); tests and the local pod runner map pods to
/// loopback addresses instead.
pub type EndpointResolver = Arc<dyn Fn(&Pod) -> Option<String> + Send + Sync>;

pub fn pod_ip_resolver() -> EndpointResolver {
    Arc::new(|pod: &Pod| {
        let ip = pod.status.as_ref()?.pod_ip.as_ref()?;
        let port = pod
            .spec
            .as_ref()
            .and_then(|s| {
                s.containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|p| p.name.as_deref() == Some(labels::CONTROL_PORT_NAME))
            })
            .map(|p| p.container_port as u16)
            .unwrap_or(DEFAULT_CONTROL_PORT);
        Some(format!("http://{ip}:{port}"))
    })
}

/// The real client: HTTP/1.1 keep-alive, a bearer token, a short timeout.
pub struct HttpControl {
    client: HttpClient<HttpConnector, Full<Bytes>>,
    token: Option<String>,
    timeout: Duration,
}

impl HttpControl {
    pub fn new(token: Option<String>, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpControl {
            client,
            token,
            timeout,
        }
    }

    async fn call(&self, method: Method, url: String) -> Result<LoadReport, ControlError> {
        let mut req = Request::builder().method(method).uri(url);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| ControlError::Transport(e.to_string()))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ControlError::Transport(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ControlError::Transport(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(ControlError::Status(status));
            }
            serde_json::from_slice(&body).map_err(|e| ControlError::Decode(e.to_string()))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ControlError::Timeout)?
    }
}

impl GameServerControl for HttpControl {
    fn load<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<LoadReport, ControlError>> {
        Box::pin(self.call(Method::GET, format!("{base}{LOAD_PATH}")))
    }

    fn drain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<LoadReport, ControlError>> {
        Box::pin(self.call(Method::POST, format!("{base}{DRAIN_PATH}")))
    }
}

/// Polls every running fleet pod once per `interval` and asks for a reconcile of a fleet
/// whose servers' load changed in a way its decisions depend on.
pub struct Poller {
    pub pods: Store<Pod>,
    pub cache_ready: tokio::sync::watch::Receiver<bool>,
    pub loads: Arc<LoadIndex>,
    pub control: Arc<dyn GameServerControl>,
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
                let fleet = pod.labels().get(labels::FLEET)?.clone();
                let base = (self.resolver)(pod)?;
                Some((key, fleet, base))
            })
            .collect();
        self.loads.retain(&live);
        tracing::trace!(servers = targets.len(), "polling load");

        let changed: HashMap<String, ObjectRef<GameFleet>> = futures::stream::iter(targets)
            .map(|(key, fleet, base)| async move {
                let result = self.control.load(&base).await;
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
