//! The game server's Kafka events. Every event has `event_type` and `timestamp` (seconds
//! since the Unix epoch, the seed's format) and is keyed by its session id, so one
//! session's events stay in one partition, in order. Topic names and the publisher are
//! in [`crate::events`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// `player_sessions_history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", rename_all = "snake_case")]
pub enum SessionEvent<'a> {
    SessionCreated {
        timestamp: f64,
        session_id: Cow<'a, str>,
        #[serde(default)]
        match_id: Option<Cow<'a, str>>,
        server: Cow<'a, str>,
    },
    SessionRemoved {
        timestamp: f64,
        session_id: Cow<'a, str>,
        #[serde(default)]
        match_id: Option<Cow<'a, str>>,
        reason: Cow<'a, str>,
    },
    PlayerJoinedSession {
        timestamp: f64,
        session_id: Cow<'a, str>,
        player_id: Cow<'a, str>,
        tank_id: Cow<'a, str>,
    },
    PlayerLeftSession {
        timestamp: f64,
        session_id: Cow<'a, str>,
        player_id: Cow<'a, str>,
        tank_id: Cow<'a, str>,
        reason: Cow<'a, str>,
    },
}

/// `game_events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", rename_all = "snake_case")]
pub enum GameEvent<'a> {
    TankShot {
        timestamp: f64,
        session_id: Cow<'a, str>,
        tank_id: Cow<'a, str>,
        player_id: Cow<'a, str>,
        #[serde(default)]
        target_tank_id: Option<Cow<'a, str>>,
        ammo: u32,
    },
    TankTookDamage {
        timestamp: f64,
        session_id: Cow<'a, str>,
        tank_id: Cow<'a, str>,
        damage: i32,
        health: i32,
        by_tank_id: Cow<'a, str>,
    },
    TankDestroyed {
        timestamp: f64,
        session_id: Cow<'a, str>,
        tank_id: Cow<'a, str>,
        by_tank_id: Cow<'a, str>,
    },
}

/// `tank_coordinates_history`: one message per session per tick holding every tank
/// that moved in that tick, rather than one message per datagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TankMovedBatch<'a> {
    /// Always `tank_moved`.
    pub event_type: Cow<'a, str>,
    pub timestamp: f64,
    pub session_id: Cow<'a, str>,
    pub tick: u64,
    pub moves: Vec<TankMove<'a>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TankMove<'a> {
    pub tank_id: Cow<'a, str>,
    pub player_id: Cow<'a, str>,
    pub position: [f64; 2],
}

pub const TANK_MOVED: &str = "tank_moved";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_type_and_timestamp() {
        let e = GameEvent::TankDestroyed {
            timestamp: 1.5,
            session_id: "s".into(),
            tank_id: "tank_1".into(),
            by_tank_id: "tank_2".into(),
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["event_type"], "tank_destroyed");
        assert_eq!(json["timestamp"], 1.5);
        let back: GameEvent<'static> = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
