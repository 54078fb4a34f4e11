//! Shared by the Match tests: a client, the CRDs applied, a labelled temporary
//! namespace, and a kwok node with game-server pods on it.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

pub async fn client() -> Client {
    let path = tanks_testkit::require_kube_apiserver();
    tanks_testkit::kube_client(&path)
        .await
        .expect("kube client")
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

pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = tanks_testkit::unique(prefix);
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"tanks.dev/test": "true"}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    name
}

pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
}

/// A node kwok runs (pods bound to it go Running at once), tainted so the scheduler
/// places nothing else on it.
pub async fn kwok_node(client: &Client, name: &str, pods: u32) {
    let api: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"tanks.dev/test": "true", "type": "kwok"}},
        "spec": {"taints": [{"key": "tanks.dev/test", "value": "match", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "1000", "memory": "1Ti", "pods": pods.to_string()},
                   "capacity": {"cpu": "1000", "memory": "1Ti", "pods": pods.to_string()}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &node)
        .await
        .expect("kwok node");
}

pub async fn delete_node(client: &Client, name: &str) {
    let api: Api<Node> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
}

/// `count` game-server pods of `fleet` on `node`, each with a host port, then waits
/// until kwok reports them all Running.
pub async fn game_server_pods(client: &Client, ns: &str, fleet: &str, node: &str, count: usize) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let created = futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("{fleet}-{i:04}"),
                             "labels": {"tanks.dev/fleet": fleet},
                             "annotations": {"tanks.dev/game-port": (7000 + i % 2000).to_string()}},
                "spec": {"nodeName": node,
                         "tolerations": [{"key": "tanks.dev/test", "operator": "Exists"}],
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let pods = api
            .list(&ListParams::default().labels(&format!("tanks.dev/fleet={fleet}")))
            .await
            .expect("list pods");
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

use futures::StreamExt;
