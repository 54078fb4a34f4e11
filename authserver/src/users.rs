//! Where accounts live: Redis when configured, otherwise an embedded in-memory store so
//! the binary runs on a fresh machine.
//!
//! Redis layout: one string per account, `<prefix>user:<canonical name>` holding the
//! [`UserRecord`] as JSON, created with `SET NX` so two replicas registering the same
//! name at once cannot both win.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tanks_core::redis_store::ConnectionManager;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The name as registered; the canonical (lower-case) form is the key.
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    Taken,
    /// The embedded store is at its configured capacity.
    Full,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("user store unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("user record for {0} is corrupt")]
    Corrupt(String),
}

#[derive(Clone)]
pub enum UserStore {
    Memory(MemoryUsers),
    Redis(RedisUsers),
}

impl UserStore {
    pub fn memory(capacity: usize) -> Self {
        UserStore::Memory(MemoryUsers {
            users: Arc::default(),
            capacity,
        })
    }

    pub fn redis(conn: ConnectionManager, prefix: &str) -> Self {
        UserStore::Redis(RedisUsers {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            UserStore::Memory(_) => "memory",
            UserStore::Redis(_) => "redis",
        }
    }

    pub async fn get(&self, canonical: &str) -> Result<Option<UserRecord>, StoreError> {
        match self {
            UserStore::Memory(m) => Ok(m
                .users
                .read()
                .expect("user store lock")
                .get(canonical)
                .cloned()),
            UserStore::Redis(r) => {
                let raw: Option<String> = r.conn.clone().get(r.key(canonical)).await?;
                raw.map(|raw| {
                    serde_json::from_str(&raw)
                        .map_err(|_| StoreError::Corrupt(canonical.to_owned()))
                })
                .transpose()
            }
        }
    }

    pub async fn exists(&self, canonical: &str) -> Result<bool, StoreError> {
        match self {
            UserStore::Memory(m) => Ok(m
                .users
                .read()
                .expect("user store lock")
                .contains_key(canonical)),
            UserStore::Redis(r) => Ok(r.conn.clone().exists(r.key(canonical)).await?),
        }
    }

    /// Creates the account unless the canonical name is taken.
    pub async fn create(
        &self,
        canonical: &str,
        record: &UserRecord,
    ) -> Result<Created, StoreError> {
        match self {
            UserStore::Memory(m) => {
                let mut users = m.users.write().expect("user store lock");
                if users.contains_key(canonical) {
                    return Ok(Created::Taken);
                }
                if users.len() >= m.capacity {
                    return Ok(Created::Full);
                }
                users.insert(canonical.to_owned(), record.clone());
                Ok(Created::Created)
            }
            UserStore::Redis(r) => {
                let json = serde_json::to_string(record).expect("user record serializes");
                let set: bool = redis::cmd("SET")
                    .arg(r.key(canonical))
                    .arg(json)
                    .arg("NX")
                    .query_async::<Option<String>>(&mut r.conn.clone())
                    .await?
                    .is_some();
                Ok(if set {
                    Created::Created
                } else {
                    Created::Taken
                })
            }
        }
    }

    /// Accounts in the embedded store (None for Redis, where counting means a scan).
    pub fn memory_len(&self) -> Option<usize> {
        match self {
            UserStore::Memory(m) => Some(m.users.read().expect("user store lock").len()),
            UserStore::Redis(_) => None,
        }
    }
}

#[derive(Clone)]
pub struct MemoryUsers {
    users: Arc<RwLock<HashMap<String, UserRecord>>>,
    capacity: usize,
}

#[derive(Clone)]
pub struct RedisUsers {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisUsers {
    fn key(&self, canonical: &str) -> String {
        format!("{}user:{canonical}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> UserRecord {
        UserRecord {
            username: name.into(),
            password_hash: "$argon2id$x".into(),
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn memory_store_is_case_insensitive_through_the_canonical_key_and_bounded() {
        let store = UserStore::memory(2);
        assert_eq!(
            store.create("alice", &record("Alice")).await.unwrap(),
            Created::Created
        );
        assert_eq!(
            store.create("alice", &record("alice")).await.unwrap(),
            Created::Taken
        );
        assert_eq!(store.get("alice").await.unwrap().unwrap().username, "Alice");
        assert!(store.exists("alice").await.unwrap());
        assert_eq!(
            store.create("bob", &record("bob")).await.unwrap(),
            Created::Created
        );
        assert_eq!(
            store.create("carol", &record("carol")).await.unwrap(),
            Created::Full
        );
        assert!(store.get("carol").await.unwrap().is_none());
        assert_eq!(store.memory_len(), Some(2));
    }
}
