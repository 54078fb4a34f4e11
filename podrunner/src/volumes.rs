//! A pod's volumes as host folders, and where the container finds them.
//!
//! | volume | host folder |
//! |---|---|
//! | `emptyDir` | `<state>/pods/<uid>/volumes/<name>`: kept across container restarts, removed with the pod |
//! | `configMap`, `secret`, `downwardAPI`, `projected` (incl. `serviceAccountToken`) | the same place, written as the kubelet writes them: files in a timestamped folder, `..data` a symlink to it swapped by one `rename`, each key a symlink through `..data`; so a reader sees the old set or the new one, never half. Re-read every [`SYNC_PERIOD`] and rewritten when the object changed; tokens renewed at 80% of their life |
//! | `persistentVolumeClaim` | the `hostPath` (or `local`) path of the PersistentVolume bound to the claim: it outlives the pod ([`crate::provisioner`] makes such volumes) |
//! | `hostPath` | the path itself (created for `DirectoryOrCreate`) |
//!
//! The process has no mount namespace of its own, so the folders are not mounted at
//! the container's `mountPath`: the runner rewrites every mention of a mount path in the
//! container's command, args, environment and working directory into its host folder
//! ([`crate::env::Rewrites`]). Binding them at the real paths in a private mount
//! namespace (`unshare -m` as root) was set aside: the mount points (`/etc/tanks/token`,
//! `/backups`) would have to be created in the host's root filesystem, and two pods
//! mounting the same path differently would each need a namespace and a root of their
//! own, which is a container runtime.
//!
//! A pod that mounts a service-account token also gets `KUBECONFIG`: a kubeconfig in its
//! folder naming the API server and that token file, so a kube client (kube-rs,
//! client-go) reaches the API server as the pod's service account, not as the runner.

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume,
    PersistentVolumeClaim, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use tokio::sync::Mutex;

use crate::RunnerNode;

/// How often ConfigMap, Secret and projected volumes are compared with their sources.
pub const SYNC_PERIOD: Duration = Duration::from_secs(5);

/// How the pods' kubeconfigs reach the API server: the runner's own view of it.
#[derive(Debug, Clone)]
pub struct ApiAccess {
    pub server: String,
    /// The cluster's CA certificates, PEM.
    pub ca_pem: Option<String>,
    pub insecure: bool,
}

impl ApiAccess {
    pub fn from_config(config: &kube::Config) -> Self {
        let ca_pem = config.root_cert.as_ref().map(|certs| {
            certs
                .iter()
                .map(|der| {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
                    let lines: Vec<&str> = b64
                        .as_bytes()
                        .chunks(64)
                        .map(|c| std::str::from_utf8(c).unwrap_or_default())
                        .collect();
                    format!(
                        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                        lines.join("\n")
                    )
                })
                .collect()
        });
        Self {
            server: config
                .cluster_url
                .to_string()
                .trim_end_matches('/')
                .to_owned(),
            ca_pem,
            insecure: config.accept_invalid_certs,
        }
    }
}

/// One file of a projected volume: its bytes and mode.
type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// A pod's volumes on the host.
pub struct PodVolumes {
    dir: PathBuf,
    /// Volume name → host folder.
    hosts: BTreeMap<String, PathBuf>,
    /// The volumes written from API objects, with what was last written.
    synced: Mutex<BTreeMap<String, Payload>>,
    tokens: Mutex<BTreeMap<String, (Vec<u8>, SystemTime)>>,
    pub kubeconfig: Option<PathBuf>,
}

impl PodVolumes {
    /// Makes the pod's folder and every volume; errors name the volume that failed.
    pub async fn prepare(
        client: &Client,
        state_dir: &Path,
        api: Option<&ApiAccess>,
        pod: &Pod,
        node: &RunnerNode,
    ) -> anyhow::Result<Self> {
        let dir = state_dir
            .join("pods")
            .join(pod.uid().unwrap_or_else(|| pod.name_any()));
        std::fs::create_dir_all(dir.join("volumes"))?;
        let mut volumes = Self {
            dir: dir.clone(),
            hosts: BTreeMap::new(),
            synced: Mutex::default(),
            tokens: Mutex::default(),
            kubeconfig: None,
        };
        let ns = pod.namespace().unwrap_or_default();
        let mut token_file = None;
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let own = dir.join("volumes").join(&v.name);
            let host = if v.empty_dir.is_some() {
                std::fs::create_dir_all(&own)?;
                own
            } else if let Some(h) = &v.host_path {
                let path = PathBuf::from(&h.path);
                if matches!(h.type_.as_deref(), Some("DirectoryOrCreate")) {
                    std::fs::create_dir_all(&path)?;
                }
                path
            } else if let Some(claim) = &v.persistent_volume_claim {
                claim_path(client, &ns, &claim.claim_name)
                    .await
                    .map_err(|e| anyhow::anyhow!("volume {}: {e}", v.name))?
            } else if is_synced(v) {
                if let Some(path) = token_path(v) {
                    token_file = Some(own.join(path));
                }
                own
            } else {
                anyhow::bail!("volume {}: this volume type is not supported", v.name);
            };
            volumes.hosts.insert(v.name.clone(), host);
        }
        volumes.sync(client, pod, node).await?;
        if let (Some(api), Some(token)) = (api, token_file) {
            let path = dir.join("kubeconfig");
            std::fs::write(&path, kubeconfig(api, &ns, &token))?;
            volumes.kubeconfig = Some(path);
        }
        Ok(volumes)
    }

    /// `(mountPath, host folder)` of each of the container's mounts.
    pub fn mounts(&self, container: &Container) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let mut mounts = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let host = self.hosts.get(&m.name).ok_or_else(|| {
                anyhow::anyhow!("volumeMount {}: the pod has no such volume", m.name)
            })?;
            let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => {
                    anyhow::ensure!(
                        !Path::new(sub)
                            .components()
                            .any(|c| !matches!(c, std::path::Component::Normal(_))),
                        "volumeMount {}: subPath {sub:?} must be a relative path within the volume",
                        m.name
                    );
                    let path = host.join(sub);
                    if !path.exists() {
                        std::fs::create_dir_all(&path)?;
                    }
                    path
                }
                None => host.clone(),
            };
            mounts.push((m.mount_path.clone(), host));
        }
        Ok(mounts)
    }

    /// Rewrites the API-backed volumes whose content changed since the last call.
    pub async fn sync(&self, client: &Client, pod: &Pod, node: &RunnerNode) -> anyhow::Result<()> {
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if !is_synced(v) {
                continue;
            }
            let payload = self
                .payload(client, pod, node, v)
                .await
                .map_err(|e| anyhow::anyhow!("volume {}: {e}", v.name))?;
            let mut synced = self.synced.lock().await;
            if synced.get(&v.name) == Some(&payload) {
                continue;
            }
            write_atomically(&self.dir.join("volumes").join(&v.name), &payload)
                .map_err(|e| anyhow::anyhow!("volume {}: writing: {e}", v.name))?;
            synced.insert(v.name.clone(), payload);
        }
        Ok(())
    }

    /// Removes the pod's folder: emptyDir and API-backed volumes, never claims' or host paths.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    pub fn home(&self) -> PathBuf {
        self.dir.clone()
    }

    async fn payload(
        &self,
        client: &Client,
        pod: &Pod,
        node: &RunnerNode,
        v: &Volume,
    ) -> anyhow::Result<Payload> {
        let ns = pod.namespace().unwrap_or_default();
        let mut out = Payload::new();
        if let Some(cm) = &v.config_map {
            let mode = cm.default_mode.unwrap_or(0o644);
            config_map_files(
                client,
                &ns,
                &cm.name,
                cm.optional,
                &cm.items,
                mode,
                &mut out,
            )
            .await?;
        } else if let Some(s) = &v.secret {
            let mode = s.default_mode.unwrap_or(0o644);
            let name = s.secret_name.clone().unwrap_or_default();
            secret_files(client, &ns, &name, s.optional, &s.items, mode, &mut out).await?;
        } else if let Some(d) = &v.downward_api {
            let mode = d.default_mode.unwrap_or(0o644);
            downward_files(pod, node, d.items.iter().flatten(), mode, &mut out)?;
        } else if let Some(p) = &v.projected {
            let mode = p.default_mode.unwrap_or(0o644);
            for source in p.sources.iter().flatten() {
                if let Some(cm) = &source.config_map {
                    config_map_files(
                        client,
                        &ns,
                        &cm.name,
                        cm.optional,
                        &cm.items,
                        mode,
                        &mut out,
                    )
                    .await?;
                } else if let Some(s) = &source.secret {
                    secret_files(client, &ns, &s.name, s.optional, &s.items, mode, &mut out)
                        .await?;
                } else if let Some(d) = &source.downward_api {
                    downward_files(pod, node, d.items.iter().flatten(), mode, &mut out)?;
                } else if let Some(t) = &source.service_account_token {
                    let key = format!("{}/{}", v.name, t.path);
                    let token = self
                        .token(client, pod, t.audience.clone(), t.expiration_seconds, &key)
                        .await?;
                    out.insert(t.path.clone(), (token, mode as u32));
                }
            }
        }
        Ok(out)
    }

    /// A token of the pod's service account, bound to the pod, renewed at 80% of its life.
    async fn token(
        &self,
        client: &Client,
        pod: &Pod,
        audience: Option<String>,
        expiration: Option<i64>,
        key: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let mut tokens = self.tokens.lock().await;
        if let Some((token, renew_at)) = tokens.get(key)
            && SystemTime::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let ns = pod.namespace().unwrap_or_default();
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let seconds = expiration.unwrap_or(3600).max(600);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.into_iter().collect(),
                expiration_seconds: Some(seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let issued = api
            .create_token_request(&sa, &PostParams::default(), &request)
            .await
            .map_err(|e| anyhow::anyhow!("token of service account {sa}: {e}"))?;
        let token = issued
            .status
            .map(|s| s.token.into_bytes())
            .ok_or_else(|| anyhow::anyhow!("token of service account {sa}: no token issued"))?;
        let renew_at = SystemTime::now() + Duration::from_secs(seconds as u64 * 8 / 10);
        tokens.insert(key.to_owned(), (token.clone(), renew_at));
        Ok(token)
    }
}

fn is_synced(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
}

/// Where a volume's service-account token lands, relative to the volume.
fn token_path(v: &Volume) -> Option<String> {
    v.projected
        .as_ref()?
        .sources
        .iter()
        .flatten()
        .find_map(|s| s.service_account_token.as_ref().map(|t| t.path.clone()))
}

/// The folder of the PersistentVolume bound to `claim`.
async fn claim_path(client: &Client, ns: &str, claim: &str) -> anyhow::Result<PathBuf> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc = claims
        .get_opt(claim)
        .await?
        .ok_or_else(|| anyhow::anyhow!("claim {claim} does not exist"))?;
    let volume = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow::anyhow!("claim {claim} is not bound to a volume"))?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let spec = pvs
        .get(&volume)
        .await?
        .spec
        .ok_or_else(|| anyhow::anyhow!("volume {volume} has no spec"))?;
    let path = spec
        .host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| {
            anyhow::anyhow!("volume {volume} of claim {claim} is neither hostPath nor local")
        })?;
    std::fs::create_dir_all(&path)?;
    Ok(PathBuf::from(path))
}

/// `data` as files: every key, or the listed `items` at their paths.
fn add_files(
    data: BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
    mode: i32,
    what: &str,
    out: &mut Payload,
) -> anyhow::Result<()> {
    match items {
        None => {
            for (k, v) in data {
                out.insert(k, (v, mode as u32));
            }
        }
        Some(items) => {
            for item in items {
                let value = data
                    .get(&item.key)
                    .ok_or_else(|| anyhow::anyhow!("{what} has no key {}", item.key))?;
                out.insert(
                    item.path.clone(),
                    (value.clone(), item.mode.unwrap_or(mode) as u32),
                );
            }
        }
    }
    Ok(())
}

async fn config_map_files(
    client: &Client,
    ns: &str,
    name: &str,
    optional: Option<bool>,
    items: &Option<Vec<KeyToPath>>,
    mode: i32,
    out: &mut Payload,
) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let Some(cm) = api.get_opt(name).await? else {
        anyhow::ensure!(optional == Some(true), "configmap {name} not found");
        return Ok(());
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    add_files(data, items, mode, &format!("configmap {name}"), out)
}

async fn secret_files(
    client: &Client,
    ns: &str,
    name: &str,
    optional: Option<bool>,
    items: &Option<Vec<KeyToPath>>,
    mode: i32,
    out: &mut Payload,
) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let Some(secret) = api.get_opt(name).await? else {
        anyhow::ensure!(optional == Some(true), "secret {name} not found");
        return Ok(());
    };
    let data = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    add_files(data, items, mode, &format!("secret {name}"), out)
}

fn downward_files<'a>(
    pod: &Pod,
    node: &RunnerNode,
    items: impl Iterator<Item = &'a DownwardAPIVolumeFile>,
    mode: i32,
    out: &mut Payload,
) -> anyhow::Result<()> {
    for item in items {
        let Some(f) = &item.field_ref else {
            anyhow::bail!("downwardAPI {}: only fieldRef is supported", item.path);
        };
        let value = crate::env::field(pod, node, &f.field_path)
            .ok_or_else(|| anyhow::anyhow!("unsupported fieldRef {}", f.field_path))?;
        out.insert(
            item.path.clone(),
            (value.into_bytes(), item.mode.unwrap_or(mode) as u32),
        );
    }
    Ok(())
}

/// The kubelet's atomic writer: the payload goes into a fresh `..<timestamp>` folder,
/// `..data` is switched to it by one rename, and each top-level name is a symlink
/// through `..data`. Readers see the old files or the new ones, never a mix.
pub fn write_atomically(dir: &Path, payload: &Payload) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let fresh = format!("..{stamp}");
    let fresh_dir = dir.join(&fresh);
    std::fs::create_dir(&fresh_dir)?;
    for (path, (bytes, mode)) in payload {
        let rel = Path::new(path);
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(std::io::Error::other(format!(
                "{path:?} is not a relative path"
            )));
        }
        let file = fresh_dir.join(rel);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, bytes)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode & 0o777))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&fresh, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;

    let top: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_owned))
        .collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            // Older payload folders (the one `..data` pointed to, and any left by an
            // interrupted write).
            if name != "..data" && name != fresh {
                std::fs::remove_dir_all(entry.path())?;
            }
        } else if !top.contains(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// A kubeconfig for a pod: the API server as the runner sees it, the pod's token file.
fn kubeconfig(api: &ApiAccess, namespace: &str, token: &Path) -> String {
    let mut cluster = serde_json::json!({ "server": api.server });
    if let Some(pem) = &api.ca_pem {
        cluster["certificate-authority-data"] =
            base64::engine::general_purpose::STANDARD.encode(pem).into();
    }
    if api.insecure {
        cluster["insecure-skip-tls-verify"] = true.into();
    }
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{ "name": "cluster", "cluster": cluster }],
        "users": [{ "name": "pod", "user": { "tokenFile": token.display().to_string() } }],
        "contexts": [{ "name": "pod", "context": { "cluster": "cluster", "user": "pod", "namespace": namespace } }],
        "current-context": "pod",
    });
    serde_yaml::to_string(&config).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str)]) -> Payload {
        files
            .iter()
            .map(|(k, v)| (k.to_string(), (v.as_bytes().to_vec(), 0o640)))
            .collect()
    }

    #[test]
    fn updates_swap_the_whole_set_and_drop_removed_keys() {
        let dir = std::env::temp_dir().join(format!("atomic-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_atomically(&dir, &payload(&[("a", "1"), ("sub/b", "2")])).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        let mode = std::fs::metadata(dir.join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert!(
            std::fs::symlink_metadata(dir.join("a"))
                .unwrap()
                .is_symlink()
        );

        write_atomically(&dir, &payload(&[("a", "3")])).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert!(!dir.join("sub").exists(), "a removed key disappears");
        let hidden: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".."))
            .collect();
        assert_eq!(hidden.len(), 2, "..data and one payload folder: {hidden:?}");
        assert!(write_atomically(&dir, &payload(&[("../escape", "x")])).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
