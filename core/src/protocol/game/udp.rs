//! The play protocol: JSON datagrams over UDP (default port 9999), one JSON object per
//! datagram.
//!
//! | action       | fields                                             | answer                                   |
//! |--------------|----------------------------------------------------|------------------------------------------|
//! | `join_game`  | `player_id`, optional `token`, `session_id`        | `joined` / `join_failed` / `already_in_session` (`joined` also when a token moves a player to a new address) |
//! | `move`       | `player_id`, `position: [x, y]`, optional `seq`    | none; the next `game_update` shows it; `not_in_game` from an address the player is not bound to (join again) |
//! | `shoot`      | `player_id`, optional `target` (a tank id), `seq`  | none; the next `game_update` shows it    |
//! | `leave_game` | `player_id`                                        | `left_game` / `not_in_game`              |
//!
//! Every tick the server sends each player of a session one [`GameUpdate`]
//! (`{"action":"game_update","seq",..,"tanks":[{"id","position","health"},..]}`);
//! `seq` grows by one per snapshot of a session, so a client drops any update whose
//! `seq` is not above the last one it saw. Each tank entry carries `ack`, the `seq`
//! of the last input of its player the snapshot reflects.
//!
//! Parsing follows the seed's order: size, encoding, emptiness, JSON, action, fields,
//! and answers with the seed's messages. It never allocates for a well-formed
//! datagram whose strings have no escapes.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};

pub const DEFAULT_UDP_PORT: u16 = 9999;

/// Largest datagram we parse. A seed `join_game` with a token is a few hundred bytes.
pub const MAX_DATAGRAM: usize = 2048;
/// Longest player id we accept (the auth server's user names are shorter).
pub const MAX_PLAYER_ID: usize = 64;

// The seed's exact strings; seed clients may match on them.
pub const MSG_EMPTY_PAYLOAD: &str = "Empty JSON payload";
pub const MSG_BAD_UTF8: &str = "Invalid character encoding. UTF-8 expected.";
pub const MSG_BAD_JSON: &str = "Invalid JSON format";
pub const MSG_UNKNOWN_ACTION: &str = "Unknown action";
pub const MSG_NO_TANKS: &str = "No tanks available";
pub const MSG_LEFT: &str = "You have left the game.";
pub const MSG_NOT_IN_GAME: &str = "You are not currently in a game.";
// Ours, for cases the seed did not check.
pub const MSG_TOO_LARGE: &str = "Datagram too large";
pub const MSG_BAD_FIELDS: &str = "Invalid field types";
pub const MSG_MISSING_PLAYER_ID: &str = "Missing or invalid player_id";
pub const MSG_MISSING_POSITION: &str = "Missing or invalid position";

/// One parsed client datagram; strings borrow from the datagram when they can.
#[derive(Debug, Clone, PartialEq)]
pub enum Datagram<'a> {
    Join {
        player_id: Cow<'a, str>,
        token: Option<Cow<'a, str>>,
        session_id: Option<Cow<'a, str>>,
    },
    Move {
        player_id: Cow<'a, str>,
        position: [f64; 2],
        seq: Option<u64>,
    },
    Shoot {
        player_id: Cow<'a, str>,
        target: Option<Cow<'a, str>>,
        seq: Option<u64>,
    },
    Leave {
        player_id: Cow<'a, str>,
    },
}

impl Datagram<'_> {
    pub fn player_id(&self) -> &str {
        match self {
            Datagram::Join { player_id, .. }
            | Datagram::Move { player_id, .. }
            | Datagram::Shoot { player_id, .. }
            | Datagram::Leave { player_id } => player_id,
        }
    }

    /// Metric label.
    pub fn action(&self) -> &'static str {
        match self {
            Datagram::Join { .. } => "join_game",
            Datagram::Move { .. } => "move",
            Datagram::Shoot { .. } => "shoot",
            Datagram::Leave { .. } => "leave_game",
        }
    }
}

/// Why a datagram was refused. [`DatagramError::message`] is what the client is told,
/// [`DatagramError::reason`] the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramError {
    TooLarge,
    InvalidUtf8,
    Empty,
    InvalidJson,
    /// Valid JSON whose fields have the wrong types.
    InvalidFields,
    UnknownAction,
    MissingPlayerId,
    MissingPosition,
}

impl DatagramError {
    pub fn message(self) -> &'static str {
        match self {
            DatagramError::TooLarge => MSG_TOO_LARGE,
            DatagramError::InvalidUtf8 => MSG_BAD_UTF8,
            DatagramError::Empty => MSG_EMPTY_PAYLOAD,
            DatagramError::InvalidJson => MSG_BAD_JSON,
            DatagramError::InvalidFields => MSG_BAD_FIELDS,
            DatagramError::UnknownAction => MSG_UNKNOWN_ACTION,
            DatagramError::MissingPlayerId => MSG_MISSING_PLAYER_ID,
            DatagramError::MissingPosition => MSG_MISSING_POSITION,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            DatagramError::TooLarge => "too_large",
            DatagramError::InvalidUtf8 => "invalid_utf8",
            DatagramError::Empty => "empty",
            DatagramError::InvalidJson => "invalid_json",
            DatagramError::InvalidFields => "invalid_fields",
            DatagramError::UnknownAction => "unknown_action",
            DatagramError::MissingPlayerId => "missing_player_id",
            DatagramError::MissingPosition => "missing_position",
        }
    }
}

#[derive(Deserialize)]
struct RawDatagram<'a> {
    #[serde(borrow, default)]
    action: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "string_or_number")]
    player_id: Option<Cow<'a, str>>,
    #[serde(default)]
    position: Option<[f64; 2]>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    target: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
}

/// Seed clients may send a numeric player id; we treat it as its decimal text.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or an integer")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_string())))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_string())))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Visitor)
}

/// Parses one datagram the way the seed did, in its order, with its messages.
pub fn parse_datagram(bytes: &[u8]) -> Result<Datagram<'_>, DatagramError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(DatagramError::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DatagramError::InvalidUtf8)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(DatagramError::Empty);
    }
    let raw: RawDatagram<'_> = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DatagramError::InvalidFields,
        _ => DatagramError::InvalidJson,
    })?;
    let action = raw.action.ok_or(DatagramError::UnknownAction)?;
    if !matches!(
        action.as_ref(),
        "join_game" | "move" | "shoot" | "leave_game"
    ) {
        return Err(DatagramError::UnknownAction);
    }
    let player_id = raw
        .player_id
        .filter(|p| !p.is_empty() && p.len() <= MAX_PLAYER_ID)
        .ok_or(DatagramError::MissingPlayerId)?;
    Ok(match action.as_ref() {
        "join_game" => Datagram::Join {
            player_id,
            token: raw.token,
            session_id: raw.session_id,
        },
        "move" => {
            let position = raw
                .position
                .filter(|p| p.iter().all(|v| v.is_finite()))
                .ok_or(DatagramError::MissingPosition)?;
            Datagram::Move {
                player_id,
                position,
                seq: raw.seq,
            }
        }
        "shoot" => Datagram::Shoot {
            player_id,
            target: raw.target,
            seq: raw.seq,
        },
        _ => Datagram::Leave { player_id },
    })
}

/// `initial_state` of a join, and one tank of a [`GameUpdate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TankState {
    pub id: String,
    pub position: [f64; 2],
    pub health: i32,
    /// Seq of the last input of this tank's player reflected here (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
    /// False while destroyed (ours).
    #[serde(default = "yes")]
    pub alive: bool,
}

fn yes() -> bool {
    true
}

/// Every answer to a datagram except snapshots: `{"status": .., ..}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    Joined {
        session_id: String,
        tank_id: String,
        initial_state: TankState,
        /// Snapshots per second (ours).
        #[serde(default)]
        tick_rate: u32,
    },
    JoinFailed {
        reason: String,
    },
    AlreadyInSession {
        session_id: String,
        tank_id: String,
    },
    LeftGame {
        message: String,
    },
    NotInGame {
        message: String,
    },
    Error {
        message: String,
    },
}

/// The per-tick snapshot a session's players receive. The game server does not
/// serialize this type: it writes snapshots by hand on its hot path (its
/// `sessions::wire`), and its tests check that this type reads back exactly what that
/// writer wrote. Clients and tests decode with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GameUpdate {
    pub action: String,
    /// Grows by one per snapshot of the session.
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub tanks: Vec<TankState>,
}

/// Sent once when a session ends; `winner` is a team number when there is one. The
/// game server serializes this type, so the field order is the wire's key order
/// (alphabetical, as the server has always written it): do not reorder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GameOver {
    pub action: String,
    pub reason: String,
    pub session_id: String,
    #[serde(default)]
    pub winner: Option<u8>,
}

/// `game_over`'s `action`.
pub const GAME_OVER: &str = "game_over";

/// Any server-to-client datagram, for clients and tests.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    Reply(Reply),
    Update(GameUpdate),
    GameOver(GameOver),
}

/// Parses what the server sent.
pub fn parse_server_message(bytes: &[u8]) -> Option<ServerMessage> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    match value.get("action").and_then(|a| a.as_str()) {
        Some("game_update") => serde_json::from_value(value)
            .ok()
            .map(ServerMessage::Update),
        Some(GAME_OVER) => serde_json::from_value(value)
            .ok()
            .map(ServerMessage::GameOver),
        _ => serde_json::from_value(value).ok().map(ServerMessage::Reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_datagrams_parse() {
        let d = parse_datagram(br#"{"action": "join_game", "player_id": "p1"}"#).unwrap();
        assert_eq!(
            d,
            Datagram::Join {
                player_id: "p1".into(),
                token: None,
                session_id: None
            }
        );
        let d =
            parse_datagram(br#"{"action":"move","player_id":"p1","position":[10, 20.5]}"#).unwrap();
        assert_eq!(
            d,
            Datagram::Move {
                player_id: "p1".into(),
                position: [10.0, 20.5],
                seq: None
            }
        );
        let d = parse_datagram(br#"{"action":"shoot","player_id":7}"#).unwrap();
        assert_eq!(
            d,
            Datagram::Shoot {
                player_id: "7".into(),
                target: None,
                seq: None
            }
        );
        let d = parse_datagram(br#"{"action":"leave_game","player_id":"p1","extra":{"a":[1]}}"#)
            .unwrap();
        assert_eq!(
            d,
            Datagram::Leave {
                player_id: "p1".into()
            }
        );
    }

    #[test]
    fn well_formed_datagrams_borrow() {
        let d = parse_datagram(br#"{"action":"move","player_id":"p1","position":[1,2],"seq":9}"#)
            .unwrap();
        assert!(matches!(
            d,
            Datagram::Move {
                player_id: Cow::Borrowed("p1"),
                seq: Some(9),
                ..
            }
        ));
    }

    #[test]
    fn bad_datagrams_give_the_seed_messages() {
        let big = vec![b' '; MAX_DATAGRAM + 1];
        let cases: &[(&[u8], &str)] = &[
            (b"", MSG_EMPTY_PAYLOAD),
            (b"  \n", MSG_EMPTY_PAYLOAD),
            (b"\xff\xfe", MSG_BAD_UTF8),
            (b"{not json", MSG_BAD_JSON),
            (b"{\"action\":", MSG_BAD_JSON),
            (b"{}", MSG_UNKNOWN_ACTION),
            (b"[1]", MSG_BAD_FIELDS),
            (b"17", MSG_BAD_FIELDS),
            (br#"{"action":"dance","player_id":"p"}"#, MSG_UNKNOWN_ACTION),
            (br#"{"action":5}"#, MSG_BAD_FIELDS),
            (br#"{"action":"move"}"#, MSG_MISSING_PLAYER_ID),
            (
                br#"{"action":"move","player_id":""}"#,
                MSG_MISSING_PLAYER_ID,
            ),
            (
                br#"{"action":"move","player_id":"p"}"#,
                MSG_MISSING_POSITION,
            ),
            (
                br#"{"action":"move","player_id":"p","position":[1]}"#,
                MSG_BAD_FIELDS,
            ),
            (
                br#"{"action":"move","player_id":"p","position":"x"}"#,
                MSG_BAD_FIELDS,
            ),
            (
                br#"{"action":"move","player_id":"p","position":[1e999,1]}"#,
                MSG_BAD_JSON,
            ),
            (br#"{"action":"move","player_id":{"a":1}}"#, MSG_BAD_FIELDS),
            (&big, MSG_TOO_LARGE),
        ];
        for (bytes, message) in cases {
            let err = parse_datagram(bytes).unwrap_err();
            assert_eq!(
                err.message(),
                *message,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let long_id = format!(
            r#"{{"action":"move","player_id":"{}"}}"#,
            "x".repeat(MAX_PLAYER_ID + 1)
        );
        assert_eq!(
            parse_datagram(long_id.as_bytes()),
            Err(DatagramError::MissingPlayerId)
        );
    }

    #[test]
    fn replies_have_the_seed_shapes() {
        let json = serde_json::to_value(Reply::LeftGame {
            message: MSG_LEFT.into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status":"left_game","message":"You have left the game."})
        );
        let json = serde_json::to_value(Reply::JoinFailed {
            reason: MSG_NO_TANKS.into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status":"join_failed","reason":"No tanks available"})
        );
    }
}
