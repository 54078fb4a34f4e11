//! A kubelet stand-in that runs pods as local processes.
//!
//! There is no container runtime here, so this plays the kubelet's part for a few
//! Node objects it registers itself: it watches pods bound to those nodes, starts the
//! first container's command (resolved to a local binary) with the pod's environment,
//! and reports the pod Running with the node's address as both host and pod IP, the
//! way a `hostNetwork` pod looks. Each node owns its own loopback address (anything in
//! 127.0.0.0/8), so the same port on two nodes never collides.
//!
//! What it implements of a kubelet: node registration and heartbeats, a container
//! environment of the pod's variables only (plus `PATH`, `HOME`, `HOSTNAME`), env values with
//! `$(VAR)` expansion, `fieldRef` (name, namespace, uid, node, pod and host IP, labels,
//! annotations), `secretKeyRef` and `configMapKeyRef`; an `httpGet` readiness probe;
//! restart policies; graceful deletion (SIGTERM, the pod's grace period, SIGKILL, then
//! the final delete). Not images, volumes, resource limits or init containers.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::process::Command;
use tokio::sync::{Mutex, watch};

/// Label on every node this runner registers.
pub const RUNNER_LABEL: &str = "tanks.dev/pod-runner";
const MANAGER: &str = "tanks-pod-runner";

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

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub nodes: Vec<RunnerNode>,
    /// Folders searched for a container's command (then `PATH`).
    pub bin_dirs: Vec<PathBuf>,
    /// Where each pod's stdout and stderr go, one file per pod.
    pub log_dir: PathBuf,
    /// Pods a node admits (its `pods` capacity).
    pub max_pods: u32,
}

/// Registers the nodes, then runs their pods until `shutdown` turns true, when every
/// process it started is stopped.
pub async fn run(
    client: Client,
    config: RunnerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.log_dir)?;
    let config = Arc::new(config);
    for node in &config.nodes {
        register_node(&client, node, config.max_pods).await?;
    }
    let heartbeat = tokio::spawn(heartbeats(client.clone(), config.clone()));
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
    heartbeat.abort();
    Ok(())
}

async fn register_node(client: &Client, node: &RunnerNode, max_pods: u32) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let spec = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": { RUNNER_LABEL: "true", "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux" },
        },
    });
    nodes
        .patch(
            &node.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&spec),
        )
        .await
        .map_err(|e| anyhow::anyhow!("registering node {}: {e}", node.name))?;
    patch_node_status(&nodes, node, max_pods).await
}

async fn patch_node_status(
    nodes: &Api<Node>,
    node: &RunnerNode,
    max_pods: u32,
) -> anyhow::Result<()> {
    let now = now_rfc3339();
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
async fn heartbeats(client: Client, config: Arc<RunnerConfig>) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        for node in &config.nodes {
            if let Err(e) = patch_node_status(&nodes, node, config.max_pods).await {
                tracing::warn!(error = %e, "node heartbeat");
            }
        }
    }
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
            _ = stopped(&mut shutdown) => break,
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
        let supervisor = PodSupervisor {
            client: client.clone(),
            config: config.clone(),
            node: node.clone(),
            pod,
        };
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

struct PodSupervisor {
    client: Client,
    config: Arc<RunnerConfig>,
    node: RunnerNode,
    pod: Pod,
}

impl PodSupervisor {
    fn api(&self) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        )
    }

    fn key(&self) -> String {
        format!(
            "{}/{}",
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any()
        )
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let Some(container) = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .cloned()
        else {
            self.fail("NoContainer", "pod has no container").await;
            return;
        };
        let restart_policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let mut restarts = 0u32;
        loop {
            let mut child = match self.start(&container).await {
                Ok(child) => child,
                Err(e) => {
                    tracing::warn!(pod = %self.key(), error = %e, "cannot start pod");
                    self.fail("StartError", &e.to_string()).await;
                    self.await_deletion(&mut stop).await;
                    return;
                }
            };
            let pid = child.id();
            self.report_running(&container, restarts, false).await;
            let ready_probe = self.await_ready(&container);
            tokio::pin!(ready_probe);
            let mut ready = false;
            let exit = loop {
                tokio::select! {
                    status = child.wait() => break Some(status),
                    _ = &mut ready_probe, if !ready => {
                        ready = true;
                        self.report_running(&container, restarts, true).await;
                    }
                    _ = stopped(&mut stop) => break None,
                }
            };
            match exit {
                None => {
                    terminate(&mut child, pid, Duration::from_secs(grace.max(0) as u64)).await;
                    self.delete_pod().await;
                    return;
                }
                Some(status) => {
                    let code = status.ok().and_then(|s| s.code()).unwrap_or(-1);
                    let restart = match restart_policy.as_str() {
                        "Never" => false,
                        "OnFailure" => code != 0,
                        _ => true,
                    };
                    if !restart {
                        let phase = if code == 0 { "Succeeded" } else { "Failed" };
                        self.report_terminated(&container, phase, code).await;
                        self.await_deletion(&mut stop).await;
                        return;
                    }
                    restarts += 1;
                    tracing::info!(pod = %self.key(), code, restarts, "container exited; restarting");
                    let backoff = Duration::from_millis((500u64 << restarts.min(6)).min(30_000));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(&mut stop) => {
                            self.delete_pod().await;
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn await_deletion(&self, stop: &mut watch::Receiver<bool>) {
        stopped(stop).await;
        self.delete_pod().await;
    }

    /// Deletes the pod at once: its process is gone, there is nothing to wait for.
    async fn delete_pod(&self) {
        let _ = self
            .api()
            .delete(
                &self.pod.name_any(),
                &DeleteParams::default().grace_period(0),
            )
            .await;
    }

    async fn start(&self, container: &Container) -> anyhow::Result<tokio::process::Child> {
        let env = self.resolve_env(container).await?;
        // As in Kubernetes: `command` replaces the image's entrypoint and `args` follow
        // it; with no command the image's name stands for the binary
        // (`repo/gameserver:tag`), and `args` are all its arguments.
        let mut argv: Vec<String> = match container.command.as_deref() {
            Some([program, ..]) => vec![program.clone()],
            _ => vec![image_binary(container.image.as_deref().unwrap_or_default())],
        };
        if let Some([_, rest @ ..]) = container.command.as_deref() {
            argv.extend(rest.iter().cloned());
        }
        argv.extend(container.args.clone().unwrap_or_default());
        let argv: Vec<String> = argv.iter().map(|a| expand(a, &env)).collect();
        let program = argv[0].clone();
        let path = self.resolve_binary(&program)?;
        let log_path = self.config.log_dir.join(format!(
            "{}_{}.log",
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any()
        ));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut cmd = Command::new(&path);
        // A container sees only its pod's environment, never the kubelet's: without the
        // clear, a test's own variables (broker addresses, RUST_LOG, ...) would leak into
        // every server it runs. PATH and HOME stand in for the image's, and HOSTNAME is
        // the pod name, as a container runtime sets it.
        cmd.env_clear();
        for key in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd.env("HOSTNAME", self.pod.name_any());
        cmd.args(argv.iter().skip(1))
            .envs(env.iter())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .process_group(0);
        if let Some(dir) = &container.working_dir {
            cmd.current_dir(dir);
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", path.display()))?;
        tracing::info!(pod = %self.key(), binary = %path.display(), pid = child.id(), "started");
        Ok(child)
    }

    fn resolve_binary(&self, program: &str) -> anyhow::Result<PathBuf> {
        let name = std::path::Path::new(program);
        if name.is_absolute() && name.exists() {
            return Ok(name.to_owned());
        }
        let file = name
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| name.to_owned());
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        self.config
            .bin_dirs
            .iter()
            .chain(path_dirs.iter())
            .map(|dir| dir.join(&file))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no binary {program:?} in {:?} or PATH",
                    self.config.bin_dirs
                )
            })
    }

    /// The container's environment, as the kubelet would build it.
    async fn resolve_env(&self, container: &Container) -> anyhow::Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        let namespace = self.pod.namespace().unwrap_or_default();
        for var in container.env.clone().unwrap_or_default() {
            let value = if let Some(value) = &var.value {
                expand(value, &env)
            } else if let Some(from) = &var.value_from {
                if let Some(field) = &from.field_ref {
                    self.field(&field.field_path).ok_or_else(|| {
                        anyhow::anyhow!(
                            "env {}: unsupported fieldRef {}",
                            var.name,
                            field.field_path
                        )
                    })?
                } else if let Some(secret) = &from.secret_key_ref {
                    let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
                    let found = api.get_opt(&secret.name).await?;
                    let value = found
                        .and_then(|s| s.data)
                        .and_then(|d| d.get(&secret.key).cloned());
                    match value {
                        Some(bytes) => String::from_utf8_lossy(&bytes.0).into_owned(),
                        None if secret.optional == Some(true) => continue,
                        None => anyhow::bail!(
                            "env {}: secret {}/{} not found",
                            var.name,
                            secret.name,
                            secret.key
                        ),
                    }
                } else if let Some(cm) = &from.config_map_key_ref {
                    let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
                    let value = api
                        .get_opt(&cm.name)
                        .await?
                        .and_then(|c| c.data)
                        .and_then(|d| d.get(&cm.key).cloned());
                    match value {
                        Some(v) => v,
                        None if cm.optional == Some(true) => continue,
                        None => anyhow::bail!(
                            "env {}: configmap {}/{} not found",
                            var.name,
                            cm.name,
                            cm.key
                        ),
                    }
                } else {
                    anyhow::bail!("env {}: unsupported valueFrom", var.name)
                }
            } else {
                String::new()
            };
            env.insert(var.name.clone(), value);
        }
        Ok(env)
    }

    fn field(&self, path: &str) -> Option<String> {
        let meta = &self.pod.metadata;
        let ip = self.node.address.to_string();
        Some(match path {
            "metadata.name" => meta.name.clone()?,
            "metadata.namespace" => meta.namespace.clone()?,
            "metadata.uid" => meta.uid.clone()?,
            "spec.nodeName" => self.node.name.clone(),
            "spec.serviceAccountName" => self
                .pod
                .spec
                .as_ref()?
                .service_account_name
                .clone()
                .unwrap_or_default(),
            "status.podIP" | "status.hostIP" => ip,
            _ => {
                let (map, key) = if let Some(rest) = path.strip_prefix("metadata.labels['") {
                    (meta.labels.as_ref()?, rest.strip_suffix("']")?)
                } else if let Some(rest) = path.strip_prefix("metadata.annotations['") {
                    (meta.annotations.as_ref()?, rest.strip_suffix("']")?)
                } else {
                    return None;
                };
                map.get(key).cloned().unwrap_or_default()
            }
        })
    }

    /// Resolves when the readiness probe passes (at once without one).
    async fn await_ready(&self, container: &Container) {
        let Some(http) = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
        else {
            return;
        };
        let port = match &http.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p as u16,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port as u16)
                .unwrap_or(0),
        };
        let path = http.path.unwrap_or_else(|| "/".into());
        loop {
            if http_ok(self.node.address, port, &path).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn report_running(&self, container: &Container, restarts: u32, ready: bool) {
        let now = now_rfc3339();
        let ip = self.node.address.to_string();
        let flag = if ready { "True" } else { "False" };
        let status = json!({ "status": {
            "phase": "Running", "hostIP": ip, "podIP": ip, "podIPs": [{ "ip": ip }], "hostIPs": [{ "ip": ip }],
            "startTime": now,
            "conditions": [
                { "type": "PodScheduled", "status": "True", "lastTransitionTime": now },
                { "type": "Initialized", "status": "True", "lastTransitionTime": now },
                { "type": "ContainersReady", "status": flag, "lastTransitionTime": now },
                { "type": "Ready", "status": flag, "lastTransitionTime": now },
            ],
            "containerStatuses": [{
                "name": container.name, "image": container.image.clone().unwrap_or_default(), "imageID": "",
                "ready": ready, "restartCount": restarts, "started": true,
                "state": { "running": { "startedAt": now } },
            }],
        }});
        self.patch_status(status).await;
    }

    async fn report_terminated(&self, container: &Container, phase: &str, code: i32) {
        let now = now_rfc3339();
        let status = json!({ "status": {
            "phase": phase,
            "conditions": [
                { "type": "ContainersReady", "status": "False", "lastTransitionTime": now },
                { "type": "Ready", "status": "False", "lastTransitionTime": now },
            ],
            "containerStatuses": [{
                "name": container.name, "image": container.image.clone().unwrap_or_default(), "imageID": "",
                "ready": false, "restartCount": 0, "started": false,
                "state": { "terminated": { "exitCode": code, "finishedAt": now, "reason": if code == 0 { "Completed" } else { "Error" } } },
            }],
        }});
        self.patch_status(status).await;
    }

    async fn fail(&self, reason: &str, message: &str) {
        self.patch_status(
            json!({ "status": { "phase": "Failed", "reason": reason, "message": message } }),
        )
        .await;
    }

    async fn patch_status(&self, status: serde_json::Value) {
        let name = self.pod.name_any();
        if let Err(e) = self
            .api()
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
            .await
        {
            tracing::warn!(pod = %self.key(), error = %e, "pod status");
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone), holding no borrow after.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// SIGTERM to the process group, then SIGKILL after the grace period.
async fn terminate(child: &mut tokio::process::Child, pid: Option<u32>, grace: Duration) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    if let Some(pid) = pid {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        if let Some(pid) = pid {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = child.wait().await;
    }
}

async fn http_ok(addr: Ipv4Addr, port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((addr, port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head[9] == b'2')
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` escapes, and
/// unknown references stay as written.
pub fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `registry.example/tanks/gameserver:1.2` → `gameserver`.
pub fn image_binary(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    let last = last.split('@').next().unwrap_or(last);
    last.split(':').next().unwrap_or(last).to_owned()
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let env: BTreeMap<String, String> = [
            ("POD_IP".to_owned(), "127.0.0.2".to_owned()),
            ("PORT".to_owned(), "7001".to_owned()),
        ]
        .into();
        assert_eq!(expand("$(POD_IP):$(PORT)", &env), "127.0.0.2:7001");
        assert_eq!(expand("$(MISSING)-x", &env), "$(MISSING)-x");
        assert_eq!(expand("$$(POD_IP)", &env), "$(POD_IP)");
        assert_eq!(expand("cost $5", &env), "cost $5");
        assert_eq!(expand("$(unterminated", &env), "$(unterminated");
    }

    #[test]
    fn image_names_map_to_binaries() {
        assert_eq!(
            image_binary("registry.example/tanks/gameserver:1.2"),
            "gameserver"
        );
        assert_eq!(image_binary("gameserver"), "gameserver");
        assert_eq!(
            image_binary("ghcr.io/x/authserver@sha256:abc"),
            "authserver"
        );
    }

    #[test]
    fn nodes_parse_and_must_be_loopback() {
        let node: RunnerNode = "local-1=127.0.0.2".parse().unwrap();
        assert_eq!(node.address, Ipv4Addr::new(127, 0, 0, 2));
        assert!("local-1=10.0.0.1".parse::<RunnerNode>().is_err());
        assert!("local-1".parse::<RunnerNode>().is_err());
    }
}
