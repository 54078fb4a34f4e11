//! The simulation, one tick at a time: every session's queued inputs applied in join
//! order, shots fired, ammunition and respawns, the end of a session by the rules, then
//! its snapshot. Deterministic given the inputs, so tests know where tanks are.

use std::borrow::Cow;

use tanks_core::events::{self, EventPublisher};
use tanks_core::protocol::game::kafka::GameEvent;

use super::{ManagerConfig, Mode, Session, SessionKey, SessionManager, kafka, wire};
use crate::outbox::Outbox;
use crate::pool::{TankIdx, TankPool};
use crate::rules::{Rules, ShotRefused};

/// What one tick did, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct StepStats {
    pub moves: usize,
    pub shots: usize,
    pub sessions_ended: usize,
}

impl SessionManager {
    /// Advances every session by one tick, and writes what to send into `out`.
    pub fn step(&mut self, out: &mut Outbox) -> StepStats {
        self.tick += 1;
        let now = self.tick;
        out.clear();
        let mut stats = StepStats::default();
        let mut ending = std::mem::take(&mut self.ending);
        ending.clear();
        let mut timed_out: Vec<(SessionKey, String)> = Vec::new();
        let publish_coordinates =
            self.config.coordinates_every > 0 && now.is_multiple_of(self.config.coordinates_every);
        let timestamp = events::timestamp_now();
        for key in 0..self.sessions.len() {
            let Some(session) = self.sessions[key].as_mut() else {
                continue;
            };
            let rules = &self.config.rules;
            let pool = &mut self.pool;
            // Inputs, in join order.
            for i in 0..session.players.len() {
                let player = &mut session.players[i];
                if now.saturating_sub(player.last_seen) > self.config.player_timeout_ticks {
                    timed_out.push((key, player.id.clone()));
                    continue;
                }
                if let Some(seq) = player.pending_seq.take() {
                    player.ack = Some(seq);
                }
                if let Some(target) = player.pending_move.take() {
                    stats.moves += 1;
                    if pool.get_mut(player.tank).move_toward(target, rules) {
                        player.moved_unpublished = true;
                    }
                }
                if std::mem::take(&mut player.pending_shot) {
                    let (shooter, wanted) = (player.tank, player.pending_target.take());
                    if fire(
                        session,
                        i,
                        shooter,
                        wanted,
                        pool,
                        rules,
                        now,
                        timestamp,
                        &self.events,
                    ) {
                        stats.shots += 1;
                    }
                }
            }
            // Time passes: ammunition, respawns.
            for (slot, player) in session.players.iter().enumerate() {
                let tank = pool.get_mut(player.tank);
                if tank.regenerate(now, rules) {
                    let team = tank.team;
                    tank.spawn(
                        spawn_point(team, slot as u32, session.match_id.is_some(), rules),
                        now,
                        rules,
                    );
                }
            }
            if let Some((reason, winner)) = session_end(session, pool, now, &self.config) {
                ending.push((key, reason, winner));
            }
            if !session.players.is_empty() {
                session.seq += 1;
                wire::write_snapshot(out, session, pool);
                if publish_coordinates {
                    kafka::capture_moves(&mut self.deferred, session, pool, now, timestamp);
                }
            }
        }
        for (key, player_id) in timed_out {
            self.remove_player(key, &player_id, "timeout");
        }
        for &(key, reason, winner) in &ending {
            self.end_session(key, reason, winner, out);
        }
        stats.sessions_ended = ending.len();
        self.ending = ending;
        stats
    }
}

/// Where a tank (re)appears: teams on opposite sides for matches, spread over the
/// map for open sessions. Deterministic, so tests know where tanks are.
pub(super) fn spawn_point(team: u8, slot: u32, teams: bool, rules: &Rules) -> [f64; 2] {
    let spread = |n: u32, k: u32| f64::from((n * k) % 97) / 97.0;
    if teams {
        let x = if team == 0 { 0.1 } else { 0.9 };
        [
            rules.map_width * x,
            rules.map_height * (0.1 + 0.8 * spread(slot, 31)),
        ]
    } else {
        [
            rules.map_width * (0.1 + 0.8 * spread(slot, 37)),
            rules.map_height * (0.1 + 0.8 * spread(slot, 61)),
        ]
    }
}

/// The shot of player `i`: at the wanted tank if it is a living enemy in range,
/// else at the nearest one. Publishes what happened. True when a shell was fired.
#[allow(clippy::too_many_arguments)]
fn fire(
    session: &Session,
    i: usize,
    shooter: TankIdx,
    wanted: Option<TankIdx>,
    pool: &mut TankPool,
    rules: &Rules,
    now: u64,
    timestamp: f64,
    events: &EventPublisher,
) -> bool {
    match pool.get_mut(shooter).shoot(now, rules) {
        Ok(()) => {}
        Err(ShotRefused::Destroyed | ShotRefused::Cooldown | ShotRefused::NoAmmo) => return false,
    }
    let me = pool.get(shooter);
    let is_target = |t: TankIdx| {
        let other = pool.get(t);
        t != shooter
            && other.alive
            && other.team != me.team
            && me.distance_to(other) <= rules.shot_range
    };
    let candidates = session.players.iter().map(|p| p.tank);
    let target = wanted
        .filter(|w| session.players.iter().any(|p| p.tank == *w) && is_target(*w))
        .or_else(|| {
            candidates.filter(|&t| is_target(t)).min_by(|&a, &b| {
                me.distance_to(pool.get(a))
                    .total_cmp(&me.distance_to(pool.get(b)))
            })
        });
    let session_id = Cow::Borrowed(session.id.as_str());
    let shooter_id = me.id().to_owned();
    let shot = GameEvent::TankShot {
        timestamp,
        session_id: session_id.clone(),
        tank_id: Cow::Borrowed(&shooter_id),
        player_id: Cow::Borrowed(&session.players[i].id),
        target_tank_id: target.map(|t| Cow::Owned(pool.get(t).id().to_owned())),
        ammo: me.ammo,
    };
    kafka::publish_game(events, &session.id, &shot);
    let Some(target) = target else { return true };
    let respawn = session.mode == Mode::Respawn;
    let Some((shooter_tank, target_tank)) = pool.pair_mut(shooter, target) else {
        return true;
    };
    let damage = target_tank.take_damage(rules.damage, now, respawn, rules);
    kafka::publish_game(
        events,
        &session.id,
        &GameEvent::TankTookDamage {
            timestamp,
            session_id: session_id.clone(),
            tank_id: Cow::Borrowed(target_tank.id()),
            damage: rules.damage,
            health: damage.health,
            by_tank_id: Cow::Borrowed(&shooter_id),
        },
    );
    if damage.destroyed {
        shooter_tank.kills += 1;
        kafka::publish_game(
            events,
            &session.id,
            &GameEvent::TankDestroyed {
                timestamp,
                session_id,
                tank_id: Cow::Borrowed(target_tank.id()),
                by_tank_id: Cow::Borrowed(&shooter_id),
            },
        );
    }
    true
}

/// Whether the session is over, why, and who won.
fn session_end(
    session: &mut Session,
    pool: &TankPool,
    now: u64,
    config: &ManagerConfig,
) -> Option<(&'static str, Option<u8>)> {
    if session.players.is_empty() {
        let since = *session.empty_since.get_or_insert(now);
        let abandoned = session.is_open() || now.saturating_sub(since) >= config.empty_ticks;
        return abandoned.then_some(("abandoned", None));
    }
    if session.mode == Mode::Elimination && session.teams_seen.count_ones() >= 2 {
        let mut alive_teams = 0u64;
        for p in &session.players {
            let tank = pool.get(p.tank);
            if tank.alive {
                alive_teams |= 1 << tank.team;
            }
        }
        if alive_teams.count_ones() <= 1 {
            let winner = (alive_teams != 0).then(|| alive_teams.trailing_zeros() as u8);
            return Some(("completed", winner));
        }
    }
    if session.ends_at.is_some_and(|t| now >= t) {
        let mut kills = [0u32; 64];
        for p in &session.players {
            let tank = pool.get(p.tank);
            kills[tank.team as usize % 64] += tank.kills;
        }
        let best = *kills.iter().max().unwrap_or(&0);
        let leaders: Vec<usize> = (0..64).filter(|&t| kills[t] == best && best > 0).collect();
        let winner = (leaders.len() == 1).then(|| leaders[0] as u8);
        return Some(("completed", winner));
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tanks_core::events;
    use tanks_core::protocol::game::udp::{ServerMessage, parse_server_message};

    use crate::outbox::Outbox;
    use crate::sessions::testkit::*;

    #[tokio::test]
    async fn a_move_shows_in_the_next_snapshot_to_everyone() {
        let (mut m, _memory, _pump) = manager();
        let (_, t1) = joined(m.join("p1", addr(1), false, None));
        joined(m.join("p2", addr(2), false, None));
        let target = [t1.position[0] + 3.0, t1.position[1] - 4.0];
        let tick = m.queue_move("p1", Some(addr(1)), target, Some(41)).unwrap();
        let mut out = Outbox::default();
        m.step(&mut out);
        assert_eq!(m.tick(), tick);
        for to in [addr(1), addr(2)] {
            let got = updates(&out, to);
            assert_eq!(got.len(), 1, "one snapshot per player per tick");
            let mine = got[0].tanks.iter().find(|t| t.id == t1.id).unwrap();
            assert_eq!(mine.position, target);
            assert_eq!(mine.ack, Some(41));
            assert_eq!(got[0].seq, 1);
        }
        m.step(&mut out);
        assert_eq!(updates(&out, addr(2))[0].seq, 2, "seq grows per snapshot");
    }

    #[tokio::test]
    async fn the_latest_move_of_a_tick_wins_and_teleports_are_clamped() {
        let (mut m, _memory, _pump) = manager();
        let (_, t1) = joined(m.join("p1", addr(1), false, None));
        m.queue_move("p1", None, [t1.position[0] + 1.0, t1.position[1]], None)
            .unwrap();
        m.queue_move("p1", None, [t1.position[0] + 500.0, t1.position[1]], None)
            .unwrap();
        let mut out = Outbox::default();
        m.step(&mut out);
        let tank = &updates(&out, addr(1))[0].tanks[0];
        assert_eq!(
            tank.position,
            [t1.position[0] + m.config().rules.max_step(), t1.position[1]]
        );
    }

    #[tokio::test]
    async fn shots_damage_then_destroy_and_events_come_in_order() {
        let (mut m, memory, pump) = manager_with(|c| c.rules.shot_cooldown_ticks = 1);
        let (_, a) = joined(m.join("a", addr(1), false, None));
        let (_, b) = joined(m.join("b", addr(2), false, None));
        // Bring them within range of each other.
        let mut out = Outbox::default();
        for _ in 0..200 {
            m.queue_move("a", None, [500.0, 500.0], None).unwrap();
            m.queue_move("b", None, [520.0, 500.0], None).unwrap();
            m.step(&mut out);
        }
        for _ in 0..4 {
            m.queue_shot("a", None, Some(&b.id), None).unwrap();
            m.step(&mut out);
        }
        let last = &updates(&out, addr(1))[0];
        let b_state = last.tanks.iter().find(|t| t.id == b.id).unwrap();
        assert_eq!((b_state.health, b_state.alive), (0, false));
        let game = events(&memory, pump, events::GAME_EVENTS).await;
        let seen: Vec<(String, Value)> = game
            .iter()
            .map(|e| {
                (
                    e["event_type"].as_str().unwrap().to_owned(),
                    e["health"].clone(),
                )
            })
            .collect();
        let expected = [
            ("tank_shot", Value::Null),
            ("tank_took_damage", 75.into()),
            ("tank_shot", Value::Null),
            ("tank_took_damage", 50.into()),
            ("tank_shot", Value::Null),
            ("tank_took_damage", 25.into()),
            ("tank_shot", Value::Null),
            ("tank_took_damage", 0.into()),
            ("tank_destroyed", Value::Null),
        ];
        let expected: Vec<(String, Value)> = expected
            .iter()
            .map(|(t, h)| (t.to_string(), h.clone()))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(game[0]["tank_id"], a.id.as_str());
        assert_eq!(game[0]["target_tank_id"], b.id.as_str());
        assert_eq!(game[8]["by_tank_id"], a.id.as_str());
    }

    #[tokio::test]
    async fn destroyed_tanks_respawn_in_respawn_mode() {
        let (mut m, _memory, _pump) = manager_with(|c| {
            c.rules.shot_cooldown_ticks = 1;
            c.rules.damage = 100;
            c.rules.shot_range = 5000.0;
        });
        joined(m.join("a", addr(1), false, None));
        let (_, b) = joined(m.join("b", addr(2), false, None));
        m.queue_shot("a", None, None, None).unwrap();
        let mut out = Outbox::default();
        m.step(&mut out);
        let dead = |out: &Outbox| {
            updates(out, addr(1))[0]
                .tanks
                .iter()
                .find(|t| t.id == b.id)
                .unwrap()
                .alive
        };
        assert!(!dead(&out));
        for _ in 0..m.config().rules.respawn_ticks {
            m.step(&mut out);
        }
        assert!(dead(&out));
    }

    #[tokio::test]
    async fn elimination_ends_the_match_and_the_report_says_so() {
        let (mut m, memory, pump) = manager_with(|c| {
            c.rules.damage = 100;
            c.rules.shot_range = 5000.0;
        });
        let created = create(&mut m, "m1", &["a", "b"], Some("elimination")).unwrap();
        joined(m.join("a", addr(1), true, None));
        joined(m.join("b", addr(2), true, None));
        m.queue_shot("a", Some(addr(1)), None, None).unwrap();
        let mut out = Outbox::default();
        let stats = m.step(&mut out);
        assert_eq!(stats.sessions_ended, 1);
        let over: Vec<_> = out
            .iter()
            .filter_map(|(a, msg)| match parse_server_message(msg) {
                Some(ServerMessage::GameOver(g)) => Some((a, g)),
                _ => None,
            })
            .collect();
        assert_eq!(over.len(), 2, "both players are told");
        assert_eq!(over[0].1.winner, Some(0));
        let report = m.load_report();
        assert_eq!((report.sessions, report.players), (0, 0));
        assert_eq!(report.finished[0].match_id, "m1");
        assert_eq!(report.finished[0].session_id, created.session_id);
        assert_eq!(report.finished[0].reason, "completed");
        assert_eq!(m.tanks_in_use(), 0);
        assert!(
            !create(&mut m, "m1", &[], None).unwrap().created,
            "a finished match is not created again"
        );
        let history = events(&memory, pump, events::PLAYER_SESSIONS_HISTORY).await;
        assert_eq!(history.last().unwrap()["event_type"], "session_removed");
        assert_eq!(history.last().unwrap()["reason"], "completed");
    }

    #[tokio::test]
    async fn matches_end_on_time_and_empty_ones_are_abandoned() {
        let (mut m, _memory, _pump) = manager_with(|c| {
            c.match_ticks = 5;
            c.empty_ticks = 3;
        });
        create(&mut m, "timed", &["a"], None).unwrap();
        joined(m.join("a", addr(1), false, None));
        create(&mut m, "empty", &["z"], None).unwrap();
        let mut out = Outbox::default();
        let mut ended = 0;
        for _ in 0..5 {
            ended += m.step(&mut out).sessions_ended;
        }
        let report = m.load_report();
        assert_eq!(ended, 2);
        let reasons: Vec<(&str, &str)> = report
            .finished
            .iter()
            .map(|f| (f.match_id.as_str(), f.reason.as_str()))
            .collect();
        assert_eq!(reasons, [("empty", "abandoned"), ("timed", "completed")]);
    }

    #[tokio::test]
    async fn silent_players_time_out() {
        let (mut m, _memory, _pump) = manager_with(|c| c.player_timeout_ticks = 2);
        joined(m.join("a", addr(1), false, None));
        let mut out = Outbox::default();
        for _ in 0..4 {
            m.step(&mut out);
        }
        assert_eq!(m.player_count(), 0);
        assert_eq!(m.tanks_in_use(), 0);
    }
}
