//! Decisions with no Kubernetes in them: plain data in, plain data out.

pub mod allocation;
pub mod decision;
pub mod fleet;
pub mod ports;
pub mod scaling;
