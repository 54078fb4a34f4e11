//! `SessionManager`: the sessions of this server, their players and their tanks.
//!
//! One per process, created in `main` and handed to whoever needs it (the UDP loop,
//! the tick, the control interface, the consumers) behind one mutex: no global. Each
//! critical section is short (one datagram, one command, or one tick of simulation),
//! and snapshots are sent after the lock is released.
//!
//! Inputs are not applied on arrival: each player has one slot for the latest `move`
//! target and one shot flag, applied by the next [`SessionManager::step`]. That bounds
//! memory per player whatever a client sends, and makes the simulation advance in
//! fixed steps.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use tanks_core::events::{self, EventPublisher};
use tanks_core::protocol::control::{
    CreateSession, FinishedSession, LoadReport, MatchSession, SessionCreated,
};
use tanks_core::protocol::game::kafka::{GameEvent, SessionEvent};
use tanks_core::protocol::game::udp::{MSG_NO_TANKS, TankState};
use tanks_core::token::unix_now;

use crate::moves::MoveBatches;
use crate::outbox::{Outbox, write_coord, write_i64, write_u64};
use crate::pool::{TankIdx, TankPool};
use crate::rules::{Rules, ShotRefused, Tank};

/// Recently finished match sessions kept for the load report.
pub const FINISHED_KEPT: usize = 256;

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// This server's name, in events and the load report.
    pub server: String,
    pub max_sessions: usize,
    pub players_per_session: usize,
    pub rules: Rules,
    /// A match session ends after this many ticks (0: never by time).
    pub match_ticks: u64,
    /// An open session (seed clients joining without a match) ends after this many
    /// ticks (0: when its last player leaves).
    pub open_ticks: u64,
    /// A match session that has had no players this long is abandoned.
    pub empty_ticks: u64,
    /// A player not heard from this long is removed.
    pub player_timeout_ticks: u64,
    /// Publish `tank_moved` every this many ticks (0: never).
    pub coordinates_every: u64,
    /// Whether players may join without a match (the seed's way).
    pub open_sessions: bool,
}

impl ManagerConfig {
    pub fn new(server: impl Into<String>, rules: Rules) -> Self {
        let per_second = u64::from(rules.tick_rate);
        Self {
            server: server.into(),
            max_sessions: 512,
            players_per_session: 14,
            match_ticks: 300 * per_second,
            open_ticks: 0,
            empty_ticks: 60 * per_second,
            player_timeout_ticks: 30 * per_second,
            coordinates_every: 1,
            open_sessions: true,
            rules,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Destroyed tanks come back; the match ends on time.
    Respawn,
    /// Destroyed tanks stay; the match ends when one team is left.
    Elimination,
}

impl Mode {
    fn parse(mode: Option<&str>) -> Mode {
        match mode {
            Some(m) if m.eq_ignore_ascii_case("elimination") => Mode::Elimination,
            _ => Mode::Respawn,
        }
    }
}

struct Player {
    id: String,
    /// The constant starts of this player's entries in every tick's messages,
    /// written once at join (the player keeps its tank while it plays).
    prefixes: JsonPrefixes,
    tank: TankIdx,
    addr: SocketAddr,
    /// Joined with a token: inputs count only from the address that joined.
    bound: bool,
    pending_move: Option<[f64; 2]>,
    pending_shot: bool,
    pending_target: Option<TankIdx>,
    pending_seq: Option<u64>,
    ack: Option<u64>,
    moved_unpublished: bool,
    last_seen: u64,
}

/// A player's entries in the snapshot and the `tank_moved` batch, up to the
/// position: one copy per tick each, instead of a few small writes and the
/// escaping of the player id.
struct JsonPrefixes {
    /// `{"id":"tank_<n>","position":[`
    snapshot: Box<[u8]>,
    /// `{"tank_id":"tank_<n>","player_id":"<id>","position":[`
    moved: Box<[u8]>,
}

impl JsonPrefixes {
    fn new(tank_id: &str, player_id: &str) -> Self {
        let snapshot = format!(r#"{{"id":"{tank_id}","position":["#);
        // Player ids come from clients: let serde escape them. Tank ids are ours.
        let player = serde_json::to_string(player_id).unwrap_or_default();
        let moved = format!(r#"{{"tank_id":"{tank_id}","player_id":{player},"position":["#);
        Self {
            snapshot: snapshot.into_bytes().into_boxed_slice(),
            moved: moved.into_bytes().into_boxed_slice(),
        }
    }
}

struct Session {
    id: String,
    match_id: Option<String>,
    /// The players the match was made for (empty for open sessions).
    expected: Vec<String>,
    mode: Mode,
    players: Vec<Player>,
    /// Snapshot sequence number.
    seq: u64,
    created_at: u64,
    ends_at: Option<u64>,
    empty_since: Option<u64>,
    /// Teams that have had a player, as a bit set (elimination needs two).
    teams_seen: u64,
    next_slot: u32,
}

impl Session {
    fn is_open(&self) -> bool {
        self.match_id.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum JoinOutcome {
    Joined { session_id: String, tank: TankState },
    AlreadyInSession { session_id: String, tank_id: String },
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

/// What one tick did, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct StepStats {
    pub moves: usize,
    pub shots: usize,
    pub sessions_ended: usize,
}

type SessionKey = usize;

pub struct SessionManager {
    config: ManagerConfig,
    pool: TankPool,
    sessions: Vec<Option<Session>>,
    free_keys: Vec<SessionKey>,
    live: usize,
    by_id: HashMap<String, SessionKey>,
    by_match: HashMap<String, SessionKey>,
    /// Player id to session, for players in a session.
    players: HashMap<String, SessionKey>,
    /// Player id to match session, for players a match expects.
    expected: HashMap<String, SessionKey>,
    finished: VecDeque<FinishedSession>,
    draining: bool,
    tick: u64,
    events: EventPublisher,
    /// Coordinate batches of the last tick, published by the tick thread once the
    /// session lock is released: each publish may wake the event pump's thread, and
    /// hundreds of wake-ups per tick were most of a tick's time at 5,000 players.
    deferred: MoveBatches,
    /// Scratch, reused every tick.
    ending: Vec<(SessionKey, &'static str, Option<u8>)>,
}

impl SessionManager {
    pub fn new(config: ManagerConfig, events: EventPublisher) -> Self {
        let capacity = config.max_sessions * config.players_per_session;
        let pool = TankPool::new(capacity, &config.rules);
        Self {
            pool,
            sessions: Vec::with_capacity(config.max_sessions),
            free_keys: Vec::new(),
            live: 0,
            by_id: HashMap::with_capacity(config.max_sessions),
            by_match: HashMap::with_capacity(config.max_sessions),
            players: HashMap::with_capacity(capacity),
            expected: HashMap::new(),
            finished: VecDeque::with_capacity(FINISHED_KEPT),
            draining: false,
            tick: 0,
            events,
            ending: Vec::new(),
            deferred: MoveBatches::default(),
            config,
        }
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn tick(&self) -> u64 {
        self.tick
    }

    pub fn sessions(&self) -> usize {
        self.live
    }

    pub fn player_count(&self) -> usize {
        self.players.len()
    }

    pub fn tanks_in_use(&self) -> usize {
        self.pool.in_use()
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Stops taking new sessions; running ones go on.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    fn has_room(&self) -> bool {
        self.live < self.config.max_sessions
            && self.pool.available() >= self.config.players_per_session
    }

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
            self.finished
                .iter()
                .find(|f| f.match_id == match_id)
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
            let tick = self.tick;
            let session = self.sessions[key].as_mut().expect("indexed sessions exist");
            let player = session
                .players
                .iter_mut()
                .find(|p| p.id == player_id)
                .expect("indexed players exist");
            if bound || !player.bound {
                // A token proves who it is: follow it to its new address (NAT rebinding).
                player.addr = addr;
                player.bound |= bound;
            }
            player.last_seen = tick;
            return JoinOutcome::AlreadyInSession {
                session_id: session.id.clone(),
                tank_id: self.pool.get(player.tank).id().to_owned(),
            };
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
            prefixes: JsonPrefixes::new(tank.id(), player_id),
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

    pub fn is_playing(&self, player_id: &str) -> bool {
        self.players.contains_key(player_id)
    }

    fn remove_player(&mut self, key: SessionKey, player_id: &str, reason: &str) {
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
                write_snapshot(out, session, pool);
                if publish_coordinates {
                    capture_moves(&mut self.deferred, session, pool, now, timestamp);
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

    /// Moves the last tick's coordinate batches into `out`, for the caller to write
    /// and publish after releasing the lock ([`MoveBatches::drain_records`]).
    pub fn take_deferred(&mut self, out: &mut MoveBatches) {
        self.deferred.take_into(out);
    }

    /// A handle to the event publisher, for publishing deferred records.
    pub fn events(&self) -> EventPublisher {
        self.events.clone()
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

    fn end_session(
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
            out.begin();
            let _ = serde_json::to_writer(
                out.writer(),
                &serde_json::json!({"action":"game_over","session_id":session.id,"reason":reason,"winner":winner}),
            );
            for player in &session.players {
                out.send_to(player.addr);
            }
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
            if self.finished.len() == FINISHED_KEPT {
                self.finished.pop_front();
            }
            self.finished.push_back(FinishedSession {
                match_id: match_id.clone(),
                session_id: session.id.clone(),
                finished_at: unix_now(),
                reason: reason.to_owned(),
            });
        }
        self.publish_session(&SessionEvent::SessionRemoved {
            timestamp: events::timestamp_now(),
            session_id: Cow::Borrowed(&session.id),
            match_id: session.match_id.as_deref().map(Cow::Borrowed),
            reason: Cow::Borrowed(reason),
        });
    }

    pub fn load_report(&self) -> LoadReport {
        let matches = self
            .sessions
            .iter()
            .flatten()
            .filter_map(|s| {
                s.match_id.as_ref().map(|m| MatchSession {
                    match_id: m.clone(),
                    session_id: s.id.clone(),
                    players: s.players.len() as u32,
                    created_at: s.created_at,
                })
            })
            .collect();
        LoadReport {
            server: self.config.server.clone(),
            sessions: self.live as u32,
            players: self.players.len() as u32,
            session_capacity: self.config.max_sessions as u32,
            players_per_session: self.config.players_per_session as u32,
            draining: self.draining,
            ready: !self.draining,
            matches,
            finished: self.finished.iter().cloned().collect(),
        }
    }

    fn publish_session(&self, event: &SessionEvent<'_>) {
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

/// `tank_<n>` to the pool index `n`.
fn parse_tank_id(id: &str) -> Option<TankIdx> {
    id.strip_prefix("tank_")?.parse().ok().map(TankIdx)
}

/// Where a tank (re)appears: teams on opposite sides for matches, spread over the
/// map for open sessions. Deterministic, so tests know where tanks are.
fn spawn_point(team: u8, slot: u32, teams: bool, rules: &Rules) -> [f64; 2] {
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
    events.publish(events::GAME_EVENTS, &session.id, &shot);
    let Some(target) = target else { return true };
    let respawn = session.mode == Mode::Respawn;
    let Some((shooter_tank, target_tank)) = pool.pair_mut(shooter, target) else {
        return true;
    };
    let damage = target_tank.take_damage(rules.damage, now, respawn, rules);
    events.publish(
        events::GAME_EVENTS,
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
        events.publish(
            events::GAME_EVENTS,
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

/// The session's `game_update`, serialized once, addressed to each of its players.
/// Written by hand, bytes appended without `write!`: it is the hottest
/// serialization in the server, and tank ids are ours (`tank_<n>`), so nothing
/// needs escaping.
fn write_snapshot(out: &mut Outbox, session: &Session, pool: &TankPool) {
    out.begin();
    let w = out.writer();
    w.extend_from_slice(br#"{"action":"game_update","seq":"#);
    write_u64(w, session.seq);
    w.extend_from_slice(br#","tanks":["#);
    for (i, player) in session.players.iter().enumerate() {
        if i > 0 {
            w.push(b',');
        }
        write_tank(
            w,
            &player.prefixes.snapshot,
            pool.get(player.tank),
            player.ack,
        );
    }
    w.extend_from_slice(b"]}");
    for player in &session.players {
        out.send_to(player.addr);
    }
}

/// One tank of a `game_update`, in the field order of [`TankState`]; `prefix` is
/// the entry up to the position.
fn write_tank(w: &mut Vec<u8>, prefix: &[u8], tank: &Tank, ack: Option<u64>) {
    w.extend_from_slice(prefix);
    write_position(w, tank.position);
    w.extend_from_slice(br#","health":"#);
    write_i64(w, tank.health.into());
    if let Some(ack) = ack {
        w.extend_from_slice(br#","ack":"#);
        write_u64(w, ack);
    }
    if !tank.alive {
        w.extend_from_slice(br#","alive":false"#);
    }
    w.push(b'}');
}

/// `x,y]`: the rest of a position whose `[` is written.
fn write_position(w: &mut Vec<u8>, position: [f64; 2]) {
    write_coord(w, position[0]);
    w.push(b',');
    write_coord(w, position[1]);
    w.push(b']');
}

/// Captures the session's moves of this tick for its `tank_moved` batch
/// (see [`crate::moves`]).
fn capture_moves(
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

#[cfg(test)]
mod tests;
