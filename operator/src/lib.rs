//! The tanks operator, by layer:
//!
//! - [`api`]: the custom resources as Rust types (the CRDs are generated from them);
//! - [`domain`]: the decisions (desired replicas, rollout, ports) with no Kubernetes in them;
//! - [`index`]: in-memory views the reconciler reads (load reports, expectations, ports);
//! - [`control`]: the client of the game servers' control interface and the load poller;
//! - [`reconcile`]: the GameFleet controller, pod building and status writing;
//! - [`matches`]: Match allocation: the matchmaking consumer, the allocator and its reconciler;
//! - [`leader`]: Lease-based leader election; [`metrics`]; [`runtime`] ties them together.
#![forbid(unsafe_code)]

pub mod api;
pub mod control;
pub mod domain;
pub mod edge;
pub mod error;
pub mod index;
pub mod leader;
pub mod matches;
pub mod metrics;
pub mod reconcile;
pub mod runtime;

pub use error::{Error, Result};
