//! A provisioner for claims nobody else serves: without one, a pod with a
//! PersistentVolumeClaim (a StatefulSet's, a backup Job's) is never scheduled.
//!
//! Every claim still unbound after a moment, whose storage class is unset, empty or
//! [`STORAGE_CLASS`], gets a `hostPath` PersistentVolume of its own, pre-bound to it
//! (`claimRef`), whose folder is `<state>/claims/<namespace>/<claim>-<uid>`; the
//! controller-manager's volume binder completes the binding. The data outlives every
//! pod using the claim. When the claim is deleted the volume is `Released`: the
//! runner deletes it and its folder (it made it, so nobody else will).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use crate::RUNNER_LABEL;

/// The storage class a claim can name to ask for this provisioner explicitly.
pub const STORAGE_CLASS: &str = "tanks-pod-runner";
const PERIOD: Duration = Duration::from_secs(1);

pub(crate) async fn run(client: Client, dir: PathBuf, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = provision(&client, &dir).await {
            tracing::warn!(error = %e, "provisioning claims");
        }
        if let Err(e) = reclaim(&client).await {
            tracing::warn!(error = %e, "reclaiming volumes");
        }
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = crate::pod::stopped(&mut shutdown) => return,
        }
    }
}

fn served(claim: &PersistentVolumeClaim) -> bool {
    let Some(spec) = &claim.spec else {
        return false;
    };
    let class = spec.storage_class_name.as_deref().unwrap_or_default();
    let pending = claim.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound");
    pending
        && spec.volume_name.as_deref().unwrap_or_default().is_empty()
        && (class.is_empty() || class == STORAGE_CLASS)
}

async fn provision(client: &Client, dir: &Path) -> anyhow::Result<()> {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    for claim in claims.list(&ListParams::default()).await?.items {
        if !served(&claim) {
            continue;
        }
        let (ns, name, uid) = (
            claim.namespace().unwrap_or_default(),
            claim.name_any(),
            claim.uid().unwrap_or_default(),
        );
        let spec = claim.spec.clone().unwrap_or_default();
        let size = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_else(|| "1Gi".into());
        let path = dir.join(&ns).join(format!("{name}-{uid}"));
        std::fs::create_dir_all(&path)?;
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": { "name": format!("pvc-{uid}"), "labels": { RUNNER_LABEL: "true" } },
            "spec": {
                "capacity": { "storage": size },
                "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
                "volumeMode": "Filesystem",
                "storageClassName": spec.storage_class_name.clone().unwrap_or_default(),
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": { "path": path.display().to_string(), "type": "DirectoryOrCreate" },
                "claimRef": {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "namespace": ns, "name": name, "uid": uid,
                },
            },
        }))?;
        match volumes.create(&PostParams::default(), &pv).await {
            Ok(_) => {
                tracing::info!(claim = %format!("{ns}/{name}"), path = %path.display(), "provisioned")
            }
            // Another runner on this machine was first: the same folder scheme, fine.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn reclaim(client: &Client) -> anyhow::Result<()> {
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let ours = volumes
        .list(&ListParams::default().labels(&format!("{RUNNER_LABEL}=true")))
        .await?;
    for pv in ours.items {
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        if !released {
            continue;
        }
        if let Some(path) = pv.spec.as_ref().and_then(|s| s.host_path.as_ref()) {
            let _ = std::fs::remove_dir_all(&path.path);
        }
        let _ = volumes
            .delete(&pv.name_any(), &DeleteParams::default())
            .await;
        tracing::info!(volume = %pv.name_any(), "released volume deleted");
    }
    Ok(())
}
