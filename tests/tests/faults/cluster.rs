//! The kube-apiserver side of the fault tests: the operator's CRDs, a temporary
//! namespace with a tainted kwok node of its own, and game-server pods on it.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use tanks_operator::api::labels;

/// A namespace and the kwok node only its pods tolerate; [`TestCluster::cleanup`]
/// removes both, and so does dropping it after a failure (with `kubectl`, which needs
/// no async runtime).
pub struct TestCluster {
    pub client: Client,
    pub ns: String,
    pub node: String,
    cleaned: bool,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let kubectl = |args: &[&str]| {
            let _ = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(tanks_testkit::kubeconfig())
                .args(args)
                .output();
        };
        // GameFleets keep a finalizer the (gone) operator would have removed.
        kubectl(&[
            "-n",
            &self.ns,
            "patch",
            "gamefleet",
            "arena",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
        kubectl(&["delete", "namespace", &self.ns, "--wait=false"]);
        kubectl(&["delete", "node", &self.node, "--wait=false"]);
    }
}

impl TestCluster {
    pub async fn new(prefix: &str, pods_per_node: u32) -> TestCluster {
        let client = tanks_testkit::require_kube_client().await;
        tanks_testkit::apply_crds(
            &client,
            tanks_operator::api::crds().into_iter().map(|(_, c)| c),
        )
        .await
        .expect("CRDs applied");
        let ns = tanks_testkit::namespace::create(&client, prefix)
            .await
            .expect("namespace");
        let node = format!("{ns}-node");
        Api::<Node>::all(client.clone())
            .create(
                &PostParams::default(),
                &kwok_node(&node, &ns, pods_per_node),
            )
            .await
            .expect("kwok node");
        TestCluster {
            client,
            ns,
            node,
            cleaned: false,
        }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// `count` game-server pods of `fleet` bound to the node (no operator places them),
    /// each with a host port; waits until kwok reports them all Running.
    pub async fn game_server_pods(&self, fleet: &str, count: usize) {
        let api = self.pods();
        let created = futures::stream::iter(0..count)
            .map(|i| {
                let api = api.clone();
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("{fleet}-{i:04}"),
                                 "labels": {labels::FLEET: fleet},
                                 "annotations": {"tanks.dev/game-port": (7000 + i % 2000).to_string()}},
                    "spec": {"nodeName": self.node,
                             "tolerations": [{"key": "tanks.dev/test-group", "operator": "Exists"}],
                             "containers": [{"name": "game", "image": "tanks/gameserver",
                                             "ports": [{"name": "game", "containerPort": 7777, "protocol": "UDP"}]}]},
                }))
                .expect("pod");
                async move { api.create(&PostParams::default(), &pod).await.map(|_| ()) }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        for r in created {
            r.expect("create pod");
        }
        let lp = ListParams::default().labels(&format!("{}={fleet}", labels::FLEET));
        crate::outage::wait_for("game-server pods Running", Duration::from_secs(120), || {
            let api = api.clone();
            let lp = lp.clone();
            async move {
                let pods = api.list(&lp).await.map_err(|e| e.to_string())?;
                let running = pods
                    .items
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count();
                (running == count)
                    .then_some(())
                    .ok_or(format!("{running} of {count} Running (is kwok up?)"))
            }
        })
        .await;
    }

    pub async fn cleanup(mut self) {
        self.cleaned = true;
        tanks_testkit::namespace::delete(&self.client, &self.ns).await;
        let _ = Api::<Node>::all(self.client.clone())
            .delete(&self.node, &DeleteParams::default())
            .await;
    }
}

/// A kwok node tainted for one test group: pods bound to it go Running at once.
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
