//! Wire formats. Each submodule is one protocol; all of them accept what a seed
//! client sends and answer with the seed's shapes, plus our additions.

pub mod auth;
pub mod game;
