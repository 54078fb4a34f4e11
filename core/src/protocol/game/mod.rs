//! The game server's protocols, one submodule each:
//!
//! - [`udp`]: play, JSON datagrams (default port 9999): what clients send, the replies,
//!   the per-tick `game_update` and the `game_over`.
//! - [`tcp`]: text commands, one per line (default port 8889).
//! - [`broker`]: the RabbitMQ `player_commands` bodies. `matchmaking_events` bodies are
//!   in [`super::matchmaking`], the one type the operator reads too.
//! - [`kafka`]: the events it writes to `player_sessions_history`, `game_events` and
//!   `tank_coordinates_history`.

pub mod broker;
pub mod kafka;
pub mod tcp;
pub mod udp;

/// The game server's Prometheus `/metrics` port.
pub const DEFAULT_METRICS_PORT: u16 = 8001;
