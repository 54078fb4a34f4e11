//! The bytes a session's players receive from the tick: the one definition of
//! `game_update` and `game_over` on the server side.
//!
//! `game_update` is written by hand ([`write_snapshot`]): it is the hottest
//! serialization in the server. `tanks_core`'s `GameUpdate` is kept for clients and
//! tests to read it with, and the tests below check that it reads back exactly what is
//! written here. `game_over` is rare, so it is `tanks_core`'s `GameOver`, serialized.

use tanks_core::protocol::game::udp::{GAME_OVER, GameOver};

use super::Session;
use crate::outbox::{Outbox, write_coord, write_i64, write_u64};
use crate::pool::TankPool;
use crate::rules::Tank;

/// A player's entries in the snapshot and the `tank_moved` batch, up to the
/// position: one copy per tick each, instead of a few small writes and the
/// escaping of the player id.
pub(super) struct JsonPrefixes {
    /// `{"id":"tank_<n>","position":[`
    pub(super) snapshot: Box<[u8]>,
    /// `{"tank_id":"tank_<n>","player_id":"<id>","position":[`
    pub(super) moved: Box<[u8]>,
}

impl JsonPrefixes {
    pub(super) fn new(tank_id: &str, player_id: &str) -> Self {
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

/// The session's `game_update`, serialized once, addressed to each of its players.
/// Written by hand, bytes appended without `write!`: it is the hottest
/// serialization in the server, and tank ids are ours (`tank_<n>`), so nothing
/// needs escaping.
pub(super) fn write_snapshot(out: &mut Outbox, session: &Session, pool: &TankPool) {
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

/// One tank of a `game_update`, in the field order of `TankState`; `prefix` is
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

/// The session's `game_over`, addressed to each of its players.
pub(super) fn write_game_over(
    out: &mut Outbox,
    session: &Session,
    reason: &str,
    winner: Option<u8>,
) {
    out.begin();
    let message = GameOver {
        action: GAME_OVER.to_owned(),
        reason: reason.to_owned(),
        session_id: session.id.clone(),
        winner,
    };
    // Writing into a `Vec` cannot fail, and the message has no map with non-string keys.
    let _ = serde_json::to_writer(out.writer(), &message);
    for player in &session.players {
        out.send_to(player.addr);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tanks_core::protocol::game::udp::{ServerMessage, parse_server_message};

    use crate::outbox::Outbox;
    use crate::sessions::SessionManager;
    use crate::sessions::testkit::*;

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

    /// `tanks_core`'s `GameUpdate` reads back every key and value the writer puts in a
    /// snapshot, for each kind of tank entry: read and written again by serde, it is
    /// the same JSON, but for `"alive":true`, which the writer leaves out (the type's
    /// default) and serde writes.
    #[tokio::test]
    async fn the_core_game_update_reads_back_what_is_written() {
        let (mut m, _memory, _pump) = manager_with(|c| {
            c.rules.shot_cooldown_ticks = 1;
            c.rules.damage = 100;
            c.rules.shot_range = 5000.0;
        });
        let (_, shot) = joined(m.join("shot", addr(1), false, None));
        joined(m.join("shooter", addr(2), false, None));
        joined(m.join("idle", addr(3), false, None));
        m.queue_move("shot", None, [123.45, 7.5], Some(41)).unwrap();
        m.queue_shot("shooter", None, Some(&shot.id), Some(7))
            .unwrap();
        let mut out = Outbox::default();
        m.step(&mut out);
        let bytes = out.get(0).1;
        let Some(ServerMessage::Update(update)) = parse_server_message(bytes) else {
            panic!("not a game_update: {}", String::from_utf8_lossy(bytes));
        };
        let kinds: Vec<(bool, bool)> = update
            .tanks
            .iter()
            .map(|t| (t.alive, t.ack.is_some()))
            .collect();
        assert_eq!(kinds, [(false, true), (true, true), (true, false)]);

        let mut written: Value = serde_json::from_slice(bytes).unwrap();
        let mut read_back = serde_json::to_value(&update).unwrap();
        for tank in read_back["tanks"].as_array_mut().unwrap() {
            if tank["alive"] == true {
                tank.as_object_mut().unwrap().remove("alive");
            }
        }
        // The writer drops a whole coordinate's fraction (`400`), serde does not
        // (`400.0`): compare the numbers' values.
        numbers_as_f64(&mut written);
        numbers_as_f64(&mut read_back);
        assert_eq!(read_back, written);
    }

    fn numbers_as_f64(v: &mut Value) {
        match v {
            Value::Number(n) => *v = Value::from(n.as_f64().unwrap()),
            Value::Array(a) => a.iter_mut().for_each(numbers_as_f64),
            Value::Object(o) => o.values_mut().for_each(numbers_as_f64),
            _ => {}
        }
    }
}
