//! What the GameFleet reconciler remembers between reconciles besides the pod cache:
//!
//! - [`Expectations`]: pods this operator created or deleted that the watch has not shown
//!   yet, so a reconcile that runs before the watch catches up neither creates a
//!   duplicate nor counts a deleted server (the ReplicaSet controller's "expectations");
//! - [`PortReservations`]: host ports handed out for pods not yet in the cache.
//!
//! Neither is needed after a restart: the cache is complete before any reconcile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::servers::cached::keep_what_is_read;

/// How long an expectation may wait for the watch before it is dropped (a missed watch
/// event must not block a fleet forever).
const EXPECTATION_TTL: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
pub struct FleetExpectations {
    created: HashMap<String, (Arc<Pod>, Instant)>,
    deleted: HashMap<String, Instant>,
}

#[derive(Debug, Default)]
pub struct Expectations {
    fleets: Mutex<HashMap<String, FleetExpectations>>,
}

impl Expectations {
    pub fn created(&self, fleet: &str, mut pod: Pod) {
        // Held beside the cache until the watch shows it: as little as the cache keeps.
        keep_what_is_read(&mut pod);
        let mut fleets = self.fleets.lock().expect("expectations lock");
        fleets
            .entry(fleet.to_owned())
            .or_default()
            .created
            .insert(pod.name_any(), (Arc::new(pod), Instant::now()));
    }

    pub fn deleted(&self, fleet: &str, pod: &str) {
        let mut fleets = self.fleets.lock().expect("expectations lock");
        fleets
            .entry(fleet.to_owned())
            .or_default()
            .deleted
            .insert(pod.to_owned(), Instant::now());
    }

    /// Merges what the cache shows with what this operator did since: created pods the
    /// cache lacks are added, deleted ones are marked terminating. Settled
    /// expectations are dropped.
    /// Pods are shared with the cache (no deep copies): only pods marked deleted are
    /// copied, to set their deletion timestamp.
    pub fn overlay(&self, fleet: &str, mut cached: Vec<Arc<Pod>>) -> Vec<Arc<Pod>> {
        let mut fleets = self.fleets.lock().expect("expectations lock");
        let Some(exp) = fleets.get_mut(fleet) else {
            return cached;
        };
        let now = Instant::now();
        let seen: HashMap<&str, bool> = cached
            .iter()
            .map(|p| {
                let name = p.metadata.name.as_deref().unwrap_or_default();
                (name, p.metadata.deletion_timestamp.is_some())
            })
            .collect();
        exp.created.retain(|name, (_, at)| {
            !seen.contains_key(name.as_str()) && now - *at < EXPECTATION_TTL
        });
        exp.deleted.retain(|name, at| {
            seen.get(name.as_str()) == Some(&false) && now - *at < EXPECTATION_TTL
        });
        for pod in &mut cached {
            if exp
                .deleted
                .contains_key(pod.metadata.name.as_deref().unwrap_or_default())
            {
                Arc::make_mut(pod).metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::now(),
                    ));
            }
        }
        cached.extend(exp.created.values().map(|(p, _)| p.clone()));
        if exp.created.is_empty() && exp.deleted.is_empty() {
            fleets.remove(fleet);
        }
        cached
    }

    pub fn forget(&self, fleet: &str) {
        self.fleets.lock().expect("expectations lock").remove(fleet);
    }
}

/// Host ports handed out to pods the cache does not show yet.
#[derive(Debug, Default)]
pub struct PortReservations {
    reserved: HashMap<String, (u16, Instant)>,
}

impl PortReservations {
    pub fn reserve(&mut self, key: String, port: u16) {
        self.reserved.insert(key, (port, Instant::now()));
    }

    pub fn release(&mut self, key: &str) {
        self.reserved.remove(key);
    }

    /// Drops reservations the cache now covers (or that are stale) and returns the ports
    /// still reserved.
    pub fn pending(&mut self, cached: &HashSet<String>) -> Vec<u16> {
        let now = Instant::now();
        self.reserved
            .retain(|k, (_, at)| !cached.contains(k) && now - *at < EXPECTATION_TTL);
        self.reserved.values().map(|(p, _)| *p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn pod(name: &str) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    #[test]
    fn created_pods_show_until_the_cache_has_them() {
        let e = Expectations::default();
        e.created("ns/f", Pod::clone(&pod("a")));
        let view = e.overlay("ns/f", vec![]);
        assert_eq!(view.len(), 1);
        let view = e.overlay("ns/f", vec![pod("a")]);
        assert_eq!(view.len(), 1, "no duplicate once cached");
        assert_eq!(
            e.overlay("ns/f", vec![]).len(),
            0,
            "settled expectation dropped"
        );
    }

    #[test]
    fn deleted_pods_count_as_terminating_until_the_cache_agrees() {
        let e = Expectations::default();
        e.deleted("ns/f", "a");
        let view = e.overlay("ns/f", vec![pod("a"), pod("b")]);
        assert!(view[0].metadata.deletion_timestamp.is_some());
        assert!(view[1].metadata.deletion_timestamp.is_none());
        let view = e.overlay("ns/f", vec![pod("b")]);
        assert_eq!(view.len(), 1);
    }
}
