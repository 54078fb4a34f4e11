//! The matchmaker's side of the operator: what it publishes to `matchmaking_events`
//! and what it reads back from `match_allocations`.
//!
//! A [`MatchRequest`] is a superset of the seed's `{"event_type":"new_match_created",
//! "match_details":{..}}` body (see [`super::game::MatchmakingEvent`]): it adds an
//! `event_id` (the idempotency key; the match id, or the AMQP `message_id`, stands in when
//! it is missing) and the `fleet` the match should run on. A seed body parses unchanged.

use serde::{Deserialize, Serialize};

pub use super::game::NEW_MATCH_CREATED;

/// One `matchmaking_events` message.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MatchRequest {
    pub event_type: String,
    /// Unique per event; a redelivered or republished event carries the same id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default)]
    pub match_details: MatchRequestDetails,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MatchRequestDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_id: Option<String>,
    #[serde(default)]
    pub players: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The GameFleet to run the match on (the operator's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,
}

impl MatchRequest {
    /// A `new_match_created` request.
    pub fn new(event_id: impl Into<String>, players: Vec<String>) -> Self {
        MatchRequest {
            event_type: NEW_MATCH_CREATED.into(),
            event_id: Some(event_id.into()),
            match_details: MatchRequestDetails {
                players,
                ..Default::default()
            },
        }
    }
}

/// Where a client reaches its match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    /// `UDP`.
    pub protocol: String,
}

/// One `match_allocations` message: the match got a server. Published at least once per
/// allocation (a retry after a failure may publish it again, with the same content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchAllocated {
    /// `match_allocated`.
    pub event_type: String,
    /// The event id the match was created from.
    pub event_id: String,
    /// The matchmaker's match id, when the event had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_id: Option<String>,
    /// The `Match` resource: namespace and name.
    pub namespace: String,
    pub name: String,
    pub endpoint: Endpoint,
    pub session_id: String,
    pub game_server: String,
    #[serde(default)]
    pub players: Vec<String>,
}

pub const MATCH_ALLOCATED: &str = "match_allocated";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_body_parses() {
        let r: MatchRequest = serde_json::from_str(
            r#"{"event_type":"new_match_created","match_details":{"match_id":"m1","players":["a","b"],"map":"desert"}}"#,
        )
        .unwrap();
        assert_eq!(r.event_type, NEW_MATCH_CREATED);
        assert_eq!(r.event_id, None);
        assert_eq!(r.match_details.match_id.as_deref(), Some("m1"));
        assert_eq!(r.match_details.players, ["a", "b"]);
        assert_eq!(r.match_details.fleet, None);
    }

    #[test]
    fn ours_round_trips() {
        let mut r = MatchRequest::new("ev-1", vec!["p".into()]);
        r.match_details.fleet = Some("tanks".into());
        let back: MatchRequest = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
