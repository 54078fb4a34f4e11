//! What each request does: register, login, verify, logout. Transport-free, so the
//! connection handler, tests and tools all drive the same code.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tanks_core::events::{AUTH_EVENTS, EventPublisher, timestamp_now};
use tanks_core::protocol::auth::{
    AuthEvent, AuthEventType, Messages, Request, Response, failure_reason, reason,
};
use tanks_core::token::{TokenError, TokenSigner, unix_now};

use crate::limits::{LoginGate, RateLimiter};
use crate::metrics::Metrics;
use crate::password::Hasher;
use crate::policy;
use crate::revocation::{RevocationError, Revocations};
use crate::users::{Created, UserRecord, UserStore};

const MSG_RATE_LIMITED: &str = "Authentication failed: too many failed attempts, try again later";
const MSG_UNAVAILABLE: &str = "Service temporarily unavailable, try again later";

pub struct AuthService {
    pub signer: TokenSigner,
    pub token_ttl: Duration,
    /// Which texts login answers carry.
    pub messages: Messages,
    pub hasher: Hasher,
    pub users: UserStore,
    pub limiter: RateLimiter,
    pub revocations: Revocations,
    pub events: EventPublisher,
    pub metrics: Metrics,
}

impl AuthService {
    /// Answers one request from `peer`, recording its outcome and latency.
    pub async fn handle(&self, request: Request, peer: IpAddr) -> Response {
        let action = request.action().as_str();
        let started = Instant::now();
        let response = match request {
            Request::Register { username, password } => {
                self.register(username, password, peer).await
            }
            Request::Login { username, password } => self.login(username, password, peer).await,
            Request::Verify { token } => self.verify(&token).await,
            Request::Logout { token } => self.logout(&token, peer).await,
        };
        self.metrics
            .request_duration
            .with_label_values(&[action])
            .observe(started.elapsed().as_secs_f64());
        self.count(action, &response);
        response
    }

    /// Counts an answer to a line that was not a request.
    pub fn count_invalid(&self, response: &Response) {
        self.count("invalid", response);
    }

    fn count(&self, action: &str, response: &Response) {
        let status = match response.status {
            tanks_core::protocol::auth::Status::Success => "success",
            tanks_core::protocol::auth::Status::Failure => "failure",
            tanks_core::protocol::auth::Status::Error => "error",
        };
        self.metrics
            .requests
            .with_label_values(&[action, status])
            .inc();
    }

    async fn register(&self, username: String, password: String, peer: IpAddr) -> Response {
        let fail = |why: &str, message: String| {
            self.metrics
                .auth_failures
                .with_label_values(&["register", why])
                .inc();
            Response::failure(why, message)
        };
        let canonical = match policy::canonical_username(&username) {
            Ok(c) => c,
            Err(why) => {
                return fail(
                    reason::INVALID_USERNAME,
                    format!("Registration failed: {why}"),
                );
            }
        };
        if let Err(why) = policy::check_password(&username, &password) {
            return fail(reason::WEAK_PASSWORD, format!("Registration failed: {why}"));
        }
        // Every attempt counts, before any hashing: each one costs an Argon2 hash.
        match self.limiter.register_allowed(peer).await {
            Ok(true) => {}
            Ok(false) => {
                return fail(
                    reason::RATE_LIMITED,
                    "Registration failed: too many registrations from your address, try again later"
                        .into(),
                );
            }
            Err(e) => return self.unavailable("rate limiter", &e),
        }
        // Names are public once taken, so checking first leaks nothing and saves a hash.
        match self.users.exists(&canonical).await {
            Ok(false) => {}
            Ok(true) => return fail(reason::USERNAME_TAKEN, taken()),
            Err(e) => return self.unavailable("user store", &e),
        }
        let password_hash = match self.hasher.hash(password).await {
            Ok(h) => h,
            Err(e) => return self.unavailable("hasher", &e),
        };
        let record = UserRecord {
            username: username.clone(),
            password_hash,
            created_at: unix_now(),
        };
        match self.users.create(&canonical, &record).await {
            Ok(Created::Created) => {}
            Ok(Created::Taken) => return fail(reason::USERNAME_TAKEN, taken()),
            Ok(Created::Full) => {
                tracing::warn!("embedded user store is full");
                return Response::error(
                    reason::UNAVAILABLE,
                    "Registration failed: user store is full",
                );
            }
            Err(e) => return self.unavailable("user store", &e),
        }
        self.metrics
            .auth_success
            .with_label_values(&["register"])
            .inc();
        let mut event = AuthEvent::new(AuthEventType::UserRegistered, &username, timestamp_now());
        event.source_ip = Some(peer.to_string());
        self.publish(&event);
        Response::success("User registered successfully").with_username(username)
    }

    async fn login(&self, username: String, password: String, peer: IpAddr) -> Response {
        let Ok(canonical) = policy::canonical_username(&username) else {
            // No account can have this name: no need to spend a hash to hide anything.
            if let Err(e) = self.limiter.login_failed(peer).await {
                return self.unavailable("rate limiter", &e);
            }
            return self.login_failure(&username, peer, failure_reason::INVALID_USERNAME);
        };
        // Counted before the hash, atomically: concurrent guesses cannot all slip past.
        let gate = match self.limiter.login_attempt(&canonical, peer).await {
            Ok(gate) => gate,
            Err(e) => return self.unavailable("rate limiter", &e),
        };
        if gate == LoginGate::Blocked {
            self.login_failure(&username, peer, failure_reason::RATE_LIMITED);
            return Response::failure(reason::RATE_LIMITED, MSG_RATE_LIMITED);
        }
        let user = match self.users.get(&canonical).await {
            Ok(user) => user,
            Err(e) => return self.unavailable("user store", &e),
        };
        // Unknown users are checked against a dummy hash: same work, same time.
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        self.metrics.password_verifications.inc();
        let matches = match self.hasher.verify(password, stored).await {
            Ok(m) => m,
            Err(e) => return self.unavailable("hasher", &e),
        };
        let known = user.is_some();
        let Some(user) = user.filter(|_| matches) else {
            // Already counted by login_attempt.
            let why = if known {
                failure_reason::WRONG_PASSWORD
            } else {
                failure_reason::UNKNOWN_USER
            };
            return self.login_failure(&username, peer, why);
        };
        if let Err(e) = self.limiter.login_succeeded(&canonical, peer).await {
            tracing::warn!(error = %e, "clearing login failures");
        }
        let (token, claims) = self.signer.issue(&user.username, self.token_ttl);
        self.metrics
            .auth_success
            .with_label_values(&["login"])
            .inc();
        let mut event =
            AuthEvent::new(AuthEventType::UserLoggedIn, &user.username, timestamp_now());
        event.source_ip = Some(peer.to_string());
        event.token_id = Some(claims.jti);
        event.expires_at = Some(claims.exp);
        self.publish(&event);
        Response::success(self.messages.login_success(&user.username))
            .with_token(token, claims.exp)
            .with_username(user.username)
    }

    fn login_failure(&self, username: &str, peer: IpAddr, why: &str) -> Response {
        self.metrics
            .auth_failures
            .with_label_values(&["login", why])
            .inc();
        let mut event = AuthEvent::new(AuthEventType::UserLoginFailed, username, timestamp_now());
        event.source_ip = Some(peer.to_string());
        event.reason = Some(why.to_owned());
        self.publish(&event);
        Response::failure(reason::INVALID_CREDENTIALS, self.messages.bad_credentials())
    }

    async fn verify(&self, token: &str) -> Response {
        match self.check_token(token).await {
            Ok(claims) => Response {
                expires_at: Some(claims.exp),
                ..Response::success("Token is valid").with_username(claims.sub)
            },
            Err(response) => response,
        }
    }

    async fn logout(&self, token: &str, peer: IpAddr) -> Response {
        let claims = match self.check_token(token).await {
            Ok(claims) => claims,
            Err(response) => return response,
        };
        match self.revocations.revoke(&claims.jti, claims.exp).await {
            Ok(true) => {
                let mut event =
                    AuthEvent::new(AuthEventType::UserLoggedOut, &claims.sub, timestamp_now());
                event.source_ip = Some(peer.to_string());
                event.token_id = Some(claims.jti);
                self.publish(&event);
            }
            // Revoked meanwhile by a concurrent logout: still logged out, one event.
            Ok(false) => {}
            Err(RevocationError::Full) => {
                return Response::error(
                    reason::UNAVAILABLE,
                    "Logout failed: revocation list is full",
                );
            }
            Err(e) => return self.unavailable("revocation store", &e),
        }
        Response::success("Logged out").with_username(claims.sub)
    }

    /// Signature, expiry, then revocation.
    async fn check_token(&self, token: &str) -> Result<tanks_core::token::Claims, Response> {
        let claims = self.signer.verify(token).map_err(|e| match e {
            TokenError::Expired => {
                Response::failure(reason::TOKEN_EXPIRED, "Invalid token: expired")
            }
            _ => Response::failure(reason::INVALID_TOKEN, "Invalid token"),
        })?;
        match self.revocations.is_revoked(&claims.jti).await {
            Ok(false) => Ok(claims),
            Ok(true) => Err(Response::failure(
                reason::TOKEN_REVOKED,
                "Invalid token: revoked",
            )),
            Err(e) => Err(self.unavailable("revocation store", &e)),
        }
    }

    fn publish(&self, event: &AuthEvent) {
        // Never blocks: a full queue drops the event and counts it.
        self.events.publish(AUTH_EVENTS, &event.user_key(), event);
    }

    fn unavailable(&self, what: &str, error: &dyn std::fmt::Display) -> Response {
        tracing::warn!(%error, "{what} failed");
        Response::error(reason::UNAVAILABLE, MSG_UNAVAILABLE)
    }
}

fn taken() -> String {
    "Registration failed: username already taken".into()
}
