//! The registry: sessions and players come and go. Matches are created (idempotent on
//! their id), players join and leave, inputs are queued for the next tick, and sessions
//! end, with every index kept in step.

use std::borrow::Cow;
use std::net::SocketAddr;

use tanks_core::events;
use tanks_core::protocol::control::{CreateSession, SessionCreated};
use tanks_core::protocol::game::kafka::SessionEvent;
use tanks_core::protocol::game::udp::{MSG_NO_TANKS, TankState};
use tanks_core::token::unix_now;

use super::step::spawn_point;
use super::{Mode, Player, Session, SessionKey, SessionManager, wire};
use crate::outbox::Outbox;
use crate::pool::TankIdx;

#[derive(Debug, Clone, PartialEq)]
pub enum JoinOutcome {
    Joined {
        session_id: String,
        tank: TankState,
    },
    /// A player in a session joined again with its token from a new address, which
    /// its inputs now count from (see `rejoin`).
    Rebound {
        session_id: String,
        tank: TankState,
    },
    AlreadyInSession {
        session_id: String,
        tank_id: String,
    },
    Failed(&'static str),
}

pub const MSG_DRAINING: &str = "Server is draining";
pub const MSG_NOT_EXPECTED: &str = "Not a player of this match";
pub const MSG_NO_SESSION: &str = "Session not found";
pub const MSG_NO_OPEN_SESSIONS: &str = "No match for this player";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("the server is draining")]
    Draining,
    #[error("the server has no room for another session")]
    Full,
    #[error("match_id must be 1 to 128 characters")]
    BadMatchId,
}

impl CreateError {
    pub fn code(self) -> &'static str {
        match self {
            CreateError::Draining => "draining",
            CreateError::Full => "full",
            CreateError::BadMatchId => "bad_request",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputError {
    NotInGame,
    /// A bound player's input from another address.
    WrongSource,
}

impl SessionManager {
    /// Creates the session for a match, or returns the one that exists.
    pub fn create_match(&mut self, request: &CreateSession) -> Result<SessionCreated, CreateError> {
        let match_id = request.match_id.as_str();
        if match_id.is_empty() || match_id.len() > 128 {
            return Err(CreateError::BadMatchId);
        }
        let existing = self
            .by_match
            .get(match_id)
            .and_then(|&k| self.sessions[k].as_ref())
            .map(|s| s.id.clone());
        let existing = existing.or_else(|| {
            self.finished_session(match_id)
                .map(|f| f.session_id.clone())
        });
        if let Some(session_id) = existing {
            return Ok(SessionCreated {
                match_id: match_id.to_owned(),
                session_id,
                created: false,
            });
        }
        if self.draining {
            return Err(CreateError::Draining);
        }
        if !self.has_room() {
            return Err(CreateError::Full);
        }
        let mut expected: Vec<String> = request
            .players
            .iter()
            .filter(|p| !p.is_empty())
            .take(self.config.players_per_session)
            .cloned()
            .collect();
        expected.dedup();
        let key = self.insert_session(
            Some(match_id.to_owned()),
            expected,
            Mode::parse(request.mode.as_deref()),
        );
        let session_id = self.sessions[key]
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        Ok(SessionCreated {
            match_id: match_id.to_owned(),
            session_id,
            created: true,
        })
    }

    fn insert_session(
        &mut self,
        match_id: Option<String>,
        expected: Vec<String>,
        mode: Mode,
    ) -> SessionKey {
        let id = uuid::Uuid::new_v4().to_string();
        let duration = if match_id.is_some() {
            self.config.match_ticks
        } else {
            self.config.open_ticks
        };
        let session = Session {
            id: id.clone(),
            match_id: match_id.clone(),
            expected,
            mode,
            players: Vec::with_capacity(self.config.players_per_session),
            seq: 0,
            created_at: unix_now(),
            ends_at: (duration > 0).then_some(self.tick + duration),
            empty_since: Some(self.tick),
            teams_seen: 0,
            next_slot: 0,
        };
        let key = match self.free_keys.pop() {
            Some(k) => k,
            None => {
                self.sessions.push(None);
                self.sessions.len() - 1
            }
        };
        for player in &session.expected {
            self.expected.insert(player.clone(), key);
        }
        self.publish_session(&SessionEvent::SessionCreated {
            timestamp: events::timestamp_now(),
            session_id: Cow::Borrowed(&id),
            match_id: match_id.as_deref().map(Cow::Borrowed),
            server: Cow::Borrowed(&self.config.server),
        });
        self.sessions[key] = Some(session);
        self.by_id.insert(id, key);
        if let Some(m) = match_id {
            self.by_match.insert(m, key);
        }
        self.live += 1;
        key
    }

    /// A player joins: the session named in the datagram, else the match that expects
    /// the player, else (when allowed) an open session with room.
    pub fn join(
        &mut self,
        player_id: &str,
        addr: SocketAddr,
        bound: bool,
        session_hint: Option<&str>,
    ) -> JoinOutcome {
        if let Some(&key) = self.players.get(player_id) {
            return self.rejoin(key, player_id, addr, bound);
        }
        let key = match session_hint {
            Some(id) => match self.by_id.get(id) {
                Some(&key) => key,
                None => return JoinOutcome::Failed(MSG_NO_SESSION),
            },
            None => match self.expected.get(player_id) {
                Some(&key) => key,
                None => match self.open_session_with_room() {
                    Ok(key) => key,
                    Err(reason) => return JoinOutcome::Failed(reason),
                },
            },
        };
        let session = self.sessions[key].as_ref().expect("indexed sessions exist");
        if !session.expected.is_empty() && !session.expected.iter().any(|p| p == player_id) && bound
        {
            // With tokens, a match is for its players only.
            return JoinOutcome::Failed(MSG_NOT_EXPECTED);
        }
        if session.players.len() >= self.config.players_per_session {
            return JoinOutcome::Failed(MSG_NO_TANKS);
        }
        let Some(tank_idx) = self.pool.acquire() else {
            return JoinOutcome::Failed(MSG_NO_TANKS);
        };
        let rules = &self.config.rules;
        let session = self.sessions[key].as_mut().expect("indexed sessions exist");
        let slot = session.next_slot;
        session.next_slot += 1;
        let team = match session.expected.iter().position(|p| p == player_id) {
            _ if session.match_id.is_none() => (slot % 64) as u8, // open sessions: every tank for itself
            Some(i) => (i % 2) as u8,
            None => (slot % 2) as u8,
        };
        let tank = self.pool.get_mut(tank_idx);
        tank.team = team;
        tank.spawn(
            spawn_point(team, slot, session.match_id.is_some(), rules),
            self.tick,
            rules,
        );
        session.teams_seen |= 1 << team;
        session.empty_since = None;
        session.players.push(Player {
            id: player_id.to_owned(),
            prefixes: wire::JsonPrefixes::new(tank.id(), player_id),
            tank: tank_idx,
            addr,
            bound,
            pending_move: None,
            pending_shot: false,
            pending_target: None,
            pending_seq: None,
            ack: None,
            moved_unpublished: true,
            last_seen: self.tick,
        });
        let state = TankState {
            id: tank.id().to_owned(),
            position: tank.position,
            health: tank.health,
            ack: None,
            alive: true,
        };
        let session_id = session.id.clone();
        self.players.insert(player_id.to_owned(), key);
        self.publish_session(&SessionEvent::PlayerJoinedSession {
            timestamp: events::timestamp_now(),
            session_id: Cow::Borrowed(&session_id),
            player_id: Cow::Borrowed(player_id),
            tank_id: Cow::Borrowed(&state.id),
        });
        JoinOutcome::Joined {
            session_id,
            tank: state,
        }
    }

    fn open_session_with_room(&mut self) -> Result<SessionKey, &'static str> {
        if !self.config.open_sessions {
            return Err(MSG_NO_OPEN_SESSIONS);
        }
        let per_session = self.config.players_per_session;
        let found = self.sessions.iter().enumerate().find_map(|(k, s)| {
            s.as_ref()
                .filter(|s| s.is_open() && s.players.len() < per_session)
                .map(|_| k)
        });
        if let Some(key) = found {
            return Ok(key);
        }
        if self.draining {
            return Err(MSG_DRAINING);
        }
        if !self.has_room() {
            return Err(MSG_NO_TANKS);
        }
        Ok(self.insert_session(None, Vec::new(), Mode::Respawn))
    }

    /// The player leaves.
    pub fn leave(&mut self, player_id: &str, from: Option<SocketAddr>) -> Result<(), InputError> {
        let key = self.player_session(player_id, from)?;
        self.remove_player(key, player_id, "left");
        Ok(())
    }

    fn player_session(
        &mut self,
        player_id: &str,
        from: Option<SocketAddr>,
    ) -> Result<SessionKey, InputError> {
        let &key = self.players.get(player_id).ok_or(InputError::NotInGame)?;
        let tick = self.tick;
        let player = self
            .player_mut(key, player_id)
            .ok_or(InputError::NotInGame)?;
        if let Some(from) = from
            && player.bound
            && player.addr != from
        {
            return Err(InputError::WrongSource);
        }
        player.last_seen = tick;
        Ok(key)
    }

    fn player_mut(&mut self, key: SessionKey, player_id: &str) -> Option<&mut Player> {
        self.sessions
            .get_mut(key)?
            .as_mut()?
            .players
            .iter_mut()
            .find(|p| p.id == player_id)
    }

    /// Queues a move for the next tick; returns that tick's number. `from` is the
    /// datagram's source (None for commands that came another way).
    pub fn queue_move(
        &mut self,
        player_id: &str,
        from: Option<SocketAddr>,
        position: [f64; 2],
        seq: Option<u64>,
    ) -> Result<u64, InputError> {
        let key = self.player_session(player_id, from)?;
        let next = self.tick + 1;
        let player = self
            .player_mut(key, player_id)
            .ok_or(InputError::NotInGame)?;
        player.pending_move = Some(position);
        if seq.is_some() {
            player.pending_seq = seq;
        }
        Ok(next)
    }

    /// Queues a shot for the next tick, at `target` (a tank id) if given.
    pub fn queue_shot(
        &mut self,
        player_id: &str,
        from: Option<SocketAddr>,
        target: Option<&str>,
        seq: Option<u64>,
    ) -> Result<u64, InputError> {
        let key = self.player_session(player_id, from)?;
        let next = self.tick + 1;
        let target = target.and_then(parse_tank_id);
        let player = self
            .player_mut(key, player_id)
            .ok_or(InputError::NotInGame)?;
        player.pending_shot = true;
        player.pending_target = target;
        if seq.is_some() {
            player.pending_seq = seq;
        }
        Ok(next)
    }

    /// Checks that a player is in a game and `from` may speak for it, and marks it as
    /// heard from; what the broker path does before publishing a command.
    pub fn touch(&mut self, player_id: &str, from: Option<SocketAddr>) -> Result<(), InputError> {
        self.player_session(player_id, from).map(|_| ())
    }

    pub(super) fn remove_player(&mut self, key: SessionKey, player_id: &str, reason: &str) {
        let Some(session) = self.sessions[key].as_mut() else {
            return;
        };
        let Some(i) = session.players.iter().position(|p| p.id == player_id) else {
            return;
        };
        let player = session.players.swap_remove(i);
        if session.players.is_empty() {
            session.empty_since = Some(self.tick);
        }
        let session_id = session.id.clone();
        self.players.remove(player_id);
        let tank_id = self.pool.get(player.tank).id().to_owned();
        self.pool.release(player.tank, &self.config.rules);
        self.publish_session(&SessionEvent::PlayerLeftSession {
            timestamp: events::timestamp_now(),
            session_id: Cow::Owned(session_id),
            player_id: Cow::Borrowed(player_id),
            tank_id: Cow::Owned(tank_id),
            reason: Cow::Borrowed(reason),
        });
    }

    /// Ends every session now (shutdown after the drain deadline).
    pub fn end_all(&mut self, reason: &'static str, out: &mut Outbox) -> usize {
        out.clear();
        let keys: Vec<SessionKey> = self
            .sessions
            .iter()
            .enumerate()
            .filter_map(|(k, s)| s.as_ref().map(|_| k))
            .collect();
        for &key in &keys {
            self.end_session(key, reason, None, out);
        }
        keys.len()
    }

    pub(super) fn end_session(
        &mut self,
        key: SessionKey,
        reason: &'static str,
        winner: Option<u8>,
        out: &mut Outbox,
    ) {
        let Some(session) = self.sessions[key].as_ref() else {
            return;
        };
        if !session.players.is_empty() {
            wire::write_game_over(out, session, reason, winner);
        }
        let players: Vec<String> = session.players.iter().map(|p| p.id.clone()).collect();
        for player in players {
            self.remove_player(key, &player, "session_ended");
        }
        let session = self.sessions[key].take().expect("checked above");
        self.free_keys.push(key);
        self.live -= 1;
        self.by_id.remove(&session.id);
        for player in &session.expected {
            if self.expected.get(player) == Some(&key) {
                self.expected.remove(player);
            }
        }
        if let Some(match_id) = &session.match_id {
            self.by_match.remove(match_id);
            self.record_finished(match_id.clone(), session.id.clone(), reason);
        }
        self.publish_session(&SessionEvent::SessionRemoved {
            timestamp: events::timestamp_now(),
            session_id: Cow::Borrowed(&session.id),
            match_id: session.match_id.as_deref().map(Cow::Borrowed),
            reason: Cow::Borrowed(reason),
        });
    }
}

/// `tank_<n>` to the pool index `n`.
fn parse_tank_id(id: &str) -> Option<TankIdx> {
    id.strip_prefix("tank_")?.parse().ok().map(TankIdx)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tanks_core::events;
    use tanks_core::protocol::game::udp::MSG_NO_TANKS;

    use super::*;
    use crate::sessions::testkit::*;

    #[tokio::test]
    async fn seed_players_share_an_open_session() {
        let (mut m, memory, pump) = manager();
        let (s1, t1) = joined(m.join("p1", addr(1), false, None));
        let (s2, t2) = joined(m.join("p2", addr(2), false, None));
        assert_eq!(s1, s2);
        assert_ne!(t1.id, t2.id);
        assert_eq!(t1.health, 100);
        assert_eq!(
            m.join("p1", addr(1), false, None),
            JoinOutcome::AlreadyInSession {
                session_id: s1.clone(),
                tank_id: t1.id.clone()
            }
        );
        assert_eq!(
            (m.sessions(), m.player_count(), m.tanks_in_use()),
            (1, 2, 2)
        );
        let types: Vec<Value> = events(&memory, pump, events::PLAYER_SESSIONS_HISTORY)
            .await
            .iter()
            .map(|e| e["event_type"].clone())
            .collect();
        assert_eq!(
            types,
            [
                "session_created",
                "player_joined_session",
                "player_joined_session"
            ]
        );
    }

    #[tokio::test]
    async fn inputs_of_unknown_players_and_wrong_sources_are_refused() {
        let (mut m, _memory, _pump) = manager();
        assert_eq!(
            m.queue_move("ghost", None, [1.0, 1.0], None),
            Err(InputError::NotInGame)
        );
        assert_eq!(m.leave("ghost", None), Err(InputError::NotInGame));
        joined(m.join("bound", addr(1), true, None));
        assert_eq!(
            m.queue_move("bound", Some(addr(9)), [1.0, 1.0], None),
            Err(InputError::WrongSource)
        );
        assert!(
            m.queue_move("bound", Some(addr(1)), [1.0, 1.0], None)
                .is_ok()
        );
        // Unbound (seed) players may send from anywhere: there is nothing to prove.
        joined(m.join("seed", addr(2), false, None));
        assert!(
            m.queue_move("seed", Some(addr(9)), [1.0, 1.0], None)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn leaving_releases_the_tank_and_an_empty_open_session_ends() {
        let (mut m, memory, pump) = manager();
        let (session, tank) = joined(m.join("p1", addr(1), false, None));
        assert_eq!(m.leave("p1", Some(addr(1))), Ok(()));
        assert_eq!(m.tanks_in_use(), 0);
        let mut out = Outbox::default();
        m.step(&mut out);
        assert_eq!(m.sessions(), 0);
        let history = events(&memory, pump, events::PLAYER_SESSIONS_HISTORY).await;
        let last_two: Vec<&Value> = history.iter().rev().take(2).rev().collect();
        assert_eq!(last_two[0]["event_type"], "player_left_session");
        assert_eq!(last_two[0]["tank_id"], tank.id.as_str());
        assert_eq!(last_two[1]["event_type"], "session_removed");
        assert_eq!(last_two[1]["session_id"], session.as_str());
        assert_eq!(last_two[1]["reason"], "abandoned");
    }

    #[tokio::test]
    async fn the_pool_running_out_refuses_joins_with_the_seed_reason() {
        let (mut m, _memory, _pump) = manager_with(|c| {
            c.max_sessions = 1;
            c.players_per_session = 2;
        });
        joined(m.join("a", addr(1), false, None));
        joined(m.join("b", addr(2), false, None));
        assert_eq!(
            m.join("c", addr(3), false, None),
            JoinOutcome::Failed(MSG_NO_TANKS)
        );
    }

    #[tokio::test]
    async fn match_sessions_are_idempotent_and_take_their_players() {
        let (mut m, _memory, _pump) = manager();
        let first = create(&mut m, "m1", &["alice", "bob"], None).unwrap();
        assert!(first.created);
        let again = create(&mut m, "m1", &["alice", "bob"], None).unwrap();
        assert_eq!(
            (again.created, &again.session_id),
            (false, &first.session_id)
        );
        let (session, _) = joined(m.join("alice", addr(1), true, None));
        assert_eq!(session, first.session_id);
        // With a token, a stranger cannot take a seat in this match by naming it.
        assert_eq!(
            m.join("mallory", addr(3), true, Some(&first.session_id)),
            JoinOutcome::Failed(MSG_NOT_EXPECTED)
        );
        let report = m.load_report();
        assert_eq!(report.matches.len(), 1);
        assert_eq!(
            (report.matches[0].players, report.sessions, report.players),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn draining_and_full_servers_refuse_new_matches() {
        let (mut m, _memory, _pump) = manager_with(|c| c.max_sessions = 1);
        create(&mut m, "m1", &[], None).unwrap();
        assert_eq!(create(&mut m, "m2", &[], None), Err(CreateError::Full));
        m.drain();
        assert_eq!(create(&mut m, "m3", &[], None), Err(CreateError::Draining));
        assert!(
            create(&mut m, "m1", &[], None).is_ok(),
            "asking again for a live match still answers"
        );
        assert_eq!(create(&mut m, "", &[], None), Err(CreateError::BadMatchId));
        assert!(!m.load_report().ready);
    }

    #[tokio::test]
    async fn end_all_finishes_every_session() {
        let (mut m, _memory, _pump) = manager();
        create(&mut m, "m1", &["a"], None).unwrap();
        joined(m.join("a", addr(1), false, None));
        joined(m.join("seed", addr(2), false, None));
        let mut out = Outbox::default();
        assert_eq!(m.end_all("server_shutdown", &mut out), 2);
        assert_eq!(out.len(), 2, "each player gets game_over");
        assert_eq!(m.load_report().finished[0].reason, "server_shutdown");
        assert_eq!(m.tanks_in_use(), 0);
    }
}
