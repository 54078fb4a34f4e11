//! In-memory views the reconciler reads besides the pod cache:
//!
//! - [`LoadIndex`]: the last load report of every server and whether polls fail;
//! - [`Expectations`]: pods this operator created or deleted that the watch has not shown
//!   yet, so a reconcile that runs before the watch catches up neither creates a
//!   duplicate nor counts a deleted server (the ReplicaSet controller's "expectations");
//! - [`PortReservations`]: host ports handed out for pods not yet in the cache.
//!
//! All of it is rebuilt from the API server after a restart: reports by the next poll,
//! and expectations are not needed then (the cache is complete before any reconcile).
//! Issue 7's allocator reads the same load index.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tanks_core::protocol::control::LoadReport;

use crate::control::ControlError;
use crate::domain::fleet::ReportView;

#[derive(Debug, Clone, Default)]
pub struct LoadEntry {
    /// Shared: the allocator reads every server's entry several times a second, and a
    /// report lists each live session by name.
    pub report: Option<Arc<LoadReport>>,
    pub last_ok: Option<Instant>,
    /// When polls started failing (cleared by a good poll).
    pub failing_since: Option<Instant>,
    /// The operator told this server to drain.
    pub drain_requested: bool,
}

impl LoadEntry {
    pub fn view(&self) -> Option<ReportView> {
        self.report.as_ref().map(|r| ReportView {
            sessions: r.sessions,
            players: r.players,
            ready: r.ready,
            draining: r.draining,
        })
    }
}

#[derive(Debug, Default)]
pub struct LoadIndex {
    entries: Mutex<HashMap<String, LoadEntry>>,
}

impl LoadIndex {
    /// `namespace/name` of a pod.
    pub fn key(pod: &Pod) -> String {
        format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
    }

    pub fn get(&self, key: &str) -> Option<LoadEntry> {
        self.entries
            .lock()
            .expect("load index lock")
            .get(key)
            .cloned()
    }

    /// Records a poll; true when what decisions depend on changed.
    pub fn record(&self, key: &str, result: Result<LoadReport, ControlError>) -> bool {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("load index lock");
        let entry = entries.entry(key.to_owned()).or_default();
        match result {
            Ok(report) => {
                let changed = entry.failing_since.is_some()
                    || entry.report.as_ref().is_none_or(|old| {
                        (old.sessions, old.players, old.ready, old.draining)
                            != (
                                report.sessions,
                                report.players,
                                report.ready,
                                report.draining,
                            )
                    });
                entry.report = Some(Arc::new(report));
                entry.last_ok = Some(now);
                entry.failing_since = None;
                changed
            }
            Err(_) => {
                let first = entry.failing_since.is_none();
                entry.failing_since.get_or_insert(now);
                // Only a server that had reported changes state by going silent.
                first && entry.report.is_some()
            }
        }
    }

    /// Records the answer to a drain call.
    pub fn drained(&self, key: &str, report: Option<LoadReport>) {
        let mut entries = self.entries.lock().expect("load index lock");
        let entry = entries.entry(key.to_owned()).or_default();
        entry.drain_requested = true;
        if let Some(report) = report {
            entry.report = Some(Arc::new(report));
            entry.last_ok = Some(Instant::now());
            entry.failing_since = None;
        }
    }

    /// Forgets pods that no longer exist.
    pub fn retain(&self, live: &HashSet<String>) {
        self.entries
            .lock()
            .expect("load index lock")
            .retain(|k, _| live.contains(k));
    }

    /// Tests and benchmarks: set a server's report directly.
    pub fn set(&self, key: &str, report: LoadReport) {
        self.record(key, Ok(report));
    }
}

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
    pub fn created(&self, fleet: &str, pod: Pod) {
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
        let seen: HashMap<String, bool> = cached
            .iter()
            .map(|p| (p.name_any(), p.metadata.deletion_timestamp.is_some()))
            .collect();
        exp.created
            .retain(|name, (_, at)| !seen.contains_key(name) && now - *at < EXPECTATION_TTL);
        exp.deleted
            .retain(|name, at| seen.get(name) == Some(&false) && now - *at < EXPECTATION_TTL);
        for pod in &mut cached {
            if exp.deleted.contains_key(&pod.name_any()) {
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

    #[test]
    fn load_changes_that_matter_are_reported() {
        let idx = LoadIndex::default();
        let r = |sessions| LoadReport {
            sessions,
            ready: true,
            ..Default::default()
        };
        assert!(idx.record("k", Ok(r(0))));
        assert!(!idx.record("k", Ok(r(0))));
        assert!(idx.record("k", Ok(r(1))));
        assert!(idx.record("k", Err(ControlError::Timeout)));
        assert!(!idx.record("k", Err(ControlError::Timeout)));
        assert!(idx.record("k", Ok(r(1))));
        assert!(!idx.record("never", Err(ControlError::Timeout)));
    }
}
