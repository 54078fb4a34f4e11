//! What the auth server, the game server and the operator share.
//!
//! - [`protocol`]: the wire formats clients speak (a superset of the seed's).
//! - [`events`]: Kafka event schemas and the non-blocking [`events::EventPublisher`].
//! - [`rabbit`], [`redis_store`]: broker and store clients with reconnects.
//! - [`proxy_protocol`]: the PROXY protocol header an edge proxy sends before a
//!   connection's bytes, and the addresses trusted to send it.
//! - [`token`]: HMAC-SHA256 session tokens, verified locally by any service.
//! - [`telemetry`]: logging, one Prometheus registry per binary, the metrics endpoint,
//!   shutdown signals.
#![forbid(unsafe_code)]

pub mod events;
pub mod protocol;
pub mod proxy_protocol;
pub mod rabbit;
pub mod redis_store;
pub mod sources;
pub mod telemetry;
pub mod token;
