//! Runs the pods bound to a few local nodes as processes: a kubelet stand-in for
//! machines without a container runtime (see `tanks_testkit::pod_runner`).
//!
//! `pod-runner --node local-1=127.0.0.2 --node local-2=127.0.0.3 --bin-dir target/debug`
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;
use tanks_testkit::pod_runner::{self, RunnerConfig, RunnerNode};

#[derive(Parser, Debug)]
#[command(about = "Runs pods bound to local nodes as processes (a kubelet stand-in)")]
struct Args {
    /// A node to register and serve, as NAME=LOOPBACK_ADDRESS; repeat for more.
    #[arg(
        long = "node",
        env = "POD_RUNNER_NODES",
        value_delimiter = ',',
        required = true
    )]
    nodes: Vec<RunnerNode>,
    /// Folders searched for container commands before PATH; repeat for more.
    #[arg(long = "bin-dir", env = "POD_RUNNER_BIN_DIRS", value_delimiter = ',')]
    bin_dirs: Vec<PathBuf>,
    /// Where each pod's output is written.
    #[arg(
        long,
        env = "POD_RUNNER_LOG_DIR",
        default_value = "/tmp/tanks-pod-runner"
    )]
    log_dir: PathBuf,
    /// Pods each node admits.
    #[arg(long, env = "POD_RUNNER_MAX_PODS", default_value_t = 200)]
    max_pods: u32,
    /// Kubeconfig of the cluster (default: `TANKS_KUBECONFIG`, then hack/devenv's).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tanks_core::telemetry::init_tracing();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let path = args.kubeconfig.unwrap_or_else(tanks_testkit::kubeconfig);
    let client = tanks_testkit::kube_client(&path).await?;
    tracing::info!(nodes = ?args.nodes, kubeconfig = %path.display(), "pod runner starting");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tanks_core::telemetry::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let config = RunnerConfig {
        nodes: args.nodes,
        bin_dirs: args.bin_dirs,
        log_dir: args.log_dir,
        max_pods: args.max_pods,
    };
    pod_runner::run(client, config, stop_rx).await
}
