//! The tick's `tank_moved` batches (one per session, in the shape of
//! [`TankMovedBatch`]), captured under the session lock as raw positions and written
//! into event payloads after the lock is released.
//!
//! Writing them in the tick was 40% of its time at 5,000 players (a payload
//! allocation per session, four numbers formatted per tank), time the receive thread
//! waited for the lock and the tick's snapshots waited to leave. Capturing a move
//! copies its constant prefix and two floats into buffers reused from tick to tick:
//! the prefix while it is in cache (reading it back through a pointer after the tick
//! cost a cache miss per tank).
//!
//! [`TankMovedBatch`]: tanks_core::protocol::game::kafka::TankMovedBatch

use std::io::Write;
use std::ops::Range;

use tanks_core::events::{Record, TANK_COORDINATES_HISTORY};
use tanks_core::protocol::game::kafka::TANK_MOVED;

use crate::outbox::{write_coord, write_u64};

/// Captured batches, in session order within each tick.
#[derive(Default)]
pub struct MoveBatches {
    batches: Vec<Batch>,
    /// Every batch's session id, back to back.
    ids: String,
    /// Every move's prefix, back to back.
    prefixes: Vec<u8>,
    moves: Vec<Move>,
}

struct Batch {
    timestamp: f64,
    tick: u64,
    session_id: Range<usize>,
    moves: Range<usize>,
}

struct Move {
    /// In `prefixes`: `{"tank_id":"tank_<n>","player_id":"<id>","position":[`.
    prefix: Range<usize>,
    position: [f64; 2],
}

impl MoveBatches {
    /// Starts a session's batch; [`MoveBatches::push`] adds its moves.
    pub fn begin(&mut self, session_id: &str, tick: u64, timestamp: f64) {
        let start = self.ids.len();
        self.ids.push_str(session_id);
        self.batches.push(Batch {
            timestamp,
            tick,
            session_id: start..self.ids.len(),
            moves: self.moves.len()..self.moves.len(),
        });
    }

    /// Adds a move to the batch last begun.
    pub fn push(&mut self, prefix: &[u8], position: [f64; 2]) {
        let start = self.prefixes.len();
        self.prefixes.extend_from_slice(prefix);
        self.moves.push(Move {
            prefix: start..self.prefixes.len(),
            position,
        });
        if let Some(batch) = self.batches.last_mut() {
            batch.moves.end = self.moves.len();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Moves every captured batch to `into` (which should be empty: its own are
    /// dropped), leaving this one empty with `into`'s old buffers, so neither side
    /// allocates in the steady state.
    pub fn take_into(&mut self, into: &mut MoveBatches) {
        into.clear();
        std::mem::swap(self, into);
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.ids.clear();
        self.prefixes.clear();
        self.moves.clear();
    }

    /// Writes every batch as a `tank_coordinates_history` record keyed by session
    /// (so a session's batches stay in order), then clears.
    pub fn drain_records(&mut self, mut record: impl FnMut(Record)) {
        // Up to the session id; the same for every batch of a tick, so formatted once.
        let mut header = Vec::with_capacity(96);
        let mut header_of = None;
        for batch in &self.batches {
            if header_of != Some(batch.timestamp) {
                header.clear();
                let _ = write!(
                    header,
                    r#"{{"event_type":"{TANK_MOVED}","timestamp":{},"session_id":""#,
                    batch.timestamp
                );
                header_of = Some(batch.timestamp);
            }
            let id = &self.ids[batch.session_id.clone()];
            let moves = &self.moves[batch.moves.clone()];
            let mut payload = Vec::with_capacity(header.len() + 32 + id.len() + 96 * moves.len());
            payload.extend_from_slice(&header);
            payload.extend_from_slice(id.as_bytes());
            payload.extend_from_slice(br#"","tick":"#);
            write_u64(&mut payload, batch.tick);
            payload.extend_from_slice(br#","moves":["#);
            for (i, m) in moves.iter().enumerate() {
                if i > 0 {
                    payload.push(b',');
                }
                payload.extend_from_slice(&self.prefixes[m.prefix.clone()]);
                write_coord(&mut payload, m.position[0]);
                payload.push(b',');
                write_coord(&mut payload, m.position[1]);
                payload.extend_from_slice(b"]}");
            }
            payload.extend_from_slice(b"]}");
            record(Record {
                topic: TANK_COORDINATES_HISTORY,
                key: id.to_owned(),
                payload,
            });
        }
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_their_sessions_moves_and_order() {
        let a = br#"{"tank_id":"tank_0","player_id":"a","position":["#;
        let b = br#"{"tank_id":"tank_1","player_id":"b","position":["#;
        let mut captured = MoveBatches::default();
        captured.begin("s1", 7, 1.5);
        captured.push(a, [1.0, 2.25]);
        captured.push(b, [100.0, 0.5]);
        captured.begin("s2", 7, 1.5);
        captured.push(a, [3.0, 4.0]);
        let mut taken = MoveBatches::default();
        captured.take_into(&mut taken);
        assert!(captured.is_empty());
        assert_eq!(taken.len(), 2);
        let mut records = Vec::new();
        taken.drain_records(|r| records.push(r));
        assert!(taken.is_empty());
        let text: Vec<_> = records
            .iter()
            .map(|r| (r.topic, r.key.as_str(), String::from_utf8_lossy(&r.payload)))
            .collect();
        assert_eq!(
            text[0],
            (
                TANK_COORDINATES_HISTORY,
                "s1",
                r#"{"event_type":"tank_moved","timestamp":1.5,"session_id":"s1","tick":7,"moves":[{"tank_id":"tank_0","player_id":"a","position":[1,2.25]},{"tank_id":"tank_1","player_id":"b","position":[100,0.5]}]}"#.into()
            )
        );
        assert_eq!(text[1].1, "s2");
        for r in &records {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            assert_eq!(v["event_type"], "tank_moved");
        }
    }
}
