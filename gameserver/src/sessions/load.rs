//! The load report the operator polls (`GET /v1/load`), and the recently finished
//! matches it lists, so the operator can finish its Matches and a repeated create of a
//! finished match is answered with the session it had.

use tanks_core::protocol::control::{FinishedSession, LoadReport, MatchSession};
use tanks_core::token::unix_now;

use super::SessionManager;

/// Recently finished match sessions kept for the load report.
pub const FINISHED_KEPT: usize = 256;

impl SessionManager {
    pub fn load_report(&self) -> LoadReport {
        let matches = self
            .sessions
            .iter()
            .flatten()
            .filter_map(|s| {
                s.match_id.as_ref().map(|m| MatchSession {
                    match_id: m.clone(),
                    session_id: s.id.clone(),
                    players: s.players.len() as u32,
                    created_at: s.created_at,
                })
            })
            .collect();
        LoadReport {
            server: self.config.server.clone(),
            sessions: self.live as u32,
            players: self.players.len() as u32,
            session_capacity: self.config.max_sessions as u32,
            players_per_session: self.config.players_per_session as u32,
            draining: self.draining,
            ready: !self.draining,
            matches,
            finished: self.finished.iter().cloned().collect(),
        }
    }

    /// Remembers a match session that ended, forgetting the oldest past
    /// [`FINISHED_KEPT`].
    pub(super) fn record_finished(&mut self, match_id: String, session_id: String, reason: &str) {
        if self.finished.len() == FINISHED_KEPT {
            self.finished.pop_front();
        }
        self.finished.push_back(FinishedSession {
            match_id,
            session_id,
            finished_at: unix_now(),
            reason: reason.to_owned(),
        });
    }

    /// The remembered session of a finished match.
    pub(super) fn finished_session(&self, match_id: &str) -> Option<&FinishedSession> {
        self.finished.iter().find(|f| f.match_id == match_id)
    }
}
