//! Wire formats. Each submodule is one protocol; the player-facing ones accept what a
//! seed client sends and answer with the seed's shapes, plus our additions.

pub mod auth;
pub mod control;
pub mod game;
pub mod matchmaking;
