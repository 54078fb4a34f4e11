//! One GameFleet reconcile's decision: from the classified servers and the demand to
//! the replicas to run and the plan that gets there. The reconciler observes before and
//! acts after; nothing here knows Kubernetes.

use std::time::{Duration, Instant};

use crate::domain::fleet::{
    self, HealthPolicy, Placement, Plan, RolloutPolicy, Server, ServerState,
};
use crate::domain::scaling::{self, Load, ScalingPolicy, Stabilizer};

/// A fleet's spec in plain numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetPolicy {
    pub scaling: ScalingPolicy,
    pub rollout: RolloutPolicy,
    pub health: HealthPolicy,
    pub placement: Placement,
    /// How long a lower recommendation must hold before the fleet shrinks.
    pub scale_down_delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The replicas to run now (after stabilization).
    pub target: u32,
    /// Why, in words, for the status and Events.
    pub reason: String,
    pub plan: Plan,
    /// The load asks for `maxReplicas` or more.
    pub at_max: bool,
    /// Some server runs an old template and is not going away yet.
    pub rolling: bool,
    /// A held scale-down may take effect after this long.
    pub recheck_in: Option<Duration>,
}

/// Decides for a fleet whose servers are `servers`, with `pending_sessions` sessions
/// asked for and not placed yet. `stabilizer` is the fleet's memory of recent
/// recommendations, updated here.
pub fn decide(
    servers: &[Server],
    pending_sessions: u32,
    policy: &FleetPolicy,
    stabilizer: &mut Stabilizer,
    now: Instant,
) -> Decision {
    let staying = || servers.iter().filter(|s| s.stays());
    let load = Load {
        sessions: staying().map(|s| s.sessions).sum(),
        busy_servers: staying().filter(|s| s.sessions > 0).count() as u32,
        pending_sessions,
    };
    let rec = scaling::recommend(&policy.scaling, load);
    let current = staying().filter(|s| s.current).count() as u32;
    let stable = stabilizer.stabilize(now, rec.replicas, current, policy.scale_down_delay);
    let target = stable.replicas;
    let reason = if target == rec.replicas {
        rec.reason
    } else {
        format!(
            "holding {target} for the scale-down delay (load asks {}: {})",
            rec.replicas, rec.reason
        )
    };
    let max = policy.scaling.max_replicas;
    Decision {
        target,
        reason,
        plan: fleet::plan(servers, target, &policy.rollout, policy.placement),
        at_max: rec.replicas >= max && max > 0,
        rolling: servers
            .iter()
            .any(|s| !s.current && s.state != ServerState::Terminating),
        recheck_in: stable.recheck_in,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fleet::CountOrPercent;
    use crate::domain::scaling::Buffer;

    fn policy() -> FleetPolicy {
        FleetPolicy {
            scaling: ScalingPolicy {
                min_replicas: 1,
                max_replicas: 4,
                floor: None,
                buffer: Buffer::Slots(0),
                sessions_per_server: 2,
                scale_to_zero: false,
            },
            rollout: RolloutPolicy {
                max_surge: CountOrPercent::Count(1),
                max_unavailable: CountOrPercent::Count(0),
            },
            health: HealthPolicy {
                startup_timeout: Duration::from_secs(60),
                unresponsive: Duration::from_secs(10),
            },
            placement: Placement::Packed,
            scale_down_delay: Duration::from_secs(60),
        }
    }

    fn server(name: &str, sessions: u32, state: ServerState) -> Server {
        Server {
            name: name.into(),
            node: None,
            current: true,
            state,
            sessions,
            players: 0,
            evictable: Some(sessions == 0),
            holds_match: false,
        }
    }

    #[test]
    fn pending_sessions_and_busy_servers_set_the_target() {
        let servers = [server("a", 2, ServerState::Ready)];
        let d = decide(
            &servers,
            3,
            &policy(),
            &mut Stabilizer::default(),
            Instant::now(),
        );
        // 2 in use + 3 pending = 5 sessions = 3 servers of 2.
        assert_eq!(d.target, 3);
        assert_eq!(d.plan.create, 2);
        assert!(!d.at_max && !d.rolling && d.recheck_in.is_none());
    }

    #[test]
    fn draining_servers_carry_no_demand_and_a_scale_down_is_held() {
        let mut stabilizer = Stabilizer::default();
        let now = Instant::now();
        let busy = [
            server("a", 2, ServerState::Ready),
            server("b", 2, ServerState::Ready),
        ];
        assert_eq!(decide(&busy, 0, &policy(), &mut stabilizer, now).target, 2);
        let emptied = [
            server("a", 0, ServerState::Ready),
            server("b", 2, ServerState::Draining),
        ];
        let d = decide(&emptied, 0, &policy(), &mut stabilizer, now);
        assert_eq!(d.target, 2, "held for the scale-down delay");
        assert!(d.reason.starts_with("holding 2"), "{}", d.reason);
        assert!(d.recheck_in.is_some());
    }

    #[test]
    fn at_max_and_rolling_are_reported() {
        let mut old = server("old", 0, ServerState::Ready);
        old.current = false;
        let d = decide(
            &[old],
            20,
            &policy(),
            &mut Stabilizer::default(),
            Instant::now(),
        );
        assert_eq!(d.target, 4);
        assert!(d.at_max);
        assert!(d.rolling);
    }
}
