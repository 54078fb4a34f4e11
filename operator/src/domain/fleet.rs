//! What to do with a fleet's servers: create, drain, delete, mark evictable.
//!
//! The rules that matter most live here, without Kubernetes, so they are tested as
//! plain data: a server with a live session is never deleted; old servers go only as
//! fast as `maxUnavailable` allows and new ones come only as fast as `maxSurge` allows.

use std::collections::HashMap;
use std::time::Duration;

/// A server's life as the fleet sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerState {
    /// Created, has not reported yet (within the startup timeout).
    Starting,
    /// Reports ready and accepts sessions.
    Ready,
    /// Reports, but not ready (booting, or unhealthy by its own account).
    Unready,
    /// Accepts no new session; leaves once empty.
    Draining,
    /// Stopped reporting, or never did within the startup timeout.
    Lost,
    /// The pod failed, was evicted or completed.
    Failed,
    /// Being deleted.
    Terminating,
}

/// What is known about one server's pod and its reports, for [`classify`].
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub terminating: bool,
    /// Pod phase `Failed` or `Succeeded` (an evicted pod is `Failed`).
    pub failed: bool,
    /// Since the pod was created.
    pub age: Duration,
    /// Since the pod started running, when it is running.
    pub running_for: Option<Duration>,
    /// The last report, with its age.
    pub report: Option<ReportView>,
    /// Since the last failed poll, when polls fail now.
    pub failing_for: Option<Duration>,
    /// The operator told it to drain (it may not have reported that yet).
    pub drain_requested: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ReportView {
    pub sessions: u32,
    pub players: u32,
    pub ready: bool,
    pub draining: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthPolicy {
    pub startup_timeout: Duration,
    pub unresponsive: Duration,
}

pub fn classify(o: &Observation, health: &HealthPolicy) -> ServerState {
    if o.terminating {
        return ServerState::Terminating;
    }
    if o.failed {
        return ServerState::Failed;
    }
    match o.report {
        None => {
            let waited = o.running_for.unwrap_or_default();
            if waited > health.startup_timeout {
                ServerState::Lost
            } else {
                ServerState::Starting
            }
        }
        Some(r) => {
            if o.failing_for.is_some_and(|f| f > health.unresponsive) {
                ServerState::Lost
            } else if r.draining || o.drain_requested {
                ServerState::Draining
            } else if r.ready {
                ServerState::Ready
            } else {
                ServerState::Unready
            }
        }
    }
}

/// One server, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub name: String,
    pub node: Option<String>,
    /// Runs the fleet's current template.
    pub current: bool,
    pub state: ServerState,
    /// From the last report (0 when none).
    pub sessions: u32,
    pub players: u32,
    /// The value of its safe-to-evict annotation now.
    pub evictable: Option<bool>,
    /// A match has been allocated on it that its last report may not list yet: not
    /// evictable, whatever the report says.
    pub holds_match: bool,
}

impl Server {
    fn busy(&self) -> bool {
        self.sessions > 0
    }

    /// Counts toward the fleet's replicas: it stays and will take sessions.
    pub fn stays(&self) -> bool {
        matches!(
            self.state,
            ServerState::Starting | ServerState::Ready | ServerState::Unready
        )
    }
}

/// The rollout half of a fleet's spec, in plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountOrPercent {
    Count(u32),
    Percent(u32),
}

impl CountOrPercent {
    /// Resolves against `total`, rounding up (surge) or down (unavailable).
    pub fn resolve(self, total: u32, round_up: bool) -> u32 {
        match self {
            CountOrPercent::Count(n) => n,
            CountOrPercent::Percent(p) => {
                let scaled = u64::from(total) * u64::from(p);
                (if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                }) as u32
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Packed,
    Distributed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutPolicy {
    pub max_surge: CountOrPercent,
    pub max_unavailable: CountOrPercent,
}

/// Why a server is removed; used in Events and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoveReason {
    Failed,
    Lost,
    ScaleDown,
    Outdated,
    Drained,
}

impl RemoveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoveReason::Failed => "failed",
            RemoveReason::Lost => "lost",
            RemoveReason::ScaleDown => "scale_down",
            RemoveReason::Outdated => "outdated",
            RemoveReason::Drained => "drained",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub name: String,
    pub reason: RemoveReason,
    /// Tell it to drain first and delete only if it then reports no session: its last
    /// report may be seconds old and a session may have started since.
    pub drain_first: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New servers to create from the current template.
    pub create: u32,
    pub remove: Vec<Removal>,
    /// Busy servers to drain (they go once empty).
    pub drain: Vec<String>,
    /// Safe-to-evict annotations to change: (server, evictable).
    pub evictable: Vec<(String, bool)>,
    /// Busy servers that stopped reporting: kept (players may still be on them).
    pub lost_busy: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create == 0 && self.remove.is_empty() && self.drain.is_empty()
    }
}

/// Plans one reconcile of a fleet toward `target` servers of the current template.
pub fn plan(
    servers: &[Server],
    target: u32,
    rollout: &RolloutPolicy,
    placement: Placement,
) -> Plan {
    let mut plan = Plan::default();

    for s in servers {
        match s.state {
            ServerState::Failed => plan.remove.push(Removal {
                name: s.name.clone(),
                reason: RemoveReason::Failed,
                drain_first: false,
            }),
            ServerState::Lost if !s.busy() => plan.remove.push(Removal {
                name: s.name.clone(),
                reason: RemoveReason::Lost,
                drain_first: false,
            }),
            ServerState::Lost => plan.lost_busy.push(s.name.clone()),
            ServerState::Draining if !s.busy() => plan.remove.push(Removal {
                name: s.name.clone(),
                reason: RemoveReason::Drained,
                drain_first: false,
            }),
            _ => {}
        }
        if s.stays() || s.state == ServerState::Draining {
            let want = !s.busy() && !s.holds_match;
            if s.evictable != Some(want) {
                plan.evictable.push((s.name.clone(), want));
            }
        }
    }

    let per_node = servers_per_node(servers);
    let new_active: Vec<&Server> = servers.iter().filter(|s| s.current && s.stays()).collect();
    let old_active: Vec<&Server> = servers.iter().filter(|s| !s.current && s.stays()).collect();
    let new_count = new_active.len() as u32;
    let old_count = old_active.len() as u32;

    if old_active.is_empty() {
        if new_count < target {
            plan.create = target - new_count;
        } else if new_count > target {
            scale_down(
                &mut plan,
                &new_active,
                new_count - target,
                placement,
                &per_node,
            );
        }
        return plan;
    }

    // A rolling update is under way.
    let mut surge = rollout.max_surge.resolve(target, true);
    let unavailable = rollout.max_unavailable.resolve(target, false);
    if surge == 0 && unavailable == 0 {
        surge = 1;
    }
    let want_new = target.saturating_sub(new_count);
    let room = (target + surge).saturating_sub(new_count + old_count);
    plan.create = want_new.min(room);
    if new_count > target {
        scale_down(
            &mut plan,
            &new_active,
            new_count - target,
            placement,
            &per_node,
        );
    }

    let mut available = new_active
        .iter()
        .chain(old_active.iter())
        .filter(|s| s.state == ServerState::Ready)
        .count() as u32;
    let min_available = target.saturating_sub(unavailable);
    let mut old_sorted = old_active.clone();
    // Cheapest first: not ready (costs no availability), then empty, then fewest players.
    old_sorted.sort_by_key(|s| {
        (
            s.state == ServerState::Ready,
            s.busy(),
            s.players,
            s.name.clone(),
        )
    });
    // Old servers beyond what the target needs may go even when that dips availability
    // (the new ones carry the target), as in a Deployment.
    for s in old_sorted {
        let costs = s.state == ServerState::Ready;
        if costs && available <= min_available {
            break;
        }
        if costs {
            available -= 1;
        }
        if s.busy() {
            plan.drain.push(s.name.clone());
        } else {
            plan.remove.push(Removal {
                name: s.name.clone(),
                reason: RemoveReason::Outdated,
                drain_first: s.state != ServerState::Starting,
            });
        }
    }
    plan
}

fn servers_per_node(servers: &[Server]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for s in servers {
        if let Some(node) = s.node.as_deref() {
            *counts.entry(node).or_insert(0) += 1;
        }
    }
    counts
}

/// Removes up to `excess` empty servers: never a busy one. Not-ready servers first (they
/// carry nothing and cost no availability), then by node: the emptiest nodes first when
/// `Packed` (so whole nodes free up), the fullest first when `Distributed`.
fn scale_down(
    plan: &mut Plan,
    candidates: &[&Server],
    excess: u32,
    placement: Placement,
    per_node: &HashMap<&str, usize>,
) {
    let mut empty: Vec<&&Server> = candidates.iter().filter(|s| !s.busy()).collect();
    empty.sort_by_key(|s| {
        let on_node = s
            .node
            .as_deref()
            .and_then(|n| per_node.get(n))
            .copied()
            .unwrap_or(0);
        let node_rank = match placement {
            Placement::Packed => on_node as i64,
            Placement::Distributed => -(on_node as i64),
        };
        (s.state == ServerState::Ready, node_rank, s.name.clone())
    });
    for s in empty.into_iter().take(excess as usize) {
        plan.remove.push(Removal {
            name: s.name.clone(),
            reason: RemoveReason::ScaleDown,
            drain_first: s.state != ServerState::Starting,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fluent server builder: `srv("a").ready().sessions(2).old()`.
    fn srv(name: &str) -> Server {
        Server {
            name: name.into(),
            node: Some("n1".into()),
            current: true,
            state: ServerState::Ready,
            sessions: 0,
            players: 0,
            evictable: Some(true),
            holds_match: false,
        }
    }

    impl Server {
        fn sessions(mut self, n: u32) -> Self {
            self.sessions = n;
            self.players = n * 4;
            self.evictable = Some(n == 0);
            self
        }
        fn old(mut self) -> Self {
            self.current = false;
            self
        }
        fn state(mut self, s: ServerState) -> Self {
            self.state = s;
            self
        }
        fn node(mut self, n: &str) -> Self {
            self.node = Some(n.into());
            self
        }
    }

    const ROLL: RolloutPolicy = RolloutPolicy {
        max_surge: CountOrPercent::Count(1),
        max_unavailable: CountOrPercent::Count(0),
    };

    fn names(removals: &[Removal]) -> Vec<&str> {
        removals.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn creates_up_to_the_target() {
        let p = plan(&[srv("a")], 3, &ROLL, Placement::Packed);
        assert_eq!(p.create, 2);
        assert!(p.remove.is_empty());
    }

    #[test]
    fn scale_down_removes_only_empty_servers() {
        let servers = [
            srv("a").sessions(1),
            srv("b").sessions(3),
            srv("c"),
            srv("d"),
        ];
        let p = plan(&servers, 1, &ROLL, Placement::Packed);
        assert_eq!(names(&p.remove), ["c", "d"]);
        assert!(p.remove.iter().all(|r| r.drain_first));
    }

    #[test]
    fn scale_down_prefers_starting_servers_and_deletes_them_without_drain() {
        let servers = [srv("a"), srv("b").state(ServerState::Starting)];
        let p = plan(&servers, 1, &ROLL, Placement::Packed);
        assert_eq!(
            p.remove,
            [Removal {
                name: "b".into(),
                reason: RemoveReason::ScaleDown,
                drain_first: false
            }]
        );
    }

    #[test]
    fn packed_frees_the_emptiest_node_first_distributed_the_fullest() {
        let servers = [
            srv("a").node("big"),
            srv("b").node("big"),
            srv("c").node("small"),
        ];
        assert_eq!(
            names(&plan(&servers, 2, &ROLL, Placement::Packed).remove),
            ["c"]
        );
        assert_eq!(
            names(&plan(&servers, 2, &ROLL, Placement::Distributed).remove),
            ["a"]
        );
    }

    #[test]
    fn failed_and_lost_servers_are_replaced_but_lost_busy_ones_kept() {
        let servers = [
            srv("ok"),
            srv("f").state(ServerState::Failed),
            srv("l").state(ServerState::Lost),
            srv("lb").state(ServerState::Lost).sessions(2),
        ];
        let p = plan(&servers, 2, &ROLL, Placement::Packed);
        assert_eq!(names(&p.remove), ["f", "l"]);
        assert_eq!(p.lost_busy, ["lb"]);
        assert_eq!(p.create, 1);
    }

    #[test]
    fn rollout_surges_then_replaces_empty_and_drains_busy_old_servers() {
        let old = [srv("o1").old(), srv("o2").old().sessions(2)];
        // Step 1: room for one new server, nothing may go unavailable.
        let p = plan(&old, 2, &ROLL, Placement::Packed);
        assert_eq!((p.create, p.remove.len(), p.drain.len()), (1, 0, 0));
        // Step 2: the new one is ready: one old server may go, the empty one first.
        let step2 = [srv("o1").old(), srv("o2").old().sessions(2), srv("n1")];
        let p = plan(&step2, 2, &ROLL, Placement::Packed);
        assert_eq!(p.create, 0);
        assert_eq!(names(&p.remove), ["o1"]);
        assert!(p.drain.is_empty());
        // Step 3: second new server ready: the busy old one is drained, not deleted.
        let step3 = [srv("o2").old().sessions(2), srv("n1"), srv("n2")];
        let p = plan(&step3, 2, &ROLL, Placement::Packed);
        assert_eq!(p.drain, ["o2"]);
        assert!(p.remove.is_empty());
        // Step 4: drained and still busy: kept; once empty: deleted.
        let busy = [
            srv("o2").old().sessions(1).state(ServerState::Draining),
            srv("n1"),
            srv("n2"),
        ];
        assert!(plan(&busy, 2, &ROLL, Placement::Packed).is_empty());
        let empty = [
            srv("o2").old().state(ServerState::Draining),
            srv("n1"),
            srv("n2"),
        ];
        assert_eq!(
            plan(&empty, 2, &ROLL, Placement::Packed).remove[0].reason,
            RemoveReason::Drained
        );
    }

    #[test]
    fn a_busy_server_is_never_removed_whatever_the_plan() {
        // Every state, current or old, any target: busy servers never appear in `remove`.
        let states = [
            ServerState::Starting,
            ServerState::Ready,
            ServerState::Unready,
            ServerState::Draining,
            ServerState::Lost,
        ];
        for (i, state) in states.iter().enumerate() {
            for old in [false, true] {
                for target in 0..4 {
                    let mut s = srv(&format!("busy{i}")).sessions(1).state(*state);
                    if old {
                        s = s.old();
                    }
                    let p = plan(
                        &[s, srv("x"), srv("y").old()],
                        target,
                        &ROLL,
                        Placement::Packed,
                    );
                    assert!(
                        p.remove.iter().all(|r| !r.name.starts_with("busy")),
                        "{state:?} old={old} target={target}: {p:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn percentages_resolve_like_a_deployment() {
        assert_eq!(CountOrPercent::Percent(25).resolve(10, true), 3);
        assert_eq!(CountOrPercent::Percent(25).resolve(10, false), 2);
        let both_zero = RolloutPolicy {
            max_surge: CountOrPercent::Count(0),
            max_unavailable: CountOrPercent::Percent(0),
        };
        assert_eq!(
            plan(&[srv("o").old()], 1, &both_zero, Placement::Packed).create,
            1
        );
    }

    #[test]
    fn evictable_follows_sessions() {
        let mut s = srv("a").sessions(2);
        s.evictable = Some(true);
        let p = plan(&[s, srv("b")], 2, &ROLL, Placement::Packed);
        assert_eq!(p.evictable, [("a".to_owned(), false)]);
    }

    #[test]
    fn a_server_holding_a_match_its_report_misses_stays_not_evictable() {
        let mut s = srv("a");
        s.evictable = Some(false);
        s.holds_match = true;
        let p = plan(&[s.clone()], 1, &ROLL, Placement::Packed);
        assert!(p.evictable.is_empty(), "{:?}", p.evictable);
        s.holds_match = false;
        let p = plan(&[s], 1, &ROLL, Placement::Packed);
        assert_eq!(p.evictable, [("a".to_owned(), true)]);
    }

    #[test]
    fn classify_table() {
        let h = HealthPolicy {
            startup_timeout: Duration::from_secs(60),
            unresponsive: Duration::from_secs(10),
        };
        let report = |ready, draining| ReportView {
            sessions: 0,
            players: 0,
            ready,
            draining,
        };
        let cases: [(Observation, ServerState); 7] = [
            (Observation::default(), ServerState::Starting),
            (
                Observation {
                    running_for: Some(Duration::from_secs(61)),
                    ..Default::default()
                },
                ServerState::Lost,
            ),
            (
                Observation {
                    report: Some(report(true, false)),
                    ..Default::default()
                },
                ServerState::Ready,
            ),
            (
                Observation {
                    report: Some(report(false, false)),
                    ..Default::default()
                },
                ServerState::Unready,
            ),
            (
                Observation {
                    report: Some(report(true, true)),
                    ..Default::default()
                },
                ServerState::Draining,
            ),
            (
                Observation {
                    report: Some(report(true, false)),
                    failing_for: Some(Duration::from_secs(11)),
                    ..Default::default()
                },
                ServerState::Lost,
            ),
            (
                Observation {
                    failed: true,
                    ..Default::default()
                },
                ServerState::Failed,
            ),
        ];
        for (o, want) in cases {
            assert_eq!(classify(&o, &h), want, "{o:?}");
        }
    }
}
