//! The game's rules for one tank: movement within the map at a bounded speed, shots
//! limited by a cooldown and ammunition, damage, destruction and respawn.
//!
//! Time is counted in ticks, not wall-clock, so the rules are deterministic and the
//! unit tests need no clock.

/// Tunables of the simulation. Durations are in ticks of the session's tick rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub tick_rate: u32,
    pub map_width: f64,
    pub map_height: f64,
    /// Units per second a tank may travel.
    pub max_speed: f64,
    pub max_health: i32,
    pub damage: i32,
    pub max_ammo: u32,
    /// One shell comes back every this many ticks.
    pub ammo_regen_ticks: u64,
    pub shot_cooldown_ticks: u64,
    pub shot_range: f64,
    pub respawn_ticks: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Self::for_tick_rate(30)
    }
}

impl Rules {
    pub fn for_tick_rate(tick_rate: u32) -> Self {
        let ticks = |seconds: f64| (seconds * f64::from(tick_rate)).round().max(1.0) as u64;
        Self {
            tick_rate,
            map_width: 1000.0,
            map_height: 1000.0,
            max_speed: 150.0,
            max_health: 100,
            damage: 25,
            max_ammo: 10,
            ammo_regen_ticks: ticks(2.0),
            shot_cooldown_ticks: ticks(0.5),
            shot_range: 400.0,
            respawn_ticks: ticks(3.0),
        }
    }

    /// Farthest a tank may travel in one tick. Twice the nominal step: a client's
    /// inputs arrive with jitter, and one that missed a tick may catch up in the next,
    /// but a teleport is still clamped.
    pub fn max_step(&self) -> f64 {
        2.0 * self.max_speed / f64::from(self.tick_rate.max(1))
    }

    pub fn clamp_to_map(&self, p: [f64; 2]) -> [f64; 2] {
        [
            p[0].clamp(0.0, self.map_width),
            p[1].clamp(0.0, self.map_height),
        ]
    }
}

/// Positions are kept to 1/100 of a unit: plenty for the game, and snapshots stay
/// short (`123.45`, not `123.45000000000002`).
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShotRefused {
    Destroyed,
    Cooldown,
    NoAmmo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub health: i32,
    pub destroyed: bool,
}

/// One tank. Lives in the [`crate::pool::TankPool`]; `reset` makes it as new.
#[derive(Debug, Clone)]
pub struct Tank {
    id: String,
    pub position: [f64; 2],
    pub health: i32,
    pub ammo: u32,
    pub team: u8,
    pub alive: bool,
    next_shot_tick: u64,
    next_ammo_tick: u64,
    respawn_tick: Option<u64>,
    pub kills: u32,
    pub deaths: u32,
}

impl Tank {
    pub fn new(id: String, rules: &Rules) -> Self {
        Self {
            id,
            position: [0.0, 0.0],
            health: rules.max_health,
            ammo: rules.max_ammo,
            team: 0,
            alive: true,
            next_shot_tick: 0,
            next_ammo_tick: 0,
            respawn_tick: None,
            kills: 0,
            deaths: 0,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Back to the state of a fresh tank; the id stays.
    pub fn reset(&mut self, rules: &Rules) {
        let id = std::mem::take(&mut self.id);
        *self = Tank::new(id, rules);
    }

    /// Places the tank, full health and ammunition.
    pub fn spawn(&mut self, at: [f64; 2], now: u64, rules: &Rules) {
        self.position = rules.clamp_to_map([round2(at[0]), round2(at[1])]);
        self.health = rules.max_health;
        self.ammo = rules.max_ammo;
        self.alive = true;
        self.respawn_tick = None;
        self.next_shot_tick = now;
        self.next_ammo_tick = now + rules.ammo_regen_ticks;
    }

    /// Moves toward `target`, at most [`Rules::max_step`], inside the map. Returns
    /// whether the position changed. A destroyed tank does not move.
    pub fn move_toward(&mut self, target: [f64; 2], rules: &Rules) -> bool {
        if !self.alive {
            return false;
        }
        let target = rules.clamp_to_map(target);
        let (dx, dy) = (target[0] - self.position[0], target[1] - self.position[1]);
        let distance = dx.hypot(dy);
        let max = rules.max_step();
        let next = if distance <= max {
            target
        } else {
            let k = max / distance;
            [self.position[0] + dx * k, self.position[1] + dy * k]
        };
        let next = rules.clamp_to_map([round2(next[0]), round2(next[1])]);
        let moved = next != self.position;
        self.position = next;
        moved
    }

    /// Spends a shell if the cooldown has passed and one is left.
    pub fn shoot(&mut self, now: u64, rules: &Rules) -> Result<(), ShotRefused> {
        if !self.alive {
            return Err(ShotRefused::Destroyed);
        }
        if now < self.next_shot_tick {
            return Err(ShotRefused::Cooldown);
        }
        if self.ammo == 0 {
            return Err(ShotRefused::NoAmmo);
        }
        if self.ammo == rules.max_ammo {
            // Regeneration starts counting from the first shell spent.
            self.next_ammo_tick = now + rules.ammo_regen_ticks;
        }
        self.ammo -= 1;
        self.next_shot_tick = now + rules.shot_cooldown_ticks;
        Ok(())
    }

    /// Loses health; at zero the tank is destroyed and, when `respawn` is set, comes
    /// back after [`Rules::respawn_ticks`].
    pub fn take_damage(&mut self, amount: i32, now: u64, respawn: bool, rules: &Rules) -> Damage {
        if !self.alive {
            return Damage {
                health: self.health,
                destroyed: false,
            };
        }
        self.health = (self.health - amount.max(0)).max(0);
        let destroyed = self.health == 0;
        if destroyed {
            self.alive = false;
            self.deaths += 1;
            self.respawn_tick = respawn.then_some(now + rules.respawn_ticks);
        }
        Damage {
            health: self.health,
            destroyed,
        }
    }

    /// Ammunition comes back over time. Returns true when the tank is due to respawn.
    pub fn regenerate(&mut self, now: u64, rules: &Rules) -> bool {
        if self.alive && self.ammo < rules.max_ammo && now >= self.next_ammo_tick {
            self.ammo += 1;
            self.next_ammo_tick = now + rules.ammo_regen_ticks;
        }
        self.respawn_tick.is_some_and(|t| now >= t)
    }

    pub fn distance_to(&self, other: &Tank) -> f64 {
        (self.position[0] - other.position[0]).hypot(self.position[1] - other.position[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tank() -> (Tank, Rules) {
        let rules = Rules::default();
        let mut tank = Tank::new("tank_0".into(), &rules);
        tank.spawn([100.0, 100.0], 0, &rules);
        (tank, rules)
    }

    #[test]
    fn a_small_move_lands_exactly() {
        let (mut tank, rules) = tank();
        assert!(tank.move_toward([103.0, 104.0], &rules));
        assert_eq!(tank.position, [103.0, 104.0]);
        assert!(
            !tank.move_toward([103.0, 104.0], &rules),
            "no change is no move"
        );
    }

    #[test]
    fn a_teleport_is_clamped_to_the_maximum_speed() {
        let (mut tank, rules) = tank();
        tank.move_toward([900.0, 100.0], &rules);
        assert_eq!(
            tank.position,
            [110.0, 100.0],
            "2 * 150 / 30 = 10 units per tick"
        );
    }

    #[test]
    fn moves_stay_inside_the_map() {
        let (mut tank, rules) = tank();
        tank.spawn([2.0, 999.0], 0, &rules);
        tank.move_toward([-50.0, 1200.0], &rules);
        assert_eq!(tank.position, [0.0, 1000.0]);
    }

    #[test]
    fn shots_need_the_cooldown_and_ammo() {
        let (mut tank, rules) = tank();
        assert_eq!(tank.shoot(0, &rules), Ok(()));
        assert_eq!(tank.shoot(1, &rules), Err(ShotRefused::Cooldown));
        let mut now = rules.shot_cooldown_ticks;
        for _ in 1..rules.max_ammo {
            assert_eq!(tank.shoot(now, &rules), Ok(()));
            now += rules.shot_cooldown_ticks;
        }
        assert_eq!(tank.ammo, 0);
        assert_eq!(tank.shoot(now, &rules), Err(ShotRefused::NoAmmo));
    }

    #[test]
    fn ammunition_regenerates() {
        let (mut tank, rules) = tank();
        tank.shoot(0, &rules).unwrap();
        assert_eq!(tank.ammo, rules.max_ammo - 1);
        tank.regenerate(rules.ammo_regen_ticks - 1, &rules);
        assert_eq!(tank.ammo, rules.max_ammo - 1);
        tank.regenerate(rules.ammo_regen_ticks, &rules);
        assert_eq!(tank.ammo, rules.max_ammo);
    }

    #[test]
    fn damage_destroys_and_respawn_comes_due() {
        let (mut tank, rules) = tank();
        for expected in [75, 50, 25] {
            assert_eq!(
                tank.take_damage(25, 10, true, &rules),
                Damage {
                    health: expected,
                    destroyed: false
                }
            );
        }
        assert_eq!(
            tank.take_damage(25, 10, true, &rules),
            Damage {
                health: 0,
                destroyed: true
            }
        );
        assert!(!tank.alive);
        assert!(
            !tank.take_damage(25, 11, true, &rules).destroyed,
            "destroyed only once"
        );
        assert!(!tank.move_toward([0.0, 0.0], &rules), "wrecks do not move");
        assert_eq!(tank.shoot(100, &rules), Err(ShotRefused::Destroyed));
        assert!(!tank.regenerate(10 + rules.respawn_ticks - 1, &rules));
        assert!(tank.regenerate(10 + rules.respawn_ticks, &rules));
    }

    #[test]
    fn without_respawn_a_wreck_stays() {
        let (mut tank, rules) = tank();
        tank.take_damage(1000, 5, false, &rules);
        assert!(!tank.regenerate(10_000, &rules));
    }

    #[test]
    fn reset_gives_a_fresh_tank_with_the_same_id() {
        let (mut tank, rules) = tank();
        tank.take_damage(1000, 5, true, &rules);
        tank.team = 1;
        tank.reset(&rules);
        assert_eq!(tank.id(), "tank_0");
        assert!(tank.alive);
        assert_eq!(
            (tank.health, tank.ammo, tank.team, tank.deaths),
            (100, 10, 0, 0)
        );
    }
}
