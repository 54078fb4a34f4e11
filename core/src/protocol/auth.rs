//! Auth server protocol: newline-delimited JSON over TCP (default port 8888), and the
//! `auth_events` Kafka event schema.
//!
//! A request is one JSON object per line, `{"action": .., ..}`; the answer is one JSON
//! object per line with `status` (`success`, `failure` or `error`) and `message`. A
//! connection may carry one request (the seed client's way) or many.
//!
//! | action     | fields                  | success adds                                   |
//! |------------|-------------------------|------------------------------------------------|
//! | `register` | `username`, `password`  | `username`                                     |
//! | `login`    | `username`, `password`  | `session_id` = `token`, `expires_at`, `username` |
//! | `verify`   | `token`                 | `username`, `expires_at`                       |
//! | `logout`   | `token`                 | `username`                                     |
//!
//! `failure` is a refused request (wrong credentials, taken name, bad token) and carries
//! a machine-readable `reason`; `error` is a malformed one, with the seed's messages.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const DEFAULT_PORT: u16 = 8888;
pub const DEFAULT_METRICS_PORT: u16 = 8000;

/// The seed's exact error messages; seed clients may match on them.
pub const MSG_EMPTY: &str = "Empty message received";
pub const MSG_UNKNOWN_ACTION: &str = "Unknown or missing action";
pub const MSG_BAD_UTF8: &str = "Invalid character encoding. UTF-8 expected.";
pub const MSG_BAD_JSON: &str = "Invalid JSON format";
/// Every failed login's message starts with this (the seed's prefix).
pub const LOGIN_FAILED_PREFIX: &str = "Authentication failed: ";
/// The one message for an unknown user and a wrong password alike: telling them apart
/// would let anyone enumerate accounts. English texts ([`Messages::English`]).
pub const MSG_BAD_CREDENTIALS: &str = "Authentication failed: invalid username or password";
/// A successful login's message in English ([`Messages::English`]).
pub const MSG_LOGIN_SUCCESS: &str = "Authentication successful";
/// [`MSG_BAD_CREDENTIALS`] in the prototype's words ([`Messages::Prototype`]): its prefix,
/// and its wrong-password text "Неверный пароль" word for word, joined with its
/// unknown-user case in one sentence, so the answer is the same for both.
pub const MSG_BAD_CREDENTIALS_PROTOTYPE: &str =
    "Authentication failed: Неверный пароль или пользователь не найден.";

/// Which texts the `message` of login answers carry. Clients should match on `status`
/// and `reason`; the prototype's clients match on the text, so its texts are the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Messages {
    /// The prototype's texts: `Пользователь <username> успешно аутентифицирован.`
    #[default]
    Prototype,
    /// English texts: `Authentication successful`.
    English,
}

impl Messages {
    /// A successful login's message for the account `username` (as registered).
    pub fn login_success(self, username: &str) -> String {
        match self {
            Messages::Prototype => format!("Пользователь {username} успешно аутентифицирован."),
            Messages::English => MSG_LOGIN_SUCCESS.to_owned(),
        }
    }

    /// The one answer to a wrong password and an unknown user alike.
    pub fn bad_credentials(self) -> &'static str {
        match self {
            Messages::Prototype => MSG_BAD_CREDENTIALS_PROTOTYPE,
            Messages::English => MSG_BAD_CREDENTIALS,
        }
    }
}

/// Prefix of every Redis key the auth server writes (configurable, so environments or
/// test runs can share one Redis).
pub const DEFAULT_REDIS_PREFIX: &str = "auth:";

/// Redis key under which a revoked token's id is kept until the token expires. Any
/// service holding a token can check `EXISTS` on it to honour logouts.
pub fn revoked_token_key(prefix: &str, jti: &str) -> String {
    format!("{prefix}revoked:{jti}")
}

/// A typed request, for clients of the auth server (the game server's `LOGIN`, the
/// load tool, tests). The server parses with [`parse_request`] instead, to give the
/// seed's error messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Request {
    Register { username: String, password: String },
    Login { username: String, password: String },
    Verify { token: String },
    Logout { token: String },
}

impl Request {
    pub fn action(&self) -> Action {
        match self {
            Request::Register { .. } => Action::Register,
            Request::Login { .. } => Action::Login,
            Request::Verify { .. } => Action::Verify,
            Request::Logout { .. } => Action::Logout,
        }
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("requests serialize");
        line.push('\n');
        line
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Register,
    Login,
    Verify,
    Logout,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Register,
        Action::Login,
        Action::Verify,
        Action::Logout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Register => "register",
            Action::Login => "login",
            Action::Verify => "verify",
            Action::Logout => "logout",
        }
    }
}

/// Why a line is not a request. `Display` is the message sent back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{MSG_EMPTY}")]
    Empty,
    #[error("{MSG_BAD_UTF8}")]
    InvalidUtf8,
    #[error("{MSG_BAD_JSON}")]
    InvalidJson,
    #[error("{MSG_UNKNOWN_ACTION}")]
    UnknownAction,
    /// A known action without one of its fields, or with a field that is not a string.
    #[error("Missing or invalid field: {0}")]
    MissingField(&'static str),
}

/// Parses one line (without its newline) the way the seed did, in the seed's order:
/// encoding, emptiness, JSON, action, fields. Unknown extra fields are ignored.
pub fn parse_request(line: &[u8]) -> Result<Request, ParseError> {
    let text = std::str::from_utf8(line).map_err(|_| ParseError::InvalidUtf8)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    let value: Value = serde_json::from_str(text).map_err(|_| ParseError::InvalidJson)?;
    // Valid JSON that is not an object has no action either.
    let Value::Object(mut object) = value else {
        return Err(ParseError::UnknownAction);
    };
    let mut field = |name: &'static str| match object.remove(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ParseError::MissingField(name)),
    };
    let action = field("action").map_err(|_| ParseError::UnknownAction)?;
    Ok(match action.as_str() {
        "register" => Request::Register {
            username: field("username")?,
            password: field("password")?,
        },
        "login" => Request::Login {
            username: field("username")?,
            password: field("password")?,
        },
        "verify" => Request::Verify {
            token: field("token")?,
        },
        "logout" => Request::Logout {
            token: field("token")?,
        },
        _ => return Err(ParseError::UnknownAction),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Success,
    /// The request was understood and refused.
    Failure,
    /// The request was not understood (or the server could not serve it).
    Error,
}

/// Every answer. Fields other than `status` and `message` appear only when set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub status: Status,
    pub message: String,
    /// The session token, under the seed's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The same token under a clearer name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// When the token expires, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The account's name as registered (its case may differ from what was typed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Machine-readable cause of a `failure` or `error`, see [`reason`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Values of [`Response::reason`].
pub mod reason {
    pub const INVALID_CREDENTIALS: &str = "invalid_credentials";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const USERNAME_TAKEN: &str = "username_taken";
    pub const INVALID_USERNAME: &str = "invalid_username";
    pub const WEAK_PASSWORD: &str = "invalid_password";
    pub const INVALID_TOKEN: &str = "invalid_token";
    pub const TOKEN_EXPIRED: &str = "token_expired";
    pub const TOKEN_REVOKED: &str = "token_revoked";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const LINE_TOO_LONG: &str = "line_too_long";
    pub const TIMEOUT: &str = "timeout";
    pub const BUSY: &str = "busy";
    pub const SHUTTING_DOWN: &str = "shutting_down";
    pub const UNAVAILABLE: &str = "unavailable";
}

impl Response {
    fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            session_id: None,
            token: None,
            expires_at: None,
            username: None,
            reason: None,
        }
    }

    pub fn success(message: impl Into<String>) -> Self {
        Self::new(Status::Success, message)
    }

    pub fn failure(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.to_owned()),
            ..Self::new(Status::Failure, message)
        }
    }

    pub fn error(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.to_owned()),
            ..Self::new(Status::Error, message)
        }
    }

    /// The answer to a line that [`parse_request`] refused: `{"status":"error",..}`
    /// with the seed's message.
    pub fn from_parse_error(e: &ParseError) -> Self {
        Self::error(reason::BAD_REQUEST, e.to_string())
    }

    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// A successful login: the token under both names and its expiry.
    pub fn with_token(mut self, token: String, expires_at: u64) -> Self {
        self.session_id = Some(token.clone());
        self.token = Some(token);
        self.expires_at = Some(expires_at);
        self
    }

    pub fn is_success(&self) -> bool {
        self.status == Status::Success
    }

    /// The response as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("responses serialize");
        line.push(b'\n');
        line
    }
}

/// `event_type` values on the `auth_events` topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthEventType {
    UserRegistered,
    UserLoggedIn,
    UserLoginFailed,
    UserLoggedOut,
}

/// Values of [`AuthEvent::reason`] on `user_login_failed`. Unlike the client's answer,
/// the audit trail tells an unknown user from a wrong password: it is internal, and
/// security analytics need the difference.
pub mod failure_reason {
    pub const UNKNOWN_USER: &str = "unknown_user";
    pub const WRONG_PASSWORD: &str = "wrong_password";
    pub const INVALID_USERNAME: &str = "invalid_username";
    pub const RATE_LIMITED: &str = "rate_limited";
}

/// One event on `auth_events`, keyed by [`AuthEvent::user_key`] so each user's events
/// stay ordered in one partition. Never carries a password or a token (only its id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthEvent {
    pub event_type: AuthEventType,
    /// Seconds since the Unix epoch, with sub-second precision (the seed's format).
    pub timestamp: f64,
    /// The name as registered, or as typed when no such user exists.
    pub username: String,
    /// The client's address, for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// Why a login failed, see [`failure_reason`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The session token's id (`jti`), on login and logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl AuthEvent {
    pub fn new(event_type: AuthEventType, username: &str, timestamp: f64) -> Self {
        Self {
            event_type,
            timestamp,
            username: username.to_owned(),
            source_ip: None,
            reason: None,
            token_id: None,
            expires_at: None,
        }
    }

    /// The Kafka key: the user's canonical (lower-case) name, so "Alice" and "alice"
    /// land in the same partition.
    pub fn user_key(&self) -> String {
        self.username.to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_login_request_parses() {
        let line = br#"{"action": "login", "username": "alice", "password": "pw"}"#;
        assert_eq!(
            parse_request(line),
            Ok(Request::Login {
                username: "alice".into(),
                password: "pw".into()
            })
        );
    }

    #[test]
    fn bad_lines_give_the_seed_messages() {
        let cases: &[(&[u8], &str)] = &[
            (b"", MSG_EMPTY),
            (b"  \r", MSG_EMPTY),
            (b"\xff\xfe{}", MSG_BAD_UTF8),
            (b"{not json", MSG_BAD_JSON),
            (b"{}", MSG_UNKNOWN_ACTION),
            (b"[1,2]", MSG_UNKNOWN_ACTION),
            (br#"{"action": 5}"#, MSG_UNKNOWN_ACTION),
            (br#"{"action": "dance"}"#, MSG_UNKNOWN_ACTION),
            (
                br#"{"action": "login", "username": "a"}"#,
                "Missing or invalid field: password",
            ),
            (
                br#"{"action": "register", "password": "a"}"#,
                "Missing or invalid field: username",
            ),
            (
                br#"{"action": "verify", "token": 7}"#,
                "Missing or invalid field: token",
            ),
        ];
        for (line, message) in cases {
            let err = parse_request(line).unwrap_err();
            assert_eq!(
                err.to_string(),
                *message,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn typed_requests_round_trip_through_the_parser() {
        for request in [
            Request::Register {
                username: "a".into(),
                password: "b".into(),
            },
            Request::Login {
                username: "a".into(),
                password: "b".into(),
            },
            Request::Verify { token: "t".into() },
            Request::Logout { token: "t".into() },
        ] {
            let line = request.to_line();
            assert_eq!(parse_request(line.trim_end().as_bytes()), Ok(request));
        }
    }

    #[test]
    fn responses_omit_unset_fields() {
        let json: Value =
            serde_json::from_slice(&Response::error("bad_request", MSG_BAD_JSON).to_line())
                .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status":"error","message":MSG_BAD_JSON,"reason":"bad_request"})
        );
        let login = Response::success("ok").with_token("tok".into(), 9);
        let json: Value = serde_json::from_slice(&login.to_line()).unwrap();
        assert_eq!(json["session_id"], "tok");
        assert_eq!(json["token"], "tok");
        assert_eq!(json["expires_at"], 9);
    }

    #[test]
    fn prototype_texts_keep_the_seeds_words_and_one_failure_answer() {
        assert_eq!(
            Messages::default().login_success("Alice"),
            "Пользователь Alice успешно аутентифицирован."
        );
        assert_eq!(
            Messages::English.login_success("Alice"),
            "Authentication successful"
        );
        for messages in [Messages::Prototype, Messages::English] {
            assert!(messages.bad_credentials().starts_with(LOGIN_FAILED_PREFIX));
        }
        assert!(MSG_BAD_CREDENTIALS_PROTOTYPE.contains("Неверный пароль"));
    }

    #[test]
    fn events_carry_type_and_timestamp() {
        let mut event = AuthEvent::new(AuthEventType::UserLoginFailed, "Alice", 1.5);
        event.reason = Some(failure_reason::WRONG_PASSWORD.into());
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event_type"], "user_login_failed");
        assert_eq!(json["timestamp"], 1.5);
        assert_eq!(json["reason"], "wrong_password");
        assert_eq!(event.user_key(), "alice");
    }
}
