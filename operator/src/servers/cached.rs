//! What the operator keeps of a game-server pod. The pod cache holds every server of
//! every fleet, and a pod as the API server sends it is mostly what nothing here reads:
//! managed fields, the template's environment, volumes, tolerations, conditions and
//! container statuses. [`keep_what_is_read`] strips a pod down to the fields the
//! reconcilers, the poller and the allocator read, before it enters the cache.
//!
//! Read, and so kept: the identity and bookkeeping metadata (name, namespace, uid,
//! resource version, creation and deletion times, labels, annotations, owner
//! references); the node, and each container's name and ports (the control and game
//! ports, [`super::address`]); the phase, the pod and host IPs and the start time.

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Drops every field of `pod` that no reader of the pod cache uses.
pub fn keep_what_is_read(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    pod.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        creation_timestamp: meta.creation_timestamp,
        deletion_timestamp: meta.deletion_timestamp,
        labels: meta.labels,
        annotations: meta.annotations,
        owner_references: meta.owner_references,
        ..Default::default()
    };
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        containers: spec
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        host_ip: status.host_ip,
        start_time: status.start_time,
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::labels;
    use crate::servers::address::{game_endpoint, host_port, pod_ip_resolver};
    use crate::servers::ownership::controlling_fleet;
    use serde_json::json;

    fn full_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "arena-x1", "namespace": "games", "uid": "u-pod", "resourceVersion": "42",
                "creationTimestamp": "2026-12-03T10:00:00Z",
                "deletionTimestamp": "2026-12-03T11:00:00Z",
                "labels": {labels::FLEET: "arena", labels::TEMPLATE_HASH: "abc"},
                "annotations": {labels::GAME_PORT: "7003", labels::SAFE_TO_EVICT: "true"},
                "ownerReferences": [{"apiVersion": "tanks.dev/v1alpha1", "kind": "GameFleet",
                                     "name": "arena", "uid": "u1", "controller": true}],
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
            },
            "spec": {
                "nodeName": "n1",
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "containers": [{
                    "name": "gameserver", "image": "tanks/gameserver:1",
                    "env": [{"name": "TANKS_FLEET", "value": "arena"}],
                    "ports": [
                        {"name": "game", "containerPort": 7003, "hostPort": 7003, "protocol": "UDP"},
                        {"name": "control", "containerPort": 9000},
                    ],
                }],
            },
            "status": {
                "phase": "Running", "podIP": "10.1.0.5", "hostIP": "10.0.0.1",
                "startTime": "2026-12-03T10:00:05Z",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn every_field_the_operator_reads_survives() {
        let full = full_pod();
        let mut pod = full.clone();
        keep_what_is_read(&mut pod);

        assert_eq!(game_endpoint(&pod), game_endpoint(&full));
        assert_eq!(game_endpoint(&pod), Some(("10.0.0.1".into(), 7003)));
        assert_eq!(
            pod_ip_resolver()(&pod).as_deref(),
            Some("http://10.1.0.5:9000")
        );
        assert_eq!(host_port(&pod), Some(7003));
        assert_eq!(controlling_fleet(&pod), Some(("arena", "u1")));
        let (m, f) = (&pod.metadata, &full.metadata);
        assert_eq!(
            (&m.name, &m.namespace, &m.uid, &m.resource_version),
            (&f.name, &f.namespace, &f.uid, &f.resource_version)
        );
        assert_eq!(
            (&m.creation_timestamp, &m.deletion_timestamp),
            (&f.creation_timestamp, &f.deletion_timestamp)
        );
        assert_eq!((&m.labels, &m.annotations), (&f.labels, &f.annotations));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.start_time, full.status.as_ref().unwrap().start_time);
    }

    #[test]
    fn what_nobody_reads_is_dropped() {
        let mut pod = full_pod();
        keep_what_is_read(&mut pod);
        assert!(pod.metadata.managed_fields.is_none());
        let spec = pod.spec.unwrap();
        assert!(spec.tolerations.is_none());
        assert!(spec.containers[0].env.is_none());
        assert!(spec.containers[0].image.is_none());
        assert!(pod.status.unwrap().conditions.is_none());
    }
}
