//! The cluster autoscaler's `safe-to-evict` mark on a game server's pod: `"false"` while
//! it hosts (or is about to host) a session, `"true"` once it is empty.
//!
//! Two writers share it under one field manager, so they never conflict: the Match
//! controller marks a server `"false"` before it hands out the endpoint of a new session
//! there (an autoscaler acting between the allocation and the next load poll would
//! otherwise evict a server players are joining), and the GameFleet controller keeps the
//! mark in line with the load reports and the allocation view afterwards.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::labels;

/// Field manager of the annotation (its own, so it never fights other writers of the pod).
pub const MANAGER: &str = "tanks-operator-evict";

/// The pod's mark as it stands: `None` when it has none.
pub fn evictable(pod: &Pod) -> Option<bool> {
    pod.annotations()
        .get(labels::SAFE_TO_EVICT)
        .map(|v| v == "true")
}

/// Sets the pod's mark (server-side apply of that one annotation).
pub async fn mark(api: &Api<Pod>, name: &str, evictable: bool) -> kube::Result<()> {
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": {labels::SAFE_TO_EVICT: evictable.to_string()}},
    });
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}
