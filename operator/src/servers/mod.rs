//! The operator's side of the game servers, in one place:
//!
//! - [`address`]: where a pod's control interface and game port are reached;
//! - [`cached`]: what of a pod the pod cache keeps;
//! - [`client`]: the one HTTP client of the control interface (load, drain, sessions)
//!   and its one error type;
//! - [`eviction`]: the cluster autoscaler's safe-to-evict mark on a server's pod;
//! - [`loads`]: the last load report of every server;
//! - [`ownership`]: which pods the operator talks to (those a fleet it owns controls);
//! - [`poller`]: polls every running server into [`loads`] and wakes the fleets whose
//!   load changed.
//!
//! Both controllers read from here and nothing here reads from them, so `reconcile/`
//! and `matches/` depend on this module and never on each other through it.

pub mod address;
pub mod cached;
pub mod client;
pub mod eviction;
pub mod loads;
pub mod ownership;
pub mod poller;

pub use address::{EndpointResolver, pod_ip_resolver};
pub use client::{HttpServerClient, ServerClient, ServerError};
pub use loads::{LoadEntry, LoadIndex};
pub use poller::Poller;
