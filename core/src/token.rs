//! Signed session tokens.
//!
//! A token is `base64url(claims JSON) "." base64url(HMAC-SHA256(key, first part))`.
//! HMAC rather than an asymmetric signature on purpose: every game server verifies
//! every `join_game` locally, and HMAC-SHA256 verifies in well under a microsecond
//! where Ed25519 needs tens. The price is that verifiers hold the signing key, which
//! is fine inside one cluster where the key is a Kubernetes Secret.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key we accept: the HMAC-SHA256 block of security.
pub const MIN_KEY_LEN: usize = 32;
/// Key used when none is configured, so a fresh checkout runs; never for production.
pub const DEVELOPMENT_KEY: &[u8] = b"tanks-development-key-do-not-use-in-production!";
/// Longest token we even look at, so a hostile client cannot make us hash megabytes.
pub const MAX_TOKEN_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user name the token was issued to.
    pub sub: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Unique id, so a single token can be revoked.
    pub jti: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("signing key must be at least {MIN_KEY_LEN} bytes")]
    KeyTooShort,
}

/// Issues and verifies tokens with one key. Cheap to clone; keeps the keyed HMAC
/// state so each operation skips re-deriving the inner and outer pads.
#[derive(Clone)]
pub struct TokenSigner {
    keyed: HmacSha256,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<key>)")
    }
}

impl TokenSigner {
    pub fn new(key: &[u8]) -> Result<Self, TokenError> {
        if key.len() < MIN_KEY_LEN {
            return Err(TokenError::KeyTooShort);
        }
        let keyed = HmacSha256::new_from_slice(key).map_err(|_| TokenError::KeyTooShort)?;
        Ok(Self { keyed })
    }

    /// The key from a file (trailing newline ignored), or the development key when no
    /// file is given. The bool says whether the development key is in use (built in,
    /// or its public bytes copied into the file).
    pub fn from_key_file(path: Option<&std::path::Path>) -> anyhow::Result<(Self, bool)> {
        match path {
            Some(path) => {
                let raw = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("reading token key {}: {e}", path.display()))?;
                let key = raw.trim_ascii_end();
                Ok((
                    Self::new(key).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                    is_development_key(key),
                ))
            }
            None => Ok((
                Self::new(DEVELOPMENT_KEY).expect("development key is long enough"),
                true,
            )),
        }
    }

    /// A new token for `user`, valid for `ttl` from now.
    pub fn issue(&self, user: &str, ttl: Duration) -> (String, Claims) {
        let iat = unix_now();
        let claims = Claims {
            sub: user.to_owned(),
            iat,
            exp: iat + ttl.as_secs().max(1),
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        (self.sign(&claims), claims)
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let mut mac = self.keyed.clone();
        mac.update(payload.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        let mut token = payload;
        token.push('.');
        token.push_str(&sig);
        token
    }

    /// Checks the signature and expiry against the current time.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, unix_now())
    }

    /// Checks the signature first (constant time), and only then parses the claims,
    /// so unauthenticated bytes never reach the JSON parser.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let mut sig_bytes = [0u8; 32];
        match B64.decode_slice(sig, &mut sig_bytes) {
            Ok(32) => {}
            _ => return Err(TokenError::Malformed),
        }
        let mut mac = self.keyed.clone();
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig_bytes)
            .map_err(|_| TokenError::BadSignature)?;
        let mut buf = [0u8; MAX_TOKEN_LEN];
        let n = B64
            .decode_slice(payload, &mut buf)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims =
            serde_json::from_slice(&buf[..n]).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Whether `key` is the public [`DEVELOPMENT_KEY`] (surrounding whitespace ignored):
/// anyone can forge tokens with it, so deployed services refuse it.
pub fn is_development_key(key: &[u8]) -> bool {
    key.trim_ascii() == DEVELOPMENT_KEY
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        TokenSigner::new(&[7u8; 32]).unwrap()
    }

    #[test]
    fn issued_token_verifies_with_its_claims() {
        let (token, claims) = signer().issue("alice", Duration::from_secs(60));
        assert_eq!(signer().verify(&token).unwrap(), claims);
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.exp, claims.iat + 60);
    }

    #[test]
    fn another_key_rejects_the_token() {
        let (token, _) = signer().issue("alice", Duration::from_secs(60));
        let other = TokenSigner::new(&[8u8; 32]).unwrap();
        assert_eq!(other.verify(&token), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampered_claims_are_rejected() {
        let (token, claims) = signer().issue("alice", Duration::from_secs(60));
        let forged = Claims {
            sub: "admin".into(),
            ..claims
        };
        let forged_payload = signer().sign(&forged);
        let (payload, _) = forged_payload.split_once('.').unwrap();
        let (_, sig) = token.split_once('.').unwrap();
        assert_eq!(
            signer().verify(&format!("{payload}.{sig}")),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn expired_token_is_rejected() {
        let (token, claims) = signer().issue("alice", Duration::from_secs(60));
        assert_eq!(
            signer().verify_at(&token, claims.exp),
            Err(TokenError::Expired)
        );
        assert!(signer().verify_at(&token, claims.exp - 1).is_ok());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bad in ["", ".", "abc", "a.b", "a.!!!!", &"x".repeat(5000), "é.é"] {
            assert_eq!(signer().verify(bad), Err(TokenError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn the_development_key_is_recognised_wherever_it_comes_from() {
        assert!(TokenSigner::from_key_file(None).unwrap().1);
        let dir = std::env::temp_dir().join(format!("token-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copied = dir.join("dev.key");
        std::fs::write(&copied, [DEVELOPMENT_KEY, b"\n"].concat()).unwrap();
        assert!(TokenSigner::from_key_file(Some(&copied)).unwrap().1);
        let own = dir.join("own.key");
        std::fs::write(&own, [7u8; 32]).unwrap();
        assert!(!TokenSigner::from_key_file(Some(&own)).unwrap().1);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(is_development_key(
            b" tanks-development-key-do-not-use-in-production!\n"
        ));
        assert!(!is_development_key(&[7u8; 32]));
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(matches!(
            TokenSigner::new(b"short"),
            Err(TokenError::KeyTooShort)
        ));
    }
}
