//! The game server's internal control interface, spoken by the operator.
//!
//! HTTP/JSON on its own port (default 8890), never exposed to players. Every call
//! except the probes carries `Authorization: Bearer <shared secret>`.
//!
//! | call                 | body                    | answer                          |
//! |----------------------|-------------------------|---------------------------------|
//! | `GET  /v1/load`      |                         | [`LoadReport`]                  |
//! | `POST /v1/sessions`  | [`CreateSession`]       | [`SessionCreated`], or 409 [`ControlError`] when full or draining |
//! | `POST /v1/drain`     |                         | [`LoadReport`] (now draining)   |
//! | `GET  /healthz`      |                         | 200 while the process is alive  |
//! | `GET  /readyz`       |                         | 200 when it accepts sessions    |
//!
//! Creating a session is idempotent on `match_id`: asking twice returns the same
//! session with `created: false`.

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONTROL_PORT: u16 = 8890;
pub const LOAD_PATH: &str = "/v1/load";
pub const SESSIONS_PATH: &str = "/v1/sessions";
pub const DRAIN_PATH: &str = "/v1/drain";
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSession {
    pub match_id: String,
    /// Player ids expected in the match; others may not join when tokens are required.
    #[serde(default)]
    pub players: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCreated {
    pub match_id: String,
    pub session_id: String,
    /// False when the session already existed for this match id.
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlError {
    /// Machine-readable: `draining`, `full`, `bad_request`, `unauthorized`.
    pub error: String,
    pub message: String,
}

/// What a game server says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// The server's name (the pod name under the operator).
    pub server: String,
    pub sessions: u32,
    pub players: u32,
    /// Sessions this server can host at once.
    pub session_capacity: u32,
    pub players_per_session: u32,
    pub draining: bool,
    pub ready: bool,
    /// Live sessions created for matches.
    #[serde(default)]
    pub matches: Vec<MatchSession>,
    /// Recently ended match sessions (bounded), so the operator can finish Matches.
    #[serde(default)]
    pub finished: Vec<FinishedSession>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchSession {
    pub match_id: String,
    pub session_id: String,
    pub players: u32,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedSession {
    pub match_id: String,
    pub session_id: String,
    pub finished_at: u64,
    /// `completed` (the match ended by the rules), `abandoned` (everyone left), ...
    pub reason: String,
}
