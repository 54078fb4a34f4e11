//! The tanks operator, by layer:
//!
//! - [`api`]: the custom resources as Rust types (the CRDs are generated from them);
//! - [`domain`]: the decisions (desired replicas, rollout, ports) with no Kubernetes in them;
//! - [`servers`]: the operator's side of the game servers: their addresses, the one
//!   client of their control interface, the load reports and the poller;
//! - [`reconcile`]: the GameFleet controller, pod building and status writing;
//! - [`matches`]: Match allocation: the matchmaking consumer, the allocator and its reconciler;
//! - [`leader`]: Lease-based leader election; [`metrics`]; [`runtime`] ties them together.
#![forbid(unsafe_code)]

pub mod api;
pub mod backup;
pub mod domain;
pub mod edge;
pub mod error;
pub mod leader;
pub mod matches;
pub mod metrics;
pub mod reconcile;
pub mod runtime;
pub mod servers;

pub use error::{Error, Result};
