//! The matchmaker's side: what it publishes to `matchmaking_events` and what it reads
//! back from `match_allocations`.
//!
//! A [`MatchRequest`] is the one type of a `matchmaking_events` body, read by the
//! operator's consumer and by a standalone game server's. It is a superset of the
//! seed's `{"event_type":"new_match_created","match_details":{..}}`: it adds an
//! `event_id` (the idempotency key, see [`MatchRequest::key`]) and the `fleet` the match
//! should run on. A seed body parses unchanged.

use serde::{Deserialize, Serialize};

/// The `event_type` of a request for a new match, the only one there is.
pub const NEW_MATCH_CREATED: &str = "new_match_created";

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

    /// The event's idempotency key: its `event_id`, else its `match_details.match_id`,
    /// else `message_id` (the AMQP property). The first one present is the key even when
    /// it is blank: a blank id is for the consumer to refuse, not to skip, so that every
    /// consumer keys one event the same way. None when the event names no id at all.
    pub fn key<'a>(&'a self, message_id: Option<&'a str>) -> Option<&'a str> {
        self.event_id
            .as_deref()
            .or(self.match_details.match_id.as_deref())
            .or(message_id)
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
    fn the_key_is_the_event_id_else_the_match_id_else_the_message_id() {
        let parse = |body: &str| serde_json::from_str::<MatchRequest>(body).unwrap();
        let both = parse(
            r#"{"event_type":"new_match_created","event_id":"ev","match_details":{"match_id":"m"}}"#,
        );
        assert_eq!(both.key(Some("msg")), Some("ev"));
        let seed = parse(r#"{"event_type":"new_match_created","match_details":{"match_id":"m"}}"#);
        assert_eq!(seed.key(Some("msg")), Some("m"));
        let bare = parse(r#"{"event_type":"new_match_created"}"#);
        assert_eq!(bare.key(Some("msg")), Some("msg"));
        assert_eq!(bare.key(None), None);
        let blank = parse(r#"{"event_type":"new_match_created","event_id":" "}"#);
        assert_eq!(
            blank.key(Some("msg")),
            Some(" "),
            "a blank id is not skipped"
        );
    }

    #[test]
    fn ours_round_trips() {
        let mut r = MatchRequest::new("ev-1", vec!["p".into()]);
        r.match_details.fleet = Some("tanks".into());
        let back: MatchRequest = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
