//! `tanks-pod-runner`: a kubelet stand-in that runs pods as local processes.
//!
//! There is no container runtime here, so this plays the kubelet's part for a few Node
//! objects it registers itself, beside any API server: it watches the pods bound to
//! those nodes, starts each pod's first container as a process (its image mapped to a
//! local binary, [`images`]), with the pod's environment and volumes ([`volumes`]), and
//! reports the pod Running with the node's address as both host and pod IP, the way a
//! `hostNetwork` pod looks. Each node owns a loopback address (anything in
//! 127.0.0.0/8), so the same port on two nodes never collides.
//!
//! - [`nodes`]: node registration and heartbeats;
//! - [`pod`]: one pod's life: start, probe, restart, report, stop;
//! - [`env`]: the container's environment (`$(VAR)`, `fieldRef`, Secret and ConfigMap keys);
//! - [`images`]: image → local binary;
//! - [`volumes`]: emptyDir, configMap, secret, projected, downwardAPI, hostPath and
//!   persistentVolumeClaim as host folders, and how the container finds them;
//! - [`provisioner`]: host-folder PersistentVolumes for claims nobody else binds.
//!
//! Not implemented: container images themselves (no root filesystem, no isolation: the
//! process runs as the runner's user, in its network and mount namespaces), resource
//! limits, init and sidecar containers (only the first container runs), exec, logs and
//! port-forward through the API server, Services (connect to pod IPs).

pub mod env;
pub mod images;
pub mod nodes;
pub mod pod;
pub mod provisioner;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{Mutex, watch};

pub use images::ImageRule;
pub use nodes::{NodeTaint, RUNNER_LABEL, RunnerNode};
pub use volumes::ApiAccess;

/// The field manager of everything the runner writes.
pub(crate) const MANAGER: &str = "tanks-pod-runner";

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub nodes: Vec<RunnerNode>,
    /// Folders searched for a container's command (then `PATH`), and for the binary
    /// named after an image no `--image` rule maps.
    pub bin_dirs: Vec<PathBuf>,
    /// Image → local binary or folder, first match wins (see [`images`]).
    pub images: Vec<ImageRule>,
    /// Where each pod's stdout and stderr go, one file per pod.
    pub log_dir: PathBuf,
    /// Pods' volumes and home folders (`pods/<uid>/`), and provisioned claims
    /// (`claims/<namespace>/<claim>/`).
    pub state_dir: PathBuf,
    /// Pods a node admits (its `pods` capacity).
    pub max_pods: u32,
    /// Extra labels of every node (for pods' `nodeSelector`).
    pub node_labels: BTreeMap<String, String>,
    /// Taints of every node: only pods that tolerate them land there, so that pods
    /// meant for other nodes (or for no node yet) are never run here.
    pub node_taints: Vec<NodeTaint>,
    /// How pods reach the API server with their service account: the runner writes a
    /// kubeconfig holding the pod's token and points `KUBECONFIG` at it. None: pods get
    /// the token files only.
    pub api: Option<ApiAccess>,
    /// Act as the provisioner for claims without a volume (see [`provisioner`]).
    pub provision_claims: bool,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        let root = std::env::temp_dir().join("tanks-pod-runner");
        Self {
            nodes: Vec::new(),
            bin_dirs: Vec::new(),
            images: Vec::new(),
            log_dir: root.join("logs"),
            state_dir: root,
            max_pods: 110,
            node_labels: BTreeMap::new(),
            node_taints: Vec::new(),
            api: None,
            provision_claims: false,
        }
    }
}

/// Registers the nodes, then runs their pods until `shutdown` turns true, when every
/// process it started is stopped.
pub async fn run(
    client: Client,
    config: RunnerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.log_dir)?;
    std::fs::create_dir_all(&config.state_dir)?;
    let config = Arc::new(config);
    for node in &config.nodes {
        nodes::register(&client, node, &config).await?;
    }
    let heartbeat = tokio::spawn(nodes::heartbeats(client.clone(), config.clone()));
    let provisioner = config.provision_claims.then(|| {
        tokio::spawn(provisioner::run(
            client.clone(),
            config.state_dir.join("claims"),
            shutdown.clone(),
        ))
    });
    let mut tasks = Vec::new();
    for node in config.nodes.clone() {
        tasks.push(tokio::spawn(run_node(
            client.clone(),
            config.clone(),
            node,
            shutdown.clone(),
        )));
    }
    let _ = shutdown.wait_for(|stop| *stop).await;
    for task in tasks {
        let _ = task.await;
    }
    if let Some(task) = provisioner {
        let _ = task.await;
    }
    heartbeat.abort();
    Ok(())
}

type Running = Arc<Mutex<HashMap<String, watch::Sender<bool>>>>;

async fn run_node(
    client: Client,
    config: Arc<RunnerConfig>,
    node: RunnerNode,
    mut shutdown: watch::Receiver<bool>,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let selector = format!("spec.nodeName={}", node.name);
    let stream = watcher(pods, watcher::Config::default().fields(&selector))
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    let running: Running = Arc::default();
    let mut supervisors = Vec::new();
    loop {
        let pod = tokio::select! {
            _ = pod::stopped(&mut shutdown) => break,
            next = stream.try_next() => match next {
                Ok(Some(pod)) => pod,
                Ok(None) => break,
                Err(e) => { tracing::warn!(error = %e, "pod watch"); continue; }
            },
        };
        let uid = pod.uid().unwrap_or_default();
        let mut running_pods = running.lock().await;
        if pod.metadata.deletion_timestamp.is_some() {
            if let Some(stop) = running_pods.get(&uid) {
                let _ = stop.send(true);
            } else {
                // Not ours to run any more (or never started): confirm the deletion.
                let api: Api<Pod> =
                    Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
                let _ = api
                    .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                    .await;
            }
            continue;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if running_pods.contains_key(&uid) || phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        running_pods.insert(uid.clone(), stop_tx);
        drop(running_pods);
        let supervisor = pod::PodSupervisor::new(client.clone(), config.clone(), node.clone(), pod);
        let running = running.clone();
        supervisors.push(tokio::spawn(async move {
            supervisor.run(stop_rx).await;
            running.lock().await.remove(&uid);
        }));
    }
    for stop in running.lock().await.values() {
        let _ = stop.send(true);
    }
    for task in supervisors {
        let _ = task.await;
    }
}
