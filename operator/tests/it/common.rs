//! Shared pieces of the operator's integration tests against the real kube-apiserver of
//! `hack/devenv`: a client, the CRDs, a temporary labelled namespace with its own kwok
//! nodes, game-server pods placed on them directly (the Match tests), fake game servers
//! speaking the control interface over HTTP, and the operator run in-process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tanks_core::protocol::control::LoadReport;
use tanks_operator::api::{GameFleet, labels};
use tanks_operator::leader::LeaseSettings;
use tanks_operator::runtime::{self, Config};

pub async fn client() -> Client {
    tanks_testkit::require_kube_client().await
}

/// Applies every CRD of the operator and waits until they are served.
pub async fn apply_crds(client: &Client) {
    tanks_testkit::apply_crds(
        client,
        tanks_operator::api::crds().into_iter().map(|(_, c)| c),
    )
    .await
    .expect("CRDs applied");
}

/// A temporary namespace (see [`tanks_testkit::namespace`]), with its own tainted kwok
/// nodes that only this test's pods select and tolerate.
pub struct TestEnv {
    pub client: Client,
    pub ns: String,
    pub nodes: Vec<String>,
}

impl TestEnv {
    pub async fn new(prefix: &str, nodes: usize, pods_per_node: u32) -> TestEnv {
        let client = client().await;
        apply_crds(&client).await;
        let ns = namespace(&client, prefix).await;
        let mut names = Vec::new();
        for i in 0..nodes {
            let name = format!("{ns}-n{i}");
            create_kwok_node(&client, &name, &ns, pods_per_node).await;
            names.push(name);
        }
        TestEnv {
            client,
            ns,
            nodes: names,
        }
    }

    pub fn fleets(&self) -> Api<GameFleet> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Pods of `fleet` that are not terminating.
    pub async fn live_pods(&self, fleet: &str) -> Vec<Pod> {
        let lp = ListParams::default().labels(&format!("{}={fleet}", labels::FLEET));
        self.pods()
            .list(&lp)
            .await
            .expect("list pods")
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    pub async fn running_pods(&self, fleet: &str) -> Vec<Pod> {
        self.live_pods(fleet)
            .await
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect()
    }

    /// Deletes the fleets (dropping finalizers: the operator may be gone), the namespace
    /// and the nodes.
    pub async fn cleanup(self) {
        let fleets = self.fleets();
        if let Ok(list) = fleets.list(&ListParams::default()).await {
            for f in list {
                let _ = fleets
                    .patch(
                        &f.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
                let _ = fleets.delete(&f.name_any(), &DeleteParams::default()).await;
            }
        }
        delete_namespace(&self.client, &self.ns).await;
        for n in &self.nodes {
            delete_node(&self.client, n).await;
        }
    }
}

/// A temporary namespace named after `prefix`.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    tanks_testkit::namespace::create(client, prefix)
        .await
        .expect("namespace")
}

pub async fn delete_namespace(client: &Client, name: &str) {
    tanks_testkit::namespace::delete(client, name).await;
}

pub fn kwok_node(name: &str, group: &str, pods: u32) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "tanks.dev/test-group": group,
            },
        },
        "spec": {"taints": [{"key": "tanks.dev/test-group", "value": group, "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "256", "memory": "1Ti", "pods": pods.to_string()},
            "capacity": {"cpu": "256", "memory": "1Ti", "pods": pods.to_string()},
        },
    }))
    .expect("node")
}

/// Creates a [`kwok_node`]: pods bound to it go Running at once.
pub async fn create_kwok_node(client: &Client, name: &str, group: &str, pods: u32) {
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &kwok_node(name, group, pods))
        .await
        .expect("kwok node");
}

pub async fn delete_node(client: &Client, name: &str) {
    let _ = Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// `count` game-server pods of `fleet` bound to the kwok `node` (no operator places
/// them), each with a host port, then waits until kwok reports them all Running.
pub async fn game_server_pods(client: &Client, ns: &str, fleet: &str, node: &str, count: usize) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let created = futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("{fleet}-{i:04}"),
                             "labels": {labels::FLEET: fleet},
                             "annotations": {"tanks.dev/game-port": (7000 + i % 2000).to_string()}},
                "spec": {"nodeName": node,
                         "tolerations": [{"key": "tanks.dev/test-group", "operator": "Exists"}],
                         "containers": [{"name": "game", "image": "tanks/gameserver",
                                         "ports": [{"name": "game", "containerPort": 7777, "protocol": "UDP"}]}]},
            }))
            .unwrap();
            async move { api.create(&PostParams::default(), &pod).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for r in created {
        r.expect("create pod");
    }
    let lp = ListParams::default().labels(&format!("{}={fleet}", labels::FLEET));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let pods = api.list(&lp).await.expect("list pods");
        let running = pods
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {running} of {count} pods Running (is kwok up?)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A fleet whose pods land on the test's own kwok nodes. Fluent: `fleet(..).min(3)`.
pub struct FleetBuilder(pub serde_json::Value);

pub fn fleet(name: &str, group: &str) -> FleetBuilder {
    FleetBuilder(json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "GameFleet",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "gameserver"}},
                "spec": {
                    "nodeSelector": {"tanks.dev/test-group": group},
                    "tolerations": [{"key": "tanks.dev/test-group", "operator": "Equal", "value": group, "effect": "NoSchedule"}],
                    "containers": [{"name": "gameserver", "image": "tanks/gameserver:test", "env": [{"name": "VERSION", "value": "1"}]}],
                },
            },
            "capacity": {"sessionsPerServer": 2, "playersPerSession": 4},
            "scaling": {"minReplicas": 0, "maxReplicas": 50, "buffer": {"slots": 0}, "scaleDownDelaySeconds": 3},
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
    }))
}

impl FleetBuilder {
    pub fn set(mut self, pointer: &str, value: serde_json::Value) -> Self {
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        self.0.pointer_mut(parent).expect("parent")[key] = value;
        self
    }
    pub fn min(self, n: i32) -> Self {
        self.set("/spec/scaling/minReplicas", json!(n))
    }
    pub fn max(self, n: i32) -> Self {
        self.set("/spec/scaling/maxReplicas", json!(n))
    }
    pub fn replicas(self, n: i32) -> Self {
        self.set("/spec/replicas", json!(n))
    }
    pub fn buffer_slots(self, n: i32) -> Self {
        self.set("/spec/scaling/buffer", json!({"slots": n}))
    }
    pub fn build(self) -> GameFleet {
        serde_json::from_value(self.0).expect("fleet")
    }
}

/// Game servers speaking the control interface, one per pod, at
/// `http://127.0.0.1:<port>/<pod>`: every server reports ready and empty until a test
/// gives it sessions.
#[derive(Clone, Default)]
pub struct FakeServers {
    pub state: Arc<Mutex<HashMap<String, LoadReport>>>,
    pub drains: Arc<Mutex<Vec<String>>>,
    pub addr: Arc<Mutex<Option<SocketAddr>>>,
    /// Servers not seen yet report unready (no match can be placed on them).
    pub unready: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeServers {
    pub async fn start() -> FakeServers {
        let fake = FakeServers::default();
        let app = Router::new()
            .route("/{pod}/v1/load", get(load))
            .route("/{pod}/v1/drain", post(drain))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        *fake.addr.lock().unwrap() = Some(listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        fake
    }

    /// Every server from now on reports unready, so Matches stay Pending.
    pub fn all_unready(&self) {
        self.unready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for r in self.state.lock().unwrap().values_mut() {
            r.ready = false;
        }
    }

    fn new_report(&self, pod: &str) -> LoadReport {
        LoadReport {
            ready: !self.unready.load(std::sync::atomic::Ordering::Relaxed),
            ..report(pod)
        }
    }

    pub fn set_sessions(&self, pod: &str, sessions: u32) {
        let mut state = self.state.lock().unwrap();
        let r = state
            .entry(pod.to_owned())
            .or_insert_with(|| self.new_report(pod));
        r.sessions = sessions;
        r.players = sessions * 4;
    }

    pub fn sessions(&self, pod: &str) -> u32 {
        self.state
            .lock()
            .unwrap()
            .get(pod)
            .map(|r| r.sessions)
            .unwrap_or(0)
    }

    pub fn drained(&self, pod: &str) -> bool {
        self.drains.lock().unwrap().iter().any(|p| p == pod)
    }

    pub fn resolver(&self, ns: &str) -> tanks_operator::servers::EndpointResolver {
        let addr = self.addr.lock().unwrap().expect("started");
        let ns = ns.to_owned();
        Arc::new(move |pod: &Pod| {
            (pod.namespace().as_deref() == Some(ns.as_str()))
                .then(|| format!("http://{addr}/{}", pod.name_any()))
        })
    }
}

fn report(pod: &str) -> LoadReport {
    LoadReport {
        server: pod.into(),
        session_capacity: 2,
        players_per_session: 4,
        ready: true,
        ..Default::default()
    }
}

async fn load(State(f): State<FakeServers>, Path(pod): Path<String>) -> Json<LoadReport> {
    let fresh = f.new_report(&pod);
    let mut state = f.state.lock().unwrap();
    Json(state.entry(pod).or_insert(fresh).clone())
}

async fn drain(State(f): State<FakeServers>, Path(pod): Path<String>) -> Json<LoadReport> {
    f.drains.lock().unwrap().push(pod.clone());
    let mut state = f.state.lock().unwrap();
    let fresh = f.new_report(&pod);
    let r = state.entry(pod).or_insert(fresh);
    r.draining = true;
    Json(r.clone())
}

/// An operator replica running in this process; `stop()` shuts it down gracefully.
pub struct OperatorHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub identity: String,
}

impl OperatorHandle {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
    }

    /// Drops the run future at once: its GameFleet controller stops without a graceful
    /// shutdown. Not a crash: the tasks it spawned (the Lease elector, the load poller,
    /// the Match controller) live on, the elector still renewing the Lease. Failover is
    /// tested with the binary SIGKILLed (`OperatorProcess` in gamefleet.rs).
    pub fn kill(self) {
        self.task.abort();
    }
}

pub fn start_operator(
    env: &TestEnv,
    fake: &FakeServers,
    identity: &str,
    lease: bool,
) -> OperatorHandle {
    launch(env, operator_config(env, fake, identity, lease), identity)
}

/// The configuration [`start_operator`] runs (no Match controller).
pub fn operator_config(env: &TestEnv, fake: &FakeServers, identity: &str, lease: bool) -> Config {
    let mut config = Config {
        namespace: Some(env.ns.clone()),
        poll_interval: Duration::from_millis(300),
        resolver: fake.resolver(&env.ns),
        ..Config::default()
    };
    config.reconciler.identity = identity.into();
    config.reconciler.resync = Duration::from_secs(2);
    if lease {
        config.lease = Some(LeaseSettings {
            namespace: env.ns.clone(),
            name: "tanks-operator".into(),
            identity: identity.into(),
            duration: Duration::from_secs(4),
            renew_every: Duration::from_millis(500),
        });
    }
    config
}

/// Runs an operator replica with this configuration in this process.
pub fn launch(env: &TestEnv, config: Config, identity: &str) -> OperatorHandle {
    tanks_core::telemetry::init_tracing();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let client = env.client.clone();
    let task = tokio::spawn(runtime::run(client, config, async move {
        let _ = rx.await;
    }));
    OperatorHandle {
        stop: Some(tx),
        task,
        identity: identity.into(),
    }
}

/// Polls `check` until it returns Some, or panics after `secs` naming `what`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
