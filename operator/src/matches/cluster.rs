//! The allocation view's [`ServerSource`] in the operator: the fleet's pods from the pod
//! cache, each with its last load report.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::api::labels;
use crate::matches::view::{ServerInfo, ServerSource};
use crate::servers::LoadIndex;

pub struct PodLoadSource {
    pub pods: Store<Pod>,
    pub loads: Arc<LoadIndex>,
}

impl ServerSource for PodLoadSource {
    fn servers(&self, namespace: &str, fleet: &str) -> Vec<ServerInfo> {
        self.pods
            .state()
            .iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(namespace)
                    && p.labels().get(labels::FLEET).map(String::as_str) == Some(fleet)
            })
            .map(|p| server_info(p, &self.loads))
            .collect()
    }
}

/// A pod as the allocator sees it: only a running, not terminating pod whose last poll
/// succeeded and said ready can take a match.
pub fn server_info(pod: &Pod, loads: &LoadIndex) -> ServerInfo {
    let key = LoadIndex::key(pod);
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && pod.metadata.deletion_timestamp.is_none();
    let entry = loads.get(&key).unwrap_or_default();
    let healthy = entry.failing_since.is_none();
    let mut info = ServerInfo {
        key,
        name: pod.name_any(),
        ..Default::default()
    };
    if let Some(r) = entry.report {
        info.ready = running && healthy && r.ready;
        info.draining = r.draining || entry.drain_requested;
        info.capacity = r.session_capacity;
        info.other_sessions = r.sessions.saturating_sub(r.matches.len() as u32);
        info.report = Some(r);
    }
    info
}
