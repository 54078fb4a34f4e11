//! Tokens revoked by a logout stop joining games before they expire.
//!
//! The auth server records a logout in Redis as `<prefix>revoked:<jti>`, kept until the
//! token would have expired ([`revoked_token_key`]). At `join_game` with a valid token,
//! the UDP thread asks Redis `EXISTS` for that key: one round trip on the local network,
//! once per player and match, with a short timeout, a small cache and a pause after a
//! failure, so an unreachable Redis costs the receive thread at most one timeout per
//! [`RETRY_AFTER`]. Why Redis rather than a Kafka feed of logouts, and why open by
//! default when Redis cannot answer: docs/gameserver.md, "Revoked tokens".

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use prometheus::IntCounterVec;
use tanks_core::protocol::auth::revoked_token_key;
use tanks_core::token::unix_now;

/// Refusal of a logged-out token.
pub const MSG_TOKEN_REVOKED: &str = "Token revoked: you logged out, log in again";
/// Refusal when revocations cannot be checked and the server is set to fail closed.
pub const MSG_REVOCATION_UNAVAILABLE: &str = "Cannot check the token now, try again shortly";

/// A token seen not revoked is not asked about again for this long: how late a logout
/// can reach a player already answered (a client repeats `join_game` until it hears back).
pub const NOT_REVOKED_FOR: Duration = Duration::from_secs(1);
/// After Redis failed to answer, it is not asked again for this long (joins meanwhile
/// follow [`WhenUnavailable`]).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Most answers kept; past it, expired ones go, then all (a miss only costs a lookup).
const CACHE_CAPACITY: usize = 10_000;

/// What a join does when Redis cannot say whether its token was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WhenUnavailable {
    /// Let it join (counted in `gameserver_revocation_checks_total{result="unavailable"}`).
    Open,
    /// Refuse it with [`MSG_REVOCATION_UNAVAILABLE`].
    Closed,
}

#[derive(Debug, Clone)]
pub struct RevocationSettings {
    /// `redis://host:port/db`: the auth server's Redis.
    pub redis_url: String,
    /// The auth server's key prefix (`--redis-prefix` there).
    pub prefix: String,
    /// Longest wait for a connection or an answer.
    pub timeout: Duration,
    pub when_unavailable: WhenUnavailable,
}

/// What Redis said of a token, or could not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Revoked,
    NotRevoked,
    Unavailable,
}

/// The join-time check, owned by the UDP receive thread (blocking, no locks).
pub struct RevocationCheck {
    settings: RevocationSettings,
    client: Option<redis::Client>,
    conn: Option<redis::Connection>,
    /// jti → (revoked, answer good until).
    cache: HashMap<String, (bool, Instant)>,
    /// Redis failed: not asked again before this.
    paused_until: Option<Instant>,
    /// By `result`: `revoked`, `not_revoked`, `unavailable`, `cached`.
    checks: IntCounterVec,
}

impl RevocationCheck {
    pub fn new(settings: RevocationSettings, checks: IntCounterVec) -> Self {
        let client = match redis::Client::open(settings.redis_url.as_str()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "revocation check: bad Redis URL; every check is unavailable");
                None
            }
        };
        RevocationCheck {
            settings,
            client,
            conn: None,
            cache: HashMap::new(),
            paused_until: None,
            checks,
        }
    }

    /// `None` when the token with id `jti`, valid until `expires_at` (Unix seconds), may
    /// join; else the reason to give the player.
    pub fn refusal(&mut self, jti: &str, expires_at: u64) -> Option<&'static str> {
        let now = Instant::now();
        let answer = match self.cache.get(jti) {
            Some(&(revoked, until)) if until > now => {
                self.checks.with_label_values(&["cached"]).inc();
                if revoked {
                    Answer::Revoked
                } else {
                    Answer::NotRevoked
                }
            }
            _ => {
                let answer = self.ask(jti, now);
                let label = match answer {
                    Answer::Revoked => "revoked",
                    Answer::NotRevoked => "not_revoked",
                    Answer::Unavailable => "unavailable",
                };
                self.checks.with_label_values(&[label]).inc();
                self.remember(jti, expires_at, answer, now);
                answer
            }
        };
        match (answer, self.settings.when_unavailable) {
            (Answer::NotRevoked, _) | (Answer::Unavailable, WhenUnavailable::Open) => None,
            (Answer::Revoked, _) => Some(MSG_TOKEN_REVOKED),
            (Answer::Unavailable, WhenUnavailable::Closed) => Some(MSG_REVOCATION_UNAVAILABLE),
        }
    }

    fn remember(&mut self, jti: &str, expires_at: u64, answer: Answer, now: Instant) {
        let good_for = match answer {
            // A revocation is final: remembered until the token expires anyway.
            Answer::Revoked => Duration::from_secs(expires_at.saturating_sub(unix_now())),
            Answer::NotRevoked => NOT_REVOKED_FOR,
            Answer::Unavailable => return,
        };
        if self.cache.len() >= CACHE_CAPACITY {
            self.cache.retain(|_, (_, until)| *until > now);
            if self.cache.len() >= CACHE_CAPACITY {
                self.cache.clear();
            }
        }
        self.cache
            .insert(jti.to_owned(), (answer == Answer::Revoked, now + good_for));
    }

    fn ask(&mut self, jti: &str, now: Instant) -> Answer {
        if self.paused_until.is_some_and(|t| t > now) {
            return Answer::Unavailable;
        }
        match self.exists(&revoked_token_key(&self.settings.prefix, jti)) {
            Ok(true) => Answer::Revoked,
            Ok(false) => Answer::NotRevoked,
            Err(e) => {
                tracing::warn!(error = %e, pause = ?RETRY_AFTER, when_unavailable = ?self.settings.when_unavailable,
                    "revocation check: Redis did not answer");
                self.conn = None;
                self.paused_until = Some(now + RETRY_AFTER);
                Answer::Unavailable
            }
        }
    }

    fn exists(&mut self, key: &str) -> redis::RedisResult<bool> {
        if self.conn.is_none() {
            let client = self.client.as_ref().ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad Redis URL"))
            })?;
            let conn = client.get_connection_with_timeout(self.settings.timeout)?;
            conn.set_read_timeout(Some(self.settings.timeout))?;
            conn.set_write_timeout(Some(self.settings.timeout))?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected above");
        redis::cmd("EXISTS").arg(key).query(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, when: WhenUnavailable) -> RevocationCheck {
        let checks = IntCounterVec::new(prometheus::Opts::new("c", "c"), &["result"]).unwrap();
        RevocationCheck::new(
            RevocationSettings {
                redis_url: url.into(),
                prefix: "t:".into(),
                timeout: Duration::from_millis(50),
                when_unavailable: when,
            },
            checks,
        )
    }

    /// Nothing listens on port 1: Redis is "down".
    const DOWN: &str = "redis://127.0.0.1:1/0";

    #[test]
    fn an_unreachable_redis_follows_the_chosen_mode_and_pauses() {
        let mut open = check(DOWN, WhenUnavailable::Open);
        assert_eq!(open.refusal("j1", unix_now() + 60), None);
        let mut closed = check(DOWN, WhenUnavailable::Closed);
        assert_eq!(
            closed.refusal("j1", unix_now() + 60),
            Some(MSG_REVOCATION_UNAVAILABLE)
        );
        // Paused: the second check does not try Redis again.
        assert!(closed.paused_until.is_some());
        assert_eq!(
            closed.refusal("j2", unix_now() + 60),
            Some(MSG_REVOCATION_UNAVAILABLE)
        );
        let unavailable = closed.checks.with_label_values(&["unavailable"]).get();
        assert_eq!(unavailable, 2);
    }

    #[test]
    fn a_bad_url_is_unavailable_not_a_panic() {
        let mut c = check("not a url", WhenUnavailable::Closed);
        assert_eq!(
            c.refusal("j1", unix_now() + 60),
            Some(MSG_REVOCATION_UNAVAILABLE)
        );
    }

    #[test]
    fn answers_are_cached_revocations_until_expiry() {
        let mut c = check(DOWN, WhenUnavailable::Open);
        let now = Instant::now();
        c.remember("gone", unix_now() + 60, Answer::Revoked, now);
        c.remember("fine", unix_now() + 60, Answer::NotRevoked, now);
        assert_eq!(c.refusal("gone", unix_now() + 60), Some(MSG_TOKEN_REVOKED));
        assert_eq!(c.refusal("fine", unix_now() + 60), None);
        assert_eq!(c.checks.with_label_values(&["cached"]).get(), 2);
        let (_, until) = c.cache["gone"];
        assert!(until > now + Duration::from_secs(50));
    }

    #[test]
    fn a_full_cache_drops_expired_answers_first() {
        let mut c = check(DOWN, WhenUnavailable::Open);
        let now = Instant::now();
        for i in 0..CACHE_CAPACITY {
            c.cache.insert(format!("old{i}"), (false, now));
        }
        c.remember(
            "new",
            unix_now() + 60,
            Answer::Revoked,
            now + Duration::from_millis(1),
        );
        assert_eq!(c.cache.len(), 1);
    }
}
