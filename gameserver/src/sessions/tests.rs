use std::time::Duration;

use serde_json::Value;
use tanks_core::events::{EventMetrics, EventPump, MemorySink, SinkConfig};
use tanks_core::protocol::game::udp::{GameUpdate, ServerMessage, parse_server_message};

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn manager_with(
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

fn manager() -> (SessionManager, MemorySink, EventPump) {
    manager_with(|_| {})
}

fn updates(out: &Outbox, to: SocketAddr) -> Vec<GameUpdate> {
    out.iter()
        .filter(|(a, _)| *a == to)
        .filter_map(|(_, m)| match parse_server_message(m) {
            Some(ServerMessage::Update(u)) => Some(u),
            _ => None,
        })
        .collect()
}

fn joined(outcome: JoinOutcome) -> (String, TankState) {
    match outcome {
        JoinOutcome::Joined { session_id, tank } => (session_id, tank),
        other => panic!("expected a join, got {other:?}"),
    }
}

async fn events(memory: &MemorySink, pump: EventPump, topic: &str) -> Vec<Value> {
    pump.finish(Duration::from_secs(1)).await;
    memory.events(topic)
}

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

fn create(
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

/// The exact bytes of a `game_update` and a `tank_moved` batch, so that faster
/// writers stay byte-compatible with the seed's messages: acks, a destroyed tank,
/// whole, one- and two-decimal coordinates, and a player id that needs escaping.
#[tokio::test]
async fn snapshots_and_move_batches_keep_their_exact_bytes() {
    let (mut m, _memory, _pump) = manager_with(|c| {
        c.rules.shot_cooldown_ticks = 1;
        c.rules.damage = 100;
        c.rules.shot_range = 5000.0;
    });
    let odd_id = "a\"1\\é";
    let (session, a) = joined(m.join(odd_id, addr(1), false, None));
    joined(m.join("b", addr(2), false, None));
    let mut out = Outbox::default();
    let mut deferred = crate::moves::MoveBatches::default();
    let mut tick = |m: &mut SessionManager| {
        m.step(&mut out);
        m.take_deferred(&mut deferred);
        let mut records = Vec::new();
        deferred.drain_records(|r| records.push(r));
        let batch = records.pop().expect("a tank_moved batch");
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        let payload = text(&batch.payload);
        // The timestamp as written: the shortest text of the tick's `f64`.
        let timestamp = payload
            .split(r#""timestamp":"#)
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap()
            .to_owned();
        let parsed: f64 = timestamp.parse().unwrap();
        assert_eq!(parsed.to_string(), timestamp);
        (text(out.get(0).1), payload, timestamp)
    };

    m.queue_move(odd_id, None, [123.45, 7.5], Some(41)).unwrap();
    m.queue_shot("b", None, Some(&a.id), Some(7)).unwrap();
    let (snapshot, batch, ts) = tick(&mut m);
    assert_eq!(
        snapshot,
        r#"{"action":"game_update","seq":1,"tanks":[{"id":"tank_0","position":[102.46,90.31],"health":0,"ack":41,"alive":false},{"id":"tank_1","position":[405.15,603.09],"health":100,"ack":7}]}"#
    );
    assert_eq!(
        batch,
        format!(
            r#"{{"event_type":"tank_moved","timestamp":{ts},"session_id":"{session}","tick":1,"moves":[{{"tank_id":"tank_0","player_id":"a\"1\\é","position":[102.46,90.31]}},{{"tank_id":"tank_1","player_id":"b","position":[405.15,603.09]}}]}}"#
        )
    );

    m.queue_move("b", None, [400.0, 600.5], Some(8)).unwrap();
    let (snapshot, batch, ts) = tick(&mut m);
    assert_eq!(
        snapshot,
        r#"{"action":"game_update","seq":2,"tanks":[{"id":"tank_0","position":[102.46,90.31],"health":0,"ack":41,"alive":false},{"id":"tank_1","position":[400,600.5],"health":100,"ack":8}]}"#
    );
    assert_eq!(
        batch,
        format!(
            r#"{{"event_type":"tank_moved","timestamp":{ts},"session_id":"{session}","tick":2,"moves":[{{"tank_id":"tank_1","player_id":"b","position":[400,600.5]}}]}}"#
        )
    );
}

/// The exact bytes of a `game_over`: its keys in alphabetical order, as the server has
/// always written them, `winner` null when there is none.
#[tokio::test]
async fn game_over_keeps_its_exact_bytes() {
    let (mut m, _memory, _pump) = manager();
    let (session, _) = joined(m.join("p1", addr(1), false, None));
    let mut out = Outbox::default();
    assert_eq!(m.end_all("server_shutdown", &mut out), 1);
    assert_eq!(
        String::from_utf8(out.get(0).1.to_vec()).unwrap(),
        format!(
            r#"{{"action":"game_over","reason":"server_shutdown","session_id":"{session}","winner":null}}"#
        )
    );
}
