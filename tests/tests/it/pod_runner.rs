//! The local pod runner against the real kube-apiserver: a pod bound to a runner node
//! starts as a process with its environment, goes Ready through its readiness probe,
//! answers on the node's loopback address, and stops when the pod is deleted.

use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{conditions, wait::await_condition};
use tanks_testkit::pod_runner::{self, RunnerConfig, RunnerNode};

fn free_port(addr: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((addr, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn pods_run_as_processes_and_stop_on_delete() {
    let client = tanks_testkit::require_kube_client().await;
    let ns = tanks_testkit::namespace::create(&client, "runner")
        .await
        .expect("namespace");

    let address = Ipv4Addr::new(127, 0, 1, (std::process::id() % 200 + 20) as u8);
    let node = RunnerNode {
        name: format!("{ns}-node"),
        address,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let config = RunnerConfig {
        nodes: vec![node.clone()],
        bin_dirs: vec![],
        log_dir: std::env::temp_dir().join(&ns),
        max_pods: 10,
    };
    let runner = tokio::spawn(pod_runner::run(client.clone(), config, stop_rx));

    let port = free_port(address);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web", "namespace": ns },
        "spec": {
            "nodeName": node.name,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "web",
                "image": "python:3",
                "command": ["python3", "-m", "http.server", "$(PORT)", "--bind", "$(POD_IP)"],
                "env": [
                    { "name": "PORT", "value": port.to_string() },
                    { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                ],
                "readinessProbe": { "httpGet": { "path": "/", "port": port } },
            }],
        },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let ready = tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(pods.clone(), "web", conditions::is_pod_running()),
    )
    .await
    .expect("pod Running within 30 s")
    .expect("watch")
    .expect("pod exists");
    let uid = ready.metadata.uid.clone().unwrap();
    let status = ready.status.unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some(address.to_string().as_str()));

    // Ready once the probe passes.
    let mut is_ready = false;
    for _ in 0..100 {
        let pod = pods.get("web").await.unwrap();
        is_ready = pod
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if is_ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(is_ready, "pod became Ready through its readiness probe");
    assert!(
        TcpStream::connect((address, port)).is_ok(),
        "the process listens at the pod's address"
    );

    pods.delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(pods.clone(), "web", conditions::is_deleted(&uid)),
    )
    .await
    .expect("pod gone within 20 s")
    .expect("watch");
    assert!(
        TcpStream::connect((address, port)).is_err(),
        "the process stopped with its pod"
    );

    let _ = stop_tx.send(true);
    runner.await.unwrap().unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(&node.name, &DeleteParams::default()).await;
    tanks_testkit::namespace::delete(&client, &ns).await;
}
