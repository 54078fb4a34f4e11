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
//!
//! One job per submodule, each adding to `SessionManager` the methods its job needs:
//!
//! - `registry`: sessions and players come and go: matches created, joins, leaves,
//!   queued inputs, sessions ended.
//! - `rejoin`: a player in a session joins again, from a new address with its token.
//! - `step`: the simulation, one tick at a time: inputs applied, shots fired, whether
//!   a session is over.
//! - `wire`: the bytes players receive, `game_update` and `game_over`.
//! - `kafka`: the events this server writes, and the tick's `tank_moved` batches.
//! - `load`: the load report, and the finished matches it lists.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use tanks_core::events::EventPublisher;
use tanks_core::protocol::control::FinishedSession;

use crate::moves::MoveBatches;
use crate::pool::{TankIdx, TankPool};
use crate::rules::Rules;

mod kafka;
mod load;
mod registry;
mod rejoin;
mod step;
#[cfg(test)]
mod testkit;
mod wire;

pub use load::FINISHED_KEPT;
pub use registry::{
    CreateError, InputError, JoinOutcome, MSG_DRAINING, MSG_NO_OPEN_SESSIONS, MSG_NO_SESSION,
    MSG_NOT_EXPECTED,
};
pub use step::StepStats;

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
    prefixes: wire::JsonPrefixes,
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
}
