//! Which pods the operator talks to. It sends its control token only to a pod it
//! created for a fleet it owns: the pod's *controller* owner reference must name a
//! `GameFleet` of the same namespace by name and uid. The fleet label alone proves
//! nothing (anyone who can create a pod can set it), and neither does a non-controller
//! owner reference.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::GameFleet;
use crate::api::labels;

const GROUP_PREFIX: &str = "tanks.dev/";
const KIND: &str = "GameFleet";

/// The `(name, uid)` of the GameFleet this pod's controller owner reference names, if
/// its controller is a GameFleet and its fleet label agrees.
pub fn controlling_fleet(pod: &Pod) -> Option<(&str, &str)> {
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))?;
    if owner.kind != KIND || !owner.api_version.starts_with(GROUP_PREFIX) {
        return None;
    }
    if pod.labels().get(labels::FLEET) != Some(&owner.name) {
        return None;
    }
    Some((owner.name.as_str(), owner.uid.as_str()))
}

/// Whether `fleet` (this very object, by uid) controls `pod`.
/// (Called for every cached pod in each fleet reconcile: it compares in place and
/// copies nothing.)
pub fn owned_by(pod: &Pod, fleet: &GameFleet) -> bool {
    let (meta, fleet_meta) = (&pod.metadata, &fleet.metadata);
    let Some(uid) = fleet_meta.uid.as_deref() else {
        return false;
    };
    meta.namespace == fleet_meta.namespace
        && controlling_fleet(pod).is_some_and(|(name, owner_uid)| {
            Some(name) == fleet_meta.name.as_deref() && owner_uid == uid
        })
}

/// The fleet in `fleets` that controls `pod`, if any: the pods the operator may talk to.
pub fn owning_fleet(pod: &Pod, fleets: &Store<GameFleet>) -> Option<String> {
    let (name, _) = controlling_fleet(pod)?;
    let fleet = fleets.get(&ObjectRef::new(name).within(&pod.namespace()?))?;
    owned_by(pod, &fleet).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn fleet(uid: &str) -> GameFleet {
        serde_json::from_value(json!({
            "apiVersion": "tanks.dev/v1alpha1", "kind": "GameFleet",
            "metadata": {"name": "arena", "namespace": "games", "uid": uid},
            "spec": {
                "template": {"spec": {"containers": []}},
                "capacity": {"sessionsPerServer": 2, "playersPerSession": 4},
                "scaling": {"minReplicas": 0, "maxReplicas": 10, "buffer": {"slots": 0}},
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
        }))
        .unwrap()
    }

    fn pod(labels: serde_json::Value, owners: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "games", "labels": labels,
                         "ownerReferences": owners},
        }))
        .unwrap()
    }

    fn owner(kind: &str, name: &str, uid: &str, controller: bool) -> serde_json::Value {
        json!({"apiVersion": "tanks.dev/v1alpha1", "kind": kind, "name": name,
               "uid": uid, "controller": controller})
    }

    #[test]
    fn only_pods_the_fleet_controls_are_talked_to() {
        let f = fleet("u1");
        let label = json!({labels::FLEET: "arena"});
        let ours = pod(
            label.clone(),
            json!([owner("GameFleet", "arena", "u1", true)]),
        );
        assert!(owned_by(&ours, &f));

        // The fleet label alone: anyone's pod.
        assert!(!owned_by(&pod(label.clone(), json!([])), &f));
        // A deleted namesake's pod, or a forged owner with another uid.
        let other = pod(
            label.clone(),
            json!([owner("GameFleet", "arena", "u0", true)]),
        );
        assert!(!owned_by(&other, &f));
        // The right uid, but not as the controller.
        let not_ctl = pod(
            label.clone(),
            json!([owner("GameFleet", "arena", "u1", false)]),
        );
        assert!(!owned_by(&not_ctl, &f));
        // Another kind that happens to carry the uid.
        let kind = pod(
            label.clone(),
            json!([owner("ReplicaSet", "arena", "u1", true)]),
        );
        assert!(!owned_by(&kind, &f));
        // A label naming another fleet than the owner.
        let relabelled = pod(
            json!({labels::FLEET: "other"}),
            json!([owner("GameFleet", "arena", "u1", true)]),
        );
        assert!(!owned_by(&relabelled, &f));
        // Another namespace.
        let mut elsewhere = ours.clone();
        elsewhere.metadata.namespace = Some("x".into());
        assert!(!owned_by(&elsewhere, &f));
    }

    #[test]
    fn the_owning_fleet_is_looked_up_by_name_and_checked_by_uid() {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Apply(fleet("u1")));
        let label = json!({labels::FLEET: "arena"});
        let ours = pod(
            label.clone(),
            json!([owner("GameFleet", "arena", "u1", true)]),
        );
        assert_eq!(owning_fleet(&ours, &store).as_deref(), Some("arena"));
        let stale = pod(
            label.clone(),
            json!([owner("GameFleet", "arena", "u0", true)]),
        );
        assert_eq!(owning_fleet(&stale, &store), None);
        assert_eq!(owning_fleet(&pod(label, json!([])), &store), None);
    }
}
