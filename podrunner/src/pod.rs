//! One pod's life on a runner node: volumes, start, readiness probe, restarts per the
//! restart policy, status reports, and graceful stop (SIGTERM to the process group,
//! the grace period, SIGKILL, then the final delete).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::process::Command;
use tokio::sync::watch;

use crate::env::{self, Rewrites};
use crate::images;
use crate::volumes::{PodVolumes, SYNC_PERIOD};
use crate::{RunnerConfig, RunnerNode};

pub struct PodSupervisor {
    client: Client,
    config: Arc<RunnerConfig>,
    node: RunnerNode,
    pod: Pod,
}

impl PodSupervisor {
    pub fn new(client: Client, config: Arc<RunnerConfig>, node: RunnerNode, pod: Pod) -> Self {
        Self {
            client,
            config,
            node,
            pod,
        }
    }

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

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let Some(container) = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .cloned()
        else {
            self.fail("NoContainer", "pod has no container").await;
            self.await_deletion(&mut stop).await;
            return;
        };
        let Some(volumes) = self.prepare_volumes(&mut stop).await else {
            self.delete_pod().await;
            return;
        };
        self.run_container(&container, &volumes, &mut stop).await;
        volumes.remove();
    }

    /// The pod's volumes, retried while a source is missing (a Secret not created
    /// yet), as the kubelet keeps a pod in ContainerCreating; None if it is deleted first.
    async fn prepare_volumes(&self, stop: &mut watch::Receiver<bool>) -> Option<PodVolumes> {
        loop {
            match PodVolumes::prepare(
                &self.client,
                &self.config.state_dir,
                self.config.api.as_ref(),
                &self.pod,
                &self.node,
            )
            .await
            {
                Ok(volumes) => return Some(volumes),
                Err(e) => {
                    tracing::warn!(pod = %self.key(), error = %e, "volumes not ready");
                    self.patch_status(json!({ "status": {
                        "phase": "Pending", "reason": "ContainerCreating", "message": e.to_string(),
                    }}))
                    .await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stopped(stop) => return None,
            }
        }
    }

    async fn run_container(
        &self,
        container: &Container,
        volumes: &PodVolumes,
        stop: &mut watch::Receiver<bool>,
    ) {
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
            let mut child = match self.start(container, volumes).await {
                Ok(child) => child,
                Err(e) => {
                    tracing::warn!(pod = %self.key(), error = %e, "cannot start pod");
                    self.fail("StartError", &e.to_string()).await;
                    self.await_deletion(stop).await;
                    return;
                }
            };
            let pid = child.id();
            self.report_running(container, restarts, false).await;
            let ready_probe = self.await_ready(container);
            tokio::pin!(ready_probe);
            let mut ready = false;
            let mut sync = tokio::time::interval(SYNC_PERIOD);
            sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let exit = loop {
                tokio::select! {
                    status = child.wait() => break Some(status),
                    _ = &mut ready_probe, if !ready => {
                        ready = true;
                        self.report_running(container, restarts, true).await;
                    }
                    _ = sync.tick() => {
                        if let Err(e) = volumes.sync(&self.client, &self.pod, &self.node).await {
                            tracing::warn!(pod = %self.key(), error = %e, "volume update");
                        }
                    }
                    _ = stopped(stop) => break None,
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
                        self.report_terminated(container, phase, code).await;
                        self.await_deletion(stop).await;
                        return;
                    }
                    restarts += 1;
                    tracing::info!(pod = %self.key(), code, restarts, "container exited; restarting");
                    let backoff = Duration::from_millis((500u64 << restarts.min(6)).min(30_000));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(stop) => {
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

    async fn start(
        &self,
        container: &Container,
        volumes: &PodVolumes,
    ) -> anyhow::Result<tokio::process::Child> {
        let env = env::resolve(&self.client, &self.pod, &self.node, container).await?;
        let rewrites = Rewrites::new(volumes.mounts(container)?, self.node.address);
        let image_ref = container.image.as_deref().unwrap_or_default();
        let image = images::resolve(image_ref, &self.config.images, &self.config.bin_dirs);
        // As in Kubernetes: `command` replaces the image's entrypoint and `args` follow
        // it; without a command the image's entrypoint runs with `args`.
        let mut argv: Vec<String> = match container.command.as_deref() {
            Some([program, rest @ ..]) => {
                let mut argv = vec![program.clone()];
                argv.extend(rest.iter().cloned());
                argv
            }
            _ => {
                let entrypoint = image.entrypoint.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "image {image_ref:?} maps to no binary: add --image {image_ref}=PATH, or a bin dir holding it"
                    )
                })?;
                vec![entrypoint.display().to_string()]
            }
        };
        argv.extend(container.args.clone().unwrap_or_default());
        let argv: Vec<String> = argv
            .iter()
            .map(|a| rewrites.apply(&env::expand(a, &env)))
            .collect();
        let dirs: Vec<PathBuf> = image
            .path
            .iter()
            .chain(self.config.bin_dirs.iter())
            .cloned()
            .collect();
        let path = images::find(&argv[0], &dirs).ok_or_else(|| {
            anyhow::anyhow!(
                "no binary {:?} for image {image_ref:?} in {dirs:?} or PATH",
                argv[0]
            )
        })?;
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
        // A container sees only its pod's environment, never the runner's: without the
        // clear, a test's own variables (broker addresses, RUST_LOG, KUBECONFIG, ...)
        // would leak into every server it runs. PATH stands in for the image's (its
        // folders first); HOME is the pod's own folder, never the runner's (whose
        // ~/.kube/config would hand the pod the runner's credentials); HOSTNAME is the
        // pod name, as a container runtime sets it.
        cmd.env_clear();
        let runner_path = std::env::var_os("PATH").unwrap_or_default();
        let path_var = std::env::join_paths(
            image
                .path
                .iter()
                .cloned()
                .chain(std::env::split_paths(&runner_path)),
        )?;
        cmd.env("PATH", path_var);
        cmd.env("HOME", volumes.home());
        cmd.env("HOSTNAME", self.pod.name_any());
        if let Some(kubeconfig) = &volumes.kubeconfig {
            cmd.env("KUBECONFIG", kubeconfig);
        }
        cmd.args(argv.iter().skip(1))
            .envs(env.iter().map(|(k, v)| (k, rewrites.apply(v))))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .process_group(0);
        if let Some(dir) = &container.working_dir {
            cmd.current_dir(rewrites.apply(dir));
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", path.display()))?;
        tracing::info!(pod = %self.key(), binary = %path.display(), pid = child.id(), "started");
        Ok(child)
    }

    /// Resolves when the readiness probe (`httpGet` or `tcpSocket`, at the pod's
    /// address) passes; at once without one.
    async fn await_ready(&self, container: &Container) {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let Some(probe) = container.readiness_probe.as_ref() else {
            return;
        };
        let port_of = |port: &IntOrString| match port {
            IntOrString::Int(p) => *p as u16,
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port as u16)
                .unwrap_or(0),
        };
        let address = self.node.address;
        loop {
            let ok = if let Some(http) = &probe.http_get {
                let path = http.path.as_deref().unwrap_or("/");
                http_ok(address, port_of(&http.port), path).await
            } else if let Some(tcp) = &probe.tcp_socket {
                let connect = tokio::net::TcpStream::connect((address, port_of(&tcp.port)));
                matches!(
                    tokio::time::timeout(Duration::from_secs(1), connect).await,
                    Ok(Ok(_))
                )
            } else {
                // exec and grpc probes: not run; ready once started.
                true
            };
            if ok {
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
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
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

pub(crate) fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or_default()
        .to_string()
}
