//! What the sessions' tests share: a manager whose events go to memory, and readers of
//! what it sent and published.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tanks_core::events::{EventMetrics, EventPublisher, EventPump, MemorySink, SinkConfig};
use tanks_core::protocol::control::{CreateSession, SessionCreated};
use tanks_core::protocol::game::udp::{GameUpdate, ServerMessage, TankState, parse_server_message};

use super::{CreateError, JoinOutcome, ManagerConfig, SessionManager};
use crate::outbox::Outbox;
use crate::rules::Rules;

pub(super) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub(super) fn manager_with(
    config: impl FnOnce(&mut ManagerConfig),
) -> (SessionManager, MemorySink, EventPump) {
    let memory = MemorySink::new(10_000);
    let (events, pump) =
        EventPublisher::start(SinkConfig::Memory(memory.clone()), EventMetrics::detached())
            .unwrap();
    let mut cfg = ManagerConfig::new("test-server", Rules::default());
    cfg.max_sessions = 4;
    cfg.players_per_session = 4;
    config(&mut cfg);
    (SessionManager::new(cfg, events), memory, pump)
}

pub(super) fn manager() -> (SessionManager, MemorySink, EventPump) {
    manager_with(|_| {})
}

pub(super) fn updates(out: &Outbox, to: SocketAddr) -> Vec<GameUpdate> {
    out.iter()
        .filter(|(a, _)| *a == to)
        .filter_map(|(_, m)| match parse_server_message(m) {
            Some(ServerMessage::Update(u)) => Some(u),
            _ => None,
        })
        .collect()
}

pub(super) fn joined(outcome: JoinOutcome) -> (String, TankState) {
    match outcome {
        JoinOutcome::Joined { session_id, tank } => (session_id, tank),
        other => panic!("expected a join, got {other:?}"),
    }
}

pub(super) async fn events(memory: &MemorySink, pump: EventPump, topic: &str) -> Vec<Value> {
    pump.finish(Duration::from_secs(1)).await;
    memory.events(topic)
}

pub(super) fn create(
    m: &mut SessionManager,
    match_id: &str,
    players: &[&str],
    mode: Option<&str>,
) -> Result<SessionCreated, CreateError> {
    m.create_match(&CreateSession {
        match_id: match_id.into(),
        players: players.iter().map(|p| p.to_string()).collect(),
        map: None,
        mode: mode.map(str::to_owned),
    })
}
