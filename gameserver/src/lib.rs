//! The game server: an authoritative, seed-compatible tank battle simulation.
//!
//! - [`rules`], [`pool`], [`sessions`]: the game itself, no I/O.
//! - [`outbox`]: what a tick sends, serialized once per session.
//! - [`udp`], [`tick`]: the play port's receive thread and the fixed-rate tick thread;
//!   [`batch`]: their `recvmmsg`/`sendmmsg` batching.
//! - [`tcp`]: text commands; [`control`]: the operator's interface;
//!   [`commands`]: RabbitMQ consumers and the broker command path.
//! - [`revocation`]: logged-out tokens refused at join.
//! - [`server`]: wiring and the drain; [`config`]: flags.
#![forbid(unsafe_code)]

pub mod batch;
pub mod commands;
pub mod config;
pub mod control;
pub mod metrics;
pub mod moves;
pub mod outbox;
pub mod pool;
pub mod rate_limit;
pub mod revocation;
pub mod rules;
pub mod server;
pub mod sessions;
pub mod tcp;
pub mod tick;
pub mod udp;
