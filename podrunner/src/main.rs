//! `tanks-pod-runner`: runs the pods bound to a few loopback nodes as local processes,
//! a kubelet stand-in beside any API server (see the library's documentation and
//! README.md).
//!
//! `tanks-pod-runner --node local-1=127.0.0.2 --node local-2=127.0.0.3 --bin-dir target/debug`
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;
use tanks_pod_runner::{ApiAccess, ImageRule, NodeTaint, RunnerConfig, RunnerNode};

#[derive(Parser, Debug)]
#[command(
    name = "tanks-pod-runner",
    about = "A kubelet stand-in: registers loopback nodes with an API server and runs the pods bound to them as local processes",
    long_about = "A kubelet stand-in: registers loopback nodes with an API server and runs the pods \
bound to them as local processes, each image mapped to a local binary, volumes as host folders \
(mount paths in args and env rewritten to them). No isolation: pods run as this user, in this \
machine's network. For development and tests, never for untrusted pods."
)]
struct Args {
    /// A node to register and serve, as NAME=LOOPBACK_ADDRESS; repeat for more.
    #[arg(
        long = "node",
        env = "POD_RUNNER_NODES",
        value_delimiter = ',',
        required = true
    )]
    nodes: Vec<RunnerNode>,
    /// An image and the local binary (its entrypoint) or folder (its PATH) it stands
    /// for, as IMAGE=PATH, matched by repository (registry and tag ignored unless the
    /// rule names a tag); repeat for more. Images without a rule run the binary named
    /// like their last component (`tanks/gameserver:0.1.0` → `gameserver`) from
    /// --bin-dir, then PATH.
    #[arg(long = "image", env = "POD_RUNNER_IMAGES", value_delimiter = ',')]
    images: Vec<ImageRule>,
    /// Folders searched for container commands and image binaries before PATH (e.g.
    /// the workspace's `target/debug`); repeat for more.
    #[arg(long = "bin-dir", env = "POD_RUNNER_BIN_DIRS", value_delimiter = ',')]
    bin_dirs: Vec<PathBuf>,
    /// Where pods' volumes, home folders and provisioned claims live.
    #[arg(
        long,
        env = "POD_RUNNER_STATE_DIR",
        default_value = "/tmp/tanks-pod-runner"
    )]
    state_dir: PathBuf,
    /// Where each pod's output is written (default: STATE_DIR/logs).
    #[arg(long, env = "POD_RUNNER_LOG_DIR")]
    log_dir: Option<PathBuf>,
    /// Pods each node admits.
    #[arg(long, env = "POD_RUNNER_MAX_PODS", default_value_t = 110)]
    max_pods: u32,
    /// A label of every node, KEY=VALUE; repeat for more.
    #[arg(long = "node-label", value_parser = parse_label)]
    node_labels: Vec<(String, String)>,
    /// A taint of every node, KEY[=VALUE]:EFFECT; repeat for more. Only pods that
    /// tolerate it are scheduled here: use one on a shared cluster.
    #[arg(long = "node-taint")]
    node_taints: Vec<NodeTaint>,
    /// Also provision claims no one else binds (storage class unset, empty or
    /// `tanks-pod-runner`) as host folders under STATE_DIR/claims.
    #[arg(long, env = "POD_RUNNER_PROVISION_CLAIMS")]
    provision_claims: bool,
    /// Kubeconfig of the cluster (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "TANKS_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tanks_core::telemetry::init_tracing();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let config = match &args.kubeconfig {
        Some(path) => {
            let raw = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(raw, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let api = ApiAccess::from_config(&config);
    let client = kube::Client::try_from(config)?;
    tracing::info!(nodes = ?args.nodes, server = %api.server, "pod runner starting");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tanks_core::telemetry::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let config = RunnerConfig {
        nodes: args.nodes,
        bin_dirs: args.bin_dirs,
        images: args.images,
        log_dir: args.log_dir.unwrap_or_else(|| args.state_dir.join("logs")),
        state_dir: args.state_dir,
        max_pods: args.max_pods,
        node_labels: args.node_labels.into_iter().collect(),
        node_taints: args.node_taints,
        api: Some(api),
        provision_claims: args.provision_claims,
    };
    tanks_pod_runner::run(client, config, stop_rx).await
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}
