//! The allocation view: which match holds (or has been promised) which session slot.
//!
//! Allocation decisions run concurrently (one per Match reconcile) while the API server
//! and the game servers' load reports lag behind. The view closes that gap: a slot is
//! reserved here, under one lock, *before* the game server is asked for the session, so
//! two reconciles never both take a server's last slot, and a server's slots in use are
//!
//! `sessions not made for matches + |matches assigned here ∪ matches its report lists live|`
//!
//! (the union: a reservation counts before the report shows it, a report counts a
//! session the view does not know yet).
//!
//! # Across a restart
//! The view is rebuilt before the first allocation: every Match whose status names a game
//! server (`Allocated`, `Running`) is assigned again from the Match cache, and the
//! operator waits for one round of load reports. A Match the previous process allocated
//! on a server but whose status it never wrote is still `Pending`, and that server's
//! report lists its session: [`AllocationView::reserve`] adopts that server (the session
//! call is idempotent on the match id), so it is never allocated twice.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use tanks_core::protocol::control::LoadReport;

use crate::domain::allocation::{self, Slotted, Strategy};

/// One game server as the load reports show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// `namespace/pod`.
    pub key: String,
    pub name: String,
    pub ready: bool,
    pub draining: bool,
    pub capacity: u32,
    /// Sessions not created for a Match (counted, never matched by name).
    pub other_sessions: u32,
    /// The last load report: its live match sessions (by match id, the Match name) and
    /// those it says ended. Shared with the load index, not copied: the view reads every
    /// server several times a second.
    pub report: Option<Arc<LoadReport>>,
}

impl ServerInfo {
    /// Match ids the report lists live and not ended.
    fn live_matches(&self) -> Vec<&str> {
        let Some(r) = self.report.as_deref() else {
            return Vec::new();
        };
        let live = r.matches.iter().map(|m| m.match_id.as_str());
        if r.finished.is_empty() {
            return live.collect();
        }
        let ended: HashSet<&str> = r.finished.iter().map(|f| f.match_id.as_str()).collect();
        live.filter(|m| !ended.contains(m)).collect()
    }

    fn lists_live(&self, name: &str) -> bool {
        self.report.as_deref().is_some_and(|r| {
            r.matches.iter().any(|m| m.match_id == name)
                && !r.finished.iter().any(|f| f.match_id == name)
        })
    }
}

/// Where the view learns about servers: the pod cache and load reports in the operator,
/// plain data in tests.
pub trait ServerSource: Send + Sync {
    fn servers(&self, namespace: &str, fleet: &str) -> Vec<ServerInfo>;
}

/// A fleet's servers as last read, with what the allocator needs ready: every
/// reservation is one pass over `slots`, with no copy and no lookup per server.
#[derive(Debug)]
struct Snapshot {
    at: Instant,
    servers: Vec<ServerInfo>,
    /// Parallel to `servers`; `used` follows every assignment made after the read.
    slots: Vec<Slotted>,
    /// Server key → position.
    index: HashMap<String, usize>,
    /// Hash of a match name → position of the server whose report lists it live. By
    /// hash, not by name: it is rebuilt with every read (a thousand servers, tens of
    /// sessions each), and a hit is checked against that server's report.
    hosting: HashMap<u64, usize>,
    hasher: std::collections::hash_map::RandomState,
}

impl Snapshot {
    fn new(servers: Vec<ServerInfo>, on_server: &HashMap<String, HashSet<String>>) -> Self {
        let hasher = std::collections::hash_map::RandomState::new();
        let mut hosting = HashMap::new();
        let slots = servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let live = s.live_matches();
                for m in &live {
                    hosting.insert(hasher.hash_one(m), i);
                }
                Slotted {
                    name: s.name.clone(),
                    ready: s.ready,
                    draining: s.draining,
                    capacity: s.capacity,
                    used: used(s.other_sessions, &live, on_server.get(&s.key)),
                }
            })
            .collect();
        let index = servers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.clone(), i))
            .collect();
        Snapshot {
            at: Instant::now(),
            servers,
            slots,
            index,
            hosting,
            hasher,
        }
    }

    /// Whether the server's report already counts this match's session.
    fn reports(&self, i: usize, name: &str) -> bool {
        self.servers[i].lists_live(name)
    }

    /// The server whose report lists this match live.
    fn hosting(&self, name: &str) -> Option<usize> {
        let i = *self.hosting.get(&self.hasher.hash_one(name))?;
        if self.reports(i, name) {
            return Some(i);
        }
        // Two names with one hash: the map kept the other; look everywhere.
        (0..self.servers.len()).find(|&i| self.reports(i, name))
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Match key (`namespace/name`) → server key.
    assigned: HashMap<String, String>,
    /// Server key → names of the matches assigned to it.
    on_server: HashMap<String, HashSet<String>>,
    /// Fleet key → Matches waiting for room.
    pending: HashMap<String, HashSet<String>>,
    /// Fleet key → servers as last read.
    snapshots: HashMap<String, Snapshot>,
    /// Servers that refused a session (full, draining): skipped until then.
    refused_until: HashMap<String, Instant>,
}

impl Inner {
    /// Holds a slot on `server` for the match (nothing when it already holds it there).
    fn assign(&mut self, match_key: &str, name: &str, server: &str) {
        if self.assigned.get(match_key).map(String::as_str) == Some(server) {
            return;
        }
        self.unassign(match_key, name);
        self.assigned
            .insert(match_key.to_owned(), server.to_owned());
        self.on_server
            .entry(server.to_owned())
            .or_default()
            .insert(name.to_owned());
        self.count(server, name, true);
    }

    /// Gives the match's slot back, if it holds one.
    fn unassign(&mut self, match_key: &str, name: &str) {
        let Some(server) = self.assigned.remove(match_key) else {
            return;
        };
        if let Some(set) = self.on_server.get_mut(&server) {
            set.remove(name);
            if set.is_empty() {
                self.on_server.remove(&server);
            }
        }
        self.count(&server, name, false);
    }

    /// Keeps the snapshots' `used` equal to [`used`] after an assignment changed: a
    /// match its server's report already lists is counted there, not twice.
    fn count(&mut self, server: &str, name: &str, added: bool) {
        for snapshot in self.snapshots.values_mut() {
            if let Some(&i) = snapshot.index.get(server)
                && !snapshot.reports(i, name)
            {
                let slot = &mut snapshot.slots[i];
                slot.used = if added {
                    slot.used + 1
                } else {
                    slot.used.saturating_sub(1)
                };
            }
        }
    }

    fn remove_pending(&mut self, fleet_key: &str, match_key: &str) {
        if let Some(set) = self.pending.get_mut(fleet_key) {
            set.remove(match_key);
            if set.is_empty() {
                self.pending.remove(fleet_key);
            }
        }
    }
}

/// The result of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// A slot on this server is now held for the match.
    New(String),
    /// The match already held a slot there (an earlier attempt, or adopted from the
    /// server's report after a restart).
    Existing(String),
}

impl Reserved {
    pub fn server(&self) -> &str {
        match self {
            Reserved::New(s) | Reserved::Existing(s) => s,
        }
    }
}

pub struct AllocationView {
    inner: Mutex<Inner>,
    /// Held while a fleet's servers are read (outside `inner`: reservations go on with
    /// the previous read meanwhile, and one reader at a time is enough).
    reading: Mutex<()>,
    source: Box<dyn ServerSource>,
    /// How old a fleet's server list may be before it is read again.
    refresh: Duration,
    /// How long a server that refused a session is skipped.
    refusal_hold: Duration,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl AllocationView {
    pub fn new(source: Box<dyn ServerSource>, refresh: Duration, refusal_hold: Duration) -> Self {
        AllocationView {
            inner: Mutex::default(),
            reading: Mutex::default(),
            source,
            refresh,
            refusal_hold,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("allocation view lock")
    }

    /// Reads the fleet's servers again when its snapshot is older than `refresh`. The
    /// read runs outside the view's lock; a caller that finds another read in progress
    /// goes on with the snapshot there is, unless there is none yet.
    fn refresh(&self, namespace: &str, fleet: &str, fleet_key: &str) {
        let state = {
            let inner = self.lock();
            inner
                .snapshots
                .get(fleet_key)
                .map(|s| s.at.elapsed() >= self.refresh)
        };
        // The read lock guards no data: a reader that panicked leaves nothing half
        // done, so a poisoned lock is taken as it is (else no fleet is read again).
        let reading = match state {
            Some(false) => return,
            Some(true) => match self.reading.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            },
            None => self.reading.lock().unwrap_or_else(PoisonError::into_inner),
        };
        // Another caller may have read it while this one waited.
        let fresh = self
            .lock()
            .snapshots
            .get(fleet_key)
            .is_some_and(|s| s.at.elapsed() < self.refresh);
        if !fresh {
            let servers = self.source.servers(namespace, fleet);
            let mut inner = self.lock();
            let snapshot = Snapshot::new(servers, &inner.on_server);
            inner.snapshots.insert(fleet_key.to_owned(), snapshot);
        }
        drop(reading);
    }

    /// Holds a slot for `namespace/name` on a server of `fleet`, or `None` when no server
    /// has room (the match is then counted as pending for the fleet).
    pub fn reserve(
        &self,
        namespace: &str,
        name: &str,
        fleet: &str,
        strategy: Strategy,
    ) -> Option<Reserved> {
        let match_key = key(namespace, name);
        let fleet_key = key(namespace, fleet);
        if let Some(server) = self.lock().assigned.get(&match_key) {
            return Some(Reserved::Existing(server.clone()));
        }
        self.refresh(namespace, fleet, &fleet_key);
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(server) = inner.assigned.get(&match_key) {
            return Some(Reserved::Existing(server.clone()));
        }
        inner.refused_until.retain(|_, until| *until > now);
        let snapshot = &inner.snapshots[&fleet_key];

        // A server already hosting this match (allocated by a previous process): adopt it.
        if let Some(i) = snapshot.hosting(name) {
            let server = snapshot.servers[i].key.clone();
            inner.assign(&match_key, name, &server);
            inner.remove_pending(&fleet_key, &match_key);
            return Some(Reserved::Existing(server));
        }

        let refused = &inner.refused_until;
        let picked = allocation::pick_where(&snapshot.slots, strategy, |i| {
            refused.is_empty() || !refused.contains_key(&snapshot.servers[i].key)
        });
        match picked {
            Some(i) => {
                let server = snapshot.servers[i].key.clone();
                inner.assign(&match_key, name, &server);
                inner.remove_pending(&fleet_key, &match_key);
                Some(Reserved::New(server))
            }
            None => {
                inner
                    .pending
                    .entry(fleet_key)
                    .or_default()
                    .insert(match_key);
                None
            }
        }
    }

    /// Gives the match's slot back (the session call failed, the match ended or is gone).
    pub fn release(&self, namespace: &str, name: &str) {
        let match_key = key(namespace, name);
        let mut inner = self.lock();
        inner.unassign(&match_key, name);
        for set in inner.pending.values_mut() {
            set.remove(&match_key);
        }
    }

    /// A server refused a session: skip it for a while, whatever its last report said.
    pub fn refused(&self, server: &str) {
        let until = Instant::now() + self.refusal_hold;
        self.lock().refused_until.insert(server.to_owned(), until);
    }

    /// Records what a Match's status says: a slot held on its server (rebuild after a
    /// restart, or a status written by another replica), or none when it is over.
    pub fn observe(&self, namespace: &str, name: &str, server: Option<&str>, holds_slot: bool) {
        if let (true, Some(server)) = (holds_slot, server) {
            let match_key = key(namespace, name);
            let mut inner = self.lock();
            inner.assign(&match_key, name, &key(namespace, server));
            for set in inner.pending.values_mut() {
                set.remove(&match_key);
            }
        } else if !holds_slot && server.is_some() {
            self.release(namespace, name);
        }
    }

    /// Forgets matches that no longer exist (deleted while holding a slot: their
    /// sessions still count through the servers' reports until they end).
    pub fn retain(&self, live: &HashSet<String>) {
        let mut inner = self.lock();
        let gone: Vec<String> = inner
            .assigned
            .keys()
            .filter(|m| !live.contains(*m))
            .cloned()
            .collect();
        for m in gone {
            let name = m.split_once('/').map_or(m.as_str(), |(_, n)| n).to_owned();
            inner.unassign(&m, &name);
        }
        for set in inner.pending.values_mut() {
            set.retain(|m| live.contains(m));
        }
        inner.pending.retain(|_, set| !set.is_empty());
    }

    /// Matches of `namespace/fleet` waiting for room: what fleet scaling adds to demand.
    pub fn pending(&self, namespace: &str, fleet: &str) -> u32 {
        self.lock()
            .pending
            .get(&key(namespace, fleet))
            .map_or(0, |s| s.len() as u32)
    }

    /// Pending counts of every fleet with any.
    pub fn pending_by_fleet(&self) -> Vec<(String, u32)> {
        self.lock()
            .pending
            .iter()
            .map(|(f, s)| (f.clone(), s.len() as u32))
            .collect()
    }

    /// Every server holding matches, with their names.
    pub fn assignments_by_server(&self) -> Vec<(String, Vec<String>)> {
        self.lock()
            .on_server
            .iter()
            .map(|(s, names)| (s.clone(), names.iter().cloned().collect()))
            .collect()
    }

    /// Whether a match holds a slot on `server` (`namespace/pod`): reserved, allocated,
    /// or not yet seen ended.
    pub fn holds_match(&self, server: &str) -> bool {
        self.lock().on_server.contains_key(server)
    }

    /// Every match holding a slot, with its server key.
    pub fn assignments(&self) -> Vec<(String, String)> {
        self.lock()
            .assigned
            .iter()
            .map(|(m, s)| (m.clone(), s.clone()))
            .collect()
    }

    /// Slots in use on a server, as the next reservation would count them.
    pub fn used(&self, namespace: &str, fleet: &str, server: &str) -> Option<u32> {
        let inner = self.lock();
        let snapshot = inner.snapshots.get(&key(namespace, fleet))?;
        let i = *snapshot.index.get(server)?;
        Some(snapshot.slots[i].used)
    }
}

/// Slots in use: sessions not made for matches, plus the union of the matches assigned
/// here and those the report lists live.
fn used(other_sessions: u32, live: &[&str], assigned: Option<&HashSet<String>>) -> u32 {
    let reported = live
        .iter()
        .filter(|m| assigned.is_none_or(|a| !a.contains(**m)))
        .count() as u32;
    other_sessions + reported + assigned.map_or(0, |a| a.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Default, Clone)]
    struct Fixed(Arc<Mutex<Vec<ServerInfo>>>);

    impl ServerSource for Fixed {
        fn servers(&self, _: &str, _: &str) -> Vec<ServerInfo> {
            self.0.lock().unwrap().clone()
        }
    }

    fn server(name: &str, capacity: u32) -> ServerInfo {
        ServerInfo {
            key: format!("ns/{name}"),
            name: name.into(),
            ready: true,
            capacity,
            ..Default::default()
        }
    }

    fn view(servers: Vec<ServerInfo>) -> (AllocationView, Fixed) {
        let source = Fixed(Arc::new(Mutex::new(servers)));
        let view = AllocationView::new(
            Box::new(source.clone()),
            Duration::ZERO,
            Duration::from_secs(60),
        );
        (view, source)
    }

    #[test]
    fn reservations_never_exceed_capacity_and_count_as_pending_when_full() {
        let (v, _) = view(vec![server("a", 2), server("b", 1)]);
        let got: Vec<_> = (0..4)
            .map(|i| v.reserve("ns", &format!("m{i}"), "f", Strategy::Packed))
            .collect();
        assert_eq!(got[0], Some(Reserved::New("ns/a".into())));
        assert_eq!(got[1], Some(Reserved::New("ns/a".into())));
        assert_eq!(got[2], Some(Reserved::New("ns/b".into())));
        assert_eq!(got[3], None);
        assert_eq!(v.pending("ns", "f"), 1);
        // Asking again for a held match returns its slot, not a second one.
        assert_eq!(
            v.reserve("ns", "m0", "f", Strategy::Packed),
            Some(Reserved::Existing("ns/a".into()))
        );
        v.release("ns", "m1");
        assert_eq!(
            v.reserve("ns", "m3", "f", Strategy::Packed),
            Some(Reserved::New("ns/a".into()))
        );
        assert_eq!(v.pending("ns", "f"), 0);
    }

    fn report(live: &[&str], finished: &[&str]) -> Option<Arc<LoadReport>> {
        use tanks_core::protocol::control::{FinishedSession, MatchSession};
        Some(Arc::new(LoadReport {
            matches: live
                .iter()
                .map(|m| MatchSession {
                    match_id: (*m).into(),
                    session_id: format!("s-{m}"),
                    players: 1,
                    created_at: 0,
                })
                .collect(),
            finished: finished
                .iter()
                .map(|m| FinishedSession {
                    match_id: (*m).into(),
                    session_id: format!("s-{m}"),
                    finished_at: 0,
                    reason: "completed".into(),
                })
                .collect(),
            ..Default::default()
        }))
    }

    #[test]
    fn reports_and_reservations_are_counted_once() {
        let mut a = server("a", 3);
        a.report = report(&["m0", "other"], &["other"]);
        a.other_sessions = 1;
        let (v, _) = view(vec![a]);
        v.observe("ns", "m0", Some("a"), true);
        // 1 other + m0 (reported and assigned: once) = 2 of 3: room for one more.
        assert!(v.reserve("ns", "m1", "f", Strategy::Packed).is_some());
        assert_eq!(v.used("ns", "f", "ns/a"), Some(3));
        assert_eq!(v.reserve("ns", "m2", "f", Strategy::Packed), None);
    }

    #[test]
    fn a_restart_adopts_the_server_that_already_hosts_the_match() {
        let mut a = server("a", 4);
        let b = server("b", 4);
        a.report = report(&["m-lost"], &[]);
        let (v, _) = view(vec![b, a]);
        // Distributed would choose the empty b; the report says a already has it.
        assert_eq!(
            v.reserve("ns", "m-lost", "f", Strategy::Distributed),
            Some(Reserved::Existing("ns/a".into()))
        );
    }

    #[test]
    fn refused_draining_and_unready_servers_are_skipped() {
        let mut b = server("b", 4);
        b.draining = true;
        let mut c = server("c", 4);
        c.ready = false;
        let (v, _) = view(vec![server("a", 4), b, c]);
        v.refused("ns/a");
        assert_eq!(v.reserve("ns", "m", "f", Strategy::Packed), None);
    }

    #[test]
    fn observed_statuses_rebuild_the_view_and_terminal_ones_release() {
        let (v, _) = view(vec![server("a", 1)]);
        v.observe("ns", "old", Some("a"), true);
        assert_eq!(v.reserve("ns", "new", "f", Strategy::Packed), None);
        v.observe("ns", "old", Some("a"), false);
        assert!(v.reserve("ns", "new", "f", Strategy::Packed).is_some());
        v.retain(&HashSet::new());
        assert!(v.assignments().is_empty());
    }

    #[test]
    fn concurrent_reservations_never_overfill() {
        let servers: Vec<ServerInfo> = (0..10).map(|i| server(&format!("s{i}"), 5)).collect();
        let (v, _) = view(servers);
        let v = Arc::new(v);
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let v = v.clone();
                std::thread::spawn(move || {
                    (0..20)
                        .filter(|i| {
                            v.reserve("ns", &format!("m{t}-{i}"), "f", Strategy::Distributed)
                                .is_some()
                        })
                        .count()
                })
            })
            .collect();
        let placed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(placed, 50);
        let mut per: HashMap<String, u32> = HashMap::new();
        for (_, s) in v.assignments() {
            *per.entry(s).or_default() += 1;
        }
        assert!(per.values().all(|n| *n == 5), "{per:?}");
        assert_eq!(v.pending("ns", "f"), 110);
    }
}
