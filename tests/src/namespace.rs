//! Temporary namespaces for one test or benchmark run: a unique name, one label that
//! marks it as disposable, and deletion.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

/// The label on every namespace [`create`] makes (value `true`): whatever a crashed run
/// left behind can be found with `kubectl get ns -l tanks.dev/test`.
pub const LABEL: &str = "tanks.dev/test";

/// Creates a namespace named [`crate::unique`]`(prefix)`, labelled [`LABEL`], and
/// returns its name.
pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<String> {
    let name = crate::unique(prefix);
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {LABEL: "true"}}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .map_err(|e| anyhow::anyhow!("creating namespace {name}: {e}"))?;
    Ok(name)
}

/// Starts deleting a namespace and returns at once; errors are ignored (it may be
/// gone already, and cleanup must not hide a test's own failure).
pub async fn delete(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await;
}

/// Deletes a namespace and waits until it is gone, so that its deletes do not run
/// during the next measurement. Pods go first with no grace period: a kwok node has no
/// kubelet to confirm a graceful stop.
pub async fn delete_and_wait(client: &Client, name: &str, limit: Duration) -> anyhow::Result<()> {
    Api::<Pod>::namespaced(client.clone(), name)
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default(),
        )
        .await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.delete(name, &DeleteParams::background()).await?;
    let deadline = Instant::now() + limit;
    while namespaces.get_opt(name).await?.is_some() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "namespace {name} still there after {} s",
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
