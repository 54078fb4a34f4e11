//! The last load report of every game server and whether its polls fail: what the
//! GameFleet reconciler classifies servers by and the allocation view counts slots
//! from. Rebuilt by the next poll after a restart, so it is never persisted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tanks_core::protocol::control::LoadReport;

use crate::domain::fleet::ReportView;
use crate::servers::client::ServerError;

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

    /// The entries of many pods, in their order, under one lock (a fleet reconcile reads
    /// every server of the fleet).
    pub fn entries_of(&self, pods: &[Arc<Pod>]) -> Vec<Option<LoadEntry>> {
        let entries = self.entries.lock().expect("load index lock");
        let mut key = String::new();
        pods.iter()
            .map(|pod| {
                key.clear();
                key.push_str(pod.metadata.namespace.as_deref().unwrap_or_default());
                key.push('/');
                key.push_str(pod.metadata.name.as_deref().unwrap_or_default());
                entries.get(&key).cloned()
            })
            .collect()
    }

    /// Records a poll; true when what decisions depend on changed.
    pub fn record(&self, key: &str, result: Result<LoadReport, ServerError>) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(idx.record("k", Err(ServerError::Timeout)));
        assert!(!idx.record("k", Err(ServerError::Timeout)));
        assert!(idx.record("k", Ok(r(1))));
        assert!(!idx.record("never", Err(ServerError::Timeout)));
    }
}
