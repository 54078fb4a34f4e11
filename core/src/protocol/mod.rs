//! Wire formats: [`auth`] (the auth server's), [`game`] (the game server's, one
//! submodule per protocol), [`control`] (the game server's control interface, spoken by
//! the operator) and [`matchmaking`] (the matchmaker's queues). The player-facing ones
//! accept what a seed client sends and answer with the seed's shapes, plus our
//! additions.

pub mod auth;
pub mod control;
pub mod game;
pub mod matchmaking;
