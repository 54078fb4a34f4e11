//! How many servers a fleet needs, and when a lower number may take effect.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The free-slot buffer a fleet keeps for new sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    Slots(u32),
    /// Free slots as a percentage (0..=90) of the fleet's capacity.
    Percent(u32),
}

/// The scaling half of a fleet's spec, in plain numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingPolicy {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// `spec.replicas` (the scale subresource): a floor.
    pub floor: Option<u32>,
    pub buffer: Buffer,
    pub sessions_per_server: u32,
    pub scale_to_zero: bool,
}

/// What the fleet carries right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Sessions on servers that stay (not draining, not lost).
    pub sessions: u32,
    /// Servers that stay and host at least one session: they cannot be removed.
    pub busy_servers: u32,
    /// Sessions asked for but not placed yet (pending Matches, issue 7).
    pub pending_sessions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recommendation {
    pub replicas: u32,
    pub reason: String,
}

/// The replicas the buffer policy asks for, before stabilization.
pub fn recommend(policy: &ScalingPolicy, load: Load) -> Recommendation {
    let per_server = policy.sessions_per_server.max(1);
    let used = load.sessions + load.pending_sessions;
    let idle = used == 0;
    let (mut replicas, mut reason) = if idle && policy.scale_to_zero {
        (0, "idle fleet scales to zero".to_owned())
    } else {
        match policy.buffer {
            Buffer::Slots(free) => {
                let slots = used + free;
                let n = slots.div_ceil(per_server);
                (
                    n,
                    format!(
                        "{used} sessions in use + {free} free slots = {n} servers of {per_server}"
                    ),
                )
            }
            Buffer::Percent(pct) => {
                let pct = pct.min(90);
                // free >= pct% of capacity  <=>  capacity >= used * 100 / (100 - pct)
                let slots = (u64::from(used) * 100).div_ceil(u64::from(100 - pct));
                let n = (slots as u32).div_ceil(per_server).max(u32::from(pct > 0));
                (
                    n,
                    format!(
                        "{used} sessions in use with {pct}% free = {n} servers of {per_server}"
                    ),
                )
            }
        }
    };
    if load.busy_servers > replicas {
        replicas = load.busy_servers;
        reason = format!("{replicas} servers host sessions");
    }
    if let Some(floor) = policy.floor.filter(|f| *f > replicas) {
        replicas = floor;
        reason = format!("spec.replicas {floor}");
    }
    if policy.min_replicas > replicas {
        replicas = policy.min_replicas;
        reason = format!("minReplicas {replicas}");
    }
    if replicas > policy.max_replicas {
        replicas = policy.max_replicas;
        reason = format!("maxReplicas {replicas} ({reason})");
    }
    Recommendation { replicas, reason }
}

/// Scale-down stabilization: the fleet goes down only to the highest recommendation
/// seen during the window, so a load that wobbles around a boundary changes nothing,
/// and scale-up takes effect at once.
#[derive(Debug, Default)]
pub struct Stabilizer {
    history: VecDeque<(Instant, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stabilized {
    pub replicas: u32,
    /// Set when a lower recommendation is being held back: when to look again.
    pub recheck_in: Option<Duration>,
}

impl Stabilizer {
    /// Records `recommended` at `now` and returns the replicas to run. `current` seeds a
    /// fresh stabilizer (after an operator restart) so it waits a whole window before
    /// going below what runs today.
    pub fn stabilize(
        &mut self,
        now: Instant,
        recommended: u32,
        current: u32,
        window: Duration,
    ) -> Stabilized {
        if self.history.is_empty() {
            self.history.push_back((now, current));
        }
        self.history.push_back((now, recommended));
        while let Some(&(at, _)) = self.history.front() {
            if now.saturating_duration_since(at) > window && self.history.len() > 1 {
                self.history.pop_front();
            } else {
                break;
            }
        }
        let held = self
            .history
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(recommended);
        if held <= recommended {
            return Stabilized {
                replicas: recommended,
                recheck_in: None,
            };
        }
        // The oldest entry at the held value decides when the hold may end.
        let oldest_high = self
            .history
            .iter()
            .find(|(_, r)| *r == held)
            .map(|(at, _)| *at)
            .unwrap_or(now);
        let expires = (oldest_high + window).saturating_duration_since(now);
        Stabilized {
            replicas: held,
            recheck_in: Some(expires + Duration::from_millis(100)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(buffer: Buffer) -> ScalingPolicy {
        ScalingPolicy {
            min_replicas: 0,
            max_replicas: 100,
            floor: None,
            buffer,
            sessions_per_server: 4,
            scale_to_zero: false,
        }
    }

    fn load(sessions: u32, busy: u32) -> Load {
        Load {
            sessions,
            busy_servers: busy,
            pending_sessions: 0,
        }
    }

    #[test]
    fn table_of_recommendations() {
        // (buffer, sessions, busy servers, expected replicas)
        let cases = [
            (Buffer::Slots(0), 0, 0, 0),
            (Buffer::Slots(4), 0, 0, 1),
            (Buffer::Slots(4), 1, 1, 2),
            (Buffer::Slots(8), 10, 4, 5),
            (Buffer::Slots(0), 3, 3, 3), // imperfect packing: busy servers stay
            (Buffer::Percent(50), 8, 2, 4),
            (Buffer::Percent(20), 0, 0, 1),
            (Buffer::Percent(0), 0, 0, 0),
            (Buffer::Slots(1000), 0, 0, 100), // clamped to max
        ];
        for (buffer, sessions, busy, want) in cases {
            let got = recommend(&policy(buffer), load(sessions, busy));
            assert_eq!(
                got.replicas, want,
                "{buffer:?} {sessions} {busy}: {}",
                got.reason
            );
        }
    }

    #[test]
    fn floor_min_and_zero() {
        let mut p = policy(Buffer::Slots(4));
        p.floor = Some(7);
        assert_eq!(recommend(&p, load(0, 0)).replicas, 7);
        p.floor = None;
        p.min_replicas = 3;
        assert_eq!(recommend(&p, load(0, 0)).reason, "minReplicas 3");
        let mut z = policy(Buffer::Slots(4));
        z.scale_to_zero = true;
        assert_eq!(recommend(&z, load(0, 0)).replicas, 0);
        let pending = Load {
            sessions: 0,
            busy_servers: 0,
            pending_sessions: 1,
        };
        assert_eq!(
            recommend(&z, pending).replicas,
            2,
            "pending demand wakes a zero fleet"
        );
    }

    #[test]
    fn scale_up_is_immediate_and_scale_down_waits_for_the_window() {
        let window = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut s = Stabilizer::default();
        assert_eq!(s.stabilize(t0, 5, 2, window).replicas, 5);
        let held = s.stabilize(t0 + Duration::from_secs(10), 3, 5, window);
        assert_eq!(held.replicas, 5);
        assert!(held.recheck_in.unwrap() <= Duration::from_secs(51));
        assert_eq!(
            s.stabilize(t0 + Duration::from_secs(61), 3, 5, window)
                .replicas,
            3
        );
    }

    #[test]
    fn a_restarted_operator_waits_a_window_before_scaling_down() {
        let window = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut s = Stabilizer::default();
        assert_eq!(s.stabilize(t0, 1, 4, window).replicas, 4);
        assert_eq!(
            s.stabilize(t0 + Duration::from_secs(31), 1, 4, window)
                .replicas,
            1
        );
    }

    #[test]
    fn a_wobbling_load_does_not_oscillate() {
        let window = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut s = Stabilizer::default();
        let mut current = 4;
        let mut changes = 0;
        for i in 0..600u64 {
            // The recommendation flips between 4 and 3 every 5 s.
            let rec = if (i / 5) % 2 == 0 { 4 } else { 3 };
            let next = s
                .stabilize(t0 + Duration::from_secs(i), rec, current, window)
                .replicas;
            if next != current {
                changes += 1;
                current = next;
            }
        }
        assert_eq!(changes, 0);
    }
}
