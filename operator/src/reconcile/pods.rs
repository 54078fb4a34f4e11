//! Game-server pods made from a fleet's template.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodAffinity,
    PodAffinityTerm, TopologySpreadConstraint, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::gamefleet::{PortKind, Scheduling};
use crate::api::{GameFleet, labels};
use crate::error::{Error, Result};
use crate::servers::address::DEFAULT_GAME_PORT;

/// Hash of everything that ends up in a pod: a change rolls the fleet.
pub fn template_hash(fleet: &GameFleet) -> String {
    let spec = &fleet.spec;
    let input = serde_json::json!({
        "template": spec.template,
        "capacity": spec.capacity,
        "ports": [spec.ports.policy, spec.ports.container.clone(), spec.ports.port],
        "scheduling": spec.scheduling,
    });
    let digest = Sha256::digest(serde_json::to_vec(&input).unwrap_or_default());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// Builds one game-server pod. `port` is the host port for `Dynamic`.
pub fn build(fleet: &GameFleet, hash: &str, port: Option<u16>, creator: &str) -> Result<Pod> {
    let name = fleet.name_any();
    let template = &fleet.spec.template;
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut spec = template
        .spec
        .clone()
        .ok_or_else(|| Error::InvalidSpec("template.spec is missing".into()))?;

    let mut pod_labels: BTreeMap<String, String> = tmeta.labels.unwrap_or_default();
    pod_labels.insert(labels::FLEET.into(), name.clone());
    pod_labels.insert(labels::TEMPLATE_HASH.into(), hash.into());
    let mut annotations: BTreeMap<String, String> = tmeta.annotations.unwrap_or_default();
    annotations.insert(labels::SAFE_TO_EVICT.into(), "true".into());
    annotations.insert(labels::CREATED_BY.into(), creator.into());

    let ports = &fleet.spec.ports;
    let index = match &ports.container {
        Some(c) => spec
            .containers
            .iter()
            .position(|x| &x.name == c)
            .ok_or_else(|| Error::InvalidSpec(format!("ports.container {c} not in template")))?,
        None if spec.containers.is_empty() => {
            return Err(Error::InvalidSpec("template has no container".into()));
        }
        None => 0,
    };
    let (container_port, host) = match ports.policy {
        PortKind::Dynamic => {
            let p = port.ok_or_else(|| Error::InvalidSpec("no host port allocated".into()))?;
            annotations.insert(labels::GAME_PORT.into(), p.to_string());
            (p, Some(p))
        }
        PortKind::Static => {
            let p = ports.port.unwrap_or(DEFAULT_GAME_PORT as i32) as u16;
            annotations.insert(labels::GAME_PORT.into(), p.to_string());
            (p, Some(p))
        }
        PortKind::PodIp => (
            ports.port.map(|p| p as u16).unwrap_or(DEFAULT_GAME_PORT),
            None,
        ),
    };
    let capacity = &fleet.spec.capacity;
    let container = &mut spec.containers[index];
    let container_ports = container.ports.get_or_insert_with(Vec::new);
    container_ports.retain(|p| p.name.as_deref() != Some(labels::GAME_PORT_NAME));
    container_ports.push(ContainerPort {
        name: Some(labels::GAME_PORT_NAME.into()),
        container_port: container_port.into(),
        host_port: host.map(i32::from),
        protocol: Some("UDP".into()),
        ..Default::default()
    });
    let env = container.env.get_or_insert_with(Vec::new);
    let mut set = |key: &str, value: String| {
        env.retain(|e| e.name != key);
        env.push(EnvVar {
            name: key.into(),
            value: Some(value),
            ..Default::default()
        });
    };
    set("TANKS_FLEET", name.clone());
    set("TANKS_GAME_PORT", container_port.to_string());
    set(
        "TANKS_SESSIONS_PER_SERVER",
        capacity.sessions_per_server.to_string(),
    );
    set(
        "TANKS_PLAYERS_PER_SESSION",
        capacity.players_per_session.to_string(),
    );
    env.retain(|e| e.name != "TANKS_SERVER_NAME");
    env.push(EnvVar {
        name: "TANKS_SERVER_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });

    let fleet_selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(labels::FLEET.to_owned(), name.clone())])),
        ..Default::default()
    };
    match fleet.spec.scheduling {
        Scheduling::Packed if spec.affinity.is_none() => {
            spec.affinity = Some(Affinity {
                pod_affinity: Some(PodAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        WeightedPodAffinityTerm {
                            weight: 100,
                            pod_affinity_term: PodAffinityTerm {
                                label_selector: Some(fleet_selector),
                                topology_key: "kubernetes.io/hostname".into(),
                                ..Default::default()
                            },
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        Scheduling::Distributed if spec.topology_spread_constraints.is_none() => {
            spec.topology_spread_constraints = Some(vec![TopologySpreadConstraint {
                label_selector: Some(fleet_selector),
                max_skew: 1,
                topology_key: "kubernetes.io/hostname".into(),
                when_unsatisfiable: "ScheduleAnyway".into(),
                ..Default::default()
            }]);
        }
        _ => {}
    }

    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: fleet.namespace(),
            labels: Some(pod_labels),
            annotations: Some(annotations),
            owner_references: fleet.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}
