//! The Nginx edge: players' one public address in front of the auth server and every
//! game server of the fleets an [`Edge`](crate::api::edge::Edge) names.
//!
//! The Kubernetes-free core, tested by tables and golden files:
//!
//! - [`ports`]: the stable map game server → edge port, with a quarantine before reuse
//!   and a text form that survives an operator restart;
//! - [`render`]: nginx.conf (`stream {}`) from plain data, byte-for-byte deterministic,
//!   with its SHA-256;
//! - [`plan`]: one pass of both, what a reconcile calls;
//! - [`spec`]: the Edge spec turned into that plain data;
//! - [`net`]: the checked address types every rendered value goes through;
//!
//! and [`controller`], the Edge controller that runs them: the ConfigMap `<edge>-nginx`
//!   (config, port map, hash annotation) owned by the Edge, written only when its bytes
//!   change, and the Edge's status, which the Match controller reads for endpoints.
//!
//! The edge pod's supervisor (`tanks-edge`, edge/ at the top of the repository) reads
//! that ConfigMap through the API, runs `nginx -t` and reloads nginx with SIGHUP when
//! the bytes change. See docs/operator.md, "The edge".

pub mod controller;
pub mod net;
pub mod plan;
pub mod ports;
pub mod render;
pub mod spec;

#[cfg(test)]
mod golden_tests;
