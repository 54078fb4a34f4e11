//! The cluster side of the demo: its namespace, nodes for the pod runner, the control
//! Secret, the GameFleet, the child processes (operator, auth server), and removing all
//! of it again.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tanks_operator::api::GameFleet;
use tanks_testkit::pod_runner::RunnerNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const FLEET: &str = "arena";
/// Label on the demo's nodes (value: the namespace), to find leftovers of a killed run.
pub const NODE_LABEL: &str = "tanks.dev/demo";
/// Taint on the demo's nodes: only the demo's pods (which tolerate it) land there.
const NODE_TAINT: &str = "tanks.dev/demo";
/// The game server's control and metrics ports, on each pod's own (node) address.
pub const CONTROL_PORT: u16 = 8890;
pub const METRICS_PORT: u16 = 8001;
const CONTROL_SECRET_NAME: &str = "tanks-control";

/// What the demo's cluster objects are made of.
pub struct Plan {
    pub namespace: String,
    pub nodes: Vec<RunnerNode>,
    pub sessions_per_server: i32,
    pub players_per_session: i32,
    pub match_seconds: u64,
    pub scale_down_delay: u64,
    pub run_dir: PathBuf,
    pub auth_addr: String,
}

impl Plan {
    pub fn token_key_file(&self) -> PathBuf {
        self.run_dir.join("token.key")
    }
}

/// One loopback address per node, in a /24 of its own chosen from the namespace (so
/// two demos in two namespaces never share one): a node runs one game server, whose
/// fixed control and metrics ports would clash on a shared address.
pub fn nodes(namespace: &str, count: usize) -> Vec<RunnerNode> {
    let third = namespace
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 200
        + 20;
    (1..=count)
        .map(|i| RunnerNode {
            name: format!("{namespace}-node-{i}"),
            address: Ipv4Addr::new(127, 77, third as u8, i as u8),
        })
        .collect()
}

/// Removes what a killed earlier run left: its namespace (waiting until it is gone)
/// and its nodes.
pub async fn clear_leftovers(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let stale = nodes
        .list(&ListParams::default().labels(&format!("{NODE_LABEL}={namespace}")))
        .await?;
    for node in stale.items {
        crate::say!(
            "[demo] removing node {} left by an earlier run",
            node.name_any()
        );
        let _ = nodes
            .delete(&node.name_any(), &DeleteParams::default())
            .await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(namespace).await?.is_some() {
        crate::say!("[demo] namespace {namespace} exists (an earlier run?): removing it first");
        // No operator runs yet to finish the fleet's finalizer.
        remove_fleet(client, namespace, Duration::ZERO).await;
        delete_namespace(client, namespace, Duration::from_secs(120)).await?;
    }
    Ok(())
}

pub async fn create_namespace(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": { "name": namespace, "labels": { "app.kubernetes.io/part-of": "tanks-demo" } }
    }))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// The runner's nodes, created tainted before the runner registers them, so nothing but
/// the demo's pods is ever scheduled there.
pub async fn create_nodes(client: &Client, plan: &Plan) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for node in &plan.nodes {
        let spec: Node = serde_json::from_value(json!({
            "metadata": { "name": node.name, "labels": { NODE_LABEL: plan.namespace } },
            "spec": { "taints": [{ "key": NODE_TAINT, "value": plan.namespace, "effect": "NoSchedule" }] },
        }))?;
        nodes.create(&PostParams::default(), &spec).await?;
    }
    Ok(())
}

pub async fn delete_nodes(client: &Client, plan: &Plan) {
    let nodes: Api<Node> = Api::all(client.clone());
    for node in &plan.nodes {
        let _ = nodes.delete(&node.name, &DeleteParams::default()).await;
    }
}

/// The game servers' control secret, as a Secret their template reads into
/// `TANKS_CONTROL_TOKEN` (the operator gets the same value in its environment).
pub async fn create_control_secret(
    client: &Client,
    namespace: &str,
    secret: &str,
) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let s: Secret = serde_json::from_value(json!({
        "metadata": { "name": CONTROL_SECRET_NAME },
        "stringData": { "token": secret },
    }))?;
    secrets.create(&PostParams::default(), &s).await?;
    Ok(())
}

/// The fleet: real `gameserver` processes (the runner maps the image to the binary),
/// one per node, listening on the pod IP (the node's address). Matches end on time
/// (`--match-seconds`), so a finished match frees its slot at once; the fleet keeps one
/// server's worth of free sessions and removes empty servers after a short delay, so
/// the demo shows both directions within a few minutes.
pub fn fleet(plan: &Plan) -> anyhow::Result<GameFleet> {
    let run_file = |name: &str| plan.run_dir.join(name).display().to_string();
    let args = [
        "--udp-addr".to_owned(),
        "$(POD_IP):$(TANKS_GAME_PORT)".into(),
        "--tcp-addr".into(),
        "$(POD_IP):8889".into(),
        "--control-addr".into(),
        format!("$(POD_IP):{CONTROL_PORT}"),
        "--metrics-addr".into(),
        format!("$(POD_IP):{METRICS_PORT}"),
        "--open-sessions".into(),
        "false".into(),
        "--match-seconds".into(),
        plan.match_seconds.to_string(),
        "--token-key-file".into(),
        run_file("token.key"),
        "--events-file".into(),
        run_file("gameserver-events-$(TANKS_SERVER_NAME).jsonl"),
        "--auth-addr".into(),
        plan.auth_addr.clone(),
        "--drain-seconds".into(),
        "1".into(),
    ];
    let fleet = serde_json::from_value(json!({
        "apiVersion": "tanks.dev/v1alpha1",
        "kind": "GameFleet",
        "metadata": { "name": FLEET, "namespace": plan.namespace },
        "spec": {
            "template": {
                "metadata": { "labels": { "app.kubernetes.io/name": "gameserver" } },
                "spec": {
                    "nodeSelector": { NODE_LABEL: plan.namespace },
                    "tolerations": [{ "key": NODE_TAINT, "operator": "Exists" }],
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "gameserver",
                        "image": "tanks/gameserver:demo",
                        "args": args,
                        "env": [
                            { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                            { "name": "TANKS_CONTROL_TOKEN", "valueFrom": { "secretKeyRef": { "name": CONTROL_SECRET_NAME, "key": "token" } } },
                            { "name": "RUST_LOG", "value": "warn" },
                        ],
                        "ports": [{ "name": "control", "containerPort": CONTROL_PORT }],
                        "readinessProbe": { "httpGet": { "path": "/readyz", "port": "control" } },
                    }],
                },
            },
            "capacity": {
                "sessionsPerServer": plan.sessions_per_server,
                "playersPerSession": plan.players_per_session,
            },
            "scaling": {
                "minReplicas": 1,
                "maxReplicas": plan.nodes.len(),
                "buffer": { "slots": plan.sessions_per_server },
                "scaleDownDelaySeconds": plan.scale_down_delay,
            },
            "ports": { "policy": "Dynamic", "rangeStart": 7000, "rangeEnd": 7999 },
        },
    }))?;
    Ok(fleet)
}

/// Deletes the fleet while the operator still runs its finalizer; strips the finalizer
/// when that does not finish within `wait`.
pub async fn remove_fleet(client: &Client, namespace: &str, wait: Duration) {
    let fleets: Api<GameFleet> = Api::namespaced(client.clone(), namespace);
    if !matches!(fleets.get_opt(FLEET).await, Ok(Some(_))) {
        return;
    }
    let _ = fleets.delete(FLEET, &DeleteParams::default()).await;
    let gone = tokio::time::timeout(wait, async {
        while fleets.get_opt(FLEET).await.ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    if gone.is_err() {
        if !wait.is_zero() {
            crate::say!("[demo] the fleet's finalizer did not finish within {wait:?}; removing it");
        }
        let _ = fleets
            .patch(
                FLEET,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
            )
            .await;
    }
}

/// Deletes the namespace and waits until the API server no longer has it.
pub async fn delete_namespace(
    client: &Client,
    namespace: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces
        .delete(namespace, &DeleteParams::background())
        .await;
    tokio::time::timeout(limit, async {
        while namespaces.get_opt(namespace).await.ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("namespace {namespace} still there after {limit:?}"))
}

/// A child process in a process group of its own (so a Ctrl-C at the terminal reaches
/// only the demo, which then stops its children in order), killed when dropped.
pub struct ChildProcess {
    pub name: String,
    child: tokio::process::Child,
}

pub fn spawn(
    bin: &Path,
    args: &[String],
    envs: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<ChildProcess> {
    let out = std::fs::File::create(log)?;
    let name = bin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let child = tokio::process::Command::new(bin)
        .args(args)
        // Each child gets exactly the services its flags name.
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("REDIS_URL")
        .env_remove("AUTH_TOKEN_KEY")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", bin.display()))?;
    Ok(ChildProcess { name, child })
}

impl ChildProcess {
    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            crate::say!(
                "[demo] {} did not stop within {grace:?}: killing it",
                self.name
            );
            let _ = self.child.kill().await;
        }
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// `GET path` over HTTP/1.0: the status code and the body.
pub async fn http_get(addr: &str, path: &str, limit: Duration) -> anyhow::Result<(u16, String)> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        anyhow::Ok((code, body.to_owned()))
    };
    tokio::time::timeout(limit, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("GET http://{addr}{path}: no answer within {limit:?}"))?
}

/// Polls `probe` every 250 ms until it answers `Ok`; `Err(what was seen)` otherwise.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let seen = match probe().await {
            Ok(()) => return Ok(()),
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}; last seen: {seen}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
