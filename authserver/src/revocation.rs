//! Revoked tokens (logouts). A token is revoked by its id until it would have expired
//! anyway, so the list never outgrows the tokens still alive.
//!
//! In Redis: `<prefix>revoked:<jti>` with an expiry at the token's own (see
//! [`tanks_core::protocol::auth::revoked_token_key`]), readable by the game server too.
//! Embedded: a bounded map swept of expired ids.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tanks_core::protocol::auth::revoked_token_key;
use tanks_core::redis_store::ConnectionManager;
use tanks_core::token::unix_now;

/// Most revocations the embedded list holds; logouts beyond it are refused (with an
/// error the client sees) rather than growing memory without end.
pub const MEMORY_CAPACITY: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("revocation store unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("revocation list is full")]
    Full,
}

#[derive(Clone)]
pub enum Revocations {
    Memory(Arc<Mutex<HashMap<String, u64>>>),
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
}

impl Revocations {
    pub fn memory() -> Self {
        Revocations::Memory(Arc::default())
    }

    pub fn redis(conn: ConnectionManager, prefix: &str) -> Self {
        Revocations::Redis {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    /// Revokes `jti` until `expires_at`. True when it was not revoked before.
    pub async fn revoke(&self, jti: &str, expires_at: u64) -> Result<bool, RevocationError> {
        let now = unix_now();
        match self {
            Revocations::Memory(map) => {
                let mut map = map.lock().expect("revocation lock");
                if map.contains_key(jti) {
                    return Ok(false);
                }
                if map.len() >= MEMORY_CAPACITY {
                    map.retain(|_, exp| *exp > now);
                    if map.len() >= MEMORY_CAPACITY {
                        return Err(RevocationError::Full);
                    }
                }
                map.insert(jti.to_owned(), expires_at);
                Ok(true)
            }
            Revocations::Redis { conn, prefix } => {
                let ttl = expires_at.saturating_sub(now).max(1);
                let set: Option<String> = redis::cmd("SET")
                    .arg(revoked_token_key(prefix, jti))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl)
                    .query_async(&mut conn.clone())
                    .await?;
                Ok(set.is_some())
            }
        }
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, RevocationError> {
        match self {
            Revocations::Memory(map) => Ok(map
                .lock()
                .expect("revocation lock")
                .get(jti)
                .is_some_and(|exp| *exp > unix_now())),
            Revocations::Redis { conn, prefix } => {
                let found: bool = redis::cmd("EXISTS")
                    .arg(revoked_token_key(prefix, jti))
                    .query_async(&mut conn.clone())
                    .await?;
                Ok(found)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revoke_once() {
        let revocations = Revocations::memory();
        let exp = unix_now() + 60;
        assert!(!revocations.is_revoked("j1").await.unwrap());
        assert!(revocations.revoke("j1", exp).await.unwrap());
        assert!(!revocations.revoke("j1", exp).await.unwrap());
        assert!(revocations.is_revoked("j1").await.unwrap());
        assert!(!revocations.is_revoked("j2").await.unwrap());
    }
}
