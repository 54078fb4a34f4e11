//! Matches: from a matchmaking event to a game server's endpoint (issue 7).
//!
//! - [`naming`]: the Match name for an event id;
//! - [`consumer`]: RabbitMQ `matchmaking_events` → `Match`, acked once the Match exists;
//!   [`consumed`]: the keys it settled, so a late redelivery starts no second match;
//! - [`view`]: the in-memory allocation view (slots reserved before a server is asked),
//!   fed by [`cluster`] (pod cache + load reports); the policy is
//!   [`crate::domain::allocation`];
//! - [`reconcile`]: the Match controller; [`publish`]: results to `match_allocations`;
//! - [`runtime`]: wires them; [`metrics`].
//!
//! Game servers are reached through [`crate::servers`].

pub mod cluster;
pub mod consumed;
pub mod consumer;
pub mod metrics;
pub mod naming;
pub mod publish;
pub mod reconcile;
pub mod runtime;
pub mod view;
