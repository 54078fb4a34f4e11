//! Where a game server is reached: its control interface (by the operator) and its game
//! port (by players). Both are read from the pod alone, so they are decided here and
//! nowhere else; the pod builder writes what these functions read.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tanks_core::protocol::control::DEFAULT_CONTROL_PORT;

use crate::api::labels;

/// The default container port of the game for `PodIp` without `ports.port`.
pub const DEFAULT_GAME_PORT: u16 = 7777;

/// Where a pod's control interface listens, as a base URL. The default is the pod IP
/// and the container port named `control` (8890 when none); tests and the local pod
/// runner map pods to loopback addresses instead.
pub type EndpointResolver = Arc<dyn Fn(&Pod) -> Option<String> + Send + Sync>;

pub fn pod_ip_resolver() -> EndpointResolver {
    Arc::new(|pod: &Pod| {
        let ip = pod.status.as_ref()?.pod_ip.as_ref()?;
        let port =
            named_container_port(pod, labels::CONTROL_PORT_NAME).unwrap_or(DEFAULT_CONTROL_PORT);
        Some(format!("http://{ip}:{port}"))
    })
}

/// The host port a pod was given, if any.
pub fn host_port(pod: &Pod) -> Option<u16> {
    pod.annotations()
        .get(labels::GAME_PORT)
        .and_then(|p| p.parse().ok())
}

/// Where a client reaches a game-server pod: the node's address and the host port when
/// the pod has one (`Dynamic`, `Static`), else the pod IP and the game container port
/// (`PodIp`). (With an Nginx edge this is where the edge forwards to; the edge's own
/// address is not known here yet.)
pub fn game_endpoint(pod: &Pod) -> Option<(String, u16)> {
    let status = pod.status.as_ref()?;
    if let Some(port) = host_port(pod)
        && let Some(host) = status.host_ip.as_ref().filter(|h| !h.is_empty())
    {
        return Some((host.clone(), port));
    }
    let ip = status.pod_ip.as_ref().filter(|h| !h.is_empty())?;
    let port = named_container_port(pod, labels::GAME_PORT_NAME).unwrap_or(DEFAULT_GAME_PORT);
    Some((ip.clone(), port))
}

fn named_container_port(pod: &Pod, name: &str) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn endpoints_prefer_the_host_port() {
        let dynamic = pod(serde_json::json!({
            "metadata": {"name": "p", "annotations": {labels::GAME_PORT: "7003"}},
            "spec": {"containers": [{"name": "g", "ports": [{"name": "game", "containerPort": 7003, "hostPort": 7003, "protocol": "UDP"}]}]},
            "status": {"hostIP": "10.0.0.1", "podIP": "10.1.0.5"},
        }));
        assert_eq!(game_endpoint(&dynamic), Some(("10.0.0.1".into(), 7003)));
        let pod_ip = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "g", "ports": [{"name": "game", "containerPort": 9999, "protocol": "UDP"}]}]},
            "status": {"hostIP": "10.0.0.1", "podIP": "10.1.0.5"},
        }));
        assert_eq!(game_endpoint(&pod_ip), Some(("10.1.0.5".into(), 9999)));
        let unscheduled = pod(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": []}, "status": {}}),
        );
        assert_eq!(game_endpoint(&unscheduled), None);
    }

    #[test]
    fn the_control_interface_is_the_named_port_or_the_default() {
        let named = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "g", "ports": [{"name": "control", "containerPort": 9000}]}]},
            "status": {"podIP": "10.1.0.5"},
        }));
        assert_eq!(
            pod_ip_resolver()(&named).as_deref(),
            Some("http://10.1.0.5:9000")
        );
        let unnamed = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "g"}]},
            "status": {"podIP": "10.1.0.5"},
        }));
        assert_eq!(
            pod_ip_resolver()(&unnamed),
            Some(format!("http://10.1.0.5:{DEFAULT_CONTROL_PORT}"))
        );
        assert_eq!(
            pod_ip_resolver()(&pod(serde_json::json!({"metadata": {"name": "p"}}))),
            None
        );
    }
}
