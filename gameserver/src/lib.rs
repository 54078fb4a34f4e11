//! The game server: an authoritative, seed-compatible tank battle simulation.
//!
//! - [`rules`], [`pool`], [`sessions`]: the game itself, with no I/O.
//! - [`outbox`]: what a tick sends, serialized once.
#![forbid(unsafe_code)]

pub mod outbox;
pub mod pool;
pub mod rules;
pub mod sessions;
