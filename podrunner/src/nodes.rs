//! The runner's Node objects: registered at start, kept Ready by heartbeats.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::{MANAGER, RunnerConfig};

/// Label on every node this runner registers.
pub const RUNNER_LABEL: &str = "tanks.dev/pod-runner";

#[derive(Debug, Clone)]
pub struct RunnerNode {
    pub name: String,
    pub address: Ipv4Addr,
}

impl std::str::FromStr for RunnerNode {
    type Err = String;

    /// `NAME=ADDRESS`, e.g. `local-1=127.0.0.2`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=ADDRESS, got {s:?}"))?;
        let address: Ipv4Addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
        if !address.is_loopback() {
            return Err(format!("{address} is not a loopback address (127.0.0.0/8)"));
        }
        Ok(Self {
            name: name.to_owned(),
            address,
        })
    }
}

/// A node taint, `KEY[=VALUE]:EFFECT`, e.g. `tanks.dev/local=ci:NoSchedule`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTaint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

impl std::str::FromStr for NodeTaint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kv, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("expected KEY[=VALUE]:EFFECT, got {s:?}"))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(format!(
                "taint effect {effect:?}: one of NoSchedule, PreferNoSchedule, NoExecute"
            ));
        }
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if key.is_empty() {
            return Err(format!("taint {s:?} has no key"));
        }
        Ok(Self {
            key: key.to_owned(),
            value: value.to_owned(),
            effect: effect.to_owned(),
        })
    }
}

pub(crate) async fn register(
    client: &Client,
    node: &RunnerNode,
    config: &RunnerConfig,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = json!({ RUNNER_LABEL: "true", "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux" });
    for (k, v) in &config.node_labels {
        labels[k] = json!(v);
    }
    let taints: Vec<serde_json::Value> = config
        .node_taints
        .iter()
        .map(|t| json!({ "key": t.key, "value": t.value, "effect": t.effect }))
        .collect();
    let spec = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": node.name, "labels": labels },
        "spec": { "taints": taints },
    });
    nodes
        .patch(
            &node.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&spec),
        )
        .await
        .map_err(|e| anyhow::anyhow!("registering node {}: {e}", node.name))?;
    patch_status(&nodes, node, config.max_pods).await
}

async fn patch_status(nodes: &Api<Node>, node: &RunnerNode, max_pods: u32) -> anyhow::Result<()> {
    let now = crate::pod::now_rfc3339();
    let status = json!({
        "status": {
            "capacity": { "cpu": "64", "memory": "256Gi", "pods": max_pods.to_string() },
            "allocatable": { "cpu": "64", "memory": "256Gi", "pods": max_pods.to_string() },
            "addresses": [
                { "type": "InternalIP", "address": node.address.to_string() },
                { "type": "Hostname", "address": node.name },
            ],
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "PodRunnerReady",
                "message": "local pod runner is running",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
            "nodeInfo": {
                "kubeletVersion": "tanks-pod-runner", "architecture": std::env::consts::ARCH,
                "operatingSystem": "linux", "containerRuntimeVersion": "process://", "kernelVersion": "",
                "osImage": "", "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": "",
            },
        }
    });
    nodes
        .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| anyhow::anyhow!("node {} status: {e}", node.name))?;
    Ok(())
}

/// The node lifecycle controller evicts pods from nodes silent for 40 s.
pub(crate) async fn heartbeats(client: Client, config: Arc<RunnerConfig>) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        for node in &config.nodes {
            if let Err(e) = patch_status(&nodes, node, config.max_pods).await {
                tracing::warn!(error = %e, "node heartbeat");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_parse_and_must_be_loopback() {
        let node: RunnerNode = "local-1=127.0.0.2".parse().unwrap();
        assert_eq!(node.address, Ipv4Addr::new(127, 0, 0, 2));
        assert!("local-1=10.0.0.1".parse::<RunnerNode>().is_err());
        assert!("local-1".parse::<RunnerNode>().is_err());
    }

    #[test]
    fn taints_parse() {
        let t: NodeTaint = "tanks.dev/group=ci:NoSchedule".parse().unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_str(), t.effect.as_str()),
            ("tanks.dev/group", "ci", "NoSchedule")
        );
        let t: NodeTaint = "dedicated:NoExecute".parse().unwrap();
        assert_eq!((t.key.as_str(), t.value.as_str()), ("dedicated", ""));
        assert!("dedicated:Sometimes".parse::<NodeTaint>().is_err());
        assert!("dedicated".parse::<NodeTaint>().is_err());
    }
}
