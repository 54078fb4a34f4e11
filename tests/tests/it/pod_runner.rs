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
        state_dir: std::env::temp_dir().join(&ns),
        max_pods: 10,
        ..RunnerConfig::default()
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

/// Reads `path` until `check` accepts its content, for up to `secs`.
async fn file_until(path: &std::path::Path, secs: u64, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if check(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never as expected within {secs} s; last: {text:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Volumes: a ConfigMap and a Secret as files (an update reaches the running pod), an
/// emptyDir, a claim the runner provisions whose data outlives the pod, and the pod's
/// own service-account identity through the kubeconfig the runner gives it.
#[tokio::test]
async fn volumes_are_host_folders_kept_up_to_date() {
    use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
    use kube::api::{Patch, PatchParams};

    let client = tanks_testkit::require_kube_client().await;
    let ns = tanks_testkit::namespace::create(&client, "runner-vol")
        .await
        .expect("namespace");
    let address = Ipv4Addr::new(127, 0, 2, (std::process::id() % 200 + 20) as u8);
    let node = RunnerNode {
        name: format!("{ns}-node"),
        address,
    };
    let state = std::env::temp_dir().join(&ns);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let config = RunnerConfig {
        nodes: vec![node.clone()],
        log_dir: state.join("logs"),
        state_dir: state.clone(),
        max_pods: 10,
        api: Some(
            tanks_testkit::pod_api_access(&tanks_testkit::kubeconfig())
                .await
                .unwrap(),
        ),
        provision_claims: true,
        ..RunnerConfig::default()
    };
    let runner = tokio::spawn(pod_runner::run(client.clone(), config, stop_rx));

    let apply = |value: serde_json::Value| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let kind = value["kind"].as_str().unwrap().to_owned();
            let name = value["metadata"]["name"].as_str().unwrap().to_owned();
            let pp = PatchParams::apply("it").force();
            match kind.as_str() {
                "ConfigMap" => drop(
                    Api::<ConfigMap>::namespaced(client, &ns)
                        .patch(&name, &pp, &Patch::Apply(&value))
                        .await
                        .unwrap(),
                ),
                "Secret" => drop(
                    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client, &ns)
                        .patch(&name, &pp, &Patch::Apply(&value))
                        .await
                        .unwrap(),
                ),
                "PersistentVolumeClaim" => drop(
                    Api::<PersistentVolumeClaim>::namespaced(client, &ns)
                        .patch(&name, &pp, &Patch::Apply(&value))
                        .await
                        .unwrap(),
                ),
                other => panic!("{other}"),
            }
        }
    };
    let config_map = |greeting: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg"}, "data": {"greeting": greeting}})
    };
    apply(config_map("hello")).await;
    apply(serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}))
    .await;
    apply(
        serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;

    // The script names only the mount paths: the runner rewrites them to host folders.
    let script = "cat /etc/cfg/greeting /etc/creds/password > /data/first; \
                  echo run >> /data/runs; \
                  kubectl get secrets > /scratch/kubectl 2>&1; \
                  while true; do cat /etc/cfg/greeting > /data/now; sleep 0.2; done";
    let pod = |name: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": ns },
            "spec": {
                "nodeName": node.name,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main", "image": "busybox",
                    "command": ["sh", "-c", script],
                    "volumeMounts": [
                        { "name": "cfg", "mountPath": "/etc/cfg" },
                        { "name": "creds", "mountPath": "/etc/creds" },
                        { "name": "data", "mountPath": "/data" },
                        { "name": "scratch", "mountPath": "/scratch" },
                    ],
                }],
                "volumes": [
                    { "name": "cfg", "configMap": { "name": "cfg" } },
                    { "name": "creds", "secret": { "secretName": "creds", "defaultMode": 0o400 } },
                    { "name": "data", "persistentVolumeClaim": { "claimName": "data" } },
                    { "name": "scratch", "emptyDir": {} },
                ],
            },
        }))
        .unwrap()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod("vol-1"))
        .await
        .expect("create pod");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let claim_dir = loop {
        let claim = claims.get("data").await.unwrap();
        if let Some(volume) = claim.spec.and_then(|s| s.volume_name) {
            let pv = Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(client.clone())
                .get(&volume)
                .await
                .unwrap();
            break std::path::PathBuf::from(pv.spec.unwrap().host_path.unwrap().path);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(claim_dir.starts_with(&state), "{}", claim_dir.display());
    file_until(&claim_dir.join("first"), 30, |t| t == "hellos3cret").await;
    file_until(&claim_dir.join("now"), 5, |t| t == "hello").await;

    // The pod's identity is its service account's, not the runner's (an admin).
    let pod_dir = state
        .join("pods")
        .join(pods.get("vol-1").await.unwrap().metadata.uid.unwrap());
    let said = file_until(&pod_dir.join("volumes/scratch/kubectl"), 20, |t| {
        !t.is_empty()
    })
    .await;
    assert!(
        said.contains(&format!("system:serviceaccount:{ns}:default")) && said.contains("forbidden"),
        "{said}"
    );
    // The Secret's mode, through the ..data symlink.
    let mode = std::fs::metadata(pod_dir.join("volumes/creds/password"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o400
    );

    // A ConfigMap update reaches the running process.
    apply(config_map("bonjour")).await;
    file_until(&claim_dir.join("now"), 30, |t| t == "bonjour").await;

    // The claim's data outlives the pod; the pod's own folder (emptyDir) does not.
    let uid = pods.get("vol-1").await.unwrap().metadata.uid.unwrap();
    pods.delete("vol-1", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(pods.clone(), "vol-1", conditions::is_deleted(&uid)),
    )
    .await
    .expect("pod gone within 20 s")
    .expect("watch");
    file_until(&pod_dir.join("volumes/scratch/kubectl"), 10, str::is_empty).await;
    pods.create(&PostParams::default(), &pod("vol-2"))
        .await
        .unwrap();
    file_until(&claim_dir.join("runs"), 30, |t| t == "run\nrun\n").await;

    let _ = stop_tx.send(true);
    runner.await.unwrap().unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(&node.name, &DeleteParams::default()).await;
    tanks_testkit::namespace::delete(&client, &ns).await;
}
