//! What the sessions write to Kafka: `player_sessions_history` and `game_events` as they
//! happen, keyed by session id so a session's events stay in order, and each tick's
//! `tank_moved` batches, captured under the lock and published by the tick thread after
//! it (see [`crate::moves`]).

use tanks_core::events::{self, EventPublisher};
use tanks_core::protocol::game::kafka::{GameEvent, SessionEvent};

use super::{Session, SessionManager};
use crate::moves::MoveBatches;
use crate::pool::TankPool;

impl SessionManager {
    /// Moves the last tick's coordinate batches into `out`, for the caller to write
    /// and publish after releasing the lock ([`MoveBatches::drain_records`]).
    pub fn take_deferred(&mut self, out: &mut MoveBatches) {
        self.deferred.take_into(out);
    }

    /// A handle to the event publisher, for publishing deferred records.
    pub fn events(&self) -> EventPublisher {
        self.events.clone()
    }

    /// Publishes one of a session's `player_sessions_history` events.
    pub(super) fn publish_session(&self, event: &SessionEvent<'_>) {
        let session_id = match event {
            SessionEvent::SessionCreated { session_id, .. }
            | SessionEvent::SessionRemoved { session_id, .. }
            | SessionEvent::PlayerJoinedSession { session_id, .. }
            | SessionEvent::PlayerLeftSession { session_id, .. } => session_id,
        };
        self.events
            .publish(events::PLAYER_SESSIONS_HISTORY, session_id, event);
    }
}

/// Publishes one of a session's `game_events`.
pub(super) fn publish_game(publisher: &EventPublisher, session_id: &str, event: &GameEvent<'_>) {
    publisher.publish(events::GAME_EVENTS, session_id, event);
}

/// Captures the session's moves of this tick for its `tank_moved` batch
/// (see [`crate::moves`]).
pub(super) fn capture_moves(
    deferred: &mut MoveBatches,
    session: &mut Session,
    pool: &TankPool,
    tick: u64,
    timestamp: f64,
) {
    if !session.players.iter().any(|p| p.moved_unpublished) {
        return;
    }
    deferred.begin(&session.id, tick, timestamp);
    for p in session.players.iter_mut().filter(|p| p.moved_unpublished) {
        deferred.push(&p.prefixes.moved, pool.get(p.tank).position);
        p.moved_unpublished = false;
    }
}
