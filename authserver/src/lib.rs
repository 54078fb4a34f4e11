//! The auth server: registration and login over TCP (newline-delimited JSON, a superset
//! of the seed's protocol), Argon2id password hashes, HMAC-signed session tokens,
//! brute-force limits, audit events to Kafka `auth_events`, metrics on :8000.
//!
//! - [`config`]: flags and environment.
//! - [`server`]: wiring, the accept loop, graceful shutdown.
//! - [`connection`]: one client connection: framing, limits, timeouts.
//! - [`service`]: what each request does.
//! - [`password`], [`policy`]: hashing, and what names and passwords must look like.
//! - [`users`], [`limits`], [`revocation`]: state, in Redis or embedded.
#![forbid(unsafe_code)]

pub mod config;
pub mod connection;
pub mod limits;
pub mod metrics;
pub mod password;
pub mod policy;
pub mod revocation;
pub mod server;
pub mod service;
pub mod users;

pub use config::Config;
pub use server::Server;
